//! The mechanism list and the server-side state machine.

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use rand::RngCore as _;

use crate::credentials::{DEFAULT_ITERATIONS, DEFAULT_SALT_LEN, ScramCredentials, hmac, sha256};
use crate::password::{parse_login_field, parse_plain};
use crate::scram::{self, ClientFirst, Pending};
use crate::{SaslError, decode_client_response};

/// A SASL mechanism this crate implements on the server side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mechanism {
    /// SCRAM-SHA-256 (RFC 5802, RFC 7677), without channel binding: the
    /// password never crosses the wire and the client verifies the server.
    ScramSha256,
    /// PLAIN (RFC 4616): authzid, authcid and password in one message. Only
    /// safe inside TLS.
    Plain,
    /// LOGIN (draft-murchison-sasl-login): username and password in two
    /// prompted steps. Obsolete but still what Outlook and many devices use.
    /// Only safe inside TLS.
    Login,
}

impl Mechanism {
    /// Every mechanism, strongest first: the order to advertise them in
    /// (EHLO `AUTH`, IMAP `AUTH=` capabilities, POP3 `SASL`), since some
    /// clients pick the first one they support. Which of them a service
    /// actually offers (e.g. PLAIN/LOGIN only after STARTTLS) is its policy.
    pub const ALL: [Mechanism; 3] = [Self::ScramSha256, Self::Plain, Self::Login];

    /// Looks a mechanism up by the name a client sent; SASL mechanism names
    /// are case-insensitive (RFC 4422 §3.1). Unknown names, including
    /// `SCRAM-SHA-256-PLUS` (channel binding is not offered), give
    /// [`SaslError::UnsupportedMechanism`] so the caller can answer
    /// `504 5.5.4` / `NO` directly.
    pub fn from_name(name: &str) -> Result<Self, SaslError> {
        Self::ALL
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(name))
            .ok_or(SaslError::UnsupportedMechanism)
    }

    /// The registered (upper-case) name, for capability lists.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::Plain => "PLAIN",
            Self::Login => "LOGIN",
        }
    }

    /// True when the password itself crosses the wire, i.e. the mechanism
    /// must not be offered or accepted on a connection without TLS
    /// (RFC 4616 §6, RFC 4954 §4 and RFC 9051 §11.2 policy).
    #[must_use]
    pub const fn exposes_password(self) -> bool {
        matches!(self, Self::Plain | Self::Login)
    }

    /// Starts a server exchange with the process-wide default
    /// [`SaslConfig`]. `initial_response` is the *decoded* initial response
    /// (see [`decode_client_response`]); `None` when the client sent none,
    /// `Some(empty)` when it sent `=`.
    ///
    /// Returns the exchange and its first step.
    pub fn start(self, initial_response: Option<Vec<u8>>) -> (ServerExchange, Step) {
        ServerExchange::start(self, initial_response, &SaslConfig::default())
    }
}

impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Mechanism {
    type Err = SaslError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_name(s)
    }
}

/// Server-wide settings for SCRAM's unknown-user simulation (RFC 5802 §9).
///
/// For a user that does not exist the exchange invents a salt, so that an
/// attacker cannot enumerate accounts by asking for server-first-messages.
/// The salt must be stable per username (asking twice must give the same
/// answer, as for a real user) and unpredictable, hence derived with a
/// server secret; and the iteration count must be the one real users have.
#[derive(Clone)]
pub struct SaslConfig {
    mock_key: [u8; 32],
    mock_iterations: u32,
}

impl SaslConfig {
    /// Settings with a persistent secret (any length; it is hashed). Use a
    /// value kept across restarts and shared by all instances of the
    /// service, otherwise fake salts change when real ones do not.
    #[must_use]
    pub fn new(mock_secret: &[u8]) -> Self {
        Self {
            mock_key: sha256(
                &[b"mailroom-sasl scram mock secret\0".as_slice(), mock_secret].concat(),
            ),
            mock_iterations: DEFAULT_ITERATIONS,
        }
    }

    /// Iteration count announced for unknown users; set it to the count
    /// real users' credentials are derived with if not
    /// [`DEFAULT_ITERATIONS`]. Zero is treated as one.
    #[must_use]
    pub fn with_mock_iterations(mut self, iterations: u32) -> Self {
        self.mock_iterations = iterations.max(1);
        self
    }

    /// The credentials presented for a user that does not exist: salt and
    /// keys are HMACs of the name under the secret, so they are stable per
    /// name and unrelated to any real key.
    fn mock_credentials(&self, authcid: &str) -> ScramCredentials {
        let salt = hmac(&self.mock_key, &[b"salt\0", authcid.as_bytes()]);
        ScramCredentials {
            salt: salt[..DEFAULT_SALT_LEN].to_vec(),
            iterations: self.mock_iterations,
            stored_key: hmac(&self.mock_key, &[b"stored-key\0", authcid.as_bytes()]),
            server_key: hmac(&self.mock_key, &[b"server-key\0", authcid.as_bytes()]),
        }
    }
}

impl Default for SaslConfig {
    /// A secret drawn once per process. Stable for the life of the process,
    /// which is enough to stop casual enumeration, but salts of unknown users
    /// change on restart: services should prefer [`SaslConfig::new`].
    fn default() -> Self {
        static SECRET: OnceLock<[u8; 32]> = OnceLock::new();
        let secret = SECRET.get_or_init(|| {
            let mut bytes = [0u8; 32];
            rand::rng().fill_bytes(&mut bytes);
            bytes
        });
        Self::new(secret)
    }
}

impl fmt::Debug for SaslConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SaslConfig")
            .field("mock_key", &"<redacted>")
            .field("mock_iterations", &self.mock_iterations)
            .finish()
    }
}

/// What the caller must look up before the exchange can continue.
#[derive(Clone, PartialEq, Eq)]
pub enum CredentialRequest {
    /// PLAIN or LOGIN: verify `password` for `authcid` (against the argon2id
    /// hash, outside this crate), then call
    /// [`ServerExchange::password_checked`]. The password is as the client
    /// sent it, not SASLprep'd; apply [`crate::saslprep`] first only if the
    /// stored hashes were computed over prepared passwords.
    Password {
        /// Authentication identity: whose password this is.
        authcid: String,
        /// Requested authorization identity (PLAIN only); `None` means act
        /// as `authcid`. Whether `authcid` may act as it is the caller's
        /// decision, taken before reporting success.
        authzid: Option<String>,
        /// The cleartext password.
        password: String,
    },
    /// SCRAM-SHA-256: fetch the stored [`ScramCredentials`] of `authcid`
    /// and call [`ServerExchange::provide_scram`] (with `None` if there is
    /// no such user, or it may not log in: the exchange then simulates one).
    Scram {
        /// Authentication identity (`n=`, saslname-decoded, not SASLprep'd).
        authcid: String,
        /// Requested authorization identity (`a=` in the gs2 header).
        authzid: Option<String>,
    },
}

impl fmt::Debug for CredentialRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Password {
                authcid, authzid, ..
            } => f
                .debug_struct("Password")
                .field("authcid", authcid)
                .field("authzid", authzid)
                .field("password", &"<redacted>")
                .finish(),
            Self::Scram { authcid, authzid } => f
                .debug_struct("Scram")
                .field("authcid", authcid)
                .field("authzid", authzid)
                .finish(),
        }
    }
}

/// What the protocol layer must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Step {
    /// Send these bytes base64-encoded ([`crate::encode_challenge`]) as
    /// `334 <b64>` (SMTP) or `+ <b64>` (IMAP, POP3), read the client's line
    /// and pass it to [`ServerExchange::respond_line`].
    Challenge(Vec<u8>),
    /// Look the user up and answer with [`ServerExchange::password_checked`]
    /// or [`ServerExchange::provide_scram`] as the request says.
    NeedCredentials(CredentialRequest),
    /// The client proved its identity.
    ///
    /// The caller still decides whether `authcid` may act as `authzid` (and
    /// whether the account may log in now) before replying with success.
    ///
    /// `final_data` is SCRAM's server-final-message (`v=`), which the client
    /// uses to authenticate the server. SMTP, IMAP and POP3 all send it the
    /// way RFC 4422 §5 prescribes for protocols without "additional data
    /// with success": as one more challenge (`334 <b64>` / `+ <b64>`); the
    /// client answers with an empty line (`*` means it cancels after all:
    /// treat as [`SaslError::Cancelled`]) and only then does the server send
    /// `235 2.7.0` / tagged `OK` / `+OK`.
    Success {
        /// Authentication identity that was verified.
        authcid: String,
        /// Requested authorization identity, if any (not yet authorized).
        authzid: Option<String>,
        /// Data to deliver before the success reply (see above).
        final_data: Option<Vec<u8>>,
    },
    /// The exchange is over and failed; reply as [`SaslError`] describes.
    Failure(SaslError),
}

enum State {
    PlainAwaitMessage,
    LoginAwaitUsername,
    LoginAwaitPassword {
        authcid: String,
    },
    AwaitPasswordCheck {
        authcid: String,
        authzid: Option<String>,
    },
    ScramAwaitClientFirst,
    ScramAwaitCredentials(ClientFirst),
    ScramAwaitClientFinal(Box<Pending>),
    Done,
}

impl State {
    fn label(&self) -> &'static str {
        match self {
            Self::PlainAwaitMessage => "PlainAwaitMessage",
            Self::LoginAwaitUsername => "LoginAwaitUsername",
            Self::LoginAwaitPassword { .. } => "LoginAwaitPassword",
            Self::AwaitPasswordCheck { .. } => "AwaitPasswordCheck",
            Self::ScramAwaitClientFirst => "ScramAwaitClientFirst",
            Self::ScramAwaitCredentials(_) => "ScramAwaitCredentials",
            Self::ScramAwaitClientFinal(_) => "ScramAwaitClientFinal",
            Self::Done => "Done",
        }
    }
}

/// LOGIN's prompts (draft-murchison-sasl-login-00 §2). Clients match them
/// loosely, but Outlook-era clients expect exactly these texts.
const LOGIN_USERNAME: &[u8] = b"Username:";
const LOGIN_PASSWORD: &[u8] = b"Password:";

/// One authentication attempt on the server side.
///
/// Pure state machine: it never does I/O. Each method consumes one event
/// (a client message, a credential answer) and returns the next [`Step`].
/// Once a `Success` or `Failure` step has been returned the exchange is
/// finished and every further call yields
/// `Failure(SaslError::OutOfSequence)`; start a new exchange for a new
/// `AUTH`/`AUTHENTICATE` command.
pub struct ServerExchange {
    mechanism: Mechanism,
    state: State,
    config: SaslConfig,
    /// Test hook: a fixed server nonce part, to replay RFC 7677 §3.
    fixed_server_nonce: Option<String>,
}

impl fmt::Debug for ServerExchange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerExchange")
            .field("mechanism", &self.mechanism)
            .field("state", &self.state.label())
            .finish_non_exhaustive()
    }
}

impl ServerExchange {
    /// Starts an exchange with explicit settings (see [`SaslConfig`]);
    /// [`Mechanism::start`] is the same with the default settings.
    pub fn start(
        mechanism: Mechanism,
        initial_response: Option<Vec<u8>>,
        config: &SaslConfig,
    ) -> (Self, Step) {
        let state = match mechanism {
            Mechanism::Plain => State::PlainAwaitMessage,
            Mechanism::Login => State::LoginAwaitUsername,
            Mechanism::ScramSha256 => State::ScramAwaitClientFirst,
        };
        let mut exchange = Self {
            mechanism,
            state,
            config: config.clone(),
            fixed_server_nonce: None,
        };
        let step = match initial_response {
            Some(data) => exchange.respond(&data),
            // PLAIN and SCRAM are client-first: an empty challenge asks for
            // the first message (RFC 4422 §5 item 2a, RFC 4954 §4).
            None => match mechanism {
                Mechanism::Plain | Mechanism::ScramSha256 => Step::Challenge(Vec::new()),
                Mechanism::Login => Step::Challenge(LOGIN_USERNAME.to_vec()),
            },
        };
        (exchange, step)
    }

    /// The mechanism being run.
    #[must_use]
    pub fn mechanism(&self) -> Mechanism {
        self.mechanism
    }

    /// True once a `Success` or `Failure` step has been returned.
    #[must_use]
    pub fn is_finished(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// Feeds the client's *decoded* answer to the last
    /// [`Step::Challenge`] (or an initial response).
    pub fn respond(&mut self, response: &[u8]) -> Step {
        match std::mem::replace(&mut self.state, State::Done) {
            State::PlainAwaitMessage => match parse_plain(response) {
                Ok(m) => self.need_password(m.authcid, m.authzid, m.password),
                Err(e) => Step::Failure(e),
            },
            State::LoginAwaitUsername => {
                match parse_login_field(response, "LOGIN username is empty") {
                    Ok(authcid) => {
                        self.state = State::LoginAwaitPassword { authcid };
                        Step::Challenge(LOGIN_PASSWORD.to_vec())
                    }
                    Err(e) => Step::Failure(e),
                }
            }
            State::LoginAwaitPassword { authcid } => {
                match parse_login_field(response, "LOGIN password is empty") {
                    Ok(password) => self.need_password(authcid, None, password),
                    Err(e) => Step::Failure(e),
                }
            }
            State::ScramAwaitClientFirst => match scram::parse_client_first(response) {
                Ok(first) => {
                    let request = CredentialRequest::Scram {
                        authcid: first.authcid.clone(),
                        authzid: first.authzid.clone(),
                    };
                    self.state = State::ScramAwaitCredentials(first);
                    Step::NeedCredentials(request)
                }
                Err(e) => Step::Failure(e),
            },
            State::ScramAwaitClientFinal(pending) => {
                match scram::verify_client_final(&pending, response) {
                    Ok(server_final) => Step::Success {
                        authcid: pending.first.authcid,
                        authzid: pending.first.authzid,
                        final_data: Some(server_final),
                    },
                    Err(e) => Step::Failure(e),
                }
            }
            State::AwaitPasswordCheck { .. } | State::ScramAwaitCredentials(_) | State::Done => {
                Step::Failure(SaslError::OutOfSequence)
            }
        }
    }

    /// Feeds the client's raw line (base64, `*` or `=`), decoding it with
    /// [`decode_client_response`]; a cancel or bad base64 ends the exchange
    /// with the corresponding failure.
    pub fn respond_line(&mut self, line: &[u8]) -> Step {
        match decode_client_response(line) {
            Ok(data) => self.respond(&data),
            Err(e) => {
                self.state = State::Done;
                Step::Failure(e)
            }
        }
    }

    /// Reports the outcome of the password check a
    /// [`CredentialRequest::Password`] asked for. Unknown users and
    /// disabled accounts are simply `false`: PLAIN and LOGIN reveal nothing
    /// more than the reply code.
    pub fn password_checked(&mut self, ok: bool) -> Step {
        match std::mem::replace(&mut self.state, State::Done) {
            State::AwaitPasswordCheck { authcid, authzid } if ok => Step::Success {
                authcid,
                authzid,
                final_data: None,
            },
            State::AwaitPasswordCheck { .. } => Step::Failure(SaslError::AuthenticationFailed),
            _ => Step::Failure(SaslError::OutOfSequence),
        }
    }

    /// Answers a [`CredentialRequest::Scram`]: the user's stored
    /// credentials, or `None` if the user does not exist (or must not log
    /// in). With `None` the exchange carries on with credentials derived
    /// from the name and the [`SaslConfig`] secret, so the client sees a
    /// plausible, stable salt and fails only at the proof, exactly like a
    /// wrong password (RFC 5802 §9).
    pub fn provide_scram(&mut self, credentials: Option<ScramCredentials>) -> Step {
        match std::mem::replace(&mut self.state, State::Done) {
            State::ScramAwaitCredentials(first) => {
                let (credentials, mock) = match credentials {
                    Some(c) => (c, false),
                    None => (self.config.mock_credentials(&first.authcid), true),
                };
                let server_nonce = self
                    .fixed_server_nonce
                    .take()
                    .unwrap_or_else(scram::random_server_nonce);
                let pending = scram::server_first(first, &server_nonce, credentials, mock);
                let challenge = pending.server_first.clone().into_bytes();
                self.state = State::ScramAwaitClientFinal(Box::new(pending));
                Step::Challenge(challenge)
            }
            _ => Step::Failure(SaslError::OutOfSequence),
        }
    }

    fn need_password(
        &mut self,
        authcid: String,
        authzid: Option<String>,
        password: String,
    ) -> Step {
        self.state = State::AwaitPasswordCheck {
            authcid: authcid.clone(),
            authzid: authzid.clone(),
        };
        Step::NeedCredentials(CredentialRequest::Password {
            authcid,
            authzid,
            password,
        })
    }

    /// Test and fuzzing hook: use `nonce` as the server part of the SCRAM
    /// nonce instead of a random one.
    pub(crate) fn set_server_nonce(&mut self, nonce: &str) {
        self.fixed_server_nonce = Some(nonce.to_owned());
    }
}
