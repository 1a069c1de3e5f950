//! The MIME tree of a message as byte ranges of the raw message.
//!
//! Header fields and their values are read with mail-parser. The tree itself
//! (where each header and body begins and ends) is found here, because
//! IMAP needs exact octet ranges that follow RFC 2046 §5.1.1 to the letter:
//! a delimiter is a whole line `--boundary` (plus optional `--` and
//! trailing white space), and the line break before it belongs to the
//! delimiter, not to the preceding part. mail-parser recognises a boundary
//! anywhere in a line and also as a prefix of a longer one, which is fine for
//! reading a message but would give wrong sizes and part numbers here.

use std::ops::Range;
use std::sync::LazyLock;

use mail_parser::parsers::MessageStream;
use mail_parser::{HeaderName, HeaderValue, MessageParser};

/// Deeper nesting than this is treated as an opaque leaf, so a hostile
/// message cannot exhaust the stack, and the stored JSON stays within
/// serde_json's recursion limit (128; three levels per MIME level).
pub(crate) const MAX_DEPTH: usize = 32;

/// Parses every header field as raw text: only the offsets are used here,
/// values are interpreted on demand.
static RAW_HEADERS: LazyLock<MessageParser> = LazyLock::new(|| {
    MessageParser::new()
        .default_header_raw()
        .header_raw(HeaderName::Subject)
});

/// One header field.
#[derive(Debug)]
pub(crate) struct Field<'a> {
    pub name: HeaderName<'a>,
    /// The whole field: name, colon, value, folding and final line break.
    pub line: Range<usize>,
    /// After the colon up to and including the final line break.
    pub value: Range<usize>,
}

impl Field<'_> {
    /// Whether the field's name is `name` (ASCII case-insensitive).
    pub fn is(&self, name: &str) -> bool {
        self.name.as_str().eq_ignore_ascii_case(name)
    }
}

/// A Content-Type as parsed by mail-parser (or the RFC 2045 / RFC 2046
/// default), with RFC 2231 continuations joined and charsets decoded.
#[derive(Debug, Clone)]
pub(crate) struct MediaType {
    pub ty: String,
    pub sub: String,
    pub params: Vec<(String, String)>,
}

impl MediaType {
    fn default_for(digest: bool) -> MediaType {
        let (ty, sub) = if digest {
            ("message", "rfc822")
        } else {
            ("text", "plain")
        };
        MediaType {
            ty: ty.into(),
            sub: sub.into(),
            params: Vec::new(),
        }
    }

    /// The value of parameter `name` (ASCII case-insensitive).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn is(&self, ty: &str, sub: &str) -> bool {
        self.ty.eq_ignore_ascii_case(ty) && self.sub.eq_ignore_ascii_case(sub)
    }
}

/// A message or body part: header, body and what the body contains.
#[derive(Debug)]
pub(crate) struct Entity<'a> {
    /// The header including its terminating blank line.
    pub header: Range<usize>,
    /// The terminating blank line (empty when the header runs to the end).
    pub blank: Range<usize>,
    pub body: Range<usize>,
    pub fields: Vec<Field<'a>>,
    pub media: MediaType,
    pub kind: Kind<'a>,
}

#[derive(Debug)]
pub(crate) enum Kind<'a> {
    /// Not further divided.
    Leaf,
    /// multipart/*: the body parts in order (possibly none, when no
    /// delimiter line was found).
    Multipart(Vec<Entity<'a>>),
    /// message/rfc822: the encapsulated message.
    Message(Box<Entity<'a>>),
}

impl<'a> Entity<'a> {
    /// The first field called `name`.
    pub fn field(&self, name: &str) -> Option<&Field<'a>> {
        self.fields.iter().find(|f| f.is(name))
    }

    /// The first `name` field's value, unfolded and trimmed, not decoded.
    pub fn raw_value(&self, raw: &[u8], name: &str) -> Option<Vec<u8>> {
        self.field(name).map(|f| unfold(&raw[f.value.clone()]))
    }

    /// The Content-Transfer-Encoding, lowercased; empty when absent.
    pub fn transfer_encoding(&self, raw: &[u8]) -> String {
        self.raw_value(raw, "Content-Transfer-Encoding")
            .map(|v| String::from_utf8_lossy(&v).to_ascii_lowercase())
            .unwrap_or_default()
    }

    /// Calls `f` on this entity and every entity below it, depth first.
    pub fn walk(&self, f: &mut dyn FnMut(&Entity<'a>)) {
        f(self);
        match &self.kind {
            Kind::Leaf => {}
            Kind::Multipart(children) => children.iter().for_each(|c| c.walk(f)),
            Kind::Message(inner) => inner.walk(f),
        }
    }
}

/// Parses the whole of `raw` as a message.
pub(crate) fn parse(raw: &[u8]) -> Entity<'_> {
    parse_entity(raw, 0..raw.len(), false, 0)
}

/// Parses only the top-level header fields of `raw`.
pub(crate) fn top_fields(raw: &[u8]) -> Vec<Field<'_>> {
    let (header, _) = split_header(raw, 0..raw.len());
    read_fields(raw, header)
}

fn parse_entity(raw: &[u8], range: Range<usize>, digest: bool, depth: usize) -> Entity<'_> {
    let (header, blank) = split_header(raw, range.clone());
    let body = header.end..range.end;
    let fields = read_fields(raw, header.clone());
    let media = media_type(raw, &fields, digest);
    let kind = if depth >= MAX_DEPTH {
        Kind::Leaf
    } else if media.ty.eq_ignore_ascii_case("multipart") {
        match media.param("boundary").filter(|b| !b.is_empty()) {
            Some(boundary) => {
                let digest = media.sub.eq_ignore_ascii_case("digest");
                Kind::Multipart(
                    split_multipart(raw, body.clone(), boundary.as_bytes())
                        .into_iter()
                        .map(|r| parse_entity(raw, r, digest, depth + 1))
                        .collect(),
                )
            }
            // Without a boundary the body cannot be divided: an opaque part.
            None => Kind::Leaf,
        }
    } else if media.is("message", "rfc822") {
        Kind::Message(Box::new(parse_entity(raw, body.clone(), false, depth + 1)))
    } else {
        Kind::Leaf
    };
    Entity {
        header,
        blank,
        body,
        fields,
        media,
        kind,
    }
}

/// Splits `range` into the header (up to and including the first empty
/// line) and returns it with the empty line's own range. Without an empty
/// line everything is header.
pub(crate) fn split_header(raw: &[u8], range: Range<usize>) -> (Range<usize>, Range<usize>) {
    let mut pos = range.start;
    while pos < range.end {
        let Some(i) = raw[pos..range.end].iter().position(|&b| b == b'\n') else {
            break;
        };
        let line_end = pos + i + 1;
        let content = &raw[pos..pos + i];
        if content.is_empty() || content == b"\r" {
            return (range.start..line_end, pos..line_end);
        }
        pos = line_end;
    }
    (range.clone(), range.end..range.end)
}

fn read_fields(raw: &[u8], header: Range<usize>) -> Vec<Field<'_>> {
    let base = header.start;
    let Some(message) = RAW_HEADERS.parse_headers(&raw[header]) else {
        return Vec::new();
    };
    let Some(part) = message.parts.into_iter().next() else {
        return Vec::new();
    };
    part.headers
        .into_iter()
        .map(|h| Field {
            name: h.name,
            line: base + h.offset_field as usize..base + h.offset_end as usize,
            value: base + h.offset_start as usize..base + h.offset_end as usize,
        })
        .collect()
}

fn media_type(raw: &[u8], fields: &[Field<'_>], digest: bool) -> MediaType {
    let Some(field) = fields.iter().find(|f| f.is("Content-Type")) else {
        return MediaType::default_for(digest);
    };
    match parse_structured(&raw[field.value.clone()], |s| s.parse_content_type()) {
        HeaderValue::ContentType(ct) if !ct.c_type.is_empty() && ct.c_subtype.is_some() => {
            MediaType {
                ty: ct.c_type.into_owned(),
                sub: ct.c_subtype.unwrap_or_default().into_owned(),
                params: ct
                    .attributes
                    .unwrap_or_default()
                    .into_iter()
                    .map(|a| (a.name.into_owned(), a.value.into_owned()))
                    .collect(),
            }
        }
        // RFC 2045 §5.2: an unparsable Content-Type means the default.
        _ => MediaType::default_for(digest),
    }
}

/// Runs a mail-parser field parser over one raw value. They stop at the line
/// break that ends the field, so one is added when the value has none.
pub(crate) fn parse_structured(
    value: &[u8],
    parse: impl for<'y> FnOnce(&mut MessageStream<'y>) -> HeaderValue<'y>,
) -> HeaderValue<'static> {
    if value.ends_with(b"\n") {
        parse(&mut MessageStream::new(value)).into_owned()
    } else {
        let mut owned = value.to_vec();
        owned.extend_from_slice(b"\r\n");
        parse(&mut MessageStream::new(&owned)).into_owned()
    }
}

/// The body parts of a multipart body (RFC 2046 §5.1.1): preamble and
/// epilogue are dropped; a missing close delimiter ends the last part at the
/// end of the body.
fn split_multipart(raw: &[u8], body: Range<usize>, boundary: &[u8]) -> Vec<Range<usize>> {
    let mut parts = Vec::new();
    let mut open: Option<usize> = None;
    let mut pos = body.start;
    while pos < body.end {
        let line_end = raw[pos..body.end]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(body.end, |i| pos + i + 1);
        if let Some(close) = delimiter(&raw[pos..line_end], boundary) {
            if let Some(start) = open {
                parts.push(start..content_end(raw, start, pos));
            }
            if close {
                return parts;
            }
            open = Some(line_end);
        }
        pos = line_end;
    }
    if let Some(start) = open {
        parts.push(start..body.end);
    }
    parts
}

/// Where a part's content ends when a delimiter line starts at `line`: the
/// line break before the delimiter belongs to the delimiter.
fn content_end(raw: &[u8], start: usize, line: usize) -> usize {
    let mut end = line;
    if end > start && raw[end - 1] == b'\n' {
        end -= 1;
        if end > start && raw[end - 1] == b'\r' {
            end -= 1;
        }
    }
    end
}

/// `Some(is_close)` when `line` is a delimiter line for `boundary`.
fn delimiter(line: &[u8], boundary: &[u8]) -> Option<bool> {
    let rest = line.strip_prefix(b"--")?.strip_prefix(boundary)?;
    let (close, rest) = match rest.strip_prefix(b"--") {
        Some(r) => (true, r),
        None => (false, rest),
    };
    rest.iter()
        .all(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
        .then_some(close)
}

/// A header value unfolded (CR and LF removed) and trimmed of surrounding
/// white space, otherwise untouched: RFC 2047 encoded words and 8-bit bytes
/// stay as they are.
pub(crate) fn unfold(value: &[u8]) -> Vec<u8> {
    let v: Vec<u8> = value
        .iter()
        .copied()
        .filter(|&b| b != b'\r' && b != b'\n')
        .collect();
    let is_ws = |b: &u8| *b == b' ' || *b == b'\t';
    let start = v.iter().position(|b| !is_ws(b)).unwrap_or(v.len());
    let end = v.iter().rposition(|b| !is_ws(b)).map_or(start, |i| i + 1);
    v[start..end].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text<'a>(raw: &'a [u8], r: &Range<usize>) -> &'a str {
        std::str::from_utf8(&raw[r.clone()]).unwrap()
    }

    #[test]
    fn header_and_body_are_split_at_the_first_empty_line() {
        let raw = b"A: 1\r\nB: 2\r\n continued\r\n\r\nbody\r\n";
        let e = parse(raw);
        assert_eq!(text(raw, &e.header), "A: 1\r\nB: 2\r\n continued\r\n\r\n");
        assert_eq!(text(raw, &e.blank), "\r\n");
        assert_eq!(text(raw, &e.body), "body\r\n");
        assert_eq!(e.fields.len(), 2);
        assert_eq!(text(raw, &e.fields[1].line), "B: 2\r\n continued\r\n");
        assert_eq!(text(raw, &e.fields[1].value), " 2\r\n continued\r\n");
        assert!(e.fields[0].is("a"));
        assert!(e.media.is("text", "plain"));
    }

    #[test]
    fn header_without_a_body_and_body_without_a_header() {
        let raw = b"A: 1\r\nB: 2";
        let e = parse(raw);
        assert_eq!(e.header, 0..raw.len());
        assert_eq!(e.blank, raw.len()..raw.len());
        assert_eq!(e.body, raw.len()..raw.len());
        assert_eq!(e.fields.len(), 2);

        let raw = b"\r\nonly body\r\n";
        let e = parse(raw);
        assert_eq!(e.header, 0..2);
        assert_eq!(text(raw, &e.body), "only body\r\n");
        assert!(e.fields.is_empty());
    }

    #[test]
    fn delimiters_are_whole_lines_and_own_the_line_break_before_them() {
        let raw = b"Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n\
preamble\r\n--b\r\n\r\none --b not a delimiter\r\n--b2 neither\r\n\r\n--b  \r\n\
Content-Type: text/html\r\n\r\n<p>two</p>\r\n--b--\r\nepilogue\r\n";
        let e = parse(raw);
        let Kind::Multipart(parts) = &e.kind else {
            panic!("not multipart")
        };
        assert_eq!(parts.len(), 2);
        assert_eq!(
            text(raw, &parts[0].body),
            "one --b not a delimiter\r\n--b2 neither\r\n"
        );
        assert!(parts[0].fields.is_empty());
        assert_eq!(
            text(raw, &parts[1].header),
            "Content-Type: text/html\r\n\r\n"
        );
        assert_eq!(text(raw, &parts[1].body), "<p>two</p>");
        assert!(parts[1].media.is("text", "html"));
    }

    #[test]
    fn digest_parts_default_to_message_rfc822() {
        let raw = b"Content-Type: multipart/digest; boundary=d\r\n\r\n--d\r\n\r\n\
Subject: inner\r\n\r\nhi\r\n--d--\r\n";
        let e = parse(raw);
        let Kind::Multipart(parts) = &e.kind else {
            panic!("not multipart")
        };
        assert!(parts[0].media.is("message", "rfc822"));
        let Kind::Message(inner) = &parts[0].kind else {
            panic!("not a message")
        };
        assert_eq!(text(raw, &inner.body), "hi");
    }

    #[test]
    fn unfold_keeps_everything_but_line_breaks() {
        assert_eq!(unfold(b"  =?utf-8?q?a?=\r\n\tb  \r\n"), b"=?utf-8?q?a?=\tb");
        assert_eq!(unfold(b" \r\n"), b"");
    }
}
