//! The image tree: the container's file system as the model sees it, to
//! follow symlinks along each used name and read shebang lines.
//!
//! A trace records the names programs used. What those names need depends
//! on the tree: on a merged-/usr system `/bin/sh` needs the `/bin -> usr/bin`
//! link, the `/usr/bin/sh -> dash` link and `/usr/bin/dash`. Walks are done
//! here, component by component, so an absolute link inside the image never
//! escapes to the host's files.

use std::collections::{HashMap, VecDeque};
use std::io::Read;
use std::path::PathBuf;

use crate::trace::ContainerPath;

/// Read access to a container's file system. Paths are only asked for once
/// every directory above them is known not to be a symlink.
pub trait ImageTree: Send {
    /// The content of the symlink at `path`; `None` when `path` is not a
    /// symlink or does not exist.
    fn read_link(&self, path: &ContainerPath) -> Option<String>;
    /// Up to `len` bytes from the start of the regular file at `path`.
    fn head(&self, path: &ContainerPath, len: usize) -> Option<Vec<u8>>;
    /// Whether `path` is a directory (not a symlink to one) in the image;
    /// `None` when the tree cannot say.
    fn is_dir(&self, _path: &ContainerPath) -> Option<bool> {
        None
    }
}

/// An image tree unpacked in a host directory: an exported image, a
/// container's merged directory, or `/proc/PID/root` of a running one.
#[derive(Clone, Debug)]
pub struct DirTree {
    root: PathBuf,
}

impl DirTree {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn host_path(&self, path: &ContainerPath) -> PathBuf {
        self.root.join(path.as_str().trim_start_matches('/'))
    }
}

impl ImageTree for DirTree {
    fn read_link(&self, path: &ContainerPath) -> Option<String> {
        let link = std::fs::read_link(self.host_path(path)).ok()?;
        Some(link.to_string_lossy().into_owned())
    }

    fn head(&self, path: &ContainerPath, len: usize) -> Option<Vec<u8>> {
        let file = std::fs::File::open(self.host_path(path)).ok()?;
        if !file.metadata().ok()?.is_file() {
            return None;
        }
        let mut buf = Vec::with_capacity(len);
        file.take(len as u64).read_to_end(&mut buf).ok()?;
        Some(buf)
    }

    fn is_dir(&self, path: &ContainerPath) -> Option<bool> {
        Some(std::fs::symlink_metadata(self.host_path(path)).is_ok_and(|m| m.is_dir()))
    }
}

/// Linux gives up after 40 links in one lookup (ELOOP).
const MAX_LINKS: usize = 40;

/// What looking up one name went through.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Walk {
    /// Directories passed through, root first.
    pub dirs: Vec<ContainerPath>,
    /// Symlinks followed, in order.
    pub links: Vec<ContainerPath>,
    /// The name the lookup ended at, with every link followed.
    pub resolved: Option<ContainerPath>,
}

/// Walks names through an optional tree, caching what it read. Without a
/// tree, only the lexical parent directories are known.
#[derive(Default)]
pub(super) struct Walker {
    tree: Option<Box<dyn ImageTree>>,
    links: HashMap<ContainerPath, Option<String>>,
}

impl Walker {
    pub(super) fn new(tree: Option<Box<dyn ImageTree>>) -> Self {
        Self {
            tree,
            links: HashMap::new(),
        }
    }

    pub(super) fn has_tree(&self) -> bool {
        self.tree.is_some()
    }

    pub(super) fn is_dir(&self, path: &ContainerPath) -> Option<bool> {
        self.tree.as_ref()?.is_dir(path)
    }

    fn read_link(&mut self, path: &ContainerPath) -> Option<String> {
        let tree = self.tree.as_ref()?;
        self.links
            .entry(path.clone())
            .or_insert_with(|| tree.read_link(path))
            .clone()
    }

    /// The walk the kernel does for `path`; `follow_final` as without
    /// O_NOFOLLOW / AT_SYMLINK_NOFOLLOW.
    pub(super) fn walk(&mut self, path: &ContainerPath, follow_final: bool) -> Walk {
        walk_with(path, follow_final, |p| self.read_link(p))
    }

    /// The interpreter a `#!` line names, if `path` starts with one.
    pub(super) fn interpreter(&self, path: &ContainerPath) -> Option<ContainerPath> {
        let head = self.tree.as_ref()?.head(path, 256)?;
        shebang_interpreter(&head)
    }
}

/// The lookup of `path` in `tree`, as the kernel does it: each symlink
/// component is followed, inside the tree; `follow_final` as without
/// O_NOFOLLOW / AT_SYMLINK_NOFOLLOW.
pub fn walk(tree: &dyn ImageTree, path: &ContainerPath, follow_final: bool) -> Walk {
    walk_with(path, follow_final, |p| tree.read_link(p))
}

fn walk_with(
    path: &ContainerPath,
    follow_final: bool,
    mut read_link: impl FnMut(&ContainerPath) -> Option<String>,
) -> Walk {
    let mut walk = Walk::default();
    let mut todo: VecDeque<String> = components(path.as_str());
    let mut cur = ContainerPath::root();
    while let Some(part) = todo.pop_front() {
        if part == ".." {
            cur = cur.parent();
            continue;
        }
        if !walk.dirs.contains(&cur) {
            walk.dirs.push(cur.clone());
        }
        let next = cur.join(&part);
        if (follow_final || !todo.is_empty())
            && let Some(target) = read_link(&next)
        {
            walk.links.push(next);
            if walk.links.len() > MAX_LINKS {
                return walk; // ELOOP: the lookup fails
            }
            if target.starts_with('/') {
                cur = ContainerPath::root();
            }
            for (i, c) in components(&target).into_iter().enumerate() {
                todo.insert(i, c);
            }
            continue;
        }
        cur = next;
    }
    walk.resolved = Some(cur);
    walk
}

fn components(path: &str) -> VecDeque<String> {
    path.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .map(str::to_owned)
        .collect()
}

/// The interpreter of a `#!` line: its first word, which must be absolute
/// (the kernel would resolve a relative one against the caller's cwd).
pub fn shebang_interpreter(head: &[u8]) -> Option<ContainerPath> {
    let line = head.strip_prefix(b"#!")?;
    let line = &line[..line.iter().position(|&b| b == b'\n').unwrap_or(line.len())];
    let line = String::from_utf8_lossy(line);
    let interp = line.split([' ', '\t']).find(|w| !w.is_empty())?;
    ContainerPath::new(interp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn p(s: &str) -> ContainerPath {
        ContainerPath::new(s).unwrap()
    }

    /// A merged-/usr tree like Debian's, with an absolute link that would
    /// point into the host if followed there.
    fn tree() -> (tempfile::TempDir, DirTree) {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        std::fs::create_dir_all(r.join("usr/bin")).unwrap();
        std::fs::create_dir_all(r.join("etc/alternatives")).unwrap();
        symlink("usr/bin", r.join("bin")).unwrap();
        symlink("dash", r.join("usr/bin/sh")).unwrap();
        std::fs::write(r.join("usr/bin/dash"), b"\x7fELF").unwrap();
        symlink("/etc/alternatives/awk", r.join("usr/bin/awk")).unwrap();
        symlink("/usr/bin/mawk", r.join("etc/alternatives/awk")).unwrap();
        std::fs::write(r.join("usr/bin/job"), b"#!/bin/sh -e\necho hi\n").unwrap();
        symlink("loop", r.join("usr/bin/loop")).unwrap();
        let tree = DirTree::new(r);
        (dir, tree)
    }

    #[test]
    fn merged_usr_chain() {
        let (_d, t) = tree();
        let mut w = Walker::new(Some(Box::new(t)));
        let walk = w.walk(&p("/bin/sh"), true);
        assert_eq!(walk.links, vec![p("/bin"), p("/usr/bin/sh")]);
        assert_eq!(walk.dirs, vec![p("/"), p("/usr"), p("/usr/bin")]);
        assert_eq!(walk.resolved, Some(p("/usr/bin/dash")));
        // Not following the last link (lstat, unlink): the link itself.
        let walk = w.walk(&p("/bin/sh"), false);
        assert_eq!(walk.resolved, Some(p("/usr/bin/sh")));
    }

    #[test]
    fn absolute_links_stay_inside_the_tree() {
        let (_d, t) = tree();
        let mut w = Walker::new(Some(Box::new(t)));
        let walk = w.walk(&p("/usr/bin/awk"), true);
        assert_eq!(
            walk.links,
            vec![p("/usr/bin/awk"), p("/etc/alternatives/awk")]
        );
        assert_eq!(walk.resolved, Some(p("/usr/bin/mawk")));
    }

    #[test]
    fn a_link_loop_ends_unresolved() {
        let (_d, t) = tree();
        let mut w = Walker::new(Some(Box::new(t)));
        let walk = w.walk(&p("/usr/bin/loop"), true);
        assert_eq!(walk.resolved, None);
        assert_eq!(walk.links.len(), MAX_LINKS + 1);
    }

    #[test]
    fn without_a_tree_only_parents() {
        let mut w = Walker::new(None);
        let walk = w.walk(&p("/bin/sh"), true);
        assert_eq!(walk.dirs, vec![p("/"), p("/bin")]);
        assert!(walk.links.is_empty());
        assert_eq!(walk.resolved, Some(p("/bin/sh")));
    }

    #[test]
    fn shebang_lines() {
        let (_d, t) = tree();
        let w = Walker::new(Some(Box::new(t)));
        assert_eq!(w.interpreter(&p("/usr/bin/job")), Some(p("/bin/sh")));
        assert_eq!(w.interpreter(&p("/usr/bin/dash")), None);
        assert_eq!(
            shebang_interpreter(b"#! \t/usr/bin/env python3\n"),
            Some(p("/usr/bin/env"))
        );
        assert_eq!(shebang_interpreter(b"#!python\n"), None);
        assert_eq!(shebang_interpreter(b"#!/bin/sh"), Some(p("/bin/sh")));
        assert_eq!(shebang_interpreter(b"\x7fELF"), None);
    }
}
