#!/bin/sh
# Re-records the golden logs: workload.sh under strace and under the eBPF
# tracer. Run as root from the repository root after `cargo xtask setup`;
# then run `UPDATE_GOLDEN=1 cargo test --test golden` and review the diff.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
G=/tmp/cimplifier-golden
prepare() {
    rm -rf "$G" && mkdir -p "$G"
    cp "$here/run.sh" "$here/server.py" "$here/client.py" "$G/"
    chmod +x "$G"/*.sh "$G"/*.py
}
prepare
strace -f -y -yy -s 4096 -o "$here/workload.strace" /bin/sh "$here/workload.sh"
sed -i "s#$here#/golden-src#g" "$here/workload.strace"

prepare
cargo build --quiet --bin cimplifierd
cg=$(grep -m1 cgroup2 /proc/mounts | cut -d' ' -f2)/cimplifier-golden
mkdir -p "$cg"
./target/debug/cimplifierd trace --cgroup "$cg" --output "$here/workload.jsonl" --duration 6s &
tracer=$!
sleep 2
cp "$here/workload.sh" "$G/workload.sh"
/bin/sh -c "echo \$\$ > $cg/cgroup.procs && exec /bin/sh $G/workload.sh"
wait $tracer
rmdir "$cg"
