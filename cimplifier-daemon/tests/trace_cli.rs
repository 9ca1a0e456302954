//! `cimplifierd trace` end to end, and loss accounting. Needs root.

mod common;

use std::time::Duration;

use cimplifier::trace::log::EventLog;
use cimplifier::trace::{PathRole, Tracer, TracerConfig};
use common::*;

#[test]
fn trace_command_writes_a_complete_replayable_log() {
    require_root();
    let cgroup = TestCgroup::new("cli");
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("trace.jsonl");
    let marker = dir.path().join("marker.txt");
    std::fs::write(&marker, "x").unwrap();

    let mut daemon = common::cimplifierd()
        .args([
            "trace",
            "--cgroup",
            cgroup.path.to_str().unwrap(),
            "--duration",
            "3s",
            "--output",
        ])
        .arg(&log_path)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The workload runs once the programs are attached and the cgroup is
    // watched, which the daemon logs (however long loading takes).
    let stderr = daemon.stderr.take().unwrap();
    let (attached_tx, attached) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            eprintln!("{line}");
            if line.contains("tracing cgroup") {
                let _ = attached_tx.send(());
            }
        }
    });
    attached
        .recv_timeout(Duration::from_secs(60))
        .expect("cimplifierd trace never said it was tracing");
    run_in(&cgroup.path, &["/bin/cat", marker.to_str().unwrap()]);
    let status = daemon.wait().unwrap();
    assert!(status.success(), "cimplifierd trace failed: {status}");

    let log = EventLog::read(&log_path).unwrap();
    assert!(log.is_complete(), "summary: {:?}", log.summary);
    assert_eq!(log.header.cgroup_path, cgroup.path);
    assert_eq!(
        log.summary.as_ref().unwrap().events,
        log.events.len() as u64
    );
    let marker = marker.to_str().unwrap();
    assert!(
        !find(&log.events, &["openat", "open"], PathRole::Target, marker).is_empty(),
        "the workload's open of {marker} is not in the log:\n{}",
        dump(&log.events, 40)
    );
}

#[test]
fn trace_command_names_a_bad_cgroup() {
    require_root();
    let out = common::cimplifierd()
        .args([
            "trace",
            "--cgroup",
            "/tmp",
            "--duration",
            "1s",
            "--output",
            "/dev/null",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("/tmp is not a cgroup v2 directory"),
        "{stderr}"
    );
}

/// With a one-page ring buffer that nobody reads, records must be counted
/// as lost, never dropped silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_ring_buffer_is_counted_as_loss() {
    require_root();
    let tracer = Tracer::load(TracerConfig {
        ring_buffer_bytes: 4096,
        ..Default::default()
    })
    .unwrap();
    let cgroup = TestCgroup::new("loss");
    tracer.watch_cgroup(&cgroup.path).unwrap();
    run_in(
        &cgroup.path,
        &[
            "/bin/sh",
            "-c",
            "for i in 1 2 3 4 5 6 7 8; do cat /etc/hostname >/dev/null; done",
        ],
    );
    let counters = tracer.counters().unwrap();
    assert!(counters.loss.ringbuf_full > 0, "{counters:?}");
    assert_eq!(
        counters.ringbuf_full_per_cpu.iter().sum::<u64>(),
        counters.loss.ringbuf_full
    );
    assert!(!counters.loss.is_complete());
    assert!(
        counters.emitted > 0,
        "some records fit before the buffer filled: {counters:?}"
    );
}

/// With the kernel log on (`--kernel-log`), a loss is also told in the
/// daemon's log, by the kernel program that saw it (aya-log).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kernel_log_tells_of_a_full_ring_buffer_when_on() {
    require_root();
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Captured {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer({
            let c = captured.clone();
            move || c.clone()
        })
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let log = || String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
    for kernel_log in [false, true] {
        let tracer = Tracer::load(TracerConfig {
            ring_buffer_bytes: 4096,
            kernel_log,
            ..Default::default()
        })
        .unwrap();
        let cgroup = TestCgroup::new("kernel-log");
        tracer.watch_cgroup(&cgroup.path).unwrap();
        run_in(
            &cgroup.path,
            &[
                "/bin/sh",
                "-c",
                "for i in 1 2 3 4 5 6 7 8; do cat /etc/hostname >/dev/null; done",
            ],
        );
        assert!(tracer.counters().unwrap().loss.ringbuf_full > 0);
        // The reader thread drains the log every 100 ms, and once more
        // when the tracer is dropped.
        drop(tracer);
        let told = log().contains("ring buffer full: a record of cgroup");
        assert_eq!(told, kernel_log, "kernel_log {kernel_log}; log:\n{}", log());
    }
}

/// `cimplifierd trace --container NAME` asks the engine for the container's
/// cgroup and records what the container does.
#[test]
fn trace_command_follows_a_container_by_name() {
    require_root();
    let c = Container::create(
        "trace-cli",
        &[
            BASE_IMAGE,
            "/bin/sh",
            "-c",
            "while true; do cat /etc/hostname > /dev/null; sleep 0.2; done",
        ],
    );
    docker(&["start", &c.0]);
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("trace.jsonl");
    let out = common::cimplifierd()
        .args(["trace", "--container", &c.0, "--duration", "3s", "--output"])
        .arg(&log_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cimplifierd trace --container failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = EventLog::read(&log_path).unwrap();
    assert!(log.is_complete(), "summary: {:?}", log.summary);
    let id = docker(&["inspect", "-f", "{{.Id}}", &c.0]);
    assert!(
        log.header.cgroup_path.to_string_lossy().contains(&id),
        "{} is not the cgroup of {id}",
        log.header.cgroup_path.display()
    );
    assert!(
        touches(&log.events, "/etc/hostname"),
        "the container's reads are in the log:\n{}",
        dump(&log.events, 40)
    );
}
