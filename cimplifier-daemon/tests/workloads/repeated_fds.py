"""Repeats opens whose descriptors are then used in every way user space
resolves a name through: the fold test's workload (folded descriptors).

Run as: repeated_fds.py BASE_DIR. Each pattern runs several times, so that
all but the first open of a name are repeats the kernel may fold.
"""
import os
import subprocess
import sys

base = sys.argv[1]
os.makedirs(f"{base}/dir", exist_ok=True)
with open(f"{base}/dir/file", "w") as f:
    f.write("x\n")

for _ in range(20):
    # Opened and closed only: nothing about the descriptor matters later.
    fd = os.open("/etc/passwd", os.O_RDONLY)
    os.read(fd, 16)
    os.close(fd)

for _ in range(4):
    # A directory descriptor as a dirfd, listed (dup + getdents64), and
    # entered (fchdir) for relative names.
    d = os.open(f"{base}/dir", os.O_RDONLY | os.O_DIRECTORY)
    os.stat("file", dir_fd=d)
    os.listdir(d)
    os.fchdir(d)
    os.stat("file")
    os.chdir("/")
    os.close(d)

for _ in range(4):
    # fchmod on the descriptor; a dup of it.
    fd = os.open(f"{base}/dir/file", os.O_RDONLY)
    os.fchmod(fd, 0o644)
    fd2 = os.dup(fd)
    os.close(fd2)
    os.close(fd)

for _ in range(3):
    # A folded descriptor replaced by dup2, and one closed by close_range.
    fd = os.open("/etc/hostname", os.O_RDONLY)
    other = os.open("/etc/hosts", os.O_RDONLY)
    os.dup2(other, fd)
    os.close(other)
    os.close(fd)
    fd = os.open("/etc/hostname", os.O_RDONLY)
    os.closerange(fd, fd + 1)

for _ in range(3):
    # Inherited by a forked child, which enters it.
    d = os.open(f"{base}/dir", os.O_RDONLY | os.O_DIRECTORY)
    pid = os.fork()
    if pid == 0:
        os.fchdir(d)
        os.stat("file")
        os._exit(0)
    os.waitpid(pid, 0)
    os.close(d)

for _ in range(3):
    # Kept across an exec: the new program enters it.
    d = os.open(f"{base}/dir", os.O_RDONLY | os.O_DIRECTORY)
    subprocess.run(
        [
            sys.executable,
            "-c",
            f"import os; os.fchdir({d}); os.stat('file')",
        ],
        pass_fds=[d],
        check=True,
    )
    os.close(d)

# Held at exit, never closed.
held = [os.open("/etc/passwd", os.O_RDONLY) for _ in range(3)]
