//! Header values for SORT and THREAD (RFC 5256): the decoded text of an
//! unstructured field (SUBJECT), a Date value as a time, a field's raw
//! value and the msg-ids of Message-ID / In-Reply-To / References.
//!
//! These work on one field value (as the parse cache, [`crate::Summary`],
//! keeps it), so SORT needs no message text when the cache is there.

use mail_parser::HeaderValue;
use serde::Deserialize;

use crate::entity::{self, parse_structured};
use crate::summary::EnvelopeFields;

/// The envelope fields of a parse cache (what [`crate::Summary::to_json`]
/// wrote), the body structure skipped unbuilt: what SORT and THREAD need
/// of a message, at a fraction of [`crate::Summary::from_json`]'s cost.
/// `None` for anything else.
pub fn envelope_from_json(json: &str) -> Option<EnvelopeFields> {
    #[derive(Deserialize)]
    struct Only {
        #[serde(rename = "e")]
        envelope: EnvelopeFields,
    }
    serde_json::from_str::<Only>(json).ok().map(|o| o.envelope)
}

/// `value` (an unstructured field body, as sent) with RFC 2047 encoded
/// words decoded and folding removed; 8-bit bytes read as UTF-8.
pub fn decode_text(value: &[u8]) -> String {
    match parse_structured(value, |s| s.parse_unstructured()) {
        HeaderValue::Text(t) => t.into_owned(),
        _ => String::new(),
    }
}

/// A Date field value (RFC 5322 §3.3) as Unix seconds (UTC); `None` when it
/// does not parse as a valid date.
pub fn date_value(value: &[u8]) -> Option<i64> {
    match parse_structured(value, |s| s.parse_date()) {
        HeaderValue::DateTime(d) if d.is_valid() => Some(d.to_timestamp()),
        _ => None,
    }
}

/// The value of the first top-level `field` (case-insensitive), as it is in
/// the message (folding kept).
pub fn field_value(raw: &[u8], field: &str) -> Option<Vec<u8>> {
    entity::top_fields(raw)
        .iter()
        .find(|f| f.is(field))
        .map(|f| raw[f.value.clone()].to_vec())
}

/// The msg-ids (`<left@right>`, RFC 5322 §3.6.4) in `value`, in order,
/// brackets and any white space or comments inside them removed. Text
/// outside angle brackets (phrases some old clients put in In-Reply-To)
/// is skipped; an id without `@` or unclosed is not a msg-id.
pub fn msg_ids(value: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = value;
    while let Some(open) = rest.iter().position(|&b| b == b'<') {
        let after = &rest[open + 1..];
        let Some(close) = after.iter().position(|&b| b == b'>') else {
            break;
        };
        let mut inner = &after[..close];
        // `<a <b@c>`: the id starts at the last `<`.
        if let Some(p) = inner.iter().rposition(|&b| b == b'<') {
            inner = &inner[p + 1..];
        }
        rest = &after[close + 1..];
        let id: String = String::from_utf8_lossy(inner)
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        if id.contains('@') && !id.starts_with('@') && !id.ends_with('@') {
            out.push(id);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_envelope_is_read_alone_from_a_parse_cache() {
        let raw = b"From: a@b.test\r\nSubject: hi\r\nContent-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n\r\npart\r\n--x--\r\n";
        let summary = crate::Summary::parse(raw);
        assert_eq!(
            envelope_from_json(&summary.to_json()),
            Some(summary.envelope)
        );
        assert_eq!(envelope_from_json("{}"), None);
    }

    #[test]
    fn msg_ids_are_found_in_order() {
        assert_eq!(
            msg_ids(b" <a@b>\r\n\t<c@d> junk <nope> <e@f"),
            vec!["a@b".to_string(), "c@d".to_string()]
        );
        assert_eq!(msg_ids(b"<x <y@z>"), vec!["y@z".to_string()]);
        assert!(msg_ids(b"").is_empty());
    }

    #[test]
    fn encoded_words_and_dates_are_decoded() {
        assert_eq!(decode_text(b" =?UTF-8?Q?caf=C3=A9?= time\r\n"), "café time");
        assert_eq!(
            date_value(b" Thu, 01 Jan 1970 00:01:00 +0000\r\n"),
            Some(60)
        );
        assert_eq!(date_value(b" not a date\r\n"), None);
    }
}
