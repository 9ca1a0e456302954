//! The gRPC service: a thin layer over the session manager, the store, the
//! model's reports and emit. Statuses say what to do.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Context;
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::convert::*;
use super::pb;
use super::pb::cimplifier_server::Cimplifier;
use super::pb::session::State;
use crate::emit::EmitError;
use crate::emit::push::{Credentials, PushTarget};
use crate::emit::slim::{EmitOptions, emit};
use crate::image::source::{Admit, TraceDigest, read_session};
use crate::model::Model;
use crate::model::report::{Report, Source};
use crate::place::seccomp::SeccompMode;
use crate::place::slim::{SafetySet, SlimOptions};
use crate::session::{Manager, ObserveError, ObserveOptions, SessionView, StreamFilter};
use crate::store::{OnExisting, SessionExists, SessionRecord, SessionState};
use crate::trace::ContainerPath;

/// The size of each piece of an OCI layout sent back by emit.
const OCI_CHUNK: usize = 1 << 20;

/// Events a stream may fall behind by before it is cut off, by default.
pub const DEFAULT_STREAM_BUFFER: usize = 4096;
/// The most a client may ask to buffer.
const MAX_STREAM_BUFFER: usize = 1 << 20;
/// Event streams open at once, and the events their queues may hold in all
/// (about 1 KiB each): clients cannot make the daemon hold more.
const MAX_SUBSCRIBERS: usize = 256;
const MAX_BUFFERED_EVENTS: usize = 4 << 20;
/// Largest session bundle ImportSession accepts.
const MAX_BUNDLE: usize = 1 << 30;

/// The service: the session manager and where emit reports go.
pub struct Service {
    manager: Arc<Manager>,
    state_dir: PathBuf,
    /// Permits for the heavy calls (emit, plan, import, export, merge,
    /// verify): each reads whole images or sessions, so a client cannot
    /// start more at once than the host can take.
    heavy: Arc<tokio::sync::Semaphore>,
    /// How long emits and plans took, for /metrics.
    timings: super::metrics::Timings,
}

/// Heavy calls that run at once, by default.
pub const HEAVY_CALLS: usize = 2;
/// How long a heavy call waits for a permit before it is refused.
const HEAVY_WAIT: std::time::Duration = std::time::Duration::from_secs(300);

/// A permit for one heavy call of `what`, waiting at most `wait`;
/// RESOURCE_EXHAUSTED when none came.
async fn heavy_permit(
    heavy: &Arc<tokio::sync::Semaphore>,
    what: &str,
    wait: std::time::Duration,
) -> Result<tokio::sync::OwnedSemaphorePermit, Status> {
    match tokio::time::timeout(wait, heavy.clone().acquire_owned()).await {
        Ok(Ok(permit)) => Ok(permit),
        _ => Err(Status::resource_exhausted(format!(
            "{what}: the daemon is busy with its limit of heavy calls (emit, plan, import, \
             export, merge, verify), waited {} for one to end; retry later, or raise \
             --max-heavy-calls",
            humantime::format_duration(wait)
        ))),
    }
}

/// Runs a heavy call on a thread of its own, with its own runtime, so its
/// CPU work and blocking reads of spooled images never hold the workers that
/// serve the API and route the tracer's events. The heavy-call permit the
/// future holds bounds how many such threads exist.
fn spawn_apart(what: &'static str, call: impl Future<Output = ()> + Send + 'static) {
    let spawned = std::thread::Builder::new()
        .name(format!("cimplifier-{what}"))
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime.block_on(call),
                Err(e) => tracing::error!("{what}: could not start a runtime for the call: {e}"),
            }
        });
    if let Err(e) = spawned {
        tracing::error!("{what}: could not start a thread for the call: {e}");
    }
}

/// The system's page size, for RSS from /proc/self/statm (4 KiB on
/// x86_64, but 16 or 64 KiB on some arm64 and ppc64 kernels).
fn page_size() -> u64 {
    static PAGE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *PAGE.get_or_init(|| {
        nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .map_or(4096, |p| p as u64)
    })
}

/// Emit's steps as progress messages (a slow reader misses some).
fn step_progress(
    tx: mpsc::Sender<Result<pb::EmitProgress, Status>>,
) -> impl Fn(&str) + Send + Sync {
    move |step: &str| {
        let _ = tx.try_send(Ok(pb::EmitProgress {
            update: Some(pb::emit_progress::Update::Step(step.to_owned())),
        }));
    }
}

/// Emit's byte counts as progress messages, one per 4 MiB (and the last),
/// so a fast read does not flood the stream; dropped when the client lags.
fn byte_progress(
    tx: mpsc::Sender<Result<pb::EmitProgress, Status>>,
) -> impl Fn(&str, u64, u64) + Send + Sync {
    let sent = std::sync::atomic::AtomicU64::new(0);
    move |what: &str, done: u64, total: u64| {
        let last = sent.load(Ordering::Relaxed);
        if done < last + (4 << 20) && done < total {
            return;
        }
        sent.store(done, Ordering::Relaxed);
        let _ = tx.try_send(Ok(pb::EmitProgress {
            update: Some(pb::emit_progress::Update::Bytes(pb::ByteProgress {
                what: what.to_owned(),
                done,
                total,
            })),
        }));
    }
}

impl Service {
    pub fn new(manager: Arc<Manager>, state_dir: PathBuf, heavy_calls: usize) -> Self {
        Self {
            manager,
            state_dir,
            heavy: Arc::new(tokio::sync::Semaphore::new(heavy_calls.max(1))),
            timings: Default::default(),
        }
    }

    async fn heavy(&self, what: &str) -> Result<tokio::sync::OwnedSemaphorePermit, Status> {
        heavy_permit(&self.heavy, what, HEAVY_WAIT).await
    }

    pub fn manager(&self) -> &Arc<Manager> {
        &self.manager
    }

    /// Prometheus text exposition of the daemon's state.
    pub fn metrics(&self) -> String {
        let sessions = self.manager.list().unwrap_or_default();
        let count =
            |f: &dyn Fn(&SessionView) -> bool| sessions.iter().filter(|s| f(s)).count() as u64;
        let (mut session_events, mut session_lost) = (0u64, 0u64);
        for s in &sessions {
            if let SessionView::Stored(r) = s {
                session_events += r.events;
                session_lost += r.loss.lost();
            }
        }
        let observer = self.manager.observer();
        let counters = observer.counters();
        let snapshot = super::metrics::Snapshot {
            sessions_observing: self.manager.observing() as u64,
            sessions_closed: count(
                &|s| matches!(s, SessionView::Stored(r) if r.state == SessionState::Closed),
            ),
            sessions_failed: count(&|s| matches!(s, SessionView::Failed { .. })),
            tracer_events: observer.stats.events.load(Ordering::Relaxed),
            tracer_lost: observer.loss().lost(),
            exit_mismatch: counters.exit_mismatch,
            missed_runs: counters.loss.missed_runs,
            tracepoint_unread: counters.loss.tracepoint_unread,
            cgroup_lost: observer
                .watched_losses()
                .into_iter()
                .map(|(dir, loss)| (dir.display().to_string(), loss))
                .collect(),
            session_events,
            session_lost,
            streams: observer.subscribers() as u64,
            streams_cut_off: observer.stats.streams_cut_off.load(Ordering::Relaxed),
            held_cgroups: observer.stats.held_cgroups.load(Ordering::Relaxed),
            held_dropped: observer.stats.held_dropped.load(Ordering::Relaxed),
            held_overflow: observer.stats.held_overflow.load(Ordering::Relaxed),
            excluded_cgroups: observer.stats.cgroups_excluded.load(Ordering::Relaxed),
            reader_restarts: observer.stats.reader_restarts.load(Ordering::Relaxed),
            dispatcher_restarts: observer.stats.dispatcher_restarts.load(Ordering::Relaxed),
            interrupted: observer.stats.interrupted.load(Ordering::Relaxed),
            tracing: u64::from(*observer.tracing().borrow()),
            watched_cgroups: observer.watched() as u64,
            store_bytes: std::fs::metadata(self.manager.store().path()).map_or(0, |m| m.len()),
            resident_bytes: std::fs::read_to_string("/proc/self/statm")
                .ok()
                .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
                .map_or(0, |pages| pages * page_size()),
        };
        super::metrics::render(snapshot, &self.timings)
    }

    /// Emit with a policy: one image per partition and the run plan.
    fn emit_partitioned(
        &self,
        req: pb::EmitRequest,
        slim: SlimOptions,
        push: Option<PushTarget>,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) -> Result<Response<ResultStream<pb::EmitProgress>>, Status> {
        use crate::emit::partitioned::{
            ImageNaming, PartitionEmitOptions, RpeBinaries, emit_partitioned,
        };
        if req.policy_toml.len() > 1 << 20 {
            return Err(Status::invalid_argument("policy_toml: at most 1 MiB"));
        }
        let seccomp = SeccompMode::parse(&req.seccomp).map_err(Status::invalid_argument)?;
        let policy =
            crate::partition::Policy::from_toml(&req.policy_toml).map_err(EmitError::from)?;
        if req.tag.is_empty() {
            return Err(Status::invalid_argument(
                "with a policy, give a tag (REPOSITORY[:TAG] for the partitions' images)",
            ));
        }
        if req.oci_archive {
            return Err(Status::invalid_argument(
                "oci_archive is for a single slim image; with a policy the images go into the engine",
            ));
        }
        let images =
            ImageNaming::parse(&req.tag).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let rpe =
            RpeBinaries::embedded().map_err(|e| Status::failed_precondition(format!("{e:#}")))?;
        let opts = PartitionEmitOptions {
            session: req.container,
            policy,
            images,
            slim,
            allow_incomplete: req.allow_incomplete,
            rpe,
            retag: retag(req.force),
            kubernetes: req.kubernetes,
            push,
            seccomp,
            source_auth: credentials(req.source_auth.as_ref()),
        };
        let store = self.manager.store().clone();
        let (tx, rx) = mpsc::channel(16);
        let emit_seconds = self.timings.emit.clone();
        spawn_apart("emit", async move {
            let _permit = permit;
            let started = std::time::Instant::now();
            let progress = step_progress(tx.clone());
            let bytes = byte_progress(tx.clone());
            let result = emit_partitioned(&store, &opts, &progress, &bytes)
                .await
                .and_then(|emitted| {
                    let json = serde_json::to_string_pretty(&emitted.report)
                        .context("serializing the partition report")
                        .map_err(EmitError::from)?;
                    Ok((json, emitted.files))
                });
            let result = match result {
                Ok((json, files)) => {
                    emit_seconds.observe(started.elapsed().as_secs_f64());
                    for (name, content) in files {
                        let file = pb::PlanFile { name, content };
                        let update = pb::emit_progress::Update::PlanFile(file);
                        if tx
                            .send(Ok(pb::EmitProgress {
                                update: Some(update),
                            }))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    Ok(json)
                }
                Err(e) => Err(e),
            };
            let _ = tx
                .send(match result {
                    Ok(json) => Ok(pb::EmitProgress {
                        update: Some(pb::emit_progress::Update::ReportJson(json)),
                    }),
                    Err(e) => Err(e.into()),
                })
                .await;
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    /// The stored record of session `name`. A session that `sessions`
    /// lists but the store lacks (it failed, or is still starting, before
    /// its first checkpoint) is refused saying so, not as unknown.
    fn record(&self, name: &str) -> Result<SessionRecord, Status> {
        if let Some(r) = self.manager.store().session(name).map_err(internal)? {
            return Ok(r);
        }
        match self.manager.get(name).map_err(internal)? {
            Some(SessionView::Failed { error, .. }) => Err(Status::failed_precondition(format!(
                "observing {name} failed before anything was stored ({error}), so it has \
                 nothing to report, plan or emit: fix that and observe it again"
            ))),
            Some(SessionView::Starting(_)) => Err(Status::failed_precondition(format!(
                "session {name} is still starting; `cimplifierctl stop {name}` closes it once it observes"
            ))),
            _ => Err(not_found(name)),
        }
    }

    /// The session's model and the report's source line.
    async fn model(&self, record: SessionRecord) -> Result<(Model, Source), Status> {
        let store = self.manager.store().clone();
        tokio::task::spawn_blocking(move || {
            let mut model = Model::new();
            store.fold(&record, &mut model, |_| {})?;
            let source = Source {
                kind: "session".into(),
                files: vec![record.name.clone()],
                events: record.events,
                lost_events: record.loss.lost(),
                complete: record.complete(),
                image_tree: None,
            };
            Ok::<_, anyhow::Error>((model, source))
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(internal)
    }
}

type ResultStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Cimplifier for Service {
    async fn version(
        &self,
        _: Request<pb::VersionRequest>,
    ) -> Result<Response<pb::VersionResponse>, Status> {
        Ok(Response::new(pb::VersionResponse {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            apis: vec!["cimplifier.v1".to_owned()],
        }))
    }

    async fn observe(
        &self,
        request: Request<pb::ObserveRequest>,
    ) -> Result<Response<pb::Session>, Status> {
        let req = request.into_inner();
        if !req.label_selector.is_empty() {
            if !req.container.is_empty() {
                return Err(Status::invalid_argument(
                    "give a container or a label_selector, not both",
                ));
            }
            self.manager
                .add_selector(&req.label_selector)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            self.manager.start_watching_labels();
            return Ok(Response::new(pb::Session {
                state: State::Observing as i32,
                label_selector: req.label_selector,
                ..Default::default()
            }));
        }
        check_name(&req.container, "container")?;
        let opts = ObserveOptions {
            container: req.container,
            duration: (req.duration_seconds > 0)
                .then(|| std::time::Duration::from_secs(req.duration_seconds.into())),
            restart: req.restart,
            attach: req.attach,
            replace: req.replace,
        };
        match self.manager.observe(opts).await {
            Ok(started) => {
                let mut session = starting(&started);
                session.target = target(&started.container_id).await;
                Ok(Response::new(session))
            }
            Err(e @ ObserveError::NotFound(_)) => Err(Status::not_found(e.to_string())),
            Err(e @ ObserveError::AlreadyObserving(_)) => {
                Err(Status::already_exists(e.to_string()))
            }
            Err(e @ ObserveError::NotObserving(_)) => {
                Err(Status::failed_precondition(e.to_string()))
            }
            Err(e @ ObserveError::Refused(_)) => Err(Status::failed_precondition(e.to_string())),
            Err(ObserveError::Failed(e)) => Err(internal(e)),
        }
    }

    async fn stop_observing(
        &self,
        request: Request<pb::StopObservingRequest>,
    ) -> Result<Response<pb::Session>, Status> {
        let req = request.into_inner();
        if !req.label_selector.is_empty() {
            if !req.container.is_empty() {
                return Err(Status::invalid_argument(
                    "give a container or a label_selector, not both",
                ));
            }
            return match self.manager.remove_selector(&req.label_selector) {
                Ok(true) => Ok(Response::new(pb::Session {
                    state: State::Closed as i32,
                    label_selector: req.label_selector,
                    ..Default::default()
                })),
                Ok(false) => Err(Status::not_found(format!(
                    "no label selector {:?}: `cimplifierctl sessions` lists them",
                    req.label_selector
                ))),
                Err(ObserveError::Refused(why)) => Err(Status::failed_precondition(why)),
                Err(e) => Err(Status::internal(e.to_string())),
            };
        }
        let name = req.container;
        check_name(&name, "container")?;
        match self.manager.stop(&name).await.map_err(internal)? {
            Some(record) => Ok(Response::new(stored(&record))),
            None => Err(not_found(&name)),
        }
    }

    async fn list_sessions(
        &self,
        _: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        let sessions = self.manager.list().map_err(internal)?;
        Ok(Response::new(pb::ListSessionsResponse {
            sessions: sessions.iter().map(view).collect(),
            label_selectors: self.manager.selectors(),
        }))
    }

    async fn get_session(
        &self,
        request: Request<pb::GetSessionRequest>,
    ) -> Result<Response<pb::Session>, Status> {
        let name = request.into_inner().container;
        check_name(&name, "container")?;
        let v = self
            .manager
            .get(&name)
            .map_err(internal)?
            .ok_or_else(|| not_found(&name))?;
        let mut session = view(&v);
        if let SessionView::Stored(record) = v {
            let (model, _) = self.model(*record).await?;
            session.executables = model
                .executables()
                .into_iter()
                .map(|e| e.0.as_str().to_owned())
                .collect();
            session.resources = model.resource_count() as u64;
        }
        Ok(Response::new(session))
    }

    async fn get_report(
        &self,
        request: Request<pb::GetReportRequest>,
    ) -> Result<Response<pb::Report>, Status> {
        let req = request.into_inner();
        check_name(&req.container, "container")?;
        let record = self.record(&req.container)?;
        let (model, source) = self.model(record).await?;
        let report = Report::new(&model, source);
        let body = match pb::get_report_request::Format::try_from(req.format) {
            Ok(pb::get_report_request::Format::Dot) => report.dot(),
            _ => serde_json::to_string_pretty(&report)
                .map_err(|e| Status::internal(e.to_string()))?,
        };
        Ok(Response::new(pb::Report { body }))
    }

    type EmitStream = ResultStream<pb::EmitProgress>;

    async fn emit(
        &self,
        request: Request<pb::EmitRequest>,
    ) -> Result<Response<Self::EmitStream>, Status> {
        let req = request.into_inner();
        check_name(&req.container, "container")?;
        // Every argument before any work: the client's checks are not trusted.
        let tag = image_tag(&req.tag)?;
        if !req.oci_dir.is_empty() || !req.out_dir.is_empty() {
            return Err(Status::invalid_argument(
                "oci_dir and out_dir are no longer written by the daemon, which runs as root: \
                 set oci_archive (the layout comes back in oci_chunk messages) and, with a policy, \
                 write the plan_file messages; `cimplifierctl emit --oci-dir/--out` does both",
            ));
        }
        if req.tag.is_empty()
            && !req.oci_archive
            && req.policy_toml.is_empty()
            && req.push.is_empty()
        {
            return Err(Status::invalid_argument(
                "give a tag, oci_archive, push, or several",
            ));
        }
        let push = if req.push.is_empty() {
            if req.insecure_registry || req.registry_auth.is_some() {
                return Err(Status::invalid_argument(
                    "insecure_registry and registry_auth are for push: give push too",
                ));
            }
            None
        } else {
            Some(PushTarget::parse(
                &req.push,
                req.insecure_registry,
                credentials(req.registry_auth.as_ref()),
            )?)
        };
        if req.kubernetes && req.policy_toml.is_empty() {
            return Err(Status::invalid_argument(
                "kubernetes is the run plan of a partitioned system: give a policy too",
            ));
        }
        let exclude = paths(&req.exclude, "exclude")?;
        if exclude.iter().any(|x| *x == ContainerPath::root()) {
            return Err(Status::invalid_argument(
                "exclude /: every file would be dropped and the image would be empty",
            ));
        }
        let explain = paths(&req.explain, "explain")?;
        let record = self.record(&req.container)?;
        Admit::Closed {
            allow_incomplete: req.allow_incomplete,
        }
        .check(&record)
        .map_err(refused)?;
        let mut slim = SlimOptions::with_safety_sets();
        for name in &req.no_safety_sets {
            let set = SafetySet::from_name(name).ok_or_else(|| {
                Status::invalid_argument(format!(
                    "no_safety_sets {name:?}: the sets are nss, ca-certificates, timezone and locales"
                ))
            })?;
            slim.safety_sets.remove(&set);
        }
        slim.include = paths(&req.include, "include")?;
        slim.exclude = exclude;
        slim.strict = req.strict;
        // A tag taken from another image is refused before any work.
        // (A containerd session's output goes to containerd: checked there.)
        let to_containerd = self
            .manager
            .store()
            .session(&req.container)
            .ok()
            .flatten()
            .is_some_and(|r| r.containerd.is_some());
        if let Some(tag) = &tag
            && !to_containerd
        {
            let docker = crate::docker::connect().map_err(internal)?;
            crate::emit::oci::check_tag(&docker, tag.as_str(), retag(req.force)).await?;
        }
        let permit = self.heavy("emit").await?;
        if !req.policy_toml.is_empty() {
            return self.emit_partitioned(req, slim, push, permit);
        }
        let opts = EmitOptions {
            session: req.container,
            tag,
            oci_archive: req.oci_archive,
            retag: retag(req.force),
            slim,
            allow_incomplete: req.allow_incomplete,
            list_removed: req.list_removed,
            explain,
            push,
            seccomp: SeccompMode::parse(&req.seccomp).map_err(Status::invalid_argument)?,
            source_auth: credentials(req.source_auth.as_ref()),
        };
        let store = self.manager.store().clone();
        let reports = self.state_dir.join("emit-reports");
        let (tx, rx) = mpsc::channel(16);
        let emit_seconds = self.timings.emit.clone();
        spawn_apart("emit", async move {
            let _permit = permit;
            let started = std::time::Instant::now();
            let progress = step_progress(tx.clone());
            let bytes = byte_progress(tx.clone());
            let result = emit(&store, &opts, &progress, &bytes).await;
            let result = match result {
                Ok(emitted) => {
                    emit_seconds.observe(started.elapsed().as_secs_f64());
                    for chunk in emitted.oci_archive.iter().flat_map(|a| a.chunks(OCI_CHUNK)) {
                        let update = pb::emit_progress::Update::OciChunk(chunk.to_vec());
                        if tx
                            .send(Ok(pb::EmitProgress {
                                update: Some(update),
                            }))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    Ok(emitted.report)
                }
                Err(e) => Err(e),
            };
            let last = result.and_then(|report| {
                let json =
                    serde_json::to_string_pretty(&report).context("serializing the emit report")?;
                let path = reports.join(format!("{}.json", opts.session));
                std::fs::create_dir_all(&reports)
                    .and_then(|()| std::fs::write(&path, &json))
                    .with_context(|| format!("writing the emit report {}", path.display()))?;
                Ok(json)
            });
            let _ = tx
                .send(match last {
                    Ok(json) => Ok(pb::EmitProgress {
                        update: Some(pb::emit_progress::Update::ReportJson(json)),
                    }),
                    Err(e) => Err(e.into()),
                })
                .await;
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn plan(
        &self,
        request: Request<pb::PlanRequest>,
    ) -> Result<Response<pb::PlanResponse>, Status> {
        let req = request.into_inner();
        check_name(&req.session, "session")?;
        let _permit = self.heavy("plan").await?;
        let started = std::time::Instant::now();
        if req.policy_toml.len() > 1 << 20 {
            return Err(Status::invalid_argument("policy_toml: at most 1 MiB"));
        }
        let policy =
            crate::partition::Policy::from_toml(&req.policy_toml).map_err(EmitError::from)?;
        self.record(&req.session)?;
        // With the image's tree, symlinked names and `#!` interpreters are
        // known, as emit will know them.
        let source = read_session(
            self.manager.store(),
            &req.session,
            Admit::Any,
            TraceDigest::Skip,
        )
        .await
        .map_err(EmitError::from)?;
        let (plan_json, text) = tokio::task::spawn_blocking(move || {
            let partitioning = crate::partition::partition(&source.model, &policy)?;
            let plan = crate::place::partition::plan(&source.model, &partitioning, &source.tree);
            let json = serde_json::to_string_pretty(&plan).context("serializing the plan")?;
            let mut text = plan.render_text();
            let user = source.inspect.config.as_ref().and_then(|c| c.user.clone());
            let privileges = crate::place::privileges::of_plan(
                &source.model,
                &plan,
                &source.tree,
                user.as_deref().unwrap_or(""),
            );
            text.push('\n');
            for (name, p) in privileges {
                text += &format!("privileges of {name}: {}\n", p.summary());
            }
            Ok::<_, EmitError>((json, text))
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))??;
        self.timings.plan.observe(started.elapsed().as_secs_f64());
        Ok(Response::new(pb::PlanResponse { plan_json, text }))
    }

    type StreamEventsStream = ResultStream<pb::Event>;

    async fn stream_events(
        &self,
        request: Request<pb::StreamEventsRequest>,
    ) -> Result<Response<Self::StreamEventsStream>, Status> {
        let req = request.into_inner();
        let buffer = match req.buffer as usize {
            0 => DEFAULT_STREAM_BUFFER,
            n if n > MAX_STREAM_BUFFER => {
                return Err(Status::invalid_argument(format!(
                    "buffer {n}: at most {MAX_STREAM_BUFFER} events"
                )));
            }
            n => n,
        };
        for s in &req.sessions {
            check_name(s, "sessions")?;
        }
        let known = crate::session::observer::event_kinds();
        for k in &req.kinds {
            check_name(k, "kinds")?;
            if !known.contains(&k.as_str()) {
                return Err(Status::invalid_argument(format!(
                    "kinds {}: not an event kind, so nothing would ever match; give one of {}",
                    crate::cli::quote_capped(k, 80),
                    known.join(", ")
                )));
            }
        }
        let filter = StreamFilter {
            sessions: req.sessions,
            executables: paths(&req.executables, "executables")?,
            kinds: req.kinds,
        };
        let (subscribers, buffered) = self.manager.observer().subscribed();
        if subscribers >= MAX_SUBSCRIBERS || buffered + buffer > MAX_BUFFERED_EVENTS {
            return Err(Status::resource_exhausted(format!(
                "{subscribers} event streams are open, buffering up to {buffered} events; the \
                 daemon takes at most {MAX_SUBSCRIBERS} streams and {MAX_BUFFERED_EVENTS} \
                 buffered events: close a stream, or ask for a smaller buffer"
            )));
        }
        let sub = self.manager.observer().subscribe(filter, buffer);
        let stream = futures::stream::unfold(Some(sub), move |sub| async move {
            let mut sub = sub?;
            match sub.events.recv().await {
                Some(e) => Some((Ok(event_message(&e)), Some(sub))),
                None if sub.cut_off.load(Ordering::Relaxed) => Some((
                    Err(Status::resource_exhausted(format!(
                        "this stream fell more than {buffer} events behind and was cut off so it \
                         could not slow the daemon; read faster, filter more, or ask for a \
                         larger buffer, and reconnect"
                    ))),
                    None,
                )),
                None => None,
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }

    type ExportSessionStream = ResultStream<pb::Chunk>;

    async fn export_session(
        &self,
        request: Request<pb::ExportSessionRequest>,
    ) -> Result<Response<Self::ExportSessionStream>, Status> {
        let name = request.into_inner().session;
        check_name(&name, "session")?;
        let record = self.record(&name)?;
        let _permit = self.heavy("export").await?;
        if record.state != SessionState::Closed {
            return Err(Status::failed_precondition(format!(
                "session {name} is still observing; `cimplifierctl stop {name}` closes it first"
            )));
        }
        let store = self.manager.store().clone();
        let bundle = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            store.export(&record, &mut out).map(|()| out)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(internal)?;
        let chunks: Vec<Result<pb::Chunk, Status>> = bundle
            .chunks(1 << 20)
            .map(|c| Ok(pb::Chunk { data: c.to_vec() }))
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }

    async fn import_session(
        &self,
        request: Request<Streaming<pb::ImportChunk>>,
    ) -> Result<Response<pb::Session>, Status> {
        let _permit = self.heavy("import").await?;
        let mut stream = request.into_inner();
        let store = self.manager.store().clone();
        // The bundle is spooled to an unnamed file in the state directory,
        // not held in memory, then stored in bounded transactions.
        let spool = tempfile::tempfile_in(store.state_dir()).map_err(|e| {
            Status::unavailable(format!(
                "import: cannot make a spool file in the state directory {}: {e}",
                store.state_dir().display()
            ))
        })?;
        let mut spool = tokio::fs::File::from_std(spool);
        let mut received = 0usize;
        let mut name = None;
        let mut existing = OnExisting::Refuse;
        while let Some(chunk) = stream.message().await? {
            if name.is_none() {
                name = Some(chunk.name);
                if chunk.replace {
                    existing = OnExisting::Replace;
                }
            }
            received += chunk.data.len();
            if received > MAX_BUNDLE {
                return Err(Status::invalid_argument(format!(
                    "the bundle is larger than {} MiB",
                    MAX_BUNDLE >> 20
                )));
            }
            spool.write_all(&chunk.data).await.map_err(|e| {
                Status::resource_exhausted(format!(
                    "import: spooling the bundle into the state directory {}: {e}",
                    store.state_dir().display()
                ))
            })?;
        }
        spool
            .seek(std::io::SeekFrom::Start(0))
            .await
            .map_err(|e| Status::internal(format!("import: rewinding the spooled bundle: {e}")))?;
        let spool = spool.into_std().await;
        let name = name.filter(|n| !n.is_empty());
        let record = tokio::task::spawn_blocking(move || {
            store.import_from(
                std::io::BufReader::with_capacity(1 << 20, spool),
                name.as_deref(),
                existing,
            )
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| exists_or(e, Status::invalid_argument))?;
        Ok(Response::new(stored(&record)))
    }

    async fn merge_sessions(
        &self,
        request: Request<pb::MergeSessionsRequest>,
    ) -> Result<Response<pb::Session>, Status> {
        let req = request.into_inner();
        check_name(&req.into, "into")?;
        let _permit = self.heavy("merge").await?;
        for s in &req.sessions {
            check_name(s, "sessions")?;
            self.record(s)?;
        }
        let store = self.manager.store().clone();
        let existing = if req.replace {
            OnExisting::Replace
        } else {
            OnExisting::Refuse
        };
        let record =
            tokio::task::spawn_blocking(move || store.merge(&req.into, &req.sessions, existing))
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map_err(|e| exists_or(e, Status::failed_precondition))?;
        Ok(Response::new(stored(&record)))
    }

    async fn delete_session(
        &self,
        request: Request<pb::DeleteSessionRequest>,
    ) -> Result<Response<pb::Session>, Status> {
        let name = request.into_inner().session;
        check_name(&name, "session")?;
        let observing = || {
            Status::failed_precondition(format!(
                "session {name} is observing; `cimplifierctl stop {name}` first"
            ))
        };
        if self.manager.is_running(&name) {
            return Err(observing());
        }
        let record = self.record(&name)?;
        if record.state == SessionState::Observing {
            return Err(observing());
        }
        let store = self.manager.store().clone();
        let deleted = record.clone();
        tokio::task::spawn_blocking(move || store.delete_session(&name))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(internal)?;
        tracing::info!(session = %deleted.name, events = deleted.events, "session deleted");
        Ok(Response::new(stored(&deleted)))
    }

    async fn lifecycle(
        &self,
        request: Request<pb::LifecycleRequest>,
    ) -> Result<Response<pb::Target>, Status> {
        super::verify::lifecycle(&self.manager, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn verify(
        &self,
        request: Request<pb::VerifyRequest>,
    ) -> Result<Response<pb::VerifyReport>, Status> {
        let _permit = self.heavy("verify").await?;
        super::verify::verify(&self.manager, request.into_inner())
            .await
            .map(Response::new)
    }
}

/// ALREADY_EXISTS for a name taken by another session, `otherwise` for any
/// other error.
fn exists_or(e: anyhow::Error, otherwise: fn(String) -> Status) -> Status {
    match e.downcast_ref::<SessionExists>() {
        Some(exists) => Status::already_exists(exists.to_string()),
        None => otherwise(format!("{e:#}")),
    }
}

/// The retag rule a request asks for.
/// A request's registry credentials; none, or no user name, is anonymous.
fn credentials(auth: Option<&pb::RegistryAuth>) -> Credentials {
    match auth {
        Some(a) if !a.username.is_empty() => Credentials::Basic {
            username: a.username.clone(),
            password: a.password.clone(),
        },
        _ => Credentials::Anonymous,
    }
}

fn retag(force: bool) -> crate::emit::oci::Retag {
    if force {
        crate::emit::oci::Retag::Any
    } else {
        crate::emit::oci::Retag::OwnOnly
    }
}

#[cfg(test)]
mod heavy_tests {
    use super::*;

    #[tokio::test]
    async fn a_heavy_call_past_the_limit_waits_then_is_refused_by_name() {
        let heavy = Arc::new(tokio::sync::Semaphore::new(1));
        let wait = std::time::Duration::from_millis(50);
        let first = heavy_permit(&heavy, "emit", wait).await.unwrap();
        let refused = heavy_permit(&heavy, "plan", wait).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(refused.message().starts_with("plan:"), "{refused}");
        assert!(refused.message().contains("--max-heavy-calls"), "{refused}");
        // Once the first ends, the next gets its turn.
        drop(first);
        assert!(heavy_permit(&heavy, "plan", wait).await.is_ok());
    }
}
