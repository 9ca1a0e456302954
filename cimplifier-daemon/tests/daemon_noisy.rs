//! One noisy container must not spoil other sessions: a container that
//! floods a 1 MiB ring buffer loses records and its session says so, while
//! a quiet container observed at the same time keeps a complete session.
//! Losses are counted per cgroup in the kernel (`CGROUP_LOSS`). And a
//! program the tracer cannot follow (32-bit) is named, its session
//! incomplete. Real daemon, real containers. Needs root and dockerd.

mod common;

use common::{BASE_IMAGE, Container, Daemon, docker, require_root, stdout_of};
use serde_json::Value;

fn sessions(d: &Daemon) -> Vec<Value> {
    let all: Value = serde_json::from_str(&stdout_of(&d.ctl(&["sessions", "--json"]))).unwrap();
    all.as_array().unwrap().clone()
}

fn session(d: &Daemon, name: &str) -> Option<Value> {
    sessions(d).into_iter().find(|s| s["container"] == name)
}

#[test]
fn a_noisy_containers_losses_are_its_own() {
    require_root();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let metrics_addr = format!("127.0.0.1:{port}");
    let d = Daemon::start_with(&["--ring-buffer-mib", "1", "--metrics-addr", &metrics_addr]);

    // Quiet: reads one file, then sleeps through the flood.
    let quiet = Container::create(
        "noisy-quiet",
        &[
            BASE_IMAGE,
            "/bin/sh",
            "-c",
            "cat /etc/os-release > /dev/null; exec sleep 600",
        ],
    );
    let quiet_observe = common::observe_until_stopped(&d, &quiet.0);
    common::wait_until(30, "the quiet session observing", || {
        session(&d, &quiet.0).is_some_and(|s| s["state"] == "observing" && s["events"] != 0)
    });

    // Noisy: four loops of execs and opens, far more than 1 MiB of records
    // between two reads of the ring.
    let noisy = Container::create(
        "noisy-loud",
        &[
            BASE_IMAGE,
            "/bin/sh",
            "-c",
            "for i in 1 2 3 4; do (while true; do cat /etc/os-release /etc/passwd /etc/group \
             > /dev/null; done) & done; wait",
        ],
    );
    let noisy_observe = common::observe_until_stopped(&d, &noisy.0);
    common::wait_until(120, "the noisy session losing records", || {
        session(&d, &noisy.0).is_some_and(|s| s["lost_events"].as_u64().unwrap_or(0) > 0)
    });

    // The metrics tell the losses by watched cgroup and cause.
    let lost_of = |c: &Container, cause: &str| -> u64 {
        let id = docker(&["inspect", "-f", "{{.Id}}", &c.0]);
        let out = std::process::Command::new("curl")
            .args(["-sf", &format!("http://{metrics_addr}/metrics")])
            .output()
            .unwrap();
        let text = stdout_of(&out);
        text.lines()
            .find(|l| {
                l.starts_with("cimplifier_cgroup_lost_events_total{")
                    && l.contains(id.trim())
                    && l.contains(&format!("cause=\"{cause}\""))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {cause} loss of {} in the metrics:\n{text}", c.0))
    };
    assert!(lost_of(&noisy, "ringbuf_full") > 0);
    assert_eq!(lost_of(&quiet, "ringbuf_full"), 0);

    docker(&["stop", "-t", "1", &noisy.0]);
    docker(&["stop", "-t", "1", &quiet.0]);
    let noisy_info: Value =
        serde_json::from_slice(&noisy_observe.wait_with_output().unwrap().stdout).unwrap();
    let quiet_info: Value =
        serde_json::from_slice(&quiet_observe.wait_with_output().unwrap().stdout).unwrap();
    println!(
        "noisy session: {} events, {} lost; quiet session: {} events, {} lost",
        noisy_info["events"],
        noisy_info["lost_events"],
        quiet_info["events"],
        quiet_info["lost_events"]
    );
    assert_eq!(noisy_info["complete"], false, "{noisy_info}");
    assert!(
        noisy_info["lost_events"].as_u64().unwrap() > 0,
        "{noisy_info}"
    );
    assert_eq!(
        quiet_info["complete"], true,
        "the quiet session lost nothing of its own: {quiet_info}"
    );
    assert_eq!(quiet_info["lost_events"], 0, "{quiet_info}");

    // Emit refuses the noisy session and takes the quiet one.
    let tag = format!("cimplifier-test/noisy-{}:latest", std::process::id());
    let refused = d.ctl(&["emit", &noisy.0, "--tag", &tag]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("--allow-incomplete"), "{err}");
}

/// A 32-bit program (its system calls never reach the tracer) makes its
/// session incomplete, named in the summary and in emit's refusal.
#[test]
fn a_program_of_another_abi_is_named_and_its_session_incomplete() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let exe = common::i386_program(dir.path());
    let d = Daemon::start();
    let c = Container::create(
        "abi32",
        &[BASE_IMAGE, "sh", "-c", "/usr/local/bin/open32; sleep 1"],
    );
    docker(&[
        "cp",
        exe.to_str().unwrap(),
        &format!("{}:/usr/local/bin/open32", c.0),
    ]);
    let out = common::observe_until_stopped(&d, &c.0)
        .wait_with_output()
        .unwrap();
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["complete"], false, "{info}");
    assert_eq!(info["foreign_programs"], 1, "{info}");
    assert_eq!(
        info["foreign_program_names"],
        serde_json::json!(["/usr/local/bin/open32: 32-bit x86 (i386)"]),
        "{info}"
    );
    assert!(
        info["executables"]
            .to_string()
            .contains("/usr/local/bin/open32"),
        "its exec is in the model: {info}"
    );
    let refused = d.ctl(&["emit", &c.0, "--tag", "cimplifier-test/abi32-refused:slim"]);
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{said}");
    assert!(
        said.contains("(/usr/local/bin/open32: 32-bit x86 (i386))"),
        "{said}"
    );
}
