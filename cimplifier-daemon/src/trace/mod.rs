//! The trace stage: eBPF programs in, a typed [`Event`] stream out.
//!
//! - [`decode`]: ring-buffer bytes to raw records.
//! - [`resolve`]: per-process cwd and fd tables that make every name absolute.
//! - [`loader`]: loads and attaches the kernel programs, owns the watch set,
//!   reads the ring buffer and the loss counters.
//! - [`log`]: the replayable event log (JSON lines).

pub mod decode;
pub mod event;
pub mod resolve;

pub use event::*;
pub mod cgroup;
pub mod kernel_layout;
pub mod loader;
pub mod log;

pub use loader::{EventStream, Tracer, TracerConfig, TracerCounters, WatchedCgroup};
pub mod record;
mod wire;
