//! One SMTP session: an explicit state machine over one connection.
//!
//! States and what they allow (RFC 5321 §4.1.4, RFC 3207, RFC 4954):
//!
//! | state                       | allowed                                            |
//! |-----------------------------|----------------------------------------------------|
//! | connected, no EHLO/HELO     | EHLO, HELO, NOOP, RSET, QUIT, HELP, VRFY, STARTTLS |
//! | greeted                     | + AUTH (submission, when permitted), MAIL          |
//! | in a transaction (after MAIL) | + RCPT, DATA, BDAT; not MAIL, AUTH, STARTTLS     |
//!
//! Invariants:
//! * replies are written to an output buffer and flushed before the session
//!   blocks on a read, so pipelined commands (RFC 2920) get their replies in
//!   one write;
//! * after STARTTLS, whatever the client sent before the handshake is
//!   discarded (CVE-2011-0411) and the session starts again from scratch
//!   (RFC 3207 §4.2);
//! * the message body is read by `DataReceiver`/`BdatReceiver`, which store at
//!   most the size limit and refuse bare CR/LF (SMTP smuggling), so a peer
//!   can neither exhaust memory nor hide a second message;
//! * `250` to a message is sent only after `Queue.Enqueue` returned;
//! * a command line must arrive whole within `smtp.command_timeout_secs`
//!   of the moment the session starts waiting for it (RFC 5321 §4.5.3.2),
//!   not within that time of each read: a client trickling one byte every
//!   few seconds is cut off (`421 4.4.2`) like a silent one.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mailroom_address::{Address, Domain};
use mailroom_net::tls::TlsAcceptor;
use mailroom_net::{CancellationToken, Connection, MailStream, TlsInfo};
use mailroom_rpc::internal::Caller;
use mailroom_rpc::queue as qpb;
use mailroom_smtp_proto::{
    BdatReceiver, Body, Command, DataError, DataReceiver, ForwardPath, HeloName, Host, Line,
    MailParameters, Path, RcptParameters, Reply, ReversePath, count_received_headers, skip_line,
    take_line,
};
use mailroom_store::Unroutable;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::message::{
    ReceivedFrom, has_header, header_value, message_id, received_header, rfc5322_date, unix_now,
};
use crate::{Mode, SmtpServer};

/// Loops are refused beyond this many `Received:` headers (RFC 5321 §6.3).
const MAX_RECEIVED: usize = 100;
/// After this long, a DATA transfer must keep up the minimum rate.
const RATE_GRACE: Duration = Duration::from_secs(30);
/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 16 * 1024;

/// Why a session ends.
#[derive(Debug)]
pub(crate) enum End {
    /// The peer closed or the socket failed.
    Gone,
    /// We said goodbye (QUIT, timeout, too many errors, shutdown).
    Closed,
}

/// The socket, its input buffer and the pending replies.
pub(crate) struct Io {
    /// Always `Some`, except for the instant of a STARTTLS upgrade, which
    /// takes the plain stream by value.
    stream: Option<MailStream>,
    pub(crate) buf: Vec<u8>,
    out: Vec<u8>,
}

impl Io {
    pub(crate) fn reply(&mut self, reply: &Reply) {
        reply.write_to(&mut self.out);
    }

    pub(crate) fn raw(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    fn stream(&mut self) -> Result<&mut MailStream, End> {
        self.stream.as_mut().ok_or(End::Gone)
    }

    pub(crate) async fn flush(&mut self) -> Result<(), End> {
        if !self.out.is_empty() {
            let out = std::mem::take(&mut self.out);
            let stream = self.stream()?;
            stream.write_all(&out).await.map_err(|_| End::Gone)?;
            stream.flush().await.map_err(|_| End::Gone)?;
            self.out = out;
            self.out.clear();
        }
        Ok(())
    }

    /// Reads more input, failing on EOF or after `timeout`.
    pub(crate) async fn read_more(&mut self, timeout: Duration) -> Result<(), ReadFailure> {
        let start = self.buf.len();
        self.buf.resize(start + READ_CHUNK, 0);
        let Some(stream) = self.stream.as_mut() else {
            return Err(ReadFailure::Closed);
        };
        let result = tokio::time::timeout(timeout, stream.read(&mut self.buf[start..])).await;
        let n = match result {
            Ok(Ok(n)) => n,
            Ok(Err(_)) => 0,
            Err(_) => {
                self.buf.truncate(start);
                return Err(ReadFailure::Timeout);
            }
        };
        self.buf.truncate(start + n);
        if n == 0 {
            Err(ReadFailure::Closed)
        } else {
            Ok(())
        }
    }

    /// Says a last word and closes.
    pub(crate) async fn close_with(&mut self, reply: Reply) -> End {
        self.reply(&reply);
        let _ = self.flush().await;
        if let Some(stream) = self.stream.as_mut() {
            let _ = stream.shutdown().await;
        }
        End::Closed
    }
}

/// A failed read.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ReadFailure {
    /// Nothing arrived in time.
    Timeout,
    /// The peer closed (or the socket failed).
    Closed,
}

/// One accepted recipient.
#[derive(Debug, Clone)]
struct Recipient {
    /// Canonical mailbox for routing.
    address: String,
    params: RcptParameters,
}

/// A mail transaction (MAIL … DATA).
#[derive(Debug)]
struct Transaction {
    from: ReversePath,
    params: MailParameters,
    recipients: Vec<Recipient>,
    /// BDAT in progress (RFC 3030).
    bdat: Option<BdatReceiver>,
}

/// The session's state.
pub(crate) struct State {
    pub(crate) peer: SocketAddr,
    helo: Option<HeloName>,
    esmtp: bool,
    tls: Option<TlsInfo>,
    /// The authenticated account (canonical address).
    pub(crate) account: Option<String>,
    transaction: Option<Transaction>,
    errors: usize,
    pub(crate) auth_failures: usize,
    id: String,
}

impl State {
    fn reset_for_tls(&mut self, tls: Option<TlsInfo>) {
        self.helo = None;
        self.esmtp = false;
        self.account = None;
        self.transaction = None;
        self.tls = tls;
    }

    pub(crate) fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    pub(crate) fn has_transaction(&self) -> bool {
        self.transaction.is_some()
    }
}

fn r(code: u16, status: &str, text: impl Into<String>) -> Reply {
    Reply::new(code, status, text)
}

impl SmtpServer {
    /// Whether AUTH may be used now: submission only, and over TLS unless
    /// the loopback exemption applies.
    pub(crate) fn auth_permitted(&self, state: &State) -> bool {
        self.mode == Mode::Submission
            && (state.is_tls()
                || (self.settings.allow_plaintext_auth_on_loopback
                    && mailroom_net::is_loopback(state.peer.ip())))
    }
}

/// Runs a session to its end.
pub(crate) async fn run(server: &SmtpServer, conn: Connection, shutdown: CancellationToken) {
    let tls = conn.stream.tls_info();
    let mut io = Io {
        stream: Some(conn.stream),
        buf: Vec::with_capacity(READ_CHUNK),
        out: Vec::with_capacity(1024),
    };
    let mut state = State {
        peer: conn.peer,
        helo: None,
        esmtp: false,
        tls,
        account: None,
        transaction: None,
        errors: 0,
        auth_failures: 0,
        id: format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff),
    };
    tracing::debug!(session = %state.id, "SMTP session started");
    io.reply(
        &r(
            220,
            "",
            format!("{} ESMTP Mailroom ready", server.settings.hostname),
        )
        .without_status(),
    );
    let end = command_loop(
        server,
        &mut io,
        &mut state,
        conn.tls,
        conn.handshake_timeout,
        &shutdown,
    )
    .await;
    tracing::debug!(session = %state.id, ?end, "SMTP session ended");
}

trait WithoutStatus {
    fn without_status(self) -> Reply;
}

impl WithoutStatus for Reply {
    /// The greeting carries no enhanced status code (RFC 2034 §3 applies to replies to commands).
    fn without_status(mut self) -> Reply {
        self.status = None;
        self
    }
}

async fn command_loop(
    server: &SmtpServer,
    io: &mut Io,
    state: &mut State,
    acceptor: Option<TlsAcceptor>,
    handshake_timeout: Duration,
    shutdown: &CancellationToken,
) -> End {
    let settings = &server.settings;
    let host = settings.hostname.clone();
    // When the line being waited for must be complete (see the module's
    // invariants); `None` while no line is awaited.
    let mut line_deadline: Option<Instant> = None;
    loop {
        if state.errors >= settings.max_errors {
            return io
                .close_with(r(421, "4.7.0", format!("{host} too many errors, closing")))
                .await;
        }
        let (line, consumed) = match take_line(&io.buf, settings.max_line_length) {
            Line::Complete { line, consumed } => {
                line_deadline = None;
                (line.to_vec(), consumed)
            }
            Line::Incomplete => {
                if let Err(e) = io.flush().await {
                    return e;
                }
                let deadline =
                    *line_deadline.get_or_insert_with(|| Instant::now() + settings.command_timeout);
                let left = deadline.saturating_duration_since(Instant::now());
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => {
                        return io.close_with(r(421, "4.3.2", format!("{host} shutting down, try again later"))).await;
                    }
                    read = io.read_more(left) => match read {
                        Ok(()) => continue,
                        Err(ReadFailure::Timeout) => {
                            return io.close_with(r(421, "4.4.2", format!("{host} timeout exceeded, closing"))).await;
                        }
                        Err(ReadFailure::Closed) => return End::Gone,
                    },
                }
            }
            Line::TooLong { consumed, ended } => {
                line_deadline = None;
                io.buf.drain(..consumed);
                if !ended {
                    // Discard the rest of the line in bounded memory.
                    loop {
                        let skipped = skip_line(&io.buf);
                        io.buf.drain(..skipped.consumed);
                        if skipped.ended {
                            break;
                        }
                        if io.read_more(settings.command_timeout).await.is_err() {
                            return End::Gone;
                        }
                    }
                }
                state.errors += 1;
                io.reply(&r(500, "5.5.6", "line too long"));
                continue;
            }
        };
        io.buf.drain(..consumed);
        let command = match Command::parse(&line) {
            Ok(c) => c,
            Err(e) => {
                state.errors += 1;
                io.reply(&e.reply());
                continue;
            }
        };
        match command {
            Command::Ehlo(name) => {
                state.helo = Some(name.clone());
                state.esmtp = true;
                state.transaction = None;
                io.reply(&ehlo_reply(server, state, &name, acceptor.is_some()));
            }
            Command::Helo(name) => {
                state.helo = Some(name);
                state.esmtp = false;
                state.transaction = None;
                io.reply(&r(250, "", host.to_string()).without_status());
            }
            Command::StartTls => {
                if state.is_tls() {
                    state.errors += 1;
                    io.reply(&r(503, "5.5.1", "TLS is already active"));
                    continue;
                }
                let Some(acceptor) = acceptor.as_ref() else {
                    state.errors += 1;
                    io.reply(&r(502, "5.5.1", "STARTTLS is not available"));
                    continue;
                };
                if state.transaction.is_some() {
                    io.reply(&r(
                        503,
                        "5.5.1",
                        "STARTTLS is not allowed during a mail transaction",
                    ));
                    continue;
                }
                io.reply(&r(220, "2.0.0", "ready to start TLS"));
                if let Err(e) = io.flush().await {
                    return e;
                }
                // CVE-2011-0411: nothing sent before the handshake may be read after it.
                io.buf.clear();
                let Some(plain) = io.stream.take() else {
                    return End::Gone;
                };
                match plain.start_tls(acceptor, handshake_timeout).await {
                    Ok(tls) => {
                        let info = tls.tls_info();
                        io.stream = Some(tls);
                        state.reset_for_tls(info);
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "STARTTLS handshake failed");
                        return End::Gone;
                    }
                }
            }
            Command::Auth {
                mechanism,
                initial_response,
            } => {
                if let Some(end) =
                    crate::auth::authenticate(server, io, state, &mechanism, initial_response).await
                {
                    return end;
                }
            }
            Command::Mail { from, params } => {
                let reply = mail(server, state, from, params).await;
                if reply.is_permanent() {
                    state.errors += 1;
                }
                io.reply(&reply);
            }
            Command::Rcpt { to, params } => {
                let reply = rcpt(server, state, to, params).await;
                if reply.is_permanent() {
                    state.errors += 1;
                }
                io.reply(&reply);
            }
            Command::Data => {
                let Some(tx) = &state.transaction else {
                    state.errors += 1;
                    io.reply(&r(503, "5.5.1", "MAIL first"));
                    continue;
                };
                if tx.recipients.is_empty() {
                    // RFC 2920 §3.1: no valid recipients.
                    io.reply(&r(554, "5.5.1", "no valid recipients"));
                    continue;
                }
                if tx.bdat.is_some() {
                    io.reply(&r(503, "5.5.1", "DATA cannot follow BDAT"));
                    continue;
                }
                if tx.params.body == Some(Body::BinaryMime) {
                    io.reply(&r(503, "5.5.1", "BODY=BINARYMIME needs BDAT"));
                    continue;
                }
                io.reply(&r(354, "", "end data with <CR><LF>.<CR><LF>").without_status());
                if let Err(e) = io.flush().await {
                    return e;
                }
                let received = match receive_data(io, settings).await {
                    Ok(r) => r,
                    Err(ReadFailure::Timeout) => {
                        return io
                            .close_with(r(421, "4.4.2", format!("{host} DATA timeout, closing")))
                            .await;
                    }
                    Err(ReadFailure::Closed) => return End::Gone,
                };
                let reply = match received {
                    Ok(message) => accept_message(server, state, message).await,
                    Err(e) => refusal_for(e),
                };
                state.transaction = None;
                io.reply(&reply);
            }
            Command::Bdat { size, last } => {
                let Some(tx) = state.transaction.as_mut() else {
                    // The chunk must still be consumed to keep the stream in sync.
                    if let Err(end) = discard(io, size, settings).await {
                        return end;
                    }
                    state.errors += 1;
                    io.reply(&r(503, "5.5.1", "MAIL first"));
                    continue;
                };
                let receiver = tx
                    .bdat
                    .get_or_insert_with(|| BdatReceiver::new(settings.max_message_size));
                receiver.start_chunk(size, last);
                let deadline = Instant::now() + settings.data_timeout;
                loop {
                    let used = receiver.feed(&io.buf);
                    io.buf.drain(..used);
                    if receiver.is_chunk_complete() {
                        break;
                    }
                    let left = deadline.saturating_duration_since(Instant::now());
                    match io.read_more(left.min(settings.command_timeout)).await {
                        Ok(()) => {}
                        Err(ReadFailure::Timeout) => {
                            return io
                                .close_with(r(
                                    421,
                                    "4.4.2",
                                    format!("{host} BDAT timeout, closing"),
                                ))
                                .await;
                        }
                        Err(ReadFailure::Closed) => return End::Gone,
                    }
                }
                if tx.recipients.is_empty() {
                    state.transaction = None;
                    io.reply(&r(554, "5.5.1", "no valid recipients"));
                    continue;
                }
                if !last {
                    let total = receiver.size();
                    io.reply(&r(
                        250,
                        "2.0.0",
                        format!("{size} octets received ({total} in all)"),
                    ));
                    continue;
                }
                let receiver = tx.bdat.take().expect("BDAT receiver present");
                let reply = match receiver.finish() {
                    Ok(message) => accept_message(server, state, message).await,
                    Err(e) => refusal_for(e),
                };
                state.transaction = None;
                io.reply(&reply);
            }
            Command::Rset => {
                state.transaction = None;
                io.reply(&r(250, "2.0.0", "reset"));
            }
            Command::Noop(_) => io.reply(&r(250, "2.0.0", "OK")),
            Command::Quit => {
                return io
                    .close_with(r(221, "2.0.0", format!("{host} closing connection")))
                    .await;
            }
            Command::Vrfy(_) => {
                // RFC 5321 §3.5.3: do not disclose users, but do not refuse mail either.
                io.reply(&r(
                    252,
                    "2.5.0",
                    "cannot VRFY user, but will accept message and attempt delivery",
                ));
            }
            Command::Expn(_) => {
                state.errors += 1;
                io.reply(&r(502, "5.5.1", "EXPN is disabled"));
            }
            Command::Help(_) => io.reply(&r(
                214,
                "2.0.0",
                "see RFC 5321; https://www.rfc-editor.org/rfc/rfc5321",
            )),
        }
    }
}

fn ehlo_reply(server: &SmtpServer, state: &State, name: &HeloName, tls_available: bool) -> Reply {
    let s = &server.settings;
    let mut lines = vec![format!("{} greets {}", s.hostname, name.as_sent)];
    lines.push("PIPELINING".into());
    lines.push(format!("SIZE {}", s.max_message_size));
    lines.push("8BITMIME".into());
    lines.push("SMTPUTF8".into());
    lines.push("ENHANCEDSTATUSCODES".into());
    lines.push("CHUNKING".into());
    lines.push("BINARYMIME".into());
    lines.push("DSN".into());
    if !state.is_tls() && tls_available {
        lines.push("STARTTLS".into());
    }
    if state.is_tls() {
        lines.push("REQUIRETLS".into());
    }
    if server.auth_permitted(state) && state.account.is_none() {
        lines.push("AUTH SCRAM-SHA-256 PLAIN LOGIN".into());
    }
    lines.push("HELP".into());
    let mut reply = Reply::multiline(250, "2.0.0", lines);
    reply.status = None; // RFC 2034: EHLO's reply lines are keywords, not texts.
    reply
}

async fn receive_data(
    io: &mut Io,
    s: &crate::SmtpSettings,
) -> Result<Result<Vec<u8>, DataError>, ReadFailure> {
    let mut receiver = DataReceiver::new(s.max_message_size);
    let start = Instant::now();
    let deadline = start + s.data_timeout;
    loop {
        let fed = receiver.feed(&io.buf);
        io.buf.drain(..fed.consumed);
        if fed.done {
            return Ok(receiver.finish());
        }
        let elapsed = start.elapsed();
        if elapsed > RATE_GRACE && receiver.size() / elapsed.as_secs().max(1) < s.min_data_rate {
            return Err(ReadFailure::Timeout);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ReadFailure::Timeout);
        }
        io.read_more(left.min(s.command_timeout)).await?;
    }
}

/// Reads and drops exactly `size` octets (a BDAT chunk we refuse).
async fn discard(io: &mut Io, size: u64, s: &crate::SmtpSettings) -> Result<(), End> {
    let mut left = size;
    loop {
        let take = (io.buf.len() as u64).min(left) as usize;
        io.buf.drain(..take);
        left -= take as u64;
        if left == 0 {
            return Ok(());
        }
        if io.read_more(s.command_timeout).await.is_err() {
            return Err(End::Gone);
        }
    }
}

fn refusal_for(e: DataError) -> Reply {
    e.reply()
}

/// The canonical mailbox of a path for our own domains, if it can be one.
fn local_address(path: &Path) -> Option<Address> {
    if path.was_quoted() {
        return None;
    }
    let Host::Name(domain) = path.domain() else {
        return None;
    };
    Address::from_parts(path.local_part(), domain).ok()
}

async fn mail(
    server: &SmtpServer,
    state: &mut State,
    from: ReversePath,
    params: MailParameters,
) -> Reply {
    let s = &server.settings;
    if state.helo.is_none() {
        return r(503, "5.5.1", "send EHLO or HELO first");
    }
    if state.transaction.is_some() {
        return r(503, "5.5.1", "nested MAIL command");
    }
    if server.mode == Mode::Submission && state.account.is_none() {
        return r(530, "5.7.0", "authentication required");
    }
    if !state.esmtp && (params != MailParameters::default()) {
        return r(555, "5.5.4", "parameters need EHLO");
    }
    if params
        .size
        .is_some_and(|size| size > s.max_message_size as u64)
    {
        return r(
            552,
            "5.3.4",
            format!(
                "message size exceeds the limit of {} bytes",
                s.max_message_size
            ),
        );
    }
    if params.requiretls && !state.is_tls() {
        return r(530, "5.7.10", "REQUIRETLS needs a TLS session");
    }
    if let ReversePath::Path(path) = &from
        && path.has_non_ascii()
        && !params.smtputf8
    {
        return r(553, "5.6.7", "non-ASCII sender needs SMTPUTF8");
    }
    if let Some(account) = &state.account {
        // RFC 6409 §6.1: the submitter may only use addresses it owns.
        let owned = match &from {
            ReversePath::Null => false,
            ReversePath::Path(p) => match local_address(p) {
                Some(addr) => match server.store.may_send_as(account, &addr).await {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::error!(error = %e, "sender check failed");
                        return r(451, "4.3.0", "temporary local problem, try again later");
                    }
                },
                None => false,
            },
        };
        if !owned {
            return r(
                553,
                "5.7.1",
                format!("sender address not owned by {account}"),
            );
        }
    }
    state.transaction = Some(Transaction {
        from,
        params,
        recipients: Vec::new(),
        bdat: None,
    });
    r(250, "2.1.0", "sender OK")
}

async fn rcpt(
    server: &SmtpServer,
    state: &mut State,
    to: ForwardPath,
    params: RcptParameters,
) -> Reply {
    let Some(tx) = state.transaction.as_ref() else {
        return r(503, "5.5.1", "MAIL first");
    };
    if tx.recipients.len() >= server.settings.max_recipients {
        return r(452, "4.5.3", "too many recipients");
    }
    let smtputf8 = tx.params.smtputf8;
    let path = match &to {
        ForwardPath::Postmaster => {
            match Path::from_mailbox(&format!("postmaster@{}", server.settings.hostname)) {
                Ok(p) => p,
                Err(_) => return r(550, "5.1.1", "no postmaster here"),
            }
        }
        ForwardPath::Path(p) => p.clone(),
    };
    if path.had_source_route() {
        return r(550, "5.7.1", "source routes are not accepted");
    }
    if path.has_non_ascii() && !smtputf8 {
        return r(553, "5.6.7", "non-ASCII recipient needs SMTPUTF8");
    }
    let Host::Name(domain_text) = path.domain() else {
        return r(
            550,
            "5.7.1",
            "relaying denied: address literals are not accepted",
        );
    };
    let domain = match Domain::parse(domain_text) {
        Ok(d) => d,
        Err(_) => return r(550, "5.1.2", "bad destination domain"),
    };
    let local = match server.store.serves_domain(&domain).await {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "domain check failed");
            return r(451, "4.3.0", "temporary local problem, try again later");
        }
    };
    let address = if local {
        if path.has_percent_hack() || path.has_bang_path() {
            // Never route user%other@ours or host!user@ours anywhere else.
            return r(550, "5.7.1", "relaying denied");
        }
        let Some(address) = local_address(&path) else {
            return r(550, "5.1.1", "no such user here");
        };
        match server.store.resolve_recipient(&address).await {
            Ok(Ok(resolved)) => {
                // RFC 5321 §4.5.3.1.10 / RFC 3463 X.2.2: say "full" now rather than bounce later,
                // when the only mailbox this reaches is full.
                // (The quota was read with the lookup.)
                if resolved.remote.is_empty()
                    && resolved.local.len() == 1
                    && resolved.full.contains(&resolved.local[0].account_id)
                {
                    return r(452, "4.2.2", "mailbox full, try again later");
                }
                address.to_string()
            }
            Ok(Err(why)) => {
                return match why {
                    Unroutable::UnknownUser(_) | Unroutable::NotLocal(_) => {
                        r(550, "5.1.1", "no such user here")
                    }
                    Unroutable::AliasLoop(_) => r(550, "5.4.6", "alias loop"),
                    Unroutable::Disabled(_) => r(550, "5.2.1", "mailbox disabled"),
                };
            }
            Err(e) => {
                tracing::error!(error = %e, "recipient lookup failed");
                return r(451, "4.3.0", "temporary local problem, try again later");
            }
        }
    } else if server.mode == Mode::Submission {
        // Authenticated users may send anywhere.
        format!("{}@{}", path.local_part_wire(), domain)
    } else {
        return r(550, "5.7.1", "relaying denied");
    };
    let tx = state.transaction.as_mut().expect("checked above");
    tx.recipients.push(Recipient { address, params });
    r(250, "2.1.5", "recipient OK")
}

trait LocalPartWire {
    fn local_part_wire(&self) -> String;
}

impl LocalPartWire for Path {
    /// The local part as it must be written in a mailbox (quoted if it was).
    fn local_part_wire(&self) -> String {
        let m = self.mailbox();
        match m.rfind('@') {
            Some(at) => m[..at].to_string(),
            None => m,
        }
    }
}

/// Checks, completes and enqueues a received message; returns the final reply.
/// Decides on a received message (see [`decide_message`]) and counts the
/// outcome: `mailroom_smtp_messages_total{service, outcome}`, the reason
/// of a refusal or deferral (`mailroom_smtp_refusals_total{service,
/// status}`, the enhanced status) and how long the decision took (checks
/// and the durable enqueue).
async fn accept_message(server: &SmtpServer, state: &State, message: Vec<u8>) -> Reply {
    let started = std::time::Instant::now();
    let reply = decide_message(server, state, message).await;
    let service = match server.mode {
        Mode::Submission => "submission",
        Mode::Inbound => "inbound",
    };
    let outcome = match reply.code / 100 {
        2 => "accepted",
        4 => "deferred",
        _ => "refused",
    };
    metrics::counter!("mailroom_smtp_messages_total", "service" => service, "outcome" => outcome)
        .increment(1);
    if outcome != "accepted" {
        // The reason: our own enhanced status (a fixed set of values).
        let status = reply
            .status
            .map_or_else(|| reply.code.to_string(), |s| s.to_string());
        metrics::counter!("mailroom_smtp_refusals_total", "service" => service, "status" => status)
            .increment(1);
    }
    metrics::histogram!("mailroom_smtp_accept_duration_seconds", "service" => service)
        .record(started.elapsed().as_secs_f64());
    reply
}

async fn decide_message(server: &SmtpServer, state: &State, message: Vec<u8>) -> Reply {
    let tx = state.transaction.as_ref().expect("a transaction is open");
    if count_received_headers(&message) > MAX_RECEIVED {
        return r(554, "5.4.6", "too many Received headers: mail loop");
    }
    let now = unix_now();
    let mut added = String::new();
    let mut added_id = None;
    if server.mode == Mode::Submission {
        let account = state.account.as_deref().unwrap_or_default();
        match check_from_header(server, account, &message).await {
            Ok(None) => {}
            Ok(Some(refusal)) => return refusal,
            Err(reply) => return reply,
        }
        // RFC 6409 §8.2, §8.3.
        if !has_header(&message, "Date") {
            added.push_str(&format!("Date: {}\r\n", rfc5322_date(now)));
        }
        if !has_header(&message, "Message-ID") {
            let id = message_id(&server.settings.hostname);
            added.push_str(&format!("Message-ID: {id}\r\n"));
            added_id = Some(id);
        }
    }
    let message_id = added_id.or_else(|| header_value(&message, "Message-ID"));
    let trace_id = mailroom_telemetry::current_trace_id();
    let helo = state
        .helo
        .as_ref()
        .map(|h| h.as_sent.as_str())
        .unwrap_or("unknown");
    let received = received_header(
        &ReceivedFrom {
            helo,
            ip: state.peer.ip(),
            by: &server.settings.hostname,
            esmtp: state.esmtp,
            tls: state.tls.as_ref(),
            authenticated: state.account.is_some(),
            utf8: tx.params.smtputf8,
            id: &state.id,
            single_recipient: (tx.recipients.len() == 1).then(|| tx.recipients[0].address.as_str()),
            trace_id: trace_id.as_deref(),
        },
        now,
    );
    // RFC 8601 §5: only we may speak for our authserv-id.
    let message = mailroom_sender_auth::inbound::strip_our_results(
        &message,
        &server.settings.hostname.to_ascii_lowercase(),
    );
    let (results, quarantine) = match check_sender(server, state, tx, &message).await {
        Ok(checked) => checked,
        Err(refusal) => return refusal,
    };
    let mut full = Vec::with_capacity(results.len() + received.len() + added.len() + message.len());
    full.extend_from_slice(results.as_bytes());
    full.extend_from_slice(received.as_bytes());
    full.extend_from_slice(added.as_bytes());
    full.extend_from_slice(&message);

    let request = qpb::EnqueueRequest {
        envelope: Some(envelope(tx)),
        message: full,
        authenticated_as: state.account.clone().unwrap_or_default(),
        client_ip: state.peer.ip().to_string(),
        quarantine,
    };
    // Identifiers and the outcome only: every field is an exported attribute.
    let span = tracing::info_span!(
        "smtp.message",
        session = %state.id,
        recipients = tx.recipients.len(),
        message_id = message_id.as_deref().unwrap_or(""),
        queue_id = tracing::field::Empty,
        outcome = tracing::field::Empty
    );
    let mut grpc = tonic::Request::new(request);
    span.in_scope(|| mailroom_telemetry::inject(grpc.metadata_mut()));
    let enqueued = match &server.queue {
        // The credential of this process's role goes with the call.
        crate::QueueHandle::Remote(client) => client.clone().enqueue(grpc).await,
        // Called inside the message's span, so the entry's trace context is this span's.
        crate::QueueHandle::Local(queue) => {
            use tracing::Instrument;
            Caller::attach(&mut grpc, server.mode.role());
            queue.enqueue(grpc).instrument(span.clone()).await
        }
    };
    match enqueued {
        Ok(resp) if resp.get_ref().delivered => {
            span.record("outcome", "delivered");
            tracing::info!(parent: &span, "message delivered at acceptance");
            r(250, "2.0.0", "OK: delivered")
        }
        Ok(resp) => {
            let id = resp.into_inner().queue_id;
            span.record("queue_id", id);
            span.record("outcome", "queued");
            tracing::info!(parent: &span, queue_id = id, "message queued");
            r(250, "2.0.0", format!("OK: queued as {id}"))
        }
        Err(status) if status.code() == tonic::Code::InvalidArgument => {
            span.record("outcome", "refused");
            tracing::warn!(error = %status.message(), "queue refused the message");
            r(554, "5.6.0", "message refused")
        }
        // The queue's own relay check (defence in depth behind RCPT's).
        Err(status) if status.code() == tonic::Code::PermissionDenied => {
            span.record("outcome", "refused");
            tracing::error!(error = %status.message(), "queue refused the message");
            r(550, "5.7.1", "relaying denied")
        }
        // RFC 3463 §3.4 / RFC 5321 §4.2.2: the store is out of space.
        Err(status) if status.code() == tonic::Code::ResourceExhausted => {
            span.record("outcome", "deferred");
            tracing::error!(error = %status.message(), "enqueue failed: out of space");
            r(452, "4.3.1", "insufficient system storage, try again later")
        }
        Err(status) => {
            span.record("outcome", "deferred");
            tracing::error!(error = %status.message(), code = ?status.code(), "enqueue failed");
            r(451, "4.3.0", "temporary local problem, try again later")
        }
    }
}

/// Inbound sender authentication: the `Authentication-Results` and
/// `Received-SPF` fields to put on top and whether the message goes to
/// Junk, or the refusal (`550 5.7.1` for DMARC `p=reject`, `451 4.7.x` when
/// a DNS failure leaves the outcome open).
async fn check_sender(
    server: &SmtpServer,
    state: &State,
    tx: &Transaction,
    message: &[u8],
) -> Result<(String, bool), Reply> {
    use mailroom_sender_auth::Action;
    let Some(auth) = server.sender_auth.as_ref() else {
        return Ok((String::new(), false));
    };
    if server.mode != Mode::Inbound {
        return Ok((String::new(), false));
    }
    // One decision for the message: the stricter policy of its recipients'
    // domains; unchecked only if none of them checks this client.
    let domains = tx
        .recipients
        .iter()
        .map(|rc| rc.address.rsplit_once('@').map_or("", |(_, d)| d));
    let Some(decisions) = auth.policies.for_message(state.peer.ip(), domains) else {
        return Ok((String::new(), false));
    };
    let mail_from = match &tx.from {
        ReversePath::Null => String::new(),
        ReversePath::Path(p) => p.mailbox(),
    };
    let envelope = mailroom_sender_auth::inbound::Envelope {
        ip: state.peer.ip(),
        helo: state.helo.as_ref().map_or("", |h| h.as_sent.as_str()),
        mail_from: &mail_from,
    };
    let verdict = auth.checker.check(envelope, message, decisions).await;
    tracing::info!(session = %state.id, action = ?verdict.action, "sender authentication");
    match verdict.action {
        Action::Accept => Ok((verdict.headers, false)),
        Action::Quarantine => Ok((verdict.headers, true)),
        Action::Reject(code, status, text) | Action::TempFail(code, status, text) => {
            Err(r(code, status, text))
        }
    }
}

/// RFC 6409 §6.1: every `From:` address must be one the account may use.
async fn check_from_header(
    server: &SmtpServer,
    account: &str,
    message: &[u8],
) -> Result<Option<Reply>, Reply> {
    let headers = mailroom_smtp_proto::header_section(message);
    let parsed = mail_parser::MessageParser::default().parse_headers(headers);
    let Some(from) = parsed.as_ref().and_then(|m| m.from()) else {
        return Ok(Some(r(550, "5.6.0", "the message has no From header")));
    };
    let mut any = false;
    for addr in from.iter() {
        any = true;
        let Some(text) = addr.address() else {
            return Ok(Some(r(
                553,
                "5.7.1",
                "From header address not owned by the sender",
            )));
        };
        let owned = match Address::parse(text) {
            Ok(a) => server.store.may_send_as(account, &a).await.map_err(|e| {
                tracing::error!(error = %e, "From check failed");
                r(451, "4.3.0", "temporary local problem, try again later")
            })?,
            Err(_) => false,
        };
        if !owned {
            return Ok(Some(r(
                553,
                "5.7.1",
                format!("From header address {text} not owned by {account}"),
            )));
        }
    }
    if !any {
        return Ok(Some(r(550, "5.6.0", "the message has no From address")));
    }
    Ok(None)
}

fn envelope(tx: &Transaction) -> qpb::Envelope {
    let sender = match &tx.from {
        ReversePath::Null => String::new(),
        ReversePath::Path(p) => p.mailbox(),
    };
    let recipients = tx
        .recipients
        .iter()
        .map(|rc| qpb::Recipient {
            address: rc.address.clone(),
            orcpt: rc
                .params
                .orcpt
                .as_ref()
                .map(|o| format!("{};{}", o.addr_type, o.address))
                .unwrap_or_default(),
            notify: match rc.params.notify {
                None => Vec::new(),
                Some(n) if n.is_never() => vec![qpb::DsnNotify::Never as i32],
                Some(n) => {
                    let mut v = Vec::new();
                    if n.success {
                        v.push(qpb::DsnNotify::Success as i32);
                    }
                    if n.failure {
                        v.push(qpb::DsnNotify::Failure as i32);
                    }
                    if n.delay {
                        v.push(qpb::DsnNotify::Delay as i32);
                    }
                    v
                }
            },
        })
        .collect();
    qpb::Envelope {
        sender,
        recipients,
        env_id: tx.params.envid.clone().unwrap_or_default(),
        ret: match tx.params.ret {
            Some(mailroom_smtp_proto::Ret::Full) => qpb::DsnReturn::Full as i32,
            Some(mailroom_smtp_proto::Ret::Headers) => qpb::DsnReturn::Headers as i32,
            None => qpb::DsnReturn::Unspecified as i32,
        },
        body: match tx.params.body {
            Some(Body::SevenBit) => qpb::BodyType::BodyType7bit as i32,
            Some(Body::EightBitMime) => qpb::BodyType::BodyType8bitmime as i32,
            Some(Body::BinaryMime) => qpb::BodyType::Binarymime as i32,
            None => qpb::BodyType::Unspecified as i32,
        },
        smtputf8: tx.params.smtputf8,
        requiretls: tx.params.requiretls,
    }
}

/// Used by the auth module for reading one line of a SASL exchange.
pub(crate) async fn read_line(io: &mut Io, s: &crate::SmtpSettings) -> Result<Vec<u8>, End> {
    loop {
        match take_line(&io.buf, s.max_line_length.max(12_288)) {
            Line::Complete { line, consumed } => {
                let line = line.to_vec();
                io.buf.drain(..consumed);
                return Ok(line);
            }
            Line::TooLong { .. } => return Err(End::Gone),
            Line::Incomplete => {
                io.flush().await?;
                io.read_more(s.command_timeout)
                    .await
                    .map_err(|_| End::Gone)?;
            }
        }
    }
}
