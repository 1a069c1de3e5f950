//! Queue administration through the CLI and the Admin API.

use std::time::Duration;

use mailroom_rpc::admin as pb;
use mailroom_store::{QueueEnvelope, QueueRecipient};
use mailroom_tests::{Backend, admin_client, cli, start, with_accounts};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_can_be_listed_shown_retried_and_dropped() {
    let r = start(Backend::Sqlite).await.unwrap();
    let store = with_accounts(&r, &["alice@example.test"]).await;
    let envelope = |sender: &str, rcpt: &str| QueueEnvelope {
        sender: sender.into(),
        recipients: vec![QueueRecipient {
            address: rcpt.into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let remote = store
        .enqueue(
            &envelope("alice@example.test", "carol@remote.test"),
            b"Subject: a\r\n\r\na\r\n",
            3600,
        )
        .await
        .unwrap();
    let bounce = store
        .enqueue(
            &envelope("", "dave@elsewhere.test"),
            b"Subject: b\r\n\r\nb\r\n",
            3600,
        )
        .await
        .unwrap();
    let dir = r.data_dir.path().to_str().unwrap().to_string();
    let run = |args: &[&str]| {
        let mut full: Vec<String> = vec![
            "--data-dir".into(),
            dir.clone(),
            "--admin-url".into(),
            r.admin_url.clone(),
        ];
        full.extend(args.iter().map(|s| s.to_string()));
        async move {
            let refs: Vec<&str> = full.iter().map(String::as_str).collect();
            cli(&refs, "").await
        }
    };
    let list = run(&["queue", "list"]).await.unwrap();
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 3, "{list}");
    assert!(
        lines[1].contains(&bounce.to_string()) && lines[1].contains("<>"),
        "{list}"
    );
    assert!(
        lines[2].contains("alice@example.test") && lines[2].contains("carol@remote.test"),
        "{list}"
    );
    let filtered = run(&["queue", "list", "--domain", "elsewhere.test"])
        .await
        .unwrap();
    assert_eq!(filtered.lines().count(), 2, "{filtered}");
    let by_sender = run(&["queue", "list", "--sender", "alice@example.test"])
        .await
        .unwrap();
    assert_eq!(by_sender.lines().count(), 2, "{by_sender}");
    let err = run(&["queue", "list", "--state", "lost"])
        .await
        .unwrap_err();
    assert!(err.contains("InvalidArgument"), "{err}");

    let show = run(&["queue", "show", &remote.to_string()]).await.unwrap();
    assert!(show.contains("sender:    alice@example.test"), "{show}");
    assert!(show.contains("recipient: carol@remote.test"), "{show}");

    let summary = run(&["queue", "summary"]).await.unwrap();
    assert!(summary.starts_with("entries:   2"), "{summary}");

    // Retry makes a deferred recipient due now. First the relay's own
    // attempt must have deferred it (the test resolver answers nothing), with
    // the next attempt a first-retry delay (300 s) away.
    let carol = async || store.queue_entry(remote).await.unwrap().unwrap().recipients[0].clone();
    mailroom_tests::wait_for(
        "the first attempt's deferral",
        Duration::from_secs(30),
        async || carol().await.state == "deferred",
    )
    .await;
    let before = carol().await;
    assert!(
        before.next_attempt_at > mailroom_store::now() + 60,
        "{before:?}"
    );
    let retried = run(&["queue", "retry", &remote.to_string()]).await.unwrap();
    assert!(
        retried.starts_with(&format!("queue entry {remote}:")),
        "{retried}"
    );
    // Due now: the relay takes it again at once (another attempt) rather
    // than in five minutes.
    mailroom_tests::wait_for("the retried attempt", Duration::from_secs(30), async || {
        let c = carol().await;
        c.attempts > before.attempts || c.next_attempt_at <= mailroom_store::now()
    })
    .await;

    assert_eq!(
        run(&["queue", "drop", &bounce.to_string()]).await.unwrap(),
        format!("queue entry {bounce} dropped\n")
    );
    let err = run(&["queue", "drop", &bounce.to_string()])
        .await
        .unwrap_err();
    assert!(err.contains("NotFound"), "{err}");
    assert!(store.queued_message(bounce).await.unwrap().is_none());

    let mut c = admin_client(&r.admin_url, Some(&r.token)).await;
    let e = c
        .show_queue_entry(pb::ShowQueueEntryRequest { id: 999_999 })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    let mut anonymous = admin_client(&r.admin_url, None).await;
    let e = anonymous
        .queue_summary(pb::QueueSummaryRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    r.stack.stop(Duration::from_secs(5)).await;
}
