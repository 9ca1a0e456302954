//! One partition's layer: its files (the slim planner on its executables),
//! RPE stubs where callees of other partitions stood, their routes, and
//! the server with its allow-lists.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Result, bail};
use cimplifier_rpe::config::{PartitionConfig, STUB_CONFIG_DEFAULT, ServerConfig, StubConfig};

use super::{SERVER_CONFIG, SERVER_PATH, STUB_CONNECT_TIMEOUT_MS, rpe_socket};
use crate::image::fs::{EntryKind, ImageFs};
use crate::model::{Exe, Model};
use crate::partition::PartitionName;
use crate::place::partition::{PartitionContents, RpeEdge};
use crate::place::slim::{KeptListedDir, SlimOptions, plan_for};
use crate::trace::ContainerPath;

/// A header for an entry the emit adds itself (not copied from the
/// source image): owned by root, mtime 0.
pub(super) fn root_header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(size);
    h
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
                    let mut h = root_header(tar::EntryType::Directory, 0o755, 0);
                    self.builder
                        .append_data(&mut h, rel(&dir), std::io::empty())?;
                }
                None => {}
            }
        }
        Ok(())
    }

    fn file(&mut self, path: &ContainerPath, mode: u32, bytes: &[u8]) -> Result<()> {
        let mut h = root_header(tar::EntryType::Regular, mode, bytes.len() as u64);
        self.builder.append_data(&mut h, rel(path), bytes)?;
        Ok(())
    }

    fn hard_link(&mut self, path: &ContainerPath, target: &ContainerPath) -> Result<()> {
        let mut h = root_header(tar::EntryType::Link, 0o755, 0);
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

/// The static RPE binaries' bytes.
pub(super) struct Glue<'a> {
    pub(super) stub: &'a [u8],
    pub(super) server: &'a [u8],
}

/// One partition's layer.
pub(super) struct PartitionLayer {
    pub(super) tar: Vec<u8>,
    pub(super) files: u64,
    /// Caller partition -> what its server runs for it.
    pub(super) serves: BTreeMap<PartitionName, BTreeSet<Exe>>,
    /// The directories its executables listed (place/listed.rs).
    pub(super) listed_dirs: Vec<KeptListedDir>,
}

/// The partition's files, its stubs with their routes, and (when it runs
/// programs for others) the server with one allow-list per caller.
pub(super) fn partition_layer(
    model: &Model,
    fs: &Arc<ImageFs>,
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
    let listed_dirs = slim.listed_dirs;
    // What lies below a volume's mount point comes from the volume (seeded
    // from the source image, mounted nocopy): the image's copy would be
    // hidden, so it is left out.
    let mut keep: BTreeSet<ContainerPath> = slim
        .keep
        .into_keys()
        .filter(|p| !contents.mounts.iter().any(|m| p != m && p.is_under(m)))
        .collect();
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
                    permit: Default::default(),
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
        tar: fs.write_tar_with(&|p| keep.contains(p) && !replaced.contains(p), &extra)?,
        files: keep.iter().filter(|p| !replaced.contains(*p)).count() as u64
            + stub_files.len() as u64,
        serves,
        listed_dirs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn additions_add_missing_parents_and_keep_existing_ones() {
        let fs = ImageFs::from_tar(crate::testing::sample_tar(), "sample").unwrap();
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
        let layer = fs.write_tar_with(&|p| keep.contains(p), &extra).unwrap();
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
        let fs = ImageFs::from_tar(crate::testing::sample_tar(), "sample").unwrap();
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
