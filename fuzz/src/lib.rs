//! The fuzz targets' bodies, kept in two self-contained files so that the
//! workspace's tests can include them (`#[path]`) and replay every seed and
//! past crash without building this crate: [`daemon_targets`] (parsers of
//! the daemon) and [`rpe_targets`] (the RPE glue).

pub mod daemon_targets;
pub mod rpe_targets;
