//! A partitioned run plan on containerd: `up` and `down` start and stop
//! exactly what the plan (docker-compose.yml, see docker/compose.rs)
//! describes, through containerd's gRPC API, when emit wrote the images
//! into a containerd namespace (the plan's
//! `x-cimplifier-containerd-namespace`).
//!
//! - Each service is a container with a task: a snapshot of its image
//!   (unpacked here, as `ctr run` does) and an OCI runtime spec built from
//!   the image's configuration and the service's settings (user,
//!   capabilities, no-new-privileges, the seccomp profile converted from
//!   Docker's format, read-only root, tmpfs).
//! - The volumes are host directories, `STATE_DIR/NAMESPACE/volumes/VOLUME`
//!   (their content in `data`, the plan that made them in `plan`),
//!   bind-mounted; the RPE socket volumes likewise. The seed service runs
//!   first, its copy program filling each volume made by this `up` (as on
//!   Kubernetes: containerd copies nothing into a mount), and is waited for.
//! - The network owner's task gets a network namespace of its own (only
//!   loopback: there is no CNI here); the others join it by path.
//! - What containerd cannot honour without more (published ports, a
//!   terminal, Docker's init) is refused by name.
//! - Each task's output goes to `STATE_DIR/NAMESPACE/logs/CONTAINER.log`.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use containerd_client::services::v1 as api;
use containerd_client::tonic::Code;
use containerd_client::types::v1::Status;
use oci_spec::image::ImageConfiguration;
use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxDeviceCgroupBuilder,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxResourcesBuilder, LinuxSeccomp, Mount,
    MountBuilder, ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};
use serde::Deserialize;

use super::{ContainerRef, Containerd, in_namespace, leased};
use crate::docker::compose::{
    ComposeFile, ComposeService, FILL_DIR, IMAGE_TAG_LABEL, PLAN_LABEL, PROJECT_LABEL,
    SEED_COPY_PROGRAM, SEED_DIR, SEED_SERVICE, SERVICE_LABEL, StartOrder, StartedService, Starter,
    UpOptions, UpReport, split_volume, tmpfs_map,
};

/// Where `up` keeps the plans' volumes and the tasks' logs.
pub const STATE_DIR: &str = "/var/lib/cimplifier/containerd";
/// The snapshotter images are unpacked into (containerd's default).
pub const SNAPSHOTTER: &str = "overlayfs";
/// The runtime of the tasks (`ctr run`'s default).
pub const RUNTIME: &str = "io.containerd.runc.v2";
const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
/// How long a task has to stop after SIGTERM before SIGKILL (Docker's
/// `down` waits as long).
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Docker's default capabilities: what a service without `cap_drop: [ALL]`
/// starts with.
const DOCKER_DEFAULT_CAPS: [&str; 14] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];
/// What the seed's copy needs: owners, modes and file capabilities as the
/// image has them (as the Kubernetes init container gets).
const SEED_CAPS: [&str; 5] = ["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "SETFCAP"];

/// The plan's volumes and logs in containerd namespace `namespace`.
#[derive(Clone, Debug)]
pub struct StateDirs {
    root: PathBuf,
}

impl StateDirs {
    pub fn new(namespace: &str) -> Self {
        Self::at(Path::new(STATE_DIR), namespace)
    }

    pub fn at(root: &Path, namespace: &str) -> Self {
        Self {
            root: root.join(namespace),
        }
    }

    /// The directory of volume `full` (the plan's `volume_name`).
    pub fn volume(&self, full: &str) -> PathBuf {
        self.root.join("volumes").join(full)
    }

    /// What is mounted: the volume's content.
    pub fn volume_data(&self, full: &str) -> PathBuf {
        self.volume(full).join("data")
    }

    fn volume_owner(&self, full: &str) -> PathBuf {
        self.volume(full).join("plan")
    }

    pub fn log(&self, container: &str) -> PathBuf {
        self.root.join("logs").join(format!("{container}.log"))
    }

    /// Removes volume `full` with its content.
    pub fn remove_volume(&self, full: &str) -> Result<()> {
        let dir = self.volume(full);
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("removing volume {full} ({})", dir.display()))?;
        self.tidy();
        Ok(())
    }

    /// Removes the namespace's directories that nothing is left in.
    fn tidy(&self) {
        for dir in [
            self.root.join("logs"),
            self.root.join("volumes"),
            self.root.clone(),
        ] {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// The namespace a plan is started in on containerd; None for Docker.
pub fn namespace_of(plan: &ComposeFile) -> Option<&str> {
    plan.containerd_namespace.as_deref()
}

/// Refuses what `up` cannot start on containerd, by name, with the fix.
pub fn check(plan: &ComposeFile) -> Result<()> {
    let namespace = namespace_of(plan).unwrap_or_default();
    let ident = |x: &str| {
        !x.is_empty()
            && x.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    };
    if !ident(namespace) {
        bail!("x-cimplifier-containerd-namespace {namespace:?} is not a containerd namespace");
    }
    for (name, v) in &plan.volumes {
        let full = plan.volume_name(name);
        if !ident(&full) || full.starts_with('.') {
            bail!("volume {name}: {full:?} cannot name a directory of its own");
        }
        if !v.labels.is_empty() {
            bail!("volume {name}: labels are not kept on containerd (its volumes are directories)");
        }
    }
    for (service, s) in &plan.services {
        if !ident(&plan.container_name(service)) {
            bail!(
                "service {service}: {:?} is not a containerd container id (letters, digits, \
                 '.', '_', '-')",
                plan.container_name(service)
            );
        }
        // Every field, named: one added to the Compose service does not
        // compile here until it is honoured or refused.
        let ComposeService {
            image: _,        // resolved by its tag label, checked by digest
            network_mode: _, // the owner's network namespace, by path
            depends_on: _,   // start_order
            volumes: _,      // bind mounts of the volumes' directories
            expose: _,       // nothing to do: no network but loopback
            ports,
            tty,
            stdin_open,
            init,
            labels: _,       // the container's labels
            cap_drop: _,     // the spec's capabilities
            cap_add: _,      // the spec's capabilities
            security_opt: _, // checked in spec_of
            read_only: _,    // root.readonly
            tmpfs: _,        // tmpfs mounts
        } = s;
        if !ports.is_empty() {
            let list: Vec<String> = ports.iter().map(|p| p.container_port()).collect();
            bail!(
                "service {service} publishes {} on the host: containerd without CNI gives its \
                 tasks no network but loopback, so `up` cannot publish ports there. Reach the \
                 service inside its network namespace (nsenter --net=/proc/PID/ns/net), or \
                 remove `ports` from the plan, or run the plan on Docker",
                list.join(", ")
            );
        }
        if *tty || *stdin_open {
            bail!(
                "service {service} asks for a terminal or an open stdin (`tty`/`stdin_open`), \
                 which `up` on containerd does not give (its tasks run without standard \
                 input): remove them from the plan, or run the plan on Docker"
            );
        }
        if *init {
            bail!(
                "service {service} runs Docker's init as PID 1 (`init: true`), which containerd \
                 has not: remove it from the plan, or run the plan on Docker"
            );
        }
    }
    plan.start_order().map(|_| ())
}

/// How a task is started: its spec's inputs beyond the image.
struct SpecInput<'a> {
    id: &'a str,
    namespace: &'a str,
    config: &'a ImageConfiguration,
    service: &'a str,
    s: &'a ComposeService,
    /// (uid, gid, additional gids).
    user: (u32, u32, Vec<u32>),
    /// Volumes as (host directory, mount point).
    binds: Vec<(PathBuf, String)>,
    /// The network namespace to join; None: a new one.
    netns: Option<PathBuf>,
    /// The command, when not the image's (the seed's copy).
    args: Option<Vec<String>>,
}

/// The OCI runtime spec of a service's task.
fn spec_of(input: SpecInput<'_>) -> Result<Spec> {
    let SpecInput {
        id,
        namespace,
        config,
        service,
        s,
        user,
        binds,
        netns,
        args,
    } = input;
    let c = config.config().clone().unwrap_or_default();
    let args = match args {
        Some(a) => a,
        None => c
            .entrypoint()
            .iter()
            .flatten()
            .chain(c.cmd().iter().flatten())
            .cloned()
            .collect(),
    };
    if args.is_empty() {
        bail!("service {service}: its image has no entrypoint or command to run");
    }
    let mut env = c.env().clone().unwrap_or_default();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    }
    let mut no_new_privileges = false;
    let mut seccomp = None;
    for opt in &s.security_opt {
        if opt == "no-new-privileges:true" || opt == "no-new-privileges" {
            no_new_privileges = true;
        } else if opt == "no-new-privileges:false" || opt == "seccomp=unconfined" {
        } else if let Some(profile) = opt.strip_prefix("seccomp=") {
            seccomp = Some(
                oci_seccomp(profile)
                    .with_context(|| format!("service {service}: its seccomp profile"))?,
            );
        } else {
            bail!(
                "service {service}: security_opt {opt:?} is not one `up` on containerd can \
                 honour (it takes no-new-privileges and seccomp=FILE): remove it, or run the \
                 plan on Docker"
            );
        }
    }
    let mut caps: BTreeSet<String> = if s.cap_drop.iter().any(|c| c == "ALL") {
        BTreeSet::new()
    } else {
        DOCKER_DEFAULT_CAPS
            .iter()
            .map(|c| (*c).to_owned())
            .collect()
    };
    let name = |c: &str| c.trim_start_matches("CAP_").to_ascii_uppercase();
    for c in s.cap_drop.iter().filter(|c| *c != "ALL") {
        caps.remove(&name(c));
    }
    caps.extend(s.cap_add.iter().map(|c| name(c)));
    let caps: std::collections::HashSet<Capability> = caps
        .iter()
        .map(|c| {
            serde_json::from_value(serde_json::Value::String(c.clone())).with_context(|| {
                format!("service {service}: capability {c:?} is not one Linux has")
            })
        })
        .collect::<Result<_>>()?;
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
        .inheritable(std::collections::HashSet::new())
        .ambient(std::collections::HashSet::new())
        .build()?;
    let (uid, gid, groups) = user;
    let mut user = UserBuilder::default().uid(uid).gid(gid);
    if !groups.is_empty() {
        user = user.additional_gids(groups);
    }
    let cwd = c
        .working_dir()
        .clone()
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| "/".to_owned());
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(user.build()?)
        .args(args)
        .env(env)
        .cwd(cwd)
        .no_new_privileges(no_new_privileges)
        .capabilities(capabilities)
        // None of its own: the limits containerd's shim runs with, as a
        // Docker container gets dockerd's.
        .rlimits(Vec::new())
        .build()?;

    // The runtime's usual file systems, then the volumes and the tmpfs.
    let mut mounts: Vec<Mount> = oci_spec::runtime::get_default_mounts();
    for (host, target) in binds {
        mounts.push(
            MountBuilder::default()
                .destination(target)
                .typ("bind")
                .source(host)
                .options(vec!["rbind".to_owned(), "rw".to_owned()])
                .build()?,
        );
    }
    for (dir, opts) in tmpfs_map(&s.tmpfs) {
        // Docker's defaults, which the plan's options follow (and may undo).
        let mut options: Vec<String> = ["noexec", "nosuid", "nodev"].map(String::from).into();
        options.extend(opts.split(',').filter(|o| !o.is_empty()).map(String::from));
        mounts.push(
            MountBuilder::default()
                .destination(dir)
                .typ("tmpfs")
                .source("tmpfs")
                .options(options)
                .build()?,
        );
    }
    let mut namespaces = Vec::new();
    for typ in [
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
    ] {
        namespaces.push(LinuxNamespaceBuilder::default().typ(typ).build()?);
    }
    let mut network = LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::Network);
    if let Some(path) = netns {
        network = network.path(path);
    }
    namespaces.push(network.build()?);
    let resources = LinuxResourcesBuilder::default()
        .devices(vec![
            LinuxDeviceCgroupBuilder::default()
                .allow(false)
                .access("rwm")
                .build()?,
        ])
        .build()?;
    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .resources(resources)
        .cgroups_path(PathBuf::from(format!("/{namespace}/{id}")))
        .masked_paths(oci_spec::runtime::get_default_maskedpaths())
        .readonly_paths(oci_spec::runtime::get_default_readonly_paths());
    if let Some(seccomp) = seccomp {
        linux = linux.seccomp(seccomp);
    }
    let spec = SpecBuilder::default()
        .version("1.0.2")
        .hostname(id)
        .process(process)
        .root(
            RootBuilder::default()
                .path("rootfs")
                .readonly(s.read_only)
                .build()?,
        )
        .mounts(mounts)
        .linux(linux.build()?)
        .build()?;
    Ok(spec)
}

/// A seccomp profile in Docker's format (what emit writes, and Docker's
/// API takes) as the OCI runtime spec has it. What has no OCI form
/// (`archMap`, `includes`/`excludes`, which Docker resolves against the
/// host) is refused by name.
pub fn oci_seccomp(docker_profile: &str) -> Result<LinuxSeccomp> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    struct Profile {
        default_action: String,
        #[serde(default)]
        default_errno_ret: Option<u32>,
        #[serde(default)]
        architectures: Vec<String>,
        #[serde(default)]
        arch_map: Option<serde_json::Value>,
        #[serde(default)]
        flags: Vec<String>,
        #[serde(default)]
        syscalls: Vec<Rule>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    struct Rule {
        #[serde(default)]
        names: Vec<String>,
        #[serde(default)]
        name: Option<String>,
        action: String,
        #[serde(default)]
        errno_ret: Option<u32>,
        #[serde(default)]
        args: Vec<serde_json::Value>,
        #[serde(default)]
        comment: Option<String>,
        #[serde(default)]
        includes: Option<serde_json::Value>,
        #[serde(default)]
        excludes: Option<serde_json::Value>,
    }
    let empty = |v: &Option<serde_json::Value>| {
        v.as_ref().is_none_or(|v| {
            v.is_null()
                || v.as_object().is_some_and(|o| o.is_empty())
                || v.as_array().is_some_and(|a| a.is_empty())
        })
    };
    let p: Profile = serde_json::from_str(docker_profile)
        .context("not a seccomp profile in Docker's format (or one with keys up does not know)")?;
    if !empty(&p.arch_map) {
        bail!(
            "archMap (Docker picks the host's architectures from it) has no OCI form: list \
             the architectures in `architectures` instead"
        );
    }
    let mut syscalls = Vec::new();
    for r in p.syscalls {
        if !empty(&r.includes) || !empty(&r.excludes) {
            bail!(
                "the rule for {:?} has includes/excludes (Docker resolves them against the \
                 host's capabilities and kernel), which have no OCI form: resolve them into \
                 plain rules",
                r.names.first().or(r.name.as_ref())
            );
        }
        // A note for people: the spec has no place for it.
        let _ = r.comment;
        let mut names = r.names;
        names.extend(r.name);
        syscalls.push(serde_json::json!({
            "names": names,
            "action": r.action,
            "errnoRet": r.errno_ret,
            "args": (!r.args.is_empty()).then_some(r.args),
        }));
    }
    let oci = serde_json::json!({
        "defaultAction": p.default_action,
        "defaultErrnoRet": p.default_errno_ret,
        "architectures": (!p.architectures.is_empty()).then_some(p.architectures),
        "flags": (!p.flags.is_empty()).then_some(p.flags),
        "syscalls": syscalls,
    });
    let oci = strip_nulls(oci);
    serde_json::from_value(oci)
        .context("an action, architecture, flag or argument OCI does not know")
}

/// `rel` below the volume directory `dest`, refused when it would leave
/// it: `..`, or a symlink on the way (an image's symlink must not make
/// the copy write outside the volume).
fn volume_path(dest: &Path, rel: &str) -> Result<PathBuf> {
    let mut at = dest.to_path_buf();
    let parts: Vec<&str> = rel
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    for (i, part) in parts.iter().enumerate() {
        if *part == ".." {
            bail!("{rel:?} leaves the volume");
        }
        at.push(part);
        let last = i + 1 == parts.len();
        if !last && std::fs::symlink_metadata(&at).is_ok_and(|m| m.file_type().is_symlink()) {
            bail!("{rel:?} goes through the symlink {}", at.display());
        }
    }
    Ok(at)
}

/// Removes a file, symlink or directory tree; nothing when absent.
fn remove_any(path: &Path) -> Result<()> {
    let removed = match std::fs::symlink_metadata(path) {
        Err(_) => return Ok(()),
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
    };
    removed.with_context(|| format!("removing {}", path.display()))
}

fn strip_nulls(v: serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(o) => o
            .into_iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| (k, strip_nulls(v)))
            .collect(),
        serde_json::Value::Array(a) => a.into_iter().map(strip_nulls).collect(),
        v => v,
    }
}

/// The uid, gid and additional gids `user` (`name`, `uid`, `name:group`,
/// `uid:gid`, empty for root) names, from the image's /etc/passwd and
/// /etc/group, as Docker resolves them.
pub fn user_ids(user: &str, passwd: &str, group: &str) -> Result<(u32, u32, Vec<u32>)> {
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let entries = |text: &str| -> Vec<Vec<String>> {
        text.lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .map(|l| l.split(':').map(str::to_owned).collect())
            .collect()
    };
    let users = entries(passwd);
    let groups = entries(group);
    let found = users
        .iter()
        .find(|f| f.len() > 3 && (f[0] == u || (u.parse::<u32>().is_ok() && f[2] == u)));
    let uid: u32 = match (u.parse(), found) {
        _ if u.is_empty() => 0,
        (Ok(uid), _) => uid,
        (Err(_), Some(f)) => f[2]
            .parse()
            .with_context(|| format!("user {u}: its uid in /etc/passwd is not a number"))?,
        (Err(_), None) => bail!(
            "user {u:?}: not in the image's /etc/passwd, so containerd cannot run as it (give \
             a numeric uid:gid)"
        ),
    };
    let gid: u32 = match g {
        Some(g) => match g.parse() {
            Ok(gid) => gid,
            Err(_) => groups
                .iter()
                .find(|f| f.len() > 2 && f[0] == g)
                .and_then(|f| f[2].parse().ok())
                .with_context(|| format!("group {g:?}: not in the image's /etc/group"))?,
        },
        None => found
            .and_then(|f| f[3].parse().ok())
            // A uid the image does not list: group 0, as runc gives.
            .unwrap_or(0),
    };
    let name = found.map(|f| f[0].as_str());
    let mut extra: Vec<u32> = groups
        .iter()
        .filter(|f| f.len() > 3 && name.is_some_and(|n| f[3].split(',').any(|m| m == n)))
        .filter_map(|f| f[2].parse().ok())
        .filter(|g| *g != gid)
        .collect();
    extra.sort_unstable();
    extra.dedup();
    Ok((uid, gid, extra))
}

/// The chain id of a layer stack (OCI image spec): the snapshot name its
/// unpacked layers are committed under.
fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    use sha2::Digest;
    let mut out: Vec<String> = Vec::new();
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(parent) => format!(
                "sha256:{:x}",
                sha2::Sha256::digest(format!("{parent} {d}").as_bytes())
            ),
        };
        out.push(next);
    }
    out
}

/// What [`Containerd::walk_layers`] calls with each entry.
type LayerEntryFn<'a> =
    dyn FnMut(&str, &mut tar::Entry<'_, Box<dyn std::io::Read>>) -> Result<()> + 'a;

/// A service's image as the plan names it: by tag, checked to be the
/// configuration the plan names by digest.
struct ResolvedImage {
    name: String,
    manifest: String,
    config: ImageConfiguration,
}

impl Containerd {
    async fn resolve_image(
        &self,
        namespace: &str,
        service: &str,
        s: &ComposeService,
    ) -> Result<ResolvedImage> {
        let name = match s.labels.get(IMAGE_TAG_LABEL) {
            Some(tag) => tag.clone(),
            None if !s.image.starts_with("sha256:") => s.image.clone(),
            None => bail!(
                "service {service} names its image only by digest ({}), and containerd finds \
                 images by name: emit the plan again",
                s.image
            ),
        };
        let manifest = self
            .image_target(namespace, &name)
            .await?
            .with_context(|| {
                format!(
                    "service {service}: image {name} is not in containerd namespace {namespace} \
                 (see `ctr -n {namespace} images ls`): emit the plan again"
                )
            })?;
        let (_, m) = self.manifest(namespace, &manifest).await?;
        if s.image.starts_with("sha256:") && m.config().digest().to_string() != s.image {
            bail!(
                "service {service}: image {name} in namespace {namespace} is now {}, not the \
                 plan's {}: a later emit moved the tag; emit this plan again",
                m.config().digest(),
                s.image
            );
        }
        let config = self.image_config(namespace, &manifest).await?;
        Ok(ResolvedImage {
            name,
            manifest,
            config,
        })
    }

    /// Unpacks the image's layers into [`SNAPSHOTTER`] (those not there
    /// yet), under `lease`; returns the top layer's snapshot.
    async fn unpack(&self, namespace: &str, lease: &str, image: &ResolvedImage) -> Result<String> {
        let (_, manifest) = self.manifest(namespace, &image.manifest).await?;
        let diff_ids = image.config.rootfs().diff_ids().clone();
        if diff_ids.len() != manifest.layers().len() {
            bail!(
                "image {}: its configuration lists {} layers, its manifest {}",
                image.name,
                diff_ids.len(),
                manifest.layers().len()
            );
        }
        let chains = chain_ids(&diff_ids);
        let mut snapshots =
            api::snapshots::snapshots_client::SnapshotsClient::new(self.channel.clone());
        let mut diff = api::diff_client::DiffClient::new(self.channel.clone());
        let mut parent = String::new();
        for (layer, chain) in manifest.layers().iter().zip(&chains) {
            let stat = snapshots
                .stat(in_namespace(
                    namespace,
                    api::snapshots::StatSnapshotRequest {
                        snapshotter: SNAPSHOTTER.into(),
                        key: chain.clone(),
                    },
                )?)
                .await;
            match stat {
                Ok(_) => {
                    parent = chain.clone();
                    continue;
                }
                Err(s) if s.code() == Code::NotFound => {}
                Err(s) => return Err(s).with_context(|| format!("snapshot {chain}")),
            }
            let key = format!("cimplifier-unpack-{}-{chain}", std::process::id());
            let mounts = snapshots
                .prepare(leased(
                    namespace,
                    lease,
                    api::snapshots::PrepareSnapshotRequest {
                        snapshotter: SNAPSHOTTER.into(),
                        key: key.clone(),
                        parent: parent.clone(),
                        labels: HashMap::new(),
                    },
                )?)
                .await
                .with_context(|| format!("preparing a snapshot to unpack {}", layer.digest()))?
                .into_inner()
                .mounts;
            let applied = diff
                .apply(leased(
                    namespace,
                    lease,
                    api::ApplyRequest {
                        diff: Some(containerd_client::types::Descriptor {
                            media_type: layer.media_type().to_string(),
                            digest: layer.digest().to_string(),
                            size: layer.size() as i64,
                            annotations: HashMap::new(),
                        }),
                        mounts,
                        ..Default::default()
                    },
                )?)
                .await;
            if let Err(e) = applied {
                let _ = snapshots
                    .remove(in_namespace(
                        namespace,
                        api::snapshots::RemoveSnapshotRequest {
                            snapshotter: SNAPSHOTTER.into(),
                            key,
                        },
                    )?)
                    .await;
                return Err(e).with_context(|| format!("unpacking layer {}", layer.digest()));
            }
            let committed = snapshots
                .commit(leased(
                    namespace,
                    lease,
                    api::snapshots::CommitSnapshotRequest {
                        snapshotter: SNAPSHOTTER.into(),
                        name: chain.clone(),
                        key: key.clone(),
                        labels: HashMap::new(),
                    },
                )?)
                .await;
            match committed {
                Ok(_) => {}
                // Unpacked meanwhile by someone else.
                Err(s) if s.code() == Code::AlreadyExists => {
                    let _ = snapshots
                        .remove(in_namespace(
                            namespace,
                            api::snapshots::RemoveSnapshotRequest {
                                snapshotter: SNAPSHOTTER.into(),
                                key,
                            },
                        )?)
                        .await;
                }
                Err(s) => return Err(s).with_context(|| format!("committing snapshot {chain}")),
            }
            parent = chain.clone();
        }
        // As containerd's own unpacker does: the image's configuration
        // refers to its top snapshot, so the garbage collector keeps the
        // layers while the image exists. Without it they were the lease's
        // alone, and collected once `down` removed the last container
        // using them, while `ctr run`, which found them unpacked, went on
        // to build on them.
        let gc_ref = format!("containerd.io/gc.ref.snapshot.{SNAPSHOTTER}");
        let mut content = api::content_client::ContentClient::new(self.channel.clone());
        content
            .update(leased(
                namespace,
                lease,
                api::UpdateRequest {
                    info: Some(api::Info {
                        digest: manifest.config().digest().to_string(),
                        labels: HashMap::from([(gc_ref.clone(), parent.clone())]),
                        ..Default::default()
                    }),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec![format!("labels.{gc_ref}")],
                    }),
                },
            )?)
            .await
            .with_context(|| {
                format!(
                    "labelling image {}'s configuration with its unpacked layers",
                    image.name
                )
            })?;
        Ok(parent)
    }

    /// Calls `each` with every entry of the image's layers, lowest layer
    /// first, with its path relative to the root (no `./`).
    async fn walk_layers(
        &self,
        namespace: &str,
        image: &ResolvedImage,
        each: &mut LayerEntryFn<'_>,
    ) -> Result<()> {
        use std::io::{Read, Seek};
        let (_, manifest) = self.manifest(namespace, &image.manifest).await?;
        for layer in manifest.layers() {
            let digest = layer.digest().to_string();
            let mut blob = tempfile::tempfile()
                .context("a spool file for a layer (is the temporary directory writable?)")?;
            self.read_blob_into(namespace, &digest, &mut blob).await?;
            blob.rewind()?;
            let media = layer.media_type().to_string();
            let reader: Box<dyn Read> = if media.ends_with("gzip") {
                Box::new(flate2::read::GzDecoder::new(blob))
            } else if media.ends_with("zstd") {
                Box::new(zstd::Decoder::new(blob)?)
            } else if media.ends_with("tar") {
                Box::new(blob)
            } else {
                bail!(
                    "image {}: layer {digest} has media type {media}, not a tar",
                    image.name
                );
            };
            let mut tar = tar::Archive::new(reader);
            tar.set_preserve_permissions(true);
            tar.set_preserve_ownerships(true);
            tar.set_unpack_xattrs(true);
            let what = || format!("reading layer {digest} of {}", image.name);
            for entry in tar.entries().with_context(what)? {
                let mut e = entry.with_context(what)?;
                let path = e
                    .path()
                    .with_context(what)?
                    .to_string_lossy()
                    .trim_start_matches("./")
                    .trim_end_matches('/')
                    .to_owned();
                each(&path, &mut e).with_context(what)?;
            }
        }
        Ok(())
    }

    /// The image's /etc/passwd and /etc/group (empty when it has none):
    /// a later layer's file or whiteout wins.
    async fn user_files(&self, namespace: &str, image: &ResolvedImage) -> Result<(String, String)> {
        use std::io::Read;
        let mut files: [Option<Vec<u8>>; 2] = [None, None];
        self.walk_layers(namespace, image, &mut |path, e| {
            let slot = match path {
                "etc/passwd" | "etc/.wh.passwd" => 0,
                "etc/group" | "etc/.wh.group" => 1,
                // An opaque /etc hides the lower layers' files.
                "etc/.wh..wh..opq" => {
                    files = [None, None];
                    return Ok(());
                }
                _ => return Ok(()),
            };
            files[slot] = if path.contains(".wh.") {
                None
            } else {
                let mut data = Vec::new();
                e.read_to_end(&mut data)?;
                Some(data)
            };
            Ok(())
        })
        .await?;
        let text = |f: &Option<Vec<u8>>| {
            f.as_deref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default()
        };
        Ok((text(&files[0]), text(&files[1])))
    }

    /// Copies what the image holds at `mount` (a directory) into the empty
    /// volume directory `dest`, with owners, modes and extended
    /// attributes, the mount point's own onto `dest`: what Docker does for
    /// an empty volume mounted without `nocopy`.
    async fn copy_into_volume(
        &self,
        namespace: &str,
        image: &ResolvedImage,
        mount: &str,
        dest: &Path,
    ) -> Result<u64> {
        let prefix = mount.trim_matches('/').to_owned();
        let mut copied = 0u64;
        self.walk_layers(namespace, image, &mut |path, e| {
            let rel = if path == prefix {
                ""
            } else if let Some(rel) = path.strip_prefix(&prefix).and_then(|r| r.strip_prefix('/')) {
                rel
            } else {
                return Ok(());
            };
            let to = volume_path(dest, rel)?;
            let name = to.file_name().map(|n| n.to_string_lossy().into_owned());
            // Whiteouts of a later layer: what lower layers put there goes.
            if let Some(hidden) = name.as_deref().and_then(|n| n.strip_prefix(".wh.")) {
                let dir = to.parent().unwrap_or(dest);
                if hidden == ".wh..opq" {
                    for child in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                        remove_any(&child.path())?;
                    }
                } else {
                    remove_any(&dir.join(hidden))?;
                }
                return Ok(());
            }
            if rel.is_empty() {
                // The mount point: its owner, mode and attributes.
                if e.header().entry_type().is_dir() {
                    e.unpack(dest)?;
                }
                return Ok(());
            }
            if e.header().entry_type().is_hard_link() {
                let target = e
                    .link_name()?
                    .map(|l| l.to_string_lossy().trim_start_matches("./").to_owned())
                    .unwrap_or_default();
                let Some(within) = target.strip_prefix(&prefix).and_then(|r| r.strip_prefix('/'))
                else {
                    bail!(
                        "{path} is a hard link to {target}, outside the volume at {mount}:                          containerd's up cannot copy it into the volume"
                    );
                };
                let from = volume_path(dest, within)?;
                remove_any(&to)?;
                if let Some(parent) = to.parent() {
                    std::fs::create_dir_all(parent)
                        .with_context(|| format!("making {}", parent.display()))?;
                }
                std::fs::hard_link(&from, &to)
                    .with_context(|| format!("linking {} to {}", to.display(), from.display()))?;
                copied += 1;
                return Ok(());
            }
            if !e.header().entry_type().is_dir() {
                remove_any(&to)?;
            }
            // A layer need not list the directories on the way.
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("making {}", parent.display()))?;
            }
            e.unpack(&to)
                .with_context(|| format!("copying {path} into {}", to.display()))?;
            copied += 1;
            Ok(())
        })
        .await?;
        Ok(copied)
    }

    /// Creates container `id` on a new snapshot of `image` (unpacked
    /// first) with `spec`.
    async fn create_container(
        &self,
        namespace: &str,
        id: &str,
        image: &ResolvedImage,
        spec: &Spec,
        labels: HashMap<String, String>,
    ) -> Result<()> {
        let mut leases = api::leases_client::LeasesClient::new(self.channel.clone());
        let lease = leases
            .create(in_namespace(
                namespace,
                api::CreateRequest {
                    id: format!("cimplifier-up-{}-{id}", std::process::id()),
                    labels: HashMap::new(),
                },
            )?)
            .await
            .with_context(|| format!("taking a lease in {}", self.what()))?
            .into_inner()
            .lease
            .context("containerd gave no lease")?;
        let result = async {
            let top = self.unpack(namespace, &lease.id, image).await?;
            let mut snapshots =
                api::snapshots::snapshots_client::SnapshotsClient::new(self.channel.clone());
            snapshots
                .prepare(leased(
                    namespace,
                    &lease.id,
                    api::snapshots::PrepareSnapshotRequest {
                        snapshotter: SNAPSHOTTER.into(),
                        key: id.to_owned(),
                        parent: top,
                        labels: HashMap::new(),
                    },
                )?)
                .await
                .with_context(|| format!("preparing the root file system of {id}"))?;
            let container = api::Container {
                id: id.to_owned(),
                labels,
                image: image.name.clone(),
                runtime: Some(api::container::Runtime {
                    name: RUNTIME.into(),
                    options: None,
                }),
                spec: Some(prost_types::Any {
                    type_url: SPEC_TYPE_URL.into(),
                    value: serde_json::to_vec(spec)?,
                }),
                snapshotter: SNAPSHOTTER.into(),
                snapshot_key: id.to_owned(),
                ..Default::default()
            };
            let mut containers =
                api::containers_client::ContainersClient::new(self.channel.clone());
            let created = containers
                .create(leased(
                    namespace,
                    &lease.id,
                    api::CreateContainerRequest {
                        container: Some(container),
                    },
                )?)
                .await;
            if let Err(e) = created {
                let _ = self.remove_snapshot(namespace, id).await;
                return Err(e)
                    .with_context(|| format!("creating container {id} in {}", self.what()));
            }
            Ok(())
        }
        .await;
        let _ = leases
            .delete(in_namespace(
                namespace,
                api::DeleteRequest {
                    id: lease.id.clone(),
                    sync: false,
                },
            )?)
            .await;
        result
    }

    async fn remove_snapshot(&self, namespace: &str, key: &str) -> Result<()> {
        let mut snapshots =
            api::snapshots::snapshots_client::SnapshotsClient::new(self.channel.clone());
        match snapshots
            .remove(in_namespace(
                namespace,
                api::snapshots::RemoveSnapshotRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    key: key.to_owned(),
                },
            )?)
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(s).with_context(|| format!("removing snapshot {key}")),
        }
    }

    /// Creates and starts the task of container `at`, its output to `log`.
    pub async fn start_task(&self, at: &ContainerRef, log: &Path) -> Result<u32> {
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("making the log directory {}", dir.display()))?;
        }
        let mut snapshots =
            api::snapshots::snapshots_client::SnapshotsClient::new(self.channel.clone());
        let mounts = snapshots
            .mounts(in_namespace(
                &at.namespace,
                api::snapshots::MountsRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    key: at.id.clone(),
                },
            )?)
            .await
            .with_context(|| format!("the root file system of {at}"))?
            .into_inner()
            .mounts;
        let uri = format!("file://{}", log.display());
        let mut tasks = api::tasks_client::TasksClient::new(self.channel.clone());
        let created = tasks
            .create(in_namespace(
                &at.namespace,
                api::CreateTaskRequest {
                    container_id: at.id.clone(),
                    rootfs: mounts,
                    stdout: uri.clone(),
                    stderr: uri,
                    ..Default::default()
                },
            )?)
            .await
            .with_context(|| format!("creating the task of {at} in {}", self.what()))?
            .into_inner();
        self.start(at).await?;
        Ok(created.pid)
    }

    /// Waits until the task exits; its exit status.
    async fn wait_task(&self, at: &ContainerRef) -> Result<u32> {
        let mut tasks = api::tasks_client::TasksClient::new(self.channel.clone());
        let r = tasks
            .wait(in_namespace(
                &at.namespace,
                api::WaitRequest {
                    container_id: at.id.clone(),
                    exec_id: String::new(),
                },
            )?)
            .await
            .with_context(|| format!("waiting for the task of {at}"))?;
        Ok(r.into_inner().exit_status)
    }

    /// Stops (SIGTERM, then SIGKILL after `grace`) and deletes the task,
    /// then the container and its snapshot; whatever of it exists.
    pub async fn remove_container(&self, at: &ContainerRef, grace: Duration) -> Result<()> {
        if let Some((_, status, _)) = self.task_state(at).await? {
            if matches!(status, Status::Running | Status::Paused | Status::Pausing) {
                let _ = self
                    .signal(at, nix::sys::signal::Signal::SIGTERM, false)
                    .await;
                if tokio::time::timeout(grace, self.wait_task(at))
                    .await
                    .is_err()
                {
                    let _ = self.kill(at, nix::sys::signal::Signal::SIGKILL).await;
                    let _ = tokio::time::timeout(grace, self.wait_task(at)).await;
                }
            } else if status == Status::Created {
                let _ = self.kill(at, nix::sys::signal::Signal::SIGKILL).await;
                let _ = tokio::time::timeout(grace, self.wait_task(at)).await;
            }
            let mut tasks = api::tasks_client::TasksClient::new(self.channel.clone());
            match tasks
                .delete(in_namespace(
                    &at.namespace,
                    api::DeleteTaskRequest {
                        container_id: at.id.clone(),
                    },
                )?)
                .await
            {
                Ok(_) => {}
                Err(s) if s.code() == Code::NotFound => {}
                Err(s) => return Err(s).with_context(|| format!("deleting the task of {at}")),
            }
        }
        let snapshot = self
            .container(at)
            .await
            .ok()
            .flatten()
            .map(|c| c.snapshot_key);
        let mut containers = api::containers_client::ContainersClient::new(self.channel.clone());
        match containers
            .delete(in_namespace(
                &at.namespace,
                api::DeleteContainerRequest { id: at.id.clone() },
            )?)
            .await
        {
            Ok(_) => {}
            Err(s) if s.code() == Code::NotFound => {}
            Err(s) => return Err(s).with_context(|| format!("deleting container {at}")),
        }
        if let Some(key) = snapshot.filter(|k| !k.is_empty()) {
            self.remove_snapshot(&at.namespace, &key).await?;
        }
        Ok(())
    }

    /// The ids of the containers in `namespace` labelled `key=value`.
    async fn labelled(&self, namespace: &str, key: &str, value: &str) -> Result<Vec<String>> {
        let mut containers = api::containers_client::ContainersClient::new(self.channel.clone());
        let list = containers
            .list(in_namespace(
                namespace,
                api::ListContainersRequest {
                    filters: vec![format!("labels.\"{key}\"=={value}")],
                },
            )?)
            .await
            .with_context(|| {
                format!(
                    "listing the containers of namespace {namespace} in {}",
                    self.what()
                )
            })?
            .into_inner();
        Ok(list.containers.into_iter().map(|c| c.id).collect())
    }
}

/// The plan's containers `up` made: by plan id, or by project for a plan
/// without one.
async fn plan_containers(
    containerd: &Containerd,
    plan: &ComposeFile,
    ns: &str,
) -> Result<Vec<String>> {
    if plan.plan_id.is_empty() {
        containerd.labelled(ns, PROJECT_LABEL, &plan.name).await
    } else {
        containerd.labelled(ns, PLAN_LABEL, &plan.plan_id).await
    }
}

/// Loads a plan for containerd: checked, its seccomp profiles inlined.
pub fn load(path: &Path) -> Result<(PathBuf, ComposeFile, String)> {
    let (file, mut plan) = ComposeFile::load(path)?;
    let namespace = namespace_of(&plan)
        .with_context(|| format!("{}: not a plan emitted into containerd", file.display()))?
        .to_owned();
    check(&plan).with_context(|| format!("{}: cannot start on containerd", file.display()))?;
    plan.inline_seccomp_profiles(file.parent().unwrap_or(Path::new(".")))?;
    Ok((file, plan, namespace))
}

/// The engine's start on containerd, as a [`Starter`]: the task with its
/// output to its log.
pub fn engine_start(
    containerd: &Containerd,
    namespace: &str,
) -> impl Fn(String) -> futures::future::BoxFuture<'static, Result<()>> + Sync + use<> {
    let containerd = containerd.clone();
    let namespace = namespace.to_owned();
    move |id: String| -> futures::future::BoxFuture<'static, Result<()>> {
        let containerd = containerd.clone();
        let at = ContainerRef {
            namespace: namespace.clone(),
            id,
        };
        let log = StateDirs::new(&at.namespace).log(&at.id);
        Box::pin(async move { containerd.start_task(&at, &log).await.map(drop) })
    }
}

/// What an `up` made, to be removed if it fails.
#[derive(Default)]
struct Made {
    volumes: Vec<String>,
    /// (service, container id), in the order created.
    containers: Vec<(String, String)>,
}

/// Makes the volumes that do not exist yet, fills them by the seed
/// service, and starts the other services in `opts.order`, each by
/// `start` (given the container id). All or nothing, as on Docker.
pub async fn up_with(
    containerd: &Containerd,
    path: &Path,
    opts: &UpOptions,
    start: Starter<'_>,
    progress: &dyn Fn(&str),
) -> Result<UpReport> {
    let (file, plan, ns) = load(path)?;
    up_plan(containerd, &file, &plan, &ns, opts, start, progress).await
}

/// [`up_with`] of a plan already loaded (and checked) from `file`.
pub async fn up_plan(
    containerd: &Containerd,
    file: &Path,
    plan: &ComposeFile,
    ns: &str,
    opts: &UpOptions,
    start: Starter<'_>,
    progress: &dyn Fn(&str),
) -> Result<UpReport> {
    let path = file;
    check(plan)?;
    if !opts.publish.is_empty() {
        bail!(
            "--publish: containerd without CNI gives its tasks no network but loopback, so \
             `up` cannot publish ports there; reach the plan inside its network namespace \
             (nsenter --net=/proc/PID/ns/net)"
        );
    }
    let dirs = StateDirs::new(ns);
    let existing = containerd.labelled(ns, PROJECT_LABEL, &plan.name).await?;
    if !existing.is_empty() {
        bail!(
            "project {} is already up in containerd namespace {ns} ({}); `cimplifierctl down \
             {}` stops it first",
            plan.name,
            existing.join(", "),
            path.display()
        );
    }
    let mut made = Made::default();
    let result = match start_all(
        containerd, plan, ns, &dirs, opts.order, start, progress, &mut made,
    )
    .await
    {
        Ok(r) if !opts.require_running => Ok(r),
        Ok(r) => match exited(containerd, ns, &dirs, &made, true).await {
            None => Ok(r),
            Some(cause) => Err(anyhow::anyhow!("{cause}")),
        },
        Err(e) => Err(match exited(containerd, ns, &dirs, &made, false).await {
            Some(cause) => e.context(cause),
            None => e,
        }),
    };
    match result {
        Ok((containers, seeded, kept)) => Ok(UpReport {
            project: plan.name.clone(),
            compose_file: file.to_path_buf(),
            containers,
            ip_address: None,
            seeded,
            kept,
            published: Vec::new(),
        }),
        Err(e) => {
            progress("rolling back");
            let undone = undo(containerd, ns, &dirs, &made).await;
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

#[allow(clippy::too_many_arguments)]
async fn start_all(
    containerd: &Containerd,
    plan: &ComposeFile,
    ns: &str,
    dirs: &StateDirs,
    order: StartOrder,
    start: Starter<'_>,
    progress: &dyn Fn(&str),
    made: &mut Made,
) -> Result<Started> {
    let (mut seeded, mut kept) = (Vec::new(), Vec::new());
    for name in plan.volumes.keys() {
        let full = plan.volume_name(name);
        let dir = dirs.volume(&full);
        if dir.exists() {
            progress(&format!(
                "volume {full} exists ({}): it keeps its data",
                dir.display()
            ));
            kept.push(name.clone());
            continue;
        }
        let data = dirs.volume_data(&full);
        std::fs::create_dir_all(&data)
            .with_context(|| format!("making volume {full} at {}", data.display()))?;
        made.volumes.push(full.clone());
        std::fs::write(dirs.volume_owner(&full), format!("{}\n", plan.plan_id))
            .with_context(|| format!("writing the owner of volume {full}"))?;
        seeded.push(name.clone());
    }
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
        let id = plan.container_name(SEED_SERVICE);
        made.containers.push((SEED_SERVICE.to_owned(), id.clone()));
        progress(&format!(
            "seeding {} from the source image",
            seeded.join(", ")
        ));
        let at = ContainerRef {
            namespace: ns.to_owned(),
            id: id.clone(),
        };
        create(
            containerd,
            plan,
            ns,
            dirs,
            SEED_SERVICE,
            Some(&seeded),
            None,
        )
        .await?;
        containerd.start_task(&at, &dirs.log(&id)).await?;
        let status = containerd.wait_task(&at).await?;
        if status != 0 {
            bail!(
                "the seed container {id} exited with {status} before the volumes were filled{}",
                log_tail(&dirs.log(&id))
            );
        }
        containerd.remove_container(&at, STOP_GRACE).await?;
        let _ = std::fs::remove_file(dirs.log(&id));
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
        let id = plan.container_name(service);
        let shown = s.labels.get(IMAGE_TAG_LABEL).unwrap_or(&s.image);
        progress(&format!("starting {id} ({shown})"));
        if !s.security_opt.iter().any(|o| o.starts_with("seccomp=")) {
            // Said, not silent: the same plan is filtered on Docker.
            progress(&format!(
                "warning: service {service} names no seccomp profile, and containerd applies \
                 none by default (Docker applies its own): it runs unfiltered"
            ));
        }
        let netns = match s.network_owner() {
            Some(owner) => {
                let at = ContainerRef {
                    namespace: ns.to_owned(),
                    id: plan.container_name(owner),
                };
                let pid = match containerd.task_state(&at).await? {
                    Some((pid, Status::Running | Status::Created, _)) if pid > 0 => pid,
                    _ => bail!(
                        "service {service} joins the network namespace of {owner}, whose task \
                         is not running"
                    ),
                };
                Some(PathBuf::from(format!("/proc/{pid}/ns/net")))
            }
            None => None,
        };
        create(containerd, plan, ns, dirs, service, None, netns).await?;
        made.containers.push((service.to_owned(), id.clone()));
        start(id.clone()).await?;
        containers.push(StartedService {
            service: service.to_owned(),
            container: id.clone(),
            id,
        });
    }
    Ok((containers, seeded, kept))
}

/// Creates `service`'s container; `seed_only` makes it the seed's copy of
/// those volumes.
async fn create(
    containerd: &Containerd,
    plan: &ComposeFile,
    ns: &str,
    dirs: &StateDirs,
    service: &str,
    seed_only: Option<&[String]>,
    netns: Option<PathBuf>,
) -> Result<()> {
    let s = &plan.services[service];
    let id = plan.container_name(service);
    let image = containerd.resolve_image(ns, service, s).await?;
    let mut binds = Vec::new();
    for v in &s.volumes {
        let (vol, target, nocopy) = split_volume(v)?;
        // As Docker: an empty volume mounted without nocopy is filled
        // from this image (the seed's volumes are filled by its copy).
        if seed_only.is_none() && !nocopy {
            let data = dirs.volume_data(&plan.volume_name(vol));
            let empty = std::fs::read_dir(&data)
                .with_context(|| format!("volume {vol} ({})", data.display()))?
                .next()
                .is_none();
            if empty {
                containerd
                    .copy_into_volume(ns, &image, target, &data)
                    .await
                    .with_context(|| {
                        format!(
                            "service {service}: filling volume {vol} from its image at {target}"
                        )
                    })?;
            }
        }
        let target = match seed_only {
            Some(only) if !only.iter().any(|o| o == vol) => continue,
            Some(_) => {
                let Some(staged) = target.strip_prefix(SEED_DIR) else {
                    bail!("the seed service mounts {target}, not below {SEED_DIR}");
                };
                format!("{FILL_DIR}{staged}")
            }
            None => target.to_owned(),
        };
        binds.push((dirs.volume_data(&plan.volume_name(vol)), target));
    }
    let (args, service_settings, user) = match seed_only {
        Some(_) => {
            let seed = ComposeService {
                cap_drop: vec!["ALL".into()],
                cap_add: SEED_CAPS.map(String::from).into(),
                security_opt: vec!["no-new-privileges:true".into()],
                read_only: true,
                ..Default::default()
            };
            let args = vec![SEED_COPY_PROGRAM.into(), SEED_DIR.into(), FILL_DIR.into()];
            (Some(args), seed, (0, 0, Vec::new()))
        }
        None => {
            let user = image
                .config
                .config()
                .as_ref()
                .and_then(|c| c.user().clone())
                .unwrap_or_default();
            let numeric = user.split(':').all(|p| p.parse::<u32>().is_ok());
            let ids = if user.is_empty() {
                (0, 0, Vec::new())
            } else if numeric && user.contains(':') {
                user_ids(&user, "", "")?
            } else {
                let (passwd, group) = containerd.user_files(ns, &image).await?;
                user_ids(&user, &passwd, &group)
                    .with_context(|| format!("service {service} (image {})", image.name))?
            };
            (None, s.clone(), ids)
        }
    };
    let spec = spec_of(SpecInput {
        id: &id,
        namespace: ns,
        config: &image.config,
        service,
        s: &service_settings,
        user,
        binds,
        netns,
        args,
    })?;
    let mut labels: HashMap<String, String> = s.labels.clone().into_iter().collect();
    plan.own_labels(&mut labels);
    labels.insert(SERVICE_LABEL.into(), service.to_owned());
    containerd
        .create_container(ns, &id, &image, &spec, labels)
        .await
}

/// The last lines of a task's log, for an error.
fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = &lines[lines.len().saturating_sub(20)..];
    if tail.is_empty() {
        return ", printing nothing".to_owned();
    }
    let shown: Vec<String> = tail
        .iter()
        .map(|l| {
            let mut end = l.len().min(300);
            while !l.is_char_boundary(end) {
                end -= 1;
            }
            format!("    {}", &l[..end])
        })
        .collect();
    format!(
        "; its last log lines ({}):\n{}",
        log.display(),
        shown.join("\n")
    )
}

/// The first container `up` made whose task has stopped (with
/// `failed_only`, with a non-zero status).
async fn exited(
    containerd: &Containerd,
    ns: &str,
    dirs: &StateDirs,
    made: &Made,
    failed_only: bool,
) -> Option<String> {
    for (service, id) in &made.containers {
        let at = ContainerRef {
            namespace: ns.to_owned(),
            id: id.clone(),
        };
        let Ok(Some((_, status, code))) = containerd.task_state(&at).await else {
            continue;
        };
        if status != Status::Stopped || (failed_only && code == 0) {
            continue;
        }
        return Some(format!(
            "partition {service} (container {id}) exited with code {code} as it started{}",
            log_tail(&dirs.log(id))
        ));
    }
    None
}

async fn undo(containerd: &Containerd, ns: &str, dirs: &StateDirs, made: &Made) -> Result<()> {
    let mut first = None;
    for (_, id) in made.containers.iter().rev() {
        let at = ContainerRef {
            namespace: ns.to_owned(),
            id: id.clone(),
        };
        first = first.or(containerd.remove_container(&at, STOP_GRACE).await.err());
        let _ = std::fs::remove_file(dirs.log(id));
    }
    for full in &made.volumes {
        let dir = dirs.volume(full);
        let r = std::fs::remove_dir_all(&dir)
            .with_context(|| format!("removing volume {full} ({})", dir.display()));
        first = first.or(r.err());
    }
    dirs.tidy();
    first.map_or(Ok(()), Err)
}

/// Stops and removes the plan's containers (tasks, containers, their
/// snapshots), the first started last; with `volumes`, its volumes too.
pub async fn down(
    containerd: &Containerd,
    path: &Path,
    volumes: bool,
    progress: &dyn Fn(&str),
) -> Result<Vec<String>> {
    let (file, plan) = ComposeFile::load(path)?;
    if namespace_of(&plan).is_none() {
        bail!("{}: not a plan emitted into containerd", file.display());
    }
    down_plan(containerd, &plan, volumes, progress).await
}

/// [`down`] of a plan already loaded.
pub async fn down_plan(
    containerd: &Containerd,
    plan: &ComposeFile,
    volumes: bool,
    progress: &dyn Fn(&str),
) -> Result<Vec<String>> {
    check(plan)?;
    let ns = namespace_of(plan).unwrap_or_default().to_owned();
    let dirs = StateDirs::new(&ns);
    let running = plan_containers(containerd, plan, &ns).await?;
    let mut order: Vec<String> = plan
        .start_order()?
        .into_iter()
        .map(|s| plan.container_name(s))
        .collect();
    order.reverse();
    let mut all: Vec<String> = running
        .iter()
        .filter(|c| !order.contains(c))
        .cloned()
        .collect();
    all.extend(order.into_iter().filter(|c| running.contains(c)));
    let mut removed = Vec::new();
    for id in all {
        progress(&format!("stopping {id}"));
        let at = ContainerRef {
            namespace: ns.clone(),
            id: id.clone(),
        };
        containerd.remove_container(&at, STOP_GRACE).await?;
        let _ = std::fs::remove_file(dirs.log(&id));
        removed.push(id);
    }
    if volumes {
        for v in plan.volumes.keys() {
            let full = plan.volume_name(v);
            let dir = dirs.volume(&full);
            if !dir.exists() {
                continue;
            }
            let owner = std::fs::read_to_string(dirs.volume_owner(&full)).unwrap_or_default();
            if !plan.plan_id.is_empty() && owner.trim() != plan.plan_id {
                progress(&format!("volume {full} is not this plan's: left alone"));
                continue;
            }
            progress(&format!("removing volume {full}"));
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("removing volume {full} ({})", dir.display()))?;
            removed.push(full);
        }
    }
    dirs.tidy();
    Ok(removed)
}

/// The init pid of a started container's task (created or running).
pub async fn task_pid(containerd: &Containerd, at: &ContainerRef) -> Result<Option<u32>> {
    Ok(containerd
        .task_state(at)
        .await?
        .filter(|(pid, status, _)| *pid > 0 && matches!(status, Status::Running | Status::Created))
        .map(|(pid, _, _)| pid))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docker::compose::ComposePort;

    fn image(user: &str) -> ImageConfiguration {
        serde_json::from_value(serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Entrypoint": ["/srv"], "Cmd": ["--config", "/c"], "Env": ["A=1"], "User": user, "WorkingDir": "/w"},
            "rootfs": {"type": "layers", "diff_ids": []}
        }))
        .unwrap()
    }

    fn plan_with(s: ComposeService) -> ComposeFile {
        ComposeFile {
            name: "p".into(),
            plan_id: "0123".into(),
            containerd_namespace: Some("ns".into()),
            services: [("a".to_owned(), s)].into(),
            volumes: Default::default(),
        }
    }

    #[test]
    fn what_containerd_cannot_honour_is_refused_by_name() {
        let ok = ComposeService {
            image: "sha256:aa".into(),
            ..Default::default()
        };
        check(&plan_with(ok.clone())).unwrap();
        let published = ComposeService {
            ports: vec![ComposePort::parse_publish("8080:80").unwrap()],
            ..ok.clone()
        };
        let e = format!("{:#}", check(&plan_with(published)).unwrap_err());
        assert!(e.contains("80/tcp") && e.contains("CNI"), "{e}");
        let tty = ComposeService {
            tty: true,
            ..ok.clone()
        };
        let e = format!("{:#}", check(&plan_with(tty)).unwrap_err());
        assert!(e.contains("tty"), "{e}");
        let init = ComposeService {
            init: true,
            ..ok.clone()
        };
        let e = format!("{:#}", check(&plan_with(init)).unwrap_err());
        assert!(e.contains("init"), "{e}");
        let mut bad_ns = plan_with(ok);
        bad_ns.containerd_namespace = Some("../x".into());
        assert!(check(&bad_ns).is_err());
    }

    #[test]
    fn a_plan_records_its_containerd_namespace_and_docker_plans_stay_as_they_were() {
        let yaml =
            "name: p\nx-cimplifier-containerd-namespace: shop\nservices:\n  a:\n    image: i\n";
        let plan = ComposeFile::parse(yaml, Path::new("x.yml")).unwrap();
        assert_eq!(namespace_of(&plan), Some("shop"));
        assert_eq!(plan.to_yaml().unwrap(), yaml);
        let docker = ComposeFile::parse(
            "name: p\nservices:\n  a:\n    image: i\n",
            Path::new("x.yml"),
        )
        .unwrap();
        assert_eq!(namespace_of(&docker), None);
        assert!(!docker.to_yaml().unwrap().contains("containerd"));
    }

    #[test]
    fn the_spec_carries_the_image_and_the_plans_least_privilege() {
        let s = ComposeService {
            image: "sha256:aa".into(),
            cap_drop: vec!["ALL".into()],
            cap_add: vec!["NET_BIND_SERVICE".into()],
            security_opt: vec![
                "no-new-privileges:true".into(),
                "seccomp={\"defaultAction\":\"SCMP_ACT_ERRNO\",\"defaultErrnoRet\":1,\"architectures\":[\"SCMP_ARCH_X86_64\"],\"syscalls\":[{\"names\":[\"read\",\"write\"],\"action\":\"SCMP_ACT_ALLOW\"}]}".into(),
            ],
            read_only: true,
            tmpfs: vec!["/run:mode=755,uid=0,gid=0".into()],
            ..Default::default()
        };
        let config = image("www-data");
        let spec = spec_of(SpecInput {
            id: "p-a-1",
            namespace: "ns",
            config: &config,
            service: "a",
            s: &s,
            user: (33, 33, vec![4]),
            binds: vec![(PathBuf::from("/state/v/data"), "/run/rpe/to-b".into())],
            netns: Some(PathBuf::from("/proc/42/ns/net")),
            args: None,
        })
        .unwrap();
        let json = serde_json::to_value(&spec).unwrap();
        let p = &json["process"];
        assert_eq!(p["args"], serde_json::json!(["/srv", "--config", "/c"]));
        assert_eq!(p["cwd"], "/w");
        assert_eq!(
            p["user"],
            serde_json::json!({"uid": 33, "gid": 33, "additionalGids": [4]})
        );
        assert_eq!(p["noNewPrivileges"], true);
        assert_eq!(
            p["capabilities"]["bounding"],
            serde_json::json!(["CAP_NET_BIND_SERVICE"])
        );
        assert_eq!(p["capabilities"]["ambient"], serde_json::json!([]));
        assert!(p["env"].as_array().unwrap().iter().any(|e| e == "A=1"));
        assert_eq!(json["root"]["readonly"], true);
        assert_eq!(json["linux"]["cgroupsPath"], "/ns/p-a-1");
        let net = json["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["type"] == "network")
            .unwrap();
        assert_eq!(net["path"], "/proc/42/ns/net");
        assert_eq!(json["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(
            json["linux"]["seccomp"]["syscalls"][0]["names"],
            serde_json::json!(["read", "write"])
        );
        let mounts = json["mounts"].as_array().unwrap();
        let bind = mounts
            .iter()
            .find(|m| m["destination"] == "/run/rpe/to-b")
            .unwrap();
        assert_eq!(bind["source"], "/state/v/data");
        let tmpfs = mounts.iter().find(|m| m["destination"] == "/run").unwrap();
        assert_eq!(tmpfs["type"], "tmpfs");
        assert!(
            tmpfs["options"]
                .as_array()
                .unwrap()
                .iter()
                .any(|o| o == "uid=0")
        );

        // Without cap_drop ALL: Docker's defaults.
        let plain = ComposeService::default();
        let spec = spec_of(SpecInput {
            id: "p-a-1",
            namespace: "ns",
            config: &config,
            service: "a",
            s: &plain,
            user: (0, 0, vec![]),
            binds: vec![],
            netns: None,
            args: Some(vec!["/x".into()]),
        })
        .unwrap();
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(json["process"]["args"], serde_json::json!(["/x"]));
        assert_eq!(
            json["process"]["capabilities"]["bounding"]
                .as_array()
                .unwrap()
                .len(),
            14
        );
        assert_eq!(json["process"]["noNewPrivileges"], false);

        let apparmor = ComposeService {
            security_opt: vec!["apparmor=unconfined".into()],
            ..Default::default()
        };
        let e = spec_of(SpecInput {
            id: "p-a-1",
            namespace: "ns",
            config: &config,
            service: "a",
            s: &apparmor,
            user: (0, 0, vec![]),
            binds: vec![],
            netns: None,
            args: None,
        })
        .unwrap_err();
        assert!(e.to_string().contains("apparmor=unconfined"), "{e}");
    }

    #[test]
    fn dockers_seccomp_format_converts_and_what_has_no_oci_form_is_refused_by_name() {
        let ok = oci_seccomp(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":1,"architectures":["SCMP_ARCH_X86_64"],
               "syscalls":[{"names":["clone3"],"action":"SCMP_ACT_ERRNO","errnoRet":38},
                           {"name":"personality","action":"SCMP_ACT_ALLOW","args":[{"index":0,"value":0,"op":"SCMP_CMP_EQ"}],"comment":""}]}"#,
        )
        .unwrap();
        let json = serde_json::to_value(&ok).unwrap();
        assert_eq!(json["syscalls"][0]["errnoRet"], 38);
        assert_eq!(
            json["syscalls"][1]["names"],
            serde_json::json!(["personality"])
        );
        assert_eq!(json["syscalls"][1]["args"][0]["op"], "SCMP_CMP_EQ");
        let e = oci_seccomp(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","archMap":[{"architecture":"SCMP_ARCH_X86_64"}]}"#,
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("archMap"), "{e:#}");
        let e = oci_seccomp(r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["bpf"],"action":"SCMP_ACT_ALLOW","includes":{"caps":["CAP_SYS_ADMIN"]}}]}"#).unwrap_err();
        assert!(format!("{e:#}").contains("includes"), "{e:#}");
        let e =
            oci_seccomp(r#"{"defaultAction":"SCMP_ACT_ERRNO","listenerPath":"/x"}"#).unwrap_err();
        assert!(format!("{e:#}").contains("listenerPath"), "{e:#}");
        let e = oci_seccomp(r#"{"defaultAction":"SCMP_ACT_NOPE"}"#).unwrap_err();
        assert!(format!("{e:#}").contains("SCMP_ACT_NOPE"), "{e:#}");
    }

    #[test]
    fn users_resolve_from_the_images_passwd_and_group() {
        let passwd = "root:x:0:0::/root:/bin/sh\nwww-data:x:33:33::/var/www:/bin/false\n";
        let group = "root:x:0:\nwww-data:x:33:\nlog:x:4:www-data,other\n";
        assert_eq!(user_ids("", passwd, group).unwrap(), (0, 0, vec![]));
        assert_eq!(
            user_ids("www-data", passwd, group).unwrap(),
            (33, 33, vec![4])
        );
        assert_eq!(user_ids("33", passwd, group).unwrap(), (33, 33, vec![4]));
        assert_eq!(user_ids("1000:1000", "", "").unwrap(), (1000, 1000, vec![]));
        assert_eq!(
            user_ids("www-data:log", passwd, group).unwrap(),
            (33, 4, vec![])
        );
        let e = user_ids("nobody", passwd, group).unwrap_err();
        assert!(e.to_string().contains("nobody"), "{e}");
    }

    #[test]
    fn the_copy_into_a_volume_never_leaves_it() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("data");
        std::fs::create_dir_all(dest.join("sub")).unwrap();
        assert_eq!(volume_path(&dest, "sub/f").unwrap(), dest.join("sub/f"));
        assert_eq!(volume_path(&dest, "./sub//f").unwrap(), dest.join("sub/f"));
        assert!(volume_path(&dest, "../etc/passwd").is_err());
        assert!(volume_path(&dest, "sub/../../x").is_err());
        std::os::unix::fs::symlink("/etc", dest.join("link")).unwrap();
        let e = volume_path(&dest, "link/passwd").unwrap_err();
        assert!(e.to_string().contains("symlink"), "{e}");
        // The symlink itself may be replaced: it is the last component.
        assert_eq!(volume_path(&dest, "link").unwrap(), dest.join("link"));
        remove_any(&dest.join("link")).unwrap();
        assert!(
            std::fs::symlink_metadata("/etc").is_ok(),
            "removed the link, not its target"
        );
        remove_any(&dest.join("sub")).unwrap();
        remove_any(&dest.join("absent")).unwrap();
        assert_eq!(std::fs::read_dir(&dest).unwrap().count(), 0);
    }

    #[test]
    fn chain_ids_follow_the_oci_image_spec() {
        let a = "sha256:aaaa".to_owned();
        let b = "sha256:bbbb".to_owned();
        let chains = chain_ids(&[a.clone(), b]);
        assert_eq!(chains[0], a);
        use sha2::Digest;
        let want = format!(
            "sha256:{:x}",
            sha2::Sha256::digest(b"sha256:aaaa sha256:bbbb")
        );
        assert_eq!(chains[1], want);
    }
}
