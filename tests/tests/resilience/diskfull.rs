//! Disk full on the embedded store: the SQLite file lives on a small tmpfs
//! mounted for the test, filled up by a file of the test's while clients
//! send large messages. SMTP must answer `452 4.3.1` (RFC 3463 §3.4,
//! insufficient system storage; RFC 5321 §4.2.2), the process must stay
//! up, the database must pass `PRAGMA integrity_check`, and when the file
//! is removed (space returns) mail is accepted again and everything
//! acknowledged is delivered.
//!
//! Mounting needs the right to (root in the CI container); where `mount`
//! is refused the test says so loudly and ends without checking anything.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use mailroom_store::{Store, StoreOptions};

use super::client::smtp_session;
use super::procs::{self, Ports, Proc};

const BOB: &str = "bob@example.test";

/// A tmpfs mounted for the test; unmounted when dropped.
struct Mount(PathBuf, #[allow(dead_code)] tempfile::TempDir);

impl Mount {
    fn new(size: &str) -> Option<Mount> {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!(
                "\n*** disk-full test NOT RUN: cannot mount a tmpfs ({}); run as root ***\n",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        Some(Mount(dir.path().to_path_buf(), dir))
    }

    /// Bytes free.
    fn available(&self) -> u64 {
        let out = Command::new("df")
            .args(["-B1", "--output=avail"])
            .arg(&self.0)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .expect("df prints the free space")
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills `path` with zeros until `keep` bytes are left free on its file system.
fn fill(mount: &Mount, path: &Path, keep: u64) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 64 << 10];
    while mount.available() > keep + chunk.len() as u64 {
        if f.write_all(&chunk).is_err() {
            break;
        }
        let _ = f.flush();
    }
}

/// A message of about 64 KiB with a Message-ID.
fn big_message(id: &str) -> Vec<u8> {
    let mut m = format!(
        "From: sender@remote.test\r\nTo: {BOB}\r\nSubject: {id}\r\nMessage-ID: <{id}>\r\n\r\n"
    );
    for i in 0..850 {
        m.push_str(&format!("{i:08} {}\r\n", "x".repeat(66)));
    }
    m.push_str(".\r\n");
    m.into_bytes()
}

/// One message to bob on port 25; the final reply (or the refusal).
async fn send(addr: std::net::SocketAddr, id: &str) -> std::io::Result<(u16, String)> {
    let mut c = smtp_session(addr, None).await?;
    for line in [
        "MAIL FROM:<sender@remote.test>",
        &format!("RCPT TO:<{BOB}>"),
    ] {
        let (code, text) = c.cmd(line).await?;
        if code != 250 {
            return Ok((code, text));
        }
    }
    c.expect("DATA", 354).await?;
    c.send(&big_message(id)).await?;
    let reply = c.reply().await;
    let _ = c.cmd("QUIT").await;
    reply
}

/// `PRAGMA integrity_check` on `url`.
async fn integrity(url: &str) -> String {
    use sqlx::Connection;
    let mut c = sqlx::sqlite::SqliteConnection::connect(url).await.unwrap();
    let rows: Vec<String> = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_all(&mut c)
        .await
        .unwrap();
    let _ = c.close().await;
    rows.join("; ")
}

pub async fn disk_full() {
    let Some(mount) = Mount::new("48m") else {
        return;
    };
    let url = format!("sqlite://{}", mount.0.join("mailroom.db").display());
    let store = Store::connect(&url, &StoreOptions::default())
        .await
        .unwrap();
    super::accounts(&store, &[BOB]).await;
    let root = tempfile::tempdir().unwrap();
    let ports = Ports::pick();
    let spec = procs::embedded(&url, root.path(), &ports, &[]);
    let mut server = Proc::start(spec, root.path()).await;
    let smtp = Ports::at(ports.smtp);
    // Leave about 3 MiB: some 40 messages' worth.
    let filler = mount.0.join("filler");
    fill(&mount, &filler, 3 << 20);
    let mut acked = Vec::new();
    let mut refusal = None;
    let started = Instant::now();
    let mut n = 0;
    while refusal.is_none() && started.elapsed() < Duration::from_secs(180) {
        n += 1;
        let id = format!("full-{n}@disk.test");
        match send(smtp, &id).await {
            Ok((250, _)) => acked.push(format!("<{id}>")),
            Ok((code, text)) if code >= 400 => {
                eprintln!("disk full: message {n} refused: {text}");
                refusal = Some(text);
            }
            other => panic!("message {n}: {other:?}"),
        }
    }
    let refusal = refusal.expect("the store filled up within 180 s");
    assert!(
        refusal.starts_with("452 4.3.1"),
        "{refusal}\n{}",
        server.log()
    );
    assert!(server.running(), "the server exited:\n{}", server.log());
    // While full, a message is refused with 452 4.3.1 or, when the space
    // the refused batch's rollback gave back is enough for it, accepted (and
    // then it must be delivered like the others); never another answer. And
    // the database is intact.
    let again = send(smtp, "still-full@disk.test").await.unwrap();
    if again.0 == 250 {
        acked.push("<still-full@disk.test>".into());
    } else {
        assert!(
            again.1.starts_with("452 4.3.1"),
            "{again:?}\n{}",
            server.log()
        );
    }
    assert_eq!(integrity(&url).await, "ok");
    // Space returns.
    std::fs::remove_file(&filler).unwrap();
    let back = super::time_until("mail accepted again", Duration::from_secs(30), async || {
        matches!(send(smtp, "back@disk.test").await, Ok((250, _)))
    })
    .await;
    acked.push("<back@disk.test>".into());
    // Deliveries failed while the disk was full and back off exponentially
    // (1 s, 2 s, 4 s, …): the last retry may come a minute or two later.
    let start = Instant::now();
    while store.queue_size().await.unwrap_or(1) != 0 {
        if start.elapsed() > Duration::from_secs(300) {
            let entries = store
                .list_queue(&mailroom_store::QueueFilter {
                    limit: 100,
                    ..Default::default()
                })
                .await
                .unwrap();
            panic!(
                "the queue did not empty: {entries:#?}\nnow {}\n{}",
                mailroom_store::now(),
                server.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let drain = start.elapsed();
    let ids = super::inbox_ids(&store, BOB).await;
    let lost = acked.iter().filter(|id| !ids.contains(id)).count();
    eprintln!(
        "disk full: {} acknowledged before the refusal after {n} tries, accepted again {back:?} \
         after space returned, queue empty {drain:?} later, {lost} lost",
        acked.len() - 1
    );
    assert_eq!(lost, 0);
    assert!(server.running(), "the server exited:\n{}", server.log());
    server.kill();
    assert_eq!(integrity(&url).await, "ok");
    store.close().await;
}
