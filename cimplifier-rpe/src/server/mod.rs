//! The server: one socket per caller partition, a thread per call, a forked
//! child per callee, and one reaper that also makes it a fit PID 1.
//!
//! All children are reaped by `waitpid(-1)` in the main thread (SIGCHLD via
//! `sigwaitinfo`): as PID 1 we must reap orphans too, and a per-call
//! `waitpid(pid)` would race with that. The reaper hands each status to the
//! call's thread through a pipe registered under the child's pid.
//!
//! Here: the start, the sockets and the shutdown. `accept.rs` accepts
//! calls and reaps, `peer.rs` checks who calls, `spawn.rs` starts callees,
//! `relay.rs` relays a running call (and its terminal).

mod accept;
mod peer;
mod relay;
mod spawn;

use accept::{accept_loop, reap};
use spawn::inherited;

use crate::config::{PartitionConfig, ServerConfig};
use crate::sys::signal_set;
use std::collections::{HashMap, HashSet};
use std::ffi::c_int;
use std::fs::File;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};

/// Live callees: pid -> write end of the pipe their call thread reads.
static CHILDREN: Mutex<Option<HashMap<libc::pid_t, File>>> = Mutex::new(None);
static SHUTTING_DOWN: AtomicBool = AtomicBool::new(false);
/// The original entrypoint the server started with `--`, while it runs.
static ENTRY_PID: AtomicI32 = AtomicI32::new(0);
/// Its wait status once reaped.
static ENTRY_STATUS: Mutex<Option<c_int>> = Mutex::new(None);

/// A caller partition as the server serves it.
pub struct Partition {
    pub cfg: PartitionConfig,
    /// Allow-list entries with symlinks resolved in this partition.
    allow_canon: HashSet<PathBuf>,
}

impl Partition {
    pub fn new(cfg: PartitionConfig) -> Self {
        let allow_canon = cfg
            .allow
            .iter()
            .filter_map(|p| std::fs::canonicalize(p).ok())
            .collect();
        Partition { cfg, allow_canon }
    }

    /// The path to execute for `requested`, or why it may not run.
    fn resolve(&self, requested: &Path) -> Result<PathBuf, String> {
        let canon = std::fs::canonicalize(requested).ok();
        let allowed = self.cfg.allow.iter().any(|a| a == requested)
            || canon.as_ref().is_some_and(|c| self.allow_canon.contains(c));
        if !allowed {
            return Err(format!(
                "partition {} may not execute {}: it is not in the partition's allow-list \
                 on the RPE server; add it to `allow` of [[partition]] {} if it should",
                self.cfg.name,
                requested.display(),
                self.cfg.name
            ));
        }
        Ok(self
            .cfg
            .map
            .get(requested)
            .cloned()
            .or(canon)
            .unwrap_or_else(|| requested.to_path_buf()))
    }
}

const SERVER_SIGNALS: &[c_int] = &[libc::SIGCHLD, libc::SIGTERM, libc::SIGINT];

/// Runs the server until SIGTERM/SIGINT and the last callee are gone.
/// Serves the configured partitions until SIGTERM or SIGINT, and then until
/// the last callee has been reaped. With `entry`, it also runs that command
/// (the partition's original entrypoint) once the sockets are up, passes it
/// SIGTERM too, and shuts down when it exits; the result is then the exit
/// code to leave with (128 + signal if a signal killed it).
pub fn serve(cfg: ServerConfig, entry: Option<&[std::ffi::OsString]>) -> Result<i32, String> {
    raise_nofile();
    // Blocked before any thread exists, so only sigwaitinfo sees them.
    let set = signal_set(SERVER_SIGNALS);
    // SAFETY: changing our own signal mask.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    *CHILDREN.lock().unwrap() = Some(HashMap::new());
    inherited();
    let root = unsafe { libc::geteuid() } == 0;
    for p in cfg.partitions {
        let listener = bind(&p.socket).map_err(|e| format!("partition {}: {e}", p.name))?;
        let part = Arc::new(Partition::new(p));
        std::thread::Builder::new()
            .name(format!("accept-{}", part.cfg.name))
            .spawn(move || accept_loop(listener, part, root))
            .map_err(|e| format!("cannot start a thread: {e}"))?;
    }
    if let Some([program, args @ ..]) = entry {
        // std resets the signal mask and SIGPIPE in the child; the reaper
        // below waits for it, never `Child::wait`.
        let child = std::process::Command::new(program)
            .args(args)
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot start the entrypoint {}: {e}",
                    Path::new(program).display()
                )
            })?;
        ENTRY_PID.store(child.id() as i32, Ordering::SeqCst);
    }
    loop {
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waiting for the signals blocked above.
        let sig = unsafe { libc::sigwaitinfo(&set, &mut info) };
        match sig {
            libc::SIGCHLD => reap(),
            libc::SIGTERM | libc::SIGINT => shut_down(),
            _ => {}
        }
        let entry_done = ENTRY_PID.load(Ordering::SeqCst) == 0;
        if SHUTTING_DOWN.load(Ordering::SeqCst)
            && entry_done
            && CHILDREN
                .lock()
                .unwrap()
                .as_ref()
                .is_none_or(|m| m.is_empty())
        {
            let status = *ENTRY_STATUS.lock().unwrap();
            return Ok(match status {
                Some(st) if libc::WIFSIGNALED(st) => 128 + libc::WTERMSIG(st),
                Some(st) => libc::WEXITSTATUS(st),
                None => 0,
            });
        }
    }
}

/// SIGTERM to the entrypoint and every running callee; exit once reaped.
fn shut_down() {
    SHUTTING_DOWN.store(true, Ordering::SeqCst);
    let mut pids: Vec<_> = CHILDREN
        .lock()
        .unwrap()
        .as_ref()
        .map(|m| m.keys().copied().collect())
        .unwrap_or_default();
    pids.push(ENTRY_PID.load(Ordering::SeqCst));
    for pid in pids.into_iter().filter(|&p| p > 0) {
        // SAFETY: unreaped children of ours (the entry pid is cleared when
        // reaped).
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
}

fn raise_nofile() {
    // SAFETY: adjusting our own limit; every received fd counts against it.
    unsafe {
        let mut rl: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) == 0 {
            rl.rlim_cur = rl.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
        }
    }
}

fn bind(path: &Path) -> Result<UnixListener, String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create socket directory {}: {e}", dir.display()))?;
    }
    if let Ok(md) = std::fs::symlink_metadata(path) {
        if !md.file_type().is_socket() {
            return Err(format!(
                "{} exists and is not a socket; remove it or choose another socket path",
                path.display()
            ));
        }
        // A stale socket of an earlier run.
        let _ = std::fs::remove_file(path);
    }
    let l = UnixListener::bind(path)
        .map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
    // Stubs run as any user; the volume, not the mode, keeps others out.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
        .map_err(|e| format!("cannot chmod {}: {e}", path.display()))?;
    Ok(l)
}

/// Entry point of the server binary.
pub fn main() -> i32 {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let (path, entry) = match args.as_slice() {
        [flag, path] if flag == "--config" => (PathBuf::from(path), None),
        [flag, path, dashes, entry @ ..]
            if flag == "--config" && dashes == "--" && !entry.is_empty() =>
        {
            (PathBuf::from(path), Some(entry))
        }
        _ => {
            eprintln!(
                "usage: cimplifier-rpe-server --config /etc/cimplifier-rpe/server.toml [-- ENTRYPOINT ARGS...]\n\
                 (see docs/rpe.md for the file's format; with `--`, the server also runs the\n\
                 partition's original entrypoint and exits with its status)"
            );
            return 2;
        }
    };
    let cfg = match ServerConfig::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cimplifier-rpe-server: {e}");
            return 2;
        }
    };
    match serve(cfg, entry) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cimplifier-rpe-server: {e}");
            1
        }
    }
}
