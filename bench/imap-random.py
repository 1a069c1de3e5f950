#!/usr/bin/env python3
"""Benchmark: IMAP operations per second under a random mix of commands over
realistic mail, Mailroom on PostgreSQL and Mailroom on its embedded SQLite
store (the default: no store.url) next to Dovecot's imapd, in the same run,
with the same mailbox contents. The fixed-round benchmark is
bench/imap-mixed.py; this script reuses its client, servers and CPU
accounting (imported with importlib: the file name has a dash).

Corpus
  IMAP_RANDOM_CORPUS (40) distinct messages, built deterministically (seed
  1313), each put into every user's INBOX over IMAP APPEND in the same order,
  so all accounts hold identical contents (as mail sent to many people does).
  Every message has From (one of 5 senders), To, Subject (one of 6 topics and
  a number), Date, Message-ID (<corpus-N@bench.example>, which the client
  uses to know which message a UID holds) and MIME-Version. Kinds and sizes
  (whole message, headers included):
    45%  text/plain, 7bit, 1-8 KB (uniform)
    30%  multipart/alternative: text/plain + text/html, 4-40 KB (uniform)
    25%  multipart/mixed with 1 or 2 base64 attachments of random bytes
         (application/pdf, image/jpeg, application/octet-stream), the text
         part being text/plain or (every other one) a nested
         multipart/alternative; 20-200 KB (log-uniform)
  With 40 messages: 18 plain, 12 alternative, 10 mixed; the run prints the
  smallest, median, mean and largest size and the mailbox's total.

Workload
  IMAP_RANDOM_USERS (100) users, IMAP_RANDOM_CLIENTS (10) client processes;
  client i owns users/clients users and keeps one session per user logged in
  with INBOX selected for the whole measurement (nobody logs out; no two
  clients share a mailbox). Each client repeatedly picks one of its sessions
  at random and one command at random with these probabilities (every IMAP
  command sent is one operation; UIDs are picked at random among the
  mailbox's messages):
    14%  UID FETCH <1-10 random UIDs> (UID BODYSTRUCTURE)
    12%  UID FETCH <range of 10 UIDs> (UID FLAGS ENVELOPE)
    12%  UID FETCH <range of 10 UIDs> (UID BODY.PEEK[HEADER.FIELDS (From To Subject Date)])
    10%  UID FETCH <1 UID> (UID BODY.PEEK[]<0.2048>)
    10%  UID FETCH <1 UID> (UID BODY.PEEK[])
     8%  UID SEARCH, one of UNSEEN, FROM "<sender>", SUBJECT "<topic>"
     8%  UID STORE <1 UID> +FLAGS or -FLAGS (\\Seen) or (\\Flagged)
     4%  UID STORE <1 UID> +FLAGS or -FLAGS ($Label1)
     4%  UID COPY <1 UID> Archive
     4%  APPEND INBOX of a random corpus message (LITERAL+)
     4%  EXPUNGE of one message: UID STORE +FLAGS.SILENT (\\Deleted), then
         UID EXPUNGE of it (two operations)
     4%  STATUS Archive (MESSAGES UIDNEXT UNSEEN)
     3%  LIST "" "*"
     3%  NOOP
  (APPEND turns into EXPUNGE above twice the corpus size and EXPUNGE into
  APPEND under half of it, so mailboxes stay in that range.)

Validation
  The client knows every mailbox's UIDs, which corpus message each holds and
  its flags, and checks every answer: tagged OK; FETCH answers exactly the
  UIDs asked for that exist; BODYSTRUCTURE names every leaf part's type,
  subtype, encoding and exact octet count (an empty structure fails); the
  ENVELOPE carries the Date, Subject and From address; HEADER.FIELDS is
  byte for byte the 4 header lines and CRLF; partial and whole bodies are
  byte for byte the message; FLAGS (from FETCH and STORE) match what was
  stored (\\Recent ignored); a keyword in FLAGS must have been announced in
  a `* FLAGS` response first (RFC 9051 §7.3.5; counted once per session and
  keyword); SEARCH results are exactly
  the expected UIDs; UID EXPUNGE answers `* n EXPUNGE` with the right
  sequence number; APPEND answers APPENDUID above every UID; STATUS MESSAGES
  of Archive matches the COPYs; LIST shows INBOX and Archive. A wrong or
  failed answer is counted as a protocol error (printed, the run goes on
  after re-reading that mailbox's state); the count must be 0.

Measurement
  As in imap-mixed.py: the three servers are set up first and stay up; then
  IMAP_RANDOM_ROUNDS (3) measurements of IMAP_RANDOM_SECS (20) seconds each
  alternate Mailroom-PostgreSQL, Dovecot, Mailroom-SQLite, ..., so that
  other work on the machine falls on all alike. Each prints ops/s, the CPU
  seconds of the server (Mailroom's with PostgreSQL's backends; on SQLite
  the store runs inside the server process), the clients and the rest of
  the machine, per-command p50/p99 latency. The summary gives the best of
  each, the ratio of each Mailroom measurement to the Dovecot measurement
  of the same round, and server CPU per operation against Dovecot's (the
  steadiest figure on a busy machine).

Needs what imap-mixed.py needs (PostgreSQL on 127.0.0.1:5432, cargo,
dovecot-core + dovecot-imapd; run as root).
Usage: CARGO_TARGET_DIR=/work/target-bench nice -n 19 python3 bench/imap-random.py
Knobs: IMAP_RANDOM_USERS, IMAP_RANDOM_CLIENTS, IMAP_RANDOM_SECS,
IMAP_RANDOM_ROUNDS, IMAP_RANDOM_CORPUS, IMAP_RANDOM_SERVERS (comma list of
mailroom-pg, dovecot, mailroom-sqlite: the default is all three), and
imap-mixed.py's IMAP_BENCH_STORE_PARAMS.
"""
import base64, email.utils, datetime, importlib.util, os, random, re, statistics, subprocess, sys, threading, time

_spec = importlib.util.spec_from_file_location("imap_mixed", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                                          "imap-mixed.py"))
mixed = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mixed)
Imap, Failed, quote, log = mixed.Imap, mixed.Failed, mixed.quote, mixed.log

USERS = int(os.environ.get("IMAP_RANDOM_USERS", "100"))
CLIENTS = int(os.environ.get("IMAP_RANDOM_CLIENTS", "10"))
SECS = float(os.environ.get("IMAP_RANDOM_SECS", "20"))
ROUNDS = int(os.environ.get("IMAP_RANDOM_ROUNDS", "3"))
CORPUS_SIZE = int(os.environ.get("IMAP_RANDOM_CORPUS", "40"))
SERVERS = os.environ.get("IMAP_RANDOM_SERVERS", "mailroom-pg,dovecot,mailroom-sqlite").split(",")
mixed.USERS = USERS  # the servers create users() = user0..user{USERS-1}@example.test

# ------------------------------------------------------------------ corpus

SENDERS = [("Alice Martin", "alice.martin", "north.example"), ("Bob Chen", "bob.chen", "east.example"),
           ("Carol Diaz", "carol.diaz", "south.example"), ("Dave Okafor", "dave.okafor", "west.example"),
           ("Erin Novak", "erin.novak", "north.example")]
TOPICS = ["invoice", "meeting", "quarterly report", "holiday", "release", "budget"]
SEARCH_TOPICS = ["invoice", "meeting", "report", "holiday", "release", "budget"]
WORDS = ("the of and to in is that for on with as by at from this be are an it or was which not have all "
         "mailbox server message client storage index folder network protocol header attachment archive "
         "schedule customer project delivery contract agenda summary draft notes figures plan").split()
ATTACHMENTS = [("APPLICATION", "PDF", "pdf"), ("IMAGE", "JPEG", "jpg"), ("APPLICATION", "OCTET-STREAM", "bin")]
HEADER_FIELDS = ("from", "to", "subject", "date")


def text_lines(rng, size):
    """7bit text of exactly `size` bytes (size >= 2), CRLF-terminated lines."""
    out, n = [], 0
    while n < size:
        line = " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 12))).capitalize() + ".\r\n"
        out.append(line); n += len(line)
    s = "".join(out)[:size - 2]
    return s.rstrip("\r") + "." * (size - 2 - len(s.rstrip("\r"))) + "\r\n"


def html_of(rng, size):
    body = text_lines(rng, max(40, size - 60)).replace("\r\n", "<br>\r\n")
    return "<html><body><p>\r\n" + body + "</p></body></html>\r\n"


class Message:
    def __init__(self, i, kind, raw, leaves, sender, subject, date):
        self.i, self.kind, self.raw, self.leaves = i, kind, raw, leaves
        self.sender, self.subject, self.date = sender, subject, date
        head = raw[:raw.index(b"\r\n\r\n") + 2].decode()
        lines = re.split(r"\r\n(?![ \t])", head)
        self.header_fields = ("".join(l + "\r\n" for l in lines if l.split(":", 1)[0].lower() in HEADER_FIELDS)
                              + "\r\n").encode()


def build_corpus(n):
    rng = random.Random(1313)
    counts = {"plain": round(n * .45), "alternative": round(n * .30)}
    kinds = ["plain"] * counts["plain"] + ["alternative"] * counts["alternative"]
    kinds += ["mixed"] * (n - len(kinds))
    rng.shuffle(kinds)
    corpus, mixed_seen = [], 0
    for i, kind in enumerate(kinds):
        name, local, domain = SENDERS[i % len(SENDERS)]
        topic = TOPICS[rng.randrange(len(TOPICS))]
        subject = f"{topic.capitalize()} follow-up, item {i}"
        date = email.utils.format_datetime(datetime.datetime(2026, 11, 1 + i % 28, 8 + i % 10, i % 60,
                                                             tzinfo=datetime.timezone.utc))
        head = (f"From: {name} <{local}@{domain}>\r\nTo: Mailroom Bench <bench@example.test>\r\n"
                f"Subject: {subject}\r\nDate: {date}\r\nMessage-ID: <corpus-{i}@bench.example>\r\n"
                "MIME-Version: 1.0\r\n")
        if kind == "plain":
            target = rng.randint(1000, 8000)
            head += "Content-Type: text/plain; charset=us-ascii\r\nContent-Transfer-Encoding: 7bit\r\n\r\n"
            body = text_lines(rng, max(100, target - len(head)))
            raw, leaves = head + body, [("TEXT", "PLAIN", "7BIT", len(body))]
        else:
            def alternative(size, b):
                t, h = text_lines(rng, max(100, size // 3)), html_of(rng, max(200, size - size // 3))
                part = (f"--{b}\r\nContent-Type: text/plain; charset=us-ascii\r\nContent-Transfer-Encoding: 7bit"
                        f"\r\n\r\n{t}\r\n--{b}\r\nContent-Type: text/html; charset=us-ascii\r\n"
                        f"Content-Transfer-Encoding: 7bit\r\n\r\n{h}\r\n--{b}--\r\n")
                return part, [("TEXT", "PLAIN", "7BIT", len(t)), ("TEXT", "HTML", "7BIT", len(h))]
            if kind == "alternative":
                target = rng.randint(4000, 40000)
                b = f"alt-{i}-boundary"
                head += f'Content-Type: multipart/alternative; boundary="{b}"\r\n\r\n'
                part, leaves = alternative(target - len(head) - 400, b)
                raw = head + "This is a multi-part message in MIME format.\r\n\r\n" + part
            else:
                target = int(20000 * 10 ** rng.random())  # log-uniform 20-200 KB
                b = f"mix-{i}-boundary"
                head += f'Content-Type: multipart/mixed; boundary="{b}"\r\n\r\n'
                text_size = rng.randint(600, 6000)
                if mixed_seen % 2:
                    inner, leaves = alternative(text_size, f"alt-{i}-inner")
                    first = f'Content-Type: multipart/alternative; boundary="alt-{i}-inner"\r\n\r\n' + inner
                    # the nested multipart's body ends before the CRLF that precedes the outer boundary
                    first = first[:-2]
                else:
                    t = text_lines(rng, text_size)
                    first = f"Content-Type: text/plain; charset=us-ascii\r\nContent-Transfer-Encoding: 7bit\r\n\r\n{t}"
                    first = first[:-2]
                    leaves = [("TEXT", "PLAIN", "7BIT", len(t) - 2)]
                mixed_seen += 1
                n_att = 1 + (i % 2)
                raw = head + f"--{b}\r\n{first}\r\n"
                budget = max(800, (target - len(raw)) * 3 // 4 // n_att)
                for k in range(n_att):
                    typ, sub, ext = ATTACHMENTS[(i + k) % len(ATTACHMENTS)]
                    data = base64.b64encode(rng.randbytes(budget)).decode()
                    enc = "".join(data[j:j + 76] + "\r\n" for j in range(0, len(data), 76))[:-2]
                    raw += (f"--{b}\r\nContent-Type: {typ.lower()}/{sub.lower()}; name=\"file-{i}-{k}.{ext}\"\r\n"
                            f"Content-Disposition: attachment; filename=\"file-{i}-{k}.{ext}\"\r\n"
                            f"Content-Transfer-Encoding: base64\r\n\r\n{enc}\r\n")
                    leaves.append((typ, sub, "BASE64", len(enc)))
                raw += f"--{b}--\r\n"
        corpus.append(Message(i, kind, raw.encode(), leaves, (name, local, domain), subject, date))
    return corpus


CORPUS = build_corpus(CORPUS_SIZE)
MSGID = re.compile(rb"<corpus-(\d+)@bench\.example>")


def fill(port):
    """Creates Archive and APPENDs the corpus to every INBOX, 10 users at a time."""
    errors = []

    def work(us):
        try:
            for u in us:
                c = Imap(port)
                c.login(u)
                names = b"".join(l for l, _ in c.cmd(b'LIST "" "*"'))
                if b"Archive" not in names:
                    c.cmd(b"CREATE Archive")
                for m in CORPUS:
                    c.cmd(b"APPEND INBOX", m.raw)
                c.cmd(b"LOGOUT")
        except Exception as e:
            errors.append(e)
    ts = [threading.Thread(target=work, args=(mixed.users()[i::10],)) for i in range(10)]
    for t in ts: t.start()
    for t in ts: t.join()
    if errors:
        raise errors[0]


# ----------------------------------------------------------------- sessions

class Wrong(Exception):
    """A wrong answer (as opposed to a failed command, Failed)."""


UIDRE = re.compile(rb"\bUID (\d+)")
FLAGSRE = re.compile(rb"\bFLAGS \(([^)]*)\)")
APPENDUID = re.compile(rb"\[APPENDUID \d+ (\d+)\]")
EXPUNGERE = re.compile(rb"^\* (\d+) EXPUNGE$")


def flagset(b):
    """Flags as a set, system flags spelled \\Seen etc. whatever their case, \\Recent left out."""
    out = {("\\" + f[1:].decode().capitalize()) if f.startswith(b"\\") else f.decode() for f in b.split()}
    return out - {"\\Recent"}


class Session:
    """One kept-open session with INBOX selected, and the truth about it."""

    def __init__(self, port, user):
        self.port, self.user = port, user
        self.open()

    def open(self):
        self.c = Imap(self.port)
        self.c.login(self.user)
        self.announced, self.unannounced = set(), []
        self.run(b"SELECT INBOX")
        self.sync()

    def run(self, text, literal=None):
        """Runs a command, keeps track of `* FLAGS` announcements and checks
        that every keyword in a FETCH was announced first."""
        out = self.c.cmd(text, literal)
        for line, _ in out:
            if line.startswith(b"* FLAGS ("):
                self.announced |= {f.decode() for f in line[9:line.index(b")")].split() if not f.startswith(b"\\")}
            elif b" FETCH (" in line:
                m = FLAGSRE.search(line)
                if m:
                    new = {f.decode() for f in m.group(1).split() if not f.startswith(b"\\")} - self.announced
                    if new:  # counted once per session and keyword
                        self.announced |= new
                        self.unannounced.append(f"keyword {sorted(new)} in a FETCH before any * FLAGS "
                                                f"listing it: {line[:160]!r}")
        return out

    def sync(self):
        """Reads the mailbox's UIDs, their corpus messages and flags, and Archive's count."""
        self.uids, self.msg, self.flags = [], {}, {}
        for line, lits in self.run(b"UID FETCH 1:* (UID FLAGS BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])"):
            if b" FETCH (" in line:
                uid = int(UIDRE.search(line).group(1))
                self.uids.append(uid)
                self.msg[uid] = int(MSGID.search(lits[0]).group(1))
                self.flags[uid] = flagset(FLAGSRE.search(line).group(1))
        self.uids.sort()
        self.archive = self.status_archive(self.run(b"STATUS Archive (MESSAGES)"))

    @staticmethod
    def status_archive(out):
        for line, _ in out:
            m = re.search(rb"^\* STATUS \"?Archive\"? \(.*\bMESSAGES (\d+)", line)
            if m:
                return int(m.group(1))
        raise Wrong(f"no STATUS MESSAGES for Archive in {out[:2]!r}")


def fetched(out, want):
    """{uid: (line, literals)} of the FETCH responses; exactly the UIDs `want`."""
    got = {}
    for line, lits in out:
        if b" FETCH (" in line:
            m = UIDRE.search(line)
            if not m:
                raise Wrong(f"FETCH response without UID: {line[:200]!r}")
            got[int(m.group(1))] = (line, lits)
    if set(got) != set(want):
        raise Wrong(f"FETCH answered UIDs {sorted(got)}, expected {sorted(want)}")
    return got


def uidset(uids):
    return b",".join(b"%d" % u for u in uids)


# --------------------------------------------------------------- commands
# Each takes (session, rng, timed) and validates; timed(name, text, literal)
# runs one command, records its latency and returns its untagged responses.

def c_bodystructure(s, rng, timed):
    pick = sorted(rng.sample(s.uids, min(len(s.uids), rng.randint(1, 10))))
    got = fetched(timed("FETCH BODYSTRUCTURE", b"UID FETCH " + uidset(pick) + b" (UID BODYSTRUCTURE)"), pick)
    for uid, (line, lits) in got.items():
        m = CORPUS[s.msg[uid]]
        text = (line + b"".join(lits)).upper()
        i = text.find(b"BODYSTRUCTURE (")
        if i < 0:
            raise Wrong(f"UID {uid}: no BODYSTRUCTURE in {line[:200]!r}")
        bs = text[i:]
        for typ, sub, enc, size in m.leaves:
            if b'"%s" "%s"' % (typ.encode(), sub.encode()) not in bs or b'"%s" %d ' % (enc.encode(), size) not in bs:
                raise Wrong(f"UID {uid} (corpus {m.i}, {m.kind}, {len(m.raw)} bytes): BODYSTRUCTURE lacks "
                            f"{typ}/{sub} {enc} {size}: {line[:300]!r}")
        if m.kind != "plain" and (b'"%s"' % m.kind.upper().encode()) not in bs:
            raise Wrong(f"UID {uid} (corpus {m.i}): BODYSTRUCTURE is not multipart/{m.kind}: {line[:300]!r}")
        if bs.count(b'"BASE64"') != sum(1 for l in m.leaves if l[2] == "BASE64"):
            raise Wrong(f"UID {uid} (corpus {m.i}): BODYSTRUCTURE has the wrong number of base64 parts: {line[:300]!r}")


def window(s, rng, n=10):
    k = rng.randrange(max(1, len(s.uids) - n + 1))
    w = s.uids[k:k + n]
    return w, b"%d:%d" % (w[0], w[-1])


def c_envelope(s, rng, timed):
    w, r = window(s, rng)
    got = fetched(timed("FETCH ENVELOPE", b"UID FETCH " + r + b" (UID FLAGS ENVELOPE)"), w)
    for uid, (line, lits) in got.items():
        m = CORPUS[s.msg[uid]]
        text = line + b"".join(lits)
        want = [b'ENVELOPE ("' + m.date.encode() + b'" "' + m.subject.encode() + b'"',
                b'"%s" "%s")' % (m.sender[1].encode(), m.sender[2].encode())]
        for x in want:
            if x not in text:
                raise Wrong(f"UID {uid} (corpus {m.i}): ENVELOPE lacks {x!r}: {line[:300]!r}")
        check_flags(s, uid, line)


def check_flags(s, uid, line):
    f = FLAGSRE.search(line)
    if f is None:
        raise Wrong(f"UID {uid}: no FLAGS in {line[:200]!r}")
    if flagset(f.group(1)) != s.flags[uid]:
        raise Wrong(f"UID {uid}: FLAGS {f.group(1)!r}, expected {sorted(s.flags[uid])}")


def c_headers(s, rng, timed):
    w, r = window(s, rng)
    got = fetched(timed("FETCH HEADER.FIELDS", b"UID FETCH " + r +
                        b" (UID BODY.PEEK[HEADER.FIELDS (From To Subject Date)])"), w)
    for uid, (line, lits) in got.items():
        m = CORPUS[s.msg[uid]]
        if len(lits) != 1 or lits[0] != m.header_fields:
            raise Wrong(f"UID {uid} (corpus {m.i}): HEADER.FIELDS {lits!r}, expected {m.header_fields!r}")


def c_partial(s, rng, timed):
    uid = rng.choice(s.uids)
    got = fetched(timed("FETCH BODY[]<0.2048>", b"UID FETCH %d (UID BODY.PEEK[]<0.2048>)" % uid), [uid])
    line, lits = got[uid]
    m = CORPUS[s.msg[uid]]
    if b"BODY[]<0>" not in line or len(lits) != 1 or lits[0] != m.raw[:2048]:
        raise Wrong(f"UID {uid} (corpus {m.i}): partial body wrong: {line[:200]!r}, "
                    f"{[len(x) for x in lits]} bytes")


def c_body(s, rng, timed):
    uid = rng.choice(s.uids)
    got = fetched(timed("FETCH BODY[]", b"UID FETCH %d (UID BODY.PEEK[])" % uid), [uid])
    line, lits = got[uid]
    m = CORPUS[s.msg[uid]]
    if len(lits) != 1 or lits[0] != m.raw:
        raise Wrong(f"UID {uid} (corpus {m.i}): body of {[len(x) for x in lits]} bytes differs from the "
                    f"{len(m.raw)} appended")


def c_search(s, rng, timed):
    k = rng.randrange(3)
    if k == 0:
        q, want = b"UNSEEN", {u for u in s.uids if "\\Seen" not in s.flags[u]}
    elif k == 1:
        who = rng.choice(SENDERS)[1]
        q, want = b"FROM " + quote(who), {u for u in s.uids if CORPUS[s.msg[u]].sender[1] == who}
    else:
        t = rng.choice(SEARCH_TOPICS)
        q, want = b"SUBJECT " + quote(t), {u for u in s.uids if t in CORPUS[s.msg[u]].subject.lower()}
    got = set()
    for line, _ in timed("SEARCH", b"UID SEARCH " + q):
        if line.startswith(b"* SEARCH"):
            got |= {int(x) for x in line.split()[2:]}
    if got != want:
        raise Wrong(f"UID SEARCH {q.decode()}: {len(got)} UIDs, expected {len(want)}; "
                    f"extra {sorted(got - want)[:5]}, missing {sorted(want - got)[:5]}")


def store(s, uid, op, flag, name, timed):
    out = timed(name, b"UID STORE %d %sFLAGS (%s)" % (uid, op, flag))
    if op == b"+":
        s.flags[uid].add(flag.decode())
    else:
        s.flags[uid].discard(flag.decode())
    for line, _ in out:
        if b" FETCH (" in line and FLAGSRE.search(line):
            check_flags(s, uid, line)


def c_store_flag(s, rng, timed):
    store(s, rng.choice(s.uids), rng.choice([b"+", b"-"]), rng.choice([b"\\Seen", b"\\Flagged"]), "STORE flag", timed)


def c_store_keyword(s, rng, timed):
    store(s, rng.choice(s.uids), rng.choice([b"+", b"+", b"-"]), b"$Label1", "STORE keyword", timed)


def c_copy(s, rng, timed):
    timed("COPY", b"UID COPY %d Archive" % rng.choice(s.uids))
    s.archive += 1


def c_append(s, rng, timed):
    if len(s.uids) > 2 * CORPUS_SIZE:
        return c_expunge(s, rng, timed)
    m = rng.choice(CORPUS)
    timed("APPEND", b"APPEND INBOX", m.raw)
    a = APPENDUID.search(s.c.last)
    if not a or int(a.group(1)) <= max(s.uids, default=0):
        raise Wrong(f"APPEND answered {s.c.last!r}")
    uid = int(a.group(1))
    s.uids.append(uid)
    s.msg[uid], s.flags[uid] = m.i, set()


def c_expunge(s, rng, timed):
    if len(s.uids) < CORPUS_SIZE // 2:
        return c_append(s, rng, timed)
    uid = rng.choice(s.uids)
    timed("STORE \\Deleted", b"UID STORE %d +FLAGS.SILENT (\\Deleted)" % uid)
    seq = s.uids.index(uid) + 1
    gone = [int(m.group(1)) for m in (EXPUNGERE.match(l) for l, _ in timed("UID EXPUNGE", b"UID EXPUNGE %d" % uid)) if m]
    s.uids.remove(uid)
    del s.flags[uid]
    if gone != [seq]:
        raise Wrong(f"UID EXPUNGE {uid}: answered EXPUNGE {gone}, expected [{seq}]")


def c_status(s, rng, timed):
    n = Session.status_archive(timed("STATUS", b"STATUS Archive (MESSAGES UIDNEXT UNSEEN)"))
    if n != s.archive:
        raise Wrong(f"STATUS Archive: MESSAGES {n}, expected {s.archive}")


def c_list(s, rng, timed):
    names = b" ".join(l for l, _ in timed("LIST", b'LIST "" "*"') if l.startswith(b"* LIST"))
    if not re.search(rb'(?i)\bINBOX\b', names) or b"Archive" not in names:
        raise Wrong(f"LIST lacks INBOX or Archive: {names[:300]!r}")


def c_noop(s, rng, timed):
    timed("NOOP", b"NOOP")


MIX = [(c_bodystructure, 14), (c_envelope, 12), (c_headers, 12), (c_partial, 10), (c_body, 10), (c_search, 8),
       (c_store_flag, 8), (c_store_keyword, 4), (c_copy, 4), (c_append, 4), (c_expunge, 4), (c_status, 4),
       (c_list, 3), (c_noop, 3)]
assert sum(w for _, w in MIX) == 100
NAMES = ["FETCH BODYSTRUCTURE", "FETCH ENVELOPE", "FETCH HEADER.FIELDS", "FETCH BODY[]<0.2048>", "FETCH BODY[]",
         "SEARCH", "STORE flag", "STORE keyword", "COPY", "APPEND", "STORE \\Deleted", "UID EXPUNGE", "STATUS",
         "LIST", "NOOP"]


def client(i, port, start, may_quit, ready, results):
    """The protocol of imap-mixed.measure(): ready, wait for start, run SECS,
    put (i, ops, t0, t1, client CPU s, latencies, fatal error, protocol errors)."""
    try:
        rng = random.Random(2000 + i + int(time.time()))
        per = USERS // CLIENTS
        mine = mixed.users()[i * per:(i + 1) * per]
        sessions = [Session(port, u) for u in mine]
        lat = {n: [] for n in NAMES}
        ops, protocol = 0, []
        fns, weights = [f for f, _ in MIX], [w for _, w in MIX]

        def timed(name, text, literal=None):
            nonlocal ops
            t0 = time.perf_counter()
            out = s.run(text, literal)
            lat[name].append(time.perf_counter() - t0)
            ops += 1
            return out

        ready.put((i, None))
        start.wait()
        c0, t0 = os.times(), time.monotonic()
        deadline = t0 + SECS
        while time.monotonic() < deadline:
            s = rng.choice(sessions)
            fn = rng.choices(fns, weights)[0]
            try:
                fn(s, rng, timed)
            except (Wrong, Failed) as e:
                protocol.append(f"{s.user} {fn.__name__[2:]}: {type(e).__name__}: {e}")
                try:  # go on from what the server holds
                    if "connection closed" in str(e):
                        s.open()
                    else:
                        s.sync()
                except Exception as e2:
                    protocol.append(f"{s.user}: resync failed: {e2}")
                    s.open()
            protocol += [f"{s.user} {fn.__name__[2:]}: {x}" for x in s.unannounced]
            s.unannounced.clear()
        t1, c1 = time.monotonic(), os.times()
        results.put((i, ops, t0, t1, (c1.user + c1.system) - (c0.user + c0.system), lat, None, protocol))
        may_quit.wait()
        for s in sessions:
            s.c.cmd(b"LOGOUT")
    except Exception as e:  # reported to the parent, which fails the run
        ready.put((i, f"{type(e).__name__}: {e}"))
        results.put((i, 0, 0, 0, 0, {}, f"{type(e).__name__}: {e}", []))


# --------------------------------------------------------------------- main

def main():
    started = time.strftime('%Y-%m-%dT%H:%MZ', time.gmtime())
    commit = subprocess.run(["git", "-C", mixed.root, "describe", "--always", "--dirty"], capture_output=True,
                            text=True).stdout.strip() or "(not a git checkout)"
    sizes = sorted(len(m.raw) for m in CORPUS)
    kinds = {k: sum(1 for m in CORPUS if m.kind == k) for k in ("plain", "alternative", "mixed")}
    print(f"IMAP random workload: {CLIENTS} clients x {USERS // CLIENTS} kept-open sessions, {USERS} users x "
          f"{len(CORPUS)} corpus messages ({kinds['plain']} plain, {kinds['alternative']} alternative, "
          f"{kinds['mixed']} mixed with attachments; sizes min {sizes[0]}, median {sizes[len(sizes) // 2]}, "
          f"mean {sum(sizes) // len(sizes)}, max {sizes[-1]} bytes; {sum(sizes) / 2**20:.1f} MiB per INBOX), "
          f"{SECS:.0f} s per measurement, {ROUNDS} rounds; {os.cpu_count()} cores; mailroom source {mixed.root} "
          f"{commit}; started {started}; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    servers = []
    for name in SERVERS:
        if name == "mailroom-pg":
            servers.append(mixed.MailroomServer("postgres", fill))
            servers[-1].name = "mailroom-pg"
        elif name == "mailroom-sqlite":
            servers.append(mixed.MailroomServer("sqlite", fill))
        elif name == "dovecot":
            if mixed.DovecotServer.available():
                servers.append(mixed.DovecotServer(fill))
            else:
                log("dovecot: skipped (install dovecot-core and dovecot-imapd)")
        else:
            raise SystemExit(f"unknown server {name!r} in IMAP_RANDOM_SERVERS")
    try:
        for s in servers:
            t = time.monotonic()
            s.start()
            log(f"{s.name}: set up in {time.monotonic() - t:.0f} s")
        rates = {s.name: [] for s in servers}
        for r in range(ROUNDS):
            for s in servers:
                rates[s.name].append(mixed.measure(s, f"{s.name} {r + 1}", client=client, clients=CLIENTS, secs=SECS))
        print("== summary (ops/s: best, median; server CPU µs per op, median; protocol errors)", flush=True)
        for name, v in rates.items():
            print(f"== {name:16} best {max(x[0] for x in v):6.0f}, median {statistics.median(x[0] for x in v):6.0f} "
                  f"ops/s; {statistics.median(x[1] for x in v):6.0f} µs server CPU per op; "
                  f"protocol errors {sum(x[2] for x in v)}", flush=True)
        if "dovecot" in rates:
            d = rates["dovecot"]
            for name, v in rates.items():
                if name == "dovecot":
                    continue
                pairs = [a[0] / b[0] for a, b in zip(v, d)]
                cpu = [a[1] / b[1] for a, b in zip(v, d)]
                print(f"== {name}/dovecot: ops/s best over best {max(x[0] for x in v) / max(x[0] for x in d):.2f}; "
                      f"per round {', '.join(f'{x:.2f}' for x in pairs)} (median {statistics.median(pairs):.2f}); "
                      f"server CPU per op per round {', '.join(f'{x:.1f}' for x in cpu)}x Dovecot's", flush=True)
    finally:
        for s in servers:
            s.stop()
    mixed.print_finished()


if __name__ == "__main__":
    main()
