//! `emit` for a partitioning policy (paper §3.2–3.3): one image per
//! partition, each holding only its executables' files, with the RPE glue:
//!
//! - a stub at the path of every executable that runs in another
//!   partition, routed by `/etc/cimplifier-rpe/stub.toml` to that
//!   partition's server;
//! - the RPE server as the entrypoint of every partition that runs calls
//!   for others, with an allow-list per caller partition; in the partition
//!   that holds the original entrypoint, the server starts it (`--`);
//! - a docker-compose.yml run plan (docker/compose.rs): the shared volumes
//!   of the placement plan, one RPE socket volume per caller/callee pair
//!   (so a partition can reach only the servers it calls, and only its own
//!   socket on each), and one network namespace.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use cimplifier_build::glue::{GlueBinary, check_static};
use serde::{Deserialize, Serialize};

use super::EmitError;
use super::oci::{self, SourceConfig};
use super::runconfig::{self, RunReport};
use crate::docker::compose::{
    COMPOSE_FILE, ComposeFile, ComposePort, ComposeService, ComposeVolume,
};
use crate::image::fs::ImageFs;
use crate::image::source::{Admit, SourceSession, TraceDigest, read_session_counting};
use crate::model::{Exe, Model};
use crate::partition::{PartitionName, Policy};
use crate::place::partition::{PartitionPlan, plan};
use crate::place::privileges::{self, Privileges};
use crate::place::seccomp::SeccompMode;
use crate::place::slim::SlimOptions;
use crate::store::Store;
use crate::trace::ContainerPath;

pub mod kubernetes;
mod layer;
mod report;
pub mod seed;

use layer::{Glue, partition_layer};
pub use report::{EmittedPartition, EmittedSeed, EmittedVolume, PartitionEmitReport, RpeVolume};

pub const REPORT_FORMAT: &str = "cimplifier-partition-emit-report";
pub const REPORT_VERSION: u32 = 1;

/// Where the server and its configuration go in a partition's image.
pub const SERVER_PATH: &str = "/.cimplifier/rpe-server";
pub const SERVER_CONFIG: &str = "/.cimplifier/rpe-server.toml";
/// Where the RPE socket volumes are mounted.
const RPE_DIR: &str = "/run/cimplifier-rpe";
/// How long a stub waits for a server that is still starting.
const STUB_CONNECT_TIMEOUT_MS: u64 = 30_000;
/// Read by daemons before the glue was embedded; now only warned about.
const OLD_RPE_DIR_ENV: &str = "CIMPLIFIER_RPE_DIR";

/// The RPE stub and server placed into the images. A value exists only
/// for binaries that passed [`check_static`]: no PT_INTERP, no DT_NEEDED,
/// so they start in a partition that keeps no loader or libraries.
#[derive(Clone, Debug)]
pub struct RpeBinaries {
    stub: Cow<'static, [u8]>,
    server: Cow<'static, [u8]>,
}

static EMBEDDED_STUB: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/cimplifier-rpe-stub"));
static EMBEDDED_SERVER: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/cimplifier-rpe-server"));

impl RpeBinaries {
    /// The ones built with this daemon and embedded in it (build.rs), so
    /// there is nothing to install or find.
    pub fn embedded() -> Result<Self> {
        if let Some(dir) = std::env::var_os(OLD_RPE_DIR_ENV) {
            tracing::warn!(
                "{OLD_RPE_DIR_ENV}={} is ignored: the static RPE binaries are embedded in cimplifierd",
                Path::new(&dir).display()
            );
        }
        Self::new(
            "embedded in cimplifierd",
            Cow::Borrowed(EMBEDDED_STUB),
            Cow::Borrowed(EMBEDDED_SERVER),
        )
    }

    /// Checks both; `origin` says where they came from, for the error.
    pub fn new(origin: &str, stub: Cow<'static, [u8]>, server: Cow<'static, [u8]>) -> Result<Self> {
        for (bin, bytes) in [(GlueBinary::Stub, &stub), (GlueBinary::Server, &server)] {
            check_static(bytes).map_err(|e| {
                anyhow::anyhow!("refusing the RPE glue binary {bin} ({origin}): {e}")
            })?;
        }
        Ok(Self { stub, server })
    }

    pub fn stub(&self) -> &[u8] {
        &self.stub
    }

    pub fn server(&self) -> &[u8] {
        &self.server
    }
}

#[cfg(test)]
mod glue_tests {
    use super::*;

    #[test]
    fn the_embedded_glue_is_static_and_a_dynamic_binary_is_refused_by_name() {
        let embedded = RpeBinaries::embedded().expect("the embedded glue passes the check");
        for bytes in [embedded.stub(), embedded.server()] {
            let elf = goblin::elf::Elf::parse(bytes).unwrap();
            assert_eq!(elf.interpreter, None);
            assert!(elf.libraries.is_empty(), "{:?}", elf.libraries);
        }

        // What a plain `cargo build` leaves next to cimplifierd looks like this.
        let dynamic = std::fs::read("/bin/true").unwrap();
        let err = RpeBinaries::new(
            "/bin/true",
            Cow::Owned(embedded.stub().to_vec()),
            Cow::Owned(dynamic),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("cimplifier-rpe-server")
                && err.contains("/bin/true")
                && err.contains("PT_INTERP")
                && err.contains("libc.so.6"),
            "{err}"
        );
    }
}

/// Image names: `<repository>-<partition>:<tag>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageNaming {
    pub repository: String,
    pub tag: String,
}

impl ImageNaming {
    /// `repo[:tag]`, tag `latest` if none, by Docker's reference grammar.
    pub fn parse(s: &str) -> Result<Self> {
        let tag: crate::docker::tag::ImageTag = s.parse().map_err(|e| {
            anyhow::anyhow!("{e}; each partition's image is then REPOSITORY-<partition>:TAG")
        })?;
        Ok(Self {
            repository: tag.repository().to_owned(),
            tag: tag.tag().to_owned(),
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
    pub slim: SlimOptions,
    pub allow_incomplete: bool,
    pub rpe: RpeBinaries,
    /// Whether tags naming images cimplifier did not make may be moved.
    pub retag: oci::Retag,
    /// Also write the Kubernetes run plan (kubernetes.rs).
    pub kubernetes: bool,
    /// Also push every image, named after this reference as the tags are
    /// after the tag (`emit --push`).
    pub push: Option<super::push::PushTarget>,
    pub seccomp: SeccompMode,
    /// The caller's credentials for the source image's registry, should
    /// the engine have to pull it.
    pub source_auth: super::push::Credentials,
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

/// A name Docker and Compose accept for a volume, from its mount point;
/// a volume private to one partition is named after it too.
fn volume_name(
    mount: &ContainerPath,
    private_to: Option<&PartitionName>,
    taken: &BTreeSet<String>,
) -> String {
    let path = mount.as_str().trim_start_matches('/');
    let base: String = match private_to {
        Some(p) => format!("{p}-{path}"),
        None => path.to_owned(),
    }
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
pub(crate) fn entrypoint_path(source: &SourceConfig, fs: &ImageFs) -> Option<ContainerPath> {
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
) -> Result<PartitionName, EmitError> {
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
        0 => Err(EmitError::Session(format!(
            "no partition holds the entrypoint {:?}: the session never saw it exec'd; observe from the container's start",
            source
                .entrypoint
                .iter()
                .chain(source.cmd.iter())
                .flatten()
                .collect::<Vec<_>>()
        ))),
        _ => Err(EmitError::Policy(format!(
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
        ))),
    }
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

/// The user a partition's container runs as. The original entrypoint runs
/// as the container did; an RPE server runs as root, so that it can bind
/// its sockets in the volumes and start each callee with its caller's
/// user and groups (docs/rpe.md), which is how the callee ran before.
fn user_of(
    role: &Role,
    name: &PartitionName,
    source: &SourceConfig,
) -> Result<Option<String>, EmitError> {
    let root = |u: &str| matches!(u.split(':').next(), Some("" | "0" | "root"));
    match (role, &source.user) {
        (Role::Entrypoint, user) => Ok(user.clone()),
        (Role::Server, _) => Ok(None),
        (Role::EntrypointAndServer, Some(user)) if !root(user) => Err(EmitError::Policy(format!(
            "partition {name} runs the original entrypoint, which ran as user {user:?}, and \
             also serves other partitions; its RPE server must run as root and would start the \
             entrypoint as root too. Give the entrypoint's executable a partition that serves \
             no other (a policy `apart` rule), or run the container as root"
        ))),
        (Role::EntrypointAndServer, user) => Ok(user.clone()),
    }
}

/// Emits the partitioned system of an observed container.
pub async fn emit_partitioned(
    store: &Arc<Store>,
    opts: &PartitionEmitOptions,
    progress: &(dyn Fn(&str) + Send + Sync),
    bytes: &(dyn Fn(&str, u64, u64) + Send + Sync),
) -> Result<EmittedPlan, EmitError> {
    progress("reading the source image");
    let SourceSession {
        record: info,
        inspect,
        tree: fs,
        model,
        ..
    } = read_session_counting(
        store,
        &opts.session,
        Admit::Closed {
            allow_incomplete: opts.allow_incomplete,
        },
        TraceDigest::Skip,
        &opts.source_auth,
        &|done, total| bytes("reading the source image", done, total),
    )
    .await?;
    let destination = oci::Destination::of(&info).await?;
    progress("partitioning and placing");
    let partitioning = crate::partition::partition(&model, &opts.policy)?;
    if partitioning
        .partitions
        .keys()
        .any(|p| p.as_str() == seed::SEED_SERVICE)
    {
        return Err(EmitError::Policy(format!(
            "the partition name {} is the run plan's seed service; rename that partition",
            seed::SEED_SERVICE
        )));
    }
    let plan = plan(&model, &partitioning, &fs);
    if let Some(stubbed) = plan.stubbed_interpreters(&fs).first() {
        return Err(EmitError::Policy(stubbed.to_string()));
    }
    // The image's configuration with the observed container's settings on
    // top: the entry partition runs the command the container ran.
    let (source, run) = runconfig::carry_for(&SourceConfig::from_inspect(&inspect), &info);
    let warnings = super::slim::check_options(&opts.slim, &fs, &source, &info.started.image_ref)?;
    let entry = entry_partition(&model, &plan, &source, &fs)?;

    // Volumes: the plan's shared and state ones, seeded from the source
    // image; and one per caller/callee pair.
    let mut taken = BTreeSet::new();
    let mut volumes = Vec::new();
    for v in &plan.volumes {
        let private_to = v
            .is_private()
            .then(|| v.partitions.first().cloned())
            .flatten();
        let name = volume_name(&v.mount, private_to.as_ref(), &taken);
        taken.insert(name.clone());
        volumes.push(EmittedVolume {
            name,
            mount: v.mount.clone(),
            partitions: v.partitions.clone(),
            because: v.shared.iter().map(|s| s.resource.clone()).collect(),
            private_to,
            state_dirs: v.state.iter().map(|s| s.dir.clone()).collect(),
            seed: Default::default(),
        });
    }
    // `--push REF`: each image to REF's repository with `-<partition>`,
    // as the tags are named after the tag.
    let push_naming = match &opts.push {
        Some(target) => Some(
            ImageNaming::parse(&target.reference.whole())
                .map_err(|e| EmitError::Options(format!("push: {e:#}")))?,
        ),
        None => None,
    };
    let mut pushed: BTreeMap<String, super::push::Pushed> = BTreeMap::new();
    let push_as = async |pushed: &mut BTreeMap<String, super::push::Pushed>,
                         service: &str,
                         name: &PartitionName,
                         image: &oci::OciImage|
           -> Result<(), EmitError> {
        let (Some(target), Some(naming)) = (&opts.push, &push_naming) else {
            return Ok(());
        };
        let target = target.renamed(&naming.of(name))?;
        progress(&format!("pushing {}", target.reference));
        pushed.insert(service.to_owned(), super::push::push(image, &target).await?);
        Ok(())
    };
    let seed_image = if volumes.is_empty() {
        None
    } else {
        progress("writing the volumes' seed image");
        let pairs: Vec<(String, &crate::place::partition::SharedVolume)> = volumes
            .iter()
            .map(|v| v.name.clone())
            .zip(&plan.volumes)
            .collect();
        let (layer, stats) = seed::seed_layer(&fs, &pairs)?;
        for (v, stat) in volumes.iter_mut().zip(stats) {
            v.seed = stat;
        }
        // Nothing of the source's configuration: the seed runs as root and
        // only has to exit 0.
        let config = SourceConfig {
            entrypoint: Some(vec![seed::SEED_PROGRAM.to_owned()]),
            created: source.created.clone(),
            ..SourceConfig::default()
        };
        let labels: BTreeMap<String, String> = [
            ("io.cimplifier.source-image", info.started.image_id.clone()),
            ("io.cimplifier.role", "seed".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let seed_name: PartitionName = seed::SEED_SERVICE.parse().expect("a valid name");
        let tag = opts.images.of(&seed_name);
        let image = oci::build(layer, &config, &labels, Some(&tag))?;
        progress(&format!("loading {tag} into {destination}"));
        destination.load(&image, opts.retag).await?;
        push_as(&mut pushed, seed::SEED_SERVICE, &seed_name, &image).await?;
        Some(EmittedSeed {
            service: seed::SEED_SERVICE.to_owned(),
            image: tag,
            image_id: image.config.digest(),
            bytes: image.layer.bytes.len() as u64,
        })
    };
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
        stub: opts.rpe.stub(),
        server: opts.rpe.server(),
    };
    let mut partitions = Vec::new();
    let mut not_run = BTreeMap::new();
    for (name, contents) in &plan.partitions {
        if name != &entry && !plan.rpe.iter().any(|e| &e.callee_partition == name) {
            // Its server would serve nobody (and refuse to start): its
            // executables ran only inside other partitions, as a script's
            // #! interpreter runs in the script's partition.
            not_run.insert(name.clone(), contents.executables.clone());
            continue;
        }
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
            user: user_of(&role, name, &source)?,
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
        let plan_volumes: BTreeSet<ContainerPath> = plan
            .volumes
            .iter()
            .filter(|v| v.partitions.contains(name))
            .map(|v| v.mount.clone())
            .collect();
        let privileges = privileges::privileges(
            &model,
            &contents.executables,
            &privileges::Context {
                fs: &fs,
                user: config.user.as_deref().unwrap_or(""),
                plan_volumes: &plan_volumes,
                anonymous_volumes: false,
                rpe_server: !layer.serves.is_empty(),
                rpe_stub: !contents.stubs.is_empty(),
                seccomp: opts.seccomp,
            },
        );
        let tag = opts.images.of(name);
        let image = oci::build(layer.tar, &config, &labels, Some(&tag))?;
        progress(&format!("loading {tag} into {destination}"));
        destination.load(&image, opts.retag).await?;
        push_as(&mut pushed, name.as_str(), name, &image).await?;
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
            listed_directories: layer.listed_dirs,
            privileges,
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
    let compose = ComposeFile {
        // Where the images are: `up` starts the plan in that engine.
        containerd_namespace: match &destination {
            oci::Destination::Containerd { namespace } => Some(namespace.clone()),
            oci::Destination::Docker(..) => None,
        },
        ..compose_file(
            &opts.images,
            &partitions,
            RunPlanVolumes {
                volumes: &volumes,
                rpe_volumes: &rpe_volumes,
                seed: seed_image.as_ref(),
            },
            &network_owner,
            &source,
            &run,
        )
    }
    .with_plan_id()?;
    let compose_yaml = compose.to_yaml()?;
    let mut warnings = warnings;
    let kubernetes_yaml = if opts.kubernetes {
        // From the Compose plan itself, so the two cannot disagree.
        // A pushed image by its digest: a later push to the tag cannot mix in.
        let pinned: BTreeMap<String, String> = pushed
            .iter()
            .map(|(service, p)| (service.clone(), p.pinned.clone()))
            .collect();
        let (deployment, k8s_warnings) = kubernetes::deployment(&compose, &pinned)
            .map_err(|e| EmitError::Policy(format!("the Kubernetes run plan: {e:#}")))?;
        warnings.extend(k8s_warnings);
        Some(deployment.to_yaml()?)
    } else {
        None
    };

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
        not_run,
        total_bytes,
        reduction_percent: if source_image_bytes > 0 {
            100.0 * (1.0 - total_bytes as f64 / source_image_bytes as f64)
        } else {
            0.0
        },
        volumes,
        seed: seed_image,
        rpe_volumes,
        network_owner,
        // The client writes the plan into its directory and says where.
        compose_file: PathBuf::from(COMPOSE_FILE),
        run,
        plan,
        warnings,
        pushed,
    };
    let json = serde_json::to_vec_pretty(&report).context("serializing the partition report")?;
    let mut files = vec![
        (COMPOSE_FILE.to_owned(), compose_yaml.into_bytes()),
        (PARTITION_REPORT_FILE.to_owned(), json),
    ];
    if let Some(yaml) = kubernetes_yaml {
        files.push((kubernetes::KUBERNETES_FILE.to_owned(), yaml.into_bytes()));
    }
    for p in &report.partitions {
        if let Some(profile) = p.privileges.seccomp.profile_json() {
            files.push((seccomp_file(&p.name), profile.into_bytes()));
        }
    }
    Ok(EmittedPlan { report, files })
}

/// The label naming, by tag, the image a plan's service runs by id.
pub use crate::docker::compose::IMAGE_TAG_LABEL;

/// The partition report's file name beside the run plan.
pub const PARTITION_REPORT_FILE: &str = "partition-report.json";

/// What a partitioned emit gives back: the report, and the run plan's
/// files (name, content) for the client to write into its directory.
pub struct EmittedPlan {
    pub report: PartitionEmitReport,
    pub files: Vec<(String, Vec<u8>)>,
}

/// The volumes a run plan declares: the plan's shared and state volumes,
/// the RPE socket volumes, and the seed that fills the former.
struct RunPlanVolumes<'a> {
    volumes: &'a [EmittedVolume],
    rpe_volumes: &'a [RpeVolume],
    seed: Option<&'a EmittedSeed>,
}

/// The seccomp profile's file beside the run plan, for `partition`.
pub fn seccomp_file(partition: &PartitionName) -> String {
    format!("seccomp-{partition}.json")
}

/// A service with the privilege settings of `p` (docs/privileges.md); the
/// rest default. Its seccomp profile is a file beside the run plan.
fn hardened(p: &Privileges, partition: &PartitionName) -> ComposeService {
    ComposeService {
        cap_drop: vec!["ALL".to_owned()],
        cap_add: p.capabilities.keys().map(|c| c.name().to_owned()).collect(),
        security_opt: p
            .no_new_privileges
            .then(|| "no-new-privileges:true".to_owned())
            .into_iter()
            .chain(
                p.seccomp
                    .applies()
                    .then(|| format!("seccomp={}", seccomp_file(partition))),
            )
            .collect(),
        read_only: p.root.read_only,
        tmpfs: if p.root.read_only {
            p.root.tmpfs.iter().map(|t| t.spec()).collect()
        } else {
            Vec::new()
        },
        ..ComposeService::default()
    }
}

fn compose_file(
    images: &ImageNaming,
    partitions: &[EmittedPartition],
    all_volumes: RunPlanVolumes<'_>,
    network_owner: &PartitionName,
    source: &SourceConfig,
    run: &RunReport,
) -> ComposeFile {
    let RunPlanVolumes {
        volumes,
        rpe_volumes,
        seed,
    } = all_volumes;
    // Ports are published by the container that holds the network
    // namespace; `-P` publishes every exposed port.
    let mut ports: Vec<ComposePort> = run
        .runtime
        .published_ports
        .iter()
        .filter_map(ComposePort::from_published)
        .collect();
    if run.runtime.publish_all_ports {
        for exposed in source.exposed_ports.iter().flatten() {
            let p = crate::docker::run::PublishedPort {
                container_port: exposed.clone(),
                host_ip: String::new(),
                host_port: String::new(),
            };
            if let Some(p) = ComposePort::from_published(&p)
                && !ports
                    .iter()
                    .any(|q| q.container_port() == p.container_port())
            {
                ports.push(p);
            }
        }
    }
    let servers: Vec<String> = partitions
        .iter()
        .filter(|p| p.role == Role::Server)
        .map(|p| p.name.to_string())
        .collect();
    let services = partitions
        .iter()
        .map(|p| {
            // nocopy: a volume starts with what the seed service put there,
            // never with this image's files (see seed.rs).
            let mut mounts: Vec<String> = volumes
                .iter()
                .filter(|v| v.partitions.contains(&p.name))
                .map(|v| format!("{}:{}:nocopy", v.name, v.mount))
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
            let mut depends_on: Vec<String> = seed.iter().map(|s| s.service.clone()).collect();
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
            // By id, not tag: a later emit to the same tag cannot mix its
            // partitions with this plan's.
            let service = ComposeService {
                image: p.image_id.clone(),
                network_mode: (!owner).then(|| format!("service:{network_owner}")),
                depends_on,
                volumes: mounts,
                expose: if owner {
                    source.exposed_ports.clone().unwrap_or_default()
                } else {
                    Vec::new()
                },
                ports: if owner { ports.clone() } else { Vec::new() },
                // The terminal and stdin are the original entrypoint's.
                tty: p.role != Role::Server && run.runtime.tty,
                stdin_open: p.role != Role::Server && run.runtime.stdin_open,
                init: p.role != Role::Server && run.runtime.init,
                labels: [
                    ("io.cimplifier.partition".to_owned(), p.name.to_string()),
                    (IMAGE_TAG_LABEL.to_owned(), p.image.clone()),
                ]
                .into_iter()
                .collect(),
                ..hardened(&p.privileges, &p.name)
            };
            (p.name.to_string(), service)
        })
        .chain(seed.map(|s| {
            let service = ComposeService {
                image: s.image_id.clone(),
                network_mode: None,
                depends_on: Vec::new(),
                volumes: volumes
                    .iter()
                    .map(|v| format!("{}:{}", v.name, seed::staging_dir(&v.name)))
                    .collect(),
                expose: Vec::new(),
                ports: Vec::new(),
                tty: false,
                stdin_open: false,
                init: false,
                labels: [
                    ("io.cimplifier.role".to_owned(), "seed".to_owned()),
                    (IMAGE_TAG_LABEL.to_owned(), s.image.clone()),
                ]
                .into_iter()
                .collect(),
                ..Default::default()
            };
            (s.service.clone(), service)
        }))
        .collect();
    let name = images
        .repository
        .rsplit('/')
        .next()
        .unwrap_or("cimplifier")
        .to_owned();
    ComposeFile {
        name,
        plan_id: String::new(),
        containerd_namespace: None,
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
    use crate::docker::run::{PublishedPort, RunSettings};

    fn partition(name: &str, role: Role) -> EmittedPartition {
        EmittedPartition {
            name: name.parse().unwrap(),
            image: format!("t-{name}:latest"),
            image_id: format!("sha256:{name}"),
            role,
            entrypoint: vec![],
            cmd: vec![],
            executables: BTreeSet::new(),
            files: 0,
            bytes: 0,
            stubs: BTreeMap::new(),
            serves: BTreeMap::new(),
            listed_directories: vec![],
            privileges: Default::default(),
        }
    }

    #[test]
    fn the_run_plan_publishes_the_containers_ports_on_the_network_owner() {
        let image = SourceConfig {
            cmd: Some(vec!["/bin/bash".into()]),
            exposed_ports: Some(vec!["80/tcp".into()]),
            ..Default::default()
        };
        let mut run = RunSettings {
            cmd: Some(vec!["sh".into(), "-c".into(), "serve".into()]),
            exposed_ports: vec!["80/tcp".into()],
            ..Default::default()
        };
        run.runtime.published_ports = vec![PublishedPort {
            container_port: "80/tcp".into(),
            host_ip: "127.0.0.1".into(),
            host_port: "8080".into(),
        }];
        run.runtime.stdin_open = true;
        let (source, report) = runconfig::carry(&image, Some(&run));
        let parts = [
            partition("sh", Role::Entrypoint),
            partition("cat", Role::Server),
        ];
        let owner: PartitionName = "cat".parse().unwrap();
        let images = ImageNaming::parse("t").unwrap();
        let no_volumes = RunPlanVolumes {
            volumes: &[],
            rpe_volumes: &[],
            seed: None,
        };
        let plan = compose_file(&images, &parts, no_volumes, &owner, &source, &report);
        let cat = &plan.services["cat"];
        assert_eq!(cat.ports.len(), 1);
        assert_eq!(cat.ports[0].published.as_deref(), Some("8080"));
        assert_eq!(cat.ports[0].host_ip.as_deref(), Some("127.0.0.1"));
        assert!(!cat.stdin_open);
        let sh = &plan.services["sh"];
        assert!(sh.ports.is_empty() && sh.stdin_open);
        // By id, so a later emit to the same tags cannot mix into it.
        assert_eq!(sh.image, "sha256:sh");
        assert_eq!(sh.labels[IMAGE_TAG_LABEL], "t-sh:latest");
        let yaml = plan.to_yaml().unwrap();
        let back: ComposeFile = serde_norway::from_str(&yaml).unwrap();
        assert_eq!(back, plan);
    }

    #[test]
    fn servers_run_as_root_and_the_entrypoint_as_the_container_ran() {
        let source = SourceConfig {
            user: Some("65534".into()),
            ..Default::default()
        };
        let name: PartitionName = "p".parse().unwrap();
        assert_eq!(
            user_of(&Role::Entrypoint, &name, &source)
                .unwrap()
                .as_deref(),
            Some("65534")
        );
        assert_eq!(user_of(&Role::Server, &name, &source).unwrap(), None);
        let e = user_of(&Role::EntrypointAndServer, &name, &source)
            .unwrap_err()
            .to_string();
        assert!(e.contains("partition p") && e.contains("apart"), "{e}");
        let root = SourceConfig {
            user: Some("root:root".into()),
            ..Default::default()
        };
        assert!(user_of(&Role::EntrypointAndServer, &name, &root).is_ok());
    }

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
        assert_eq!(volume_name(&p, None, &taken), "run-mysqld");
        taken.insert("run-mysqld".to_owned());
        assert_eq!(volume_name(&p, None, &taken), "run-mysqld-2");
        let lib = ContainerPath::new("/var/lib/mysql").unwrap();
        assert_eq!(volume_name(&lib, Some(&db), &taken), "db-var-lib-mysql");
    }
}
