//! The relay worker: drains queued recipients of *remote* domains to their
//! mail exchangers over SMTP.
//!
//! Invariants:
//! * a recipient is leased before it is attempted; the whole attempt
//!   (DNS, every MX tried, every session) is bounded to finish well inside
//!   the lease, so a result is only written while the lease is ours; a
//!   worker that dies loses its lease and the recipient is attempted again
//!   (at-least-once: a peer that took the message but whose 250 we never
//!   read may receive it twice, never zero times);
//! * the recipients of one message at one domain travel in one SMTP
//!   transaction (RFC 5321 §3.3);
//! * MX hosts are tried in preference order, each of their addresses in
//!   turn, until one session gives per-recipient answers (RFC 5321 §5.1);
//! * temporary failures back off exponentially until the message expires;
//!   then, and on every permanent failure, the recipient is final and its
//!   sender gets one RFC 3464 report per message and attempt (see `dsn`),
//!   queued only after the result was recorded under our lease, so a lost
//!   lease never produces a second report.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mailroom_store::{AttemptResult, LeasedRecipient, QueueEnvelope, Store};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::client::{self, ClientSettings, Envelope, HostError, OutRecipient, Outcome, Timeouts};
use crate::dsn::{self, FailedRecipient};
use crate::route::{RouteError, Router};
use crate::worker::{LEASE_SECS, MAX_RETRY_SECS};

/// Recipients leased per round.
const BATCH: i64 = 100;
/// Destinations (message + domain) attempted at once by one worker.
const CONCURRENT_DESTINATIONS: usize = 16;

/// What the relay needs from the configuration (`[server]`, `[mta]`).
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// Our name in EHLO and in DSNs (`server.hostname`).
    pub hostname: String,
    /// DNS servers; empty for the system resolver (`mta.dns_servers`).
    pub dns_servers: Vec<SocketAddr>,
    /// The port of remote MX hosts (`mta.outbound_port`, 25).
    pub outbound_port: u16,
    /// Time limits of each session.
    pub timeouts: Timeouts,
    /// The first retry delay in seconds (`mta.first_retry_secs`).
    pub first_retry_secs: i64,
    /// How long a DSN may stay queued (`mta.max_queue_age_secs`).
    pub max_queue_age_secs: i64,
}

/// The delay before retry number `attempts + 1`: `first` doubled per
/// earlier attempt, capped at [`MAX_RETRY_SECS`], never below one second
/// (a zero delay would spin on a server that keeps answering 4xx).
pub fn backoff(first: i64, attempts: u32) -> i64 {
    first
        .max(1)
        .saturating_mul(1i64 << attempts.min(16))
        .min(MAX_RETRY_SECS.max(first))
}

/// A worker that relays queued mail to remote domains.
#[derive(Debug, Clone)]
pub struct Relay {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Store,
    router: Router,
    client: ClientSettings,
    settings: RelaySettings,
    id: String,
    poll: Duration,
    wake: Arc<Notify>,
    lease_secs: i64,
    /// The longest one attempt may take; the lease is a minute longer, so
    /// an attempt's result is always written under its own lease.
    attempt_budget: Duration,
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The routing domain of an address, as the store computes it.
fn domain_of(address: &str) -> String {
    let domain = address.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
    mailroom_address::Domain::parse(domain)
        .map(|d| d.to_string())
        .unwrap_or_else(|_| domain.to_lowercase())
}

impl Relay {
    /// A relay over `store`; it polls every `poll` and also wakes when
    /// `wake` is notified (a new message in this process). Fails when the
    /// DNS resolver cannot be set up.
    pub fn new(
        store: Store,
        settings: RelaySettings,
        poll: Duration,
        wake: Arc<Notify>,
    ) -> Result<Relay, String> {
        let router = Router::new(&settings.dns_servers)?;
        let client = ClientSettings::new(settings.hostname.clone(), settings.timeouts.clone());
        let t = &settings.timeouts;
        // One attempt may take as long as one slow session (connect, ten
        // command replies, the end of the data); whatever MX hosts remain
        // when it is spent are tried next time. The lease outlives it by a
        // minute, so the result is always recorded under our lease.
        let attempt_budget = t.connect + t.data_end + t.command * 10;
        let lease_secs = LEASE_SECS.max(
            i64::try_from(attempt_budget.as_secs())
                .unwrap_or(i64::MAX / 4)
                .saturating_add(60),
        );
        Ok(Relay {
            inner: Arc::new(Inner {
                store,
                router,
                client,
                settings,
                id: format!("relay-{}-{:08x}", std::process::id(), rand::random::<u32>()),
                poll,
                wake,
                lease_secs,
                attempt_budget,
            }),
        })
    }

    /// Runs until `shutdown`; attempts in progress finish first.
    pub async fn run(self, shutdown: CancellationToken) {
        let slots = Arc::new(Semaphore::new(CONCURRENT_DESTINATIONS));
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            while tasks.try_join_next().is_some() {}
            let free = slots.available_permits();
            let leased = if free == 0 {
                Vec::new()
            } else {
                match self
                    .inner
                    .store
                    .lease_remote_recipients(&self.inner.id, self.inner.lease_secs, BATCH)
                    .await
                {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the queue; retrying");
                        Vec::new()
                    }
                }
            };
            if leased.is_empty() {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = self.inner.wake.notified() => {}
                    _ = tokio::time::sleep(self.inner.poll) => {}
                    Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                }
                continue;
            }
            // Leased rows come ordered by message and domain: cut them into
            // destinations, keeping that order.
            let mut groups: Vec<((i64, String), Vec<LeasedRecipient>)> = Vec::new();
            for r in leased {
                let key = (r.queue_id, domain_of(&r.address));
                match groups.last_mut() {
                    Some((k, v)) if *k == key => v.push(r),
                    _ => groups.push((key, vec![r])),
                }
            }
            for ((queue_id, domain), recipients) in groups {
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    break;
                };
                let inner = self.inner.clone();
                tasks.spawn(async move {
                    inner.attempt(queue_id, &domain, recipients).await;
                    drop(permit);
                });
            }
            if shutdown.is_cancelled() {
                break;
            }
        }
        while tasks.join_next().await.is_some() {}
    }
}

impl Inner {
    /// One delivery attempt for the leased recipients of one message at one domain.
    async fn attempt(&self, queue_id: i64, domain: &str, recipients: Vec<LeasedRecipient>) {
        let (envelope, message, expires_at) = match self.store.queued_for_attempt(queue_id).await {
            Ok(Some(m)) => m,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(queue_id, error = %e, "cannot load a queued message");
                return;
            }
        };
        let params: HashMap<i64, mailroom_store::QueueRecipient> = self
            .store
            .queue_recipient_params(queue_id)
            .await
            .map(|v| v.into_iter().collect())
            .unwrap_or_default();
        let span =
            tracing::info_span!("mta.relay", queue_id, domain, recipients = recipients.len());
        if let Some(tp) = &envelope.trace_context {
            mailroom_telemetry::continue_trace(&span, tp);
        }
        async {
            let out: Vec<OutRecipient> = recipients
                .iter()
                .map(|r| {
                    let p = params.get(&r.id);
                    OutRecipient {
                        address: r.address.clone(),
                        orcpt: p.and_then(|p| p.orcpt.clone()),
                        notify: p.and_then(|p| p.notify.clone()),
                    }
                })
                .collect();
            let outcomes = match tokio::time::timeout(
                self.attempt_budget,
                self.deliver(domain, &envelope, &message, &out),
            )
            .await
            {
                Ok(o) => o,
                Err(_) => vec![
                    Outcome::Deferred(format!("4.4.7 delivery to {domain} took too long"));
                    out.len()
                ],
            };
            let now = unix_now();
            let mut failed = Vec::new();
            for ((r, o), p) in recipients.iter().zip(&outcomes).zip(&out) {
                let result = match o {
                    Outcome::Delivered(_) => AttemptResult::Delivered,
                    Outcome::Failed(response) => AttemptResult::Failed {
                        response: response.clone(),
                    },
                    Outcome::Deferred(response) if now >= expires_at => AttemptResult::Failed {
                        response: format!(
                            "4.4.7 message expired in the queue; last error: {response}"
                        ),
                    },
                    Outcome::Deferred(response) => AttemptResult::Deferred {
                        next_attempt_at: now + backoff(self.settings.first_retry_secs, r.attempts),
                        response: response.clone(),
                    },
                };
                tracing::info!(recipient = %r.address, response = o.text(), ?result, "relay attempt");
                match self.store.finish_attempt(&self.id, r.id, &result).await {
                    Ok(true) => {
                        if let AttemptResult::Failed { response } = result {
                            failed.push(FailedRecipient {
                                address: r.address.clone(),
                                orcpt: p.orcpt.clone(),
                                notify: p.notify.clone(),
                                response,
                            });
                        }
                    }
                    Ok(false) => tracing::warn!(recipient = %r.address, "lease lost before the result was recorded"),
                    Err(e) => tracing::error!(error = %e, "cannot record a delivery result; it will be retried"),
                }
            }
            if !failed.is_empty() {
                self.report(queue_id, &envelope, &message, &failed).await;
            }
        }
        .instrument(span)
        .await
    }

    /// Routes and delivers; one outcome per recipient.
    async fn deliver(
        &self,
        domain: &str,
        envelope: &QueueEnvelope,
        message: &[u8],
        recipients: &[OutRecipient],
    ) -> Vec<Outcome> {
        let all = |o: Outcome| vec![o; recipients.len()];
        let hosts = match self.router.mx_hosts(domain).await {
            Ok(h) => h,
            Err(RouteError::Permanent(why)) => return all(Outcome::Failed(why)),
            Err(RouteError::Temporary(why)) => return all(Outcome::Deferred(why)),
        };
        let env = Envelope {
            sender: &envelope.sender,
            recipients,
            env_id: envelope.env_id.as_deref(),
            ret: envelope.ret.as_deref(),
            body_type: envelope.body_type.as_deref(),
            smtputf8: envelope.smtputf8,
            requiretls: envelope.requiretls,
            message,
        };
        let mut last: Option<HostError> = None;
        for host in &hosts {
            let addresses = match self.router.addresses(&host.name).await {
                Ok(a) => a,
                Err(e) => {
                    tracing::info!(mx = %host.name, error = %e, "MX host has no usable address");
                    // An MX whose name does not resolve is the domain's
                    // misconfiguration, worth retrying later (as Postfix does).
                    last = Some(HostError {
                        reason: match e {
                            RouteError::Permanent(w) | RouteError::Temporary(w) => {
                                format!("4.4.4 {}", w.split_once(' ').map(|(_, r)| r).unwrap_or(&w))
                            }
                        },
                        permanent: false,
                    });
                    continue;
                }
            };
            for ip in addresses {
                let addr = SocketAddr::new(ip, self.settings.outbound_port);
                match client::deliver(&self.client, addr, &host.name, &env).await {
                    Ok(result) => {
                        tracing::info!(mx = %host.name, %addr, tls = ?result.tls, "SMTP session done");
                        return result.outcomes;
                    }
                    Err(e) => {
                        tracing::info!(mx = %host.name, %addr, error = %e.reason, "MX attempt failed; trying the next");
                        last = Some(e);
                    }
                }
            }
        }
        match last {
            Some(HostError {
                reason,
                permanent: true,
            }) => all(Outcome::Failed(reason)),
            Some(HostError { reason, .. }) => all(Outcome::Deferred(reason)),
            None => all(Outcome::Deferred(format!(
                "4.4.4 no mail exchanger of {domain} could be reached"
            ))),
        }
    }

    /// Queues one RFC 3464 report to the sender for `failed`, if due.
    async fn report(
        &self,
        queue_id: i64,
        envelope: &QueueEnvelope,
        message: &[u8],
        failed: &[FailedRecipient],
    ) {
        let chosen = dsn::recipients_to_report(envelope, failed);
        if chosen.is_empty() {
            return;
        }
        let report = dsn::render(
            &self.settings.hostname,
            envelope,
            message,
            &chosen,
            unix_now(),
            rand::random(),
        );
        let dsn_envelope = dsn::envelope_for(envelope, &report);
        match self
            .store
            .enqueue(&dsn_envelope, &report, self.settings.max_queue_age_secs)
            .await
        {
            Ok(dsn_id) => {
                tracing::info!(queue_id, dsn_id, to = %envelope.sender, recipients = chosen.len(), "delivery status notification queued");
                self.wake.notify_waiters();
            }
            Err(e) => {
                tracing::error!(queue_id, error = %e, "cannot queue a delivery status notification")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_first_delay_up_to_the_cap() {
        assert_eq!(backoff(300, 0), 300);
        assert_eq!(backoff(300, 2), 1200);
        assert_eq!(backoff(300, 30), MAX_RETRY_SECS);
        assert_eq!(backoff(0, 0), 1, "never a zero delay");
    }

    #[test]
    fn domains_group_like_the_store_routes_them() {
        assert_eq!(domain_of("a@Example.ORG"), "example.org");
        assert_eq!(domain_of("a@Bücher.example"), "xn--bcher-kva.example");
    }
}
