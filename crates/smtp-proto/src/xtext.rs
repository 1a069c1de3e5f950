//! xtext, the encoding of DSN and AUTH parameter values (RFC 3461 §4).
//!
//! `ENVID`, `ORCPT` and `AUTH=` values travel inside a MAIL or RCPT command,
//! where spaces, `=` and non-printable characters would break the parameter
//! syntax. xtext writes such characters as `+XX` (two upper-case hex digits).
//! The parser decodes values once so the rest of Mailroom handles plain
//! strings; [`encode`] is used again when the values are relayed onwards.

use std::fmt;

/// A value that is not valid xtext, or does not decode to UTF-8 text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XtextError;

impl fmt::Display for XtextError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid xtext")
    }
}

impl std::error::Error for XtextError {}

/// RFC 3461 §4: `xchar = any ASCII CHAR between "!" (33) and "~" (126)
/// inclusive, except for "+" and "="`.
fn is_xchar(b: u8) -> bool {
    (b'!'..=b'~').contains(&b) && b != b'+' && b != b'='
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        // RFC 3461 requires upper case; lower case is accepted on input
        // because it is unambiguous and some clients send it.
        b'A'..=b'F' => Some(b - b'A' + 10),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

/// Decodes an xtext value. The decoded bytes must form UTF-8 text: the values
/// carried this way are addresses and identifiers, never binary.
pub fn decode(input: &str) -> Result<String, XtextError> {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'+' {
            let hi = bytes.get(i + 1).copied().and_then(hex_value);
            let lo = bytes.get(i + 2).copied().and_then(hex_value);
            match (hi, lo) {
                (Some(hi), Some(lo)) => out.push(hi << 4 | lo),
                _ => return Err(XtextError),
            }
            i += 3;
        } else if is_xchar(b) {
            out.push(b);
            i += 1;
        } else {
            return Err(XtextError);
        }
    }
    String::from_utf8(out).map_err(|_| XtextError)
}

/// Encodes a value as xtext, hex-escaping `+`, `=`, space, controls and
/// every non-ASCII byte.
pub fn encode(input: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(input.len());
    for &b in input.as_bytes() {
        if is_xchar(b) {
            out.push(b as char);
        } else {
            out.push('+');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 0xf)] as char);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_rfc3461_examples() {
        assert_eq!(
            decode("rfc822;a+2Bb@example.com").unwrap(),
            "rfc822;a+b@example.com"
        );
        assert_eq!(decode("x+3Dy").unwrap(), "x=y");
        assert_eq!(decode("x+3dy").unwrap(), "x=y");
        assert_eq!(decode("+C3+A9").unwrap(), "é");
        assert_eq!(decode("").unwrap(), "");
    }

    #[test]
    fn refuses_bad_xtext() {
        for bad in ["a+", "a+4", "a+GG", "a=b", "a b", "é", "+FF", "a\u{7f}"] {
            assert_eq!(decode(bad), Err(XtextError), "{bad:?}");
        }
    }

    #[test]
    fn round_trip() {
        for s in ["plain", "a+b=c d", "é@ü", "\u{1}x", "~!"] {
            let e = encode(s);
            assert!(e.bytes().all(|b| is_xchar(b) || b == b'+'), "{e}");
            assert_eq!(decode(&e).unwrap(), s);
        }
        assert_eq!(encode("a+b=c d"), "a+2Bb+3Dc+20d");
    }
}
