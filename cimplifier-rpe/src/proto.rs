//! The wire protocol between stub and server (see docs/rpe.md).
//!
//! A frame is a 12-byte header — magic `CRPE`, version (u16 LE), reserved
//! (u16, zero), payload length (u32 LE) — followed by a postcard payload.
//! File descriptors travel separately, in chunks sent right after the
//! request frame (see [`crate::fdpass`]).

use serde::{Deserialize, Serialize};
use std::io::{self, Read, Write};

pub const MAGIC: [u8; 4] = *b"CRPE";
/// Bumped whenever a payload type below changes shape.
pub const VERSION: u16 = 2;
pub const HEADER_LEN: usize = 12;
/// Linux caps argv+env at 6 MiB (3/4 of _STK_LIM, MAX_ARG_STRLEN per
/// string), so a bigger frame is a broken or hostile peer: it is refused
/// from its header, before anything is allocated.
pub const MAX_PAYLOAD: u32 = 8 << 20;

/// Exit code of the stub when the call could not be made (as a shell's
/// "cannot execute").
pub const EXIT_CANNOT_EXECUTE: i32 = 126;
/// Exit code of the stub when the executable is missing in the callee partition.
pub const EXIT_NOT_FOUND: i32 = 127;
/// Exit code of the stub when the server went away while the callee ran.
pub const EXIT_LOST: i32 = 255;

/// One resource limit, as `getrlimit` returned it.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rlimit {
    pub resource: u32,
    pub soft: u64,
    pub hard: u64,
}

/// Everything the callee inherits from the stub, but the fds themselves.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct Request {
    /// Absolute path the stub was executed as.
    #[serde(with = "bytes")]
    pub path: Vec<u8>,
    /// argv entries, each terminated by NUL.
    #[serde(with = "bytes")]
    pub argv: Vec<u8>,
    /// envp entries, each terminated by NUL.
    #[serde(with = "bytes")]
    pub env: Vec<u8>,
    #[serde(with = "bytes")]
    pub cwd: Vec<u8>,
    pub uid: u32,
    pub euid: u32,
    pub gid: u32,
    pub egid: u32,
    pub groups: Vec<u32>,
    pub umask: u32,
    pub nice: i32,
    pub rlimits: Vec<Rlimit>,
    /// Bit `n-1` set: signal `n` is blocked.
    pub sigmask: u64,
    /// Bit `n-1` set: signal `n` is ignored (SIG_IGN survives exec).
    pub sigignored: u64,
    /// Target fd numbers, in the order the fds are sent.
    pub fds: Vec<i32>,
    /// The entry of `fds` that is the stub's controlling terminal.
    pub ctty: Option<i32>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum ToServer {
    Request(Box<Request>),
    /// Deliver this signal to the callee.
    Signal(i32),
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum ToStub {
    /// The callee was executed; the stub may drop its copies of the fds.
    Started {
        pid: i32,
    },
    /// The callee was stopped by this signal; the stub stops too.
    Stopped(i32),
    Exited(i32),
    Signaled(i32),
    /// The call was refused or failed before the callee ran.
    Refused {
        code: i32,
        message: String,
    },
    /// The callee's terminal is a pty standing in for the stub's
    /// controlling terminal; its master follows by SCM_RIGHTS, and the stub
    /// relays between the two. Sent before `Started`.
    Pty,
}

/// Split a NUL-terminated list (argv/env blob) into its entries.
pub fn split_nul(blob: &[u8]) -> impl Iterator<Item = &[u8]> {
    blob.split_inclusive(|&b| b == 0)
        .map(|e| e.strip_suffix(&[0]).unwrap_or(e))
}

pub fn encode<T: Serialize>(msg: &T) -> io::Result<Vec<u8>> {
    let mut out = postcard::to_io(msg, vec![0u8; HEADER_LEN])
        .map_err(|e| io::Error::other(format!("cannot encode RPE frame: {e}")))?;
    let len = u32::try_from(out.len() - HEADER_LEN)
        .ok()
        .filter(|&l| l <= MAX_PAYLOAD)
        .ok_or_else(|| {
            io::Error::other(format!(
                "RPE frame of {} bytes exceeds the {MAX_PAYLOAD}-byte limit",
                out.len()
            ))
        })?;
    out[0..4].copy_from_slice(&MAGIC);
    out[4..6].copy_from_slice(&VERSION.to_le_bytes());
    out[8..12].copy_from_slice(&len.to_le_bytes());
    Ok(out)
}

pub fn write_frame<W: Write, T: Serialize>(mut w: W, msg: &T) -> io::Result<()> {
    w.write_all(&encode(msg)?)
}

/// Reads one frame. `Ok(None)` on a clean EOF before any byte.
pub fn read_frame<R: Read, T: for<'de> Deserialize<'de>>(mut r: R) -> io::Result<Option<T>> {
    let mut hdr = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        match r.read(&mut hdr[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    if hdr[0..4] != MAGIC {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "peer does not speak the RPE protocol (bad magic)",
        ));
    }
    let version = u16::from_le_bytes([hdr[4], hdr[5]]);
    if version != VERSION {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "RPE protocol version mismatch: peer speaks {version}, this binary speaks {VERSION}; \
                 install the stub and the server from the same build"
            ),
        ));
    }
    let len = u32::from_le_bytes([hdr[8], hdr[9], hdr[10], hdr[11]]);
    if len > MAX_PAYLOAD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("RPE frame announces {len} bytes, over the {MAX_PAYLOAD}-byte limit"),
        ));
    }
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload)?;
    postcard::from_bytes(&payload)
        .map(Some)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("bad RPE frame: {e}")))
}

/// Serializes `Vec<u8>` as one byte string instead of a sequence of u8s.
mod bytes {
    use serde::de::{Deserializer, SeqAccess, Visitor};
    use serde::ser::Serializer;
    use std::fmt;

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Vec<u8>, A::Error> {
                let mut v = Vec::new();
                while let Some(b) = a.next_element()? {
                    v.push(b);
                }
                Ok(v)
            }
        }
        d.deserialize_byte_buf(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trips() {
        let req = Request {
            path: b"/usr/bin/convert".to_vec(),
            argv: b"convert\0-resize\0\0".to_vec(),
            env: vec![b'x'; 5000],
            fds: vec![0, 1, 2, 7],
            ctty: Some(0),
            rlimits: vec![Rlimit {
                resource: 7,
                soft: 1024,
                hard: u64::MAX,
            }],
            ..Default::default()
        };
        let frame = encode(&ToServer::Request(Box::new(req.clone()))).unwrap();
        assert_eq!(&frame[0..4], b"CRPE");
        let back: ToServer = read_frame(&frame[..]).unwrap().unwrap();
        assert_eq!(back, ToServer::Request(Box::new(req)));
    }

    #[test]
    fn split_keeps_empty_entries() {
        let v: Vec<&[u8]> = split_nul(b"a\0\0bc\0").collect();
        assert_eq!(v, vec![&b"a"[..], b"", b"bc"]);
    }

    #[test]
    fn rejects_other_versions_and_magic() {
        let mut frame = encode(&ToStub::Exited(3)).unwrap();
        frame[4] = 9;
        let err = read_frame::<_, ToStub>(&frame[..]).unwrap_err();
        assert!(err.to_string().contains("peer speaks 9"), "{err}");
        frame[0] = b'X';
        assert!(read_frame::<_, ToStub>(&frame[..]).is_err());
        assert!(read_frame::<_, ToStub>(&[][..]).unwrap().is_none());
    }
}
