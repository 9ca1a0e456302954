//! cimplifier's kernel programs.
//!
//! All programs attach host-wide and return at once unless the current task's
//! cgroup v2 is watched or descends from a watched cgroup, with no excluded
//! cgroup in between (`watched_cgroup`).
//!
//! - `sys_enter_one`/`sys_exit_one` (tracepoint programs on the per-syscall
//!   tracepoints `syscalls/sys_{enter,exit}_NAME`, attached by user space
//!   to every syscall but `syscalls::UNHOOKED`, exits to the traced ones
//!   only) or, with `--hooks every-syscall`, `sys_enter`/`sys_exit` (BTF raw
//!   tracepoints on every syscall: no trace record is built) share one body
//!   per side (`enter`, `exit`). They pair each call by thread id through
//!   `INFLIGHT` and emit one `SyscallRecord` at exit, with the arguments,
//!   the return value and the names read from user memory. execve(at) also
//!   emits an `ExecArgs` record at entry, while its argv exists.
//! - `sched_process_exec` emits an `ExecImage` record for every exec that
//!   loaded its image, with the file name and argv read from memory that
//!   cannot fault: the entry read fails when the caller's page is not mapped
//!   (a vfork/posix_spawn child of a large process, a string in a file
//!   mapping the process never touched).
//! - `sched_process_fork`/`sched_process_exit` follow the process tree.
//! - The entry programs also send a `SyscallSeenRecord` the first time a
//!   watched process makes a hooked syscall number since its exec, traced
//!   or not: the evidence for seccomp profiles (`SYSCALLS_SEEN`).
//! - `signal_generate` (a BTF tracepoint: it has the receiving task) sends a
//!   `SignalRecord` when a watched process signals another process, with
//!   the credentials the kernel's permission check compared: the evidence
//!   for CAP_KILL. It runs only when a signal is generated, so it stays
//!   attached.
//! - The exit programs fold a repeat of a call that only asks about an absolute
//!   path (stat, access) or an open of one that failed: the same process,
//!   since its last fork, exec or change of root, mounts or credentials,
//!   made the same call with the same result (`syscalls::foldable`). It is
//!   counted per cgroup (`CGROUP_FOLDED`), not sent.
//!
//! Every dropped record is counted in `COUNTERS`, and, for the cgroup it
//! belonged to, in `CGROUP_LOSS`, so that one noisy container's losses do
//! not mark other sessions incomplete.
//!
//! Anomalies are also logged through aya-log, off unless the loader sets
//! `AYA_LOG_LEVEL` (`cimplifierd serve --kernel-log`): a read-only global,
//! so with logging off the verifier drops every log call as dead code.
#![no_std]
#![no_main]

use core::{ffi::c_void, ptr};

use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_task, bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_user,
        generated::{
            bpf_get_current_ancestor_cgroup_id, bpf_get_current_task_btf, bpf_loop,
            bpf_probe_read_kernel_str as read_kernel_str_raw, bpf_probe_read_user as read_user_raw,
            bpf_probe_read_user_str as read_user_str_raw, bpf_task_pt_regs,
        },
    },
    macros::{btf_tracepoint, map, tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{BtfTracePointContext, TracePointContext},
};
use aya_log_ebpf::{debug, warn};
use cimplifier_common::{
    COMM_LEN, ExitRecord, FdRepeatRecord, ForeignExecRecord, ForkRecord, MAX_ARGV,
    MAX_CGROUP_LEVEL, RecordHeader, RecordKind, SOCKADDR_MAX, STR_SLOT, SYSCALL_BITMAP_BITS,
    SYSCALL_BITMAP_WORDS, SignalRecord, SyscallRecord, SyscallSeenRecord, cgroup_loss, counter,
    flags,
    syscalls::{
        AddrSource, NO_FD_ARG, Spec, StrSource, fd_args, foldable, folds_into_fd, forgets_folded,
        nr, seen_at_exit, spec,
    },
};

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(32 << 20, 0);

/// cgroup ids user space wants traced (value 1) with their descendants, or
/// excluded (value 0) from a traced ancestor: the deepest entry on a task's
/// cgroup path decides.
#[map]
static WATCHED_CGROUPS: HashMap<u64, u8> = HashMap::with_max_entries(4096, 0);

/// Bumped by user space after every change to `WATCHED_CGROUPS`; stale
/// entries of `VERDICTS` are recomputed.
#[map]
static WATCH_GENERATION: Array<u64> = Array::with_max_entries(1, 0);

/// cgroup id -> (generation << 1 | watched): caches the ancestor walk.
#[map]
static VERDICTS: LruHashMap<u64, u64> = LruHashMap::with_max_entries(16384, 0);

/// A traced syscall between sys_enter and sys_exit, by thread id.
#[repr(C)]
#[derive(Clone, Copy)]
struct InFlight {
    nr: u32,
    /// For execve(at): the fault bits of the names read at entry, so that
    /// sys_exit reads them again when the exec failed.
    enter_flags: u32,
    args: [u64; 6],
    enter_ts_ns: u64,
}

#[map]
static INFLIGHT: HashMap<u32, InFlight> = HashMap::with_max_entries(65536, 0);

/// Per process (tgid): the syscall numbers it made since its exec, one bit
/// each, so that only the first of each is sent. Cleared at exec, copied
/// to a forked child (which runs the same program), dropped at exit. An
/// evicted entry only makes its numbers be sent again.
#[map]
static SYSCALLS_SEEN: LruHashMap<u32, [u64; SYSCALL_BITMAP_WORDS]> =
    LruHashMap::with_max_entries(16384, 0);

/// Per process (tgid): when it last forked off, exec'd or changed its root,
/// mounts or credentials. Part of every folded call's key, so a repeat
/// only counts within one such span. A process without an entry (running
/// before the watch began, or evicted) starts one at its next candidate.
#[map]
static FOLD_EPOCH: LruHashMap<u32, u64> = LruHashMap::with_max_entries(16384, 0);

/// Keys of the calls sent, for folding their repeats
/// (`syscalls::foldable`): two independent 64-bit hashes of the process,
/// its epoch, the call, its flags, its result and the path. An evicted key
/// only makes its next repeat be sent.
#[map]
static FOLD_SEEN: LruHashMap<[u64; 2], u8> = LruHashMap::with_max_entries(65536, 0);

/// Descriptors made by folded opens (`folds_into_fd`), by
/// `tgid << 32 | fd`: the key the first such open was sent with, for the
/// `FdRepeatRecord` that reports one when it comes to matter. Only
/// descriptors below `FOLD_FD_LIMIT` are kept, so that a process's can be
/// walked. Not LRU: an entry is never dropped unseen; when the map is full
/// the open is sent.
#[map]
static FOLDED_FDS: HashMap<u64, [u64; 2]> = HashMap::with_max_entries(65536, 0);

/// Per process (tgid): `FD_FOLDS_HELD` once it has kept a folded
/// descriptor (so fork, exec and exit walk `FOLDED_FDS`), `FD_FOLDS_NEVER`
/// when it shares its descriptor table with another process (clone with
/// CLONE_FILES, not a thread): a descriptor kept under one's id could be
/// closed by the other, unseen. Dropped at exec and exit.
#[map]
static FD_FOLDS: HashMap<u32, u8> = HashMap::with_max_entries(16384, 0);
const FD_FOLDS_HELD: u8 = 1;
const FD_FOLDS_NEVER: u8 = 2;
const FOLD_FD_LIMIT: i64 = 128;

/// Repeats folded per cgroup id: the sessions' count of them.
#[map]
static CGROUP_FOLDED: PerCpuHashMap<u64, u64> = PerCpuHashMap::with_max_entries(16384, 0);

/// Scratch records: too large for the 512-byte stack.
#[map]
static SYSCALL_SCRATCH: PerCpuArray<SyscallRecord> = PerCpuArray::with_max_entries(1, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Records lost per cgroup id, by cause (`cgroup_loss`). Only watched
/// cgroups' records are ever made, so only they get entries.
#[map]
static CGROUP_LOSS: PerCpuHashMap<u64, [u64; cgroup_loss::COUNT]> =
    PerCpuHashMap::with_max_entries(16384, 0);

// Filled by the loader from this kernel's BTF and tracepoint formats. Read
// through `read_volatile` so the compiler cannot fold the zero; the verifier
// sees the frozen .rodata value as a constant.
#[unsafe(no_mangle)]
static TASK_REAL_PARENT_OFFSET: u64 = 0;
#[unsafe(no_mangle)]
static TASK_TGID_OFFSET: u64 = 0;
#[unsafe(no_mangle)]
static FORK_CHILD_PID_OFFSET: u64 = 0;
#[unsafe(no_mangle)]
static EXIT_GROUP_DEAD_OFFSET: u64 = 0;
#[unsafe(no_mangle)]
static EXEC_FILENAME_OFFSET: u64 = 0;
#[unsafe(no_mangle)]
static EXEC_OLD_PID_OFFSET: u64 = 0;
#[unsafe(no_mangle)]
static TASK_MM_OFFSET: u64 = 0;
#[unsafe(no_mangle)]
static BPRM_BUF_OFFSET: u64 = 0;
#[unsafe(no_mangle)]
static MM_ARG_START_OFFSET: u64 = 0;
#[unsafe(no_mangle)]
static MM_ARG_END_OFFSET: u64 = 0;
#[unsafe(no_mangle)]
static TASK_CRED_OFFSET: u64 = 0;
#[unsafe(no_mangle)]
static TASK_REAL_CRED_OFFSET: u64 = 0;
#[unsafe(no_mangle)]
static CRED_UID_OFFSET: u64 = 0;
#[unsafe(no_mangle)]
static CRED_SUID_OFFSET: u64 = 0;
#[unsafe(no_mangle)]
static CRED_EUID_OFFSET: u64 = 0;
#[unsafe(no_mangle)]
static SIGINFO_CODE_OFFSET: u64 = 0;
#[unsafe(no_mangle)]
static FOLD_REPEATS: u64 = 0;

#[inline(always)]
fn global(v: &'static u64) -> u64 {
    unsafe { ptr::read_volatile(v) }
}

#[inline(always)]
fn count(index: u32) {
    if let Some(p) = COUNTERS.get_ptr_mut(index) {
        unsafe { *p += 1 };
    }
}

/// Counts a lost record of `cgroup`: host-wide as `global`, and for the
/// cgroup as `CAUSE` (or as unattributed when the map is full).
#[inline(always)]
fn count_loss<const CAUSE: usize>(cgroup: u64, global: u32) {
    count(global);
    if let Some(p) = CGROUP_LOSS.get_ptr_mut(&cgroup) {
        unsafe { (*p)[CAUSE] += 1 };
        return;
    }
    let mut first = [0u64; cgroup_loss::COUNT];
    first[CAUSE] = 1;
    if CGROUP_LOSS.insert(&cgroup, &first, 0).is_err() {
        count(counter::LOSS_UNATTRIBUTED);
    }
}

/// The current cgroup id when it is watched or under a watched cgroup, and
/// not under a deeper excluded one.
#[inline(always)]
fn watched_cgroup() -> Option<u64> {
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    let generation = WATCH_GENERATION.get(0).copied().unwrap_or(0);
    if let Some(v) = unsafe { VERDICTS.get(&cgroup) } {
        if *v >> 1 == generation {
            return if *v & 1 == 1 { Some(cgroup) } else { None };
        }
    }
    let mut watched = false;
    for level in 0..MAX_CGROUP_LEVEL {
        let ancestor = unsafe { bpf_get_current_ancestor_cgroup_id(level) };
        if ancestor == 0 {
            break;
        }
        if let Some(v) = unsafe { WATCHED_CGROUPS.get(&ancestor) } {
            watched = *v != 0;
        }
    }
    let _ = VERDICTS.insert(&cgroup, &((generation << 1) | watched as u64), 0);
    watched.then_some(cgroup)
}

#[inline(always)]
fn parent_tgid() -> u32 {
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let parent: *const u8 = unsafe {
        bpf_probe_read_kernel(task.add(global(&TASK_REAL_PARENT_OFFSET) as usize).cast())
    }
    .unwrap_or(ptr::null());
    if parent.is_null() {
        return 0;
    }
    unsafe { bpf_probe_read_kernel(parent.add(global(&TASK_TGID_OFFSET) as usize).cast()) }
        .unwrap_or(0)
}

/// What a header needs of the current task but its ids: filled in only
/// once a record is certain to be sent.
#[inline(always)]
fn stamp(h: &mut RecordHeader) {
    h.ppid = parent_tgid();
    h.ts_ns = unsafe { bpf_ktime_get_ns() };
    h.comm = bpf_get_current_comm().unwrap_or([0; COMM_LEN]);
}

#[inline(always)]
fn header(kind: RecordKind, cgroup_id: u64) -> RecordHeader {
    let pid_tgid = bpf_get_current_pid_tgid();
    RecordHeader {
        kind: kind as u32,
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        ppid: parent_tgid(),
        ts_ns: unsafe { bpf_ktime_get_ns() },
        cgroup_id,
        comm: bpf_get_current_comm().unwrap_or([0; COMM_LEN]),
    }
}

const BPF_RB_AVAIL_DATA: u64 = 0;
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
/// Wake the reader only once this much is queued: a wakeup per record costs
/// more than the record. The reader also polls, so nothing waits long.
const WAKEUP_BYTES: u64 = 256 << 10;

/// Sends the first `len` bytes of `base` (a record, which starts with its
/// header), counting a full ring buffer as loss of the record's cgroup.
#[inline(always)]
fn emit(base: *const u8, len: usize, max: usize) {
    let len = if len > max { max } else { len };
    let data = unsafe { core::slice::from_raw_parts(base, len) };
    let wakeup = if EVENTS.query(BPF_RB_AVAIL_DATA) >= WAKEUP_BYTES {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    if EVENTS.output::<[u8]>(data, wakeup).is_ok() {
        count(counter::EMITTED);
    } else {
        let cgroup = unsafe { (*base.cast::<RecordHeader>()).cgroup_id };
        count_loss::<{ cgroup_loss::RINGBUF_FULL }>(cgroup, counter::RINGBUF_FULL);
        // aya-log's macros take a context they do not use.
        debug!(&(), "ring buffer full: a record of cgroup {} lost", cgroup);
    }
}

/// Reads a NUL-terminated user string into `dst` (STR_SLOT bytes of room).
/// Returns (length without NUL, flag bits relative to slot 0). A fault is
/// counted by the caller, which knows whether a later read makes up for it.
#[inline(always)]
fn read_path(dst: *mut u8, src: u64) -> (u32, u32) {
    if src == 0 {
        return (0, 0);
    }
    let n = unsafe { read_user_str_raw(dst.cast(), STR_SLOT as u32, src as *const c_void) };
    if n <= 0 {
        return (0, flags::STR0_PRESENT | flags::STR0_FAULT);
    }
    let len = (n as u32).saturating_sub(1);
    let mut bits = flags::STR0_PRESENT;
    if n as usize >= STR_SLOT {
        bits |= flags::STR0_TRUNCATED;
    }
    (len, bits)
}

/// Packs argv NUL-separated into `dst`; returns (bytes, argc, flag bits).
/// Faults are counted by the caller, as for [`read_path`].
#[inline(always)]
fn read_argv(dst: *mut u8, argv: u64) -> (u32, u32, u32) {
    let mut off: usize = 0;
    let mut argc = 0u32;
    let mut bits = flags::STR1_PRESENT;
    if argv == 0 {
        return (0, 0, bits);
    }
    for i in 0..MAX_ARGV {
        let Ok(p) = (unsafe { bpf_probe_read_user((argv as *const u64).add(i)) }) else {
            bits |= flags::STR1_FAULT;
            break;
        };
        if p == 0 {
            return (off as u32, argc, bits);
        }
        if off >= STR_SLOT {
            break;
        }
        // `dst` has 2 * STR_SLOT bytes of room, so a full read fits at any off < STR_SLOT.
        let at = unsafe { dst.add(off & (STR_SLOT - 1)) };
        let n = unsafe { read_user_str_raw(at.cast(), STR_SLOT as u32, p as *const c_void) };
        if n <= 0 {
            bits |= flags::STR1_FAULT;
            break;
        }
        off += n as usize;
        argc += 1;
    }
    bits |= flags::ARGV_TRUNCATED;
    let off = if off > STR_SLOT { STR_SLOT } else { off };
    (off as u32, argc, bits)
}

/// Argument `i` of a syscall. A bounds check the verifier can follow: it
/// does not bound the result of `%`, and a stack offset must be bounded.
#[inline(always)]
fn arg(args: &[u64; 6], i: u8) -> u64 {
    match args.get(i as usize) {
        Some(v) => *v,
        None => 0,
    }
}

/// Reads an exec's file name (slot 0) and argv (slot 1) from user memory:
/// (path bytes, argv bytes, argc, flag bits).
#[inline(always)]
fn read_exec_names(rec: &mut SyscallRecord, args: &[u64; 6], p: u8, a: u8) -> (u32, u32, u32, u32) {
    let base = rec.strings.as_mut_ptr();
    let (l0, b0) = read_path(base, arg(args, p));
    let (l1, argc, b1) = read_argv(unsafe { base.add(STR_SLOT) }, arg(args, a));
    (l0, l1, argc, b0 | b1)
}

/// Counts a name that stayed unreadable (bits relative to slot 0 or both slots).
#[inline(always)]
fn count_faults(bits: u32) {
    if bits & flags::STR0_FAULT != 0 {
        count(counter::USER_READ_FAULT);
    }
    if bits & flags::STR1_FAULT != 0 {
        count(counter::USER_READ_FAULT);
    }
}

#[inline(always)]
fn read_sockaddr(rec: &mut SyscallRecord, ptr_arg: u64, len: u64) {
    if ptr_arg == 0 || len == 0 {
        return;
    }
    let len = if len > SOCKADDR_MAX as u64 {
        SOCKADDR_MAX as u64
    } else {
        len
    };
    let r = unsafe {
        read_user_raw(
            rec.sockaddr.as_mut_ptr().cast(),
            len as u32,
            ptr_arg as *const c_void,
        )
    };
    if r == 0 {
        rec.sockaddr_len = len as u32;
        rec.flags |= flags::SOCKADDR_PRESENT;
    } else {
        rec.flags |= flags::SOCKADDR_FAULT;
        count(counter::USER_READ_FAULT);
    }
}

#[inline(always)]
fn scratch_syscall(
    kind: RecordKind,
    cgroup: u64,
    nr: u32,
    args: &[u64; 6],
) -> Option<&'static mut SyscallRecord> {
    let rec = unstamped_scratch_syscall(cgroup, nr, args)?;
    rec.header.kind = kind as u32;
    stamp(&mut rec.header);
    Some(rec)
}

/// A syscall record whose header holds only its ids (`stamp` completes
/// it): most of a folded call's cost would otherwise be a header never sent.
#[inline(always)]
fn unstamped_scratch_syscall(
    cgroup: u64,
    nr: u32,
    args: &[u64; 6],
) -> Option<&'static mut SyscallRecord> {
    let rec = unsafe { &mut *SYSCALL_SCRATCH.get_ptr_mut(0)? };
    let pid_tgid = bpf_get_current_pid_tgid();
    rec.header.kind = RecordKind::Syscall as u32;
    rec.header.pid = (pid_tgid >> 32) as u32;
    rec.header.tid = pid_tgid as u32;
    rec.header.cgroup_id = cgroup;
    rec.nr = nr;
    rec.flags = 0;
    rec.args = *args;
    rec.ret = 0;
    rec.enter_ts_ns = 0;
    rec.fold_key = [0, 0];
    rec.str_len = [0, 0];
    rec.sockaddr_len = 0;
    rec.argc = 0;
    Some(rec)
}

/// Record size: the fixed part, then slot 0, then slot 1 when it is used.
#[inline(always)]
fn syscall_record_len(rec: &SyscallRecord) -> usize {
    let l0 = rec.str_len[0] as usize;
    let l1 = rec.str_len[1] as usize;
    if rec.flags & flags::STR1_PRESENT != 0 {
        SyscallRecord::FIXED_LEN + STR_SLOT + if l1 > STR_SLOT { STR_SLOT } else { l1 }
    } else {
        SyscallRecord::FIXED_LEN + if l0 > STR_SLOT { STR_SLOT } else { l0 }
    }
}

#[inline(always)]
fn emit_syscall(rec: &SyscallRecord) {
    emit(
        (rec as *const SyscallRecord).cast(),
        syscall_record_len(rec),
        core::mem::size_of::<SyscallRecord>(),
    );
}

#[btf_tracepoint(function = "sys_enter")]
pub fn sys_enter(ctx: BtfTracePointContext) -> i32 {
    let _ = try_sys_enter(&ctx);
    0
}

// `struct pt_regs` on x86_64, in u64 words: the syscall ABI's argument
// registers, and orig_ax, which holds the syscall number at exit.
const REG_WORDS: usize = 16;
const ARG_REGS: [usize; 6] = [14, 13, 12, 7, 9, 8]; // di, si, dx, r10, r8, r9
const ORIG_AX: usize = 15;

/// Sends a `SyscallSeenRecord` unless the process made `nr` before. A
/// record the ring buffer refuses is counted as lost by `emit`, and the
/// bit set anyway: the loss marks the session incomplete.
#[inline(always)]
fn note_syscall(cgroup: u64, nr: u32) {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if nr < SYSCALL_BITMAP_BITS {
        // The compiler knows nr's bound from the test above and would drop
        // the mask, recomputing the index from an unbounded copy the
        // verifier refuses: read it back opaquely so the mask stays.
        let word = unsafe { ptr::read_volatile(&(nr >> 6)) } as usize & (SYSCALL_BITMAP_WORDS - 1);
        let bit = 1u64 << (nr & 63);
        let mut seen = unsafe { SYSCALLS_SEEN.get_ptr_mut(&tgid) };
        if seen.is_none() {
            let _ = SYSCALLS_SEEN.insert(&tgid, &[0; SYSCALL_BITMAP_WORDS], 0);
            seen = unsafe { SYSCALLS_SEEN.get_ptr_mut(&tgid) };
        }
        if let Some(words) = seen {
            let w = unsafe { &mut (*words)[word] };
            if *w & bit != 0 {
                return;
            }
            *w |= bit;
        }
    }
    let rec = SyscallSeenRecord {
        header: header(RecordKind::SyscallSeen, cgroup),
        nr,
        _pad: 0,
    };
    emit(
        (&rec as *const SyscallSeenRecord).cast(),
        core::mem::size_of::<SyscallSeenRecord>(),
        core::mem::size_of::<SyscallSeenRecord>(),
    );
}

/// Starts a new span of folded repeats for the current process.
#[inline(always)]
fn new_fold_epoch(tgid: u32) {
    let now = unsafe { bpf_ktime_get_ns() };
    let _ = FOLD_EPOCH.insert(&tgid, &now, 0);
}

const FOLD_MUL: [u64; 2] = [0x9e37_79b9_7f4a_7c15, 0xc2b2_ae3d_27d4_eb4f];

#[inline(always)]
fn mix(h: &mut [u64; 2], v: u64) {
    for (h, m) in h.iter_mut().zip(FOLD_MUL) {
        *h = (*h ^ v).wrapping_mul(m);
        *h ^= *h >> 29;
    }
}

/// The key `rec` folds under: a call on an absolute path whose name was
/// read whole, by the process in its current fold span, with `keep` (its
/// flags and mode) and result `ret`. None when it cannot fold.
#[inline(always)]
fn fold_key(rec: &SyscallRecord, keep: [u64; 2], ret: i64) -> Option<[u64; 2]> {
    const WHOLE: u32 = flags::STR0_PRESENT | flags::STR0_TRUNCATED | flags::STR0_FAULT;
    let len = rec.str_len[0];
    if rec.flags & WHOLE != flags::STR0_PRESENT || len == 0 || rec.strings[0] != b'/' {
        return None;
    }
    let tgid = rec.header.pid;
    let Some(epoch) = (unsafe { FOLD_EPOCH.get(&tgid) }).copied() else {
        // Running before the watch began, or evicted: a span starts now.
        new_fold_epoch(tgid);
        return None;
    };
    let mut h = [0x243f_6a88_85a3_08d3u64, 0x1319_8a2e_0370_7344];
    for v in [
        tgid as u64,
        epoch,
        rec.nr as u64,
        ret as u64,
        keep[0],
        keep[1],
        len as u64,
    ] {
        mix(&mut h, v);
    }
    // The name, eight bytes at a time, in a `bpf_loop` so that the verifier
    // checks one step, not one per word of the slot.
    let mut walk = NameHash { h, len };
    let words = len.div_ceil(8);
    unsafe {
        bpf_loop(
            words,
            name_hash_step as *mut c_void,
            (&mut walk as *mut NameHash).cast(),
            0,
        )
    };
    let h = walk.h;
    Some(h)
}

/// The running hash of `fold_key` over slot 0 of the scratch record.
#[repr(C)]
struct NameHash {
    h: [u64; 2],
    len: u32,
}

/// Mixes word `i` of the scratch record's slot 0 into the hash, the last
/// word masked to the name's length.
extern "C" fn name_hash_step(i: u64, walk: *mut c_void) -> i64 {
    let walk = unsafe { &mut *(walk as *mut NameHash) };
    let Some(rec) = SYSCALL_SCRATCH.get_ptr(0) else {
        return 1;
    };
    let at = (i as u32).wrapping_mul(8);
    if i >= (STR_SLOT / 8) as u64 || at >= walk.len {
        return 1;
    }
    let base = unsafe { (*rec).strings.as_ptr() };
    let mut w = unsafe { ptr::read_unaligned(base.add((i as usize) * 8).cast::<u64>()) };
    let left = walk.len - at;
    if left < 8 {
        w &= (1u64 << (left * 8)) - 1;
    }
    mix(&mut walk.h, w);
    0
}

/// Whether a call under `key` was sent before (in this span); if not, it
/// is marked sent now, and its record carries the key.
#[inline(always)]
fn sent_before(rec: &mut SyscallRecord, key: [u64; 2]) -> bool {
    if unsafe { FOLD_SEEN.get(&key) }.is_some() {
        return true;
    }
    let _ = FOLD_SEEN.insert(&key, &1, 0);
    rec.fold_key = key;
    false
}

/// Counts `n` repeats of `cgroup` folded: not sent.
#[inline(always)]
fn count_folded(cgroup: u64, n: u64) {
    if let Some(p) = COUNTERS.get_ptr_mut(counter::FOLDED) {
        unsafe { *p += n };
    }
    if let Some(p) = CGROUP_FOLDED.get_ptr_mut(&cgroup) {
        unsafe { *p += n };
    } else {
        let _ = CGROUP_FOLDED.insert(&cgroup, &n, 0);
    }
}

#[inline(always)]
fn fd_slot(tgid: u32, fd: i64) -> u64 {
    ((tgid as u64) << 32) | (fd as u64 & 0xffff_ffff)
}

/// Whether the process may hold folded descriptors.
#[inline(always)]
fn holds_folded_fds(tgid: u32) -> bool {
    unsafe { FD_FOLDS.get(&tgid) }.is_some_and(|v| *v == FD_FOLDS_HELD)
}

/// Keeps descriptor `fd`, made by a repeated open, instead of sending the
/// open. False when it cannot be kept (the open is then sent).
#[inline(always)]
fn keep_folded_fd(tgid: u32, fd: i64, key: [u64; 2]) -> bool {
    if !(0..FOLD_FD_LIMIT).contains(&fd) {
        return false;
    }
    match unsafe { FD_FOLDS.get(&tgid) }.copied() {
        Some(FD_FOLDS_NEVER) => return false,
        Some(_) => {}
        None => {
            if FD_FOLDS.insert(&tgid, &FD_FOLDS_HELD, 0).is_err() {
                return false;
            }
        }
    }
    FOLDED_FDS.insert(&fd_slot(tgid, fd), &key, 0).is_ok()
}

/// Reports descriptor `fd` of the process if it is a folded one: its open
/// is replayed in user space before what comes next.
#[inline(never)]
fn report_folded_fd(tgid: u32, fd: i64, cgroup: u64) {
    if !(0..FOLD_FD_LIMIT).contains(&fd) {
        return;
    }
    let slot = fd_slot(tgid, fd);
    let Some(key) = (unsafe { FOLDED_FDS.get(&slot) }).copied() else {
        return;
    };
    let _ = FOLDED_FDS.remove(&slot);
    let rec = FdRepeatRecord {
        header: header(RecordKind::FdRepeat, cgroup),
        fd: fd as i32,
        _pad: 0,
        key,
    };
    emit(
        (&rec as *const FdRepeatRecord).cast(),
        core::mem::size_of::<FdRepeatRecord>(),
        core::mem::size_of::<FdRepeatRecord>(),
    );
}

/// Ends folded descriptor `fd` unreported (it was closed): whether it was
/// one. Its open counts as folded.
#[inline(always)]
fn end_folded_fd(tgid: u32, fd: i64, cgroup: u64) -> bool {
    if !(0..FOLD_FD_LIMIT).contains(&fd) || FOLDED_FDS.remove(&fd_slot(tgid, fd)).is_err() {
        return false;
    }
    count_folded(cgroup, 1);
    true
}

/// What `fd_walk_step` does to each folded descriptor in `first..=last`.
#[repr(C)]
struct FdWalk {
    tgid: u32,
    report: u32,
    cgroup: u64,
    first: u64,
    last: u64,
}

/// One step of `walk_folded_fds` (a `bpf_loop` callback: verified once,
/// not once per descriptor).
extern "C" fn fd_walk_step(fd: u64, walk: *mut c_void) -> i64 {
    let walk = unsafe { &*(walk as *const FdWalk) };
    if fd >= walk.first && fd <= walk.last {
        if walk.report != 0 {
            report_folded_fd(walk.tgid, fd as i64, walk.cgroup);
        } else {
            end_folded_fd(walk.tgid, fd as i64, walk.cgroup);
        }
    }
    0
}

/// Reports each folded descriptor in `first..=last` the process holds (it
/// forks, execs, or changes what its names mean), or ends it (`report`
/// false: it exited, or closed a range).
#[inline(always)]
fn walk_folded_fds(tgid: u32, cgroup: u64, report: bool, first: u64, last: u64) {
    if !holds_folded_fds(tgid) {
        return;
    }
    let mut walk = FdWalk {
        tgid,
        report: report as u32,
        cgroup,
        first,
        last,
    };
    unsafe {
        bpf_loop(
            FOLD_FD_LIMIT as u32,
            fd_walk_step as *mut c_void,
            (&mut walk as *mut FdWalk).cast(),
            0,
        )
    };
}

#[inline(always)]
fn all_folded_fds(tgid: u32, cgroup: u64, report: bool) {
    walk_folded_fds(tgid, cgroup, report, 0, u64::MAX);
}

/// Before a call's record: reports the folded descriptors it names, and
/// ends those it closes or replaces. True when the call itself is a folded
/// descriptor's close, which is then not sent.
#[inline(always)]
fn settle_folded_fds(nr: u32, args: &[u64; 6], ret: i64, tgid: u32, cgroup: u64) -> bool {
    let fd = |i: u8| arg(args, i) as i32 as i64;
    if nr == nr::CLOSE {
        // One map operation, the hot path's only one for a close.
        if end_folded_fd(tgid, fd(0), cgroup) {
            count_folded(cgroup, 1);
            return true;
        }
        return false;
    }
    // Most calls name no descriptor (AT_FDCWD): no lookup at all.
    let named = fd_args(nr)
        .iter()
        .any(|&i| i != NO_FD_ARG && (0..FOLD_FD_LIMIT).contains(&fd(i)));
    let ends = matches!(nr, nr::DUP2 | nr::DUP3 | nr::CLOSE_RANGE);
    if !(named || ends) || !holds_folded_fds(tgid) {
        return false;
    }
    for i in fd_args(nr) {
        if i != NO_FD_ARG {
            report_folded_fd(tgid, fd(i), cgroup);
        }
    }
    match nr {
        // The old descriptor at newfd is closed by a successful dup2/dup3.
        nr::DUP2 | nr::DUP3 if ret >= 0 && args[0] != args[1] => {
            end_folded_fd(tgid, fd(1), cgroup);
        }
        nr::CLOSE_RANGE if ret == 0 && args[2] & CLOSE_RANGE_CLOEXEC == 0 => {
            walk_folded_fds(tgid, cgroup, false, args[0], args[1]);
        }
        _ => {}
    }
    false
}

const CLOSE_RANGE_CLOEXEC: u64 = 4;

fn try_sys_enter(ctx: &BtfTracePointContext) -> Option<()> {
    let id: i64 = ctx.arg(1);
    let nr = id as u32;
    let cgroup = watched_cgroup()?;
    let spec = noted(cgroup, nr)?;
    let regs: *const [u64; REG_WORDS] = ctx.arg(0);
    let Ok(regs) = (unsafe { bpf_probe_read_kernel(regs) }) else {
        count_loss::<{ cgroup_loss::INFLIGHT }>(cgroup, counter::INFLIGHT_FULL);
        warn!(
            ctx,
            "sys_enter: registers of syscall {} unreadable: record lost", nr
        );
        return None;
    };
    let mut args = [0u64; 6];
    for (a, r) in args.iter_mut().zip(ARG_REGS) {
        *a = regs[r];
    }
    enter(ctx, cgroup, nr, spec, &args)
}

/// The same as `sys_enter`, attached to the per-syscall tracepoints
/// `syscalls/sys_enter_NAME` of every syscall but the unhooked ones
/// (`syscalls::unhooked`), so that those never run a program.
#[tracepoint]
pub fn sys_enter_one(ctx: TracePointContext) -> u32 {
    let _ = try_sys_enter_one(&ctx);
    0
}

// The context the kernel builds for a per-syscall tracepoint's program: the
// common fields, the number (an int) at 8, and from 16 the arguments (those
// the syscall has; the rest are not set) or the return value. The kernel
// refuses to attach a program that loads from the context past the end of
// a tracepoint's own fields, so the arguments are copied with a helper.
const TP_NR: usize = 8;
const TP_ARGS: usize = 16;

#[inline(always)]
fn tp_nr(ctx: &TracePointContext) -> u32 {
    unsafe { ptr::read_volatile(ctx.as_ptr().cast::<u8>().add(TP_NR).cast::<u32>()) }
}

fn try_sys_enter_one(ctx: &TracePointContext) -> Option<()> {
    let nr = tp_nr(ctx);
    let cgroup = watched_cgroup()?;
    let spec = noted(cgroup, nr)?;
    let at = unsafe { ctx.as_ptr().cast::<u8>().add(TP_ARGS) }.cast::<[u64; 6]>();
    let Ok(args) = (unsafe { bpf_probe_read_kernel(at) }) else {
        count_loss::<{ cgroup_loss::INFLIGHT }>(cgroup, counter::INFLIGHT_FULL);
        warn!(
            ctx,
            "sys_enter_one: arguments of syscall {} unreadable: record lost", nr
        );
        return None;
    };
    enter(ctx, cgroup, nr, spec, &args)
}

/// What every watched syscall entry does first: the seccomp evidence, the
/// end of a fold span; then the call's spec when it is traced.
#[inline(always)]
fn noted(cgroup: u64, nr: u32) -> Option<Spec> {
    note_syscall(cgroup, nr);
    if forgets_folded(nr) {
        let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
        // Kept descriptors keep what they named before the change.
        all_folded_fds(tgid, cgroup, true);
        new_fold_epoch(tgid);
    }
    spec(nr)
}

#[inline(always)]
fn enter<C: EbpfContext>(ctx: &C, cgroup: u64, nr: u32, spec: Spec, args: &[u64; 6]) -> Option<()> {
    let args = *args;

    if nr == nr::EXIT || nr == nr::EXIT_GROUP {
        let rec = scratch_syscall(RecordKind::Syscall, cgroup, nr, &args)?;
        rec.flags = flags::NO_RETURN;
        emit_syscall(rec);
        return Some(());
    }
    let mut enter_flags = 0;
    if let (StrSource::Path(p), StrSource::Argv(a)) = (spec.str0, spec.str1) {
        if global(&FOLD_REPEATS) != 0 {
            // execveat's dirfd: user space resolves the name at entry.
            settle_folded_fds(
                nr,
                &args,
                0,
                (bpf_get_current_pid_tgid() >> 32) as u32,
                cgroup,
            );
        }
        let rec = scratch_syscall(RecordKind::ExecArgs, cgroup, nr, &args)?;
        let (l0, l1, argc, bits) = read_exec_names(rec, &args, p, a);
        rec.str_len = [l0, l1];
        rec.argc = argc;
        rec.flags |= bits;
        // Not counted as a fault yet: sys_exit (failed exec) or
        // sched_process_exec (loaded image) reads the names again.
        enter_flags = bits & (flags::STR0_FAULT | flags::STR1_FAULT);
        emit_syscall(rec);
    }
    let tid = bpf_get_current_pid_tgid() as u32;
    let entry = InFlight {
        nr,
        enter_flags,
        args,
        enter_ts_ns: unsafe { bpf_ktime_get_ns() },
    };
    if INFLIGHT.insert(&tid, &entry, 0).is_err() {
        count_loss::<{ cgroup_loss::INFLIGHT }>(cgroup, counter::INFLIGHT_FULL);
        warn!(
            ctx,
            "sys_enter: in-flight map full: syscall {} of tid {} lost", nr, tid
        );
    }
    Some(())
}

#[btf_tracepoint(function = "sys_exit")]
pub fn sys_exit(ctx: BtfTracePointContext) -> i32 {
    let _ = try_sys_exit(&ctx);
    0
}

fn try_sys_exit(ctx: &BtfTracePointContext) -> Option<()> {
    let regs: *const u64 = ctx.arg(0);
    // A direct load: regs is a BTF pointer, so the verifier allows it without
    // a helper call, on every syscall of the host.
    let nr = unsafe { ptr::read_volatile(regs.wrapping_add(ORIG_AX)) } as u32;
    let spec = spec(nr)?;
    let ret: i64 = ctx.arg(1);
    exit(ctx, nr, spec, ret)
}

/// The same as `sys_exit`, attached to `syscalls/sys_exit_NAME` of the
/// traced syscalls only.
#[tracepoint]
pub fn sys_exit_one(ctx: TracePointContext) -> u32 {
    let _ = try_sys_exit_one(&ctx);
    0
}

fn try_sys_exit_one(ctx: &TracePointContext) -> Option<()> {
    let nr = tp_nr(ctx);
    if !seen_at_exit(nr) {
        // Paired with its entry (`INFLIGHT`).
        let spec = spec(nr)?;
        let ret =
            unsafe { ptr::read_volatile(ctx.as_ptr().cast::<u8>().add(TP_ARGS).cast::<i64>()) };
        return exit(ctx, nr, spec, ret);
    }
    // Seen at exit only (no entry hook): the whole call is here, its
    // arguments in the user registers the kernel saved at entry. (The
    // `regs` the context starts with are the tracer's own, not those.)
    let spec = spec(nr)?;
    let cgroup = watched_cgroup()?;
    note_syscall(cgroup, nr);
    // A BTF pointer: direct loads, no helper call.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as *const u64;
    if unsafe { ptr::read_volatile(regs.wrapping_add(ORIG_AX)) } as u32 != nr {
        count_loss::<{ cgroup_loss::INFLIGHT }>(cgroup, counter::INFLIGHT_FULL);
        warn!(
            ctx,
            "sys_exit_one: the saved registers are not syscall {}'s: record lost", nr
        );
        return None;
    }
    let mut args = [0u64; 6];
    for (a, r) in args.iter_mut().zip(ARG_REGS) {
        *a = unsafe { ptr::read_volatile(regs.wrapping_add(r)) };
    }
    let ret = unsafe { ptr::read_volatile(ctx.as_ptr().cast::<u8>().add(TP_ARGS).cast::<i64>()) };
    let call = InFlight {
        nr,
        enter_flags: 0,
        args,
        enter_ts_ns: 0,
    };
    record_exit(cgroup, spec, ret, &call)
}

#[inline(always)]
fn exit<C: EbpfContext>(ctx: &C, nr: u32, spec: Spec, ret: i64) -> Option<()> {
    let tid = bpf_get_current_pid_tgid() as u32;
    // Only watched threads have an entry, so no cgroup walk here.
    let entry = *unsafe { INFLIGHT.get(&tid) }?;
    let _ = INFLIGHT.remove(&tid);
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    if entry.nr != nr {
        // Another call's entry: that call's exit was never seen. Counted
        // apart (docs/architecture.md): it happens in runc's own threads as
        // a container starts, and cannot be told from a real loss here.
        count(counter::EXIT_MISMATCH);
        debug!(
            ctx,
            "sys_exit: syscall {} of tid {} met the entry of syscall {}", nr, tid, entry.nr
        );
        return None;
    }
    record_exit(cgroup, spec, ret, &entry)
}

/// The record of a call that returned `ret`: names read now, folded when
/// it repeats, sent otherwise.
#[inline(always)]
fn record_exit(cgroup: u64, spec: Spec, ret: i64, entry: &InFlight) -> Option<()> {
    let nr = entry.nr;
    let rec = unstamped_scratch_syscall(cgroup, nr, &entry.args)?;
    rec.ret = ret;
    rec.enter_ts_ns = entry.enter_ts_ns;
    let args = entry.args;
    let base = rec.strings.as_mut_ptr();

    // Names are read at exit: the kernel has faulted the pages in by now.
    // execve's names went out at entry (ExecArgs); they are gone after
    // success (sched_process_exec has sent them then). A failed exec whose
    // entry read faulted still has them, now faulted in: read them again.
    match (spec.str0, spec.str1) {
        (StrSource::Path(p), StrSource::Argv(a)) => {
            if ret < 0 && entry.enter_flags != 0 {
                let (l0, l1, argc, bits) = read_exec_names(rec, &args, p, a);
                rec.str_len = [l0, l1];
                rec.argc = argc;
                rec.flags |= bits;
                count_faults(bits);
            }
        }
        (StrSource::Path(p), _) => {
            let (l, b) = read_path(base, arg(&args, p));
            rec.str_len[0] = l;
            rec.flags |= b;
            count_faults(b);
        }
        _ => {}
    }
    match spec.str1 {
        StrSource::Path(p) => {
            let (l, b) = read_path(unsafe { base.add(STR_SLOT) }, arg(&args, p));
            rec.str_len[1] = l;
            rec.flags |= b << 4;
            count_faults(b);
        }
        StrSource::ReadlinkResult(p) if ret > 0 => {
            let n = if ret as usize >= STR_SLOT {
                STR_SLOT - 1
            } else {
                ret as usize
            };
            let r = unsafe {
                read_user_raw(
                    base.add(STR_SLOT).cast(),
                    (n & (STR_SLOT - 1)) as u32,
                    arg(&args, p) as *const c_void,
                )
            };
            if r == 0 {
                rec.str_len[1] = n as u32;
                rec.flags |= flags::STR1_PRESENT;
            } else {
                rec.flags |= flags::STR1_FAULT;
                count(counter::USER_READ_FAULT);
            }
        }
        _ => {}
    }
    match spec.addr {
        AddrSource::In { ptr, len } => {
            read_sockaddr(rec, arg(&args, ptr), arg(&args, len));
        }
        AddrSource::MsgHdr(m) => {
            let msghdr = arg(&args, m) as *const u8;
            if !msghdr.is_null() {
                let name: u64 = unsafe { bpf_probe_read_user(msghdr.cast()) }.unwrap_or(0);
                let len: u32 = unsafe { bpf_probe_read_user(msghdr.add(8).cast()) }.unwrap_or(0);
                read_sockaddr(rec, name, len as u64);
            }
        }
        AddrSource::Out { ptr, len_ptr } if ret >= 0 => {
            let len_at = arg(&args, len_ptr) as *const u32;
            if !len_at.is_null() {
                let len: u32 = unsafe { bpf_probe_read_user(len_at) }.unwrap_or(0);
                read_sockaddr(rec, arg(&args, ptr), len as u64);
            }
        }
        _ => {}
    }
    if global(&FOLD_REPEATS) != 0 {
        let tgid = rec.header.pid;
        if settle_folded_fds(nr, &args, ret, tgid, cgroup) {
            return Some(());
        }
        // A repeat is counted and dropped; a repeated open's descriptor is
        // kept instead (its open counts as folded when the descriptor ends
        // unreported). An open's key leaves out the descriptor it returned.
        let (keep, key_ret, into_fd) = match foldable(nr, ret, &args) {
            Some(keep) => (Some(keep), ret, false),
            None => (folds_into_fd(nr, ret, &args), 0, true),
        };
        if let Some(keep) = keep
            && let Some(key) = fold_key(rec, keep, key_ret)
            && sent_before(rec, key)
        {
            if !into_fd {
                count_folded(cgroup, 1);
                return Some(());
            }
            if keep_folded_fd(tgid, ret, key) {
                return Some(());
            }
        }
    }
    stamp(&mut rec.header);
    emit_syscall(rec);
    Some(())
}

const SIGCHLD: u64 = 17;
const CLONE_VM: u64 = 0x100;
const CLONE_VFORK: u64 = 0x4000;

#[tracepoint]
pub fn sched_process_fork(ctx: TracePointContext) -> u32 {
    let _ = try_fork(&ctx);
    0
}

fn try_fork(ctx: &TracePointContext) -> Option<()> {
    let cgroup = watched_cgroup()?;
    let Ok(child_tid) = (unsafe { ctx.read_at::<i32>(global(&FORK_CHILD_PID_OFFSET) as usize) })
    else {
        count_loss::<{ cgroup_loss::UNREAD }>(cgroup, counter::TRACEPOINT_UNREAD);
        warn!(
            ctx,
            "sched_process_fork: child pid unreadable: fork record lost"
        );
        return None;
    };
    let tid = bpf_get_current_pid_tgid() as u32;
    let clone_flags = match unsafe { INFLIGHT.get(&tid) } {
        Some(e) if e.nr == nr::CLONE => e.args[0],
        Some(e) if e.nr == nr::CLONE3 => {
            unsafe { bpf_probe_read_user(e.args[0] as *const u64) }.unwrap_or(0)
        }
        Some(e) if e.nr == nr::FORK => SIGCHLD,
        Some(e) if e.nr == nr::VFORK => CLONE_VM | CLONE_VFORK | SIGCHLD,
        _ => 0,
    };
    // A new process runs its parent's program: what the parent was seen
    // making needs no new record.
    const CLONE_THREAD: u64 = 0x10000;
    const CLONE_FILES: u64 = 0x400;
    if clone_flags & CLONE_THREAD == 0 {
        new_fold_epoch(child_tid as u32);
        let parent = (bpf_get_current_pid_tgid() >> 32) as u32;
        if global(&FOLD_REPEATS) != 0 {
            // The child inherits the descriptors: user space copies them
            // from the parent's table, so that must hold them.
            all_folded_fds(parent, cgroup, true);
            if clone_flags & CLONE_FILES != 0 {
                let _ = FD_FOLDS.insert(&parent, &FD_FOLDS_NEVER, 0);
                let _ = FD_FOLDS.insert(&(child_tid as u32), &FD_FOLDS_NEVER, 0);
            }
        }
        if let Some(seen) = unsafe { SYSCALLS_SEEN.get(&parent) } {
            let seen = *seen;
            let _ = SYSCALLS_SEEN.insert(&(child_tid as u32), &seen, 0);
        }
    }
    let rec = ForkRecord {
        header: header(RecordKind::Fork, cgroup),
        child_tid: child_tid as u32,
        _pad: 0,
        clone_flags,
    };
    emit(
        (&rec as *const ForkRecord).cast(),
        core::mem::size_of::<ForkRecord>(),
        core::mem::size_of::<ForkRecord>(),
    );
    Some(())
}

#[tracepoint]
pub fn sched_process_exec(ctx: TracePointContext) -> u32 {
    let _ = try_exec(&ctx);
    0
}

/// The exec has loaded its image: current is the new program. The file name
/// is a `__data_loc` string in the trace record (kernel memory), and argv
/// lies in pages of the new mm that the kernel has just written.
fn try_exec(ctx: &TracePointContext) -> Option<()> {
    let cgroup = watched_cgroup()?;
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // Descriptors outlive the exec (those without close-on-exec): reported
    // under the old program. The new one has a table of its own.
    all_folded_fds(tgid, cgroup, true);
    let _ = FD_FOLDS.remove(&tgid);
    // A new program: its syscalls are its own evidence, and its repeats
    // its own.
    let _ = SYSCALLS_SEEN.remove(&tgid);
    new_fold_epoch((bpf_get_current_pid_tgid() >> 32) as u32);
    let Ok(old_tid) = (unsafe { ctx.read_at::<i32>(global(&EXEC_OLD_PID_OFFSET) as usize) }) else {
        count_loss::<{ cgroup_loss::UNREAD }>(cgroup, counter::TRACEPOINT_UNREAD);
        warn!(
            ctx,
            "sched_process_exec: old pid unreadable: exec record lost"
        );
        return None;
    };
    let old_tid = old_tid as u32;
    let tid = bpf_get_current_pid_tgid() as u32;
    let entry = unsafe { INFLIGHT.get(&old_tid) }.copied();
    let (nr, args, enter_ts_ns) = match entry {
        Some(e) => {
            // A non-leader thread that exec'd now has the leader's id: move
            // its in-flight entry so that sys_exit finds it.
            if old_tid != tid {
                let _ = INFLIGHT.remove(&old_tid);
                if INFLIGHT.insert(&tid, &e, 0).is_err() {
                    count_loss::<{ cgroup_loss::INFLIGHT }>(cgroup, counter::INFLIGHT_FULL);
                }
            }
            (e.nr, e.args, e.enter_ts_ns)
        }
        None => (nr::EXECVE, [0u64; 6], 0),
    };
    let rec = scratch_syscall(RecordKind::ExecImage, cgroup, nr, &args)?;
    rec.ret = old_tid as i64;
    rec.enter_ts_ns = enter_ts_ns;
    let base = rec.strings.as_mut_ptr();

    // __data_loc: the low 16 bits are the string's offset in the record.
    let Ok(loc) = (unsafe { ctx.read_at::<u32>(global(&EXEC_FILENAME_OFFSET) as usize) }) else {
        count_loss::<{ cgroup_loss::UNREAD }>(cgroup, counter::TRACEPOINT_UNREAD);
        warn!(
            ctx,
            "sched_process_exec: file name unreadable: exec record lost"
        );
        return None;
    };
    let name = unsafe { (ctx.as_ptr() as *const u8).add((loc & 0xffff) as usize) };
    let n = unsafe { read_kernel_str_raw(base.cast(), STR_SLOT as u32, name.cast()) };
    if n > 0 {
        rec.str_len[0] = (n as u32).saturating_sub(1);
        rec.flags |= flags::STR0_PRESENT;
        if n as usize >= STR_SLOT {
            rec.flags |= flags::STR0_TRUNCATED;
        }
    } else {
        rec.flags |= flags::STR0_PRESENT | flags::STR0_FAULT;
        count(counter::USER_READ_FAULT);
    }

    // argv: NUL-terminated strings back to back, as ExecArgs packs them.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let mm: *const u8 =
        unsafe { bpf_probe_read_kernel(task.add(global(&TASK_MM_OFFSET) as usize).cast()) }
            .unwrap_or(ptr::null());
    let (start, end): (u64, u64) = if mm.is_null() {
        (0, 0)
    } else {
        unsafe {
            (
                bpf_probe_read_kernel(mm.add(global(&MM_ARG_START_OFFSET) as usize).cast())
                    .unwrap_or(0),
                bpf_probe_read_kernel(mm.add(global(&MM_ARG_END_OFFSET) as usize).cast())
                    .unwrap_or(0),
            )
        }
    };
    if start != 0 && end > start {
        let mut len = end - start;
        if len > (STR_SLOT - 1) as u64 {
            len = (STR_SLOT - 1) as u64;
            rec.flags |= flags::ARGV_TRUNCATED;
        }
        let len = (len as usize) & (STR_SLOT - 1);
        let r = unsafe {
            read_user_raw(
                base.add(STR_SLOT).cast(),
                len as u32,
                start as *const c_void,
            )
        };
        if r == 0 {
            rec.str_len[1] = len as u32;
            rec.flags |= flags::STR1_PRESENT;
        } else {
            rec.flags |= flags::STR1_FAULT;
            count(counter::USER_READ_FAULT);
        }
    } else {
        rec.flags |= flags::STR1_FAULT;
        count(counter::USER_READ_FAULT);
    }
    emit_syscall(rec);
    Some(())
}

/// The same exec, seen with its `linux_binprm`: the loaded image's ELF
/// header tells a program whose system calls go unreported (a 32-bit or
/// x32 one), which user space marks the session incomplete for.
#[btf_tracepoint(function = "sched_process_exec")]
pub fn exec_abi(ctx: BtfTracePointContext) -> i32 {
    let _ = try_exec_abi(&ctx);
    0
}

const EM_X86_64: u32 = 62;
const ELFCLASS64: u32 = 2;

fn try_exec_abi(ctx: &BtfTracePointContext) -> Option<()> {
    let cgroup = watched_cgroup()?;
    let bprm: *const u8 = ctx.arg(2);
    let head: [u8; 20] = match unsafe {
        bpf_probe_read_kernel(bprm.wrapping_add(global(&BPRM_BUF_OFFSET) as usize).cast())
    } {
        Ok(head) => head,
        Err(_) => {
            count_loss::<{ cgroup_loss::UNREAD }>(cgroup, counter::TRACEPOINT_UNREAD);
            return None;
        }
    };
    if head[0] != 0x7f || head[1] != b'E' || head[2] != b'L' || head[3] != b'F' {
        return None;
    }
    let elf_class = head[4] as u32;
    let machine = u16::from_le_bytes([head[18], head[19]]) as u32;
    if elf_class == ELFCLASS64 && machine == EM_X86_64 {
        return None;
    }
    let rec = ForeignExecRecord {
        header: header(RecordKind::ForeignExec, cgroup),
        elf_class,
        machine,
    };
    emit(
        (&rec as *const ForeignExecRecord).cast(),
        core::mem::size_of::<ForeignExecRecord>(),
        core::mem::size_of::<ForeignExecRecord>(),
    );
    Some(())
}

#[tracepoint]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    let _ = try_exit(&ctx);
    0
}

fn try_exit(ctx: &TracePointContext) -> Option<()> {
    let tid = bpf_get_current_pid_tgid() as u32;
    let _ = INFLIGHT.remove(&tid);
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let group_dead: u8 =
        unsafe { ctx.read_at(global(&EXIT_GROUP_DEAD_OFFSET) as usize) }.unwrap_or(0);
    // Before the watch check: a process that outlived its watch must not
    // leave folded descriptors to one that reuses its id.
    if group_dead != 0 && unsafe { FD_FOLDS.get(&tgid) }.is_some() {
        all_folded_fds(tgid, unsafe { bpf_get_current_cgroup_id() }, false);
        let _ = FD_FOLDS.remove(&tgid);
    }
    let cgroup = watched_cgroup()?;
    if group_dead != 0 {
        let _ = SYSCALLS_SEEN.remove(&tgid);
        let _ = FOLD_EPOCH.remove(&tgid);
    }
    let rec = ExitRecord {
        header: header(RecordKind::Exit, cgroup),
        group_dead: group_dead as u32,
        _pad: 0,
    };
    emit(
        (&rec as *const ExitRecord).cast(),
        core::mem::size_of::<ExitRecord>(),
        core::mem::size_of::<ExitRecord>(),
    );
    Some(())
}

/// `si_code` values of signals a process sent (`include/uapi/asm-generic/siginfo.h`).
const SI_USER: i32 = 0;
const SI_QUEUE: i32 = -1;
const SI_TKILL: i32 = -6;
/// `SEND_SIG_NOINFO` and `SEND_SIG_PRIV`: the kernel's stand-ins for a
/// siginfo, from a process (kill) and from the kernel itself.
const SEND_SIG_NOINFO: u64 = 0;
const SEND_SIG_PRIV: u64 = 1;

#[btf_tracepoint(function = "signal_generate")]
pub fn signal_generate(ctx: BtfTracePointContext) -> i32 {
    let _ = try_signal(&ctx);
    0
}

/// Reads `uid_t` at `offset` in the `struct cred` that `task` points to
/// at `cred_offset`.
#[inline(always)]
fn cred_ids(task: *const u8, cred_offset: u64, first: u64, second: u64) -> Option<(u32, u32)> {
    let cred: *const u8 =
        unsafe { bpf_probe_read_kernel(task.add(cred_offset as usize).cast()) }.ok()?;
    if cred.is_null() {
        return None;
    }
    unsafe {
        Some((
            bpf_probe_read_kernel(cred.add(first as usize).cast()).ok()?,
            bpf_probe_read_kernel(cred.add(second as usize).cast()).ok()?,
        ))
    }
}

/// signal_generate(sig, info, task, group, result): runs in the sender,
/// after the permission check passed. Only signals a process sent to
/// another process are kept; the kernel's own (SIGCHLD, SIGPIPE, a tty's)
/// carry another code or SEND_SIG_PRIV.
fn try_signal(ctx: &BtfTracePointContext) -> Option<()> {
    let cgroup = watched_cgroup()?;
    match read_signal(ctx, cgroup) {
        Ok(Some(rec)) => emit(
            (&rec as *const SignalRecord).cast(),
            core::mem::size_of::<SignalRecord>(),
            core::mem::size_of::<SignalRecord>(),
        ),
        Ok(None) => {}
        Err(Unread) => {
            count_loss::<{ cgroup_loss::UNREAD }>(cgroup, counter::TRACEPOINT_UNREAD);
            warn!(
                ctx,
                "signal_generate: a task or siginfo field unreadable: signal record lost"
            );
        }
    }
    Some(())
}

/// A kernel field the program could not read: its record is lost, and
/// counted so.
struct Unread;

/// The record of a signal the current process sent to another process;
/// None for any other signal (the kernel's own, one to itself).
fn read_signal(ctx: &BtfTracePointContext, cgroup: u64) -> Result<Option<SignalRecord>, Unread> {
    let sig: i32 = ctx.arg(0);
    let info: u64 = ctx.arg(1);
    let task: *const u8 = ctx.arg(2);
    let code = match info {
        SEND_SIG_NOINFO => SI_USER,
        SEND_SIG_PRIV => return Ok(None),
        p => unsafe {
            bpf_probe_read_kernel(
                (p as *const u8)
                    .add(global(&SIGINFO_CODE_OFFSET) as usize)
                    .cast(),
            )
        }
        .map_err(|_| Unread)?,
    };
    if code != SI_USER && code != SI_TKILL && code != SI_QUEUE {
        return Ok(None);
    }
    let target_pid: u32 =
        unsafe { bpf_probe_read_kernel(task.add(global(&TASK_TGID_OFFSET) as usize).cast()) }
            .map_err(|_| Unread)?;
    if target_pid == (bpf_get_current_pid_tgid() >> 32) as u32 {
        // Its own process: never checked.
        return Ok(None);
    }
    let current = unsafe { bpf_get_current_task() } as *const u8;
    let (uid, euid) = cred_ids(
        current,
        global(&TASK_CRED_OFFSET),
        global(&CRED_UID_OFFSET),
        global(&CRED_EUID_OFFSET),
    )
    .ok_or(Unread)?;
    let (target_uid, target_suid) = cred_ids(
        task,
        global(&TASK_REAL_CRED_OFFSET),
        global(&CRED_UID_OFFSET),
        global(&CRED_SUID_OFFSET),
    )
    .ok_or(Unread)?;
    Ok(Some(SignalRecord {
        header: header(RecordKind::Signal, cgroup),
        sig: sig as u32,
        code,
        target_pid,
        sender_uid: uid,
        sender_euid: euid,
        target_uid,
        target_suid,
        _pad: 0,
    }))
}

/// GPL-compatible, as the kernel requires for bpf_probe_read_kernel and
/// bpf_get_current_task.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
