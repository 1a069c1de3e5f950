//! The relay against real peers and real failures: a second Mailroom and a
//! throw-away Postfix instance as remote MX, two MTA processes sharing one
//! PostgreSQL queue, a process killed in the middle of a delivery, and the
//! per-destination connection limit seen from the receiving side.
//!
//! Remote domains are routed by a DNS server on loopback (hickory-server)
//! to peers on 127.0.0.x; every peer of one test listens on the one port the
//! sending stack uses for all MX hosts (`mta.outbound_port`).
//!
//! The Postfix peer is a complete Postfix 3 instance (master, smtpd,
//! cleanup, qmgr, virtual) run from a configuration and queue directory of
//! its own in a temporary directory (`postfix -c DIR start`), listening on
//! 127.0.0.4 only and delivering to a Maildir. The machine's own Postfix is
//! neither started nor read. It needs root (the master daemon starts as root
//! and hands the queue to the `postfix` user), which the tests have; a
//! missing Postfix fails the test, like the other interop tests.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mailroom_address::Address;
use mailroom_store::{QueueEnvelope, QueueRecipient, Store};
use mailroom_tests::{
    Backend, DnsRecord, PASSWORD, Running, SinkReply, SinkScript, SmtpClient, TestDns, first_sink,
    open_store, serve_account, start_with, wait_for, with_accounts,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(30);

fn a(ip: &str) -> DnsRecord {
    DnsRecord::A(ip.parse().unwrap())
}

fn mx(preference: u16, host: &str) -> DnsRecord {
    DnsRecord::Mx(preference, host.to_string())
}

/// A message with its own Message-ID, so receivers can count copies.
fn message(id: &str, to: &str) -> Vec<u8> {
    format!(
        "From: alice@example.test\r\nTo: {to}\r\nSubject: relay {id}\r\n\
         Message-ID: <{id}@example.test>\r\n\r\nHello from {id}.\r\n"
    )
    .into_bytes()
}

async fn enqueue(store: &Store, to: &str, content: &[u8]) -> i64 {
    let envelope = QueueEnvelope {
        sender: "alice@example.test".into(),
        recipients: vec![QueueRecipient {
            address: to.into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    store.enqueue(&envelope, content, 3600).await.unwrap()
}

async fn gone(store: &Store, queue_id: i64) -> bool {
    store.queue_entry(queue_id).await.unwrap().is_none()
}

/// The configuration changes that point a stack's relay at `dns` and `port`.
fn relay_to(
    dns: &TestDns,
    port: u16,
) -> impl Fn(&mut mailroom_config::Config) + Clone + Send + 'static + use<> {
    let dns = dns.addr;
    move |config| {
        config.mta.dns_servers = vec![dns];
        config.mta.outbound_port = port;
        config.mta.first_retry_secs = 1;
        config.mta.connect_timeout_secs = 5;
        config.mta.command_timeout_secs = 5;
        config.mta.data_timeout_secs = 5;
    }
}

/// Submits one message as alice through the stack's submission port.
async fn submit(r: &Running, to: &str, body: &[u8]) {
    let (mut c, _) = SmtpClient::connect(r.stack.addr("submission").unwrap()).await;
    c.cmd("EHLO client.test").await;
    assert_eq!(c.auth_plain("alice@example.test", PASSWORD).await.0, 235);
    assert_eq!(c.cmd("MAIL FROM:<alice@example.test>").await.0, 250);
    assert_eq!(c.cmd(&format!("RCPT TO:<{to}>")).await.0, 250);
    assert_eq!(c.cmd("DATA").await.0, 354);
    c.send(body).await;
    c.send(b".\r\n").await;
    let (code, text) = c.reply().await;
    assert_eq!(code, 250, "{text}");
    c.cmd("QUIT").await;
}

/// A binary MIME message (RFC 3030 §3), complete (Date and Message-ID, so
/// the submission adds nothing but its trace) and with everything DATA would alter:
/// bare CR, bare LF, NUL, high octets, lines starting with `.`, a CRLF dot
/// CRLF, no final CRLF; over 1 MiB, so the relay sends it in more than one
/// BDAT chunk.
fn binary_message(id: &str, to: &str) -> Vec<u8> {
    let mut m = format!(
        "From: alice@example.test\r\nTo: {to}\r\nSubject: binary {id}\r\n\
         Date: Thu, 1 Jan 2026 00:00:00 +0000\r\n\
         Message-ID: <{id}@example.test>\r\nMIME-Version: 1.0\r\n\
         Content-Type: application/octet-stream\r\n\
         Content-Transfer-Encoding: binary\r\n\r\n"
    )
    .into_bytes();
    m.extend_from_slice(b".first line\r\n..second\r\n.\r\nbare LF\n.dot after LF\n");
    m.extend_from_slice(b"bare CR\r.dot after CR\rNUL\0NUL\r\n\xff\xfe\x80\r\n");
    let mut x: u32 = 0x2545_f491;
    while m.len() < (1 << 20) + 4096 {
        // Every octet value, in no particular order.
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        m.push((x >> 24) as u8);
    }
    m.extend_from_slice(b"\r\n.\r\nthe end, without CRLF.");
    m
}

/// Submits `content` as a binary message (`BODY=BINARYMIME`, one BDAT)
/// as alice through the stack's submission port.
async fn submit_binary(r: &Running, to: &str, content: &[u8]) {
    let (mut c, _) = SmtpClient::connect(r.stack.addr("submission").unwrap()).await;
    let (_, ehlo) = c.cmd("EHLO client.test").await;
    assert!(
        ehlo.contains("BINARYMIME") && ehlo.contains("CHUNKING"),
        "{ehlo}"
    );
    assert_eq!(c.auth_plain("alice@example.test", PASSWORD).await.0, 235);
    assert_eq!(
        c.cmd("MAIL FROM:<alice@example.test> BODY=BINARYMIME")
            .await
            .0,
        250
    );
    assert_eq!(c.cmd(&format!("RCPT TO:<{to}>")).await.0, 250);
    c.send(format!("BDAT {} LAST\r\n", content.len()).as_bytes())
        .await;
    c.send(content).await;
    let (code, text) = c.reply().await;
    assert_eq!(code, 250, "{text}");
    c.cmd("QUIT").await;
}

async fn inbox_of(store: &Store, account: &str) -> i64 {
    let acc = store
        .get_account(&Address::parse(account).unwrap())
        .await
        .unwrap()
        .unwrap();
    store
        .list_mailboxes(acc.id)
        .await
        .unwrap()
        .into_iter()
        .find(|m| m.name == "INBOX")
        .unwrap()
        .id
}

// ---------------------------------------------------------------------------
// A counting peer: how many sessions at once, and which messages, how often.
// ---------------------------------------------------------------------------

#[derive(Debug, Default)]
struct Counts {
    active: usize,
    max_active: usize,
    sessions: usize,
    /// Message-IDs in the order their data ended, duplicates kept.
    message_ids: Vec<String>,
}

/// An SMTP peer that holds every message `hold` before answering 250 (so
/// sessions overlap) and counts concurrent sessions and Message-IDs.
struct CountingSink {
    addr: SocketAddr,
    counts: Arc<Mutex<Counts>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for CountingSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Leaves the count of active sessions when a session ends, however it ends.
struct Active(Arc<Mutex<Counts>>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.lock().unwrap().active -= 1;
    }
}

impl CountingSink {
    async fn bind(ip: &str, hold: Duration) -> CountingSink {
        let listener = tokio::net::TcpListener::bind((ip.parse::<std::net::IpAddr>().unwrap(), 0))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let counts = Arc::new(Mutex::new(Counts::default()));
        let c = counts.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                {
                    let mut n = c.lock().unwrap();
                    n.active += 1;
                    n.sessions += 1;
                    n.max_active = n.max_active.max(n.active);
                }
                let guard = Active(c.clone());
                tokio::spawn(async move {
                    let _ = counting_session(stream, hold, &guard.0).await;
                    drop(guard);
                });
            }
        });
        CountingSink { addr, counts, task }
    }

    fn max_active(&self) -> usize {
        self.counts.lock().unwrap().max_active
    }

    fn sessions(&self) -> usize {
        self.counts.lock().unwrap().sessions
    }

    fn message_ids(&self) -> Vec<String> {
        self.counts.lock().unwrap().message_ids.clone()
    }
}

async fn counting_session(
    stream: tokio::net::TcpStream,
    hold: Duration,
    counts: &Mutex<Counts>,
) -> std::io::Result<()> {
    let mut io = tokio::io::BufReader::new(stream);
    io.get_mut().write_all(b"220 count.test ESMTP\r\n").await?;
    loop {
        let mut line = String::new();
        if io.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let upper = line.trim_end().to_ascii_uppercase();
        let reply: &[u8] = if upper.starts_with("EHLO") {
            b"250-count.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n"
        } else if upper == "DATA" {
            io.get_mut().write_all(b"354 go ahead\r\n").await?;
            let mut id = String::new();
            loop {
                let mut l = String::new();
                if io.read_line(&mut l).await? == 0 {
                    return Ok(());
                }
                if l == ".\r\n" {
                    break;
                }
                if let Some(v) = l.strip_prefix("Message-ID:") {
                    id = v.trim().to_string();
                }
            }
            tokio::time::sleep(hold).await;
            counts.lock().unwrap().message_ids.push(id);
            b"250 2.0.0 counted\r\n"
        } else if upper == "QUIT" {
            io.get_mut().write_all(b"221 2.0.0 bye\r\n").await?;
            return Ok(());
        } else {
            b"250 2.0.0 ok\r\n"
        };
        io.get_mut().write_all(reply).await?;
    }
}

// ---------------------------------------------------------------------------
// Per-destination connection limit.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_never_gets_more_sessions_than_its_limit() {
    let sink = CountingSink::bind("127.0.0.2", Duration::from_millis(300)).await;
    let dns = TestDns::start(
        "busy.test",
        &[("@", mx(10, "mx.busy.test")), ("mx", a("127.0.0.2"))],
    )
    .await;
    let route = relay_to(&dns, sink.addr.port());
    let running = start_with(Backend::Sqlite, None, move |c| {
        route(c);
        c.mta.max_connections_per_destination = 2;
        // Two messages a session: five sessions at least, so that two of
        // them can overlap.
        c.mta.max_messages_per_session = 2;
    })
    .await
    .unwrap();
    let store = open_store(&running).await;
    let mut ids = Vec::new();
    let mut expected = BTreeSet::new();
    for i in 0..10 {
        let name = format!("limit-{i}");
        expected.insert(format!("<{name}@example.test>"));
        ids.push(
            enqueue(
                &store,
                &format!("u{i}@busy.test"),
                &message(&name, "busy.test"),
            )
            .await,
        );
    }
    let started = Instant::now();
    wait_for("every delivery", WAIT, async || {
        store.queue_size().await.unwrap() == 0
    })
    .await;
    let got = sink.message_ids();
    assert_eq!(got.len(), 10, "each message once: {got:?}");
    assert_eq!(got.iter().cloned().collect::<BTreeSet<_>>(), expected);
    assert_eq!(
        sink.max_active(),
        2,
        "the limit is reached (sessions run in parallel) and never exceeded"
    );
    let sessions = sink.sessions();
    assert!(
        (5..=10).contains(&sessions),
        "at most two messages a session: {sessions} sessions"
    );
    // Ten messages held 300 ms each, two at a time: at least five rounds.
    assert!(started.elapsed() >= Duration::from_millis(1400));
    running.stack.stop(Duration::from_secs(5)).await;
}

// ---------------------------------------------------------------------------
// a. Another Mailroom as the remote MX.
// ---------------------------------------------------------------------------

/// The receiving instance: remote.test with the account carol, inbound
/// SMTP on 127.0.0.3, named by a DNS server; with its store, the DNS
/// server and the SMTP port.
async fn remote_mailroom() -> (Running, Store, TestDns, u16) {
    let remote = start_with(Backend::Sqlite, None, |c| {
        c.server.hostname = "mx.remote.test".into();
        c.mta.listen = vec!["127.0.0.3:0".parse().unwrap()];
    })
    .await
    .unwrap();
    let remote_store = open_store(&remote).await;
    serve_account(&remote_store, "carol@remote.test").await;
    let port = remote.stack.addr("smtp").unwrap().port();
    let dns = TestDns::start(
        "remote.test",
        &[("@", mx(10, "mx.remote.test")), ("mx", a("127.0.0.3"))],
    )
    .await;
    (remote, remote_store, dns, port)
}

/// `text` (a message in carol's INBOX at the remote Mailroom) starts with
/// the receiver's trace, followed by the sender's from the submission.
fn assert_trace_of_the_relay_to_carol(text: &str) {
    assert!(
        text.starts_with(
            "Return-Path: <alice@example.test>\r\nDelivered-To: carol@remote.test\r\n\
             Received: from mx.example.test ([127.0.0.1])\r\n\tby mx.remote.test (Mailroom) with ESMTPS id "
        ),
        "{text}"
    );
    assert!(
        text.contains("Received: from client.test ([127.0.0.1])\r\n\tby mx.example.test (Mailroom) with ESMTPA id "),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_mailroom_receives_relayed_mail_into_its_inbox() {
    let (remote, remote_store, dns, port) = remote_mailroom().await;
    // The sending instance, on PostgreSQL.
    let Some(sender) = start_with(Backend::Postgres, None, relay_to(&dns, port)).await else {
        return;
    };
    let sender_store = with_accounts(&sender, &["alice@example.test"]).await;
    submit(
        &sender,
        "carol@remote.test",
        &message("peer-mailroom", "carol@remote.test"),
    )
    .await;
    let inbox = inbox_of(&remote_store, "carol@remote.test").await;
    wait_for("delivery at the remote Mailroom", WAIT, async || {
        remote_store.list_messages(inbox).await.unwrap().len() == 1
    })
    .await;
    let text =
        String::from_utf8(remote_store.read_message(inbox, 1).await.unwrap().unwrap()).unwrap();
    // The receiver's trace first, then the sender's, then the message as sent.
    assert_trace_of_the_relay_to_carol(&text);
    assert!(
        text.contains("Message-ID: <peer-mailroom@example.test>\r\n"),
        "{text}"
    );
    assert!(
        text.ends_with("\r\n\r\nHello from peer-mailroom.\r\n"),
        "{text}"
    );
    assert!(!text.contains("DKIM-Signature"), "{text}");
    wait_for("the sender's queue to empty", WAIT, async || {
        sender_store.queue_size().await.unwrap() == 0
    })
    .await;
    sender.stack.stop(Duration::from_secs(5)).await;
    remote.stack.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_message_reaches_another_mailroom_byte_for_byte_with_bdat() {
    let (remote, remote_store, dns, port) = remote_mailroom().await;
    let sender = start_with(Backend::Sqlite, None, relay_to(&dns, port))
        .await
        .unwrap();
    let sender_store = with_accounts(&sender, &["alice@example.test"]).await;
    let content = binary_message("binary-mailroom", "carol@remote.test");
    submit_binary(&sender, "carol@remote.test", &content).await;
    let inbox = inbox_of(&remote_store, "carol@remote.test").await;
    wait_for("delivery at the remote Mailroom", WAIT, async || {
        remote_store.list_messages(inbox).await.unwrap().len() == 1
    })
    .await;
    let stored = remote_store.read_message(inbox, 1).await.unwrap().unwrap();
    // Only trace fields were put in front (the receiver's, then the
    // sender's from the submission), and what follows is the message as
    // submitted, every octet: with DATA the receiver would have refused it
    // (503), and dot-stuffing would have changed the line endings.
    assert!(
        stored.ends_with(&content),
        "the message is not intact ({} octets stored, {} sent)",
        stored.len(),
        content.len()
    );
    let trace = String::from_utf8(stored[..stored.len() - content.len()].to_vec()).unwrap();
    assert_trace_of_the_relay_to_carol(&trace);
    assert!(trace.ends_with("\r\n"), "{trace}");
    for line in trace.trim_end_matches("\r\n").split("\r\n") {
        assert!(
            line.starts_with("Return-Path: ")
                || line.starts_with("Delivered-To: ")
                || line.starts_with("Received: ")
                || line.starts_with('\t'),
            "not a trace field: {line:?} in\n{trace}"
        );
    }
    wait_for("the sender's queue to empty", WAIT, async || {
        sender_store.queue_size().await.unwrap() == 0
    })
    .await;
    sender.stack.stop(Duration::from_secs(5)).await;
    remote.stack.stop(Duration::from_secs(5)).await;
}

// ---------------------------------------------------------------------------
// b. Postfix as the remote MX.
// ---------------------------------------------------------------------------

/// A throw-away Postfix instance; aborted when dropped.
struct PostfixPeer {
    dir: tempfile::TempDir,
    port: u16,
}

impl PostfixPeer {
    fn config_dir(&self) -> PathBuf {
        self.dir.path().join("etc")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postfix.log")).unwrap_or_default()
    }

    /// Messages delivered to `user`'s Maildir so far.
    fn maildir(&self, user: &str) -> Vec<String> {
        let new = self.dir.path().join("mail").join(user).join("new");
        let mut out: Vec<String> = std::fs::read_dir(new)
            .map(|d| {
                d.filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }

    /// Starts Postfix on `ip` at a free port, final destination for
    /// `domain` with one virtual mailbox per `users`, STARTTLS offered.
    fn start(ip: &str, hostname: &str, domain: &str, users: &[&str]) -> PostfixPeer {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for sub in ["etc", "queue", "data", "mail", "tls"] {
            std::fs::create_dir(root.join(sub)).unwrap();
        }
        let chown = |path: &Path| {
            let out = Command::new("chown")
                .arg("postfix")
                .arg(path)
                .output()
                .expect("chown");
            assert!(out.status.success(), "chown {}: {out:?}", path.display());
        };
        // The postfix user must reach its directories through the temp dir.
        let out = Command::new("chmod").arg("755").arg(root).output().unwrap();
        assert!(out.status.success());
        chown(&root.join("data"));
        chown(&root.join("mail"));
        let id = |flag: &str| {
            let out = Command::new("id")
                .args([flag, "postfix"])
                .output()
                .expect("id");
            String::from_utf8(out.stdout).unwrap().trim().to_string()
        };
        let (uid, gid) = (id("-u"), id("-g"));
        mailroom_net::tls::install_default_provider();
        let (cert, key) =
            mailroom_net::tls::ensure_self_signed(&root.join("tls"), hostname).unwrap();
        let port = std::net::TcpListener::bind((ip, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let r = root.display();
        std::fs::write(
            root.join("etc/main.cf"),
            format!(
                "compatibility_level = 3.6\n\
                 queue_directory = {r}/queue\n\
                 data_directory = {r}/data\n\
                 mail_owner = postfix\n\
                 setgid_group = postdrop\n\
                 inet_interfaces = loopback-only\n\
                 inet_protocols = ipv4\n\
                 myhostname = {hostname}\n\
                 mydestination =\n\
                 mynetworks = 127.0.0.0/8\n\
                 smtpd_banner = $myhostname ESMTP\n\
                 virtual_mailbox_domains = {domain}\n\
                 virtual_mailbox_base = {r}/mail\n\
                 virtual_mailbox_maps = texthash:{r}/etc/vmailbox\n\
                 virtual_uid_maps = static:{uid}\n\
                 virtual_gid_maps = static:{gid}\n\
                 virtual_minimum_uid = 1\n\
                 smtpd_tls_security_level = may\n\
                 smtpd_tls_cert_file = {}\n\
                 smtpd_tls_key_file = {}\n\
                 smtpd_tls_received_header = yes\n\
                 maillog_file_prefixes = {r}\n\
                 maillog_file = {r}/postfix.log\n",
                cert.display(),
                key.display(),
            ),
        )
        .unwrap();
        let mailboxes: String = users
            .iter()
            .map(|u| format!("{u}@{domain} {u}/\n"))
            .collect();
        std::fs::write(root.join("etc/vmailbox"), mailboxes).unwrap();
        // Only the services this path uses; nothing chrooted.
        std::fs::write(
            root.join("etc/master.cf"),
            format!(
                "{ip}:{port} inet n - n - - smtpd\n\
                 pickup    unix  n - n 60 1 pickup\n\
                 cleanup   unix  n - n -  0 cleanup\n\
                 qmgr      unix  n - n 300 1 qmgr\n\
                 tlsmgr    unix  - - n 1000? 1 tlsmgr\n\
                 rewrite   unix  - - n -  - trivial-rewrite\n\
                 bounce    unix  - - n -  0 bounce\n\
                 defer     unix  - - n -  0 bounce\n\
                 trace     unix  - - n -  0 bounce\n\
                 verify    unix  - - n -  1 verify\n\
                 flush     unix  n - n 1000? 0 flush\n\
                 proxymap  unix  - - n -  - proxymap\n\
                 proxywrite unix - - n -  1 proxymap\n\
                 smtp      unix  - - n -  - smtp\n\
                 relay     unix  - - n -  - smtp\n\
                 showq     unix  n - n -  - showq\n\
                 error     unix  - - n -  - error\n\
                 retry     unix  - - n -  - error\n\
                 discard   unix  - - n -  - discard\n\
                 local     unix  - n n -  - local\n\
                 virtual   unix  - n n -  - virtual\n\
                 anvil     unix  - - n -  1 anvil\n\
                 scache    unix  - - n -  1 scache\n\
                 postlog   unix-dgram n - n - 1 postlogd\n"
            ),
        )
        .unwrap();
        let peer = PostfixPeer { dir, port };
        let out = Command::new("postfix")
            .arg("-c")
            .arg(peer.config_dir())
            .arg("start")
            .output()
            .expect("postfix could not be run; apt-get install postfix (.ci/run installs it)");
        assert!(
            out.status.success(),
            "postfix start failed: {out:?}\n{}",
            peer.log()
        );
        peer
    }
}

impl Drop for PostfixPeer {
    fn drop(&mut self) {
        let _ = Command::new("postfix")
            .arg("-c")
            .arg(self.config_dir())
            .arg("abort")
            .output();
    }
}

/// Postfix as mx.postfix.test on 127.0.0.4, final destination for
/// postfix.test (user carol), listening, and the DNS server that names it.
async fn postfix_peer() -> (PostfixPeer, TestDns) {
    let postfix = tokio::task::spawn_blocking(|| {
        PostfixPeer::start("127.0.0.4", "mx.postfix.test", "postfix.test", &["carol"])
    })
    .await
    .unwrap();
    let addr: SocketAddr = format!("127.0.0.4:{}", postfix.port).parse().unwrap();
    wait_for("Postfix to listen", WAIT, async || {
        tokio::net::TcpStream::connect(addr).await.is_ok()
    })
    .await;
    let dns = TestDns::start(
        "postfix.test",
        &[("@", mx(10, "mx.postfix.test")), ("mx", a("127.0.0.4"))],
    )
    .await;
    (postfix, dns)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postfix_receives_relayed_mail_into_a_maildir() {
    let (postfix, dns) = postfix_peer().await;
    let running = start_with(Backend::Sqlite, None, relay_to(&dns, postfix.port))
        .await
        .unwrap();
    let store = with_accounts(&running, &["alice@example.test"]).await;
    submit(
        &running,
        "carol@postfix.test",
        &message("peer-postfix", "carol@postfix.test"),
    )
    .await;
    let mut delivered = Vec::new();
    let deadline = Instant::now() + WAIT;
    while delivered.is_empty() {
        assert!(
            Instant::now() < deadline,
            "nothing reached the Maildir; Postfix's log:\n{}",
            postfix.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        delivered = postfix.maildir("carol");
    }
    assert_eq!(delivered.len(), 1);
    let text = delivered[0].replace("\r\n", "\n");
    // The envelope, as Postfix's virtual(8) records it.
    assert!(
        text.starts_with(
            "Return-Path: <alice@example.test>\nX-Original-To: carol@postfix.test\n\
             Delivered-To: carol@postfix.test\n"
        ),
        "{text}"
    );
    // Postfix's trace: our EHLO name and address, over STARTTLS.
    assert!(
        text.contains("Received: from mx.example.test (localhost [127.0.0.1])\n"),
        "{text}"
    );
    assert!(
        text.contains("by mx.postfix.test (Postfix) with ESMTPS id "),
        "{text}"
    );
    // Then ours, from the submission, and the message as it was sent.
    assert!(
        text.contains("Received: from client.test ([127.0.0.1])\n\tby mx.example.test (Mailroom) with ESMTPA id "),
        "{text}"
    );
    assert!(
        text.contains("Message-ID: <peer-postfix@example.test>\n"),
        "{text}"
    );
    assert!(text.ends_with("\n\nHello from peer-postfix.\n"), "{text}");
    assert!(!text.contains("DKIM-Signature"), "{text}");
    let log = postfix.log();
    assert!(
        log.contains("from=<alice@example.test>") && log.contains("to=<carol@postfix.test>"),
        "{log}"
    );
    wait_for("the queue to empty", WAIT, async || {
        store.queue_size().await.unwrap() == 0
    })
    .await;
    running.stack.stop(Duration::from_secs(5)).await;
}

/// Postfix 3.x offers CHUNKING but not BINARYMIME (its smtpd has no
/// BINARYMIME support), so a binary message cannot be relayed to it: it
/// fails at once with 5.6.3, nothing is sent, and the sender gets a report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_message_to_postfix_fails_with_5_6_3_and_a_report_to_the_sender() {
    let (postfix, dns) = postfix_peer().await;
    let addr: SocketAddr = format!("127.0.0.4:{}", postfix.port).parse().unwrap();
    // What this test is about: check Postfix's offer first.
    {
        let (mut c, (code, _)) = SmtpClient::connect(addr).await;
        assert_eq!(code, 220);
        let (code, ehlo) = c.cmd("EHLO probe.test").await;
        assert_eq!(code, 250);
        let offers: Vec<&str> = ehlo.lines().collect();
        assert!(offers.contains(&"CHUNKING"), "{ehlo}");
        assert!(
            !offers.contains(&"BINARYMIME"),
            "this Postfix offers BINARYMIME: the message should now be delivered \
             (test it like the Mailroom peer): {ehlo}"
        );
        c.cmd("QUIT").await;
    }
    let running = start_with(Backend::Sqlite, None, relay_to(&dns, postfix.port))
        .await
        .unwrap();
    let store = with_accounts(&running, &["alice@example.test"]).await;
    let content = binary_message("binary-postfix", "carol@postfix.test");
    submit_binary(&running, "carol@postfix.test", &content).await;
    // The report comes back to alice's own INBOX, from <>.
    let inbox = inbox_of(&store, "alice@example.test").await;
    wait_for("the report in alice's INBOX", WAIT, async || {
        !store.list_messages(inbox).await.unwrap().is_empty()
    })
    .await;
    let report = store.read_message(inbox, 1).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&report);
    assert!(text.starts_with("Return-Path: <>\r\n"), "{text}");
    assert!(
        text.contains("Final-Recipient: rfc822; carol@postfix.test\r\n"),
        "{text}"
    );
    assert!(
        text.contains("Action: failed\r\nStatus: 5.6.3\r\n"),
        "{text}"
    );
    assert!(
        text.contains("mx.postfix.test[127.0.0.4] cannot receive a binary MIME message (RFC 3030)"),
        "the reason names the peer and the rule: {text}"
    );
    wait_for("the queue to empty", WAIT, async || {
        store.queue_size().await.unwrap() == 0
    })
    .await;
    assert!(postfix.maildir("carol").is_empty(), "nothing was delivered");
    let log = postfix.log();
    assert!(
        !log.contains("from=<alice@example.test>"),
        "no transaction reached Postfix's queue: {log}"
    );
    running.stack.stop(Duration::from_secs(5)).await;
}

// ---------------------------------------------------------------------------
// c. Two MTA processes, one PostgreSQL queue.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_mta_processes_share_a_postgres_queue_and_deliver_each_message_once() {
    let Some((store, db)) = mailroom_store::testing::TestDb::postgres().await else {
        return;
    };
    // Each session held 400 ms: 50 messages take a lone process 10 s, so
    // the second process starts working long before the first could be
    // done, even on a loaded machine.
    let sink = CountingSink::bind("127.0.0.2", Duration::from_millis(400)).await;
    let dns = TestDns::start(
        "shared.test",
        &[("@", mx(10, "mx.shared.test")), ("mx", a("127.0.0.2"))],
    )
    .await;
    // Two processes' worth of `mailroom serve mta` on the same database,
    // each allowed two sessions to the destination.
    let mut mtas = Vec::new();
    for _ in 0..2 {
        let (route, url) = (relay_to(&dns, sink.addr.port()), db.url.clone());
        let mta = start_with(
            Backend::Postgres,
            Some(mailroom::ServiceName::Mta),
            move |c| {
                route(c);
                c.store.url = Some(url);
                c.mta.max_connections_per_destination = 2;
                // Five messages a session: the first process to look leases
                // ten at most (two sessions' worth), and the other finds
                // work too.
                c.mta.max_messages_per_session = 5;
            },
        )
        .await
        .unwrap();
        mtas.push(mta);
    }
    let mut expected = BTreeSet::new();
    for i in 0..50 {
        let name = format!("shared-{i}");
        expected.insert(format!("<{name}@example.test>"));
        enqueue(
            &store,
            &format!("u{i}@shared.test"),
            &message(&name, "shared.test"),
        )
        .await;
    }
    wait_for("every delivery", Duration::from_secs(60), async || {
        store.queue_size().await.unwrap() == 0
    })
    .await;
    let got = sink.message_ids();
    let distinct: BTreeSet<String> = got.iter().cloned().collect();
    assert_eq!(distinct, expected, "every message arrived");
    assert_eq!(got.len(), 50, "and none twice");
    let max = sink.max_active();
    assert!(
        max > 2,
        "both processes delivered at the same time (max {max} sessions at once)"
    );
    assert!(max <= 4, "each kept its own limit of 2 (max {max})");
    for mta in mtas {
        mta.stack.stop(Duration::from_secs(5)).await;
    }
}

// ---------------------------------------------------------------------------
// d. A process killed in the middle of a delivery.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_cut_off_by_a_crash_is_made_again_after_the_lease() {
    killed_mid_delivery(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_cut_off_by_a_crash_is_made_again_once_its_worker_is_gone_postgres() {
    killed_mid_delivery(Backend::Postgres).await;
}

async fn killed_mid_delivery(backend: Backend) {
    let (store, db) = match backend {
        Backend::Sqlite => mailroom_store::testing::TestDb::sqlite().await,
        Backend::Postgres => match mailroom_store::testing::TestDb::postgres().await {
            Some(s) => s,
            None => return,
        },
    };
    // The peer takes the first message's data and never answers.
    let sink = first_sink(SinkScript {
        data_end: Box::new(|n| {
            if n == 0 {
                SinkReply::Hang
            } else {
                SinkReply::Say("250 2.0.0 queued".into())
            }
        }),
        ..SinkScript::default()
    })
    .await;
    let dns = TestDns::start(
        "crash.test",
        &[("@", mx(10, "mx.crash.test")), ("mx", a("127.0.0.2"))],
    )
    .await;
    let config = {
        let (route, url) = (relay_to(&dns, sink.addr.port()), db.url.clone());
        move |c: &mut mailroom_config::Config| {
            route(c);
            c.store.url = Some(url.clone());
            // On SQLite a dead process's lease runs out (2 s); on PostgreSQL
            // its worker's presence ends with its connection and the lease
            // comes back at once, so a lease of a minute must not be waited
            // out (issue 18).
            c.mta.lease_secs = if backend == Backend::Postgres { 60 } else { 2 };
            // Long enough that only the crash ends the first attempt.
            c.mta.data_timeout_secs = 120;
        }
    };
    // The first process runs on a runtime of its own, so that it can be
    // killed: shutting the runtime down drops every task at its next await,
    // with no graceful stop, no lease released and no result recorded.
    let doomed = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let first_config = config.clone();
    let first: Running = doomed
        .spawn(async move { start_with(backend, None, first_config).await.unwrap() })
        .await
        .unwrap();
    let content = message("crash", "crash.test");
    let id = enqueue(&store, "victim@crash.test", &content).await;
    wait_for("the data to reach the hanging peer", WAIT, async || {
        sink.received().len() == 1
    })
    .await;
    // A second process on the same store meanwhile: the first one renews
    // its lease while it lives, so the second must leave the recipient alone
    // for well over a lease's length.
    let second = start_with(backend, None, config).await.unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        sink.received().len(),
        1,
        "a live worker's lease was taken over"
    );
    assert!(!gone(&store, id).await);
    // Now the first process dies without a word.
    doomed.shutdown_background();
    let killed = Instant::now();
    drop(first);
    wait_for("the retry by the other process", WAIT, async || {
        gone(&store, id).await
    })
    .await;
    if backend == Backend::Postgres {
        assert!(
            killed.elapsed() < Duration::from_secs(25),
            "taken over within seconds, not after the 60 s lease: {:?}",
            killed.elapsed()
        );
    } else {
        assert!(
            killed.elapsed() >= Duration::from_secs(1),
            "taken over only once the lease ran out"
        );
    }
    let got = sink.received();
    assert_eq!(
        got.len(),
        2,
        "at least once: the cut-off copy and the new one"
    );
    assert_eq!(got[0].answered, "(hung)");
    assert_eq!(got[1].answered, "250 2.0.0 queued");
    assert_eq!(got[0].data, content);
    assert_eq!(got[1].data, content);
    second.stack.stop(Duration::from_secs(5)).await;
    store.close().await;
    drop(db);
}
