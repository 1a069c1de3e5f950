//! Nothing acknowledged is stranded by a store fault (issue 20): a store
//! error at each step of a local delivery and of a relay attempt (loading
//! the message, delivering it, recording the result) leaves the entry
//! retried and delivered once, and a database outage under load loses no
//! acknowledged message. Faults are injected into the real database: a
//! table moved out of the way, or a trigger that fails a step.
//!
//! The worker's lease (`mta.lease_secs`) stays at its default of 300 s in
//! every test, so a recovery that waited for the lease to run out would
//! time out here.

use std::time::Duration;

use mailroom_address::{Address, Domain};
use mailroom_store::testing::TestDb;
use mailroom_store::{QueueEnvelope, QueueRecipient, Store};
use mailroom_tests::{
    Backend, DnsRecord, SinkScript, SmtpClient, TestDns, first_sink, inbox_id, test_config,
    wait_for,
};

const BOB: &str = "bob@example.test";

/// The step a fault breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Reading the queued message (its content table is gone).
    Load,
    /// Storing it into the mailbox (local delivery only).
    Deliver,
    /// Recording the attempt's results.
    Record,
}

impl Fault {
    fn inject(self, backend: Backend) -> &'static str {
        match (self, backend) {
            (Fault::Load, _) => "ALTER TABLE blobs RENAME TO blobs_out_of_the_way",
            (Fault::Deliver, Backend::Postgres) => {
                "CREATE FUNCTION injected_fault() RETURNS trigger LANGUAGE plpgsql AS
                   $$ BEGIN RAISE EXCEPTION 'injected fault'; END $$;
                 CREATE TRIGGER injected BEFORE INSERT ON messages
                   FOR EACH ROW EXECUTE FUNCTION injected_fault();"
            }
            (Fault::Deliver, Backend::Sqlite) => {
                "CREATE TRIGGER injected BEFORE INSERT ON messages
                   BEGIN SELECT RAISE(ABORT, 'injected fault'); END;"
            }
            (Fault::Record, Backend::Postgres) => {
                "CREATE FUNCTION injected_fault() RETURNS trigger LANGUAGE plpgsql AS
                   $$ BEGIN RAISE EXCEPTION 'injected fault'; END $$;
                 CREATE TRIGGER injected BEFORE UPDATE ON queue_recipients
                   FOR EACH ROW WHEN (NEW.state <> OLD.state) EXECUTE FUNCTION injected_fault();"
            }
            (Fault::Record, Backend::Sqlite) => {
                "CREATE TRIGGER injected BEFORE UPDATE ON queue_recipients
                   FOR EACH ROW WHEN NEW.state <> OLD.state
                   BEGIN SELECT RAISE(ABORT, 'injected fault'); END;"
            }
        }
    }

    fn remove(self, backend: Backend) -> &'static str {
        match (self, backend) {
            (Fault::Load, _) => "ALTER TABLE blobs_out_of_the_way RENAME TO blobs",
            (_, Backend::Sqlite) => "DROP TRIGGER injected",
            (Fault::Deliver, Backend::Postgres) => "DROP TRIGGER injected ON messages",
            (Fault::Record, Backend::Postgres) => "DROP TRIGGER injected ON queue_recipients",
        }
    }
}

async fn database(backend: Backend) -> Option<(Store, TestDb)> {
    match backend {
        Backend::Sqlite => Some(TestDb::sqlite().await),
        Backend::Postgres => TestDb::postgres().await,
    }
}

fn message(id: &str) -> Vec<u8> {
    format!(
        "From: sender@remote.test\r\nTo: {BOB}\r\nSubject: {id}\r\nMessage-ID: <{id}@remote.test>\r\n\r\nbody\r\n"
    )
    .into_bytes()
}

async fn enqueue(store: &Store, to: &str, content: &[u8]) -> i64 {
    let envelope = QueueEnvelope {
        sender: "sender@remote.test".into(),
        recipients: vec![QueueRecipient {
            address: to.into(),
            orcpt: None,
            notify: None,
        }],
        ..Default::default()
    };
    store.enqueue(&envelope, content, 3600).await.unwrap()
}

/// The only recipient of entry `id`: (state, attempts, lease_until).
async fn recipient(store: &Store, id: i64) -> Option<(String, u32, Option<i64>)> {
    let entry = store.queue_entry(id).await.unwrap()?;
    let r = &entry.recipients[0];
    Some((r.state.clone(), r.attempts, r.lease_until))
}

/// Whether the worker gave the recipient back without a result: it was
/// leased (it has a lease end), no attempt is recorded, and the lease ends
/// within seconds, not the 300 s a held lease has.
async fn given_back(store: &Store, id: i64) -> bool {
    matches!(
        recipient(store, id).await,
        Some((state, 0, Some(until))) if state == "pending" && until < mailroom_store::now() + 30
    )
}

/// Makes `example.test` one of our domains.
async fn our_domain(store: &Store) {
    store
        .add_domain(&Domain::parse("example.test").unwrap())
        .await
        .unwrap();
}

/// Makes `example.test` ours with bob's account in it.
async fn with_bob(store: &Store) {
    our_domain(store).await;
    store
        .create_account(&Address::parse(BOB).unwrap(), "long enough password", 0)
        .await
        .unwrap();
}

async fn inbox_len(store: &Store) -> usize {
    store
        .list_messages(inbox_id(store, BOB).await)
        .await
        .unwrap()
        .len()
}

/// Starts the whole stack on `db`, adjusted by `change`.
async fn serve(
    db: &TestDb,
    change: impl FnOnce(&mut mailroom_config::Config),
) -> (mailroom::Stack, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path(), &db.url);
    config.mta.first_retry_secs = 1;
    change(&mut config);
    (mailroom::start(config, None).await.unwrap(), dir)
}

/// Puts `fault` in place, starts the stack (changed by `change`), waits
/// until `during` shows the worker met the fault, takes the fault away and
/// waits until entry `id` is finished.
async fn through_fault(
    db: &TestDb,
    backend: Backend,
    fault: Fault,
    store: &Store,
    id: i64,
    change: impl FnOnce(&mut mailroom_config::Config),
    during: impl AsyncFnMut() -> bool,
) -> (mailroom::Stack, tempfile::TempDir) {
    db.execute(fault.inject(backend)).await;
    let started = serve(db, change).await;
    let limit = Duration::from_secs(30);
    wait_for(
        &format!("an attempt under the {fault:?} fault"),
        limit,
        during,
    )
    .await;
    db.execute(fault.remove(backend)).await;
    wait_for("the entry finished after the fault", limit, async || {
        store.queue_entry(id).await.unwrap().is_none()
    })
    .await;
    started
}

/// A fault at one step of a local delivery: the message is in bob's INBOX
/// exactly once, soon after the fault is gone.
async fn local_delivery_survives(backend: Backend, fault: Fault) {
    let Some((store, db)) = database(backend).await else {
        return;
    };
    with_bob(&store).await;
    // Queued before any worker runs, so the fault is in place for its
    // first attempt.
    let id = enqueue(&store, BOB, &message("fault")).await;
    let during = async || match fault {
        // The positive sign that the worker had its chance under the fault.
        Fault::Load => given_back(&store, id).await,
        Fault::Deliver => {
            matches!(recipient(&store, id).await, Some((s, n, _)) if s == "deferred" && n >= 1)
        }
        Fault::Record => given_back(&store, id).await && inbox_len(&store).await == 1,
    };
    let (stack, _dir) = through_fault(&db, backend, fault, &store, id, |_| {}, during).await;
    assert_eq!(inbox_len(&store).await, 1, "delivered exactly once");
    stack.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_delivery_recovers_from_a_load_failure() {
    local_delivery_survives(Backend::Sqlite, Fault::Load).await;
    local_delivery_survives(Backend::Postgres, Fault::Load).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_delivery_recovers_from_a_delivery_failure() {
    local_delivery_survives(Backend::Sqlite, Fault::Deliver).await;
    local_delivery_survives(Backend::Postgres, Fault::Deliver).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_delivery_recovers_from_a_failure_to_record_the_result() {
    local_delivery_survives(Backend::Sqlite, Fault::Record).await;
    local_delivery_survives(Backend::Postgres, Fault::Record).await;
}

/// A fault at one step of a relay attempt: the message reaches the remote
/// MX, once for a load failure (nothing was sent before it), at most twice
/// when the result of a successful send could not be recorded.
async fn relay_survives(backend: Backend, fault: Fault) {
    let Some((store, db)) = database(backend).await else {
        return;
    };
    our_domain(&store).await;
    let sink = first_sink(SinkScript::default()).await;
    let dns = TestDns::start(
        "faults.test",
        &[
            ("@", DnsRecord::Mx(10, "mx.faults.test".into())),
            ("mx", DnsRecord::A("127.0.0.2".parse().unwrap())),
        ],
    )
    .await;
    let id = enqueue(&store, "carol@faults.test", &message("relayed")).await;
    let (dns_addr, port) = (dns.addr, sink.addr.port());
    let route = |c: &mut mailroom_config::Config| {
        c.mta.dns_servers = vec![dns_addr];
        c.mta.outbound_port = port;
    };
    let during = async || {
        // Nothing is sent before a load failure; a send whose result could
        // not be recorded has reached the MX once.
        let sent = if fault == Fault::Load { 0 } else { 1 };
        given_back(&store, id).await && sink.received().len() == sent
    };
    let (stack, _dir) = through_fault(&db, backend, fault, &store, id, route, during).await;
    let sent = sink.received().len();
    match fault {
        Fault::Load => assert_eq!(sent, 1, "relayed exactly once"),
        _ => assert!((1..=2).contains(&sent), "relayed {sent} times"),
    }
    stack.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_recovers_from_a_load_failure() {
    relay_survives(Backend::Sqlite, Fault::Load).await;
    relay_survives(Backend::Postgres, Fault::Load).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_recovers_from_a_failure_to_record_the_result() {
    relay_survives(Backend::Sqlite, Fault::Record).await;
    relay_survives(Backend::Postgres, Fault::Record).await;
}

/// A process that died holding leases (kill -9) on the embedded store: the
/// next start takes them back at once instead of waiting out the 300 s
/// lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_on_the_embedded_store_takes_back_a_dead_process_leases() {
    let (store, db) = TestDb::sqlite().await;
    with_bob(&store).await;
    let id = enqueue(&store, BOB, &message("orphan")).await;
    // The dead process's lease, as it left it (a pid above Linux's pid_max:
    // no process has it).
    let held = store
        .lease_local_recipients("4194999-0000dead", 300, 10)
        .await
        .unwrap();
    assert_eq!(held.len(), 1);
    let (stack, _dir) = serve(&db, |_| {}).await;
    wait_for(
        "the orphaned entry delivered",
        Duration::from_secs(20),
        async || store.queue_entry(id).await.unwrap().is_none(),
    )
    .await;
    assert_eq!(inbox_len(&store).await, 1);
    stack.stop(Duration::from_secs(5)).await;
}

/// The scenario of issue 20: clients keep sending to a local user on port
/// 25 while the database goes away for 10 s and comes back. Every message
/// that got a 250 is delivered, once, and the queue is empty within 60 s of
/// the database's return.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_under_load_loses_no_acknowledged_mail() {
    let Some((store, db)) = TestDb::postgres().await else {
        return;
    };
    with_bob(&store).await;
    let (stack, _dir) = serve(&db, |c| c.store.connect_timeout_secs = 2).await;
    let smtp = stack.addr("smtp").unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let mut clients = Vec::new();
    for client in 0..5 {
        let stop = stop.clone();
        clients.push(tokio::spawn(async move {
            let mut accepted = Vec::new();
            let mut n = 0;
            while !stop.is_cancelled() {
                n += 1;
                let id = format!("c{client}-{n}");
                // A client that panics (a reply cut off) counts as refused.
                if tokio::spawn(send(smtp, id.clone())).await.unwrap_or(false) {
                    accepted.push(format!("<{id}@remote.test>"));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            accepted
        }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    db.set_outage(true).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    db.set_outage(false).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.cancel();
    let mut accepted = Vec::new();
    for c in clients {
        accepted.extend(c.await.unwrap());
    }
    assert!(
        accepted.len() > 20,
        "the load ran ({} accepted)",
        accepted.len()
    );
    let back = std::time::Instant::now();
    // A fresh handle: the test's own pool went through the outage too.
    let store = Store::connect(&db.url, &Default::default()).await.unwrap();
    wait_for("the queue to empty", Duration::from_secs(60), async || {
        store.queue_size().await.unwrap_or(1) == 0
    })
    .await;
    eprintln!(
        "{} messages acknowledged; queue empty {:?} after the database came back",
        accepted.len(),
        back.elapsed()
    );
    let inbox = inbox_id(&store, BOB).await;
    let mut ids = Vec::new();
    for m in store.list_messages(inbox).await.unwrap() {
        let text = store.read_message(inbox, m.0).await.unwrap().unwrap();
        let text = String::from_utf8_lossy(&text).into_owned();
        let id = text
            .lines()
            .find_map(|l| l.strip_prefix("Message-ID: "))
            .unwrap()
            .to_string();
        ids.push(id);
    }
    for id in &accepted {
        let copies = ids.iter().filter(|i| *i == id).count();
        assert_eq!(
            copies, 1,
            "{id} was acknowledged and is delivered {copies} times"
        );
    }
    stack.stop(Duration::from_secs(5)).await;
}

/// One SMTP transaction to bob; whether it got 250 after the data.
async fn send(smtp: std::net::SocketAddr, id: String) -> bool {
    let session = async {
        let (mut c, greeting) = SmtpClient::connect(smtp).await;
        if greeting.0 != 220 {
            return false;
        }
        c.cmd("EHLO remote.test").await;
        if c.cmd("MAIL FROM:<sender@remote.test>").await.0 != 250
            || c.cmd(&format!("RCPT TO:<{BOB}>")).await.0 != 250
            || c.cmd("DATA").await.0 != 354
        {
            return false;
        }
        c.send(&message(&id)).await;
        c.send(b".\r\n").await;
        let ok = c.reply().await.0 == 250;
        c.cmd("QUIT").await;
        ok
    };
    tokio::time::timeout(Duration::from_secs(30), session)
        .await
        .unwrap_or(false)
}
