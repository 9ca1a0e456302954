//! The emit stage: from the source image (read by [`crate::image`]) and a
//! placement, the slim image as an OCI layout and into Docker, and the
//! audit report; for a partitioning policy, one image per partition and
//! the run plan that starts them.

mod error;
pub mod oci;
pub mod partitioned;
pub mod runconfig;
pub mod slim;

pub use error::EmitError;
