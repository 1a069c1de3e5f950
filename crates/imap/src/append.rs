//! MULTIAPPEND (RFC 3502): `APPEND mailbox [flags] [date] literal
//! ([flags] [date] literal)*`, several messages in one command.
//!
//! `imap-codec` 2.0.0-alpha decodes an APPEND of one message only
//! (`CommandBody::Append` carries one literal), and refuses the rest of a
//! MULTIAPPEND as trailing bytes. [`split`] (called by
//! [`crate::preparse::lift`]) cuts a MULTIAPPEND into single APPEND
//! commands: the first goes to the codec as usual, the others are decoded
//! by the codec one by one when the command runs ([`multi`]), so flags,
//! dates and literals are checked exactly as for a single APPEND.
//!
//! Invariants:
//! * all or nothing (RFC 3502 §6.3.11): a message that does not decode (bad
//!   flag, bad date) makes the command `BAD` before anything is stored; a
//!   literal over the size limit is refused with `NO [TOOBIG]` by the framer
//!   before it is sent, and the whole command is discarded; the store
//!   appends the set in one transaction
//!   ([`mailroom_store::Store::append_messages_to`]), the quota charged for
//!   the whole set (`NO [OVERQUOTA]`, nothing stored);
//! * one `APPENDUID uidvalidity uid-set` (RFC 4315 §3) with every new UID,
//!   in the order the messages were given;
//! * only the message parts are cut: mailbox names, quoted strings and
//!   literals are skipped by their syntax, never searched for keywords;
//! * a run of spaces before a message counts as the one SP of the grammar
//!   (Python imapclient 3's and 4's `multiappend()` send two; Dovecot takes
//!   them); each cut APPEND has exactly one.

use imap_codec::CommandCodec;
use imap_codec::decode::Decoder;
use imap_types::command::CommandBody;
use imap_types::extensions::binary::LiteralOrLiteral8;
use mailroom_store::{AppendMessage, StoreError};

use crate::ImapServer;
use crate::selected::uid_set;
use crate::session::{Failure, Outcome, State, flags_to_store, mailbox_name};

/// Cuts the MULTIAPPEND `message` (a complete command whose arguments start
/// at `at`, after `APPEND `) into single APPENDs: the first (for the codec)
/// and the others. `None` when it holds one message or does not parse (the
/// codec then decides).
pub(crate) fn split(message: &[u8], at: usize) -> Option<(Vec<u8>, Vec<Vec<u8>>)> {
    let mailbox_len = token_len(&message[at..])?;
    let mailbox = &message[at..at + mailbox_len];
    let mut p = at + mailbox_len;
    let mut parts = Vec::new();
    loop {
        if message.get(p) != Some(&b' ') {
            return None;
        }
        // One SP by the grammar; imapclient's multiappend() sends two
        // between messages, which Dovecot accepts, so more are skipped.
        while message.get(p) == Some(&b' ') {
            p += 1;
        }
        let start = p;
        if message.get(p) == Some(&b'(') {
            p += message[p..].iter().position(|&b| b == b')')? + 1;
            if message.get(p) != Some(&b' ') {
                return None;
            }
            p += 1;
        }
        if message.get(p) == Some(&b'"') {
            p += 1 + message[p + 1..].iter().position(|&b| b == b'"')? + 1;
            if message.get(p) != Some(&b' ') {
                return None;
            }
            p += 1;
        }
        if message.get(p) == Some(&b'~') {
            p += 1;
        }
        p += literal_len(&message[p..])?;
        parts.push(start..p);
        match &message[p..] {
            b"\r\n" | b"\n" => break,
            [b' ', ..] => continue,
            _ => return None,
        }
    }
    if parts.len() < 2 {
        return None;
    }
    let tail = &message[parts[0].end..];
    let ending: &[u8] = if tail.ends_with(b"\r\n") {
        b"\r\n"
    } else {
        b"\n"
    };
    let mut first = message[..parts[0].end].to_vec();
    first.extend_from_slice(ending);
    let head = &message[..at];
    let more = parts[1..]
        .iter()
        .map(|r| {
            let mut m = head.to_vec();
            m.extend_from_slice(mailbox);
            m.push(b' ');
            m.extend_from_slice(&message[r.clone()]);
            m.extend_from_slice(ending);
            m
        })
        .collect();
    Some((first, more))
}

/// The length of the astring at the start of `s`: an atom, a quoted
/// string or a literal.
fn token_len(s: &[u8]) -> Option<usize> {
    match s.first()? {
        b'{' => literal_len(s),
        _ => crate::preparse::astring_len(s),
    }
}

/// The length of the literal `{n}CRLF…` or `{n+}CRLF…` at the start of `s`,
/// its data included.
fn literal_len(s: &[u8]) -> Option<usize> {
    if s.first() != Some(&b'{') {
        return None;
    }
    let close = s.iter().position(|&b| b == b'}')?;
    let digits = s[1..close].strip_suffix(b"+").unwrap_or(&s[1..close]);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: usize = std::str::from_utf8(digits).ok()?.parse().ok()?;
    let mut p = close + 1;
    if s.get(p) == Some(&b'\r') {
        p += 1;
    }
    if s.get(p) != Some(&b'\n') {
        return None;
    }
    let end = p + 1 + n;
    (end <= s.len()).then_some(end)
}

/// One decoded message of the set.
struct Part {
    data: Vec<u8>,
    flags: i64,
    keywords: Vec<String>,
    date: i64,
}

fn part(body: CommandBody<'_>) -> Option<Part> {
    match body {
        CommandBody::Append {
            flags,
            date,
            message,
            ..
        } => {
            let data = match &message {
                LiteralOrLiteral8::Literal(l) => l.as_ref().to_vec(),
                LiteralOrLiteral8::Literal8(l) => l.data.as_ref().to_vec(),
            };
            let (flags, keywords) = flags_to_store(&flags);
            let date = date
                .map(|d| d.as_ref().timestamp())
                .unwrap_or_else(mailroom_store::now);
            Some(Part {
                data,
                flags,
                keywords,
                date,
            })
        }
        _ => None,
    }
}

/// Runs a MULTIAPPEND: `first` is the codec's decoding of the first
/// message, `more` the other single APPENDs cut by [`split`].
pub(crate) async fn multi(
    server: &ImapServer,
    state: &mut State,
    first: CommandBody<'_>,
    more: &[Vec<u8>],
) -> Outcome {
    let CommandBody::Append { mailbox, .. } = &first else {
        return Err(Failure::Bad("not an APPEND".into()));
    };
    let name = mailbox_name(state, mailbox)?;
    let mut parts = Vec::with_capacity(more.len() + 1);
    parts.push(part(first).ok_or_else(|| Failure::Bad("not an APPEND".into()))?);
    for bytes in more {
        let Ok((b"", command)) = CommandCodec::default().decode(bytes) else {
            return Err(Failure::Bad(
                "syntax error in a message of the MULTIAPPEND".into(),
            ));
        };
        let p = part(command.body)
            .ok_or_else(|| Failure::Bad("syntax error in a message of the MULTIAPPEND".into()))?;
        parts.push(p);
    }
    if parts.iter().any(|p| p.data.is_empty()) {
        return Err(Failure::No("empty message".into()));
    }
    let caches: Vec<String> = parts
        .iter()
        .map(|p| mailroom_mime::Summary::parse(&p.data).to_json())
        .collect();
    let messages: Vec<AppendMessage<'_>> = parts
        .iter()
        .zip(&caches)
        .map(|(p, c)| AppendMessage {
            content: &p.data,
            flags: p.flags,
            keywords: &p.keywords,
            internal_date: p.date,
            parse_cache: Some(c),
        })
        .collect();
    match server
        .store
        .append_messages_to(state.account_id(), &name, &messages)
        .await
    {
        Ok((_, appended)) => {
            let uids: Vec<u32> = appended.iter().map(|a| a.uid).collect();
            let uidvalidity = appended.first().map(|a| a.uidvalidity).unwrap_or_default();
            Ok(format!(
                "OK [APPENDUID {uidvalidity} {}] APPEND completed",
                uid_set(&uids)
            ))
        }
        Err(StoreError::FailedPrecondition(m)) if m.starts_with("OVERQUOTA") => Err(Failure::No(
            "[OVERQUOTA] the mailbox quota is exceeded".into(),
        )),
        Err(StoreError::NotFound(_)) => Err(Failure::No("[TRYCREATE] no such mailbox".into())),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_multiappend_is_cut_into_single_appends() {
        let m = b"a1 APPEND \"Sent Items\" (\\Seen) {3}\r\nabc (\\Draft) \"05-Jan-2024 10:00:00 +0000\" {2+}\r\nde {1}\r\nf\r\n";
        let (first, more) = split(m, 10).unwrap();
        assert_eq!(first, b"a1 APPEND \"Sent Items\" (\\Seen) {3}\r\nabc\r\n");
        assert_eq!(more.len(), 2);
        assert_eq!(
            more[0],
            b"a1 APPEND \"Sent Items\" (\\Draft) \"05-Jan-2024 10:00:00 +0000\" {2+}\r\nde\r\n"
        );
        assert_eq!(more[1], b"a1 APPEND \"Sent Items\" {1}\r\nf\r\n");
        // Two spaces between messages, as imapclient sends them.
        let m = b"a APPEND INBOX (\\Seen) {1+}\r\nx  {1+}\r\ny\r\n";
        let (first, more) = split(m, 9).unwrap();
        assert_eq!(first, b"a APPEND INBOX (\\Seen) {1+}\r\nx\r\n");
        assert_eq!(more, vec![b"a APPEND INBOX {1+}\r\ny\r\n".to_vec()]);
    }

    #[test]
    fn a_single_append_or_garbage_is_left_to_the_codec() {
        assert!(split(b"a APPEND INBOX {3}\r\nabc\r\n", 9).is_none());
        assert!(split(b"a APPEND INBOX {3}\r\nabc junk\r\n", 9).is_none());
        assert!(split(b"a APPEND INBOX {3}\r\nabc {9}\r\nab\r\n", 9).is_none());
        // A literal mailbox name holding what looks like a message.
        let m = b"a APPEND {8}\r\n{1}\r\nx y {1}\r\nz {1}\r\nw\r\n";
        let (first, more) = split(m, 9).unwrap();
        assert_eq!(first, b"a APPEND {8}\r\n{1}\r\nx y {1}\r\nz\r\n");
        assert_eq!(
            more,
            vec![b"a APPEND {8}\r\n{1}\r\nx y {1}\r\nw\r\n".to_vec()]
        );
    }
}
