//! The source image: the one reader of an observed container's image, for
//! the stages after the model (place plans from it, emit copies from it).
//! [`fs`]: the image's file system, read from its layers and indexed by
//! path; [`source`]: a stored session with its image read from the engine
//! and its events folded into a model, the prologue of plan and emit.

pub mod fs;
pub mod source;
