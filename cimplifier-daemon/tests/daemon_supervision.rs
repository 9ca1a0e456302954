//! Supervision instead of silent failure: the daemon's own parts failing
//! under a real daemon observing a real container. The ring reader and
//! the dispatcher killed (the test hooks, SIGUSR2 and SIGUSR1 with
//! CIMPLIFIER_TEST_HOOKS=1): health turns NOT_SERVING, each is restarted,
//! health turns SERVING again, and the session goes on and counts what
//! they had in hand as lost.
//! A Docker engine of its own (not the shared one), restarted with
//! `--live-restore` while a session observes one of its containers: the
//! session goes on; and a daemon started while that engine is down keeps
//! the session and resumes it once the engine answers, rather than taking
//! an unreachable engine for a container gone. An unreadable record in
//! the store is quarantined and the daemon starts.
//! The state directory full (a small tmpfs): the session ends as failed,
//! its watch is released, and the daemon keeps serving. Needs root and
//! dockerd.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cimplifier::api::pb;
use common::{
    BASE_IMAGE, Container, Daemon, docker, looping, observe, require_root, session_json, touches,
};
use tokio_stream::StreamExt;
use tonic_health::pb::health_check_response::ServingStatus;

/// The health statuses the daemon reports for its API, as they change,
/// on a channel.
async fn health_changes(socket: &Path) -> tokio::sync::mpsc::UnboundedReceiver<ServingStatus> {
    let channel = cimplifier::api::channel(socket).await.unwrap();
    let mut watch = tonic_health::pb::health_client::HealthClient::new(channel)
        .watch(tonic_health::pb::HealthCheckRequest {
            service: "cimplifier.v1.Cimplifier".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(r)) = watch.next().await {
            let _ = tx.send(ServingStatus::try_from(r.status).unwrap());
        }
    });
    rx
}

/// Sends `sig` to the daemon.
fn signal(d: &Daemon, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(d.child.id() as i32), sig).unwrap();
}

async fn next_status(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<ServingStatus>,
) -> ServingStatus {
    tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("a health change within 30 s")
        .expect("the health stream goes on")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_ring_reader_or_dispatcher_is_restarted_and_its_loss_counted() {
    require_root();
    let d = Daemon::start_with_env(&[], &[("CIMPLIFIER_TEST_HOOKS", Path::new("1"))]);
    let c = looping("supervise-reader", "0.1");
    observe(&d, &c.0).await;
    let events = |d: &Daemon| session_json(d, &c.0)["events"].as_u64().unwrap_or(0);
    common::wait_until(20, "the loop is seen", || events(&d) > 0);

    let mut health = health_changes(&d.socket).await;
    assert_eq!(next_status(&mut health).await, ServingStatus::Serving);
    signal(&d, nix::sys::signal::Signal::SIGUSR2);
    assert_eq!(
        next_status(&mut health).await,
        ServingStatus::NotServing,
        "the reader was killed: health says so"
    );
    assert_eq!(
        next_status(&mut health).await,
        ServingStatus::Serving,
        "the reader was restarted"
    );
    // The dispatcher too (SIGUSR1): it panics routing an event.
    signal(&d, nix::sys::signal::Signal::SIGUSR1);
    assert_eq!(
        next_status(&mut health).await,
        ServingStatus::NotServing,
        "the dispatcher was killed: health says so"
    );
    assert_eq!(
        next_status(&mut health).await,
        ServingStatus::Serving,
        "the dispatcher was restarted"
    );

    // The session goes on: what the container does now is recorded.
    let s = session_json(&d, &c.0);
    assert_eq!(s["state"], "observing", "{s}");
    docker(&["exec", &c.0, "cat", "/etc/os-release"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stopped = d.ctl(&["stop", &c.0]);
    assert!(
        stopped.status.success(),
        "{}",
        String::from_utf8_lossy(&stopped.stderr)
    );
    let (record, recorded) = d.session_events(&c.0);
    assert!(
        touches(&recorded, "/etc/os-release"),
        "an exec after the restart is recorded"
    );
    assert_eq!(record["end"], "stopped", "{record}");
    // What the reader held when it died is the session's loss, not a
    // silent hole: the session is incomplete, and says why.
    // At least one event of the reader's batch, and the dispatcher's one.
    let interrupted = record["loss"]["interrupted"].as_u64().unwrap_or(0);
    assert!(interrupted >= 2, "the loss is counted: {record}");
    let s = session_json(&d, &c.0);
    assert_eq!(s["complete"], false, "{s}");

    // A health watch never ends on its own: on SIGTERM it hears that the
    // daemon stops serving, and it does not keep the daemon up (after the
    // calls' grace its connection is closed; `stop_daemon` fails the test
    // if the daemon has not exited in a minute).
    let mut d = d;
    signal(&d, nix::sys::signal::Signal::SIGTERM);
    assert_eq!(
        next_status(&mut health).await,
        ServingStatus::NotServing,
        "shutting down: health says so"
    );
    common::stop_daemon(&mut d.child);
    let ended = tokio::time::timeout(Duration::from_secs(30), health.recv()).await;
    assert!(
        matches!(ended, Ok(None)),
        "the health watch ends with the daemon: {ended:?}"
    );
}

/// A tmpfs of `mib` MiB on a fresh directory, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn new(mib: u32) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mounting a tmpfs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// Writes zeros until the file system is full.
    fn fill(&self) {
        let _ = Command::new("dd")
            .args(["if=/dev/zero", "bs=1M"])
            .arg(format!("of={}", self.dir.path().join("filler").display()))
            .output()
            .unwrap();
        let free = nix::sys::statvfs::statvfs(self.dir.path()).unwrap();
        assert!(free.blocks_available() < 8, "the tmpfs is full");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).output();
    }
}

/// One value of the daemon's Prometheus metrics.
fn metric(addr: &str, name: &str) -> u64 {
    let out = Command::new("curl")
        .args(["-sf", &format!("http://{addr}/metrics")])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_state_directory_fails_the_session_and_the_daemon_serves_on() {
    require_root();
    let tmpfs = Tmpfs::new(16);
    let state = tmpfs.path().join("state");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let metrics_addr = format!("127.0.0.1:{port}");
    let mut d = Daemon::start_on_state(&state, &["--metrics-addr", &metrics_addr], &[]);
    let watched = || metric(&metrics_addr, "cimplifier_watched_cgroups");
    let before = watched();
    // A new file each time: every event is a new use, so the store grows.
    let c = Container::create(
        "supervise-full",
        &[
            BASE_IMAGE,
            "/bin/sh",
            "-c",
            "i=0; while true; do i=$((i+1)); : > /tmp/f$i; done",
        ],
    );
    observe(&d, &c.0).await;
    common::wait_until(20, "the loop is seen", || {
        session_json(&d, &c.0)["events"].as_u64() > Some(0)
    });
    assert!(watched() > before, "the container is watched");
    tmpfs.fill();
    common::wait_until(60, "the session fails", || {
        session_json(&d, &c.0)["state"] == "failed"
    });
    let s = session_json(&d, &c.0);
    let error = s["error"].as_str().unwrap();
    assert!(
        error.contains(&state.display().to_string()) && error.contains("No space left"),
        "the reason names the state directory and the error: {error}"
    );
    common::wait_until(10, "the watch is released", || watched() == before);

    // The daemon serves on: alive, healthy, answering.
    assert!(d.child.try_wait().unwrap().is_none(), "the daemon runs");
    let channel = cimplifier::api::channel(&d.socket).await.unwrap();
    let health = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: "cimplifier.v1.Cimplifier".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status, ServingStatus::Serving as i32);
    let listed = d.ctl(&["sessions"]);
    assert!(listed.status.success(), "{listed:?}");
    d.kill_hard();
}

#[test]
fn an_unreadable_record_is_quarantined_and_the_daemon_starts() {
    require_root();
    let mut d = Daemon::start();
    d.kill_hard();
    // A record cut off mid-write by a bug, or written by a newer version.
    let db = redb::Database::open(d.state.join("cimplifier.redb")).unwrap();
    let txn = db.begin_write().unwrap();
    txn.open_table(redb::TableDefinition::<&str, &[u8]>::new("sessions"))
        .unwrap()
        .insert("damaged", &b"{\"name\": \"damaged\", \"id\": "[..])
        .unwrap();
    txn.commit().unwrap();
    drop(db);

    d.restart();
    let s = session_json(&d, "damaged");
    assert_eq!(s["state"], "failed", "{s}");
    let error = s["error"].as_str().unwrap();
    assert!(
        error.contains("quarantined") && error.contains("cimplifier.redb"),
        "it says why, and where the record is kept: {error}"
    );
    // The daemon answers.
    let v = d.ctl(&["version"]);
    assert!(v.status.success());
}

/// A second Docker engine, all its own (data, exec root, socket, network
/// namespace, no networking), with `--live-restore` so its containers outlive its
/// restarts; the base test image loaded. Stopped, with its containers
/// removed, on drop.
struct SecondEngine {
    dir: tempfile::TempDir,
    dockerd: Option<std::process::Child>,
}

impl SecondEngine {
    fn start() -> Self {
        // Short: containerd's socket path below the exec root has a limit.
        let dir = tempfile::Builder::new()
            .prefix("cimpl-d2-")
            .tempdir_in("/tmp")
            .unwrap();
        let mut engine = Self { dir, dockerd: None };
        engine.run();
        let mut save = Command::new("docker")
            .args(["save", BASE_IMAGE])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let load = Command::new("docker")
            .args(["-H", &engine.host(), "load"])
            .stdin(save.stdout.take().unwrap())
            .output()
            .unwrap();
        assert!(save.wait().unwrap().success(), "docker save {BASE_IMAGE}");
        assert!(
            load.status.success(),
            "loading {BASE_IMAGE} into the second engine: {}",
            String::from_utf8_lossy(&load.stderr)
        );
        engine
    }

    fn host(&self) -> String {
        format!("unix://{}/docker.sock", self.dir.path().display())
    }

    /// Starts dockerd and waits until it answers.
    fn run(&mut self) {
        let dir = self.dir.path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("dockerd.log"))
            .unwrap();
        // In a network namespace of its own: with --bridge=none dockerd
        // deletes the host's docker0, which the shared engine's containers
        // need.
        let child = Command::new("unshare")
            .args(["--net", "dockerd"])
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("dockerd.pid"))
            .args(["-H", &self.host()])
            .args(["--bridge=none", "--iptables=false", "--live-restore"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.dockerd = Some(child);
        common::wait_until(60, "the second dockerd answers", || {
            Command::new("docker")
                .args(["-H", &self.host(), "version"])
                .output()
                .is_ok_and(|o| o.status.success())
        });
    }

    /// Stops dockerd (SIGTERM); its containers run on.
    fn stop(&mut self) {
        if let Some(mut child) = self.dockerd.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = child.wait();
        }
    }

    fn docker(&self, args: &[&str]) -> String {
        let host = self.host();
        let mut all = vec!["-H", host.as_str()];
        all.extend_from_slice(args);
        docker(&all)
    }
}

impl Drop for SecondEngine {
    fn drop(&mut self) {
        if self.dockerd.is_none() {
            self.run();
        }
        let host = self.host();
        let ids = Command::new("docker")
            .args(["-H", &host, "ps", "-aq"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        for id in ids.split_whitespace() {
            let _ = Command::new("docker")
                .args(["-H", &host, "rm", "-f", "-v", id])
                .output();
        }
        self.stop();
        // Whatever the engine left mounted below its directories.
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let dir = self.dir.path().display().to_string();
        for target in mounts.lines().filter_map(|l| l.split(' ').nth(1)).rev() {
            if target.starts_with(&dir) {
                let _ = Command::new("umount").args(["-l", target]).output();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_goes_on_across_restarts_of_the_docker_engine() {
    require_root();
    let mut engine = SecondEngine::start();
    let host = engine.host();
    let mut d = Daemon::start_with_env(&[], &[("DOCKER_HOST", Path::new(&host))]);
    let name = format!("cimplifier-supervise-engine-{}", std::process::id());
    engine.docker(&[
        "create",
        "--name",
        &name,
        "--network",
        "none",
        BASE_IMAGE,
        "/bin/sh",
        "-c",
        "while true; do cat /etc/hostname > /dev/null; sleep 0.2; done",
    ]);
    observe(&d, &name).await;
    let events = |d: &Daemon| session_json(d, &name)["events"].as_u64().unwrap_or(0);
    common::wait_until(20, "the loop is seen", || events(&d) > 0);

    // The engine restarts; the container runs on, and so does the session.
    engine.stop();
    tokio::time::sleep(Duration::from_secs(1)).await;
    engine.run();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let s = session_json(&d, &name);
    assert_eq!(
        s["state"], "observing",
        "not ended by the engine's restart: {s}"
    );
    engine.docker(&["exec", &name, "cat", "/etc/os-release"]);

    // The daemon dies and starts again while the engine is down: the
    // engine not answering is not the container being gone.
    tokio::time::sleep(Duration::from_secs(1)).await;
    d.kill_hard();
    engine.stop();
    d.restart();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let s = session_json(&d, &name);
    assert_eq!(
        s["state"], "observing",
        "kept while the engine is down: {s}"
    );
    engine.run();
    common::wait_until(60, "the session is resumed once the engine answers", || {
        session_json(&d, &name)["segments"]
            .as_array()
            .is_some_and(|s| s.len() == 2)
    });
    engine.docker(&["exec", &name, "cat", "/etc/passwd"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stopped = d.ctl(&["stop", &name]);
    assert!(
        stopped.status.success(),
        "{}",
        String::from_utf8_lossy(&stopped.stderr)
    );
    let (record, recorded) = d.session_events(&name);
    assert_eq!(record["end"], "stopped", "{record}");
    assert!(
        touches(&recorded, "/etc/os-release"),
        "recorded after the engine's restart"
    );
    assert!(
        touches(&recorded, "/etc/passwd"),
        "recorded after the resumption"
    );
    assert_eq!(
        record["gaps"].as_array().map(Vec::len),
        Some(1),
        "the daemon's own outage is a gap, the engine's is not: {record}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_selectors_outlive_a_restart_of_the_daemon() {
    require_root();
    let mut d = Daemon::start();
    let selector = format!("io.cimplifier.test-team=supervise-{}", std::process::id());
    cimplifier::api::connect(&d.socket)
        .await
        .unwrap()
        .observe(pb::ObserveRequest {
            label_selector: selector.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    d.kill_hard();
    d.restart();
    let listed = cimplifier::api::connect(&d.socket)
        .await
        .unwrap()
        .list_sessions(pb::ListSessionsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(
        listed.label_selectors.contains(&selector),
        "{:?}",
        listed.label_selectors
    );
}
