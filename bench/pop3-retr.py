#!/usr/bin/env python3
"""Benchmark: POP3 RETR throughput, Mailroom (PostgreSQL) next to Dovecot's
POP3, in the same run, with the same mailbox contents.

10 clients (one per account: a POP3 maildrop admits one session), each logs
in, RETRs every one of its 100 messages of 4 KiB and QUITs without deleting;
the figure is messages retrieved per second over all clients. Plaintext
USER/PASS on loopback for both (TLS cost is not what this measures).

Needs: a release build of mailroom (the script builds it), PostgreSQL on
127.0.0.1:5432 (postgres, trust), and Debian's dovecot-core + dovecot-pop3d
for the peer (skipped, with a message, when missing). Run as root.

Both servers verify the same password hash at each login: Dovecot's
passwd-file holds, as `{ARGON2ID}`, the very Argon2id PHC strings Mailroom
stored for the accounts (Dovecot checks them with libsodium), so neither
side is spared the login's key derivation. POP3_BENCH_PEER_HASH=plain gives
Dovecot plain passwords instead (the figures before 2026-12-03 22:50).
Usage: CARGO_TARGET_DIR=/work/target-bench python3 bench/pop3-retr.py
"""
import os, pwd, poplib, shutil, smtplib, socket, subprocess, sys, tempfile, threading, time

CLIENTS, MESSAGES, SIZE, ROUNDS = 10, 100, 4096, 3
PEER_HASH = os.environ.get("POP3_BENCH_PEER_HASH", "argon2id")
HASHES = {}  # user -> Mailroom's stored Argon2id PHC string
PASSWORD = "bench password 123"
root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
target = os.environ.get("CARGO_TARGET_DIR", os.path.join(root, "target"))


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def message(user, i):
    body = f"From: bench@remote.test\r\nTo: {user}\r\nSubject: message {i}\r\nMessage-ID: <{i}.{user}@remote.test>\r\n\r\n"
    line = "The quick brown fox jumps over the lazy dog, again and again.\r\n"
    while len(body) < SIZE:
        body += line
    return body


def users():
    return [f"user{i}@example.test" for i in range(CLIENTS)]


def retr_all(port, user, out, idx):
    p = poplib.POP3("127.0.0.1", port, timeout=60)
    p.user(user); p.pass_(PASSWORD)
    count, _ = p.stat()
    for n in range(1, count + 1):
        p.retr(n)
    p.quit()
    out[idx] = count


def measure(port):
    best = 0.0
    for _ in range(ROUNDS):
        counts = [0] * CLIENTS
        threads = [threading.Thread(target=retr_all, args=(port, u, counts, i)) for i, u in enumerate(users())]
        start = time.perf_counter()
        for t in threads: t.start()
        for t in threads: t.join()
        elapsed = time.perf_counter() - start
        assert sum(counts) == CLIENTS * MESSAGES, counts
        best = max(best, sum(counts) / elapsed)
    return best


def mailroom():
    subprocess.run(["cargo", "build", "--release", "--locked", "-p", "mailroom"], cwd=root, check=True,
                   env={**os.environ, "CARGO_TARGET_DIR": target}, stdout=sys.stderr)
    binary = os.path.join(target, "release", "mailroom")
    work = tempfile.mkdtemp(prefix="pop3-bench-")
    db = f"mailroom_bench_{os.getpid()}"
    subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-qc", f"CREATE DATABASE {db}"], check=True)
    smtp, admin, pop3 = free_port(), free_port(), free_port()
    env = {**os.environ,
           "MAILROOM_STORE__URL": f"postgres://postgres@127.0.0.1:5432/{db}",
           "MAILROOM_MTA__LISTEN": f'["127.0.0.1:{smtp}"]', "MAILROOM_MTA__GRPC_LISTEN": "127.0.0.1:0",
           "MAILROOM_ADMIN__LISTEN": f"127.0.0.1:{admin}", "MAILROOM_MDA__LISTEN": "127.0.0.1:0",
           "MAILROOM_SUBMISSION__LISTEN": "[]", "MAILROOM_SUBMISSION__LISTEN_TLS": "[]",
           "MAILROOM_POP3__LISTEN": f'["127.0.0.1:{pop3}"]', "MAILROOM_POP3__LISTEN_TLS": "[]",
           "MAILROOM_IMAP__LISTEN": "[]", "MAILROOM_IMAP__LISTEN_TLS": "[]",
           "MAILROOM_LIMITS__MAX_CONNECTIONS_PER_IP": "100", "MAILROOM_TELEMETRY__LOG_FILTER": "warn"}
    server = subprocess.Popen([binary, "--data-dir", f"{work}/data", "serve"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        while "Admin token" not in server.stdout.readline():
            pass
        cli = [binary, "--data-dir", f"{work}/data", "--admin-url", f"http://127.0.0.1:{admin}"]
        subprocess.run(cli + ["domain", "add", "example.test"], check=True, stdout=subprocess.DEVNULL)
        for u in users():
            subprocess.run(cli + ["user", "add", u], input=PASSWORD + "\n", text=True, check=True, stdout=subprocess.DEVNULL)
        s = smtplib.SMTP("127.0.0.1", smtp)
        for u in users():
            for i in range(MESSAGES):
                s.sendmail("bench@remote.test", [u], message(u, i))
        s.quit()
        deadline = time.time() + 120
        for u in users():
            while True:
                p = poplib.POP3("127.0.0.1", pop3); p.user(u); p.pass_(PASSWORD)
                n = p.stat()[0]; p.quit()
                if n == MESSAGES: break
                assert time.time() < deadline, f"{u} has {n} messages"
                time.sleep(0.2)
        for line in subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", db, "-Atc",
                                    "SELECT address, password_hash FROM accounts"],
                                   capture_output=True, text=True, check=True).stdout.split():
            user, phc = line.split("|", 1)
            HASHES[user] = phc
        return measure(pop3)
    finally:
        server.terminate(); server.wait()
        subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-qc", f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"])
        shutil.rmtree(work, ignore_errors=True)


def dovecot():
    if not shutil.which("dovecot") or not os.path.exists("/usr/lib/dovecot/pop3"):
        return None
    nobody = pwd.getpwnam("nobody")
    d = tempfile.mkdtemp(prefix="dovecot-pop3-bench-", dir=target)
    os.chmod(d, 0o755)
    port = free_port()
    with open(f"{d}/users", "w") as f:
        for u in users():
            home = f"{d}/mail/{u.split('@')[0]}"
            for sub in ("cur", "new", "tmp"):
                os.makedirs(f"{home}/Maildir/{sub}", exist_ok=True)
            for i in range(MESSAGES):
                with open(f"{home}/Maildir/cur/{1700000000 + i}.M{i}P1.bench:2,", "w", newline="") as m:
                    m.write(message(u, i))
            secret = f"{{ARGON2ID}}{HASHES[u]}" if PEER_HASH == "argon2id" else f"{{PLAIN}}{PASSWORD}"
            f.write(f"{u}:{secret}:{nobody.pw_uid}:{nobody.pw_gid}::{home}::\n")
    subprocess.run(["chown", "-R", f"{nobody.pw_uid}:{nobody.pw_gid}", f"{d}/mail"], check=True)
    conf = f"""instance_name = mailroom-pop3-bench
base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
listen = 127.0.0.1
protocols = pop3
ssl = no
disable_plaintext_auth = no
first_valid_uid = {min(nobody.pw_uid, 500)}
passdb {{
  driver = passwd-file
  args = {d}/users
}}
userdb {{
  driver = passwd-file
  args = {d}/users
}}
mail_location = maildir:~/Maildir
pop3_uidl_format = %08Xu%08Xv
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
"""
    with open(f"{d}/dovecot.conf", "w") as f:
        f.write(conf)
    subprocess.run(["dovecot", "-c", f"{d}/dovecot.conf"], check=True)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), 1).close(); break
            except OSError:
                time.sleep(0.1)
        return measure(port)
    finally:
        subprocess.run(["doveadm", "-c", f"{d}/dovecot.conf", "stop"])
        shutil.rmtree(d, ignore_errors=True)


m = mailroom()
v = dovecot()
print(f"POP3 RETR, {CLIENTS} clients x {MESSAGES} messages of {SIZE} bytes, best of {ROUNDS}, "
      f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%dT%H:%MZ', time.gmtime())}")
print(f"mailroom (PostgreSQL): {m:.0f} msg/s")
if v is None:
    print("dovecot: skipped (install dovecot-core and dovecot-pop3d)")
else:
    print(f"dovecot (Maildir, {'the same Argon2id hashes' if PEER_HASH == 'argon2id' else 'plain passwords'}): "
          f"{v:.0f} msg/s")
    print(f"ratio mailroom/dovecot: {m / v:.2f}")
