//! Builds `cimplifier-ebpf`, the kernel programs.
//!
//! They need a compiler with the `core` sources for `bpfel-unknown-none`,
//! which rustup cannot provide on these machines: Debian's rustc-web (with
//! rust-web-src) and bpf-linker, installed by `cargo xtask setup`. Only the
//! child build sees RUSTC_BOOTSTRAP; the main workspace stays on stable.
//! Used by `cimplifier-daemon/build.rs` and `cargo xtask build-ebpf`, so the
//! two cannot drift.

use std::path::{Path, PathBuf};

pub const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
pub const DEBIAN_CARGO: &str = "/usr/bin/cargo";

/// Builds the crate at `crate_dir` into `target_dir` and returns the object's
/// path. Errors say what is missing and how to get it.
pub fn build(crate_dir: &Path, target_dir: &Path, release: bool) -> Result<PathBuf, String> {
    for tool in [DEBIAN_RUSTC, DEBIAN_CARGO] {
        if !Path::new(tool).is_file() {
            return Err(format!(
                "{tool} is missing: the eBPF programs build with Debian's rustc-web/cargo-web \
                 (rustup has no library sources here); run `cargo xtask setup`"
            ));
        }
    }
    // The outer (rustup) cargo's settings would point the inner build at
    // the rustup toolchain, which has no `core` sources.
    let mut cmd = crate::nested_cargo(DEBIAN_CARGO, &[]);
    cmd.current_dir(crate_dir)
        .arg("build")
        .arg("--target-dir")
        .arg(target_dir);
    if release {
        cmd.arg("--release");
    }
    cmd.env("RUSTC", DEBIAN_RUSTC).env("RUSTC_BOOTSTRAP", "1");
    let status = cmd
        .status()
        .map_err(|e| format!("running {DEBIAN_CARGO} in {}: {e}", crate_dir.display()))?;
    if !status.success() {
        return Err(format!(
            "building the eBPF programs in {} failed ({status}); is bpf-linker on PATH? \
             (`cargo xtask setup` installs it)",
            crate_dir.display()
        ));
    }
    let profile = if release { "release" } else { "debug" };
    let object = target_dir
        .join("bpfel-unknown-none")
        .join(profile)
        .join("cimplifier-ebpf");
    if object.is_file() {
        Ok(object)
    } else {
        Err(format!(
            "the eBPF build succeeded but {} is missing",
            object.display()
        ))
    }
}
