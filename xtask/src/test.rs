//! `cargo xtask test`: what CI runs.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

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
    crate::licenses::run()?;
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
    let mut cmd = Command::new(util::cargo());
    cmd.current_dir(&root)
        .args(["test", "--workspace", "--no-fail-fast"])
        .args(args);
    let line = util::display(&cmd);
    println!("+ {line}");
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start `{line}`"))?;
    let mut totals = Totals::default();
    for out in BufReader::new(child.stdout.take().expect("piped stdout")).lines() {
        let out = out?;
        println!("{out}");
        totals.add(&out);
    }
    let status = child.wait()?;
    // One closing line over every test binary: cargo's own last line is
    // often a doc-test run with nothing in it.
    println!("tests: {} passed, {} failed", totals.passed, totals.failed);
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    if totals.passed == 0 {
        bail!("`{line}` ran no test");
    }
    Ok(())
}

/// Sums cargo's per-binary `test result: ok. N passed; M failed; ...` lines.
#[derive(Debug, Default, PartialEq, Eq)]
struct Totals {
    passed: u64,
    failed: u64,
}

impl Totals {
    fn add(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(what), Some(n)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match what {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_cargo_test_result_lines() {
        let mut t = Totals::default();
        t.add("test result: ok. 29 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.51s");
        t.add("test result: FAILED. 1 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1s");
        t.add("test foo ... ok");
        assert_eq!(
            t,
            Totals {
                passed: 30,
                failed: 2
            }
        );
    }
}
