//! Load: 20 clients stream events while 5 containers are observed. The
//! clients that read keep getting events; one that never reads is cut off
//! with RESOURCE_EXHAUSTED and counted, and meanwhile the daemon answers
//! every other call and its sessions lose nothing. Real daemon, real
//! containers. Needs root and dockerd.

mod common;

use std::time::Duration;

use cimplifier::api::pb;
use common::{BASE_IMAGE, Container, Daemon, require_root, session_json, stdout_of};
use tokio_stream::StreamExt;

const CONTAINERS: usize = 5;
const READERS: usize = 19;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_streams_and_five_sessions_and_a_slow_reader_is_cut_off() {
    require_root();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let metrics_addr = format!("127.0.0.1:{port}");
    let d = Daemon::start_with(&["--metrics-addr", &metrics_addr]);
    let containers: Vec<Container> = (0..CONTAINERS)
        .map(|i| {
            Container::create(
                &format!("load-{i}"),
                &[
                    BASE_IMAGE,
                    "/bin/sh",
                    "-c",
                    "while true; do cat /etc/hostname /etc/os-release > /dev/null; sleep 0.05; done",
                ],
            )
        })
        .collect();
    let mut api = cimplifier::api::connect(&d.socket).await.unwrap();
    for c in &containers {
        api.observe(pb::ObserveRequest {
            container: c.0.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    }

    // cimplifierctl as a slow client: its stdout is a pipe nobody reads
    // until the end, so it stops reading the stream and is cut off.
    let slow_ctl = common::cimplifierctl()
        .arg("--socket")
        .arg(&d.socket)
        .args(["events", "--buffer", "16"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();

    // The slow client: subscribes with a small buffer and never reads.
    let mut slow_api = cimplifier::api::connect(&d.socket).await.unwrap();
    let mut slow = slow_api
        .stream_events(pb::StreamEventsRequest {
            buffer: 16,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();

    // 19 readers, each filtered to one session, counting what they get.
    let mut readers = Vec::new();
    for i in 0..READERS {
        let socket = d.socket.clone();
        let session = containers[i % CONTAINERS].0.clone();
        readers.push(tokio::spawn(async move {
            let mut api = cimplifier::api::connect(&socket).await.unwrap();
            let mut stream = api
                .stream_events(pb::StreamEventsRequest {
                    sessions: vec![session.clone()],
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            let mut n = 0u64;
            let until = tokio::time::Instant::now() + Duration::from_secs(6);
            while let Ok(Some(e)) = tokio::time::timeout_at(until, stream.next()).await {
                let e = e.expect("a reading client is never cut off");
                assert_eq!(e.session, session, "the filter holds");
                n += 1;
            }
            n
        }));
    }

    // The daemon answers while all of that runs.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        api.version(pb::VersionRequest {}).await.unwrap();
        api.list_sessions(pb::ListSessionsRequest {}).await.unwrap();
    }
    for r in readers {
        let n = r.await.unwrap();
        // How many is a figure for `cargo bench --bench daemon`, not a test.
        assert!(n > 0, "a reading client got no events");
    }

    // Now the slow client reads: what was buffered, then the cut-off.
    let mut got = 0;
    let status = loop {
        match tokio::time::timeout(Duration::from_secs(10), slow.next()).await {
            Ok(Some(Ok(_))) => got += 1,
            Ok(Some(Err(status))) => break status,
            other => panic!("the slow stream was not cut off: {other:?}"),
        }
    };
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status}");
    assert!(status.message().contains("fell more than 16 events behind"));
    // Its queue held 16; HTTP/2's flow-control window (64 KiB) holds what
    // was already sent, a few hundred small events at the most.
    assert!(
        got <= 16 + 300,
        "the slow client's backlog was bounded: {got}"
    );

    let metrics = String::from_utf8(
        std::process::Command::new("curl")
            .args(["-sf", &format!("http://{metrics_addr}/metrics")])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let cut_off: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("cimplifier_event_streams_cut_off_total "))
        .expect("the cut-off counter")
        .parse()
        .unwrap();
    assert!(cut_off >= 1, "{metrics}");
    assert!(
        metrics.contains("cimplifier_sessions{state=\"observing\"} 5"),
        "{metrics}"
    );

    // Its stdout read now, cimplifierctl ends with exit code 6, saying why.
    let ctl_out = {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(slow_ctl.wait_with_output());
        });
        rx.recv_timeout(Duration::from_secs(30))
            .expect("cimplifierctl events was not cut off")
            .unwrap()
    };
    let ctl_err = String::from_utf8_lossy(&ctl_out.stderr);
    assert_eq!(ctl_out.status.code(), Some(6), "{ctl_err}");
    assert!(
        ctl_err.contains("fell more than 16 events behind"),
        "{ctl_err}"
    );

    for c in &containers {
        stdout_of(&d.ctl(&["stop", &c.0]));
        let s = session_json(&d, &c.0);
        assert_eq!(s["complete"], true, "no session lost events: {s}");
        assert!(s["events"].as_u64().unwrap() > 0, "{s}");
    }
}
