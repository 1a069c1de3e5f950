#!/usr/bin/env python3
"""Benchmark: outbound relay throughput, Mailroom (PostgreSQL) next to
Postfix, in the same run, both relaying the same load from their queue to
Postfix's smtp-sink on loopback.

What is timed, for each system: from the moment a full queue is released
to the moment smtp-sink has received every message (its running counters,
`smtp-sink -c`, read as they change). The figure is messages relayed per
second.

* Mailroom: `mailroom serve` on a fresh PostgreSQL database. N messages of
  SIZE bytes (distinct Message-IDs) to N recipients at relay.bench are
  written into the queue tables in one transaction, as Queue.Enqueue would
  leave them; one inbound message to a local user then wakes the workers
  (as any enqueue does), which is the release. The relay resolves
  relay.bench through a small DNS responder in this script (MX
  mx.relay.bench, A 127.0.0.1) and delivers on `mta.outbound_port`, the
  sink's port. Messages leased together go over shared SMTP sessions (up
  to 32 a session, RSET between, pipelined), and each session's results
  are recorded, and the finished entries removed, in one commit.
* Postfix: a throw-away Postfix instance (its own config and queue
  directory in a temporary directory; the machine's Postfix is untouched)
  with `relayhost = [127.0.0.1]:SINKPORT`. smtp-source feeds it the same
  number of messages of the same size through its smtpd, which puts them on
  hold (`check_client_access static:HOLD`); the release is `postsuper -H
  ALL` followed by `postqueue -f`. Postfix's defaults otherwise (20 sessions
  per destination, connection reuse when there is a backlog), measured a
  second time with `smtp_connection_cache_on_demand = no` (a session per
  message).

Needs: root, PostgreSQL on 127.0.0.1:5432 (postgres, trust), postfix
(smtp-sink, smtp-source, the peer). Builds mailroom in release mode.
Usage: CARGO_TARGET_DIR=/work/target-bench python3 bench/relay.py
       (env: MESSAGES=2000 SIZE=4096 WARMUP=200)
"""
import os, pwd, shutil, smtplib, socket, struct, subprocess, sys, tempfile, threading, time

MESSAGES = int(os.environ.get("MESSAGES", 2000))
SIZE = int(os.environ.get("SIZE", 4096))
WARMUP = int(os.environ.get("WARMUP", 200))
ZONE = "relay.bench"
root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
target = os.environ.get("CARGO_TARGET_DIR", os.path.join(root, "target"))


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def wait_port(port, what):
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), 1).close(); return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"{what} does not listen on {port}")


def psql(db, sql):
    subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", db, "-v", "ON_ERROR_STOP=1", "-qc", sql],
                   check=True, stdout=subprocess.DEVNULL)


def load():
    return "load average %.2f %.2f %.2f" % os.getloadavg()


def cpu_times():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v), v[3] + v[4]  # total, idle + iowait


def proc_cpu(name=None, pid=None):
    """CPU seconds (user + system) of every process named `name`, or of
    process `pid`, by pid."""
    out, tick = {}, os.sysconf("SC_CLK_TCK")
    for p in ([str(pid)] if pid else [d for d in os.listdir("/proc") if d.isdigit()]):
        try:
            with open(f"/proc/{p}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        comm, rest = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
        if pid or comm == name:
            out[p] = (int(rest[11]) + int(rest[12])) / tick
    return out


def cpu_spent(before, after):
    return sum(v - before.get(p, 0.0) for p, v in after.items())


def busy(before, after):
    total, idle = after[0] - before[0], after[1] - before[1]
    return 100.0 * (total - idle) / total if total else 0.0


# --- a DNS responder for relay.bench (UDP, authoritative) ------------------

def dns_name(name):
    return b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\0"


def dns_serve(sock):
    while True:
        data, peer = sock.recvfrom(4096)
        i, labels = 12, []
        while data[i]:
            labels.append(data[i + 1:i + 1 + data[i]].decode().lower()); i += 1 + data[i]
        qtype, = struct.unpack(">H", data[i + 1:i + 3])
        question, name = data[12:i + 5], ".".join(labels)
        answers, rcode = [], 0
        if name == ZONE and qtype == 15:
            answers.append((15, struct.pack(">H", 10) + dns_name("mx." + ZONE)))
        elif name == "mx." + ZONE and qtype == 1:
            answers.append((1, socket.inet_aton("127.0.0.1")))
        elif name not in (ZONE, "mx." + ZONE):
            rcode = 3  # NXDOMAIN; the names above answer NODATA for other types
        header = data[:2] + struct.pack(">BBHHHH", 0x84 | (data[2] & 1), rcode, 1, len(answers), 0, 0)
        body = b"".join(b"\xc0\x0c" + struct.pack(">HHIH", t, 1, 3600, len(r)) + r for t, r in answers)
        sock.sendto(header + question + body, peer)


def start_dns():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    threading.Thread(target=dns_serve, args=(sock,), daemon=True).start()
    return sock.getsockname()[1]


# --- the sink --------------------------------------------------------------

class Sink:
    """smtp-sink on `port`, its running counters (`-c`) read as they come,
    so the time its N-th message ended is known while it keeps answering."""

    def __init__(self, port):
        self.proc = subprocess.Popen(["smtp-sink", "-c", "-u", "postfix", f"127.0.0.1:{port}", "256"],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.messages, self.sessions, self.cond = 0, 0, threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        wait_port(port, "smtp-sink")

    def _read(self):
        buf = b""
        while True:
            c = self.proc.stdout.read(1)
            if not c:
                return
            if c != b"\r":
                buf += c
                continue
            fields = dict(f.split("=") for f in buf.decode().split())
            buf = b""
            with self.cond:
                self.messages = int(fields.get("mesg", 0))
                self.sessions = int(fields.get("sess", 0))
                self.cond.notify_all()

    def wait_for(self, n, timeout=1200):
        """Blocks until the sink has received `n` messages; returns when."""
        with self.cond:
            assert self.cond.wait_for(lambda: self.messages >= n, timeout), f"{self.messages} of {n} arrived"
        return time.perf_counter()

    def sessions_after(self, before):
        """Sessions that ended since the count was `before`, once the
        client has had time to close its idle ones (smtp-sink counts a
        session when it ends)."""
        time.sleep(3)
        with self.cond:
            return self.sessions - before

    def stop(self):
        self.proc.kill(); self.proc.wait()


# --- Mailroom --------------------------------------------------------------

FILL = r"""
BEGIN;
CREATE TEMP TABLE m AS
  SELECT i, convert_to(format(E'From: bench@example.test\r\nTo: user%s@{zone}\r\nSubject: relay %s\r\nMessage-ID: <%s.{tag}@example.test>\r\n\r\n', i, i, i)
                       || repeat(E'The quick brown fox jumps over the lazy dog, again and again.\r\n', {lines}), 'UTF8') AS data
  FROM generate_series(1, {n}) i;
INSERT INTO blobs (hash, size, data, created_at)
  SELECT encode(sha256(data), 'hex'), length(data), data, {now} FROM m;
INSERT INTO queue_messages (sender, blob_hash, size, created_at, expires_at)
  SELECT 'bench@example.test', encode(sha256(data), 'hex'), length(data), {now}, {now} + 86400 FROM m ORDER BY i;
INSERT INTO queue_recipients (queue_message_id, address, domain, next_attempt_at, updated_at)
  SELECT q.id, 'user' || m.i || '@{zone}', '{zone}', {now}, {now}
  FROM queue_messages q JOIN m ON q.blob_hash = encode(sha256(m.data), 'hex');
COMMIT;
"""


def mailroom():
    subprocess.run(["cargo", "build", "--release", "--locked", "-p", "mailroom"], cwd=root, check=True,
                   env={**os.environ, "CARGO_TARGET_DIR": target}, stdout=sys.stderr)
    binary = os.path.join(target, "release", "mailroom")
    work = tempfile.mkdtemp(prefix="relay-bench-")
    db = f"mailroom_bench_{os.getpid()}"
    subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-qc", f"CREATE DATABASE {db}"], check=True)
    dns, smtp, admin = start_dns(), free_port(), free_port()
    lines = max(1, (SIZE - 150) // 64)
    results = {}
    # The sink's port must be known when Mailroom starts (mta.outbound_port):
    # one sink for both passes.
    sink_port = free_port()
    env = {**os.environ,
           "MAILROOM_STORE__URL": f"postgres://postgres@127.0.0.1:5432/{db}",
           "MAILROOM_STORE__MAX_CONNECTIONS": "20",
           "MAILROOM_MTA__LISTEN": f'["127.0.0.1:{smtp}"]', "MAILROOM_MTA__GRPC_LISTEN": "127.0.0.1:0",
           "MAILROOM_MTA__DNS_SERVERS": f'["127.0.0.1:{dns}"]', "MAILROOM_MTA__OUTBOUND_PORT": str(sink_port),
           "MAILROOM_ADMIN__LISTEN": f"127.0.0.1:{admin}", "MAILROOM_MDA__LISTEN": "127.0.0.1:0",
           "MAILROOM_SUBMISSION__LISTEN": "[]", "MAILROOM_SUBMISSION__LISTEN_TLS": "[]",
           "MAILROOM_POP3__LISTEN": "[]", "MAILROOM_POP3__LISTEN_TLS": "[]",
           "MAILROOM_IMAP__LISTEN": "[]", "MAILROOM_IMAP__LISTEN_TLS": "[]",
           "MAILROOM_TELEMETRY__LOG_FILTER": "warn"}
    server = subprocess.Popen([binary, "--data-dir", f"{work}/data", "serve"], env=env,
                              stdout=subprocess.PIPE, stderr=open(f"{work}/serve.err", "w"), text=True)
    try:
        while "Admin token" not in server.stdout.readline():
            pass
        cli = [binary, "--data-dir", f"{work}/data", "--admin-url", f"http://127.0.0.1:{admin}"]
        subprocess.run(cli + ["domain", "add", "example.test"], check=True, stdout=subprocess.DEVNULL)
        subprocess.run(cli + ["user", "add", "bob@example.test"], input="bench password 123\n", text=True,
                       check=True, stdout=subprocess.DEVNULL)
        sink = Sink(sink_port)
        done = 0
        for tag, n in (("warmup", WARMUP), ("measured", MESSAGES)):
            psql(db, FILL.format(zone=ZONE, tag=tag, n=n, lines=lines, now=int(time.time())))
            sessions = sink.sessions
            procs = (proc_cpu(pid=server.pid), proc_cpu("postgres"), proc_cpu("smtp-sink"))
            cpu, start = cpu_times(), time.perf_counter()
            # Any enqueue wakes the workers: one inbound message to bob.
            s = smtplib.SMTP("127.0.0.1", smtp)
            s.sendmail("bench@remote.test", ["bob@example.test"], "Subject: wake up\r\n\r\nx\r\n")
            s.quit()
            done += n
            end = sink.wait_for(done)
            results[tag] = (n / (end - start), busy(cpu, cpu_times()))
            spent = [cpu_spent(b, a) for b, a in zip(procs, (proc_cpu(pid=server.pid), proc_cpu("postgres"),
                                                              proc_cpu("smtp-sink")))]
            print(f"== {tag}: CPU seconds until the last message arrived: mailroom {spent[0]:.2f}, "
                  f"postgres {spent[1]:.2f}, smtp-sink {spent[2]:.2f} ({n / (end - start):.0f} msg/s)", file=sys.stderr)
            # Every entry left the queue (a result commit each).
            for _ in range(100):
                left = subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", db, "-Atc",
                                       "SELECT COUNT(*) FROM queue_messages"], capture_output=True, text=True).stdout.strip()
                if left == "0":
                    break
                time.sleep(0.1)
            assert left == "0", f"{left} entries still queued"
            results[tag] += (sink.sessions_after(sessions),)
        sink.stop()
        return results["measured"]
    finally:
        server.terminate(); server.wait()
        subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-qc", f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"])
        shutil.rmtree(work, ignore_errors=True)


# --- Postfix ---------------------------------------------------------------

# The throw-away instance's master.cf (shared with the other benchmarks).
MASTER_CF = "".join(line for line in open(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                       "postfix-master.cf")) if not line.startswith("#"))


def postfix(reuse):
    d = tempfile.mkdtemp(prefix="relay-bench-postfix-", dir="/tmp")
    os.chmod(d, 0o755)
    for sub in ("etc", "queue", "data"):
        os.makedirs(f"{d}/{sub}")
    pf = pwd.getpwnam("postfix")
    os.chown(f"{d}/data", pf.pw_uid, pf.pw_gid)
    port, sink_port = free_port(), free_port()
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
relayhost = [127.0.0.1]:{sink_port}
smtpd_client_restrictions = check_client_access static:HOLD
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
maillog_file_prefixes = {d}
maillog_file = {d}/postfix.log
smtp_connection_cache_on_demand = {"yes" if reuse else "no"}
""")
    with open(f"{d}/etc/master.cf", "w") as f:
        f.write(MASTER_CF.format(listen=f"127.0.0.1:{port}"))
    pfx = ["-c", f"{d}/etc"]
    subprocess.run(["postfix", *pfx, "start"], check=True, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, "postfix")
        results = {}
        sink, done = Sink(sink_port), 0
        for tag, n in (("warmup", WARMUP), ("measured", MESSAGES)):
            subprocess.run(["smtp-source", "-s", "20", "-m", str(n), "-l", str(SIZE), "-f", "bench@example.test",
                            "-t", f"user@{ZONE}", f"127.0.0.1:{port}"], check=True)
            for _ in range(600):  # every message is in the hold queue
                held = sum(len(files) for _, _, files in os.walk(f"{d}/queue/hold"))
                if held == n:
                    break
                time.sleep(0.1)
            assert held == n, f"{held} held of {n}"
            sessions = sink.sessions
            cpu, start = cpu_times(), time.perf_counter()
            subprocess.run(["postsuper", *pfx, "-H", "ALL"], check=True, stderr=subprocess.DEVNULL)
            subprocess.run(["postqueue", *pfx, "-f"], check=True)
            done += n
            end = sink.wait_for(done)
            results[tag] = (n / (end - start), busy(cpu, cpu_times()), sink.sessions_after(sessions))
        sink.stop()
        return results["measured"]
    finally:
        subprocess.run(["postfix", *pfx, "abort"], stderr=subprocess.DEVNULL)
        time.sleep(1)
        shutil.rmtree(d, ignore_errors=True)


print(f"== before: {load()}", file=sys.stderr)
(m, m_cpu, m_sess) = mailroom()
print(f"== between: {load()}", file=sys.stderr)
(p, p_cpu, p_sess) = postfix(reuse=True)
(q, q_cpu, q_sess) = postfix(reuse=False)
print(f"relay from the queue to smtp-sink, {MESSAGES} messages of {SIZE} bytes (after {WARMUP} warm-up), "
      f"loopback, {os.cpu_count()} cores, {time.strftime('%Y-%m-%dT%H:%MZ', time.gmtime())}, {load()}")
print(f"mailroom (PostgreSQL, sessions reused, a commit per session):     {m:.0f} msg/s   (CPU busy {m_cpu:.0f}%, {m_sess} SMTP sessions)")
print(f"postfix  (defaults: sessions reused under backlog):               {p:.0f} msg/s   (CPU busy {p_cpu:.0f}%, {p_sess} SMTP sessions)")
print(f"postfix  (smtp_connection_cache_on_demand = no):                  {q:.0f} msg/s   (CPU busy {q_cpu:.0f}%, {q_sess} SMTP sessions)")
print(f"ratio mailroom/postfix: {m / p:.2f} (defaults), {m / q:.2f} (no session reuse)")
