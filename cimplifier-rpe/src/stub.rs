//! The stub: sits at the callee's path in the caller partition, ships the
//! process state to the server, relays signals, and mirrors the exit status.
//!
//! It runs without Rust's usual start-up (`#![no_main]` in the binary)
//! because that start-up reopens closed fds 0-2 on /dev/null and ignores
//! SIGPIPE, both of which the callee would then inherit.

use crate::config::{STUB_CONFIG_DEFAULT, STUB_CONFIG_NAME, StubConfig};
use crate::fdpass::{recv_fds, send_fds};
use crate::proto::{self, EXIT_CANNOT_EXECUTE, EXIT_LOST, Request, Rlimit, ToServer, ToStub};
use crate::sys::{close_sorted, signal_set};
use std::ffi::{CStr, OsStr, c_char, c_int};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};

/// Signals the stub catches and forwards to the callee.
pub const RELAYED: &[c_int] = &[
    libc::SIGHUP,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGTERM,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGWINCH,
    libc::SIGALRM,
    libc::SIGPIPE,
    libc::SIGCONT,
    libc::SIGTSTP,
];

static SIG_PIPE_W: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(sig: c_int) {
    let b = sig as u8;
    // SAFETY: write is async-signal-safe; errno is saved around it.
    unsafe {
        let e = *libc::__errno_location();
        libc::write(
            SIG_PIPE_W.load(Ordering::Relaxed),
            (&b as *const u8).cast(),
            1,
        );
        *libc::__errno_location() = e;
    }
}

/// The stub's terminal and its settings before the relay made it raw.
static SAVED_TTY: std::sync::Mutex<Option<(RawFd, libc::termios)>> = std::sync::Mutex::new(None);

/// Puts the stub's terminal back as it was (before exiting or stopping).
fn restore_tty() {
    if let Some((fd, tio)) = *SAVED_TTY.lock().unwrap_or_else(|e| e.into_inner()) {
        // SAFETY: restoring saved settings on our own terminal fd.
        unsafe { libc::tcsetattr(fd, libc::TCSADRAIN, &tio) };
    }
}

/// Relays between the stub's controlling terminal and the pty the callee
/// has as its own: the callee's line discipline does the work, so the
/// stub's terminal is raw meanwhile, as under `ssh -t` or `docker exec -t`.
struct TtyRelay {
    tty: OwnedFd,
    master: OwnedFd,
    /// Reading the terminal: only while the stub's job is in the foreground.
    tty_open: bool,
    master_open: bool,
}

impl TtyRelay {
    fn new(ctty: RawFd, master: OwnedFd) -> io::Result<Self> {
        // SAFETY: duplicating and querying our own terminal fd.
        let tty = unsafe {
            let fd = libc::fcntl(ctty, libc::F_DUPFD_CLOEXEC, 3);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            OwnedFd::from_raw_fd(fd)
        };
        let mut relay = TtyRelay {
            tty,
            master,
            tty_open: false,
            master_open: true,
        };
        relay.make_raw();
        Ok(relay)
    }

    /// Raw mode, when the stub's job owns the terminal.
    fn make_raw(&mut self) {
        let fd = self.tty.as_raw_fd();
        // SAFETY: termios calls on our own terminal fd.
        unsafe {
            if libc::tcgetpgrp(fd) != libc::getpgrp() {
                self.tty_open = false;
                return;
            }
            let mut tio: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(fd, &mut tio) == 0 {
                SAVED_TTY
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .replace((fd, tio));
                let mut raw = tio;
                libc::cfmakeraw(&mut raw);
                libc::tcsetattr(fd, libc::TCSADRAIN, &raw);
            }
        }
        self.tty_open = true;
    }

    fn copy_window_size(&self) {
        // SAFETY: winsize ioctls on fds we hold; the kernel sends SIGWINCH
        // to the pty's foreground process group.
        unsafe {
            let mut ws: libc::winsize = std::mem::zeroed();
            if libc::ioctl(self.tty.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) == 0 {
                libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &ws);
            }
        }
    }

    /// Moves what one side has to the other; false at end of input.
    fn pump(from: RawFd, to: RawFd) -> bool {
        let mut buf = [0u8; 4096];
        // SAFETY: reads and writes into a local buffer.
        unsafe {
            let n = libc::read(from, buf.as_mut_ptr().cast(), buf.len());
            if n < 0 {
                let e = io::Error::last_os_error().kind();
                return matches!(e, io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock);
            }
            if n == 0 {
                return false;
            }
            let mut off = 0;
            while off < n as usize {
                let w = libc::write(to, buf[off..].as_ptr().cast(), n as usize - off);
                if w < 0 {
                    if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    return false;
                }
                off += w as usize;
            }
        }
        true
    }

    /// The callee's last output, then the terminal as it was.
    fn finish(&mut self) {
        let m = self.master.as_raw_fd();
        // SAFETY: non-blocking reads of the rest of the pty's output.
        unsafe {
            libc::fcntl(
                m,
                libc::F_SETFL,
                libc::fcntl(m, libc::F_GETFL) | libc::O_NONBLOCK,
            );
        }
        for _ in 0..1024 {
            let mut pfd = libc::pollfd {
                fd: m,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: poll on one valid fd, without waiting.
            if unsafe { libc::poll(&mut pfd, 1, 0) } <= 0
                || pfd.revents & libc::POLLIN == 0
                || !Self::pump(m, self.tty.as_raw_fd())
            {
                break;
            }
        }
        restore_tty();
    }
}

fn die(path: &str, msg: &str, code: i32) -> ! {
    restore_tty();
    let line = format!("cimplifier-rpe-stub: {path}: {msg}\n");
    // SAFETY: plain write to fd 2, which may be closed; then exit.
    unsafe {
        libc::write(2, line.as_ptr().cast(), line.len());
        libc::_exit(code)
    }
}

/// A small /proc file in one read (std's growing reads take several).
fn read_proc(path: &str) -> Option<String> {
    use std::io::Read;
    let mut s = String::with_capacity(4096);
    std::fs::File::open(path)
        .ok()?
        .read_to_string(&mut s)
        .ok()?;
    Some(s)
}

/// Open fds, sorted. `bound` is above every open fd (the fd table's size,
/// FDSize in /proc/self/status); without it, RLIMIT_NOFILE.
///
/// One poll over every number finds them: a closed fd answers POLLNVAL.
/// Listing /proc/self/fd instead costs a dentry and an inode per fd, which
/// dominated calls with many fds.
fn open_fds(bound: Option<u64>) -> Vec<RawFd> {
    let mut fds = Vec::new();
    // SAFETY: getrlimit and poll into locals.
    unsafe {
        let mut rl: libc::rlimit = std::mem::zeroed();
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl);
        // poll refuses more entries than RLIMIT_NOFILE.
        let chunk = rl.rlim_cur.clamp(1, 4096) as usize;
        let max = bound.unwrap_or(rl.rlim_cur).min(1 << 20) as RawFd;
        let mut pfds: Vec<libc::pollfd> = Vec::with_capacity(chunk);
        let mut first = 0;
        while first < max {
            let n = chunk.min((max - first) as usize);
            pfds.clear();
            pfds.extend((0..n).map(|i| libc::pollfd {
                fd: first + i as RawFd,
                events: 0,
                revents: 0,
            }));
            if libc::poll(pfds.as_mut_ptr(), n as libc::nfds_t, 0) < 0 {
                // Not expected; probe one by one instead.
                for fd in first..first + n as RawFd {
                    if libc::fcntl(fd, libc::F_GETFD) >= 0 {
                        fds.push(fd);
                    }
                }
            } else {
                fds.extend(
                    pfds.iter()
                        .filter(|p| p.revents & libc::POLLNVAL == 0)
                        .map(|p| p.fd),
                );
            }
            first += n as RawFd;
        }
    }
    fds
}

/// The fd that is our controlling terminal, if any.
fn controlling_tty(fds: &[RawFd]) -> Option<RawFd> {
    // tty_nr 0 in /proc/self/stat: no controlling terminal, no need to
    // probe every fd (1000 ioctls at 1000 fds).
    let tty_nr = read_proc("/proc/self/stat").and_then(|s| {
        let rest = &s[s.rfind(')')? + 2..];
        rest.split(' ').nth(4)?.parse::<i64>().ok()
    });
    if tty_nr == Some(0) {
        return None;
    }
    // SAFETY: ioctls on fds we hold; TIOCGSID only succeeds on our ctty
    // (or a pty master, hence the session comparison).
    unsafe {
        let me = libc::getsid(0);
        fds.iter().copied().find(|&fd| {
            let mut sid: libc::pid_t = 0;
            libc::isatty(fd) == 1 && libc::ioctl(fd, libc::TIOCGSID, &mut sid) == 0 && sid == me
        })
    }
}

fn sigbit(sig: c_int) -> u64 {
    1u64 << (sig - 1)
}

/// Collects the process state the callee would have inherited.
///
/// # Safety
/// `argv`/`envp` must be the NUL-terminated arrays given to `main`.
unsafe fn capture(argc: c_int, argv: *const *const c_char, envp: *const *const c_char) -> Request {
    // Read before the fds are listed: reading opens one for a moment.
    let status = read_proc("/proc/self/status");
    let field = |name: &str, radix: u32| {
        status.as_deref().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| u64::from_str_radix(v.trim(), radix).ok())
        })
    };
    let mut req = Request {
        fds: open_fds(field("FDSize:", 10)),
        ..Default::default()
    };
    req.ctty = controlling_tty(&req.fds);
    // SAFETY: read-only queries of our own process state.
    unsafe {
        for i in 0..argc as usize {
            let a = *argv.add(i);
            if a.is_null() {
                break;
            }
            req.argv
                .extend_from_slice(CStr::from_ptr(a).to_bytes_with_nul());
        }
        let mut e = envp;
        while !e.is_null() && !(*e).is_null() {
            req.env
                .extend_from_slice(CStr::from_ptr(*e).to_bytes_with_nul());
            e = e.add(1);
        }
        if let (Some(blk), Some(ign)) = (field("SigBlk:", 16), field("SigIgn:", 16)) {
            // One read instead of 129 calls.
            req.sigmask = blk;
            req.sigignored = ign;
        } else {
            signal_masks(&mut req);
        }
        let m = libc::umask(0o022);
        libc::umask(m);
        req.umask = m;
        *libc::__errno_location() = 0;
        req.nice = libc::getpriority(libc::PRIO_PROCESS, 0);
        for resource in 0..=libc::RLIMIT_RTTIME {
            let mut rl: libc::rlimit = std::mem::zeroed();
            if libc::getrlimit(resource as _, &mut rl) == 0 {
                req.rlimits.push(Rlimit {
                    resource,
                    soft: rl.rlim_cur,
                    hard: rl.rlim_max,
                });
            }
        }
        req.uid = libc::getuid();
        req.euid = libc::geteuid();
        req.gid = libc::getgid();
        req.egid = libc::getegid();
        let n = libc::getgroups(0, std::ptr::null_mut());
        if n > 0 {
            let mut g = vec![0; n as usize];
            let n = libc::getgroups(n, g.as_mut_ptr());
            g.truncate(n.max(0) as usize);
            req.groups = g;
        }
    }
    req.cwd = std::env::current_dir()
        .map(|p| p.into_os_string().into_vec())
        .unwrap_or_default();
    let argv0 = req.argv.split(|&b| b == 0).next().unwrap_or_default();
    req.path = invoked_path(&req.cwd, argv0);
    req
}

use std::os::unix::ffi::OsStringExt;

/// The same without /proc.
fn signal_masks(req: &mut Request) {
    // SAFETY: read-only queries of our signal state.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigprocmask(libc::SIG_BLOCK, std::ptr::null(), &mut set);
        for sig in 1..=64 {
            if libc::sigismember(&set, sig) == 1 {
                req.sigmask |= sigbit(sig);
            }
            let mut act: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut act) == 0
                && act.sa_sigaction == libc::SIG_IGN
            {
                req.sigignored |= sigbit(sig);
            }
        }
    }
}

/// The program the kernel ran, made absolute: AT_EXECFN, the file given
/// to execve, unless that file is not this stub. Then the kernel ran the
/// stub as the interpreter of a script (`#!` or binfmt_misc) that
/// AT_EXECFN names, argv is [interpreter, (arg), script, args...], and the
/// call is the interpreter's: asking for the script would ask the server
/// for a program the caller never ran as such.
fn invoked_path(cwd: &[u8], argv0: &[u8]) -> Vec<u8> {
    // SAFETY: AT_EXECFN points at a NUL-terminated string on our stack.
    let execfn = unsafe {
        let p = libc::getauxval(libc::AT_EXECFN) as *const c_char;
        if p.is_null() {
            Vec::new()
        } else {
            CStr::from_ptr(p).to_bytes().to_vec()
        }
    };
    let interpreted = !execfn.is_empty() && !is_own_file(Path::new(OsStr::from_bytes(&execfn)));
    called_path(&execfn, argv0, interpreted, cwd)
}

/// Whether `path` is the file this process runs. Without /proc, a file
/// that starts with `#!` is a script the stub interprets.
fn is_own_file(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(file) = std::fs::metadata(path) else {
        return true;
    };
    match std::fs::metadata("/proc/self/exe") {
        Ok(me) => (file.dev(), file.ino()) == (me.dev(), me.ino()),
        Err(_) => {
            let mut head = [0u8; 2];
            !std::fs::File::open(path)
                .and_then(|mut f| io::Read::read_exact(&mut f, &mut head))
                .is_ok_and(|()| &head == b"#!")
        }
    }
}

/// `execfn`, or `argv0` when the stub `interpreted` a script, made
/// absolute against `cwd`.
fn called_path(execfn: &[u8], argv0: &[u8], interpreted: bool, cwd: &[u8]) -> Vec<u8> {
    let ran = if interpreted && !argv0.is_empty() {
        argv0
    } else {
        execfn
    };
    if ran.first() == Some(&b'/') || cwd.is_empty() {
        return ran.to_vec();
    }
    let rel = ran.strip_prefix(b"./").unwrap_or(ran);
    let mut p = cwd.to_vec();
    if p.last() != Some(&b'/') {
        p.push(b'/');
    }
    p.extend_from_slice(rel);
    p
}

/// The stub's configuration: next to the stub binary, else the default.
fn find_config(exe: &Path) -> Result<(PathBuf, StubConfig), String> {
    let mut tried = Vec::new();
    if let Some(dir) = exe.parent() {
        let p = dir.join(STUB_CONFIG_NAME);
        if p.exists() {
            return StubConfig::load(&p).map(|c| (p, c));
        }
        tried.push(p);
    }
    let p = PathBuf::from(STUB_CONFIG_DEFAULT);
    if p.exists() {
        return StubConfig::load(&p).map(|c| (p, c));
    }
    tried.push(p);
    Err(format!(
        "no RPE stub configuration; looked for {}; write one naming the server socket \
         (socket = \"/run/cimplifier-rpe/<partition>/rpe.sock\")",
        tried
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(" and ")
    ))
}

fn install_handlers(ignored: u64) -> io::Result<RawFd> {
    let mut p = [0; 2];
    // SAFETY: plain syscalls; the handler only writes to the pipe.
    unsafe {
        if libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) != 0 {
            return Err(io::Error::last_os_error());
        }
        SIG_PIPE_W.store(p[1], Ordering::Relaxed);
        let mut unblock: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut unblock);
        for &sig in RELAYED {
            // An ignored signal stays ignored, as it would for the callee.
            if ignored & sigbit(sig) != 0 {
                continue;
            }
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = on_signal as *const () as usize;
            act.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut act.sa_mask);
            libc::sigaction(sig, &act, std::ptr::null_mut());
            libc::sigaddset(&mut unblock, sig);
        }
        // Blocked signals stay blocked in the callee (sigmask is forwarded);
        // the stub itself must see them to pass them on.
        libc::sigprocmask(libc::SIG_UNBLOCK, &unblock, std::ptr::null_mut());
    }
    Ok(p[0])
}

/// Die the way the callee died, so the caller's wait status matches.
fn die_by_signal(sig: c_int) -> ! {
    restore_tty();
    // SAFETY: resetting our own signal state and raising; no core file of
    // the stub (the callee already dumped its own if it was meant to).
    unsafe {
        let rl = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::setrlimit(libc::RLIMIT_CORE, &rl);
        libc::signal(sig, libc::SIG_DFL);
        libc::sigprocmask(libc::SIG_UNBLOCK, &signal_set(&[sig]), std::ptr::null_mut());
        libc::kill(libc::getpid(), sig);
        // Only reached for signals whose default is not to terminate.
        libc::_exit(128 + sig)
    }
}

/// Entry point of the stub binary.
///
/// # Safety
/// Must be called from `main` with its own `argc`/`argv`/`envp`, before
/// anything else opened a file descriptor or changed signal dispositions.
pub unsafe fn run(argc: c_int, argv: *const *const c_char, envp: *const *const c_char) -> c_int {
    // SAFETY: forwarded from the caller's contract.
    let req = unsafe { capture(argc, argv, envp) };
    let shown = String::from_utf8_lossy(&req.path).into_owned();
    let sig_r = install_handlers(req.sigignored).unwrap_or_else(|e| {
        die(
            &shown,
            &format!("cannot create a pipe: {e}"),
            EXIT_CANNOT_EXECUTE,
        )
    });
    let invoked = PathBuf::from(std::ffi::OsStr::from_bytes(&req.path));
    let exe = std::fs::read_link("/proc/self/exe").unwrap_or_else(|_| invoked.clone());
    let (cfg_path, cfg) =
        find_config(&exe).unwrap_or_else(|e| die(&shown, &e, EXIT_CANNOT_EXECUTE));
    let socket = cfg.socket_for(&invoked, &exe).unwrap_or_else(|| {
        die(
            &shown,
            &format!(
                "{} has no route for {} (nor for {}) and no default socket",
                cfg_path.display(),
                invoked.display(),
                exe.display()
            ),
            EXIT_CANNOT_EXECUTE,
        )
    });
    let mut sock = connect(socket, cfg.connect_timeout_ms).unwrap_or_else(|e| {
        die(
            &shown,
            &format!(
                "cannot reach the RPE server at {} (from {}): {e}; is the partition's server running \
                 and its socket volume mounted?",
                socket.display(),
                cfg_path.display()
            ),
            EXIT_CANNOT_EXECUTE,
        )
    });
    let fds = req.fds.clone();
    let ctty = req.ctty;
    let mut tty: Option<TtyRelay> = None;
    let sent = proto::write_frame(&mut sock, &ToServer::Request(Box::new(req)))
        .and_then(|()| send_fds(sock.as_raw_fd(), &fds));
    if let Err(e) = sent {
        die(
            &shown,
            &format!("cannot send the request to {}: {e}", socket.display()),
            EXIT_CANNOT_EXECUTE,
        );
    }
    let mut started = false;
    loop {
        let pollfd = |fd: RawFd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // poll skips negative fds.
        let (tty_fd, master_fd) = match &tty {
            Some(t) => (
                if t.tty_open { t.tty.as_raw_fd() } else { -1 },
                if t.master_open {
                    t.master.as_raw_fd()
                } else {
                    -1
                },
            ),
            None => (-1, -1),
        };
        let mut pfd = [
            pollfd(sock.as_raw_fd()),
            pollfd(sig_r),
            pollfd(tty_fd),
            pollfd(master_fd),
        ];
        // SAFETY: poll on valid fds (or -1).
        if unsafe { libc::poll(pfd.as_mut_ptr(), 4, -1) } < 0 {
            continue; // EINTR: the handler wrote to the pipe.
        }
        if pfd[1].revents != 0 {
            let mut buf = [0u8; 64];
            // SAFETY: non-blocking read into a local buffer.
            let n = unsafe { libc::read(sig_r, buf.as_mut_ptr().cast(), buf.len()) };
            for &sig in &buf[..n.max(0) as usize] {
                if let (Some(t), libc::SIGWINCH) = (&tty, sig as i32) {
                    // The pty signals its foreground group itself.
                    t.copy_window_size();
                    continue;
                }
                // A dead server shows up as EOF on the socket below.
                let _ = proto::write_frame(&mut sock, &ToServer::Signal(sig as i32));
            }
        }
        if let Some(t) = &mut tty {
            if pfd[2].revents != 0 {
                t.tty_open = TtyRelay::pump(t.tty.as_raw_fd(), t.master.as_raw_fd());
            }
            if pfd[3].revents != 0 {
                t.master_open = TtyRelay::pump(t.master.as_raw_fd(), t.tty.as_raw_fd());
            }
        }
        if pfd[0].revents == 0 {
            continue;
        }
        let msg: Option<ToStub> = match proto::read_frame(&mut sock) {
            Ok(m) => m,
            Err(e) => die(
                &shown,
                &format!("bad reply from the RPE server: {e}"),
                code_lost(started),
            ),
        };
        match msg {
            None => die(
                &shown,
                &format!(
                    "the RPE server at {} closed the connection before the callee finished",
                    socket.display()
                ),
                code_lost(started),
            ),
            Some(ToStub::Started { .. }) => {
                started = true;
                // The callee owns the fds now; holding them would keep pipes
                // open past the callee's own close.
                // SAFETY: inherited fds the callee now owns; not used after.
                unsafe { close_sorted(&fds) };
            }
            Some(ToStub::Pty) => {
                let master = recv_fds(sock.as_raw_fd(), 1)
                    .ok()
                    .and_then(|mut m| m.pop())
                    .unwrap_or_else(|| {
                        die(&shown, "the RPE server sent no pty", EXIT_CANNOT_EXECUTE)
                    });
                let Some(ctty) = ctty else {
                    die(
                        &shown,
                        "a pty for a call without a terminal",
                        EXIT_CANNOT_EXECUTE,
                    )
                };
                tty = Some(TtyRelay::new(ctty, master).unwrap_or_else(|e| {
                    die(
                        &shown,
                        &format!("cannot relay the terminal: {e}"),
                        EXIT_CANNOT_EXECUTE,
                    )
                }));
            }
            Some(ToStub::Stopped(_)) => {
                restore_tty();
                // SAFETY: stopping ourselves; SIGCONT is relayed on the way back.
                unsafe { libc::kill(libc::getpid(), libc::SIGSTOP) };
                if let Some(t) = &mut tty {
                    t.make_raw();
                }
            }
            Some(ToStub::Exited(code)) => {
                if let Some(t) = &mut tty {
                    t.finish();
                }
                return code;
            }
            Some(ToStub::Signaled(sig)) => {
                if let Some(t) = &mut tty {
                    t.finish();
                }
                die_by_signal(sig)
            }
            Some(ToStub::Refused { code, message }) => die(&shown, &message, code),
        }
    }
}

/// Connects, retrying for up to `timeout_ms` while the socket is missing or
/// refuses: the callee's server may still be starting.
fn connect(socket: &Path, timeout_ms: u64) -> io::Result<UnixStream> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(timeout_ms);
    loop {
        match UnixStream::connect(socket) {
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                ) && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

fn code_lost(started: bool) -> i32 {
    if started {
        EXIT_LOST
    } else {
        EXIT_CANNOT_EXECUTE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_stub_run_as_an_interpreter_names_the_interpreter() {
        // execve("./job") of "#!/usr/bin/perl -w": argv[0] is the interpreter.
        assert_eq!(
            called_path(b"./job", b"/usr/bin/perl", true, b"/srv"),
            b"/usr/bin/perl"
        );
        // A relative #! interpreter is looked up from the caller's cwd.
        assert_eq!(
            called_path(b"/srv/job", b"bin/interp", true, b"/srv"),
            b"/srv/bin/interp"
        );
        // Run as itself: the path given to execve, whatever argv[0] says.
        assert_eq!(
            called_path(b"./sort", b"anything", false, b"/usr/bin"),
            b"/usr/bin/sort"
        );
    }

    #[test]
    fn a_script_is_not_the_running_file() {
        let me = std::fs::read_link("/proc/self/exe").unwrap();
        assert!(is_own_file(&me));
        let dir = std::env::temp_dir().join(format!("rpe-own-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("job");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(!is_own_file(&script));
        let link = dir.join("me");
        std::os::unix::fs::symlink(&me, &link).unwrap();
        let linked = is_own_file(&link);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(linked, "a symlink to the stub is the stub");
    }
}
