//! Listed directories: where a program read the names, not only the files.
//!
//! A program that lists a directory (opendir/readdir: getdents64 on a
//! descriptor opened on it) sees every entry, also those it does not go on
//! to open on the run: the templates, languages or plugins a page offers,
//! the configuration fragments a later start includes. A slim image that
//! keeps only the opened entries gives the same listing fewer names, and
//! the program changes behaviour without an error. So the slim planner
//! keeps the entries of a listed directory (one level, not its subtree),
//! within a budget, and names in the report every listed directory it did
//! not keep whole.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::image::fs::{EntryKind, ImageFs};
use crate::model::{Access, Exe, Model, Resource, walk};
use crate::trace::ContainerPath;

/// Kernel file systems, mounted at run time: nothing listed there is image
/// content (`/proc/self/fd` is listed by many programs).
const KERNEL_FILE_SYSTEMS: [&str; 3] = ["/proc", "/sys", "/dev"];

/// A directory of the image that observed executables listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedDir {
    /// The directory, resolved through the image's symlinks.
    pub dir: ContainerPath,
    pub listed_by: BTreeSet<Exe>,
    /// Its entries in the image (one level), in path order.
    pub entries: Vec<ContainerPath>,
}

fn is_under(path: &ContainerPath, prefix: &str) -> bool {
    let p = path.as_str();
    p == prefix || (p.starts_with(prefix) && p.as_bytes().get(prefix.len()) == Some(&b'/'))
}

/// The directories of the image that `exes` listed, in path order. Listed
/// directories absent from the image (created at run time) hold nothing to
/// keep and are left out.
pub fn listed_dirs(model: &Model, exes: &BTreeSet<Exe>, fs: &Arc<ImageFs>) -> Vec<ListedDir> {
    let mut dirs: BTreeMap<ContainerPath, BTreeSet<Exe>> = BTreeMap::new();
    for exe in exes {
        for (resource, access) in model.uses(std::slice::from_ref(exe)) {
            let Resource::Path(path) = resource else {
                continue;
            };
            if !access.contains(&Access::List) {
                continue;
            }
            let Some(dir) = walk(fs, &path, true).resolved else {
                continue;
            };
            if KERNEL_FILE_SYSTEMS.iter().any(|k| is_under(&dir, k))
                || fs.get(&dir).is_none_or(|e| e.kind != EntryKind::Dir)
            {
                continue;
            }
            dirs.entry(dir).or_default().insert(exe.clone());
        }
    }
    if dirs.is_empty() {
        return Vec::new();
    }
    let mut entries: BTreeMap<&ContainerPath, Vec<ContainerPath>> = BTreeMap::new();
    for (path, _) in fs.entries() {
        if *path == ContainerPath::root() {
            continue;
        }
        let parent = path.parent();
        if let Some((dir, _)) = dirs.get_key_value(&parent) {
            entries.entry(dir).or_default().push(path.clone());
        }
    }
    dirs.iter()
        .map(|(dir, listed_by)| ListedDir {
            dir: dir.clone(),
            listed_by: listed_by.clone(),
            entries: entries.remove(dir).unwrap_or_default(),
        })
        .collect()
}

/// The bytes `path` brings into an image: a file's content, or that of the
/// file a hard link or symlink leads to.
pub fn content_bytes(fs: &Arc<ImageFs>, path: &ContainerPath) -> u64 {
    let Some(entry) = fs.get(path) else {
        return 0;
    };
    match &entry.kind {
        EntryKind::File => entry.size,
        EntryKind::HardLink(target) => fs.get(target).map_or(0, |e| e.size),
        EntryKind::Symlink(_) => walk(fs, path, true)
            .resolved
            .filter(|r| r != path)
            .and_then(|r| fs.get(&r))
            .filter(|e| e.kind == EntryKind::File)
            .map_or(0, |e| e.size),
        EntryKind::Dir | EntryKind::Special => 0,
    }
}
