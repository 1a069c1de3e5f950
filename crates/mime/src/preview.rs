//! PREVIEW (RFC 8970): a short plain-text excerpt of a message.
//!
//! Invariants: the preview is taken from the first `text/plain` leaf (in
//! the order the parts appear), else the first `text/html` leaf with its
//! tags and entities crudely removed; transfer encoding and charset are
//! decoded as for SEARCH; runs of whitespace become one space and the ends
//! are trimmed (RFC 8970 §2: "whitespace SHOULD be normalized"); at most
//! [`PREVIEW_CHARS`] characters (the RFC's limit is 256). A message
//! without text has the empty preview, not NIL (§3: NIL is for a preview
//! the server cannot give now).

use crate::entity::{self, Kind};
use crate::search::decoded_text;

/// The most characters a preview holds.
pub const PREVIEW_CHARS: usize = 200;

/// The preview of the message `raw`.
pub fn preview(raw: &[u8]) -> String {
    let root = entity::parse(raw);
    let mut plain = None;
    let mut html = None;
    root.walk(&mut |e| {
        if !matches!(e.kind, Kind::Leaf) || !e.media.ty.eq_ignore_ascii_case("text") {
            return;
        }
        if plain.is_none() && e.media.sub.eq_ignore_ascii_case("plain") {
            plain = Some(decoded_text(raw, e));
        } else if html.is_none() && e.media.sub.eq_ignore_ascii_case("html") {
            html = Some(strip_html(&decoded_text(raw, e)));
        }
    });
    let text = plain.or(html).unwrap_or_default();
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(PREVIEW_CHARS)
        .collect::<String>()
        .trim_end()
        .to_string()
}

/// HTML without its tags, `<style>`/`<script>` content and the commonest
/// entities.
fn strip_html(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let mut rest = html;
    while let Some(open) = rest.find('<') {
        out.push_str(&rest[..open]);
        let tag = &rest[open..];
        let lower = tag.get(..8).unwrap_or(tag).to_ascii_lowercase();
        let skip_to = if lower.starts_with("<style") {
            tag.to_ascii_lowercase().find("</style>").map(|i| i + 8)
        } else if lower.starts_with("<script") {
            tag.to_ascii_lowercase().find("</script>").map(|i| i + 9)
        } else {
            tag.find('>').map(|i| i + 1)
        };
        match skip_to {
            Some(n) => {
                out.push(' ');
                rest = &tag[n..];
            }
            None => {
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out.replace("&nbsp;", " ")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_normalised_and_cut() {
        let m = b"Subject: x\r\n\r\n  Hello\r\n\r\n\tworld  \r\n";
        assert_eq!(preview(m), "Hello world");
        let long = format!("Subject: x\r\n\r\n{}\r\n", "word ".repeat(100));
        let p = preview(long.as_bytes());
        assert!(
            p.chars().count() <= PREVIEW_CHARS && p.starts_with("word word"),
            "{p}"
        );
        assert_eq!(preview(b"Subject: x\r\n\r\n"), "");
    }

    #[test]
    fn html_and_encodings() {
        let m = b"Content-Type: multipart/alternative; boundary=b\r\n\r\n--b\r\n\
Content-Type: text/html\r\n\r\n<style>p{}</style><p>Caf&eacute; &amp; <b>tea</b></p>\r\n--b--\r\n";
        assert_eq!(preview(m), "Caf&eacute; & tea");
        let m = b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nCaf=C3=A9 au lait\r\n";
        assert_eq!(preview(m), "Caf\u{e9} au lait");
    }
}
