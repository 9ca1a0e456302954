#!/usr/bin/env python3
"""The mail case study's workload, as mail users would run it: it sends
mail over SMTP (port 25) to two local users, has a mail to an unknown user
and one to another domain refused, then reads each user's mail back over
IMAP (port 143): it logs in, waits for delivery, fetches the headers and
bodies, files one message in a folder of its own, and deletes what it sent.
A wrong password must be refused. It prints every answer (this run's token
replaced by <token>) and exits non-zero on the first wrong one. The
server: $CIMPLIFIER_TARGET."""

import imaplib
import os
import smtplib
import sys
import time
import uuid
from email.message import EmailMessage

HOST = os.environ.get("CIMPLIFIER_TARGET") or sys.exit("CIMPLIFIER_TARGET must hold the server address")
HOST = HOST.strip("[]")
TOKEN = uuid.uuid4().hex[:12]
USERS = {"alice": "alice-secret", "bob": "bob-secret"}
MAILS = [
    ("alice", "Lunch", "Shall we have lunch on Friday?"),
    ("alice", "Report", "The report is attached in spirit.\nLine two."),
    ("bob", "Hello", "Hello Bob, this is Carol."),
]


def fail(what):
    print(f"mail workload: FAILED: {what}", file=sys.stderr)
    sys.exit(1)


def say(text):
    print(str(text).replace(TOKEN, "<token>"))


def decoded(value):
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


# SMTP: three mails delivered, two refused.
try:
    smtp = smtplib.SMTP(HOST, 25, timeout=30)
except OSError as e:
    fail(f"SMTP connection to {HOST}:25: {e}")
code, banner = smtp.ehlo("client.example.test")
say(f"EHLO -> {code}")
if code != 250:
    fail(f"EHLO answered {code} {banner!r}")
for user, subject, body in MAILS:
    msg = EmailMessage()
    msg["From"] = "carol@client.example.test"
    msg["To"] = f"{user}@example.test"
    msg["Subject"] = f"{subject} [{TOKEN}]"
    msg.set_content(body)
    try:
        refused = smtp.send_message(msg)
    except smtplib.SMTPException as e:
        fail(f"sending to {user}: {e}")
    say(f"mail to {user}@example.test -> accepted" + (f", refused {refused}" if refused else ""))
for rcpt, want in [("nosuchuser@example.test", 550), ("someone@elsewhere.invalid", 454)]:
    smtp.mail("carol@client.example.test")
    code, text = smtp.rcpt(rcpt)
    say(f"RCPT TO:<{rcpt}> -> {code} {decoded(text)}")
    if code != want:
        fail(f"RCPT TO:<{rcpt}> answered {code}, wanted {want}")
    smtp.rset()
smtp.quit()


def imap_login(user, password):
    try:
        imap = imaplib.IMAP4(HOST, 143, timeout=30)
    except OSError as e:
        fail(f"IMAP connection to {HOST}:143: {e}")
    typ, _ = imap.login(user, password)
    say(f"IMAP LOGIN {user} -> {typ}")
    return imap


def ours(imap):
    typ, data = imap.search(None, "SUBJECT", f'"[{TOKEN}]"')
    if typ != "OK":
        fail(f"SEARCH answered {typ} {data}")
    return data[0].split()


# IMAP: each user reads the mail sent to them.
for user, password in USERS.items():
    imap = imap_login(user, password)
    wanted = [m for m in MAILS if m[0] == user]
    deadline = time.monotonic() + 30
    while True:
        typ, data = imap.select("INBOX")
        if typ != "OK":
            fail(f"SELECT INBOX for {user}: {typ} {data}")
        found = ours(imap)
        if len(found) >= len(wanted) or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    say(f"{user}: {len(found)} of this run's mails in INBOX")
    if len(found) != len(wanted):
        fail(f"{user} got {len(found)} of the {len(wanted)} mails sent to them")
    seen = []
    fetched = []
    for num in found:
        typ, data = imap.fetch(num, "(BODY[HEADER.FIELDS (SUBJECT FROM TO)] BODY[TEXT])")
        if typ != "OK":
            fail(f"FETCH {num} for {user}: {typ} {data}")
        parts = [decoded(d[1]).replace("\r\n", "\n").strip() for d in data if isinstance(d, tuple)]
        fetched.append("\n".join(sorted(parts[0].splitlines())) + "\n" + parts[1])
        seen.append(parts[1])
    # Postfix delivers two mails to one user in either order.
    for text in sorted(fetched):
        say(text)
    for _, subject, body in wanted:
        if not any(body == text for text in seen):
            fail(f"{user} did not get the body of {subject!r}: {seen}")
    # A folder of the user's own: made, filled, listed, removed.
    folder = f"Archive-{TOKEN}"
    for step, (typ, data) in [
        ("CREATE", imap.create(folder)),
        ("COPY", imap.copy(found[0], folder)),
        ("STATUS", imap.status(folder, "(MESSAGES)")),
    ]:
        # Only STATUS answers with data that does not change from run to run.
        detail = decoded(data[0]) if step == "STATUS" and data and data[0] else ""
        say(f"{step} <folder> -> {typ} {detail}".rstrip())
        if typ != "OK":
            fail(f"{step} {folder} for {user}: {typ} {data}")
    for num in found:
        imap.store(num, "+FLAGS", "\\Deleted")
    typ, data = imap.expunge()
    say(f"EXPUNGE -> {typ} {len(data)} removed")
    imap.select("INBOX")
    if ours(imap):
        fail(f"{user}'s mails are still there after EXPUNGE")
    imap.close()
    typ, data = imap.delete(folder)
    say(f"DELETE <folder> -> {typ}")
    if typ != "OK":
        fail(f"DELETE {folder} for {user}: {typ} {data}")
    imap.logout()

try:
    imaplib.IMAP4(HOST, 143, timeout=30).login("alice", "wrong-password")
    fail("a wrong password was accepted")
except imaplib.IMAP4.error as e:
    say(f"IMAP LOGIN alice with a wrong password -> refused: {decoded(e.args[0])}")
print("mail workload: passed")
