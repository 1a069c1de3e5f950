//! NOTIFY (RFC 5465) from a second client implementation, Python on raw
//! sockets (`interop/imap_notify.py`; imaplib has no NOTIFY), on both
//! stores: STATUS for other mailboxes, EXISTS and FETCH for the selected
//! one, LIST for names and subscriptions, IDLE, BADEVENT, NOTIFY NONE.

use std::time::Duration;

use mailroom_tests::imap_client::ALICE;
use mailroom_tests::{Backend, PASSWORD, run_python, start, with_accounts};

async fn python_session(backend: Backend) {
    let Some(r) = start(backend).await else {
        return; // PostgreSQL tests opted out
    };
    let _store = with_accounts(&r, &[ALICE]).await;
    let port = r.stack.addr("imap").unwrap().port().to_string();
    let args = ["127.0.0.1", port.as_str(), ALICE, PASSWORD].map(String::from);
    let out = run_python("imap_notify.py", args.to_vec()).await;
    assert_eq!(out.matches("ok: ").count(), 7, "{out}");
    r.stack.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_raw_socket_sqlite() {
    python_session(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_raw_socket_postgres() {
    python_session(Backend::Postgres).await;
}
