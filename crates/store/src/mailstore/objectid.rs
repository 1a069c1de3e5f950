//! Object identifiers (RFC 8474 OBJECTID): EMAILID and MAILBOXID.
//!
//! Invariants:
//! * a message's EMAILID is derived from what it is, not where it is: the
//!   SHA-256 of its blob key and its per-delivery prefix. COPY and MOVE
//!   keep both, so the EMAILID stays the same in every mailbox of the
//!   account (RFC 8474 §5.1); two messages with the same octets share one
//!   EMAILID, which §5.1 allows;
//! * a MAILBOXID is the mailbox row's id with its UIDVALIDITY: RENAME keeps
//!   both, so it survives a rename (§4); a mailbox created later under the
//!   same name, or a row id SQLite reuses after a delete, gets a new random
//!   UIDVALIDITY, so an id is not given to another mailbox;
//! * both are objectids of §7's grammar: a letter, then hex digits and `-`.

use sha2::{Digest, Sha256};

use super::*;

/// The MAILBOXID of `mailbox` (RFC 8474 §4).
pub fn mailbox_object_id(mailbox: &Mailbox) -> String {
    format!("M{:x}-{:08x}", mailbox.id, mailbox.uidvalidity)
}

/// The EMAILID of a message from its blob key and prefix.
fn email_id(blob_hash: &str, prefix: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(blob_hash.as_bytes());
    h.update([0]);
    h.update(prefix);
    format!("E{}", &hex::encode(h.finalize())[..26])
}

/// The lowest and highest of `uids` and the set of them (`None` when
/// empty): reads of a few columns by UID take the range, then filter.
pub(super) fn uid_span(uids: &[u32]) -> Option<(i64, i64, std::collections::HashSet<u32>)> {
    let lo = *uids.iter().min()?;
    let hi = *uids.iter().max()?;
    Some((i64::from(lo), i64::from(hi), uids.iter().copied().collect()))
}

impl Store {
    /// The EMAILIDs of the messages of `uids` that exist in the mailbox,
    /// in UID order (others are left out).
    pub async fn email_ids(&self, mailbox_id: i64, uids: &[u32]) -> Result<Vec<(u32, String)>> {
        let rows = self.object_rows(mailbox_id, uids).await?;
        Ok(rows.into_iter().map(|(uid, id, _)| (uid, id)).collect())
    }

    /// (UID, EMAILID, save date) of the messages of `uids` that exist in
    /// the mailbox, in UID order; the save date falls back to INTERNALDATE
    /// where none is recorded.
    pub(super) async fn object_rows(
        &self,
        mailbox_id: i64,
        uids: &[u32],
    ) -> Result<Vec<(u32, String, i64)>> {
        let Some((lo, hi, wanted)) = uid_span(uids) else {
            return Ok(Vec::new());
        };
        on_backend!(self, |pool| {
            let rows = sqlx::query(
                "SELECT uid, blob_hash, prefix, saved_at, internal_date FROM messages
                  WHERE mailbox_id = $1 AND uid >= $2 AND uid <= $3 ORDER BY uid",
            )
            .bind(mailbox_id)
            .bind(lo)
            .bind(hi)
            .fetch_all(pool)
            .await?;
            let mut out = Vec::with_capacity(wanted.len());
            for row in rows {
                let uid = row.try_get::<i64, _>("uid")? as u32;
                if wanted.contains(&uid) {
                    let hash: String = row.try_get("blob_hash")?;
                    let prefix: Vec<u8> = row.try_get("prefix")?;
                    let saved: Option<i64> = row.try_get("saved_at")?;
                    let internal: i64 = row.try_get("internal_date")?;
                    out.push((uid, email_id(&hash, &prefix), saved.unwrap_or(internal)));
                }
            }
            Ok(out)
        })
    }
}
