//! One POP3 session: an explicit state machine over one connection.
//!
//! States (RFC 1939 §3) and the commands they allow:
//!
//! | state          | allowed                                                        |
//! |----------------|----------------------------------------------------------------|
//! | AUTHORIZATION  | CAPA, STLS (cleartext only), USER, PASS, AUTH, QUIT, NOOP      |
//! | TRANSACTION    | CAPA, STAT, LIST, RETR, TOP, UIDL, DELE, RSET, NOOP, QUIT      |
//! | UPDATE         | entered only by QUIT from TRANSACTION: deletions are applied   |
//!
//! Invariants:
//! * responses are written to an output buffer and flushed before the
//!   session blocks on a read, so pipelined commands (RFC 2449 §6.6
//!   PIPELINING) get their responses in as few writes as possible;
//! * after STLS whatever the client sent before the handshake is discarded
//!   (CVE-2011-0411) and the session starts AUTHORIZATION again
//!   (RFC 2595 §4);
//! * the maildrop is a snapshot taken at login: message numbers and sizes
//!   never change during the session (RFC 1939 §5);
//! * DELE only marks; messages are removed only in the UPDATE state, in one
//!   transaction ([`mailroom_store::Store::expunge_maildrop`]). A session
//!   that ends any other way (dropped connection, idle timeout, shutdown)
//!   deletes nothing (RFC 1939 §6);
//! * the session holds the maildrop lock from login to its end, and releases
//!   it on every path (the lock's `Drop` covers panics and cancellations);
//! * command lines are at most [`MAX_COMMAND_LINE`] octets (RFC 2449 §4); a
//!   longer one is answered `-ERR` and discarded in bounded memory, and the
//!   session goes on;
//! * a command line must arrive whole within `pop3.idle_timeout_secs` of
//!   the moment the session starts waiting for it, not within that time of
//!   each read: a client trickling one byte at a time is logged out like a
//!   silent one (RFC 1939 §3's autologout timer).

use std::net::SocketAddr;
use std::time::Duration;

use mailroom_net::tls::TlsAcceptor;
use mailroom_net::{CancellationToken, Connection, MailStream};
use mailroom_store::{Account, Maildrop, MaildropLock};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::Pop3Server;
use crate::command::Command;

/// Longest command line, CRLF included (RFC 2449 §4: 255 octets).
pub const MAX_COMMAND_LINE: usize = 255;
/// Longest SASL response line (RFC 5034 §4 lifts the 255-octet limit for
/// them; this fits the largest message `mailroom-sasl` accepts, base64).
pub const MAX_SASL_LINE: usize = 8192;
/// Bad commands before the session is closed.
const MAX_ERRORS: usize = 20;
/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 8 * 1024;
/// RETR and TOP send the message in pieces of this size: the stuffed copy
/// in the output buffer never grows beyond about twice this.
const SEND_CHUNK: usize = 64 * 1024;

/// Why a session ends.
#[derive(Debug)]
pub(crate) enum End {
    /// The peer closed or the socket failed.
    Gone,
    /// We said goodbye (QUIT, timeout, too many errors, shutdown).
    Closed,
}

/// The socket, its input buffer and the pending responses.
pub(crate) struct Io {
    /// Always `Some`, except for the instant of an STLS upgrade.
    stream: Option<MailStream>,
    buf: Vec<u8>,
    out: Vec<u8>,
    idle_timeout: Duration,
}

impl Io {
    pub(crate) fn ok(&mut self, text: &str) {
        if text.is_empty() {
            self.line("+OK");
        } else {
            self.line(&format!("+OK {text}"));
        }
    }

    pub(crate) fn err(&mut self, text: &str) {
        self.line(&format!("-ERR {text}"));
    }

    pub(crate) fn line(&mut self, text: &str) {
        self.out.extend_from_slice(text.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    fn stream(&mut self) -> Result<&mut MailStream, End> {
        self.stream.as_mut().ok_or(End::Gone)
    }

    /// Writes the pending output. A client that stops reading (say in the
    /// middle of a large RETR) is given up after the idle timeout, so it
    /// cannot hold a session, its maildrop lock and its buffer forever.
    pub(crate) async fn flush(&mut self) -> Result<(), End> {
        if !self.out.is_empty() {
            let out = std::mem::take(&mut self.out);
            let timeout = self.idle_timeout;
            let stream = self.stream()?;
            let write = async {
                stream.write_all(&out).await?;
                stream.flush().await
            };
            match tokio::time::timeout(timeout, write).await {
                Ok(Ok(())) => {}
                _ => return Err(End::Gone),
            }
            self.out = out;
            self.out.clear();
        }
        Ok(())
    }

    /// Reads more input. `Err(true)` at `deadline`, `Err(false)` when closed.
    async fn read_more(&mut self, deadline: tokio::time::Instant) -> Result<(), bool> {
        let start = self.buf.len();
        self.buf.resize(start + READ_CHUNK, 0);
        let Some(stream) = self.stream.as_mut() else {
            self.buf.truncate(start);
            return Err(false);
        };
        let n = match tokio::time::timeout_at(deadline, stream.read(&mut self.buf[start..])).await {
            Ok(Ok(n)) => n,
            Ok(Err(_)) => 0,
            Err(_) => {
                self.buf.truncate(start);
                return Err(true);
            }
        };
        self.buf.truncate(start + n);
        if n == 0 { Err(false) } else { Ok(()) }
    }

    /// Says a last word and closes.
    pub(crate) async fn close_with(&mut self, text: &str) -> End {
        self.line(text);
        let _ = self.flush().await;
        if let Some(stream) = self.stream.as_mut() {
            let _ = stream.shutdown().await;
        }
        End::Closed
    }

    /// Reads one line of at most `max` octets (CRLF included), flushing
    /// pending output first. `Ok(None)` for a line that was too long (it has
    /// been discarded). Timeouts and shutdown end the session.
    pub(crate) async fn read_line(
        &mut self,
        max: usize,
        shutdown: &CancellationToken,
    ) -> Result<Option<Vec<u8>>, End> {
        let mut too_long = false;
        // The whole line within the idle timeout (see the module's invariants).
        let deadline = tokio::time::Instant::now() + self.idle_timeout;
        loop {
            if let Some(line) = frame_line(&mut self.buf, max, &mut too_long) {
                return Ok(line);
            }
            self.flush().await?;
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    return Err(self.close_with("-ERR [SYS/TEMP] server shutting down, try again later").await);
                }
                read = self.read_more(deadline) => match read {
                    Ok(()) => {}
                    // RFC 1939 §3: the autologout timer ends the session
                    // without entering the UPDATE state.
                    Err(true) => return Err(self.close_with("-ERR autologout: idle for too long").await),
                    Err(false) => return Err(End::Gone),
                },
            }
        }
    }
}

/// Cuts the next command line off the front of `buf`: `Some(Some(line))`
/// without its CRLF (or bare LF), `Some(None)` when the line was longer
/// than `max` octets (LF included) and has been discarded, `None` when
/// more input is needed. An over-long line is dropped as it arrives
/// (`too_long` remembers it between calls), so `buf` never holds more
/// than `max` octets of it.
pub(crate) fn frame_line(
    buf: &mut Vec<u8>,
    max: usize,
    too_long: &mut bool,
) -> Option<Option<Vec<u8>>> {
    let window = &buf[..buf.len().min(max)];
    if let Some(p) = window.iter().position(|&b| b == b'\n') {
        let mut line: Vec<u8> = buf.drain(..=p).collect();
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        return Some((!std::mem::take(too_long)).then_some(line));
    }
    if *too_long || buf.len() >= max {
        // Discard up to the end of the over-long line, in bounded memory.
        *too_long = true;
        match buf.iter().position(|&b| b == b'\n') {
            Some(p) => {
                buf.drain(..=p);
                *too_long = false;
                return Some(None);
            }
            None => buf.clear(),
        }
    }
    None
}

/// The session's state (RFC 1939 §3).
pub(crate) enum Phase {
    /// Before login; `user` is the name given by USER.
    Authorization { user: Option<String> },
    /// Logged in, working on a snapshot.
    Transaction(Box<Transaction>),
}

/// A logged-in session's maildrop.
pub(crate) struct Transaction {
    account: String,
    maildrop: Maildrop,
    /// `deleted[n - 1]`: message `n` was marked by DELE.
    deleted: Vec<bool>,
    /// Held until the session ends.
    lock: Option<MaildropLock>,
    /// Texts read ahead by RETR (see [`Transaction::read_ahead`]), by UID.
    prefetched: Vec<(u32, Vec<u8>)>,
}

/// RETR reads this many messages ahead, in one store query: downloaders
/// retrieve the maildrop in order, and a round trip per message was most of
/// a RETR's cost (issue 17). Bounded also by [`READ_AHEAD_BYTES`].
const READ_AHEAD: usize = 16;
/// The most a session holds read ahead (one message larger than this is
/// read alone).
const READ_AHEAD_BYTES: u64 = 1 << 20;

impl Transaction {
    /// The UIDs to read for `RETR n`: message `n`, then the live messages
    /// after it, up to [`READ_AHEAD`] messages and [`READ_AHEAD_BYTES`].
    fn read_ahead(&self, n: usize) -> Vec<u32> {
        let mut uids = Vec::new();
        let mut bytes = 0;
        for (i, m) in self.maildrop.messages.iter().enumerate().skip(n - 1) {
            if self.deleted[i] {
                continue;
            }
            if !uids.is_empty() && (uids.len() >= READ_AHEAD || bytes + m.size > READ_AHEAD_BYTES) {
                break;
            }
            bytes += m.size;
            uids.push(m.uid);
        }
        uids
    }

    /// The message numbered `n` (1-based), unless it does not exist or is
    /// marked as deleted (RFC 1939 §5: such numbers are refused).
    fn message(&self, n: usize) -> Option<mailroom_store::MaildropMessage> {
        let i = n.checked_sub(1)?;
        let m = self.maildrop.messages.get(i)?;
        (!self.deleted[i]).then_some(*m)
    }

    fn live(&self) -> impl Iterator<Item = (usize, &mailroom_store::MaildropMessage)> {
        self.maildrop
            .messages
            .iter()
            .enumerate()
            .filter(|(i, _)| !self.deleted[*i])
            .map(|(i, m)| (i + 1, m))
    }

    fn stat(&self) -> (usize, u64) {
        self.live()
            .fold((0, 0), |(n, s), (_, m)| (n + 1, s + m.size))
    }

    /// The RFC 1939 §7 unique-id: `<uidvalidity>.<uid>`, which is what an
    /// IMAP client sees for the same message, and never reused while
    /// UIDVALIDITY stands.
    fn uidl(&self, m: &mailroom_store::MaildropMessage) -> String {
        format!("{}.{}", self.maildrop.uidvalidity, m.uid)
    }
}

/// What a session knows about itself.
pub(crate) struct State {
    pub(crate) peer: SocketAddr,
    pub(crate) tls: bool,
    pub(crate) phase: Phase,
    pub(crate) auth_failures: usize,
    errors: usize,
}

impl Pop3Server {
    /// Whether a login may be attempted now: over TLS, or from loopback
    /// when the exemption is configured (RFC 2595 §2.2 leaves the policy to
    /// the server).
    pub(crate) fn auth_permitted(&self, state: &State) -> bool {
        state.tls
            || (self.settings.allow_plaintext_auth_on_loopback
                && mailroom_net::is_loopback(state.peer.ip()))
    }
}

/// Runs a session to its end.
pub(crate) async fn run(server: &Pop3Server, conn: Connection, shutdown: CancellationToken) {
    let tls = conn.stream.is_tls();
    let mut io = Io {
        stream: Some(conn.stream),
        buf: Vec::with_capacity(READ_CHUNK),
        out: Vec::with_capacity(1024),
        idle_timeout: server.settings.idle_timeout,
    };
    let mut state = State {
        peer: conn.peer,
        tls,
        phase: Phase::Authorization { user: None },
        auth_failures: 0,
        errors: 0,
    };
    // RFC 1939 §4 greeting; RFC 2449 §6.8 IMPLEMENTATION names us in CAPA instead.
    io.ok(&format!("{} POP3 Mailroom ready", server.settings.hostname));
    let end = command_loop(
        server,
        &mut io,
        &mut state,
        conn.tls,
        conn.handshake_timeout,
        &shutdown,
    )
    .await;
    // Whatever the ending, a maildrop still held is released without
    // applying any deletion (only QUIT enters UPDATE, and it took the lock).
    if let Phase::Transaction(t) = &mut state.phase
        && let Some(lock) = t.lock.take()
    {
        lock.release().await;
    }
    tracing::debug!(?end, "POP3 session ended");
}

/// The CAPA response (RFC 2449 §5). STLS is listed only while it can be used
/// (cleartext, AUTHORIZATION state). USER and SASL are always listed, so a
/// client learns what it may use after STLS; before it, a login attempt
/// without the loopback exemption is answered `-ERR [AUTH]` with the reason.
fn capabilities(state: &State, stls_available: bool) -> Vec<String> {
    let mut caps: Vec<String> = vec![
        "TOP".into(),
        "UIDL".into(),
        "USER".into(),
        "SASL SCRAM-SHA-256 PLAIN".into(),
        "RESP-CODES".into(),
        "AUTH-RESP-CODE".into(),
        "PIPELINING".into(),
        // Messages stay until the user deletes them (RFC 2449 §6.7).
        "EXPIRE NEVER".into(),
        "IMPLEMENTATION Mailroom".into(),
    ];
    if !state.tls && stls_available && matches!(state.phase, Phase::Authorization { .. }) {
        caps.insert(0, "STLS".into());
    }
    caps
}

async fn command_loop(
    server: &Pop3Server,
    io: &mut Io,
    state: &mut State,
    acceptor: Option<TlsAcceptor>,
    handshake_timeout: Duration,
    shutdown: &CancellationToken,
) -> End {
    loop {
        if state.errors >= MAX_ERRORS {
            return io.close_with("-ERR too many errors, closing").await;
        }
        let line = match io.read_line(MAX_COMMAND_LINE, shutdown).await {
            Ok(Some(line)) => line,
            Ok(None) => {
                state.errors += 1;
                io.err("line too long (RFC 2449: 255 octets at most)");
                continue;
            }
            Err(end) => return end,
        };
        let command = match Command::parse(&line) {
            Ok(c) => c,
            Err(e) => {
                state.errors += 1;
                io.err(e.0);
                continue;
            }
        };
        let in_auth = matches!(state.phase, Phase::Authorization { .. });
        match command {
            Command::Capa => {
                io.ok("capability list follows");
                for c in capabilities(state, acceptor.is_some()) {
                    io.line(&c);
                }
                io.line(".");
            }
            Command::Noop => io.ok(""),
            Command::Quit => {
                return match &mut state.phase {
                    Phase::Authorization { .. } => {
                        io.close_with(&format!("+OK {} signing off", server.settings.hostname))
                            .await
                    }
                    Phase::Transaction(t) => update(server, io, t).await,
                };
            }
            Command::Stls => {
                // RFC 2595 §4: only in AUTHORIZATION, and only once.
                if state.tls || !in_auth {
                    state.errors += 1;
                    io.err("STLS is not allowed now");
                    continue;
                }
                let Some(acceptor) = acceptor.as_ref() else {
                    io.err("STLS is not available");
                    continue;
                };
                io.ok("begin TLS negotiation");
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
                        io.stream = Some(tls);
                        state.tls = true;
                        state.phase = Phase::Authorization { user: None };
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "STLS handshake failed");
                        return End::Gone;
                    }
                }
            }
            Command::User(name) => {
                let permitted = server.auth_permitted(state);
                let Phase::Authorization { user } = &mut state.phase else {
                    state.errors += 1;
                    io.err("already logged in");
                    continue;
                };
                if !permitted {
                    io.err("[AUTH] plaintext authentication disallowed: use STLS first");
                    continue;
                }
                *user = Some(name);
                io.ok("send your password");
            }
            Command::Pass(password) => {
                let Phase::Authorization { user } = &mut state.phase else {
                    state.errors += 1;
                    io.err("already logged in");
                    continue;
                };
                // RFC 1939 §7: PASS only right after a successful USER.
                let Some(name) = user.take() else {
                    state.errors += 1;
                    io.err("USER first");
                    continue;
                };
                if let Some(end) = crate::auth::pass(server, io, state, &name, &password).await {
                    return end;
                }
            }
            Command::Auth(mechanism, initial) => {
                if !in_auth {
                    state.errors += 1;
                    io.err("already logged in");
                    continue;
                }
                let Some(mechanism) = mechanism else {
                    // Listing the mechanisms (as RFC 1734 servers did; CAPA is the standard way).
                    io.ok("SASL mechanisms follow");
                    io.line("SCRAM-SHA-256");
                    io.line("PLAIN");
                    io.line(".");
                    continue;
                };
                if let Some(end) =
                    crate::auth::sasl(server, io, state, &mechanism, initial, shutdown).await
                {
                    return end;
                }
            }
            other => {
                let Phase::Transaction(t) = &mut state.phase else {
                    state.errors += 1;
                    io.err("not logged in");
                    continue;
                };
                if let Err(end) = transaction_command(server, io, t, other).await {
                    return end;
                }
            }
        }
    }
}

/// Completes a login whose credentials were accepted: takes the maildrop
/// lock and the snapshot. A refusal here is not an authentication failure.
pub(crate) async fn enter_transaction(
    server: &Pop3Server,
    io: &mut Io,
    state: &mut State,
    account: Account,
) {
    let lock = match server.store.lock_maildrop(account.id).await {
        Ok(Some(lock)) => lock,
        Ok(None) => {
            // RFC 2449 §8.1.1: another session holds the maildrop.
            io.err("[IN-USE] the maildrop is in use by another session");
            return;
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot lock the maildrop");
            io.err("[SYS/TEMP] the maildrop is unavailable, try again later");
            return;
        }
    };
    let maildrop = match server.store.open_maildrop(account.id).await {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(error = %e, "cannot open the maildrop");
            lock.release().await;
            io.err("[SYS/TEMP] the maildrop is unavailable, try again later");
            return;
        }
    };
    let deleted = vec![false; maildrop.messages.len()];
    let t = Transaction {
        account: account.address,
        maildrop,
        deleted,
        lock: Some(lock),
        prefetched: Vec::new(),
    };
    let (n, size) = t.stat();
    tracing::info!(account = %t.account, messages = n, "POP3 login");
    io.ok(&format!("maildrop has {n} messages ({size} octets)"));
    state.phase = Phase::Transaction(Box::new(t));
}

/// The UPDATE state (RFC 1939 §6): apply the deletions in one transaction,
/// say goodbye, release the maildrop.
async fn update(server: &Pop3Server, io: &mut Io, t: &mut Transaction) -> End {
    let uids: Vec<u32> = t
        .maildrop
        .messages
        .iter()
        .zip(&t.deleted)
        .filter(|(_, d)| **d)
        .map(|(m, _)| m.uid)
        .collect();
    let text = match server
        .store
        .expunge_maildrop(t.maildrop.mailbox_id, &uids)
        .await
    {
        Ok(removed) => {
            tracing::info!(account = %t.account, removed, "POP3 update");
            let (n, _) = t.stat();
            format!(
                "+OK {} signing off ({n} messages left)",
                server.settings.hostname
            )
        }
        Err(e) => {
            tracing::error!(error = %e, "POP3 update failed");
            // RFC 1939 §6: an -ERR to QUIT says some deletions failed; the
            // transaction rolled back, so none happened.
            "-ERR [SYS/TEMP] messages could not be deleted; none were".to_string()
        }
    };
    let end = io.close_with(&text).await;
    if let Some(lock) = t.lock.take() {
        lock.release().await;
    }
    end
}

async fn transaction_command(
    server: &Pop3Server,
    io: &mut Io,
    t: &mut Transaction,
    command: Command,
) -> Result<(), End> {
    const NO_SUCH: &str = "no such message";
    match command {
        Command::Stat => {
            let (n, size) = t.stat();
            io.ok(&format!("{n} {size}"));
        }
        Command::List(None) => {
            let (n, size) = t.stat();
            io.ok(&format!("{n} messages ({size} octets)"));
            let lines: Vec<String> = t.live().map(|(n, m)| format!("{n} {}", m.size)).collect();
            for l in lines {
                io.line(&l);
            }
            io.line(".");
        }
        Command::List(Some(n)) => match t.message(n) {
            Some(m) => io.ok(&format!("{n} {}", m.size)),
            None => io.err(NO_SUCH),
        },
        Command::Uidl(None) => {
            io.ok("unique-id listing follows");
            let lines: Vec<String> = t
                .live()
                .map(|(n, m)| format!("{n} {}", t.uidl(m)))
                .collect();
            for l in lines {
                io.line(&l);
            }
            io.line(".");
        }
        Command::Uidl(Some(n)) => match t.message(n) {
            Some(m) => io.ok(&format!("{n} {}", t.uidl(&m))),
            None => io.err(NO_SUCH),
        },
        Command::Dele(n) => match t.message(n) {
            Some(_) => {
                t.deleted[n - 1] = true;
                io.ok(&format!("message {n} deleted"));
            }
            None => io.err(NO_SUCH),
        },
        Command::Rset => {
            t.deleted.fill(false);
            let (n, size) = t.stat();
            io.ok(&format!("maildrop has {n} messages ({size} octets)"));
        }
        Command::Retr(n) | Command::Top(n, _) => {
            let Some(m) = t.message(n) else {
                io.err(NO_SUCH);
                return Ok(());
            };
            let read = match command {
                // RETR: from what was read ahead, else this message and
                // the next ones in one query. (Texts of a UID never change;
                // one removed meanwhile by IMAP is still served, as from the
                // snapshot taken at login.)
                Command::Retr(_) => match t.prefetched.iter().position(|(uid, _)| *uid == m.uid) {
                    Some(i) => Ok(Some(t.prefetched.swap_remove(i).1)),
                    None => {
                        let uids = t.read_ahead(n);
                        match server
                            .store
                            .message_texts(t.maildrop.mailbox_id, &uids)
                            .await
                        {
                            Ok(mut texts) => {
                                let this = texts
                                    .iter()
                                    .position(|(uid, _)| *uid == m.uid)
                                    .map(|i| texts.swap_remove(i).1);
                                t.prefetched = texts;
                                Ok(this)
                            }
                            Err(e) => Err(e),
                        }
                    }
                },
                _ => {
                    server
                        .store
                        .read_message(t.maildrop.mailbox_id, m.uid)
                        .await
                }
            };
            let text = match read {
                Ok(Some(text)) => text,
                Ok(None) => {
                    // Removed meanwhile (by IMAP): RFC 1939 leaves no better answer.
                    io.err("message was deleted by another session");
                    return Ok(());
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot read a message");
                    io.err("[SYS/TEMP] cannot read the message, try again later");
                    return Ok(());
                }
            };
            let body: &[u8] = match command {
                Command::Top(_, lines) => {
                    io.ok("top of message follows");
                    &text[..top_cut(&text, lines)]
                }
                _ => {
                    io.ok(&format!("{} octets", m.size));
                    &text
                }
            };
            // Stream in pieces: the stuffed copy never holds the whole message.
            let mut stuffer = Stuffer::default();
            for chunk in body.chunks(SEND_CHUNK) {
                stuffer.feed(chunk, &mut io.out);
                if io.out.len() >= SEND_CHUNK {
                    io.flush().await?;
                }
            }
            stuffer.finish(&mut io.out);
        }
        // Commands of the AUTHORIZATION state are handled by the caller.
        _ => io.err("not allowed now"),
    }
    Ok(())
}

/// Where `TOP n lines` ends: the header, the blank line after it, and then
/// `lines` lines of the body (RFC 1939 §7). Line ends may be CRLF or bare LF.
pub fn top_cut(text: &[u8], lines: usize) -> usize {
    let mut pos = 0;
    let mut in_header = true;
    let mut body_lines = 0;
    while pos < text.len() {
        if !in_header && body_lines >= lines {
            return pos;
        }
        let end = text[pos..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(text.len(), |p| pos + p + 1);
        let line = &text[pos..end];
        if in_header {
            if line == b"\r\n" || line == b"\n" {
                in_header = false;
            }
        } else {
            body_lines += 1;
        }
        pos = end;
    }
    text.len()
}

/// Turns message text into the body of a multi-line response (RFC 1939 §3):
/// every line ending becomes CRLF (bare LF and bare CR alike), a line that
/// starts with `.` gets another `.` in front, and [`Stuffer::finish`] adds the
/// final CRLF (when missing) and the `.` line. Works across chunk boundaries.
#[derive(Debug)]
pub struct Stuffer {
    line_start: bool,
    pending_cr: bool,
}

impl Default for Stuffer {
    fn default() -> Self {
        Stuffer {
            line_start: true,
            pending_cr: false,
        }
    }
}

impl Stuffer {
    /// Appends the stuffed form of `data` to `out`.
    pub fn feed(&mut self, data: &[u8], out: &mut Vec<u8>) {
        out.reserve(data.len() + data.len() / 32);
        for &b in data {
            if self.pending_cr {
                self.pending_cr = false;
                out.extend_from_slice(b"\r\n");
                self.line_start = true;
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\r' => self.pending_cr = true,
                b'\n' => {
                    out.extend_from_slice(b"\r\n");
                    self.line_start = true;
                }
                _ => {
                    if self.line_start && b == b'.' {
                        out.push(b'.');
                    }
                    out.push(b);
                    self.line_start = false;
                }
            }
        }
    }

    /// Ends the response: the last line's CRLF if missing, then `.CRLF`.
    pub fn finish(self, out: &mut Vec<u8>) {
        if self.pending_cr || !self.line_start {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stuff(chunks: &[&[u8]]) -> Vec<u8> {
        let mut s = Stuffer::default();
        let mut out = Vec::new();
        for c in chunks {
            s.feed(c, &mut out);
        }
        s.finish(&mut out);
        out
    }

    #[test]
    fn stuffing_doubles_leading_dots_and_normalises_line_ends() {
        assert_eq!(stuff(&[b"a\r\n.b\r\n"]), b"a\r\n..b\r\n.\r\n");
        assert_eq!(stuff(&[b".\n..x\nend"]), b"..\r\n...x\r\nend\r\n.\r\n");
        assert_eq!(stuff(&[b"a\rb\r\n"]), b"a\r\nb\r\n.\r\n");
        assert_eq!(stuff(&[b""]), b".\r\n");
        // Across chunk boundaries: a CRLF split in two, a dot after a split.
        assert_eq!(
            stuff(&[b"a\r", b"\n.b\r", b"\n", b".", b"c"]),
            b"a\r\n..b\r\n..c\r\n.\r\n"
        );
        // A body line that is only a dot cannot end the response early.
        let out = stuff(&[b"x\r\n.\r\ny\r\n"]);
        assert_eq!(out, b"x\r\n..\r\ny\r\n.\r\n");
    }

    #[test]
    fn top_keeps_the_header_and_n_body_lines() {
        let m = b"A: 1\r\nB: 2\r\n\r\nl1\r\nl2\r\nl3\r\n";
        assert_eq!(&m[..top_cut(m, 0)], b"A: 1\r\nB: 2\r\n\r\n");
        assert_eq!(&m[..top_cut(m, 2)], b"A: 1\r\nB: 2\r\n\r\nl1\r\nl2\r\n");
        assert_eq!(top_cut(m, 10), m.len());
        let lf = b"A: 1\n\nl1\nl2\n";
        assert_eq!(&lf[..top_cut(lf, 1)], b"A: 1\n\nl1\n");
        // No blank line: it is all header.
        assert_eq!(top_cut(b"A: 1\r\nno body", 0), 13);
    }
}
