//! The pure syntax half of SMTP (RFC 5321 and the extensions Mailroom speaks).
//!
//! Three services share this crate: the submission server (MSA, RFC 6409),
//! the inbound MTA on port 25, and the outbound SMTP client (which writes
//! commands and reads replies). Everything here is bytes in, typed values or
//! "need more data" out; there is no socket, no async runtime, no database and
//! no policy. Whether a sender may relay, whether `SMTPUTF8` was negotiated or
//! whether a message is too old is decided by the session that calls us; this
//! crate only reports the facts it needs (`Path::has_non_ascii`,
//! `Path::had_source_route`, `DataReceiver::size`, …).
//!
//! Where it sits in a session:
//!
//! 1. [`take_line`] cuts one command line out of the input buffer, bounded
//!    by the caller's limit (RFC 5321 §4.5.3.1.4, 512 octets by default);
//! 2. [`Command::parse`] turns it into a [`Command`], or a [`SyntaxError`]
//!    that already carries the [`Reply`] to send;
//! 3. after `DATA`, a [`DataReceiver`] consumes the message up to the one
//!    true terminator `CRLF . CRLF`; after `BDAT`, a [`BdatReceiver`] consumes
//!    exactly the announced number of octets;
//! 4. replies are built as [`Reply`] values and serialised with
//!    [`Reply::write_to`]; the client parses them back with [`Reply::parse`].
//!
//! Invariants the rest of Mailroom relies on:
//!
//! * **No SMTP smuggling.** The end of DATA is only `CRLF . CRLF`. A bare CR
//!   or bare LF is never a line ending in message content, never ends the
//!   data, and makes the message fail with [`DataError::BareLineEnding`]; NUL
//!   makes it fail with [`DataError::Nul`]. The receiver still consumes up to
//!   the real terminator, so the bytes a smuggler hid behind a fake ending are
//!   never read as commands (CVE-2023-51764, -51765, -51766).
//! * **Bounded memory.** Every parser takes a limit: lines are cut at the
//!   caller's maximum and oversized lines can be skipped without buffering
//!   them; DATA and BDAT receivers stop storing at `max_size` and only count
//!   beyond it, while still finding the end of the message.
//! * **Nothing consumed past the end.** Receivers report how many bytes they
//!   used, so pipelined commands that follow the message in the same read
//!   (RFC 2920) are left for the command parser.
//! * **Splitting does not matter.** Every parser gives the same answer
//!   whatever way the input was cut into reads, down to one byte at a time.
//! * **Replies cannot be forged through text.** CR, LF and other control
//!   characters in reply text are replaced before they reach the wire.
//!
//! The crate has no dependencies so it builds in seconds and can be fuzzed on
//! its own (see `fuzz/`).

#![warn(missing_docs)]

mod bdat;
mod command;
mod data;
#[doc(hidden)]
pub mod fuzz;
mod line;
mod params;
mod path;
mod reply;
pub mod xtext;

pub use bdat::BdatReceiver;
pub use command::{Command, HeloName, SyntaxError};
pub use data::{DataError, DataReceiver, Fed, count_received_headers, header_section};
pub use line::{
    Line, MAX_COMMAND_LINE, MAX_REPLY_LINE, MAX_TEXT_LINE, Skipped, skip_line, take_line,
};
pub use params::{Body, MailAuth, MailParameters, Notify, OriginalRecipient, RcptParameters, Ret};
pub use path::{
    ForwardPath, Host, MAX_DOMAIN_LEN, MAX_LOCAL_PART_LEN, MAX_PATH_LEN, Path, PathError,
    ReversePath,
};
pub use reply::{Capabilities, EnhancedStatus, MAX_REPLY_LINES, Reply, ReplyParse};
