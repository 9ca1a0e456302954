//! The time from an emit request to a runnable image, by phase.
//!
//! `cargo xtask bench-emit` (root, after `cargo xtask setup`). Observes an
//! nginx test container under a few requests, then emits its slim image
//! five times and prints the median of each phase: reading the image's
//! layers from the engine, planning, writing the layer and OCI blobs, and
//! loading into Docker. The baseline, measured in the same run, is the
//! engine's own `docker image save` to /dev/null: the floor for reading.
//! Asserts nothing about time.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cimplifier::emit::slim::{EmitOptions, Timings, emit};
use cimplifier::place::slim::SlimOptions;
use cimplifier::session::{Manager, ObserveOptions, Observer};
use cimplifier::store::Store;
use cimplifier::trace::TracerConfig;

const IMAGE: &str = "cimplifier-test/nginx:latest";
const ROUNDS: usize = 5;

fn main() -> Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        bail!(
            "the emit benchmark observes a container with eBPF: run it as root (`cargo xtask bench-emit`)"
        );
    }
    let state = tempfile::tempdir()?;
    let name = format!("cimplifier-bench-emit-{}", std::process::id());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let _ = Command::new("docker")
        .args(["rm", "-f", "-v", &name])
        .output();
    let created = Command::new("docker")
        .args(["create", "--name", &name, "-p", "127.0.0.1:8097:80", IMAGE])
        .stdout(Stdio::null())
        .status()?;
    if !created.success() {
        bail!("docker create {IMAGE} failed: run `cargo xtask images`");
    }
    let result = rt.block_on(run(&name, state.path()));
    let _ = Command::new("docker")
        .args(["rm", "-f", "-v", &name])
        .output();
    let _ = Command::new("docker")
        .args(["rmi", "cimplifier-bench/nginx:slim"])
        .output();
    result
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

async fn run(name: &str, state: &Path) -> Result<()> {
    let store = std::sync::Arc::new(Store::open(state)?);
    let manager = Manager::new(Observer::start(TracerConfig::default())?, store.clone())?;
    manager
        .observe(ObserveOptions {
            container: name.to_owned(),
            ..Default::default()
        })
        .await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ok = Command::new("curl")
            .args([
                "-sf",
                "-o",
                "/dev/null",
                "--max-time",
                "1",
                "http://127.0.0.1:8097/",
            ])
            .status()?
            .success();
        if ok {
            break;
        }
        if Instant::now() > deadline {
            bail!("nginx never answered");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for path in ["/", "/about.html", "/missing"] {
        Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                &format!("http://127.0.0.1:8097{path}"),
            ])
            .status()?;
    }
    let info = manager.stop(name).await?.context("the session is stored")?;
    println!(
        "observed {}: {} events, complete: {}",
        info.started.container_name,
        info.events,
        info.complete()
    );

    let opts = EmitOptions {
        session: name.to_owned(),
        tag: Some("cimplifier-bench/nginx:slim".parse().expect("a valid tag")),
        oci_archive: false,
        retag: Default::default(),
        slim: SlimOptions::with_safety_sets(),
        allow_incomplete: false,
        list_removed: false,
        explain: Vec::new(),
        push: None,
        seccomp: cimplifier::place::seccomp::SeccompMode::Enforce,
        source_auth: Default::default(),
    };
    let (mut read, mut plan, mut write, mut load, mut total, mut save) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let mut sizes = (0, 0);
    for _ in 0..ROUNDS {
        let start = Instant::now();
        let status = Command::new("docker")
            .args(["image", "save", IMAGE])
            .stdout(Stdio::null())
            .status()
            .context("docker image save")?;
        if !status.success() {
            bail!("docker image save failed");
        }
        save.push(start.elapsed().as_millis() as u64);
        let start = Instant::now();
        let report = emit(&store, &opts, &|_| {}, &|_, _, _| {}).await?.report;
        total.push(start.elapsed().as_millis() as u64);
        let Timings {
            read_image_ms,
            plan_ms,
            write_ms,
            load_ms,
        } = report.timings;
        read.push(read_image_ms);
        plan.push(plan_ms);
        write.push(write_ms);
        load.push(load_ms);
        sizes = (report.source_image_bytes, report.slim_image_bytes);
    }
    let save = median(save);
    println!(
        "## emit {IMAGE} -> slim ({} -> {} bytes), median of {ROUNDS} rounds",
        sizes.0, sizes.1
    );
    for (phase, ms) in [
        ("read the image's layers", median(read)),
        ("plan (replay + place)", median(plan)),
        ("write layer + OCI blobs", median(write)),
        ("load into Docker", median(load)),
        ("total, request to runnable image", median(total)),
    ] {
        println!(
            "{phase:<34} {ms:>6} ms  {:.2}x docker image save",
            ms as f64 / save as f64
        );
    }
    println!(
        "{:<34} {save:>6} ms  1.00x (baseline)",
        "docker image save > /dev/null"
    );
    Ok(())
}
