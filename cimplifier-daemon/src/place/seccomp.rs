//! Seccomp profiles: the syscalls an image's executables were seen making
//! (the tracer's `SyscallSeen` events), plus what the OCI runtime makes
//! after it installs the filter and what the RPE glue needs, written as a
//! Docker/OCI seccomp profile whose default action refuses the rest with
//! EPERM. docs/privileges.md tells how each part was measured.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::model::{Access, Exe, Model, Resource};
use crate::trace::ContainerPath;
pub use crate::trace::arch::Arch;

/// Calls an executable makes at a moment a run may not reach, implied by
/// what it was seen making (an empty trigger: by any call): see
/// [`Grant::Implied`].
const IMPLIED: &[(&[&str], &[&str], &str)] = &[
    (&[], &["exit", "exit_group"], "runs, so it ends"),
    (
        &["rt_sigaction"],
        &["rt_sigreturn"],
        "installed a signal handler, and returns from it",
    ),
    (
        &["clone", "clone3", "fork", "vfork"],
        &["wait4", "waitid"],
        "starts processes, and reaps them",
    ),
];

/// The calls that remove a name or empty a file, granted to an executable
/// that created one (see [`Grant::MayRemove`]).
const REMOVE: &[&str] = &["unlink", "unlinkat", "ftruncate"];

/// Names under the kernel's file systems, which programs do not make.
fn kernel_fs(p: &ContainerPath) -> bool {
    ["/proc", "/sys", "/dev"]
        .iter()
        .any(|d| p.is_under(&ContainerPath::new(d).expect("absolute")))
}

/// x86_64 syscalls Docker 20.10.24's built-in default profile allows (the
/// engine here; moby's `profiles/seccomp/default.json` at that tag): the
/// names of its ALLOW rules that apply on amd64 with Docker's default
/// capabilities, counted once, that are x86_64 syscalls (the 32-bit names
/// it lists for the x86 sub-architecture left out). Some are allowed only
/// with certain arguments (clone, personality, socket).
pub const DOCKER_DEFAULT_SYSCALLS: usize = 292;

/// What runc 1.1.5 (this machine's) makes after it installs the filter,
/// measured with a profile whose default action is SCMP_ACT_LOG (the
/// kernel logs each call with the caller's comm, `runc:[2:INIT]` until the
/// exec): with no-new-privileges runc installs the filter last, just before
/// it execs the entrypoint; without it, before it drops capabilities and
/// changes ids. `docker exec` goes the same way (runc's setns init).
const RUNTIME_AFTER_FILTER: &[&str] = &[
    "close",
    "epoll_ctl",
    "execve",
    "fstatfs",
    "futex",
    "getdents64",
    "getpid",
    "openat",
    // A signal to one of runc's Go threads (seen in 1 of 25 runs).
    "rt_sigreturn",
    "write",
];

/// The same without no-new-privileges.
const RUNTIME_AFTER_FILTER_NEW_PRIVILEGES: &[&str] = &[
    "capget",
    "capset",
    "chdir",
    "close",
    "epoll_ctl",
    "execve",
    "faccessat2",
    "fcntl",
    "fstat",
    "fstatfs",
    "futex",
    "getcwd",
    "getdents64",
    "getpid",
    "getppid",
    "newfstatat",
    "openat",
    "prctl",
    "read",
    "rt_sigreturn",
    "setgid",
    "setgroups",
    "setuid",
    "write",
];

/// What the RPE server (cimplifier-rpe, static) makes serving calls and
/// starting the entrypoint, measured under `strace -ff` over cimplifier-rpe's
/// tests (basic, creds, entrypoint, signals, tty, scripts); see
/// docs/privileges.md. `unlink` is the stale socket a restart finds
/// (server/mod.rs), which those tests, in fresh directories, never reach.
const RPE_SERVER: &[&str] = &[
    "accept4",
    "arch_prctl",
    "bind",
    "brk",
    "chdir",
    "clone",
    "clone3",
    "close",
    "close_range",
    "dup2",
    "execve",
    "exit",
    "exit_group",
    "fcntl",
    "futex",
    "geteuid",
    "getpid",
    "getrandom",
    "getsockopt",
    "gettid",
    "ioctl",
    "kill",
    "listen",
    "madvise",
    "mkdir",
    "mmap",
    "mprotect",
    "munmap",
    "newfstatat",
    "openat",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe2",
    "poll",
    "prctl",
    "prlimit64",
    "read",
    "readlink",
    "recvfrom",
    "recvmsg",
    "rseq",
    "rt_sigaction",
    "rt_sigprocmask",
    "rt_sigtimedwait",
    "sched_getaffinity",
    "sendmsg",
    "sendto",
    "set_robust_list",
    "set_tid_address",
    "setgroups",
    "setpriority",
    "setresgid",
    "setresuid",
    "setsid",
    "setsockopt",
    "sigaltstack",
    "socket",
    "statx",
    "tgkill",
    "umask",
    "unlink",
    "wait4",
    "write",
];

/// What the RPE stub makes relaying a call, measured the same way.
const RPE_STUB: &[&str] = &[
    "arch_prctl",
    "brk",
    "clock_nanosleep",
    "close",
    "close_range",
    "connect",
    "exit_group",
    "fcntl",
    "getcwd",
    "getegid",
    "geteuid",
    "getgid",
    "getgroups",
    "getpgrp",
    "getpid",
    "getpriority",
    "getrandom",
    "getsid",
    "getuid",
    "ioctl",
    "kill",
    "lseek",
    "mprotect",
    "openat",
    "pipe2",
    "poll",
    "prlimit64",
    "read",
    "readlink",
    "recvfrom",
    "recvmsg",
    "rseq",
    "rt_sigaction",
    "rt_sigprocmask",
    "rt_sigreturn",
    "sendmsg",
    "sendto",
    "set_robust_list",
    "set_tid_address",
    "socket",
    "statx",
    "umask",
    "write",
];

/// Whether and how the profile is applied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeccompMode {
    /// Refuse every other syscall with EPERM.
    #[default]
    Enforce,
    /// Allow every other syscall but have the kernel log it (a trial run:
    /// `--seccomp=log`).
    Log,
    /// No profile of ours: Docker's default applies (`--no-seccomp`).
    Off,
}

impl SeccompMode {
    /// The request's word ("", "enforce", "log", "off").
    pub fn parse(word: &str) -> Result<Self, String> {
        match word {
            "" | "enforce" => Ok(Self::Enforce),
            "log" => Ok(Self::Log),
            "off" => Ok(Self::Off),
            other => Err(format!(
                "seccomp mode {other:?} is unknown: it is enforce, log or off"
            )),
        }
    }
}

/// Why a syscall is allowed.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "by")]
pub enum Grant {
    /// An executable of the image was seen making it.
    Made { exe: Exe },
    /// The OCI runtime makes it after installing the filter.
    Runtime,
    /// The RPE server needs it.
    RpeServer,
    /// The RPE stub needs it.
    RpeStub,
    /// The executable created files (`created` is the first): what a
    /// program makes it later removes or empties, at a restart, a shutdown
    /// or on a pass the observed run did not reach (redis removes its old
    /// append-only files after its second rewrite, nginx its pid file at
    /// exit; postfix's tlsmgr creates its session cache on a first start
    /// and truncates the one it finds after a restart), as its state
    /// directories are kept whole for files.
    MayRemove { exe: Exe, created: ContainerPath },
    /// What an observed call implies the executable makes at a moment the
    /// run may not have reached: it ends (exit_group), it returns from the
    /// signal handler it installed, it reaps the child it started. A redis
    /// observed while its rewrite child still ran never showed its
    /// exit_group nor redis's wait4; refused, the child cannot end and the
    /// rewrite never finishes.
    Implied { exe: Exe, because: String },
    /// The tracer ran no program on it (`HookMode::PerSyscall`: a call on
    /// the caller's memory, clock, itself or a descriptor it holds), so
    /// whoever made it was not seen: allowed to every image.
    Unhooked,
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Grant::Made { exe } => write!(f, "{exe} made it"),
            Grant::Runtime => {
                f.write_str("the OCI runtime (runc) makes it after installing the filter")
            }
            Grant::RpeServer => f.write_str("the RPE server needs it"),
            Grant::RpeStub => f.write_str("the RPE stub needs it"),
            Grant::Unhooked => f.write_str(
                "not hooked while tracing (a call on memory, the clock, the process itself or \
                 a descriptor it holds): whoever made it was not seen",
            ),
            Grant::Implied { exe, because } => write!(f, "{exe} {because}"),
            Grant::MayRemove { exe, created } => {
                write!(
                    f,
                    "{exe} created {created}, and may remove or empty what it made"
                )
            }
        }
    }
}

/// At most this many executables are named per syscall.
const MADE_BY_KEPT: usize = 8;

/// An image's seccomp profile, with the evidence for each allowed syscall.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seccomp {
    pub mode: SeccompMode,
    /// False when the session carries no syscall evidence (recorded before
    /// the tracer sent it, or imported from strace): then no profile is
    /// written and the report warns.
    pub evidence: bool,
    /// Allowed syscalls by name, each with why.
    pub allowed: BTreeMap<String, Vec<Grant>>,
    /// Numbers seen that the syscall table does not name: not allowed, and
    /// warned about.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub unnamed: BTreeMap<u32, Vec<Exe>>,
    /// Processes whose exec was not seen (running before the watch began;
    /// not the runtime's own set-up): what they made before is unknown.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_seen: Vec<Exe>,
}

/// What the profile is built from beside the model.
#[derive(Clone, Copy, Debug)]
pub struct SeccompInputs {
    pub mode: SeccompMode,
    /// The image runs with no-new-privileges (runc then installs the
    /// filter later, and makes fewer calls after it).
    pub no_new_privileges: bool,
    pub rpe_server: bool,
    pub rpe_stub: bool,
}

/// The profile of the image holding `exes`.
pub fn seccomp(model: &Model, exes: &BTreeSet<Exe>, inputs: SeccompInputs) -> Seccomp {
    let arch = Arch::X86_64;
    let mut out = Seccomp {
        mode: inputs.mode,
        evidence: model.has_syscall_evidence(),
        ..Seccomp::default()
    };
    out.not_seen = model
        .syscall_makers()
        .into_iter()
        .filter(|e| exes.contains(e) && e.is_unobserved() && !e.is_runtime())
        .collect();
    let observed: BTreeSet<Exe> = exes
        .iter()
        .filter(|e| !e.is_unobserved())
        .cloned()
        .collect();
    for (nr, by) in model.syscalls(&observed) {
        match arch.name(nr) {
            Some(name) => out.allowed.entry(name.to_owned()).or_default().extend(
                by.into_iter()
                    .take(MADE_BY_KEPT)
                    .map(|exe| Grant::Made { exe }),
            ),
            None => {
                out.unnamed.insert(nr, by.into_iter().collect());
            }
        }
    }
    let made = model.syscalls(&observed);
    for exe in &observed {
        let made_any = |names: &[&str]| {
            names.iter().any(|n| {
                arch.number(n)
                    .and_then(|nr| made.get(&nr))
                    .is_some_and(|by| by.contains(exe))
            })
        };
        if !made.values().any(|by| by.contains(exe)) {
            continue;
        }
        for (trigger, implied, because) in IMPLIED {
            if trigger.is_empty() || made_any(trigger) {
                for name in *implied {
                    let grants = out.allowed.entry((*name).to_owned()).or_default();
                    if grants.len() < MADE_BY_KEPT {
                        grants.push(Grant::Implied {
                            exe: exe.clone(),
                            because: (*because).to_owned(),
                        });
                    }
                }
            }
        }
    }
    for exe in &observed {
        let created =
            model
                .uses(std::slice::from_ref(exe))
                .into_iter()
                .find_map(|(r, a)| match r {
                    Resource::Path(p) if a.contains(&Access::Create) && !kernel_fs(&p) => Some(p),
                    _ => None,
                });
        if let Some(created) = created {
            for name in REMOVE {
                let grant = Grant::MayRemove {
                    exe: exe.clone(),
                    created: created.clone(),
                };
                let grants = out.allowed.entry((*name).to_owned()).or_default();
                if grants.len() < MADE_BY_KEPT {
                    grants.push(grant);
                }
            }
        }
    }
    let runtime = if inputs.no_new_privileges {
        RUNTIME_AFTER_FILTER
    } else {
        RUNTIME_AFTER_FILTER_NEW_PRIVILEGES
    };
    let mut add = |names: &[&str], grant: Grant| {
        for name in names {
            out.allowed
                .entry((*name).to_owned())
                .or_default()
                .push(grant.clone());
        }
    };
    add(runtime, Grant::Runtime);
    if !observed.is_empty() {
        let unhooked: Vec<&str> = model
            .unhooked_syscalls()
            .iter()
            .filter_map(|&nr| arch.name(nr))
            .collect();
        add(&unhooked, Grant::Unhooked);
    }
    if inputs.rpe_server {
        add(RPE_SERVER, Grant::RpeServer);
    }
    if inputs.rpe_stub {
        add(RPE_STUB, Grant::RpeStub);
    }
    out
}

/// clone3, when not allowed, fails with ENOSYS as under Docker's default
/// profile: glibc then falls back to clone. EPERM would fail every thread
/// and posix_spawn of a program that was traced making clone (because
/// Docker's profile answered its clone3 with ENOSYS, before the tracer).
const ENOSYS_WHEN_REFUSED: &[&str] = &["clone3"];
const ENOSYS: u32 = 38;
const EPERM: u32 = 1;

/// The Docker/OCI seccomp profile, in the engine's JSON form.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    pub default_action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_errno_ret: Option<u32>,
    pub architectures: Vec<String>,
    pub syscalls: Vec<Rule>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    pub names: Vec<String>,
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno_ret: Option<u32>,
}

impl Seccomp {
    /// Whether a profile is written and applied.
    pub fn applies(&self) -> bool {
        self.evidence && self.mode != SeccompMode::Off
    }

    /// The profile; None when none applies.
    pub fn profile(&self) -> Option<Profile> {
        if !self.applies() {
            return None;
        }
        let (default_action, default_errno_ret) = match self.mode {
            SeccompMode::Log => ("SCMP_ACT_LOG", None),
            _ => ("SCMP_ACT_ERRNO", Some(EPERM)),
        };
        let mut syscalls = vec![Rule {
            names: self.allowed.keys().cloned().collect(),
            action: "SCMP_ACT_ALLOW".to_owned(),
            errno_ret: None,
        }];
        let enosys: Vec<String> = ENOSYS_WHEN_REFUSED
            .iter()
            .filter(|n| !self.allowed.contains_key(**n))
            .map(|n| (*n).to_owned())
            .collect();
        // In a trial too: it shows what enforcing would refuse, and clone3
        // would not be refused with EPERM.
        if !enosys.is_empty() {
            syscalls.push(Rule {
                names: enosys,
                action: "SCMP_ACT_ERRNO".to_owned(),
                errno_ret: Some(ENOSYS),
            });
        }
        Some(Profile {
            default_action: default_action.to_owned(),
            default_errno_ret,
            architectures: vec![Arch::X86_64.scmp().to_owned()],
            syscalls,
        })
    }

    /// The profile as the JSON file emit writes: the same session gives
    /// the same bytes.
    pub fn profile_json(&self) -> Option<String> {
        self.profile()
            .map(|p| serde_json::to_string_pretty(&p).expect("a profile serialises") + "\n")
    }

    /// Why `name` is allowed, or that it is not.
    pub fn explain(&self, name: &str) -> String {
        if !self.applies() {
            return "no profile: Docker's default applies".to_owned();
        }
        match self.allowed.get(name) {
            Some(grants) => format!(
                "allowed: {}",
                grants
                    .iter()
                    .map(Grant::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            None if Arch::X86_64.number(name).is_none() => {
                format!("{name} is no x86_64 syscall")
            }
            None if ENOSYS_WHEN_REFUSED.contains(&name) => {
                "refused with ENOSYS (as Docker's default does): no observed executable made it"
                    .to_owned()
            }
            None => "refused: no observed executable made it".to_owned(),
        }
    }

    /// One line for the summary.
    pub fn summary(&self) -> String {
        let mut line = if !self.evidence {
            "seccomp: WARNING: the session has no syscall evidence (recorded before the \
             tracer sent it): no profile, Docker's default applies; observe again"
                .to_owned()
        } else if self.mode == SeccompMode::Off {
            "seccomp: off (--no-seccomp): Docker's default applies".to_owned()
        } else {
            format!(
                "syscalls allowed: {} (Docker's default allows {DOCKER_DEFAULT_SYSCALLS}){}",
                self.allowed.len(),
                if self.mode == SeccompMode::Log {
                    "; trial: the rest are logged, not refused (--seccomp=log)"
                } else {
                    ""
                }
            )
        };
        if !self.unnamed.is_empty() {
            line += &format!(
                "; WARNING: syscall numbers without a name are refused: {}",
                self.unnamed
                    .iter()
                    .map(|(nr, by)| format!(
                        "{nr} (by {})",
                        by.iter().map(Exe::to_string).collect::<Vec<_>>().join(", ")
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        if !self.not_seen.is_empty() {
            line += &format!(
                "; WARNING: processes whose exec was not seen ({}) may have made syscalls before \
                 the watch began, which are refused: observe from the first exec",
                self.not_seen
                    .iter()
                    .map(Exe::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        line
    }
}

#[cfg(test)]
mod tests;
