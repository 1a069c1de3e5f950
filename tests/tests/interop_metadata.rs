//! METADATA (RFC 5464) through Python's imaplib (`interop/imap_metadata.py`)
//! on both stores: the RFC's examples, the size and count limits, DEPTH and
//! MAXSIZE, a missing mailbox, RENAME and DELETE.

use std::time::Duration;

use mailroom_tests::{Backend, PASSWORD, run_python, start, with_accounts};

const ALICE: &str = "alice@example.test";
/// `crates/imap/src/metadata.rs`: MAX_VALUE_SIZE and MAX_ENTRIES.
const MAX_VALUE_SIZE: &str = "65536";
const MAX_ENTRIES: &str = "100";

async fn imaplib_session(backend: Backend) {
    let Some(r) = start(backend).await else {
        return; // PostgreSQL tests opted out
    };
    let _store = with_accounts(&r, &[ALICE]).await;
    let port = r.stack.addr("imap").unwrap().port().to_string();
    let args = [
        "127.0.0.1",
        port.as_str(),
        ALICE,
        PASSWORD,
        MAX_VALUE_SIZE,
        MAX_ENTRIES,
    ];
    let out = run_python("imap_metadata.py", args.map(String::from).to_vec()).await;
    assert_eq!(out.matches("ok: ").count(), 9, "{out}");
    r.stack.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imaplib_sqlite() {
    imaplib_session(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imaplib_postgres() {
    imaplib_session(Backend::Postgres).await;
}
