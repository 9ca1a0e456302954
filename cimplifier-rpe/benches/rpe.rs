//! The paper's Figure 4: an RPE round trip against a plain fork/exec of the
//! same program, at 3/100/1000 open fds and 1 KiB/128 KiB of argv+env.
//! Prints median and p99; asserts nothing about time.
//!
//! Run: `cargo bench -p cimplifier-rpe --bench rpe` (as root, like the tests).

#[path = "../tests/common/mod.rs"]
mod common;

use common::Fixture;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const ROUNDS: usize = 400;
const WARMUP: usize = 20;

/// `total` open, inheritable fds in total, 0-2 included.
fn open_fds(total: usize) -> Vec<OwnedFd> {
    let null = std::fs::File::open("/dev/null").unwrap();
    (3..total)
        .map(|_| {
            // SAFETY: F_DUPFD without CLOEXEC, so children inherit it.
            let fd =
                unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&null), libc::F_DUPFD, 3) };
            assert!(fd >= 0, "cannot open fds: raise RLIMIT_NOFILE");
            unsafe { OwnedFd::from_raw_fd(fd) }
        })
        .collect()
}

/// Env entries so that argv+env come to about `bytes`.
fn env_of(bytes: usize) -> Vec<(String, String)> {
    let chunk = 32 * 1024 - 64;
    let mut left = bytes.saturating_sub(64);
    let mut out = Vec::new();
    while left > 0 {
        let n = left.min(chunk);
        out.push((
            format!("FILL{}", out.len()),
            "x".repeat(n.saturating_sub(8)),
        ));
        left -= n;
    }
    out
}

fn run(prog: &Path, env: &[(String, String)]) -> Duration {
    run_expecting(prog, env, 0)
}

fn run_expecting(prog: &Path, env: &[(String, String)], code: i32) -> Duration {
    let t0 = Instant::now();
    let st = Command::new(prog)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    let d = t0.elapsed();
    assert_eq!(st.code(), Some(code), "{} : {st:?}", prog.display());
    d
}

/// A stub whose server is missing: its start-up and state capture alone,
/// the part of a call no server can speed up.
fn lone_stub() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("rpe-bench-lone-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let stub = dir.join("true");
    std::fs::copy(&common::static_bins().stub, &stub).unwrap();
    let cfg = cimplifier_rpe::config::StubConfig::single(dir.join("no-server.sock"));
    std::fs::write(
        dir.join(cimplifier_rpe::config::STUB_CONFIG_NAME),
        toml::to_string(&cfg).unwrap(),
    )
    .unwrap();
    stub
}

fn stats(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    (us(v[v.len() / 2]), us(v[(v.len() * 99).div_ceil(100) - 1]))
}

fn main() {
    // SAFETY: raising our own soft limit to the hard one.
    unsafe {
        let mut rl: libc::rlimit = std::mem::zeroed();
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl);
        rl.rlim_cur = rl.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
        // Whatever the runner leaked to us stays out of the children.
        libc::syscall(
            libc::SYS_close_range,
            3,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        );
    }
    let mut fx = Fixture::new("bench");
    let stub = fx.callee_exec("true", Path::new("/bin/true"));
    fx.start();
    let plain = Path::new("/bin/true");
    let lone = lone_stub();
    println!("## RPE round trip vs plain fork/exec of /bin/true, {ROUNDS} alternating rounds each");
    println!(
        "{:>5} {:>9} | {:>12} {:>12} | {:>12} {:>12} | {:>14} | {:>14}",
        "fds",
        "argv+env",
        "plain med",
        "plain p99",
        "RPE med",
        "RPE p99",
        "added (med)",
        "lone stub med"
    );
    for fds in [3usize, 100, 1000] {
        for bytes in [1024usize, 128 * 1024] {
            let held = open_fds(fds);
            let env = env_of(bytes);
            for _ in 0..WARMUP {
                run(plain, &env);
                run(&stub, &env);
            }
            let (mut p, mut r, mut l) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..ROUNDS {
                p.push(run(plain, &env));
                r.push(run(&stub, &env));
                l.push(run_expecting(&lone, &env, 126));
            }
            drop(held);
            let ((pm, p99), (rm, r99), (lm, _)) = (stats(p), stats(r), stats(l));
            println!(
                "{fds:>5} {:>8}K | {:>10.0}us {:>10.0}us | {:>10.0}us {:>10.0}us | {:>12.0}us | {:>12.0}us",
                bytes / 1024,
                pm,
                p99,
                rm,
                r99,
                rm - pm,
                lm
            );
        }
    }
}
