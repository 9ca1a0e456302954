//! A session as the store keeps it: its record, how it began and ended,
//! its segments and its gaps.

use serde::{Deserialize, Serialize};

use crate::docker::run::RunSettings;
use crate::engine::{Engine, docker};
use crate::trace::LossCounters;

/// How many programs of another ABI a session names (it counts them all).
pub const FOREIGN_NAMED: usize = 16;

/// How a session ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// Stopped by the user (StopObserving, SIGTERM of the daemon).
    Stopped,
    /// `--duration` passed.
    Duration,
    /// The container exited.
    ContainerDied,
    /// The daemon stopped without closing the session, and the container
    /// was gone when it came back.
    Interrupted,
    /// A checkpoint could not be written (a full or read-only state
    /// directory): the session stopped observing; what it saw after its
    /// last checkpoint is not stored.
    Failed,
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

/// What a session is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    Observing,
    Closed,
}

/// A stretch of events recorded in one go: one observation, or one resumed
/// after a restart of the daemon, or one source of a merge. Process ids
/// mean nothing across segments, so the model starts its process table
/// afresh at each.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    /// Sequence number of the segment's first event.
    pub first_event: u64,
    pub started_unix_ms: u64,
    /// True when the segment starts before the container's first exec.
    pub from_first_exec: bool,
    /// Where the events came from: "observed", "resumed after a daemon
    /// restart", "merged from SESSION".
    pub origin: String,
}

/// Time in which nothing was observed although the session was open.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    pub from_unix_ms: u64,
    pub to_unix_ms: u64,
    pub reason: String,
}

/// A session as the store keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The session's name: the container's name, or the name given to a
    /// merge or an import.
    pub name: String,
    /// Key of the session's events.
    pub id: u64,
    #[serde(flatten)]
    pub started: Started,
    pub state: SessionState,
    /// How a closed session ended.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub end: Option<EndReason>,
    /// Time observed, summed over segments.
    pub duration_ms: u64,
    /// Events stored.
    pub events: u64,
    /// Events not stored because an identical earlier one (same executable,
    /// same uses) already said all they say (see `model::uses_of`).
    #[serde(default)]
    pub aggregated: u64,
    /// Repeats the kernel folded before sending (`syscalls::foldable`):
    /// what they add, an earlier call of the same process added.
    #[serde(default)]
    pub kernel_folded: u64,
    pub loss: LossCounters,
    /// The programs built for another ABI that ran, as `PATH: ABI`: at
    /// most [`FOREIGN_NAMED`] of those `loss.foreign_programs` counts.
    #[serde(skip_serializing_if = "std::collections::BTreeSet::is_empty", default)]
    pub foreign_programs: std::collections::BTreeSet<String>,
    pub segments: Vec<Segment>,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub gaps: Vec<Gap>,
    /// When the last events were made durable.
    pub checkpoint_unix_ms: u64,
    /// How the container was run (command, environment, ports...), from
    /// the engine when the session began. None in sessions recorded before
    /// the daemon kept it: emit then has only the image's configuration.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub run: Option<Box<RunSettings>>,
    /// Why a merged session has no `run`: its sources ran the image in
    /// different ways (emit says so and uses the image's configuration).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub run_not_merged: Option<String>,
    /// The lifecycle steps the container went through while observed, in
    /// order: `verify` puts the output through the same.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub lifecycle: Vec<LifecycleStep>,
    /// The containerd container observed, when the engine was containerd
    /// (else Docker's): emit reads the image from, and loads the output
    /// into, its namespace.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub containerd: Option<crate::engine::containerd::ContainerRef>,
}

impl SessionRecord {
    /// The engine of the session's container: containerd's when the
    /// session records a namespace, else the engine behind the Docker API.
    pub async fn engine(&self) -> Engine {
        if self.containerd.is_some() {
            return Engine::Containerd;
        }
        match docker::connect() {
            Ok(d) => match docker::CgroupLayout::of(&d).await {
                docker::CgroupLayout::Podman => Engine::Podman,
                docker::CgroupLayout::Docker => Engine::Docker,
            },
            Err(_) => Engine::Docker,
        }
    }

    /// Names the programs of another ABI in `named` (`PATH: ABI`), as many
    /// as [`FOREIGN_NAMED`] allows: `loss.foreign_programs` counts them all.
    pub fn name_foreign_programs<'a>(&mut self, named: impl IntoIterator<Item = &'a String>) {
        for program in named {
            if self.foreign_programs.len() >= FOREIGN_NAMED {
                break;
            }
            self.foreign_programs.insert(program.clone());
        }
    }

    /// A session beginning now: observing, one segment, nothing seen yet.
    pub fn new(name: String, id: u64, started: Started) -> Self {
        let now = started.started_unix_ms;
        Self {
            segments: vec![Segment {
                first_event: 0,
                started_unix_ms: now,
                from_first_exec: started.from_first_exec,
                origin: "observed".into(),
            }],
            name,
            id,
            started,
            state: SessionState::Observing,
            end: None,
            duration_ms: 0,
            events: 0,
            aggregated: 0,
            kernel_folded: 0,
            loss: LossCounters::default(),
            foreign_programs: Default::default(),
            gaps: vec![],
            checkpoint_unix_ms: now,
            lifecycle: vec![],
            containerd: None,
            run: None,
            run_not_merged: None,
        }
    }

    /// Nothing makes the session incomplete (see
    /// [`SessionRecord::incompleteness`]): the model is the whole truth.
    pub fn complete(&self) -> bool {
        self.incompleteness().is_none()
    }

    /// Why the session is not complete, in words; None when it is.
    pub fn incompleteness(&self) -> Option<String> {
        let mut why = Vec::new();
        if !self.loss.is_complete() {
            why.push(format!("lost {} events", self.loss.lost()));
        }
        if !self.gaps.is_empty() {
            let secs: u64 = self
                .gaps
                .iter()
                .map(|g| g.to_unix_ms.saturating_sub(g.from_unix_ms))
                .sum::<u64>()
                / 1000;
            why.push(format!(
                "has {} gap(s) of {secs} s in all when nothing was observed ({})",
                self.gaps.len(),
                self.gaps[0].reason
            ));
        }
        if self.loss.unreadable_names > 0 {
            why.push(format!(
                "has {} name(s) (paths, argv, socket addresses) the tracer could not read \
                 from the programs' memory, so what those calls used is unknown \
                 (`cimplifierctl sessions` counts them)",
                self.loss.unreadable_names
            ));
        }
        if self.loss.foreign_programs > 0 {
            let mut named: Vec<&str> = self.foreign_programs.iter().map(String::as_str).collect();
            if named.is_empty() {
                named.push("32-bit x86 or x32, see the `foreign_abi` events");
            } else if (named.len() as u64) < self.loss.foreign_programs {
                named.push("...");
            }
            let named = named.join(", ");
            why.push(format!(
                "ran {} program(s) built for another ABI than x86_64 ({named}): their \
                 system calls do not reach the tracer, so what they used is unknown; \
                 rebuild them for x86_64, or name what they need with --include",
                self.loss.foreign_programs
            ));
        }
        if !self.started.from_first_exec {
            why.push(
                "did not observe the container's start-up, when its configuration and \
                 libraries are read (from_first_exec: false: it was attached to, or it started \
                 before the watch took hold; observe it with `--restart`, or create it and let \
                 the label take it before it starts)"
                    .into(),
            );
        }
        (!why.is_empty()).then(|| why.join(" and "))
    }
}

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
