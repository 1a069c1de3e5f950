//! The outbound SMTP client: one session to one address of a remote MX
//! ([`Session`]), carrying one message after another, each to the
//! recipients that share that destination; [`deliver`] is a session of one
//! message.
//!
//! Invariants:
//! * a session is reused only while it is sound: every transaction after
//!   the first starts with `RSET` (RFC 5321 §4.1.1.5), and a session whose
//!   connection broke, timed out, answered 421 or answered RSET with
//!   anything but 250 is never used again (dropped without QUIT when the
//!   server cannot be talking sense any more);
//! * with PIPELINING (RFC 2920 §3.1) RSET, MAIL, every RCPT and DATA go in
//!   one write, DATA last; the replies are read in order and mean exactly
//!   what they mean unpipelined. A server answering 354 to a pipelined DATA
//!   after refusing MAIL or every RCPT gets an empty message's end and its
//!   reply is ignored: nobody's outcome depends on it;
//! * every step is bounded in time: connect, greeting, each reply, sending
//!   the data or each BDAT chunk, and the reply after the end of the data
//!   or to each chunk (RFC 5321 §4.5.3.2) — a silent peer never holds a
//!   worker forever;
//! * every recipient ends with exactly one outcome: 2xx after the data is
//!   delivered, 4xx deferred, 5xx failed (RFC 5321 §4.2.1); a 421, a dropped
//!   connection or a timeout defers everything not yet acknowledged, so at
//!   worst a message is sent twice (at-least-once), never lost;
//! * a `BINARYMIME` message is sent with BDAT only, never with DATA
//!   (RFC 3030 §3): in chunks of at most 1 MiB (`BDAT_CHUNK`), each
//!   announced with its exact size, the last one `LAST`, the octets
//!   untouched (no dot-stuffing, no line ending added), and no chunk after
//!   one that was not answered 2xx (RFC 3030 §2). The reply that ends the
//!   transaction (to `BDAT … LAST`, or the first 4xx/5xx to a chunk) is
//!   every accepted recipient's outcome, as the reply after the data is;
//! * every other message is sent with DATA, dot-stuffed (RFC 5321 §4.5.2),
//!   with bare CR and LF made CRLF and always ending with CRLF before
//!   `.CRLF`, so its content can never end the data early; BDAT is not
//!   used for them even when the server offers CHUNKING;
//! * limits the server announced are honoured before sending: `SIZE`
//!   (RFC 1870), `SMTPUTF8` (RFC 6531), and a `BINARYMIME` body is never sent
//!   to a server that does not offer both `BINARYMIME` and `CHUNKING`:
//!   such a session ends before MAIL with a permanent 5.6.3 host error
//!   (the relay fails the recipients with it, and their sender gets a DSN,
//!   unless another MX takes the message);
//! * STARTTLS is opportunistic (RFC 7435, RFC 3207): it is used whenever the
//!   server offers it. The certificate is checked against the system's trust
//!   anchors (`/etc/ssl/certs/ca-certificates.crt` when present) *after* the
//!   handshake and the result is only recorded: MX host names are not
//!   authenticated by DNS without DNSSEC/DANE or MTA-STS, so refusing an
//!   unverifiable certificate would only push the mail to cleartext. A
//!   failed handshake falls back to a cleartext session on a new connection
//!   unless the message demands TLS (RFC 8689 REQUIRETLS), which also
//!   demands a verified certificate.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mailroom_smtp_proto::{
    Body, Capabilities, Command, ForwardPath, HeloName, Host, MAX_REPLY_LINE, MailParameters,
    Notify, OriginalRecipient, Path, RcptParameters, Reply, ReplyParse, Ret, ReversePath,
};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Time limits of an outbound session.
#[derive(Debug, Clone)]
pub struct Timeouts {
    /// TCP connect.
    pub connect: Duration,
    /// The greeting and every reply to a command (RFC 5321 §4.5.3.2: 5 minutes).
    pub command: Duration,
    /// The reply after `.` ends the data (RFC 5321 §4.5.3.2.6: 10 minutes);
    /// also sending the data, and each BDAT chunk with its reply.
    pub data_end: Duration,
}

/// What every outbound session shares: our name, time limits, TLS setup.
#[derive(Clone)]
pub struct ClientSettings {
    /// The name we give in EHLO/HELO (`server.hostname`).
    pub hostname: String,
    /// Time limits.
    pub timeouts: Timeouts,
    tls: Option<Arc<rustls::ClientConfig>>,
    verifier: Option<Arc<WebPkiServerVerifier>>,
}

impl std::fmt::Debug for ClientSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSettings")
            .field("hostname", &self.hostname)
            .field("timeouts", &self.timeouts)
            .field("trust_anchors", &self.verifier.is_some())
            .finish()
    }
}

/// The system trust anchors, if the usual bundle exists and has any.
fn system_roots() -> Option<rustls::RootCertStore> {
    use rustls::pki_types::pem::PemObject;
    let pem = std::fs::read("/etc/ssl/certs/ca-certificates.crt").ok()?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem).flatten() {
        let _ = roots.add(cert);
    }
    (!roots.is_empty()).then_some(roots)
}

impl ClientSettings {
    /// Settings for sessions that announce `hostname`.
    pub fn new(hostname: String, timeouts: Timeouts) -> ClientSettings {
        let provider = mailroom_net::tls::provider();
        let verifier = system_roots().and_then(|roots| {
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .ok()
        });
        let accept = Arc::new(RecordOnly {
            provider: provider.clone(),
        });
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map(|b| {
                b.dangerous()
                    .with_custom_certificate_verifier(accept)
                    .with_no_client_auth()
            })
            // The aws-lc-rs provider supports the default versions, so this
            // is always `Some`; without it sessions would run in cleartext.
            .ok()
            .map(Arc::new);
        ClientSettings {
            hostname,
            timeouts,
            tls,
            verifier,
        }
    }
}

/// The handshake verifier of opportunistic TLS: it checks that the server
/// holds the key of the certificate it sent (the handshake signatures), and
/// accepts the certificate itself; whether it chains to a trust anchor is
/// checked after the handshake and recorded (see the module doc).
#[derive(Debug)]
struct RecordOnly {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for RecordOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// One recipient as the client sends it, with its DSN parameters (RFC 3461).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutRecipient {
    /// The address.
    pub address: String,
    /// `addr-type;address` (decoded), from the queue.
    pub orcpt: Option<String>,
    /// `NEVER` or a comma list of `SUCCESS,FAILURE,DELAY`, from the queue.
    pub notify: Option<String>,
}

/// One message to send in one transaction.
#[derive(Debug, Clone)]
pub struct Envelope<'a> {
    /// The reverse path; empty for `<>`.
    pub sender: &'a str,
    /// The recipients at this destination.
    pub recipients: &'a [OutRecipient],
    /// RFC 3461 `ENVID`.
    pub env_id: Option<&'a str>,
    /// RFC 3461 `RET` (`FULL` or `HDRS`).
    pub ret: Option<&'a str>,
    /// `BODY` (`7BIT`, `8BITMIME`, `BINARYMIME`).
    pub body_type: Option<&'a str>,
    /// Whether the message needs SMTPUTF8.
    pub smtputf8: bool,
    /// RFC 8689 REQUIRETLS.
    pub requiretls: bool,
    /// The message, not dot-stuffed: CRLF line endings, except that a
    /// `BINARYMIME` message is any octets, sent exactly as they are.
    pub message: &'a [u8],
}

/// The result for one recipient. The text starts with an RFC 3463 status
/// and names the host and what it said, for the queue and the DSN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The server took responsibility (2xx after the data).
    Delivered(String),
    /// Try again later (4xx, 421, dropped connection, timeout).
    Deferred(String),
    /// Will never succeed as is (5xx).
    Failed(String),
}

impl Outcome {
    /// The text of the outcome.
    pub fn text(&self) -> &str {
        match self {
            Outcome::Delivered(s) | Outcome::Deferred(s) | Outcome::Failed(s) => s,
        }
    }
}

/// How the session was protected, recorded for logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsState {
    /// Cleartext (not offered, or the handshake failed).
    None,
    /// Encrypted, certificate not verifiable against the trust anchors.
    Unverified,
    /// Encrypted, certificate chains to a trust anchor and names the host.
    Verified,
}

/// Why a session produced no per-recipient answer: the next MX address
/// should be tried. `permanent` when the server refused us outright (a 5xx
/// greeting, EHLO and HELO refused, our message too large for it…).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostError {
    /// Status and explanation.
    pub reason: String,
    /// Whether retrying the same server later would not help.
    pub permanent: bool,
}

/// What one session achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionResult {
    /// One outcome per recipient, in the order given.
    pub outcomes: Vec<Outcome>,
    /// The protection the transaction ran under.
    pub tls: TlsState,
}

/// Appends `message` to `out` dot-stuffed for DATA (RFC 5321 §4.5.2),
/// followed by the terminator `.CRLF`. A line starting with `.` gets a
/// second one; a lone LF becomes CRLF so no line ending is ambiguous for the
/// receiver (SMTP smuggling); a missing final CRLF is added.
pub fn dot_stuff(message: &[u8], out: &mut Vec<u8>) {
    out.reserve(message.len() + message.len() / 64 + 5);
    let mut at_line_start = true;
    let mut prev = 0u8;
    for &b in message {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        if b == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        if prev == b'\r' && b != b'\n' {
            // A lone CR: end the line properly.
            out.push(b'\n');
            if b == b'.' {
                out.push(b'.');
            }
        }
        out.push(b);
        at_line_start = b == b'\n';
        prev = b;
    }
    if prev == b'\r' {
        out.push(b'\n');
    } else if !message.is_empty() && prev != b'\n' {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
}

/// The peer went away or broke the protocol: defer what is open.
#[derive(Debug)]
struct Broken(String);

/// A connection with its read buffer.
struct Conn<S> {
    stream: S,
    buf: Vec<u8>,
    peer: String,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    async fn send(&mut self, bytes: &[u8], limit: Duration) -> Result<(), Broken> {
        match tokio::time::timeout(limit, self.stream.write_all(bytes)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Broken(format!("4.4.2 {}: connection lost: {e}", self.peer))),
            Err(_) => Err(Broken(format!(
                "4.4.2 {}: timeout while sending",
                self.peer
            ))),
        }
    }

    async fn reply(&mut self, limit: Duration, waiting_for: &str) -> Result<Reply, Broken> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match Reply::parse(&self.buf, MAX_REPLY_LINE) {
                ReplyParse::Complete(reply, used) => {
                    self.buf.drain(..used);
                    return Ok(reply);
                }
                ReplyParse::Invalid => {
                    return Err(Broken(format!(
                        "4.5.0 {}: invalid reply {waiting_for}",
                        self.peer
                    )));
                }
                ReplyParse::Incomplete => {}
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Ok(Ok(0)) => {
                    return Err(Broken(format!(
                        "4.4.2 {}: connection closed {waiting_for}",
                        self.peer
                    )));
                }
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Ok(Err(e)) => {
                    return Err(Broken(format!(
                        "4.4.2 {}: connection lost {waiting_for}: {e}",
                        self.peer
                    )));
                }
                Err(_) => {
                    return Err(Broken(format!(
                        "4.4.2 {}: timeout {waiting_for} after {}s",
                        self.peer,
                        limit.as_secs()
                    )));
                }
            }
        }
    }

    async fn command(&mut self, command: &Command, limit: Duration) -> Result<Reply, Broken> {
        let mut out = Vec::new();
        command.write_to(&mut out);
        self.send(&out, limit).await?;
        self.reply(limit, &format!("after {}", command.verb()))
            .await
    }

    /// Sends QUIT politely; the answer does not matter (RFC 5321 §4.1.1.10).
    async fn quit(&mut self, limit: Duration) {
        let _ = tokio::time::timeout(limit.min(Duration::from_secs(5)), async {
            let _ = self.command(&Command::Quit, limit).await;
        })
        .await;
    }
}

/// `host [ip]:port said: 550 5.1.1 text`, the status first.
fn said(peer: &str, reply: &Reply) -> String {
    let status = reply
        .status
        .map(|s| s.to_string())
        .unwrap_or_else(|| format!("{}.0.0", reply.code / 100));
    let mut wire = reply.to_string();
    // Multi-line replies become one line.
    wire = wire.replace("\r\n", " ");
    format!("{status} {peer} said: {wire}")
}

fn helo_name(hostname: &str) -> HeloName {
    HeloName {
        as_sent: hostname.to_string(),
        host: Host::parse(hostname).unwrap_or_else(|_| Host::Name(hostname.to_string())),
    }
}

/// Where a session stands after greeting and EHLO.
enum Greeted {
    /// Ready for a transaction with these capabilities (`None` after HELO).
    Ready(Option<Capabilities>),
    /// The server refused us.
    Refused(HostError),
}

async fn greet<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
    settings: &ClientSettings,
    read_greeting: bool,
) -> Result<Greeted, Broken> {
    let limit = settings.timeouts.command;
    if read_greeting {
        let greeting = conn.reply(limit, "waiting for the greeting").await?;
        if greeting.code != 220 {
            // RFC 5321 §3.1: 554 means no service here; 421 try later.
            return Ok(Greeted::Refused(HostError {
                reason: said(&conn.peer, &greeting),
                permanent: greeting.is_permanent(),
            }));
        }
    }
    let name = helo_name(&settings.hostname);
    let ehlo = conn.command(&Command::Ehlo(name.clone()), limit).await?;
    if let Some(caps) = Capabilities::from_reply(&ehlo) {
        return Ok(Greeted::Ready(Some(caps)));
    }
    if ehlo.code == 421 || ehlo.is_transient() {
        return Ok(Greeted::Refused(HostError {
            reason: said(&conn.peer, &ehlo),
            permanent: false,
        }));
    }
    // RFC 5321 §4.1.4: a server that does not know EHLO answers 5xx; fall
    // back to HELO.
    let helo = conn.command(&Command::Helo(name), limit).await?;
    if helo.code == 250 {
        Ok(Greeted::Ready(None))
    } else {
        Ok(Greeted::Refused(HostError {
            reason: said(&conn.peer, &helo),
            permanent: helo.is_permanent(),
        }))
    }
}

fn parse_notify(text: &str) -> Option<Notify> {
    if text.eq_ignore_ascii_case("NEVER") {
        return Some(Notify::NEVER);
    }
    let mut n = Notify::default();
    for word in text.split(',') {
        match word.trim().to_ascii_uppercase().as_str() {
            "SUCCESS" => n.success = true,
            "FAILURE" => n.failure = true,
            "DELAY" => n.delay = true,
            _ => {}
        }
    }
    (!n.is_never()).then_some(n)
}

/// What the server's capabilities allow for this message, or why it must
/// not be sent there.
fn check_limits(
    peer: &str,
    caps: Option<&Capabilities>,
    env: &Envelope<'_>,
) -> Result<(), HostError> {
    let has = |k: &str| caps.is_some_and(|c| c.has(k));
    if let Some(limit) = caps.and_then(Capabilities::size_limit)
        && env.message.len() as u64 > limit
    {
        return Err(HostError {
            reason: format!(
                "5.3.4 {peer} accepts at most {limit} bytes; the message has {} (RFC 1870)",
                env.message.len()
            ),
            permanent: true,
        });
    }
    if env.smtputf8 && !has("SMTPUTF8") {
        return Err(HostError {
            reason: format!(
                "5.6.7 {peer} does not support SMTPUTF8, which this message needs \
                 (internationalised addresses or headers, RFC 6531)"
            ),
            permanent: true,
        });
    }
    if is_binary(env) && !(has("BINARYMIME") && has("CHUNKING")) {
        return Err(HostError {
            reason: format!("5.6.3 {peer} cannot receive a binary MIME message (RFC 3030)"),
            permanent: true,
        });
    }
    Ok(())
}

/// How a transaction ended when the connection survived it.
enum TxEnd {
    /// Every recipient that was sent has its outcome.
    Done,
    /// The server gave no per-recipient answer (MAIL refused with a 4xx,
    /// an unusable sender): another host, or a later attempt, may do
    /// better. `closing`: the server answered 421, the session is over.
    Refused { error: HostError, closing: bool },
    /// On a reused session, the server refused RSET (anything but 250) or
    /// answered MAIL with 421: nothing of this message was taken, and the
    /// session is over. The message may go on a fresh session.
    NotStarted(String),
}

/// Runs MAIL, RCPT, then DATA (or BDAT for a binary message) over a ready
/// session, after RSET when `rset` (the session carried a transaction
/// before, RFC 5321 §4.1.1.5). With PIPELINING (RFC 2920 §3.1) RSET, MAIL,
/// every RCPT and DATA go in one write (DATA last, as the RFC wants; not
/// for BDAT) and the replies are read in order. Outcomes are filled in as
/// the server answers; what remains `None` when the session breaks is
/// deferred by the caller. `mail_accepted` tells the caller whether the
/// server took MAIL (before that, a break on a reused session lost nothing
/// of this message).
async fn transaction<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
    settings: &ClientSettings,
    caps: Option<&Capabilities>,
    env: &Envelope<'_>,
    rset: bool,
    outcomes: &mut [Option<Outcome>],
    mail_accepted: &mut bool,
) -> Result<TxEnd, Broken> {
    let limit = settings.timeouts.command;
    let has = |k: &str| caps.is_some_and(|c| c.has(k));
    let dsn = has("DSN");
    let from = if env.sender.is_empty() {
        ReversePath::Null
    } else {
        match Path::from_mailbox(env.sender) {
            Ok(p) => ReversePath::Path(p),
            Err(e) => {
                return Ok(TxEnd::Refused {
                    error: HostError {
                        reason: format!("5.1.7 invalid sender {:?}: {e}", env.sender),
                        permanent: true,
                    },
                    closing: false,
                });
            }
        }
    };
    let mut params = MailParameters::default();
    if has("SIZE") {
        params.size = Some(env.message.len() as u64);
    }
    let binary = is_binary(env);
    if binary {
        // RFC 3030 §3: announced, and sent with BDAT below; `check_limits`
        // made sure the server offers BINARYMIME and CHUNKING.
        params.body = Some(Body::BinaryMime);
    } else if has("8BITMIME") {
        // RFC 6152: only announced to servers that take 8-bit data; others
        // get the message as it is, as Postfix does.
        params.body = match env.body_type.map(str::to_ascii_uppercase).as_deref() {
            Some("8BITMIME") => Some(Body::EightBitMime),
            Some("7BIT") => Some(Body::SevenBit),
            _ => None,
        };
    }
    params.smtputf8 = env.smtputf8;
    if env.requiretls {
        params.requiretls = true;
    }
    if dsn {
        params.ret = match env.ret.map(str::to_ascii_uppercase).as_deref() {
            Some("FULL") => Some(Ret::Full),
            Some("HDRS") => Some(Ret::Headers),
            _ => None,
        };
        params.envid = env.env_id.map(str::to_string);
    }
    let mail = Command::Mail { from, params };
    let mut rcpts = Vec::with_capacity(env.recipients.len());
    for (i, r) in env.recipients.iter().enumerate() {
        match Path::from_mailbox(&r.address) {
            Ok(p) => {
                let mut params = RcptParameters::default();
                if dsn {
                    params.notify = r.notify.as_deref().and_then(parse_notify).or_else(|| {
                        r.notify
                            .as_deref()
                            .filter(|n| n.eq_ignore_ascii_case("NEVER"))
                            .map(|_| Notify::NEVER)
                    });
                    params.orcpt = r.orcpt.as_deref().and_then(|o| {
                        let (addr_type, address) = o.split_once(';')?;
                        Some(OriginalRecipient {
                            addr_type: addr_type.to_string(),
                            address: address.to_string(),
                        })
                    });
                }
                rcpts.push((
                    i,
                    Command::Rcpt {
                        to: ForwardPath::Path(p),
                        params,
                    },
                ));
            }
            Err(e) => {
                outcomes[i] = Some(Outcome::Failed(format!(
                    "5.1.3 invalid recipient address {:?}: {e}",
                    r.address
                )));
            }
        }
    }
    if rcpts.is_empty() {
        return Ok(TxEnd::Done);
    }

    let mail_reply;
    let mut rcpt_replies = Vec::with_capacity(rcpts.len());
    let mut data_reply = None;
    if has("PIPELINING") {
        // RFC 2920 §3.1: RSET, MAIL and every RCPT in one write, DATA last
        // in the group; a BDAT transaction sends its chunks after the
        // replies (see `bdat`).
        let mut out = Vec::new();
        if rset {
            Command::Rset.write_to(&mut out);
        }
        mail.write_to(&mut out);
        for (_, c) in &rcpts {
            c.write_to(&mut out);
        }
        if !binary {
            Command::Data.write_to(&mut out);
        }
        conn.send(&out, limit).await?;
        if rset {
            let reply = conn.reply(limit, "after RSET").await?;
            if reply.code != 250 {
                return Ok(TxEnd::NotStarted(said(&conn.peer, &reply)));
            }
        }
        mail_reply = conn.reply(limit, "after MAIL").await?;
        if let Some(end) = closing_at_mail(conn, &mail_reply, rset) {
            return Ok(end);
        }
        *mail_accepted = is_success(&mail_reply);
        for _ in &rcpts {
            let reply = conn.reply(limit, "after RCPT").await;
            match reply {
                Ok(r) => rcpt_replies.push(r),
                Err(e) => {
                    apply_rcpt_replies(conn, &rcpts, &rcpt_replies, &mail_reply, outcomes);
                    return Err(e);
                }
            }
        }
        if !binary {
            match conn.reply(limit, "after DATA").await {
                Ok(r) => data_reply = Some(r),
                Err(e) => {
                    apply_rcpt_replies(conn, &rcpts, &rcpt_replies, &mail_reply, outcomes);
                    return Err(e);
                }
            }
        }
    } else {
        if rset {
            let reply = conn.command(&Command::Rset, limit).await?;
            if reply.code != 250 {
                return Ok(TxEnd::NotStarted(said(&conn.peer, &reply)));
            }
        }
        mail_reply = conn.command(&mail, limit).await?;
        if let Some(end) = closing_at_mail(conn, &mail_reply, rset) {
            return Ok(end);
        }
        *mail_accepted = is_success(&mail_reply);
        if is_success(&mail_reply) {
            for (_, c) in &rcpts {
                let r = conn.command(c, limit).await;
                match r {
                    Ok(r) => {
                        let stop = r.code == 421;
                        rcpt_replies.push(r);
                        if stop {
                            break;
                        }
                    }
                    Err(e) => {
                        apply_rcpt_replies(conn, &rcpts, &rcpt_replies, &mail_reply, outcomes);
                        return Err(e);
                    }
                }
            }
        }
    }
    if !is_success(&mail_reply) {
        abandon_data(conn, data_reply.as_ref(), limit).await?;
        // The sender was refused. A 5xx is the server's final word for this
        // message; a 4xx is worth another host or later.
        let reason = said(&conn.peer, &mail_reply);
        if mail_reply.is_permanent() {
            for (i, _) in &rcpts {
                outcomes[*i] = Some(Outcome::Failed(reason.clone()));
            }
            return Ok(TxEnd::Done);
        }
        return Ok(TxEnd::Refused {
            error: HostError {
                reason,
                permanent: false,
            },
            closing: false,
        });
    }
    let accepted = apply_rcpt_replies(conn, &rcpts, &rcpt_replies, &mail_reply, outcomes);
    if rcpt_replies.iter().any(|r| r.code == 421) {
        // The server is closing: nothing more can happen in this session.
        return Err(Broken(format!(
            "4.4.2 {}: the server closed the transaction (421)",
            conn.peer
        )));
    }
    if accepted.is_empty() {
        abandon_data(conn, data_reply.as_ref(), limit).await?;
        return Ok(TxEnd::Done);
    }

    let end = if binary {
        // RFC 3030 §3: a binary body goes with BDAT only, never with DATA.
        bdat(conn, env.message, BDAT_CHUNK, settings.timeouts.data_end).await?
    } else {
        let data = match data_reply {
            Some(reply) => reply,
            None => conn.command(&Command::Data, limit).await?,
        };
        if data.code != 354 {
            let reason = said(&conn.peer, &data);
            if data.code == 421 {
                return Err(Broken(reason));
            }
            for i in &accepted {
                outcomes[*i] = Some(if data.is_permanent() {
                    Outcome::Failed(reason.clone())
                } else {
                    Outcome::Deferred(reason.clone())
                });
            }
            return Ok(TxEnd::Done);
        }
        let mut body = Vec::new();
        dot_stuff(env.message, &mut body);
        conn.send(&body, settings.timeouts.data_end).await?;
        conn.reply(settings.timeouts.data_end, "after the end of the data")
            .await?
    };
    // The answer to the end of the data (or to the BDAT chunk that ended
    // the transaction, RFC 3030 §2) is every accepted recipient's outcome.
    let reason = said(&conn.peer, &end);
    for i in &accepted {
        outcomes[*i] = Some(if is_success(&end) {
            Outcome::Delivered(reason.clone())
        } else if end.is_permanent() {
            Outcome::Failed(reason.clone())
        } else {
            Outcome::Deferred(reason.clone())
        });
    }
    Ok(TxEnd::Done)
}

/// A 421 to MAIL: the server is closing (RFC 5321 §3.8). On a reused
/// session nothing of the message was taken (it may go on a fresh
/// session); on a fresh one it is the host's refusal. The replies still
/// owed to pipelined commands are not read: the session is over.
fn closing_at_mail<S>(conn: &Conn<S>, mail: &Reply, reused: bool) -> Option<TxEnd> {
    if mail.code != 421 {
        return None;
    }
    let reason = said(&conn.peer, mail);
    Some(if reused {
        TxEnd::NotStarted(reason)
    } else {
        TxEnd::Refused {
            error: HostError {
                reason,
                permanent: false,
            },
            closing: true,
        }
    })
}

/// After a pipelined DATA whose transaction is not going ahead (MAIL or
/// every RCPT refused): a server that nevertheless answered 354 waits for
/// data, so it gets an empty message's terminator and its reply is read
/// and ignored, as Postfix does (RFC 2920 §3.1 expects it to refuse DATA).
async fn abandon_data<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
    data: Option<&Reply>,
    limit: Duration,
) -> Result<(), Broken> {
    if data.is_some_and(|d| d.code == 354) {
        conn.send(b".\r\n", limit).await?;
        conn.reply(limit, "after an empty data").await?;
    }
    Ok(())
}

/// Whether the message is a binary MIME body (RFC 3030 §3), which only
/// BDAT may carry.
fn is_binary(env: &Envelope<'_>) -> bool {
    env.body_type
        .is_some_and(|b| b.eq_ignore_ascii_case("BINARYMIME"))
}

/// The largest BDAT chunk sent: a message is cut into chunks of at most
/// this many octets, each announced with its exact size.
const BDAT_CHUNK: usize = 1 << 20;

/// Sends `message` as BDAT chunks of at most `chunk` octets, the last one
/// marked `LAST` (`BDAT 0 LAST` for an empty message), the octets as they
/// are: no dot-stuffing, no line ending added (RFC 3030 §2). Each chunk
/// waits for its reply before the next goes, even with PIPELINING: a
/// server that refused an early chunk and closed the connection would
/// otherwise turn its answer into a broken pipe. Returns the reply that
/// ends the transaction: the first one that is not 2xx (no further chunk
/// is sent, RFC 3030 §2), or the reply to the last chunk.
async fn bdat<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
    message: &[u8],
    chunk: usize,
    limit: Duration,
) -> Result<Reply, Broken> {
    let chunk = chunk.max(1);
    let mut rest = message;
    loop {
        let (this, after) = rest.split_at(rest.len().min(chunk));
        let last = after.is_empty();
        let mut out = Vec::with_capacity(this.len() + 32);
        Command::Bdat {
            size: this.len() as u64,
            last,
        }
        .write_to(&mut out);
        out.extend_from_slice(this);
        conn.send(&out, limit).await?;
        let reply = conn.reply(limit, "after BDAT").await?;
        if last || !is_success(&reply) {
            return Ok(reply);
        }
        rest = after;
    }
}

/// RFC 5321 §4.2.1: only 2yz completes a command; a 3yz where none is
/// expected is treated like a transient failure.
fn is_success(reply: &Reply) -> bool {
    (200..300).contains(&reply.code)
}

/// Records RCPT replies: 5xx fails the recipient at once, 4xx defers it;
/// returns the indices of accepted recipients (their outcome waits for the
/// data). Recipients without a reply (yet) are left open.
fn apply_rcpt_replies<S>(
    conn: &Conn<S>,
    rcpts: &[(usize, Command)],
    replies: &[Reply],
    mail: &Reply,
    outcomes: &mut [Option<Outcome>],
) -> Vec<usize> {
    let mut accepted = Vec::new();
    if !is_success(mail) {
        return accepted;
    }
    for ((i, _), reply) in rcpts.iter().zip(replies) {
        if reply.code == 421 {
            // Deferred by the caller with everything else still open.
            continue;
        }
        if is_success(reply) {
            accepted.push(*i);
        } else if reply.is_permanent() {
            outcomes[*i] = Some(Outcome::Failed(said(&conn.peer, reply)));
        } else {
            outcomes[*i] = Some(Outcome::Deferred(said(&conn.peer, reply)));
        }
    }
    accepted
}

/// Delivers `env` through one session to `addr` (an address of MX host
/// `mx_name`). `Err` when the server gave no per-recipient answer, so the
/// caller should try the next address.
pub async fn deliver(
    settings: &ClientSettings,
    addr: SocketAddr,
    mx_name: &str,
    env: &Envelope<'_>,
) -> Result<SessionResult, HostError> {
    let mut session = Session::open(settings, addr, mx_name, env.requiretls).await?;
    let sent = session.send(env).await;
    let tls = session.tls();
    session.quit().await;
    match sent {
        Sent::Answered { outcomes, .. } => Ok(SessionResult { outcomes, tls }),
        Sent::Refused(e) => Err(e),
        // A fresh session never asks for this; should it, nothing was taken.
        Sent::Retry(reason) => Err(HostError {
            reason,
            permanent: false,
        }),
    }
}

/// The byte stream of a session: TCP, or TLS over TCP after STARTTLS (or
/// an in-memory stream in tests).
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Where an open session stands between messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SessionState {
    /// Greeted; no transaction yet.
    Fresh,
    /// A transaction ran: the next one starts with RSET.
    Used,
    /// Broken, or the server is closing: not used again, dropped without QUIT.
    Closed,
}

/// An open SMTP session to one address of one MX host: greeted, encrypted
/// when the server offered STARTTLS, and checked for REQUIRETLS when asked.
/// It carries one message after another ([`Session::send`]), each after
/// `RSET` (RFC 5321 §4.1.1.5), until the caller quits or it breaks.
pub struct Session<'a> {
    settings: &'a ClientSettings,
    conn: Conn<Box<dyn Io>>,
    caps: Option<Capabilities>,
    tls: TlsState,
    state: SessionState,
    transactions: usize,
}

/// What became of one message sent over a [`Session`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    /// One outcome per recipient, in the order given. `broken`: the
    /// connection broke (or the server closed it) during this transaction;
    /// the recipients it had not answered are deferred with this reason,
    /// and the session is over.
    Answered {
        /// One per recipient.
        outcomes: Vec<Outcome>,
        /// Why the session ended in this transaction, if it did.
        broken: Option<String>,
    },
    /// The server gave no per-recipient answer for this message (a limit
    /// it announced, MAIL refused with a 4xx): another MX may take it, as
    /// [`deliver`]'s `Err`. The session stays usable unless it is closed.
    Refused(HostError),
    /// The reused session ended before the server took anything of this
    /// message (RSET refused, the connection closed or a 421 before MAIL
    /// was accepted): send it again on a fresh session.
    Retry(String),
}

impl<'a> Session<'a> {
    /// A session over `conn`, greeted with `caps`, under `tls`.
    fn ready<S: Io + 'static>(
        settings: &'a ClientSettings,
        conn: Conn<S>,
        caps: Option<Capabilities>,
        tls: TlsState,
    ) -> Session<'a> {
        Session {
            settings,
            conn: Conn {
                stream: Box::new(conn.stream),
                buf: conn.buf,
                peer: conn.peer,
            },
            caps,
            tls,
            state: SessionState::Fresh,
            transactions: 0,
        }
    }

    /// Connects to `addr` and greets; with opportunistic STARTTLS and the
    /// cleartext fallback of the module doc. `requiretls`: the session is
    /// only for REQUIRETLS messages (RFC 8689), so it must be verified TLS
    /// to a server offering REQUIRETLS.
    pub async fn open(
        settings: &'a ClientSettings,
        addr: SocketAddr,
        mx_name: &str,
        requiretls: bool,
    ) -> Result<Session<'a>, HostError> {
        let stopped = |stop| match stop {
            SessionStop::Host(e) => e,
            SessionStop::TlsFailed(why) => HostError {
                reason: why,
                permanent: false,
            },
        };
        match session(settings, addr, mx_name, requiretls, true).await {
            Err(SessionStop::TlsFailed(why)) if !requiretls => {
                tracing::info!(%addr, mx = mx_name, error = %why, "STARTTLS failed; retrying in cleartext (RFC 7435)");
                session(settings, addr, mx_name, requiretls, false)
                    .await
                    .map_err(stopped)
            }
            other => other.map_err(stopped),
        }
    }

    /// The protection the session runs under.
    pub fn tls(&self) -> TlsState {
        self.tls
    }

    /// Whether another message may be sent (it did not break or close).
    pub fn usable(&self) -> bool {
        self.state != SessionState::Closed
    }

    /// How many transactions it started.
    pub fn transactions(&self) -> usize {
        self.transactions
    }

    /// Sends one message: its limits checked against what the server
    /// announced, then RSET (when a transaction ran before), MAIL, RCPT,
    /// DATA or BDAT. See [`Sent`].
    pub async fn send(&mut self, env: &Envelope<'_>) -> Sent {
        if self.state == SessionState::Closed {
            return Sent::Retry(format!("4.4.2 {}: the session is closed", self.conn.peer));
        }
        if let Err(e) = check_limits(&self.conn.peer, self.caps.as_ref(), env) {
            return Sent::Refused(e);
        }
        let reused = self.state == SessionState::Used;
        let mut outcomes: Vec<Option<Outcome>> = vec![None; env.recipients.len()];
        let mut mail_accepted = false;
        let end = transaction(
            &mut self.conn,
            self.settings,
            self.caps.as_ref(),
            env,
            reused,
            &mut outcomes,
            &mut mail_accepted,
        )
        .await;
        self.transactions += 1;
        self.state = SessionState::Used;
        let open = |outcomes: Vec<Option<Outcome>>, why: &str| -> Vec<Outcome> {
            outcomes
                .into_iter()
                .map(|o| o.unwrap_or_else(|| Outcome::Deferred(why.to_string())))
                .collect()
        };
        match end {
            Ok(TxEnd::Done) => Sent::Answered {
                outcomes: open(outcomes, &format!("4.4.2 {}: no answer", self.conn.peer)),
                broken: None,
            },
            Ok(TxEnd::Refused { error, closing }) => {
                if closing {
                    self.state = SessionState::Closed;
                }
                Sent::Refused(error)
            }
            Ok(TxEnd::NotStarted(reason)) => {
                self.state = SessionState::Closed;
                Sent::Retry(reason)
            }
            Err(Broken(reason)) if reused && !mail_accepted => {
                self.state = SessionState::Closed;
                Sent::Retry(reason)
            }
            Err(Broken(reason)) => {
                self.state = SessionState::Closed;
                Sent::Answered {
                    outcomes: open(outcomes, &reason),
                    broken: Some(reason),
                }
            }
        }
    }

    /// Ends the session: QUIT unless it broke (RFC 5321 §4.1.1.10).
    pub async fn quit(mut self) {
        if self.state != SessionState::Closed {
            self.conn.quit(self.settings.timeouts.command).await;
        }
    }
}

enum SessionStop {
    Host(HostError),
    TlsFailed(String),
}

fn broken_before_transaction(b: Broken) -> SessionStop {
    SessionStop::Host(HostError {
        reason: b.0,
        permanent: false,
    })
}

/// Connects, greets and (when `try_tls` and offered) starts TLS: a session
/// ready for its first message.
async fn session<'a>(
    settings: &'a ClientSettings,
    addr: SocketAddr,
    mx_name: &str,
    requiretls: bool,
    try_tls: bool,
) -> Result<Session<'a>, SessionStop> {
    let peer = format!("{mx_name}[{}]", addr.ip());
    let tcp = match tokio::time::timeout(settings.timeouts.connect, TcpStream::connect(addr)).await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return Err(SessionStop::Host(HostError {
                reason: format!("4.4.1 cannot connect to {peer}:{}: {e}", addr.port()),
                permanent: false,
            }));
        }
        Err(_) => {
            return Err(SessionStop::Host(HostError {
                reason: format!("4.4.1 timeout connecting to {peer}:{}", addr.port()),
                permanent: false,
            }));
        }
    };
    let _ = tcp.set_nodelay(true);
    let mut conn = Conn {
        stream: tcp,
        buf: Vec::new(),
        peer: peer.clone(),
    };
    let caps = match greet(&mut conn, settings, true)
        .await
        .map_err(broken_before_transaction)?
    {
        Greeted::Ready(c) => c,
        Greeted::Refused(e) => {
            conn.quit(settings.timeouts.command).await;
            return Err(SessionStop::Host(e));
        }
    };
    let offers_tls = caps.as_ref().is_some_and(|c| c.has("STARTTLS"));
    if let Some(tls_config) = settings.tls.clone().filter(|_| try_tls && offers_tls) {
        let reply = conn
            .command(&Command::StartTls, settings.timeouts.command)
            .await
            .map_err(broken_before_transaction)?;
        if reply.code != 220 {
            conn.quit(settings.timeouts.command).await;
            return Err(SessionStop::TlsFailed(said(&peer, &reply)));
        }
        // RFC 3207 §4.2: nothing may follow STARTTLS before the handshake;
        // a server that pipelined bytes here is trying to inject them.
        if !conn.buf.is_empty() {
            return Err(SessionStop::TlsFailed(format!(
                "4.7.0 {peer}: data after the STARTTLS reply"
            )));
        }
        let name = ServerName::try_from(mx_name.to_string())
            .unwrap_or_else(|_| ServerName::IpAddress(addr.ip().into()));
        let connector = tokio_rustls::TlsConnector::from(tls_config);
        let tls = match tokio::time::timeout(
            settings.timeouts.command,
            connector.connect(name.clone(), conn.stream),
        )
        .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                return Err(SessionStop::TlsFailed(format!(
                    "4.7.0 {peer}: TLS handshake failed: {e}"
                )));
            }
            Err(_) => {
                return Err(SessionStop::TlsFailed(format!(
                    "4.7.0 {peer}: TLS handshake timed out"
                )));
            }
        };
        let state = verify_peer(settings, &tls, &name);
        if requiretls && state != TlsState::Verified {
            return Err(SessionStop::Host(HostError {
                reason: format!(
                    "5.7.10 {peer}: certificate not verified, and the message requires TLS (RFC 8689)"
                ),
                permanent: false,
            }));
        }
        let mut conn = Conn {
            stream: tls,
            buf: Vec::new(),
            peer: peer.clone(),
        };
        // RFC 3207 §4.2: forget what was learnt before TLS and ask again.
        let caps = match greet(&mut conn, settings, false)
            .await
            .map_err(broken_before_transaction)?
        {
            Greeted::Ready(c) => c,
            Greeted::Refused(e) => {
                conn.quit(settings.timeouts.command).await;
                return Err(SessionStop::Host(e));
            }
        };
        if requiretls && !caps.as_ref().is_some_and(|c| c.has("REQUIRETLS")) {
            conn.quit(settings.timeouts.command).await;
            return Err(SessionStop::Host(HostError {
                reason: format!("5.7.30 {peer} does not support REQUIRETLS (RFC 8689)"),
                permanent: true,
            }));
        }
        Ok(Session::ready(settings, conn, caps, state))
    } else {
        if requiretls {
            conn.quit(settings.timeouts.command).await;
            return Err(SessionStop::Host(HostError {
                reason: format!(
                    "5.7.10 {peer} does not offer STARTTLS, and the message requires TLS (RFC 8689)"
                ),
                permanent: false,
            }));
        }
        Ok(Session::ready(settings, conn, caps, TlsState::None))
    }
}

/// Checks the peer's certificate chain against the trust anchors, after
/// the handshake (see the module doc), for the record.
fn verify_peer(
    settings: &ClientSettings,
    tls: &tokio_rustls::client::TlsStream<TcpStream>,
    name: &ServerName<'static>,
) -> TlsState {
    let Some(verifier) = &settings.verifier else {
        return TlsState::Unverified;
    };
    let (_, session) = tls.get_ref();
    match session.peer_certificates() {
        Some([end_entity, intermediates @ ..]) => {
            match verifier.verify_server_cert(end_entity, intermediates, name, &[], UnixTime::now())
            {
                Ok(_) => TlsState::Verified,
                Err(_) => TlsState::Unverified,
            }
        }
        _ => TlsState::Unverified,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, BufReader, DuplexStream};

    fn stuffed(input: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        dot_stuff(input, &mut out);
        out
    }

    #[test]
    fn leading_dots_are_doubled() {
        assert_eq!(
            stuffed(b".hidden\r\nok\r\n..two\r\n.\r\n"),
            b"..hidden\r\nok\r\n...two\r\n..\r\n.\r\n"
        );
    }

    #[test]
    fn dots_inside_lines_are_left_alone() {
        assert_eq!(stuffed(b"a.b\r\nc .\r\n"), b"a.b\r\nc .\r\n.\r\n");
    }

    #[test]
    fn the_message_always_ends_with_crlf() {
        assert_eq!(stuffed(b"no newline"), b"no newline\r\n.\r\n");
        assert_eq!(stuffed(b"line\r\n"), b"line\r\n.\r\n");
        assert_eq!(stuffed(b"cr\r"), b"cr\r\n.\r\n");
    }

    #[test]
    fn bare_line_endings_cannot_smuggle_an_end_of_data() {
        // A bare LF followed by a dot would look like an end to lax servers.
        assert_eq!(
            stuffed(b"a\n.\nMAIL FROM:<x>\n"),
            b"a\r\n..\r\nMAIL FROM:<x>\r\n.\r\n"
        );
        assert_eq!(stuffed(b"a\r.\rb"), b"a\r\n..\r\nb\r\n.\r\n");
    }

    #[test]
    fn notify_words_are_read_back() {
        assert_eq!(parse_notify("NEVER"), Some(Notify::NEVER));
        let n = parse_notify("SUCCESS,FAILURE").unwrap();
        assert!(n.success && n.failure && !n.delay);
    }

    #[test]
    fn size_and_smtputf8_are_checked_before_sending() {
        let reply = Reply::multiline(250, "", ["mx", "SIZE 10", "PIPELINING"]);
        let caps = Capabilities::from_reply(&reply).unwrap();
        let env = Envelope {
            sender: "a@b.example",
            recipients: &[],
            env_id: None,
            ret: None,
            body_type: None,
            smtputf8: false,
            requiretls: false,
            message: b"0123456789ABCDEF",
        };
        let e = check_limits("mx[1.2.3.4]", Some(&caps), &env).unwrap_err();
        assert!(e.permanent && e.reason.starts_with("5.3.4"), "{e:?}");
        let small = Envelope {
            message: b"tiny",
            smtputf8: true,
            ..env
        };
        let e = check_limits("mx[1.2.3.4]", Some(&caps), &small).unwrap_err();
        assert!(e.permanent && e.reason.starts_with("5.6.7"), "{e:?}");
    }

    // -----------------------------------------------------------------
    // A scripted peer over an in-memory stream, for the transaction.
    // -----------------------------------------------------------------

    /// How the scripted peer answers.
    #[derive(Clone, Copy)]
    struct Script {
        /// The reply line to `RCPT TO:<address>`.
        rcpt: fn(&str) -> &'static str,
        /// The reply line to BDAT chunk `n` (0-based), `None` to close the
        /// connection instead of answering.
        bdat: fn(usize, bool) -> Option<&'static str>,
        /// The reply line to RSET number `n` (0-based), `None` to close.
        rset: fn(usize) -> Option<&'static str>,
        /// The reply line after data number `n` (0-based), `None` to close.
        data_end: fn(usize) -> Option<&'static str>,
    }

    impl Default for Script {
        fn default() -> Script {
            Script {
                rcpt: |_| "250 2.1.5 ok",
                bdat: |_, last| {
                    Some(if last {
                        "250 2.0.0 message ok"
                    } else {
                        "250 2.0.0 chunk ok"
                    })
                },
                rset: |_| Some("250 2.0.0 ok"),
                data_end: |_| Some("250 2.0.0 data ok"),
            }
        }
    }

    /// What the scripted peer received.
    #[derive(Debug, Default)]
    struct Seen {
        /// Every command line, without CRLF.
        commands: Vec<String>,
        /// `(size, last)` of each BDAT chunk.
        chunks: Vec<(usize, bool)>,
        /// The chunks' octets, in order.
        bdat_body: Vec<u8>,
        /// The lines after DATA, as sent (dot-stuffed), up to `.CRLF`.
        data: Vec<u8>,
        /// The commands as they arrived together: a group ends where the
        /// peer found nothing more to read (RFC 2920 pipelining).
        groups: Vec<Vec<String>>,
        /// How many times DATA's content ended.
        data_ends: usize,
    }

    async fn scripted_peer(stream: DuplexStream, script: Script) -> Seen {
        let mut seen = Seen::default();
        let mut io = BufReader::new(stream);
        let mut in_group = false;
        loop {
            let mut line = Vec::new();
            if io.read_until(b'\n', &mut line).await.unwrap_or(0) == 0 {
                return seen;
            }
            let line = String::from_utf8_lossy(&line).trim_end().to_string();
            seen.commands.push(line.clone());
            if in_group {
                seen.groups.last_mut().unwrap().push(line.clone());
            } else {
                seen.groups.push(vec![line.clone()]);
            }
            // More already waiting: the client sent it with this line.
            in_group = !io.buffer().is_empty();
            let upper = line.to_ascii_uppercase();
            let reply = if upper.starts_with("RCPT TO:<") {
                let address = &line["RCPT TO:<".len()..line.find('>').unwrap()];
                (script.rcpt)(address)
            } else if let Some(args) = upper.strip_prefix("BDAT ") {
                let mut words = args.split(' ');
                let size: usize = words.next().unwrap().parse().unwrap();
                let last = words.next() == Some("LAST");
                let mut chunk = vec![0u8; size];
                if io.read_exact(&mut chunk).await.is_err() {
                    return seen;
                }
                seen.bdat_body.extend_from_slice(&chunk);
                in_group = false;
                seen.chunks.push((size, last));
                match (script.bdat)(seen.chunks.len() - 1, last) {
                    Some(r) => r,
                    None => return seen,
                }
            } else if upper == "DATA" {
                io.get_mut().write_all(b"354 go ahead\r\n").await.unwrap();
                loop {
                    let mut l = Vec::new();
                    if io.read_until(b'\n', &mut l).await.unwrap_or(0) == 0 {
                        return seen;
                    }
                    if l == b".\r\n" {
                        break;
                    }
                    seen.data.extend_from_slice(&l);
                }
                seen.data_ends += 1;
                match (script.data_end)(seen.data_ends - 1) {
                    Some(r) => r,
                    None => return seen,
                }
            } else if upper == "RSET" {
                let n = seen.commands.iter().filter(|c| *c == "RSET").count() - 1;
                match (script.rset)(n) {
                    Some(r) => r,
                    None => return seen,
                }
            } else if upper == "QUIT" {
                let _ = io.get_mut().write_all(b"221 2.0.0 bye\r\n").await;
                return seen;
            } else {
                "250 2.0.0 ok"
            };
            let out = format!("{reply}\r\n");
            if io.get_mut().write_all(out.as_bytes()).await.is_err() {
                return seen;
            }
        }
    }

    fn caps(extensions: &[&str]) -> Capabilities {
        let lines = std::iter::once("mx.test").chain(extensions.iter().copied());
        Capabilities::from_reply(&Reply::multiline(250, "", lines)).unwrap()
    }

    const ALL: &[&str] = &[
        "PIPELINING",
        "8BITMIME",
        "BINARYMIME",
        "CHUNKING",
        "SIZE 10000000",
    ];

    /// RCPT replies: `unknown…` addresses are refused for good.
    fn unknown_refused(address: &str) -> &'static str {
        if address.starts_with("unknown") {
            "550 5.1.1 no such user"
        } else {
            "250 2.1.5 ok"
        }
    }

    fn rcpt(address: &str) -> OutRecipient {
        OutRecipient {
            address: address.into(),
            orcpt: None,
            notify: None,
        }
    }

    /// Runs one transaction of `env` against the scripted peer offering
    /// `extensions`; what `run` returned, and what the peer saw.
    async fn against(
        extensions: &[&str],
        script: Script,
        env: &Envelope<'_>,
    ) -> (Result<SessionResult, SessionStop>, Seen) {
        let (mut sent, seen) = against_many(extensions, script, std::slice::from_ref(env)).await;
        let result = match sent.remove(0) {
            Sent::Answered { outcomes, .. } => Ok(SessionResult {
                outcomes,
                tls: TlsState::None,
            }),
            Sent::Refused(e) => Err(SessionStop::Host(e)),
            Sent::Retry(reason) => panic!("a fresh session asked for a retry: {reason}"),
        };
        (result, seen)
    }

    /// Sends `envs` one after the other over one session with the scripted
    /// peer offering `extensions` (as the relay does: while the session is
    /// usable), then quits; what each send gave, and what the peer saw.
    async fn against_many(
        extensions: &[&str],
        script: Script,
        envs: &[Envelope<'_>],
    ) -> (Vec<Sent>, Seen) {
        let settings = ClientSettings::new(
            "client.test".into(),
            Timeouts {
                connect: Duration::from_secs(5),
                command: Duration::from_secs(5),
                data_end: Duration::from_secs(5),
            },
        );
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        let peer = tokio::spawn(scripted_peer(theirs, script));
        let conn = Conn {
            stream: ours,
            buf: Vec::new(),
            peer: "mx.test[192.0.2.1]".into(),
        };
        let mut session = Session::ready(&settings, conn, Some(caps(extensions)), TlsState::None);
        let mut sent = Vec::new();
        for env in envs {
            if !session.usable() {
                break;
            }
            sent.push(session.send(env).await);
        }
        session.quit().await;
        (sent, peer.await.unwrap())
    }

    /// Everything DATA would have changed: bare CR, bare LF, NUL, a CRLF
    /// dot CRLF, lines starting with a dot, high octets, no final CRLF.
    fn binary_content(len: usize) -> Vec<u8> {
        let mut m = b"From: a@b.example\r\nMIME-Version: 1.0\r\n\
                      Content-Transfer-Encoding: binary\r\n\r\n"
            .to_vec();
        let tricky: &[u8] = b"\r\n.\r\n..x\n.\rbare\rcr\0nul\xff\xfe\n.";
        while m.len() < len {
            m.extend_from_slice(tricky);
            m.extend((0..=255u8).take(len.saturating_sub(m.len()).min(256)));
        }
        m.truncate(len);
        if let Some(end @ b'\n') = m.last_mut() {
            *end = b'x';
        }
        m
    }

    fn binary_env<'a>(recipients: &'a [OutRecipient], message: &'a [u8]) -> Envelope<'a> {
        Envelope {
            sender: "a@b.example",
            recipients,
            env_id: None,
            ret: None,
            body_type: Some("BINARYMIME"),
            smtputf8: false,
            requiretls: false,
            message,
        }
    }

    fn outcomes(result: Result<SessionResult, SessionStop>) -> Vec<Outcome> {
        match result {
            Ok(r) => r.outcomes,
            Err(SessionStop::Host(e)) => panic!("host error: {e:?}"),
            Err(SessionStop::TlsFailed(e)) => panic!("TLS failed: {e}"),
        }
    }

    #[tokio::test]
    async fn a_binary_message_goes_in_one_bdat_last_exactly_as_it_is() {
        let message = binary_content(300);
        let to = [rcpt("x@d.example")];
        let (result, seen) = against(ALL, Script::default(), &binary_env(&to, &message)).await;
        assert_eq!(
            outcomes(result),
            [Outcome::Delivered(
                "2.0.0 mx.test[192.0.2.1] said: 250 2.0.0 message ok".into()
            )]
        );
        assert!(
            seen.commands[0].contains(" BODY=BINARYMIME"),
            "{:?}",
            seen.commands
        );
        assert!(
            seen.commands[0].contains(" SIZE=300"),
            "{:?}",
            seen.commands
        );
        assert_eq!(seen.chunks, [(300, true)]);
        assert!(seen.commands.contains(&"BDAT 300 LAST".to_string()));
        assert_eq!(seen.bdat_body, message, "not one octet changed");
        assert!(!seen.commands.iter().any(|c| c == "DATA"), "{seen:?}");
    }

    #[tokio::test]
    async fn a_large_binary_message_goes_in_bounded_chunks() {
        let message = binary_content(2 * BDAT_CHUNK + 1234);
        let to = [rcpt("x@d.example"), rcpt("y@d.example")];
        let (result, seen) = against(ALL, Script::default(), &binary_env(&to, &message)).await;
        let o = outcomes(result);
        assert!(
            o.iter().all(|o| matches!(o, Outcome::Delivered(_))),
            "{o:?}"
        );
        assert_eq!(
            seen.chunks,
            [(BDAT_CHUNK, false), (BDAT_CHUNK, false), (1234, true)]
        );
        assert!(seen.bdat_body == message, "the chunks are the message");
        assert!(!seen.commands.iter().any(|c| c == "DATA"));
    }

    #[tokio::test]
    async fn an_empty_binary_message_is_bdat_0_last() {
        let to = [rcpt("x@d.example")];
        let (result, seen) = against(ALL, Script::default(), &binary_env(&to, b"")).await;
        assert!(matches!(outcomes(result)[..], [Outcome::Delivered(_)]));
        assert_eq!(seen.chunks, [(0, true)]);
    }

    #[tokio::test]
    async fn the_reply_to_bdat_last_is_every_accepted_recipients_outcome() {
        let message = binary_content(100);
        let to = [
            rcpt("ok@d.example"),
            rcpt("unknown@d.example"),
            rcpt("busy@d.example"),
            rcpt("ok2@d.example"),
        ];
        let rcpt_replies = |a: &str| match a {
            "unknown@d.example" => "550 5.1.1 no such user",
            "busy@d.example" => "452 4.2.2 mailbox full",
            _ => "250 2.1.5 ok",
        };
        let permanent = Script {
            rcpt: rcpt_replies,
            bdat: |_, _| Some("554 5.6.0 content refused"),
            ..Script::default()
        };
        let (result, seen) = against(ALL, permanent, &binary_env(&to, &message)).await;
        let refused = "5.6.0 mx.test[192.0.2.1] said: 554 5.6.0 content refused";
        assert_eq!(
            outcomes(result),
            [
                Outcome::Failed(refused.into()),
                Outcome::Failed("5.1.1 mx.test[192.0.2.1] said: 550 5.1.1 no such user".into()),
                Outcome::Deferred("4.2.2 mx.test[192.0.2.1] said: 452 4.2.2 mailbox full".into()),
                Outcome::Failed(refused.into()),
            ]
        );
        assert_eq!(seen.chunks, [(100, true)]);

        let transient = Script {
            rcpt: rcpt_replies,
            bdat: |_, _| Some("451 4.3.0 try later"),
            ..Script::default()
        };
        let (result, _) = against(ALL, transient, &binary_env(&to, &message)).await;
        let o = outcomes(result);
        let later = "4.3.0 mx.test[192.0.2.1] said: 451 4.3.0 try later";
        assert_eq!(o[0], Outcome::Deferred(later.into()));
        assert!(matches!(o[1], Outcome::Failed(_)), "{o:?}");
        assert_eq!(o[3], Outcome::Deferred(later.into()));
    }

    #[tokio::test]
    async fn a_refused_chunk_ends_the_transaction_and_no_chunk_follows_it() {
        let message = binary_content(3 * BDAT_CHUNK);
        let to = [rcpt("x@d.example")];
        let script = Script {
            bdat: |n, _| {
                Some(if n == 0 {
                    "250 2.0.0 chunk ok"
                } else {
                    "552 5.3.4 too big"
                })
            },
            ..Script::default()
        };
        let (result, seen) = against(ALL, script, &binary_env(&to, &message)).await;
        assert_eq!(
            outcomes(result),
            [Outcome::Failed(
                "5.3.4 mx.test[192.0.2.1] said: 552 5.3.4 too big".into()
            )]
        );
        assert_eq!(
            seen.chunks,
            [(BDAT_CHUNK, false), (BDAT_CHUNK, false)],
            "RFC 3030 §2: no BDAT after a refused one"
        );
    }

    #[tokio::test]
    async fn a_connection_lost_at_bdat_last_defers_the_accepted_recipients() {
        let message = binary_content(100);
        let to = [rcpt("ok@d.example"), rcpt("unknown@d.example")];
        let script = Script {
            rcpt: unknown_refused,
            bdat: |_, _| None,
            ..Script::default()
        };
        let (result, seen) = against(ALL, script, &binary_env(&to, &message)).await;
        let o = outcomes(result);
        assert!(
            matches!(&o[0], Outcome::Deferred(t) if t.starts_with("4.4.2 mx.test[192.0.2.1]: connection closed after BDAT")),
            "{o:?}"
        );
        assert!(
            matches!(&o[1], Outcome::Failed(t) if t.starts_with("5.1.1")),
            "{o:?}"
        );
        assert_eq!(seen.chunks, [(100, true)]);
    }

    #[tokio::test]
    async fn a_binary_message_is_never_sent_to_a_server_without_binarymime_and_chunking() {
        let message = binary_content(100);
        let to = [rcpt("x@d.example")];
        for offered in [
            &["PIPELINING", "8BITMIME"][..],
            &["PIPELINING", "8BITMIME", "CHUNKING"][..],
            &["PIPELINING", "8BITMIME", "BINARYMIME"][..],
        ] {
            let (result, seen) =
                against(offered, Script::default(), &binary_env(&to, &message)).await;
            match result {
                Err(SessionStop::Host(e)) => {
                    assert!(e.permanent, "{e:?}");
                    assert!(
                        e.reason.starts_with(
                            "5.6.3 mx.test[192.0.2.1] cannot receive a binary MIME message"
                        ),
                        "{e:?}"
                    );
                }
                Ok(r) => panic!("sent to a server offering {offered:?}: {r:?}"),
                Err(SessionStop::TlsFailed(e)) => panic!("{e}"),
            }
            // Nothing but the polite QUIT: no MAIL, no DATA, no BDAT.
            assert_eq!(seen.commands, ["QUIT"], "offering {offered:?}");
        }
    }

    #[tokio::test]
    async fn other_messages_still_go_with_data_when_chunking_is_offered() {
        let to = [rcpt("x@d.example")];
        let env = Envelope {
            body_type: Some("8BITMIME"),
            ..binary_env(&to, b"Subject: x\r\n\r\n.dot\r\n")
        };
        let (result, seen) = against(ALL, Script::default(), &env).await;
        assert!(matches!(outcomes(result)[..], [Outcome::Delivered(_)]));
        assert!(seen.chunks.is_empty(), "{seen:?}");
        assert!(seen.commands[0].contains(" BODY=8BITMIME"), "{seen:?}");
        assert_eq!(seen.data, b"Subject: x\r\n\r\n..dot\r\n");
    }

    fn text_env<'a>(recipients: &'a [OutRecipient], message: &'a [u8]) -> Envelope<'a> {
        Envelope {
            body_type: None,
            ..binary_env(recipients, message)
        }
    }

    fn delivered(sent: &Sent) -> bool {
        matches!(sent, Sent::Answered { outcomes, broken: None }
            if outcomes.iter().all(|o| matches!(o, Outcome::Delivered(_))))
    }

    #[tokio::test]
    async fn messages_share_a_session_with_rset_between_and_pipelined_groups() {
        let to = [rcpt("x@d.example"), rcpt("y@d.example")];
        let (m1, m2, m3) = (b"one\r\n", b"two\r\n", b"three\r\n");
        let envs = [text_env(&to, m1), text_env(&to[..1], m2), text_env(&to, m3)];
        let (sent, seen) = against_many(ALL, Script::default(), &envs).await;
        assert!(sent.iter().all(delivered), "{sent:?}");
        assert_eq!(seen.data, b"one\r\ntwo\r\nthree\r\n");
        // RFC 2920 §3.1: RSET, MAIL, every RCPT and DATA in one write; the
        // content after 354; RSET only once a transaction ran.
        let mail = "MAIL FROM:<a@b.example> SIZE=";
        let groups: Vec<Vec<String>> = seen
            .groups
            .iter()
            .map(|g| {
                g.iter()
                    .map(|c| c.split(' ').next().unwrap().to_string())
                    .collect()
            })
            .collect();
        assert_eq!(
            groups,
            [
                vec!["MAIL", "RCPT", "RCPT", "DATA"],
                vec!["RSET", "MAIL", "RCPT", "DATA"],
                vec!["RSET", "MAIL", "RCPT", "RCPT", "DATA"],
                vec!["QUIT"],
            ],
            "{:?}",
            seen.groups
        );
        assert!(seen.groups[0][0].starts_with(mail), "{:?}", seen.groups);
    }

    #[tokio::test]
    async fn without_pipelining_each_command_waits_for_its_reply() {
        let to = [rcpt("x@d.example"), rcpt("y@d.example")];
        let envs = [text_env(&to, b"one\r\n"), text_env(&to, b"two\r\n")];
        let (sent, seen) = against_many(&["8BITMIME", "SIZE 1000"], Script::default(), &envs).await;
        assert!(sent.iter().all(delivered), "{sent:?}");
        assert!(
            seen.groups.iter().all(|g| g.len() == 1),
            "nothing pipelined: {:?}",
            seen.groups
        );
        let verbs: Vec<&str> = seen
            .commands
            .iter()
            .map(|c| c.split([' ', ':']).next().unwrap())
            .collect();
        assert_eq!(
            verbs,
            [
                "MAIL", "RCPT", "RCPT", "DATA", "RSET", "MAIL", "RCPT", "RCPT", "DATA", "QUIT"
            ]
        );
    }

    #[tokio::test]
    async fn a_refusal_on_one_message_leaves_the_others_alone() {
        let to = [rcpt("ok@d.example"), rcpt("unknown@d.example")];
        let script = Script {
            rcpt: unknown_refused,
            data_end: |n| {
                Some(if n == 1 {
                    "554 5.7.1 spam"
                } else {
                    "250 2.0.0 ok"
                })
            },
            ..Script::default()
        };
        let envs = [
            text_env(&to, b"one\r\n"),
            text_env(&to[..1], b"two\r\n"),
            text_env(&to[1..], b"three\r\n"),
            text_env(&to[..1], b"four\r\n"),
        ];
        for extensions in [ALL, &["8BITMIME"][..]] {
            let (sent, seen) = against_many(extensions, script, &envs).await;
            let outcomes: Vec<Vec<&str>> = sent
                .iter()
                .map(|s| match s {
                    Sent::Answered {
                        outcomes,
                        broken: None,
                    } => outcomes
                        .iter()
                        .map(|o| match o {
                            Outcome::Delivered(_) => "delivered",
                            Outcome::Deferred(_) => "deferred",
                            Outcome::Failed(_) => "failed",
                        })
                        .collect(),
                    other => panic!("{other:?}"),
                })
                .collect();
            assert_eq!(
                outcomes,
                [
                    vec!["delivered", "failed"],
                    vec!["failed"],
                    vec!["failed"],
                    vec!["delivered"],
                ],
                "{extensions:?}"
            );
            if extensions == ALL {
                // Every RCPT refused, yet the scripted peer said 354 to the
                // pipelined DATA: it got an empty message's end, not
                // message three.
                assert_eq!(seen.data, b"one\r\ntwo\r\nfour\r\n", "{extensions:?}");
            }
        }
    }

    #[tokio::test]
    async fn a_refused_rset_ends_the_session_before_the_message() {
        let to = [rcpt("x@d.example")];
        let envs = [text_env(&to, b"one\r\n"), text_env(&to, b"two\r\n")];
        for extensions in [ALL, &["8BITMIME"][..]] {
            let refusing = Script {
                rset: |_| Some("500 5.5.1 what?"),
                ..Script::default()
            };
            let (sent, seen) = against_many(extensions, refusing, &envs).await;
            assert!(delivered(&sent[0]), "{sent:?}");
            assert!(
                matches!(&sent[1], Sent::Retry(why) if why.contains("500 5.5.1")),
                "{sent:?}"
            );
            assert_eq!(seen.data, b"one\r\n", "nothing of message two");
            assert_ne!(seen.commands.last().unwrap(), "QUIT", "dropped, not quit");
            let closing = Script {
                rset: |_| None,
                ..Script::default()
            };
            let (sent, _) = against_many(extensions, closing, &envs).await;
            assert!(matches!(&sent[1], Sent::Retry(_)), "{sent:?}");
        }
    }

    #[tokio::test]
    async fn a_connection_lost_in_a_transaction_defers_what_is_open_and_ends_the_session() {
        let to = [rcpt("x@d.example"), rcpt("unknown@d.example")];
        let script = Script {
            rcpt: unknown_refused,
            data_end: |n| (n == 0).then_some("250 2.0.0 ok"),
            ..Script::default()
        };
        let envs = [
            text_env(&to, b"one\r\n"),
            text_env(&to, b"two\r\n"),
            text_env(&to, b"three\r\n"),
        ];
        let (sent, seen) = against_many(ALL, script, &envs).await;
        assert_eq!(sent.len(), 2, "the session ended: {sent:?}");
        match &sent[1] {
            Sent::Answered {
                outcomes,
                broken: Some(why),
            } => {
                assert!(
                    why.starts_with("4.4.2 mx.test[192.0.2.1]: connection closed"),
                    "{why}"
                );
                assert!(matches!(&outcomes[0], Outcome::Deferred(t) if t == why));
                assert!(matches!(&outcomes[1], Outcome::Failed(_)), "{outcomes:?}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(seen.data, b"one\r\ntwo\r\n");
    }
}
