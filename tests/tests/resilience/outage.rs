//! Database outage: PostgreSQL goes away for 10 s while clients send, with
//! the MDA, MTA, IMAP and POP3 as separate processes. During the outage
//! SMTP answers `451 4.3.0` (RFC 3463: a temporary local problem), IMAP
//! `NO [UNAVAILABLE]` (RFC 5530) and POP3 `-ERR [SYS/TEMP]` (RFC 3206); no
//! process exits; each protocol works again within 5 s of the database's
//! return (no pool stays broken); nothing acknowledged is lost.
//!
//! Two kinds of outage: the connections cut without a word by a TCP proxy
//! (the server killed, `pg_ctl stop -m immediate`, or the network gone),
//! and the server ending every session and refusing new ones (`-m fast`,
//! `pg_terminate_backend`, through `ALLOW_CONNECTIONS false`).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mailroom_store::testing::TestDb;
use tokio_util::sync::CancellationToken;

use super::client::{LineClient, smtp_session};
use super::procs::{self, Ports, Proc};
use super::proxy::Proxy;

const BOB: &str = "bob@example.test";

/// How the database goes away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outage {
    /// Connections dropped without a word (the proxy).
    Cut,
    /// Sessions ended by the server, new ones refused.
    Terminate,
}

/// The reply that ends a transaction to bob on port 25: the first that is
/// not a success, or the final one.
async fn smtp_probe(addr: SocketAddr, id: &str) -> std::io::Result<(u16, String)> {
    let mut c = smtp_session(addr, None).await?;
    let from = "sender@remote.test";
    for line in [format!("MAIL FROM:<{from}>"), format!("RCPT TO:<{BOB}>")] {
        let (code, text) = c.cmd(&line).await?;
        if code != 250 {
            return Ok((code, text));
        }
    }
    let (code, text) = c.cmd("DATA").await?;
    if code != 354 {
        return Ok((code, text));
    }
    c.send(&super::client::message(from, BOB, id)).await?;
    c.reply().await
}

/// The tagged reply to an IMAP LOGIN as bob.
async fn imap_login(addr: SocketAddr) -> std::io::Result<String> {
    let mut c = LineClient::connect(addr).await?;
    c.until("* ").await?;
    c.send(format!("a LOGIN \"{BOB}\" \"{}\"\r\n", mailroom_tests::PASSWORD).as_bytes())
        .await?;
    let reply = c.until("a ").await?;
    let _ = c.send(b"z LOGOUT\r\n").await;
    Ok(reply)
}

/// The reply to POP3 USER/PASS as bob.
async fn pop3_login(addr: SocketAddr) -> std::io::Result<String> {
    let mut c = LineClient::connect(addr).await?;
    c.until("+OK").await?;
    c.send(format!("USER {BOB}\r\n").as_bytes()).await?;
    c.until("+OK").await?;
    c.send(format!("PASS {}\r\n", mailroom_tests::PASSWORD).as_bytes())
        .await?;
    let reply = c.line().await?;
    let _ = c.send(b"QUIT\r\n").await;
    Ok(reply)
}

/// Polls `probe` until `ok` holds; how long it took (at most `limit` + one probe).
async fn recovery<F, Fut, T>(limit: Duration, mut probe: F, ok: impl Fn(&T) -> bool) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::io::Result<T>>,
{
    let start = Instant::now();
    loop {
        if let Ok(r) = probe().await
            && ok(&r)
        {
            return start.elapsed();
        }
        if start.elapsed() > limit {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The test of one kind of outage.
pub async fn outage(kind: Outage) {
    let Some((store, db)) = TestDb::postgres().await else {
        return;
    };
    super::accounts(&store, &[BOB]).await;
    let proxy = Proxy::start(Proxy::upstream_of(&db.url)).await;
    let url = match kind {
        Outage::Cut => proxy.url_through(&db.url),
        Outage::Terminate => db.url.clone(),
    };
    let root = tempfile::tempdir().unwrap();
    let ports = Ports::pick();
    let files = procs::internal_files(root.path()).await;
    let mut procs = Vec::new();
    for service in ["mda", "mta", "imap", "pop3"] {
        let mut spec = procs::separate(service, &url, root.path(), &ports, &files);
        spec.env
            .push(("MAILROOM_STORE__CONNECT_TIMEOUT_SECS".into(), "2".into()));
        procs.push(Proc::start(spec, root.path()).await);
    }
    let (smtp, imap, pop3) = (
        Ports::at(ports.smtp),
        Ports::at(ports.imap),
        Ports::at(ports.pop3),
    );
    // The load: five clients sending to bob through it all.
    let stop = CancellationToken::new();
    let acked = Arc::new(Mutex::new(Vec::new()));
    let mut load = Vec::new();
    for client in 0..5 {
        let (stop, acked) = (stop.clone(), acked.clone());
        load.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.is_cancelled() {
                n += 1;
                let id = format!("load-{client}-{n}@outage.test");
                if let Ok((250, _)) = smtp_probe(smtp, &id).await {
                    acked.lock().unwrap().push(format!("<{id}>"));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let set = async |down: bool| match kind {
        Outage::Cut => proxy.cut(down),
        Outage::Terminate => db.set_outage(down).await,
    };
    set(true).await;
    let cut_at = Instant::now();
    // Give the pools time to notice, then ask each protocol.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let smtp_during = smtp_probe(smtp, "probe@outage.test").await;
    let imap_during = imap_login(imap).await;
    let pop3_during = pop3_login(pop3).await;
    eprintln!("{kind:?} outage: SMTP {smtp_during:?}; IMAP {imap_during:?}; POP3 {pop3_during:?}");
    let asked_for = cut_at.elapsed();
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(asked_for)).await;
    set(false).await;
    let limit = Duration::from_secs(5);
    // All three asked at once, each timed from the database's return.
    let (smtp_back, imap_back, pop3_back) = tokio::join!(
        recovery(
            limit,
            || smtp_probe(smtp, "back@outage.test"),
            |r| r.0 == 250
        ),
        recovery(limit, || imap_login(imap), |r| r.starts_with("a OK")),
        recovery(limit, || pop3_login(pop3), |r| r.starts_with("+OK")),
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.cancel();
    for l in load {
        l.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let drain = super::time_until("the queue to empty", Duration::from_secs(60), async || {
        store.queue_size().await.unwrap_or(1) == 0
    })
    .await;
    let ids = super::inbox_ids(&store, BOB).await;
    let lost = acked.iter().filter(|id| !ids.contains(id)).count();
    let duplicated = acked
        .iter()
        .map(|id| ids.iter().filter(|i| *i == id).count().saturating_sub(1))
        .sum::<usize>();
    eprintln!(
        "{kind:?} outage: {} acknowledged, {lost} lost, {duplicated} duplicated; back after: \
         SMTP {smtp_back:?}, IMAP {imap_back:?}, POP3 {pop3_back:?}; queue empty {drain:?} later",
        acked.len()
    );
    for p in &mut procs {
        assert!(p.running(), "{} exited:\n{}", p.spec.name, p.log());
    }
    let smtp_during = smtp_during.expect("SMTP answers during the outage");
    assert_eq!(smtp_during.0, 451, "{smtp_during:?}");
    assert!(smtp_during.1.starts_with("451 4.3.0"), "{smtp_during:?}");
    let imap_during = imap_during.expect("IMAP answers during the outage");
    assert!(
        imap_during.starts_with("a NO [UNAVAILABLE]"),
        "{imap_during}"
    );
    let pop3_during = pop3_during.expect("POP3 answers during the outage");
    assert!(pop3_during.starts_with("-ERR [SYS/TEMP]"), "{pop3_during}");
    for (what, took) in [
        ("SMTP", smtp_back),
        ("IMAP", imap_back),
        ("POP3", pop3_back),
    ] {
        assert!(
            took <= limit,
            "{what} came back {took:?} after the database"
        );
    }
    assert!(
        acked.len() > 20,
        "the load ran ({} acknowledged)",
        acked.len()
    );
    assert_eq!(lost, 0, "acknowledged messages lost");
    assert_eq!(duplicated, 0, "acknowledged messages delivered twice");
}
