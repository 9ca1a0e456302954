#!/usr/bin/env bash
# Runs every cargo-fuzz target for SECONDS each (default 600), one after the
# other, as a single libFuzzer process (no -jobs/-workers).
#
#   fuzz/run.sh [SECONDS]
#
# Works on a stable toolchain: RUSTC_BOOTSTRAP=1 unlocks the nightly-only
# flags cargo-fuzz passes (-Zsanitizer=address, sancov). Set SANITIZER=none
# to build without AddressSanitizer; KEEP_GOING=1 keeps fuzzing after a crash
# (libFuzzer -fork=1 -ignore_crashes=1: still one fuzzing process at a time,
# every crash saved). New corpus entries go to
# fuzz/corpus/TARGET (git-ignored); fuzz/seeds/TARGET is only read. Crashes
# land in fuzz/artifacts/TARGET/; the libFuzzer output of each run is kept in
# fuzz/artifacts/TARGET.log. See docs/fuzzing.md.
set -euo pipefail

SECONDS_PER_TARGET="${1:-600}"
SANITIZER="${SANITIZER:-address}"
TARGETS=(strace_parser event_log ring_record image_tree policy compose_file session_bundle rpe_frame rpe_config)

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
cd "$root"

[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "run.sh: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

# cimplifier-daemon's build script compiles the eBPF programs; the fuzz
# targets never load them, so reuse an object the workspace build already
# made when there is one (the build script builds it otherwise).
if [ -z "${CIMPLIFIER_EBPF_OBJECT:-}" ]; then
    prebuilt="$root/target/ebpf/bpfel-unknown-none/release/cimplifier-ebpf"
    if [ -f "$prebuilt" ]; then
        export CIMPLIFIER_EBPF_OBJECT="$prebuilt"
    fi
fi

status=0
for t in "${TARGETS[@]}"; do
    mkdir -p "fuzz/corpus/$t" "fuzz/artifacts"
    extra=()
    # A syscall record with both string slots full is 264 + 2 * 4096 bytes.
    if [ "$t" = ring_record ]; then extra+=(-max_len=8456); fi
    if [ "${KEEP_GOING:-0}" = 1 ]; then extra+=(-fork=1 -ignore_crashes=1); fi
    echo "=== $t: ${SECONDS_PER_TARGET}s" >&2
    if ! cargo fuzz run --sanitizer "$SANITIZER" "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
        -max_total_time="$SECONDS_PER_TARGET" -print_final_stats=1 "${extra[@]}" \
        2>&1 | tee "fuzz/artifacts/$t.log"; then
        echo "=== $t: FAILED (crash input under fuzz/artifacts/$t/)" >&2
        status=1
    fi
    grep -E '^(Done [0-9]+ runs|stat::)' "fuzz/artifacts/$t.log" >&2 || true
done
exit "$status"
