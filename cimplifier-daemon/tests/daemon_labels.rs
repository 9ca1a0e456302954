//! Containers labelled io.cimplifier.observe=true, or matching a selector
//! given to `observe --label`, are observed from their first exec without
//! any call naming them. Real daemon, containers started by the docker CLI.
//! Needs root and dockerd.

mod common;

use std::process::Command;

use cimplifier::trace::{Event, EventKind};
use common::{
    BASE_IMAGE, Daemon, docker, require_root, session_json, stdout_of, touches, wait_until,
};

/// `docker run -d --name NAME --label LABEL` of a short-lived script.
struct Run(String);

impl Run {
    /// `docker create`, then `docker start` once the daemon has taken the
    /// container on (it lists it): a creator that starts its container
    /// later than the daemon hears of the creation, which the daemon needs
    /// to see the first exec. (With `docker run` on a loaded machine the
    /// start can win; the session then says its start-up was missed.)
    fn start(d: &Daemon, tag: &str, label: &str, script: &str, expect_session: bool) -> Self {
        let name = format!("cimplifier-{tag}-{}", std::process::id());
        let _ = Command::new("docker").args(["rm", "-f", &name]).output();
        docker(&[
            "create", "--name", &name, "--label", label, BASE_IMAGE, "/bin/sh", "-c", script,
        ]);
        if expect_session {
            wait_until(20, &format!("the daemon takes {name} on"), || {
                stdout_of(&d.ctl(&["sessions"])).contains(&name)
            });
        } else {
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
        docker(&["start", &name]);
        Self(name)
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "-f", &self.0]).output();
    }
}

fn first_exec(events: &[Event]) -> Option<String> {
    events.iter().find_map(|e| match &e.kind {
        EventKind::Syscall(s) if s.syscall == "execve" && s.succeeded() => {
            s.paths.first().map(|p| p.raw.clone())
        }
        _ => None,
    })
}

fn closed(d: &Daemon, name: &str) -> serde_json::Value {
    wait_until(30, &format!("session {name} to close"), || {
        let all = stdout_of(&d.ctl(&["sessions", "--json"]));
        all.contains(name) && session_json(d, name)["state"] == "closed"
    });
    session_json(d, name)
}

#[test]
fn labelled_containers_are_observed_from_their_first_exec() {
    require_root();
    let d = Daemon::start();
    let run = Run::start(
        &d,
        "label-default",
        "io.cimplifier.observe=true",
        "cat /etc/os-release > /dev/null; sleep 1",
        true,
    );
    let s = closed(&d, &run.0);
    assert_eq!(s["from_first_exec"], true, "{s}");
    assert_eq!(s["end"], "container_died", "{s}");
    let (_, events) = d.session_events(&run.0);
    assert_eq!(
        first_exec(&events).as_deref(),
        Some("/bin/sh"),
        "the entrypoint"
    );
    assert!(touches(&events, "/etc/os-release"));

    // Unlabelled containers are left alone.
    let other = Run::start(&d, "label-none", "app=other", "sleep 1", false);
    std::thread::sleep(std::time::Duration::from_secs(2));
    let all = stdout_of(&d.ctl(&["sessions"]));
    assert!(!all.contains(&other.0), "{all}");
}

#[test]
fn a_selector_given_to_observe_catches_containers_yet_to_start() {
    require_root();
    let d = Daemon::start();
    let label = format!("cimplifier-test-app=web-{}", std::process::id());
    let out = stdout_of(&d.ctl(&["observe", "--label", &label]));
    assert!(out.contains(&label), "{out}");
    let listed: serde_json::Value =
        serde_json::from_str(&stdout_of(&d.ctl(&["sessions", "--json"]))).unwrap();
    assert!(listed.is_array());
    let run = Run::start(
        &d,
        "label-selector",
        &label,
        "cat /etc/hostname > /dev/null; sleep 1",
        true,
    );
    let s = closed(&d, &run.0);
    assert_eq!(s["from_first_exec"], true, "{s}");
    let (_, events) = d.session_events(&run.0);
    assert!(touches(&events, "/etc/hostname"));

    let bad = d.ctl(&["observe", "--label", "no-equals-sign"]);
    assert_eq!(
        bad.status.code(),
        Some(2),
        "a bad selector is a usage error"
    );
    assert!(String::from_utf8_lossy(&bad.stderr).contains("key=value"));
}
