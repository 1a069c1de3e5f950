//! The Prometheus endpoint (`telemetry.metrics_listen`): what a scrape
//! shows after real traffic, read with curl. In a test binary of its own:
//! the recorder is per process, and the counts here are exact.

use std::process::Command;
use std::time::Duration;

use mailroom_tests::{
    Backend, SmtpClient, imap_noop_and_failed_login, run_tool, start_with, wait_for, with_accounts,
};

fn scrape(url: &str) -> String {
    run_tool(
        "curl",
        Command::new("curl").args(["-sS", "--max-time", "10", url]),
        &[0],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_shows_sessions_messages_deliveries_and_login_failures() {
    let r = start_with(Backend::Sqlite, None, |c| {
        c.telemetry.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await
    .unwrap();
    let url = format!("http://{}/metrics", r.stack.addr("metrics").unwrap());
    let store = with_accounts(&r, &["bob@example.test"]).await;
    let (mut c, _) = SmtpClient::connect(r.stack.addr("smtp").unwrap()).await;
    c.cmd("EHLO remote.test").await;
    c.cmd("MAIL FROM:<x@remote.test>").await;
    c.cmd("RCPT TO:<bob@example.test>").await;
    assert_eq!(c.cmd("DATA").await.0, 354);
    c.send(b"Subject: counted\r\n\r\nx\r\n.\r\n").await;
    assert_eq!(c.reply().await.0, 250);
    wait_for("the delivery", Duration::from_secs(20), async || {
        store.queue_size().await.unwrap() == 0
    })
    .await;
    // A failed IMAP login, and an IMAP command timed.
    let text = imap_noop_and_failed_login(r.stack.addr("imap").unwrap()).await;
    assert!(text.contains("b NO [AUTHENTICATIONFAILED]"), "{text}");
    let u = url.clone();
    let page = tokio::task::spawn_blocking(move || scrape(&u))
        .await
        .unwrap();
    for want in [
        "mailroom_smtp_messages_total{service=\"inbound\",outcome=\"accepted\"} 1",
        "mailroom_delivery_results_total{kind=\"local\",result=\"delivered\"} 1",
        "mailroom_auth_failures_total 1",
        "mailroom_connections_total{service=\"smtp\"} 1",
        "mailroom_imap_command_duration_seconds_count{command=\"NOOP\"} 1",
        "mailroom_sessions_open{service=\"imap\"}",
    ] {
        assert!(page.contains(want), "no {want:?} in\n{page}");
    }
    // Anything but /metrics is 404.
    let u = url.replace("/metrics", "/other");
    let out = tokio::task::spawn_blocking(move || {
        run_tool(
            "curl",
            Command::new("curl").args(["-s", "-o", "/dev/null", "-w", "%{http_code}", &u]),
            &[0],
        )
    })
    .await
    .unwrap();
    assert_eq!(out.trim(), "404");
    r.stack.stop(Duration::from_secs(5)).await;
}
