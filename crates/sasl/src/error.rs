//! The one error type every mechanism reports, and its mapping to replies.

use std::fmt;

/// Why an exchange ended without authenticating the client.
///
/// The protocol layers need a *class* of failure to choose a reply, not a
/// story; the `&'static str` in [`SaslError::Malformed`] is for logs only and
/// must not be echoed verbatim to an unauthenticated client if the service
/// wants to stay terse.
///
/// | variant | SMTP (RFC 4954 §6) | IMAP (RFC 9051 §6.2.2) | POP3 (RFC 5034 §4) |
/// |---|---|---|---|
/// | `Cancelled` | `501 5.0.0` | tagged `BAD` | `-ERR` |
/// | `Malformed` | `501 5.5.2` | tagged `BAD` | `-ERR` |
/// | `AuthenticationFailed`, `ChannelBindingNotSupported`, `UnsupportedExtension` | `535 5.7.8` | `NO [AUTHENTICATIONFAILED]` | `-ERR [AUTH]` |
/// | `UnsupportedMechanism` | `504 5.5.4` | tagged `NO` | `-ERR` |
/// | `OutOfSequence` | `454 4.7.0` | `NO [UNAVAILABLE]` | `-ERR [SYS/TEMP]` |
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SaslError {
    /// The client answered a challenge with `*` (RFC 4954 §4, RFC 9051
    /// §6.2.2, RFC 5034 §4): it gave up, nothing was verified.
    Cancelled,
    /// The client's message does not follow the mechanism's syntax (bad
    /// base64, missing or misordered SCRAM attributes, a PLAIN message with
    /// the wrong number of NULs, invalid UTF-8, over-long input...). The text
    /// says which rule was broken, for logs.
    Malformed(&'static str),
    /// Wrong password, wrong SCRAM proof, unknown user, tampered nonce or
    /// channel-binding data. Deliberately one variant so that a caller cannot
    /// leak *which* of these happened to the client.
    AuthenticationFailed,
    /// The client asked for a mechanism this crate does not implement
    /// (including `SCRAM-SHA-256-PLUS`, which is never offered).
    UnsupportedMechanism,
    /// A SCRAM client demanded channel binding (`p=` gs2 flag, RFC 5802 §6)
    /// which this server does not offer; the client may retry without it.
    ChannelBindingNotSupported,
    /// A SCRAM client sent the reserved mandatory extension `m=` (RFC 5802
    /// §5.1), which a server that does not understand it must refuse.
    UnsupportedExtension,
    /// The caller drove the exchange wrongly (e.g. answered a credential
    /// request that was never made, or kept going after the end). A server
    /// bug, not a client fault, hence a temporary reply.
    OutOfSequence,
}

impl SaslError {
    /// SMTP reply for this failure as `(code, enhanced status, text)`, so
    /// that the submission service does not re-derive RFC 4954 §6 by hand.
    #[must_use]
    pub fn smtp_reply(&self) -> (u16, &'static str, &'static str) {
        match self {
            Self::Cancelled => (501, "5.0.0", "Authentication cancelled"),
            Self::Malformed(_) => (501, "5.5.2", "Cannot decode authentication response"),
            Self::AuthenticationFailed
            | Self::ChannelBindingNotSupported
            | Self::UnsupportedExtension => (535, "5.7.8", "Authentication credentials invalid"),
            Self::UnsupportedMechanism => (504, "5.5.4", "Unrecognized authentication type"),
            Self::OutOfSequence => (454, "4.7.0", "Temporary authentication failure"),
        }
    }

    /// The RFC 5802 §7 `server-error-value` matching this failure, for a
    /// service that wants to send `e=<value>` as SCRAM server-final data.
    /// Mail protocols normally just send their failure reply instead, so
    /// this is informative; `None` when no SCRAM message would be sent.
    #[must_use]
    pub fn scram_server_error(&self) -> Option<&'static str> {
        match self {
            Self::Cancelled => None,
            Self::Malformed(_) => Some("invalid-encoding"),
            Self::AuthenticationFailed => Some("invalid-proof"),
            Self::ChannelBindingNotSupported => Some("channel-binding-not-supported"),
            Self::UnsupportedExtension => Some("extensions-not-supported"),
            Self::UnsupportedMechanism | Self::OutOfSequence => Some("other-error"),
        }
    }
}

impl fmt::Display for SaslError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cancelled => f.write_str("authentication cancelled by the client"),
            Self::Malformed(why) => write!(f, "malformed SASL message: {why}"),
            Self::AuthenticationFailed => f.write_str("authentication failed"),
            Self::UnsupportedMechanism => f.write_str("unsupported SASL mechanism"),
            Self::ChannelBindingNotSupported => {
                f.write_str("client requires channel binding, which is not supported")
            }
            Self::UnsupportedExtension => f.write_str("unsupported mandatory SCRAM extension"),
            Self::OutOfSequence => f.write_str("SASL exchange driven out of sequence"),
        }
    }
}

impl std::error::Error for SaslError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smtp_codes_follow_rfc4954() {
        assert_eq!(SaslError::Cancelled.smtp_reply().0, 501);
        assert_eq!(SaslError::Cancelled.smtp_reply().1, "5.0.0");
        assert_eq!(SaslError::Malformed("x").smtp_reply().1, "5.5.2");
        assert_eq!(
            SaslError::AuthenticationFailed.smtp_reply(),
            (535, "5.7.8", "Authentication credentials invalid")
        );
        assert_eq!(SaslError::UnsupportedMechanism.smtp_reply().0, 504);
        assert_eq!(
            SaslError::AuthenticationFailed.scram_server_error(),
            Some("invalid-proof")
        );
    }
}
