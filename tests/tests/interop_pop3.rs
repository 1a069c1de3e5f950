//! Real POP3 clients that nobody on this project wrote, against the real
//! stack: Python's poplib (with scramp for SCRAM-SHA-256), curl and
//! fetchmail. `.ci/run` installs them; a missing tool fails the test.

use std::process::Command;
use std::time::Duration;

use mailroom_address::Address;
use mailroom_tests::{Backend, PASSWORD, Running, deliver_message, start, with_accounts};

const ALICE: &str = "alice@example.test";

use mailroom_tests::run_tool as run;

fn message(subject: &str) -> Vec<u8> {
    format!(
        "From: sender@remote.test\r\nTo: {ALICE}\r\nSubject: {subject}\r\n\
         Message-ID: <{subject}@remote.test>\r\n\r\nHello.\r\n.leading dot\r\nBye.\r\n"
    )
    .into_bytes()
}

/// A stack with alice's INBOX holding `n` messages; returns its INBOX id too.
async fn stack(n: usize) -> (Running, mailroom_store::Store, i64) {
    let r = start(Backend::Sqlite).await.unwrap();
    let store = with_accounts(&r, &[ALICE]).await;
    for i in 1..=n {
        deliver_message(&r, i as i64, ALICE, &message(&format!("m{i}"))).await;
    }
    let account = store
        .get_account(&Address::parse(ALICE).unwrap())
        .await
        .unwrap()
        .unwrap();
    let inbox = store
        .list_mailboxes(account.id)
        .await
        .unwrap()
        .into_iter()
        .find(|m| m.name == "INBOX")
        .unwrap()
        .id;
    (r, store, inbox)
}

fn port(r: &Running, service: &str) -> String {
    r.stack.addr(service).unwrap().port().to_string()
}

async fn uids(store: &mailroom_store::Store, inbox: i64) -> Vec<u32> {
    store
        .list_messages(inbox)
        .await
        .unwrap()
        .iter()
        .map(|m| m.0)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_poplib_reads_over_stls_and_implicit_tls() {
    let (r, store, inbox) = stack(3).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/interop/pop3_clients.py");
    let (p1, p2) = (port(&r, "pop3"), port(&r, "pop3s"));
    let out = tokio::task::spawn_blocking(move || {
        run(
            "python3 pop3_clients.py",
            Command::new("python3").args([script, "127.0.0.1", &p1, &p2, ALICE, PASSWORD]),
            &[0],
        )
    })
    .await
    .unwrap();
    assert_eq!(out.matches("ok: ").count(), 4, "{out}");
    // The script's last session deleted message 1 with DELE + QUIT.
    assert_eq!(uids(&store, inbox).await, [2, 3]);
    r.stack.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_lists_and_retrieves_over_stls_and_pop3s() {
    let (r, store, inbox) = stack(2).await;
    let (p1, p2) = (port(&r, "pop3"), port(&r, "pop3s"));
    let sizes: Vec<u64> = store
        .list_messages(inbox)
        .await
        .unwrap()
        .iter()
        .map(|m| m.2)
        .collect();
    let (listing, retrieved, uidl) = tokio::task::spawn_blocking(move || {
        let user = format!("{ALICE}:{PASSWORD}");
        let curl = |url: String, extra: &[&str]| {
            run(
                &format!("curl {url}"),
                Command::new("curl")
                    .args(["--silent", "--show-error", "--ssl-reqd", "--insecure"])
                    .args(["--max-time", "20", "--user", &user])
                    .args(extra)
                    .arg(url),
                &[0],
            )
        };
        (
            curl(format!("pop3://127.0.0.1:{p1}/"), &[]),
            curl(format!("pop3://127.0.0.1:{p1}/2"), &[]),
            curl(format!("pop3s://127.0.0.1:{p2}/"), &["--request", "UIDL"]),
        )
    })
    .await
    .unwrap();
    assert_eq!(
        listing.replace("\r\n", "\n"),
        format!("1 {}\n2 {}\n", sizes[0], sizes[1])
    );
    // curl removes the byte-stuffing, so the text is the stored one.
    let stored = store.read_message(inbox, 2).await.unwrap().unwrap();
    assert_eq!(retrieved.as_bytes(), stored.as_slice());
    assert!(retrieved.contains("\r\n.leading dot\r\n"), "{retrieved}");
    let uidvalidity = store
        .list_mailboxes(
            store
                .get_account(&Address::parse(ALICE).unwrap())
                .await
                .unwrap()
                .unwrap()
                .id,
        )
        .await
        .unwrap()
        .into_iter()
        .find(|m| m.name == "INBOX")
        .unwrap()
        .uidvalidity;
    assert_eq!(
        uidl.replace("\r\n", "\n"),
        format!("1 {uidvalidity}.1\n2 {uidvalidity}.2\n")
    );
    // Reading deletes nothing.
    assert_eq!(uids(&store, inbox).await, [1, 2]);
    r.stack.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetchmail_downloads_once_with_uidl_bookkeeping() {
    let (r, store, inbox) = stack(3).await;
    let dir = tempfile::tempdir().unwrap();
    let mbox = dir.path().join("mbox");
    let rc = dir.path().join("fetchmailrc");
    let ids = dir.path().join("fetchids");
    // STLS is required by `sslproto` without `ssl`; the certificate is
    // self-signed, hence `no sslcertck`. `keep` + `uidl`: messages stay on
    // the server and the idfile remembers which were seen.
    std::fs::write(
        &rc,
        format!(
            "set no syslog\n\
             poll 127.0.0.1 service {port} protocol pop3 uidl auth password\n\
             \x20 user \"{ALICE}\" there with password \"{PASSWORD}\" is root here\n\
             \x20 options keep sslproto tls1.2+ no sslcertck\n\
             \x20 mda \"cat >> {mbox}\"\n",
            port = port(&r, "pop3"),
            mbox = mbox.display(),
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&rc, std::fs::Permissions::from_mode(0o600)).unwrap();
    let fetch = {
        let (rc, ids, home) = (rc.clone(), ids.clone(), dir.path().to_path_buf());
        move |codes: &'static [i32]| {
            run(
                "fetchmail",
                Command::new("fetchmail")
                    .env("FETCHMAILHOME", &home)
                    .env("HOME", &home)
                    .arg("--nodetach")
                    .arg("--verbose")
                    .arg("--fetchmailrc")
                    .arg(&rc)
                    .arg("--idfile")
                    .arg(&ids)
                    .arg("--pidfile")
                    .arg(home.join("pid")),
                codes,
            )
        }
    };
    let count = |mbox: &std::path::Path| {
        std::fs::read_to_string(mbox)
            .unwrap_or_default()
            .matches("\nSubject: m")
            .count()
    };
    // First run: the three messages.
    let f = fetch.clone();
    let out = tokio::task::spawn_blocking(move || f(&[0])).await.unwrap();
    println!("first fetchmail run:\n{out}");
    assert!(out.contains("STLS"), "fetchmail did not use STLS:\n{out}");
    assert_eq!(count(&mbox), 3, "{out}");
    let text = std::fs::read_to_string(&mbox).unwrap();
    assert!(
        text.contains("\n.leading dot\n") || text.contains("\n.leading dot\r\n"),
        "{text}"
    );
    // Second run in keep mode: nothing new (fetchmail exits 1, "no mail").
    let f = fetch.clone();
    let out = tokio::task::spawn_blocking(move || f(&[1])).await.unwrap();
    println!("second fetchmail run:\n{out}");
    assert_eq!(count(&mbox), 3, "fetched again:\n{out}");
    // A new message: only that one is fetched.
    deliver_message(&r, 4, ALICE, &message("m4")).await;
    let f = fetch.clone();
    let out = tokio::task::spawn_blocking(move || f(&[0])).await.unwrap();
    assert_eq!(count(&mbox), 4, "{out}");
    assert!(
        std::fs::read_to_string(&mbox)
            .unwrap()
            .contains("Subject: m4")
    );
    // `keep` left everything on the server; the idfile holds our UIDLs.
    assert_eq!(uids(&store, inbox).await, [1, 2, 3, 4]);
    let idfile = std::fs::read_to_string(&ids).unwrap();
    println!("idfile:\n{idfile}");
    assert!(idfile.contains(".4"), "{idfile}");
    r.stack.stop(Duration::from_secs(5)).await;
}
