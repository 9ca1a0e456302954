//! Builds the RPE stub and server static, as `cimplifierd` embeds them.
//!
//! Static means glibc with `+crt-static` for an explicit
//! `--target x86_64-unknown-linux-gnu` (a static-pie binary; there is no
//! musl target here). With an explicit target, RUSTFLAGS apply only to
//! target crates, not to build scripts and proc-macros (serde_derive),
//! which cannot be static.

use std::path::{Path, PathBuf};

use crate::glue::{GlueBinary, check_static};

pub const TARGET: &str = "x86_64-unknown-linux-gnu";
pub const STATIC_RUSTFLAGS: &str = "-C target-feature=+crt-static";

/// Paths of the built stub and server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaticGlue {
    pub stub: PathBuf,
    pub server: PathBuf,
    pub seed: PathBuf,
}

impl StaticGlue {
    pub fn path(&self, bin: GlueBinary) -> &Path {
        match bin {
            GlueBinary::Stub => &self.stub,
            GlueBinary::Server => &self.server,
            GlueBinary::Seed => &self.seed,
        }
    }
}

/// What the build reads, for a build script's `rerun-if-changed`.
pub fn sources(workspace: &Path) -> Vec<PathBuf> {
    [
        "cimplifier-rpe/src",
        "cimplifier-rpe/Cargo.toml",
        "Cargo.toml",
        "Cargo.lock",
    ]
    .iter()
    .map(|p| workspace.join(p))
    .collect()
}

/// Builds `cimplifier-rpe`'s binaries (release, static) in the workspace
/// at `workspace` into `target_dir`, checks them with
/// [`check_static`], and returns their paths. `target_dir` must not be
/// the outer build's: its cargo holds that directory's lock while a build
/// script runs. The outer cargo (`$CARGO`, else `cargo` on PATH) builds
/// it, with the outer rustup toolchain and jobserver, so the nested build
/// shares the outer one's job limit.
pub fn build_static(workspace: &Path, target_dir: &Path) -> Result<StaticGlue, String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = crate::nested_cargo(
        &cargo,
        &[
            "RUSTC",
            "RUSTUP_TOOLCHAIN",
            "CARGO_MAKEFLAGS",
            "CARGO_NET_OFFLINE",
        ],
    );
    cmd.current_dir(workspace)
        .args(["build", "--release", "-p", "cimplifier-rpe", "--bins"])
        .args(["--target", TARGET])
        .arg("--target-dir")
        .arg(target_dir)
        .env("RUSTFLAGS", STATIC_RUSTFLAGS);
    let status = cmd.status().map_err(|e| {
        format!(
            "running {} to build the static RPE glue in {}: {e}",
            cargo.to_string_lossy(),
            workspace.display()
        )
    })?;
    if !status.success() {
        return Err(format!(
            "building the static RPE glue (cimplifier-rpe, RUSTFLAGS=\"{STATIC_RUSTFLAGS}\" \
             --target {TARGET}) into {} failed ({status}); its output is above",
            target_dir.display()
        ));
    }
    let dir = target_dir.join(TARGET).join("release");
    let glue = StaticGlue {
        stub: dir.join(GlueBinary::Stub.file_name()),
        server: dir.join(GlueBinary::Server.file_name()),
        seed: dir.join(GlueBinary::Seed.file_name()),
    };
    for bin in GlueBinary::ALL {
        check_file(glue.path(bin))?;
    }
    Ok(glue)
}

/// Reads `path` and applies [`check_static`]; the error names the file.
pub fn check_file(path: &Path) -> Result<(), String> {
    let bytes = std::fs::read(path)
        .map_err(|e| format!("reading the RPE glue binary {}: {e}", path.display()))?;
    check_static(&bytes).map_err(|e| format!("RPE glue binary {}: {e}", path.display()))
}
