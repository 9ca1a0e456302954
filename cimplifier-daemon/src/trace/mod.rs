//! The trace stage: eBPF programs in, a typed [`Event`] stream out.
//!
//! - [`decode`]: ring-buffer bytes to raw records.
//! - [`resolve`]: per-process cwd and fd tables that make every name absolute.
//! - [`loader`]: loads and attaches the kernel programs, owns the watch set,
//!   reads the ring buffer and the loss counters.
//! - [`log`]: the replayable event log (JSON lines).
//! - [`strace`]: strace logs, decoded into the same raw records and
//!   resolved by the same [`resolve`], so both inputs give one [`Event`] stream.
//! - [`record`]: recording one cgroup into an event log (`cimplifierd trace`).

pub mod arch;
pub mod decode;
pub mod event;
pub mod resolve;

pub use event::*;
pub mod cgroup;
pub mod kernel_layout;
pub mod loader;
pub mod log;
mod perf;

pub use loader::{CgroupLoss, EventStream, Tracer, TracerConfig, TracerCounters, WatchedCgroup};
pub mod record;
pub mod strace;
mod wire;
