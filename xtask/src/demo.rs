//! `cargo xtask demo`: the main user flow on an nginx test container.
//! Start the daemon, observe the container from its first exec while a
//! workload curls it (and again after a restart, a crash and a reload),
//! emit its slim image, verify it with the same workload, run it and make
//! the same requests, then show the sizes.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::util::{self, Step, cmd};

const CONTAINER: &str = "cimplifier-demo-nginx";
const SLIM_CONTAINER: &str = "cimplifier-demo-nginx-slim";
const SLIM_TAG: &str = "cimplifier-demo/nginx:slim";
const PORT: u16 = 8088;
const SLIM_PORT: u16 = 8089;
const STATE_DIR: &str = "target/demo-state";
const SOCKET: &str = "target/demo-state/cimplifier.sock";
const OCI_DIR: &str = "target/demo-oci";
const PATHS: [&str; 4] = ["/", "/about.html", "/missing", "/index.html"];
/// The workload `observe --exec` and `verify` run: the pages must answer,
/// the missing one with 404.
const WORKLOAD: &str = r#"for p in / /about.html /index.html; do curl -fsS -o /dev/null "http://$CIMPLIFIER_TARGET$p" || exit 1; done; test "$(curl -s -o /dev/null -w '%{http_code}' "http://$CIMPLIFIER_TARGET/missing")" = 404"#;

/// Removes the demo containers and stops the daemon however the demo ends.
struct Cleanup {
    daemon: Option<Child>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for c in [CONTAINER, SLIM_CONTAINER] {
            println!("+ docker rm -f {c}");
            let _ = cmd("docker", ["rm", "-f", "-v", c])
                .stdout(Stdio::null())
                .status();
        }
    }
}

fn ctl(root: &Path) -> Command {
    ctl_at(root, SOCKET)
}

/// The release cimplifierctl, talking to the daemon on `socket`.
pub(crate) fn ctl_at(root: &Path, socket: &str) -> Command {
    let mut c = Command::new(root.join("target/release/cimplifierctl"));
    c.current_dir(root).args(["--socket", socket]);
    c
}

/// Starts the release cimplifierd on `socket` and waits until it answers.
pub(crate) fn start_daemon(root: &Path, socket: &str, state_dir: &str) -> Result<Child> {
    let mut daemon = Command::new(root.join("target/release/cimplifierd"));
    daemon
        .current_dir(root)
        .args(["serve", "--socket", socket, "--state-dir", state_dir]);
    let line = util::display(&daemon);
    println!("+ {line} &");
    let mut child = daemon
        .spawn()
        .with_context(|| format!("could not start `{line}`"))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !util::probe(ctl_at(root, socket).arg("version"))?
        .status
        .success()
    {
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("cimplifierd did not answer on {socket} within 30 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(child)
}

/// GETs each path; returns "status bytes" per path.
fn requests(port: u16, label: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for path in PATHS {
        let url = format!("http://127.0.0.1:{port}{path}");
        let res = util::probe(&mut cmd(
            "curl",
            ["-s", "--max-time", "5", "-w", "\n%{http_code}", &url],
        ))?;
        let text = String::from_utf8_lossy(&res.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        println!("{label}: GET {url} -> {code} ({} bytes)", body.len());
        out.push(format!("{code} {body}"));
    }
    Ok(out)
}

fn wait_for_http(port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let res = util::probe(&mut cmd(
            "curl",
            [
                "-s",
                "-o",
                "/dev/null",
                "--max-time",
                "1",
                &format!("http://127.0.0.1:{port}/"),
            ],
        ))?;
        if res.status.success() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("nothing answered on 127.0.0.1:{port} within 30 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn run() -> Result<()> {
    util::ensure_root("demo")?;
    crate::setup::run()?;
    let root = util::repo_root();
    let _demo = Step::new("demo");
    util::build_daemon_release(&root)?;

    let mut cleanup = Cleanup { daemon: None };
    // 0. The daemon, on a socket of its own.
    cleanup.daemon = Some(start_daemon(&root, SOCKET, STATE_DIR)?);
    for c in [CONTAINER, SLIM_CONTAINER] {
        let _ = util::probe(&mut cmd("docker", ["rm", "-f", "-v", c]))?;
    }
    util::run(&mut cmd(
        "docker",
        [
            "create",
            "--name",
            CONTAINER,
            "-p",
            &format!("127.0.0.1:{PORT}:80"),
            &crate::images::tag("nginx"),
        ],
    ))?;

    // 1. Observe: the container is started under observation, the workload
    // runs against it, then again after each lifecycle step.
    util::run(ctl(&root).args(["observe", CONTAINER, "--exec", WORKLOAD]))?;
    wait_for_http(PORT)?;
    let original = requests(PORT, "original")?;

    // 2. Emit the slim image, with the reasons for two paths.
    util::run(ctl(&root).args([
        "emit",
        CONTAINER,
        "--tag",
        SLIM_TAG,
        "--oci-dir",
        OCI_DIR,
        "--explain",
        "/etc/nginx/nginx.conf",
        "--explain",
        "/usr/bin/apt",
    ]))?;

    // 3. Verify it: the same workload and lifecycle against the slim image,
    // observed and compared with the original session.
    util::run(ctl(&root).args([
        "verify",
        CONTAINER,
        "--image",
        SLIM_TAG,
        "--workload",
        WORKLOAD,
    ]))?;

    // 4. Run it and make the same requests.
    util::run(&mut cmd(
        "docker",
        [
            "run",
            "-d",
            "--name",
            SLIM_CONTAINER,
            "-p",
            &format!("127.0.0.1:{SLIM_PORT}:80"),
            SLIM_TAG,
        ],
    ))?;
    wait_for_http(SLIM_PORT)?;
    let slim = requests(SLIM_PORT, "slim")?;
    if slim != original {
        bail!("the slim image answered differently from the original");
    }
    println!(
        "\nthe slim image gave the same status codes and bodies for all {} requests",
        PATHS.len()
    );
    util::run(&mut cmd(
        "docker",
        [
            "images",
            "--format",
            "{{.Repository}}:{{.Tag}}  {{.Size}}",
            &crate::images::tag("nginx"),
        ],
    ))?;
    util::run(&mut cmd(
        "docker",
        [
            "images",
            "--format",
            "{{.Repository}}:{{.Tag}}  {{.Size}}",
            SLIM_TAG,
        ],
    ))?;
    println!(
        "\nsession: {STATE_DIR}/cimplifier.redb (`cimplifierctl --socket {SOCKET} sessions`, `report {CONTAINER}`, `export {CONTAINER} -o FILE`); audit report: {STATE_DIR}/emit-reports/{CONTAINER}.json; OCI layout: {OCI_DIR}"
    );
    drop(cleanup);
    Ok(())
}
