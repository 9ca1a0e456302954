//! The model stage: trace events in, per-executable resource sets out.
//!
//! Section 3.1 of the CIMPLIFIER paper: each syscall, in the state the log
//! has built so far, reads and writes resources. A resource that must exist
//! for the call to succeed is read; one created, modified or whose metadata
//! changed is written. Resources reached only through a descriptor are not
//! added (they were added when the descriptor was opened). Failed calls are
//! kept apart, as evidence of what was looked for and not found.
//!
//! The model is a petgraph graph: executables and resources are nodes, each
//! access an edge, and the exec call graph links executables.
//!
//! Every used name also needs the directories above it and, given the image
//! tree, every symlink the lookup followed and the file it ended at: those
//! are [`Access::Traverse`] uses. With the tree, a `#!` script's interpreter
//! is an executable too, called by the script.

pub mod report;

/// What a syscall event adds to the model of the executable that made it;
/// None for an event that must be kept whatever came before (a fork, an
/// exec, an exit, a name that did not resolve). The model is a set of such
/// uses, so an event whose uses an identical earlier one (same executable)
/// already added changes nothing: the daemon counts it instead of storing it.
pub fn uses_of(event: &Event) -> Option<Vec<(Access, Resource)>> {
    let s = event.syscall()?;
    if semantics::exec_target(s).is_some()
        || privileged::changes_credentials(s)
        || s.paths.iter().any(|p| {
            matches!(
                p.resolution,
                Resolution::Unresolved(_) | Resolution::Unreadable
            )
        })
    {
        return None;
    }
    let uses = semantics::accesses(s);
    // A refusal that names no resource (a kill, a raw socket without its
    // capability) would fold into the executable's first call of the same
    // kind: kept, so that `verify` sees every privilege the output lacks.
    const EPERM: i64 = -1;
    const EACCES: i64 = -13;
    if uses.is_empty() && matches!(s.ret, Some(EPERM | EACCES)) {
        return None;
    }
    Some(uses)
}

/// The file a successful exec event ran, if `event` is one.
pub fn exec_path(event: &Event) -> Option<ContainerPath> {
    let s = event.syscall()?;
    s.succeeded().then(|| semantics::exec_target(s)).flatten()
}
mod exes;
pub mod privileged;
mod semantics;
mod tree;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use petgraph::Direction;
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::EdgeRef;
use rustc_hash::{FxHashMap, FxHashSet};
use serde::{Deserialize, Serialize};

use crate::trace::{ContainerPath, Event, EventKind, Resolution, SyscallEvent};

pub use exes::ExeTracker;
pub use semantics::accesses;
pub use tree::{DirTree, ImageTree, Walk, shebang_interpreter, walk};

/// An executable: the path a process exec'd, as the program named it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Exe(pub ContainerPath);

impl fmt::Display for Exe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A network endpoint. A wildcard address (0.0.0.0, ::) matches any address
/// on its port, as a listening socket does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct InetEndpoint {
    pub ip: IpAddr,
    pub port: u16,
}

impl InetEndpoint {
    /// Whether a connection to `other` reaches a socket bound to `self`.
    pub fn accepts(&self, other: &InetEndpoint) -> bool {
        self.port == other.port && (self.ip.is_unspecified() || self.ip == other.ip)
    }
}

/// Something a process uses.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "name")]
pub enum Resource {
    /// A file system name: file, directory, symlink, fifo or unix socket node.
    Path(ContainerPath),
    /// A Linux abstract unix socket name.
    AbstractSocket(String),
    /// An inet endpoint.
    Inet(InetEndpoint),
}

/// How a resource was used. The R and W sets are derived from these.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    /// Contents read (open for reading, readlink, directory opened).
    Read,
    /// A directory's entries read (getdents64 on a descriptor opened on
    /// it): the program saw every name in it, not only those it opened.
    List,
    /// Contents modified (open for writing, truncate).
    Write,
    /// Brought into existence (O_CREAT, mkdir, mknod, symlink, link, rename target, bind).
    Create,
    /// Removed (unlink, rmdir, rename source).
    Delete,
    /// Executed.
    Exec,
    /// Looked up: it must exist (stat, access, chdir).
    Stat,
    /// Only its metadata changed (chmod, chown, utimensat). Kept apart from
    /// writes so that a recursive chown does not force shipping content.
    Metadata,
    /// A socket bound to it (listening).
    Bind,
    /// Connected or sent to.
    Connect,
    /// A lookup that failed (ENOENT and the like): it is not needed, but the
    /// program looked for it.
    ProbeFailed,
    /// Passed through on the way to a used name: a directory above it, or a
    /// symlink the lookup followed.
    Traverse,
}

impl Access {
    /// In the paper's read set: it must exist for the call to succeed.
    pub fn is_read(self) -> bool {
        matches!(
            self,
            Access::Read
                | Access::List
                | Access::Exec
                | Access::Stat
                | Access::Delete
                | Access::Traverse
        )
    }

    /// In the paper's write set: created, modified, removed, or metadata changed.
    pub fn is_write(self) -> bool {
        matches!(
            self,
            Access::Write
                | Access::Create
                | Access::Delete
                | Access::Metadata
                | Access::Bind
                | Access::Connect
        )
    }
}

#[derive(Clone, Debug)]
enum Node {
    Exe(Exe),
    Resource(Resource),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Edge {
    Access(Access),
    /// Exec call graph: caller -> callee.
    Calls,
}

/// Per-process state while folding events.
#[derive(Clone, Copy, Debug, Default)]
struct ProcessState {
    /// The executable's node.
    exe: Option<NodeIndex>,
    uid: privileged::Uid,
}

/// The resource model of one observed container.
#[derive(Default)]
pub struct Model {
    walker: tree::Walker,
    graph: DiGraph<Node, Edge>,
    exes: FxHashMap<Exe, NodeIndex>,
    resources: FxHashMap<Resource, NodeIndex>,
    processes: FxHashMap<u32, ProcessState>,
    /// Access edges already present, so repeated calls add nothing.
    seen: FxHashSet<(NodeIndex, NodeIndex, Access)>,
    unresolved_names: u64,
    unnamed_listings: u64,
    /// Operations that may need a privilege, with who made them as whom.
    privileged: FxHashSet<privileged::Observed>,
    /// The syscall numbers each executable was seen making.
    syscalls: BTreeMap<Exe, BTreeSet<u32>>,
    /// Whether any `SyscallSeen` event was folded: sessions recorded
    /// before the tracer sent them have no syscall evidence at all.
    syscall_evidence: bool,
    /// Syscalls the tracer did not hook (`EventKind::Unhooked`): whoever
    /// made them, no event says so.
    unhooked: BTreeSet<u32>,
}

impl Model {
    pub fn new() -> Self {
        Self::default()
    }

    /// A model that follows symlinks and reads `#!` lines in `tree`, the
    /// file system the events happened in.
    pub fn with_image_tree(tree: Box<dyn ImageTree>) -> Self {
        Self {
            walker: tree::Walker::new(Some(tree)),
            ..Self::default()
        }
    }

    pub fn from_events<'a>(events: impl IntoIterator<Item = &'a Event>) -> Self {
        let mut m = Self::new();
        for e in events {
            m.apply(e);
        }
        m
    }

    /// Names that could not be made absolute or read, so are in no set:
    /// a model with any is not the whole truth.
    pub fn unresolved_names(&self) -> u64 {
        self.unresolved_names
    }

    /// Successful directory listings (getdents64) on a descriptor whose
    /// directory the tracer could not name (opened before the watch
    /// began): which directory's entries were read is unknown.
    pub fn unnamed_listings(&self) -> u64 {
        self.unnamed_listings
    }

    /// Forgets which process runs what: for events that follow from another
    /// host or another run, whose process ids mean something else.
    pub fn forget_processes(&mut self) {
        self.processes.clear();
    }

    /// Folds one event into the model.
    pub fn apply(&mut self, event: &Event) {
        match &event.kind {
            EventKind::Fork {
                child_pid,
                thread: false,
                ..
            } => {
                let parent = self.processes.get(&event.pid).copied().unwrap_or_default();
                self.processes.insert(*child_pid, parent);
            }
            EventKind::Fork { .. } => {}
            EventKind::Exit {
                process_exited: true,
            } => {
                self.processes.remove(&event.pid);
            }
            EventKind::Exit { .. } => {}
            EventKind::Unhooked { nrs } => self.unhooked.extend(nrs),
            // Counted against the session (`LossCounters::foreign_programs`).
            EventKind::ForeignAbi { .. } => {}
            EventKind::SyscallSeen { nr, .. } => {
                self.syscall_evidence = true;
                let exe = self.running(event);
                self.syscalls.entry(exe).or_default().insert(*nr);
            }
            EventKind::Signal(signal) => {
                if signal.needs_kill() {
                    let exe = self.running(event);
                    let uid = self
                        .processes
                        .get(&event.pid)
                        .map(|p| p.uid)
                        .unwrap_or_default();
                    self.privileged.insert(privileged::Observed {
                        exe,
                        uid,
                        op: privileged::Operation::Signal {
                            sig: signal.name(),
                            target_uid: signal.target_uid,
                        },
                    });
                }
            }
            EventKind::Running { exe, .. } => {
                let exe = exe.as_ref().map(|path| {
                    let node = self.exe_node(&Exe(path.clone()));
                    self.use_resource(node, Resource::Path(path.clone()), Access::Exec);
                    node
                });
                let uid = self
                    .processes
                    .get(&event.pid)
                    .map(|p| p.uid)
                    .unwrap_or_default();
                self.processes.insert(event.pid, ProcessState { exe, uid });
            }
            EventKind::Syscall(s) => {
                self.unresolved_names += s
                    .paths
                    .iter()
                    .filter(|p| {
                        matches!(
                            p.resolution,
                            Resolution::Unresolved(_) | Resolution::Unreadable
                        )
                    })
                    .count() as u64;
                if s.nr == cimplifier_common::syscalls::nr::GETDENTS64
                    && s.fd_path.is_none()
                    && s.ret.is_some_and(|r| r > 0)
                {
                    self.unnamed_listings += 1;
                }
                let caller = self.processes.get(&event.pid).and_then(|p| p.exe);
                // The exec'd file is used by the new executable; everything
                // else by the one running when the call was made.
                let exe = match semantics::exec_target(s) {
                    Some(callee) if s.succeeded() => {
                        let callee = self.exe_node(&Exe(callee));
                        if let Some(caller) = caller {
                            self.add_call(caller, callee);
                        }
                        self.processes.entry(event.pid).or_default().exe = Some(callee);
                        callee
                    }
                    _ => match caller {
                        Some(caller) => caller,
                        None => self.exe_node(&unknown_exe(&event.comm)),
                    },
                };
                let uid = self
                    .processes
                    .get(&event.pid)
                    .map(|p| p.uid)
                    .unwrap_or_default();
                self.note_privileged(exe, uid, s);
                if privileged::changes_credentials(s) {
                    self.processes.entry(event.pid).or_default().uid = uid.after(s);
                }
                for (access, resource) in accesses(s) {
                    self.use_resource(exe, resource, access);
                }
            }
        }
    }

    /// The executable `event`'s process runs: a stand-in named after its
    /// comm when its exec was not seen.
    fn running(&mut self, event: &Event) -> Exe {
        match self.processes.get(&event.pid).and_then(|p| p.exe) {
            Some(n) => match &self.graph[n] {
                Node::Exe(x) => x.clone(),
                Node::Resource(_) => unreachable!("a process runs an executable"),
            },
            None => {
                let exe = unknown_exe(&event.comm);
                self.exe_node(&exe);
                exe
            }
        }
    }

    /// Keeps the operations of `s` that may need a privilege, and the
    /// files it used (whose permission bits may deny `uid`).
    fn note_privileged(&mut self, exe: NodeIndex, uid: privileged::Uid, s: &SyscallEvent) {
        let Node::Exe(exe) = &self.graph[exe] else {
            return;
        };
        let exe = exe.clone();
        let files = if s.succeeded() {
            accesses(s)
        } else {
            Vec::new()
        };
        let files = files.into_iter().filter_map(|(access, r)| match r {
            Resource::Path(path) => Some(privileged::Operation::File { path, access }),
            _ => None,
        });
        for op in privileged::operations(s).into_iter().chain(files) {
            self.privileged.insert(privileged::Observed {
                exe: exe.clone(),
                uid,
                op,
            });
        }
    }

    /// The syscall numbers `exes` made, each with who made it.
    pub fn syscalls(&self, exes: &BTreeSet<Exe>) -> BTreeMap<u32, BTreeSet<Exe>> {
        let mut out: BTreeMap<u32, BTreeSet<Exe>> = BTreeMap::new();
        for (exe, nrs) in self.syscalls.iter().filter(|(e, _)| exes.contains(*e)) {
            for nr in nrs {
                out.entry(*nr).or_default().insert(exe.clone());
            }
        }
        out
    }

    /// Executables (including stand-ins for processes whose exec was not
    /// seen) that made any syscall.
    pub fn syscall_makers(&self) -> BTreeSet<Exe> {
        self.syscalls.keys().cloned().collect()
    }

    /// The syscalls the tracer did not hook while recording these events:
    /// any executable may have made them unseen.
    pub fn unhooked_syscalls(&self) -> &BTreeSet<u32> {
        &self.unhooked
    }

    /// Whether the events carried syscall evidence (`SyscallSeen`); logs
    /// and sessions recorded before the tracer sent it have none.
    pub fn has_syscall_evidence(&self) -> bool {
        self.syscall_evidence
    }

    /// The operations of `exes` that may need a privilege, in order.
    pub fn privileged(&self, exes: &BTreeSet<Exe>) -> BTreeSet<privileged::Observed> {
        self.privileged
            .iter()
            .filter(|o| exes.contains(&o.exe))
            .cloned()
            .collect()
    }

    fn exe_node(&mut self, exe: &Exe) -> NodeIndex {
        if let Some(&n) = self.exes.get(exe) {
            return n;
        }
        let n = self.graph.add_node(Node::Exe(exe.clone()));
        self.exes.insert(exe.clone(), n);
        n
    }

    fn resource_node(&mut self, r: Resource) -> NodeIndex {
        if let Some(&n) = self.resources.get(&r) {
            return n;
        }
        let n = self.graph.add_node(Node::Resource(r.clone()));
        self.resources.insert(r, n);
        n
    }

    fn add_call(&mut self, a: NodeIndex, b: NodeIndex) {
        if !self
            .graph
            .edges_connecting(a, b)
            .any(|e| *e.weight() == Edge::Calls)
        {
            self.graph.add_edge(a, b, Edge::Calls);
        }
    }

    /// Adds one access edge; false when it was there already.
    fn add_access(&mut self, e: NodeIndex, resource: Resource, access: Access) -> bool {
        let r = self.resource_node(resource);
        let new = self.seen.insert((e, r, access));
        if new {
            self.graph.add_edge(e, r, Edge::Access(access));
        }
        new
    }

    /// Adds a use with what it implies: the directories and symlinks its
    /// lookup went through, the name it ended at, and for an exec'd script,
    /// its interpreter.
    fn use_resource(&mut self, exe: NodeIndex, resource: Resource, access: Access) {
        let Resource::Path(path) = &resource else {
            self.add_access(exe, resource, access);
            return;
        };
        let path = path.clone();
        if !self.add_access(exe, resource, access) || access == Access::ProbeFailed {
            return;
        }
        if !self.walker.has_tree() {
            // Only the directories above are known. When one is already
            // there, so are all above it.
            let mut dir = path;
            while dir != ContainerPath::root() {
                dir = dir.parent();
                if !self.add_access(exe, Resource::Path(dir.clone()), Access::Traverse) {
                    break;
                }
            }
            return;
        }
        // Creating or removing a name acts on the last link, not its target.
        let follow_final = !matches!(access, Access::Create | Access::Delete);
        let walk = self.walker.walk(&path, follow_final);
        for passed in walk.dirs.into_iter().chain(walk.links) {
            self.add_access(exe, Resource::Path(passed), Access::Traverse);
        }
        let Some(real) = walk.resolved else { return };
        if real != path {
            self.use_resource(exe, Resource::Path(real.clone()), access);
        }
        if access == Access::Exec
            && let Some(interp) = self.walker.interpreter(&real)
        {
            let interp_exe = self.exe_node(&Exe(interp.clone()));
            self.add_call(exe, interp_exe);
            self.use_resource(exe, Resource::Path(interp.clone()), Access::Exec);
            self.use_resource(interp_exe, Resource::Path(interp), Access::Exec);
        }
    }

    /// Every executable seen, in path order.
    /// How many distinct resources (paths, sockets, endpoints) were used.
    pub fn resource_count(&self) -> usize {
        self.resources.len()
    }

    pub fn executables(&self) -> BTreeSet<Exe> {
        self.exes.keys().cloned().collect()
    }

    /// Each resource `exes` used, with how.
    pub fn uses(&self, exes: &[Exe]) -> BTreeMap<Resource, BTreeSet<Access>> {
        let mut out: BTreeMap<Resource, BTreeSet<Access>> = BTreeMap::new();
        for exe in exes {
            let Some(&n) = self.exes.get(exe) else {
                continue;
            };
            for edge in self.graph.edges_directed(n, Direction::Outgoing) {
                if let (Edge::Access(a), Node::Resource(r)) =
                    (edge.weight(), &self.graph[edge.target()])
                {
                    out.entry(r.clone()).or_default().insert(*a);
                }
            }
        }
        out
    }

    /// R(E): what must exist for the executables `exes`.
    pub fn reads(&self, exes: &[Exe]) -> BTreeSet<Resource> {
        self.filter(exes, Access::is_read)
    }

    /// W(E): what the executables `exes` create, change or remove.
    pub fn writes(&self, exes: &[Exe]) -> BTreeSet<Resource> {
        self.filter(exes, Access::is_write)
    }

    /// Directories `exes` listed (read the entries of).
    pub fn listed(&self, exes: &[Exe]) -> BTreeSet<Resource> {
        self.filter(exes, |a| a == Access::List)
    }

    /// Names `exes` looked up and did not find.
    pub fn failed_lookups(&self, exes: &[Exe]) -> BTreeSet<Resource> {
        self.filter(exes, |a| a == Access::ProbeFailed)
    }

    fn filter(&self, exes: &[Exe], keep: impl Fn(Access) -> bool) -> BTreeSet<Resource> {
        self.uses(exes)
            .into_iter()
            .filter(|(_, a)| a.iter().any(|&a| keep(a)))
            .map(|(r, _)| r)
            .collect()
    }

    /// The executables that write `resource`.
    pub fn writers(&self, resource: &Resource) -> BTreeSet<Exe> {
        let Some(&n) = self.resources.get(resource) else {
            return BTreeSet::new();
        };
        self.graph
            .edges_directed(n, Direction::Incoming)
            .filter(|e| matches!(e.weight(), Edge::Access(a) if a.is_write()))
            .filter_map(|e| match &self.graph[e.source()] {
                Node::Exe(x) => Some(x.clone()),
                Node::Resource(_) => None,
            })
            .collect()
    }

    /// Resources used by both sets of executables. Directories both only
    /// passed through are structure, not something they share.
    pub fn shared(&self, a: &[Exe], b: &[Exe]) -> BTreeSet<Resource> {
        let more_than_traverse =
            |uses: BTreeMap<Resource, BTreeSet<Access>>| -> BTreeSet<Resource> {
                uses.into_iter()
                    .filter(|(_, a)| a.iter().any(|&a| a != Access::Traverse))
                    .map(|(r, _)| r)
                    .collect()
            };
        let ua = more_than_traverse(self.uses(a));
        more_than_traverse(self.uses(b))
            .into_iter()
            .filter(|r| ua.contains(r))
            .collect()
    }

    /// The exec call graph's edges, caller -> callee.
    pub fn calls(&self) -> BTreeSet<(Exe, Exe)> {
        self.graph
            .edge_references()
            .filter(|e| *e.weight() == Edge::Calls)
            .filter_map(
                |e| match (&self.graph[e.source()], &self.graph[e.target()]) {
                    (Node::Exe(a), Node::Exe(b)) => Some((a.clone(), b.clone())),
                    _ => None,
                },
            )
            .collect()
    }

    /// Whether `path` is a directory in the image tree the model was given;
    /// `None` without a tree.
    pub fn image_is_dir(&self, path: &ContainerPath) -> Option<bool> {
        self.walker.is_dir(path)
    }

    /// Executables that exec'd `exe`.
    pub fn callers(&self, exe: &Exe) -> BTreeSet<Exe> {
        self.call_neighbours(exe, Direction::Incoming)
    }

    /// Executables `exe` exec'd.
    pub fn callees(&self, exe: &Exe) -> BTreeSet<Exe> {
        self.call_neighbours(exe, Direction::Outgoing)
    }

    fn call_neighbours(&self, exe: &Exe, dir: Direction) -> BTreeSet<Exe> {
        let Some(&n) = self.exes.get(exe) else {
            return BTreeSet::new();
        };
        self.graph
            .edges_directed(n, dir)
            .filter(|e| *e.weight() == Edge::Calls)
            .filter_map(|e| {
                let other = if dir == Direction::Outgoing {
                    e.target()
                } else {
                    e.source()
                };
                match &self.graph[other] {
                    Node::Exe(x) => Some(x.clone()),
                    Node::Resource(_) => None,
                }
            })
            .collect()
    }
}

const UNOBSERVED_EXEC: &str = "/?unobserved-exec/";

impl Exe {
    /// A stand-in for a process whose exec was never seen: one running
    /// before the watch began, or the container runtime's own set-up
    /// (`runc:[2:INIT]`) before it execs the entrypoint. There is no file
    /// to place for it.
    pub fn is_unobserved(&self) -> bool {
        self.0.as_str().starts_with(UNOBSERVED_EXEC)
    }

    /// A stage of the OCI runtime in the container's cgroup, whose exec
    /// was not seen: `runc`, `runc:[0:PARENT]`, `runc:[1:CHILD]`,
    /// `runc:[2:INIT]`, or `exe` (runc re-executing `/proc/self/exe`,
    /// before it names its stage). What it does before it execs the
    /// entrypoint is the runtime's, not the image's.
    pub fn is_runtime(&self) -> bool {
        let Some(name) = self.0.as_str().strip_prefix(UNOBSERVED_EXEC) else {
            return false;
        };
        name == "runc" || name == "exe" || name.starts_with("runc:[")
    }
}

/// Stands for the executable of a process whose exec was not observed (it
/// was running before the watch began).
fn unknown_exe(comm: &str) -> Exe {
    Exe(
        ContainerPath::new(&format!("{UNOBSERVED_EXEC}{}", comm.replace('/', "_")))
            .expect("absolute"),
    )
}

#[cfg(test)]
mod tests;
