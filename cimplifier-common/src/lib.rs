//! Records shared by the kernel programs (`cimplifier-ebpf`) and user space.
//!
//! Every record starts with a [`RecordHeader`]; its `kind` says which struct
//! follows. Records are written to one BPF ring buffer in the order the
//! kernel produced them, so records of one thread arrive in program order.
//! The layout is `#[repr(C)]` and little-endian (x86_64 only for now).
#![no_std]

pub mod syscalls;

/// Bytes of one string slot (a path, or argv packed NUL-separated): PATH_MAX.
pub const STR_SLOT: usize = 4096;
/// Bytes of a task's comm.
pub const COMM_LEN: usize = 16;
/// Bytes of a socket address we keep: enough for `sockaddr_un` and `sockaddr_in6`.
pub const SOCKADDR_MAX: usize = 128;
/// Arguments of execve we copy at most.
pub const MAX_ARGV: usize = 32;
/// Deepest cgroup level the watch filter walks up from.
pub const MAX_CGROUP_LEVEL: i32 = 16;

/// What follows the header.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// A [`SyscallRecord`] emitted at sys_exit (or at sys_enter for calls
    /// that never return: exit, exit_group).
    Syscall = 1,
    /// A [`ForkRecord`] from sched_process_fork, emitted in the parent.
    Fork = 3,
    /// A [`ExitRecord`] from sched_process_exit, one per thread.
    Exit = 4,
    /// A [`SyscallRecord`] emitted at execve(at) entry with the filename and
    /// argv, which are gone once the new image is loaded.
    ExecArgs = 5,
    /// A [`SyscallRecord`] emitted from `sched_process_exec` once an exec
    /// has loaded its new image, from memory that cannot fault: slot 0 holds
    /// the file name the kernel executed (`bprm->filename`, from the trace
    /// record), slot 1 the new image's argv (`mm->arg_start..arg_end`, just
    /// copied in by the kernel; for a script, the interpreter's argv). `nr`,
    /// `args` and `enter_ts_ns` are those of the exec call in flight (zero
    /// when unknown), and `ret` is the id of the thread that called exec
    /// (which differs from the header's `tid` when a non-leader thread
    /// exec'd). Stands in for [`RecordKind::ExecArgs`] names that could not
    /// be read at entry.
    ExecImage = 6,
    /// A [`SyscallSeenRecord`]: the first time since its exec (or since
    /// the watch began) that a process made a syscall number, traced or
    /// not. Evidence for its seccomp profile; repeats send nothing.
    SyscallSeen = 7,
    /// A [`SignalRecord`]: a watched process sent a signal to another
    /// process (kill, tkill, tgkill, rt_sigqueueinfo, pidfd_send_signal),
    /// with both sides' credentials as the kernel's permission check saw
    /// them. Evidence for CAP_KILL.
    Signal = 8,
    /// A [`FdRepeatRecord`]: a descriptor that a folded open made is about
    /// to matter to user space.
    FdRepeat = 9,
    /// A [`ForeignExecRecord`]: a watched process exec'd a program built
    /// for another ABI than x86_64's (32-bit x86, x32), whose system calls
    /// the syscall tracepoints do not report.
    ForeignExec = 10,
}

impl RecordKind {
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Self::Syscall,
            3 => Self::Fork,
            4 => Self::Exit,
            5 => Self::ExecArgs,
            6 => Self::ExecImage,
            7 => Self::SyscallSeen,
            8 => Self::Signal,
            9 => Self::FdRepeat,
            10 => Self::ForeignExec,
            _ => return None,
        })
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RecordHeader {
    pub kind: u32,
    /// Process id (tgid) of the thread that produced the record.
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Process id of the real parent.
    pub ppid: u32,
    /// CLOCK_MONOTONIC (bpf_ktime_get_ns).
    pub ts_ns: u64,
    /// cgroup v2 id (inode number of the cgroup directory).
    pub cgroup_id: u64,
    pub comm: [u8; COMM_LEN],
}

/// Bits of [`SyscallRecord::flags`].
pub mod flags {
    /// String slot 0 holds a string.
    pub const STR0_PRESENT: u32 = 1 << 0;
    /// String slot 0 filled the slot: the string was cut.
    pub const STR0_TRUNCATED: u32 = 1 << 1;
    /// Reading string 0 from user memory failed: the path is unknown.
    pub const STR0_FAULT: u32 = 1 << 2;
    pub const STR1_PRESENT: u32 = 1 << 4;
    pub const STR1_TRUNCATED: u32 = 1 << 5;
    pub const STR1_FAULT: u32 = 1 << 6;
    /// `sockaddr` holds `sockaddr_len` bytes.
    pub const SOCKADDR_PRESENT: u32 = 1 << 8;
    /// Reading the socket address failed.
    pub const SOCKADDR_FAULT: u32 = 1 << 9;
    /// argv had more than MAX_ARGV entries or did not fit its slot.
    pub const ARGV_TRUNCATED: u32 = 1 << 10;
    /// The call does not return (exit, exit_group): `ret` is meaningless.
    pub const NO_RETURN: u32 = 1 << 11;
}

/// One system call of a watched thread, with its arguments and result.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SyscallRecord {
    pub header: RecordHeader,
    /// x86_64 syscall number.
    pub nr: u32,
    pub flags: u32,
    pub args: [u64; 6],
    pub ret: i64,
    pub enter_ts_ns: u64,
    /// Nonzero on the first of a `syscalls::foldable` or
    /// `syscalls::folds_into_fd` call: the key its repeats fold under, which
    /// a [`FdRepeatRecord`] names.
    pub fold_key: [u64; 2],
    /// Bytes of each string, without the terminating NUL.
    pub str_len: [u32; 2],
    pub sockaddr_len: u32,
    /// Number of argv strings packed into slot 1 (execve only).
    pub argc: u32,
    pub sockaddr: [u8; SOCKADDR_MAX],
    /// Slot 0 at `0..STR_SLOT`, slot 1 at `STR_SLOT..2*STR_SLOT`. Only the
    /// used prefix is sent: the record ends after the last used string. The
    /// third slot is spill room that lets the kernel pack argv with bounded
    /// offsets; it is never sent.
    pub strings: [u8; 3 * STR_SLOT],
}

impl SyscallRecord {
    /// Bytes before the string slots; every record has at least these.
    pub const FIXED_LEN: usize = core::mem::offset_of!(SyscallRecord, strings);
}

/// A new task, emitted in the parent before the child can run.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ForkRecord {
    pub header: RecordHeader,
    pub child_tid: u32,
    pub _pad: u32,
    /// Clone flags of the creating call (fork: SIGCHLD; vfork: CLONE_VM|CLONE_VFORK).
    pub clone_flags: u64,
}

/// A thread ended; `group_dead` is 1 when it was the last of its process.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExitRecord {
    pub header: RecordHeader,
    pub group_dead: u32,
    pub _pad: u32,
}

/// Syscall numbers a process's seen-bitmap holds, one bit each: every
/// x86_64 number (the table ends below 512). A higher number (an x32 call,
/// or a bad number) is sent every time it is made, never folded away.
pub const SYSCALL_BITMAP_BITS: u32 = 512;
/// Words of that bitmap.
pub const SYSCALL_BITMAP_WORDS: usize = SYSCALL_BITMAP_BITS as usize / 64;

/// A process made syscall `nr` for the first time since its exec; sent at
/// sys_enter, so before that call's own [`SyscallRecord`].
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SyscallSeenRecord {
    pub header: RecordHeader,
    /// The syscall number as the kernel received it (x86_64 ABI).
    pub nr: u32,
    pub _pad: u32,
}

/// A watched process's signal to another process, sent from the
/// `signal_generate` tracepoint: the kernel has already allowed it, and
/// the uids are those its check (`kill_ok_by_cred`) compared.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SignalRecord {
    pub header: RecordHeader,
    pub sig: u32,
    /// `si_code`: SI_USER (kill), SI_TKILL (tkill, tgkill) or SI_QUEUE.
    pub code: i32,
    /// Process id (tgid) of the receiver, in the host's pid namespace.
    pub target_pid: u32,
    /// The sender's real and effective uid.
    pub sender_uid: u32,
    pub sender_euid: u32,
    /// The receiver's real and saved uid.
    pub target_uid: u32,
    pub target_suid: u32,
    pub _pad: u32,
}

/// A successful open that repeated one already sent (same process, fold
/// span, flags, mode and absolute name) was not sent: the kernel kept its
/// descriptor and the key the first open was sent with (`fold_key`). This
/// record comes when that descriptor is about to matter to user space: a
/// call resolves a name through it (a dirfd, fchdir, getdents64, dup*,
/// fcntl, fchmod, fchown: `syscalls::fd_args`), or the process forks,
/// execs or changes root, mounts or credentials while holding it. User
/// space then replays the first open with `fd` as its result, before the
/// record that uses it. A folded descriptor that is only closed (or
/// replaced by dup2, or closed by close_range or the process's exit) is
/// never reported: open and close count as folded repeats.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FdRepeatRecord {
    pub header: RecordHeader,
    pub fd: i32,
    pub _pad: u32,
    pub key: [u64; 2],
}

/// From the `exec_abi` program on `sched_process_exec`: the loaded image's
/// ELF header (the kernel's `linux_binprm.buf`) says another ABI than
/// x86_64's. Compat system calls (`int 0x80`, x32) do not fire the
/// per-syscall tracepoints, and the raw ones number them differently, so
/// nothing the process does after this exec is recorded.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ForeignExecRecord {
    pub header: RecordHeader,
    /// `e_ident[EI_CLASS]`: 1 for 32-bit, 2 for 64-bit.
    pub elf_class: u32,
    /// `e_machine`: 3 for i386, 62 for x86_64 (x32 is class 1 with it).
    pub machine: u32,
}

/// Indices of the per-CPU `COUNTERS` array.
pub mod counter {
    /// Records dropped because the ring buffer was full: lost events.
    pub const RINGBUF_FULL: u32 = 0;
    /// sys_enter could not store its in-flight entry (map full).
    pub const INFLIGHT_FULL: u32 = 1;
    /// A name stayed unreadable: a user-memory string could not be read
    /// where no later read makes up for it (an exec's names unread at entry
    /// are read again at exit or from `sched_process_exec`, and count only
    /// if that fails too).
    pub const USER_READ_FAULT: u32 = 2;
    /// Records written to the ring buffer.
    pub const EMITTED: u32 = 3;
    /// A loss that could not be counted against its cgroup (the
    /// `CGROUP_LOSS` map was full): every session counts it as its own.
    pub const LOSS_UNATTRIBUTED: u32 = 4;
    /// A syscall's exit met another call's in-flight entry of the same
    /// thread: a diagnostic, not counted as any session's loss.
    pub const EXIT_MISMATCH: u32 = 5;
    /// Repeats folded in the kernel (`syscalls::foldable`): not sent, as
    /// they add nothing to the model. Not a loss.
    pub const FOLDED: u32 = 6;
    /// A field of a scheduler tracepoint's record (a fork's child pid, an
    /// exec's old pid or file name) could not be read, so its record was
    /// not made: a loss, also charged to the cgroup (`cgroup_loss::UNREAD`).
    pub const TRACEPOINT_UNREAD: u32 = 7;
    pub const COUNT: u32 = 8;
}

/// Indices of a `CGROUP_LOSS` value: records lost, by cause, for one cgroup
/// (the task's own, possibly below the watched one).
pub mod cgroup_loss {
    /// The ring buffer was full.
    pub const RINGBUF_FULL: usize = 0;
    /// A syscall's entry was not stored (map full, registers unreadable).
    pub const INFLIGHT: usize = 1;
    /// A scheduler tracepoint's record could not be read (`counter::TRACEPOINT_UNREAD`).
    pub const UNREAD: usize = 2;
    pub const COUNT: usize = 3;
}

/// Values the loader fills into the programs' read-only globals.
pub mod globals {
    /// Byte offset of `real_parent` in `struct task_struct`.
    pub const TASK_REAL_PARENT_OFFSET: &str = "TASK_REAL_PARENT_OFFSET";
    /// Byte offset of `tgid` in `struct task_struct`.
    pub const TASK_TGID_OFFSET: &str = "TASK_TGID_OFFSET";
    /// Byte offset of `child_pid` in the sched_process_fork tracepoint record.
    pub const FORK_CHILD_PID_OFFSET: &str = "FORK_CHILD_PID_OFFSET";
    /// Byte offset of `group_dead` in the sched_process_exit tracepoint record.
    pub const EXIT_GROUP_DEAD_OFFSET: &str = "EXIT_GROUP_DEAD_OFFSET";
    /// Byte offset of the `filename` `__data_loc` word in the
    /// sched_process_exec tracepoint record.
    pub const EXEC_FILENAME_OFFSET: &str = "EXEC_FILENAME_OFFSET";
    /// Byte offset of `old_pid` in the sched_process_exec tracepoint record.
    pub const EXEC_OLD_PID_OFFSET: &str = "EXEC_OLD_PID_OFFSET";
    /// Byte offset of `buf` (the first bytes of the file being executed)
    /// in `struct linux_binprm`.
    pub const BPRM_BUF_OFFSET: &str = "BPRM_BUF_OFFSET";
    /// Byte offset of `mm` in `struct task_struct`.
    pub const TASK_MM_OFFSET: &str = "TASK_MM_OFFSET";
    /// Byte offsets of `arg_start` and `arg_end` in `struct mm_struct`.
    pub const MM_ARG_START_OFFSET: &str = "MM_ARG_START_OFFSET";
    pub const MM_ARG_END_OFFSET: &str = "MM_ARG_END_OFFSET";
    /// Byte offsets of `cred` (the subjective credentials, a sender's)
    /// and `real_cred` (the objective ones, a receiver's) in `struct
    /// task_struct`.
    pub const TASK_CRED_OFFSET: &str = "TASK_CRED_OFFSET";
    pub const TASK_REAL_CRED_OFFSET: &str = "TASK_REAL_CRED_OFFSET";
    /// Byte offsets of `uid`, `suid` and `euid` in `struct cred`.
    pub const CRED_UID_OFFSET: &str = "CRED_UID_OFFSET";
    pub const CRED_SUID_OFFSET: &str = "CRED_SUID_OFFSET";
    pub const CRED_EUID_OFFSET: &str = "CRED_EUID_OFFSET";
    /// Byte offset of `si_code` in `struct kernel_siginfo`.
    pub const SIGINFO_CODE_OFFSET: &str = "SIGINFO_CODE_OFFSET";
    /// 1: fold repeats in the kernel (`syscalls::foldable`); 0: send all.
    pub const FOLD_REPEATS: &str = "FOLD_REPEATS";
}

/// Map names, shared so the loader cannot drift from the programs.
pub mod maps {
    pub const EVENTS: &str = "EVENTS";
    pub const WATCHED_CGROUPS: &str = "WATCHED_CGROUPS";
    pub const WATCH_GENERATION: &str = "WATCH_GENERATION";
    pub const COUNTERS: &str = "COUNTERS";
    pub const CGROUP_LOSS: &str = "CGROUP_LOSS";
    pub const CGROUP_FOLDED: &str = "CGROUP_FOLDED";
    pub const INFLIGHT: &str = "INFLIGHT";
    pub const FD_FOLDS: &str = "FD_FOLDS";
    pub const FOLDED_FDS: &str = "FOLDED_FDS";
}
