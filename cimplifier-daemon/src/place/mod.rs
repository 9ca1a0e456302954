//! The place stage: which files of the source image each output image
//! keeps, and why. Today: the all-one-context policy (one slim image).

pub mod slim;
