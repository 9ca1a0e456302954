//! Driving a workload against an observed container (`observe --exec`,
//! `verify`): wait until it accepts connections, run CMD, then put the
//! container through the lifecycle steps, with CMD again after each. A
//! second pass takes paths the first cannot, since the first made the data.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::Context;
use cimplifier::api::pb;
use cimplifier::api::workload::{self, Workload};
use nix::sys::signal::Signal;

use crate::daemon::{Client, status};

/// How long a stopped workload has between SIGTERM and SIGKILL.
const WORKLOAD_GRACE: Duration = Duration::from_secs(5);

/// How long a reloaded container is given before the workload runs again:
/// a reload is asynchronous, and nothing says when it is done.
const RELOAD_SETTLE: Duration = Duration::from_secs(1);

/// How the workload ended.
pub enum Ended {
    Exited(std::process::ExitStatus),
    /// By a signal to cimplifierctl; the status is the workload's, if it
    /// had started.
    Interrupted(Signal, Option<std::process::ExitStatus>),
}

/// One run of the workload: the first, or the one after a lifecycle step.
pub struct Pass {
    /// None for the first pass.
    pub after: Option<pb::LifecycleStep>,
    pub ended: Ended,
}

impl Pass {
    pub fn name(&self) -> String {
        match self.after {
            None => "first pass".into(),
            Some(step) => format!("after {}", step_name(step)),
        }
    }

    pub fn succeeded(&self) -> bool {
        matches!(self.ended, Ended::Exited(s) if s.success())
    }
}

/// The lifecycle steps, in the order they run.
pub const STEPS: [pb::LifecycleStep; 3] = [
    pb::LifecycleStep::Restart,
    pb::LifecycleStep::KillStart,
    pb::LifecycleStep::Reload,
];

pub fn step_name(step: pb::LifecycleStep) -> &'static str {
    match step {
        pb::LifecycleStep::Restart => "restart",
        pb::LifecycleStep::KillStart => "kill-start",
        pb::LifecycleStep::Reload => "reload",
        pb::LifecycleStep::Unspecified => "?",
    }
}

fn step_doing(step: pb::LifecycleStep) -> &'static str {
    match step {
        pb::LifecycleStep::Restart => "a graceful restart (stop signal, then start)",
        pb::LifecycleStep::KillStart => "a crash: SIGKILL, then start",
        pb::LifecycleStep::Reload => "a configuration reload: SIGHUP",
        pb::LifecycleStep::Unspecified => "?",
    }
}

/// What drives the container.
pub struct Exercise<'a> {
    pub api: Client,
    /// The observed container (its session's name).
    pub container: &'a str,
    /// None: only the steps, each waiting until the container accepts
    /// connections again.
    pub cmd: Option<&'a str>,
    pub ready_timeout: Duration,
    /// CMD's stdout goes to stderr (ours holds JSON).
    pub json: bool,
    /// The lifecycle steps to run after the first pass.
    pub steps: &'a [pb::LifecycleStep],
    /// Where the container's network namespace is when it has only
    /// loopback (a containerd task without CNI): its ports are probed and
    /// CMD runs inside it, against 127.0.0.1.
    pub netns: Option<NetnsOf>,
}

/// The network namespace of a containerd task's init, looked up at each
/// pass: a restart gives the task a new one.
#[derive(Clone)]
pub struct NetnsOf {
    pub containerd: cimplifier::engine::containerd::Containerd,
    pub at: cimplifier::engine::containerd::ContainerRef,
}

impl NetnsOf {
    pub async fn path(&self) -> anyhow::Result<std::path::PathBuf> {
        let pid = cimplifier::engine::containerd::plan::task_pid(&self.containerd, &self.at)
            .await?
            .with_context(|| {
                format!(
                    "the task of {} is not running, so its network namespace is gone",
                    self.at
                )
            })?;
        Ok(std::path::PathBuf::from(format!("/proc/{pid}/ns/net")))
    }
}

/// Ctrl-C or SIGTERM, listened for from now on (so one that comes while
/// the daemon is still starting the container is not lost).
pub fn interruption() -> anyhow::Result<impl Future<Output = Signal>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => Signal::SIGINT,
            _ = term.recv() => Signal::SIGTERM,
        }
    })
}

/// Resolves when the session is no longer observing (its container died,
/// say), with how it ended.
pub async fn session_ended(mut api: Client, name: &str) -> String {
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Ok(list) = api.list_sessions(pb::ListSessionsRequest {}).await else {
            continue;
        };
        match list
            .into_inner()
            .sessions
            .into_iter()
            .find(|s| s.container == name)
        {
            Some(s) if s.state == pb::session::State::Observing as i32 => {}
            Some(s) if !s.end.is_empty() => return s.end,
            Some(s) if !s.error.is_empty() => return s.error,
            _ => return "closed".into(),
        }
    }
}

/// Where `target` is reached, or why it cannot be.
pub fn address(name: &str, target: Option<&pb::Target>) -> anyhow::Result<IpAddr> {
    let target = target.with_context(|| {
        format!(
            "the daemon did not say where container {name} is (a cimplifierd older than this \
             cimplifierctl?): update cimplifierd, or observe without --exec"
        )
    })?;
    match target.ip_address.parse() {
        Ok(a) => Ok(a),
        Err(_) if target.network_mode == "none" => anyhow::bail!(
            "container {name} has no network (--network none), so a workload cannot reach it: \
             run it with a network, or observe without --exec and drive it yourself"
        ),
        Err(_) => anyhow::bail!(
            "container {name} (network {}) has no IP address: it is not running any more; \
             `cimplifierctl sessions` shows how its session ended",
            target.network_mode
        ),
    }
}

impl Exercise<'_> {
    /// Runs the first pass, then each lifecycle step with a pass after it,
    /// until a pass fails or cimplifierctl is told to stop. The passes run
    /// are returned, the last one deciding the outcome.
    pub async fn run(
        &self,
        target: Option<&pb::Target>,
        stop: impl Future<Output = Signal>,
    ) -> anyhow::Result<Vec<Pass>> {
        tokio::pin!(stop);
        let mut passes = Vec::new();
        let mut target = target.cloned();
        for after in std::iter::once(None).chain(self.steps.iter().copied().map(Some)) {
            if let Some(step) = after {
                eprintln!(
                    "lifecycle: {} of {}: {}",
                    step_name(step),
                    self.container,
                    step_doing(step)
                );
                let mut api = self.api.clone();
                let request = pb::LifecycleRequest {
                    container: self.container.to_owned(),
                    step: step as i32,
                };
                let moved = tokio::select! {
                    r = api.lifecycle(request) => r.map_err(status).with_context(|| {
                        format!("the {} of {}", step_name(step), self.container)
                    })?,
                    sig = &mut stop => {
                        passes.push(Pass { after, ended: Ended::Interrupted(sig, None) });
                        return Ok(passes);
                    }
                };
                // In a namespace of its own, the ports stay the image's.
                if self.netns.is_none() {
                    target = Some(moved.into_inner());
                }
                if step == pb::LifecycleStep::Reload {
                    tokio::time::sleep(RELOAD_SETTLE).await;
                }
            }
            let ended = self.pass(target.as_ref(), &mut stop).await?;
            let pass = Pass { after, ended };
            let go_on = pass.succeeded();
            if !go_on && after.is_some() {
                eprintln!(
                    "cimplifierctl: the workload failed {}: the container does not survive it",
                    pass.name()
                );
            }
            passes.push(pass);
            if !go_on {
                break;
            }
        }
        Ok(passes)
    }

    /// Waits until the container can be reached, then runs CMD until it
    /// exits or cimplifierctl is told to stop.
    async fn pass(
        &self,
        target: Option<&pb::Target>,
        stop: &mut std::pin::Pin<&mut impl Future<Output = Signal>>,
    ) -> anyhow::Result<Ended> {
        let name = self.container;
        let netns = match &self.netns {
            Some(of) => Some(of.path().await?),
            None => None,
        };
        let address = match &netns {
            Some(_) => IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            None => address(name, target)?,
        };
        let ports: Vec<u16> = target
            .map(|t| t.tcp_ports.as_slice())
            .unwrap_or_default()
            .iter()
            .filter_map(|&p| u16::try_from(p).ok())
            .collect();
        if !ports.is_empty() && !self.ready_timeout.is_zero() {
            let list = ports
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            eprintln!("waiting until {name} accepts connections on TCP port(s) {list}");
            let never = tokio::select! {
                never = async {
                    match &netns {
                        Some(ns) => workload::wait_for_ports_in(ns, address, &ports, self.ready_timeout).await,
                        None => Ok(workload::wait_for_ports(address, &ports, self.ready_timeout).await),
                    }
                } => never?,
                sig = &mut *stop => return Ok(Ended::Interrupted(sig, None)),
                end = session_ended(self.api.clone(), name) => anyhow::bail!(
                    "the session of {name} ended ({end}) before its ports accepted connections, \
                     so the workload was not run"
                ),
            };
            if !never.is_empty() {
                eprintln!(
                    "cimplifierctl: warning: {name} did not accept connections on port(s) {never:?} \
                     within {}; running the workload anyway",
                    humantime::format_duration(self.ready_timeout)
                );
            }
        }
        // A signal that came while the daemon was starting the container.
        tokio::select! {
            biased;
            sig = &mut *stop => return Ok(Ended::Interrupted(sig, None)),
            _ = std::future::ready(()) => {}
        }
        let Some(cmd) = self.cmd else {
            use std::os::unix::process::ExitStatusExt;
            return Ok(Ended::Exited(std::process::ExitStatus::from_raw(0)));
        };
        eprintln!(
            "running the workload: sh -c {cmd:?} with {}={address}",
            workload::TARGET_VAR
        );
        let mut w = Workload::spawn_in(cmd, address, name, self.json, netns.as_deref())?;
        tokio::select! {
            status = w.wait() => Ok(Ended::Exited(status?)),
            sig = &mut *stop => {
                eprintln!("{sig}: stopping the workload and closing the session");
                let status = w.stop(WORKLOAD_GRACE).await?;
                Ok(Ended::Interrupted(sig, Some(status)))
            }
        }
    }
}

/// The exit code and description of how a pass ended.
pub fn outcome(ended: &Ended) -> (u8, String) {
    match ended {
        Ended::Exited(s) => (workload::exit_code(*s), workload::describe(*s)),
        Ended::Interrupted(sig, s) => (
            128 + *sig as u8,
            match s {
                Some(s) => format!("was stopped on {sig} ({})", workload::describe(*s)),
                None => format!("did not start: {sig} came first"),
            },
        ),
    }
}
