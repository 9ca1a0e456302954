//! The slim image as OCI blobs: one layer, its config and manifest, written
//! as an OCI image layout directory and as a tar Docker can load (the same
//! layout plus the `manifest.json` of `docker save`, which engines without
//! OCI-archive support read). Every blob is canonical JSON or a
//! deterministic tar, so the same inputs give the same digests.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use oci_spec::image::{
    Arch, ConfigBuilder, Descriptor, DescriptorBuilder, HistoryBuilder, ImageConfigurationBuilder,
    ImageIndexBuilder, ImageManifestBuilder, MediaType, Os, RootFsBuilder, Sha256Digest,
};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use super::EmitError;
use crate::docker::Docker;
use crate::docker::image::ImageInspect;

/// The run-time configuration carried over from the source image.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SourceConfig {
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub env: Option<Vec<String>>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub exposed_ports: Option<Vec<String>>,
    pub volumes: Option<Vec<String>>,
    pub labels: BTreeMap<String, String>,
    pub stop_signal: Option<String>,
    /// RFC 3339; reused so the config, and so the digest, is reproducible.
    pub created: Option<String>,
}

impl SourceConfig {
    pub fn from_inspect(image: &ImageInspect) -> Self {
        let c = image.config.clone().unwrap_or_default();
        let non_empty = |s: Option<String>| s.filter(|s| !s.is_empty());
        Self {
            entrypoint: c.entrypoint,
            cmd: c.cmd,
            env: c.env,
            working_dir: non_empty(c.working_dir),
            user: non_empty(c.user),
            exposed_ports: c.exposed_ports.map(sorted),
            volumes: c.volumes.map(sorted),
            labels: c.labels.unwrap_or_default().into_iter().collect(),
            stop_signal: non_empty(c.stop_signal),
            created: image.created.as_ref().map(|d| d.to_string()),
        }
    }
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// One blob and its descriptor fields.
#[derive(Clone, Debug)]
pub struct Blob {
    pub bytes: Vec<u8>,
    /// Hex sha256.
    pub sha256: String,
}

impl Blob {
    pub(crate) fn new(bytes: Vec<u8>) -> Self {
        let sha256 = format!("{:x}", Sha256::digest(&bytes));
        Self { bytes, sha256 }
    }

    pub fn digest(&self) -> String {
        format!("sha256:{}", self.sha256)
    }

    fn path(&self) -> String {
        format!("blobs/sha256/{}", self.sha256)
    }

    pub(crate) fn descriptor(&self, media_type: MediaType) -> Result<Descriptor> {
        let digest: Sha256Digest = self.sha256.parse().context("a sha256 digest")?;
        Ok(DescriptorBuilder::default()
            .media_type(media_type)
            .size(self.bytes.len() as u64)
            .digest(digest)
            .build()?)
    }
}

/// A built single-layer image.
#[derive(Clone, Debug)]
pub struct OciImage {
    pub layer: Blob,
    pub config: Blob,
    pub manifest: Blob,
    pub index: Vec<u8>,
    pub tag: Option<String>,
}

/// JSON with every object's keys sorted, whatever order oci-spec's
/// HashMaps (and serde_json's `preserve_order`, if a dependency turns it
/// on) would give: the digests must not depend on hashing.
pub(crate) fn canonical_json(value: &impl Serialize) -> Result<Vec<u8>> {
    fn sorted(v: serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(map) => {
                let mut entries: Vec<_> = map.into_iter().collect();
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                serde_json::Value::Object(
                    entries.into_iter().map(|(k, v)| (k, sorted(v))).collect(),
                )
            }
            serde_json::Value::Array(items) => {
                serde_json::Value::Array(items.into_iter().map(sorted).collect())
            }
            other => other,
        }
    }
    Ok(serde_json::to_vec(&sorted(serde_json::to_value(value)?))?)
}

/// Builds the image around an uncompressed layer tar.
pub fn build(
    layer: Vec<u8>,
    source: &SourceConfig,
    extra_labels: &BTreeMap<String, String>,
    tag: Option<&str>,
) -> Result<OciImage> {
    let layer = Blob::new(layer);
    let mut labels: std::collections::HashMap<String, String> =
        source.labels.clone().into_iter().collect();
    labels.extend(extra_labels.clone());
    let mut config = ConfigBuilder::default().labels(labels);
    if let Some(v) = &source.entrypoint {
        config = config.entrypoint(v.clone());
    }
    if let Some(v) = &source.cmd {
        config = config.cmd(v.clone());
    }
    if let Some(v) = &source.env {
        config = config.env(v.clone());
    }
    if let Some(v) = &source.working_dir {
        config = config.working_dir(v.clone());
    }
    if let Some(v) = &source.user {
        config = config.user(v.clone());
    }
    if let Some(v) = &source.exposed_ports {
        config = config.exposed_ports(v.clone());
    }
    if let Some(v) = &source.volumes {
        config = config.volumes(v.clone());
    }
    if let Some(v) = &source.stop_signal {
        config = config.stop_signal(v.clone());
    }
    let created = source
        .created
        .clone()
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_owned());
    let image_config = ImageConfigurationBuilder::default()
        .created(created.clone())
        .architecture(Arch::Amd64)
        .os(Os::Linux)
        .config(config.build()?)
        .rootfs(
            RootFsBuilder::default()
                .typ("layers")
                .diff_ids(vec![layer.digest()])
                .build()?,
        )
        .history(vec![
            HistoryBuilder::default()
                .created(created)
                .created_by("cimplifier emit: the files the observed executables used")
                .build()?,
        ])
        .build()?;
    let config = Blob::new(canonical_json(&image_config)?);
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(config.descriptor(MediaType::ImageConfig)?)
        .layers(vec![layer.descriptor(MediaType::ImageLayer)?])
        .build()?;
    let manifest = Blob::new(canonical_json(&manifest)?);
    let mut manifest_desc = manifest.descriptor(MediaType::ImageManifest)?;
    if let Some(tag) = tag {
        manifest_desc.set_annotations(Some(
            [(
                "org.opencontainers.image.ref.name".to_owned(),
                tag.to_owned(),
            )]
            .into_iter()
            .collect(),
        ));
    }
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(vec![manifest_desc])
        .build()?;
    Ok(OciImage {
        layer,
        config,
        manifest,
        index: canonical_json(&index)?,
        tag: tag.map(str::to_owned),
    })
}

const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

impl OciImage {
    fn files(&self) -> Result<Vec<(String, Vec<u8>)>> {
        let mut files = vec![
            ("oci-layout".to_owned(), OCI_LAYOUT.to_vec()),
            ("index.json".to_owned(), self.index.clone()),
        ];
        for blob in [&self.layer, &self.config, &self.manifest] {
            files.push((blob.path(), blob.bytes.clone()));
        }
        // docker save's manifest, for engines that load only that format.
        let docker_manifest = serde_json::json!([{
            "Config": self.config.path(),
            "RepoTags": self.tag.iter().collect::<Vec<_>>(),
            "Layers": [self.layer.path()],
        }]);
        files.push((
            "manifest.json".to_owned(),
            serde_json::to_vec(&docker_manifest)?,
        ));
        Ok(files)
    }

    /// Writes an OCI image layout directory.
    pub fn write_layout(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir.join("blobs/sha256"))
            .with_context(|| format!("creating the OCI layout directory {}", dir.display()))?;
        for (name, bytes) in self.files()? {
            let path = dir.join(&name);
            std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }

    /// The layout as one tar, for `POST /images/load`.
    pub fn archive(&self) -> Result<Vec<u8>> {
        let mut b = tar::Builder::new(Vec::new());
        let mut dir = tar::Header::new_ustar();
        dir.set_entry_type(tar::EntryType::Directory);
        dir.set_mode(0o755);
        dir.set_size(0);
        dir.set_mtime(0);
        for d in ["blobs/", "blobs/sha256/"] {
            b.append_data(&mut dir.clone(), d, &[][..])?;
        }
        for (name, bytes) in self.files()? {
            let mut h = tar::Header::new_ustar();
            h.set_mode(0o644);
            h.set_size(bytes.len() as u64);
            h.set_mtime(0);
            b.append_data(&mut h, name, &bytes[..])?;
        }
        Ok(b.into_inner()?)
    }
}

/// Whether a tag that names an image already may be moved to a new one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Retag {
    /// Only an image cimplifier made (it carries [`MADE_BY_LABEL`]).
    #[default]
    OwnOnly,
    /// Any (`--force`).
    Any,
}

/// The label every image cimplifier emits carries.
pub const MADE_BY_LABEL: &str = "io.cimplifier.source-image";

/// Refuses a tag that names an image cimplifier did not make, unless
/// `retag` allows any: loading would silently take the tag from someone
/// else's image.
pub async fn check_tag(docker: &Docker, tag: &str, retag: Retag) -> Result<(), EmitError> {
    if retag == Retag::Any {
        return Ok(());
    }
    let Some(labels) = crate::docker::image::labels_of(docker, tag)
        .await
        .map_err(EmitError::Engine)?
    else {
        return Ok(());
    };
    if labels.contains_key(MADE_BY_LABEL) {
        return Ok(());
    }
    Err(EmitError::ForeignTag(format!(
        "tag {tag} names an image that cimplifier did not make (it has no {MADE_BY_LABEL} \
         label): pass --force to move the tag to the new image, or choose another tag"
    )))
}

/// Loads the image into the engine under its tag (see [`check_tag`]).
pub async fn load_into_docker(
    docker: &Docker,
    image: &OciImage,
    retag: Retag,
) -> Result<(), EmitError> {
    if let Some(tag) = &image.tag {
        check_tag(docker, tag, retag).await?;
    }
    crate::docker::image::load(docker, image.archive()?)
        .await
        .context("loading the emitted image")
        .map_err(EmitError::Failed)
}

/// Where emitted images are loaded: the engine the session's container ran
/// on.
pub enum Destination {
    /// An engine reached through Docker's API: dockerd, or Podman (which
    /// `engine` says, for what is printed).
    Docker(Docker, crate::engine::Engine),
    Containerd {
        namespace: String,
    },
}

impl Destination {
    /// The engine of the session `record`'s container.
    pub async fn of(record: &crate::store::SessionRecord) -> Result<Self, EmitError> {
        Ok(match &record.containerd {
            Some(at) => Destination::Containerd {
                namespace: at.namespace.clone(),
            },
            None => Destination::Docker(
                crate::docker::connect().map_err(EmitError::Engine)?,
                record.engine().await,
            ),
        })
    }

    /// Loads `image` under its tag (see [`check_tag`]).
    pub async fn load(&self, image: &OciImage, retag: Retag) -> Result<(), EmitError> {
        match self {
            Destination::Docker(docker, _) => load_into_docker(docker, image, retag).await,
            Destination::Containerd { namespace } => {
                load_into_containerd(namespace, image, retag).await
            }
        }
    }
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Destination::Docker(_, engine) => write!(f, "{engine}"),
            Destination::Containerd { namespace } => {
                write!(f, "containerd (namespace {namespace})")
            }
        }
    }
}

/// Writes the image into containerd's content store in `namespace` and
/// names it by its tag (see [`check_tag`]), so that `ctr run` runs it.
pub async fn load_into_containerd(
    namespace: &str,
    image: &OciImage,
    retag: Retag,
) -> Result<(), EmitError> {
    let Some(tag) = &image.tag else {
        return Ok(());
    };
    let containerd = crate::engine::containerd::Containerd::connect()
        .await
        .map_err(EmitError::Engine)?;
    if retag == Retag::OwnOnly
        && let Some(labels) = containerd
            .image_labels(namespace, tag)
            .await
            .map_err(EmitError::Engine)?
        && !labels.contains_key(MADE_BY_LABEL)
    {
        return Err(EmitError::ForeignTag(format!(
            "image {tag} in containerd namespace {namespace} is not one cimplifier made (it has \
             no {MADE_BY_LABEL} label): pass --force to move the name to the new image, or \
             choose another tag"
        )));
    }
    let (config, layer, manifest) = (
        image.config.digest(),
        image.layer.digest(),
        image.manifest.digest(),
    );
    containerd
        .load(
            namespace,
            tag,
            (&manifest, &image.manifest.bytes),
            &[(&config, &image.config.bytes), (&layer, &image.layer.bytes)],
        )
        .await
        .context("loading the emitted image into containerd")
        .map_err(EmitError::Failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_containerd_image_configuration_carries_over_as_dockers_inspect_does() {
        let config: oci_spec::image::ImageConfiguration =
            serde_json::from_value(serde_json::json!({
                "architecture": "amd64",
                "os": "linux",
                "created": "2026-01-01T00:00:00Z",
                "config": {
                    "Entrypoint": ["/docker-entrypoint.sh"],
                    "Cmd": ["nginx", "-g", "daemon off;"],
                    "Env": ["PATH=/usr/bin"],
                    "WorkingDir": "/srv",
                    "User": "www-data",
                    "ExposedPorts": {"80/tcp": {}, "443/tcp": {}},
                    "Volumes": {"/var/log/nginx": {}},
                    "Labels": {"a": "1"},
                    "StopSignal": "SIGQUIT"
                },
                "rootfs": {"type": "layers", "diff_ids": []}
            }))
            .unwrap();
        let inspect = crate::engine::containerd::inspect_of("sha256:abc", &config, 42);
        assert_eq!(inspect.size, Some(42));
        let carried = SourceConfig::from_inspect(&inspect);
        assert_eq!(
            carried.entrypoint,
            Some(vec!["/docker-entrypoint.sh".into()])
        );
        assert_eq!(carried.cmd.as_deref().map(<[String]>::len), Some(3));
        assert_eq!(carried.env, Some(vec!["PATH=/usr/bin".into()]));
        assert_eq!(carried.working_dir.as_deref(), Some("/srv"));
        assert_eq!(carried.user.as_deref(), Some("www-data"));
        assert_eq!(
            carried.exposed_ports,
            Some(vec!["443/tcp".into(), "80/tcp".into()])
        );
        assert_eq!(carried.volumes, Some(vec!["/var/log/nginx".into()]));
        assert_eq!(carried.labels.get("a").map(String::as_str), Some("1"));
        assert_eq!(carried.stop_signal.as_deref(), Some("SIGQUIT"));
        assert_eq!(carried.created.as_deref(), Some("2026-01-01T00:00:00Z"));
    }

    #[test]
    fn same_inputs_same_digests() {
        let source = SourceConfig {
            cmd: Some(vec!["nginx".into()]),
            exposed_ports: Some(vec!["80/tcp".into(), "443/tcp".into()]),
            volumes: Some(vec!["/a".into(), "/b".into(), "/c".into()]),
            labels: [
                ("x".to_owned(), "1".to_owned()),
                ("y".to_owned(), "2".to_owned()),
            ]
            .into_iter()
            .collect(),
            created: Some("2026-01-01T00:00:00Z".into()),
            ..Default::default()
        };
        let extra = [("io.cimplifier.source".to_owned(), "img".to_owned())]
            .into_iter()
            .collect();
        let a = build(b"layer".to_vec(), &source, &extra, Some("t:slim")).unwrap();
        let b = build(b"layer".to_vec(), &source, &extra, Some("t:slim")).unwrap();
        assert_eq!(a.manifest.digest(), b.manifest.digest());
        assert_eq!(a.archive().unwrap(), b.archive().unwrap());
        let config: serde_json::Value = serde_json::from_slice(&a.config.bytes).unwrap();
        assert_eq!(config["config"]["Cmd"][0], "nginx");
        assert_eq!(config["rootfs"]["diff_ids"][0], a.layer.digest());
        assert!(config["config"]["ExposedPorts"]["443/tcp"].is_object());
        assert_eq!(config["config"]["Labels"]["io.cimplifier.source"], "img");
        let other = build(b"layer2".to_vec(), &source, &extra, Some("t:slim")).unwrap();
        assert_ne!(a.manifest.digest(), other.manifest.digest());
    }
}
