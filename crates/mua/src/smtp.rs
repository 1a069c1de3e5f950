//! SMTP submission client (RFC 6409 over RFC 5321): greeting, EHLO,
//! STARTTLS (RFC 3207), AUTH (RFC 4954) with the best mechanism offered,
//! then MAIL / RCPT / DATA.
//!
//! Replies are parsed by `mailroom-smtp-proto` ([`Reply::parse`]), the same
//! parser the outbound MTA uses, bounded in line length and line count.
//!
//! Invariants:
//! * with [`Security::Starttls`] nothing but EHLO is sent before TLS, and a
//!   server that does not offer STARTTLS is refused (no silent downgrade);
//!   EHLO is sent again after the handshake (RFC 3207 §4.2);
//! * SCRAM-SHA-256 is preferred; PLAIN is only used over TLS or to a
//!   loopback server; the password is never traced;
//! * DATA content is sent with CRLF line endings and dot-stuffing
//!   (RFC 5321 §4.5.2), so a line with a single `.` in the message cannot end
//!   it early.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use mailroom_sasl::client::{ScramClient, plain_response};
use mailroom_smtp_proto::{Capabilities, MAX_REPLY_LINE, MAX_REPLY_LINES, Reply, ReplyParse};

use crate::connection::{ClientOptions, Connection, Endpoint, NoProgress, Progress, Security};
use crate::error::{Error, Result};

/// An open submission session.
#[derive(Debug)]
pub struct SmtpClient {
    conn: Connection,
    capabilities: Capabilities,
}

impl SmtpClient {
    /// Connects, reads the greeting, says EHLO and upgrades to TLS when
    /// asked to.
    pub async fn connect(endpoint: &Endpoint, options: &ClientOptions) -> Result<SmtpClient> {
        let mut conn = Connection::open(endpoint, options).await?;
        let greeting = read_reply(&mut conn).await?;
        if greeting.code != 220 {
            return Err(Error::refused("the connection", reply_text(&greeting)));
        }
        let mut capabilities = ehlo(&mut conn).await?;
        if endpoint.security == Security::Starttls {
            if !capabilities.has("STARTTLS") {
                return Err(Error::Tls {
                    server: conn.server().to_string(),
                    reason: "the server does not offer STARTTLS".into(),
                });
            }
            conn.send(b"STARTTLS\r\n").await?;
            let reply = read_reply(&mut conn).await?;
            if reply.code != 220 {
                return Err(Error::refused("STARTTLS", reply_text(&reply)));
            }
            conn.start_tls().await?;
            capabilities = ehlo(&mut conn).await?;
        }
        Ok(SmtpClient { conn, capabilities })
    }

    /// What the server announced in its (last) EHLO reply.
    pub fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    /// Authenticates with SCRAM-SHA-256 when offered, else PLAIN.
    pub async fn login(&mut self, user: &str, password: &str) -> Result<()> {
        self.conn.check_login_allowed()?;
        let mechanisms = self.capabilities.auth_mechanisms();
        let offers = |m: &str| mechanisms.iter().any(|o| o.eq_ignore_ascii_case(m));
        if offers("SCRAM-SHA-256") {
            return self.scram(user, password).await;
        }
        if offers("PLAIN") {
            let response = STANDARD.encode(plain_response(user, password));
            self.conn
                .send_secret(
                    format!("AUTH PLAIN {response}\r\n").as_bytes(),
                    "AUTH PLAIN <redacted>",
                )
                .await?;
            let reply = read_reply(&mut self.conn).await?;
            return auth_outcome(&reply);
        }
        Err(Error::Auth(format!(
            "the server offers no mechanism this client speaks (it offers: {})",
            if mechanisms.is_empty() {
                "none; STARTTLS or TLS may be needed first".to_string()
            } else {
                mechanisms.join(" ")
            }
        )))
    }

    async fn scram(&mut self, user: &str, password: &str) -> Result<()> {
        let (mut client, first) =
            ScramClient::start(user, password).map_err(|e| Error::Auth(e.to_string()))?;
        self.conn
            .send_secret(
                format!("AUTH SCRAM-SHA-256 {}\r\n", STANDARD.encode(&first)).as_bytes(),
                "AUTH SCRAM-SHA-256 <redacted>",
            )
            .await?;
        let reply = read_reply(&mut self.conn).await?;
        if reply.code != 334 {
            return auth_outcome(&reply);
        }
        let server_first = decode_challenge(&reply)?;
        let response = match client.respond(&server_first) {
            Ok(r) => r,
            Err(e) => {
                self.conn.send(b"*\r\n").await?;
                let _ = read_reply(&mut self.conn).await;
                return Err(Error::Auth(e.to_string()));
            }
        };
        self.conn
            .send_secret(
                format!("{}\r\n", STANDARD.encode(response)).as_bytes(),
                "<redacted>",
            )
            .await?;
        let reply = read_reply(&mut self.conn).await?;
        let server_final = match reply.code {
            // RFC 4954 §4: server-final data in a 334, answered with an empty line…
            334 => {
                let data = decode_challenge(&reply)?;
                self.conn.send(b"\r\n").await?;
                let last = read_reply(&mut self.conn).await?;
                auth_outcome(&last)?;
                data
            }
            // …or as additional data in the 235 (RFC 4954 §4, success data).
            235 => {
                let text = reply.lines.first().cloned().unwrap_or_default();
                let word = text.split_whitespace().next().unwrap_or("");
                STANDARD.decode(word).unwrap_or_default()
            }
            _ => return auth_outcome(&reply),
        };
        if !server_final.is_empty() {
            client
                .finish(&server_final)
                .map_err(|e| Error::Auth(e.to_string()))?;
        }
        Ok(())
    }

    /// Sends one message: MAIL FROM, one RCPT TO per recipient, DATA.
    /// Fails as a whole if any recipient is refused (nothing is sent then).
    pub async fn send(&mut self, from: &str, recipients: &[String], message: &[u8]) -> Result<()> {
        self.send_with_progress(from, recipients, message, &mut NoProgress)
            .await
    }

    /// [`SmtpClient::send`], telling `progress` how much of the content
    /// went out.
    pub async fn send_with_progress(
        &mut self,
        from: &str,
        recipients: &[String],
        message: &[u8],
        progress: &mut dyn Progress,
    ) -> Result<()> {
        if recipients.is_empty() {
            return Err(Error::Usage("no recipients".into()));
        }
        for address in std::iter::once(from).chain(recipients.iter().map(String::as_str)) {
            if address
                .bytes()
                .any(|b| b.is_ascii_control() || b == b'<' || b == b'>')
            {
                return Err(Error::Usage(format!("invalid address {address:?}")));
            }
        }
        let mut mail = format!("MAIL FROM:<{from}>");
        if self.capabilities.has("8BITMIME") && !message.is_ascii() {
            mail.push_str(" BODY=8BITMIME");
        }
        if self.capabilities.has("SIZE") {
            mail.push_str(&format!(" SIZE={}", message.len()));
        }
        self.command(&mail, 250).await?;
        for rcpt in recipients {
            if let Err(e) = self.command(&format!("RCPT TO:<{rcpt}>"), 250).await {
                let _ = self.command("RSET", 250).await;
                return Err(e);
            }
        }
        self.command("DATA", 354).await?;
        let content = dot_stuff(message);
        progress.start("sending", content.len() as u64);
        let sent = self.conn.send_content_progress(&content, progress).await;
        progress.finish();
        sent?;
        let reply = read_reply(&mut self.conn).await?;
        if reply.code != 250 {
            return Err(Error::refused("the message", reply_text(&reply)));
        }
        Ok(())
    }

    /// QUIT, ignoring the answer.
    pub async fn quit(mut self) {
        if self.conn.send(b"QUIT\r\n").await.is_ok() {
            let _ = read_reply(&mut self.conn).await;
        }
        self.conn.close().await;
    }

    async fn command(&mut self, line: &str, expect: u16) -> Result<Reply> {
        self.conn.send(format!("{line}\r\n").as_bytes()).await?;
        let reply = read_reply(&mut self.conn).await?;
        if reply.code != expect {
            return Err(Error::refused(line.to_string(), reply_text(&reply)));
        }
        Ok(reply)
    }
}

async fn ehlo(conn: &mut Connection) -> Result<Capabilities> {
    let name = local_name();
    conn.send(format!("EHLO {name}\r\n").as_bytes()).await?;
    let reply = read_reply(conn).await?;
    if reply.code != 250 {
        return Err(Error::refused("EHLO", reply_text(&reply)));
    }
    Capabilities::from_reply(&reply).ok_or_else(|| Error::protocol("unreadable EHLO reply"))
}

/// The EHLO argument: an address literal is always valid (RFC 5321 §4.1.4)
/// and does not reveal the local host name.
fn local_name() -> &'static str {
    "[127.0.0.1]"
}

/// Reads one reply, bounded by the parser's line and line-count limits.
async fn read_reply(conn: &mut Connection) -> Result<Reply> {
    loop {
        match Reply::parse(conn.buffered(), MAX_REPLY_LINE) {
            ReplyParse::Complete(reply, used) => {
                if conn.tracing() {
                    for line in conn.buffered()[..used].split(|&b| b == b'\n') {
                        if !line.is_empty() {
                            conn.trace_in(line);
                        }
                    }
                }
                conn.consume(used);
                return Ok(reply);
            }
            ReplyParse::Invalid => return Err(Error::protocol("invalid SMTP reply")),
            ReplyParse::Incomplete => {
                if conn.buffered().len() > MAX_REPLY_LINE * MAX_REPLY_LINES {
                    return Err(Error::protocol("SMTP reply too long"));
                }
                conn.fill().await?;
            }
        }
    }
}

fn reply_text(reply: &Reply) -> String {
    match reply.status {
        Some(s) => format!("{} {s} {}", reply.code, reply.text()),
        None => format!("{} {}", reply.code, reply.text()),
    }
}

fn auth_outcome(reply: &Reply) -> Result<()> {
    match reply.code {
        235 => Ok(()),
        535 | 534 | 454 => Err(Error::Auth(format!("\"{}\"", reply_text(reply)))),
        _ => Err(Error::refused("AUTH", reply_text(reply))),
    }
}

fn decode_challenge(reply: &Reply) -> Result<Vec<u8>> {
    let text = reply.lines.first().map(String::as_str).unwrap_or("").trim();
    STANDARD
        .decode(text)
        .map_err(|_| Error::protocol("AUTH challenge is not base64"))
}

/// The DATA payload: every line ending made CRLF, lines starting with `.`
/// doubled (RFC 5321 §4.5.2), then the terminator `CRLF . CRLF`.
pub fn dot_stuff(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + message.len() / 50 + 5);
    let mut at_line_start = true;
    let mut i = 0;
    while i < message.len() {
        let b = message[i];
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        match b {
            b'\r' if message.get(i + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                i += 1;
                at_line_start = true;
            }
            b'\r' | b'\n' => {
                out.extend_from_slice(b"\r\n");
                at_line_start = true;
            }
            _ => {
                out.push(b);
                at_line_start = false;
            }
        }
        i += 1;
    }
    if !at_line_start {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_stuffing() {
        assert_eq!(dot_stuff(b""), b".\r\n");
        assert_eq!(dot_stuff(b"a\r\n.\r\nb"), b"a\r\n..\r\nb\r\n.\r\n");
        assert_eq!(dot_stuff(b".x\n..y\r\n"), b"..x\r\n...y\r\n.\r\n");
        assert_eq!(dot_stuff(b"a\rb\n"), b"a\r\nb\r\n.\r\n");
        // The DATA receiver of our own server gets the message back intact.
        let original = b"Subject: x\r\n\r\n.\r\n..two\r\nend\r\n";
        let mut receiver = mailroom_smtp_proto::DataReceiver::new(1 << 20);
        let stuffed = dot_stuff(original);
        receiver.feed(&stuffed);
        assert!(receiver.is_done());
        assert_eq!(receiver.finish().unwrap(), original);
    }
}
