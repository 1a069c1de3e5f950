//! Sender authentication end to end (issue 14): SPF, DKIM and DMARC checks
//! on port 25 and DKIM signing of submitted mail, through real sockets and
//! a DNS server on loopback that is authoritative for the whole `test.`
//! zone (every sender domain of these tests lives under it).
//!
//! * one stack receives from a hand-driven SMTP client that plays several
//!   sender domains (signing with keys whose records the DNS server
//!   publishes): pass, DMARC reject, DMARC quarantine, two SPF records, a
//!   DNS failure, a forged `Authentication-Results`, RSA-SHA1;
//! * hostile SPF records (loops, the lookup and void-lookup limits) and a
//!   DNS server that never answers give the RFC's results quickly;
//! * two stacks exchange mail: what one signs at submission the other
//!   verifies, `spf=pass dkim=pass dmarc=pass`.

use std::time::Duration;

use mailroom_address::Domain;
use mailroom_sender_auth::keys::{self, GeneratedKey};
use mailroom_sender_auth::signing::{self, SigningKey};
use mailroom_store::Store;
use mailroom_tests::{
    Backend, DnsRecord, PASSWORD, Running, SmtpClient, TestDns, inbox_id, mailbox_id, open_store,
    serve_account, start_with, wait_for, with_accounts,
};

const WAIT: Duration = Duration::from_secs(30);

fn txt(s: &str) -> DnsRecord {
    DnsRecord::Txt(s.to_string())
}

/// Generated once per test: an RSA and an Ed25519 key.
struct Keys {
    rsa: GeneratedKey,
    ed: GeneratedKey,
}

impl Keys {
    fn new() -> Keys {
        Keys {
            rsa: keys::generate_rsa().unwrap(),
            ed: keys::generate_ed25519().unwrap(),
        }
    }

    /// The DKIM records of `domain` (relative to the `test.` zone).
    fn records(&self, label: &str) -> Vec<(String, DnsRecord)> {
        vec![
            (
                format!("rsa._domainkey.{label}"),
                txt(&keys::dkim_record(
                    self.rsa.algorithm,
                    &self.rsa.public_base64(),
                )),
            ),
            (
                format!("ed._domainkey.{label}"),
                txt(&keys::dkim_record(
                    self.ed.algorithm,
                    &self.ed.public_base64(),
                )),
            ),
        ]
    }

    /// `message` with DKIM signatures of `domain` by both keys on top.
    fn sign(&self, domain: &str, message: &[u8]) -> Vec<u8> {
        let (rsa, ed) = (self.rsa.private_pem(), self.ed.private_pem());
        let headers = signing::sign(
            message,
            &[
                SigningKey {
                    domain,
                    selector: "rsa",
                    algorithm: self.rsa.algorithm,
                    private_key_pem: &rsa,
                },
                SigningKey {
                    domain,
                    selector: "ed",
                    algorithm: self.ed.algorithm,
                    private_key_pem: &ed,
                },
            ],
            Duration::from_secs(3600),
        )
        .unwrap();
        [headers.as_bytes(), message].concat()
    }
}

async fn start_dns(records: Vec<(String, DnsRecord)>) -> TestDns {
    let borrowed: Vec<(&str, DnsRecord)> = records
        .iter()
        .map(|(n, r)| (n.as_str(), r.clone()))
        .collect();
    TestDns::start("test", &borrowed).await
}

fn message(from: &str, subject: &str) -> Vec<u8> {
    format!(
        "From: {from}\r\nTo: alice@example.test\r\nSubject: {subject}\r\n\
         Date: Thu, 3 Dec 2026 12:00:00 +0000\r\nMessage-ID: <{subject}@sender.test>\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\
         Hello,\r\n  with  spaces and 8-bit: caf\u{e9}.\r\n\r\n\r\n"
    )
    .into_bytes()
}

/// Sends one message on port 25 as `mail_from` to alice; the final reply.
async fn send(r: &Running, mail_from: &str, body: &[u8]) -> (u16, String) {
    send_to(r, mail_from, &["alice@example.test"], body).await
}

/// Submits `body` as alice (authenticated) to `to`; the final reply.
async fn submit(r: &Running, to: &str, body: &[u8]) -> (u16, String) {
    let (mut c, _) = SmtpClient::connect(r.stack.addr("submission").unwrap()).await;
    c.cmd("EHLO client.test").await;
    assert_eq!(c.auth_plain("alice@example.test", PASSWORD).await.0, 235);
    assert_eq!(c.cmd("MAIL FROM:<alice@example.test>").await.0, 250);
    assert_eq!(c.cmd(&format!("RCPT TO:<{to}>")).await.0, 250);
    assert_eq!(c.cmd("DATA").await.0, 354);
    c.send(body).await;
    c.send(b".\r\n").await;
    let reply = c.reply().await;
    c.cmd("QUIT").await;
    reply
}

/// The text of the message with `subject` in `mailbox`, waiting for it.
async fn delivered(store: &Store, mailbox: i64, subject: &str) -> String {
    let needle = format!("\r\nSubject: {subject}\r\n");
    let mut found = None;
    wait_for(&format!("delivery of {subject}"), WAIT, async || {
        let n = store.list_messages(mailbox).await.unwrap().len() as u32;
        for uid in 1..=n + 5 {
            if let Some(m) = store.read_message(mailbox, uid).await.unwrap() {
                let text = String::from_utf8_lossy(&m).into_owned();
                if text.contains(&needle) {
                    found = Some(text);
                    return true;
                }
            }
        }
        false
    })
    .await;
    found.unwrap()
}

/// The `Authentication-Results` fields (unfolded) claiming `id`.
fn results_of(text: &str, id: &str) -> Vec<String> {
    let header = text
        .split("\r\n\r\n")
        .next()
        .unwrap()
        .replace("\r\n\t", " ");
    header
        .lines()
        .filter(|l| {
            l.to_ascii_lowercase()
                .starts_with(&format!("authentication-results: {id}"))
        })
        .map(str::to_string)
        .collect()
}

/// The checks a receiver named `hostname` makes of `message` from `ip`
/// (`helo`, `mail_from`), asking the DNS server at `dns` with `timeout` per
/// query: its verdict, and the header fields unfolded.
async fn check_directly(
    dns: std::net::SocketAddr,
    timeout: Duration,
    hostname: &str,
    (ip, helo, mail_from): (&str, &str, &str),
    message: &[u8],
) -> (mailroom_sender_auth::Verdict, String) {
    let checker = mailroom_sender_auth::Checker::new(
        mailroom_sender_auth::dns::resolver(&[dns], timeout).unwrap(),
        hostname,
        Default::default(),
    );
    let envelope = mailroom_sender_auth::inbound::Envelope {
        ip: ip.parse().unwrap(),
        helo,
        mail_from,
    };
    let verdict = checker.check(envelope, message, Default::default()).await;
    let headers = verdict.headers.replace("\r\n\t", " ");
    (verdict, headers)
}

async fn receiver(backend: Backend, dns: &TestDns) -> Option<(Running, Store)> {
    let dns = dns.addr;
    let r = start_with(backend, None, move |c| {
        c.mta.dns_servers = vec![dns];
        c.sender_auth.check_inbound = true;
    })
    .await?;
    let store = with_accounts(&r, &["alice@example.test"]).await;
    Some((r, store))
}

async fn inbound_checks(backend: Backend) {
    let keys = Keys::new();
    let mut records: Vec<(String, DnsRecord)> = vec![
        // Signs, sends from 127.0.0.1, publishes p=reject: passes.
        ("good".into(), txt("v=spf1 ip4:127.0.0.1 -all")),
        ("_dmarc.good".into(), txt("v=DMARC1; p=reject")),
        // Someone else's address, p=reject.
        ("spoofed".into(), txt("v=spf1 ip4:192.0.2.1 -all")),
        ("_dmarc.spoofed".into(), txt("v=DMARC1; p=reject")),
        // p=quarantine.
        ("quar".into(), txt("v=spf1 ip4:192.0.2.1 -all")),
        ("_dmarc.quar".into(), txt("v=DMARC1; p=quarantine")),
        // t=y: reject lowered to quarantine (DMARCbis).
        ("testing".into(), txt("v=spf1 -all")),
        ("_dmarc.testing".into(), txt("v=DMARC1; p=reject; t=y")),
        // Two SPF records: permerror (RFC 7208 §4.5), no DMARC.
        ("twospf".into(), txt("v=spf1 ip4:127.0.0.1 -all")),
        ("twospf".into(), txt("v=spf1 -all")),
        // SPF fail, no DMARC: delivered, marked.
        ("nodmarc".into(), txt("v=spf1 -all")),
        // pct=0 (RFC 7489 §6.6.4): the next milder policy applies.
        ("pctzero".into(), txt("v=spf1 -all")),
        ("_dmarc.pctzero".into(), txt("v=DMARC1; p=reject; pct=0")),
        ("pctzeroq".into(), txt("v=spf1 -all")),
        (
            "_dmarc.pctzeroq".into(),
            txt("v=DMARC1; p=quarantine; pct=0"),
        ),
        ("pctall".into(), txt("v=spf1 -all")),
        ("_dmarc.pctall".into(), txt("v=DMARC1; p=reject; pct=100")),
    ];
    records.extend(keys.records("good"));
    let dns = start_dns(records).await;
    let Some((r, store)) = receiver(backend, &dns).await else {
        return;
    };
    let inbox = mailbox_id(&store, "alice@example.test", "INBOX").await;
    let junk = mailbox_id(&store, "alice@example.test", "Junk").await;

    // Pass, with a forged result claiming our authserv-id on top.
    let forged = [
        &b"Authentication-Results: mx.example.test; dmarc=pass header.from=good.test\r\n"[..],
        &keys.sign("good.test", &message("bob@good.test", "pass")),
    ]
    .concat();
    let (code, text) = send(&r, "bob@good.test", &forged).await;
    assert_eq!(code, 250, "{text}");
    let text = delivered(&store, inbox, "pass").await;
    let ours = results_of(&text, "mx.example.test");
    assert_eq!(
        ours.len(),
        1,
        "one result of ours, the forged one gone: {text}"
    );
    let ar = &ours[0];
    assert!(ar.contains("spf=pass"), "{ar}");
    assert_eq!(ar.matches("dkim=pass").count(), 2, "RSA and Ed25519: {ar}");
    assert!(ar.contains("dmarc=pass header.from=good.test"), "{ar}");
    assert!(!ar.contains("dmarc=pass header.from=good.test\r\n"), "{ar}");
    assert!(text.contains("Received-SPF: pass"), "{text}");
    // On top: Return-Path and Delivered-To (MDA), then ours, then Received.
    let ar_at = text
        .find("Authentication-Results: mx.example.test")
        .unwrap();
    let received_at = text.find("Received: from client.test").unwrap();
    assert!(ar_at < received_at, "{text}");

    // An RSA-SHA1 signature is not verified (RFC 8301): with it alone,
    // DKIM does not pass, and SPF from elsewhere fails too: p=reject.
    let sha1 = [
        &b"DKIM-Signature: v=1; a=rsa-sha1; d=good.test; s=rsa; c=relaxed/relaxed;\r\n\th=from:subject; bh=AAAA; b=AAAA\r\n"[..],
        &message("bob@good.test", "sha1"),
    ]
    .concat();
    let (code, text) = send(&r, "bob@spoofed.test", &sha1).await;
    assert_eq!((code, &text[..5]), (550, "5.7.1"), "{text}");

    // A spoofed p=reject domain: 550 5.7.1 at the end of DATA.
    let (code, text) = send(
        &r,
        "ceo@spoofed.test",
        &message("ceo@spoofed.test", "spoof"),
    )
    .await;
    assert_eq!(code, 550, "{text}");
    assert!(text.starts_with("5.7.1 "), "{text}");

    // Signed, but by another domain than the author's: no alignment.
    let unaligned = keys.sign("good.test", &message("ceo@spoofed.test", "unaligned"));
    let (code, text) = send(&r, "bob@good.test", &unaligned).await;
    assert_eq!(code, 550, "{text}");

    // p=quarantine: delivered, into Junk.
    let (code, text) = send(&r, "x@quar.test", &message("x@quar.test", "quarantined")).await;
    assert_eq!(code, 250, "{text}");
    let text = delivered(&store, junk, "quarantined").await;
    let ar = &results_of(&text, "mx.example.test")[0];
    assert!(
        ar.contains("dmarc=fail") && ar.contains("policy.dmarc=quarantine"),
        "{ar}"
    );

    // t=y: p=reject applied as quarantine.
    let (code, text) = send(&r, "x@testing.test", &message("x@testing.test", "testing")).await;
    assert_eq!(code, 250, "{text}");
    delivered(&store, junk, "testing").await;

    // pct=0: p=reject applied as quarantine, p=quarantine as none; pct=100
    // as written.
    let (code, text) = send(&r, "x@pctzero.test", &message("x@pctzero.test", "pctzero")).await;
    assert_eq!(code, 250, "{text}");
    delivered(&store, junk, "pctzero").await;
    let (code, text) = send(
        &r,
        "x@pctzeroq.test",
        &message("x@pctzeroq.test", "pctzeroq"),
    )
    .await;
    assert_eq!(code, 250, "{text}");
    delivered(&store, inbox, "pctzeroq").await;
    let (code, text) = send(&r, "x@pctall.test", &message("x@pctall.test", "pctall")).await;
    assert_eq!((code, &text[..5]), (550, "5.7.1"), "{text}");

    // Two SPF records: permerror, delivered (no DMARC record).
    let (code, text) = send(&r, "x@twospf.test", &message("x@twospf.test", "twospf")).await;
    assert_eq!(code, 250, "{text}");
    let text = delivered(&store, inbox, "twospf").await;
    let ar = &results_of(&text, "mx.example.test")[0];
    assert!(
        ar.contains("spf=permerror") && ar.contains("smtp.mailfrom=x@twospf.test"),
        "{ar}"
    );

    // SPF fail without DMARC: delivered by default, marked.
    let (code, text) = send(&r, "x@nodmarc.test", &message("x@nodmarc.test", "nodmarc")).await;
    assert_eq!(code, 250, "{text}");
    let text = delivered(&store, inbox, "nodmarc").await;
    let ar = &results_of(&text, "mx.example.test")[0];
    assert!(ar.contains("spf=fail"), "{ar}");

    // A domain the DNS server does not answer for (REFUSED): the checks
    // cannot conclude, so the sender must retry.
    let (code, text) = send(
        &r,
        "x@elsewhere.example",
        &message("x@elsewhere.example", "dnsfail"),
    )
    .await;
    assert_eq!(code, 451, "{text}");
    assert!(text.starts_with("4.7."), "{text}");

    // Authenticated submission is not checked (and gets no results of ours).
    let (code, text) = submit(
        &r,
        "alice@example.test",
        &message("alice@example.test", "submitted"),
    )
    .await;
    assert_eq!(code, 250, "{text}");
    let text = delivered(&store, inbox, "submitted").await;
    assert!(results_of(&text, "mx.example.test").is_empty(), "{text}");
    r.stack.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_checks_on_sqlite() {
    inbound_checks(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_checks_on_postgres() {
    inbound_checks(Backend::Postgres).await;
}

/// Two Mailroom instances: example.test (sending, keys generated in its
/// store) and remote.test (receiving on 127.0.0.3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_between_two_mailrooms_passes_spf_dkim_dmarc() {
    let keys = Keys::new();
    let mut records: Vec<(String, DnsRecord)> = vec![
        (
            "example".into(),
            DnsRecord::Mx(10, "mx.example.test".into()),
        ),
        (
            "mx.example".into(),
            DnsRecord::A("127.0.0.1".parse().unwrap()),
        ),
        ("example".into(), txt("v=spf1 mx -all")),
        ("_dmarc.example".into(), txt("v=DMARC1; p=reject")),
        ("remote".into(), DnsRecord::Mx(10, "mx.remote.test".into())),
        (
            "mx.remote".into(),
            DnsRecord::A("127.0.0.3".parse().unwrap()),
        ),
    ];
    records.extend(keys.records("example"));
    let dns = start_dns(records).await;
    let dns_addr = dns.addr;

    let remote = start_with(Backend::Sqlite, None, move |c| {
        c.server.hostname = "mx.remote.test".into();
        c.mta.listen = vec!["127.0.0.3:0".parse().unwrap()];
        c.mta.dns_servers = vec![dns_addr];
        c.sender_auth.check_inbound = true;
    })
    .await
    .unwrap();
    let remote_store = open_store(&remote).await;
    serve_account(&remote_store, "carol@remote.test").await;
    let port = remote.stack.addr("smtp").unwrap().port();

    let Some(sender) = start_with(Backend::Postgres, None, move |c| {
        c.mta.dns_servers = vec![dns_addr];
        c.mta.outbound_port = port;
        c.mta.first_retry_secs = 1;
    })
    .await
    else {
        return;
    };
    let sender_store = with_accounts(&sender, &["alice@example.test"]).await;
    let example = Domain::parse("example.test").unwrap();
    for (selector, key) in [("rsa", &keys.rsa), ("ed", &keys.ed)] {
        sender_store
            .add_dkim_key(
                &example,
                selector,
                key.algorithm,
                &key.private_pem(),
                &key.public_base64(),
            )
            .await
            .unwrap();
    }

    let body = "From: Alice <alice@example.test>\r\nTo: carol@remote.test\r\n\
                Subject: signed\r\n  and folded\r\n\r\nHi Carol.\r\n";
    let (code, text) = submit(&sender, "carol@remote.test", body.as_bytes()).await;
    assert_eq!(code, 250, "{text}");

    let inbox = inbox_id(&remote_store, "carol@remote.test").await;
    wait_for("delivery at the remote Mailroom", WAIT, async || {
        remote_store.list_messages(inbox).await.unwrap().len() == 1
    })
    .await;
    let text =
        String::from_utf8(remote_store.read_message(inbox, 1).await.unwrap().unwrap()).unwrap();
    let ours = results_of(&text, "mx.remote.test");
    assert_eq!(ours.len(), 1, "{text}");
    let ar = &ours[0];
    assert!(ar.contains("spf=pass"), "{ar}");
    assert_eq!(ar.matches("dkim=pass").count(), 2, "{ar}");
    assert!(ar.contains("dmarc=pass header.from=example.test"), "{ar}");
    // Oversigned: From, Subject and To listed once more than present.
    let sig = text
        .split("DKIM-Signature:")
        .nth(1)
        .unwrap()
        .replace("\r\n\t", "")
        .replace(' ', "");
    let h = sig
        .split("h=")
        .nth(1)
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_ascii_lowercase();
    let names: Vec<&str> = h.split(':').collect();
    for (name, times) in [
        ("from", 2),
        ("subject", 2),
        ("to", 2),
        ("cc", 2),
        ("reply-to", 2),
    ] {
        assert_eq!(
            names.iter().filter(|n| **n == name).count(),
            times,
            "{name} in {h}"
        );
    }
    assert!(sig.contains("c=relaxed/relaxed"), "{sig}");
    assert!(sig.contains("x="), "{sig}");
    assert!(!sig.contains(";l="), "{sig}");
    wait_for("the sender's queue to empty", WAIT, async || {
        sender_store.queue_size().await.unwrap() == 0
    })
    .await;
    sender.stack.stop(Duration::from_secs(5)).await;
    remote.stack.stop(Duration::from_secs(5)).await;
}

/// Parses the zone-file lines `mailroom dkim record` prints into records of
/// the `test.` zone: `name. IN TXT "part" "part"`.
fn zone_records(printed: &str) -> Vec<(String, DnsRecord)> {
    printed
        .lines()
        .filter(|l| l.contains(" IN TXT "))
        .map(|l| {
            let (name, strings) = l.split_once(" IN TXT ").unwrap();
            let value: String = strings
                .split('"')
                .enumerate()
                .filter(|(i, _)| i % 2 == 1)
                .map(|(_, s)| s)
                .collect();
            let label = name.strip_suffix(".test.").unwrap().to_string();
            (label, txt(&value))
        })
        .collect()
}

/// Keys generated with the CLI sign what the MSA queues for another
/// domain, and the records the CLI prints make it pass SPF, DKIM and DMARC
/// at a receiver; rotation and removal through the CLI; no private key is
/// ever printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dkim_keys_from_the_cli_sign_submitted_mail() {
    let r = start_with(Backend::Sqlite, None, |_| {}).await.unwrap();
    let store = with_accounts(&r, &["alice@example.test"]).await;
    let dir = r.data_dir.path().to_str().unwrap().to_string();
    let admin = r.admin_url.clone();
    let run = async |args: &[&str]| {
        let mut full = vec!["--data-dir", dir.as_str(), "--admin-url", admin.as_str()];
        full.extend_from_slice(args);
        mailroom_tests::cli(&full, "").await
    };

    let generated = run(&["dkim", "generate", "example.test"]).await.unwrap();
    assert!(
        generated.contains("generated rsa-sha256 key "),
        "{generated}"
    );
    assert!(generated.contains("a-rsa for example.test"), "{generated}");
    assert!(
        generated.contains("generated ed25519-sha256 key "),
        "{generated}"
    );
    let printed = run(&["dkim", "record", "example.test"]).await.unwrap();
    assert!(
        printed.contains("example.test. IN TXT \"v=spf1 mx -all\""),
        "{printed}"
    );
    assert!(
        printed.contains(
            "_dmarc.example.test. IN TXT \"v=DMARC1; p=quarantine; rua=mailto:postmaster@example.test\""
        ),
        "{printed}"
    );
    assert!(
        printed.contains("a-rsa._domainkey.example.test. IN TXT \"v=DKIM1; k=rsa; p=MIIB"),
        "{printed}"
    );
    assert!(
        printed.contains("a-ed._domainkey.example.test. IN TXT \"v=DKIM1; k=ed25519; p="),
        "{printed}"
    );
    let list = run(&["dkim", "list"]).await.unwrap();
    assert_eq!(list.lines().count(), 2, "{list}");
    assert!(list.lines().all(|l| l.ends_with("\tsigning")), "{list}");
    for text in [&generated, &printed, &list] {
        assert!(!text.contains("PRIVATE"), "{text}");
    }

    // A submission to another domain is signed as it is queued.
    let (code, text) = submit(
        &r,
        "carol@remote.test",
        b"From: alice@example.test\r\nTo: carol@remote.test\r\nSubject: cli keys\r\n\r\nbody\r\n",
    )
    .await;
    assert_eq!(code, 250, "{text}");
    let queue_id: i64 = text.rsplit(' ').next().unwrap().parse().unwrap();
    let (_, queued) = store.queued_message(queue_id).await.unwrap().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&queued)
            .matches("DKIM-Signature:")
            .count(),
        2
    );

    // A receiver that finds the printed records verifies it.
    let mut records = zone_records(&printed);
    records.push((
        "example".into(),
        DnsRecord::Mx(10, "mx.example.test".into()),
    ));
    records.push((
        "mx.example".into(),
        DnsRecord::A("127.0.0.1".parse().unwrap()),
    ));
    let dns = start_dns(records).await;
    let dns_addr = dns.addr.to_string();
    let checked = run(&["dkim", "check", "example.test", "--dns", &dns_addr])
        .await
        .unwrap();
    assert_eq!(checked.matches("): ok").count(), 4, "{checked}");
    let (verdict, ar) = check_directly(
        dns.addr,
        Duration::from_secs(5),
        "mx.remote.test",
        ("127.0.0.1", "mx.example.test", "alice@example.test"),
        &queued,
    )
    .await;
    assert_eq!(verdict.action, mailroom_sender_auth::Action::Accept, "{ar}");
    assert!(ar.contains("spf=pass"), "{ar}");
    assert_eq!(ar.matches("dkim=pass").count(), 2, "{ar}");
    assert!(ar.contains("dmarc=pass"), "{ar}");

    // Rotation: the new pair signs, the old one stays listed, retired.
    let rotated = run(&["dkim", "generate", "example.test", "--rotate"])
        .await
        .unwrap();
    assert!(rotated.contains("b-rsa for example.test"), "{rotated}");
    // The new keys are not published yet: check says so.
    let unpublished = run(&["dkim", "check", "example.test", "--dns", &dns_addr])
        .await
        .unwrap_err();
    assert!(
        unpublished.contains("2 record(s) of example.test are not published"),
        "{unpublished}"
    );
    let list = run(&["dkim", "list", "example.test"]).await.unwrap();
    assert_eq!(list.matches("\tretired").count(), 2, "{list}");
    assert_eq!(list.matches("\tsigning").count(), 2, "{list}");
    let old_rsa = list
        .lines()
        .find(|l| l.contains("a-rsa"))
        .unwrap()
        .split('\t')
        .nth(1)
        .unwrap()
        .to_string();
    run(&["dkim", "remove", "example.test", &old_rsa])
        .await
        .unwrap();
    let list = run(&["dkim", "list", "example.test"]).await.unwrap();
    assert_eq!(list.lines().count(), 3, "{list}");
    assert!(
        run(&["dkim", "remove", "example.test", &old_rsa])
            .await
            .is_err()
    );
    assert!(run(&["dkim", "generate", "nowhere.test"]).await.is_err());
    r.stack.stop(Duration::from_secs(5)).await;
}

/// Hostile input gives the RFC's answer quickly, never a crash or a stuck
/// session: SPF loops through `include` and `redirect`, too many
/// DNS-querying terms (RFC 7208 §4.6.4: 10 pass, 11 are a permerror), too
/// many void lookups (2 pass, 3 are a permerror), malformed and absurd DKIM
/// signatures and keys, and many signatures (at most 5 are checked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_records_and_signatures_give_rfc_results_quickly() {
    let includes = |n: u32, last: &str| -> String {
        let mut terms: String = (1..n).map(|i| format!("include:i{i}.test ")).collect();
        terms.push_str(&format!("include:{last}.test "));
        format!("v=spf1 {terms}-all")
    };
    let mut records: Vec<(String, DnsRecord)> = vec![
        ("loop".into(), txt("v=spf1 include:loop.test -all")),
        (
            "ping".into(),
            txt("v=spf1 ip4:192.0.2.1 include:pong.test -all"),
        ),
        (
            "pong".into(),
            txt("v=spf1 ip4:192.0.2.2 include:ping.test -all"),
        ),
        (
            "rloop".into(),
            txt("v=spf1 ip4:192.0.2.1 redirect=rloop2.test"),
        ),
        ("rloop2".into(), txt("v=spf1 redirect=rloop.test")),
        // Ten DNS-querying terms, the tenth passing; eleven.
        ("ten".into(), txt(&includes(10, "ok"))),
        ("many".into(), txt(&includes(11, "i11"))),
        ("ok".into(), txt("v=spf1 ip4:127.0.0.1 -all")),
        // Two void lookups, then a match; three.
        (
            "void2".into(),
            txt("v=spf1 a:v1.test mx:v2.test ip4:127.0.0.1 -all"),
        ),
        (
            "void".into(),
            txt("v=spf1 a:v1.test a:v2.test exists:v3.test ip4:127.0.0.1 -all"),
        ),
        ("bigkey".into(), txt("v=spf1 ip4:127.0.0.1 -all")),
        (
            "s._domainkey.bigkey".into(),
            txt(&format!("v=DKIM1; k=rsa; p={}", "A".repeat(6000))),
        ),
    ];
    for i in 1..=11 {
        records.push((format!("i{i}"), txt("v=spf1 ?all")));
    }
    let dns = start_dns(records).await;
    let (r, store) = receiver(Backend::Sqlite, &dns).await.unwrap();
    let inbox = mailbox_id(&store, "alice@example.test", "INBOX").await;
    let started = std::time::Instant::now();

    for (domain, spf) in [
        ("ten", "pass"),
        ("void2", "pass"),
        ("loop", "permerror"),
        ("ping", "permerror"),
        ("rloop", "permerror"),
        ("many", "permerror"),
        ("void", "permerror"),
    ] {
        let from = format!("x@{domain}.test");
        let (code, text) = send(&r, &from, &message(&from, domain)).await;
        assert_eq!(code, 250, "{domain}: {text}");
        let text = delivered(&store, inbox, domain).await;
        let ar = &results_of(&text, "mx.example.test")[0];
        assert!(
            ar.contains(&format!("spf={spf} ")) && ar.contains(&format!("smtp.mailfrom={from}")),
            "{domain}: {ar}"
        );
        assert!(
            text.contains(&format!("Received-SPF: {spf} ")),
            "{domain}: {text}"
        );
    }

    // Malformed tags, a huge h= list, an absurd key, and fifty signatures.
    let mut hostile = String::new();
    hostile.push_str("DKIM-Signature: v=1; a=rsa-sha256; d=bigkey.test; s=s; bh=!!; b=%%\r\n");
    hostile.push_str("DKIM-Signature: v=9; a=rot13; d=; s=\r\n");
    hostile.push_str(&format!(
        "DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=bigkey.test; s=s;\r\n\th={};\r\n\tbh=AAAA; b=AAAA\r\n",
        vec!["from"; 5000].join(":")
    ));
    for i in 0..50 {
        hostile.push_str(&format!(
            "DKIM-Signature: v=1; a=ed25519-sha256; c=relaxed/relaxed; d=bigkey.test; s=s{i};\r\n\th=from; bh=AAAA; b=AAAA\r\n"
        ));
    }
    let body = [hostile.as_bytes(), &message("x@bigkey.test", "hostile")].concat();
    let (code, text) = send(&r, "x@bigkey.test", &body).await;
    assert_eq!(code, 250, "{text}");
    let text = delivered(&store, inbox, "hostile").await;
    let ar = &results_of(&text, "mx.example.test")[0];
    assert!(!ar.contains("dkim=pass"), "{ar}");
    assert!(ar.contains("spf=pass"), "{ar}");
    // Five checked and the malformed ones reported: not fifty-odd results.
    assert!(ar.matches("dkim=").count() <= 8, "{ar}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    r.stack.stop(Duration::from_secs(5)).await;
}

/// `include:` and `redirect=` targets written as absolute names (a
/// trailing dot) are the `%{d}` of the records they lead to without the
/// dot (RFC 7208 §7.3), so macros built on `%{d}` still name something.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spf_targets_with_a_trailing_dot_expand_without_it() {
    let dns = start_dns(vec![
        ("inc".into(), txt("v=spf1 include:listed.test. -all")),
        ("red".into(), txt("v=spf1 redirect=listed.test.")),
        (
            "listed".into(),
            txt("v=spf1 exists:%{d}.%{i}.check.test -all"),
        ),
        (
            "listed.test.192.0.2.1.check".into(),
            DnsRecord::A("127.0.0.2".parse().unwrap()),
        ),
    ])
    .await;
    for (from, spf) in [
        ("x@inc.test", "pass"),
        ("x@red.test", "pass"),
        ("x@listed.test", "pass"),
    ] {
        let (_, ar) = check_directly(
            dns.addr,
            Duration::from_secs(5),
            "mx.example.test",
            ("192.0.2.1", "mx.sender.test", from),
            &message(from, "dots"),
        )
        .await;
        assert!(
            ar.contains(&format!("spf={spf} ")) && ar.contains(&format!("smtp.mailfrom={from}")),
            "{from}: {ar}"
        );
    }
    // Another client is not listed: the records fail it.
    let (_, ar) = check_directly(
        dns.addr,
        Duration::from_secs(5),
        "mx.example.test",
        ("192.0.2.9", "mx.sender.test", "x@red.test"),
        &message("x@red.test", "dots"),
    )
    .await;
    assert!(ar.contains("spf=fail "), "{ar}");
}

/// A sender domain in U-labels (SMTPUTF8) is checked by its A-labels
/// (RFC 8616 §4), and `%{d}`/`%{o}` expand to them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_internationalized_sender_domain_is_checked_by_its_a_labels() {
    let dns = start_dns(vec![
        (
            "xn--bcher-kva".into(),
            txt("v=spf1 exists:%{o}.%{i}.check.test -all"),
        ),
        (
            "xn--bcher-kva.test.192.0.2.1.check".into(),
            DnsRecord::A("127.0.0.2".parse().unwrap()),
        ),
    ])
    .await;
    for (ip, spf) in [("192.0.2.1", "pass"), ("192.0.2.9", "fail")] {
        let (_, ar) = check_directly(
            dns.addr,
            Duration::from_secs(5),
            "mx.example.test",
            (ip, "mx.sender.test", "x@b\u{fc}cher.test"),
            &message("x@xn--bcher-kva.test", "idn"),
        )
        .await;
        assert!(ar.contains(&format!("spf={spf} ")), "{ip}: {ar}");
    }
}

/// A DNS server that never answers: SPF gives `temperror` (RFC 7208
/// §4.4, §5) within the resolver's per-query timeout, not a stuck session,
/// and the message is deferred with a 4xx the sender retries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_dns_server_gives_temperror_quickly() {
    // Bound, never read: queries vanish.
    let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let started = std::time::Instant::now();
    let (verdict, ar) = check_directly(
        silent.local_addr().unwrap(),
        Duration::from_millis(300),
        "mx.example.test",
        ("192.0.2.1", "mx.sender.test", "bob@sender.test"),
        &message("bob@sender.test", "silent"),
    )
    .await;
    let elapsed = started.elapsed();
    assert!(
        ar.contains("spf=temperror") && ar.contains("smtp.mailfrom=bob@sender.test"),
        "{ar}"
    );
    assert!(ar.contains("Received-SPF: temperror"), "{ar}");
    assert!(
        matches!(
            verdict.action,
            mailroom_sender_auth::Action::TempFail(451, _, _)
        ),
        "{:?}",
        verdict.action
    );
    // A handful of lookups (HELO, MAIL FROM, DMARC), each given the timeout
    // a few times: seconds, far below the 30-second deadline of the checks.
    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
}

/// RFC 8463 Appendix A: the Ed25519 and RSA signatures of the RFC's example
/// message verify against its example keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc8463_appendix_a_vectors_verify() {
    let dns = TestDns::start(
        "example.com",
        &[
            (
                "brisbane._domainkey.football",
                txt("v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="),
            ),
            (
                "test._domainkey.football",
                txt(concat!(
                    "v=DKIM1; k=rsa; p=MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDkHlOQoBTzWRiGs5V6Np",
                    "P3idY6Wk08a5qhdR6wy5bdOKb2jLQiY/J16JYi0Qvx/byYzCNb3W91y3FutACDfzwQ/BC/e/8uBsCR",
                    "+yz1Lxj+PL6lHvqMKrM3rG4hstT5QjvHO9PzoxZyVYLzBfO2EeC3Ip3G+2kryOTIKT+l/K4w3QIDAQAB"
                )),
            ),
        ],
    )
    .await;
    let message = "DKIM-Signature: v=1; a=ed25519-sha256; c=relaxed/relaxed;
 d=football.example.com; i=@football.example.com;
 q=dns/txt; s=brisbane; t=1528637909; h=from : to :
 subject : date : message-id : from : subject : date;
 bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=;
 b=/gCrinpcQOoIfuHNQIbq4pgh9kyIK3AQUdt9OdqQehSwhEIug4D11Bus
 Fa3bT3FY5OsU7ZbnKELq+eXdp1Q1Dw==
DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed;
 d=football.example.com; i=@football.example.com;
 q=dns/txt; s=test; t=1528637909; h=from : to : subject :
 date : message-id : from : subject : date;
 bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=;
 b=F45dVWDfMbQDGHJFlXUNB2HKfbCeLRyhDXgFpEL8GwpsRe0IeIixNTe3
 DhCVlUrSjV4BwcVcOF6+FF3Zo9Rpo1tFOeS9mPYQTnGdaSGsgeefOsk2Jz
 dA+L10TeYt9BgDfQNZtKdN1WO//KgIqXP7OdEFE4LjFYNcUxZQ4FADY+8=
From: Joe SixPack <joe@football.example.com>
To: Suzie Q <suzie@shopping.example.net>
Subject: Is dinner ready?
Date: Fri, 11 Jul 2003 21:00:37 -0700 (PDT)
Message-ID: <20030712040037.46341.5F8J@football.example.com>

Hi.

We lost the game.  Are you hungry yet?

Joe.
"
    .replace('\n', "\r\n");
    let (_, ar) = check_directly(
        dns.addr,
        Duration::from_secs(5),
        "mx.shopping.example.net",
        (
            "192.0.2.1",
            "mx.football.example.com",
            "joe@football.example.com",
        ),
        message.as_bytes(),
    )
    .await;
    assert_eq!(ar.matches("dkim=pass").count(), 2, "{ar}");
    assert!(
        ar.contains("header.s=brisbane") && ar.contains("header.s=test"),
        "{ar}"
    );
    assert!(ar.contains("dmarc=none"), "{ar}");
}

/// `spf_fail_without_dmarc = "reject"` refuses SPF failures of domains
/// without DMARC (550 5.7.23); a trusted relay's mail is not checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spf_reject_policy_and_trusted_relays() {
    let dns = start_dns(vec![
        // The explanation (RFC 7208 §6.2), macros expanded, in the reply.
        ("nodmarc".into(), txt("v=spf1 -all exp=why.%{d}")),
        (
            "why.nodmarc".into(),
            txt("%{i} is not one of %{d}'s senders, %{l}"),
        ),
        ("spoofed".into(), txt("v=spf1 ip4:192.0.2.1 -all")),
        ("_dmarc.spoofed".into(), txt("v=DMARC1; p=reject")),
    ])
    .await;
    let addr = dns.addr;
    let strict = start_with(Backend::Sqlite, None, move |c| {
        c.mta.dns_servers = vec![addr];
        c.sender_auth.check_inbound = true;
        c.sender_auth.spf_fail_without_dmarc = mailroom_config::FailureHandling::Reject;
    })
    .await
    .unwrap();
    with_accounts(&strict, &["alice@example.test"]).await;
    let (code, text) = send(
        &strict,
        "x@nodmarc.test",
        &message("x@nodmarc.test", "strict"),
    )
    .await;
    assert_eq!(code, 550, "{text}");
    assert!(text.starts_with("5.7.23 "), "{text}");
    assert!(
        text.ends_with(
            "SPF check of nodmarc.test failed: 127.0.0.1 is not one of nodmarc.test's senders, x"
        ),
        "{text}"
    );
    strict.stack.stop(Duration::from_secs(5)).await;

    let trusting = start_with(Backend::Sqlite, None, move |c| {
        c.mta.dns_servers = vec![addr];
        c.sender_auth.check_inbound = true;
        c.sender_auth.trusted_relays = vec!["127.0.0.1".parse().unwrap()];
    })
    .await
    .unwrap();
    let store = with_accounts(&trusting, &["alice@example.test"]).await;
    let inbox = inbox_id(&store, "alice@example.test").await;
    let (code, text) = send(
        &trusting,
        "ceo@spoofed.test",
        &message("ceo@spoofed.test", "relayed"),
    )
    .await;
    assert_eq!(code, 250, "{text}");
    let text = delivered(&store, inbox, "relayed").await;
    assert!(results_of(&text, "mx.example.test").is_empty(), "{text}");
    assert!(!text.contains("Received-SPF"), "{text}");
    trusting.stack.stop(Duration::from_secs(5)).await;
}

/// DMARC alignment and policy selection (mail-auth's DMARCbis): relaxed and
/// strict SPF alignment, the subdomain policy `sp=` of an existing
/// subdomain, `np=` for a non-existent one, multiple or missing `From:`
/// (exempt, RFC 7489 §6.6.1: SPF alone decides) and two DMARC records (no
/// policy applies, RFC 7489 §6.6.3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dmarc_alignment_and_policy_selection() {
    let dns = start_dns(vec![
        ("mail.relaxed".into(), txt("v=spf1 ip4:127.0.0.1 -all")),
        ("_dmarc.relaxed".into(), txt("v=DMARC1; p=reject")),
        ("mail.strict".into(), txt("v=spf1 ip4:127.0.0.1 -all")),
        ("_dmarc.strict".into(), txt("v=DMARC1; p=reject; aspf=s")),
        (
            "_dmarc.parent".into(),
            txt("v=DMARC1; p=none; sp=reject; np=quarantine"),
        ),
        ("parent".into(), DnsRecord::A("192.0.2.9".parse().unwrap())),
        (
            "sub.parent".into(),
            DnsRecord::A("192.0.2.9".parse().unwrap()),
        ),
        ("_dmarc.multi".into(), txt("v=DMARC1; p=reject")),
        ("_dmarc.multi".into(), txt("v=DMARC1; p=none")),
    ])
    .await;
    let (r, store) = receiver(Backend::Sqlite, &dns).await.unwrap();
    let inbox = mailbox_id(&store, "alice@example.test", "INBOX").await;
    let junk = mailbox_id(&store, "alice@example.test", "Junk").await;

    // Relaxed (the default): mail.relaxed.test aligns with relaxed.test.
    let (code, text) = send(
        &r,
        "b@mail.relaxed.test",
        &message("x@relaxed.test", "relaxed"),
    )
    .await;
    assert_eq!(code, 250, "{text}");
    let text = delivered(&store, inbox, "relaxed").await;
    assert!(
        results_of(&text, "mx.example.test")[0].contains("dmarc=pass"),
        "{text}"
    );
    // Strict: it does not.
    let (code, text) = send(
        &r,
        "b@mail.strict.test",
        &message("x@strict.test", "strict"),
    )
    .await;
    assert_eq!((code, &text[..5]), (550, "5.7.1"), "{text}");
    // An existing subdomain gets sp= (reject), a non-existent one np= (quarantine).
    let (code, text) = send(
        &r,
        "x@sub.parent.test",
        &message("x@sub.parent.test", "sub"),
    )
    .await;
    assert_eq!(code, 550, "{text}");
    let (code, text) = send(
        &r,
        "x@ghost.parent.test",
        &message("x@ghost.parent.test", "ghost"),
    )
    .await;
    assert_eq!(code, 250, "{text}");
    delivered(&store, junk, "ghost").await;
    // The organisational domain itself: p=none, delivered.
    let (code, text) = send(&r, "x@parent.test", &message("x@parent.test", "org")).await;
    assert_eq!(code, 250, "{text}");
    delivered(&store, inbox, "org").await;
    // Authors of two domains: exempt from DMARC.
    let two = message("x@relaxed.test, y@parent.test", "two-froms");
    let (code, text) = send(&r, "x@nowhere.test", &two).await;
    assert_eq!(code, 250, "{text}");
    let text = delivered(&store, inbox, "two-froms").await;
    assert!(
        results_of(&text, "mx.example.test")[0].contains("dmarc=none"),
        "{text}"
    );
    // No From at all: nothing to align with.
    let (code, text) = send(
        &r,
        "x@nowhere.test",
        b"To: alice@example.test\r\nSubject: no-from\r\n\r\nhi\r\n",
    )
    .await;
    assert_eq!(code, 250, "{text}");
    // Two DMARC records: no policy applies.
    let (code, text) = send(&r, "x@multi.test", &message("x@multi.test", "multi")).await;
    assert_eq!(code, 250, "{text}");
    r.stack.stop(Duration::from_secs(5)).await;
}

/// Sends one message on port 25 to several recipients; the final reply.
async fn send_to(r: &Running, mail_from: &str, to: &[&str], body: &[u8]) -> (u16, String) {
    let (mut c, _) = SmtpClient::connect(r.stack.addr("smtp").unwrap()).await;
    c.cmd("EHLO client.test").await;
    assert_eq!(c.cmd(&format!("MAIL FROM:<{mail_from}>")).await.0, 250);
    for rcpt in to {
        assert_eq!(c.cmd(&format!("RCPT TO:<{rcpt}>")).await.0, 250, "{rcpt}");
    }
    assert_eq!(c.cmd("DATA").await.0, 354);
    c.send(body).await;
    c.send(b".\r\n").await;
    let reply = c.reply().await;
    c.cmd("QUIT").await;
    reply
}

/// `[sender_auth.domains."…"]` (read from TOML as an operator writes it):
/// each recipient domain gets its own policy over the global one, and a
/// message to several domains gets the stricter of each setting; it goes
/// unchecked only when every recipient domain trusts its client.
async fn per_domain_policies(backend: Backend) {
    let dns = start_dns(vec![
        ("nodmarc".into(), txt("v=spf1 -all")),
        ("spoofed".into(), txt("v=spf1 ip4:192.0.2.1 -all")),
        ("_dmarc.spoofed".into(), txt("v=DMARC1; p=reject")),
        ("quar".into(), txt("v=spf1 ip4:192.0.2.1 -all")),
        ("_dmarc.quar".into(), txt("v=DMARC1; p=quarantine")),
    ])
    .await;
    let addr = dns.addr;
    let policies = mailroom_config::Config::from_sources(
        Some((
            std::path::Path::new("policies.toml"),
            r#"
[sender_auth.domains."strict.test"]
spf_fail_without_dmarc = "reject"
dmarc_quarantine = "reject"
[sender_auth.domains."Lenient.Test"]
dmarc_reject = "mark"
[sender_auth.domains."relayed.test"]
trusted_relays = ["127.0.0.1"]
"#,
        )),
        Vec::new(),
    )
    .unwrap()
    .sender_auth
    .domains;
    let Some(r) = start_with(backend, None, move |c| {
        c.mta.dns_servers = vec![addr];
        c.sender_auth.check_inbound = true;
        c.sender_auth.domains = policies;
    })
    .await
    else {
        return;
    };
    let store = with_accounts(&r, &["alice@example.test"]).await;
    for a in ["bob@strict.test", "carol@lenient.test", "dave@relayed.test"] {
        serve_account(&store, a).await;
    }
    let alice = inbox_id(&store, "alice@example.test").await;
    let carol = inbox_id(&store, "carol@lenient.test").await;
    let dave = inbox_id(&store, "dave@relayed.test").await;
    let bob_junk = mailbox_id(&store, "bob@strict.test", "Junk").await;
    let alice_junk = mailbox_id(&store, "alice@example.test", "Junk").await;

    // SPF fail without DMARC: the global default marks, strict.test refuses,
    // and a message to both is refused (the stricter).
    let nodmarc = |s: &str| message("x@nodmarc.test", s);
    let (code, text) = send_to(&r, "x@nodmarc.test", &["alice@example.test"], &nodmarc("g")).await;
    assert_eq!(code, 250, "{text}");
    let text = delivered(&store, alice, "g").await;
    assert!(
        results_of(&text, "mx.example.test")[0].contains("spf=fail"),
        "{text}"
    );
    let (code, text) = send_to(&r, "x@nodmarc.test", &["bob@strict.test"], &nodmarc("s")).await;
    assert_eq!((code, &text[..7]), (550, "5.7.23 "), "{text}");
    let both = ["alice@example.test", "bob@strict.test"];
    let (code, text) = send_to(&r, "x@nodmarc.test", &both, &nodmarc("gs")).await;
    assert_eq!((code, &text[..7]), (550, "5.7.23 "), "{text}");

    // p=quarantine: Junk by default, refused for strict.test.
    let quar = |s: &str| message("x@quar.test", s);
    let (code, text) = send_to(&r, "x@quar.test", &["alice@example.test"], &quar("q")).await;
    assert_eq!(code, 250, "{text}");
    delivered(&store, alice_junk, "q").await;
    let (code, text) = send_to(&r, "x@quar.test", &["bob@strict.test"], &quar("qs")).await;
    assert_eq!((code, &text[..6]), (550, "5.7.1 "), "{text}");
    assert!(text.contains("p=quarantine"), "{text}");

    // p=reject: lenient.test only marks (its name was written in capitals),
    // into the inbox; with a recipient of the global policy, refused.
    let spoof = |s: &str| message("ceo@spoofed.test", s);
    let (code, text) = send_to(&r, "ceo@spoofed.test", &["carol@lenient.test"], &spoof("l")).await;
    assert_eq!(code, 250, "{text}");
    let text = delivered(&store, carol, "l").await;
    let ar = &results_of(&text, "mx.example.test")[0];
    assert!(
        ar.contains("dmarc=fail") && ar.contains("policy.dmarc=reject"),
        "{ar}"
    );
    let lg = ["carol@lenient.test", "alice@example.test"];
    let (code, text) = send_to(&r, "ceo@spoofed.test", &lg, &spoof("lg")).await;
    assert_eq!((code, &text[..6]), (550, "5.7.1 "), "{text}");

    // relayed.test trusts this client: unchecked; with another domain, the
    // other domain's checks apply to the message.
    let (code, text) = send_to(&r, "ceo@spoofed.test", &["dave@relayed.test"], &spoof("t")).await;
    assert_eq!(code, 250, "{text}");
    let text = delivered(&store, dave, "t").await;
    assert!(results_of(&text, "mx.example.test").is_empty(), "{text}");
    assert!(!text.contains("Received-SPF"), "{text}");
    let ts = ["dave@relayed.test", "bob@strict.test"];
    let (code, text) = send_to(&r, "x@quar.test", &ts, &quar("ts")).await;
    assert_eq!((code, &text[..6]), (550, "5.7.1 "), "{text}");
    // Nothing refused reached a mailbox.
    assert!(store.list_messages(bob_junk).await.unwrap().is_empty());
    assert_eq!(store.list_messages(alice).await.unwrap().len(), 1);
    r.stack.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_domain_policies_on_sqlite() {
    per_domain_policies(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_domain_policies_on_postgres() {
    per_domain_policies(Backend::Postgres).await;
}

/// DER: a tag and its content with the definite length (X.690 §8.1.3).
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend_from_slice(&bytes);
    }
    out.extend_from_slice(content);
    out
}

/// A well-formed RSA SubjectPublicKeyInfo (RFC 3279 §2.3.1) whose modulus
/// has `bits` bits, exponent 65537: a key of any size, without the cost of
/// generating one.
fn rsa_public_key_of_size(bits: usize) -> Vec<u8> {
    let mut modulus = vec![0u8; bits / 8 + 1];
    modulus[1] = 0x80;
    for (i, b) in modulus.iter_mut().enumerate().skip(2) {
        *b = (i as u8).wrapping_mul(151) | 1;
    }
    let rsa_key = der(
        0x30,
        &[der(0x02, &modulus), der(0x02, &[0x01, 0x00, 0x01])].concat(),
    );
    // rsaEncryption (1.2.840.113549.1.1.1) with NULL parameters.
    let algorithm = der(
        0x30,
        &[
            der(
                0x06,
                &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01],
            ),
            vec![0x05, 0x00],
        ]
        .concat(),
    );
    let bit_string = der(0x03, &[&[0u8][..], &rsa_key].concat());
    der(0x30, &[algorithm, bit_string].concat())
}

/// A 512-bit RSA key (worthless by design, made with `openssl genpkey
/// -algorithm RSA -pkeyopt rsa_keygen_bits:512`), and its public key as a
/// DKIM record's `p=` (SubjectPublicKeyInfo, base64).
const RSA_512_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIIBVAIBADANBgkqhkiG9w0BAQEFAASCAT4wggE6AgEAAkEA5F1gUks5iJr2ld4m
JrV4/NRNEdowS/AIG6mZmE8IoYErWdnzjz6H7tS4zxoyiYAm7rr8LPmvoYiTGZzX
bCXTwwIDAQABAkAVqq5a4HxC88D1kzA3d/xUsKfnS7ZNXibGyR6jjswY1oSq7xfU
nmgV6nIudIG0QzeTfoyRgGpG8VqcMHBQ72KxAiEA+BmpXIPo6b/YHObGBRyaNkcc
iXoCmIUf4jYajdXGgxcCIQDrothJ0dmqMTAmnbLyMKsnoTDuX8J7rS4/MZuguwbQ
NQIgG0h/JmxfJa1yL6N1LUS69LMXQUsIlAs3uWGnw+c5YFsCIDKkZAGxhStLuQKD
oALnLNGulfqVQBIejTLtsXng2D0FAiEA5vrePNkeSMbwML7qhWBGnxXleHnLChzN
+Ld6Jv3ifdc=
-----END PRIVATE KEY-----
";
const RSA_512_PUBLIC: &str = "MFwwDQYJKoZIhvcNAQEBBQADSwAwSAJBAORdYFJLOYia9pXeJia1ePzUTRHaMEvwCBupmZhPCKGBK1nZ848+h+7UuM8aMomAJu66/Cz5r6GIkxmc12wl08MCAwEAAQ==";

/// A file in `dir` holding `text`; its path.
fn file_with(dir: &std::path::Path, name: &str, text: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

/// Bad keys and many signatures, on the checker itself: a valid signature
/// by a 512-bit RSA key (RFC 8301 §3.2: verifiers must not accept keys
/// under 1024 bits) does not pass, while the same signature by a 2048-bit
/// key does; a well-formed 16384-bit key and a truncated Ed25519 key give
/// no pass, quickly; of seven valid signatures, only
/// `max_dkim_signatures` (5 by default) are checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weak_and_absurd_keys_never_pass_and_at_most_five_signatures_count() {
    use mailroom_tests::{base64_encode, run_tool};
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path();
    let small_pem = file_with(tmp, "small.pem", RSA_512_PEM.as_bytes());
    let small_public = RSA_512_PUBLIC;
    let good = keys::generate_rsa().unwrap();
    let good_pem = file_with(tmp, "good.pem", good.private_pem().as_bytes());
    let eds: Vec<GeneratedKey> = (0..7).map(|_| keys::generate_ed25519().unwrap()).collect();

    let mut records = vec![
        (
            "small._domainkey.keys".to_string(),
            txt(&format!("v=DKIM1; k=rsa; p={small_public}")),
        ),
        (
            "good._domainkey.keys".to_string(),
            txt(&keys::dkim_record(good.algorithm, &good.public_base64())),
        ),
        (
            "huge._domainkey.keys".to_string(),
            txt(&format!(
                "v=DKIM1; k=rsa; p={}",
                base64_encode(&rsa_public_key_of_size(16384))
            )),
        ),
        (
            "short._domainkey.keys".to_string(),
            txt(&format!(
                "v=DKIM1; k=ed25519; p={}",
                base64_encode(&[7u8; 31])
            )),
        ),
    ];
    for (i, k) in eds.iter().enumerate() {
        records.push((
            format!("s{i}._domainkey.keys"),
            txt(&keys::dkim_record(k.algorithm, &k.public_base64())),
        ));
    }
    let dns = start_dns(records).await;
    let checker = |max: usize| {
        mailroom_sender_auth::Checker::new(
            mailroom_sender_auth::dns::resolver(&[dns.addr], Duration::from_secs(5)).unwrap(),
            "mx.example.test",
            mailroom_sender_auth::InboundPolicy {
                max_dkim_signatures: max,
                ..Default::default()
            },
        )
    };
    let results = async |max: usize, signed: &[u8]| {
        let started = std::time::Instant::now();
        let verdict = checker(max)
            .check(
                mailroom_sender_auth::inbound::Envelope {
                    ip: "192.0.2.1".parse().unwrap(),
                    helo: "mx.keys.test",
                    mail_from: "x@keys.test",
                },
                signed,
                Default::default(),
            )
            .await;
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        verdict.headers.replace("\r\n\t", " ")
    };
    let body = message("x@keys.test", "keys");
    let msg_file = file_with(tmp, "message.eml", &body);
    let dkimpy = |selector: &str, key: &str| {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/interop/dkim_cross.py");
        let field = run_tool(
            "python3 dkim_cross.py (dkimpy)",
            std::process::Command::new("python3").args([
                script,
                "sign",
                "rsa-sha256",
                selector,
                "keys.test",
                key,
                "relaxed",
                &msg_file,
            ]),
            &[0],
        );
        [field.as_bytes(), &body].concat()
    };

    // The same signer, the same message: only the key size differs.
    let ar = results(5, &dkimpy("good", &good_pem)).await;
    assert!(
        ar.contains("dkim=pass") && ar.contains("header.s=good"),
        "{ar}"
    );
    let ar = results(5, &dkimpy("small", &small_pem)).await;
    assert!(
        ar.contains("dkim=") && !ar.contains("dkim=pass"),
        "512 bits: {ar}"
    );

    // A 16384-bit key (our 2048-bit signature cannot match it) and an
    // Ed25519 key one byte short: no pass, no hang.
    let sign_as = |selector: &str, key: &GeneratedKey| {
        let pem = key.private_pem();
        let header = signing::sign(
            &body,
            &[SigningKey {
                domain: "keys.test",
                selector,
                algorithm: key.algorithm,
                private_key_pem: &pem,
            }],
            Duration::from_secs(3600),
        )
        .unwrap();
        [header.as_bytes(), &body].concat()
    };
    let ar = results(5, &sign_as("huge", &good)).await;
    assert!(
        ar.contains("dkim=") && !ar.contains("dkim=pass"),
        "huge: {ar}"
    );
    let ar = results(5, &sign_as("short", &eds[0])).await;
    assert!(
        ar.contains("dkim=") && !ar.contains("dkim=pass"),
        "short: {ar}"
    );

    // Seven valid signatures: five are checked (or as configured).
    let pems: Vec<String> = eds.iter().map(GeneratedKey::private_pem).collect();
    let selectors: Vec<String> = (0..7).map(|i| format!("s{i}")).collect();
    let signing_keys: Vec<SigningKey<'_>> = (0..7)
        .map(|i| SigningKey {
            domain: "keys.test",
            selector: &selectors[i],
            algorithm: eds[i].algorithm,
            private_key_pem: &pems[i],
        })
        .collect();
    let seven = signing::sign(&body, &signing_keys, Duration::from_secs(3600)).unwrap();
    let seven = [seven.as_bytes(), &body].concat();
    for (max, expected) in [(5, 5), (2, 2), (10, 7)] {
        let ar = results(max, &seven).await;
        assert_eq!(ar.matches("dkim=pass").count(), expected, "max {max}: {ar}");
        assert_eq!(ar.matches("dkim=").count(), expected, "max {max}: {ar}");
    }
}
