//! Text matching for SEARCH (RFC 9051 §6.4.4): HEADER, SUBJECT, FROM...,
//! BODY, TEXT and the SENT* dates, on the message as stored.
//!
//! Strings match as case-insensitive substrings of the decoded text: header
//! values with RFC 2047 encoded words decoded and folding removed; bodies
//! of text parts with quoted-printable / base64 removed and converted from
//! their charset to UTF-8.

use mail_parser::HeaderValue;
use mail_parser::decoders::charsets::map::charset_decoder;

use crate::address::{MISSING_DOMAIN, MISSING_MAILBOX, parse_list};
use crate::entity::{self, Entity, Field, Kind, parse_structured};
use crate::section::decode_transfer;

/// Case-insensitive substring test (Unicode lowercase of both sides).
fn contains_ci(haystack: &str, needle: &str) -> bool {
    needle.is_empty() || haystack.to_lowercase().contains(&needle.to_lowercase())
}

/// A field's value decoded (RFC 2047) and unfolded, runs of white space
/// collapsed to one space, 8-bit bytes read as UTF-8.
fn decoded_value(raw: &[u8], field: &Field<'_>) -> String {
    match parse_structured(&raw[field.value.clone()], |s| s.parse_unstructured()) {
        HeaderValue::Text(t) => t.into_owned(),
        _ => String::new(),
    }
}

/// Every value of the top-level header field `field` (case-insensitive
/// name), in message order, decoded and unfolded.
pub fn header_values(raw: &[u8], field: &str) -> Vec<String> {
    entity::top_fields(raw)
        .iter()
        .filter(|f| f.is(field))
        .map(|f| decoded_value(raw, f))
        .collect()
}

/// SEARCH HEADER / SUBJECT / FROM / TO / CC / BCC: whether a `field` value
/// contains `needle` (case-insensitive, decoded). An empty needle matches
/// every message that has the field.
///
/// An address field (From, Sender, Reply-To, To, Cc, Bcc) also matches on
/// its addresses as `local@domain`, with the comments and white space that
/// RFC 5322 §3.4.1 allows inside an address left out: `<user (c)@ (c)
/// example.org>` matches `user@example.org`.
pub fn header_contains(raw: &[u8], field: &str, needle: &str) -> bool {
    let values = header_values(raw, field);
    if needle.is_empty() {
        return !values.is_empty();
    }
    values.iter().any(|v| contains_ci(v, needle))
        || (ADDRESS_FIELDS.iter().any(|f| f.eq_ignore_ascii_case(field))
            && addresses(raw, field).iter().any(|a| contains_ci(a, needle)))
}

/// The header fields that hold address lists.
const ADDRESS_FIELDS: [&str; 6] = ["From", "Sender", "Reply-To", "To", "Cc", "Bcc"];

/// The addresses of the top-level fields `field`, as `local@domain`
/// (group markers and addresses missing a part left out).
fn addresses(raw: &[u8], field: &str) -> Vec<String> {
    entity::top_fields(raw)
        .iter()
        .filter(|f| f.is(field))
        .flat_map(|f| parse_list(&entity::unfold(&raw[f.value.clone()])))
        .filter_map(|a| {
            let (local, domain) = (a.mailbox?.0, a.host?.0);
            if local == MISSING_MAILBOX.as_bytes() || domain == MISSING_DOMAIN.as_bytes() {
                return None;
            }
            Some(format!(
                "{}@{}",
                String::from_utf8_lossy(&local),
                String::from_utf8_lossy(&domain)
            ))
        })
        .collect()
}

/// The text of a text part: transfer encoding removed (left as it is when
/// unknown or broken), converted from its charset to UTF-8.
pub(crate) fn decoded_text(raw: &[u8], e: &Entity<'_>) -> String {
    let body = &raw[e.body.clone()];
    let bytes = decode_transfer(&e.transfer_encoding(raw), body).unwrap_or_else(|_| body.to_vec());
    match e
        .media
        .param("charset")
        .and_then(|c| charset_decoder(c.as_bytes()))
    {
        Some(decode) => decode(&bytes),
        None => String::from_utf8_lossy(&bytes).into_owned(),
    }
}

/// Whether a leaf's content is searched as text.
fn is_textual(e: &Entity<'_>) -> bool {
    matches!(e.kind, Kind::Leaf)
        && (e.media.ty.eq_ignore_ascii_case("text") || e.media.ty.eq_ignore_ascii_case("message"))
}

fn body_matches(raw: &[u8], root: &Entity<'_>, needle: &str, headers: bool) -> bool {
    let mut found = false;
    root.walk(&mut |e| {
        if found {
            return;
        }
        if headers {
            found = e.fields.iter().any(|f| {
                contains_ci(
                    &format!("{}: {}", f.name.as_str(), decoded_value(raw, f)),
                    needle,
                )
            });
        }
        if !found && is_textual(e) {
            found = contains_ci(&decoded_text(raw, e), needle);
        }
    });
    found
}

/// SEARCH BODY: whether the decoded text of a text part (text/*, and
/// non-multipart message/* such as delivery-status; also inside
/// encapsulated messages) contains `needle` (case-insensitive).
/// Headers, MIME part headers included, are not searched, nor are parts
/// that are not text (images, PDFs...).
pub fn body_contains(raw: &[u8], needle: &str) -> bool {
    needle.is_empty() || body_matches(raw, &entity::parse(raw), needle, false)
}

/// SEARCH TEXT: whether `needle` (case-insensitive) is in a header field
/// (`Name: decoded value`) of the message, of any MIME part or of any
/// encapsulated message, or in the text [`body_contains`] searches.
pub fn text_contains(raw: &[u8], needle: &str) -> bool {
    needle.is_empty() || body_matches(raw, &entity::parse(raw), needle, true)
}

fn date(raw: &[u8]) -> Option<mail_parser::DateTime> {
    let fields = entity::top_fields(raw);
    let field = fields.iter().find(|f| f.is("Date"))?;
    match parse_structured(&raw[field.value.clone()], |s| s.parse_date()) {
        HeaderValue::DateTime(d) if d.is_valid() => Some(d),
        _ => None,
    }
}

/// The Date header as Unix seconds (UTC), `None` when absent or invalid.
pub fn sent_date(raw: &[u8]) -> Option<i64> {
    date(raw).map(|d| d.to_timestamp())
}

/// The Date header's own wall-clock time as if it were UTC, in seconds.
/// RFC 9051 compares SENTBEFORE / SENTON / SENTSINCE "disregarding time and
/// timezone", i.e. on the date as written in the header:
/// `sent_date_local(raw)?.div_euclid(86400)` is that day, to compare with
/// the search date's day since the epoch.
pub fn sent_date_local(raw: &[u8]) -> Option<i64> {
    date(raw).map(|d| d.to_timestamp_local())
}
