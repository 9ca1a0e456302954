//! One session's observation: the container brought to running as asked,
//! its cgroup made ahead and watched, its events checkpointed until it
//! ends, and what the tracer still held drained.

use super::*;

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

/// The first 12 characters of a container id, as `docker ps` shows it.
fn short_id(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// One session's observation.
pub(super) struct SessionTask {
    pub(super) manager: Arc<Manager>,
    pub(super) details: container::Details,
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
    pub(super) async fn run(
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
                    origin: format!("observed again (container {})", short_id(&id)),
                });
                r.state = SessionState::Observing;
                r.end = None;
                r.started.container_id = id.clone();
                r.started.from_first_exec = r.segments.iter().all(|s| s.from_first_exec);
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
        let mut exes = crate::model::ExeTracker::default();
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
        let step_context = Arc::new(lifecycle::StepContext {
            observer: observer.clone(),
            route: route.route.clone(),
            docker: docker.clone(),
            id: id.clone(),
            name: name.clone(),
            cgroup: container_cgroup.clone(),
        });
        let mut step: Option<
            std::pin::Pin<Box<dyn Future<Output = lifecycle::StepOutcome> + Send>>,
        > = None;
        // `die`s of the container that a lifecycle step caused.
        let mut expected_dies = 0u32;
        let end = loop {
            tokio::select! {
                biased;
                _ = &mut stop => break EndReason::Stopped,
                _ = &mut deadline => break EndReason::Duration,
                Some(_) = die_events.next() => {
                    if expected_dies == 0 {
                        break EndReason::ContainerDied;
                    }
                    expected_dies -= 1;
                }
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
pub(super) struct RouteGuard {
    pub(super) observer: Arc<Observer>,
    pub(super) route: Arc<Route>,
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
    fn runc_init_is_known_by_its_names() {
        let path = |p| ContainerPath::new(p);
        assert!(is_runc_init("runc:[2:INIT]", None));
        assert!(is_runc_init("exe", None));
        assert!(is_runc_init("exe", path("/usr/bin/runc").as_ref()));
        assert!(!is_runc_init("exe", path("/srv/app/exe").as_ref()));
        assert!(!is_runc_init("sh", path("/bin/sh").as_ref()));
    }
}
