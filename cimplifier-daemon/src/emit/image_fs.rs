//! The source image's file system, held as the tar the engine exported, with
//! an index by path. Entries are later copied byte for byte (headers, PAX
//! records with xattrs and file capabilities, data) into the slim layer, so
//! mode, owner, mtime, xattrs and capabilities survive unchanged.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;

use anyhow::{Context, Result};
use tar::EntryType;

use crate::model::ImageTree;
use crate::trace::ContainerPath;

/// What kind of file system object an entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    Symlink(String),
    /// A hard link to an earlier entry, by its path.
    HardLink(ContainerPath),
    /// Device, fifo or socket node.
    Special,
}

#[derive(Clone, Debug)]
pub struct FsEntry {
    pub kind: EntryKind,
    /// Bytes of content (0 for all but regular files).
    pub size: u64,
    pub mode: u32,
    /// The entry's bytes in the tar: extension headers, header, padded data.
    raw: Range<usize>,
    data: Range<usize>,
}

/// An image's tree, from a flattened tar (`docker export`).
pub struct ImageFs {
    tar: Vec<u8>,
    entries: BTreeMap<ContainerPath, FsEntry>,
    /// Paths in the tar's order, so output keeps parents before children.
    order: Vec<ContainerPath>,
}

const BLOCK: usize = 512;

fn padded(n: usize) -> usize {
    n.div_ceil(BLOCK) * BLOCK
}

impl ImageFs {
    /// Indexes a flattened image tar. `what` names it in errors.
    pub fn from_tar(tar: Vec<u8>, what: &str) -> Result<Self> {
        let mut entries = BTreeMap::new();
        let mut order = Vec::new();
        let mut archive = tar::Archive::new(std::io::Cursor::new(&tar[..]));
        let mut previous_end = 0usize;
        for entry in archive
            .entries()
            .with_context(|| format!("reading the tar of {what}"))?
        {
            let entry = entry.with_context(|| format!("reading an entry of {what}"))?;
            let name = entry
                .path()
                .with_context(|| format!("an entry name in {what}"))?;
            let Some(path) = ContainerPath::new(&format!("/{}", name.to_string_lossy())) else {
                continue;
            };
            let header = entry.header();
            let data_start = entry.raw_file_position() as usize;
            let size = entry.size() as usize;
            let kind = match header.entry_type() {
                EntryType::Regular | EntryType::Continuous => EntryKind::File,
                EntryType::Directory => EntryKind::Dir,
                EntryType::Symlink => EntryKind::Symlink(
                    entry
                        .link_name()?
                        .map(|l| l.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                ),
                EntryType::Link => {
                    let target = entry.link_name()?.unwrap_or_default();
                    match ContainerPath::new(&format!("/{}", target.to_string_lossy())) {
                        Some(t) => EntryKind::HardLink(t),
                        None => EntryKind::Special,
                    }
                }
                _ => EntryKind::Special,
            };
            let end = data_start + padded(size);
            let fs_entry = FsEntry {
                size: if kind == EntryKind::File {
                    size as u64
                } else {
                    0
                },
                mode: header.mode().unwrap_or(0),
                kind,
                raw: previous_end..end,
                data: data_start..data_start + size,
            };
            previous_end = end;
            if entries.insert(path.clone(), fs_entry).is_none() {
                order.push(path);
            }
        }
        Ok(Self {
            tar,
            entries,
            order,
        })
    }

    pub fn get(&self, path: &ContainerPath) -> Option<&FsEntry> {
        self.entries.get(path)
    }

    pub fn entries(&self) -> impl Iterator<Item = (&ContainerPath, &FsEntry)> {
        self.order.iter().map(|p| (p, &self.entries[p]))
    }

    /// The content of a regular file (a hard link reads as its target).
    pub fn data(&self, path: &ContainerPath) -> Option<&[u8]> {
        let mut entry = self.entries.get(path)?;
        if let EntryKind::HardLink(target) = &entry.kind {
            entry = self.entries.get(target)?;
        }
        (entry.kind == EntryKind::File).then(|| &self.tar[entry.data.clone()])
    }

    /// Total content bytes of all regular files.
    pub fn content_bytes(&self) -> u64 {
        self.entries.values().map(|e| e.size).sum()
    }

    /// A tar of the `keep` entries, each copied byte for byte, in the
    /// source's order, with the end-of-archive marker.
    pub fn write_tar(&self, keep: &dyn Fn(&ContainerPath) -> bool) -> Vec<u8> {
        let mut out = Vec::new();
        for (path, entry) in self.entries() {
            if keep(path) {
                out.extend_from_slice(&self.tar[entry.raw.clone()]);
            }
        }
        out.extend_from_slice(&[0; 2 * BLOCK]);
        out
    }
}

impl ImageTree for Arc<ImageFs> {
    fn read_link(&self, path: &ContainerPath) -> Option<String> {
        match &self.get(path)?.kind {
            EntryKind::Symlink(target) => Some(target.clone()),
            _ => None,
        }
    }

    fn head(&self, path: &ContainerPath, len: usize) -> Option<Vec<u8>> {
        let data = self.data(path)?;
        Some(data[..data.len().min(len)].to_vec())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A small image tar: merged-/usr links, a file with an xattr, a hard link.
    pub(crate) fn sample_tar() -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let dir = |path: &str| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
            (h, path.to_owned())
        };
        for d in ["usr/", "usr/bin/", "etc/"] {
            let (mut h, p) = dir(d);
            b.append_data(&mut h, p, &[][..]).unwrap();
        }
        let mut link = tar::Header::new_gnu();
        link.set_entry_type(EntryType::Symlink);
        link.set_size(0);
        b.append_link(&mut link, "bin", "usr/bin").unwrap();
        b.append_pax_extensions([("SCHILY.xattr.security.capability", &b"\x01\x00\x00\x02"[..])])
            .unwrap();
        let mut f = tar::Header::new_gnu();
        f.set_mode(0o4755);
        f.set_uid(0);
        f.set_mtime(1_700_000_000);
        f.set_size(8);
        b.append_data(&mut f, "usr/bin/ping", &b"\x7fELFping"[..])
            .unwrap();
        let mut hl = tar::Header::new_gnu();
        hl.set_entry_type(EntryType::Link);
        hl.set_size(0);
        b.append_link(&mut hl, "usr/bin/ping6", "usr/bin/ping")
            .unwrap();
        let mut c = tar::Header::new_gnu();
        c.set_mode(0o644);
        c.set_size(5);
        b.append_data(&mut c, "etc/motd", &b"hello"[..]).unwrap();
        b.into_inner().unwrap()
    }

    fn p(s: &str) -> ContainerPath {
        ContainerPath::new(s).unwrap()
    }

    #[test]
    fn indexes_and_copies_entries_verbatim() {
        let fs = ImageFs::from_tar(sample_tar(), "sample").unwrap();
        assert_eq!(
            fs.get(&p("/bin")).unwrap().kind,
            EntryKind::Symlink("usr/bin".into())
        );
        assert_eq!(fs.data(&p("/usr/bin/ping6")).unwrap(), b"\x7fELFping");
        assert_eq!(fs.content_bytes(), 13);
        let tree = Arc::new(fs);
        assert_eq!(tree.read_link(&p("/bin")).as_deref(), Some("usr/bin"));
        let out = tree.write_tar(&|path| path.as_str() != "/etc/motd");
        let mut archive = tar::Archive::new(&out[..]);
        let mut names = Vec::new();
        for e in archive.entries().unwrap() {
            let mut e = e.unwrap();
            let name = e.path().unwrap().to_string_lossy().into_owned();
            if name == "usr/bin/ping" {
                assert_eq!(e.header().mode().unwrap(), 0o4755);
                assert_eq!(e.header().mtime().unwrap(), 1_700_000_000);
                let pax: Vec<_> = e
                    .pax_extensions()
                    .unwrap()
                    .unwrap()
                    .map(|x| x.unwrap().key().unwrap().to_owned())
                    .collect();
                assert_eq!(
                    pax,
                    ["SCHILY.xattr.security.capability"],
                    "the capability survives"
                );
            }
            names.push(name);
        }
        assert_eq!(
            names,
            [
                "usr/",
                "usr/bin/",
                "etc/",
                "bin",
                "usr/bin/ping",
                "usr/bin/ping6"
            ]
        );
    }
}
