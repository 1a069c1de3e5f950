//! The queue's bookkeeping on both backends: leases and their renewal,
//! per-destination caps, results recorded with the reports they owe, and the
//! removal of finished entries with their blobs.

use mailroom_address::{Address, Domain};
use mailroom_store::{
    AttemptResult, BlobHash, DestinationCaps, OwedReport, QueueEnvelope, QueueRecipient,
    RecipientResult, Store,
};

/// Declares `mod name { sqlite(), postgres() }` for one suite function.
macro_rules! on_both {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let (store, _db) = mailroom_store::testing::TestDb::sqlite().await;
                super::$name(&store).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some((store, _db)) = mailroom_store::testing::TestDb::postgres().await else { return };
                super::$name(&store).await;
            }
        }
    )+};
}

on_both!(
    a_finished_entry_is_removed_with_its_blob_and_its_report_queued,
    a_blob_stays_while_another_entry_or_a_message_refers_to_it,
    a_lost_lease_records_nothing_and_owes_nothing,
    a_delay_notice_is_remembered,
    leases_are_renewed_and_released,
    remote_leases_take_at_most_the_cap_per_domain,
    concurrent_last_results_remove_the_entry_once,
    removal_racing_an_enqueue_of_the_same_content_loses_nothing,
    dropping_an_entry_releases_its_blob,
    one_transaction_records_the_attempts_at_several_entries,
    several_entries_load_in_one_query_within_a_byte_budget,
);

const CONTENT: &[u8] = b"From: a@remote.test\r\nSubject: queued\r\n\r\nbody\r\n";

fn envelope(sender: &str, recipients: &[&str]) -> QueueEnvelope {
    QueueEnvelope {
        sender: sender.into(),
        recipients: recipients
            .iter()
            .map(|r| QueueRecipient {
                address: r.to_string(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

async fn local_domain(store: &Store) {
    store
        .add_domain(&Domain::parse("example.test").unwrap())
        .await
        .unwrap();
}

fn result(id: i64, result: AttemptResult) -> RecipientResult {
    RecipientResult {
        recipient_id: id,
        result,
        delay_notice: false,
    }
}

fn failed() -> AttemptResult {
    AttemptResult::Failed {
        response: "5.1.1 no such user".into(),
    }
}

fn deferred() -> AttemptResult {
    AttemptResult::Deferred {
        next_attempt_at: 0,
        response: "4.2.1 busy".into(),
    }
}

fn report(to: &str) -> OwedReport {
    OwedReport {
        envelope: envelope("", &[to]),
        message: format!("Subject: report for {to}\r\n\r\nreport\r\n").into_bytes(),
        max_age_secs: 3600,
    }
}

async fn a_finished_entry_is_removed_with_its_blob_and_its_report_queued(store: &Store) {
    local_domain(store).await;
    let id = store
        .enqueue(
            &envelope("a@remote.test", &["u1@example.test", "u2@example.test"]),
            CONTENT,
            3600,
        )
        .await
        .unwrap();
    let leased = store.lease_local_recipients("w", 300, 10).await.unwrap();
    assert_eq!(leased.len(), 2);
    // One final result of two: the entry stays, nothing is owed.
    let first = store
        .finish_attempts(
            "w",
            id,
            &[result(leased[0].id, AttemptResult::Delivered)],
            |r| {
                assert_eq!(r, [true]);
                Vec::new()
            },
        )
        .await
        .unwrap();
    assert_eq!(first.recorded, [true]);
    assert!(!first.removed);
    assert!(store.queue_entry(id).await.unwrap().is_some());
    // The last one fails and owes a report: queued, and the entry is gone.
    let last = store
        .finish_attempts("w", id, &[result(leased[1].id, failed())], |r| {
            assert_eq!(r, [true]);
            vec![report("a@remote.test")]
        })
        .await
        .unwrap();
    assert_eq!(last.recorded, [true]);
    assert_eq!(last.reports.len(), 1);
    assert!(last.removed && last.blob_released, "{last:?}");
    assert!(store.queue_entry(id).await.unwrap().is_none());
    assert!(store.queue_recipient_states(id).await.unwrap().is_empty());
    assert!(
        store
            .get_blob(&BlobHash::of(CONTENT))
            .await
            .unwrap()
            .is_none(),
        "the blob went with its last reference"
    );
    let (env, text) = store
        .queued_message(last.reports[0])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(env.sender, "");
    assert_eq!(env.recipients[0].address, "a@remote.test");
    assert!(text.starts_with(b"Subject: report for a@remote.test"));
    let summary = store.queue_summary().await.unwrap();
    assert_eq!(
        (summary.entries, summary.pending),
        (1, 1),
        "only the report"
    );
}

async fn a_blob_stays_while_another_entry_or_a_message_refers_to_it(store: &Store) {
    local_domain(store).await;
    let alice = Address::parse("alice@example.test").unwrap();
    store
        .create_account(&alice, "correct horse battery", 0)
        .await
        .unwrap();
    let one = store
        .enqueue(&envelope("", &["u@example.test"]), CONTENT, 3600)
        .await
        .unwrap();
    let two = store
        .enqueue(&envelope("", &["v@example.test"]), CONTENT, 3600)
        .await
        .unwrap();
    let leased = store.lease_local_recipients("w", 300, 10).await.unwrap();
    let of = |q: i64| leased.iter().find(|r| r.queue_id == q).unwrap().id;
    let done = store
        .finish_attempts(
            "w",
            one,
            &[result(of(one), AttemptResult::Delivered)],
            |_| Vec::new(),
        )
        .await
        .unwrap();
    assert!(
        done.removed && !done.blob_released,
        "entry two still refers to it"
    );
    assert!(
        store
            .get_blob(&BlobHash::of(CONTENT))
            .await
            .unwrap()
            .is_some()
    );
    // A message in a mailbox with the same content keeps it too.
    let account = store.get_account(&alice).await.unwrap().unwrap();
    let inbox = store
        .list_mailboxes(account.id)
        .await
        .unwrap()
        .into_iter()
        .find(|m| m.name == "INBOX")
        .unwrap();
    store
        .append_message(inbox.id, CONTENT, 0, &[], 0, None)
        .await
        .unwrap();
    let done = store
        .finish_attempts(
            "w",
            two,
            &[result(of(two), AttemptResult::Delivered)],
            |_| Vec::new(),
        )
        .await
        .unwrap();
    assert!(
        done.removed && !done.blob_released,
        "the message refers to it"
    );
    assert_eq!(
        store.read_message(inbox.id, 1).await.unwrap().unwrap(),
        CONTENT
    );
    assert_eq!(store.queue_size().await.unwrap(), 0);
}

async fn a_lost_lease_records_nothing_and_owes_nothing(store: &Store) {
    local_domain(store).await;
    let id = store
        .enqueue(
            &envelope("a@remote.test", &["u@example.test"]),
            CONTENT,
            3600,
        )
        .await
        .unwrap();
    // The first worker's lease is over when it is granted (it "died").
    let dying = store
        .lease_local_recipients("dying", -10, 10)
        .await
        .unwrap();
    let heir = store.lease_local_recipients("heir", 300, 10).await.unwrap();
    assert_eq!(heir[0].id, dying[0].id);
    let late = store
        .finish_attempts("dying", id, &[result(dying[0].id, failed())], |r| {
            if r.contains(&true) {
                vec![report("a@remote.test")]
            } else {
                Vec::new()
            }
        })
        .await
        .unwrap();
    assert_eq!(late.recorded, [false]);
    assert!(late.reports.is_empty() && !late.removed);
    assert_eq!(store.queue_size().await.unwrap(), 1, "no report was queued");
    let states = store.queue_recipient_states(id).await.unwrap();
    assert_eq!((states[0].1.as_str(), states[0].2), ("pending", 0));
    // The heir's result counts.
    let done = store
        .finish_attempts(
            "heir",
            id,
            &[result(heir[0].id, AttemptResult::Delivered)],
            |_| Vec::new(),
        )
        .await
        .unwrap();
    assert!(done.recorded[0] && done.removed);
}

async fn a_delay_notice_is_remembered(store: &Store) {
    local_domain(store).await;
    let id = store
        .enqueue(
            &envelope("a@remote.test", &["u@example.test"]),
            CONTENT,
            3600,
        )
        .await
        .unwrap();
    let leased = store.lease_local_recipients("w", 300, 10).await.unwrap();
    assert!(!leased[0].delay_notified);
    let noted = store
        .finish_attempts(
            "w",
            id,
            &[RecipientResult {
                recipient_id: leased[0].id,
                result: deferred(),
                delay_notice: true,
            }],
            |_| vec![report("a@remote.test")],
        )
        .await
        .unwrap();
    assert!(!noted.removed, "a deferred recipient keeps the entry");
    let entry = store.queue_entry(id).await.unwrap().unwrap();
    assert_eq!(entry.recipients[0].state, "deferred");
    assert!(entry.recipients[0].delay_notified_at.is_some());
    // Due again (next_attempt_at 0): the next lease says a notice was sent.
    let again = store.lease_local_recipients("w", 300, 10).await.unwrap();
    assert_eq!(again.len(), 1);
    assert!(again[0].delay_notified);
    // A later deferral without a notice keeps the mark.
    store
        .finish_attempts("w", id, &[result(again[0].id, deferred())], |_| Vec::new())
        .await
        .unwrap();
    let entry = store.queue_entry(id).await.unwrap().unwrap();
    assert!(entry.recipients[0].delay_notified_at.is_some());
    assert_eq!(entry.recipients[0].attempts, 2);
}

async fn leases_are_renewed_and_released(store: &Store) {
    local_domain(store).await;
    store
        .enqueue(
            &envelope("", &["u@example.test", "v@example.test"]),
            CONTENT,
            3600,
        )
        .await
        .unwrap();
    // Granted already expired, then renewed: nobody else may take them.
    let held = store.lease_local_recipients("w", -10, 10).await.unwrap();
    assert_eq!(held.len(), 2);
    let ids: Vec<i64> = held.iter().map(|r| r.id).collect();
    // Only the leases named are renewed (those a task works on).
    assert_eq!(store.renew_leases("w", &ids[..1], 300).await.unwrap(), 1);
    let expired = store
        .lease_local_recipients("other", 300, 10)
        .await
        .unwrap();
    assert_eq!(expired.len(), 1, "the lease nobody renewed ran out");
    assert_eq!(expired[0].id, ids[1]);
    assert_eq!(store.renew_leases("other", &[], 300).await.unwrap(), 0);
    // A lease let lapse soon is taken again only after that.
    assert_eq!(store.lapse_leases("other", &ids[1..], 60).await.unwrap(), 1);
    assert!(
        store
            .lease_local_recipients("third", 300, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.lapse_leases("other", &ids[1..], 0).await.unwrap(), 1);
    let again = store.lease_local_recipients("w", -10, 10).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempts, 0, "a lapse is not an attempt");
    assert_eq!(store.renew_leases("w", &ids, 300).await.unwrap(), 2);
    assert!(
        store
            .lease_local_recipients("other", 300, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.renew_leases("nobody", &ids, 300).await.unwrap(), 0);
    // Released one by id, then the rest: each becomes due for anyone.
    assert_eq!(
        store
            .release_leases("w", Some(&[held[0].id]))
            .await
            .unwrap(),
        1
    );
    assert_eq!(store.release_leases("w", Some(&[])).await.unwrap(), 0);
    let taken = store
        .lease_local_recipients("other", 300, 10)
        .await
        .unwrap();
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].id, held[0].id);
    assert_eq!(taken[0].attempts, 0, "a release is not an attempt");
    assert_eq!(store.release_leases("w", None).await.unwrap(), 1);
    assert_eq!(
        store
            .lease_local_recipients("third", 300, 10)
            .await
            .unwrap()
            .len(),
        1
    );
}

async fn remote_leases_take_at_most_the_cap_per_domain(store: &Store) {
    local_domain(store).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        // Two recipients at one domain are one message: they count once.
        let rcpts = [format!("x{i}@a.test"), format!("y{i}@a.test")];
        let refs: Vec<&str> = rcpts.iter().map(String::as_str).collect();
        ids.push(
            store
                .enqueue(&envelope("s@example.test", &refs), CONTENT, 3600)
                .await
                .unwrap(),
        );
    }
    for i in 0..3 {
        store
            .enqueue(
                &envelope("s@example.test", &[&format!("z{i}@b.test")]),
                CONTENT,
                3600,
            )
            .await
            .unwrap();
    }
    store
        .enqueue(
            &envelope("s@example.test", &["c@c.test", "local@example.test"]),
            CONTENT,
            3600,
        )
        .await
        .unwrap();
    let caps = DestinationCaps {
        default: 2,
        domains: vec![("b.test".into(), 1), ("c.test".into(), 0)],
    };
    let leased = store
        .lease_remote_recipients("relay", 300, 100, &caps)
        .await
        .unwrap();
    let count = |domain: &str| {
        leased
            .iter()
            .filter(|r| r.address.ends_with(domain))
            .count()
    };
    assert_eq!(
        count("@a.test"),
        4,
        "two messages of two recipients: {leased:?}"
    );
    assert_eq!(count("@b.test"), 1);
    assert_eq!(count("@c.test"), 0, "a full destination is left out");
    assert_eq!(
        count("@example.test"),
        0,
        "local recipients are not the relay's"
    );
    // The oldest messages come first, both recipients of each together.
    assert_eq!(leased[0].queue_id, ids[0]);
    assert_eq!(leased[1].queue_id, ids[0]);
    assert_eq!(leased[2].queue_id, ids[1]);
    // The rest stay due: the next round (caps freed) takes them.
    let next = store
        .lease_remote_recipients(
            "relay",
            300,
            100,
            &DestinationCaps {
                default: 10,
                domains: Vec::new(),
            },
        )
        .await
        .unwrap();
    assert_eq!(next.len(), 6 + 2 + 1);
}

async fn concurrent_last_results_remove_the_entry_once(store: &Store) {
    local_domain(store).await;
    for round in 0..10 {
        let id = store
            .enqueue(
                &envelope("", &["u@example.test", "v@example.test"]),
                format!("round {round}").as_bytes(),
                3600,
            )
            .await
            .unwrap();
        let a = store.lease_local_recipients("a", 300, 1).await.unwrap();
        let b = store.lease_local_recipients("b", 300, 1).await.unwrap();
        let (for_a, for_b) = (
            [result(a[0].id, AttemptResult::Delivered)],
            [result(b[0].id, failed())],
        );
        let (ra, rb) = tokio::join!(
            store.finish_attempts("a", id, &for_a, |_| Vec::new()),
            store.finish_attempts("b", id, &for_b, |_| Vec::new()),
        );
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        assert!(ra.recorded[0] && rb.recorded[0]);
        assert!(
            ra.removed ^ rb.removed,
            "exactly one of them removes the entry: {ra:?} {rb:?}"
        );
        assert!(store.queue_entry(id).await.unwrap().is_none());
    }
}

async fn removal_racing_an_enqueue_of_the_same_content_loses_nothing(store: &Store) {
    local_domain(store).await;
    for round in 0..100 {
        let content = format!("Subject: race {round}\r\n\r\nsame bytes\r\n").into_bytes();
        let id = store
            .enqueue(&envelope("", &["u@example.test"]), &content, 3600)
            .await
            .unwrap();
        let leased = store.lease_local_recipients("w", 300, 10).await.unwrap();
        let delivered = [result(leased[0].id, AttemptResult::Delivered)];
        let second = envelope("", &["v@example.test"]);
        let (finished, again) = tokio::join!(
            store.finish_attempts("w", id, &delivered, |_| Vec::new()),
            store.enqueue(&second, &content, 3600),
        );
        assert!(finished.unwrap().removed);
        let again = again.expect("an enqueue never fails because of a removal");
        let (_, text) = store
            .queued_message(again)
            .await
            .unwrap()
            .expect("the new entry and its content are there");
        assert_eq!(text, content);
        // Clear the new entry for the next round.
        let leased = store.lease_local_recipients("w", 300, 10).await.unwrap();
        store
            .finish_attempts(
                "w",
                again,
                &[result(leased[0].id, AttemptResult::Delivered)],
                |_| Vec::new(),
            )
            .await
            .unwrap();
        assert!(
            store
                .get_blob(&BlobHash::of(&content))
                .await
                .unwrap()
                .is_none()
        );
    }
}

async fn dropping_an_entry_releases_its_blob(store: &Store) {
    let id = store
        .enqueue(&envelope("", &["far@remote.test"]), CONTENT, 3600)
        .await
        .unwrap();
    store.drop_queue_entry(id).await.unwrap();
    assert!(
        store
            .get_blob(&BlobHash::of(CONTENT))
            .await
            .unwrap()
            .is_none()
    );
    assert!(store.drop_queue_entry(id).await.is_err());
}

async fn one_transaction_records_the_attempts_at_several_entries(store: &Store) {
    local_domain(store).await;
    let mut ids = Vec::new();
    for (i, to) in [
        &["u1@example.test", "u2@example.test"][..],
        &["u3@example.test"],
        &["u4@example.test"],
    ]
    .iter()
    .enumerate()
    {
        let content = format!("Subject: {i}\r\n\r\nbody\r\n");
        ids.push(
            store
                .enqueue(&envelope("a@remote.test", to), content.as_bytes(), 3600)
                .await
                .unwrap(),
        );
    }
    let (a, b, c) = (ids[0], ids[1], ids[2]);
    let leased = store.lease_local_recipients("w", 300, 10).await.unwrap();
    assert_eq!(leased.len(), 4);
    let rcpt = |address: &str| leased.iter().find(|r| r.address == address).unwrap().id;
    // Entry c's lease is lost to another worker.
    store
        .release_leases("w", Some(&[rcpt("u4@example.test")]))
        .await
        .unwrap();
    assert_eq!(
        store
            .lease_local_recipients("other", 300, 10)
            .await
            .unwrap()
            .len(),
        1
    );

    // No report owed (PostgreSQL: the one-statement path); the entries are
    // given out of id order and come back in the order given.
    let deferred_b = [result(rcpt("u3@example.test"), deferred())];
    let delivered_u1 = [result(rcpt("u1@example.test"), AttemptResult::Delivered)];
    let finished = store
        .finish_attempts_of_entries(
            "w",
            &[(b, &deferred_b[..]), (a, &delivered_u1[..])],
            |_, _| Vec::new(),
        )
        .await
        .unwrap();
    assert_eq!(finished.len(), 2);
    assert_eq!(finished[0].recorded, [true]);
    assert_eq!(finished[1].recorded, [true]);
    assert!(
        !finished[0].removed && !finished[1].removed,
        "both still open"
    );
    assert_eq!(
        store.queue_recipient_states(b).await.unwrap()[0].1,
        "deferred"
    );

    // One entry owes a report, the other's lease is lost: each is told
    // what was recorded, and only the recorded result is reported.
    let failed_u2 = [result(rcpt("u2@example.test"), failed())];
    let delivered_u4 = [result(rcpt("u4@example.test"), AttemptResult::Delivered)];
    let entries = [(c, &delivered_u4[..]), (a, &failed_u2[..])];
    let finished = store
        .finish_attempts_of_entries("w", &entries, |i, recorded| {
            // (On PostgreSQL it is asked first as if all were recorded.)
            if i == 1 && recorded == [true] {
                vec![report("a@remote.test")]
            } else {
                Vec::new()
            }
        })
        .await
        .unwrap();
    assert_eq!(
        finished[0].recorded,
        [false],
        "entry c was not ours any more"
    );
    assert!(finished[0].reports.is_empty() && !finished[0].removed);
    assert_eq!(finished[1].recorded, [true]);
    assert_eq!(finished[1].reports.len(), 1);
    assert!(finished[1].removed, "a's last recipient is final");
    assert!(store.queue_entry(a).await.unwrap().is_none());
    let c_states = store.queue_recipient_states(c).await.unwrap();
    assert_eq!(c_states[0].1, "pending", "the other worker's to record");
}

async fn several_entries_load_in_one_query_within_a_byte_budget(store: &Store) {
    let mut ids = Vec::new();
    for i in 0..4 {
        let content = format!("Subject: {i}\r\n\r\n{}\r\n", "x".repeat(1000));
        let to = ["x@remote.test", "y@remote.test"];
        ids.push(
            store
                .enqueue(
                    &envelope("a@remote.test", &to[..1 + i % 2]),
                    content.as_bytes(),
                    3600,
                )
                .await
                .unwrap(),
        );
    }
    let all = store.queued_for_attempts(&ids, i64::MAX).await.unwrap();
    let loaded: Vec<i64> = all.iter().map(|(id, _)| *id).collect();
    assert_eq!(loaded, ids);
    for (i, (id, queued)) in all.iter().enumerate() {
        let one = store.queued_for_attempt(*id).await.unwrap().unwrap();
        assert_eq!(&one, queued, "the same as one at a time");
        assert_eq!(queued.envelope.recipients.len(), 1 + i % 2);
        assert!(
            queued
                .message
                .starts_with(format!("Subject: {i}").as_bytes())
        );
    }
    // Entries are taken while less than the budget came before them; the
    // first always.
    let two = store.queued_for_attempts(&ids, 1500).await.unwrap();
    assert_eq!(
        two.len(),
        2,
        "1,0xx bytes before the second, 2,0xx before the third"
    );
    assert_eq!(store.queued_for_attempts(&ids, 1).await.unwrap().len(), 1);
    // A dropped entry is left out.
    store.drop_queue_entry(ids[1]).await.unwrap();
    let rest: Vec<i64> = store
        .queued_for_attempts(&ids, i64::MAX)
        .await
        .unwrap()
        .iter()
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(rest, [ids[0], ids[2], ids[3]]);
}
