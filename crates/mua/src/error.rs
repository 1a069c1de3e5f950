//! The client's one error type, and the stable exit codes the CLI maps it to.
//!
//! Every error says what happened and, where the user can act, what to do;
//! the server's own text is quoted when the server refused something. The
//! exit codes are part of the command-line interface (documented in
//! `mailroom mail --help`) and must not change meaning.

use std::fmt;

/// Why a client operation failed.
#[derive(Debug)]
pub enum Error {
    /// Bad arguments or configuration (missing profile, no password source…).
    Usage(String),
    /// The server could not be reached (refused, unknown host, timeout).
    Connect {
        /// `host:port`.
        server: String,
        /// The system's reason.
        reason: String,
    },
    /// The TLS handshake failed; usually an untrusted certificate.
    Tls {
        /// `host:port`.
        server: String,
        /// rustls' reason.
        reason: String,
    },
    /// The server refused our credentials.
    Auth(String),
    /// The server answered a command with a refusal (IMAP NO/BAD, POP3
    /// -ERR, SMTP 4xx/5xx); its text is quoted.
    Refused {
        /// What we asked for.
        command: String,
        /// What the server said.
        reply: String,
    },
    /// A mailbox, message or part that does not exist.
    NotFound(String),
    /// The server broke the protocol or a limit (line or literal too long,
    /// unparsable response, closed connection mid-command).
    Protocol(String),
    /// A local file could not be read or written.
    File(String),
    /// Anything else that went wrong on the connection.
    Io(std::io::Error),
}

/// Exit codes of `mailroom mail …`, one per [`Error`] class.
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// An unexpected failure (I/O on the connection…).
    pub const OTHER: u8 = 1;
    /// Bad arguments, a missing profile or password source.
    pub const USAGE: u8 = 2;
    /// The server could not be reached.
    pub const CONNECT: u8 = 3;
    /// TLS failed (certificate not trusted…).
    pub const TLS: u8 = 4;
    /// Authentication failed.
    pub const AUTH: u8 = 5;
    /// The server refused a command.
    pub const REFUSED: u8 = 6;
    /// Mailbox, message or attachment not found.
    pub const NOT_FOUND: u8 = 7;
    /// The server broke the protocol or a limit.
    pub const PROTOCOL: u8 = 8;
    /// A local file could not be read or written.
    pub const FILE: u8 = 9;
}

impl Error {
    /// The exit code for this error (see [`exit`]).
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) => exit::USAGE,
            Error::Connect { .. } => exit::CONNECT,
            Error::Tls { .. } => exit::TLS,
            Error::Auth(_) => exit::AUTH,
            Error::Refused { .. } => exit::REFUSED,
            Error::NotFound(_) => exit::NOT_FOUND,
            Error::Protocol(_) => exit::PROTOCOL,
            Error::File(_) => exit::FILE,
            Error::Io(_) => exit::OTHER,
        }
    }

    pub(crate) fn protocol(what: impl Into<String>) -> Error {
        Error::Protocol(what.into())
    }

    pub(crate) fn refused(command: impl Into<String>, reply: impl Into<String>) -> Error {
        Error::Refused {
            command: command.into(),
            reply: reply.into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage(m) => write!(f, "{m}"),
            Error::Connect { server, reason } => write!(
                f,
                "cannot connect to {server}: {reason} (check the server name, the port and that the server is running)"
            ),
            Error::Tls { server, reason } => write!(
                f,
                "TLS with {server} failed: {reason} (a private CA: --ca-file FILE; a throw-away test server only: --insecure)"
            ),
            Error::Auth(m) => write!(
                f,
                "login refused: {m} (check the user name and the password)"
            ),
            Error::Refused { command, reply } => {
                write!(f, "the server refused {command}: \"{reply}\"")
            }
            Error::NotFound(m) => write!(f, "{m}"),
            Error::Protocol(m) => write!(f, "the server broke the protocol: {m}"),
            Error::File(m) => write!(f, "{m}"),
            Error::Io(e) => write!(f, "connection failed: {e}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Error {
        Error::Io(e)
    }
}

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
