//! `cargo xtask bench-trace`: tracer overhead against same-run baselines.

use std::process::Command;

use anyhow::Result;

use crate::util::{self, Step};

pub fn trace() -> Result<()> {
    util::ensure_root("bench-trace")?;
    crate::setup::run()?;
    let _step = Step::new("bench-trace");
    util::run(
        Command::new(util::cargo())
            .current_dir(util::repo_root())
            .args(["bench", "-p", "cimplifier-daemon", "--bench", "trace"]),
    )
}
