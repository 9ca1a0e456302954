//! The source image's file system, read from its layers (`docker image
//! save`) and indexed by path, whiteouts applied. Entries are later copied
//! byte for byte (headers, PAX records with xattrs and file capabilities,
//! data) into the slim layer, so mode, owner, mtime, xattrs and
//! capabilities survive unchanged, and the same image always gives the same
//! bytes (a container export would not: Docker touches /etc and friends
//! when it creates a container).

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use tar::EntryType;

use crate::model::ImageTree;
use crate::trace::ContainerPath;

/// What kind of file system object an entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    Symlink(String),
    /// A hard link to another entry, by its path.
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
    /// Owner and group, numeric as the layer records them.
    pub uid: u32,
    pub gid: u32,
    /// Holds a `security.capability` extended attribute: file capabilities.
    pub file_caps: bool,
    /// Which layer it comes from (0 is the bottom).
    layer: usize,
    /// The entry's bytes in the archive: extension headers, header, padded data.
    raw: Range<usize>,
    data: Range<usize>,
}

/// An image's tree.
pub struct ImageFs {
    bytes: Vec<u8>,
    entries: BTreeMap<ContainerPath, FsEntry>,
}

const BLOCK: usize = 512;
const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

fn padded(n: usize) -> usize {
    n.div_ceil(BLOCK) * BLOCK
}

/// Where each member of a tar lies in it.
fn members(bytes: &[u8], what: &str) -> Result<Vec<(String, FsEntry)>> {
    let mut out = Vec::new();
    let mut archive = tar::Archive::new(std::io::Cursor::new(bytes));
    let mut previous_end = 0usize;
    for entry in archive
        .entries()
        .with_context(|| format!("reading the tar of {what}"))?
    {
        let mut entry = entry.with_context(|| format!("reading an entry of {what}"))?;
        let file_caps = entry
            .pax_extensions()
            .ok()
            .flatten()
            .is_some_and(|mut exts| {
                exts.any(|x| x.is_ok_and(|x| x.key() == Ok("SCHILY.xattr.security.capability")))
            });
        let name = entry
            .path()
            .with_context(|| format!("an entry name in {what}"))?
            .to_string_lossy()
            .into_owned();
        let header = entry.header();
        let data_start = entry.raw_file_position() as usize;
        // What the archive holds of the member: for a GNU sparse file, its
        // data chunks, not the size it expands to.
        let stored = header
            .entry_size()
            .with_context(|| format!("the size of {name} in {what}"))?;
        let size = usize::try_from(stored).unwrap_or(usize::MAX);
        let end = padded(size).checked_add(data_start).filter(|&end| {
            data_start.saturating_add(size) <= bytes.len()
                && end <= bytes.len().next_multiple_of(BLOCK)
        });
        let Some(end) = end else {
            bail!(
                "{what} is cut off: member {name} claims {stored} bytes at offset {data_start}, \
                 past the end of the archive ({} bytes)",
                bytes.len()
            );
        };
        let kind = match header.entry_type() {
            // A sparse file is copied as it is stored; its stored bytes
            // stand for its content when it is read.
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => EntryKind::File,
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
        out.push((
            name,
            FsEntry {
                size: if kind == EntryKind::File {
                    size as u64
                } else {
                    0
                },
                mode: header.mode().unwrap_or(0),
                uid: header.uid().unwrap_or(0) as u32,
                gid: header.gid().unwrap_or(0) as u32,
                file_caps,
                kind,
                layer: 0,
                raw: previous_end..end,
                data: data_start..data_start + size,
            },
        ));
        previous_end = end;
    }
    Ok(out)
}

impl ImageFs {
    /// One flattened tree (a single layer, or a container export).
    pub fn from_tar(bytes: Vec<u8>, what: &str) -> Result<Self> {
        let mut fs = Self {
            bytes: Vec::new(),
            entries: BTreeMap::new(),
        };
        let layer = members(&bytes, what)?;
        fs.bytes = bytes;
        fs.apply_layer(0, 0, layer);
        Ok(fs)
    }

    /// An image as `docker image save` writes it: `manifest.json` names the
    /// layer tars, bottom first.
    pub fn from_docker_save(bytes: Vec<u8>, what: &str) -> Result<Self> {
        let files: BTreeMap<String, Range<usize>> = members(&bytes, what)?
            .into_iter()
            .map(|(name, e)| (name, e.data))
            .collect();
        let manifest = files
            .get("manifest.json")
            .with_context(|| format!("{what}: no manifest.json in the saved image"))?;
        let manifest: serde_json::Value = serde_json::from_slice(&bytes[manifest.clone()])
            .with_context(|| format!("{what}: manifest.json is not JSON"))?;
        let layers: Vec<String> = manifest[0]["Layers"]
            .as_array()
            .with_context(|| format!("{what}: manifest.json lists no Layers"))?
            .iter()
            .filter_map(|l| l.as_str().map(str::to_owned))
            .collect();
        let mut fs = Self {
            bytes: Vec::new(),
            entries: BTreeMap::new(),
        };
        let mut parsed = Vec::new();
        for (i, name) in layers.iter().enumerate() {
            let Some(range) = files.get(name) else {
                bail!("{what}: layer {name} is named in manifest.json but missing");
            };
            let layer = &bytes[range.clone()];
            if layer.starts_with(&[0x1f, 0x8b]) {
                bail!("{what}: layer {name} is compressed; expected `docker image save` output");
            }
            parsed.push((
                i,
                range.start,
                members(layer, &format!("{what} layer {name}"))?,
            ));
        }
        fs.bytes = bytes;
        for (i, offset, layer) in parsed {
            fs.apply_layer(i, offset, layer);
        }
        Ok(fs)
    }

    /// Lays one layer over the tree, applying its whiteouts.
    fn apply_layer(&mut self, index: usize, offset: usize, layer: Vec<(String, FsEntry)>) {
        for (name, mut entry) in layer {
            let Some(path) = ContainerPath::new(&format!("/{name}")) else {
                continue;
            };
            let file = path.as_str().rsplit('/').next().unwrap_or("");
            if file == OPAQUE {
                // Everything lower layers had below this directory is gone.
                let dir = path.parent();
                self.entries
                    .retain(|p, e| e.layer == index || !(is_below(p, &dir)));
                continue;
            }
            if let Some(hidden) = file.strip_prefix(WHITEOUT) {
                let gone = path.parent().join(hidden);
                self.entries
                    .retain(|p, _| *p != gone && !is_below(p, &gone));
                continue;
            }
            entry.layer = index;
            entry.raw = entry.raw.start + offset..entry.raw.end + offset;
            entry.data = entry.data.start + offset..entry.data.end + offset;
            if entry.kind != EntryKind::Dir {
                // A file replacing a directory hides what was below it.
                self.entries.retain(|p, _| !is_below(p, &path));
            }
            self.entries.insert(path, entry);
        }
    }

    pub fn get(&self, path: &ContainerPath) -> Option<&FsEntry> {
        self.entries.get(path)
    }

    /// The entry's tar member as the image has it: extension headers,
    /// header and padded data.
    pub fn raw_entry(&self, path: &ContainerPath) -> Option<&[u8]> {
        Some(&self.bytes[self.entries.get(path)?.raw.clone()])
    }

    /// Entries in path order, so parents come before children.
    pub fn entries(&self) -> impl Iterator<Item = (&ContainerPath, &FsEntry)> {
        self.entries.iter()
    }

    /// The content of a regular file (a hard link reads as its target).
    pub fn data(&self, path: &ContainerPath) -> Option<&[u8]> {
        let mut entry = self.entries.get(path)?;
        if let EntryKind::HardLink(target) = &entry.kind {
            entry = self.entries.get(target)?;
        }
        (entry.kind == EntryKind::File).then(|| &self.bytes[entry.data.clone()])
    }

    /// Total content bytes of all regular files.
    pub fn content_bytes(&self) -> u64 {
        self.entries.values().map(|e| e.size).sum()
    }

    /// A tar of the `keep` entries, each copied byte for byte in path order,
    /// hard links after the files they name, then the end-of-archive marker.
    pub fn write_tar(&self, keep: &dyn Fn(&ContainerPath) -> bool) -> Vec<u8> {
        self.write_tar_with(keep, &[])
    }

    /// `write_tar`, with `extra` (whole tar members, no end-of-archive
    /// marker) after the kept entries.
    pub fn write_tar_with(&self, keep: &dyn Fn(&ContainerPath) -> bool, extra: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for hard_links in [false, true] {
            for (path, entry) in self.entries() {
                if matches!(entry.kind, EntryKind::HardLink(_)) == hard_links && keep(path) {
                    out.extend_from_slice(&self.bytes[entry.raw.clone()]);
                }
            }
        }
        out.extend_from_slice(extra);
        out.extend_from_slice(&[0; 2 * BLOCK]);
        out
    }
}

fn is_below(path: &ContainerPath, dir: &ContainerPath) -> bool {
    let (p, d) = (path.as_str(), dir.as_str());
    p.len() > d.len() && p.starts_with(d) && (d == "/" || p.as_bytes()[d.len()] == b'/')
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

    fn is_dir(&self, path: &ContainerPath) -> Option<bool> {
        Some(self.get(path).is_some_and(|e| e.kind == EntryKind::Dir))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::testing::sample_tar;

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
                "bin",
                "etc/",
                "usr/",
                "usr/bin/",
                "usr/bin/ping",
                "usr/bin/ping6"
            ]
        );
    }

    /// Two layers: the upper one deletes a file, hides a directory's old
    /// contents and replaces a file.
    #[test]
    fn layers_apply_whiteouts() {
        let layer = |files: &[(&str, &[u8])]| {
            let mut b = tar::Builder::new(Vec::new());
            for (name, data) in files {
                let mut h = tar::Header::new_gnu();
                h.set_mode(0o644);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, name, *data).unwrap();
            }
            b.into_inner().unwrap()
        };
        let lower = layer(&[("a/x", b"1"), ("a/y", b"2"), ("b/z", b"3"), ("c", b"old")]);
        let upper = layer(&[
            ("a/.wh..wh..opq", b""),
            ("a/w", b"4"),
            ("b/.wh.z", b""),
            ("c", b"new"),
        ]);
        let manifest =
            br#"[{"Config":"c.json","RepoTags":[],"Layers":["l0/layer.tar","l1/layer.tar"]}]"#;
        let saved = layer(&[
            ("manifest.json", manifest),
            ("l0/layer.tar", &lower),
            ("l1/layer.tar", &upper),
        ]);
        let fs = ImageFs::from_docker_save(saved, "test image").unwrap();
        let paths: Vec<&str> = fs.entries().map(|(p, _)| p.as_str()).collect();
        assert_eq!(paths, ["/a/w", "/c"]);
        assert_eq!(fs.data(&p("/c")).unwrap(), b"new");
        let out = fs.write_tar(&|_| true);
        let again = ImageFs::from_tar(out, "written").unwrap();
        assert_eq!(again.data(&p("/a/w")).unwrap(), b"4");
    }
}
