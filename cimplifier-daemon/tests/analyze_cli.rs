//! `cimplifierctl analyze`, run as a user would, on the golden recordings.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

fn golden(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

fn ctl(args: &[&str]) -> Output {
    common::cimplifierctl()
        .args(args)
        .output()
        .expect("running cimplifierctl")
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "cimplifierctl failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[test]
fn table_lists_executables_calls_and_sockets() {
    let log = golden("workload.jsonl");
    let text = stdout(&ctl(&["analyze", "--events", log.to_str().unwrap()]));
    let header = text.lines().next().unwrap();
    for column in ["EXECUTABLE", "R", "W", "FAILED", "CALLERS", "CALLEES"] {
        assert!(header.contains(column), "{header}");
    }
    let mv = text
        .lines()
        .find(|l| l.starts_with("/usr/bin/mv "))
        .unwrap_or_else(|| panic!("no row for mv:\n{text}"));
    let numbers: Vec<u64> = mv
        .split_whitespace()
        .skip(1)
        .map(|n| n.parse().unwrap())
        .collect();
    assert_eq!(numbers[1], 2, "mv writes out.part and out.txt: {mv}");
    assert!(text.contains("  /bin/sh -> /usr/bin/mv"), "{text}");
    assert!(
        text.contains("unix /tmp/cimplifier-golden/golden.sock  bound by /tmp/cimplifier-golden/server.py; connected by /tmp/cimplifier-golden/client.py"),
        "{text}"
    );
    assert!(text.contains("complete: no events lost"), "{text}");
    assert!(text.contains("No image tree given"), "{text}");
}

#[test]
fn json_is_the_documented_model() {
    let log = golden("workload.strace");
    let text = stdout(&ctl(&[
        "analyze",
        "--strace",
        log.to_str().unwrap(),
        "--json",
    ]));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["format"], "cimplifier-model");
    assert_eq!(v["version"], 1);
    assert_eq!(v["source"]["kind"], "strace");
    let cat = v["executables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == "/usr/bin/cat")
        .expect("cat");
    let failed: Vec<&str> = cat["failed_lookups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert!(
        failed.contains(&"/etc/cimplifier-golden-absent"),
        "{failed:?}"
    );
    let uses = cat["uses"].as_array().unwrap();
    assert!(uses.iter().any(
        |u| u["resource"]["name"] == "/tmp/cimplifier-golden/out.txt"
            && u["access"].as_array().unwrap().contains(&"read".into())
    ));
}

#[test]
fn dot_is_the_call_graph() {
    let log = golden("workload.jsonl");
    let text = stdout(&ctl(&[
        "analyze",
        "--events",
        log.to_str().unwrap(),
        "--dot",
    ]));
    assert!(text.starts_with("digraph calls {"), "{text}");
    assert!(text.contains(r#""/bin/sh" -> "/usr/bin/cat";"#), "{text}");
    assert!(text.trim_end().ends_with('}'));
}

#[test]
fn bad_input_names_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.strace");
    std::fs::write(
        &bad,
        "12 openat(AT_FDCWD, \"/x\", O_RDONLY) = 3\nnonsense here\n",
    )
    .unwrap();
    let out = ctl(&["analyze", "--strace", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.strace:2"), "{err}");
    assert!(err.contains("expected"), "{err}");

    let missing = ctl(&["analyze", "--events", "/nonexistent/log.jsonl"]);
    assert!(!missing.status.success());
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(err.contains("/nonexistent/log.jsonl"), "{err}");

    let no_input = ctl(&["analyze"]);
    assert_eq!(no_input.status.code(), Some(2), "a usage error");
    let err = String::from_utf8_lossy(&no_input.stderr);
    assert!(
        err.contains("--events") && err.contains("--strace"),
        "{err}"
    );

    let not_dir = ctl(&[
        "analyze",
        "--events",
        golden("workload.jsonl").to_str().unwrap(),
        "--root",
        "/etc/hostname",
    ]);
    assert!(!not_dir.status.success());
    assert!(String::from_utf8_lossy(&not_dir.stderr).contains("/etc/hostname"));
}

/// A strace log cut off mid-line (strace killed) is read up to that line,
/// with a warning and an incomplete model; an empty one is refused; a huge
/// bad line is quoted in part; and without --root the user is told loudly
/// what is not resolved.
#[test]
fn damaged_strace_logs_are_named_not_echoed() {
    let dir = tempfile::tempdir().unwrap();
    let whole = std::fs::read_to_string(golden("workload.strace")).unwrap();
    let cut = dir.path().join("cut.strace");
    std::fs::write(&cut, &whole[..whole.trim_end().len() - 5]).unwrap();
    let out = ctl(&["analyze", "--strace", cut.to_str().unwrap(), "--json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["source"]["complete"], false, "{}", v["source"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cut off"), "{err}");
    assert!(err.contains("no --root"), "{err}");
    assert!(
        !err.contains('\x1b'),
        "no colour codes when stderr is no terminal: {err:?}"
    );

    let empty = dir.path().join("empty.strace");
    std::fs::write(&empty, "").unwrap();
    let out = ctl(&["analyze", "--strace", empty.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("empty"));

    let huge = dir.path().join("huge.strace");
    std::fs::write(
        &huge,
        format!("1 open(\"{}\" = -1 EBOGUS (x)\n", "y".repeat(50 << 20)),
    )
    .unwrap();
    let out = ctl(&["analyze", "--strace", huge.to_str().unwrap(), "--root", "/"]);
    assert!(!out.status.success());
    assert!(out.stderr.len() < 4000, "a {}-byte error", out.stderr.len());
}
