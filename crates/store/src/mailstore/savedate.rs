//! SAVEDATE (RFC 8514): the time a message was saved into its mailbox.
//!
//! Invariant: `messages.saved_at` (migration 0008) is set by the database
//! on every insert (a column default on PostgreSQL, a trigger on SQLite),
//! so delivery, APPEND, COPY and MOVE all record it, the copy or moved
//! message getting the time of the COPY or MOVE (§2: "saved in its current
//! mailbox"); messages from before the migration carry their INTERNALDATE.

use super::*;

impl Store {
    /// The save dates (seconds since the epoch) of the messages of `uids`
    /// that exist in the mailbox, in UID order (others are left out).
    pub async fn saved_dates(&self, mailbox_id: i64, uids: &[u32]) -> Result<Vec<(u32, i64)>> {
        let rows = self.object_rows(mailbox_id, uids).await?;
        Ok(rows
            .into_iter()
            .map(|(uid, _, saved)| (uid, saved))
            .collect())
    }
}
