//! One tracer for the whole daemon, fanned out to the sessions.
//!
//! The kernel programs are loaded once. A dispatcher task reads the decoded
//! events and routes each by cgroup id to the session that owns the cgroup;
//! a session that is waiting for its container to start (its cgroup not yet
//! known) gets every event no other session claims and keeps what turns out
//! to be its own. Watches are reference-counted, so two sessions may watch
//! Docker's parent cgroup at once.
//!
//! Stream subscribers (`StreamEvents`) get a bounded queue each; one that
//! falls behind is cut off and counted. It never slows the sessions.
//!
//! Below a parent held with [`Observer::hold_below`] (Docker's, while label
//! selectors are active), a cgroup that no session owns is new: its events
//! are held, within [`HOLD_PER_CGROUP_BYTES`] and [`HOLD_TOTAL_BYTES`], until
//! the manager says whose it is ([`Observer::decide`]). A wanted one's events
//! go to the session that claims it, first; another container's are dropped
//! (counted) and its cgroup is excluded in the kernel, so it costs nothing
//! more. What did not fit is counted as loss of the session that claims it.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::sync::{Notify, mpsc};

use crate::trace::cgroup::{cgroup_id, cgroups_below};
use crate::trace::{CgroupId, ContainerPath, Event, LossCounters, Tracer, TracerConfig};

/// Events buffered for one session between the dispatcher and the session.
const SESSION_QUEUE: usize = 65536;

/// What is held at most for one new cgroup while its labels are looked up
/// (a container's start-up is a few thousand events of a few hundred bytes).
pub const HOLD_PER_CGROUP_BYTES: usize = 8 << 20;
/// What is held at most for all new cgroups together.
pub const HOLD_TOTAL_BYTES: usize = 64 << 20;
/// How long a new cgroup's events are held at most: a cgroup found wanted
/// waits this long for its session to claim it.
pub const HOLD_WAIT: Duration = Duration::from_secs(30);
/// How often the dispatcher looks at what it holds, and at whether it has
/// caught up with the tracer, when no event comes.
const TICK: Duration = Duration::from_millis(250);
/// How long a cgroup found to be no session's is remembered, so the events
/// still in flight when it was excluded are dropped without a new look-up.
const FOREIGN_MEMORY: Duration = Duration::from_secs(10);

/// Ids of the cgroup at `dir` and of every cgroup below it.
pub fn cgroup_ids_below(dir: &Path) -> HashSet<CgroupId> {
    cgroups_below(dir)
        .iter()
        .filter_map(|d| cgroup_id(d).ok())
        .collect()
}

/// Which cgroups a session owns.
#[derive(Default)]
struct Claim {
    /// The container's cgroup, once known.
    cgroup: Option<PathBuf>,
    members: HashSet<CgroupId>,
}

/// A session's place in the dispatcher.
pub struct Route {
    session: String,
    claim: Mutex<Claim>,
    tx: mpsc::Sender<Event>,
    /// Events of the session's cgroups that did not fit while they were held.
    held_overflow: AtomicU64,
    /// Events of the session's (or of no known session's) that the reader
    /// or the dispatcher had in hand when it ended and was restarted.
    interrupted: AtomicU64,
}

impl Route {
    /// Whether `cgroup` is the session's, looking again below its cgroup
    /// when the id is new (a cgroup created since).
    fn owns(&self, cgroup: CgroupId) -> bool {
        let mut claim = self.claim.lock().expect("claim lock");
        if claim.members.contains(&cgroup) {
            return true;
        }
        if let Some(dir) = claim.cgroup.clone() {
            // Added to, not replaced: once the container has exited and its
            // cgroup is gone, its last events may still be on their way.
            claim.members.extend(cgroup_ids_below(&dir));
            return claim.members.contains(&cgroup);
        }
        false
    }

    fn pending(&self) -> bool {
        self.claim.lock().expect("claim lock").cgroup.is_none()
    }

    pub fn session(&self) -> &str {
        &self.session
    }

    /// Events of the session's container dropped before the session claimed
    /// it, because they did not fit in what is held: lost to it.
    pub fn held_overflow(&self) -> u64 {
        self.held_overflow.load(Ordering::Relaxed)
    }

    /// Events lost to the session when the reader or the dispatcher ended
    /// and was restarted (see [`Observer::start`]).
    pub fn interrupted(&self) -> u64 {
        self.interrupted.load(Ordering::Relaxed)
    }
}

/// Whose a new cgroup under a held parent is, as the manager found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Its container matches a selector: a session will claim it.
    Wanted,
    /// Another container's (or no container's): drop its events.
    Foreign,
}

/// An event as streamed to subscribers.
#[derive(Clone, Debug)]
pub struct StreamedEvent {
    pub session: Arc<str>,
    /// The executable the process was running, when known.
    pub exe: Option<ContainerPath>,
    pub event: Arc<Event>,
}

/// What a subscriber wants; empty lists match everything.
#[derive(Clone, Debug, Default)]
pub struct StreamFilter {
    pub sessions: Vec<String>,
    pub executables: Vec<ContainerPath>,
    /// Event kinds (`fork`, `exit`, `running`, `syscall`) or syscall names
    /// (`openat`).
    pub kinds: Vec<String>,
}

impl StreamFilter {
    pub fn matches(&self, e: &StreamedEvent) -> bool {
        let session = self.sessions.is_empty() || self.sessions.iter().any(|s| **s == *e.session);
        let exe = self.executables.is_empty()
            || e.exe.as_ref().is_some_and(|x| self.executables.contains(x));
        let kind = self.kinds.is_empty() || {
            let (kind, syscall) = kind_of(&e.event);
            self.kinds
                .iter()
                .any(|k| k == kind || Some(k.as_str()) == syscall)
        };
        session && exe && kind
    }
}

/// The event's kind and, for a syscall, its name.
pub fn kind_of(e: &Event) -> (&'static str, Option<&str>) {
    use crate::trace::EventKind;
    match &e.kind {
        EventKind::Fork { .. } => ("fork", None),
        EventKind::Exit { .. } => ("exit", None),
        EventKind::Running { .. } => ("running", None),
        EventKind::Syscall(s) => ("syscall", Some(s.syscall.as_str())),
        EventKind::SyscallSeen { .. } => ("syscall_seen", None),
        EventKind::Signal(_) => ("signal", None),
        EventKind::Unhooked { .. } => ("unhooked", None),
        EventKind::ForeignAbi { .. } => ("foreign_abi", None),
    }
}

/// Every kind a stream filter can name: the event kinds, then the names
/// of the traced syscalls.
pub fn event_kinds() -> Vec<&'static str> {
    let mut kinds = vec![
        "fork",
        "exit",
        "running",
        "syscall",
        "syscall_seen",
        "signal",
        "unhooked",
        "foreign_abi",
    ];
    for &nr in cimplifier_common::syscalls::TRACED {
        let name = cimplifier_common::syscalls::name(nr);
        if !kinds.contains(&name) {
            kinds.push(name);
        }
    }
    kinds
}

struct Subscriber {
    filter: StreamFilter,
    tx: mpsc::Sender<StreamedEvent>,
    cut_off: Arc<AtomicBool>,
}

/// A subscription: its events, and whether it was cut off for lagging.
pub struct Subscription {
    pub events: mpsc::Receiver<StreamedEvent>,
    pub cut_off: Arc<AtomicBool>,
}

/// Daemon-wide counters, for /metrics.
#[derive(Default)]
pub struct ObserverStats {
    /// Events the dispatcher read from the tracer.
    pub events: AtomicU64,
    /// Events of watched cgroups that no session claimed.
    pub unclaimed: AtomicU64,
    /// Stream subscribers cut off for falling behind.
    pub streams_cut_off: AtomicU64,
    /// New cgroups whose events were held while their labels were looked up.
    pub held_cgroups: AtomicU64,
    /// Held events dropped: their cgroup was another container's, or no
    /// session claimed it in time.
    pub held_dropped: AtomicU64,
    /// Events that did not fit in what is held.
    pub held_overflow: AtomicU64,
    /// Cgroups excluded in the kernel because they were no session's.
    pub cgroups_excluded: AtomicU64,
    /// Times the ring reader ended (an error or a panic) and was restarted.
    pub reader_restarts: AtomicU64,
    /// Times the dispatcher panicked and was restarted.
    pub dispatcher_restarts: AtomicU64,
    /// Events the reader or the dispatcher had in hand when it ended: lost.
    pub interrupted: AtomicU64,
}

pub struct Observer {
    tracer: Tracer,
    routes: Mutex<Vec<Arc<Route>>>,
    watches: Mutex<HashMap<PathBuf, (crate::trace::WatchedCgroup, usize)>>,
    subscribers: Mutex<Vec<Subscriber>>,
    /// Bumped when routes change, so the dispatcher forgets which cgroups
    /// it found to be no session's.
    routes_version: AtomicU64,
    /// Woken when a session claims a cgroup, so held events go to it.
    claimed: Arc<Notify>,
    /// Parents below which new cgroups are held, with their ids.
    held_parents: Mutex<Vec<(PathBuf, CgroupId)>>,
    /// Where new held cgroups are announced, for [`Observer::decide`].
    to_classify: Mutex<Option<mpsc::UnboundedSender<CgroupId>>>,
    verdicts: mpsc::UnboundedSender<(CgroupId, Verdict)>,
    /// Cgroups excluded in the kernel below a watched parent.
    exclusions: Mutex<HashMap<PathBuf, crate::trace::WatchedCgroup>>,
    /// The dispatcher has routed every event recorded before this time
    /// (CLOCK_MONOTONIC ns).
    dispatched_ns: AtomicU64,
    /// Whether the reader and the dispatcher run (false while they are
    /// being restarted), for the health service.
    tracing: tokio::sync::watch::Sender<bool>,
    /// Test hook: the dispatcher panics at the next event it routes.
    kill_dispatcher: AtomicBool,
    pub stats: ObserverStats,
}

/// A watch held by a session; given back with [`Observer::unwatch`].
pub struct Watch(PathBuf);

/// Whether a new watch reads the processes already in its cgroup from /proc.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Seed {
    UnlessFollowed,
    Always,
    Never,
}

impl Observer {
    /// Loads the kernel programs and starts the dispatcher on the current
    /// runtime, under a supervisor: when the ring reader ends (an error, a
    /// panic) or the dispatcher panics, it is counted, [`Observer::tracing`]
    /// turns false, what they had in hand is counted as lost to the
    /// sessions it was for, and they are started again. Dropping the last
    /// `Arc` detaches the programs.
    pub fn start(config: TracerConfig) -> Result<Arc<Self>> {
        let tracer = Tracer::load(config)?;
        let events = tracer.open_events()?;
        let (verdicts, verdicts_rx) = mpsc::unbounded_channel();
        let claimed = Arc::new(Notify::new());
        let observer = Arc::new(Self {
            tracer,
            routes: Mutex::default(),
            watches: Mutex::default(),
            subscribers: Mutex::default(),
            routes_version: AtomicU64::new(0),
            claimed: claimed.clone(),
            held_parents: Mutex::default(),
            to_classify: Mutex::default(),
            verdicts,
            exclusions: Mutex::default(),
            dispatched_ns: AtomicU64::new(0),
            tracing: tokio::sync::watch::Sender::new(true),
            kill_dispatcher: AtomicBool::new(false),
            stats: ObserverStats::default(),
        });
        tokio::spawn(supervise(
            Arc::downgrade(&observer),
            events,
            Dispatcher::new(verdicts_rx),
            claimed,
        ));
        Ok(observer)
    }

    /// Whether the reader and the dispatcher run; false while the
    /// supervisor restarts them.
    pub fn tracing(&self) -> tokio::sync::watch::Receiver<bool> {
        self.tracing.subscribe()
    }

    /// Waits until the syscall hooks of the last unwatch are closed: see
    /// [`Tracer::wait_unhooked`].
    pub fn wait_unhooked(&self) -> Duration {
        self.tracer.wait_unhooked()
    }

    /// Test hook (see docs/security.md): the ring reader panics at its next
    /// batch of events.
    pub fn kill_reader(&self) {
        self.tracer.kill_reader();
    }

    /// Test hook (see docs/security.md): the dispatcher panics at the next
    /// event it routes, holding it.
    pub fn kill_dispatcher(&self) {
        self.kill_dispatcher.store(true, Ordering::Relaxed);
    }

    /// Gives the events counted as interrupted (by cgroup) to the sessions
    /// they were for: the route owning the cgroup; every route when the
    /// cgroup is unknown or no session's yet (it may become one's).
    fn attribute_interrupted(&self, lost: &[(Option<CgroupId>, u64)]) {
        let routes = self.routes.lock().expect("routes lock").clone();
        for &(cgroup, n) in lost {
            self.stats.interrupted.fetch_add(n, Ordering::Relaxed);
            let owner = cgroup.and_then(|c| routes.iter().find(|r| r.owns(c)));
            match owner {
                Some(route) => {
                    route.interrupted.fetch_add(n, Ordering::Relaxed);
                }
                None => {
                    for route in &routes {
                        route.interrupted.fetch_add(n, Ordering::Relaxed);
                    }
                }
            }
        }
    }

    /// Adds a session. Until [`Observer::claim`] names its cgroup it
    /// receives every event no other session owns.
    pub fn route(&self, session: &str) -> (Arc<Route>, mpsc::Receiver<Event>) {
        let (tx, rx) = mpsc::channel(SESSION_QUEUE);
        if let Some(unhooked) = self.tracer.unhooked_event(CgroupId(0)) {
            tx.try_send(unhooked).expect("a new queue has room");
        }
        let route = Arc::new(Route {
            session: session.to_owned(),
            claim: Mutex::default(),
            tx,
            held_overflow: AtomicU64::new(0),
            interrupted: AtomicU64::new(0),
        });
        self.routes.lock().expect("routes lock").push(route.clone());
        self.routes_version.fetch_add(1, Ordering::Relaxed);
        (route, rx)
    }

    /// Gives the session the cgroup at `dir` and every cgroup below it.
    pub fn claim(&self, route: &Route, dir: &Path) {
        let mut claim = route.claim.lock().expect("claim lock");
        claim.members = cgroup_ids_below(dir);
        claim.cgroup = Some(dir.to_path_buf());
        self.routes_version.fetch_add(1, Ordering::Relaxed);
        self.claimed.notify_one();
    }

    pub fn unroute(&self, route: &Arc<Route>) {
        self.routes
            .lock()
            .expect("routes lock")
            .retain(|r| !Arc::ptr_eq(r, route));
        self.routes_version.fetch_add(1, Ordering::Relaxed);
    }

    /// Starts recording the cgroup at `dir` and below (shared with any other
    /// session watching it). Processes already there are read from /proc
    /// unless a watched parent has followed them from their forks.
    pub fn watch(&self, dir: &Path) -> Result<Watch> {
        self.watch_with(dir, Seed::UnlessFollowed)
    }

    /// Like [`Observer::watch`] for a container that has been running for a
    /// while: its processes are read from /proc even below a watched parent
    /// (those the tracer already follows are skipped).
    pub fn watch_running(&self, dir: &Path) -> Result<Watch> {
        self.watch_with(dir, Seed::Always)
    }

    fn watch_with(&self, dir: &Path, seed: Seed) -> Result<Watch> {
        let mut watches = self.watches.lock().expect("watches lock");
        match watches.get_mut(dir) {
            Some((_, n)) => *n += 1,
            None => {
                let mut exclusions = self.exclusions.lock().expect("exclusions lock");
                let followed = watches.keys().any(|w| dir.starts_with(w))
                    && !exclusions.keys().any(|x| dir.starts_with(x));
                let w = match seed {
                    Seed::UnlessFollowed if followed => self.tracer.watch_cgroup_followed(dir)?,
                    Seed::Never => self.tracer.watch_cgroup_followed(dir)?,
                    _ => self.tracer.watch_cgroup(dir)?,
                };
                // The watch took the exclusion's place in the kernel's map.
                exclusions.remove(dir);
                watches.insert(dir.to_path_buf(), (w, 1));
            }
        }
        self.routes_version.fetch_add(1, Ordering::Relaxed);
        Ok(Watch(dir.to_path_buf()))
    }

    /// Watches `dir` and holds the events of every cgroup below it that no
    /// session owns until [`Observer::decide`] says whose it is. Each new
    /// cgroup is announced once on the receiver. Nothing already running
    /// there is read from /proc: a process is met at its first event.
    pub fn hold_below(&self, dir: &Path) -> Result<(Watch, mpsc::UnboundedReceiver<CgroupId>)> {
        let id = cgroup_id(dir)?;
        let (tx, rx) = mpsc::unbounded_channel();
        *self.to_classify.lock().expect("classify lock") = Some(tx);
        self.held_parents
            .lock()
            .expect("held parents lock")
            .push((dir.to_path_buf(), id));
        match self.watch_with(dir, Seed::Never) {
            Ok(w) => Ok((w, rx)),
            Err(e) => {
                self.held_parents
                    .lock()
                    .expect("held parents lock")
                    .retain(|(_, i)| *i != id);
                Err(e)
            }
        }
    }

    /// Says whose the held cgroup `cgroup` is. A foreign one found at `dir`
    /// is excluded in the kernel, unless a session watches it or one is
    /// still waiting for its container's cgroup (which could be this one).
    pub fn decide(&self, cgroup: CgroupId, verdict: Verdict, dir: Option<&Path>) {
        if let (Verdict::Foreign, Some(dir)) = (&verdict, dir) {
            self.exclude(dir);
        }
        let _ = self.verdicts.send((cgroup, verdict));
    }

    fn exclude(&self, dir: &Path) {
        let watches = self.watches.lock().expect("watches lock");
        let pending = self
            .routes
            .lock()
            .expect("routes lock")
            .iter()
            .any(|r| r.pending());
        if pending || watches.contains_key(dir) {
            return;
        }
        let mut exclusions = self.exclusions.lock().expect("exclusions lock");
        // Containers come and go: forget the exclusions of cgroups since
        // removed (or made anew under the same name), which the kernel's
        // map would otherwise fill up with.
        exclusions.retain(|path, w| {
            let live = cgroup_id(path).is_ok_and(|id| id == w.id);
            if !live && self.tracer.unwatch(w).is_err() {
                tracing::debug!(cgroup = %path.display(), "exclusion already gone");
            }
            live
        });
        if exclusions.contains_key(dir) {
            return;
        }
        match self.tracer.exclude_cgroup(dir) {
            Ok(w) => {
                tracing::debug!(cgroup = %dir.display(), "no session's: excluded from tracing");
                self.stats.cgroups_excluded.fetch_add(1, Ordering::Relaxed);
                exclusions.insert(dir.to_path_buf(), w);
            }
            // Exited meanwhile: nothing left to exclude.
            Err(_) if !dir.exists() => {}
            // Its events are still dropped in user space, at more cost.
            Err(e) => tracing::warn!(cgroup = %dir.display(), "cannot exclude: {e:#}"),
        }
    }

    /// Watches anew the cgroup at `dir` (watched already) after it was
    /// removed and made again (its container stopped and is about to start): the kernel
    /// filters by cgroup id, and the new cgroup has a new one. Nothing runs
    /// there yet, so nothing is read from /proc.
    pub fn renew(&self, dir: &Path) -> Result<()> {
        let mut watches = self.watches.lock().expect("watches lock");
        let Some((w, _)) = watches.get_mut(dir) else {
            anyhow::bail!("cgroup {} is not watched", dir.display());
        };
        if cgroup_id(dir)? == w.id {
            return Ok(());
        }
        // The old id is gone with its cgroup.
        let _ = self.tracer.unwatch(w);
        *w = self.tracer.watch_cgroup_followed(dir)?;
        self.routes_version.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    pub fn unwatch(&self, watch: Watch) {
        let mut watches = self.watches.lock().expect("watches lock");
        if let Some((w, n)) = watches.get_mut(&watch.0) {
            *n -= 1;
            if *n == 0 {
                if self.tracer.unwatch(w).is_err() {
                    tracing::debug!(cgroup = %watch.0.display(), "the cgroup is gone");
                }
                watches.remove(&watch.0);
            }
        }
    }

    /// Cgroups watched now (each once, however many sessions share it).
    pub fn watched(&self) -> usize {
        self.watches.lock().expect("watches lock").len()
    }

    /// What the kernel lost of each watched cgroup's records, the cgroups
    /// below it included, by watched directory (for the metrics).
    pub fn watched_losses(&self) -> Vec<(PathBuf, crate::trace::CgroupLoss)> {
        let dirs: Vec<PathBuf> = self
            .watches
            .lock()
            .expect("watches lock")
            .keys()
            .cloned()
            .collect();
        dirs.into_iter()
            .map(|dir| {
                let lost = cgroups_below(&dir)
                    .iter()
                    .filter_map(|d| cgroup_id(d).ok())
                    .map(|id| self.cgroup_loss(id))
                    .fold(crate::trace::CgroupLoss::default(), |a, b| a.plus(b));
                (dir, lost)
            })
            .collect()
    }

    /// Whether every event recorded before `ns` (CLOCK_MONOTONIC) has been
    /// handed to its session.
    pub fn dispatched_up_to(&self, ns: u64) -> bool {
        self.dispatched_ns.load(Ordering::Relaxed) >= ns
    }

    /// The tracer's loss counters, host-wide.
    pub fn loss(&self) -> LossCounters {
        self.tracer.counters().map(|c| c.loss).unwrap_or_default()
    }

    /// The tracer's counters, host-wide; unreadable counters count as a
    /// loss that cannot be attributed, so no session passes as complete.
    pub fn counters(&self) -> crate::trace::TracerCounters {
        self.tracer.counters().unwrap_or_else(|e| {
            tracing::error!("reading the tracer's counters: {e:#}");
            crate::trace::TracerCounters {
                unattributed: u64::MAX,
                ..Default::default()
            }
        })
    }

    /// What the kernel lost of cgroup `id`'s records; an unreadable entry
    /// counts as everything lost.
    pub fn cgroup_loss(&self, id: CgroupId) -> crate::trace::CgroupLoss {
        self.tracer.cgroup_loss(id).unwrap_or_else(|e| {
            tracing::error!("reading the loss of cgroup {}: {e:#}", id.0);
            crate::trace::CgroupLoss {
                ringbuf_full: u64::MAX,
                ..Default::default()
            }
        })
    }

    /// Repeats the kernel folded of cgroup `id`'s processes; an unreadable
    /// entry counts none (a count, not a loss).
    pub fn cgroup_folded(&self, id: CgroupId) -> u64 {
        self.tracer.cgroup_folded(id).unwrap_or_else(|e| {
            tracing::warn!("reading the folded repeats of cgroup {}: {e:#}", id.0);
            0
        })
    }

    /// Live subscriptions, and the events their queues may hold in all.
    pub fn subscribed(&self) -> (usize, usize) {
        let subscribers = self.subscribers.lock().expect("subscribers lock");
        let live = subscribers.iter().filter(|s| !s.tx.is_closed());
        live.fold((0, 0), |(n, total), s| (n + 1, total + s.tx.max_capacity()))
    }

    /// Subscribes to the events sessions keep, with a queue of `capacity`.
    pub fn subscribe(&self, filter: StreamFilter, capacity: usize) -> Subscription {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let cut_off = Arc::new(AtomicBool::new(false));
        self.subscribers
            .lock()
            .expect("subscribers lock")
            .push(Subscriber {
                filter,
                tx,
                cut_off: cut_off.clone(),
            });
        Subscription {
            events: rx,
            cut_off,
        }
    }

    pub fn subscribers(&self) -> usize {
        self.subscribers.lock().expect("subscribers lock").len()
    }

    /// Hands a session's event to the subscribers that want it. A full
    /// queue cuts its subscriber off; a closed one is dropped.
    pub fn publish(&self, event: &StreamedEvent) {
        let mut subscribers = self.subscribers.lock().expect("subscribers lock");
        if subscribers.is_empty() {
            return;
        }
        subscribers.retain(|s| {
            if s.tx.is_closed() {
                return false;
            }
            if !s.filter.matches(event) {
                return true;
            }
            match s.tx.try_send(event.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    s.cut_off.store(true, Ordering::Relaxed);
                    self.stats.streams_cut_off.fetch_add(1, Ordering::Relaxed);
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
    }
}

/// Events of one new cgroup, held until it is known whose it is.
struct Held {
    events: Vec<Event>,
    bytes: usize,
    /// Events that did not fit.
    overflow: u64,
    pids: HashSet<u32>,
    since: Instant,
    wanted: bool,
}

/// Every held cgroup, within the limits.
#[derive(Default)]
struct Pen {
    held: HashMap<CgroupId, Held>,
    bytes: usize,
    /// Cgroups found foreign, and when: their in-flight events are dropped.
    foreign: HashMap<CgroupId, Instant>,
}

impl Pen {
    /// Holds `event`; true when its cgroup is new here.
    fn hold(&mut self, event: Event, stats: &ObserverStats) -> bool {
        let size = approx_bytes(&event);
        let new = !self.held.contains_key(&event.cgroup);
        let held = self.held.entry(event.cgroup).or_insert_with(|| Held {
            events: Vec::new(),
            bytes: 0,
            overflow: 0,
            pids: HashSet::new(),
            since: Instant::now(),
            wanted: false,
        });
        held.pids.insert(event.pid);
        if held.bytes + size > HOLD_PER_CGROUP_BYTES || self.bytes + size > HOLD_TOTAL_BYTES {
            held.overflow += 1;
            stats.held_overflow.fetch_add(1, Ordering::Relaxed);
        } else {
            held.bytes += size;
            self.bytes += size;
            held.events.push(event);
        }
        new
    }

    fn take(&mut self, cgroup: CgroupId) -> Option<Held> {
        let held = self.held.remove(&cgroup)?;
        self.bytes -= held.bytes;
        Some(held)
    }

    /// Drops what is held for `cgroup`, counted, and has the tracer forget
    /// its processes: their exits will not be seen.
    fn drop_held(&mut self, cgroup: CgroupId, observer: &Observer) {
        if let Some(held) = self.take(cgroup) {
            observer
                .stats
                .held_dropped
                .fetch_add(held.events.len() as u64 + held.overflow, Ordering::Relaxed);
            observer.tracer.forget_processes(held.pids);
        }
    }
}

/// Roughly what an event takes in memory, for the hold's limits.
fn approx_bytes(e: &Event) -> usize {
    use crate::trace::EventKind;
    let strings = |v: &[String]| v.iter().map(|a| a.len() + 24).sum::<usize>();
    std::mem::size_of::<Event>()
        + e.comm.len()
        + match &e.kind {
            EventKind::Syscall(s) => {
                std::mem::size_of::<crate::trace::SyscallEvent>()
                    + s.syscall.len()
                    + s.paths
                        .iter()
                        .map(|p| {
                            std::mem::size_of::<crate::trace::PathArg>()
                                + p.raw.len()
                                + p.path.as_ref().map_or(0, |c| c.as_str().len())
                        })
                        .sum::<usize>()
                    + s.argv.as_deref().map_or(0, strings)
                    + 64
            }
            EventKind::Running { exe, argv, cwd } => {
                strings(argv)
                    + exe.as_ref().map_or(0, |p| p.as_str().len())
                    + cwd.as_ref().map_or(0, |p| p.as_str().len())
            }
            _ => 0,
        }
}

/// How long the supervisor waits before it restarts the reader or the
/// dispatcher; doubled while restarts follow one another, up to
/// [`RESTART_MAX`]. Meanwhile the ring buffer holds what is recorded, and
/// the health service says NOT_SERVING.
const RESTART_FIRST: Duration = Duration::from_millis(500);
const RESTART_MAX: Duration = Duration::from_secs(30);
/// A run this long starts the backoff again from [`RESTART_FIRST`].
const RESTART_RESET: Duration = Duration::from_secs(60);

/// Runs the dispatcher, and the reader behind its event stream, for the
/// observer's life: restarts either when it ends, counting what it had in
/// hand as lost to the sessions it was for.
async fn supervise(
    observer: std::sync::Weak<Observer>,
    events: crate::trace::EventStream,
    mut dispatcher: Dispatcher,
    claimed: Arc<Notify>,
) {
    let mut events = Some(events);
    let mut backoff = RESTART_FIRST;
    loop {
        let Some(stream) = events.as_mut() else {
            let Some(o) = observer.upgrade() else { return };
            match o.tracer.open_events() {
                Ok(stream) => events = Some(stream),
                Err(e) => {
                    tracing::error!(
                        "restarting the ring reader: {e:#}; trying again in {backoff:?}"
                    );
                    drop(o);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(RESTART_MAX);
                }
            }
            continue;
        };
        if let Some(o) = observer.upgrade()
            && !*o.tracing.borrow()
        {
            o.tracing.send_replace(true);
            tracing::warn!("the ring reader and the dispatcher run again");
        }
        let began = Instant::now();
        let run = std::panic::AssertUnwindSafe(dispatcher.run(&observer, stream, &claimed));
        let ended = futures::FutureExt::catch_unwind(run).await;
        let Some(o) = observer.upgrade() else { return };
        let mut lost = Vec::new();
        match ended {
            Ok(Ended::ObserverGone) => return,
            Ok(Ended::StreamEnded) => {
                o.tracing.send_replace(false);
                let why = match events.take().expect("the stream ran").reader_end().await {
                    Ok(()) => "it stopped".to_owned(),
                    Err(e) => format!("{e:#}"),
                };
                o.stats.reader_restarts.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    "the ring reader ended ({why}): health is NOT_SERVING until it runs again; restarting it in {backoff:?}"
                );
            }
            Err(panic) => {
                o.tracing.send_replace(false);
                o.stats.dispatcher_restarts.fetch_add(1, Ordering::Relaxed);
                lost.extend(dispatcher.in_hand.take().map(|c| (Some(c), 1)));
                tracing::error!(
                    "the dispatcher panicked ({}): health is NOT_SERVING until it runs again; restarting it in {backoff:?}",
                    panic_message(&*panic)
                );
            }
        }
        lost.extend(o.tracer.take_interrupted());
        if !lost.is_empty() {
            let n: u64 = lost.iter().map(|(_, n)| n).sum();
            tracing::warn!(
                events = n,
                "events in hand were lost: counted in the sessions' loss (`interrupted`)"
            );
            o.attribute_interrupted(&lost);
        }
        drop(o);
        if began.elapsed() > RESTART_RESET {
            backoff = RESTART_FIRST;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(RESTART_MAX);
    }
}

/// A panic's message, as far as it has one.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("no message")
}

/// How a dispatcher run ended, when it did not panic.
enum Ended {
    /// The reader ended: its stream has nothing more.
    StreamEnded,
    /// The observer was dropped: the daemon is stopping.
    ObserverGone,
}

/// What the dispatcher keeps across its restarts.
struct Dispatcher {
    verdicts: mpsc::UnboundedReceiver<(CgroupId, Verdict)>,
    routes: Vec<Arc<Route>>,
    seen_version: u64,
    /// Cgroups found to be no narrowed session's, until routes change.
    foreign: HashSet<CgroupId>,
    pen: Pen,
    /// The cgroup of the event being routed: lost if a panic ends the run.
    in_hand: Option<CgroupId>,
}

impl Dispatcher {
    fn new(verdicts: mpsc::UnboundedReceiver<(CgroupId, Verdict)>) -> Self {
        Self {
            verdicts,
            routes: Vec::new(),
            seen_version: u64::MAX,
            foreign: HashSet::new(),
            pen: Pen::default(),
            in_hand: None,
        }
    }

    async fn run(
        &mut self,
        observer: &std::sync::Weak<Observer>,
        events: &mut crate::trace::EventStream,
        claimed: &Notify,
    ) -> Ended {
        let Self {
            verdicts,
            routes,
            seen_version,
            foreign,
            pen,
            in_hand,
        } = self;
        let mut tick = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                event = events.next_event() => {
                    let Some(event) = event else { return Ended::StreamEnded };
                    let Some(observer) = observer.upgrade() else {
                        return Ended::ObserverGone;
                    };
                    observer.stats.events.fetch_add(1, Ordering::Relaxed);
                    *in_hand = Some(event.cgroup);
                    if observer.kill_dispatcher.swap(false, Ordering::Relaxed) {
                        panic!("test hook: the dispatcher was killed routing an event");
                    }
                    refresh(&observer, seen_version, routes, foreign);
                    route_event(&observer, event, routes, foreign, pen).await;
                    *in_hand = None;
                    mark_dispatched(&observer, events);
                }
                Some((cgroup, verdict)) = verdicts.recv() => {
                    let Some(observer) = observer.upgrade() else {
                        return Ended::ObserverGone;
                    };
                    match verdict {
                        Verdict::Wanted => {
                            if let Some(held) = pen.held.get_mut(&cgroup) {
                                held.wanted = true;
                            }
                            // Its session may have claimed it already.
                            refresh(&observer, seen_version, routes, foreign);
                            hand_over(routes, pen).await;
                        }
                        Verdict::Foreign => {
                            pen.drop_held(cgroup, &observer);
                            pen.foreign.insert(cgroup, Instant::now());
                        }
                    }
                }
                _ = claimed.notified() => {
                    let Some(observer) = observer.upgrade() else {
                        return Ended::ObserverGone;
                    };
                    refresh(&observer, seen_version, routes, foreign);
                    hand_over(routes, pen).await;
                }
                _ = tick.tick() => {
                    let Some(observer) = observer.upgrade() else {
                        return Ended::ObserverGone;
                    };
                    mark_dispatched(&observer, events);
                    refresh(&observer, seen_version, routes, foreign);
                    hand_over(routes, pen).await;
                    let expired: Vec<(CgroupId, bool)> = pen
                        .held
                        .iter()
                        .filter(|(_, h)| h.since.elapsed() > HOLD_WAIT)
                        .map(|(c, h)| (*c, h.wanted))
                        .collect();
                    for (cgroup, wanted) in expired {
                        if wanted {
                            tracing::warn!(cgroup = cgroup.0, "a labelled container's cgroup was not claimed by a session in time: its events are dropped");
                        } else {
                            tracing::warn!(cgroup = cgroup.0, "whose a new cgroup is was not found in time: its events are dropped");
                        }
                        pen.drop_held(cgroup, &observer);
                    }
                    pen.foreign.retain(|_, at| at.elapsed() < FOREIGN_MEMORY);
                }
            }
        }
    }
}

/// With nothing waiting in the stream, everything the reader drained has
/// been routed. (Read before looking: what the reader hands over after
/// that is not claimed.)
fn mark_dispatched(observer: &Observer, events: &crate::trace::EventStream) {
    let drained = observer.tracer.drained_ns();
    if events.is_empty() {
        observer.dispatched_ns.fetch_max(drained, Ordering::Relaxed);
    }
}

/// Takes the routes anew when they changed, forgetting which cgroups were
/// found to be no session's.
fn refresh(
    observer: &Observer,
    seen_version: &mut u64,
    routes: &mut Vec<Arc<Route>>,
    foreign: &mut HashSet<CgroupId>,
) {
    let version = observer.routes_version.load(Ordering::Relaxed);
    if version != *seen_version {
        *routes = observer.routes.lock().expect("routes lock").clone();
        foreign.clear();
        *seen_version = version;
    }
}

/// Sends one event to the session owning its cgroup, or holds it while its
/// cgroup is new below a held parent, or counts it as no one's.
async fn route_event(
    observer: &Observer,
    event: Event,
    routes: &[Arc<Route>],
    foreign: &mut HashSet<CgroupId>,
    pen: &mut Pen,
) {
    let owner = (!foreign.contains(&event.cgroup))
        .then(|| routes.iter().find(|r| r.owns(event.cgroup)))
        .flatten()
        .cloned();
    if let Some(route) = owner {
        // What was held for the cgroup goes first, in order.
        if let Some(held) = pen.take(event.cgroup) {
            send_held(&route, held).await;
        }
        // Waiting here is back-pressure: the ring buffer absorbs it,
        // and what it cannot hold is counted as lost.
        let _ = route.tx.send(event).await;
        return;
    }
    foreign.insert(event.cgroup);
    let pending: Vec<&Arc<Route>> = routes.iter().filter(|r| r.pending()).collect();
    for route in &pending {
        let _ = route.tx.send(event.clone()).await;
    }
    let holding = {
        let parents = observer.held_parents.lock().expect("held parents lock");
        !parents.is_empty() && !parents.iter().any(|(_, id)| *id == event.cgroup)
    };
    if holding {
        if pen.foreign.contains_key(&event.cgroup) {
            // In flight when its cgroup was excluded.
            observer.stats.held_dropped.fetch_add(1, Ordering::Relaxed);
            observer.tracer.forget_processes([event.pid]);
            return;
        }
        let cgroup = event.cgroup;
        if pen.hold(event, &observer.stats) {
            tracing::debug!(cgroup = cgroup.0, "a new cgroup: holding its events");
            observer.stats.held_cgroups.fetch_add(1, Ordering::Relaxed);
            if let Some(tx) = observer.to_classify.lock().expect("classify lock").as_ref() {
                let _ = tx.send(cgroup);
            }
        }
        return;
    }
    if pending.is_empty() {
        observer.stats.unclaimed.fetch_add(1, Ordering::Relaxed);
    }
}

/// Gives each held cgroup that a session now owns to that session.
async fn hand_over(routes: &[Arc<Route>], pen: &mut Pen) {
    if pen.held.is_empty() {
        return;
    }
    let owned: Vec<(CgroupId, Arc<Route>)> = pen
        .held
        .keys()
        .filter_map(|c| Some((*c, routes.iter().find(|r| r.owns(*c))?.clone())))
        .collect();
    for (cgroup, route) in owned {
        if let Some(held) = pen.take(cgroup) {
            send_held(&route, held).await;
        }
    }
}

async fn send_held(route: &Route, held: Held) {
    tracing::debug!(
        session = %route.session,
        events = held.events.len(),
        overflow = held.overflow,
        held_ms = held.since.elapsed().as_millis() as u64,
        "handing over what was held while the container's labels were looked up"
    );
    route
        .held_overflow
        .fetch_add(held.overflow, Ordering::Relaxed);
    for e in held.events {
        let _ = route.tx.send(e).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::EventKind;

    fn streamed(session: &str, exe: Option<&str>, kind: EventKind) -> StreamedEvent {
        StreamedEvent {
            session: session.into(),
            exe: exe.map(|p| ContainerPath::new(p).unwrap()),
            event: Arc::new(Event {
                ts_ns: 0,
                pid: 1,
                tid: 1,
                ppid: 0,
                cgroup: CgroupId(1),
                comm: "x".into(),
                kind,
            }),
        }
    }

    fn big_event(cgroup: u64, pid: u32) -> Event {
        Event {
            ts_ns: 0,
            pid,
            tid: pid,
            ppid: 0,
            cgroup: CgroupId(cgroup),
            // About 1 MiB, so the limits are reached in a few events.
            comm: "x".repeat((1 << 20) - std::mem::size_of::<Event>()),
            kind: EventKind::Exit {
                process_exited: true,
            },
        }
    }

    #[test]
    fn what_is_held_is_bounded_per_cgroup_and_in_all() {
        let stats = ObserverStats::default();
        let mut pen = Pen::default();
        let per_cgroup = HOLD_PER_CGROUP_BYTES >> 20;
        assert!(pen.hold(big_event(1, 10), &stats), "a new cgroup");
        for _ in 1..per_cgroup + 3 {
            assert!(!pen.hold(big_event(1, 10), &stats));
        }
        let held = &pen.held[&CgroupId(1)];
        assert_eq!((held.events.len(), held.overflow), (per_cgroup, 3));
        // Other cgroups fill what is left in all; then they overflow too.
        let cgroups = (HOLD_TOTAL_BYTES / HOLD_PER_CGROUP_BYTES) as u64;
        for c in 2..=cgroups + 1 {
            for _ in 0..per_cgroup {
                pen.hold(big_event(c, 20), &stats);
            }
        }
        assert!(pen.bytes <= HOLD_TOTAL_BYTES);
        assert_eq!(pen.held[&CgroupId(cgroups + 1)].events.len(), 0);
        assert_eq!(
            stats.held_overflow.load(Ordering::Relaxed),
            3 + per_cgroup as u64
        );
        // What is taken is given back to the total.
        let taken = pen.take(CgroupId(1)).unwrap();
        assert_eq!(taken.pids, HashSet::from([10]));
        assert!(pen.hold(big_event(99, 30), &stats));
        assert_eq!(pen.held[&CgroupId(99)].events.len(), 1);
    }

    #[test]
    fn filters_match_by_session_executable_and_kind() {
        let exit = EventKind::Exit {
            process_exited: true,
        };
        let e = streamed("web", Some("/usr/sbin/nginx"), exit);
        assert!(StreamFilter::default().matches(&e));
        let only = |sessions: &[&str], exes: &[&str], kinds: &[&str]| StreamFilter {
            sessions: sessions.iter().map(|s| s.to_string()).collect(),
            executables: exes
                .iter()
                .map(|p| ContainerPath::new(p).unwrap())
                .collect(),
            kinds: kinds.iter().map(|s| s.to_string()).collect(),
        };
        assert!(only(&["web"], &["/usr/sbin/nginx"], &["exit"]).matches(&e));
        assert!(!only(&["db"], &[], &[]).matches(&e));
        assert!(!only(&[], &["/bin/sh"], &[]).matches(&e));
        assert!(!only(&[], &[], &["syscall", "openat"]).matches(&e));
    }
}
