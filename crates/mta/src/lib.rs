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
mod outcome;
mod relay;
pub mod route;
mod worker;

pub use client::Timeouts;
pub use relay::{
    DELAY_WARNING_SECS, DestinationLimiter, DestinationPermit, MAX_CONNECTIONS_PER_DESTINATION,
    Relay, RelaySettings, backoff,
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

/// Builds the service; `max_age_secs` is how long a message may stay queued;
/// `wake` is signalled after each enqueue (the workers of this process);
/// callers must prove the MSA or inbound role under `secret`.
pub fn service(
    store: Store,
    max_age_secs: i64,
    wake: Arc<QueueWake>,
    secret: InternalSecret,
) -> QueueGrpc {
    InterceptedService::new(
        QueueServer::new(QueueService::new(store, max_age_secs, wake))
            .max_decoding_message_size(MAX_MESSAGE_BYTES),
        RequireRole::new(secret, "Queue.Enqueue", ENQUEUE_ROLES),
    )
}

impl QueueService {
    /// The Queue implementation, for [`service`] or for callers in the same
    /// process that call it directly (`Queue::enqueue`), skipping gRPC.
    pub fn new(store: Store, max_age_secs: i64, wake: Arc<QueueWake>) -> Self {
        QueueService {
            store,
            max_age_secs,
            wake,
        }
    }
}

/// The Queue implementation over the store.
#[derive(Debug, Clone)]
pub struct QueueService {
    store: Store,
    max_age_secs: i64,
    wake: Arc<QueueWake>,
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
        match self
            .store
            .enqueue(&envelope, &request.message, self.max_age_secs)
            .await
        {
            Ok(queue_id) => {
                tracing::info!(
                    queue_id,
                    caller_role = %role,
                    sender = %envelope.sender,
                    recipients = envelope.recipients.len(),
                    size = request.message.len(),
                    "queued"
                );
                if to.local {
                    self.wake.local.notify_waiters();
                }
                if to.remote {
                    self.wake.remote.notify_waiters();
                }
                Ok(Response::new(pb::EnqueueResponse { queue_id }))
            }
            Err(StoreError::InvalidArgument(m)) => Err(Status::invalid_argument(m)),
            Err(e) => {
                tracing::error!(error = %e, "enqueue failed");
                Err(Status::unavailable(
                    "the queue is unavailable; try again later",
                ))
            }
        }
    }
}
