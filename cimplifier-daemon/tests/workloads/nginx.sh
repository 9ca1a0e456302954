#!/usr/bin/env bash
# The nginx case study's workload, as a visitor would run it with curl:
# three pages, a missing page and a missing nested file, over HTTP (port
# 80 of $CIMPLIFIER_TARGET). It prints each status and body and exits
# non-zero on a wrong status.
set -euo pipefail
host=${CIMPLIFIER_TARGET:?CIMPLIFIER_TARGET must hold the server address}
fail() { echo "nginx workload: FAILED: $*" >&2; exit 1; }
for path in / /index.html /about.html /missing /nested/missing.css; do
  out=$(curl -sS --max-time 10 -w '\n%{http_code}' "http://$host$path") || fail "GET $path: no answer"
  code=${out##*$'\n'}
  echo "GET $path -> $code"
  echo "${out%$'\n'*}"
  case $path in /missing | /nested/*) want=404 ;; *) want=200 ;; esac
  [ "$code" = "$want" ] || fail "GET $path answered $code, wanted $want"
done
echo "nginx workload: passed"
