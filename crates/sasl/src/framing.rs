//! Base64 framing shared by SMTP (`334 <b64>`), IMAP (`+ <b64>`) and POP3
//! (`+ <b64>`): the line formats differ, the payload encoding does not.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};

use crate::SaslError;

/// Largest decoded client message any mechanism accepts.
///
/// Real messages are a few hundred bytes; the cap stops a client from making
/// the server buffer and parse megabytes before it is authenticated.
pub const MAX_MESSAGE_LEN: usize = 4096;

/// Decodes one client line of an exchange (an initial response or the answer
/// to a challenge) into the bytes a mechanism works on.
///
/// Surrounding whitespace and the line's CRLF are ignored. `*` alone is the
/// client cancelling (RFC 4954 §4, RFC 9051 §6.2.2, RFC 5034 §4) and yields
/// [`SaslError::Cancelled`]; `=` alone is an empty initial response
/// (RFC 4954 §4, RFC 4959 §3), and an empty line an empty response; both
/// decode to no bytes. Anything else must be base64 and decode to at most
/// [`MAX_MESSAGE_LEN`] bytes, else [`SaslError::Malformed`].
pub fn decode_client_response(line: &[u8]) -> Result<Vec<u8>, SaslError> {
    let text = line.trim_ascii();
    match text {
        b"*" => Err(SaslError::Cancelled),
        b"" | b"=" => Ok(Vec::new()),
        _ if text.len() > MAX_MESSAGE_LEN.div_ceil(3) * 4 => {
            Err(SaslError::Malformed("response too long"))
        }
        // Padding may be omitted (a few clients do), but if present it must
        // be complete; non-canonical trailing bits are refused either way.
        _ if text.ends_with(b"=") => STANDARD.decode(text).map_err(|_| not_base64()),
        _ => STANDARD_NO_PAD.decode(text).map_err(|_| not_base64()),
    }
}

fn not_base64() -> SaslError {
    SaslError::Malformed("response is not valid base64")
}

/// Encodes a challenge (or SCRAM server-final data) for the wire.
///
/// An empty challenge encodes to the empty string: SMTP then sends `334 `
/// and IMAP/POP3 send `+ ` (RFC 4954 §4, RFC 9051 §7.5, RFC 5034 §4).
#[must_use]
pub fn encode_challenge(data: &[u8]) -> String {
    STANDARD.encode(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancel_and_empty_forms() {
        assert_eq!(decode_client_response(b"*"), Err(SaslError::Cancelled));
        assert_eq!(decode_client_response(b" *\r\n"), Err(SaslError::Cancelled));
        assert_eq!(decode_client_response(b"="), Ok(vec![]));
        assert_eq!(decode_client_response(b"=\r\n"), Ok(vec![]));
        assert_eq!(decode_client_response(b"\r\n"), Ok(vec![]));
        assert_eq!(decode_client_response(b""), Ok(vec![]));
    }

    #[test]
    fn decodes_with_and_without_padding_and_trims() {
        assert_eq!(
            decode_client_response(b"AHRpbQB0YW5zdGFhZnRhbnN0YWFm\r\n").unwrap(),
            b"\0tim\0tanstaaftanstaaf"
        );
        assert_eq!(decode_client_response(b"YQ==").unwrap(), b"a");
        assert_eq!(decode_client_response(b"YQ").unwrap(), b"a");
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            &b"**"[..],
            b"YQ=",
            b"Y",
            b"a b c",
            b"YR==",
            b"!!!!",
            b"*YQ==",
        ] {
            assert!(
                matches!(decode_client_response(bad), Err(SaslError::Malformed(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn rejects_over_long() {
        let ok = encode_challenge(&vec![b'x'; MAX_MESSAGE_LEN]);
        assert_eq!(
            decode_client_response(ok.as_bytes()).unwrap().len(),
            MAX_MESSAGE_LEN
        );
        let long = encode_challenge(&vec![b'x'; MAX_MESSAGE_LEN + 3]);
        assert!(matches!(
            decode_client_response(long.as_bytes()),
            Err(SaslError::Malformed(_))
        ));
    }

    #[test]
    fn encodes() {
        assert_eq!(encode_challenge(b""), "");
        assert_eq!(encode_challenge(b"Username:"), "VXNlcm5hbWU6");
        assert_eq!(encode_challenge(b"Password:"), "UGFzc3dvcmQ6");
    }
}
