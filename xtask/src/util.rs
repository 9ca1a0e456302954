//! Small helpers: running commands with readable errors, timing, root check.

use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

/// The repository root (the parent of xtask/).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the repository root")
        .to_path_buf()
}

/// Refuses to go on unless running as root (effective uid 0).
pub fn ensure_root(what: &str) -> Result<()> {
    // /proc/self belongs to the effective uid of the process.
    let uid = std::fs::metadata("/proc/self")
        .context("reading /proc/self")?
        .uid();
    if uid != 0 {
        bail!(
            "`cargo xtask {what}` must run as root (uid 0, this is uid {uid}): it installs \
             packages, starts dockerd and loads eBPF programs. Try `sudo -E cargo xtask {what}`."
        );
    }
    Ok(())
}

/// A command line for messages: program and arguments, space separated.
pub fn display(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        let arg = arg.to_string_lossy();
        if arg.is_empty() || arg.contains([' ', '\'', '"', '$']) {
            s.push('\'');
            s.push_str(&arg.replace('\'', r"'\''"));
            s.push('\'');
        } else {
            s.push_str(&arg);
        }
    }
    s
}

/// Builds a command from a program and its arguments.
pub fn cmd<I, S>(program: &str, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut c = Command::new(program);
    c.args(args);
    c
}

/// Runs a command with inherited stdio, printing it first; fails on a non-zero exit.
pub fn run(cmd: &mut Command) -> Result<()> {
    let line = display(cmd);
    println!("+ {line}");
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// Runs a command quietly and returns its output, whatever its exit status.
/// Fails only if the program cannot be started.
pub fn probe(cmd: &mut Command) -> Result<Output> {
    let line = display(cmd);
    cmd.stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not start `{line}`"))
}

/// Runs a command quietly, fails on a non-zero exit (with its stderr), returns trimmed stdout.
pub fn capture(cmd: &mut Command) -> Result<String> {
    let line = display(cmd);
    let out = probe(cmd)?;
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The cargo that runs xtask (falls back to `cargo` on PATH).
pub fn cargo() -> std::ffi::OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// Builds target/release/cimplifierd and cimplifierctl.
pub fn build_daemon_release(root: &Path) -> Result<()> {
    run(Command::new(cargo()).current_dir(root).args([
        "build",
        "--release",
        "-p",
        "cimplifier-daemon",
        "--bin",
        "cimplifierctl",
        "--bin",
        "cimplifierd",
    ]))
}

/// Prints a step header and, when dropped, how long the step took.
pub struct Step {
    name: String,
    start: Instant,
}

impl Step {
    pub fn new(name: impl Into<String>) -> Self {
        let name = name.into();
        println!("==> {name}");
        Step {
            name,
            start: Instant::now(),
        }
    }
}

impl Drop for Step {
    fn drop(&mut self) {
        println!(
            "<== {} ({:.1} s)",
            self.name,
            self.start.elapsed().as_secs_f64()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_quotes_odd_arguments() {
        let c = cmd("docker", ["import", "--change", "LABEL a=b", "-", "it's"]);
        assert_eq!(
            display(&c),
            r"docker import --change 'LABEL a=b' - 'it'\''s'"
        );
    }
}
