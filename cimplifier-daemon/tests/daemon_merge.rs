//! One daemon per node, then one image: two daemons (standing for two
//! nodes) observe two containers of one image under different workloads;
//! one session is exported from the second daemon and imported into the
//! first, the two are merged, and the merged session's slim image serves
//! both workloads, answering as the original image does (output and
//! status, on a container's first run and on its second, which starts
//! from what the first left), while either session alone would not. The
//! workloads are commands that exit at once: there is nothing running to
//! restart or kill. Also the live `cimplifierctl events` tail. Needs root
//! and dockerd.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{BASE_IMAGE, Container, Daemon, docker, require_root, stdout_of};

/// Observes a created container until it exits.
fn observe(d: &Daemon, c: &Container) {
    let out = stdout_of(&d.ctl(&["observe", &c.0, "--json"]));
    let s: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(s["end"], "container_died", "{s}");
    assert_eq!(s["complete"], true, "{s}");
}

struct Image(String);

impl Drop for Image {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rmi", "-f", &self.0]).output();
    }
}

/// Runs `argv` in a new container of `image`, then starts the same
/// container again: each run's status and output.
fn answers(image: &str, argv: &[&str]) -> Vec<String> {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut args = vec![image];
    args.extend_from_slice(argv);
    let c = Container::create(&format!("merge-answers-{n}"), &args);
    (0..2)
        .map(|run| {
            let out = Command::new("docker")
                .args(["start", "-a", &c.0])
                .output()
                .unwrap();
            format!(
                "run {run}: {}\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
        .collect()
}

fn runs(image: &str, argv: &[&str]) -> bool {
    let mut args = vec!["run", "--rm", image];
    args.extend_from_slice(argv);
    Command::new("docker")
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

#[test]
fn sessions_from_two_daemons_merge_into_one_image_for_both_workloads() {
    require_root();
    let node_a = Daemon::start();
    let node_b = Daemon::start();
    let reads = Container::create("merge-a", &[BASE_IMAGE, "cat", "/etc/os-release"]);
    let sorts = Container::create("merge-b", &[BASE_IMAGE, "sort", "/etc/passwd"]);
    observe(&node_a, &reads);
    observe(&node_b, &sorts);

    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("b.cimsession");
    stdout_of(&node_b.ctl(&["export", &sorts.0, "-o", bundle.to_str().unwrap()]));
    let imported =
        stdout_of(&node_a.ctl(&["import", bundle.to_str().unwrap(), "--as", "from-node-b"]));
    assert!(
        imported.contains("imported session from-node-b"),
        "{imported}"
    );

    let merged_name = format!("merged-{}", std::process::id());
    let merged =
        stdout_of(&node_a.ctl(&["merge", "--into", &merged_name, &reads.0, "from-node-b"]));
    assert!(
        merged.contains(&format!("into session {merged_name}")),
        "{merged}"
    );
    let (record, _) = node_a.session_events(&merged_name);
    let origins: Vec<&str> = record["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["origin"].as_str().unwrap())
        .collect();
    assert_eq!(
        origins,
        [
            format!("merged from {} (observed)", reads.0).as_str(),
            "merged from from-node-b (observed)"
        ]
    );

    let image = Image(format!(
        "cimplifier-test/merged-{}:slim",
        std::process::id()
    ));
    stdout_of(&node_a.ctl(&["emit", &merged_name, "--tag", &image.0]));
    for (node, argv) in [
        ("A", ["cat", "/etc/os-release"]),
        ("B", ["sort", "/etc/passwd"]),
    ] {
        let original = answers(BASE_IMAGE, &argv);
        assert!(
            original.iter().all(|a| a.contains(": exit status: 0\n")) && original[0].len() > 100,
            "{original:?}"
        );
        assert_eq!(
            answers(&image.0, &argv),
            original,
            "the merged image answers node {node}'s workload as the original does"
        );
    }

    let only_a = Image(format!(
        "cimplifier-test/merge-only-a-{}:slim",
        std::process::id()
    ));
    stdout_of(&node_a.ctl(&["emit", &reads.0, "--tag", &only_a.0]));
    assert!(
        !runs(&only_a.0, &["sort", "/etc/passwd"]),
        "one node's session alone does not serve the other's workload"
    );
    // The controls: the same command runs in the original image, and the
    // same image runs its own node's workload.
    assert!(runs(BASE_IMAGE, &["sort", "/etc/passwd"]));
    assert!(runs(&only_a.0, &["cat", "/etc/os-release"]));

    // Refusals name the problem.
    let same = node_a.ctl(&["merge", "--into", &reads.0, &reads.0, "from-node-b"]);
    assert_eq!(same.status.code(), Some(5));
    let one = node_a.ctl(&["merge", "--into", "x", &reads.0]);
    assert_eq!(one.status.code(), Some(2), "two sessions at least");
    let text = String::from_utf8(std::fs::read(&bundle).unwrap()).unwrap();
    let (first, rest) = text.split_once('\n').unwrap();
    let mut header: serde_json::Value = serde_json::from_str(first).unwrap();
    header["session"]["image_id"] = format!("sha256:{}", "e".repeat(64)).into();
    let other = dir.path().join("other.cimsession");
    std::fs::write(&other, format!("{header}\n{rest}")).unwrap();
    stdout_of(&node_a.ctl(&["import", other.to_str().unwrap(), "--as", "other-image"]));
    let mixed = node_a.ctl(&["merge", "--into", "mixed", &reads.0, "other-image"]);
    assert_eq!(mixed.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&mixed.stderr).contains("different images"));
    std::fs::write(&other, &text[..text.len() / 2]).unwrap();
    let cut = node_a.ctl(&["import", other.to_str().unwrap()]);
    assert_eq!(cut.status.code(), Some(2), "a cut-off bundle is refused");
}

#[test]
fn events_tails_a_session_live() {
    require_root();
    let d = Daemon::start();
    let c = Container::create(
        "events-tail",
        &[
            BASE_IMAGE,
            "/bin/sh",
            "-c",
            "while true; do cat /etc/hostname > /dev/null; sleep 0.1; done",
        ],
    );
    let mut api_observe = common::cimplifierctl()
        .args(["--socket", d.socket.to_str().unwrap(), "observe", &c.0])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    common::wait_until(20, "observing", || {
        stdout_of(&d.ctl(&["sessions"])).contains("observing")
    });
    let mut tail = common::cimplifierctl()
        .args([
            "--socket",
            d.socket.to_str().unwrap(),
            "events",
            "--session",
            &c.0,
            "--exe",
            "/usr/bin/cat",
            "--kind",
            "openat",
            "--json",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Ctrl-C once it has printed six events.
    let stdout = tail.stdout.take().unwrap();
    let (seen, printed) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut lines = Vec::new();
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            lines.push(line);
            let _ = seen.send(());
        }
        lines
    });
    for _ in 0..6 {
        printed
            .recv_timeout(Duration::from_secs(20))
            .expect("the tail prints the container's events");
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(tail.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    assert!(
        tail.wait().unwrap().success(),
        "Ctrl-C ends the tail cleanly"
    );
    let lines: Vec<serde_json::Value> = reader
        .join()
        .unwrap()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.len() > 5, "{lines:?}");
    for l in &lines {
        assert_eq!(l["session"], c.0.as_str());
        assert_eq!(l["executable"], "/usr/bin/cat");
        assert_eq!(l["syscall"], "openat");
    }
    assert!(
        lines
            .iter()
            .any(|l| l["paths"][0]["path"] == "/etc/hostname")
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(api_observe.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    assert!(api_observe.wait().unwrap().success());
    docker(&["rm", "-f", &c.0]);
}
