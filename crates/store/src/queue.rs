//! The mail queue: what the MTA has accepted and must still deliver.
//!
//! Invariant (the durability contract): [`Store::enqueue`] writes the
//! message, its envelope and one state row per recipient in ONE transaction
//! and returns only after the commit. An SMTP session answers 250 only after
//! it returned, so a message that was acknowledged is always in the queue.

use mailroom_address::Domain;
use sqlx::Row;

use crate::{BlobHash, Result, Store, StoreError, now, on_backend, write_tx};

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
        let hash = BlobHash::of(message);
        let created = now();
        let id = write_tx!(self, |tx| {
            sqlx::query(
                "INSERT INTO blobs (hash, size, data, created_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (hash) DO NOTHING",
            )
            .bind(&hash.0)
            .bind(message.len() as i64)
            .bind(message)
            .bind(created)
            .execute(&mut *tx)
            .await?;
            let id: i64 = sqlx::query(
                "INSERT INTO queue_messages (sender, blob_hash, size, env_id, ret, body_type, smtputf8,
                                             requiretls, authenticated_as, client_ip, trace_context,
                                             created_at, expires_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) RETURNING id",
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
            .bind(created + max_age_secs)
            .fetch_one(&mut *tx)
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
                .execute(&mut *tx)
                .await?;
            }
            id
        });
        Ok(id)
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
        self.lease_recipients(worker, lease_secs, limit, true).await
    }

    /// Leases up to `limit` due recipients of *remote* domains (every domain
    /// that is not one of ours) to `worker` for `lease_secs`, for the relay.
    ///
    /// Same lease rules as [`Store::lease_local_recipients`]. Rows come
    /// ordered by message, then domain, so one worker receives the
    /// recipients of one message at one destination together and can send
    /// them in one SMTP transaction (RFC 5321 §3.3: one transaction for all
    /// recipients at the same destination).
    pub async fn lease_remote_recipients(
        &self,
        worker: &str,
        lease_secs: i64,
        limit: i64,
    ) -> Result<Vec<LeasedRecipient>> {
        let mut leased = self
            .lease_recipients(worker, lease_secs, limit, false)
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

    /// Leases due recipients of local (`local`) or remote domains; see the two callers.
    async fn lease_recipients(
        &self,
        worker: &str,
        lease_secs: i64,
        limit: i64,
        local: bool,
    ) -> Result<Vec<LeasedRecipient>> {
        let now = now();
        let lock = match self.backend() {
            crate::Backend::Postgres(_) => "FOR UPDATE SKIP LOCKED",
            crate::Backend::Sqlite(_) => "",
        };
        let (domains, order) = if local {
            ("IN", "next_attempt_at, id")
        } else {
            ("NOT IN", "queue_message_id, domain, id")
        };
        let sql = format!(
            "UPDATE queue_recipients SET lease_owner = $1, lease_until = $2, updated_at = $3
             WHERE id IN (
                 SELECT id FROM queue_recipients
                 WHERE state IN ('pending', 'deferred') AND next_attempt_at <= $3
                   AND (lease_until IS NULL OR lease_until < $3)
                   AND domain {domains} (SELECT name FROM domains)
                 ORDER BY {order} LIMIT $4 {lock})
             RETURNING id, queue_message_id, address, attempts"
        );
        let leased = write_tx!(self, |tx| {
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(worker)
                .bind(now + lease_secs)
                .bind(now)
                .bind(limit)
                .fetch_all(&mut *tx)
                .await?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                out.push(LeasedRecipient {
                    id: row.try_get("id")?,
                    queue_id: row.try_get("queue_message_id")?,
                    address: row.try_get("address")?,
                    attempts: row.try_get::<i64, _>("attempts")? as u32,
                });
            }
            out
        });
        Ok(leased)
    }

    /// The DSN parameters (RFC 3461 `ORCPT`, `NOTIFY`) of each recipient of a
    /// queued message, by recipient row id, so the relay can pass them on
    /// and the DSN writer can honour them.
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

    /// Records the outcome of an attempt and releases the lease, but only if
    /// `worker` still holds it (a worker that lost its lease must not
    /// overwrite the newer holder's result).
    pub async fn finish_attempt(
        &self,
        worker: &str,
        recipient_id: i64,
        result: &AttemptResult,
    ) -> Result<bool> {
        let now = now();
        let (state, next, response) = match result {
            AttemptResult::Delivered => ("delivered", now, None),
            AttemptResult::Deferred {
                next_attempt_at,
                response,
            } => ("deferred", *next_attempt_at, Some(response.as_str())),
            AttemptResult::Failed { response } => ("failed", now, Some(response.as_str())),
        };
        let updated = on_backend!(self, |pool| {
            sqlx::query(
                "UPDATE queue_recipients
                 SET state = $1, next_attempt_at = $2, last_response = $3, attempts = attempts + 1,
                     lease_owner = NULL, lease_until = NULL, updated_at = $4
                 WHERE id = $5 AND lease_owner = $6",
            )
            .bind(state)
            .bind(next)
            .bind(response)
            .bind(now)
            .bind(recipient_id)
            .bind(worker)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(updated == 1)
    }

    /// Adds recipients to a queued message (e.g. remote targets an alias
    /// forwards to), pending from now.
    pub async fn add_queue_recipients(&self, queue_id: i64, addresses: &[String]) -> Result<()> {
        let now = now();
        write_tx!(self, |tx| {
            for address in addresses {
                sqlx::query(
                    "INSERT INTO queue_recipients (queue_message_id, address, domain, next_attempt_at, updated_at)
                     VALUES ($1, $2, $3, $4, $4)",
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
            .map(|(envelope, message, _)| (envelope, message)))
    }

    /// What a delivery attempt needs in one query: the envelope, the
    /// content and the expiry time (Unix seconds).
    pub async fn queued_for_attempt(
        &self,
        id: i64,
    ) -> Result<Option<(QueueEnvelope, Vec<u8>, i64)>> {
        crate::on_backend!(self, |pool| {
            let Some(row) = sqlx::query(
                "SELECT q.sender, q.env_id, q.ret, q.body_type, q.smtputf8, q.requiretls, q.authenticated_as,
                        q.client_ip, q.trace_context, q.expires_at, b.data
                 FROM queue_messages q JOIN blobs b ON b.hash = q.blob_hash WHERE q.id = $1",
            )
            .bind(id)
            .fetch_optional(pool)
            .await?
            else {
                return Ok(None);
            };
            let recipients = sqlx::query(
                "SELECT address, orcpt, notify FROM queue_recipients WHERE queue_message_id = $1 ORDER BY id",
            )
            .bind(id)
            .fetch_all(pool)
            .await?;
            let mut envelope = QueueEnvelope {
                sender: row.try_get("sender")?,
                recipients: Vec::with_capacity(recipients.len()),
                env_id: row.try_get("env_id")?,
                ret: row.try_get("ret")?,
                body_type: row.try_get("body_type")?,
                smtputf8: row.try_get("smtputf8")?,
                requiretls: row.try_get("requiretls")?,
                authenticated_as: row.try_get("authenticated_as")?,
                client_ip: row.try_get("client_ip")?,
                trace_context: row.try_get("trace_context")?,
            };
            for r in recipients {
                envelope.recipients.push(QueueRecipient {
                    address: r.try_get("address")?,
                    orcpt: r.try_get("orcpt")?,
                    notify: r.try_get("notify")?,
                });
            }
            Ok(Some((
                envelope,
                row.try_get::<Vec<u8>, _>("data")?,
                row.try_get::<i64, _>("expires_at")?,
            )))
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
                "SELECT address, state, attempts, next_attempt_at, last_response FROM queue_recipients
                 WHERE queue_message_id = $1 ORDER BY id",
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

    /// Removes an entry and its recipients (no bounce is sent).
    pub async fn drop_queue_entry(&self, id: i64) -> Result<()> {
        let deleted = on_backend!(self, |pool| {
            sqlx::query("DELETE FROM queue_messages WHERE id = $1")
                .bind(id)
                .execute(pool)
                .await?
                .rows_affected()
        });
        if deleted == 0 {
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
