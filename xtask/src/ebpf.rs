//! `cargo xtask build-ebpf`: the kernel programs, built with Debian's toolchain.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::util::{self, Step};

const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const DEBIAN_CARGO: &str = "/usr/bin/cargo";

/// Builds cimplifier-ebpf and returns the path of the object.
///
/// `target_dir` defaults to cimplifier-ebpf/target. The daemon's build script
/// builds the same crate into target/ebpf; passing that directory lets it
/// reuse this build.
pub fn build(release: bool, target_dir: Option<&Path>) -> Result<PathBuf> {
    for tool in [DEBIAN_RUSTC, DEBIAN_CARGO] {
        if !Path::new(tool).is_file() {
            bail!(
                "{tool} is missing: the eBPF programs build with Debian's rustc-web/cargo-web \
                 (rustup has no library sources here); run `cargo xtask setup`"
            );
        }
    }
    if crate::setup::bpf_linker_version().is_none() {
        bail!(
            "bpf-linker is not on PATH: run `cargo xtask setup` (and make sure ~/.cargo/bin is on PATH)"
        );
    }
    let root = util::repo_root();
    let crate_dir = root.join("cimplifier-ebpf");
    // Absolute: the build runs in crate_dir, a relative path means the caller's directory.
    let target_dir = match target_dir {
        Some(dir) => std::path::absolute(dir)
            .with_context(|| format!("resolving --target-dir {}", dir.display()))?,
        None => crate_dir.join("target"),
    };
    let profile = if release { "release" } else { "debug" };
    let _step = Step::new(format!("build-ebpf ({profile})"));

    let mut build = Command::new(DEBIAN_CARGO);
    build
        .current_dir(&crate_dir)
        .arg("build")
        .arg("--target-dir")
        .arg(&target_dir);
    if release {
        build.arg("--release");
    }
    // Settings inherited from the outer (rustup) cargo would point the inner
    // build at the rustup toolchain, which has no `core` sources.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if (key == "CARGO"
            || key.starts_with("CARGO_")
            || key.starts_with("RUSTC")
            || key.starts_with("RUSTUP_TOOLCHAIN"))
            && key != "CARGO_HOME"
        {
            build.env_remove(&*key);
        }
    }
    build
        .env_remove("RUSTFLAGS")
        .env_remove("RUSTDOC")
        .env("RUSTC", DEBIAN_RUSTC)
        .env("RUSTC_BOOTSTRAP", "1");
    util::run(&mut build)?;

    let object = target_dir
        .join("bpfel-unknown-none")
        .join(profile)
        .join("cimplifier-ebpf");
    if !object.is_file() {
        bail!(
            "the eBPF build succeeded but {} is missing",
            object.display()
        );
    }
    println!("eBPF object: {}", object.display());
    Ok(object)
}
