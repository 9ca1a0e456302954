//! Accepting calls, a thread each; one call from its request to the
//! relay; and reaping every child.

use super::peer::{check_identity, peer_cred};
use super::relay::{pty_for, relay};
use super::spawn::{close_all, spawn};
use super::{CHILDREN, ENTRY_PID, ENTRY_STATUS, Partition, SHUTTING_DOWN, shut_down};
use crate::fdpass::{recv_fds, send_fds};
use crate::proto::{self, EXIT_CANNOT_EXECUTE, ToServer, ToStub};
use std::ffi::OsStr;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

pub(super) fn accept_loop(listener: UnixListener, part: Arc<Partition>, root: bool) {
    for conn in listener.incoming() {
        match conn {
            Ok(conn) => {
                let part = part.clone();
                let spawned = std::thread::Builder::new()
                    .name("rpe-call".into())
                    .spawn(move || handle(conn, &part, root));
                if let Err(e) = spawned {
                    eprintln!("cimplifier-rpe-server: cannot start a thread for a call: {e}");
                }
            }
            Err(e) => {
                eprintln!(
                    "cimplifier-rpe-server: accept on {}: {e}",
                    part.cfg.socket.display()
                );
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }
}

/// Reaps every exited child; hands statuses of callees to their calls.
pub(super) fn reap() {
    loop {
        let mut st = 0;
        // SAFETY: non-blocking wait for any child.
        let pid = unsafe { libc::waitpid(-1, &mut st, libc::WNOHANG | libc::WUNTRACED) };
        if pid <= 0 {
            return;
        }
        if pid == ENTRY_PID.load(Ordering::SeqCst) {
            if libc::WIFEXITED(st) || libc::WIFSIGNALED(st) {
                *ENTRY_STATUS.lock().unwrap() = Some(st);
                ENTRY_PID.store(0, Ordering::SeqCst);
                // The container lives as long as its original entrypoint.
                shut_down();
            }
            continue;
        }
        let mut g = CHILDREN.lock().unwrap();
        let Some(map) = g.as_mut() else { continue };
        let done = libc::WIFEXITED(st) || libc::WIFSIGNALED(st);
        let pipe = if done { map.remove(&pid) } else { None };
        let st = st.to_le_bytes();
        // A call whose stub vanished has closed its end: EPIPE is fine.
        match pipe {
            Some(mut f) => {
                let _ = f.write_all(&st);
            }
            None => {
                if let Some(f) = map.get_mut(&pid) {
                    let _ = f.write_all(&st);
                }
            }
        }
    }
}

fn refuse(conn: &mut UnixStream, code: i32, message: String) {
    let _ = proto::write_frame(conn, &ToStub::Refused { code, message });
}

fn handle(mut conn: UnixStream, part: &Partition, root: bool) {
    let msg: Option<ToServer> = match proto::read_frame(&mut conn) {
        Ok(m) => m,
        Err(e) => {
            return refuse(
                &mut conn,
                EXIT_CANNOT_EXECUTE,
                format!("the RPE server could not read the request: {e}"),
            );
        }
    };
    let Some(ToServer::Request(req)) = msg else {
        return;
    };
    let mut fds = match recv_fds(conn.as_raw_fd(), req.fds.len()) {
        Ok(f) => f,
        Err(e) => {
            return refuse(
                &mut conn,
                EXIT_CANNOT_EXECUTE,
                format!("the RPE server could not receive the file descriptors: {e}"),
            );
        }
    };
    let started = peer_cred(conn.as_raw_fd())
        .map_err(|e| format!("cannot read the stub's credentials (SO_PEERCRED): {e}"))
        .and_then(|peer| check_identity(&peer, &req))
        .and_then(|()| {
            if SHUTTING_DOWN.load(Ordering::SeqCst) {
                return Err("the RPE server is shutting down".into());
            }
            if !root && req.euid != unsafe { libc::geteuid() } {
                return Err(format!(
                    "the RPE server does not run as root and cannot run a program as uid {}",
                    req.euid
                ));
            }
            Ok(())
        })
        .map_err(|m| (EXIT_CANNOT_EXECUTE, m))
        .and_then(|()| {
            let path = Path::new(OsStr::from_bytes(&req.path));
            part.resolve(path).map_err(|m| (EXIT_CANNOT_EXECUTE, m))
        })
        .and_then(|exe| {
            let pty = pty_for(&req, &mut fds).map_err(|m| (EXIT_CANNOT_EXECUTE, m))?;
            spawn(&req, &fds, &exe, root, &part.cfg.name).map(|s| (s, pty))
        });
    let ((pid, status_r), pty) = match started {
        Ok(s) => s,
        Err((code, message)) => return refuse(&mut conn, code, message),
    };
    if let Some(master) = pty {
        // The stub relays between its terminal and the pty's master.
        let sent = proto::write_frame(&mut conn, &ToStub::Pty)
            .and_then(|()| send_fds(conn.as_raw_fd(), &[master.as_raw_fd()]));
        if sent.is_err() {
            return;
        }
    }
    let sent = proto::write_frame(&mut conn, &ToStub::Started { pid });
    // Off the critical path: the stub already knows the callee runs.
    close_all(fds);
    if sent.is_err() {
        return;
    }
    relay(conn, pid, status_r);
}
