"""Spawns programs the way a large server shells out (posix_spawn: a
vfork-style clone that shares this process's memory), with every name on a
page this process has never touched: a private mapping of a file, so that no
page-table entry exists for it. The kernel faults such a page in when the
syscall copies the name; the tracer's read at syscall entry cannot.

argv[1]: a directory to work in. Exits non-zero when a step does not behave
as the test expects.
"""

import ctypes
import errno
import os
import sys

base = sys.argv[1]
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
]
libc.posix_spawn.argtypes = [
    ctypes.POINTER(ctypes.c_int),
    ctypes.c_void_p,
    ctypes.c_void_p,
    ctypes.c_void_p,
    ctypes.c_void_p,
    ctypes.c_void_p,
]
libc.access.argtypes = [ctypes.c_void_p, ctypes.c_int]
PROT_READ, MAP_PRIVATE = 1, 2

# A large process, as the servers that shell out are.
ballast = b"\x01" * (128 << 20)

# Each group of names lies 4 MiB from the next, beyond the kernel's
# fault-around window and the largest page-cache folio a fault maps whole
# (2 MiB), so that faulting in one group maps none of the next.
GROUP = 4 << 20
groups = [
    ["/bin/true", "true", "from-an-unmapped-page"],
    [f"{base}/no-such-program", "no-such-program", "-x"],
    [f"{base}/probe"],
]
image = bytearray(GROUP * len(groups))
offsets = []
for g, names in enumerate(groups):
    at = g * GROUP
    offsets.append([])
    for name in names:
        data = name.encode() + b"\0"
        image[at : at + len(data)] = data
        offsets[-1].append(at)
        at += len(data)
backing = os.path.join(base, "names.bin")
with open(backing, "wb") as f:
    f.write(image)
with open(os.path.join(base, "probe"), "w") as f:
    f.write("x")
fd = os.open(backing, os.O_RDONLY)
addr = libc.mmap(None, len(image), PROT_READ, MAP_PRIVATE, fd, 0)
if addr in (None, ctypes.c_void_p(-1).value):
    sys.exit(f"mmap failed: errno {ctypes.get_errno()}")


def names_at(g):
    return [addr + off for off in offsets[g]]


def spawn(g):
    path, *argv = names_at(g)
    argv_array = (ctypes.c_void_p * (len(argv) + 1))(*argv, None)
    envp = (ctypes.c_void_p * 1)(None)
    pid = ctypes.c_int(0)
    rc = libc.posix_spawn(ctypes.byref(pid), path, None, None, argv_array, envp)
    if rc == 0:
        _, status = os.waitpid(pid.value, 0)
        return os.waitstatus_to_exitcode(status)
    return -rc


if spawn(0) != 0:
    sys.exit("/bin/true did not run")
if spawn(1) != -errno.ENOENT:
    sys.exit("spawning a missing program did not fail with ENOENT")
if libc.access(names_at(2)[0], os.F_OK) != 0:
    sys.exit("access of the probe failed")
del ballast
