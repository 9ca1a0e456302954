//! Observation sessions: the daemon core. A [`Manager`] observes
//! containers through one shared [`Observer`], checkpoints what each session
//! sees into the [`Store`] at least every [`CHECKPOINT`], and after a crash
//! marks the gap and resumes the containers still running.
//!
//! A session covers the container from its first exec: when the container
//! is not running, or `restart` is asked for, Docker's parent cgroup is
//! watched before the engine starts the container, so the entrypoint's exec
//! and everything start-up reads are recorded; then the session narrows to
//! the container's own cgroup. Containers labelled
//! `io.cimplifier.observe=true` (or matching a selector given to `observe`)
//! are caught at `create`, so they too are observed from their first exec.

pub mod observer;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow};
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};

pub use observer::{Observer, StreamFilter, StreamedEvent, Subscription};

use crate::docker::{Docker, container};
use crate::store::{EndReason, Gap, Segment, SessionRecord, SessionState, Started, Store};
use crate::trace::cgroup::cgroup2_mount;
use crate::trace::{ContainerPath, Event, EventKind};
use observer::{Route, Watch};

/// Where sessions live unless told otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/cimplifier";

/// The label that asks for a container to be observed from its first exec.
pub const OBSERVE_LABEL: &str = "io.cimplifier.observe=true";

/// How often a session makes what it saw durable: a daemon killed outright
/// loses at most this much.
pub const CHECKPOINT: Duration = Duration::from_millis(500);

/// How long a closing session waits at most for the dispatcher to hand it
/// what was recorded before the end.
const DRAIN_WAIT: Duration = Duration::from_secs(30);
/// How far past a session's end an event must be to show that the reader
/// has handed over everything up to the end.
const PAST_THE_END: Duration = Duration::from_millis(20);

#[derive(Clone, Debug, Default)]
pub struct ObserveOptions {
    /// Container name or id.
    pub container: String,
    pub duration: Option<Duration>,
    /// Restart a running container so its start-up is observed.
    pub restart: bool,
    /// Observe a running container from now on, without its start-up.
    pub attach: bool,
}

/// Why an observation could not begin, by what the caller can do about it.
#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    #[error("container {0:?} not found by the Docker engine (see `docker ps -a`)")]
    NotFound(String),
    #[error("{0} is already being observed; `cimplifierctl stop {0}` ends it")]
    AlreadyObserving(String),
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

/// How the session meets its container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Opening {
    /// Not running: start it under observation.
    Start,
    Restart,
    Attach,
    /// Just created by someone else, who is starting it: wait for it.
    AwaitStart,
    /// The daemon came back; the container still runs.
    Resume,
}

/// What a session looks like from outside.
#[derive(Clone, Debug)]
pub enum SessionView {
    /// Observing, or closed: the stored record (updated at each checkpoint).
    Stored(SessionRecord),
    /// Observing, before its first checkpoint.
    Starting(Started),
    /// The observation failed after it began.
    Failed { name: String, error: String },
}

struct Running {
    stop: Option<oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<Result<SessionRecord>>>,
    started: Started,
}

/// The sessions of one daemon.
pub struct Manager {
    observer: Arc<Observer>,
    store: Arc<Store>,
    running: Mutex<HashMap<String, Running>>,
    failed: Mutex<HashMap<String, String>>,
    /// Label selectors (`key=value`) of containers to observe on creation.
    selectors: Mutex<BTreeSet<String>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Docker's parent cgroup for containers (the cgroupfs driver's default).
fn docker_parent_cgroup(cgroup_parent: Option<&str>) -> Result<PathBuf> {
    let parent = cgroup_parent.filter(|p| !p.is_empty()).unwrap_or("docker");
    let dir = cgroup2_mount()?.join(parent.trim_start_matches('/'));
    if !dir.is_dir() {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating Docker's parent cgroup {}", dir.display()))?;
    }
    Ok(dir)
}

/// A closed session of a container that still runs, reopened at `now_ms`:
/// the time since its last checkpoint is a gap (nothing was observed).
fn continued(mut record: SessionRecord, now_ms: u64) -> SessionRecord {
    record.gaps.push(Gap {
        from_unix_ms: record.checkpoint_unix_ms,
        to_unix_ms: now_ms,
        reason: "the session was closed while its container ran on (the daemon was stopped)".into(),
    });
    record.state = SessionState::Observing;
    record.end = None;
    record
}

/// A `key=value` label selector, checked.
pub fn check_selector(selector: &str) -> Result<(), ObserveError> {
    match selector.split_once('=') {
        Some((k, v)) if !k.is_empty() && !v.is_empty() && selector.len() <= 256 => Ok(()),
        _ => Err(ObserveError::Refused(format!(
            "label selector {selector:?}: give key=value, e.g. {OBSERVE_LABEL}"
        ))),
    }
}

impl Manager {
    pub fn new(observer: Arc<Observer>, store: Arc<Store>) -> Arc<Self> {
        Arc::new(Self {
            observer,
            store,
            running: Mutex::default(),
            failed: Mutex::default(),
            selectors: Mutex::new([OBSERVE_LABEL.to_owned()].into()),
        })
    }

    pub fn observer(&self) -> &Arc<Observer> {
        &self.observer
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Starts observing a container; returns once the observation has
    /// begun (the container's cgroup is watched).
    pub async fn observe(self: &Arc<Self>, opts: ObserveOptions) -> Result<Started, ObserveError> {
        if opts.restart && opts.attach {
            return Err(ObserveError::Refused(
                "restart and attach exclude each other".into(),
            ));
        }
        let docker = crate::docker::connect()?;
        let details = container::inspect(&docker, &opts.container)
            .await
            .map_err(|_| ObserveError::NotFound(opts.container.clone()))?;
        let name = container::name_of(&details);
        if self
            .running
            .lock()
            .expect("sessions lock")
            .contains_key(&name)
        {
            return Err(ObserveError::AlreadyObserving(name));
        }
        let running = details.state.as_ref().and_then(|s| s.running) == Some(true);
        let opening = match (running, opts.restart, opts.attach) {
            (false, _, _) => Opening::Start,
            (true, true, _) => Opening::Restart,
            (true, _, true) => Opening::Attach,
            (true, false, false) => {
                return Err(ObserveError::Refused(format!(
                    "container {name} is already running, so its start-up (which reads its \
                     configuration and loads its libraries) cannot be observed: pass --restart \
                     to restart it under observation, or --attach to observe it from now on"
                )));
            }
        };
        self.begin(details, opening, opts.duration, None, None)
            .await
    }

    /// Spawns the session task and waits until it has begun.
    async fn begin(
        self: &Arc<Self>,
        details: container::Details,
        opening: Opening,
        duration: Option<Duration>,
        resumed: Option<SessionRecord>,
        prepared: Option<Prepared>,
    ) -> Result<Started, ObserveError> {
        let name = container::name_of(&details);
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (started_tx, started_rx) = oneshot::channel::<Started>();
        {
            let mut running = self.running.lock().expect("sessions lock");
            if running.contains_key(&name) {
                return Err(ObserveError::AlreadyObserving(name));
            }
            // Reserved now so a second request for it is refused at once.
            running.insert(
                name.clone(),
                Running {
                    stop: Some(stop_tx),
                    done: None,
                    started: Started {
                        container_id: details.id.clone().unwrap_or_default(),
                        container_name: name.clone(),
                        image_id: details.image.clone().unwrap_or_default(),
                        image_ref: String::new(),
                        from_first_exec: false,
                        started_unix_ms: now_ms(),
                    },
                },
            );
        }
        let manager = self.clone();
        let task_name = name.clone();
        let done = tokio::spawn(async move {
            let session = SessionTask {
                manager: manager.clone(),
                details,
                opening,
                duration,
                resumed,
                prepared,
            };
            let result = session
                .run(
                    async move {
                        let _ = stop_rx.await;
                    },
                    started_tx,
                )
                .await;
            if let Err(e) = &result {
                tracing::warn!(session = %task_name, "observation failed: {e:#}");
                manager
                    .failed
                    .lock()
                    .expect("failed lock")
                    .insert(task_name.clone(), format!("{e:#}"));
            }
            manager
                .running
                .lock()
                .expect("sessions lock")
                .remove(&task_name);
            result
        });
        match started_rx.await {
            Ok(started) => {
                self.failed.lock().expect("failed lock").remove(&name);
                if let Some(r) = self.running.lock().expect("sessions lock").get_mut(&name) {
                    r.started = started.clone();
                    r.done = Some(done);
                }
                Ok(started)
            }
            Err(_) => {
                self.running.lock().expect("sessions lock").remove(&name);
                match done.await {
                    Ok(Err(e)) => Err(ObserveError::Refused(format!("{e:#}"))),
                    Ok(Ok(_)) => Err(anyhow!("observation ended before it began").into()),
                    Err(e) => Err(anyhow!("observation task failed: {e}").into()),
                }
            }
        }
    }

    /// Ends an observation and returns its closed record; a closed
    /// session's record as it is; None when there is no such session.
    pub async fn stop(&self, name: &str) -> Result<Option<SessionRecord>> {
        let entry = self.running.lock().expect("sessions lock").remove(name);
        let Some(mut r) = entry else {
            return self.store.session(name);
        };
        if let Some(stop) = r.stop.take() {
            let _ = stop.send(());
        }
        match r.done.take() {
            Some(done) => done
                .await
                .map_err(|e| anyhow!("observation task failed: {e}"))?
                .map(Some),
            None => self.store.session(name),
        }
    }

    pub fn get(&self, name: &str) -> Result<Option<SessionView>> {
        if let Some(error) = self.failed.lock().expect("failed lock").get(name) {
            return Ok(Some(SessionView::Failed {
                name: name.to_owned(),
                error: error.clone(),
            }));
        }
        let starting = self
            .running
            .lock()
            .expect("sessions lock")
            .get(name)
            .map(|r| r.started.clone());
        Ok(match self.store.session(name)? {
            Some(r) if r.state == SessionState::Observing || starting.is_none() => {
                Some(SessionView::Stored(r))
            }
            _ => starting.map(SessionView::Starting),
        })
    }

    pub fn list(&self) -> Result<Vec<SessionView>> {
        let mut out: HashMap<String, SessionView> = self
            .store
            .sessions()?
            .into_iter()
            .map(|r| (r.name.clone(), SessionView::Stored(r)))
            .collect();
        for (name, r) in self.running.lock().expect("sessions lock").iter() {
            out.entry(name.clone())
                .or_insert_with(|| SessionView::Starting(r.started.clone()));
        }
        for (name, error) in self.failed.lock().expect("failed lock").iter() {
            out.insert(
                name.clone(),
                SessionView::Failed {
                    name: name.clone(),
                    error: error.clone(),
                },
            );
        }
        let mut list: Vec<(String, SessionView)> = out.into_iter().collect();
        list.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(list.into_iter().map(|(_, v)| v).collect())
    }

    pub fn observing(&self) -> usize {
        self.running.lock().expect("sessions lock").len()
    }

    pub fn selectors(&self) -> Vec<String> {
        self.selectors
            .lock()
            .expect("selectors lock")
            .iter()
            .cloned()
            .collect()
    }

    /// Observes containers created from now on whose labels match
    /// `selector` (`key=value`), from their first exec.
    pub fn add_selector(&self, selector: &str) -> Result<(), ObserveError> {
        check_selector(selector)?;
        self.selectors
            .lock()
            .expect("selectors lock")
            .insert(selector.to_owned());
        Ok(())
    }

    /// Stops every observation and waits for each session to be closed:
    /// what the daemon does on SIGTERM.
    pub async fn shutdown(&self) {
        let all: Vec<Running> = {
            let mut running = self.running.lock().expect("sessions lock");
            running.drain().map(|(_, r)| r).collect()
        };
        for mut r in all {
            if let Some(stop) = r.stop.take() {
                let _ = stop.send(());
            }
            if let Some(done) = r.done.take() {
                let _ = done.await;
            }
        }
    }

    /// After a start: sessions the store says were observing were cut off
    /// (the daemon was killed). Each gets a gap from its last checkpoint to
    /// now; those whose container still runs are resumed, the others closed.
    pub async fn recover(self: &Arc<Self>) -> Result<()> {
        let docker = crate::docker::connect()?;
        for mut record in self.store.sessions()? {
            if record.state != SessionState::Observing {
                continue;
            }
            let gap = Gap {
                from_unix_ms: record.checkpoint_unix_ms,
                to_unix_ms: now_ms(),
                reason: "the daemon stopped without closing the session (killed or crashed)".into(),
            };
            let details = docker
                .inspect_container(&record.started.container_id, None)
                .await
                .ok()
                .filter(|d| d.state.as_ref().and_then(|s| s.running) == Some(true));
            match details {
                Some(details) => {
                    tracing::warn!(
                        session = %record.name,
                        gap_ms = gap.to_unix_ms - gap.from_unix_ms,
                        "resuming an observation the daemon lost; the gap is marked"
                    );
                    record.gaps.push(gap);
                    self.store.put_session(&record)?;
                    if let Err(e) = self
                        .begin(details, Opening::Resume, None, Some(record.clone()), None)
                        .await
                    {
                        tracing::error!(session = %record.name, "could not resume: {e}");
                    }
                }
                None => {
                    tracing::warn!(session = %record.name, "closing an observation the daemon lost; its container is gone");
                    record.gaps.push(gap);
                    record.state = SessionState::Closed;
                    record.end = Some(EndReason::Interrupted);
                    self.store.put_session(&record)?;
                }
            }
        }
        Ok(())
    }

    /// Follows Docker's `create` events and observes the containers whose
    /// labels match a selector; attaches to matching containers already
    /// running without a session. Runs until the engine's event stream ends.
    pub async fn watch_labels(self: Arc<Self>) -> Result<()> {
        let docker = crate::docker::connect()?;
        // Creations from here on are heard, including during the listing.
        let since = SystemTime::now().duration_since(UNIX_EPOCH)?;
        for container::Listed { name, labels } in container::running(&docker).await? {
            if !self.wanted(&labels)
                || self
                    .running
                    .lock()
                    .expect("sessions lock")
                    .contains_key(&name)
            {
                continue;
            }
            tracing::info!(container = %name, "labelled container already running: observing it from now on");
            if let Err(e) = self.attach_labelled(&name).await {
                tracing::warn!(container = %name, "not observed: {e}");
            }
        }
        // `docker run` starts a container right after creating it, often
        // before its `create` event reaches us: Docker's parent cgroup is
        // watched, and what starts there is held until its labels are known.
        match self.hold_new_containers(&docker) {
            Ok(()) => {}
            Err(e) => tracing::warn!(
                "cannot watch Docker's parent cgroup: a labelled container started at once \
                 (`docker run`) may have its start-up missed: {e:#}"
            ),
        }
        let events = container::created_since(&docker, since);
        let mut events = std::pin::pin!(events);
        while let Some(event) = events.next().await {
            let container::Created { id, attributes } = event?;
            if !self.wanted(&attributes) {
                continue;
            }
            // Watched first, inspected after: the creator is starting it now.
            let name = attributes
                .get("name")
                .cloned()
                .unwrap_or_else(|| id.clone());
            let prepared = match self.prepare(&id, &name) {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::debug!(container = %name, "cannot watch ahead of the start: {e:#}");
                    None
                }
            };
            let Ok(details) = container::inspect(&docker, &id).await else {
                continue;
            };
            let manager = self.clone();
            tokio::spawn(async move {
                let name = container::name_of(&details);
                match manager
                    .begin(details, Opening::AwaitStart, None, None, prepared)
                    .await
                {
                    Ok(_) => {
                        tracing::info!(container = %name, "labelled container: observing from its first exec")
                    }
                    Err(e) => {
                        tracing::warn!(container = %name, "labelled container not observed: {e}")
                    }
                }
            });
        }
        Ok(())
    }

    /// Observes a labelled container found running without a session. When
    /// the store holds a session of this very container (the daemon was
    /// stopped and started again while it ran), that session goes on in a
    /// new segment after a gap: a fresh session would replace it, dropping
    /// its events and restarting its duration from zero.
    async fn attach_labelled(self: &Arc<Self>, name: &str) -> Result<Started, ObserveError> {
        let docker = crate::docker::connect()?;
        let details = container::inspect(&docker, name)
            .await
            .map_err(|_| ObserveError::NotFound(name.to_owned()))?;
        let Some(record) = self
            .store
            .session(&container::name_of(&details))?
            .filter(|r| {
                Some(&r.started.container_id) == details.id.as_ref()
                    && r.state == SessionState::Closed
            })
        else {
            let opts = ObserveOptions {
                container: name.to_owned(),
                attach: true,
                ..Default::default()
            };
            return self.observe(opts).await;
        };
        let record = continued(record, now_ms());
        self.store.put_session(&record)?;
        tracing::warn!(
            session = %record.name,
            "continuing the session of a labelled container that ran while the daemon was down; the gap is marked"
        );
        self.begin(details, Opening::Resume, None, Some(record), None)
            .await
    }

    /// Watches Docker's parent cgroup and answers, for each new cgroup
    /// below it that no session owns, whether its container is wanted.
    fn hold_new_containers(self: &Arc<Self>, docker: &Docker) -> Result<()> {
        let parent = docker_parent_cgroup(None)?;
        let (watch, mut new_cgroups) = self.observer.hold_below(&parent)?;
        let manager = self.clone();
        let docker = docker.clone();
        tokio::spawn(async move {
            // Held for the daemon's life.
            let _watch = watch;
            while let Some(cgroup) = new_cgroups.recv().await {
                let (manager, docker, parent) = (manager.clone(), docker.clone(), parent.clone());
                tokio::spawn(async move {
                    let (verdict, dir) = manager.classify(&docker, &parent, cgroup).await;
                    manager.observer.decide(cgroup, verdict, dir.as_deref());
                });
            }
        });
        Ok(())
    }

    /// Whose the new cgroup `cgroup` below `parent` is: wanted when its
    /// container matches a selector and a session for it is begun or about
    /// to be (the container was just created); else foreign, with the
    /// directory to exclude.
    async fn classify(
        &self,
        docker: &Docker,
        parent: &std::path::Path,
        cgroup: crate::trace::CgroupId,
    ) -> (observer::Verdict, Option<PathBuf>) {
        use observer::Verdict;
        let Some(dir) = child_holding(parent, cgroup) else {
            // Gone already: the container exited before it could be named.
            tracing::debug!(cgroup = cgroup.0, parent = %parent.display(), "a new cgroup was gone before its container was known");
            return (Verdict::Foreign, None);
        };
        let id = dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            // Not a container's (a builder's, say).
            return (Verdict::Foreign, Some(dir));
        }
        let mut details = container::inspect(docker, &id).await;
        if details.is_err() && dir.exists() {
            // A busy engine, not a removed container: once more.
            tokio::time::sleep(Duration::from_millis(200)).await;
            details = container::inspect(docker, &id).await;
        }
        let Ok(details) = details else {
            return (Verdict::Foreign, Some(dir));
        };
        let labels = details
            .config
            .as_ref()
            .and_then(|c| c.labels.clone())
            .unwrap_or_default();
        let name = container::name_of(&details);
        let observed = self
            .running
            .lock()
            .expect("sessions lock")
            .contains_key(&name);
        // A session begins at `create`; a labelled container restarted
        // later, or still running after its session was stopped, gets
        // none, so what it does is no one's.
        let had_session = self
            .store
            .session(&name)
            .ok()
            .flatten()
            .is_some_and(|r| r.started.container_id == id && r.state == SessionState::Closed);
        let just_created = !had_session
            && details
                .created
                .as_deref()
                .and_then(|c| humantime::parse_rfc3339_weak(c).ok())
                .and_then(|c| c.elapsed().ok())
                .is_some_and(|age| age < observer::HOLD_WAIT);
        if self.wanted(&labels) && (observed || just_created) {
            tracing::debug!(container = %name, "a labelled container started before its session began: its events are held for it");
            (Verdict::Wanted, Some(dir))
        } else {
            (Verdict::Foreign, Some(dir))
        }
    }

    /// Makes the cgroup Docker will start container `id` in (its default
    /// place) and watches it, so a session can begin there.
    fn prepare(&self, id: &str, name: &str) -> Result<Prepared> {
        let dir = docker_parent_cgroup(None)?.join(id);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).with_context(|| format!("making {}", dir.display())),
        }
        let (route, events) = self.observer.route(name);
        self.observer.claim(&route, &dir);
        let route = RouteGuard {
            observer: self.observer.clone(),
            route,
        };
        let watch = self.observer.watch(&dir)?;
        Ok(Prepared {
            route,
            events,
            watch,
            dir,
        })
    }

    /// Whether labels (or Docker event attributes, which include them)
    /// match a selector.
    fn wanted(&self, labels: &HashMap<String, String>) -> bool {
        self.selectors
            .lock()
            .expect("selectors lock")
            .iter()
            .any(|s| {
                s.split_once('=')
                    .is_some_and(|(k, v)| labels.get(k).is_some_and(|x| x == v))
            })
    }
}

/// Whether a process met running in a container's new cgroup is runc's
/// init, which joins the cgroup before it execs the entrypoint. It starts
/// as `/proc/self/exe init` (comm `exe`, its executable a memfd or runc)
/// and renames itself `runc:[0:PARENT]`, `runc:[2:INIT]`.
fn is_runc_init(comm: &str, exe: Option<&ContainerPath>) -> bool {
    comm.starts_with("runc") || (comm == "exe" && exe.is_none_or(|x| x.as_str().ends_with("/runc")))
}

/// The child of `parent` that is, or holds, the cgroup `cgroup`.
fn child_holding(parent: &std::path::Path, cgroup: crate::trace::CgroupId) -> Option<PathBuf> {
    std::fs::read_dir(parent)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .find(|child| observer::cgroup_ids_below(child).contains(&cgroup))
}

/// One session's observation.
struct SessionTask {
    manager: Arc<Manager>,
    details: container::Details,
    opening: Opening,
    duration: Option<Duration>,
    resumed: Option<SessionRecord>,
    prepared: Option<Prepared>,
}

/// A session's route and watch, set up ahead of its task.
struct Prepared {
    route: RouteGuard,
    events: mpsc::Receiver<Event>,
    watch: Watch,
    dir: PathBuf,
}

/// Who ran what, per process, for streaming by executable.
#[derive(Default)]
struct ExeTracker(HashMap<u32, ContainerPath>);

impl ExeTracker {
    fn exe_after(&mut self, e: &Event) -> Option<ContainerPath> {
        match &e.kind {
            EventKind::Fork {
                child_pid,
                thread: false,
                ..
            } => {
                if let Some(exe) = self.0.get(&e.pid).cloned() {
                    self.0.insert(*child_pid, exe);
                }
            }
            EventKind::Running { exe: Some(exe), .. } => {
                self.0.insert(e.pid, exe.clone());
            }
            EventKind::Exit {
                process_exited: true,
            } => return self.0.remove(&e.pid),
            _ => {
                if let Some(exe) = crate::model::exec_path(e) {
                    self.0.insert(e.pid, exe);
                }
            }
        }
        self.0.get(&e.pid).cloned()
    }
}

impl SessionTask {
    async fn run(
        mut self,
        stop: impl std::future::Future<Output = ()>,
        started_tx: oneshot::Sender<Started>,
    ) -> Result<SessionRecord> {
        let observer = self.manager.observer.clone();
        let store = self.manager.store.clone();
        let docker = crate::docker::connect()?;
        let details = &self.details;
        let id = details.id.clone().unwrap_or_default();
        let name = container::name_of(details);
        let from_first_exec = matches!(
            self.opening,
            Opening::Start | Opening::Restart | Opening::AwaitStart
        );
        let cgroup_parent = details
            .host_config
            .as_ref()
            .and_then(|h| h.cgroup_parent.clone());

        let (route, mut events, prepared) = match self.prepared.take() {
            Some(p) => (p.route, p.events, Some((p.watch, p.dir))),
            None => {
                let (route, events) = observer.route(&name);
                let route = RouteGuard {
                    observer: observer.clone(),
                    route,
                };
                (route, events, None)
            }
        };
        let loss_base = observer.loss();

        // The container's cgroup is made before the engine starts the
        // container (runc joins a directory that exists), so its id is known
        // from the first exec on, however short-lived the container. Should
        // that fail, Docker's parent cgroup is watched until the container's
        // own is known.
        let mut stopped = false;
        let (prepared_watch, prepared_dir) = prepared.unzip();
        let precreated = if let Some(dir) = prepared_dir {
            Some(dir)
        } else if from_first_exec {
            if self.opening == Opening::Restart {
                tracing::info!(container = %name, "stopping, to restart under observation");
                container::stop(&docker, &id, &name).await?;
                stopped = true;
            }
            let dir = docker_parent_cgroup(cgroup_parent.as_deref())?.join(&id);
            match std::fs::create_dir(&dir) {
                Ok(()) => Some(dir),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Some(dir),
                Err(e) => {
                    tracing::debug!(cgroup = %dir.display(), "cannot make the container's cgroup ahead: {e}");
                    None
                }
            }
        } else {
            None
        };
        let mut members = HashSet::new();
        let early_watch = match &precreated {
            Some(dir) if prepared_watch.is_some() => {
                members = observer::cgroup_ids_below(dir);
                prepared_watch
            }
            Some(dir) => {
                observer.claim(&route.route, dir);
                members = observer::cgroup_ids_below(dir);
                Some(observer.watch(dir)?)
            }
            None if from_first_exec => {
                Some(observer.watch(&docker_parent_cgroup(cgroup_parent.as_deref())?)?)
            }
            None => None,
        };
        // The stream connects when first polled, after the start: `since`
        // (now, after any stop of ours) keeps a container that dies at once
        // from ending unnoticed.
        let since = SystemTime::now().duration_since(UNIX_EPOCH)?;
        let mut die_events = std::pin::pin!(container::deaths_since(&docker, &id, since));
        let opened = self.open(&docker, &id, &name, stopped).await;
        let container_cgroup = match opened {
            Ok(()) => crate::docker::resolve_container(&docker, &id)
                .await
                .map(|info| info.cgroup_path)
                // Already exited: it ran in the cgroup made for it.
                .or_else(|e| precreated.clone().ok_or(e)),
            Err(e) => Err(e),
        };
        let container_cgroup = match container_cgroup {
            Ok(c) => c,
            Err(e) => {
                if let Some(w) = early_watch {
                    observer.unwatch(w);
                }
                if let Some(dir) = &precreated {
                    let _ = std::fs::remove_dir(dir);
                }
                return Err(e);
            }
        };
        let watch = match early_watch {
            Some(w) if precreated.as_ref() == Some(&container_cgroup) => w,
            early => {
                observer.claim(&route.route, &container_cgroup);
                let w = if from_first_exec {
                    observer.watch(&container_cgroup)?
                } else {
                    // Running for a while: read its processes from /proc,
                    // even below Docker's watched parent.
                    observer.watch_running(&container_cgroup)?
                };
                if let Some(early) = early {
                    observer.unwatch(early);
                }
                w
            }
        };
        members.extend(observer::cgroup_ids_below(&container_cgroup));

        let now = now_ms();
        let mut record = match self.resumed.clone() {
            Some(mut r) => {
                r.segments.push(Segment {
                    first_event: r.events,
                    started_unix_ms: now,
                    from_first_exec: false,
                    origin: "resumed after a daemon restart".into(),
                });
                r
            }
            None => SessionRecord::new(
                name.clone(),
                store.next_session_id()?,
                Started {
                    container_id: id.clone(),
                    container_name: name.clone(),
                    image_id: details.image.clone().unwrap_or_default(),
                    image_ref: details
                        .config
                        .as_ref()
                        .and_then(|c| c.image.clone())
                        .unwrap_or_default(),
                    from_first_exec,
                    started_unix_ms: now,
                },
            ),
        };
        // How the container was run, from the inspect the session began
        // with (a resumed session keeps what it recorded first).
        if record.run.is_none() {
            record.run = Some(Box::new(crate::docker::run::RunSettings::from_inspect(
                details,
            )));
        }
        record.checkpoint_unix_ms = now;
        store.put_session(&record)?;
        tracing::info!(container = %name, store = %store.path().display(), "observing");
        let _ = started_tx.send(record.started.clone());

        let prior_duration = record.duration_ms;
        let prior_loss = record.loss;
        let prior_aggregated = record.aggregated;
        let started = Instant::now();
        let deadline = async {
            match self.duration {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(stop, deadline);
        let mut checkpoint = tokio::time::interval(CHECKPOINT);
        checkpoint.tick().await;
        let mut batch: Vec<Event> = Vec::new();
        let mut exes = ExeTracker::default();
        let session_name: Arc<str> = name.as_str().into();
        let missed_start = std::sync::atomic::AtomicBool::new(false);
        // Uses already stored in this segment, by executable: what the
        // model holds, so bounded by it.
        let mut seen_uses: HashSet<u64> = HashSet::new();
        let aggregated = std::sync::atomic::AtomicU64::new(0);
        // Names of this segment's events that the tracer could not read:
        // the tracer's own counters are host-wide.
        let unreadable = std::sync::atomic::AtomicU64::new(0);
        let mut accept = |e: Event, batch: &mut Vec<Event>| {
            if !members.contains(&e.cgroup) {
                // A cgroup created below the container's since the last look,
                // or another container's event seen while waiting.
                members.extend(observer::cgroup_ids_below(&container_cgroup));
                if !members.contains(&e.cgroup) {
                    return;
                }
            }
            // A container process already past runc's exec when the watch
            // began: its start-up was missed, whatever the opening hoped.
            if let EventKind::Running { exe, .. } = &e.kind
                && !is_runc_init(&e.comm, exe.as_ref())
                && !missed_start.swap(true, std::sync::atomic::Ordering::Relaxed)
            {
                tracing::debug!(pid = e.pid, comm = %e.comm, "already running when the watch began");
            }
            unreadable.fetch_add(e.unreadable_names(), std::sync::atomic::Ordering::Relaxed);
            let exe = exes.exe_after(&e);
            let repeated = crate::model::uses_of(&e).is_some_and(|uses| {
                use std::hash::{Hash, Hasher};
                let mut h = rustc_hash::FxHasher::default();
                match &exe {
                    Some(x) => x.as_str().hash(&mut h),
                    None => e.comm.hash(&mut h),
                }
                uses.hash(&mut h);
                !seen_uses.insert(h.finish())
            });
            let event = Arc::new(e);
            observer.publish(&StreamedEvent {
                session: session_name.clone(),
                exe,
                event: event.clone(),
            });
            if repeated {
                aggregated.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            } else {
                batch.push(Arc::unwrap_or_clone(event));
            }
        };
        let commit = |record: &mut SessionRecord, batch: &mut Vec<Event>| -> Result<()> {
            let segment = record.segments.last_mut().expect("a session has a segment");
            if missed_start.load(std::sync::atomic::Ordering::Relaxed) && segment.from_first_exec {
                tracing::warn!(
                    container = %record.name,
                    "the container started before the watch took hold: its start-up was missed"
                );
                segment.from_first_exec = false;
                record.started.from_first_exec = record.segments.iter().all(|s| s.from_first_exec);
            }
            record.events += batch.len() as u64;
            record.aggregated =
                prior_aggregated + aggregated.load(std::sync::atomic::Ordering::Relaxed);
            record.checkpoint_unix_ms = now_ms();
            record.duration_ms = prior_duration + started.elapsed().as_millis() as u64;
            record.loss = prior_loss.plus(observer.loss().since(loss_base));
            record.loss.unreadable_names += unreadable.load(std::sync::atomic::Ordering::Relaxed);
            record.loss.held_overflow += route.route.held_overflow();
            store.append(record, batch)?;
            batch.clear();
            Ok(())
        };
        let end = loop {
            tokio::select! {
                biased;
                _ = &mut stop => break EndReason::Stopped,
                _ = &mut deadline => break EndReason::Duration,
                Some(_) = die_events.next() => break EndReason::ContainerDied,
                _ = checkpoint.tick() => commit(&mut record, &mut batch)?,
                event = events.recv() => match event {
                    Some(e) => accept(e, &mut batch),
                    None => break EndReason::Stopped,
                },
            }
        };
        // What the tracer still holds of the container's last moments: on a
        // busy host the dispatcher can be seconds behind the engine's `die`.
        let end_ns = crate::trace::loader::monotonic_ns();
        observer.unwatch(watch);
        // A container that goes on running after the session is stopped
        // (or one still below a watched parent) keeps sending events: those
        // after the end are not the session's, and one well after it shows
        // that the reader, which hands records over in the ring buffer's
        // order, has passed the end.
        let drain_deadline = Instant::now() + DRAIN_WAIT;
        loop {
            let left = drain_deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!(container = %name, "the tracer did not catch up with the container's end in time: its last events may be missing");
                break;
            }
            match tokio::time::timeout(left.min(Duration::from_millis(200)), events.recv()).await {
                Ok(Some(e)) if e.ts_ns <= end_ns => accept(e, &mut batch),
                Ok(Some(e)) if e.ts_ns > end_ns + PAST_THE_END.as_nanos() as u64 => break,
                Ok(Some(_)) if observer.dispatched_up_to(end_ns) => break,
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) if observer.dispatched_up_to(end_ns) => break,
                Err(_) => {}
            }
        }
        record.state = SessionState::Closed;
        record.end = Some(end);
        commit(&mut record, &mut batch)?;
        drop(route);
        Ok(record)
    }

    /// Brings the container to running as the opening asks.
    async fn open(&self, docker: &Docker, id: &str, name: &str, stopped: bool) -> Result<()> {
        match self.opening {
            Opening::Restart if !stopped => {
                tracing::info!(container = %name, "restarting under observation");
                container::restart(docker, id, name).await
            }
            Opening::Start | Opening::Restart => {
                tracing::info!(container = %name, "starting under observation");
                container::start(docker, id, name).await
            }
            Opening::AwaitStart => {
                // Whoever created it starts it; give them a minute.
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    let d = container::inspect(docker, id)
                        .await
                        .with_context(|| format!("container {name} went away before it started"))?;
                    if d.state.as_ref().and_then(|s| s.running) == Some(true) {
                        return Ok(());
                    }
                    if Instant::now() > deadline {
                        anyhow::bail!(
                            "container {name} was created but not started within a minute"
                        );
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            Opening::Attach | Opening::Resume => Ok(()),
        }
    }
}

/// Takes the session's route out of the dispatcher however the task ends.
struct RouteGuard {
    observer: Arc<Observer>,
    route: Arc<Route>,
}

impl Drop for RouteGuard {
    fn drop(&mut self) {
        self.observer.unroute(&self.route);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_must_be_key_equals_value() {
        assert!(check_selector(OBSERVE_LABEL).is_ok());
        for bad in ["", "x", "=v", "k=", &format!("k={}", "v".repeat(300))] {
            assert!(check_selector(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_continued_session_keeps_its_events_and_duration_and_marks_the_gap() {
        let started = Started {
            container_id: "c1".into(),
            container_name: "web".into(),
            image_id: "sha256:1".into(),
            image_ref: "web".into(),
            from_first_exec: true,
            started_unix_ms: 1_000,
        };
        let mut r = SessionRecord::new("web".into(), 7, started);
        r.state = SessionState::Closed;
        r.end = Some(EndReason::Stopped);
        r.events = 40;
        r.duration_ms = 65_000;
        r.checkpoint_unix_ms = 66_000;
        let c = continued(r, 90_000);
        assert_eq!((c.id, c.events, c.duration_ms), (7, 40, 65_000));
        assert_eq!(c.state, SessionState::Observing);
        assert_eq!(c.end, None);
        assert_eq!(
            (c.gaps[0].from_unix_ms, c.gaps[0].to_unix_ms),
            (66_000, 90_000)
        );
        assert!(!c.complete(), "a gap makes it incomplete");
    }

    #[test]
    fn runc_init_is_known_by_its_names() {
        let path = |p| ContainerPath::new(p);
        assert!(is_runc_init("runc:[2:INIT]", None));
        assert!(is_runc_init("exe", None));
        assert!(is_runc_init("exe", path("/usr/bin/runc").as_ref()));
        assert!(!is_runc_init("exe", path("/srv/app/exe").as_ref()));
        assert!(!is_runc_init("sh", path("/bin/sh").as_ref()));
    }
}
