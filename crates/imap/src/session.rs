//! One IMAP session: an explicit state machine over one connection.
//!
//! States (RFC 9051 §3) and the commands each allows — the one table the
//! dispatcher consults is [`allowed_in`]:
//!
//! | state             | allowed                                                    |
//! |-------------------|------------------------------------------------------------|
//! | any               | CAPABILITY, NOOP, LOGOUT, ID                               |
//! | not authenticated | STARTTLS (cleartext only), AUTHENTICATE, LOGIN             |
//! | authenticated     | ENABLE, SELECT, EXAMINE, CREATE, DELETE, RENAME, SUBSCRIBE,|
//! |                   | UNSUBSCRIBE, LIST, LSUB, NAMESPACE, STATUS, APPEND, IDLE,  |
//! |                   | GETQUOTA, GETQUOTAROOT, SETQUOTA, COMPRESS,                |
//! |                   | GETMETADATA, SETMETADATA; seen before the codec:           |
//! |                   | UNAUTHENTICATE (RFC 8437), NOTIFY (RFC 5465), MYRIGHTS,    |
//! |                   | GETACL, LISTRIGHTS, SETACL, DELETEACL (RFC 4314)           |
//! | selected          | all of authenticated, plus CHECK, CLOSE, UNSELECT, EXPUNGE,|
//! |                   | UID EXPUNGE, SEARCH, FETCH, STORE, COPY, MOVE (and UID …)  |
//! | logout            | nothing: the connection closes                             |
//!
//! Invariants:
//! * input is framed by `imap-codec`'s `Fragmentizer`, which never holds
//!   more than `max_message_size` bytes of one command; a synchronising
//!   literal beyond that is refused with `NO [TOOBIG]` before the client
//!   sends it (so `APPEND {4294967295}` allocates nothing), a non-synchronising
//!   one (LITERAL+) is read and discarded, then refused;
//! * responses are collected in an output buffer and flushed before the
//!   session waits for input, so pipelined commands are answered in few writes;
//! * after STARTTLS anything the client sent before the handshake is
//!   discarded (CVE-2011-0411 / RFC 9051 §6.2.1); likewise after COMPRESS
//!   DEFLATE, from which on every flush and read goes through
//!   [`crate::compress`] (one SYNC_FLUSH per flush);
//! * after every command in the selected state the session reads the store's
//!   changes and announces them, following RFC 9051 §7.5.1 ([`crate::selected`]);
//! * only a session with NOTIFY set reads the store's events between
//!   commands ([`crate::notify`]); the others read them only in IDLE;
//! * a command (its literals included) must arrive whole within the idle
//!   timeout of its phase from the moment the session starts waiting for
//!   it, not within that time of each read: a client trickling one byte at
//!   a time is logged out like a silent one (RFC 9051 §5.4).

use std::net::SocketAddr;
use std::time::Duration;

use imap_codec::fragmentizer::{FragmentInfo, Fragmentizer, LiteralAnnouncement};
use imap_codec::{CommandCodec, decode::Decoder};
use imap_types::command::{CommandBody, SelectParameter};
use imap_types::core::LiteralMode;
use imap_types::flag::Flag;
use imap_types::mailbox::{ListMailbox, Mailbox as WireMailbox};
use imap_types::status::StatusDataItemName;
use mailroom_net::tls::TlsAcceptor;
use mailroom_net::{CancellationToken, Connection, MailStream};
use mailroom_store::{Account, Mailbox, MailboxEvent, StoreError, flag_bits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::broadcast;

use crate::ImapServer;
use crate::compress::Deflate;
use crate::names::{self, BadName};
use crate::preparse::{self, Lifted};
use crate::selected::{Selected, SyncMode, uid_set};

/// Bad commands before the session is closed.
const MAX_ERRORS: usize = 20;
/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 4 * 1024;
/// Bytes read at a time while idling: `DONE` is all a client should send
/// then, and thousands of idling sessions should not each keep a
/// [`READ_CHUNK`] buffer.
const IDLE_READ_CHUNK: usize = 64;

/// Why a session ends.
#[derive(Debug)]
pub(crate) enum End {
    /// The peer closed or the socket failed.
    Gone,
    /// We said goodbye (LOGOUT, timeout, too many errors, shutdown).
    Closed,
}

/// What the reader produced.
pub(crate) enum Input {
    /// A complete command (or continuation line), literals included.
    Message(Vec<u8>),
    /// A message that broke a limit; it was discarded. The text is for the client.
    Refused {
        tag: Option<String>,
        text: &'static str,
    },
}

/// The socket, the framer and the pending responses.
pub(crate) struct Io {
    /// Always `Some`, except for the instant of a STARTTLS upgrade.
    stream: Option<MailStream>,
    frag: Fragmentizer,
    pub(crate) out: Vec<u8>,
    /// Empty while the session hibernates in IDLE (see [`Io::hibernate`]).
    read_buf: Vec<u8>,
    /// The framer's limit: the largest message plus its command line.
    frag_limit: u32,
    max_literal: u32,
    max_line: u32,
    /// The current message had a line over `max_line`.
    line_too_long: bool,
    /// COMPRESS=DEFLATE is active (RFC 4978, see [`crate::compress`]).
    deflate: Option<Box<Deflate>>,
}

impl Io {
    /// The reader and writer of a session on `stream` (`None`: detached,
    /// for the fuzzing harness, which feeds bytes with [`Io::receive`]).
    pub(crate) fn new(stream: Option<MailStream>, max_message: u32, max_line: u32) -> Io {
        let frag_limit = max_message.saturating_add(max_line);
        Io {
            stream,
            frag: Fragmentizer::new(frag_limit),
            out: Vec::with_capacity(4096),
            read_buf: vec![0; READ_CHUNK],
            frag_limit,
            max_literal: max_message,
            max_line,
            line_too_long: false,
            deflate: None,
        }
    }

    /// Hands bytes read from the client to the framer, inflating them
    /// first once COMPRESS=DEFLATE is active.
    pub(crate) fn receive(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self.deflate.as_mut() {
            Some(z) => z.decompress(bytes, |b| self.frag.enqueue_bytes(b)),
            None => {
                self.frag.enqueue_bytes(bytes);
                Ok(())
            }
        }
    }

    /// Starts COMPRESS=DEFLATE (RFC 4978): what is received from now on
    /// is compressed, and what was framed ahead of it is dropped.
    pub(crate) fn start_deflate(&mut self) {
        self.frag = Fragmentizer::new(self.frag_limit);
        self.deflate = Some(Box::default());
    }

    /// Queues a line (CRLF added).
    pub(crate) fn line(&mut self, text: &str) {
        self.out.extend_from_slice(text.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    /// Writes the pending output, bounded by `timeout` (a client that stops
    /// reading cannot hold the session forever).
    pub(crate) async fn flush(&mut self, timeout: Duration) -> Result<(), End> {
        if self.out.is_empty() {
            return Ok(());
        }
        let out = std::mem::take(&mut self.out);
        let stream = self.stream.as_mut().ok_or(End::Gone)?;
        let mut zout = Vec::new();
        let wire = match self.deflate.as_mut() {
            Some(z) => {
                z.compress(&out, &mut zout).map_err(|_| End::Gone)?;
                &zout
            }
            None => &out,
        };
        let write = async {
            stream.write_all(wire).await?;
            stream.flush().await
        };
        match tokio::time::timeout(timeout, write).await {
            Ok(Ok(())) => {}
            _ => return Err(End::Gone),
        }
        self.out = out;
        self.out.clear();
        if self.out.capacity() > 1 << 20 {
            self.out.shrink_to(64 * 1024);
        }
        Ok(())
    }

    /// Drops the connection at once: after a failure in the middle of a
    /// literal nothing more can be said that the client would read right.
    pub(crate) fn abort(&mut self) {
        self.stream = None;
        self.out.clear();
    }

    /// Says a last word and closes.
    pub(crate) async fn close_with(&mut self, text: &str) -> End {
        self.line(text);
        let _ = self.flush(Duration::from_secs(10)).await;
        if let Some(stream) = self.stream.as_mut() {
            let _ = stream.shutdown().await;
        }
        End::Closed
    }

    /// Reads more bytes into the framer, at most `chunk` at a time.
    /// `Ok(false)` when the peer closed.
    async fn read_more(&mut self, chunk: usize) -> std::io::Result<bool> {
        let Some(stream) = self.stream.as_mut() else {
            return Ok(false);
        };
        if self.read_buf.len() != chunk {
            self.read_buf = vec![0; chunk];
        }
        let n = stream.read(&mut self.read_buf).await?;
        if n == 0 {
            return Ok(false);
        }
        let read_buf = std::mem::take(&mut self.read_buf);
        let received = self.receive(&read_buf[..n]);
        self.read_buf = read_buf;
        received.map(|()| true)
    }

    /// Gives back what a session waiting in IDLE does not need: the read
    /// and output buffers, and the framer's buffers when no message has
    /// begun (they keep the capacity of the largest command so far, an
    /// APPEND's literal included). Thousands of clients idle at once; each
    /// then costs its socket, its view of the mailbox and a few hundred
    /// bytes of state. The buffers come back with the next read or response.
    ///
    /// Call it only with the output flushed and after [`Io::next_buffered`]
    /// gave `None` (every received byte is in the framer).
    fn hibernate(&mut self) {
        debug_assert!(self.out.is_empty());
        self.out = Vec::new();
        self.read_buf = Vec::new();
        if let Some(z) = self.deflate.as_mut() {
            z.hibernate();
        }
        if self.frag.message_bytes().is_empty() {
            self.frag = Fragmentizer::new(self.frag_limit);
        }
    }

    /// Frames the next message from bytes already received, without reading.
    /// `None` when more input is needed.
    pub(crate) fn next_buffered(&mut self) -> Option<Input> {
        loop {
            let info = self.frag.progress()?;
            if let FragmentInfo::Line { start, end, .. } = info
                && (end - start) as u64 > u64::from(self.max_line)
            {
                self.line_too_long = true;
                self.frag.poison_message();
            }
            if let FragmentInfo::Line {
                announcement: Some(LiteralAnnouncement { mode, length }),
                ..
            } = info
            {
                if mode == LiteralMode::Sync {
                    if length > self.max_literal || self.line_too_long {
                        // Refuse before the client sends it (RFC 9051 §7.1: TOOBIG).
                        let tag = self.frag.decode_tag().map(|t| t.as_ref().to_string());
                        self.frag.skip_message();
                        self.line_too_long = false;
                        return Some(Input::Refused {
                            tag,
                            text: "NO [TOOBIG] literal too large",
                        });
                    }
                    self.line("+ Ready for literal data");
                } else if length > self.max_literal {
                    // A non-synchronising literal is on its way regardless:
                    // read and drop it (the framer stops keeping bytes at
                    // its limit), then refuse the command.
                    self.frag.poison_message();
                }
                continue;
            }
            if self.frag.is_message_complete() {
                let too_long_line = std::mem::take(&mut self.line_too_long);
                if self.frag.is_message_poisoned() || self.frag.is_max_message_size_exceeded() {
                    let tag = self.frag.decode_tag().map(|t| t.as_ref().to_string());
                    return Some(Input::Refused {
                        tag,
                        text: if too_long_line {
                            "BAD command line too long"
                        } else {
                            "NO [TOOBIG] literal too large"
                        },
                    });
                }
                return Some(Input::Message(self.frag.message_bytes().to_vec()));
            }
        }
    }

    /// Reads the next complete message, flushing output first. Timeouts and
    /// shutdown end the session with a BYE.
    pub(crate) async fn next(
        &mut self,
        idle: Duration,
        shutdown: &CancellationToken,
    ) -> Result<Input, End> {
        // The whole command within `idle` (see the module's invariants).
        let deadline = tokio::time::Instant::now() + idle;
        loop {
            if let Some(input) = self.next_buffered() {
                return Ok(input);
            }
            self.flush(idle).await?;
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    return Err(self.close_with("* BYE [UNAVAILABLE] server shutting down, try again later").await);
                }
                read = tokio::time::timeout_at(deadline, self.read_more(READ_CHUNK)) => match read {
                    Ok(Ok(true)) => {}
                    Ok(_) => return Err(End::Gone),
                    Err(_) => return Err(self.close_with("* BYE autologout: idle for too long").await),
                },
            }
        }
    }
}

/// The session's state (RFC 9051 §3).
pub(crate) enum Phase {
    NotAuthenticated,
    Authenticated,
    Selected(Box<Selected>),
}

/// What a session knows about itself.
pub(crate) struct State {
    pub(crate) peer: SocketAddr,
    pub(crate) tls: bool,
    pub(crate) phase: Phase,
    pub(crate) account: Option<Account>,
    pub(crate) auth_failures: usize,
    errors: usize,
    /// UTF8=ACCEPT or IMAP4rev2 enabled: names and strings in UTF-8.
    pub(crate) utf8: bool,
    /// IMAP4rev2 enabled.
    pub(crate) rev2: bool,
    pub(crate) condstore: bool,
    pub(crate) qresync: bool,
    /// Extensions named in ENABLE so far, upper case.
    enabled: Vec<String>,
    /// New-mail and change events, from login on.
    pub(crate) events: Option<broadcast::Receiver<MailboxEvent>>,
    /// NOTIFY SET in force (RFC 5465, [`crate::notify`]); boxed, so that
    /// the many sessions without it pay one pointer.
    pub(crate) notify: Option<Box<crate::notify::Notify>>,
}

impl State {
    /// A command enabled CONDSTORE (ENABLE, or FETCH, STORE or SEARCH using
    /// MODSEQ): with a mailbox selected, the client is told its
    /// HIGHESTMODSEQ at once, the first time (RFC 7162 §3.1).
    pub(crate) fn enable_condstore(&mut self, io: &mut Io) {
        if std::mem::replace(&mut self.condstore, true) {
            return;
        }
        if let Phase::Selected(sel) = &self.phase {
            io.line(&format!(
                "* OK [HIGHESTMODSEQ {}] CONDSTORE enabled",
                sel.modseq.max(1)
            ));
        }
    }

    /// UNAUTHENTICATE (RFC 8437 §3): back to the not-authenticated state
    /// as after the greeting. The selected mailbox is closed without an
    /// expunge, the account and its change events are dropped and ENABLEd
    /// extensions are forgotten; TLS and the failed-login count stay.
    pub(crate) fn unauthenticate(&mut self) {
        self.phase = Phase::NotAuthenticated;
        self.account = None;
        self.events = None;
        self.notify = None;
        self.enabled.clear();
        (self.utf8, self.rev2, self.condstore, self.qresync) = (false, false, false, false);
    }

    pub(crate) fn account_id(&self) -> i64 {
        self.account.as_ref().map_or(0, |a| a.id)
    }

    fn sync_mode(&self, allow_expunge: bool) -> SyncMode {
        SyncMode {
            allow_expunge,
            condstore: self.condstore,
            qresync: self.qresync,
        }
    }
}

impl ImapServer {
    /// Whether a login may be attempted now: over TLS, or from loopback
    /// when the exemption is configured.
    pub(crate) fn auth_permitted(&self, state: &State) -> bool {
        state.tls
            || (self.settings.allow_plaintext_auth_on_loopback
                && mailroom_net::is_loopback(state.peer.ip()))
    }
}

/// The states (see [`state_bit`]) in which a command is allowed.
pub(crate) fn allowed_in(body: &CommandBody<'_>) -> &'static [u8] {
    // Bit per state: 1 not authenticated, 2 authenticated, 4 selected.
    const ANY: &[u8] = &[1, 2, 4];
    const NOT_AUTH: &[u8] = &[1];
    const AUTH: &[u8] = &[2, 4];
    const SELECTED: &[u8] = &[4];
    use CommandBody as C;

    (match body {
        C::Capability | C::Noop | C::Logout | C::Id { .. } => ANY,
        C::StartTLS | C::Authenticate { .. } | C::Login { .. } => NOT_AUTH,
        C::Enable { .. }
        | C::Select { .. }
        | C::Examine { .. }
        | C::Create { .. }
        | C::Delete { .. }
        | C::Rename { .. }
        | C::Subscribe { .. }
        | C::Unsubscribe { .. }
        | C::List { .. }
        | C::Lsub { .. }
        | C::Namespace
        | C::Status { .. }
        | C::Append { .. }
        | C::Idle
        | C::GetQuota { .. }
        | C::GetQuotaRoot { .. }
        | C::SetQuota { .. }
        | C::GetMetadata { .. }
        | C::SetMetadata { .. }
        | C::Compress { .. } => AUTH,
        C::Check
        | C::Close
        | C::Unselect
        | C::Expunge
        | C::ExpungeUid { .. }
        | C::Search { .. }
        | C::Sort { .. }
        | C::Thread { .. }
        | C::Fetch { .. }
        | C::Store { .. }
        | C::Copy { .. }
        | C::Move { .. } => SELECTED,
    }) as _
}

fn state_bit(phase: &Phase) -> u8 {
    match phase {
        Phase::NotAuthenticated => 1,
        Phase::Authenticated => 2,
        Phase::Selected(_) => 4,
    }
}

/// Runs a session to its end.
pub(crate) async fn run(server: &ImapServer, conn: Connection, shutdown: CancellationToken) {
    let s = &server.settings;
    let tls = conn.stream.is_tls();
    let mut io = Io::new(Some(conn.stream), s.max_message_size, s.max_line_length);
    let mut state = State {
        peer: conn.peer,
        tls,
        phase: Phase::NotAuthenticated,
        account: None,
        auth_failures: 0,
        errors: 0,
        utf8: false,
        rev2: false,
        condstore: false,
        qresync: false,
        enabled: Vec::new(),
        events: None,
        notify: None,
    };
    let caps = capabilities(server, &state, conn.tls.is_some());
    io.line(&format!(
        "* OK [CAPABILITY {caps}] {} IMAP Mailroom ready",
        s.hostname
    ));
    let end = command_loop(
        server,
        &mut io,
        &mut state,
        conn.tls,
        conn.handshake_timeout,
        &shutdown,
    )
    .await;
    tracing::debug!(?end, "IMAP session ended");
}

/// The CAPABILITY list for the session's current state.
pub(crate) fn capabilities(server: &ImapServer, state: &State, starttls: bool) -> String {
    let mut caps: Vec<&str> = vec![
        "IMAP4rev1",
        "IMAP4rev2",
        "SASL-IR",
        "LITERAL+",
        "ID",
        "ENABLE",
    ];
    match state.phase {
        Phase::NotAuthenticated => {
            if !state.tls && starttls {
                caps.push("STARTTLS");
            }
            if server.auth_permitted(state) {
                caps.push("AUTH=PLAIN");
                caps.push("AUTH=SCRAM-SHA-256");
            } else {
                caps.push("LOGINDISABLED");
            }
        }
        _ => caps.extend([
            "IDLE",
            "NAMESPACE",
            "UIDPLUS",
            "MOVE",
            "UNSELECT",
            "CHILDREN",
            "SPECIAL-USE",
            "LIST-EXTENDED",
            "LIST-STATUS",
            "ESEARCH",
            "CONDSTORE",
            "QRESYNC",
            "QUOTA",
            "QUOTA=RES-STORAGE",
            "UTF8=ACCEPT",
            "BINARY",
            "STATUS=SIZE",
            "MULTIAPPEND",
            "CREATE-SPECIAL-USE",
            "UNAUTHENTICATE",
            "OBJECTID",
            "SAVEDATE",
            "PREVIEW",
            "COMPRESS=DEFLATE",
            "METADATA",
            "METADATA-SERVER",
            "SORT",
            "SORT=DISPLAY",
            "ESORT",
            "THREAD=ORDEREDSUBJECT",
            "THREAD=REFERENCES",
            "NOTIFY",
            "ACL",
            "RIGHTS=texk",
            "LIST-MYRIGHTS",
        ]),
    }
    caps.join(" ")
}

async fn command_loop(
    server: &ImapServer,
    io: &mut Io,
    state: &mut State,
    acceptor: Option<TlsAcceptor>,
    handshake_timeout: Duration,
    shutdown: &CancellationToken,
) -> End {
    let s = &server.settings;
    loop {
        if state.errors >= MAX_ERRORS {
            return io.close_with("* BYE too many errors, closing").await;
        }
        let idle_for = match state.phase {
            Phase::NotAuthenticated => s.idle_timeout,
            _ => s.authenticated_idle_timeout,
        };
        let next = if state.notify.is_some() {
            next_notifying(server, io, state, idle_for, shutdown).await
        } else {
            io.next(idle_for, shutdown).await
        };
        let bytes = match next {
            Ok(Input::Message(bytes)) => bytes,
            Ok(Input::Refused { tag, text }) => {
                state.errors += 1;
                io.line(&format!("{} {text}", tag.as_deref().unwrap_or("*")));
                continue;
            }
            Err(end) => return end,
        };
        let (rewritten, lifted) = preparse::lift(&bytes);
        let input = rewritten.as_deref().unwrap_or(&bytes);
        if preparse::bare_command(input, "UNAUTHENTICATE")
            && let Some(tag) = imap_tag(input)
        {
            if matches!(state.phase, Phase::NotAuthenticated) {
                state.errors += 1;
                io.line(&format!("{tag} BAD log in first"));
            } else {
                state.unauthenticate();
                io.line(&format!("{tag} OK back to the not authenticated state"));
            }
            continue;
        }
        if let Some((tag, result)) = Box::pin(outside_codec(server, io, state, &bytes)).await {
            answer(server, io, state, &tag, result, true).await;
            continue;
        }
        let command = match CommandCodec::default().decode(input) {
            Ok((b"", command)) => command,
            _ => {
                state.errors += 1;
                let tag = imap_tag(input).unwrap_or_else(|| "*".to_string());
                io.line(&format!("{tag} BAD syntax error in command"));
                continue;
            }
        };
        let tag = command.tag.as_ref().to_string();
        let states = allowed_in(&command.body);
        if !states.contains(&state_bit(&state.phase)) {
            state.errors += 1;
            let why = match state.phase {
                Phase::NotAuthenticated => "log in first",
                Phase::Authenticated if states == [4] => "no mailbox selected",
                _ => "not allowed in this state",
            };
            io.line(&format!("{tag} BAD {why}"));
            continue;
        }
        match command.body {
            CommandBody::StartTLS => {
                let Some(acceptor) = acceptor.as_ref().filter(|_| !state.tls) else {
                    state.errors += 1;
                    io.line(&format!("{tag} BAD STARTTLS is not available now"));
                    continue;
                };
                io.line(&format!("{tag} OK begin TLS negotiation now"));
                if let Err(e) = io.flush(s.idle_timeout).await {
                    return e;
                }
                // CVE-2011-0411: nothing sent before the handshake is read after it.
                io.frag = Fragmentizer::new(io.frag_limit);
                let Some(plain) = io.stream.take() else {
                    return End::Gone;
                };
                match Box::pin(plain.start_tls(acceptor, handshake_timeout)).await {
                    Ok(tls) => {
                        io.stream = Some(tls);
                        state.tls = true;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "STARTTLS handshake failed");
                        return End::Gone;
                    }
                }
                continue;
            }
            CommandBody::Compress { .. } => {
                if io.deflate.is_some() {
                    io.line(&format!("{tag} NO [COMPRESSIONACTIVE] DEFLATE is active"));
                    continue;
                }
                io.line(&format!("{tag} OK DEFLATE active"));
                if let Err(e) = io.flush(s.idle_timeout).await {
                    return e;
                }
                // RFC 4978 §3: what follows the command is compressed; bytes
                // pipelined behind it were framed as clear text, so drop them.
                io.start_deflate();
                continue;
            }
            CommandBody::Logout => {
                io.line("* BYE Mailroom IMAP logging out");
                io.line(&format!("{tag} OK LOGOUT completed"));
                let _ = io.flush(s.idle_timeout).await;
                if let Some(stream) = io.stream.as_mut() {
                    let _ = stream.shutdown().await;
                }
                return End::Closed;
            }
            CommandBody::Idle => {
                if let Err(end) = idle(server, io, state, &tag, shutdown).await {
                    return end;
                }
                continue;
            }
            CommandBody::Authenticate {
                mechanism,
                initial_response,
            } => {
                let ir = initial_response.map(|r| r.declassify().to_vec());
                if let Some(end) = Box::pin(crate::auth::authenticate(
                    server,
                    io,
                    state,
                    &tag,
                    mechanism.as_ref(),
                    ir,
                    shutdown,
                ))
                .await
                {
                    return end;
                }
                if state.account.is_some() {
                    Box::pin(enter_authenticated(server, state)).await;
                }
                continue;
            }
            CommandBody::Login { username, password } => {
                let user = String::from_utf8_lossy(username.as_ref()).into_owned();
                let pass = String::from_utf8_lossy(password.declassify().as_ref()).into_owned();
                if let Some(end) =
                    Box::pin(crate::auth::login(server, io, state, &tag, &user, &pass)).await
                {
                    return end;
                }
                if state.account.is_some() {
                    Box::pin(enter_authenticated(server, state)).await;
                }
                continue;
            }
            body => {
                let uid_command = matches!(
                    &body,
                    CommandBody::Fetch { uid: true, .. }
                        | CommandBody::Store { uid: true, .. }
                        | CommandBody::Search { uid: true, .. }
                        | CommandBody::Sort { uid: true, .. }
                        | CommandBody::Thread { uid: true, .. }
                        | CommandBody::Copy { .. }
                        | CommandBody::Move { .. }
                        | CommandBody::ExpungeUid { .. }
                );
                let expunge_allowed = !matches!(
                    &body,
                    CommandBody::Fetch { uid: false, .. }
                        | CommandBody::Store { uid: false, .. }
                        | CommandBody::Search { uid: false, .. }
                        | CommandBody::Sort { uid: false, .. }
                        | CommandBody::Thread { uid: false, .. }
                ) || uid_command;
                if let Phase::Selected(sel) = &mut state.phase {
                    // Only the command about to run may vouch for the store.
                    sel.up_to_date = false;
                }
                let command = body.name();
                let own_change = own_change(state, &body);
                let started = std::time::Instant::now();
                let result = Box::pin(execute(server, io, state, &tag, body, &lifted)).await;
                metrics::histogram!("mailroom_imap_command_duration_seconds", "command" => command)
                    .record(started.elapsed().as_secs_f64());
                if state.notify.is_some() {
                    crate::notify::absorb(server, io, state, own_change).await;
                }
                answer(server, io, state, &tag, result, expunge_allowed).await;
            }
        }
    }
}

/// Ends a command: the selected mailbox's changes, then the tagged reply.
async fn answer(
    server: &ImapServer,
    io: &mut Io,
    state: &mut State,
    tag: &str,
    result: Outcome,
    expunge_allowed: bool,
) {
    match result {
        Ok(done) => {
            sync_selected(server, io, state, expunge_allowed).await;
            io.line(&format!("{tag} {done}"));
        }
        Err(Failure::No(text)) => {
            sync_selected(server, io, state, expunge_allowed).await;
            io.line(&format!("{tag} NO {text}"));
        }
        Err(Failure::Bad(text)) => {
            state.errors += 1;
            io.line(&format!("{tag} BAD {text}"));
        }
        Err(Failure::Store(e)) => {
            tracing::error!(error = %e, "IMAP command failed in the store");
            io.line(&format!(
                "{tag} NO [UNAVAILABLE] temporary failure, try again later"
            ));
        }
    }
}

/// Commands the codec does not know, read here: NOTIFY (RFC 5465) and the
/// ACL commands (RFC 4314). `None` when `message` is none of them.
async fn outside_codec(
    server: &ImapServer,
    io: &mut Io,
    state: &mut State,
    message: &[u8],
) -> Option<(String, Outcome)> {
    let (at, verb) = [
        "NOTIFY",
        "MYRIGHTS",
        "GETACL",
        "LISTRIGHTS",
        "SETACL",
        "DELETEACL",
    ]
    .into_iter()
    .find_map(|verb| preparse::after_words(message, &[verb]).map(|at| (at, verb)))?;
    let tag = imap_tag(message)?;
    if matches!(state.phase, Phase::NotAuthenticated) {
        return Some((tag, Err(bad("log in first"))));
    }
    let args = &message[at..];
    let result = match verb {
        "NOTIFY" => crate::notify::command(server, io, state, args).await,
        _ => crate::acl::command(server, io, state, verb, args).await,
    };
    Some((tag, result))
}

/// What a command may change that a NOTIFY session must not be told of
/// as another's change (see [`crate::notify::absorb`]).
fn own_change(state: &State, body: &CommandBody<'_>) -> crate::notify::Absorb {
    use crate::notify::Absorb;
    if state.notify.is_none() {
        return Absorb::Nothing;
    }
    match body {
        CommandBody::Create { .. }
        | CommandBody::Delete { .. }
        | CommandBody::Rename { .. }
        | CommandBody::Subscribe { .. }
        | CommandBody::Unsubscribe { .. } => Absorb::Structure,
        CommandBody::Append { mailbox, .. }
        | CommandBody::Copy { mailbox, .. }
        | CommandBody::Move { mailbox, .. } => mailbox_name(state, mailbox)
            .map(Absorb::Mailbox)
            .unwrap_or(Absorb::Nothing),
        CommandBody::SetMetadata { mailbox, .. } => match mailbox {
            WireMailbox::Other(o) if o.as_ref().is_empty() => Absorb::Metadata(None),
            _ => mailbox_name(state, mailbox)
                .map(|n| Absorb::Metadata(Some(n)))
                .unwrap_or(Absorb::Nothing),
        },
        _ => Absorb::Nothing,
    }
}

/// [`Io::next`] for a session with NOTIFY: between commands the store's
/// events are taken too, and their responses sent at once (RFC 5465 §3.1).
/// The autologout timer runs from the last input, not the last event.
async fn next_notifying(
    server: &ImapServer,
    io: &mut Io,
    state: &mut State,
    idle: Duration,
    shutdown: &CancellationToken,
) -> Result<Input, End> {
    let deadline = tokio::time::Instant::now() + idle;
    loop {
        if let Some(input) = io.next_buffered() {
            return Ok(input);
        }
        io.flush(idle).await?;
        if state.notify.is_none() {
            // It overflowed: back to the plain wait.
            return io
                .next(deadline - tokio::time::Instant::now(), shutdown)
                .await;
        }
        if let Some(ev) =
            input_or_event(io, &mut state.events, deadline, READ_CHUNK, shutdown).await?
        {
            crate::notify::on_event(server, io, state, ev, false).await;
        }
    }
}

/// Waits until `deadline` for input (read into the framer: `None`) or a
/// store event; shutdown and the deadline end the session with a BYE.
async fn input_or_event(
    io: &mut Io,
    events: &mut Option<broadcast::Receiver<MailboxEvent>>,
    deadline: tokio::time::Instant,
    chunk: usize,
    shutdown: &CancellationToken,
) -> Result<Option<Result<MailboxEvent, broadcast::error::RecvError>>, End> {
    let event = async {
        match events.as_mut() {
            Some(rx) => rx.recv().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        biased;
        _ = shutdown.cancelled() => {
            Err(io.close_with("* BYE [UNAVAILABLE] server shutting down, try again later").await)
        }
        _ = tokio::time::sleep_until(deadline) => {
            Err(io.close_with("* BYE autologout: idle for too long").await)
        }
        read = io.read_more(chunk) => match read {
            Ok(true) => Ok(None),
            _ => Err(End::Gone),
        },
        ev = event => Ok(Some(ev)),
    }
}

/// The tag of a command the codec could not parse, when it looks like one.
pub(crate) fn imap_tag(input: &[u8]) -> Option<String> {
    let end = input
        .iter()
        .position(|&b| b == b' ' || b == b'\r' || b == b'\n')?;
    let tag = std::str::from_utf8(&input[..end]).ok()?;
    (!tag.is_empty()
        && tag
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"(){%*\"\\+".contains(&b)))
    .then(|| tag.to_string())
}

/// After login: subscribe to the store's change events (for IDLE).
async fn enter_authenticated(server: &ImapServer, state: &mut State) {
    state.phase = Phase::Authenticated;
    match server.store.subscribe().await {
        Ok(rx) => state.events = Some(rx),
        Err(e) => tracing::warn!(error = %e, "IMAP session without change events"),
    }
}

/// Announces what changed in the selected mailbox (see [`crate::selected`]),
/// and with NOTIFY the attributes asked for new messages.
pub(crate) async fn sync_selected(
    server: &ImapServer,
    io: &mut Io,
    state: &mut State,
    allow_expunge: bool,
) {
    let mode = state.sync_mode(allow_expunge);
    let Phase::Selected(sel) = &mut state.phase else {
        return;
    };
    let last_uid = sel.messages.last().map_or(0, |m| m.uid);
    if let Err(e) = Box::pin(sel.sync(&server.store, mode, &mut io.out)).await {
        tracing::warn!(error = %e, "IMAP mailbox sync failed");
    }
    if state.notify.is_some() {
        Box::pin(crate::notify::fetch_new(server, io, state, last_uid)).await;
    }
}

/// How a command failed.
pub(crate) enum Failure {
    /// `NO` with this text (response code included).
    No(String),
    /// `BAD` with this text.
    Bad(String),
    /// The store failed: `NO [UNAVAILABLE]`.
    Store(StoreError),
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure::Store(e)
    }
}

impl From<BadName> for Failure {
    fn from(e: BadName) -> Self {
        Failure::No(format!("[CANNOT] {}", e.0))
    }
}

pub(crate) type Outcome = Result<String, Failure>;

fn no(text: impl Into<String>) -> Failure {
    Failure::No(text.into())
}

fn bad(text: impl Into<String>) -> Failure {
    Failure::Bad(text.into())
}

/// The store name of a mailbox argument.
pub(crate) fn mailbox_name(state: &State, mailbox: &WireMailbox<'_>) -> Result<String, Failure> {
    match mailbox {
        WireMailbox::Inbox => Ok("INBOX".to_string()),
        WireMailbox::Other(other) => Ok(names::from_wire(other.as_ref(), state.utf8)?),
    }
}

/// Looks up an existing mailbox of the logged-in account.
pub(crate) async fn existing_mailbox(
    server: &ImapServer,
    state: &State,
    name: &str,
) -> Result<Mailbox, Failure> {
    server
        .store
        .mailbox_by_name(state.account_id(), name)
        .await?
        .ok_or_else(|| no("[NONEXISTENT] no such mailbox"))
}

/// Runs one command of the authenticated or selected state.
async fn execute(
    server: &ImapServer,
    io: &mut Io,
    state: &mut State,
    tag: &str,
    body: CommandBody<'_>,
    lifted: &Lifted,
) -> Outcome {
    let store = &server.store;
    match body {
        CommandBody::Capability => {
            let caps = capabilities(server, state, !state.tls);
            io.line(&format!("* CAPABILITY {caps}"));
            Ok("OK CAPABILITY completed".into())
        }
        CommandBody::Noop => Ok("OK NOOP completed".into()),
        CommandBody::Check => Ok("OK CHECK completed".into()),
        CommandBody::Id { .. } => {
            io.line(&format!(
                "* ID (\"name\" \"Mailroom\" \"version\" \"{}\")",
                env!("CARGO_PKG_VERSION")
            ));
            Ok("OK ID completed".into())
        }
        CommandBody::Enable { capabilities } => {
            // RFC 5161: ENABLED lists what this command enabled, once each.
            let mut enabled = Vec::new();
            for c in capabilities.as_ref() {
                let name = c.to_string().to_ascii_uppercase();
                let known = match name.as_str() {
                    "CONDSTORE" => {
                        state.enable_condstore(io);
                        true
                    }
                    "QRESYNC" => {
                        state.enable_condstore(io);
                        state.qresync = true;
                        true
                    }
                    "UTF8=ACCEPT" => {
                        state.utf8 = true;
                        true
                    }
                    "IMAP4REV2" => {
                        state.utf8 = true;
                        state.rev2 = true;
                        true
                    }
                    _ => false,
                };
                if known && !state.enabled.contains(&name) {
                    state.enabled.push(name.clone());
                    enabled.push(name);
                }
            }
            io.line(format!("* ENABLED {}", enabled.join(" ")).trim_end());
            Ok("OK ENABLE completed".into())
        }
        CommandBody::Namespace => {
            io.line("* NAMESPACE ((\"\" \"/\")) NIL NIL");
            Ok("OK NAMESPACE completed".into())
        }
        CommandBody::Select {
            mailbox,
            parameters,
        } => select(server, io, state, &mailbox, parameters, false).await,
        CommandBody::Examine {
            mailbox,
            parameters,
        } => select(server, io, state, &mailbox, parameters, true).await,
        CommandBody::Unselect => {
            state.phase = Phase::Authenticated;
            Ok("OK UNSELECT completed".into())
        }
        CommandBody::Close => {
            if let Phase::Selected(sel) = &state.phase
                && !sel.read_only
            {
                // RFC 9051 §6.4.1: expunge silently.
                store.expunge_deleted(sel.mailbox.id, None).await?;
            }
            state.phase = Phase::Authenticated;
            Ok("OK CLOSE completed".into())
        }
        CommandBody::Create { mailbox } => {
            let raw = match &mailbox {
                WireMailbox::Inbox => return Err(no("[ALREADYEXISTS] INBOX always exists")),
                WireMailbox::Other(o) => o.as_ref().to_vec(),
            };
            // A trailing delimiter only says the name will have children.
            let trimmed = raw.strip_suffix(b"/").unwrap_or(&raw);
            let name = names::from_wire(trimmed, state.utf8)?;
            if name == "INBOX" {
                return Err(no("[ALREADYEXISTS] INBOX always exists"));
            }
            let account = state.account_id();
            let uses = match &lifted.create_use {
                Some(wanted) => Some(crate::specialuse::uses_for_create(wanted)?),
                None => None,
            };
            create_parents(server, account, &name, None).await?;
            match store.create_mailbox(account, &name, uses.as_deref()).await {
                Ok(mb) => Ok(format!(
                    "OK [MAILBOXID ({})] CREATE completed",
                    mailroom_store::mailbox_object_id(&mb)
                )),
                Err(StoreError::AlreadyExists(_)) => Err(no("[ALREADYEXISTS] mailbox exists")),
                Err(e) => Err(e.into()),
            }
        }
        CommandBody::Delete { mailbox } => {
            let name = mailbox_name(state, &mailbox)?;
            if name == "INBOX" {
                return Err(no("[CANNOT] INBOX cannot be deleted"));
            }
            if let Phase::Selected(sel) = &state.phase
                && sel.mailbox.name == name
            {
                return Err(no("[INUSE] the mailbox is selected: close it first"));
            }
            match store.delete_mailbox(state.account_id(), &name).await {
                Ok(()) => Ok("OK DELETE completed".into()),
                Err(StoreError::NotFound(_)) => Err(no("[NONEXISTENT] no such mailbox")),
                Err(StoreError::FailedPrecondition(m)) => Err(no(format!("[CANNOT] {m}"))),
                Err(e) => Err(e.into()),
            }
        }
        CommandBody::Rename { from, to } => {
            let from = mailbox_name(state, &from)?;
            let to = mailbox_name(state, &to)?;
            if to == "INBOX" {
                return Err(no("[ALREADYEXISTS] INBOX always exists"));
            }
            let account = state.account_id();
            create_parents(server, account, &to, Some(&from)).await?;
            match store.rename_mailbox(account, &from, &to).await {
                Ok(()) => {
                    if let Phase::Selected(sel) = &mut state.phase
                        && (sel.mailbox.name == from
                            || sel.mailbox.name.starts_with(&format!("{from}/")))
                        && from != "INBOX"
                    {
                        sel.mailbox.name = format!("{to}{}", &sel.mailbox.name[from.len()..]);
                    }
                    Ok("OK RENAME completed".into())
                }
                Err(StoreError::NotFound(_)) => Err(no("[NONEXISTENT] no such mailbox")),
                Err(StoreError::AlreadyExists(_)) => {
                    Err(no("[ALREADYEXISTS] the new name exists already"))
                }
                Err(StoreError::FailedPrecondition(m)) => Err(no(format!("[CANNOT] {m}"))),
                Err(e) => Err(e.into()),
            }
        }
        CommandBody::Subscribe { mailbox } => subscribe(server, state, &mailbox, true).await,
        CommandBody::Unsubscribe { mailbox } => subscribe(server, state, &mailbox, false).await,
        CommandBody::List {
            reference,
            mailbox_wildcard,
        } => {
            list(
                server,
                io,
                state,
                &reference,
                &mailbox_wildcard,
                lifted,
                false,
            )
            .await
        }
        CommandBody::Lsub {
            reference,
            mailbox_wildcard,
        } => {
            list(
                server,
                io,
                state,
                &reference,
                &mailbox_wildcard,
                lifted,
                true,
            )
            .await
        }
        CommandBody::Status {
            mailbox,
            item_names,
        } => {
            let name = mailbox_name(state, &mailbox)?;
            let mb = existing_mailbox(server, state, &name).await?;
            let mut items = status_items(server, &mb, item_names.as_ref()).await?;
            if lifted.status_mailboxid {
                let id = format!("MAILBOXID ({})", mailroom_store::mailbox_object_id(&mb));
                items = if lifted.status_mailboxid_only {
                    id
                } else {
                    format!("{items} {id}")
                };
            }
            io.line(&format!(
                "* STATUS {} ({items})",
                names::quote(&names::to_wire(&mb.name, state.utf8), state.utf8)
            ));
            Ok("OK STATUS completed".into())
        }
        body @ CommandBody::Append { .. } if !lifted.more_appends.is_empty() => {
            crate::append::multi(server, state, body, &lifted.more_appends).await
        }
        CommandBody::Append {
            mailbox,
            flags,
            date,
            message,
        } => {
            let name = mailbox_name(state, &mailbox)?;
            let data: &[u8] = match &message {
                imap_types::extensions::binary::LiteralOrLiteral8::Literal(l) => l.as_ref(),
                imap_types::extensions::binary::LiteralOrLiteral8::Literal8(l) => l.data.as_ref(),
            };
            if data.is_empty() {
                return Err(no("empty message"));
            }
            let (bits, keywords) = flags_to_store(&flags);
            let internal_date = date
                .map(|d| d.as_ref().timestamp())
                .unwrap_or_else(mailroom_store::now);
            let cache = mailroom_mime::Summary::parse(data).to_json();
            let account = state.account_id();
            match store
                .append_message_to(
                    account,
                    &name,
                    data,
                    bits,
                    &keywords,
                    internal_date,
                    Some(&cache),
                )
                .await
            {
                Ok((mailbox_id, a)) => {
                    // Appended to the selected mailbox with nobody else's
                    // change in between: announce it from what we know.
                    if let Phase::Selected(sel) = &mut state.phase
                        && sel.mailbox.id == mailbox_id
                        && keywords.is_empty()
                        && a.modseq == sel.modseq + 1
                    {
                        sel.messages.push(mailroom_store::MessageMeta {
                            uid: a.uid,
                            modseq: a.modseq,
                            flags: bits,
                            keywords: Vec::new(),
                            internal_date,
                            size: data.len() as u64,
                        });
                        io.line(&format!("* {} EXISTS", sel.messages.len()));
                        sel.mailbox.uidnext = sel.mailbox.uidnext.max(a.uid.saturating_add(1));
                        sel.own_write(a.modseq, true);
                        sel.announce_recent(&server.store, &mut io.out).await?;
                    }
                    Ok(format!(
                        "OK [APPENDUID {} {}] APPEND completed",
                        a.uidvalidity, a.uid
                    ))
                }
                Err(StoreError::FailedPrecondition(m)) if m.starts_with("OVERQUOTA") => {
                    Err(no("[OVERQUOTA] the mailbox quota is exceeded"))
                }
                Err(StoreError::NotFound(_)) => Err(no("[TRYCREATE] no such mailbox")),
                Err(e) => Err(e.into()),
            }
        }
        CommandBody::Expunge => {
            let Phase::Selected(sel) = &mut state.phase else {
                unreachable!("state checked")
            };
            if sel.read_only {
                return Err(no("[READ-ONLY] the mailbox is read-only"));
            }
            let done = store.expunge_messages(sel.mailbox.id, None).await?;
            sel.announce_expunged(&done.uids, state.qresync, &mut io.out);
            sel.own_write(done.highestmodseq, !done.uids.is_empty());
            Ok("OK EXPUNGE completed".into())
        }
        CommandBody::ExpungeUid { sequence_set } => {
            let Phase::Selected(sel) = &mut state.phase else {
                unreachable!("state checked")
            };
            if sel.read_only {
                return Err(no("[READ-ONLY] the mailbox is read-only"));
            }
            let idx = sel.resolve(&sequence_set, true).map_err(bad)?;
            let uids: Vec<u32> = idx.iter().map(|&i| sel.messages[i].uid).collect();
            let done = store.expunge_messages(sel.mailbox.id, Some(&uids)).await?;
            sel.announce_expunged(&done.uids, state.qresync, &mut io.out);
            sel.own_write(done.highestmodseq, !done.uids.is_empty());
            Ok("OK UID EXPUNGE completed".into())
        }
        CommandBody::Copy {
            sequence_set,
            mailbox,
            uid,
        } => copy_or_move(server, io, state, &sequence_set, &mailbox, uid, false).await,
        CommandBody::Move {
            sequence_set,
            mailbox,
            uid,
        } => copy_or_move(server, io, state, &sequence_set, &mailbox, uid, true).await,
        CommandBody::Fetch {
            sequence_set,
            macro_or_item_names,
            uid,
            modifiers,
        } => {
            crate::fetch::fetch(
                server,
                io,
                state,
                &sequence_set,
                macro_or_item_names,
                uid,
                &modifiers,
                lifted,
            )
            .await
        }
        CommandBody::Store {
            sequence_set,
            kind,
            response,
            flags,
            uid,
            modifiers,
        } => {
            crate::fetch::store(
                server,
                io,
                state,
                &sequence_set,
                kind,
                response,
                &flags,
                uid,
                &modifiers,
            )
            .await
        }
        CommandBody::Search {
            charset,
            criteria,
            uid,
        } => crate::search::search(server, io, state, tag, charset, criteria, uid, lifted).await,
        CommandBody::GetQuotaRoot { mailbox } => {
            let name = mailbox_name(state, &mailbox)?;
            let mb = existing_mailbox(server, state, &name).await?;
            let (used, limit) = store.quota_usage(state.account_id()).await?;
            let wire = names::quote(&names::to_wire(&mb.name, state.utf8), state.utf8);
            if limit == 0 {
                io.line(&format!("* QUOTAROOT {wire}"));
            } else {
                io.line(&format!("* QUOTAROOT {wire} \"\""));
                io.line(&format!(
                    "* QUOTA \"\" (STORAGE {} {})",
                    used.div_ceil(1024),
                    limit / 1024
                ));
            }
            Ok("OK GETQUOTAROOT completed".into())
        }
        CommandBody::GetQuota { root } => {
            let (used, limit) = store.quota_usage(state.account_id()).await?;
            if !root.as_ref().is_empty() || limit == 0 {
                return Err(no("[NONEXISTENT] no such quota root"));
            }
            io.line(&format!(
                "* QUOTA \"\" (STORAGE {} {})",
                used.div_ceil(1024),
                limit / 1024
            ));
            Ok("OK GETQUOTA completed".into())
        }
        CommandBody::SetQuota { .. } => Err(no("[NOPERM] quotas are set by the administrator")),
        CommandBody::GetMetadata {
            options,
            mailbox,
            entries,
        } => crate::metadata::get(server, io, state, &options, &mailbox, entries.as_ref()).await,
        CommandBody::SetMetadata {
            mailbox,
            entry_values,
        } => crate::metadata::set(server, state, &mailbox, entry_values.as_ref()).await,
        CommandBody::Sort {
            sort_criteria,
            charset,
            search_criteria,
            uid,
        } => {
            crate::sort::sort(
                server,
                io,
                state,
                (tag, lifted),
                sort_criteria,
                charset,
                search_criteria,
                uid,
            )
            .await
        }
        CommandBody::Thread {
            algorithm,
            charset,
            search_criteria,
            uid,
        } => {
            crate::thread::thread(server, io, state, algorithm, charset, search_criteria, uid).await
        }
        // Handled before `execute` is called.
        CommandBody::StartTLS
        | CommandBody::Logout
        | CommandBody::Idle
        | CommandBody::Compress { .. }
        | CommandBody::Authenticate { .. }
        | CommandBody::Login { .. } => Err(bad("unexpected command")),
    }
}

/// Creates the missing parents of `name` (RFC 9051 §6.3.4: the server
/// SHOULD create intermediate levels), except `skip` (RENAME's source,
/// which is about to take its new place).
async fn create_parents(
    server: &ImapServer,
    account: i64,
    name: &str,
    skip: Option<&str>,
) -> Result<(), Failure> {
    for parent in names::parents(name) {
        if Some(parent) != skip
            && server
                .store
                .mailbox_by_name(account, parent)
                .await?
                .is_none()
        {
            match server.store.create_mailbox(account, parent, None).await {
                Ok(_) | Err(StoreError::AlreadyExists(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

/// SUBSCRIBE / UNSUBSCRIBE.
async fn subscribe(
    server: &ImapServer,
    state: &State,
    mailbox: &WireMailbox<'_>,
    on: bool,
) -> Outcome {
    let name = mailbox_name(state, mailbox)?;
    match server
        .store
        .set_subscribed(state.account_id(), &name, on)
        .await
    {
        Ok(()) => Ok(format!(
            "OK {} completed",
            if on { "SUBSCRIBE" } else { "UNSUBSCRIBE" }
        )),
        Err(StoreError::NotFound(_)) => Err(no("[NONEXISTENT] no such mailbox")),
        Err(e) => Err(e.into()),
    }
}

/// Converts command flags to the store's bits and keywords (`\Recent` and
/// unknown `\Extension` flags are ignored).
pub(crate) fn flags_to_store(flags: &[Flag<'_>]) -> (i64, Vec<String>) {
    let mut bits = 0;
    let mut keywords: Vec<String> = Vec::new();
    for f in flags {
        match f {
            Flag::Seen => bits |= flag_bits::SEEN,
            Flag::Answered => bits |= flag_bits::ANSWERED,
            Flag::Flagged => bits |= flag_bits::FLAGGED,
            Flag::Deleted => bits |= flag_bits::DELETED,
            Flag::Draft => bits |= flag_bits::DRAFT,
            Flag::Keyword(k) => {
                let k = k.as_ref().to_string();
                if !keywords.iter().any(|x| x.eq_ignore_ascii_case(&k)) {
                    keywords.push(k);
                }
            }
            Flag::Extension(_) => {}
        }
    }
    (bits, keywords)
}

/// SELECT and EXAMINE (RFC 9051 §6.3.2, RFC 7162 §3.1.2 and §3.2.5).
async fn select(
    server: &ImapServer,
    io: &mut Io,
    state: &mut State,
    mailbox: &WireMailbox<'_>,
    parameters: Vec<SelectParameter>,
    examine: bool,
) -> Outcome {
    // Required for IMAP4rev2 (RFC 9051 §6.3.1) and QRESYNC (RFC 7162
    // §3.2.11); sent to IMAP4rev1 clients as well, as Dovecot does: they
    // ignore response codes they do not know (RFC 3501 §7.1).
    if matches!(state.phase, Phase::Selected(_)) {
        io.line("* OK [CLOSED] previous mailbox closed");
    }
    // A failed SELECT leaves no mailbox selected (RFC 9051 §6.3.2).
    let previous = match std::mem::replace(&mut state.phase, Phase::Authenticated) {
        Phase::Selected(sel) => Some(sel),
        _ => None,
    };
    let name = mailbox_name(state, mailbox)?;
    let mut qresync = None;
    for p in &parameters {
        match p {
            SelectParameter::CondStore => state.condstore = true,
            SelectParameter::QResync {
                uid_validity,
                mod_sequence_value,
                known_uids,
                ..
            } => {
                if !state.qresync {
                    return Err(bad("QRESYNC must be enabled first"));
                }
                qresync = Some((
                    uid_validity.get(),
                    mod_sequence_value.get(),
                    known_uids.clone(),
                ));
            }
        }
    }
    // What this session already holds as \Recent stays so when it selects
    // the same mailbox again.
    let carried = previous
        .as_ref()
        .filter(|p| p.mailbox.name == name)
        .map(|p| (p.mailbox.id, p.mailbox.uidvalidity, p.recent.clone()));
    let sel = match previous.filter(|p| p.mailbox.name == name) {
        // SELECT of the mailbox already selected (clients do it to refresh):
        // when it is the same mailbox and nothing changed since the session
        // last synchronised, the session's own view is the snapshot. The
        // process may know that without asking (a rename would have
        // dropped what it knew of the mailbox).
        Some(previous)
            if server
                .store
                .is_current(previous.mailbox.id, previous.modseq) =>
        {
            let mb = previous.mailbox.clone();
            previous.reselect(mb, examine)
        }
        Some(previous) => match existing_mailbox(server, state, &name).await? {
            mb if mb.id == previous.mailbox.id
                && mb.uidvalidity == previous.mailbox.uidvalidity
                && mb.highestmodseq == previous.modseq =>
            {
                previous.reselect(mb, examine)
            }
            _ => open_selected(server, state, &name, examine).await?,
        },
        None => open_selected(server, state, &name, examine).await?,
    };
    let mut sel = sel;
    // IMAP4rev1 sessions that may change the mailbox claim \Recent
    // (RFC 3501 §2.3.2; rev2 has none, and EXAMINE leaves it alone).
    sel.recent = match carried {
        Some((id, validity, recent))
            if id == sel.mailbox.id && validity == sel.mailbox.uidvalidity =>
        {
            recent
        }
        _ => Vec::new(),
    };
    sel.claims_recent = !state.rev2 && !sel.read_only;
    sel.claim_recent(&server.store).await?;
    if !state.rev2 && sel.read_only && sel.recent.is_empty() {
        // EXAMINE shows what nobody claimed yet as \Recent without claiming
        // it (RFC 3501 §6.3.2: EXAMINE must not make messages lose it).
        let mark = server.store.recent_mark(sel.mailbox.id).await?;
        if mark < sel.mailbox.uidnext {
            sel.recent.push(mark..sel.mailbox.uidnext);
        }
    }
    crate::selected::write_flag_lines(&mut io.out, &sel.keywords, sel.read_only);
    io.line(&format!("* {} EXISTS", sel.messages.len()));
    if !state.rev2 {
        io.line(&format!("* {} RECENT", sel.recent_count()));
        if let Some(seq) = sel.first_unseen() {
            io.line(&format!("* OK [UNSEEN {seq}] first unseen message"));
        }
    }
    io.line(&format!(
        "* OK [UIDVALIDITY {}] UIDs valid",
        sel.mailbox.uidvalidity
    ));
    io.line(&format!(
        "* OK [UIDNEXT {}] predicted next UID",
        sel.mailbox.uidnext
    ));
    io.line(&format!(
        "* OK [MAILBOXID ({})] the mailbox's object id",
        mailroom_store::mailbox_object_id(&sel.mailbox)
    ));
    io.line(&format!(
        "* OK [HIGHESTMODSEQ {}] highest",
        sel.modseq.max(1)
    ));
    if state.rev2 {
        let attrs = special_use_attr(&sel.mailbox)
            .map(|a| format!(" {a}"))
            .unwrap_or_default();
        io.line(&format!(
            "* LIST (\\HasNoChildren{attrs}) \"/\" {}",
            names::quote(&names::to_wire(&sel.mailbox.name, true), true)
        ));
    }
    if let Some((validity, since, known)) = qresync
        && validity == sel.mailbox.uidvalidity
    {
        // RFC 7162 §3.2.5.1: what changed since the client's MODSEQ.
        let changes = server.store.changes_since(sel.mailbox.id, since).await?;
        let last = sel.messages.last().map_or(0, |m| m.uid);
        let mut vanished = changes.vanished.clone();
        if let Some(known) = known {
            let known = crate::selected::expand_uids(&known, last.max(sel.mailbox.uidnext));
            vanished.retain(|u| known.contains(u));
        }
        if !vanished.is_empty() {
            io.line(&format!("* VANISHED (EARLIER) {}", uid_set(&vanished)));
        }
        for meta in &changes.changed {
            if let Some(seq) = sel.seq_of(meta.uid) {
                let recent = sel.is_recent(meta.uid);
                crate::selected::write_flags_fetch(&mut io.out, seq, meta, recent, true, true);
            }
        }
    }
    let rw = if examine { "READ-ONLY" } else { "READ-WRITE" };
    let verb = if examine { "EXAMINE" } else { "SELECT" };
    state.phase = Phase::Selected(Box::new(sel));
    Ok(format!("OK [{rw}] {verb} completed"))
}

/// The mailbox `name` and its messages, read in one statement.
async fn open_selected(
    server: &ImapServer,
    state: &State,
    name: &str,
    examine: bool,
) -> Result<Selected, Failure> {
    match server.store.open_mailbox(state.account_id(), name).await? {
        Some(snapshot) => Ok(Selected::from_snapshot(snapshot, examine)),
        None => Err(no("[NONEXISTENT] no such mailbox")),
    }
}

/// The special-use attribute of a mailbox, if any.
fn special_use_attr(mb: &Mailbox) -> Option<&str> {
    mb.special_use.as_deref()
}

/// STATUS items for `mb`, as the text inside the parentheses.
pub(crate) async fn status_items(
    server: &ImapServer,
    mb: &Mailbox,
    items: &[StatusDataItemName],
) -> Result<String, Failure> {
    // One statement for the mailbox's current state and its counts; a
    // mailbox deleted meanwhile answers as it was, empty.
    let (fresh, counts) = server
        .store
        .mailbox_status(mb.id)
        .await?
        .unwrap_or_else(|| (mb.clone(), Default::default()));
    let mut out: Vec<String> = Vec::new();
    for item in items {
        out.push(match item {
            StatusDataItemName::Messages => format!("MESSAGES {}", counts.messages),
            StatusDataItemName::Recent => {
                format!("RECENT {}", server.store.unclaimed_recent(mb.id).await?)
            }
            StatusDataItemName::UidNext => format!("UIDNEXT {}", fresh.uidnext),
            StatusDataItemName::UidValidity => format!("UIDVALIDITY {}", fresh.uidvalidity),
            StatusDataItemName::Unseen => format!("UNSEEN {}", counts.unseen),
            StatusDataItemName::Deleted => format!("DELETED {}", counts.deleted),
            StatusDataItemName::DeletedStorage => {
                format!("DELETED-STORAGE {}", counts.deleted_size)
            }
            StatusDataItemName::Size => format!("SIZE {}", counts.size),
            StatusDataItemName::HighestModSeq => format!("HIGHESTMODSEQ {}", fresh.highestmodseq),
        });
    }
    Ok(out.join(" "))
}

/// Status item names given as words (LIST-STATUS).
fn status_names(words: &[String]) -> Vec<StatusDataItemName> {
    words
        .iter()
        .filter_map(|w| {
            Some(match w.as_str() {
                "MESSAGES" => StatusDataItemName::Messages,
                "RECENT" => StatusDataItemName::Recent,
                "UIDNEXT" => StatusDataItemName::UidNext,
                "UIDVALIDITY" => StatusDataItemName::UidValidity,
                "UNSEEN" => StatusDataItemName::Unseen,
                "DELETED" => StatusDataItemName::Deleted,
                "SIZE" => StatusDataItemName::Size,
                "HIGHESTMODSEQ" => StatusDataItemName::HighestModSeq,
                _ => return None,
            })
        })
        .collect()
}

/// LIST (with LIST-EXTENDED, RFC 5258; LIST-STATUS, RFC 5819;
/// SPECIAL-USE, RFC 6154; CHILDREN) and LSUB.
#[allow(clippy::too_many_arguments)]
async fn list(
    server: &ImapServer,
    io: &mut Io,
    state: &State,
    reference: &WireMailbox<'_>,
    pattern: &ListMailbox<'_>,
    lifted: &Lifted,
    lsub: bool,
) -> Outcome {
    let verb = if lsub { "LSUB" } else { "LIST" };
    // RFC 5258 §3: an unknown selection option is refused, and so is
    // RECURSIVEMATCH without another option for it to modify.
    for option in &lifted.list_selection {
        if !matches!(
            option.as_str(),
            "SUBSCRIBED" | "REMOTE" | "RECURSIVEMATCH" | "SPECIAL-USE"
        ) {
            return Err(bad(format!("unknown LIST selection option {option}")));
        }
    }
    if lifted.list_selection.iter().any(|o| o == "RECURSIVEMATCH")
        && !lifted
            .list_selection
            .iter()
            .any(|o| o == "SUBSCRIBED" || o == "SPECIAL-USE")
    {
        return Err(bad("RECURSIVEMATCH needs another selection option"));
    }
    let reference = match reference {
        WireMailbox::Inbox => "INBOX".to_string(),
        WireMailbox::Other(o) => {
            let raw = o.as_ref();
            if raw.is_empty() {
                String::new()
            } else {
                decode_pattern(raw, state.utf8)?
            }
        }
    };
    let pattern_raw: Vec<u8> = match pattern {
        ListMailbox::Token(t) => t.as_ref().to_vec(),
        ListMailbox::String(s) => s.as_ref().to_vec(),
    };
    if pattern_raw.is_empty() && lifted.list_patterns.is_empty() {
        // RFC 9051 §6.3.9: the delimiter and the root of the reference.
        io.line(&format!("* {verb} (\\Noselect) \"/\" \"\""));
        return Ok(format!("OK {verb} completed"));
    }
    // One pattern, or several in parentheses (RFC 5258 §3): a name is
    // listed once when any matches.
    let raws = if lifted.list_patterns.is_empty() {
        std::slice::from_ref(&pattern_raw)
    } else {
        lifted.list_patterns.as_slice()
    };
    let mut fulls = Vec::with_capacity(raws.len());
    for raw in raws.iter().filter(|r| !r.is_empty()) {
        let pattern = decode_pattern(raw, state.utf8)?;
        fulls.push(if reference.is_empty() || pattern.starts_with('/') {
            pattern
        } else if reference.ends_with('/') {
            format!("{reference}{pattern}")
        } else {
            format!("{reference}/{pattern}")
        });
    }
    let subscribed_only = lsub || lifted.list_selection.iter().any(|s| s == "SUBSCRIBED");
    let special_only = lifted.list_selection.iter().any(|s| s == "SPECIAL-USE");
    let ret_subscribed = lifted.list_return.iter().any(|s| s == "SUBSCRIBED")
        || lifted.list_selection.iter().any(|s| s == "SUBSCRIBED");
    let status = status_names(&lifted.list_status);
    // LIST-MYRIGHTS (RFC 8440 §3).
    let myrights = lifted.list_return.iter().any(|s| s == "MYRIGHTS");

    let boxes = server.store.list_mailboxes(state.account_id()).await?;
    let existing: std::collections::BTreeMap<&str, &Mailbox> =
        boxes.iter().map(|m| (m.name.as_str(), m)).collect();
    // Every name, plus parents implied by deeper names.
    let mut all: std::collections::BTreeSet<&str> = existing.keys().copied().collect();
    for m in &boxes {
        all.extend(names::parents(&m.name));
    }
    for name in &all {
        let has_children = all
            .range::<str, _>((std::ops::Bound::Excluded(*name), std::ops::Bound::Unbounded))
            .next()
            .is_some_and(|n| n.starts_with(name) && n.as_bytes().get(name.len()) == Some(&b'/'));
        let mb = existing.get(name).copied();
        let matched = fulls.iter().any(|full| names::matches(full, name));
        if !matched {
            continue;
        }
        // RFC 3501 §6.3.9: LSUB (with `%`) returns an unsubscribed parent
        // of a subscribed mailbox that the pattern does not reach, with
        // \Noselect.
        let parent_of_unreached = || {
            lsub && boxes.iter().any(|m| {
                m.subscribed
                    && names::parents(&m.name).any(|p| p == *name)
                    && !fulls.iter().any(|full| names::matches(full, &m.name))
            })
        };
        if subscribed_only && !mb.is_some_and(|m| m.subscribed) && !parent_of_unreached() {
            // RFC 5258: a parent of subscribed children is returned only with
            // RECURSIVEMATCH, not offered here.
            continue;
        }
        if special_only && mb.and_then(|m| m.special_use.as_ref()).is_none() {
            continue;
        }
        let mut attrs: Vec<&str> = Vec::new();
        match mb {
            _ if lsub && !mb.is_some_and(|m| m.subscribed) => attrs.push("\\Noselect"),
            None => {
                attrs.push(if lsub || !state.rev2 {
                    "\\Noselect"
                } else {
                    "\\NonExistent"
                });
            }
            Some(m) => {
                if let Some(su) = &m.special_use {
                    attrs.push(su);
                }
                if ret_subscribed && m.subscribed && !lsub {
                    attrs.push("\\Subscribed");
                }
            }
        }
        if !lsub {
            attrs.push(if has_children {
                "\\HasChildren"
            } else {
                "\\HasNoChildren"
            });
        }
        io.line(&format!(
            "* {verb} ({}) \"/\" {}",
            attrs.join(" "),
            names::quote(&names::to_wire(name, state.utf8), state.utf8)
        ));
        if !status.is_empty()
            && let Some(m) = mb
        {
            let items = status_items(server, m, &status).await?;
            io.line(&format!(
                "* STATUS {} ({items})",
                names::quote(&names::to_wire(name, state.utf8), state.utf8)
            ));
        }
        if myrights && mb.is_some() && !lsub {
            io.line(&format!(
                "* MYRIGHTS {} {}",
                names::quote(&names::to_wire(name, state.utf8), state.utf8),
                crate::acl::OWNER_RIGHTS
            ));
        }
    }
    Ok(format!("OK {verb} completed"))
}

/// A LIST pattern or reference from the wire (wildcards kept). One that
/// is not valid modified UTF-7 (`&` among other atom characters) is taken
/// as written: it matches what it spells, which is no name encoded amiss.
pub(crate) fn decode_pattern(raw: &[u8], utf8: bool) -> Result<String, Failure> {
    let s = std::str::from_utf8(raw).map_err(|_| bad("the pattern is not valid UTF-8"))?;
    if utf8 && !s.is_ascii() {
        return Ok(s.to_string());
    }
    Ok(mailroom_imap_utf7::decode(s).unwrap_or_else(|| s.to_string()))
}

/// COPY and MOVE (RFC 9051 §6.4.7, RFC 6851, UIDPLUS RFC 4315).
async fn copy_or_move(
    server: &ImapServer,
    io: &mut Io,
    state: &mut State,
    set: &imap_types::sequence::SequenceSet,
    mailbox: &WireMailbox<'_>,
    uid: bool,
    is_move: bool,
) -> Outcome {
    let name = mailbox_name(state, mailbox)?;
    let Some(dest) = server
        .store
        .mailbox_by_name(state.account_id(), &name)
        .await?
    else {
        return Err(no("[TRYCREATE] no such mailbox"));
    };
    let qresync = state.qresync;
    let Phase::Selected(sel) = &mut state.phase else {
        unreachable!("state checked")
    };
    if is_move && sel.read_only {
        return Err(no("[READ-ONLY] the mailbox is read-only"));
    }
    let idx = sel.resolve(set, uid).map_err(bad)?;
    let uids: Vec<u32> = idx
        .iter()
        .map(|&i| sel.messages[i].uid)
        .filter(|u| !sel.is_gone(*u))
        .collect();
    let verb = if is_move { "MOVE" } else { "COPY" };
    if uids.is_empty() {
        return Ok(format!("OK {verb} completed (no messages)"));
    }
    let result = if is_move {
        server
            .store
            .move_messages(sel.mailbox.id, &uids, dest.id)
            .await
    } else {
        server
            .store
            .copy_messages(sel.mailbox.id, &uids, dest.id)
            .await
    };
    let copied = match result {
        Ok(c) => c,
        Err(StoreError::FailedPrecondition(m)) if m.starts_with("OVERQUOTA") => {
            return Err(no("[OVERQUOTA] the mailbox quota is exceeded"));
        }
        Err(e) => return Err(e.into()),
    };
    if copied.pairs.is_empty() {
        return Ok(format!("OK {verb} completed (no messages)"));
    }
    let src: Vec<u32> = copied.pairs.iter().map(|p| p.0).collect();
    let dst: Vec<u32> = copied.pairs.iter().map(|p| p.1).collect();
    let code = format!(
        "COPYUID {} {} {}",
        copied.uidvalidity,
        uid_list(&src),
        uid_list(&dst)
    );
    if is_move {
        // RFC 6851 §4.3: COPYUID goes in an untagged OK before the expunges.
        io.line(&format!("* OK [{code}] moved"));
        let mut gone = src.clone();
        gone.sort_unstable();
        sel.announce_expunged(&gone, qresync, &mut io.out);
        Ok("OK MOVE completed".into())
    } else {
        Ok(format!("OK [{code}] COPY completed"))
    }
}

/// UIDs in the order given, as a comma-separated set (order matters in COPYUID).
fn uid_list(uids: &[u32]) -> String {
    let mut sorted = uids.to_vec();
    sorted.sort_unstable();
    if sorted == uids {
        uid_set(uids)
    } else {
        uids.iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// IDLE (RFC 2177, RFC 9051 §6.3.13): announces changes as they happen,
/// driven by the store's change events, until the client sends DONE.
async fn idle(
    server: &ImapServer,
    io: &mut Io,
    state: &mut State,
    tag: &str,
    shutdown: &CancellationToken,
) -> Result<(), End> {
    let s = &server.settings;
    io.line("+ idling");
    // Events that arrived while the session was busy are covered by this
    // sync; drop them instead of syncing once for each.
    // (With NOTIFY they say what changed in other mailboxes: kept.)
    if state.notify.is_none()
        && let Some(rx) = state.events.as_mut()
    {
        while !matches!(
            rx.try_recv(),
            Err(broadcast::error::TryRecvError::Empty | broadcast::error::TryRecvError::Closed)
        ) {}
    }
    sync_selected(server, io, state, true).await;
    let deadline = tokio::time::Instant::now() + s.authenticated_idle_timeout;
    loop {
        if let Some(input) = io.next_buffered() {
            match input {
                Input::Message(bytes) => {
                    let line = bytes.trim_ascii_end();
                    if line.eq_ignore_ascii_case(b"DONE") {
                        io.line(&format!("{tag} OK IDLE terminated"));
                    } else {
                        state.errors += 1;
                        io.line(&format!("{tag} BAD expected DONE"));
                    }
                }
                Input::Refused { .. } => {
                    state.errors += 1;
                    io.line(&format!("{tag} BAD expected DONE"));
                }
            }
            return Ok(());
        }
        io.flush(s.authenticated_idle_timeout).await?;
        io.hibernate();
        let selected_box = match &mut state.phase {
            Phase::Selected(sel) => {
                // Packed while waiting; unpacked before anything reads it.
                sel.pack();
                Some(sel.mailbox.id)
            }
            _ => None,
        };
        let account = state.account_id();
        let woke = input_or_event(io, &mut state.events, deadline, IDLE_READ_CHUNK, shutdown).await;
        if let Phase::Selected(sel) = &mut state.phase {
            sel.unpack();
        }
        let Some(ev) = woke? else {
            continue;
        };
        if state.notify.is_some() {
            crate::notify::on_event(server, io, state, ev, true).await;
        } else {
            match ev {
                Ok(ev)
                    if ev.is_resync()
                        || (ev.account_id == account && Some(ev.mailbox_id) == selected_box) =>
                {
                    sync_selected(server, io, state, true).await;
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    sync_selected(server, io, state, true).await;
                }
                Err(broadcast::error::RecvError::Closed) => state.events = None,
            }
        }
    }
}
