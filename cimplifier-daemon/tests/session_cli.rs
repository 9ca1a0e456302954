//! `cimplifierctl observe` and `emit` around a container's lifecycle, with
//! real Docker: the entrypoint's exec is recorded, a dying container closes
//! its session, a running one must be restarted (or attached to), and bad
//! input is named. Needs root.

mod common;

use std::process::Output;

use cimplifier::trace::{Event, EventKind};
use common::{Container, Daemon, docker, require_root};
use serde_json::Value;

const BASE: &str = "cimplifier-test/base:bookworm";

fn ctl(daemon: &Daemon, args: &[&str]) -> Output {
    daemon.ctl(args)
}

fn execs(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Syscall(s) if s.syscall == "execve" && s.succeeded() => {
                s.paths.first().map(|p| p.raw.clone())
            }
            _ => None,
        })
        .collect()
}

#[test]
fn a_dying_container_closes_a_complete_session_with_its_entrypoint() {
    require_root();
    let d = Daemon::start();
    let c = Container::create(
        "session-dies",
        &[
            BASE,
            "/bin/sh",
            "-c",
            "cat /etc/os-release > /dev/null; sleep 1",
        ],
    );
    let out = ctl(&d, &["observe", &c.0, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["end"], "container_died", "{info}");
    assert_eq!(info["from_first_exec"], true);
    assert_eq!(info["complete"], true);
    let exes: Vec<&str> = info["executables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert!(
        exes.contains(&"/bin/sh") && exes.contains(&"/usr/bin/cat"),
        "the session reports its executables: {info}"
    );
    assert!(info["resources"].as_u64().unwrap() > 5, "{info}");
    let (record, events) = d.session_events(&c.0);
    assert_eq!(record["state"], "closed", "{record}");
    let execs = execs(&events);
    assert_eq!(
        execs.first().map(String::as_str),
        Some("/bin/sh"),
        "the entrypoint's exec: {execs:?}"
    );
    assert!(execs.iter().any(|e| e.ends_with("/cat")), "{execs:?}");
    assert!(events.iter().any(|e| {
        e.syscall()
            .is_some_and(|s| s.paths.iter().any(|p| p.raw == "/etc/os-release"))
    }));

    // A session that lost events is refused unless --allow-incomplete.
    // (The same events, imported as a session whose tracer lost 7.)
    let out = d.ctl(&["export", &c.0, "-o", "-"]);
    let text = String::from_utf8(out.stdout).unwrap();
    let (first, rest) = text.split_once('\n').unwrap();
    let mut header: Value = serde_json::from_str(first).unwrap();
    header["session"]["loss"]["ringbuf_full"] = 7.into();
    let bundle = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(bundle.path(), format!("{header}\n{rest}")).unwrap();
    let lossy = format!("{}-lossy", c.0);
    let imported = ctl(
        &d,
        &["import", bundle.path().to_str().unwrap(), "--as", &lossy],
    );
    assert!(
        imported.status.success(),
        "{}",
        String::from_utf8_lossy(&imported.stderr)
    );
    let refused = ctl(
        &d,
        &["emit", &lossy, "--oci-dir", "/nonexistent/never-written"],
    );
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("lost 7 events") && err.contains("--allow-incomplete"),
        "{err}"
    );
}

#[test]
fn a_running_container_is_restarted_under_observation() {
    require_root();
    let d = Daemon::start();
    let c = Container::create(
        "session-running",
        &[
            BASE,
            "/bin/sh",
            "-c",
            "while true; do cat /etc/hostname > /dev/null; sleep 0.2; done",
        ],
    );
    docker(&["start", &c.0]);
    let refused = ctl(&d, &["observe", &c.0, "--duration", "1s"]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("--restart") && err.contains("--attach") && err.contains(&c.0),
        "{err}"
    );

    let out = ctl(
        &d,
        &["observe", &c.0, "--restart", "--duration", "3s", "--json"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["from_first_exec"], true);
    assert_eq!(info["end"], "duration");
    let (_, events) = d.session_events(&c.0);
    let execs = execs(&events);
    assert_eq!(
        execs.first().map(String::as_str),
        Some("/bin/sh"),
        "{execs:?}"
    );

    let attached = ctl(
        &d,
        &["observe", &c.0, "--attach", "--duration", "1s", "--json"],
    );
    assert!(
        attached.status.success(),
        "{}",
        String::from_utf8_lossy(&attached.stderr)
    );
    let info: Value = serde_json::from_slice(&attached.stdout).unwrap();
    assert_eq!(
        info["from_first_exec"], false,
        "attached: the start-up was not seen"
    );
    // What only the start-up reads is missing, so emit refuses, saying why
    // and what to do, unless --allow-incomplete.
    assert_eq!(info["complete"], false, "{info}");
    let refused = ctl(
        &d,
        &["emit", &c.0, "--oci-dir", "/nonexistent/never-written"],
    );
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("start-up") && err.contains("--restart") && err.contains("--allow-incomplete"),
        "{err}"
    );
}

#[test]
fn bad_input_is_named() {
    require_root();
    let d = Daemon::start();
    let unknown = ctl(&d, &["observe", "no-such-container-cimplifier"]);
    assert!(!unknown.status.success());
    let err = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        err.contains("no-such-container-cimplifier") && err.contains("docker ps -a"),
        "{err}"
    );

    let no_session = ctl(&d, &["emit", "never-observed", "--tag", "x:slim"]);
    assert!(!no_session.status.success());
    let err = String::from_utf8_lossy(&no_session.stderr);
    assert!(err.contains("cimplifierctl observe"), "{err}");

    let no_output = ctl(&d, &["emit", "never-observed"]);
    assert_eq!(
        no_output.status.code(),
        Some(2),
        "a usage error: --tag or --oci-dir is needed"
    );

    let bad_set = ctl(
        &d,
        &["emit", "x", "--tag", "x:slim", "--no-safety-set", "dns"],
    );
    assert!(
        String::from_utf8_lossy(&bad_set.stderr)
            .contains("nss, ca-certificates, timezone and locales")
    );
    let relative = ctl(
        &d,
        &["emit", "x", "--tag", "x:slim", "--include", "etc/ssl"],
    );
    assert!(String::from_utf8_lossy(&relative.stderr).contains("--include \"etc/ssl\""));
}
