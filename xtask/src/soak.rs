//! `cargo xtask soak`: the daemon's memory over a long observation. A
//! release daemon observes a redis container from its first exec while
//! redis-benchmark runs back to back; every
//! minute the daemon's resident memory, the session's events and the store
//! size are printed. Asserts nothing: the figures go to docs/benchmarks.md.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::util::{self, Step, cmd};

const CONTAINER: &str = "cimplifier-soak-redis";
const IMAGE: &str = "cimplifier-test/redis:latest";
const PORT: &str = "6391";
const STATE_DIR: &str = "target/soak-state";
const SOCKET: &str = "target/soak-state/cimplifier.sock";

struct Cleanup(Vec<Child>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = cmd("docker", ["rm", "-f", "-v", CONTAINER])
            .stdout(Stdio::null())
            .status();
    }
}

/// A `/proc/PID/status` figure in KiB: `VmRSS` (all resident memory,
/// with the ring buffer's mapping) or `RssAnon` (the daemon's own heap and
/// stacks).
fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("{field} in /proc/{pid}/status"))
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn session(root: &Path) -> Result<(u64, u64)> {
    let out = util::capture(
        Command::new(root.join("target/release/cimplifierctl"))
            .current_dir(root)
            .args(["--socket", SOCKET, "sessions", "--json"]),
    )?;
    let all: serde_json::Value = serde_json::from_str(&out)?;
    let s = all
        .as_array()
        .and_then(|a| a.iter().find(|s| s["container"] == CONTAINER))
        .context("the redis container has no session")?;
    Ok((
        s["events"].as_u64().unwrap_or(0),
        s["lost_events"].as_u64().unwrap_or(0),
    ))
}

pub fn run(minutes: u64) -> Result<()> {
    util::ensure_root("soak")?;
    crate::setup::run()?;
    let root = util::repo_root();
    let _step = Step::new("soak");
    util::build_daemon_release(&root)?;
    let _ = std::fs::remove_dir_all(root.join(STATE_DIR));
    let _ = cmd("docker", ["rm", "-f", "-v", CONTAINER])
        .stdout(Stdio::null())
        .status();
    let mut cleanup = Cleanup(Vec::new());
    let daemon = Command::new(root.join("target/release/cimplifierd"))
        .current_dir(&root)
        .args(["serve", "--socket", SOCKET, "--state-dir", STATE_DIR])
        .stderr(Stdio::null())
        .spawn()
        .context("starting cimplifierd")?;
    let daemon_pid = daemon.id();
    cleanup.0.push(daemon);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !util::probe(
        Command::new(root.join("target/release/cimplifierctl"))
            .current_dir(&root)
            .args(["--socket", SOCKET, "version"]),
    )?
    .status
    .success()
    {
        if Instant::now() > deadline {
            bail!("cimplifierd did not answer on {SOCKET}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let (idle_rss, idle_anon) = (
        status_kib(daemon_pid, "VmRSS")?,
        status_kib(daemon_pid, "RssAnon")?,
    );
    util::run(&mut cmd(
        "docker",
        [
            "create",
            "--name",
            CONTAINER,
            "-p",
            &format!("127.0.0.1:{PORT}:6379"),
            IMAGE,
        ],
    ))?;
    // The daemon starts it under observation and observes until killed.
    let observer = Command::new(root.join("target/release/cimplifierctl"))
        .current_dir(&root)
        .args(["--socket", SOCKET, "observe", CONTAINER])
        .stdout(Stdio::null())
        .spawn()
        .context("starting cimplifierctl observe")?;
    cleanup.0.push(observer);
    std::thread::sleep(Duration::from_secs(3));
    let benchmark = Command::new("sh")
        .args([
            "-c",
            &format!(
                "while true; do redis-benchmark -p {PORT} -q -n 200000 -c 20 -t set,get,incr,lpush,lpop > /dev/null; done"
            ),
        ])
        .spawn()
        .context("starting redis-benchmark")?;
    cleanup.0.push(benchmark);
    println!(
        "daemon idle (programs loaded, nothing observed): resident {:.1} MiB, of which anonymous {:.1} MiB",
        mib(idle_rss),
        mib(idle_anon)
    );
    println!(
        "(resident includes the ring buffer's shared mapping, fixed by --ring-buffer-mib; anonymous is the daemon's own memory)"
    );
    println!("minute  resident_mib  anonymous_mib   events  lost  store_mib");
    let start = Instant::now();
    for minute in 1..=minutes {
        let next = start + Duration::from_secs(60 * minute);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        let (events, lost) = session(&root)?;
        let store =
            std::fs::metadata(root.join(STATE_DIR).join("cimplifier.redb")).map_or(0, |m| m.len());
        println!(
            "{minute:>6}  {:>12.1}  {:>13.1}  {events:>7}  {lost:>4}  {:>9.1}",
            mib(status_kib(daemon_pid, "VmRSS")?),
            mib(status_kib(daemon_pid, "RssAnon")?),
            store as f64 / (1 << 20) as f64
        );
    }
    Ok(())
}
