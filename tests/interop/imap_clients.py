#!/usr/bin/env python3
"""Uses Mailroom the way real IMAP clients do: Python's imaplib and the
imapclient package (neither written by this project).

Usage: imap_clients.py HOST STARTTLS_PORT TLS_PORT USER PASSWORD
The INBOX must hold exactly three messages with subjects m1, m2, m3.
Exits non-zero (with the reason on stderr) on any failure, also under
`python3 -O` (the checks are explicit, not `assert`); prints one "ok: ..."
line per finished scenario.
"""
import email
import imaplib
import ssl
import sys
import threading
import time

import imapclient

host, starttls_port, tls_port, user, password = sys.argv[1:6]
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE  # the stack under test has a self-signed certificate


def expect(condition, *detail):
    """Fails the run unless `condition` holds: prints where and why on
    stderr and exits 1. An explicit check, where `assert` would vanish under
    `python3 -O`."""
    if not condition:
        line = sys._getframe(1).f_lineno
        print(f"FAILED: imap_clients.py line {line}: {detail!r}", file=sys.stderr)
        sys.exit(1)


def check(typ, data, what):
    expect(typ == "OK", what, typ, data)
    return data


# 1. imaplib over STARTTLS: login, folders, read, flag, search, copy, expunge.
m = imaplib.IMAP4(host, int(starttls_port), timeout=20)
expect("STARTTLS" in m.capabilities, m.capabilities)
m.starttls(ssl_context=ctx)
check(*m.login(user, password), "login")
caps = check(*m.capability(), "capability")[0].decode().split()
for cap in ("IDLE", "UIDPLUS", "MOVE", "CONDSTORE", "QRESYNC", "SPECIAL-USE", "ESEARCH"):
    expect(cap in caps, (cap, caps))
check(*m.create("Work/Reports"), "create")
typ, boxes = m.list()
check(typ, boxes, "list")
names = [b.decode() for b in boxes]
expect(any(n.endswith('"Work/Reports"') for n in names), names)
expect(any("\\Sent" in n for n in names), names)
typ, data = m.select("INBOX")
expect(data == [b"3"], data)
typ, data = m.search(None, "ALL")
expect(data == [b"1 2 3"], data)
typ, data = m.fetch("2", "(RFC822)")
check(typ, data, "fetch")
msg = email.message_from_bytes(data[0][1])
expect(msg["Subject"] == "m2", msg["Subject"])
typ, data = m.fetch("2", "(FLAGS)")
expect(b"\\Seen" in data[0], data)  # RFC822 sets \Seen
check(*m.store("1", "+FLAGS", "(\\Flagged)"), "store")
typ, data = m.search(None, "FLAGGED")
expect(data == [b"1"], data)
typ, data = m.uid("SEARCH", None, "SUBJECT", "m3")
expect(data == [b"3"], data)
typ, data = m.copy("1:2", "Work/Reports")
check(typ, data, "copy")
check(*m.store("3", "+FLAGS", "(\\Deleted)"), "store deleted")
typ, data = m.expunge()
expect(data == [b"3"], data)
typ, data = m.status("Work/Reports", "(MESSAGES UNSEEN)")
expect(b"MESSAGES 2" in data[0], data)
m.append("Work/Reports", "(\\Seen)", imaplib.Time2Internaldate(time.time()),
         b"From: me@example.test\r\nSubject: appended\r\n\r\nhi\r\n")
typ, data = m.status("Work/Reports", "(MESSAGES)")
expect(b"MESSAGES 3" in data[0], data)
m.close()
m.logout()
print("ok: imaplib over STARTTLS")

# 2. imapclient over implicit TLS: MOVE, CONDSTORE, special-use, IDLE.
c = imapclient.IMAPClient(host, port=int(tls_port), ssl=True, ssl_context=ctx, timeout=20)
c.login(user, password)
expect(c.find_special_folder(b"\\Sent") == "Sent", c.find_special_folder(b"\\Sent"))
info = c.select_folder("INBOX")
expect(info[b"EXISTS"] == 2, info)
expect(b"HIGHESTMODSEQ" in info, info)
msgs = c.search(["ALL"])
expect(msgs == [1, 2], msgs)
fetched = c.fetch(msgs, ["ENVELOPE", "BODYSTRUCTURE", "FLAGS", "INTERNALDATE", "RFC822.SIZE", "MODSEQ"])
subjects = sorted(f[b"ENVELOPE"].subject.decode() for f in fetched.values())
expect(subjects == ["m1", "m2"], subjects)
# BODYSTRUCTURE as the client parsed it: each message is one text/plain
# part of "Hello mN.\r\n" (11 octets, 1 line), never an empty structure.
for n, f in fetched.items():
    bs = f[b"BODYSTRUCTURE"]
    expect(not bs.is_multipart, n, bs)
    expect((bs[0].upper(), bs[1].upper()) == (b"TEXT", b"PLAIN"), n, bs)
    expect(bs[5].upper() == b"7BIT" and bs[6] == 11 and bs[7] == 1, n, bs)
c.add_flags([1], ["$Important"])
expect(b"$Important" in c.get_flags([1])[1], c.get_flags([1]))
c.move([2], "Archive")
expect(c.search(["ALL"]) == [1])
c.select_folder("Archive")
expect(len(c.search(["ALL"])) == 1)
c.select_folder("INBOX")

# IDLE: a second client appends to INBOX; the idling one hears EXISTS.
c.idle()
other = imapclient.IMAPClient(host, port=int(tls_port), ssl=True, ssl_context=ctx, timeout=20)
other.login(user, password)


def append_later():
    time.sleep(0.3)
    other.append("INBOX", b"From: x@example.test\r\nSubject: pushed\r\n\r\nhi\r\n")


t = threading.Thread(target=append_later)
t.start()
responses = c.idle_check(timeout=5)
t.join()
c.idle_done()
expect(any(r[1] == b"EXISTS" for r in responses), responses)
other.logout()
c.logout()
print("ok: imapclient over implicit TLS with IDLE")

# 3. SCRAM-SHA-256 through imaplib's AUTHENTICATE with an independent SCRAM
#    client (scramp), which checks the server's signature.
import scramp  # noqa: E402

m = imaplib.IMAP4(host, int(starttls_port), timeout=20)
m.starttls(ssl_context=ctx)
scram = scramp.ScramClient(["SCRAM-SHA-256"], user, password)
steps = []


def scram_step(challenge):
    steps.append(challenge)
    if len(steps) == 1:
        return scram.get_client_first().encode()
    if len(steps) == 2:
        scram.set_server_first(challenge.decode())
        return scram.get_client_final().encode()
    scram.set_server_final(challenge.decode())  # raises if the signature is wrong
    return b""


check(*m.authenticate("SCRAM-SHA-256", scram_step), "authenticate")
expect(len(steps) == 3, steps)
typ, data = m.select("INBOX", readonly=True)
check(typ, data, "examine")
m.logout()
print("ok: SCRAM-SHA-256 via imaplib + scramp")

# 4. imapclient across the remaining commands and extensions: ENABLE,
#    NAMESPACE, ID, QUOTA, folder management, subscriptions, STATUS,
#    CONDSTORE fetch modifiers, UID EXPUNGE (UIDPLUS), UNSELECT, ESEARCH.
c = imapclient.IMAPClient(host, port=int(tls_port), ssl=True, ssl_context=ctx, timeout=20)
c.login(user, password)
expect(c.enable("CONDSTORE") == [b"CONDSTORE"])
ns = c.namespace()
expect(ns.personal[0][0] == "" and ns.personal[0][1] == "/", ns)
ident = c.id_({"name": "interop"})
ident = ident[0] if len(ident) == 1 else ident  # a tuple holding the flat list
expect(dict(zip(ident[0::2], ident[1::2]))[b"name"] == b"Mailroom", ident)
roots, quotas = c.get_quota_root("INBOX")
expect(roots.mailbox == "INBOX", roots)
c.create_folder("Tmp/One")
expect(c.folder_exists("Tmp/One"))
c.rename_folder("Tmp/One", "Tmp/Two")
expect(c.folder_exists("Tmp/Two") and not c.folder_exists("Tmp/One"))
c.subscribe_folder("Tmp/Two")
expect("Tmp/Two" in [f[2] for f in c.list_sub_folders()])
c.unsubscribe_folder("Tmp/Two")
expect("Tmp/Two" not in [f[2] for f in c.list_sub_folders()])
c.delete_folder("Tmp/Two")
expect(not c.folder_exists("Tmp/Two"))
st = c.folder_status("INBOX", ["MESSAGES", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "HIGHESTMODSEQ"])
expect(st[b"MESSAGES"] == 2, st)
info = c.select_folder("INBOX")
hms = info[b"HIGHESTMODSEQ"]
c.add_flags([1], [imapclient.SEEN])
changed = c.fetch(c.search(["ALL"]), ["FLAGS"], modifiers=[f"CHANGEDSINCE {hms}"])
expect(list(changed) == [1], changed)
expect(changed[1][b"MODSEQ"][0] > hms, changed)
uid = c.search(["UNSEEN"])[0]
c.add_flags([uid], [imapclient.DELETED])
c.uid_expunge([uid])
expect(c.search(["ALL"]) == [1], c.search(["ALL"]))
typ, data = c._imap._simple_command("UID", "SEARCH", "RETURN", "(COUNT MIN)", "ALL")
expect(typ == "OK", (typ, data))
esearch = c._imap.untagged_responses.pop("ESEARCH", [b""])[0]
expect(b"COUNT 1" in esearch and b"MIN 1" in esearch, esearch)
c.unselect_folder()
c.logout()
print("ok: imapclient across the other commands and extensions")

# 5. A large message (3 MiB, over the size the server sends piece by piece)
#    goes in with APPEND and comes back byte for byte through BODY.PEEK[]
#    and RFC822, over TLS.
import base64  # noqa: E402
import os  # noqa: E402

payload = base64.encodebytes(os.urandom(2_300_000)).replace(b"\n", b"\r\n")
big = (b"From: me@example.test\r\nSubject: big\r\nMIME-Version: 1.0\r\n"
       b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
       + payload)
expect(len(big) > 3_000_000, len(big))
c = imapclient.IMAPClient(host, port=int(tls_port), ssl=True, ssl_context=ctx, timeout=20)
c.login(user, password)
c.create_folder("Big")
c.append("Big", big)
c.select_folder("Big", readonly=True)
got = c.fetch([1], ["BODY.PEEK[]", "RFC822.SIZE"])[1]
expect(got[b"BODY[]"] == big, len(got[b"BODY[]"]))
expect(got[b"RFC822.SIZE"] == len(big), got[b"RFC822.SIZE"])
got = c.fetch([1], ["RFC822"])[1]
expect(got[b"RFC822"] == big, len(got[b"RFC822"]))
c.logout()
print("ok: imapclient fetches a 3 MiB message whole")

# 6. MULTIAPPEND (RFC 3502) through imapclient's multiappend(): three
#    messages, flags and a date on some, one APPENDUID with the UID range.
import datetime  # noqa: E402

c = imapclient.IMAPClient(host, port=int(tls_port), ssl=True, ssl_context=ctx, timeout=20)
c.login(user, password)
expect(b"MULTIAPPEND" in c.capabilities(), c.capabilities())
c.create_folder("Uploads")
when = datetime.datetime(2024, 3, 1, 12, 30, 0, tzinfo=datetime.timezone.utc)
reply = c.multiappend("Uploads", [
    {"msg": b"From: me@example.test\r\nSubject: up1\r\n\r\none\r\n", "flags": [b"\\Seen"], "date": when},
    b"From: me@example.test\r\nSubject: up2\r\n\r\ntwo\r\n",
    {"msg": b"From: me@example.test\r\nSubject: up3\r\n\r\nthree\r\n", "flags": [b"\\Flagged", b"$Up"]},
])
typ, data = reply
expect(typ == "OK" and data[0].startswith(b"[APPENDUID ") and data[0].split(b"]")[0].endswith(b" 1:3"),
       reply)
c.select_folder("Uploads", readonly=True)
got = c.fetch([1, 2, 3], ["FLAGS", "INTERNALDATE", "BODY.PEEK[HEADER.FIELDS (SUBJECT)]"])
expect(sorted(got) == [1, 2, 3], got)
subjects = [got[i][b"BODY[HEADER.FIELDS (SUBJECT)]"].strip() for i in (1, 2, 3)]
expect(subjects == [b"Subject: up1", b"Subject: up2", b"Subject: up3"], subjects)
expect(b"\\Seen" in got[1][b"FLAGS"] and b"\\Seen" not in got[2][b"FLAGS"], got)
expect(set(got[3][b"FLAGS"]) >= {b"\\Flagged", b"$Up"}, got[3])
expect(got[1][b"INTERNALDATE"].astimezone(datetime.timezone.utc).replace(tzinfo=None)
       == datetime.datetime(2024, 3, 1, 12, 30, 0), got[1])
c.logout()
print("ok: imapclient MULTIAPPEND")

# 7. imapclient's SORT and THREAD (RFC 5256): the client builds the commands
#    and parses the responses (nested thread lists included).
c = imapclient.IMAPClient(host, port=int(tls_port), ssl=True, ssl_context=ctx, timeout=20)
c.login(user, password)
for cap in (b"SORT", b"THREAD=ORDEREDSUBJECT", b"THREAD=REFERENCES"):
    expect(c.has_capability(cap), cap, c.capabilities())
c.create_folder("Threads")
for subject, mid, refs, day in [
    ("Lunch", "a", "", 1),
    ("Re: lunch", "b", "<a@i.test>", 2),
    ("Agenda", "c", "", 3),
    ("RE: [team] =?UTF-8?Q?LUNCH?=", "d", "<a@i.test> <b@i.test>", 4),
]:
    text = (f"From: {mid}@i.test\r\nSubject: {subject}\r\n"
            f"Date: Thu, 0{day} Jan 2026 10:00:00 +0000\r\nMessage-ID: <{mid}@i.test>\r\n"
            + (f"References: {refs}\r\n" if refs else "") + "\r\nbody\r\n")
    c.append("Threads", text.encode())
c.select_folder("Threads")
got = c.sort(["SUBJECT"])
expect(got == [3, 1, 2, 4], got)
got = c.sort(["REVERSE DATE"], ["SINCE", "01-Jan-2020"])
expect(got == [4, 3, 2, 1], got)
got = c.sort(["FROM"], ["NOT", "SUBJECT", "agenda"], charset="US-ASCII")
expect(got == [1, 2, 4], got)
got = c.thread("REFERENCES")
expect(got == ((1, 2, 4), (3,)), got)
got = c.thread("ORDEREDSUBJECT")
expect(got == ((1, (2,), (4,)), (3,)), got)
try:
    c.sort(["SUBJECT"], charset="KOI8-R")  # a charset Mailroom does not search in
    expect(False, "SORT in KOI8-R succeeded")
except imapclient.exceptions.IMAPClientError as e:
    expect("BADCHARSET" in str(e), str(e))
c.logout()
print("ok: imapclient SORT and THREAD")
