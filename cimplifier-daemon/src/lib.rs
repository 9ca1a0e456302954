//! cimplifier: observe containers with eBPF, model what each executable
//! uses, and emit least-privilege images.
//!
//! The flow is trace → model → partition → place → emit → glue, one
//! module per stage, and each stage imports only the stages before it:
//! [`trace`] (eBPF and strace input, one event stream), [`model`]
//! (resource graph), [`partition`] (which executables go together),
//! [`place`] (what each image keeps), [`emit`] (images, run plans and
//! reports); glue is the `cimplifier-rpe` crate (remote process
//! execution), whose static binaries emit puts into the images; after
//! them [`verify`] (an output's sessions held against the original's).
//! Beside the stages: [`image`] (the source image, read once for place and emit),
//! [`engine`] (every call to an engine: [`docker`], containerd), [`store`] (what sessions saw),
//! [`session`] (observing containers), [`api`] (the daemon's gRPC service)
//! and [`cli`] (what both binaries set up alike). docs/architecture.md
//! draws the modules and their imports.

pub mod api;
pub mod cli;
pub mod emit;
pub mod engine;
pub mod image;
pub mod model;
pub mod partition;
pub mod place;
pub mod session;
pub mod store;
pub mod trace;
pub mod verify;

/// The Docker engine, at its old path: [`engine::docker`].
pub use engine::docker;

#[cfg(test)]
mod testing;
