//! Typed, decoded trace events: what the trace stage hands to the model.
//!
//! These types are also the event-log format (one JSON object per line, see
//! `docs/event-log.md`), so every field is serialisable and stable.

use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// A cgroup v2 id: the inode number of the cgroup's directory, and what
/// `bpf_get_current_cgroup_id()` returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CgroupId(pub u64);

impl fmt::Display for CgroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// An absolute, lexically normalised path as the traced task sees it (for a
/// container: inside the container). `..` is folded without following
/// symlinks, which is what the name the program used means.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ContainerPath(String);

impl ContainerPath {
    /// The root, `/`.
    pub fn root() -> Self {
        Self("/".to_owned())
    }

    /// Normalises an absolute path: folds `//`, `.` and `..`. Returns `None`
    /// for a relative path.
    pub fn new(path: &str) -> Option<Self> {
        if !path.starts_with('/') {
            return None;
        }
        let mut parts: Vec<&str> = Vec::new();
        for part in path.split('/') {
            match part {
                "" | "." => {}
                ".." => {
                    parts.pop();
                }
                p => parts.push(p),
            }
        }
        let mut out = String::with_capacity(path.len());
        for p in &parts {
            out.push('/');
            out.push_str(p);
        }
        if out.is_empty() {
            out.push('/');
        }
        Some(Self(out))
    }

    /// `rel` resolved against this directory; an absolute `rel` stands alone.
    pub fn join(&self, rel: &str) -> Self {
        if rel.starts_with('/') {
            return Self::new(rel).expect("absolute");
        }
        Self::new(&format!("{}/{}", self.0, rel)).expect("absolute")
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this path is `dir` or below it (`/srv/www` is under `/srv`,
    /// `/srvx` is not).
    pub fn is_under(&self, dir: &ContainerPath) -> bool {
        let (p, d) = (self.as_str(), dir.as_str());
        d == "/" || p == d || (p.starts_with(d) && p.as_bytes().get(d.len()) == Some(&b'/'))
    }

    /// The parent directory; the root is its own parent.
    pub fn parent(&self) -> Self {
        match self.0.rfind('/') {
            Some(0) | None => Self::root(),
            Some(i) => Self(self.0[..i].to_owned()),
        }
    }
}

impl fmt::Display for ContainerPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl ContainerPath {
    /// Already in normal form: absolute, no empty, `.` or `..` components,
    /// no trailing slash (except the root itself).
    fn is_normal(path: &str) -> bool {
        path == "/"
            || (path.starts_with('/')
                && !path.ends_with('/')
                && path[1..]
                    .split('/')
                    .all(|c| !c.is_empty() && c != "." && c != ".."))
    }
}

impl TryFrom<String> for ContainerPath {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        // Logs hold normalised paths: keep the string rather than rebuild it.
        if Self::is_normal(&s) {
            return Ok(Self(s));
        }
        Self::new(&s).ok_or_else(|| format!("not an absolute path: {s:?}"))
    }
}

impl From<ContainerPath> for String {
    fn from(p: ContainerPath) -> String {
        p.0
    }
}

/// What a path argument means to its syscall.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PathRole {
    /// The object the call acts on (open, stat, mkdir, exec, chdir, ...).
    Target,
    /// rename/link: the existing name.
    Old,
    /// rename/link/symlink: the name created.
    New,
    /// symlink: the link's content; not resolved, it is data.
    LinkContent,
    /// readlink: what the link points to, as the kernel returned it.
    LinkValue,
}

/// How far a path could be resolved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "status", content = "reason")]
pub enum Resolution {
    /// `path` is the absolute name the program used.
    Resolved,
    /// Could not be made absolute; `reason` says why (unknown cwd or dirfd).
    Unresolved(String),
    /// The name could not be read from the program's memory.
    Unreadable,
    /// Not a path to resolve (symlink content, readlink value).
    Literal,
    /// An empty name with AT_EMPTY_PATH on a descriptor that names no path
    /// (a pipe, a socket): the call acts on the descriptor, not on a name.
    Descriptor,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "super::wire::FlatPathArg")]
pub struct PathArg {
    pub role: PathRole,
    /// The bytes the program passed, lossily UTF-8.
    pub raw: String,
    /// Absolute form, when `resolution` is `Resolved`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub path: Option<ContainerPath>,
    #[serde(flatten)]
    pub resolution: Resolution,
    /// The kernel's copy hit the slot size: `raw` is cut.
    #[serde(skip_serializing_if = "is_false", default)]
    pub truncated: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A socket address named in bind, connect, accept, sendto or sendmsg.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum SocketAddress {
    /// A unix socket node on the file system.
    Unix {
        raw: String,
        path: Option<ContainerPath>,
    },
    /// A Linux abstract unix socket name (no file system node).
    Abstract {
        name: String,
    },
    /// An unnamed unix socket (autobind, or a peer without a name).
    UnixUnnamed,
    Inet {
        addr: SocketAddr,
    },
    /// Another family; kept so nothing is dropped silently.
    Other {
        family: u16,
    },
}

/// A signal a watched process sent to another process, with the ids the
/// kernel's permission check compared (`kill_ok_by_cred`): the sender's
/// real and effective uid, the receiver's real and saved uid.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignalEvent {
    pub sig: u32,
    /// Process id of the receiver, in the host's pid namespace.
    pub target_pid: u32,
    pub sender_uid: u32,
    pub sender_euid: u32,
    pub target_uid: u32,
    pub target_suid: u32,
}

impl SignalEvent {
    /// Whether the kernel allowed it only for CAP_KILL: no id of the
    /// sender matches one of the receiver (kernel/signal.c).
    pub fn needs_kill(&self) -> bool {
        let sender = [self.sender_euid, self.sender_uid];
        let target = [self.target_suid, self.target_uid];
        !sender.iter().any(|s| target.contains(s))
    }

    /// `SIGTERM`, or the number for one without a name.
    pub fn name(&self) -> String {
        i32::try_from(self.sig)
            .ok()
            .and_then(|n| nix::sys::signal::Signal::try_from(n).ok())
            .map_or_else(|| format!("signal {}", self.sig), |s| s.as_str().to_owned())
    }
}

/// One traced system call with its arguments and result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyscallEvent {
    /// The syscall's name, e.g. `openat`.
    pub syscall: String,
    pub nr: u32,
    /// Raw arguments; flags and modes are read from here.
    pub args: [u64; 6],
    /// Return value; negative is `-errno`. Absent for calls that never return.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub ret: Option<i64>,
    /// errno name when the call failed, e.g. `ENOENT`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub errno: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub paths: Vec<PathArg>,
    /// For calls on a descriptor (fchdir, getdents64, dup*, fcntl, close):
    /// the path that descriptor names, if known.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub fd_path: Option<ContainerPath>,
    /// For calls on a socket (listen, accept, send*, bind, connect): the
    /// address it was bound or connected to, if known. For an accepted
    /// socket, the listener's address.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub fd_addr: Option<SocketAddress>,
    /// The socket address the call names.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub addr: Option<SocketAddress>,
    /// execve(at): argv as passed.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub argv: Option<Vec<String>>,
    /// Anything the tracer could not record fully (truncated argv, unreadable
    /// socket address, missing sys_enter half).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub incomplete: Vec<String>,
}

/// The `incomplete` note of an exec whose argv could not be read.
pub const ARGV_UNREADABLE: &str = "argv could not be read";
/// The `incomplete` note of a call whose socket address could not be read.
pub const SOCKADDR_UNREADABLE: &str = "socket address could not be read";

impl SyscallEvent {
    pub fn succeeded(&self) -> bool {
        self.ret.is_some_and(|r| r >= 0)
    }

    /// Names the tracer could not read from the program's memory even with
    /// its retries (unreadable paths, argv, socket address): what the
    /// program used is unknown, so a model built from it may miss it. A
    /// call that failed with EFAULT used nothing: the kernel could not read
    /// the name either.
    pub fn unreadable_names(&self) -> u64 {
        const EFAULT: i64 = 14;
        if self.ret == Some(-EFAULT) {
            return 0;
        }
        let paths = self
            .paths
            .iter()
            .filter(|p| p.resolution == Resolution::Unreadable)
            .count();
        let notes = self
            .incomplete
            .iter()
            .filter(|n| *n == ARGV_UNREADABLE || *n == SOCKADDR_UNREADABLE)
            .count();
        (paths + notes) as u64
    }

    /// The path argument with `role`.
    pub fn path(&self, role: PathRole) -> Option<&PathArg> {
        self.paths.iter().find(|p| p.role == role)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "event")]
pub enum EventKind {
    /// A new process or thread, seen from the parent.
    Fork {
        child_pid: u32,
        child_tid: u32,
        thread: bool,
        clone_flags: u64,
    },
    Syscall(Box<SyscallEvent>),
    /// A thread ended; `process_exited` when it was the last one.
    Exit {
        process_exited: bool,
    },
    /// A process already running when it was first seen (it was started
    /// before the watch began), as /proc showed it then: its exec was never
    /// traced, so this is what stands for it.
    Running {
        /// `/proc/PID/exe` as the process sees it; absent when unreadable
        /// (the process was exiting, or is a kernel thread).
        #[serde(skip_serializing_if = "Option::is_none", default)]
        exe: Option<ContainerPath>,
        /// `/proc/PID/cmdline`.
        #[serde(skip_serializing_if = "Vec::is_empty", default)]
        argv: Vec<String>,
        #[serde(skip_serializing_if = "Option::is_none", default)]
        cwd: Option<ContainerPath>,
    },
    /// The process made this syscall for the first time since its exec
    /// (or since the watch began), traced or not: the evidence for
    /// seccomp profiles. Repeats are not recorded. Absent in older logs.
    SyscallSeen {
        nr: u32,
        /// Its x86_64 name; absent for a number the table does not know.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        syscall: Option<String>,
    },
    /// A signal sent to another process. Absent in older logs.
    Signal(SignalEvent),
    /// How the session was traced, not what a process did: these syscall
    /// numbers ran no program (`HookMode::PerSyscall`), so no
    /// `SyscallSeen` tells who made them. Sent once as the session's
    /// recording begins. Absent in older logs and in `every-syscall` ones.
    Unhooked {
        nrs: Vec<u32>,
    },
    /// The process exec'd a program built for another ABI than x86_64's
    /// (its ELF class and machine: a 32-bit x86 or x32 program). Its
    /// system calls do not reach the syscall tracepoints as x86_64 ones,
    /// so nothing it does after this exec is recorded: the session is
    /// incomplete ([`LossCounters::foreign_programs`]). Absent in older logs.
    ForeignAbi {
        elf_class: u8,
        machine: u16,
    },
}

/// What an ELF class and machine name, for messages.
pub fn abi_name(elf_class: u8, machine: u16) -> String {
    match (elf_class, machine) {
        (1, 3) => "32-bit x86 (i386)".to_owned(),
        (1, 62) => "x32".to_owned(),
        (c, m) => format!("ELF class {c}, machine {m}"),
    }
}

/// One decoded event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "super::wire::FlatRecord")]
pub struct Event {
    /// CLOCK_MONOTONIC nanoseconds (at sys_exit for syscalls).
    pub ts_ns: u64,
    pub pid: u32,
    pub tid: u32,
    pub ppid: u32,
    pub cgroup: CgroupId,
    pub comm: String,
    #[serde(flatten)]
    pub kind: EventKind,
}

impl Event {
    pub fn syscall(&self) -> Option<&SyscallEvent> {
        match &self.kind {
            EventKind::Syscall(s) => Some(s),
            _ => None,
        }
    }

    /// See [`SyscallEvent::unreadable_names`].
    pub fn unreadable_names(&self) -> u64 {
        self.syscall().map_or(0, SyscallEvent::unreadable_names)
    }

    /// 1 for a program exec'd for another ABI ([`EventKind::ForeignAbi`]).
    pub fn foreign_programs(&self) -> u64 {
        matches!(self.kind, EventKind::ForeignAbi { .. }).into()
    }
}

/// Events the pipeline could not deliver, by where they were lost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LossCounters {
    /// Records the kernel dropped because the ring buffer was full.
    pub ringbuf_full: u64,
    /// Syscalls whose entry could not be stored (in-flight map full).
    pub inflight_full: u64,
    /// Names the kernel could not read from user memory, host-wide, after
    /// its retries: a diagnostic. Which of them were a session's is
    /// `unreadable_names`.
    pub user_read_faults: u64,
    /// Records that could not be decoded in user space.
    pub undecodable: u64,
    /// Names (paths, argv, socket addresses) of the recorded events that
    /// stayed unreadable (see [`SyscallEvent::unreadable_names`]), counted
    /// from the events themselves. The events arrived, but what they named
    /// is unknown: a loss of fidelity that makes a session incomplete.
    #[serde(default)]
    pub unreadable_names: u64,
    /// Events of a new container's cgroup that did not fit in what the
    /// daemon holds while it looks up the container's labels.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub held_overflow: u64,
    /// Events the ring reader or the dispatcher had in hand when it ended
    /// (a panic, a bug) and was restarted by the daemon's supervisor.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub interrupted: u64,
    /// Fork and exec records the kernel could not make: a field of the
    /// scheduler tracepoint's record was unreadable.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub tracepoint_unread: u64,
    /// Runs of the kernel programs the kernel skipped because another BPF
    /// program was running on that CPU (`bpf_prog_info.recursion_misses`):
    /// which cgroup's events they were is unknown, so every session counts them.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub missed_runs: u64,
    /// Programs exec'd for another ABI ([`EventKind::ForeignAbi`]), counted
    /// from the events: what they did was not recorded.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub foreign_programs: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl LossCounters {
    /// Events that never reached the consumer. Faults and d_path failures are
    /// not in this sum: those events arrived, marked as incomplete.
    /// Counters stop at `u64::MAX` rather than wrap.
    pub fn lost(&self) -> u64 {
        [
            self.inflight_full,
            self.undecodable,
            self.held_overflow,
            self.interrupted,
            self.tracepoint_unread,
            self.missed_runs,
        ]
        .into_iter()
        .fold(self.ringbuf_full, u64::saturating_add)
    }

    /// What was lost since `baseline` was read, counter by counter; a
    /// counter below its baseline gives 0.
    pub fn since(self, baseline: Self) -> Self {
        self.each(baseline, u64::saturating_sub)
    }

    /// Both losses together, counter by counter, stopping at `u64::MAX`.
    pub fn plus(self, other: Self) -> Self {
        self.each(other, u64::saturating_add)
    }

    fn each(self, other: Self, f: fn(u64, u64) -> u64) -> Self {
        Self {
            ringbuf_full: f(self.ringbuf_full, other.ringbuf_full),
            inflight_full: f(self.inflight_full, other.inflight_full),
            user_read_faults: f(self.user_read_faults, other.user_read_faults),
            undecodable: f(self.undecodable, other.undecodable),
            unreadable_names: f(self.unreadable_names, other.unreadable_names),
            held_overflow: f(self.held_overflow, other.held_overflow),
            interrupted: f(self.interrupted, other.interrupted),
            tracepoint_unread: f(self.tracepoint_unread, other.tracepoint_unread),
            missed_runs: f(self.missed_runs, other.missed_runs),
            foreign_programs: f(self.foreign_programs, other.foreign_programs),
        }
    }

    /// No event lost (names may still be unreadable: `unreadable_names`).
    pub fn is_complete(&self) -> bool {
        self.lost() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interrupted_events_are_lost_events() {
        let interrupted = LossCounters {
            interrupted: 3,
            ..Default::default()
        };
        assert_eq!(interrupted.lost(), 3);
        assert!(!interrupted.is_complete());
        assert_eq!(interrupted.plus(interrupted).interrupted, 6);
        assert_eq!(interrupted.since(interrupted).interrupted, 0);
        for lost in [
            LossCounters {
                tracepoint_unread: 1,
                ..Default::default()
            },
            LossCounters {
                missed_runs: 1,
                ..Default::default()
            },
        ] {
            assert!(!lost.is_complete(), "{lost:?}");
        }
        // Not written when zero, so older readers see records as before.
        let json = serde_json::to_string(&LossCounters::default()).unwrap();
        assert!(!json.contains("interrupted"), "{json}");
        let back: LossCounters = serde_json::from_str(&json).unwrap();
        assert_eq!(back, LossCounters::default());
    }

    #[test]
    fn loss_since_a_baseline_is_per_counter() {
        let a = LossCounters {
            ringbuf_full: 5,
            inflight_full: 1,
            user_read_faults: 0,
            undecodable: 2,
            unreadable_names: 4,
            ..Default::default()
        };
        let b = LossCounters {
            ringbuf_full: 3,
            ..Default::default()
        };
        let d = a.since(b);
        assert_eq!((d.ringbuf_full, d.inflight_full, d.undecodable), (2, 1, 2));
        assert_eq!(d.plus(b).ringbuf_full, 5);
        assert_eq!(d.plus(b).unreadable_names, 4);
    }

    #[test]
    fn loss_arithmetic_saturates() {
        let most = LossCounters {
            ringbuf_full: u64::MAX,
            held_overflow: u64::MAX - 1,
            ..Default::default()
        };
        let some = LossCounters {
            ringbuf_full: 7,
            held_overflow: 7,
            undecodable: 1,
            ..Default::default()
        };
        assert_eq!(most.lost(), u64::MAX, "the sum stops at the top");
        let sum = most.plus(some);
        assert_eq!((sum.ringbuf_full, sum.held_overflow), (u64::MAX, u64::MAX));
        assert_eq!(sum.undecodable, 1);
        let back = some.since(most);
        assert_eq!(
            (back.ringbuf_full, back.held_overflow, back.undecodable),
            (0, 0, 1),
            "a counter below its baseline (a reloaded tracer) gives 0"
        );
    }

    #[test]
    fn container_path_normalises() {
        let p_ = |s: &str| ContainerPath::new(s).unwrap();
        let p = |s| ContainerPath::new(s).unwrap().to_string();
        assert_eq!(p("/"), "/");
        assert_eq!(p("//etc/./nginx//"), "/etc/nginx");
        assert_eq!(p("/a/b/../../.."), "/");
        assert_eq!(p("/var/../etc/passwd"), "/etc/passwd");
        assert!(ContainerPath::new("etc").is_none());
        let cwd = ContainerPath::new("/srv/www").unwrap();
        assert_eq!(cwd.join("../x").as_str(), "/srv/x");
        assert_eq!(cwd.join("/abs").as_str(), "/abs");
        assert_eq!(cwd.parent().as_str(), "/srv");
        assert_eq!(ContainerPath::root().parent().as_str(), "/");
        let under = |a: &str, b: &str| p_(a).is_under(&p_(b));
        assert!(under("/srv/www", "/srv") && under("/srv", "/srv") && under("/x", "/"));
        assert!(!under("/srvx", "/srv") && !under("/srv", "/srv/www"));
        for s in ["/", "/a", "/a/b.c", "/..a/.b"] {
            assert!(ContainerPath::is_normal(s), "{s}");
            assert_eq!(ContainerPath::new(s).unwrap().as_str(), s);
        }
        for s in ["", "a", "/a/", "//a", "/a/./b", "/a/../b", "/.."] {
            assert!(!ContainerPath::is_normal(s), "{s}");
        }
        let from_log = |s: &str| ContainerPath::try_from(s.to_owned()).unwrap().to_string();
        assert_eq!(from_log("/a/../b/"), "/b");
    }

    #[test]
    fn unreadable_names_count_paths_argv_and_addresses_but_not_efault() {
        let unreadable = PathArg {
            role: PathRole::Target,
            raw: String::new(),
            path: None,
            resolution: Resolution::Unreadable,
            truncated: false,
        };
        let mut s = SyscallEvent {
            syscall: "execve".into(),
            nr: 59,
            args: [0; 6],
            ret: Some(0),
            errno: None,
            paths: vec![unreadable],
            fd_path: None,
            fd_addr: None,
            addr: None,
            argv: None,
            incomplete: vec![ARGV_UNREADABLE.into(), "argv cut after 32 arguments".into()],
        };
        assert_eq!(s.unreadable_names(), 2);
        s.ret = Some(-14);
        assert_eq!(
            s.unreadable_names(),
            0,
            "EFAULT: the kernel read nothing either"
        );
    }

    #[test]
    fn a_signal_round_trips_and_needs_kill_only_across_uids() {
        let signal = SignalEvent {
            sig: 3,
            target_pid: 9,
            sender_uid: 0,
            sender_euid: 0,
            target_uid: 33,
            target_suid: 33,
        };
        assert!(signal.needs_kill());
        assert_eq!(signal.name(), "SIGQUIT");
        let e = Event {
            ts_ns: 1,
            pid: 2,
            tid: 2,
            ppid: 1,
            cgroup: CgroupId(42),
            comm: "php-fpm".into(),
            kind: EventKind::Signal(signal.clone()),
        };
        let json = serde_json::to_string(&e).unwrap();
        assert!(json.contains(r#""event":"signal""#), "{json}");
        assert_eq!(serde_json::from_str::<Event>(&json).unwrap(), e);
        for (ids, to) in [((0, 0), (0, 5)), ((5, 0), (33, 5)), ((7, 33), (33, 33))] {
            let s = SignalEvent {
                sender_uid: ids.0,
                sender_euid: ids.1,
                target_uid: to.0,
                target_suid: to.1,
                ..signal.clone()
            };
            assert!(!s.needs_kill(), "{s:?}");
        }
        assert_eq!(SignalEvent { sig: 99, ..signal }.name(), "signal 99");
    }

    #[test]
    fn event_round_trips_through_json() {
        let e = Event {
            ts_ns: 1,
            pid: 2,
            tid: 3,
            ppid: 1,
            cgroup: CgroupId(42),
            comm: "sh".into(),
            kind: EventKind::Syscall(Box::new(SyscallEvent {
                syscall: "openat".into(),
                nr: 257,
                args: [0; 6],
                ret: Some(-2),
                errno: Some("ENOENT".into()),
                paths: vec![PathArg {
                    role: PathRole::Target,
                    raw: "x".into(),
                    path: ContainerPath::new("/tmp/x"),
                    resolution: Resolution::Resolved,
                    truncated: false,
                }],
                fd_path: None,
                fd_addr: None,
                addr: Some(SocketAddress::Inet {
                    addr: "127.0.0.1:80".parse().unwrap(),
                }),
                argv: None,
                incomplete: vec![],
            })),
        };
        let json = serde_json::to_string(&e).unwrap();
        assert!(json.contains(r#""event":"syscall""#), "{json}");
        let back: Event = serde_json::from_str(&json).unwrap();
        assert_eq!(back, e);
    }
}
