//! MDA delivery benchmark: deliveries per second into PostgreSQL through the
//! real gRPC `Delivery` service, next to Dovecot delivering the same load
//! over LMTP into Maildir, in the same run.
//!
//! Run it with (see docs/BENCHMARKS.md):
//!
//! ```sh
//! CARGO_TARGET_DIR=/work/target-bench nice -n 19 cargo bench -p mailroom-mda --bench deliver
//! ```
//!
//! What it does:
//! * Mailroom: a fresh PostgreSQL database (`TestDb::postgres`, dropped at
//!   the end), one domain and [`ACCOUNTS`] accounts, the Delivery service
//!   served in-process on 127.0.0.1:0 exactly as `mailroom serve` serves it,
//!   driven by real gRPC clients over one HTTP/2 channel.
//! * Dovecot (the peer, optional): its own instance from its own
//!   configuration file in a temporary directory on the same disk, the same
//!   accounts in a `passwd-file`, Maildir, an LMTP listener on a free port,
//!   driven by LMTP clients (one TCP connection each, one transaction after
//!   the other, as Postfix's LMTP client does with connection caching).
//!   Skipped, with a line saying why, when `dovecot` is not installed.
//! * Every delivery is one distinct 4 KiB message (distinct Message-ID, so
//!   Mailroom's content-addressed blobs cannot deduplicate them) to one
//!   recipient, accounts taken round-robin, queue ids never repeated.
//! * A warm-up, then 1 and 20 concurrent callers for each system, alternating
//!   Mailroom and Dovecot so that both see the same disk.
//!
//! Knobs (environment): `MAILROOM_BENCH_DELIVERIES` (per measurement, default
//! 2000), `MAILROOM_BENCH_MAX_SECS` (time bound per measurement, default 120),
//! `MAILROOM_BENCH_SKIP_PEER=1` (Mailroom only), `MAILROOM_BENCH_LATENCIES=DIR`
//! (write every latency, in µs, to `DIR/<system>-<callers>.txt`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use mailroom_address::{Address, Domain};
use mailroom_rpc::delivery::delivery_client::DeliveryClient;
use mailroom_rpc::delivery::{DeliverRequest, Outcome};
use mailroom_rpc::internal::{AttachCredential, InternalSecret, Role};
use mailroom_store::testing::TestDb;
use sqlx::Connection as _;
use sqlx::postgres::PgConnection;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tonic::service::RoutesBuilder;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// Size of every message, in bytes.
const MESSAGE_SIZE: usize = 4096;
/// Accounts the deliveries go to, round-robin.
const ACCOUNTS: usize = 100;
/// The domain of the accounts.
const DOMAIN: &str = "bench.test";
/// Deliveries of the warm-up, with the largest concurrency.
const WARMUP: usize = 300;
/// The concurrencies measured.
const CONCURRENCY: [usize; 2] = [1, 20];

type AnyError = Box<dyn std::error::Error + Send + Sync>;

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The `seq`th message: exactly [`MESSAGE_SIZE`] bytes, CRLF line ends,
/// no line starting with a dot, distinct from every other `seq`.
fn message(seq: u64, to: &str) -> Vec<u8> {
    let mut m = format!(
        "From: Bench Sender <sender@remote.test>\r\nTo: {to}\r\nSubject: benchmark message {seq}\r\n\
         Date: Thu, 01 Jan 2026 00:00:00 +0000\r\nMessage-ID: <bench-{seq}@remote.test>\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
    )
    .into_bytes();
    const LINE: &[u8] = b"All work and no play makes Jack a dull boy. All work and no play.\r\n";
    while m.len() + LINE.len() <= MESSAGE_SIZE {
        m.extend_from_slice(LINE);
    }
    let rest = MESSAGE_SIZE - m.len();
    if rest >= 2 {
        m.extend(std::iter::repeat_n(b'x', rest - 2));
        m.extend_from_slice(b"\r\n");
    } else {
        // One byte short of a line: lengthen the last line by one.
        m.truncate(m.len() - 2);
        m.extend_from_slice(b"y\r\n");
    }
    debug_assert_eq!(m.len(), MESSAGE_SIZE);
    m
}

fn account(i: u64) -> String {
    format!("user{}@{DOMAIN}", i % ACCOUNTS as u64)
}

/// What one measurement produced.
#[derive(Debug, Default)]
struct Figures {
    ok: usize,
    failed: usize,
    first_failure: Option<String>,
    elapsed: Duration,
    latencies: Vec<Duration>,
    /// The whole machine's CPU during the measurement: (busy %, iowait %).
    cpu: Option<(f64, f64)>,
}

impl Figures {
    fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((self.latencies.len() as f64) * p / 100.0).ceil() as usize;
        self.latencies[rank.clamp(1, self.latencies.len()) - 1]
    }

    /// Writes every latency (µs, sorted) to `$MAILROOM_BENCH_LATENCIES/<name>.txt`
    /// when that variable names a directory.
    fn dump(&self, name: &str) {
        let Some(dir) = std::env::var_os("MAILROOM_BENCH_LATENCIES") else {
            return;
        };
        let text: String = self
            .latencies
            .iter()
            .map(|d| format!("{}\n", d.as_micros()))
            .collect();
        let path = PathBuf::from(dir).join(format!("{name}.txt"));
        if let Err(e) = std::fs::write(&path, text) {
            eprintln!("cannot write {}: {e}", path.display());
        }
    }

    fn line(&self, system: &str, callers: usize) -> String {
        let mut s = format!(
            "{system:<9} callers={callers:<3} delivered={:<5} elapsed={:>7.2}s  rate={:>8.1} msg/s  p50={:>7.2}ms  p99={:>7.2}ms",
            self.ok,
            self.elapsed.as_secs_f64(),
            self.rate(),
            ms(self.percentile(50.0)),
            ms(self.percentile(99.0)),
        );
        if let Some((busy, iowait)) = self.cpu {
            s.push_str(&format!(
                "  machine cpu busy={busy:.0}% iowait={iowait:.0}%"
            ));
        }
        if self.failed > 0 {
            s.push_str(&format!(
                "  FAILED={} (first: {})",
                self.failed,
                self.first_failure.as_deref().unwrap_or("?")
            ));
        }
        s
    }
}

/// (busy, iowait, total) jiffies of all CPUs, from /proc/stat.
fn cpu_times() -> Option<(u64, u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let v: Vec<u64> = text
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let total: u64 = v.iter().sum();
    let (idle, iowait) = (*v.get(3)?, *v.get(4)?);
    Some((total - idle - iowait, iowait, total))
}

fn cpu_share(
    before: Option<(u64, u64, u64)>,
    after: Option<(u64, u64, u64)>,
) -> Option<(f64, f64)> {
    let ((b0, w0, t0), (b1, w1, t1)) = (before?, after?);
    let dt = (t1 - t0).max(1) as f64;
    Some((100.0 * (b1 - b0) as f64 / dt, 100.0 * (w1 - w0) as f64 / dt))
}

/// The nice value of a process (`self` or a pid).
fn nice_of(pid: &str) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(16)?.parse().ok()
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Runs `total` deliveries (or until `max` has passed) with `callers`
/// concurrent callers; `make(i)` builds a caller and `deliver(caller, seq)`
/// performs one delivery, returning an error text on failure.
async fn drive<C, Mk, MkFut, D, DFut>(
    callers: usize,
    total: usize,
    max: Duration,
    next_seq: Arc<AtomicI64>,
    make: Mk,
    deliver: D,
) -> Figures
where
    C: Send + 'static,
    Mk: Fn(usize) -> MkFut,
    MkFut: std::future::Future<Output = Result<C, AnyError>>,
    D: Fn(C, u64) -> DFut + Send + Sync + Clone + 'static,
    DFut: std::future::Future<Output = (C, Result<(), String>)> + Send,
{
    let mut clients = Vec::with_capacity(callers);
    for i in 0..callers {
        clients.push(make(i).await.expect("set up a caller"));
    }
    let issued = Arc::new(AtomicUsize::new(0));
    let cpu_before = cpu_times();
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(callers);
    for client in clients {
        let (issued, next_seq, deliver) = (issued.clone(), next_seq.clone(), deliver.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = client;
            let mut f = Figures::default();
            while issued.fetch_add(1, Ordering::Relaxed) < total && start.elapsed() < max {
                let seq = next_seq.fetch_add(1, Ordering::Relaxed) as u64;
                let t = Instant::now();
                let (c, result) = deliver(client, seq).await;
                client = c;
                match result {
                    Ok(()) => {
                        f.ok += 1;
                        f.latencies.push(t.elapsed());
                    }
                    Err(e) => {
                        f.failed += 1;
                        f.first_failure.get_or_insert(e);
                    }
                }
            }
            (client, f)
        }));
    }
    let mut all = Figures::default();
    let mut finished = Vec::new();
    for t in tasks {
        let (client, f) = t.await.expect("caller task");
        finished.push(client);
        all.ok += f.ok;
        all.failed += f.failed;
        if all.first_failure.is_none() {
            all.first_failure = f.first_failure;
        }
        all.latencies.extend(f.latencies);
    }
    all.elapsed = start.elapsed();
    all.cpu = cpu_share(cpu_before, cpu_times());
    all.latencies.sort_unstable();
    drop(finished);
    all
}

// ---------------------------------------------------------------------------
// Mailroom
// ---------------------------------------------------------------------------

struct Mailroom {
    addr: SocketAddr,
    channel: Channel,
    credential: AttachCredential,
    db_url: String,
    stop: CancellationToken,
    server: tokio::task::JoinHandle<()>,
    seq: Arc<AtomicI64>,
}

async fn start_mailroom() -> Option<(Mailroom, TestDb, mailroom_store::Store)> {
    let (store, db) = TestDb::postgres().await?;
    store
        .add_domain(&Domain::parse(DOMAIN).unwrap())
        .await
        .expect("add the domain");
    for i in 0..ACCOUNTS {
        let a = Address::parse(&account(i as u64)).unwrap();
        store
            .create_account(&a, "a long benchmark password", 0)
            .await
            .expect("create an account");
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the gRPC listener");
    let addr = listener.local_addr().unwrap();
    let mut routes = RoutesBuilder::default();
    // The Delivery service admits only the MTA's role (issue 21).
    let secret = InternalSecret::generate();
    let credential = AttachCredential(secret.credential(Role::Mta));
    routes.add_service(mailroom_mda::service(
        store.clone(),
        "mx.bench.test".to_string(),
        secret,
    ));
    let stop = CancellationToken::new();
    let token = stop.clone();
    let server = tokio::spawn(async move {
        if let Err(e) =
            mailroom_rpc::serve(routes, &[mailroom_mda::SERVICE_NAME], listener, token).await
        {
            eprintln!("the Delivery gRPC server failed: {e}");
        }
    });
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("connect to the Delivery service");
    let db_url = db.url.clone();
    Some((
        Mailroom {
            addr,
            channel,
            credential,
            db_url,
            stop,
            server,
            seq: Arc::new(AtomicI64::new(1)),
        },
        db,
        store,
    ))
}

impl Mailroom {
    async fn run(&self, callers: usize, total: usize, max: Duration) -> Figures {
        let channel = self.channel.clone();
        let credential = self.credential.clone();
        drive(
            callers,
            total,
            max,
            self.seq.clone(),
            move |_| {
                let c = DeliveryClient::with_interceptor(channel.clone(), credential.clone())
                    .max_encoding_message_size(64 << 20);
                async move { Ok::<_, AnyError>(c) }
            },
            |mut client: DeliveryClient<InterceptedService<Channel, AttachCredential>>, seq| async move {
                let to = account(seq);
                let request = DeliverRequest {
                    queue_id: seq as i64,
                    sender: "sender@remote.test".into(),
                    recipients: vec![to.clone()],
                    message: message(seq, &to),
                    authentication_results: String::new(),
                    quarantine: false,
                };
                let result = match client.deliver(request).await {
                    Ok(resp) => {
                        let resp = resp.into_inner();
                        match resp.outcomes.first() {
                            Some(o) if o.outcome == Outcome::Delivered as i32 => Ok(()),
                            Some(o) => Err(format!("outcome {} {}", o.outcome, o.reason)),
                            None => Err("no outcome".into()),
                        }
                    }
                    Err(status) => Err(format!("gRPC {status}")),
                };
                (client, result)
            },
        )
        .await
    }

    async fn stored(&self) -> Result<i64, sqlx::Error> {
        let mut c = PgConnection::connect(&self.db_url).await?;
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM messages")
            .fetch_one(&mut c)
            .await?;
        let _ = c.close().await;
        Ok(n)
    }
}

/// PostgreSQL settings that decide what a commit costs.
async fn pg_settings(url: &str) -> Result<String, sqlx::Error> {
    let mut c = PgConnection::connect(url).await?;
    let mut parts = Vec::new();
    for name in [
        "server_version",
        "synchronous_commit",
        "fsync",
        "wal_sync_method",
        "commit_delay",
        "shared_buffers",
    ] {
        let v: String = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SHOW {name}")))
            .fetch_one(&mut c)
            .await?;
        parts.push(format!("{name}={v}"));
    }
    let _ = c.close().await;
    Ok(parts.join(" "))
}

/// Samples what the database's active backends wait on, every 20 ms, until
/// `done`; returns "event share%" lines, most frequent first.
async fn sample_waits(url: String, done: Arc<AtomicBool>) -> Result<Vec<String>, sqlx::Error> {
    let mut c = PgConnection::connect(&url).await?;
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut samples = 0usize;
    while !done.load(Ordering::Relaxed) {
        // A wait for an AccessExclusiveLock on "database 0" is the global
        // lock that a committing transaction which ran NOTIFY holds until
        // its commit is flushed: it serialises such commits.
        let rows: Vec<(Option<String>, Option<String>, bool)> = sqlx::query_as(
            "SELECT a.wait_event_type, a.wait_event,
                    EXISTS (SELECT 1 FROM pg_locks l
                            WHERE l.pid = a.pid AND NOT l.granted AND l.locktype = 'object'
                              AND l.classid = 'pg_database'::regclass AND l.objid = 0)
             FROM pg_stat_activity a
             WHERE a.datname = current_database() AND a.state = 'active'
               AND a.pid <> pg_backend_pid()",
        )
        .fetch_all(&mut c)
        .await?;
        samples += 1;
        for (kind, event, notify_lock) in rows {
            let key = match (kind, event) {
                (Some(k), Some(e)) if notify_lock => format!("{k}/{e} (NOTIFY commit lock)"),
                (Some(k), Some(e)) => format!("{k}/{e}"),
                _ => "running (no wait)".to_string(),
            };
            *counts.entry(key).or_default() += 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = c.close().await;
    let total: usize = counts.values().sum();
    let mut v: Vec<(String, usize)> = counts.into_iter().collect();
    v.sort_by_key(|b| std::cmp::Reverse(b.1));
    let mut lines = vec![format!(
        "{samples} samples, {:.1} active backends on average",
        total as f64 / samples.max(1) as f64
    )];
    lines.extend(
        v.into_iter()
            .take(6)
            .map(|(k, n)| format!("{k} {:.0}%", 100.0 * n as f64 / total.max(1) as f64)),
    );
    Ok(lines)
}

// ---------------------------------------------------------------------------
// Dovecot over LMTP
// ---------------------------------------------------------------------------

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Process ids of running programs called `name`.
fn running(name: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == name)
        })
        .collect()
}

/// (user name, uid, gid) from /etc/passwd.
fn passwd_entry(pred: impl Fn(&str, u32) -> bool) -> Option<(String, u32, u32)> {
    let text = std::fs::read_to_string("/etc/passwd").ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        let (uid, gid) = (f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?);
        pred(f[0], uid).then(|| (f[0].to_string(), uid, gid))
    })
}

fn own_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .nth(1)? // effective uid
        .parse()
        .ok()
}

struct Dovecot {
    dovecot: PathBuf,
    doveadm: PathBuf,
    config: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    version: String,
    seq: Arc<AtomicI64>,
    stopped: bool,
}

impl Dovecot {
    /// Starts a private Dovecot, or says why it cannot.
    async fn start() -> Result<Dovecot, String> {
        if std::env::var("MAILROOM_BENCH_SKIP_PEER").is_ok_and(|v| v == "1") {
            return Err("MAILROOM_BENCH_SKIP_PEER=1".into());
        }
        let dovecot = find_program("dovecot")
            .ok_or("`dovecot` is not installed (apt-get install -y dovecot-core dovecot-lmtpd)")?;
        let doveadm = find_program("doveadm").ok_or("`doveadm` is not installed")?;
        let others = running("dovecot");
        if !others.is_empty() {
            return Err(format!(
                "another Dovecot is running (pid {others:?}); this benchmark runs its own instance only when none is"
            ));
        }
        let version = std::process::Command::new(&dovecot)
            .arg("--version")
            .output()
            .map_err(|e| format!("cannot run {}: {e}", dovecot.display()))?;
        let version = String::from_utf8_lossy(&version.stdout).trim().to_string();

        // On the same disk as the build (not a tmpfs /tmp): fsync must cost
        // what it costs PostgreSQL.
        let dir = tempfile::Builder::new()
            .prefix("dovecot-bench-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .map_err(|e| format!("temporary directory: {e}"))?;
        let d = dir.path();
        let me = own_uid().ok_or("cannot read the process's uid")?;
        // Dovecot refuses to deliver as root: mail belongs to `nobody` when
        // we are root, to ourselves otherwise.
        let (internal, mail_uid, mail_gid) = if me == 0 {
            let (_, uid, gid) = passwd_entry(|name, _| name == "nobody")
                .ok_or("no `nobody` user to own the mail")?;
            (None, uid, gid)
        } else {
            let (name, uid, gid) =
                passwd_entry(|_, uid| uid == me).ok_or("our uid is not in /etc/passwd")?;
            (Some(name), uid, gid)
        };
        let io = |e: std::io::Error| format!("preparing {}: {e}", d.display());
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).map_err(io)?;
        std::fs::create_dir_all(d.join("mail")).map_err(io)?;
        std::os::unix::fs::chown(d.join("mail"), Some(mail_uid), Some(mail_gid)).map_err(io)?;

        let mut users = String::new();
        for i in 0..ACCOUNTS {
            let user = account(i as u64);
            let local = user.split('@').next().unwrap();
            users.push_str(&format!(
                "{user}:{{PLAIN}}a long benchmark password:{mail_uid}:{mail_gid}::{}::\n",
                d.join("mail").join(local).display()
            ));
        }
        std::fs::write(d.join("users"), users).map_err(io)?;

        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("finding a free port: {e}"))?
            .port();
        let internal_users = match &internal {
            Some(name) => format!("default_internal_user = {name}\ndefault_login_user = {name}\n"),
            None => String::new(),
        };
        let template = include_str!("../../../bench/dovecot-lmtp.conf");
        let config_text = template
            .replace("@DIR@", &d.display().to_string())
            .replace("@PORT@", &port.to_string())
            .replace("@FIRST_VALID_UID@", &mail_uid.min(500).to_string())
            .replace("@INTERNAL_USERS@", &internal_users);
        let config = d.join("dovecot.conf");
        std::fs::write(&config, config_text).map_err(io)?;

        // The master daemonizes and keeps the descriptors it was given:
        // no pipes (reading them to the end would wait for it to exit).
        let start_log = d.join("start.log");
        let stderr = std::fs::File::create(&start_log).map_err(io)?;
        let status = std::process::Command::new(&dovecot)
            .arg("-c")
            .arg(&config)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(stderr)
            .status()
            .map_err(|e| format!("cannot start dovecot: {e}"))?;
        let mut me = Dovecot {
            dovecot,
            doveadm,
            config,
            dir,
            port,
            version,
            seq: Arc::new(AtomicI64::new(1)),
            stopped: false,
        };
        if !status.success() {
            me.stopped = true;
            return Err(format!(
                "dovecot did not start ({status}): {}",
                std::fs::read_to_string(&start_log)
                    .unwrap_or_default()
                    .trim()
            ));
        }
        // Wait for the LMTP greeting.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match Lmtp::connect(port).await {
                Ok(c) => {
                    c.quit().await.ok();
                    break;
                }
                Err(e) if Instant::now() > deadline => {
                    me.stop();
                    return Err(format!(
                        "dovecot's LMTP listener on port {port} did not answer: {e}; log: {}",
                        std::fs::read_to_string(me.dir.path().join("dovecot.log"))
                            .unwrap_or_default()
                    ));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        Ok(me)
    }

    fn describe(&self) -> String {
        format!(
            "{} {} (LMTP on 127.0.0.1:{}, Maildir under {})",
            self.dovecot.display(),
            self.version,
            self.port,
            self.dir.path().display()
        )
    }

    async fn run(&self, clients: usize, total: usize, max: Duration) -> Figures {
        let port = self.port;
        drive(
            clients,
            total,
            max,
            self.seq.clone(),
            move |_| async move { Lmtp::connect(port).await.map_err(Into::into) },
            |mut c: Lmtp, seq| async move {
                let to = account(seq);
                let result = c
                    .deliver("sender@remote.test", &to, &message(seq, &to))
                    .await
                    .map_err(|e| e.to_string());
                (c, result)
            },
        )
        .await
    }

    /// Messages in every account's Maildir (new/ and cur/).
    fn stored(&self) -> usize {
        let mut n = 0;
        for i in 0..ACCOUNTS {
            let user = account(i as u64);
            let home = self
                .dir
                .path()
                .join("mail")
                .join(user.split('@').next().unwrap());
            for sub in ["Maildir/new", "Maildir/cur"] {
                n += std::fs::read_dir(home.join(sub))
                    .map(|d| d.count())
                    .unwrap_or(0);
            }
        }
        n
    }

    fn log_tail(&self, lines: usize) -> Vec<String> {
        let text = std::fs::read_to_string(self.dir.path().join("dovecot.log")).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    fn errors_in_log(&self) -> usize {
        std::fs::read_to_string(self.dir.path().join("dovecot.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("Error:") || l.contains("Fatal:") || l.contains("Panic:"))
            .count()
    }

    fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let status = std::process::Command::new(&self.doveadm)
            .arg("-c")
            .arg(&self.config)
            .arg("stop")
            .status();
        if !status.is_ok_and(|s| s.success()) {
            eprintln!(
                "warning: `doveadm -c {} stop` failed; stop that Dovecot by hand",
                self.config.display()
            );
            return;
        }
        // The master exits after its children; wait for it so the temporary
        // directory is not removed under it.
        let pid_file = self.dir.path().join("run").join("master.pid");
        let deadline = Instant::now() + Duration::from_secs(10);
        while pid_file.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One LMTP client connection.
struct Lmtp {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
    line: String,
}

impl Lmtp {
    async fn connect(port: u16) -> std::io::Result<Lmtp> {
        let stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream.set_nodelay(true)?;
        let (r, w) = stream.into_split();
        let mut c = Lmtp {
            reader: BufReader::new(r),
            writer: w,
            line: String::new(),
        };
        c.expect(220).await?;
        c.command("LHLO bench.client", 250).await?;
        Ok(c)
    }

    /// Reads one (possibly multi-line) reply; fails unless its code is `code`.
    async fn expect(&mut self, code: u16) -> std::io::Result<()> {
        loop {
            self.line.clear();
            if self.reader.read_line(&mut self.line).await? == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "LMTP server closed the connection",
                ));
            }
            let l = self.line.trim_end();
            let got: u16 = l.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
            if got != code {
                return Err(std::io::Error::other(format!(
                    "expected {code}, LMTP server said {l:?}"
                )));
            }
            if l.as_bytes().get(3) != Some(&b'-') {
                return Ok(());
            }
        }
    }

    async fn command(&mut self, cmd: &str, code: u16) -> std::io::Result<()> {
        self.writer
            .write_all(format!("{cmd}\r\n").as_bytes())
            .await?;
        self.expect(code).await
    }

    /// One transaction: MAIL, RCPT, DATA (dot-stuffed), one reply per recipient.
    async fn deliver(&mut self, from: &str, to: &str, msg: &[u8]) -> std::io::Result<()> {
        self.command(&format!("MAIL FROM:<{from}>"), 250).await?;
        self.command(&format!("RCPT TO:<{to}>"), 250).await?;
        self.command("DATA", 354).await?;
        let mut data = Vec::with_capacity(msg.len() + 16);
        for line in msg.split_inclusive(|&b| b == b'\n') {
            if line.first() == Some(&b'.') {
                data.push(b'.');
            }
            data.extend_from_slice(line);
        }
        data.extend_from_slice(b".\r\n");
        self.writer.write_all(&data).await?;
        self.expect(250).await
    }

    async fn quit(mut self) -> std::io::Result<()> {
        self.command("QUIT", 221).await
    }
}

// ---------------------------------------------------------------------------

fn machine() -> String {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map(|kb| format!(", {:.1} GiB RAM", kb / 1024.0 / 1024.0))
        .unwrap_or_default();
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .map(|m| format!(" ({m})"))
        .unwrap_or_default();
    format!("{cores} cores{model}{mem}")
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not, and a
    // minutes-long benchmark has no place in a test run.
    if !std::env::args().any(|a| a == "--bench") {
        println!("deliver: a benchmark; run it with `cargo bench -p mailroom-mda --bench deliver`");
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(run());
}

async fn run() {
    let total = env_number("MAILROOM_BENCH_DELIVERIES", 2000) as usize;
    let max = Duration::from_secs(env_number("MAILROOM_BENCH_MAX_SECS", 120));
    println!("== MDA delivery benchmark ==");
    println!("machine: {}", machine());
    println!(
        "load: {MESSAGE_SIZE}-byte messages, each distinct, one recipient per delivery, \
         {ACCOUNTS} accounts round-robin; {WARMUP} warm-up deliveries, then {total} per \
         measurement (or {}s, whichever comes first)",
        max.as_secs()
    );
    let postgres_nice = running("postgres")
        .into_iter()
        .min()
        .and_then(|pid| nice_of(&pid.to_string()));
    println!(
        "priority: this process nice={} (the Mailroom server and Dovecot run at it), PostgreSQL \
         nice={}; load average at start: {}",
        nice_of("self").map_or("?".into(), |n| n.to_string()),
        postgres_nice.map_or("?".into(), |n| n.to_string()),
        load_average()
    );
    println!(
        "note: client and Mailroom server share this process and its tokio runtime \
         ({} worker threads); PostgreSQL and Dovecot run on the same cores",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );

    let Some((mailroom, db, store)) = start_mailroom().await else {
        println!("mailroom: skipped (MAILROOM_TEST_SKIP_POSTGRES=1)");
        return;
    };
    println!(
        "mailroom: gRPC Delivery on {} (one HTTP/2 channel shared by the callers), store pool of \
         10 connections (the default store.max_connections)",
        mailroom.addr
    );
    match pg_settings(&mailroom.db_url).await {
        Ok(s) => println!("mailroom: PostgreSQL {s}"),
        Err(e) => println!("mailroom: cannot read PostgreSQL settings: {e}"),
    }
    println!(
        "mailroom: durability: synchronous_commit is on (the default), so a delivery is answered \
         only after its commits are flushed to disk: one for the blob, one for the message row \
         (UID allocation, quota, pg_notify)"
    );

    let mut dovecot = match Dovecot::start().await {
        Ok(d) => {
            println!("dovecot: {}", d.describe());
            println!(
                "dovecot: durability: mail_fsync = optimized (Dovecot's default); before LMTP \
                 answers 250 Dovecot 2.3 fsyncs the message file and fdatasyncs the new/ \
                 directory and dovecot-uidlist (three flushes, seen with strace), the \
                 dovecot.index* files are not flushed; one LMTP connection per client, kept \
                 open across transactions"
            );
            Some(d)
        }
        Err(why) => {
            println!("dovecot: peer skipped: {why}");
            None
        }
    };

    // Warm-up: connections, caches, Dovecot's LMTP processes.
    let warm = mailroom.run(CONCURRENCY[1], WARMUP, max).await;
    println!("warm-up: {}", warm.line("mailroom", CONCURRENCY[1]));
    if let Some(d) = &dovecot {
        let warm = d.run(CONCURRENCY[1], WARMUP, max).await;
        println!("warm-up: {}", warm.line("dovecot", CONCURRENCY[1]));
    }

    let mut ratios = Vec::new();
    for callers in CONCURRENCY {
        let done = Arc::new(AtomicBool::new(false));
        let sampler = tokio::spawn(sample_waits(mailroom.db_url.clone(), done.clone()));
        let m = mailroom.run(callers, total, max).await;
        done.store(true, Ordering::Relaxed);
        println!("{}", m.line("mailroom", callers));
        m.dump(&format!("mailroom-{callers}"));
        match sampler.await {
            Ok(Ok(lines)) => println!(
                "  mailroom PostgreSQL wait events (sampled every 20 ms): {}",
                lines.join(", ")
            ),
            Ok(Err(e)) => println!("  (wait-event sampling failed: {e})"),
            Err(e) => println!("  (wait-event sampling failed: {e})"),
        }
        if let Some(d) = &dovecot {
            let p = d.run(callers, total, max).await;
            println!("{}", p.line("dovecot", callers));
            p.dump(&format!("dovecot-{callers}"));
            if p.rate() > 0.0 {
                ratios.push(format!(
                    "{callers} caller(s): mailroom/dovecot = {:.2}",
                    m.rate() / p.rate()
                ));
            }
        }
    }
    if !ratios.is_empty() {
        println!("ratio: {}", ratios.join("; "));
    }
    println!("load average at end: {}", load_average());

    // Both systems really stored what they acknowledged.
    match mailroom.stored().await {
        Ok(n) => println!("check: mailroom stored {n} messages"),
        Err(e) => println!("check: cannot count Mailroom's messages: {e}"),
    }
    if let Some(d) = &mut dovecot {
        println!(
            "check: dovecot stored {} messages ({} error lines in its log)",
            d.stored(),
            d.errors_in_log()
        );
        if d.errors_in_log() > 0 {
            for l in d.log_tail(5) {
                println!("  dovecot log: {l}");
            }
        }
        d.stop();
    }

    mailroom.stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), mailroom.server).await;
    store.close().await;
    drop(db);
}
