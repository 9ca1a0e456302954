//! The server: one socket per caller partition, a thread per call, a forked
//! child per callee, and one reaper that also makes it a fit PID 1.
//!
//! All children are reaped by `waitpid(-1)` in the main thread (SIGCHLD via
//! `sigwaitinfo`): as PID 1 we must reap orphans too, and a per-call
//! `waitpid(pid)` would race with that. The reaper hands each status to the
//! call's thread through a pipe registered under the child's pid.

use crate::config::{PartitionConfig, ServerConfig};
use crate::fdpass::{recv_fds, send_fds};
use crate::proto::{self, EXIT_CANNOT_EXECUTE, EXIT_NOT_FOUND, Request, ToServer, ToStub};
use std::collections::{HashMap, HashSet};
use std::ffi::{CString, OsStr, c_char, c_int};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
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

fn signal_set(sigs: &[c_int]) -> libc::sigset_t {
    // SAFETY: sigset manipulation on a local.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in sigs {
            libc::sigaddset(&mut set, s);
        }
        set
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

fn accept_loop(listener: UnixListener, part: Arc<Partition>, root: bool) {
    for conn in listener.incoming() {
        match conn {
            Ok(conn) => {
                let part = part.clone();
                let spawned = std::thread::Builder::new()
                    .name("rpe-call".into())
                    .spawn(move || handle(conn, &part, root));
                if let Err(e) = spawned {
                    eprintln!("cimplifier-rpe-server: cannot start a thread for a call: {e}");
                }
            }
            Err(e) => {
                eprintln!(
                    "cimplifier-rpe-server: accept on {}: {e}",
                    part.cfg.socket.display()
                );
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }
}

/// Reaps every exited child; hands statuses of callees to their calls.
fn reap() {
    loop {
        let mut st = 0;
        // SAFETY: non-blocking wait for any child.
        let pid = unsafe { libc::waitpid(-1, &mut st, libc::WNOHANG | libc::WUNTRACED) };
        if pid <= 0 {
            return;
        }
        if pid == ENTRY_PID.load(Ordering::SeqCst) {
            if libc::WIFEXITED(st) || libc::WIFSIGNALED(st) {
                *ENTRY_STATUS.lock().unwrap() = Some(st);
                ENTRY_PID.store(0, Ordering::SeqCst);
                // The container lives as long as its original entrypoint.
                shut_down();
            }
            continue;
        }
        let mut g = CHILDREN.lock().unwrap();
        let Some(map) = g.as_mut() else { continue };
        let done = libc::WIFEXITED(st) || libc::WIFSIGNALED(st);
        let pipe = if done { map.remove(&pid) } else { None };
        let st = st.to_le_bytes();
        // A call whose stub vanished has closed its end: EPIPE is fine.
        match pipe {
            Some(mut f) => {
                let _ = f.write_all(&st);
            }
            None => {
                if let Some(f) = map.get_mut(&pid) {
                    let _ = f.write_all(&st);
                }
            }
        }
    }
}

struct PeerCred {
    uid: u32,
    gid: u32,
    groups: Option<Vec<u32>>,
}

fn peer_cred(sock: RawFd) -> io::Result<PeerCred> {
    // SAFETY: getsockopt into correctly sized locals.
    unsafe {
        let mut uc: libc::ucred = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
        if libc::getsockopt(
            sock,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut uc as *mut libc::ucred).cast(),
            &mut len,
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
        let mut groups = vec![0u32; 65536];
        let mut glen = (groups.len() * 4) as libc::socklen_t;
        let ok = libc::getsockopt(
            sock,
            libc::SOL_SOCKET,
            libc::SO_PEERGROUPS,
            groups.as_mut_ptr().cast(),
            &mut glen,
        ) == 0;
        groups.truncate(glen as usize / 4);
        Ok(PeerCred {
            uid: uc.uid,
            gid: uc.gid,
            groups: ok.then_some(groups),
        })
    }
}

/// A stub may only ask for the identity it connected with (root may ask
/// for any): otherwise any user of the caller partition could run
/// programs here as root.
fn check_identity(peer: &PeerCred, req: &Request) -> Result<(), String> {
    if peer.uid == 0 {
        return Ok(());
    }
    if req.uid != peer.uid || req.euid != peer.uid {
        return Err(format!(
            "the stub claims uid {}/{} but connected as uid {}; refused",
            req.uid, req.euid, peer.uid
        ));
    }
    if req.gid != peer.gid || req.egid != peer.gid {
        return Err(format!(
            "the stub claims gid {}/{} but connected as gid {}; refused",
            req.gid, req.egid, peer.gid
        ));
    }
    let known = peer.groups.as_deref().unwrap_or(&[]);
    if let Some(g) = req
        .groups
        .iter()
        .find(|g| **g != peer.gid && !known.contains(g))
    {
        return Err(format!(
            "the stub claims supplementary group {g} it does not have; refused"
        ));
    }
    Ok(())
}

fn refuse(conn: &mut UnixStream, code: i32, message: String) {
    let _ = proto::write_frame(conn, &ToStub::Refused { code, message });
}

fn handle(mut conn: UnixStream, part: &Partition, root: bool) {
    let msg: Option<ToServer> = match proto::read_frame(&mut conn) {
        Ok(m) => m,
        Err(e) => {
            return refuse(
                &mut conn,
                EXIT_CANNOT_EXECUTE,
                format!("the RPE server could not read the request: {e}"),
            );
        }
    };
    let Some(ToServer::Request(req)) = msg else {
        return;
    };
    let mut fds = match recv_fds(conn.as_raw_fd(), req.fds.len()) {
        Ok(f) => f,
        Err(e) => {
            return refuse(
                &mut conn,
                EXIT_CANNOT_EXECUTE,
                format!("the RPE server could not receive the file descriptors: {e}"),
            );
        }
    };
    let started = peer_cred(conn.as_raw_fd())
        .map_err(|e| format!("cannot read the stub's credentials (SO_PEERCRED): {e}"))
        .and_then(|peer| check_identity(&peer, &req))
        .and_then(|()| {
            if SHUTTING_DOWN.load(Ordering::SeqCst) {
                return Err("the RPE server is shutting down".into());
            }
            if !root && req.euid != unsafe { libc::geteuid() } {
                return Err(format!(
                    "the RPE server does not run as root and cannot run a program as uid {}",
                    req.euid
                ));
            }
            Ok(())
        })
        .map_err(|m| (EXIT_CANNOT_EXECUTE, m))
        .and_then(|()| {
            let path = Path::new(OsStr::from_bytes(&req.path));
            part.resolve(path).map_err(|m| (EXIT_CANNOT_EXECUTE, m))
        })
        .and_then(|exe| {
            let pty = pty_for(&req, &mut fds).map_err(|m| (EXIT_CANNOT_EXECUTE, m))?;
            spawn(&req, &fds, &exe, root, &part.cfg.name).map(|s| (s, pty))
        });
    let ((pid, status_r), pty) = match started {
        Ok(s) => s,
        Err((code, message)) => return refuse(&mut conn, code, message),
    };
    if let Some(master) = pty {
        // The stub relays between its terminal and the pty's master.
        let sent = proto::write_frame(&mut conn, &ToStub::Pty)
            .and_then(|()| send_fds(conn.as_raw_fd(), &[master.as_raw_fd()]));
        if sent.is_err() {
            return;
        }
    }
    let sent = proto::write_frame(&mut conn, &ToStub::Started { pid });
    // Off the critical path: the stub already knows the callee runs.
    close_all(fds);
    if sent.is_err() {
        return;
    }
    relay(conn, pid, status_r);
}

/// A pty for a caller whose controlling terminal came with the call: that
/// terminal is the caller session's, so the callee cannot make it its own.
/// Every received fd on the caller's terminal is replaced by the pty's
/// slave (with the same termios and window size), which the callee's new
/// session then takes as its controlling terminal. Returns the master.
fn pty_for(req: &Request, fds: &mut [OwnedFd]) -> Result<Option<OwnedFd>, String> {
    let Some(i) = req
        .ctty
        .and_then(|ctty| req.fds.iter().position(|&n| n == ctty))
    else {
        return Ok(None);
    };
    let rdev = |fd: RawFd| -> Option<libc::dev_t> {
        // SAFETY: fstat into a local.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        (unsafe { libc::fstat(fd, &mut st) } == 0 && st.st_mode & libc::S_IFMT == libc::S_IFCHR)
            .then_some(st.st_rdev)
    };
    let Some(tty_dev) = rdev(fds[i].as_raw_fd()) else {
        return Ok(None);
    };
    let err = |what: &str| {
        format!(
            "cannot give the callee a terminal: {what}: {}",
            io::Error::last_os_error()
        )
    };
    // SAFETY: pty set-up on fds we own; every result is checked.
    unsafe {
        let m = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        if m < 0 {
            return Err(err("posix_openpt (is /dev/pts mounted in this partition?)"));
        }
        let master = OwnedFd::from_raw_fd(m);
        let mut name = [0 as c_char; 128];
        if libc::grantpt(m) != 0
            || libc::unlockpt(m) != 0
            || libc::ptsname_r(m, name.as_mut_ptr(), name.len()) != 0
        {
            return Err(err("grantpt/unlockpt/ptsname"));
        }
        let sl = libc::open(
            name.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        );
        if sl < 0 {
            return Err(err("opening the pty's slave"));
        }
        let slave = OwnedFd::from_raw_fd(sl);
        let caller = fds[i].as_raw_fd();
        let mut tio: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(caller, &mut tio) == 0 {
            libc::tcsetattr(sl, libc::TCSANOW, &tio);
        }
        let mut ws: libc::winsize = std::mem::zeroed();
        if libc::ioctl(caller, libc::TIOCGWINSZ, &mut ws) == 0 {
            libc::ioctl(sl, libc::TIOCSWINSZ, &ws);
        }
        for fd in fds.iter_mut() {
            if rdev(fd.as_raw_fd()) == Some(tty_dev) {
                *fd = slave
                    .try_clone()
                    .map_err(|e| format!("cannot give the callee a terminal: {e}"))?;
            }
        }
        Ok(Some(master))
    }
}

/// Relays signals from the stub and statuses to it until the callee ends.
fn relay(mut conn: UnixStream, pid: libc::pid_t, mut status_r: File) {
    // SAFETY: a pidfd never names a recycled pid, unlike kill(pid).
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as RawFd;
    let pidfd = (pidfd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(pidfd) });
    let mut stub_open = true;
    loop {
        let mut pfd = [
            libc::pollfd {
                fd: status_r.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: if stub_open { conn.as_raw_fd() } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: poll on valid fds (or -1, which poll skips).
        if unsafe { libc::poll(pfd.as_mut_ptr(), 2, -1) } < 0 {
            continue;
        }
        if pfd[0].revents != 0 {
            let mut st = [0u8; 4];
            if status_r.read_exact(&mut st).is_err() {
                return;
            }
            let st = i32::from_le_bytes(st);
            let msg = if libc::WIFEXITED(st) {
                ToStub::Exited(libc::WEXITSTATUS(st))
            } else if libc::WIFSIGNALED(st) {
                ToStub::Signaled(libc::WTERMSIG(st))
            } else if libc::WIFSTOPPED(st) {
                ToStub::Stopped(libc::WSTOPSIG(st))
            } else {
                continue;
            };
            let last = !matches!(msg, ToStub::Stopped(_));
            let _ = proto::write_frame(&mut conn, &msg);
            if last {
                return;
            }
        }
        if pfd[1].revents != 0 {
            match proto::read_frame::<_, ToServer>(&mut conn) {
                Ok(Some(ToServer::Signal(sig))) => {
                    let sig = job_control_signal(pid, sig);
                    if let Some(fd) = &pidfd {
                        // SAFETY: signalling our own child through its pidfd.
                        unsafe {
                            libc::syscall(
                                libc::SYS_pidfd_send_signal,
                                fd.as_raw_fd(),
                                sig,
                                std::ptr::null::<libc::siginfo_t>(),
                                0,
                            )
                        };
                    }
                }
                Ok(Some(ToServer::Request(_))) => {}
                // The stub is gone: the callee runs on, as an orphan would.
                Ok(None) | Err(_) => stub_open = false,
            }
        }
    }
}

/// The callee leads its own session, so its process group is orphaned and
/// the kernel discards a default-action SIGTSTP/SIGTTIN/SIGTTOU. Those
/// become SIGSTOP unless the callee catches them (its handler should run).
fn job_control_signal(pid: libc::pid_t, sig: i32) -> i32 {
    if ![libc::SIGTSTP, libc::SIGTTIN, libc::SIGTTOU].contains(&sig) {
        return sig;
    }
    let caught = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("SigCgt:"))
                .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
        })
        .is_some_and(|mask| mask & (1u64 << (sig - 1)) != 0);
    if caught { sig } else { libc::SIGSTOP }
}

/// Everything the child needs, built before clone: the child shares our
/// memory and runs beside other threads, so it may only make raw syscalls
/// (no malloc, no locks).
struct ChildPlan {
    exe: CString,
    // Own the strings the pointer arrays point into.
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const c_char>,
    _env: Vec<CString>,
    env_ptrs: Vec<*const c_char>,
    src: Vec<RawFd>,
    dst: Vec<RawFd>,
    dst_sorted: Vec<RawFd>,
    /// Indices into src/dst, by ascending dst.
    order: Vec<usize>,
    /// owner[fd] = index of the received fd sitting at number fd (or -1),
    /// for fd numbers up to the highest target.
    owner: Vec<i32>,
    ctty: Option<RawFd>,
    rlimits: Vec<(u32, libc::rlimit)>,
    nice: c_int,
    umask: libc::mode_t,
    cwd: CString,
    set_ids: bool,
    uid: u32,
    euid: u32,
    gid: u32,
    egid: u32,
    groups: Vec<libc::gid_t>,
    /// Dispositions that differ from the server's own (exec resets handled
    /// signals; only ignored ones survive).
    signals: Vec<(c_int, libc::sighandler_t)>,
    mask: libc::sigset_t,
}

/// The server's own state a child inherits, read once: a child only
/// changes what differs from it.
struct Inherited {
    ignored: u64,
    rlimits: Vec<(u32, libc::rlimit)>,
}

fn inherited() -> &'static Inherited {
    static I: std::sync::OnceLock<Inherited> = std::sync::OnceLock::new();
    I.get_or_init(|| {
        let mut ignored = 0;
        let mut rlimits = Vec::new();
        // SAFETY: read-only queries of our own process state.
        unsafe {
            for sig in 1..=64 {
                let mut act: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(sig, std::ptr::null(), &mut act) == 0
                    && act.sa_sigaction == libc::SIG_IGN
                {
                    ignored |= 1u64 << (sig - 1);
                }
            }
            for res in 0..=libc::RLIMIT_RTTIME {
                let mut rl: libc::rlimit = std::mem::zeroed();
                if libc::getrlimit(res as _, &mut rl) == 0 {
                    rlimits.push((res, rl));
                }
            }
        }
        Inherited { ignored, rlimits }
    })
}

fn cstrings(blob: &[u8]) -> Vec<CString> {
    proto::split_nul(blob)
        .map(|e| CString::new(e).expect("split_nul yields no NUL"))
        .collect()
}

fn with_null(v: &[CString]) -> Vec<*const c_char> {
    v.iter()
        .map(|c| c.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

impl ChildPlan {
    fn new(req: &Request, fds: &[OwnedFd], exe: &Path, set_ids: bool) -> Result<Self, String> {
        if req.fds.len() != fds.len() {
            return Err("fd count does not match the request".into());
        }
        let mut dst_sorted = req.fds.clone();
        dst_sorted.sort_unstable();
        if dst_sorted.windows(2).any(|w| w[0] == w[1]) || dst_sorted.first().is_some_and(|&f| f < 0)
        {
            return Err("the request lists an fd number twice or a negative one".into());
        }
        let argv = cstrings(&req.argv);
        let env = cstrings(&req.env);
        let mut mask = signal_set(&[]);
        for sig in 1..=64 {
            if req.sigmask & (1u64 << (sig - 1)) != 0 {
                // SAFETY: sigset manipulation on a local.
                unsafe { libc::sigaddset(&mut mask, sig) };
            }
        }
        let src: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let mut order: Vec<usize> = (0..src.len()).collect();
        order.sort_unstable_by_key(|&i| req.fds[i]);
        let above = dst_sorted.last().map_or(0, |&m| m as usize + 1);
        let mut owner = vec![-1i32; above];
        for (i, &s) in src.iter().enumerate() {
            if (s as usize) < above {
                owner[s as usize] = i as i32;
            }
        }
        let inh = inherited();
        let signals = (1..=64)
            .filter(|&sig| sig != libc::SIGKILL && sig != libc::SIGSTOP)
            .filter_map(|sig| {
                let bit = 1u64 << (sig - 1);
                match (req.sigignored & bit != 0, inh.ignored & bit != 0) {
                    (true, false) => Some((sig, libc::SIG_IGN)),
                    (false, true) => Some((sig, libc::SIG_DFL)),
                    _ => None,
                }
            })
            .collect();
        let rlimits = req
            .rlimits
            .iter()
            .map(|r| {
                (
                    r.resource,
                    libc::rlimit {
                        rlim_cur: r.soft,
                        rlim_max: r.hard,
                    },
                )
            })
            .filter(|(res, rl)| {
                !inh.rlimits.iter().any(|(r, o)| {
                    r == res && o.rlim_cur == rl.rlim_cur && o.rlim_max == rl.rlim_max
                })
            })
            .collect();
        Ok(ChildPlan {
            exe: CString::new(exe.as_os_str().as_bytes())
                .map_err(|_| format!("{} contains a NUL byte", exe.display()))?,
            argv_ptrs: with_null(&argv),
            _argv: argv,
            env_ptrs: with_null(&env),
            _env: env,
            src,
            dst: req.fds.clone(),
            dst_sorted,
            order,
            owner,
            ctty: req.ctty,
            rlimits,
            nice: req.nice,
            umask: req.umask,
            cwd: CString::new(req.cwd.clone()).unwrap_or_else(|_| c"/".into()),
            set_ids,
            uid: req.uid,
            euid: req.euid,
            gid: req.gid,
            egid: req.egid,
            groups: req.groups.clone(),
            signals,
            mask,
        })
    }
}

// Stages a failing child reports through the error pipe.
const STAGE_FDS: u32 = 1;
const STAGE_IDS: u32 = 2;
const STAGE_EXEC: u32 = 3;

/// Starts the callee (clone + exec). Returns its pid and the status pipe.
fn spawn(
    req: &Request,
    fds: &[OwnedFd],
    exe: &Path,
    root: bool,
    partition: &str,
) -> Result<(libc::pid_t, File), (i32, String)> {
    let mut plan = ChildPlan::new(req, fds, exe, root).map_err(|m| (EXIT_CANNOT_EXECUTE, m))?;
    let pipe = || -> Result<(File, File), (i32, String)> {
        let mut p = [0; 2];
        // SAFETY: pipe2 into a local array; both ends owned at once.
        if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err((
                EXIT_CANNOT_EXECUTE,
                format!(
                    "the RPE server cannot create a pipe: {}",
                    io::Error::last_os_error()
                ),
            ));
        }
        Ok(unsafe { (File::from_raw_fd(p[0]), File::from_raw_fd(p[1])) })
    };
    let (mut err_r, err_w) = pipe()?;
    let (status_r, status_w) = pipe()?;
    let pid = {
        let mut g = CHILDREN.lock().unwrap();
        // vfork-style: the child borrows our memory until it execs, so
        // nothing is copied (fork copied the page tables of the whole
        // server) and this thread waits meanwhile. It runs on a stack of
        // its own and touches only the plan prepared above.
        let mut stack = vec![0u8; CHILD_STACK];
        let mut args = ChildArgs {
            plan: &mut plan,
            err_w: err_w.as_raw_fd(),
        };
        // SAFETY: the stack outlives the child's use of it (we are
        // suspended until it execs or exits); the top is 16-byte aligned.
        let pid = unsafe {
            let top = stack.as_mut_ptr().add(CHILD_STACK) as usize & !15;
            libc::clone(
                child_entry,
                top as *mut libc::c_void,
                libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                (&mut args as *mut ChildArgs).cast(),
            )
        };
        drop(stack);
        if pid < 0 {
            return Err((
                EXIT_CANNOT_EXECUTE,
                format!(
                    "the RPE server cannot start a process: {}",
                    io::Error::last_os_error()
                ),
            ));
        }
        // Registered before the reaper can look it up: it needs this lock.
        g.get_or_insert_with(HashMap::new).insert(pid, status_w);
        pid
    };
    drop(err_w);
    let mut report = [0u8; 8];
    let n = read_full(&mut err_r, &mut report);
    if n == 0 {
        return Ok((pid, status_r));
    }
    let stage = u32::from_le_bytes(report[0..4].try_into().unwrap());
    let errno = i32::from_le_bytes(report[4..8].try_into().unwrap());
    let err = io::Error::from_raw_os_error(errno);
    let exe = exe.display();
    Err(match stage {
        STAGE_EXEC if errno == libc::ENOENT => (
            EXIT_NOT_FOUND,
            format!("{exe} is not found in the callee partition (server for {partition}): {err}"),
        ),
        STAGE_EXEC => (
            EXIT_CANNOT_EXECUTE,
            format!("cannot execute {exe} in the callee partition (server for {partition}): {err}"),
        ),
        STAGE_IDS => (
            EXIT_CANNOT_EXECUTE,
            format!(
                "cannot take uid {} gid {} groups {:?} to run {exe}: {err}",
                req.euid, req.egid, req.groups
            ),
        ),
        _ => (
            EXIT_CANNOT_EXECUTE,
            format!("cannot place the file descriptors for {exe}: {err}"),
        ),
    })
}

/// Closes received fds, a run of consecutive numbers per syscall.
fn close_all(fds: Vec<OwnedFd>) {
    let mut raw: Vec<RawFd> = fds
        .into_iter()
        .map(std::os::fd::IntoRawFd::into_raw_fd)
        .collect();
    raw.sort_unstable();
    let mut k = 0;
    while k < raw.len() {
        let mut e = k;
        while e + 1 < raw.len() && raw[e + 1] == raw[e] + 1 {
            e += 1;
        }
        // SAFETY: we own these fds (taken out of their OwnedFds above).
        if unsafe { close_range(raw[k] as u32, raw[e] as u32, 0) } != 0 {
            for &fd in &raw[k..=e] {
                unsafe { libc::close(fd) };
            }
        }
        k = e + 1;
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> usize {
    let mut got = 0;
    while got < buf.len() {
        match f.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    got
}

/// Stack of a callee between clone and exec: `child` keeps little on it.
const CHILD_STACK: usize = 256 * 1024;

struct ChildArgs {
    plan: *mut ChildPlan,
    err_w: RawFd,
}

extern "C" fn child_entry(arg: *mut libc::c_void) -> c_int {
    // SAFETY: `arg` is the ChildArgs `spawn` passed to clone, alive while
    // the parent waits for our exec.
    unsafe {
        let args = &*(arg as *const ChildArgs);
        child(&mut *args.plan, args.err_w)
    }
}

/// In the cloned child: set the process up like the stub and exec.
///
/// # Safety
/// Only in the child of `spawn`'s clone; uses nothing but raw syscalls.
unsafe fn child(p: &mut ChildPlan, err_w: RawFd) -> ! {
    unsafe fn fail(err_w: RawFd, stage: u32) -> ! {
        unsafe {
            let errno = *libc::__errno_location();
            let mut b = [0u8; 8];
            b[0..4].copy_from_slice(&stage.to_le_bytes());
            b[4..8].copy_from_slice(&errno.to_le_bytes());
            libc::write(err_w, b.as_ptr().cast(), 8);
            libc::_exit(127)
        }
    }
    unsafe {
        let above = p.dst_sorted.last().map_or(0, |&m| m + 1);
        let mut err_w = err_w;
        if err_w < above {
            err_w = libc::fcntl(err_w, libc::F_DUPFD_CLOEXEC, above);
            if err_w < 0 {
                libc::_exit(127);
            }
        }
        // Place fds by ascending target; a received fd still waiting to be
        // placed that sits on the target is moved out of the way first. In
        // the usual case (received fds numbered a little above their
        // targets) nothing moves.
        for k in 0..p.order.len() {
            let i = p.order[k];
            let d = p.dst[i];
            let o = p.owner[d as usize];
            if o >= 0 && o as usize != i {
                let j = o as usize;
                let n = libc::fcntl(p.src[j], libc::F_DUPFD_CLOEXEC, above);
                if n < 0 {
                    fail(err_w, STAGE_FDS);
                }
                p.src[j] = n;
                p.owner[d as usize] = -1;
            }
            let r = if p.src[i] == d {
                libc::fcntl(d, libc::F_SETFD, 0)
            } else {
                libc::dup2(p.src[i], d)
            };
            if r < 0 {
                fail(err_w, STAGE_FDS);
            }
            if let Some(slot) = p.owner.get_mut(p.src[i] as usize) {
                *slot = -1;
            }
        }
        // Close what the stub did not have open below the highest target,
        // and everything of ours above it at exec.
        let mut lo: RawFd = 0;
        for &t in &p.dst_sorted {
            if t > lo {
                close_range(lo as u32, (t - 1) as u32, 0);
            }
            lo = t + 1;
        }
        if close_range(above as u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC as c_int) != 0 {
            for fd in above..above.max(3) {
                libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
            }
        }
        libc::setsid();
        if let Some(tty) = p.ctty {
            // The pty's slave by now (pty_for), which no session holds.
            libc::ioctl(tty, libc::TIOCSCTTY, 0);
        }
        for (res, rl) in &p.rlimits {
            libc::setrlimit(*res as _, rl);
        }
        libc::setpriority(libc::PRIO_PROCESS, 0, p.nice);
        libc::umask(p.umask);
        if libc::chdir(p.cwd.as_ptr()) != 0 {
            // The caller's cwd may not exist in this partition.
            libc::chdir(c"/".as_ptr());
        }
        if p.set_ids
            && (libc::setgroups(p.groups.len(), p.groups.as_ptr()) != 0
                || libc::setresgid(p.gid, p.egid, p.egid) != 0
                || libc::setresuid(p.uid, p.euid, p.euid) != 0)
        {
            fail(err_w, STAGE_IDS);
        }
        for &(sig, h) in &p.signals {
            libc::signal(sig, h);
        }
        libc::sigprocmask(libc::SIG_SETMASK, &p.mask, std::ptr::null_mut());
        libc::execve(p.exe.as_ptr(), p.argv_ptrs.as_ptr(), p.env_ptrs.as_ptr());
        fail(err_w, STAGE_EXEC)
    }
}

unsafe fn close_range(first: u32, last: u32, flags: c_int) -> c_int {
    unsafe { libc::syscall(libc::SYS_close_range, first, last, flags) as c_int }
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
