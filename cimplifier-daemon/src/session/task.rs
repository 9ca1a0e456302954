//! One session's observation: the container brought to running as asked,
//! its cgroup made ahead and watched, its events checkpointed until it
//! ends, and what the tracer still held drained.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};

use super::loss::LossBase;
use super::observer::{self, Observer, Route, StreamedEvent, Watch};
use super::{
    CHECKPOINT, LIVENESS_CHECK, Manager, Opening, Subject, docker_parent_cgroup, lifecycle, now_ms,
};
use crate::docker::{Docker, container};
use crate::store::{EndReason, Segment, SessionRecord, SessionState, Started, Store};
use crate::trace::{CgroupId, ContainerPath, Event, EventKind, LossCounters};

/// How long a closing session waits at most for the dispatcher to hand it
/// what was recorded before the end.
const DRAIN_WAIT: Duration = Duration::from_secs(30);
/// How far past a session's end an event must be to show that the reader
/// has handed over everything up to the end.
const PAST_THE_END: Duration = Duration::from_millis(20);

/// Whether a process met running in a container's new cgroup is runc's
/// init, which joins the cgroup before it execs the entrypoint. It starts
/// as `/proc/self/exe init` (comm `exe`, its executable a memfd or runc)
/// and renames itself `runc:[0:PARENT]`, `runc:[2:INIT]`.
fn is_runc_init(comm: &str, exe: Option<&ContainerPath>) -> bool {
    comm.starts_with("runc") || (comm == "exe" && exe.is_none_or(|x| x.as_str().ends_with("/runc")))
}

/// When a session with `--duration` ends; never without one.
pub(super) async fn session_deadline(duration: Option<Duration>) {
    match duration {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// The first 12 characters of a container id, as `docker ps` shows it.
fn short_id(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// One session's observation.
pub(super) struct SessionTask {
    pub(super) manager: Arc<Manager>,
    pub(super) subject: Subject,
    pub(super) opening: Opening,
    pub(super) duration: Option<Duration>,
    pub(super) resumed: Option<SessionRecord>,
    pub(super) prepared: Option<Prepared>,
    /// Lifecycle steps asked of the session ([`super::lifecycle`]).
    pub(super) steps: mpsc::Receiver<lifecycle::StepRequest>,
}

/// A session's route and watch, set up ahead of its task.
pub(super) struct Prepared {
    pub(super) route: RouteGuard,
    pub(super) events: mpsc::Receiver<Event>,
    pub(super) watch: Watch,
    pub(super) dir: PathBuf,
}

impl SessionTask {
    /// The session, from bringing its container to running to its end:
    /// `stop` resolving, its duration passing, or the container dying.
    /// `started_tx` hears once the first record is stored.
    pub(super) async fn run(
        mut self,
        stop: impl std::future::Future<Output = ()>,
        started_tx: oneshot::Sender<Started>,
    ) -> Result<SessionRecord> {
        let details = match &self.subject {
            Subject::Docker(d) => (**d).clone(),
            Subject::Containerd(c) => {
                let c = (**c).clone();
                return self.run_containerd(c, stop, started_tx).await;
            }
        };
        let observer = self.manager.observer.clone();
        let store = self.manager.store.clone();
        let docker = crate::docker::connect()?;
        let id = details.id.clone().unwrap_or_default();
        let name = container::name_of(&details);
        let from_first_exec = matches!(
            self.opening,
            Opening::Start | Opening::Restart | Opening::AwaitStart
        );
        let cgroup_parent = details
            .host_config
            .as_ref()
            .and_then(|h| h.cgroup_parent.clone());
        let layout = crate::engine::docker::CgroupLayout::of(&docker).await;

        let (route, mut events, prepared) = self.take_route(&observer, &name);
        let mut loss_base = LossBase::new(&observer);
        let (prepared_watch, prepared_dir) = prepared.unzip();
        let (precreated, stopped) = match prepared_dir {
            Some(dir) => (Some(dir), false),
            None if from_first_exec => {
                self.precreate_cgroup(&docker, &id, &name, layout, cgroup_parent.as_deref())
                    .await?
            }
            None => (None, false),
        };
        let (early_watch, mut members) = watch_early(
            &observer,
            &route,
            precreated.as_ref(),
            prepared_watch,
            from_first_exec,
            layout,
            cgroup_parent.as_deref(),
        )?;
        // The stream connects when first polled, after the start: `since`
        // (now, after any stop of ours) keeps a container that dies at once
        // from ending unnoticed.
        let since = SystemTime::now().duration_since(UNIX_EPOCH)?;
        // Followed across the engine's restarts (with `--live-restore`
        // containers outlive them): a broken stream is no death.
        let mut die_events = std::pin::pin!(container::follow(
            &docker,
            since,
            &[("container", &id), ("event", "die")]
        ));
        let container_cgroup = match self
            .open_and_find_cgroup(&docker, &id, &name, stopped, precreated.as_ref())
            .await
        {
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
        if !from_first_exec {
            // Attaching: the container's cgroups may have lost records of
            // an earlier session's; those are not this one's.
            loss_base.existing(&observer, &observer::cgroup_ids_below(&container_cgroup));
        }
        let watch = watch_container(
            &observer,
            &route,
            early_watch,
            precreated.as_ref(),
            &container_cgroup,
            from_first_exec,
        )?;
        members.extend(observer::cgroup_ids_below(&container_cgroup));

        let mut record = match self.first_record(&store, &details, &id, &name, from_first_exec) {
            Ok(r) => r,
            Err(e) => {
                observer.unwatch(watch);
                return Err(e);
            }
        };
        let _ = started_tx.send(record.started.clone());

        let step_context = Arc::new(lifecycle::StepContext {
            observer: observer.clone(),
            route: route.route.clone(),
            docker: docker.clone(),
            id: id.clone(),
            name: name.clone(),
            cgroup: container_cgroup.clone(),
        });
        let mut recorder = Recorder::new(
            (&observer, &store, &route),
            container_cgroup,
            members,
            &name,
            &record,
            loss_base,
        );
        let deadline = session_deadline(self.duration);
        tokio::pin!(stop, deadline);
        let mut checkpoint = tokio::time::interval(CHECKPOINT);
        checkpoint.tick().await;
        let mut step: Option<
            std::pin::Pin<Box<dyn Future<Output = lifecycle::StepOutcome> + Send>>,
        > = None;
        // `die`s of the container that a lifecycle step caused.
        let mut expected_dies = 0u32;
        // Podman's API streams no `die` of a container that ended by
        // itself (its file event log is not followed): the engine is asked
        // now and then too, between lifecycle steps.
        let mut liveness = tokio::time::interval(LIVENESS_CHECK);
        liveness.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        liveness.tick().await;
        // A checkpoint that failed (a full disk): the session ends with it.
        let mut failure = None;
        let end = loop {
            tokio::select! {
                biased;
                _ = &mut stop => break EndReason::Stopped,
                _ = &mut deadline => break EndReason::Duration,
                Some(followed) = die_events.next() => match followed {
                    container::Followed::Event(_) => {
                        if expected_dies == 0 {
                            break EndReason::ContainerDied;
                        }
                        expected_dies -= 1;
                    }
                    // A death while the engine was away is not replayed:
                    // ask. (A lifecycle step in flight stops it itself.)
                    container::Followed::Reconnected if step.is_none() => {
                        match container::look_up(&docker, &id).await {
                            container::Lookup::Unreachable(e) => {
                                tracing::warn!(container = %name, "the engine is back but does not answer for the container: {e:#}");
                            }
                            l if l.running() => {
                                tracing::info!(container = %name, "the Docker engine came back; the container runs on and the session goes on");
                            }
                            _ => break EndReason::ContainerDied,
                        }
                    }
                    container::Followed::Reconnected => {}
                },
                _ = liveness.tick(), if step.is_none() => match container::look_up(&docker, &id).await {
                    container::Lookup::Gone => break EndReason::ContainerDied,
                    container::Lookup::Found(d)
                        if !d.state.as_ref().is_some_and(|s| {
                            s.running == Some(true) || s.restarting == Some(true)
                        }) =>
                    {
                        break EndReason::ContainerDied;
                    }
                    _ => {}
                },
                Some(request) = self.steps.recv(), if step.is_none() => {
                    if request.step.stops() {
                        expected_dies += 1;
                    }
                    step = Some(Box::pin(lifecycle::perform(step_context.clone(), request)));
                }
                outcome = async { step.as_mut().expect("a step in flight").await }, if step.is_some() => {
                    step = None;
                    if outcome.result.is_err() && !outcome.stopped {
                        expected_dies = expected_dies.saturating_sub(1);
                    }
                    if outcome.result.is_ok() {
                        record.lifecycle.push(outcome.step);
                    }
                    let _ = outcome.reply.send(outcome.result);
                }
                _ = checkpoint.tick() => if let Err(e) = recorder.commit(&mut record) {
                    failure = Some(e);
                    break EndReason::Failed;
                },
                event = events.recv() => match event {
                    Some(e) => recorder.accept(e),
                    None => break EndReason::Stopped,
                },
            }
        };
        recorder
            .close(&mut record, end, failure, watch, &mut events, &name)
            .await?;
        drop(route);
        Ok(record)
    }

    /// The session's route in the dispatcher, and the watch and directory
    /// when they were set up ahead of the task.
    fn take_route(
        &mut self,
        observer: &Arc<Observer>,
        name: &str,
    ) -> (RouteGuard, mpsc::Receiver<Event>, Option<(Watch, PathBuf)>) {
        match self.prepared.take() {
            Some(p) => (p.route, p.events, Some((p.watch, p.dir))),
            None => {
                let (route, events) = observer.route(name);
                let route = RouteGuard {
                    observer: observer.clone(),
                    route,
                };
                (route, events, None)
            }
        }
    }

    /// Makes the container's cgroup before the engine starts the container
    /// (runc joins a directory that exists), so its id is known from the
    /// first exec on, however short-lived the container; a running
    /// container to restart is stopped first (true). None when the
    /// directory cannot be made: Docker's parent cgroup is then watched
    /// until the container's own is known.
    async fn precreate_cgroup(
        &self,
        docker: &Docker,
        id: &str,
        name: &str,
        layout: crate::engine::docker::CgroupLayout,
        cgroup_parent: Option<&str>,
    ) -> Result<(Option<PathBuf>, bool)> {
        let mut stopped = false;
        if self.opening == Opening::Restart {
            tracing::info!(container = %name, "stopping, to restart under observation");
            container::stop(docker, id, name).await?;
            stopped = true;
        }
        let dir = docker_parent_cgroup(layout, cgroup_parent)?.join(layout.dir_name(id));
        let made = match std::fs::create_dir(&dir) {
            Ok(()) => Some(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Some(dir),
            Err(e) => {
                // Not fatal (Docker's parent is watched instead), but a
                // container that exits at once may then go unseen.
                tracing::warn!(
                    cgroup = %dir.display(),
                    "cannot make the container's cgroup ahead ({e}): watching Docker's parent \
                     cgroup until it is known; is the cgroup tree writable for the daemon?"
                );
                None
            }
        };
        Ok((made, stopped))
    }

    /// Brings the container to running and finds its cgroup; one that
    /// exited already ran in the cgroup made for it (`precreated`).
    async fn open_and_find_cgroup(
        &self,
        docker: &Docker,
        id: &str,
        name: &str,
        stopped: bool,
        precreated: Option<&PathBuf>,
    ) -> Result<PathBuf> {
        self.open(docker, id, name, stopped).await?;
        crate::docker::resolve_container(docker, id)
            .await
            .map(|info| info.cgroup_path)
            .or_else(|e| precreated.cloned().ok_or(e))
    }

    /// The session's record as it begins (a resumed one gets a new
    /// segment), with how the container was run, stored.
    fn first_record(
        &self,
        store: &Store,
        details: &container::Details,
        id: &str,
        name: &str,
        from_first_exec: bool,
    ) -> Result<SessionRecord> {
        let now = now_ms();
        let mut record = match self.resumed.clone() {
            Some(mut r) if self.opening == Opening::Resume => {
                r.segments.push(Segment {
                    first_event: r.events,
                    started_unix_ms: now,
                    from_first_exec: false,
                    origin: "resumed after a daemon restart".into(),
                });
                r
            }
            // Observed again: what this run uses adds to what the earlier
            // runs used.
            Some(mut r) => {
                r.segments.push(Segment {
                    first_event: r.events,
                    started_unix_ms: now,
                    from_first_exec,
                    origin: format!("observed again (container {})", short_id(id)),
                });
                r.state = SessionState::Observing;
                r.end = None;
                r.started.container_id = id.to_owned();
                r.started.from_first_exec = r.segments.iter().all(|s| s.from_first_exec);
                r
            }
            None => SessionRecord::new(
                name.to_owned(),
                store.next_session_id()?,
                Started {
                    container_id: id.to_owned(),
                    container_name: name.to_owned(),
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

/// The watch before the container runs: on its cgroup made ahead (claimed
/// for the session, or already by `prepared`), or on Docker's parent
/// cgroup until the container's own is known; and the cgroups below it.
fn watch_early(
    observer: &Observer,
    route: &RouteGuard,
    precreated: Option<&PathBuf>,
    prepared: Option<Watch>,
    from_first_exec: bool,
    layout: crate::engine::docker::CgroupLayout,
    cgroup_parent: Option<&str>,
) -> Result<(Option<Watch>, HashSet<CgroupId>)> {
    Ok(match precreated {
        Some(dir) if prepared.is_some() => (prepared, observer::cgroup_ids_below(dir)),
        Some(dir) => {
            observer.claim(&route.route, dir);
            let members = observer::cgroup_ids_below(dir);
            (Some(observer.watch(dir)?), members)
        }
        None if from_first_exec => (
            Some(observer.watch(&docker_parent_cgroup(layout, cgroup_parent)?)?),
            HashSet::new(),
        ),
        None => (None, HashSet::new()),
    })
}

/// The watch for the session's life: the early one when it is on the
/// container's own cgroup; else one on that cgroup, claimed, and the early
/// one dropped.
fn watch_container(
    observer: &Observer,
    route: &RouteGuard,
    early: Option<Watch>,
    precreated: Option<&PathBuf>,
    container_cgroup: &PathBuf,
    from_first_exec: bool,
) -> Result<Watch> {
    match early {
        Some(w) if precreated == Some(container_cgroup) => Ok(w),
        early => {
            observer.claim(&route.route, container_cgroup);
            let w = if from_first_exec {
                observer.watch(container_cgroup)?
            } else {
                // Running for a while: read its processes from /proc, even
                // below Docker's watched parent.
                observer.watch_running(container_cgroup)?
            };
            if let Some(early) = early {
                observer.unwatch(early);
            }
            Ok(w)
        }
    }
}

/// What a session does with each event it is handed, and how it makes
/// them durable: which cgroups are the container's, who ran what, the uses
/// already stored in this segment (what the model holds, so bounded by
/// it), and the session's share of the tracer's counters.
pub(super) struct Recorder<'a> {
    observer: &'a Arc<Observer>,
    store: &'a Store,
    route: &'a RouteGuard,
    container_cgroup: PathBuf,
    members: HashSet<CgroupId>,
    session_name: Arc<str>,
    exes: crate::model::ExeTracker,
    /// A container process was met already past runc's exec.
    missed_start: bool,
    seen_uses: HashSet<u64>,
    /// Events of this segment not stored: an identical one was.
    aggregated: u64,
    /// Names of this segment's events that the tracer could not read: the
    /// tracer's own counters are host-wide.
    unreadable: u64,
    foreign: u64,
    /// The programs of another ABI this segment saw run (`PATH: ABI`).
    foreign_named: std::collections::BTreeSet<String>,
    batch: Vec<Event>,
    prior_duration: u64,
    prior_loss: LossCounters,
    prior_aggregated: u64,
    /// Repeats the kernel folded in earlier segments.
    prior_kernel_folded: u64,
    loss_base: LossBase,
    started: Instant,
}

impl<'a> Recorder<'a> {
    /// The recorder of a session whose record begins as `record`, watching
    /// `container_cgroup` (whose cgroups known so far are `members`).
    pub(super) fn new(
        (observer, store, route): (&'a Arc<Observer>, &'a Store, &'a RouteGuard),
        container_cgroup: PathBuf,
        members: HashSet<CgroupId>,
        name: &str,
        record: &SessionRecord,
        loss_base: LossBase,
    ) -> Self {
        Self {
            observer,
            store,
            route,
            container_cgroup,
            members,
            session_name: name.into(),
            exes: crate::model::ExeTracker::default(),
            missed_start: false,
            seen_uses: HashSet::new(),
            aggregated: 0,
            unreadable: 0,
            foreign: 0,
            foreign_named: Default::default(),
            batch: Vec::new(),
            prior_duration: record.duration_ms,
            prior_loss: record.loss,
            prior_aggregated: record.aggregated,
            prior_kernel_folded: record.kernel_folded,
            loss_base,
            started: Instant::now(),
        }
    }

    /// Streams the event and keeps it for the next commit, unless it is
    /// another container's or repeats a use already stored.
    pub(super) fn accept(&mut self, e: Event) {
        // How the tracer hooks syscalls: the observer's, sent to every
        // session as its route opens, of no cgroup.
        let about_the_tracer = matches!(e.kind, EventKind::Unhooked { .. });
        if !about_the_tracer && !self.members.contains(&e.cgroup) {
            // A cgroup created below the container's since the last look,
            // or another container's event seen while waiting.
            self.members
                .extend(observer::cgroup_ids_below(&self.container_cgroup));
            if !self.members.contains(&e.cgroup) {
                return;
            }
        }
        // A container process already past runc's exec when the watch
        // began: its start-up was missed, whatever the opening hoped.
        if let EventKind::Running { exe, .. } = &e.kind
            && !is_runc_init(&e.comm, exe.as_ref())
        {
            if !self.missed_start {
                tracing::debug!(pid = e.pid, comm = %e.comm, "already running when the watch began");
            }
            self.missed_start = true;
        }
        self.unreadable += e.unreadable_names();
        let exe = self.exes.exe_after(&e);
        if let EventKind::ForeignAbi { elf_class, machine } = e.kind {
            // The resolver finished the exec just before: `exe` is the program.
            let abi = crate::trace::event::abi_name(elf_class, machine);
            let program = exe.as_ref().map_or_else(
                || format!("a program of comm {:?}", e.comm),
                crate::trace::ContainerPath::to_string,
            );
            self.foreign += 1;
            tracing::warn!(
                session = %self.session_name,
                pid = e.pid,
                "process {} exec'd {program}, a {abi} program: its system calls are not \
                 traced, so the session is incomplete",
                e.pid,
            );
            if self.foreign_named.len() < crate::store::FOREIGN_NAMED {
                self.foreign_named.insert(format!("{program}: {abi}"));
            }
        }
        let repeated = crate::model::uses_of(&e).is_some_and(|uses| {
            use std::hash::{Hash, Hasher};
            let mut h = rustc_hash::FxHasher::default();
            match &exe {
                Some(x) => x.as_str().hash(&mut h),
                None => e.comm.hash(&mut h),
            }
            uses.hash(&mut h);
            // The same use as another uid is other evidence of privilege.
            self.exes.uid(e.pid).hash(&mut h);
            !self.seen_uses.insert(h.finish())
        });
        let event = Arc::new(e);
        self.observer.publish(&StreamedEvent {
            session: self.session_name.clone(),
            exe,
            event: event.clone(),
        });
        if repeated {
            self.aggregated += 1;
        } else {
            self.batch.push(Arc::unwrap_or_clone(event));
        }
    }

    /// Makes what was accepted durable, with the record's counters. On
    /// failure `record` and the batch are as they were.
    pub(super) fn commit(&mut self, record: &mut SessionRecord) -> Result<()> {
        let mut next = record.clone();
        let segment = next.segments.last_mut().expect("a session has a segment");
        let missed = self.missed_start && segment.from_first_exec;
        if missed {
            segment.from_first_exec = false;
            next.started.from_first_exec = next.segments.iter().all(|s| s.from_first_exec);
        }
        next.events += self.batch.len() as u64;
        next.aggregated = self.prior_aggregated + self.aggregated;
        next.kernel_folded =
            self.prior_kernel_folded + self.loss_base.folded_since(self.observer, &self.members);
        next.checkpoint_unix_ms = now_ms();
        next.duration_ms = self.prior_duration + self.started.elapsed().as_millis() as u64;
        // A cgroup below the container whose every record was lost never
        // showed up in an event: look again.
        self.members
            .extend(observer::cgroup_ids_below(&self.container_cgroup));
        next.loss = self
            .prior_loss
            .plus(self.loss_base.since(self.observer, &self.members));
        next.loss.unreadable_names += self.unreadable;
        next.loss.foreign_programs += self.foreign;
        next.name_foreign_programs(&self.foreign_named);
        next.loss.held_overflow += self.route.route.held_overflow();
        next.loss.interrupted += self.route.route.interrupted();
        off_the_workers(|| self.store.append(&next, &self.batch))?;
        if missed {
            tracing::warn!(
                container = %next.name,
                "the container started before the watch took hold: its start-up was missed"
            );
        }
        *record = next;
        self.batch.clear();
        Ok(())
    }

    /// The session's end when a checkpoint failed (a full or read-only
    /// state directory): the error to report, naming the store and what
    /// was lost. The record is marked failed in the store if it still
    /// takes a write; the watch is already released.
    pub(super) fn failed(&mut self, record: &mut SessionRecord, e: anyhow::Error) -> anyhow::Error {
        let unsaved = self.batch.len();
        let store = self.store.path();
        let dir = store.parent().unwrap_or(store);
        tracing::error!(
            session = %record.name,
            store = %store.display(),
            "a checkpoint failed: the session is closed as failed and its container no longer watched: {e:#}"
        );
        let mut last = record.clone();
        last.state = SessionState::Closed;
        last.end = Some(EndReason::Failed);
        if self.store.put_session(&last).is_ok() {
            *record = last;
        }
        e.context(format!(
            "session {}: a checkpoint to the store {} failed, so the session is closed as \
             failed and its container is no longer watched ({unsaved} events seen since the \
             last checkpoint were not stored); free space in the state directory {} (or make \
             it writable), then observe the container again",
            record.name,
            store.display(),
            dir.display()
        ))
    }

    /// Closes the session that ended by `end` (or by a failed checkpoint):
    /// the watch released, what the tracer still holds of the container's
    /// last moments accepted (on a busy host the dispatcher can be seconds
    /// behind the engine's end), the record written closed.
    pub(super) async fn close(
        mut self,
        record: &mut SessionRecord,
        end: EndReason,
        failure: Option<anyhow::Error>,
        watch: Watch,
        events: &mut mpsc::Receiver<Event>,
        name: &str,
    ) -> Result<()> {
        let end_ns = crate::trace::loader::monotonic_ns();
        self.observer.unwatch(watch);
        if let Some(e) = failure {
            return Err(self.failed(record, e));
        }
        self.drain(events, end_ns, name).await;
        record.state = SessionState::Closed;
        record.end = Some(end);
        if let Err(e) = self.commit(record) {
            return Err(self.failed(record, e));
        }
        Ok(())
    }

    /// Accepts what the tracer still held from before `end_ns`. A
    /// container that goes on running after the session is stopped (or
    /// one still below a watched parent) keeps sending events: those after
    /// the end are not the session's, and one well after it shows that the
    /// reader, which hands records over in the ring buffer's order, has
    /// passed the end.
    pub(super) async fn drain(
        &mut self,
        events: &mut mpsc::Receiver<Event>,
        end_ns: u64,
        name: &str,
    ) {
        let drain_deadline = Instant::now() + DRAIN_WAIT;
        loop {
            let left = drain_deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!(container = %name, "the tracer did not catch up with the container's end in time: its last events may be missing");
                break;
            }
            match tokio::time::timeout(left.min(Duration::from_millis(200)), events.recv()).await {
                Ok(Some(e)) if e.ts_ns <= end_ns => self.accept(e),
                Ok(Some(e)) if e.ts_ns > end_ns + PAST_THE_END.as_nanos() as u64 => break,
                Ok(Some(_)) if self.observer.dispatched_up_to(end_ns) => break,
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) if self.observer.dispatched_up_to(end_ns) => break,
                Err(_) => {}
            }
        }
    }
}

/// Takes the session's route out of the dispatcher however the task ends.
pub(super) struct RouteGuard {
    pub(super) observer: Arc<Observer>,
    pub(super) route: Arc<Route>,
}

impl Drop for RouteGuard {
    fn drop(&mut self) {
        self.observer.unroute(&self.route);
    }
}

/// Runs a blocking store write so that the runtime moves its other tasks
/// (the ring reader, the dispatcher) to other workers meanwhile; called
/// from a session's task on the daemon's multi-threaded runtime.
fn off_the_workers<T>(write: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(write)
        }
        _ => write(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
