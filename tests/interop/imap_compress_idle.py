#!/usr/bin/env python3
"""Memory of idling sessions, plain, compressed (RFC 4978) and with NOTIFY
(RFC 5465).

Usage: imap_compress_idle.py HOST PORT USER PASSWORD SERVER_PID N

Opens groups of N sessions (LOGIN, SELECT INBOX, IDLE), plain and with
COMPRESS DEFLATE before SELECT (and one group not idling), and with NOTIFY
SET for every mailbox before IDLE, and prints the server's VmRSS after each
group: `rss: <label> <KiB>`. The sockets stay open until the end.
"""

import socket
import sys
import time
import zlib

def check(condition, detail=""):
    """An explicit check (`assert` would vanish under `python3 -O`)."""
    if not condition:
        raise SystemExit(f"check failed: {detail!r}")


HOST, PORT, USER, PASSWORD, PID, N = sys.argv[1:7]
N = int(N)


def rss():
    with open("/proc/%s/status" % PID) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])


NOTIFY = (
    b"n NOTIFY SET (SELECTED (MessageNew MessageExpunge)) "
    b"(PERSONAL (MessageNew MessageExpunge FlagChange MailboxName SubscriptionChange))\r\n"
)


def session(compress, idle=True, notify=False):
    s = socket.create_connection((HOST, int(PORT)), timeout=30)
    f = s.makefile("rb")
    z = d = None

    def send(b):
        if z:
            b = z.compress(b) + z.flush(zlib.Z_SYNC_FLUSH)
        s.sendall(b)

    def until(prefix):
        buf = b""
        while True:
            if d:
                chunk = s.recv(65536)
                check(chunk)
                buf += d.decompress(chunk)
                if prefix in buf:
                    return
            else:
                line = f.readline()
                check(line, "closed")
                if line.startswith(prefix):
                    return

    until(b"* OK")
    send(b'l LOGIN "%s" "%s"\r\n' % (USER.encode(), PASSWORD.encode()))
    until(b"l OK")
    if compress:
        send(b"z COMPRESS DEFLATE\r\n")
        until(b"z OK")
        z = zlib.compressobj(wbits=-15)
        d = zlib.decompressobj(wbits=-15)
    send(b"s SELECT INBOX\r\n")
    until(b"s OK")
    if notify:
        send(NOTIFY)
        until(b"n OK")
    if idle:
        send(b"i IDLE\r\n")
        until(b"+ ")
    return s, f


def settle():
    time.sleep(2)
    return rss()


keep = []
# Warm up the allocator and caches with a few sessions of each kind.
for c in (False, True) * 5:
    keep.append(session(c))
last = settle()
print("rss: before", last, flush=True)
# Each kind twice, interleaved, so that heap growth that belongs to neither
# shows as a difference between the two rounds.
for label, compress, idle, notify in [
    ("plain", False, True, False),
    ("compressed", True, True, False),
    ("plain", False, True, False),
    ("compressed", True, True, False),
    ("compressed-not-idling", True, False, False),
    ("notify", False, True, True),
    ("notify", False, True, True),
]:
    for _ in range(N):
        keep.append(session(compress, idle, notify))
    now = settle()
    print("rss:", label, now, "per-session-KiB %.1f" % ((now - last) / N), flush=True)
    last = now
