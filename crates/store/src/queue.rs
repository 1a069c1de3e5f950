//! The mail queue: what the MTA has accepted and must still deliver.
//!
//! Invariant (the durability contract): [`Store::enqueue`] writes the
//! message, its envelope and one state row per recipient in ONE transaction
//! and returns only after the commit. An SMTP session answers 250 only after
//! it returned, so a message that was acknowledged is always in the queue.

use sqlx::Row;

use crate::{BlobHash, Result, Store, StoreError, now, write_tx};

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
                    "INSERT INTO queue_recipients (queue_message_id, address, orcpt, notify, next_attempt_at,
                                                   updated_at)
                     VALUES ($1, $2, $3, $4, $5, $5)",
                )
                .bind(id)
                .bind(&r.address)
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
        crate::on_backend!(self, |pool| {
            let Some(row) = sqlx::query(
                "SELECT q.sender, q.env_id, q.ret, q.body_type, q.smtputf8, q.requiretls, q.authenticated_as,
                        q.client_ip, q.trace_context, b.data
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
            Ok(Some((envelope, row.try_get::<Vec<u8>, _>("data")?)))
        })
    }
}
