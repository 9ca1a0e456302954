//! `cargo xtask demo`: trace an nginx test container while curling it, then
//! report the model of what it used.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::util::{self, Step, cmd};

const CONTAINER: &str = "cimplifier-demo-nginx";
const PORT: u16 = 8088;
const TRACE: &str = "target/demo-trace.jsonl";
const MODEL_JSON: &str = "target/demo-model.json";

/// Removes the demo container (and stops a still-running tracer) however the demo ends.
struct Cleanup {
    tracer: Option<Child>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(mut child) = self.tracer.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        println!("+ docker rm -f {CONTAINER}");
        let _ = cmd("docker", ["rm", "-f", CONTAINER])
            .stdout(Stdio::null())
            .status();
    }
}

pub fn run() -> Result<()> {
    util::ensure_root("demo")?;
    crate::setup::run()?;
    let root = util::repo_root();
    let _demo = Step::new("demo");

    // Build first, so that the tracer starts at once and the requests below
    // land inside its 10 s window.
    util::run(Command::new(util::cargo()).current_dir(&root).args([
        "build",
        "--release",
        "-p",
        "cimplifier-daemon",
        "--bin",
        "cimplifierd",
        "--bin",
        "cimplifierctl",
    ]))?;

    let _ = util::probe(&mut cmd("docker", ["rm", "-f", CONTAINER]))?;
    let mut cleanup = Cleanup { tracer: None };
    util::run(&mut cmd(
        "docker",
        [
            "run",
            "-d",
            "--name",
            CONTAINER,
            "-p",
            &format!("127.0.0.1:{PORT}:80"),
            &crate::images::tag("nginx"),
        ],
    ))?;

    let trace_path = root.join(TRACE);
    if let Some(dir) = trace_path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut tracer = Command::new(util::cargo());
    tracer.current_dir(&root).args([
        "run",
        "--release",
        "-p",
        "cimplifier-daemon",
        "--bin",
        "cimplifierd",
        "--",
        "trace",
        "--container",
        CONTAINER,
        "--output",
        TRACE,
        "--duration",
        "10s",
    ]);
    let tracer_line = util::display(&tracer);
    println!("+ {tracer_line} &");
    cleanup.tracer = Some(
        tracer
            .spawn()
            .with_context(|| format!("could not start `{tracer_line}`"))?,
    );

    std::thread::sleep(Duration::from_secs(3));
    for round in 1..=3 {
        for path in ["/", "/missing"] {
            let url = format!("http://127.0.0.1:{PORT}{path}");
            let out = util::probe(&mut cmd(
                "curl",
                [
                    "-s",
                    "-o",
                    "/dev/null",
                    "--max-time",
                    "5",
                    "-w",
                    "%{http_code}",
                    &url,
                ],
            ))?;
            println!(
                "request {round}: GET {url} -> {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }

    println!("waiting for the trace to finish ...");
    let mut child = cleanup.tracer.take().expect("tracer started");
    let status = child
        .wait()
        .with_context(|| format!("waiting for `{tracer_line}`"))?;
    if !status.success() {
        bail!("`{tracer_line}` failed ({status})");
    }

    // The model of the trace, against the running container's own tree so
    // symlink chains (merged /usr) are followed.
    let pid = util::probe(&mut cmd(
        "docker",
        ["inspect", "-f", "{{.State.Pid}}", CONTAINER],
    ))?;
    let root_dir = format!("/proc/{}/root", String::from_utf8_lossy(&pid.stdout).trim());
    let json = root.join(MODEL_JSON);
    for extra in [None, Some("--json")] {
        let mut analyze = Command::new(root.join("target/release/cimplifierctl"));
        analyze
            .current_dir(&root)
            .args(["analyze", "--events", TRACE, "--root", &root_dir])
            .args(extra);
        match extra {
            None => util::run(&mut analyze)?,
            Some(_) => {
                let out = util::probe(&mut analyze)?;
                if !out.status.success() {
                    bail!("{}", String::from_utf8_lossy(&out.stderr));
                }
                std::fs::write(&json, &out.stdout)
                    .with_context(|| format!("writing {}", json.display()))?;
            }
        }
    }
    println!(
        "\nThe event log is {TRACE}; the whole model, as JSON (docs/model-json.md), is {MODEL_JSON}."
    );
    Ok(())
}
