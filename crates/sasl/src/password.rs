//! Message parsing for the two mechanisms that carry the password itself:
//! PLAIN (RFC 4616) and LOGIN (draft-murchison-sasl-login-00).

use crate::SaslError;
use crate::framing::MAX_MESSAGE_LEN;

/// The fields of a PLAIN message, already validated.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct PlainMessage {
    pub authzid: Option<String>,
    pub authcid: String,
    pub password: String,
}

/// Parses `message = [authzid] UTF8NUL authcid UTF8NUL passwd` (RFC 4616 §2).
///
/// Exactly two NULs; authcid and passwd are `1*SAFE` so must not be empty;
/// an empty authzid means "act as authcid" and becomes `None`.
pub(crate) fn parse_plain(message: &[u8]) -> Result<PlainMessage, SaslError> {
    if message.len() > MAX_MESSAGE_LEN {
        return Err(SaslError::Malformed("PLAIN message too long"));
    }
    let mut parts = message.split(|&b| b == 0);
    let (Some(authzid), Some(authcid), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::Malformed(
            "PLAIN message needs exactly two NUL separators",
        ));
    };
    if authcid.is_empty() {
        return Err(SaslError::Malformed("PLAIN authcid is empty"));
    }
    if password.is_empty() {
        return Err(SaslError::Malformed("PLAIN password is empty"));
    }
    let text = |bytes: &[u8]| {
        String::from_utf8(bytes.to_vec())
            .map_err(|_| SaslError::Malformed("PLAIN field is not UTF-8"))
    };
    Ok(PlainMessage {
        authzid: if authzid.is_empty() {
            None
        } else {
            Some(text(authzid)?)
        },
        authcid: text(authcid)?,
        password: text(password)?,
    })
}

/// Validates one LOGIN field (the username or the password response).
///
/// The draft does not define a charset; we require UTF-8 (what every current
/// client sends), no NUL (it could not be expressed in PLAIN, so a password
/// containing one cannot have been set through the same paths) and a
/// non-empty value.
pub(crate) fn parse_login_field(data: &[u8], what: &'static str) -> Result<String, SaslError> {
    if data.len() > MAX_MESSAGE_LEN {
        return Err(SaslError::Malformed("LOGIN response too long"));
    }
    if data.is_empty() {
        return Err(SaslError::Malformed(what));
    }
    if data.contains(&0) {
        return Err(SaslError::Malformed("LOGIN response contains NUL"));
    }
    String::from_utf8(data.to_vec())
        .map_err(|_| SaslError::Malformed("LOGIN response is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc4616_examples() {
        assert_eq!(
            parse_plain(b"\0tim\0tanstaaftanstaaf").unwrap(),
            PlainMessage {
                authzid: None,
                authcid: "tim".into(),
                password: "tanstaaftanstaaf".into()
            }
        );
        assert_eq!(
            parse_plain(b"Ursel\0Kurt\0xipj3plmq").unwrap(),
            PlainMessage {
                authzid: Some("Ursel".into()),
                authcid: "Kurt".into(),
                password: "xipj3plmq".into()
            }
        );
    }

    #[test]
    fn plain_keeps_utf8_and_spaces() {
        let m = parse_plain("\0jürgen@example.org\0 pass wörd ".as_bytes()).unwrap();
        assert_eq!(m.authcid, "jürgen@example.org");
        assert_eq!(m.password, " pass wörd ");
    }

    #[test]
    fn plain_malformed() {
        let long = [b"\0user\0".as_slice(), &[b'x'; MAX_MESSAGE_LEN]].concat();
        for bad in [
            &b""[..],
            b"tim",
            b"\0tim",
            b"tim\0pw",
            b"\0tim\0",
            b"\0\0pw",
            b"\0tim\0pw\0",
            b"a\0tim\0pw\0extra",
            b"\0\0\0",
            b"\0t\xffm\0pw",
            b"\0tim\0p\xc3",
            b"\xff\0tim\0pw",
            &long,
        ] {
            assert!(
                matches!(parse_plain(bad), Err(SaslError::Malformed(_))),
                "accepted {bad:?}"
            );
        }
    }

    #[test]
    fn login_fields() {
        assert_eq!(parse_login_field(b"tim", "e").unwrap(), "tim");
        for bad in [&b""[..], b"t\0m", b"\xff"] {
            assert!(matches!(
                parse_login_field(bad, "e"),
                Err(SaslError::Malformed(_))
            ));
        }
        assert!(parse_login_field(&[b'x'; MAX_MESSAGE_LEN + 1], "e").is_err());
    }
}
