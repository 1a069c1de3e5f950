//! Crash during a flood: clients keep submitting (submission with AUTH
//! and port 25, 24 concurrent sessions, unique Message-IDs, each recorded
//! only after its 250) while the Mailroom processes are killed with SIGKILL
//! at random moments and started again. At the end, with the queue
//! drained, every acknowledged Message-ID is in its mailbox: lost must be
//! 0, duplicated at most the messages in flight at the kills (the queue's
//! size just after each kill). The bounded form's queue must be empty
//! within 30 s of the flood's end, which comes after the last restart; in
//! the long form acceptance outruns delivery by thousands of messages, and
//! the queue must drain without ever standing still for 20 s (a killed
//! process's leases waiting out `mta.lease_secs` would stop it for 300 s).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mailroom_store::Store;

use super::client::{smtp_session, transaction};
use super::procs::{Ports, Proc};
use super::{Rng, Scale, inbox_ids};

/// The accounts mail goes to; alice also submits.
pub const ACCOUNTS: &[&str] = &[
    "alice@example.test",
    "bob@example.test",
    "carol@example.test",
];

/// The longest the queue may stay the same size while it drains: a
/// recipient deferred a few times while a process was down backs off 1, 2,
/// 4, 8 s; a lease left by a killed process would hold it for
/// `mta.lease_secs` (300 s).
const STALL_LIMIT: Duration = Duration::from_secs(20);

/// What the clients share.
struct Shared {
    target: usize,
    acked: Mutex<Vec<(String, &'static str)>>,
    count: AtomicUsize,
    refused: AtomicUsize,
    broken: AtomicUsize,
}

impl Shared {
    fn done(&self) -> bool {
        self.count.load(Ordering::SeqCst) >= self.target
    }
}

/// One client: sessions of up to 10 transactions, again and again until
/// the flood's target is reached; any failure (the server killed under
/// it) ends the session and a new one starts after a short pause.
async fn client(shared: Arc<Shared>, addr: SocketAddr, submit: bool, index: usize, tag: String) {
    let mut n = 0;
    while !shared.done() {
        let session = async {
            let user = submit.then_some(ACCOUNTS[0]);
            let mut c = smtp_session(addr, user).await?;
            for _ in 0..10 {
                if shared.done() {
                    break;
                }
                n += 1;
                let id = format!("{tag}-{index}-{n}@flood.test");
                let from = if submit {
                    ACCOUNTS[0]
                } else {
                    "sender@remote.test"
                };
                let to = ACCOUNTS[1 + (index + n) % 2];
                let (code, _) = transaction(&mut c, from, to, &id).await?;
                if code == 250 {
                    shared.acked.lock().unwrap().push((id, to));
                    shared.count.fetch_add(1, Ordering::SeqCst);
                } else {
                    shared.refused.fetch_add(1, Ordering::SeqCst);
                    c.expect("RSET", 250).await?;
                }
            }
            let _ = c.cmd("QUIT").await;
            std::io::Result::Ok(())
        };
        if session.await.is_err() {
            shared.broken.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The figures of one flood (printed).
#[derive(Debug)]
#[allow(dead_code)]
pub struct Figures {
    pub acknowledged: usize,
    pub delivered: usize,
    pub lost: usize,
    pub duplicated: usize,
    pub delivered_unacknowledged: usize,
    pub in_flight_at_kills: i64,
    pub queued_at_flood_end: i64,
    pub longest_stall: Duration,
    pub kills: usize,
    pub drain_after_flood: Duration,
    pub drain_after_last_restart: Duration,
    pub flood_time: Duration,
}

/// Runs the flood against `procs` (started), killing `pick(rng)` of them
/// at each kill; `store` is the test's own handle on the same database.
pub async fn flood(
    label: &str,
    procs: &mut [Proc],
    ports: &Ports,
    store: &Store,
    scale: Scale,
    rng: &mut Rng,
) -> Figures {
    let shared = Arc::new(Shared {
        target: scale.messages,
        acked: Mutex::new(Vec::new()),
        count: AtomicUsize::new(0),
        refused: AtomicUsize::new(0),
        broken: AtomicUsize::new(0),
    });
    let started = Instant::now();
    let mut clients = Vec::new();
    for index in 0..scale.clients {
        let submit = index % 2 == 0;
        let port = if submit { ports.submission } else { ports.smtp };
        clients.push(tokio::spawn(client(
            shared.clone(),
            Ports::at(port),
            submit,
            index,
            format!("{label}-{}", rng.draw() % 1_000_000),
        )));
    }
    // Kill at random moments spread over the flood: the k-th kill once
    // about k/(kills+1) of the messages are acknowledged, give or take.
    let mut in_flight = 0;
    let mut last_restart = Instant::now();
    let slice = scale.messages / (scale.kills + 1);
    for k in 1..=scale.kills {
        let at = k * slice + (rng.draw() as usize % (slice / 2).max(1)) - slice / 4;
        while shared.count.load(Ordering::SeqCst) < at {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.draw() % 300)).await;
        // All of them, or one chosen at random (the first kill takes all).
        let victims: Vec<usize> = if k == 1 || procs.len() == 1 || rng.draw().is_multiple_of(2) {
            (0..procs.len()).collect()
        } else {
            vec![rng.draw() as usize % procs.len()]
        };
        for &v in &victims {
            procs[v].kill();
        }
        let queued = store.queue_size().await.unwrap();
        in_flight += queued;
        eprintln!(
            "{label}: kill {k} of {:?} at {} acknowledged ({queued} queued)",
            victims
                .iter()
                .map(|&v| procs[v].spec.name.as_str())
                .collect::<Vec<_>>(),
            shared.count.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(rng.draw() % 500)).await;
        for &v in &victims {
            procs[v].restart().await;
        }
        last_restart = Instant::now();
    }
    for c in clients {
        c.await.unwrap();
    }
    let flood_end = Instant::now();
    let flood_time = flood_end - started;
    // The bounded form's backlog is small: the contract's 30 s holds. The
    // long form's backlog is whatever acceptance outran delivery by; there
    // the contract is that the drain never stalls (entries of a killed
    // process waiting out their lease would stall it for minutes).
    let limit = scale.drain_limit;
    let backlog = store.queue_size().await.unwrap();
    let mut drained = false;
    let mut stall = Duration::ZERO;
    let (mut last, mut changed) = (backlog, Instant::now());
    while flood_end.elapsed() < limit + Duration::from_secs(30) {
        let size = store.queue_size().await.unwrap();
        if size == 0 {
            drained = true;
            break;
        }
        if size != last {
            (last, changed) = (size, Instant::now());
        }
        stall = stall.max(changed.elapsed());
        if stall > STALL_LIMIT {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let drain_after_flood = flood_end.elapsed();
    let drain_after_last_restart = last_restart.elapsed();
    for p in procs.iter_mut() {
        assert!(p.running(), "{} exited:\n{}", p.spec.name, p.log());
    }
    // What the mailboxes hold, by account and Message-ID.
    let mut copies: HashMap<(&str, String), usize> = HashMap::new();
    let mut delivered = 0;
    for account in &ACCOUNTS[1..] {
        for id in inbox_ids(store, account).await {
            delivered += 1;
            *copies.entry((account, id)).or_default() += 1;
        }
    }
    let acked = shared.acked.lock().unwrap().clone();
    let copies_of =
        |id: &str, to: &'static str| copies.get(&(to, format!("<{id}>"))).copied().unwrap_or(0);
    let lost: Vec<&String> = acked
        .iter()
        .filter(|(id, to)| copies_of(id, to) == 0)
        .map(|(id, _)| id)
        .collect();
    let duplicated: usize = acked
        .iter()
        .map(|(id, to)| copies_of(id, to).saturating_sub(1))
        .sum();
    // Messages committed whose 250 the killed server never sent: the
    // client did not count them and will have sent them again under a new
    // Message-ID (at-least-once, from the client's side).
    let unacknowledged = delivered - (acked.len() - lost.len()) - duplicated;
    let figures = Figures {
        acknowledged: acked.len(),
        delivered,
        lost: lost.len(),
        duplicated,
        delivered_unacknowledged: unacknowledged,
        in_flight_at_kills: in_flight,
        queued_at_flood_end: backlog,
        longest_stall: stall,
        kills: scale.kills,
        drain_after_flood,
        drain_after_last_restart,
        flood_time,
    };
    eprintln!(
        "{label}: {figures:?}; {} refused, {} sessions broken",
        shared.refused.load(Ordering::SeqCst),
        shared.broken.load(Ordering::SeqCst)
    );
    assert!(
        stall <= STALL_LIMIT,
        "{label}: the drain stalled for {stall:?}: {figures:?}"
    );
    assert!(drained, "{label}: the queue did not drain: {figures:?}");
    assert!(
        lost.is_empty(),
        "{label}: acknowledged and lost: {:?}",
        &lost[..lost.len().min(20)]
    );
    assert!(
        duplicated as i64 <= in_flight,
        "{label}: {duplicated} duplicates, more than the {in_flight} messages in flight at the kills"
    );
    assert!(
        drain_after_flood <= limit,
        "{label}: the queue took {drain_after_flood:?} to drain"
    );
    figures
}
