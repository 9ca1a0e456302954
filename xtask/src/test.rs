//! `cargo xtask test`: what CI runs.

use std::process::Command;

use anyhow::Result;

use crate::util::{self, Step};

pub fn run(args: &[String]) -> Result<()> {
    util::ensure_root("test")?;
    let _all = Step::new("test");
    crate::setup::run()?;
    // The daemon's build script builds the same crate into target/ebpf:
    // building there first means clippy and cargo test reuse it.
    let target_dir = util::repo_root().join("target").join("ebpf");
    crate::ebpf::build(true, Some(&target_dir))?;
    let root = util::repo_root();
    {
        let _step = Step::new("clippy");
        util::run(Command::new(util::cargo()).current_dir(&root).args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
    }
    let _step = Step::new("cargo test");
    util::run(
        Command::new(util::cargo())
            .current_dir(&root)
            .args(["test", "--workspace"])
            .args(args),
    )
}
