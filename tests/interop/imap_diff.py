#!/usr/bin/env python3
"""Differential IMAP testing: the same scripted sessions against Mailroom and
against a throw-away Dovecot (the reference implementation), responses
compared after normalising what may legitimately differ.

Usage: imap_diff.py --port PORT --user USER --password PASSWORD [--compress] [--metadata]
                   [--notify] [--acl]
  PORT is a Mailroom IMAP listener on 127.0.0.1 (plaintext LOGIN is allowed
  on loopback) where USER exists with an empty INBOX. Dovecot is started from
  its own configuration in a temporary directory (`dovecot -c FILE`) with the
  same user, and stopped at the end.

Both servers first get the same fixtures (APPEND with the same flags and
internal dates), then the same commands. Each command's responses are
normalised:
  * UIDVALIDITY, MODSEQ/HIGHESTMODSEQ values and INTERNALDATE's time zone
    spelling are replaced by placeholders (they are the servers' own);
  * the human-readable text after OK/NO/BAD is dropped (response codes are
    kept); CAPABILITY data and `OK [CAPABILITY ...]` are dropped;
and then compared line by line. A difference is an error unless the
command is listed in DOCUMENTED with the RFC text that allows Mailroom's
answer (or, for a known Mailroom bug not fixed yet, the issue that tracks
it). With --compress both sessions send COMPRESS DEFLATE (RFC 4978) right
after LOGIN and run compressed (Python's zlib, raw deflate) on both servers,
Dovecot with its imap_zlib plugin; a second COMPRESS is compared too. With
--metadata the METADATA_COMMANDS (RFC 5464) follow, Dovecot keeping its
entries in a mail_attribute_dict file. With --notify and --acl the
NOTIFY_COMMANDS (RFC 5465, what one connection sees of it) and the
ACL_COMMANDS (RFC 4314, Dovecot with its acl plugin) come last. Exit status: 0 when every difference is documented, 1 otherwise, 2
when Dovecot cannot be started. Checks are explicit (no `assert`, which
`python3 -O` removes).
"""

import argparse
import zlib
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

# ---------------------------------------------------------------------------
# Fixtures: MIME structures and header forms where servers have gone wrong.
# ---------------------------------------------------------------------------

PLAIN = (
    b"From: Alice Example <alice@example.test>\r\n"
    b"To: bob@example.test\r\n"
    b"Cc: group:;, group2: (foo) ;\r\n"
    b"Subject: plain text\r\n"
    b"Date: Mon, 7 Feb 1994 21:52:25 -0800\r\n"
    b"Message-ID: <plain-1@example.test>\r\n"
    b"\r\n"
    b"Hello Bob,\r\nthis is a plain message.\r\n"
)

ALTERNATIVE = (
    b"From: \"Carol, C.\" <carol@example.test>\r\n"
    b"To: Bob <bob@example.test>, dave@example.test\r\n"
    b"Reply-To: lists@example.test\r\n"
    b"Subject: =?UTF-8?Q?caf=C3=A9?= menu\r\n"
    b"Date: Tue, 8 Feb 1994 10:00:00 +0100\r\n"
    b"Message-ID: <alt-1@example.test>\r\n"
    b"In-Reply-To: <plain-1@example.test>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: multipart/alternative; boundary=\"b1\"\r\n"
    b"\r\n"
    b"preamble\r\n"
    b"--b1\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n"
    b"\r\n"
    b"Caf=C3=A9 au lait\r\n"
    b"--b1\r\n"
    b"Content-Type: text/html; charset=utf-8\r\n"
    b"\r\n"
    b"<p>Caf\xc3\xa9 au lait</p>\r\n"
    b"--b1--\r\n"
    b"epilogue\r\n"
)

MIXED = (
    b"From: <user-from (comment)@ (comment) example.org>\r\n"
    b"To: undisclosed-recipients:;\r\n"
    b"Subject: attachment\r\n"
    b"Date: Wed, 9 Feb 1994 12:00:00 +0000\r\n"
    b"Message-ID: <mixed-1@example.test>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: multipart/mixed; boundary=\"outer\"\r\n"
    b"\r\n"
    b"--outer\r\n"
    b"Content-Type: text/plain\r\n"
    b"\r\n"
    b"See the attachment.\r\n"
    b"--outer\r\n"
    b"Content-Type: application/octet-stream; name=\"data.bin\"\r\n"
    b"Content-Disposition: attachment; filename=\"data.bin\"\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n"
    b"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\r\n"
    b"--outer\r\n"
    b"Content-Type: message/rfc822\r\n"
    b"\r\n"
    b"From: inner@example.test\r\n"
    b"Subject: inner message\r\n"
    b"Content-Type: text/plain; charset=us-ascii\r\n"
    b"\r\n"
    b"Inner body line one\r\nline two\r\n"
    b"--outer--\r\n"
)

EMPTY_BODY = (
    b"From: eve@example.test\r\n"
    b"Subject: no body\r\n"
    b"Date: Thu, 10 Feb 1994 08:00:00 +0000\r\n"
    b"\r\n"
)

FIXTURES = [
    (PLAIN, r"(\Seen)", "07-Feb-1994 21:52:25 -0800"),
    (ALTERNATIVE, r"(\Flagged $Label1)", "08-Feb-1994 10:00:00 +0100"),
    (MIXED, "()", "09-Feb-1994 12:00:00 +0000"),
    (EMPTY_BODY, r"(\Answered)", "10-Feb-1994 08:00:00 +0000"),
]

# The session, after the fixtures: one item per FETCH so that the order of
# items within a response cannot differ.
FETCH_ITEMS = [
    "FLAGS",
    "RFC822.SIZE",
    "ENVELOPE",
    "BODYSTRUCTURE",
    "BODY",
    "BODY.PEEK[HEADER]",
    "BODY.PEEK[TEXT]",
    "BODY.PEEK[1]",
    "BODY.PEEK[1.MIME]",
    "BODY.PEEK[2]",
    "BODY.PEEK[3.HEADER]",
    "BODY.PEEK[3.TEXT]",
    "BODY.PEEK[HEADER.FIELDS (From Subject)]",
    "BODY.PEEK[HEADER.FIELDS.NOT (From Subject Date)]",
    "BODY.PEEK[]<0.20>",
    "BODY.PEEK[TEXT]<5.10>",
    "BODY.PEEK[1]<0.4>",
    "RFC822.HEADER",
    "BINARY.PEEK[1]",
    "BINARY.SIZE[1]",
    "BINARY.PEEK[2]",
    "BINARY.SIZE[2]",
]

COMMANDS = (
    ["SELECT INBOX"]
    + [f"FETCH 1:* ({item})" for item in FETCH_ITEMS]
    + [
        "UID FETCH 1:* (FLAGS)",
        "FETCH * (FLAGS)",
        "UID FETCH 2:3 (RFC822.SIZE)",
        "UID FETCH 3:* (FLAGS)",
        "SEARCH ALL",
        "SEARCH SEEN",
        "SEARCH UNSEEN",
        "SEARCH FLAGGED",
        "SEARCH ANSWERED",
        "SEARCH KEYWORD $Label1",
        "SEARCH UNKEYWORD $Label1",
        "SEARCH FROM alice",
        "SEARCH FROM example.org",
        "SEARCH TO bob",
        "SEARCH SUBJECT menu",
        "SEARCH BODY lait",
        "SEARCH TEXT attachment",
        "SEARCH HEADER Message-ID mixed-1",
        "SEARCH LARGER 500",
        "SEARCH SMALLER 200",
        "SEARCH BEFORE 09-Feb-1994",
        "SEARCH SINCE 09-Feb-1994",
        "SEARCH ON 08-Feb-1994",
        "SEARCH SENTBEFORE 09-Feb-1994",
        "SEARCH OR SEEN FLAGGED",
        "SEARCH NOT SEEN",
        "SEARCH 2:3",
        "SEARCH UID 2:*",
        "UID SEARCH ALL",
        "STORE 3 +FLAGS (\\Deleted)",
        "STORE 3 -FLAGS.SILENT (\\Deleted)",
        "STORE 1:2 +FLAGS (\\Draft)",
        "STORE 4 FLAGS (\\Seen \\Answered)",
        "FETCH 1:* (FLAGS)",
        "STORE 2 +FLAGS ($Junk)",
        "FETCH 2 (FLAGS)",
        "CREATE a",
        "CREATE a/b",
        "CREATE a/b/c",
        'LIST "" a/*',
        'LIST "" a/%',
        'LIST "" "a/b"',
        'LIST "" nonexistent',
        'LIST "" ""',
        'STATUS a (MESSAGES UIDNEXT UNSEEN)',
        'STATUS INBOX (MESSAGES UNSEEN)',
        "COPY 1:2 a",
        'STATUS a (MESSAGES)',
        "STORE 1 +FLAGS (\\Deleted)",
        "EXPUNGE",
        "FETCH 1:* (FLAGS)",
        "UID FETCH 1 (FLAGS)",
        "SEARCH ALL",
        "EXAMINE a",
        "FETCH 1:* (FLAGS)",
        "CLOSE",
        "DELETE a/b/c",
        "DELETE a/b",
        "DELETE a",
        "SELECT nonexistent",
        # MULTIAPPEND (RFC 3502), sent with several LITERAL+ literals.
        (
            "MULTIAPPEND INBOX 2",
            [
                r'INBOX (\Seen) "11-Feb-1994 08:00:00 +0000"',
                PLAIN,
                r'(\Flagged) "12-Feb-1994 08:00:00 +0100"',
                EMPTY_BODY,
            ],
        ),
        "STATUS INBOX (MESSAGES UIDNEXT)",
        "EXAMINE INBOX",
        "FETCH 4:* (UID FLAGS INTERNALDATE RFC822.SIZE)",
        # SAVEDATE (RFC 8514): the dates are the servers' clocks, compared
        # as present or NIL; the searches by their results.
        "FETCH 1:* (SAVEDATE)",
        "SEARCH SAVEDATESUPPORTED",
        "SEARCH SAVEDBEFORE 1-Jan-2000",
        "SEARCH SAVEDSINCE 1-Jan-2000",
        "SEARCH SAVEDON 1-Jan-2000",
        # PREVIEW (RFC 8970).
        "FETCH 1:* (PREVIEW)",
        "FETCH 1:* (PREVIEW (LAZY))",
        "CLOSE",
        ("MULTIAPPEND nonexistent", ["nonexistent", PLAIN, "", EMPTY_BODY]),
        ("MULTIAPPEND bad flag", ["INBOX", PLAIN, "(bad%flag)", EMPTY_BODY]),
        ("MULTIAPPEND bad date", ["INBOX", PLAIN, '"31-Feb-1994 08:00:00 +0000"', EMPTY_BODY]),
        # Not compared: CREATE-SPECIAL-USE (RFC 6154 §3), which Dovecot 2.3
        # does not advertise (it accepts `CREATE x (USE (\Archive))` and
        # drops the use); tests/tests/imap.rs covers it.
    ]
)

# SORT and THREAD (RFC 5256), in a mailbox of their own: base subjects
# (Re:, Fwd:, [blob], (fwd), [fwd: ...], encoded words, 8-bit text, case),
# a missing Date (INTERNALDATE instead), equal keys (sequence order), a
# reference loop, missing parents, a duplicate and a missing Message-ID.
def _sort_msg(frm, to, subject, date, mid, refs=b"", extra=b""):
    h = b""
    if frm:
        h += b"From: " + frm + b"\r\n"
    h += b"To: " + to + b"\r\n"
    if subject is not None:
        h += b"Subject: " + subject + b"\r\n"
    if date:
        h += b"Date: " + date + b"\r\n"
    if mid:
        h += b"Message-ID: <" + mid + b">\r\n"
    if refs:
        h += b"References: " + refs + b"\r\n"
    return h + extra + b"\r\nbody " + (mid or b"none") + b"\r\n"


SORT_FIXTURES = [
    (_sort_msg(b"Zed <zed@x.test>", b"bob@x.test", b"Re: Hello",
               b"Tue, 03 Nov 2026 10:00:00 +0000", b"1@t"), "09-Nov-2026 09:00:00 +0000"),
    (_sort_msg(b"amy@x.test", b"Carl@x.test", b"=?UTF-8?Q?=C3=A9t=C3=A9?=",
               b"Sun, 01 Nov 2026 10:00:00 +0000", b"2@t", b"<1@t>",
               b"Cc: dan@x.test\r\n"), "08-Nov-2026 09:00:00 +0000"),
    (_sort_msg(b"\"Bob\" <Bob@x.test>", b"alice@x.test", b"[list] Fwd: hello (fwd)",
               None, b"3@t", b"", b"In-Reply-To: <2@t>\r\n"), "07-Nov-2026 09:00:00 +0000"),
    (_sort_msg(b"carl@x.test", b"alice@x.test", "\u00e4rger".encode(),
               b"Wed, 04 Nov 2026 10:00:00 +0000", b"4@t", b"<5@t>"), "06-Nov-2026 09:00:00 +0000"),
    (_sort_msg(None, b"alice@x.test", b"Re: =?ISO-8859-1?Q?=C4rger?=",
               b"Wed, 04 Nov 2026 11:00:00 +0000", b"5@t", b"<4@t>"), "05-Nov-2026 09:00:00 +0000"),
    (_sort_msg(b"zed@x.test", b"alice@x.test", b"hello",
               b"Tue, 03 Nov 2026 10:00:00 +0000", b"6@t"), "04-Nov-2026 09:00:00 +0000"),
    (_sort_msg(b"Ann <ann@x.test>", b"Zoe <zoe@x.test>", b"[fwd: Re: [x] topic]",
               b"Thu, 05 Nov 2026 08:00:00 -0500", b"7@t", b"<gone@t> <6@t>"),
     "03-Nov-2026 09:00:00 +0000"),
    (_sort_msg(b"ann@x.test", b"alice@x.test", b"Re: [tag] topic",
               b"Thu, 05 Nov 2026 14:00:00 +0100", b"7@t", b"<missing@t>"),
     "02-Nov-2026 09:00:00 +0000"),
    (_sort_msg(b"bea@x.test", b"alice@x.test", None,
               b"not a date", None, b"<missing@t>"), "01-Nov-2026 09:00:00 +0000"),
    (_sort_msg(b"cy@x.test", b"alice@x.test", b"   ",
               b"Fri, 06 Nov 2026 10:00:00 +0000", b"10@t", b"<missing@t>"),
     "31-Oct-2026 09:00:00 +0000"),
]

SORT_COMMANDS = [
    "SELECT sorting",
    "SORT (SUBJECT) UTF-8 ALL",
    "SORT (REVERSE SUBJECT) UTF-8 ALL",
    "SORT (ARRIVAL) UTF-8 ALL",
    "SORT (DATE) UTF-8 ALL",
    "SORT (REVERSE DATE) UTF-8 ALL",
    "SORT (FROM) UTF-8 ALL",
    "SORT (TO) UTF-8 ALL",
    "SORT (CC) UTF-8 ALL",
    "SORT (SIZE) UTF-8 ALL",
    "SORT (DISPLAYFROM) UTF-8 ALL",
    "SORT (REVERSE DISPLAYTO) UTF-8 ALL",
    "SORT (DISPLAYTO DISPLAYFROM) UTF-8 ALL",
    "SORT (SUBJECT REVERSE DATE) US-ASCII ALL",
    "SORT (FROM SUBJECT) UTF-8 2:8",
    "UID SORT (DATE) UTF-8 SUBJECT hello",
    "SORT (SUBJECT) UTF-8 NOT ALL",
    "SORT RETURN (MIN MAX COUNT) (DATE) UTF-8 ALL",
    "UID SORT RETURN (ALL) (SUBJECT) UTF-8 ALL",
    "SORT RETURN () (REVERSE ARRIVAL) UTF-8 ALL",
    "SORT RETURN (COUNT MIN MAX ALL) (FROM) UTF-8 NOT ALL",
    "SORT (SUBJECT) KOI8-R ALL",
    "SORT (SUBJECT) X-NO-SUCH-CHARSET ALL",
    "THREAD REFERENCES X-NO-SUCH-CHARSET ALL",
    "THREAD ORDEREDSUBJECT UTF-8 ALL",
    "THREAD REFERENCES UTF-8 ALL",
    "UID THREAD REFERENCES UTF-8 ALL",
    "THREAD REFERENCES UTF-8 2:5",
    "THREAD REFERENCES UTF-8 NOT ALL",
    "THREAD ORDEREDSUBJECT US-ASCII 6:*",
]

# Differences allowed, by command, with the reason. A command listed here
# may differ in any way; keep each reason an RFC citation (or, for a known
# Mailroom bug, the issue tracking it).
NIL_FOR_MISSING_PART = (
    "RFC 9051 §7.5.2: BODY[<section>] is an nstring, and no RFC says what a part "
    "the message does not have is; Mailroom answers NIL (there is no such content), "
    "Dovecot an empty string"
)
BADCHARSET_LIST = (
    "RFC 9051 §7.1: BADCHARSET is optionally followed by a parenthesized list of the "
    "charsets supported; Mailroom gives the list (UTF-8 US-ASCII), Dovecot none"
)
DOCUMENTED = {
    "SELECT INBOX": (
        "RFC 7162 §3.1.2.1: a server that keeps mod-sequences MUST send OK [HIGHESTMODSEQ] "
        "with every successful SELECT/EXAMINE; Dovecot sends it only once CONDSTORE is enabled"
    ),
    "EXAMINE a": "as SELECT INBOX (RFC 7162 §3.1.2.1, HIGHESTMODSEQ)",
    "EXAMINE INBOX": "as SELECT INBOX (RFC 7162 §3.1.2.1, HIGHESTMODSEQ)",
    "SELECT sorting": "as SELECT INBOX (RFC 7162 §3.1.2.1, HIGHESTMODSEQ)",
    "SORT (SUBJECT) KOI8-R ALL": (
        "RFC 5256 §3: US-ASCII and UTF-8 MUST be supported, other charsets MAY; "
        "Mailroom answers NO [BADCHARSET (UTF-8 US-ASCII)] (RFC 9051 §7.1), Dovecot "
        "converts KOI8-R"
    ),
    "SORT (SUBJECT) X-NO-SUCH-CHARSET ALL": BADCHARSET_LIST,
    "THREAD REFERENCES X-NO-SUCH-CHARSET ALL": BADCHARSET_LIST,
    "THREAD REFERENCES UTF-8 NOT ALL": (
        "RFC 5256 §4: thread-data = \"THREAD\" [SP 1*thread-list]; with no thread "
        "Mailroom sends `* THREAD`, Dovecot `* THREAD ` with a trailing space"
    ),
    "SELECT nonexistent": (
        "RFC 5530 §3: NONEXISTENT is the response code for a mailbox that does not exist; "
        "Dovecot's NO carries none"
    ),
    "FETCH 1:* (BODY.PEEK[2])": NIL_FOR_MISSING_PART,
    "FETCH 1:* (BODY.PEEK[3.HEADER])": NIL_FOR_MISSING_PART,
    "FETCH 1:* (BODY.PEEK[3.TEXT])": NIL_FOR_MISSING_PART,
    "FETCH 1:* (BINARY.PEEK[2])": NIL_FOR_MISSING_PART + " (RFC 3516: BINARY likewise)",
    "MULTIAPPEND bad flag": (
        "RFC 9051 §9: flag-keyword is an atom and '%' is an atom-special, so the command "
        "is a syntax error (BAD, §7.1.5); Dovecot answers NO [CANNOT]. Neither stores anything"
    ),
    "MULTIAPPEND bad date": (
        "RFC 9051 §2.3.3 and §9 date-time: 31-Feb-1994 is not a date; Mailroom refuses the "
        "command (BAD) and, RFC 3502 §6.3.11, stores none of the messages; Dovecot 2.3 "
        "stores both, the second with INTERNALDATE 19-Jan-2038 (it is the last command, "
        "so later comparisons are not affected)"
    ),
}

# Differences allowed everywhere, as a normalisation applied to both sides
# (printed on every run, so that none is forgotten): (what, reason, pattern,
# replacement).
KNOWN = [
    (
        "MAILBOXID in CREATE's OK",
        "RFC 8474 §4: an OBJECTID server returns the new mailbox's MAILBOXID with CREATE; "
        "Dovecot 2.3 does not implement OBJECTID",
        r"^TAG OK \[MAILBOXID \([^)]*\)\]$",
        "TAG OK",
    ),
    (
        "MAILBOXID at SELECT/EXAMINE",
        "RFC 8474 §4: an OBJECTID server sends OK [MAILBOXID] with SELECT and EXAMINE; "
        "Dovecot 2.3 does not implement OBJECTID",
        r"^\* OK \[MAILBOXID \([^)]*\)\]$",
        "",
    ),
]

# METADATA (RFC 5464), with --metadata: Dovecot keeps entries in a
# mail_attribute_dict file. Server /shared entries are left out: Dovecot
# lets no user set them (NO [CANNOT]), Mailroom keeps them per account.
METADATA_COMMANDS = [
    "CREATE Meta",
    'SETMETADATA INBOX (/private/comment "My own comment" /shared/comment "Shared")',
    "GETMETADATA INBOX /private/comment",
    "GETMETADATA INBOX (/shared/comment /private/comment)",
    "GETMETADATA INBOX /private/nothing",
    'SETMETADATA INBOX (/private/filters/a "1" /private/filters/a/deep "2" /private/filters/b "333")',
    "GETMETADATA (DEPTH 1) INBOX /private/filters",
    "GETMETADATA (DEPTH infinity) INBOX /private/filters",
    "GETMETADATA (MAXSIZE 2 DEPTH 1) INBOX /private/filters",
    "SETMETADATA INBOX (/shared/comment NIL)",
    "GETMETADATA INBOX /shared/comment",
    'SETMETADATA "" (/private/comment "server")',
    'GETMETADATA "" /private/comment',
    "GETMETADATA Nonexistent /private/comment",
    'SETMETADATA INBOX (/private/ "x")',
    'SETMETADATA INBOX (/private/a*b "x")',
    'SETMETADATA Meta (/private/comment "m")',
    "RENAME Meta Meta2",
    "GETMETADATA Meta2 /private/comment",
    "DELETE Meta2",
    "CREATE Meta2",
    "GETMETADATA Meta2 /private/comment",
]
DOCUMENTED["GETMETADATA Nonexistent /private/comment"] = (
    "RFC 5530 §3: NONEXISTENT is the response code for a mailbox that does not exist; "
    "Dovecot's NO carries none"
)

# NOTIFY (RFC 5465), with --notify: what one connection can see of it (the
# pushes between sessions are tested in tests/tests/imap_notify.rs).
NOTIFY_COMMANDS = [
    "CREATE notified",
    "CREATE notified/sub",
    "NOTIFY SET STATUS (SUBTREE notified (MessageNew MessageExpunge)) "
    "(MAILBOXES (nosuch) (MessageNew MessageExpunge))",
    "NOTIFY SET (MAILBOXES notified (MessageNew MessageExpunge)) "
    "(SELECTED-DELAYED (MessageNew MessageExpunge FlagChange))",
    "NOTIFY SET (PERSONAL (MailboxName SubscriptionChange))",
    "CREATE notified/own",
    "SUBSCRIBE notified/own",
    "NOTIFY SET STATUS (selected MessageNew (uid body.peek[header.fields (from to subject)]) "
    "MessageExpunge) (subtree Lists MessageNew)",
    "NOTIFY SET (PERSONAL (MessageNew))",
    "NOTIFY SET (SELECTED (MailboxName))",
    "NOTIFY SET (PERSONAL (MessageNew MessageExpunge AnnotationChange))",
    "NOTIFY SET (PERSONAL (X-Whatever))",
    "NOTIFY NONE",
]
DOCUMENTED["NOTIFY SET (PERSONAL (MessageNew))"] = (
    "RFC 5465 §5: 'If one of MessageNew or MessageExpunge is specified, then both events "
    "MUST be specified. Otherwise, the server MUST respond with the tagged BAD response'; "
    "Dovecot accepts it"
)
DOCUMENTED["NOTIFY SET (SELECTED (MailboxName))"] = (
    "RFC 5465 §6.1: 'It is an error to specify other types of events with either the "
    "SELECTED or the SELECTED-DELAYED selector'; Dovecot accepts it"
)
DOCUMENTED["NOTIFY SET (PERSONAL (MessageNew MessageExpunge AnnotationChange))"] = (
    "RFC 5465 §8: unsupported-events-code = \"BADEVENT\" SP \"(\" event-name *(SP event-name) "
    "\")\", and §3.1: it 'MUST list names of all events supported by the server'; Dovecot "
    "lists the unsupported one, without parentheses"
)
DOCUMENTED["NOTIFY SET (PERSONAL (X-Whatever))"] = (
    "RFC 5465 §8: event-ext = atom (\"For future extensions\"), so an unknown event is valid "
    "syntax, refused as unsupported with NO [BADEVENT] (§3.1 'MUST refuse the command with a "
    "tagged NO response (not a BAD)'); Dovecot answers BAD"
)

# ACL (RFC 4314), with --acl (Dovecot with its acl and imap_acl plugins,
# rights in a vfile per mailbox). Rights are compared as sets.
ACL_COMMANDS = [
    "CREATE acl",
    "MYRIGHTS INBOX",
    "MYRIGHTS acl",
    "GETACL acl",
    "LISTRIGHTS acl diff@example.test",
    "SETACL acl other@example.test lr",
    "DELETEACL acl other@example.test",
    "MYRIGHTS nosuch",
    "GETACL nosuch",
    "MYRIGHTS",
]
DOCUMENTED["LISTRIGHTS acl diff@example.test"] = (
    "RFC 4314 §3.7: the first string is 'the set of rights the identifier will always be "
    "granted'; a Mailroom mailbox is its owner's alone, with every right for good, so all "
    "are required and none optional; Dovecot, whose ACLs can be changed, lists none "
    "required and each right as optional"
)
DOCUMENTED["SETACL acl other@example.test lr"] = (
    "RFC 4314 §3.1: 'NO - setacl failure: can't set acl'; Mailroom does not share mailboxes "
    "(NO [NOPERM]); Dovecot does"
)
DOCUMENTED["DELETEACL acl other@example.test"] = (
    "RFC 4314 §3.2: 'NO - deleteacl failure: can't delete acl', as SETACL"
)
DOCUMENTED["MYRIGHTS nosuch"] = (
    "RFC 5530 §3: NONEXISTENT is the response code for a mailbox that does not exist; "
    "Dovecot answers rights for a mailbox that is not there"
)

# ---------------------------------------------------------------------------
# A raw IMAP connection that reads literals.
# ---------------------------------------------------------------------------


class Conn:
    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=15)
        self.buf = b""
        self.n = 0
        self.greeting = self.line()

    def line(self):
        """One response line with its literals inlined."""
        out = b""
        while True:
            while b"\r\n" not in self.buf:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise EOFError("connection closed")
                self.buf += chunk
            line, self.buf = self.buf.split(b"\r\n", 1)
            out += line
            m = re.search(rb"\{(\d+)\+?\}$", line)
            if not m:
                return out
            size = int(m.group(1))
            while len(self.buf) < size:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise EOFError("connection closed in a literal")
                self.buf += chunk
            out += b"\r\n" + self.buf[:size]
            self.buf = self.buf[size:]

    def multiappend(self, parts):
        """`APPEND mailbox args {n+}… args {m+}…`: `parts` is the mailbox
        with the first message's arguments, then messages (bytes, sent as
        LITERAL+ literals) and the arguments of the next (text)."""
        self.n += 1
        tag = f"d{self.n}".encode()
        out = tag + b" APPEND " + parts[0].encode()
        for part in parts[1:]:
            if isinstance(part, bytes):
                out += f" {{{len(part)}+}}\r\n".encode() + part
            elif part:
                out += b" " + part.encode()
        self.sock.sendall(out + b"\r\n")
        lines = []
        while True:
            line = self.line()
            lines.append(line)
            if line.startswith(tag + b" "):
                return lines

    def command(self, text, literal=None):
        self.n += 1
        tag = f"d{self.n}".encode()
        if literal is None:
            self.sock.sendall(tag + b" " + text.encode() + b"\r\n")
        else:
            self.sock.sendall(tag + b" " + text.encode() + f" {{{len(literal)}+}}\r\n".encode())
            self.sock.sendall(literal + b"\r\n")
        lines = []
        while True:
            line = self.line()
            if line.startswith(b"+"):
                continue
            lines.append(line)
            if line.startswith(tag + b" "):
                return lines


class Deflated:
    """A socket seen through RFC 4978 compression: raw deflate both ways,
    each write ended with a SYNC_FLUSH."""

    def __init__(self, sock):
        self.sock = sock
        self.z = zlib.compressobj(wbits=-15)
        self.d = zlib.decompressobj(wbits=-15)

    def sendall(self, data):
        self.sock.sendall(self.z.compress(data) + self.z.flush(zlib.Z_SYNC_FLUSH))

    def recv(self, n):
        while True:
            chunk = self.sock.recv(n)
            if not chunk:
                return b""
            out = self.d.decompress(chunk)
            if out:
                return out


def login(port, user, password, compress=False):
    c = Conn(port)
    c.command(f'LOGIN "{user}" "{password}"')
    if compress:
        done = c.command("COMPRESS DEFLATE")
        if not done[-1].startswith(f"d{c.n} OK".encode()) or c.buf:
            print(f"COMPRESS DEFLATE failed on port {port}: {done}")
            sys.exit(1)
        c.sock = Deflated(c.sock)
    return c


# ---------------------------------------------------------------------------
# Normalising.
# ---------------------------------------------------------------------------


def normalise_metadata(line):
    """RFC 5464 §4.4.1: values are nstrings (quoted or literal, the same
    octets), the mailbox an astring; entries come in no set order."""
    line = re.sub(
        r"\{(\d+)\}\r\n",
        lambda m: "\x00LIT%s\x00" % m.group(1),
        line,
    )
    # Fold each literal marker and its octets into a quoted string.
    while "\x00LIT" in line:
        i = line.index("\x00LIT")
        j = line.index("\x00", i + 1)
        n = int(line[i + 4 : j])
        line = line[:i] + '"' + line[j + 1 : j + 1 + n] + '"' + line[j + 1 + n :]
    m = re.match(r'^\* METADATA ("[^"]*"|\S+) \((.*)\)$', line, re.S)
    if not m:
        return line
    mailbox = m.group(1)
    if mailbox != '""':
        mailbox = mailbox.strip('"')
    pairs = re.findall(r'(\S+) ("(?:[^"\\]|\\.)*"|NIL)', m.group(2))
    return f"* METADATA {mailbox} (" + " ".join(f"{k} {v}" for k, v in sorted(pairs)) + ")"


def normalise_acl(line):
    """RFC 4314 §3.6-3.8: mailbox and identifier are astrings (quoted or
    not, the same), and a rights string is a set (letters in any order)."""
    m = re.match(r"^\* (MYRIGHTS|ACL|LISTRIGHTS) (.*)$", line)
    if not m:
        return line
    words = [w.strip('"') for w in m.group(2).split(" ")]
    rights_from = {"MYRIGHTS": 1, "ACL": 2, "LISTRIGHTS": 2}[m.group(1)]
    words = words[:rights_from] + ["".join(sorted(w)) for w in words[rights_from:]]
    return f"* {m.group(1)} " + " ".join(words)


def normalise(lines):
    out = []
    for raw in lines:
        line = raw.decode("utf-8", "replace")
        if line.startswith("* METADATA "):
            line = normalise_metadata(line)
        line = normalise_acl(line)
        line = re.sub(r"^d\d+ ", "TAG ", line)
        if line.startswith("* CAPABILITY") or "[CAPABILITY " in line:
            continue
        line = re.sub(r"UIDVALIDITY \d+", "UIDVALIDITY n", line)
        line = re.sub(r"(HIGHESTMODSEQ|MODSEQ) \(?\d+\)?", r"\1 n", line)
        line = re.sub(r"(NOMODSEQ)", "HIGHESTMODSEQ n", line)
        # Case-insensitive by the RFC (9051 §6.4.5 header-fld-name; §7.5.2
        # media types and subtypes are case-insensitive strings): compared
        # in one case.
        line = re.sub(
            r"HEADER\.FIELDS(\.NOT)? \(([^)]*)\)",
            lambda m: f"HEADER.FIELDS{m.group(1) or ''} ({m.group(2).upper()})",
            line,
        )
        # RFC 9051 §7.5.2: BINARY is "an <nstring> or <literal8>"; either
        # literal form carries the same octets.
        line = line.replace("~{", "{")
        # A mailbox name is an astring: quoted or atom, the same name.
        if line.startswith(("* LIST ", "* LSUB ")):
            line = re.sub(r'"([A-Za-z0-9/._-]+)"$', r"\1", line)
        line = re.sub(r'^\* STATUS "([A-Za-z0-9/._-]+)"', r"* STATUS \1", line)
        # Dovecot's advisory code for a STATUS of the selected mailbox
        # (RFC 5530 §3 CLIENTBUG: "the server has detected a client bug").
        line = line.replace(" [CLIENTBUG]", "")
        line = re.sub(r"\[COPYUID \d+ ", "[COPYUID n ", line)
        line = re.sub(r"\[APPENDUID \d+ ", "[APPENDUID n ", line)
        line = re.sub(r'SAVEDATE "[^"]*"', 'SAVEDATE "date"', line)
        if re.match(r"^\* \d+ FETCH \((BODY|BODYSTRUCTURE) \(", line):
            line = re.sub(r'"([A-Za-z0-9.+-]+)"', lambda m: '"' + m.group(1).lower() + '"', line)
        # Status responses: keep the status and the response code only.
        m = re.match(r"^(TAG|\*) (OK|NO|BAD|BYE|PREAUTH)( \[[^\]]*\])?.*$", line, re.S)
        if m:
            line = f"{m.group(1)} {m.group(2)}{m.group(3) or ''}"
            # Response codes that are the servers' own numbers or texts.
            line = re.sub(r"\[(UIDNEXT|UNSEEN) \d+\]", r"[\1 n]", line) if False else line
        out.append(line)
    for _, _, pattern, replacement in KNOWN:
        out = [re.sub(pattern, replacement, l) for l in out]
        out = [l.replace("( ", "(") for l in out if l != ""]
    # Untagged OK lines carrying server-specific codes may come in any order.
    head = sorted(l for l in out if l.startswith("* OK"))
    rest = [l for l in out if not l.startswith("* OK")]
    return head + rest


# ---------------------------------------------------------------------------
# Dovecot.
# ---------------------------------------------------------------------------


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Dovecot:
    def __init__(self, user, password, acl=False):
        if not shutil.which("dovecot") or not os.path.exists("/usr/lib/dovecot/imap"):
            print("dovecot is not installed (apt-get install dovecot-imapd; .ci/run installs it)")
            sys.exit(2)
        nobody = pwd.getpwnam("nobody")
        d = self.dir = tempfile.mkdtemp(prefix="mailroom-imap-diff-")
        os.chmod(d, 0o755)
        self.port = free_port()
        home = f"{d}/home"
        os.makedirs(home)
        os.chown(home, nobody.pw_uid, nobody.pw_gid)
        with open(f"{d}/users", "w") as f:
            f.write(f"{user}:{{PLAIN}}{password}:{nobody.pw_uid}:{nobody.pw_gid}::{home}::\n")
        conf = f"""instance_name = mailroom-imap-diff
base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
listen = 127.0.0.1
protocols = imap
ssl = no
disable_plaintext_auth = no
mail_attribute_dict = file:%h/dovecot-attributes
first_valid_uid = 1
mail_location = maildir:~/Maildir
mail_plugins = {"acl" if acl else ""}
protocol imap {{
  mail_plugins = $mail_plugins imap_zlib{" imap_acl" if acl else ""}
  imap_metadata = yes
}}
plugin {{
  acl = vfile
}}
namespace inbox {{
  inbox = yes
  separator = /
}}
passdb {{
  driver = passwd-file
  args = {d}/users
}}
userdb {{
  driver = passwd-file
  args = {d}/users
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
"""
        self.conf = f"{d}/dovecot.conf"
        with open(self.conf, "w") as f:
            f.write(conf)
        subprocess.run(["dovecot", "-c", self.conf], check=True)
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port), 1).close()
                return
            except OSError:
                time.sleep(0.1)
        print(open(f"{d}/dovecot.log").read())
        print("dovecot did not start")
        sys.exit(2)

    def stop(self):
        subprocess.run(["doveadm", "-c", self.conf, "stop"], check=False)
        shutil.rmtree(self.dir, ignore_errors=True)


# ---------------------------------------------------------------------------


def run_session(port, user, password, compress=False, metadata=False, extra=()):
    c = login(port, user, password, compress)
    # The same state on both: fixtures appended in order with their flags
    # and dates, the folder separator the same ("/").
    for message, flags, date in FIXTURES:
        c.command(f'APPEND INBOX {flags} "{date}"', literal=message)
    results = []
    if compress:
        results.append(("COMPRESS DEFLATE", normalise(c.command("COMPRESS DEFLATE"))))
    for cmd in COMMANDS + (METADATA_COMMANDS if metadata else []):
        if isinstance(cmd, tuple):
            label, parts = cmd
            results.append((label, normalise(c.multiappend(parts))))
        else:
            results.append((cmd, normalise(c.command(cmd))))
    c.command("CREATE sorting")
    for message, date in SORT_FIXTURES:
        c.command(f'APPEND sorting () "{date}"', literal=message)
    for cmd in SORT_COMMANDS:
        results.append((cmd, normalise(c.command(cmd))))
    for cmd in extra:
        results.append((cmd, normalise(c.command(cmd))))
    c.command("LOGOUT")
    return results


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--compress", action="store_true")
    p.add_argument("--metadata", action="store_true")
    p.add_argument("--notify", action="store_true")
    p.add_argument("--acl", action="store_true")
    args = p.parse_args()
    extra = (NOTIFY_COMMANDS if args.notify else []) + (ACL_COMMANDS if args.acl else [])
    dovecot = Dovecot(args.user, args.password, acl=args.acl)
    try:
        caps = login(dovecot.port, args.user, args.password).command("CAPABILITY")
        dovecot_caps = [l.decode() for l in caps if l.startswith(b"* CAPABILITY")]
        theirs = run_session(
            dovecot.port, args.user, args.password, args.compress, args.metadata, extra
        )
    finally:
        dovecot.stop()
    ours = run_session(args.port, args.user, args.password, args.compress, args.metadata, extra)
    for what, why, _, _ in KNOWN:
        print(f"known difference, not compared: {what}: {why}")
    undocumented = documented = 0
    print("dovecot capabilities:", dovecot_caps[0] if dovecot_caps else "?")
    for (cmd, a), (_, b) in zip(ours, theirs):
        if a == b:
            continue
        why = DOCUMENTED.get(cmd)
        if why:
            documented += 1
            print(f"documented difference: {cmd}: {why}")
            continue
        undocumented += 1
        print(f"DIFFERENCE in {cmd}")
        for line in a:
            print(f"  mailroom: {line[:400]}")
        for line in b:
            print(f"  dovecot:  {line[:400]}")
    if args.compress:
        print(f"compressed: {ours[0][0]}: {ours[0][1]} / dovecot {theirs[0][1]}")
    print(f"{len(ours)} commands, {documented} documented differences, {undocumented} undocumented")
    sys.exit(1 if undocumented else 0)


if __name__ == "__main__":
    main()
