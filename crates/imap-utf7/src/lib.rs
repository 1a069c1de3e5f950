//! Modified UTF-7 (RFC 3501 §5.1.3): how IMAP mailbox names travel between
//! a client and a server that did not enable UTF-8 (`UTF8=ACCEPT`, RFC 6855;
//! `IMAP4rev2`, RFC 9051 §5.1).
//!
//! Printable ASCII stands for itself except `&`, which is sent as `&-`; any
//! other run of characters is UTF-16BE in base64 with `,` for `/` and no
//! padding, between `&` and `-`.
//!
//! Shared by the IMAP server (`mailroom-imap`) and the client
//! (`mailroom-mua`), so neither depends on the other. No dependencies.
//!
//! Invariants:
//! * [`decode`] accepts only the shortest form RFC 3501 allows: no encoded
//!   printable ASCII, no two adjacent encoded runs, no non-zero padding
//!   bits, no unterminated run, no 8-bit or control bytes; anything else is
//!   `None` (so one name has one spelling on the wire);
//! * [`encode`] produces exactly that form, and
//!   `decode(&encode(s)) == Some(s)` for every string `s` without control
//!   characters.

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,";

/// Decodes modified UTF-7; `None` when malformed (see the module docs).
pub fn decode(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if !(0x20..0x7f).contains(&b) {
            return None;
        }
        if b != b'&' {
            out.push(b as char);
            i += 1;
            continue;
        }
        let end = bytes[i + 1..].iter().position(|&c| c == b'-')? + i + 1;
        let run = &bytes[i + 1..end];
        i = end + 1;
        if run.is_empty() {
            out.push('&');
            continue;
        }
        // Modified base64 of UTF-16BE: ',' for '/', no padding.
        let mut bits: u32 = 0;
        let mut nbits = 0;
        let mut units: Vec<u16> = Vec::new();
        for &c in run {
            let v = match c {
                b'A'..=b'Z' => c - b'A',
                b'a'..=b'z' => c - b'a' + 26,
                b'0'..=b'9' => c - b'0' + 52,
                b'+' => 62,
                b',' => 63,
                _ => return None,
            };
            bits = (bits << 6) | u32::from(v);
            nbits += 6;
            if nbits >= 16 {
                nbits -= 16;
                units.push((bits >> nbits) as u16);
                bits &= (1 << nbits) - 1;
            }
        }
        // Leftover bits must be zero padding shorter than one base64 digit.
        if nbits >= 6 || bits != 0 {
            return None;
        }
        let decoded = String::from_utf16(&units).ok()?;
        // A run must not encode printable ASCII (it would have been sent as is).
        if decoded.chars().any(|c| (' '..='~').contains(&c)) {
            return None;
        }
        out.push_str(&decoded);
        // Two adjacent encoded runs are not the shortest form either.
        if bytes.get(i) == Some(&b'&') && bytes.get(i + 1) != Some(&b'-') {
            return None;
        }
    }
    Some(out)
}

/// Encodes a name in modified UTF-7.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut pending: Vec<u16> = Vec::new();
    let flush = |pending: &mut Vec<u16>, out: &mut String| {
        if pending.is_empty() {
            return;
        }
        out.push('&');
        let mut bits: u32 = 0;
        let mut nbits = 0;
        for &u in pending.iter() {
            bits = (bits << 16) | u32::from(u);
            nbits += 16;
            while nbits >= 6 {
                nbits -= 6;
                out.push(ALPHABET[((bits >> nbits) & 63) as usize] as char);
            }
            bits &= (1 << nbits) - 1;
        }
        if nbits > 0 {
            out.push(ALPHABET[((bits << (6 - nbits)) & 63) as usize] as char);
        }
        out.push('-');
        pending.clear();
    };
    for c in s.chars() {
        if (' '..='~').contains(&c) {
            flush(&mut pending, &mut out);
            if c == '&' {
                out.push_str("&-");
            } else {
                out.push(c);
            }
        } else {
            let mut buf = [0u16; 2];
            pending.extend_from_slice(c.encode_utf16(&mut buf));
        }
    }
    flush(&mut pending, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_rfc_examples() {
        // RFC 3501 §5.1.3's example.
        let wire = "~peter/mail/&U,BTFw-/&ZeVnLIqe-";
        let name = decode(wire).unwrap();
        assert_eq!(name, "~peter/mail/台北/日本語");
        assert_eq!(encode(&name), wire);
        assert_eq!(decode("A&-B").unwrap(), "A&B");
        assert_eq!(encode("A&B"), "A&-B");
        assert_eq!(encode("Entwürfe"), "Entw&APw-rfe");
        assert_eq!(decode("Entw&APw-rfe").unwrap(), "Entwürfe");
        assert_eq!(encode("Entwürfe/日本"), "Entw&APw-rfe/&ZeVnLA-");
        // An emoji needs a surrogate pair.
        assert_eq!(decode(&encode("x😀y")).unwrap(), "x😀y");
        assert_eq!(encode("INBOX"), "INBOX");
    }

    #[test]
    fn invalid_forms_are_refused() {
        assert_eq!(decode("&U,BTFw"), None, "unterminated");
        assert_eq!(decode("&AGE-"), None, "encodes ASCII 'a'");
        assert_eq!(decode("&Jjo!-"), None, "bad base64 digit");
        assert_eq!(decode("a\u{7f}"), None);
        assert_eq!(decode("ü"), None, "8-bit");
        assert_eq!(decode("&ZeU-&ZyM-"), None, "two adjacent runs");
        assert_eq!(decode("&ZeV-"), None, "non-zero padding bits");
    }
}
