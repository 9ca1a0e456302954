//! The run plan of a partitioned system: a docker-compose.yml, and `up` and
//! `down`, which start and stop exactly what it describes through the
//! Docker API (so Compose itself is optional).
//!
//! Only the subset of the Compose format that emit writes is read back:
//! `name`, and per service `image`, `network_mode`, `depends_on` (a list,
//! or a map whose conditions are `service_started` and, for the seed
//! service, `service_completed_successfully`), `volumes` (short syntax,
//! named volumes, optionally `:nocopy`), `expose`, `ports` (long syntax),
//! `tty`, `stdin_open`, `init` and `labels`. Anything else is refused by
//! name rather than silently ignored.
//!
//! The seed service (`cimplifier-seed`, see emit/partitioned/seed.rs) fills
//! the volumes: `up` runs it first, with only the volumes it has just
//! created, and waits for it to succeed; volumes that exist already keep
//! their data.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use bollard::models::{
    ContainerCreateBody, ContainerStateStatusEnum, HostConfig, Mount, MountType,
    MountVolumeOptions, PortBinding, VolumeCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptions, ListContainersOptions, RemoveContainerOptions, RemoveVolumeOptions,
    StopContainerOptions,
};
use serde::{Deserialize, Serialize};

/// The one-shot service that fills the volumes before the others start
/// (written by emit, see emit/partitioned/seed.rs).
pub const SEED_SERVICE: &str = "cimplifier-seed";
/// Where the seed image holds each volume's content, and the seed service
/// mounts that volume (emit/partitioned/seed.rs).
pub const SEED_DIR: &str = "/.cimplifier/seed";
/// The seed image's program that copies the staged content into empty
/// volumes (Kubernetes' init container, containerd's seed).
pub const SEED_COPY_PROGRAM: &str = "/.cimplifier/seed-copy";
/// Where that copy finds each volume to fill.
pub const FILL_DIR: &str = "/.cimplifier/fill";
/// The label naming, by tag, the image a plan's service runs by id.
pub const IMAGE_TAG_LABEL: &str = "io.cimplifier.image";

/// File name of the run plan in emit's output directory.
pub const COMPOSE_FILE: &str = "docker-compose.yml";
/// Labels Compose itself uses, so `docker compose ps` and `down` see
/// containers `up` started and the other way round.
pub(crate) const PROJECT_LABEL: &str = "com.docker.compose.project";
pub(crate) const SERVICE_LABEL: &str = "com.docker.compose.service";
pub(crate) const VOLUME_LABEL: &str = "com.docker.compose.volume";
/// The label holding [`ComposeFile::plan_id`].
pub(crate) const PLAN_LABEL: &str = "io.cimplifier.plan";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComposeFile {
    /// The project name: prefix of container and volume names.
    pub name: String,
    /// This plan's id, a digest of what it runs: every container and volume
    /// `up` makes carries it, and `down` removes only what carries it, never
    /// a same-named project's. Empty in plans written before it existed.
    #[serde(
        rename = "x-cimplifier-plan",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub plan_id: String,
    /// The containerd namespace whose content store holds the images
    /// (emit of a containerd session): `up`, `down` and `verify --plan`
    /// start it there (engine/containerd/plan.rs). None: Docker.
    #[serde(
        rename = "x-cimplifier-containerd-namespace",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub containerd_namespace: Option<String>,
    pub services: BTreeMap<String, ComposeService>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub volumes: BTreeMap<String, ComposeVolume>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComposeService {
    pub image: String,
    /// `service:<name>`: join that service's network namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_mode: Option<String>,
    /// Written as a map: each service must have started, the seed service
    /// must have completed successfully.
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "depends_on")]
    pub depends_on: Vec<String>,
    /// `<volume>:<mount point>[:nocopy]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose: Vec<String>,
    /// Published on the host, as the observed container was (`-p`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ComposePort>,
    /// As the observed container ran: a terminal (`-t`), stdin kept open
    /// (`-i`), Docker's init as PID 1 (`--init`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tty: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stdin_open: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub init: bool,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Least privilege (docs/privileges.md): `[ALL]`, then what evidence
    /// grants back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_drop: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_add: Vec<String>,
    /// `no-new-privileges:true`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_opt: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
    /// `<dir>[:<options>]`, mounted fresh at every start.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tmpfs: Vec<String>,
}

/// A published port, in Compose's long syntax.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComposePort {
    /// The container's port.
    pub target: u16,
    /// The host port; none for one the engine picks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published: Option<String>,
    /// The host address; none for all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<String>,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
}

impl ComposePort {
    /// From what the observed container published; None for a port name
    /// Docker would not have given (not `PORT/PROTO`).
    pub fn from_published(p: &crate::docker::run::PublishedPort) -> Option<Self> {
        let (port, protocol) = p.port_and_protocol();
        Some(Self {
            target: port.parse().ok()?,
            published: Some(p.host_port.clone()).filter(|s| !s.is_empty()),
            host_ip: Some(p.host_ip.clone()).filter(|s| !s.is_empty()),
            protocol: protocol.to_owned(),
        })
    }

    /// Docker's name of the container side: `80/tcp`.
    pub fn container_port(&self) -> String {
        format!("{}/{}", self.target, self.protocol)
    }

    /// `up --publish`: `[HOST_IP:]HOST_PORT:CONTAINER_PORT[/PROTOCOL]`, as
    /// `docker run -p` takes it (an IPv6 host address in brackets); an
    /// empty HOST_PORT lets the engine pick one.
    pub fn parse_publish(spec: &str) -> Result<Self> {
        let bad = |why: &str| {
            anyhow::anyhow!(
                "--publish {}: {why}; give [HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|udp|sctp], \
                 e.g. 8080:80 or 127.0.0.1:8080:80",
                crate::cli::quote_capped(spec, 80)
            )
        };
        let (rest, protocol) = match spec.rsplit_once('/') {
            Some((r, p)) if ["tcp", "udp", "sctp"].contains(&p) => (r, p),
            Some(_) => return Err(bad("the protocol is tcp, udp or sctp")),
            None => (spec, "tcp"),
        };
        let (host, target) = rest
            .rsplit_once(':')
            .ok_or_else(|| bad("no HOST_PORT:CONTAINER_PORT"))?;
        let target: u16 = target
            .parse()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| bad("the container port is a number from 1 to 65535"))?;
        let (host_ip, host_port) = match host.rsplit_once(':') {
            Some((ip, port)) => {
                let ip = ip.trim_start_matches('[').trim_end_matches(']');
                ip.parse::<std::net::IpAddr>()
                    .map_err(|_| bad("the host address is not an IP address"))?;
                (Some(ip.to_owned()), port)
            }
            None => (None, host),
        };
        if !host_port.is_empty() && host_port.parse::<u16>().ok().filter(|p| *p > 0).is_none() {
            return Err(bad("the host port is a number from 1 to 65535"));
        }
        Ok(Self {
            target,
            published: Some(host_port.to_owned()).filter(|p| !p.is_empty()),
            host_ip,
            protocol: protocol.to_owned(),
        })
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComposeVolume {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl ComposeFile {
    /// The plan with its id set: the first 16 hex digits of the SHA-256 of
    /// the plan without one, so the same plan always has the same id.
    pub fn with_plan_id(mut self) -> Result<Self> {
        use sha2::Digest;
        self.plan_id.clear();
        let digest = sha2::Sha256::digest(self.to_yaml()?.as_bytes());
        self.plan_id = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        Ok(self)
    }

    /// The label filter that finds what `up` made of this plan: its id, or
    /// for a plan written before ids, its project name.
    fn label_filter(&self) -> String {
        if self.plan_id.is_empty() {
            format!("{PROJECT_LABEL}={}", self.name)
        } else {
            format!("{PLAN_LABEL}={}", self.plan_id)
        }
    }

    /// The labels every container and volume of the plan carries.
    pub(crate) fn own_labels(&self, labels: &mut HashMap<String, String>) {
        labels.insert(PROJECT_LABEL.into(), self.name.clone());
        if !self.plan_id.is_empty() {
            labels.insert(PLAN_LABEL.into(), self.plan_id.clone());
        }
    }

    pub fn to_yaml(&self) -> Result<String> {
        Ok(serde_norway::to_string(self)?)
    }

    /// Reads a run plan: the file itself, or the directory emit wrote it to.
    pub fn load(path: &Path) -> Result<(PathBuf, Self)> {
        let file = if path.is_dir() {
            path.join(COMPOSE_FILE)
        } else {
            path.to_path_buf()
        };
        let text = std::fs::read_to_string(&file).with_context(|| {
            format!(
                "cannot read the run plan {}; give the directory `cimplifierctl emit --policy` wrote, or its {COMPOSE_FILE}",
                file.display()
            )
        })?;
        let plan = Self::parse(&text, &file)?;
        Ok((file, plan))
    }

    /// Replaces each `seccomp=FILE` security option (a path, relative to
    /// `dir`, as Compose takes it) with the profile's content, which is
    /// what the engine's API takes.
    pub fn inline_seccomp_profiles(&mut self, dir: &Path) -> Result<()> {
        self.seccomp_profiles(dir, ProfileAs::Content)
    }

    /// Makes the plan what the engine's API takes: Docker's takes each
    /// seccomp profile inline; Podman's takes a path (made absolute), and
    /// tmpfs options without root's ids (`output::tmpfs_options`).
    pub fn for_engine(&mut self, layout: super::CgroupLayout, dir: &Path) -> Result<()> {
        if layout == super::CgroupLayout::Docker {
            return self.seccomp_profiles(dir, ProfileAs::Content);
        }
        self.seccomp_profiles(dir, ProfileAs::Path)?;
        for (name, s) in &mut self.services {
            let tmpfs = super::output::tmpfs_options(&tmpfs_map(&s.tmpfs), true)
                .with_context(|| format!("service {name}"))?;
            s.tmpfs = tmpfs
                .into_iter()
                .map(|(dir, opts)| match opts.is_empty() {
                    true => dir,
                    false => format!("{dir}:{opts}"),
                })
                .collect();
            s.tmpfs.sort();
        }
        Ok(())
    }

    /// Each `seccomp=FILE` option (relative to `dir`) as the engine takes
    /// it: the profile's content, or its absolute path.
    fn seccomp_profiles(&mut self, dir: &Path, as_: ProfileAs) -> Result<()> {
        for (name, s) in &mut self.services {
            for opt in &mut s.security_opt {
                let Some(file) = opt.strip_prefix("seccomp=") else {
                    continue;
                };
                if file == "unconfined" || file.trim_start().starts_with('{') {
                    continue;
                }
                let at = dir.join(file);
                let unreadable = || {
                    format!(
                        "service {name}: cannot read its seccomp profile {}; emit --policy \
                         writes it beside the run plan",
                        at.display()
                    )
                };
                *opt = match as_ {
                    ProfileAs::Content => {
                        let profile = std::fs::read_to_string(&at).with_context(unreadable)?;
                        format!("seccomp={profile}")
                    }
                    ProfileAs::Path if at.is_file() => format!("seccomp={}", at.display()),
                    ProfileAs::Path => bail!(unreadable()),
                };
            }
        }
        Ok(())
    }

    /// Parses and checks a run plan read from `file`.
    pub fn parse(text: &str, file: &Path) -> Result<Self> {
        let plan: Self = serde_norway::from_str(text).with_context(|| {
            format!(
                "{}: not a run plan cimplifier can start (it reads only what `emit --policy` writes)",
                file.display()
            )
        })?;
        plan.check()
            .with_context(|| format!("{}: inconsistent run plan", file.display()))?;
        Ok(plan)
    }

    fn check(&self) -> Result<()> {
        for (name, s) in &self.services {
            for dep in s
                .depends_on
                .iter()
                .map(String::as_str)
                .chain(s.network_owner())
            {
                if !self.services.contains_key(dep) {
                    bail!("service {name} refers to service {dep}, which the file does not define");
                }
            }
            for v in &s.volumes {
                let (vol, target, _) =
                    split_volume(v).with_context(|| format!("service {name}: volume {v:?}"))?;
                if !self.volumes.contains_key(vol) {
                    bail!("service {name} mounts volume {vol}, which the file does not define");
                }
                if !target.starts_with('/') {
                    bail!("service {name}: volume {v:?} must mount at an absolute path");
                }
            }
            if let Some(mode) = &s.network_mode
                && s.network_owner().is_none()
            {
                bail!("service {name}: network_mode {mode:?} is not `service:<name>`");
            }
            if s.network_mode.is_some() && !s.ports.is_empty() {
                bail!(
                    "service {name} publishes ports but joins another service's network: \
                     publish them on the service that owns the network"
                );
            }
            for p in &s.ports {
                if !matches!(p.protocol.as_str(), "tcp" | "udp" | "sctp") {
                    bail!(
                        "service {name}: port {} has protocol {:?}; give tcp, udp or sctp",
                        p.target,
                        p.protocol
                    );
                }
            }
        }
        self.start_order().map(|_| ())
    }

    /// Services in an order that starts each after what it depends on.
    pub fn start_order(&self) -> Result<Vec<&str>> {
        let mut order: Vec<&str> = Vec::new();
        let mut placed: BTreeSet<&str> = BTreeSet::new();
        while order.len() < self.services.len() {
            let ready: Vec<&str> = self
                .services
                .iter()
                .filter(|(n, s)| {
                    !placed.contains(n.as_str())
                        && s.depends_on
                            .iter()
                            .map(String::as_str)
                            .chain(s.network_owner())
                            .all(|d| placed.contains(d))
                })
                .map(|(n, _)| n.as_str())
                .collect();
            if ready.is_empty() {
                bail!("the services' depends_on and network_mode form a cycle");
            }
            for n in ready {
                placed.insert(n);
                order.push(n);
            }
        }
        Ok(order)
    }

    pub fn container_name(&self, service: &str) -> String {
        format!("{}-{service}-1", self.name)
    }

    pub fn volume_name(&self, volume: &str) -> String {
        format!("{}_{volume}", self.name)
    }
}

impl ComposeService {
    /// The service whose network namespace this one joins.
    pub fn network_owner(&self) -> Option<&str> {
        self.network_mode.as_deref()?.strip_prefix("service:")
    }
}

/// `<volume>:<mount point>[:nocopy]`: the volume, where it is mounted, and
/// whether the engine must leave an empty volume empty (not fill it from
/// the image).
pub(crate) fn split_volume(spec: &str) -> Result<(&str, &str, bool)> {
    let mut parts = spec.split(':');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(v), Some(t), None, None) if !v.is_empty() => Ok((v, t, false)),
        (Some(v), Some(t), Some("nocopy"), None) if !v.is_empty() => Ok((v, t, true)),
        _ => bail!("expected <volume>:<mount point>[:nocopy]"),
    }
}

/// `depends_on` as Compose's long syntax, whose conditions say what
/// `cimplifierctl up` does: a service waits for the others to start, and
/// for the seed service to complete.
mod depends_on {
    use std::collections::BTreeMap;

    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::SEED_SERVICE;

    const STARTED: &str = "service_started";
    const COMPLETED: &str = "service_completed_successfully";

    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Dependency {
        condition: String,
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        List(Vec<String>),
        Map(BTreeMap<String, Dependency>),
    }

    fn condition(service: &str) -> &'static str {
        if service == SEED_SERVICE {
            COMPLETED
        } else {
            STARTED
        }
    }

    pub fn serialize<S: Serializer>(deps: &[String], s: S) -> Result<S::Ok, S::Error> {
        deps.iter()
            .map(|d| {
                (
                    d.as_str(),
                    Dependency {
                        condition: condition(d).to_owned(),
                    },
                )
            })
            .collect::<BTreeMap<_, _>>()
            .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
        match Either::deserialize(d)? {
            Either::List(list) => Ok(list),
            Either::Map(map) => map
                .into_iter()
                .map(|(service, dep)| {
                    if dep.condition == condition(&service) {
                        Ok(service)
                    } else {
                        Err(D::Error::custom(format!(
                            "depends_on {service}: condition {} is not one `up` can honour (it waits for {})",
                            dep.condition,
                            condition(&service)
                        )))
                    }
                })
                .collect(),
        }
    }
}

/// A started container of the system.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartedService {
    pub service: String,
    pub container: String,
    pub id: String,
}

/// What `up` started, and where the shared network namespace answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpReport {
    pub project: String,
    pub compose_file: PathBuf,
    pub containers: Vec<StartedService>,
    /// The network owner's address on Docker's default bridge, if any.
    pub ip_address: Option<String>,
    /// Volumes created by this `up` and filled by the seed service (the
    /// RPE socket volumes start empty).
    #[serde(default)]
    pub seeded: Vec<String>,
    /// Volumes that existed already and kept their data.
    #[serde(default)]
    pub kept: Vec<String>,
    /// Where the network owner is published on the host, as the engine
    /// bound it: `HOST_IP:HOST_PORT -> PORT/PROTOCOL`.
    #[serde(default)]
    pub published: Vec<String>,
}

/// How `up` starts a run plan.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UpOptions {
    pub order: StartOrder,
    /// Published by the network owner (the others share its network), in
    /// place of what the plan publishes for the same container port.
    pub publish: Vec<ComposePort>,
    /// Fail (and roll back) when a partition has exited with a failure by
    /// the time all are started: `cimplifierctl up`. Not for `verify`,
    /// whose point is to see such a system run its workload.
    pub require_running: bool,
}

/// In which order `up` starts the services.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StartOrder {
    /// Each after what it depends on.
    #[default]
    Dependencies,
    /// The seed service, then the network owner (the others join its
    /// namespace), then the rest in the reverse of the dependency order: a
    /// check that what a partition finds does not depend on start order.
    Reversed,
}

/// How an engine's API takes a seccomp profile.
#[derive(Clone, Copy)]
enum ProfileAs {
    Content,
    Path,
}

/// `DIR:OPTIONS` tmpfs entries, by directory.
pub(crate) fn tmpfs_map(entries: &[String]) -> std::collections::BTreeMap<String, String> {
    entries
        .iter()
        .map(|t| match t.split_once(':') {
            Some((dir, opts)) => (dir.to_owned(), opts.to_owned()),
            None => (t.clone(), String::new()),
        })
        .collect()
}

/// Creates the volumes and starts every service, in dependency order.
pub async fn up(
    docker: &bollard::Docker,
    path: &Path,
    progress: &dyn Fn(&str),
) -> Result<UpReport> {
    let opts = UpOptions {
        require_running: true,
        ..Default::default()
    };
    up_with(docker, path, &opts, &engine_start(docker), progress).await
}

/// Starts a created container of the system by its name: the engine's
/// start, or an observation that starts it (`verify`).
pub type Starter<'a> =
    &'a (dyn Fn(String) -> futures::future::BoxFuture<'static, Result<()>> + Sync);

/// The engine's start, as a [`Starter`].
pub fn engine_start(
    docker: &bollard::Docker,
) -> impl Fn(String) -> futures::future::BoxFuture<'static, Result<()>> + Sync + use<> {
    let engine = docker.clone();
    move |name: String| -> futures::future::BoxFuture<'static, Result<()>> {
        let docker = engine.clone();
        Box::pin(async move {
            docker
                .start_container(&name, None)
                .await
                .with_context(|| format!("starting container {name}"))
        })
    }
}

/// [`up`], starting the services in `order`.
pub async fn up_in_order(
    docker: &bollard::Docker,
    path: &Path,
    order: StartOrder,
    progress: &dyn Fn(&str),
) -> Result<UpReport> {
    let opts = UpOptions {
        order,
        require_running: true,
        ..Default::default()
    };
    up_with(docker, path, &opts, &engine_start(docker), progress).await
}

/// What an `up` made, to be removed if it fails.
#[derive(Default)]
struct Made {
    volumes: Vec<String>,
    /// (service, container), in the order created.
    containers: Vec<(String, String)>,
}

/// Creates the volumes that do not exist yet, fills them with the seed
/// service, and starts the other services in `opts.order`, each by
/// `start`. All or nothing: if anything fails, or a partition has exited
/// with a failure by the end, what this `up` created is removed again and
/// the error names the partition that exited, with its last log lines.
pub async fn up_with(
    docker: &bollard::Docker,
    path: &Path,
    opts: &UpOptions,
    start: Starter<'_>,
    progress: &dyn Fn(&str),
) -> Result<UpReport> {
    let (file, mut plan) = ComposeFile::load(path)?;
    let layout = super::CgroupLayout::of(docker).await;
    plan.for_engine(layout, file.parent().unwrap_or(Path::new(".")))?;
    let existing = project_containers(docker, &plan.name).await?;
    if !existing.is_empty() {
        bail!(
            "project {} is already up ({}); `cimplifierctl down {}` stops it first",
            plan.name,
            existing.join(", "),
            path.display()
        );
    }
    if !opts.publish.is_empty() {
        let owner = plan
            .services
            .iter()
            .find(|(n, s)| s.network_mode.is_none() && n.as_str() != SEED_SERVICE)
            .map(|(n, _)| n.clone())
            .context("the run plan has no network owner to publish ports on")?;
        let ports = &mut plan.services.get_mut(&owner).expect("found").ports;
        for p in &opts.publish {
            ports.retain(|x| x.container_port() != p.container_port());
            ports.push(p.clone());
        }
    }
    let mut made = Made::default();
    let result = match start_all(docker, &plan, opts.order, start, progress, &mut made).await {
        // A partition may run a command and end (exit 0); one that failed
        // as it started fails the `up`.
        Ok(report) if !opts.require_running => Ok(report),
        Ok(report) => match exited(docker, &made, true).await {
            None => Ok(report),
            Some(cause) => Err(anyhow::anyhow!("{cause}")),
        },
        // The real cause first: a partition that exited makes the next
        // fail to join its network, which alone says little.
        Err(e) => Err(match exited(docker, &made, false).await {
            Some(cause) => e.context(cause),
            None => e,
        }),
    };
    match result {
        Ok((containers, seeded, kept)) => {
            let (ip_address, published) = reachable(docker, &plan).await?;
            Ok(UpReport {
                project: plan.name.clone(),
                compose_file: file,
                containers,
                ip_address,
                seeded,
                kept,
                published,
            })
        }
        Err(e) => {
            progress("rolling back");
            let undone = undo(docker, &made).await;
            Err(e.context(match undone {
                Ok(()) => format!(
                    "up {} failed, and what it had created was removed",
                    plan.name
                ),
                Err(u) => format!(
                    "up {} failed, and removing what it had created failed too ({u:#}): \
                     `cimplifierctl down {} --volumes` cleans up",
                    plan.name,
                    path.display()
                ),
            }))
        }
    }
}

type Started = (Vec<StartedService>, Vec<String>, Vec<String>);

/// The steps of `up`, each recorded in `made` as it is done.
async fn start_all(
    docker: &bollard::Docker,
    plan: &ComposeFile,
    order: StartOrder,
    start: Starter<'_>,
    progress: &dyn Fn(&str),
    made: &mut Made,
) -> Result<Started> {
    let (mut seeded, mut kept) = (Vec::new(), Vec::new());
    for (name, v) in &plan.volumes {
        let full = plan.volume_name(name);
        match docker.inspect_volume(&full).await {
            Ok(_) => {
                progress(&format!("volume {full} exists: it keeps its data"));
                kept.push(name.clone());
                continue;
            }
            Err(e) => not_found(e).with_context(|| format!("inspecting volume {full}"))?,
        }
        let mut labels: HashMap<String, String> = v.labels.clone().into_iter().collect();
        plan.own_labels(&mut labels);
        labels.insert(VOLUME_LABEL.into(), name.clone());
        docker
            .create_volume(VolumeCreateRequest {
                name: Some(full.clone()),
                labels: Some(labels),
                ..Default::default()
            })
            .await
            .with_context(|| format!("creating volume {full}"))?;
        made.volumes.push(full);
        seeded.push(name.clone());
    }
    // Only what the seed service mounts is seeded.
    let seed_mounts: BTreeSet<&str> = plan
        .services
        .get(SEED_SERVICE)
        .map(|s| {
            s.volumes
                .iter()
                .filter_map(|v| split_volume(v).ok().map(|(v, _, _)| v))
                .collect()
        })
        .unwrap_or_default();
    seeded.retain(|v| seed_mounts.contains(v.as_str()));
    if !seeded.is_empty() {
        made.containers
            .push((SEED_SERVICE.to_owned(), plan.container_name(SEED_SERVICE)));
        seed(docker, plan, &seeded, progress).await?;
        made.containers.pop();
    }
    let mut services: Vec<&str> = plan
        .start_order()?
        .into_iter()
        .filter(|s| *s != SEED_SERVICE)
        .collect();
    if order == StartOrder::Reversed {
        services.reverse();
        if let Some(i) = services
            .iter()
            .position(|s| plan.services[*s].network_mode.is_none())
        {
            let owner = services.remove(i);
            services.insert(0, owner);
        }
    }
    let mut containers = Vec::new();
    for service in services {
        let s = &plan.services[service];
        let name = plan.container_name(service);
        let shown = s.labels.get("io.cimplifier.image").unwrap_or(&s.image);
        progress(&format!("starting {name} ({shown})"));
        let id = create(docker, plan, service, None).await?;
        made.containers.push((service.to_owned(), name.clone()));
        start(name.clone()).await?;
        containers.push(StartedService {
            service: service.to_owned(),
            container: name,
            id,
        });
    }
    Ok((containers, seeded, kept))
}

/// The first container `up` made that is no longer running (with
/// `failed_only`, that exited non-zero), with its exit code and last log
/// lines; None when there is none.
async fn exited(docker: &bollard::Docker, made: &Made, failed_only: bool) -> Option<String> {
    for (service, name) in &made.containers {
        let Ok(details) = docker.inspect_container(name, None).await else {
            continue;
        };
        let state = details.state.unwrap_or_default();
        if state.running == Some(true)
            || state.status == Some(ContainerStateStatusEnum::CREATED)
            || (failed_only && state.exit_code == Some(0))
        {
            continue;
        }
        let logs = last_log_lines(docker, name, 20).await;
        return Some(format!(
            "partition {service} (container {name}) exited with code {} as it started{}",
            state.exit_code.unwrap_or(-1),
            if logs.is_empty() {
                ", printing nothing".to_owned()
            } else {
                format!("; its last log lines:\n{logs}")
            }
        ));
    }
    None
}

/// The last `n` lines a container printed (stdout and stderr), indented,
/// each cut to 300 bytes.
async fn last_log_lines(docker: &bollard::Docker, name: &str, n: usize) -> String {
    use futures::StreamExt as _;
    let mut logs = docker.logs(
        name,
        Some(bollard::query_parameters::LogsOptions {
            stdout: true,
            stderr: true,
            tail: n.to_string(),
            ..Default::default()
        }),
    );
    let mut text = String::new();
    while let Some(Ok(chunk)) = logs.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
    }
    text.lines()
        .map(|l| {
            let mut end = l.len().min(300);
            while !l.is_char_boundary(end) {
                end -= 1;
            }
            format!("    {}", &l[..end])
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Removes what a failed `up` made: its containers (last made first),
/// then the volumes it created. Keeps going past failures; says the first.
async fn undo(docker: &bollard::Docker, made: &Made) -> Result<()> {
    let mut first = None;
    for (_, name) in made.containers.iter().rev() {
        let r = docker
            .remove_container(
                name,
                Some(RemoveContainerOptions {
                    force: true,
                    v: true,
                    ..Default::default()
                }),
            )
            .await
            .or_else(not_found)
            .with_context(|| format!("removing container {name}"));
        first = first.or(r.err());
    }
    for name in &made.volumes {
        let r = docker
            .remove_volume(name, None::<RemoveVolumeOptions>)
            .await
            .or_else(not_found)
            .with_context(|| format!("removing volume {name}"));
        first = first.or(r.err());
    }
    first.map_or(Ok(()), Err)
}

/// The network owner's address on Docker's default bridge, and the host
/// ports the engine bound for it.
async fn reachable(
    docker: &bollard::Docker,
    plan: &ComposeFile,
) -> Result<(Option<String>, Vec<String>)> {
    let Some(owner) = plan
        .services
        .iter()
        .find(|(n, s)| s.network_mode.is_none() && n.as_str() != SEED_SERVICE)
        .map(|(n, _)| plan.container_name(n))
    else {
        return Ok((None, Vec::new()));
    };
    let details = docker
        .inspect_container(&owner, None)
        .await
        .with_context(|| format!("inspecting {owner}"))?;
    let network = details.network_settings.unwrap_or_default();
    let ip_address = network
        .networks
        .as_ref()
        .and_then(|n| n.get("bridge").and_then(|b| b.ip_address.clone()))
        .filter(|ip| !ip.is_empty());
    let mut published = Vec::new();
    for (port, bindings) in network.ports.unwrap_or_default() {
        for b in bindings.into_iter().flatten() {
            published.push(format!(
                "{}:{} -> {port}",
                b.host_ip.unwrap_or_default(),
                b.host_port.unwrap_or_default()
            ));
        }
    }
    published.sort();
    Ok((ip_address, published))
}

/// Runs the seed service with only the `new` volumes mounted: the engine
/// fills each from the seed image, since it is empty. Waits for it to exit
/// 0, then removes it.
async fn seed(
    docker: &bollard::Docker,
    plan: &ComposeFile,
    new: &[String],
    progress: &dyn Fn(&str),
) -> Result<()> {
    let name = plan.container_name(SEED_SERVICE);
    progress(&format!("seeding {} from the source image", new.join(", ")));
    create(docker, plan, SEED_SERVICE, Some(new)).await?;
    docker
        .start_container(&name, None)
        .await
        .with_context(|| format!("starting the seed container {name}"))?;
    use futures::StreamExt as _;
    let mut wait = docker.wait_container(
        &name,
        None::<bollard::query_parameters::WaitContainerOptions>,
    );
    let mut code = None;
    while let Some(r) = wait.next().await {
        match r {
            Ok(w) => code = Some(w.status_code),
            // bollard reports a non-zero exit as an error carrying the code.
            Err(bollard::errors::Error::DockerContainerWaitError { code: c, .. }) => code = Some(c),
            Err(e) => return Err(e).with_context(|| format!("waiting for {name}")),
        }
    }
    if code != Some(0) {
        bail!("the seed container {name} exited with {code:?} before the volumes were filled");
    }
    docker
        .remove_container(&name, None::<RemoveContainerOptions>)
        .await
        .with_context(|| format!("removing {name}"))?;
    Ok(())
}

/// Creates `service`'s container; `only` limits its volumes to those named.
async fn create(
    docker: &bollard::Docker,
    plan: &ComposeFile,
    service: &str,
    only: Option<&[String]>,
) -> Result<String> {
    let s = &plan.services[service];
    let name = plan.container_name(service);
    let mut mounts = Vec::new();
    for v in &s.volumes {
        let (vol, target, nocopy) = split_volume(v)?;
        if only.is_some_and(|o| !o.iter().any(|n| n == vol)) {
            continue;
        }
        mounts.push(Mount {
            typ: Some(MountType::VOLUME),
            source: Some(plan.volume_name(vol)),
            target: Some(target.to_owned()),
            volume_options: nocopy.then(|| MountVolumeOptions {
                no_copy: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    let mut labels: HashMap<String, String> = s.labels.clone().into_iter().collect();
    plan.own_labels(&mut labels);
    labels.insert(SERVICE_LABEL.into(), service.to_owned());
    let mut exposed = s.expose.clone();
    let mut port_bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
    for p in &s.ports {
        let port = p.container_port();
        if !exposed.contains(&port) {
            exposed.push(port.clone());
        }
        port_bindings
            .entry(port)
            .or_default()
            .get_or_insert_default()
            .push(PortBinding {
                host_ip: p.host_ip.clone(),
                host_port: p.published.clone(),
            });
    }
    let body = ContainerCreateBody {
        image: Some(s.image.clone()),
        labels: Some(labels),
        exposed_ports: (!exposed.is_empty()).then_some(exposed),
        tty: s.tty.then_some(true),
        open_stdin: s.stdin_open.then_some(true),
        host_config: Some(HostConfig {
            mounts: Some(mounts),
            network_mode: s
                .network_owner()
                .map(|owner| format!("container:{}", plan.container_name(owner))),
            port_bindings: (!port_bindings.is_empty()).then_some(port_bindings),
            init: s.init.then_some(true),
            cap_drop: (!s.cap_drop.is_empty()).then(|| s.cap_drop.clone()),
            cap_add: (!s.cap_add.is_empty()).then(|| s.cap_add.clone()),
            security_opt: (!s.security_opt.is_empty()).then(|| s.security_opt.clone()),
            readonly_rootfs: s.read_only.then_some(true),
            tmpfs: (!s.tmpfs.is_empty()).then(|| tmpfs_map(&s.tmpfs).into_iter().collect()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let created = docker
        .create_container(
            Some(CreateContainerOptions {
                name: Some(name.clone()),
                ..Default::default()
            }),
            body,
        )
        .await
        .with_context(|| {
            format!(
                "creating container {name} from {} (was it emitted and loaded?)",
                s.image
            )
        })?;
    Ok(created.id)
}

/// Stops and removes the project's containers, the first started last; and
/// with `volumes`, its volumes too.
pub async fn down(
    docker: &bollard::Docker,
    path: &Path,
    volumes: bool,
    progress: &dyn Fn(&str),
) -> Result<Vec<String>> {
    let (_, plan) = ComposeFile::load(path)?;
    let mut removed = Vec::new();
    let running = labelled_containers(docker, &plan.label_filter()).await?;
    let mut order: Vec<String> = plan
        .start_order()?
        .into_iter()
        .map(|s| plan.container_name(s))
        .collect();
    order.reverse();
    // Containers of the project the file no longer names go too, first.
    let mut all: Vec<String> = running
        .iter()
        .filter(|c| !order.contains(c))
        .cloned()
        .collect();
    all.extend(order.into_iter().filter(|c| running.contains(c)));
    for name in all {
        progress(&format!("stopping {name}"));
        docker
            .stop_container(
                &name,
                Some(StopContainerOptions {
                    t: Some(10),
                    ..Default::default()
                }),
            )
            .await
            .or_else(not_found)
            .with_context(|| format!("stopping {name}"))?;
        docker
            .remove_container(
                &name,
                Some(RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                }),
            )
            .await
            .or_else(not_found)
            .with_context(|| format!("removing {name}"))?;
        removed.push(name);
    }
    if volumes {
        for v in plan.volumes.keys() {
            let name = plan.volume_name(v);
            // A volume of that name that this plan did not make (another
            // project's) keeps its data.
            if !plan.plan_id.is_empty()
                && let Ok(found) = docker.inspect_volume(&name).await
                && found.labels.get(PLAN_LABEL) != Some(&plan.plan_id)
            {
                progress(&format!("volume {name} is not this plan's: left alone"));
                continue;
            }
            progress(&format!("removing volume {name}"));
            docker
                .remove_volume(&name, None::<RemoveVolumeOptions>)
                .await
                .or_else(not_found)
                .with_context(|| format!("removing volume {name}"))?;
            removed.push(name);
        }
    }
    Ok(removed)
}

fn not_found(e: bollard::errors::Error) -> std::result::Result<(), bollard::errors::Error> {
    match e {
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404 | 304,
            ..
        } => Ok(()),
        e => Err(e),
    }
}

/// Names of the project's containers, running or not.
async fn project_containers(docker: &bollard::Docker, project: &str) -> Result<Vec<String>> {
    labelled_containers(docker, &format!("{PROJECT_LABEL}={project}")).await
}

/// Names of the containers with the label `key=value`, running or not.
async fn labelled_containers(docker: &bollard::Docker, label: &str) -> Result<Vec<String>> {
    let list = docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(
                [("label".to_owned(), vec![label.to_owned()])]
                    .into_iter()
                    .collect(),
            ),
            ..Default::default()
        }))
        .await
        .context("listing containers (is dockerd running?)")?;
    Ok(list
        .into_iter()
        .filter_map(|c| {
            c.names?
                .first()
                .map(|n| super::container::bare_name(n).to_owned())
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ComposeFile {
        let svc = |image: &str, owner: Option<&str>, vols: &[&str]| ComposeService {
            image: image.to_owned(),
            network_mode: owner.map(|o| format!("service:{o}")),
            depends_on: owner.into_iter().map(str::to_owned).collect(),
            volumes: vols.iter().map(|v| (*v).to_owned()).collect(),
            expose: vec![],
            ports: vec![],
            tty: false,
            stdin_open: false,
            init: false,
            labels: BTreeMap::new(),
            ..Default::default()
        };
        ComposeFile {
            name: "wp".into(),
            plan_id: String::new(),
            containerd_namespace: None,
            services: [
                (
                    "db".to_owned(),
                    svc("wp-db", None, &["run-mysqld:/run/mysqld"]),
                ),
                (
                    "web".to_owned(),
                    svc("wp-web", Some("db"), &["run-mysqld:/run/mysqld"]),
                ),
                ("init".to_owned(), svc("wp-init", Some("web"), &[])),
            ]
            .into_iter()
            .collect(),
            volumes: [("run-mysqld".to_owned(), ComposeVolume::default())]
                .into_iter()
                .collect(),
        }
    }

    #[test]
    fn publish_is_read_as_docker_run_p_takes_it() {
        let p = |s: &str| ComposePort::parse_publish(s).unwrap();
        assert_eq!(
            p("8080:80"),
            ComposePort {
                target: 80,
                published: Some("8080".into()),
                host_ip: None,
                protocol: "tcp".into()
            }
        );
        let full = p("127.0.0.1:5353:53/udp");
        assert_eq!(full.host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(full.container_port(), "53/udp");
        assert_eq!(p("[::1]:8443:443").host_ip.as_deref(), Some("::1"));
        assert_eq!(p(":80").published, None, "the engine picks the host port");
        for bad in [
            "80",
            "x:80",
            "8080:0",
            "8080:80/icmp",
            "localhost:8080:80",
            "99999:80",
        ] {
            let e = ComposePort::parse_publish(bad).unwrap_err().to_string();
            assert!(
                e.contains("--publish") && e.contains("HOST_PORT:CONTAINER_PORT"),
                "{e}"
            );
        }
    }

    #[test]
    fn round_trips_through_yaml_and_orders_by_dependency() {
        let mut plan = sample();
        let db = plan.services.get_mut("db").unwrap();
        db.ports = vec![ComposePort {
            target: 53,
            published: Some("5353".into()),
            host_ip: Some("127.0.0.1".into()),
            protocol: "udp".into(),
        }];
        plan.services.get_mut("init").unwrap().stdin_open = true;
        let yaml = plan.to_yaml().unwrap();
        assert!(yaml.contains("stdin_open: true"), "{yaml}");
        assert!(!yaml.contains("tty"), "false flags are left out: {yaml}");
        let back: ComposeFile = serde_norway::from_str(&yaml).unwrap();
        assert_eq!(back, plan);
        back.check().unwrap();
        assert_eq!(back.start_order().unwrap(), ["db", "web", "init"]);
        assert_eq!(back.container_name("web"), "wp-web-1");
        assert_eq!(back.volume_name("run-mysqld"), "wp_run-mysqld");
    }

    #[test]
    fn refuses_what_it_cannot_start() {
        let mut plan = sample();
        plan.services.get_mut("web").unwrap().volumes = vec!["nope:/x".into()];
        let e = plan.check().unwrap_err().to_string();
        assert!(e.contains("volume nope"), "{e}");

        let mut plan = sample();
        plan.services.get_mut("db").unwrap().depends_on = vec!["init".into()];
        let e = plan.check().unwrap_err().to_string();
        assert!(e.contains("cycle"), "{e}");

        let mut plan = sample();
        plan.services.get_mut("web").unwrap().ports = vec![ComposePort {
            target: 80,
            published: None,
            host_ip: None,
            protocol: "tcp".into(),
        }];
        let e = plan.check().unwrap_err().to_string();
        assert!(e.contains("publishes ports"), "{e}");

        let hardened = "name: x\nservices:\n  a:\n    image: i\n    cap_drop:\n    - ALL\n    cap_add:\n    - NET_BIND_SERVICE\n    security_opt:\n    - no-new-privileges:true\n    read_only: true\n    tmpfs:\n    - /run:mode=755,uid=0,gid=0\n";
        let back = serde_norway::from_str::<ComposeFile>(hardened).unwrap();
        assert_eq!(back.services["a"].cap_add, ["NET_BIND_SERVICE"]);
        assert!(back.services["a"].read_only);
        assert_eq!(back.to_yaml().unwrap(), hardened);

        let unknown_key = "name: x\nservices:\n  a:\n    image: i\n    privileged: true\n";
        let e = serde_norway::from_str::<ComposeFile>(unknown_key)
            .unwrap_err()
            .to_string();
        assert!(e.contains("privileged"), "{e}");

        let healthy = "name: x\nservices:\n  a:\n    image: i\n  b:\n    image: j\n    depends_on:\n      a:\n        condition: service_healthy\n";
        let e = serde_norway::from_str::<ComposeFile>(healthy)
            .unwrap_err()
            .to_string();
        assert!(e.contains("service_healthy"), "{e}");
        assert!(split_volume("v:/x:ro").is_err());
    }

    #[test]
    fn up_hands_the_engine_the_seccomp_profile_a_plan_names_by_file() {
        let dir = tempfile::tempdir().unwrap();
        let text = "name: x\nservices:\n  a:\n    image: i\n    security_opt:\n    - no-new-privileges:true\n    - seccomp=seccomp-a.json\n";
        let mut plan = serde_norway::from_str::<ComposeFile>(text).unwrap();
        let e = plan.inline_seccomp_profiles(dir.path()).unwrap_err();
        assert!(format!("{e:#}").contains("seccomp-a.json"), "{e:#}");
        std::fs::write(
            dir.path().join("seccomp-a.json"),
            "{\"defaultAction\":\"SCMP_ACT_ERRNO\"}",
        )
        .unwrap();
        plan.inline_seccomp_profiles(dir.path()).unwrap();
        assert_eq!(
            plan.services["a"].security_opt,
            [
                "no-new-privileges:true",
                "seccomp={\"defaultAction\":\"SCMP_ACT_ERRNO\"}"
            ]
        );
        // Inlined already (or unconfined): left alone.
        plan.inline_seccomp_profiles(Path::new("/nonexistent"))
            .unwrap();
    }

    #[test]
    fn the_seed_service_runs_to_completion_before_the_partitions_which_do_not_copy() {
        let mut plan = sample();
        for s in plan.services.values_mut() {
            s.depends_on.insert(0, SEED_SERVICE.to_owned());
            for v in &mut s.volumes {
                v.push_str(":nocopy");
            }
        }
        plan.services.insert(
            SEED_SERVICE.to_owned(),
            ComposeService {
                image: "wp-cimplifier-seed".into(),
                network_mode: None,
                depends_on: vec![],
                volumes: vec!["run-mysqld:/.cimplifier/seed/run-mysqld".into()],
                expose: vec![],
                ports: vec![],
                tty: false,
                stdin_open: false,
                init: false,
                labels: BTreeMap::new(),
                ..Default::default()
            },
        );
        let yaml = plan.to_yaml().unwrap();
        assert!(
            yaml.contains(
                "    depends_on:\n      cimplifier-seed:\n        condition: service_completed_successfully\n      db:\n        condition: service_started\n"
            ),
            "{yaml}"
        );
        assert!(yaml.contains("- run-mysqld:/run/mysqld:nocopy"), "{yaml}");
        let back: ComposeFile = serde_norway::from_str(&yaml).unwrap();
        assert_eq!(back, plan);
        back.check().unwrap();
        assert_eq!(
            back.start_order().unwrap(),
            [SEED_SERVICE, "db", "web", "init"]
        );
        assert_eq!(
            split_volume("run-mysqld:/run/mysqld:nocopy").unwrap(),
            ("run-mysqld", "/run/mysqld", true)
        );
    }
}
