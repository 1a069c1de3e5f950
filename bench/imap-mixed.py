#!/usr/bin/env python3
"""Benchmark: IMAP operations per second under a mixed workload, Mailroom
(PostgreSQL) next to Dovecot's imapd in the same run with the same mailbox
contents; then the memory of 10,000 concurrent IDLE sessions.

Mixed workload
  100 users (user0..user99@example.test), each INBOX filled over IMAP APPEND
  with 50 distinct messages of exactly 4 KiB (the same bytes for both
  servers). 10 client processes (processes, not threads, so the Python GIL
  does not serialise the clients); client i owns users i*10..i*10+9 and keeps
  one session per user open (LOGIN on loopback, plaintext: both servers allow
  it there). No two clients share a mailbox. Each client repeatedly picks one
  of its sessions at random and runs one round of 7 commands:

    SELECT INBOX                                  (EXISTS must match)
    UID FETCH <5 random UIDs> (UID FLAGS ENVELOPE)  (5 FETCH responses)
    UID FETCH <1 random UID> (BODY.PEEK[])        (a 4,096-byte literal)
    UID STORE <that UID> +FLAGS.SILENT (\\Seen)
    APPEND INBOX {4096+}                          (LITERAL+, APPENDUID checked)
    UID STORE <oldest UID> +FLAGS.SILENT (\\Deleted)
    EXPUNGE                                       (exactly one EXPUNGE, of it)

  so every mailbox stays at 50 messages. Each command is one operation; the
  client checks every answer (tagged OK, and the checks above), so a server
  that answers wrongly fails the run instead of winning it. A measurement
  runs for IMAP_BENCH_SECS (20) seconds after all 100 sessions are logged
  in and selected (the clock starts with all clients at once; a round in
  progress at the deadline is finished and counted). Both servers are set
  up first and stay up; then IMAP_BENCH_ROUNDS (3) measurements of each
  alternate (Mailroom, Dovecot, Mailroom, ...), so that other work on a
  shared machine disturbs both alike; the figure is the best of each, and
  the ratio of each adjacent pair is printed too. Every measurement also
  prints the CPU seconds spent by the server, by PostgreSQL (the bench
  database's backends plus its background processes), by the clients and
  by anything else on the machine (other work, and kernel threads), the
  load average, and the p50/p99 latency of each command; for Mailroom, the
  database's commits and tuples per operation (pg_stat_database). Server
  CPU per operation (Mailroom's with PostgreSQL's) is the steadiest figure
  on a busy machine: the run prints its ratio to Dovecot's per pair.

IDLE memory
  IMAP_BENCH_IDLE (10000) sessions opened by one asyncio client from 20
  loopback source addresses (127.0.0.2..21), IMAP_BENCH_LOGIN_CONCURRENCY
  (50) logins at a time, logging in as the 100 users in turn (so 100
  sessions per user); each does LOGIN, SELECT INBOX, IDLE. The figure is the
  server's resident memory (VmRSS, and VmHWM, the peak) before the sessions
  and with all of them idling, plus the PostgreSQL backends' proportional
  memory (PSS: shared buffers counted once). Then, to check that the
  sessions are alive, a message is APPENDed from another session to 10
  users in turn and the benchmark waits until each of their 100 idling
  sessions has received its `* n EXISTS`; it prints the fan-out latency
  and the server CPU each event cost. Mailroom's limits are raised for this
  (MAILROOM_LIMITS__MAX_CONNECTIONS=12000, ..._PER_IP=1000); the file
  descriptor limit of the run is raised as far as allowed (10,000 sessions
  need about 10,100 in the client and in the server).
  Dovecot is measured the same way (IMAP_BENCH_PEER_IDLE=0 skips it) with
  imap_hibernate_timeout = 5s, Dovecot's own answer to many idling clients
  (without it Dovecot keeps one imap process per session: about 5 MiB RSS,
  0.7 MiB PSS each); its figure is the sum over all its processes, RSS and
  PSS. Each Dovecot user runs as its own uid (40000 + n): the kernel's
  inotify limit is per uid (fs.inotify.max_user_instances, 128 here), and
  past it Dovecot can neither push (it polls every 30 s) nor hibernate.

Mailroom runs the whole stack (`mailroom serve`, release build) on a fresh
PostgreSQL database with default pool size (store.max_connections = 10).
Dovecot 2.3 (dovecot-core, dovecot-imapd) runs from its own configuration in
a temporary directory: passwd-file users with {PLAIN} passwords, Maildir,
mail_fsync = optimized (its default; APPEND is durable on both sides).
Note: Mailroom checks Argon2 password hashes at LOGIN, Dovecot compares
plain passwords; logins happen before the clock starts, so only the IDLE
phase's set-up time shows it.

Needs: PostgreSQL on 127.0.0.1:5432 (postgres, trust), cargo (the script
builds the release binary), dovecot-core + dovecot-imapd for the peer
(skipped, with a message, when missing). Run as root.
Usage: CARGO_TARGET_DIR=/work/target-bench nice -n 19 python3 bench/imap-mixed.py
Knobs: IMAP_BENCH_SECS, IMAP_BENCH_ROUNDS, IMAP_BENCH_IDLE (0: skip the IDLE
phase), IMAP_BENCH_LOGIN_CONCURRENCY, IMAP_BENCH_SKIP_PEER=1,
IMAP_BENCH_PEER_IDLE=0, IMAP_BENCH_STORE=sqlite (Mailroom on its embedded
store, the default without store.url, instead of PostgreSQL),
IMAP_BENCH_STORE_PARAMS (appended to Mailroom's
database URL, e.g. sslmode=disable: by default sqlx negotiates TLS with the
local PostgreSQL when it offers it, as Debian's does), IMAP_BENCH_KEEP=1
(after the measurements, wait for Enter with both servers up, e.g. to
profile them).
"""
import asyncio, multiprocessing as mp, os, pwd, random, re, resource, shutil, socket, subprocess, sys, tempfile, threading, time

USERS, CLIENTS, MESSAGES, SIZE = 100, 10, 50, 4096
SECS = float(os.environ.get("IMAP_BENCH_SECS", "20"))
ROUNDS = int(os.environ.get("IMAP_BENCH_ROUNDS", "3"))
IDLE = int(os.environ.get("IMAP_BENCH_IDLE", "10000"))
LOGIN_CONCURRENCY = int(os.environ.get("IMAP_BENCH_LOGIN_CONCURRENCY", "50"))
SKIP_PEER = os.environ.get("IMAP_BENCH_SKIP_PEER") == "1"
PEER_IDLE = os.environ.get("IMAP_BENCH_PEER_IDLE", "1") != "0"
SOURCES = [f"127.0.0.{i}" for i in range(2, 22)]
STORE = os.environ.get("IMAP_BENCH_STORE", "postgres")
STORE_PARAMS = ("?" + os.environ["IMAP_BENCH_STORE_PARAMS"]) if os.environ.get("IMAP_BENCH_STORE_PARAMS") else ""
PUSH_USERS = 10
UID_BASE = 40000  # Dovecot's users run as uids UID_BASE..UID_BASE+99
PASSWORD = "bench password 123"
TICK = os.sysconf("SC_CLK_TCK")
root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
target = os.environ.get("CARGO_TARGET_DIR", os.path.join(root, "target"))


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def users():
    return [f"user{i}@example.test" for i in range(USERS)]


def message(user, n):
    """Exactly SIZE bytes, distinct per (user, n)."""
    head = (f"From: bench@remote.test\r\nTo: {user}\r\nSubject: message {n}\r\n"
            f"Date: Sat, 28 Nov 2026 12:00:00 +0000\r\nMessage-ID: <{n}.{user}@remote.test>\r\n\r\n")
    line = "The quick brown fox jumps over the lazy dog, again and again.\r\n"
    body = head
    while len(body) + len(line) <= SIZE - 2:
        body += line
    body += "x" * (SIZE - 2 - len(body)) + "\r\n"
    assert len(body) == SIZE
    return body.encode()


def quote(s):
    return b'"' + s.encode().replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


# ---------------------------------------------------------------- the client

class Failed(Exception):
    pass


class Imap:
    """A minimal synchronous IMAP client: one command at a time, literals
    read by length, LITERAL+ for APPEND."""

    def __init__(self, port, source=None):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=60,
                                          source_address=(source, 0) if source else None)
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf, self.pos, self.seq = b"", 0, 0
        greeting = self._line()
        if not greeting.startswith(b"* OK"):
            raise Failed(f"greeting: {greeting[:200]!r}")

    def _fill(self):
        chunk = self.s.recv(262144)
        if not chunk:
            raise Failed("connection closed by the server")
        self.buf = self.buf[self.pos:] + chunk
        self.pos = 0

    def _line(self):
        while True:
            i = self.buf.find(b"\r\n", self.pos)
            if i >= 0:
                line = self.buf[self.pos:i]
                self.pos = i + 2
                return line
            self._fill()

    def _bytes(self, n):
        while len(self.buf) - self.pos < n:
            self._fill()
        data = self.buf[self.pos:self.pos + n]
        self.pos += n
        return data

    def cmd(self, text, literal=None):
        """Runs a command; returns [(line, [literals])] of its untagged
        responses. Anything but a tagged OK raises Failed."""
        self.seq += 1
        tag = b"a%d" % self.seq
        if literal is None:
            self.s.sendall(tag + b" " + text + b"\r\n")
        else:
            self.s.sendall(tag + b" " + text + b" {%d+}\r\n" % len(literal) + literal + b"\r\n")
        untagged = []
        while True:
            parts, lits = [self._line()], []
            while parts[-1].endswith(b"}") and b"{" in parts[-1]:
                j = parts[-1].rfind(b"{")
                lits.append(self._bytes(int(parts[-1][j + 1:-1])))
                parts.append(self._line())
            line = b"".join(parts)
            if line.startswith(tag + b" "):
                if not line.startswith(tag + b" OK"):
                    raise Failed(f"{text[:60]!r}: {line[:300]!r}")
                self.last = line
                return untagged
            untagged.append((line, lits))

    def login(self, user):
        self.cmd(b"LOGIN " + quote(user) + b" " + quote(PASSWORD))


EXISTS = re.compile(rb"^\* (\d+) EXISTS$")
APPENDUID = re.compile(rb"\[APPENDUID \d+ (\d+)\]")


class Mailbox:
    """One kept-open session on one user's INBOX, and what the client knows
    of it (the UIDs, ascending)."""

    def __init__(self, port, user, n):
        self.user, self.n = user, n
        self.c = Imap(port)
        self.c.login(user)
        self.c.cmd(b"SELECT INBOX")
        self.c.cmd(b"EXPUNGE")  # a round cut short by a failure may have left a \Deleted message
        self.uids = []
        for line, _ in self.c.cmd(b"UID SEARCH ALL"):
            if line.startswith(b"* SEARCH"):
                self.uids = sorted(int(x) for x in line.split()[2:])
        if len(self.uids) != MESSAGES:
            raise Failed(f"{user}: {len(self.uids)} messages, expected {MESSAGES}")


def one_round(mb, rng, lat):
    """The 7 commands; returns how many ran."""
    c, t = mb.c, time.perf_counter

    def timed(name, text, literal=None):
        t0 = t()
        out = c.cmd(text, literal)
        lat[name].append(t() - t0)
        return out

    out = timed("SELECT", b"SELECT INBOX")
    exists = [int(m.group(1)) for m in (EXISTS.match(l) for l, _ in out) if m]
    if exists != [len(mb.uids)]:
        raise Failed(f"{mb.user}: SELECT said EXISTS {exists}, expected {len(mb.uids)}")
    pick = sorted(rng.sample(mb.uids, 5))
    out = timed("FETCH envelope", b"UID FETCH " + b",".join(b"%d" % u for u in pick) + b" (UID FLAGS ENVELOPE)")
    got = [l for l, _ in out if b" FETCH (" in l and b"ENVELOPE (" in l]
    if len(got) != 5:
        raise Failed(f"{mb.user}: FETCH ENVELOPE answered {len(got)} of 5: {out[:2]!r}")
    u = rng.choice(mb.uids)
    out = timed("FETCH body", b"UID FETCH %d (BODY.PEEK[])" % u)
    bodies = [lits[0] for l, lits in out if b" FETCH (" in l and lits]
    if len(bodies) != 1 or len(bodies[0]) != SIZE:
        raise Failed(f"{mb.user}: FETCH BODY[] of {u}: {[len(b) for b in bodies]}")
    timed("STORE \\Seen", b"UID STORE %d +FLAGS.SILENT (\\Seen)" % u)
    mb.n += 1
    timed("APPEND", b"APPEND INBOX", message(mb.user, mb.n))
    m = APPENDUID.search(c.last)
    if not m or int(m.group(1)) <= mb.uids[-1]:
        raise Failed(f"{mb.user}: APPEND answered {c.last!r}")
    mb.uids.append(int(m.group(1)))
    oldest = mb.uids[0]
    timed("STORE \\Deleted", b"UID STORE %d +FLAGS.SILENT (\\Deleted)" % oldest)
    out = timed("EXPUNGE", b"EXPUNGE")
    gone = [l for l, _ in out if l.endswith(b" EXPUNGE")]
    if gone != [b"* 1 EXPUNGE"]:
        raise Failed(f"{mb.user}: EXPUNGE answered {gone}, expected ['* 1 EXPUNGE']")
    mb.uids.pop(0)
    return 7


NAMES = ["SELECT", "FETCH envelope", "FETCH body", "STORE \\Seen", "APPEND", "STORE \\Deleted", "EXPUNGE"]


def client(i, port, start, may_quit, ready, results):
    try:
        rng = random.Random(1000 + i)
        mine = users()[i * (USERS // CLIENTS):(i + 1) * (USERS // CLIENTS)]
        # Message numbers for APPEND: distinct across rounds and runs, so
        # that no appended message is a copy of another (Mailroom's blob
        # store is content-addressed).
        boxes = [Mailbox(port, u, rng.randrange(10**6, 10**12) + int(time.time() * 1000) * 1000) for u in mine]
        lat = {n: [] for n in NAMES}
        ready.put((i, None))
        start.wait()
        c0, t0 = os.times(), time.monotonic()
        deadline, ops = t0 + SECS, 0
        while time.monotonic() < deadline:
            ops += one_round(rng.choice(boxes), rng, lat)
        t1, c1 = time.monotonic(), os.times()
        results.put((i, ops, t0, t1, (c1.user + c1.system) - (c0.user + c0.system), lat, None))
        may_quit.wait()
        for b in boxes:
            b.c.cmd(b"LOGOUT")
    except Exception as e:  # reported to the parent, which fails the run
        ready.put((i, f"{type(e).__name__}: {e}"))
        results.put((i, 0, 0, 0, 0, {}, f"{type(e).__name__}: {e}"))


# ------------------------------------------------------------- CPU and memory

def proc_cpu(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK
    except (OSError, IndexError):
        return 0.0


def proc_status(pid, key):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def proc_pss(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def descendants(pid):
    children = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def machine_cpu():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return sum(v[:8]) / TICK, idle / TICK


def psql(sql, db="postgres"):
    return subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", db, "-AtXqc", sql],
                          check=True, capture_output=True, text=True).stdout.strip()


def pg_pids(db):
    """The bench database's backends and PostgreSQL's background processes."""
    rows = psql(f"SELECT pid FROM pg_stat_activity WHERE datname = '{db}' OR "
                "(datname IS NULL AND backend_type <> 'client backend')")
    return [int(x) for x in rows.split()]


def pg_stats(db):
    row = psql("SELECT xact_commit, tup_returned, tup_fetched, tup_inserted, tup_updated, tup_deleted "
               f"FROM pg_stat_database WHERE datname = '{db}'")
    return [int(x) for x in row.split("|")]


def mib(b):
    return f"{b / 2**20:.0f} MiB"


# ---------------------------------------------------------------- mixed load

def measure(server, label, client=client, clients=CLIENTS, secs=SECS):
    """One measurement of `server`; prints it and returns (ops/s, server and
    database CPU µs per op, protocol errors). `client` runs in `clients`
    processes (see client() for its protocol); a result may carry an 8th
    item, a list of protocol errors counted (not raised) by the client."""
    port, db = server.port, server.db
    ctx = mp.get_context("fork")
    start, may_quit, ready, results = ctx.Event(), ctx.Event(), ctx.Queue(), ctx.Queue()
    procs = [ctx.Process(target=client, args=(i, port, start, may_quit, ready, results)) for i in range(clients)]
    for p in procs:
        p.start()
    for _ in procs:
        _, error = ready.get(timeout=600)
        if error:
            start.set(); may_quit.set()
            for p in procs:
                p.join(60)
            raise Failed(error)
    spids = server.pids()
    ppids = pg_pids(db) if db else []
    s0 = sum(proc_cpu(p) for p in spids)
    g0 = sum(proc_cpu(p) for p in ppids)
    m0 = machine_cpu()
    st0 = pg_stats(db) if db else None
    start.set()
    res = [results.get(timeout=secs + 600) for _ in procs]
    s1 = sum(proc_cpu(p) for p in spids)
    g1 = sum(proc_cpu(p) for p in ppids)
    m1 = machine_cpu()
    load = os.getloadavg()
    may_quit.set()
    for p in procs:
        p.join(60)
    errors = [x[6] for x in res if x[6]]
    if errors:
        raise Failed("; ".join(errors))
    ops = sum(x[1] for x in res)
    elapsed = max(x[3] for x in res) - min(x[2] for x in res)
    rate = ops / elapsed
    client_cpu = sum(x[4] for x in res)
    wall = (m1[0] - m0[0])
    busy = wall - (m1[1] - m0[1])
    names = list(dict.fromkeys(n for x in res for n in x[5]))
    lat = {n: sorted(v for x in res for v in x[5][n]) for n in names}
    protocol = [e for x in res for e in (x[7] if len(x) > 7 else [])]
    pct = lambda v, q: v[min(len(v) - 1, int(q * len(v)))] * 1000 if v else 0
    other = busy - (s1 - s0) - (g1 - g0) - client_cpu
    print(f"  {label}: {ops} ops in {elapsed:.1f} s = {rate:.0f} ops/s; CPU s: server {s1 - s0:.1f}, "
          f"postgres {g1 - g0:.1f}, clients {client_cpu:.1f}, anything else {max(0, other):.1f} (of "
          f"{wall:.0f} s on {os.cpu_count()} cores, busy {100 * busy / wall:.0f}%); load {load[0]:.2f}", flush=True)
    print("    per op, µs CPU: server %.0f, postgres %.0f, clients %.0f; latency ms p50/p99: %s" % (
        1e6 * (s1 - s0) / ops, 1e6 * (g1 - g0) / ops, 1e6 * client_cpu / ops,
        ", ".join(f"{n} {pct(lat[n], .5):.2f}/{pct(lat[n], .99):.1f}" for n in names)), flush=True)
    if protocol:
        print(f"    PROTOCOL ERRORS: {len(protocol)}; first: " + " | ".join(protocol[:5]), flush=True)
    if db:
        time.sleep(1.5)  # backends report their statistics within a second
        d = [b - a for a, b in zip(st0, pg_stats(db))]
        print("    PostgreSQL per op: %.2f commits, %.1f tuples returned, %.1f fetched, %.2f inserted, "
              "%.2f updated, %.2f deleted" % tuple(x / ops for x in d), flush=True)
    return rate, 1e6 * ((s1 - s0) + (g1 - g0)) / ops, len(protocol)


def fill(port):
    """APPENDs MESSAGES messages to every INBOX, 10 users at a time."""
    def work(us):
        for u in us:
            c = Imap(port)
            c.login(u)
            for n in range(MESSAGES):
                c.cmd(b"APPEND INBOX", message(u, n))
            c.cmd(b"LOGOUT")
    chunks = [users()[i::10] for i in range(10)]
    errors = []
    def run(us):
        try:
            work(us)
        except Exception as e:
            errors.append(e)
    ts = [threading.Thread(target=run, args=(c,)) for c in chunks]
    for t in ts: t.start()
    for t in ts: t.join()
    if errors:
        raise errors[0]


# ---------------------------------------------------------------- IDLE phase

async def idle_phase(port, name, mem, cpu):
    """Opens IDLE sessions; mem() -> dict of figures, cpu() -> server CPU s."""
    out = {}
    sem = asyncio.Semaphore(LOGIN_CONCURRENCY)
    all_users = users()

    async def until_tagged(r, tag):
        while True:
            line = await r.readline()
            if not line:
                raise Failed("closed")
            if line.startswith(tag + b" "):
                if not line.startswith(tag + b" OK"):
                    raise Failed(line.decode(errors="replace"))
                return

    async def open_one(i):
        user = all_users[i % USERS]
        async with sem:
            r, w = await asyncio.open_connection("127.0.0.1", port, local_addr=(SOURCES[i % len(SOURCES)], 0),
                                                 limit=1 << 20)
            greeting = await r.readline()
            if not greeting.startswith(b"* OK"):
                raise Failed(f"greeting {greeting!r}")
            w.write(b"a LOGIN " + quote(user) + b" " + quote(PASSWORD) + b"\r\n")
            await until_tagged(r, b"a")
            w.write(b"b SELECT INBOX\r\n")
            await until_tagged(r, b"b")
            w.write(b"c IDLE\r\n")
            line = await r.readline()
            if not line.startswith(b"+"):
                raise Failed(f"IDLE answered {line!r}")
            return (user, r, w)

    base = mem()
    out["before"] = base
    t0 = time.monotonic()
    results = await asyncio.gather(*(open_one(i) for i in range(IDLE)), return_exceptions=True)
    opened = time.monotonic() - t0
    errors = [r for r in results if isinstance(r, BaseException)]
    sessions = [r for r in results if not isinstance(r, BaseException)]
    out["opened"], out["errors"], out["open_secs"] = len(sessions), len(errors), opened
    if errors:
        log(f"{name}: {len(errors)} sessions failed, first: {errors[0]!r}")
    await asyncio.sleep(10)
    out["with"] = mem()

    # Push check: a message to PUSH_USERS users in turn; every idling session
    # of that user must see EXISTS.
    got = {}

    async def watch(k, user, r):
        while True:
            line = await r.readline()
            if not line:
                got.setdefault(("closed", user), []).append(k)
                return
            if line.endswith(b" EXISTS\r\n"):
                got.setdefault(user, {}).setdefault(k, time.monotonic())

    watchers = [asyncio.ensure_future(watch(k, u, r)) for k, (u, r, _) in enumerate(sessions)]
    per_user = {}
    for k, (u, _, _) in enumerate(sessions):
        per_user.setdefault(u, []).append(k)
    sample = [u for u in all_users[::USERS // PUSH_USERS]][:PUSH_USERS]
    idle_cpu0 = cpu()
    await asyncio.sleep(5)
    idle_cpu = cpu() - idle_cpu0
    latencies, delivered, expected = [], 0, 0
    appenders = []
    for u in sample:  # logged in first: their logins are not part of the events' cost
        c = await asyncio.to_thread(Imap, port)
        await asyncio.to_thread(c.login, u)
        appenders.append(c)
    c0 = cpu()
    t_events = time.monotonic()
    for n, (u, c) in enumerate(zip(sample, appenders)):
        t = time.monotonic()
        await asyncio.to_thread(c.cmd, b"APPEND INBOX", message(u, 900000 + n))
        want = set(per_user.get(u, []))
        expected += len(want)
        deadline = t + 60
        while time.monotonic() < deadline and not want <= set(got.get(u, {})):
            await asyncio.sleep(0.005)
        seen = got.get(u, {})
        delivered += len(want & set(seen))
        if seen:
            latencies.append(max(seen.values()) - t)
    event_secs = time.monotonic() - t_events
    event_cpu = cpu() - c0 - idle_cpu / 5 * event_secs
    for c in appenders:
        await asyncio.to_thread(c.cmd, b"LOGOUT")
    out["push"] = (delivered, expected, latencies, event_cpu / len(sample), idle_cpu / 5)
    for wt in watchers:
        wt.cancel()
    for _, _, w in sessions:
        w.close()
    await asyncio.sleep(10)
    out["after"] = mem()
    return out


def report_idle(name, o):
    b, w, a = o["before"], o["with"], o["after"]
    print(f"{name}: {o['opened']} IDLE sessions open ({o['errors']} failed) in {o['open_secs']:.0f} s", flush=True)
    for key in b:
        f = (lambda x: str(x)) if key.endswith("(count)") else mib
        print(f"  {key}: before {f(b[key])}, with the sessions {f(w[key])}, "
              f"after closing them {f(a[key])}", flush=True)
    delivered, expected, lat, cpu_per_event, idle_cpu = o["push"]
    lat = sorted(lat)
    print(f"  push: {delivered} of {expected} idling sessions of {PUSH_USERS} users got EXISTS; "
          f"time to reach all of one user's sessions: median {1000 * lat[len(lat) // 2]:.0f} ms, "
          f"max {1000 * lat[-1]:.0f} ms; server CPU per event {1000 * cpu_per_event:.0f} ms "
          f"(idle: {1000 * idle_cpu:.0f} ms/s)" if lat else "  push: no EXISTS seen", flush=True)


# --------------------------------------------------------------- the servers

class MailroomServer:
    """`mailroom serve` on a fresh PostgreSQL database, or with store="sqlite"
    on the embedded store (no store.url: the default); `fill(port)` puts the
    mailboxes' contents in once the users exist."""

    def __init__(self, store="postgres", fill=None):
        self.store, self.fill = store, fill or globals()["fill"]
        self.name = "mailroom" if store == "postgres" else f"mailroom-{store}"
        self.db = None

    def start(self):
        subprocess.run(["cargo", "build", "--release", "--locked", "-p", "mailroom"], cwd=root, check=True,
                       env={**os.environ, "CARGO_TARGET_DIR": target}, stdout=sys.stderr)
        binary = os.path.join(target, "release", "mailroom")
        self.work = tempfile.mkdtemp(prefix="imap-bench-")
        store = {}
        if self.store == "postgres":
            self.db = f"mailroom_bench_{os.getpid()}"
            psql(f"CREATE DATABASE {self.db}")
            store = {"MAILROOM_STORE__URL": f"postgres://postgres@127.0.0.1:5432/{self.db}" + STORE_PARAMS}
        smtp, admin, self.port = free_port(), free_port(), free_port()
        env = {**os.environ, **store,
               "MAILROOM_MTA__LISTEN": f'["127.0.0.1:{smtp}"]', "MAILROOM_MTA__GRPC_LISTEN": "127.0.0.1:0",
               "MAILROOM_ADMIN__LISTEN": f"127.0.0.1:{admin}", "MAILROOM_MDA__LISTEN": "127.0.0.1:0",
               "MAILROOM_SUBMISSION__LISTEN": "[]", "MAILROOM_SUBMISSION__LISTEN_TLS": "[]",
               "MAILROOM_POP3__LISTEN": "[]", "MAILROOM_POP3__LISTEN_TLS": "[]",
               "MAILROOM_IMAP__LISTEN": f'["127.0.0.1:{self.port}"]', "MAILROOM_IMAP__LISTEN_TLS": "[]",
               "MAILROOM_LIMITS__MAX_CONNECTIONS": "12000", "MAILROOM_LIMITS__MAX_CONNECTIONS_PER_IP": "1000",
               "MAILROOM_TELEMETRY__LOG_FILTER": "warn"}
        self.proc = subprocess.Popen([binary, "--data-dir", f"{self.work}/data", "serve"], env=env,
                                     stdout=subprocess.PIPE, stderr=open(f"{self.work}/stderr.log", "w"), text=True)
        while "Admin token" not in self.proc.stdout.readline():
            if self.proc.poll() is not None:
                raise Failed("mailroom serve exited: " + open(f"{self.work}/stderr.log").read()[-2000:])
        cli = [binary, "--data-dir", f"{self.work}/data", "--admin-url", f"http://127.0.0.1:{admin}"]
        subprocess.run(cli + ["domain", "add", "example.test"], check=True, stdout=subprocess.DEVNULL)
        for u in users():
            subprocess.run(cli + ["user", "add", u], input=PASSWORD + "\n", text=True, check=True,
                           stdout=subprocess.DEVNULL)
        self.fill(self.port)
        count = psql('SELECT count(*) FROM messages', self.db) if self.db else "?"
        log(f"{self.name}: filled ({count} messages), pid {self.proc.pid}, "
            f"127.0.0.1:{self.port}, database {self.db or self.work + '/data'}")

    def pids(self):
        return [self.proc.pid]

    def cpu(self):
        return proc_cpu(self.proc.pid)

    def mem(self):
        backends = [int(x) for x in psql(f"SELECT pid FROM pg_stat_activity WHERE datname = '{self.db}'").split()
                    ] if self.db else []
        return {"mailroom VmRSS": proc_status(self.proc.pid, "VmRSS"),
                "mailroom VmHWM (peak)": proc_status(self.proc.pid, "VmHWM"),
                "PostgreSQL backends of the bench database, PSS": sum(proc_pss(p) for p in backends),
                "PostgreSQL backends of the bench database (count)": len(backends)}

    def stop(self):
        if getattr(self, "proc", None):
            self.proc.terminate(); self.proc.wait()
            errors = open(f"{self.work}/stderr.log").read()
            if errors.strip():
                log(f"{self.name}'s log (warnings and errors):\n" + errors[-4000:])
            self.proc = None
        if getattr(self, "db", None):
            psql(f"DROP DATABASE IF EXISTS {self.db} WITH (FORCE)")
            self.db = None
        if getattr(self, "work", None):
            shutil.rmtree(self.work, ignore_errors=True)
            self.work = None


class DovecotServer:
    name = "dovecot"
    db = None

    def __init__(self, fill=None):
        self.fill = fill or globals()["fill"]

    @staticmethod
    def available():
        return shutil.which("dovecot") and os.path.exists("/usr/lib/dovecot/imap")

    def start(self):
        nobody = pwd.getpwnam("nobody")
        d = self.dir = tempfile.mkdtemp(prefix="dovecot-imap-bench-", dir=target)
        os.chmod(d, 0o755)
        self.port = port = free_port()
        # One system uid per user (UID_BASE + n, no passwd entry needed): the
        # kernel's inotify limit (fs.inotify.max_user_instances, 128 here) is
        # per uid, and each idling imap process takes one instance; past the
        # limit Dovecot falls back to polling every 30 s and cannot hibernate.
        os.makedirs(f"{d}/mail")
        os.chmod(f"{d}/mail", 0o755)
        with open(f"{d}/users", "w") as f:
            for n, u in enumerate(users()):
                home = f"{d}/mail/{u.split('@')[0]}"
                os.makedirs(home)
                os.chown(home, UID_BASE + n, nobody.pw_gid)
                f.write(f"{u}:{{PLAIN}}{PASSWORD}:{UID_BASE + n}:{nobody.pw_gid}::{home}::\n")
        conf = f"""instance_name = mailroom-imap-bench
base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
listen = 127.0.0.1
protocols = imap
ssl = no
disable_plaintext_auth = no
first_valid_uid = {UID_BASE}
last_valid_uid = {UID_BASE + USERS}
passdb {{
  driver = passwd-file
  args = {d}/users
}}
userdb {{
  driver = passwd-file
  args = {d}/users
}}
mail_location = maildir:~/Maildir
# Room for the IDLE phase: 100 sessions per user and address, 10,000 in all.
mail_max_userip_connections = 1000
default_client_limit = 12000
imap_hibernate_timeout = 5s
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
  process_limit = 1000
}}
service imap {{
  process_limit = 12000
  unix_listener imap-master {{
    user = $default_internal_user
  }}
}}
service anvil {{
  client_limit = 12000
}}
"""
        with open(f"{d}/dovecot.conf", "w") as f:
            f.write(conf)
        subprocess.run(["dovecot", "-c", f"{d}/dovecot.conf"], check=True)
        self.running = True
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), 1).close(); break
            except OSError:
                time.sleep(0.1)
        for _ in range(100):
            try:
                with open(f"{d}/run/master.pid") as f:
                    self.master = int(f.read().split()[0])
                break
            except (OSError, IndexError, ValueError):
                time.sleep(0.1)
        self.fill(port)
        log(f"dovecot: filled, master pid {self.master}, 127.0.0.1:{port}")

    def pids(self):
        return descendants(self.master)

    def cpu(self):
        return sum(proc_cpu(p) for p in descendants(self.master))

    def mem(self):
        pids = descendants(self.master)
        return {"dovecot, all processes, sum of VmRSS": sum(proc_status(p, "VmRSS") for p in pids),
                "dovecot, all processes, sum of PSS": sum(proc_pss(p) for p in pids),
                "dovecot processes (count)": len(pids)}

    def stop(self):
        if not getattr(self, "running", False):
            return
        self.running = False
        subprocess.run(["doveadm", "-c", f"{self.dir}/dovecot.conf", "stop"])
        try:
            warnings = [l for l in open(f"{self.dir}/dovecot.log") if "rror" in l or "arning" in l or "atal" in l]
            warnings = [l for l in warnings if "Killed with signal 15" not in l]
            if warnings:
                log(f"dovecot.log: {len(warnings)} warnings/errors, last:\n" + "".join(warnings[-5:]))
        except OSError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


def raise_fd_limit():
    """Soft limit up to the hard one (and the hard one to 65536 when allowed)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(hard, 65536), max(hard, 65536)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if limit < IDLE + 1000:
        raise SystemExit(f"the file descriptor limit ({limit}) is too low for {IDLE} sessions: raise it "
                         f"(ulimit -n) or set IMAP_BENCH_IDLE lower")


def print_finished():
    print(f"finished {time.strftime('%Y-%m-%dT%H:%MZ', time.gmtime())}; load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)


def main():
    raise_fd_limit()
    started = time.strftime('%Y-%m-%dT%H:%MZ', time.gmtime())
    commit = subprocess.run(["git", "-C", root, "describe", "--always", "--dirty"], capture_output=True,
                            text=True).stdout.strip() or "(not a git checkout)"
    print(f"IMAP mixed workload: {CLIENTS} clients x {USERS // CLIENTS} kept-open sessions, {USERS} users x "
          f"{MESSAGES} messages of {SIZE} bytes, {SECS:.0f} s per measurement, best of {ROUNDS}; "
          f"{os.cpu_count()} cores; mailroom source {root} {commit}; started {started}", flush=True)
    servers = [MailroomServer(STORE)]
    mr = servers[0].name
    if SKIP_PEER:
        log("dovecot: skipped (IMAP_BENCH_SKIP_PEER=1)")
    elif not DovecotServer.available():
        log("dovecot: skipped (install dovecot-core and dovecot-imapd)")
    else:
        servers.append(DovecotServer())
    try:
        for s in servers:
            s.start()
        # Measurements alternate between the servers, so that other work on
        # the machine disturbs both alike; both stay up meanwhile (idle).
        rates = {s.name: [] for s in servers}
        for r in range(ROUNDS):
            for s in servers:
                rates[s.name].append(measure(s, f"{s.name} {r + 1}"))
        if os.environ.get("IMAP_BENCH_KEEP") == "1":
            log("servers are still up; press Enter to go on")
            sys.stdin.readline()
        m = max(rates[mr])
        print(f"== best: {mr} {m[0]:.0f} ops/s", flush=True)
        if "dovecot" in rates:
            v = max(rates["dovecot"])
            pairs = [f"{a[0] / b[0]:.2f}" for a, b in zip(rates[mr], rates["dovecot"])]
            cpu = [f"{a[1] / b[1]:.1f}" for a, b in zip(rates[mr], rates["dovecot"])]
            print(f"== best: dovecot  {v[0]:.0f} ops/s; ratio {mr}/dovecot {m[0] / v[0]:.2f} (target >= {1.5 if STORE == 'postgres' else 1.0}); "
                  f"ratio in each pair of measurements {', '.join(pairs)}; server CPU per op, mailroom+postgres over "
                  f"dovecot: {', '.join(cpu)}", flush=True)
        if IDLE:
            for s in servers:
                if s.name == "dovecot" and not PEER_IDLE:
                    continue
                o = asyncio.run(idle_phase(s.port, s.name, s.mem, s.cpu))
                threads = proc_status(s.proc.pid, "Threads") // 1024 if s.name == mr else None
                s.stop()
                report_idle(s.name, o)
                if s.name == mr:
                    rss = o["with"]["mailroom VmRSS"]
                    print(f"  mailroom threads with the sessions: {threads}", flush=True)
                    print(f"== mailroom resident with {o['opened']} IDLE sessions: {mib(rss)} "
                          f"({'under' if rss < 2**30 else 'NOT under'} 1 GiB); "
                          f"{(rss - o['before']['mailroom VmRSS']) / max(1, o['opened']) / 1024:.1f} KiB per "
                          f"session over the resident size before them", flush=True)
    finally:
        for s in servers:
            s.stop()
    print_finished()


if __name__ == "__main__":
    main()
