#!/bin/sh
# The paper's model cases, run one after another in $GOLDEN (default
# /tmp/cimplifier-golden). record.sh traces this with strace and with eBPF.
set -e
G=${GOLDEN:-/tmp/cimplifier-golden}
cd "$G"
# A file created, then moved into place (rename).
echo data > out.part
mv out.part out.txt
# Failed probes: names looked up and not found.
ls missing.conf 2>/dev/null || true
cat /etc/cimplifier-golden-absent 2>/dev/null || true
# A shell script (#!/bin/sh, through the merged-/usr /bin link) running a binary.
"$G/run.sh"
# A unix socket between two executables: server.py binds, client.py connects.
"$G/server.py" &
while [ ! -S "$G/golden.sock" ]; do sleep 0.05; done
"$G/client.py"
wait
