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

/// Whether syscall `n` acts on the descriptor in its first argument,
/// whose name the event carries (`fd_path`).
fn acts_on_fd(n: u32) -> bool {
    matches!(
        n,
        nr::FCHDIR
            | nr::GETDENTS64
            | nr::CLOSE
            | nr::DUP
            | nr::DUP2
            | nr::DUP3
            | nr::FCNTL
            | nr::FCHMOD
            | nr::FCHOWN
    )
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
    fold_origins: FoldOrigins,
}

/// The opens the kernel folds repeats of under a key
/// (`RawSyscall::fold_key`), per process, to replay for a
/// `RawRecord::FdRepeat`. Dropped at exec and exit, after which the
/// kernel's keys change. At most [`FoldOrigins::MAX`] are held, the oldest
/// dropped first: the kernel holds no more keys than that (`FOLD_SEEN`
/// and `FOLDED_FDS`), so only a process that opened more distinct files
/// since its exec can miss one, and a miss replays an open whose name is
/// unreadable, counted as such.
#[derive(Default)]
struct FoldOrigins {
    by_process: HashMap<u32, HashMap<[u64; 2], RawSyscall>>,
    held: usize,
    /// Insertion order, for dropping the oldest; may name dropped ones.
    order: std::collections::VecDeque<(u32, [u64; 2])>,
}

impl FoldOrigins {
    const MAX: usize = 65536 * 2;

    fn insert(&mut self, raw: &RawSyscall) {
        let (pid, key) = (raw.header.pid, raw.fold_key);
        if self
            .by_process
            .entry(pid)
            .or_default()
            .insert(key, raw.clone())
            .is_none()
        {
            self.held += 1;
            self.order.push_back((pid, key));
        }
        while self.held > Self::MAX {
            let Some((pid, key)) = self.order.pop_front() else {
                break;
            };
            self.remove(pid, key);
        }
        if self.order.len() > 2 * Self::MAX {
            let by_process = &self.by_process;
            self.order
                .retain(|(pid, key)| by_process.get(pid).is_some_and(|o| o.contains_key(key)));
        }
    }

    fn remove(&mut self, pid: u32, key: [u64; 2]) {
        if let Some(origins) = self.by_process.get_mut(&pid)
            && origins.remove(&key).is_some()
        {
            self.held -= 1;
            if origins.is_empty() {
                self.by_process.remove(&pid);
            }
        }
    }

    fn get(&self, pid: u32, key: [u64; 2]) -> Option<&RawSyscall> {
        self.by_process.get(&pid)?.get(&key)
    }

    fn forget(&mut self, pid: u32) {
        if let Some(origins) = self.by_process.remove(&pid) {
            self.held -= origins.len();
        }
    }
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
        self.fold_origins.forget(pid);
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
            RawRecord::Syscall(raw) => {
                if raw.fold_key != [0, 0]
                    && syscalls::folds_into_fd(raw.nr, raw.ret, &raw.args).is_some()
                {
                    self.fold_origins.insert(&raw);
                }
                vec![self.syscall(raw)]
            }
            RawRecord::FdRepeat { header, fd, key } => vec![self.fd_repeat(header, fd, key)],
            RawRecord::ForeignExec {
                header,
                elf_class,
                machine,
            } => {
                let mut events: Vec<Event> =
                    self.finish_foreign_exec(&header).into_iter().collect();
                events.push(event(&header, EventKind::ForeignAbi { elf_class, machine }));
                events
            }
            RawRecord::Signal { header, signal } => {
                vec![event(&header, EventKind::Signal(signal))]
            }
            RawRecord::SyscallSeen { header, nr } => vec![event(
                &header,
                EventKind::SyscallSeen {
                    nr,
                    syscall: super::arch::Arch::X86_64.name(nr).map(str::to_owned),
                },
            )],
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
        // The kernel has reported the folded descriptors the old program
        // held; the new one folds under keys of its own.
        self.fold_origins.forget(raw.header.pid);
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

    /// The exec of a program built for another ABI is past its point of no
    /// return (its image is loading), and its exit is a compat one, which
    /// the syscall hooks never see: it is finished here, as successful, so
    /// that the program is the process's from now on.
    fn finish_foreign_exec(&mut self, header: &RawHeader) -> Option<Event> {
        // A thread other than the leader exec'd: the pending entry is the
        // thread's, found by its process.
        let key = Some(header.tid)
            .filter(|tid| self.pending_exec.contains_key(tid))
            .or_else(|| {
                self.pending_exec
                    .iter()
                    .find(|(_, e)| e.pid == header.pid)
                    .map(|(tid, _)| *tid)
            })?;
        let entry = self.pending_exec[&key].entry.clone();
        Some(self.syscall(RawSyscall {
            ret: 0,
            flags: entry.flags & !flags::NO_RETURN,
            str0: None,
            str1: None,
            argv: None,
            ..entry
        }))
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

    /// Descriptor `fd` came from a folded open: that open again, as the
    /// process made it (same name, flags and mode), returning `fd`. An
    /// origin not held (its record was lost, which the loss counters show)
    /// makes an open whose name is unreadable, so it stays counted among
    /// the unresolved names.
    fn fd_repeat(&mut self, header: RawHeader, fd: i32, key: [u64; 2]) -> Event {
        let origin = self.fold_origins.get(header.pid, key);
        let raw = match origin {
            Some(origin) => RawSyscall {
                header,
                ret: fd.into(),
                fold_key: [0, 0],
                ..origin.clone()
            },
            None => {
                tracing::warn!(
                    pid = header.pid,
                    fd,
                    "a folded open's first record was not seen: its name is unknown"
                );
                RawSyscall {
                    header,
                    nr: nr::OPENAT,
                    flags: flags::STR0_PRESENT | flags::STR0_FAULT,
                    args: [AT_FDCWD as u64, 0, 0, 0, 0, 0],
                    ret: fd.into(),
                    enter_ts_ns: 0,
                    fold_key: [0, 0],
                    str0: Some(RawStr::Fault),
                    str1: None,
                    argv: None,
                    sockaddr: None,
                }
            }
        };
        self.syscall(raw)
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
        let on_fd = acts_on_fd(raw.nr);
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
mod tests;
