//! Builds the kernel programs (`cimplifier-ebpf`) and embeds the object.
//!
//! They need a compiler with the `core` sources for `bpfel-unknown-none`,
//! which rustup cannot provide here: Debian's rustc-web (with rust-web-src)
//! and bpf-linker, installed by `cargo xtask setup`. Only the child build
//! sees RUSTC_BOOTSTRAP; this workspace stays on the stable toolchain.
//! Set CIMPLIFIER_EBPF_OBJECT to use a prebuilt object instead.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const DEBIAN_CARGO: &str = "/usr/bin/cargo";

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.parent().unwrap();
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("cimplifier.bpf.o");
    println!("cargo:rerun-if-env-changed=CIMPLIFIER_EBPF_OBJECT");

    if let Ok(prebuilt) = env::var("CIMPLIFIER_EBPF_OBJECT") {
        println!("cargo:rerun-if-changed={prebuilt}");
        std::fs::copy(&prebuilt, &out)
            .unwrap_or_else(|e| panic!("copying CIMPLIFIER_EBPF_OBJECT={prebuilt}: {e}"));
        return;
    }
    for dir in [
        "cimplifier-ebpf/src",
        "cimplifier-ebpf/Cargo.toml",
        "cimplifier-common/src",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    for tool in [DEBIAN_RUSTC, DEBIAN_CARGO] {
        if !Path::new(tool).exists() {
            panic!(
                "{tool} is missing: the eBPF programs build with Debian's rustc-web. \
                 Run `cargo xtask setup` (as root) first."
            );
        }
    }
    let ebpf_dir = root.join("cimplifier-ebpf");
    let target_dir = root.join("target").join("ebpf");
    let mut cmd = Command::new(DEBIAN_CARGO);
    cmd.current_dir(&ebpf_dir)
        .args(["build", "--release", "--target-dir"])
        .arg(&target_dir)
        .env("RUSTC", DEBIAN_RUSTC)
        .env("RUSTC_BOOTSTRAP", "1");
    // The outer cargo's settings would point the child at rustup's toolchain.
    let inherited = |key: &str| {
        key.starts_with("CARGO_")
            || key.starts_with("RUSTC_")
            || ["CARGO", "RUSTUP_TOOLCHAIN", "RUSTFLAGS"].contains(&key)
    };
    for (key, _) in env::vars().filter(|(k, _)| inherited(k) && k != "RUSTC_BOOTSTRAP") {
        cmd.env_remove(key);
    }
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("running {DEBIAN_CARGO}: {e}"));
    if !status.success() {
        panic!(
            "building the eBPF programs in {} failed ({status}); \
             `cargo xtask build-ebpf` shows the same build",
            ebpf_dir.display()
        );
    }
    let built = target_dir.join("bpfel-unknown-none/release/cimplifier-ebpf");
    std::fs::copy(&built, &out).unwrap_or_else(|e| panic!("copying {}: {e}", built.display()));
}
