//! The container engines: every call to an engine goes through here.
//! [`docker`]: the Docker engine, through bollard; [`containerd`]:
//! containerd, through its gRPC API.

pub mod containerd;
pub mod docker;
