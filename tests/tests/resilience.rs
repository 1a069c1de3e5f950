//! The resilience suite (issue 18, "Faults"): the real `mailroom` server,
//! as processes of its own, under the faults a mail server must survive,
//! with the contract checked from outside: nothing that got a 250 is lost.
//!
//! - Crash during a flood ([`flood`]): SIGKILL at random moments under 24
//!   concurrent SMTP sessions, on the embedded SQLite stack (one process)
//!   and on PostgreSQL with the MDA, MTA and MSA as separate processes.
//!
//! - Database outage ([`outage`]): PostgreSQL cut off for 10 s under load,
//!   with the services as separate processes.
//! - Disk full ([`diskfull`]): the embedded store's file on a small tmpfs.
//! - Hostile remote MX hosts ([`hostile`]): stalls, drops, 421, 250 then
//!   reset, garbage, and a DNS server that never answers.
//! - Slow clients ([`slow`]): tricklers on SMTP, IMAP, POP3 and TLS.
//!
//! Each test has a bounded form, run by `cargo test`, and a long form run
//! when `MAILROOM_RESILIENCE=long` is set (docs/RELIABILITY.md). Every
//! random choice comes from one seed, printed, and taken from
//! `MAILROOM_RESILIENCE_SEED` when set, so a failure can be replayed.
//! Timing is never asserted tightly: the suite waits for events with
//! generous deadlines, except where a deadline is the contract (the queue
//! drained within 30 s of the flood's end).

#[path = "resilience/client.rs"]
mod client;
#[path = "resilience/diskfull.rs"]
mod diskfull;
#[path = "resilience/flood.rs"]
mod flood;
#[path = "resilience/hostile.rs"]
mod hostile;
#[path = "resilience/outage.rs"]
mod outage;
#[path = "resilience/procs.rs"]
mod procs;
#[path = "resilience/proxy.rs"]
mod proxy;
#[path = "resilience/slow.rs"]
mod slow;

use std::time::Duration;

use mailroom_store::Store;
use mailroom_store::testing::TestDb;
use procs::{Ports, Proc};

/// Runs one service as its own process when started by [`Proc`]
/// (`RESILIENCE_SERVICE_ARGS` holds its arguments): `mailroom …` as the
/// binary runs it; exits with its status.
#[test]
#[ignore = "a service's process, started by the resilience tests themselves"]
fn mailroom_process() {
    mailroom_tests::serve_from_env(procs::ARGS_VAR);
}

/// How big a run is.
#[derive(Debug, Clone, Copy)]
pub struct Scale {
    /// Messages to get acknowledged.
    pub messages: usize,
    /// SIGKILLs during the flood.
    pub kills: usize,
    /// Concurrent SMTP sessions.
    pub clients: usize,
    /// Slow connections (tricklers).
    pub tricklers: usize,
    /// How soon after the flood's end the queue must be empty.
    pub drain_limit: Duration,
}

/// The bounded form, or the long one when `MAILROOM_RESILIENCE=long`.
pub fn scale() -> Scale {
    if std::env::var("MAILROOM_RESILIENCE").is_ok_and(|v| v == "long") {
        Scale {
            messages: 20_000,
            kills: 5,
            clients: 24,
            tricklers: 2_000,
            drain_limit: Duration::from_secs(20 * 60),
        }
    } else {
        Scale {
            messages: 600,
            kills: 3,
            clients: 24,
            tricklers: 200,
            drain_limit: Duration::from_secs(30),
        }
    }
}

/// A small deterministic generator (xorshift64*), seeded once per test.
pub struct Rng(u64);

impl Rng {
    /// From `MAILROOM_RESILIENCE_SEED`, else the clock; printed.
    pub fn new(test: &str) -> Rng {
        let seed = std::env::var("MAILROOM_RESILIENCE_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            })
            | 1;
        eprintln!("{test}: MAILROOM_RESILIENCE_SEED={seed}");
        Rng(seed)
    }

    /// The next number.
    pub fn draw(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// The Message-IDs of the messages in `account`'s INBOX, as written
/// (`<…>`), one per message.
pub async fn inbox_ids(store: &Store, account: &str) -> Vec<String> {
    let inbox = mailroom_tests::inbox_id(store, account).await;
    let mut ids = Vec::new();
    for (uid, _, _) in store.list_messages(inbox).await.unwrap() {
        let text = store.read_message(inbox, uid).await.unwrap().unwrap();
        let text = String::from_utf8_lossy(&text);
        let id = text
            .lines()
            .take_while(|l| !l.is_empty())
            .find_map(|l| l.strip_prefix("Message-ID: "))
            .unwrap_or("(none)");
        ids.push(id.to_string());
    }
    ids
}

/// Creates `example.test` with `accounts` (password [`mailroom_tests::PASSWORD`]).
pub async fn accounts(store: &Store, accounts: &[&str]) {
    for a in accounts {
        mailroom_tests::serve_account(store, a).await;
    }
}

/// A database on `backend` with the flood's accounts.
async fn database(backend: mailroom_tests::Backend) -> Option<(Store, TestDb)> {
    let (store, db) = match backend {
        mailroom_tests::Backend::Sqlite => TestDb::sqlite().await,
        mailroom_tests::Backend::Postgres => TestDb::postgres().await?,
    };
    accounts(&store, flood::ACCOUNTS).await;
    Some((store, db))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_survives_sigkill_on_the_embedded_store() {
    let mut rng = Rng::new("flood/sqlite");
    let (store, db) = database(mailroom_tests::Backend::Sqlite).await.unwrap();
    let root = tempfile::tempdir().unwrap();
    let ports = Ports::pick();
    let spec = procs::embedded(&db.url, root.path(), &ports, &[]);
    let mut procs = vec![Proc::start(spec, root.path()).await];
    flood::flood("sqlite", &mut procs, &ports, &store, scale(), &mut rng).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_survives_sigkill_on_postgres_with_separate_processes() {
    let mut rng = Rng::new("flood/postgres");
    let Some((store, db)) = database(mailroom_tests::Backend::Postgres).await else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let ports = Ports::pick();
    let files = procs::internal_files(root.path()).await;
    let mut procs = Vec::new();
    for service in ["mda", "mta", "msa"] {
        let spec = procs::separate(service, &db.url, root.path(), &ports, &files);
        procs.push(Proc::start(spec, root.path()).await);
    }
    flood::flood("postgres", &mut procs, &ports, &store, scale(), &mut rng).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_cut_off_for_10_s_gets_temporary_replies_and_loses_nothing() {
    outage::outage(outage::Outage::Cut).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_ending_its_sessions_for_10_s_gets_temporary_replies_and_loses_nothing() {
    outage::outage(outage::Outage::Terminate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_gets_452_and_no_corruption_and_mail_flows_when_space_returns() {
    diskfull::disk_full().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tricklers_are_cut_off_at_their_deadlines_while_a_normal_client_is_served() {
    slow::slow_clients(scale().tricklers).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_remote_mx_hosts_get_their_mail_once_and_slow_nobody_else() {
    hostile::hostile(mailroom_tests::Backend::Sqlite).await;
    hostile::hostile(mailroom_tests::Backend::Postgres).await;
}

/// Waits up to `limit` for `check`, returning how long it took.
pub async fn time_until<F: AsyncFnMut() -> bool>(
    what: &str,
    limit: Duration,
    mut check: F,
) -> Duration {
    let start = std::time::Instant::now();
    while !check().await {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    start.elapsed()
}
