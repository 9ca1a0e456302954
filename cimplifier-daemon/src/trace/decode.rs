//! Bytes from the ring buffer -> [`RawRecord`]s, checking every length.
//!
//! A raw record still holds what the kernel saw: names as passed, fds, raw
//! socket addresses. [`super::resolve`] turns them into [`super::Event`]s.

use cimplifier_common::{
    ExitRecord, FdRepeatRecord, ForeignExecRecord, ForkRecord, RecordHeader, RecordKind, STR_SLOT,
    SignalRecord, SyscallRecord, SyscallSeenRecord, flags,
    syscalls::{StrSource, arity, nr, spec},
};

use super::SignalEvent;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {len} bytes is shorter than its {kind} header ({need} bytes)")]
    Short {
        kind: &'static str,
        len: usize,
        need: usize,
    },
    #[error("record kind {0} is unknown (kernel programs newer than this daemon?)")]
    UnknownKind(u32),
    #[error("an exec-arguments record for syscall {0}, which is not an exec")]
    ExecArgsNotExec(u32),
    #[error("record claims a {what} of {claimed} bytes but carries {present}")]
    BadLength {
        what: &'static str,
        claimed: usize,
        present: usize,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawHeader {
    pub pid: u32,
    pub tid: u32,
    pub ppid: u32,
    pub ts_ns: u64,
    pub cgroup_id: u64,
    pub comm: String,
}

/// A name copied from user memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RawStr {
    Text {
        bytes: Vec<u8>,
        truncated: bool,
    },
    /// The kernel could not read it.
    Fault,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawSyscall {
    pub header: RawHeader,
    pub nr: u32,
    pub flags: u32,
    pub args: [u64; 6],
    pub ret: i64,
    pub enter_ts_ns: u64,
    /// The key the kernel folds this call's repeats under, on the first of
    /// them (zero otherwise): a [`RawRecord::FdRepeat`] names it.
    pub fold_key: [u64; 2],
    pub str0: Option<RawStr>,
    /// Second path, or readlink's value. For execve, see `argv`.
    pub str1: Option<RawStr>,
    pub argv: Option<Vec<String>>,
    pub sockaddr: Option<Vec<u8>>,
}

impl RawSyscall {
    pub fn has(&self, flag: u32) -> bool {
        self.flags & flag != 0
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RawRecord {
    Syscall(RawSyscall),
    ExecArgs(RawSyscall),
    /// From `sched_process_exec`: the file name the kernel executed (`str0`)
    /// and the new image's argv; `ret` is the id of the thread that called
    /// exec.
    ExecImage(RawSyscall),
    Fork {
        header: RawHeader,
        child_tid: u32,
        clone_flags: u64,
    },
    Exit {
        header: RawHeader,
        group_dead: bool,
    },
    /// The process made syscall `nr` for the first time since its exec.
    SyscallSeen {
        header: RawHeader,
        nr: u32,
    },
    /// The process sent a signal to another process.
    Signal {
        header: RawHeader,
        signal: SignalEvent,
    },
    /// Descriptor `fd` was made by an open the kernel folded: a repeat of
    /// the one sent with fold key `key`, which user space replays now.
    FdRepeat {
        header: RawHeader,
        fd: i32,
        key: [u64; 2],
    },
    /// The process exec'd a program of another ABI (its ELF class and
    /// machine), whose system calls are not reported.
    ForeignExec {
        header: RawHeader,
        elf_class: u8,
        machine: u16,
    },
}

impl RawRecord {
    pub fn header(&self) -> &RawHeader {
        match self {
            RawRecord::Syscall(s) | RawRecord::ExecArgs(s) | RawRecord::ExecImage(s) => &s.header,
            RawRecord::Fork { header, .. }
            | RawRecord::Exit { header, .. }
            | RawRecord::SyscallSeen { header, .. }
            | RawRecord::Signal { header, .. }
            | RawRecord::FdRepeat { header, .. }
            | RawRecord::ForeignExec { header, .. } => header,
        }
    }
}

/// Reads a `T` from the front of `bytes`.
fn read<T: Copy>(bytes: &[u8], kind: &'static str) -> Result<T, DecodeError> {
    let need = size_of::<T>();
    if bytes.len() < need {
        return Err(DecodeError::Short {
            kind,
            len: bytes.len(),
            need,
        });
    }
    // SAFETY: length checked; T is a repr(C) plain-old-data record.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// Reads the fixed prefix of a record whose tail is variable: the bytes past
/// `bytes.len()` are zero.
fn read_prefix<T: Copy>(bytes: &[u8], fixed: usize, kind: &'static str) -> Result<T, DecodeError> {
    if bytes.len() < fixed {
        return Err(DecodeError::Short {
            kind,
            len: bytes.len(),
            need: fixed,
        });
    }
    let mut buf = vec![0u8; size_of::<T>()];
    let n = bytes.len().min(buf.len());
    buf[..n].copy_from_slice(&bytes[..n]);
    read(&buf, kind)
}

fn header(h: &RecordHeader) -> RawHeader {
    let end = h.comm.iter().position(|&b| b == 0).unwrap_or(h.comm.len());
    RawHeader {
        pid: h.pid,
        tid: h.tid,
        ppid: h.ppid,
        ts_ns: h.ts_ns,
        cgroup_id: h.cgroup_id,
        comm: String::from_utf8_lossy(&h.comm[..end]).into_owned(),
    }
}

fn slot<'a>(
    tail: &'a [u8],
    slot: usize,
    len: u32,
    what: &'static str,
) -> Result<&'a [u8], DecodeError> {
    let start = slot * STR_SLOT;
    let len = len as usize;
    if len > STR_SLOT || tail.len() < start + len {
        return Err(DecodeError::BadLength {
            what,
            claimed: len,
            present: tail.len().saturating_sub(start),
        });
    }
    Ok(&tail[start..start + len])
}

fn string(
    tail: &[u8],
    index: usize,
    len: u32,
    bits: u32,
    what: &'static str,
) -> Result<Option<RawStr>, DecodeError> {
    // Per-slot bits, shifted down to slot 0's positions.
    let bits = bits >> (4 * index);
    if bits & flags::STR0_FAULT != 0 {
        return Ok(Some(RawStr::Fault));
    }
    if bits & flags::STR0_PRESENT == 0 {
        return Ok(None);
    }
    Ok(Some(RawStr::Text {
        bytes: slot(tail, index, len, what)?.to_vec(),
        truncated: bits & flags::STR0_TRUNCATED != 0,
    }))
}

fn syscall(bytes: &[u8]) -> Result<RawSyscall, DecodeError> {
    let rec: SyscallRecord = read_prefix(bytes, SyscallRecord::FIXED_LEN, "syscall")?;
    let tail = &bytes[SyscallRecord::FIXED_LEN..];
    let sockaddr = if rec.flags & flags::SOCKADDR_PRESENT != 0 {
        let n = rec.sockaddr_len as usize;
        if n > rec.sockaddr.len() {
            return Err(DecodeError::BadLength {
                what: "socket address",
                claimed: n,
                present: rec.sockaddr.len(),
            });
        }
        Some(rec.sockaddr[..n].to_vec())
    } else {
        None
    };
    // Arguments beyond the syscall's arity are whatever followed in the
    // tracepoint buffer: zero them.
    let mut args = rec.args;
    args.iter_mut().skip(arity(rec.nr)).for_each(|a| *a = 0);
    let is_exec = spec(rec.nr).is_some_and(|s| matches!(s.str1, StrSource::Argv(_)));
    let str0 = string(tail, 0, rec.str_len[0], rec.flags, "path")?;
    let (str1, argv) = if is_exec {
        let argv = if rec.flags & flags::STR1_PRESENT != 0 {
            let packed = slot(tail, 1, rec.str_len[1], "argv")?;
            let mut args: Vec<String> = packed
                .split(|&b| b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            // The packing ends with a NUL, which leaves one empty piece.
            if packed.last() == Some(&0) {
                args.pop();
            }
            Some(args)
        } else {
            None
        };
        (None, argv)
    } else {
        (
            string(tail, 1, rec.str_len[1], rec.flags, "second path")?,
            None,
        )
    };
    Ok(RawSyscall {
        header: header(&rec.header),
        nr: rec.nr,
        flags: rec.flags,
        args,
        ret: rec.ret,
        enter_ts_ns: rec.enter_ts_ns,
        fold_key: rec.fold_key,
        str0,
        str1,
        argv,
        sockaddr,
    })
}

/// Decodes one ring-buffer record.
pub fn decode(bytes: &[u8]) -> Result<RawRecord, DecodeError> {
    let h: RecordHeader = read(bytes, "record")?;
    match RecordKind::from_u32(h.kind) {
        Some(RecordKind::Syscall) => Ok(RawRecord::Syscall(syscall(bytes)?)),
        Some(kind @ (RecordKind::ExecArgs | RecordKind::ExecImage)) => {
            let s = syscall(bytes)?;
            if !matches!(s.nr, nr::EXECVE | nr::EXECVEAT) {
                return Err(DecodeError::ExecArgsNotExec(s.nr));
            }
            Ok(if kind == RecordKind::ExecArgs {
                RawRecord::ExecArgs(s)
            } else {
                RawRecord::ExecImage(s)
            })
        }
        Some(RecordKind::Fork) => {
            let rec: ForkRecord = read(bytes, "fork")?;
            Ok(RawRecord::Fork {
                header: header(&rec.header),
                child_tid: rec.child_tid,
                clone_flags: rec.clone_flags,
            })
        }
        Some(RecordKind::Exit) => {
            let rec: ExitRecord = read(bytes, "exit")?;
            Ok(RawRecord::Exit {
                header: header(&rec.header),
                group_dead: rec.group_dead != 0,
            })
        }
        Some(RecordKind::SyscallSeen) => {
            let rec: SyscallSeenRecord = read(bytes, "syscall seen")?;
            Ok(RawRecord::SyscallSeen {
                header: header(&rec.header),
                nr: rec.nr,
            })
        }
        Some(RecordKind::Signal) => {
            let rec: SignalRecord = read(bytes, "signal")?;
            Ok(RawRecord::Signal {
                header: header(&rec.header),
                signal: SignalEvent {
                    sig: rec.sig,
                    target_pid: rec.target_pid,
                    sender_uid: rec.sender_uid,
                    sender_euid: rec.sender_euid,
                    target_uid: rec.target_uid,
                    target_suid: rec.target_suid,
                },
            })
        }
        Some(RecordKind::FdRepeat) => {
            let rec: FdRepeatRecord = read(bytes, "folded descriptor")?;
            Ok(RawRecord::FdRepeat {
                header: header(&rec.header),
                fd: rec.fd,
                key: rec.key,
            })
        }
        Some(RecordKind::ForeignExec) => {
            let rec: ForeignExecRecord = read(bytes, "foreign exec")?;
            Ok(RawRecord::ForeignExec {
                header: header(&rec.header),
                elf_class: rec.elf_class as u8,
                machine: rec.machine as u16,
            })
        }
        None => Err(DecodeError::UnknownKind(h.kind)),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use cimplifier_common::{COMM_LEN, syscalls::nr};

    pub(crate) fn header_bytes(kind: RecordKind, tid: u32) -> RecordHeader {
        let mut comm = [0u8; COMM_LEN];
        comm[..4].copy_from_slice(b"test");
        RecordHeader {
            kind: kind as u32,
            pid: tid,
            tid,
            ppid: 1,
            ts_ns: 5,
            cgroup_id: 9,
            comm,
        }
    }

    fn as_bytes<T>(v: &T) -> &[u8] {
        // SAFETY: test-only view of a repr(C) record.
        unsafe { std::slice::from_raw_parts((v as *const T).cast(), size_of::<T>()) }
    }

    /// Builds the bytes the kernel would send for a syscall with these strings.
    pub(crate) fn syscall_bytes(nr: u32, ret: i64, s0: Option<&str>, s1: Option<&str>) -> Vec<u8> {
        let mut rec: Box<SyscallRecord> = Box::new(unsafe { std::mem::zeroed() });
        rec.header = header_bytes(RecordKind::Syscall, 100);
        rec.nr = nr;
        rec.ret = ret;
        let mut len = SyscallRecord::FIXED_LEN;
        if let Some(s) = s0 {
            rec.strings[..s.len()].copy_from_slice(s.as_bytes());
            rec.str_len[0] = s.len() as u32;
            rec.flags |= flags::STR0_PRESENT;
            len = SyscallRecord::FIXED_LEN + s.len();
        }
        if let Some(s) = s1 {
            rec.strings[STR_SLOT..STR_SLOT + s.len()].copy_from_slice(s.as_bytes());
            rec.str_len[1] = s.len() as u32;
            rec.flags |= flags::STR1_PRESENT;
            len = SyscallRecord::FIXED_LEN + STR_SLOT + s.len();
        }
        as_bytes(&*rec)[..len].to_vec()
    }

    #[test]
    fn decodes_a_rename_with_two_paths() {
        let bytes = syscall_bytes(nr::RENAME, 0, Some("a.txt"), Some("b.txt"));
        let RawRecord::Syscall(s) = decode(&bytes).unwrap() else {
            panic!()
        };
        assert_eq!(s.header.comm, "test");
        assert_eq!(
            s.str0,
            Some(RawStr::Text {
                bytes: b"a.txt".to_vec(),
                truncated: false
            })
        );
        assert_eq!(
            s.str1,
            Some(RawStr::Text {
                bytes: b"b.txt".to_vec(),
                truncated: false
            })
        );
    }

    #[test]
    fn decodes_packed_argv() {
        let mut bytes = syscall_bytes(nr::EXECVE, 0, Some("/bin/ls"), Some("ls\0-l\0"));
        bytes[0] = RecordKind::ExecArgs as u8;
        let RawRecord::ExecArgs(s) = decode(&bytes).unwrap() else {
            panic!()
        };
        assert_eq!(s.argv, Some(vec!["ls".to_owned(), "-l".to_owned()]));
        assert_eq!(s.str1, None);
    }

    #[test]
    fn decodes_a_signal_with_both_sides_ids() {
        let rec = SignalRecord {
            header: header_bytes(RecordKind::Signal, 7),
            sig: 15,
            code: 0,
            target_pid: 9,
            sender_uid: 0,
            sender_euid: 1,
            target_uid: 33,
            target_suid: 34,
            _pad: 0,
        };
        let RawRecord::Signal { header, signal } = decode(as_bytes(&rec)).unwrap() else {
            panic!()
        };
        assert_eq!(header.pid, 7);
        assert_eq!(
            signal,
            SignalEvent {
                sig: 15,
                target_pid: 9,
                sender_uid: 0,
                sender_euid: 1,
                target_uid: 33,
                target_suid: 34,
            }
        );
        assert_eq!(signal.name(), "SIGTERM");
        assert!(matches!(
            decode(&as_bytes(&rec)[..size_of::<SignalRecord>() - 1]),
            Err(DecodeError::Short { .. })
        ));
    }

    #[test]
    fn decodes_a_folded_descriptor() {
        let rec = FdRepeatRecord {
            header: header_bytes(RecordKind::FdRepeat, 7),
            fd: 12,
            _pad: 0,
            key: [1, 2],
        };
        let RawRecord::FdRepeat { header, fd, key } = decode(as_bytes(&rec)).unwrap() else {
            panic!()
        };
        assert_eq!((header.tid, fd, key), (7, 12, [1, 2]));
        assert!(matches!(
            decode(&as_bytes(&rec)[..size_of::<FdRepeatRecord>() - 1]),
            Err(DecodeError::Short { .. })
        ));
    }

    #[test]
    fn decodes_a_first_syscall() {
        let rec = SyscallSeenRecord {
            header: header_bytes(RecordKind::SyscallSeen, 7),
            nr: 302,
            _pad: 0,
        };
        let RawRecord::SyscallSeen { header, nr } = decode(as_bytes(&rec)).unwrap() else {
            panic!()
        };
        assert_eq!((header.pid, nr), (7, 302));
        assert!(matches!(
            decode(&as_bytes(&rec)[..size_of::<SyscallSeenRecord>() - 1]),
            Err(DecodeError::Short { .. })
        ));
    }

    #[test]
    fn rejects_short_and_lying_records() {
        assert!(matches!(decode(&[1, 0, 0]), Err(DecodeError::Short { .. })));
        let mut bytes = syscall_bytes(nr::OPEN, 3, Some("/etc/passwd"), None);
        bytes.truncate(bytes.len() - 3);
        assert!(matches!(decode(&bytes), Err(DecodeError::BadLength { .. })));
        let mut unknown = syscall_bytes(nr::OPEN, 3, None, None);
        unknown[0] = 77;
        assert_eq!(decode(&unknown), Err(DecodeError::UnknownKind(77)));
        // Found by the ring_record fuzzer: exec arguments of a non-exec.
        let mut not_exec = syscall_bytes(0, 0, Some("/bin/ls"), Some("ls\0"));
        not_exec[0] = RecordKind::ExecArgs as u8;
        assert_eq!(decode(&not_exec), Err(DecodeError::ExecArgsNotExec(0)));
    }
}
