//! The MDA: gRPC `Delivery.Deliver` puts a message into the mailboxes of its
//! local recipients.
//!
//! Flow of one request: the message is stored once as a content-addressed
//! blob and parsed once (with mail-parser) for what IMAP will need; each
//! recipient is resolved by the store (accounts, aliases, plus-addressing,
//! catch-all); every account it reaches gets a copy with its own header
//! prefix (`Return-Path`, `Delivered-To`, `Authentication-Results`), stored in
//! one transaction that allocates the UID. Outcomes are per recipient:
//! delivered, temporary failure (retry later: quota, store unavailable) or
//! permanent failure (unknown user, alias loop, disabled mailbox).
//!
//! Idempotency: the delivery key is `<queue id>/<recipient>`, so a retry of
//! the same queue entry after a crash finds the copies already stored and
//! stores nothing twice.
//!
//! At acceptance ([`DeliveryService::deliver_at_acceptance`], called by the
//! Queue of the same process; docs/ARCHITECTURE.md, departure 50): a message
//! whose recipients all resolve to local accounts with room is stored, with
//! its content, in the one transaction that acknowledges it, and never
//! queued; the same copies, prefixes and folders as above. Anything else
//! (an unknown or disabled recipient, a forward to another domain, a full
//! mailbox, a sender asking for success notices) is queued as before.

use std::sync::atomic::{AtomicBool, Ordering};

use mailroom_address::Address;
use mailroom_rpc::delivery as pb;
use mailroom_rpc::delivery::delivery_server::{Delivery, DeliveryServer};
use mailroom_rpc::internal::{Caller, InternalSecret, RequireRole, Role};
use mailroom_store::{
    AcceptedCopy, BlobHash, Folder, LocalTarget, NewMessage, Store, StoreError, Stored, Unroutable,
};
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};

mod parse;

pub use parse::parse_cache;

/// The gRPC name, for health reporting.
pub const SERVICE_NAME: &str =
    <DeliveryServer<DeliveryService> as tonic::server::NamedService>::NAME;

/// The Delivery service over gRPC, behind the internal credential check.
pub type DeliveryGrpc = InterceptedService<DeliveryServer<DeliveryService>, RequireRole>;

/// Builds the service over `store`; `hostname` is the authserv-id of the
/// `Authentication-Results` headers it writes. Only callers proving the
/// MTA role under `secret` are admitted (`mailroom_rpc::internal`).
pub fn service(store: Store, hostname: String, secret: InternalSecret) -> DeliveryGrpc {
    InterceptedService::new(
        DeliveryServer::new(DeliveryService::new(store, hostname))
            .max_decoding_message_size(MAX_MESSAGE_BYTES),
        RequireRole::new(secret, "Delivery.Deliver", &[Role::Mta]),
    )
}

impl DeliveryService {
    /// The Delivery implementation, for [`service`] or for a queue worker in
    /// the same process that calls it directly.
    pub fn new(store: Store, hostname: String) -> Self {
        DeliveryService { store, hostname }
    }
}

/// The largest message a Deliver request may carry (gRPC's 4 MiB default is
/// far below what mail needs).
pub const MAX_MESSAGE_BYTES: usize = 256 << 20;

/// The Delivery implementation.
#[derive(Debug, Clone)]
pub struct DeliveryService {
    store: Store,
    hostname: String,
}

fn outcome(recipient: &str, kind: pb::Outcome, reason: impl Into<String>) -> pb::RecipientOutcome {
    pb::RecipientOutcome {
        recipient: recipient.to_string(),
        outcome: kind as i32,
        reason: reason.into(),
        remote_targets: Vec::new(),
    }
}

/// Header lines this recipient's copy starts with.
fn prefix(sender: &str, delivered_to: &str, hostname: &str, auth_results: &str) -> Vec<u8> {
    let mut p = format!("Return-Path: <{sender}>\r\nDelivered-To: {delivered_to}\r\n");
    if !auth_results.is_empty() {
        // RFC 8601 §2.2: authserv-id first, then the results.
        p.push_str(&format!(
            "Authentication-Results: {hostname};\r\n\t{auth_results}\r\n"
        ));
    }
    p.into_bytes()
}

/// Where a copy for `target` goes: Junk for a quarantined message (DMARC),
/// else the `+tag` folder it was addressed to, else INBOX.
fn folder_for(target: &LocalTarget, quarantine: bool) -> Folder {
    match (&target.folder, quarantine) {
        (_, true) => Folder::Junk,
        (Some(tag), false) => Folder::Named(tag.clone()),
        (None, false) => Folder::Inbox,
    }
}

fn has_line_break(s: &str) -> bool {
    s.contains(['\r', '\n'])
}

impl DeliveryService {
    /// Delivers to one recipient; never fails as a whole.
    async fn deliver_one(
        &self,
        request: &pb::DeliverRequest,
        blob: &BlobHash,
        blob_stored: &AtomicBool,
        cache: &Option<String>,
        recipient: &str,
    ) -> pb::RecipientOutcome {
        use pb::Outcome::{Delivered, PermanentFailure, TemporaryFailure};
        let address = match Address::parse(recipient) {
            Ok(a) => a,
            Err(e) => return outcome(recipient, PermanentFailure, format!("5.1.3 {e}")),
        };
        let resolved = match self.store.resolve_recipient(&address).await {
            Ok(Ok(r)) => r,
            Ok(Err(why)) => {
                let text = why.to_string();
                if matches!(why, Unroutable::AliasLoop(_)) {
                    tracing::warn!(%address, "alias loop");
                }
                return outcome(recipient, PermanentFailure, text);
            }
            Err(e) => return self.temporary(recipient, e),
        };
        let mut temporary = None;
        for target in &resolved.local {
            let folder = folder_for(target, request.quarantine);
            let msg = NewMessage {
                blob: blob.clone(),
                blob_size: request.message.len() as u64,
                prefix: prefix(
                    &request.sender,
                    &target.address,
                    &self.hostname,
                    &request.authentication_results,
                ),
                parse_cache: cache.clone(),
                delivery_key: format!("{}/{}", request.queue_id, address),
                internal_date: unix_now(),
            };
            let mut stored = self.store.store_message(target, &folder, &msg).await;
            if matches!(stored, Err(StoreError::FailedPrecondition(_)))
                && !blob_stored.swap(true, Ordering::Relaxed)
            {
                stored = match self.store.put_blob(&request.message).await {
                    Ok(_) => self.store.store_message(target, &folder, &msg).await,
                    Err(e) => Err(e),
                };
            }
            match stored {
                Ok(Stored::New(event)) => {
                    tracing::info!(recipient = %address, account = %target.address, uid = event.uid, "delivered");
                }
                Ok(Stored::AlreadyThere { uid, .. }) => {
                    tracing::info!(recipient = %address, account = %target.address, uid, "already delivered");
                }
                Ok(Stored::OverQuota { used, quota }) => {
                    tracing::info!(account = %target.address, used, quota, "over quota");
                    temporary.get_or_insert_with(|| {
                        format!("4.2.2 mailbox of {} is full", target.address)
                    });
                }
                Err(e) => {
                    let o = self.temporary(recipient, e);
                    temporary.get_or_insert(o.reason);
                }
            }
        }
        let mut o = match temporary {
            Some(reason) => outcome(recipient, TemporaryFailure, reason),
            None => outcome(recipient, Delivered, ""),
        };
        o.remote_targets = resolved.remote;
        o
    }

    /// Delivers `message` for every one of `recipients` at once, in one
    /// transaction with its content (see the module docs). `Ok(true)`: every
    /// copy is committed; `Ok(false)`: nothing was stored, because some
    /// recipient cannot be delivered at once (unknown, disabled, forwarded
    /// elsewhere, over quota): queue the message instead. An error: the
    /// store failed, nothing is committed.
    pub async fn deliver_at_acceptance(
        &self,
        sender: &str,
        recipients: &[String],
        message: &[u8],
        quarantine: bool,
    ) -> Result<bool, StoreError> {
        if has_line_break(sender) || message.is_empty() || recipients.is_empty() {
            return Ok(false);
        }
        // The same histogram as `Deliver`: both are deliveries into mailboxes.
        let _timer =
            mailroom_telemetry::metrics_endpoint::Timer::start("mailroom_deliver_duration_seconds");
        let mut copies = Vec::new();
        for recipient in recipients {
            let Ok(address) = Address::parse(recipient) else {
                return Ok(false);
            };
            let resolved = match self.store.resolve_recipient(&address).await? {
                Ok(r) => r,
                Err(_) => return Ok(false),
            };
            if resolved.local.is_empty() || !resolved.remote.is_empty() || !resolved.full.is_empty()
            {
                return Ok(false);
            }
            for target in resolved.local {
                copies.push(AcceptedCopy {
                    recipient: address.to_string(),
                    prefix: prefix(sender, &target.address, &self.hostname, ""),
                    folder: folder_for(&target, quarantine),
                    target,
                });
            }
        }
        let stored = self
            .store
            .deliver_at_acceptance(message, parse_cache(message), unix_now(), &copies)
            .await?;
        let Some(events) = stored else {
            return Ok(false);
        };
        for (copy, event) in copies.iter().zip(&events) {
            tracing::info!(recipient = %copy.recipient, account = %copy.target.address, uid = event.uid, "delivered at acceptance");
        }
        Ok(true)
    }

    fn temporary(&self, recipient: &str, e: StoreError) -> pb::RecipientOutcome {
        tracing::error!(error = %e, recipient, "delivery failed in the store");
        outcome(
            recipient,
            pb::Outcome::TemporaryFailure,
            "4.3.0 temporary local problem, try again later",
        )
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[tonic::async_trait]
impl Delivery for DeliveryService {
    async fn deliver(
        &self,
        request: Request<pb::DeliverRequest>,
    ) -> Result<Response<pb::DeliverResponse>, Status> {
        let _timer =
            mailroom_telemetry::metrics_endpoint::Timer::start("mailroom_deliver_duration_seconds");
        // Only the queue's worker writes into mailboxes (the check in front
        // of the gRPC service put the proven role here; in one process the
        // worker attaches it itself).
        match Caller::of(&request) {
            Some(Role::Mta) => {}
            Some(role) => {
                return Err(Status::permission_denied(format!(
                    "the {role} role may not deliver"
                )));
            }
            None => {
                return Err(Status::unauthenticated(
                    "a valid internal service credential is required",
                ));
            }
        }
        let r = request.into_inner();
        if r.queue_id <= 0 {
            return Err(Status::invalid_argument(
                "queue_id must identify the queue entry (> 0)",
            ));
        }
        if r.recipients.is_empty() {
            return Err(Status::invalid_argument("no recipients"));
        }
        if r.message.is_empty() {
            return Err(Status::invalid_argument("empty message"));
        }
        if has_line_break(&r.sender) || has_line_break(&r.authentication_results) {
            return Err(Status::invalid_argument(
                "sender and authentication results must be single lines",
            ));
        }
        // The queue stored this content under this key before it called us
        // (the usual case): refer to it without sending it to the store
        // again. When it is not there (another caller), the first copy's
        // insert fails on the reference and stores it then.
        let blob = BlobHash::of(&r.message);
        let blob_stored = AtomicBool::new(false);
        let cache = parse_cache(&r.message);
        let mut outcomes = Vec::with_capacity(r.recipients.len());
        for recipient in &r.recipients {
            outcomes.push(
                self.deliver_one(&r, &blob, &blob_stored, &cache, recipient)
                    .await,
            );
        }
        Ok(Response::new(pb::DeliverResponse { outcomes }))
    }
}
