#!/usr/bin/env python3
"""Writes the hand-built ring-buffer records in fuzz/seeds/ring_record/.

The layout is cimplifier-common's repr(C) records on x86_64 (little-endian):
RecordHeader (48 bytes), SyscallRecord (264 fixed bytes, then string slots of
4096 bytes; only the used prefix is sent), ForkRecord (64), ExitRecord (56).
Rerun after a layout change: python3 fuzz/gen_ring_seeds.py
"""
import os
import struct

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds", "ring_record")
STR_SLOT = 4096
FIXED_LEN = 264
SYSCALL, FORK, EXIT, EXEC_ARGS = 1, 3, 4, 5
STR0_PRESENT, STR0_TRUNCATED, STR0_FAULT = 1 << 0, 1 << 1, 1 << 2
STR1_PRESENT, STR1_TRUNCATED, STR1_FAULT = 1 << 4, 1 << 5, 1 << 6
SOCKADDR_PRESENT, SOCKADDR_FAULT, ARGV_TRUNCATED, NO_RETURN = 1 << 8, 1 << 9, 1 << 10, 1 << 11
AT_FDCWD = (1 << 64) - 100


def header(kind, tid=100, pid=None, comm=b"app"):
    pid = tid if pid is None else pid
    return struct.pack("<IIIIQQ16s", kind, pid, tid, 1, 5, 9, comm)


def syscall(nr, ret, args=(0,) * 6, s0=None, s1=None, flags=0, sockaddr=b"",
            kind=SYSCALL, argc=0, tid=100):
    args = list(args) + [0] * (6 - len(args))
    if s0 is not None:
        flags |= STR0_PRESENT
    if s1 is not None:
        flags |= STR1_PRESENT
    if sockaddr:
        flags |= SOCKADDR_PRESENT
    rec = header(kind, tid)
    rec += struct.pack("<II6QqQ", nr, flags, *[a & (2**64 - 1) for a in args], ret, 4)
    rec += struct.pack("<IIII", len(s0 or b""), len(s1 or b""), len(sockaddr), argc)
    rec += sockaddr.ljust(128, b"\0")
    assert len(rec) == FIXED_LEN, len(rec)
    if s1 is not None:
        rec += (s0 or b"").ljust(STR_SLOT, b"\0") + s1
    elif s0 is not None:
        rec += s0
    return rec


def write(name, data):
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)


os.makedirs(OUT, exist_ok=True)
write("openat_abs", syscall(257, 3, (AT_FDCWD, 0, 0x80000), s0=b"/etc/passwd"))
write("openat_rel_enoent", syscall(257, -2, (AT_FDCWD, 0, 0), s0=b"../conf/app.ini"))
write("open_fault", syscall(2, -14, flags=STR0_FAULT))
write("stat_truncated", syscall(4, -36, s0=b"/" + b"a" * (STR_SLOT - 1), flags=STR0_TRUNCATED))
write("rename_two_paths", syscall(82, 0, s0=b"a.txt", s1=b"/srv/b.txt"))
write("readlink_value", syscall(89, 4, (0, 0, 4096), s0=b"/tmp/l", s1=b"../x"))
write("execve_args", syscall(59, 0, s0=b"/bin/ls", s1=b"ls\0-l\0/tmp\0", kind=EXEC_ARGS, argc=3))
write("execve_exit", syscall(59, 0, s0=b"/bin/ls"))
write("exit_group", syscall(231, 0, (1,), flags=NO_RETURN))
write("chdir", syscall(80, 0, s0=b"/srv/www"))
# sockaddr_in: family 2, port 80 (big-endian), 127.0.0.1
write("connect_inet", syscall(42, 0, (3, 0, 16),
                              sockaddr=struct.pack("<H", 2) + struct.pack(">H", 80) + bytes([127, 0, 0, 1]) + b"\0" * 8))
# sockaddr_in6: family 10, port 5432, ::1
write("connect_inet6", syscall(42, -111, (3, 0, 28),
                               sockaddr=struct.pack("<H", 10) + struct.pack(">H", 5432) + b"\0" * 4 + b"\0" * 15 + b"\1" + b"\0" * 4))
write("connect_unix", syscall(42, 0, (3, 0, 110), sockaddr=struct.pack("<H", 1) + b"/run/app.sock\0"))
write("bind_abstract", syscall(49, 0, (3, 0, 12), sockaddr=struct.pack("<H", 1) + b"\0abstract"))
write("fork", header(FORK) + struct.pack("<IIQ", 200, 0, 17))
write("thread", header(FORK) + struct.pack("<IIQ", 201, 0, 0x3d0f00))
write("exit", header(EXIT) + struct.pack("<II", 1, 0))
