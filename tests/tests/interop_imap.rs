//! Real IMAP clients that nobody on this project wrote, against the real
//! stack: Python's imaplib and imapclient, curl, mbsync (isync) syncing both
//! ways, and mutt reading a message. `.ci/run` installs them; a missing tool
//! fails the test.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use mailroom_address::Address;
use mailroom_store::{Store, flag_bits};
use mailroom_tests::{Backend, PASSWORD, Running, deliver_message, start, with_accounts};

const ALICE: &str = "alice@example.test";

use mailroom_tests::run_tool as run;

fn message(subject: &str) -> Vec<u8> {
    format!(
        "From: sender@remote.test\r\nTo: {ALICE}\r\nSubject: {subject}\r\n\
         Message-ID: <{subject}@remote.test>\r\n\r\nHello {subject}.\r\n"
    )
    .into_bytes()
}

/// A stack with alice's INBOX holding `n` messages; returns its INBOX id too.
async fn stack(backend: Backend, n: usize) -> (Running, Store, i64) {
    fill(start(backend).await.unwrap(), n).await
}

async fn fill(r: Running, n: usize) -> (Running, Store, i64) {
    let store = with_accounts(&r, &[ALICE]).await;
    for i in 1..=n {
        deliver_message(&r, i as i64, ALICE, &message(&format!("m{i}"))).await;
    }
    let inbox = inbox(&store).await;
    (r, store, inbox)
}

async fn inbox(store: &Store) -> i64 {
    let account = store
        .get_account(&Address::parse(ALICE).unwrap())
        .await
        .unwrap()
        .unwrap();
    store
        .mailbox_by_name(account.id, "INBOX")
        .await
        .unwrap()
        .unwrap()
        .id
}

fn port(r: &Running, service: &str) -> String {
    r.stack.addr(service).unwrap().port().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_imaplib_and_imapclient() {
    let (r, _store, _) = stack(Backend::Sqlite, 3).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/interop/imap_clients.py");
    let (p1, p2) = (port(&r, "imap"), port(&r, "imaps"));
    let out = tokio::task::spawn_blocking(move || {
        run(
            "python3 imap_clients.py",
            Command::new("python3").args([script, "127.0.0.1", &p1, &p2, ALICE, PASSWORD]),
            &[0],
        )
    })
    .await
    .unwrap();
    assert_eq!(out.matches("ok: ").count(), 7, "{out}");
    r.stack.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_lists_and_fetches_over_starttls_and_imaps() {
    let (r, store, inbox) = stack(Backend::Sqlite, 2).await;
    let (p1, p2) = (port(&r, "imap"), port(&r, "imaps"));
    let (listing, fetched, examined) = tokio::task::spawn_blocking(move || {
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
            curl(format!("imap://127.0.0.1:{p1}/"), &[]),
            curl(format!("imaps://127.0.0.1:{p2}/INBOX;UID=2"), &[]),
            curl(
                format!("imap://127.0.0.1:{p1}/INBOX"),
                &["--request", "EXAMINE INBOX"],
            ),
        )
    })
    .await
    .unwrap();
    assert!(listing.contains("\"INBOX\""), "{listing}");
    assert!(listing.contains("\\Sent"), "{listing}");
    let stored = store.read_message(inbox, 2).await.unwrap().unwrap();
    assert_eq!(fetched.as_bytes(), stored.as_slice());
    assert!(examined.contains("* 2 EXISTS"), "{examined}");
    r.stack.stop(Duration::from_secs(5)).await;
}

/// Files in a Maildir folder's cur/ and new/.
fn maildir_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for sub in ["cur", "new"] {
        if let Ok(rd) = std::fs::read_dir(dir.join(sub)) {
            for e in rd {
                out.push(e.unwrap().path());
            }
        }
    }
    out.sort();
    out
}

/// mbsync: pull three messages, change things on both sides, sync, check
/// both sides agree, and a last sync changes nothing (no duplicates).
async fn mbsync_syncs_both_ways(backend: Backend) {
    let Some(r) = start(backend).await else {
        return; // PostgreSQL tests opted out
    };
    let (r, store, inbox) = fill(r, 3).await;
    let dir = tempfile::tempdir().unwrap();
    let mail = dir.path().join("mail");
    std::fs::create_dir_all(&mail).unwrap();
    let rc = dir.path().join("mbsyncrc");
    let cert = r.data_dir.path().join("tls/cert.pem");
    std::fs::write(
        &rc,
        format!(
            "IMAPAccount mailroom\n\
             Host localhost\n\
             Port {port}\n\
             User {ALICE}\n\
             Pass \"{PASSWORD}\"\n\
             SSLType IMAPS\n\
             CertificateFile {cert}\n\
             \n\
             IMAPStore far\n\
             Account mailroom\n\
             \n\
             MaildirStore near\n\
             Path {mail}/\n\
             Inbox {mail}/INBOX\n\
             SubFolders Verbatim\n\
             \n\
             Channel sync\n\
             Far :far:\n\
             Near :near:\n\
             Patterns INBOX Archive\n\
             Create Both\n\
             Expunge Both\n\
             SyncState *\n\
             Sync All\n",
            port = port(&r, "imaps"),
            cert = cert.display(),
            mail = mail.display(),
        ),
    )
    .unwrap();
    let sync = {
        let rc = rc.clone();
        let home = dir.path().to_path_buf();
        move || {
            run(
                "mbsync",
                Command::new("mbsync")
                    .env("HOME", &home)
                    .arg("--verbose")
                    .arg("--config")
                    .arg(&rc)
                    .arg("--all"),
                &[0],
            )
        }
    };
    let s = sync.clone();
    let out = tokio::task::spawn_blocking(s).await.unwrap();
    let local_inbox = mail.join("INBOX");
    assert_eq!(maildir_files(&local_inbox).len(), 3, "{out}");

    // Near side: one message marked seen, one deleted, one new.
    let files = maildir_files(&local_inbox);
    let seen = &files[0];
    let name = seen.file_name().unwrap().to_str().unwrap().to_string();
    let base = name.split(":2,").next().unwrap();
    std::fs::rename(seen, local_inbox.join("cur").join(format!("{base}:2,S"))).unwrap();
    std::fs::remove_file(&files[1]).unwrap();
    std::fs::write(
        local_inbox.join("new").join("1700000000.local.host"),
        message("from-near"),
    )
    .unwrap();
    // Far side: one new delivery.
    deliver_message(&r, 50, ALICE, &message("from-far")).await;

    let s = sync.clone();
    let out = tokio::task::spawn_blocking(s).await.unwrap();
    let metas = store.mailbox_messages(inbox).await.unwrap();
    assert_eq!(metas.len(), 4, "{out}\n{metas:#?}");
    assert_eq!(
        metas
            .iter()
            .filter(|m| m.flags & flag_bits::SEEN != 0)
            .count(),
        1,
        "the near side's \\Seen: {metas:#?}"
    );
    assert_eq!(maildir_files(&local_inbox).len(), 4, "{out}");
    let mut subjects = Vec::new();
    for m in &metas {
        let text = store.read_message(inbox, m.uid).await.unwrap().unwrap();
        let text = String::from_utf8_lossy(&text).into_owned();
        let subject = text
            .lines()
            .find_map(|l| l.strip_prefix("Subject: "))
            .unwrap()
            .to_string();
        subjects.push(subject);
    }
    subjects.sort();
    assert_eq!(subjects.len(), 4);
    assert!(subjects.contains(&"from-near".to_string()), "{subjects:?}");
    assert!(subjects.contains(&"from-far".to_string()), "{subjects:?}");

    // And back again: nothing changes on either side.
    let s = sync.clone();
    let out = tokio::task::spawn_blocking(s).await.unwrap();
    assert_eq!(
        store.mailbox_messages(inbox).await.unwrap().len(),
        4,
        "{out}"
    );
    assert_eq!(maildir_files(&local_inbox).len(), 4, "{out}");
    r.stack.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mbsync_syncs_both_ways_sqlite() {
    mbsync_syncs_both_ways(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mbsync_syncs_both_ways_postgres() {
    mbsync_syncs_both_ways(Backend::Postgres).await;
}

/// mutt, a real terminal MUA, opens the INBOX over IMAP and pipes the
/// current message out. It runs in a pseudo-terminal (`script`), driven by
/// `push`ed keys; plaintext LOGIN on loopback (the default exemption).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutt_reads_a_message() {
    let (r, _store, _) = stack(Backend::Sqlite, 2).await;
    let dir = tempfile::tempdir().unwrap();
    let rc = dir.path().join("muttrc");
    let out = dir.path().join("piped.eml");
    std::fs::write(
        &rc,
        format!(
            "set folder=\"imap://127.0.0.1:{port}/\"\n\
             set spoolfile=\"+INBOX\"\n\
             set imap_user=\"{ALICE}\"\n\
             set imap_pass=\"{PASSWORD}\"\n\
             set ssl_starttls=no\n\
             set ssl_force_tls=no\n\
             set header_cache=\"\"\n\
             set wait_key=no\n\
             set quit=yes\n\
             set sort=date\n\
             set mail_check=0\n\
             set imap_passive=no\n",
            port = port(&r, "imap"),
        ),
    )
    .unwrap();
    let command = format!(
        "mutt -n -F {rc} -e 'push \"<pipe-message>cat > {out}<enter><quit>\"'",
        rc = rc.display(),
        out = out.display(),
    );
    let home = dir.path().to_path_buf();
    let transcript = tokio::task::spawn_blocking(move || {
        run(
            "mutt (in script)",
            // The environment is set in full: CI gives no SHELL (which
            // `script` runs the command with) and no TERM. run_tool kills
            // the whole group if mutt ever waits for a key.
            Command::new("script")
                .env("HOME", &home)
                .env("TERM", "xterm")
                .env("SHELL", "/bin/sh")
                .args(["-qec", &command, "/dev/null"]),
            &[0],
        )
    })
    .await
    .unwrap();
    let piped = std::fs::read_to_string(&out)
        .unwrap_or_else(|e| panic!("mutt piped nothing ({e}); its screen:\n{transcript}"));
    assert!(piped.contains("Subject: m"), "{piped}");
    assert!(piped.contains("\nHello m"), "{piped}");
    r.stack.stop(Duration::from_secs(5)).await;
}
