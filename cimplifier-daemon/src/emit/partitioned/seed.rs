//! What the run plan's volumes start with, whatever the start order.
//!
//! A Docker named volume that is empty when a container mounts it is
//! filled from that container's image: with several partitions mounting
//! one volume, its content would depend on which starts first. So the
//! partitions mount their volumes with `nocopy`, and one seed image holds
//! each volume's initial content from the source image: what the
//! partitions that mount it used below its mount point, and every state
//! directory in it whole. The run plan's one-shot seed service mounts each
//! volume at `/.cimplifier/seed/<volume>` and the engine copies the image's
//! content there into the volume when the volume is empty (at container
//! creation), with owners, modes and extended attributes. Every partition
//! `depends_on` the seed service completing. `cimplifierctl up` mounts
//! only the volumes it has just created, so data of an earlier `up` is
//! never overwritten.
//!
//! Kubernetes has no such copy into an empty volume: there the seed is an
//! init container that runs [`SEED_COPY_PROGRAM`] (the static
//! `cimplifier-seed`, built and embedded like the RPE glue) to copy each
//! staging directory into the `emptyDir` mounted below
//! `kubernetes::FILL_DIR`, and only into an empty one.

use std::collections::BTreeSet;
use std::io::Read;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::layer::root_header;
use crate::image::fs::{EntryKind, ImageFs};
use crate::place::partition::SharedVolume;
use crate::trace::ContainerPath;

/// Where the seed image holds each volume's content, and the seed service
/// mounts that volume.
pub use crate::docker::compose::SEED_DIR;
/// The seed service's name in the run plan (no partition may have it).
pub use crate::docker::compose::SEED_SERVICE;
/// The seed service's command: a static program that exits 0.
pub const SEED_PROGRAM: &str = "/.cimplifier/seed-done";
/// The Kubernetes init container's command: copies the staged content
/// into empty volumes.
pub use crate::docker::compose::SEED_COPY_PROGRAM;

static EMBEDDED_SEED_COPY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/cimplifier-seed"));

/// The embedded `cimplifier-seed`, checked static: the seed image holds
/// no loader or library.
fn seed_copy_program() -> Result<&'static [u8]> {
    cimplifier_build::glue::check_static(EMBEDDED_SEED_COPY).map_err(|e| {
        anyhow::anyhow!("refusing the embedded cimplifier-seed for the seed image: {e}")
    })?;
    Ok(EMBEDDED_SEED_COPY)
}

/// What a volume starts with.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeSeed {
    /// Entries below the mount point copied from the source image.
    pub entries: u64,
    /// Bytes of file content among them.
    pub bytes: u64,
}

/// Where the seed image holds volume `name`.
pub fn staging_dir(name: &str) -> String {
    format!("{SEED_DIR}/{name}")
}

/// The source image's entries a volume starts with: what the partitions
/// mounting it used below the mount point (with the directories on the
/// way), and the state directories in it with all they hold.
pub(super) fn seed_paths(fs: &ImageFs, v: &SharedVolume) -> BTreeSet<ContainerPath> {
    let mut keep = BTreeSet::new();
    for (path, _) in fs.entries() {
        if *path == v.mount || !path.is_under(&v.mount) {
            continue;
        }
        if v.contents.contains(path) || v.state.iter().any(|s| path.is_under(&s.dir)) {
            let mut p = path.clone();
            while p != v.mount && keep.insert(p.clone()) {
                p = p.parent();
            }
        }
    }
    keep
}

/// The seed image's one layer: each volume's content below its staging
/// directory, and the seed program. `volumes` are (name, volume) pairs.
pub(super) fn seed_layer(
    fs: &ImageFs,
    volumes: &[(String, &SharedVolume)],
) -> Result<(Vec<u8>, Vec<VolumeSeed>)> {
    let mut b = tar::Builder::new(Vec::new());
    for dir in ["/.cimplifier", SEED_DIR] {
        append_dir(&mut b, dir)?;
    }
    let mut stats = Vec::new();
    for (name, v) in volumes {
        let staging = staging_dir(name);
        // The volume's root takes the owner and mode of the mount point.
        match fs.get(&v.mount).map(|e| &e.kind) {
            Some(EntryKind::Dir) => relocate(&mut b, fs, &v.mount, &staging, None)?,
            _ => append_dir(&mut b, &staging)?,
        }
        let paths = seed_paths(fs, v);
        let moved =
            |p: &ContainerPath| format!("{staging}{}", &p.as_str()[v.mount.as_str().len()..]);
        let mut seed = VolumeSeed::default();
        // Hard links after the files they name, as the image writes them.
        for hard_links in [false, true] {
            for path in &paths {
                let Some(entry) = fs.get(path) else { continue };
                let link = match &entry.kind {
                    EntryKind::HardLink(target) => Some(target),
                    _ => None,
                };
                if link.is_some() != hard_links {
                    continue;
                }
                // A hard link to a file outside the volume becomes a copy.
                let link_to = link.filter(|t| paths.contains(*t)).map(&moved);
                relocate(&mut b, fs, path, &moved(path), link_to.as_deref())?;
                seed.entries += 1;
                seed.bytes += fs.data_len(path).unwrap_or(0);
            }
        }
        stats.push(seed);
    }
    let program = exit_zero_elf();
    let mut h = root_header(tar::EntryType::Regular, 0o755, program.len() as u64);
    b.append_data(&mut h, rel(SEED_PROGRAM), &program[..])?;
    let copy = seed_copy_program()?;
    let mut h = root_header(tar::EntryType::Regular, 0o755, copy.len() as u64);
    b.append_data(&mut h, rel(SEED_COPY_PROGRAM), copy)?;
    Ok((b.into_inner()?, stats))
}

fn rel(p: &str) -> &str {
    p.trim_start_matches('/')
}

fn append_dir(b: &mut tar::Builder<Vec<u8>>, dir: &str) -> Result<()> {
    let mut h = root_header(tar::EntryType::Directory, 0o755, 0);
    b.append_data(&mut h, format!("{}/", rel(dir)), std::io::empty())?;
    Ok(())
}

/// Copies the image's entry at `from` to `to`: its header (owner, mode,
/// times) and PAX records (extended attributes, capabilities) as they
/// are. A hard link points at `hard_link_to` (its moved target), or
/// without one becomes a copy of the file's content.
fn relocate(
    b: &mut tar::Builder<Vec<u8>>,
    fs: &ImageFs,
    from: &ContainerPath,
    to: &str,
    hard_link_to: Option<&str>,
) -> Result<()> {
    let raw = fs
        .raw_entry(from)
        .with_context(|| format!("{from} is not in the source image"))?;
    let mut archive = tar::Archive::new(&raw[..]);
    let mut entries = archive.entries()?;
    let mut entry = entries
        .next()
        .with_context(|| format!("{from}: no tar member"))??;
    let pax: Vec<(String, Vec<u8>)> = match entry.pax_extensions()? {
        Some(records) => records
            .filter_map(|r| r.ok())
            .filter_map(|r| Some((r.key().ok()?.to_owned(), r.value_bytes().to_vec())))
            .filter(|(k, _)| !matches!(k.as_str(), "path" | "linkpath" | "size"))
            .collect(),
        None => Vec::new(),
    };
    let mut header = entry.header().clone();
    let symlink = entry.link_name()?.map(|l| l.into_owned());
    let mut data = Vec::new();
    entry.read_to_end(&mut data)?;
    if !pax.is_empty() {
        b.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))?;
    }
    let to = rel(to);
    match (header.entry_type(), hard_link_to) {
        (tar::EntryType::Link, Some(target)) => {
            b.append_link(&mut header, to, rel(target))?;
        }
        (tar::EntryType::Link, _) => {
            let content = fs.data(from).unwrap_or_default();
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(content.len() as u64);
            b.append_data(&mut header, to, &content[..])?;
        }
        (tar::EntryType::Symlink, _) => {
            b.append_link(&mut header, to, symlink.unwrap_or_default())?;
        }
        (tar::EntryType::Directory, _) => {
            b.append_data(&mut header, format!("{to}/"), std::io::empty())?;
        }
        _ => {
            header.set_size(data.len() as u64);
            b.append_data(&mut header, to, &data[..])?;
        }
    }
    Ok(())
}

/// A static x86-64 Linux program that exits with status 0: one ELF
/// header, one loadable segment, and `exit(0)` (the project supports
/// x86-64 only). The source image may have no `true`, and the seed image
/// needs nothing else.
pub fn exit_zero_elf() -> Vec<u8> {
    const BASE: u64 = 0x40_0000;
    const EHDR: u16 = 64;
    const PHDR: u16 = 56;
    // xor edi, edi; mov eax, 60 (exit); syscall
    const CODE: [u8; 9] = [0x31, 0xff, 0xb8, 0x3c, 0, 0, 0, 0x0f, 0x05];
    let size = u64::from(EHDR + PHDR) + CODE.len() as u64;
    let mut elf = Vec::with_capacity(size as usize);
    // e_ident: magic, 64-bit, little-endian, version 1, System V ABI.
    elf.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    elf.extend_from_slice(&2u16.to_le_bytes()); // e_type: ET_EXEC
    elf.extend_from_slice(&0x3eu16.to_le_bytes()); // e_machine: x86-64
    elf.extend_from_slice(&1u32.to_le_bytes()); // e_version
    elf.extend_from_slice(&(BASE + u64::from(EHDR + PHDR)).to_le_bytes()); // e_entry
    elf.extend_from_slice(&u64::from(EHDR).to_le_bytes()); // e_phoff
    elf.extend_from_slice(&0u64.to_le_bytes()); // e_shoff: no sections
    elf.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    for half in [EHDR, PHDR, 1, 0, 0, 0] {
        // e_ehsize, e_phentsize, e_phnum, e_shentsize, e_shnum, e_shstrndx
        elf.extend_from_slice(&half.to_le_bytes());
    }
    elf.extend_from_slice(&1u32.to_le_bytes()); // p_type: PT_LOAD
    elf.extend_from_slice(&5u32.to_le_bytes()); // p_flags: R + X
    elf.extend_from_slice(&0u64.to_le_bytes()); // p_offset
    elf.extend_from_slice(&BASE.to_le_bytes()); // p_vaddr
    elf.extend_from_slice(&BASE.to_le_bytes()); // p_paddr
    elf.extend_from_slice(&size.to_le_bytes()); // p_filesz
    elf.extend_from_slice(&size.to_le_bytes()); // p_memsz
    elf.extend_from_slice(&0x1000u64.to_le_bytes()); // p_align
    elf.extend_from_slice(&CODE);
    elf
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::Exe;
    use crate::place::partition::StateUse;

    fn p(s: &str) -> ContainerPath {
        ContainerPath::new(s).unwrap()
    }

    #[test]
    fn the_seed_program_is_static_and_exits_zero() {
        let elf = exit_zero_elf();
        let parsed = goblin::elf::Elf::parse(&elf).unwrap();
        assert!(parsed.interpreter.is_none() && parsed.libraries.is_empty());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seed-done");
        std::fs::write(&path, &elf).unwrap();
        let exec = std::os::unix::fs::PermissionsExt::from_mode(0o755);
        std::fs::set_permissions(&path, exec).unwrap();
        let status = std::process::Command::new(&path).status().unwrap();
        assert_eq!(status.code(), Some(0));
    }

    /// /run with a directory a start-up script checks and one nobody used;
    /// a state directory with an empty subdirectory and a hard link.
    fn image() -> ImageFs {
        let mut b = tar::Builder::new(Vec::new());
        let mut add = |name: &str, kind: tar::EntryType, mode: u32, data: &[u8], link: &str| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_uid(101);
            h.set_gid(102);
            h.set_size(data.len() as u64);
            if link.is_empty() {
                b.append_data(&mut h, name, data).unwrap();
            } else {
                b.append_link(&mut h, name, link).unwrap();
            }
        };
        use tar::EntryType::{Directory as D, Link as L, Regular as F, Symlink as S};
        add("run/", D, 0o755, b"", "");
        add("run/php/", D, 0o750, b"", "");
        add("run/unused/", D, 0o755, b"", "");
        add("var/lib/db/", D, 0o700, b"", "");
        add("var/lib/db/data", F, 0o600, b"rows", "");
        add("var/lib/db/recovery/", D, 0o700, b"", "");
        add("var/lib/db/current", S, 0o777, b"", "data");
        add("var/lib/db/data.bak", L, 0o600, b"", "var/lib/db/data");
        ImageFs::from_tar(b.into_inner().unwrap(), "test").unwrap()
    }

    fn volume(mount: &str, contents: &[&str], state: &[&str]) -> SharedVolume {
        SharedVolume {
            mount: p(mount),
            partitions: ["a".parse().unwrap()].into(),
            shared: Vec::new(),
            state: state
                .iter()
                .map(|d| StateUse {
                    partition: "a".parse().unwrap(),
                    dir: p(d),
                    writers: [Exe(p("/usr/sbin/db"))].into(),
                })
                .collect(),
            contents: contents.iter().map(|c| p(c)).collect(),
        }
    }

    #[test]
    fn a_volume_starts_with_what_was_used_and_its_state_directories_whole() {
        let fs = image();
        let run = volume("/run", &["/run/php", "/run/php/php-fpm.sock"], &[]);
        let paths: Vec<String> = seed_paths(&fs, &run)
            .iter()
            .map(|p| p.to_string())
            .collect();
        assert_eq!(paths, ["/run/php"], "the socket is not in the image");
        let db = volume("/var/lib/db", &["/var/lib/db/data"], &["/var/lib/db"]);
        let (layer, stats) = seed_layer(&fs, &[("run".into(), &run), ("db".into(), &db)]).unwrap();
        assert_eq!(
            stats,
            [
                VolumeSeed {
                    entries: 1,
                    bytes: 0
                },
                VolumeSeed {
                    entries: 4,
                    bytes: 8
                }
            ]
        );
        let mut seen = BTreeMap::new();
        for e in tar::Archive::new(&layer[..]).entries().unwrap() {
            let e = e.unwrap();
            let h = e.header();
            seen.insert(
                e.path().unwrap().display().to_string(),
                (
                    h.entry_type(),
                    h.mode().unwrap(),
                    h.uid().unwrap(),
                    e.link_name().unwrap().map(|l| l.display().to_string()),
                ),
            );
        }
        let names: Vec<&str> = seen.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                ".cimplifier/",
                ".cimplifier/seed-copy",
                ".cimplifier/seed-done",
                ".cimplifier/seed/",
                ".cimplifier/seed/db/",
                ".cimplifier/seed/db/current",
                ".cimplifier/seed/db/data",
                ".cimplifier/seed/db/data.bak",
                ".cimplifier/seed/db/recovery/",
                ".cimplifier/seed/run/",
                ".cimplifier/seed/run/php/",
            ]
        );
        // Owners and modes as in the image, the volume root's too.
        assert_eq!(
            seen[".cimplifier/seed/db/"],
            (tar::EntryType::Directory, 0o700, 101, None)
        );
        assert_eq!(seen[".cimplifier/seed/run/php/"].1, 0o750);
        assert_eq!(
            seen[".cimplifier/seed/db/data.bak"],
            (
                tar::EntryType::Link,
                0o600,
                101,
                Some(".cimplifier/seed/db/data".into())
            )
        );
        assert_eq!(
            seen[".cimplifier/seed/db/current"].3.as_deref(),
            Some("data")
        );
    }
}
