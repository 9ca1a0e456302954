//! `cargo xtask bench-trace`, `bench-model`, `bench-emit` and `bench-daemon`: figures
//! measured in one run.

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

pub fn model() -> Result<()> {
    util::ensure_root("bench-model")?;
    crate::setup::run()?;
    let _step = Step::new("bench-model");
    util::run(
        Command::new(util::cargo())
            .current_dir(util::repo_root())
            .args(["bench", "-p", "cimplifier-daemon", "--bench", "model"]),
    )
}

pub fn emit() -> Result<()> {
    util::ensure_root("bench-emit")?;
    crate::setup::run()?;
    let _step = Step::new("bench-emit");
    util::run(
        Command::new(util::cargo())
            .current_dir(util::repo_root())
            .args(["bench", "-p", "cimplifier-daemon", "--bench", "emit"]),
    )
}

pub fn daemon() -> Result<()> {
    util::ensure_root("bench-daemon")?;
    crate::setup::run()?;
    let _step = Step::new("bench-daemon");
    util::run(
        Command::new(util::cargo())
            .current_dir(util::repo_root())
            .args(["bench", "-p", "cimplifier-daemon", "--bench", "daemon"]),
    )
}
