//! The store suite: every case runs on SQLite and on PostgreSQL.

use mailroom_address::{Address, Domain};
use mailroom_store::testing::TestDb;
use mailroom_store::{AliasSource, BlobHash, Store, StoreError, StoreOptions};

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
    domains,
    accounts,
    account_failures_leave_nothing_behind,
    passwords,
    aliases,
    blobs,
    concurrent_writers,
    postmaster_is_always_deliverable,
    dkim_keys,
);

fn d(s: &str) -> Domain {
    Domain::parse(s).unwrap()
}
fn a(s: &str) -> Address {
    Address::parse(s).unwrap()
}
const PW: &str = "correct horse battery";

async fn domains(store: &Store) {
    assert!(store.list_domains().await.unwrap().is_empty());
    store.add_domain(&d("example.test")).await.unwrap();
    store.add_domain(&d("bücher.example")).await.unwrap();
    let err = store
        .add_domain(&d("XN--BCHER-KVA.example"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists(_)), "{err}");
    assert!(err.to_string().contains("xn--bcher-kva.example"), "{err}");
    let names: Vec<_> = store
        .list_domains()
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.name)
        .collect();
    assert_eq!(names, ["example.test", "xn--bcher-kva.example"]);
    assert!(store.serves_domain(&d("Example.Test")).await.unwrap());
    assert!(!store.serves_domain(&d("other.test")).await.unwrap());

    store
        .create_account(&a("alice@example.test"), PW, 0)
        .await
        .unwrap();
    let err = store.delete_domain(&d("example.test")).await.unwrap_err();
    assert!(matches!(err, StoreError::FailedPrecondition(_)), "{err}");
    store
        .delete_account(&a("alice@example.test"))
        .await
        .unwrap();
    store.delete_domain(&d("example.test")).await.unwrap();
    let err = store.delete_domain(&d("example.test")).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");
}

async fn accounts(store: &Store) {
    store.add_domain(&d("example.test")).await.unwrap();
    store.add_domain(&d("other.test")).await.unwrap();
    let alice = store
        .create_account(&a("Alice@Example.Test"), PW, 1 << 20)
        .await
        .unwrap();
    assert_eq!(alice.address, "alice@example.test");
    assert_eq!(alice.quota_bytes, 1 << 20);
    assert!(!alice.disabled);
    store
        .create_account(&a("bob@other.test"), PW, 0)
        .await
        .unwrap();

    let boxes = store.list_mailboxes(alice.id).await.unwrap();
    let mut names: Vec<_> = boxes
        .iter()
        .map(|m| (m.name.as_str(), m.special_use.as_deref()))
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            ("Archive", Some("\\Archive")),
            ("Drafts", Some("\\Drafts")),
            ("INBOX", None),
            ("Junk", Some("\\Junk")),
            ("Sent", Some("\\Sent")),
            ("Trash", Some("\\Trash")),
        ]
    );
    assert!(
        boxes
            .iter()
            .all(|m| m.uidvalidity > 0 && m.uidnext == 1 && m.subscribed)
    );

    let all: Vec<_> = store
        .list_accounts(None)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.address)
        .collect();
    assert_eq!(all, ["alice@example.test", "bob@other.test"]);
    let other: Vec<_> = store
        .list_accounts(Some(&d("other.test")))
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.address)
        .collect();
    assert_eq!(other, ["bob@other.test"]);

    let updated = store
        .set_quota(&a("alice@example.test"), 5000)
        .await
        .unwrap();
    assert_eq!(updated.quota_bytes, 5000);
    let updated = store
        .set_disabled(&a("alice@example.test"), true)
        .await
        .unwrap();
    assert!(updated.disabled);
    let got = store
        .get_account(&a("ALICE@example.test"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, updated);

    let err = store
        .set_quota(&a("nobody@example.test"), 1)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");
    let err = store
        .set_quota(&a("alice@example.test"), u64::MAX)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidArgument(_)), "{err}");

    store
        .delete_account(&a("alice@example.test"))
        .await
        .unwrap();
    assert!(
        store
            .get_account(&a("alice@example.test"))
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store.list_mailboxes(alice.id).await.unwrap().is_empty(),
        "mailboxes go with the account"
    );
    let err = store
        .delete_account(&a("alice@example.test"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");
}

async fn account_failures_leave_nothing_behind(store: &Store) {
    store.add_domain(&d("example.test")).await.unwrap();
    let err = store
        .create_account(&a("carol@unknown.test"), PW, 0)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");
    let err = store
        .create_account(&a("carol@example.test"), "short", 0)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidArgument(_)), "{err}");
    let err = store
        .create_account(&a("carol@example.test"), "with\0nul byte", 0)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidArgument(_)), "{err}");
    assert!(store.list_accounts(None).await.unwrap().is_empty());

    let carol = store
        .create_account(&a("carol@example.test"), PW, 0)
        .await
        .unwrap();
    let err = store
        .create_account(&a("CAROL@example.test"), PW, 0)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists(_)), "{err}");
    assert_eq!(store.list_accounts(None).await.unwrap().len(), 1);
    assert_eq!(
        store.list_mailboxes(carol.id).await.unwrap().len(),
        6,
        "no extra mailboxes"
    );
}

async fn passwords(store: &Store) {
    store.add_domain(&d("example.test")).await.unwrap();
    store
        .create_account(&a("dave@example.test"), PW, 0)
        .await
        .unwrap();
    let ok = store
        .verify_password(&a("Dave@example.test"), PW)
        .await
        .unwrap();
    assert_eq!(ok.unwrap().address, "dave@example.test");
    assert!(
        store
            .verify_password(&a("dave@example.test"), "wrong password")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .verify_password(&a("nobody@example.test"), PW)
            .await
            .unwrap()
            .is_none()
    );

    store
        .set_password(&a("dave@example.test"), "a new passphrase")
        .await
        .unwrap();
    assert!(
        store
            .verify_password(&a("dave@example.test"), PW)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .verify_password(&a("dave@example.test"), "a new passphrase")
            .await
            .unwrap()
            .is_some()
    );

    store
        .set_disabled(&a("dave@example.test"), true)
        .await
        .unwrap();
    assert!(
        store
            .verify_password(&a("dave@example.test"), "a new passphrase")
            .await
            .unwrap()
            .is_none()
    );
}

async fn aliases(store: &Store) {
    store.add_domain(&d("example.test")).await.unwrap();
    let src = AliasSource::parse("Postmaster@example.test").unwrap();
    let alias = store
        .add_alias(&src, &a("alice@example.test"))
        .await
        .unwrap();
    assert_eq!(alias.source, "postmaster@example.test");
    store.add_alias(&src, &a("bob@remote.test")).await.unwrap();
    let err = store
        .add_alias(&src, &a("ALICE@example.test"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists(_)), "{err}");
    let catch_all = AliasSource::parse("@example.test").unwrap();
    store
        .add_alias(&catch_all, &a("alice@example.test"))
        .await
        .unwrap();
    let err = store
        .add_alias(
            &AliasSource::parse("x@unknown.test").unwrap(),
            &a("alice@example.test"),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");
    let err = store
        .add_alias(&src, &a("postmaster@example.test"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidArgument(_)), "{err}");
    assert!(matches!(
        AliasSource::parse("@"),
        Err(StoreError::InvalidArgument(_))
    ));

    let listed: Vec<_> = store
        .list_aliases(Some(&d("example.test")))
        .await
        .unwrap()
        .into_iter()
        .map(|a| (a.source, a.target))
        .collect();
    assert_eq!(
        listed,
        [
            (
                "@example.test".to_string(),
                "alice@example.test".to_string()
            ),
            (
                "postmaster@example.test".into(),
                "alice@example.test".into()
            ),
            ("postmaster@example.test".into(), "bob@remote.test".into()),
        ]
    );
    store
        .delete_alias(&src, &a("bob@remote.test"))
        .await
        .unwrap();
    let err = store
        .delete_alias(&src, &a("bob@remote.test"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");
    assert_eq!(store.list_aliases(None).await.unwrap().len(), 2);
}

async fn blobs(store: &Store) {
    let body = b"Subject: hi\r\n\r\nhello\r\n".repeat(100);
    let h1 = store.put_blob(&body).await.unwrap();
    let h2 = store.put_blob(&body).await.unwrap();
    assert_eq!(h1, h2);
    assert_eq!(h1, BlobHash::of(&body));
    assert_eq!(store.get_blob(&h1).await.unwrap().unwrap(), body);
    assert!(
        store
            .get_blob(&BlobHash::of(b"absent"))
            .await
            .unwrap()
            .is_none()
    );
}

/// Many writers at once must all succeed: no "database is locked" on SQLite.
async fn concurrent_writers(store: &Store) {
    store.add_domain(&d("example.test")).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..16 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let addr = a(&format!("user{i}@example.test"));
            store.create_account(&addr, PW, 0).await.unwrap();
            store.set_quota(&addr, i).await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(store.list_accounts(None).await.unwrap().len(), 16);
}

#[tokio::test]
async fn migrations_run_once_and_reopen_cleanly() {
    let (store, db) = TestDb::sqlite().await;
    store.add_domain(&d("example.test")).await.unwrap();
    store.close().await;
    let again = Store::connect(&db.url, &StoreOptions::default())
        .await
        .unwrap();
    assert_eq!(again.list_domains().await.unwrap().len(), 1);
}

#[tokio::test]
async fn an_unreachable_postgres_is_unavailable() {
    let err = Store::connect(
        "postgres://postgres@127.0.0.1:1/none",
        &StoreOptions {
            max_connections: 1,
            acquire_timeout: std::time::Duration::from_secs(2),
            ..StoreOptions::default()
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
}

mod scram {
    use super::*;

    async fn scram_keys_follow_the_password(store: &Store) {
        store.add_domain(&d("example.test")).await.unwrap();
        store
            .create_account(&a("erin@example.test"), PW, 0)
            .await
            .unwrap();
        let first = store
            .scram_credentials(&a("Erin@example.test"))
            .await
            .unwrap()
            .unwrap();
        let expected =
            mailroom_sasl::ScramCredentials::derive_with(PW, &first.salt, first.iterations)
                .unwrap();
        assert_eq!(first.stored_key, expected.stored_key);
        store
            .set_password(&a("erin@example.test"), "another passphrase")
            .await
            .unwrap();
        let second = store
            .scram_credentials(&a("erin@example.test"))
            .await
            .unwrap()
            .unwrap();
        assert_ne!(first.stored_key, second.stored_key);
        store
            .set_disabled(&a("erin@example.test"), true)
            .await
            .unwrap();
        assert!(
            store
                .scram_credentials(&a("erin@example.test"))
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            store
                .scram_credentials(&a("nobody@example.test"))
                .await
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test]
    async fn sqlite() {
        let (store, _db) = TestDb::sqlite().await;
        scram_keys_follow_the_password(&store).await;
    }

    #[tokio::test]
    async fn postgres() {
        let Some((store, _db)) = TestDb::postgres().await else {
            return;
        };
        scram_keys_follow_the_password(&store).await;
    }
}

mod queue_leases {
    use super::*;
    use mailroom_store::{AttemptResult, QueueEnvelope, QueueRecipient};

    async fn leases_are_exclusive_and_expire(store: &Store) {
        store.add_domain(&d("example.test")).await.unwrap();
        let envelope = QueueEnvelope {
            sender: "x@remote.test".into(),
            recipients: (0..10)
                .map(|i| QueueRecipient {
                    address: format!("u{i}@example.test"),
                    ..Default::default()
                })
                .chain([QueueRecipient {
                    address: "far@remote.test".into(),
                    ..Default::default()
                }])
                .collect(),
            ..Default::default()
        };
        let id = store
            .enqueue(&envelope, b"Subject: x\r\n\r\nx\r\n", 3600)
            .await
            .unwrap();
        // Two workers at once get disjoint sets, and never the remote recipient.
        let (a, b) = tokio::join!(
            store.lease_local_recipients("worker-a", 300, 6),
            store.lease_local_recipients("worker-b", 300, 6)
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(a.len() + b.len(), 10, "{a:?} {b:?}");
        assert!(
            a.iter().all(|x| b.iter().all(|y| x.id != y.id)),
            "a recipient was leased twice"
        );
        assert!(
            a.iter()
                .chain(&b)
                .all(|r| r.queue_id == id && r.address.ends_with("@example.test"))
        );
        assert!(
            store
                .lease_local_recipients("worker-c", 300, 100)
                .await
                .unwrap()
                .is_empty()
        );

        // Only the holder records a result.
        assert!(
            !store
                .finish_attempt("worker-b", a[0].id, &AttemptResult::Delivered)
                .await
                .unwrap()
        );
        assert!(
            store
                .finish_attempt("worker-a", a[0].id, &AttemptResult::Delivered)
                .await
                .unwrap()
        );
        let states = store.queue_recipient_states(id).await.unwrap();
        assert_eq!(states.iter().filter(|s| s.1 == "delivered").count(), 1);
        assert_eq!(states.iter().filter(|s| s.1 == "pending").count(), 10);
    }

    async fn an_expired_lease_is_taken_over(store: &Store) {
        store.add_domain(&d("example.test")).await.unwrap();
        let envelope = QueueEnvelope {
            sender: String::new(),
            recipients: vec![QueueRecipient {
                address: "u@example.test".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        store.enqueue(&envelope, b"x", 3600).await.unwrap();
        // The first worker's lease is already over when it is granted (it "died").
        let dying = store
            .lease_local_recipients("dying", -10, 10)
            .await
            .unwrap();
        assert_eq!(dying.len(), 1);
        let heir = store.lease_local_recipients("heir", 300, 10).await.unwrap();
        assert_eq!(heir.len(), 1, "the expired lease was not taken over");
        assert_eq!(heir[0].id, dying[0].id);
        assert!(
            !store
                .finish_attempt("dying", dying[0].id, &AttemptResult::Delivered)
                .await
                .unwrap()
        );
        let deferred = AttemptResult::Deferred {
            next_attempt_at: mailroom_store::now() + 600,
            response: "4.2.2 full".into(),
        };
        assert!(
            store
                .finish_attempt("heir", heir[0].id, &deferred)
                .await
                .unwrap()
        );
        assert!(
            store
                .lease_local_recipients("later", 300, 10)
                .await
                .unwrap()
                .is_empty(),
            "not due yet"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        let (store, _db) = TestDb::sqlite().await;
        leases_are_exclusive_and_expire(&store).await;
        let (store, _db) = TestDb::sqlite().await;
        an_expired_lease_is_taken_over(&store).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        let Some((store, _db)) = TestDb::postgres().await else {
            return;
        };
        leases_are_exclusive_and_expire(&store).await;
        let Some((store, _db)) = TestDb::postgres().await else {
            return;
        };
        an_expired_lease_is_taken_over(&store).await;
    }
}

/// RFC 5321 §4.5.1: postmaster@ reaches the alias when there is one, else
/// the configured postmaster address, else the domain's first account; a
/// domain without either has no postmaster.
async fn postmaster_is_always_deliverable(store: &Store) {
    store.add_domain(&d("example.test")).await.unwrap();
    let resolve = async |address: &str| store.resolve_recipient(&a(address)).await.unwrap();
    let none = resolve("postmaster@example.test").await;
    assert!(none.is_err(), "{none:?}");
    store
        .create_account(&a("first@example.test"), PW, 0)
        .await
        .unwrap();
    store
        .create_account(&a("second@example.test"), PW, 0)
        .await
        .unwrap();
    let to = |r: mailroom_store::Resolved| {
        r.local
            .iter()
            .map(|t| t.address.clone())
            .collect::<Vec<_>>()
    };
    let r = resolve("PostMaster@Example.Test").await.unwrap();
    assert_eq!(to(r), ["first@example.test"]);
    // A configured address wins over the first account: local, or remote
    // (followed like an alias target); never the postmaster itself.
    use mailroom_store::Postmaster;
    let pm = d("example.test");
    assert_eq!(
        store.domain_postmaster(&pm).await.unwrap(),
        Postmaster::FirstAccount("first@example.test".into())
    );
    assert_eq!(
        store
            .set_domain_postmaster(&pm, Some(&a("ops@remote.test")))
            .await
            .unwrap(),
        Postmaster::Configured("ops@remote.test".into())
    );
    let r = resolve("postmaster@example.test").await.unwrap();
    assert!(r.local.is_empty());
    assert_eq!(r.remote, ["ops@remote.test"]);
    store
        .set_domain_postmaster(&pm, Some(&a("second@example.test")))
        .await
        .unwrap();
    let r = resolve("postmaster@example.test").await.unwrap();
    assert_eq!(to(r), ["second@example.test"]);
    let err = store
        .set_domain_postmaster(&pm, Some(&a("PostMaster@example.test")))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidArgument(_)), "{err}");
    let err = store
        .set_domain_postmaster(&d("other.test"), None)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");
    assert_eq!(
        store.set_domain_postmaster(&pm, None).await.unwrap(),
        Postmaster::FirstAccount("first@example.test".into())
    );
    let listed = store.list_domains().await.unwrap();
    assert_eq!(listed[0].postmaster, None);
    store
        .add_alias(
            &AliasSource::parse("postmaster@example.test").unwrap(),
            &a("second@example.test"),
        )
        .await
        .unwrap();
    let r = resolve("postmaster@example.test").await.unwrap();
    assert_eq!(to(r), ["second@example.test"]);
    // Other unknown users stay unknown.
    assert!(resolve("nobody@example.test").await.is_err());
}

/// DKIM keys: listed without private keys, only active ones sign,
/// rotation retires, removal and the domain's deletion take them away.
async fn dkim_keys(store: &Store) {
    let example = d("example.test");
    assert!(matches!(
        store
            .add_dkim_key(&example, "s1", "rsa-sha256", "PEM", "cHVi")
            .await,
        Err(StoreError::NotFound(_))
    ));
    store.add_domain(&example).await.unwrap();
    store
        .add_dkim_key(&example, "s1", "rsa-sha256", "PEM1", "cHViMQ==")
        .await
        .unwrap();
    store
        .add_dkim_key(&example, "s2", "ed25519-sha256", "PEM2", "cHViMg==")
        .await
        .unwrap();
    assert!(matches!(
        store
            .add_dkim_key(&example, "s1", "rsa-sha256", "PEM", "cHVi")
            .await,
        Err(StoreError::AlreadyExists(_))
    ));
    let listed = store.dkim_keys(None).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert!(
        listed
            .iter()
            .all(|k| k.active && k.domain == "example.test")
    );
    assert_eq!(listed[0].public_key, "cHViMQ==");
    let signing = store.dkim_signing_keys(&example).await.unwrap();
    let mut pems: Vec<&str> = signing.iter().map(|k| k.private_key.as_str()).collect();
    pems.sort();
    assert_eq!(pems, ["PEM1", "PEM2"]);
    store
        .add_dkim_key(&example, "s3", "rsa-sha256", "PEM3", "cHViMw==")
        .await
        .unwrap();
    assert_eq!(
        store
            .retire_dkim_keys(&example, &["s3".to_string()])
            .await
            .unwrap(),
        2
    );
    let signing = store.dkim_signing_keys(&example).await.unwrap();
    assert_eq!(signing.len(), 1);
    assert_eq!(signing[0].info.selector, "s3");
    assert_eq!(store.dkim_keys(Some(&example)).await.unwrap().len(), 3);
    store.remove_dkim_key(&example, "s1").await.unwrap();
    assert!(matches!(
        store.remove_dkim_key(&example, "s1").await,
        Err(StoreError::NotFound(_))
    ));
    store.delete_domain(&example).await.unwrap();
    assert!(store.dkim_keys(None).await.unwrap().is_empty());
}
