//! Placement for a partitioned system (section 3.2, "Resource placement",
//! and 3.3 of the paper): which resources each partition's image holds,
//! which are shared through volumes and why, how the partitions reach each
//! other's sockets, and which executables they run in each other by RPE.
//!
//! A path some partition changes and another uses is shared through a
//! volume; every other path is the partition's own: copied read-only from
//! the source image, or written only there. A shared path that is created
//! or removed at run time is reached through its parent directory, since a
//! mount needs an existing target and pins it; directories that are
//! themselves created or removed are skipped upwards, and volumes nested in
//! another merge into the outer one. Paths only passed through (the
//! directories above a used name) are structure and never force sharing;
//! nor does a stat of a directory (in the image), which shows no entries.
//!
//! Every name is first resolved through the image's symlinked directories
//! (`/var/run/x.sock` is `/run/x.sock` where `/var/run -> /run`), so two
//! names of one object are one resource and two names of one directory give
//! one volume. A volume is mounted at a shared object itself only when the
//! image has it as a directory or regular file and nobody creates, binds or
//! removes it: a mount there would make a directory where a program later
//! binds a socket, makes a FIFO or renames a file. Otherwise its directory
//! is shared.
//!
//! The closure of what each kept path needs in the image (ELF libraries,
//! symlink chains) is the slim planner's, per partition, at emit time.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::state::state_dirs;
use crate::model::report::ResourceUse;
use crate::model::{Access, Exe, ImageTree, Model, Resource, shebang_interpreter, walk};
use crate::partition::{PartitionName, Partitioning, PolicyKind, Separation};
use crate::trace::ContainerPath;

pub const FORMAT: &str = "cimplifier-partition-plan";
pub const VERSION: u32 = 1;

/// Kernel file systems each container gets from its runtime: never copied
/// from the image, never shared by volume.
const RUNTIME_PROVIDED: [&str; 3] = ["/proc", "/sys", "/dev"];
/// Runtime-provided places whose objects programs share as IPC.
const RUNTIME_IPC: [&str; 2] = ["/dev/shm", "/dev/mqueue"];

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionPlan {
    pub format: String,
    pub version: u32,
    pub policy: PolicyKind,
    pub partitions: BTreeMap<PartitionName, PartitionContents>,
    /// Sorted by mount point.
    pub volumes: Vec<SharedVolume>,
    pub network: NetworkPlan,
    /// Sorted by caller, then callee.
    pub rpe: Vec<RpeEdge>,
    pub warnings: Vec<PlanWarning>,
    /// Symlinks to directories that used names went through, with where
    /// they lead: the plan names every resource by where it leads.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub dir_links: BTreeMap<ContainerPath, ContainerPath>,
}

/// What one partition's container holds and reaches.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionContents {
    pub executables: BTreeSet<Exe>,
    /// Every resource its executables used (failed lookups aside), and how.
    pub resources: Vec<ResourceUse>,
    /// Copied from the source image into its own image, read-only: no
    /// executable of this partition changes them.
    pub copied: BTreeSet<ContainerPath>,
    /// Changed by this partition alone: in its image or created at run
    /// time, and in its own writable layer either way.
    pub private: BTreeSet<ContainerPath>,
    /// Mount points of the shared volumes it mounts; what it uses below
    /// them is in the volume, not its image.
    pub mounts: BTreeSet<ContainerPath>,
    /// Used below /proc, /sys or /dev: the container runtime provides them.
    pub runtime: BTreeSet<ContainerPath>,
    /// Executables of other partitions its programs run: a stub stands at
    /// each path, and the named partition runs the real one.
    pub stubs: BTreeMap<Exe, PartitionName>,
    /// Its executables that programs in other partitions run, through its
    /// RPE server.
    pub serves: BTreeSet<Exe>,
}

/// A named volume of the run plan: mounted at the same path in several
/// partitions (it holds what they share), or in one alone (it holds that
/// partition's state, so that re-creating its container keeps the data).
/// Either way it starts with the source image's content (see emit's seed).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedVolume {
    pub mount: ContainerPath,
    pub partitions: BTreeSet<PartitionName>,
    /// The resources that must be shared, with who uses them how: why the
    /// volume exists when several partitions mount it.
    pub shared: Vec<SharedResource>,
    /// State directories it holds (directories observed executables write
    /// in): why it exists when only one partition mounts it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub state: Vec<StateUse>,
    /// Every path the mounting partitions use below the mount point: what
    /// the volume starts with (from the source image) or comes to hold.
    pub contents: BTreeSet<ContainerPath>,
}

impl SharedVolume {
    /// Mounted by one partition only: its state, not something shared.
    pub fn is_private(&self) -> bool {
        self.partitions.len() == 1
    }

    fn absorb(&mut self, inner: SharedVolume) {
        self.partitions.extend(inner.partitions);
        self.shared.extend(inner.shared);
        self.state.extend(inner.state);
    }
}

/// A state directory (see [`crate::place::state`]) a volume holds.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct StateUse {
    pub partition: PartitionName,
    pub dir: ContainerPath,
    /// The executables that write in it.
    pub writers: BTreeSet<Exe>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedResource {
    pub resource: ContainerPath,
    pub mounted_as: MountedAs,
    /// Sorted by partition, then executable; passing through is left out.
    pub uses: Vec<Use>,
}

/// How a shared resource is reached by the volume.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "how")]
pub enum MountedAs {
    /// Changed in place: the resource itself can be the mount.
    Itself,
    /// Created or removed at run time: through `dir`, the nearest directory
    /// above it that is neither.
    Through { dir: ContainerPath },
}

/// One executable's use of a resource.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Use {
    pub partition: PartitionName,
    pub exe: Exe,
    pub access: BTreeSet<Access>,
}

/// The partitions share one network namespace (as the paper's
/// implementation does), so loopback and abstract socket addresses keep
/// working across them; `links` are the connections that now cross
/// partitions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkPlan {
    pub shared_namespace: bool,
    /// Sorted by client partition, client, then server.
    pub links: Vec<NetworkLink>,
}

/// A socket bound in one partition and reached from another.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NetworkLink {
    pub client_partition: PartitionName,
    pub client: Exe,
    /// The address the client used.
    pub reached_as: Resource,
    pub server_partition: PartitionName,
    pub server: Exe,
    /// The address the server bound (a wildcard accepts any address).
    pub bound: Resource,
}

/// A script whose `#!` interpreter is an RPE stub in the script's own
/// partition, because another program there runs that interpreter in
/// another partition: the script would start the stub, which runs it
/// where neither the script nor what it uses is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StubbedInterpreter {
    pub partition: PartitionName,
    pub script: Exe,
    pub interpreter: Exe,
    pub interpreter_partition: PartitionName,
    /// The programs of `partition` that run the interpreter elsewhere.
    pub callers: BTreeSet<Exe>,
}

impl std::fmt::Display for StubbedInterpreter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let callers: Vec<String> = self.callers.iter().map(|e| e.to_string()).collect();
        write!(
            f,
            "partition {p}: the script {s} runs {i} as its #! interpreter in its own process, \
             but {i} is an RPE stub in {p}, since {p} also calls {i} in partition {ip} (from \
             {c}); the script cannot run. Put {i} in partition {p} too, or {s} in partition {ip}",
            p = self.partition,
            s = self.script,
            i = self.interpreter,
            c = callers.join(", "),
            ip = self.interpreter_partition,
        )
    }
}

impl PartitionPlan {
    /// Every script of the plan whose interpreter is a stub in its
    /// partition. Such a plan cannot run; emit refuses it.
    pub fn stubbed_interpreters(&self, tree: &dyn ImageTree) -> Vec<StubbedInterpreter> {
        let mut out = Vec::new();
        for (name, part) in &self.partitions {
            for script in &part.executables {
                for (stub, at) in &part.stubs {
                    if is_shebang_interpreter(tree, script, stub) {
                        out.push(StubbedInterpreter {
                            partition: name.clone(),
                            script: script.clone(),
                            interpreter: stub.clone(),
                            interpreter_partition: at.clone(),
                            callers: self
                                .rpe
                                .iter()
                                .filter(|e| &e.caller_partition == name && &e.callee == stub)
                                .map(|e| e.caller.clone())
                                .collect(),
                        });
                    }
                }
            }
        }
        out
    }
}

/// Whether `callee` is the interpreter that `caller`'s `#!` line names, so
/// that running `caller` runs `callee` in the same process.
fn is_shebang_interpreter(tree: &dyn ImageTree, caller: &Exe, callee: &Exe) -> bool {
    walk(tree, &caller.0, true)
        .resolved
        .and_then(|real| tree.head(&real, 256))
        .and_then(|head| shebang_interpreter(&head))
        .is_some_and(|interp| interp == callee.0)
}

/// A call that crosses partitions: `callee` runs in `callee_partition`,
/// and `caller_partition` holds a stub at its path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RpeEdge {
    pub caller_partition: PartitionName,
    pub caller: Exe,
    pub callee_partition: PartitionName,
    pub callee: Exe,
    /// What kept the two apart.
    pub separation: Separation,
}

/// Something the plan cannot provide.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "warning")]
pub enum PlanWarning {
    /// A shared resource only `/` itself could hold as a volume (one
    /// created or removed directly below it): the root cannot be a volume.
    RootNotShareable {
        resource: ContainerPath,
        partitions: BTreeSet<PartitionName>,
    },
    /// A /dev/shm or /dev/mqueue object used by several partitions and
    /// changed by one: it needs a shared IPC namespace or /dev/shm, which
    /// this plan does not set up.
    IpcNotShared {
        resource: ContainerPath,
        partitions: BTreeSet<PartitionName>,
    },
    /// A state directory only `/` could hold as a volume (it and the
    /// directories above it are made at run time): its data stays in the
    /// container's writable layer and is lost when the container is
    /// re-created.
    StateNotPersisted {
        dir: ContainerPath,
        partition: PartitionName,
    },
}

/// Who used one resource: partition -> executable -> accesses.
type Users = BTreeMap<PartitionName, BTreeMap<Exe, BTreeSet<Access>>>;

fn path(s: &str) -> ContainerPath {
    ContainerPath::new(s).expect("absolute")
}

fn below_any(p: &ContainerPath, dirs: &[&str]) -> bool {
    dirs.iter().any(|d| p.is_under(&path(d)))
}

fn accesses(users: &Users) -> impl Iterator<Item = Access> + '_ {
    users.values().flat_map(|e| e.values().flatten().copied())
}

/// Whether some partition brings `users`' resource into or out of existence.
fn created_or_removed(users: Option<&Users>) -> bool {
    users.is_some_and(|u| {
        accesses(u).any(|a| matches!(a, Access::Create | Access::Delete | Access::Bind))
    })
}

/// The partitions that use a resource for more than passing through.
fn real_users(users: &Users) -> BTreeSet<PartitionName> {
    users
        .iter()
        .filter(|(_, exes)| exes.values().flatten().any(|&a| a != Access::Traverse))
        .map(|(p, _)| p.clone())
        .collect()
}

fn writers(users: &Users) -> BTreeSet<PartitionName> {
    users
        .iter()
        .filter(|(_, exes)| exes.values().flatten().any(|a| a.is_write()))
        .map(|(p, _)| p.clone())
        .collect()
}

/// Resolves the names of used paths through the image's symlinks.
struct Names<'a> {
    tree: &'a dyn ImageTree,
    dir_links: BTreeMap<ContainerPath, ContainerPath>,
}

impl Names<'_> {
    /// `path` with every directory on the way resolved through the image's
    /// symlinks; the last component is kept (a use of a link itself, or
    /// one the model also recorded at the link's target).
    fn canonical(&mut self, path: &ContainerPath) -> ContainerPath {
        if *path == ContainerPath::root() {
            return path.clone();
        }
        let w = walk(self.tree, &path.parent(), true);
        let Some(dir) = w.resolved else {
            return path.clone(); // a link loop: the lookup fails anyway
        };
        for link in w.links {
            if let Some(to) = walk(self.tree, &link, true).resolved {
                self.dir_links.insert(link, to);
            }
        }
        let name = path.as_str().rsplit('/').next().unwrap_or_default();
        dir.join(name)
    }

    /// Whether the image has `path` as a symlink.
    fn is_link(&self, path: &ContainerPath) -> bool {
        self.tree.read_link(path).is_some()
    }

    /// Whether a volume may be mounted at `path` itself: the image has it
    /// as a directory or a regular file. Unknown when the tree cannot say.
    fn mountable(&self, path: &ContainerPath) -> bool {
        match self.tree.is_dir(path) {
            Some(true) | None => true,
            Some(false) => self.tree.head(path, 0).is_some(),
        }
    }
}

/// The placement of `partitioning`'s partitions, from what `model` saw
/// their executables use in the image `tree` (the source image's files,
/// whose symlinks name where each used name leads).
pub fn plan(model: &Model, partitioning: &Partitioning, tree: &dyn ImageTree) -> PartitionPlan {
    let mut names = Names {
        tree,
        dir_links: BTreeMap::new(),
    };
    let mut by_resource: BTreeMap<Resource, Users> = BTreeMap::new();
    for (name, exes) in &partitioning.partitions {
        for exe in exes {
            for (resource, access) in model.uses(std::slice::from_ref(exe)) {
                let mut access: BTreeSet<Access> = access
                    .into_iter()
                    .filter(|&a| a != Access::ProbeFailed)
                    .collect();
                if access.is_empty() {
                    continue;
                }
                let resource = match resource {
                    Resource::Path(p) => {
                        let real = names.canonical(&p);
                        // A symlink followed to its target is passed
                        // through: the model has the use at the target.
                        if names.is_link(&real)
                            && !access
                                .iter()
                                .any(|a| matches!(a, Access::Create | Access::Delete))
                        {
                            access = BTreeSet::from([Access::Traverse]);
                        }
                        Resource::Path(real)
                    }
                    other => other,
                };
                by_resource
                    .entry(resource)
                    .or_default()
                    .entry(name.clone())
                    .or_default()
                    .entry(exe.clone())
                    .or_default()
                    .extend(access);
            }
        }
    }
    let mut warnings = Vec::new();

    // Shared resources, each at the mount it alone would need.
    let mut wanted: BTreeMap<ContainerPath, Vec<(SharedResource, BTreeSet<PartitionName>)>> =
        BTreeMap::new();
    for (resource, users) in &by_resource {
        let Resource::Path(p) = resource else {
            continue;
        };
        let mut sharers = real_users(users);
        // Stat of a directory shows its mode and times, not what another
        // partition creates in it: it need not see the same directory.
        if tree.is_dir(p) == Some(true) {
            sharers.retain(|part| {
                users[part]
                    .values()
                    .flatten()
                    .any(|&a| !matches!(a, Access::Stat | Access::Traverse))
            });
        }
        if sharers.len() < 2 || writers(users).is_empty() {
            continue;
        }
        if below_any(p, &RUNTIME_PROVIDED) {
            if below_any(p, &RUNTIME_IPC) {
                warnings.push(PlanWarning::IpcNotShared {
                    resource: p.clone(),
                    partitions: sharers,
                });
            }
            continue;
        }
        // A mount makes a directory where the image has none: never at
        // what a program creates, binds or removes, nor at a socket or FIFO.
        let (mount, mounted_as) = if created_or_removed(Some(users)) || !names.mountable(p) {
            let mut dir = p.parent();
            while dir != ContainerPath::root()
                && created_or_removed(by_resource.get(&Resource::Path(dir.clone())))
            {
                dir = dir.parent();
            }
            (dir.clone(), MountedAs::Through { dir })
        } else {
            (p.clone(), MountedAs::Itself)
        };
        if mount == ContainerPath::root() {
            warnings.push(PlanWarning::RootNotShareable {
                resource: p.clone(),
                partitions: sharers,
            });
            continue;
        }
        // Passing through is structure, not evidence.
        let uses = users
            .iter()
            .flat_map(|(part, exes)| {
                exes.iter().filter_map(|(exe, access)| {
                    let mut access = access.clone();
                    access.remove(&Access::Traverse);
                    (!access.is_empty()).then(|| Use {
                        partition: part.clone(),
                        exe: exe.clone(),
                        access,
                    })
                })
            })
            .collect();
        let shared = SharedResource {
            resource: p.clone(),
            mounted_as,
            uses,
        };
        wanted.entry(mount).or_default().push((shared, sharers));
    }

    // A volume inside another merges into the outer one.
    let mut volumes: BTreeMap<ContainerPath, SharedVolume> = BTreeMap::new();
    for (mount, resources) in &wanted {
        let mut outer = mount.clone();
        let mut dir = mount.clone();
        while dir != ContainerPath::root() {
            dir = dir.parent();
            if wanted.contains_key(&dir) {
                outer = dir.clone();
            }
        }
        let v = volumes
            .entry(outer.clone())
            .or_insert_with(|| SharedVolume {
                mount: outer,
                partitions: BTreeSet::new(),
                shared: Vec::new(),
                state: Vec::new(),
                contents: BTreeSet::new(),
            });
        for (shared, sharers) in resources {
            v.partitions.extend(sharers.iter().cloned());
            v.shared.push(shared.clone());
        }
    }
    let mut volumes: Vec<SharedVolume> = volumes.into_values().collect();

    // Every lasting state directory gets a volume, so that re-creating a
    // container (`down`, `up`) keeps its data. /tmp, /run and the like
    // need not last, and stay in the writable layer unless shared.
    for (name, exes) in &partitioning.partitions {
        for dir in state_dirs(model, exes, tree) {
            if dir.volatile {
                continue;
            }
            // Mounting a directory made at run time would make it before
            // the program does: mount the nearest one above that is not.
            let mut mount = dir.dir.clone();
            while mount != ContainerPath::root()
                && created_or_removed(by_resource.get(&Resource::Path(mount.clone())))
            {
                mount = mount.parent();
            }
            if mount == ContainerPath::root() {
                warnings.push(PlanWarning::StateNotPersisted {
                    dir: dir.dir,
                    partition: name.clone(),
                });
                continue;
            }
            volumes.push(SharedVolume {
                mount,
                partitions: BTreeSet::from([name.clone()]),
                shared: Vec::new(),
                state: vec![StateUse {
                    partition: name.clone(),
                    dir: dir.dir,
                    writers: dir.writers.into_keys().collect(),
                }],
                contents: BTreeSet::new(),
            });
        }
    }
    // No container mounts one volume inside another, or two at one path:
    // such volumes merge into the outer one.
    while let Some((outer, inner)) = (0..volumes.len())
        .flat_map(|i| (0..volumes.len()).map(move |j| (i, j)))
        .find(|&(i, j)| {
            let (a, b) = (&volumes[i], &volumes[j]);
            i != j
                && b.mount.is_under(&a.mount)
                && (b.mount != a.mount || i < j)
                && !a.partitions.is_disjoint(&b.partitions)
        })
    {
        let v = volumes[inner].clone();
        volumes[outer].absorb(v);
        volumes.remove(inner);
    }
    volumes.sort_by(|a, b| (&a.mount, &a.partitions).cmp(&(&b.mount, &b.partitions)));
    for v in &mut volumes {
        v.shared.sort_by(|a, b| a.resource.cmp(&b.resource));
        v.state.sort();
        v.state.dedup();
        v.contents = by_resource
            .iter()
            .filter_map(|(r, users)| match r {
                Resource::Path(p)
                    if p != &v.mount
                        && p.is_under(&v.mount)
                        && users.keys().any(|u| v.partitions.contains(u)) =>
                {
                    Some(p.clone())
                }
                _ => None,
            })
            .collect();
    }

    let mut partitions: BTreeMap<PartitionName, PartitionContents> = partitioning
        .partitions
        .iter()
        .map(|(name, exes)| {
            let contents = PartitionContents {
                executables: exes.clone(),
                resources: Vec::new(),
                copied: BTreeSet::new(),
                private: BTreeSet::new(),
                mounts: volumes
                    .iter()
                    .filter(|v| v.partitions.contains(name))
                    .map(|v| v.mount.clone())
                    .collect(),
                runtime: BTreeSet::new(),
                stubs: BTreeMap::new(),
                serves: BTreeSet::new(),
            };
            (name.clone(), contents)
        })
        .collect();
    for (resource, users) in &by_resource {
        for (name, exes) in users {
            let part = partitions.get_mut(name).expect("a partition of the plan");
            let access: BTreeSet<Access> = exes.values().flatten().copied().collect();
            if let Resource::Path(p) = resource {
                if below_any(p, &RUNTIME_PROVIDED) {
                    part.runtime.insert(p.clone());
                } else if part.mounts.iter().any(|m| p.is_under(m)) {
                    // In the volume.
                } else if access.iter().any(|a| a.is_write()) {
                    part.private.insert(p.clone());
                } else {
                    part.copied.insert(p.clone());
                }
            }
            part.resources.push(ResourceUse {
                resource: resource.clone(),
                access,
            });
        }
    }

    let mut rpe = Vec::new();
    for call in &partitioning.separated_calls {
        let (Some(from), Some(to)) = (
            partitioning.partition_of(&call.caller),
            partitioning.partition_of(&call.callee),
        ) else {
            continue;
        };
        if is_shebang_interpreter(tree, &call.caller, &call.callee) {
            // The kernel runs a script's interpreter in the script's own
            // process, whose every use the model gives the script: the
            // interpreter, its libraries and the script itself are in the
            // caller's partition. A stub there would run it where none of
            // them are, so the real interpreter stays.
            continue;
        }
        if let Some(p) = partitions.get_mut(from) {
            p.stubs.insert(call.callee.clone(), to.clone());
        }
        if let Some(p) = partitions.get_mut(to) {
            p.serves.insert(call.callee.clone());
        }
        rpe.push(RpeEdge {
            caller_partition: from.clone(),
            caller: call.caller.clone(),
            callee_partition: to.clone(),
            callee: call.callee.clone(),
            separation: call.separation.clone(),
        });
    }

    PartitionPlan {
        format: FORMAT.to_owned(),
        version: VERSION,
        policy: partitioning.policy,
        partitions,
        volumes,
        network: NetworkPlan {
            shared_namespace: true,
            links: network_links(&by_resource),
        },
        rpe,
        warnings,
        dir_links: names.dir_links,
    }
}

/// Sockets bound in one partition and connected to from another.
fn network_links(by_resource: &BTreeMap<Resource, Users>) -> Vec<NetworkLink> {
    let with = |want: Access| -> Vec<(&Resource, &PartitionName, &Exe)> {
        by_resource
            .iter()
            .filter(|(r, _)| matches!(r, Resource::Inet(_) | Resource::AbstractSocket(_)))
            .flat_map(|(r, users)| {
                users.iter().flat_map(move |(p, exes)| {
                    exes.iter()
                        .filter(move |(_, a)| a.contains(&want))
                        .map(move |(e, _)| (r, p, e))
                })
            })
            .collect()
    };
    let (servers, clients) = (with(Access::Bind), with(Access::Connect));
    let mut links = Vec::new();
    for &(reached_as, client_partition, client) in &clients {
        for &(bound, server_partition, server) in &servers {
            let reaches = match (bound, reached_as) {
                (Resource::Inet(b), Resource::Inet(c)) => b.accepts(c),
                (Resource::AbstractSocket(b), Resource::AbstractSocket(c)) => b == c,
                _ => false,
            };
            if reaches && client_partition != server_partition {
                links.push(NetworkLink {
                    client_partition: client_partition.clone(),
                    client: client.clone(),
                    reached_as: reached_as.clone(),
                    server_partition: server_partition.clone(),
                    server: server.clone(),
                    bound: bound.clone(),
                });
            }
        }
    }
    links.sort();
    links
}

fn access_name(a: Access) -> &'static str {
    match a {
        Access::Read => "read",
        Access::List => "list",
        Access::Write => "write",
        Access::Create => "create",
        Access::Delete => "delete",
        Access::Exec => "exec",
        Access::Stat => "stat",
        Access::Metadata => "metadata",
        Access::Bind => "bind",
        Access::Connect => "connect",
        Access::ProbeFailed => "probe-failed",
        Access::Traverse => "traverse",
    }
}

fn resource_name(r: &Resource) -> String {
    match r {
        Resource::Path(p) => p.to_string(),
        Resource::AbstractSocket(name) => format!("@{name}"),
        Resource::Inet(e) => std::net::SocketAddr::new(e.ip, e.port).to_string(),
    }
}

fn separation_text(s: &Separation) -> String {
    match s {
        Separation::Alone { exe } => format!("{exe} is kept alone"),
        Separation::Partitions {
            caller_side,
            callee_side,
        } => format!("partitions {caller_side} and {callee_side} are disjoint"),
        Separation::Apart {
            constraint,
            caller_side,
            callee_side,
        } => format!("apart {constraint}: {caller_side} vs {callee_side}"),
    }
}

fn list<T: std::fmt::Display>(items: impl IntoIterator<Item = T>) -> String {
    let v: Vec<String> = items.into_iter().map(|i| i.to_string()).collect();
    if v.is_empty() {
        "-".to_owned()
    } else {
        v.join(", ")
    }
}

/// Left-aligned columns, two spaces apart; the last is not padded.
fn table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 < row.len() {
                let _ = write!(line, "{cell:<w$}  ", w = width[i]);
            } else {
                line.push_str(cell);
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
}

impl PartitionPlan {
    /// The plan for people; JSON (serde) is for programs.
    pub fn render_text(&self) -> String {
        render_text(self)
    }

    /// The name the plan knows `path` by: through the symlinked
    /// directories its used names went through (`/var/run/x` is `/run/x`).
    pub fn resolve(&self, path: &ContainerPath) -> ContainerPath {
        let mut path = path.clone();
        for _ in 0..40 {
            let Some((link, to)) = self
                .dir_links
                .iter()
                .filter(|(link, _)| path.is_under(link))
                .max_by_key(|(link, _)| link.as_str().len())
            else {
                break;
            };
            let rest = &path.as_str()[link.as_str().len()..];
            match ContainerPath::new(&format!("{to}{rest}")) {
                Some(p) => path = p,
                None => break,
            }
        }
        path
    }
}

/// `1 partition`, `2 partitions`.
pub fn counted(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The plan for people: partitions, volumes with their evidence, RPE
/// stubs, network links and warnings.
pub fn render_text(plan: &PartitionPlan) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "policy {}: {}, {}{}, {}, one network namespace\n",
        plan.policy,
        counted(plan.partitions.len(), "partition", "partitions"),
        counted(
            plan.volumes.iter().filter(|v| !v.is_private()).count(),
            "shared volume",
            "shared volumes"
        ),
        match plan.volumes.iter().filter(|v| v.is_private()).count() {
            0 => String::new(),
            n => format!(
                ", {}",
                counted(n, "private state volume", "private state volumes")
            ),
        },
        counted(plan.rpe.len(), "RPE call", "RPE calls")
    );
    let rows: Vec<Vec<String>> = plan
        .partitions
        .iter()
        .map(|(name, p)| {
            vec![
                name.to_string(),
                p.copied.len().to_string(),
                p.private.len().to_string(),
                list(&p.mounts),
                list(p.stubs.iter().map(|(e, at)| format!("{e} ({at})"))),
                list(&p.executables),
            ]
        })
        .collect();
    table(
        &mut out,
        &[
            "PARTITION",
            "COPIED",
            "PRIVATE",
            "MOUNTS",
            "STUBS (RUN IN)",
            "EXECUTABLES",
        ],
        &rows,
    );
    if !plan.volumes.is_empty() {
        out.push('\n');
        let mut rows = Vec::new();
        for v in &plan.volumes {
            for (i, s) in v.shared.iter().enumerate() {
                let how = match &s.mounted_as {
                    MountedAs::Itself => "changed in place".to_owned(),
                    MountedAs::Through { dir } => format!("created/removed, via {dir}"),
                };
                let uses = s
                    .uses
                    .iter()
                    .map(|u| {
                        let access = u.access.iter().map(|&a| access_name(a));
                        format!("{} {} {}", u.partition, u.exe, list(access))
                    })
                    .collect::<Vec<_>>()
                    .join("; ");
                let (mount, parts) = if i == 0 {
                    (v.mount.to_string(), list(&v.partitions))
                } else {
                    (String::new(), String::new())
                };
                rows.push(vec![mount, parts, s.resource.to_string(), how, uses]);
            }
            for (i, st) in v.state.iter().enumerate() {
                let (mount, parts) = if i == 0 && v.shared.is_empty() {
                    (v.mount.to_string(), list(&v.partitions))
                } else {
                    (String::new(), String::new())
                };
                rows.push(vec![
                    mount,
                    parts,
                    st.dir.to_string(),
                    format!("state directory of {}", st.partition),
                    format!("written by {}", list(&st.writers)),
                ]);
            }
        }
        table(
            &mut out,
            &["VOLUME", "PARTITIONS", "SHARED", "BECAUSE", "USED BY"],
            &rows,
        );
    }
    if !plan.rpe.is_empty() {
        out.push('\n');
        let rows: Vec<Vec<String>> = plan
            .rpe
            .iter()
            .map(|e| {
                vec![
                    format!("{} {}", e.caller_partition, e.caller),
                    format!("{} {}", e.callee_partition, e.callee),
                    separation_text(&e.separation),
                ]
            })
            .collect();
        table(&mut out, &["RPE CALLER", "RUNS", "APART BECAUSE"], &rows);
    }
    if !plan.network.links.is_empty() {
        out.push('\n');
        let rows: Vec<Vec<String>> = plan
            .network
            .links
            .iter()
            .map(|l| {
                vec![
                    format!("{} {}", l.client_partition, l.client),
                    resource_name(&l.reached_as),
                    format!(
                        "{} {} ({})",
                        l.server_partition,
                        l.server,
                        resource_name(&l.bound)
                    ),
                ]
            })
            .collect();
        table(
            &mut out,
            &["NETWORK CLIENT", "REACHES", "SERVER (BOUND)"],
            &rows,
        );
    }
    for w in &plan.warnings {
        let _ = match w {
            PlanWarning::RootNotShareable {
                resource,
                partitions,
            } => writeln!(
                out,
                "\nwarning: {resource} is shared by {}, but only / could hold it and / cannot be a volume: move it into a directory",
                list(partitions)
            ),
            PlanWarning::IpcNotShared {
                resource,
                partitions,
            } => writeln!(
                out,
                "\nwarning: {resource} is shared by {} as IPC, which this plan does not set up",
                list(partitions)
            ),
            PlanWarning::StateNotPersisted { dir, partition } => writeln!(
                out,
                "\nwarning: {dir} is a state directory of {partition}, but only / could hold it and / cannot be a volume: its data is lost when the container is re-created"
            ),
        };
    }
    out
}

#[cfg(test)]
mod tests;
