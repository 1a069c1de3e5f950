//! IMAP client (RFC 9051 / RFC 3501) on `imap-codec`: commands are built as
//! `imap-types` values and encoded by `CommandCodec`; responses are framed
//! by imap-codec's `Fragmentizer` and decoded by `ResponseCodec`. There is no
//! second IMAP parser here.
//!
//! Invariants:
//! * one response is at most `max_message` bytes: a literal announced larger
//!   than that fails the command *before* its bytes are read, and a line
//!   that grows past it fails as soon as the bound is crossed, so neither a
//!   huge literal nor an endless line can exhaust memory;
//! * synchronising literals (APPEND) are sent only after the server's `+`
//!   (RFC 9051 §4.3); a tagged NO instead ends the command;
//! * after STARTTLS whatever was buffered before the handshake is discarded
//!   (RFC 9051 §6.2.1, CVE-2011-0411) and capabilities are asked again;
//! * credentials never reach the trace: LOGIN and AUTHENTICATE lines are
//!   traced as `<redacted>`;
//! * message bodies are fetched with `BODY.PEEK` unless the caller asks to
//!   mark them `\Seen`;
//! * callers name mailboxes in UTF-8 and get them back in UTF-8: on the wire
//!   they are UTF-8 once `UTF8=ACCEPT` is enabled (RFC 6855), modified UTF-7
//!   otherwise (RFC 3501 §5.1.3, `mailroom-imap-utf7`);
//! * [`ImapClient::stream_part`] never holds a part's content whole: its
//!   literal goes to the caller a read buffer at a time.

use std::num::NonZeroU32;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use imap_codec::decode::Decoder as _;
use imap_codec::encode::{Encoder, Fragment};
use imap_codec::fragmentizer::{FragmentInfo, Fragmentizer, LiteralAnnouncement};
use imap_codec::{CommandCodec, GreetingCodec, ResponseCodec};
use imap_types::IntoStatic;
use imap_types::auth::AuthMechanism;
use imap_types::body::BodyStructure;
use imap_types::command::{Command, CommandBody};
use imap_types::core::{AString, Literal, Vec1};
use imap_types::fetch::{MessageDataItem, MessageDataItemName, Part, Section};
use imap_types::flag::{Flag, FlagFetch, StoreResponse, StoreType};
use imap_types::mailbox::Mailbox;
use imap_types::response::{
    Code, CommandContinuationRequest, Data, GreetingKind, Response, Status, StatusKind,
};
use imap_types::search::SearchKey;
use imap_types::sequence::SequenceSet;
use mailroom_sasl::client::{ScramClient, plain_response};

use crate::connection::{ClientOptions, Connection, Endpoint, NoProgress, Progress, Security};
use crate::error::{Error, Result};

/// What `list` shows of a message: enough for one line, without its body.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// The message's UID.
    pub uid: u32,
    /// Flags as the server spells them (`\Seen`, `$Forwarded`…).
    pub flags: Vec<String>,
    /// RFC822.SIZE.
    pub size: u64,
    /// The header fields Date, From, To, Cc, Subject and Message-ID.
    pub header: Vec<u8>,
}

/// A search over a mailbox; an empty query matches every message.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// Only messages without `\Seen`.
    pub unseen: bool,
    /// Only messages whose internal date is on or after this day.
    pub since: Option<chrono::NaiveDate>,
    /// Substring of From.
    pub from: Option<String>,
    /// Substring of Subject.
    pub subject: Option<String>,
}

/// A folder as LIST shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Folder {
    /// Full name.
    pub name: String,
    /// Hierarchy delimiter.
    pub delimiter: Option<char>,
    /// Attributes (`\Noselect`, `\Sent`…).
    pub attributes: Vec<String>,
}

/// The outcome of waiting in IDLE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idled {
    /// The server announced a change (EXISTS, EXPUNGE, FETCH).
    Changed,
    /// The wait ended without news.
    Timeout,
}

/// An IMAP session.
#[derive(Debug)]
pub struct ImapClient {
    conn: Connection,
    fragments: Fragmentizer,
    next_tag: u32,
    capabilities: Vec<String>,
    max_message: usize,
    /// UTF8=ACCEPT is enabled: mailbox names are UTF-8 on the wire.
    utf8: bool,
    /// Whether to enable UTF8=ACCEPT when offered.
    want_utf8: bool,
}

impl ImapClient {
    /// Connects, reads the greeting and upgrades with STARTTLS when asked to.
    pub async fn connect(endpoint: &Endpoint, options: &ClientOptions) -> Result<ImapClient> {
        let conn = Connection::open(endpoint, options).await?;
        let max = u32::try_from(options.max_message).unwrap_or(u32::MAX);
        let mut client = ImapClient {
            conn,
            fragments: Fragmentizer::new(max),
            next_tag: 1,
            capabilities: Vec::new(),
            max_message: options.max_message,
            utf8: false,
            want_utf8: options.imap_utf8,
        };
        client.greeting().await?;
        if client.capabilities.is_empty() {
            client.refresh_capabilities().await?;
        }
        if endpoint.security == Security::Starttls {
            if !client.has("STARTTLS") {
                return Err(Error::Tls {
                    server: client.conn.server().to_string(),
                    reason: "the server does not offer STARTTLS".into(),
                });
            }
            client.run(CommandBody::StartTLS, "STARTTLS").await?;
            // Anything buffered came before the handshake: discard it.
            client.fragments = Fragmentizer::new(max);
            client.conn.take_buffered();
            client.conn.start_tls().await?;
            client.refresh_capabilities().await?;
        }
        Ok(client)
    }

    /// The server's capabilities, as last announced.
    pub fn capabilities(&self) -> &[String] {
        &self.capabilities
    }

    /// Whether the server announced `capability` (case-insensitive).
    pub fn has(&self, capability: &str) -> bool {
        self.capabilities
            .iter()
            .any(|c| c.eq_ignore_ascii_case(capability))
    }

    async fn greeting(&mut self) -> Result<()> {
        loop {
            match self.fragment().await? {
                None => continue,
                Some(()) => {
                    let greeting = self
                        .fragments
                        .decode_message(&GreetingCodec::default())
                        .map_err(|_| self.unreadable())?
                        .into_static();
                    if let Some(Code::Capability(caps)) = &greeting.code {
                        self.capabilities = caps.as_ref().iter().map(|c| c.to_string()).collect();
                    }
                    return match greeting.kind {
                        GreetingKind::Ok | GreetingKind::PreAuth => Ok(()),
                        GreetingKind::Bye => Err(Error::refused(
                            "the connection",
                            greeting.text.as_ref().to_string(),
                        )),
                    };
                }
            }
        }
    }

    async fn refresh_capabilities(&mut self) -> Result<()> {
        let data = self.run(CommandBody::Capability, "CAPABILITY").await?;
        for d in data {
            if let Data::Capability(caps) = d {
                self.capabilities = caps.as_ref().iter().map(|c| c.to_string()).collect();
            }
        }
        Ok(())
    }

    /// Logs in: AUTHENTICATE SCRAM-SHA-256 when offered, else AUTHENTICATE
    /// PLAIN, else LOGIN (unless LOGINDISABLED).
    pub async fn login(&mut self, user: &str, password: &str) -> Result<()> {
        self.conn.check_login_allowed()?;
        let outcome = if self.has("AUTH=SCRAM-SHA-256") {
            self.scram(user, password).await
        } else if self.has("AUTH=PLAIN") {
            let ir = plain_response(user, password);
            self.authenticate(AuthMechanism::Plain, ir).await
        } else if !self.has("LOGINDISABLED") {
            let body = CommandBody::login(user, password)
                .map_err(|_| Error::Usage("the user name or password cannot be sent".into()))?;
            self.run(body, "LOGIN").await.map(|_| ())
        } else {
            return Err(Error::Auth(
                "the server allows no login on this connection (use TLS or STARTTLS)".into(),
            ));
        };
        match outcome {
            Ok(()) => {
                self.refresh_capabilities().await?;
                // RFC 6855: with UTF8=ACCEPT, mailbox names and headers are
                // UTF-8 both ways, so non-ASCII folder names work as typed.
                if self.want_utf8 && self.has("UTF8=ACCEPT") {
                    use imap_types::extensions::enable::CapabilityEnable;
                    use imap_types::extensions::utf8::Utf8Kind;
                    let body = CommandBody::Enable {
                        capabilities: Vec1::from(CapabilityEnable::Utf8(Utf8Kind::Accept)),
                    };
                    self.run(body, "ENABLE").await?;
                    self.utf8 = true;
                }
                Ok(())
            }
            Err(Error::Refused { reply, .. }) => Err(Error::Auth(format!("\"{reply}\""))),
            Err(e) => Err(e),
        }
    }

    /// AUTHENTICATE with an initial response (SASL-IR, RFC 4959) when the
    /// server allows it, else after an empty challenge.
    async fn authenticate(&mut self, mechanism: AuthMechanism<'static>, ir: Vec<u8>) -> Result<()> {
        let tag = if self.has("SASL-IR") {
            self.send(CommandBody::authenticate_with_ir(mechanism, ir))
                .await?
        } else {
            let tag = self.send(CommandBody::authenticate(mechanism)).await?;
            self.continuation(&tag).await?;
            self.conn
                .send_secret(
                    format!("{}\r\n", STANDARD.encode(ir)).as_bytes(),
                    "<redacted>",
                )
                .await?;
            tag
        };
        self.complete(&tag, "AUTHENTICATE").await.map(|_| ())
    }

    async fn scram(&mut self, user: &str, password: &str) -> Result<()> {
        let (mut client, first) =
            ScramClient::start(user, password).map_err(|e| Error::Auth(e.to_string()))?;
        let tag = if self.has("SASL-IR") {
            self.send(CommandBody::authenticate_with_ir(
                AuthMechanism::ScramSha256,
                first,
            ))
            .await?
        } else {
            let tag = self
                .send(CommandBody::authenticate(AuthMechanism::ScramSha256))
                .await?;
            self.continuation(&tag).await?;
            self.conn
                .send_secret(
                    format!("{}\r\n", STANDARD.encode(first)).as_bytes(),
                    "<redacted>",
                )
                .await?;
            tag
        };
        let server_first = self.continuation(&tag).await?;
        let response = match client.respond(&server_first) {
            Ok(r) => r,
            Err(e) => {
                self.conn.send(b"*\r\n").await?;
                let _ = self.complete(&tag, "AUTHENTICATE").await;
                return Err(Error::Auth(e.to_string()));
            }
        };
        self.conn
            .send_secret(
                format!("{}\r\n", STANDARD.encode(response)).as_bytes(),
                "<redacted>",
            )
            .await?;
        let server_final = self.continuation(&tag).await?;
        client
            .finish(&server_final)
            .map_err(|e| Error::Auth(e.to_string()))?;
        self.conn.send(b"\r\n").await?;
        self.complete(&tag, "AUTHENTICATE").await.map(|_| ())
    }

    /// Opens a mailbox (EXAMINE when `read_only`); returns EXISTS.
    pub async fn select(&mut self, mailbox: &str, read_only: bool) -> Result<u32> {
        let name = self.mailbox_name(mailbox)?;
        let body = if read_only {
            CommandBody::examine(name)
        } else {
            CommandBody::select(name)
        }
        .map_err(|_| Error::Usage(format!("invalid mailbox name {mailbox:?}")))?;
        let data = match self.run(body, "SELECT").await {
            Err(Error::Refused { reply, .. }) => {
                return Err(Error::NotFound(format!(
                    "mailbox {mailbox:?} cannot be opened: \"{reply}\" (see `mailroom mail folders`)"
                )));
            }
            other => other?,
        };
        Ok(data
            .iter()
            .find_map(|d| match d {
                Data::Exists(n) => Some(*n),
                _ => None,
            })
            .unwrap_or(0))
    }

    /// UID SEARCH; UIDs in ascending order.
    pub async fn search(&mut self, query: &Query) -> Result<Vec<u32>> {
        let mut keys: Vec<SearchKey<'static>> = Vec::new();
        if query.unseen {
            keys.push(SearchKey::Unseen);
        }
        if let Some(day) = query.since {
            let day = imap_types::datetime::NaiveDate::try_from(day)
                .map_err(|_| Error::Usage("date out of range".into()))?;
            keys.push(SearchKey::Since(day));
        }
        if let Some(from) = &query.from {
            keys.push(SearchKey::From(astring(from)?));
        }
        if let Some(subject) = &query.subject {
            keys.push(SearchKey::Subject(astring(subject)?));
        }
        if keys.is_empty() {
            keys.push(SearchKey::All);
        }
        let criteria = Vec1::try_from(keys).map_err(|_| Error::Usage("empty search".into()))?;
        let charset = if query
            .from
            .iter()
            .chain(&query.subject)
            .any(|s| !s.is_ascii())
        {
            Some(
                imap_types::core::Charset::try_from("UTF-8")
                    .map_err(|_| Error::Usage("charset".into()))?,
            )
        } else {
            None
        };
        let data = self
            .run(CommandBody::search(charset, criteria, true), "UID SEARCH")
            .await?;
        let mut uids: Vec<u32> = data
            .into_iter()
            .flat_map(|d| match d {
                Data::Search(found, ..) => found.into_iter().map(NonZeroU32::get).collect(),
                _ => Vec::new(),
            })
            .collect();
        uids.sort_unstable();
        uids.dedup();
        Ok(uids)
    }

    /// UID FETCH of flags, size and the header fields a listing shows.
    pub async fn summaries(&mut self, uids: &[u32]) -> Result<Vec<Summary>> {
        if uids.is_empty() {
            return Ok(Vec::new());
        }
        let fields: Vec<AString<'static>> = ["DATE", "FROM", "TO", "CC", "SUBJECT", "MESSAGE-ID"]
            .into_iter()
            .map(|f| AString::try_from(f).expect("atom"))
            .collect();
        let items = vec![
            MessageDataItemName::Uid,
            MessageDataItemName::Flags,
            MessageDataItemName::Rfc822Size,
            MessageDataItemName::BodyExt {
                section: Some(Section::HeaderFields(
                    None,
                    Vec1::try_from(fields).expect("non-empty"),
                )),
                partial: None,
                peek: true,
            },
        ];
        let data = self
            .run(
                CommandBody::fetch(uid_set(uids)?, items, true)
                    .map_err(|_| Error::Usage("bad UID set".into()))?,
                "UID FETCH",
            )
            .await?;
        let mut out = Vec::new();
        for d in data {
            let Data::Fetch { items, .. } = d else {
                continue;
            };
            let mut summary = Summary::default();
            for item in items.into_iter() {
                match item {
                    MessageDataItem::Uid(uid) => summary.uid = uid.get(),
                    MessageDataItem::Flags(flags) => {
                        summary.flags = flags
                            .iter()
                            .map(|f| match f {
                                FlagFetch::Flag(f) => f.to_string(),
                                FlagFetch::Recent => "\\Recent".into(),
                            })
                            .collect();
                    }
                    MessageDataItem::Rfc822Size(size) => summary.size = size.into(),
                    MessageDataItem::BodyExt { data, .. } => {
                        summary.header = data.0.map(|s| s.as_ref().to_vec()).unwrap_or_default();
                    }
                    _ => {}
                }
            }
            if summary.uid != 0 && uids.contains(&summary.uid) {
                out.push(summary);
            }
        }
        Ok(out)
    }

    /// The whole message (`BODY.PEEK[]`, or `BODY[]` which sets `\Seen`).
    pub async fn message(&mut self, uid: u32, mark_seen: bool) -> Result<Vec<u8>> {
        self.section(uid, None, !mark_seen).await
    }

    /// The BODYSTRUCTURE of a message.
    pub async fn structure(&mut self, uid: u32) -> Result<BodyStructure<'static>> {
        let data = self
            .run(
                CommandBody::fetch(
                    uid_set(&[uid])?,
                    vec![MessageDataItemName::BodyStructure],
                    true,
                )
                .map_err(|_| Error::Usage("bad UID".into()))?,
                "UID FETCH",
            )
            .await?;
        for d in data {
            if let Data::Fetch { items, .. } = d
                && items
                    .as_ref()
                    .iter()
                    .any(|i| matches!(i, MessageDataItem::Uid(u) if u.get() == uid))
            {
                for item in items.into_iter() {
                    if let MessageDataItem::BodyStructure(s) | MessageDataItem::Body(s) = item {
                        return Ok(s);
                    }
                }
            }
        }
        Err(Error::NotFound(format!("no message with UID {uid}")))
    }

    /// The MIME header of one body part (`BODY.PEEK[2.1.MIME]` for
    /// `[2, 1]`), at most `max_message` bytes like any response.
    pub async fn part_header(&mut self, uid: u32, path: &[u32]) -> Result<Vec<u8>> {
        self.section(uid, Some(Section::Mime(part_of(path)?)), true)
            .await
    }

    /// Streams one body part's content as the server sends it
    /// (`BODY.PEEK[2.1]`, still transfer-encoded) to `sink`, a read buffer
    /// at a time, and returns its size.
    ///
    /// The content literal is never held whole: only the response around
    /// it is buffered (with the literal replaced by an empty one, then
    /// decoded by imap-codec like any response), within `max_message`. The
    /// literal itself may be as long as the larger of `max_message` and
    /// the part's size as BODYSTRUCTURE gave it (`part.size`); a longer
    /// announcement fails before a byte of it is read.
    pub async fn stream_part(
        &mut self,
        uid: u32,
        part: &PartInfo,
        sink: &mut (dyn FnMut(&[u8]) -> Result<()> + Send),
        progress: &mut dyn Progress,
    ) -> Result<u64> {
        let section = Section::Part(part_of(&part.path)?);
        let wanted = format!(
            "BODY[{}]",
            part.path
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(".")
        );
        let limit = (self.max_message as u64).max(u64::from(part.size));
        self.settle().await?;
        let item = MessageDataItemName::BodyExt {
            section: Some(section.clone()),
            partial: None,
            peek: true,
        };
        let body = CommandBody::fetch(uid_set(&[uid])?, vec![MessageDataItemName::Uid, item], true)
            .map_err(|_| Error::Usage("bad UID".into()))?;
        let tag = self.send(body).await?;
        // The response being read, literals replaced by `{0}`.
        let mut skeleton: Vec<u8> = Vec::new();
        let mut streamed: Option<u64> = None;
        let mut streamed_here = false;
        loop {
            let line = self.conn.read_line(self.max_message).await?;
            if skeleton.len() + line.len() + 8 > self.max_message {
                return Err(self.too_long());
            }
            if let Some((prefix, length)) = literal_announcement(&line)? {
                let prefix_bytes = &line[..prefix];
                skeleton.extend_from_slice(prefix_bytes);
                skeleton.extend_from_slice(if line[prefix] == b'~' {
                    &b"~{0}\r\n"[..]
                } else {
                    &b"{0}\r\n"[..]
                });
                let target = streamed.is_none()
                    && skeleton.starts_with(b"* ")
                    && trim_end(prefix_bytes)
                        .to_ascii_uppercase()
                        .ends_with(wanted.as_bytes());
                if target {
                    if length > limit {
                        return Err(Error::protocol(format!(
                            "the server announced a {length} byte part; BODYSTRUCTURE said {} (and --max-size is {})",
                            part.size, self.max_message
                        )));
                    }
                    self.conn
                        .trace_in(format!("<{length} byte literal, streamed>").as_bytes());
                    progress.start("saving", length);
                    let outcome = self.conn.stream_exact(length, sink, progress).await;
                    progress.finish();
                    outcome?;
                    streamed = Some(length);
                    streamed_here = true;
                } else {
                    if length > self.max_message as u64 {
                        return Err(Error::protocol(format!(
                            "the server announced a {length} byte literal; the limit is {} (--max-size)",
                            self.max_message
                        )));
                    }
                    self.conn
                        .trace_in(format!("<{length} byte literal, skipped>").as_bytes());
                    self.conn
                        .stream_exact(length, &mut |_| Ok(()), &mut NoProgress)
                        .await?;
                }
                continue;
            }
            skeleton.extend_from_slice(&line);
            skeleton.extend_from_slice(b"\r\n");
            let whole = std::mem::take(&mut skeleton);
            let response = match ResponseCodec::default().decode_static(&whole) {
                Ok((_, response)) => response,
                Err(_) => {
                    let shown =
                        String::from_utf8_lossy(&whole[..whole.len().min(120)]).into_owned();
                    return Err(Error::protocol(format!(
                        "unreadable IMAP response {shown:?}"
                    )));
                }
            };
            let here = std::mem::take(&mut streamed_here);
            match response {
                Response::Status(Status::Tagged(t)) if t.tag.as_ref() == tag => {
                    return match t.body.kind {
                        StatusKind::Ok => streamed.ok_or_else(|| {
                            Error::NotFound(format!("message {uid} has no part {wanted}"))
                        }),
                        StatusKind::No | StatusKind::Bad => {
                            let text = String::from_utf8_lossy(&whole);
                            let text = text.trim_end();
                            let text = text.split_once(' ').map_or(text, |(_, r)| r);
                            Err(Error::refused(
                                "UID FETCH",
                                text.chars().take(300).collect::<String>(),
                            ))
                        }
                    };
                }
                Response::Status(Status::Bye(bye)) => {
                    return Err(Error::protocol(format!(
                        "the server ended the session: {}",
                        bye.text.as_ref()
                    )));
                }
                Response::Data(Data::Fetch { items, .. }) => {
                    let ours = items
                        .as_ref()
                        .iter()
                        .any(|i| matches!(i, MessageDataItem::Uid(u) if u.get() == uid));
                    if here && !ours {
                        return Err(Error::protocol(
                            "the server sent the part of another message",
                        ));
                    }
                    if !ours || streamed.is_some() {
                        continue;
                    }
                    // A small part may come as a quoted string (or NIL).
                    for item in items.into_iter() {
                        if let MessageDataItem::BodyExt {
                            section: Some(s),
                            data,
                            ..
                        } = item
                            && s == section
                        {
                            let bytes = data.0.map(|d| d.as_ref().to_vec()).unwrap_or_default();
                            progress.start("saving", bytes.len() as u64);
                            sink(&bytes)?;
                            progress.advance(bytes.len() as u64);
                            progress.finish();
                            streamed = Some(bytes.len() as u64);
                        }
                    }
                }
                _ => {}
            }
        }
    }

    /// Brings the response reader to a boundary with nothing buffered, so
    /// the next response can be read straight from the connection: whole
    /// responses already received (unsolicited ones) are decoded and
    /// dropped, a partial one is read to its end.
    async fn settle(&mut self) -> Result<()> {
        loop {
            match self.fragments.progress() {
                None if self.fragments.message_bytes().is_empty() => return Ok(()),
                Some(_) if self.fragments.is_message_complete() => {
                    self.decode()?;
                }
                _ => {
                    self.response().await?;
                }
            }
        }
    }

    async fn section(
        &mut self,
        uid: u32,
        section: Option<Section<'static>>,
        peek: bool,
    ) -> Result<Vec<u8>> {
        let item = MessageDataItemName::BodyExt {
            section,
            partial: None,
            peek,
        };
        let data = self
            .run(
                CommandBody::fetch(uid_set(&[uid])?, vec![MessageDataItemName::Uid, item], true)
                    .map_err(|_| Error::Usage("bad UID".into()))?,
                "UID FETCH",
            )
            .await?;
        for d in data {
            let Data::Fetch { items, .. } = d else {
                continue;
            };
            if !items
                .as_ref()
                .iter()
                .any(|i| matches!(i, MessageDataItem::Uid(u) if u.get() == uid))
            {
                continue;
            }
            for item in items.into_iter() {
                if let MessageDataItem::BodyExt { data, .. } = item {
                    return Ok(data.0.map(|s| s.as_ref().to_vec()).unwrap_or_default());
                }
            }
        }
        Err(Error::NotFound(format!("no message with UID {uid}")))
    }

    /// UID STORE ±FLAGS.SILENT.
    pub async fn store(&mut self, uids: &[u32], add: bool, flags: &[String]) -> Result<()> {
        let flags: Vec<Flag<'static>> = flags
            .iter()
            .map(|f| {
                Flag::try_from(f.as_str())
                    .map(IntoStatic::into_static)
                    .map_err(|_| Error::Usage(format!("invalid flag {f:?}")))
            })
            .collect::<Result<_>>()?;
        let kind = if add {
            StoreType::Add
        } else {
            StoreType::Remove
        };
        let body = CommandBody::store(uid_set(uids)?, kind, StoreResponse::Silent, flags, true)
            .map_err(|_| Error::Usage("bad UID set".into()))?;
        self.run(body, "UID STORE").await.map(|_| ())
    }

    /// Moves messages: MOVE (RFC 6851) where offered, else COPY, STORE
    /// \Deleted and (UID) EXPUNGE.
    pub async fn move_to(&mut self, uids: &[u32], mailbox: &str) -> Result<()> {
        let target = self.mailbox_name(mailbox)?;
        if self.has("MOVE") {
            let body = CommandBody::Move {
                sequence_set: uid_set(uids)?,
                mailbox: target,
                uid: true,
            };
            return self.run(body, "UID MOVE").await.map(|_| ());
        }
        let body = CommandBody::copy(uid_set(uids)?, target, true)
            .map_err(|_| Error::Usage("bad UID set".into()))?;
        self.run(body, "UID COPY").await?;
        self.expunge(uids).await
    }

    /// Marks messages \Deleted and expunges them (only them with UIDPLUS).
    pub async fn expunge(&mut self, uids: &[u32]) -> Result<()> {
        self.store(uids, true, &["\\Deleted".to_string()]).await?;
        let body = if self.has("UIDPLUS") {
            CommandBody::ExpungeUid {
                sequence_set: uid_set(uids)?,
            }
        } else {
            CommandBody::Expunge
        };
        self.run(body, "EXPUNGE").await.map(|_| ())
    }

    /// LIST "" "*".
    pub async fn folders(&mut self) -> Result<Vec<Folder>> {
        let body =
            CommandBody::list("", "*").map_err(|_| Error::Usage("bad LIST arguments".into()))?;
        let data = self.run(body, "LIST").await?;
        Ok(data
            .into_iter()
            .filter_map(|d| match d {
                Data::List {
                    items,
                    delimiter,
                    mailbox,
                } => Some(Folder {
                    name: self.mailbox_from_wire(&mailbox),
                    delimiter: delimiter.map(|d| d.inner()),
                    attributes: items.iter().map(|a| a.to_string()).collect(),
                }),
                _ => None,
            })
            .collect())
    }

    /// CREATE.
    pub async fn create(&mut self, mailbox: &str) -> Result<()> {
        let body = CommandBody::create(self.mailbox_name(mailbox)?)
            .map_err(|_| Error::Usage(format!("invalid mailbox name {mailbox:?}")))?;
        self.run(body, "CREATE").await.map(|_| ())
    }

    /// RENAME.
    pub async fn rename(&mut self, from: &str, to: &str) -> Result<()> {
        let body = CommandBody::rename(self.mailbox_name(from)?, self.mailbox_name(to)?)
            .map_err(|_| Error::Usage("invalid mailbox name".into()))?;
        self.run(body, "RENAME").await.map(|_| ())
    }

    /// DELETE (the folder).
    pub async fn delete_folder(&mut self, mailbox: &str) -> Result<()> {
        let body = CommandBody::delete(self.mailbox_name(mailbox)?)
            .map_err(|_| Error::Usage(format!("invalid mailbox name {mailbox:?}")))?;
        self.run(body, "DELETE").await.map(|_| ())
    }

    /// APPEND a message with flags (a synchronising literal).
    pub async fn append(&mut self, mailbox: &str, flags: &[&str], message: &[u8]) -> Result<()> {
        let flags: Vec<Flag<'static>> = flags
            .iter()
            .filter_map(|f| Flag::try_from(*f).ok().map(IntoStatic::into_static))
            .collect();
        let literal = Literal::try_from(message.to_vec())
            .map_err(|_| Error::Usage("the message cannot be sent as an IMAP literal".into()))?;
        let body = CommandBody::Append {
            mailbox: self.mailbox_name(mailbox)?,
            flags,
            date: None,
            message: imap_types::extensions::binary::LiteralOrLiteral8::Literal(literal),
        };
        self.run(body, "APPEND").await.map(|_| ())
    }

    /// Waits in IDLE (RFC 2177) until the server reports a change or `wait`
    /// passes, then sends DONE and reads the end of the command.
    pub async fn idle(&mut self, wait: std::time::Duration) -> Result<Idled> {
        let tag = self.send(CommandBody::Idle).await?;
        self.continuation(&tag).await?;
        let deadline = tokio::time::Instant::now() + wait;
        let mut outcome = Idled::Timeout;
        loop {
            let next = tokio::time::timeout_at(deadline, self.response_untimed()).await;
            match next {
                Err(_) => break,
                Ok(response) => match response? {
                    Response::Data(Data::Exists(_) | Data::Expunge(_) | Data::Fetch { .. }) => {
                        outcome = Idled::Changed;
                        break;
                    }
                    Response::Status(Status::Bye(bye)) => {
                        return Err(Error::protocol(format!(
                            "the server ended the session: {}",
                            bye.text.as_ref()
                        )));
                    }
                    Response::Status(Status::Tagged(t)) if t.tag.as_ref() == tag => {
                        return Ok(outcome);
                    }
                    _ => {}
                },
            }
        }
        self.conn.send(b"DONE\r\n").await?;
        self.complete(&tag, "IDLE").await?;
        Ok(outcome)
    }

    /// NOOP: lets the server report changes.
    pub async fn noop(&mut self) -> Result<()> {
        self.run(CommandBody::Noop, "NOOP").await.map(|_| ())
    }

    /// LOGOUT, ignoring errors.
    pub async fn logout(mut self) {
        let _ = self.run(CommandBody::Logout, "LOGOUT").await;
        self.conn.close().await;
    }

    // ----- command and response plumbing -----

    /// Sends a command and collects its untagged data until the tagged end.
    async fn run(&mut self, body: CommandBody<'_>, what: &str) -> Result<Vec<Data<'static>>> {
        let tag = self.send(body).await?;
        self.complete(&tag, what).await
    }

    /// Encodes and sends a command; waits for `+` before each synchronising
    /// literal. Returns the tag.
    async fn send(&mut self, body: CommandBody<'_>) -> Result<String> {
        let tag = format!("M{}", self.next_tag);
        self.next_tag += 1;
        let secret = matches!(
            body,
            CommandBody::Login { .. } | CommandBody::Authenticate { .. }
        );
        let name = body.name();
        let command = Command::new(tag.as_str(), body).map_err(|_| Error::Usage("tag".into()))?;
        for fragment in CommandCodec::default().encode(&command) {
            match fragment {
                Fragment::Line { data } if secret => {
                    self.conn
                        .send_secret(&data, &format!("{tag} {name} <redacted>"))
                        .await?;
                }
                Fragment::Line { data } => self.conn.send(&data).await?,
                Fragment::Literal { data, mode } => {
                    if mode == imap_types::core::LiteralMode::Sync {
                        self.continuation(&tag).await?;
                    }
                    self.conn.send_content(&data).await?;
                }
            }
        }
        Ok(tag)
    }

    /// Reads responses until the tagged completion of `tag`.
    async fn complete(&mut self, tag: &str, what: &str) -> Result<Vec<Data<'static>>> {
        let mut data = Vec::new();
        loop {
            match self.response().await? {
                Response::Data(d) => {
                    data.push(d);
                    if data.len() > 1_000_000 {
                        return Err(Error::protocol("too many untagged responses"));
                    }
                }
                Response::Status(Status::Tagged(t)) if t.tag.as_ref() == tag => {
                    return match t.body.kind {
                        StatusKind::Ok => Ok(data),
                        StatusKind::No | StatusKind::Bad => {
                            Err(Error::refused(what.to_string(), self.last_status()))
                        }
                    };
                }
                Response::Status(Status::Bye(bye)) if what != "LOGOUT" => {
                    return Err(Error::protocol(format!(
                        "the server ended the session: {}",
                        bye.text.as_ref()
                    )));
                }
                _ => {}
            }
        }
    }

    /// Reads up to a continuation request and returns its decoded data; a
    /// tagged answer instead is the command's (failed) end.
    async fn continuation(&mut self, tag: &str) -> Result<Vec<u8>> {
        loop {
            match self.response().await? {
                Response::CommandContinuationRequest(CommandContinuationRequest::Base64(data)) => {
                    return Ok(data.into_owned());
                }
                Response::CommandContinuationRequest(CommandContinuationRequest::Basic(_)) => {
                    return Ok(Vec::new());
                }
                Response::Status(Status::Tagged(t)) if t.tag.as_ref() == tag => {
                    return Err(Error::refused("the command", self.last_status()));
                }
                Response::Status(Status::Bye(bye)) => {
                    return Err(Error::protocol(format!(
                        "the server ended the session: {}",
                        bye.text.as_ref()
                    )));
                }
                _ => {}
            }
        }
    }

    async fn response(&mut self) -> Result<Response<'static>> {
        loop {
            if self.fragment().await?.is_some() {
                return self.decode();
            }
        }
    }

    async fn response_untimed(&mut self) -> Result<Response<'static>> {
        loop {
            if self.fragment_with(true).await?.is_some() {
                return self.decode();
            }
        }
    }

    fn decode(&self) -> Result<Response<'static>> {
        let response = self
            .fragments
            .decode_message(&ResponseCodec::default())
            .map_err(|_| self.unreadable())?
            .into_static();
        Ok(response)
    }

    async fn fragment(&mut self) -> Result<Option<()>> {
        self.fragment_with(false).await
    }

    /// Advances the fragmentizer by one fragment (reading when it needs
    /// bytes); `Some` when a whole response is framed.
    async fn fragment_with(&mut self, untimed: bool) -> Result<Option<()>> {
        loop {
            match self.fragments.progress() {
                Some(info) => {
                    if let FragmentInfo::Line {
                        announcement: Some(LiteralAnnouncement { length, .. }),
                        ..
                    } = info
                        && length as usize > self.max_message
                    {
                        return Err(Error::protocol(format!(
                            "the server announced a {length} byte literal; the limit is {} (--max-size)",
                            self.max_message
                        )));
                    }
                    if self.fragments.is_max_message_size_exceeded() {
                        return Err(self.too_long());
                    }
                    if self.conn.tracing() {
                        let bytes = self.fragments.fragment_bytes(info);
                        match info {
                            FragmentInfo::Line { .. } => self.conn.trace_in(bytes),
                            FragmentInfo::Literal { .. } => self
                                .conn
                                .trace_in(format!("<{} byte literal>", bytes.len()).as_bytes()),
                        }
                    }
                    if self.fragments.is_message_complete() {
                        return Ok(Some(()));
                    }
                }
                None => {
                    if self.fragments.is_max_message_size_exceeded() {
                        return Err(self.too_long());
                    }
                    // Input left on the connection (after a streamed
                    // part's response) comes first, before reading more.
                    if self.conn.buffered().is_empty() {
                        if untimed {
                            self.conn.fill_untimed().await?;
                        } else {
                            self.conn.fill().await?;
                        }
                    }
                    let bytes = self.conn.take_buffered();
                    self.fragments.enqueue_bytes(&bytes);
                }
            }
        }
    }

    /// The text of the status line just decoded, without its tag: the
    /// server's own words, quoted in errors.
    fn last_status(&self) -> String {
        let line = String::from_utf8_lossy(self.fragments.message_bytes());
        let line = line.trim_end();
        let text = line.split_once(' ').map_or(line, |(_, rest)| rest);
        text.chars().take(300).collect()
    }

    /// A mailbox name for the wire: as typed (UTF-8) once UTF8=ACCEPT is
    /// enabled (RFC 6855 §3), else in modified UTF-7 (RFC 3501 §5.1.3).
    fn mailbox_name(&self, name: &str) -> Result<Mailbox<'static>> {
        if name.chars().any(char::is_control) {
            return Err(Error::Usage(format!("invalid mailbox name {name:?}")));
        }
        let wire = if self.utf8 {
            name.to_string()
        } else {
            mailroom_imap_utf7::encode(name)
        };
        Mailbox::try_from(wire).map_err(|_| Error::Usage(format!("invalid mailbox name {name:?}")))
    }

    /// A mailbox name from the wire, in UTF-8: decoded from modified UTF-7
    /// unless UTF-8 is enabled; a name that is not valid modified UTF-7 is
    /// shown as the server spelled it.
    fn mailbox_from_wire(&self, mailbox: &Mailbox<'_>) -> String {
        let raw = match mailbox {
            Mailbox::Inbox => return "INBOX".into(),
            Mailbox::Other(other) => String::from_utf8_lossy(other.as_ref()).into_owned(),
        };
        if self.utf8 {
            raw
        } else {
            mailroom_imap_utf7::decode(&raw).unwrap_or(raw)
        }
    }

    fn too_long(&self) -> Error {
        Error::protocol(format!(
            "a response is longer than {} bytes (--max-size)",
            self.max_message
        ))
    }

    fn unreadable(&self) -> Error {
        let bytes = self.fragments.message_bytes();
        let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(120)]).into_owned();
        Error::protocol(format!("unreadable IMAP response {shown:?}"))
    }
}

fn part_of(path: &[u32]) -> Result<Part> {
    let numbers: Vec<NonZeroU32> = path.iter().filter_map(|&n| NonZeroU32::new(n)).collect();
    Ok(Part(
        Vec1::try_from(numbers).map_err(|_| Error::Usage("empty part".into()))?,
    ))
}

fn trim_end(bytes: &[u8]) -> &[u8] {
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    &bytes[..end]
}

/// `Some((where the announcement starts, length))` when `line` ends with a
/// literal announcement (`{n}`, `{n+}`, `~{n}`), as imap-codec's
/// fragmentizer frames them.
fn literal_announcement(line: &[u8]) -> Result<Option<(usize, u64)>> {
    let Some(body) = line.strip_suffix(b"}") else {
        return Ok(None);
    };
    let Some(open) = body.iter().rposition(|&b| b == b'{') else {
        return Ok(None);
    };
    let digits = &body[open + 1..];
    let digits = digits.strip_suffix(b"+").unwrap_or(digits);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Ok(None);
    }
    let length: u64 = std::str::from_utf8(digits)
        .ok()
        .and_then(|d| d.parse().ok())
        .ok_or_else(|| Error::protocol("a literal length out of range"))?;
    let start = if open > 0 && body[open - 1] == b'~' {
        open - 1
    } else {
        open
    };
    Ok(Some((start, length)))
}

fn astring(s: &str) -> Result<AString<'static>> {
    AString::try_from(s.to_string()).map_err(|_| Error::Usage(format!("cannot search for {s:?}")))
}

fn uid_set(uids: &[u32]) -> Result<SequenceSet> {
    let set: Vec<NonZeroU32> = uids.iter().filter_map(|&u| NonZeroU32::new(u)).collect();
    SequenceSet::try_from(set).map_err(|_| Error::Usage("no message given".into()))
}

/// A leaf of a BODYSTRUCTURE: where it is and what it says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartInfo {
    /// Part path (`[2]` is `BODY[2]`).
    pub path: Vec<u32>,
    /// `type/subtype`, lower case.
    pub content_type: String,
    /// Encoded size in octets.
    pub size: u32,
    /// Content-Transfer-Encoding, lower case (`base64`, `7bit`…).
    pub encoding: String,
    /// Whether the part is an attachment (disposition `attachment`, or a
    /// non-text part with a file name).
    pub attachment: bool,
}

/// Lists the leaves of a BODYSTRUCTURE with their part paths
/// (RFC 9051 §6.4.5: parts are numbered from 1 within each multipart; a
/// single-part message's body is part 1).
pub fn parts(structure: &BodyStructure<'_>) -> Vec<PartInfo> {
    let mut out = Vec::new();
    walk(structure, &mut Vec::new(), &mut out);
    if out.len() == 1 && out[0].path.is_empty() {
        out[0].path = vec![1];
    }
    out
}

fn walk(structure: &BodyStructure<'_>, path: &mut Vec<u32>, out: &mut Vec<PartInfo>) {
    use imap_types::body::SpecificFields;
    match structure {
        BodyStructure::Multi { bodies, .. } => {
            for (i, body) in bodies.as_ref().iter().enumerate() {
                path.push(i as u32 + 1);
                walk(body, path, out);
                path.pop();
            }
        }
        BodyStructure::Single {
            body,
            extension_data,
        } => {
            let content_type = match &body.specific {
                SpecificFields::Basic { r#type, subtype } => format!(
                    "{}/{}",
                    String::from_utf8_lossy(r#type.as_ref()),
                    String::from_utf8_lossy(subtype.as_ref())
                ),
                SpecificFields::Message { .. } => "message/rfc822".into(),
                SpecificFields::Text { subtype, .. } => {
                    format!("text/{}", String::from_utf8_lossy(subtype.as_ref()))
                }
            }
            .to_ascii_lowercase();
            let disposition = extension_data
                .as_ref()
                .and_then(|e| e.tail.as_ref())
                .and_then(|d| d.disposition.as_ref())
                .map(|(kind, _)| String::from_utf8_lossy(kind.as_ref()).to_ascii_lowercase());
            let named = body.basic.parameter_list.iter().any(|(k, _)| {
                k.as_ref().eq_ignore_ascii_case(b"name") || k.as_ref().starts_with(b"name*")
            });
            let attachment = disposition.as_deref() == Some("attachment")
                || (named && !content_type.starts_with("text/"));
            out.push(PartInfo {
                path: path.clone(),
                content_type,
                size: body.basic.size,
                encoding: String::from_utf8_lossy(body.basic.content_transfer_encoding.as_ref())
                    .to_ascii_lowercase(),
                attachment,
            });
        }
    }
}
