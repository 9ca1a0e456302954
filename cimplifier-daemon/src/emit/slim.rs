//! `emit` for the all-one-context policy: the observed container's image,
//! cut down to what the session saw used, with an audit report of every
//! kept path and why.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::EmitError;
use super::oci::{self, SourceConfig};
use super::partitioned;
use super::runconfig::{self, RunReport};
use crate::docker::tag::ImageTag;
use crate::image::fs::ImageFs;
use crate::image::source::{Admit, SourceSession, TraceDigest, read_session_counting};
use crate::model::walk;
use crate::place::privileges::{self, Capability, Privileges};
use crate::place::seccomp::SeccompMode;
use crate::place::slim::{
    KeepReason, KeptCodeTree, KeptListedDir, KeptStateDir, SlimOptions, plan,
};
use crate::store::Store;
use crate::trace::ContainerPath;

pub const REPORT_FORMAT: &str = "cimplifier-emit-report";
pub const REPORT_VERSION: u32 = 1;

#[derive(Clone, Debug)]
pub struct EmitOptions {
    /// The session to emit, by name (the container's, or a merge's).
    pub session: String,
    /// Load the image into Docker under this tag.
    pub tag: Option<ImageTag>,
    /// Also give the OCI image layout back, as one tar.
    pub oci_archive: bool,
    /// Whether a tag naming an image cimplifier did not make may be moved.
    pub retag: oci::Retag,
    pub slim: SlimOptions,
    /// Emit even if the session lost events (the report says so).
    pub allow_incomplete: bool,
    /// List every removed path in the report.
    pub list_removed: bool,
    /// Paths the caller will ask about (`--explain`): the report names
    /// those the source image does not hold, so none is answered "removed".
    pub explain: Vec<ContainerPath>,
    /// Also push the image to a registry (`emit --push`).
    pub push: Option<super::push::PushTarget>,
    pub seccomp: SeccompMode,
    /// The caller's credentials for the source image's registry, should
    /// the engine have to pull it.
    pub source_auth: super::push::Credentials,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptPath {
    pub path: ContainerPath,
    pub bytes: u64,
    #[serde(flatten)]
    pub reason: KeepReason,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    /// Exporting and indexing the source image's files.
    pub read_image_ms: u64,
    /// Replaying the session into the model and planning what to keep.
    pub plan_ms: u64,
    /// Writing the layer and the OCI blobs.
    pub write_ms: u64,
    /// Loading into the engine, and pushing (0 without a tag or push).
    pub load_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EmitReport {
    pub format: String,
    pub version: u32,
    pub container: String,
    pub source_image: String,
    pub source_ref: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Where `--push` put it, with the manifest's digest there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pushed: Option<super::push::Pushed>,
    /// Where the client wrote the OCI layout (the daemon writes none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oci_dir: Option<PathBuf>,
    /// The image id the engine gives it: the digest of its config.
    pub image_id: String,
    /// The engine the source image was read from and the image loaded
    /// into (reports from before engines were named: Docker).
    #[serde(default)]
    pub engine: crate::engine::Engine,
    pub manifest_digest: String,
    /// The session's events and whether any were lost.
    pub events: u64,
    pub complete: bool,
    pub lost_events: u64,
    /// Emitted from a lossy session because `--allow-incomplete` was given.
    pub incomplete_allowed: bool,
    /// The session began before the container's first exec.
    pub from_first_exec: bool,
    pub source_files: u64,
    /// Size of the source image as the engine reports it.
    pub source_image_bytes: u64,
    pub kept_files: u64,
    /// Size of the slim image's layer.
    pub slim_image_bytes: u64,
    pub removed_files: u64,
    pub removed_bytes: u64,
    /// Content bytes of the files kept: with `removed_bytes`, the source
    /// image's content bytes (`source_content_bytes`).
    #[serde(default)]
    pub kept_bytes: u64,
    /// Content bytes of every file of the source image (the engine's size
    /// adds the tar headers of every layer and what upper layers hid).
    #[serde(default)]
    pub source_content_bytes: u64,
    /// 100 × (1 − slim / source).
    pub reduction_percent: f64,
    pub kept: Vec<KeptPath>,
    /// Used by the workload but not in the image: created at run time.
    pub created_at_run_time: Vec<ContainerPath>,
    /// Dropped by `--exclude`.
    pub excluded: Vec<ContainerPath>,
    /// Emitted with `--strict`: no state directories or code trees kept whole.
    #[serde(default)]
    pub strict: bool,
    /// Directories the run wrote in, each kept whole (docs/slim.md).
    #[serde(default)]
    pub state_directories: Vec<KeptStateDir>,
    /// Interpreters' code trees, each kept whole (docs/slim.md).
    #[serde(default)]
    pub code_trees: Vec<KeptCodeTree>,
    /// Directories the run listed, and how many of their entries the image
    /// lacks (docs/slim.md): a listing there shows fewer names.
    #[serde(default)]
    pub listed_directories: Vec<KeptListedDir>,
    /// Listings of a directory the tracer could not name (a descriptor
    /// opened before the watch began): entries may be missing unseen.
    #[serde(default)]
    pub unnamed_listings: u64,
    /// Every removed path, with `--list-removed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub removed: Option<Vec<ContainerPath>>,
    /// Paths asked about (`--explain`) that the source image does not hold
    /// and the run did not create.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_in_source: Vec<ContainerPath>,
    /// What the emit did not refuse but the caller should know, each
    /// naming its cause (e.g. an --exclude that matched nothing).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// The image's run configuration (command, environment, user, ports...)
    /// and where each setting came from: the source image's config or the
    /// observed container.
    #[serde(default)]
    pub run: RunReport,
    /// What the slim image may do (capabilities, no-new-privileges,
    /// read-only root), each grant with its evidence (docs/privileges.md).
    #[serde(default)]
    pub privileges: Privileges,
    /// How to start the slim image as the observed container was started,
    /// with the least privileges that `privileges` grants.
    #[serde(default)]
    pub docker_run: String,
    pub timings: Timings,
}

impl EmitReport {
    /// The summary's size line: the slim layer against the source image
    /// as the engine it was read from sizes it.
    pub fn size_line(&self) -> String {
        let mb = |bytes: u64| format!("{:.1} MB", bytes as f64 / 1e6);
        format!(
            "image: {} (its layer) from {} (the source image as {} sizes it), {:.1}% smaller",
            mb(self.slim_image_bytes),
            mb(self.source_image_bytes),
            self.engine,
            self.reduction_percent
        )
    }

    /// The summary's line on how to run the image as the container ran,
    /// in the engine's own words: Podman takes `docker run`'s flags as
    /// `podman run`; containerd has no such line, so Docker's is named as
    /// Docker's.
    pub fn run_line(&self) -> Option<String> {
        if self.docker_run.is_empty() {
            return None;
        }
        Some(match self.engine {
            crate::engine::Engine::Docker => {
                format!("run it as the container ran: {}", self.docker_run)
            }
            crate::engine::Engine::Podman => format!(
                "run it as the container ran: {}",
                self.docker_run
                    .strip_prefix("docker ")
                    .map_or_else(|| self.docker_run.clone(), |rest| format!("podman {rest}"))
            ),
            crate::engine::Engine::Containerd => format!(
                "run it in Docker as the container ran: {} (in containerd, `cimplifierctl \
                 verify --image` runs it hardened; `ctr run` takes other flags)",
                self.docker_run
            ),
        })
    }

    /// Why `what` (a path or `cap:NAME`) is in the image, or why not.
    pub fn explain_item(&self, what: &Explained) -> String {
        match what {
            Explained::Path(p) => self.explain(p),
            Explained::Capability(c) => self.privileges.explain(*c),
            Explained::Syscall(name) => self.privileges.seccomp.explain(name),
        }
    }

    /// Why `path` is in the image, or why not.
    pub fn explain(&self, path: &ContainerPath) -> String {
        match self.kept.iter().find(|k| &k.path == path) {
            Some(k) => format!("kept: {}", describe(&k.reason)),
            None if self.excluded.contains(path) => "removed: excluded by --exclude".into(),
            None if self.created_at_run_time.contains(path) => {
                "not in the source image: created at run time".into()
            }
            None if self.not_in_source.contains(path) => {
                "not in the source image, and the run did not create it: check the path".into()
            }
            None if let Some(d) = self
                .listed_directories
                .iter()
                .find(|d| d.dir == path.parent() && !d.kept_whole()) =>
            {
                format!(
                    "removed although {} listed {} ({}): a listing there shows {} fewer names; \
                     --include {} keeps them",
                    exes(&d.listed_by),
                    d.dir,
                    d.why_missing.map_or("", |w| w.describe()),
                    d.missing,
                    d.dir
                )
            }
            None => "removed: no observed executable used it, and nothing kept needs it".into(),
        }
    }
}

/// What `emit --explain` asks about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Explained {
    Path(ContainerPath),
    /// `cap:NAME`: why the capability is granted, or that it is dropped.
    Capability(Capability),
    /// `syscall:NAME`: which executable made it, or that it is refused.
    Syscall(String),
}

impl Explained {
    /// `cap:NET_BIND_SERVICE`, `syscall:bind` or an absolute path.
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Some(name) = s.strip_prefix("syscall:") {
            return crate::place::seccomp::Arch::X86_64
                .number(name)
                .map(|_| Self::Syscall(name.to_owned()))
                .ok_or_else(|| format!("--explain {s}: no such x86_64 syscall"));
        }
        if let Some(name) = s.strip_prefix("cap:") {
            return Capability::from_name(name)
                .map(Self::Capability)
                .ok_or_else(|| {
                    format!(
                        "--explain {s}: no such capability; the rules grant {}",
                        Capability::ALL.map(Capability::name).join(", ")
                    )
                });
        }
        ContainerPath::new(s).map(Self::Path).ok_or_else(|| {
            format!("--explain {s}: not an absolute path, cap:NAME nor syscall:NAME")
        })
    }
}

impl std::fmt::Display for Explained {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Explained::Path(p) => p.fmt(f),
            Explained::Capability(c) => write!(f, "cap:{c}"),
            Explained::Syscall(name) => write!(f, "syscall:{name}"),
        }
    }
}

pub fn describe(reason: &KeepReason) -> String {
    match reason {
        KeepReason::Observed { exe, access } => {
            let access: Vec<String> = access
                .iter()
                .map(|a| {
                    serde_json::to_value(a)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default()
                })
                .collect();
            format!("used by {exe} ({})", access.join(", "))
        }
        KeepReason::ParentDirectory { of } => format!("directory above {of}"),
        KeepReason::LinkChain { of } => format!("on the symlink chain of {of}"),
        KeepReason::HardLinkTarget { of } => format!("hard-link target of {of}"),
        KeepReason::ElfDependency { of } => format!("ELF dependency of {of}"),
        KeepReason::SafetySet { set } => format!("safety set {}", set.name()),
        KeepReason::UserInclude { include } => format!("--include {include}"),
        KeepReason::StateDirectory { dir, written_by } => format!(
            "inside state directory {dir}, written by {}",
            written_by
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        KeepReason::CodeTree {
            exe,
            kind,
            dir,
            loaded,
            files,
        } => format!(
            "code tree of {exe} ({}), loaded {loaded} of {files} files under {dir}",
            kind.name()
        ),
        KeepReason::DirectorySkeleton { of } => {
            format!("directory skeleton: a subdirectory of the kept directory {of}")
        }
        KeepReason::ListedDirectory { dir, listed_by } => {
            format!("an entry of {dir}, listed by {}", exes(listed_by))
        }
    }
}

fn exes(set: &std::collections::BTreeSet<crate::model::Exe>) -> String {
    set.iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Refuses --include and --exclude that do not fit the source image, by
/// name: an include of a path the image lacks (a typo would keep nothing
/// silently), an exclude of the root or of the entrypoint (the image could
/// not start). An exclude that matches nothing is a warning.
pub fn check_options(
    slim: &SlimOptions,
    fs: &Arc<ImageFs>,
    source: &SourceConfig,
    image: &str,
) -> Result<Vec<String>, EmitError> {
    let holds = |dir: &ContainerPath| fs.entries().any(|(p, _)| p.is_under(dir));
    for include in &slim.include {
        if !holds(include) {
            return Err(EmitError::Options(format!(
                "--include {include}: the source image {image} has no such path, so nothing \
                 would be kept for it; check the path (`docker run --rm {image} ls -d {include}`)"
            )));
        }
    }
    if slim.exclude.iter().any(|x| *x == ContainerPath::root()) {
        return Err(EmitError::Options(
            "--exclude / drops every file: the image would be empty; exclude the directories \
             you do not want instead"
                .into(),
        ));
    }
    if let Some(entry) = partitioned::entrypoint_path(source, fs.as_ref()) {
        let w = walk(fs, &entry, true);
        let names = std::iter::once(&entry).chain(&w.links).chain(&w.resolved);
        for name in names {
            if let Some(x) = slim.exclude.iter().find(|x| name.is_under(x)) {
                return Err(EmitError::Options(format!(
                    "--exclude {x} drops the entrypoint {entry}{}: the image could not start; \
                     exclude less",
                    if *name == entry {
                        String::new()
                    } else {
                        format!(" (through {name})")
                    }
                )));
            }
        }
    }
    Ok(slim
        .exclude
        .iter()
        .filter(|x| !holds(x))
        .map(|x| {
            format!("--exclude {x}: the source image {image} has no such path; nothing was dropped for it")
        })
        .collect())
}

fn ms(start: Instant) -> u64 {
    start.elapsed().as_millis() as u64
}

/// Emits the slim image of an observed container. `progress` hears each
/// step, `bytes` how far the long read of the source image is.
pub async fn emit(
    store: &Arc<Store>,
    opts: &EmitOptions,
    progress: &(dyn Fn(&str) + Send + Sync),
    bytes: &(dyn Fn(&str, u64, u64) + Send + Sync),
) -> Result<Emitted, EmitError> {
    progress("reading the source image");
    let SourceSession {
        record: info,
        inspect,
        tree: fs,
        model,
        trace_digest,
        read_image_ms,
        fold_ms,
    } = read_session_counting(
        store,
        &opts.session,
        Admit::Closed {
            allow_incomplete: opts.allow_incomplete,
        },
        TraceDigest::Sha256,
        &opts.source_auth,
        &|done, total| bytes("reading the source image", done, total),
    )
    .await?;

    progress("planning what to keep");
    let start = Instant::now();
    let (source, run) = runconfig::carry_for(&SourceConfig::from_inspect(&inspect), &info);
    let mut slim = opts.slim.clone();
    slim.env = source.env.clone().unwrap_or_default();
    let warnings = check_options(&slim, &fs, &source, &info.started.image_ref)?;
    let slim_plan = plan(&model, &fs, &slim);
    let privileges = privileges::privileges(
        &model,
        &model.executables(),
        &privileges::Context {
            fs: &fs,
            user: source.user.as_deref().unwrap_or(""),
            plan_volumes: &BTreeSet::new(),
            anonymous_volumes: true,
            rpe_server: false,
            rpe_stub: false,
            seccomp: opts.seccomp,
        },
    );
    let plan_ms = fold_ms + ms(start);

    progress("writing the slim layer");
    let start = Instant::now();
    // Reading the spooled image is blocking I/O: off the async workers.
    let keep: BTreeSet<ContainerPath> = slim_plan.keep.keys().cloned().collect();
    let layer_fs = fs.clone();
    let layer = tokio::task::spawn_blocking(move || layer_fs.write_tar(&|p| keep.contains(p)))
        .await
        .context("writing the slim layer")??;
    let trace_sha = trace_digest.expect("asked for the trace digest");
    let labels: BTreeMap<String, String> = [
        ("io.cimplifier.source-image", info.started.image_id.clone()),
        ("io.cimplifier.source-ref", info.started.image_ref.clone()),
        ("io.cimplifier.trace", trace_sha),
        ("io.cimplifier.policy", "all-one-context".to_owned()),
        (
            privileges::HARDENING_LABEL,
            serde_json::to_string(&privileges.hardening()).expect("the hardening serialises"),
        ),
        (
            "io.cimplifier.version",
            env!("CARGO_PKG_VERSION").to_owned(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let tag = opts.tag.as_ref().map(ImageTag::as_str);
    let image = oci::build(layer, &source, &labels, tag)?;
    let oci_archive = if opts.oci_archive {
        Some(image.archive()?)
    } else {
        None
    };
    let write_ms = ms(start);

    let start = Instant::now();
    if opts.tag.is_some() {
        let destination = oci::Destination::of(&info).await?;
        progress(&format!("loading into {destination}"));
        destination.load(&image, opts.retag).await?;
    }
    let pushed = match &opts.push {
        Some(target) => {
            progress(&format!("pushing to {}", target.reference));
            Some(super::push::push(&image, target).await?)
        }
        None => None,
    };
    let load_ms = ms(start);

    let mut kept = Vec::new();
    let (mut removed_files, mut removed_bytes, mut removed) = (0u64, 0u64, Vec::new());
    let mut kept_bytes = 0u64;
    for (path, entry) in fs.entries() {
        match slim_plan.keep.get(path) {
            Some(reason) => {
                kept_bytes += entry.size;
                kept.push(KeptPath {
                    path: path.clone(),
                    bytes: entry.size,
                    reason: reason.clone(),
                })
            }
            None => {
                removed_files += 1;
                removed_bytes += entry.size;
                if opts.list_removed {
                    removed.push(path.clone());
                }
            }
        }
    }
    kept.sort_by(|a, b| a.path.cmp(&b.path));
    let not_in_source = opts
        .explain
        .iter()
        .filter(|p| fs.get(p).is_none() && !slim_plan.not_in_image.contains(*p))
        .cloned()
        .collect();
    let source_image_bytes = inspect.size.unwrap_or(0).max(0) as u64;
    let slim_image_bytes = image.layer.bytes.len() as u64;
    let engine = info.engine().await;
    let report = EmitReport {
        format: REPORT_FORMAT.into(),
        version: REPORT_VERSION,
        container: info.started.container_name.clone(),
        source_image: info.started.image_id.clone(),
        source_ref: info.started.image_ref.clone(),
        tag: tag.map(str::to_owned),
        pushed,
        oci_dir: None,
        image_id: image.config.digest(),
        engine,
        manifest_digest: image.manifest.digest(),
        events: info.events,
        complete: info.complete(),
        lost_events: info.loss.lost(),
        incomplete_allowed: !info.complete(),
        from_first_exec: info.started.from_first_exec,
        source_files: fs.entries().count() as u64,
        source_image_bytes,
        kept_files: kept.len() as u64,
        slim_image_bytes,
        removed_files,
        removed_bytes,
        kept_bytes,
        source_content_bytes: fs.content_bytes(),
        reduction_percent: if source_image_bytes > 0 {
            100.0 * (1.0 - slim_image_bytes as f64 / source_image_bytes as f64)
        } else {
            0.0
        },
        kept,
        created_at_run_time: slim_plan.not_in_image.into_iter().collect(),
        excluded: slim_plan.excluded.into_iter().collect(),
        strict: slim.strict,
        state_directories: slim_plan.state_dirs,
        code_trees: slim_plan.code_trees,
        listed_directories: slim_plan.listed_dirs,
        unnamed_listings: model.unnamed_listings(),
        removed: opts.list_removed.then_some(removed),
        not_in_source,
        warnings,
        docker_run: run.docker_run_with(tag.unwrap_or("IMAGE"), &privileges.docker_run_flags()),
        privileges,
        run,
        timings: Timings {
            read_image_ms,
            plan_ms,
            write_ms,
            load_ms,
        },
    };
    Ok(Emitted {
        report,
        oci_archive,
    })
}

/// What emit gives back: the report, and the OCI layout as one tar when
/// asked (the client writes it where it likes).
pub struct Emitted {
    pub report: EmitReport,
    pub oci_archive: Option<Vec<u8>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Engine;

    /// A report as an older daemon wrote it: no `engine`.
    fn report() -> EmitReport {
        serde_json::from_value(serde_json::json!({
            "format": REPORT_FORMAT, "version": REPORT_VERSION, "container": "web",
            "source_image": "sha256:aa", "source_ref": "web:1", "image_id": "sha256:bb",
            "manifest_digest": "sha256:cc", "events": 1, "complete": true, "lost_events": 0,
            "incomplete_allowed": false, "from_first_exec": true, "source_files": 10,
            "source_image_bytes": 200_000_000u64, "kept_files": 2, "slim_image_bytes": 20_000_000u64,
            "removed_files": 8, "removed_bytes": 1, "reduction_percent": 90.0, "kept": [],
            "created_at_run_time": [], "excluded": [],
            "docker_run": "docker run -d --cap-drop ALL web:slim",
            "timings": {"read_image_ms": 0, "plan_ms": 0, "write_ms": 0, "load_ms": 0},
        }))
        .expect("a report without an engine reads as Docker's")
    }

    #[test]
    fn the_summary_names_the_engine_the_image_was_read_from_and_went_to() {
        let mut r = report();
        assert_eq!(r.engine, Engine::Docker);
        assert_eq!(
            r.size_line(),
            "image: 20.0 MB (its layer) from 200.0 MB (the source image as Docker sizes it), \
             90.0% smaller"
        );
        assert_eq!(
            r.run_line().as_deref(),
            Some("run it as the container ran: docker run -d --cap-drop ALL web:slim")
        );

        r.engine = Engine::Podman;
        assert!(
            r.size_line().contains("as Podman sizes it"),
            "{}",
            r.size_line()
        );
        assert_eq!(
            r.run_line().as_deref(),
            Some("run it as the container ran: podman run -d --cap-drop ALL web:slim")
        );

        r.engine = Engine::Containerd;
        assert!(
            r.size_line().contains("as containerd sizes it"),
            "{}",
            r.size_line()
        );
        let run = r.run_line().unwrap();
        assert!(
            run.starts_with("run it in Docker as the container ran: docker run"),
            "{run}"
        );
        assert!(run.contains("verify --image"), "{run}");
        for line in [r.size_line(), run] {
            assert!(!line.contains("as Docker sizes"), "{line}");
        }
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["engine"], "containerd");

        r.docker_run.clear();
        assert_eq!(r.run_line(), None);
    }
}
