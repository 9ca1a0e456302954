//! cimplifier: observe a container with eBPF, learn which executables use
//! which resources, and emit least-privilege images.
//!
//! One module per stage of the flow `trace → model → partition → place →
//! emit → glue`; today the trace stage and the Docker glue it needs exist.

pub mod docker;
pub mod model;
pub mod trace;
