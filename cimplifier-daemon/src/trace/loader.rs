//! Loads the kernel programs, owns the watch set, and turns the ring buffer
//! into a stream of [`Event`]s.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use aya::maps::{Array, HashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf};
use aya::programs::tp_btf::BtfTracePointLinkId;
use aya::programs::{BtfTracePoint, TracePoint};
use aya::{Btf, Ebpf, EbpfLoader};
use cimplifier_common::{cgroup_loss, counter, globals, maps};
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

use super::cgroup::{cgroup_id, cgroup_of_pid, pids_below, snapshot_process};
use super::decode::{RawHeader, decode};
use super::kernel_layout::{KernelLayout, TRACEFS};
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
}

impl Default for TracerConfig {
    fn default() -> Self {
        Self {
            ring_buffer_bytes: 64 << 20,
            channel_capacity: 65536,
        }
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
}

/// Records the kernel lost for one cgroup, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupLoss {
    pub ringbuf_full: u64,
    pub inflight: u64,
}

/// The syscall programs and what they share with user space.
const SYSCALL_HOOKS: [(&str, &str); 2] = [("sys_enter", "sys_enter"), ("sys_exit", "sys_exit")];

/// `sys_enter` and `sys_exit` run on every syscall of the host, watched or
/// not; they are attached only while some cgroup is watched.
struct SyscallHooks {
    ebpf: Ebpf,
    links: Option<[BtfTracePointLinkId; 2]>,
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
        let mut links = Vec::with_capacity(2);
        for (prog, hook) in SYSCALL_HOOKS {
            let p: &mut BtfTracePoint = program(&mut self.ebpf, prog)?;
            links.push(
                p.attach()
                    .with_context(|| format!("attaching to raw tracepoint {hook}"))?,
            );
        }
        let [enter, exit] = <[_; 2]>::try_from(links).expect("two hooks");
        self.links = Some([enter, exit]);
        tracing::info!(
            micros = start.elapsed().as_micros() as u64,
            "attached the syscall hooks: a cgroup is watched"
        );
        Ok(())
    }

    fn detach(&mut self) -> Result<()> {
        let Some(links) = self.links.take() else {
            return Ok(());
        };
        for ((prog, _), link) in SYSCALL_HOOKS.into_iter().zip(links) {
            let p: &mut BtfTracePoint = program(&mut self.ebpf, prog)?;
            p.detach(link)
                .with_context(|| format!("detaching {prog}"))?;
        }
        let stale: Vec<u32> = self.inflight.keys().filter_map(|k| k.ok()).collect();
        for tid in stale {
            let _ = self.inflight.remove(&tid);
        }
        tracing::info!("detached the syscall hooks: no cgroup is watched");
        Ok(())
    }
}

/// The loaded, attached tracer. Dropping it detaches every program.
pub struct Tracer {
    /// Owns the programs and their links.
    hooks: Mutex<SyscallHooks>,
    maps: Mutex<Maps>,
    ring: Option<RingBuf<MapData>>,
    resolver: Arc<Mutex<Resolver>>,
    undecodable: Arc<AtomicU64>,
    /// Every record written before this time (CLOCK_MONOTONIC ns) has been
    /// read and handed to the event stream.
    drained_ns: Arc<AtomicU64>,
    config: TracerConfig,
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
            .override_global(globals::MM_ARG_START_OFFSET, &layout.mm_arg_start, true)
            .override_global(globals::MM_ARG_END_OFFSET, &layout.mm_arg_end, true)
            .map_max_entries(maps::EVENTS, config.ring_buffer_bytes)
            .load(EBPF_OBJECT)
            .context("loading the eBPF programs (are you root, with BPF enabled?)")?;

        // BTF raw tracepoints for the syscall hooks: they fire on every
        // syscall on the host, and unlike `raw_syscalls/*` tracepoints they
        // build no trace record first. (The per-syscall `syscalls/*`
        // tracepoints would skip untraced calls, but linking to them fails
        // on these kernels.) Loaded now, attached only while a cgroup is
        // watched ([`SyscallHooks`]): an idle daemon costs the host nothing.
        let btf = Btf::from_sys_fs().context("reading kernel BTF from /sys/kernel/btf/vmlinux")?;
        for (prog, hook) in SYSCALL_HOOKS {
            let p: &mut BtfTracePoint = program(&mut ebpf, prog)?;
            p.load(hook, &btf)
                .with_context(|| format!("loading tp_btf program {prog}"))?;
        }
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

        let take = |ebpf: &mut Ebpf, name: &str| {
            ebpf.take_map(name)
                .ok_or_else(|| anyhow!("map {name} missing from the eBPF object"))
        };
        let maps = Maps {
            watched: HashMap::try_from(take(&mut ebpf, maps::WATCHED_CGROUPS)?)?,
            generation: Array::try_from(take(&mut ebpf, maps::WATCH_GENERATION)?)?,
            counters: PerCpuArray::try_from(take(&mut ebpf, maps::COUNTERS)?)?,
            cgroup_loss: PerCpuHashMap::try_from(take(&mut ebpf, maps::CGROUP_LOSS)?)?,
        };
        let ring = RingBuf::try_from(take(&mut ebpf, maps::EVENTS)?)?;
        let inflight = HashMap::try_from(take(&mut ebpf, maps::INFLIGHT)?)?;
        Ok(Self {
            hooks: Mutex::new(SyscallHooks {
                ebpf,
                links: None,
                inflight,
            }),
            maps: Mutex::new(maps),
            ring: Some(ring),
            resolver: Arc::new(Mutex::new(Resolver::with_snapshotter(Box::new(
                snapshot_process,
            )))),
            undecodable: Arc::new(AtomicU64::new(0)),
            drained_ns: Arc::new(AtomicU64::new(0)),
            config,
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
        let mut resolver = self.resolver.lock().expect("resolver lock");
        for pid in pids {
            resolver.forget(pid);
        }
    }

    fn watch(&self, dir: &Path, seed: bool) -> Result<WatchedCgroup> {
        let id = cgroup_id(dir)?;
        // Processes already running: learn their cwd and open files first,
        // so their relative names resolve, and report each as running.
        if seed {
            let mut resolver = self.resolver.lock().expect("resolver lock");
            for pid in pids_below(dir) {
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
                ..Default::default()
            },
            ringbuf_full_per_cpu,
            emitted: sum(counter::EMITTED)?.0,
            unattributed: sum(counter::LOSS_UNATTRIBUTED)?.0,
            exit_mismatch: sum(counter::EXIT_MISMATCH)?.0,
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
            }))
    }

    /// The decoded event stream. Can be taken once; spawns the reader task
    /// on the current tokio runtime.
    pub fn events(&mut self) -> Result<EventStream> {
        let ring = self
            .ring
            .take()
            .ok_or_else(|| anyhow!("the event stream was already taken"))?;
        let (tx, rx) = mpsc::channel(self.config.channel_capacity);
        let resolver = Arc::clone(&self.resolver);
        let undecodable = Arc::clone(&self.undecodable);
        let drained = Arc::clone(&self.drained_ns);
        let task = tokio::spawn(read_ring(ring, resolver, undecodable, drained, tx));
        Ok(EventStream {
            rx,
            _reader: AbortOnDrop(task),
        })
    }
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
}

/// How long records may wait in the ring buffer: the kernel wakes the reader
/// only when much is queued, so the reader also polls this often.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
const BATCH: usize = 1024;

async fn read_ring(
    ring: RingBuf<MapData>,
    resolver: Arc<Mutex<Resolver>>,
    undecodable: Arc<AtomicU64>,
    drained: Arc<AtomicU64>,
    tx: mpsc::Sender<Event>,
) -> Result<()> {
    // SAFETY: the ring buffer's fd stays open and unchanged while the AsyncFd owns it.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| anyhow!("registering the ring buffer with tokio: {e}"))?;
    let mut batch = Vec::with_capacity(BATCH);
    // Records read, and whether the ring was found empty.
    let drain = |ring: &mut RingBuf<MapData>, batch: &mut Vec<Event>| -> (usize, bool) {
        let mut resolver = resolver.lock().expect("resolver lock");
        batch.extend(resolver.take_queued());
        let mut records = 0;
        while batch.len() < BATCH {
            let Some(item) = ring.next() else {
                return (records, true);
            };
            records += 1;
            match decode(&item) {
                Ok(rec) => batch.extend(resolver.handle(rec)),
                Err(e) => {
                    undecodable.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("undecodable ring-buffer record: {e}");
                }
            }
        }
        (records, false)
    };
    loop {
        let started = monotonic_ns();
        let emptied = match tokio::time::timeout(POLL_INTERVAL, fd.readable_mut()).await {
            Ok(guard) => {
                let mut guard = guard?;
                let (records, emptied) = drain(guard.get_inner_mut(), &mut batch);
                if records == 0 {
                    guard.clear_ready();
                }
                emptied
            }
            Err(_) => drain(fd.get_mut(), &mut batch).1,
        };
        for event in batch.drain(..) {
            if tx.send(event).await.is_err() {
                return Ok(()); // the consumer is gone
            }
        }
        // The ring was empty at some point after `started`: all written
        // before then is now in the stream.
        if emptied {
            drained.fetch_max(started, Ordering::Release);
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<Result<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Decoded events of every watched cgroup, in ring-buffer order.
pub struct EventStream {
    rx: mpsc::Receiver<Event>,
    _reader: AbortOnDrop,
}

impl EventStream {
    pub async fn next_event(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// Whether no decoded event is waiting.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }
}

impl futures::Stream for EventStream {
    type Item = Event;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Event>> {
        self.rx.poll_recv(cx)
    }
}
