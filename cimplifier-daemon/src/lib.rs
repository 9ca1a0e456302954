//! cimplifier: observe containers with eBPF, model what each executable
//! uses, and emit least-privilege images.
//!
//! One module per pipeline stage: [`trace`] (eBPF events), [`model`]
//! (resource graph), [`partition`] (which executables go together),
//! [`image`] (the source image, read for place and emit), [`place`] (what
//! each image keeps), [`emit`] (images and reports); around them
//! [`docker`] (the engine), [`session`] (observing containers) and
//! [`store`] (keeping what was seen).

pub mod api;
pub mod cli;
pub mod docker;
pub mod emit;
pub mod image;
pub mod model;
pub mod partition;
pub mod place;
pub mod session;
pub mod store;
pub mod trace;
pub mod verify;
