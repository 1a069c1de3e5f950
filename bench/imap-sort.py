#!/usr/bin/env python3
"""Benchmark: SORT of 100,000 messages (RFC 5256), Mailroom next to
Dovecot's imapd in the same run, with the same mailbox contents.

One user, one INBOX filled over IMAP APPEND (pipelined, one connection, so
both servers get the messages in the same order and give them the same
UIDs) with IMAP_SORT_MESSAGES (100,000) small distinct messages: subjects
drawn from 2,000 topics with Re:/Fwd:/[list] prefixes, some RFC 2047
encoded and some 8-bit, 500 senders, Date headers spread over a year
(1 in 50 missing, so INTERNALDATE stands in; all in the past: Dovecot
replaces a future APPEND date by the present). The same seeded generator
makes the same bytes for both servers.

Then, on a fresh session with the mailbox selected, each command runs
IMAP_SORT_REPEAT (5) times on each server, alternating servers; the figure
is the best and the median wall time from sending the command to its tagged
OK, as the client sees it:

    UID SORT (SUBJECT) UTF-8 ALL
    SORT (REVERSE DATE) UTF-8 ALL
    SORT (FROM) UTF-8 ALL
    THREAD REFERENCES UTF-8 ALL      (not the target; for the record)

Every answer is checked: tagged OK and as many ids as messages. The two
servers' answers are compared (they sort the same messages with the same
UIDs; RFC 5256 fixes the order, ties by sequence number) and a difference
is printed.

The first SORT of a session reads the parse cache from the store; later
ones do again (Mailroom keeps no per-session sort index), so best and
median are both the cost of a SORT, not of a cache hit on sort keys.

Mailroom and Dovecot are started as bench/imap-mixed.py starts them
(release build of `mailroom serve` on a fresh PostgreSQL database, or the
embedded store with IMAP_BENCH_STORE=sqlite; Dovecot from its own
configuration, Maildir). Needs what imap-mixed.py needs. Run as root.
Usage: CARGO_TARGET_DIR=/work/target-bench nice -n 19 python3 bench/imap-sort.py
Knobs: IMAP_SORT_MESSAGES, IMAP_SORT_REPEAT, IMAP_BENCH_SKIP_PEER=1,
IMAP_BENCH_STORE, IMAP_BENCH_STORE_PARAMS (as imap-mixed.py).
"""
import importlib.util
import os
import random
import statistics
import sys
import time

here = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("imap_mixed", os.path.join(here, "imap-mixed.py"))
mixed = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mixed)
mixed.USERS = 1  # user0@example.test only

MESSAGES = int(os.environ.get("IMAP_SORT_MESSAGES", "100000"))
REPEAT = int(os.environ.get("IMAP_SORT_REPEAT", "5"))
WINDOW = 500  # APPENDs in flight
COMMANDS = [
    b"UID SORT (SUBJECT) UTF-8 ALL",
    b"SORT (REVERSE DATE) UTF-8 ALL",
    b"SORT (FROM) UTF-8 ALL",
    b"THREAD REFERENCES UTF-8 ALL",
]
USER = "user0@example.test"
MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


def messages():
    """(internal date, bytes) of every message, the same on every call."""
    rng = random.Random(5256)
    topics = [f"topic {i} about things" for i in range(2000)]
    prefixes = ["", "", "", "Re: ", "RE: Re: ", "Fwd: ", "[list] ", "[list] Re: "]
    for n in range(MESSAGES):
        t = rng.randrange(2000)
        subject = prefixes[rng.randrange(len(prefixes))] + topics[t]
        if n % 17 == 0:
            subject = "=?UTF-8?Q?" + subject.replace(" ", "_") + "_=C3=A9t=C3=A9?="
        elif n % 23 == 0:
            subject += " \u00e4rger"
        month, day, hour = rng.randrange(12), 1 + rng.randrange(28), rng.randrange(24)
        date = f"{day:02d} {MONTHS[month]} 2025 {hour:02d}:{rng.randrange(60):02d}:00 +0000"
        head = (f"From: Sender {rng.randrange(500)} <s{rng.randrange(500)}@example.org>\r\n"
                f"To: {USER}\r\nSubject: {subject}\r\nMessage-ID: <{n}@bench.test>\r\n")
        if n % 50 != 0:
            head += f"Date: Mon, {date}\r\n"
        if n > 0 and rng.random() < 0.5:
            head += f"References: <{rng.randrange(n)}@bench.test>\r\n"
        internal = f"{day:02d}-{MONTHS[month]}-2025 {hour:02d}:00:00 +0000"
        yield internal, (head + f"\r\nmessage {n}\r\n").encode()


def fill(port):
    """APPENDs the messages over one connection, WINDOW in flight."""
    c = mixed.Imap(port)
    c.login(USER)
    pending = []
    started = time.time()

    def drain(k):
        while len(pending) > k:
            tag = pending.pop(0)
            while True:
                line = c._line()
                if line.startswith(tag + b" "):
                    if not line.startswith(tag + b" OK"):
                        raise mixed.Failed(f"APPEND: {line[:200]!r}")
                    break

    for n, (internal, data) in enumerate(messages()):
        c.seq += 1
        tag = b"a%d" % c.seq
        c.s.sendall(tag + b' APPEND INBOX "' + internal.encode() + b'" {%d+}\r\n' % len(data) + data + b"\r\n")
        pending.append(tag)
        drain(WINDOW)
        if (n + 1) % 10000 == 0:
            mixed.log(f"  {n + 1} appended ({time.time() - started:.0f} s)")
    drain(0)
    c.cmd(b"LOGOUT")


def run(server, command):
    c = server.session
    t = time.perf_counter()
    untagged = c.cmd(command)
    elapsed = time.perf_counter() - t
    data = [line for line, _ in untagged if line.startswith((b"* SORT", b"* THREAD"))]
    if len(data) != 1:
        raise mixed.Failed(f"{command!r}: {len(data)} SORT/THREAD responses")
    ids = data[0].replace(b"(", b" ").replace(b")", b" ").split()[2:]
    if len(ids) != MESSAGES:
        raise mixed.Failed(f"{command!r}: {len(ids)} ids for {MESSAGES} messages")
    return elapsed, data[0]


def main():
    servers = [mixed.MailroomServer(store=mixed.STORE, fill=fill)]
    if mixed.SKIP_PEER:
        mixed.log("IMAP_BENCH_SKIP_PEER=1: Dovecot skipped")
    elif mixed.DovecotServer.available():
        servers.append(mixed.DovecotServer(fill=fill))
    else:
        mixed.log("dovecot-imapd not installed: Dovecot skipped")
    try:
        for s in servers:
            t = time.time()
            s.start()
            mixed.log(f"{s.name}: {MESSAGES} messages appended in {time.time() - t:.0f} s")
            s.session = mixed.Imap(s.port)
            s.session.login(USER)
            s.session.cmd(b"SELECT INBOX")
        times = {(s.name, cmd): [] for s in servers for cmd in COMMANDS}
        answers = {}
        for _ in range(REPEAT):
            for cmd in COMMANDS:
                for s in servers:
                    elapsed, answer = run(s, cmd)
                    times[(s.name, cmd)].append(elapsed)
                    answers[(s.name, cmd)] = answer
        print(f"SORT/THREAD of {MESSAGES} messages, {REPEAT} runs each "
              f"(best / median wall time, client side)")
        for cmd in COMMANDS:
            for s in servers:
                ts = times[(s.name, cmd)]
                print(f"  {cmd.decode():34} {s.name:16} best {1000 * min(ts):7.0f} ms"
                      f"  median {1000 * statistics.median(ts):7.0f} ms")
            if len(servers) == 2:
                a, b = (answers[(s.name, cmd)] for s in servers)
                if a == b:
                    print(f"  {'':34} answers identical")
                else:
                    x, y = a.split(b" "), b.split(b" ")
                    i = next(i for i in range(min(len(x), len(y))) if x[i] != y[i])
                    print(f"  {'':34} answers DIFFER from word {i}: "
                          f"{b' '.join(x[i - 2:i + 6]).decode()} | {b' '.join(y[i - 2:i + 6]).decode()}")
    finally:
        for s in servers:
            s.stop()


if __name__ == "__main__":
    sys.exit(main())
