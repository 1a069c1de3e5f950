//! Local mail delivered at acceptance (docs/ARCHITECTURE.md, departure 50):
//! through port 25, on both stores, the 250 comes only once every copy is
//! committed in its mailbox, and whatever cannot be delivered at once is
//! queued whole, as before.

use std::time::Duration;

use mailroom_tests::{
    Backend, Running, SmtpClient, inbox_id, start, start_with, wait_for, with_accounts,
};

fn smtp(r: &Running) -> std::net::SocketAddr {
    r.stack.addr("smtp").unwrap()
}

/// Sends one message from `x@remote.test` to `rcpts` (RCPT parameters
/// after the address allowed) through port 25; the final reply.
async fn send(r: &Running, rcpts: &[&str], body: &str) -> (u16, String) {
    let (mut c, _) = SmtpClient::connect(smtp(r)).await;
    assert_eq!(c.cmd("EHLO remote.test").await.0, 250);
    assert_eq!(c.cmd("MAIL FROM:<x@remote.test>").await.0, 250);
    for rcpt in rcpts {
        let (code, text) = c.cmd(&format!("RCPT TO:{rcpt}")).await;
        assert_eq!(code, 250, "{rcpt}: {text}");
    }
    assert_eq!(c.cmd("DATA").await.0, 354);
    c.send(format!("Subject: {body}\r\n\r\n{body}\r\n.\r\n").as_bytes())
        .await;
    let reply = c.reply().await;
    let _ = c.cmd("QUIT").await;
    reply
}

async fn inbox(store: &mailroom_store::Store, who: &str) -> Vec<Vec<u8>> {
    let id = inbox_id(store, who).await;
    let mut out = Vec::new();
    for (uid, ..) in store.list_messages(id).await.unwrap() {
        out.push(store.read_message(id, uid).await.unwrap().unwrap());
    }
    out
}

fn queue_id(text: &str) -> i64 {
    text.strip_prefix("2.0.0 OK: queued as ")
        .unwrap_or_else(|| panic!("not queued: {text}"))
        .parse()
        .unwrap()
}

async fn delivered_when_acknowledged(backend: Backend) {
    let Some(r) = start(backend).await else {
        return;
    };
    let store = with_accounts(&r, &["bob@example.test", "carol@example.test"]).await;
    let (code, text) = send(&r, &["<bob@example.test>", "<Carol@Example.Test>"], "one").await;
    assert_eq!((code, text.as_str()), (250, "2.0.0 OK: delivered"));
    // No waiting: the copies were committed before the 250.
    for who in ["bob@example.test", "carol@example.test"] {
        let copies = inbox(&store, who).await;
        assert_eq!(copies.len(), 1, "{who}");
        let text = String::from_utf8(copies[0].clone()).unwrap();
        assert!(
            text.starts_with(&format!(
                "Return-Path: <x@remote.test>\r\nDelivered-To: {who}\r\n"
            )),
            "{text}"
        );
        assert!(text.contains("\r\nSubject: one\r\n"), "{text}");
    }
    assert_eq!(store.queue_size().await.unwrap(), 0, "never queued");
    // Many sessions at once: every message once, UIDs without gaps.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let addr = smtp(&r);
        tasks.push(tokio::spawn(async move {
            for j in 0..5 {
                let (mut c, _) = SmtpClient::connect(addr).await;
                assert_eq!(c.cmd("EHLO remote.test").await.0, 250);
                assert_eq!(c.cmd("MAIL FROM:<x@remote.test>").await.0, 250);
                assert_eq!(c.cmd("RCPT TO:<bob@example.test>").await.0, 250);
                assert_eq!(c.cmd("DATA").await.0, 354);
                c.send(format!("Subject: m{i}-{j}\r\n\r\nbody\r\n.\r\n").as_bytes())
                    .await;
                let (code, text) = c.reply().await;
                assert_eq!((code, text.as_str()), (250, "2.0.0 OK: delivered"));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let id = inbox_id(&store, "bob@example.test").await;
    let uids: Vec<u32> = store
        .list_messages(id)
        .await
        .unwrap()
        .iter()
        .map(|m| m.0)
        .collect();
    assert_eq!(uids, (1..=41).collect::<Vec<u32>>());
    assert_eq!(store.queue_size().await.unwrap(), 0);
    r.stack.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_mail_is_in_the_mailbox_when_250_comes_sqlite() {
    delivered_when_acknowledged(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_mail_is_in_the_mailbox_when_250_comes_postgres() {
    delivered_when_acknowledged(Backend::Postgres).await;
}

/// A full mailbox among the recipients, or a success notice asked for:
/// nothing is stored at acceptance, the message is queued whole, and the
/// queue delivers what it can as before.
async fn queued_whole(backend: Backend) {
    let Some(r) = start(backend).await else {
        return;
    };
    let store = with_accounts(&r, &["bob@example.test", "carol@example.test"]).await;
    // One byte of quota: the RCPT is accepted (not full yet), the copy
    // would exceed it.
    let bob = mailroom_address::Address::parse("bob@example.test").unwrap();
    store.set_quota(&bob, 1).await.unwrap();
    let (code, text) = send(&r, &["<carol@example.test>", "<bob@example.test>"], "two").await;
    assert_eq!(code, 250, "{text}");
    let id = queue_id(&text);
    // The queue's worker delivers carol's copy; bob's waits for room.
    let st = store.clone();
    wait_for(
        "carol's copy from the queue",
        Duration::from_secs(20),
        async || inbox(&st, "carol@example.test").await.len() == 1,
    )
    .await;
    assert!(inbox(&store, "bob@example.test").await.is_empty());
    assert!(
        store.queued_message(id).await.unwrap().is_some(),
        "bob's copy waits in the queue"
    );
    let copy = String::from_utf8(inbox(&store, "carol@example.test").await.remove(0)).unwrap();
    assert!(
        copy.starts_with("Return-Path: <x@remote.test>\r\nDelivered-To: carol@example.test\r\n"),
        "{copy}"
    );

    // A success notice is the queue's to send (RFC 3461 §5.2.3).
    let (code, text) = send(&r, &["<carol@example.test> NOTIFY=SUCCESS"], "three").await;
    assert_eq!(code, 250, "{text}");
    queue_id(&text);
    // One recipient only, over quota (on PostgreSQL the one-statement
    // path): queued, and nothing of it stored at acceptance.
    let (code, text) = send(&r, &["<bob@example.test>"], "four").await;
    assert_eq!(code, 250, "{text}");
    queue_id(&text);
    assert!(inbox(&store, "bob@example.test").await.is_empty());
    // An unknown recipient never gets this far: RCPT refuses it.
    r.stack.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_cannot_be_delivered_at_once_is_queued_whole_sqlite() {
    queued_whole(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_cannot_be_delivered_at_once_is_queued_whole_postgres() {
    queued_whole(Backend::Postgres).await;
}

/// `mta.deliver_at_acceptance = false`: every message goes through the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turned_off_every_message_is_queued() {
    let r = start_with(Backend::Sqlite, None, |c| {
        c.mta.deliver_at_acceptance = false
    })
    .await
    .unwrap();
    let store = with_accounts(&r, &["bob@example.test"]).await;
    let (code, text) = send(&r, &["<bob@example.test>"], "four").await;
    assert_eq!(code, 250, "{text}");
    queue_id(&text);
    let st = store.clone();
    wait_for(
        "the queue's delivery",
        Duration::from_secs(20),
        async || inbox(&st, "bob@example.test").await.len() == 1,
    )
    .await;
    r.stack.stop(Duration::from_secs(5)).await;
}
