//! Sessions of containerd containers (`containerd://NS/ID`). The daemon
//! creates the container's task itself: at TaskCreate runc's init waits in
//! the task's cgroup and nothing of the image has run, so the cgroup is
//! read from the init's `/proc/PID/cgroup` (whatever cgroup driver or
//! layout the node has) and watched before the task is started. A running
//! task is attached to (its cgroup watched from now on) or restarted. The
//! session ends with containerd's `/tasks/exit` of the init process.

use std::sync::Arc;

use anyhow::{Context, Result};
use futures::StreamExt;
use tokio::sync::oneshot;

use super::lifecycle::{StepOutcome, StepRequest};
use super::loss::LossBase;
use super::observer::{self, Observer, Route};
use super::task::{Recorder, RouteGuard, SessionTask};
use super::{CHECKPOINT, Manager, ObserveError, ObserveOptions, Opening, Subject, now_ms};
use crate::engine::containerd::{Container, ContainerRef, Containerd, cgroupfs_dir};
use crate::store::{EndReason, Gap, Segment, SessionRecord, SessionState, Started};
use crate::trace::cgroup::{cgroup_of_pid, cgroup2_mount};

/// Begins observing the containerd container `opts.container`: from its
/// first exec when it has no running task (or with `restart`), from now on
/// with `attach`.
pub(super) async fn observe(
    manager: &Arc<Manager>,
    opts: ObserveOptions,
) -> Result<Started, ObserveError> {
    let at: ContainerRef = opts
        .container
        .parse()
        .map_err(|e: crate::engine::containerd::BadRef| ObserveError::Refused(e.to_string()))?;
    if opts.restart && opts.attach {
        return Err(ObserveError::Refused(
            "restart and attach exclude each other".into(),
        ));
    }
    let containerd = Containerd::connect().await?;
    let Some(c) = containerd.container(&at).await? else {
        return Err(ObserveError::Refused(format!(
            "container {at} not found by containerd (see `ctr -n {} containers ls`)",
            at.namespace
        )));
    };
    let opening = match (c.running_pid.is_some(), opts.restart, opts.attach) {
        (false, _, _) => Opening::Start,
        (true, true, _) => Opening::Restart,
        (true, _, true) => Opening::Attach,
        (true, false, false) => {
            return Err(ObserveError::Refused(format!(
                "the task of {at} runs already, so its start-up (which reads its configuration \
                 and loads its libraries) cannot be observed: pass --restart to restart it under \
                 observation, or --attach to observe it from now on"
            )));
        }
    };
    let name = c.session_name();
    // A closed session of the same image goes on in a new segment; one of
    // another image is refused unless replaced.
    let earlier = match manager.store.session(&name)? {
        Some(_) if opts.replace => {
            manager.store.delete_session(&name)?;
            None
        }
        Some(earlier) if earlier.started.image_id == c.image_digest => Some(earlier),
        Some(earlier) => {
            return Err(ObserveError::Refused(format!(
                "session {name} holds what image {} ({}) used, and container {at} now runs {} \
                 ({}): observing it would mix two images in one session; pass --replace to \
                 delete the earlier session, or `cimplifierctl export {name}` it first",
                earlier.started.image_ref, earlier.started.image_id, c.image, c.image_digest
            )));
        }
        None => None,
    };
    manager
        .begin(
            Subject::Containerd(Box::new(c)),
            opening,
            opts.duration,
            earlier,
            None,
        )
        .await
}

impl SessionTask {
    /// The session of a containerd container, from its task's creation to
    /// its end: `stop`, the duration passing, or the task's exit.
    pub(super) async fn run_containerd(
        mut self,
        c: Container,
        stop: impl std::future::Future<Output = ()>,
        started_tx: oneshot::Sender<Started>,
    ) -> Result<SessionRecord> {
        let observer = self.manager.observer.clone();
        let store = self.manager.store.clone();
        let containerd = Containerd::connect().await?;
        let name = c.session_name();
        // Resumed after a daemon restart (its task runs on, watched from
        // now), or a closed session observed again.
        let resumed = self.resumed.take();
        let (route, mut events, early) = match self.prepared.take() {
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
        let mut loss_base = LossBase::new(&observer);
        let from_first_exec = !matches!(self.opening, Opening::Attach | Opening::Resume);
        if self.opening == Opening::Restart {
            tracing::info!(container = %c.at, "stopping, to restart under observation");
            stop_task(&containerd, &c.at).await?;
        }
        // Subscribed before the task exists: an entrypoint that exits at
        // once is not missed.
        let mut exits = Box::pin(containerd.exits(&c.at).await?);
        let pid = match (self.opening, c.running_pid) {
            (Opening::Attach | Opening::Resume, Some(pid)) => pid,
            (Opening::Attach | Opening::Resume, None) => {
                anyhow::bail!("the task of {} is no longer running", c.at)
            }
            (Opening::AwaitStart, _) => match wait_running(&containerd, &c.at).await {
                Ok(pid) => pid,
                Err(e) => {
                    if let Some((w, dir)) = early {
                        observer.unwatch(w);
                        let _ = std::fs::remove_dir(dir);
                    }
                    return Err(e);
                }
            },
            _ => containerd.create_task(&c).await?,
        };
        let cgroup = match cgroup_of_pid(pid) {
            Ok(dir) => dir,
            Err(e) if from_first_exec => {
                let _ = containerd
                    .kill(&c.at, nix::sys::signal::Signal::SIGKILL)
                    .await;
                return Err(e.context(format!("the cgroup of {}'s task", c.at)));
            }
            Err(e) => return Err(e.context(format!("the cgroup of {}'s task", c.at))),
        };
        let members = observer::cgroup_ids_below(&cgroup);
        let watch = match early {
            // Made and watched when containerd announced the container.
            Some((w, dir)) if dir == cgroup => w,
            early => {
                observer.claim(&route.route, &cgroup);
                let w = if from_first_exec {
                    observer.watch(&cgroup)?
                } else {
                    // Running for a while: its cgroups may have lost records
                    // of an earlier session's, which are not this one's.
                    loss_base.existing(&observer, &members);
                    observer.watch_running(&cgroup)?
                };
                if let Some((early, _)) = early {
                    observer.unwatch(early);
                }
                w
            }
        };
        let now = now_ms();
        let mut record = match resumed {
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
                    origin: format!("observed again ({})", c.at),
                });
                r.state = SessionState::Observing;
                r.end = None;
                r.started.container_id = c.at.to_string();
                r.started.from_first_exec = r.segments.iter().all(|s| s.from_first_exec);
                r
            }
            None => SessionRecord::new(
                name.clone(),
                store.next_session_id()?,
                Started {
                    container_id: c.at.to_string(),
                    container_name: name.clone(),
                    image_id: c.image_digest.clone(),
                    image_ref: c.image.clone(),
                    from_first_exec,
                    started_unix_ms: now,
                },
            ),
        };
        record.checkpoint_unix_ms = now;
        record.containerd = Some(c.at.clone());
        // How it ran (a resumed session keeps what it recorded first).
        if record.run.is_none() {
            match containerd
                .image_config(&c.at.namespace, &c.image_digest)
                .await
            {
                Ok(image) => {
                    record.run = Some(Box::new(crate::engine::containerd::run_settings(
                        &c.spec, &image,
                    )));
                }
                Err(e) => {
                    tracing::warn!(container = %c.at, "its run settings are not recorded: {e:#}")
                }
            }
        }
        if let Err(e) = store.put_session(&record) {
            observer.unwatch(watch);
            return Err(e);
        }
        // (Awaited: whoever created it starts it.)
        if from_first_exec && self.opening != Opening::AwaitStart {
            tracing::info!(container = %c.at, cgroup = %cgroup.display(), "starting under observation");
            if let Err(e) = containerd.start(&c.at).await {
                observer.unwatch(watch);
                return Err(e);
            }
        }
        let _ = started_tx.send(record.started.clone());

        let step_context = Arc::new(StepContext {
            observer: observer.clone(),
            route: route.route.clone(),
            containerd: containerd.clone(),
            container: c.clone(),
            cgroup: cgroup.clone(),
        });
        let mut recorder = Recorder::new(
            (&observer, &store, &route),
            cgroup,
            members,
            &name,
            &record,
            loss_base,
        );
        let deadline = super::task::session_deadline(self.duration);
        tokio::pin!(stop, deadline);
        let mut checkpoint = tokio::time::interval(CHECKPOINT);
        checkpoint.tick().await;
        let mut failure = None;
        let mut step: Option<std::pin::Pin<Box<dyn Future<Output = StepOutcome> + Send>>> = None;
        // Exits of the task that a lifecycle step caused.
        let mut expected_exits = 0u32;
        // A look at the task now and then, should an exit event be missed
        // (containerd's subscription has no acknowledgement).
        let mut ticks = 0u32;
        let end = loop {
            tokio::select! {
                biased;
                _ = &mut stop => break EndReason::Stopped,
                _ = &mut deadline => break EndReason::Duration,
                exit = exits.next() => match exit {
                    Some(Ok(_)) if expected_exits > 0 => expected_exits -= 1,
                    Some(Ok(_)) => break EndReason::ContainerDied,
                    // containerd went away (or restarted): ask whether the
                    // task runs on, and follow its events again.
                    broken => {
                        if let Some(Err(e)) = broken {
                            tracing::warn!(container = %c.at, "containerd's events broke: {e:#}");
                        }
                        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                        match Containerd::connect().await {
                            Ok(again) => match again.exits(&c.at).await {
                                Ok(s) => exits = Box::pin(s),
                                Err(e) => tracing::warn!(container = %c.at, "{e:#}"),
                            },
                            Err(e) => tracing::warn!(container = %c.at, "{e:#}"),
                        }
                        if step.is_none() && let Ok(None) = containerd.task_pid(&c.at).await {
                            break EndReason::ContainerDied;
                        }
                    }
                },
                Some(request) = self.steps.recv(), if step.is_none() => {
                    if request.step.stops() {
                        expected_exits += 1;
                    }
                    step = Some(Box::pin(perform(step_context.clone(), request)));
                }
                outcome = async { step.as_mut().expect("a step in flight").await }, if step.is_some() => {
                    step = None;
                    if outcome.result.is_err() && !outcome.stopped {
                        expected_exits = expected_exits.saturating_sub(1);
                    }
                    if outcome.result.is_ok() {
                        record.lifecycle.push(outcome.step);
                    }
                    let _ = outcome.reply.send(outcome.result);
                }
                _ = checkpoint.tick() => {
                    if let Err(e) = recorder.commit(&mut record) {
                        failure = Some(e);
                        break EndReason::Failed;
                    }
                    ticks += 1;
                    if ticks.is_multiple_of(4)
                        && step.is_none()
                        && let Ok(None) = containerd.task_pid(&c.at).await
                    {
                        break EndReason::ContainerDied;
                    }
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
}

/// How long a task has to stop on SIGTERM before it is killed.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Stops the running task of `at` as `docker stop` does: SIGTERM, then
/// SIGKILL after [`STOP_GRACE`]; returns once it is stopped.
async fn stop_task(containerd: &Containerd, at: &ContainerRef) -> Result<()> {
    use nix::sys::signal::Signal;
    let stopped = async || -> Result<bool> { Ok(containerd.task_pid(at).await?.is_none()) };
    containerd.kill(at, Signal::SIGTERM).await?;
    let deadline = tokio::time::Instant::now() + STOP_GRACE;
    while !stopped().await? {
        if tokio::time::Instant::now() > deadline {
            tracing::info!(container = %at, "still running {STOP_GRACE:?} after SIGTERM: SIGKILL");
            containerd.kill(at, Signal::SIGKILL).await?;
            let deadline = tokio::time::Instant::now() + STOP_GRACE;
            while !stopped().await? {
                if tokio::time::Instant::now() > deadline {
                    anyhow::bail!("the task of {at} still runs after SIGKILL");
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    Ok(())
}

/// How long a container announced by containerd has to get a running task.
const AWAIT_START: std::time::Duration = std::time::Duration::from_secs(60);

/// The pid of `at`'s task once whoever created the container starts it.
async fn wait_running(containerd: &Containerd, at: &ContainerRef) -> Result<u32> {
    let deadline = tokio::time::Instant::now() + AWAIT_START;
    loop {
        if let Some(pid) = containerd.task_pid(at).await? {
            return Ok(pid);
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("container {at} was created but not started within {AWAIT_START:?}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

impl Manager {
    /// Follows containerd's container creations in every namespace and
    /// observes those whose labels or spec annotations match a selector
    /// (the CRI's labels, a pod's annotations), from their first exec: a container's cgroup (from its
    /// spec's `linux.cgroupsPath`, the cgroupfs driver's) is made and
    /// watched when containerd announces it, before its task is created;
    /// with the systemd driver it is watched once the task runs, and a
    /// start-up missed so is said so by the session. Runs for the daemon's
    /// life, connecting again with backoff.
    pub(super) async fn watch_containerd_labels(self: Arc<Self>) {
        let mut backoff = std::time::Duration::from_millis(500);
        loop {
            if let Err(e) = self.follow_containerd_creations().await {
                tracing::warn!(
                    "containerd's labelled containers: {e:#}; trying again in {backoff:?}"
                );
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(std::time::Duration::from_secs(30));
        }
    }

    async fn follow_containerd_creations(self: &Arc<Self>) -> Result<()> {
        let containerd = Containerd::connect().await?;
        let mut created = Box::pin(containerd.created().await?);
        tracing::info!("following containerd's events for labelled containers");
        while let Some(at) = created.next().await {
            let at = at?;
            let c = match containerd.container(&at).await {
                Ok(Some(c)) => c,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(container = %at, "labelled container? {e:#}");
                    continue;
                }
            };
            // By its labels (the CRI's included), or an annotation of its
            // spec (a pod's, where the CRI passes it).
            if !self.wanted(&c.labels) && !self.wanted(&c.annotations) {
                continue;
            }
            let name = c.session_name();
            if self.is_running(&name) {
                continue;
            }
            if self.store.session(&name)?.is_some() {
                tracing::warn!(
                    container = %at, session = %name,
                    "labelled container not observed: a session of that name exists (export and \
                     delete it, or observe the container with --replace)"
                );
                continue;
            }
            let prepared = c
                .cgroups_path
                .as_deref()
                .zip(cgroup2_mount().ok())
                .and_then(|(p, mount)| cgroupfs_dir(p, &mount))
                .and_then(|dir| match self.prepare_dir(dir, &name) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        tracing::warn!(container = %at, "cannot watch ahead of the start: {e:#}");
                        None
                    }
                });
            let manager = self.clone();
            tokio::spawn(async move {
                match manager
                    .begin(
                        Subject::Containerd(Box::new(c)),
                        Opening::AwaitStart,
                        None,
                        None,
                        prepared,
                    )
                    .await
                {
                    Ok(_) => {
                        tracing::info!(container = %at, session = %name, "labelled container: observing")
                    }
                    Err(e) => {
                        tracing::warn!(container = %at, "labelled container not observed: {e}")
                    }
                }
            });
        }
        anyhow::bail!("containerd's event stream ended")
    }
}

impl Manager {
    /// [`Manager::recover`] of a containerd session the daemon lost: the
    /// time since its last checkpoint is a gap; it is resumed when its task
    /// still runs, else closed as interrupted (also when containerd does
    /// not answer: the session then says why it ended).
    pub(super) async fn recover_containerd(
        self: &Arc<Self>,
        mut record: SessionRecord,
        at: &ContainerRef,
    ) -> Result<()> {
        let gap = Gap {
            from_unix_ms: record.checkpoint_unix_ms,
            to_unix_ms: now_ms(),
            reason: "the daemon stopped without closing the session (killed or crashed)".into(),
        };
        record.gaps.push(gap);
        let found = match Containerd::connect().await {
            Ok(containerd) => containerd.container(at).await,
            Err(e) => Err(e),
        };
        match found {
            Ok(Some(c)) if c.running_pid.is_some() => {
                tracing::warn!(session = %record.name, "resuming an observation the daemon lost; the gap is marked");
                self.store.put_session(&record)?;
                if let Err(e) = self
                    .begin(
                        Subject::Containerd(Box::new(c)),
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
            found => {
                if let Err(e) = found {
                    tracing::warn!(session = %record.name, "containerd does not answer for {at}: {e:#}");
                }
                tracing::warn!(session = %record.name, "closing an observation the daemon lost; its task is gone");
                record.state = SessionState::Closed;
                record.end = Some(EndReason::Interrupted);
                self.store.put_session(&record)?;
            }
        }
        Ok(())
    }
}

/// What a lifecycle step of a containerd session needs.
struct StepContext {
    observer: Arc<Observer>,
    route: Arc<Route>,
    containerd: Containerd,
    container: Container,
    /// The task's cgroup, which a new task makes anew at the same path.
    cgroup: std::path::PathBuf,
}

/// Runs a lifecycle step on the session's task, as Docker's are run
/// ([`super::lifecycle`]): a reload is SIGHUP to the init process; a
/// restart stops the task (SIGTERM, then SIGKILL), a kill-start kills it;
/// both then create a new task, watch its cgroup made anew, and start it,
/// so the start is seen from its first exec.
async fn perform(cx: Arc<StepContext>, request: StepRequest) -> StepOutcome {
    use crate::store::LifecycleStep;
    use nix::sys::signal::Signal;
    let StepRequest { step, reply } = request;
    let at = &cx.container.at;
    let mut stopped = false;
    let result = async {
        match step {
            LifecycleStep::Reload => {
                tracing::info!(container = %at, "lifecycle: SIGHUP");
                return cx.containerd.signal(at, Signal::SIGHUP, false).await;
            }
            LifecycleStep::Restart => {
                tracing::info!(container = %at, "lifecycle: stopping gracefully");
                stop_task(&cx.containerd, at).await?;
            }
            LifecycleStep::KillStart => {
                tracing::info!(container = %at, "lifecycle: SIGKILL");
                cx.containerd.kill(at, Signal::SIGKILL).await?;
                wait_stopped(&cx.containerd, at).await?;
            }
        }
        stopped = true;
        let pid = cx.containerd.create_task(&cx.container).await?;
        let cgroup = cgroup_of_pid(pid)?;
        anyhow::ensure!(
            cgroup == cx.cgroup,
            "the new task is in cgroup {}, not {} as before",
            cgroup.display(),
            cx.cgroup.display()
        );
        cx.observer.renew(&cgroup)?;
        cx.observer.claim(&cx.route, &cgroup);
        tracing::info!(container = %at, "lifecycle: starting under observation");
        cx.containerd.start(at).await
    }
    .await;
    StepOutcome {
        step,
        reply,
        stopped,
        result: result.with_context(|| format!("{step} of container {at}")),
    }
}

/// Waits until the task of `at` no longer runs.
async fn wait_stopped(containerd: &Containerd, at: &ContainerRef) -> Result<()> {
    let deadline = tokio::time::Instant::now() + STOP_GRACE;
    while containerd.task_pid(at).await?.is_some() {
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("the task of {at} still runs {STOP_GRACE:?} after SIGKILL");
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    Ok(())
}
