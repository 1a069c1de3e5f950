//! A line client for SMTP, IMAP and POP3 that never panics: a refused
//! connection, a reset or a silent server is an `Err` the caller counts,
//! since the server is killed under it on purpose.

use std::io::{Error, ErrorKind, Result};
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// How long any reply may take before the client gives up.
pub const REPLY_DEADLINE: Duration = Duration::from_secs(30);

/// A connection to a line protocol.
pub struct LineClient {
    io: BufReader<TcpStream>,
}

fn gone(what: &str) -> Error {
    Error::new(ErrorKind::UnexpectedEof, what.to_string())
}

impl LineClient {
    /// Connects (within 10 s).
    pub async fn connect(addr: SocketAddr) -> Result<LineClient> {
        let tcp = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr))
            .await
            .map_err(|_| Error::new(ErrorKind::TimedOut, "connect"))??;
        Ok(LineClient {
            io: BufReader::new(tcp),
        })
    }

    /// Sends raw bytes.
    pub async fn send(&mut self, bytes: &[u8]) -> Result<()> {
        self.io.get_mut().write_all(bytes).await
    }

    /// One line without its end; an error on EOF or after [`REPLY_DEADLINE`].
    pub async fn line(&mut self) -> Result<String> {
        let mut line = String::new();
        let n = tokio::time::timeout(REPLY_DEADLINE, self.io.read_line(&mut line))
            .await
            .map_err(|_| Error::new(ErrorKind::TimedOut, "no reply"))??;
        if n == 0 {
            return Err(gone("closed"));
        }
        Ok(line.trim_end_matches(['\r', '\n']).to_string())
    }

    /// One SMTP reply: its code and its last line.
    pub async fn reply(&mut self) -> Result<(u16, String)> {
        loop {
            let line = self.line().await?;
            let code = line
                .get(..3)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| Error::new(ErrorKind::InvalidData, line.clone()))?;
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok((code, line));
            }
        }
    }

    /// An SMTP command and its reply.
    pub async fn cmd(&mut self, line: &str) -> Result<(u16, String)> {
        self.send(format!("{line}\r\n").as_bytes()).await?;
        self.reply().await
    }

    /// An SMTP command whose reply must have code `want`.
    pub async fn expect(&mut self, line: &str, want: u16) -> Result<String> {
        let (code, text) = self.cmd(line).await?;
        if code == want {
            Ok(text)
        } else {
            Err(Error::other(format!("{line}: {text}")))
        }
    }

    /// Reads lines until one starts with `prefix` (an IMAP tagged reply, a
    /// POP3 status); returns it.
    pub async fn until(&mut self, prefix: &str) -> Result<String> {
        loop {
            let line = self.line().await?;
            if line.starts_with(prefix) {
                return Ok(line);
            }
        }
    }
}

/// One SMTP session's opening: the greeting, EHLO and, on submission,
/// AUTH PLAIN as `user`.
pub async fn smtp_session(addr: SocketAddr, user: Option<&str>) -> Result<LineClient> {
    let mut c = LineClient::connect(addr).await?;
    let (code, text) = c.reply().await?;
    if code != 220 {
        return Err(Error::other(text));
    }
    c.expect("EHLO client.test", 250).await?;
    if let Some(user) = user {
        let raw = format!("\0{user}\0{}", mailroom_tests::PASSWORD);
        c.expect(
            &format!(
                "AUTH PLAIN {}",
                mailroom_tests::base64_encode(raw.as_bytes())
            ),
            235,
        )
        .await?;
    }
    Ok(c)
}

/// A message with a `Message-ID` (its identity in the checks).
pub fn message(from: &str, to: &str, id: &str) -> Vec<u8> {
    format!(
        "From: {from}\r\nTo: {to}\r\nSubject: {id}\r\nMessage-ID: <{id}>\r\n\r\nbody of {id}\r\n.\r\n"
    )
    .into_bytes()
}

/// One transaction on an open session: the final reply to the data.
pub async fn transaction(
    c: &mut LineClient,
    from: &str,
    to: &str,
    id: &str,
) -> Result<(u16, String)> {
    c.expect(&format!("MAIL FROM:<{from}>"), 250).await?;
    c.expect(&format!("RCPT TO:<{to}>"), 250).await?;
    c.expect("DATA", 354).await?;
    c.send(&message(from, to, id)).await?;
    c.reply().await
}
