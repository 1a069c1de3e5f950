//! SMTP through real sockets: the inbound MTA (never an open relay), the
//! submission server (AUTH, sender identity, TLS), limits and abuse.

use std::time::Duration;

use mailroom_tests::{
    Backend, PASSWORD, Running, SmtpClient, connect_tls, start, start_with, with_accounts,
};

fn smtp(r: &Running) -> std::net::SocketAddr {
    r.stack.addr("smtp").unwrap()
}
fn submission(r: &Running) -> std::net::SocketAddr {
    r.stack.addr("submission").unwrap()
}

/// Makes deliveries to `who` wait: a one-byte quota admits the RCPT (the
/// mailbox is not full yet) but defers the delivery, so what the server
/// accepted stays in the queue for the test to read, and a "nothing was
/// queued" check cannot be fooled by a message that was delivered and
/// removed in between.
async fn hold_in_queue(store: &mailroom_store::Store, who: &str) {
    store
        .set_quota(&mailroom_address::Address::parse(who).unwrap(), 1)
        .await
        .unwrap();
}

async fn stop(r: Running) {
    r.stack.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_accepts_only_our_users_in_every_tricky_form() {
    let r = start(Backend::Sqlite).await.unwrap();
    let store = with_accounts(&r, &["bob@example.test"]).await;
    hold_in_queue(&store, "bob@example.test").await;
    let (mut c, greeting) = SmtpClient::connect(smtp(&r)).await;
    assert_eq!(greeting.0, 220);
    assert!(
        greeting.1.starts_with("mx.example.test ESMTP"),
        "{greeting:?}"
    );
    let (code, ehlo) = c.cmd("EHLO remote.test").await;
    assert_eq!(code, 250);
    assert!(
        ehlo.contains("STARTTLS") && ehlo.contains("PIPELINING") && ehlo.contains("SIZE "),
        "{ehlo}"
    );
    assert!(
        !ehlo.contains("AUTH"),
        "port 25 must not offer AUTH: {ehlo}"
    );
    // The null sender is accepted: bounces must arrive.
    assert_eq!(c.cmd("MAIL FROM:<>").await.0, 250);
    for (rcpt, expected) in [
        ("<someone@elsewhere.test>", "550 5.7.1"),
        ("<someone@ELSEWHERE.test>", "550 5.7.1"),
        ("<bob%elsewhere.test@example.test>", "550 5.7.1"),
        ("<elsewhere.test!bob@example.test>", "550 5.7.1"),
        ("<@example.test:someone@elsewhere.test>", "550 5.7.1"),
        ("<@example.test,@other.test:bob@example.test>", "550 5.7.1"),
        ("<\"someone@elsewhere.test\"@example.test>", "550 5.1.1"),
        ("<\"someone%elsewhere.test\"@example.test>", "550 5.7.1"),
        ("<someone@[192.0.2.1]>", "550 5.7.1"),
        ("<someone@[IPv6:2001:db8::1]>", "550 5.7.1"),
        ("<someone@elsewhere.test@example.test>", "501 5.1.3"),
        ("<nobody@example.test>", "550 5.1.1"),
        ("someone@elsewhere.test", "501"),
    ] {
        let (code, text) = c.cmd(&format!("RCPT TO:{rcpt}")).await;
        let got = format!("{code} {text}");
        assert!(
            got.starts_with(expected),
            "RCPT TO:{rcpt} → {got}, expected {expected}"
        );
    }
    // Nothing accepted yet: DATA has no valid recipients.
    assert_eq!(c.cmd("DATA").await.0, 554);
    assert_eq!(c.cmd("RCPT TO:<Bob@Example.Test>").await.0, 250);
    // RFC 5321 §4.5.1: postmaster@ is always deliverable (without an
    // alias, to the domain's first account: bob).
    assert_eq!(c.cmd("RCPT TO:<PostMaster@Example.Test>").await.0, 250);
    assert_eq!(c.cmd("DATA").await.0, 354);
    c.send(b"From: x@remote.test\r\nSubject: hello\r\n\r\nhi\r\n.\r\n")
        .await;
    let (code, text) = c.reply().await;
    assert_eq!(code, 250, "{text}");
    assert_eq!(c.cmd("QUIT").await.0, 221);
    assert_eq!(store.queue_size().await.unwrap(), 1);
    stop(r).await;
}

/// SMTP smuggling (CVE-2023-51764/5/6): none of these endings may end the
/// message, and the "smuggled" transaction behind them must never run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggled_endings_neither_end_data_nor_inject_a_message() {
    let r = start(Backend::Sqlite).await.unwrap();
    let store = with_accounts(&r, &["bob@example.test"]).await;
    hold_in_queue(&store, "bob@example.test").await;
    let endings: [&[u8]; 10] = [
        b"\n.\n",
        b"\r.\r",
        b"\r.\n",
        b"\n.\r",
        b"\n.\r\n",
        b"\r\n.\n",
        b"\r.\r\n",
        b"\r\n.\r",
        b"\r\n\0.\r\n",
        b"\r\n.\0\r\n",
    ];
    for ending in endings {
        let (mut c, _) = SmtpClient::connect(smtp(&r)).await;
        c.send(b"EHLO remote.test\r\nMAIL FROM:<x@remote.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n").await;
        for expected in [250, 250, 250, 354] {
            assert_eq!(c.reply().await.0, expected);
        }
        let mut payload = b"From: x@remote.test\r\nSubject: first\r\n\r\nbody".to_vec();
        payload.extend_from_slice(ending);
        payload.extend_from_slice(
            b"MAIL FROM:<evil@remote.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nx\r\n.\r\n",
        );
        c.send(&payload).await;
        // The only real end is the final CRLF.CRLF above: exactly one reply, a refusal.
        let (code, text) = c.reply().await;
        assert_eq!(code, 554, "ending {ending:?}: {text}");
        assert!(text.starts_with("5.6.0"), "ending {ending:?}: {text}");
        let (code, _) = c.cmd("NOOP").await;
        assert_eq!(code, 250, "ending {ending:?}: the session is out of step");
        assert_eq!(c.cmd("QUIT").await.0, 221);
    }
    assert_eq!(
        store.queue_size().await.unwrap(),
        0,
        "a smuggled message was queued"
    );
    stop(r).await;
}

/// CVE-2011-0411: commands pipelined with STARTTLS must not run after the handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_injected_before_starttls_are_discarded() {
    let r = start(Backend::Sqlite).await.unwrap();
    let _store = with_accounts(&r, &["bob@example.test"]).await;
    let (mut c, _) = SmtpClient::connect(smtp(&r)).await;
    assert_eq!(c.cmd("EHLO remote.test").await.0, 250);
    c.send(b"STARTTLS\r\nRSET\r\nMAIL FROM:<injected@remote.test>\r\n")
        .await;
    assert_eq!(c.reply().await.0, 220);
    let tcp = c.into_inner();
    match mailroom_tests::tls_connect(&r, tcp).await {
        Err(_) => {} // the junk broke the handshake: also safe
        Ok(tls) => {
            let mut c = SmtpClient::from_stream(tls);
            // The first reply after the handshake must be to our EHLO, not to injected commands.
            let (code, text) = c.cmd("EHLO remote.test").await;
            assert_eq!(code, 250, "{text}");
            assert!(text.starts_with("mx.example.test greets"), "{text}");
            // The session was reset: no transaction is open, so RCPT needs MAIL.
            assert_eq!(c.cmd("RCPT TO:<bob@example.test>").await.0, 503);
        }
    }
    stop(r).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submission_requires_tls_auth_and_the_users_own_addresses() {
    let r = start_with(Backend::Sqlite, None, |c| {
        c.smtp.allow_plaintext_auth_on_loopback = false
    })
    .await
    .unwrap();
    let store = with_accounts(&r, &["alice@example.test", "bob@example.test"]).await;
    hold_in_queue(&store, "bob@example.test").await;
    store
        .add_alias(
            &mailroom_store::AliasSource::parse("sales@example.test").unwrap(),
            &mailroom_address::Address::parse("alice@example.test").unwrap(),
        )
        .await
        .unwrap();
    let (mut c, _) = SmtpClient::connect(submission(&r)).await;
    let (_, ehlo) = c.cmd("EHLO client.test").await;
    assert!(!ehlo.contains("AUTH"), "AUTH offered before TLS: {ehlo}");
    assert!(
        c.cmd("AUTH PLAIN AGFsaWNlQGV4YW1wbGUudGVzdABjb3JyZWN0IGhvcnNlIGJhdHRlcnk=")
            .await
            .1
            .starts_with("5.7.11")
    );
    assert_eq!(
        c.cmd("MAIL FROM:<alice@example.test>").await,
        (530, "5.7.0 authentication required".into())
    );
    let mut c = c.starttls(&r).await.unwrap();
    let (_, ehlo) = c.cmd("EHLO client.test").await;
    assert!(ehlo.contains("AUTH SCRAM-SHA-256 PLAIN LOGIN"), "{ehlo}");
    assert_eq!(c.auth_plain("alice@example.test", PASSWORD).await.0, 235);
    for (sender, code) in [
        ("<bob@example.test>", 553),
        ("<>", 553),
        ("<alice@elsewhere.test>", 553),
        ("<sales@example.test>", 250),
        ("<Alice+lists@Example.Test>", 250),
        ("<alice@example.test>", 250),
    ] {
        let got = c.cmd(&format!("MAIL FROM:{sender}")).await;
        assert_eq!(got.0, code, "MAIL FROM:{sender} → {got:?}");
        if code == 250 {
            c.cmd("RSET").await;
        }
    }
    // The From header is checked too.
    assert_eq!(c.cmd("MAIL FROM:<alice@example.test>").await.0, 250);
    assert_eq!(
        c.cmd("RCPT TO:<friend@remote.test>").await.0,
        250,
        "authenticated users may relay"
    );
    assert_eq!(c.cmd("DATA").await.0, 354);
    c.send(b"From: Bob <bob@example.test>\r\nSubject: forged\r\n\r\nx\r\n.\r\n")
        .await;
    let (code, text) = c.reply().await;
    assert_eq!(code, 553, "{text}");
    // A well-formed submission gets Date, Message-ID and a Received header with TLS details.
    assert_eq!(c.cmd("MAIL FROM:<alice@example.test>").await.0, 250);
    assert_eq!(c.cmd("RCPT TO:<bob@example.test>").await.0, 250);
    assert_eq!(c.cmd("DATA").await.0, 354);
    c.send(b"From: Alice <alice@example.test>\r\nTo: bob@example.test\r\nSubject: hi\r\n\r\nhello\r\n.\r\n").await;
    let (code, text) = c.reply().await;
    assert_eq!(code, 250, "{text}");
    let id: i64 = text.rsplit(' ').next().unwrap().parse().unwrap();
    let (envelope, message) = store
        .queued_message(id)
        .await
        .unwrap()
        .expect("queued after 250");
    assert_eq!(envelope.sender, "alice@example.test");
    assert_eq!(
        envelope.authenticated_as.as_deref(),
        Some("alice@example.test")
    );
    let text = String::from_utf8(message).unwrap();
    assert!(text.starts_with("Received: from client.test"), "{text}");
    assert!(
        text.contains("with ESMTPSA") && text.contains("(version=TLSv1.3 cipher="),
        "{text}"
    );
    assert!(
        text.contains("\r\nDate: ") && text.contains("\r\nMessage-ID: <"),
        "{text}"
    );
    stop(r).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn implicit_tls_submission_works() {
    let r = start(Backend::Sqlite).await.unwrap();
    let _store = with_accounts(&r, &["alice@example.test"]).await;
    let (mut c, greeting) = connect_tls(&r, r.stack.addr("submissions").unwrap()).await;
    assert_eq!(greeting.0, 220);
    let (_, ehlo) = c.cmd("EHLO client.test").await;
    assert!(
        !ehlo.contains("STARTTLS") && ehlo.contains("AUTH"),
        "{ehlo}"
    );
    assert_eq!(c.auth_plain("alice@example.test", PASSWORD).await.0, 235);
    stop(r).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_and_recipient_limits_are_enforced() {
    let r = start_with(Backend::Sqlite, None, |c| {
        c.smtp.max_message_size = 10_000;
        c.smtp.max_recipients = 3;
    })
    .await
    .unwrap();
    let store = with_accounts(
        &r,
        &[
            "a@example.test",
            "b@example.test",
            "c@example.test",
            "d@example.test",
        ],
    )
    .await;
    for who in ["a@example.test", "b@example.test", "c@example.test"] {
        hold_in_queue(&store, who).await;
    }
    let (mut c, _) = SmtpClient::connect(smtp(&r)).await;
    c.cmd("EHLO remote.test").await;
    let (code, text) = c.cmd("MAIL FROM:<x@remote.test> SIZE=20000").await;
    assert_eq!((code, &text[..5]), (552, "5.3.4"), "{text}");
    assert_eq!(c.cmd("MAIL FROM:<x@remote.test> SIZE=2000").await.0, 250);
    for rcpt in ["a", "b", "c"] {
        assert_eq!(
            c.cmd(&format!("RCPT TO:<{rcpt}@example.test>")).await.0,
            250
        );
    }
    let (code, text) = c.cmd("RCPT TO:<d@example.test>").await;
    assert_eq!((code, &text[..5]), (452, "4.5.3"), "{text}");
    // A mailbox already at its quota is a temporary refusal at RCPT time (452 4.2.2).
    let mut mda = mailroom_tests::delivery_client(&r).await;
    mda.deliver(mailroom_rpc::delivery::DeliverRequest {
        queue_id: 1,
        sender: "x@remote.test".into(),
        recipients: vec!["d@example.test".into()],
        message: b"Subject: fill\r\n\r\nsome content\r\n".to_vec(),
        ..Default::default()
    })
    .await
    .unwrap();
    store
        .set_quota(
            &mailroom_address::Address::parse("d@example.test").unwrap(),
            1,
        )
        .await
        .unwrap();
    let (mut full, _) = SmtpClient::connect(smtp(&r)).await;
    full.cmd("EHLO remote.test").await;
    full.cmd("MAIL FROM:<x@remote.test>").await;
    let (code, text) = full.cmd("RCPT TO:<d@example.test>").await;
    assert_eq!((code, &text[..5]), (452, "4.2.2"), "{text}");
    drop(full);
    assert_eq!(c.cmd("DATA").await.0, 354);
    // 1 MB against a 10 kB limit: refused after the end, and the session goes on.
    c.send(b"Subject: big\r\n\r\n").await;
    let line = [b'x'; 998];
    for _ in 0..1000 {
        c.send(&line).await;
        c.send(b"\r\n").await;
    }
    c.send(b".\r\n").await;
    let (code, text) = c.reply().await;
    assert_eq!((code, &text[..5]), (552, "5.3.4"), "{text}");
    assert_eq!(c.cmd("NOOP").await.0, 250);
    assert_eq!(store.queue_size().await.unwrap(), 0);
    stop(r).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_failures_are_slowed_closed_and_throttled_per_ip() {
    let r = start_with(Backend::Sqlite, None, |c| {
        c.smtp.max_auth_failures = 3;
        c.smtp.max_auth_failures_per_ip = 5;
    })
    .await
    .unwrap();
    let _store = with_accounts(&r, &["alice@example.test"]).await;
    let (mut c, _) = SmtpClient::connect(submission(&r)).await;
    c.cmd("EHLO client.test").await;
    for _ in 0..2 {
        assert_eq!(
            c.auth_plain("alice@example.test", "wrong password").await.0,
            535
        );
    }
    assert_eq!(
        c.auth_plain("alice@example.test", "wrong password").await.0,
        535
    );
    assert_eq!(
        c.reply().await.0,
        421,
        "the session is closed after 3 failures"
    );
    assert_eq!(c.reply().await.0, 0);
    // Two more from a new connection use up the per-IP allowance ...
    let (mut c, _) = SmtpClient::connect(submission(&r)).await;
    c.cmd("EHLO client.test").await;
    for _ in 0..2 {
        assert_eq!(
            c.auth_plain("alice@example.test", "wrong password").await.0,
            535
        );
    }
    // ... and then even the right password is not checked from this address.
    let (mut c, _) = SmtpClient::connect(submission(&r)).await;
    c.cmd("EHLO client.test").await;
    let (code, text) = c.auth_plain("alice@example.test", PASSWORD).await;
    assert_eq!((code, &text[..5]), (454, "4.7.0"), "{text}");
    stop(r).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_loops_and_error_floods_are_cut_off() {
    let r = start_with(Backend::Sqlite, None, |c| c.smtp.max_errors = 5)
        .await
        .unwrap();
    let store = with_accounts(&r, &["bob@example.test"]).await;
    hold_in_queue(&store, "bob@example.test").await;
    let (mut c, _) = SmtpClient::connect(smtp(&r)).await;
    c.cmd("EHLO remote.test").await;
    c.cmd("MAIL FROM:<x@remote.test>").await;
    c.cmd("RCPT TO:<bob@example.test>").await;
    assert_eq!(c.cmd("DATA").await.0, 354);
    let mut msg = String::new();
    for i in 0..101 {
        msg.push_str(&format!(
            "Received: from hop{i}.test by hop{}.test; Sat, 28 Nov 2026 10:00:00 +0000\r\n",
            i + 1
        ));
    }
    msg.push_str("Subject: loop\r\n\r\nround and round\r\n.\r\n");
    c.send(msg.as_bytes()).await;
    let (code, text) = c.reply().await;
    assert_eq!((code, &text[..5]), (554, "5.4.6"), "{text}");
    assert_eq!(store.queue_size().await.unwrap(), 0);
    for _ in 0..5 {
        c.cmd("BOGUS").await;
    }
    assert_eq!(
        c.reply().await.0,
        421,
        "too many errors must close the session"
    );
    stop(r).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bdat_chunks_make_one_message() {
    let r = start(Backend::Sqlite).await.unwrap();
    let store = with_accounts(&r, &["bob@example.test"]).await;
    hold_in_queue(&store, "bob@example.test").await;
    let (mut c, _) = SmtpClient::connect(smtp(&r)).await;
    c.cmd("EHLO remote.test").await;
    c.cmd("MAIL FROM:<x@remote.test> BODY=BINARYMIME").await;
    c.cmd("RCPT TO:<bob@example.test>").await;
    let part1 = b"Subject: chunked\r\n\r\n";
    let part2 = b"line one\r\nline two\r\n";
    c.send(format!("BDAT {}\r\n", part1.len()).as_bytes()).await;
    c.send(part1).await;
    assert_eq!(c.reply().await.0, 250);
    c.send(format!("BDAT {} LAST\r\n", part2.len()).as_bytes())
        .await;
    c.send(part2).await;
    let (code, text) = c.reply().await;
    assert_eq!(code, 250, "{text}");
    let id: i64 = text.rsplit(' ').next().unwrap().parse().unwrap();
    let (_, message) = store.queued_message(id).await.unwrap().unwrap();
    assert!(message.ends_with(b"Subject: chunked\r\n\r\nline one\r\nline two\r\n"));
    stop(r).await;
}

/// 250 only after the commit: with no queue behind it, submission answers 451 and keeps nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unavailable_queue_is_a_temporary_failure_never_250() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let Some(r) = start_with(backend, Some(mailroom::ServiceName::Msa), |c| {
            c.submission.queue_endpoint = "http://127.0.0.1:1".into();
        })
        .await
        else {
            continue;
        };
        let _store = with_accounts(&r, &["alice@example.test"]).await;
        let (mut c, _) = SmtpClient::connect(submission(&r)).await;
        c.cmd("EHLO client.test").await;
        assert_eq!(c.auth_plain("alice@example.test", PASSWORD).await.0, 235);
        c.cmd("MAIL FROM:<alice@example.test>").await;
        c.cmd("RCPT TO:<friend@remote.test>").await;
        assert_eq!(c.cmd("DATA").await.0, 354);
        c.send(b"From: alice@example.test\r\nSubject: x\r\n\r\nx\r\n.\r\n")
            .await;
        let (code, text) = c.reply().await;
        assert_eq!((code, &text[..5]), (451, "4.3.0"), "{text}");
        stop(r).await;
    }
}

/// On PostgreSQL: what was acknowledged is in the queue, envelope and all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_mail_is_committed_on_postgres() {
    let Some(r) = start(Backend::Postgres).await else {
        return;
    };
    let store = with_accounts(&r, &["bob@example.test"]).await;
    hold_in_queue(&store, "bob@example.test").await;
    let (mut c, _) = SmtpClient::connect(smtp(&r)).await;
    c.send(
        b"EHLO remote.test\r\nMAIL FROM:<x@remote.test> RET=HDRS ENVID=abc+2Bd\r\n\
          RCPT TO:<bob@example.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob@example.test\r\nDATA\r\n",
    )
    .await;
    for expected in [250, 250, 250, 354] {
        assert_eq!(c.reply().await.0, expected);
    }
    c.send(b"Subject: durable\r\n\r\nx\r\n.\r\n").await;
    let (code, text) = c.reply().await;
    assert_eq!(code, 250, "{text}");
    let id: i64 = text.rsplit(' ').next().unwrap().parse().unwrap();
    let (envelope, _) = store.queued_message(id).await.unwrap().unwrap();
    assert_eq!(envelope.env_id.as_deref(), Some("abc+d"));
    assert_eq!(envelope.ret.as_deref(), Some("HDRS"));
    assert_eq!(
        envelope.recipients[0].notify.as_deref(),
        Some("SUCCESS,FAILURE")
    );
    assert_eq!(
        envelope.recipients[0].orcpt.as_deref(),
        Some("rfc822;bob@example.test")
    );
    stop(r).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_clients_long_lines_and_connection_floods_get_rfc_replies() {
    let r = start_with(Backend::Sqlite, None, |c| {
        c.smtp.command_timeout_secs = 1;
        c.limits.max_connections_per_ip = 2;
    })
    .await
    .unwrap();
    let _store = with_accounts(&r, &["bob@example.test"]).await;
    // A line over the limit is refused without killing the session.
    let (mut a, _) = SmtpClient::connect(smtp(&r)).await;
    let (code, text) = a.cmd(&format!("NOOP {}", "x".repeat(5000))).await;
    assert_eq!((code, &text[..5]), (500, "5.5.6"), "{text}");
    assert_eq!(a.cmd("NOOP").await.0, 250);
    // A third connection from the same address is turned away with 421.
    let (_b, greeting) = SmtpClient::connect(smtp(&r)).await;
    assert_eq!(greeting.0, 220);
    let (_c, refused) = SmtpClient::connect(smtp(&r)).await;
    assert_eq!(refused.0, 421, "{refused:?}");
    assert!(refused.1.starts_with("4.7.0"), "{refused:?}");
    // A client that says nothing is disconnected with 421 4.4.2.
    let (code, text) = a.reply().await;
    assert_eq!((code, &text[..5]), (421, "4.4.2"), "{text}");
    stop(r).await;
}
