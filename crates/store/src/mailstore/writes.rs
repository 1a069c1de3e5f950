//! The writes IMAP commands make to messages: STORE, APPEND, COPY, MOVE,
//! EXPUNGE (PostgreSQL through its functions of migrations 0003/0004,
//! SQLite statement by statement). See the invariants in the parent
//! module: one MODSEQ per call, lock order, quota in the same transaction,
//! an event after each commit that changed something.

use super::*;

impl Store {
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
}
