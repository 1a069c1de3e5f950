//! `\Recent` (RFC 3501 §2.3.2): which IMAP4rev1 session is the first to be
//! told of a message.
//!
//! Invariant: `mailboxes.recent_uid` is the first UID no session has
//! claimed. [`Store::claim_recent`] moves it forward to a given UIDNEXT in
//! one locked update and returns where it was, so the UIDs between belong to
//! exactly one claimer: concurrent sessions, in this process or another,
//! never both see a message as `\Recent`. Claims only move forward; EXAMINE
//! and IMAP4rev2 sessions never claim (rev2 has no `\Recent`).

use sqlx::Row;

use crate::{Result, Store, on_backend, write_conn};

impl Store {
    /// Claims the UIDs of mailbox `mailbox_id` from its first unclaimed one
    /// up to (not including) `uidnext`; returns the first claimed UID (equal
    /// to `uidnext` or more when there was nothing to claim).
    pub async fn claim_recent(&self, mailbox_id: i64, uidnext: u32) -> Result<u32> {
        let target = i64::from(uidnext);
        // A compare-and-set: the update only takes effect when nobody moved
        // the mark since it was read; otherwise read again (another session
        // claimed some of the UIDs, which are then not ours).
        loop {
            let old = self.recent_uid(mailbox_id).await?;
            let (old, moved) = match old {
                Some(old) if old < target => {
                    let moved = write_conn!(self, |conn| {
                        Ok(sqlx::query(
                            "UPDATE mailboxes SET recent_uid = $2 WHERE id = $1 AND recent_uid = $3",
                        )
                        .bind(mailbox_id)
                        .bind(target)
                        .bind(old)
                        .execute(&mut *conn)
                        .await?
                        .rows_affected())
                    })?;
                    (old, moved == 1)
                }
                Some(old) => (old, true),
                None => (target, true),
            };
            if moved {
                return Ok(u32::try_from(old).unwrap_or(u32::MAX));
            }
        }
    }

    /// `mailboxes.recent_uid` of `mailbox_id`; `None` when it does not exist.
    async fn recent_uid(&self, mailbox_id: i64) -> Result<Option<i64>> {
        Ok(on_backend!(self, |pool| {
            sqlx::query("SELECT recent_uid FROM mailboxes WHERE id = $1")
                .bind(mailbox_id)
                .fetch_optional(pool)
                .await?
                .map(|r| r.try_get(0))
                .transpose()?
        }))
    }

    /// The first UID of mailbox `mailbox_id` that no session has claimed
    /// (read without claiming, for EXAMINE).
    pub async fn recent_mark(&self, mailbox_id: i64) -> Result<u32> {
        let mark = self.recent_uid(mailbox_id).await?;
        Ok(mark.map_or(u32::MAX, |m| u32::try_from(m).unwrap_or(u32::MAX)))
    }

    /// How many messages of mailbox `mailbox_id` no session has claimed as
    /// recent yet (STATUS RECENT).
    pub async fn unclaimed_recent(&self, mailbox_id: i64) -> Result<u32> {
        let n: i64 = on_backend!(self, |pool| {
            sqlx::query(
                "SELECT count(*) FROM messages m JOIN mailboxes b ON b.id = m.mailbox_id
                  WHERE b.id = $1 AND m.uid >= b.recent_uid",
            )
            .bind(mailbox_id)
            .fetch_one(pool)
            .await?
            .try_get(0)?
        });
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }
}
