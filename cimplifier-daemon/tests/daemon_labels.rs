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
    let d = Daemon::start_with(&["--watch-labels"]);
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

/// `docker run -d` with the label, the way users start containers: the
/// container starts at once, often before Docker's `create` event reaches
/// the daemon. Several at once, to make that race likely. Each session must
/// hold the entrypoint's exec; an unlabelled container started meanwhile
/// is excluded from tracing once its labels are known.
#[test]
fn containers_started_by_docker_run_are_observed_from_their_first_exec() {
    require_root();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let metrics_addr = format!("127.0.0.1:{port}");
    let d = Daemon::start_with(&["--watch-labels", "--metrics-addr", &metrics_addr]);
    let names: Vec<Removed> = (0..6)
        .map(|i| Removed(format!("cimplifier-label-run{i}-{}", std::process::id())))
        .collect();
    let runs: Vec<_> = names
        .iter()
        .map(|n| {
            let name = n.0.clone();
            std::thread::spawn(move || {
                docker(&[
                    "run",
                    "-d",
                    "--name",
                    &name,
                    "--label",
                    "io.cimplifier.observe=true",
                    BASE_IMAGE,
                    "/bin/sh",
                    "-c",
                    "cat /etc/os-release > /dev/null; sleep 2",
                ])
            })
        })
        .collect();
    // Unlabelled, busy: once excluded, it costs the tracer nothing.
    let busy = Removed(format!("cimplifier-label-busy-{}", std::process::id()));
    docker(&[
        "run",
        "-d",
        "--name",
        &busy.0,
        BASE_IMAGE,
        "/bin/sh",
        "-c",
        "while true; do cat /etc/hostname > /dev/null; done",
    ]);
    for run in runs {
        run.join().unwrap();
    }
    for name in &names {
        let s = closed(&d, &name.0);
        assert_eq!(s["from_first_exec"], true, "{s}");
        assert_eq!(s["complete"], true, "{s}");
        let (_, events) = d.session_events(&name.0);
        assert_eq!(
            first_exec(&events).as_deref(),
            Some("/bin/sh"),
            "{}: the entrypoint; {s}\n{}",
            name.0,
            common::dump(&events, 40)
        );
        assert!(touches(&events, "/etc/os-release"), "{}", name.0);
    }
    let all = stdout_of(&d.ctl(&["sessions"]));
    assert!(!all.contains(&busy.0), "{all}");
    let metric = |name: &str| -> u64 {
        let out = std::process::Command::new("curl")
            .args(["-sf", &format!("http://{metrics_addr}/metrics")])
            .output()
            .unwrap();
        stdout_of(&out)
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} "))?.parse().ok())
            .unwrap_or_else(|| panic!("no metric {name}"))
    };
    assert!(metric("cimplifier_excluded_cgroups_total") >= 1);
    // The busy loop runs thousands of syscalls a second; excluded, none of
    // them reach the daemon.
    let before = metric("cimplifier_events_total");
    std::thread::sleep(std::time::Duration::from_secs(1));
    let after = metric("cimplifier_events_total");
    assert!(
        after - before < 5000,
        "{} events in a second with only an excluded container running",
        after - before
    );
}

/// A container removed however the test ends.
struct Removed(String);

impl Drop for Removed {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "-f", &self.0]).output();
    }
}

#[test]
fn a_selector_given_to_observe_catches_containers_yet_to_start() {
    require_root();
    let d = Daemon::start();
    let label = format!("cimplifier-test-app=web-{}", std::process::id());
    let out = stdout_of(&d.ctl(&["observe", "--label", &label]));
    assert!(out.contains(&label), "{out}");
    let all = stdout_of(&d.ctl(&["sessions"]));
    assert!(
        all.contains(&format!("observing containers created with label {label}")),
        "{all}"
    );
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

    // Forgotten: a container created with the label later is left alone,
    // and the daemon says so for a selector it does not have.
    let out = stdout_of(&d.ctl(&["stop", "--label", &label]));
    assert!(out.contains("no longer be observed"), "{out}");
    let all = stdout_of(&d.ctl(&["sessions"]));
    assert!(!all.contains(&label), "{all}");
    let later = Run::start(&d, "label-forgotten", &label, "sleep 1", false);
    std::thread::sleep(std::time::Duration::from_secs(2));
    let all = stdout_of(&d.ctl(&["sessions"]));
    assert!(!all.contains(&later.0), "{all}");
    let again = d.ctl(&["stop", "--label", &label]);
    assert_eq!(again.status.code(), Some(4), "{again:?}");
    assert!(String::from_utf8_lossy(&again.stderr).contains("no label selector"));
    let built_in = d.ctl(&["stop", "--label", "io.cimplifier.observe=true"]);
    assert!(!built_in.status.success());
    assert!(String::from_utf8_lossy(&built_in.stderr).contains("built in"));

    let bad = d.ctl(&["observe", "--label", "no-equals-sign"]);
    assert_eq!(
        bad.status.code(),
        Some(2),
        "a bad selector is a usage error"
    );
    assert!(String::from_utf8_lossy(&bad.stderr).contains("key=value"));
}

/// docs/slim.md promises that a session holds its container's events and
/// no other's, also while containers start side by side: runc, the
/// entrypoints and the held cgroups of Docker's parent all meet there.
/// Two labelled containers and an unlabelled one start at once, each
/// touching names only it uses; every session must hold its own names and
/// none of the others'.
#[test]
fn a_session_holds_none_of_another_containers_events() {
    require_root();
    let d = Daemon::start_with(&["--watch-labels"]);
    let pid = std::process::id();
    let script = |who: &str| {
        format!(
            "for i in 1 2 3 4 5 6 7 8 9 10; do test -e /only-{who}-{pid}-$i; done; \
             cat /etc/os-release > /dev/null; sleep 1"
        )
    };
    let containers = [("iso-a", true), ("iso-b", true), ("iso-none", false)];
    let names: Vec<Removed> = containers
        .iter()
        .map(|(who, _)| Removed(format!("cimplifier-{who}-{pid}")))
        .collect();
    let runs: Vec<_> = containers
        .iter()
        .zip(&names)
        .map(|((who, labelled), name)| {
            let (name, script) = (name.0.clone(), script(who));
            let label = if *labelled {
                "io.cimplifier.observe=true"
            } else {
                "app=other"
            };
            std::thread::spawn(move || {
                docker(&[
                    "run", "-d", "--name", &name, "--label", label, BASE_IMAGE, "/bin/sh", "-c",
                    &script,
                ])
            })
        })
        .collect();
    for run in runs {
        run.join().unwrap();
    }
    for ((who, labelled), name) in containers.iter().zip(&names) {
        if !labelled {
            continue;
        }
        let s = closed(&d, &name.0);
        assert_eq!(s["from_first_exec"], true, "{s}");
        let (_, events) = d.session_events(&name.0);
        assert!(
            touches(&events, &format!("/only-{who}-{pid}-1")),
            "{}: its own names are recorded\n{}",
            name.0,
            common::dump(&events, 60)
        );
        let cgroups: std::collections::BTreeSet<_> = events.iter().map(|e| e.cgroup).collect();
        for (other, _) in containers.iter().filter(|(o, _)| o != who) {
            for i in 1..=10 {
                let foreign = format!("/only-{other}-{pid}-{i}");
                assert!(
                    !touches(&events, &foreign),
                    "session {} holds {other}'s event on {foreign} (cgroups {cgroups:?})",
                    name.0
                );
            }
        }
    }
    let all = stdout_of(&d.ctl(&["sessions"]));
    assert!(!all.contains(&names[2].0), "{all}");
}
