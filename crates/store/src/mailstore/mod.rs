//! The IMAP view of the store: mailboxes by name, message metadata, and the
//! writes IMAP commands make (CREATE, DELETE, RENAME, SUBSCRIBE, APPEND,
//! STORE, COPY, MOVE, EXPUNGE), with what CONDSTORE/QRESYNC (RFC 7162)
//! needs to tell a session what changed.
//!
//! Invariants:
//!
//! * **UIDs** are allocated by incrementing `mailboxes.uidnext` inside the
//!   transaction that inserts the messages (as [`Store::store_message`]
//!   does): strictly increasing, never reused, and a rolled-back write rolls
//!   its UIDs back too. COPY and MOVE give the new messages consecutive UIDs
//!   in source-UID order.
//! * **MODSEQs**: every write call takes its mailbox's row lock, then
//!   allocates *one* new MODSEQ (`highestmodseq + 1`) for that mailbox,
//!   which every message it changed or added gets and every UID it expunged
//!   is recorded with (table `expunged`). A call that changes nothing does
//!   not bump `highestmodseq`. Since the value is allocated under the lock
//!   and published by the commit, a reader that sees `highestmodseq = H`
//!   sees every change with MODSEQ ≤ H.
//! * **Lock order** is account row, then mailbox row(s), then message rows,
//!   everywhere (deliveries and the POP3 expunge included). Transactions
//!   that lock two mailboxes (COPY, MOVE, RENAME) take the account row
//!   first, so they are serialised against each other and cannot deadlock;
//!   the others lock at most one mailbox. On SQLite, write transactions are
//!   `BEGIN IMMEDIATE` and serialised anyway.
//! * **Quota**: `accounts.used_bytes` is the total size of the account's
//!   messages. Every write changes it in the transaction that adds or
//!   removes the rows: APPEND and COPY charge (refused with
//!   `FailedPrecondition("OVERQUOTA …")`, nothing written, when the quota
//!   would be exceeded), EXPUNGE and DELETE refund, MOVE and the INBOX
//!   RENAME are net zero.
//! * Every multi-row write is **one transaction**: it happens entirely or
//!   not at all.
//! * **Events**: after the commit of every write that changed something, a
//!   [`MailboxEvent`] per mailbox written is sent through the same channel
//!   as new-mail notifications (`uid` is the highest new UID for APPEND and
//!   COPY/MOVE destinations, 0 otherwise).
//! * Reads that return several related things ([`Store::changes_since`],
//!   [`Store::mailbox_snapshot`]) run in one read-only snapshot
//!   transaction, so they are mutually consistent.
//! * **UID lists** may be long (a 10 000-message mailbox): they are turned
//!   into UID ranges, and statements take at most [`RANGES_PER_QUERY`]
//!   ranges each (far below SQLite's 32 766 bind parameters). Writes first
//!   read the metadata of the UID span concerned under the mailbox lock, so
//!   each range covers exactly the messages meant, however fragmented the
//!   UIDs are by earlier expunges.
//! * Mailbox names are full `/`-delimited paths compared exactly, except
//!   `INBOX`, which matches in any case (RFC 9051 §5.1) and is stored as
//!   `INBOX`. Keywords are stored space-separated; they compare without
//!   case, the first spelling is kept, no keyword appears twice.

use std::collections::HashMap;
use std::fmt::Write as _;

use sqlx::Row;

use crate::{Mailbox, MailboxEvent, Result, Store, StoreError, now, on_backend, write_tx};

/// System flags as stored in `messages.flags` (a bit set).
pub mod flag_bits {
    /// `\Seen`.
    pub const SEEN: i64 = 1;
    /// `\Answered`.
    pub const ANSWERED: i64 = 2;
    /// `\Flagged`.
    pub const FLAGGED: i64 = 4;
    /// `\Deleted`.
    pub const DELETED: i64 = 8;
    /// `\Draft`.
    pub const DRAFT: i64 = 16;
    /// Every bit above; any other bit is refused as invalid.
    pub const ALL: i64 = SEEN | ANSWERED | FLAGGED | DELETED | DRAFT;
}

/// How many UID ranges one statement carries (two bind parameters each).
pub const RANGES_PER_QUERY: usize = 400;

/// The longest mailbox name accepted, in bytes.
pub const MAX_MAILBOX_NAME: usize = 1000;

/// The metadata of one message, as a SELECT or FETCH FLAGS needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageMeta {
    /// Its UID.
    pub uid: u32,
    /// Its MODSEQ: the MODSEQ of the last change of its flags or keywords
    /// (or of its arrival).
    pub modseq: u64,
    /// System flags, a bit set of [`flag_bits`].
    pub flags: i64,
    /// Keywords, in the order they were first set.
    pub keywords: Vec<String>,
    /// IMAP INTERNALDATE, Unix seconds.
    pub internal_date: i64,
    /// RFC822.SIZE: the stored text (prefix and blob), in bytes.
    pub size: u64,
}

/// What a STORE does with the flags and keywords given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagOp {
    /// `+FLAGS`: add them.
    Add,
    /// `-FLAGS`: remove them.
    Remove,
    /// `FLAGS`: replace the message's flags and keywords with them.
    Replace,
}

/// The result of [`Store::store_flags`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOutcome {
    /// Messages whose flags or keywords actually changed, with their new
    /// state and MODSEQ, in UID order.
    pub updated: Vec<MessageMeta>,
    /// UIDs refused by UNCHANGEDSINCE (their MODSEQ was greater than the
    /// value given), ascending: the `MODIFIED` response code of RFC 7162.
    pub modified: Vec<u32>,
    /// The mailbox's HIGHESTMODSEQ after the call.
    pub highestmodseq: u64,
}

/// The result of [`Store::append_message`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The mailbox's UIDVALIDITY (for APPENDUID, RFC 4315).
    pub uidvalidity: u32,
    /// The new message's UID.
    pub uid: u32,
    /// Its MODSEQ (the mailbox's new HIGHESTMODSEQ).
    pub modseq: u64,
}

/// One message of a MULTIAPPEND ([`Store::append_messages_to`]).
#[derive(Debug, Clone, Copy)]
pub struct AppendMessage<'a> {
    /// The message, CRLF lines.
    pub content: &'a [u8],
    /// System flags (bits of [`flag_bits`]).
    pub flags: i64,
    /// Keywords (IMAP atoms).
    pub keywords: &'a [String],
    /// INTERNALDATE, seconds since the epoch.
    pub internal_date: i64,
    /// The cached message summary, if parsed.
    pub parse_cache: Option<&'a str>,
}

/// The result of [`Store::expunge_messages`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expunged {
    /// The removed UIDs, ascending.
    pub uids: Vec<u32>,
    /// The mailbox's HIGHESTMODSEQ after the expunge (one more than before
    /// when something was removed, unchanged otherwise).
    pub highestmodseq: u64,
}

/// The result of [`Store::copy_messages`] and [`Store::move_messages`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copied {
    /// The destination's UIDVALIDITY (for COPYUID, RFC 4315).
    pub uidvalidity: u32,
    /// (source UID, new destination UID), in source-UID order. Empty when
    /// none of the UIDs asked for exists.
    pub pairs: Vec<(u32, u32)>,
}

/// What changed in a mailbox after a MODSEQ ([`Store::changes_since`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changes {
    /// Messages with a MODSEQ greater than the one given (changed flags or
    /// new arrivals), in UID order.
    pub changed: Vec<MessageMeta>,
    /// UIDs expunged with a MODSEQ greater than the one given, ascending.
    pub vanished: Vec<u32>,
    /// The mailbox's HIGHESTMODSEQ, consistent with the two lists.
    pub highestmodseq: u64,
    /// The mailbox's UIDNEXT, consistent with the two lists.
    pub uidnext: u32,
}

/// Counts for STATUS ([`Store::mailbox_counts`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MailboxCounts {
    /// Messages in the mailbox.
    pub messages: u32,
    /// Messages without `\Seen`.
    pub unseen: u32,
    /// Messages with `\Deleted`.
    pub deleted: u32,
    /// Their total size, in bytes: what EXPUNGE would free (STATUS
    /// DELETED-STORAGE, RFC 9208 §4.2.3).
    pub deleted_size: u64,
    /// Total size of the messages, in bytes (STATUS SIZE, RFC 8438).
    pub size: u64,
}

/// A mailbox and all its messages, read in one snapshot: what SELECT needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxSnapshot {
    /// The mailbox, with the UIDNEXT and HIGHESTMODSEQ matching `messages`.
    pub mailbox: Mailbox,
    /// Every message, in UID order.
    pub messages: Vec<MessageMeta>,
}

#[macro_use]
mod sql;
use sql::*;

mod mailboxes;
mod multiappend;
mod objectid;
mod savedate;
pub use objectid::mailbox_object_id;
mod reads;
mod sync;
mod writes;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_never_cover_other_messages() {
        // Span 1,2,4,5,7,9; pick 1,2,4 and 9; 5 and 7 not.
        let rows = [
            (1, true),
            (2, true),
            (4, true),
            (5, false),
            (7, false),
            (9, true),
        ];
        assert_eq!(runs(rows), [(1, 4), (9, 9)]);
        let grouped = grouped_runs(
            [
                (1, Some(0)),
                (2, Some(1)),
                (3, Some(1)),
                (5, None),
                (6, Some(0)),
                (8, Some(0)),
            ],
            2,
        );
        assert_eq!(grouped, [vec![(1, 1), (6, 8)], vec![(2, 3)]]);
    }

    #[test]
    fn value_ranges_and_membership() {
        assert_eq!(
            value_ranges(&[1, 2, 3, 7, 9, 10, u32::MAX]),
            [(1, 3), (7, 7), (9, 10), (u32::MAX, u32::MAX)]
        );
        let m: Vec<bool> = membership([1, 3, 5, 8], &[2, 3, 8, 9]).collect();
        assert_eq!(m, [false, true, false, true]);
        assert_eq!(
            ranges_sql("uid", 3, 2),
            "(uid BETWEEN $3 AND $4 OR uid BETWEEN $5 AND $6)"
        );
    }

    #[test]
    fn keywords_compare_without_case() {
        let kw = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            check_flags(0, &kw(&["$Label", "$label", "Work"])).unwrap(),
            kw(&["$Label", "Work"])
        );
        assert!(check_flags(32, &[]).is_err());
        assert!(check_flags(0, &kw(&["a b"])).is_err());
        assert!(check_flags(0, &kw(&["\\Seen"])).is_err());
        let (f, k) = apply_op(FlagOp::Add, 1, &kw(&["A"]), 2, &kw(&["a", "B"]));
        assert_eq!((f, k), (3, kw(&["A", "B"])));
        let (f, k) = apply_op(FlagOp::Remove, 3, &kw(&["A", "B"]), 1, &kw(&["b"]));
        assert_eq!((f, k), (2, kw(&["A"])));
        let (f, k) = apply_op(FlagOp::Replace, 3, &kw(&["A", "B"]), 4, &kw(&["b", "a"]));
        assert_eq!((f, k), (4, kw(&["A", "B"])));
        assert!(is_within("a/b", "a") && is_within("a", "a") && !is_within("ab", "a"));
    }
}
