//! BODY[section] (RFC 9051 §6.4.5, §7.5.2) and BINARY[section] (RFC 3516)
//! extraction from the stored message.

use std::fmt;

use imap_types::core::AString;
use imap_types::fetch::{Part, Section};
use mail_parser::decoders::base64::base64_decode;
use mail_parser::decoders::quoted_printable::quoted_printable_decode;

use crate::entity::{self, Entity, Kind};

/// Finds the entity with part number `path` (RFC 9051 §6.4.5): the parts
/// of a multipart are numbered from 1; a message/rfc822 part's numbers are
/// those of the message it contains; a message that is not multipart has
/// only part 1, its body. For such a part 1 the message entity itself is
/// returned (its header is then the part's MIME header).
fn find<'e, 'a>(root: &'e Entity<'a>, path: &[u32]) -> Option<&'e Entity<'a>> {
    let (&first, rest) = path.split_first()?;
    let mut cur = of_message(root, first)?;
    for &n in rest {
        cur = match &cur.kind {
            Kind::Multipart(children) => child(children, n)?,
            Kind::Message(inner) => of_message(inner, n)?,
            Kind::Leaf => return None,
        };
    }
    Some(cur)
}

/// Part `n` of a message.
fn of_message<'e, 'a>(message: &'e Entity<'a>, n: u32) -> Option<&'e Entity<'a>> {
    match &message.kind {
        Kind::Multipart(children) => child(children, n),
        _ => (n == 1).then_some(message),
    }
}

fn child<'e, 'a>(children: &'e [Entity<'a>], n: u32) -> Option<&'e Entity<'a>> {
    children.get(usize::try_from(n).ok()?.checked_sub(1)?)
}

fn numbers(part: &Part) -> Vec<u32> {
    part.0.as_ref().iter().map(|n| n.get()).collect()
}

/// The message a HEADER / HEADER.FIELDS / TEXT specifier refers to: the
/// whole message without a part number, else the message inside the
/// message/rfc822 part. `Some(None)`: the part exists but is no message.
fn message_at<'e, 'a>(root: &'e Entity<'a>, part: Option<&Part>) -> Option<Option<&'e Entity<'a>>> {
    let Some(part) = part else {
        return Some(Some(root));
    };
    let e = find(root, &numbers(part))?;
    Some(match &e.kind {
        Kind::Message(inner) => Some(inner),
        _ => None,
    })
}

/// The header fields of `message` whose names are (`keep` = true) or are
/// not (`keep` = false) in `names`, as they are in the message (folded
/// lines included, in message order), and the blank line.
fn header_fields(raw: &[u8], message: &Entity<'_>, names: &[AString<'_>], keep: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for f in &message.fields {
        let listed = names
            .iter()
            .any(|n| f.name.as_str().as_bytes().eq_ignore_ascii_case(n.as_ref()));
        if listed == keep {
            out.extend_from_slice(&raw[f.line.clone()]);
        }
    }
    out.extend_from_slice(&raw[message.blank.clone()]);
    out
}

/// The contents of BODY\[`section`\] of `raw`, the message as stored (header
/// prefix included); `None` for BODY[] means the whole message.
///
/// * A part number picks a body part (RFC 9051 §6.4.5): its body as it is
///   in the message (still transfer-encoded); for a message/rfc822 part the
///   whole encapsulated message; for a multipart its whole body.
/// * HEADER, HEADER.FIELDS, HEADER.FIELDS.NOT and TEXT refer to the message
///   or, after a part number, to the message inside that message/rfc822
///   part. Field names match case-insensitively; the fields come as they
///   are in the message (folded lines included) with the blank line that
///   ends the header (absent only when the message has none).
/// * MIME is the MIME header of the part, blank line included.
///
/// A part number that does not exist gives `None`, to be answered as NIL
/// (the response's `nstring`, as Dovecot does). A specifier that does not
/// apply to an existing part (HEADER or TEXT of a part that is no
/// message/rfc822) gives an empty string, as RFC 3501's author ruled on the
/// imap-protocol list. Partial fetches (`<origin.count>`) are left to the
/// caller.
pub fn section(raw: &[u8], section: Option<&Section<'_>>) -> Option<Vec<u8>> {
    let Some(section) = section else {
        return Some(raw.to_vec());
    };
    let root = entity::parse(raw);
    Some(match section {
        Section::Part(part) => raw[find(&root, &numbers(part))?.body.clone()].to_vec(),
        Section::Mime(part) => raw[find(&root, &numbers(part))?.header.clone()].to_vec(),
        Section::Header(part) => match message_at(&root, part.as_ref())? {
            Some(m) => raw[m.header.clone()].to_vec(),
            None => Vec::new(),
        },
        Section::Text(part) => match message_at(&root, part.as_ref())? {
            Some(m) => raw[m.body.clone()].to_vec(),
            None => Vec::new(),
        },
        Section::HeaderFields(part, names) => match message_at(&root, part.as_ref())? {
            Some(m) => header_fields(raw, m, names.as_ref(), true),
            None => Vec::new(),
        },
        Section::HeaderFieldsNot(part, names) => match message_at(&root, part.as_ref())? {
            Some(m) => header_fields(raw, m, names.as_ref(), false),
            None => Vec::new(),
        },
    })
}

/// Why BINARY cannot be answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BinaryError {
    /// The part's Content-Transfer-Encoding is not one this server decodes
    /// (answer `NO [UNKNOWN-CTE]`, RFC 3516 §4.3). Holds the encoding.
    UnknownCte(String),
    /// The part's content is not valid in its transfer encoding (answer
    /// `NO [PARSE]`).
    Corrupt,
    /// There is no such part (answer NIL or NO, as for BODY).
    NoSuchPart,
}

impl fmt::Display for BinaryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BinaryError::UnknownCte(cte) => write!(f, "unknown content-transfer-encoding {cte}"),
            BinaryError::Corrupt => f.write_str("invalid content-transfer-encoded data"),
            BinaryError::NoSuchPart => f.write_str("no such body part"),
        }
    }
}

impl std::error::Error for BinaryError {}

/// Removes the Content-Transfer-Encoding named `cte` (lowercase, empty when
/// absent) from `body`.
pub(crate) fn decode_transfer(cte: &str, body: &[u8]) -> Result<Vec<u8>, BinaryError> {
    match cte {
        "" | "7bit" | "8bit" | "binary" => Ok(body.to_vec()),
        "base64" => base64_decode(body).ok_or(BinaryError::Corrupt),
        "quoted-printable" => quoted_printable_decode(body).ok_or(BinaryError::Corrupt),
        other => Err(BinaryError::UnknownCte(other.to_string())),
    }
}

/// BINARY\[`part`\] (RFC 3516): the part's body with its
/// Content-Transfer-Encoding removed (base64, quoted-printable; 7bit, 8bit
/// and binary are returned as they are). An empty `part` is the whole
/// message, unchanged. Multipart and message/rfc822 parts may only be
/// 7bit/8bit/binary and come back as they are. `raw` is the message as
/// stored.
pub fn binary_section(raw: &[u8], part: &[u32]) -> Result<Vec<u8>, BinaryError> {
    if part.is_empty() {
        return Ok(raw.to_vec());
    }
    let root = entity::parse(raw);
    let e = find(&root, part).ok_or(BinaryError::NoSuchPart)?;
    decode_transfer(&e.transfer_encoding(raw), &raw[e.body.clone()])
}

/// BINARY.SIZE\[`part`\] (RFC 3516): the size of what [`binary_section`]
/// returns.
pub fn binary_size(raw: &[u8], part: &[u32]) -> Result<u32, BinaryError> {
    binary_section(raw, part).map(|b| u32::try_from(b.len()).unwrap_or(u32::MAX))
}
