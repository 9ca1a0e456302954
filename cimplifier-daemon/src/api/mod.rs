//! The gRPC service (proto/cimplifier/v1/cimplifier.proto): a thin layer
//! over sessions, the model's reports and emit. Statuses say what to do.

use std::collections::HashMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::emit::slim::{EmitOptions, emit};
use crate::model::report::{Input, analyze};
use crate::place::slim::{SafetySet, SlimOptions};
use crate::session::{ObserveOptions, SessionDir, SessionInfo, Started, observe};
use crate::trace::{ContainerPath, TracerConfig};

mod client;
mod serve;
mod transport;

pub use client::{channel, connect};
pub use serve::{DEFAULT_CONFIG, DEFAULT_SOCKET, DaemonConfig, ServeOptions, serve};
pub use transport::{
    Address, ClientSecurity, ClientTls, ServerTls, TcpFlags, TcpListen, TcpSecurity,
};

/// Code generated from proto/cimplifier/v1/cimplifier.proto.
pub mod pb {
    tonic::include_proto!("cimplifier.v1");
}

use pb::cimplifier_server::Cimplifier;
use pb::session::State;

/// An observation in progress.
struct Running {
    started: Started,
    stop: Option<oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<anyhow::Result<SessionInfo>>>,
}

/// The service's state: where sessions live and which are being observed.
pub struct Service {
    state_dir: PathBuf,
    tracer: TracerConfig,
    running: Arc<Mutex<HashMap<String, Running>>>,
    /// Sessions whose observation failed after it began, with the error.
    failed: Arc<Mutex<HashMap<String, String>>>,
}

impl Service {
    pub fn new(state_dir: PathBuf, tracer: TracerConfig) -> Self {
        Self {
            state_dir,
            tracer,
            running: Arc::default(),
            failed: Arc::default(),
        }
    }

    /// Stops every observation and waits for each session to be written:
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

    /// Prometheus text exposition of the daemon's state.
    pub fn metrics(&self) -> String {
        let (mut closed_n, mut events, mut lost) = (0u64, 0u64, 0u64);
        if let Ok(dirs) = std::fs::read_dir(self.state_dir.join("sessions")) {
            for d in dirs.flatten() {
                if let Some(info) = self.closed(&d.file_name().to_string_lossy()) {
                    closed_n += 1;
                    events += info.events;
                    lost += info.loss.lost();
                }
            }
        }
        let observing = self.running.lock().expect("sessions lock").len();
        let failed = self.failed.lock().expect("failed lock").len();
        let rss = std::fs::read_to_string("/proc/self/statm")
            .ok()
            .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
            .map_or(0, |pages| pages * 4096);
        format!(
            "# HELP cimplifier_sessions Observation sessions by state.\n\
             # TYPE cimplifier_sessions gauge\n\
             cimplifier_sessions{{state=\"observing\"}} {observing}\n\
             cimplifier_sessions{{state=\"closed\"}} {closed_n}\n\
             cimplifier_sessions{{state=\"failed\"}} {failed}\n\
             # HELP cimplifier_closed_session_events_total Events recorded by closed sessions.\n\
             # TYPE cimplifier_closed_session_events_total counter\n\
             cimplifier_closed_session_events_total {events}\n\
             # HELP cimplifier_closed_session_lost_events_total Events closed sessions lost.\n\
             # TYPE cimplifier_closed_session_lost_events_total counter\n\
             cimplifier_closed_session_lost_events_total {lost}\n\
             # HELP cimplifier_resident_memory_bytes The daemon's resident memory.\n\
             # TYPE cimplifier_resident_memory_bytes gauge\n\
             cimplifier_resident_memory_bytes {rss}\n"
        )
    }

    fn closed(&self, container: &str) -> Option<SessionInfo> {
        SessionDir::new(&self.state_dir, container).info().ok()
    }
}

fn observing(s: &Started) -> pb::Session {
    pb::Session {
        container: s.container_name.clone(),
        container_id: s.container_id.clone(),
        image_ref: s.image_ref.clone(),
        image_id: s.image_id.clone(),
        state: State::Observing as i32,
        from_first_exec: s.from_first_exec,
        started_unix_ms: s.started_unix_ms,
        ..Default::default()
    }
}

fn closed(i: &SessionInfo) -> pb::Session {
    pb::Session {
        state: State::Closed as i32,
        end: serde_json::to_value(&i.end)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        duration_ms: i.duration_ms,
        events: i.events,
        lost_events: i.loss.lost(),
        complete: i.complete,
        ..observing(&i.started)
    }
}

fn internal(e: anyhow::Error) -> Status {
    Status::internal(format!("{e:#}"))
}

fn not_found(container: &str) -> Status {
    Status::not_found(format!(
        "no session for container {container:?}: start one with `cimplifierctl observe {container}`"
    ))
}

fn paths(list: &[String], field: &str) -> Result<Vec<ContainerPath>, Status> {
    list.iter()
        .map(|s| {
            ContainerPath::new(s).ok_or_else(|| {
                Status::invalid_argument(format!(
                    "{field} {s:?}: give an absolute path inside the container"
                ))
            })
        })
        .collect()
}

type EmitStream = Pin<Box<dyn Stream<Item = Result<pb::EmitProgress, Status>> + Send>>;

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
        if req.container.is_empty() || req.container.len() > 256 {
            return Err(Status::invalid_argument(
                "container: give a container name or id (at most 256 characters)",
            ));
        }
        if req.restart && req.attach {
            return Err(Status::invalid_argument(
                "restart and attach exclude each other",
            ));
        }
        let docker = crate::docker::connect().map_err(internal)?;
        let details = docker
            .inspect_container(&req.container, None)
            .await
            .map_err(|_| {
                Status::not_found(format!(
                    "container {:?} not found by the Docker engine (see `docker ps -a`)",
                    req.container
                ))
            })?;
        let name = details
            .name
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_owned();
        if self
            .running
            .lock()
            .expect("sessions lock")
            .contains_key(&name)
        {
            return Err(Status::already_exists(format!(
                "{name} is already being observed; `cimplifierctl stop {name}` ends it"
            )));
        }
        let opts = ObserveOptions {
            container: name.clone(),
            state_dir: self.state_dir.clone(),
            duration: (req.duration_seconds > 0)
                .then(|| std::time::Duration::from_secs(req.duration_seconds.into())),
            restart: req.restart,
            attach: req.attach,
            tracer: self.tracer.clone(),
        };
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (started_tx, started_rx) = oneshot::channel::<Started>();
        let failed = self.failed.clone();
        let running = self.running.clone();
        let task_name = name.clone();
        let done = tokio::spawn(async move {
            let result = observe(
                opts,
                async move {
                    let _ = stop_rx.await;
                },
                move |s| {
                    let _ = started_tx.send(s.clone());
                },
            )
            .await;
            if let Err(e) = &result {
                failed
                    .lock()
                    .expect("failed lock")
                    .insert(task_name.clone(), format!("{e:#}"));
            }
            // A session that ended by itself (duration, death) is closed.
            running.lock().expect("sessions lock").remove(&task_name);
            result
        });
        match started_rx.await {
            Ok(started) => {
                self.failed.lock().expect("failed lock").remove(&name);
                let session = observing(&started);
                let mut running = self.running.lock().expect("sessions lock");
                if !done.is_finished() {
                    running.insert(
                        name,
                        Running {
                            started,
                            stop: Some(stop_tx),
                            done: Some(done),
                        },
                    );
                }
                Ok(Response::new(session))
            }
            Err(_) => match done.await {
                Ok(Err(e)) => Err(Status::failed_precondition(format!("{e:#}"))),
                Ok(Ok(_)) => Err(Status::internal("observation ended before it began")),
                Err(e) => Err(Status::internal(format!("observation task failed: {e}"))),
            },
        }
    }

    async fn stop_observing(
        &self,
        request: Request<pb::StopObservingRequest>,
    ) -> Result<Response<pb::Session>, Status> {
        let container = request.into_inner().container;
        let entry = self
            .running
            .lock()
            .expect("sessions lock")
            .remove(&container);
        let Some(mut r) = entry else {
            return match self.closed(&container) {
                Some(info) => Ok(Response::new(closed(&info))),
                None => Err(not_found(&container)),
            };
        };
        if let Some(stop) = r.stop.take() {
            let _ = stop.send(());
        }
        let done = r.done.take().expect("a running session has its task");
        match done.await {
            Ok(Ok(info)) => Ok(Response::new(closed(&info))),
            Ok(Err(e)) => Err(internal(e)),
            Err(e) => Err(Status::internal(format!("observation task failed: {e}"))),
        }
    }

    async fn list_sessions(
        &self,
        _: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        let mut sessions: HashMap<String, pb::Session> = HashMap::new();
        if let Ok(dirs) = std::fs::read_dir(self.state_dir.join("sessions")) {
            for d in dirs.flatten() {
                let name = d.file_name().to_string_lossy().into_owned();
                if let Some(info) = self.closed(&name) {
                    sessions.insert(name, closed(&info));
                }
            }
        }
        for (name, error) in self.failed.lock().expect("failed lock").iter() {
            sessions.insert(
                name.clone(),
                pb::Session {
                    container: name.clone(),
                    state: State::Failed as i32,
                    error: error.clone(),
                    ..Default::default()
                },
            );
        }
        for (name, r) in self.running.lock().expect("sessions lock").iter() {
            sessions.insert(name.clone(), observing(&r.started));
        }
        let mut sessions: Vec<pb::Session> = sessions.into_values().collect();
        sessions.sort_by(|a, b| a.container.cmp(&b.container));
        Ok(Response::new(pb::ListSessionsResponse { sessions }))
    }

    async fn get_session(
        &self,
        request: Request<pb::GetSessionRequest>,
    ) -> Result<Response<pb::Session>, Status> {
        let container = request.into_inner().container;
        if let Some(r) = self.running.lock().expect("sessions lock").get(&container) {
            return Ok(Response::new(observing(&r.started)));
        }
        if let Some(error) = self.failed.lock().expect("failed lock").get(&container) {
            return Ok(Response::new(pb::Session {
                container: container.clone(),
                state: State::Failed as i32,
                error: error.clone(),
                ..Default::default()
            }));
        }
        self.closed(&container)
            .map(|i| Response::new(closed(&i)))
            .ok_or_else(|| not_found(&container))
    }

    async fn get_report(
        &self,
        request: Request<pb::GetReportRequest>,
    ) -> Result<Response<pb::Report>, Status> {
        let req = request.into_inner();
        if self.closed(&req.container).is_none() {
            return Err(not_found(&req.container));
        }
        let trace = SessionDir::new(&self.state_dir, &req.container).trace();
        let report = tokio::task::spawn_blocking(move || analyze(&Input::Events(trace), None))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(internal)?;
        let body = match pb::get_report_request::Format::try_from(req.format) {
            Ok(pb::get_report_request::Format::Dot) => report.dot(),
            _ => serde_json::to_string_pretty(&report)
                .map_err(|e| Status::internal(e.to_string()))?,
        };
        Ok(Response::new(pb::Report { body }))
    }

    type EmitStream = EmitStream;

    async fn emit(
        &self,
        request: Request<pb::EmitRequest>,
    ) -> Result<Response<Self::EmitStream>, Status> {
        let req = request.into_inner();
        let Some(info) = self.closed(&req.container) else {
            return Err(not_found(&req.container));
        };
        if req.tag.is_empty() && req.oci_dir.is_empty() {
            return Err(Status::invalid_argument("give a tag, an oci_dir, or both"));
        }
        if !info.complete && !req.allow_incomplete {
            return Err(Status::failed_precondition(format!(
                "the session of {} lost {} events, so the image could miss files it needs; \
                 observe again, or emit anyway with --allow-incomplete (the report will say so)",
                info.started.container_name,
                info.loss.lost()
            )));
        }
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
        slim.exclude = paths(&req.exclude, "exclude")?;
        let opts = EmitOptions {
            container: req.container,
            state_dir: self.state_dir.clone(),
            tag: (!req.tag.is_empty()).then_some(req.tag),
            oci_dir: (!req.oci_dir.is_empty()).then(|| PathBuf::from(req.oci_dir)),
            slim,
            allow_incomplete: req.allow_incomplete,
            list_removed: req.list_removed,
        };
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            let steps = tx.clone();
            let progress = move |step: &str| {
                let _ = steps.try_send(Ok(pb::EmitProgress {
                    update: Some(pb::emit_progress::Update::Step(step.to_owned())),
                }));
            };
            let result = emit(&opts, &progress).await;
            let last = result.and_then(|report| {
                let path = SessionDir::new(&opts.state_dir, &opts.container)
                    .path()
                    .join("emit-report.json");
                let json = serde_json::to_string_pretty(&report)?;
                std::fs::write(&path, &json)?;
                Ok(json)
            });
            let _ = tx
                .send(match last {
                    Ok(json) => Ok(pb::EmitProgress {
                        update: Some(pb::emit_progress::Update::ReportJson(json)),
                    }),
                    Err(e) => Err(internal(e)),
                })
                .await;
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}
