//! `cargo xtask demo-partition`: the paper's WordPress case study as a user
//! would run it. Observe cimplifier-test/wordpress (nginx, php-fpm, mariadb
//! and supervisord in one container) while the workload runs, show the
//! plan, emit one image per partition, start them with `cimplifierctl up`,
//! run the same workload against the partitioned system, and stop it.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::demo::{ctl_at, start_daemon};
use crate::util::{self, Step, cmd};

const CONTAINER: &str = "cimplifier-demo-wordpress";
const TAG: &str = "cimplifier-demo/wp";
const STATE_DIR: &str = "target/demo-partition-state";
const SOCKET: &str = "target/demo-partition-state/cimplifier.sock";
const OUT_DIR: &str = "target/demo-wp-split";
const POLICY: &str = "tests/workloads/wordpress-policy.toml";
const WORKLOAD: &str = "tests/workloads/wordpress.sh";

/// Stops what the demo started however it ends; the emitted images stay.
struct Cleanup<'a> {
    root: &'a Path,
    observer: Option<Child>,
    daemon: Option<Child>,
    up: bool,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        if self.up {
            let _ = ctl_at(self.root, SOCKET)
                .args(["down", OUT_DIR, "--volumes"])
                .status();
        }
        for mut child in [self.observer.take(), self.daemon.take()]
            .into_iter()
            .flatten()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
        println!("+ docker rm -f {CONTAINER}");
        let _ = cmd("docker", ["rm", "-f", "-v", CONTAINER])
            .stdout(Stdio::null())
            .status();
    }
}

fn ctl(root: &Path) -> Command {
    ctl_at(root, SOCKET)
}

fn wait_for_wordpress(ip: &str) -> Result<()> {
    let url = format!("http://{ip}/wp-admin/install.php");
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let res = util::probe(&mut cmd(
            "curl",
            [
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "2",
                &url,
            ],
        ))?;
        if res.stdout == b"200" {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("WordPress did not answer at {url} within 90 s");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn workload(root: &Path, ip: &str) -> Result<()> {
    wait_for_wordpress(ip)?;
    util::run(
        Command::new("bash")
            .current_dir(root)
            .arg(WORKLOAD)
            .arg(format!("http://{ip}")),
    )
}

pub fn run() -> Result<()> {
    util::ensure_root("demo-partition")?;
    crate::setup::run()?;
    let root = util::repo_root();
    let _demo = Step::new("demo-partition");
    util::build_daemon_release(&root)?;

    let mut cleanup = Cleanup {
        root: &root,
        observer: None,
        daemon: None,
        up: false,
    };
    cleanup.daemon = Some(start_daemon(&root, SOCKET, STATE_DIR)?);
    // A run plan left by an earlier demo that was interrupted.
    let _ = util::probe(ctl(&root).args(["down", OUT_DIR, "--volumes"]));
    let _ = util::probe(&mut cmd("docker", ["rm", "-f", "-v", CONTAINER]))?;
    util::run(&mut cmd(
        "docker",
        [
            "create",
            "--name",
            CONTAINER,
            &crate::images::tag("wordpress"),
        ],
    ))?;

    // 1. Observe from the first exec while the workload runs.
    let mut observe = ctl(&root);
    observe.args(["observe", CONTAINER]);
    let line = util::display(&observe);
    println!("+ {line} &");
    cleanup.observer = Some(
        observe
            .spawn()
            .with_context(|| format!("could not start `{line}`"))?,
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let ip = loop {
        let ip = util::capture(&mut cmd(
            "docker",
            ["inspect", "-f", "{{.NetworkSettings.IPAddress}}", CONTAINER],
        ))?;
        if !ip.is_empty() {
            break ip;
        }
        if Instant::now() > deadline {
            bail!("{CONTAINER} did not start within 60 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    workload(&root, &ip)?;
    util::run(ctl(&root).args(["stop", CONTAINER]))?;
    let observer = cleanup.observer.take().expect("observer started");
    let status = observer
        .wait_with_output()
        .context("waiting for observe")?
        .status;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    util::run(&mut cmd("docker", ["rm", "-f", CONTAINER]))?;

    // 2. The plan, then the partitioned system.
    util::run(ctl(&root).args(["plan", CONTAINER, "--policy", POLICY]))?;
    util::run(ctl(&root).args([
        "emit", CONTAINER, "--policy", POLICY, "--tag", TAG, "--out", OUT_DIR,
    ]))?;
    let up = util::capture(ctl(&root).args(["up", OUT_DIR, "--json"]))?;
    cleanup.up = true;
    let up: serde_json::Value =
        serde_json::from_str(&up).context("reading `cimplifierctl up --json`")?;
    let Some(ip) = up["ip_address"].as_str() else {
        bail!("`cimplifierctl up` gave no address: {up}");
    };
    println!("the partitioned system answers at {ip}");
    util::run(&mut cmd(
        "docker",
        [
            "ps",
            "--filter",
            "label=io.cimplifier.partition",
            "--format",
            "{{.Names}}  {{.Image}}  {{.Status}}",
        ],
    ))?;

    // 3. The same workload against it.
    workload(&root, ip)?;
    println!(
        "\nthe partitioned system passed the same workload; run plan: {OUT_DIR}/docker-compose.yml, \
         report: {OUT_DIR}/partition-report.json (`cimplifierctl --socket {SOCKET} up {OUT_DIR}` starts it again)"
    );
    drop(cleanup);
    Ok(())
}
