//! The mail queue: what the MTA has accepted and must still deliver.
//!
//! Invariants:
//! * **Durability.** [`Store::enqueue`] writes the message, its envelope and
//!   one state row per recipient in ONE transaction and returns only after
//!   the commit. An SMTP session answers 250 only after it returned, so a
//!   message that was acknowledged is always in the queue.
//! * **Leases.** A worker attempts only recipients it leased, and holds a
//!   lease only while a task works on that recipient: it renews exactly
//!   those ([`Store::renew_leases`] takes their ids), and every way out of an
//!   attempt either records a result ([`Store::finish_attempts`], only while
//!   the lease is still its own) or gives the lease back
//!   ([`Store::lapse_leases`], [`Store::release_leases`]). A recipient a task
//!   gave up on therefore comes back within seconds, and a dead worker's
//!   when its leases run out (at-least-once delivery).
//! * **One transaction per attempt's outcome.** [`Store::finish_attempts`]
//!   records the results of one attempt at one message, queues the delivery
//!   status notifications they owe (built by the caller from exactly the
//!   results that were recorded, and marking delay notices as sent), and, when
//!   no recipient is left to try, removes the entry: all in one transaction.
//!   A report is therefore queued exactly once per final result, and an entry
//!   never outlives its last recipient nor disappears before its reports are
//!   queued.
//!
//! # Removal and the shared blobs
//!
//! A finished entry's content lives in `blobs`, which the mailboxes share
//! (content-addressed, one copy for every queue entry and message with the
//! same bytes). Removing an entry deletes its blob only when no other queue
//! entry and no message refers to it, in the same transaction. Rows that
//! refer to a blob are protected by the foreign keys `queue_messages.blob_hash`
//! and `messages.blob_hash`, and by the lock order both sides follow on
//! PostgreSQL:
//! * the remover takes `FOR UPDATE` on the blob row, then checks for
//!   references in a new statement (READ COMMITTED: a fresh snapshot), then
//!   deletes;
//! * an inserter of a referring row takes `FOR KEY SHARE` on the blob row,
//!   either itself ([`Store::enqueue`], which re-inserts the blob when the
//!   lock finds it gone) or through the foreign-key check of its `INSERT`.
//!
//! The two locks conflict. An inserter that locked first has committed its
//! row before the remover's check runs, and the blob stays; one that comes
//! later waits for the remover and then finds the blob gone: `enqueue`
//! stores it again, and any other inserter gets a foreign-key error (a
//! retryable failure, never a dangling reference). On SQLite, write
//! transactions are serialised (`BEGIN IMMEDIATE`) and the same foreign keys
//! hold. The blob delete runs under a savepoint, so if a reference slipped
//! past this reasoning the foreign key refuses the delete, the blob is kept,
//! and the attempt's results are still recorded.
//!
//! The one path that writes a blob and refers to it in two transactions is
//! [`Store::put_blob`] followed by a message insert (the MDA, IMAP APPEND).
//! The MDA only stores content of a queue entry that is still queued (its
//! recipient is leased, not final), so that entry keeps the blob. An APPEND
//! of bytes identical to a queued message that is removed in between gets
//! the foreign-key error above and fails without storing anything.

use mailroom_address::Domain;
use sqlx::Row;

use crate::{Backend, BlobHash, Result, Store, StoreError, now, on_backend, write_conn, write_tx};

/// The domain a recipient is routed by: canonical A-label form when it
/// parses, else the text after the last `@`, lower-cased.
fn routing_domain(address: &str) -> String {
    let domain = address.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
    Domain::parse(domain)
        .map(|d| d.to_string())
        .unwrap_or_else(|_| domain.to_lowercase())
}

/// A recipient a worker has leased for one delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeasedRecipient {
    /// The recipient row.
    pub id: i64,
    /// The queued message it belongs to.
    pub queue_id: i64,
    /// The address.
    pub address: String,
    /// Attempts made before this one.
    pub attempts: u32,
    /// DSN `ORCPT` (RFC 3461 §4.2), if any.
    pub orcpt: Option<String>,
    /// DSN `NOTIFY` as a comma list (RFC 3461 §4.1), if given.
    pub notify: Option<String>,
    /// Whether a delay notice (RFC 3464 `Action: delayed`) was already queued for it.
    pub delay_notified: bool,
}

/// Where a recipient stands after an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptResult {
    /// Delivered; final.
    Delivered,
    /// Try again at `next_attempt_at` (Unix seconds).
    Deferred {
        /// When.
        next_attempt_at: i64,
        /// The last response, for the queue listing and the DSN.
        response: String,
    },
    /// Failed for good; final.
    Failed {
        /// The response that made it fail.
        response: String,
    },
}

/// One recipient's result, as a worker hands it to [`Store::finish_attempts`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientResult {
    /// The recipient row (leased by the worker).
    pub recipient_id: i64,
    /// What the attempt gave.
    pub result: AttemptResult,
    /// Whether the reports built for this attempt include a delay notice
    /// for this recipient; recorded (`delay_notified_at`) with the result.
    pub delay_notice: bool,
}

/// A report (a DSN) to queue in the transaction that records the results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwedReport {
    /// Its envelope (from `<>` to the original sender).
    pub envelope: QueueEnvelope,
    /// The report message.
    pub message: Vec<u8>,
    /// How long it may stay queued.
    pub max_age_secs: i64,
}

/// What [`Store::finish_attempts`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Finished {
    /// For each result given, whether it was recorded (false: the lease was
    /// no longer the worker's, or the entry was dropped meanwhile).
    pub recorded: Vec<bool>,
    /// Queue ids of the reports queued.
    pub reports: Vec<i64>,
    /// Whether the entry was removed (no recipient left to try).
    pub removed: bool,
    /// Whether its blob was deleted with it (nothing else referred to it).
    pub blob_released: bool,
}

/// How many messages per routing domain one remote lease may take, so that
/// a worker never leases more than its per-destination limits let it start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DestinationCaps {
    /// Messages per domain for domains not listed (at least 1).
    pub default: i64,
    /// Domains with a cap of their own (0 leaves the domain out).
    pub domains: Vec<(String, i64)>,
}

/// A queued message with what a delivery attempt needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedMessage {
    /// The envelope (every recipient, whatever its state).
    pub envelope: QueueEnvelope,
    /// The content.
    pub message: Vec<u8>,
    /// When it was queued (Unix seconds).
    pub created_at: i64,
    /// When it expires (Unix seconds).
    pub expires_at: i64,
}

/// One recipient of a queued message, with its DSN parameters (RFC 3461).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueRecipient {
    /// The address as it will be routed.
    pub address: String,
    /// `ORCPT` as received (`addr-type;address`), if any.
    pub orcpt: Option<String>,
    /// `NOTIFY` as a comma list (`NEVER`, or some of `SUCCESS,FAILURE,DELAY`), if given.
    pub notify: Option<String>,
}

/// The envelope of a message entering the queue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueEnvelope {
    /// Envelope sender; empty for the null sender `<>`.
    pub sender: String,
    /// The recipients, each with its own delivery state from now on.
    pub recipients: Vec<QueueRecipient>,
    /// DSN `ENVID`.
    pub env_id: Option<String>,
    /// DSN `RET` (`FULL` or `HDRS`).
    pub ret: Option<String>,
    /// `BODY` (`7BIT`, `8BITMIME`, `BINARYMIME`).
    pub body_type: Option<String>,
    /// Whether the message needs SMTPUTF8 downstream.
    pub smtputf8: bool,
    /// RFC 8689 REQUIRETLS.
    pub requiretls: bool,
    /// The SASL identity that submitted it, if any.
    pub authenticated_as: Option<String>,
    /// The client's IP address.
    pub client_ip: Option<String>,
    /// W3C `traceparent` of the accepting session, so delivery continues its trace.
    pub trace_context: Option<String>,
    /// DMARC `p=quarantine` failed on arrival: local delivery goes to Junk.
    pub quarantine: bool,
}

/// Inserts one queue entry (blob, message row, recipients) inside the
/// transaction `$tx` and evaluates to its id. `$pg` says whether the backend
/// is PostgreSQL (for the blob lock, see the module documentation).
/// [`Store::enqueue`] on PostgreSQL in one statement, so one round trip
/// (the SMTP "250 after commit" waits for it on every message): the blob,
/// the entry and its recipients are inserted by data-modifying CTEs of one
/// statement, which runs as one transaction and is committed before it
/// returns. The blob is inserted, or, when the same content is stored
/// already, updated in place (`ON CONFLICT DO UPDATE` touching no column's
/// value), which locks that row against the remover's `FOR UPDATE` until
/// the commit, and waits for and then replaces a row a concurrent remover
/// deleted: the entry never refers to a blob that is gone (the same
/// guarantee as [`insert_entry!`]'s explicit lock gives on the other path).
async fn enqueue_pg(
    pool: &sqlx::PgPool,
    envelope: &QueueEnvelope,
    message: &[u8],
    max_age_secs: i64,
    created: i64,
) -> Result<i64> {
    let hash = BlobHash::of(message);
    let (mut addresses, mut domains, mut orcpts, mut notifies) = (
        Vec::with_capacity(envelope.recipients.len()),
        Vec::with_capacity(envelope.recipients.len()),
        Vec::with_capacity(envelope.recipients.len()),
        Vec::with_capacity(envelope.recipients.len()),
    );
    for r in &envelope.recipients {
        addresses.push(r.address.clone());
        domains.push(routing_domain(&r.address));
        orcpts.push(r.orcpt.clone());
        notifies.push(r.notify.clone());
    }
    let id: i64 = sqlx::query_scalar(
        "WITH blob AS (
             INSERT INTO blobs (hash, size, data, created_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (hash) DO UPDATE SET size = blobs.size
             RETURNING hash
         ), entry AS (
             INSERT INTO queue_messages (sender, blob_hash, size, env_id, ret, body_type, smtputf8,
                                         requiretls, authenticated_as, client_ip, trace_context,
                                         created_at, expires_at, quarantine)
             SELECT $5, blob.hash, $2, $6, $7, $8, $9, $10, $11, $12, $13, $4, $14, $19 FROM blob
             RETURNING id
         ), rcpts AS (
             INSERT INTO queue_recipients (queue_message_id, address, domain, orcpt, notify,
                                           next_attempt_at, updated_at)
             SELECT entry.id, r.address, r.domain, r.orcpt, r.notify, $4, $4
             FROM entry, UNNEST($15::text[], $16::text[], $17::text[], $18::text[])
                  AS r(address, domain, orcpt, notify)
         )
         SELECT id FROM entry",
    )
    .bind(&hash.0)
    .bind(message.len() as i64)
    .bind(message)
    .bind(created)
    .bind(&envelope.sender)
    .bind(envelope.env_id.as_deref())
    .bind(envelope.ret.as_deref())
    .bind(envelope.body_type.as_deref())
    .bind(envelope.smtputf8)
    .bind(envelope.requiretls)
    .bind(envelope.authenticated_as.as_deref())
    .bind(envelope.client_ip.as_deref())
    .bind(envelope.trace_context.as_deref())
    .bind(created.saturating_add(max_age_secs))
    .bind(&addresses)
    .bind(&domains)
    .bind(&orcpts)
    .bind(&notifies)
    .bind(envelope.quarantine)
    .fetch_one(pool)
    .await?;
    Ok(id)
}

macro_rules! insert_entry {
    ($tx:ident, $pg:expr, $envelope:expr, $message:expr, $max_age:expr, $now:expr) => {{
        let envelope: &QueueEnvelope = $envelope;
        let message: &[u8] = $message;
        let created: i64 = $now;
        let hash = BlobHash::of(message);
        let lock = if $pg {
            "SELECT 1 AS held FROM blobs WHERE hash = $1 FOR KEY SHARE"
        } else {
            "SELECT 1 AS held FROM blobs WHERE hash = $1"
        };
        // Insert the blob unless it is there, and hold it: a remover that
        // deleted it meanwhile makes the lock find nothing, so insert again.
        let mut tries = 0;
        loop {
            sqlx::query(
                "INSERT INTO blobs (hash, size, data, created_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (hash) DO NOTHING",
            )
            .bind(&hash.0)
            .bind(message.len() as i64)
            .bind(message)
            .bind(created)
            .execute(&mut *$tx)
            .await?;
            if sqlx::query(lock)
                .bind(&hash.0)
                .fetch_optional(&mut *$tx)
                .await?
                .is_some()
            {
                break;
            }
            tries += 1;
            if tries >= 5 {
                return Err(StoreError::Unavailable(
                    "the message content was removed while it was being queued".into(),
                ));
            }
        }
        let id: i64 = sqlx::query(
            "INSERT INTO queue_messages (sender, blob_hash, size, env_id, ret, body_type, smtputf8,
                                         requiretls, authenticated_as, client_ip, trace_context,
                                         created_at, expires_at, quarantine)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) RETURNING id",
        )
        .bind(&envelope.sender)
        .bind(&hash.0)
        .bind(message.len() as i64)
        .bind(envelope.env_id.as_deref())
        .bind(envelope.ret.as_deref())
        .bind(envelope.body_type.as_deref())
        .bind(envelope.smtputf8)
        .bind(envelope.requiretls)
        .bind(envelope.authenticated_as.as_deref())
        .bind(envelope.client_ip.as_deref())
        .bind(envelope.trace_context.as_deref())
        .bind(created)
        .bind(created.saturating_add($max_age))
        .bind(envelope.quarantine)
        .fetch_one(&mut *$tx)
        .await?
        .try_get("id")?;
        for r in &envelope.recipients {
            sqlx::query(
                "INSERT INTO queue_recipients (queue_message_id, address, domain, orcpt, notify,
                                               next_attempt_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $6)",
            )
            .bind(id)
            .bind(&r.address)
            .bind(routing_domain(&r.address))
            .bind(r.orcpt.as_deref())
            .bind(r.notify.as_deref())
            .bind(created)
            .execute(&mut *$tx)
            .await?;
        }
        id
    }};
}

/// Removes queue entry `$id` (its recipients go with it, `ON DELETE
/// CASCADE`) inside the transaction `$tx`, and its blob when nothing else
/// refers to it (see the module documentation for why this is safe against
/// concurrent inserts). Evaluates to `Option<bool>`: `None` when there was
/// no such entry, else whether the blob was deleted too.
macro_rules! remove_entry {
    ($tx:ident, $pg:expr, $id:expr) => {{
        let id: i64 = $id;
        let hash: Option<String> =
            sqlx::query_scalar("DELETE FROM queue_messages WHERE id = $1 RETURNING blob_hash")
                .bind(id)
                .fetch_optional(&mut *$tx)
                .await?;
        match hash {
            None => None,
            Some(hash) => {
                if $pg {
                    // Conflicts with the FOR KEY SHARE of anyone about to
                    // refer to the blob; the check below then sees them.
                    sqlx::query("SELECT 1 AS held FROM blobs WHERE hash = $1 FOR UPDATE")
                        .bind(&hash)
                        .fetch_optional(&mut *$tx)
                        .await?;
                }
                sqlx::query("SAVEPOINT release_blob")
                    .execute(&mut *$tx)
                    .await?;
                let deleted = sqlx::query(
                    "DELETE FROM blobs WHERE hash = $1
                       AND NOT EXISTS (SELECT 1 FROM queue_messages WHERE blob_hash = $1)
                       AND NOT EXISTS (SELECT 1 FROM messages WHERE blob_hash = $1)",
                )
                .bind(&hash)
                .execute(&mut *$tx)
                .await;
                match deleted {
                    Ok(done) => {
                        sqlx::query("RELEASE SAVEPOINT release_blob")
                            .execute(&mut *$tx)
                            .await?;
                        Some(done.rows_affected() > 0)
                    }
                    Err(e) => {
                        // A reference the foreign key knows of: keep the blob.
                        tracing::warn!(error = %e, blob = %hash, "a released blob is still referenced; kept");
                        sqlx::query("ROLLBACK TO SAVEPOINT release_blob")
                            .execute(&mut *$tx)
                            .await?;
                        Some(false)
                    }
                }
            }
        }
    }};
}

/// [`Store::finish_attempts`] on PostgreSQL when no report is owed: one call
/// of `mailroom_finish_attempts`.
async fn finish_attempts_pg(
    pool: &sqlx::PgPool,
    worker: &str,
    queue_id: i64,
    results: &[RecipientResult],
    now: i64,
) -> Result<Finished> {
    let n = results.len();
    let (mut ids, mut states, mut next, mut responses, mut notices) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for r in results {
        let (state, at, response) = attempt_columns(&r.result, now);
        ids.push(r.recipient_id);
        states.push(state);
        next.push(at);
        responses.push(response);
        notices.push(r.delay_notice);
    }
    let (recorded, removed, blob_released): (Vec<i64>, bool, bool) = sqlx::query_as(
        "SELECT recorded, removed, blob_released
           FROM mailroom_finish_attempts($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(queue_id)
    .bind(worker)
    .bind(&ids)
    .bind(&states)
    .bind(&next)
    .bind(&responses)
    .bind(&notices)
    .bind(now)
    .fetch_one(pool)
    .await?;
    Ok(Finished {
        recorded: ids.iter().map(|id| recorded.contains(id)).collect(),
        reports: Vec::new(),
        removed,
        blob_released,
    })
}

/// A result as the state, next-attempt time and last response it records.
fn attempt_columns(result: &AttemptResult, now: i64) -> (&'static str, i64, Option<String>) {
    match result {
        AttemptResult::Delivered => ("delivered", now, None),
        AttemptResult::Deferred {
            next_attempt_at,
            response,
        } => ("deferred", *next_attempt_at, Some(response.clone())),
        AttemptResult::Failed { response } => ("failed", now, Some(response.clone())),
    }
}

/// How long a message may stay in the queue before it bounces (RFC 5321
/// §4.5.4.1 suggests at least 4–5 days).
pub const DEFAULT_MAX_QUEUE_SECS: i64 = 5 * 24 * 3600;

impl Store {
    /// Stores a message and its envelope durably; returns the queue id.
    pub async fn enqueue(
        &self,
        envelope: &QueueEnvelope,
        message: &[u8],
        max_age_secs: i64,
    ) -> Result<i64> {
        if envelope.recipients.is_empty() {
            return Err(StoreError::InvalidArgument(
                "a queued message needs at least one recipient".into(),
            ));
        }
        if message.is_empty() {
            return Err(StoreError::InvalidArgument("empty message".into()));
        }
        let pg = self.is_postgres();
        let created = now();
        if let crate::Backend::Postgres(pool) = self.backend() {
            return enqueue_pg(pool, envelope, message, max_age_secs, created).await;
        }
        let id = write_tx!(self, |tx| {
            insert_entry!(tx, pg, envelope, message, max_age_secs, created)
        });
        Ok(id)
    }

    fn is_postgres(&self) -> bool {
        matches!(self.backend(), crate::Backend::Postgres(_))
    }

    /// Leases up to `limit` due recipients of *local* domains to `worker` for
    /// `lease_secs`. A recipient whose lease expired (its worker died) is due
    /// again: delivery is at-least-once. On PostgreSQL concurrent workers skip
    /// each other's rows (`FOR UPDATE SKIP LOCKED`); on SQLite the write lock
    /// serialises them.
    pub async fn lease_local_recipients(
        &self,
        worker: &str,
        lease_secs: i64,
        limit: i64,
    ) -> Result<Vec<LeasedRecipient>> {
        self.lease_recipients(worker, lease_secs, limit, None).await
    }

    /// Leases up to `limit` due recipients of *remote* domains (every domain
    /// that is not one of ours) to `worker` for `lease_secs`, for the relay,
    /// taking at most as many messages per routing domain as `caps` allows.
    ///
    /// Same lease rules as [`Store::lease_local_recipients`]. Rows come
    /// ordered by message, then domain, so one worker receives the
    /// recipients of one message at one destination together and can send
    /// them in one SMTP transaction (RFC 5321 §3.3: one transaction for all
    /// recipients at the same destination). Recipients beyond a domain's cap
    /// stay unleased and due, for this worker's next round or another's.
    pub async fn lease_remote_recipients(
        &self,
        worker: &str,
        lease_secs: i64,
        limit: i64,
        caps: &DestinationCaps,
    ) -> Result<Vec<LeasedRecipient>> {
        let mut leased = self
            .lease_recipients(worker, lease_secs, limit, Some(caps))
            .await?;
        // RETURNING does not promise the subquery's order.
        leased.sort_by(|a, b| {
            (a.queue_id, routing_domain(&a.address), a.id).cmp(&(
                b.queue_id,
                routing_domain(&b.address),
                b.id,
            ))
        });
        Ok(leased)
    }

    /// Leases due recipients of local domains (`caps` is `None`) or of
    /// remote ones (capped per domain); see the two callers.
    async fn lease_recipients(
        &self,
        worker: &str,
        lease_secs: i64,
        limit: i64,
        caps: Option<&DestinationCaps>,
    ) -> Result<Vec<LeasedRecipient>> {
        let now = now();
        let lock = if self.is_postgres() {
            "FOR UPDATE SKIP LOCKED"
        } else {
            ""
        };
        // On PostgreSQL a lease whose worker is gone (no presence lock,
        // crate::presence) is due at once, not when it runs out.
        let due = if self.is_postgres() {
            format!(
                "state IN ('pending', 'deferred') AND next_attempt_at <= $3
                 AND (lease_until IS NULL OR lease_until < $3 OR {})",
                crate::presence::owner_gone_sql()
            )
        } else {
            "state IN ('pending', 'deferred') AND next_attempt_at <= $3
             AND (lease_until IS NULL OR lease_until < $3)"
                .to_string()
        };
        // Parameters: $1 worker, $2 lease end, $3 now, $4 limit, then for
        // remote leases $5 the default cap, then (domain, cap) pairs.
        let mut domains: Vec<(&str, i64)> = Vec::new();
        let sql = match caps {
            None => format!(
                "UPDATE queue_recipients SET lease_owner = $1, lease_until = $2, updated_at = $3
                 WHERE id IN (
                     SELECT id FROM queue_recipients
                     WHERE {due} AND domain IN (SELECT name FROM domains)
                     ORDER BY next_attempt_at, id LIMIT $4 {lock})
                 RETURNING id, queue_message_id, address, attempts, orcpt, notify, delay_notified_at"
            ),
            Some(caps) => {
                let mut cases = String::new();
                for (i, (domain, cap)) in caps.domains.iter().enumerate() {
                    cases.push_str(&format!(" WHEN ${} THEN ${}", 6 + 2 * i, 7 + 2 * i));
                    domains.push((domain, *cap));
                }
                let cap = if cases.is_empty() {
                    "$5".to_string()
                } else {
                    format!("CASE domain{cases} ELSE $5 END")
                };
                // The window (DENSE_RANK: the n-th message of its domain)
                // sits above the locking subquery: PostgreSQL allows no
                // FOR UPDATE next to a window function.
                format!(
                    "UPDATE queue_recipients SET lease_owner = $1, lease_until = $2, updated_at = $3
                     WHERE id IN (
                         SELECT id FROM (
                             SELECT id, domain,
                                    DENSE_RANK() OVER (PARTITION BY domain ORDER BY queue_message_id) AS nth
                             FROM (SELECT id, queue_message_id, domain FROM queue_recipients
                                   WHERE {due} AND domain NOT IN (SELECT name FROM domains)
                                   ORDER BY queue_message_id, domain, id LIMIT $4 {lock}) due
                         ) ranked
                         WHERE nth <= {cap})
                     RETURNING id, queue_message_id, address, attempts, orcpt, notify, delay_notified_at"
                )
            }
        };
        let default_cap = caps.map(|c| c.default.max(1)).unwrap_or(0);
        let leased = write_tx!(self, |tx| {
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(worker)
                .bind(now + lease_secs)
                .bind(now)
                .bind(limit);
            if caps.is_some() {
                query = query.bind(default_cap);
                for (domain, cap) in &domains {
                    query = query.bind(*domain).bind(*cap);
                }
            }
            let rows = query.fetch_all(&mut *tx).await?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                out.push(LeasedRecipient {
                    id: row.try_get("id")?,
                    queue_id: row.try_get("queue_message_id")?,
                    address: row.try_get("address")?,
                    attempts: row.try_get::<i64, _>("attempts")? as u32,
                    orcpt: row.try_get("orcpt")?,
                    notify: row.try_get("notify")?,
                    delay_notified: row
                        .try_get::<Option<i64>, _>("delay_notified_at")?
                        .is_some(),
                });
            }
            out
        });
        Ok(leased)
    }

    /// Extends the leases `worker` holds on `ids` to `lease_secs` from now;
    /// returns how many. A worker renews, periodically and well within
    /// `lease_secs`, exactly the recipients its tasks are working on: a
    /// lease nobody works on is never kept alive, so a recipient a task gave
    /// up on comes back however long its process lives, and a dead worker's
    /// leases run out.
    pub async fn renew_leases(&self, worker: &str, ids: &[i64], lease_secs: i64) -> Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        let now = now();
        let sql = format!(
            "UPDATE queue_recipients SET lease_until = $2
             WHERE lease_owner = $1 AND state IN ('pending', 'deferred') AND id IN ({})",
            id_list(ids)
        );
        write_conn!(self, |conn| {
            Ok(sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                .bind(worker)
                .bind(now + lease_secs)
                .execute(&mut *conn)
                .await?
                .rows_affected())
        })
    }

    /// Lets the leases `worker` holds on `ids` run out `after_secs` from now
    /// without recording an attempt (a task that could not finish its
    /// attempt: the entry is tried again soon, by any worker, and a fault
    /// that persists does not make it spin). Returns how many.
    pub async fn lapse_leases(&self, worker: &str, ids: &[i64], after_secs: i64) -> Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        let now = now();
        let sql = format!(
            "UPDATE queue_recipients SET lease_until = $2
             WHERE lease_owner = $1 AND id IN ({})",
            id_list(ids)
        );
        write_conn!(self, |conn| {
            Ok(sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                .bind(worker)
                .bind(now + after_secs.max(0) - 1)
                .execute(&mut *conn)
                .await?
                .rows_affected())
        })
    }

    /// Gives back the leases `worker` holds on `ids` (every lease it holds
    /// when `ids` is `None`) without recording an attempt: the recipients
    /// are due again at once, for any worker.
    pub async fn release_leases(&self, worker: &str, ids: Option<&[i64]>) -> Result<u64> {
        let ids_list = ids.map(id_list);
        let sql = match &ids_list {
            Some(list) if list.is_empty() => return Ok(0),
            // Integers only: nothing to escape.
            Some(list) => format!(
                "UPDATE queue_recipients SET lease_owner = NULL, lease_until = NULL
                 WHERE lease_owner = $1 AND id IN ({list})"
            ),
            None => "UPDATE queue_recipients SET lease_owner = NULL, lease_until = NULL
                     WHERE lease_owner = $1"
                .to_string(),
        };
        write_conn!(self, |conn| {
            Ok(sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                .bind(worker)
                .execute(&mut *conn)
                .await?
                .rows_affected())
        })
    }

    /// At the start of a process on the embedded SQLite store: gives back
    /// the leases of workers whose process is gone (a worker's id names its
    /// process: `<pid>-…` or `relay-<pid>-…`), so that a process killed
    /// mid-delivery has its recipients due again at once on restart instead
    /// of after `mta.lease_secs`. A lease whose process still runs (another
    /// process on the same file, or this one) is left alone, as is one whose
    /// owner names no process or where `/proc` cannot tell. Returns how many
    /// recipients came back. On PostgreSQL, where the processes may run on
    /// other hosts, it does nothing: there a dead worker's leases come back
    /// once its presence lock is gone (`crate::presence`).
    pub async fn reclaim_leases_at_start(&self) -> Result<u64> {
        let Backend::Sqlite(pool) = self.backend() else {
            return Ok(0);
        };
        if !std::path::Path::new("/proc/self").exists() {
            return Ok(0);
        }
        let owners: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT lease_owner FROM queue_recipients
              WHERE lease_owner IS NOT NULL AND state IN ('pending', 'deferred')",
        )
        .fetch_all(pool)
        .await?;
        let mut reclaimed = 0;
        for owner in owners {
            let pid = owner
                .strip_prefix("relay-")
                .unwrap_or(&owner)
                .split('-')
                .next()
                .and_then(|p| p.parse::<u32>().ok());
            let Some(pid) = pid else { continue };
            if std::path::Path::new(&format!("/proc/{pid}")).exists() {
                continue; // that process lives: its leases are its own
            }
            reclaimed += sqlx::query(
                "UPDATE queue_recipients SET lease_owner = NULL, lease_until = NULL
                  WHERE lease_owner = $1 AND state IN ('pending', 'deferred')",
            )
            .bind(&owner)
            .execute(pool)
            .await?
            .rows_affected();
        }
        Ok(reclaimed)
    }

    /// The DSN parameters (RFC 3461 `ORCPT`, `NOTIFY`) of each recipient of a
    /// queued message, by recipient row id.
    pub async fn queue_recipient_params(
        &self,
        queue_id: i64,
    ) -> Result<Vec<(i64, QueueRecipient)>> {
        on_backend!(self, |pool| {
            let rows = sqlx::query(
                "SELECT id, address, orcpt, notify FROM queue_recipients
                 WHERE queue_message_id = $1 ORDER BY id",
            )
            .bind(queue_id)
            .fetch_all(pool)
            .await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in rows {
                out.push((
                    r.try_get("id")?,
                    QueueRecipient {
                        address: r.try_get("address")?,
                        orcpt: r.try_get("orcpt")?,
                        notify: r.try_get("notify")?,
                    },
                ));
            }
            Ok(out)
        })
    }

    /// Records the outcome of an attempt for one recipient (see
    /// [`Store::finish_attempts`], which this calls with no reports).
    /// Returns whether it was recorded.
    pub async fn finish_attempt(
        &self,
        worker: &str,
        recipient_id: i64,
        result: &AttemptResult,
    ) -> Result<bool> {
        let queue_id: Option<i64> = on_backend!(self, |pool| {
            sqlx::query_scalar("SELECT queue_message_id FROM queue_recipients WHERE id = $1")
                .bind(recipient_id)
                .fetch_optional(pool)
                .await?
        });
        let Some(queue_id) = queue_id else {
            return Ok(false);
        };
        let finished = self
            .finish_attempts(
                worker,
                queue_id,
                &[RecipientResult {
                    recipient_id,
                    result: result.clone(),
                    delay_notice: false,
                }],
                |_| Vec::new(),
            )
            .await?;
        Ok(finished.recorded.first().copied().unwrap_or(false))
    }

    /// Records the results of one attempt at queue entry `queue_id`, in one
    /// transaction:
    /// 1. each result is written, and its lease released, only if `worker`
    ///    still holds the lease (a worker that lost its lease must not
    ///    overwrite the newer holder's result);
    /// 2. `reports` is called with which results were recorded and returns
    ///    the reports they owe, which are queued;
    /// 3. when no recipient of the entry is left pending or deferred, the
    ///    entry is removed, and its blob with it when nothing else refers to
    ///    it (see the module documentation).
    ///
    /// Concurrent calls for one entry are serialised by a lock on its row,
    /// so the last recipient's result always sees the others and removes it.
    ///
    /// `reports` must owe reports only for recorded results (as it is told).
    /// On PostgreSQL, when even recording every result would owe none (the
    /// usual case), the whole transaction is one round trip: the
    /// `mailroom_finish_attempts` function (migration 0002) does the same
    /// steps in the same order.
    pub async fn finish_attempts<F>(
        &self,
        worker: &str,
        queue_id: i64,
        results: &[RecipientResult],
        reports: F,
    ) -> Result<Finished>
    where
        F: Fn(&[bool]) -> Vec<OwedReport>,
    {
        let now = now();
        let pg = self.is_postgres();
        // On PostgreSQL: the reports owed if every result is recorded (the
        // usual case); none at all means the one-call path.
        let mut owed_if_all_recorded = None;
        if let crate::Backend::Postgres(pool) = self.backend() {
            let owed = reports(&vec![true; results.len()]);
            if owed.is_empty() {
                return finish_attempts_pg(pool, worker, queue_id, results, now).await;
            }
            owed_if_all_recorded = Some(owed);
        }
        let lock_entry = if pg {
            "SELECT id FROM queue_messages WHERE id = $1 FOR UPDATE"
        } else {
            "SELECT id FROM queue_messages WHERE id = $1"
        };
        let finished = write_tx!(self, |tx| {
            let exists = sqlx::query(lock_entry)
                .bind(queue_id)
                .fetch_optional(&mut *tx)
                .await?
                .is_some();
            if !exists {
                // Dropped by an operator meanwhile: nothing to record.
                Finished {
                    recorded: vec![false; results.len()],
                    ..Default::default()
                }
            } else {
                let mut finished = Finished::default();
                for r in results {
                    let (state, next, response) = attempt_columns(&r.result, now);
                    let updated = sqlx::query(
                        "UPDATE queue_recipients
                         SET state = $1, next_attempt_at = $2, last_response = $3,
                             attempts = attempts + 1, lease_owner = NULL, lease_until = NULL,
                             delay_notified_at = CASE WHEN $7 THEN $4 ELSE delay_notified_at END,
                             updated_at = $4
                         WHERE id = $5 AND lease_owner = $6 AND queue_message_id = $8",
                    )
                    .bind(state)
                    .bind(next)
                    .bind(response)
                    .bind(now)
                    .bind(r.recipient_id)
                    .bind(worker)
                    .bind(r.delay_notice)
                    .bind(queue_id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    finished.recorded.push(updated == 1);
                }
                let owed = match owed_if_all_recorded.take() {
                    Some(owed) if finished.recorded.iter().all(|&r| r) => owed,
                    _ => reports(&finished.recorded),
                };
                for report in owed {
                    let id = insert_entry!(
                        tx,
                        pg,
                        &report.envelope,
                        &report.message,
                        report.max_age_secs,
                        now
                    );
                    finished.reports.push(id);
                }
                let open: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM queue_recipients
                     WHERE queue_message_id = $1 AND state IN ('pending', 'deferred')",
                )
                .bind(queue_id)
                .fetch_one(&mut *tx)
                .await?;
                if open == 0 {
                    let released = remove_entry!(tx, pg, queue_id);
                    finished.removed = released.is_some();
                    finished.blob_released = released.unwrap_or(false);
                }
                finished
            }
        });
        Ok(finished)
    }

    /// Adds recipients to a queued message (e.g. remote targets an alias
    /// forwards to), pending from now.
    pub async fn add_queue_recipients(&self, queue_id: i64, addresses: &[String]) -> Result<()> {
        let now = now();
        write_tx!(self, |tx| {
            for address in addresses {
                // An address the entry already has is not added again: a
                // forward queued by an attempt whose result was then not
                // recorded is found there by the retry.
                sqlx::query(
                    "INSERT INTO queue_recipients (queue_message_id, address, domain, next_attempt_at, updated_at)
                     SELECT $1, $2, $3, $4, $4
                     WHERE NOT EXISTS (SELECT 1 FROM queue_recipients
                                       WHERE queue_message_id = $1 AND address = $2)",
                )
                .bind(queue_id)
                .bind(address)
                .bind(routing_domain(address))
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
        });
        Ok(())
    }

    /// Recipient states of a queued message: (address, state, attempts, last response).
    pub async fn queue_recipient_states(
        &self,
        queue_id: i64,
    ) -> Result<Vec<(String, String, u32, Option<String>)>> {
        on_backend!(self, |pool| {
            let rows = sqlx::query(
                "SELECT address, state, attempts, last_response FROM queue_recipients
                 WHERE queue_message_id = $1 ORDER BY id",
            )
            .bind(queue_id)
            .fetch_all(pool)
            .await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in rows {
                out.push((
                    r.try_get("address")?,
                    r.try_get("state")?,
                    r.try_get::<i64, _>("attempts")? as u32,
                    r.try_get("last_response")?,
                ));
            }
            Ok(out)
        })
    }

    /// How many messages are queued (any state).
    pub async fn queue_size(&self) -> Result<i64> {
        crate::on_backend!(self, |pool| {
            Ok(sqlx::query("SELECT COUNT(*) AS n FROM queue_messages")
                .fetch_one(pool)
                .await?
                .try_get("n")?)
        })
    }

    /// A queued message's envelope and content, if it is still queued.
    pub async fn queued_message(&self, id: i64) -> Result<Option<(QueueEnvelope, Vec<u8>)>> {
        Ok(self
            .queued_for_attempt(id)
            .await?
            .map(|q| (q.envelope, q.message)))
    }

    /// What a delivery attempt needs in one round trip: the envelope, the
    /// content, and when the message was queued and expires.
    pub async fn queued_for_attempt(&self, id: i64) -> Result<Option<QueuedMessage>> {
        crate::on_backend!(self, |pool| {
            // One round trip: a row per recipient, the content in the first.
            let rows = sqlx::query(
                "SELECT q.sender, q.env_id, q.ret, q.body_type, q.smtputf8, q.requiretls, q.authenticated_as,
                        q.client_ip, q.trace_context, q.created_at, q.expires_at, q.quarantine,
                        r.address, r.orcpt, r.notify,
                        CASE WHEN r.id IS NULL
                               OR r.id = (SELECT MIN(id) FROM queue_recipients WHERE queue_message_id = q.id)
                             THEN b.data END AS data
                 FROM queue_messages q JOIN blobs b ON b.hash = q.blob_hash
                 LEFT JOIN queue_recipients r ON r.queue_message_id = q.id
                 WHERE q.id = $1 ORDER BY r.id",
            )
            .bind(id)
            .fetch_all(pool)
            .await?;
            let Some(row) = rows.first() else {
                return Ok(None);
            };
            let mut envelope = QueueEnvelope {
                sender: row.try_get("sender")?,
                recipients: Vec::with_capacity(rows.len()),
                env_id: row.try_get("env_id")?,
                ret: row.try_get("ret")?,
                body_type: row.try_get("body_type")?,
                smtputf8: row.try_get("smtputf8")?,
                requiretls: row.try_get("requiretls")?,
                authenticated_as: row.try_get("authenticated_as")?,
                client_ip: row.try_get("client_ip")?,
                trace_context: row.try_get("trace_context")?,
                quarantine: row.try_get("quarantine")?,
            };
            for r in &rows {
                if let Some(address) = r.try_get::<Option<String>, _>("address")? {
                    envelope.recipients.push(QueueRecipient {
                        address,
                        orcpt: r.try_get("orcpt")?,
                        notify: r.try_get("notify")?,
                    });
                }
            }
            Ok(Some(QueuedMessage {
                envelope,
                message: row.try_get::<Vec<u8>, _>("data")?,
                created_at: row.try_get("created_at")?,
                expires_at: row.try_get("expires_at")?,
            }))
        })
    }
}

/// One recipient's delivery state, for queue administration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueRecipientState {
    /// The address.
    pub address: String,
    /// `pending`, `deferred`, `delivered` or `failed`.
    pub state: String,
    /// Attempts so far.
    pub attempts: u32,
    /// When the next attempt is due (Unix seconds).
    pub next_attempt_at: i64,
    /// The last response (reply or local reason), if any.
    pub last_response: Option<String>,
    /// When a delay notice (RFC 3464 `Action: delayed`) was queued for it, if ever.
    pub delay_notified_at: Option<i64>,
    /// Until when a worker holds it (Unix seconds), if one does or did.
    pub lease_until: Option<i64>,
}

/// A queued message as an operator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueEntry {
    /// Queue id.
    pub id: i64,
    /// Envelope sender; empty for `<>`.
    pub sender: String,
    /// Message size in bytes.
    pub size: u64,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub expires_at: i64,
    /// Every recipient's state.
    pub recipients: Vec<QueueRecipientState>,
}

/// Which entries [`Store::list_queue`] returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueFilter {
    /// Only entries with a recipient in this state.
    pub state: Option<String>,
    /// Only entries with a recipient at this domain (canonical form).
    pub domain: Option<String>,
    /// Only entries from this sender.
    pub sender: Option<String>,
    /// At most this many entries.
    pub limit: i64,
}

/// Queue counts for a summary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueSummary {
    /// Queued messages.
    pub entries: u64,
    /// Recipients by state.
    pub pending: u64,
    /// Recipients waiting for a retry.
    pub deferred: u64,
    /// Recipients delivered.
    pub delivered: u64,
    /// Recipients failed.
    pub failed: u64,
    /// Creation time of the oldest entry, if any.
    pub oldest_created_at: Option<i64>,
}

/// The states a recipient can be in.
pub const QUEUE_STATES: &[&str] = &["pending", "deferred", "delivered", "failed"];

impl Store {
    /// Queue entries, newest first, with their recipients.
    pub async fn list_queue(&self, filter: &QueueFilter) -> Result<Vec<QueueEntry>> {
        if let Some(state) = &filter.state
            && !QUEUE_STATES.contains(&state.as_str())
        {
            return Err(StoreError::InvalidArgument(format!(
                "unknown state {state:?}; the states are {}",
                QUEUE_STATES.join(", ")
            )));
        }
        let ids: Vec<i64> = on_backend!(self, |pool| {
            let rows = sqlx::query(
                "SELECT q.id FROM queue_messages q
                 WHERE ($1 = '' OR q.sender = $1)
                   AND ($2 = '' AND $3 = '' OR EXISTS (
                        SELECT 1 FROM queue_recipients r WHERE r.queue_message_id = q.id
                          AND ($2 = '' OR r.state = $2) AND ($3 = '' OR r.domain = $3)))
                 ORDER BY q.id DESC LIMIT $4",
            )
            .bind(filter.sender.as_deref().unwrap_or(""))
            .bind(filter.state.as_deref().unwrap_or(""))
            .bind(filter.domain.as_deref().unwrap_or(""))
            .bind(if filter.limit > 0 { filter.limit } else { 100 })
            .fetch_all(pool)
            .await?;
            let mut ids = Vec::with_capacity(rows.len());
            for row in rows {
                ids.push(row.try_get("id")?);
            }
            ids
        });
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(entry) = self.queue_entry(id).await? {
                out.push(entry);
            }
        }
        Ok(out)
    }

    /// One queue entry with its recipients, if it exists.
    pub async fn queue_entry(&self, id: i64) -> Result<Option<QueueEntry>> {
        on_backend!(self, |pool| {
            let Some(row) = sqlx::query(
                "SELECT id, sender, size, created_at, expires_at FROM queue_messages WHERE id = $1",
            )
            .bind(id)
            .fetch_optional(pool)
            .await?
            else {
                return Ok(None);
            };
            let rows = sqlx::query(
                "SELECT address, state, attempts, next_attempt_at, last_response, delay_notified_at,
                        lease_until
                 FROM queue_recipients WHERE queue_message_id = $1 ORDER BY id",
            )
            .bind(id)
            .fetch_all(pool)
            .await?;
            let mut recipients = Vec::with_capacity(rows.len());
            for r in rows {
                recipients.push(QueueRecipientState {
                    address: r.try_get("address")?,
                    state: r.try_get("state")?,
                    attempts: r.try_get::<i64, _>("attempts")? as u32,
                    next_attempt_at: r.try_get("next_attempt_at")?,
                    last_response: r.try_get("last_response")?,
                    delay_notified_at: r.try_get("delay_notified_at")?,
                    lease_until: r.try_get("lease_until")?,
                });
            }
            Ok(Some(QueueEntry {
                id: row.try_get("id")?,
                sender: row.try_get("sender")?,
                size: row.try_get::<i64, _>("size")?.max(0) as u64,
                created_at: row.try_get("created_at")?,
                expires_at: row.try_get("expires_at")?,
                recipients,
            }))
        })
    }

    /// Makes the unfinished, unleased recipients of an entry due now; returns how many.
    pub async fn retry_queue_entry(&self, id: i64) -> Result<u64> {
        let now = now();
        let changed = write_tx!(self, |tx| {
            let exists = sqlx::query("SELECT 1 FROM queue_messages WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?
                .is_some();
            if !exists {
                return Err(StoreError::NotFound(format!("no queue entry {id}")));
            }
            sqlx::query(
                "UPDATE queue_recipients SET next_attempt_at = $2, updated_at = $2
                 WHERE queue_message_id = $1 AND state IN ('pending', 'deferred')
                   AND (lease_until IS NULL OR lease_until < $2)",
            )
            .bind(id)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected()
        });
        Ok(changed)
    }

    /// Removes an entry and its recipients (no bounce is sent), and its
    /// blob when nothing else refers to it, as a finished entry is removed.
    pub async fn drop_queue_entry(&self, id: i64) -> Result<()> {
        let pg = self.is_postgres();
        let removed = write_tx!(self, |tx| { remove_entry!(tx, pg, id) });
        if removed.is_none() {
            return Err(StoreError::NotFound(format!("no queue entry {id}")));
        }
        Ok(())
    }

    /// Counts by state and the oldest entry.
    pub async fn queue_summary(&self) -> Result<QueueSummary> {
        on_backend!(self, |pool| {
            let row =
                sqlx::query("SELECT COUNT(*) AS n, MIN(created_at) AS oldest FROM queue_messages")
                    .fetch_one(pool)
                    .await?;
            let mut summary = QueueSummary {
                entries: row.try_get::<i64, _>("n")?.max(0) as u64,
                oldest_created_at: row.try_get("oldest")?,
                ..Default::default()
            };
            let rows =
                sqlx::query("SELECT state, COUNT(*) AS n FROM queue_recipients GROUP BY state")
                    .fetch_all(pool)
                    .await?;
            for r in rows {
                let n = r.try_get::<i64, _>("n")?.max(0) as u64;
                match r.try_get::<String, _>("state")?.as_str() {
                    "pending" => summary.pending = n,
                    "deferred" => summary.deferred = n,
                    "delivered" => summary.delivered = n,
                    "failed" => summary.failed = n,
                    _ => {}
                }
            }
            Ok(summary)
        })
    }
}

/// `1,2,3` for an `IN (…)` list (integers only: nothing to escape).
fn id_list(ids: &[i64]) -> String {
    ids.iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",")
}
