//! The SQL pieces every mailbox query shares: column lists and row
//! mapping, the read snapshot, the lock order (account, then mailbox),
//! MODSEQ and UID allocation, quota charges and refunds, UID ranges, and the
//! name and keyword rules. See the invariants in the parent module.

use super::*;

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

/// The STATUS counts of mailbox `$1`, as columns n, unseen, deleted,
/// deleted_size and size, for `concat!`. The bit values are
/// flag_bits::SEEN (1) and flag_bits::DELETED (8).
macro_rules! counts_query {
    () => {
        "SELECT COUNT(*) AS n,
                CAST(COALESCE(SUM(CASE WHEN (flags & 1) = 0 THEN 1 ELSE 0 END), 0) AS BIGINT) AS unseen,
                CAST(COALESCE(SUM(CASE WHEN (flags & 8) <> 0 THEN 1 ELSE 0 END), 0) AS BIGINT) AS deleted,
                CAST(COALESCE(SUM(CASE WHEN (flags & 8) <> 0 THEN size ELSE 0 END), 0) AS BIGINT) AS deleted_size,
                CAST(COALESCE(SUM(size), 0) AS BIGINT) AS size
         FROM messages WHERE mailbox_id = $1"
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
pub(super) struct Brief {
    pub(super) uid: u32,
    pub(super) flags: i64,
    pub(super) size: i64,
}

pub(super) fn no_mailbox(id: i64) -> StoreError {
    StoreError::NotFound(format!("no mailbox {id}"))
}

pub(super) fn no_mailbox_named(name: &str) -> StoreError {
    StoreError::NotFound(format!("no mailbox named {name:?}"))
}

pub(super) fn over_quota(bytes: i64, used: i64, quota: i64) -> StoreError {
    StoreError::FailedPrecondition(format!(
        "OVERQUOTA storing {bytes} more bytes would exceed the quota ({used} of {quota} bytes used)"
    ))
}

/// The name as stored: `INBOX` in any case is `INBOX`.
pub(super) fn canonical_name(name: &str) -> &str {
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
pub(super) fn valid_name(name: &str) -> Result<&str> {
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
pub(super) fn is_within(name: &str, parent: &str) -> bool {
    name == parent
        || (name.len() > parent.len()
            && name.starts_with(parent)
            && name.as_bytes()[parent.len()] == b'/')
}

pub(super) fn split_keywords(stored: &str) -> Vec<String> {
    stored
        .split(' ')
        .filter(|k| !k.is_empty())
        .map(str::to_string)
        .collect()
}

/// Whether a keyword is an IMAP atom (RFC 9051 `flag-keyword`), so that it
/// can be stored space-separated and sent back as it is.
pub(super) fn valid_keyword(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 250
        && k.bytes()
            .all(|b| (0x21..0x7f).contains(&b) && !b"(){%*\"\\]".contains(&b))
}

pub(super) fn contains_keyword(list: &[String], k: &str) -> bool {
    list.iter().any(|x| x.eq_ignore_ascii_case(k))
}

/// Checks flags and keywords given to a write; returns the keywords without
/// duplicates (compared without case, the first spelling kept).
pub(super) fn check_flags(flags: i64, keywords: &[String]) -> Result<Vec<String>> {
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
pub(super) fn apply_op(
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
pub(super) fn sorted_uids(uids: &[u32]) -> Vec<u32> {
    let mut v = uids.to_vec();
    v.sort_unstable();
    v.dedup();
    v
}

/// Ranges of consecutive values of a sorted list.
pub(super) fn value_ranges(sorted: &[u32]) -> Vec<(u32, u32)> {
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
pub(super) fn grouped_runs(
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
pub(super) fn runs(rows: impl IntoIterator<Item = (u32, bool)>) -> Vec<(u32, u32)> {
    grouped_runs(rows.into_iter().map(|(u, p)| (u, p.then_some(0))), 1)
        .pop()
        .unwrap_or_default()
}

/// For each message of `span` (UID order), whether its UID is in `wanted`
/// (sorted): a merge of two sorted lists.
pub(super) fn membership<'a>(
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
pub(super) fn ranges_sql(column: &str, first_param: usize, n: usize) -> String {
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
pub(super) fn range_arrays(sorted: &[u32]) -> (Vec<i64>, Vec<i64>) {
    value_ranges(sorted)
        .into_iter()
        .map(|(a, b)| (i64::from(a), i64::from(b)))
        .unzip()
}

/// Where an APPEND goes: a mailbox by id, or by (account, name).
#[derive(Debug, Clone, Copy)]
pub(super) enum AppendTarget<'a> {
    Id(i64),
    Named(i64, &'a str),
}

pub(super) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A fresh UIDVALIDITY, as `directory.rs` makes them: random, non-zero, 31
/// bits. A name deleted and created again (or renamed away and created
/// again) gets a new one, as RFC 9051 §2.3.1.1 requires.
pub(super) fn new_uidvalidity() -> i64 {
    i64::from(rand::random_range(1..=i32::MAX as u32))
}
