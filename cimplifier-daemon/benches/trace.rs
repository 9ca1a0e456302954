//! Tracer overhead, measured against baselines taken in the same run.
//!
//! `cargo xtask bench-trace` (root, after `cargo xtask setup`). Prints figures
//! and ratios; asserts nothing about time. Two workloads, each against its
//! untraced baseline:
//! - a file-syscall loop (stat/open/close over 100 files): the tracer idle,
//!   an unwatched bystander (per-syscall hooks, the default, and
//!   `--hooks every-syscall`), the floors an eBPF tool cannot go below on this
//!   kernel (bpftrace's empty programs on the raw and on the per-syscall
//!   tracepoints, entry and exit, and exit only as cimplifier hooks the
//!   loop's calls; one that counts opens, and one that keys each name in a
//!   map, the least an in-kernel dedup does), traced by cimplifier in both
//!   hook modes (first pass, then the same files again) and with every
//!   call sent (`--no-kernel-fold`: the event rate and loss at full
//!   speed), the time the hooks take to attach, and `strace -f`;
//! - redis-benchmark against a redis-server container (read/write-heavy):
//!   unwatched bystander and traced in both hook modes, bpftrace counting
//!   opens, and `strace -f`.
//!
//! Every figure but strace's is the median of several rounds.
//! `CIMPLIFIER_BENCH_SECTIONS=redis` (a comma-separated subset of `loop`,
//! `redis`, `sizes`) runs only those sections, e.g. to measure one again
//! on a quieter machine.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cimplifier::trace::cgroup::cgroup2_mount;
use cimplifier::trace::loader::HookMode;
use cimplifier::trace::{EventStream, Tracer, TracerConfig};

const LOOP_ITERATIONS: usize = 200_000;
const LOOP_FILES: usize = 100;
const REDIS_IMAGE: &str = "cimplifier-test/redis:latest";
const REDIS_REQUESTS: &str = "100000";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    // Child mode: the syscall loop itself, run inside a cgroup.
    if args.get(1).map(String::as_str) == Some("--syscall-loop") {
        return syscall_loop(Path::new(&args[2]));
    }
    if !nix::unistd::Uid::effective().is_root() {
        bail!(
            "the trace benchmark loads eBPF programs: run it as root (`cargo xtask bench-trace`)"
        );
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run())
}

/// stat + open + close over LOOP_FILES files, LOOP_ITERATIONS times: 3 traced
/// syscalls per iteration.
fn syscall_loop(dir: &Path) -> Result<()> {
    let files: Vec<PathBuf> = (0..LOOP_FILES).map(|i| dir.join(format!("f{i}"))).collect();
    for f in &files {
        std::fs::write(f, b"x")?;
    }
    for i in 0..LOOP_ITERATIONS {
        let f = &files[i % LOOP_FILES];
        std::fs::metadata(f)?;
        drop(std::fs::File::open(f)?);
    }
    Ok(())
}

struct Cgroup(PathBuf);

impl Cgroup {
    fn new(name: &str) -> Result<Self> {
        let path = cgroup2_mount()?.join(format!("cimplifier-bench-{name}-{}", std::process::id()));
        std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self(path))
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Runs argv inside `cgroup`, returning its wall time.
fn timed_in(cgroup: &Path, argv: &[&str]) -> Result<Duration> {
    let script = format!("echo $$ > {}/cgroup.procs && exec \"$@\"", cgroup.display());
    let start = Instant::now();
    let status = Command::new("/bin/sh")
        .arg("-c")
        .arg(script)
        .arg("sh")
        .args(argv)
        .status()?;
    let elapsed = start.elapsed();
    if !status.success() {
        bail!("{argv:?} failed: {status}");
    }
    Ok(elapsed)
}

/// Counts events as they arrive, in the background, until `stop` fires.
/// The caller stops watching and then calls [`drain_rest`].
fn count_events(
    mut events: EventStream,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<(u64, EventStream)>,
) {
    let (tx, mut rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let mut n = 0u64;
        loop {
            tokio::select! {
                _ = &mut rx => break,
                e = events.next_event() => if e.is_some() { n += 1 } else { break },
            }
        }
        (n, events)
    });
    (tx, task)
}

/// Counts what is still queued once nothing is watched any more.
async fn drain_rest(events: &mut EventStream) -> u64 {
    let mut n = 0;
    while let Ok(Some(_)) =
        tokio::time::timeout(Duration::from_millis(300), events.next_event()).await
    {
        n += 1;
    }
    n
}

/// What one traced run measured.
struct Traced<T> {
    result: T,
    events: u64,
    seconds: f64,
    lost: u64,
    /// How long the first watch took, hooks attached.
    attach_seconds: f64,
    /// How long the kernel took to let the hooks go after the last unwatch.
    detach_seconds: f64,
}

/// Loads the tracer, watches `cgroup`, runs `work`, and unloads it again, so
/// that the untraced baselines run with no programs attached at all.
async fn traced<T>(
    config: TracerConfig,
    cgroup: &Path,
    work: impl FnOnce() -> Result<T>,
) -> Result<Traced<T>> {
    let mut tracer = Tracer::load(config)?;
    let events = tracer.events()?;
    let attach = Instant::now();
    let watched = tracer.watch_cgroup(cgroup)?;
    let attach_seconds = attach.elapsed().as_secs_f64();
    let (stop, counter) = count_events(events);
    let start = Instant::now();
    let result = work()?;
    let seconds = start.elapsed().as_secs_f64();
    let _ = stop.send(());
    let (mut events, mut stream) = counter.await?;
    tracer.unwatch(&watched)?;
    events += drain_rest(&mut stream).await;
    let lost = tracer.counters()?.loss.lost();
    // Closed in the background; the next baseline must not run under them.
    let detach_seconds = tracer.wait_unhooked().as_secs_f64();
    Ok(Traced {
        result,
        events,
        seconds,
        lost,
        attach_seconds,
        detach_seconds,
    })
}

fn hooks(hooks: HookMode) -> TracerConfig {
    TracerConfig {
        hooks,
        ..Default::default()
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A bpftrace program, attached host-wide until dropped.
struct Bpftrace(std::process::Child);

impl Bpftrace {
    fn start(program: &str) -> Result<Self> {
        use std::io::BufRead;
        let mut child = Command::new("bpftrace")
            .args(["-e", program])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("starting bpftrace (apt package bpftrace; `cargo xtask setup`)")?;
        let stdout = child.stdout.take().context("bpftrace's stdout")?;
        let mut lines = std::io::BufReader::new(stdout).lines();
        // "Attaching N probes..." comes once they are being attached.
        match lines.next() {
            Some(Ok(l)) if l.starts_with("Attaching") => {}
            other => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("bpftrace -e '{program}' did not attach: {other:?}");
            }
        }
        // The rest (the maps printed at exit) is read and dropped.
        std::thread::spawn(move || lines.for_each(drop));
        std::thread::sleep(Duration::from_millis(300));
        Ok(Self(child))
    }
}

impl Drop for Bpftrace {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let _ = self.0.wait();
    }
}

/// Runs `work` with `program` attached.
fn under_bpftrace<T>(program: &str, work: impl FnOnce() -> Result<T>) -> Result<T> {
    let _attached = Bpftrace::start(program)?;
    work()
}

/// The tracepoints of [`syscall_loop`]'s syscalls (std's metadata is
/// statx; newfstatat in case an older libc is used): exit only, or entry
/// and exit.
fn loop_syscall_probes(with_entry: bool) -> String {
    let sides: &[&str] = if with_entry {
        &["enter", "exit"]
    } else {
        &["exit"]
    };
    ["statx", "newfstatat", "openat", "close"]
        .iter()
        .flat_map(|s| {
            sides
                .iter()
                .map(move |side| format!("tracepoint:syscalls:sys_{side}_{s}"))
        })
        .collect::<Vec<_>>()
        .join(",")
}

const COUNT_OPENS: &str = "tracepoint:syscalls:sys_enter_openat { @opens = count(); }";
/// The least a tracer that drops repeats in the kernel does on the loop:
/// one program per call, the named ones keyed by their name in a map.
const KEY_NAMES: &str = "tracepoint:syscalls:sys_enter_statx,tracepoint:syscalls:sys_enter_openat \
     { @seen[str(args->filename)] = count(); } tracepoint:syscalls:sys_exit_close { }";
const LOOP_ROUNDS: usize = 5;
const REDIS_ROUNDS: usize = 5;

fn line(name: &str, seconds: f64, base: f64) {
    println!("{name:<58} {seconds:>8.3} s  {:.2}x", seconds / base);
}

/// Whether the section `name` is to run (`CIMPLIFIER_BENCH_SECTIONS`).
fn section(name: &str) -> bool {
    std::env::var("CIMPLIFIER_BENCH_SECTIONS")
        .map_or(true, |v| v.split(',').any(|s| s.trim() == name))
}

async fn run() -> Result<()> {
    if section("loop") {
        syscall_loop_section().await?;
    }
    if section("redis") {
        redis_section().await?;
    }
    if section("sizes") {
        sizes_section()?;
    }
    Ok(())
}

async fn syscall_loop_section() -> Result<()> {
    let exe = std::env::current_exe()?;
    let exe = exe.to_str().unwrap().to_owned();
    let work = tempfile::tempdir()?;
    let work_dir = work.path().to_str().unwrap().to_owned();

    println!(
        "## syscall loop: {LOOP_ITERATIONS} x (stat, open, close) over {LOOP_FILES} files, \
         median of {LOOP_ROUNDS} alternating rounds"
    );
    let loop_argv = [exe.as_str(), "--syscall-loop", work_dir.as_str()];
    let cg = Cgroup::new("loop")?;
    let other = Cgroup::new("other")?;
    let run_loop = || Ok(timed_in(&cg.0, &loop_argv)?.as_secs_f64());
    run_loop()?; // warm the page cache and the binary
    let raw_empty = "tracepoint:raw_syscalls:sys_enter {} tracepoint:raw_syscalls:sys_exit {}";
    let file_empty = format!("{} {{}}", loop_syscall_probes(true));
    // What an unwatched process pays under the per-syscall hooks: the
    // loop's calls are seen at exit only (`syscalls::seen_at_exit`).
    let file_exit_empty = format!("{} {{}}", loop_syscall_probes(false));
    let unused_empty = "tracepoint:syscalls:sys_enter_mkdirat {}";
    let rows = [
        "untraced (no programs)",
        "idle daemon (loaded, none watched)",
        "unwatched bystander (another cgroup watched)",
        "unwatched bystander, --hooks every-syscall",
        "floor: bpftrace, one unused syscall (sys_enter_mkdirat)",
        "floor: bpftrace, empty on raw_syscalls enter+exit",
        "floor: bpftrace, empty on the loop's syscalls enter+exit",
        "floor: bpftrace, empty on the loop's syscalls, exit only",
        "floor: bpftrace counting opens in the kernel",
        "floor: bpftrace keying each name in a map (in-kernel dedup)",
        "traced by cimplifier, first pass",
        "traced by cimplifier, steady state (same 100 files again)",
        "traced, --hooks every-syscall, first pass",
        "traced, --hooks every-syscall, steady state",
        "traced, --no-kernel-fold (every call sent)",
    ];
    let mut figures: Vec<Vec<f64>> = vec![Vec::new(); rows.len()];
    let (mut events, mut lost, mut ingest_secs) = (0u64, 0u64, 0f64);
    let mut full_rate = (0u64, 0u64, 0f64);
    let mut attach: [Vec<f64>; 2] = Default::default();
    let mut detach: [Vec<f64>; 2] = Default::default();
    for _ in 0..LOOP_ROUNDS {
        figures[0].push(run_loop()?);
        // The tracer as an idle daemon holds it: no syscall hook attached.
        let tracer = Tracer::load(TracerConfig::default())?;
        figures[1].push(run_loop()?);
        drop(tracer);
        for (mode, row) in [(HookMode::PerSyscall, 2), (HookMode::EverySyscall, 3)] {
            figures[row].push(traced(hooks(mode), &other.0, run_loop).await?.result);
        }
        figures[4].push(under_bpftrace(unused_empty, run_loop)?);
        figures[5].push(under_bpftrace(raw_empty, run_loop)?);
        figures[6].push(under_bpftrace(&file_empty, run_loop)?);
        figures[7].push(under_bpftrace(&file_exit_empty, run_loop)?);
        figures[8].push(under_bpftrace(COUNT_OPENS, run_loop)?);
        figures[9].push(under_bpftrace(KEY_NAMES, run_loop)?);
        for (i, mode) in [HookMode::PerSyscall, HookMode::EverySyscall]
            .into_iter()
            .enumerate()
        {
            let run = traced(hooks(mode), &cg.0, || Ok((run_loop()?, run_loop()?))).await?;
            figures[10 + 2 * i].push(run.result.0);
            figures[11 + 2 * i].push(run.result.1);
            attach[i].push(run.attach_seconds);
            detach[i].push(run.detach_seconds);
            events += run.events;
            lost += run.lost;
            ingest_secs += run.seconds;
        }
        // Every call sent: the ring buffer and the reader at full rate.
        let unfolded = TracerConfig {
            fold_repeats: false,
            ..Default::default()
        };
        let run = traced(unfolded, &cg.0, run_loop).await?;
        figures[14].push(run.result);
        full_rate.0 += run.events;
        full_rate.1 += run.lost;
        full_rate.2 += run.seconds;
    }
    let mut strace_argv = vec!["strace", "-f", "-o", "/dev/null"];
    strace_argv.extend_from_slice(&loop_argv);
    let straced = timed_in(&cg.0, &strace_argv)?.as_secs_f64();
    let untraced = median(figures[0].clone());
    for (name, v) in rows.iter().zip(figures) {
        line(name, median(v), untraced);
    }
    line("strace -f (one round)", straced, untraced);
    println!(
        "events ingested, traced rounds: {events} ({:.0} events/s), lost {lost}",
        events as f64 / ingest_secs
    );
    println!(
        "events ingested, --no-kernel-fold rounds: {} ({:.0} events/s), lost {}",
        full_rate.0,
        full_rate.0 as f64 / full_rate.2,
        full_rate.1
    );
    let [per, every] = attach.map(median);
    println!(
        "attaching the hooks at the first watch: per-syscall {:.1} ms, every-syscall {:.1} ms",
        per * 1e3,
        every * 1e3
    );
    let [per, every] = detach.map(median);
    println!(
        "the kernel letting them go after the last unwatch (in the background): \
         per-syscall {:.1} ms, every-syscall {:.1} ms",
        per * 1e3,
        every * 1e3
    );

    println!();
    Ok(())
}

async fn redis_section() -> Result<()> {
    println!(
        "## redis-benchmark -n {REDIS_REQUESTS} -t set,get against {REDIS_IMAGE}, \
         median of {REDIS_ROUNDS} alternating rounds"
    );
    let other = Cgroup::new("other")?;
    let redis = RedisContainer::start()?;
    let container_cgroup = cimplifier::trace::cgroup::cgroup_of_pid(redis.pid)?;
    redis.benchmark()?; // warm-up
    let rows = [
        "untraced (no programs)",
        "unwatched bystander (another cgroup watched)",
        "unwatched bystander, --hooks every-syscall",
        "floor: bpftrace counting opens in the kernel",
        "traced by cimplifier",
        "traced, --hooks every-syscall",
    ];
    let mut figures: Vec<Vec<f64>> = vec![Vec::new(); rows.len()];
    let (mut events, mut lost) = (0, 0);
    for _ in 0..REDIS_ROUNDS {
        figures[0].push(redis.benchmark()?);
        for (mode, row) in [(HookMode::PerSyscall, 1), (HookMode::EverySyscall, 2)] {
            figures[row].push(
                traced(hooks(mode), &other.0, || redis.benchmark())
                    .await?
                    .result,
            );
        }
        figures[3].push(under_bpftrace(COUNT_OPENS, || redis.benchmark())?);
        for (mode, row) in [(HookMode::PerSyscall, 4), (HookMode::EverySyscall, 5)] {
            let run = traced(hooks(mode), &container_cgroup, || redis.benchmark()).await?;
            figures[row].push(run.result);
            events += run.events;
            lost += run.lost;
        }
    }
    let mut strace = Command::new("strace")
        .args(["-f", "-o", "/dev/null", "-p", &redis.pid.to_string()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("starting strace")?;
    std::thread::sleep(Duration::from_millis(500));
    let straced_rps = redis.benchmark()?;
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(strace.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    );
    let _ = strace.wait();
    let untraced_rps = median(figures[0].clone());
    let named = rows
        .iter()
        .map(|r| r.to_string())
        .zip(figures.into_iter().map(median))
        .chain([("strace -f (one round)".to_owned(), straced_rps)]);
    for (name, rps) in named {
        println!(
            "{name:<58} {rps:>8.0} requests/s  {:.3}x",
            rps / untraced_rps
        );
    }
    println!("events ingested, traced rounds: {events}, lost {lost}");
    println!();
    Ok(())
}

fn sizes_section() -> Result<()> {
    println!("## kernel programs, as the verifier left them (jited bytes)");
    for (kernel_log, hooks) in [
        (false, HookMode::PerSyscall),
        (true, HookMode::PerSyscall),
        (false, HookMode::EverySyscall),
    ] {
        let tracer = Tracer::load(TracerConfig {
            kernel_log,
            hooks,
            ..Default::default()
        })?;
        let sizes: Vec<String> = tracer
            .program_sizes()?
            .into_iter()
            .map(|(name, jited)| format!("{name} {jited}"))
            .collect();
        println!(
            "kernel log {:<3} {hooks:<13}  {}",
            if kernel_log { "on" } else { "off" },
            sizes.join(", ")
        );
    }
    Ok(())
}

struct RedisContainer {
    name: String,
    port: String,
    pid: u32,
}

impl RedisContainer {
    fn start() -> Result<Self> {
        let name = format!("cimplifier-bench-redis-{}", std::process::id());
        let _ = Command::new("docker").args(["rm", "-f", &name]).output();
        let out = Command::new("docker")
            .args([
                "run",
                "-d",
                "--name",
                &name,
                "-p",
                "127.0.0.1::6379",
                REDIS_IMAGE,
            ])
            .output()?;
        if !out.status.success() {
            bail!(
                "starting {REDIS_IMAGE} failed (run `cargo xtask images`): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let port = String::from_utf8(
            Command::new("docker")
                .args(["port", &name, "6379/tcp"])
                .output()?
                .stdout,
        )?;
        let port = port
            .lines()
            .next()
            .context("no published port")?
            .rsplit(':')
            .next()
            .unwrap()
            .to_owned();
        let pid = String::from_utf8(
            Command::new("docker")
                .args(["inspect", "-f", "{{.State.Pid}}", &name])
                .output()?
                .stdout,
        )?;
        let me = Self {
            name,
            port,
            pid: pid.trim().parse()?,
        };
        for _ in 0..50 {
            let ping = Command::new("redis-cli")
                .args(["-p", &me.port, "ping"])
                .output()?;
            if String::from_utf8_lossy(&ping.stdout).trim() == "PONG" {
                return Ok(me);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("redis in {} never answered PING", me.name)
    }

    /// Mean requests/s over the SET and GET tests.
    fn benchmark(&self) -> Result<f64> {
        let out = Command::new("redis-benchmark")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port,
                "-n",
                REDIS_REQUESTS,
                "-t",
                "set,get",
                "-q",
                "--csv",
            ])
            .output()
            .context("running redis-benchmark (apt package redis-tools)")?;
        if !out.status.success() {
            bail!(
                "redis-benchmark failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let text = String::from_utf8(out.stdout)?;
        let rates: Vec<f64> = text
            .lines()
            .filter(|l| l.starts_with("\"SET\"") || l.starts_with("\"GET\""))
            .filter_map(|l| l.split(',').nth(1)?.trim_matches('"').parse().ok())
            .collect();
        if rates.len() != 2 {
            bail!("unexpected redis-benchmark output: {text}");
        }
        Ok(rates.iter().sum::<f64>() / 2.0)
    }
}

impl Drop for RedisContainer {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", &self.name])
            .output();
    }
}
