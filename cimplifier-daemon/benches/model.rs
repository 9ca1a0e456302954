//! The model stage's speed and memory, on real recorded traces.
//!
//! `cargo xtask bench-model` (root, after `cargo xtask setup`). Prints
//! figures; asserts nothing about time.
//! 1. Records a file-walking workload with the eBPF tracer until the log
//!    holds at least 1M events, then replays it: events/s through the JSON
//!    decoder, into the model, and both streamed line by line, with the peak
//!    heap per million events (counted by this binary's allocator).
//! 2. Records an nginx container (start-up and 300 requests) and a redis
//!    container (start-up and redis-benchmark), and times building each
//!    model and computing every executable's R and W sets (the paper: 5.5 s
//!    per container).

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cimplifier::model::{Exe, Model};
use cimplifier::trace::TracerConfig;
use cimplifier::trace::cgroup::cgroup2_mount;
use cimplifier::trace::log::{EventLog, LogLine};
use cimplifier::trace::record::{RecordOptions, TraceTarget, record};

/// Counts live heap bytes and their peak.
struct CountingAlloc;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = LIVE.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// Resets the peak to what is live now and returns that baseline.
fn reset_peak() -> usize {
    let live = LIVE.load(Ordering::Relaxed);
    PEAK.store(live, Ordering::Relaxed);
    live
}

const MIN_EVENTS: u64 = 1_000_000;
const WALK_PASSES: u32 = 2;
const NGINX_IMAGE: &str = "cimplifier-test/nginx:latest";
const REDIS_IMAGE: &str = "cimplifier-test/redis:latest";

fn main() -> Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        bail!(
            "the model benchmark records traces with eBPF: run it as root (`cargo xtask bench-model`)"
        );
    }
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-model");
    std::fs::create_dir_all(&out)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;

    let big = out.join("walk.jsonl");
    println!("## replaying a recorded log of >= {MIN_EVENTS} events");
    rt.block_on(record_walk(&big))?;
    replay(&big)?;

    println!();
    println!("## R/W sets of whole-container traces (start-up and workload)");
    println!(
        "{:<8} {:>8} {:>6} {:>9} {:>12} {:>12} {:>12}",
        "trace", "events", "exes", "resources", "build model", "all R and W", "per exe"
    );
    for (name, image) in [("nginx", NGINX_IMAGE), ("redis", REDIS_IMAGE)] {
        let log = out.join(format!("{name}.jsonl"));
        rt.block_on(record_container(name, image, &log))?;
        container_figures(name, &log)?;
    }
    Ok(())
}

struct Cgroup(PathBuf);

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Records `python3` stat'ing and opening every file under /usr, a few
/// times over, so the log is large and its names are varied.
async fn record_walk(log: &Path) -> Result<()> {
    let cg =
        Cgroup(cgroup2_mount()?.join(format!("cimplifier-bench-model-{}", std::process::id())));
    std::fs::create_dir(&cg.0).with_context(|| format!("creating {}", cg.0.display()))?;
    let walker = format!(
        "import os\n\
         for _ in range({WALK_PASSES}):\n\
         \x20   for root, dirs, files in os.walk('/usr'):\n\
         \x20       for f in files:\n\
         \x20           p = os.path.join(root, f)\n\
         \x20           try:\n\
         \x20               os.stat(p)\n\
         \x20               open(p, 'rb').close()\n\
         \x20           except OSError:\n\
         \x20               pass\n"
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let recorder = tokio::spawn(record(
        options(TraceTarget::cgroup(cg.0.clone()), log),
        async move {
            let _ = stop_rx.await;
        },
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec /usr/bin/python3 -c \"$0\"",
        cg.0.display()
    );
    let status = tokio::task::spawn_blocking(move || {
        Command::new("/bin/sh")
            .arg("-c")
            .arg(script)
            .arg(walker)
            .status()
    })
    .await??;
    if !status.success() {
        bail!("the file-walking workload failed: {status}");
    }
    let _ = stop_tx.send(());
    let summary = recorder.await??;
    println!(
        "recorded {} events in {:.1} s, lost {}",
        summary.events,
        summary.duration_ms as f64 / 1000.0,
        summary.loss.lost()
    );
    if summary.events < MIN_EVENTS {
        bail!("only {} events recorded; raise WALK_PASSES", summary.events);
    }
    Ok(())
}

fn options(target: TraceTarget, log: &Path) -> RecordOptions {
    RecordOptions {
        target,
        output: log.to_owned(),
        duration: None,
        tracer: TracerConfig::default(),
        progress_every: Duration::from_secs(60),
    }
}

fn rate(n: u64, d: Duration) -> String {
    format!("{:>10.0} events/s", n as f64 / d.as_secs_f64())
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn replay(log: &Path) -> Result<()> {
    let size = std::fs::metadata(log)?.len();
    // Warm the page cache so the first figure is not a disk read.
    std::fs::read(log)?;

    let start = Instant::now();
    let parsed = EventLog::read(log)?;
    let parse = start.elapsed();
    let n = parsed.events.len() as u64;
    println!(
        "log: {n} events, {:.0} MiB of JSON lines, complete: {}",
        size as f64 / (1 << 20) as f64,
        parsed.is_complete()
    );
    println!(
        "decode JSON only            {}  ({:.2} s)",
        rate(n, parse),
        parse.as_secs_f64()
    );

    let base = reset_peak();
    let start = Instant::now();
    let model = Model::from_events(&parsed.events);
    let apply = start.elapsed();
    let model_peak = PEAK.load(Ordering::Relaxed) - base;
    println!(
        "into the model only         {}  ({:.2} s; target 1M/s on one core: {:.2}x)",
        rate(n, apply),
        apply.as_secs_f64(),
        n as f64 / apply.as_secs_f64() / 1e6
    );
    let (exes, resources) = shape(&model);
    println!("model: {exes} executables, {resources} distinct resources used");
    drop(model);
    drop(parsed);

    // What a daemon replaying or receiving events holds: one event at a time.
    let base = reset_peak();
    let start = Instant::now();
    let mut model = Model::new();
    let mut line = String::new();
    let mut reader = std::io::BufReader::new(std::fs::File::open(log)?);
    let mut streamed = 0u64;
    while reader.read_line(&mut line)? > 0 {
        if let LogLine::Event(e) = serde_json::from_str::<LogLine>(&line)? {
            model.apply(&e);
            streamed += 1;
        }
        line.clear();
    }
    let both = start.elapsed();
    let stream_peak = PEAK.load(Ordering::Relaxed) - base;
    println!(
        "decode + model, streamed    {}  ({:.2} s)",
        rate(streamed, both),
        both.as_secs_f64()
    );
    let per_m = |bytes: usize| mib(bytes) / (n as f64 / 1e6);
    println!(
        "peak heap of the model       {:>8.1} MiB ({:.1} MiB per million events)",
        mib(model_peak),
        per_m(model_peak)
    );
    println!(
        "peak heap, streamed replay   {:>8.1} MiB ({:.1} MiB per million events)",
        mib(stream_peak),
        per_m(stream_peak)
    );
    Ok(())
}

fn shape(model: &Model) -> (usize, usize) {
    let exes: Vec<Exe> = model.executables().into_iter().collect();
    (exes.len(), model.uses(&exes).len())
}

/// Records the start-up and workload of a fresh container of `image`,
/// watching Docker's parent cgroup so the entrypoint's exec is included.
async fn record_container(name: &str, image: &str, log: &Path) -> Result<()> {
    let parent = cgroup2_mount()?.join("docker");
    if !parent.is_dir() {
        std::fs::create_dir(&parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let container = format!("cimplifier-bench-model-{name}-{}", std::process::id());
    let _ = Command::new("docker")
        .args(["rm", "-f", &container])
        .output();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let recorder = tokio::spawn(record(
        options(TraceTarget::cgroup(parent), log),
        async move {
            let _ = stop_rx.await;
        },
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (name, image, c) = (name.to_owned(), image.to_owned(), container.clone());
    let work =
        tokio::task::spawn_blocking(move || run_container_workload(&name, &image, &c)).await?;
    let _ = Command::new("docker")
        .args(["rm", "-f", &container])
        .output();
    let _ = stop_tx.send(());
    let summary = recorder.await??;
    work?;
    if summary.loss.lost() > 0 {
        println!(
            "warning: {} events lost in {}",
            summary.loss.lost(),
            log.display()
        );
    }
    Ok(())
}

fn docker(args: &[&str]) -> Result<String> {
    let out = Command::new("docker").args(args).output()?;
    if !out.status.success() {
        bail!(
            "docker {args:?} failed (run `cargo xtask images`?): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

fn run_container_workload(name: &str, image: &str, container: &str) -> Result<()> {
    let inner = if name == "nginx" {
        "80/tcp"
    } else {
        "6379/tcp"
    };
    let inner_port = inner.trim_end_matches("/tcp");
    docker(&[
        "run",
        "-d",
        "--name",
        container,
        "-p",
        &format!("127.0.0.1::{inner_port}"),
        image,
    ])?;
    let port = docker(&["port", container, inner])?;
    let port = port
        .lines()
        .next()
        .context("no published port")?
        .rsplit(':')
        .next()
        .unwrap()
        .to_owned();
    for _ in 0..100 {
        let ready = if name == "nginx" {
            Command::new("curl")
                .args([
                    "-sf",
                    "-o",
                    "/dev/null",
                    &format!("http://127.0.0.1:{port}/"),
                ])
                .status()?
                .success()
        } else {
            String::from_utf8_lossy(
                &Command::new("redis-cli")
                    .args(["-p", &port, "ping"])
                    .output()?
                    .stdout,
            )
            .trim()
                == "PONG"
        };
        if ready {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if name == "nginx" {
        for i in 0..300 {
            let path = if i % 3 == 0 { "/missing" } else { "/" };
            Command::new("curl")
                .args([
                    "-s",
                    "-o",
                    "/dev/null",
                    &format!("http://127.0.0.1:{port}{path}"),
                ])
                .status()?;
        }
    } else {
        let status = Command::new("redis-benchmark")
            .args(["-p", &port, "-n", "20000", "-t", "set,get,lpush,lpop", "-q"])
            .stdout(std::process::Stdio::null())
            .status()?;
        if !status.success() {
            bail!("redis-benchmark failed");
        }
    }
    docker(&["stop", "-t", "2", container])?;
    Ok(())
}

fn container_figures(name: &str, log: &Path) -> Result<()> {
    let parsed = EventLog::read(log)?;
    let start = Instant::now();
    let model = Model::from_events(&parsed.events);
    let build = start.elapsed();
    let exes: Vec<Exe> = model.executables().into_iter().collect();
    let start = Instant::now();
    let mut total = 0usize;
    for exe in &exes {
        let one = std::slice::from_ref(exe);
        total += model.reads(one).len() + model.writes(one).len();
    }
    total += model.reads(&exes).len() + model.writes(&exes).len();
    let sets = start.elapsed();
    let (_, resources) = shape(&model);
    println!(
        "{name:<8} {:>8} {:>6} {:>9} {:>9.2} ms {:>9.2} ms {:>9.3} ms   ({total} set entries)",
        parsed.events.len(),
        exes.len(),
        resources,
        build.as_secs_f64() * 1e3,
        sets.as_secs_f64() * 1e3,
        sets.as_secs_f64() * 1e3 / exes.len().max(1) as f64,
    );
    Ok(())
}
