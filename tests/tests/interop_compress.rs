//! COMPRESS=DEFLATE (RFC 4978) against a client nobody on this project
//! wrote: Python's zlib on a raw socket (`interop/imap_compress.py`), over
//! plain TCP and inside TLS, on both stores.

use std::process::Command;
use std::time::Duration;

use mailroom_tests::{
    Backend, PASSWORD, deliver_message, inbox_id, run_tool, start, start_with, with_accounts,
};

const ALICE: &str = "alice@example.test";

/// A compressible message of about 400 KB, as a large mail with a text
/// attachment would be.
fn large_message() -> Vec<u8> {
    let mut m = format!(
        "From: sender@remote.test\r\nTo: {ALICE}\r\nSubject: large\r\n\
         Message-ID: <large@remote.test>\r\n\r\n"
    )
    .into_bytes();
    for i in 0..8000 {
        m.extend_from_slice(
            format!("{i:05} the quick brown fox jumps over the lazy dog\r\n").as_bytes(),
        );
    }
    m
}

async fn python_zlib_client(backend: Backend) {
    let Some(r) = start(backend).await else {
        return; // PostgreSQL tests opted out
    };
    let store = with_accounts(&r, &[ALICE]).await;
    let message = large_message();
    deliver_message(&r, 1, ALICE, &message).await;
    let inbox = inbox_id(&store, ALICE).await;
    let stored = store.read_message(inbox, 1).await.unwrap().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let body_file = dir.path().join("body");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/interop/imap_compress.py");
    let p1 = r.stack.addr("imap").unwrap().port().to_string();
    let p2 = r.stack.addr("imaps").unwrap().port().to_string();
    let bf = body_file.to_str().unwrap().to_string();
    let out = tokio::task::spawn_blocking(move || {
        run_tool(
            "python3 imap_compress.py",
            Command::new("python3").args([script, "127.0.0.1", &p1, &p2, ALICE, PASSWORD, &bf]),
            &[0],
        )
    })
    .await
    .unwrap();
    assert_eq!(out.matches("ok: ").count(), 7, "{out}");
    assert_eq!(std::fs::read(&body_file).unwrap(), stored);
    r.stack.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_zlib_client_sqlite() {
    python_zlib_client(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_zlib_client_postgres() {
    python_zlib_client(Backend::Postgres).await;
}

/// Memory of idling compressed and NOTIFY sessions against plain ones, in this (the
/// server's) process: a measurement for docs/BENCHMARKS.md, not a check.
/// `cargo test -p mailroom-tests --test interop_compress -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run by hand"]
async fn idle_memory_plain_and_compressed() {
    let r = start_with(Backend::Sqlite, None, |c| {
        c.limits.max_connections = 5000;
        c.limits.max_connections_per_ip = 5000;
    })
    .await
    .unwrap();
    let _store = with_accounts(&r, &[ALICE]).await;
    deliver_message(&r, 1, ALICE, &large_message()).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/interop/imap_compress_idle.py");
    let port = r.stack.addr("imap").unwrap().port().to_string();
    let pid = std::process::id().to_string();
    let n = std::env::var("COMPRESS_IDLE_SESSIONS").unwrap_or_else(|_| "500".into());
    let out = tokio::task::spawn_blocking(move || {
        run_tool(
            "python3 imap_compress_idle.py",
            Command::new("python3").args([script, "127.0.0.1", &port, ALICE, PASSWORD, &pid, &n]),
            &[0],
        )
    })
    .await
    .unwrap();
    println!("{out}");
    assert_eq!(out.matches("rss: ").count(), 8, "{out}");
    r.stack.stop(Duration::from_secs(5)).await;
}
