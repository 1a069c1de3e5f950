//! What changed in a mailbox since a MODSEQ: how a session learns what
//! other sessions and processes did (CONDSTORE/QRESYNC, RFC 7162), read
//! in one snapshot. See the invariants in the parent module.

use super::*;

impl Store {
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
}
