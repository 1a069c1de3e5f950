#!/usr/bin/env python3
"""Reads mail from Mailroom with Python's poplib, the way real downloaders do.

Usage: pop3_clients.py HOST STLS_PORT TLS_PORT USER PASSWORD
The maildrop must hold exactly three messages, the second of which has a body
line ".leading dot" (it exercises byte-stuffing). Exits non-zero (with the
reason on stderr) on any failure; prints "ok: ..." lines on success.
The last step deletes message 1 with DELE + QUIT, so the caller can check
the store afterwards.
"""
import base64
import poplib
import ssl
import sys

import scramp

host, stls_port, tls_port, user, password = sys.argv[1:6]
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE  # the stack under test has a self-signed certificate


def stls_session():
    p = poplib.POP3(host, int(stls_port), timeout=20)
    caps = p.capa()
    assert "STLS" in caps, caps
    p.stls(context=ctx)
    return p


# 1. Port 110 style: CAPA, STLS, USER/PASS, then every reading command.
p = stls_session()
caps = p.capa()
assert "STLS" not in caps, caps  # only offered before TLS
for c in ("TOP", "UIDL", "USER", "SASL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"):
    assert c in caps, (c, caps)
assert caps["SASL"] == ["SCRAM-SHA-256", "PLAIN"], caps
p.user(user)
p.pass_(password)
count, size = p.stat()
assert count == 3, (count, size)
resp, listing, _ = p.list()
sizes = [int(line.split()[1]) for line in listing]
assert sum(sizes) == size, (listing, size)
resp, uidls, _ = p.uidl()
uids = [line.split()[1].decode() for line in uidls]
assert len(set(uids)) == 3, uids
assert p.uidl(2).split()[2].decode() == uids[1]
resp, top, _ = p.top(2, 0)
assert top[-1] == b"", top  # header, then the empty line, no body
assert any(line.startswith(b"Subject:") for line in top), top
resp, lines, octets = p.retr(2)
# poplib removes the byte-stuffing: the line is as the sender wrote it.
assert b".leading dot" in lines, lines
p.dele(1)
assert p.stat()[0] == 2
p.rset()
assert p.stat()[0] == 3
p.quit()
print("ok: STLS + USER/PASS, capa, stat, list, uidl, top, retr, dele, rset")

# 2. A connection that breaks after DELE deletes nothing (RFC 1939 §6).
p = stls_session()
p.user(user)
p.pass_(password)
p.dele(1)
p.sock.close()
p = stls_session()
p.user(user)
p.pass_(password)
assert p.stat()[0] == 3, "a dropped connection deleted mail"
p.quit()
print("ok: a dropped connection deletes nothing")

# 3. Port 995 style (implicit TLS), logging in with SCRAM-SHA-256 through
#    scramp, an independent implementation (RFC 5034 AUTH with an initial
#    response); the UIDLs are the same as in the first session.
p = poplib.POP3_SSL(host, int(tls_port), context=ctx, timeout=20)
client = scramp.ScramClient(["SCRAM-SHA-256"], user, password)
first = base64.b64encode(client.get_client_first().encode()).decode()
p._putcmd("AUTH SCRAM-SHA-256 " + first)
line = p._getline()[0].decode()
assert line.startswith("+ "), line
client.set_server_first(base64.b64decode(line[2:]).decode())
p._putcmd(base64.b64encode(client.get_client_final().encode()).decode())
line = p._getline()[0].decode()
assert line.startswith("+ "), line
client.set_server_final(base64.b64decode(line[2:]).decode())  # verifies the server
p._putcmd("")
line = p._getline()[0].decode()
assert line.startswith("+OK"), line
resp, uidls, _ = p.uidl()
assert [line.split()[1].decode() for line in uidls] == uids, uidls
print("ok: POP3_SSL + AUTH SCRAM-SHA-256 (server verified), same UIDLs")

# 4. DELE + QUIT removes the message; a wrong password gets [AUTH].
p.dele(1)
p.quit()
p = poplib.POP3_SSL(host, int(tls_port), context=ctx, timeout=20)
try:
    p.user(user)
    p.pass_("wrong password")
    raise AssertionError("a wrong password was accepted")
except poplib.error_proto as e:
    assert e.args[0].startswith(b"-ERR [AUTH]"), e
p.close()
p = poplib.POP3_SSL(host, int(tls_port), context=ctx, timeout=20)
p.user(user)
p.pass_(password)
resp, uidls, _ = p.uidl()
assert [line.split()[1].decode() for line in uidls] == uids[1:], uidls
p.quit()
print("ok: DELE + QUIT applied; wrong password answered -ERR [AUTH]")
