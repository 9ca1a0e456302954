//! cimplifier's kernel programs.
//!
//! All programs attach host-wide and return at once unless the current task's
//! cgroup v2 is watched or descends from a watched cgroup, with no excluded
//! cgroup in between (`watched_cgroup`).
//!
//! - `sys_enter`/`sys_exit` (BTF raw tracepoints: no trace record is built,
//!   which keeps the cost for every unwatched syscall low) pair each call by
//!   thread id through `INFLIGHT` and emit one `SyscallRecord` at exit, with
//!   the arguments, the return value and the names read from user memory.
//!   execve(at) also emits an `ExecArgs` record at entry, while its argv exists.
//! - `sched_process_fork`/`sched_process_exit` follow the process tree.
//!
//! Every dropped record is counted in `COUNTERS`.
#![no_std]
#![no_main]

use core::{ffi::c_void, ptr};

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_task, bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_user,
        generated::{
            bpf_get_current_ancestor_cgroup_id, bpf_probe_read_user as read_user_raw,
            bpf_probe_read_user_str as read_user_str_raw,
        },
    },
    macros::{btf_tracepoint, map, tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{BtfTracePointContext, TracePointContext},
};
use cimplifier_common::{
    COMM_LEN, ExitRecord, ForkRecord, MAX_ARGV, MAX_CGROUP_LEVEL, RecordHeader, RecordKind,
    SOCKADDR_MAX, STR_SLOT, SyscallRecord, counter, flags,
    syscalls::{AddrSource, StrSource, nr, spec},
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
    _pad: u32,
    args: [u64; 6],
    enter_ts_ns: u64,
}

#[map]
static INFLIGHT: HashMap<u32, InFlight> = HashMap::with_max_entries(65536, 0);

/// Scratch records: too large for the 512-byte stack.
#[map]
static SYSCALL_SCRATCH: PerCpuArray<SyscallRecord> = PerCpuArray::with_max_entries(1, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

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

/// Sends the first `len` bytes of `base`, counting a full ring buffer as loss.
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
        count(counter::RINGBUF_FULL);
    }
}

/// Reads a NUL-terminated user string into `dst` (STR_SLOT bytes of room).
/// Returns (length without NUL, flag bits relative to slot 0).
#[inline(always)]
fn read_path(dst: *mut u8, src: u64) -> (u32, u32) {
    if src == 0 {
        return (0, 0);
    }
    let n = unsafe { read_user_str_raw(dst.cast(), STR_SLOT as u32, src as *const c_void) };
    if n <= 0 {
        count(counter::USER_READ_FAULT);
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
            count(counter::USER_READ_FAULT);
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
            count(counter::USER_READ_FAULT);
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
    let rec = unsafe { &mut *SYSCALL_SCRATCH.get_ptr_mut(0)? };
    rec.header = header(kind, cgroup);
    rec.nr = nr;
    rec.flags = 0;
    rec.args = *args;
    rec.ret = 0;
    rec.enter_ts_ns = 0;
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

fn try_sys_enter(ctx: &BtfTracePointContext) -> Option<()> {
    let id: i64 = ctx.arg(1);
    let nr = id as u32;
    let spec = spec(nr)?;
    let cgroup = watched_cgroup()?;
    let regs: *const [u64; REG_WORDS] = ctx.arg(0);
    let regs = unsafe { bpf_probe_read_kernel(regs) }.ok()?;
    let mut args = [0u64; 6];
    for (a, r) in args.iter_mut().zip(ARG_REGS) {
        *a = regs[r];
    }

    if nr == nr::EXIT || nr == nr::EXIT_GROUP {
        let rec = scratch_syscall(RecordKind::Syscall, cgroup, nr, &args)?;
        rec.flags = flags::NO_RETURN;
        emit_syscall(rec);
        return Some(());
    }
    if let (StrSource::Path(p), StrSource::Argv(a)) = (spec.str0, spec.str1) {
        let rec = scratch_syscall(RecordKind::ExecArgs, cgroup, nr, &args)?;
        let base = rec.strings.as_mut_ptr();
        let (l0, b0) = read_path(base, args[p as usize % 6]);
        let (l1, argc, b1) = read_argv(unsafe { base.add(STR_SLOT) }, args[a as usize % 6]);
        rec.str_len = [l0, l1];
        rec.argc = argc;
        rec.flags |= b0 | b1;
        emit_syscall(rec);
    }
    let tid = bpf_get_current_pid_tgid() as u32;
    let entry = InFlight {
        nr,
        _pad: 0,
        args,
        enter_ts_ns: unsafe { bpf_ktime_get_ns() },
    };
    if INFLIGHT.insert(&tid, &entry, 0).is_err() {
        count(counter::INFLIGHT_FULL);
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
    let tid = bpf_get_current_pid_tgid() as u32;
    // Only watched threads have an entry, so no cgroup walk here.
    let entry = *unsafe { INFLIGHT.get(&tid) }?;
    let _ = INFLIGHT.remove(&tid);
    if entry.nr != nr {
        return None;
    }
    let ret: i64 = ctx.arg(1);
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    let rec = scratch_syscall(RecordKind::Syscall, cgroup, nr, &entry.args)?;
    rec.ret = ret;
    rec.enter_ts_ns = entry.enter_ts_ns;
    let args = entry.args;
    let base = rec.strings.as_mut_ptr();

    // Names are read at exit: the kernel has faulted the pages in by now.
    // execve's names went out at entry (ExecArgs); they are gone after success.
    match spec.str0 {
        StrSource::Path(p) => {
            let (l, b) = read_path(base, args[p as usize % 6]);
            rec.str_len[0] = l;
            rec.flags |= b;
        }
        _ => {}
    }
    match spec.str1 {
        StrSource::Path(p) => {
            let (l, b) = read_path(unsafe { base.add(STR_SLOT) }, args[p as usize % 6]);
            rec.str_len[1] = l;
            rec.flags |= b << 4;
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
                    args[p as usize % 6] as *const c_void,
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
            read_sockaddr(rec, args[ptr as usize % 6], args[len as usize % 6]);
        }
        AddrSource::MsgHdr(m) => {
            let msghdr = args[m as usize % 6] as *const u8;
            if !msghdr.is_null() {
                let name: u64 = unsafe { bpf_probe_read_user(msghdr.cast()) }.unwrap_or(0);
                let len: u32 = unsafe { bpf_probe_read_user(msghdr.add(8).cast()) }.unwrap_or(0);
                read_sockaddr(rec, name, len as u64);
            }
        }
        AddrSource::Out { ptr, len_ptr } if ret >= 0 => {
            let len_at = args[len_ptr as usize % 6] as *const u32;
            if !len_at.is_null() {
                let len: u32 = unsafe { bpf_probe_read_user(len_at) }.unwrap_or(0);
                read_sockaddr(rec, args[ptr as usize % 6], len as u64);
            }
        }
        _ => {}
    }
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
    let child_tid: i32 = unsafe { ctx.read_at(global(&FORK_CHILD_PID_OFFSET) as usize) }.ok()?;
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
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    let _ = try_exit(&ctx);
    0
}

fn try_exit(ctx: &TracePointContext) -> Option<()> {
    let tid = bpf_get_current_pid_tgid() as u32;
    let _ = INFLIGHT.remove(&tid);
    let cgroup = watched_cgroup()?;
    let group_dead: u8 =
        unsafe { ctx.read_at(global(&EXIT_GROUP_DEAD_OFFSET) as usize) }.unwrap_or(0);
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
