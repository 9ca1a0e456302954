//! Accepting calls, a thread each; one call from its request to the
//! relay; and reaping every child.

use super::peer::{check_identity, peer_cred};
use super::policy::{MAX_FDS, MAX_TARGET_FD};
use super::relay::{pty_for, relay};
use super::spawn::{close_all, spawn};
use super::{CHILDREN, ENTRY_PID, ENTRY_STATUS, Partition, SHUTTING_DOWN, shut_down};
use crate::fdpass::{recv_fds, send_fds};
use crate::proto::Request;
use crate::proto::{self, EXIT_CANNOT_EXECUTE, ToServer, ToStub};
use std::io::Write;
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Connections per socket still waiting for their request. A stub
/// writes its request as soon as it connects, so a waiting connection is
/// idle or hostile: when the cap is reached the oldest is cut off, and a
/// flood of idle connections cannot lock real calls out.
pub const MAX_PENDING: usize = 64;
/// Calls per socket at once, running ones included; more are refused.
pub const MAX_CALLS: usize = 1024;
/// A read or write on a stub's socket that makes no progress for this
/// long fails: the request phase of a stalled caller ends, and a stub
/// that stops reading cannot hold its call thread.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) fn accept_loop(listener: UnixListener, part: Arc<Partition>, root: bool) {
    let mut next_id = 0u64;
    for conn in listener.incoming() {
        match conn {
            Ok(conn) => {
                let _ = conn.set_read_timeout(Some(IO_TIMEOUT));
                let _ = conn.set_write_timeout(Some(IO_TIMEOUT));
                let conn = Arc::new(conn);
                next_id += 1;
                let id = next_id;
                {
                    let mut pending = part.pending.lock().unwrap();
                    if pending.len() >= MAX_PENDING
                        && let Some((_, oldest)) = pending.pop_front()
                    {
                        // Its thread's read returns at once.
                        let _ = oldest.shutdown(Shutdown::Both);
                    }
                    pending.push_back((id, conn.clone()));
                }
                let p = part.clone();
                let spawned =
                    std::thread::Builder::new()
                        .name("rpe-call".into())
                        .spawn(move || {
                            let _pending = PendingGuard { part: &p, id };
                            handle(&conn, &p, root, id)
                        });
                if let Err(e) = spawned {
                    part.pending.lock().unwrap().retain(|(i, _)| *i != id);
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

/// Takes a connection off the waiting list when its request is in (or
/// its thread ends first).
struct PendingGuard<'a> {
    part: &'a Partition,
    id: u64,
}

impl PendingGuard<'_> {
    fn leave(part: &Partition, id: u64) {
        part.pending.lock().unwrap().retain(|(i, _)| *i != id);
    }
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        Self::leave(self.part, self.id);
    }
}

/// Counts a call against [`MAX_CALLS`] while it lives.
struct CallSlot<'a>(&'a Partition);

impl Drop for CallSlot<'_> {
    fn drop(&mut self) {
        self.0.calls.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The fd part of a request, checked before any fd is received: the
/// count and the target numbers size what the server allocates.
fn check_fd_numbers(req: &Request) -> Result<(), String> {
    if req.fds.len() > MAX_FDS {
        return Err(format!(
            "the call passes {} file descriptors, over the RPE limit of {MAX_FDS}; \
             close the ones the program does not need before running it",
            req.fds.len()
        ));
    }
    // SAFETY: getrlimit into a local.
    let mut rl: libc::rlimit = unsafe { std::mem::zeroed() };
    let nofile = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } == 0 {
        rl.rlim_cur.min(MAX_TARGET_FD as u64) as i32
    } else {
        MAX_TARGET_FD
    };
    if let Some(bad) = req.fds.iter().find(|&&t| t < 0 || t >= nofile) {
        return Err(format!(
            "the call passes a file descriptor as number {bad}, outside 0..{nofile} \
             (the RPE server's limit); refused"
        ));
    }
    Ok(())
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
        // The pipes are non-blocking: PID 1 never waits for a call thread
        // (whose stub may have stopped reading). A call whose stub
        // vanished has closed its end: EPIPE is fine.
        match pipe {
            Some(mut f) => {
                let _ = f.write_all(&st);
            }
            None => {
                // A stop is news, not state: dropped when its call is
                // behind, so the final status always fits in the pipe.
                if let Some(f) = map.get_mut(&pid).filter(|f| queued(f) < STOPS_QUEUED_MAX) {
                    let _ = f.write_all(&st);
                }
            }
        }
    }
}

/// Bytes of statuses queued in a status pipe and not yet read: below one
/// page, the least a pipe holds, with room for the final status.
const STOPS_QUEUED_MAX: usize = 2048;

fn queued(pipe: &std::fs::File) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD into a local; on a pipe it counts for both ends.
    if unsafe { libc::ioctl(pipe.as_raw_fd(), libc::FIONREAD, &mut n) } == 0 {
        n.max(0) as usize
    } else {
        usize::MAX
    }
}

fn refuse(mut conn: &UnixStream, code: i32, message: String) {
    let _ = proto::write_frame(&mut conn, &ToStub::Refused { code, message });
}

fn handle(conn: &UnixStream, part: &Partition, root: bool, id: u64) {
    let mut conn = conn;
    let msg: Option<ToServer> = match proto::read_frame(conn) {
        Ok(m) => m,
        Err(e) => {
            return refuse(
                conn,
                EXIT_CANNOT_EXECUTE,
                format!("the RPE server could not read the request: {e}"),
            );
        }
    };
    let Some(ToServer::Request(mut req)) = msg else {
        return;
    };
    if part.calls.fetch_add(1, Ordering::SeqCst) >= MAX_CALLS {
        part.calls.fetch_sub(1, Ordering::SeqCst);
        return refuse(
            conn,
            EXIT_CANNOT_EXECUTE,
            format!(
                "partition {} has {MAX_CALLS} calls running on this RPE server, its limit; \
                 refused",
                part.cfg.name
            ),
        );
    }
    let _slot = CallSlot(part);
    if let Err(m) = check_fd_numbers(&req) {
        return refuse(conn, EXIT_CANNOT_EXECUTE, m);
    }
    let mut fds = match recv_fds(conn.as_raw_fd(), req.fds.len()) {
        Ok(f) => f,
        Err(e) => {
            return refuse(
                conn,
                EXIT_CANNOT_EXECUTE,
                format!("the RPE server could not receive the file descriptors: {e}"),
            );
        }
    };
    PendingGuard::leave(part, id);
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
        .and_then(|()| {
            let exe = part.resolve(&req)?;
            part.check_fds(&req, &fds)?;
            Ok(exe)
        })
        .map_err(|m| (EXIT_CANNOT_EXECUTE, m))
        .and_then(|exe| {
            req.env = part.environment(&req);
            let pty = pty_for(&req, &mut fds).map_err(|m| (EXIT_CANNOT_EXECUTE, m))?;
            spawn(&req, &fds, &exe, root, &part.cfg.name).map(|s| (s, pty))
        });
    let ((pid, status_r), pty) = match started {
        Ok(s) => s,
        Err((code, message)) => return refuse(conn, code, message),
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
