//! The container engines: every call to an engine goes through here.
//! [`docker`]: the Docker engine, through bollard.

pub mod docker;
