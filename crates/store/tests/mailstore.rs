//! The IMAP operations of the store, on SQLite and on PostgreSQL: mailbox
//! management, APPEND, STORE (with CONDSTORE's MODSEQ rules), COPY, MOVE,
//! EXPUNGE, the change log QRESYNC reads, quota accounting and events.

use std::time::Duration;

use mailroom_address::{Address, Domain};
use mailroom_store::{
    Copied, FlagOp, Folder, LocalTarget, Mailbox, MailboxCounts, MailboxEvent, MessageMeta,
    NewMessage, Store, StoreError, Stored, flag_bits,
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
    mailboxes_are_created_found_and_subscribed,
    rename_takes_children_along_and_refuses_conflicts,
    renaming_inbox_moves_its_messages,
    delete_removes_messages_and_refunds,
    append_allocates_uids_and_charges_quota,
    store_flags_gives_one_modseq_per_call,
    unchanged_since_refuses_modified_messages,
    changes_since_reports_changes_and_vanished,
    copy_and_move_allocate_uids_and_account_quota,
    expunge_removes_only_deleted_messages,
    long_uid_lists_are_handled_in_chunks,
    events_announce_every_change,
    concurrent_writers_keep_the_invariants,
    texts_are_read_in_pieces,
    metadata_entries_are_set_replaced_and_removed,
    metadata_follows_rename_and_goes_with_delete,
);

const PW: &str = "correct horse battery";
const DAY: i64 = 86_400;

fn addr(s: &str) -> Address {
    Address::parse(s).unwrap()
}

fn kw(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// An account (its domain created when needed); returns its id.
async fn account(store: &Store, address: &str, quota: u64) -> i64 {
    let _ = store
        .add_domain(&Domain::parse("example.test").unwrap())
        .await;
    store
        .create_account(&addr(address), PW, quota)
        .await
        .unwrap()
        .id
}

async fn mailbox(store: &Store, account: i64, name: &str) -> Mailbox {
    store
        .mailbox_by_name(account, name)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("no mailbox {name}"))
}

async fn names(store: &Store, account: i64) -> Vec<String> {
    store
        .list_mailboxes(account)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.name)
        .collect()
}

/// Content of `size` bytes, distinct per `tag`.
fn content(tag: usize, size: usize) -> Vec<u8> {
    let head = format!("Subject: {tag}\r\n\r\n");
    assert!(size >= head.len());
    let mut c = head.into_bytes();
    c.resize(size, b'a' + (tag % 26) as u8);
    c
}

/// Appends a message of `size` bytes without flags; returns its UID.
async fn append(store: &Store, mailbox: i64, tag: usize, size: usize) -> u32 {
    store
        .append_message(mailbox, &content(tag, size), 0, &[], tag as i64 * DAY, None)
        .await
        .unwrap()
        .uid
}

async fn uids(store: &Store, mailbox: i64) -> Vec<u32> {
    store
        .mailbox_messages(mailbox)
        .await
        .unwrap()
        .iter()
        .map(|m| m.uid)
        .collect()
}

async fn used(store: &Store, account: i64) -> u64 {
    store.quota_usage(account).await.unwrap().0
}

async fn expunged_rows(store: &Store, mailbox: i64) -> Vec<(i64, i64)> {
    mailroom_store::on_backend!(store, |pool| {
        sqlx::query_as("SELECT uid, modseq FROM expunged WHERE mailbox_id = $1 ORDER BY uid")
            .bind(mailbox)
            .fetch_all(pool)
            .await
            .unwrap()
    })
}

async fn message_rows(store: &Store, mailbox: i64) -> i64 {
    mailroom_store::on_backend!(store, |pool| {
        sqlx::query_scalar("SELECT COUNT(*) FROM messages WHERE mailbox_id = $1")
            .bind(mailbox)
            .fetch_one(pool)
            .await
            .unwrap()
    })
}

async fn mailboxes_are_created_found_and_subscribed(store: &Store) {
    let alice = account(store, "alice@example.test", 0).await;
    let inbox = mailbox(store, alice, "INBOX").await;
    assert_eq!(inbox.name, "INBOX");
    // INBOX matches in any case; other names exactly.
    for name in ["inbox", "Inbox", "iNbOx"] {
        assert_eq!(
            store.mailbox_by_name(alice, name).await.unwrap(),
            Some(inbox.clone())
        );
    }
    assert!(
        store
            .mailbox_by_name(alice, "Sent")
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        store
            .mailbox_by_name(alice, "sent")
            .await
            .unwrap()
            .is_none()
    );

    let created = store
        .create_mailbox(alice, "Projects/2024", Some("\\Archive"))
        .await
        .unwrap();
    assert_eq!(created.account_id, alice);
    assert_eq!(created.name, "Projects/2024");
    assert_eq!(created.special_use.as_deref(), Some("\\Archive"));
    assert!(!created.subscribed);
    assert_eq!((created.uidnext, created.highestmodseq), (1, 1));
    assert!(created.uidvalidity >= 1 && created.uidvalidity <= i32::MAX as u32);
    assert_eq!(
        store.mailbox_by_id(created.id).await.unwrap(),
        Some(created.clone())
    );
    assert_eq!(
        store.mailbox_by_name(alice, "Projects/2024").await.unwrap(),
        Some(created.clone())
    );
    // Superior names are not created by the store.
    assert!(
        store
            .mailbox_by_name(alice, "Projects")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .mailbox_by_id(created.id + 1000)
            .await
            .unwrap()
            .is_none()
    );

    for name in ["Projects/2024", "INBOX", "inbox", "InBox"] {
        assert!(
            matches!(
                store.create_mailbox(alice, name, None).await,
                Err(StoreError::AlreadyExists(_))
            ),
            "{name}"
        );
    }
    for name in ["", "/a", "a/", "a//b", "a\u{7}b"] {
        assert!(
            matches!(
                store.create_mailbox(alice, name, None).await,
                Err(StoreError::InvalidArgument(_))
            ),
            "{name:?}"
        );
    }
    assert!(matches!(
        store.create_mailbox(alice + 1000, "X", None).await,
        Err(StoreError::NotFound(_))
    ));
    // Names are per account.
    let bob = account(store, "bob@example.test", 0).await;
    let bobs = store
        .create_mailbox(bob, "Projects/2024", None)
        .await
        .unwrap();
    assert_ne!(bobs.id, created.id);

    // SUBSCRIBE / UNSUBSCRIBE.
    store
        .set_subscribed(alice, "Projects/2024", true)
        .await
        .unwrap();
    assert!(mailbox(store, alice, "Projects/2024").await.subscribed);
    assert!(!mailbox(store, bob, "Projects/2024").await.subscribed);
    store
        .set_subscribed(alice, "Projects/2024", false)
        .await
        .unwrap();
    assert!(!mailbox(store, alice, "Projects/2024").await.subscribed);
    assert!(inbox.subscribed);
    store.set_subscribed(alice, "inbox", false).await.unwrap();
    assert!(!mailbox(store, alice, "INBOX").await.subscribed);
    assert!(matches!(
        store.set_subscribed(alice, "Nope", true).await,
        Err(StoreError::NotFound(_))
    ));
}

async fn rename_takes_children_along_and_refuses_conflicts(store: &Store) {
    let a = account(store, "alice@example.test", 0).await;
    for name in ["Work", "Work/A", "Work/A/deep", "WorkX", "Dest/A"] {
        store.create_mailbox(a, name, None).await.unwrap();
    }
    store.set_subscribed(a, "Work/A", true).await.unwrap();
    let uid = append(store, mailbox(store, a, "Work/A").await.id, 1, 100).await;
    let work = mailbox(store, a, "Work").await;
    let work_a = mailbox(store, a, "Work/A").await;
    let deep = mailbox(store, a, "Work/A/deep").await;
    assert_eq!((work_a.uidnext, work_a.highestmodseq), (2, 2));
    let before = names(store, a).await;

    let err = |r: Result<(), StoreError>| match r {
        Err(e) => e,
        Ok(()) => panic!("renamed"),
    };
    // The target exists.
    assert!(matches!(
        err(store.rename_mailbox(a, "Work", "WorkX").await),
        StoreError::AlreadyExists(_)
    ));
    assert!(matches!(
        err(store.rename_mailbox(a, "WorkX", "inbox").await),
        StoreError::AlreadyExists(_)
    ));
    assert!(matches!(
        err(store.rename_mailbox(a, "Work", "Work").await),
        StoreError::AlreadyExists(_)
    ));
    // A child's target exists ("Work/A" would become "Dest/A"): nothing moves.
    assert!(matches!(
        err(store.rename_mailbox(a, "Work", "Dest").await),
        StoreError::AlreadyExists(_)
    ));
    assert!(matches!(
        err(store.rename_mailbox(a, "Nope", "Other").await),
        StoreError::NotFound(_)
    ));
    assert!(matches!(
        err(store.rename_mailbox(a, "Work", "Work/Sub").await),
        StoreError::InvalidArgument(_)
    ));
    assert!(matches!(
        err(store.rename_mailbox(a, "Work", "a//b").await),
        StoreError::InvalidArgument(_)
    ));
    assert_eq!(names(store, a).await, before);

    store.rename_mailbox(a, "Work", "Projects").await.unwrap();
    assert_eq!(
        names(store, a).await,
        [
            "Archive",
            "Dest/A",
            "Drafts",
            "INBOX",
            "Junk",
            "Projects",
            "Projects/A",
            "Projects/A/deep",
            "Sent",
            "Trash",
            "WorkX"
        ]
    );
    // Same rows: ids, UIDVALIDITY, subscription and messages kept.
    assert_eq!(
        mailbox(store, a, "Projects").await,
        Mailbox {
            name: "Projects".into(),
            ..work
        }
    );
    assert_eq!(
        mailbox(store, a, "Projects/A").await,
        Mailbox {
            name: "Projects/A".into(),
            ..work_a.clone()
        }
    );
    assert_eq!(
        mailbox(store, a, "Projects/A/deep").await,
        Mailbox {
            name: "Projects/A/deep".into(),
            ..deep.clone()
        }
    );
    assert_eq!(uids(store, work_a.id).await, [uid]);

    // A child renamed to the top level takes its own child along.
    store.rename_mailbox(a, "Projects/A", "Top").await.unwrap();
    assert_eq!(mailbox(store, a, "Top").await.id, work_a.id);
    assert_eq!(mailbox(store, a, "Top/deep").await.id, deep.id);
    assert!(
        store
            .mailbox_by_name(a, "Projects/A")
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(mailbox(store, a, "Projects").await.id, work.id);

    // New names that are old names of other renamed mailboxes.
    for name in ["P/Q", "P/Q/Q", "P/Q/R"] {
        store.create_mailbox(a, name, None).await.unwrap();
    }
    let ids: Vec<i64> = [
        mailbox(store, a, "P/Q").await.id,
        mailbox(store, a, "P/Q/Q").await.id,
        mailbox(store, a, "P/Q/R").await.id,
    ]
    .into();
    store.rename_mailbox(a, "P/Q", "P").await.unwrap();
    let after: Vec<i64> = [
        mailbox(store, a, "P").await.id,
        mailbox(store, a, "P/Q").await.id,
        mailbox(store, a, "P/R").await.id,
    ]
    .into();
    assert_eq!(after, ids);
    assert!(store.mailbox_by_name(a, "P/Q/Q").await.unwrap().is_none());
}

async fn renaming_inbox_moves_its_messages(store: &Store) {
    let a = account(store, "alice@example.test", 0).await;
    let inbox = mailbox(store, a, "INBOX").await;
    store.create_mailbox(a, "INBOX/child", None).await.unwrap();
    // A delivered message (with a per-recipient prefix) and appended ones.
    let target = LocalTarget {
        account_id: a,
        address: "alice@example.test".into(),
        folder: None,
    };
    let body = b"Subject: delivered\r\n\r\nhello\r\n";
    let blob = store.put_blob(body).await.unwrap();
    let stored = store
        .store_message(
            &target,
            &Folder::Inbox,
            &NewMessage {
                blob,
                blob_size: body.len() as u64,
                prefix: b"Delivered-To: alice@example.test\r\n".to_vec(),
                parse_cache: Some("delivered-cache".into()),
                delivery_key: "k1".into(),
                internal_date: 5 * DAY,
            },
        )
        .await
        .unwrap();
    assert!(matches!(stored, Stored::New(ref e) if e.uid == 1));
    store
        .append_message(
            inbox.id,
            &content(2, 200),
            flag_bits::SEEN,
            &kw(&["$Work"]),
            2 * DAY,
            None,
        )
        .await
        .unwrap();
    store
        .append_message(
            inbox.id,
            &content(3, 300),
            flag_bits::SEEN | flag_bits::DELETED,
            &[],
            3 * DAY,
            None,
        )
        .await
        .unwrap();
    store
        .append_message(
            inbox.id,
            &content(4, 400),
            flag_bits::FLAGGED,
            &kw(&["A", "B"]),
            4 * DAY,
            Some("cache4"),
        )
        .await
        .unwrap();
    assert_eq!(store.expunge_deleted(inbox.id, None).await.unwrap(), [3]);
    let old_uids = [1, 2, 4];
    let metas = store.mailbox_messages(inbox.id).await.unwrap();
    let texts = store.message_texts(inbox.id, &old_uids).await.unwrap();
    let caches = store.parse_caches(inbox.id, &old_uids).await.unwrap();
    let inbox = mailbox(store, a, "INBOX").await;
    let usage = store.quota_usage(a).await.unwrap();

    store.rename_mailbox(a, "inbox", "Old Mail").await.unwrap();

    let old = mailbox(store, a, "Old Mail").await;
    assert_ne!(old.id, inbox.id);
    assert_eq!((old.uidnext, old.highestmodseq), (4, 2));
    assert!(old.subscribed);
    assert_eq!(old.special_use, None);
    // UIDs 1..n in the old order, everything else kept; one MODSEQ.
    let moved = store.mailbox_messages(old.id).await.unwrap();
    let expected: Vec<MessageMeta> = metas
        .iter()
        .zip(1..)
        .map(|(m, uid)| MessageMeta {
            uid,
            modseq: 2,
            ..m.clone()
        })
        .collect();
    assert_eq!(moved, expected);
    let new_texts = store.message_texts(old.id, &[1, 2, 3]).await.unwrap();
    assert_eq!(
        new_texts.iter().map(|t| &t.1).collect::<Vec<_>>(),
        texts.iter().map(|t| &t.1).collect::<Vec<_>>()
    );
    assert!(
        new_texts[0]
            .1
            .starts_with(b"Delivered-To: alice@example.test\r\nSubject: delivered")
    );
    assert_eq!(
        store.parse_caches(old.id, &[1, 2, 3]).await.unwrap(),
        [
            (1, caches[0].1.clone()),
            (2, caches[1].1.clone()),
            (3, caches[2].1.clone())
        ]
    );
    assert_eq!(caches[0].1.as_deref(), Some("delivered-cache"));
    // INBOX stays, empty, same identity; its messages are expunged.
    let after = mailbox(store, a, "INBOX").await;
    assert_eq!(
        after,
        Mailbox {
            highestmodseq: inbox.highestmodseq + 1,
            ..inbox.clone()
        }
    );
    assert!(store.mailbox_messages(inbox.id).await.unwrap().is_empty());
    let changes = store
        .changes_since(inbox.id, inbox.highestmodseq)
        .await
        .unwrap();
    assert_eq!(changes.vanished, old_uids);
    assert!(changes.changed.is_empty());
    assert_eq!(store.quota_usage(a).await.unwrap(), usage);
    // INBOX's children are not renamed.
    assert!(
        store
            .mailbox_by_name(a, "INBOX/child")
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        store
            .mailbox_by_name(a, "Old Mail/child")
            .await
            .unwrap()
            .is_none()
    );

    // Refused when the target exists; nothing moves.
    let uid = append(store, inbox.id, 9, 90).await;
    assert_eq!(uid, 5);
    assert!(matches!(
        store.rename_mailbox(a, "INBOX", "Sent").await,
        Err(StoreError::AlreadyExists(_))
    ));
    assert_eq!(uids(store, inbox.id).await, [5]);
    // And again: the new mailbox starts at UID 1.
    store.rename_mailbox(a, "INBOX", "Second").await.unwrap();
    let second = mailbox(store, a, "Second").await;
    assert_eq!(uids(store, second.id).await, [1]);
    assert_eq!(second.uidnext, 2);
    assert!(store.mailbox_messages(inbox.id).await.unwrap().is_empty());
    assert_eq!(mailbox(store, a, "INBOX").await.uidnext, 6);
}

async fn delete_removes_messages_and_refunds(store: &Store) {
    let a = account(store, "alice@example.test", 0).await;
    let inbox = mailbox(store, a, "INBOX").await;
    let bx = store.create_mailbox(a, "Box", None).await.unwrap();
    store.create_mailbox(a, "Box/child", None).await.unwrap();
    append(store, bx.id, 1, 100).await;
    append(store, bx.id, 2, 200).await;
    append(store, inbox.id, 3, 50).await;
    store
        .store_flags(bx.id, &[1], FlagOp::Add, flag_bits::DELETED, &[], None)
        .await
        .unwrap();
    assert_eq!(store.expunge_deleted(bx.id, None).await.unwrap(), [1]);
    assert_eq!(expunged_rows(store, bx.id).await.len(), 1);
    assert_eq!(used(store, a).await, 250);

    store.delete_mailbox(a, "Box").await.unwrap();
    assert_eq!(used(store, a).await, 50);
    assert!(store.mailbox_by_name(a, "Box").await.unwrap().is_none());
    assert!(store.mailbox_by_id(bx.id).await.unwrap().is_none());
    assert_eq!(message_rows(store, bx.id).await, 0);
    assert!(expunged_rows(store, bx.id).await.is_empty());
    // The child stays, and so does the rest of the account.
    assert!(
        store
            .mailbox_by_name(a, "Box/child")
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(uids(store, inbox.id).await, [1]);
    // Reads of the deleted mailbox say so.
    assert!(matches!(
        store.changes_since(bx.id, 0).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.mailbox_messages(bx.id).await,
        Err(StoreError::NotFound(_))
    ));

    assert!(matches!(
        store.delete_mailbox(a, "Box").await,
        Err(StoreError::NotFound(_))
    ));
    for name in ["INBOX", "inbox"] {
        assert!(matches!(
            store.delete_mailbox(a, name).await,
            Err(StoreError::FailedPrecondition(_))
        ));
    }
    // Created again: a new mailbox, starting from UID 1.
    let again = store.create_mailbox(a, "Box", None).await.unwrap();
    assert_ne!(again.id, bx.id);
    assert_eq!((again.uidnext, again.highestmodseq), (1, 1));
    assert_eq!(append(store, again.id, 4, 40).await, 1);
}

async fn append_allocates_uids_and_charges_quota(store: &Store) {
    let a = account(store, "alice@example.test", 1000).await;
    let address = addr("alice@example.test");
    let inbox = mailbox(store, a, "INBOX").await;
    let h = inbox.highestmodseq;

    let first = store
        .append_message(
            inbox.id,
            &content(1, 100),
            flag_bits::SEEN,
            &kw(&["$Label", "$label", "Work"]),
            1_700_000_000,
            Some("cache1"),
        )
        .await
        .unwrap();
    assert_eq!(
        (first.uidvalidity, first.uid, first.modseq),
        (inbox.uidvalidity, 1, h + 1)
    );
    let second = store
        .append_message(inbox.id, &content(2, 100), 0, &[], 1_700_000_100, None)
        .await
        .unwrap();
    assert_eq!((second.uid, second.modseq), (2, h + 2));
    let third = store
        .append_message(
            inbox.id,
            &content(3, 100),
            flag_bits::DRAFT | flag_bits::FLAGGED,
            &[],
            1_700_000_200,
            None,
        )
        .await
        .unwrap();
    assert_eq!((third.uid, third.modseq), (3, h + 3));
    assert_eq!(store.quota_usage(a).await.unwrap(), (300, 1000));

    // Over quota: refused, nothing charged, no UID used.
    match store
        .append_message(inbox.id, &content(4, 701), 0, &[], 0, None)
        .await
    {
        Err(StoreError::FailedPrecondition(m)) => assert!(m.starts_with("OVERQUOTA"), "{m}"),
        other => panic!("not refused: {other:?}"),
    }
    assert_eq!(store.quota_usage(a).await.unwrap(), (300, 1000));
    if matches!(store.backend(), mailroom_store::Backend::Postgres(_)) {
        // One transaction there: not even the content stays behind.
        let hash = mailroom_store::BlobHash::of(&content(4, 701));
        assert_eq!(store.get_blob(&hash).await.unwrap(), None);
    }
    let mb = mailbox(store, a, "INBOX").await;
    assert_eq!((mb.uidnext, mb.highestmodseq), (4, h + 3));
    // Exactly up to the quota is fine.
    let fourth = store
        .append_message(inbox.id, &content(4, 700), 0, &[], 1_700_000_300, None)
        .await
        .unwrap();
    assert_eq!((fourth.uid, fourth.modseq), (4, h + 4));
    assert_eq!(store.quota_usage(a).await.unwrap(), (1000, 1000));
    assert!(matches!(
        store
            .append_message(inbox.id, &content(5, 20), 0, &[], 0, None)
            .await,
        Err(StoreError::FailedPrecondition(m)) if m.starts_with("OVERQUOTA")
    ));
    // Unlimited again.
    store.set_quota(&address, 0).await.unwrap();
    assert_eq!(append(store, inbox.id, 5, 5000).await, 5);
    assert_eq!(store.quota_usage(a).await.unwrap(), (6000, 0));

    let metas = store.mailbox_messages(inbox.id).await.unwrap();
    assert_eq!(
        metas,
        [
            MessageMeta {
                uid: 1,
                modseq: h + 1,
                flags: flag_bits::SEEN,
                keywords: kw(&["$Label", "Work"]),
                internal_date: 1_700_000_000,
                size: 100
            },
            MessageMeta {
                uid: 2,
                modseq: h + 2,
                flags: 0,
                keywords: vec![],
                internal_date: 1_700_000_100,
                size: 100
            },
            MessageMeta {
                uid: 3,
                modseq: h + 3,
                flags: flag_bits::DRAFT | flag_bits::FLAGGED,
                keywords: vec![],
                internal_date: 1_700_000_200,
                size: 100
            },
            MessageMeta {
                uid: 4,
                modseq: h + 4,
                flags: 0,
                keywords: vec![],
                internal_date: 1_700_000_300,
                size: 700
            },
            MessageMeta {
                uid: 5,
                modseq: h + 5,
                flags: 0,
                keywords: vec![],
                internal_date: 5 * DAY,
                size: 5000
            },
        ]
    );
    assert_eq!(
        store.message_texts(inbox.id, &[4, 1, 99, 1]).await.unwrap(),
        [(1, content(1, 100)), (4, content(4, 700))]
    );
    assert_eq!(
        store.parse_caches(inbox.id, &[2, 1, 99]).await.unwrap(),
        [(1, Some("cache1".to_string())), (2, None)]
    );
    assert_eq!(
        store.mailbox_counts(inbox.id).await.unwrap(),
        MailboxCounts {
            messages: 5,
            unseen: 4,
            deleted: 0,
            deleted_size: 0,
            size: 6000
        }
    );
    let snapshot = store.mailbox_snapshot(inbox.id).await.unwrap().unwrap();
    assert_eq!(snapshot.messages, metas);
    assert_eq!(
        (snapshot.mailbox.uidnext, snapshot.mailbox.highestmodseq),
        (6, h + 5)
    );
    assert!(
        store
            .mailbox_snapshot(inbox.id + 1000)
            .await
            .unwrap()
            .is_none()
    );
    // SELECT's one-statement read by name gives the same snapshot, INBOX in
    // any case; an unknown name, or another account's, gives none.
    assert_eq!(
        store.open_mailbox(a, "inbox").await.unwrap().as_ref(),
        Some(&snapshot)
    );
    assert!(store.open_mailbox(a, "Nope").await.unwrap().is_none());
    assert!(
        store
            .open_mailbox(a + 1000, "INBOX")
            .await
            .unwrap()
            .is_none()
    );
    // FETCH's reads tell the HIGHESTMODSEQ they saw, none when they read
    // nothing from the database: here the messages this process appended
    // come from its memory (see `what_a_process_knows_follows_every_process`
    // for a read of the database).
    let (texts, seen) = store.message_texts_seen(inbox.id, &[2, 1]).await.unwrap();
    assert_eq!(seen, None);
    assert_eq!(
        texts.iter().map(|(u, _)| *u).collect::<Vec<_>>(),
        [1, 2],
        "UID order"
    );
    assert_eq!(texts, store.message_texts(inbox.id, &[1, 2]).await.unwrap(),);
    assert_eq!(
        store.parse_caches_seen(inbox.id, &[2]).await.unwrap().1,
        None
    );
    assert_eq!(
        store.parse_caches_seen(inbox.id, &[99]).await.unwrap(),
        (Vec::new(), None)
    );

    // Bad flags and keywords are refused; so is an unknown mailbox.
    assert!(matches!(
        store.append_message(inbox.id, b"x", 64, &[], 0, None).await,
        Err(StoreError::InvalidArgument(_))
    ));
    for bad in ["a b", "", "\\Seen", "x]"] {
        assert!(matches!(
            store
                .append_message(inbox.id, b"x", 0, &kw(&[bad]), 0, None)
                .await,
            Err(StoreError::InvalidArgument(_))
        ));
    }
    assert!(matches!(
        store
            .append_message(inbox.id + 1000, b"x", 0, &[], 0, None)
            .await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(uids(store, inbox.id).await, [1, 2, 3, 4, 5]);

    // APPEND by name: the lookup and the append in one call.
    let (id, appended) = store
        .append_message_to(
            a,
            "Inbox",
            &content(6, 100),
            flag_bits::SEEN,
            &kw(&["$x"]),
            6 * DAY,
            None,
        )
        .await
        .unwrap();
    assert_eq!((id, appended.uid, appended.modseq), (inbox.id, 6, h + 6));
    let last = store.open_mailbox(a, "INBOX").await.unwrap().unwrap();
    assert_eq!(
        last.messages.last(),
        Some(&MessageMeta {
            uid: 6,
            modseq: h + 6,
            flags: flag_bits::SEEN,
            keywords: kw(&["$x"]),
            internal_date: 6 * DAY,
            size: 100
        })
    );
    assert!(matches!(
        store
            .append_message_to(a, "Nope", b"x", 0, &[], 0, None)
            .await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store
            .append_message_to(a, "INBOX", b"x", 64, &[], 0, None)
            .await,
        Err(StoreError::InvalidArgument(_))
    ));
    assert_eq!(uids(store, inbox.id).await, [1, 2, 3, 4, 5, 6]);
}

async fn store_flags_gives_one_modseq_per_call(store: &Store) {
    use flag_bits::{DELETED, DRAFT, FLAGGED, SEEN};
    let a = account(store, "alice@example.test", 0).await;
    let inbox = mailbox(store, a, "INBOX").await.id;
    for i in 1..=4 {
        append(store, inbox, i, 100).await;
    }
    let h = mailbox(store, a, "INBOX").await.highestmodseq;
    let meta = |uid: u32, modseq: u64, flags: i64, keywords: &[&str]| MessageMeta {
        uid,
        modseq,
        flags,
        keywords: kw(keywords),
        internal_date: uid as i64 * DAY,
        size: 100,
    };

    let out = store
        .store_flags(inbox, &[2, 1, 99, 1], FlagOp::Add, SEEN, &[], None)
        .await
        .unwrap();
    assert_eq!(
        out.updated,
        [meta(1, h + 1, SEEN, &[]), meta(2, h + 1, SEEN, &[])]
    );
    assert!(out.modified.is_empty());
    assert_eq!(out.highestmodseq, h + 1);
    assert_eq!(
        store.mailbox_messages(inbox).await.unwrap(),
        [
            meta(1, h + 1, SEEN, &[]),
            meta(2, h + 1, SEEN, &[]),
            meta(3, h - 1, 0, &[]),
            meta(4, h, 0, &[])
        ]
    );
    // Nothing changes: no new MODSEQ.
    let out = store
        .store_flags(inbox, &[1, 2], FlagOp::Add, SEEN, &[], None)
        .await
        .unwrap();
    assert!(out.updated.is_empty());
    assert_eq!(out.highestmodseq, h + 1);
    assert_eq!(mailbox(store, a, "INBOX").await.highestmodseq, h + 1);
    // Only the messages that change get the new MODSEQ.
    let out = store
        .store_flags(inbox, &[1, 2, 3, 4], FlagOp::Add, FLAGGED, &[], None)
        .await
        .unwrap();
    assert_eq!(out.updated.len(), 4);
    assert!(out.updated.iter().all(|m| m.modseq == h + 2));
    let out = store
        .store_flags(inbox, &[1, 2, 3], FlagOp::Remove, SEEN, &[], None)
        .await
        .unwrap();
    assert_eq!(
        out.updated,
        [meta(1, h + 3, FLAGGED, &[]), meta(2, h + 3, FLAGGED, &[])]
    );
    let out = store
        .store_flags(inbox, &[1], FlagOp::Replace, DRAFT, &kw(&["Work"]), None)
        .await
        .unwrap();
    assert_eq!(out.updated, [meta(1, h + 4, DRAFT, &["Work"])]);

    // Keywords compare without case; the first spelling stays.
    let out = store
        .store_flags(
            inbox,
            &[1, 2],
            FlagOp::Add,
            0,
            &kw(&["$Label", "$label", "WORK"]),
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        out.updated,
        [
            meta(1, h + 5, DRAFT, &["Work", "$Label"]),
            meta(2, h + 5, FLAGGED, &["$Label", "WORK"])
        ]
    );
    let out = store
        .store_flags(inbox, &[1], FlagOp::Add, 0, &kw(&["work", "$LABEL"]), None)
        .await
        .unwrap();
    assert!(out.updated.is_empty());
    assert_eq!(out.highestmodseq, h + 5);
    let out = store
        .store_flags(inbox, &[1, 2], FlagOp::Remove, 0, &kw(&["$LABEL"]), None)
        .await
        .unwrap();
    assert_eq!(
        out.updated,
        [
            meta(1, h + 6, DRAFT, &["Work"]),
            meta(2, h + 6, FLAGGED, &["WORK"])
        ]
    );
    // Replacing with the same set in another spelling changes nothing.
    let out = store
        .store_flags(inbox, &[1], FlagOp::Replace, DRAFT, &kw(&["WORK"]), None)
        .await
        .unwrap();
    assert!(out.updated.is_empty());
    let out = store
        .store_flags(inbox, &[1, 3], FlagOp::Replace, DELETED, &[], None)
        .await
        .unwrap();
    assert_eq!(
        out.updated,
        [meta(1, h + 7, DELETED, &[]), meta(3, h + 7, DELETED, &[])]
    );
    assert_eq!(
        store.mailbox_messages(inbox).await.unwrap(),
        [
            meta(1, h + 7, DELETED, &[]),
            meta(2, h + 6, FLAGGED, &["WORK"]),
            meta(3, h + 7, DELETED, &[]),
            meta(4, h + 2, FLAGGED, &[])
        ]
    );
    assert_eq!(mailbox(store, a, "INBOX").await.highestmodseq, h + 7);
    // No UIDs: nothing to do.
    let out = store
        .store_flags(inbox, &[], FlagOp::Add, SEEN, &[], None)
        .await
        .unwrap();
    assert!(out.updated.is_empty() && out.modified.is_empty());
    assert_eq!(out.highestmodseq, h + 7);

    assert!(matches!(
        store
            .store_flags(inbox, &[1], FlagOp::Add, 32, &[], None)
            .await,
        Err(StoreError::InvalidArgument(_))
    ));
    assert!(matches!(
        store
            .store_flags(inbox, &[1], FlagOp::Add, 0, &kw(&["two words"]), None)
            .await,
        Err(StoreError::InvalidArgument(_))
    ));
    assert!(matches!(
        store
            .store_flags(inbox + 1000, &[1], FlagOp::Add, SEEN, &[], None)
            .await,
        Err(StoreError::NotFound(_))
    ));
}

async fn unchanged_since_refuses_modified_messages(store: &Store) {
    use flag_bits::{FLAGGED, SEEN};
    let a = account(store, "alice@example.test", 0).await;
    let inbox = mailbox(store, a, "INBOX").await.id;
    for i in 1..=3 {
        append(store, inbox, i, 100).await;
    }
    let h = mailbox(store, a, "INBOX").await.highestmodseq;
    store
        .store_flags(inbox, &[2], FlagOp::Add, SEEN, &[], None)
        .await
        .unwrap();
    // Message 2 changed after h: refused, the others are stored.
    let out = store
        .store_flags(inbox, &[1, 2, 3], FlagOp::Add, FLAGGED, &[], Some(h))
        .await
        .unwrap();
    assert_eq!(out.modified, [2]);
    assert_eq!(
        out.updated
            .iter()
            .map(|m| (m.uid, m.modseq, m.flags))
            .collect::<Vec<_>>(),
        [(1, h + 2, FLAGGED), (3, h + 2, FLAGGED)]
    );
    assert_eq!(out.highestmodseq, h + 2);
    let metas = store.mailbox_messages(inbox).await.unwrap();
    assert_eq!((metas[1].flags, metas[1].modseq), (SEEN, h + 1));
    // UNCHANGEDSINCE 0 refuses every message and changes nothing.
    let out = store
        .store_flags(inbox, &[1, 2, 3], FlagOp::Replace, 0, &[], Some(0))
        .await
        .unwrap();
    assert_eq!(out.modified, [1, 2, 3]);
    assert!(out.updated.is_empty());
    assert_eq!(out.highestmodseq, h + 2);
    // Not modified since, and nothing to change: neither list.
    let out = store
        .store_flags(inbox, &[1], FlagOp::Add, FLAGGED, &[], Some(h + 2))
        .await
        .unwrap();
    assert!(out.updated.is_empty() && out.modified.is_empty());
    // Equal to the value given is "unchanged since".
    let out = store
        .store_flags(
            inbox,
            &[1, 2],
            FlagOp::Remove,
            FLAGGED | SEEN,
            &[],
            Some(h + 1),
        )
        .await
        .unwrap();
    assert_eq!(out.modified, [1]);
    assert_eq!(
        out.updated
            .iter()
            .map(|m| (m.uid, m.modseq, m.flags))
            .collect::<Vec<_>>(),
        [(2, h + 3, 0)]
    );
    assert_eq!(store.mailbox_messages(inbox).await.unwrap(), {
        let mut m = metas.clone();
        m[1].flags = 0;
        m[1].modseq = h + 3;
        m
    });
}

async fn changes_since_reports_changes_and_vanished(store: &Store) {
    let a = account(store, "alice@example.test", 0).await;
    let inbox = mailbox(store, a, "INBOX").await.id;
    for i in 1..=4 {
        append(store, inbox, i, 100).await;
    }
    let h = mailbox(store, a, "INBOX").await.highestmodseq;
    let all = store.changes_since(inbox, 0).await.unwrap();
    assert_eq!(
        all.changed
            .iter()
            .map(|m| (m.uid, m.modseq))
            .collect::<Vec<_>>(),
        [(1, h - 3), (2, h - 2), (3, h - 1), (4, h)]
    );
    assert!(all.vanished.is_empty());
    assert_eq!((all.highestmodseq, all.uidnext), (h, 5));
    let none = store.changes_since(inbox, h).await.unwrap();
    assert!(none.changed.is_empty() && none.vanished.is_empty());

    store
        .store_flags(inbox, &[2], FlagOp::Add, flag_bits::SEEN, &[], None)
        .await
        .unwrap();
    store
        .store_flags(inbox, &[3, 1], FlagOp::Add, flag_bits::DELETED, &[], None)
        .await
        .unwrap();
    assert_eq!(store.expunge_deleted(inbox, None).await.unwrap(), [1, 3]);
    let c = store.changes_since(inbox, h).await.unwrap();
    assert_eq!(
        c.changed,
        [MessageMeta {
            uid: 2,
            modseq: h + 1,
            flags: flag_bits::SEEN,
            keywords: vec![],
            internal_date: 2 * DAY,
            size: 100
        }]
    );
    assert_eq!(c.vanished, [1, 3]);
    assert_eq!((c.highestmodseq, c.uidnext), (h + 3, 5));
    // Since the flag change: only the expunges.
    let c = store.changes_since(inbox, h + 1).await.unwrap();
    assert!(c.changed.is_empty());
    assert_eq!(c.vanished, [1, 3]);
    // A new message is a change too.
    append(store, inbox, 5, 100).await;
    let c = store.changes_since(inbox, h + 3).await.unwrap();
    assert_eq!(
        c.changed
            .iter()
            .map(|m| (m.uid, m.modseq))
            .collect::<Vec<_>>(),
        [(5, h + 4)]
    );
    assert!(c.vanished.is_empty());
    assert_eq!((c.highestmodseq, c.uidnext), (h + 4, 6));
    assert!(matches!(
        store.changes_since(inbox + 1000, 0).await,
        Err(StoreError::NotFound(_))
    ));
}

async fn copy_and_move_allocate_uids_and_account_quota(store: &Store) {
    let a = account(store, "alice@example.test", 0).await;
    let address = addr("alice@example.test");
    let inbox = mailbox(store, a, "INBOX").await;
    let dest = store.create_mailbox(a, "Dest", None).await.unwrap();
    store
        .append_message(
            inbox.id,
            &content(1, 100),
            flag_bits::SEEN,
            &kw(&["$Work"]),
            DAY,
            Some("c1"),
        )
        .await
        .unwrap();
    append(store, inbox.id, 2, 200).await;
    append(store, inbox.id, 3, 300).await;
    store
        .append_message(
            inbox.id,
            &content(4, 400),
            flag_bits::FLAGGED,
            &[],
            4 * DAY,
            Some("c4"),
        )
        .await
        .unwrap();
    store
        .store_flags(inbox.id, &[2], FlagOp::Add, flag_bits::DELETED, &[], None)
        .await
        .unwrap();
    store.expunge_deleted(inbox.id, None).await.unwrap();
    assert_eq!(used(store, a).await, 800);
    let source_before = store.mailbox_messages(inbox.id).await.unwrap();
    let source_h = mailbox(store, a, "INBOX").await.highestmodseq;

    // COPY: existing UIDs only, in source order, one MODSEQ.
    let copied = store
        .copy_messages(inbox.id, &[4, 1, 2, 99], dest.id)
        .await
        .unwrap();
    assert_eq!(
        copied,
        Copied {
            uidvalidity: dest.uidvalidity,
            pairs: vec![(1, 1), (4, 2)]
        }
    );
    let in_dest = store.mailbox_messages(dest.id).await.unwrap();
    assert_eq!(
        in_dest,
        [
            MessageMeta {
                uid: 1,
                modseq: 2,
                ..source_before[0].clone()
            },
            MessageMeta {
                uid: 2,
                modseq: 2,
                ..source_before[2].clone()
            }
        ]
    );
    assert_eq!(
        store.message_texts(dest.id, &[1, 2]).await.unwrap(),
        [(1, content(1, 100)), (2, content(4, 400))]
    );
    assert_eq!(
        store.parse_caches(dest.id, &[1, 2]).await.unwrap(),
        [(1, Some("c1".to_string())), (2, Some("c4".to_string()))]
    );
    let d = mailbox(store, a, "Dest").await;
    assert_eq!((d.uidnext, d.highestmodseq), (3, 2));
    assert_eq!(used(store, a).await, 1300);
    // The source is untouched.
    assert_eq!(
        store.mailbox_messages(inbox.id).await.unwrap(),
        source_before
    );
    assert_eq!(mailbox(store, a, "INBOX").await.highestmodseq, source_h);

    // Nothing to copy: nothing happens.
    let none = store
        .copy_messages(inbox.id, &[2, 50], dest.id)
        .await
        .unwrap();
    assert_eq!(
        none,
        Copied {
            uidvalidity: dest.uidvalidity,
            pairs: vec![]
        }
    );
    assert_eq!(mailbox(store, a, "Dest").await, d);

    // Over quota: nothing copied.
    store.set_quota(&address, 1300 + 399).await.unwrap();
    assert!(matches!(
        store.copy_messages(inbox.id, &[4], dest.id).await,
        Err(StoreError::FailedPrecondition(m)) if m.starts_with("OVERQUOTA")
    ));
    assert_eq!(mailbox(store, a, "Dest").await, d);
    assert_eq!(used(store, a).await, 1300);

    // MOVE: even at a full quota (it is net zero).
    store.set_quota(&address, 1300).await.unwrap();
    let moved = store
        .move_messages(inbox.id, &[3, 4], dest.id)
        .await
        .unwrap();
    assert_eq!(moved.pairs, [(3, 3), (4, 4)]);
    assert_eq!(moved.uidvalidity, dest.uidvalidity);
    assert_eq!(used(store, a).await, 1300);
    assert_eq!(uids(store, inbox.id).await, [1]);
    assert_eq!(uids(store, dest.id).await, [1, 2, 3, 4]);
    let d = mailbox(store, a, "Dest").await;
    assert_eq!((d.uidnext, d.highestmodseq), (5, 3));
    let moved_metas = store.mailbox_messages(dest.id).await.unwrap();
    assert_eq!(
        moved_metas[2..],
        [
            MessageMeta {
                uid: 3,
                modseq: 3,
                ..source_before[1].clone()
            },
            MessageMeta {
                uid: 4,
                modseq: 3,
                ..source_before[2].clone()
            }
        ]
    );
    let c = store.changes_since(inbox.id, source_h).await.unwrap();
    assert_eq!(c.vanished, [3, 4]);
    assert!(c.changed.is_empty());
    assert_eq!(c.highestmodseq, source_h + 1);
    assert_eq!(
        expunged_rows(store, inbox.id).await,
        [
            (2, source_h as i64),
            (3, source_h as i64 + 1),
            (4, source_h as i64 + 1)
        ]
    );
    store.set_quota(&address, 0).await.unwrap();

    // Within one mailbox: new UIDs there.
    let same = store.copy_messages(dest.id, &[1], dest.id).await.unwrap();
    assert_eq!(same.pairs, [(1, 5)]);
    let same = store.move_messages(dest.id, &[2], dest.id).await.unwrap();
    assert_eq!(same.pairs, [(2, 6)]);
    assert_eq!(uids(store, dest.id).await, [1, 3, 4, 5, 6]);
    assert_eq!(used(store, a).await, 1400);

    // Another account's mailbox, or none.
    let bob = account(store, "bob@example.test", 0).await;
    let bobs = mailbox(store, bob, "INBOX").await;
    assert!(matches!(
        store.copy_messages(inbox.id, &[1], bobs.id).await,
        Err(StoreError::FailedPrecondition(_))
    ));
    assert!(matches!(
        store.move_messages(inbox.id, &[1], bobs.id).await,
        Err(StoreError::FailedPrecondition(_))
    ));
    assert!(matches!(
        store.copy_messages(inbox.id, &[1], dest.id + 1000).await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(uids(store, inbox.id).await, [1]);
    assert!(uids(store, bobs.id).await.is_empty());
}

async fn expunge_removes_only_deleted_messages(store: &Store) {
    let a = account(store, "alice@example.test", 0).await;
    let inbox = mailbox(store, a, "INBOX").await.id;
    for i in 1..=5 {
        append(store, inbox, i, i * 20).await;
    }
    assert_eq!(used(store, a).await, 300);
    store
        .store_flags(
            inbox,
            &[1, 2, 4, 5],
            FlagOp::Add,
            flag_bits::DELETED,
            &[],
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        store.mailbox_counts(inbox).await.unwrap(),
        MailboxCounts {
            messages: 5,
            unseen: 5,
            deleted: 4,
            deleted_size: 240,
            size: 300
        }
    );
    let h = mailbox(store, a, "INBOX").await.highestmodseq;
    // UID EXPUNGE: only the UIDs given, and only those \Deleted.
    assert_eq!(
        store
            .expunge_deleted(inbox, Some(&[4, 2, 3, 99]))
            .await
            .unwrap(),
        [2, 4]
    );
    assert_eq!(uids(store, inbox).await, [1, 3, 5]);
    assert_eq!(used(store, a).await, 300 - 40 - 80);
    assert_eq!(mailbox(store, a, "INBOX").await.highestmodseq, h + 1);
    assert_eq!(
        expunged_rows(store, inbox).await,
        [(2, h as i64 + 1), (4, h as i64 + 1)]
    );
    // Nothing to remove: no new MODSEQ.
    assert!(
        store
            .expunge_deleted(inbox, Some(&[]))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .expunge_deleted(inbox, Some(&[3]))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(mailbox(store, a, "INBOX").await.highestmodseq, h + 1);
    // EXPUNGE: every \Deleted message.
    assert_eq!(store.expunge_deleted(inbox, None).await.unwrap(), [1, 5]);
    assert_eq!(uids(store, inbox).await, [3]);
    assert_eq!(used(store, a).await, 60);
    assert_eq!(mailbox(store, a, "INBOX").await.highestmodseq, h + 2);
    assert!(store.expunge_deleted(inbox, None).await.unwrap().is_empty());
    assert_eq!(mailbox(store, a, "INBOX").await.highestmodseq, h + 2);
    assert_eq!(
        store.mailbox_counts(inbox).await.unwrap(),
        MailboxCounts {
            messages: 1,
            unseen: 1,
            deleted: 0,
            deleted_size: 0,
            size: 60
        }
    );
    // UIDs are never reused.
    assert_eq!(append(store, inbox, 6, 20).await, 6);
    assert!(matches!(
        store.expunge_deleted(inbox + 1000, None).await,
        Err(StoreError::NotFound(_))
    ));
}

async fn long_uid_lists_are_handled_in_chunks(store: &Store) {
    let a = account(store, "alice@example.test", 0).await;
    let inbox = mailbox(store, a, "INBOX").await.id;
    for i in 1..=8 {
        append(store, inbox, i, 50).await;
    }
    // Double the mailbox by copying it into itself: 8 → 1024 messages.
    let mut n: u32 = 8;
    while n < 1024 {
        let all: Vec<u32> = (1..=n).collect();
        let copied = store.copy_messages(inbox, &all, inbox).await.unwrap();
        assert_eq!(copied.pairs.len(), n as usize);
        assert_eq!(copied.pairs.last(), Some(&(n, 2 * n)));
        n *= 2;
    }
    assert_eq!(used(store, a).await, 1024 * 50);
    let all: Vec<u32> = (1..=1024).collect();
    assert_eq!(uids(store, inbox).await, all);

    // 512 separate ranges: more than one statement's worth.
    let odd: Vec<u32> = (1..=1024).filter(|u| u % 2 == 1).collect();
    let out = store
        .store_flags(inbox, &odd, FlagOp::Add, flag_bits::SEEN, &[], None)
        .await
        .unwrap();
    assert_eq!(out.updated.iter().map(|m| m.uid).collect::<Vec<_>>(), odd);
    let metas = store.mailbox_messages(inbox).await.unwrap();
    assert!(
        metas
            .iter()
            .all(|m| (m.flags == flag_bits::SEEN) == (m.uid % 2 == 1))
    );
    assert!(
        metas
            .iter()
            .all(|m| (m.modseq == out.highestmodseq) == (m.uid % 2 == 1))
    );

    let thirds: Vec<u32> = (1..=1024).filter(|u| u % 3 == 0).collect();
    store
        .store_flags(inbox, &thirds, FlagOp::Add, flag_bits::DELETED, &[], None)
        .await
        .unwrap();
    assert_eq!(store.expunge_deleted(inbox, None).await.unwrap(), thirds);
    let left: Vec<u32> = all.iter().copied().filter(|u| u % 3 != 0).collect();
    assert_eq!(uids(store, inbox).await, left);
    assert_eq!(used(store, a).await, left.len() as u64 * 50);
    assert_eq!(
        store.mailbox_counts(inbox).await.unwrap(),
        MailboxCounts {
            messages: left.len() as u32,
            unseen: left.iter().filter(|u| *u % 2 == 0).count() as u32,
            deleted: 0,
            deleted_size: 0,
            size: left.len() as u64 * 50
        }
    );
    // Reads and writes over the fragmented UIDs (asking for expunged ones too).
    let texts = store.message_texts(inbox, &odd).await.unwrap();
    let odd_left: Vec<u32> = odd.iter().copied().filter(|u| u % 3 != 0).collect();
    assert_eq!(texts.iter().map(|t| t.0).collect::<Vec<_>>(), odd_left);
    // UID u holds the content of message ((u - 1) % 8) + 1.
    assert!(
        texts
            .iter()
            .all(|(u, t)| *t == content(((*u as usize - 1) % 8) + 1, 50))
    );
    assert_eq!(
        store.parse_caches(inbox, &all).await.unwrap().len(),
        left.len()
    );
    let dest = store.create_mailbox(a, "Dest", None).await.unwrap().id;
    let moved = store.move_messages(inbox, &odd, dest).await.unwrap();
    let expected: Vec<(u32, u32)> = odd_left.iter().copied().zip(1..).collect();
    assert_eq!(moved.pairs, expected);
    let even_left: Vec<u32> = left.iter().copied().filter(|u| u % 2 == 0).collect();
    assert_eq!(uids(store, inbox).await, even_left);
    let in_dest = store.mailbox_messages(dest).await.unwrap();
    assert_eq!(in_dest.len(), odd_left.len());
    assert!(in_dest.iter().all(|m| m.flags == flag_bits::SEEN));
    assert_eq!(used(store, a).await, left.len() as u64 * 50);
    let vanished = store
        .changes_since(inbox, out.highestmodseq)
        .await
        .unwrap()
        .vanished;
    let mut gone: Vec<u32> = thirds.iter().chain(&odd_left).copied().collect();
    gone.sort_unstable();
    assert_eq!(vanished, gone);
}

/// The next event, within a second.
async fn next_event(rx: &mut tokio::sync::broadcast::Receiver<MailboxEvent>) -> MailboxEvent {
    tokio::time::timeout(Duration::from_secs(1), rx.recv())
        .await
        .expect("an event within a second")
        .expect("no lag")
}

async fn events_announce_every_change(store: &Store) {
    let a = account(store, "alice@example.test", 0).await;
    let inbox = mailbox(store, a, "INBOX").await.id;
    let mut rx = store.subscribe().await.unwrap();
    let event = |mailbox_id: i64, uid: u32, modseq: u64| MailboxEvent {
        account_id: a,
        mailbox_id,
        uid,
        modseq,
    };
    // Creating and (un)subscribing, at the mailbox's HIGHESTMODSEQ (IMAP
    // NOTIFY's MailboxName and SubscriptionChange).
    let created = store.create_mailbox(a, "Dest", None).await.unwrap();
    let dest = created.id;
    assert_eq!(
        next_event(&mut rx).await,
        event(dest, 0, created.highestmodseq)
    );
    store.set_subscribed(a, "Dest", true).await.unwrap();
    assert_eq!(
        next_event(&mut rx).await,
        event(dest, 0, created.highestmodseq)
    );
    // New messages, one event each, in order.
    append(store, inbox, 1, 100).await;
    append(store, inbox, 2, 100).await;
    let first = next_event(&mut rx).await;
    let second = next_event(&mut rx).await;
    assert_eq!((first.mailbox_id, first.uid), (inbox, 1), "{first:?}");
    assert_eq!((second.mailbox_id, second.uid), (inbox, 2), "{second:?}");
    assert!(first.modseq < second.modseq);

    // A flag change.
    let out = store
        .store_flags(inbox, &[1], FlagOp::Add, flag_bits::SEEN, &[], None)
        .await
        .unwrap();
    assert_eq!(
        next_event(&mut rx).await,
        event(inbox, 0, out.highestmodseq)
    );
    // A STORE that changes nothing is not announced: the next event is the
    // next change.
    store
        .store_flags(inbox, &[1], FlagOp::Add, flag_bits::SEEN, &[], None)
        .await
        .unwrap();
    let out = store
        .store_flags(inbox, &[2], FlagOp::Add, flag_bits::DELETED, &[], None)
        .await
        .unwrap();
    assert_eq!(
        next_event(&mut rx).await,
        event(inbox, 0, out.highestmodseq)
    );
    // An expunge.
    assert_eq!(store.expunge_deleted(inbox, None).await.unwrap(), [2]);
    assert_eq!(
        next_event(&mut rx).await,
        event(inbox, 0, out.highestmodseq + 1)
    );
    // APPEND: the new UID.
    let appended = store
        .append_message(inbox, b"Subject: x\r\n\r\n", 0, &[], 0, None)
        .await
        .unwrap();
    assert_eq!(next_event(&mut rx).await, event(inbox, 3, appended.modseq));
    // COPY: the destination, with the highest new UID.
    store.copy_messages(inbox, &[1, 3], dest).await.unwrap();
    assert_eq!(next_event(&mut rx).await, event(dest, 2, 2));
    // MOVE: both mailboxes.
    store.move_messages(inbox, &[1], dest).await.unwrap();
    assert_eq!(next_event(&mut rx).await, event(dest, 3, 3));
    assert_eq!(
        next_event(&mut rx).await,
        event(inbox, 0, appended.modseq + 1)
    );
    // A POP3 expunge.
    assert_eq!(store.expunge_maildrop(inbox, &[3]).await.unwrap(), 1);
    assert_eq!(
        next_event(&mut rx).await,
        event(inbox, 0, appended.modseq + 2)
    );
    // Renaming and deleting.
    store.rename_mailbox(a, "Dest", "Renamed").await.unwrap();
    assert_eq!(next_event(&mut rx).await, event(dest, 0, 3));
    store.delete_mailbox(a, "Renamed").await.unwrap();
    assert_eq!(next_event(&mut rx).await, event(dest, 0, 4));
    // Nothing else was sent.
    assert!(
        tokio::time::timeout(Duration::from_millis(200), rx.recv())
            .await
            .is_err()
    );
}

/// Lowest `n` UIDs of a mailbox.
async fn lowest(store: &Store, mailbox: i64, n: usize) -> Vec<u32> {
    uids(store, mailbox).await.into_iter().take(n).collect()
}

async fn concurrent_writers_keep_the_invariants(store: &Store) {
    let a = account(store, "alice@example.test", 0).await;
    let inbox = mailbox(store, a, "INBOX").await.id;
    let other = store.create_mailbox(a, "Other", None).await.unwrap().id;
    for i in 0..10 {
        append(store, inbox, i + 1, 40 + i).await;
        append(store, other, i + 11, 60 + i).await;
    }
    let mut tasks = tokio::task::JoinSet::new();
    // COPY both ways and MOVE: transactions holding two mailboxes.
    for (from, to) in [(inbox, other), (other, inbox)] {
        let s = store.clone();
        tasks.spawn(async move {
            for _ in 0..8 {
                let u = lowest(&s, from, 3).await;
                s.copy_messages(from, &u, to).await.unwrap();
                let u = lowest(&s, from, 1).await;
                s.move_messages(from, &u, to).await.unwrap();
            }
        });
    }
    // STORE over everything.
    let s = store.clone();
    tasks.spawn(async move {
        for i in 0..10 {
            for mb in [inbox, other] {
                let u = uids(&s, mb).await;
                let op = if i % 2 == 0 {
                    FlagOp::Add
                } else {
                    FlagOp::Remove
                };
                s.store_flags(mb, &u, op, flag_bits::SEEN, &kw(&["$K"]), None)
                    .await
                    .unwrap();
            }
        }
    });
    // APPEND and deliveries.
    let s = store.clone();
    tasks.spawn(async move {
        let target = LocalTarget {
            account_id: a,
            address: "alice@example.test".into(),
            folder: None,
        };
        for i in 0..10 {
            append(&s, other, 100 + i, 30).await;
            let body = content(200 + i, 50);
            let blob = s.put_blob(&body).await.unwrap();
            let stored = s
                .store_message(
                    &target,
                    &Folder::Inbox,
                    &NewMessage {
                        blob,
                        blob_size: 50,
                        prefix: Vec::new(),
                        parse_cache: None,
                        delivery_key: format!("concurrent-{i}"),
                        internal_date: 0,
                    },
                )
                .await
                .unwrap();
            assert!(matches!(stored, Stored::New(_)));
        }
    });
    // \Deleted and EXPUNGE.
    let s = store.clone();
    tasks.spawn(async move {
        for _ in 0..10 {
            for mb in [inbox, other] {
                let u = lowest(&s, mb, 2).await;
                s.store_flags(mb, &u, FlagOp::Add, flag_bits::DELETED, &[], None)
                    .await
                    .unwrap();
                s.expunge_deleted(mb, None).await.unwrap();
            }
        }
    });
    while let Some(done) = tasks.join_next().await {
        done.expect("a writer failed");
    }

    // The quota is the sum of what is stored.
    let mut total = 0;
    for mb in [inbox, other] {
        let snapshot = store.mailbox_snapshot(mb).await.unwrap().unwrap();
        total += snapshot.messages.iter().map(|m| m.size).sum::<u64>();
        let uids: Vec<u32> = snapshot.messages.iter().map(|m| m.uid).collect();
        let mut sorted = uids.clone();
        sorted.dedup();
        assert_eq!(sorted, uids, "UIDs unique and ascending");
        // Every UID below UIDNEXT, every MODSEQ at most HIGHESTMODSEQ.
        assert!(uids.iter().all(|&u| u < snapshot.mailbox.uidnext));
        let h = snapshot.mailbox.highestmodseq;
        assert!(snapshot.messages.iter().all(|m| m.modseq <= h));
        let expunged = expunged_rows(store, mb).await;
        assert!(
            expunged
                .iter()
                .all(|&(u, m)| m as u64 <= h && !uids.contains(&(u as u32)))
        );
        // Everything after 0 is exactly the present messages and the expunged UIDs.
        let all = store.changes_since(mb, 0).await.unwrap();
        assert_eq!(all.changed, snapshot.messages);
        let gone: Vec<u32> = expunged.iter().map(|&(u, _)| u as u32).collect();
        assert_eq!(all.vanished, gone);
        // UIDs were allocated without gaps: present + expunged = 1..UIDNEXT.
        let mut every: Vec<u32> = uids.iter().chain(&gone).copied().collect();
        every.sort_unstable();
        assert_eq!(every, (1..snapshot.mailbox.uidnext).collect::<Vec<_>>());
    }
    assert_eq!(used(store, a).await, total);
}

/// PostgreSQL only: when the server ends the store's connections (a
/// restart, an operator's `pg_terminate_backend`), one command fails with
/// `Unavailable` and the next ones work again on new connections; a
/// statement PostgreSQL refuses leaves its connection usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_lost_to_a_server_restart_are_replaced() {
    let Some((store, db)) = mailroom_store::testing::TestDb::postgres().await else {
        return;
    };
    let a = account(&store, "alice@example.test", 0).await;
    // Open several connections of each kind, so that there are idle ones.
    let mut reads = tokio::task::JoinSet::new();
    for _ in 0..6 {
        let s = store.clone();
        reads.spawn(async move { s.open_mailbox(a, "INBOX").await });
    }
    while let Some(r) = reads.join_next().await {
        assert!(r.unwrap().unwrap().is_some());
    }
    assert!(matches!(
        store
            .append_message_to(a, "Nope", b"x", 0, &[], 0, None)
            .await,
        Err(StoreError::NotFound(_))
    ));
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&db.url)
        .await
        .unwrap();
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
          WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert!(killed >= 2, "killed {killed}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut failures = 0;
    for _ in 0..4 {
        match store.open_mailbox(a, "INBOX").await {
            Ok(found) => assert!(found.is_some()),
            Err(StoreError::Unavailable(_)) => failures += 1,
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert!(
        failures <= 1,
        "{failures} failed commands after the restart"
    );
    assert!(store.open_mailbox(a, "INBOX").await.unwrap().is_some());
}

/// Waits (up to 5 s) until `f` holds.
async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !f().await {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// PostgreSQL only: what a process knows of a mailbox without asking the
/// database (`Store::is_current`) follows its own changes at once and
/// another process's through the notifications; a rename elsewhere (which
/// leaves HIGHESTMODSEQ alone) drops it, and so does losing the LISTEN
/// connection, until it is back; nothing is known before the process
/// listens, or ever with `fresh_for` zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_process_knows_follows_every_process() {
    let Some((_, db)) = mailroom_store::testing::TestDb::postgres().await else {
        return;
    };
    // Marks trusted for a minute, not the default second: a loaded machine
    // may take longer than a second over the round trips below (issue 18).
    // Expiry itself is `known.rs`'s `marks_expire`.
    let options = mailroom_store::StoreOptions {
        fresh_for: Duration::from_secs(60),
        ..Default::default()
    };
    let store = Store::connect(&db.url, &options).await.unwrap();
    let other = Store::connect(&db.url, &options).await.unwrap();
    let a = account(&store, "alice@example.test", 0).await;
    let inbox = mailbox(&store, a, "INBOX").await;
    let uid = append(&store, inbox.id, 1, 100).await;
    let h = store
        .open_mailbox(a, "INBOX")
        .await
        .unwrap()
        .unwrap()
        .mailbox
        .highestmodseq;
    assert!(!store.is_current(inbox.id, h), "known before listening");
    // Another process reads the message from the database, and tells the
    // HIGHESTMODSEQ its read saw.
    let (texts, seen) = other.message_texts_seen(inbox.id, &[uid]).await.unwrap();
    assert_eq!(
        (texts[0].1.as_slice(), seen),
        (content(1, 100).as_slice(), Some(h))
    );
    assert_eq!(
        other.parse_caches_seen(inbox.id, &[uid]).await.unwrap().1,
        Some(h)
    );
    let mut events = store.subscribe().await.unwrap();
    let h = store
        .open_mailbox(a, "INBOX")
        .await
        .unwrap()
        .unwrap()
        .mailbox
        .highestmodseq;
    assert!(store.is_current(inbox.id, h));
    // Its own change: at once.
    let out = store
        .store_flags(inbox.id, &[uid], FlagOp::Add, flag_bits::SEEN, &[], None)
        .await
        .unwrap();
    assert_eq!(out.highestmodseq, h + 1);
    assert!(store.is_current(inbox.id, h + 1) && !store.is_current(inbox.id, h));
    // Another process's: once its notification arrives.
    other
        .store_flags(inbox.id, &[uid], FlagOp::Add, flag_bits::FLAGGED, &[], None)
        .await
        .unwrap();
    eventually("the other process's change is known", async || {
        store.is_current(inbox.id, h + 2)
    })
    .await;
    assert!(!store.is_current(inbox.id, h + 1));
    // A rename elsewhere.
    let work = store.create_mailbox(a, "Work", None).await.unwrap();
    let hw = store
        .open_mailbox(a, "Work")
        .await
        .unwrap()
        .unwrap()
        .mailbox
        .highestmodseq;
    assert!(store.is_current(work.id, hw));
    other.rename_mailbox(a, "Work", "Play").await.unwrap();
    eventually("a rename elsewhere drops what is known", async || {
        !store.is_current(work.id, hw)
    })
    .await;
    // Losing LISTEN: nothing is trusted until it is back.
    assert!(store.is_current(inbox.id, h + 2));
    assert_eq!(
        mailroom_store::testing::end_listen_connections(&db.url).await,
        1
    );
    eventually("a lost LISTEN drops what is known", async || {
        !store.is_current(inbox.id, h + 2)
    })
    .await;
    eventually("LISTEN is back", async || {
        store.open_mailbox(a, "INBOX").await.is_ok() && store.is_current(inbox.id, h + 2)
    })
    .await;
    // Subscribers are told that changes may have gone unannounced.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Ok(e)) if e.is_resync() => break,
            Ok(Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
            other => panic!("no resync event after LISTEN came back: {other:?}"),
        }
    }
    other
        .store_flags(
            inbox.id,
            &[uid],
            FlagOp::Remove,
            flag_bits::FLAGGED,
            &[],
            None,
        )
        .await
        .unwrap();
    eventually("changes are heard again", async || {
        store.is_current(inbox.id, h + 3)
    })
    .await;
    // Turned off.
    let off = Store::connect(
        &db.url,
        &mailroom_store::StoreOptions {
            fresh_for: Duration::ZERO,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let _events = off.subscribe().await.unwrap();
    let h = off
        .open_mailbox(a, "INBOX")
        .await
        .unwrap()
        .unwrap()
        .mailbox
        .highestmodseq;
    assert!(!off.is_current(inbox.id, h));
    off.close().await;
    other.close().await;
}

/// Reads a whole text through [`Store::open_text`]; the text and the sizes
/// of its pieces.
async fn read_in_pieces(
    store: &Store,
    mailbox: i64,
    uid: u32,
    piece: usize,
) -> (Vec<u8>, Vec<usize>) {
    let mut reader = store.open_text(mailbox, uid, piece).await.unwrap().unwrap();
    let len = reader.len();
    let (mut text, mut sizes) = (Vec::new(), Vec::new());
    while let Some(p) = reader.next_piece().await.unwrap() {
        assert!(!p.is_empty());
        sizes.push(p.len());
        text.extend_from_slice(&p);
    }
    assert_eq!(text.len() as u64, len);
    (text, sizes)
}

/// FETCH of a large message reads it in pieces: the prefix of a delivered
/// message, then its content, the same bytes as a whole read. Pieces are
/// as asked where cutting them is cheap (content PostgreSQL keeps
/// uncompressed); compressed content comes in four, and SQLite's in one.
async fn texts_are_read_in_pieces(store: &Store) {
    let sqlite = store.backend_name() == "sqlite";
    let a = account(store, "alice@example.test", 0).await;
    let inbox = mailbox(store, a, "INBOX").await;
    let uid = append(store, inbox.id, 1, 1000).await;
    for piece in [1, 300, 1000, 5000] {
        let (text, sizes) = read_in_pieces(store, inbox.id, uid, piece).await;
        assert_eq!(text, content(1, 1000));
        if sqlite {
            assert_eq!(sizes, [1000]);
        } else {
            assert_eq!(sizes.len(), 1000usize.div_ceil(piece), "{sizes:?}");
        }
    }
    // Large and compressible: PostgreSQL compresses it.
    let uid = append(store, inbox.id, 3, 100_000).await;
    let (text, sizes) = read_in_pieces(store, inbox.id, uid, 1000).await;
    assert_eq!(text, content(3, 100_000));
    assert_eq!(
        sizes,
        if sqlite {
            vec![100_000]
        } else {
            vec![25_000; 4]
        }
    );
    let target = LocalTarget {
        account_id: a,
        address: "alice@example.test".into(),
        folder: None,
    };
    let body = content(2, 700);
    let blob = store.put_blob(&body).await.unwrap();
    let prefix = b"Delivered-To: alice@example.test\r\n".to_vec();
    let Stored::New(event) = store
        .store_message(
            &target,
            &Folder::Inbox,
            &NewMessage {
                blob,
                blob_size: body.len() as u64,
                prefix: prefix.clone(),
                parse_cache: None,
                delivery_key: "pieces".into(),
                internal_date: 0,
            },
        )
        .await
        .unwrap()
    else {
        panic!("not stored")
    };
    let whole = store.message_texts(inbox.id, &[event.uid]).await.unwrap();
    assert_eq!(whole[0].1, [prefix.clone(), body].concat());
    let (text, sizes) = read_in_pieces(store, inbox.id, event.uid, 256).await;
    assert_eq!(text, whole[0].1);
    assert_eq!(sizes[0], prefix.len(), "the prefix first");
    assert!(store.open_text(inbox.id, 99, 10).await.unwrap().is_none());
}

/// METADATA (RFC 5464): set, replace, remove, the entry limit (all or
/// nothing), accounts and scopes kept apart.
fn md_entry(entry: &str, value: Option<&[u8]>) -> (String, Option<Vec<u8>>) {
    (entry.to_string(), value.map(<[u8]>::to_vec))
}

async fn metadata_entries_are_set_replaced_and_removed(store: &Store) {
    let alice = account(store, "alice@example.test", 0).await;
    let bob = account(store, "bob@example.test", 0).await;
    assert!(
        store
            .set_metadata(
                alice,
                None,
                &[
                    md_entry("/private/comment", Some(b"one")),
                    md_entry("/shared/comment", Some(b"\x00two"))
                ],
                10
            )
            .await
            .unwrap()
    );
    assert!(
        store
            .set_metadata(
                alice,
                None,
                &[md_entry("/private/comment", Some(b"uno"))],
                10
            )
            .await
            .unwrap()
    );
    assert_eq!(
        store.get_metadata(alice, None).await.unwrap(),
        vec![
            ("/private/comment".to_string(), b"uno".to_vec()),
            ("/shared/comment".to_string(), b"\x00two".to_vec())
        ]
    );
    assert!(store.get_metadata(bob, None).await.unwrap().is_empty());
    // Over the limit: nothing changes, not even the removal in the same call.
    assert!(
        !store
            .set_metadata(
                alice,
                None,
                &[
                    md_entry("/shared/comment", None),
                    md_entry("/private/a", Some(b"1")),
                    md_entry("/private/b", Some(b"2"))
                ],
                2
            )
            .await
            .unwrap()
    );
    assert_eq!(store.get_metadata(alice, None).await.unwrap().len(), 2);
    assert!(
        store
            .set_metadata(
                alice,
                None,
                &[
                    md_entry("/shared/comment", None),
                    md_entry("/private/missing", None)
                ],
                2
            )
            .await
            .unwrap()
    );
    assert_eq!(
        store.get_metadata(alice, None).await.unwrap(),
        vec![("/private/comment".to_string(), b"uno".to_vec())]
    );
}

/// A mailbox's METADATA entries follow RENAME and go with DELETE.
async fn metadata_follows_rename_and_goes_with_delete(store: &Store) {
    let alice = account(store, "alice@example.test", 0).await;
    let a = store.create_mailbox(alice, "a", None).await.unwrap();
    assert!(
        store
            .set_metadata(
                alice,
                Some(a.id),
                &[md_entry("/private/comment", Some(b"box"))],
                10
            )
            .await
            .unwrap()
    );
    assert!(
        store
            .set_metadata(
                alice,
                None,
                &[md_entry("/private/comment", Some(b"server"))],
                10
            )
            .await
            .unwrap()
    );
    store.rename_mailbox(alice, "a", "b").await.unwrap();
    let b = store.mailbox_by_name(alice, "b").await.unwrap().unwrap();
    assert_eq!(
        store.get_metadata(alice, Some(b.id)).await.unwrap(),
        vec![("/private/comment".to_string(), b"box".to_vec())]
    );
    store.delete_mailbox(alice, "b").await.unwrap();
    assert!(
        store
            .get_metadata(alice, Some(b.id))
            .await
            .unwrap()
            .is_empty()
    );
    let again = store.create_mailbox(alice, "b", None).await.unwrap();
    assert!(
        store
            .get_metadata(alice, Some(again.id))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.get_metadata(alice, None).await.unwrap(),
        vec![("/private/comment".to_string(), b"server".to_vec())]
    );
}
