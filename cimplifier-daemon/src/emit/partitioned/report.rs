//! The partition emit report: what was built, why each volume is shared,
//! and where any path went.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::Role;
use super::seed::VolumeSeed;
use crate::emit::runconfig::RunReport;
use crate::model::Exe;
use crate::partition::PartitionName;
use crate::place::partition::PartitionPlan;
use crate::trace::ContainerPath;

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
    /// The directories its executables listed, and how many entries its
    /// image lacks (docs/slim.md).
    #[serde(default)]
    pub listed_directories: Vec<crate::place::slim::KeptListedDir>,
    /// What it may do, each grant with its evidence (docs/privileges.md);
    /// the run plan applies it.
    #[serde(default)]
    pub privileges: crate::place::privileges::Privileges,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmittedVolume {
    /// Its name in the run plan.
    pub name: String,
    pub mount: ContainerPath,
    pub partitions: BTreeSet<PartitionName>,
    /// The shared resources that force it, from the plan.
    pub because: Vec<ContainerPath>,
    /// The one partition that mounts it, when it holds state rather than
    /// something shared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_to: Option<PartitionName>,
    /// State directories it holds (directories observed executables
    /// write in; the plan names their writers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub state_dirs: Vec<ContainerPath>,
    /// What it starts with from the source image.
    #[serde(default)]
    pub seed: VolumeSeed,
}

/// The one-shot service that fills new volumes before any partition runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmittedSeed {
    pub service: String,
    pub image: String,
    pub image_id: String,
    /// Size of its one layer.
    pub bytes: u64,
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
    /// Partitions of the plan that get no image and no container, with
    /// their executables: nothing would run in them, as they hold neither
    /// the entrypoint nor a program another partition calls (a script runs
    /// its `#!` interpreter in the script's own partition).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub not_run: BTreeMap<PartitionName, BTreeSet<Exe>>,
    /// Sum of the partitions' layers.
    pub total_bytes: u64,
    /// 100 × (1 − total / source).
    pub reduction_percent: f64,
    pub volumes: Vec<EmittedVolume>,
    /// The seed of the volumes, when there are any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<EmittedSeed>,
    pub rpe_volumes: Vec<RpeVolume>,
    /// The partition whose network namespace the others join.
    pub network_owner: PartitionName,
    pub compose_file: PathBuf,
    /// The run configuration the images carry (the entry partition's
    /// command, the environment, user, working directory, ports) and where
    /// each setting came from: the source image's config or the observed
    /// container. Published ports and `-t`/`-i`/`--init` are in the run plan.
    #[serde(default)]
    pub run: RunReport,
    /// The placement plan, with the evidence for every shared volume.
    pub plan: PartitionPlan,
    /// What the emit did not refuse but the caller should know, each
    /// naming its cause (e.g. an --exclude that matched nothing).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// With `--push`: each pushed image by service (partition, or the seed
    /// service), where it went and its manifest's digest.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pushed: BTreeMap<String, crate::emit::push::Pushed>,
}

impl PartitionEmitReport {
    /// Every image this emit loaded: one per partition, and the seed's.
    pub fn images(&self) -> impl Iterator<Item = &str> {
        self.partitions
            .iter()
            .map(|p| p.image.as_str())
            .chain(self.seed.iter().map(|s| s.image.as_str()))
    }

    /// Why `what` (a path, or `cap:NAME` per partition) is as it is.
    pub fn explain_item(&self, what: &crate::emit::slim::Explained) -> String {
        use crate::emit::slim::Explained;
        match what {
            Explained::Path(p) => self.explain(p),
            Explained::Capability(c) => self
                .partitions
                .iter()
                .map(|p| format!("{}: {}", p.name, p.privileges.explain(*c)))
                .collect::<Vec<_>>()
                .join("; "),
            Explained::Syscall(name) => self
                .partitions
                .iter()
                .map(|p| format!("{}: {}", p.name, p.privileges.seccomp.explain(name)))
                .collect::<Vec<_>>()
                .join("; "),
        }
    }

    /// Where `path` is in the partitioned system, and why.
    pub fn explain(&self, path: &ContainerPath) -> String {
        let path = &self.plan.resolve(path);
        let access_list = |a: &BTreeSet<crate::model::Access>| {
            a.iter()
                .map(|a| format!("{a:?}").to_lowercase())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let in_volumes: Vec<String> = self
            .plan
            .volumes
            .iter()
            .filter(|v| path.is_under(&v.mount))
            .map(|v| {
                let parts: Vec<String> = v.partitions.iter().map(|p| p.to_string()).collect();
                let mut why: Vec<String> = v
                    .shared
                    .iter()
                    .map(|s| format!("shared {}", s.resource))
                    .collect();
                why.extend(v.state.iter().map(|s| {
                    let writers: Vec<String> = s.writers.iter().map(|w| w.to_string()).collect();
                    format!(
                        "state directory {} of {} (written by {})",
                        s.dir,
                        s.partition,
                        writers.join(", ")
                    )
                }));
                let whose = if v.is_private() {
                    format!("private to {}", parts.join(", "))
                } else {
                    format!("shared by {}", parts.join(", "))
                };
                format!(
                    "in the volume at {} {whose}, because of {}; it starts with the source image's content there",
                    v.mount,
                    why.join(", ")
                )
            })
            .collect();
        if !in_volumes.is_empty() {
            return in_volumes.join("; ");
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
            "{} ({}): {} -> {} in {} ({:.1}% smaller)",
            self.container,
            self.source_ref,
            mb(self.source_image_bytes),
            mb(self.total_bytes),
            crate::place::partition::counted(self.partitions.len(), "partition", "partitions"),
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
            let _ = writeln!(out, "    privileges: {}", p.privileges.summary());
            for d in p.listed_directories.iter().filter(|d| !d.kept_whole()) {
                let by: Vec<String> = d.listed_by.iter().map(|e| e.to_string()).collect();
                let _ = writeln!(
                    out,
                    "    WARNING: listed directory {} (by {}): {} of {} entries NOT kept ({}), \
                     a listing shows fewer names; --include {} keeps them",
                    d.dir,
                    by.join(", "),
                    d.missing,
                    d.entries,
                    d.why_missing.map_or("", |w| w.describe()),
                    d.dir
                );
            }
        }
        for (name, exes) in &self.not_run {
            let exes: Vec<String> = exes.iter().map(|e| e.to_string()).collect();
            let _ = writeln!(
                out,
                "  {:<12} no image: nothing runs in it ({}: neither the entrypoint nor \
                 called from another partition, e.g. only a script's #! interpreter)",
                name.to_string(),
                exes.join(", ")
            );
        }
        for v in &self.volumes {
            let because: Vec<String> = self
                .plan
                .volumes
                .iter()
                .filter(|pv| pv.mount == v.mount && pv.partitions == v.partitions)
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
            let mut because = because;
            because.extend(
                self.plan
                    .volumes
                    .iter()
                    .filter(|pv| pv.mount == v.mount && pv.partitions == v.partitions)
                    .flat_map(|pv| &pv.state)
                    .map(|s| {
                        let writers: Vec<String> =
                            s.writers.iter().map(|w| w.to_string()).collect();
                        format!(
                            "{} is a state directory of {} (written by {})",
                            s.dir,
                            s.partition,
                            writers.join(", ")
                        )
                    }),
            );
            let whose = match &v.private_to {
                Some(p) => format!("private to {p}"),
                None => format!("shared by {}", parts.join(", ")),
            };
            let _ = writeln!(
                out,
                "  volume {} at {} {whose}\n    because {}\n    seeded from the source image: {} entries, {}",
                v.name,
                v.mount,
                because.join("\n    and "),
                v.seed.entries,
                mb(v.seed.bytes),
            );
        }
        if let Some(seed) = &self.seed {
            let _ = writeln!(
                out,
                "  seed: service {} ({}, {}) fills new volumes before the partitions start",
                seed.service,
                seed.image,
                mb(seed.bytes)
            );
        }
        for e in &self.plan.rpe {
            let _ = writeln!(
                out,
                "  rpe: {} {} runs {} in {}",
                e.caller_partition, e.caller, e.callee, e.callee_partition
            );
        }
        let _ = writeln!(out, "  run settings (the images' config and the run plan):");
        out += &self.run.render_text("    ");
        let _ = writeln!(
            out,
            "  network: one namespace, held by {}\n  run plan: {}",
            self.network_owner,
            self.compose_file.display()
        );
        out
    }
}
