//! Mailboxes themselves: found by name or id, created, deleted (with their
//! messages, refunding the quota), renamed (children and INBOX included),
//! subscribed. See the invariants in the parent module.

use super::*;

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
        let mb = on_backend!(self, |pool| {
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
            mailbox_from_row!(row)
        });
        // Sessions that watch the account's names (IMAP NOTIFY MailboxName,
        // RFC 5465 §5.4) learn of it.
        self.notify(&MailboxEvent {
            account_id,
            mailbox_id: mb.id,
            uid: 0,
            modseq: mb.highestmodseq,
        });
        Ok(mb)
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
    /// IMAP layer decides what to do). The change is announced as an event
    /// of the mailbox at its unchanged HIGHESTMODSEQ (for IMAP NOTIFY
    /// SubscriptionChange, RFC 5465 §5.5).
    pub async fn set_subscribed(
        &self,
        account_id: i64,
        name: &str,
        subscribed: bool,
    ) -> Result<()> {
        let name = canonical_name(name);
        let updated: Option<(i64, i64)> = on_backend!(self, |pool| {
            sqlx::query_as(
                "UPDATE mailboxes SET subscribed = $3 WHERE account_id = $1 AND name = $2
                 RETURNING id, highestmodseq",
            )
            .bind(account_id)
            .bind(name)
            .bind(subscribed)
            .fetch_optional(pool)
            .await?
        });
        let Some((mailbox_id, modseq)) = updated else {
            return Err(no_mailbox_named(name));
        };
        self.notify(&MailboxEvent {
            account_id,
            mailbox_id,
            uid: 0,
            modseq: modseq as u64,
        });
        Ok(())
    }
}
