//! `cimplifier-seed SEED_DIR FILL_DIR`: fills volumes with their starting
//! content where the engine does not (a Kubernetes `emptyDir`). For each
//! volume mounted at `FILL_DIR/<name>`, copies `SEED_DIR/<name>` into it
//! with owners, modes, times, extended attributes (file capabilities) and
//! hard links, as Docker's copy into an empty named volume does. A volume
//! that holds anything already is left alone: the pod started before and
//! the volume keeps its data.

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// What a run did, per volume.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Filled {
    pub filled: Vec<String>,
    pub kept: Vec<String>,
}

fn c_path(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::other("a NUL in a path"))
}

fn check(r: libc::c_int, what: &str, p: &Path) -> io::Result<()> {
    if r == 0 {
        Ok(())
    } else {
        let e = io::Error::last_os_error();
        Err(io::Error::new(
            e.kind(),
            format!("{what} {}: {e}", p.display()),
        ))
    }
}

/// Owner, mode and times of `from` onto `to` (not following a symlink).
fn metadata(from: &fs::Metadata, to: &Path, symlink: bool) -> io::Result<()> {
    let c = c_path(to)?;
    // SAFETY: a valid C string and plain integers.
    check(
        unsafe { libc::lchown(c.as_ptr(), from.uid(), from.gid()) },
        "chown",
        to,
    )?;
    if !symlink {
        // After chown, which clears set-id bits.
        fs::set_permissions(to, fs::Permissions::from_mode(from.mode() & 0o7777))
            .map_err(|e| io::Error::new(e.kind(), format!("chmod {}: {e}", to.display())))?;
    }
    let times = [
        libc::timespec {
            tv_sec: from.atime(),
            tv_nsec: from.atime_nsec(),
        },
        libc::timespec {
            tv_sec: from.mtime(),
            tv_nsec: from.mtime_nsec(),
        },
    ];
    // SAFETY: a valid C string and an array of two timespecs.
    check(
        unsafe {
            libc::utimensat(
                libc::AT_FDCWD,
                c.as_ptr(),
                times.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        },
        "utimensat",
        to,
    )
}

/// Every extended attribute of `from` onto `to`, the file capability last
/// (a chown clears it, so metadata() runs before).
fn xattrs(from: &Path, to: &Path) -> io::Result<()> {
    let (cf, ct) = (c_path(from)?, c_path(to)?);
    let mut names = vec![0u8; 64 * 1024];
    // SAFETY: valid C strings and a buffer of the length given.
    let n = unsafe { libc::llistxattr(cf.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENOTSUP) {
            return Ok(());
        }
        return Err(io::Error::new(
            e.kind(),
            format!("listxattr {}: {e}", from.display()),
        ));
    }
    names.truncate(n as usize);
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let cname = CString::new(name).map_err(|_| io::Error::other("xattr name"))?;
        let mut value = vec![0u8; 64 * 1024];
        // SAFETY: as above.
        let len = unsafe {
            libc::lgetxattr(
                cf.as_ptr(),
                cname.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        if len < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("getxattr {}: {e}", from.display()),
            ));
        }
        // SAFETY: as above.
        let r = unsafe {
            libc::lsetxattr(
                ct.as_ptr(),
                cname.as_ptr(),
                value.as_ptr().cast(),
                len as usize,
                0,
            )
        };
        check(r, "setxattr", to)?;
    }
    Ok(())
}

/// Copies the tree below `from` into the existing directory `to`; hard
/// links (by the source's inode) stay links.
fn copy_tree(from: &Path, to: &Path, links: &mut HashMap<(u64, u64), PathBuf>) -> io::Result<()> {
    let mut entries: Vec<_> = fs::read_dir(from)?.collect::<io::Result<_>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let src = entry.path();
        let dst = to.join(entry.file_name());
        let meta = fs::symlink_metadata(&src)?;
        let ft = meta.file_type();
        if ft.is_dir() {
            fs::create_dir(&dst)?;
            copy_tree(&src, &dst, links)?;
            metadata(&meta, &dst, false)?;
            xattrs(&src, &dst)?;
            continue;
        }
        if ft.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&src)?, &dst)?;
            metadata(&meta, &dst, true)?;
            continue;
        }
        if !ft.is_file() {
            return Err(io::Error::other(format!(
                "{}: neither a file, a directory nor a symlink; the seed image holds no other kind",
                src.display()
            )));
        }
        let key = (meta.dev(), meta.ino());
        if meta.nlink() > 1 {
            if let Some(first) = links.get(&key) {
                fs::hard_link(first, &dst)?;
                continue;
            }
            links.insert(key, dst.clone());
        }
        fs::copy(&src, &dst)?;
        metadata(&meta, &dst, false)?;
        xattrs(&src, &dst)?;
    }
    Ok(())
}

/// Fills each volume mounted below `fill` from `seed`.
pub fn fill(seed: &Path, fill: &Path) -> io::Result<Filled> {
    let mut done = Filled::default();
    let mut volumes: Vec<_> = fs::read_dir(fill)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", fill.display())))?
        .collect::<io::Result<_>>()?;
    volumes.sort_by_key(|e| e.file_name());
    for volume in volumes {
        let name = volume.file_name();
        let target = volume.path();
        let source = seed.join(&name);
        let label = String::from_utf8_lossy(OsStr::as_bytes(&name)).into_owned();
        if fs::read_dir(&target)?.next().is_some() {
            done.kept.push(label);
            continue;
        }
        let meta = fs::symlink_metadata(&source).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "{}: the seed image holds no content for volume {label}: {e}",
                    source.display()
                ),
            )
        })?;
        copy_tree(&source, &target, &mut HashMap::new())
            .map_err(|e| io::Error::new(e.kind(), format!("filling volume {label}: {e}")))?;
        // The volume's root takes the mount point's owner and mode.
        metadata(&meta, &target, false)?;
        xattrs(&source, &target)?;
        done.filled.push(label);
    }
    Ok(done)
}

/// The program's entry: exit status 0 when every volume is filled or kept.
pub fn main() -> i32 {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [seed, target] = args.as_slice() else {
        eprintln!("usage: cimplifier-seed SEED_DIR FILL_DIR");
        return 2;
    };
    match fill(seed, target) {
        Ok(done) => {
            for v in &done.filled {
                println!("cimplifier-seed: filled volume {v}");
            }
            for v in &done.kept {
                println!("cimplifier-seed: volume {v} holds data already, left as it is");
            }
            0
        }
        Err(e) => {
            eprintln!("cimplifier-seed: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_empty_volumes_with_modes_links_and_symlinks_and_keeps_full_ones() {
        let dir = tempfile_dir();
        let seed = dir.join("seed");
        let fill_dir = dir.join("fill");
        fs::create_dir_all(seed.join("db/sub")).unwrap();
        fs::write(seed.join("db/data"), b"rows").unwrap();
        fs::set_permissions(seed.join("db/data"), fs::Permissions::from_mode(0o640)).unwrap();
        fs::hard_link(seed.join("db/data"), seed.join("db/data.bak")).unwrap();
        std::os::unix::fs::symlink("data", seed.join("db/current")).unwrap();
        fs::set_permissions(seed.join("db"), fs::Permissions::from_mode(0o700)).unwrap();
        fs::create_dir_all(seed.join("full")).unwrap();
        fs::write(seed.join("full/new"), b"new").unwrap();
        fs::create_dir_all(fill_dir.join("db")).unwrap();
        fs::create_dir_all(fill_dir.join("full")).unwrap();
        fs::write(fill_dir.join("full/old"), b"old").unwrap();

        let done = fill(&seed, &fill_dir).unwrap();
        assert_eq!(done.filled, ["db"]);
        assert_eq!(done.kept, ["full"]);
        let db = fill_dir.join("db");
        assert_eq!(fs::read(db.join("data")).unwrap(), b"rows");
        assert_eq!(
            fs::metadata(db.join("data")).unwrap().mode() & 0o7777,
            0o640
        );
        assert_eq!(fs::metadata(&db).unwrap().mode() & 0o7777, 0o700);
        assert_eq!(
            fs::metadata(db.join("data")).unwrap().ino(),
            fs::metadata(db.join("data.bak")).unwrap().ino()
        );
        assert_eq!(
            fs::read_link(db.join("current")).unwrap(),
            Path::new("data")
        );
        assert!(db.join("sub").is_dir());
        assert!(
            !fill_dir.join("full/new").exists(),
            "a volume with data keeps it"
        );

        fs::create_dir_all(fill_dir.join("stray")).unwrap();
        let e = fill(&seed, &fill_dir).unwrap_err().to_string();
        assert!(e.contains("volume stray"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("cimplifier-seed-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }
}
