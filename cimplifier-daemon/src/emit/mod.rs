//! The emit stage: reading the source image, writing the slim image as an
//! OCI layout and into Docker, and the audit report.

pub mod image_fs;
pub mod oci;
pub mod slim;
