//! System calls the stub and the server both make, wrapped once.

use std::ffi::c_int;
use std::os::fd::RawFd;

/// `close_range(2)`: closes (or with `CLOSE_RANGE_CLOEXEC` marks) the fds
/// `first..=last`. Async-signal-safe: a forked child may call it.
///
/// # Safety
/// The caller owns the fds in the range, and nothing uses them after.
pub unsafe fn close_range(first: u32, last: u32, flags: c_int) -> c_int {
    unsafe { libc::syscall(libc::SYS_close_range, first, last, flags) as c_int }
}

/// Closes the sorted `fds`, one `close_range` per run of consecutive
/// numbers (one `close` each where that fails).
///
/// # Safety
/// The caller owns `fds`, and nothing uses them after.
pub unsafe fn close_sorted(fds: &[RawFd]) {
    let mut k = 0;
    while k < fds.len() {
        let mut e = k;
        while e + 1 < fds.len() && fds[e + 1] == fds[e] + 1 {
            e += 1;
        }
        // SAFETY: the caller owns them.
        unsafe {
            if close_range(fds[k] as u32, fds[e] as u32, 0) != 0 {
                for &fd in &fds[k..=e] {
                    libc::close(fd);
                }
            }
        }
        k = e + 1;
    }
}

/// The signal set holding `sigs`.
pub fn signal_set(sigs: &[c_int]) -> libc::sigset_t {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsRawFd, IntoRawFd};

    fn inode(fd: RawFd) -> Option<libc::ino_t> {
        // SAFETY: fstat into a local.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        (unsafe { libc::fstat(fd, &mut st) } == 0).then_some(st.st_ino)
    }

    #[test]
    fn close_sorted_closes_runs_and_single_fds_only() {
        // Other tests' threads open fds meanwhile, and may get a number
        // closed here: an fd is ours while it is this file.
        let file = tempfile();
        let ours = inode(file.as_raw_fd());
        let mut fds: Vec<RawFd> = (0..7)
            .map(|_| file.try_clone().unwrap().into_raw_fd())
            .collect();
        fds.sort_unstable();
        let keep = fds.remove(3);
        // SAFETY: opened above, and not used after.
        unsafe { close_sorted(&fds) };
        for fd in &fds {
            assert_ne!(inode(*fd), ours, "fd {fd} is still open");
        }
        assert_eq!(inode(keep), ours, "fd {keep} stays open");
        // SAFETY: ours.
        unsafe { libc::close(keep) };
    }

    fn tempfile() -> std::fs::File {
        let path = std::env::temp_dir().join(format!("rpe-sys-test-{}", std::process::id()));
        let f = std::fs::File::create(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        f
    }

    #[test]
    fn signal_set_holds_what_it_is_given() {
        let set = signal_set(&[libc::SIGTERM, libc::SIGCHLD]);
        // SAFETY: reading a local set.
        unsafe {
            assert_eq!(libc::sigismember(&set, libc::SIGTERM), 1);
            assert_eq!(libc::sigismember(&set, libc::SIGCHLD), 1);
            assert_eq!(libc::sigismember(&set, libc::SIGINT), 0);
        }
    }
}
