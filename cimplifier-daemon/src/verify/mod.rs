//! The verify stage: proves an emitted output against the session it was
//! made from. The output is observed while the user's workload runs
//! against it; every call that succeeded in the original and fails in the
//! output, and every program the output could not run, is a regression,
//! named by executable, resource and partition, with what to change.
//!
//! A failure the original had too (a probe for an optional file, a `PATH`
//! search) is not one: only what the output does worse counts.

use std::collections::{BTreeMap, HashMap, HashSet};

use cimplifier_common::syscalls::{nr, sends_signal};
use serde::Serialize;

use crate::model::{Access, ExeTracker, Resource, accesses};
use crate::trace::{ContainerPath, Event, EventKind, SyscallEvent};

/// What went wrong in the output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RegressionKind {
    /// A call that succeeded in the original fails in the output.
    CallFails,
    /// A program the output tried to run is not in it.
    ExecMissing,
}

/// One thing the output does worse than the original.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Regression {
    pub kind: RegressionKind,
    /// The executable that made the call; `?` when its exec was not seen.
    pub executable: String,
    /// The partition it ran in; empty for a slim image.
    pub partition: String,
    pub syscall: String,
    /// The path, or socket address, the call named.
    pub resource: String,
    pub errno: String,
    /// How many such failures the output's session stored.
    pub count: u64,
    /// What to change so the output does what the original did.
    pub fix: String,
}

/// The comparison of an original with its output.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Comparison {
    pub regressions: Vec<Regression>,
    /// Failed calls of the output looked at.
    pub failed_calls: u64,
}

/// What the original did, by executable.
#[derive(Default)]
pub struct Original {
    /// (executable, resource) used successfully.
    succeeded: HashSet<(String, Resource)>,
    /// (executable, resource, errno) that failed in the original too.
    failed: HashSet<(String, Resource, String)>,
    /// Executables that signalled a process of another uid (CAP_KILL).
    signalled: HashSet<String>,
    exes: ExeTracker,
}

/// What a refused signal names in a regression.
const SIGNAL_RESOURCE: &str = "a signal to a process of another uid";

impl Original {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes in one event of the original session, in order.
    pub fn apply(&mut self, event: &Event) {
        let exe = self.exes.exe_after(event);
        if let EventKind::Signal(signal) = &event.kind
            && signal.needs_kill()
        {
            self.signalled.insert(exe_name(exe.as_ref()));
        }
        let Some(s) = event.syscall() else { return };
        let exe = exe_name(exe.as_ref());
        let errno = errno(s);
        for (access, resource) in accesses(s) {
            match (&errno, access) {
                (Some(errno), Access::ProbeFailed) => {
                    self.failed.insert((exe.clone(), resource, errno.clone()));
                }
                (None, _) => {
                    self.succeeded.insert((exe.clone(), resource));
                }
                _ => {}
            }
        }
    }
}

/// The output's events of one partition (or of the slim image), compared
/// with the original as they come.
pub struct OutputComparer<'a> {
    original: &'a Original,
    partition: String,
    exes: ExeTracker,
    /// Keyed so that repeats add to one regression's count.
    found: BTreeMap<(RegressionKind, String, String, String, String), u64>,
    /// Failed calls the original made successfully, kept until the end
    /// shows whether the output recovered.
    calls: BTreeMap<(RegressionKind, String, String, Resource, String), u64>,
    /// (executable, resource) the output used successfully: a failure of
    /// one it also succeeded on was a probe it recovered from (a directory
    /// made after `stat` found none), not a regression.
    succeeded: HashSet<(String, Resource)>,
    /// Programs each process did run, by file name: a failed exec of one
    /// found later on `PATH` is a search, not a regression.
    ran: HashMap<u32, HashSet<String>>,
    /// Failed execs not in the original, kept until the process shows
    /// whether its search succeeded.
    failed_execs: Vec<(u32, String, ContainerPath, String)>,
    failed_calls: u64,
}

impl<'a> OutputComparer<'a> {
    pub fn new(original: &'a Original, partition: &str) -> Self {
        Self {
            original,
            partition: partition.to_owned(),
            exes: ExeTracker::default(),
            succeeded: HashSet::new(),
            found: BTreeMap::new(),
            calls: BTreeMap::new(),
            ran: HashMap::new(),
            failed_execs: Vec::new(),
            failed_calls: 0,
        }
    }

    /// Takes in one event of the output's session, in order.
    pub fn apply(&mut self, event: &Event) {
        let exe = self.exes.exe_after(event);
        let Some(s) = event.syscall() else { return };
        let exe = exe_name(exe.as_ref());
        let Some(errno) = errno(s) else {
            for (_, resource) in accesses(s) {
                self.succeeded.insert((exe.clone(), resource));
            }
            if is_exec(s)
                && let Some(path) = crate::model::exec_path(event)
            {
                self.ran
                    .entry(event.pid)
                    .or_default()
                    .insert(file_name(&path));
            }
            return;
        };
        self.failed_calls += 1;
        if sends_signal(s.nr) && errno == "EPERM" && self.original.signalled.contains(&exe) {
            let key = (
                RegressionKind::CallFails,
                exe,
                s.syscall.clone(),
                SIGNAL_RESOURCE.to_owned(),
                errno,
            );
            *self.found.entry(key).or_default() += 1;
            return;
        }
        for (access, resource) in accesses(s) {
            if access != Access::ProbeFailed {
                continue;
            }
            if self
                .original
                .failed
                .contains(&(exe.clone(), resource.clone(), errno.clone()))
            {
                continue;
            }
            let in_original = self
                .original
                .succeeded
                .contains(&(exe.clone(), resource.clone()));
            match (&resource, is_exec(s)) {
                (Resource::Path(path), true) if matches!(errno.as_str(), "ENOENT" | "EACCES") => {
                    self.failed_execs
                        .push((event.pid, exe.clone(), path.clone(), errno.clone()));
                }
                _ if in_original => {
                    let key = (
                        RegressionKind::CallFails,
                        exe.clone(),
                        s.syscall.clone(),
                        resource.clone(),
                        errno.clone(),
                    );
                    *self.calls.entry(key).or_default() += 1;
                }
                _ => {}
            }
        }
    }

    /// The regressions found, with fixes.
    pub fn finish(mut self) -> (Vec<Regression>, u64) {
        for ((kind, exe, syscall, resource, errno), count) in std::mem::take(&mut self.calls) {
            if !self.succeeded.contains(&(exe.clone(), resource.clone())) {
                let key = (kind, exe, syscall, describe(&resource), errno);
                *self.found.entry(key).or_default() += count;
            }
        }
        for (pid, exe, path, errno) in std::mem::take(&mut self.failed_execs) {
            let found_later = self
                .ran
                .get(&pid)
                .is_some_and(|r| r.contains(&file_name(&path)));
            if !found_later {
                let key = (
                    RegressionKind::ExecMissing,
                    exe,
                    "execve".to_owned(),
                    path.as_str().to_owned(),
                    errno,
                );
                *self.found.entry(key).or_default() += 1;
            }
        }
        let partition = self.partition;
        let regressions = self
            .found
            .into_iter()
            .map(
                |((kind, executable, syscall, resource, errno), count)| Regression {
                    fix: fix(kind, &resource, &errno, &partition),
                    kind,
                    executable,
                    partition: partition.clone(),
                    syscall,
                    resource,
                    errno,
                    count,
                },
            )
            .collect();
        (regressions, self.failed_calls)
    }
}

/// The call's errno name when it failed (it returned, negative).
fn errno(s: &SyscallEvent) -> Option<String> {
    if s.succeeded() || s.ret.is_none() {
        return None;
    }
    Some(
        s.errno
            .clone()
            .unwrap_or_else(|| format!("errno {}", s.ret.map_or(0, |r| r.unsigned_abs()))),
    )
}

fn is_exec(s: &SyscallEvent) -> bool {
    matches!(s.nr, nr::EXECVE | nr::EXECVEAT)
}

fn file_name(path: &ContainerPath) -> String {
    path.as_str()
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned()
}

fn exe_name(exe: Option<&ContainerPath>) -> String {
    exe.map_or_else(|| "?".to_owned(), |e| e.as_str().to_owned())
}

/// A resource as a user names it.
pub fn describe(resource: &Resource) -> String {
    match resource {
        Resource::Path(p) => p.as_str().to_owned(),
        Resource::AbstractSocket(name) => format!("@{name}"),
        Resource::Inet(e) if e.ip.is_ipv6() => format!("[{}]:{}", e.ip, e.port),
        Resource::Inet(e) => format!("{}:{}", e.ip, e.port),
    }
}

/// What to change so the output does what the original did.
fn fix(kind: RegressionKind, resource: &str, errno: &str, partition: &str) -> String {
    let is_path = resource.starts_with('/');
    let include = if partition.is_empty() {
        format!("emit again with `--include {resource}`")
    } else {
        format!("emit the plan again with `--include {resource}`")
    };
    match (kind, errno) {
        (RegressionKind::ExecMissing, _) => format!(
            "the program is not in the output: {include} (and what it loads), or observe a \
             workload that runs it"
        ),
        (_, "ENOENT" | "ENOTDIR") if is_path && partition.is_empty() => format!(
            "{resource} is missing from the output: {include}, or observe a workload that uses it"
        ),
        (_, "ENOENT" | "ENOTDIR") if is_path => format!(
            "{resource} is missing from partition {partition}: if it is on a shared volume, \
             that volume lacks it (was it seeded? `cimplifierctl down --volumes` then `up` \
             seeds it anew); otherwise {include}"
        ),
        (_, "EPERM") if resource == SIGNAL_RESOURCE => {
            let grant = if partition.is_empty() {
                "the slim image's run line"
            } else {
                "the partition's run settings"
            };
            "the signal needs CAP_KILL, which the original used and the output lacks: observe \
             a workload in which the executable sends it (the lifecycle's graceful restart \
             usually does), then emit again; or add KILL to "
                .to_owned()
                + grant
        }
        (_, "EACCES" | "EPERM") => format!(
            "the output may not use {resource}: compare its owner and mode with the source \
             image's, and the user the output runs as with the original's"
        ),
        (_, "EROFS") => {
            format!("{resource} is read-only in the output: make its directory a volume")
        }
        (_, "EADDRINUSE") => {
            format!("{resource} is taken in the output: another process or partition holds it")
        }
        (_, "ECONNREFUSED") => format!(
            "nothing listens on {resource} in the output: the partition that serves it did \
             not start, or cannot be reached"
        ),
        _ => format!(
            "the call failed with {errno} in the output and succeeded in the original: \
             compare how {resource} is placed"
        ),
    }
}

#[cfg(test)]
mod tests;
