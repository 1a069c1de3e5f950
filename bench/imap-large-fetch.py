#!/usr/bin/env python3
"""Benchmark: FETCH of one large message, Mailroom next to Dovecot in the
same run: the time of `FETCH 1 (BODY.PEEK[])` and how much the server's
resident memory peaks above its resting size while it answers.

One user; one message of IMAP_LARGE_MIB (40) MiB APPENDed over IMAP, in two
kinds: `text` (repeated lines of prose, which PostgreSQL compresses) and
`base64` (random bytes in base64, as attachments are, which it does not).
For each kind, each server: APPEND it, reset the server's peak RSS (writing
5 to /proc/PID/clear_refs), FETCH it whole IMAP_LARGE_ROUNDS (3) times
(checking every byte), and report the mean time per FETCH and the peak
VmHWM above the VmRSS before the FETCHes (summed over the processes:
Mailroom is one, Dovecot's are all of its processes). The servers run one
after the other. Mailroom runs on
PostgreSQL (as in imap-mixed.py) and, in a second instance, on its embedded
SQLite store (`IMAP_LARGE_SQLITE=0` skips that).

The servers are set up by bench/imap-mixed.py's code (the same
configuration; one user instead of 100, no mailbox filling).
Needs what imap-mixed.py needs. Run as root.
Usage: CARGO_TARGET_DIR=/work/target-bench nice -n 19 python3 bench/imap-large-fetch.py
"""
import base64, importlib.util, imaplib, os, random, sys, time

here = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("imap_mixed", os.path.join(here, "imap-mixed.py"))
mixed = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mixed)
mixed.USERS = 1
mixed.fill = lambda port: None

MIB = int(os.environ.get("IMAP_LARGE_MIB", "40"))
ROUNDS = int(os.environ.get("IMAP_LARGE_ROUNDS", "3"))
SQLITE = os.environ.get("IMAP_LARGE_SQLITE", "1") != "0"
USER = "user0@example.test"


def kinds():
    rng = random.Random(7)
    line = b"The quick brown fox jumps over the lazy dog, again and again.\r\n"
    head = b"From: bench@remote.test\r\nSubject: large\r\nMIME-Version: 1.0\r\n"
    text = head + b"\r\n" + line * (MIB * 1024 * 1024 // len(line))
    raw = rng.randbytes(MIB * 1024 * 1024 * 3 // 4)
    b64 = (head + b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
           + base64.encodebytes(raw).replace(b"\n", b"\r\n"))
    return [("text", text), ("base64", b64)]


def status(pid, key):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def measure(server, label, message):
    m = imaplib.IMAP4("127.0.0.1", server.port)
    m.login(USER, mixed.PASSWORD)
    folder = f"large-{len(message)}"
    m.create(folder)
    typ, _ = m.append(folder, None, None, message)
    assert typ == "OK", typ
    m.select(folder, readonly=True)
    time.sleep(0.5)
    ps = server.pids()
    rest = sum(status(p, "VmRSS") for p in ps)
    for p in ps:
        try:
            with open(f"/proc/{p}/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass
    start = time.time()
    for _ in range(ROUNDS):
        typ, data = m.fetch("1", "(BODY.PEEK[])")
        assert typ == "OK" and data[0][1] == message, (typ, len(data[0][1]) if data and data[0] else None)
    per = (time.time() - start) / ROUNDS
    peak = sum(status(p, "VmHWM") for p in server.pids())
    m.logout()
    print(f"  {label}: {len(message) / 2**20:.1f} MiB; {1000 * per:.0f} ms per FETCH; "
          f"resident {rest / 2**20:.0f} MiB before, peak {(peak - rest) / 2**20:+.0f} MiB above it", flush=True)


class SqliteMailroom(mixed.MailroomServer):
    """imap-mixed.py's Mailroom with its store URL left unset: the embedded
    SQLite store in its data directory. (imap-mixed.py still creates and
    drops a PostgreSQL database for it, unused.)"""

    def start(self):
        popen = mixed.subprocess.Popen

        def without_url(args, env=None, **kw):
            if env is not None:
                env = {k: v for k, v in env.items() if k != "MAILROOM_STORE__URL"}
            return popen(args, env=env, **kw)

        psql = mixed.psql

        def psql_but_count(sql, db="postgres"):
            # Its messages are not in PostgreSQL.
            return "?" if sql.startswith("SELECT count(*) FROM messages") else psql(sql, db)

        mixed.subprocess.Popen, mixed.psql = without_url, psql_but_count
        try:
            super().start()
        finally:
            mixed.subprocess.Popen, mixed.psql = popen, psql


def main():
    servers = [("mailroom (PostgreSQL)", mixed.MailroomServer())]
    if SQLITE:
        servers.append(("mailroom (SQLite)", SqliteMailroom()))
    if mixed.DovecotServer.available():
        servers.append(("dovecot", mixed.DovecotServer()))
    else:
        print("dovecot-core/dovecot-imapd not installed: the peer is skipped", file=sys.stderr)
    commit = mixed.subprocess.run(["git", "-C", mixed.root, "describe", "--always", "--dirty"],
                                  capture_output=True, text=True).stdout.strip()
    print(f"IMAP FETCH of one large message, mean of {ROUNDS}; mailroom source {mixed.root} {commit}; "
          f"started {time.strftime('%Y-%m-%dT%H:%MZ', time.gmtime())}", flush=True)
    # One server at a time (the two Mailroom instances would share
    # imap-mixed.py's database name).
    messages = kinds()
    for label, server in servers:
        try:
            server.start()
            for kind, message in messages:
                measure(server, f"{label}, {kind}", message)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
