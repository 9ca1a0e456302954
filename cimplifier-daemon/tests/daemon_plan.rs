//! `cimplifierctl plan`: a policy applied to a real session as a dry run.
//! A shell writes a file that sort then reads; with the shell and sort in
//! separate partitions the plan shares the file's directory (with the
//! evidence), puts a stub for sort in the shell's partition, and a policy
//! naming an executable never observed is refused by name, with the same
//! exit code from plan and emit. Needs root and dockerd.

mod common;

use common::{BASE_IMAGE, Container, Daemon, require_root, stdout_of};

#[test]
fn a_policy_gives_partitions_shared_volumes_with_evidence_and_rpe_edges() {
    require_root();
    let d = Daemon::start();
    let c = Container::create(
        "plan",
        &[
            BASE_IMAGE,
            "/bin/sh",
            "-c",
            "cat /etc/os-release > /tmp/out; sort /tmp/out > /dev/null",
        ],
    );
    stdout_of(&d.ctl(&["observe", &c.0]));
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "kind = \"disjoint-subsets\"\n[partitions]\nshell = [\"/bin/sh\"]\nsorter = [\"/usr/bin/sort\"]\n",
    )
    .unwrap();
    let policy = policy.to_str().unwrap();
    let plan: serde_json::Value = serde_json::from_str(&stdout_of(
        &d.ctl(&["plan", &c.0, "--policy", policy, "--json"]),
    ))
    .unwrap();
    assert_eq!(plan["format"], "cimplifier-partition-plan");
    let partitions = plan["partitions"].as_object().unwrap();
    assert_eq!(
        partitions.keys().collect::<Vec<_>>(),
        ["shell", "sorter"],
        "the runtime's set-up before the entrypoint is not a partition"
    );
    let exes = |p: &str| partitions[p]["executables"].clone();
    assert_eq!(
        exes("shell"),
        serde_json::json!(["/bin/sh", "/usr/bin/cat"]),
        "cat follows its caller"
    );
    assert_eq!(exes("sorter"), serde_json::json!(["/usr/bin/sort"]));

    let rpe = plan["rpe"].as_array().unwrap();
    assert_eq!(rpe.len(), 1, "{rpe:?}");
    assert_eq!(rpe[0]["caller_partition"], "shell");
    assert_eq!(rpe[0]["callee"], "/usr/bin/sort");

    let volumes = plan["volumes"].as_array().unwrap();
    let tmp = volumes
        .iter()
        .find(|v| v["mount"] == "/tmp")
        .unwrap_or_else(|| panic!("/tmp is shared: {volumes:?}"));
    assert_eq!(tmp["partitions"], serde_json::json!(["shell", "sorter"]));
    let evidence = tmp["shared"].to_string();
    assert!(
        evidence.contains("/tmp/out")
            && evidence.contains("/usr/bin/sort")
            && evidence.contains("/bin/sh"),
        "why /tmp is shared: {evidence}"
    );

    let text = stdout_of(&d.ctl(&["plan", &c.0, "--policy", policy]));
    assert!(
        text.contains("VOLUME") && text.contains("/tmp/out"),
        "{text}"
    );
    // Each partition's privileges: sort's partition runs the RPE server,
    // which starts sort as the shell's user.
    assert!(
        text.contains(
            "privileges of sorter: capabilities 3 of Docker's 14: [KILL, SETGID, SETUID]; \
             no-new-privileges yes"
        ),
        "{text}"
    );
    assert!(
        text.contains("privileges of shell: capabilities 0 of Docker's 14: []"),
        "{text}"
    );

    std::fs::write(
        dir.path().join("bad.toml"),
        "kind = \"disjoint-subsets\"\n[partitions]\nshell = [\"/bin/bash\"]\n",
    )
    .unwrap();
    let bad = d.ctl(&[
        "plan",
        &c.0,
        "--policy",
        dir.path().join("bad.toml").to_str().unwrap(),
    ]);
    assert_eq!(bad.status.code(), Some(2));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("/bin/bash") && err.contains("never observed") && err.contains("/bin/sh"),
        "{err}"
    );
    // The same refusal from emit is the same status, so the same exit code.
    let tag = format!("cimplifier-test/plan-refused-{}", std::process::id());
    let emitted = d.ctl(&[
        "emit",
        &c.0,
        "--policy",
        dir.path().join("bad.toml").to_str().unwrap(),
        "--tag",
        &tag,
        "--out",
        dir.path().join("out").to_str().unwrap(),
    ]);
    let emit_err = String::from_utf8_lossy(&emitted.stderr);
    assert_eq!(emitted.status.code(), Some(2), "{emit_err}");
    assert!(
        emit_err.contains("/bin/bash") && emit_err.contains("InvalidArgument"),
        "{emit_err}"
    );
    let missing = d.ctl(&["plan", &c.0, "--policy", "/nonexistent/policy.toml"]);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/policy.toml"));
}
