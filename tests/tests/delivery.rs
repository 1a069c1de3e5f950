//! The MDA end to end: gRPC `Delivery.Deliver` into the store, on both backends.

use std::collections::BTreeMap;
use std::time::Duration;

use mailroom_address::{Address, Domain};
use mailroom_rpc::delivery::{DeliverRequest, Outcome};
use mailroom_store::{AliasSource, Store};
use mailroom_tests::{Running, delivery_client, open_store};

mailroom_tests::on_both!(
    concurrent_deliveries_get_gapless_uids,
    a_repeated_delivery_stores_once,
    recipients_resolve_through_aliases_plus_tags_and_catch_all,
    alias_loops_and_unknown_users_fail_permanently,
    quota_overflow_is_temporary,
    copies_carry_their_headers_and_quarantine_goes_to_junk,
    new_mail_is_announced,
);

const PW: &str = "long enough password";

fn a(s: &str) -> Address {
    Address::parse(s).unwrap()
}

async fn setup(r: &Running, accounts: &[&str]) -> Store {
    let store = open_store(r).await;
    for d in ["example.test", "bücher.example"] {
        store.add_domain(&Domain::parse(d).unwrap()).await.unwrap();
    }
    for acc in accounts {
        store.create_account(&a(acc), PW, 0).await.unwrap();
    }
    store
}

fn message(subject: &str, size: usize) -> Vec<u8> {
    let mut m = format!(
        "From: Sender <sender@remote.test>\r\nTo: someone@example.test\r\nSubject: {subject}\r\n\
         Message-ID: <{subject}@remote.test>\r\n\r\n"
    )
    .into_bytes();
    while m.len() < size {
        m.extend_from_slice(b"All work and no play makes Jack a dull boy.\r\n");
    }
    m
}

fn request(queue_id: i64, recipients: &[&str], msg: Vec<u8>) -> DeliverRequest {
    DeliverRequest {
        queue_id,
        sender: "sender@remote.test".into(),
        recipients: recipients.iter().map(|s| s.to_string()).collect(),
        message: msg,
        authentication_results: String::new(),
        quarantine: false,
    }
}

/// Mailbox name → (mailbox id) for an account.
async fn mailboxes(store: &Store, account: &str) -> BTreeMap<String, i64> {
    let acc = store.get_account(&a(account)).await.unwrap().unwrap();
    store
        .list_mailboxes(acc.id)
        .await
        .unwrap()
        .into_iter()
        .map(|m| (m.name, m.id))
        .collect()
}

async fn count(store: &Store, account: &str, mailbox: &str) -> usize {
    let id = mailboxes(store, account).await[mailbox];
    store.list_messages(id).await.unwrap().len()
}

async fn concurrent_deliveries_get_gapless_uids(r: &Running) {
    let store = setup(r, &["alice@example.test"]).await;
    let client = delivery_client(r).await;
    let mut tasks = Vec::new();
    for i in 1..=1000i64 {
        let mut c = client.clone();
        tasks.push(tokio::spawn(async move {
            let resp = c
                .deliver(request(
                    i,
                    &["alice@example.test"],
                    message(&format!("m{i}"), 4096),
                ))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(
                resp.outcomes[0].outcome,
                Outcome::Delivered as i32,
                "{:?}",
                resp.outcomes[0]
            );
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let inbox = mailboxes(&store, "alice@example.test").await["INBOX"];
    let messages = store.list_messages(inbox).await.unwrap();
    let uids: Vec<u32> = messages.iter().map(|m| m.0).collect();
    assert_eq!(
        uids,
        (1..=1000).collect::<Vec<u32>>(),
        "UIDs are not exactly 1..1000"
    );
    let mut modseqs: Vec<u64> = messages.iter().map(|m| m.1).collect();
    modseqs.dedup();
    assert_eq!(modseqs.len(), 1000, "MODSEQs repeat");
    let mb = store
        .list_mailboxes(
            store
                .get_account(&a("alice@example.test"))
                .await
                .unwrap()
                .unwrap()
                .id,
        )
        .await
        .unwrap();
    let inbox_row = mb.iter().find(|m| m.name == "INBOX").unwrap();
    assert_eq!(inbox_row.uidnext, 1001);
}

async fn a_repeated_delivery_stores_once(r: &Running) {
    let store = setup(r, &["alice@example.test", "bob@example.test"]).await;
    let mut c = delivery_client(r).await;
    let req = request(
        42,
        &["alice@example.test", "bob@example.test"],
        message("once", 1000),
    );
    for _ in 0..3 {
        let resp = c.deliver(req.clone()).await.unwrap().into_inner();
        assert!(
            resp.outcomes
                .iter()
                .all(|o| o.outcome == Outcome::Delivered as i32),
            "{resp:?}"
        );
    }
    assert_eq!(count(&store, "alice@example.test", "INBOX").await, 1);
    assert_eq!(count(&store, "bob@example.test", "INBOX").await, 1);
    // Another queue entry with the same content is another message.
    c.deliver(request(43, &["alice@example.test"], message("once", 1000)))
        .await
        .unwrap();
    assert_eq!(count(&store, "alice@example.test", "INBOX").await, 2);
    // The content is stored once for every copy.
    let inbox = mailboxes(&store, "alice@example.test").await["INBOX"];
    let text = store.read_message(inbox, 1).await.unwrap().unwrap();
    assert!(text.ends_with(&message("once", 1000)));
}

async fn recipients_resolve_through_aliases_plus_tags_and_catch_all(r: &Running) {
    let store = setup(
        r,
        &[
            "alice@example.test",
            "bob@example.test",
            "jörg@bücher.example",
        ],
    )
    .await;
    let alias = |s: &str| AliasSource::parse(s).unwrap();
    store
        .add_alias(&alias("team@example.test"), &a("alice@example.test"))
        .await
        .unwrap();
    store
        .add_alias(&alias("team@example.test"), &a("bob@example.test"))
        .await
        .unwrap();
    store
        .add_alias(&alias("team@example.test"), &a("partner@remote.test"))
        .await
        .unwrap();
    store
        .add_alias(&alias("chain1@example.test"), &a("chain2@example.test"))
        .await
        .unwrap();
    store
        .add_alias(&alias("chain2@example.test"), &a("team@example.test"))
        .await
        .unwrap();
    store
        .add_alias(&alias("@bücher.example"), &a("jörg@bücher.example"))
        .await
        .unwrap();
    let mut c = delivery_client(r).await;

    let resp = c
        .deliver(request(1, &["chain1@example.test"], message("chain", 500)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        resp.outcomes[0].outcome,
        Outcome::Delivered as i32,
        "{resp:?}"
    );
    assert_eq!(resp.outcomes[0].remote_targets, ["partner@remote.test"]);
    assert_eq!(count(&store, "alice@example.test", "INBOX").await, 1);
    assert_eq!(count(&store, "bob@example.test", "INBOX").await, 1);

    // IDNA and case variants reach one mailbox.
    for (i, rcpt) in [
        "Jörg@Bücher.Example",
        "JÖRG@xn--bcher-kva.example",
        "jörg@XN--BCHER-KVA.EXAMPLE",
    ]
    .iter()
    .enumerate()
    {
        let resp = c
            .deliver(request(10 + i as i64, &[rcpt], message("idna", 500)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            resp.outcomes[0].outcome,
            Outcome::Delivered as i32,
            "{rcpt}: {resp:?}"
        );
    }
    assert_eq!(count(&store, "jörg@bücher.example", "INBOX").await, 3);
    // The catch-all takes unknown addresses of its domain.
    let resp = c
        .deliver(request(
            20,
            &["anything@bücher.example"],
            message("catch", 500),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        resp.outcomes[0].outcome,
        Outcome::Delivered as i32,
        "{resp:?}"
    );
    assert_eq!(count(&store, "jörg@bücher.example", "INBOX").await, 4);

    // Plus-addressing: into the folder when it exists, else INBOX.
    c.deliver(request(
        30,
        &["alice+Archive@example.test"],
        message("plus", 500),
    ))
    .await
    .unwrap();
    c.deliver(request(
        31,
        &["alice+nosuchfolder@example.test"],
        message("plus2", 500),
    ))
    .await
    .unwrap();
    assert_eq!(count(&store, "alice@example.test", "Archive").await, 1);
    assert_eq!(count(&store, "alice@example.test", "INBOX").await, 2);
}

async fn alias_loops_and_unknown_users_fail_permanently(r: &Running) {
    let store = setup(r, &["alice@example.test", "dave@example.test"]).await;
    let alias = |s: &str| AliasSource::parse(s).unwrap();
    store
        .add_alias(&alias("loop1@example.test"), &a("loop2@example.test"))
        .await
        .unwrap();
    store
        .add_alias(&alias("loop2@example.test"), &a("loop3@example.test"))
        .await
        .unwrap();
    store
        .add_alias(&alias("loop3@example.test"), &a("loop1@example.test"))
        .await
        .unwrap();
    store
        .set_disabled(&a("dave@example.test"), true)
        .await
        .unwrap();
    let mut c = delivery_client(r).await;
    let resp = c
        .deliver(request(
            1,
            &[
                "loop1@example.test",
                "nobody@example.test",
                "x@elsewhere.test",
                "dave@example.test",
                "not an address",
                "alice@example.test",
            ],
            message("fail", 500),
        ))
        .await
        .unwrap()
        .into_inner();
    let got: Vec<(i32, &str)> = resp
        .outcomes
        .iter()
        .map(|o| (o.outcome, &o.reason[..5.min(o.reason.len())]))
        .collect();
    let perm = Outcome::PermanentFailure as i32;
    assert_eq!(
        got,
        [
            (perm, "5.4.6"),
            (perm, "5.1.1"),
            (perm, "5.1.2"),
            (perm, "5.2.1"),
            (perm, "5.1.3"),
            (Outcome::Delivered as i32, "")
        ],
        "{resp:?}"
    );
    let bad = c
        .deliver(request(0, &["alice@example.test"], message("x", 10)))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    let mut evil = request(2, &["alice@example.test"], message("x", 10));
    evil.sender = "a@b.test>\r\nX-Injected: yes".into();
    assert_eq!(
        c.deliver(evil).await.unwrap_err().code(),
        tonic::Code::InvalidArgument
    );
}

async fn quota_overflow_is_temporary(r: &Running) {
    let store = setup(r, &["alice@example.test"]).await;
    store
        .set_quota(&a("alice@example.test"), 10_000)
        .await
        .unwrap();
    let mut c = delivery_client(r).await;
    let first = c
        .deliver(request(1, &["alice@example.test"], message("fits", 6000)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        first.outcomes[0].outcome,
        Outcome::Delivered as i32,
        "{first:?}"
    );
    let second = c
        .deliver(request(
            2,
            &["alice@example.test"],
            message("too much", 6000),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        second.outcomes[0].outcome,
        Outcome::TemporaryFailure as i32,
        "{second:?}"
    );
    assert!(second.outcomes[0].reason.starts_with("4.2.2"), "{second:?}");
    // The account can still read what it has, and the retry of the first is still a success.
    assert_eq!(count(&store, "alice@example.test", "INBOX").await, 1);
    let again = c
        .deliver(request(1, &["alice@example.test"], message("fits", 6000)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.outcomes[0].outcome, Outcome::Delivered as i32);
    let used = store
        .get_account(&a("alice@example.test"))
        .await
        .unwrap()
        .unwrap()
        .used_bytes;
    assert!(used > 6000 && used < 10_000, "used {used}");
}

async fn copies_carry_their_headers_and_quarantine_goes_to_junk(r: &Running) {
    let store = setup(r, &["alice@example.test"]).await;
    let mut c = delivery_client(r).await;
    let mut req = request(7, &["Alice@Example.Test"], message("hdr", 300));
    req.authentication_results =
        "spf=pass smtp.mailfrom=remote.test; dmarc=fail header.from=remote.test".into();
    req.quarantine = true;
    let resp = c.deliver(req).await.unwrap().into_inner();
    assert_eq!(resp.outcomes[0].outcome, Outcome::Delivered as i32);
    assert_eq!(count(&store, "alice@example.test", "INBOX").await, 0);
    let junk = mailboxes(&store, "alice@example.test").await["Junk"];
    let text = String::from_utf8(store.read_message(junk, 1).await.unwrap().unwrap()).unwrap();
    assert!(
        text.starts_with(
            "Return-Path: <sender@remote.test>\r\nDelivered-To: alice@example.test\r\nAuthentication-Results: mx.example.test;\r\n\tspf=pass"
        ),
        "{text}"
    );
    assert!(text.contains("\r\nSubject: hdr\r\n"));
}

async fn new_mail_is_announced(r: &Running) {
    let store = setup(r, &["alice@example.test"]).await;
    // On SQLite, events are in-process: subscribe through the stack's own store.
    let mut receivers = vec![r.stack.store().subscribe().await.unwrap()];
    if store.backend_name() == "postgres" {
        // Another process's handle on the same database hears it too (LISTEN/NOTIFY).
        receivers.push(store.subscribe().await.unwrap());
    }
    let mut c = delivery_client(r).await;
    c.deliver(request(1, &["alice@example.test"], message("ping", 300)))
        .await
        .unwrap();
    let inbox = mailboxes(&store, "alice@example.test").await["INBOX"];
    for events in &mut receivers {
        let event = tokio::time::timeout(Duration::from_secs(1), events.recv())
            .await
            .expect("no new-mail event within 1 s")
            .unwrap();
        assert_eq!((event.mailbox_id, event.uid), (inbox, 1));
    }
}
