//! Fast reading of event-log lines. The log's JSON puts an event's kind
//! fields beside its common ones (serde `flatten`), which serde can only
//! read by buffering every line into a generic tree first: 5x slower. Lines
//! are instead read into one flat struct holding every field any record can
//! have, then checked and converted. The JSON shape is unchanged.

use std::path::PathBuf;

use serde::Deserialize;

use super::log::{LogHeader, LogLine, LogSummary};
use super::{
    CgroupId, ContainerPath, Event, EventKind, LossCounters, PathArg, PathRole, Resolution,
    SignalEvent, SocketAddress, SyscallEvent,
};

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum RecordTag {
    Header,
    Event,
    Summary,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum EventTag {
    Fork,
    Syscall,
    Exit,
    Running,
    SyscallSeen,
    Signal,
    Unhooked,
    ForeignAbi,
}

/// Every field of every record kind; which are present depends on the kind.
#[derive(Deserialize)]
pub(super) struct FlatRecord {
    record: Option<RecordTag>,
    // header
    format: Option<String>,
    version: Option<u32>,
    target: Option<String>,
    cgroup_path: Option<PathBuf>,
    started_unix_ms: Option<u64>,
    // summary
    events: Option<u64>,
    duration_ms: Option<u64>,
    loss: Option<LossCounters>,
    complete: Option<bool>,
    // event (cgroup is also the header's)
    cgroup: Option<CgroupId>,
    ts_ns: Option<u64>,
    pid: Option<u32>,
    tid: Option<u32>,
    ppid: Option<u32>,
    comm: Option<String>,
    event: Option<EventTag>,
    child_pid: Option<u32>,
    child_tid: Option<u32>,
    thread: Option<bool>,
    clone_flags: Option<u64>,
    process_exited: Option<bool>,
    syscall: Option<String>,
    nr: Option<u32>,
    args: Option<[u64; 6]>,
    ret: Option<i64>,
    errno: Option<String>,
    #[serde(default)]
    paths: Vec<PathArg>,
    fd_path: Option<ContainerPath>,
    fd_addr: Option<SocketAddress>,
    addr: Option<SocketAddress>,
    argv: Option<Vec<String>>,
    #[serde(default)]
    incomplete: Vec<String>,
    exe: Option<ContainerPath>,
    cwd: Option<ContainerPath>,
    // signal
    sig: Option<u32>,
    target_pid: Option<u32>,
    sender_uid: Option<u32>,
    sender_euid: Option<u32>,
    target_uid: Option<u32>,
    target_suid: Option<u32>,
    // unhooked
    nrs: Option<Vec<u32>>,
    // foreign_abi
    elf_class: Option<u8>,
    machine: Option<u16>,
}

fn need<T>(v: Option<T>, field: &str, what: &str) -> Result<T, String> {
    v.ok_or_else(|| format!("{what} lacks the field `{field}`"))
}

impl TryFrom<FlatRecord> for Event {
    type Error = String;
    fn try_from(r: FlatRecord) -> Result<Self, String> {
        let what = "an event";
        let kind = match need(r.event, "event", what)? {
            EventTag::Fork => EventKind::Fork {
                child_pid: need(r.child_pid, "child_pid", "a fork event")?,
                child_tid: need(r.child_tid, "child_tid", "a fork event")?,
                thread: need(r.thread, "thread", "a fork event")?,
                clone_flags: need(r.clone_flags, "clone_flags", "a fork event")?,
            },
            EventTag::Exit => EventKind::Exit {
                process_exited: need(r.process_exited, "process_exited", "an exit event")?,
            },
            EventTag::Running => EventKind::Running {
                exe: r.exe,
                argv: r.argv.unwrap_or_default(),
                cwd: r.cwd,
            },
            EventTag::SyscallSeen => EventKind::SyscallSeen {
                nr: need(r.nr, "nr", "a syscall_seen event")?,
                syscall: r.syscall,
            },
            EventTag::Unhooked => EventKind::Unhooked {
                nrs: need(r.nrs, "nrs", "an unhooked event")?,
            },
            EventTag::ForeignAbi => EventKind::ForeignAbi {
                elf_class: need(r.elf_class, "elf_class", "a foreign_abi event")?,
                machine: need(r.machine, "machine", "a foreign_abi event")?,
            },
            EventTag::Signal => {
                let w = "a signal event";
                EventKind::Signal(SignalEvent {
                    sig: need(r.sig, "sig", w)?,
                    target_pid: need(r.target_pid, "target_pid", w)?,
                    sender_uid: need(r.sender_uid, "sender_uid", w)?,
                    sender_euid: need(r.sender_euid, "sender_euid", w)?,
                    target_uid: need(r.target_uid, "target_uid", w)?,
                    target_suid: need(r.target_suid, "target_suid", w)?,
                })
            }
            EventTag::Syscall => EventKind::Syscall(Box::new(SyscallEvent {
                syscall: need(r.syscall, "syscall", "a syscall event")?,
                nr: need(r.nr, "nr", "a syscall event")?,
                args: need(r.args, "args", "a syscall event")?,
                ret: r.ret,
                errno: r.errno,
                paths: r.paths,
                fd_path: r.fd_path,
                fd_addr: r.fd_addr,
                addr: r.addr,
                argv: r.argv,
                incomplete: r.incomplete,
            })),
        };
        Ok(Event {
            ts_ns: need(r.ts_ns, "ts_ns", what)?,
            pid: need(r.pid, "pid", what)?,
            tid: need(r.tid, "tid", what)?,
            ppid: need(r.ppid, "ppid", what)?,
            cgroup: need(r.cgroup, "cgroup", what)?,
            comm: need(r.comm, "comm", what)?,
            kind,
        })
    }
}

impl TryFrom<FlatRecord> for LogLine {
    type Error = String;
    fn try_from(r: FlatRecord) -> Result<Self, String> {
        Ok(match need(r.record.as_ref(), "record", "a log line")? {
            RecordTag::Header => LogLine::Header(LogHeader {
                format: need(r.format, "format", "the header")?,
                version: need(r.version, "version", "the header")?,
                target: need(r.target, "target", "the header")?,
                cgroup: need(r.cgroup, "cgroup", "the header")?,
                cgroup_path: need(r.cgroup_path, "cgroup_path", "the header")?,
                started_unix_ms: need(r.started_unix_ms, "started_unix_ms", "the header")?,
            }),
            RecordTag::Summary => LogLine::Summary(LogSummary {
                events: need(r.events, "events", "the summary")?,
                duration_ms: need(r.duration_ms, "duration_ms", "the summary")?,
                loss: need(r.loss, "loss", "the summary")?,
                complete: need(r.complete, "complete", "the summary")?,
            }),
            RecordTag::Event => LogLine::Event(Box::new(Event::try_from(r)?)),
        })
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum StatusTag {
    Resolved,
    Unresolved,
    Unreadable,
    Literal,
    Descriptor,
}

/// A path argument as written: the resolution's `status` and `reason` sit
/// beside the other fields.
#[derive(Deserialize)]
pub(super) struct FlatPathArg {
    role: PathRole,
    raw: String,
    path: Option<ContainerPath>,
    status: StatusTag,
    reason: Option<String>,
    #[serde(default)]
    truncated: bool,
}

impl TryFrom<FlatPathArg> for PathArg {
    type Error = String;
    fn try_from(p: FlatPathArg) -> Result<Self, String> {
        let resolution = match p.status {
            StatusTag::Resolved => Resolution::Resolved,
            StatusTag::Unresolved => {
                Resolution::Unresolved(need(p.reason, "reason", "an unresolved path")?)
            }
            StatusTag::Unreadable => Resolution::Unreadable,
            StatusTag::Literal => Resolution::Literal,
            StatusTag::Descriptor => Resolution::Descriptor,
        };
        Ok(PathArg {
            role: p.role,
            raw: p.raw,
            path: p.path,
            resolution,
            truncated: p.truncated,
        })
    }
}
