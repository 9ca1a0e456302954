//! Podman through its Docker-compatible API (`podman system service`),
//! with real eBPF: a container podman created is observed from its first
//! exec, emitted into podman, and the slim image passes `verify` hardened
//! through every lifecycle step. Needs root and podman (`cargo xtask setup`
//! installs it).
//!
//! Podman runs with a containers.conf of the test's own: no default
//! ulimits (these machines lack CAP_SYS_RESOURCE, so any setrlimit above
//! the limits fails), runc (crun refuses hybrid cgroup hosts), the
//! cgroupfs manager and file events (no systemd, no journald here).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cimplifier::trace::{Event, EventKind};
use common::{Daemon, cimplifierctl, require_root, session_json, stdout_of, touches, wait_until};
use serde_json::Value;

const CONF: &str = "[containers]\ndefault_ulimits = []\n[engine]\nruntime = \"runc\"\n\
                    cgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n";
const FETCH: &str = r#"curl -fsS -o /dev/null "http://$CIMPLIFIER_TARGET/""#;

/// `podman system service` on a socket of its own, killed on drop, with
/// what the test made in podman removed.
struct Podman {
    service: Child,
    conf: PathBuf,
    socket: PathBuf,
    made: Vec<(&'static str, String)>,
    _dir: tempfile::TempDir,
}

impl Podman {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("containers.conf");
        std::fs::write(&conf, CONF).unwrap();
        let socket = dir.path().join("podman.sock");
        let service = Command::new("podman")
            .env("CONTAINERS_CONF", &conf)
            .args(["system", "service", "--time=0"])
            .arg(format!("unix://{}", socket.display()))
            .stdout(Stdio::null())
            .spawn()
            .expect("podman (`cargo xtask setup` installs it)");
        let start = Instant::now();
        while !socket.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "podman's socket never came"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Self {
            service,
            conf,
            socket,
            made: Vec::new(),
            _dir: dir,
        }
    }

    fn host(&self) -> PathBuf {
        PathBuf::from(format!("unix://{}", self.socket.display()))
    }

    fn podman(&self, args: &[&str]) -> String {
        let out = Command::new("podman")
            .env("CONTAINERS_CONF", &self.conf)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "podman {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// cimplifierctl against `d`, talking to podman where it reads images
    /// or makes containers itself (verify).
    fn ctl(&self, d: &Daemon, args: &[&str]) -> (Option<i32>, Value, String) {
        let out = cimplifierctl()
            .env("DOCKER_HOST", self.host())
            .arg("--socket")
            .arg(&d.socket)
            .args(args)
            .output()
            .unwrap();
        let json = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        let said = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.code(), json, said)
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        for (kind, name) in self.made.iter().rev() {
            let args: &[&str] = match *kind {
                "container" => &["rm", "-f", "-v", name],
                _ => &["rmi", "-f", name],
            };
            let _ = Command::new("podman")
                .env("CONTAINERS_CONF", &self.conf)
                .args(args)
                .output();
        }
        let _ = self.service.kill();
        let _ = self.service.wait();
    }
}

/// Loads a test image from Docker into podman.
fn load(podman: &Podman, image: &str) {
    let mut save = Command::new("docker")
        .args(["save", image])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = Command::new("podman")
        .env("CONTAINERS_CONF", &podman.conf)
        .arg("load")
        .stdin(save.stdout.take().unwrap())
        .output()
        .unwrap();
    assert!(save.wait().unwrap().success(), "docker save {image}");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn nginx_on_podman_is_observed_from_its_first_exec_emitted_and_verified_hardened() {
    require_root();
    let mut podman = Podman::start();
    load(&podman, "cimplifier-test/nginx:latest");
    let host = podman.host();
    let d = Daemon::start_with_env(&[], &[("DOCKER_HOST", Path::new(&host))]);
    let pid = std::process::id();
    let name = format!("cimplifier-podman-nginx-{pid}");
    let tag = format!("cimplifier-e2e/podman-nginx{pid}:slim");
    podman.made.push(("image", format!("localhost/{tag}")));
    podman.made.push(("container", name.clone()));
    podman.podman(&[
        "create",
        "--name",
        &name,
        "localhost/cimplifier-test/nginx:latest",
    ]);

    // From its first exec: the cgroup podman will use is made and watched
    // ahead (`libpod_parent/libpod-<id>`).
    let (code, info, said) = podman.ctl(&d, &["observe", &name, "--exec", FETCH, "--json"]);
    assert_eq!(code, Some(0), "{said}");
    assert_eq!(info["complete"], true, "{info}");
    assert_eq!(info["from_first_exec"], true, "{info}");
    assert!(
        info["workload"]["passes"]
            .as_array()
            .is_some_and(|p| p.len() == 4 && p.iter().all(|p| p["exit_code"] == 0)),
        "the workload after each lifecycle step: {info}"
    );

    let (code, report, said) = podman.ctl(&d, &["emit", &name, "--tag", &tag, "--json"]);
    assert_eq!(code, Some(0), "{said}");
    assert!(
        report["privileges"]["capabilities"]["NET_BIND_SERVICE"].is_array(),
        "{}",
        report["privileges"]
    );
    let listed = podman.podman(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    assert!(listed.contains(&format!("localhost/{tag}")), "{listed}");

    // Run hardened by verify (capabilities, the seccomp profile as a file,
    // read-only root with its tmpfs) through restart, kill-start, reload.
    let (code, verified, said) = podman.ctl(
        &d,
        &[
            "verify",
            &name,
            "--image",
            &tag,
            "--workload",
            FETCH,
            "--json",
        ],
    );
    assert_eq!(code, Some(0), "{said}");
    assert_eq!(verified["verified"], true, "{verified}");
    assert_eq!(verified["regressions"], serde_json::json!([]), "{verified}");
    assert_eq!(
        verified["workload"]["passes"].as_array().map(Vec::len),
        Some(4),
        "{verified}"
    );
}

/// The shell and `cat` of the flag image in two partitions on Podman: the
/// plan `emit --policy` loads into Podman is started by `up` and passes
/// `verify` (the shell's `cat` runs in the reader's partition by RPE, over
/// a socket in a shared volume); `down --volumes` removes it.
#[test]
fn a_partitioned_plan_runs_on_podman_and_passes_verify() {
    require_root();
    let mut podman = Podman::start();
    let pid = std::process::id();
    let source = format!("cimplifier-e2e/podman-flag{pid}:latest");
    common::flag_image("podman-flag-base", &source);
    load(&podman, &source);
    let _ = Command::new("docker").args(["rmi", &source]).output();
    podman.made.push(("image", format!("localhost/{source}")));
    let host = podman.host();
    let d = Daemon::start_with_env(&[], &[("DOCKER_HOST", Path::new(&host))]);
    let name = format!("cimplifier-podman-split-{pid}");
    podman.made.push(("container", name.clone()));
    podman.podman(&["create", "--name", &name, &format!("localhost/{source}")]);
    let (code, info, said) = podman.ctl(&d, &["observe", &name, "--json"]);
    assert_eq!(code, Some(0), "{said}");
    assert_eq!(info["complete"], true, "{info}");

    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, common::SHELL_AND_READER_POLICY).unwrap();
    let out = dir.path().join("split");
    let tag = format!("cimplifier-e2e/podman-split{pid}");
    let (code, report, said) = podman.ctl(
        &d,
        &[
            "emit",
            &name,
            "--policy",
            policy.to_str().unwrap(),
            "--tag",
            &tag,
            "--out",
            out.to_str().unwrap(),
            "--json",
        ],
    );
    assert_eq!(code, Some(0), "{said}");
    for image in report["partitions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["image"].as_str())
    {
        podman.made.push(("image", format!("localhost/{image}")));
    }
    let (code, verified, said) = podman.ctl(
        &d,
        &[
            "verify",
            &name,
            "--plan",
            out.to_str().unwrap(),
            "--workload",
            "sleep 3",
            "--json",
        ],
    );
    assert_eq!(code, Some(0), "{said}");
    assert_eq!(verified["verified"], true, "{verified}");
    let (code, _, said) = podman.ctl(&d, &["down", out.to_str().unwrap(), "--volumes"]);
    assert_eq!(code, Some(0), "{said}");
}

fn first_exec(events: &[Event]) -> Option<String> {
    events.iter().find_map(|e| match &e.kind {
        EventKind::Syscall(s) if s.syscall == "execve" && s.succeeded() => {
            s.paths.first().map(|p| p.raw.clone())
        }
        _ => None,
    })
}

/// Containers `podman run -d` creates and starts at once, labelled
/// `io.cimplifier.observe=true` or matching a selector given to `observe
/// --label`, are observed from their first exec by a daemon reaching
/// Podman through its Docker-compatible API; an unlabelled one is left
/// alone. Podman's `create` event reaches the daemon about a second after
/// the container started (it reads its file event log), so what starts
/// below Podman's parent cgroup (`libpod_parent/libpod-<id>`) is held until
/// its container's labels are known.
#[test]
fn labelled_containers_podman_runs_are_observed_from_their_first_exec() {
    require_root();
    let mut podman = Podman::start();
    load(&podman, "cimplifier-test/nginx:latest");
    let host = podman.host();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let metrics_addr = format!("127.0.0.1:{port}");
    let d = Daemon::start_with_env(
        &["--watch-labels", "--metrics-addr", &metrics_addr],
        &[("DOCKER_HOST", Path::new(&host))],
    );
    let pid = std::process::id();
    let selector = format!("cimplifier-test-app=podman-{pid}");
    let (code, _, said) = podman.ctl(&d, &["observe", "--label", &selector]);
    assert_eq!(code, Some(0), "{said}");
    let run = |name: &str, label: &str, script: &str| {
        let out = Command::new("podman")
            .env("CONTAINERS_CONF", &podman.conf)
            .args(["run", "-d", "--name", name, "--label", label])
            .args([
                "localhost/cimplifier-test/nginx:latest",
                "/bin/sh",
                "-c",
                script,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "podman run {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };

    // An unlabelled, busy container: once the daemon holds what starts
    // below Podman's parent, it is found no one's and excluded, which
    // also says the daemon is ready for the labelled ones.
    let busy = format!("cimplifier-podman-label-none-{pid}");
    podman.made.push(("container", busy.clone()));
    run(
        &busy,
        "app=other",
        "while true; do cat /etc/hostname > /dev/null; sleep 0.1; done",
    );
    wait_until(60, "the unlabelled container to be excluded", || {
        let out = Command::new("curl")
            .args(["-sf", &format!("http://{metrics_addr}/metrics")])
            .output()
            .unwrap();
        stdout_of(&out)
            .lines()
            .find_map(|l| {
                l.strip_prefix("cimplifier_excluded_cgroups_total ")?
                    .parse()
                    .ok()
            })
            .is_some_and(|n: u64| n >= 1)
    });

    let runs = [
        ("podman-label-a", "io.cimplifier.observe=true"),
        ("podman-label-b", "io.cimplifier.observe=true"),
        ("podman-label-sel", selector.as_str()),
    ];
    let names: Vec<String> = runs
        .iter()
        .map(|(tag, _)| format!("cimplifier-{tag}-{pid}"))
        .collect();
    for name in &names {
        podman.made.push(("container", name.clone()));
    }
    std::thread::scope(|s| {
        for ((_, label), name) in runs.iter().zip(&names) {
            s.spawn(|| run(name, label, "cat /etc/os-release > /dev/null; sleep 2"));
        }
    });
    for name in &names {
        wait_until(60, &format!("session {name} to close"), || {
            let all = stdout_of(&d.ctl(&["sessions", "--json"]));
            all.contains(name.as_str()) && session_json(&d, name)["state"] == "closed"
        });
        let s = session_json(&d, name);
        assert_eq!(s["from_first_exec"], true, "{name}: {s}");
        assert_eq!(s["complete"], true, "{name}: {s}");
        assert_eq!(s["end"], "container_died", "{name}: {s}");
        let (_, events) = d.session_events(name);
        assert_eq!(
            first_exec(&events).as_deref(),
            Some("/bin/sh"),
            "{name}: the entrypoint; {s}\n{}",
            common::dump(&events, 40)
        );
        assert!(touches(&events, "/etc/os-release"), "{name}");
    }
    let all = stdout_of(&d.ctl(&["sessions"]));
    assert!(!all.contains(&busy), "{all}");

    // Emitted into Podman, the summary names Podman, not Docker.
    let tag = format!("cimplifier-e2e/podman-label{pid}:slim");
    podman.made.push(("image", format!("localhost/{tag}")));
    let (code, _, said) = podman.ctl(&d, &["emit", &names[0], "--tag", &tag]);
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("as Podman sizes it"), "{said}");
    assert!(
        said.contains("run it as the container ran: podman run"),
        "{said}"
    );
    assert!(!said.contains("docker run"), "{said}");
    assert!(!said.contains("docker create"), "{said}");
    // Podman's own variables are left to Podman, not baked into the image.
    assert!(
        said.contains("HOSTNAME: set by the engine itself, not carried"),
        "{said}"
    );
}
