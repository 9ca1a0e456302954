//! Raw records -> [`Event`]s with absolute names.
//!
//! The kernel reports names as the program passed them. This keeps, per
//! process, the root (chroot), the cwd and the fd table (which names each
//! descriptor stands for), so absolute, relative and dirfd-relative names
//! become absolute as the container sees them. Tables are shared or copied
//! at fork as the clone flags say. Anything that cannot be resolved is
//! marked, never dropped.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use cimplifier_common::flags;
use cimplifier_common::syscalls::{self, nr};

use super::cgroup::{ProcessRoot, ProcessSnapshot};
use super::decode::{RawHeader, RawRecord, RawStr, RawSyscall};
use super::{
    ARGV_UNREADABLE, CgroupId, ContainerPath, Event, EventKind, PathArg, PathRole, Resolution,
    SOCKADDR_UNREADABLE, SocketAddress, SyscallEvent,
};

const AT_FDCWD: i32 = -100;
const AT_EMPTY_PATH: u64 = 0x1000;
const O_CLOEXEC: u64 = 0o2_000_000;
const CLONE_FS: u64 = 0x200;
const CLONE_FILES: u64 = 0x400;
const CLONE_THREAD: u64 = 0x10000;
const F_DUPFD: u64 = 0;
const F_SETFD: u64 = 2;
const F_DUPFD_CLOEXEC: u64 = 1030;
const FD_CLOEXEC: u64 = 1;
const CLOSE_RANGE_UNSHARE: u64 = 2;
const CLOSE_RANGE_CLOEXEC: u64 = 4;
const AF_UNIX: u16 = 1;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

/// What a descriptor stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
enum FdTarget {
    Path(ContainerPath),
    /// A socket, with the address it was bound or connected to, if any.
    Socket(Option<SocketAddress>),
}

#[derive(Clone, Debug)]
struct Fd {
    target: FdTarget,
    cloexec: bool,
}

impl Fd {
    fn new(target: FdTarget, cloexec: bool) -> Self {
        Self { target, cloexec }
    }
}

type FdTable = HashMap<i32, Fd>;

/// Tables can be shared between processes (CLONE_FS, CLONE_FILES), so they
/// live in their own maps with reference counts.
type TableId = u64;

/// What CLONE_FS shares: the root and the cwd, both in the container's view.
#[derive(Clone, Debug, Default)]
struct FsState {
    root: ProcessRoot,
    cwd: Option<ContainerPath>,
}

#[derive(Clone, Copy, Debug)]
struct Process {
    fs: TableId,
    files: TableId,
}

/// How a name argument of a syscall is interpreted.
#[derive(Clone, Copy)]
struct NameArg {
    role: PathRole,
    /// The argument holding the directory fd the name is relative to;
    /// `None` means the cwd.
    dirfd: Option<usize>,
    /// The argument holding flags where AT_EMPTY_PATH means "the dirfd itself".
    empty_path_flags: Option<usize>,
}

const fn name(
    role: PathRole,
    dirfd: Option<usize>,
    empty_path_flags: Option<usize>,
) -> Option<NameArg> {
    Some(NameArg {
        role,
        dirfd,
        empty_path_flags,
    })
}

/// Meaning of string slots 0 and 1 of each syscall.
fn name_args(n: u32) -> [Option<NameArg>; 2] {
    use PathRole::*;
    let literal = |role| name(role, None, None);
    match n {
        nr::OPEN
        | nr::CREAT
        | nr::STAT
        | nr::LSTAT
        | nr::ACCESS
        | nr::CHDIR
        | nr::MKDIR
        | nr::RMDIR
        | nr::UNLINK
        | nr::CHMOD
        | nr::CHOWN
        | nr::LCHOWN
        | nr::TRUNCATE
        | nr::MKNOD
        | nr::CHROOT
        | nr::EXECVE => [name(Target, None, None), None],
        // pivot_root(new_root, put_old): the old root moves to put_old.
        nr::PIVOT_ROOT => [name(Target, None, None), name(Old, None, None)],
        nr::OPENAT
        | nr::OPENAT2
        | nr::FACCESSAT
        | nr::MKDIRAT
        | nr::UNLINKAT
        | nr::FCHMODAT
        | nr::MKNODAT => [name(Target, Some(0), None), None],
        // The path may be NULL (no string) or "" with AT_EMPTY_PATH.
        nr::UTIMENSAT => [name(Target, Some(0), Some(3)), None],
        nr::NEWFSTATAT | nr::FACCESSAT2 | nr::FCHMODAT2 => [name(Target, Some(0), Some(3)), None],
        nr::STATX => [name(Target, Some(0), Some(2)), None],
        nr::FCHOWNAT | nr::EXECVEAT => [name(Target, Some(0), Some(4)), None],
        nr::READLINK => [name(Target, None, None), literal(LinkValue)],
        nr::READLINKAT => [name(Target, Some(0), None), literal(LinkValue)],
        nr::RENAME | nr::LINK => [name(Old, None, None), name(New, None, None)],
        nr::RENAMEAT | nr::RENAMEAT2 => [name(Old, Some(0), None), name(New, Some(2), None)],
        nr::LINKAT => [name(Old, Some(0), Some(4)), name(New, Some(2), None)],
        nr::SYMLINK => [literal(LinkContent), name(New, None, None)],
        nr::SYMLINKAT => [literal(LinkContent), name(New, Some(1), None)],
        _ => [None, None],
    }
}

fn is_literal(role: PathRole) -> bool {
    matches!(role, PathRole::LinkContent | PathRole::LinkValue)
}

/// An execve seen at entry, waiting for its exit.
struct PendingExec {
    pid: u32,
    /// The entry record, to report the exec if its exit never arrives.
    entry: RawSyscall,
    path: PathArg,
    argv: Option<Vec<String>>,
    /// argv had more than MAX_ARGV entries or did not fit its slot.
    argv_truncated: bool,
    /// argv (or part of it) could not be read.
    argv_unreadable: bool,
}

impl PendingExec {
    /// What the exec event will say was not recorded fully.
    fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if self.argv_truncated {
            notes.push(format!(
                "argv cut after {} arguments",
                self.argv.as_ref().map_or(0, Vec::len)
            ));
        }
        if self.argv_unreadable {
            notes.push(ARGV_UNREADABLE.to_owned());
        }
        notes.extend(name_notes(std::slice::from_ref(&self.path)));
        notes
    }
}

/// The name argument of an exec call (execve's shape when `nr` is unknown).
fn exec_name_arg(nr: u32) -> NameArg {
    name_args(nr)[0].unwrap_or(NameArg {
        role: PathRole::Target,
        dirfd: None,
        empty_path_flags: None,
    })
}

/// Reads the state of a process the resolver meets without having seen its
/// fork (it was running before the watch began).
pub type Snapshotter = Box<dyn Fn(u32) -> ProcessSnapshot + Send>;

#[derive(Default)]
pub struct Resolver {
    processes: HashMap<u32, Process>,
    fs_tables: HashMap<TableId, (u32, FsState)>,
    fd_tables: HashMap<TableId, (u32, FdTable)>,
    next_table: TableId,
    pending_exec: HashMap<u32, PendingExec>,
    snapshot: Option<Snapshotter>,
    /// `Running` events of seeded processes, not yet handed out.
    queued: Vec<Event>,
}

impl Resolver {
    pub fn new() -> Self {
        Self::default()
    }

    /// A resolver that reads unknown processes' state through `snapshot`.
    pub fn with_snapshotter(snapshot: Snapshotter) -> Self {
        Self {
            snapshot: Some(snapshot),
            ..Self::default()
        }
    }

    /// Records the state of a process that was running before the watch:
    /// its root, cwd and descriptors, all in the container's view.
    pub fn seed_process(
        &mut self,
        pid: u32,
        root: ProcessRoot,
        cwd: Option<ContainerPath>,
        fds: Vec<(i32, ContainerPath)>,
    ) {
        self.forget_process(pid);
        let table = fds
            .into_iter()
            .map(|(fd, path)| (fd, Fd::new(FdTarget::Path(path), false)))
            .collect();
        let fs = self.new_fs(FsState { root, cwd });
        let files = self.new_fd_table(table);
        self.processes.insert(pid, Process { fs, files });
    }

    /// Records a process found running (before the watch began, or met
    /// without its fork) and queues the `Running` event that stands for its
    /// unseen exec.
    pub fn seed_running(&mut self, header: &RawHeader, snap: ProcessSnapshot) {
        // Gone before /proc could be read: its parent's root when the parent
        // is followed (fork copies it), else the container's. This is the
        // one assumption made about a root, for processes that left no trace
        // of one; a root /proc did show but that cannot be placed stays
        // unknown.
        let root = snap
            .root
            .unwrap_or_else(|| match self.processes.get(&header.ppid) {
                Some(parent) => self.root(*parent),
                None => ProcessRoot::default(),
            });
        self.seed_process(header.pid, root, snap.cwd.clone(), snap.fds);
        self.queued.push(event(
            header,
            EventKind::Running {
                exe: snap.exe,
                argv: snap.argv,
                cwd: snap.cwd,
            },
        ));
    }

    /// Events produced outside [`Resolver::handle`] (by
    /// [`Resolver::seed_running`]), oldest first.
    pub fn take_queued(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.queued)
    }

    /// Sets the cwd of `pid` when it is not known (a log that shows the cwd
    /// without showing how the process got there).
    pub fn learn_cwd(&mut self, pid: u32, cwd: ContainerPath) {
        let p = self.process(pid);
        if let Some(entry) = self.fs_tables.get_mut(&p.fs)
            && entry.1.cwd.is_none()
        {
            entry.1.cwd = Some(cwd);
        }
    }

    /// Whether the resolver already holds state for `pid`.
    pub fn is_tracked(&self, pid: u32) -> bool {
        self.processes.contains_key(&pid)
    }

    /// Drops the state of `pid`, and any exec of it waiting for its exit:
    /// its events will no longer be seen.
    pub fn forget(&mut self, pid: u32) {
        self.forget_process(pid);
        self.pending_exec.remove(&pid);
    }

    /// Processes the resolver holds state for (for tests and memory checks).
    pub fn tracked_processes(&self) -> usize {
        self.processes.len()
    }

    fn new_fs(&mut self, fs: FsState) -> TableId {
        self.next_table += 1;
        self.fs_tables.insert(self.next_table, (1, fs));
        self.next_table
    }

    fn new_fd_table(&mut self, table: FdTable) -> TableId {
        self.next_table += 1;
        self.fd_tables.insert(self.next_table, (1, table));
        self.next_table
    }

    fn process(&mut self, pid: u32) -> Process {
        if let Some(p) = self.processes.get(&pid) {
            return *p;
        }
        self.seed_process(pid, ProcessRoot::default(), None, Vec::new());
        self.processes[&pid]
    }

    fn forget_process(&mut self, pid: u32) {
        let Some(p) = self.processes.remove(&pid) else {
            return;
        };
        if let Some(entry) = self.fs_tables.get_mut(&p.fs) {
            entry.0 -= 1;
            if entry.0 == 0 {
                self.fs_tables.remove(&p.fs);
            }
        }
        if let Some(entry) = self.fd_tables.get_mut(&p.files) {
            entry.0 -= 1;
            if entry.0 == 0 {
                self.fd_tables.remove(&p.files);
            }
        }
    }

    fn cwd(&self, p: Process) -> Option<&ContainerPath> {
        self.fs_tables.get(&p.fs).and_then(|(_, f)| f.cwd.as_ref())
    }

    fn root(&self, p: Process) -> ProcessRoot {
        self.fs_tables
            .get(&p.fs)
            .map(|(_, f)| f.root.clone())
            .unwrap_or_default()
    }

    fn fs_mut(&mut self, p: Process) -> Option<&mut FsState> {
        self.fs_tables.get_mut(&p.fs).map(|(_, f)| f)
    }

    fn fds(&mut self, p: Process) -> &mut FdTable {
        &mut self
            .fd_tables
            .entry(p.files)
            .or_insert_with(|| (1, FdTable::new()))
            .1
    }

    fn fd_path(&self, p: Process, fd: i32) -> Option<ContainerPath> {
        match self.fd_tables.get(&p.files)?.1.get(&fd)?.target {
            FdTarget::Path(ref path) => Some(path.clone()),
            FdTarget::Socket(_) => None,
        }
    }

    fn fd_addr(&self, p: Process, fd: i32) -> Option<SocketAddress> {
        match self.fd_tables.get(&p.files)?.1.get(&fd)?.target {
            FdTarget::Socket(ref addr) => addr.clone(),
            FdTarget::Path(_) => None,
        }
    }

    /// Turns one raw record into the events it completes (usually one),
    /// preceded by a `Running` event for a process first met here.
    pub fn handle(&mut self, rec: RawRecord) -> Vec<Event> {
        let header = rec.header();
        if !self.processes.contains_key(&header.pid)
            && let Some(snapshot) = &self.snapshot
        {
            let (header, snap) = (header.clone(), snapshot(header.pid));
            self.seed_running(&header, snap);
        }
        if self.queued.is_empty() {
            return self.handle_record(rec);
        }
        let mut events = self.take_queued();
        events.extend(self.handle_record(rec));
        events
    }

    fn handle_record(&mut self, rec: RawRecord) -> Vec<Event> {
        match rec {
            RawRecord::Fork {
                header,
                child_tid,
                clone_flags,
            } => {
                let thread = clone_flags & CLONE_THREAD != 0;
                if !thread {
                    self.fork(header.pid, child_tid, clone_flags);
                }
                let child_pid = if thread { header.pid } else { child_tid };
                vec![event(
                    &header,
                    EventKind::Fork {
                        child_pid,
                        child_tid,
                        thread,
                        clone_flags,
                    },
                )]
            }
            RawRecord::Exit { header, group_dead } => {
                // Killed mid-exec (or the exit record was lost): the attempt
                // still named a binary, so report it rather than drop it.
                let mut events: Vec<Event> = self
                    .pending_exec
                    .remove(&header.tid)
                    .map(|p| unfinished_exec(p, "the thread exited before exec returned"))
                    .into_iter()
                    .collect();
                if group_dead {
                    self.forget_process(header.pid);
                }
                events.push(event(
                    &header,
                    EventKind::Exit {
                        process_exited: group_dead,
                    },
                ));
                events
            }
            RawRecord::ExecArgs(raw) => {
                let pending = self.exec_entry(raw);
                let tid = pending.entry.header.tid;
                self.pending_exec
                    .insert(tid, pending)
                    .map(|p| unfinished_exec(p, "exec exit not seen before the next exec"))
                    .into_iter()
                    .collect()
            }
            RawRecord::ExecImage(raw) => self.exec_image(raw),
            RawRecord::Syscall(raw) => vec![self.syscall(raw)],
        }
    }

    fn fork(&mut self, parent_pid: u32, child: u32, clone_flags: u64) {
        let parent = self.process(parent_pid);
        self.forget_process(child);
        let fs = if clone_flags & CLONE_FS != 0 {
            if let Some(e) = self.fs_tables.get_mut(&parent.fs) {
                e.0 += 1;
            }
            parent.fs
        } else {
            let state = FsState {
                root: self.root(parent),
                cwd: self.cwd(parent).cloned(),
            };
            self.new_fs(state)
        };
        let files = if clone_flags & CLONE_FILES != 0 {
            if let Some(e) = self.fd_tables.get_mut(&parent.files) {
                e.0 += 1;
            }
            parent.files
        } else {
            let table = self.fds(parent).clone();
            self.new_fd_table(table)
        };
        self.processes.insert(child, Process { fs, files });
    }

    /// Resolves name `raw` of process `p`, relative to the cwd or `dirfd`.
    fn resolve(&self, p: Process, raw: &RawStr, arg: NameArg, args: &[u64; 6]) -> PathArg {
        let (text, truncated) = match raw {
            RawStr::Fault => {
                return PathArg {
                    role: arg.role,
                    raw: String::new(),
                    path: None,
                    resolution: Resolution::Unreadable,
                    truncated: false,
                };
            }
            RawStr::Text { bytes, truncated } => {
                (String::from_utf8_lossy(bytes).into_owned(), *truncated)
            }
        };
        let literal = |resolution| PathArg {
            role: arg.role,
            raw: text.clone(),
            path: None,
            resolution,
            truncated,
        };
        if is_literal(arg.role) {
            return literal(Resolution::Literal);
        }
        // Every name, absolute or relative, lies inside the process's root.
        let root = match self.root(p) {
            ProcessRoot::Known(root) => Ok(root),
            ProcessRoot::Unknown(why) => Err(format!("root unknown (chroot): {why}")),
        };
        if text.starts_with('/') {
            return match root {
                Ok(root) => PathArg {
                    role: arg.role,
                    path: ContainerPath::new(&text).map(|name| reroot(&root, &name)),
                    raw: text,
                    resolution: Resolution::Resolved,
                    truncated,
                },
                Err(reason) => literal(Resolution::Unresolved(reason)),
            };
        }
        let dirfd = arg
            .dirfd
            .map(|i| args[i] as i32)
            .filter(|&fd| fd != AT_FDCWD);
        let base = match dirfd {
            None => self.cwd(p).cloned().ok_or_else(|| {
                "cwd unknown: the process was running before the watch and its cwd could not be read".to_owned()
            }),
            Some(fd) => self.fd_path(p, fd).ok_or_else(|| format!("dirfd {fd} is not in the fd table")),
        };
        if text.is_empty() {
            let empty_ok = arg
                .empty_path_flags
                .is_some_and(|i| args[i] & AT_EMPTY_PATH != 0);
            if !empty_ok {
                return literal(Resolution::Unresolved("empty name".to_owned()));
            }
            // AT_EMPTY_PATH: the call acts on the descriptor itself. One that
            // names no path (a pipe, a socket) is not a missing name.
            if base.is_err() {
                return literal(Resolution::Descriptor);
            }
        }
        let base = base.and_then(|dir| match root {
            Ok(root) => Ok(join_in_root(&root, &dir, &text)),
            // The descriptor itself needs no root.
            Err(_) if text.is_empty() => Ok(dir),
            Err(reason) => Err(reason),
        });
        match base {
            Ok(path) => PathArg {
                role: arg.role,
                path: Some(path),
                raw: text,
                resolution: Resolution::Resolved,
                truncated,
            },
            Err(reason) => literal(Resolution::Unresolved(reason)),
        }
    }

    fn resolve_names(&mut self, raw: &RawSyscall, p: Process) -> Vec<PathArg> {
        let mut paths = Vec::new();
        let [a0, a1] = name_args(raw.nr);
        for (arg, s) in [(a0, &raw.str0), (a1, &raw.str1)] {
            match (arg, s) {
                (Some(arg), Some(s)) => paths.push(self.resolve(p, s, arg, &raw.args)),
                // utimensat(fd, NULL, ...): acts on the fd itself.
                (Some(arg), None) if raw.nr == nr::UTIMENSAT && arg.role == PathRole::Target => {
                    if let Some(path) = self.fd_path(p, raw.args[0] as i32) {
                        paths.push(PathArg {
                            role: arg.role,
                            raw: String::new(),
                            path: Some(path),
                            resolution: Resolution::Resolved,
                            truncated: false,
                        });
                    }
                }
                _ => {}
            }
        }
        paths
    }

    fn exec_entry(&mut self, mut raw: RawSyscall) -> PendingExec {
        let p = self.process(raw.header.pid);
        // decode() only lets exec calls through here.
        let path = match &raw.str0 {
            Some(s) => self.resolve(p, s, exec_name_arg(raw.nr), &raw.args),
            None => unreadable_target(),
        };
        PendingExec {
            pid: raw.header.pid,
            path,
            argv_truncated: raw.has(flags::ARGV_TRUNCATED),
            argv_unreadable: raw.has(flags::STR1_FAULT),
            argv: raw.argv.take(),
            entry: raw,
        }
    }

    /// The exec loaded its image: names its entry could not read are taken
    /// from the kernel's own copy. The exit then comes from `header.tid`,
    /// which is the leader's id even when another thread called exec.
    fn exec_image(&mut self, raw: RawSyscall) -> Vec<Event> {
        let p = self.process(raw.header.pid);
        let caller = raw.ret as u32;
        let key = [caller, raw.header.tid]
            .into_iter()
            .find(|k| self.pending_exec.contains_key(k))
            .or_else(|| {
                self.pending_exec
                    .iter()
                    .find(|(_, e)| e.pid == raw.header.pid)
                    .map(|(k, _)| *k)
            });
        let mut pending = match key.and_then(|k| self.pending_exec.remove(&k)) {
            Some(pending) => pending,
            // The entry record was not seen: the image stands for it.
            None => PendingExec {
                pid: raw.header.pid,
                path: unreadable_target(),
                argv: None,
                argv_truncated: false,
                argv_unreadable: true,
                entry: RawSyscall {
                    ret: 0,
                    str0: None,
                    str1: None,
                    argv: None,
                    ..raw.clone()
                },
            },
        };
        self.fill_exec(p, &mut pending, &raw, true);
        self.pending_exec
            .insert(raw.header.tid, pending)
            .map(|p| unfinished_exec(p, "exec exit not seen before the next exec"))
            .into_iter()
            .collect()
    }

    /// Fills the names of `pending` that its entry could not read from a
    /// later copy: the exit of a failed exec (read again once the kernel had
    /// faulted them in) or the loaded image (`image`).
    fn fill_exec(&self, p: Process, pending: &mut PendingExec, raw: &RawSyscall, image: bool) {
        if pending.path.resolution == Resolution::Unreadable
            && let Some(s @ RawStr::Text { .. }) = &raw.str0
        {
            pending.path = if image {
                self.image_path(p, raw, s)
            } else {
                self.resolve(p, s, exec_name_arg(raw.nr), &raw.args)
            };
        }
        if (pending.argv_unreadable || pending.argv.is_none())
            && raw.argv.is_some()
            && !raw.has(flags::STR1_FAULT)
        {
            pending.argv = raw.argv.clone();
            pending.argv_unreadable = false;
            pending.argv_truncated = raw.has(flags::ARGV_TRUNCATED);
        }
    }

    /// The name an exec's image was loaded from, as the program named it.
    /// The kernel calls a file opened through a dirfd `/dev/fd/N/NAME`
    /// (`/dev/fd/N` for `AT_EMPTY_PATH`): that is NAME relative to fd N.
    fn image_path(&self, p: Process, raw: &RawSyscall, name: &RawStr) -> PathArg {
        let arg = exec_name_arg(raw.nr);
        if let RawStr::Text { bytes, truncated } = name
            && raw.nr == nr::EXECVEAT
            && raw.args[0] as i32 != AT_FDCWD
        {
            let prefix = format!("/dev/fd/{}", raw.args[0] as i32);
            if let Some(rest) = bytes.strip_prefix(prefix.as_bytes())
                && (rest.is_empty() || rest[0] == b'/')
            {
                let rest = RawStr::Text {
                    bytes: rest.strip_prefix(b"/").unwrap_or(rest).to_vec(),
                    truncated: *truncated,
                };
                return self.resolve(p, &rest, arg, &raw.args);
            }
        }
        self.resolve(p, name, arg, &raw.args)
    }

    fn syscall(&mut self, raw: RawSyscall) -> Event {
        let p = self.process(raw.header.pid);
        let no_return = raw.has(flags::NO_RETURN);
        let ret = (!no_return).then_some(raw.ret);
        let mut incomplete = Vec::new();
        let mut argv = None;
        let paths = if raw.nr == nr::EXECVE || raw.nr == nr::EXECVEAT {
            // A successful exec from a non-leader thread exits as the leader.
            let tid = raw.header.tid;
            let key = if self.pending_exec.contains_key(&tid) {
                Some(tid)
            } else {
                self.pending_exec
                    .iter()
                    .find(|(_, e)| e.pid == raw.header.pid)
                    .map(|(k, _)| *k)
            };
            match key.and_then(|k| self.pending_exec.remove(&k)) {
                Some(mut pending) => {
                    self.fill_exec(p, &mut pending, &raw, false);
                    incomplete.extend(pending.notes());
                    argv = pending.argv;
                    vec![pending.path]
                }
                None => {
                    incomplete.push("exec entry (filename, argv) not seen".to_owned());
                    Vec::new()
                }
            }
        } else {
            let paths = self.resolve_names(&raw, p);
            incomplete.extend(name_notes(&paths));
            paths
        };
        let addr = raw.sockaddr.as_deref().map(|b| self.socket_address(p, b));
        if raw.has(flags::SOCKADDR_FAULT) {
            incomplete.push(SOCKADDR_UNREADABLE.to_owned());
        }
        let fd = raw.args[0] as i32;
        let on_fd = matches!(
            raw.nr,
            nr::FCHDIR
                | nr::GETDENTS64
                | nr::CLOSE
                | nr::DUP
                | nr::DUP2
                | nr::DUP3
                | nr::FCNTL
                | nr::FCHMOD
                | nr::FCHOWN
        );
        let on_socket = matches!(
            raw.nr,
            nr::BIND
                | nr::CONNECT
                | nr::LISTEN
                | nr::ACCEPT
                | nr::ACCEPT4
                | nr::SENDTO
                | nr::SENDMSG
        );
        let fd_path = on_fd.then(|| self.fd_path(p, fd)).flatten();
        let fd_addr = on_socket.then(|| self.fd_addr(p, fd)).flatten();
        let succeeded = ret.is_some_and(|r| r >= 0);
        if succeeded {
            self.apply(p, &raw, &paths, addr.as_ref());
        }
        if raw.nr == nr::CLOSE {
            // close releases the descriptor even when it reports an error.
            self.fds(p).remove(&fd);
        }
        // Only -4095..=-1 are errnos; anything lower is not a kernel error
        // return (and i64::MIN cannot be negated).
        let errno = ret
            .filter(|&r| (-4095..0).contains(&r))
            .map(|r| format!("{:?}", nix::errno::Errno::from_raw((-r) as i32)));
        let kind = EventKind::Syscall(Box::new(SyscallEvent {
            syscall: syscalls::name(raw.nr).to_owned(),
            nr: raw.nr,
            args: raw.args,
            ret,
            errno,
            paths,
            fd_path,
            fd_addr,
            addr,
            argv,
            incomplete,
        }));
        event(&raw.header, kind)
    }

    /// Updates cwd and fd tables after a successful call.
    fn apply(
        &mut self,
        p: Process,
        raw: &RawSyscall,
        paths: &[PathArg],
        addr: Option<&SocketAddress>,
    ) {
        let args = &raw.args;
        let ret = raw.ret as i32;
        // A cut name is not the object's name: leave the fd or cwd unknown
        // rather than resolve later names against the wrong directory.
        let target = || {
            paths
                .iter()
                .find(|a| a.role == PathRole::Target && !a.truncated)
                .and_then(|a| a.path.clone())
        };
        match raw.nr {
            nr::OPEN | nr::OPENAT | nr::OPENAT2 | nr::CREAT => {
                let cloexec = match raw.nr {
                    nr::OPEN => args[1] & O_CLOEXEC != 0,
                    nr::OPENAT => args[2] & O_CLOEXEC != 0,
                    _ => false, // openat2's flags are in user memory; creat has none
                };
                match target() {
                    Some(path) => {
                        self.fds(p)
                            .insert(ret, Fd::new(FdTarget::Path(path), cloexec));
                    }
                    None => {
                        self.fds(p).remove(&ret);
                    }
                }
            }
            nr::CHDIR => {
                let cwd = target();
                if let Some(fs) = self.fs_mut(p) {
                    fs.cwd = cwd;
                }
            }
            nr::FCHDIR => {
                let cwd = self.fd_path(p, args[0] as i32);
                if let Some(fs) = self.fs_mut(p) {
                    fs.cwd = cwd;
                }
            }
            nr::CHROOT => {
                // The cwd does not move: chroot without chdir leaves it
                // outside the new root.
                let root = match target() {
                    Some(root) => ProcessRoot::Known(root),
                    None => ProcessRoot::Unknown(format!(
                        "chroot to {:?}, a name that was not resolved",
                        paths.first().map_or("", |a| a.raw.as_str())
                    )),
                };
                if let Some(fs) = self.fs_mut(p) {
                    fs.root = root;
                }
            }
            nr::PIVOT_ROOT => {
                // The new root becomes `/`: a container's view is the one
                // after its runtime's pivot_root (runc calls
                // pivot_root(".", ".") as every container starts). The cwd
                // and descriptors below the new root are renamed into it;
                // the others name the old tree, which has no name now.
                // Other processes of the mount namespace are not moved.
                let new_root = target();
                let rebase = |path: &ContainerPath| new_root.as_ref().and_then(|r| inside(r, path));
                if let Some(fs) = self.fs_mut(p) {
                    fs.root = ProcessRoot::default();
                    fs.cwd = fs.cwd.as_ref().and_then(rebase);
                }
                self.fds(p).retain(|_, fd| match &mut fd.target {
                    FdTarget::Path(path) => match rebase(path) {
                        Some(rebased) => {
                            *path = rebased;
                            true
                        }
                        None => false,
                    },
                    FdTarget::Socket(_) => true,
                });
            }
            nr::DUP | nr::DUP2 | nr::DUP3 | nr::FCNTL => {
                let (new_fd, cloexec) = match raw.nr {
                    nr::DUP => (ret, false),
                    nr::DUP2 => (args[1] as i32, false),
                    nr::DUP3 => (args[1] as i32, args[2] & O_CLOEXEC != 0),
                    _ => match args[1] {
                        F_DUPFD => (ret, false),
                        F_DUPFD_CLOEXEC => (ret, true),
                        F_SETFD => {
                            if let Some(fd) = self.fds(p).get_mut(&(args[0] as i32)) {
                                fd.cloexec = args[2] & FD_CLOEXEC != 0;
                            }
                            return;
                        }
                        _ => return,
                    },
                };
                let old = self.fds(p).get(&(args[0] as i32)).cloned();
                match old {
                    Some(fd) => {
                        self.fds(p).insert(new_fd, Fd::new(fd.target, cloexec));
                    }
                    None => {
                        self.fds(p).remove(&new_fd);
                    }
                }
            }
            nr::CLOSE_RANGE => {
                let (first, last, flags) = (args[0] as u32, args[1] as u32, args[2]);
                let p = if flags & CLOSE_RANGE_UNSHARE != 0 {
                    self.unshare_files(raw.header.pid)
                } else {
                    p
                };
                let table = self.fds(p);
                if flags & CLOSE_RANGE_CLOEXEC != 0 {
                    for (fd, entry) in table.iter_mut() {
                        if (first..=last).contains(&(*fd as u32)) {
                            entry.cloexec = true;
                        }
                    }
                } else {
                    table.retain(|fd, _| !(first..=last).contains(&(*fd as u32)));
                }
            }
            nr::SOCKET => {
                self.fds(p)
                    .insert(ret, Fd::new(FdTarget::Socket(None), false));
            }
            nr::BIND | nr::CONNECT => {
                if let Some(fd) = self.fds(p).get_mut(&(args[0] as i32)) {
                    // A listener keeps the address it was bound to.
                    if let FdTarget::Socket(slot @ None) = &mut fd.target {
                        *slot = addr.cloned();
                    }
                }
            }
            nr::ACCEPT | nr::ACCEPT4 => {
                let listener = self.fd_addr(p, args[0] as i32);
                self.fds(p)
                    .insert(ret, Fd::new(FdTarget::Socket(listener), false));
            }
            nr::EXECVE | nr::EXECVEAT => {
                let p = self.unshare_files(raw.header.pid);
                self.fds(p).retain(|_, fd| !fd.cloexec);
            }
            _ => {}
        }
    }

    /// Gives the process a private copy of its fd table (exec, unshare).
    fn unshare_files(&mut self, pid: u32) -> Process {
        let p = self.process(pid);
        let shared = self
            .fd_tables
            .get(&p.files)
            .is_some_and(|(refs, _)| *refs > 1);
        if !shared {
            return p;
        }
        let table = self.fds(p).clone();
        if let Some(e) = self.fd_tables.get_mut(&p.files) {
            e.0 -= 1;
        }
        let files = self.new_fd_table(table);
        let p = Process { fs: p.fs, files };
        self.processes.insert(pid, p);
        p
    }

    fn socket_address(&self, p: Process, bytes: &[u8]) -> SocketAddress {
        // A unix socket's name is a path like any other: inside the root.
        let root = match self.root(p) {
            ProcessRoot::Known(root) => Some(root),
            ProcessRoot::Unknown(_) => None,
        };
        let cwd = self.cwd(p);
        decode_sockaddr(bytes, |raw| {
            let root = root.as_ref()?;
            if raw.starts_with('/') {
                ContainerPath::new(raw).map(|name| reroot(root, &name))
            } else {
                cwd.map(|c| join_in_root(root, c, raw))
            }
        })
    }
}

/// `name`, a path as a process with root `root` names it, in the
/// container's view.
fn reroot(root: &ContainerPath, name: &ContainerPath) -> ContainerPath {
    root.join(name.as_str().trim_start_matches('/'))
}

/// Relative `name` resolved against `dir` (in the container's view) by a
/// process whose root is `root`: `..` stops at the root, as in the kernel.
/// A dir outside the root (chroot without chdir) is not clamped.
fn join_in_root(root: &ContainerPath, dir: &ContainerPath, name: &str) -> ContainerPath {
    match inside(root, dir) {
        Some(inside) => reroot(root, &inside.join(name)),
        None => dir.join(name),
    }
}

/// `path` as seen from `root` (`root` itself is `/`); `None` when outside.
fn inside(root: &ContainerPath, path: &ContainerPath) -> Option<ContainerPath> {
    if root.as_str() == "/" {
        return Some(path.clone());
    }
    if path == root {
        return Some(ContainerPath::root());
    }
    path.as_str()
        .strip_prefix(root.as_str())
        .filter(|rest| rest.starts_with('/'))
        .and_then(ContainerPath::new)
}

/// Decodes a `struct sockaddr`; `unix_path` places a unix socket's name in
/// the container (`None` when it cannot be).
pub fn decode_sockaddr(
    bytes: &[u8],
    unix_path: impl Fn(&str) -> Option<ContainerPath>,
) -> SocketAddress {
    if bytes.len() < 2 {
        return SocketAddress::Other { family: 0 };
    }
    let family = u16::from_le_bytes([bytes[0], bytes[1]]);
    let port = |b: &[u8]| u16::from_be_bytes([b[2], b[3]]);
    match family {
        AF_UNIX => {
            let name = &bytes[2..];
            match name.first() {
                None => SocketAddress::UnixUnnamed,
                Some(0) => {
                    let mut n = &name[1..];
                    while let [rest @ .., 0] = n {
                        n = rest;
                    }
                    SocketAddress::Abstract {
                        name: String::from_utf8_lossy(n).into_owned(),
                    }
                }
                Some(_) => {
                    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
                    let raw = String::from_utf8_lossy(&name[..end]).into_owned();
                    let path = unix_path(&raw);
                    SocketAddress::Unix { raw, path }
                }
            }
        }
        AF_INET if bytes.len() >= 8 => {
            let ip = Ipv4Addr::new(bytes[4], bytes[5], bytes[6], bytes[7]);
            SocketAddress::Inet {
                addr: SocketAddr::new(ip.into(), port(bytes)),
            }
        }
        AF_INET6 if bytes.len() >= 24 => {
            let octets: [u8; 16] = bytes[8..24].try_into().expect("16 bytes");
            SocketAddress::Inet {
                addr: SocketAddr::new(Ipv6Addr::from(octets).into(), port(bytes)),
            }
        }
        family => SocketAddress::Other { family },
    }
}

/// Notes for names that were not recorded whole.
fn name_notes(paths: &[PathArg]) -> Vec<String> {
    let role = |p: &PathArg| format!("{:?}", p.role).to_lowercase();
    paths
        .iter()
        .filter_map(|p| {
            if p.resolution == Resolution::Unreadable {
                Some(format!(
                    "{} name could not be read from the program's memory",
                    role(p)
                ))
            } else if p.truncated {
                Some(format!(
                    "{} name cut at {} bytes",
                    role(p),
                    cimplifier_common::STR_SLOT
                ))
            } else {
                None
            }
        })
        .collect()
}

/// An exec name that could not be read.
fn unreadable_target() -> PathArg {
    PathArg {
        role: PathRole::Target,
        raw: String::new(),
        path: None,
        resolution: Resolution::Unreadable,
        truncated: false,
    }
}

/// An exec whose exit record never came: reported with no return value.
fn unfinished_exec(p: PendingExec, why: &str) -> Event {
    let mut incomplete = p.notes();
    incomplete.push(why.to_owned());
    let kind = EventKind::Syscall(Box::new(SyscallEvent {
        syscall: syscalls::name(p.entry.nr).to_owned(),
        nr: p.entry.nr,
        args: p.entry.args,
        ret: None,
        errno: None,
        paths: vec![p.path],
        fd_path: None,
        fd_addr: None,
        addr: None,
        argv: p.argv,
        incomplete,
    }));
    event(&p.entry.header, kind)
}

fn event(h: &RawHeader, kind: EventKind) -> Event {
    Event {
        ts_ns: h.ts_ns,
        pid: h.pid,
        tid: h.tid,
        ppid: h.ppid,
        cgroup: CgroupId(h.cgroup_id),
        comm: h.comm.clone(),
        kind,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(pid: u32) -> RawHeader {
        RawHeader {
            pid,
            tid: pid,
            ppid: 1,
            ts_ns: 0,
            cgroup_id: 9,
            comm: "t".into(),
        }
    }

    fn text(s: &str) -> Option<RawStr> {
        Some(RawStr::Text {
            bytes: s.as_bytes().to_vec(),
            truncated: false,
        })
    }

    fn call(
        pid: u32,
        nr: u32,
        args: [u64; 6],
        ret: i64,
        s0: Option<RawStr>,
        s1: Option<RawStr>,
    ) -> RawRecord {
        RawRecord::Syscall(RawSyscall {
            header: header(pid),
            nr,
            flags: 0,
            args,
            ret,
            enter_ts_ns: 0,
            str0: s0,
            str1: s1,
            argv: None,
            sockaddr: None,
        })
    }

    fn one(r: &mut Resolver, rec: RawRecord) -> SyscallEvent {
        let mut events = r.handle(rec);
        assert_eq!(events.len(), 1);
        match events.remove(0).kind {
            EventKind::Syscall(s) => *s,
            other => panic!("not a syscall: {other:?}"),
        }
    }

    fn path(s: &SyscallEvent, role: PathRole) -> Option<String> {
        s.path(role)
            .and_then(|p| p.path.as_ref())
            .map(|p| p.to_string())
    }

    const CWD: u64 = AT_FDCWD as i64 as u64;

    fn seeded() -> Resolver {
        let mut r = Resolver::new();
        r.seed_process(
            10,
            ProcessRoot::default(),
            ContainerPath::new("/srv"),
            vec![],
        );
        r
    }

    #[test]
    fn chdir_then_relative_open_and_dirfd() {
        let mut r = seeded();
        one(&mut r, call(10, nr::CHDIR, [0; 6], 0, text("www"), None));
        let open = one(
            &mut r,
            call(
                10,
                nr::OPENAT,
                [CWD, 0, 0, 0, 0, 0],
                3,
                text("html/index.html"),
                None,
            ),
        );
        assert_eq!(
            path(&open, PathRole::Target).as_deref(),
            Some("/srv/www/html/index.html")
        );
        let dir = one(&mut r, call(10, nr::OPEN, [0; 6], 4, text("../etc"), None));
        assert_eq!(path(&dir, PathRole::Target).as_deref(), Some("/srv/etc"));
        let via_fd = one(
            &mut r,
            call(10, nr::OPENAT, [4, 0, 0, 0, 0, 0], 5, text("passwd"), None),
        );
        assert_eq!(
            path(&via_fd, PathRole::Target).as_deref(),
            Some("/srv/etc/passwd")
        );
        // After close, the dirfd means nothing: unresolved, with the reason.
        one(
            &mut r,
            call(10, nr::CLOSE, [4, 0, 0, 0, 0, 0], 0, None, None),
        );
        let stale = one(
            &mut r,
            call(10, nr::OPENAT, [4, 0, 0, 0, 0, 0], -9, text("group"), None),
        );
        let p = stale.path(PathRole::Target).unwrap();
        assert_eq!(p.path, None);
        assert!(
            matches!(&p.resolution, Resolution::Unresolved(why) if why.contains("dirfd 4")),
            "{p:?}"
        );
        assert_eq!(stale.errno.as_deref(), Some("EBADF"));
    }

    #[test]
    fn failed_open_keeps_errno_and_path() {
        let mut r = seeded();
        let e = one(
            &mut r,
            call(10, nr::OPENAT, [CWD, 0, 0, 0, 0, 0], -2, text("nope"), None),
        );
        assert_eq!(e.errno.as_deref(), Some("ENOENT"));
        assert_eq!(e.ret, Some(-2));
        assert_eq!(path(&e, PathRole::Target).as_deref(), Some("/srv/nope"));
        assert!(!r.fds(r.processes[&10]).contains_key(&-2));
    }

    #[test]
    fn rename_symlink_readlink_roles() {
        let mut r = seeded();
        let mv = one(
            &mut r,
            call(
                10,
                nr::RENAMEAT2,
                [CWD, 0, CWD, 0, 0, 0],
                0,
                text("a"),
                text("/b"),
            ),
        );
        assert_eq!(path(&mv, PathRole::Old).as_deref(), Some("/srv/a"));
        assert_eq!(path(&mv, PathRole::New).as_deref(), Some("/b"));
        let ln = one(
            &mut r,
            call(10, nr::SYMLINK, [0; 6], 0, text("../x"), text("l")),
        );
        let content = ln.path(PathRole::LinkContent).unwrap();
        assert_eq!(
            (content.raw.as_str(), &content.resolution, &content.path),
            ("../x", &Resolution::Literal, &None)
        );
        assert_eq!(path(&ln, PathRole::New).as_deref(), Some("/srv/l"));
        let rl = one(
            &mut r,
            call(10, nr::READLINK, [0; 6], 4, text("l"), text("../x")),
        );
        assert_eq!(path(&rl, PathRole::Target).as_deref(), Some("/srv/l"));
        assert_eq!(rl.path(PathRole::LinkValue).unwrap().raw, "../x");
    }

    #[test]
    fn at_empty_path_means_the_fd_itself() {
        let mut r = seeded();
        one(
            &mut r,
            call(10, nr::OPEN, [0; 6], 7, text("/etc/hosts"), None),
        );
        let st = one(
            &mut r,
            call(
                10,
                nr::NEWFSTATAT,
                [7, 0, 0, AT_EMPTY_PATH, 0, 0],
                0,
                text(""),
                None,
            ),
        );
        assert_eq!(path(&st, PathRole::Target).as_deref(), Some("/etc/hosts"));
        // fstat of a descriptor that names no path (a pipe on stdout).
        let pipe = one(
            &mut r,
            call(
                10,
                nr::NEWFSTATAT,
                [1, 0, 0, AT_EMPTY_PATH, 0, 0],
                0,
                text(""),
                None,
            ),
        );
        assert_eq!(
            pipe.path(PathRole::Target).unwrap().resolution,
            Resolution::Descriptor
        );
        let bad = one(
            &mut r,
            call(10, nr::NEWFSTATAT, [7, 0, 0, 0, 0, 0], -2, text(""), None),
        );
        assert_eq!(bad.path(PathRole::Target).unwrap().path, None);
    }

    #[test]
    fn unknown_process_has_unknown_cwd() {
        let mut r = Resolver::new();
        let e = one(&mut r, call(99, nr::STAT, [0; 6], 0, text("rel"), None));
        let p = e.path(PathRole::Target).unwrap();
        assert!(
            matches!(&p.resolution, Resolution::Unresolved(why) if why.contains("cwd unknown"))
        );
        let abs = one(
            &mut r,
            call(99, nr::STAT, [0; 6], 0, text("/abs/./x"), None),
        );
        assert_eq!(path(&abs, PathRole::Target).as_deref(), Some("/abs/x"));
    }

    #[test]
    fn a_return_value_outside_the_errno_range_has_no_errno() {
        // Found by the ring_record fuzzer: i64::MIN cannot be negated.
        let mut r = seeded();
        let e = one(
            &mut r,
            call(10, nr::OPEN, [0; 6], i64::MIN, text("/x"), None),
        );
        assert_eq!((e.ret, e.errno), (Some(i64::MIN), None));
        let e = one(&mut r, call(10, nr::OPEN, [0; 6], -2, text("/x"), None));
        assert_eq!(e.errno.as_deref(), Some("ENOENT"));
    }

    #[test]
    fn snapshotter_fills_in_processes_seen_late() {
        let mut r = Resolver::with_snapshotter(Box::new(|pid| ProcessSnapshot {
            cwd: ContainerPath::new(&format!("/proc-{pid}")),
            fds: vec![(3, ContainerPath::new("/data").unwrap())],
            exe: ContainerPath::new("/usr/bin/old"),
            argv: vec!["old".into(), "-d".into()],
            ..Default::default()
        }));
        let mut events = r.handle(call(5, nr::OPENAT, [3, 0, 0, 0, 0, 0], 4, text("f"), None));
        assert_eq!(events.len(), 2, "{events:?}");
        assert_eq!(
            events[0].kind,
            EventKind::Running {
                exe: ContainerPath::new("/usr/bin/old"),
                argv: vec!["old".into(), "-d".into()],
                cwd: ContainerPath::new("/proc-5"),
            },
            "the process seen running comes first"
        );
        assert_eq!(events[0].pid, 5);
        let e = match events.remove(1).kind {
            EventKind::Syscall(s) => *s,
            other => panic!("not a syscall: {other:?}"),
        };
        assert_eq!(path(&e, PathRole::Target).as_deref(), Some("/data/f"));
        let c = one(&mut r, call(5, nr::OPEN, [0; 6], 6, text("g"), None));
        assert_eq!(path(&c, PathRole::Target).as_deref(), Some("/proc-5/g"));
    }

    #[test]
    fn fork_copies_tables_and_threads_share_them() {
        let mut r = seeded();
        one(&mut r, call(10, nr::OPEN, [0; 6], 3, text("/var"), None));
        r.handle(RawRecord::Fork {
            header: header(10),
            child_tid: 11,
            clone_flags: 17,
        });
        // The child changes directory; the parent's cwd must not move.
        one(&mut r, call(11, nr::CHDIR, [0; 6], 0, text("/tmp"), None));
        let parent = one(&mut r, call(10, nr::STAT, [0; 6], 0, text("x"), None));
        assert_eq!(path(&parent, PathRole::Target).as_deref(), Some("/srv/x"));
        let child_fd = one(
            &mut r,
            call(11, nr::OPENAT, [3, 0, 0, 0, 0, 0], 4, text("log"), None),
        );
        assert_eq!(
            path(&child_fd, PathRole::Target).as_deref(),
            Some("/var/log"),
            "fds are inherited"
        );
        // A thread: events carry the process id, so it shares the cwd.
        let forks = r.handle(RawRecord::Fork {
            header: header(10),
            child_tid: 12,
            clone_flags: CLONE_THREAD | CLONE_FS | CLONE_FILES,
        });
        assert!(matches!(
            forks[0].kind,
            EventKind::Fork {
                child_pid: 10,
                thread: true,
                ..
            }
        ));
        // CLONE_FS shares the cwd between processes.
        r.handle(RawRecord::Fork {
            header: header(10),
            child_tid: 13,
            clone_flags: CLONE_FS,
        });
        one(&mut r, call(13, nr::CHDIR, [0; 6], 0, text("/opt"), None));
        let shared = one(&mut r, call(10, nr::STAT, [0; 6], 0, text("y"), None));
        assert_eq!(path(&shared, PathRole::Target).as_deref(), Some("/opt/y"));
    }

    #[test]
    fn exit_forgets_the_process() {
        let mut r = seeded();
        r.handle(RawRecord::Fork {
            header: header(10),
            child_tid: 11,
            clone_flags: 17,
        });
        assert_eq!(r.tracked_processes(), 2);
        let e = r.handle(RawRecord::Exit {
            header: header(11),
            group_dead: true,
        });
        assert!(matches!(
            e[0].kind,
            EventKind::Exit {
                process_exited: true
            }
        ));
        assert_eq!(r.tracked_processes(), 1);
        assert_eq!(r.fd_tables.len(), 1, "the child's table is freed");
    }

    #[test]
    fn socket_addresses_decode() {
        let cwd = ContainerPath::new("/run").unwrap();
        let mut unix = vec![1, 0];
        unix.extend_from_slice(b"app.sock\0\0");
        assert_eq!(
            decode_sockaddr(&unix, |raw| Some(cwd.join(raw))),
            SocketAddress::Unix {
                raw: "app.sock".into(),
                path: ContainerPath::new("/run/app.sock")
            }
        );
        let mut abs = vec![1, 0, 0];
        abs.extend_from_slice(b"dbus\0");
        assert_eq!(
            decode_sockaddr(&abs, |_| None),
            SocketAddress::Abstract {
                name: "dbus".into()
            }
        );
        assert_eq!(
            decode_sockaddr(&[1, 0], |_| None),
            SocketAddress::UnixUnnamed
        );
        let inet = [2, 0, 0x1f, 0x90, 127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            decode_sockaddr(&inet, |_| None),
            SocketAddress::Inet {
                addr: "127.0.0.1:8080".parse().unwrap()
            }
        );
        let mut v6 = vec![10, 0, 0, 80, 0, 0, 0, 0];
        v6.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        assert_eq!(
            decode_sockaddr(&v6, |_| None),
            SocketAddress::Inet {
                addr: "[::1]:80".parse().unwrap()
            }
        );
        assert_eq!(
            decode_sockaddr(&[16, 0, 1, 2], |_| None),
            SocketAddress::Other { family: 16 }
        );
    }

    #[test]
    fn listener_address_follows_accepted_sockets() {
        let mut r = seeded();
        one(
            &mut r,
            call(10, nr::SOCKET, [2, 1, 0, 0, 0, 0], 3, None, None),
        );
        let RawRecord::Syscall(mut bind) = call(10, nr::BIND, [3, 0, 16, 0, 0, 0], 0, None, None)
        else {
            unreachable!()
        };
        bind.sockaddr = Some(vec![2, 0, 0x0c, 0xea, 0, 0, 0, 0]);
        one(&mut r, RawRecord::Syscall(bind));
        let listen = one(
            &mut r,
            call(10, nr::LISTEN, [3, 128, 0, 0, 0, 0], 0, None, None),
        );
        let want = SocketAddress::Inet {
            addr: "0.0.0.0:3306".parse().unwrap(),
        };
        assert_eq!(listen.fd_addr, Some(want.clone()));
        one(
            &mut r,
            call(10, nr::ACCEPT4, [3, 0, 0, 0, 0, 0], 5, None, None),
        );
        let close = one(
            &mut r,
            call(10, nr::SENDTO, [5, 0, 0, 0, 0, 0], 1, None, None),
        );
        assert_eq!(close.fd_addr, Some(want));
    }

    #[test]
    fn exec_merges_entry_and_exit_and_drops_cloexec_fds() {
        let mut r = seeded();
        one(
            &mut r,
            call(
                10,
                nr::OPEN,
                [0, O_CLOEXEC, 0, 0, 0, 0],
                3,
                text("/etc/a"),
                None,
            ),
        );
        one(&mut r, call(10, nr::OPEN, [0; 6], 4, text("/etc/b"), None));
        let RawRecord::Syscall(mut entry) = call(10, nr::EXECVE, [0; 6], 0, text("bin/tool"), None)
        else {
            unreachable!()
        };
        entry.argv = Some(vec!["tool".into(), "-v".into()]);
        assert!(
            r.handle(RawRecord::ExecArgs(entry)).is_empty(),
            "entry waits for the exit"
        );
        let exec = one(&mut r, call(10, nr::EXECVE, [0; 6], 0, None, None));
        assert_eq!(
            path(&exec, PathRole::Target).as_deref(),
            Some("/srv/bin/tool")
        );
        assert_eq!(exec.argv, Some(vec!["tool".into(), "-v".into()]));
        let table = r.fds(r.processes[&10]);
        assert!(
            !table.contains_key(&3) && table.contains_key(&4),
            "O_CLOEXEC fd closed by exec"
        );
        let orphan = one(&mut r, call(10, nr::EXECVE, [0; 6], -2, None, None));
        assert_eq!(
            orphan.incomplete,
            vec!["exec entry (filename, argv) not seen".to_owned()]
        );
    }

    /// A raw exec record of `kind` (entry, image, exit) for tests.
    fn exec_record(
        tid: u32,
        nr: u32,
        args: [u64; 6],
        ret: i64,
        flags: u32,
        name: Option<RawStr>,
        argv: Option<&[&str]>,
    ) -> RawSyscall {
        let RawRecord::Syscall(mut raw) = call(tid, nr, args, ret, name, None) else {
            unreachable!()
        };
        raw.flags = flags;
        raw.argv = argv.map(|a| a.iter().map(|s| s.to_string()).collect());
        raw
    }

    #[test]
    fn exec_names_unread_at_entry_come_from_the_loaded_image() {
        let mut r = seeded();
        let fault = flags::STR0_FAULT | flags::STR1_FAULT;
        let entry = exec_record(
            10,
            nr::EXECVE,
            [0; 6],
            0,
            fault,
            Some(RawStr::Fault),
            Some(&[""]),
        );
        assert!(r.handle(RawRecord::ExecArgs(entry)).is_empty());
        let image = exec_record(
            10,
            nr::EXECVE,
            [0; 6],
            10,
            0,
            text("/bin/sh"),
            Some(&["sh", "-c", "x"]),
        );
        assert!(r.handle(RawRecord::ExecImage(image)).is_empty());
        let exec = one(&mut r, call(10, nr::EXECVE, [0; 6], 0, None, None));
        assert_eq!(path(&exec, PathRole::Target).as_deref(), Some("/bin/sh"));
        assert_eq!(exec.argv, Some(vec!["sh".into(), "-c".into(), "x".into()]));
        assert!(exec.incomplete.is_empty(), "{:?}", exec.incomplete);
        assert_eq!(exec.unreadable_names(), 0);

        // Names read at entry stay as the program passed them (a script's
        // image has the interpreter's argv); a relative image name joins the cwd.
        let entry = exec_record(
            10,
            nr::EXECVE,
            [0; 6],
            0,
            0,
            text("run.sh"),
            Some(&["./run.sh"]),
        );
        r.handle(RawRecord::ExecArgs(entry));
        let image = exec_record(
            10,
            nr::EXECVE,
            [0; 6],
            10,
            0,
            text("run.sh"),
            Some(&["/bin/sh", "./run.sh"]),
        );
        r.handle(RawRecord::ExecImage(image));
        let exec = one(&mut r, call(10, nr::EXECVE, [0; 6], 0, None, None));
        assert_eq!(
            path(&exec, PathRole::Target).as_deref(),
            Some("/srv/run.sh")
        );
        assert_eq!(exec.argv, Some(vec!["./run.sh".into()]));
    }

    #[test]
    fn a_failed_exec_takes_the_names_read_again_at_exit() {
        let mut r = seeded();
        let fault = flags::STR0_FAULT | flags::STR1_FAULT;
        let entry = exec_record(10, nr::EXECVE, [0; 6], 0, fault, Some(RawStr::Fault), None);
        r.handle(RawRecord::ExecArgs(entry));
        let exit = exec_record(
            10,
            nr::EXECVE,
            [0; 6],
            -2,
            0,
            text("nope"),
            Some(&["nope", "-x"]),
        );
        let exec = one(&mut r, RawRecord::Syscall(exit));
        assert_eq!(path(&exec, PathRole::Target).as_deref(), Some("/srv/nope"));
        assert_eq!(exec.argv, Some(vec!["nope".into(), "-x".into()]));
        assert_eq!(exec.errno.as_deref(), Some("ENOENT"));
        assert_eq!(exec.unreadable_names(), 0);

        // Unreadable at exit too: the event says so and counts both names.
        let entry = exec_record(10, nr::EXECVE, [0; 6], 0, fault, Some(RawStr::Fault), None);
        r.handle(RawRecord::ExecArgs(entry));
        let exit = exec_record(10, nr::EXECVE, [0; 6], -2, fault, Some(RawStr::Fault), None);
        let exec = one(&mut r, RawRecord::Syscall(exit));
        assert_eq!(exec.unreadable_names(), 2, "{:?}", exec.incomplete);
    }

    #[test]
    fn execveat_through_a_dirfd_resolves_the_kernels_dev_fd_name() {
        let mut r = seeded();
        one(
            &mut r,
            call(10, nr::OPEN, [0; 6], 7, text("/opt/app"), None),
        );
        // execveat(7, "bin/tool", ...) with the entry read faulted; the
        // kernel names the file /dev/fd/7/bin/tool.
        let args = [7, 0, 0, 0, 0, 0];
        let fault = flags::STR0_FAULT | flags::STR1_FAULT;
        let entry = exec_record(10, nr::EXECVEAT, args, 0, fault, Some(RawStr::Fault), None);
        r.handle(RawRecord::ExecArgs(entry));
        // Called from thread 12, which takes the leader's id 10.
        let mut image = exec_record(
            10,
            nr::EXECVEAT,
            args,
            12,
            0,
            text("/dev/fd/7/bin/tool"),
            Some(&["tool"]),
        );
        image.header.tid = 10;
        r.handle(RawRecord::ExecImage(image));
        let exec = one(&mut r, call(10, nr::EXECVEAT, args, 0, None, None));
        assert_eq!(
            path(&exec, PathRole::Target).as_deref(),
            Some("/opt/app/bin/tool")
        );
        assert!(r.pending_exec.is_empty());

        // fexecve: execveat(7, "", AT_EMPTY_PATH) is /dev/fd/7.
        let args = [7, 0, 0, 0, AT_EMPTY_PATH, 0];
        let entry = exec_record(10, nr::EXECVEAT, args, 0, fault, Some(RawStr::Fault), None);
        r.handle(RawRecord::ExecArgs(entry));
        let image = exec_record(
            10,
            nr::EXECVEAT,
            args,
            10,
            0,
            text("/dev/fd/7"),
            Some(&["app"]),
        );
        r.handle(RawRecord::ExecImage(image));
        let exec = one(&mut r, call(10, nr::EXECVEAT, args, 0, None, None));
        assert_eq!(path(&exec, PathRole::Target).as_deref(), Some("/opt/app"));
    }

    #[test]
    fn an_image_without_its_entry_still_names_the_exec() {
        let mut r = seeded();
        let image = exec_record(
            10,
            nr::EXECVE,
            [0; 6],
            10,
            0,
            text("/usr/bin/env"),
            Some(&["env"]),
        );
        r.handle(RawRecord::ExecImage(image));
        let exec = one(&mut r, call(10, nr::EXECVE, [0; 6], 0, None, None));
        assert_eq!(
            path(&exec, PathRole::Target).as_deref(),
            Some("/usr/bin/env")
        );
        assert_eq!(exec.argv, Some(vec!["env".into()]));
        assert!(exec.incomplete.is_empty(), "{:?}", exec.incomplete);
    }

    #[test]
    fn dup_and_fcntl_copy_descriptors() {
        let mut r = seeded();
        one(&mut r, call(10, nr::OPEN, [0; 6], 3, text("/d"), None));
        one(
            &mut r,
            call(10, nr::DUP2, [3, 9, 0, 0, 0, 0], 9, None, None),
        );
        one(
            &mut r,
            call(
                10,
                nr::FCNTL,
                [9, F_DUPFD_CLOEXEC, 20, 0, 0, 0],
                20,
                None,
                None,
            ),
        );
        one(
            &mut r,
            call(10, nr::CLOSE_RANGE, [3, 9, 0, 0, 0, 0], 0, None, None),
        );
        let e = one(
            &mut r,
            call(10, nr::OPENAT, [20, 0, 0, 0, 0, 0], 21, text("f"), None),
        );
        assert_eq!(path(&e, PathRole::Target).as_deref(), Some("/d/f"));
        let gone = one(
            &mut r,
            call(10, nr::FCHDIR, [9, 0, 0, 0, 0, 0], -9, None, None),
        );
        assert_eq!(gone.fd_path, None);
    }

    fn with_addr(rec: RawRecord, addr: Vec<u8>) -> RawRecord {
        let RawRecord::Syscall(mut s) = rec else {
            unreachable!()
        };
        s.sockaddr = Some(addr);
        RawRecord::Syscall(s)
    }

    #[test]
    fn socket_calls_name_their_addresses() {
        let mut r = seeded();
        one(
            &mut r,
            call(10, nr::CHDIR, [0; 6], 0, text("/run/app"), None),
        );
        one(
            &mut r,
            call(10, nr::SOCKET, [1, 1, 0, 0, 0, 0], 3, None, None),
        );
        let mut unix = vec![1, 0];
        unix.extend_from_slice(b"ctl.sock\0");
        let bind = one(
            &mut r,
            with_addr(call(10, nr::BIND, [3, 0, 11, 0, 0, 0], 0, None, None), unix),
        );
        let want = SocketAddress::Unix {
            raw: "ctl.sock".into(),
            path: ContainerPath::new("/run/app/ctl.sock"),
        };
        assert_eq!(bind.addr, Some(want.clone()));
        let listen = one(
            &mut r,
            call(10, nr::LISTEN, [3, 8, 0, 0, 0, 0], 0, None, None),
        );
        assert_eq!(listen.fd_addr, Some(want));

        one(
            &mut r,
            call(10, nr::SOCKET, [1, 1, 0, 0, 0, 0], 4, None, None),
        );
        let mut abs = vec![1, 0, 0];
        abs.extend_from_slice(b"bus\0name\0\0");
        let conn = one(
            &mut r,
            with_addr(
                call(10, nr::CONNECT, [4, 0, 13, 0, 0, 0], 0, None, None),
                abs,
            ),
        );
        assert_eq!(
            conn.addr,
            Some(SocketAddress::Abstract {
                name: "bus\0name".into()
            })
        );

        one(
            &mut r,
            call(10, nr::SOCKET, [2, 1, 0, 0, 0, 0], 5, None, None),
        );
        let inet = vec![2, 0, 0x1f, 0x90, 127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0];
        let refused = one(
            &mut r,
            with_addr(
                call(10, nr::CONNECT, [5, 0, 16, 0, 0, 0], -111, None, None),
                inet,
            ),
        );
        let want = SocketAddress::Inet {
            addr: "127.0.0.1:8080".parse().unwrap(),
        };
        assert_eq!(
            (refused.addr, refused.errno.as_deref()),
            (Some(want), Some("ECONNREFUSED"))
        );
        // A failed connect names no peer for the socket.
        let send = one(
            &mut r,
            call(10, nr::SENDTO, [5, 0, 0, 0, 0, 0], -107, None, None),
        );
        assert_eq!(send.fd_addr, None);
    }

    #[test]
    fn fchdir_moves_the_cwd_to_the_fd() {
        let mut r = seeded();
        one(
            &mut r,
            call(10, nr::OPEN, [0; 6], 3, text("/var/lib"), None),
        );
        let cd = one(
            &mut r,
            call(10, nr::FCHDIR, [3, 0, 0, 0, 0, 0], 0, None, None),
        );
        assert_eq!(cd.fd_path, ContainerPath::new("/var/lib"));
        let e = one(&mut r, call(10, nr::MKDIR, [0; 6], 0, text("apt"), None));
        assert_eq!(path(&e, PathRole::Target).as_deref(), Some("/var/lib/apt"));
    }

    fn target(r: &mut Resolver, pid: u32, nr: u32, name: &str) -> Option<String> {
        let e = one(r, call(pid, nr, [CWD, 0, 0, 0, 0, 0], 0, text(name), None));
        path(&e, PathRole::Target)
    }

    #[test]
    fn chroot_then_open_names_the_file_in_the_container() {
        let mut r = seeded();
        one(
            &mut r,
            call(10, nr::CHDIR, [0; 6], 0, text("/var/spool/postfix"), None),
        );
        let ch = one(&mut r, call(10, nr::CHROOT, [0; 6], 0, text("."), None));
        assert_eq!(
            path(&ch, PathRole::Target).as_deref(),
            Some("/var/spool/postfix")
        );
        assert_eq!(
            target(&mut r, 10, nr::OPEN, "/etc/services").as_deref(),
            Some("/var/spool/postfix/etc/services")
        );
        assert_eq!(
            target(&mut r, 10, nr::OPENAT, "incoming/x").as_deref(),
            Some("/var/spool/postfix/incoming/x")
        );
        // `..` stops at the root, in relative and absolute names alike.
        assert_eq!(
            target(&mut r, 10, nr::STAT, "../../etc/passwd").as_deref(),
            Some("/var/spool/postfix/etc/passwd")
        );
        assert_eq!(
            target(&mut r, 10, nr::STAT, "/../x").as_deref(),
            Some("/var/spool/postfix/x")
        );
        // Descriptors opened inside the root keep their full names.
        one(
            &mut r,
            call(10, nr::OPEN, [0; 6], 3, text("/private"), None),
        );
        let via_fd = one(
            &mut r,
            call(10, nr::OPENAT, [3, 0, 0, 0, 0, 0], 4, text("../smtp"), None),
        );
        assert_eq!(
            path(&via_fd, PathRole::Target).as_deref(),
            Some("/var/spool/postfix/smtp")
        );
        // Exec and unix socket names are inside the root too.
        let mut unix = vec![1, 0];
        unix.extend_from_slice(b"/public/pickup\0");
        let conn = one(
            &mut r,
            with_addr(
                call(10, nr::CONNECT, [5, 0, 17, 0, 0, 0], 0, None, None),
                unix,
            ),
        );
        assert_eq!(
            conn.addr,
            Some(SocketAddress::Unix {
                raw: "/public/pickup".into(),
                path: ContainerPath::new("/var/spool/postfix/public/pickup"),
            })
        );
        let mut rel = vec![1, 0];
        rel.extend_from_slice(b"private/rewrite\0");
        let conn = one(
            &mut r,
            with_addr(
                call(10, nr::CONNECT, [5, 0, 17, 0, 0, 0], 0, None, None),
                rel,
            ),
        );
        assert_eq!(
            conn.addr,
            Some(SocketAddress::Unix {
                raw: "private/rewrite".into(),
                path: ContainerPath::new("/var/spool/postfix/private/rewrite"),
            })
        );
    }

    #[test]
    fn relative_chroot_and_chroot_without_chdir() {
        let mut r = seeded();
        // Relative to the cwd (/srv); the cwd stays outside the new root.
        one(&mut r, call(10, nr::CHROOT, [0; 6], 0, text("jail"), None));
        assert_eq!(
            target(&mut r, 10, nr::OPEN, "/bin/sh").as_deref(),
            Some("/srv/jail/bin/sh")
        );
        assert_eq!(
            target(&mut r, 10, nr::STAT, "x").as_deref(),
            Some("/srv/x"),
            "the cwd did not move"
        );
        one(&mut r, call(10, nr::CHDIR, [0; 6], 0, text("/"), None));
        assert_eq!(
            target(&mut r, 10, nr::STAT, "x").as_deref(),
            Some("/srv/jail/x")
        );
        // A chroot inside a chroot is relative to the first root.
        one(
            &mut r,
            call(10, nr::CHROOT, [0; 6], 0, text("/inner"), None),
        );
        assert_eq!(
            target(&mut r, 10, nr::OPEN, "/f").as_deref(),
            Some("/srv/jail/inner/f")
        );
    }

    #[test]
    fn fchdir_then_chroot_dot() {
        let mut r = seeded();
        one(
            &mut r,
            call(10, nr::OPEN, [0; 6], 3, text("/var/empty/sshd"), None),
        );
        one(
            &mut r,
            call(10, nr::FCHDIR, [3, 0, 0, 0, 0, 0], 0, None, None),
        );
        one(&mut r, call(10, nr::CHROOT, [0; 6], 0, text("."), None));
        assert_eq!(
            target(&mut r, 10, nr::OPEN, "/dev/log").as_deref(),
            Some("/var/empty/sshd/dev/log")
        );
    }

    #[test]
    fn a_failed_chroot_changes_nothing() {
        let mut r = seeded();
        let e = one(
            &mut r,
            call(10, nr::CHROOT, [0; 6], -1, text("/jail"), None),
        );
        assert_eq!(e.errno.as_deref(), Some("EPERM"));
        assert_eq!(
            target(&mut r, 10, nr::OPEN, "/etc/hosts").as_deref(),
            Some("/etc/hosts")
        );
    }

    #[test]
    fn fork_copies_the_root_and_clone_fs_shares_it() {
        let mut r = seeded();
        r.handle(RawRecord::Fork {
            header: header(10),
            child_tid: 11,
            clone_flags: 17,
        });
        r.handle(RawRecord::Fork {
            header: header(10),
            child_tid: 12,
            clone_flags: CLONE_FS,
        });
        // The copy's chroot moves neither the parent nor its sibling.
        one(&mut r, call(11, nr::CHROOT, [0; 6], 0, text("/a"), None));
        assert_eq!(target(&mut r, 11, nr::OPEN, "/f").as_deref(), Some("/a/f"));
        assert_eq!(target(&mut r, 10, nr::OPEN, "/f").as_deref(), Some("/f"));
        // A child forked after the chroot inherits it.
        r.handle(RawRecord::Fork {
            header: header(11),
            child_tid: 13,
            clone_flags: 17,
        });
        assert_eq!(target(&mut r, 13, nr::OPEN, "/g").as_deref(), Some("/a/g"));
        // CLONE_FS: a chroot by either moves both.
        one(&mut r, call(12, nr::CHROOT, [0; 6], 0, text("/b"), None));
        assert_eq!(target(&mut r, 10, nr::OPEN, "/f").as_deref(), Some("/b/f"));
    }

    #[test]
    fn an_unknown_root_leaves_names_unresolved_with_the_reason() {
        let mut r = Resolver::new();
        r.seed_process(
            20,
            ProcessRoot::Unknown("its root /x is not below the container's root /y".into()),
            ContainerPath::new("/srv"),
            vec![],
        );
        for name in ["/etc/hosts", "rel"] {
            let e = one(&mut r, call(20, nr::OPEN, [0; 6], 3, text(name), None));
            let p = e.path(PathRole::Target).unwrap();
            assert_eq!(p.path, None);
            assert!(
                matches!(&p.resolution, Resolution::Unresolved(why) if why.contains("not below")),
                "{p:?}"
            );
        }
    }

    #[test]
    fn pivot_root_makes_the_new_root_the_containers_slash() {
        // As runc starts a container: chdir(rootfs); pivot_root(".", ".").
        let mut r = seeded();
        one(
            &mut r,
            call(10, nr::OPEN, [0; 6], 3, text("/rootfs/etc"), None),
        );
        one(&mut r, call(10, nr::OPEN, [0; 6], 4, text("/host"), None));
        one(
            &mut r,
            call(10, nr::CHDIR, [0; 6], 0, text("/rootfs"), None),
        );
        let pr = one(
            &mut r,
            call(10, nr::PIVOT_ROOT, [0; 6], 0, text("."), text(".")),
        );
        assert_eq!(path(&pr, PathRole::Old).as_deref(), Some("/rootfs"));
        assert_eq!(target(&mut r, 10, nr::STAT, "bin").as_deref(), Some("/bin"));
        assert_eq!(target(&mut r, 10, nr::OPEN, "/f").as_deref(), Some("/f"));
        let via_fd = one(
            &mut r,
            call(10, nr::OPENAT, [3, 0, 0, 0, 0, 0], 5, text("hosts"), None),
        );
        assert_eq!(
            path(&via_fd, PathRole::Target).as_deref(),
            Some("/etc/hosts")
        );
        let old_tree = one(
            &mut r,
            call(10, nr::OPENAT, [4, 0, 0, 0, 0, 0], 6, text("x"), None),
        );
        assert!(matches!(
            old_tree.path(PathRole::Target).unwrap().resolution,
            Resolution::Unresolved(_)
        ));
        // A chroot before it is undone: the new root is `/`.
        let mut r = seeded();
        one(&mut r, call(10, nr::CHROOT, [0; 6], 0, text("/jail"), None));
        one(
            &mut r,
            call(
                10,
                nr::PIVOT_ROOT,
                [0; 6],
                0,
                text("/new"),
                text("/new/old"),
            ),
        );
        assert_eq!(target(&mut r, 10, nr::OPEN, "/f").as_deref(), Some("/f"));
    }

    #[test]
    fn a_process_gone_before_its_snapshot_takes_its_parents_root() {
        // /proc showed nothing (root None): the parent's root, when followed.
        let mut r = Resolver::with_snapshotter(Box::new(|_| ProcessSnapshot::default()));
        r.seed_process(
            2,
            ProcessRoot::Known(ContainerPath::new("/jail").unwrap()),
            None,
            vec![],
        );
        let mut h = header(30);
        h.ppid = 2;
        let RawRecord::Syscall(mut open) = call(30, nr::OPEN, [0; 6], 3, text("/f"), None) else {
            unreachable!()
        };
        open.header = h;
        let events = r.handle(RawRecord::Syscall(open));
        let s = events[1].syscall().unwrap();
        assert_eq!(path(s, PathRole::Target).as_deref(), Some("/jail/f"));
        // No followed parent: the container's root.
        let events = r.handle(call(31, nr::OPEN, [0; 6], 3, text("/f"), None));
        let s = events[1].syscall().unwrap();
        assert_eq!(path(s, PathRole::Target).as_deref(), Some("/f"));
    }

    #[test]
    fn snapshot_root_seeds_a_chrooted_process() {
        let mut r = Resolver::with_snapshotter(Box::new(|_| ProcessSnapshot {
            root: Some(ProcessRoot::Known(
                ContainerPath::new("/var/spool/postfix").unwrap(),
            )),
            cwd: ContainerPath::new("/var/spool/postfix"),
            ..Default::default()
        }));
        let mut events = r.handle(call(7, nr::OPEN, [0; 6], 3, text("/pid/master.pid"), None));
        let e = match events.remove(1).kind {
            EventKind::Syscall(s) => *s,
            other => panic!("not a syscall: {other:?}"),
        };
        assert_eq!(
            path(&e, PathRole::Target).as_deref(),
            Some("/var/spool/postfix/pid/master.pid")
        );
    }

    #[test]
    fn cut_and_unreadable_names_are_noted_and_not_trusted() {
        let mut r = seeded();
        let cut = Some(RawStr::Text {
            bytes: b"/deep/dir".to_vec(),
            truncated: true,
        });
        let e = one(&mut r, call(10, nr::OPEN, [0; 6], 3, cut, None));
        let p = e.path(PathRole::Target).unwrap();
        assert!(p.truncated);
        assert_eq!(
            e.incomplete,
            vec![format!(
                "target name cut at {} bytes",
                cimplifier_common::STR_SLOT
            )]
        );
        // fd 3's real name is unknown, so names relative to it are too.
        let rel = one(
            &mut r,
            call(10, nr::OPENAT, [3, 0, 0, 0, 0, 0], 4, text("f"), None),
        );
        assert!(matches!(
            rel.path(PathRole::Target).unwrap().resolution,
            Resolution::Unresolved(_)
        ));

        let e = one(
            &mut r,
            call(10, nr::RENAME, [0; 6], 0, text("a"), Some(RawStr::Fault)),
        );
        assert_eq!(
            e.path(PathRole::New).unwrap().resolution,
            Resolution::Unreadable
        );
        assert_eq!(
            e.incomplete,
            vec!["new name could not be read from the program's memory".to_owned()]
        );
    }

    #[test]
    fn exec_from_a_thread_completes_as_the_leader() {
        let mut r = seeded();
        let RawRecord::Syscall(mut entry) = call(
            10,
            nr::EXECVEAT,
            [CWD, 0, 0, 0, 0, 0],
            0,
            text("/bin/sh"),
            None,
        ) else {
            unreachable!()
        };
        entry.header.tid = 12;
        entry.argv = Some(vec!["sh".into()]);
        entry.flags |= flags::ARGV_TRUNCATED;
        assert!(r.handle(RawRecord::ExecArgs(entry)).is_empty());
        // The old leader dies in de_thread; the exec'ing thread becomes it.
        let dead = r.handle(RawRecord::Exit {
            header: header(10),
            group_dead: false,
        });
        assert_eq!(dead.len(), 1);
        let exec = one(
            &mut r,
            call(10, nr::EXECVEAT, [CWD, 0, 0, 0, 0, 0], 0, None, None),
        );
        assert_eq!(path(&exec, PathRole::Target).as_deref(), Some("/bin/sh"));
        assert_eq!(
            exec.incomplete,
            vec!["argv cut after 1 arguments".to_owned()]
        );
        assert!(r.pending_exec.is_empty());
    }

    #[test]
    fn exec_without_exit_is_reported_not_dropped() {
        let mut r = seeded();
        let RawRecord::Syscall(entry) = call(10, nr::EXECVE, [0; 6], 0, text("run"), None) else {
            unreachable!()
        };
        assert!(r.handle(RawRecord::ExecArgs(entry.clone())).is_empty());
        // A second entry means the first one's exit was lost.
        let lost = r.handle(RawRecord::ExecArgs(entry));
        let s = lost[0].syscall().unwrap();
        assert_eq!(
            (s.ret, path(s, PathRole::Target).as_deref()),
            (None, Some("/srv/run"))
        );
        assert!(
            s.incomplete[0].contains("exit not seen"),
            "{:?}",
            s.incomplete
        );
        // Killed mid-exec: the attempt comes out before the exit.
        let events = r.handle(RawRecord::Exit {
            header: header(10),
            group_dead: true,
        });
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].syscall().unwrap().syscall, "execve");
        assert!(matches!(
            events[1].kind,
            EventKind::Exit {
                process_exited: true
            }
        ));
        assert_eq!(r.tracked_processes(), 0);
    }

    #[test]
    fn no_return_calls_have_no_ret() {
        let mut r = seeded();
        let RawRecord::Syscall(mut exit) =
            call(10, nr::EXIT_GROUP, [1, 0, 0, 0, 0, 0], 0, None, None)
        else {
            unreachable!()
        };
        exit.flags = flags::NO_RETURN;
        let e = one(&mut r, RawRecord::Syscall(exit));
        assert_eq!(
            (e.syscall.as_str(), e.ret, e.errno),
            ("exit_group", None, None)
        );
    }
}
