//! Reading mailboxes and messages: the SELECT snapshot, message metadata,
//! texts and parse caches (through the process's message cache), counts
//! for STATUS and the quota. See the invariants in the parent module.

use super::*;

impl Store {
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

    /// The mailbox as it is now and its counts, in one statement (STATUS);
    /// `None` when it does not exist.
    pub async fn mailbox_status(
        &self,
        mailbox_id: i64,
    ) -> Result<Option<(Mailbox, MailboxCounts)>> {
        on_conn!(self, |conn| {
            let row = sqlx::query(concat!(
                "SELECT ",
                mailbox_cols!(),
                ", c.n, c.unseen, c.deleted, c.deleted_size, c.size
                 FROM mailboxes CROSS JOIN (",
                counts_query!(),
                ") c WHERE id = $1"
            ))
            .bind(mailbox_id)
            .fetch_optional(&mut *conn)
            .await?;
            let Some(row) = row else { return Ok(None) };
            let counts = MailboxCounts {
                messages: row.try_get::<i64, _>("n")? as u32,
                unseen: row.try_get::<i64, _>("unseen")? as u32,
                deleted: row.try_get::<i64, _>("deleted")? as u32,
                deleted_size: row.try_get::<i64, _>("deleted_size")?.max(0) as u64,
                size: row.try_get::<i64, _>("size")?.max(0) as u64,
            };
            Ok(Some((mailbox_from_row!(row), counts)))
        })
    }

    /// Counts for STATUS. A mailbox that does not exist counts as empty.
    pub async fn mailbox_counts(&self, mailbox_id: i64) -> Result<MailboxCounts> {
        let (messages, unseen, deleted, deleted_size, size): (i64, i64, i64, i64, i64) =
            on_backend!(self, |pool| {
                sqlx::query_as(counts_query!())
                    .bind(mailbox_id)
                    .fetch_one(pool)
                    .await?
            });
        Ok(MailboxCounts {
            messages: messages as u32,
            unseen: unseen as u32,
            deleted: deleted as u32,
            deleted_size: deleted_size.max(0) as u64,
            size: size.max(0) as u64,
        })
    }
}
