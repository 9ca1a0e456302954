//! Remote process execution (RPE), the glue between partitioned containers
//! (CIMPLIFIER §3.3): a stub at the callee's path in the caller partition
//! ships argv, env, credentials, limits and every open fd to a server in
//! the callee partition, which executes the real program with them and
//! relays signals and the exit status. See docs/rpe.md.

pub mod config;
pub mod fdpass;
pub mod proto;
pub mod seed;
pub mod server;
pub mod stub;
mod sys;
