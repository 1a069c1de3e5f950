//! The POP3 maildrop functions of the store, on SQLite and on PostgreSQL:
//! the login snapshot, the one-session lock and the atomic UPDATE-state
//! expunge.

use mailroom_address::{Address, Domain};
use mailroom_store::{Folder, LocalTarget, NewMessage, Store, Stored};

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
    snapshot_lists_the_inbox_in_uid_order,
    expunge_removes_records_and_refunds_atomically,
    the_maildrop_lock_admits_one_session,
);

const PW: &str = "correct horse battery";

/// An account with `n` messages in its INBOX; returns (account id, INBOX id).
async fn account_with_messages(store: &Store, address: &str, n: usize) -> (i64, i64) {
    let _ = store
        .add_domain(&Domain::parse("example.test").unwrap())
        .await;
    let account = store
        .create_account(&Address::parse(address).unwrap(), PW, 0)
        .await
        .unwrap();
    let target = LocalTarget {
        account_id: account.id,
        address: account.address.clone(),
        folder: None,
    };
    for i in 0..n {
        deliver(store, &target, i).await;
    }
    let inbox = store
        .list_mailboxes(account.id)
        .await
        .unwrap()
        .into_iter()
        .find(|m| m.name == "INBOX")
        .unwrap();
    (account.id, inbox.id)
}

async fn inbox_of(store: &Store, account: i64) -> mailroom_store::Mailbox {
    store
        .list_mailboxes(account)
        .await
        .unwrap()
        .into_iter()
        .find(|m| m.name == "INBOX")
        .unwrap()
}

async fn deliver(store: &Store, target: &LocalTarget, i: usize) -> u32 {
    let body = format!("Subject: m{i}\r\n\r\n{}\r\n", "x".repeat(100 * (i + 1)));
    let blob = store.put_blob(body.as_bytes()).await.unwrap();
    let stored = store
        .store_message(
            target,
            &Folder::Inbox,
            &NewMessage {
                blob,
                blob_size: body.len() as u64,
                prefix: format!("Delivered-To: {}\r\n", target.address).into_bytes(),
                parse_cache: None,
                delivery_key: format!("test-{i}"),
                internal_date: 0,
            },
        )
        .await
        .unwrap();
    match stored {
        Stored::New(e) => e.uid,
        other => panic!("not stored: {other:?}"),
    }
}

async fn snapshot_lists_the_inbox_in_uid_order(store: &Store) {
    let (account, inbox) = account_with_messages(store, "alice@example.test", 3).await;
    let drop = store.open_maildrop(account).await.unwrap();
    assert_eq!(drop.mailbox_id, inbox);
    let mailbox = inbox_of(store, account).await;
    assert_eq!(drop.uidvalidity, mailbox.uidvalidity);
    let uids: Vec<u32> = drop.messages.iter().map(|m| m.uid).collect();
    assert_eq!(uids, [1, 2, 3]);
    for m in &drop.messages {
        // The size is the stored text: per-recipient prefix plus blob.
        let text = store.read_message(inbox, m.uid).await.unwrap().unwrap();
        assert_eq!(m.size, text.len() as u64);
    }
    // An account without messages has an empty maildrop.
    let (other, _) = account_with_messages(store, "bob@example.test", 0).await;
    assert!(
        store
            .open_maildrop(other)
            .await
            .unwrap()
            .messages
            .is_empty()
    );
}

async fn expunge_removes_records_and_refunds_atomically(store: &Store) {
    let (account, inbox) = account_with_messages(store, "alice@example.test", 3).await;
    let drop = store.open_maildrop(account).await.unwrap();
    let addr = Address::parse("alice@example.test").unwrap();
    let used_before = store.get_account(&addr).await.unwrap().unwrap().used_bytes;
    let total: u64 = drop.messages.iter().map(|m| m.size).sum();
    assert_eq!(used_before, total);
    let modseq_before = inbox_of(store, account).await.highestmodseq;

    // Nothing to do is a no-op.
    assert_eq!(store.expunge_maildrop(inbox, &[]).await.unwrap(), 0);
    // UID 99 does not exist: skipped, not an error.
    let removed = store.expunge_maildrop(inbox, &[1, 3, 99]).await.unwrap();
    assert_eq!(removed, 2);
    let left: Vec<u32> = store
        .list_messages(inbox)
        .await
        .unwrap()
        .iter()
        .map(|m| m.0)
        .collect();
    assert_eq!(left, [2]);
    let used_after = store.get_account(&addr).await.unwrap().unwrap().used_bytes;
    assert_eq!(
        used_after,
        used_before - drop.messages[0].size - drop.messages[2].size
    );
    let mailbox = inbox_of(store, account).await;
    assert!(mailbox.highestmodseq > modseq_before);
    // The expunges are recorded for IMAP (QRESYNC), with the new MODSEQ.
    let rows: Vec<(i64, i64)> = mailroom_store::on_backend!(store, |pool| {
        sqlx::query_as("SELECT uid, modseq FROM expunged WHERE mailbox_id = $1 ORDER BY uid")
            .bind(inbox)
            .fetch_all(pool)
            .await
            .unwrap()
    });
    let expected = i64::try_from(mailbox.highestmodseq).unwrap();
    assert_eq!(rows, [(1, expected), (3, expected)]);
    // Expunging again removes nothing and refunds nothing.
    assert_eq!(store.expunge_maildrop(inbox, &[1, 3]).await.unwrap(), 0);
    assert_eq!(
        store.get_account(&addr).await.unwrap().unwrap().used_bytes,
        used_after
    );
    // UIDs are never reused: the next delivery gets 4.
    let target = LocalTarget {
        account_id: account,
        address: "alice@example.test".into(),
        folder: None,
    };
    assert_eq!(deliver(store, &target, 7).await, 4);
}

async fn the_maildrop_lock_admits_one_session(store: &Store) {
    let (alice, _) = account_with_messages(store, "alice@example.test", 0).await;
    let (bob, _) = account_with_messages(store, "bob@example.test", 0).await;
    let first = store.lock_maildrop(alice).await.unwrap().expect("free");
    assert!(store.lock_maildrop(alice).await.unwrap().is_none(), "held");
    // Another maildrop is independent.
    let other = store
        .lock_maildrop(bob)
        .await
        .unwrap()
        .expect("bob's is free");
    first.release().await;
    let again = store.lock_maildrop(alice).await.unwrap().expect("released");
    // Dropping (a session task that died) releases it too. On PostgreSQL the
    // server notices the closed connection a moment later.
    drop(again);
    let mut relocked = None;
    for _ in 0..50 {
        relocked = store.lock_maildrop(alice).await.unwrap();
        if relocked.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(relocked.is_some(), "a dropped lock is released");
    other.release().await;
}
