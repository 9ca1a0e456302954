//! `observe --lifecycle` and `verify`, with real Docker and eBPF: the
//! lifecycle steps run inside one session, each start seen from its first
//! exec; `verify` passes a good output and names what a broken one lacks,
//! for a slim image and for a partitioned plan. Needs root and dockerd.

mod common;

use std::process::Command;

use cimplifier::trace::Event;
use common::{Container, Daemon, PlanCleanup, docker, emit_partitioned, require_root, stdout_of};
use serde_json::Value;

const NGINX: &str = "cimplifier-test/nginx:latest";
const FETCH: &str = r#"curl -fsS -o /dev/null "http://$CIMPLIFIER_TARGET/""#;

/// How many times the session saw `path` exec'd successfully.
fn execs_of(events: &[Event], path: &str) -> usize {
    events
        .iter()
        .filter(|e| cimplifier::model::exec_path(e).is_some_and(|p| p.as_str() == path))
        .count()
}

/// Images removed however the test ends.
struct Images(Vec<String>);

impl Drop for Images {
    fn drop(&mut self) {
        for i in &self.0 {
            let _ = Command::new("docker").args(["rmi", "-f", i]).output();
        }
    }
}

fn json_of(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// `verify SESSION OUTPUT... --workload WORKLOAD --json`, which must pass
/// the output (exit 0, no regression): its report.
fn verified(d: &Daemon, session: &str, output: &[&str], workload: &str) -> Value {
    let mut args = vec!["verify", session];
    args.extend_from_slice(output);
    args.extend(["--workload", workload, "--json"]);
    let out = d.ctl(&args);
    let report = json_of(&out);
    assert_eq!(out.status.code(), Some(0), "{report}");
    assert_eq!(report["verified"], true, "{report}");
    assert_eq!(report["regressions"], serde_json::json!([]), "{report}");
    report
}

/// `verify SESSION OUTPUT... --workload WORKLOAD --json`, which must fail
/// the output (exit 7) and name `resource`: that regression, and the
/// report for messages.
fn named_regression(
    d: &Daemon,
    session: &str,
    output: &[&str],
    workload: &str,
    resource: &str,
) -> (Value, String) {
    let mut args = vec!["verify", session];
    args.extend_from_slice(output);
    args.extend(["--workload", workload, "--json"]);
    let out = d.ctl(&args);
    let report = json_of(&out);
    assert_eq!(out.status.code(), Some(7), "{report}");
    assert_eq!(report["verified"], false, "{report}");
    let named = report["regressions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["resource"] == resource)
        .unwrap_or_else(|| panic!("{resource} is named: {report}"))
        .clone();
    (named, report.to_string())
}

#[test]
fn lifecycle_steps_run_inside_one_session_and_each_start_is_observed() {
    require_root();
    let d = Daemon::start();

    // A server with --exec: the lifecycle is the default.
    let c = Container::create("lc-nginx", &[NGINX]);
    let out = d.ctl(&["observe", &c.0, "--exec", FETCH, "--json"]);
    let info = json_of(&out);
    assert_eq!(out.status.code(), Some(0), "{info}");
    let passes: Vec<&str> = info["workload"]["passes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["pass"].as_str().unwrap())
        .collect();
    assert_eq!(
        passes,
        [
            "first pass",
            "after restart",
            "after kill-start",
            "after reload"
        ],
        "{info}"
    );
    assert!(
        info["workload"]["passes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["exit_code"] == 0),
        "{info}"
    );
    assert_eq!(
        (info["state"].as_str(), info["end"].as_str()),
        (Some("closed"), Some("stopped"))
    );
    assert_eq!(info["complete"], true, "every start was observed: {info}");
    let (_, events) = d.session_events(&c.0);
    assert_eq!(
        execs_of(&events, "/usr/sbin/nginx"),
        3,
        "the first start, the restart and the start after SIGKILL"
    );

    // The control: without the steps, one pass and one start.
    let c = Container::create("lc-nginx-once", &[NGINX]);
    let out = d.ctl(&["observe", &c.0, "--exec", FETCH, "--no-lifecycle", "--json"]);
    let info = json_of(&out);
    assert_eq!(out.status.code(), Some(0), "{info}");
    assert_eq!(
        info["workload"]["passes"].as_array().unwrap().len(),
        1,
        "{info}"
    );
    let (_, events) = d.session_events(&c.0);
    assert_eq!(execs_of(&events, "/usr/sbin/nginx"), 1);
}

#[test]
fn verify_passes_a_good_slim_image_and_names_a_file_left_out() {
    require_root();
    let d = Daemon::start();
    let pid = std::process::id();
    let c = Container::create("verify-nginx", &[NGINX]);
    let observed = d.ctl(&["observe", &c.0, "--exec", FETCH]);
    assert!(observed.status.success(), "{observed:?}");

    let good = format!("cimplifier-e2e/verify-good{pid}:slim");
    let bad = format!("cimplifier-e2e/verify-bad{pid}:slim");
    let _images = Images(vec![good.clone(), bad.clone()]);
    stdout_of(&d.ctl(&["emit", &c.0, "--tag", &good]));
    stdout_of(&d.ctl(&[
        "emit",
        &c.0,
        "--tag",
        &bad,
        "--exclude",
        "/etc/nginx/mime.types",
    ]));

    // The positive control: the output does what the original did.
    let report = verified(&d, &c.0, &["--image", &good], FETCH);
    assert_eq!(
        report["workload"]["passes"].as_array().unwrap().len(),
        4,
        "the workload ran after each lifecycle step: {report}"
    );

    // The file left out on purpose is named, with its fix.
    let (named, report) =
        named_regression(&d, &c.0, &["--image", &bad], FETCH, "/etc/nginx/mime.types");
    assert_eq!(named["executable"], "/usr/sbin/nginx", "{report}");
    assert_eq!(named["errno"], "ENOENT", "{report}");
    assert!(
        named["fix"]
            .as_str()
            .unwrap()
            .contains("--include /etc/nginx/mime.types"),
        "{report}"
    );

    // Verify removed the containers it ran.
    let left = docker(&[
        "ps",
        "-a",
        "--filter",
        &format!("name=cimplifier-verify-{}", c.0),
        "--format",
        "{{.Names}}",
    ]);
    assert_eq!(left, "", "verify's containers are removed");
}

#[test]
fn verify_catches_a_partition_whose_shared_volume_was_emptied() {
    require_root();
    let pid = std::process::id();
    let d = Daemon::start();
    let dir = tempfile::tempdir().unwrap();

    // The source: /srv/app/flag in the image; the shell writes beside it
    // and has cat, in another partition, read both.
    let image = format!("cimplifier-e2e/verify-src{pid}:latest");
    let mut cleanup = PlanCleanup {
        daemon: &d,
        plans: Vec::new(),
        images: vec![image.clone()],
    };
    common::flag_image("verify-base", &image);
    let c = Container::create("verify-split", &[&image]);
    let observed = d.ctl(&["observe", &c.0]);
    assert!(observed.status.success(), "{observed:?}");

    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, common::SHELL_AND_READER_POLICY).unwrap();
    let out = dir.path().join("split");
    let tag = format!("cimplifier-e2e/verify-split{pid}");
    let report = emit_partitioned(&d, &c.0, &policy, &tag, &out);
    cleanup.images.extend(report.images().map(str::to_owned));
    cleanup.plans.push(out.to_str().unwrap().to_owned());
    // The program runs once and exits: the workload waits for the shell's
    // partition to finish.
    let workload = "sleep 3";

    // The positive control: seeded, the plan does what the original did.
    verified(&d, &c.0, &["--plan", out.to_str().unwrap()], workload);

    // The shared volume emptied: the seed service no longer fills it.
    let compose_path = report.compose_file.clone();
    let mut compose: serde_norway::Value =
        serde_norway::from_str(&std::fs::read_to_string(&compose_path).unwrap()).unwrap();
    compose["services"]["cimplifier-seed"]["volumes"] = serde_norway::Value::Sequence(vec![]);
    std::fs::write(&compose_path, serde_norway::to_string(&compose).unwrap()).unwrap();

    let (named, v) = named_regression(
        &d,
        &c.0,
        &["--plan", out.to_str().unwrap()],
        workload,
        "/srv/app/flag",
    );
    assert_eq!(named["partition"], "reader", "{v}");
    assert_eq!(named["executable"], "/usr/bin/cat", "{v}");
    assert!(
        named["fix"].as_str().unwrap().contains("shared volume"),
        "{v}"
    );
}

/// The notes case's start script (root) stops its node workers, which run
/// as www-data, with `kill` at a graceful stop: only CAP_KILL lets it. The
/// lifecycle's restart shows it to the observation; the emitted image is
/// granted KILL with that evidence, and verify passes it. The same image
/// whose label drops KILL is named by verify: the refused `kill` of the
/// start script, with CAP_KILL as the fix.
#[test]
fn a_script_that_stops_its_workers_across_uids_is_granted_kill_and_verify_names_its_lack() {
    require_root();
    let d = Daemon::start();
    let pid = std::process::id();
    let workload = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/workloads/notes.py");
    let c = Container::create("kill-notes", &["cimplifier-test/notes:latest"]);
    let observed = d.ctl(&["observe", &c.0, "--exec", workload]);
    assert!(observed.status.success(), "{observed:?}");

    let good = format!("cimplifier-e2e/kill-notes{pid}:slim");
    let without = format!("cimplifier-e2e/kill-notes-without{pid}:slim");
    let _images = Images(vec![good.clone(), without.clone()]);
    let report = json_of(&d.ctl(&["emit", &c.0, "--tag", &good, "--json"]));
    let evidence = report["privileges"]["capabilities"]["KILL"].to_string();
    assert!(
        evidence.contains("sent SIGTERM to a process of uid 33"),
        "KILL granted for the start script's kill: {}",
        report["privileges"]
    );
    let explained = stdout_of(&d.ctl(&["emit", &c.0, "--tag", &good, "--explain", "cap:KILL"]));
    assert!(
        explained.contains("cap:KILL: granted:")
            && explained.contains("sent SIGTERM to a process of uid 33"),
        "{explained}"
    );

    verified(&d, &c.0, &["--image", &good], workload);

    // The negative control: the same image, its label narrowed to drop KILL.
    let label = docker(&[
        "inspect",
        "-f",
        "{{index .Config.Labels \"io.cimplifier.hardening\"}}",
        &good,
    ]);
    let mut hardening: Value = serde_json::from_str(&label).unwrap();
    let caps = hardening["cap_add"].as_array_mut().unwrap();
    let before = caps.len();
    caps.retain(|c| c != "KILL");
    assert_eq!(caps.len() + 1, before, "{label}");
    let scratch = Container::create("kill-notes-scratch", &[&good]);
    // A Dockerfile's quoted string takes a JSON string's escapes.
    let quoted = Value::String(hardening.to_string()).to_string();
    docker(&[
        "commit",
        "--change",
        &format!("LABEL io.cimplifier.hardening={quoted}"),
        &scratch.0,
        &without,
    ]);
    let (named, refused) = named_regression(
        &d,
        &c.0,
        &["--image", &without],
        workload,
        "a signal to a process of another uid",
    );
    assert_eq!(named["syscall"], "kill", "{refused}");
    assert_eq!(named["errno"], "EPERM", "{refused}");
    assert!(
        named["fix"].as_str().unwrap().contains("CAP_KILL"),
        "{refused}"
    );
}
