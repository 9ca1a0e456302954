"""The scripted workload of the tracer tests (issue: eBPF syscall tracer).

Run as: trace_workload.py BASE_DIR. Every step touches a distinct name under
BASE_DIR so the test can find its events. Prints the TCP port it used.
"""
import os
import socket
import subprocess
import sys

base = sys.argv[1]
os.chdir(base)

# cd, then relative paths
os.mkdir("sub")
with open("sub/rel.txt", "w") as f:
    f.write("hello\n")
with open("sub/rel.txt") as f:
    f.read()

# openat with a dirfd
d = os.open("sub", os.O_RDONLY | os.O_DIRECTORY)
fd = os.open("rel.txt", os.O_RDONLY, dir_fd=d)
os.close(fd)
os.close(d)

# a failed open
try:
    open("does-not-exist.txt")
except FileNotFoundError:
    pass

# rename, symlink, readlink
os.rename("sub/rel.txt", "sub/renamed.txt")
os.symlink("renamed.txt", "sub/link")
assert os.readlink("sub/link") == "renamed.txt"

# a unix socket bind and connect (relative path: resolved against the cwd)
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind("unix.sock")
server.listen(1)
client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
client.connect("unix.sock")

# a TCP connect to 127.0.0.1
listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
listener.bind(("127.0.0.1", 0))
listener.listen(1)
port = listener.getsockname()[1]
tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
tcp.connect(("127.0.0.1", port))

# exec of a child, which inherits the cwd
subprocess.run(["/bin/cat", "sub/renamed.txt"], check=True, stdout=subprocess.DEVNULL)

print(port, flush=True)
