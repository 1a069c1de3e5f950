//! Real SMTP clients that nobody on this project wrote, against the real
//! stack: Python's smtplib (and scramp for SCRAM), swaks, curl, and Postfix's
//! smtp-source. `.ci/run` installs them; a missing tool fails the test.

use std::process::Command;
use std::time::Duration;

use mailroom_tests::{Backend, PASSWORD, Running, start, with_accounts};

fn run(what: &str, cmd: &mut Command) -> String {
    mailroom_tests::run_tool(what, cmd, &[0])
}

async fn stack() -> (Running, mailroom_store::Store) {
    let r = start(Backend::Sqlite).await.unwrap();
    let store = with_accounts(&r, &["alice@example.test", "bob@example.test"]).await;
    (r, store)
}

/// How many messages reached bob's INBOX once the queue has drained: every
/// message these clients send goes to bob, and a queue entry leaves the
/// queue once delivered, so this counts what the server accepted.
async fn delivered_to_bob(store: &mailroom_store::Store) -> usize {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while store.queue_size().await.unwrap() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the queue did not drain"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let bob = store
        .get_account(&mailroom_address::Address::parse("bob@example.test").unwrap())
        .await
        .unwrap()
        .unwrap();
    let inbox = store
        .list_mailboxes(bob.id)
        .await
        .unwrap()
        .into_iter()
        .find(|m| m.name == "INBOX")
        .unwrap();
    store.list_messages(inbox.id).await.unwrap().len()
}

fn port(r: &Running, service: &str) -> String {
    r.stack.addr(service).unwrap().port().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_smtplib_submits_over_starttls_and_implicit_tls() {
    let (r, store) = stack().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/interop/smtp_clients.py");
    let (p1, p2) = (port(&r, "submission"), port(&r, "submissions"));
    let out = tokio::task::spawn_blocking(move || {
        run(
            "python3 smtp_clients.py",
            Command::new("python3").args([
                script,
                "127.0.0.1",
                &p1,
                &p2,
                "alice@example.test",
                PASSWORD,
                "bob@example.test",
            ]),
        )
    })
    .await
    .unwrap();
    assert!(out.contains("ok: 4 messages"), "{out}");
    assert_eq!(delivered_to_bob(&store).await, 4);
    r.stack.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaks_submits_with_pipelining_starttls_and_implicit_tls() {
    let (r, store) = stack().await;
    let (p1, p2, p25) = (
        port(&r, "submission"),
        port(&r, "submissions"),
        port(&r, "smtp"),
    );
    tokio::task::spawn_blocking(move || {
        let common = [
            "--from",
            "alice@example.test",
            "--to",
            "bob@example.test",
            "--auth-user",
            "alice@example.test",
        ];
        run(
            "swaks --tls --pipeline",
            Command::new("swaks")
                .args([
                    "--server",
                    &format!("127.0.0.1:{p1}"),
                    "--tls",
                    "--pipeline",
                    "--auth",
                    "PLAIN",
                ])
                .args(common)
                .args([
                    "--auth-password",
                    PASSWORD,
                    "--header",
                    "Subject: swaks starttls",
                ]),
        );
        run(
            "swaks --tlsc",
            Command::new("swaks")
                .args([
                    "--server",
                    &format!("127.0.0.1:{p2}"),
                    "--tlsc",
                    "--auth",
                    "LOGIN",
                ])
                .args(common)
                .args([
                    "--auth-password",
                    PASSWORD,
                    "--header",
                    "Subject: swaks implicit",
                ]),
        );
        // Inbound: a remote sender to a local user on the port-25 listener, pipelined.
        run(
            "swaks inbound",
            Command::new("swaks").args([
                "--server",
                &format!("127.0.0.1:{p25}"),
                "--pipeline",
                "--from",
                "someone@remote.test",
                "--to",
                "bob@example.test",
            ]),
        );
        // Relaying through port 25 is refused, so swaks fails (any
        // non-zero exit).
        let failed: Vec<i32> = (1..=255).collect();
        let out = mailroom_tests::run_tool(
            "swaks relaying through port 25",
            Command::new("swaks").args([
                "--server",
                &format!("127.0.0.1:{p25}"),
                "--from",
                "a@remote.test",
                "--to",
                "b@elsewhere.test",
            ]),
            &failed,
        );
        assert!(out.contains("550 5.7.1"), "{out}");
    })
    .await
    .unwrap();
    assert_eq!(delivered_to_bob(&store).await, 3);
    r.stack.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_submits_over_smtp_and_smtps() {
    let (r, store) = stack().await;
    let dir = tempfile::tempdir().unwrap();
    let mail = dir.path().join("mail.txt");
    std::fs::write(
        &mail,
        "From: alice@example.test\r\nTo: bob@example.test\r\nSubject: curl\r\n\r\nhello\r\n",
    )
    .unwrap();
    let (p1, p2) = (port(&r, "submission"), port(&r, "submissions"));
    tokio::task::spawn_blocking(move || {
        for url in [
            format!("smtp://127.0.0.1:{p1}"),
            format!("smtps://127.0.0.1:{p2}"),
        ] {
            run(
                &format!("curl {url}"),
                Command::new("curl").args([
                    "--silent",
                    "--show-error",
                    "--ssl-reqd",
                    "--insecure",
                    "--url",
                    &url,
                    "--user",
                    &format!("alice@example.test:{PASSWORD}"),
                    "--mail-from",
                    "alice@example.test",
                    "--mail-rcpt",
                    "bob@example.test",
                    "--upload-file",
                    mail.to_str().unwrap(),
                ]),
            );
        }
    })
    .await
    .unwrap();
    assert_eq!(delivered_to_bob(&store).await, 2);
    r.stack.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postfix_smtp_source_pushes_mail_into_port_25() {
    let (r, store) = stack().await;
    let p25 = port(&r, "smtp");
    tokio::task::spawn_blocking(move || {
        run(
            "smtp-source",
            Command::new("/usr/sbin/smtp-source").args([
                "-s",
                "5",
                "-m",
                "50",
                "-l",
                "4096",
                "-f",
                "sender@remote.test",
                "-t",
                "bob@example.test",
                &format!("127.0.0.1:{p25}"),
            ]),
        );
    })
    .await
    .unwrap();
    assert_eq!(delivered_to_bob(&store).await, 50);
    r.stack.stop(Duration::from_secs(5)).await;
}
