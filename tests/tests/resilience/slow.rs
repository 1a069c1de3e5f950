//! Slow clients: hundreds (bounded form) or thousands (long form) of
//! connections trickling one byte at a time, well inside the per-read
//! timeouts, to SMTP, IMAP and POP3, and TLS handshakes (implicit TLS
//! ports) that never finish. Each trickler must be cut off at its
//! deadline (the whole command line or handshake within
//! `smtp.command_timeout_secs`, `imap.idle_timeout_secs`,
//! `pop3.idle_timeout_secs`, `tls.handshake_timeout_secs`), a normal
//! client must be served meanwhile (its p99 reported against the unloaded
//! figure, not asserted: machines differ), and the server's memory stays
//! bounded (its RSS reported).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::client::smtp_session;
use super::procs::{self, Ports, Proc};

/// The deadline given to every protocol, and the trickle interval (well
/// inside it, so a per-read timeout never fires).
const DEADLINE: Duration = Duration::from_secs(6);
const TRICKLE: Duration = Duration::from_millis(1500);

/// What a trickler sends, one byte at a time.
fn payload(kind: usize) -> Vec<u8> {
    let (head, fill): (&[u8], u8) = match kind {
        0 => (b"NOOP ", b'x'),
        1 => (b"a NOOP ", b'x'),
        2 => (b"NOOP ", b'x'),
        // A TLS handshake record announcing 512 bytes of ClientHello.
        _ => (&[0x16, 0x03, 0x01, 0x02, 0x00], 0),
    };
    let mut p = head.to_vec();
    p.resize(4096, fill);
    p
}

const KINDS: [&str; 4] = ["SMTP", "IMAP", "POP3", "TLS"];

/// One trickler from `source` to `addr`: how long until the server closed
/// the connection, or `None` if it was still open after `limit`.
async fn trickle(
    kind: usize,
    addr: SocketAddr,
    source: IpAddr,
    limit: Duration,
) -> Option<Duration> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    let stream = socket.connect(addr).await.expect("connect");
    let start = Instant::now();
    let (mut read, mut write) = stream.into_split();
    let reader = tokio::spawn(async move {
        let mut buf = [0u8; 1024];
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => return start.elapsed(),
                Ok(_) => {}
            }
        }
    });
    let writer = async {
        for b in payload(kind) {
            if write.write_all(&[b]).await.is_err() {
                break;
            }
            tokio::time::sleep(TRICKLE).await;
        }
        std::future::pending::<()>().await;
    };
    tokio::select! {
        closed = reader => Some(closed.unwrap()),
        _ = writer => None,
        _ = tokio::time::sleep(limit) => None,
    }
}

/// One normal SMTP session (greeting, EHLO, NOOP, QUIT): how long it took.
async fn normal(addr: SocketAddr) -> Duration {
    let start = Instant::now();
    let mut c = smtp_session(addr, None)
        .await
        .expect("a normal client is served");
    c.expect("NOOP", 250).await.expect("NOOP");
    let _ = c.cmd("QUIT").await;
    start.elapsed()
}

/// Latencies of `n` normal sessions one after another: (p50, p99).
async fn latencies(addr: SocketAddr, n: usize) -> (Duration, Duration) {
    let mut all = Vec::new();
    for _ in 0..n {
        all.push(normal(addr).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    all.sort();
    (all[n / 2], all[(n * 99 / 100).min(n - 1)])
}

pub async fn slow_clients(tricklers: usize) {
    let (store, db) = mailroom_store::testing::TestDb::sqlite().await;
    super::accounts(&store, &["bob@example.test"]).await;
    let root = tempfile::tempdir().unwrap();
    let ports = Ports::pick();
    let secs = DEADLINE.as_secs().to_string();
    let spec = procs::embedded(
        &db.url,
        root.path(),
        &ports,
        &[
            ("SMTP__COMMAND_TIMEOUT_SECS", secs.clone()),
            ("IMAP__IDLE_TIMEOUT_SECS", secs.clone()),
            ("POP3__IDLE_TIMEOUT_SECS", secs.clone()),
            ("TLS__HANDSHAKE_TIMEOUT_SECS", secs.clone()),
            (
                "LIMITS__MAX_CONNECTIONS",
                (tricklers * 2 + 1000).to_string(),
            ),
        ],
    );
    let mut server = Proc::start(spec, root.path()).await;
    let smtp = Ports::at(ports.smtp);
    let unloaded = latencies(smtp, 50).await;
    let rss_before = server.rss_kib().unwrap_or(0);
    let targets = [ports.smtp, ports.imap, ports.pop3, ports.submission_tls];
    let limit = DEADLINE * 3 + Duration::from_secs(30);
    let mut tasks = Vec::new();
    for i in 0..tricklers {
        let kind = i % 4;
        // Many source addresses: the per-address limit is not what is tested.
        let source = IpAddr::V4(Ipv4Addr::new(
            127,
            0,
            3 + (i / 250) as u8,
            1 + (i % 250) as u8,
        ));
        let addr = Ports::at(targets[kind]);
        tasks.push(tokio::spawn(async move {
            (kind, trickle(kind, addr, source, limit).await)
        }));
    }
    // Measured while every trickler is connected (before the deadline).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let loaded = latencies(smtp, 50).await;
    let rss_peak = server.rss_kib().unwrap_or(0);
    let mut cut = vec![Vec::new(); 4];
    let mut open = [0usize; 4];
    for t in tasks {
        match t.await.unwrap() {
            (kind, Some(after)) => cut[kind].push(after),
            (kind, None) => open[kind] += 1,
        }
    }
    let after = normal(smtp).await;
    let rss_after = server.rss_kib().unwrap_or(0);
    for (kind, name) in KINDS.iter().enumerate() {
        let times = &mut cut[kind];
        times.sort();
        eprintln!(
            "slow clients: {name}: {} cut off (min {:?}, max {:?}), {} still open",
            times.len(),
            times.first(),
            times.last(),
            open[kind]
        );
    }
    eprintln!(
        "slow clients: {tricklers} tricklers; normal SMTP session p50/p99 unloaded {:?}/{:?}, \
         loaded {:?}/{:?}, after {after:?}; server RSS {rss_before} KiB before, {rss_peak} KiB \
         with the tricklers, {rss_after} KiB after",
        unloaded.0, unloaded.1, loaded.0, loaded.1
    );
    assert!(server.running(), "the server exited:\n{}", server.log());
    for (kind, name) in KINDS.iter().enumerate() {
        assert_eq!(
            open[kind], 0,
            "{name} tricklers not cut off within {limit:?}"
        );
        // Never before the deadline (a second of slack for the clocks).
        let first = cut[kind].first().copied().unwrap_or_default();
        assert!(
            first + Duration::from_secs(1) >= DEADLINE,
            "{name}: a trickler was cut off after {first:?}, before its deadline"
        );
    }
    // Bounded memory: generous, a fault would be far above.
    assert!(
        rss_peak < rss_before + 256 * tricklers as u64 + 256 * 1024,
        "RSS grew from {rss_before} KiB to {rss_peak} KiB"
    );
}
