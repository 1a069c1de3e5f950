//! POP3 client (RFC 1939), with CAPA (RFC 2449), STLS (RFC 2595) and AUTH
//! (RFC 5034).
//!
//! Invariants:
//! * status lines are bounded by [`MAX_LINE`] (RFC 2449 §4 allows 512
//!   octets; we accept more for lenient servers) and multi-line responses
//!   by the client's `max_message`: a server that never sends the final `.`
//!   makes the command fail, not the memory grow;
//! * multi-line responses are dot-unstuffed (RFC 1939 §3) and returned with
//!   CRLF line endings, so a message retrieved here is byte-identical to the
//!   one stored;
//! * with STLS requested, USER/PASS/AUTH are only sent after the handshake.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use mailroom_sasl::client::{ScramClient, plain_response};

use crate::connection::{ClientOptions, Connection, Endpoint, Security};
use crate::error::{Error, Result};

/// Longest status or listing line accepted.
pub const MAX_LINE: usize = 8 * 1024;

/// One entry of the maildrop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Message number in this session (1-based).
    pub number: u32,
    /// Size in octets as the server counts it.
    pub size: u64,
    /// UIDL value, when the server supports UIDL.
    pub uid: Option<String>,
}

/// An authenticated (or about to be) POP3 session.
#[derive(Debug)]
pub struct Pop3Client {
    conn: Connection,
    capabilities: Vec<String>,
    max_message: usize,
}

impl Pop3Client {
    /// Connects, reads the greeting and upgrades with STLS when asked to.
    pub async fn connect(endpoint: &Endpoint, options: &ClientOptions) -> Result<Pop3Client> {
        let conn = Connection::open(endpoint, options).await?;
        let mut client = Pop3Client {
            conn,
            capabilities: Vec::new(),
            max_message: options.max_message,
        };
        let greeting = client.status_line().await?;
        if let Err(text) = greeting {
            return Err(Error::refused("the connection", text));
        }
        client.capabilities = client.capa().await.unwrap_or_default();
        if endpoint.security == Security::Starttls {
            if !client.has("STLS") {
                return Err(Error::Tls {
                    server: client.conn.server().to_string(),
                    reason: "the server does not offer STLS".into(),
                });
            }
            client.simple("STLS").await?;
            client.conn.start_tls().await?;
            client.capabilities = client.capa().await.unwrap_or_default();
        }
        Ok(client)
    }

    /// The CAPA list (empty when the server has no CAPA).
    pub fn capabilities(&self) -> &[String] {
        &self.capabilities
    }

    fn has(&self, capability: &str) -> bool {
        self.capabilities
            .iter()
            .any(|c| c.split_whitespace().next() == Some(capability))
    }

    fn sasl_offers(&self, mechanism: &str) -> bool {
        self.capabilities.iter().any(|c| {
            let mut words = c.split_whitespace();
            words.next() == Some("SASL") && words.any(|m| m.eq_ignore_ascii_case(mechanism))
        })
    }

    async fn capa(&mut self) -> Result<Vec<String>> {
        self.conn.send(b"CAPA\r\n").await?;
        if self.status_line().await?.is_err() {
            return Ok(Vec::new());
        }
        let body = self.multi_line().await?;
        Ok(String::from_utf8_lossy(&body)
            .lines()
            .map(str::to_string)
            .collect())
    }

    /// Logs in: SASL SCRAM-SHA-256 when offered, else USER/PASS (or SASL
    /// PLAIN when USER is not offered).
    pub async fn login(&mut self, user: &str, password: &str) -> Result<()> {
        self.conn.check_login_allowed()?;
        if self.sasl_offers("SCRAM-SHA-256") {
            return self.scram(user, password).await;
        }
        if !self.has("USER") && self.sasl_offers("PLAIN") {
            let ir = STANDARD.encode(plain_response(user, password));
            self.conn
                .send_secret(
                    format!("AUTH PLAIN {ir}\r\n").as_bytes(),
                    "AUTH PLAIN <redacted>",
                )
                .await?;
            return self.auth_result().await;
        }
        self.conn
            .send(format!("USER {}\r\n", one_line(user)?).as_bytes())
            .await?;
        if let Err(text) = self.status_line().await? {
            return Err(Error::Auth(format!("\"-ERR {text}\"")));
        }
        self.conn
            .send_secret(
                format!("PASS {}\r\n", one_line(password)?).as_bytes(),
                "PASS <redacted>",
            )
            .await?;
        self.auth_result().await
    }

    async fn auth_result(&mut self) -> Result<()> {
        match self.status_line().await? {
            Ok(_) => Ok(()),
            Err(text) => Err(Error::Auth(format!("\"-ERR {text}\""))),
        }
    }

    async fn scram(&mut self, user: &str, password: &str) -> Result<()> {
        let (mut client, first) =
            ScramClient::start(user, password).map_err(|e| Error::Auth(e.to_string()))?;
        self.conn
            .send_secret(
                format!("AUTH SCRAM-SHA-256 {}\r\n", STANDARD.encode(first)).as_bytes(),
                "AUTH SCRAM-SHA-256 <redacted>",
            )
            .await?;
        let challenge = self.challenge().await?;
        let response = client
            .respond(&challenge)
            .map_err(|e| Error::Auth(e.to_string()))?;
        self.conn
            .send_secret(
                format!("{}\r\n", STANDARD.encode(response)).as_bytes(),
                "<redacted>",
            )
            .await?;
        let server_final = self.challenge().await?;
        client
            .finish(&server_final)
            .map_err(|e| Error::Auth(e.to_string()))?;
        self.conn.send(b"\r\n").await?;
        self.auth_result().await
    }

    /// Reads a `+ <base64>` challenge; `-ERR` is a failed login.
    async fn challenge(&mut self) -> Result<Vec<u8>> {
        let line = self.conn.read_line(MAX_LINE).await?;
        let text = String::from_utf8_lossy(&line);
        if let Some(data) = text.strip_prefix("+ ").or(text.strip_prefix("+")) {
            return STANDARD
                .decode(data.trim())
                .map_err(|_| Error::protocol("AUTH challenge is not base64"));
        }
        Err(Error::Auth(format!("\"{text}\"")))
    }

    /// `STAT`: number of messages and total size.
    pub async fn stat(&mut self) -> Result<(u32, u64)> {
        let text = self.simple("STAT").await?;
        let mut words = text.split_whitespace();
        let count = words.next().and_then(|w| w.parse().ok());
        let size = words.next().and_then(|w| w.parse().ok());
        match (count, size) {
            (Some(c), Some(s)) => Ok((c, s)),
            _ => Err(Error::protocol(format!("unreadable STAT answer {text:?}"))),
        }
    }

    /// `LIST` and `UIDL`: every message with its size and unique id.
    pub async fn list(&mut self) -> Result<Vec<Entry>> {
        self.simple("LIST").await?;
        let body = self.multi_line().await?;
        let mut entries = Vec::new();
        for line in String::from_utf8_lossy(&body).lines() {
            let mut words = line.split_whitespace();
            let number = words.next().and_then(|w| w.parse().ok());
            let size = words.next().and_then(|w| w.parse().ok());
            match (number, size) {
                (Some(number), Some(size)) => entries.push(Entry {
                    number,
                    size,
                    uid: None,
                }),
                _ => return Err(Error::protocol(format!("unreadable LIST line {line:?}"))),
            }
        }
        self.conn.send(b"UIDL\r\n").await?;
        if self.status_line().await?.is_ok() {
            let body = self.multi_line().await?;
            for line in String::from_utf8_lossy(&body).lines() {
                let mut words = line.split_whitespace();
                let number: Option<u32> = words.next().and_then(|w| w.parse().ok());
                if let (Some(n), Some(uid)) = (number, words.next())
                    && let Some(e) = entries.iter_mut().find(|e| e.number == n)
                {
                    e.uid = Some(uid.to_string());
                }
            }
        }
        Ok(entries)
    }

    /// `RETR n`: the whole message.
    pub async fn retr(&mut self, number: u32) -> Result<Vec<u8>> {
        self.message_command(&format!("RETR {number}"), number)
            .await
    }

    /// `TOP n lines`: the header and the first `lines` body lines.
    pub async fn top(&mut self, number: u32, lines: u32) -> Result<Vec<u8>> {
        self.message_command(&format!("TOP {number} {lines}"), number)
            .await
    }

    async fn message_command(&mut self, command: &str, number: u32) -> Result<Vec<u8>> {
        self.conn.send(format!("{command}\r\n").as_bytes()).await?;
        match self.status_line().await? {
            Ok(_) => self.multi_line().await,
            Err(text) => Err(Error::NotFound(format!(
                "message {number} is not in the maildrop (\"-ERR {text}\")"
            ))),
        }
    }

    /// `DELE n`: marks a message; it is removed at QUIT.
    pub async fn dele(&mut self, number: u32) -> Result<()> {
        self.simple(&format!("DELE {number}")).await.map(|_| ())
    }

    /// `QUIT`: ends the session; marked messages are removed now.
    pub async fn quit(mut self) -> Result<()> {
        self.simple("QUIT").await?;
        self.conn.close().await;
        Ok(())
    }

    /// Sends a one-line command and expects `+OK`; returns its text.
    async fn simple(&mut self, command: &str) -> Result<String> {
        self.conn.send(format!("{command}\r\n").as_bytes()).await?;
        match self.status_line().await? {
            Ok(text) => Ok(text),
            Err(text) => Err(Error::refused(command.to_string(), format!("-ERR {text}"))),
        }
    }

    /// Reads `+OK text` (Ok) or `-ERR text` (Err).
    async fn status_line(&mut self) -> Result<std::result::Result<String, String>> {
        let line = self.conn.read_line(MAX_LINE).await?;
        let text = String::from_utf8_lossy(&line).into_owned();
        if let Some(rest) = text.strip_prefix("+OK") {
            Ok(Ok(rest.trim_start().to_string()))
        } else if let Some(rest) = text.strip_prefix("-ERR") {
            Ok(Err(rest.trim_start().to_string()))
        } else {
            Err(Error::protocol(format!("not a POP3 status line: {text:?}")))
        }
    }

    /// Reads a multi-line body up to the `.` line, dot-unstuffed, CRLF line
    /// endings, at most `max_message` bytes.
    async fn multi_line(&mut self) -> Result<Vec<u8>> {
        let mut body = Vec::new();
        let trace = self.conn.tracing();
        let mut lines = 0usize;
        loop {
            let line = self.read_raw_line().await?;
            if line == b"." {
                break;
            }
            if trace && lines < 20 {
                self.conn.trace_in(&line);
            }
            lines += 1;
            let line = line.strip_prefix(b".").unwrap_or(&line);
            if body.len() + line.len() + 2 > self.max_message {
                return Err(Error::protocol(format!(
                    "a response is larger than the {} byte limit",
                    self.max_message
                )));
            }
            body.extend_from_slice(line);
            body.extend_from_slice(b"\r\n");
        }
        if trace {
            self.conn
                .trace_in(format!(".  ({lines} lines, {} bytes)", body.len()).as_bytes());
        }
        Ok(body)
    }

    /// One line of a multi-line body, untraced, bounded by `max_message`.
    async fn read_raw_line(&mut self) -> Result<Vec<u8>> {
        loop {
            if let Some(i) = self.conn.buffered().iter().position(|&b| b == b'\n') {
                let mut line = self.conn.buffered()[..i].to_vec();
                self.conn.consume(i + 1);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(line);
            }
            if self.conn.buffered().len() > self.max_message {
                return Err(Error::protocol("a response line is too long"));
            }
            self.conn.fill().await?;
        }
    }
}

/// Refuses CR/LF in a USER or PASS argument, which would inject a command.
fn one_line(s: &str) -> Result<&str> {
    if s.contains(['\r', '\n']) {
        return Err(Error::Usage(
            "line breaks are not allowed in credentials".into(),
        ));
    }
    Ok(s)
}
