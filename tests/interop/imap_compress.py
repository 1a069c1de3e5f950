#!/usr/bin/env python3
"""COMPRESS=DEFLATE (RFC 4978) from a client nobody on this project wrote:
Python's zlib (raw deflate, wbits=-15) on a raw socket, plain and over TLS.

Usage: imap_compress.py HOST PORT TLSPORT USER PASSWORD BODYFILE

Prints one `ok: ` line per passed check; any failure raises (exit 1).
Every read has a 10 s timeout: a response batch the server did not end with
a SYNC_FLUSH would sit in its compressor and the read would time out.
"""

import re
import socket
import ssl
import sys
import zlib

def check(condition, detail=""):
    """An explicit check (`assert` would vanish under `python3 -O`)."""
    if not condition:
        raise SystemExit(f"check failed: {detail!r}")


HOST, PORT, TLSPORT, USER, PASSWORD, BODYFILE = sys.argv[1:7]


class Conn:
    def __init__(self, port, tls=False):
        s = socket.create_connection((HOST, int(port)), timeout=10)
        if tls:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            s = ctx.wrap_socket(s)
        self.s = s
        self.buf = b""
        self.z = None
        self.d = None
        self.raw_in = 0  # bytes read from the socket while compressed
        self.raw_out = 0

    def send(self, data):
        if self.z:
            data = self.z.compress(data) + self.z.flush(zlib.Z_SYNC_FLUSH)
            self.raw_out += len(data)
        self.s.sendall(data)

    def fill(self):
        chunk = self.s.recv(65536)
        if not chunk:
            raise EOFError("server closed")
        if self.d:
            self.raw_in += len(chunk)
            chunk = self.d.decompress(chunk)
        self.buf += chunk

    def line(self):
        while b"\r\n" not in self.buf:
            self.fill()
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def response(self, tag):
        """Lines up to the tagged one; a literal becomes (line, bytes, rest)."""
        out = []
        while True:
            line = self.line()
            m = re.search(rb"\{(\d+)\}$", line)
            if m:
                n = int(m.group(1))
                while len(self.buf) < n:
                    self.fill()
                lit, self.buf = self.buf[:n], self.buf[n:]
                out.append((line, lit, self.line()))
                continue
            out.append(line)
            if line.startswith(tag + b" "):
                return out

    def cmd(self, tag, text):
        self.send(tag + b" " + text + b"\r\n")
        return self.response(tag)

    def compress(self):
        done = self.cmd(b"z1", b"COMPRESS DEFLATE")
        check(done[-1].startswith(b"z1 OK"), done)
        check(self.buf == b"", "clear text after the OK")
        self.z = zlib.compressobj(wbits=-15)
        self.d = zlib.decompressobj(wbits=-15)


def ok(what):
    print("ok:", what, flush=True)


def login(c):
    greeting = c.line()
    check(greeting.startswith(b"* OK"), greeting)
    r = c.cmd(b"l", b'LOGIN "%s" "%s"' % (USER.encode(), PASSWORD.encode()))
    check(r[-1].startswith(b"l OK"), r)
    caps = c.cmd(b"c", b"CAPABILITY")
    check(b"COMPRESS=DEFLATE" in caps[0], caps)


# Before login COMPRESS is refused.
c = Conn(PORT)
greeting = c.line()
check(b"COMPRESS" not in greeting, greeting)
r = c.cmd(b"p", b"COMPRESS DEFLATE")
check(r[-1].startswith(b"p BAD"), r)
ok("COMPRESS refused before login")

# Plain TCP: LOGIN, COMPRESS, a second COMPRESS, SELECT, a large FETCH.
c = Conn(PORT)
login(c)
c.compress()
r = c.cmd(b"z2", b"COMPRESS DEFLATE")
check(r[-1].startswith(b"z2 NO [COMPRESSIONACTIVE]"), r)
r = c.cmd(b"s", b"SELECT INBOX")
check(r[-1].startswith(b"s OK"), r)
check(b"* 1 EXISTS" in r, r)
ok("COMPRESS DEFLATE, then NO [COMPRESSIONACTIVE], then SELECT")

before = c.raw_in
r = c.cmd(b"f", b"UID FETCH 1 BODY.PEEK[]")
lit = [x for x in r if isinstance(x, tuple)]
check(len(lit) == 1, r)
body = lit[0][1]
with open(BODYFILE, "wb") as f:
    f.write(body)
wire = c.raw_in - before
check(wire < len(body) // 3, (wire, len(body)))
ok("FETCH of %d bytes came as %d deflated bytes" % (len(body), wire))

# APPEND a large message through the compressed client->server direction,
# with a synchronizing literal (the "+" comes back compressed too).
big = b"Subject: up\r\n\r\n" + b"".join(b"line %06d of the upload\r\n" % i for i in range(20000))
c.send(b"a APPEND INBOX {%d}\r\n" % len(big))
cont = c.line()
check(cont.startswith(b"+"), cont)
before = c.raw_out
c.send(big + b"\r\n")
r = c.response(b"a")
check(r[-1].startswith(b"a OK [APPENDUID"), r)
check(c.raw_out - before < len(big) // 3, (c.raw_out - before, len(big)))
uid = int(re.search(rb"APPENDUID \d+ (\d+)", r[-1]).group(1))
r = c.cmd(b"g", b"UID FETCH %d BODY.PEEK[]" % uid)
lit = [x for x in r if isinstance(x, tuple)]
check(lit and lit[0][1] == big, "appended message differs")
ok("APPEND of %d bytes, deflated, reads back the same" % len(big))

# IDLE: a message appended on another (uncompressed) connection is pushed
# at once, which needs the server's SYNC_FLUSH.
c.send(b"i IDLE\r\n")
cont = c.line()
check(cont.startswith(b"+"), cont)
other = Conn(PORT)
login(other)
msg = b"Subject: pushed\r\n\r\nhello\r\n"
other.send(b"o APPEND INBOX {%d+}\r\n" % len(msg) + msg + b"\r\n")
r = other.response(b"o")
check(r[-1].startswith(b"o OK"), r)
other.cmd(b"x", b"LOGOUT")
pushed = c.line()
check(re.fullmatch(rb"\* \d+ EXISTS", pushed), pushed)
c.send(b"DONE\r\n")
r = c.response(b"i")
check(r[-1].startswith(b"i OK"), r)
ok("IDLE push arrived compressed: %s" % pushed.decode())

r = c.cmd(b"q", b"LOGOUT")
check(any(x.startswith(b"* BYE") for x in r if isinstance(x, bytes)), r)
ok("LOGOUT over the compressed stream")

# TLS: compression inside TLS.
t = Conn(TLSPORT, tls=True)
login(t)
t.compress()
r = t.cmd(b"s", b"EXAMINE INBOX")
check(r[-1].startswith(b"s OK"), r)
r = t.cmd(b"f", b"UID FETCH 1 BODY.PEEK[]")
lit = [x for x in r if isinstance(x, tuple)]
check(lit and lit[0][1] == body, "FETCH over TLS differs")
r = t.cmd(b"q", b"LOGOUT")
check(r[-1].startswith(b"q OK"), r)
ok("COMPRESS inside TLS, FETCH the same body")
