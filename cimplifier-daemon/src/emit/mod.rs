//! The emit stage: from the source image (read by [`crate::image`]) and a
//! placement, the slim image as an OCI layout and into Docker, and the
//! audit report ([`slim`]); for a partitioning policy, one image per
//! partition and the run plan that starts them ([`partitioned`], written
//! as a Compose file with [`crate::docker::compose`]). [`oci`] builds the
//! images, [`runconfig`] carries the container's run settings over, and
//! [`EmitError`] says why a plan or an emit did not finish.

mod error;
pub mod oci;
pub mod partitioned;
pub mod push;
pub mod runconfig;
pub mod slim;

pub use error::EmitError;
