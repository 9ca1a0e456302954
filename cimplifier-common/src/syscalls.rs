//! The traced x86_64 system calls and where their names live in the arguments.
//!
//! The kernel side uses [`spec`] to decide what to copy from user memory; user
//! space uses the same table to decode, so the two cannot disagree.

/// x86_64 syscall numbers.
pub mod nr {
    pub const READLINK: u32 = 89;
    pub const OPEN: u32 = 2;
    pub const CLOSE: u32 = 3;
    pub const STAT: u32 = 4;
    pub const LSTAT: u32 = 6;
    pub const ACCESS: u32 = 21;
    pub const DUP: u32 = 32;
    pub const DUP2: u32 = 33;
    pub const SOCKET: u32 = 41;
    pub const CONNECT: u32 = 42;
    pub const ACCEPT: u32 = 43;
    pub const SENDTO: u32 = 44;
    pub const SENDMSG: u32 = 46;
    pub const BIND: u32 = 49;
    pub const LISTEN: u32 = 50;
    pub const CLONE: u32 = 56;
    pub const FORK: u32 = 57;
    pub const VFORK: u32 = 58;
    pub const EXECVE: u32 = 59;
    pub const EXIT: u32 = 60;
    pub const FCNTL: u32 = 72;
    pub const TRUNCATE: u32 = 76;
    pub const CHDIR: u32 = 80;
    pub const FCHDIR: u32 = 81;
    pub const RENAME: u32 = 82;
    pub const MKDIR: u32 = 83;
    pub const RMDIR: u32 = 84;
    pub const CREAT: u32 = 85;
    pub const LINK: u32 = 86;
    pub const UNLINK: u32 = 87;
    pub const SYMLINK: u32 = 88;
    pub const CHMOD: u32 = 90;
    pub const CHOWN: u32 = 92;
    pub const LCHOWN: u32 = 94;
    pub const MKNOD: u32 = 133;
    pub const PIVOT_ROOT: u32 = 155;
    pub const CHROOT: u32 = 161;
    pub const GETDENTS64: u32 = 217;
    pub const EXIT_GROUP: u32 = 231;
    pub const OPENAT: u32 = 257;
    pub const MKDIRAT: u32 = 258;
    pub const MKNODAT: u32 = 259;
    pub const FCHOWNAT: u32 = 260;
    pub const NEWFSTATAT: u32 = 262;
    pub const UNLINKAT: u32 = 263;
    pub const RENAMEAT: u32 = 264;
    pub const LINKAT: u32 = 265;
    pub const SYMLINKAT: u32 = 266;
    pub const READLINKAT: u32 = 267;
    pub const FCHMODAT: u32 = 268;
    pub const FACCESSAT: u32 = 269;
    pub const UTIMENSAT: u32 = 280;
    pub const ACCEPT4: u32 = 288;
    pub const DUP3: u32 = 292;
    pub const RENAMEAT2: u32 = 316;
    pub const EXECVEAT: u32 = 322;
    pub const STATX: u32 = 332;
    pub const CLONE3: u32 = 435;
    pub const CLOSE_RANGE: u32 = 436;
    pub const OPENAT2: u32 = 437;
    pub const FACCESSAT2: u32 = 439;
    pub const FCHMODAT2: u32 = 452;
    pub const FCHMOD: u32 = 91;
    pub const FCHOWN: u32 = 93;
    pub const SETUID: u32 = 105;
    pub const SETGID: u32 = 106;
    pub const SETREUID: u32 = 113;
    pub const SETREGID: u32 = 114;
    pub const SETGROUPS: u32 = 116;
    pub const SETRESUID: u32 = 117;
    pub const SETRESGID: u32 = 119;
    pub const KILL: u32 = 62;
    pub const RT_SIGQUEUEINFO: u32 = 129;
    pub const TKILL: u32 = 200;
    pub const TGKILL: u32 = 234;
    pub const RT_TGSIGQUEUEINFO: u32 = 297;
    pub const PIDFD_SEND_SIGNAL: u32 = 424;
    // Not traced: they change what an absolute path names, or whose
    // credentials a process has, so the kernel forgets its folded repeats.
    pub const MOUNT: u32 = 165;
    pub const UMOUNT2: u32 = 166;
    pub const UNSHARE: u32 = 272;
    pub const SETNS: u32 = 308;
    pub const MOVE_MOUNT: u32 = 429;
    pub const SETFSUID: u32 = 122;
    pub const SETFSGID: u32 = 123;
    pub const CAPSET: u32 = 126;
}

/// The arguments that tell two calls of syscall `n` on one name apart
/// (flags, modes), when a repeat of it may be folded in the kernel: a call
/// that only asks about a name (stat, access) or an open that failed
/// (no descriptor made, nothing changed). Every other call is always sent:
/// one that makes a descriptor (a later call may use it as a directory),
/// one that changes state. The kernel folds a call only when it names an
/// absolute path, made by the same process since its last fork, exec or
/// change of root, mounts or credentials ([`forgets_folded`]), with the
/// same result: what it adds to the model, the first one added.
pub const fn foldable(n: u32, ret: i64, args: &[u64; 6]) -> Option<[u64; 2]> {
    use nr::*;
    match n {
        STAT | LSTAT => Some([0, 0]),
        ACCESS => Some([args[1], 0]),
        NEWFSTATAT => Some([args[3], 0]),
        STATX => Some([args[2], args[3]]),
        FACCESSAT => Some([args[2], 0]),
        FACCESSAT2 => Some([args[2], args[3]]),
        OPEN if ret < 0 => Some([args[1], args[2]]),
        OPENAT if ret < 0 => Some([args[2], args[3]]),
        CREAT if ret < 0 => Some([args[1], 0]),
        _ => None,
    }
}

/// The flags and mode of a successful open of a name, when its repeats may
/// be folded in the kernel by keeping the descriptor instead of sending it
/// (`FdRepeatRecord`): open, openat, creat. (openat2's flags are behind a
/// pointer: always sent.)
pub const fn folds_into_fd(n: u32, ret: i64, args: &[u64; 6]) -> Option<[u64; 2]> {
    use nr::*;
    if ret < 0 {
        return None;
    }
    match n {
        OPEN => Some([args[1], args[2]]),
        OPENAT => Some([args[2], args[3]]),
        CREAT => Some([args[1], 0]),
        _ => None,
    }
}

/// Pads [`fd_args`].
pub const NO_FD_ARG: u8 = u8::MAX;

/// The arguments of syscall `n` that are descriptors user space reads a
/// path from (its fd table): the dirfd of a `*at` call, or the descriptor
/// fchdir, getdents64, dup*, fcntl, fchmod and fchown act on. A folded
/// descriptor named here is reported first (`FdRepeatRecord`). close is not
/// here: closing a folded descriptor ends it unreported.
pub const fn fd_args(n: u32) -> [u8; 2] {
    use nr::*;
    match n {
        OPENAT | OPENAT2 | NEWFSTATAT | STATX | FACCESSAT | FACCESSAT2 | MKDIRAT | UNLINKAT
        | FCHMODAT | FCHMODAT2 | FCHOWNAT | UTIMENSAT | MKNODAT | READLINKAT | EXECVEAT => {
            [0, NO_FD_ARG]
        }
        RENAMEAT | RENAMEAT2 | LINKAT => [0, 2],
        SYMLINKAT => [1, NO_FD_ARG],
        FCHDIR | GETDENTS64 | DUP | DUP2 | DUP3 | FCNTL | FCHMOD | FCHOWN => [0, NO_FD_ARG],
        _ => [NO_FD_ARG, NO_FD_ARG],
    }
}

/// Whether syscall `n`, whatever its result, changes what a process's
/// absolute paths name (root, mounts, namespaces) or its credentials: its
/// folded repeats are forgotten at entry.
pub const fn forgets_folded(n: u32) -> bool {
    use nr::*;
    matches!(
        n,
        CHROOT
            | PIVOT_ROOT
            | MOUNT
            | UMOUNT2
            | UNSHARE
            | SETNS
            | MOVE_MOUNT
            | SETUID
            | SETGID
            | SETREUID
            | SETREGID
            | SETGROUPS
            | SETRESUID
            | SETRESGID
            | SETFSUID
            | SETFSGID
            | CAPSET
    )
}

/// Whether syscall `n` sends a signal: a success is reported by the
/// `signal_generate` program with both sides' credentials; a failure
/// (EPERM: no CAP_KILL) only by the call's own record.
pub const fn sends_signal(n: u32) -> bool {
    use nr::*;
    matches!(
        n,
        KILL | TKILL | TGKILL | RT_SIGQUEUEINFO | RT_TGSIGQUEUEINFO | PIDFD_SEND_SIGNAL
    )
}

/// Where an argument's name comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StrSource {
    /// Not used.
    None,
    /// A NUL-terminated path in user memory at argument `n`, read at sys_exit.
    Path(u8),
    /// execve's argv array at argument `n`, read at sys_enter (the path at
    /// sys_enter too). When that read faults they are read again at sys_exit
    /// of a failed exec, and a successful one gets them from
    /// `sched_process_exec` (`RecordKind::ExecImage`).
    Argv(u8),
    /// The buffer readlink filled: argument `n`, `ret` bytes, read at sys_exit.
    ReadlinkResult(u8),
}

/// Where a socket address comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddrSource {
    None,
    /// `(addr ptr arg, len arg)`, the address passed in (bind, connect, sendto).
    In {
        ptr: u8,
        len: u8,
    },
    /// sendmsg: `msg_name`/`msg_namelen` of the `msghdr` at argument `n`.
    MsgHdr(u8),
    /// accept: `(addr ptr arg, *len ptr arg)`, written by the kernel.
    Out {
        ptr: u8,
        len_ptr: u8,
    },
}

/// How a traced syscall is recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spec {
    pub str0: StrSource,
    pub str1: StrSource,
    pub addr: AddrSource,
}

const fn s(str0: StrSource, str1: StrSource) -> Option<Spec> {
    Some(Spec {
        str0,
        str1,
        addr: AddrSource::None,
    })
}

const fn a(addr: AddrSource) -> Option<Spec> {
    Some(Spec {
        str0: StrSource::None,
        str1: StrSource::None,
        addr,
    })
}

/// The recording spec of syscall `n`, or `None` when it is not traced.
#[inline(always)]
pub const fn spec(n: u32) -> Option<Spec> {
    use StrSource::{Argv, None as No, Path, ReadlinkResult};
    use nr::*;
    match n {
        OPEN | CREAT | STAT | LSTAT | ACCESS | CHDIR | MKDIR | RMDIR | UNLINK | CHMOD | CHOWN
        | LCHOWN | TRUNCATE | MKNOD | CHROOT => s(Path(0), No),
        OPENAT | OPENAT2 | NEWFSTATAT | STATX | FACCESSAT | FACCESSAT2 | MKDIRAT | UNLINKAT
        | FCHMODAT | FCHMODAT2 | FCHOWNAT | UTIMENSAT | MKNODAT => s(Path(1), No),
        READLINK => s(Path(0), ReadlinkResult(1)),
        READLINKAT => s(Path(1), ReadlinkResult(2)),
        RENAME | LINK | SYMLINK | PIVOT_ROOT => s(Path(0), Path(1)),
        RENAMEAT | RENAMEAT2 | LINKAT => s(Path(1), Path(3)),
        SYMLINKAT => s(Path(0), Path(2)),
        EXECVE => s(Path(0), Argv(1)),
        EXECVEAT => s(Path(1), Argv(2)),
        BIND | CONNECT => a(AddrSource::In { ptr: 1, len: 2 }),
        SENDTO => a(AddrSource::In { ptr: 4, len: 5 }),
        SENDMSG => a(AddrSource::MsgHdr(1)),
        ACCEPT | ACCEPT4 => a(AddrSource::Out { ptr: 1, len_ptr: 2 }),
        FCHDIR | GETDENTS64 | DUP | DUP2 | DUP3 | FCNTL | CLOSE | CLOSE_RANGE | SOCKET | LISTEN
        | CLONE | CLONE3 | FORK | VFORK | EXIT | EXIT_GROUP | FCHMOD | FCHOWN => s(No, No),
        // Credentials: which capabilities a process needs depends on its uid.
        SETUID | SETGID | SETREUID | SETREGID | SETGROUPS | SETRESUID | SETRESGID => s(No, No),
        // Signals: a refused one (EPERM) shows `verify` a missing CAP_KILL.
        KILL | TKILL | TGKILL | RT_SIGQUEUEINFO | RT_TGSIGQUEUEINFO | PIDFD_SEND_SIGNAL => {
            s(No, No)
        }
        _ => None,
    }
}

/// Every traced syscall.
pub const TRACED: &[u32] = {
    use nr::*;
    &[
        OPEN,
        CLOSE,
        STAT,
        LSTAT,
        ACCESS,
        DUP,
        DUP2,
        SOCKET,
        CONNECT,
        ACCEPT,
        SENDTO,
        SENDMSG,
        BIND,
        LISTEN,
        CLONE,
        FORK,
        VFORK,
        EXECVE,
        EXIT,
        FCNTL,
        TRUNCATE,
        CHDIR,
        FCHDIR,
        RENAME,
        MKDIR,
        RMDIR,
        CREAT,
        LINK,
        UNLINK,
        SYMLINK,
        READLINK,
        CHMOD,
        CHOWN,
        LCHOWN,
        MKNOD,
        GETDENTS64,
        EXIT_GROUP,
        OPENAT,
        MKDIRAT,
        MKNODAT,
        FCHOWNAT,
        NEWFSTATAT,
        UNLINKAT,
        RENAMEAT,
        LINKAT,
        SYMLINKAT,
        READLINKAT,
        FCHMODAT,
        FACCESSAT,
        UTIMENSAT,
        ACCEPT4,
        DUP3,
        RENAMEAT2,
        EXECVEAT,
        STATX,
        CLONE3,
        CLOSE_RANGE,
        OPENAT2,
        FACCESSAT2,
        FCHMODAT2,
        CHROOT,
        PIVOT_ROOT,
        FCHMOD,
        FCHOWN,
        SETUID,
        SETGID,
        SETREUID,
        SETREGID,
        SETGROUPS,
        SETRESUID,
        SETRESGID,
        KILL,
        TKILL,
        TGKILL,
        RT_SIGQUEUEINFO,
        RT_TGSIGQUEUEINFO,
        PIDFD_SEND_SIGNAL,
    ]
};

/// Syscalls that the per-syscall hooks leave alone, so that a server's hot
/// loop runs no program at all: calls that act only on the caller's memory,
/// its clock, itself or a descriptor it already holds. None is traced (it
/// names no resource: what it acts on was opened, mapped or made by a call
/// that is), none forgets folded repeats, none sends a signal. Seccomp
/// profiles allow them to every executable of a session traced so
/// (`EventKind::Unhooked`), as they were not seen either way.
pub const UNHOOKED: &[u32] = &[
    0,   // read
    1,   // write
    5,   // fstat
    7,   // poll
    8,   // lseek
    9,   // mmap
    10,  // mprotect
    11,  // munmap
    12,  // brk
    14,  // rt_sigprocmask
    15,  // rt_sigreturn
    17,  // pread64
    18,  // pwrite64
    19,  // readv
    20,  // writev
    23,  // select
    24,  // sched_yield
    25,  // mremap
    28,  // madvise
    35,  // nanosleep
    39,  // getpid
    40,  // sendfile
    45,  // recvfrom
    47,  // recvmsg
    74,  // fsync
    75,  // fdatasync
    96,  // gettimeofday
    186, // gettid
    201, // time
    202, // futex
    219, // restart_syscall
    228, // clock_gettime
    230, // clock_nanosleep
    232, // epoll_wait
    233, // epoll_ctl
    270, // pselect6
    271, // ppoll
    281, // epoll_pwait
    295, // preadv
    296, // pwritev
    299, // recvmmsg
    318, // getrandom
    327, // preadv2
    328, // pwritev2
    441, // epoll_pwait2
    449, // futex_waitv
];

/// Traced syscalls that the per-syscall hooks see at exit only, reading
/// their arguments from the saved user registers then: the file calls a
/// busy program repeats most, none of which blocks for long, changes its
/// arguments' registers, starts a process or forgets folded repeats. Their
/// entry tracepoints stay unhooked, so each call costs one tracepoint, not
/// two. Their first use (seccomp's evidence) is noted at exit too: a call
/// still running when the watch ends is not seen, as it is not recorded
/// either way.
pub const fn seen_at_exit(n: u32) -> bool {
    use nr::*;
    matches!(
        n,
        STAT | LSTAT
            | NEWFSTATAT
            | STATX
            | ACCESS
            | FACCESSAT
            | FACCESSAT2
            | OPEN
            | OPENAT
            | OPENAT2
            | CREAT
            | CLOSE
            | READLINK
            | READLINKAT
            | GETDENTS64
            | FCNTL
            | DUP
            | DUP2
            | DUP3
    )
}

/// Whether syscall `n` is one of [`UNHOOKED`].
pub const fn unhooked(n: u32) -> bool {
    let mut i = 0;
    while i < UNHOOKED.len() {
        if UNHOOKED[i] == n {
            return true;
        }
        i += 1;
    }
    false
}

/// How many arguments the syscall takes; the rest of `args` is unspecified.
pub const fn arity(n: u32) -> usize {
    use nr::*;
    match n {
        FORK | VFORK => 0,
        CLOSE | DUP | EXIT | CHDIR | FCHDIR | RMDIR | UNLINK | EXIT_GROUP | CHROOT | SETUID
        | SETGID => 1,
        STAT | LSTAT | ACCESS | DUP2 | LISTEN | TRUNCATE | RENAME | MKDIR | CREAT | LINK
        | SYMLINK | CHMOD | FCHMOD | CLONE3 | PIVOT_ROOT | SETREUID | SETREGID | SETGROUPS
        | KILL | TKILL => 2,
        OPEN | SOCKET | CONNECT | ACCEPT | SENDMSG | BIND | EXECVE | FCNTL | READLINK | CHOWN
        | LCHOWN | MKNOD | GETDENTS64 | MKDIRAT | UNLINKAT | SYMLINKAT | FCHMODAT | FACCESSAT
        | DUP3 | CLOSE_RANGE | FCHOWN | SETRESUID | SETRESGID | TGKILL | RT_SIGQUEUEINFO => 3,
        OPENAT | MKNODAT | NEWFSTATAT | RENAMEAT | READLINKAT | UTIMENSAT | ACCEPT4 | OPENAT2
        | FACCESSAT2 | FCHMODAT2 | RT_TGSIGQUEUEINFO | PIDFD_SEND_SIGNAL => 4,
        CLONE | FCHOWNAT | LINKAT | RENAMEAT2 | EXECVEAT | STATX => 5,
        SENDTO => 6,
        _ => 6,
    }
}

/// The syscall's name, for logs and decoding.
pub const fn name(n: u32) -> &'static str {
    use nr::*;
    match n {
        OPEN => "open",
        CLOSE => "close",
        STAT => "stat",
        LSTAT => "lstat",
        ACCESS => "access",
        DUP => "dup",
        DUP2 => "dup2",
        SOCKET => "socket",
        CONNECT => "connect",
        ACCEPT => "accept",
        SENDTO => "sendto",
        SENDMSG => "sendmsg",
        BIND => "bind",
        LISTEN => "listen",
        CLONE => "clone",
        FORK => "fork",
        VFORK => "vfork",
        EXECVE => "execve",
        EXIT => "exit",
        FCNTL => "fcntl",
        TRUNCATE => "truncate",
        CHDIR => "chdir",
        FCHDIR => "fchdir",
        RENAME => "rename",
        MKDIR => "mkdir",
        RMDIR => "rmdir",
        CREAT => "creat",
        LINK => "link",
        UNLINK => "unlink",
        SYMLINK => "symlink",
        READLINK => "readlink",
        CHMOD => "chmod",
        CHOWN => "chown",
        LCHOWN => "lchown",
        MKNOD => "mknod",
        GETDENTS64 => "getdents64",
        EXIT_GROUP => "exit_group",
        OPENAT => "openat",
        MKDIRAT => "mkdirat",
        MKNODAT => "mknodat",
        FCHOWNAT => "fchownat",
        NEWFSTATAT => "newfstatat",
        UNLINKAT => "unlinkat",
        RENAMEAT => "renameat",
        LINKAT => "linkat",
        SYMLINKAT => "symlinkat",
        READLINKAT => "readlinkat",
        FCHMODAT => "fchmodat",
        FACCESSAT => "faccessat",
        UTIMENSAT => "utimensat",
        ACCEPT4 => "accept4",
        DUP3 => "dup3",
        RENAMEAT2 => "renameat2",
        EXECVEAT => "execveat",
        STATX => "statx",
        CLONE3 => "clone3",
        CLOSE_RANGE => "close_range",
        OPENAT2 => "openat2",
        FACCESSAT2 => "faccessat2",
        FCHMODAT2 => "fchmodat2",
        CHROOT => "chroot",
        PIVOT_ROOT => "pivot_root",
        FCHMOD => "fchmod",
        FCHOWN => "fchown",
        SETUID => "setuid",
        SETGID => "setgid",
        SETREUID => "setreuid",
        SETREGID => "setregid",
        SETGROUPS => "setgroups",
        SETRESUID => "setresuid",
        SETRESGID => "setresgid",
        KILL => "kill",
        TKILL => "tkill",
        TGKILL => "tgkill",
        RT_SIGQUEUEINFO => "rt_sigqueueinfo",
        RT_TGSIGQUEUEINFO => "rt_tgsigqueueinfo",
        PIDFD_SEND_SIGNAL => "pidfd_send_signal",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_traced_syscall_has_a_spec_a_name_and_an_arity() {
        for &n in TRACED {
            assert!(spec(n).is_some(), "{n} has no spec");
            assert_ne!(name(n), "unknown", "{n} has no name");
            assert!(arity(n) <= 6);
        }
        let specified = (0..512).filter(|&n| spec(n).is_some()).count();
        assert_eq!(specified, TRACED.len(), "TRACED and spec() disagree");
    }

    #[test]
    fn only_queries_and_failed_opens_fold_and_every_credential_call_forgets() {
        let args = [0, 1, 2, 3, 4, 5];
        for n in [
            nr::STAT,
            nr::NEWFSTATAT,
            nr::STATX,
            nr::ACCESS,
            nr::FACCESSAT2,
        ] {
            assert!(foldable(n, 0, &args).is_some(), "{}", name(n));
            assert!(foldable(n, -2, &args).is_some(), "{}", name(n));
        }
        for n in [nr::OPEN, nr::OPENAT, nr::CREAT] {
            assert!(foldable(n, -2, &args).is_some(), "{}", name(n));
            assert!(
                foldable(n, 3, &args).is_none(),
                "{} made a descriptor",
                name(n)
            );
        }
        // Flags tell calls apart: lstat-like and stat-like newfstatat.
        assert_ne!(
            foldable(nr::NEWFSTATAT, 0, &[0, 0, 0, 0x100, 0, 0]),
            foldable(nr::NEWFSTATAT, 0, &[0, 0, 0, 0, 0, 0])
        );
        for &n in TRACED {
            let state = matches!(
                n,
                nr::MKDIR | nr::UNLINK | nr::RENAME | nr::CHMOD | nr::EXECVE | nr::BIND | nr::CLOSE
            );
            if state {
                assert!(foldable(n, 0, &args).is_none(), "{} changes state", name(n));
            }
            if name(n).starts_with("set") {
                assert!(forgets_folded(n), "{}", name(n));
            }
        }
        assert!(forgets_folded(nr::CHROOT) && forgets_folded(nr::UNSHARE));
        assert!(!forgets_folded(nr::OPENAT));
    }

    #[test]
    fn unhooked_syscalls_name_nothing_traced_and_change_nothing_folded() {
        for &n in UNHOOKED {
            assert!(unhooked(n));
            assert!(spec(n).is_none(), "{n} is traced: it must be hooked");
            assert!(!forgets_folded(n), "{n} forgets folded repeats");
            assert!(!sends_signal(n), "{n} sends a signal");
            assert!((n as usize) < crate::SYSCALL_BITMAP_BITS as usize);
        }
        assert!(!unhooked(nr::OPENAT) && !unhooked(nr::EXECVE) && !unhooked(nr::CLONE));
    }

    #[test]
    fn calls_seen_at_exit_are_traced_plain_file_calls() {
        for n in 0..512 {
            if seen_at_exit(n) {
                assert!(spec(n).is_some(), "{} is not traced", name(n));
                assert!(!unhooked(n) && !forgets_folded(n) && !sends_signal(n));
                assert!(
                    !matches!(spec(n).map(|s| s.str1), Some(StrSource::Argv(_))),
                    "{} execs",
                    name(n)
                );
            }
        }
        for n in [
            nr::EXECVE,
            nr::CLONE,
            nr::CLONE3,
            nr::FORK,
            nr::VFORK,
            nr::EXIT,
            nr::EXIT_GROUP,
            nr::CONNECT,
            nr::ACCEPT4,
        ] {
            assert!(!seen_at_exit(n), "{} needs its entry", name(n));
        }
    }
}
