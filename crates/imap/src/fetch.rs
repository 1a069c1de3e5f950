//! FETCH (RFC 9051 §6.4.5, BINARY RFC 3516, CONDSTORE/QRESYNC RFC 7162)
//! and STORE (RFC 9051 §6.4.6, UNCHANGEDSINCE RFC 7162 §3.1.3).
//!
//! ENVELOPE, BODY and BODYSTRUCTURE come from the summary cached at
//! delivery (`mailroom_mime::Summary`, parsed again only for a message
//! stored without one); sections are cut from the message text, which is
//! loaded in batches of [`BATCH`] and written out batch by batch, so a
//! `FETCH 1:* BODY[]` over a large mailbox never holds more than one batch.
//! A message over [`STREAM_OVER`] bytes whose whole text is the only part
//! of it asked for (`BODY[]`, `BODY.PEEK[]`, `RFC822`: what clients use to
//! download a message) is not loaded at all: it is read from the store and
//! sent in pieces of [`PIECE`] bytes.
//!
//! Reading a body without `.PEEK` sets `\Seen` (unless the mailbox is
//! read-only) before the data is sent, and the response carries the new
//! FLAGS.
//!
//! Invariant: a FETCH never describes a message it did not read. The
//! session may list a message that another session or process expunged
//! after its last sync; the reads then miss it, and it is left out of the
//! answer (RFC 9051 §7.5.1), rather than described from an empty text as an
//! empty message, which clients would cache for good (issue #13).

use std::num::{NonZeroU32, NonZeroU64};

use imap_codec::ResponseCodec;
use imap_codec::encode::Encoder;
use imap_types::command::{FetchModifier, StoreModifier};
use imap_types::core::{Atom, IString, Literal, NString, NString8, Vec1};
use imap_types::datetime::DateTime;
use imap_types::extensions::binary::Literal8;
use imap_types::fetch::{MacroOrMessageDataItemNames, MessageDataItem, MessageDataItemName};
use imap_types::flag::{Flag, FlagFetch, StoreResponse, StoreType};
use imap_types::response::{Data, Response};
use imap_types::sequence::SequenceSet;
use mailroom_mime::Summary;
use mailroom_store::{FlagOp, MessageMeta, flag_bits};

use crate::ImapServer;
use crate::selected::{SYSTEM_FLAGS, Selected, nz, uid_set, write_flags_fetch};
use crate::session::{Failure, Io, Outcome, Phase, State, flags_to_store};

/// Messages whose text is loaded and answered at a time.
const BATCH: usize = 64;

/// Messages larger than this are sent piece by piece (see the module docs).
const STREAM_OVER: u64 = 1 << 20;

/// Bytes read from the store and written to the client at a time when a
/// message is sent piece by piece.
const PIECE: usize = 256 << 10;

/// Whether a data item is cut from the message text.
fn wants_text(name: &MessageDataItemName<'_>) -> bool {
    matches!(
        name,
        MessageDataItemName::BodyExt { .. }
            | MessageDataItemName::Rfc822
            | MessageDataItemName::Rfc822Header
            | MessageDataItemName::Rfc822Text
            | MessageDataItemName::Binary { .. }
            | MessageDataItemName::BinarySize { .. }
    )
}

/// FETCH and UID FETCH.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn fetch(
    server: &ImapServer,
    io: &mut Io,
    state: &mut State,
    set: &SequenceSet,
    names: MacroOrMessageDataItemNames<'_>,
    uid: bool,
    modifiers: &[FetchModifier],
    lifted: &crate::preparse::Lifted,
) -> Outcome {
    let mut items: Vec<MessageDataItemName<'_>> = match names {
        MacroOrMessageDataItemNames::Macro(m) => m
            .expand()
            .into_iter()
            .map(imap_types::IntoStatic::into_static)
            .collect(),
        MacroOrMessageDataItemNames::MessageDataItemNames(v) => v,
    };
    let mut changed_since = None;
    let mut vanished = false;
    for m in modifiers {
        match m {
            FetchModifier::ChangedSince(v) => changed_since = Some(v.get()),
            FetchModifier::Vanished => vanished = true,
        }
    }
    if vanished && (!uid || changed_since.is_none() || !state.qresync) {
        return Err(Failure::Bad(
            "VANISHED needs UID FETCH with CHANGEDSINCE and QRESYNC enabled".into(),
        ));
    }
    if changed_since.is_some() || items.contains(&MessageDataItemName::ModSeq) {
        state.enable_condstore(io);
    }
    if uid && !items.contains(&MessageDataItemName::Uid) {
        items.insert(0, MessageDataItemName::Uid);
    }
    if changed_since.is_some() && !items.contains(&MessageDataItemName::ModSeq) {
        items.push(MessageDataItemName::ModSeq);
    }
    let Phase::Selected(sel) = &mut state.phase else {
        unreachable!("state checked")
    };
    let idx = sel.resolve(set, uid).map_err(|e| Failure::Bad(e.into()))?;
    if vanished && let Some(since) = changed_since {
        // RFC 7162 §3.2.6: expunges within the set since the client's MODSEQ.
        let changes = server.store.changes_since(sel.mailbox.id, since).await?;
        let last = sel
            .messages
            .last()
            .map_or(0, |m| m.uid)
            .max(sel.mailbox.uidnext);
        let wanted = crate::selected::expand_uids(set, last);
        let gone: Vec<u32> = changes
            .vanished
            .into_iter()
            .filter(|u| wanted.contains(u))
            .collect();
        if !gone.is_empty() {
            io.line(&format!("* VANISHED (EARLIER) {}", uid_set(&gone)));
        }
    }
    let mut idx: Vec<usize> = idx
        .into_iter()
        .filter(|&i| changed_since.is_none_or(|c| sel.messages[i].modseq > c))
        .collect();
    // Messages already gone from the store are left out (RFC 9051 §7.5.1 lets
    // the server omit them); the client hears of their expunge later.
    idx.retain(|&i| !sel.is_gone(sel.messages[i].uid));

    let needs_text =
        items.iter().any(wants_text) || lifted.fetch_object.iter().any(|n| n == "PREVIEW");
    // The one item that wants the text, when it wants all of it as it is:
    // large messages are then sent piece by piece, under this name.
    // (OBJECTID items are added to the encoded line, so no streaming then.)
    let whole_text: Option<&'static str> = {
        let mut wanting = items.iter().filter(|n| wants_text(n));
        match (wanting.next(), wanting.next()) {
            _ if !lifted.fetch_object.is_empty() => None,
            (
                Some(MessageDataItemName::BodyExt {
                    section: None,
                    partial: None,
                    ..
                }),
                None,
            ) => Some("BODY[]"),
            (Some(MessageDataItemName::Rfc822), None) => Some("RFC822"),
            _ => None,
        }
    };
    let needs_summary = items.iter().any(|n| {
        matches!(
            n,
            MessageDataItemName::Body
                | MessageDataItemName::BodyStructure
                | MessageDataItemName::Envelope
        )
    });
    let sets_seen = !sel.read_only
        && items.iter().any(|n| {
            matches!(
                n,
                MessageDataItemName::BodyExt { peek: false, .. }
                    | MessageDataItemName::Binary { peek: false, .. }
                    | MessageDataItemName::Rfc822
                    | MessageDataItemName::Rfc822Text
            )
        });
    let mut flags_changed: std::collections::HashSet<u32> = std::collections::HashSet::new();
    if sets_seen {
        let unseen: Vec<u32> = idx
            .iter()
            .map(|&i| &sel.messages[i])
            .filter(|m| m.flags & flag_bits::SEEN == 0)
            .map(|m| m.uid)
            .collect();
        if !unseen.is_empty() {
            let outcome = server
                .store
                .store_flags(
                    sel.mailbox.id,
                    &unseen,
                    FlagOp::Add,
                    flag_bits::SEEN,
                    &[],
                    None,
                )
                .await?;
            sel.own_write(outcome.highestmodseq, !outcome.updated.is_empty());
            for meta in outcome.updated {
                flags_changed.insert(meta.uid);
                replace_meta(sel, meta, &mut io.out);
            }
        }
    }
    let wants_flags = items.contains(&MessageDataItemName::Flags);
    let mut unknown_cte = false;
    for chunk in idx.chunks(BATCH) {
        let streamed: std::collections::HashSet<u32> = match whole_text {
            Some(_) => chunk
                .iter()
                .map(|&i| &sel.messages[i])
                .filter(|m| m.size > STREAM_OVER)
                .map(|m| m.uid)
                .collect(),
            None => std::collections::HashSet::new(),
        };
        let uids: Vec<u32> = chunk.iter().map(|&i| sel.messages[i].uid).collect();
        let loaded: Vec<u32> = uids
            .iter()
            .copied()
            .filter(|u| !streamed.contains(u))
            .collect();
        // Each read also tells the mailbox's HIGHESTMODSEQ: unchanged, the
        // sync after this FETCH needs no query of its own.
        let texts = if needs_text && !loaded.is_empty() {
            let (texts, seen) = server
                .store
                .message_texts_seen(sel.mailbox.id, &loaded)
                .await?;
            sel.saw_highestmodseq(seen);
            texts
        } else {
            Vec::new()
        };
        let caches = if needs_summary {
            let (caches, seen) = server
                .store
                .parse_caches_seen(sel.mailbox.id, &uids)
                .await?;
            sel.saw_highestmodseq(seen);
            caches
        } else {
            Vec::new()
        };
        let email_ids = if lifted.fetch_object.iter().any(|n| n == "EMAILID") {
            server.store.email_ids(sel.mailbox.id, &uids).await?
        } else {
            Vec::new()
        };
        let saved_dates = if lifted.fetch_object.iter().any(|n| n == "SAVEDATE") {
            server.store.saved_dates(sel.mailbox.id, &uids).await?
        } else {
            Vec::new()
        };
        for &i in chunk {
            let meta = &sel.messages[i];
            // The name of the item sent piece by piece, for a large message.
            let streaming = whole_text.filter(|_| streamed.contains(&meta.uid));
            let text = texts
                .iter()
                .find(|(u, _)| *u == meta.uid)
                .map(|(_, t)| t.as_slice());
            if needs_text && streaming.is_none() && text.is_none() {
                continue; // removed meanwhile
            }
            let summary = if needs_summary {
                match summary_of(server, sel.mailbox.id, meta.uid, &caches, text).await? {
                    Some(s) => Some(s),
                    None => continue, // removed meanwhile
                }
            } else {
                None
            };
            let mut out_items: Vec<MessageDataItem<'_>> = Vec::with_capacity(items.len() + 1);
            // The origin octet of each item that is a partial BINARY.
            let mut origins: Vec<Option<u32>> = Vec::with_capacity(items.len() + 1);
            let recent = sel.is_recent(meta.uid);
            for name in &items {
                if streaming.is_some() && wants_text(name) {
                    continue; // sent last, piece by piece
                }
                match item(name, meta, recent, text, summary.as_ref()) {
                    Ok(Some(it)) => {
                        out_items.push(it);
                        origins.push(match name {
                            MessageDataItemName::Binary {
                                partial: Some((origin, _)),
                                ..
                            } => Some(*origin),
                            _ => None,
                        });
                    }
                    Ok(None) => {}
                    Err(()) => unknown_cte = true,
                }
            }
            if flags_changed.contains(&meta.uid) && !wants_flags {
                out_items.push(MessageDataItem::Flags(flag_list(meta, recent)));
                origins.push(None);
            }
            if let Some(name) = streaming {
                send_in_pieces(server, io, sel.mailbox.id, meta.uid, i + 1, out_items, name)
                    .await?;
                continue;
            }
            if !lifted.fetch_object.is_empty() {
                // OBJECTID items (crate::objectid), after the codec's.
                let email_id = email_ids
                    .iter()
                    .find(|(u, _)| *u == meta.uid)
                    .map(|(_, id)| id.as_str());
                if email_id.is_none() && lifted.fetch_object.iter().any(|n| n == "EMAILID") {
                    continue; // removed meanwhile
                }
                let saved = saved_dates
                    .iter()
                    .find(|(u, _)| *u == meta.uid)
                    .map(|(_, t)| *t);
                if saved.is_none() && lifted.fetch_object.iter().any(|n| n == "SAVEDATE") {
                    continue; // removed meanwhile
                }
                let preview = text.map(mailroom_mime::preview);
                let extra = crate::objectid::fetch_items(
                    &lifted.fetch_object,
                    email_id,
                    saved,
                    preview.as_deref(),
                );
                if lifted.fetch_object_only && !uid {
                    // The `UID` put in for an emptied list was not asked for.
                    let n = out_items.len();
                    out_items.retain(|it| !matches!(it, MessageDataItem::Uid(_)));
                    origins.truncate(out_items.len().min(n));
                }
                let mut line = encode_fetch(i + 1, out_items, &origins)
                    .unwrap_or_else(|| format!("* {} FETCH ()\r\n", i + 1).into_bytes());
                let at = line.len() - 3;
                let extra = if line[at - 1] == b'(' {
                    extra.trim_start().to_string()
                } else {
                    extra
                };
                line.splice(at..at, extra.into_bytes());
                io.out.extend_from_slice(&line);
                continue;
            }
            if let Some(encoded) = encode_fetch(i + 1, out_items, &origins) {
                io.out.extend_from_slice(&encoded);
            }
        }
        if io.out.len() > 1 << 20 {
            io.flush(server.settings.authenticated_idle_timeout)
                .await
                .map_err(|_| Failure::No("the client stopped reading".into()))?;
        }
    }
    if unknown_cte {
        return Err(Failure::No(
            "[UNKNOWN-CTE] a part has an unknown content-transfer-encoding".into(),
        ));
    }
    Ok(format!(
        "OK {}FETCH completed",
        if uid { "UID " } else { "" }
    ))
}

/// The summary of a message (ENVELOPE, BODY, BODYSTRUCTURE): its parse
/// cache as `caches` (this batch's read) holds it, else parsed from its text
/// (`text`, or read now when the batch read none). `None` when the message
/// is gone: missing from the read while no text of it is at hand, or
/// missing when read. The session may still list a message another session
/// (or process) expunged after its last sync; such a message is left out
/// (RFC 9051 §7.5.1), never described as the empty text it reads as,
/// which clients would cache for good (issue #13).
async fn summary_of(
    server: &ImapServer,
    mailbox_id: i64,
    uid: u32,
    caches: &[(u32, Option<String>)],
    text: Option<&[u8]>,
) -> Result<Option<Summary>, Failure> {
    let cache = caches.iter().find(|(u, _)| *u == uid).map(|(_, c)| c);
    if let Some(summary) = cache
        .and_then(|c| c.as_deref())
        .and_then(Summary::from_json)
    {
        return Ok(Some(summary));
    }
    if let Some(text) = text {
        return Ok(Some(Summary::parse(text)));
    }
    if cache.is_none() {
        return Ok(None);
    }
    // Stored without a parse cache (or an unreadable one): from the text.
    let text = server.store.read_message(mailbox_id, uid).await?;
    Ok(text.map(|t| Summary::parse(&t)))
}

/// Sends one FETCH response whose last item, `name` (`BODY[]` or
/// `RFC822`), is the message's whole text read from the store piece by
/// piece; `items` are the response's other items. Nothing is sent when the
/// message is gone. A failure once the literal has begun closes the
/// connection: the client could not tell the rest from the message.
async fn send_in_pieces(
    server: &ImapServer,
    io: &mut Io,
    mailbox_id: i64,
    uid: u32,
    seq: usize,
    items: Vec<MessageDataItem<'_>>,
    name: &str,
) -> Result<(), Failure> {
    let Some(mut reader) = server.store.open_text(mailbox_id, uid, PIECE).await? else {
        return Ok(()); // removed meanwhile
    };
    let mut head = match encode_fetch(seq, items, &[]) {
        Some(mut encoded) => {
            // `* n FETCH (…)\r\n`: open the list again for one more item.
            encoded.truncate(encoded.len() - 3);
            encoded.push(b' ');
            encoded
        }
        None => format!("* {seq} FETCH (").into_bytes(),
    };
    head.extend_from_slice(format!("{name} {{{}}}\r\n", reader.len()).as_bytes());
    io.out.extend_from_slice(&head);
    let timeout = server.settings.authenticated_idle_timeout;
    loop {
        let piece = match reader.next_piece().await {
            Ok(Some(piece)) => piece,
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(error = %e, uid, "FETCH: reading the message failed midway; closing");
                io.abort();
                return Err(e.into());
            }
        };
        // Written out PIECE bytes at a time (the store may give more at
        // once), so that the output buffer stays small.
        for part in piece.chunks(PIECE) {
            // As `literal` does: NUL cannot be sent in a literal.
            io.out
                .extend(part.iter().map(|&b| if b == 0 { 0x80 } else { b }));
            if io.out.len() >= PIECE && io.flush(timeout).await.is_err() {
                io.abort();
                return Err(Failure::No("the client stopped reading".into()));
            }
        }
    }
    io.out.extend_from_slice(b")\r\n");
    Ok(())
}

/// `* seq FETCH (items)\r\n`, or `None` without items. `origins[i]` is
/// the origin octet of item `i` when it is a partial BINARY: the codec has
/// no place for it, so such an item is encoded alone and `<origin>` put
/// after its section (`BINARY[1]<0> ~{7}`, RFC 3516 §4.2, as `BODY[]<0>`).
fn encode_fetch(
    seq: usize,
    items: Vec<MessageDataItem<'_>>,
    origins: &[Option<u32>],
) -> Option<Vec<u8>> {
    let encode = |items: Vec1<MessageDataItem<'_>>| {
        let response = Response::Data(Data::Fetch {
            seq: nz(seq),
            items,
        });
        ResponseCodec::default().encode(&response).dump()
    };
    if origins.iter().all(Option::is_none) {
        return Vec1::try_from(items).ok().map(encode);
    }
    let open = format!("* {seq} FETCH (");
    let mut out = open.clone().into_bytes();
    for (n, (it, origin)) in items.into_iter().zip(origins).enumerate() {
        let alone = encode(Vec1::from(it));
        debug_assert!(alone.starts_with(open.as_bytes()) && alone.ends_with(b")\r\n"));
        // `* seq FETCH (` item `)\r\n`.
        let mut it = alone[open.len()..alone.len() - 3].to_vec();
        if let Some(origin) = origin
            && let Some(at) = it.iter().position(|&b| b == b']')
        {
            let mark = format!("<{origin}>");
            it.splice(at + 1..at + 1, mark.bytes());
        }
        if n > 0 {
            out.push(b' ');
        }
        out.extend_from_slice(&it);
    }
    out.extend_from_slice(b")\r\n");
    Some(out)
}

/// Replaces the session's metadata of a message after a change it made,
/// announcing into `out` the keywords it brings that the client was not
/// told of (its own, or another session's read back with it).
fn replace_meta(sel: &mut Selected, meta: MessageMeta, out: &mut Vec<u8>) {
    if let Some(seq) = sel.seq_of(meta.uid) {
        sel.messages[seq - 1] = meta;
        sel.announce_keywords([seq - 1], out);
    }
}

/// The FLAGS of a message for the codec.
/// The flags of a message for FETCH; `recent`: `\Recent` in this session.
fn flag_list(meta: &MessageMeta, recent: bool) -> Vec<FlagFetch<'static>> {
    let mut out = Vec::new();
    for (bit, _) in SYSTEM_FLAGS {
        if meta.flags & bit != 0 {
            out.push(FlagFetch::Flag(match bit {
                flag_bits::ANSWERED => Flag::Answered,
                flag_bits::FLAGGED => Flag::Flagged,
                flag_bits::DELETED => Flag::Deleted,
                flag_bits::SEEN => Flag::Seen,
                _ => Flag::Draft,
            }));
        }
    }
    if recent {
        out.push(FlagFetch::Recent);
    }
    for k in &meta.keywords {
        if let Ok(atom) = Atom::try_from(k.clone()) {
            out.push(FlagFetch::Flag(Flag::Keyword(atom)));
        }
    }
    out
}

/// Bytes as a literal. NUL is not allowed in IMAP strings; like Dovecot,
/// a NUL in a stored message is sent as 0x80.
fn literal(mut data: Vec<u8>) -> NString<'static> {
    if data.contains(&0) {
        for b in &mut data {
            if *b == 0 {
                *b = 0x80;
            }
        }
    }
    match Literal::try_from(data) {
        Ok(l) => NString(Some(IString::Literal(l))),
        Err(_) => NString(None),
    }
}

/// `<origin.length>` of a partial fetch.
fn partial(data: Vec<u8>, range: Option<(u32, NonZeroU32)>) -> Vec<u8> {
    match range {
        None => data,
        Some((origin, len)) => {
            let start = (origin as usize).min(data.len());
            let end = start.saturating_add(len.get() as usize).min(data.len());
            data[start..end].to_vec()
        }
    }
}

/// One data item of one message. `Err` for an unknown transfer encoding.
fn item<'a>(
    name: &MessageDataItemName<'a>,
    meta: &MessageMeta,
    recent: bool,
    text: Option<&[u8]>,
    summary: Option<&Summary>,
) -> Result<Option<MessageDataItem<'a>>, ()> {
    let text = match text {
        Some(text) => text,
        // Never cut from a text that was not read: the caller leaves out a
        // message whose text it wanted and did not get (it is gone).
        None if wants_text(name) => return Ok(None),
        None => &[],
    };
    Ok(Some(match name {
        MessageDataItemName::Flags => MessageDataItem::Flags(flag_list(meta, recent)),
        MessageDataItemName::Uid => MessageDataItem::Uid(nz(meta.uid as usize)),
        MessageDataItemName::Rfc822Size => {
            MessageDataItem::Rfc822Size(u32::try_from(meta.size).unwrap_or(u32::MAX))
        }
        MessageDataItemName::InternalDate => {
            let utc = chrono::DateTime::from_timestamp(meta.internal_date, 0).unwrap_or_default();
            let fixed = utc.with_timezone(&chrono::FixedOffset::east_opt(0).expect("zero offset"));
            match DateTime::try_from(fixed) {
                Ok(d) => MessageDataItem::InternalDate(d),
                Err(_) => return Ok(None),
            }
        }
        MessageDataItemName::ModSeq => {
            MessageDataItem::ModSeq(NonZeroU64::new(meta.modseq).unwrap_or(NonZeroU64::MIN))
        }
        MessageDataItemName::Envelope => match summary {
            Some(s) => MessageDataItem::Envelope(s.envelope()),
            None => return Ok(None),
        },
        MessageDataItemName::Body => match summary {
            Some(s) => MessageDataItem::Body(s.body_structure(false)),
            None => return Ok(None),
        },
        MessageDataItemName::BodyStructure => match summary {
            Some(s) => MessageDataItem::BodyStructure(s.body_structure(true)),
            None => return Ok(None),
        },
        MessageDataItemName::BodyExt {
            section,
            partial: range,
            ..
        } => {
            // A part that does not exist reads as NIL (RFC 9051 §6.4.5).
            let data = match mailroom_mime::section(text, section.as_ref()) {
                Some(data) => literal(partial(data, *range)),
                None => NString(None),
            };
            MessageDataItem::BodyExt {
                section: section.clone(),
                origin: range.map(|r| r.0),
                data,
            }
        }
        MessageDataItemName::Rfc822 => MessageDataItem::Rfc822(literal(text.to_vec())),
        MessageDataItemName::Rfc822Header => {
            let data =
                mailroom_mime::section(text, Some(&imap_types::fetch::Section::Header(None)))
                    .unwrap_or_default();
            MessageDataItem::Rfc822Header(literal(data))
        }
        MessageDataItemName::Rfc822Text => {
            let data = mailroom_mime::section(text, Some(&imap_types::fetch::Section::Text(None)))
                .unwrap_or_default();
            MessageDataItem::Rfc822Text(literal(data))
        }
        MessageDataItemName::Binary {
            section,
            partial: range,
            ..
        } => {
            let part: Vec<u32> = section.iter().map(|n| n.get()).collect();
            // A part the message does not have is NIL, as for BODY[part]:
            // only an undecodable encoding is `NO [UNKNOWN-CTE]` (RFC 3516 §4.3).
            let value = match mailroom_mime::binary_section(text, &part) {
                Ok(data) => NString8::Literal8(Literal8 {
                    data: partial(data, *range).into(),
                    mode: imap_types::core::LiteralMode::Sync,
                }),
                Err(mailroom_mime::BinaryError::NoSuchPart) => {
                    NString8::NString(imap_types::core::NString(None))
                }
                Err(_) => return Err(()),
            };
            MessageDataItem::Binary {
                section: section.clone(),
                value,
            }
        }
        MessageDataItemName::BinarySize { section } => {
            let part: Vec<u32> = section.iter().map(|n| n.get()).collect();
            let size = match mailroom_mime::binary_section(text, &part) {
                Ok(data) => u32::try_from(data.len()).unwrap_or(u32::MAX),
                Err(mailroom_mime::BinaryError::NoSuchPart) => 0,
                Err(_) => return Err(()),
            };
            MessageDataItem::BinarySize {
                section: section.clone(),
                size,
            }
        }
    }))
}

/// STORE and UID STORE.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn store(
    server: &ImapServer,
    io: &mut Io,
    state: &mut State,
    set: &SequenceSet,
    kind: StoreType,
    response: StoreResponse,
    flags: &[Flag<'_>],
    uid: bool,
    modifiers: &[StoreModifier],
) -> Outcome {
    let mut unchanged_since = None;
    for m in modifiers {
        let StoreModifier::UnchangedSince(v) = m;
        unchanged_since = Some(*v);
    }
    if unchanged_since.is_some() {
        state.enable_condstore(io);
    }
    let condstore = state.condstore;
    let Phase::Selected(sel) = &mut state.phase else {
        unreachable!("state checked")
    };
    if sel.read_only {
        return Err(Failure::No("[READ-ONLY] the mailbox is read-only".into()));
    }
    let idx = sel.resolve(set, uid).map_err(|e| Failure::Bad(e.into()))?;
    let uids: Vec<u32> = idx
        .iter()
        .map(|&i| sel.messages[i].uid)
        .filter(|u| !sel.is_gone(*u))
        .collect();
    let (bits, keywords) = flags_to_store(flags);
    let op = match kind {
        StoreType::Add => FlagOp::Add,
        StoreType::Remove => FlagOp::Remove,
        StoreType::Replace => FlagOp::Replace,
    };
    // Nothing to change (every message is already as asked, in the
    // session's view) and the process knows that view to be the mailbox's
    // state: done without a write. Clients often set \Seen again on what
    // is seen. (A change another process committed a moment ago and this
    // one has not heard of yet orders after this STORE, as if it had come
    // a moment later.)
    let outcome = if unchanged_since.is_none()
        && keywords.is_empty()
        && server.store.is_current(sel.mailbox.id, sel.modseq)
        && uids.iter().all(|u| {
            sel.seq_of(*u)
                .map(|seq| &sel.messages[seq - 1])
                .is_some_and(|m| match op {
                    FlagOp::Add => m.flags & bits == bits,
                    FlagOp::Remove => m.flags & bits == 0,
                    FlagOp::Replace => m.flags == bits && m.keywords.is_empty(),
                })
        }) {
        mailroom_store::StoreOutcome {
            updated: Vec::new(),
            modified: Vec::new(),
            highestmodseq: sel.modseq,
        }
    } else {
        server
            .store
            .store_flags(sel.mailbox.id, &uids, op, bits, &keywords, unchanged_since)
            .await?
    };
    let updated: std::collections::HashSet<u32> = outcome.updated.iter().map(|m| m.uid).collect();
    // When the store's HIGHESTMODSEQ is ours (or ours + this write), nobody
    // else changed the mailbox since the last sync: what this STORE wrote is
    // all there is to know, and the sync after it needs no query.
    sel.own_write(outcome.highestmodseq, !updated.is_empty());
    for meta in outcome.updated {
        replace_meta(sel, meta, &mut io.out);
    }
    let refused: std::collections::HashSet<u32> = outcome.modified.iter().copied().collect();
    for &u in &uids {
        if refused.contains(&u) {
            continue;
        }
        let Some(seq) = sel.seq_of(u) else { continue };
        let meta = &sel.messages[seq - 1];
        match response {
            StoreResponse::Answer => {
                let recent = sel.is_recent(meta.uid);
                write_flags_fetch(&mut io.out, seq, meta, recent, uid, condstore)
            }
            StoreResponse::Silent => {
                // RFC 7162 §3.1.3: with CONDSTORE the new MODSEQ is reported even for .SILENT.
                if condstore && updated.contains(&u) {
                    let uid_part = if uid {
                        format!("UID {} ", meta.uid)
                    } else {
                        String::new()
                    };
                    io.line(&format!(
                        "* {seq} FETCH ({uid_part}MODSEQ ({}))",
                        meta.modseq
                    ));
                }
            }
        }
    }
    let verb = if uid { "UID STORE" } else { "STORE" };
    if outcome.modified.is_empty() {
        Ok(format!("OK {verb} completed"))
    } else {
        // RFC 7162 §3.1.3: MODIFIED lists what UNCHANGEDSINCE refused
        // (UIDs for UID STORE, message numbers otherwise).
        let mut refused_ids: Vec<u32> = if uid {
            outcome.modified.clone()
        } else {
            outcome
                .modified
                .iter()
                .filter_map(|u| sel.seq_of(*u).map(|s| s as u32))
                .collect()
        };
        refused_ids.sort_unstable();
        Ok(format!(
            "OK [MODIFIED {}] conditional {verb} failed for some messages",
            uid_set(&refused_ids)
        ))
    }
}
