//! IMAP METADATA entries (RFC 5464): per account, for the server (no
//! mailbox) or for one mailbox.
//!
//! Invariants: entry names are stored lower-cased (RFC 5464 §3.2: they are
//! case-insensitive) and the caller validates them; at most one value per
//! (account, mailbox or server, entry), enforced by a unique index; a
//! mailbox's entries are deleted with it (foreign key, ON DELETE CASCADE)
//! and follow a RENAME (the mailbox keeps its id). A [`Store::set_metadata`]
//! is all or nothing: when it would leave more than the limit of entries in
//! its scope it changes nothing.

use sqlx::Row;

use crate::{Result, Store, on_backend, write_tx};

/// One entry's name (lower case) and value.
pub type MetadataEntry = (String, Vec<u8>);

impl Store {
    /// Every entry of the account's server scope (`mailbox_id` `None`) or
    /// of one mailbox, sorted by name.
    pub async fn get_metadata(
        &self,
        account_id: i64,
        mailbox_id: Option<i64>,
    ) -> Result<Vec<MetadataEntry>> {
        let rows = on_backend!(self, |pool| {
            sqlx::query(
                "SELECT entry, value FROM imap_metadata \
                 WHERE account_id = $1 AND COALESCE(mailbox_id, 0) = COALESCE($2, 0) \
                 ORDER BY entry",
            )
            .bind(account_id)
            .bind(mailbox_id)
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<std::result::Result<Vec<MetadataEntry>, sqlx::Error>>()?
        });
        Ok(rows)
    }

    /// Sets (`Some`) or removes (`None`) entries of one scope, all or
    /// nothing. Returns `false`, changing nothing, when the scope would then
    /// hold more than `max_entries` entries. A change is announced as a
    /// [`crate::MailboxEvent`] of the mailbox (mailbox 0 for the server
    /// scope) with MODSEQ 0 (for IMAP NOTIFY, RFC 5465 §5.6 and §5.7).
    pub async fn set_metadata(
        &self,
        account_id: i64,
        mailbox_id: Option<i64>,
        changes: &[(String, Option<Vec<u8>>)],
        max_entries: usize,
    ) -> Result<bool> {
        let stored = write_tx!(self, |tx| {
            for (entry, value) in changes {
                sqlx::query(
                    "DELETE FROM imap_metadata WHERE account_id = $1 \
                     AND COALESCE(mailbox_id, 0) = COALESCE($2, 0) AND entry = $3",
                )
                .bind(account_id)
                .bind(mailbox_id)
                .bind(entry)
                .execute(&mut *tx)
                .await?;
                if let Some(value) = value {
                    sqlx::query(
                        "INSERT INTO imap_metadata (account_id, mailbox_id, entry, value) \
                         VALUES ($1, $2, $3, $4)",
                    )
                    .bind(account_id)
                    .bind(mailbox_id)
                    .bind(entry)
                    .bind(value)
                    .execute(&mut *tx)
                    .await?;
                }
            }
            let count: i64 = sqlx::query(
                "SELECT COUNT(*) FROM imap_metadata WHERE account_id = $1 \
                 AND COALESCE(mailbox_id, 0) = COALESCE($2, 0)",
            )
            .bind(account_id)
            .bind(mailbox_id)
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
            if usize::try_from(count).unwrap_or(usize::MAX) > max_entries {
                // Dropping the transaction rolls it back.
                return Ok(false);
            }
            true
        });
        if stored && !changes.is_empty() {
            self.notify(&crate::MailboxEvent {
                account_id,
                mailbox_id: mailbox_id.unwrap_or(0),
                uid: 0,
                modseq: 0,
            });
        }
        Ok(stored)
    }
}
