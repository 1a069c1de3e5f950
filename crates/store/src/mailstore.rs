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

/// The columns of [`MessageMeta`], for `concat!`.
macro_rules! meta_cols {
    () => {
        "uid, modseq, flags, keywords, internal_date, size"
    };
}

/// The columns of [`Mailbox`], for `concat!`.
macro_rules! mailbox_cols {
    () => {
        "id, account_id, name, special_use, subscribed, uidvalidity, uidnext, highestmodseq"
    };
}

macro_rules! meta_from_row {
    ($row:expr) => {{
        let row = &$row;
        MessageMeta {
            uid: row.try_get::<i64, _>("uid")? as u32,
            modseq: row.try_get::<i64, _>("modseq")? as u64,
            flags: row.try_get("flags")?,
            keywords: split_keywords(&row.try_get::<String, _>("keywords")?),
            internal_date: row.try_get("internal_date")?,
            size: row.try_get::<i64, _>("size")?.max(0) as u64,
        }
    }};
}

macro_rules! mailbox_from_row {
    ($row:expr) => {{
        let row = &$row;
        Mailbox {
            id: row.try_get("id")?,
            account_id: row.try_get("account_id")?,
            name: row.try_get("name")?,
            special_use: row.try_get("special_use")?,
            subscribed: row.try_get("subscribed")?,
            uidvalidity: row.try_get::<i64, _>("uidvalidity")? as u32,
            uidnext: row.try_get::<i64, _>("uidnext")? as u32,
            highestmodseq: row.try_get::<i64, _>("highestmodseq")? as u64,
        }
    }};
}

/// Like [`write_tx!`] for reads that must be mutually consistent: one
/// read-only snapshot (REPEATABLE READ on PostgreSQL; a deferred
/// transaction on SQLite, whose WAL snapshot starts at the first read).
macro_rules! read_tx {
    ($store:expr, |$tx:ident| $body:expr) => {
        match $store.backend() {
            $crate::Backend::Postgres(pool) => {
                let mut $tx = pool
                    .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                    .await?;
                let out = $body;
                $tx.commit().await?;
                out
            }
            $crate::Backend::Sqlite(pool) => {
                let mut $tx = pool.begin().await?;
                let out = $body;
                $tx.commit().await?;
                out
            }
        }
    };
}

/// Binds the bounds of `ranges` to `query`, in order.
macro_rules! bind_ranges {
    ($query:expr, $ranges:expr) => {{
        let mut q = $query;
        for &(first, last) in $ranges {
            q = q.bind(i64::from(first)).bind(i64::from(last));
        }
        q
    }};
}

/// The account a mailbox belongs to (no lock: it never changes).
macro_rules! account_of {
    ($tx:ident, $mailbox:expr) => {{
        let id: i64 = $mailbox;
        let account: i64 = sqlx::query_scalar("SELECT account_id FROM mailboxes WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *$tx)
            .await?
            .ok_or_else(|| no_mailbox(id))?;
        account
    }};
}

/// Locks the account row: first in the lock order.
macro_rules! lock_account {
    ($tx:ident, $account:expr) => {
        sqlx::query("UPDATE accounts SET used_bytes = used_bytes WHERE id = $1")
            .bind($account)
            .execute(&mut *$tx)
            .await?
    };
}

/// Locks a mailbox row and returns its account and current highestmodseq:
/// [`account_of!`] and [`lock_mailbox!`] in one statement.
macro_rules! lock_mailbox_of_account {
    ($tx:ident, $mailbox:expr) => {{
        let id: i64 = $mailbox;
        let row: (i64, i64) = sqlx::query_as(
            "UPDATE mailboxes SET highestmodseq = highestmodseq WHERE id = $1
             RETURNING account_id, highestmodseq",
        )
        .bind(id)
        .fetch_optional(&mut *$tx)
        .await?
        .ok_or_else(|| no_mailbox(id))?;
        row
    }};
}

/// Locks a mailbox row and returns its current highestmodseq.
macro_rules! lock_mailbox {
    ($tx:ident, $mailbox:expr) => {
        lock_mailbox_of_account!($tx, $mailbox).1
    };
}

/// Locks the account row of a mailbox and returns the account's id:
/// [`account_of!`] and [`lock_account!`] in one statement (the account is
/// still the first lock taken).
macro_rules! lock_account_of {
    ($tx:ident, $mailbox:expr) => {{
        let id: i64 = $mailbox;
        let account: i64 = sqlx::query_scalar(
            "UPDATE accounts SET used_bytes = used_bytes
             WHERE id = (SELECT account_id FROM mailboxes WHERE id = $1)
             RETURNING id",
        )
        .bind(id)
        .fetch_optional(&mut *$tx)
        .await?
        .ok_or_else(|| no_mailbox(id))?;
        account
    }};
}

/// Allocates a new MODSEQ for a (locked) mailbox; returns it.
macro_rules! bump_modseq {
    ($tx:ident, $mailbox:expr) => {{
        let modseq: i64 = sqlx::query_scalar(
            "UPDATE mailboxes SET highestmodseq = highestmodseq + 1 WHERE id = $1
             RETURNING highestmodseq",
        )
        .bind($mailbox)
        .fetch_one(&mut *$tx)
        .await?;
        modseq
    }};
}

/// Allocates `n` UIDs and one MODSEQ in a mailbox; returns (uidvalidity,
/// first new UID, modseq).
macro_rules! allocate {
    ($tx:ident, $mailbox:expr, $n:expr) => {{
        let n: i64 = $n;
        let row = sqlx::query(
            "UPDATE mailboxes SET uidnext = uidnext + $2, highestmodseq = highestmodseq + 1
             WHERE id = $1 RETURNING uidvalidity, uidnext, highestmodseq",
        )
        .bind($mailbox)
        .bind(n)
        .fetch_one(&mut *$tx)
        .await?;
        let uidnext: i64 = row.try_get("uidnext")?;
        if uidnext - 1 > i64::from(u32::MAX) {
            return Err(StoreError::FailedPrecondition(
                "the mailbox has run out of UIDs".into(),
            ));
        }
        (
            row.try_get::<i64, _>("uidvalidity")?,
            uidnext - n,
            row.try_get::<i64, _>("highestmodseq")?,
        )
    }};
}

/// Charges `bytes` to the account unless that exceeds its quota; on excess
/// returns the OVERQUOTA error from the enclosing function.
macro_rules! charge {
    ($tx:ident, $account:expr, $bytes:expr) => {{
        let account: i64 = $account;
        let bytes: i64 = $bytes;
        let charged = sqlx::query(
            "UPDATE accounts SET used_bytes = used_bytes + $2
             WHERE id = $1 AND (quota_bytes = 0 OR used_bytes + $2 <= quota_bytes)
             RETURNING used_bytes",
        )
        .bind(account)
        .bind(bytes)
        .fetch_optional(&mut *$tx)
        .await?;
        if charged.is_none() {
            let row = sqlx::query("SELECT quota_bytes, used_bytes FROM accounts WHERE id = $1")
                .bind(account)
                .fetch_one(&mut *$tx)
                .await?;
            return Err(over_quota(
                bytes,
                row.try_get("used_bytes")?,
                row.try_get("quota_bytes")?,
            ));
        }
    }};
}

/// Gives `bytes` back to the account.
macro_rules! refund {
    ($tx:ident, $account:expr, $bytes:expr) => {
        sqlx::query(
            "UPDATE accounts SET used_bytes = CASE WHEN used_bytes > $2 THEN used_bytes - $2 ELSE 0 END
             WHERE id = $1",
        )
        .bind($account)
        .bind($bytes)
        .execute(&mut *$tx)
        .await?
    };
}

/// The metadata of every message of a mailbox with a UID in `lo..=hi`, in
/// UID order.
macro_rules! fetch_span {
    ($tx:ident, $mailbox:expr, $lo:expr, $hi:expr) => {{
        let rows = sqlx::query(concat!(
            "SELECT ",
            meta_cols!(),
            " FROM messages WHERE mailbox_id = $1 AND uid BETWEEN $2 AND $3 ORDER BY uid"
        ))
        .bind($mailbox)
        .bind(i64::from($lo))
        .bind(i64::from($hi))
        .fetch_all(&mut *$tx)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            out.push(meta_from_row!(row));
        }
        out
    }};
}

/// (uid, flags, size) of every message of a mailbox with a UID in
/// `lo..=hi`, in UID order: the light form of [`fetch_span!`].
macro_rules! fetch_span_brief {
    ($tx:ident, $mailbox:expr, $lo:expr, $hi:expr) => {{
        let rows: Vec<(i64, i64, i64)> = sqlx::query_as(
            "SELECT uid, flags, size FROM messages
             WHERE mailbox_id = $1 AND uid BETWEEN $2 AND $3 ORDER BY uid",
        )
        .bind($mailbox)
        .bind(i64::from($lo))
        .bind(i64::from($hi))
        .fetch_all(&mut *$tx)
        .await?;
        rows.into_iter()
            .map(|(uid, flags, size)| Brief {
                uid: uid as u32,
                flags,
                size,
            })
            .collect::<Vec<Brief>>()
    }};
}

/// Copies the messages of `source` in `runs` into `dest` with UIDs
/// `first_uid`, `first_uid + 1`, … (in source-UID order) and MODSEQ
/// `modseq`; returns how many rows were inserted.
macro_rules! copy_rows {
    ($tx:ident, $source:expr, $runs:expr, $dest:expr, $first_uid:expr, $modseq:expr) => {{
        let mut copied: i64 = 0;
        for chunk in $runs.chunks(RANGES_PER_QUERY) {
            let sql = format!(
                "INSERT INTO messages (mailbox_id, uid, modseq, flags, keywords, internal_date, size,
                                       blob_hash, prefix, parse_cache)
                 SELECT $1, $2 + ROW_NUMBER() OVER (ORDER BY uid), $3, flags, keywords, internal_date,
                        size, blob_hash, prefix, parse_cache
                 FROM messages WHERE mailbox_id = $4 AND {}",
                ranges_sql("uid", 5, chunk.len())
            );
            let query = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind($dest)
                .bind($first_uid - 1 + copied)
                .bind($modseq)
                .bind($source);
            copied += bind_ranges!(query, chunk)
                .execute(&mut *$tx)
                .await?
                .rows_affected() as i64;
        }
        copied
    }};
}

/// Moves the messages of `mailbox` in `runs` into `expunged` with MODSEQ
/// `modseq`; returns how many were removed.
macro_rules! expunge_rows {
    ($tx:ident, $mailbox:expr, $runs:expr, $modseq:expr) => {{
        let mut removed: u64 = 0;
        for chunk in $runs.chunks(RANGES_PER_QUERY) {
            let record = format!(
                "INSERT INTO expunged (mailbox_id, uid, modseq)
                 SELECT mailbox_id, uid, $2 FROM messages WHERE mailbox_id = $1 AND {}",
                ranges_sql("uid", 3, chunk.len())
            );
            let query = sqlx::query(sqlx::AssertSqlSafe(record))
                .bind($mailbox)
                .bind($modseq);
            bind_ranges!(query, chunk).execute(&mut *$tx).await?;
            let delete = format!(
                "DELETE FROM messages WHERE mailbox_id = $1 AND {}",
                ranges_sql("uid", 2, chunk.len())
            );
            let query = sqlx::query(sqlx::AssertSqlSafe(delete)).bind($mailbox);
            removed += bind_ranges!(query, chunk)
                .execute(&mut *$tx)
                .await?
                .rows_affected();
        }
        removed
    }};
}

/// A message as COPY, MOVE and EXPUNGE need it.
#[derive(Debug, Clone, Copy)]
struct Brief {
    uid: u32,
    flags: i64,
    size: i64,
}

fn no_mailbox(id: i64) -> StoreError {
    StoreError::NotFound(format!("no mailbox {id}"))
}

fn no_mailbox_named(name: &str) -> StoreError {
    StoreError::NotFound(format!("no mailbox named {name:?}"))
}

fn over_quota(bytes: i64, used: i64, quota: i64) -> StoreError {
    StoreError::FailedPrecondition(format!(
        "OVERQUOTA storing {bytes} more bytes would exceed the quota ({used} of {quota} bytes used)"
    ))
}

/// The name as stored: `INBOX` in any case is `INBOX`.
fn canonical_name(name: &str) -> &str {
    if name.eq_ignore_ascii_case("INBOX") {
        "INBOX"
    } else {
        name
    }
}

/// Checks a name for a new mailbox (CREATE, RENAME target) and returns it
/// in its stored form: not empty, no empty hierarchy level (no leading or
/// trailing `/`, no `//`), no control characters, at most
/// [`MAX_MAILBOX_NAME`] bytes.
fn valid_name(name: &str) -> Result<&str> {
    let bad = |why: &str| {
        Err(StoreError::InvalidArgument(format!(
            "bad mailbox name {name:?}: {why}"
        )))
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > MAX_MAILBOX_NAME {
        return bad("it is too long");
    }
    if name.split('/').any(str::is_empty) {
        return bad("it has an empty hierarchy level");
    }
    if name.chars().any(char::is_control) {
        return bad("it contains control characters");
    }
    Ok(canonical_name(name))
}

/// Whether `name` is `parent` or below it.
fn is_within(name: &str, parent: &str) -> bool {
    name == parent
        || (name.len() > parent.len()
            && name.starts_with(parent)
            && name.as_bytes()[parent.len()] == b'/')
}

fn split_keywords(stored: &str) -> Vec<String> {
    stored
        .split(' ')
        .filter(|k| !k.is_empty())
        .map(str::to_string)
        .collect()
}

/// Whether a keyword is an IMAP atom (RFC 9051 `flag-keyword`), so that it
/// can be stored space-separated and sent back as it is.
fn valid_keyword(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 250
        && k.bytes()
            .all(|b| (0x21..0x7f).contains(&b) && !b"(){%*\"\\]".contains(&b))
}

fn contains_keyword(list: &[String], k: &str) -> bool {
    list.iter().any(|x| x.eq_ignore_ascii_case(k))
}

/// Checks flags and keywords given to a write; returns the keywords without
/// duplicates (compared without case, the first spelling kept).
fn check_flags(flags: i64, keywords: &[String]) -> Result<Vec<String>> {
    if flags & !flag_bits::ALL != 0 {
        return Err(StoreError::InvalidArgument(format!(
            "unknown system flag bits {:#x}",
            flags & !flag_bits::ALL
        )));
    }
    let mut out: Vec<String> = Vec::with_capacity(keywords.len());
    for k in keywords {
        if !valid_keyword(k) {
            return Err(StoreError::InvalidArgument(format!("bad keyword {k:?}")));
        }
        if !contains_keyword(&out, k) {
            out.push(k.clone());
        }
    }
    Ok(out)
}

/// The flags and keywords of a message after `op`.
fn apply_op(
    op: FlagOp,
    old_flags: i64,
    old_keywords: &[String],
    flags: i64,
    keywords: &[String],
) -> (i64, Vec<String>) {
    match op {
        FlagOp::Add => {
            let mut kw = old_keywords.to_vec();
            for k in keywords {
                if !contains_keyword(&kw, k) {
                    kw.push(k.clone());
                }
            }
            (old_flags | flags, kw)
        }
        FlagOp::Remove => (
            old_flags & !flags,
            old_keywords
                .iter()
                .filter(|k| !contains_keyword(keywords, k))
                .cloned()
                .collect(),
        ),
        FlagOp::Replace => {
            let same = old_keywords.iter().all(|k| contains_keyword(keywords, k))
                && keywords.iter().all(|k| contains_keyword(old_keywords, k));
            let kw = if same {
                old_keywords.to_vec()
            } else {
                keywords.to_vec()
            };
            (flags, kw)
        }
    }
}

/// Sorted, without duplicates.
fn sorted_uids(uids: &[u32]) -> Vec<u32> {
    let mut v = uids.to_vec();
    v.sort_unstable();
    v.dedup();
    v
}

/// Ranges of consecutive values of a sorted list.
fn value_ranges(sorted: &[u32]) -> Vec<(u32, u32)> {
    let mut out: Vec<(u32, u32)> = Vec::new();
    for &u in sorted {
        match out.last_mut() {
            Some((_, last)) if u64::from(*last) + 1 == u64::from(u) => *last = u,
            _ => out.push((u, u)),
        }
    }
    out
}

/// For each of `groups` groups, the maximal runs of consecutive messages
/// (in UID order, as `rows` gives them: every message of the span read)
/// that belong to it, as (first UID, last UID). A range so built contains
/// no message of the span outside the group, whatever UIDs lie in between.
fn grouped_runs(
    rows: impl IntoIterator<Item = (u32, Option<usize>)>,
    groups: usize,
) -> Vec<Vec<(u32, u32)>> {
    let mut out = vec![Vec::new(); groups];
    let mut current: Option<(usize, u32, u32)> = None;
    for (uid, group) in rows {
        match (current, group) {
            (Some((g, first, _)), Some(h)) if g == h => current = Some((g, first, uid)),
            (_, group) => {
                if let Some((g, first, last)) = current {
                    out[g].push((first, last));
                }
                current = group.map(|h| (h, uid, uid));
            }
        }
    }
    if let Some((g, first, last)) = current {
        out[g].push((first, last));
    }
    out
}

/// The runs of `rows` (span order) picked by `picked`.
fn runs(rows: impl IntoIterator<Item = (u32, bool)>) -> Vec<(u32, u32)> {
    grouped_runs(rows.into_iter().map(|(u, p)| (u, p.then_some(0))), 1)
        .pop()
        .unwrap_or_default()
}

/// For each message of `span` (UID order), whether its UID is in `wanted`
/// (sorted): a merge of two sorted lists.
fn membership<'a>(
    span: impl IntoIterator<Item = u32> + 'a,
    wanted: &'a [u32],
) -> impl Iterator<Item = bool> + 'a {
    let mut i = 0;
    span.into_iter().map(move |uid| {
        while i < wanted.len() && wanted[i] < uid {
            i += 1;
        }
        i < wanted.len() && wanted[i] == uid
    })
}

/// `(col BETWEEN $first AND $first+1 OR …)` for `n` ranges.
fn ranges_sql(column: &str, first_param: usize, n: usize) -> String {
    let mut s = String::from("(");
    for i in 0..n {
        if i > 0 {
            s.push_str(" OR ");
        }
        let p = first_param + 2 * i;
        let _ = write!(s, "{column} BETWEEN ${p} AND ${}", p + 1);
    }
    s.push(')');
    s
}

/// The ranges of consecutive UIDs of a sorted list as two arrays (first
/// UIDs, last UIDs): how the PostgreSQL functions take UID sets.
fn range_arrays(sorted: &[u32]) -> (Vec<i64>, Vec<i64>) {
    value_ranges(sorted)
        .into_iter()
        .map(|(a, b)| (i64::from(a), i64::from(b)))
        .unzip()
}

/// Where an APPEND goes: a mailbox by id, or by (account, name).
#[derive(Debug, Clone, Copy)]
enum AppendTarget<'a> {
    Id(i64),
    Named(i64, &'a str),
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A fresh UIDVALIDITY, as `directory.rs` makes them: random, non-zero, 31
/// bits. A name deleted and created again (or renamed away and created
/// again) gets a new one, as RFC 9051 §2.3.1.1 requires.
fn new_uidvalidity() -> i64 {
    i64::from(rand::random_range(1..=i32::MAX as u32))
}

impl Store {
    /// The mailbox `name` of the account; the name `INBOX` matches
    /// case-insensitively (RFC 9051 §5.1), other names exactly.
    pub async fn mailbox_by_name(&self, account_id: i64, name: &str) -> Result<Option<Mailbox>> {
        let name = canonical_name(name);
        let token = self.freshness().token();
        let found = on_conn!(self, |conn| {
            match sqlx::query(concat!(
                "SELECT ",
                mailbox_cols!(),
                " FROM mailboxes WHERE account_id = $1 AND name = $2"
            ))
            .bind(account_id)
            .bind(name)
            .fetch_optional(&mut *conn)
            .await?
            {
                Some(row) => Ok::<_, StoreError>(Some(mailbox_from_row!(row))),
                None => Ok(None),
            }
        })?;
        if let Some(mb) = &found {
            self.freshness().observe(token, mb.id, mb.highestmodseq);
        }
        Ok(found)
    }

    /// The mailbox with this row id, if it (still) exists.
    pub async fn mailbox_by_id(&self, mailbox_id: i64) -> Result<Option<Mailbox>> {
        on_backend!(self, |pool| {
            match sqlx::query(concat!(
                "SELECT ",
                mailbox_cols!(),
                " FROM mailboxes WHERE id = $1"
            ))
            .bind(mailbox_id)
            .fetch_optional(pool)
            .await?
            {
                Some(row) => Ok(Some(mailbox_from_row!(row))),
                None => Ok(None),
            }
        })
    }

    /// Creates a mailbox (IMAP CREATE): a fresh random UIDVALIDITY, not
    /// subscribed, empty. `AlreadyExists` when the name is taken (`INBOX` in
    /// any case counts as taken); `InvalidArgument` for a name that is
    /// empty, has an empty hierarchy level (`a//b`, `/a`, `a/`) or control
    /// characters; `NotFound` for an unknown account. Superior names
    /// (`a` for `a/b`) are not created: the IMAP layer decides.
    pub async fn create_mailbox(
        &self,
        account_id: i64,
        name: &str,
        special_use: Option<&str>,
    ) -> Result<Mailbox> {
        let name = valid_name(name)?;
        let created_at = now();
        on_backend!(self, |pool| {
            let row = sqlx::query(concat!(
                "INSERT INTO mailboxes (account_id, name, special_use, subscribed, uidvalidity, created_at)
                 VALUES ($1, $2, $3, FALSE, $4, $5) RETURNING ",
                mailbox_cols!()
            ))
            .bind(account_id)
            .bind(name)
            .bind(special_use)
            .bind(new_uidvalidity())
            .bind(created_at)
            .fetch_one(pool)
            .await
            .map_err(|e| match StoreError::from(e) {
                StoreError::AlreadyExists(_) => {
                    StoreError::AlreadyExists(format!("mailbox {name:?} exists already"))
                }
                StoreError::FailedPrecondition(_) => {
                    StoreError::NotFound(format!("no account {account_id}"))
                }
                other => other,
            })?;
            Ok(mailbox_from_row!(row))
        })
    }

    /// Deletes a mailbox and its messages (IMAP DELETE), in one
    /// transaction: the account's `used_bytes` gives back their sizes, the
    /// message rows go, and the mailbox's `expunged` records go with it.
    /// `INBOX` cannot be deleted (`FailedPrecondition`); an unknown name is
    /// `NotFound`. Children (names below `name/`) are not deleted.
    pub async fn delete_mailbox(&self, account_id: i64, name: &str) -> Result<()> {
        let name = canonical_name(name);
        if name == "INBOX" {
            return Err(StoreError::FailedPrecondition(
                "INBOX cannot be deleted".into(),
            ));
        }
        let event = write_tx!(self, |tx| {
            lock_account!(tx, account_id);
            let id: i64 =
                sqlx::query_scalar("SELECT id FROM mailboxes WHERE account_id = $1 AND name = $2")
                    .bind(account_id)
                    .bind(name)
                    .fetch_optional(&mut *tx)
                    .await?
                    .ok_or_else(|| no_mailbox_named(name))?;
            let modseq = bump_modseq!(tx, id);
            let freed: i64 = sqlx::query_scalar(
                "SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM messages WHERE mailbox_id = $1",
            )
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM messages WHERE mailbox_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM mailboxes WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            refund!(tx, account_id, freed);
            MailboxEvent {
                account_id,
                mailbox_id: id,
                uid: 0,
                modseq: modseq as u64,
            }
        });
        self.notify_structural(&event);
        Ok(())
    }

    /// Renames a mailbox and all its children (names below `from/`) in one
    /// transaction (IMAP RENAME), keeping their ids, UIDVALIDITY, messages
    /// and subscription. `AlreadyExists` when the target or any renamed
    /// child's target exists (nothing is renamed then), `NotFound` when
    /// `from` does not exist, `InvalidArgument` for a bad target name or a
    /// target below `from` itself.
    ///
    /// Renaming `INBOX` (RFC 9051 §6.3.6) creates the mailbox `to` (new
    /// UIDVALIDITY, subscribed as INBOX is, no special use) and moves every
    /// INBOX message into it with UIDs 1..n in INBOX UID order, keeping
    /// content, flags, keywords, INTERNALDATE and size; the INBOX rows are
    /// recorded as expunged. INBOX stays, empty, with its UIDVALIDITY and
    /// UIDNEXT; its children are not renamed. The quota does not change.
    pub async fn rename_mailbox(&self, account_id: i64, from: &str, to: &str) -> Result<()> {
        let from = canonical_name(from);
        let to = valid_name(to)?;
        if from == to {
            return Err(match self.mailbox_by_name(account_id, from).await? {
                Some(_) => StoreError::AlreadyExists(format!("mailbox {to:?} exists already")),
                None => no_mailbox_named(from),
            });
        }
        if from == "INBOX" {
            return self.rename_inbox(account_id, to).await;
        }
        if is_within(to, from) {
            return Err(StoreError::InvalidArgument(format!(
                "cannot rename {from:?} to {to:?}, below itself"
            )));
        }
        let events = write_tx!(self, |tx| {
            lock_account!(tx, account_id);
            let all: Vec<(i64, String, i64)> = sqlx::query_as(
                "SELECT id, name, highestmodseq FROM mailboxes WHERE account_id = $1",
            )
            .bind(account_id)
            .fetch_all(&mut *tx)
            .await?;
            if !all.iter().any(|(_, name, _)| name == from) {
                return Err(no_mailbox_named(from));
            }
            let (renamed, kept): (Vec<_>, Vec<_>) = all
                .into_iter()
                .partition(|(_, name, _)| is_within(name, from));
            let renamed: Vec<(i64, String, i64)> = renamed
                .into_iter()
                .map(|(id, name, modseq)| (id, format!("{to}{}", &name[from.len()..]), modseq))
                .collect();
            let kept: std::collections::HashSet<&str> =
                kept.iter().map(|(_, name, _)| name.as_str()).collect();
            for (_, new, _) in &renamed {
                if kept.contains(new.as_str()) {
                    return Err(StoreError::AlreadyExists(format!(
                        "mailbox {new:?} exists already"
                    )));
                }
                if new.len() > MAX_MAILBOX_NAME {
                    return Err(StoreError::InvalidArgument(format!(
                        "the new name {new:?} is too long"
                    )));
                }
            }
            // Two steps, through names no real mailbox can have (they hold a
            // control character), so that a new name equal to the old name
            // of another renamed mailbox never collides half-way.
            for (id, _, _) in &renamed {
                sqlx::query("UPDATE mailboxes SET name = $2 WHERE id = $1")
                    .bind(id)
                    .bind(format!("\u{1}renaming\u{1}{id}"))
                    .execute(&mut *tx)
                    .await?;
            }
            for (id, new, _) in &renamed {
                sqlx::query("UPDATE mailboxes SET name = $2 WHERE id = $1")
                    .bind(id)
                    .bind(new)
                    .execute(&mut *tx)
                    .await?;
            }
            renamed
                .iter()
                .map(|(id, _, modseq)| MailboxEvent {
                    account_id,
                    mailbox_id: *id,
                    uid: 0,
                    modseq: *modseq as u64,
                })
                .collect::<Vec<_>>()
        });
        for event in &events {
            self.notify_structural(event);
        }
        Ok(())
    }

    /// RENAME INBOX (see [`Store::rename_mailbox`]).
    async fn rename_inbox(&self, account_id: i64, to: &str) -> Result<()> {
        let created_at = now();
        let events = write_tx!(self, |tx| {
            lock_account!(tx, account_id);
            let (inbox, subscribed): (i64, bool) = sqlx::query_as(
                "SELECT id, subscribed FROM mailboxes WHERE account_id = $1 AND name = 'INBOX'",
            )
            .bind(account_id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| no_mailbox_named("INBOX"))?;
            let inbox_modseq = lock_mailbox!(tx, inbox);
            let exists = sqlx::query("SELECT 1 FROM mailboxes WHERE account_id = $1 AND name = $2")
                .bind(account_id)
                .bind(to)
                .fetch_optional(&mut *tx)
                .await?;
            if exists.is_some() {
                return Err(StoreError::AlreadyExists(format!(
                    "mailbox {to:?} exists already"
                )));
            }
            let new_id: i64 = sqlx::query_scalar(
                "INSERT INTO mailboxes (account_id, name, subscribed, uidvalidity, created_at)
                 VALUES ($1, $2, $3, $4, $5) RETURNING id",
            )
            .bind(account_id)
            .bind(to)
            .bind(subscribed)
            .bind(new_uidvalidity())
            .bind(created_at)
            .fetch_one(&mut *tx)
            .await?;
            let messages = fetch_span_brief!(tx, inbox, 0u32, u32::MAX);
            let mut events = Vec::new();
            if let (Some(first), Some(last)) = (messages.first(), messages.last()) {
                let n = messages.len() as i64;
                let all = [(first.uid, last.uid)];
                let (_, first_uid, modseq) = allocate!(tx, new_id, n);
                let copied = copy_rows!(tx, inbox, all, new_id, first_uid, modseq);
                let inbox_modseq = bump_modseq!(tx, inbox);
                let removed = expunge_rows!(tx, inbox, all, inbox_modseq);
                if copied != n || removed != n as u64 {
                    return Err(StoreError::Internal(format!(
                        "RENAME INBOX moved {copied} and removed {removed} of {n} messages"
                    )));
                }
                events.push(MailboxEvent {
                    account_id,
                    mailbox_id: inbox,
                    uid: 0,
                    modseq: inbox_modseq as u64,
                });
                events.push(MailboxEvent {
                    account_id,
                    mailbox_id: new_id,
                    uid: (first_uid + n - 1) as u32,
                    modseq: modseq as u64,
                });
            } else {
                events.push(MailboxEvent {
                    account_id,
                    mailbox_id: inbox,
                    uid: 0,
                    modseq: inbox_modseq as u64,
                });
            }
            events
        });
        for event in &events {
            self.notify(event);
        }
        Ok(())
    }

    /// SUBSCRIBE / UNSUBSCRIBE. A name with no mailbox is `NotFound` (the
    /// IMAP layer decides what to do).
    pub async fn set_subscribed(
        &self,
        account_id: i64,
        name: &str,
        subscribed: bool,
    ) -> Result<()> {
        let name = canonical_name(name);
        let updated = on_backend!(self, |pool| {
            sqlx::query("UPDATE mailboxes SET subscribed = $3 WHERE account_id = $1 AND name = $2")
                .bind(account_id)
                .bind(name)
                .bind(subscribed)
                .execute(pool)
                .await?
                .rows_affected()
        });
        if updated == 0 {
            return Err(no_mailbox_named(name));
        }
        Ok(())
    }

    /// The SELECT snapshot: the mailbox and every message, UID order, read
    /// consistently (UIDNEXT and HIGHESTMODSEQ match the messages). `None`
    /// when the mailbox does not exist.
    pub async fn mailbox_snapshot(&self, mailbox_id: i64) -> Result<Option<MailboxSnapshot>> {
        Ok(read_tx!(self, |tx| {
            let row = sqlx::query(concat!(
                "SELECT ",
                mailbox_cols!(),
                " FROM mailboxes WHERE id = $1"
            ))
            .bind(mailbox_id)
            .fetch_optional(&mut *tx)
            .await?;
            match row {
                None => None,
                Some(row) => {
                    let mailbox = mailbox_from_row!(row);
                    let messages = fetch_span!(tx, mailbox_id, 0u32, u32::MAX);
                    Some(MailboxSnapshot { mailbox, messages })
                }
            }
        }))
    }

    /// SELECT's read by name: the mailbox `name` of the account (`INBOX` in
    /// any case) and all its messages, UID order, in one statement (one
    /// snapshot on both backends). `None` when there is no such mailbox.
    pub async fn open_mailbox(
        &self,
        account_id: i64,
        name: &str,
    ) -> Result<Option<MailboxSnapshot>> {
        let name = canonical_name(name);
        let token = self.freshness().token();
        // The UID bounds (always true) make the plan an index scan of
        // (mailbox_id, uid) whatever the statistics (see migration 0003).
        let snapshot = on_conn!(self, |conn| {
            let rows = sqlx::query(
                "SELECT mb.id, mb.account_id, mb.name, mb.special_use, mb.subscribed,
                        mb.uidvalidity, mb.uidnext, mb.highestmodseq,
                        m.uid, m.modseq, m.flags, m.keywords, m.internal_date, m.size
                   FROM mailboxes mb
                   LEFT JOIN messages m
                          ON m.mailbox_id = mb.id AND m.uid BETWEEN 1 AND 4294967295
                  WHERE mb.account_id = $1 AND mb.name = $2
                  ORDER BY m.uid",
            )
            .bind(account_id)
            .bind(name)
            .fetch_all(&mut *conn)
            .await?;
            let Some(first) = rows.first() else {
                return Ok(None);
            };
            let mailbox = mailbox_from_row!(first);
            let mut messages = Vec::with_capacity(rows.len());
            for row in &rows {
                if row.try_get::<Option<i64>, _>("uid")?.is_some() {
                    messages.push(meta_from_row!(row));
                }
            }
            Ok::<_, StoreError>(Some(MailboxSnapshot { mailbox, messages }))
        })?;
        if let Some(s) = &snapshot {
            self.freshness()
                .observe(token, s.mailbox.id, s.mailbox.highestmodseq);
        }
        Ok(snapshot)
    }

    /// Every message of the mailbox, UID order. `NotFound` when the mailbox
    /// does not exist. Use [`Store::mailbox_snapshot`] to get the matching
    /// UIDNEXT and HIGHESTMODSEQ in the same read.
    pub async fn mailbox_messages(&self, mailbox_id: i64) -> Result<Vec<MessageMeta>> {
        self.mailbox_snapshot(mailbox_id)
            .await?
            .map(|s| s.messages)
            .ok_or_else(|| no_mailbox(mailbox_id))
    }

    /// What changed after MODSEQ `since` (CONDSTORE/QRESYNC, and how a
    /// session learns what other sessions did), read in one snapshot.
    /// `NotFound` when the mailbox does not exist (it was deleted).
    pub async fn changes_since(&self, mailbox_id: i64, since: u64) -> Result<Changes> {
        let since = to_i64(since);
        let token = self.freshness().token();
        // Fast path, one round trip: every change raises HIGHESTMODSEQ in its
        // own transaction, so a mailbox whose HIGHESTMODSEQ is still `since`
        // has nothing newer (the common case: IMAP sessions ask after every
        // command).
        let (highestmodseq, uidnext): (i64, i64) = on_conn!(self, |conn| {
            sqlx::query_as("SELECT highestmodseq, uidnext FROM mailboxes WHERE id = $1")
                .bind(mailbox_id)
                .fetch_optional(&mut *conn)
                .await?
                .ok_or_else(|| no_mailbox(mailbox_id))
        })?;
        self.freshness()
            .observe(token, mailbox_id, highestmodseq as u64);
        if highestmodseq <= since {
            return Ok(Changes {
                changed: Vec::new(),
                vanished: Vec::new(),
                highestmodseq: highestmodseq as u64,
                uidnext: uidnext as u32,
            });
        }
        read_tx!(self, |tx| {
            let (highestmodseq, uidnext): (i64, i64) =
                sqlx::query_as("SELECT highestmodseq, uidnext FROM mailboxes WHERE id = $1")
                    .bind(mailbox_id)
                    .fetch_optional(&mut *tx)
                    .await?
                    .ok_or_else(|| no_mailbox(mailbox_id))?;
            let rows = sqlx::query(concat!(
                "SELECT ",
                meta_cols!(),
                " FROM messages WHERE mailbox_id = $1 AND modseq > $2 ORDER BY uid"
            ))
            .bind(mailbox_id)
            .bind(since)
            .fetch_all(&mut *tx)
            .await?;
            let mut changed = Vec::with_capacity(rows.len());
            for row in &rows {
                changed.push(meta_from_row!(row));
            }
            let vanished: Vec<i64> = sqlx::query_scalar(
                "SELECT uid FROM expunged WHERE mailbox_id = $1 AND modseq > $2 ORDER BY uid",
            )
            .bind(mailbox_id)
            .bind(since)
            .fetch_all(&mut *tx)
            .await?;
            Ok(Changes {
                changed,
                vanished: vanished.into_iter().map(|u| u as u32).collect(),
                highestmodseq: highestmodseq as u64,
                uidnext: uidnext as u32,
            })
        })
    }

    /// STORE: applies `op` with the system flags `flags` (bits of
    /// [`flag_bits`]; other bits are `InvalidArgument`) and `keywords` (IMAP
    /// atoms, else `InvalidArgument`) to each message of `uids` that exists
    /// (others are skipped). One new MODSEQ (HIGHESTMODSEQ + 1) for the whole
    /// call goes to each message that actually changed; the others keep
    /// theirs, and when none changed HIGHESTMODSEQ is not bumped. With
    /// `unchanged_since = Some(m)`, messages whose MODSEQ is greater than `m`
    /// are not touched and are listed in `modified` (RFC 7162 §3.1.3).
    /// Keywords compare without case: an added keyword already present in
    /// another spelling keeps the first spelling, none appears twice, and
    /// the order they were added in is kept. `NotFound` when the mailbox
    /// does not exist.
    pub async fn store_flags(
        &self,
        mailbox_id: i64,
        uids: &[u32],
        op: FlagOp,
        flags: i64,
        keywords: &[String],
        unchanged_since: Option<u64>,
    ) -> Result<StoreOutcome> {
        let keywords = check_flags(flags, keywords)?;
        let wanted = sorted_uids(uids);
        if let crate::Backend::Postgres(_) = self.backend()
            && keywords.is_empty()
        {
            return self
                .store_flags_pg(mailbox_id, &wanted, op, flags, unchanged_since)
                .await;
        }
        let (outcome, event) = write_tx!(self, |tx| {
            let (account_id, highestmodseq) = lock_mailbox_of_account!(tx, mailbox_id);
            let span = match (wanted.first(), wanted.last()) {
                (Some(&lo), Some(&hi)) => fetch_span!(tx, mailbox_id, lo, hi),
                _ => Vec::new(),
            };
            let new_modseq = highestmodseq + 1;
            let mut group_of: HashMap<(i64, String), usize> = HashMap::new();
            let mut groups: Vec<(i64, String)> = Vec::new();
            let mut row_groups: Vec<(u32, Option<usize>)> = Vec::with_capacity(span.len());
            let mut updated = Vec::new();
            let mut modified = Vec::new();
            for (meta, member) in span
                .iter()
                .zip(membership(span.iter().map(|m| m.uid), &wanted))
            {
                let mut group = None;
                if member {
                    if unchanged_since.is_some_and(|m| meta.modseq > m) {
                        modified.push(meta.uid);
                    } else {
                        let (new_flags, new_keywords) =
                            apply_op(op, meta.flags, &meta.keywords, flags, &keywords);
                        if new_flags != meta.flags || new_keywords != meta.keywords {
                            let key = (new_flags, new_keywords.join(" "));
                            let next = groups.len();
                            let g = *group_of.entry(key.clone()).or_insert_with(|| {
                                groups.push(key);
                                next
                            });
                            group = Some(g);
                            updated.push(MessageMeta {
                                modseq: new_modseq as u64,
                                flags: new_flags,
                                keywords: new_keywords,
                                ..meta.clone()
                            });
                        }
                    }
                }
                row_groups.push((meta.uid, group));
            }
            if updated.is_empty() {
                let outcome = StoreOutcome {
                    updated,
                    modified,
                    highestmodseq: highestmodseq as u64,
                };
                (outcome, None)
            } else {
                sqlx::query("UPDATE mailboxes SET highestmodseq = $2 WHERE id = $1")
                    .bind(mailbox_id)
                    .bind(new_modseq)
                    .execute(&mut *tx)
                    .await?;
                let mut written = 0u64;
                for ((new_flags, new_keywords), runs) in
                    groups.iter().zip(grouped_runs(row_groups, groups.len()))
                {
                    for chunk in runs.chunks(RANGES_PER_QUERY) {
                        let sql = format!(
                            "UPDATE messages SET flags = $1, keywords = $2, modseq = $3
                             WHERE mailbox_id = $4 AND {}",
                            ranges_sql("uid", 5, chunk.len())
                        );
                        let query = sqlx::query(sqlx::AssertSqlSafe(sql))
                            .bind(*new_flags)
                            .bind(new_keywords)
                            .bind(new_modseq)
                            .bind(mailbox_id);
                        written += bind_ranges!(query, chunk)
                            .execute(&mut *tx)
                            .await?
                            .rows_affected();
                    }
                }
                if written != updated.len() as u64 {
                    return Err(StoreError::Internal(format!(
                        "STORE wrote {written} rows for {} changed messages",
                        updated.len()
                    )));
                }
                let event = MailboxEvent {
                    account_id,
                    mailbox_id,
                    uid: 0,
                    modseq: new_modseq as u64,
                };
                let outcome = StoreOutcome {
                    updated,
                    modified,
                    highestmodseq: new_modseq as u64,
                };
                (outcome, Some(event))
            }
        });
        if let Some(event) = &event {
            self.notify(event);
        }
        Ok(outcome)
    }

    /// APPEND: stores `content` as a blob (prefix empty), charges the
    /// account's quota (over quota: `FailedPrecondition` with a message
    /// starting `OVERQUOTA`, nothing stored; on SQLite the shared blob may
    /// stay), all in one transaction on PostgreSQL (`mailroom_append`),
    /// and allocates UID and MODSEQ like [`Store::store_message`]; no
    /// delivery key. `flags` and `keywords` are checked as for
    /// [`Store::store_flags`]. `NotFound` when the mailbox does not exist.
    pub async fn append_message(
        &self,
        mailbox_id: i64,
        content: &[u8],
        flags: i64,
        keywords: &[String],
        internal_date: i64,
        parse_cache: Option<&str>,
    ) -> Result<Appended> {
        let keywords = check_flags(flags, keywords)?.join(" ");
        let size = i64::try_from(content.len())
            .map_err(|_| StoreError::InvalidArgument("the message is too large".into()))?;
        if let crate::Backend::Postgres(_) = self.backend() {
            let target = AppendTarget::Id(mailbox_id);
            let (_, appended) = self
                .append_pg(
                    target,
                    content,
                    flags,
                    &keywords,
                    internal_date,
                    parse_cache,
                )
                .await?;
            return Ok(appended);
        }
        let blob = self.put_blob(content).await?;
        let (appended, event) = write_tx!(self, |tx| {
            let account_id = account_of!(tx, mailbox_id);
            charge!(tx, account_id, size);
            let (uidvalidity, uid, modseq) = allocate!(tx, mailbox_id, 1);
            sqlx::query(
                "INSERT INTO messages (mailbox_id, uid, modseq, flags, keywords, internal_date, size,
                                       blob_hash, prefix, parse_cache)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            )
            .bind(mailbox_id)
            .bind(uid)
            .bind(modseq)
            .bind(flags)
            .bind(&keywords)
            .bind(internal_date)
            .bind(size)
            .bind(&blob.0)
            .bind(Vec::<u8>::new())
            .bind(parse_cache)
            .execute(&mut *tx)
            .await?;
            let appended = Appended {
                uidvalidity: uidvalidity as u32,
                uid: uid as u32,
                modseq: modseq as u64,
            };
            let event = MailboxEvent {
                account_id,
                mailbox_id,
                uid: uid as u32,
                modseq: modseq as u64,
            };
            (appended, event)
        });
        self.notify(&event);
        self.message_cache()
            .put_text(mailbox_id, appended.uid, content);
        self.message_cache()
            .put_parse(mailbox_id, appended.uid, parse_cache);
        Ok(appended)
    }

    /// COPY: copies the messages of `uids` that exist in `source` (others
    /// are skipped) into `dest` with the same content, flags, keywords,
    /// INTERNALDATE, size and parse cache (no delivery key), new UIDs in
    /// source-UID order and one new MODSEQ of the destination. The quota is
    /// charged for the total (`FailedPrecondition("OVERQUOTA …")` and
    /// nothing copied when it would be exceeded). Both mailboxes must belong
    /// to the same account (else `FailedPrecondition`); a missing one is
    /// `NotFound`. `source == dest` is allowed.
    pub async fn copy_messages(&self, source: i64, uids: &[u32], dest: i64) -> Result<Copied> {
        self.transfer(source, uids, dest, false).await
    }

    /// MOVE (RFC 6851): as [`Store::copy_messages`], and in the same
    /// transaction the source messages are removed (recorded as expunged
    /// with one new MODSEQ of the source). The quota does not change.
    pub async fn move_messages(&self, source: i64, uids: &[u32], dest: i64) -> Result<Copied> {
        self.transfer(source, uids, dest, true).await
    }

    /// COPY (`remove == false`) or MOVE.
    async fn transfer(&self, source: i64, uids: &[u32], dest: i64, remove: bool) -> Result<Copied> {
        let wanted = sorted_uids(uids);
        let (copied, events) = write_tx!(self, |tx| {
            let account_id = account_of!(tx, source);
            if account_of!(tx, dest) != account_id {
                return Err(StoreError::FailedPrecondition(
                    "cannot copy or move messages to another account's mailbox".into(),
                ));
            }
            lock_account!(tx, account_id);
            lock_mailbox!(tx, source);
            let span = match (wanted.first(), wanted.last()) {
                (Some(&lo), Some(&hi)) => fetch_span_brief!(tx, source, lo, hi),
                _ => Vec::new(),
            };
            let picked: Vec<bool> = membership(span.iter().map(|m| m.uid), &wanted).collect();
            let selected: Vec<Brief> = span
                .iter()
                .zip(&picked)
                .filter(|&(_, &p)| p)
                .map(|(m, _)| *m)
                .collect();
            if selected.is_empty() {
                let uidvalidity: i64 =
                    sqlx::query_scalar("SELECT uidvalidity FROM mailboxes WHERE id = $1")
                        .bind(dest)
                        .fetch_one(&mut *tx)
                        .await?;
                let copied = Copied {
                    uidvalidity: uidvalidity as u32,
                    pairs: Vec::new(),
                };
                (copied, Vec::new())
            } else {
                let runs = runs(span.iter().map(|m| m.uid).zip(picked.iter().copied()));
                let n = selected.len() as i64;
                if !remove {
                    charge!(tx, account_id, selected.iter().map(|m| m.size).sum());
                }
                let (uidvalidity, first_uid, modseq) = allocate!(tx, dest, n);
                let copied = copy_rows!(tx, source, runs, dest, first_uid, modseq);
                if copied != n {
                    return Err(StoreError::Internal(format!(
                        "copied {copied} rows for {n} messages"
                    )));
                }
                let mut events = vec![MailboxEvent {
                    account_id,
                    mailbox_id: dest,
                    uid: (first_uid + n - 1) as u32,
                    modseq: modseq as u64,
                }];
                if remove {
                    let source_modseq = bump_modseq!(tx, source);
                    let removed = expunge_rows!(tx, source, runs, source_modseq);
                    if removed != n as u64 {
                        return Err(StoreError::Internal(format!(
                            "removed {removed} rows for {n} moved messages"
                        )));
                    }
                    events.push(MailboxEvent {
                        account_id,
                        mailbox_id: source,
                        uid: 0,
                        modseq: source_modseq as u64,
                    });
                }
                let pairs = selected
                    .iter()
                    .zip(first_uid..)
                    .map(|(m, new)| (m.uid, new as u32))
                    .collect();
                let copied = Copied {
                    uidvalidity: uidvalidity as u32,
                    pairs,
                };
                (copied, events)
            }
        });
        for event in &events {
            self.notify(event);
        }
        Ok(copied)
    }

    /// EXPUNGE / UID EXPUNGE: removes the messages flagged `\Deleted`
    /// (only those of `uids` when it is `Some`), recording them as expunged
    /// with one new MODSEQ, and refunds their sizes to the quota, in one
    /// transaction. Returns the removed UIDs, ascending (nothing removed:
    /// empty, and HIGHESTMODSEQ is not bumped). `NotFound` when the mailbox
    /// does not exist.
    pub async fn expunge_deleted(&self, mailbox_id: i64, uids: Option<&[u32]>) -> Result<Vec<u32>> {
        Ok(self.expunge_messages(mailbox_id, uids).await?.uids)
    }

    /// [`Store::expunge_deleted`], also telling the mailbox's HIGHESTMODSEQ
    /// once the expunge is done.
    pub async fn expunge_messages(
        &self,
        mailbox_id: i64,
        uids: Option<&[u32]>,
    ) -> Result<Expunged> {
        let wanted = uids.map(sorted_uids);
        if let crate::Backend::Postgres(_) = self.backend() {
            return self.expunge_pg(mailbox_id, wanted.as_deref()).await;
        }
        let (removed, highestmodseq, event) = write_tx!(self, |tx| {
            let account_id = lock_account_of!(tx, mailbox_id);
            let before = lock_mailbox!(tx, mailbox_id);
            let span = match &wanted {
                None => fetch_span_brief!(tx, mailbox_id, 0u32, u32::MAX),
                Some(w) => match (w.first(), w.last()) {
                    (Some(&lo), Some(&hi)) => fetch_span_brief!(tx, mailbox_id, lo, hi),
                    _ => Vec::new(),
                },
            };
            let picked: Vec<bool> = match &wanted {
                None => span
                    .iter()
                    .map(|m| m.flags & flag_bits::DELETED != 0)
                    .collect(),
                Some(w) => membership(span.iter().map(|m| m.uid), w)
                    .zip(&span)
                    .map(|(member, m)| member && m.flags & flag_bits::DELETED != 0)
                    .collect(),
            };
            let removed: Vec<u32> = span
                .iter()
                .zip(&picked)
                .filter(|&(_, &p)| p)
                .map(|(m, _)| m.uid)
                .collect();
            if removed.is_empty() {
                (removed, before, None)
            } else {
                let freed: i64 = span
                    .iter()
                    .zip(&picked)
                    .filter(|&(_, &p)| p)
                    .map(|(m, _)| m.size)
                    .sum();
                let runs = runs(span.iter().map(|m| m.uid).zip(picked.iter().copied()));
                let modseq = bump_modseq!(tx, mailbox_id);
                let count = expunge_rows!(tx, mailbox_id, runs, modseq);
                if count != removed.len() as u64 {
                    return Err(StoreError::Internal(format!(
                        "expunged {count} rows for {} messages",
                        removed.len()
                    )));
                }
                refund!(tx, account_id, freed);
                let event = MailboxEvent {
                    account_id,
                    mailbox_id,
                    uid: 0,
                    modseq: modseq as u64,
                };
                (removed, modseq, Some(event))
            }
        });
        if let Some(event) = &event {
            self.notify(event);
            self.message_cache().forget(mailbox_id, &removed);
        }
        Ok(Expunged {
            uids: removed,
            highestmodseq: highestmodseq as u64,
        })
    }

    /// APPEND to the mailbox `name` of the account (see
    /// [`Store::append_message`]): the lookup and the append in one call.
    /// Returns the mailbox's id with the result; `NotFound` when there is
    /// no such mailbox.
    #[allow(clippy::too_many_arguments)]
    pub async fn append_message_to(
        &self,
        account_id: i64,
        name: &str,
        content: &[u8],
        flags: i64,
        keywords: &[String],
        internal_date: i64,
        parse_cache: Option<&str>,
    ) -> Result<(i64, Appended)> {
        let name = canonical_name(name);
        if let crate::Backend::Postgres(_) = self.backend() {
            let kw = check_flags(flags, keywords)?.join(" ");
            let target = AppendTarget::Named(account_id, name);
            return self
                .append_pg(target, content, flags, &kw, internal_date, parse_cache)
                .await;
        }
        let mailbox = self
            .mailbox_by_name(account_id, name)
            .await?
            .ok_or_else(|| no_mailbox_named(name))?;
        let appended = self
            .append_message(
                mailbox.id,
                content,
                flags,
                keywords,
                internal_date,
                parse_cache,
            )
            .await?;
        Ok((mailbox.id, appended))
    }

    /// [`Store::store_flags`] on PostgreSQL without keywords: one call of
    /// `mailroom_store_flags` (migration 0003, as 0004 replaced it).
    async fn store_flags_pg(
        &self,
        mailbox_id: i64,
        wanted: &[u32],
        op: FlagOp,
        flags: i64,
        unchanged_since: Option<u64>,
    ) -> Result<StoreOutcome> {
        let (lo, hi) = range_arrays(wanted);
        let token = self.freshness().token();
        let op_code: i32 = match op {
            FlagOp::Add => 0,
            FlagOp::Remove => 1,
            FlagOp::Replace => 2,
        };
        let row = on_lane!(self, |conn| {
            Ok::<_, StoreError>(sqlx::query(
            "SELECT r_account, r_highestmodseq, r_uids, r_flags, r_keywords, r_internal_dates,
                    r_sizes, r_modified
               FROM mailroom_store_flags($1, $2, $3, $4, $5, $6)",
        )
        .bind(mailbox_id)
        .bind(&lo)
        .bind(&hi)
        .bind(op_code)
        .bind(flags)
        .bind(unchanged_since.map(to_i64))
        .fetch_one(&mut *conn)
        .await?)
        })?;
        let account_id: i64 = row.try_get("r_account")?;
        let highestmodseq = row.try_get::<i64, _>("r_highestmodseq")? as u64;
        let uids: Vec<i64> = row
            .try_get::<Option<Vec<i64>>, _>("r_uids")?
            .unwrap_or_default();
        let mut updated = Vec::with_capacity(uids.len());
        if !uids.is_empty() {
            let new_flags: Vec<i64> = row.try_get("r_flags")?;
            let keywords: Vec<String> = row.try_get("r_keywords")?;
            let dates: Vec<i64> = row.try_get("r_internal_dates")?;
            let sizes: Vec<i64> = row.try_get("r_sizes")?;
            for (i, uid) in uids.iter().enumerate() {
                updated.push(MessageMeta {
                    uid: *uid as u32,
                    modseq: highestmodseq,
                    flags: new_flags[i],
                    keywords: split_keywords(&keywords[i]),
                    internal_date: dates[i],
                    size: sizes[i].max(0) as u64,
                });
            }
            // The function aggregates in no particular order.
            updated.sort_unstable_by_key(|m| m.uid);
            self.notify(&MailboxEvent {
                account_id,
                mailbox_id,
                uid: 0,
                modseq: highestmodseq,
            });
        } else {
            // Read under the mailbox's lock: nothing newer had committed.
            self.freshness().observe(token, mailbox_id, highestmodseq);
        }
        let modified = row
            .try_get::<Option<Vec<i64>>, _>("r_modified")?
            .unwrap_or_default()
            .into_iter()
            .map(|u| u as u32)
            .collect();
        Ok(StoreOutcome {
            updated,
            modified,
            highestmodseq,
        })
    }

    /// [`Store::append_message`] on PostgreSQL: one call of
    /// `mailroom_append` (migration 0003), blob included. Returns the
    /// mailbox's id with the result.
    #[allow(clippy::too_many_arguments)]
    async fn append_pg(
        &self,
        target: AppendTarget<'_>,
        content: &[u8],
        flags: i64,
        keywords: &str,
        internal_date: i64,
        parse_cache: Option<&str>,
    ) -> Result<(i64, Appended)> {
        let (mailbox, account, name) = match target {
            AppendTarget::Id(id) => (Some(id), None, None),
            AppendTarget::Named(account, name) => (None, Some(account), Some(name)),
        };
        let hash = crate::BlobHash::of(content);
        let row = on_lane!(self, |conn| {
            Ok::<_, StoreError>(
                sqlx::query(
                    "SELECT r_mailbox, r_account, r_uidvalidity, r_uid, r_modseq
               FROM mailroom_append($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                )
                .bind(mailbox)
                .bind(account)
                .bind(name)
                .bind(&hash.0)
                .bind(content)
                .bind(flags)
                .bind(keywords)
                .bind(internal_date)
                .bind(parse_cache)
                .bind(now())
                .fetch_one(&mut *conn)
                .await?,
            )
        })?;
        let mailbox_id: i64 = row.try_get("r_mailbox")?;
        let account_id: i64 = row.try_get("r_account")?;
        let uid = row.try_get::<i64, _>("r_uid")? as u32;
        let modseq = row.try_get::<i64, _>("r_modseq")? as u64;
        self.notify(&MailboxEvent {
            account_id,
            mailbox_id,
            uid,
            modseq,
        });
        self.message_cache().put_text(mailbox_id, uid, content);
        self.message_cache().put_parse(mailbox_id, uid, parse_cache);
        let appended = Appended {
            uidvalidity: row.try_get::<i64, _>("r_uidvalidity")? as u32,
            uid,
            modseq,
        };
        Ok((mailbox_id, appended))
    }

    /// [`Store::expunge_messages`] on PostgreSQL: one call of
    /// `mailroom_expunge` (migration 0003, as 0004 replaced it).
    async fn expunge_pg(&self, mailbox_id: i64, wanted: Option<&[u32]>) -> Result<Expunged> {
        let (lo, hi) = match wanted {
            Some(w) => {
                let (lo, hi) = range_arrays(w);
                (Some(lo), Some(hi))
            }
            None => (None, None),
        };
        let token = self.freshness().token();
        let (account_id, highestmodseq, uids): (i64, i64, Option<Vec<i64>>) =
            on_lane!(self, |conn| {
                Ok::<_, StoreError>(
                sqlx::query_as(
                    "SELECT r_account, r_highestmodseq, r_uids FROM mailroom_expunge($1, $2, $3)",
                )
        .bind(mailbox_id)
        .bind(lo)
        .bind(hi)
        .fetch_one(&mut *conn)
                .await?,
            )
            })?;
        let mut uids: Vec<u32> = uids
            .unwrap_or_default()
            .into_iter()
            .map(|u| u as u32)
            .collect();
        // The function aggregates in no particular order.
        uids.sort_unstable();
        if uids.is_empty() {
            self.freshness()
                .observe(token, mailbox_id, highestmodseq as u64);
        } else {
            self.notify(&MailboxEvent {
                account_id,
                mailbox_id,
                uid: 0,
                modseq: highestmodseq as u64,
            });
            self.message_cache().forget(mailbox_id, &uids);
        }
        Ok(Expunged {
            uids,
            highestmodseq: highestmodseq as u64,
        })
    }

    /// Bytes used and quota (0: unlimited) of the account, for GETQUOTA.
    /// `NotFound` for an unknown account.
    pub async fn quota_usage(&self, account_id: i64) -> Result<(u64, u64)> {
        let row: Option<(i64, i64)> = on_backend!(self, |pool| {
            sqlx::query_as("SELECT used_bytes, quota_bytes FROM accounts WHERE id = $1")
                .bind(account_id)
                .fetch_optional(pool)
                .await?
        });
        let (used, quota) =
            row.ok_or_else(|| StoreError::NotFound(format!("no account {account_id}")))?;
        Ok((used.max(0) as u64, quota.max(0) as u64))
    }

    /// The full text (prefix, then blob) of the messages of `uids`, for
    /// FETCH, in UID order; UIDs that do not exist (or a mailbox that does
    /// not) are skipped.
    pub async fn message_texts(
        &self,
        mailbox_id: i64,
        uids: &[u32],
    ) -> Result<Vec<(u32, Vec<u8>)>> {
        Ok(self.message_texts_seen(mailbox_id, uids).await?.0)
    }

    /// [`Store::message_texts`], also telling the mailbox's HIGHESTMODSEQ as
    /// the first read saw it (`None` when nothing was read): when it is the
    /// MODSEQ a session last synchronised to, nothing had changed by then.
    pub async fn message_texts_seen(
        &self,
        mailbox_id: i64,
        uids: &[u32],
    ) -> Result<(Vec<(u32, Vec<u8>)>, Option<u64>)> {
        let (hits, missed) = self.message_cache().texts(mailbox_id, &sorted_uids(uids));
        let out: Vec<(u32, Vec<u8>)> = hits.into_iter().map(|(u, t)| (u, t.to_vec())).collect();
        if missed.is_empty() {
            return Ok((out, None));
        }
        let token = self.freshness().token();
        let ranges = value_ranges(&missed);
        let (read, seen) = on_conn!(self, |conn| {
            let mut out = Vec::new();
            let mut seen = None;
            for chunk in ranges.chunks(RANGES_PER_QUERY) {
                let sql = format!(
                    "SELECT m.uid, m.prefix, b.data,
                        (SELECT highestmodseq FROM mailboxes WHERE id = $1) AS highestmodseq
                 FROM messages m JOIN blobs b ON b.hash = m.blob_hash
                 WHERE m.mailbox_id = $1 AND {} ORDER BY m.uid",
                    ranges_sql("m.uid", 2, chunk.len())
                );
                {
                    let query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(mailbox_id);
                    let rows = bind_ranges!(query, chunk).fetch_all(&mut *conn).await?;
                    for row in rows {
                        if seen.is_none() {
                            seen = Some(row.try_get::<i64, _>("highestmodseq")? as u64);
                        }
                        let mut text: Vec<u8> = row.try_get("prefix")?;
                        text.extend_from_slice(&row.try_get::<Vec<u8>, _>("data")?);
                        out.push((row.try_get::<i64, _>("uid")? as u32, text));
                    }
                }
            }
            Ok::<_, StoreError>((out, seen))
        })?;
        for (uid, text) in &read {
            self.message_cache().put_text(mailbox_id, *uid, text);
        }
        Ok(self.merge_read(mailbox_id, token, out, read, seen))
    }

    /// What FETCH's reads give back: the values found in the message cache
    /// and those read from the database, in UID order, with the
    /// HIGHESTMODSEQ the database read saw (taken into what the process
    /// knows, as of `token`).
    fn merge_read<T>(
        &self,
        mailbox_id: i64,
        token: Option<crate::known::Token>,
        mut cached: Vec<(u32, T)>,
        read: Vec<(u32, T)>,
        seen: Option<u64>,
    ) -> (Vec<(u32, T)>, Option<u64>) {
        if let Some(seen) = seen {
            self.freshness().observe(token, mailbox_id, seen);
        }
        cached.extend(read);
        cached.sort_unstable_by_key(|(u, _)| *u);
        (cached, seen)
    }

    /// The parse caches (what delivery or APPEND cached of the parse) of the
    /// messages of `uids`, in UID order; UIDs that do not exist are skipped.
    pub async fn parse_caches(
        &self,
        mailbox_id: i64,
        uids: &[u32],
    ) -> Result<Vec<(u32, Option<String>)>> {
        Ok(self.parse_caches_seen(mailbox_id, uids).await?.0)
    }

    /// [`Store::parse_caches`], also telling the mailbox's HIGHESTMODSEQ as
    /// the first read saw it (see [`Store::message_texts_seen`]).
    pub async fn parse_caches_seen(
        &self,
        mailbox_id: i64,
        uids: &[u32],
    ) -> Result<(Vec<(u32, Option<String>)>, Option<u64>)> {
        let (hits, missed) = self.message_cache().parses(mailbox_id, &sorted_uids(uids));
        let out: Vec<(u32, Option<String>)> = hits
            .into_iter()
            .map(|(u, p)| (u, p.map(|p| p.to_string())))
            .collect();
        if missed.is_empty() {
            return Ok((out, None));
        }
        let token = self.freshness().token();
        let ranges = value_ranges(&missed);
        let (read, seen) = on_conn!(self, |conn| {
            let mut out = Vec::new();
            let mut seen = None;
            for chunk in ranges.chunks(RANGES_PER_QUERY) {
                let sql = format!(
                    "SELECT uid, parse_cache,
                        (SELECT highestmodseq FROM mailboxes WHERE id = $1) AS highestmodseq
                 FROM messages WHERE mailbox_id = $1 AND {} ORDER BY uid",
                    ranges_sql("uid", 2, chunk.len())
                );
                {
                    let query =
                        sqlx::query_as::<_, (i64, Option<String>, i64)>(sqlx::AssertSqlSafe(sql))
                            .bind(mailbox_id);
                    let rows = bind_ranges!(query, chunk).fetch_all(&mut *conn).await?;
                    for (uid, cache, highestmodseq) in rows {
                        seen.get_or_insert(highestmodseq as u64);
                        out.push((uid as u32, cache));
                    }
                }
            }
            Ok::<_, StoreError>((out, seen))
        })?;
        for (uid, cache) in &read {
            self.message_cache()
                .put_parse(mailbox_id, *uid, cache.as_deref());
        }
        Ok(self.merge_read(mailbox_id, token, out, read, seen))
    }

    /// Counts for STATUS. A mailbox that does not exist counts as empty.
    pub async fn mailbox_counts(&self, mailbox_id: i64) -> Result<MailboxCounts> {
        // The bit values are flag_bits::SEEN (1) and flag_bits::DELETED (8).
        let (messages, unseen, deleted, deleted_size, size): (i64, i64, i64, i64, i64) = on_backend!(
            self,
            |pool| {
                sqlx::query_as(
                "SELECT COUNT(*),
                        CAST(COALESCE(SUM(CASE WHEN (flags & 1) = 0 THEN 1 ELSE 0 END), 0) AS BIGINT),
                        CAST(COALESCE(SUM(CASE WHEN (flags & 8) <> 0 THEN 1 ELSE 0 END), 0) AS BIGINT),
                        CAST(COALESCE(SUM(CASE WHEN (flags & 8) <> 0 THEN size ELSE 0 END), 0) AS BIGINT),
                        CAST(COALESCE(SUM(size), 0) AS BIGINT)
                 FROM messages WHERE mailbox_id = $1",
            )
            .bind(mailbox_id)
            .fetch_one(pool)
            .await?
            }
        );
        Ok(MailboxCounts {
            messages: messages as u32,
            unseen: unseen as u32,
            deleted: deleted as u32,
            deleted_size: deleted_size.max(0) as u64,
            size: size.max(0) as u64,
        })
    }
}

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
