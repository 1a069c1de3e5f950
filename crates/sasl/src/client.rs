//! Client side of PLAIN (RFC 4616) and SCRAM-SHA-256 (RFC 5802, RFC 7677),
//! for Mailroom's mail client (`crates/mua`).
//!
//! Pure like the server side: the protocol layer frames the messages
//! (`AUTH` / `334`, `AUTHENTICATE` / `+`), this module only builds and
//! checks them.
//!
//! Invariants:
//! * the client verifies the server's signature (`v=`) before it reports
//!   success: a server that does not know the password cannot pretend it
//!   authenticated us (RFC 5802 §5, mutual authentication);
//! * the server's nonce must extend ours, the salt must be non-empty and the
//!   iteration count within `[4096, MAX_ITERATIONS]` (RFC 7677 §4 minimum; the
//!   upper bound stops a hostile server from making us burn minutes of CPU);
//! * server messages are bounded by [`crate::MAX_MESSAGE_LEN`].

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rand::RngCore as _;
use sha2::Sha256;

use crate::credentials::{hmac, sha256};
use crate::framing::MAX_MESSAGE_LEN;
use crate::saslprep::saslprep;

/// Highest PBKDF2 iteration count the client accepts from a server.
pub const MAX_ITERATIONS: u32 = 1_000_000;

/// Why the client side of an exchange failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientError {
    /// The server's message breaks the mechanism's syntax or limits.
    Malformed(&'static str),
    /// The server answered `e=…` (RFC 5802 §7 server-error).
    ServerError(String),
    /// The server's signature is wrong: it does not know our password, or
    /// the exchange was tampered with.
    BadServerSignature,
    /// The user name or password holds a code point SASLprep prohibits.
    Saslprep,
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Malformed(why) => write!(f, "invalid SCRAM message from the server: {why}"),
            Self::ServerError(e) => write!(f, "the server refused the SCRAM exchange: {e}"),
            Self::BadServerSignature => write!(
                f,
                "the server's SCRAM signature is wrong (it does not know the password)"
            ),
            Self::Saslprep => write!(f, "the user name or password cannot be SASLprep'd"),
        }
    }
}

impl std::error::Error for ClientError {}

/// The PLAIN initial response `authzid NUL authcid NUL password`
/// (RFC 4616 §2), with an empty authzid.
pub fn plain_response(user: &str, password: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(user.len() + password.len() + 2);
    out.push(0);
    out.extend_from_slice(user.as_bytes());
    out.push(0);
    out.extend_from_slice(password.as_bytes());
    out
}

/// RFC 5802 §7 `saslname`: `,` and `=` escaped.
fn encode_saslname(name: &str) -> String {
    name.replace('=', "=3D").replace(',', "=2C")
}

/// A SCRAM-SHA-256 exchange in progress, client side, without channel
/// binding (gs2 header `n,,`).
pub struct ScramClient {
    password: String,
    client_nonce: String,
    first_bare: String,
    /// Set once the server-first-message was processed.
    expected_server_signature: Option<[u8; 32]>,
}

impl std::fmt::Debug for ScramClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramClient").finish_non_exhaustive()
    }
}

const GS2_HEADER: &str = "n,,";

impl ScramClient {
    /// Starts an exchange; returns the client and client-first-message.
    pub fn start(user: &str, password: &str) -> Result<(ScramClient, Vec<u8>), ClientError> {
        let mut bytes = [0u8; 18];
        rand::rng().fill_bytes(&mut bytes);
        Self::start_with_nonce(user, password, &STANDARD.encode(bytes))
    }

    /// [`ScramClient::start`] with a chosen nonce (RFC test vectors).
    pub fn start_with_nonce(
        user: &str,
        password: &str,
        nonce: &str,
    ) -> Result<(ScramClient, Vec<u8>), ClientError> {
        let user = saslprep(user).map_err(|_| ClientError::Saslprep)?;
        let password = saslprep(password).map_err(|_| ClientError::Saslprep)?;
        let first_bare = format!("n={},r={nonce}", encode_saslname(&user));
        let message = format!("{GS2_HEADER}{first_bare}").into_bytes();
        Ok((
            ScramClient {
                password,
                client_nonce: nonce.to_string(),
                first_bare,
                expected_server_signature: None,
            },
            message,
        ))
    }

    /// Takes server-first-message, returns client-final-message.
    pub fn respond(&mut self, server_first: &[u8]) -> Result<Vec<u8>, ClientError> {
        if server_first.len() > MAX_MESSAGE_LEN {
            return Err(ClientError::Malformed("server-first-message too long"));
        }
        let text = std::str::from_utf8(server_first)
            .map_err(|_| ClientError::Malformed("server-first-message is not UTF-8"))?;
        if let Some(e) = text.strip_prefix("e=") {
            return Err(ClientError::ServerError(e.to_string()));
        }
        let mut attrs = text.split(',');
        let nonce = attrs
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or(ClientError::Malformed("first attribute is not r="))?;
        let salt = attrs
            .next()
            .and_then(|a| a.strip_prefix("s="))
            .ok_or(ClientError::Malformed("second attribute is not s="))?;
        let iterations: u32 = attrs
            .next()
            .and_then(|a| a.strip_prefix("i="))
            .and_then(|i| i.parse().ok())
            .ok_or(ClientError::Malformed("third attribute is not i=<number>"))?;
        if !nonce.starts_with(&self.client_nonce) || nonce.len() == self.client_nonce.len() {
            return Err(ClientError::Malformed(
                "server nonce does not extend the client's",
            ));
        }
        if !(4096..=MAX_ITERATIONS).contains(&iterations) {
            return Err(ClientError::Malformed("iteration count out of range"));
        }
        let salt = STANDARD
            .decode(salt)
            .map_err(|_| ClientError::Malformed("salt is not base64"))?;
        if salt.is_empty() {
            return Err(ClientError::Malformed("empty salt"));
        }
        // RFC 5802 §3.
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(self.password.as_bytes(), &salt, iterations, &mut salted);
        let client_key = hmac(&salted, &[b"Client Key"]);
        let stored_key = sha256(&client_key);
        let without_proof = format!("c={},r={nonce}", STANDARD.encode(GS2_HEADER));
        let auth_message = format!("{},{text},{without_proof}", self.first_bare);
        let signature = hmac(&stored_key, &[auth_message.as_bytes()]);
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&signature)
            .map(|(k, s)| k ^ s)
            .collect();
        let server_key = hmac(&salted, &[b"Server Key"]);
        self.expected_server_signature = Some(hmac(&server_key, &[auth_message.as_bytes()]));
        Ok(format!("{without_proof},p={}", STANDARD.encode(proof)).into_bytes())
    }

    /// Checks server-final-message (`v=…`): `Ok` only when the server proved
    /// it knows the password.
    pub fn finish(&self, server_final: &[u8]) -> Result<(), ClientError> {
        let expected = self
            .expected_server_signature
            .ok_or(ClientError::Malformed(
                "server-final-message out of sequence",
            ))?;
        let text = std::str::from_utf8(server_final)
            .map_err(|_| ClientError::Malformed("server-final-message is not UTF-8"))?;
        if let Some(e) = text.strip_prefix("e=") {
            return Err(ClientError::ServerError(e.to_string()));
        }
        let verifier = text
            .split(',')
            .next()
            .and_then(|a| a.strip_prefix("v="))
            .ok_or(ClientError::Malformed("server-final-message is not v="))?;
        let got = STANDARD
            .decode(verifier)
            .map_err(|_| ClientError::Malformed("v= is not base64"))?;
        if got.as_slice() == expected.as_slice() {
            Ok(())
        } else {
            Err(ClientError::BadServerSignature)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CredentialRequest, Mechanism, ScramCredentials, Step};

    /// RFC 7677 §3 example exchange.
    #[test]
    fn rfc7677_vector() {
        let (mut client, first) =
            ScramClient::start_with_nonce("user", "pencil", "rOprNGfwEbeRWgbNEkqO").unwrap();
        assert_eq!(first, b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        let server_first = b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let final_message = client.respond(server_first).unwrap();
        assert_eq!(
            final_message,
            b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        client
            .finish(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            .unwrap();
        assert_eq!(
            client.finish(b"v=AAAATRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="),
            Err(ClientError::BadServerSignature)
        );
    }

    /// The client against this crate's server side.
    #[test]
    fn against_our_server() {
        let creds = ScramCredentials::derive("pässword").unwrap();
        let (mut client, first) = ScramClient::start("a,b=c", "pässword").unwrap();
        let (mut exchange, step) = Mechanism::ScramSha256.start(Some(first));
        let Step::NeedCredentials(CredentialRequest::Scram { authcid, .. }) = step else {
            panic!("{step:?}")
        };
        assert_eq!(authcid, "a,b=c");
        let Step::Challenge(server_first) = exchange.provide_scram(Some(creds)) else {
            panic!()
        };
        let client_final = client.respond(&server_first).unwrap();
        let step = exchange.respond_line(STANDARD.encode(client_final).as_bytes());
        let Step::Success { final_data, .. } = step else {
            panic!("{step:?}")
        };
        client.finish(&final_data.unwrap()).unwrap();
    }

    #[test]
    fn hostile_server_first() {
        let (mut client, _) = ScramClient::start_with_nonce("u", "p", "abc").unwrap();
        for bad in [
            &b"r=xyz123,s=QUJD,i=4096"[..],
            b"r=abc,s=QUJD,i=4096",
            b"r=abcd,s=,i=4096",
            b"r=abcd,s=QUJD,i=4294967295",
            b"r=abcd,s=QUJD,i=1",
            b"e=other-error",
            b"\xff",
        ] {
            assert!(client.respond(bad).is_err(), "{bad:?}");
        }
    }
}
