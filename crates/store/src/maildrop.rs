//! The POP3 maildrop: an account's INBOX seen as RFC 1939 sees it.
//!
//! Three operations, each with its own invariant:
//!
//! * [`Store::lock_maildrop`]: at most one POP3 session per maildrop
//!   (RFC 1939 §8 lets the server refuse a second one; we answer
//!   `-ERR [IN-USE]`, RFC 2449 §8.1.2). On **SQLite** (one process by
//!   design) the lock is an entry in a process-wide set keyed by database
//!   file and account, removed when the [`MaildropLock`] is dropped. On
//!   **PostgreSQL** it is a session-level advisory lock
//!   (`pg_try_advisory_lock(POP3_LOCK_CLASS, account_id)`) held on a
//!   connection opened for the session alone, outside the pool: if the
//!   process dies the server closes the connection and releases the lock,
//!   so no lease can be left behind, and every replica sees it. The cost:
//!   each logged-in POP3 session holds one PostgreSQL connection of its own
//!   (POP3 sessions are short: a client logs in, downloads and quits), so
//!   the server's `max_connections` must leave room for the concurrent
//!   POP3 sessions on top of the pools.
//! * [`Store::open_maildrop`]: the snapshot taken at login. The message
//!   numbers of a session are indexes into it, so they never change while
//!   the session lasts, whatever is delivered meanwhile.
//! * [`Store::expunge_maildrop`]: the UPDATE state (RFC 1939 §6). In one
//!   write transaction it deletes the message rows, records each UID in
//!   `expunged` with a new MODSEQ (so IMAP sessions see them as expunges,
//!   QRESYNC `VANISHED`), bumps the mailbox's `highestmodseq`, and gives the
//!   bytes back to `accounts.used_bytes`. Either all of that happens or none
//!   of it; a message another session already removed is skipped, not an
//!   error. Lock order is account row, then mailbox row, as in
//!   [`Store::store_message`], so an expunge and a delivery cannot deadlock.
//!   After the commit, when anything was removed, a [`MailboxEvent`] with
//!   UID 0 tells IMAP sessions on the INBOX.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{LazyLock, Mutex};

use sqlx::{Connection as _, Row};

use crate::{Backend, MailboxEvent, Result, Store, StoreError, on_backend, write_tx};

/// The first key of the two-key PostgreSQL advisory lock (`'POP3'` in
/// ASCII), so that POP3 locks can never collide with other advisory locks
/// (the two-key form has a key space of its own). The second key is the
/// account id; ids beyond 2³¹ are folded, which can only cause a spurious
/// `[IN-USE]`, never two sessions on one maildrop.
pub const POP3_LOCK_CLASS: i32 = 0x504F_5033;

/// SQLite maildrop locks of this process: (database file, account id).
static SQLITE_LOCKS: LazyLock<Mutex<HashSet<(PathBuf, i64)>>> =
    LazyLock::new(|| Mutex::new(HashSet::new()));

/// One message of a maildrop snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaildropMessage {
    /// Its UID in the INBOX.
    pub uid: u32,
    /// Its size in bytes as stored (per-recipient prefix plus the shared blob).
    pub size: u64,
}

/// The INBOX of an account, as it was when the POP3 session logged in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Maildrop {
    /// The INBOX's row id.
    pub mailbox_id: i64,
    /// The INBOX's UIDVALIDITY; with the UID it makes the UIDL value.
    pub uidvalidity: u32,
    /// The messages in UID order: message number `n` is `messages[n - 1]`.
    pub messages: Vec<MaildropMessage>,
}

/// Proof that this session alone holds an account's maildrop. Dropping it
/// releases the lock; [`MaildropLock::release`] does so and waits for it.
#[derive(Debug)]
pub struct MaildropLock {
    inner: LockInner,
}

#[derive(Debug)]
enum LockInner {
    Sqlite(PathBuf, i64),
    /// The dedicated connection holding the advisory lock. Closing it (or
    /// losing it) releases the lock on the server side.
    Postgres(Option<sqlx::PgConnection>),
}

impl MaildropLock {
    /// Releases the lock now. On PostgreSQL the connection is closed
    /// cleanly, which ends the database session and so its advisory lock.
    pub async fn release(mut self) {
        if let LockInner::Postgres(conn) = &mut self.inner
            && let Some(conn) = conn.take()
        {
            let _ = conn.close().await;
        }
    }
}

impl Drop for MaildropLock {
    fn drop(&mut self) {
        match &mut self.inner {
            LockInner::Sqlite(file, account) => {
                let mut set = SQLITE_LOCKS.lock().unwrap_or_else(|p| p.into_inner());
                set.remove(&(file.clone(), *account));
            }
            // Dropping the connection closes its socket; the server then
            // ends the session and releases the lock.
            LockInner::Postgres(conn) => drop(conn.take()),
        }
    }
}

impl Store {
    /// Takes the POP3 lock on `account_id`'s maildrop; `None` when another
    /// session (in any process sharing the database, on PostgreSQL) has it.
    pub async fn lock_maildrop(&self, account_id: i64) -> Result<Option<MaildropLock>> {
        match self.backend() {
            Backend::Sqlite(pool) => {
                let file = pool.connect_options().get_filename().to_path_buf();
                let mut set = SQLITE_LOCKS.lock().unwrap_or_else(|p| p.into_inner());
                if set.insert((file.clone(), account_id)) {
                    Ok(Some(MaildropLock {
                        inner: LockInner::Sqlite(file, account_id),
                    }))
                } else {
                    Ok(None)
                }
            }
            Backend::Postgres(pool) => {
                // A connection of its own: a pooled one would go back to
                // the pool still holding the lock.
                let mut conn = sqlx::PgConnection::connect_with(&pool.connect_options())
                    .await
                    .map_err(|e| StoreError::Unavailable(e.to_string()))?;
                let key = (account_id & 0x7fff_ffff) as i32;
                let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
                    .bind(POP3_LOCK_CLASS)
                    .bind(key)
                    .fetch_one(&mut conn)
                    .await?;
                if got {
                    Ok(Some(MaildropLock {
                        inner: LockInner::Postgres(Some(conn)),
                    }))
                } else {
                    let _ = conn.close().await;
                    Ok(None)
                }
            }
        }
    }

    /// The snapshot of `account_id`'s INBOX that a POP3 session works on.
    pub async fn open_maildrop(&self, account_id: i64) -> Result<Maildrop> {
        on_backend!(self, |pool| {
            let mut conn = pool.acquire().await?;
            let row = sqlx::query(
                "SELECT id, uidvalidity FROM mailboxes WHERE account_id = $1 AND name = 'INBOX'",
            )
            .bind(account_id)
            .fetch_optional(&mut *conn)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("account {account_id} has no INBOX")))?;
            let mailbox_id: i64 = row.try_get("id")?;
            let uidvalidity = row.try_get::<i64, _>("uidvalidity")? as u32;
            let rows =
                sqlx::query("SELECT uid, size FROM messages WHERE mailbox_id = $1 ORDER BY uid")
                    .bind(mailbox_id)
                    .fetch_all(&mut *conn)
                    .await?;
            let mut messages = Vec::with_capacity(rows.len());
            for row in rows {
                messages.push(MaildropMessage {
                    uid: row.try_get::<i64, _>("uid")? as u32,
                    size: row.try_get::<i64, _>("size")? as u64,
                });
            }
            Ok(Maildrop {
                mailbox_id,
                uidvalidity,
                messages,
            })
        })
    }

    /// Removes `uids` from the maildrop `mailbox_id` in one transaction (see
    /// the module docs). Returns how many messages were removed; UIDs that
    /// are already gone are skipped.
    pub async fn expunge_maildrop(&self, mailbox_id: i64, uids: &[u32]) -> Result<usize> {
        if uids.is_empty() {
            return Ok(0);
        }
        let (removed, event) = write_tx!(self, |tx| {
            let account_id: i64 =
                sqlx::query_scalar("SELECT account_id FROM mailboxes WHERE id = $1")
                    .bind(mailbox_id)
                    .fetch_optional(&mut *tx)
                    .await?
                    .ok_or_else(|| StoreError::NotFound(format!("no mailbox {mailbox_id}")))?;
            // Lock order: account row, then mailbox row (as deliveries do).
            sqlx::query("UPDATE accounts SET used_bytes = used_bytes WHERE id = $1")
                .bind(account_id)
                .execute(&mut *tx)
                .await?;
            let modseq: i64 = sqlx::query_scalar(
                "UPDATE mailboxes SET highestmodseq = highestmodseq + 1 WHERE id = $1
                 RETURNING highestmodseq",
            )
            .bind(mailbox_id)
            .fetch_one(&mut *tx)
            .await?;
            let mut freed: i64 = 0;
            let mut removed = 0usize;
            for &uid in uids {
                let size: Option<i64> = sqlx::query_scalar(
                    "DELETE FROM messages WHERE mailbox_id = $1 AND uid = $2 RETURNING size",
                )
                .bind(mailbox_id)
                .bind(i64::from(uid))
                .fetch_optional(&mut *tx)
                .await?;
                let Some(size) = size else { continue };
                sqlx::query("INSERT INTO expunged (mailbox_id, uid, modseq) VALUES ($1, $2, $3)")
                    .bind(mailbox_id)
                    .bind(i64::from(uid))
                    .bind(modseq)
                    .execute(&mut *tx)
                    .await?;
                freed += size;
                removed += 1;
            }
            sqlx::query(
                "UPDATE accounts SET used_bytes = CASE WHEN used_bytes > $2 THEN used_bytes - $2 ELSE 0 END
                 WHERE id = $1",
            )
            .bind(account_id)
            .bind(freed)
            .execute(&mut *tx)
            .await?;
            let event = MailboxEvent {
                account_id,
                mailbox_id,
                uid: 0,
                modseq: modseq as u64,
            };
            (removed, event)
        });
        // IMAP sessions on the INBOX hear of the expunges.
        if removed > 0 {
            self.notify(&event);
        }
        Ok(removed)
    }
}
