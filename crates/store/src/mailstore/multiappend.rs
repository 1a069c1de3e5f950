//! MULTIAPPEND (RFC 3502): several messages appended to one mailbox by one
//! command, all or nothing.
//!
//! Invariants:
//! * every message is stored, or none is: one transaction on both stores
//!   (on PostgreSQL one call of `mailroom_append`, migration 0003, per
//!   message inside it; on SQLite one `BEGIN IMMEDIATE` transaction), so a
//!   failure part-way (over quota, a mailbox deleted meanwhile) rolls back
//!   every UID, MODSEQ and quota charge of the earlier messages;
//! * the quota is charged for the whole set: the set is refused when the
//!   account cannot hold all of it, even if a prefix would fit;
//! * the UIDs are consecutive and ascending in the order given (the mailbox
//!   is locked for the whole transaction), so APPENDUID's set is `a:b`.
//!
//! On SQLite a blob stored before a failed transaction may stay (shared and
//! content-addressed, it is collected like any unreferenced blob).

use super::*;

impl Store {
    /// Appends `messages` to the mailbox `name` of the account, all or
    /// nothing (see the module docs). Returns the mailbox's id and one
    /// [`Appended`] per message, in order. `NotFound` when there is no such
    /// mailbox; `FailedPrecondition("OVERQUOTA …")` when the set does not
    /// fit; `InvalidArgument` for bad flags or an empty set.
    pub async fn append_messages_to(
        &self,
        account_id: i64,
        name: &str,
        messages: &[AppendMessage<'_>],
    ) -> Result<(i64, Vec<Appended>)> {
        if messages.is_empty() {
            return Err(StoreError::InvalidArgument("no message to append".into()));
        }
        let name = canonical_name(name);
        let mut keywords = Vec::with_capacity(messages.len());
        let mut total: i64 = 0;
        for m in messages {
            keywords.push(check_flags(m.flags, m.keywords)?.join(" "));
            total = total.saturating_add(
                i64::try_from(m.content.len())
                    .map_err(|_| StoreError::InvalidArgument("the message is too large".into()))?,
            );
        }
        let (mailbox_id, account, appended) = if let crate::Backend::Postgres(_) = self.backend() {
            write_tx!(self, |tx| {
                let mut mailbox: Option<i64> = None;
                let mut account = account_id;
                let mut appended = Vec::with_capacity(messages.len());
                for (m, kw) in messages.iter().zip(&keywords) {
                    let hash = crate::BlobHash::of(m.content);
                    let row = sqlx::query(
                        "SELECT r_mailbox, r_account, r_uidvalidity, r_uid, r_modseq
                           FROM mailroom_append($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                    )
                    .bind(mailbox)
                    .bind(mailbox.is_none().then_some(account_id))
                    .bind(mailbox.is_none().then_some(name))
                    .bind(&hash.0)
                    .bind(m.content)
                    .bind(m.flags)
                    .bind(kw)
                    .bind(m.internal_date)
                    .bind(m.parse_cache)
                    .bind(now())
                    .fetch_one(&mut *tx)
                    .await?;
                    mailbox = Some(row.try_get("r_mailbox")?);
                    account = row.try_get("r_account")?;
                    appended.push(Appended {
                        uidvalidity: row.try_get::<i64, _>("r_uidvalidity")? as u32,
                        uid: row.try_get::<i64, _>("r_uid")? as u32,
                        modseq: row.try_get::<i64, _>("r_modseq")? as u64,
                    });
                }
                (mailbox.unwrap_or_default(), account, appended)
            })
        } else {
            let mailbox = self
                .mailbox_by_name(account_id, name)
                .await?
                .ok_or_else(|| no_mailbox_named(name))?;
            let mut blobs = Vec::with_capacity(messages.len());
            for m in messages {
                blobs.push(self.put_blob(m.content).await?);
            }
            write_tx!(self, |tx| {
                let account = account_of!(tx, mailbox.id);
                charge!(tx, account, total);
                let n = messages.len() as i64;
                let (uidvalidity, first, modseq) = allocate!(tx, mailbox.id, n);
                let mut appended = Vec::with_capacity(messages.len());
                for (i, ((m, kw), blob)) in messages.iter().zip(&keywords).zip(&blobs).enumerate() {
                    let uid = first + i as i64;
                    sqlx::query(
                        "INSERT INTO messages (mailbox_id, uid, modseq, flags, keywords, internal_date,
                                               size, blob_hash, prefix, parse_cache)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                    )
                    .bind(mailbox.id)
                    .bind(uid)
                    .bind(modseq)
                    .bind(m.flags)
                    .bind(kw)
                    .bind(m.internal_date)
                    .bind(m.content.len() as i64)
                    .bind(&blob.0)
                    .bind(Vec::<u8>::new())
                    .bind(m.parse_cache)
                    .execute(&mut *tx)
                    .await?;
                    appended.push(Appended {
                        uidvalidity: uidvalidity as u32,
                        uid: uid as u32,
                        modseq: modseq as u64,
                    });
                }
                (mailbox.id, account, appended)
            })
        };
        for (m, a) in messages.iter().zip(&appended) {
            self.message_cache().put_text(mailbox_id, a.uid, m.content);
            self.message_cache()
                .put_parse(mailbox_id, a.uid, m.parse_cache);
        }
        if let Some(last) = appended.last() {
            self.notify(&MailboxEvent {
                account_id: account,
                mailbox_id,
                uid: last.uid,
                modseq: last.modseq,
            });
        }
        Ok((mailbox_id, appended))
    }
}
