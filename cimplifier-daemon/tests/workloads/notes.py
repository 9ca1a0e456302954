#!/usr/bin/env python3
"""The notes case study's workload, as a user of the service would run it:
over HTTP through nginx, it fetches the page, submits jobs to the Node.js
web app, waits until the worker has done them, checks each result (word
count, longest word, SHA-256, computed here too), tries requests that must
be refused, and deletes its jobs. It prints every answer (status and body,
job ids replaced by <id>, timestamps by <time>) and exits non-zero on the
first wrong one. The server: $CIMPLIFIER_TARGET, port 80."""

import hashlib
import json
import os
import re
import sys
import time
import urllib.error
import urllib.request

HOST = os.environ.get("CIMPLIFIER_TARGET") or sys.exit("CIMPLIFIER_TARGET must hold the server address")
BASE = f"http://{HOST}"
TEXTS = [
    "the quick brown fox jumps over the lazy dog",
    "partitioning a container into cooperating least privilege containers",
    "one",
]


def fail(what):
    print(f"notes workload: FAILED: {what}", file=sys.stderr)
    sys.exit(1)


def request(method, path, body=None):
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    req = urllib.request.Request(BASE + path, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=15) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except (urllib.error.URLError, OSError) as e:
        fail(f"{method} {path}: {e}")


def normalise(text, ids):
    for i, job in enumerate(ids):
        text = text.replace(job, f"<id{i}>")
    text = re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z", "<time>", text)
    return text.strip()


def show(method, path, want, body=None, ids=()):
    status, text = request(method, path, body)
    print(f"{method} {path} -> {status}\n{normalise(text, ids)}")
    if status != want:
        fail(f"{method} {path} answered {status}, wanted {want}: {text[:300]}")
    return text


# nginx may answer before the web app behind it listens: wait for the app
# as a load balancer's health check would (not an answer: not printed).
deadline = time.monotonic() + 60
while request("GET", "/api/health")[0] != 200:
    if time.monotonic() > deadline:
        fail(f"the web app never became healthy: {request('GET', '/api/health')}")
    time.sleep(0.5)

page = show("GET", "/", 200)
if "<h1>notes</h1>" not in page:
    fail("the page is not the notes page")
show("GET", "/missing.html", 404)
health = json.loads(show("GET", "/api/health", 200))
if health.get("ok") is not True:
    fail(f"the web app is not healthy: {health}")

ids = []
for text in TEXTS:
    status, answer = request("POST", "/api/jobs", {"text": text})
    if status != 202:
        fail(f"POST /api/jobs answered {status}: {answer[:300]}")
    job = json.loads(answer)
    ids.append(job["id"])
    print(f"POST /api/jobs -> {status}\n{normalise(answer, ids)}")
show("POST", "/api/jobs", 400, body=b"{not json")
show("POST", "/api/jobs", 422, body={"text": ""})

for i, (job, text) in enumerate(zip(ids, TEXTS)):
    deadline = time.monotonic() + 30
    while True:
        status, answer = request("GET", f"/api/jobs/{job}")
        result = json.loads(answer)
        if status == 200 and result.get("state") == "done":
            break
        if status != 200 or result.get("state") != "queued" or time.monotonic() > deadline:
            fail(f"job {i} never got done: {status} {answer[:300]}")
        time.sleep(0.2)
    print(f"GET /api/jobs/<id{i}> -> {status}\n{normalise(answer, ids)}")
    words = text.split()
    want = {
        "words": len(words),
        "longest": max(words, key=len),
        "sha256": hashlib.sha256(text.encode()).hexdigest(),
        "text": text,
    }
    got = {k: result.get(k) for k in want}
    if got != want:
        fail(f"job {i}: the worker answered {got}, wanted {want}")

show("GET", "/api/jobs/00000000-0000-4000-8000-000000000000", 404)
for i, job in enumerate(ids):
    status, answer = request("DELETE", f"/api/jobs/{job}")
    print(f"DELETE /api/jobs/<id{i}> -> {status}\n{normalise(answer, ids)}")
    if status != 200:
        fail(f"deleting job {i} answered {status}: {answer[:300]}")
    status, answer = request("GET", f"/api/jobs/{job}")
    print(f"GET /api/jobs/<id{i}> -> {status}\n{normalise(answer, ids)}")
    if status != 404:
        fail(f"job {i} is still there after its deletion: {status}")
print("notes workload: passed")
