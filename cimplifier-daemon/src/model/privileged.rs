//! Operations that may need a privilege, each with the executable that made
//! it and the uid it ran as: the evidence the place stage grants capabilities
//! from (docs/privileges.md). The kernel's own capability checks cannot be
//! traced here (no kprobes, fentry or BPF LSM), so the model keeps the
//! operations and their credentials, and place decides with the image's
//! metadata.

use std::net::SocketAddr;

use cimplifier_common::syscalls::nr;
use serde::{Deserialize, Serialize};

use super::{Access, Exe};
use crate::trace::{ContainerPath, SocketAddress, SyscallEvent};

/// The effective uid a process runs as, as far as the trace shows. Events
/// carry no credentials, so a process runs as the container was started
/// (the image's user) until a traced set*uid call changes it; a child
/// inherits its parent's.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case", tag = "uid", content = "value")]
pub enum Uid {
    /// As the container was started: the image's (or `--user`'s) user.
    #[default]
    AsStarted,
    /// Set by a setuid, setreuid or setresuid call.
    Set(u32),
}

const UNCHANGED: u64 = u32::MAX as u64;

impl Uid {
    /// The uid after the successful call `s`, or `self` when it changes none.
    pub fn after(self, s: &SyscallEvent) -> Uid {
        if !s.succeeded() {
            return self;
        }
        let effective = match s.nr {
            nr::SETUID => s.args[0],
            nr::SETREUID | nr::SETRESUID => s.args[1],
            _ => return self,
        };
        match effective & UNCHANGED {
            UNCHANGED => self,
            uid => Uid::Set(uid as u32),
        }
    }
}

/// Whether `s` changes credentials: such events are kept whatever came
/// before, so every process's uid can be followed.
pub fn changes_credentials(s: &SyscallEvent) -> bool {
    matches!(
        s.nr,
        nr::SETUID
            | nr::SETGID
            | nr::SETREUID
            | nr::SETREGID
            | nr::SETGROUPS
            | nr::SETRESUID
            | nr::SETRESGID
    )
}

/// One operation that may need a capability.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "op")]
pub enum Operation {
    /// A socket bound to an inet address.
    Bind { addr: SocketAddr },
    /// A socket of type SOCK_RAW or SOCK_PACKET, or of family AF_PACKET.
    RawSocket { domain: u32, kind: u32 },
    /// Credentials changed (`call` is setuid, setgroups...).
    SetIds { call: String, args: Vec<i64> },
    /// chown, lchown, fchownat or fchown; `None` leaves that id unchanged.
    Chown {
        path: ContainerPath,
        uid: Option<u32>,
        gid: Option<u32>,
    },
    /// chmod, fchmodat(2) or fchmod.
    Chmod { path: ContainerPath },
    /// utimensat on a name.
    Utime { path: ContainerPath },
    /// chroot.
    Chroot { path: ContainerPath },
    /// A signal to a process none of whose uids (real, saved) is one of
    /// the sender's (real, effective): allowed by CAP_KILL alone. The
    /// kernel reported the ids, so the model's uid guess plays no part.
    Signal { sig: String, target_uid: u32 },
    /// A file used: its permission bits decide whether the uid may.
    File { path: ContainerPath, access: Access },
}

/// An operation, who made it, and as which uid.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Observed {
    pub exe: Exe,
    pub uid: Uid,
    #[serde(flatten)]
    pub op: Operation,
}

fn id_arg(v: u64) -> Option<u32> {
    match v & UNCHANGED {
        UNCHANGED => None,
        id => Some(id as u32),
    }
}

const AF_PACKET: u64 = 17;
const SOCK_RAW: u64 = 3;
const SOCK_PACKET: u64 = 10;
const SOCK_TYPE_MASK: u64 = 0xf;

/// The operations of the successful call `s` that may need a capability,
/// besides its file accesses (`accesses`, which the model derived).
pub fn operations(s: &SyscallEvent) -> Vec<Operation> {
    if !s.succeeded() {
        return Vec::new();
    }
    let target = || {
        s.paths
            .first()
            .and_then(|p| p.path.clone())
            .or_else(|| s.fd_path.clone())
    };
    let mut out = Vec::new();
    match s.nr {
        nr::BIND => {
            if let Some(SocketAddress::Inet { addr }) = &s.addr {
                out.push(Operation::Bind { addr: *addr });
            }
        }
        nr::SOCKET => {
            let (domain, kind) = (s.args[0], s.args[1] & SOCK_TYPE_MASK);
            if domain == AF_PACKET || kind == SOCK_RAW || kind == SOCK_PACKET {
                out.push(Operation::RawSocket {
                    domain: domain as u32,
                    kind: kind as u32,
                });
            }
        }
        n if changes_credentials(s) => {
            let arity = cimplifier_common::syscalls::arity(n);
            out.push(Operation::SetIds {
                call: s.syscall.clone(),
                args: s.args[..arity].iter().map(|&a| a as i32 as i64).collect(),
            });
        }
        nr::CHOWN | nr::LCHOWN | nr::FCHOWN | nr::FCHOWNAT => {
            let (u, g) = match s.nr {
                nr::FCHOWNAT => (s.args[2], s.args[3]),
                _ => (s.args[1], s.args[2]),
            };
            if let Some(path) = target() {
                out.push(Operation::Chown {
                    path,
                    uid: id_arg(u),
                    gid: id_arg(g),
                });
            }
        }
        nr::CHMOD | nr::FCHMOD | nr::FCHMODAT | nr::FCHMODAT2 => {
            if let Some(path) = target() {
                out.push(Operation::Chmod { path });
            }
        }
        nr::UTIMENSAT => {
            if let Some(path) = target() {
                out.push(Operation::Utime { path });
            }
        }
        nr::CHROOT => {
            if let Some(path) = target() {
                out.push(Operation::Chroot { path });
            }
        }
        _ => {}
    }
    out
}
