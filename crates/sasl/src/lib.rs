//! Server side (and, in [`client`], the client side) of the SASL mechanisms shared by Mailroom's SMTP submission
//! (RFC 4954 `AUTH`), IMAP (RFC 9051 `AUTHENTICATE`, RFC 4959 SASL-IR) and
//! POP3 (RFC 5034 `AUTH`) services: PLAIN (RFC 4616), LOGIN
//! (draft-murchison-sasl-login) and SCRAM-SHA-256 (RFC 5802, RFC 7677).
//!
//! # Role
//!
//! The three protocols frame SASL differently (`334 <b64>` vs `+ <b64>`,
//! different cancel and error replies) but run the same mechanisms, so the
//! mechanisms live here once, as a pure state machine: no I/O, no async, no
//! database, no clock. The protocol layer:
//!
//! 1. maps the client's mechanism name with [`Mechanism::from_name`] and
//!    calls [`Mechanism::start`] (or [`ServerExchange::start`] with a
//!    [`SaslConfig`]) with the decoded initial response, if any;
//! 2. loops on the returned [`Step`]: sends [`Step::Challenge`] bytes
//!    through [`encode_challenge`] and feeds the client's line to
//!    [`ServerExchange::respond_line`]; answers [`Step::NeedCredentials`]
//!    from the user store with [`ServerExchange::password_checked`] or
//!    [`ServerExchange::provide_scram`];
//! 3. on [`Step::Success`] applies its authorization policy to
//!    `authcid`/`authzid`, delivers `final_data` if present and replies
//!    success; on [`Step::Failure`] replies as [`SaslError`] documents.
//!
//! # Example: SMTP `AUTH` (RFC 4954)
//!
//! ```
//! use mailroom_sasl::*;
//!
//! /// Stand-ins for the connection and the user store.
//! fn reply(text: String) -> String { text }
//! fn verify_argon2(user: &str, pw: &str) -> bool { user == "tim" && pw == "tanstaaftanstaaf" }
//! fn scram_credentials(_user: &str) -> Option<ScramCredentials> { None }
//!
//! // C: AUTH PLAIN AHRpbQB0YW5zdGFhZnRhbnN0YWFm
//! let (name, arg) = ("PLAIN", Some(&b"AHRpbQB0YW5zdGFhZnRhbnN0YWFm"[..]));
//! let mut client_lines: Vec<&[u8]> = vec![];
//!
//! let fail = |e: SaslError| { let (code, enh, text) = e.smtp_reply(); reply(format!("{code} {enh} {text}")) };
//! let outcome = (|| {
//!     let mechanism = Mechanism::from_name(name).map_err(fail)?;
//!     let initial = arg.map(decode_client_response).transpose().map_err(fail)?;
//!     let (mut exchange, mut step) = mechanism.start(initial);
//!     loop {
//!         step = match step {
//!             Step::Challenge(data) => {
//!                 reply(format!("334 {}", encode_challenge(&data)));
//!                 exchange.respond_line(client_lines.pop().unwrap_or(b"*"))
//!             }
//!             Step::NeedCredentials(CredentialRequest::Password { authcid, password, .. }) => {
//!                 exchange.password_checked(verify_argon2(&authcid, &password))
//!             }
//!             Step::NeedCredentials(CredentialRequest::Scram { authcid, .. }) => {
//!                 exchange.provide_scram(scram_credentials(&authcid))
//!             }
//!             Step::Success { authcid, authzid, final_data } => {
//!                 // Authorization policy for authzid goes here.
//!                 if let Some(data) = final_data {
//!                     reply(format!("334 {}", encode_challenge(&data)));
//!                     // The client must answer with an empty line.
//!                     let ack = decode_client_response(client_lines.pop().unwrap_or(b"*")).map_err(fail)?;
//!                     if !ack.is_empty() { return Err(fail(SaslError::Malformed("non-empty final response"))); }
//!                 }
//!                 return Ok((authcid, authzid, reply("235 2.7.0 Authentication successful".into())));
//!             }
//!             Step::Failure(e) => return Err(fail(e)),
//!         };
//!     }
//! })();
//! let (user, _, last) = outcome.unwrap();
//! assert_eq!((user.as_str(), last.as_str()), ("tim", "235 2.7.0 Authentication successful"));
//! ```
//!
//! # Invariants
//!
//! - The crate never sees password hashes: PLAIN and LOGIN hand the
//!   cleartext password to the caller (which verifies its argon2id hash)
//!   and only learn a yes/no; SCRAM works from [`ScramCredentials`], which
//!   do not contain the password.
//! - Every failure that depends on secrets (wrong password, wrong proof,
//!   unknown user) is the single [`SaslError::AuthenticationFailed`]; for
//!   SCRAM an unknown user gets a stable fake salt and fails at the same step
//!   as a wrong password (RFC 5802 §9), and the proof is compared in
//!   constant time.
//! - Channel binding is not implemented: `SCRAM-SHA-256-PLUS` is never
//!   offered, a client demanding it (`p=`) is refused, and the `y` flag is
//!   accepted (RFC 5802 §6).
//! - Client input is bounded ([`MAX_MESSAGE_LEN`]) and strictly parsed;
//!   nothing panics on client data.
//! - An exchange is single-use: after `Success` or `Failure` every call
//!   returns [`SaslError::OutOfSequence`].

pub mod client;
mod credentials;
mod error;
mod exchange;
mod framing;
#[doc(hidden)]
pub mod fuzz;
mod password;
mod saslprep;
mod scram;

pub use credentials::{CredentialsError, DEFAULT_ITERATIONS, DEFAULT_SALT_LEN, ScramCredentials};
pub use error::SaslError;
pub use exchange::{CredentialRequest, Mechanism, SaslConfig, ServerExchange, Step};
pub use framing::{MAX_MESSAGE_LEN, decode_client_response, encode_challenge};
pub use saslprep::{SaslprepError, saslprep};

#[cfg(test)]
mod tests;
