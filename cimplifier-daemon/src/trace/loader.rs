//! Loads the kernel programs, owns the watch set, and turns the ring buffer
//! into a stream of [`Event`]s.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use aya::maps::{Array, HashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf};
use aya::programs::tp_btf::BtfTracePointLinkId;
use aya::programs::{BtfTracePoint, TracePoint};
use aya::{Btf, Ebpf, EbpfLoader};
use cimplifier_common::syscalls::{UNHOOKED, seen_at_exit, spec, unhooked};
use cimplifier_common::{
    MAX_CGROUP_LEVEL, SYSCALL_BITMAP_BITS, cgroup_loss, counter, globals, maps,
};
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

use super::cgroup::{Frozen, cgroup_id, cgroup_level, cgroup_of_pid, pids_below, snapshot_process};
use super::decode::{RawHeader, decode};
use super::kernel_layout::{KernelLayout, TRACEFS};
use super::perf::{attach_tracepoint, tracepoint_id};
use super::resolve::Resolver;
use super::{CgroupId, Event, LossCounters};

/// The kernel programs, built by build.rs with Debian's rustc-web.
static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/cimplifier.bpf.o"));

#[derive(Clone, Debug)]
pub struct TracerConfig {
    /// Ring buffer size in bytes (a power of two, multiple of the page size).
    pub ring_buffer_bytes: u32,
    /// Decoded events buffered between the reader and the consumer. When the
    /// consumer lags the reader waits, and the ring buffer absorbs the burst.
    pub channel_capacity: usize,
    /// Fold repeats in the kernel (`syscalls::foldable`): a call that adds
    /// nothing to the model is counted, not sent.
    pub fold_repeats: bool,
    /// The kernel programs log their anomalies (aya-log) to the daemon's
    /// log, target `cimplifier::kernel`. Off, the log calls are dead code
    /// to the verifier and cost nothing.
    pub kernel_log: bool,
    /// Where the syscall programs attach.
    pub hooks: HookMode,
}

impl Default for TracerConfig {
    fn default() -> Self {
        Self {
            ring_buffer_bytes: 64 << 20,
            channel_capacity: 65536,
            fold_repeats: true,
            kernel_log: false,
            hooks: HookMode::PerSyscall,
        }
    }
}

/// Where the syscall programs attach while a cgroup is watched.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HookMode {
    /// The per-syscall tracepoints (`syscalls/sys_enter_NAME`) of every
    /// syscall but [`UNHOOKED`], and `sys_exit_NAME` of the traced ones: a
    /// read, write, epoll or futex runs no program, watched or not. Those
    /// are not seen, so seccomp profiles allow them (`EventKind::Unhooked`).
    #[default]
    PerSyscall,
    /// `sys_enter`/`sys_exit` (BTF raw tracepoints): every syscall of the
    /// host runs a program, and every syscall a watched process makes is seen.
    EverySyscall,
}

impl HookMode {
    /// The syscalls a watched process makes unseen in this mode.
    pub fn unhooked(self) -> &'static [u32] {
        match self {
            Self::PerSyscall => UNHOOKED,
            Self::EverySyscall => &[],
        }
    }
}

impl std::fmt::Display for HookMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::PerSyscall => "per-syscall",
            Self::EverySyscall => "every-syscall",
        })
    }
}

/// A watched cgroup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchedCgroup {
    pub id: CgroupId,
    pub path: PathBuf,
}

struct Maps {
    watched: HashMap<MapData, u64, u8>,
    generation: Array<MapData, u64>,
    counters: PerCpuArray<MapData, u64>,
    cgroup_loss: PerCpuHashMap<MapData, u64, [u64; cgroup_loss::COUNT]>,
    cgroup_folded: PerCpuHashMap<MapData, u64, u64>,
    /// The kernel's folded descriptors (`FD_FOLDS`, `FOLDED_FDS`).
    fd_folds: HashMap<MapData, u32, u8>,
    folded_fds: HashMap<MapData, u64, [u64; 2]>,
}

impl Maps {
    fn forget_folded_fds(&mut self, pids: &[u32]) {
        for pid in pids {
            let _ = self.fd_folds.remove(pid);
        }
        let stale: Vec<u64> = self
            .folded_fds
            .keys()
            .filter_map(Result::ok)
            .filter(|k| pids.contains(&((k >> 32) as u32)))
            .collect();
        for k in stale {
            let _ = self.folded_fds.remove(&k);
        }
    }
}

/// Records the kernel lost for one cgroup, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupLoss {
    pub ringbuf_full: u64,
    pub inflight: u64,
    /// Fork and exec records not made: a tracepoint field was unreadable.
    pub unread: u64,
}

impl CgroupLoss {
    /// Both together, cause by cause, stopping at `u64::MAX`.
    pub fn plus(self, other: Self) -> Self {
        Self {
            ringbuf_full: self.ringbuf_full.saturating_add(other.ringbuf_full),
            inflight: self.inflight.saturating_add(other.inflight),
            unread: self.unread.saturating_add(other.unread),
        }
    }
}

/// The BTF raw tracepoint programs of [`HookMode::EverySyscall`].
const EVERY_SYSCALL_HOOKS: [(&str, &str); 2] =
    [("sys_enter", "sys_enter"), ("sys_exit", "sys_exit")];
/// The tracepoint programs of [`HookMode::PerSyscall`].
const ENTER_ONE: &str = "sys_enter_one";
const EXIT_ONE: &str = "sys_exit_one";

/// The per-syscall tracepoints' names where they are not `sys_*_NAME`.
fn tracepoint_name(syscall: &str) -> &str {
    match syscall {
        "stat" => "newstat",
        "fstat" => "newfstat",
        "lstat" => "newlstat",
        "uname" => "newuname",
        "sendfile" => "sendfile64",
        "umount2" => "umount",
        other => other,
    }
}

/// One per-syscall attachment to make: the syscall and its tracepoint.
struct OneHook {
    nr: u32,
    tracepoint: String,
    id: u64,
}

/// The per-syscall tracepoints to attach, for every syscall this kernel
/// has one for, but [`UNHOOKED`]: entries for all (the seccomp evidence)
/// but those [`seen_at_exit`], exits for the traced ones. A traced syscall
/// without both is an error: its calls would go unseen.
fn per_syscall_hooks() -> Result<(Vec<OneHook>, Vec<OneHook>)> {
    let events = Path::new(TRACEFS).join("events/syscalls");
    let (mut enters, mut exits) = (Vec::new(), Vec::new());
    for nr in 0..SYSCALL_BITMAP_BITS {
        if unhooked(nr) {
            continue;
        }
        let Some(name) = syscalls::x86_64::Sysno::new(nr as usize).map(|s| s.name()) else {
            continue;
        };
        let tp = tracepoint_name(name);
        let (enter, exit) = (format!("sys_enter_{tp}"), format!("sys_exit_{tp}"));
        let traced = spec(nr).is_some();
        if !events.join(&enter).exists() || (traced && !events.join(&exit).exists()) {
            if traced {
                bail!(
                    "the kernel has no tracepoint {} for the traced syscall {name}: run \
                     `cimplifierd serve --hooks every-syscall`",
                    events.join(&enter).display()
                );
            }
            // Not built into this kernel (its calls fail with ENOSYS).
            continue;
        }
        if !seen_at_exit(nr) {
            enters.push(OneHook {
                nr,
                id: tracepoint_id("syscalls", &enter)?,
                tracepoint: enter,
            });
        }
        if traced {
            exits.push(OneHook {
                nr,
                id: tracepoint_id("syscalls", &exit)?,
                tracepoint: exit,
            });
        }
    }
    Ok((enters, exits))
}

enum Links {
    EverySyscall([BtfTracePointLinkId; 2]),
    /// The perf events the programs hang on: closed, they detach.
    PerSyscall(Vec<PerfHook>),
}

/// Program `prog` on tracepoint `id`, for as long as `event` is open.
struct PerfHook {
    prog: &'static str,
    id: u64,
    _event: OwnedFd,
}

/// Per-syscall hooks being closed off the caller's path. Each close makes
/// the kernel wait for two RCU grace periods: one as the program is
/// detached, which closes made together share, and one as the tracepoint
/// is unregistered, under the kernel's tracing `event_mutex`. One closer
/// takes ~70 ms a hook, ~27 s for the ~370, and holds that mutex less than
/// half the time, so that other tracers (another of ours, bpftrace, a
/// security agent) attach meanwhile as fast as ever. A process about to
/// exit hurries them ([`Closing::hurry`]): [`CLOSERS`] threads overlap the
/// first waits and take ~11 s, holding the mutex nearly throughout
/// (docs/benchmarks.md). A watch that begins meanwhile stops them and
/// attaches again only the hooks already closed. Until then the hooks left
/// run for nobody (no cgroup is watched).
struct Closing {
    cancel: Arc<AtomicBool>,
    left: Arc<Mutex<Vec<PerfHook>>>,
    closed: Arc<AtomicUsize>,
    total: usize,
    started: std::time::Instant,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// How many threads close the hooks when hurried: two reach the floor of
/// the serial wait, and more only keep other tracers off the mutex longer.
const CLOSERS: usize = 2;

impl Closing {
    fn start(hooks: Vec<PerfHook>) -> Result<Self> {
        let mut closing = Self {
            cancel: Arc::new(AtomicBool::new(false)),
            total: hooks.len(),
            left: Arc::new(Mutex::new(hooks)),
            closed: Arc::new(AtomicUsize::new(0)),
            started: std::time::Instant::now(),
            threads: Vec::with_capacity(CLOSERS),
        };
        closing
            .add_closer()
            .context("starting the thread that closes the per-syscall hooks")?;
        Ok(closing)
    }

    fn add_closer(&mut self) -> std::io::Result<()> {
        let (stop, left, closed) = (self.cancel.clone(), self.left.clone(), self.closed.clone());
        let (total, started) = (self.total, self.started);
        let thread = std::thread::Builder::new()
            .name(format!("cimplifier-unhook-{}", self.threads.len()))
            .spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    let Some(hook) = left.lock().expect("closing hooks").pop() else {
                        break;
                    };
                    drop(hook);
                    // The last close says how it went.
                    if closed.fetch_add(1, Ordering::AcqRel) + 1 == total {
                        tracing::info!(
                            closed = total,
                            millis = started.elapsed().as_millis() as u64,
                            "closed the per-syscall hooks' perf events"
                        );
                    }
                }
            })?;
        self.threads.push(thread);
        Ok(())
    }

    /// Closes the rest [`CLOSERS`] at a time (fewer if threads cannot be
    /// had: that only takes longer).
    fn hurry(&mut self) {
        while self.threads.len() < CLOSERS && self.add_closer().is_ok() {}
    }

    /// Waits until every hook is closed, or (stopped) until the closes
    /// under way end.
    fn join(&mut self) {
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }

    /// Stops closing (after the closes under way); the hooks still open.
    fn stop(mut self) -> Vec<PerfHook> {
        self.cancel.store(true, Ordering::Release);
        self.join();
        let left = std::mem::take(&mut *self.left.lock().expect("closing hooks"));
        if !left.is_empty() {
            tracing::info!(
                left = left.len(),
                "stopped closing the per-syscall hooks: a cgroup is watched again"
            );
        }
        left
    }
}

/// The syscall programs run on every hooked syscall of the host, watched or
/// not; they are attached only while some cgroup is watched.
struct SyscallHooks {
    ebpf: Ebpf,
    mode: HookMode,
    links: Option<Links>,
    /// The per-syscall hooks of the last detach, while they are closed.
    closing: Option<Closing>,
    /// The kernel's in-flight map (value: the programs' 64-byte entry),
    /// emptied at detach: an entry left from before would meet another
    /// call's exit once attached again.
    inflight: HashMap<MapData, u32, [u64; 8]>,
}

impl SyscallHooks {
    fn attach(&mut self) -> Result<()> {
        if self.links.is_some() {
            return Ok(());
        }
        let start = std::time::Instant::now();
        let links = match self.mode {
            HookMode::EverySyscall => {
                let mut links = Vec::with_capacity(2);
                for (prog, hook) in EVERY_SYSCALL_HOOKS {
                    let p: &mut BtfTracePoint = program(&mut self.ebpf, prog)?;
                    links.push(
                        p.attach()
                            .with_context(|| format!("attaching to raw tracepoint {hook}"))?,
                    );
                }
                Links::EverySyscall(<[_; 2]>::try_from(links).expect("two hooks"))
            }
            HookMode::PerSyscall => {
                let (enters, exits) = per_syscall_hooks()?;
                // What the last detach has not closed yet is still attached.
                let mut open: std::collections::HashMap<(&str, u64), PerfHook> = self
                    .closing
                    .take()
                    .map(Closing::stop)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|h| ((h.prog, h.id), h))
                    .collect();
                let mut events = Vec::with_capacity(enters.len() + exits.len());
                for (prog, hooks) in [(ENTER_ONE, &enters), (EXIT_ONE, &exits)] {
                    let p: &mut TracePoint = program(&mut self.ebpf, prog)?;
                    let fd = p
                        .fd()
                        .with_context(|| format!("program {prog} is not loaded"))?;
                    for hook in hooks {
                        if let Some(still) = open.remove(&(prog, hook.id)) {
                            events.push(still);
                            continue;
                        }
                        // On error the events made so far are closed: detached.
                        let event = attach_tracepoint(fd.as_fd(), hook.id).with_context(|| {
                            format!(
                                "attaching {prog} to tracepoint syscalls/{} (syscall {})",
                                hook.tracepoint, hook.nr
                            )
                        })?;
                        events.push(PerfHook {
                            prog,
                            id: hook.id,
                            _event: event,
                        });
                    }
                }
                Links::PerSyscall(events)
            }
        };
        let hooked = match &links {
            Links::EverySyscall(_) => 2,
            Links::PerSyscall(events) => events.len(),
        };
        self.links = Some(links);
        tracing::info!(
            mode = %self.mode,
            tracepoints = hooked,
            micros = start.elapsed().as_micros() as u64,
            "attached the syscall hooks: a cgroup is watched"
        );
        Ok(())
    }

    fn detach(&mut self) -> Result<()> {
        let Some(links) = self.links.take() else {
            return Ok(());
        };
        match links {
            Links::EverySyscall(links) => {
                for ((prog, _), link) in EVERY_SYSCALL_HOOKS.into_iter().zip(links) {
                    let p: &mut BtfTracePoint = program(&mut self.ebpf, prog)?;
                    p.detach(link)
                        .with_context(|| format!("detaching {prog}"))?;
                }
            }
            Links::PerSyscall(events) => self.closing = Some(Closing::start(events)?),
        }
        let stale: Vec<u32> = self.inflight.keys().filter_map(|k| k.ok()).collect();
        for tid in stale {
            let _ = self.inflight.remove(&tid);
        }
        tracing::info!("detached the syscall hooks: no cgroup is watched");
        Ok(())
    }
}

impl Drop for SyscallHooks {
    /// The per-syscall hooks are closed on their threads (see [`Closing`]),
    /// which nothing joins: a process that drops its tracer goes on at
    /// once. At its exit the kernel closes what is left, one at a time: a
    /// process about to exit calls [`Tracer::wait_unhooked`] first.
    fn drop(&mut self) {
        if let Some(Links::PerSyscall(events)) = self.links.take() {
            let _ = Closing::start(events);
        }
    }
}

/// The loaded, attached tracer. Dropping it detaches every program.
pub struct Tracer {
    /// Owns the programs and their links.
    hooks: Mutex<SyscallHooks>,
    maps: Mutex<Maps>,
    /// The ring buffer while no reader holds it: a reader that ends, even
    /// by panicking, gives it back, so a new one can go on where it left.
    ring: Arc<Mutex<Option<RingBuf<MapData>>>>,
    resolver: Arc<Mutex<Resolver>>,
    undecodable: Arc<AtomicU64>,
    /// Decoded events a reader held when it ended abnormally, by cgroup
    /// (None: a record it was decoding), until taken with
    /// [`Tracer::take_interrupted`].
    interrupted: Arc<Mutex<std::collections::HashMap<Option<CgroupId>, u64>>>,
    /// Test hook: the reader panics at its next batch of events.
    kill_reader: Arc<AtomicBool>,
    /// Every record written before this time (CLOCK_MONOTONIC ns) has been
    /// read and handed to the event stream.
    drained_ns: Arc<AtomicU64>,
    config: TracerConfig,
    /// Forwards the kernel programs' log while `kernel_log` is on.
    _kernel_log: Option<KernelLogReader>,
}

impl Tracer {
    /// Loads and attaches the programs host-wide. They record nothing until
    /// a cgroup is watched. Needs root (CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN).
    pub fn load(config: TracerConfig) -> Result<Self> {
        if !Path::new(TRACEFS).join("events").exists() {
            bail!(
                "tracefs is not mounted at {TRACEFS}: run `mount -t tracefs nodev {TRACEFS}` (or `cargo xtask setup`)"
            );
        }
        let layout = KernelLayout::read()?;
        let mut ebpf = EbpfLoader::new()
            .override_global(
                globals::TASK_REAL_PARENT_OFFSET,
                &layout.task_real_parent,
                true,
            )
            .override_global(globals::TASK_TGID_OFFSET, &layout.task_tgid, true)
            .override_global(globals::FORK_CHILD_PID_OFFSET, &layout.fork_child_pid, true)
            .override_global(
                globals::EXIT_GROUP_DEAD_OFFSET,
                &layout.exit_group_dead,
                true,
            )
            .override_global(globals::EXEC_FILENAME_OFFSET, &layout.exec_filename, true)
            .override_global(globals::EXEC_OLD_PID_OFFSET, &layout.exec_old_pid, true)
            .override_global(globals::TASK_MM_OFFSET, &layout.task_mm, true)
            .override_global(globals::BPRM_BUF_OFFSET, &layout.bprm_buf, true)
            .override_global(globals::MM_ARG_START_OFFSET, &layout.mm_arg_start, true)
            .override_global(globals::MM_ARG_END_OFFSET, &layout.mm_arg_end, true)
            .override_global(globals::TASK_CRED_OFFSET, &layout.task_cred, true)
            .override_global(globals::TASK_REAL_CRED_OFFSET, &layout.task_real_cred, true)
            .override_global(globals::CRED_UID_OFFSET, &layout.cred_uid, true)
            .override_global(globals::CRED_SUID_OFFSET, &layout.cred_suid, true)
            .override_global(globals::CRED_EUID_OFFSET, &layout.cred_euid, true)
            .override_global(globals::SIGINFO_CODE_OFFSET, &layout.siginfo_code, true)
            .override_global(globals::FOLD_REPEATS, &u64::from(config.fold_repeats), true)
            .override_global(aya_log::LEVEL, &kernel_log_level(config.kernel_log), true)
            .map_max_entries(maps::EVENTS, config.ring_buffer_bytes)
            .load(EBPF_OBJECT)
            .context("loading the eBPF programs (are you root, with BPF enabled?)")?;

        // The syscall hooks of the configured mode ([`HookMode`]). Loaded
        // now, attached only while a cgroup is watched ([`SyscallHooks`]):
        // an idle daemon costs the host nothing.
        let btf = Btf::from_sys_fs().context("reading kernel BTF from /sys/kernel/btf/vmlinux")?;
        match config.hooks {
            HookMode::EverySyscall => {
                for (prog, hook) in EVERY_SYSCALL_HOOKS {
                    let p: &mut BtfTracePoint = program(&mut ebpf, prog)?;
                    p.load(hook, &btf)
                        .with_context(|| format!("loading tp_btf program {prog}"))?;
                }
            }
            HookMode::PerSyscall => {
                for prog in [ENTER_ONE, EXIT_ONE] {
                    let p: &mut TracePoint = program(&mut ebpf, prog)?;
                    p.load()
                        .with_context(|| format!("loading tracepoint program {prog}"))?;
                }
            }
        }
        // Runs only when a signal is generated: attached for good.
        let p: &mut BtfTracePoint = program(&mut ebpf, "signal_generate")?;
        p.load("signal_generate", &btf)
            .context("loading tp_btf program signal_generate")?;
        p.attach()
            .context("attaching to BTF tracepoint signal_generate")?;
        for name in [
            "sched_process_fork",
            "sched_process_exec",
            "sched_process_exit",
        ] {
            let p: &mut TracePoint = program(&mut ebpf, name)?;
            p.load()
                .with_context(|| format!("loading tracepoint program {name}"))?;
            p.attach("sched", name)
                .with_context(|| format!("attaching to tracepoint sched/{name}"))?;
        }
        // Runs only at exec: attached for good. After `sched_process_exec`:
        // a tracepoint runs its probes in the order they came, so its
        // record follows the exec's image record, which the resolver needs
        // first to finish the exec.
        let p: &mut BtfTracePoint = program(&mut ebpf, "exec_abi")?;
        p.load("sched_process_exec", &btf)
            .context("loading tp_btf program exec_abi")?;
        p.attach()
            .context("attaching to BTF tracepoint sched_process_exec")?;

        let take = |ebpf: &mut Ebpf, name: &str| {
            ebpf.take_map(name)
                .ok_or_else(|| anyhow!("map {name} missing from the eBPF object"))
        };
        let maps = Maps {
            watched: HashMap::try_from(take(&mut ebpf, maps::WATCHED_CGROUPS)?)?,
            generation: Array::try_from(take(&mut ebpf, maps::WATCH_GENERATION)?)?,
            counters: PerCpuArray::try_from(take(&mut ebpf, maps::COUNTERS)?)?,
            cgroup_loss: PerCpuHashMap::try_from(take(&mut ebpf, maps::CGROUP_LOSS)?)?,
            cgroup_folded: PerCpuHashMap::try_from(take(&mut ebpf, maps::CGROUP_FOLDED)?)?,
            fd_folds: HashMap::try_from(take(&mut ebpf, maps::FD_FOLDS)?)?,
            folded_fds: HashMap::try_from(take(&mut ebpf, maps::FOLDED_FDS)?)?,
        };
        let ring = RingBuf::try_from(take(&mut ebpf, maps::EVENTS)?)?;
        let kernel_log = if config.kernel_log {
            let logger = aya_log::EbpfLogger::init_with_logger(&mut ebpf, KernelLogger)
                .context("reading the kernel programs' log (aya-log)")?;
            Some(KernelLogReader::start(logger)?)
        } else {
            None
        };
        let inflight = HashMap::try_from(take(&mut ebpf, maps::INFLIGHT)?)?;
        Ok(Self {
            hooks: Mutex::new(SyscallHooks {
                ebpf,
                mode: config.hooks,
                links: None,
                closing: None,
                inflight,
            }),
            maps: Mutex::new(maps),
            ring: Arc::new(Mutex::new(Some(ring))),
            resolver: Arc::new(Mutex::new(Resolver::with_snapshotter(Box::new(
                snapshot_process,
            )))),
            undecodable: Arc::new(AtomicU64::new(0)),
            interrupted: Arc::default(),
            kill_reader: Arc::default(),
            drained_ns: Arc::new(AtomicU64::new(0)),
            config,
            _kernel_log: kernel_log,
        })
    }

    /// Starts recording the processes of the cgroup at `dir` and of every
    /// cgroup below it, including ones created later.
    pub fn watch_cgroup(&self, dir: &Path) -> Result<WatchedCgroup> {
        self.watch(dir, true)
    }

    /// Like [`Tracer::watch_cgroup`], for a cgroup below one already
    /// watched: its processes are followed from their forks already, and
    /// reading /proc for them now would race with their queued events.
    pub fn watch_cgroup_followed(&self, dir: &Path) -> Result<WatchedCgroup> {
        self.watch(dir, false)
    }

    /// Stops recording the cgroup at `dir` and below although an ancestor is
    /// watched (the deepest entry on a cgroup's path decides). Given back
    /// with [`Tracer::unwatch`], or replaced by a later watch of `dir`.
    pub fn exclude_cgroup(&self, dir: &Path) -> Result<WatchedCgroup> {
        let id = cgroup_id(dir)?;
        within_walk(dir)?;
        let mut maps = self.maps.lock().expect("maps lock");
        maps.watched
            .insert(id.0, 0, 0)
            .with_context(|| format!("excluding cgroup {} from the watch set", dir.display()))?;
        bump_generation(&mut maps)?;
        Ok(WatchedCgroup {
            id,
            path: dir.to_path_buf(),
        })
    }

    /// Drops what the resolver holds for processes no longer recorded (their
    /// cgroup was excluded, so their exits will not be seen).
    pub fn forget_processes(&self, pids: impl IntoIterator<Item = u32>) {
        let mut resolver = lock_resolver(&self.resolver);
        for pid in pids {
            resolver.forget(pid);
        }
    }

    fn watch(&self, dir: &Path, seed: bool) -> Result<WatchedCgroup> {
        let id = cgroup_id(dir)?;
        within_walk(dir)?;
        // Processes already running are read from /proc, then the cgroup
        // goes into the kernel's map: a process that forked or exec'd in
        // between would be known by a stale state (an old executable) or not
        // at all. Frozen, the cgroup cannot change meanwhile.
        let _frozen = match seed.then(|| Frozen::new(dir, FREEZE_TIMEOUT)) {
            Some(Err(e)) => {
                tracing::warn!(
                    cgroup = %dir.display(),
                    "watching without freezing it first ({e:#}): a process that forks or execs \
                     while /proc is read may be recorded with its old executable"
                );
                None
            }
            frozen => frozen.and_then(Result::ok),
        };
        // Processes already running: learn their cwd and open files first,
        // so their relative names resolve, and report each as running.
        if seed {
            let mut resolver = lock_resolver(&self.resolver);
            let pids = pids_below(dir);
            // Descriptors the kernel kept for these processes under an
            // earlier watch: /proc shows their state now, and what became
            // of those descriptors since was not seen.
            self.maps
                .lock()
                .expect("maps lock")
                .forget_folded_fds(&pids);
            for pid in pids {
                // Already followed through a watched parent: its state is
                // known better from its events than from /proc.
                if resolver.is_tracked(pid) {
                    continue;
                }
                let snap = snapshot_process(pid);
                let header = RawHeader {
                    pid,
                    tid: pid,
                    ppid: snap.ppid,
                    ts_ns: monotonic_ns(),
                    cgroup_id: cgroup_of_pid(pid)
                        .and_then(|d| cgroup_id(&d))
                        .map_or(id.0, |c| c.0),
                    comm: snap.comm.clone(),
                };
                resolver.seed_running(&header, snap);
            }
        }
        // Hooks first, so the watch sees the cgroup's next syscall; held
        // until the entry is in, so a last unwatch cannot detach them.
        let mut hooks = self.hooks.lock().expect("hooks lock");
        hooks.attach()?;
        let mut maps = self.maps.lock().expect("maps lock");
        maps.watched
            .insert(id.0, 1, 0)
            .with_context(|| format!("adding cgroup {} to the watch set", dir.display()))?;
        bump_generation(&mut maps)?;
        Ok(WatchedCgroup {
            id,
            path: dir.to_path_buf(),
        })
    }

    /// Stops recording a cgroup; the syscall hooks go with the last watch.
    pub fn unwatch(&self, cgroup: &WatchedCgroup) -> Result<()> {
        let mut hooks = self.hooks.lock().expect("hooks lock");
        let mut maps = self.maps.lock().expect("maps lock");
        maps.watched
            .remove(&cgroup.id.0)
            .with_context(|| format!("cgroup {} was not watched", cgroup.path.display()))?;
        bump_generation(&mut maps)?;
        let watching = maps.watched.iter().any(|e| e.is_ok_and(|(_, v)| v == 1));
        if !watching {
            hooks.detach()?;
        }
        Ok(())
    }

    /// Closes the hooks of the last detach several at a time (see
    /// [`Closing`]) and waits until they are all closed, for a caller that
    /// needs the host as it was (a benchmark's next baseline) or is about
    /// to exit: left to the exit, the kernel closes them one by one, which
    /// takes ~2.5 times as long. A watch waits meanwhile. Returns how long
    /// it waited.
    pub fn wait_unhooked(&self) -> Duration {
        let start = std::time::Instant::now();
        let mut hooks = self.hooks.lock().expect("hooks lock");
        if let Some(mut closing) = hooks.closing.take() {
            closing.hurry();
            closing.join();
        }
        start.elapsed()
    }

    /// Each loaded program's size as the kernel runs it (jited bytes),
    /// by name: what the verifier left, dead code removed.
    pub fn program_sizes(&self) -> Result<Vec<(String, u32)>> {
        let hooks = self.hooks.lock().expect("hooks lock");
        let mut sizes = Vec::new();
        // The other mode's syscall programs are not loaded.
        for (name, program) in hooks.ebpf.programs().filter(|(_, p)| p.fd().is_ok()) {
            let info = program
                .info()
                .with_context(|| format!("reading the info of program {name}"))?;
            sizes.push((name.to_owned(), info.size_jitted()));
        }
        sizes.sort();
        Ok(sizes)
    }

    /// The event that tells a session's model which syscalls ran no program
    /// (`HookMode::PerSyscall`): sent first in every recording. None when
    /// every syscall is hooked.
    pub fn unhooked_event(&self, cgroup: CgroupId) -> Option<Event> {
        let nrs = self.config.hooks.unhooked();
        (!nrs.is_empty()).then(|| Event {
            ts_ns: monotonic_ns(),
            pid: 0,
            tid: 0,
            ppid: 0,
            cgroup,
            comm: String::new(),
            kind: super::EventKind::Unhooked { nrs: nrs.to_vec() },
        })
    }

    /// Whether the syscall hooks are attached (some cgroup is watched).
    pub fn hooks_attached(&self) -> bool {
        self.hooks.lock().expect("hooks lock").links.is_some()
    }

    /// The time (CLOCK_MONOTONIC ns) before which every record has been read
    /// from the ring buffer and handed to the event stream.
    pub fn drained_ns(&self) -> u64 {
        self.drained_ns.load(Ordering::Acquire)
    }

    /// Loss and health counters, summed over CPUs, plus user-space ones.
    pub fn counters(&self) -> Result<TracerCounters> {
        let missed_runs = {
            let hooks = self.hooks.lock().expect("hooks lock");
            recursion_misses(&hooks.ebpf)?
        };
        let maps = self.maps.lock().expect("maps lock");
        let sum = |index: u32| -> Result<(u64, Vec<u64>)> {
            let per_cpu = maps.counters.get(&index, 0)?;
            Ok((per_cpu.iter().sum(), per_cpu.to_vec()))
        };
        let (ringbuf_full, ringbuf_full_per_cpu) = sum(counter::RINGBUF_FULL)?;
        Ok(TracerCounters {
            loss: LossCounters {
                ringbuf_full,
                inflight_full: sum(counter::INFLIGHT_FULL)?.0,
                user_read_faults: sum(counter::USER_READ_FAULT)?.0,
                undecodable: self.undecodable.load(Ordering::Relaxed),
                // Counted from the events, by whoever receives them.
                unreadable_names: 0,
                tracepoint_unread: sum(counter::TRACEPOINT_UNREAD)?.0,
                missed_runs,
                ..Default::default()
            },
            ringbuf_full_per_cpu,
            emitted: sum(counter::EMITTED)?.0,
            unattributed: sum(counter::LOSS_UNATTRIBUTED)?.0,
            exit_mismatch: sum(counter::EXIT_MISMATCH)?.0,
            folded: sum(counter::FOLDED)?.0,
        })
    }

    /// What the kernel lost of the records of cgroup `id` (nothing when it
    /// has no entry).
    pub fn cgroup_loss(&self, id: CgroupId) -> Result<CgroupLoss> {
        let maps = self.maps.lock().expect("maps lock");
        let per_cpu = match maps.cgroup_loss.get(&id.0, 0) {
            Ok(v) => v,
            Err(aya::maps::MapError::KeyNotFound) => return Ok(CgroupLoss::default()),
            Err(e) => return Err(e).context("reading the CGROUP_LOSS map"),
        };
        Ok(per_cpu
            .iter()
            .fold(CgroupLoss::default(), |sum, v| CgroupLoss {
                ringbuf_full: sum
                    .ringbuf_full
                    .saturating_add(v[cgroup_loss::RINGBUF_FULL]),
                inflight: sum.inflight.saturating_add(v[cgroup_loss::INFLIGHT]),
                unread: sum.unread.saturating_add(v[cgroup_loss::UNREAD]),
            }))
    }

    /// Repeats the kernel folded of cgroup `id`'s processes
    /// (`syscalls::foldable`): counted, not sent.
    pub fn cgroup_folded(&self, id: CgroupId) -> Result<u64> {
        let maps = self.maps.lock().expect("maps lock");
        match maps.cgroup_folded.get(&id.0, 0) {
            Ok(v) => Ok(v.iter().fold(0u64, |sum, n| sum.saturating_add(*n))),
            Err(aya::maps::MapError::KeyNotFound) => Ok(0),
            Err(e) => Err(e).context("reading the CGROUP_FOLDED map"),
        }
    }

    /// The decoded event stream. Can be taken once; spawns the reader task
    /// on the current tokio runtime.
    pub fn events(&mut self) -> Result<EventStream> {
        self.open_events()
    }

    /// The decoded event stream, again after the last one's reader ended:
    /// the new reader goes on where that one stopped in the ring buffer.
    /// Fails while another stream's reader holds the ring buffer.
    pub fn open_events(&self) -> Result<EventStream> {
        let ring = self
            .ring
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .ok_or_else(|| {
                anyhow!(
                    "the ring buffer is not there: a reader holds it, or one could not register \
                     it with tokio and it was lost (see the error logged then; restart the daemon)"
                )
            })?;
        let (tx, rx) = mpsc::channel(self.config.channel_capacity);
        let reader = Reader {
            ring: Some(ring),
            slot: Arc::clone(&self.ring),
            resolver: Arc::clone(&self.resolver),
            undecodable: Arc::clone(&self.undecodable),
            drained: Arc::clone(&self.drained_ns),
            interrupted: Arc::clone(&self.interrupted),
            kill: Arc::clone(&self.kill_reader),
            batch: std::collections::VecDeque::with_capacity(BATCH),
            decoding: false,
            finished: false,
        };
        let task = tokio::spawn(read_ring(reader, tx));
        Ok(EventStream {
            rx,
            reader: AbortOnDrop(Some(task)),
        })
    }

    /// Test hook: makes the reader panic at its next batch of events, as a
    /// bug would; what it held is counted (see [`Tracer::take_interrupted`]).
    pub fn kill_reader(&self) {
        self.kill_reader.store(true, Ordering::Relaxed);
    }

    /// Events that readers held when they ended abnormally (panicked, or
    /// were aborted), by cgroup, since the last call: lost. None counts
    /// records met while being decoded, whose cgroup is unknown.
    pub fn take_interrupted(&self) -> Vec<(Option<CgroupId>, u64)> {
        std::mem::take(
            &mut *self
                .interrupted
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
        .into_iter()
        .collect()
    }
}

/// The resolver, even after a reader panicked holding it: what a panic
/// left half-done is for a few processes, and stopping every session for
/// it would lose far more.
fn lock_resolver(resolver: &Mutex<Resolver>) -> MutexGuard<'_, Resolver> {
    resolver.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The program `name` of the object, as the program type `T`.
fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    Ok(ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing from the eBPF object"))?
        .try_into()?)
}

/// Runs of our programs the kernel skipped, summed over them: a program
/// does not run while another BPF program runs on its CPU (a tracepoint hit
/// from inside one), and the kernel counts each such miss. aya does not
/// expose the count, the program's fdinfo does.
fn recursion_misses(ebpf: &Ebpf) -> Result<u64> {
    let mut total = 0u64;
    for (name, program) in ebpf.programs() {
        let Ok(fd) = program.fd() else {
            continue; // not loaded: it never ran
        };
        let path = format!("/proc/self/fdinfo/{}", fd.as_fd().as_raw_fd());
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {path}, the fdinfo of program {name}"))?;
        total = total.saturating_add(fdinfo_recursion_misses(&text).with_context(|| {
            format!("{path} (program {name}) has no recursion_misses line: is the kernel older than 5.12?")
        })?);
    }
    Ok(total)
}

fn fdinfo_recursion_misses(fdinfo: &str) -> Option<u64> {
    fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("recursion_misses:"))
        .and_then(|v| v.trim().parse().ok())
}

/// `AYA_LOG_LEVEL` for the kernel programs: 0 logs nothing.
fn kernel_log_level(on: bool) -> u8 {
    if on { aya_log::Level::Debug as u8 } else { 0 }
}

/// Hands the kernel programs' log records to `tracing`.
struct KernelLogger;

impl log::Log for KernelLogger {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let message = record.args();
        match record.level() {
            log::Level::Error => tracing::error!(target: "cimplifier::kernel", "{message}"),
            log::Level::Warn => tracing::warn!(target: "cimplifier::kernel", "{message}"),
            log::Level::Info => tracing::info!(target: "cimplifier::kernel", "{message}"),
            log::Level::Debug | log::Level::Trace => {
                tracing::debug!(target: "cimplifier::kernel", "{message}")
            }
        }
    }

    fn flush(&self) {}
}

/// A thread that drains the kernel programs' log ring every 100 ms, until
/// dropped.
struct KernelLogReader {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl KernelLogReader {
    fn start(mut logger: aya_log::EbpfLogger<KernelLogger>) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        // The subscriber of whoever loaded the tracer, also where that is
        // not the global one (a test's).
        let dispatch = tracing::dispatcher::get_default(Clone::clone);
        let thread = std::thread::Builder::new()
            .name("kernel-log".into())
            .spawn({
                let stop = Arc::clone(&stop);
                move || {
                    tracing::dispatcher::with_default(&dispatch, || {
                        while !stop.load(Ordering::Relaxed) {
                            logger.flush();
                            std::thread::sleep(Duration::from_millis(100));
                        }
                        logger.flush();
                    })
                }
            })
            .context("starting the kernel log reader thread")?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for KernelLogReader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The longest a watch keeps a running cgroup frozen waiting for it to
/// stop: past it, the watch goes on unfrozen and says so.
const FREEZE_TIMEOUT: Duration = Duration::from_secs(1);

/// The kernel's filter walks a task's cgroup ancestors from the root down
/// to level `MAX_CGROUP_LEVEL - 1` (it has to be bounded); an entry deeper
/// than that would never be met, and its cgroup's events would silently
/// go unrecorded (or, for an exclusion, recorded). Tasks may lie deeper
/// than that: only the entries must not.
fn within_walk(dir: &Path) -> Result<()> {
    let level = cgroup_level(dir)?;
    if level >= MAX_CGROUP_LEVEL as usize {
        bail!(
            "cgroup {} lies {level} levels below the cgroup v2 root; the kernel filter sees \
             watches and exclusions down to level {} only: watch an ancestor instead",
            dir.display(),
            MAX_CGROUP_LEVEL - 1
        );
    }
    Ok(())
}

fn bump_generation(maps: &mut Maps) -> Result<()> {
    let generation = maps.generation.get(&0, 0)?;
    maps.generation.set(0, generation + 1, 0)?;
    Ok(())
}

/// CLOCK_MONOTONIC in nanoseconds, the clock of the kernel's timestamps.
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0, |t| {
        t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
    })
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TracerCounters {
    pub loss: LossCounters,
    /// Ring-buffer drops on each CPU.
    pub ringbuf_full_per_cpu: Vec<u64>,
    /// Records the kernel wrote.
    pub emitted: u64,
    /// Losses the kernel could not charge to a cgroup: every session
    /// counts them.
    pub unattributed: u64,
    /// Syscall exits that met another call's entry (a diagnostic).
    pub exit_mismatch: u64,
    /// Repeats folded in the kernel, host-wide (not a loss).
    pub folded: u64,
}

/// How long records may wait in the ring buffer: the kernel wakes the reader
/// only when much is queued, so the reader also polls this often.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
const BATCH: usize = 1024;

/// What one reader task holds. Dropped however the task ends: the ring
/// buffer goes back to the tracer, and unless the reader finished, the
/// events it had decoded but not handed over are counted as interrupted.
struct Reader {
    ring: Option<RingBuf<MapData>>,
    slot: Arc<Mutex<Option<RingBuf<MapData>>>>,
    resolver: Arc<Mutex<Resolver>>,
    undecodable: Arc<AtomicU64>,
    drained: Arc<AtomicU64>,
    interrupted: Arc<Mutex<std::collections::HashMap<Option<CgroupId>, u64>>>,
    kill: Arc<AtomicBool>,
    /// Decoded, not yet handed over, in order (sent from the front).
    batch: std::collections::VecDeque<Event>,
    /// A record taken from the ring is being decoded.
    decoding: bool,
    finished: bool,
}

impl Drop for Reader {
    fn drop(&mut self) {
        if !self.finished {
            let mut lost = self
                .interrupted
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            for e in &self.batch {
                *lost.entry(Some(e.cgroup)).or_default() += 1;
            }
            if self.decoding {
                *lost.entry(None).or_default() += 1;
            }
        }
        if let Some(ring) = self.ring.take() {
            *self.slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(ring);
        }
    }
}

impl Reader {
    /// Reads records into the batch: how many, and whether the ring was
    /// found empty.
    fn drain(&mut self, ring: &mut RingBuf<MapData>) -> (usize, bool) {
        let mut resolver = lock_resolver(&self.resolver);
        self.batch.extend(resolver.take_queued());
        let mut records = 0;
        while self.batch.len() < BATCH {
            let Some(item) = ring.next() else {
                return (records, true);
            };
            records += 1;
            self.decoding = true;
            match decode(&item) {
                Ok(rec) => self.batch.extend(resolver.handle(rec)),
                Err(e) => {
                    self.undecodable.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("undecodable ring-buffer record: {e}");
                }
            }
            self.decoding = false;
        }
        (records, false)
    }
}

async fn read_ring(mut reader: Reader, tx: mpsc::Sender<Event>) -> Result<()> {
    let ring = reader.ring.take().expect("a new reader holds the ring");
    // SAFETY: the ring buffer's fd stays open and unchanged while the AsyncFd owns it.
    let fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) };
    let mut fd = match fd {
        Ok(fd) => GiveBack(Some(fd), Arc::clone(&reader.slot)),
        Err(e) => {
            // The ring is lost with the error: a restart cannot go on.
            reader.finished = true;
            bail!("registering the ring buffer with tokio: {e}");
        }
    };
    loop {
        let started = monotonic_ns();
        let emptied = match tokio::time::timeout(POLL_INTERVAL, fd.get().readable_mut()).await {
            Ok(guard) => {
                let mut guard = guard?;
                let (records, emptied) = reader.drain(guard.get_inner_mut());
                if records == 0 {
                    guard.clear_ready();
                }
                emptied
            }
            Err(_) => reader.drain(fd.get().get_mut()).1,
        };
        if !reader.batch.is_empty() && reader.kill.swap(false, Ordering::Relaxed) {
            panic!(
                "test hook: the ring reader was killed holding {} events",
                reader.batch.len()
            );
        }
        // Taken one at a time, so what is not yet sent stays counted if
        // this task ends (a send fails only when the consumer is gone).
        while let Some(event) = reader.batch.pop_front() {
            if tx.send(event).await.is_err() {
                reader.finished = true;
                return Ok(()); // the consumer is gone
            }
        }
        // The ring was empty at some point after `started`: all written
        // before then is now in the stream.
        if emptied {
            reader.drained.fetch_max(started, Ordering::Release);
        }
    }
}

/// The ring buffer registered with tokio; given back to the tracer's slot
/// when dropped.
struct GiveBack(
    Option<AsyncFd<RingBuf<MapData>>>,
    Arc<Mutex<Option<RingBuf<MapData>>>>,
);

impl GiveBack {
    fn get(&mut self) -> &mut AsyncFd<RingBuf<MapData>> {
        self.0.as_mut().expect("held until dropped")
    }
}

impl Drop for GiveBack {
    fn drop(&mut self) {
        if let Some(fd) = self.0.take() {
            *self.1.lock().unwrap_or_else(PoisonError::into_inner) = Some(fd.into_inner());
        }
    }
}

struct AbortOnDrop(Option<tokio::task::JoinHandle<Result<()>>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

/// Decoded events of every watched cgroup, in ring-buffer order.
pub struct EventStream {
    rx: mpsc::Receiver<Event>,
    reader: AbortOnDrop,
}

impl EventStream {
    pub async fn next_event(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// Whether no decoded event is waiting.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    /// Once the stream has ended: why its reader ended (an error, or a
    /// panic's message). The ring buffer is back in the tracer then.
    pub async fn reader_end(mut self) -> Result<()> {
        let Some(task) = self.reader.0.take() else {
            return Ok(());
        };
        match task.await {
            Ok(ended) => ended,
            Err(e) if e.is_panic() => {
                let panic = e.into_panic();
                let message = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("(no message)");
                bail!("the ring reader panicked: {message}")
            }
            Err(e) => bail!("the ring reader was stopped: {e}"),
        }
    }
}

impl futures::Stream for EventStream {
    type Item = Event;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Event>> {
        self.rx.poll_recv(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recursion_misses_are_read_from_a_programs_fdinfo() {
        let fdinfo = "pos:\t0\nflags:\t02000002\nprog_type:\t26\nrun_cnt:\t0\n\
                      recursion_misses:\t7\nverified_insns:\t512\n";
        assert_eq!(fdinfo_recursion_misses(fdinfo), Some(7));
        assert_eq!(fdinfo_recursion_misses("pos:\t0\n"), None);
    }
}
