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
pub mod policy;
mod relay;
mod spawn;

use accept::{accept_loop, reap};
use spawn::inherited;

use crate::config::{PartitionConfig, ServerConfig};
use crate::proto::{self, Request};
use crate::sys::signal_set;
use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::c_int;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
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
    /// Allow-list entries, lexically normalised -> the path to execute.
    allow: HashMap<PathBuf, PathBuf>,
    /// Environment variables already reported as dropped (once each).
    warned: Mutex<HashSet<String>>,
    /// Calls on this socket: waiting for their request, and in all.
    pending: Mutex<VecDeque<(u64, Arc<UnixStream>)>>,
    calls: AtomicUsize,
}

impl Partition {
    pub fn new(cfg: PartitionConfig) -> Self {
        let map: HashMap<PathBuf, &PathBuf> = cfg
            .map
            .iter()
            .filter_map(|(k, v)| Some((policy::normalise(k.as_os_str().as_bytes())?, v)))
            .collect();
        let allow = cfg
            .allow
            .iter()
            .filter_map(|a| policy::normalise(a.as_os_str().as_bytes()))
            .map(|a| {
                let exe = map.get(&a).map_or_else(|| a.clone(), |m| (*m).clone());
                (a, exe)
            })
            .collect();
        Partition {
            cfg,
            allow,
            warned: Mutex::new(HashSet::new()),
            pending: Mutex::new(VecDeque::new()),
            calls: AtomicUsize::new(0),
        }
    }

    /// The path to execute for `req`, or why it may not run. Only the
    /// exact (lexically normalised) path that is listed is allowed, never
    /// a symlink alias of it, and argv[0] must name it (multi-call
    /// binaries go by argv[0]). What runs is the configured path.
    fn resolve(&self, req: &Request) -> Result<PathBuf, String> {
        let shown = String::from_utf8_lossy(&req.path);
        let name = &self.cfg.name;
        let Some(path) = policy::normalise(&req.path) else {
            return Err(format!(
                "partition {name} asked to execute {shown}, which is not an absolute path; refused"
            ));
        };
        let Some(exe) = self.allow.get(&path) else {
            return Err(format!(
                "partition {name} may not execute {shown}: it is not in the partition's allow-list \
                 on the RPE server (paths are compared exactly, symlinks are not followed); \
                 add it to `allow` of [[partition]] {name} if it should"
            ));
        };
        let argv0 = proto::split_nul(&req.argv).next();
        match argv0 {
            None => Err(format!(
                "partition {name} asked to execute {shown} with an empty argv; refused"
            )),
            Some(a) if !policy::argv0_allowed(&path, a, &self.cfg.permit) => Err(format!(
                "partition {name} may execute {shown} only under its own name, not as argv[0] \
                 \"{}\" (a multi-call binary would run another program); add it to \
                 [partition.permit.argv0] of [[partition]] {name} if it should",
                String::from_utf8_lossy(a)
            )),
            Some(_) => Ok(exe.clone()),
        }
    }

    /// The caller's environment without what it may not set here; the
    /// server's log names each variable dropped, once per partition.
    fn environment(&self, req: &Request) -> Vec<u8> {
        static OWN: std::sync::OnceLock<HashSet<Vec<u8>>> = std::sync::OnceLock::new();
        let own = OWN.get_or_init(|| {
            std::env::vars_os()
                .map(|(k, v)| [k.as_bytes(), b"=", v.as_bytes()].concat())
                .collect()
        });
        let (env, dropped) = policy::filter_env(&req.env, &self.cfg.permit, own);
        let mut warned = self.warned.lock().unwrap();
        for d in dropped {
            if warned.insert(d.clone()) {
                eprintln!(
                    "cimplifier-rpe-server: partition {}: dropped {d} from a caller's environment \
                     (it makes the callee load or run code the caller names); list it in \
                     [partition.permit] env if it should pass",
                    self.cfg.name
                );
            }
        }
        env
    }

    /// Refuses fds the caller may not pass (memfd, O_PATH, directory).
    fn check_fds(&self, req: &Request, fds: &[std::os::fd::OwnedFd]) -> Result<(), String> {
        use std::os::fd::AsRawFd;
        for (fd, target) in fds.iter().zip(&req.fds) {
            if let Some(kind) = policy::fd_kind(fd.as_raw_fd())?
                && !self.cfg.permit.fds.contains(&kind)
            {
                return Err(format!(
                    "partition {} may not pass fd {target}: it is an fd of kind {kind}; \
                     list \"{kind}\" in [partition.permit] fds of [[partition]] {} if it should",
                    self.cfg.name, self.cfg.name
                ));
            }
        }
        Ok(())
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
    // Every socket is bound before any thread exists: bind sets the
    // process-wide umask for a moment.
    let mut listeners = Vec::new();
    for p in cfg.partitions {
        let listener = bind(&p.socket).map_err(|e| format!("partition {}: {e}", p.name))?;
        listeners.push((listener, Arc::new(Partition::new(p))));
    }
    for (listener, part) in listeners {
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

/// Runs `f` with the umask `mask`. Only before threads exist.
fn with_umask<T>(mask: libc::mode_t, f: impl FnOnce() -> T) -> T {
    // SAFETY: umask cannot fail; single-threaded here.
    let old = unsafe { libc::umask(mask) };
    let r = f();
    unsafe { libc::umask(old) };
    r
}

fn bind(path: &Path) -> Result<UnixListener, String> {
    if let Some(dir) = path.parent() {
        // Stubs run as any user and must reach the socket: 0755 whatever
        // umask the server was started with.
        with_umask(0o022, || {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
        })
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
    // Created 0666 (stubs run as any user; the volume, not the mode,
    // keeps other partitions out), not chmod-ed after: no window with
    // another mode.
    with_umask(0o111, || UnixListener::bind(path))
        .map_err(|e| format!("cannot listen on {}: {e}", path.display()))
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
