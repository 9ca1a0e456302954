//! Sessions have a lifecycle and nothing replaces one silently: observing
//! a container again adds a segment, another image or an existing name is
//! refused unless --replace, `sessions rm` deletes, and --retain-sessions
//! prunes. Real daemon, Docker and eBPF; needs root.

mod common;

use common::{BASE_IMAGE, Container, Daemon, docker, require_root, session_json, wait_until};
use serde_json::Value;

fn sessions(d: &Daemon) -> Vec<String> {
    let out = d.ctl(&["sessions", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let all: Value = serde_json::from_slice(&out.stdout).unwrap();
    all.as_array()
        .unwrap()
        .iter()
        .map(|s| s["container"].as_str().unwrap().to_owned())
        .collect()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn observing_again_adds_a_segment_and_nothing_is_replaced_unless_asked() {
    require_root();
    let d = Daemon::start();
    // A program that reads one of two files, by the run: the first run's
    // file must still be in the session after the second run.
    let c = Container::create(
        "again",
        &[
            BASE_IMAGE,
            "sh",
            "-c",
            "if [ -e /tmp/ran ]; then cat /etc/hostname; else touch /tmp/ran; cat /etc/os-release; fi",
        ],
    );
    let first = d.ctl(&["observe", &c.0]);
    assert!(first.status.success(), "{}", stderr(&first));
    let after_one = session_json(&d, &c.0);
    let second = d.ctl(&["observe", &c.0]);
    assert!(second.status.success(), "{}", stderr(&second));
    let after_two = session_json(&d, &c.0);
    assert_eq!(
        after_two["segments"].as_array().map(Vec::len),
        Some(2),
        "{after_two}"
    );
    assert!(
        after_two["events"].as_u64() > after_one["events"].as_u64(),
        "{after_one} then {after_two}"
    );
    let (_, events) = d.session_events(&c.0);
    assert!(
        common::touches(&events, "/etc/os-release"),
        "the first run's file is kept"
    );
    assert!(
        common::touches(&events, "/etc/hostname"),
        "the second run's file is added"
    );

    // The same name, another image: refused by name, then replaced.
    drop(c);
    let other = Container::create("again", &["cimplifier-test/nginx:latest", "true"]);
    let refused = d.ctl(&["observe", &other.0]);
    assert_eq!(refused.status.code(), Some(5), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("--replace"),
        "{}",
        stderr(&refused)
    );
    let replaced = d.ctl(&["observe", &other.0, "--replace"]);
    assert!(replaced.status.success(), "{}", stderr(&replaced));
    let now = session_json(&d, &other.0);
    assert_eq!(now["segments"].as_array().map(Vec::len), Some(1), "{now}");
    assert!(
        now["image_ref"].as_str().unwrap().contains("nginx"),
        "{now}"
    );

    // Import and merge refuse an existing name unless --replace.
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("b.bundle");
    let exported = d.ctl(&["export", &other.0, "-o", bundle.to_str().unwrap()]);
    assert!(exported.status.success(), "{}", stderr(&exported));
    let imported = d.ctl(&["import", bundle.to_str().unwrap(), "--as", "copy"]);
    assert!(imported.status.success(), "{}", stderr(&imported));
    let refused = d.ctl(&["import", bundle.to_str().unwrap(), "--as", "copy"]);
    assert_eq!(refused.status.code(), Some(5), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("exists already"),
        "{}",
        stderr(&refused)
    );
    let replaced = d.ctl(&[
        "import",
        bundle.to_str().unwrap(),
        "--as",
        "copy",
        "--replace",
    ]);
    assert!(replaced.status.success(), "{}", stderr(&replaced));
    let merged = d.ctl(&["merge", "--into", "copy", &other.0, "copy"]);
    assert_ne!(
        merged.status.code(),
        Some(0),
        "merging into an existing name"
    );

    // `sessions rm`: deleted; an unknown name is NOT_FOUND.
    let removed = d.ctl(&["sessions", "rm", "copy", "--json"]);
    assert!(removed.status.success(), "{}", stderr(&removed));
    let removed: Value = serde_json::from_slice(&removed.stdout).unwrap();
    assert_eq!(removed[0]["session"], "copy");
    assert!(!sessions(&d).contains(&"copy".to_owned()));
    let unknown = d.ctl(&["sessions", "rm", "copy"]);
    assert_eq!(unknown.status.code(), Some(4), "{}", stderr(&unknown));
}

#[test]
fn an_observing_session_cannot_be_removed() {
    require_root();
    let d = Daemon::start();
    let c = Container::create("rm-busy", &[BASE_IMAGE, "sleep", "60"]);
    // `observe` returns when the session closes: it runs aside.
    let mut observing = common::cimplifierctl()
        .args(["--socket", d.socket.to_str().unwrap(), "observe", &c.0])
        .spawn()
        .unwrap();
    wait_until(30, "the session to be observing", || {
        sessions(&d).contains(&c.0) && session_json(&d, &c.0)["state"] == "observing"
    });
    let refused = d.ctl(&["sessions", "rm", &c.0]);
    assert_eq!(refused.status.code(), Some(5), "{}", stderr(&refused));
    let _ = d.ctl(&["stop", &c.0]);
    let _ = observing.kill();
    let _ = observing.wait();
    docker(&["rm", "-f", &c.0]);
}

#[test]
fn retention_prunes_closed_sessions_and_only_when_asked() {
    require_root();
    let keeper = Daemon::start();
    let c = Container::create("retain", &[BASE_IMAGE, "true"]);
    let observed = keeper.ctl(&["observe", &c.0]);
    assert!(observed.status.success(), "{}", stderr(&observed));
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("b.bundle");
    let exported = keeper.ctl(&["export", &c.0, "-o", bundle.to_str().unwrap()]);
    assert!(exported.status.success(), "{}", stderr(&exported));

    let pruner = Daemon::start_with(&["--retain-sessions", "1s"]);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let imported = pruner.ctl(&["import", bundle.to_str().unwrap()]);
    assert!(imported.status.success(), "{}", stderr(&imported));
    wait_until(15, "the old session to be pruned", || {
        !sessions(&pruner).contains(&c.0)
    });
    // The control: the daemon without retention keeps it.
    assert!(sessions(&keeper).contains(&c.0));
}
