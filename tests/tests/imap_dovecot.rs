//! Differential IMAP testing against Dovecot, the reference server: the
//! same scripted session (fixtures appended first, then FETCH of every
//! structure item, SEARCH keys, STORE, LIST patterns, COPY, EXPUNGE,
//! MULTIAPPEND and its bad input, then SORT and THREAD in a mailbox of
//! their own) runs
//! against a throw-away Dovecot and against Mailroom on each store, and the
//! normalised responses must agree or differ only where
//! `tests/interop/imap_diff.py` documents why (with the RFC text). The
//! same session runs once more with COMPRESS=DEFLATE (RFC 4978) on both
//! servers (Dovecot's imap_zlib plugin), with METADATA (RFC 5464)
//! commands after it (Dovecot's `mail_attribute_dict`), and with NOTIFY
//! (RFC 5465) and ACL (RFC 4314) commands after it (Dovecot's acl plugin).

use std::process::Command;
use std::time::Duration;

use mailroom_tests::{Backend, PASSWORD, run_tool, start, with_accounts};

async fn against_dovecot(backend: Backend, extra: &'static [&'static str]) {
    let Some(r) = start(backend).await else {
        return;
    };
    let _store = with_accounts(&r, &["diff@example.test"]).await;
    let port = r.stack.addr("imap").unwrap().port().to_string();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/interop/imap_diff.py");
    let out = tokio::task::spawn_blocking(move || {
        run_tool(
            "python3 imap_diff.py (needs dovecot-imapd)",
            Command::new("python3")
                .args([
                    script,
                    "--port",
                    &port,
                    "--user",
                    "diff@example.test",
                    "--password",
                    PASSWORD,
                ])
                .args(extra),
            &[0],
        )
    })
    .await
    .unwrap();
    eprintln!("{out}");
    assert!(out.contains(" 0 undocumented"), "{out}");
    r.stack.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_session_as_dovecot_on_sqlite() {
    against_dovecot(Backend::Sqlite, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_session_as_dovecot_on_postgres() {
    against_dovecot(Backend::Postgres, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_compressed_session_as_dovecot_on_sqlite() {
    against_dovecot(Backend::Sqlite, &["--compress"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_compressed_session_as_dovecot_on_postgres() {
    against_dovecot(Backend::Postgres, &["--compress"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_metadata_as_dovecot_on_sqlite() {
    against_dovecot(Backend::Sqlite, &["--metadata"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_metadata_as_dovecot_on_postgres() {
    against_dovecot(Backend::Postgres, &["--metadata"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_notify_and_acl_as_dovecot_on_sqlite() {
    against_dovecot(Backend::Sqlite, &["--notify", "--acl"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_notify_and_acl_as_dovecot_on_postgres() {
    against_dovecot(Backend::Postgres, &["--notify", "--acl"]).await;
}
