//! A running call: the callee's terminal, and the relay of signals and
//! the exit status between stub and callee.

use crate::proto::{self, Request, ToServer, ToStub};
use std::ffi::c_char;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

/// A pty for a caller whose controlling terminal came with the call: that
/// terminal is the caller session's, so the callee cannot make it its own.
/// Every received fd on the caller's terminal is replaced by the pty's
/// slave (with the same termios and window size), which the callee's new
/// session then takes as its controlling terminal. Returns the master.
pub(super) fn pty_for(req: &Request, fds: &mut [OwnedFd]) -> Result<Option<OwnedFd>, String> {
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
pub(super) fn relay(conn: &UnixStream, pid: libc::pid_t, mut status_r: File) {
    let mut conn = conn;
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
