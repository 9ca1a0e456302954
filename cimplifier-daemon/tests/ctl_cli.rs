//! cimplifierctl as a user meets it, against a real daemon: every argument
//! is checked before any work (usage errors exit 2, by name, and the daemon
//! checks again at request entry), every command that prints has --json,
//! and the help says what the README says. Needs root and dockerd.

mod common;

use std::io::Write;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use cimplifier::api::pb;
use common::{BASE_IMAGE, Container, Daemon, docker, require_root, stdout_of};
use serde_json::Value;

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn json(out: &Output) -> Value {
    serde_json::from_str(&stdout_of(out))
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

/// A session bundle of the base image with one exec of /bin/sh: closed,
/// complete, observed from the first exec.
fn bundle(name: &str) -> String {
    let image_id = docker(&["image", "inspect", "-f", "{{.Id}}", BASE_IMAGE]);
    let header = format!(
        r#"{{"format":"cimplifier-session-bundle","version":1,"session":{{"name":"{name}","id":1,"container_id":"c0ffee","container_name":"{name}","image_id":"{image_id}","image_ref":"{BASE_IMAGE}","from_first_exec":true,"started_unix_ms":1,"state":"closed","end":"stopped","duration_ms":1000,"events":1,"segments":[{{"first_event":0,"started_unix_ms":1,"from_first_exec":true,"origin":"observed"}}],"checkpoint_unix_ms":2,"loss":{{"ringbuf_full":0,"inflight_full":0,"user_read_faults":0,"undecodable":0,"unreadable_names":0}}}}}}"#
    );
    let event = r#"{"ts_ns":1,"pid":5,"tid":5,"ppid":1,"cgroup":7,"comm":"sh","event":"syscall","syscall":"execve","nr":59,"args":[0,0,0,0,0,0],"ret":0,"paths":[{"role":"target","raw":"/bin/sh","path":"/bin/sh","status":"resolved"}],"argv":["/bin/sh"]}"#;
    format!("{header}\n{event}\n")
}

/// `cimplifierctl ARGS` with `input` on stdin.
fn ctl_stdin(d: &Daemon, args: &[&str], input: &[u8]) -> Output {
    let mut child = common::cimplifierctl()
        .arg("--socket")
        .arg(&d.socket)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

/// `cimplifierctl ARGS`, killed if it has not ended within `secs` (then
/// None): for commands that used to wait forever.
fn ctl_within(d: &Daemon, args: &[&str], secs: u64) -> Option<Output> {
    let mut child = common::cimplifierctl()
        .arg("--socket")
        .arg(&d.socket)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return Some(child.wait_with_output().unwrap());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

#[test]
fn bad_arguments_are_usage_errors_named_before_any_work() {
    require_root();
    let d = Daemon::start();
    let imported = ctl_stdin(
        &d,
        &["import", "-", "--as", "usage"],
        bundle("usage").as_bytes(),
    );
    assert!(imported.status.success(), "{}", stderr(&imported));

    let cases: &[(&[&str], &str)] = &[
        (&["emit", "usage", "--tag", "My App:slim"], "--tag"),
        (&["emit", "usage", "--tag", "MyApp:slim"], "lower case"),
        (&["emit", "usage", "--tag", "myapp:"], "REPOSITORY[:TAG]"),
        (
            &["emit", "usage", "--tag", "x:slim", "--exclude", "/"],
            "--exclude /",
        ),
        (
            &["emit", "usage", "--tag", "x:slim", "--include", "etc/ssl"],
            "--include \"etc/ssl\"",
        ),
        (
            &["emit", "usage", "--tag", "x:slim", "--no-safety-set", "dns"],
            "nss, ca-certificates",
        ),
        (
            &["plan", "usage", "--policy", "/nonexistent/policy.toml"],
            "--policy /nonexistent/policy.toml",
        ),
        (&["events", "--kind", "bogus"], "--kind \"bogus\""),
        (&["events", "--exe", "nginx"], "--exe \"nginx\""),
        (&["import", "/nonexistent/bundle"], "/nonexistent/bundle"),
    ];
    for (args, named) in cases {
        let out = d.ctl(args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?} is a usage error: {}",
            stderr(&out)
        );
        assert!(stderr(&out).contains(named), "{args:?}: {}", stderr(&out));
    }
    // A huge tag is quoted in part.
    let huge = "A".repeat(100_000);
    let out = d.ctl(&["emit", "usage", "--tag", &huge]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stderr.len() < 2000, "{} bytes", out.stderr.len());

    // The tag is checked before the daemon is reached at all.
    let out = common::cimplifierctl()
        .args(["--socket", "/nonexistent/cimplifier.sock"])
        .args(["emit", "usage", "--tag", "Bad Tag"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

/// The daemon is root and trusts no client: a bad tag is InvalidArgument
/// at request entry, before the session's image is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_refuses_a_bad_tag_at_request_entry() {
    require_root();
    let d = Daemon::start();
    let imported = ctl_stdin(&d, &["import", "-"], bundle("entry").as_bytes());
    assert!(imported.status.success(), "{}", stderr(&imported));
    let mut api = cimplifier::api::connect(d.socket.as_path()).await.unwrap();
    for (tag, exclude, policy) in [
        ("Bad Tag", vec![], ""),
        ("x@sha256:abc", vec![], ""),
        ("x:slim", vec!["/".to_owned()], ""),
        ("Bad Tag", vec![], "kind = \"one-one\""),
    ] {
        let result = api
            .emit(pb::EmitRequest {
                container: "entry".into(),
                tag: tag.into(),
                exclude,
                policy_toml: policy.into(),
                out_dir: if policy.is_empty() { "" } else { "/tmp/never" }.into(),
                ..Default::default()
            })
            .await;
        let status = match result {
            Err(s) => s,
            // A refusal after the stream began: the image was read first.
            Ok(stream) => {
                let mut stream = stream.into_inner();
                let mut last = None;
                while let Some(item) = tokio_stream::StreamExt::next(&mut stream).await {
                    last = Some(item);
                }
                panic!("tag {tag:?}: the emit began; it ended with {last:?}")
            }
        };
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{tag:?}: {status:?}"
        );
    }
}

#[test]
fn every_command_that_prints_has_json() {
    require_root();
    let d = Daemon::start();
    let v = json(&d.ctl(&["version", "--json"]));
    assert_eq!(v["cimplifierd"], env!("CARGO_PKG_VERSION"), "{v}");
    assert_eq!(v["apis"][0], "cimplifier.v1", "{v}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a.bundle");
    std::fs::write(&file, bundle("json-a")).unwrap();
    let s = json(&d.ctl(&["import", file.to_str().unwrap(), "--json"]));
    assert_eq!(
        (s["container"].as_str(), s["events"].as_u64()),
        (Some("json-a"), Some(1))
    );
    let s = json(&ctl_stdin(
        &d,
        &["import", "-", "--as", "json-b", "--json"],
        bundle("x").as_bytes(),
    ));
    assert_eq!(s["container"], "json-b", "{s}");

    let out = dir.path().join("out.bundle");
    let e = json(&d.ctl(&["export", "json-a", "-o", out.to_str().unwrap(), "--json"]));
    assert_eq!(e["session"], "json-a");
    assert_eq!(
        e["bytes"].as_u64(),
        Some(std::fs::metadata(&out).unwrap().len())
    );
    let both = d.ctl(&["export", "json-a", "-o", "-", "--json"]);
    assert_eq!(both.status.code(), Some(2), "{}", stderr(&both));

    let m = json(&d.ctl(&["merge", "--into", "json-m", "json-a", "json-b", "--json"]));
    assert_eq!(m["container"], "json-m", "{m}");
    assert_eq!(m["segments"].as_array().unwrap().len(), 2, "{m}");

    let l = json(&d.ctl(&["observe", "--label", "ctl-cli-json=1", "--json"]));
    assert_eq!(l["label_selector"], "ctl-cli-json=1", "{l}");

    let c = Container::create(
        "ctl-json-stop",
        &[
            BASE_IMAGE,
            "/bin/sh",
            "-c",
            "while true; do sleep 0.2; done",
        ],
    );
    let mut observe = Guard(
        common::cimplifierctl()
            .arg("--socket")
            .arg(&d.socket)
            .args(["observe", &c.0, "--duration", "60s"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    common::wait_until(30, "the session is observing", || {
        let all = json(&d.ctl(&["sessions", "--json"]));
        all.as_array()
            .unwrap()
            .iter()
            .any(|s| s["container"] == c.0.as_str() && s["state"] == "observing")
    });
    let s = json(&d.ctl(&["stop", &c.0, "--json"]));
    assert_eq!(
        (s["container"].as_str(), s["state"].as_str()),
        (Some(c.0.as_str()), Some("closed")),
        "{s}"
    );
    let _ = observe.0.wait();
}

/// Kills the child on drop.
struct Guard(std::process::Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn sessions_show_gaps_and_completeness_and_the_same_counts_as_observe() {
    require_root();
    let d = Daemon::start();
    let c = Container::create(
        "ctl-counts",
        &[
            BASE_IMAGE,
            "/bin/sh",
            "-c",
            "cat /etc/os-release > /dev/null; sleep 1",
        ],
    );
    let observed = json(&d.ctl(&["observe", &c.0, "--json"]));
    let listed = common::session_json(&d, &c.0);
    assert!(observed["resources"].as_u64().unwrap() > 5, "{observed}");
    assert_eq!(listed["executables"], observed["executables"], "{listed}");
    assert_eq!(listed["resources"], observed["resources"], "{listed}");

    let table = stdout_of(&d.ctl(&["sessions"]));
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    let row: Vec<&str> = table
        .lines()
        .find(|l| l.starts_with(&format!("{} ", c.0)))
        .unwrap_or_else(|| panic!("{table}"))
        .split_whitespace()
        .collect();
    let col = |name: &str| {
        let i = header
            .iter()
            .position(|h| *h == name)
            .unwrap_or_else(|| panic!("no {name} column: {table}"));
        row[i]
    };
    assert_eq!((col("GAPS"), col("COMPLETE")), ("0", "yes"), "{table}");
    assert_eq!(col("IMAGE"), BASE_IMAGE, "{table}");
}

#[test]
fn events_refuses_a_filter_that_can_match_nothing() {
    require_root();
    let d = Daemon::start();
    // The daemon refuses an unknown kind itself, whatever the client.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let status = rt.block_on(async {
        let mut api = cimplifier::api::connect(d.socket.as_path()).await.unwrap();
        api.stream_events(pb::StreamEventsRequest {
            kinds: vec!["bogus".into()],
            ..Default::default()
        })
        .await
        .map(|_| ())
    });
    assert_eq!(
        status.unwrap_err().code(),
        tonic::Code::InvalidArgument,
        "a kind that can match nothing"
    );

    let out = ctl_within(&d, &["events", "--session", "never-observed"], 20)
        .expect("events on a session that does not exist must not wait forever");
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("never-observed"), "{}", stderr(&out));

    let imported = ctl_stdin(
        &d,
        &["import", "-", "--as", "closed"],
        bundle("closed").as_bytes(),
    );
    assert!(imported.status.success(), "{}", stderr(&imported));
    let out = ctl_within(&d, &["events", "--session", "closed"], 20)
        .expect("events on a closed session must not wait forever");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("closed"), "{}", stderr(&out));
}

#[test]
fn help_and_version_say_what_the_readme_says() {
    let ctl = |args: &[&str]| {
        let out = common::cimplifierctl().args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(
        ctl(&["--version"]).starts_with("cimplifierctl "),
        "{}",
        ctl(&["--version"])
    );
    let help = ctl(&["--help"]);
    assert!(help.contains("6 an event stream was cut off"), "{help}");
    // A command's own options come before the flags that reach the daemon.
    let emit = ctl(&["emit", "--help"]);
    let own = emit.find("--tag <TAG>").expect("emit's --tag");
    let heading = emit
        .find("Reaching the daemon")
        .unwrap_or_else(|| panic!("no heading for the global flags:\n{emit}"));
    let tls = emit.find("--tls-ca").unwrap();
    assert!(own < heading && heading < tls, "{emit}");
    let d = common::cimplifierd().arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&d.stdout).starts_with("cimplifierd "));
}

/// emit's footguns: a mistyped --include, an --exclude of the entrypoint
/// (here through merged /usr's /bin -> usr/bin) or of /, are refused by
/// name; an --exclude that matches nothing is warned about; --explain of a
/// path the image lacks says so; and the sizes add up.
#[test]
fn emit_refuses_or_warns_about_options_that_do_not_fit_the_image() {
    require_root();
    let d = Daemon::start();
    let imported = ctl_stdin(
        &d,
        &["import", "-", "--as", "foot"],
        bundle("foot").as_bytes(),
    );
    assert!(imported.status.success(), "{}", stderr(&imported));
    let dir = tempfile::tempdir().unwrap();
    let oci = dir.path().join("oci");
    let oci = oci.to_str().unwrap();

    let out = d.ctl(&[
        "emit",
        "foot",
        "--oci-dir",
        oci,
        "--include",
        "/etc/no-such-dir",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--include /etc/no-such-dir"),
        "{}",
        stderr(&out)
    );

    let out = d.ctl(&[
        "emit",
        "foot",
        "--oci-dir",
        oci,
        "--exclude",
        "/usr/bin/bash",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("drops the entrypoint /bin/bash"),
        "{}",
        stderr(&out)
    );

    let out = d.ctl(&[
        "emit",
        "foot",
        "--oci-dir",
        oci,
        "--exclude",
        "/opt/nothing-here",
        "--explain",
        "/etc/nothing-here",
        "--explain",
        "/etc/os-release",
    ]);
    let text = stdout_of(&out);
    assert!(
        stderr(&out).contains("warning: --exclude /opt/nothing-here"),
        "{}",
        stderr(&out)
    );
    assert!(
        text.contains("/etc/nothing-here: not in the source image"),
        "{text}"
    );
    assert!(text.contains("/etc/os-release: removed"), "{text}");

    let report: Value = serde_json::from_str(
        &std::fs::read_to_string(d.state.join("emit-reports/foot.json")).unwrap(),
    )
    .unwrap();
    let n = |k: &str| report[k].as_u64().unwrap_or_else(|| panic!("no {k}"));
    assert!(n("source_content_bytes") > 0);
    assert_eq!(
        n("kept_bytes") + n("removed_bytes"),
        n("source_content_bytes"),
        "kept and removed make the source"
    );
    assert_eq!(n("kept_files") + n("removed_files"), n("source_files"));
}

/// A session whose container could not start: `sessions` lists it as
/// failed with its error on a line of its own (not in IMAGE), and `report`,
/// `plan` and `emit` of it say it failed, not that there is no session.
#[test]
fn a_failed_session_is_named_as_failed() {
    require_root();
    let d = Daemon::start();
    let c = Container::create("ctl-failed", &[BASE_IMAGE, "/nonexistent-entrypoint"]);
    let out = d.ctl(&["observe", &c.0]);
    assert!(!out.status.success());

    let table = stdout_of(&d.ctl(&["sessions"]));
    let lines: Vec<&str> = table.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with(&format!("{} ", c.0)))
        .unwrap_or_else(|| panic!("{table}"));
    let row: Vec<&str> = lines[at].split_whitespace().collect();
    assert_eq!(row[1], "failed", "{table}");
    assert_eq!(
        *row.last().unwrap(),
        "-",
        "no error in the IMAGE column: {table}"
    );
    assert!(
        lines[at + 1].trim_start().starts_with("error: ") && lines[at + 1].contains("nonexistent"),
        "{table}"
    );

    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("p.toml");
    std::fs::write(&policy, "kind = \"one-one\"\n").unwrap();
    for args in [
        vec!["report", &c.0],
        vec!["emit", &c.0, "--tag", "cimplifier-never/x:y"],
        vec!["plan", &c.0, "--policy", policy.to_str().unwrap()],
    ] {
        let out = d.ctl(&args);
        assert_eq!(out.status.code(), Some(5), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("failed") && !stderr(&out).contains("no session"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
}

/// Emit says how far its long read of the source image is, in bytes, so
/// cimplifierctl can draw a bar rather than spin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emit_streams_byte_progress_while_reading_the_image() {
    require_root();
    let d = Daemon::start();
    let imported = ctl_stdin(
        &d,
        &["import", "-", "--as", "bytes"],
        bundle("bytes").as_bytes(),
    );
    assert!(imported.status.success(), "{}", stderr(&imported));
    let mut api = cimplifier::api::connect(d.socket.as_path()).await.unwrap();
    let mut stream = api
        .emit(pb::EmitRequest {
            container: "bytes".into(),
            oci_archive: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut counts = Vec::new();
    let mut report = false;
    while let Some(item) = tokio_stream::StreamExt::next(&mut stream).await {
        match item.unwrap().update {
            Some(pb::emit_progress::Update::Bytes(b)) => {
                assert_eq!(b.what, "reading the source image");
                assert!(b.done <= b.total, "{b:?}");
                counts.push(b.done);
            }
            Some(pb::emit_progress::Update::ReportJson(_)) => report = true,
            _ => {}
        }
    }
    assert!(report, "the emit ends with its report");
    let size: u64 = docker(&["image", "inspect", "-f", "{{.Size}}", BASE_IMAGE])
        .parse()
        .unwrap();
    assert!(
        counts.windows(2).all(|w| w[0] < w[1]) && counts.last().is_some_and(|&n| n >= size / 2),
        "byte counts rise to about the image's {size} bytes: {counts:?}"
    );
}

/// A session stopped while it is still opening (listed, its container not
/// started yet) is closed and returned, not answered "no session".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_stopped_while_it_opens_is_closed_not_lost() {
    require_root();
    let d = Daemon::start();
    let c = Container::create(
        "ctl-stop-opening",
        &[
            BASE_IMAGE,
            "/bin/sh",
            "-c",
            "while true; do sleep 0.2; done",
        ],
    );
    let mut api = cimplifier::api::connect(d.socket.as_path()).await.unwrap();
    let observe = {
        let mut api = api.clone();
        let name = c.0.clone();
        tokio::spawn(async move {
            api.observe(pb::ObserveRequest {
                container: name,
                ..Default::default()
            })
            .await
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list = api
            .list_sessions(pb::ListSessionsRequest {})
            .await
            .unwrap()
            .into_inner();
        if list.sessions.iter().any(|s| s.container == c.0) {
            break;
        }
        assert!(Instant::now() < deadline, "never listed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let stopped = api
        .stop_observing(pb::StopObservingRequest {
            container: c.0.clone(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("stop while opening: {e:?}"))
        .into_inner();
    assert_eq!(
        stopped.state,
        pb::session::State::Closed as i32,
        "{stopped:?}"
    );
    let _ = observe.await;
}

/// The documented emit options do what they say, each against a run
/// without it: `--exclude` drops a path that would be kept,
/// `--no-safety-set timezone` drops /etc/timezone, and `--list-removed`
/// lists every removed path in the report.
#[test]
fn exclude_no_safety_set_and_list_removed_do_what_they_say() {
    require_root();
    let d = Daemon::start();
    let imported = ctl_stdin(
        &d,
        &["import", "-", "--as", "opts"],
        bundle("opts").as_bytes(),
    );
    assert!(imported.status.success(), "{}", stderr(&imported));
    let dir = tempfile::tempdir().unwrap();
    let emit = |name: &str, extra: &[&str]| -> Value {
        let oci = dir.path().join(name);
        let mut args = vec!["emit", "opts", "--oci-dir", oci.to_str().unwrap(), "--json"];
        args.extend_from_slice(extra);
        json(&d.ctl(&args))
    };
    let kept = |report: &Value, path: &str| {
        report["kept"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["path"] == path)
    };

    let plain = emit("plain", &[]);
    assert!(kept(&plain, "/etc/timezone"), "safety set timezone");
    assert!(kept(&plain, "/etc/passwd"), "safety set nss");
    assert!(
        plain["removed"].is_null(),
        "listed only when asked: {}",
        plain["removed"]
    );

    let excluded = emit("excluded", &["--exclude", "/etc/passwd"]);
    assert!(!kept(&excluded, "/etc/passwd"), "--exclude drops it");
    assert!(kept(&excluded, "/etc/timezone"));

    let no_tz = emit("no-tz", &["--no-safety-set", "timezone"]);
    assert!(
        !kept(&no_tz, "/etc/timezone"),
        "--no-safety-set drops the set"
    );
    assert!(kept(&no_tz, "/etc/passwd"), "the other sets stay");

    let listed = emit("listed", &["--list-removed"]);
    let removed: Vec<&str> = listed["removed"]
        .as_array()
        .unwrap_or_else(|| panic!("--list-removed lists: {listed}"))
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(removed.contains(&"/etc/os-release"), "{removed:?}");
    assert!(!removed.contains(&"/etc/timezone"), "kept is not removed");
    assert_eq!(
        removed.len() as u64,
        listed["removed_files"].as_u64().unwrap(),
        "every removed file is listed"
    );
}
