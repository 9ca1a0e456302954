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

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Result;
use tokio::sync::mpsc;

use crate::trace::cgroup::{cgroup_id, cgroups_below};
use crate::trace::{CgroupId, ContainerPath, Event, LossCounters, Tracer, TracerConfig};

/// Events buffered for one session between the dispatcher and the session.
const SESSION_QUEUE: usize = 65536;

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
            claim.members = cgroup_ids_below(&dir);
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
    }
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
}

pub struct Observer {
    tracer: Tracer,
    routes: Mutex<Vec<Arc<Route>>>,
    watches: Mutex<HashMap<PathBuf, (crate::trace::WatchedCgroup, usize)>>,
    subscribers: Mutex<Vec<Subscriber>>,
    /// Bumped when routes change, so the dispatcher forgets which cgroups
    /// it found to be no session's.
    routes_version: AtomicU64,
    pub stats: ObserverStats,
}

/// A watch held by a session; given back with [`Observer::unwatch`].
pub struct Watch(PathBuf);

impl Observer {
    /// Loads the kernel programs and starts the dispatcher on the current
    /// runtime. Dropping the last `Arc` detaches them.
    pub fn start(config: TracerConfig) -> Result<Arc<Self>> {
        let mut tracer = Tracer::load(config)?;
        let events = tracer.events()?;
        let observer = Arc::new(Self {
            tracer,
            routes: Mutex::default(),
            watches: Mutex::default(),
            subscribers: Mutex::default(),
            routes_version: AtomicU64::new(0),
            stats: ObserverStats::default(),
        });
        tokio::spawn(dispatch(Arc::downgrade(&observer), events));
        Ok(observer)
    }

    /// Adds a session. Until [`Observer::claim`] names its cgroup it
    /// receives every event no other session owns.
    pub fn route(&self, session: &str) -> (Arc<Route>, mpsc::Receiver<Event>) {
        let (tx, rx) = mpsc::channel(SESSION_QUEUE);
        let route = Arc::new(Route {
            session: session.to_owned(),
            claim: Mutex::default(),
            tx,
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
    }

    pub fn unroute(&self, route: &Arc<Route>) {
        self.routes
            .lock()
            .expect("routes lock")
            .retain(|r| !Arc::ptr_eq(r, route));
        self.routes_version.fetch_add(1, Ordering::Relaxed);
    }

    /// Starts recording the cgroup at `dir` and below (shared with any other
    /// session watching it).
    pub fn watch(&self, dir: &Path) -> Result<Watch> {
        let mut watches = self.watches.lock().expect("watches lock");
        match watches.get_mut(dir) {
            Some((_, n)) => *n += 1,
            None => {
                let followed = watches.keys().any(|w| dir.starts_with(w));
                let w = if followed {
                    self.tracer.watch_cgroup_followed(dir)?
                } else {
                    self.tracer.watch_cgroup(dir)?
                };
                watches.insert(dir.to_path_buf(), (w, 1));
            }
        }
        self.routes_version.fetch_add(1, Ordering::Relaxed);
        Ok(Watch(dir.to_path_buf()))
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

    /// The tracer's loss counters, host-wide.
    pub fn loss(&self) -> LossCounters {
        self.tracer.counters().map(|c| c.loss).unwrap_or_default()
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

async fn dispatch(observer: std::sync::Weak<Observer>, mut events: crate::trace::EventStream) {
    let mut routes: Vec<Arc<Route>> = Vec::new();
    let mut seen_version = u64::MAX;
    // Cgroups found to be no narrowed session's, until routes change.
    let mut foreign: HashSet<CgroupId> = HashSet::new();
    while let Some(event) = events.next_event().await {
        let Some(observer) = observer.upgrade() else {
            return;
        };
        observer.stats.events.fetch_add(1, Ordering::Relaxed);
        let version = observer.routes_version.load(Ordering::Relaxed);
        if version != seen_version {
            routes = observer.routes.lock().expect("routes lock").clone();
            foreign.clear();
            seen_version = version;
        }
        let owner = (!foreign.contains(&event.cgroup))
            .then(|| routes.iter().find(|r| r.owns(event.cgroup)))
            .flatten()
            .cloned();
        match owner {
            Some(route) => {
                // Waiting here is back-pressure: the ring buffer absorbs it,
                // and what it cannot hold is counted as lost.
                let _ = route.tx.send(event).await;
            }
            None => {
                foreign.insert(event.cgroup);
                let pending: Vec<&Arc<Route>> = routes.iter().filter(|r| r.pending()).collect();
                if pending.is_empty() {
                    observer.stats.unclaimed.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                for route in pending {
                    let _ = route.tx.send(event.clone()).await;
                }
            }
        }
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
