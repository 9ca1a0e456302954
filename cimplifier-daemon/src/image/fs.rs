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

    /// Decompresses the layer at `range` to the end of the archive (the
    /// spool is the daemon's own file) and gives where it now lies. More
    /// than `limit` bytes out is refused: a decompression bomb.
    fn decompress(
        &mut self,
        range: Range<usize>,
        compression: Compression,
        limit: u64,
    ) -> Result<Range<usize>> {
        let start = self.len()?;
        let spool = match &*self {
            Backing::Spool(f) => Some(f),
            Backing::Memory(_) => None,
        };
        let mut decoder: Box<dyn Read + '_> = {
            let window = self.reader(range);
            match compression {
                Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(window)),
                Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(window)?),
                Compression::None => Box::new(window),
            }
        };
        let mut out = Vec::new();
        let mut chunk = vec![0u8; 1 << 20];
        let mut written = 0u64;
        loop {
            let n = decoder.read(&mut chunk)?;
            if n == 0 {
                break;
            }
            written += n as u64;
            if written > limit {
                bail!("it expands past {limit} bytes, refused as a decompression bomb");
            }
            match spool {
                None => out.extend_from_slice(&chunk[..n]),
                Some(f) => f.write_all_at(&chunk[..n], start as u64 + written - n as u64)?,
            }
        }
        drop(decoder);
        if let Backing::Memory(b) = self {
            b.extend_from_slice(&out);
        }
        Ok(start..start + written as usize)
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

    /// An image archive held in memory: `docker image save`'s format or an
    /// OCI image layout in a tar (see [`ImageFs::from_archive_file`]).
    pub fn from_archive(bytes: Vec<u8>, what: &str) -> Result<Self> {
        Self::from_saved(Backing::Memory(bytes), what)
    }

    /// An image archive spooled to `file` (opened for reading and writing:
    /// compressed layers are decompressed to its end), read in place from
    /// then on. Either `docker image save`'s format (`manifest.json` names
    /// the layer tars; Docker 25+ also writes an OCI layout beside it), or
    /// an OCI image layout (`index.json`, possibly nested indexes, blobs by
    /// digest) as skopeo, podman, buildah or containerd write it. Layers may
    /// be plain tars or compressed with gzip or zstd.
    pub fn from_archive_file(file: File, what: &str) -> Result<Self> {
        Self::from_saved(Backing::Spool(file), what)
    }

    fn from_saved(mut bytes: Backing, what: &str) -> Result<Self> {
        let len = bytes
            .len()
            .with_context(|| format!("{what}: reading the saved image"))?;
        let files: BTreeMap<String, Range<usize>> = members(&bytes, 0..len, what)?
            .into_iter()
            .map(|(name, e)| (name.trim_start_matches("./").to_owned(), e.data))
            .collect();
        let layers = if files.contains_key("manifest.json") {
            docker_archive_layers(&bytes, &files, what)?
        } else if files.contains_key("index.json") {
            oci_layers(&bytes, &files, what)?
        } else {
            bail!(
                "{what}: neither manifest.json (docker-archive) nor index.json (OCI image layout) \
                 in the archive: is it an image?"
            );
        };
        let mut parsed = Vec::new();
        for (i, layer) in layers.into_iter().enumerate() {
            let magic = bytes
                .read(layer.range.start..layer.range.start + layer.range.len().min(4))
                .with_context(|| format!("{what}: reading layer {}", layer.name))?;
            let compression = Compression::of(&magic);
            if let Some(declared) = layer.declared
                && declared != compression
            {
                bail!(
                    "{what}: layer {} is declared {declared:?} but its bytes are {compression:?}",
                    layer.name
                );
            }
            let range = match compression {
                Compression::None => layer.range,
                c => {
                    let limit = (layer.range.len() as u64)
                        .saturating_mul(MAX_EXPANSION)
                        .max(MIN_EXPANSION_LIMIT);
                    bytes.decompress(layer.range, c, limit).with_context(|| {
                        format!("{what}: decompressing layer {} ({c:?})", layer.name)
                    })?
                }
            };
            parsed.push((
                i,
                range.start,
                members(&bytes, range, &format!("{what} layer {}", layer.name))?,
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

    /// The size of a regular file's content (a hard link's target's).
    pub fn data_len(&self, path: &ContainerPath) -> Option<u64> {
        self.file(path).map(|e| e.size)
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

/// No image's manifest.json, index.json or OCI manifest comes near this;
/// a larger one is hostile.
const MAX_MANIFEST: usize = 16 << 20;
/// A compressed layer may expand this many times its size (text and
/// zero-filled files compress far better than the usual 3×)...
const MAX_EXPANSION: u64 = 100;
/// ...and a small one to at least this.
const MIN_EXPANSION_LIMIT: u64 = 256 << 20;
/// Nested OCI indexes deeper than this are refused.
const MAX_INDEX_DEPTH: usize = 8;

/// How a layer's bytes are compressed, from their first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    fn of(magic: &[u8]) -> Self {
        if magic.starts_with(&[0x1f, 0x8b]) {
            Self::Gzip
        } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Self::Zstd
        } else {
            Self::None
        }
    }

    /// What an OCI or Docker layer media type says; None for a type that
    /// is not a layer's.
    fn of_media_type(media_type: &str) -> Option<Self> {
        let base = media_type
            .strip_prefix("application/vnd.oci.image.layer.")
            .or_else(|| media_type.strip_prefix("application/vnd.docker.image.rootfs."))?;
        Some(if base.ends_with("+gzip") || base.ends_with(".gzip") {
            Self::Gzip
        } else if base.ends_with("+zstd") || base.ends_with(".zstd") {
            Self::Zstd
        } else {
            Self::None
        })
    }
}

/// One layer of an image archive, bottom first.
struct LayerRef {
    name: String,
    range: Range<usize>,
    /// What the manifest says (OCI); the bytes must agree.
    declared: Option<Compression>,
}

/// A small JSON member of the archive.
fn read_json<T: serde::de::DeserializeOwned>(
    bytes: &Backing,
    files: &BTreeMap<String, Range<usize>>,
    name: &str,
    what: &str,
) -> Result<T> {
    let range = files
        .get(name)
        .with_context(|| format!("{what}: {name} is named but missing from the archive"))?;
    if range.len() > MAX_MANIFEST {
        bail!(
            "{what}: {name} is {} bytes, more than any image's ({MAX_MANIFEST})",
            range.len()
        );
    }
    let data = bytes
        .read(range.clone())
        .with_context(|| format!("{what}: reading {name}"))?;
    serde_json::from_slice(&data)
        .with_context(|| format!("{what}: {name} is not what it should be"))
}

/// `docker image save`'s format: `manifest.json` names the layer tars.
fn docker_archive_layers(
    bytes: &Backing,
    files: &BTreeMap<String, Range<usize>>,
    what: &str,
) -> Result<Vec<LayerRef>> {
    let manifest: serde_json::Value = read_json(bytes, files, "manifest.json", what)?;
    let layers = manifest[0]["Layers"]
        .as_array()
        .with_context(|| format!("{what}: manifest.json lists no Layers"))?;
    layers
        .iter()
        .filter_map(|l| l.as_str())
        .map(|name| {
            let range = files.get(name).with_context(|| {
                format!("{what}: layer {name} is named in manifest.json but missing")
            })?;
            Ok(LayerRef {
                name: name.to_owned(),
                range: range.clone(),
                declared: None,
            })
        })
        .collect()
}

/// The blob a descriptor names, `blobs/<algorithm>/<hex>`.
fn blob_name(digest: &oci_spec::image::Digest) -> String {
    format!("blobs/{}/{}", digest.algorithm(), digest.digest())
}

/// An OCI image layout: `index.json`, then (possibly nested) indexes down
/// to the one image manifest for linux/amd64, whose layers are read.
fn oci_layers(
    bytes: &Backing,
    files: &BTreeMap<String, Range<usize>>,
    what: &str,
) -> Result<Vec<LayerRef>> {
    use oci_spec::image::{ImageIndex, ImageManifest, MediaType};
    let mut index: ImageIndex = read_json(bytes, files, "index.json", what)?;
    let mut depth = 0;
    let manifest = loop {
        let candidates: Vec<_> = index
            .manifests()
            .iter()
            .filter(|d| {
                d.platform()
                    .as_ref()
                    .is_none_or(|p| p.os().to_string() == "linux" && p.architecture().to_string() == "amd64")
            })
            .filter(|d| {
                matches!(
                    d.media_type(),
                    MediaType::ImageManifest | MediaType::ImageIndex
                ) || matches!(d.media_type(), MediaType::Other(t) if t.starts_with("application/vnd.docker.distribution.manifest"))
            })
            .collect();
        let [chosen] = candidates.as_slice() else {
            bail!(
                "{what}: the OCI index holds {} linux/amd64 images, not one; save or copy one image",
                candidates.len()
            );
        };
        let name = blob_name(chosen.digest());
        let is_index = matches!(chosen.media_type(), MediaType::ImageIndex)
            || matches!(chosen.media_type(), MediaType::Other(t) if t.ends_with("manifest.list.v2+json"));
        if is_index {
            depth += 1;
            if depth > MAX_INDEX_DEPTH {
                bail!("{what}: OCI indexes nested deeper than {MAX_INDEX_DEPTH}");
            }
            index = read_json(bytes, files, &name, what)?;
            continue;
        }
        break read_json::<ImageManifest>(bytes, files, &name, what)?;
    };
    manifest
        .layers()
        .iter()
        .map(|d| {
            let media_type = d.media_type().to_string();
            let declared = Compression::of_media_type(&media_type).with_context(|| {
                format!(
                    "{what}: layer {} has media type {media_type}, not a layer's",
                    d.digest()
                )
            })?;
            let name = blob_name(d.digest());
            let range = files
                .get(&name)
                .with_context(|| format!("{what}: layer blob {name} is missing"))?;
            Ok(LayerRef {
                name,
                range: range.clone(),
                declared: Some(declared),
            })
        })
        .collect()
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
        let layer = tar_of;
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
        let fs = ImageFs::from_archive(saved, "test image").unwrap();
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
        let layer = tar_of;
        let big = vec![7u8; 200_000];
        let lower = layer(&[
            ("etc/passwd", b"root:x:0:0::/root:/bin/sh\n"),
            ("big", &big),
        ]);
        let upper = layer(&[("etc/.wh.passwd", b""), ("etc/group", b"root:x:0:\n")]);
        let manifest = br#"[{"Layers":["l0/layer.tar","l1/layer.tar"]}]"#;
        let saved = layer(&[
            ("manifest.json", manifest),
            ("l0/layer.tar", &lower),
            ("l1/layer.tar", &upper),
        ]);
        let mut file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut file, &saved).unwrap();
        let spooled = ImageFs::from_archive_file(file, "spooled").unwrap();
        let memory = ImageFs::from_archive(saved, "memory").unwrap();
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
        b.append_data(&mut h, "manifest.json", &[b' '; 4096][..])
            .unwrap();
        let mut saved = b.into_inner().unwrap();
        saved.truncate(1024);
        let mut file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut file, &saved).unwrap();
        let e = ImageFs::from_archive_file(file, "img").err().unwrap();
        assert!(format!("{e:#}").contains("cut off"), "{e:#}");
    }

    fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn sha(data: &[u8]) -> String {
        use sha2::Digest;
        format!("{:x}", sha2::Sha256::digest(data))
    }

    /// The same two layers as a docker-archive (plain tars) and as an OCI
    /// layout (an index naming an index naming an amd64 and an arm64
    /// manifest; one layer gzip, one zstd) give the same tree and bytes.
    #[test]
    fn an_oci_layout_with_nested_indexes_and_compressed_layers_reads_as_docker_save_does() {
        let lower = tar_of(&[
            ("etc/passwd", b"root:x:0:0::/root:/bin/sh\n"),
            ("usr/bin/x", b"x"),
        ]);
        let upper = tar_of(&[("etc/.wh.passwd", b""), ("etc/group", b"root:x:0:\n")]);
        let docker = tar_of(&[
            ("manifest.json", br#"[{"Layers":["a.tar","b.tar"]}]"#),
            ("a.tar", &lower),
            ("b.tar", &upper),
        ]);

        let gz = {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            std::io::Write::write_all(&mut e, &lower).unwrap();
            e.finish().unwrap()
        };
        let zst = zstd::encode_all(&upper[..], 3).unwrap();
        let desc = |media: &str, data: &[u8], platform: &str| {
            format!(
                r#"{{"mediaType":"{media}","digest":"sha256:{}","size":{}{platform}}}"#,
                sha(data),
                data.len()
            )
        };
        let config =
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[{},{}]}}"#,
            desc("application/vnd.oci.image.config.v1+json", config, ""),
            desc("application/vnd.oci.image.layer.v1.tar+gzip", &gz, ""),
            desc("application/vnd.oci.image.layer.v1.tar+zstd", &zst, ""),
        );
        // Another platform's manifest, whose blob is absent: never read.
        let arm = format!(
            r#"{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:{}","size":1,"platform":{{"architecture":"arm64","os":"linux"}}}}"#,
            "0".repeat(64)
        );
        let inner = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{},{arm}]}}"#,
            desc(
                "application/vnd.oci.image.manifest.v1+json",
                manifest.as_bytes(),
                r#","platform":{"architecture":"amd64","os":"linux"}"#
            ),
        );
        let index = format!(
            r#"{{"schemaVersion":2,"manifests":[{}]}}"#,
            desc(
                "application/vnd.oci.image.index.v1+json",
                inner.as_bytes(),
                ""
            )
        );
        let blob = |d: &[u8]| format!("blobs/sha256/{}", sha(d));
        let (b_config, b_manifest, b_inner, b_gz, b_zst) = (
            blob(config),
            blob(manifest.as_bytes()),
            blob(inner.as_bytes()),
            blob(&gz),
            blob(&zst),
        );
        let oci = tar_of(&[
            ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#),
            ("index.json", index.as_bytes()),
            (&b_inner, inner.as_bytes()),
            (&b_manifest, manifest.as_bytes()),
            (&b_config, config),
            (&b_gz, &gz),
            (&b_zst, &zst),
        ]);

        let from_docker = ImageFs::from_archive(docker, "docker-archive").unwrap();
        let mut file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut file, &oci).unwrap();
        let from_oci = ImageFs::from_archive_file(file, "oci").unwrap();
        let names = |fs: &ImageFs| fs.entries().map(|(p, _)| p.clone()).collect::<Vec<_>>();
        assert_eq!(names(&from_oci), [p("/etc/group"), p("/usr/bin/x")]);
        assert_eq!(names(&from_oci), names(&from_docker));
        assert_eq!(
            from_oci.write_tar(&|_| true).unwrap(),
            from_docker.write_tar(&|_| true).unwrap()
        );
        // And held in memory.
        let from_memory = ImageFs::from_archive(oci, "oci in memory").unwrap();
        assert_eq!(names(&from_memory), names(&from_docker));

        // A layer whose bytes are not what its media type says is refused.
        let lying = manifest.replace("tar+zstd", "tar+gzip");
        let index = format!(
            r#"{{"schemaVersion":2,"manifests":[{}]}}"#,
            desc(
                "application/vnd.oci.image.manifest.v1+json",
                lying.as_bytes(),
                ""
            )
        );
        let b_lying = blob(lying.as_bytes());
        let bad = tar_of(&[
            ("index.json", index.as_bytes()),
            (&b_lying, lying.as_bytes()),
            (&b_gz, &gz),
            (&b_zst, &zst),
        ]);
        let e = ImageFs::from_archive(bad, "lying").err().unwrap();
        assert!(
            format!("{e:#}").contains("declared Gzip but its bytes are Zstd"),
            "{e:#}"
        );
    }

    #[test]
    fn a_decompression_bomb_is_refused() {
        let zeros = tar_of(&[(
            "zeros",
            &vec![0u8; (MIN_EXPANSION_LIMIT + (1 << 20)) as usize],
        )]);
        let zst = zstd::encode_all(&zeros[..], 19).unwrap();
        let saved = tar_of(&[
            ("manifest.json", br#"[{"Layers":["l.tar"]}]"#),
            ("l.tar", &zst),
        ]);
        let e = ImageFs::from_archive(saved, "bomb").err().unwrap();
        assert!(format!("{e:#}").contains("decompression bomb"), "{e:#}");
    }
}
