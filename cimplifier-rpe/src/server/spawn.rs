//! Starting the callee: clone, then in the child the caller's fds,
//! identity, limits and signal mask, then exec.

use super::CHILDREN;
use crate::proto::{self, EXIT_CANNOT_EXECUTE, EXIT_NOT_FOUND, Request};
use crate::sys::{close_range, close_sorted, signal_set};
use std::collections::HashMap;
use std::ffi::{CString, c_char, c_int};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

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
pub(super) struct Inherited {
    ignored: u64,
    rlimits: Vec<(u32, libc::rlimit)>,
}

pub(super) fn inherited() -> &'static Inherited {
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
        // Only received fds below the highest target can be in the way:
        // sized by those, not by a target number the caller chose.
        let size = src
            .iter()
            .map(|&s| s as usize + 1)
            .max()
            .unwrap_or(0)
            .min(above);
        let mut owner = vec![-1i32; size];
        for (i, &s) in src.iter().enumerate() {
            if (s as usize) < size {
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
pub(super) fn spawn(
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
    // The reaper (PID 1) writes here and must never block.
    // SAFETY: setting a flag on our own fd.
    unsafe { libc::fcntl(status_w.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
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
pub(super) fn close_all(fds: Vec<OwnedFd>) {
    let mut raw: Vec<RawFd> = fds
        .into_iter()
        .map(std::os::fd::IntoRawFd::into_raw_fd)
        .collect();
    raw.sort_unstable();
    // SAFETY: we own these fds (taken out of their OwnedFds above).
    unsafe { close_sorted(&raw) };
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
            let o = p.owner.get(d as usize).copied().unwrap_or(-1);
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
        // As the caller, not as root: a limit or priority the caller
        // could not set itself fails here (EPERM) and the callee keeps
        // the server's.
        for (res, rl) in &p.rlimits {
            libc::setrlimit(*res as _, rl);
        }
        libc::setpriority(libc::PRIO_PROCESS, 0, p.nice);
        for &(sig, h) in &p.signals {
            libc::signal(sig, h);
        }
        libc::sigprocmask(libc::SIG_SETMASK, &p.mask, std::ptr::null_mut());
        libc::execve(p.exe.as_ptr(), p.argv_ptrs.as_ptr(), p.env_ptrs.as_ptr());
        fail(err_w, STAGE_EXEC)
    }
}
