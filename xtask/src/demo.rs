//! `cargo xtask demo`: trace an nginx test container while curling it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::util::{self, Step, cmd};

const CONTAINER: &str = "cimplifier-demo-nginx";
const PORT: u16 = 8088;
const TRACE: &str = "target/demo-trace.jsonl";
const SHOW_LINES: usize = 10;

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
    summarise(&trace_path)
}

/// A short human summary of the event log: what nginx opened and ran.
fn summarise(path: &Path) -> Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut syscalls: BTreeMap<String, u64> = BTreeMap::new();
    let mut opened: BTreeSet<String> = BTreeSet::new();
    let mut failed: BTreeSet<String> = BTreeSet::new();
    let mut complete = None;
    for (i, line) in text.lines().enumerate() {
        let v: Value = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not JSON", path.display(), i + 1))?;
        match v["record"].as_str() {
            Some("summary") => complete = Some(v["complete"] == true),
            Some("event") if v["event"] == "syscall" => {
                let name = v["syscall"].as_str().unwrap_or("?").to_owned();
                let ok = v["ret"].as_i64().is_some_and(|r| r >= 0);
                for p in v["paths"].as_array().into_iter().flatten() {
                    if let Some(path) = p["path"].as_str() {
                        let entry =
                            format!("{path}  ({name} by {})", v["comm"].as_str().unwrap_or("?"));
                        if ok {
                            opened.insert(entry);
                        } else {
                            failed.insert(entry);
                        }
                    }
                }
                *syscalls.entry(name).or_default() += 1;
            }
            _ => {}
        }
    }
    println!("\n{}: {} lines", path.display(), text.lines().count());
    let counts: Vec<String> = syscalls.iter().map(|(k, v)| format!("{k} {v}")).collect();
    println!("syscalls seen: {}", counts.join(", "));
    for (title, set) in [
        ("names used successfully", &opened),
        ("names looked up and not found (or refused)", &failed),
    ] {
        println!("\n{title}: {}", set.len());
        for entry in set.iter().take(SHOW_LINES) {
            println!("  {entry}");
        }
        if set.len() > SHOW_LINES {
            println!("  ... and {} more", set.len() - SHOW_LINES);
        }
    }
    match complete {
        Some(true) => println!("\nthe trace is complete: no events were lost"),
        Some(false) => {
            println!("\nthe trace is INCOMPLETE: events were lost (see the summary line)")
        }
        None => println!("\nthe log has no summary line: the tracer did not finish"),
    }
    Ok(())
}
