//! Outbound relay end to end: the real stack relays queued mail for remote
//! domains, routed by a DNS server on loopback (hickory-server) to scripted
//! SMTP peers on 127.0.0.x, all on one port per test
//! (`mta.outbound_port`).
//!
//! A queue entry leaves the queue with its last final result (the reports
//! it owes queued in the same transaction), so a finished entry is checked
//! by its absence, and its outcome by what the peer received or by the
//! report its sender got.

use std::time::Duration;

use mailroom_store::{BlobHash, QueueEnvelope, QueueFilter, QueueRecipient, Store};
use mailroom_tests::{
    Backend, DnsRecord, Running, SinkReply, SinkScript, SmtpSink, TestDns, cli, first_sink,
    open_store, start_with, wait_for,
};

const MESSAGE: &[u8] = b"From: alice@sender.test\r\nTo: bob@remote.test\r\nSubject: relay\r\n\r\nHello.\r\n.leading dot survives\r\n..two dots too\r\n";

/// Starts the stack pointed at `dns`, with remote MX hosts on `port`.
async fn stack(dns: &TestDns, port: u16, data_timeout_secs: u64) -> Running {
    stack_on(Backend::Sqlite, dns, port, data_timeout_secs)
        .await
        .unwrap()
}

/// Like [`stack`] on `backend`; `None` when PostgreSQL tests are opted out of.
async fn stack_on(
    backend: Backend,
    dns: &TestDns,
    port: u16,
    data_timeout_secs: u64,
) -> Option<Running> {
    stack_with(backend, dns, port, data_timeout_secs, |_| {}).await
}

/// Like [`stack_on`], with more configuration changes.
async fn stack_with(
    backend: Backend,
    dns: &TestDns,
    port: u16,
    data_timeout_secs: u64,
    change: impl FnOnce(&mut mailroom_config::Config),
) -> Option<Running> {
    let dns_addr = dns.addr;
    start_with(backend, None, move |config| {
        mailroom_tests::relay_to(config, dns_addr, port, data_timeout_secs);
        change(config);
    })
    .await
}

fn a(ip: &str) -> DnsRecord {
    DnsRecord::A(ip.parse().unwrap())
}

fn mx(preference: u16, host: &str) -> DnsRecord {
    DnsRecord::Mx(preference, host.to_string())
}

fn recipient(address: &str) -> QueueRecipient {
    QueueRecipient {
        address: address.into(),
        orcpt: None,
        notify: None,
    }
}

async fn enqueue(store: &Store, sender: &str, recipients: Vec<QueueRecipient>) -> i64 {
    let envelope = QueueEnvelope {
        sender: sender.into(),
        recipients,
        env_id: Some("ENV-1".into()),
        ..Default::default()
    };
    store.enqueue(&envelope, MESSAGE, 3600).await.unwrap()
}

/// `(state, attempts, last response)` of each recipient of `queue_id`.
async fn states(store: &Store, queue_id: i64) -> Vec<(String, u32, Option<String>)> {
    store
        .queue_recipient_states(queue_id)
        .await
        .unwrap()
        .into_iter()
        .map(|(_, s, a, r)| (s, a, r))
        .collect()
}

async fn all_in(store: &Store, queue_id: i64, state: &str) -> bool {
    let s = states(store, queue_id).await;
    !s.is_empty() && s.iter().all(|(s, _, _)| s == state)
}

/// Whether the entry has left the queue (every recipient final).
async fn gone(store: &Store, queue_id: i64) -> bool {
    store.queue_entry(queue_id).await.unwrap().is_none()
}

/// The queued DSNs (sender `<>`) to `to`, as text, oldest first.
async fn queued_reports(store: &Store, to: &str) -> Vec<String> {
    let mut out = Vec::new();
    let entries = store
        .list_queue(&QueueFilter {
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    for entry in entries.iter().rev() {
        if let Some((env, message)) = store.queued_message(entry.id).await.unwrap()
            && env.sender.is_empty()
            && env.recipients.iter().any(|r| r.address == to)
        {
            out.push(String::from_utf8_lossy(&message).into_owned());
        }
    }
    out
}

/// Waits for exactly one report to `to` and returns it.
async fn the_report(store: &Store, to: &str) -> String {
    let mut reports = Vec::new();
    wait_for("the DSN", WAIT, async || {
        reports = queued_reports(store, to).await;
        !reports.is_empty()
    })
    .await;
    assert_eq!(reports.len(), 1, "{reports:?}");
    reports.remove(0)
}

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mx_preference_is_followed_and_a_refusing_mx_falls_back_to_the_next() {
    mx_preference(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mx_preference_is_followed_and_a_refusing_mx_falls_back_to_the_next_postgres() {
    mx_preference(Backend::Postgres).await;
}

async fn mx_preference(backend: Backend) {
    let second = first_sink(SinkScript::default()).await;
    let port = second.addr.port();
    let third = SmtpSink::bind("127.0.0.3", port, SinkScript::default()).await;
    let dns = TestDns::start(
        "pref.test",
        &[
            ("@", mx(30, "mx3.pref.test")),
            ("@", mx(10, "mx1.pref.test")),
            ("@", mx(20, "mx2.pref.test")),
            // Nothing listens on 127.0.0.9: the connection is refused.
            ("mx1", a("127.0.0.9")),
            ("mx2", a("127.0.0.2")),
            ("mx3", a("127.0.0.3")),
        ],
    )
    .await;
    let Some(running) = stack_on(backend, &dns, port, 5).await else {
        return;
    };
    let store = open_store(&running).await;
    let id = enqueue(
        &store,
        "alice@sender.test",
        vec![
            QueueRecipient {
                address: "bob@pref.test".into(),
                orcpt: Some("rfc822;Bob@Pref.test".into()),
                notify: Some("FAILURE,DELAY".into()),
            },
            recipient("carol@pref.test"),
        ],
    )
    .await;
    wait_for("delivery", WAIT, async || gone(&store, id).await).await;

    let got = second.received();
    assert_eq!(got.len(), 1, "one transaction for both recipients: {got:?}");
    let m = &got[0];
    assert_eq!(m.from, "alice@sender.test");
    assert_eq!(m.to, ["bob@pref.test", "carol@pref.test"]);
    assert_eq!(m.data, MESSAGE, "dot-stuffing is undone by the receiver");
    // DSN parameters travel on to a server that offers DSN (RFC 3461).
    assert!(m.mail.contains("ENVID=ENV-1"), "{}", m.mail);
    assert!(m.mail.contains("SIZE="), "{}", m.mail);
    assert!(
        m.rcpts[0].contains("NOTIFY=FAILURE,DELAY"),
        "{}",
        m.rcpts[0]
    );
    assert!(
        m.rcpts[0].contains("ORCPT=rfc822;Bob@Pref.test"),
        "{}",
        m.rcpts[0]
    );
    assert_eq!(third.sessions(), 0, "the least preferred MX is not needed");
    running.stack.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_domain_without_mx_is_delivered_to_its_address() {
    let sink = first_sink(SinkScript::default()).await;
    let dns = TestDns::start("implicit.test", &[("host", a("127.0.0.2"))]).await;
    let running = stack(&dns, sink.addr.port(), 5).await;
    let store = open_store(&running).await;
    let id = enqueue(
        &store,
        "alice@sender.test",
        vec![recipient("dave@host.implicit.test")],
    )
    .await;
    wait_for("delivery", WAIT, async || gone(&store, id).await).await;
    assert_eq!(sink.received()[0].to, ["dave@host.implicit.test"]);
    running.stack.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_null_mx_fails_at_once_and_the_sender_gets_a_report() {
    let sink = first_sink(SinkScript::default()).await;
    let dns = TestDns::start(
        "nullmx.test",
        &[("nomail", mx(0, ".")), ("nomail", a("127.0.0.2"))],
    )
    .await;
    let running = stack(&dns, sink.addr.port(), 5).await;
    let store = open_store(&running).await;
    let id = enqueue(
        &store,
        "alice@sender.test",
        vec![recipient("erin@nomail.nullmx.test")],
    )
    .await;
    // The failure is final at the first attempt: the entry leaves the queue
    // in the transaction that queues the report.
    wait_for("the failure", WAIT, async || gone(&store, id).await).await;
    assert_eq!(
        sink.sessions(),
        0,
        "no connection to the A record of a null-MX domain"
    );
    let dsn = &the_report(&store, "alice@sender.test").await;
    assert!(dsn.contains("report-type=delivery-status"), "{dsn}");
    assert!(
        dsn.contains("Final-Recipient: rfc822; erin@nomail.nullmx.test\r\n"),
        "{dsn}"
    );
    assert!(
        dsn.contains("Action: failed\r\nStatus: 5.1.10\r\n"),
        "{dsn}"
    );
    assert!(dsn.contains("Original-Envelope-Id: ENV-1\r\n"), "{dsn}");
    assert!(
        dsn.contains("Diagnostic-Code: X-Mailroom; 5.1.10 nomail.nullmx.test does not accept mail"),
        "{dsn}"
    );
    running.stack.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_4xx_is_retried_and_the_message_delivered_once() {
    retry_after_4xx(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_4xx_is_retried_and_the_message_delivered_once_postgres() {
    retry_after_4xx(Backend::Postgres).await;
}

async fn retry_after_4xx(backend: Backend) {
    let sink = first_sink(SinkScript {
        data_end: Box::new(|n| {
            if n == 0 {
                SinkReply::Say("451 4.3.0 try again later".into())
            } else {
                SinkReply::Say("250 2.0.0 queued".into())
            }
        }),
        ..SinkScript::default()
    })
    .await;
    let dns = TestDns::start(
        "retry.test",
        &[("@", mx(10, "mx.retry.test")), ("mx", a("127.0.0.2"))],
    )
    .await;
    let Some(running) = stack_on(backend, &dns, sink.addr.port(), 5).await else {
        return;
    };
    let store = open_store(&running).await;
    let id = enqueue(
        &store,
        "alice@sender.test",
        vec![recipient("frank@retry.test")],
    )
    .await;
    wait_for("the deferral", WAIT, async || {
        all_in(&store, id, "deferred").await
    })
    .await;
    let (_, _, response) = &states(&store, id).await[0];
    assert!(
        response
            .as_deref()
            .unwrap()
            .contains("451 4.3.0 try again later"),
        "{response:?}"
    );
    let (_, attempts, _) = &states(&store, id).await[0];
    assert_eq!(*attempts, 1);
    wait_for("the retry", WAIT, async || gone(&store, id).await).await;
    let answers: Vec<String> = sink.received().into_iter().map(|m| m.answered).collect();
    assert_eq!(answers, ["451 4.3.0 try again later", "250 2.0.0 queued"]);
    // Nothing more can arrive: the entry is gone and with it every
    // recipient a worker could still send to (the queue is empty).
    assert_eq!(store.queue_size().await.unwrap(), 0);
    assert_eq!(sink.received().len(), 2);
    running.stack.stop(Duration::from_secs(5)).await;
}

/// One peer at 127.0.0.2, the MX of `dest.bounce.test` (where it refuses
/// `nobody@` with 550 5.1.1) and of `sender.bounce.test`, so that reports
/// to the sender come back to it.
async fn bounce_peer() -> (SmtpSink, TestDns) {
    let sink = first_sink(SinkScript {
        rcpt: Box::new(|address| {
            if address.starts_with("nobody@") {
                "550 5.1.1 no such user here".into()
            } else {
                "250 2.1.5 ok".into()
            }
        }),
        ..SinkScript::default()
    })
    .await;
    let dns = TestDns::start(
        "bounce.test",
        &[
            ("dest", mx(10, "mx.bounce.test")),
            ("sender", mx(10, "mx.bounce.test")),
            ("mx", a("127.0.0.2")),
        ],
    )
    .await;
    (sink, dns)
}

/// Waits for the reports (mail from `<>`) `sink` received.
async fn reports_at(sink: &SmtpSink) -> Vec<mailroom_tests::SinkMessage> {
    let mut reports = Vec::new();
    wait_for("the DSN at the sender's MX", WAIT, async || {
        reports = sink
            .received()
            .into_iter()
            .filter(|m| m.from.is_empty())
            .collect();
        !reports.is_empty()
    })
    .await;
    reports
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5xx_fails_that_recipient_and_the_report_goes_to_the_sender_from_null() {
    let (sink, dns) = bounce_peer().await;
    let running = stack(&dns, sink.addr.port(), 5).await;
    let store = open_store(&running).await;
    let id = enqueue(
        &store,
        "alice@sender.bounce.test",
        vec![
            recipient("nobody@dest.bounce.test"),
            recipient("gina@dest.bounce.test"),
        ],
    )
    .await;
    wait_for("both outcomes", WAIT, async || gone(&store, id).await).await;
    // The report is relayed to the sender's MX, from <>.
    let reports = reports_at(&sink).await;
    assert_eq!(reports.len(), 1);
    let dsn = &reports[0];
    assert_eq!(dsn.to, ["alice@sender.bounce.test"]);
    assert!(dsn.mail.starts_with("MAIL FROM:<>"), "{}", dsn.mail);
    assert!(dsn.rcpts[0].contains("NOTIFY=NEVER"), "{}", dsn.rcpts[0]);
    let text = String::from_utf8_lossy(&dsn.data);
    assert!(
        text.contains("Final-Recipient: rfc822; nobody@dest.bounce.test\r\n"),
        "{text}"
    );
    assert!(text.contains("Status: 5.1.1\r\n"), "{text}");
    assert!(
        text.contains("Diagnostic-Code: smtp; 550 5.1.1 no such user here\r\n"),
        "{text}"
    );
    assert!(
        !text.contains("Final-Recipient: rfc822; gina@"),
        "the delivered one is not reported"
    );
    assert!(
        text.contains("Content-Type: message/rfc822"),
        "the message is returned: {text}"
    );
    running.stack.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_hangs_after_the_data_is_deferred_after_the_timeout() {
    let sink = first_sink(SinkScript {
        data_end: Box::new(|_| SinkReply::Hang),
        ..SinkScript::default()
    })
    .await;
    let dns = TestDns::start(
        "hang.test",
        &[("@", mx(10, "mx.hang.test")), ("mx", a("127.0.0.2"))],
    )
    .await;
    let running = stack(&dns, sink.addr.port(), 2).await;
    let store = open_store(&running).await;
    let started = std::time::Instant::now();
    let id = enqueue(
        &store,
        "alice@sender.test",
        vec![recipient("hank@hang.test")],
    )
    .await;
    wait_for("the deferral", WAIT, async || {
        all_in(&store, id, "deferred").await
    })
    .await;
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "not before the timeout"
    );
    let (_, attempts, response) = &states(&store, id).await[0];
    assert_eq!(*attempts, 1);
    let response = response.as_deref().unwrap();
    assert!(
        response.starts_with("4.4.2") && response.contains("timeout"),
        "{response}"
    );
    assert_eq!(sink.received().len(), 1, "the data did arrive");
    running.stack.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_is_used_when_offered_even_with_an_unverifiable_certificate() {
    let (acceptor, _cert_dir) = mailroom_tests::sink_tls("mx.tls.test");
    let sink = first_sink(SinkScript {
        tls: Some(acceptor),
        ..SinkScript::default()
    })
    .await;
    let dns = TestDns::start(
        "tls.test",
        &[("@", mx(10, "mx.tls.test")), ("mx", a("127.0.0.2"))],
    )
    .await;
    let running = stack(&dns, sink.addr.port(), 5).await;
    let store = open_store(&running).await;
    let id = enqueue(&store, "alice@sender.test", vec![recipient("ivy@tls.test")]).await;
    wait_for("delivery", WAIT, async || gone(&store, id).await).await;
    let got = sink.received();
    assert_eq!(got.len(), 1);
    assert!(got[0].tls, "opportunistic STARTTLS (RFC 7435) was not used");
    assert_eq!(got[0].data, MESSAGE);
    running.stack.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_dropped_after_the_data_defers() {
    let sink = first_sink(SinkScript {
        data_end: Box::new(|_| SinkReply::Drop),
        ..SinkScript::default()
    })
    .await;
    let dns = TestDns::start(
        "drop.test",
        &[("@", mx(10, "mx.drop.test")), ("mx", a("127.0.0.2"))],
    )
    .await;
    let running = stack(&dns, sink.addr.port(), 5).await;
    let store = open_store(&running).await;
    let id = enqueue(
        &store,
        "alice@sender.test",
        vec![recipient("jack@drop.test")],
    )
    .await;
    wait_for("the deferral", WAIT, async || {
        states(&store, id).await[0].0 == "deferred"
    })
    .await;
    let (_, _, response) = &states(&store, id).await[0];
    let response = response.as_deref().unwrap();
    assert!(
        response.starts_with("4.4.2") && response.contains("closed"),
        "{response}"
    );
    running.stack.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_larger_than_the_servers_size_fails_without_sending_it() {
    let sink = first_sink(SinkScript {
        extensions: vec!["PIPELINING".into(), "SIZE 20".into()],
        ..SinkScript::default()
    })
    .await;
    let dns = TestDns::start(
        "size.test",
        &[("@", mx(10, "mx.size.test")), ("mx", a("127.0.0.2"))],
    )
    .await;
    let running = stack(&dns, sink.addr.port(), 5).await;
    let store = open_store(&running).await;
    let id = enqueue(
        &store,
        "alice@sender.test",
        vec![recipient("kim@size.test")],
    )
    .await;
    wait_for("the failure", WAIT, async || gone(&store, id).await).await;
    let dsn = the_report(&store, "alice@sender.test").await;
    assert!(dsn.contains("Status: 5.3.4\r\n"), "{dsn}");
    assert!(sink.received().is_empty(), "nothing was sent");
    running.stack.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_message_fails_with_5_6_3_at_a_peer_without_chunking_and_gets_no_data() {
    // BINARYMIME offered, CHUNKING not: RFC 3030 §3 allows a binary body
    // only with BDAT, so there is no way to send it there.
    let mut extensions = SinkScript::default().extensions;
    extensions.push("BINARYMIME".into());
    let sink = first_sink(SinkScript {
        extensions,
        ..SinkScript::default()
    })
    .await;
    let dns = TestDns::start(
        "nochunk.test",
        &[("@", mx(10, "mx.nochunk.test")), ("mx", a("127.0.0.2"))],
    )
    .await;
    let running = stack(&dns, sink.addr.port(), 5).await;
    let store = open_store(&running).await;
    let envelope = QueueEnvelope {
        sender: "alice@sender.test".into(),
        recipients: vec![recipient("lee@nochunk.test")],
        body_type: Some("BINARYMIME".into()),
        ..Default::default()
    };
    let id = store
        .enqueue(
            &envelope,
            b"Subject: binary\r\nContent-Transfer-Encoding: binary\r\n\r\n\0\r.\n",
            3600,
        )
        .await
        .unwrap();
    wait_for("the failure", WAIT, async || gone(&store, id).await).await;
    let dsn = the_report(&store, "alice@sender.test").await;
    assert!(
        dsn.contains("Final-Recipient: rfc822; lee@nochunk.test\r\n"),
        "{dsn}"
    );
    assert!(dsn.contains("Action: failed\r\n"), "{dsn}");
    assert!(dsn.contains("Status: 5.6.3\r\n"), "{dsn}");
    assert!(
        dsn.contains("cannot receive a binary MIME message (RFC 3030)"),
        "the reason is in the report: {dsn}"
    );
    assert!(sink.sessions() >= 1, "the peer was asked");
    assert!(sink.received().is_empty(), "and got no DATA");
    running.stack.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_domain_that_does_not_exist_fails_with_5_1_2() {
    let sink = first_sink(SinkScript::default()).await;
    let dns = TestDns::start(
        "nx.test",
        &[("@", mx(10, "mx.nx.test")), ("mx", a("127.0.0.2"))],
    )
    .await;
    let running = stack(&dns, sink.addr.port(), 5).await;
    let store = open_store(&running).await;
    let id = enqueue(
        &store,
        "alice@sender.test",
        vec![recipient("lee@missing.nx.test")],
    )
    .await;
    wait_for("the failure", WAIT, async || gone(&store, id).await).await;
    let dsn = the_report(&store, "alice@sender.test").await;
    assert!(
        dsn.contains("Action: failed\r\nStatus: 5.1.2\r\n")
            && dsn.contains("domain missing.nx.test does not exist"),
        "{dsn}"
    );
    assert_eq!(sink.sessions(), 0);
    running.stack.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_ehlo_gets_helo_and_no_extensions() {
    let sink = first_sink(SinkScript {
        refuse_ehlo: true,
        ..SinkScript::default()
    })
    .await;
    let dns = TestDns::start(
        "helo.test",
        &[("@", mx(10, "mx.helo.test")), ("mx", a("127.0.0.2"))],
    )
    .await;
    let running = stack(&dns, sink.addr.port(), 5).await;
    let store = open_store(&running).await;
    let id = enqueue(
        &store,
        "alice@sender.test",
        vec![QueueRecipient {
            address: "max@helo.test".into(),
            orcpt: None,
            notify: Some("NEVER".into()),
        }],
    )
    .await;
    wait_for("delivery", WAIT, async || gone(&store, id).await).await;
    let got = sink.received();
    assert_eq!(
        got[0].mail, "MAIL FROM:<alice@sender.test>",
        "no ESMTP parameters after HELO"
    );
    assert_eq!(got[0].rcpts, ["RCPT TO:<max@helo.test>"]);
    running.stack.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_expires_while_deferred_fails_with_4_4_7_and_a_report() {
    let sink = first_sink(SinkScript {
        rcpt: Box::new(|_| "450 4.2.1 mailbox busy".into()),
        ..SinkScript::default()
    })
    .await;
    let dns = TestDns::start(
        "expire.test",
        &[("@", mx(10, "mx.expire.test")), ("mx", a("127.0.0.2"))],
    )
    .await;
    let running = stack(&dns, sink.addr.port(), 5).await;
    let store = open_store(&running).await;
    let envelope = QueueEnvelope {
        sender: "alice@sender.test".into(),
        recipients: vec![recipient("nat@expire.test")],
        ..Default::default()
    };
    // A maximum age of 0: the first temporary failure is already too late.
    let id = store.enqueue(&envelope, MESSAGE, 0).await.unwrap();
    wait_for("the expiry", WAIT, async || gone(&store, id).await).await;
    let dsn = the_report(&store, "alice@sender.test").await;
    assert!(dsn.contains("Action: failed\r\nStatus: 4.4.7\r\n"), "{dsn}");
    assert!(
        dsn.contains("<nat@expire.test>: 4.4.7 message expired in the queue; last error: 4.2.1")
            && dsn.contains("Diagnostic-Code: smtp; 450 4.2.1 mailbox busy\r\n"),
        "{dsn}"
    );
    running.stack.stop(Duration::from_secs(5)).await;
}

// ---------------------------------------------------------------------------
// Finished entries leave the queue.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayed_entry_leaves_the_queue_with_its_content() {
    relayed_entry_removed(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayed_entry_leaves_the_queue_with_its_content_postgres() {
    relayed_entry_removed(Backend::Postgres).await;
}

/// `mailroom queue show <id>` through the CLI and the Admin API.
async fn queue_show(running: &Running, id: i64) -> Result<String, String> {
    let dir = running.data_dir.path().to_str().unwrap().to_string();
    cli(
        &[
            "--data-dir",
            &dir,
            "--admin-url",
            &running.admin_url,
            "queue",
            "show",
            &id.to_string(),
        ],
        "",
    )
    .await
}

async fn relayed_entry_removed(backend: Backend) {
    let sink = first_sink(SinkScript::default()).await;
    let dns = TestDns::start(
        "gone.test",
        &[("@", mx(10, "mx.gone.test")), ("mx", a("127.0.0.2"))],
    )
    .await;
    let Some(running) = stack_on(backend, &dns, sink.addr.port(), 5).await else {
        return;
    };
    let store = open_store(&running).await;
    let id = enqueue(
        &store,
        "alice@sender.test",
        vec![recipient("olga@gone.test")],
    )
    .await;
    let shown = queue_show(&running, id).await.unwrap();
    assert!(shown.contains("recipient: olga@gone.test"), "{shown}");
    wait_for("delivery", WAIT, async || gone(&store, id).await).await;
    assert_eq!(sink.received().len(), 1);
    let err = queue_show(&running, id).await.unwrap_err();
    assert!(err.contains("NotFound"), "{err}");
    assert!(
        store
            .get_blob(&BlobHash::of(MESSAGE))
            .await
            .unwrap()
            .is_none(),
        "nothing else refers to the content: it is released with the entry"
    );
    assert_eq!(store.queue_summary().await.unwrap().entries, 0);
    running.stack.stop(Duration::from_secs(5)).await;
}

mailroom_tests::on_both!(
    a_locally_delivered_entry_leaves_the_queue_and_the_mailbox_keeps_the_content
);

async fn a_locally_delivered_entry_leaves_the_queue_and_the_mailbox_keeps_the_content(
    running: &Running,
) {
    let store = mailroom_tests::with_accounts(running, &["bob@example.test"]).await;
    let id = enqueue(
        &store,
        "alice@sender.test",
        vec![recipient("bob@example.test")],
    )
    .await;
    wait_for("delivery", WAIT, async || gone(&store, id).await).await;
    let err = queue_show(running, id).await.unwrap_err();
    assert!(err.contains("NotFound"), "{err}");
    // The mailbox shares the content-addressed blob: it stays.
    assert!(
        store
            .get_blob(&BlobHash::of(MESSAGE))
            .await
            .unwrap()
            .is_some()
    );
    let bob = store
        .get_account(&mailroom_address::Address::parse("bob@example.test").unwrap())
        .await
        .unwrap()
        .unwrap();
    let inbox = store
        .list_mailboxes(bob.id)
        .await
        .unwrap()
        .into_iter()
        .find(|m| m.name == "INBOX")
        .unwrap();
    let text = store.read_message(inbox.id, 1).await.unwrap().unwrap();
    assert!(
        text.ends_with(MESSAGE),
        "{}",
        String::from_utf8_lossy(&text)
    );
}

// ---------------------------------------------------------------------------
// Delay notices (RFC 3464 Action: delayed).
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_deferral_sends_one_delay_notice_to_the_sender() {
    delay_notice(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_deferral_sends_one_delay_notice_to_the_sender_postgres() {
    delay_notice(Backend::Postgres).await;
}

async fn delay_notice(backend: Backend) {
    let sink = first_sink(SinkScript {
        rcpt: Box::new(|_| "450 4.2.1 mailbox busy, try later".into()),
        ..SinkScript::default()
    })
    .await;
    let dns = TestDns::start(
        "slow.test",
        &[("@", mx(10, "mx.slow.test")), ("mx", a("127.0.0.2"))],
    )
    .await;
    // Retries after 1 s, 2 s, 4 s …; a notice once a message is 2 s old.
    let Some(running) = stack_with(backend, &dns, sink.addr.port(), 5, |c| {
        c.mta.delay_warning_secs = 2;
    })
    .await
    else {
        return;
    };
    let store = open_store(&running).await;
    let notify = |address: &str, notify: Option<&str>| QueueRecipient {
        address: address.into(),
        orcpt: None,
        notify: notify.map(str::to_string),
    };
    let id = enqueue(
        &store,
        "alice@sender.test",
        vec![
            notify("bob@slow.test", None),
            notify("carol@slow.test", Some("FAILURE")),
            notify("dave@slow.test", Some("DELAY")),
        ],
    )
    .await;
    // From <> nothing is ever reported, delays included.
    let bounce = store
        .enqueue(
            &QueueEnvelope {
                sender: String::new(),
                recipients: vec![recipient("erin@slow.test")],
                ..Default::default()
            },
            b"Subject: a bounce\r\n\r\nx\r\n",
            3600,
        )
        .await
        .unwrap();
    wait_for("four attempts", Duration::from_secs(30), async || {
        states(&store, id).await.iter().all(|(_, a, _)| *a >= 4)
            && states(&store, bounce).await[0].1 >= 4
    })
    .await;
    let entry = store.queue_entry(id).await.unwrap().unwrap();
    let noted: Vec<(&str, bool)> = entry
        .recipients
        .iter()
        .map(|r| (r.address.as_str(), r.delay_notified_at.is_some()))
        .collect();
    assert_eq!(
        noted,
        [
            ("bob@slow.test", true),
            ("carol@slow.test", false),
            ("dave@slow.test", true)
        ]
    );
    assert!(
        entry.recipients.iter().all(|r| r.state == "deferred"),
        "{entry:?}"
    );
    // One notice for the message, however many deferrals followed.
    let dsn = the_report(&store, "alice@sender.test").await;
    assert!(
        dsn.contains("Subject: Delayed Mail (still being retried)\r\n"),
        "{dsn}"
    );
    assert!(
        dsn.contains(
            "Final-Recipient: rfc822; bob@slow.test\r\nAction: delayed\r\nStatus: 4.2.1\r\n"
        ),
        "{dsn}"
    );
    assert!(
        dsn.contains("Final-Recipient: rfc822; dave@slow.test\r\n"),
        "{dsn}"
    );
    assert!(!dsn.contains("carol@slow.test"), "NOTIFY=FAILURE: {dsn}");
    assert!(
        dsn.contains("Diagnostic-Code: smtp; 450 4.2.1 mailbox busy, try later\r\n"),
        "{dsn}"
    );
    assert!(dsn.contains("Will-Retry-Until: "), "{dsn}");
    assert!(
        dsn.contains("Content-Type: text/rfc822-headers\r\n\r\nFrom: alice@sender.test\r\n"),
        "{dsn}"
    );
    assert!(!dsn.contains("Hello."), "the body is not returned: {dsn}");
    assert!(
        queued_reports(&store, "").await.is_empty(),
        "nothing goes to <>"
    );
    running.stack.stop(Duration::from_secs(5)).await;
}

/// The bounces Mailroom makes are DKIM-signed like the mail it sends: a
/// failure report relayed to the sender's MX carries one signature per
/// active key of the host name's domain (`mx.example.test` → the served
/// `example.test`, which aligns with `MAILER-DAEMON@mx.example.test` under
/// DMARC's relaxed alignment), and dkimpy verifies both.
async fn bounces_are_dkim_signed(backend: Backend) {
    use mailroom_sender_auth::keys;
    let (sink, dns) = bounce_peer().await;
    let Some(running) = stack_on(backend, &dns, sink.addr.port(), 5).await else {
        return;
    };
    let store = open_store(&running).await;
    let example = mailroom_address::Domain::parse("example.test").unwrap();
    store.add_domain(&example).await.unwrap();
    let (rsa, ed) = (
        keys::generate_rsa().unwrap(),
        keys::generate_ed25519().unwrap(),
    );
    let mut records = serde_json::Map::new();
    for (selector, key) in [("2026a-rsa", &rsa), ("2026a-ed", &ed)] {
        store
            .add_dkim_key(
                &example,
                selector,
                key.algorithm,
                &key.private_pem(),
                &key.public_base64(),
            )
            .await
            .unwrap();
        records.insert(
            format!("{selector}._domainkey.example.test"),
            keys::dkim_record(key.algorithm, &key.public_base64()).into(),
        );
    }
    enqueue(
        &store,
        "alice@sender.bounce.test",
        vec![recipient("nobody@dest.bounce.test")],
    )
    .await;
    let reports = reports_at(&sink).await;
    let text = String::from_utf8_lossy(&reports[0].data).into_owned();
    let header = text
        .split("\r\n\r\n")
        .next()
        .unwrap()
        .replace("\r\n\t", " ");
    assert!(
        header.contains("From: Mail Delivery System <MAILER-DAEMON@mx.example.test>"),
        "{header}"
    );
    let signatures: Vec<&str> = header
        .lines()
        .filter(|l| l.starts_with("DKIM-Signature:"))
        .collect();
    assert_eq!(signatures.len(), 2, "{header}");
    for s in &signatures {
        assert!(s.contains("d=example.test;"), "{s}");
    }

    let dir = tempfile::tempdir().unwrap();
    let records_file = dir.path().join("records.json");
    std::fs::write(&records_file, serde_json::Value::from(records).to_string()).unwrap();
    let message_file = dir.path().join("dsn.eml");
    std::fs::write(&message_file, &reports[0].data).unwrap();
    let verdict = mailroom_tests::run_tool(
        "python3 dkim_cross.py (dkimpy)",
        std::process::Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/interop/dkim_cross.py"
            ))
            .arg("verify")
            .arg(&records_file)
            .arg(&message_file),
        &[0],
    );
    assert_eq!(verdict, "pass\npass\n", "dkimpy on the bounce:\n{text}");
    running.stack.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounces_are_dkim_signed_on_sqlite() {
    bounces_are_dkim_signed(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounces_are_dkim_signed_on_postgres() {
    bounces_are_dkim_signed(Backend::Postgres).await;
}

// ---------------------------------------------------------------------------
// Session reuse and pipelining (issue 17): the messages leased together for
// one destination share one SMTP session, RSET between them.
// ---------------------------------------------------------------------------

/// Message `i` of a batch, told apart by its Message-ID.
fn numbered(i: usize) -> Vec<u8> {
    format!(
        "From: alice@sender.test\r\nSubject: batch {i}\r\nMessage-ID: <m{i}@sender.test>\r\n\r\nMessage {i}.\r\n"
    )
    .into_bytes()
}

/// The Message-ID number of a message `numbered` made.
fn number_of(data: &[u8]) -> usize {
    let text = String::from_utf8_lossy(data);
    let at = text.find("Message-ID: <m").expect("a numbered message") + "Message-ID: <m".len();
    text[at..].split('@').next().unwrap().parse().unwrap()
}

/// A batch of messages relayed to a sink.
struct Batch {
    /// The MX of the batch's domain, on 127.0.0.2.
    sink: SmtpSink,
    running: Running,
    _dns: TestDns,
    _db: mailroom_store::testing::TestDb,
}

impl Batch {
    /// `(message number, what the sink answered)` of each transaction the
    /// sink's connection `session` carried (`None`: every other one).
    fn answered(&self, session: Option<usize>) -> Vec<(usize, String)> {
        self.sink
            .received()
            .iter()
            .filter(|m| match session {
                Some(s) => m.session == s,
                None => m.session != 0,
            })
            .map(|m| (number_of(&m.data), m.answered.clone()))
            .collect()
    }

    async fn stop(self) {
        self.running.stack.stop(Duration::from_secs(5)).await;
    }
}

/// Queues one message from `<>` (no reports to muddle the queue) per entry
/// of `recipients` (message `i` to the local parts `recipients[i]` at
/// `zone`) BEFORE the stack starts, so that the relay's first look finds
/// them all; then starts the stack on `backend` with `zone`'s MX a sink
/// following `script`, and returns once every entry left the queue. `None`
/// when PostgreSQL tests are opted out of.
async fn relay_batch(
    backend: Backend,
    zone: &str,
    script: SinkScript,
    recipients: &[&[&str]],
    change: impl FnOnce(&mut mailroom_config::Config),
) -> Option<Batch> {
    let (store, db) = match backend {
        Backend::Sqlite => mailroom_store::testing::TestDb::sqlite().await,
        Backend::Postgres => mailroom_store::testing::TestDb::postgres().await?,
    };
    let sink = first_sink(script).await;
    let dns = TestDns::start(
        zone,
        &[("@", mx(10, &format!("mx.{zone}"))), ("mx", a("127.0.0.2"))],
    )
    .await;
    let mut ids = Vec::new();
    for (i, to) in recipients.iter().enumerate() {
        let envelope = QueueEnvelope {
            sender: String::new(),
            recipients: to
                .iter()
                .map(|l| recipient(&format!("{l}@{zone}")))
                .collect(),
            ..Default::default()
        };
        ids.push(store.enqueue(&envelope, &numbered(i), 3600).await.unwrap());
    }
    let url = db.url.clone();
    let running = stack_with(backend, &dns, sink.addr.port(), 5, move |c| {
        c.store.url = Some(url);
        change(c);
    })
    .await?;
    wait_for("every entry's last result", WAIT, async || {
        for id in &ids {
            if !gone(&store, *id).await {
                return false;
            }
        }
        true
    })
    .await;
    Some(Batch {
        sink,
        running,
        _dns: dns,
        _db: db,
    })
}

/// `n` messages, one recipient each.
const FIVE: &[&[&str]] = &[&["a"], &["b"], &["c"], &["d"], &["e"]];

/// What the sink answered with these codes in the order given.
fn said(answers: &[(usize, &str)]) -> Vec<(usize, String)> {
    answers.iter().map(|(n, a)| (*n, a.to_string())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_for_one_domain_share_one_pipelined_session_with_rset_between() {
    session_reuse(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_for_one_domain_share_one_pipelined_session_with_rset_between_postgres() {
    session_reuse(Backend::Postgres).await;
}

async fn session_reuse(backend: Backend) {
    let to: &[&[&str]] = &[&["a"], &["b", "c"], &["d"], &["e"], &["f"]];
    let Some(batch) = relay_batch(backend, "reuse.test", SinkScript::default(), to, |_| {}).await
    else {
        return;
    };
    assert_eq!(batch.sink.sessions(), 1, "five messages, one connection");
    let got = batch.sink.received();
    let numbers: Vec<usize> = got.iter().map(|m| number_of(&m.data)).collect();
    assert_eq!(numbers, [0, 1, 2, 3, 4], "each once, in queue order");
    assert_eq!(got[1].to, ["b@reuse.test", "c@reuse.test"]);
    // RFC 2920 §3.1: MAIL, RCPT and DATA in one write, RSET in front of
    // every transaction but the first (RFC 5321 §4.1.1.5).
    let groups: Vec<Vec<String>> = batch
        .sink
        .command_groups()
        .iter()
        .map(|g| g.verbs())
        .filter(|v| v[0] != "EHLO")
        .collect();
    assert_eq!(
        groups,
        [
            vec!["MAIL", "RCPT", "DATA"],
            vec!["RSET", "MAIL", "RCPT", "RCPT", "DATA"],
            vec!["RSET", "MAIL", "RCPT", "DATA"],
            vec!["RSET", "MAIL", "RCPT", "DATA"],
            vec!["RSET", "MAIL", "RCPT", "DATA"],
            vec!["QUIT"],
        ]
    );
    batch.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_pipelining_gets_one_command_at_a_time_and_partial_rcpt_holds() {
    for pipelining in [false, true] {
        let mut extensions = vec!["SIZE 10000000".to_string(), "8BITMIME".into()];
        if pipelining {
            extensions.push("PIPELINING".into());
        }
        let script = SinkScript {
            extensions,
            rcpt: Box::new(|a| {
                if a.starts_with("nobody") {
                    "550 5.1.1 no such user".into()
                } else {
                    "250 2.1.5 ok".into()
                }
            }),
            ..SinkScript::default()
        };
        let to: &[&[&str]] = &[&["a", "nobody", "b"], &["nobody"], &["c"]];
        let batch = relay_batch(Backend::Sqlite, "partial.test", script, to, |_| {})
            .await
            .unwrap();
        assert_eq!(batch.sink.sessions(), 1, "pipelining {pipelining}");
        // The refused recipient is final (the entry is gone) and was never
        // sent to; the others were, once; message 1 had nobody to go to.
        let delivered: Vec<(usize, Vec<String>)> = batch
            .sink
            .received()
            .iter()
            .map(|m| (number_of(&m.data), m.to.clone()))
            .collect();
        assert_eq!(
            delivered,
            [
                (0, vec!["a@partial.test".into(), "b@partial.test".into()]),
                (2, vec!["c@partial.test".into()]),
            ],
            "pipelining {pipelining}"
        );
        let groups = batch.sink.command_groups();
        if pipelining {
            assert!(
                groups
                    .iter()
                    .any(|g| g.verbs() == ["MAIL", "RCPT", "RCPT", "RCPT", "DATA"]),
                "{groups:?}"
            );
        } else {
            assert!(
                groups.iter().all(|g| g.commands.len() == 1),
                "one at a time: {groups:?}"
            );
            let rsets = groups.iter().filter(|g| g.verbs() == ["RSET"]).count();
            assert_eq!(rsets, 2, "{groups:?}");
        }
        batch.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_carries_at_most_max_messages_per_session() {
    let batch = relay_batch(
        Backend::Sqlite,
        "cap.test",
        SinkScript::default(),
        FIVE,
        |c| {
            c.mta.max_messages_per_session = 2;
        },
    )
    .await
    .unwrap();
    let got = batch.sink.received();
    assert_eq!(got.len(), 5);
    let mut per_session = std::collections::BTreeMap::new();
    for m in &got {
        *per_session.entry(m.session).or_insert(0) += 1;
    }
    assert_eq!(batch.sink.sessions(), 3, "2 + 2 + 1: {per_session:?}");
    assert!(per_session.values().all(|&n| n <= 2), "{per_session:?}");
    batch.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_in_a_reused_session_is_that_messages_alone() {
    // The second message's content is refused for good, the third's for now.
    let script = SinkScript {
        data_end: Box::new(|n| {
            SinkReply::Say(match n {
                1 => "554 5.7.1 content refused".into(),
                2 => "451 4.3.0 try again later".into(),
                _ => "250 ok".into(),
            })
        }),
        ..SinkScript::default()
    };
    let batch = relay_batch(Backend::Sqlite, "refuse.test", script, FIVE, |_| {})
        .await
        .unwrap();
    assert_eq!(
        batch.answered(Some(0)),
        said(&[
            (0, "250 ok"),
            (1, "554 5.7.1 content refused"),
            (2, "451 4.3.0 try again later"),
            (3, "250 ok"),
            (4, "250 ok"),
        ]),
        "the session went on after each refusal"
    );
    // The deferred one came again (later, in a session of its own) and was
    // taken; the refused one failed and never came again.
    assert_eq!(batch.answered(None), said(&[(2, "250 ok")]));
    batch.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_dropped_mid_batch_defers_the_rest_which_arrive_later_exactly_once() {
    session_dropped(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_dropped_mid_batch_defers_the_rest_which_arrive_later_exactly_once_postgres() {
    session_dropped(Backend::Postgres).await;
}

async fn session_dropped(backend: Backend) {
    // The connection is dropped after the second message's data. The
    // answered first message is final at once; the rest are deferred (the
    // unanswered second with the reason, the others untried) and sent
    // again a second later.
    let script = SinkScript {
        data_end: Box::new(|n| match n {
            1 => SinkReply::Drop,
            _ => SinkReply::Say("250 ok".into()),
        }),
        ..SinkScript::default()
    };
    let Some(batch) = relay_batch(backend, "dropped.test", script, FIVE, |_| {}).await else {
        return;
    };
    assert_eq!(
        batch.answered(Some(0)),
        said(&[(0, "250 ok"), (1, "(dropped)")]),
        "nothing after the drop"
    );
    assert_eq!(
        batch.answered(None),
        said(&[(1, "250 ok"), (2, "250 ok"), (3, "250 ok"), (4, "250 ok")]),
        "the rest once each, the first not again"
    );
    assert_eq!(
        batch.sink.sessions(),
        2,
        "the rest went in one later session"
    );
    batch.stop().await;
}
