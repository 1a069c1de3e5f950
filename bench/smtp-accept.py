#!/usr/bin/env python3
"""Benchmark: SMTP acceptance and accept -> mailbox, Mailroom on both stores
next to Postfix, interleaved in the same run (issue #17).

Every server gets the same load from Postfix's own generator,
`smtp-source -s SESSIONS -m MESSAGES -l SIZE`, to one local user, after a
warm-up pass of the same size whose deliveries are finished before the
measured pass starts. Two figures per server and pass:

Neither side checks SPF, DKIM or DMARC (Mailroom: sender_auth.check_inbound
= false; the throw-away Postfix has no such milter).

* accept: MESSAGES / (time until smtp-source has its last 250); every 250
  comes only after the message is durable (Mailroom: the store's commit,
  `synchronous = FULL` on SQLite, synchronous commit on PostgreSQL;
  Postfix: fsync of the queue file);
* accept -> mailbox: MESSAGES / (time from the pass's start until the last
  message is in the mailbox: Mailroom's queue drained and every message a
  row of bob's INBOX; Postfix's queue empty and every message in the mbox
  file or Dovecot's Maildir).

Servers (SERVERS, comma-separated, default all):
* `mailroom-pg`      `mailroom serve` on a fresh PostgreSQL database;
* `mailroom-sqlite`  `mailroom serve` on its embedded store (the default);
* `mailroom-pg-queued`, `mailroom-sqlite-queued` (not in the default set)
                      the same with `mta.deliver_at_acceptance = false`:
                      every message through the queue and its worker;
* `postfix-discard`  a throw-away Postfix, the `discard` transport: its
                      acceptance rate, the accept peer;
* `postfix-mbox`     the same, delivering with virtual(8) into an mbox file
                      (fsync per delivery; what local(8) does for a system
                      user, without needing one);
* `postfix-lmtp`     the same, handing each message over LMTP to a
                      throw-away Dovecot (bench/dovecot-lmtp.conf,
                      Maildir, `mail_fsync = optimized`).

The throw-away Postfix and Dovecot run from their own configuration and
directories (the machine's instances are not touched). Every pass checks
that each acknowledged message is in the mailbox exactly once; a mismatch is
reported and fails the run.

Needs: root, PostgreSQL on 127.0.0.1:5432 (postgres, trust), postfix (for
smtp-source and the peer), dovecot-core + dovecot-lmtpd for postfix-lmtp.
Usage: CARGO_TARGET_DIR=/work/target-bench nice -n 19 python3 bench/smtp-accept.py
  env: SESSIONS=20 MESSAGES=2000 SIZE=4096 ROUNDS=3 SERVERS=... JSON=<file>
"""

import json
import os
import pwd
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
target = os.environ.get("CARGO_TARGET_DIR", os.path.join(root, "target"))
SESSIONS = int(os.environ.get("SESSIONS", "20"))
MESSAGES = int(os.environ.get("MESSAGES", "2000"))
SIZE = int(os.environ.get("SIZE", "4096"))
ROUNDS = int(os.environ.get("ROUNDS", "3"))
ALL = ["mailroom-pg", "postfix-discard", "mailroom-sqlite", "postfix-mbox", "postfix-lmtp"]
SERVERS = [s for s in os.environ.get("SERVERS", ",".join(ALL)).split(",") if s]
for _s in SERVERS:
    if _s not in ALL + ["mailroom-pg-queued", "mailroom-sqlite-queued"]:
        sys.exit(f"unknown server {_s!r}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, what, secs=30):
    deadline = time.time() + secs
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{what} did not listen on {port}")


def wait_until(check, what, secs=300):
    deadline = time.time() + secs
    while time.time() < deadline:
        value = check()
        if value is True:
            return time.perf_counter()
        time.sleep(0.02)
    raise SystemExit(f"timed out waiting for {what} (last: {check()!r})")


def source(port):
    """One smtp-source pass; returns the seconds it took."""
    start = time.perf_counter()
    subprocess.run(["smtp-source", "-s", str(SESSIONS), "-m", str(MESSAGES), "-l", str(SIZE),
                    "-f", "sender@remote.test", "-t", "bob@example.test", f"127.0.0.1:{port}"], check=True)
    return start, time.perf_counter()


def two_passes(port, what, drained, count):
    """A warm-up pass, then the measured one; returns the measured pass's
    (accept, accept -> mailbox) rates. `drained()` says the queue is empty;
    `count()` is how many messages the mailbox holds (None: nothing is kept,
    and only acceptance is measured). The mailbox must hold exactly what was
    acknowledged."""
    result = None
    for want in (MESSAGES, 2 * MESSAGES):
        start, accepted = source(port)

        def delivered():
            empty, have = drained(), count() if count else want
            return True if empty and have >= want else (empty, have)
        done = wait_until(delivered, f"{what} to deliver {want}")
        if count and count() != want:
            raise SystemExit(f"{what}: {count()} messages in the mailbox, {want} acknowledged")
        result = (MESSAGES / (accepted - start), MESSAGES / (done - start) if count else None)
    return result


def psql(db, sql):
    return subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", db, "-Atc", sql],
                          capture_output=True, text=True, check=True).stdout.strip()


def build():
    subprocess.run(["cargo", "build", "--release", "--locked", "-p", "mailroom"], cwd=root, check=True,
                   env={**os.environ, "CARGO_TARGET_DIR": target}, stdout=sys.stderr)
    return os.path.join(target, "release", "mailroom")


# --- Mailroom --------------------------------------------------------------

def mailroom(binary, store, queued=False):
    work = tempfile.mkdtemp(prefix="smtp-bench-", dir=os.path.join(target, "tmp") if os.path.isdir(
        os.path.join(target, "tmp")) else None)
    db = f"mailroom_bench_{os.getpid()}_{int(time.time())}"
    smtp, admin = free_port(), free_port()
    env = {**os.environ,
           "MAILROOM_MTA__LISTEN": f'["127.0.0.1:{smtp}"]', "MAILROOM_MTA__GRPC_LISTEN": "127.0.0.1:0",
           "MAILROOM_ADMIN__LISTEN": f"127.0.0.1:{admin}", "MAILROOM_MDA__LISTEN": "127.0.0.1:0",
           "MAILROOM_SUBMISSION__LISTEN": "[]", "MAILROOM_SUBMISSION__LISTEN_TLS": "[]",
           "MAILROOM_POP3__LISTEN": "[]", "MAILROOM_POP3__LISTEN_TLS": "[]",
           "MAILROOM_IMAP__LISTEN": "[]", "MAILROOM_IMAP__LISTEN_TLS": "[]",
           "MAILROOM_LIMITS__MAX_CONNECTIONS_PER_IP": str(SESSIONS * 2),
           "MAILROOM_STORE__MAX_CONNECTIONS": str(SESSIONS + 5),
           # Postfix here checks no SPF/DKIM/DMARC; neither does Mailroom
           # (and there is no DNS for remote.test on this machine).
           "MAILROOM_SENDER_AUTH__CHECK_INBOUND": "false",
           "MAILROOM_TELEMETRY__LOG_FILTER": "warn"}
    if queued:
        # Every message through the queue and its worker, as before
        # delivery at acceptance (ARCHITECTURE departure 50).
        env["MAILROOM_MTA__DELIVER_AT_ACCEPTANCE"] = "false"
    if store == "pg":
        subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-qc", f"CREATE DATABASE {db}"], check=True)
        env["MAILROOM_STORE__URL"] = f"postgres://postgres@127.0.0.1:5432/{db}"

        def count(sql):
            return int(psql(db, sql))
    else:
        # The embedded default: no store.url, the file in the data directory.
        def count(sql):
            path = os.path.join(work, "data", "mailroom.db")
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30) as c:
                return c.execute(sql).fetchone()[0]
    server = subprocess.Popen([binary, "--data-dir", f"{work}/data", "serve"], env=env,
                              stdout=subprocess.PIPE, stderr=open(f"{work}/serve.err", "w"), text=True)
    try:
        while "Admin token" not in server.stdout.readline():
            if server.poll() is not None:
                raise SystemExit(open(f"{work}/serve.err").read())
        cli = [binary, "--data-dir", f"{work}/data", "--admin-url", f"http://127.0.0.1:{admin}"]
        subprocess.run(cli + ["domain", "add", "example.test"], check=True, stdout=subprocess.DEVNULL)
        subprocess.run(cli + ["user", "add", "bob@example.test"], input="bench password 123\n", text=True,
                       check=True, stdout=subprocess.DEVNULL)
        wait_port(smtp, "mailroom")
        return two_passes(smtp, f"mailroom-{store}" + ("-queued" if queued else ""),
                          lambda: count("SELECT COUNT(*) FROM queue_recipients "
                                        "WHERE state IN ('pending', 'deferred')") == 0,
                          lambda: count("SELECT COUNT(*) FROM messages"))
    finally:
        server.terminate()
        server.wait()
        if store == "pg":
            subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-qc",
                            f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"], stdout=subprocess.DEVNULL)
        shutil.rmtree(work, ignore_errors=True)


# --- Postfix (and Dovecot) -------------------------------------------------

# The throw-away instance's master.cf (shared with the other benchmarks).
MASTER_CF = "".join(line for line in open(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                       "postfix-master.cf")) if not line.startswith("#"))


def dovecot(d, nobody):
    """A throw-away Dovecot LMTP server for bob; returns (port, maildir, stop)."""
    port = free_port()
    os.makedirs(f"{d}/mail", exist_ok=True)
    os.chown(f"{d}/mail", nobody.pw_uid, nobody.pw_gid)
    with open(f"{d}/users", "w") as f:
        f.write(f"bob@example.test:{{PLAIN}}x:{nobody.pw_uid}:{nobody.pw_gid}::{d}/mail/bob::\n")
    conf = open(os.path.join(root, "bench", "dovecot-lmtp.conf")).read()
    conf = (conf.replace("@DIR@", d).replace("@PORT@", str(port))
            .replace("@FIRST_VALID_UID@", str(min(nobody.pw_uid, 500))).replace("@INTERNAL_USERS@", ""))
    with open(f"{d}/dovecot.conf", "w") as f:
        f.write(conf)
    subprocess.run(["dovecot", "-c", f"{d}/dovecot.conf"], check=True, stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, "dovecot lmtp")

    def stop():
        subprocess.run(["doveadm", "-c", f"{d}/dovecot.conf", "stop"], stderr=subprocess.DEVNULL)
    return port, f"{d}/mail/bob/Maildir", stop


def postfix(kind):
    d = tempfile.mkdtemp(prefix="smtp-bench-postfix-", dir="/var/tmp")
    os.chmod(d, 0o755)
    for sub in ("etc", "queue", "data", "vmail"):
        os.makedirs(f"{d}/{sub}")
    pf = pwd.getpwnam("postfix")
    nobody = pwd.getpwnam("nobody")
    os.chown(f"{d}/data", pf.pw_uid, pf.pw_gid)
    os.chown(f"{d}/vmail", nobody.pw_uid, nobody.pw_gid)
    port = free_port()
    stop_dovecot = None
    extra = ""
    if kind == "discard":
        extra = "virtual_transport = discard\n"
    elif kind == "mbox":
        extra = "virtual_transport = virtual\n"
    else:
        os.makedirs(f"{d}/dovecot")
        os.chmod(f"{d}/dovecot", 0o755)
        lmtp_port, maildir, stop_dovecot = dovecot(f"{d}/dovecot", nobody)
        extra = f"virtual_transport = lmtp:inet:127.0.0.1:{lmtp_port}\nlmtp_destination_concurrency_limit = 20\n"
    with open(f"{d}/etc/main.cf", "w") as f:
        f.write(f"""compatibility_level = 3.6
queue_directory = {d}/queue
data_directory = {d}/data
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = loopback-only
inet_protocols = ipv4
myhostname = mx.example.test
mydestination =
mynetworks = 127.0.0.0/8
virtual_mailbox_domains = example.test
virtual_mailbox_base = {d}/vmail
virtual_mailbox_maps = inline:{{ bob@example.test=bob }}
virtual_uid_maps = static:{nobody.pw_uid}
virtual_gid_maps = static:{nobody.pw_gid}
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
maillog_file_prefixes = {d}
maillog_file = {d}/postfix.log
{extra}""")
    with open(f"{d}/etc/master.cf", "w") as f:
        f.write(MASTER_CF.format(listen=f"127.0.0.1:{port}"))
    pfx = ["-c", f"{d}/etc"]
    subprocess.run(["postfix", *pfx, "start"], check=True, stderr=subprocess.DEVNULL)

    def queued():
        return sum(len(files) for sub in ("incoming", "active", "deferred", "maildrop")
                   for _, _, files in os.walk(f"{d}/queue/{sub}"))

    def mbox_count():
        try:
            with open(f"{d}/vmail/bob", "rb") as f:
                return sum(1 for line in f if line.startswith(b"From "))
        except FileNotFoundError:
            return 0

    def maildir_count():
        return sum(len(os.listdir(f"{maildir}/{sub}")) for sub in ("new", "cur") if os.path.isdir(f"{maildir}/{sub}"))

    try:
        wait_port(port, "postfix")
        count = {"discard": None, "mbox": mbox_count, "lmtp": maildir_count}[kind]
        return two_passes(port, f"postfix-{kind}", lambda: queued() == 0, count)
    finally:
        subprocess.run(["postfix", *pfx, "abort"], stderr=subprocess.DEVNULL)
        if stop_dovecot:
            stop_dovecot()
        time.sleep(1)
        shutil.rmtree(d, ignore_errors=True)


def main():
    binary = build() if any(s.startswith("mailroom") for s in SERVERS) else None
    figures = {s: [] for s in SERVERS}
    for r in range(ROUNDS):
        for s in SERVERS:
            if s.startswith("mailroom-"):
                fig = mailroom(binary, "pg" if s.startswith("mailroom-pg") else "sqlite",
                               queued=s.endswith("-queued"))
            else:
                fig = postfix(s.split("-", 1)[1])
            figures[s].append(fig)
            e2e = f"{fig[1]:.0f}" if fig[1] else "-"
            print(f"round {r + 1} {s:16} accept {fig[0]:6.0f} msg/s   accept->mailbox {e2e:>6} msg/s",
                  file=sys.stderr, flush=True)

    def med(values):
        values = sorted(v for v in values if v is not None)
        return values[len(values) // 2] if values else None

    print(f"smtp-source -s {SESSIONS} -m {MESSAGES} -l {SIZE}, {ROUNDS} interleaved rounds, loopback, "
          f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%dT%H:%MZ', time.gmtime())}")
    print(f"{'server':16} {'accept msg/s (each round)':34} {'accept->mailbox msg/s (each round)':36}")
    for s in SERVERS:
        acc = " ".join(f"{a:.0f}" for a, _ in figures[s])
        e2e = " ".join(f"{e:.0f}" for _, e in figures[s] if e) or "-"
        print(f"{s:16} {acc:34} {e2e:36}")
    medians = {s: (med([a for a, _ in figures[s]]), med([e for _, e in figures[s]])) for s in SERVERS}
    ratios = []

    def ratio(name, a, b, which, target):
        if a in medians and b in medians and medians[a][which] and medians[b][which]:
            x = medians[a][which] / medians[b][which]
            ratios.append({"what": name, "ratio": round(x, 2), "target": target, "met": x >= target})
    ratio("SMTP accept, SQLite / Postfix", "mailroom-sqlite", "postfix-discard", 0, 2.0)
    ratio("SMTP accept, PostgreSQL / Postfix", "mailroom-pg", "postfix-discard", 0, 3.0)
    ratio("accept->mailbox, SQLite / Postfix->mbox", "mailroom-sqlite", "postfix-mbox", 1, 1.5)
    ratio("accept->mailbox, PostgreSQL / Postfix->mbox", "mailroom-pg", "postfix-mbox", 1, 1.5)
    ratio("accept->mailbox, PostgreSQL / Postfix->LMTP->Dovecot", "mailroom-pg", "postfix-lmtp", 1, 3.0)
    for r in ratios:
        print(f"{r['what']:55} {r['ratio']:5.2f}  (target {r['target']}: {'met' if r['met'] else 'MISSED'})")
    if os.environ.get("JSON"):
        with open(os.environ["JSON"], "w") as f:
            json.dump({"figures": figures, "ratios": ratios}, f)


main()
