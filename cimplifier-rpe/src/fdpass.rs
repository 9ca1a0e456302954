//! File descriptors over a unix stream socket with SCM_RIGHTS.
//!
//! The kernel takes at most 253 fds per message (SCM_MAX_FD), so fds go in
//! chunks of [`FDS_PER_CHUNK`]. Each chunk is a 4-byte little-endian count
//! carrying the fds as ancillary data; the receiver reads exactly 4 bytes per
//! chunk, so data and fds never get out of step.

use std::io;
use std::mem;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

pub const FDS_PER_CHUNK: usize = 250;

fn cmsg_space(n: usize) -> usize {
    // SAFETY: pure arithmetic.
    unsafe { libc::CMSG_SPACE((n * mem::size_of::<RawFd>()) as u32) as usize }
}

/// Sends `fds` in chunks. `sock` must be a connected unix stream socket.
pub fn send_fds(sock: RawFd, fds: &[RawFd]) -> io::Result<()> {
    let mut cbuf = vec![0u64; cmsg_space(FDS_PER_CHUNK).div_ceil(8)];
    for chunk in fds.chunks(FDS_PER_CHUNK) {
        let mut count = (chunk.len() as u32).to_le_bytes();
        let mut iov = libc::iovec {
            iov_base: count.as_mut_ptr().cast(),
            iov_len: count.len(),
        };
        // SAFETY: msghdr is plain data; the buffers outlive the call.
        unsafe {
            let mut msg: libc::msghdr = mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = cbuf.as_mut_ptr().cast();
            msg.msg_controllen = cmsg_space(chunk.len()) as _;
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(mem::size_of_val(chunk) as u32) as _;
            std::ptr::copy_nonoverlapping(
                chunk.as_ptr(),
                libc::CMSG_DATA(c).cast::<RawFd>(),
                chunk.len(),
            );
            loop {
                let r = libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL);
                if r == 4 {
                    break;
                }
                let e = io::Error::last_os_error();
                if r < 0 && e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(if r < 0 {
                    e
                } else {
                    io::Error::other("short write sending file descriptors")
                });
            }
        }
    }
    Ok(())
}

/// Receives exactly `n` fds sent by [`send_fds`], close-on-exec.
pub fn recv_fds(sock: RawFd, n: usize) -> io::Result<Vec<OwnedFd>> {
    let mut out = Vec::with_capacity(n);
    let mut cbuf = vec![0u64; cmsg_space(FDS_PER_CHUNK).div_ceil(8)];
    while out.len() < n {
        let want = (n - out.len()).min(FDS_PER_CHUNK);
        let mut count = [0u8; 4];
        let mut iov = libc::iovec {
            iov_base: count.as_mut_ptr().cast(),
            iov_len: count.len(),
        };
        // SAFETY: as above; every fd the kernel hands us is wrapped in an
        // OwnedFd at once so none leaks on an error path.
        unsafe {
            let mut msg: libc::msghdr = mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = cbuf.as_mut_ptr().cast();
            msg.msg_controllen = (cbuf.len() * 8) as _;
            let r = libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC | libc::MSG_WAITALL);
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let mut got = 0;
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                    let data = libc::CMSG_DATA(c).cast::<RawFd>();
                    let len = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                    for i in 0..len / mem::size_of::<RawFd>() {
                        out.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                        got += 1;
                    }
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
            if r != 4 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "peer closed the connection after {} of {n} file descriptors",
                        out.len()
                    ),
                ));
            }
            if msg.msg_flags & libc::MSG_CTRUNC != 0 {
                return Err(io::Error::other(
                    "file descriptors were dropped in transit (MSG_CTRUNC); \
                     raise the server's RLIMIT_NOFILE",
                ));
            }
            let announced = u32::from_le_bytes(count) as usize;
            if announced != got || got != want {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("fd chunk announced {announced} fds, carried {got}, expected {want}"),
                ));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn many_fds_arrive_in_order() {
        let (a, b) = UnixStream::pair().unwrap();
        let files: Vec<std::fs::File> = (0..600)
            .map(|_| std::fs::File::open("/dev/null").unwrap())
            .collect();
        let raw: Vec<RawFd> = files.iter().map(|f| f.as_raw_fd()).collect();
        let t = std::thread::spawn(move || recv_fds(b.as_raw_fd(), 600).unwrap());
        send_fds(a.as_raw_fd(), &raw).unwrap();
        let got = t.join().unwrap();
        assert_eq!(got.len(), 600);
        let ino = |fd: RawFd| {
            let mut st: libc::stat = unsafe { mem::zeroed() };
            assert_eq!(unsafe { libc::fstat(fd, &mut st) }, 0);
            (st.st_dev, st.st_ino)
        };
        for (f, g) in raw.iter().zip(&got) {
            assert_eq!(ino(*f), ino(g.as_raw_fd()));
        }
    }
}
