//! From SMTP to the mailbox: the queue's local-delivery worker hands queued
//! mail to the MDA, on both stores.

use std::time::{Duration, Instant};

use mailroom_address::Address;
use mailroom_tests::{PASSWORD, Running, SmtpClient, with_accounts};

mailroom_tests::on_both!(
    submitted_mail_reaches_the_mailbox,
    a_full_mailbox_defers_and_keeps_the_message,
    notify_success_gets_a_delivered_report_and_only_then,
);

use mailroom_tests::inbox_id as inbox;

/// Waits until `check` holds (the worker runs in the background).
async fn eventually<F: AsyncFnMut() -> bool>(what: &str, mut check: F) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn submit(r: &Running, from: &str, to: &[&str], body: &str) -> i64 {
    let (mut c, _) = SmtpClient::connect(r.stack.addr("submission").unwrap()).await;
    c.cmd("EHLO client.test").await;
    assert_eq!(c.auth_plain(from, PASSWORD).await.0, 235);
    assert_eq!(c.cmd(&format!("MAIL FROM:<{from}>")).await.0, 250);
    for rcpt in to {
        assert_eq!(c.cmd(&format!("RCPT TO:<{rcpt}>")).await.0, 250);
    }
    assert_eq!(c.cmd("DATA").await.0, 354);
    c.send(
        format!(
            "From: {from}\r\nTo: {}\r\nSubject: test\r\n\r\n{body}\r\n.\r\n",
            to.join(", ")
        )
        .as_bytes(),
    )
    .await;
    let (code, text) = c.reply().await;
    assert_eq!(code, 250, "{text}");
    text.rsplit(' ').next().unwrap().parse().unwrap()
}

async fn submitted_mail_reaches_the_mailbox(r: &Running) {
    let store = with_accounts(r, &["alice@example.test", "bob@example.test"]).await;
    let id = submit(
        r,
        "alice@example.test",
        &["bob@example.test", "carol@remote.test"],
        "Hi Bob!",
    )
    .await;
    let bob = inbox(&store, "bob@example.test").await;
    eventually("delivery to bob", async || {
        store.list_messages(bob).await.unwrap().len() == 1
    })
    .await;
    let text = String::from_utf8(store.read_message(bob, 1).await.unwrap().unwrap()).unwrap();
    assert!(
        text.starts_with("Return-Path: <alice@example.test>\r\nDelivered-To: bob@example.test\r\nReceived: from client.test"),
        "{text}"
    );
    assert!(text.contains("\r\n\r\nHi Bob!\r\n"), "{text}");
    eventually("bob's state to be final", async || {
        store.queue_recipient_states(id).await.unwrap()[0].1 == "delivered"
    })
    .await;
    let states = store.queue_recipient_states(id).await.unwrap();
    assert_eq!(states[0].0, "bob@example.test");
    // The remote recipient is the relay's: with no DNS server answering in
    // this test it is never delivered, and a DNS outage defers rather than fails.
    assert_eq!(states[1].0, "carol@remote.test");
    assert!(
        states[1].1 == "pending" || states[1].1 == "deferred",
        "{states:?}"
    );
}

async fn a_full_mailbox_defers_and_keeps_the_message(r: &Running) {
    let store = with_accounts(r, &["alice@example.test", "bob@example.test"]).await;
    store
        .set_quota(&Address::parse("bob@example.test").unwrap(), 100)
        .await
        .unwrap();
    let id = submit(
        r,
        "alice@example.test",
        &["bob@example.test"],
        &"x".repeat(500),
    )
    .await;
    eventually("a deferral", async || {
        store.queue_recipient_states(id).await.unwrap()[0].1 == "deferred"
    })
    .await;
    let states = store.queue_recipient_states(id).await.unwrap();
    assert_eq!(states[0].2, 1, "one attempt");
    assert!(
        states[0].3.as_deref().unwrap_or("").starts_with("4.2.2"),
        "{states:?}"
    );
    assert!(
        store.queued_message(id).await.unwrap().is_some(),
        "the message stays queued"
    );
    assert!(
        store
            .list_messages(inbox(&store, "bob@example.test").await)
            .await
            .unwrap()
            .is_empty()
    );
}

/// RFC 3461: `NOTIFY=SUCCESS` on a recipient delivered here gets the sender
/// one "delivered" report, from `<>`; without it, no report at all.
async fn notify_success_gets_a_delivered_report_and_only_then(r: &Running) {
    let store = with_accounts(
        r,
        &[
            "alice@example.test",
            "bob@example.test",
            "carol@example.test",
        ],
    )
    .await;
    let (alice, bob, carol) = (
        inbox(&store, "alice@example.test").await,
        inbox(&store, "bob@example.test").await,
        inbox(&store, "carol@example.test").await,
    );
    let (mut c, _) = SmtpClient::connect(r.stack.addr("smtp").unwrap()).await;
    c.send(
        b"EHLO remote.test\r\nMAIL FROM:<alice@example.test> ENVID=track-1\r\n\
          RCPT TO:<bob@example.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob@example.test\r\n\
          RCPT TO:<carol@example.test>\r\nDATA\r\n",
    )
    .await;
    for expected in [250, 250, 250, 250, 354] {
        assert_eq!(c.reply().await.0, expected);
    }
    c.send(b"From: alice@example.test\r\nSubject: tracked\r\n\r\nbody\r\n.\r\n")
        .await;
    assert_eq!(c.reply().await.0, 250);
    eventually("the delivered report", async || {
        !store.list_messages(alice).await.unwrap().is_empty()
    })
    .await;
    assert_eq!(store.list_messages(bob).await.unwrap().len(), 1);
    assert_eq!(store.list_messages(carol).await.unwrap().len(), 1);
    // Count once the queue is empty: every report the results owed was
    // queued with them, so by then each one has been delivered.
    eventually("the queue to empty", async || {
        store.queue_size().await.unwrap() == 0
    })
    .await;
    let reports = store.list_messages(alice).await.unwrap();
    assert_eq!(reports.len(), 1, "one report, about bob only");
    let text = String::from_utf8(
        store
            .read_message(alice, reports[0].0)
            .await
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    for want in [
        "Return-Path: <>",
        "Subject: Successful Mail Delivery Report",
        "Original-Envelope-Id: track-1",
        "Final-Recipient: rfc822; bob@example.test",
        "Original-Recipient: rfc822; bob@example.test",
        "Action: delivered",
        "Status: 2.0.0",
        "Content-Type: text/rfc822-headers",
        "Subject: tracked",
    ] {
        assert!(text.contains(want), "{want:?} missing from:\n{text}");
    }
    assert!(
        !text.contains("carol@example.test"),
        "carol asked for nothing:\n{text}"
    );
    assert!(
        !text.contains("\r\nbody\r\n"),
        "only the header section:\n{text}"
    );
}
