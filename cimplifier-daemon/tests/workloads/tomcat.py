#!/usr/bin/env python3
"""The Tomcat case study's workload, as a visitor of the guestbook would
run it: over HTTP (port 8080), it reads the guestbook (a JSP that Jasper
compiles at its first request), signs it, has an empty name refused,
reads it again, fetches a JSP computing with the JDK's streams, java.time
and SHA-256, a static page, and a missing page. It prints every answer
(status and body) and exits non-zero on the first wrong one. The entries
stay in a file, so each pass finds the ones before it. The server:
$CIMPLIFIER_TARGET."""

import hashlib
import json
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

HOST = os.environ.get("CIMPLIFIER_TARGET") or sys.exit("CIMPLIFIER_TARGET must hold the server address")
BASE = f"http://{HOST}:8080"


def fail(what):
    print(f"tomcat workload: FAILED: {what}", file=sys.stderr)
    sys.exit(1)


def request(method, path, form=None):
    data = None if form is None else urllib.parse.urlencode(form).encode()
    req = urllib.request.Request(BASE + path, data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except (urllib.error.URLError, OSError) as e:
        fail(f"{method} {path}: {e}")


def show(method, path, want, form=None):
    status, body = request(method, path, form)
    # Tomcat's error pages name its version; nothing else varies.
    body = re.sub(r"\n\s*\n", "\n", body).strip()
    print(f"{method} {path} -> {status}\n{body}")
    if status != want:
        fail(f"{method} {path} answered {status}, wanted {want}: {body[:300]}")
    return body


# Tomcat listens before it has deployed the application: wait for it as a
# load balancer's health check would (not an answer: not printed).
deadline = time.monotonic() + 120
while request("GET", "/about.html")[0] != 200:
    if time.monotonic() > deadline:
        fail("the application was never deployed")
    time.sleep(0.5)

before = show("GET", "/", 200)
m = re.search(r"<p>(\d+) entries</p>", before)
if not m:
    fail("the guestbook does not say how many entries it has")
count = int(m.group(1))
body = show("POST", "/sign.jsp", 200, {"name": "ada <lovelace>"})
if "Thank you, ada &lt;lovelace>." not in body:
    fail("signing was not acknowledged")
show("POST", "/sign.jsp", 422, {"name": "  "})
after = show("GET", "/", 200)
if f"<p>{count + 1} entries</p>" not in after or "<li>ada &lt;lovelace></li>" not in after:
    fail(f"the entry is not in the guestbook (had {count})")
stats = json.loads(show("GET", "/stats.jsp", 200))
want = {
    "sum": 500500,
    "day": "MONDAY",
    "sha256": hashlib.sha256(b"cimplifier").hexdigest(),
    "el": "3",
}
if stats != want:
    fail(f"stats.jsp answered {stats}, wanted {want}")
show("GET", "/about.html", 200)
status, _ = request("GET", "/missing.jsp")
print(f"GET /missing.jsp -> {status}")
if status != 404:
    fail(f"a missing page answered {status}")
print("tomcat workload: passed")
