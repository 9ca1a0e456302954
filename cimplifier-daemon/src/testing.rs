//! Fixtures shared by the unit tests of several modules: images built
//! from a list or a tar, and trace events built by hand.

use std::sync::Arc;

use cimplifier_common::syscalls::{self, nr};
use tar::EntryType;

use crate::image::fs::ImageFs;
use crate::trace::{
    CgroupId, ContainerPath, Event, EventKind, PathArg, PathRole, Resolution, SyscallEvent,
};

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

pub(crate) fn p(s: &str) -> ContainerPath {
    ContainerPath::new(s).unwrap()
}

/// An image from a list: `dir/` a directory, `name -> target` a
/// symlink, `name = text` a file holding `text`, anything else a file
/// holding its own name.
pub(crate) fn image(entries: &[&str]) -> Arc<ImageFs> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o755);
        if let Some(dir) = e.strip_suffix('/') {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
            b.append_data(&mut h, format!("{}/", dir.trim_start_matches('/')), &[][..])
                .unwrap();
        } else if let Some((name, target)) = e.split_once(" -> ") {
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            b.append_link(&mut h, name.trim_start_matches('/'), target)
                .unwrap();
        } else {
            let (name, text) = e.split_once(" = ").unwrap_or((e, e));
            h.set_size(text.len() as u64);
            b.append_data(&mut h, name.trim_start_matches('/'), text.as_bytes())
                .unwrap();
        }
    }
    Arc::new(ImageFs::from_tar(b.into_inner().unwrap(), "test image").unwrap())
}

/// A successful call of `pid` on `paths` (role, path).
pub(crate) fn call(pid: u32, n: u32, args: [u64; 6], paths: &[(PathRole, &str)]) -> Event {
    Event {
        ts_ns: 0,
        pid,
        tid: pid,
        ppid: 1,
        cgroup: CgroupId(1),
        comm: "t".into(),
        kind: EventKind::Syscall(Box::new(SyscallEvent {
            syscall: syscalls::name(n).to_owned(),
            nr: n,
            args,
            ret: Some(0),
            errno: None,
            paths: paths
                .iter()
                .map(|(role, path)| PathArg {
                    role: *role,
                    raw: (*path).to_owned(),
                    path: ContainerPath::new(path),
                    resolution: Resolution::Resolved,
                    truncated: false,
                })
                .collect(),
            fd_path: None,
            fd_addr: None,
            addr: None,
            argv: None,
            incomplete: vec![],
        })),
    }
}

pub(crate) fn exec(pid: u32, path: &str) -> Event {
    call(pid, nr::EXECVE, [0; 6], &[(PathRole::Target, path)])
}

/// `pid` sent SIGTERM to another process; `ids` are the sender's (real,
/// effective) uid, `to` the receiver's (real, saved).
pub(crate) fn signal(pid: u32, ids: (u32, u32), to: (u32, u32)) -> Event {
    Event {
        kind: EventKind::Signal(crate::trace::SignalEvent {
            sig: 15,
            target_pid: pid + 1,
            sender_uid: ids.0,
            sender_euid: ids.1,
            target_uid: to.0,
            target_suid: to.1,
        }),
        ..exec(pid, "/x")
    }
}

/// open(path, flags)
pub(crate) fn open(pid: u32, path: &str, flags: u64) -> Event {
    call(
        pid,
        nr::OPEN,
        [0, flags, 0, 0, 0, 0],
        &[(PathRole::Target, path)],
    )
}
