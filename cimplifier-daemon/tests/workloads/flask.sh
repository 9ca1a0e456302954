#!/usr/bin/env bash
# The Flask case study's workload, as a visitor would run it with curl:
# pages, a template, the guestbook form signed and sent empty, the page
# again and a missing page, over HTTP (port 5000 of $CIMPLIFIER_TARGET).
# It prints each status and body and exits non-zero on a wrong answer.
set -euo pipefail
host=${CIMPLIFIER_TARGET:?CIMPLIFIER_TARGET must hold the server address}
fail() { echo "flask workload: FAILED: $*" >&2; exit 1; }
req() { # METHOD PATH WANTED [FORM]
  local out code
  out=$(curl -sS --max-time 10 -X "$1" ${4+--data "$4"} -w '\n%{http_code}' "http://$host:5000$2") ||
    fail "$1 $2: no answer"
  code=${out##*$'\n'}
  body=${out%$'\n'*}
  echo "$1 $2 -> $code"
  echo "$body"
  [ "$code" = "$3" ] || fail "$1 $2 answered $code, wanted $3"
}
req GET / 200
req GET /about 200
req GET /sign 200
req POST /sign 200 name=alice
grep -q "Thank you, alice" <<<"$body" || fail "signing was not acknowledged"
req POST /sign 200 name=
req GET / 200
grep -q "alice" <<<"$body" || fail "the guestbook does not show alice"
req GET /missing 404
echo "flask workload: passed"
