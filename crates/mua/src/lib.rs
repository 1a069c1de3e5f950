//! Mailroom's mail client library: the client half of the three protocols
//! the servers speak, for `mailroom mail …` and for anyone's tests.
//!
//! * [`smtp`]: submission (RFC 6409): EHLO, STARTTLS or implicit TLS, AUTH
//!   with the best offered mechanism (SCRAM-SHA-256, else PLAIN), MAIL /
//!   RCPT / DATA with dot-stuffing; replies parsed by `mailroom-smtp-proto`.
//! * [`imap`]: IMAP4rev2/rev1 on `imap-codec` (no second IMAP parser).
//! * [`pop3`]: POP3 with CAPA, STLS and SASL.
//! * [`connection`]: the one connection piece the three share (TLS with
//!   system roots, `--ca-file`, `--insecure`; bounded reads; timeouts; the
//!   redacting trace), the client-side counterpart of `mailroom-net`.
//! * [`message`]: composing (mail-builder) and reading (mail-parser)
//!   messages.
//! * [`save`]: attachments streamed to disk, decoded as they arrive, put in
//!   place only whole and never over an existing file.
//! * [`account`]: account profiles and where passwords come from.
//!
//! Invariants, whatever the server does:
//! * memory is bounded: every line, literal and multi-line response has a
//!   limit ([`connection::ClientOptions::max_message`]) checked before the
//!   bytes are buffered; an attachment saved over IMAP is streamed to disk
//!   a read buffer at a time, whatever its size;
//! * no panic on server input: bad input is an [`Error`] with an exit code;
//! * secrets never reach the trace, a log line or argv;
//! * attachments are written only inside the chosen directory, under a
//!   sanitised name, never over an existing file.

pub mod account;
pub mod connection;
mod error;
pub mod imap;
pub mod message;
pub mod pop3;
pub mod save;
pub mod smtp;

pub use connection::{ClientOptions, Endpoint, NoProgress, Progress, Security, TlsOptions};
pub use error::{Error, Result, exit};
