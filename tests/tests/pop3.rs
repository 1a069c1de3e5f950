//! POP3 through real sockets: the RFC 1939 state machine, STLS and implicit
//! TLS, the UPDATE-state semantics (QUIT deletes, a dropped connection does
//! not), the one-session lock, login policy and throttling. The tests that
//! touch the store's expunge and lock run on SQLite and PostgreSQL.

use std::net::SocketAddr;
use std::time::Duration;

use mailroom_address::Address;
use mailroom_store::Store;
use mailroom_tests::{
    Backend, PASSWORD, Running, base64_encode, deliver_message, start_with, tls_connect,
    with_accounts,
};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

const ALICE: &str = "alice@example.test";

/// A deliberately small POP3 client: it sends exactly what it is given.
struct Pop3<S> {
    io: BufReader<S>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Pop3<S> {
    async fn send(&mut self, bytes: &[u8]) {
        self.io.get_mut().write_all(bytes).await.unwrap();
    }

    /// One response line without its CRLF; "" when the server closed.
    async fn line(&mut self) -> String {
        let mut raw = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), self.io.read_until(b'\n', &mut raw))
            .await
            .expect("no response within 10 s")
            .unwrap_or(0);
        let text = String::from_utf8(raw).expect("UTF-8 test data");
        text.strip_suffix("\r\n")
            .map(str::to_string)
            .unwrap_or_else(|| {
                assert!(text.is_empty(), "a line without CRLF: {text:?}");
                text
            })
    }

    async fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.line().await
    }

    /// The body of a multi-line response, as sent (still dot-stuffed), up
    /// to but without the terminating `.` line.
    async fn body(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let mut raw = Vec::new();
            let n =
                tokio::time::timeout(Duration::from_secs(10), self.io.read_until(b'\n', &mut raw))
                    .await
                    .expect("no data within 10 s")
                    .unwrap();
            assert!(n > 0, "connection closed inside a multi-line response");
            assert!(raw.ends_with(b"\r\n"), "line without CRLF: {raw:?}");
            if raw == b".\r\n" {
                return out;
            }
            out.extend_from_slice(&raw);
        }
    }

    async fn multi(&mut self, line: &str) -> (String, Vec<u8>) {
        let first = self.cmd(line).await;
        assert!(first.starts_with("+OK"), "{line}: {first}");
        (first, self.body().await)
    }

    async fn login(&mut self, user: &str, password: &str) -> String {
        let r = self.cmd(&format!("USER {user}")).await;
        if !r.starts_with("+OK") {
            return r;
        }
        self.cmd(&format!("PASS {password}")).await
    }
}

async fn connect(addr: SocketAddr) -> Pop3<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut c = Pop3 {
        io: BufReader::new(tcp),
    };
    let greeting = c.line().await;
    assert!(
        greeting.starts_with("+OK mx.example.test POP3"),
        "{greeting}"
    );
    c
}

async fn connect_tls(r: &Running) -> Pop3<mailroom_tests::TlsClientStream> {
    let tcp = tokio::net::TcpStream::connect(r.stack.addr("pop3s").unwrap())
        .await
        .unwrap();
    let mut c = Pop3 {
        io: BufReader::new(tls_connect(r, tcp).await.unwrap()),
    };
    assert!(c.line().await.starts_with("+OK"));
    c
}

fn pop3(r: &Running) -> SocketAddr {
    r.stack.addr("pop3").unwrap()
}

/// Removes the byte-stuffing of a multi-line body (RFC 1939 §3).
fn unstuff(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for line in body.split_inclusive(|&b| b == b'\n') {
        out.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
    }
    out
}

/// Three messages: a plain one, one with dot lines and bare LFs, a big one.
fn messages() -> Vec<Vec<u8>> {
    let m1 = b"From: a@remote.test\r\nSubject: one\r\n\r\nfirst\r\n".to_vec();
    let m2 =
        b"From: a@remote.test\r\nSubject: dots\r\n\r\n.leading dot\r\n..two\nbare LF\n.\r\nend"
            .to_vec();
    let mut m3 = b"From: a@remote.test\r\nSubject: big\r\n\r\n".to_vec();
    while m3.len() < 300_000 {
        m3.extend_from_slice(b".All work and no play makes Jack a dull boy.\r\n");
    }
    vec![m1, m2, m3]
}

async fn setup(r: &Running) -> (Store, i64, u32) {
    let store = with_accounts(r, &[ALICE, "bob@example.test"]).await;
    for (i, m) in messages().iter().enumerate() {
        deliver_message(r, i as i64 + 1, ALICE, m).await;
    }
    let inbox = alice_inbox(&store).await;
    (store, inbox.id, inbox.uidvalidity)
}

/// Alice's INBOX.
async fn alice_inbox(store: &Store) -> mailroom_store::Mailbox {
    let account = store
        .get_account(&Address::parse(ALICE).unwrap())
        .await
        .unwrap()
        .unwrap();
    store
        .list_mailboxes(account.id)
        .await
        .unwrap()
        .into_iter()
        .find(|m| m.name == "INBOX")
        .unwrap()
}

async fn uids(store: &Store, inbox: i64) -> Vec<u32> {
    store
        .list_messages(inbox)
        .await
        .unwrap()
        .iter()
        .map(|m| m.0)
        .collect()
}

mailroom_tests::on_both!(
    commands_read_the_snapshot_and_quit_applies_deletions,
    a_dropped_connection_deletes_nothing_and_the_maildrop_is_exclusive,
    retr_reads_ahead_and_every_message_comes_whole,
);

/// RETR reads the next messages ahead in one query (at most 16 and 1 MiB):
/// a download in order, a message asked twice, one out of order, one marked
/// deleted in between and a 1.5 MiB one that is read alone all come back
/// byte for byte as stored.
async fn retr_reads_ahead_and_every_message_comes_whole(r: &Running) {
    let store = with_accounts(r, &[ALICE]).await;
    let mut sent = Vec::new();
    for i in 1..=40usize {
        let mut m = format!("From: a@remote.test\r\nSubject: n{i}\r\n\r\n").into_bytes();
        let size = if i == 23 { 1_500_000 } else { 200 + i * 997 };
        while m.len() < size {
            m.extend_from_slice(format!("line {i} of message {i}\r\n").as_bytes());
        }
        deliver_message(r, i as i64, ALICE, &m).await;
        sent.push(m);
    }
    let inbox = alice_inbox(&store).await.id;
    let mut c = connect(pop3(r)).await;
    assert!(
        c.login(ALICE, PASSWORD)
            .await
            .starts_with("+OK maildrop has 40")
    );
    assert!(c.cmd("DELE 3").await.starts_with("+OK"));
    let mut order: Vec<usize> = (1..=40).filter(|&n| n != 3).collect();
    order.insert(5, 30); // out of order, then again in its turn
    order.insert(10, 7); // again, after it was read
    for n in order {
        let stored = store.read_message(inbox, n as u32).await.unwrap().unwrap();
        let (first, body) = c.multi(&format!("RETR {n}")).await;
        assert_eq!(first, format!("+OK {} octets", stored.len()), "RETR {n}");
        assert!(unstuff(&body) == stored, "RETR {n} is the stored text");
        assert!(stored.ends_with(&sent[n - 1]), "message {n} as delivered");
    }
    assert!(c.cmd("RETR 3").await.starts_with("-ERR"), "marked deleted");
    assert!(c.cmd("RSET").await.starts_with("+OK"));
    let (_, body) = c.multi("RETR 3").await;
    assert!(unstuff(&body).ends_with(&sent[2]), "RETR 3 after RSET");
    assert!(c.cmd("QUIT").await.starts_with("+OK"));
}

async fn commands_read_the_snapshot_and_quit_applies_deletions(r: &Running) {
    let (store, inbox, uidvalidity) = setup(r).await;
    let stored: Vec<Vec<u8>> = {
        let mut v = Vec::new();
        for uid in 1..=3 {
            v.push(store.read_message(inbox, uid).await.unwrap().unwrap());
        }
        v
    };
    let sizes: Vec<usize> = stored.iter().map(Vec::len).collect();
    let total: usize = sizes.iter().sum();

    let mut c = connect(pop3(r)).await;
    let (_, capa) = c.multi("CAPA").await;
    let capa = String::from_utf8(capa).unwrap();
    for cap in [
        "STLS\r\n",
        "TOP\r\n",
        "UIDL\r\n",
        "USER\r\n",
        "SASL SCRAM-SHA-256 PLAIN\r\n",
        "RESP-CODES\r\n",
        "AUTH-RESP-CODE\r\n",
        "PIPELINING\r\n",
        "EXPIRE NEVER\r\n",
        "IMPLEMENTATION Mailroom\r\n",
    ] {
        assert!(capa.contains(cap), "{cap:?} missing from {capa}");
    }
    // Transaction commands before login are refused.
    assert!(c.cmd("STAT").await.starts_with("-ERR"));
    assert!(
        c.cmd("PASS x").await.starts_with("-ERR"),
        "PASS without USER"
    );
    assert_eq!(
        c.login(ALICE, PASSWORD).await,
        format!("+OK maildrop has 3 messages ({total} octets)")
    );
    assert!(c.cmd("STLS").await.starts_with("-ERR"), "STLS after login");
    assert_eq!(c.cmd("STAT").await, format!("+OK 3 {total}"));
    let (_, list) = c.multi("LIST").await;
    assert_eq!(
        String::from_utf8(list).unwrap(),
        format!("1 {}\r\n2 {}\r\n3 {}\r\n", sizes[0], sizes[1], sizes[2])
    );
    assert_eq!(c.cmd("LIST 2").await, format!("+OK 2 {}", sizes[1]));
    assert!(c.cmd("LIST 4").await.starts_with("-ERR"));
    assert!(c.cmd("LIST 0").await.starts_with("-ERR"));
    let (_, uidl) = c.multi("UIDL").await;
    let uidl = String::from_utf8(uidl).unwrap();
    assert_eq!(
        uidl,
        format!("1 {uidvalidity}.1\r\n2 {uidvalidity}.2\r\n3 {uidvalidity}.3\r\n")
    );
    assert_eq!(c.cmd("UIDL 3").await, format!("+OK 3 {uidvalidity}.3"));

    // RETR: dot-stuffed, CRLF everywhere, and the stored text once unstuffed.
    let (first, body) = c.multi("RETR 2").await;
    assert_eq!(first, format!("+OK {} octets", sizes[1]));
    let text = String::from_utf8(body.clone()).unwrap();
    assert!(
        text.contains("\r\n..leading dot\r\n...two\r\nbare LF\r\n..\r\nend\r\n"),
        "{text:?}"
    );
    assert!(
        !text.replace("\r\n", "").contains('\n'),
        "bare LF sent: {text:?}"
    );
    let normalised = String::from_utf8(stored[1].clone())
        .unwrap()
        .replace("\r\n", "\n")
        .replace('\n', "\r\n")
        + "\r\n";
    assert_eq!(String::from_utf8(unstuff(&body)).unwrap(), normalised);
    // A big message arrives whole.
    let (_, big) = c.multi("RETR 3").await;
    assert_eq!(unstuff(&big), stored[2]);
    // TOP: the header, the blank line, n body lines.
    let (_, top) = c.multi("TOP 2 1").await;
    let top = String::from_utf8(top).unwrap();
    assert!(
        top.ends_with("Subject: dots\r\n\r\n..leading dot\r\n"),
        "{top:?}"
    );
    let (_, top0) = c.multi("TOP 1 0").await;
    assert!(
        String::from_utf8(top0)
            .unwrap()
            .ends_with("Subject: one\r\n\r\n")
    );

    // DELE marks; marked messages vanish from every listing; RSET unmarks.
    assert!(c.cmd("DELE 1").await.starts_with("+OK"));
    assert!(c.cmd("DELE 1").await.starts_with("-ERR"), "deleted twice");
    assert!(c.cmd("RETR 1").await.starts_with("-ERR"));
    assert!(c.cmd("LIST 1").await.starts_with("-ERR"));
    assert_eq!(
        c.cmd("STAT").await,
        format!("+OK 2 {}", sizes[1] + sizes[2])
    );
    let (_, uidl) = c.multi("UIDL").await;
    assert!(!String::from_utf8(uidl).unwrap().contains("1 "));
    assert_eq!(
        c.cmd("RSET").await,
        format!("+OK maildrop has 3 messages ({total} octets)")
    );
    assert_eq!(c.cmd("STAT").await, format!("+OK 3 {total}"));
    // Nothing has been deleted in the store yet.
    assert_eq!(uids(&store, inbox).await, [1, 2, 3]);

    // A message delivered now is not in this session's snapshot.
    deliver_message(r, 10, ALICE, b"Subject: late\r\n\r\nlate\r\n").await;
    assert_eq!(c.cmd("STAT").await, format!("+OK 3 {total}"));
    assert!(c.cmd("RETR 4").await.starts_with("-ERR"));

    // Pipelined (RFC 2449 PIPELINING): the responses come in order.
    c.send(b"DELE 1\r\nDELE 3\r\nNOOP\r\nSTAT\r\n").await;
    assert!(c.line().await.starts_with("+OK message 1"));
    assert!(c.line().await.starts_with("+OK message 3"));
    assert_eq!(c.line().await, "+OK");
    assert_eq!(c.line().await, format!("+OK 1 {}", sizes[1]));
    // Still nothing removed before QUIT.
    assert_eq!(uids(&store, inbox).await, [1, 2, 3, 4]);
    let bye = c.cmd("QUIT").await;
    assert!(bye.starts_with("+OK"), "{bye}");
    assert_eq!(c.line().await, "", "the server closes after QUIT");
    assert_eq!(uids(&store, inbox).await, [2, 4]);

    // The next session sees the result, with the same UIDL for message 2.
    let mut c = connect(pop3(r)).await;
    assert!(
        c.login(ALICE, PASSWORD)
            .await
            .starts_with("+OK maildrop has 2 messages")
    );
    assert_eq!(c.cmd("UIDL 1").await, format!("+OK 1 {uidvalidity}.2"));
    assert_eq!(c.cmd("UIDL 2").await, format!("+OK 2 {uidvalidity}.4"));
    assert!(c.cmd("QUIT").await.starts_with("+OK"));
}

async fn a_dropped_connection_deletes_nothing_and_the_maildrop_is_exclusive(r: &Running) {
    let (store, inbox, _) = setup(r).await;
    let mut first = connect(pop3(r)).await;
    assert!(first.login(ALICE, PASSWORD).await.starts_with("+OK"));
    assert!(first.cmd("DELE 1").await.starts_with("+OK"));
    assert!(first.cmd("DELE 2").await.starts_with("+OK"));

    // A second session on the same maildrop is refused, over TLS too.
    let mut second = connect(pop3(r)).await;
    let refused = second.login(ALICE, PASSWORD).await;
    assert!(refused.starts_with("-ERR [IN-USE]"), "{refused}");
    let mut tls = connect_tls(r).await;
    assert!(
        tls.login(ALICE, PASSWORD)
            .await
            .starts_with("-ERR [IN-USE]")
    );
    // Another account's maildrop is not affected.
    assert!(
        tls.login("bob@example.test", PASSWORD)
            .await
            .starts_with("+OK maildrop has 0 messages")
    );

    // The first connection breaks without QUIT: nothing is deleted.
    drop(first);
    let mut again = None;
    for _ in 0..100 {
        let mut c = connect(pop3(r)).await;
        let reply = c.login(ALICE, PASSWORD).await;
        if reply.starts_with("+OK") {
            assert_eq!(reply.split(' ').nth(3), Some("3"), "{reply}");
            again = Some(c);
            break;
        }
        assert!(reply.starts_with("-ERR [IN-USE]"), "{reply}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut again = again.expect("the lock of a dropped session is released");
    assert_eq!(uids(&store, inbox).await, [1, 2, 3]);
    // The session that got the lock can delete, and its QUIT frees the lock.
    assert!(again.cmd("DELE 2").await.starts_with("+OK"));
    assert!(again.cmd("QUIT").await.starts_with("+OK"));
    assert_eq!(uids(&store, inbox).await, [1, 3]);
    assert!(
        second
            .login(ALICE, PASSWORD)
            .await
            .starts_with("+OK maildrop has 2 messages")
    );
    assert!(second.cmd("QUIT").await.starts_with("+OK"));
}

/// With the loopback exemption off, logins need TLS: STLS, then USER/PASS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_need_tls_without_the_loopback_exemption() {
    let r = start_with(Backend::Sqlite, None, |c| {
        c.pop3.allow_plaintext_auth_on_loopback = false;
    })
    .await
    .unwrap();
    let _ = setup(&r).await;
    let mut c = connect(pop3(&r)).await;
    let refused = c.cmd(&format!("USER {ALICE}")).await;
    assert!(refused.starts_with("-ERR [AUTH]"), "{refused}");
    let raw = format!("\0{ALICE}\0{PASSWORD}");
    let refused = c
        .cmd(&format!("AUTH PLAIN {}", base64_encode(raw.as_bytes())))
        .await;
    assert!(refused.starts_with("-ERR [AUTH]"), "{refused}");
    // Commands pipelined after STLS are discarded, not run over TLS.
    c.send(b"STLS\r\nNOOP\r\n").await;
    assert!(c.line().await.starts_with("+OK"));
    let tcp = c.io.into_inner();
    let mut c = Pop3 {
        io: BufReader::new(tls_connect(&r, tcp).await.unwrap()),
    };
    let (_, capa) = c.multi("CAPA").await;
    let capa = String::from_utf8(capa).unwrap();
    assert!(!capa.contains("STLS"), "STLS offered under TLS: {capa}");
    assert!(c.cmd("STLS").await.starts_with("-ERR"));
    assert!(
        c.login(ALICE, PASSWORD)
            .await
            .starts_with("+OK maildrop has 3")
    );
    assert!(c.cmd("QUIT").await.starts_with("+OK"));
    // Implicit TLS (995-style) logs in directly.
    let mut c = connect_tls(&r).await;
    assert!(
        c.login(ALICE, PASSWORD)
            .await
            .starts_with("+OK maildrop has 3")
    );
    r.stack.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_plain_with_and_without_initial_response() {
    let r = start_with(Backend::Sqlite, None, |_| {}).await.unwrap();
    let _ = setup(&r).await;
    let plain = base64_encode(format!("\0{ALICE}\0{PASSWORD}").as_bytes());
    let mut c = connect(pop3(&r)).await;
    // Cancelling is not a failure.
    assert_eq!(c.cmd("AUTH PLAIN").await, "+ ");
    assert!(c.cmd("*").await.starts_with("-ERR"));
    assert!(c.cmd("AUTH LOGIN").await.starts_with("-ERR"), "not offered");
    assert_eq!(c.cmd("AUTH PLAIN").await, "+ ");
    assert!(c.cmd(&plain).await.starts_with("+OK maildrop has 3"));
    assert!(c.cmd("QUIT").await.starts_with("+OK"));
    let mut c = connect(pop3(&r)).await;
    assert!(
        c.cmd(&format!("AUTH PLAIN {plain}"))
            .await
            .starts_with("+OK")
    );
    assert!(c.cmd("QUIT").await.starts_with("+OK"));
    let wrong = base64_encode(format!("\0{ALICE}\0wrong").as_bytes());
    let mut c = connect(pop3(&r)).await;
    let refused = c.cmd(&format!("AUTH PLAIN {wrong}")).await;
    assert!(refused.starts_with("-ERR [AUTH]"), "{refused}");
    r.stack.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_are_counted_per_session_and_per_address() {
    let r = start_with(Backend::Sqlite, None, |c| {
        c.pop3.max_auth_failures = 2;
        c.pop3.max_auth_failures_per_ip = 3;
    })
    .await
    .unwrap();
    let _ = setup(&r).await;
    let mut c = connect(pop3(&r)).await;
    let first = c.login(ALICE, "wrong").await;
    assert!(first.starts_with("-ERR [AUTH]"), "{first}");
    // An unknown user gets exactly the same answer.
    let unknown = c.login("nobody@example.test", "wrong").await;
    assert!(unknown.starts_with("-ERR [AUTH]"), "{unknown}");
    assert_eq!(c.line().await, "", "closed after max_auth_failures");
    // A third failure from this address, then even the right password is
    // refused for a while, without being checked.
    let mut c = connect(pop3(&r)).await;
    assert!(c.login(ALICE, "wrong").await.starts_with("-ERR [AUTH]"));
    let mut c = connect(pop3(&r)).await;
    let blocked = c.login(ALICE, PASSWORD).await;
    assert!(blocked.starts_with("-ERR [SYS/TEMP]"), "{blocked}");
    r.stack.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_lines_are_refused_and_idle_sessions_end_without_deleting() {
    let r = start_with(Backend::Sqlite, None, |c| c.pop3.idle_timeout_secs = 1)
        .await
        .unwrap();
    let (store, inbox, _) = setup(&r).await;
    let mut c = connect(pop3(&r)).await;
    // 255 octets with the CRLF is the limit (RFC 2449 §4).
    assert_eq!(c.cmd("NOOP").await, "+OK");
    let long = format!("USER {}", "a".repeat(300));
    let refused = c.cmd(&long).await;
    assert!(refused.starts_with("-ERR line too long"), "{refused}");
    let at_limit = format!("USER {}", "a".repeat(255 - 2 - 5));
    assert!(
        c.cmd(&at_limit).await.starts_with("+OK"),
        "a 255-octet line is fine"
    );
    assert!(c.login(ALICE, PASSWORD).await.starts_with("+OK"));
    assert!(c.cmd("DELE 1").await.starts_with("+OK"));
    // Idle past the timeout: autologout, without the UPDATE state.
    let bye = c.line().await;
    assert!(bye.starts_with("-ERR autologout"), "{bye}");
    assert_eq!(c.line().await, "");
    assert_eq!(uids(&store, inbox).await, [1, 2, 3]);
    r.stack.stop(Duration::from_secs(5)).await;
}
