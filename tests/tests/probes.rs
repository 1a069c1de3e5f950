//! What an orchestrator and a dashboard rely on, on the listener of
//! `telemetry.metrics_listen`: `/readyz` says "not ready" while the
//! database does not answer and recovers with it, `/livez` never looks at
//! the database; and every metric the Grafana dashboard of
//! `deploy/grafana/` shows is in a real scrape after traffic that touches
//! it. Apart from tests/metrics.rs, whose exact counts this traffic would
//! change (the recorder is per process).

use std::time::Duration;

use mailroom_tests::{
    Backend, SmtpClient, http_get as get, imap_noop_and_failed_login, start_with, wait_for,
    with_accounts,
};
use tokio::io::AsyncWriteExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_database_and_liveness_does_not() {
    let Some(r) = start_with(Backend::Postgres, None, |c| {
        c.telemetry.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await
    else {
        return;
    };
    let base = format!("http://{}", r.stack.addr("metrics").unwrap());
    let (ready, live) = (format!("{base}/readyz"), format!("{base}/livez"));
    assert_eq!(get(&ready).await, (200, "ready\n".into()));
    assert_eq!(get(&live).await.0, 200);

    // The database goes away: not ready, still alive.
    r.db.set_outage(true).await;
    let mut said = (0, String::new());
    wait_for(
        "readiness to say not ready",
        Duration::from_secs(20),
        async || {
            said = get(&ready).await;
            said.0 == 503
        },
    )
    .await;
    assert!(said.1.starts_with("not ready: the database"), "{}", said.1);
    assert_eq!(get(&live).await, (200, "alive\n".into()));

    // It comes back: ready again, without a restart.
    r.db.set_outage(false).await;
    wait_for(
        "readiness to come back",
        Duration::from_secs(20),
        async || get(&ready).await.0 == 200,
    )
    .await;
    r.stack.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_of_the_grafana_dashboard_is_in_a_real_scrape() {
    let dashboard = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/grafana/mailroom.json"
    ))
    .unwrap();
    let doc: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    let mut names = std::collections::BTreeSet::new();
    for panel in doc["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let mut rest = expr;
            while let Some(at) = rest.find("mailroom_") {
                let name: String = rest[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[at + name.len()..];
                names.insert(name);
            }
        }
    }
    assert!(names.len() >= 10, "{names:?}");

    // Traffic that touches every metric: PostgreSQL (for its outage), one
    // connection per IP (for a refused connection).
    let Some(r) = start_with(Backend::Postgres, None, |c| {
        c.telemetry.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
        c.limits.max_connections_per_ip = 1;
    })
    .await
    else {
        return;
    };
    let store = with_accounts(&r, &["bob@example.test"]).await;
    // A message over STARTTLS, delivered.
    let (c, _) = SmtpClient::connect(r.stack.addr("smtp").unwrap()).await;
    let mut c = {
        let mut c = c;
        c.cmd("EHLO remote.test").await;
        c.starttls(&r).await.unwrap()
    };
    c.cmd("EHLO remote.test").await;
    c.cmd("MAIL FROM:<x@remote.test>").await;
    c.cmd("RCPT TO:<bob@example.test>").await;
    assert_eq!(c.cmd("DATA").await.0, 354);
    c.send(b"Subject: counted\r\n\r\nx\r\n.\r\n").await;
    assert_eq!(c.reply().await.0, 250);
    // And one refused: a mail loop (too many Received fields).
    c.cmd("MAIL FROM:<x@remote.test>").await;
    c.cmd("RCPT TO:<bob@example.test>").await;
    assert_eq!(c.cmd("DATA").await.0, 354);
    c.send(
        "Received: from a by b; Thu, 1 Jan 1970 00:00:00 +0000\r\n"
            .repeat(101)
            .as_bytes(),
    )
    .await;
    c.send(b"Subject: looped\r\n\r\nx\r\n.\r\n").await;
    assert_eq!(c.reply().await.0, 554);
    assert_eq!(c.cmd("QUIT").await.0, 221);
    drop(c);
    wait_for("the delivery", Duration::from_secs(20), async || {
        store.queue_size().await.unwrap() == 0
    })
    .await;
    let metrics = format!("http://{}/metrics", r.stack.addr("metrics").unwrap());
    let scrape_has = |what: &'static str| {
        let metrics = metrics.clone();
        async move { get(&metrics).await.1.contains(what) }
    };
    // A failed implicit-TLS handshake (plain text to the TLS port); tried
    // again while the one connection per IP is still taken.
    let submissions = r.stack.addr("submissions").unwrap();
    wait_for(
        "a failed TLS handshake",
        Duration::from_secs(20),
        async || {
            let mut plain = tokio::net::TcpStream::connect(submissions).await.unwrap();
            let _ = plain.write_all(b"EHLO not-tls\r\n").await;
            let mut rest = Vec::new();
            let _ = tokio::time::timeout(
                Duration::from_secs(10),
                tokio::io::AsyncReadExt::read_to_end(&mut plain, &mut rest),
            )
            .await;
            scrape_has("mailroom_tls_handshake_failures_total{service=\"submissions\"}").await
        },
    )
    .await;
    // A second connection while one is open: refused by the per-IP cap.
    let imap = r.stack.addr("imap").unwrap();
    wait_for(
        "a refused connection",
        Duration::from_secs(20),
        async || {
            let held = tokio::net::TcpStream::connect(imap).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
            let mut second = tokio::net::TcpStream::connect(imap).await.unwrap();
            let mut answer = Vec::new();
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                tokio::io::AsyncReadExt::read_to_end(&mut second, &mut answer),
            )
            .await;
            drop((held, second));
            scrape_has("mailroom_connections_refused_total{service=\"imap\"}").await
        },
    )
    .await;
    // IMAP commands and a failed login, once the cap is free again.
    wait_for(
        "the IMAP sessions to end",
        Duration::from_secs(10),
        async || scrape_has("mailroom_sessions_open{service=\"imap\"} 0").await,
    )
    .await;
    imap_noop_and_failed_login(imap).await;
    // A database outage, seen by a readiness probe.
    let base = format!("http://{}", r.stack.addr("metrics").unwrap());
    r.db.set_outage(true).await;
    wait_for("readiness to fail", Duration::from_secs(20), async || {
        get(&format!("{base}/readyz")).await.0 == 503
    })
    .await;
    r.db.set_outage(false).await;

    let (code, page) = get(&format!("{base}/metrics")).await;
    assert_eq!(code, 200);
    for name in &names {
        assert!(
            page.lines()
                .any(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} "))),
            "the dashboard shows {name}, which no scrape has:\n{page}"
        );
    }
    r.stack.stop(Duration::from_secs(5)).await;
}
