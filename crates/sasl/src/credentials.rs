//! Stored SCRAM-SHA-256 credentials (RFC 5802 §3) and their text form.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac as _};
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};

use crate::saslprep::{SaslprepError, saslprep};

/// Iteration count used by [`ScramCredentials::derive`]: the minimum
/// RFC 7677 §4 allows, and what every SCRAM-SHA-256 client copes with.
pub const DEFAULT_ITERATIONS: u32 = 4096;

/// Salt length used by [`ScramCredentials::derive`] (the Postgres choice).
pub const DEFAULT_SALT_LEN: usize = 16;

const PREFIX: &str = "SCRAM-SHA-256$";

/// What the server keeps per user to run SCRAM-SHA-256 without knowing the
/// password (RFC 5802 §3: StoredKey = H(ClientKey), ServerKey =
/// HMAC(SaltedPassword, "Server Key")).
///
/// Leaking these does not reveal the password directly, but `ServerKey`
/// lets an attacker impersonate the server and `StoredKey` enables an
/// offline dictionary attack, so treat them like password hashes; `Debug`
/// redacts them.
///
/// Stored as one text field with [`fmt::Display`] / [`FromStr`], in the
/// format Postgres uses:
/// `SCRAM-SHA-256$<iterations>:<salt b64>$<StoredKey b64>:<ServerKey b64>`.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramCredentials {
    /// Per-user random salt sent to the client in server-first-message.
    pub salt: Vec<u8>,
    /// PBKDF2 iteration count sent to the client as `i=`.
    pub iterations: u32,
    /// SHA-256 of the ClientKey; the proof is checked against it.
    pub stored_key: [u8; 32],
    /// Key of the HMAC that produces the `v=` server signature.
    pub server_key: [u8; 32],
}

/// Why credentials could not be derived or parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CredentialsError {
    /// The password contains a code point SASLprep prohibits.
    Saslprep(SaslprepError),
    /// Zero iterations, or an empty salt: both would make SCRAM meaningless
    /// and some clients refuse them.
    InvalidParameters(&'static str),
    /// The stored text is not in the strict format; says which part.
    Parse(&'static str),
}

impl fmt::Display for CredentialsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Saslprep(e) => e.fmt(f),
            Self::InvalidParameters(why) => write!(f, "invalid SCRAM parameters: {why}"),
            Self::Parse(why) => write!(f, "invalid stored SCRAM credentials: {why}"),
        }
    }
}

impl std::error::Error for CredentialsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Saslprep(e) => Some(e),
            _ => None,
        }
    }
}

impl From<SaslprepError> for CredentialsError {
    fn from(e: SaslprepError) -> Self {
        Self::Saslprep(e)
    }
}

pub(crate) type HmacSha256 = Hmac<Sha256>;

/// HMAC-SHA-256; HMAC accepts keys of any length, so this cannot fail.
pub(crate) fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = <HmacSha256 as hmac::digest::KeyInit>::new_from_slice(key)
        .expect("HMAC accepts keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

impl ScramCredentials {
    /// Derives credentials for a new password with a fresh random salt and
    /// [`DEFAULT_ITERATIONS`]; call when a password is set or changed.
    pub fn derive(password: &str) -> Result<Self, CredentialsError> {
        let mut salt = vec![0u8; DEFAULT_SALT_LEN];
        rand::rng().fill_bytes(&mut salt);
        Self::derive_with(password, &salt, DEFAULT_ITERATIONS)
    }

    /// Derives credentials with an explicit salt and iteration count (test
    /// vectors, or re-deriving at a higher cost). The password is
    /// SASLprep'd first (RFC 7677 §4, RFC 5802 §2.2).
    pub fn derive_with(
        password: &str,
        salt: &[u8],
        iterations: u32,
    ) -> Result<Self, CredentialsError> {
        if iterations == 0 {
            return Err(CredentialsError::InvalidParameters(
                "iteration count must be at least 1",
            ));
        }
        if salt.is_empty() {
            return Err(CredentialsError::InvalidParameters(
                "salt must not be empty",
            ));
        }
        let prepared = saslprep(password)?;
        // RFC 5802 §3: SaltedPassword := Hi(Normalize(password), salt, i).
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(prepared.as_bytes(), salt, iterations, &mut salted);
        let client_key = hmac(&salted, &[b"Client Key"]);
        Ok(Self {
            salt: salt.to_vec(),
            iterations,
            stored_key: sha256(&client_key),
            server_key: hmac(&salted, &[b"Server Key"]),
        })
    }
}

impl fmt::Debug for ScramCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramCredentials")
            .field("salt", &STANDARD.encode(&self.salt))
            .field("iterations", &self.iterations)
            .field("stored_key", &"<redacted>")
            .field("server_key", &"<redacted>")
            .finish()
    }
}

impl fmt::Display for ScramCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PREFIX}{}:{}${}:{}",
            self.iterations,
            STANDARD.encode(&self.salt),
            STANDARD.encode(self.stored_key),
            STANDARD.encode(self.server_key)
        )
    }
}

impl FromStr for ScramCredentials {
    type Err = CredentialsError;

    /// Strict: exactly the text [`fmt::Display`] produces. Anything else
    /// (other prefix or case, leading zeros or sign in the count, zero
    /// iterations, missing/extra separators, non-canonical or unpadded
    /// base64, keys not 32 bytes, surrounding whitespace) is refused, so a
    /// corrupted field is noticed instead of silently failing every login.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        use CredentialsError::Parse;
        let rest = s
            .strip_prefix(PREFIX)
            .ok_or(Parse("missing SCRAM-SHA-256$ prefix"))?;
        let (params, keys) = rest
            .split_once('$')
            .ok_or(Parse("missing '$' before the keys"))?;
        let (iterations, salt) = params
            .split_once(':')
            .ok_or(Parse("missing ':' after the iteration count"))?;
        let (stored_key, server_key) = keys
            .split_once(':')
            .ok_or(Parse("missing ':' between the keys"))?;

        if iterations.is_empty()
            || !iterations.bytes().all(|b| b.is_ascii_digit())
            || iterations.starts_with('0')
        {
            return Err(Parse("iteration count is not a positive decimal number"));
        }
        let iterations: u32 = iterations
            .parse()
            .map_err(|_| Parse("iteration count out of range"))?;
        let salt = STANDARD
            .decode(salt)
            .map_err(|_| Parse("salt is not canonical base64"))?;
        if salt.is_empty() {
            return Err(Parse("salt is empty"));
        }
        let key = |text: &str| -> Result<[u8; 32], CredentialsError> {
            let bytes = STANDARD
                .decode(text)
                .map_err(|_| Parse("key is not canonical base64"))?;
            bytes.try_into().map_err(|_| Parse("key is not 32 bytes"))
        };
        Ok(Self {
            salt,
            iterations,
            stored_key: key(stored_key)?,
            server_key: key(server_key)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VECTOR: &str = "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=";

    fn rfc7677() -> ScramCredentials {
        let salt = STANDARD.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        ScramCredentials::derive_with("pencil", &salt, 4096).unwrap()
    }

    #[test]
    fn rfc7677_keys_round_trip() {
        let creds = rfc7677();
        // StoredKey/ServerKey of the RFC 7677 §3 example, cross-checked against
        // the ClientProof/ServerSignature test in the scram module.
        assert_eq!(creds.to_string(), VECTOR);
        assert_eq!(VECTOR.parse::<ScramCredentials>().unwrap(), creds);
    }

    #[test]
    fn derive_is_random_and_round_trips() {
        let a = ScramCredentials::derive("correct horse").unwrap();
        let b = ScramCredentials::derive("correct horse").unwrap();
        assert_eq!(a.iterations, DEFAULT_ITERATIONS);
        assert_eq!(a.salt.len(), DEFAULT_SALT_LEN);
        assert_ne!(a.salt, b.salt);
        assert_ne!(a.stored_key, b.stored_key);
        assert_eq!(a.to_string().parse::<ScramCredentials>().unwrap(), a);
    }

    #[test]
    fn derive_applies_saslprep() {
        let salt = b"0123456789abcdef";
        let plain = ScramCredentials::derive_with("a b", salt, 16).unwrap();
        assert_eq!(
            ScramCredentials::derive_with("a\u{00A0}b", salt, 16).unwrap(),
            plain
        );
        assert_eq!(
            ScramCredentials::derive_with("a \u{00AD}b", salt, 16).unwrap(),
            plain
        );
        assert!(matches!(
            ScramCredentials::derive_with("a\u{1}b", salt, 16),
            Err(CredentialsError::Saslprep(SaslprepError {
                prohibited: '\u{1}'
            }))
        ));
        assert!(matches!(
            ScramCredentials::derive_with("x", salt, 0),
            Err(CredentialsError::InvalidParameters(_))
        ));
        assert!(matches!(
            ScramCredentials::derive_with("x", b"", 1),
            Err(CredentialsError::InvalidParameters(_))
        ));
    }

    #[test]
    fn debug_redacts_keys() {
        let text = format!("{:?}", rfc7677());
        assert!(text.contains("<redacted>"));
        assert!(!text.contains("WG5d8oPm"));
    }

    #[test]
    fn strict_parse_failures() {
        let keys = "WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=";
        let bad = [
            String::new(),
            format!("scram-sha-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==${keys}"),
            format!("SCRAM-SHA-1$4096:W22ZaJ0SNY7soEsUEjb6gQ==${keys}"),
            format!(" {VECTOR}"),
            format!("{VECTOR}\n"),
            format!("SCRAM-SHA-256$04096:W22ZaJ0SNY7soEsUEjb6gQ==${keys}"),
            format!("SCRAM-SHA-256$+4096:W22ZaJ0SNY7soEsUEjb6gQ==${keys}"),
            format!("SCRAM-SHA-256$0:W22ZaJ0SNY7soEsUEjb6gQ==${keys}"),
            format!("SCRAM-SHA-256$:W22ZaJ0SNY7soEsUEjb6gQ==${keys}"),
            format!("SCRAM-SHA-256$99999999999:W22ZaJ0SNY7soEsUEjb6gQ==${keys}"),
            format!("SCRAM-SHA-256$4096:${keys}"),
            format!("SCRAM-SHA-256$4096W22ZaJ0SNY7soEsUEjb6gQ==${keys}"),
            format!("SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ${keys}"),
            format!("SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==:x${keys}"),
            format!("SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==${keys}$"),
            format!("SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==${keys}:"),
            "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=".to_owned(),
            "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$AAAA:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=".to_owned(),
            "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dV=".to_owned(),
            "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU".to_owned(),
        ];
        for text in &bad {
            assert!(
                matches!(
                    text.parse::<ScramCredentials>(),
                    Err(CredentialsError::Parse(_))
                ),
                "accepted {text:?}"
            );
        }
    }
}
