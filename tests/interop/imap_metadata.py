#!/usr/bin/env python3
"""METADATA (RFC 5464) through Python's imaplib: the RFC's examples, values
at the size limit and one byte over, too many entries, a missing mailbox,
MAXSIZE and DEPTH, DELETE and RENAME.

Usage: imap_metadata.py HOST PORT USER PASSWORD MAX_VALUE_SIZE MAX_ENTRIES

Prints one `ok: ` line per passed check; any failure raises (exit 1).
"""

import imaplib
import sys

def check(condition, detail=""):
    """An explicit check (`assert` would vanish under `python3 -O`)."""
    if not condition:
        raise SystemExit(f"check failed: {detail!r}")


HOST, PORT, USER, PASSWORD = sys.argv[1:5]
MAX_VALUE, MAX_ENTRIES = int(sys.argv[5]), int(sys.argv[6])

imaplib.Commands["GETMETADATA"] = ("AUTH", "SELECTED")
imaplib.Commands["SETMETADATA"] = ("AUTH", "SELECTED")


def ok(what):
    print("ok:", what, flush=True)


c = imaplib.IMAP4(HOST, int(PORT))
c.login(USER, PASSWORD)
typ, caps = c.capability()
check(b"METADATA" in caps[0].split() and b"METADATA-SERVER" in caps[0].split(), caps)


def cmd(name, *args):
    """(tagged status, tagged text, METADATA data) of one command."""
    c.untagged_responses.pop("METADATA", None)
    try:
        typ, text = c._simple_command(name, *args)
    except imaplib.IMAP4.error as e:
        return "BAD", str(e), []
    _, data = c._untagged_response(typ, text, "METADATA")
    return typ, (text[-1] or b"").decode(), [d for d in data if d is not None]


def setm(mailbox, *pairs, literal=None):
    if literal is None:
        return cmd("SETMETADATA", mailbox, "(" + " ".join(pairs) + ")")
    # One entry whose value is a literal8 (it may hold NULs); imaplib can
    # only put a literal last, so this line is written by hand.
    tag = c._new_tag()
    c.send(b"%s SETMETADATA %s (%s ~{%d+}\r\n" % (tag, mailbox.encode(), pairs[0].encode(), len(literal)))
    c.send(literal + b")\r\n")
    try:
        typ, text = c._command_complete("SETMETADATA", tag)
    except imaplib.IMAP4.error as e:
        return "BAD", str(e), []
    return typ, (text[-1] or b"").decode(), []


# RFC 5464 §4.3 example 1 and §4.2 examples.
typ, text, _ = setm('""', '/shared/comment "Shared comment"')
check(typ == "OK", (typ, text))
typ, text, data = cmd("GETMETADATA", '""', "/shared/comment")
check(typ == "OK" and data == [b'"" (/shared/comment "Shared comment")'], (typ, data))
ok("RFC 5464 server entry set and read back")

c.create("INBOX/Sub")
typ, text, _ = setm("INBOX", '/private/comment "My own comment"', '/shared/comment "Shared"')
check(typ == "OK", text)
typ, text, data = cmd("GETMETADATA", "INBOX", "(/shared/comment /private/comment)")
check(typ == "OK" and data == [b'"INBOX" (/shared/comment "Shared" /private/comment "My own comment")'], data)
ok("RFC 5464 mailbox entries, two at once")

# Removal with NIL; a missing entry reads as NIL.
typ, _, _ = setm("INBOX", "/shared/comment NIL")
check(typ == "OK")
typ, _, data = cmd("GETMETADATA", "INBOX", "/shared/comment")
check(data == [b'"INBOX" (/shared/comment NIL)'], data)
ok("NIL removes an entry")

# DEPTH and MAXSIZE (RFC 5464 §4.2.1, §4.2.2).
check(setm("INBOX", '/private/filters/a "1"', '/private/filters/a/deep "2"', '/private/filters/b "333"')[0] == "OK")
typ, _, data = cmd("GETMETADATA", "(DEPTH 1)", "INBOX", "/private/filters")
check(data == [b'"INBOX" (/private/filters/a "1" /private/filters/b "333")'], data)
typ, _, data = cmd("GETMETADATA", "(DEPTH infinity)", "INBOX", "/private/filters")
check(b"/private/filters/a/deep" in data[0], data)
typ, text, data = cmd("GETMETADATA", "(MAXSIZE 2 DEPTH 1)", "INBOX", "/private/filters")
check(typ == "OK" and "[METADATA LONGENTRIES 3]" in text, (typ, text))
check(b"/private/filters/b" not in data[0] and b'/private/filters/a "1"' in data[0], data)
ok("DEPTH 1, DEPTH infinity and MAXSIZE with LONGENTRIES")

# Case-insensitive names.
typ, _, data = cmd("GETMETADATA", "INBOX", "/PRIVATE/Comment")
check(data == [b'"INBOX" (/private/comment "My own comment")'], data)
ok("entry names are case-insensitive")

# A value at the size limit (binary, so a literal8 comes back) and one byte over.
at_limit = bytes(range(256)) * (MAX_VALUE // 256) + b"x" * (MAX_VALUE % 256)
check(len(at_limit) == MAX_VALUE)
typ, text, _ = setm("INBOX", "/private/big", literal=at_limit)
check(typ == "OK", text)
typ, _, data = cmd("GETMETADATA", "INBOX", "/private/big")
check(isinstance(data[0], tuple) and data[0][1] == at_limit, data[0][:1])
typ, text, _ = setm("INBOX", "/private/big", literal=at_limit + b"y")
check(typ == "NO" and f"[METADATA MAXSIZE {MAX_VALUE}]" in text, (typ, text))
typ, _, data = cmd("GETMETADATA", "INBOX", "/private/big")
check(data[0][1] == at_limit, "the refused value replaced the old one")
ok("a value of %d bytes is stored, one byte more is NO [METADATA MAXSIZE]" % MAX_VALUE)

# Too many entries: all or nothing.
typ, text, _ = setm('"INBOX/Sub"', *['/private/e%d "v"' % i for i in range(MAX_ENTRIES)])
check(typ == "OK", text)
typ, text, _ = setm('"INBOX/Sub"', '/private/one-more "v"')
check(typ == "NO" and "[METADATA TOOMANY]" in text, (typ, text))
typ, text, _ = setm('"INBOX/Sub"', "/private/e0 NIL", '/private/one-more "v"')
check(typ == "OK", text)
ok("%d entries on a mailbox, one more is NO [METADATA TOOMANY]" % MAX_ENTRIES)

# A missing mailbox, a bad entry name.
typ, text, _ = cmd("GETMETADATA", "Nonexistent", "/private/comment")
check(typ == "NO" and "[NONEXISTENT]" in text, (typ, text))
typ, text, _ = setm("Nonexistent", '/private/comment "x"')
check(typ == "NO" and "[NONEXISTENT]" in text, (typ, text))
for bad in ("/comment", "/private/", "/private//x", "/private/a*"):
    typ, _, _ = setm("INBOX", '%s "x"' % bad)
    check(typ == "BAD", bad)
ok("missing mailbox NO [NONEXISTENT], bad entry names BAD")

# RENAME moves the entries, DELETE removes them.
c.create("Work")
check(setm("Work", '/private/comment "work"')[0] == "OK")
check(c.rename("Work", "Job")[0] == "OK")
typ, _, data = cmd("GETMETADATA", "Job", "/private/comment")
check(data == [b'"Job" (/private/comment "work")'], data)
check(c.delete("Job")[0] == "OK")
c.create("Job")
typ, _, data = cmd("GETMETADATA", "Job", "/private/comment")
check(data == [b'"Job" (/private/comment NIL)'], data)
ok("RENAME keeps a mailbox's entries, DELETE removes them")
c.logout()
