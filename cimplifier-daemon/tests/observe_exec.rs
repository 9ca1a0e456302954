//! `cimplifierctl observe CONTAINER --exec CMD`, with real Docker and eBPF:
//! the workload runs against the container's address, its status is
//! cimplifierctl's, and the session is closed however it ends. Needs root.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use cimplifier::trace::Event;
use common::{BASE_IMAGE, Container, Daemon, require_root, session_json, wait_until};
use serde_json::Value;

const NGINX: &str = "cimplifier-test/nginx:latest";
const PAGE: &str = "/var/www/html/index.html";

/// Whether nginx itself (not the shell before it) opened `path`.
fn nginx_read(events: &[Event], path: &str) -> bool {
    events.iter().any(|e| {
        e.comm == "nginx"
            && e.syscall().is_some_and(|s| {
                s.succeeded()
                    && s.paths
                        .iter()
                        .any(|p| p.path.as_ref().is_some_and(|x| x.as_str() == path))
            })
    })
}

#[test]
fn the_workload_drives_the_session_and_its_status_is_the_exit_status() {
    require_root();
    let d = Daemon::start();

    // The workload reaches nginx at CIMPLIFIER_TARGET, with no retries: the
    // exposed port is waited for.
    let c = Container::create("oexec-nginx", &[NGINX]);
    let cmd = format!(
        r#"test "$CIMPLIFIER_CONTAINER" = {} && curl -fsS "http://$CIMPLIFIER_TARGET/""#,
        c.0
    );
    let out = d.ctl(&["observe", &c.0, "--exec", &cmd, "--json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    // With --json the workload's stdout goes to stderr; stdout is the JSON.
    assert!(stderr.contains("cimplifier test site"), "{stderr}");
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["state"], "closed", "{info}");
    assert_eq!(info["end"], "stopped", "{info}");
    assert_eq!(info["from_first_exec"], true, "{info}");
    assert_eq!(info["workload"]["exit_code"], 0, "{info}");
    let (record, events) = d.session_events(&c.0);
    assert_eq!(record["state"], "closed", "{record}");
    assert!(
        nginx_read(&events, PAGE),
        "nginx's read of the page the workload fetched is in the session"
    );

    // A failing workload: its status, named; the session is closed anyway.
    // Nothing fetched the page, so nginx never read it (the control).
    let c = Container::create("oexec-fails", &[NGINX]);
    let out = d.ctl(&["observe", &c.0, "--exec", "exit 3"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("`exit 3`") && stderr.contains("exited with status 3"),
        "{stderr}"
    );
    assert_eq!(session_json(&d, &c.0)["state"], "closed");
    let (_, events) = d.session_events(&c.0);
    assert!(
        !nginx_read(&events, PAGE),
        "no workload, no read of the page"
    );
    assert!(
        nginx_read(&events, "/etc/nginx/nginx.conf"),
        "its start-up is in the session"
    );
}

#[test]
fn a_running_container_is_restarted_and_sigterm_stops_the_workload() {
    require_root();
    let d = Daemon::start();
    let c = Container::create("oexec-term", &[NGINX]);
    common::docker(&["start", &c.0]);
    let pidfile = tempfile::NamedTempFile::new().unwrap();
    let cmd = format!(
        "curl -fsS -o /dev/null \"http://$CIMPLIFIER_TARGET/\" && {{ sleep 300 & echo $! > {}; wait; }}",
        pidfile.path().display()
    );
    let mut child = common::cimplifierctl()
        .arg("--socket")
        .arg(&d.socket)
        .args(["observe", &c.0, "--restart", "--exec", &cmd])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let workload_pid = || {
        std::fs::read_to_string(pidfile.path())
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
    };
    wait_until(60, "the workload started", || workload_pid().is_some());
    assert_eq!(session_json(&d, &c.0)["state"], "observing");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "observe --exec ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(status.code(), Some(143), "128 + SIGTERM: {stderr}");
    assert!(stderr.contains("was stopped on SIGTERM"), "{stderr}");
    let info = session_json(&d, &c.0);
    assert_eq!(info["state"], "closed", "{info}");
    assert_eq!(info["from_first_exec"], true, "restarted: {info}");
    let pid = workload_pid().unwrap();
    wait_until(10, "the workload's background job to be stopped", || {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| s.contains(") Z "))
    });
    let (_, events) = d.session_events(&c.0);
    assert!(nginx_read(&events, PAGE), "the request before the stop");
}

#[test]
fn what_cannot_be_reached_is_named() {
    require_root();
    let d = Daemon::start();
    let out = d.ctl(&["observe", "--label", "app=web", "--exec", "true"]);
    assert_eq!(out.status.code(), Some(2), "a usage error");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no single target"), "{stderr}");

    // No network, no address: refused, and the session is still closed.
    let c = Container::create(
        "oexec-nonet",
        &["--network", "none", BASE_IMAGE, "sleep", "300"],
    );
    let out = d.ctl(&["observe", &c.0, "--exec", "true"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&c.0) && stderr.contains("--network none"),
        "{stderr}"
    );
    assert_eq!(session_json(&d, &c.0)["state"], "closed");

    // An exposed port nothing listens on: named, and the workload still runs.
    let c = Container::create("oexec-deaf", &["--expose", "9", BASE_IMAGE, "sleep", "300"]);
    let out = d.ctl(&[
        "observe",
        &c.0,
        "--ready-timeout",
        "1s",
        "--exec",
        r#"test -n "$CIMPLIFIER_TARGET""#,
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("port(s) [9] within 1s; running the workload anyway"),
        "{stderr}"
    );
    assert_eq!(session_json(&d, &c.0)["state"], "closed");
}
