//! `cargo xtask build-ebpf`: the kernel programs, built with Debian's toolchain.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::util::{self, Step};

/// Builds cimplifier-ebpf and returns the path of the object.
///
/// `target_dir` defaults to cimplifier-ebpf/target. The daemon's build script
/// builds the same crate into target/ebpf; passing that directory lets it
/// reuse this build.
pub fn build(release: bool, target_dir: Option<&Path>) -> Result<PathBuf> {
    let crate_dir = util::repo_root().join("cimplifier-ebpf");
    // Absolute: the build runs in crate_dir, a relative path means the caller's directory.
    let target_dir = match target_dir {
        Some(dir) => std::path::absolute(dir)
            .with_context(|| format!("resolving --target-dir {}", dir.display()))?,
        None => crate_dir.join("target"),
    };
    let _step = Step::new(format!(
        "build-ebpf ({})",
        if release { "release" } else { "debug" }
    ));
    let object = cimplifier_build::ebpf::build(&crate_dir, &target_dir, release)
        .map_err(anyhow::Error::msg)?;
    println!("eBPF object: {}", object.display());
    Ok(object)
}
