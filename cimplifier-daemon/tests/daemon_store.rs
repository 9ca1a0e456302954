//! Persistence: a daemon killed with SIGKILL mid-observation and started
//! again keeps what it saw up to its last checkpoint (at most 500 ms before
//! the kill), marks the gap, and resumes observing the container. Real
//! daemon, real container. Needs root and dockerd.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{
    BASE_IMAGE, Container, Daemon, docker, looping, observe, require_root, session_json, stdout_of,
    touches, wait_until,
};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_daemon_keeps_what_it_saw_marks_the_gap_and_resumes() {
    require_root();
    let mut d = Daemon::start();
    let c = looping("store-resume", "0.2");
    observe(&d, &c.0).await;
    let events = |d: &Daemon| session_json(d, &c.0)["events"].as_u64().unwrap_or(0);
    wait_until(20, "the loop is seen", || events(&d) > 0);
    // Seen 1.1 s before the kill: must survive it.
    docker(&["exec", &c.0, "cat", "/etc/os-release"]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let killed_ms = now_ms();
    d.kill_hard();

    // While the daemon is down the container goes on; this is the gap.
    docker(&["exec", &c.0, "cat", "/etc/debian_version"]);
    d.restart();
    let resumed = session_json(&d, &c.0);
    assert_eq!(resumed["state"], "observing", "resumed: {resumed}");
    assert_eq!(resumed["complete"], false, "a gap is not complete");
    let gaps = resumed["gaps"].as_array().unwrap();
    assert_eq!(gaps.len(), 1, "{resumed}");
    let from = gaps[0]["from_unix_ms"].as_u64().unwrap();
    // How close to the kill the last checkpoint was is a figure for
    // `cargo bench --bench daemon`; here it is only before the kill.
    assert!(
        from <= killed_ms,
        "the gap starts before the kill: {resumed}"
    );
    assert!(gaps[0]["to_unix_ms"].as_u64().unwrap() >= killed_ms);
    assert!(gaps[0]["reason"].as_str().unwrap().contains("killed"));
    let segments = resumed["segments"].as_array().unwrap();
    assert_eq!(segments.len(), 2, "{resumed}");
    assert_eq!(segments[1]["origin"], "resumed after a daemon restart");

    // Observed again after the restart.
    let before = events(&d);
    docker(&["exec", &c.0, "cat", "/etc/issue"]);
    wait_until(20, "the exec after the restart is seen", || {
        events(&d) > before
    });
    let stopped = stdout_of(&d.ctl(&["stop", &c.0]));
    assert!(stopped.contains("ended: stopped"), "{stopped}");
    let (record, events) = d.session_events(&c.0);
    assert!(
        touches(&events, "/etc/os-release"),
        "what was seen before the kill was kept"
    );
    assert!(
        touches(&events, "/etc/issue"),
        "observing resumed after the restart"
    );
    assert!(
        !touches(&events, "/etc/debian_version"),
        "nothing is invented for the gap"
    );
    assert_eq!(record["events"].as_u64().unwrap(), events.len() as u64);

    // The gap is why emit refuses, unless told.
    let refused = d.ctl(&["emit", &c.0, "--oci-dir", "/nonexistent/never"]);
    assert_eq!(refused.status.code(), Some(5));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("gap") && err.contains("--allow-incomplete"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_gone_while_the_daemon_was_down_is_closed_as_interrupted() {
    require_root();
    let mut d = Daemon::start();
    let c = looping("store-gone", "0.2");
    observe(&d, &c.0).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    d.kill_hard();
    docker(&["rm", "-f", &c.0]);
    d.restart();
    let s = session_json(&d, &c.0);
    assert_eq!(s["state"], "closed", "{s}");
    assert_eq!(s["end"], "interrupted", "{s}");
    assert_eq!(s["gaps"].as_array().unwrap().len(), 1, "{s}");
    assert!(s["events"].as_u64().unwrap() > 0, "{s}");
    wait_until(5, "the daemon answers", || {
        d.ctl(&["version"]).status.success()
    });
}

/// The daemon is stopped (SIGTERM, as for an upgrade) and started again
/// while a labelled container runs. It attaches to the container again; the
/// session must go on, with its events, its duration and the gap, rather
/// than be replaced by a fresh session that starts counting from zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_daemon_continues_a_labelled_containers_session() {
    require_root();
    let mut d = Daemon::start_with(&["--watch-labels"]);
    let c = Container::create(
        "store-label",
        &[
            "--label",
            "io.cimplifier.observe=true",
            BASE_IMAGE,
            "/bin/sh",
            "-c",
            "while true; do cat /etc/hostname > /dev/null; sleep 0.2; done",
        ],
    );
    docker(&["start", &c.0]);
    let observing = |d: &Daemon| {
        let out = d.ctl(&["sessions", "--json"]);
        let all: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        all.as_array().is_some_and(|a| {
            a.iter()
                .any(|s| s["container"] == c.0.as_str() && s["state"] == "observing")
        })
    };
    wait_until(20, "the labelled container is observed", || observing(&d));
    docker(&["exec", &c.0, "cat", "/etc/os-release"]);
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let pid = nix::unistd::Pid::from_raw(d.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    d.child.wait().unwrap();
    let before = {
        d.restart();
        // Read before the daemon's own checkpoint can move it.
        session_json(&d, &c.0)
    };
    let first_ms = before["duration_ms"].as_u64().unwrap();
    wait_until(20, "the session goes on", || observing(&d));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let stopped = stdout_of(&d.ctl(&["stop", &c.0]));
    assert!(stopped.contains("ended: stopped"), "{stopped}");

    let (record, events) = d.session_events(&c.0);
    assert!(
        first_ms >= 2500,
        "the first stretch lasted over 2.5 s: {before}"
    );
    let total_ms = record["duration_ms"].as_u64().unwrap();
    assert!(
        total_ms >= first_ms + 900,
        "duration {total_ms} ms: the {first_ms} ms observed before the restart were dropped: {record}"
    );
    let segments = record["segments"].as_array().unwrap();
    assert_eq!(segments.len(), 2, "{record}");
    assert_eq!(record["gaps"].as_array().unwrap().len(), 1, "{record}");
    assert!(
        touches(&events, "/etc/os-release"),
        "the events seen before the restart were kept"
    );
}
