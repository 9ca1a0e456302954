#!/usr/bin/python3 -SI
import socket
s = socket.socket(socket.AF_UNIX)
s.connect("/tmp/cimplifier-golden/golden.sock")
s.sendall(b"hello")
s.close()
