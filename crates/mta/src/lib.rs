//! The MTA's queue service (gRPC `Queue.Enqueue`) and the workers that drain
//! the queue: [`LocalDelivery`] for our own domains (through the MDA) and
//! [`Relay`] for remote domains (MX lookup, outbound SMTP, DSNs).
//!
//! Every accepted message enters here, from the submission server and from
//! inbound SMTP alike. The call returns only after the store committed the
//! message, its envelope and one state row per recipient in one transaction:
//! that is what lets an SMTP session answer 250 (the durability contract in
//! docs/ARCHITECTURE.md). Any failure is reported as an error, so the session
//! answers 451 and the client keeps the message.

use std::sync::Arc;
use std::time::Duration;

use mailroom_rpc::internal::{Caller, InternalSecret, RequireRole, Role};
use mailroom_rpc::queue as pb;
use mailroom_rpc::queue::queue_server::{Queue, QueueServer};
use mailroom_smtp_proto::Path;
use mailroom_store::{QueueEnvelope, QueueRecipient, Store, StoreError};
use tokio::sync::Notify;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};

pub mod client;
pub mod dsn;
#[doc(hidden)]
pub mod fuzz;
mod outcome;
mod relay;
pub mod route;
mod worker;

pub use client::Timeouts;
pub use relay::{
    DELAY_WARNING_SECS, DestinationLimiter, DestinationPermit, MAX_CONNECTIONS_PER_DESTINATION,
    MAX_MESSAGES_PER_SESSION, Relay, RelaySettings, backoff,
};
pub use worker::{DeliveryHandle, LEASE_SECS, LocalDelivery, MAX_RETRY_SECS, retry_delay};

/// The gRPC name, for health reporting.
pub const SERVICE_NAME: &str = <QueueServer<QueueService> as tonic::server::NamedService>::NAME;

/// The largest message Enqueue accepts (the SMTP size limit is lower).
pub const MAX_MESSAGE_BYTES: usize = 256 << 20;

/// Wakes this process's queue workers when there is new work: the local
/// delivery worker and the relay each have their own signal, so that a burst
/// of local mail does not make the relay look for remote work at every
/// message (and the other way round). A worker that is busy when woken loses
/// nothing: it looks again before it sleeps.
#[derive(Debug, Default)]
pub struct QueueWake {
    /// New work for local domains.
    pub local: Notify,
    /// New work for remote domains.
    pub remote: Notify,
}

impl QueueWake {
    /// Wakes both workers (work of unknown kind).
    pub fn both(&self) {
        self.local.notify_waiters();
        self.remote.notify_waiters();
    }
}

/// The Queue over gRPC, behind the internal credential check.
pub type QueueGrpc = InterceptedService<QueueServer<QueueService>, RequireRole>;

/// The roles that may call `Enqueue`.
pub const ENQUEUE_ROLES: &[Role] = &[Role::Msa, Role::Inbound];

/// Serves `queue` over gRPC; callers must prove the MSA or inbound role
/// under `secret`.
pub fn service(queue: QueueService, secret: InternalSecret) -> QueueGrpc {
    InterceptedService::new(
        QueueServer::new(queue).max_decoding_message_size(MAX_MESSAGE_BYTES),
        RequireRole::new(secret, "Queue.Enqueue", ENQUEUE_ROLES),
    )
}

impl QueueService {
    /// The Queue implementation, for [`service`] or for callers in the same
    /// process that call it directly (`Queue::enqueue`), skipping gRPC.
    /// `max_age_secs` is how long a message may stay queued; `wake` is
    /// signalled after each enqueue (the workers of this process).
    pub fn new(store: Store, max_age_secs: i64, wake: Arc<QueueWake>) -> Self {
        QueueService {
            store,
            max_age_secs,
            wake,
            dkim_expiry: DKIM_EXPIRY,
            at_acceptance: None,
        }
    }

    /// Delivers local mail at acceptance through `mda` when it can (see
    /// [`AtAcceptance`]); without it every message is queued.
    pub fn with_at_acceptance(mut self, mda: Arc<dyn AtAcceptance>) -> Self {
        self.at_acceptance = Some(mda);
        self
    }

    /// How long the DKIM signatures it makes stay valid (`x=`); zero: no `x=`.
    pub fn with_dkim_expiry(mut self, expiry: Duration) -> Self {
        self.dkim_expiry = expiry;
        self
    }

    /// The submitted message with `DKIM-Signature` fields on top, one per
    /// active key of its author (`From:`) domain, when that domain has keys.
    ///
    /// Signing happens here, once, as the message enters the queue, and not
    /// at each relay attempt: every retry and every destination then gets
    /// the same bytes, the signing key is read once per message, and the
    /// signature's `t=` is the submission time (see docs/ARCHITECTURE.md,
    /// departure 33). A key that cannot be used is logged and the message
    /// goes unsigned rather than stuck.
    async fn dkim_sign(&self, message: Vec<u8>) -> Result<Vec<u8>, Status> {
        let Some(domain) = author_domain(&message) else {
            return Ok(message);
        };
        let keys = self.store.dkim_signing_keys(&domain).await.map_err(|e| {
            tracing::error!(error = %e, "cannot read the DKIM keys");
            Status::unavailable("the queue is unavailable; try again later")
        })?;
        Ok(sign_with(message, &keys, self.dkim_expiry))
    }
}

/// `message` with one `DKIM-Signature` per key of `keys` on top (none:
/// unchanged). A key that cannot be used is logged and the message goes
/// unsigned rather than stuck.
pub(crate) fn sign_with(
    message: Vec<u8>,
    keys: &[mailroom_store::DkimSigningKey],
    expiry: Duration,
) -> Vec<u8> {
    let Some(first) = keys.first() else {
        return message;
    };
    let signing: Vec<mailroom_sender_auth::signing::SigningKey<'_>> = keys
        .iter()
        .map(|k| mailroom_sender_auth::signing::SigningKey {
            domain: &k.info.domain,
            selector: &k.info.selector,
            algorithm: &k.info.algorithm,
            private_key_pem: &k.private_key,
        })
        .collect();
    match mailroom_sender_auth::signing::sign(&message, &signing, expiry) {
        Ok(headers) => {
            let mut signed = Vec::with_capacity(headers.len() + message.len());
            signed.extend_from_slice(headers.as_bytes());
            signed.extend_from_slice(&message);
            signed
        }
        Err(e) => {
            let domain = &first.info.domain;
            tracing::error!(error = %e, %domain, "DKIM signing failed; the message goes unsigned");
            message
        }
    }
}

/// The default `x=` of our DKIM signatures: 7 days.
pub const DKIM_EXPIRY: Duration = Duration::from_secs(7 * 24 * 3600);

/// The domain of the (first) `From:` address, which DKIM must align with for
/// DMARC (RFC 7489 §3.1.1).
fn author_domain(message: &[u8]) -> Option<mailroom_address::Domain> {
    let headers = mailroom_smtp_proto::header_section(message);
    let parsed = mail_parser::MessageParser::default().parse_headers(headers)?;
    let address = parsed.from()?.first()?.address()?;
    let domain = address.rsplit_once('@')?.1;
    mailroom_address::Domain::parse(domain).ok()
}

/// The Queue implementation over the store.
#[derive(Debug, Clone)]
pub struct QueueService {
    store: Store,
    max_age_secs: i64,
    wake: Arc<QueueWake>,
    /// `x=` of the DKIM signatures made at submission.
    dkim_expiry: Duration,
    /// The MDA of this process, for local mail delivered at acceptance.
    at_acceptance: Option<Arc<dyn AtAcceptance>>,
}

/// Delivery into the mailboxes while a message is accepted, by the MDA of
/// the same process over the same store (docs/ARCHITECTURE.md, departure
/// 50). The Queue calls it for a message whose recipients are all of local
/// domains and that asks for no success notice; what it cannot deliver at
/// once is queued as before.
#[tonic::async_trait]
pub trait AtAcceptance: Send + Sync + std::fmt::Debug + 'static {
    /// Stores a copy for every recipient in ONE transaction with the content
    /// and returns `Ok(true)` once that committed; `Ok(false)` with nothing
    /// stored when some recipient cannot be delivered at once; an error
    /// when the store failed (nothing committed, or the outcome unknown).
    async fn deliver(
        &self,
        sender: &str,
        recipients: &[String],
        message: &[u8],
        quarantine: bool,
    ) -> Result<bool, StoreError>;
}

fn single_line(field: &str, value: &str) -> Result<(), Status> {
    if value.contains(['\r', '\n', '\0']) {
        return Err(Status::invalid_argument(format!(
            "{field} must be one line"
        )));
    }
    Ok(())
}

fn notify_text(notify: &[i32]) -> Option<String> {
    let words: Vec<&str> = notify
        .iter()
        .filter_map(|n| match pb::DsnNotify::try_from(*n).ok()? {
            pb::DsnNotify::Never => Some("NEVER"),
            pb::DsnNotify::Success => Some("SUCCESS"),
            pb::DsnNotify::Failure => Some("FAILURE"),
            pb::DsnNotify::Delay => Some("DELAY"),
            pb::DsnNotify::Unspecified => None,
        })
        .collect();
    (!words.is_empty()).then(|| words.join(","))
}

/// Checks a request and turns it into the store's envelope.
fn envelope(request: &pb::EnqueueRequest) -> Result<QueueEnvelope, Status> {
    let env = request
        .envelope
        .as_ref()
        .ok_or_else(|| Status::invalid_argument("missing envelope"))?;
    if env.recipients.is_empty() {
        return Err(Status::invalid_argument("no recipients"));
    }
    if request.message.is_empty() {
        return Err(Status::invalid_argument("empty message"));
    }
    if !env.sender.is_empty() {
        Path::from_mailbox(&env.sender)
            .map_err(|e| Status::invalid_argument(format!("sender: {e}")))?;
    }
    single_line("env_id", &env.env_id)?;
    single_line("authenticated_as", &request.authenticated_as)?;
    single_line("client_ip", &request.client_ip)?;
    let mut recipients = Vec::with_capacity(env.recipients.len());
    for r in &env.recipients {
        Path::from_mailbox(&r.address)
            .map_err(|e| Status::invalid_argument(format!("recipient {:?}: {e}", r.address)))?;
        single_line("orcpt", &r.orcpt)?;
        recipients.push(QueueRecipient {
            address: r.address.clone(),
            orcpt: (!r.orcpt.is_empty()).then(|| r.orcpt.clone()),
            notify: notify_text(&r.notify),
        });
    }
    let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_string());
    Ok(QueueEnvelope {
        sender: env.sender.clone(),
        recipients,
        env_id: non_empty(&env.env_id),
        ret: match pb::DsnReturn::try_from(env.ret).unwrap_or(pb::DsnReturn::Unspecified) {
            pb::DsnReturn::Full => Some("FULL".into()),
            pb::DsnReturn::Headers => Some("HDRS".into()),
            pb::DsnReturn::Unspecified => None,
        },
        body_type: match pb::BodyType::try_from(env.body).unwrap_or(pb::BodyType::Unspecified) {
            pb::BodyType::BodyType7bit => Some("7BIT".into()),
            pb::BodyType::BodyType8bitmime => Some("8BITMIME".into()),
            pb::BodyType::Binarymime => Some("BINARYMIME".into()),
            pb::BodyType::Unspecified => None,
        },
        smtputf8: env.smtputf8,
        requiretls: env.requiretls,
        authenticated_as: non_empty(&request.authenticated_as),
        client_ip: non_empty(&request.client_ip),
        trace_context: mailroom_telemetry::current_traceparent(),
        quarantine: request.quarantine,
    })
}

/// Where an entry's recipients go: whether any is local, whether any is remote.
#[derive(Debug, Clone, Copy, Default)]
struct Destinations {
    local: bool,
    remote: bool,
}

impl QueueService {
    /// Which kinds of recipient the entry has (domain checks come from the
    /// store's cache).
    async fn destinations(
        &self,
        envelope: &mailroom_store::QueueEnvelope,
    ) -> Result<Destinations, StoreError> {
        let mut d = Destinations::default();
        for r in &envelope.recipients {
            // The domain decides (a quoted local part need not be one our
            // accounts could have).
            let domain = r.address.rsplit_once('@').map_or("", |(_, d)| d);
            let ours = match mailroom_address::Domain::parse(domain) {
                Ok(d) => self.store.serves_domain(&d).await?,
                Err(e) => return Err(StoreError::InvalidArgument(format!("{}: {e}", r.address))),
            };
            if ours {
                d.local = true;
            } else {
                d.remote = true;
            }
        }
        Ok(d)
    }

    /// Who may enqueue what: a caller must have proved the MSA or inbound
    /// role, and a remote recipient (relaying) is taken only from the MSA
    /// for a message of an authenticated submission. The SMTP sessions
    /// check the same before RCPT is accepted; this is the second line.
    fn authorise(
        caller: Option<Role>,
        request: &pb::EnqueueRequest,
        to: Destinations,
    ) -> Result<Role, Status> {
        let role = caller.ok_or_else(|| {
            Status::unauthenticated("a valid internal service credential is required")
        })?;
        if !ENQUEUE_ROLES.contains(&role) {
            return Err(Status::permission_denied(format!(
                "the {role} role may not enqueue"
            )));
        }
        if to.remote && (role != Role::Msa || request.authenticated_as.is_empty()) {
            tracing::warn!(%role, client_ip = %request.client_ip, "enqueue for a remote recipient refused: relaying denied");
            return Err(Status::permission_denied(
                "relaying denied: only authenticated submissions may have remote recipients",
            ));
        }
        Ok(role)
    }
}

#[tonic::async_trait]
impl Queue for QueueService {
    async fn enqueue(
        &self,
        request: Request<pb::EnqueueRequest>,
    ) -> Result<Response<pb::EnqueueResponse>, Status> {
        let _timer =
            mailroom_telemetry::metrics_endpoint::Timer::start("mailroom_enqueue_duration_seconds");
        let caller = Caller::of(&request);
        if caller.is_none() {
            return Err(Status::unauthenticated(
                "a valid internal service credential is required",
            ));
        }
        let request = request.into_inner();
        let envelope = envelope(&request)?;
        let to = match self.destinations(&envelope).await {
            Ok(to) => to,
            Err(StoreError::InvalidArgument(m)) => return Err(Status::invalid_argument(m)),
            Err(e) => {
                tracing::error!(error = %e, "enqueue: cannot check recipient domains");
                return Err(Status::unavailable(
                    "the queue is unavailable; try again later",
                ));
            }
        };
        let role = Self::authorise(caller, &request, to)?;
        // Mail of an authenticated submission leaving for other domains is
        // signed (issue 14); `authorise` let only such mail have remote
        // recipients.
        let message = if to.remote && role == Role::Msa && !request.authenticated_as.is_empty() {
            self.dkim_sign(request.message).await?
        } else {
            request.message
        };
        if to.local
            && !to.remote
            && let Some(mda) = &self.at_acceptance
            && !envelope
                .recipients
                .iter()
                .any(|r| r.notify.as_deref().is_some_and(|n| n.contains("SUCCESS")))
        {
            let recipients: Vec<String> = envelope
                .recipients
                .iter()
                .map(|r| r.address.clone())
                .collect();
            match mda
                .deliver(&envelope.sender, &recipients, &message, envelope.quarantine)
                .await
            {
                Ok(true) => {
                    tracing::info!(
                        caller_role = %role,
                        sender = %envelope.sender,
                        recipients = recipients.len(),
                        size = message.len(),
                        "delivered at acceptance"
                    );
                    metrics::counter!("mailroom_delivery_results_total", "kind" => "local", "result" => "delivered")
                        .increment(recipients.len() as u64);
                    metrics::counter!("mailroom_delivered_at_acceptance_total").increment(1);
                    return Ok(Response::new(pb::EnqueueResponse {
                        queue_id: 0,
                        delivered: true,
                    }));
                }
                Ok(false) => {}
                // Queued below; when the store is down, that fails too and
                // the client is told to try again.
                Err(e) => tracing::warn!(error = %e, "delivery at acceptance failed; queueing"),
            }
        }
        match self
            .store
            .enqueue(&envelope, &message, self.max_age_secs)
            .await
        {
            Ok(queue_id) => {
                tracing::info!(
                    queue_id,
                    caller_role = %role,
                    sender = %envelope.sender,
                    recipients = envelope.recipients.len(),
                    size = message.len(),
                    "queued"
                );
                if to.local {
                    self.wake.local.notify_waiters();
                }
                if to.remote {
                    self.wake.remote.notify_waiters();
                }
                Ok(Response::new(pb::EnqueueResponse {
                    queue_id,
                    delivered: false,
                }))
            }
            Err(StoreError::InvalidArgument(m)) => Err(Status::invalid_argument(m)),
            // The SMTP side turns this into `452 4.3.1` (insufficient
            // system storage) rather than the general `451 4.3.0`.
            Err(StoreError::Full(m)) => {
                tracing::error!(error = %m, "enqueue failed: the store is out of space");
                Err(Status::resource_exhausted(
                    "the queue is out of space; try again later",
                ))
            }
            Err(e) => {
                tracing::error!(error = %e, "enqueue failed");
                Err(Status::unavailable(
                    "the queue is unavailable; try again later",
                ))
            }
        }
    }
}

/// Takes `worker`'s presence in the store before it leases anything
/// (PostgreSQL: a dead worker's leases come back within seconds, see
/// `mailroom_store::Presence`), retrying while the database is away. `None`
/// only when shutdown comes first.
async fn hold_presence(
    store: &Store,
    worker: &str,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Option<mailroom_store::Presence> {
    loop {
        match store.hold_presence(worker).await {
            Ok(p) => return Some(p),
            Err(e) => {
                tracing::warn!(worker, error = %e, "cannot announce the queue worker; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
}
