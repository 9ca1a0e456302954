//! What each traced syscall reads and writes: the paper's `rsrc` function.

use cimplifier_common::syscalls::nr;

use super::{Access, InetEndpoint, Resource};
use crate::trace::{ContainerPath, PathArg, PathRole, SocketAddress, SyscallEvent};

const O_ACCMODE: u64 = 0o3;
const O_CREAT: u64 = 0o100;
const O_TRUNC: u64 = 0o1000;
const O_APPEND: u64 = 0o2000;

/// The path an exec call ran, when it is one.
pub(super) fn exec_target(s: &SyscallEvent) -> Option<ContainerPath> {
    matches!(s.nr, nr::EXECVE | nr::EXECVEAT)
        .then(|| s.path(PathRole::Target)?.path.clone())
        .flatten()
}

/// A named path argument; an empty name (AT_EMPTY_PATH) means a descriptor,
/// and resources reached through descriptors are not added.
fn named(p: &PathArg) -> Option<&ContainerPath> {
    if p.raw.is_empty() {
        None
    } else {
        p.path.as_ref()
    }
}

fn path(s: &SyscallEvent, role: PathRole) -> Option<Resource> {
    s.path(role).and_then(named).cloned().map(Resource::Path)
}

fn parent(s: &SyscallEvent, role: PathRole) -> Option<Resource> {
    s.path(role)
        .and_then(named)
        .map(|p| Resource::Path(p.parent()))
}

fn socket(addr: &SocketAddress) -> Option<(Resource, Option<Resource>)> {
    match addr {
        SocketAddress::Unix { path: Some(p), .. } => {
            Some((Resource::Path(p.clone()), Some(Resource::Path(p.parent()))))
        }
        SocketAddress::Abstract { name } => Some((Resource::AbstractSocket(name.clone()), None)),
        SocketAddress::Inet { addr } => Some((
            Resource::Inet(InetEndpoint {
                ip: addr.ip(),
                port: addr.port(),
            }),
            None,
        )),
        _ => None,
    }
}

/// The resources one syscall used, with how. Failed calls yield
/// [`Access::ProbeFailed`] for the names they looked up, and nothing else.
pub fn accesses(s: &SyscallEvent) -> Vec<(Access, Resource)> {
    use Access::*;
    let mut out = Vec::new();
    let mut add = |a: Access, r: Option<Resource>| {
        if let Some(r) = r {
            out.push((a, r));
        }
    };
    if !s.succeeded() {
        if s.ret.is_some() {
            for p in &s.paths {
                if matches!(p.role, PathRole::Target | PathRole::Old | PathRole::New) {
                    add(ProbeFailed, named(p).cloned().map(Resource::Path));
                }
            }
            if matches!(s.nr, nr::CONNECT | nr::BIND) {
                add(
                    ProbeFailed,
                    s.addr.as_ref().and_then(socket).map(|(r, _)| r),
                );
            }
        }
        return out;
    }
    let target = || path(s, PathRole::Target);
    match s.nr {
        nr::OPEN | nr::OPENAT | nr::CREAT | nr::OPENAT2 => {
            let flags = match s.nr {
                nr::OPEN => s.args[1],
                nr::OPENAT => s.args[2],
                nr::CREAT => O_CREAT | O_TRUNC | 1,
                _ => 0, // openat2's flags are in user memory: counted as a read
            };
            let writes = flags & O_ACCMODE != 0 || flags & (O_TRUNC | O_APPEND) != 0;
            if flags & O_CREAT != 0 {
                add(Create, target());
                add(Stat, parent(s, PathRole::Target));
            } else {
                add(Read, target());
            }
            if writes {
                add(Write, target());
            }
        }
        nr::STAT
        | nr::LSTAT
        | nr::NEWFSTATAT
        | nr::STATX
        | nr::ACCESS
        | nr::FACCESSAT
        | nr::FACCESSAT2
        | nr::CHDIR
        | nr::CHROOT => add(Stat, target()),
        nr::READLINK | nr::READLINKAT => add(Read, target()),
        nr::EXECVE | nr::EXECVEAT => add(Exec, target()),
        nr::MKDIR | nr::MKDIRAT | nr::MKNOD | nr::MKNODAT => {
            add(Create, target());
            add(Stat, parent(s, PathRole::Target));
        }
        nr::RMDIR | nr::UNLINK | nr::UNLINKAT => add(Delete, target()),
        nr::RENAME | nr::RENAMEAT | nr::RENAMEAT2 => {
            add(Delete, path(s, PathRole::Old));
            add(Create, path(s, PathRole::New));
            add(Stat, parent(s, PathRole::New));
        }
        nr::LINK | nr::LINKAT => {
            add(Stat, path(s, PathRole::Old));
            add(Create, path(s, PathRole::New));
            add(Stat, parent(s, PathRole::New));
        }
        nr::SYMLINK | nr::SYMLINKAT => {
            add(Create, path(s, PathRole::New));
            add(Stat, parent(s, PathRole::New));
        }
        nr::CHMOD
        | nr::FCHMODAT
        | nr::FCHMODAT2
        | nr::CHOWN
        | nr::LCHOWN
        | nr::FCHOWNAT
        | nr::UTIMENSAT => add(Metadata, target()),
        nr::FCHMOD | nr::FCHOWN => add(Metadata, s.fd_path.clone().map(Resource::Path)),
        nr::TRUNCATE => add(Write, target()),
        // The descriptor's directory, named when it was opened: listing it
        // reads its entries. A descriptor of unknown origin names nothing.
        nr::GETDENTS64 => add(List, s.fd_path.clone().map(Resource::Path)),
        nr::BIND | nr::CONNECT | nr::SENDTO | nr::SENDMSG => {
            if let Some((r, dir)) = s.addr.as_ref().and_then(socket) {
                add(if s.nr == nr::BIND { Bind } else { Connect }, Some(r));
                add(Stat, dir);
            }
        }
        _ => {}
    }
    out
}
