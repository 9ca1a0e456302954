//! A real `cimplifierd serve` process, driven over its unix socket by
//! `cimplifierctl` and by a gRPC client: version and health, observing a
//! real container, sessions, reports, emit, errors with their statuses, and
//! a SIGTERM that closes every session. Needs root and dockerd.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use cimplifier::api::pb;
use common::{Daemon, require_root};
use tokio_stream::StreamExt;

fn text(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn client(
    socket: &Path,
) -> pb::cimplifier_client::CimplifierClient<tonic::transport::Channel> {
    cimplifier::api::connect(socket).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_observes_reports_and_emits_over_its_socket() {
    require_root();
    let d = Daemon::start();
    let mode = std::fs::metadata(&d.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660, "the socket is for root and its group only");
    let v = text(&d.ctl(&["version"]));
    assert!(
        v.contains("cimplifierd 0.1.0") && v.contains("cimplifier.v1"),
        "{v}"
    );

    // The standard health service.
    let channel = cimplifier::api::channel(&d.socket).await.unwrap();
    let health = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: "cimplifier.v1.Cimplifier".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        health.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    let c = common::looping("api-observed", "0.2");
    let mut api = client(&d.socket).await;
    let s = api
        .observe(pb::ObserveRequest {
            container: c.0.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.state, pb::session::State::Observing as i32);
    assert!(
        s.from_first_exec,
        "a created container is started under observation"
    );
    let listed = text(&d.ctl(&["sessions"]));
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with(&c.0) && l.contains("observing")),
        "{listed}"
    );
    let again = api
        .observe(pb::ObserveRequest {
            container: c.0.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), tonic::Code::AlreadyExists, "{again}");
    common::wait_until(20, "the loop's reads are seen and aggregated", || {
        let s = common::session_json(&d, &c.0);
        s["events"].as_u64() > Some(10) && s["aggregated_events"].as_u64() > Some(10)
    });
    let stopped = text(&d.ctl(&["stop", &c.0]));
    assert!(stopped.contains("ended: stopped"), "{stopped}");
    let sessions: serde_json::Value =
        serde_json::from_str(&text(&d.ctl(&["sessions", "--json"]))).unwrap();
    let mine = sessions
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["container"] == c.0.as_str())
        .unwrap()
        .clone();
    assert_eq!(mine["state"], "closed");
    assert_eq!(mine["complete"], true);
    assert!(mine["events"].as_u64().unwrap() > 10, "{mine}");
    // The loop's repeated reads are counted, not stored: they add nothing.
    assert!(mine["aggregated_events"].as_u64().unwrap() > 10, "{mine}");

    let report: serde_json::Value =
        serde_json::from_str(&text(&d.ctl(&["report", &c.0, "--json"]))).unwrap();
    assert_eq!(report["format"], "cimplifier-model");
    assert!(
        report["executables"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["path"] == "/usr/bin/cat"),
        "{report}"
    );
    assert!(text(&d.ctl(&["report", &c.0, "--dot"])).starts_with("digraph calls {"));

    // The daemon writes no path a client names: an oci_dir is refused
    // before any work, and nothing appears there.
    let oci = d.state.join("oci");
    let refused = api
        .emit(pb::EmitRequest {
            container: c.0.clone(),
            oci_dir: oci.to_string_lossy().into_owned(),
            ..Default::default()
        })
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused}");
    assert!(refused.message().contains("oci_archive"), "{refused}");
    assert!(!oci.exists());

    // Emit streams its steps, the OCI layout as one tar, then the audit
    // report.
    let mut stream = api
        .emit(pb::EmitRequest {
            container: c.0.clone(),
            oci_archive: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let (mut steps, mut report, mut layout) = (Vec::new(), None, Vec::new());
    while let Some(item) = stream.next().await {
        match item.unwrap().update {
            Some(pb::emit_progress::Update::Step(s)) => steps.push(s),
            Some(pb::emit_progress::Update::ReportJson(r)) => report = Some(r),
            Some(pb::emit_progress::Update::OciChunk(c)) => layout.extend(c),
            _ => {}
        }
    }
    let names: Vec<String> = tar::Archive::new(&layout[..])
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().any(|n| n == "index.json"), "{names:?}");
    assert!(
        steps.iter().any(|s| s.contains("reading the source image")),
        "{steps:?}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&report.expect("the report comes last")).unwrap();
    assert!(
        report["kept"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["path"] == "/usr/bin/cat")
    );
}

/// Event streams are bounded in number and in the events they may buffer
/// in all; closing one makes room again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_streams_are_bounded_in_all() {
    require_root();
    let d = Daemon::start();
    let mut api = client(&d.socket).await;
    let open = |buffer: u32| pb::StreamEventsRequest {
        buffer,
        ..Default::default()
    };
    let mut streams = Vec::new();
    for _ in 0..4 {
        streams.push(api.stream_events(open(1 << 20)).await.unwrap().into_inner());
    }
    let refused = api.stream_events(open(1 << 20)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused}");
    assert!(refused.message().contains("close a stream"), "{refused}");
    drop(streams.pop());
    // The daemon notices the closed stream when its queue is dropped.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match api.stream_events(open(1 << 20)).await {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                assert_eq!(e.code(), tonic::Code::ResourceExhausted);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("a closed stream never made room: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_statuses_and_sigterm_closes_sessions() {
    require_root();
    let mut d = Daemon::start();
    let mut api = client(&d.socket).await;
    let unknown = api
        .observe(pb::ObserveRequest {
            container: "no-such-container-cimplifier".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    assert!(unknown.message().contains("docker ps -a"), "{unknown}");
    let huge = api
        .observe(pb::ObserveRequest {
            container: "x".repeat(100_000),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(huge.code(), tonic::Code::InvalidArgument);
    let no_session = api
        .get_report(pb::GetReportRequest {
            container: "never-observed".into(),
            format: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(no_session.code(), tonic::Code::NotFound);
    assert!(no_session.message().contains("cimplifierctl observe"));
    let ctl_err = d.ctl(&["stop", "never-observed"]);
    assert_eq!(
        ctl_err.status.code(),
        Some(4),
        "not found has its exit code"
    );
    assert!(String::from_utf8_lossy(&ctl_err.stderr).contains("NotFound"));
    let nobody = common::cimplifierctl()
        .args(["--socket", "/nonexistent/cimplifier.sock", "version"])
        .output()
        .unwrap();
    assert_eq!(
        nobody.status.code(),
        Some(3),
        "an unreachable daemon has its exit code"
    );
    assert!(String::from_utf8_lossy(&nobody.stderr).contains("cimplifierd serve"));
    let bash = common::cimplifierctl()
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&bash.stdout).contains("complete -F"),
        "a bash completion script"
    );

    // SIGTERM while observing: the session is closed and written.
    let c = common::looping("api-sigterm", "0.2");
    api.observe(pb::ObserveRequest {
        container: c.0.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    common::wait_until(20, "the session has events", || {
        common::session_json(&d, &c.0)["events"].as_u64() > Some(0)
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(d.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = d.child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(!d.socket.exists(), "the socket is removed");
    let store = cimplifier::store::Store::open(&d.state).unwrap();
    let record = store.session(&c.0).unwrap().expect("the session is stored");
    assert_eq!(record.state, cimplifier::store::SessionState::Closed);
    assert_eq!(record.end, Some(cimplifier::store::EndReason::Stopped));
    assert!(record.complete(), "{record:?}");
    assert!(record.events > 0, "{record:?}");
}

/// Only root and the socket's group may use the daemon.
#[test]
fn uids_outside_the_socket_group_are_refused() {
    use std::os::unix::process::CommandExt;
    require_root();
    let nogroup = nix::unistd::Group::from_name("nogroup")
        .unwrap()
        .expect("Debian's nogroup");
    let d = Daemon::start_with(&["--socket-group", "nogroup"]);
    let as_user = |gid: u32| {
        common::cimplifierctl()
            .arg("--socket")
            .arg(&d.socket)
            .arg("version")
            .uid(65534)
            .gid(gid)
            .output()
            .unwrap()
    };
    let member = as_user(nogroup.gid.as_raw());
    assert!(
        member.status.success(),
        "a member of the socket's group is let in: {}",
        String::from_utf8_lossy(&member.stderr)
    );
    let outsider = as_user(1);
    assert_eq!(outsider.status.code(), Some(3), "refused at the socket");
    let err = String::from_utf8_lossy(&outsider.stderr);
    assert!(err.contains("connecting to cimplifierd"), "{err}");
    assert!(
        err.contains("permission denied")
            && err.contains("--socket-group")
            && !err.contains("is it running"),
        "says what to check: {err}"
    );
}

/// Settings come from the config file, then the environment, then flags;
/// the metrics endpoint answers in Prometheus' text format.
#[test]
fn config_file_flags_and_metrics() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let socket = dir.path().join("from-file.sock");
    let flag_state = dir.path().join("flag-state");
    // A closed session in the state dir the flag names, none in the file's.
    {
        let store = cimplifier::store::Store::open(&flag_state).unwrap();
        let record: cimplifier::store::SessionRecord = serde_json::from_str(&format!(
            r#"{{"name":"web","id":{},"container_id":"abc","container_name":"web","image_id":"sha256:1",
                "image_ref":"web:1","from_first_exec":true,"started_unix_ms":1,"state":"closed",
                "end":"stopped","duration_ms":2000,"events":0,"segments":[],"checkpoint_unix_ms":1,
                "loss":{{"ringbuf_full":0,"inflight_full":0,"user_read_faults":0,"undecodable":0}}}}"#,
            store.next_session_id().unwrap()
        ))
        .unwrap();
        store.put_session(&record).unwrap();
    }
    let config = dir.path().join("cimplifierd.toml");
    std::fs::write(
        &config,
        format!(
            "socket = {:?}\nstate_dir = {:?}\nmetrics_addr = \"127.0.0.1:{port}\"\n",
            socket.to_str().unwrap(),
            dir.path().join("file-state").to_str().unwrap()
        ),
    )
    .unwrap();
    let mut child = common::cimplifierd()
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .arg("--state-dir")
        .arg(&flag_state)
        .spawn()
        .unwrap();
    let ctl = |args: &[&str]| {
        common::cimplifierctl()
            .arg("--socket")
            .arg(&socket)
            .args(args)
            .output()
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ctl(&["version"]).status.success() {
        assert!(
            Instant::now() < deadline,
            "no daemon on the config file's socket"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let listed = text(&ctl(&["sessions"]));
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("web ") && l.contains("closed")),
        "the flag's state dir: {listed}"
    );
    let metrics = Command::new("curl")
        .args(["-sf", &format!("http://127.0.0.1:{port}/metrics")])
        .output()
        .unwrap();
    let metrics = text(&metrics);
    assert!(
        metrics.contains("cimplifier_sessions{state=\"closed\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("# TYPE cimplifier_events_total counter"),
        "{metrics}"
    );
    assert!(
        metrics.contains("cimplifier_event_streams_cut_off_total 0"),
        "{metrics}"
    );
    assert!(metrics.contains("# TYPE cimplifier_resident_memory_bytes gauge"));
    common::stop_daemon(&mut child);

    // A bad key is named with its file and line.
    std::fs::write(
        &config,
        "socket = \"/tmp/x.sock\"\nsockett_group = \"docker\"\n",
    )
    .unwrap();
    let bad = common::cimplifierd()
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("cimplifierd.toml") && err.contains("sockett_group") && err.contains("line 2"),
        "{err}"
    );
}
