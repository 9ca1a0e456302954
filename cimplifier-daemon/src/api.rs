//! The daemon's API (proto/cimplifier/v1/cimplifier.proto): the gRPC
//! service (`service.rs`) over the session manager, the store, the model's
//! reports and emit; the conversions between its messages and the daemon's
//! types, and its one mapping of errors to status codes (`convert.rs`); the
//! listeners and their TLS (`serve.rs`, `transport.rs`); the client side
//! ([`connect`], [`workload`]).

mod audit;
pub mod authz;
mod client;
mod convert;
mod metrics;
mod serve;
mod service;
mod transport;
mod verify;
pub mod workload;

pub use client::{channel, connect};
pub use serve::{DEFAULT_CONFIG, DEFAULT_SOCKET, DaemonConfig, ServeOptions, serve};
pub use service::{DEFAULT_STREAM_BUFFER, HEAVY_CALLS, Service};
pub use transport::{
    Address, ClientSecurity, ClientTls, ServerTls, TcpFlags, TcpListen, TcpSecurity,
};

/// Code generated from proto/cimplifier/v1/cimplifier.proto.
pub mod pb {
    tonic::include_proto!("cimplifier.v1");
}
