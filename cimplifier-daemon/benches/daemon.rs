//! The daemon's figures that the tests only check functionally.
//!
//! `cargo xtask bench-daemon` (root, dockerd, `cargo xtask images`). Prints
//! figures; asserts nothing about time. Two measures against a real daemon:
//! - checkpoint lag: a daemon observing a busy container is killed with
//!   SIGKILL at varied moments; after each restart, the gap it records starts
//!   at its last checkpoint, and the lag is the kill's time minus that;
//! - stream rates: 5 observed containers, 19 clients each reading one
//!   session's events for 6 s (the load test's set-up), events/s per client.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use cimplifier::api::pb;
use tokio_stream::StreamExt;

const IMAGE: &str = "cimplifier-test/base:bookworm";
const KILLS: usize = 10;
const CONTAINERS: usize = 5;
const READERS: usize = 19;
const READ_FOR: Duration = Duration::from_secs(6);

fn main() -> Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        bail!("the daemon benchmark runs cimplifierd: run it as root (`cargo xtask bench-daemon`)");
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()?
        .block_on(run())
}

async fn run() -> Result<()> {
    checkpoint_lag().await?;
    stream_rates().await
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_millis() as u64
}

/// `cimplifierd serve` on its own socket and state directory, without the
/// host's config or the caller's CIMPLIFIER_* variables; killed on drop.
struct Daemon {
    child: Child,
    socket: PathBuf,
    state: PathBuf,
    _dir: tempfile::TempDir,
}

impl Daemon {
    fn start() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let socket = dir.path().join("cimplifier.sock");
        let state = dir.path().join("state");
        let child = Self::spawn(&socket, &state)?;
        let d = Self {
            child,
            socket,
            state,
            _dir: dir,
        };
        d.wait_ready()?;
        Ok(d)
    }

    fn spawn(socket: &Path, state: &Path) -> Result<Child> {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cimplifierd"));
        for (name, _) in std::env::vars_os() {
            if name.to_str().is_some_and(|n| n.starts_with("CIMPLIFIER_")) {
                cmd.env_remove(name);
            }
        }
        cmd.args(["serve", "--config", "/dev/null", "--socket"])
            .arg(socket)
            .arg("--state-dir")
            .arg(state)
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("starting cimplifierd")
    }

    fn wait_ready(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.ctl(&["version"])?.status.success() {
            ensure!(Instant::now() < deadline, "cimplifierd never answered");
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    fn ctl(&self, args: &[&str]) -> Result<Output> {
        Command::new(env!("CARGO_BIN_EXE_cimplifierctl"))
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .context("running cimplifierctl")
    }

    fn kill_and_restart(&mut self) -> Result<u64> {
        self.child.kill()?;
        let killed = now_ms();
        self.child.wait()?;
        self.child = Self::spawn(&self.socket, &self.state)?;
        self.wait_ready()?;
        Ok(killed)
    }

    fn session(&self, name: &str) -> Result<serde_json::Value> {
        let out = self.ctl(&["sessions", "--json"])?;
        let all: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        all.as_array()
            .and_then(|a| a.iter().find(|s| s["container"] == name))
            .cloned()
            .with_context(|| format!("no session {name}"))
    }

    async fn observe(&self, container: &str) -> Result<()> {
        cimplifier::api::connect(&self.socket)
            .await?
            .observe(pb::ObserveRequest {
                container: container.to_owned(),
                ..Default::default()
            })
            .await?;
        Ok(())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A created container that opens files in a loop once started (observe
/// starts it); removed on drop.
struct Busy(String);

impl Busy {
    fn start(tag: &str, pause: &str) -> Result<Self> {
        let name = format!("cimplifier-bench-{tag}-{}", std::process::id());
        let script = format!(
            "while true; do cat /etc/hostname /etc/os-release > /dev/null; sleep {pause}; done"
        );
        let out = Command::new("docker")
            .args(["create", "--name", &name, IMAGE, "/bin/sh", "-c", &script])
            .output()?;
        ensure!(
            out.status.success(),
            "docker create {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(Self(name))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", "-v", &self.0])
            .output();
    }
}

fn summary(name: &str, unit: &str, mut values: Vec<f64>) {
    values.sort_by(f64::total_cmp);
    let median = values[values.len() / 2];
    println!(
        "{name}: median {median:.0} {unit}, min {:.0}, max {:.0} (n = {})",
        values[0],
        values[values.len() - 1],
        values.len()
    );
}

async fn checkpoint_lag() -> Result<()> {
    println!("## checkpoint lag: {KILLS} SIGKILLs of a daemon observing a busy container");
    let mut d = Daemon::start()?;
    let c = Busy::start("ckpt", "0.2")?;
    d.observe(&c.0).await?;
    let mut lags = Vec::new();
    for i in 0..KILLS {
        // Varied moments within the checkpoint interval.
        tokio::time::sleep(Duration::from_millis(1000 + 137 * i as u64)).await;
        let killed = d.kill_and_restart()?;
        let s = d.session(&c.0)?;
        let from = s["gaps"]
            .as_array()
            .and_then(|g| g.last())
            .and_then(|g| g["from_unix_ms"].as_u64())
            .with_context(|| format!("no gap after a kill: {s}"))?;
        lags.push(killed.saturating_sub(from) as f64);
        // Resumed before the next kill.
        let deadline = Instant::now() + Duration::from_secs(20);
        while d.session(&c.0)?["state"] != "observing" {
            ensure!(Instant::now() < deadline, "the session never resumed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    summary("last checkpoint before the kill", "ms", lags);
    Ok(())
}

async fn stream_rates() -> Result<()> {
    println!(
        "## stream rates: {CONTAINERS} observed containers, {READERS} clients reading one session each for {} s",
        READ_FOR.as_secs()
    );
    let d = Daemon::start()?;
    let containers = (0..CONTAINERS)
        .map(|i| Busy::start(&format!("load-{i}"), "0.05"))
        .collect::<Result<Vec<_>>>()?;
    for c in &containers {
        d.observe(&c.0).await?;
    }
    let mut readers = Vec::new();
    for i in 0..READERS {
        let socket = d.socket.clone();
        let session = containers[i % CONTAINERS].0.clone();
        readers.push(tokio::spawn(async move {
            let mut api = cimplifier::api::connect(&socket).await?;
            let mut stream = api
                .stream_events(pb::StreamEventsRequest {
                    sessions: vec![session],
                    ..Default::default()
                })
                .await?
                .into_inner();
            let mut n = 0u64;
            let until = tokio::time::Instant::now() + READ_FOR;
            while let Ok(Some(e)) = tokio::time::timeout_at(until, stream.next()).await {
                e?;
                n += 1;
            }
            anyhow::Ok(n as f64 / READ_FOR.as_secs_f64())
        }));
    }
    let mut rates = Vec::new();
    for r in readers {
        rates.push(r.await??);
    }
    summary("events/s per reading client", "events/s", rates);
    let mut totals = Vec::new();
    for c in &containers {
        let out = d.ctl(&["stop", &c.0])?;
        ensure!(out.status.success(), "stop {}", c.0);
        totals.push(d.session(&c.0)?["events"].as_u64().unwrap_or(0) as f64);
    }
    summary("events per session", "events", totals);
    Ok(())
}
