//! METADATA (RFC 5464): GETMETADATA and SETMETADATA for server entries
//! (mailbox `""`) and mailbox entries, `/private/...` and `/shared/...`,
//! stored through `mailroom_store` (`Store::get_metadata`/`set_metadata`).
//!
//! Invariants:
//! - Entry names are checked before anything is read or written (RFC 5464
//!   §3.2: they begin with `/private/` or `/shared/`, contain no `*`, `%`
//!   or `//`, do not end with `/`, and are 7-bit printable); a bad one is
//!   `BAD`. They are case-insensitive and kept lower-cased.
//! - Limits (RFC 5464 §4.3): a value over [`MAX_VALUE_SIZE`] is refused
//!   with `NO [METADATA MAXSIZE n]`; a SETMETADATA that would leave more
//!   than [`MAX_ENTRIES`] entries on the server or on one mailbox is
//!   refused with `NO [METADATA TOOMANY]`. A refused SETMETADATA changes
//!   nothing (the store applies it in one transaction).
//! - Both `/private` and `/shared` are kept, so `[METADATA NOPRIVATE]` is
//!   never sent. There is no mailbox sharing: `/shared` entries are seen
//!   by the owning account only, and server entries are per account (as in
//!   Dovecot).
//! - GETMETADATA's MAXSIZE leaves out longer values and reports the
//!   longest one left out with `OK [METADATA LONGENTRIES n]` (§4.2.1);
//!   DEPTH 0, 1 and infinity select the entry, its children, or its whole
//!   subtree (§4.2.2). Without DEPTH a requested entry that does not exist
//!   is answered with NIL; with DEPTH only what exists is listed (both as
//!   Dovecot 2.3 answers).

use imap_types::core::{AString, IString, NString, NString8};
use imap_types::extensions::metadata::{Depth, Entry, EntryValue, GetMetadataOption};
use imap_types::mailbox::Mailbox as WireMailbox;

use crate::ImapServer;
use crate::session::{Failure, Io, Outcome, State, existing_mailbox, mailbox_name};

/// The largest value a client may store, in bytes.
pub const MAX_VALUE_SIZE: usize = 64 * 1024;
/// The most entries the server scope or one mailbox may hold.
pub const MAX_ENTRIES: usize = 100;
/// The longest entry name, in bytes.
const MAX_ENTRY_LEN: usize = 255;

/// The scope a mailbox argument names: `None` for the server (`""`).
async fn scope(
    server: &ImapServer,
    state: &State,
    mailbox: &WireMailbox<'_>,
) -> Result<Option<i64>, Failure> {
    if let WireMailbox::Other(other) = mailbox
        && other.as_ref().is_empty()
    {
        return Ok(None);
    }
    let name = mailbox_name(state, mailbox)?;
    Ok(Some(existing_mailbox(server, state, &name).await?.id))
}

/// A valid entry name, lower-cased.
fn entry_name(entry: &Entry<'_>) -> Result<String, Failure> {
    let raw: &AString<'_> = entry.inner();
    let bytes = raw.as_ref();
    let text = std::str::from_utf8(bytes)
        .ok()
        .filter(|t| t.bytes().all(|b| (0x21..0x7f).contains(&b)))
        .ok_or_else(|| Failure::Bad("entry names are 7-bit printable".into()))?
        .to_ascii_lowercase();
    let valid = (text.starts_with("/private/") || text.starts_with("/shared/"))
        && !text.ends_with('/')
        && !text.contains("//")
        && !text.contains(['*', '%'])
        && text.len() <= MAX_ENTRY_LEN;
    if !valid {
        return Err(Failure::Bad(format!("invalid entry name {text}")));
    }
    Ok(text)
}

fn value_bytes(value: &NString8<'_>) -> Option<Vec<u8>> {
    match value {
        NString8::NString(NString(None)) => None,
        NString8::NString(NString(Some(s))) => Some(istring(s).to_vec()),
        NString8::Literal8(l) => Some(l.data.to_vec()),
    }
}

fn istring<'s>(s: &'s IString<'_>) -> &'s [u8] {
    s.as_ref()
}

/// SETMETADATA (RFC 5464 §4.3).
pub(crate) async fn set(
    server: &ImapServer,
    state: &State,
    mailbox: &WireMailbox<'_>,
    values: &[EntryValue<'_>],
) -> Outcome {
    let mut changes = Vec::with_capacity(values.len());
    for ev in values {
        let name = entry_name(&ev.entry)?;
        let value = value_bytes(&ev.value);
        if let Some(v) = &value
            && v.len() > MAX_VALUE_SIZE
        {
            return Err(Failure::No(format!(
                "[METADATA MAXSIZE {MAX_VALUE_SIZE}] value too large"
            )));
        }
        changes.push((name, value));
    }
    let scope = scope(server, state, mailbox).await?;
    let stored = server
        .store
        .set_metadata(state.account_id(), scope, &changes, MAX_ENTRIES)
        .await?;
    if !stored {
        return Err(Failure::No(
            "[METADATA TOOMANY] too many entries".to_string(),
        ));
    }
    Ok("OK SETMETADATA completed".into())
}

/// GETMETADATA (RFC 5464 §4.2).
pub(crate) async fn get(
    server: &ImapServer,
    io: &mut Io,
    state: &State,
    options: &[GetMetadataOption],
    mailbox: &WireMailbox<'_>,
    entries: &[Entry<'_>],
) -> Outcome {
    let mut max_size = None;
    let mut depth = Depth::Null;
    for o in options {
        match o {
            GetMetadataOption::MaxSize(n) => max_size = Some(*n as usize),
            GetMetadataOption::Depth(d) => depth = d.clone(),
        }
    }
    let wanted = entries
        .iter()
        .map(entry_name)
        .collect::<Result<Vec<_>, _>>()?;
    let scope = scope(server, state, mailbox).await?;
    let stored = server.store.get_metadata(state.account_id(), scope).await?;

    let mut found: Vec<(&str, Option<&[u8]>)> = Vec::new();
    let mut longest_left_out = 0usize;
    for want in &wanted {
        let prefix = format!("{want}/");
        let own = stored.iter().filter(|(name, _)| name == want);
        let below = stored.iter().filter(|(name, _)| match depth {
            Depth::Null => false,
            Depth::One => name
                .strip_prefix(&prefix)
                .is_some_and(|rest| !rest.contains('/')),
            Depth::Infinity => name.starts_with(&prefix),
        });
        if matches!(depth, Depth::Null)
            && !stored.iter().any(|(name, _)| name == want)
            && !found.iter().any(|(n, _)| n == want)
        {
            found.push((want, None));
        }
        for (name, value) in own.chain(below) {
            if found.iter().any(|(n, _)| *n == name.as_str()) {
                continue;
            }
            if max_size.is_some_and(|m| value.len() > m) {
                longest_left_out = longest_left_out.max(value.len());
                continue;
            }
            found.push((name, Some(value)));
        }
    }
    if !found.is_empty() {
        let mbox = match scope {
            None => "\"\"".to_string(),
            Some(_) => crate::names::quote(&mailbox_name(state, mailbox)?, state.utf8),
        };
        io.out
            .extend_from_slice(format!("* METADATA {mbox} (").as_bytes());
        for (i, (name, value)) in found.iter().enumerate() {
            if i > 0 {
                io.out.push(b' ');
            }
            io.out.extend_from_slice(name.as_bytes());
            io.out.push(b' ');
            write_value(&mut io.out, *value);
        }
        io.out.extend_from_slice(b")\r\n");
    }
    if longest_left_out > 0 {
        return Ok(format!(
            "OK [METADATA LONGENTRIES {longest_left_out}] GETMETADATA completed"
        ));
    }
    Ok("OK GETMETADATA completed".into())
}

/// A value as NIL, a quoted string, a literal, or a literal8 when it holds
/// a NUL (RFC 5464 §5: `value = nstring / literal8`).
fn write_value(out: &mut Vec<u8>, value: Option<&[u8]>) {
    let Some(v) = value else {
        out.extend_from_slice(b"NIL");
        return;
    };
    let quotable = v.len() <= 1024
        && v.iter()
            .all(|&b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\');
    if quotable {
        out.push(b'"');
        out.extend_from_slice(v);
        out.push(b'"');
    } else {
        let tilde = if v.contains(&0) { "~" } else { "" };
        out.extend_from_slice(format!("{tilde}{{{}}}\r\n", v.len()).as_bytes());
        out.extend_from_slice(v);
    }
}
