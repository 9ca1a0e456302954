//! The place stage: which files of the source image each output image
//! keeps, and why. [`slim`]: the all-one-context policy (one slim image);
//! [`partition`]: a partitioned system (images, shared volumes, network,
//! RPE stubs); [`state`]: the directories programs keep their state in;
//! [`listed`]: the directories programs list.

pub mod code_tree;
pub mod listed;
pub mod partition;
pub mod privileges;
pub mod seccomp;
pub mod slim;
pub mod state;
