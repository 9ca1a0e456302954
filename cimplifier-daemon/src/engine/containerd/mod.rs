//! containerd, through its gRPC API (the `containerd-client` crate): a
//! container named `containerd://NAMESPACE/ID` in any namespace (`k8s.io`
//! included), its task created and started by the daemon so that the
//! watch is in place before the first exec, its exit from containerd's
//! events, its image read from the content store, and an emitted image
//! written into the content store under a name that `ctr run` runs.
//!
//! The socket is `$CONTAINERD_ADDRESS` (as for `ctr`), else
//! [`DEFAULT_ADDRESS`].

use containerd_client::types::v1::Status as TaskStatus;
use std::collections::HashMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{Context, Result, bail};
use containerd_client::services::v1 as api;
use containerd_client::tonic::{Code, Request, transport::Channel};
use futures::{Stream, StreamExt};
use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};
use serde::{Deserialize, Serialize};

pub mod plan;

/// Where containerd listens unless `$CONTAINERD_ADDRESS` says otherwise.
pub const DEFAULT_ADDRESS: &str = "/run/containerd/containerd.sock";
/// The variable `ctr` also reads for the socket.
pub const ADDRESS_ENV: &str = "CONTAINERD_ADDRESS";
/// How a container is named for this backend: `containerd://NS/ID`.
pub const SCHEME: &str = "containerd://";

/// The CRI's labels, set on the containers of Kubernetes pods.
pub const POD_NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";
pub const POD_NAME_LABEL: &str = "io.kubernetes.pod.name";
pub const CONTAINER_NAME_LABEL: &str = "io.kubernetes.container.name";

/// A container in one of containerd's namespaces.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ContainerRef {
    pub namespace: String,
    pub id: String,
}

impl fmt::Display for ContainerRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}/{}", self.namespace, self.id)
    }
}

/// Why a `containerd://` name is not one.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "{0:?} is not a containerd container: write containerd://NAMESPACE/ID (for example \
     containerd://k8s.io/3f2a…, or containerd://default/web for `ctr -n default`)"
)]
pub struct BadRef(String);

impl ContainerRef {
    /// Whether `s` names a containerd container (so other engines leave it).
    pub fn is_one(s: &str) -> bool {
        s.starts_with(SCHEME)
    }
}

impl FromStr for ContainerRef {
    type Err = BadRef;
    fn from_str(s: &str) -> Result<Self, BadRef> {
        let bad = || BadRef(s.to_owned());
        let rest = s.strip_prefix(SCHEME).ok_or_else(bad)?;
        let (namespace, id) = rest.split_once('/').ok_or_else(bad)?;
        // containerd's identifiers: letters, digits, '.', '_', '-'.
        let ident = |x: &str| {
            !x.is_empty()
                && x.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        };
        if !ident(namespace) || !ident(id) {
            return Err(bad());
        }
        Ok(Self {
            namespace: namespace.to_owned(),
            id: id.to_owned(),
        })
    }
}

/// A container as containerd describes it, with its task if it has one.
#[derive(Clone, Debug)]
pub struct Container {
    pub at: ContainerRef,
    /// The image's name in the namespace's image store.
    pub image: String,
    /// What that name points to (an index or a manifest): the image's id.
    pub image_digest: String,
    pub labels: HashMap<String, String>,
    pub snapshotter: String,
    pub snapshot_key: String,
    /// The task's init process, when a task exists and runs.
    pub running_pid: Option<u32>,
    /// Where its OCI spec asks runc to put it (`linux.cgroupsPath`): a
    /// path for the cgroupfs driver, `slice:prefix:name` for systemd's.
    pub cgroups_path: Option<String>,
    /// Its OCI spec's annotations: where the CRI passes a pod's
    /// annotations (those its runtime handler's `pod_annotations` allow).
    pub annotations: HashMap<String, String>,
    /// Its OCI runtime spec (null when containerd holds none).
    pub spec: serde_json::Value,
}

impl Container {
    /// The session's name: `PODNAMESPACE_POD_CONTAINER` from the CRI's
    /// labels when all three are there ('_' is in no Kubernetes name), else
    /// the container's id.
    pub fn session_name(&self) -> String {
        session_name(&self.at, &self.labels)
    }
}

/// See [`Container::session_name`].
pub fn session_name(at: &ContainerRef, labels: &HashMap<String, String>) -> String {
    let cri = [POD_NAMESPACE_LABEL, POD_NAME_LABEL, CONTAINER_NAME_LABEL]
        .map(|k| labels.get(k).filter(|v| !v.is_empty()));
    match cri {
        [Some(ns), Some(pod), Some(c)] => format!("{ns}_{pod}_{c}"),
        _ => at.id.clone(),
    }
}

/// A task's end, from containerd's `/tasks/exit` event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exit {
    pub pid: u32,
    pub status: u32,
}

/// A connection to containerd.
#[derive(Clone)]
pub struct Containerd {
    channel: Channel,
    address: PathBuf,
}

/// A request in `namespace` whose new content `lease` keeps.
fn leased<T>(namespace: &str, lease: &str, msg: T) -> Result<Request<T>> {
    let mut r = in_namespace(namespace, msg)?;
    r.metadata_mut()
        .insert("containerd-lease", lease.parse().context("lease id")?);
    Ok(r)
}

fn in_namespace<T>(namespace: &str, msg: T) -> Result<Request<T>> {
    let mut req = Request::new(msg);
    req.metadata_mut().insert(
        "containerd-namespace",
        namespace
            .parse()
            .with_context(|| format!("containerd namespace {namespace:?}"))?,
    );
    Ok(req)
}

/// The digest's hex, checked to be a sha256 one (it becomes a file name).
fn sha256_hex(digest: &str) -> Result<&str> {
    digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .with_context(|| format!("content digest {digest:?} is not a sha256 one"))
}

impl Containerd {
    /// Connects to `$CONTAINERD_ADDRESS`, else [`DEFAULT_ADDRESS`].
    pub async fn connect() -> Result<Self> {
        let address = std::env::var_os(ADDRESS_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_ADDRESS));
        Self::connect_to(&address).await
    }

    pub async fn connect_to(address: &Path) -> Result<Self> {
        let channel = containerd_client::connect(address).await.with_context(|| {
            format!(
                "connecting to containerd at {} (is containerd running? set {ADDRESS_ENV} to \
                 its socket)",
                address.display()
            )
        })?;
        Ok(Self {
            channel,
            address: address.to_owned(),
        })
    }

    fn what(&self) -> String {
        format!("containerd at {}", self.address.display())
    }

    /// The container `at` and its task's state; None when it does not exist.
    pub async fn container(&self, at: &ContainerRef) -> Result<Option<Container>> {
        let mut containers = api::containers_client::ContainersClient::new(self.channel.clone());
        let got = containers
            .get(in_namespace(
                &at.namespace,
                api::GetContainerRequest { id: at.id.clone() },
            )?)
            .await;
        let c = match got {
            Ok(r) => r.into_inner().container.unwrap_or_default(),
            Err(s) if s.code() == Code::NotFound => return Ok(None),
            Err(s) => return Err(s).with_context(|| format!("looking up {at} in {}", self.what())),
        };
        let running_pid = self.task_pid(at).await?;
        let image_digest = self
            .image_target(&at.namespace, &c.image)
            .await?
            .with_context(|| {
                format!(
                    "container {at} runs image {}, which is not in namespace {}'s image store                      (see `ctr -n {} images ls`)",
                    c.image, at.namespace, at.namespace
                )
            })?;
        let spec: Option<serde_json::Value> = c
            .spec
            .as_ref()
            .and_then(|spec| serde_json::from_slice(&spec.value).ok());
        let cgroups_path = spec
            .as_ref()
            .and_then(|s| s["linux"]["cgroupsPath"].as_str().map(str::to_owned));
        let annotations = spec
            .as_ref()
            .and_then(|s| serde_json::from_value(s["annotations"].clone()).ok())
            .unwrap_or_default();
        Ok(Some(Container {
            at: at.clone(),
            image: c.image,
            image_digest,
            cgroups_path,
            annotations,
            spec: spec.unwrap_or_default(),
            labels: c.labels,
            snapshotter: c.snapshotter,
            snapshot_key: c.snapshot_key,
            running_pid,
        }))
    }

    /// The pid of the task's init process while it runs.
    pub async fn task_pid(&self, at: &ContainerRef) -> Result<Option<u32>> {
        Ok(self
            .task_state(at)
            .await?
            .filter(|&(pid, status, _)| status == TaskStatus::Running && pid > 0)
            .map(|(pid, ..)| pid))
    }

    /// The task's init pid, status and exit status, while a task exists.
    pub(super) async fn task_state(
        &self,
        at: &ContainerRef,
    ) -> Result<Option<(u32, TaskStatus, u32)>> {
        let mut tasks = api::tasks_client::TasksClient::new(self.channel.clone());
        let got = tasks
            .get(in_namespace(
                &at.namespace,
                api::GetRequest {
                    container_id: at.id.clone(),
                    exec_id: String::new(),
                },
            )?)
            .await;
        match got {
            Ok(r) => Ok(r.into_inner().process.map(|p| {
                (
                    p.pid,
                    TaskStatus::try_from(p.status).unwrap_or(TaskStatus::Unknown),
                    p.exit_status,
                )
            })),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(s).with_context(|| format!("the task of {at} in {}", self.what())),
        }
    }

    /// Creates the container's task on its snapshot, without standard
    /// streams: its init process waits in its cgroup until [`Self::start`],
    /// so nothing of the image has run yet. Returns the init's pid.
    pub async fn create_task(&self, c: &Container) -> Result<u32> {
        let at = &c.at;
        // A stopped task of an earlier run stays until deleted.
        let mut tasks = api::tasks_client::TasksClient::new(self.channel.clone());
        let _ = tasks
            .delete(in_namespace(
                &at.namespace,
                api::DeleteTaskRequest {
                    container_id: at.id.clone(),
                },
            )?)
            .await;
        let mut snapshots =
            api::snapshots::snapshots_client::SnapshotsClient::new(self.channel.clone());
        let mounts = snapshots
            .mounts(in_namespace(
                &at.namespace,
                api::snapshots::MountsRequest {
                    snapshotter: c.snapshotter.clone(),
                    key: c.snapshot_key.clone(),
                },
            )?)
            .await
            .with_context(|| {
                format!(
                    "the root file system of {at} (snapshot {} of snapshotter {}) in {}",
                    c.snapshot_key,
                    c.snapshotter,
                    self.what()
                )
            })?
            .into_inner()
            .mounts;
        let created = tasks
            .create(in_namespace(
                &at.namespace,
                api::CreateTaskRequest {
                    container_id: at.id.clone(),
                    rootfs: mounts,
                    ..Default::default()
                },
            )?)
            .await
            .with_context(|| format!("creating the task of {at} in {}", self.what()))?
            .into_inner();
        Ok(created.pid)
    }

    /// Starts the created task: its entrypoint's exec.
    pub async fn start(&self, at: &ContainerRef) -> Result<()> {
        let mut tasks = api::tasks_client::TasksClient::new(self.channel.clone());
        tasks
            .start(in_namespace(
                &at.namespace,
                api::StartRequest {
                    container_id: at.id.clone(),
                    exec_id: String::new(),
                },
            )?)
            .await
            .with_context(|| format!("starting the task of {at} in {}", self.what()))?;
        Ok(())
    }

    /// Sends `signal` to the task's processes.
    pub async fn kill(&self, at: &ContainerRef, signal: nix::sys::signal::Signal) -> Result<()> {
        self.signal(at, signal, true).await
    }

    /// Sends `signal` to the task's init process (`all`: to every process).
    pub async fn signal(
        &self,
        at: &ContainerRef,
        signal: nix::sys::signal::Signal,
        all: bool,
    ) -> Result<()> {
        let mut tasks = api::tasks_client::TasksClient::new(self.channel.clone());
        tasks
            .kill(in_namespace(
                &at.namespace,
                api::KillRequest {
                    container_id: at.id.clone(),
                    exec_id: String::new(),
                    signal: signal as u32,
                    all,
                },
            )?)
            .await
            .with_context(|| format!("sending {signal} to the task of {at} in {}", self.what()))?;
        Ok(())
    }

    /// The exits of the container's init process, from now on. The stream
    /// ends (or fails) when containerd goes away: the caller then asks
    /// [`Self::task_pid`] whether it still runs. containerd sends the
    /// subscription's headers only with its first event, so the call is
    /// made in a task of its own and its events forwarded.
    pub async fn exits(
        &self,
        at: &ContainerRef,
    ) -> Result<impl Stream<Item = Result<Exit>> + Send + use<>> {
        use prost::Message;
        let mut events = api::events_client::EventsClient::new(self.channel.clone());
        let filter = format!(
            "topic==\"/tasks/exit\",namespace=={},event.container_id=={}",
            at.namespace, at.id
        );
        let what = self.what();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let at = at.clone();
        tokio::spawn(async move {
            let subscribed = events
                .subscribe(api::SubscribeRequest {
                    filters: vec![filter],
                })
                .await;
            let mut stream = match subscribed {
                Ok(s) => s.into_inner(),
                Err(s) => {
                    let e = anyhow::Error::from(s)
                        .context(format!("subscribing to the events of {what}"));
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            loop {
                let envelope = match stream.message().await {
                    Ok(Some(e)) => e,
                    Ok(None) => return,
                    Err(s) => {
                        let _ = tx
                            .send(Err(anyhow::Error::from(s).context("containerd's events")))
                            .await;
                        return;
                    }
                };
                if envelope.namespace != at.namespace {
                    continue;
                }
                let Some(exit) = envelope.event.and_then(|any| {
                    containerd_client::events::TaskExit::decode(any.value.as_slice()).ok()
                }) else {
                    continue;
                };
                // The init process's exit (an exec's has the exec's id).
                if exit.container_id == at.id && exit.id == at.id {
                    let exit = Exit {
                        pid: exit.pid,
                        status: exit.exit_status,
                    };
                    if tx.send(Ok(exit)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(tokio_stream::wrappers::ReceiverStream::new(rx))
    }

    /// The containers created from now on, in every namespace (from
    /// containerd's `/containers/create` events; see [`Self::exits`] for
    /// why through a task).
    pub async fn created(&self) -> Result<impl Stream<Item = Result<ContainerRef>> + Send + use<>> {
        use prost::Message;
        let mut events = api::events_client::EventsClient::new(self.channel.clone());
        let what = self.what();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            let subscribed = events
                .subscribe(api::SubscribeRequest {
                    filters: vec!["topic==\"/containers/create\"".to_owned()],
                })
                .await;
            let mut stream = match subscribed {
                Ok(s) => s.into_inner(),
                Err(s) => {
                    let e = anyhow::Error::from(s)
                        .context(format!("subscribing to the events of {what}"));
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            loop {
                let envelope = match stream.message().await {
                    Ok(Some(e)) => e,
                    Ok(None) => return,
                    Err(s) => {
                        let e = anyhow::Error::from(s).context("containerd's events");
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                let Some(created) = envelope.event.and_then(|any| {
                    containerd_client::events::ContainerCreate::decode(any.value.as_slice()).ok()
                }) else {
                    continue;
                };
                let at = ContainerRef {
                    namespace: envelope.namespace,
                    id: created.id,
                };
                if tx.send(Ok(at)).await.is_err() {
                    return;
                }
            }
        });
        Ok(tokio_stream::wrappers::ReceiverStream::new(rx))
    }

    /// A blob of the content store, whole (manifests, indexes, configs).
    async fn read_blob(&self, namespace: &str, digest: &str) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.read_blob_into(namespace, digest, &mut out).await?;
        Ok(out)
    }

    async fn read_blob_into(
        &self,
        namespace: &str,
        digest: &str,
        out: &mut impl Write,
    ) -> Result<u64> {
        let mut content = api::content_client::ContentClient::new(self.channel.clone());
        let mut stream = content
            .read(in_namespace(
                namespace,
                api::ReadContentRequest {
                    digest: digest.to_owned(),
                    offset: 0,
                    size: 0,
                },
            )?)
            .await
            .with_context(|| {
                format!(
                    "reading {digest} from the content store of {} (namespace {namespace})",
                    self.what()
                )
            })?
            .into_inner();
        let mut n = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.with_context(|| format!("reading {digest}"))?;
            out.write_all(&chunk.data)
                .with_context(|| format!("spooling {digest} (is the disk full?)"))?;
            n += chunk.data.len() as u64;
        }
        Ok(n)
    }

    /// Where a workload reaches the running container `at`: loopback when
    /// its task shares the daemon's network namespace (`--net-host`), else
    /// the first IPv4 address of its own interfaces (a CNI's), with the TCP
    /// ports its image exposes; None when it has only loopback.
    pub async fn network_target(
        &self,
        at: &ContainerRef,
    ) -> Result<Option<super::docker::target::NetworkTarget>> {
        let c = self
            .container(at)
            .await?
            .with_context(|| format!("container {at} is gone"))?;
        let pid = c
            .running_pid
            .with_context(|| format!("container {at} has no running task"))?;
        let netns = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/net"));
        let shared = netns(&pid.to_string()).ok() == netns("self").ok();
        let (network_mode, address) = if shared {
            (
                "host",
                Some(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)),
            )
        } else {
            let trie = std::fs::read_to_string(format!("/proc/{pid}/net/fib_trie"))
                .with_context(|| format!("reading the addresses of {at}'s network namespace"))?;
            ("netns", local_ipv4(&trie).map(std::net::IpAddr::V4))
        };
        let Some(address) = address else {
            return Ok(None);
        };
        let config = self.image_config(&at.namespace, &c.image_digest).await?;
        let tcp_ports = exposed_tcp_ports(&config);
        Ok(Some(super::docker::target::NetworkTarget {
            network_mode: network_mode.to_owned(),
            address: Some(address),
            tcp_ports,
        }))
    }

    /// The configuration of the image `digest` (an index or a manifest).
    pub async fn image_config(&self, namespace: &str, digest: &str) -> Result<ImageConfiguration> {
        let (_, manifest) = self.manifest(namespace, digest).await?;
        let bytes = self
            .read_blob(namespace, manifest.config().digest().as_ref())
            .await?;
        ImageConfiguration::from_reader(&bytes[..])
            .with_context(|| format!("the configuration of image {digest}"))
    }

    /// The target digest of the image `name` in `namespace`.
    pub async fn image_target(&self, namespace: &str, name: &str) -> Result<Option<String>> {
        let mut images = api::images_client::ImagesClient::new(self.channel.clone());
        match images
            .get(in_namespace(
                namespace,
                api::GetImageRequest {
                    name: name.to_owned(),
                },
            )?)
            .await
        {
            Ok(r) => Ok(r
                .into_inner()
                .image
                .and_then(|i| i.target)
                .map(|t| t.digest)),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(s).with_context(|| format!("image {name} in {}", self.what())),
        }
    }

    /// The manifest for this host's platform below `digest` (a manifest,
    /// or an index of them, possibly nested), with its digest.
    async fn manifest(&self, namespace: &str, digest: &str) -> Result<(String, ImageManifest)> {
        let mut digest = digest.to_owned();
        for _ in 0..8 {
            let bytes = self.read_blob(namespace, &digest).await?;
            let json: serde_json::Value =
                serde_json::from_slice(&bytes).with_context(|| format!("{digest} is not JSON"))?;
            if json.get("manifests").is_none() {
                let m = ImageManifest::from_reader(&bytes[..])
                    .with_context(|| format!("reading the image manifest {digest}"))?;
                return Ok((digest, m));
            }
            let index = ImageIndex::from_reader(&bytes[..])
                .with_context(|| format!("reading the image index {digest}"))?;
            let arch = oci_spec::image::Arch::default();
            let chosen = index
                .manifests()
                .iter()
                .find(|d| {
                    d.platform().as_ref().is_none_or(|p| {
                        *p.architecture() == arch && *p.os() == oci_spec::image::Os::Linux
                    })
                })
                .with_context(|| format!("the image index {digest} has no manifest for {arch}"))?;
            digest = chosen.digest().to_string();
        }
        bail!("the image's indexes nest deeper than 8")
    }

    /// The image `digest` (its target in the image store) as an OCI image
    /// layout tar in an unnamed file in `dir`, for
    /// the image stage's reader (`ImageFs::from_archive_file`), with its
    /// configuration and the size of its layers as stored.
    pub async fn save_to_spool(
        &self,
        namespace: &str,
        digest: &str,
        dir: &Path,
        read: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<(std::fs::File, ImageConfiguration, u64)> {
        let (manifest_digest, manifest) = self.manifest(namespace, digest).await?;
        let manifest_bytes = self.read_blob(namespace, &manifest_digest).await?;
        let config_digest = manifest.config().digest().to_string();
        let config_bytes = self.read_blob(namespace, &config_digest).await?;
        let config = ImageConfiguration::from_reader(&config_bytes[..])
            .with_context(|| format!("reading the image configuration {config_digest}"))?;
        let spool = tempfile::tempfile_in(dir).with_context(|| {
            format!(
                "making a spool file for image {digest} in the state directory {}: is it \
                 writable, with room for the image?",
                dir.display()
            )
        })?;
        let mut tar = tar::Builder::new(spool);
        let mut put = |name: &str, bytes: &[u8]| -> Result<()> {
            let mut h = tar::Header::new_ustar();
            h.set_mode(0o644);
            h.set_size(bytes.len() as u64);
            tar.append_data(&mut h, name, bytes)
                .with_context(|| format!("spooling {name} (is the disk full?)"))
        };
        let index = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": manifest_media_type(&manifest_bytes),
                "digest": manifest_digest,
                "size": manifest_bytes.len(),
            }],
        });
        put("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        put("index.json", &serde_json::to_vec(&index)?)?;
        put(
            &format!("blobs/sha256/{}", sha256_hex(&manifest_digest)?),
            &manifest_bytes,
        )?;
        put(
            &format!("blobs/sha256/{}", sha256_hex(&config_digest)?),
            &config_bytes,
        )?;
        let mut done = 0u64;
        for layer in manifest.layers() {
            let d = layer.digest().to_string();
            // Each layer through a file of its own, so none is held in memory.
            let mut blob = tempfile::tempfile_in(dir)
                .with_context(|| format!("a spool file for layer {d} in {}", dir.display()))?;
            let n = self.read_blob_into(namespace, &d, &mut blob).await?;
            done += n;
            read(done);
            use std::io::Seek;
            blob.rewind()?;
            let mut h = tar::Header::new_ustar();
            h.set_mode(0o644);
            h.set_size(n);
            tar.append_data(&mut h, format!("blobs/sha256/{}", sha256_hex(&d)?), blob)
                .with_context(|| format!("spooling layer {d} (is the disk full?)"))?;
        }
        let spool = tar.into_inner().context("finishing the spooled image")?;
        Ok((spool, config, done))
    }

    /// Writes `blobs` (config and layers first, the manifest last) into the
    /// content store and names the manifest `name` in the image store,
    /// under a lease so that containerd's garbage collector keeps them
    /// until the image refers to them.
    pub async fn load(
        &self,
        namespace: &str,
        name: &str,
        manifest: (&str, &[u8]),
        children: &[(&str, &[u8])],
    ) -> Result<()> {
        let mut leases = api::leases_client::LeasesClient::new(self.channel.clone());
        let expire = humantime::format_rfc3339_seconds(
            std::time::SystemTime::now() + std::time::Duration::from_secs(3600),
        )
        .to_string();
        let lease = leases
            .create(in_namespace(
                namespace,
                api::CreateRequest {
                    id: format!("cimplifier-load-{}", std::process::id()),
                    labels: [("containerd.io/gc.expire".to_owned(), expire)].into(),
                },
            )?)
            .await
            .with_context(|| format!("taking a lease in {}", self.what()))?
            .into_inner()
            .lease
            .context("containerd gave no lease")?;
        let result = async {
            for (digest, bytes) in children {
                self.write_blob(namespace, &lease.id, digest, bytes, HashMap::new())
                    .await?;
            }
            // The manifest refers to its config and layers for the
            // garbage collector.
            let gc_refs = children
                .iter()
                .enumerate()
                .map(|(i, (d, _))| (format!("containerd.io/gc.ref.content.{i}"), d.to_string()))
                .collect();
            self.write_blob(namespace, &lease.id, manifest.0, manifest.1, gc_refs)
                .await?;
            let image = api::Image {
                name: name.to_owned(),
                target: Some(containerd_client::types::Descriptor {
                    media_type: manifest_media_type(manifest.1).to_owned(),
                    digest: manifest.0.to_owned(),
                    size: manifest.1.len() as i64,
                    annotations: HashMap::new(),
                }),
                ..Default::default()
            };
            let mut images = api::images_client::ImagesClient::new(self.channel.clone());
            let exists = self.image_target(namespace, name).await?.is_some();
            if exists {
                images
                    .update(leased(
                        namespace,
                        &lease.id,
                        api::UpdateImageRequest {
                            image: Some(image),
                            update_mask: Some(prost_types::FieldMask {
                                paths: vec!["target".into()],
                            }),
                            source_date_epoch: None,
                        },
                    )?)
                    .await
                    .map(drop)
            } else {
                images
                    .create(leased(
                        namespace,
                        &lease.id,
                        api::CreateImageRequest {
                            image: Some(image),
                            source_date_epoch: None,
                        },
                    )?)
                    .await
                    .map(drop)
            }
            .with_context(|| format!("naming image {name} in {}", self.what()))
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

    async fn write_blob(
        &self,
        namespace: &str,
        lease: &str,
        digest: &str,
        bytes: &[u8],
        labels: HashMap<String, String>,
    ) -> Result<()> {
        use api::WriteAction;
        const CHUNK: usize = 1 << 20;
        let r#ref = format!("cimplifier-{digest}");
        let total = bytes.len() as i64;
        let mut reqs = Vec::new();
        for (i, chunk) in bytes.chunks(CHUNK).enumerate() {
            reqs.push(api::WriteContentRequest {
                action: WriteAction::Write as i32,
                r#ref: r#ref.clone(),
                total,
                offset: (i * CHUNK) as i64,
                data: chunk.to_vec(),
                ..Default::default()
            });
        }
        reqs.push(api::WriteContentRequest {
            action: WriteAction::Commit as i32,
            r#ref,
            total,
            expected: digest.to_owned(),
            offset: total,
            labels,
            ..Default::default()
        });
        let req = leased(namespace, lease, futures::stream::iter(reqs))?;
        let mut content = api::content_client::ContentClient::new(self.channel.clone());
        let written = content.write(req).await;
        let mut replies = match written {
            Ok(r) => r.into_inner(),
            // Already in the store: nothing to write.
            Err(s) if s.code() == Code::AlreadyExists => return Ok(()),
            Err(s) => {
                return Err(s).with_context(|| format!("writing {digest} into {}", self.what()));
            }
        };
        loop {
            match replies.message().await {
                Ok(Some(_)) => {}
                Ok(None) => return Ok(()),
                Err(s) if s.code() == Code::AlreadyExists => return Ok(()),
                Err(s) => {
                    return Err(s)
                        .with_context(|| format!("writing {digest} into {}", self.what()));
                }
            }
        }
    }

    /// The labels in the configuration of the image `name`, or None when
    /// it names none.
    pub async fn image_labels(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<HashMap<String, String>>> {
        let Some(target) = self.image_target(namespace, name).await? else {
            return Ok(None);
        };
        let (_, manifest) = self.manifest(namespace, &target).await?;
        let bytes = self
            .read_blob(namespace, manifest.config().digest().as_ref())
            .await?;
        let config = ImageConfiguration::from_reader(&bytes[..])
            .with_context(|| format!("the configuration of image {name}"))?;
        Ok(Some(
            config
                .config()
                .as_ref()
                .and_then(|c| c.labels().clone())
                .unwrap_or_default(),
        ))
    }
}

/// The cgroup v2 directory (below `mount`) of a `linux.cgroupsPath` as
/// runc's cgroupfs driver uses it (`/a/b`); None for the systemd driver's
/// `slice:prefix:name`, whose scope systemd makes.
pub fn cgroupfs_dir(cgroups_path: &str, mount: &Path) -> Option<PathBuf> {
    let rel = cgroups_path.strip_prefix('/')?;
    let safe = !rel.is_empty()
        && Path::new(rel)
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
    safe.then(|| mount.join(rel))
}

/// How the container ran, from its OCI spec (`process`, namespaces,
/// mounts) over its image's configuration, in the terms emit carries for
/// Docker's: what the spec says where it differs from the image.
pub fn run_settings(
    spec: &serde_json::Value,
    image: &ImageConfiguration,
) -> super::docker::run::RunSettings {
    let c = image.config().clone().unwrap_or_default();
    let strings = |v: &serde_json::Value| -> Vec<String> {
        serde_json::from_value(v.clone()).unwrap_or_default()
    };
    let p = &spec["process"];
    let args = strings(&p["args"]);
    let ep = c.entrypoint().clone().unwrap_or_default();
    let cmd = c.cmd().clone().unwrap_or_default();
    let some = |v: Vec<String>| (!v.is_empty()).then_some(v);
    let (entrypoint, cmd) = if args.iter().eq(ep.iter().chain(&cmd)) {
        (some(ep), some(cmd))
    } else if !ep.is_empty() && args.starts_with(&ep) {
        let rest = args[ep.len()..].to_vec();
        (some(ep), some(rest))
    } else {
        (some(args), None)
    };
    let image_user = c.user().clone().filter(|u| !u.is_empty());
    let (uid, gid) = (p["user"]["uid"].as_u64(), p["user"]["gid"].as_u64());
    let user = match (image_user, uid, gid) {
        (Some(u), _, _) => Some(u),
        (None, Some(0) | None, _) => None,
        (None, Some(uid), gid) => Some(format!("{uid}:{}", gid.unwrap_or(0))),
    };
    let cwd = p["cwd"].as_str().filter(|d| !d.is_empty());
    let working_dir = match (c.working_dir().clone().filter(|d| !d.is_empty()), cwd) {
        (image, None) => image,
        (None, Some("/")) => None,
        (_, Some(d)) => Some(d.to_owned()),
    };
    let mut exposed_ports = c.exposed_ports().clone().unwrap_or_default();
    exposed_ports.sort();
    // What the spec gives that emit does not carry, as `docker run` flags.
    let mut left_out = Vec::new();
    // No network namespace of its own: the host's.
    if let Some(namespaces) = spec["linux"]["namespaces"].as_array()
        && !namespaces.iter().any(|n| n["type"] == "network")
    {
        left_out.push("--network host".to_owned());
    }
    for m in spec["mounts"].as_array().into_iter().flatten() {
        let (Some(src), Some(dst)) = (m["source"].as_str(), m["destination"].as_str()) else {
            continue;
        };
        let bind = m["type"] == "bind"
            || m["options"]
                .as_array()
                .is_some_and(|o| o.iter().any(|x| x == "bind" || x == "rbind"));
        // The runtime's own (/etc/hosts, resolv.conf with --net-host).
        let own = ["/etc/hosts", "/etc/resolv.conf", "/etc/hostname"].contains(&dst);
        if bind && !own {
            let ro = m["options"]
                .as_array()
                .is_some_and(|o| o.iter().any(|x| x == "ro"));
            left_out.push(format!("-v {src}:{dst}{}", if ro { ":ro" } else { "" }));
        }
    }
    super::docker::run::RunSettings {
        entrypoint,
        cmd,
        env: strings(&p["env"]),
        user,
        working_dir,
        exposed_ports,
        stop_signal: c.stop_signal().clone().filter(|s| !s.is_empty()),
        runtime: super::docker::run::RuntimeSettings {
            tty: p["terminal"].as_bool() == Some(true),
            ..Default::default()
        },
        left_out,
    }
}

/// The first local IPv4 address other than loopback in a network
/// namespace's `/proc/net/fib_trie` (an address line, then `/32 host
/// LOCAL`).
fn local_ipv4(fib_trie: &str) -> Option<std::net::Ipv4Addr> {
    let mut last: Option<std::net::Ipv4Addr> = None;
    for line in fib_trie.lines() {
        let line = line.trim();
        if let Some(addr) = line.strip_prefix("|-- ") {
            last = addr.parse().ok();
        } else if line.starts_with("/32 host LOCAL")
            && let Some(a) = last.take()
            && !a.is_loopback()
        {
            return Some(a);
        }
    }
    None
}

/// A manifest's media type, as its JSON says (Docker's schema 2 or OCI's).
fn manifest_media_type(bytes: &[u8]) -> &'static str {
    let docker = "application/vnd.docker.distribution.manifest.v2+json";
    match serde_json::from_slice::<serde_json::Value>(bytes) {
        Ok(v) if v.get("mediaType").and_then(|m| m.as_str()) == Some(docker) => docker,
        _ => "application/vnd.oci.image.manifest.v1+json",
    }
}

/// The image configuration as Docker's inspect gives it, so that emit
/// carries the run-time settings over the same way for both engines.
pub fn inspect_of(
    id: &str,
    config: &ImageConfiguration,
    size: u64,
) -> bollard::models::ImageInspect {
    let c = config.config().clone().unwrap_or_default();
    let keys = |m: Option<Vec<String>>| m.filter(|v| !v.is_empty());
    bollard::models::ImageInspect {
        id: Some(id.to_owned()),
        created: config.created().clone(),
        architecture: Some(config.architecture().to_string()),
        os: Some(config.os().to_string()),
        size: i64::try_from(size).ok(),
        config: Some(bollard::models::ImageConfig {
            user: c.user().clone(),
            exposed_ports: keys(c.exposed_ports().clone()),
            env: c.env().clone(),
            cmd: c.cmd().clone(),
            entrypoint: c.entrypoint().clone(),
            working_dir: c.working_dir().clone(),
            volumes: keys(c.volumes().clone()),
            labels: c.labels().clone(),
            stop_signal: c.stop_signal().clone(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The TCP ports an image's configuration exposes, sorted, once each.
pub fn exposed_tcp_ports(config: &oci_spec::image::ImageConfiguration) -> Vec<u16> {
    let mut ports: Vec<u16> = config
        .config()
        .as_ref()
        .and_then(|c| c.exposed_ports().clone())
        .unwrap_or_default()
        .iter()
        .filter_map(|p| p.strip_suffix("/tcp").unwrap_or(p).parse().ok())
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containerd_names_parse_and_print_alike() {
        let r: ContainerRef = "containerd://k8s.io/3f2a_b-c.d".parse().unwrap();
        assert_eq!(r.namespace, "k8s.io");
        assert_eq!(r.id, "3f2a_b-c.d");
        assert_eq!(r.to_string(), "containerd://k8s.io/3f2a_b-c.d");
        for bad in [
            "web",
            "containerd://web",
            "containerd:///web",
            "containerd://ns/",
            "containerd://ns/a/b",
            "docker://ns/a",
        ] {
            let e = bad.parse::<ContainerRef>().unwrap_err();
            assert!(e.to_string().contains("containerd://NAMESPACE/ID"), "{e}");
        }
    }

    #[test]
    fn cgroupfs_paths_are_below_the_mount_and_systemds_are_not_guessed() {
        let mount = Path::new("/sys/fs/cgroup/unified");
        assert_eq!(
            cgroupfs_dir("/k8s.io/3f2a", mount),
            Some(PathBuf::from("/sys/fs/cgroup/unified/k8s.io/3f2a"))
        );
        for other in [
            "kubepods-besteffort-pod1.slice:cri-containerd:3f2a",
            "/",
            "/a/../b",
            "relative/x",
        ] {
            assert_eq!(cgroupfs_dir(other, mount), None, "{other}");
        }
    }

    #[test]
    fn a_network_namespaces_own_address_is_its_first_local_one_past_loopback() {
        let only_loopback =
            "Local:\n  +-- 127.0.0.0/8 2 0 2\n     |-- 127.0.0.1\n        /32 host LOCAL\n";
        assert_eq!(local_ipv4(only_loopback), None);
        let cni = "Main:\n  +-- 0.0.0.0/0 3 0 4\n     |-- 10.88.0.0\n        /16 link UNICAST\n     |-- 10.88.0.7\n        /32 host LOCAL\n     |-- 127.0.0.1\n        /32 host LOCAL\n";
        assert_eq!(local_ipv4(cni), Some(std::net::Ipv4Addr::new(10, 88, 0, 7)));
    }

    #[test]
    fn run_settings_are_the_specs_where_it_differs_from_the_image() {
        let image: ImageConfiguration = serde_json::from_value(serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Cmd": ["nginx", "-g", "daemon off;"], "User": "", "ExposedPorts": {"80/tcp": {}}},
            "rootfs": {"type": "layers", "diff_ids": []}
        }))
        .unwrap();
        let spec = |args: serde_json::Value, uid: u32, network: bool| {
            let mut namespaces = vec![serde_json::json!({"type": "pid"})];
            if network {
                namespaces.push(serde_json::json!({"type": "network"}));
            }
            serde_json::json!({
                "process": {"args": args, "env": ["PATH=/usr/bin"], "cwd": "/", "user": {"uid": uid, "gid": uid}},
                "linux": {"namespaces": namespaces},
                "mounts": [
                    {"destination": "/proc", "type": "proc", "source": "proc"},
                    {"destination": "/data", "type": "bind", "source": "/srv/data", "options": ["rbind", "ro"]}
                ]
            })
        };
        let same = run_settings(
            &spec(serde_json::json!(["nginx", "-g", "daemon off;"]), 0, true),
            &image,
        );
        assert_eq!(same.entrypoint, None);
        assert_eq!(same.cmd.as_deref().map(<[String]>::len), Some(3));
        assert_eq!(
            (same.user.as_deref(), same.working_dir.as_deref()),
            (None, None)
        );
        assert_eq!(same.env, ["PATH=/usr/bin"]);
        assert_eq!(same.exposed_ports, ["80/tcp"]);
        assert_eq!(same.left_out, ["-v /srv/data:/data:ro"]);
        let other = run_settings(
            &spec(serde_json::json!(["sh", "-c", "nginx"]), 33, false),
            &image,
        );
        assert_eq!(
            other.entrypoint,
            Some(vec!["sh".into(), "-c".into(), "nginx".into()])
        );
        assert_eq!(other.cmd, None);
        assert_eq!(other.user.as_deref(), Some("33:33"));
        assert!(
            other.left_out.contains(&"--network host".to_owned()),
            "{:?}",
            other.left_out
        );
    }

    #[test]
    fn a_manifest_says_its_media_type() {
        let docker = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json"}"#;
        assert_eq!(
            manifest_media_type(docker),
            "application/vnd.docker.distribution.manifest.v2+json"
        );
        assert_eq!(
            manifest_media_type(br#"{"schemaVersion":2,"config":{}}"#),
            "application/vnd.oci.image.manifest.v1+json"
        );
    }

    #[test]
    fn sessions_of_pods_are_named_from_the_cri_labels() {
        let at: ContainerRef = "containerd://k8s.io/3f2a".parse().unwrap();
        let mut labels = HashMap::new();
        assert_eq!(session_name(&at, &labels), "3f2a");
        labels.insert(POD_NAMESPACE_LABEL.to_owned(), "shop".to_owned());
        labels.insert(POD_NAME_LABEL.to_owned(), "web-7d4b9".to_owned());
        assert_eq!(session_name(&at, &labels), "3f2a", "all three or none");
        labels.insert(CONTAINER_NAME_LABEL.to_owned(), "nginx".to_owned());
        assert_eq!(session_name(&at, &labels), "shop_web-7d4b9_nginx");
    }
}
