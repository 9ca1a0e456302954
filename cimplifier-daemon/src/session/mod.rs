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
//!
//! Here: the manager and the types callers see. `task.rs` runs one
//! session, `labels.rs` watches for labelled containers, [`observer`] is the
//! tracer shared by all sessions.

mod containerd;
mod labels;
pub mod lifecycle;
mod loss;
pub mod observer;
mod task;

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow};
use tokio::sync::{mpsc, oneshot};

pub use crate::store::LifecycleStep;
pub use observer::{Observer, StreamFilter, StreamedEvent, Subscription};

use crate::docker::container;
use crate::engine::docker::CgroupLayout;
use crate::store::{EndReason, Gap, SessionRecord, SessionState, Started, Store};
use crate::trace::cgroup::cgroup2_mount;
use task::{Prepared, SessionTask};

/// Where sessions live unless told otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/cimplifier";

/// The label that asks for a container to be observed from its first exec.
pub const OBSERVE_LABEL: &str = "io.cimplifier.observe=true";

/// How often a session makes what it saw durable: a daemon killed outright
/// loses at most this much.
pub const CHECKPOINT: Duration = Duration::from_millis(500);

#[derive(Clone, Debug, Default)]
pub struct ObserveOptions {
    /// Docker container name or id, or `containerd://NAMESPACE/ID`.
    pub container: String,
    pub duration: Option<Duration>,
    /// Restart a running container so its start-up is observed.
    pub restart: bool,
    /// Observe a running container from now on, without its start-up.
    pub attach: bool,
    /// Delete a closed session of the container's name and begin anew,
    /// rather than continue it (or be refused for another image).
    pub replace: bool,
}

/// Why an observation could not begin, by what the caller can do about it.
#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    #[error("container {0:?} not found by the Docker engine (see `docker ps -a`)")]
    NotFound(String),
    #[error("{0} is already being observed; `cimplifierctl stop {0}` ends it")]
    AlreadyObserving(String),
    #[error("{0} is not being observed (`cimplifierctl sessions` lists the sessions)")]
    NotObserving(String),
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

/// The container a session observes, in its engine's terms.
#[derive(Clone)]
pub(super) enum Subject {
    Docker(Box<container::Details>),
    Containerd(Box<crate::engine::containerd::Container>),
}

impl Subject {
    /// The session's name.
    fn name(&self) -> String {
        match self {
            Subject::Docker(d) => container::name_of(d),
            Subject::Containerd(c) => c.session_name(),
        }
    }

    fn id(&self) -> String {
        match self {
            Subject::Docker(d) => d.id.clone().unwrap_or_default(),
            Subject::Containerd(c) => c.at.to_string(),
        }
    }

    fn image_id(&self) -> String {
        match self {
            Subject::Docker(d) => d.image.clone().unwrap_or_default(),
            Subject::Containerd(c) => c.image_digest.clone(),
        }
    }
}

/// What a session looks like from outside.
#[derive(Clone, Debug)]
pub enum SessionView {
    /// Observing, or closed: the stored record (updated at each checkpoint).
    Stored(Box<SessionRecord>),
    /// Observing, before its first checkpoint.
    Starting(Started),
    /// The observation failed after it began.
    Failed { name: String, error: String },
}

struct Running {
    stop: Option<oneshot::Sender<()>>,
    /// Lifecycle steps for the session to run (see [`lifecycle`]).
    steps: mpsc::Sender<lifecycle::StepRequest>,
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
    /// Docker's events are followed for labelled containers (started once).
    watching_labels: std::sync::atomic::AtomicBool,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The engine's parent cgroup for containers (the cgroupfs driver's).
fn docker_parent_cgroup(layout: CgroupLayout, cgroup_parent: Option<&str>) -> Result<PathBuf> {
    let parent = cgroup_parent
        .filter(|p| !p.is_empty())
        .unwrap_or(layout.default_parent());
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

impl Manager {
    /// The manager of the sessions in `store`, with the label selectors
    /// given to earlier runs of the daemon.
    pub fn new(observer: Arc<Observer>, store: Arc<Store>) -> Result<Arc<Self>> {
        let mut selectors: BTreeSet<String> = store.selectors()?.into_iter().collect();
        selectors.insert(OBSERVE_LABEL.to_owned());
        Ok(Arc::new(Self {
            observer,
            store,
            running: Mutex::default(),
            failed: Mutex::default(),
            selectors: Mutex::new(selectors),
            watching_labels: Default::default(),
        }))
    }

    /// Starts following Docker's events for labelled containers, unless
    /// already following them. Until then nothing is watched for labels,
    /// so an idle daemon leaves the syscall hooks detached.
    pub fn start_watching_labels(self: &Arc<Self>) {
        if self
            .watching_labels
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            return;
        }
        let manager = self.clone();
        tokio::spawn(async move {
            if let Err(e) = manager.watch_labels().await {
                tracing::error!("following Docker's events for labelled containers stopped: {e:#}");
            }
        });
        // containerd's too, where the daemon is told where it is.
        if std::env::var_os(crate::engine::containerd::ADDRESS_ENV).is_some() {
            tokio::spawn(self.clone().watch_containerd_labels());
        }
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
        if crate::engine::containerd::ContainerRef::is_one(&opts.container) {
            return containerd::observe(self, opts).await;
        }
        let docker = crate::docker::connect()?;
        let details = match container::look_up(&docker, &opts.container).await {
            container::Lookup::Found(details) => *details,
            container::Lookup::Gone => return Err(ObserveError::NotFound(opts.container)),
            // Not "not found": the engine could not say.
            container::Lookup::Unreachable(e) => return Err(ObserveError::Failed(e)),
        };
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
        let earlier = self.earlier_session(&name, &details, opts.replace)?;
        self.begin(
            Subject::Docker(Box::new(details)),
            opening,
            opts.duration,
            earlier,
            None,
        )
        .await
    }

    /// The closed session a new observation of `name` continues: one of
    /// the same image goes on with a new segment; one of another image is
    /// refused unless `replace`, which deletes it.
    fn earlier_session(
        &self,
        name: &str,
        details: &container::Details,
        replace: bool,
    ) -> Result<Option<SessionRecord>, ObserveError> {
        let Some(earlier) = self.store.session(name)? else {
            return Ok(None);
        };
        if replace {
            self.store.delete_session(name)?;
            tracing::info!(session = %name, events = earlier.events, "replaced: the earlier session is deleted");
            return Ok(None);
        }
        let image = details.image.as_deref().unwrap_or_default();
        if earlier.started.image_id != image {
            return Err(ObserveError::Refused(format!(
                "session {name} holds what image {} ({}) used, and container {name} now runs {}: \
                 observing it would mix two images in one session; pass --replace to delete \
                 the earlier session, or `cimplifierctl export {name}` it first",
                earlier.started.image_ref, earlier.started.image_id, image
            )));
        }
        Ok(Some(earlier))
    }

    /// Spawns the session task and waits until it has begun.
    async fn begin(
        self: &Arc<Self>,
        subject: Subject,
        opening: Opening,
        duration: Option<Duration>,
        resumed: Option<SessionRecord>,
        prepared: Option<Prepared>,
    ) -> Result<Started, ObserveError> {
        let name = subject.name();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (started_tx, started_rx) = oneshot::channel::<Started>();
        let (steps_tx, steps_rx) = mpsc::channel(1);
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
                    steps: steps_tx,
                    done: None,
                    started: Started {
                        container_id: subject.id(),
                        container_name: name.clone(),
                        image_id: subject.image_id(),
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
                subject,
                opening,
                duration,
                resumed,
                prepared,
                steps: steps_rx,
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
            // Still opening (listed, but its task not handed over yet): it
            // stops as soon as it has begun; wait for the record it writes.
            None => self.closed_after(name, r.started.started_unix_ms).await,
        }
    }

    /// The record of session `name` once a run begun at `since` or later
    /// has closed it; an error if that run failed or takes over 30 s.
    async fn closed_after(&self, name: &str, since: u64) -> Result<Option<SessionRecord>> {
        for _ in 0..300 {
            if let Some(r) = self.store.session(name)?
                && r.state == SessionState::Closed
                && r.started.started_unix_ms >= since
            {
                return Ok(Some(r));
            }
            if let Some(e) = self.failed.lock().expect("failed lock").get(name) {
                anyhow::bail!("observing {name} failed as it began: {e}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::bail!(
            "session {name} was still starting 30 s after it was told to stop; it stops once it \
             has begun (`cimplifierctl sessions` shows it)"
        )
    }

    /// Whether a session of that name is observing (or starting).
    pub fn is_running(&self, name: &str) -> bool {
        self.running
            .lock()
            .expect("sessions lock")
            .contains_key(name)
    }

    /// Runs one lifecycle step on an observed container, inside its session;
    /// returns once the step is done (a start has been asked of the engine).
    pub async fn lifecycle(&self, name: &str, step: LifecycleStep) -> Result<(), ObserveError> {
        let steps = self
            .running
            .lock()
            .expect("sessions lock")
            .get(name)
            .map(|r| r.steps.clone());
        let Some(steps) = steps else {
            return Err(ObserveError::NotObserving(name.to_owned()));
        };
        let (reply, done) = oneshot::channel();
        let ended =
            || ObserveError::Refused(format!("the session of {name} ended during the {step}"));
        steps
            .send(lifecycle::StepRequest { step, reply })
            .await
            .map_err(|_| ended())?;
        done.await
            .map_err(|_| ended())?
            .map_err(ObserveError::Failed)
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
                Some(SessionView::Stored(Box::new(r)))
            }
            None if starting.is_none() => self
                .quarantined()?
                .into_iter()
                .find(|v| matches!(v, SessionView::Failed { name: n, .. } if n == name)),
            _ => starting.map(SessionView::Starting),
        })
    }

    /// The records quarantined at start-up (unreadable), as failed sessions
    /// saying so.
    fn quarantined(&self) -> Result<Vec<SessionView>> {
        let store = self.store.path().display();
        Ok(self
            .store
            .quarantined()?
            .into_iter()
            .map(|(name, why)| SessionView::Failed {
                error: format!(
                    "quarantined: its record in the store {store} could not be read ({why}); \
                     it is kept as it was in the store's `quarantine` table, and the daemon \
                     ignores it"
                ),
                name,
            })
            .collect())
    }

    pub fn list(&self) -> Result<Vec<SessionView>> {
        let mut out: HashMap<String, SessionView> = self
            .store
            .sessions()?
            .into_iter()
            .map(|r| (r.name.clone(), SessionView::Stored(Box::new(r))))
            .collect();
        for (name, r) in self.running.lock().expect("sessions lock").iter() {
            out.entry(name.clone())
                .or_insert_with(|| SessionView::Starting(r.started.clone()));
        }
        for view in self.quarantined()? {
            if let SessionView::Failed { name, .. } = &view {
                out.entry(name.clone()).or_insert(view);
            }
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
    /// when it is resumed; those whose container still runs are resumed,
    /// those whose container is gone or stopped are closed. When the engine
    /// does not answer, nothing is known of the container: the session is
    /// kept, and resumed or closed once the engine answers.
    pub async fn recover(self: &Arc<Self>) -> Result<()> {
        // No socket yet is an engine that does not answer, too.
        let docker = crate::docker::connect();
        for record in self.store.sessions()? {
            if record.state != SessionState::Observing {
                continue;
            }
            if let Some(at) = record.containerd.clone() {
                self.recover_containerd(record, &at).await?;
                continue;
            }
            let lookup = match &docker {
                Ok(docker) => container::look_up(docker, &record.started.container_id).await,
                Err(e) => container::Lookup::Unreachable(anyhow!("{e:#}")),
            };
            match lookup {
                container::Lookup::Unreachable(e) => {
                    tracing::warn!(
                        session = %record.name,
                        "the Docker engine does not answer ({e:#}): the session is kept, and \
                         resumed or closed once the engine answers"
                    );
                    let manager = self.clone();
                    tokio::spawn(async move { manager.recover_later(record).await });
                }
                lookup => self.recover_one(record, lookup).await?,
            }
        }
        Ok(())
    }

    /// [`Manager::recover`] of one session, once the engine has answered.
    async fn recover_one(
        self: &Arc<Self>,
        mut record: SessionRecord,
        lookup: container::Lookup,
    ) -> Result<()> {
        let gap = Gap {
            from_unix_ms: record.checkpoint_unix_ms,
            to_unix_ms: now_ms(),
            reason: "the daemon stopped without closing the session (killed or crashed)".into(),
        };
        let running = lookup.running();
        match lookup {
            container::Lookup::Found(details) if running => {
                tracing::warn!(
                    session = %record.name,
                    gap_ms = gap.to_unix_ms - gap.from_unix_ms,
                    "resuming an observation the daemon lost; the gap is marked"
                );
                record.gaps.push(gap);
                self.store.put_session(&record)?;
                if let Err(e) = self
                    .begin(
                        Subject::Docker(details),
                        Opening::Resume,
                        None,
                        Some(record.clone()),
                        None,
                    )
                    .await
                {
                    tracing::error!(session = %record.name, "could not resume: {e}");
                }
            }
            _ => {
                tracing::warn!(session = %record.name, "closing an observation the daemon lost; its container is gone");
                record.gaps.push(gap);
                record.state = SessionState::Closed;
                record.end = Some(EndReason::Interrupted);
                self.store.put_session(&record)?;
            }
        }
        Ok(())
    }

    /// Asks the engine again, with backoff, until it answers; then resumes
    /// or closes the session.
    async fn recover_later(self: Arc<Self>, record: SessionRecord) {
        let mut backoff = Duration::from_millis(500);
        loop {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(30));
            let Ok(docker) = crate::docker::connect() else {
                continue;
            };
            match container::look_up(&docker, &record.started.container_id).await {
                container::Lookup::Unreachable(_) => continue,
                lookup => {
                    let name = record.name.clone();
                    if let Err(e) = self.recover_one(record, lookup).await {
                        tracing::error!(session = %name, "recovering the session: {e:#}");
                    }
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
