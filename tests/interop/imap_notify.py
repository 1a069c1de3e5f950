#!/usr/bin/env python3
"""NOTIFY (RFC 5465) from a second client implementation: raw sockets in
Python (imaplib has no NOTIFY, and it cannot take responses between
commands). One connection sets NOTIFY and only reads; another changes the
mailboxes. The watcher must be told without sending a command.

Usage: imap_notify.py HOST PORT USER PASSWORD

Prints one `ok: ` line per passed check; any failure exits 1.
"""

import os
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from imap_diff import Conn  # noqa: E402  (the raw connection that reads literals)

HOST, PORT, USER, PASSWORD = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]


def check(condition, detail=""):
    """An explicit check (`assert` would vanish under `python3 -O`)."""
    if not condition:
        raise SystemExit(f"check failed: {detail!r}")


def ok(what):
    print("ok:", what, flush=True)


def session():
    c = Conn(PORT)
    done = c.command(f'LOGIN "{USER}" "{PASSWORD}"')
    check(done[-1].split()[1] == b"OK", done)
    return c


def pushed(c, seconds=10):
    """The next line the server sends unasked, within `seconds`."""
    c.sock.settimeout(seconds)
    try:
        return c.line()
    finally:
        c.sock.settimeout(15)


def silent(c):
    """Nothing arrives unasked for half a second."""
    c.sock.settimeout(0.5)
    try:
        line = c.line()
    except socket.timeout:
        return True
    finally:
        c.sock.settimeout(15)
    raise SystemExit(f"check failed: unexpected {line!r}")


MESSAGE = b"From: a@example.test\r\nSubject: notify\r\n\r\nbody\r\n"

watcher, actor = session(), session()
caps = watcher.command("CAPABILITY")
check(b" NOTIFY" in caps[0], caps)

# §3.1: STATUS indicator, a STATUS for each mailbox before the tagged OK.
lines = watcher.command(
    "NOTIFY SET STATUS (PERSONAL (MessageNew MessageExpunge)) "
    "(SELECTED (MessageNew (UID FLAGS) MessageExpunge))"
)
check(lines[-1].split()[1] == b"OK", lines)
check(any(l.startswith(b'* STATUS "Archive" (MESSAGES 0 UIDNEXT 1 ') for l in lines), lines)
ok("NOTIFY SET STATUS answers a STATUS per mailbox")

actor.command("APPEND Archive", literal=MESSAGE)
line = pushed(watcher)
check(line.startswith(b'* STATUS "Archive" (MESSAGES 1 UIDNEXT 2 '), line)
ok("an APPEND elsewhere is pushed as STATUS")

watcher.command("SELECT INBOX")
actor.command("APPEND INBOX", literal=MESSAGE)
check(pushed(watcher) == b"* 1 EXISTS", "EXISTS")
line = pushed(watcher)
if line == b"* 1 RECENT":  # IMAP4rev1: the session claims \Recent
    line = pushed(watcher)
check(line == b"* 1 FETCH (UID 1 FLAGS (\\Recent))" or line == b"* 1 FETCH (UID 1 FLAGS ())", line)
ok("a new message in the selected mailbox: EXISTS and the FETCH asked for")

watcher.command("NOTIFY SET (PERSONAL (MailboxName SubscriptionChange))")
actor.command("CREATE Py")
check(pushed(watcher) == b'* LIST (\\HasNoChildren) "/" "Py"', "LIST")
actor.command("SUBSCRIBE Py")
check(pushed(watcher) == b'* LIST (\\Subscribed \\HasNoChildren) "/" "Py"', "LIST subscribed")
actor.command("DELETE Py")
check(pushed(watcher) == b'* LIST (\\NonExistent) "/" "Py"', "LIST deleted")
ok("MailboxName and SubscriptionChange are pushed as LIST")

watcher.command("NOTIFY SET (MAILBOXES Archive (MessageNew MessageExpunge))")
watcher.sock.sendall(b"i1 IDLE\r\n")
check(watcher.line().startswith(b"+"), "IDLE continuation")
actor.command("APPEND Archive", literal=MESSAGE)
check(pushed(watcher).startswith(b'* STATUS "Archive" (MESSAGES 2 '), "STATUS in IDLE")
watcher.sock.sendall(b"DONE\r\n")
check(watcher.line().startswith(b"i1 OK"), "IDLE done")
ok("IDLE follows NOTIFY (§4)")

done = watcher.command("NOTIFY SET (PERSONAL (MessageNew MessageExpunge AnnotationChange))")
check(b" NO [BADEVENT (" in done[-1], done)
done = watcher.command("NOTIFY SET (PERSONAL (MessageNew))")
check(done[-1].split()[1] == b"BAD", done)
ok("BADEVENT and BAD per §3.1 and §5")

watcher.command("NOTIFY NONE")
actor.command("APPEND Archive", literal=MESSAGE)
time.sleep(0.3)
check(silent(watcher))
ok("NOTIFY NONE stops the notifications")
watcher.command("LOGOUT")
actor.command("LOGOUT")
