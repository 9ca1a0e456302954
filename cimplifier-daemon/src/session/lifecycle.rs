//! Lifecycle steps inside a session: a graceful restart, a crash (SIGKILL)
//! and start, a configuration reload (SIGHUP). They run code paths a plain
//! request workload never reaches (shutdown hooks, crash recovery, reload),
//! so what they use belongs in the model too. The session goes on across
//! them, and each start is watched from its first exec, as the first was.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::observer::{Observer, Route};
use crate::docker::container;
use crate::trace::cgroup::cgroup_id;

/// One step of a container's life that a workload alone does not exercise.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LifecycleStep {
    /// `docker restart`: the stop signal, the engine's grace period, start.
    Restart,
    /// SIGKILL, then start: what recovery after a crash reads and repairs.
    KillStart,
    /// SIGHUP: what a configuration reload reads.
    Reload,
}

impl LifecycleStep {
    /// Every step, in the order `observe --lifecycle` and `verify` run them.
    pub const ALL: [LifecycleStep; 3] = [Self::Restart, Self::KillStart, Self::Reload];

    pub fn name(self) -> &'static str {
        match self {
            Self::Restart => "restart",
            Self::KillStart => "kill-start",
            Self::Reload => "reload",
        }
    }

    /// What the step does, for progress lines.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Restart => "a graceful restart (stop signal, then start)",
            Self::KillStart => "a crash: SIGKILL, then start",
            Self::Reload => "a configuration reload: SIGHUP",
        }
    }

    /// Whether the container dies during the step (its `die` does not end
    /// the session).
    pub fn stops(self) -> bool {
        !matches!(self, Self::Reload)
    }
}

impl std::fmt::Display for LifecycleStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A step asked of a running session; the reply says when it is done.
pub(super) struct StepRequest {
    pub step: LifecycleStep,
    pub reply: oneshot::Sender<Result<()>>,
}

/// How a step ended, for the session loop.
pub(super) struct StepOutcome {
    pub step: LifecycleStep,
    pub reply: oneshot::Sender<Result<()>>,
    /// Whether the container did stop (so one `die` was its).
    pub stopped: bool,
    pub result: Result<()>,
}

/// What a step needs of its session.
pub(super) struct StepContext {
    pub observer: Arc<Observer>,
    pub route: Arc<Route>,
    pub docker: crate::docker::Docker,
    pub id: String,
    pub name: String,
    /// The container's cgroup (watched by the session), which a start
    /// makes anew at the same path.
    pub cgroup: std::path::PathBuf,
}

/// How long the engine has to remove a stopped container's cgroup.
const CGROUP_GONE_WAIT: Duration = Duration::from_secs(10);

/// Runs `request`'s step on the container; the session loop goes on
/// reading events meanwhile.
pub(super) async fn perform(cx: Arc<StepContext>, request: StepRequest) -> StepOutcome {
    let StepRequest { step, reply } = request;
    let mut stopped = false;
    let result = run(&cx, step, &mut stopped).await;
    StepOutcome {
        step,
        reply,
        stopped,
        result: result.with_context(|| format!("{step} of container {}", cx.name)),
    }
}

async fn run(cx: &StepContext, step: LifecycleStep, stopped: &mut bool) -> Result<()> {
    let old_id = cgroup_id(&cx.cgroup).ok();
    match step {
        LifecycleStep::Reload => {
            tracing::info!(container = %cx.name, "lifecycle: SIGHUP");
            return container::kill(&cx.docker, &cx.id, &cx.name, "HUP").await;
        }
        LifecycleStep::Restart => {
            tracing::info!(container = %cx.name, "lifecycle: stopping gracefully");
            // The engine's own grace period: the container's stop timeout.
            container::stop(&cx.docker, &cx.id, &cx.name).await?;
        }
        LifecycleStep::KillStart => {
            tracing::info!(container = %cx.name, "lifecycle: SIGKILL");
            container::kill(&cx.docker, &cx.id, &cx.name, "KILL").await?;
        }
    }
    *stopped = true;
    wait_stopped(cx).await?;
    // The engine removes the cgroup once the container is down; the start
    // makes it at the same path, which is made first and watched so the
    // start is seen from its first exec.
    wait_cgroup_gone(&cx.cgroup, old_id).await?;
    match std::fs::create_dir(&cx.cgroup) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(e).with_context(|| {
                format!("making the container's cgroup {} anew", cx.cgroup.display())
            });
        }
    }
    cx.observer.renew(&cx.cgroup)?;
    cx.observer.claim(&cx.route, &cx.cgroup);
    tracing::info!(container = %cx.name, "lifecycle: starting under observation");
    container::start(&cx.docker, &cx.id, &cx.name).await
}

/// Waits until the engine reports the container not running.
async fn wait_stopped(cx: &StepContext) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let d = container::inspect(&cx.docker, &cx.id).await?;
        if d.state.as_ref().and_then(|s| s.running) != Some(true) {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!("it was still running a minute after it was stopped");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the cgroup at `dir` with id `old` is gone (removed, or made
/// anew with another id).
async fn wait_cgroup_gone(dir: &Path, old: Option<crate::trace::CgroupId>) -> Result<()> {
    let deadline = Instant::now() + CGROUP_GONE_WAIT;
    while old.is_some() && cgroup_id(dir).ok() == old {
        if Instant::now() > deadline {
            anyhow::bail!(
                "the engine did not remove the stopped container's cgroup {} within {:?}",
                dir.display(),
                CGROUP_GONE_WAIT
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
