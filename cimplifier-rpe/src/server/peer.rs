//! Who is calling: the peer's credentials, checked against what the
//! stub claims.

use crate::proto::Request;
use std::io;
use std::os::fd::RawFd;

pub(super) struct PeerCred {
    uid: u32,
    gid: u32,
    groups: Option<Vec<u32>>,
}

pub(super) fn peer_cred(sock: RawFd) -> io::Result<PeerCred> {
    // SAFETY: getsockopt into correctly sized locals.
    unsafe {
        let mut uc: libc::ucred = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
        if libc::getsockopt(
            sock,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut uc as *mut libc::ucred).cast(),
            &mut len,
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
        let mut groups = vec![0u32; 65536];
        let mut glen = (groups.len() * 4) as libc::socklen_t;
        let ok = libc::getsockopt(
            sock,
            libc::SOL_SOCKET,
            libc::SO_PEERGROUPS,
            groups.as_mut_ptr().cast(),
            &mut glen,
        ) == 0;
        groups.truncate(glen as usize / 4);
        Ok(PeerCred {
            uid: uc.uid,
            gid: uc.gid,
            groups: ok.then_some(groups),
        })
    }
}

/// A stub may only ask for the identity it connected with (root may ask
/// for any): otherwise any user of the caller partition could run
/// programs here as root.
pub(super) fn check_identity(peer: &PeerCred, req: &Request) -> Result<(), String> {
    if peer.uid == 0 {
        return Ok(());
    }
    if req.uid != peer.uid || req.euid != peer.uid {
        return Err(format!(
            "the stub claims uid {}/{} but connected as uid {}; refused",
            req.uid, req.euid, peer.uid
        ));
    }
    if req.gid != peer.gid || req.egid != peer.gid {
        return Err(format!(
            "the stub claims gid {}/{} but connected as gid {}; refused",
            req.gid, req.egid, peer.gid
        ));
    }
    let known = peer.groups.as_deref().unwrap_or(&[]);
    if let Some(g) = req
        .groups
        .iter()
        .find(|g| **g != peer.gid && !known.contains(g))
    {
        return Err(format!(
            "the stub claims supplementary group {g} it does not have; refused"
        ));
    }
    Ok(())
}
