//! The source image's file system, read from its layers (`docker image
//! save`, spooled to an unnamed file so the daemon never holds a whole
//! image in memory) and indexed by path, whiteouts applied. Entries are later copied
//! byte for byte (headers, PAX records with xattrs and file capabilities,
//! data) into the slim layer, so mode, owner, mtime, xattrs and
//! capabilities survive unchanged, and the same image always gives the same
//! bytes (a container export would not: Docker touches /etc and friends
//! when it creates a container).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::ops::Range;
use std::os::unix::fs::FileExt;
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
    bytes: Backing,
    entries: BTreeMap<ContainerPath, FsEntry>,
}

/// Where the archive's bytes are: a spool file read in place (images from
/// the engine), or memory (small trees built in tests and by analyze).
enum Backing {
    Memory(Vec<u8>),
    Spool(File),
}

impl Backing {
    fn len(&self) -> io::Result<usize> {
        Ok(match self {
            Backing::Memory(b) => b.len(),
            Backing::Spool(f) => usize::try_from(f.metadata()?.len()).unwrap_or(usize::MAX),
        })
    }

    fn read(&self, range: Range<usize>) -> io::Result<Vec<u8>> {
        match self {
            Backing::Memory(b) => b
                .get(range)
                .map(<[u8]>::to_vec)
                .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof)),
            Backing::Spool(f) => {
                let mut out = vec![0; range.len()];
                f.read_exact_at(&mut out, range.start as u64)?;
                Ok(out)
            }
        }
    }

    /// A reader of `range`, buffered, for the tar parser.
    fn reader(&self, range: Range<usize>) -> BufReader<Window<'_>> {
        BufReader::with_capacity(
            64 << 10,
            Window {
                backing: self,
                start: range.start,
                end: range.end,
                pos: range.start,
            },
        )
    }
}

/// A window of a [`Backing`], readable and seekable on its own.
struct Window<'a> {
    backing: &'a Backing,
    start: usize,
    end: usize,
    pos: usize,
}

impl Read for Window<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.end.saturating_sub(self.pos));
        if n == 0 {
            return Ok(0);
        }
        let n = match self.backing {
            Backing::Memory(b) => {
                buf[..n].copy_from_slice(&b[self.pos..self.pos + n]);
                n
            }
            Backing::Spool(f) => f.read_at(&mut buf[..n], self.pos as u64)?,
        };
        self.pos += n;
        Ok(n)
    }
}

impl Seek for Window<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let len = (self.end - self.start) as i128;
        let at = match to {
            SeekFrom::Start(n) => n as i128,
            SeekFrom::End(n) => len + n as i128,
            SeekFrom::Current(n) => (self.pos - self.start) as i128 + n as i128,
        };
        if at < 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of a tar member",
            ));
        }
        // Past the end reads as the end, as for a file.
        self.pos = self.start + (at.min(len)) as usize;
        Ok(at as u64)
    }
}

const BLOCK: usize = 512;
const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

fn padded(n: usize) -> usize {
    n.div_ceil(BLOCK) * BLOCK
}

/// Where each member of the tar in `range` of `bytes` lies, relative to
/// the range's start.
fn members(bytes: &Backing, range: Range<usize>, what: &str) -> Result<Vec<(String, FsEntry)>> {
    let mut out = Vec::new();
    let len = range.len();
    let mut archive = tar::Archive::new(bytes.reader(range));
    let mut previous_end = 0usize;
    for entry in archive
        .entries_with_seek()
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
            data_start.saturating_add(size) <= len && end <= len.next_multiple_of(BLOCK)
        });
        let Some(end) = end else {
            bail!(
                "{what} is cut off: member {name} claims {stored} bytes at offset {data_start}, \
                 past the end of the archive ({len} bytes)"
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
        let bytes = Backing::Memory(bytes);
        let layer = members(&bytes, 0..bytes.len()?, what)?;
        let mut fs = Self {
            bytes,
            entries: BTreeMap::new(),
        };
        fs.apply_layer(0, 0, layer);
        Ok(fs)
    }

    /// An image as `docker image save` writes it, held in memory.
    pub fn from_docker_save(bytes: Vec<u8>, what: &str) -> Result<Self> {
        Self::from_saved(Backing::Memory(bytes), what)
    }

    /// An image as `docker image save` writes it, spooled to `file`, which
    /// is read in place from then on.
    pub fn from_docker_save_file(file: File, what: &str) -> Result<Self> {
        Self::from_saved(Backing::Spool(file), what)
    }

    /// `manifest.json` names the layer tars, bottom first.
    fn from_saved(bytes: Backing, what: &str) -> Result<Self> {
        let len = bytes
            .len()
            .with_context(|| format!("{what}: reading the saved image"))?;
        let files: BTreeMap<String, Range<usize>> = members(&bytes, 0..len, what)?
            .into_iter()
            .map(|(name, e)| (name, e.data))
            .collect();
        let manifest = files
            .get("manifest.json")
            .with_context(|| format!("{what}: no manifest.json in the saved image"))?;
        if manifest.len() > MAX_MANIFEST {
            bail!(
                "{what}: manifest.json is {} bytes, more than any image's ({MAX_MANIFEST})",
                manifest.len()
            );
        }
        let manifest = bytes
            .read(manifest.clone())
            .with_context(|| format!("{what}: reading manifest.json"))?;
        let manifest: serde_json::Value = serde_json::from_slice(&manifest)
            .with_context(|| format!("{what}: manifest.json is not JSON"))?;
        let layers: Vec<String> = manifest[0]["Layers"]
            .as_array()
            .with_context(|| format!("{what}: manifest.json lists no Layers"))?
            .iter()
            .filter_map(|l| l.as_str().map(str::to_owned))
            .collect();
        let mut parsed = Vec::new();
        for (i, name) in layers.iter().enumerate() {
            let Some(range) = files.get(name) else {
                bail!("{what}: layer {name} is named in manifest.json but missing");
            };
            let magic = bytes
                .read(range.start..range.start + range.len().min(2))
                .with_context(|| format!("{what}: reading layer {name}"))?;
            if magic.starts_with(&[0x1f, 0x8b]) {
                bail!("{what}: layer {name} is compressed; expected `docker image save` output");
            }
            parsed.push((
                i,
                range.start,
                members(&bytes, range.clone(), &format!("{what} layer {name}"))?,
            ));
        }
        let mut fs = Self {
            bytes,
            entries: BTreeMap::new(),
        };
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

    /// Reads `range` of the archive. The spool is the daemon's own file,
    /// so failing to read it is a fault of the host (I/O error), logged.
    fn read(&self, range: Range<usize>, path: &ContainerPath) -> Option<Vec<u8>> {
        self.bytes
            .read(range)
            .inspect_err(|e| tracing::error!("reading {path} from the spooled image: {e}"))
            .ok()
    }

    /// The entry's tar member as the image has it: extension headers,
    /// header and padded data.
    pub fn raw_entry(&self, path: &ContainerPath) -> Option<Vec<u8>> {
        self.read(self.entries.get(path)?.raw.clone(), path)
    }

    /// The regular file's entry (a hard link's target).
    fn file(&self, path: &ContainerPath) -> Option<&FsEntry> {
        let mut entry = self.entries.get(path)?;
        if let EntryKind::HardLink(target) = &entry.kind {
            entry = self.entries.get(target)?;
        }
        (entry.kind == EntryKind::File).then_some(entry)
    }

    /// The content of a regular file (a hard link reads as its target).
    pub fn data(&self, path: &ContainerPath) -> Option<Vec<u8>> {
        self.read(self.file(path)?.data.clone(), path)
    }

    /// Up to `len` bytes from the start of a regular file.
    pub fn head(&self, path: &ContainerPath, len: usize) -> Option<Vec<u8>> {
        let data = self.file(path)?.data.clone();
        self.read(data.start..data.start + data.len().min(len), path)
    }

    /// Total content bytes of all regular files.
    pub fn content_bytes(&self) -> u64 {
        self.entries.values().map(|e| e.size).sum()
    }

    /// A tar of the `keep` entries, each copied byte for byte in path order,
    /// hard links after the files they name, then the end-of-archive marker.
    pub fn write_tar(&self, keep: &dyn Fn(&ContainerPath) -> bool) -> Result<Vec<u8>> {
        self.write_tar_with(keep, &[])
    }

    /// `write_tar`, with `extra` (whole tar members, no end-of-archive
    /// marker) after the kept entries.
    pub fn write_tar_with(
        &self,
        keep: &dyn Fn(&ContainerPath) -> bool,
        extra: &[u8],
    ) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        for hard_links in [false, true] {
            for (path, entry) in self.entries() {
                if matches!(entry.kind, EntryKind::HardLink(_)) == hard_links && keep(path) {
                    let start = out.len();
                    out.resize(start + entry.raw.len(), 0);
                    match &self.bytes {
                        Backing::Memory(b) => out[start..].copy_from_slice(&b[entry.raw.clone()]),
                        Backing::Spool(f) => f
                            .read_exact_at(&mut out[start..], entry.raw.start as u64)
                            .with_context(|| format!("reading {path} from the spooled image"))?,
                    }
                }
            }
        }
        out.extend_from_slice(extra);
        out.extend_from_slice(&[0; 2 * BLOCK]);
        Ok(out)
    }

    /// Entries in path order, so parents come before children.
    pub fn entries(&self) -> impl Iterator<Item = (&ContainerPath, &FsEntry)> {
        self.entries.iter()
    }
}

/// No image's manifest.json comes near this; a larger one is hostile.
const MAX_MANIFEST: usize = 16 << 20;

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
        ImageFs::head(self, path, len)
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
        let out = tree
            .write_tar(&|path| path.as_str() != "/etc/motd")
            .unwrap();
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
        let out = fs.write_tar(&|_| true).unwrap();
        let again = ImageFs::from_tar(out, "written").unwrap();
        assert_eq!(again.data(&p("/a/w")).unwrap(), b"4");
    }

    /// The same saved image read from a spool file gives the same tree and
    /// the same bytes as read from memory.
    #[test]
    fn a_spooled_image_reads_as_the_same_tree() {
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
        let big = vec![7u8; 200_000];
        let lower = layer(&[("etc/passwd", b"root:x:0:0::/root:/bin/sh\n"), ("big", &big)]);
        let upper = layer(&[("etc/.wh.passwd", b""), ("etc/group", b"root:x:0:\n")]);
        let manifest = br#"[{"Layers":["l0/layer.tar","l1/layer.tar"]}]"#;
        let saved = layer(&[
            ("manifest.json", manifest),
            ("l0/layer.tar", &lower),
            ("l1/layer.tar", &upper),
        ]);
        let mut file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut file, &saved).unwrap();
        let spooled = ImageFs::from_docker_save_file(file, "spooled").unwrap();
        let memory = ImageFs::from_docker_save(saved, "memory").unwrap();
        let names = |fs: &ImageFs| fs.entries().map(|(p, _)| p.clone()).collect::<Vec<_>>();
        assert_eq!(names(&spooled), names(&memory));
        assert_eq!(names(&spooled), [p("/big"), p("/etc/group")]);
        assert_eq!(spooled.data(&p("/big")).unwrap(), big);
        assert_eq!(spooled.head(&p("/big"), 3).unwrap(), [7, 7, 7]);
        assert_eq!(
            spooled.write_tar(&|_| true).unwrap(),
            memory.write_tar(&|_| true).unwrap()
        );
    }

    #[test]
    fn a_cut_off_spool_is_named() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(4096);
        b.append_data(&mut h, "manifest.json", &[b' '; 4096][..]).unwrap();
        let mut saved = b.into_inner().unwrap();
        saved.truncate(1024);
        let mut file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut file, &saved).unwrap();
        let e = ImageFs::from_docker_save_file(file, "img").err().unwrap();
        assert!(format!("{e:#}").contains("cut off"), "{e:#}");
    }
}
