//! Supervision instead of silent failure: the daemon's own parts failing
//! under a real daemon observing a real container. The ring reader killed
//! (the test hook, SIGUSR2 with CIMPLIFIER_TEST_HOOKS=1): health turns
//! NOT_SERVING, the reader is restarted, health turns SERVING again, and
//! the session goes on and counts what the reader had in hand as lost.
//! Needs root and dockerd.

mod common;

use std::path::Path;
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
