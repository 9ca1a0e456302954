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

use common::{Daemon, cimplifierctl, require_root};
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
