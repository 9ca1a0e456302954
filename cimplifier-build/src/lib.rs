//! Builds what `cimplifierd` embeds, with a cargo nested in the daemon's
//! build script:
//!
//! - [`ebpf`]: the kernel programs (`cimplifier-ebpf`), with Debian's
//!   rustc-web;
//! - [`rpe`]: the static RPE stub and server (`cimplifier-rpe`), with the
//!   outer build's own toolchain;
//!
//! and [`glue`], the check that a glue binary needs nothing from the image
//! it is placed in, which the build script and `emit` both apply.
//!
//! Used by `cimplifier-daemon` (build script and emit), `xtask` and the
//! RPE tests, so none of them can drift from the others.

use std::ffi::OsStr;
use std::process::Command;

pub mod ebpf;
pub mod glue;
pub mod rpe;

/// A `cargo` command free of the outer cargo's settings. A build script
/// (or a test) inherits CARGO_*, RUSTC*, RUSTFLAGS... from the cargo that
/// runs it; they would point the nested build at the outer one's
/// toolchain, flags, target and manifest. CARGO_HOME (the registry cache)
/// and the names in `keep` stay.
pub fn nested_cargo(cargo: impl AsRef<OsStr>, keep: &[&str]) -> Command {
    let mut cmd = Command::new(cargo);
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        let inherited = key == "CARGO"
            || key.starts_with("CARGO_")
            || key.starts_with("RUSTC")
            || key == "RUSTUP_TOOLCHAIN"
            || key == "RUSTFLAGS"
            || key == "RUSTDOC";
        if inherited && key != "CARGO_HOME" && !keep.contains(&&*key) {
            cmd.env_remove(&*key);
        }
    }
    cmd
}
