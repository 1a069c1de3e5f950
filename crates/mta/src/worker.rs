//! The local-delivery worker: drains queued recipients of our own domains
//! into the mailboxes through the MDA's gRPC `Delivery`.
//!
//! Invariants:
//! * a recipient is leased before it is attempted and its result is written
//!   only while the lease is still ours; the worker renews its leases while
//!   it lives, so only a worker that dies loses them, and the recipient is
//!   attempted again when they run out (at-least-once; the MDA's
//!   idempotency turns a repeat into "already delivered");
//! * temporary failures are retried with exponential backoff until the
//!   message expires; permanent failures and expiry are final and owe the
//!   sender a DSN, long deferrals a delay notice, as for relayed mail
//!   (`outcome`, `dsn`); the entry leaves the queue with its last result.
//!
//! Recipients of other domains are the relay's (`relay.rs`: MX lookup,
//! outbound SMTP, delivery status notifications); this worker never takes them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use mailroom_rpc::delivery::delivery_client::DeliveryClient;
use mailroom_rpc::delivery::delivery_server::Delivery;
use mailroom_rpc::delivery::{DeliverRequest, Outcome};
use mailroom_rpc::internal::{AttachCredential, Caller, Credential, Role};
use mailroom_store::{AttemptResult, LeasedRecipient, QueuedMessage, Store};
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tracing::Instrument;

use crate::outcome::{self, Answered, Reporting};
use crate::relay::{RelaySettings, backoff};

/// How long a worker holds a recipient before others may take it over,
/// unless it renews the lease (`mta.lease_secs`; workers renew theirs every
/// third of it while they live).
pub const LEASE_SECS: i64 = 300;
/// Recipients leased per round.
const BATCH: i64 = 100;

/// Attempts of one local-delivery worker in flight at once.
const CONCURRENCY: usize = 8;
/// Finished attempts are recorded once this many wait …
const RECORD_EVERY: usize = CONCURRENCY;
/// … or once the first of them waited this long.
const RECORD_AFTER: Duration = Duration::from_millis(50);

/// The first retry waits this long; each further one twice as long …
pub const FIRST_RETRY_SECS: i64 = 300;
/// … up to this.
pub const MAX_RETRY_SECS: i64 = 4 * 3600;

/// A worker's attempts in flight, and those finished whose results wait to
/// be recorded.
#[derive(Default)]
struct Running {
    tasks: tokio::task::JoinSet<Answered>,
    done: Vec<Answered>,
    /// When the first of `done` finished.
    since: Option<tokio::time::Instant>,
}

impl Running {
    fn finished(&mut self, joined: Result<Answered, tokio::task::JoinError>) {
        match joined {
            Ok(answered) => {
                self.since.get_or_insert_with(tokio::time::Instant::now);
                self.done.push(answered);
            }
            // Its hold dropped with it: the leases are given back.
            Err(e) => tracing::error!(error = %e, "a delivery attempt failed"),
        }
    }
}

/// When to try again after `attempts` failed attempts.
pub fn retry_delay(attempts: u32) -> i64 {
    FIRST_RETRY_SECS
        .saturating_mul(1i64 << attempts.min(16))
        .min(MAX_RETRY_SECS)
}

/// A worker that hands queued local mail to the MDA.
/// Where local recipients are delivered: the MDA's `Delivery` service.
#[derive(Clone)]
pub enum DeliveryHandle {
    /// Over gRPC, when the MDA runs in another process; every call carries
    /// the MTA role's credential.
    Remote(DeliveryClient<InterceptedService<Channel, AttachCredential>>),
    /// The MDA of this process, called directly (same code, no HTTP/2 hop).
    Local(Arc<dyn Delivery>),
}

impl DeliveryHandle {
    /// A gRPC client on `channel`, presenting `credential` (the MTA role's).
    pub fn remote(channel: Channel, credential: Credential) -> Self {
        DeliveryHandle::Remote(
            DeliveryClient::with_interceptor(channel, AttachCredential(credential))
                .max_encoding_message_size(256 << 20),
        )
    }
}

impl std::fmt::Debug for DeliveryHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DeliveryHandle::Remote(_) => "DeliveryHandle::Remote",
            DeliveryHandle::Local(_) => "DeliveryHandle::Local",
        })
    }
}

#[derive(Debug, Clone)]
pub struct LocalDelivery {
    store: Store,
    delivery: DeliveryHandle,
    id: String,
    poll: Duration,
    wake: Arc<crate::QueueWake>,
    lease_secs: i64,
    first_retry_secs: i64,
    reporting: Reporting,
}

impl LocalDelivery {
    /// A worker over `store` delivering through `delivery`; it polls every
    /// `poll` and also wakes when `wake` is notified (a new message in this process).
    pub fn new(
        store: Store,
        delivery: DeliveryHandle,
        poll: Duration,
        wake: Arc<crate::QueueWake>,
    ) -> Self {
        LocalDelivery {
            store,
            delivery,
            id: format!("{}-{:08x}", std::process::id(), rand_id()),
            poll,
            wake,
            lease_secs: LEASE_SECS,
            first_retry_secs: FIRST_RETRY_SECS,
            reporting: Reporting {
                hostname: "localhost".into(),
                max_queue_age_secs: mailroom_store::DEFAULT_MAX_QUEUE_SECS,
                delay_warning_secs: 0,
                reports_success: true,
                dkim_expiry: crate::DKIM_EXPIRY,
            },
        }
    }

    /// Takes the queue settings it shares with the relay: lease length,
    /// first retry delay, and what reports need (host name, their queue
    /// lifetime, the delay-notice age).
    pub fn with_settings(mut self, settings: &RelaySettings) -> Self {
        self.lease_secs = settings.lease_secs.max(1);
        self.first_retry_secs = settings.first_retry_secs;
        self.reporting = Reporting {
            hostname: settings.hostname.clone(),
            max_queue_age_secs: settings.max_queue_age_secs,
            delay_warning_secs: settings.delay_warning_secs,
            reports_success: true,
            dkim_expiry: settings.dkim_expiry,
        };
        self
    }

    /// Runs until `shutdown`; attempts in progress finish first.
    ///
    /// The messages of a lease are loaded a few at a time in one query
    /// ([`outcome::Ahead`]) and delivered up to [`CONCURRENCY`] at a time:
    /// each attempt is a few round trips and a commit, so one at a time
    /// left the database (and the disk's flushes, which PostgreSQL and
    /// SQLite's group commit share between concurrent commits) mostly idle.
    /// The results of attempts that finish together are recorded in one
    /// transaction ([`outcome::record_answered`]): every [`RECORD_EVERY`]
    /// attempts, when nothing else is running, or [`RECORD_AFTER`] after the
    /// first of them finished. A crash before that commit attempts those
    /// messages again, which the MDA's idempotency turns into "already
    /// delivered".
    pub async fn run(self, shutdown: CancellationToken) {
        let this = Arc::new(self);
        let _presence = crate::hold_presence(&this.store, &this.id, &shutdown).await;
        let leases = outcome::Leases::new(this.store.clone(), this.id.clone(), this.lease_secs);
        let renewal = leases.renew();
        let mut running = Running::default();
        loop {
            let leased = match this
                .store
                .lease_local_recipients(&this.id, this.lease_secs, BATCH)
                .await
            {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the queue; retrying");
                    Vec::new()
                }
            };
            if leased.is_empty() {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = this.wake.local.notified() => {}
                    _ = tokio::time::sleep(this.poll) => {}
                }
                continue;
            }
            let mut by_message: BTreeMap<i64, Vec<LeasedRecipient>> = BTreeMap::new();
            for r in leased {
                by_message.entry(r.queue_id).or_default().push(r);
            }
            // Every leased recipient is held (renewed) from now until its
            // attempt ends; those not reached before shutdown are given back.
            let batch: Vec<_> = by_message
                .into_iter()
                .map(|(queue_id, recipients)| {
                    let hold = leases.hold(&recipients);
                    (queue_id, recipients, hold)
                })
                .collect();
            let ids: Vec<i64> = batch.iter().map(|(queue_id, _, _)| *queue_id).collect();
            let mut ahead = outcome::Ahead::default();
            for (queue_id, recipients, hold) in batch {
                if shutdown.is_cancelled() {
                    break; // the remaining holds drop: given back
                }
                while running.tasks.len() >= CONCURRENCY {
                    this.reap(&mut running).await;
                }
                let loaded = ahead.take(&this.store, queue_id, &ids).await;
                let Some((queued, hold)) =
                    outcome::loaded(loaded, queue_id, hold, this.first_retry_secs)
                else {
                    continue;
                };
                let this = this.clone();
                running
                    .tasks
                    .spawn(async move { this.attempt(queue_id, recipients, queued, hold).await });
            }
            // The next lease starts when this one's attempts are recorded: a
            // lease never overlaps recipients still being attempted.
            while !running.tasks.is_empty() {
                this.reap(&mut running).await;
            }
            this.record(&mut running).await;
            if shutdown.is_cancelled() {
                break;
            }
        }
        while !running.tasks.is_empty() {
            this.reap(&mut running).await;
        }
        this.record(&mut running).await;
        drop(renewal);
        leases.release_all().await;
    }

    /// Waits for an attempt to finish (or for the finished ones' recording
    /// to be due), and records the finished ones when it is.
    async fn reap(&self, running: &mut Running) {
        let joined = match running.since {
            Some(since) => tokio::time::timeout_at(since + RECORD_AFTER, running.tasks.join_next())
                .await
                .ok()
                .flatten(),
            None => running.tasks.join_next().await,
        };
        if let Some(joined) = joined {
            running.finished(joined);
        }
        while let Some(joined) = running.tasks.try_join_next() {
            running.finished(joined);
        }
        if running.done.len() >= RECORD_EVERY
            || running.tasks.is_empty()
            || running.since.is_some_and(|t| t.elapsed() >= RECORD_AFTER)
        {
            self.record(running).await;
        }
    }

    /// Records the finished attempts' results in one transaction.
    async fn record(&self, running: &mut Running) {
        outcome::record_answered(
            &self.store,
            &self.id,
            &mut running.done,
            &self.reporting,
            &self.wake,
        )
        .await;
        running.since = None;
    }

    /// One delivery attempt for the leased recipients of one message: its
    /// results, with the hold on their leases, for [`LocalDelivery::record`]
    /// (a task that panics drops its hold, and the leases are given back).
    async fn attempt(
        &self,
        queue_id: i64,
        recipients: Vec<LeasedRecipient>,
        queued: QueuedMessage,
        hold: outcome::Hold,
    ) -> Answered {
        let span = tracing::info_span!(
            "mta.local_delivery",
            queue_id,
            recipients = recipients.len(),
            outcome = tracing::field::Empty,
            trace_id = tracing::field::Empty
        );
        if let Some(tp) = &queued.envelope.trace_context {
            mailroom_telemetry::continue_trace(&span, tp);
        }
        let results = async {
            let expires_at = queued.expires_at;
            let mut request = tonic::Request::new(DeliverRequest {
                queue_id,
                sender: queued.envelope.sender.clone(),
                recipients: recipients.iter().map(|r| r.address.clone()).collect(),
                message: queued.message.clone(),
                // Authentication-Results went on top of the message when
                // it was received (crates/sender-auth).
                authentication_results: String::new(),
                quarantine: queued.envelope.quarantine,
            });
            mailroom_telemetry::inject(request.metadata_mut());
            let now = outcome::unix_now();
            let defer = |r: &LeasedRecipient, response: String| {
                if now >= expires_at {
                    AttemptResult::Failed { response: format!("4.4.7 message expired in the queue; last error: {response}") }
                } else {
                    AttemptResult::Deferred { next_attempt_at: now + backoff(self.first_retry_secs, r.attempts), response }
                }
            };
            let delivered = match &self.delivery {
                DeliveryHandle::Remote(client) => client.clone().deliver(request).await,
                DeliveryHandle::Local(mda) => {
                    Caller::attach(&mut request, Role::Mta);
                    mda.deliver(request).await
                }
            };
            let results: Vec<AttemptResult> = match delivered {
                Ok(response) => {
                    let outcomes = response.into_inner().outcomes;
                    let mut results = Vec::with_capacity(recipients.len());
                    for (r, o) in recipients.iter().zip(outcomes.iter().map(Some).chain(std::iter::repeat(None))) {
                        results.push(match o {
                            Some(o) if o.outcome == Outcome::Delivered as i32 => {
                                if o.remote_targets.is_empty() {
                                    AttemptResult::Delivered
                                } else {
                                    // The forwarded copies are queued before the
                                    // original counts as delivered: when that fails
                                    // the original is retried (the MDA stores nothing
                                    // twice and names the forwards again).
                                    match self.store.add_queue_recipients(queue_id, &o.remote_targets).await {
                                        Ok(()) => {
                                            self.wake.remote.notify_waiters();
                                            AttemptResult::Delivered
                                        }
                                        Err(e) => {
                                            tracing::error!(error = %e, "cannot queue forwarded recipients; the delivery will be retried");
                                            defer(r, "4.3.0 cannot queue the forwarded copies; will retry".into())
                                        }
                                    }
                                }
                            }
                            Some(o) if o.outcome == Outcome::PermanentFailure as i32 => {
                                AttemptResult::Failed { response: o.reason.clone() }
                            }
                            Some(o) => defer(r, o.reason.clone()),
                            None => defer(r, "4.3.0 no outcome from the MDA".into()),
                        });
                    }
                    results
                }
                Err(status) => {
                    tracing::warn!(code = ?status.code(), error = %status.message(), "the MDA is unavailable");
                    recipients
                        .iter()
                        .map(|r| defer(r, format!("4.3.0 delivery service unavailable: {}", status.message())))
                        .collect()
                }
            };
            for (r, result) in recipients.iter().zip(&results) {
                tracing::info!(recipient = %r.address, ?result, "delivery attempt");
            }
            tracing::Span::current().record("outcome", outcome::summary(&results));
            results
        }
        .instrument(span)
        .await;
        Answered {
            queue_id,
            queued,
            recipients,
            results,
            hold,
        }
    }
}

fn rand_id() -> u32 {
    // Distinguishes workers of one process; no security role.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    nanos ^ std::process::id().rotate_left(16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_up_to_the_cap() {
        assert_eq!(retry_delay(0), 300);
        assert_eq!(retry_delay(1), 600);
        assert_eq!(retry_delay(3), 2400);
        assert_eq!(retry_delay(10), MAX_RETRY_SECS);
        assert_eq!(retry_delay(u32::MAX), MAX_RETRY_SECS);
    }
}
