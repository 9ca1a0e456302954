//! Tracer overhead, measured against baselines taken in the same run.
//!
//! `cargo xtask bench-trace` (root, after `cargo xtask setup`). Prints figures
//! and ratios; asserts nothing about time. Two workloads:
//! - a syscall-heavy loop (stat/open/close over many files), untraced, traced
//!   by cimplifier, and under `strace -f`;
//! - redis-benchmark against a redis-server container, likewise.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cimplifier::trace::cgroup::cgroup2_mount;
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
}

/// Loads the tracer, watches `cgroup`, runs `work`, and unloads it again, so
/// that the untraced baselines run with no programs attached at all.
async fn traced<T>(cgroup: &Path, work: impl FnOnce() -> Result<T>) -> Result<Traced<T>> {
    let mut tracer = Tracer::load(TracerConfig::default())?;
    let events = tracer.events()?;
    let watched = tracer.watch_cgroup(cgroup)?;
    let (stop, counter) = count_events(events);
    let start = Instant::now();
    let result = work()?;
    let seconds = start.elapsed().as_secs_f64();
    let _ = stop.send(());
    let (mut events, mut stream) = counter.await?;
    tracer.unwatch(&watched)?;
    events += drain_rest(&mut stream).await;
    let lost = tracer.counters()?.loss.lost();
    Ok(Traced {
        result,
        events,
        seconds,
        lost,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

const REDIS_ROUNDS: usize = 5;

async fn run() -> Result<()> {
    let exe = std::env::current_exe()?;
    let exe = exe.to_str().unwrap().to_owned();
    let work = tempfile::tempdir()?;
    let work_dir = work.path().to_str().unwrap().to_owned();

    println!("## syscall loop: {LOOP_ITERATIONS} x (stat, open, close) over {LOOP_FILES} files");
    let loop_argv = [exe.as_str(), "--syscall-loop", work_dir.as_str()];
    let cg = Cgroup::new("loop")?;
    timed_in(&cg.0, &loop_argv)?; // warm the page cache and the binary
    let untraced = timed_in(&cg.0, &loop_argv)?.as_secs_f64();
    // The tracer loaded with nothing watched, as an idle daemon holds it:
    // the syscall hooks are not attached.
    let idle = {
        let tracer = Tracer::load(TracerConfig::default())?;
        let seconds = timed_in(&cg.0, &loop_argv)?.as_secs_f64();
        drop(tracer);
        seconds
    };
    // Another cgroup is watched: the cost every unwatched task on the host pays.
    let other = Cgroup::new("other")?;
    let bystander = traced(&other.0, || timed_in(&cg.0, &loop_argv))
        .await?
        .result
        .as_secs_f64();
    let run = traced(&cg.0, || timed_in(&cg.0, &loop_argv)).await?;
    let mut strace_argv = vec!["strace", "-f", "-o", "/dev/null"];
    strace_argv.extend_from_slice(&loop_argv);
    let straced = timed_in(&cg.0, &strace_argv)?.as_secs_f64();
    let traced_secs = run.result.as_secs_f64();
    println!("untraced (no programs)     {untraced:>8.3} s  1.00x");
    println!(
        "idle daemon (none watched) {idle:>8.3} s  {:.2}x",
        idle / untraced
    );
    println!(
        "unwatched bystander        {bystander:>8.3} s  {:.2}x",
        bystander / untraced
    );
    println!(
        "traced by cimplifier       {traced_secs:>8.3} s  {:.2}x",
        traced_secs / untraced
    );
    println!(
        "strace -f                  {straced:>8.3} s  {:.2}x",
        straced / untraced
    );
    println!(
        "events ingested            {} ({:.0} events/s), lost {}",
        run.events,
        run.events as f64 / run.seconds,
        run.lost
    );

    println!();
    println!(
        "## redis-benchmark -n {REDIS_REQUESTS} -t set,get against {REDIS_IMAGE}, \
         median of {REDIS_ROUNDS} alternating rounds"
    );
    let redis = RedisContainer::start()?;
    let container_cgroup = cimplifier::trace::cgroup::cgroup_of_pid(redis.pid)?;
    redis.benchmark()?; // warm-up
    let (mut plain, mut watched, mut events, mut lost) = (Vec::new(), Vec::new(), 0, 0);
    for _ in 0..REDIS_ROUNDS {
        plain.push(redis.benchmark()?);
        let run = traced(&container_cgroup, || redis.benchmark()).await?;
        watched.push(run.result);
        events += run.events;
        lost += run.lost;
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
    let untraced_rps = median(plain);
    for (name, rps) in [
        ("untraced (no programs)", untraced_rps),
        ("traced by cimplifier", median(watched)),
        ("strace -f (one round)", straced_rps),
    ] {
        println!(
            "{name:<26} {rps:>8.0} requests/s  {:.3}x",
            rps / untraced_rps
        );
    }
    println!("events ingested            {events}, lost {lost}");
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
