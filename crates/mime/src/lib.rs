//! Message structure for IMAP: what FETCH and SEARCH need from a message's
//! bytes.
//!
//! * [`Summary`] — computed once per message ([`Summary::parse`], stored as
//!   JSON): the ENVELOPE and the MIME tree behind BODY and BODYSTRUCTURE,
//!   following RFC 9051 §7.5.2. Envelope strings are the header text,
//!   unfolded but not decoded (RFC 2047 encoded words stay); addresses are
//!   split into name, source route, mailbox and host, with RFC 5322 groups
//!   as start/end markers whose host is NIL. Body part sizes are the octets
//!   of the part's body as it is in the message, line counts its LF count,
//!   as Dovecot reports them; a delimiter line's preceding line break
//!   belongs to the delimiter (RFC 2046 §5.1.1).
//! * [`section`] — BODY\[section\] (RFC 9051 §6.4.5 and §7.5.2): part
//!   numbers, HEADER, HEADER.FIELDS\[.NOT\], TEXT, MIME; [`binary_section`]
//!   and [`binary_size`] — BINARY\[section\] and BINARY.SIZE (RFC 3516):
//!   the part with its Content-Transfer-Encoding removed.
//! * [`header_values`], [`header_contains`], [`body_contains`],
//!   [`text_contains`], [`sent_date`] — SEARCH (RFC 9051 §6.4.4) on decoded
//!   text.
//!
//! The stored message is a per-recipient header prefix (`Return-Path`,
//! `Delivered-To`, ...) followed by the message as it arrived; the MDA
//! computes the [`Summary`] on the message without the prefix. That is the
//! same summary as for the stored bytes: the prefix holds no envelope
//! field, and BODYSTRUCTURE does not report the size of the top-level
//! header. [`section`], [`binary_section`] and the SEARCH functions take the
//! stored message, prefix included, since BODY\[HEADER\] and BODY\[\] must
//! show it.
//!
//! Header fields, Content-Type parameters (RFC 2231), encoded words, dates,
//! base64, quoted-printable and charsets are read with mail-parser; what is
//! written here is what it does not offer: the exact octet ranges of
//! headers and body parts, and envelope addresses from the raw header.
//!
//! IMAP strings are built with imap-types' `IString::try_from`, which makes
//! a quoted string when it can and a literal otherwise; header bytes that
//! are not ASCII therefore reach the client as literal 8-bit bytes,
//! unchanged (only NUL, which no IMAP string can hold, is dropped).

#![warn(missing_docs)]

mod address;
mod entity;
#[doc(hidden)]
pub mod fuzz;
mod preview;
mod raw;
mod search;
mod section;
mod sortkey;
mod summary;

pub use address::{AddressFields, MISSING_DOMAIN, MISSING_MAILBOX};
pub use preview::{PREVIEW_CHARS, preview};
pub use raw::Raw;
pub use search::{
    body_contains, header_contains, header_values, sent_date, sent_date_local, text_contains,
};
pub use section::{BinaryError, binary_section, binary_size, section};
pub use sortkey::{date_value, decode_text, envelope_from_json, field_value, msg_ids};
pub use summary::{BodyPart, Content, DispositionFields, EnvelopeFields, Summary};
