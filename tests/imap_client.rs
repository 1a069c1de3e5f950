//! A deliberately small IMAP client for the end-to-end tests: it sends
//! exactly what it is given and returns the response lines with literals
//! inlined (used by `tests/imap.rs` and `tests/imap_notify.rs`).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

use crate::PASSWORD;

/// The account the IMAP tests log in as.
pub const ALICE: &str = "alice@example.test";

/// A connection, with the tag counter of [`Imap::cmd`].
pub struct Imap<S> {
    /// The stream, buffered for reading lines.
    pub io: BufReader<S>,
    /// The number of the last tag [`Imap::cmd`] made.
    pub next: usize,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Imap<S> {
    pub async fn send(&mut self, bytes: &[u8]) {
        self.io.get_mut().write_all(bytes).await.unwrap();
    }

    /// One response "line": text up to CRLF, with any literal `{n}` it
    /// announces appended (so a FETCH with BODY[] comes back as one string).
    pub async fn line(&mut self) -> String {
        let mut out = Vec::new();
        loop {
            let mut raw = Vec::new();
            let n =
                tokio::time::timeout(Duration::from_secs(10), self.io.read_until(b'\n', &mut raw))
                    .await
                    .expect("no response within 10 s")
                    .unwrap_or(0);
            if n == 0 {
                return String::from_utf8_lossy(&out).into_owned();
            }
            assert!(
                raw.ends_with(b"\r\n"),
                "line without CRLF: {:?}",
                String::from_utf8_lossy(&raw)
            );
            raw.truncate(raw.len() - 2);
            let literal = raw
                .strip_suffix(b"}")
                .and_then(|r| r.iter().rposition(|&b| b == b'{').map(|p| (p, r)))
                .and_then(|(p, r)| {
                    std::str::from_utf8(&r[p + 1..])
                        .ok()?
                        .trim_end_matches('+')
                        .parse::<usize>()
                        .ok()
                });
            out.extend_from_slice(&raw);
            match literal {
                Some(len) => {
                    let mut data = vec![0; len];
                    self.io.read_exact(&mut data).await.unwrap();
                    out.extend_from_slice(b"\r\n");
                    out.extend_from_slice(&data);
                }
                None => return String::from_utf8_lossy(&out).into_owned(),
            }
        }
    }

    /// Sends `tag command` and returns (untagged lines, tagged line).
    pub async fn cmd(&mut self, command: &str) -> (Vec<String>, String) {
        self.next += 1;
        let tag = format!("t{}", self.next);
        self.send(format!("{tag} {command}\r\n").as_bytes()).await;
        self.until(&tag).await
    }

    pub async fn until(&mut self, tag: &str) -> (Vec<String>, String) {
        let mut untagged = Vec::new();
        loop {
            let line = self.line().await;
            assert!(
                !line.is_empty(),
                "connection closed while waiting for {tag}"
            );
            if line.starts_with(&format!("{tag} ")) {
                return (untagged, line);
            }
            untagged.push(line);
        }
    }

    /// `tag APPEND args` with `data` as a LITERAL+ literal; returns
    /// (untagged lines, tagged line).
    pub async fn append_plus(
        &mut self,
        tag: &str,
        args: &str,
        data: &[u8],
    ) -> (Vec<String>, String) {
        self.send(format!("{tag} APPEND {args} {{{}+}}\r\n", data.len()).as_bytes())
            .await;
        self.send(data).await;
        self.send(b"\r\n").await;
        self.until(tag).await
    }

    /// A command that must succeed; its untagged lines.
    pub async fn ok(&mut self, command: &str) -> Vec<String> {
        let (untagged, done) = self.cmd(command).await;
        assert!(
            done.split(' ').nth(1) == Some("OK"),
            "{command} -> {done}\n{untagged:#?}"
        );
        untagged
    }

    pub async fn login(&mut self) {
        self.ok(&format!("LOGIN {ALICE} \"{PASSWORD}\"")).await;
    }
}

pub async fn connect(addr: SocketAddr) -> Imap<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut c = Imap {
        io: BufReader::new(tcp),
        next: 0,
    };
    let greeting = c.line().await;
    assert!(greeting.starts_with("* OK [CAPABILITY "), "{greeting}");
    assert!(greeting.contains("IMAP4rev2") && greeting.contains("IMAP4rev1"));
    c
}
