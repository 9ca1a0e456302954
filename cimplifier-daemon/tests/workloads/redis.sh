#!/usr/bin/env bash
# The redis case study's workload, as a client would run it:
# redis-benchmark (7 tests of 5000 requests), then a key written, read back
# and an append-only file rewrite asked for, with redis-cli (port 6379 of
# $CIMPLIFIER_TARGET). It prints each answer and exits non-zero on a wrong
# one.
set -euo pipefail
host=${CIMPLIFIER_TARGET:?CIMPLIFIER_TARGET must hold the server address}
fail() { echo "redis workload: FAILED: $*" >&2; exit 1; }
cli() { redis-cli -h "$host" -p 6379 "$@"; }
out=$(redis-benchmark -h "$host" -p 6379 -n 5000 -t set,get,incr,lpush,lpop,sadd,hset -q 2>&1) ||
  fail "redis-benchmark failed: $out"
! grep -qi err <<<"$out" || fail "redis-benchmark: $out"
echo "redis-benchmark completed without errors"
echo "SET -> $(cli SET cimplifier:aof survives)"
got=$(cli GET cimplifier:aof)
echo "GET -> $got"
[ "$got" = survives ] || fail "GET answered '$got'"
# A rewrite the benchmark's writes started may still run.
echo "BGREWRITEAOF -> $(cli BGREWRITEAOF | sed 's/already in progress/started/')"
echo "redis workload: passed"
