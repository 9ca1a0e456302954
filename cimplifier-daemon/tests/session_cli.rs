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

/// A session whose events carry names the tracer could not read: `sessions`
/// counts them (table and --json), and emit refuses it without
/// --allow-incomplete, saying why.
#[test]
fn unreadable_names_are_shown_and_stop_emit() {
    require_root();
    let d = Daemon::start();
    let event = r#"{"ts_ns":1,"pid":5,"tid":5,"ppid":1,"cgroup":7,"comm":"httpd","event":"syscall","syscall":"execve","nr":59,"args":[0,0,0,0,0,0],"ret":0,"paths":[{"role":"target","raw":"","status":"unreadable"}],"argv":[""],"incomplete":["argv could not be read","target name could not be read from the program's memory"]}"#;
    let image_id = docker(&["image", "inspect", "-f", "{{.Id}}", BASE]);
    let header = format!(
        r#"{{"format":"cimplifier-session-bundle","version":1,"session":{{"name":"unread","id":1,"container_id":"c0ffee","container_name":"unread","image_id":"{image_id}","image_ref":"{BASE}","from_first_exec":true,"started_unix_ms":1,"state":"closed","end":"stopped","duration_ms":1000,"events":1,"segments":[{{"first_event":0,"started_unix_ms":1,"from_first_exec":true,"origin":"observed"}}],"checkpoint_unix_ms":2,"loss":{{"ringbuf_full":0,"inflight_full":0,"user_read_faults":2,"undecodable":0,"unreadable_names":2}}}}}}"#
    );
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("unread.bundle");
    std::fs::write(&bundle, format!("{header}\n{event}\n")).unwrap();
    let imported = ctl(&d, &["import", bundle.to_str().unwrap()]);
    assert!(
        imported.status.success(),
        "{}",
        String::from_utf8_lossy(&imported.stderr)
    );

    let table = String::from_utf8_lossy(&ctl(&d, &["sessions"]).stdout).into_owned();
    let header_line = table.lines().next().unwrap();
    assert!(header_line.contains("UNREADABLE"), "{table}");
    let row: Vec<&str> = table
        .lines()
        .find(|l| l.starts_with("unread "))
        .unwrap_or_else(|| panic!("{table}"))
        .split_whitespace()
        .collect();
    assert_eq!(
        row[2..5],
        ["1", "0", "2"],
        "events, lost, unreadable: {table}"
    );
    let json: Value = serde_json::from_slice(&ctl(&d, &["sessions", "--json"]).stdout).unwrap();
    let s = json
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["container"] == "unread")
        .unwrap();
    assert_eq!(s["unreadable_names"], 2, "{s}");
    assert_eq!(s["lost_events"], 0, "{s}");
    assert_eq!(s["complete"], false, "{s}");

    let refused = ctl(&d, &["emit", "unread", "--oci-dir", "/nonexistent/never"]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("2 name(s)")
            && err.contains("could not read")
            && err.contains("--allow-incomplete"),
        "{err}"
    );
}

/// A container in another cgroup layout (`--cgroup-parent`): its cgroup is
/// made ahead below that parent, and found from the engine's answer, so it
/// is observed from its first exec as in Docker's default layout.
#[test]
fn a_container_under_its_own_cgroup_parent_is_observed_from_its_first_exec() {
    require_root();
    let d = Daemon::start();
    let parent = format!("cimplifier-parent-{}", std::process::id());
    let c = Container::create(
        "session-cgroup-parent",
        &[
            "--cgroup-parent",
            &parent,
            BASE,
            "/bin/sh",
            "-c",
            "cat /etc/os-release > /dev/null",
        ],
    );
    let out = ctl(&d, &["observe", &c.0, "--no-lifecycle", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["from_first_exec"], true, "{info}");
    assert_eq!(info["complete"], true, "{info}");
    let (_, events) = d.session_events(&c.0);
    assert_eq!(
        execs(&events).first().map(String::as_str),
        Some("/bin/sh"),
        "{:?}",
        execs(&events)
    );
    let dir = cimplifier::trace::cgroup::cgroup2_mount()
        .unwrap()
        .join(&parent);
    drop(c);
    let _ = std::fs::remove_dir_all(&dir);
}
