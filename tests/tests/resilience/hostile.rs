//! Hostile remote MX hosts: one remote domain per misbehaviour, each
//! served by a scripted SMTP server on a loopback address of its own (all
//! on one port, `mta.outbound_port`) whose first session misbehaves and
//! whose later ones accept: it stalls after the data, drops the connection
//! in the middle of the data, answers `421` at the greeting, answers `250`
//! then resets the connection, or answers garbage. One more domain's DNS
//! queries are never answered (until the test lets them through). A good
//! domain is sent to at the same moment.
//!
//! Checked: the good domain's mail is accepted while the stalled session
//! is still in its first attempt and still its domain's only session (other
//! destinations are not slowed; `mta.max_connections_per_destination = 1`
//! holds, two more messages to the stalled domain wait for it); the
//! stalled attempt and the silent DNS end by their timeouts
//! (`mta.data_timeout_secs`, the resolver's) plus a generous margin, with
//! the recipient deferred, not failed; in the end every message is
//! accepted by its MX exactly once (a `250` answered once; the reset after
//! `250` is not a reason to send again).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mailroom_tests::{Backend, DnsRecord, Running, SmtpClient, TestDns, start_with};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// What a server does in its first session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Misbehaviour {
    /// Reads the whole message, then says nothing.
    StallAfterData,
    /// Closes the connection in the middle of the data.
    DropMidData,
    /// `421` at the greeting, then closes.
    Greeting421,
    /// `250` to the data, then resets the connection.
    AcceptThenReset,
    /// Garbage instead of a greeting.
    Garbage,
    /// Never misbehaves.
    None,
}

const SERVERS: [(&str, Misbehaviour); 6] = [
    ("stall", Misbehaviour::StallAfterData),
    ("drop", Misbehaviour::DropMidData),
    ("busy", Misbehaviour::Greeting421),
    ("reset", Misbehaviour::AcceptThenReset),
    ("garbage", Misbehaviour::Garbage),
    ("good", Misbehaviour::None),
];

/// One scripted MX: the Message-IDs it answered `250` to.
struct Hostile {
    accepted: Arc<Mutex<Vec<String>>>,
    sessions: Arc<AtomicUsize>,
    _task: AbortOnDrop,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Hostile {
    async fn bind(addr: SocketAddr, how: Misbehaviour) -> std::io::Result<Hostile> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let sessions = Arc::new(AtomicUsize::new(0));
        let (a, s) = (accepted.clone(), sessions.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let n = s.fetch_add(1, Ordering::SeqCst);
                let how = if n == 0 { how } else { Misbehaviour::None };
                let a = a.clone();
                tokio::spawn(async move {
                    let _ = session(stream, how, &a).await;
                });
            }
        });
        Ok(Hostile {
            accepted,
            sessions,
            _task: AbortOnDrop(task),
        })
    }
}

async fn session(
    stream: tokio::net::TcpStream,
    how: Misbehaviour,
    accepted: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    let mut io = BufReader::new(stream);
    match how {
        Misbehaviour::Greeting421 => {
            io.get_mut()
                .write_all(b"421 4.3.2 mx busy, try later\r\n")
                .await?;
            return Ok(());
        }
        Misbehaviour::Garbage => {
            io.get_mut()
                .write_all(b"\x00\xffHELLO? \x1b[31mgarbage\r\n\r\n")
                .await?;
            let mut sink = [0u8; 1024];
            while io.read(&mut sink).await? > 0 {}
            return Ok(());
        }
        _ => {
            io.get_mut()
                .write_all(b"220 mx.hostile.test ESMTP\r\n")
                .await?
        }
    }
    let mut data = false;
    let mut message = Vec::new();
    loop {
        let mut line = Vec::new();
        if io.read_until(b'\n', &mut line).await? == 0 {
            return Ok(());
        }
        if data {
            if line == b".\r\n" {
                data = false;
                let text = String::from_utf8_lossy(&message).into_owned();
                let id = text
                    .lines()
                    .find_map(|l| l.strip_prefix("Message-ID: "))
                    .unwrap_or("(none)")
                    .to_string();
                message.clear();
                match how {
                    Misbehaviour::StallAfterData => {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        return Ok(());
                    }
                    Misbehaviour::AcceptThenReset => {
                        accepted.lock().unwrap().push(id);
                        io.get_mut().write_all(b"250 2.0.0 queued\r\n").await?;
                        io.get_mut().flush().await?;
                        // Dropped with the client's next command unread:
                        // the kernel resets the connection.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        return Ok(());
                    }
                    _ => {
                        accepted.lock().unwrap().push(id);
                        io.get_mut().write_all(b"250 2.0.0 queued\r\n").await?;
                    }
                }
            } else {
                message.extend_from_slice(&line);
                if how == Misbehaviour::DropMidData && message.len() > 40 {
                    return Ok(());
                }
            }
            continue;
        }
        let upper = String::from_utf8_lossy(&line).to_ascii_uppercase();
        let reply: &[u8] = if upper.starts_with("EHLO") {
            b"250-mx.hostile.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n"
        } else if upper.starts_with("DATA") {
            data = true;
            b"354 go ahead\r\n"
        } else if upper.starts_with("QUIT") {
            io.get_mut().write_all(b"221 2.0.0 bye\r\n").await?;
            return Ok(());
        } else {
            b"250 2.0.0 ok\r\n"
        };
        io.get_mut().write_all(reply).await?;
    }
}

/// A DNS front: forwards UDP queries to `upstream`, except those naming
/// `blackhole` while `silent` is set, which it never answers.
async fn dns_front(upstream: SocketAddr, silent: Arc<AtomicBool>) -> (SocketAddr, AbortOnDrop) {
    let socket = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let addr = socket.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let query = buf[..n].to_vec();
            if silent.load(Ordering::SeqCst) && query.windows(10).any(|w| w == b"\x09blackhole") {
                continue;
            }
            let socket = socket.clone();
            tokio::spawn(async move {
                let up = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
                let _ = up.send_to(&query, upstream).await;
                let mut answer = [0u8; 4096];
                if let Ok(Ok(n)) =
                    tokio::time::timeout(Duration::from_secs(5), up.recv(&mut answer)).await
                {
                    let _ = socket.send_to(&answer[..n], from).await;
                }
            });
        }
    });
    (addr, AbortOnDrop(task))
}

/// Submits one message from alice to `to` with Message-ID `<id>`.
async fn submit(running: &Running, to: &str, id: &str) {
    let (mut c, _) = SmtpClient::connect(running.stack.addr("submission").unwrap()).await;
    c.cmd("EHLO client.test").await;
    assert_eq!(
        c.auth_plain("alice@example.test", mailroom_tests::PASSWORD)
            .await
            .0,
        235
    );
    assert_eq!(c.cmd("MAIL FROM:<alice@example.test>").await.0, 250);
    assert_eq!(c.cmd(&format!("RCPT TO:<{to}>")).await.0, 250);
    assert_eq!(c.cmd("DATA").await.0, 354);
    c.send(&super::client::message("alice@example.test", to, id))
        .await;
    let (code, text) = c.reply().await;
    assert_eq!(code, 250, "{text}");
    c.cmd("QUIT").await;
}

/// The state and attempts of recipient `to` (of the entry sent to it).
async fn recipient_of(store: &mailroom_store::Store, to: &str) -> Option<(String, u32)> {
    let filter = mailroom_store::QueueFilter {
        domain: Some(to.rsplit_once('@').unwrap().1.to_string()),
        limit: 100,
        ..Default::default()
    };
    store
        .list_queue(&filter)
        .await
        .unwrap()
        .into_iter()
        .flat_map(|e| e.recipients)
        .find(|r| r.address == to)
        .map(|r| (r.state, r.attempts))
}

pub async fn hostile(backend: Backend) {
    const DATA_TIMEOUT: u64 = 8;
    // One port on six loopback addresses: retry until all six are free.
    let mut servers = Vec::new();
    let mut port = 0;
    'bind: for _ in 0..20 {
        servers.clear();
        port = super::procs::free_port();
        for (i, (_, how)) in SERVERS.iter().enumerate() {
            let addr = SocketAddr::from(([127, 0, 0, 41 + i as u8], port));
            match Hostile::bind(addr, *how).await {
                Ok(h) => servers.push(h),
                Err(_) => continue 'bind,
            }
        }
        break;
    }
    assert_eq!(
        servers.len(),
        SERVERS.len(),
        "no port free on 127.0.0.41-46"
    );
    let mut records = Vec::new();
    for (i, (name, _)) in SERVERS.iter().enumerate() {
        records.push((
            name.to_string(),
            DnsRecord::Mx(10, format!("mx-{name}.hostile.test")),
        ));
        records.push((
            format!("mx-{name}"),
            DnsRecord::A(std::net::Ipv4Addr::new(127, 0, 0, 41 + i as u8)),
        ));
    }
    // The blackhole domain's MX is the good server, once DNS answers.
    records.push((
        "blackhole".into(),
        DnsRecord::Mx(10, "mx-good.hostile.test".into()),
    ));
    let records: Vec<(&str, DnsRecord)> = records
        .iter()
        .map(|(n, r)| (n.as_str(), r.clone()))
        .collect();
    let dns = TestDns::start("hostile.test", &records).await;
    let silent = Arc::new(AtomicBool::new(true));
    let (front, _front) = dns_front(dns.addr, silent.clone()).await;
    let Some(running) = start_with(backend, None, move |c| {
        mailroom_tests::relay_to(c, front, port, DATA_TIMEOUT);
        // One session per destination: the stalled one holds its domain's
        // only slot, and its domain's other messages wait for it.
        c.mta.max_connections_per_destination = 1;
    })
    .await
    else {
        return;
    };
    let store = mailroom_tests::with_accounts(&running, &["alice@example.test"]).await;
    let to = |name: &str| format!("user@{name}.hostile.test");
    let started = std::time::Instant::now();
    for (name, _) in SERVERS
        .iter()
        .chain([("blackhole", Misbehaviour::None)].iter())
    {
        submit(&running, &to(name), &format!("{name}@hostile.test")).await;
    }
    for extra in ["extra1", "extra2"] {
        let to = format!("{extra}@stall.hostile.test");
        submit(&running, &to, &format!("{extra}@hostile.test")).await;
    }
    let good = &servers[5];
    // Other destinations are not slowed: the good domain's mail is in
    // while the stalled session is still in its first attempt.
    super::time_until(
        "the good domain's message accepted",
        Duration::from_secs(60),
        async || !good.accepted.lock().unwrap().is_empty(),
    )
    .await;
    let good_after = started.elapsed();
    let stalled = &servers[0];
    let stall = recipient_of(&store, &to("stall")).await;
    assert!(
        matches!(&stall, Some((_, 0)))
            && stalled.sessions.load(Ordering::SeqCst) == 1
            && stalled.accepted.lock().unwrap().is_empty(),
        "the stalled session should still be the stalled domain's only one (its two other \
         messages waiting for the slot): {stall:?}"
    );
    // The stalled attempt and the silent DNS end by their timeouts, deferred.
    let margin = Duration::from_secs(30);
    super::time_until(
        "the stalled attempt to end",
        Duration::from_secs(DATA_TIMEOUT) + margin,
        async || {
            recipient_of(&store, &to("stall"))
                .await
                .is_none_or(|(_, attempts)| attempts >= 1)
        },
    )
    .await;
    let stall_ended = started.elapsed();
    super::time_until(
        "the attempt under a silent DNS server to end",
        Duration::from_secs(10) + margin,
        async || {
            matches!(recipient_of(&store, &to("blackhole")).await, Some((s, n)) if s == "deferred" && n >= 1)
        },
    )
    .await;
    let dns_ended = started.elapsed();
    silent.store(false, Ordering::SeqCst);
    super::time_until(
        "every message accepted",
        Duration::from_secs(120),
        async || store.queue_size().await.unwrap_or(1) == 0,
    )
    .await;
    let everything = started.elapsed();
    for (i, (name, _)) in SERVERS.iter().enumerate() {
        let accepted = servers[i].accepted.lock().unwrap().clone();
        let mut want = vec![format!("<{name}@hostile.test>")];
        if *name == "good" {
            want.push("<blackhole@hostile.test>".into());
        }
        if *name == "stall" {
            want.push("<extra1@hostile.test>".into());
            want.push("<extra2@hostile.test>".into());
        }
        let mut got = accepted.clone();
        got.sort();
        want.sort();
        assert_eq!(
            got,
            want,
            "{name}: accepted exactly once each ({} sessions)",
            servers[i].sessions.load(Ordering::SeqCst)
        );
    }
    eprintln!(
        "hostile MX ({backend:?}), from submission: good domain accepted after {good_after:?}; \
         stalled attempt ended by {stall_ended:?} (data timeout {DATA_TIMEOUT} s); attempt under \
         the silent DNS deferred by {dns_ended:?}; all delivered exactly once after \
         {everything:?}; sessions per server {:?}",
        servers
            .iter()
            .map(|s| s.sessions.load(Ordering::SeqCst))
            .collect::<Vec<_>>()
    );
    running.stack.stop(Duration::from_secs(5)).await;
}
