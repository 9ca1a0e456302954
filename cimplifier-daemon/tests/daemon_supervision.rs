//! Supervision instead of silent failure: the daemon's own parts failing
//! under a real daemon observing a real container. The ring reader killed
//! (the test hook, SIGUSR2 with CIMPLIFIER_TEST_HOOKS=1): health turns
//! NOT_SERVING, the reader is restarted, health turns SERVING again, and
//! the session goes on and counts what the reader had in hand as lost.
//! The state directory full (a small tmpfs): the session ends as failed,
//! its watch is released, and the daemon keeps serving. Needs root and
//! dockerd.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cimplifier::api::pb;
use common::{BASE_IMAGE, Container, Daemon, docker, require_root, session_json, touches};
use tokio_stream::StreamExt;
use tonic_health::pb::health_check_response::ServingStatus;

fn looping(tag: &str) -> Container {
    Container::create(
        tag,
        &[
            BASE_IMAGE,
            "/bin/sh",
            "-c",
            "while true; do cat /etc/hostname > /dev/null; sleep 0.1; done",
        ],
    )
}

async fn observe(d: &Daemon, container: &str) {
    cimplifier::api::connect(&d.socket)
        .await
        .unwrap()
        .observe(pb::ObserveRequest {
            container: container.to_owned(),
            ..Default::default()
        })
        .await
        .unwrap();
}

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

async fn next_status(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<ServingStatus>,
) -> ServingStatus {
    tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("a health change within 30 s")
        .expect("the health stream goes on")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_ring_reader_is_restarted_and_its_loss_counted() {
    require_root();
    let d = Daemon::start_with_env(&[], &[("CIMPLIFIER_TEST_HOOKS", Path::new("1"))]);
    let c = looping("supervise-reader");
    observe(&d, &c.0).await;
    let events = |d: &Daemon| session_json(d, &c.0)["events"].as_u64().unwrap_or(0);
    common::wait_until(20, "the loop is seen", || events(&d) > 0);

    let mut health = health_changes(&d.socket).await;
    assert_eq!(next_status(&mut health).await, ServingStatus::Serving);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(d.child.id() as i32),
        nix::sys::signal::Signal::SIGUSR2,
    )
    .unwrap();
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
    let interrupted = record["loss"]["interrupted"].as_u64().unwrap_or(0);
    assert!(interrupted > 0, "the loss is counted: {record}");
    let s = session_json(&d, &c.0);
    assert_eq!(s["complete"], false, "{s}");
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
