//! Observation sessions: what `cimplifierctl observe` records about one
//! container, kept in a state directory for `emit`.
//!
//! A session covers the container from its first exec: when the container
//! is not running, or `restart` is asked for, the tracer watches Docker's
//! parent cgroup before the engine starts the container, so the entrypoint's
//! exec and everything start-up reads are recorded; then the watch narrows
//! to the container's own cgroup. Events of other containers that start in
//! that window are dropped by cgroup id. A container that dies ends the
//! session, which is closed with its summary like any other.

use std::collections::HashSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::trace::cgroup::{cgroup_id, cgroup2_mount, cgroups_below};
use crate::trace::log::{EventLogWriter, FORMAT, LogHeader, VERSION};
use crate::trace::{CgroupId, LossCounters, Tracer, TracerConfig};

/// Where sessions live unless told otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/cimplifier";

/// How a session ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// Stopped by the user (Ctrl-C, SIGTERM).
    Stopped,
    /// `--duration` passed.
    Duration,
    /// The container exited.
    ContainerDied,
}

/// A session's record, `session.json` beside its event log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    #[serde(flatten)]
    pub started: Started,
    pub duration_ms: u64,
    pub end: EndReason,
    pub events: u64,
    pub loss: LossCounters,
    /// No events lost.
    pub complete: bool,
}

/// An observation that has begun: what a session knows from its start.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Started {
    pub container_id: String,
    pub container_name: String,
    /// The image the container runs, by id (`sha256:…`).
    pub image_id: String,
    /// The image as the container was created from it (`nginx:latest`).
    pub image_ref: String,
    /// True when the trace starts before the container's first exec.
    pub from_first_exec: bool,
    pub started_unix_ms: u64,
}

/// The files of one session.
#[derive(Clone, Debug)]
pub struct SessionDir(PathBuf);

impl SessionDir {
    /// The session of `container` (name or id) under `state_dir`.
    pub fn new(state_dir: &Path, container: &str) -> Self {
        Self(
            state_dir
                .join("sessions")
                .join(container.trim_start_matches('/')),
        )
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn trace(&self) -> PathBuf {
        self.0.join("trace.jsonl")
    }

    pub fn info_path(&self) -> PathBuf {
        self.0.join("session.json")
    }

    pub fn info(&self) -> Result<SessionInfo> {
        let path = self.info_path();
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "no finished observation session at {}: run `cimplifierctl observe CONTAINER` first",
                path.display()
            )
        })?;
        serde_json::from_str(&text)
            .with_context(|| format!("{}: not a session record", path.display()))
    }
}

#[derive(Clone, Debug)]
pub struct ObserveOptions {
    /// Container name or id.
    pub container: String,
    pub state_dir: PathBuf,
    pub duration: Option<Duration>,
    /// Restart a running container so its start-up is observed.
    pub restart: bool,
    /// Observe a running container from now on, without its start-up.
    pub attach: bool,
    pub tracer: TracerConfig,
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

/// Ids of the cgroup at `dir` and of every cgroup below it.
fn cgroup_ids_below(dir: &Path) -> HashSet<CgroupId> {
    cgroups_below(dir)
        .iter()
        .filter_map(|d| cgroup_id(d).ok())
        .collect()
}

/// Observes one container until `stop` resolves, `duration` passes or the
/// container dies, and writes the session. `on_started` hears when the
/// observation has begun. Progress goes to `tracing`.
pub async fn observe(
    opts: ObserveOptions,
    stop: impl Future<Output = ()>,
    on_started: impl FnOnce(&Started),
) -> Result<SessionInfo> {
    let docker = crate::docker::connect()?;
    let details = docker
        .inspect_container(&opts.container, None)
        .await
        .with_context(|| {
            format!(
                "container {:?} not found by the Docker engine (see `docker ps -a`)",
                opts.container
            )
        })?;
    let id = details.id.clone().unwrap_or_default();
    let name = details
        .name
        .clone()
        .unwrap_or_default()
        .trim_start_matches('/')
        .to_owned();
    let running = details.state.as_ref().and_then(|s| s.running) == Some(true);
    if running && !opts.restart && !opts.attach {
        bail!(
            "container {name} is already running, so its start-up (which reads its configuration \
             and loads its libraries) cannot be observed: pass --restart to restart it under \
             observation, or --attach to observe it from now on"
        );
    }
    let from_first_exec = !running || opts.restart;
    let session = SessionDir::new(&opts.state_dir, &name);
    std::fs::create_dir_all(session.path()).with_context(|| {
        format!(
            "creating the session directory {}",
            session.path().display()
        )
    })?;
    let cgroup_parent = details
        .host_config
        .as_ref()
        .and_then(|h| h.cgroup_parent.clone());

    let mut tracer = Tracer::load(opts.tracer.clone())?;
    let mut events = tracer.events()?;
    let mut die_events = docker.events(Some(bollard::query_parameters::EventsOptions {
        filters: Some(
            [
                ("container".to_owned(), vec![id.clone()]),
                ("event".to_owned(), vec!["die".to_owned()]),
            ]
            .into_iter()
            .collect(),
        ),
        ..Default::default()
    }));

    // Watch before the container starts, then narrow to its own cgroup.
    let parent_watch = if from_first_exec {
        Some(tracer.watch_cgroup(&docker_parent_cgroup(cgroup_parent.as_deref())?)?)
    } else {
        None
    };
    if running && opts.restart {
        tracing::info!(container = %name, "restarting under observation");
        docker
            .restart_container(
                &id,
                None::<bollard::query_parameters::RestartContainerOptions>,
            )
            .await
            .with_context(|| format!("restarting container {name}"))?;
    } else if !running {
        tracing::info!(container = %name, "starting under observation");
        docker
            .start_container(
                &id,
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await
            .with_context(|| format!("starting container {name}"))?;
    }
    let info = crate::docker::resolve_container(&docker, &id).await?;
    let container_cgroup = info.cgroup_path.clone();
    let watched = tracer.watch_cgroup(&container_cgroup)?;
    if let Some(parent) = &parent_watch {
        tracer.unwatch(parent)?;
    }
    let mut members = cgroup_ids_below(&container_cgroup);

    let started_unix_ms = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64;
    let header = LogHeader {
        format: FORMAT.into(),
        version: VERSION,
        target: format!("container {name} ({id})"),
        cgroup: cgroup_id(&container_cgroup)?,
        cgroup_path: container_cgroup.clone(),
        started_unix_ms,
    };
    let mut log = EventLogWriter::create(&session.trace(), header)?;
    tracing::info!(container = %name, log = %session.trace().display(), "observing");
    let image_id = details.image.clone().unwrap_or_default();
    let image_ref = details
        .config
        .as_ref()
        .and_then(|c| c.image.clone())
        .unwrap_or_default();
    let begun = Started {
        container_id: id,
        container_name: name.clone(),
        image_id,
        image_ref,
        from_first_exec,
        started_unix_ms,
    };
    on_started(&begun);

    let started = Instant::now();
    let deadline = async {
        match opts.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(stop, deadline);
    let mut progress = tokio::time::interval(Duration::from_secs(5));
    progress.tick().await;
    let mut dropped_foreign = 0u64;
    let keep = |e: &crate::trace::Event, members: &mut HashSet<CgroupId>| {
        if members.contains(&e.cgroup) {
            return true;
        }
        // A cgroup created below the container's since the last look.
        *members = cgroup_ids_below(&container_cgroup);
        members.contains(&e.cgroup)
    };
    let end = loop {
        tokio::select! {
            biased;
            _ = &mut stop => break EndReason::Stopped,
            _ = &mut deadline => break EndReason::Duration,
            Some(_) = die_events.next() => break EndReason::ContainerDied,
            _ = progress.tick() => {
                let c = tracer.counters()?;
                tracing::info!(events = log.events_written(), lost = c.loss.lost(), "observing {name}");
            }
            event = events.next_event() => match event {
                Some(e) if keep(&e, &mut members) => log.write(&e)?,
                Some(_) => dropped_foreign += 1,
                None => break EndReason::Stopped,
            },
        }
    };
    if tracer.unwatch(&watched).is_err() {
        tracing::debug!("the container's cgroup is gone");
    }
    while let Ok(Some(e)) =
        tokio::time::timeout(Duration::from_millis(200), events.next_event()).await
    {
        if keep(&e, &mut members) {
            log.write(&e)?;
        }
    }
    if dropped_foreign > 0 {
        tracing::debug!(
            dropped_foreign,
            "events of other containers started meanwhile"
        );
    }
    let loss = tracer.counters()?.loss;
    let duration_ms = started.elapsed().as_millis() as u64;
    let summary = log.finish(duration_ms, loss)?;
    let info = SessionInfo {
        started: begun,
        duration_ms,
        end,
        events: summary.events,
        loss,
        complete: summary.complete,
    };
    let path = session.info_path();
    std::fs::write(&path, serde_json::to_vec_pretty(&info)?)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(info)
}
