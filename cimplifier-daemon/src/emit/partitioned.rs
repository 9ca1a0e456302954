//! `emit` for a partitioning policy (paper §3.2–3.3): one image per
//! partition, each holding only its executables' files, with the RPE glue:
//!
//! - a stub at the path of every executable that runs in another
//!   partition, routed by `/etc/cimplifier-rpe/stub.toml` to that
//!   partition's server;
//! - the RPE server as the entrypoint of every partition that runs calls
//!   for others, with an allow-list per caller partition; in the partition
//!   that holds the original entrypoint, the server starts it (`--`);
//! - a docker-compose.yml run plan (emit/compose.rs): the shared volumes
//!   of the placement plan, one RPE socket volume per caller/callee pair
//!   (so a partition can reach only the servers it calls, and only its own
//!   socket on each), and one network namespace.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use cimplifier_rpe::config::{PartitionConfig, STUB_CONFIG_DEFAULT, ServerConfig, StubConfig};
use serde::{Deserialize, Serialize};

use super::compose::{COMPOSE_FILE, ComposeFile, ComposeService, ComposeVolume};
use super::image_fs::{EntryKind, ImageFs};
use super::oci::{self, SourceConfig};
use crate::model::{Exe, Model};
use crate::partition::{PartitionName, Policy};
use crate::place::partition::{PartitionContents, PartitionPlan, RpeEdge, plan};
use crate::place::slim::{SlimOptions, plan_for};
use crate::store::Store;
use crate::trace::ContainerPath;

pub const REPORT_FORMAT: &str = "cimplifier-partition-emit-report";
pub const REPORT_VERSION: u32 = 1;

/// Where the server and its configuration go in a partition's image.
pub const SERVER_PATH: &str = "/.cimplifier/rpe-server";
pub const SERVER_CONFIG: &str = "/.cimplifier/rpe-server.toml";
/// Where the RPE socket volumes are mounted.
const RPE_DIR: &str = "/run/cimplifier-rpe";
/// How long a stub waits for a server that is still starting.
const STUB_CONNECT_TIMEOUT_MS: u64 = 30_000;
/// Environment variable naming the directory of the static RPE binaries.
pub const RPE_DIR_ENV: &str = "CIMPLIFIER_RPE_DIR";

/// The static RPE binaries placed into the images.
#[derive(Clone, Debug)]
pub struct RpeBinaries {
    pub stub: PathBuf,
    pub server: PathBuf,
}

impl RpeBinaries {
    /// From $CIMPLIFIER_RPE_DIR, else next to the running daemon, else
    /// /usr/lib/cimplifier.
    pub fn locate() -> Result<Self> {
        let mut dirs: Vec<PathBuf> = std::env::var_os(RPE_DIR_ENV)
            .map(PathBuf::from)
            .into_iter()
            .collect();
        if let Some(dir) = std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(Path::to_path_buf))
        {
            dirs.push(dir);
        }
        dirs.push(PathBuf::from("/usr/lib/cimplifier"));
        for dir in &dirs {
            let bins = Self {
                stub: dir.join("cimplifier-rpe-stub"),
                server: dir.join("cimplifier-rpe-server"),
            };
            if bins.stub.is_file() && bins.server.is_file() {
                return Ok(bins);
            }
        }
        bail!(
            "the static RPE binaries (cimplifier-rpe-stub, cimplifier-rpe-server) are in none of {}; \
             build them as docs/rpe.md says and set {RPE_DIR_ENV} to their directory",
            dirs.iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

/// Image names: `<repository>-<partition>:<tag>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageNaming {
    pub repository: String,
    pub tag: String,
}

impl ImageNaming {
    /// `repo[:tag]`, tag `latest` if none.
    pub fn parse(s: &str) -> Result<Self> {
        let (repository, tag) = match s.rsplit_once(':') {
            Some((r, t)) if !t.contains('/') => (r, t),
            _ => (s, "latest"),
        };
        let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/".contains(c);
        // A registry host may carry a port: host:5000/name.
        let (host, path) = repository.split_once('/').unwrap_or(("", repository));
        let host_ok = host.chars().all(|c| ok(c) || c == ':');
        if path.is_empty() || !path.chars().all(ok) || !host_ok || tag.is_empty() {
            bail!(
                "tag {s:?}: give REPOSITORY[:TAG] in lower case, e.g. myapp/split; each partition's image is then REPOSITORY-<partition>:TAG"
            );
        }
        Ok(Self {
            repository: repository.to_owned(),
            tag: tag.to_owned(),
        })
    }

    pub fn of(&self, partition: &PartitionName) -> String {
        format!("{}-{partition}:{}", self.repository, self.tag)
    }
}

#[derive(Clone, Debug)]
pub struct PartitionEmitOptions {
    pub session: String,
    pub policy: Policy,
    pub images: ImageNaming,
    /// Where docker-compose.yml and the report go.
    pub out_dir: PathBuf,
    pub slim: SlimOptions,
    pub allow_incomplete: bool,
    pub rpe: RpeBinaries,
}

/// What a partition's container runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The original entrypoint; nobody calls into it.
    Entrypoint,
    /// The RPE server, which also starts the original entrypoint.
    EntrypointAndServer,
    /// The RPE server only.
    Server,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EmittedPartition {
    pub name: PartitionName,
    pub image: String,
    pub image_id: String,
    pub role: Role,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub executables: BTreeSet<Exe>,
    pub files: u64,
    /// Size of its one layer.
    pub bytes: u64,
    /// Paths where a stub stands, with the partition that runs them.
    pub stubs: BTreeMap<Exe, PartitionName>,
    /// Caller partition -> what it may run here.
    pub serves: BTreeMap<PartitionName, BTreeSet<Exe>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmittedVolume {
    /// Its name in the run plan.
    pub name: String,
    pub mount: ContainerPath,
    pub partitions: BTreeSet<PartitionName>,
    /// The shared resources that force it, from the plan.
    pub because: Vec<ContainerPath>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RpeVolume {
    pub name: String,
    pub caller: PartitionName,
    pub callee: PartitionName,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PartitionEmitReport {
    pub format: String,
    pub version: u32,
    pub container: String,
    pub source_image: String,
    pub source_ref: String,
    pub source_image_bytes: u64,
    pub complete: bool,
    pub lost_events: u64,
    pub from_first_exec: bool,
    pub partitions: Vec<EmittedPartition>,
    /// Sum of the partitions' layers.
    pub total_bytes: u64,
    /// 100 × (1 − total / source).
    pub reduction_percent: f64,
    pub volumes: Vec<EmittedVolume>,
    pub rpe_volumes: Vec<RpeVolume>,
    /// The partition whose network namespace the others join.
    pub network_owner: PartitionName,
    pub compose_file: PathBuf,
    /// The placement plan, with the evidence for every shared volume.
    pub plan: PartitionPlan,
}

impl PartitionEmitReport {
    /// Where `path` is in the partitioned system, and why.
    pub fn explain(&self, path: &ContainerPath) -> String {
        let access_list = |a: &BTreeSet<crate::model::Access>| {
            a.iter()
                .map(|a| format!("{a:?}").to_lowercase())
                .collect::<Vec<_>>()
                .join(", ")
        };
        if let Some(v) = self
            .plan
            .volumes
            .iter()
            .find(|v| crate::place::slim::under(path, &v.mount))
        {
            let why: Vec<String> = v.shared.iter().map(|s| s.resource.to_string()).collect();
            let parts: Vec<String> = v.partitions.iter().map(|p| p.to_string()).collect();
            return format!(
                "in the volume at {} shared by {}, because of {}",
                v.mount,
                parts.join(", "),
                why.join(", ")
            );
        }
        let mut found = Vec::new();
        for (name, p) in &self.plan.partitions {
            let used = p
                .resources
                .iter()
                .find(|r| r.resource == crate::model::Resource::Path(path.clone()))
                .map(|r| access_list(&r.access))
                .unwrap_or_default();
            if p.private.contains(path) {
                found.push(format!(
                    "private to {name}, which alone changes it ({used})"
                ));
            } else if p.copied.contains(path) {
                found.push(format!("copied read-only into {name} ({used})"));
            } else if p.runtime.contains(path) {
                found.push(format!("provided by the runtime in {name}"));
            } else if let Some(at) = p.stubs.get(&Exe(path.clone())) {
                found.push(format!("an RPE stub in {name}: it runs in {at}"));
            }
        }
        if found.is_empty() {
            "in no partition's plan: no executable used it (the images may still hold it as a parent directory, a link or a library)".to_owned()
        } else {
            found.join("; ")
        }
    }

    /// A summary for people: sizes, volumes and why, RPE edges.
    pub fn render_text(&self) -> String {
        use std::fmt::Write as _;
        let mb = |b: u64| format!("{:.1} MB", b as f64 / 1e6);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{} ({}): {} -> {} in {} partitions ({:.1}% smaller)",
            self.container,
            self.source_ref,
            mb(self.source_image_bytes),
            mb(self.total_bytes),
            self.partitions.len(),
            self.reduction_percent
        );
        for p in &self.partitions {
            let role = match p.role {
                Role::Entrypoint => "original entrypoint",
                Role::EntrypointAndServer => "original entrypoint + RPE server",
                Role::Server => "RPE server",
            };
            let _ = writeln!(
                out,
                "  {:<12} {:>9}  {:>6} files  {}  runs: {role}",
                p.name.to_string(),
                mb(p.bytes),
                p.files,
                p.image
            );
        }
        for v in &self.volumes {
            let because: Vec<String> = self
                .plan
                .volumes
                .iter()
                .filter(|pv| pv.mount == v.mount)
                .flat_map(|pv| &pv.shared)
                .map(|s| {
                    let users: Vec<String> = s
                        .uses
                        .iter()
                        .map(|u| {
                            let access: Vec<String> = u
                                .access
                                .iter()
                                .map(|a| format!("{a:?}").to_lowercase())
                                .collect();
                            format!("{} {} ({})", u.partition, u.exe, access.join(","))
                        })
                        .collect();
                    format!("{}: {}", s.resource, users.join("; "))
                })
                .collect();
            let parts: Vec<String> = v.partitions.iter().map(|p| p.to_string()).collect();
            let _ = writeln!(
                out,
                "  volume {} at {} shared by {}\n    because {}",
                v.name,
                v.mount,
                parts.join(", "),
                because.join("\n    and "),
            );
        }
        for e in &self.plan.rpe {
            let _ = writeln!(
                out,
                "  rpe: {} {} runs {} in {}",
                e.caller_partition, e.caller, e.callee, e.callee_partition
            );
        }
        let _ = writeln!(
            out,
            "  network: one namespace, held by {}\n  run plan: {}",
            self.network_owner,
            self.compose_file.display()
        );
        out
    }
}

/// A name Docker and Compose accept for a volume, from its mount point.
fn volume_name(mount: &ContainerPath, taken: &BTreeSet<String>) -> String {
    let base: String = mount
        .as_str()
        .trim_start_matches('/')
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let mut name = base.clone();
    let mut n = 2;
    while taken.contains(&name) {
        name = format!("{base}-{n}");
        n += 1;
    }
    name
}

fn rpe_socket(side: &str, other: &PartitionName) -> PathBuf {
    PathBuf::from(format!("{RPE_DIR}/{side}-{other}/rpe.sock"))
}

/// The path the image's entrypoint execs: argv[0], looked up on the
/// image's PATH the way the runtime does.
fn entrypoint_path(source: &SourceConfig, fs: &ImageFs) -> Option<ContainerPath> {
    let argv0 = source
        .entrypoint
        .iter()
        .chain(source.cmd.iter())
        .flatten()
        .next()?;
    if argv0.starts_with('/') {
        return ContainerPath::new(argv0);
    }
    let path = source
        .env
        .iter()
        .flatten()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    path.split(':')
        .filter_map(|dir| ContainerPath::new(&format!("{dir}/{argv0}")))
        .find(|p| fs.get(p).is_some())
}

/// The partition that runs the container's entrypoint: the one holding the
/// entrypoint's executable, else the only one holding executables that
/// the runtime itself started.
fn entry_partition(
    model: &Model,
    plan: &PartitionPlan,
    source: &SourceConfig,
    fs: &ImageFs,
) -> Result<PartitionName> {
    let holding = |exe: &Exe| {
        plan.partitions
            .iter()
            .find(|(_, p)| p.executables.contains(exe))
            .map(|(n, _)| n.clone())
    };
    if let Some(found) = entrypoint_path(source, fs).and_then(|p| holding(&Exe(p))) {
        return Ok(found);
    }
    let roots: BTreeSet<PartitionName> = model
        .executables()
        .iter()
        .filter(|e| !e.is_unobserved() && model.callers(e).iter().all(Exe::is_unobserved))
        .filter_map(holding)
        .collect();
    match roots.len() {
        1 => Ok(roots.into_iter().next().expect("one")),
        0 => bail!(
            "no partition holds the entrypoint {:?}: the session never saw it exec'd; observe from the container's start",
            source
                .entrypoint
                .iter()
                .chain(source.cmd.iter())
                .flatten()
                .collect::<Vec<_>>()
        ),
        _ => bail!(
            "cannot tell which partition runs the entrypoint {:?}: processes the runtime started are in {}",
            source
                .entrypoint
                .iter()
                .chain(source.cmd.iter())
                .flatten()
                .collect::<Vec<_>>(),
            roots
                .iter()
                .map(|r| r.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Tar members added to a partition's layer (no end-of-archive marker).
struct Additions {
    builder: tar::Builder<Vec<u8>>,
    /// Directories synthesized so far.
    dirs: BTreeSet<ContainerPath>,
}

impl Additions {
    fn new() -> Self {
        Self {
            builder: tar::Builder::new(Vec::new()),
            dirs: BTreeSet::new(),
        }
    }

    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(size);
        h
    }

    /// Directories above `path` that neither the kept image entries nor
    /// earlier additions provide; `keep` gets those the image has.
    fn parents(
        &mut self,
        path: &ContainerPath,
        fs: &ImageFs,
        keep: &mut BTreeSet<ContainerPath>,
    ) -> Result<()> {
        let mut chain = Vec::new();
        let mut dir = path.parent();
        while dir != ContainerPath::root() {
            chain.push(dir.clone());
            dir = dir.parent();
        }
        for dir in chain.into_iter().rev() {
            match fs.get(&dir).map(|e| &e.kind) {
                Some(EntryKind::Dir) => {
                    keep.insert(dir);
                }
                Some(_) => {
                    bail!("cannot place {path}: {dir} is not a directory in the source image")
                }
                None if self.dirs.insert(dir.clone()) => {
                    let mut h = Self::header(tar::EntryType::Directory, 0o755, 0);
                    self.builder
                        .append_data(&mut h, rel(&dir), std::io::empty())?;
                }
                None => {}
            }
        }
        Ok(())
    }

    fn file(&mut self, path: &ContainerPath, mode: u32, bytes: &[u8]) -> Result<()> {
        let mut h = Self::header(tar::EntryType::Regular, mode, bytes.len() as u64);
        self.builder.append_data(&mut h, rel(path), bytes)?;
        Ok(())
    }

    fn hard_link(&mut self, path: &ContainerPath, target: &ContainerPath) -> Result<()> {
        let mut h = Self::header(tar::EntryType::Link, 0o755, 0);
        self.builder.append_link(&mut h, rel(path), rel(target))?;
        Ok(())
    }

    fn finish(self) -> Result<Vec<u8>> {
        let mut bytes = self.builder.into_inner()?;
        // Drop the end-of-archive marker: the image entries' writer adds it.
        bytes.truncate(bytes.len() - 1024);
        Ok(bytes)
    }
}

/// Where a file named `path` lands in the image: the directories on the
/// way are followed through the image's symlinks (`/bin/sh` is
/// `/usr/bin/sh` with a merged /usr), and those links are kept.
fn through_dir_links(
    path: &ContainerPath,
    fs: &ImageFs,
    keep: &mut BTreeSet<ContainerPath>,
) -> Result<ContainerPath> {
    let name = path.as_str().rsplit('/').next().unwrap_or_default();
    let mut dir = ContainerPath::root();
    for part in path.parent().as_str().split('/').filter(|p| !p.is_empty()) {
        let mut next = dir.join(part);
        let mut hops = 0;
        while let Some(EntryKind::Symlink(target)) = fs.get(&next).map(|e| &e.kind) {
            hops += 1;
            if hops > 40 {
                bail!("cannot place {path}: too many symlinks at {next}");
            }
            keep.insert(next.clone());
            next = next.parent().join(target);
        }
        dir = next;
    }
    Ok(dir.join(name))
}

fn rel(p: &ContainerPath) -> String {
    p.as_str().trim_start_matches('/').to_owned()
}

impl Role {
    /// The entrypoint and command of a partition in this role.
    fn run(&self, source: &SourceConfig) -> (Vec<String>, Vec<String>) {
        let server = || {
            vec![
                SERVER_PATH.to_owned(),
                "--config".to_owned(),
                SERVER_CONFIG.to_owned(),
            ]
        };
        let original_entrypoint = source.entrypoint.clone().unwrap_or_default();
        let original_cmd = source.cmd.clone().unwrap_or_default();
        match self {
            Role::Entrypoint => (original_entrypoint, original_cmd),
            Role::EntrypointAndServer => {
                let mut e = server();
                e.push("--".to_owned());
                e.extend(original_entrypoint);
                (e, original_cmd)
            }
            Role::Server => (server(), Vec::new()),
        }
    }
}

/// The static RPE binaries' bytes.
struct Glue<'a> {
    stub: &'a [u8],
    server: &'a [u8],
}

/// One partition's layer.
struct PartitionLayer {
    tar: Vec<u8>,
    files: u64,
    /// Caller partition -> what its server runs for it.
    serves: BTreeMap<PartitionName, BTreeSet<Exe>>,
}

/// The partition's files, its stubs with their routes, and (when it runs
/// programs for others) the server with one allow-list per caller.
fn partition_layer(
    model: &Model,
    fs: &std::sync::Arc<ImageFs>,
    slim_opts: &SlimOptions,
    name: &PartitionName,
    contents: &PartitionContents,
    rpe: &[RpeEdge],
    glue: &Glue,
) -> Result<PartitionLayer> {
    // Stubs stand where the callees' names lead in the image.
    let mut link_dirs = BTreeSet::new();
    let stub_files: BTreeSet<ContainerPath> = contents
        .stubs
        .keys()
        .map(|e| through_dir_links(&e.0, fs, &mut link_dirs))
        .collect::<Result<_>>()?;
    let replaced: BTreeSet<ContainerPath> = contents
        .stubs
        .keys()
        .map(|e| e.0.clone())
        .chain(stub_files.iter().cloned())
        .collect();
    let slim = plan_for(model, &contents.executables, &replaced, fs, slim_opts);
    let mut keep: BTreeSet<ContainerPath> = slim.keep.into_keys().collect();
    keep.extend(link_dirs);
    let mut add = Additions::new();

    // One stub file and hard links to it.
    let mut first_stub: Option<&ContainerPath> = None;
    for path in &stub_files {
        add.parents(path, fs, &mut keep)?;
        match first_stub {
            None => {
                add.file(path, 0o755, glue.stub)?;
                first_stub = Some(path);
            }
            Some(first) => add.hard_link(path, first)?,
        }
    }
    if !contents.stubs.is_empty() {
        let cfg = StubConfig {
            socket: None,
            routes: contents
                .stubs
                .iter()
                .map(|(exe, callee)| (PathBuf::from(exe.0.as_str()), rpe_socket("to", callee)))
                .collect(),
            connect_timeout_ms: STUB_CONNECT_TIMEOUT_MS,
        };
        let path = ContainerPath::new(STUB_CONFIG_DEFAULT).expect("absolute");
        add.parents(&path, fs, &mut keep)?;
        add.file(&path, 0o644, toml::to_string(&cfg)?.as_bytes())?;
    }

    let mut serves: BTreeMap<PartitionName, BTreeSet<Exe>> = BTreeMap::new();
    for e in rpe.iter().filter(|e| &e.callee_partition == name) {
        serves
            .entry(e.caller_partition.clone())
            .or_default()
            .insert(e.callee.clone());
    }
    if !serves.is_empty() {
        let cfg = ServerConfig {
            partitions: serves
                .iter()
                .map(|(caller, exes)| PartitionConfig {
                    name: caller.to_string(),
                    socket: rpe_socket("from", caller),
                    allow: exes.iter().map(|e| PathBuf::from(e.0.as_str())).collect(),
                    map: BTreeMap::new(),
                })
                .collect(),
        };
        let server = ContainerPath::new(SERVER_PATH).expect("absolute");
        let config = ContainerPath::new(SERVER_CONFIG).expect("absolute");
        add.parents(&server, fs, &mut keep)?;
        add.file(&server, 0o755, glue.server)?;
        add.file(&config, 0o644, toml::to_string(&cfg)?.as_bytes())?;
    }

    let extra = add.finish()?;
    Ok(PartitionLayer {
        tar: fs.write_tar_with(&|p| keep.contains(p) && !replaced.contains(p), &extra),
        files: keep.iter().filter(|p| !replaced.contains(*p)).count() as u64
            + stub_files.len() as u64,
        serves,
    })
}

/// Emits the partitioned system of an observed container.
pub async fn emit_partitioned(
    store: &Store,
    opts: &PartitionEmitOptions,
    progress: &(dyn Fn(&str) + Send + Sync),
) -> Result<PartitionEmitReport> {
    let info = super::slim::closed_session(store, &opts.session, opts.allow_incomplete)?;
    let docker = crate::docker::connect()?;
    let inspect = docker
        .inspect_image(&info.started.image_id)
        .await
        .with_context(|| {
            format!(
                "the observed container's image {} ({}) is gone from the engine",
                info.started.image_ref, info.started.image_id
            )
        })?;
    progress("reading the source image");
    let fs =
        super::slim::source_tree(&docker, &info.started.image_id, &info.started.image_ref).await?;
    progress("partitioning and placing");
    let mut model = Model::with_image_tree(Box::new(fs.clone()));
    store.fold(&info, &mut model, |_| {})?;
    let partitioning = crate::partition::partition(&model, &opts.policy)
        .map_err(|e| anyhow::anyhow!("policy: {e}"))?;
    let plan = plan(&model, &partitioning);
    let source = SourceConfig::from_inspect(&inspect);
    let entry = entry_partition(&model, &plan, &source, &fs)?;
    let stub_bytes = std::fs::read(&opts.rpe.stub)
        .with_context(|| format!("reading the RPE stub {}", opts.rpe.stub.display()))?;
    let server_bytes = std::fs::read(&opts.rpe.server)
        .with_context(|| format!("reading the RPE server {}", opts.rpe.server.display()))?;

    // Volumes: the plan's shared ones, and one per caller/callee pair.
    let mut taken = BTreeSet::new();
    let mut volumes = Vec::new();
    for v in &plan.volumes {
        let name = volume_name(&v.mount, &taken);
        taken.insert(name.clone());
        volumes.push(EmittedVolume {
            name,
            mount: v.mount.clone(),
            partitions: v.partitions.clone(),
            because: v.shared.iter().map(|s| s.resource.clone()).collect(),
        });
    }
    let pairs: BTreeSet<(PartitionName, PartitionName)> = plan
        .rpe
        .iter()
        .map(|e| (e.caller_partition.clone(), e.callee_partition.clone()))
        .collect();
    let rpe_volumes: Vec<RpeVolume> = pairs
        .iter()
        .map(|(caller, callee)| RpeVolume {
            name: format!("rpe-{caller}-to-{callee}"),
            caller: caller.clone(),
            callee: callee.clone(),
        })
        .collect();

    let mut slim_opts = opts.slim.clone();
    slim_opts.env = source.env.clone().unwrap_or_default();
    let glue = Glue {
        stub: &stub_bytes,
        server: &server_bytes,
    };
    let mut partitions = Vec::new();
    for (name, contents) in &plan.partitions {
        progress(&format!("writing partition {name}"));
        let layer = partition_layer(&model, &fs, &slim_opts, name, contents, &plan.rpe, &glue)?;
        let role = match (name == &entry, layer.serves.is_empty()) {
            (true, true) => Role::Entrypoint,
            (true, false) => Role::EntrypointAndServer,
            (false, _) => Role::Server,
        };
        let (entrypoint, cmd) = role.run(&source);
        let config = SourceConfig {
            entrypoint: Some(entrypoint.clone()),
            cmd: (!cmd.is_empty()).then(|| cmd.clone()),
            ..source.clone()
        };
        let labels: BTreeMap<String, String> = [
            ("io.cimplifier.source-image", info.started.image_id.clone()),
            ("io.cimplifier.source-ref", info.started.image_ref.clone()),
            ("io.cimplifier.policy", plan.policy.to_string()),
            ("io.cimplifier.partition", name.to_string()),
            (
                "io.cimplifier.version",
                env!("CARGO_PKG_VERSION").to_owned(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let tag = opts.images.of(name);
        let image = oci::build(layer.tar, &config, &labels, Some(&tag))?;
        progress(&format!("loading {tag} into Docker"));
        oci::load_into_docker(&docker, &image).await?;
        partitions.push(EmittedPartition {
            name: name.clone(),
            image: tag,
            image_id: image.config.digest(),
            role,
            entrypoint,
            cmd,
            executables: contents.executables.clone(),
            files: layer.files,
            bytes: image.layer.bytes.len() as u64,
            stubs: contents.stubs.clone(),
            serves: layer.serves,
        });
    }

    // The network namespace is held by a server (it outlives the others'
    // restarts), or by the entry partition when nothing serves.
    let network_owner = partitions
        .iter()
        .find(|p| p.role == Role::Server)
        .unwrap_or(&partitions[0])
        .name
        .clone();
    let compose = compose_file(
        &opts.images,
        &partitions,
        &volumes,
        &rpe_volumes,
        &network_owner,
        &source,
    );
    std::fs::create_dir_all(&opts.out_dir)
        .with_context(|| format!("creating the output directory {}", opts.out_dir.display()))?;
    let compose_path = opts.out_dir.join(COMPOSE_FILE);
    std::fs::write(&compose_path, compose.to_yaml()?)
        .with_context(|| format!("writing {}", compose_path.display()))?;

    let source_image_bytes = inspect.size.unwrap_or(0).max(0) as u64;
    let total_bytes: u64 = partitions.iter().map(|p| p.bytes).sum();
    let report = PartitionEmitReport {
        format: REPORT_FORMAT.into(),
        version: REPORT_VERSION,
        container: info.started.container_name.clone(),
        source_image: info.started.image_id.clone(),
        source_ref: info.started.image_ref.clone(),
        source_image_bytes,
        complete: info.complete(),
        lost_events: info.loss.lost(),
        from_first_exec: info.started.from_first_exec,
        partitions,
        total_bytes,
        reduction_percent: if source_image_bytes > 0 {
            100.0 * (1.0 - total_bytes as f64 / source_image_bytes as f64)
        } else {
            0.0
        },
        volumes,
        rpe_volumes,
        network_owner,
        compose_file: compose_path,
        plan,
    };
    let report_path = opts.out_dir.join("partition-report.json");
    std::fs::write(&report_path, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("writing {}", report_path.display()))?;
    Ok(report)
}

fn compose_file(
    images: &ImageNaming,
    partitions: &[EmittedPartition],
    volumes: &[EmittedVolume],
    rpe_volumes: &[RpeVolume],
    network_owner: &PartitionName,
    source: &SourceConfig,
) -> ComposeFile {
    let servers: Vec<String> = partitions
        .iter()
        .filter(|p| p.role != Role::Entrypoint && p.role != Role::EntrypointAndServer)
        .map(|p| p.name.to_string())
        .collect();
    let services = partitions
        .iter()
        .map(|p| {
            let mut mounts: Vec<String> = volumes
                .iter()
                .filter(|v| v.partitions.contains(&p.name))
                .map(|v| format!("{}:{}", v.name, v.mount))
                .collect();
            for v in rpe_volumes {
                if v.caller == p.name {
                    mounts.push(format!("{}:{RPE_DIR}/to-{}", v.name, v.callee));
                }
                if v.callee == p.name {
                    mounts.push(format!("{}:{RPE_DIR}/from-{}", v.name, v.caller));
                }
            }
            let owner = &p.name == network_owner;
            // Servers start first, so stubs find their sockets.
            let mut depends_on: Vec<String> = Vec::new();
            if !owner {
                depends_on.push(network_owner.to_string());
                if p.role != Role::Server {
                    depends_on.extend(
                        servers
                            .iter()
                            .filter(|s| **s != network_owner.as_str())
                            .cloned(),
                    );
                }
            }
            let service = ComposeService {
                image: p.image.clone(),
                network_mode: (!owner).then(|| format!("service:{network_owner}")),
                depends_on,
                volumes: mounts,
                expose: if owner {
                    source.exposed_ports.clone().unwrap_or_default()
                } else {
                    Vec::new()
                },
                labels: [("io.cimplifier.partition".to_owned(), p.name.to_string())]
                    .into_iter()
                    .collect(),
            };
            (p.name.to_string(), service)
        })
        .collect();
    let name = images
        .repository
        .rsplit('/')
        .next()
        .unwrap_or("cimplifier")
        .to_owned();
    ComposeFile {
        name,
        services,
        volumes: volumes
            .iter()
            .map(|v| v.name.clone())
            .chain(rpe_volumes.iter().map(|v| v.name.clone()))
            .map(|n| (n, ComposeVolume::default()))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names_and_volume_names() {
        let n = ImageNaming::parse("cimplifier-e2e/wp").unwrap();
        let db: PartitionName = "db".parse().unwrap();
        assert_eq!(n.of(&db), "cimplifier-e2e/wp-db:latest");
        let n = ImageNaming::parse("localhost:5000/wp:v2").unwrap();
        assert_eq!(n.of(&db), "localhost:5000/wp-db:v2");
        assert!(ImageNaming::parse("Bad Name").is_err());
        let mut taken = BTreeSet::new();
        let p = ContainerPath::new("/run/mysqld").unwrap();
        assert_eq!(volume_name(&p, &taken), "run-mysqld");
        taken.insert("run-mysqld".to_owned());
        assert_eq!(volume_name(&p, &taken), "run-mysqld-2");
    }

    #[test]
    fn additions_add_missing_parents_and_keep_existing_ones() {
        let fs = ImageFs::from_tar(crate::emit::image_fs::tests::sample_tar(), "sample").unwrap();
        let mut keep = BTreeSet::new();
        let mut add = Additions::new();
        let stub = ContainerPath::new("/usr/bin/ping").unwrap();
        let other = ContainerPath::new("/usr/sbin/other").unwrap();
        add.parents(&stub, &fs, &mut keep).unwrap();
        add.file(&stub, 0o755, b"stub").unwrap();
        add.parents(&other, &fs, &mut keep).unwrap();
        add.hard_link(&other, &stub).unwrap();
        assert!(keep.contains(&ContainerPath::new("/usr/bin").unwrap()));
        let extra = add.finish().unwrap();
        let layer = fs.write_tar_with(&|p| keep.contains(p), &extra);
        let mut names = Vec::new();
        for e in tar::Archive::new(&layer[..]).entries().unwrap() {
            let e = e.unwrap();
            names.push((
                e.path().unwrap().display().to_string(),
                e.header().entry_type(),
            ));
        }
        assert_eq!(
            names,
            [
                ("usr/".to_owned(), tar::EntryType::Directory),
                ("usr/bin/".to_owned(), tar::EntryType::Directory),
                ("usr/bin/ping".to_owned(), tar::EntryType::Regular),
                ("usr/sbin".to_owned(), tar::EntryType::Directory),
                ("usr/sbin/other".to_owned(), tar::EntryType::Link),
            ]
        );
        let bad = ContainerPath::new("/bin/x/y").unwrap();
        let e = add_err(&fs, &bad);
        assert!(e.contains("not a directory"), "{e}");
    }

    #[test]
    fn stubs_land_where_symlinked_directories_lead() {
        let fs = ImageFs::from_tar(crate::emit::image_fs::tests::sample_tar(), "sample").unwrap();
        let mut keep = BTreeSet::new();
        let via_link = ContainerPath::new("/bin/ping").unwrap();
        let landed = through_dir_links(&via_link, &fs, &mut keep).unwrap();
        assert_eq!(landed.as_str(), "/usr/bin/ping");
        assert!(
            keep.contains(&ContainerPath::new("/bin").unwrap()),
            "{keep:?}"
        );
        let plain = ContainerPath::new("/etc/motd").unwrap();
        assert_eq!(through_dir_links(&plain, &fs, &mut keep).unwrap(), plain);
    }

    fn add_err(fs: &ImageFs, p: &ContainerPath) -> String {
        Additions::new()
            .parents(p, fs, &mut BTreeSet::new())
            .unwrap_err()
            .to_string()
    }
}
