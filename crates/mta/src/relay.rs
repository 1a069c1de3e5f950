//! The relay worker: drains queued recipients of *remote* domains to their
//! mail exchangers over SMTP.
//!
//! Invariants:
//! * a recipient is leased before it is attempted; the worker renews its
//!   leases while it lives (every third of `mta.lease_secs`), and a result
//!   is only written while the lease is ours; a worker that dies stops
//!   renewing, and its recipients are attempted again once its leases run
//!   out (at-least-once: a peer that took the message but whose 250 we never
//!   read may receive it twice, never zero times);
//! * the whole attempt (DNS, every MX tried, every session) is bounded by
//!   the session timeouts, so a stuck peer cannot hold a lease forever;
//! * the recipients of one message at one domain travel in one SMTP
//!   transaction (RFC 5321 §3.3);
//! * **per-destination limit**: at most `mta.max_connections_per_destination`
//!   sessions run at once, per process, for one destination. The destination
//!   is the recipient's routing domain, as Postfix's default (per next-hop
//!   domain, `default_destination_concurrency_limit = 20`): it is known
//!   before any DNS lookup, so the limit is applied when leasing. The worker
//!   only leases as many messages per domain as it may start
//!   ([`DestinationCaps`]); the rest stay due and unleased in the queue,
//!   waiting their turn (or another process's), instead of failing or
//!   holding a lease while they wait. Domains served by the same MX hosts
//!   each have their own limit;
//! * MX hosts are tried in preference order, each of their addresses in
//!   turn, until one session gives per-recipient answers (RFC 5321 §5.1);
//! * temporary failures back off exponentially until the message expires;
//!   then, and on every permanent failure, the recipient is final and its
//!   sender gets one RFC 3464 report per message and attempt; a recipient
//!   deferred for longer than `mta.delay_warning_secs` gets one delay notice
//!   (see `outcome` and `dsn`). Reports are queued in the transaction that
//!   records the results, and only for the results recorded under our
//!   lease, so a lost lease never produces a second report.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mailroom_store::{AttemptResult, DestinationCaps, LeasedRecipient, QueueEnvelope, Store};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::client::{self, ClientSettings, Envelope, HostError, OutRecipient, Outcome, Timeouts};
use crate::outcome::{self, Reporting};
use crate::route::{RouteError, Router};
use crate::worker::MAX_RETRY_SECS;

/// Recipients leased per round.
const BATCH: i64 = 100;
/// Destinations (message + domain) attempted at once by one worker.
const CONCURRENT_DESTINATIONS: usize = 16;
/// The default of `mta.max_connections_per_destination`.
pub const MAX_CONNECTIONS_PER_DESTINATION: usize = 20;
/// The default of `mta.delay_warning_secs`.
pub const DELAY_WARNING_SECS: i64 = 4 * 3600;

/// What the relay needs from the configuration (`[server]`, `[mta]`); the
/// local-delivery worker takes its queue settings from it too.
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
    /// How long a worker's lease on a recipient lasts unless renewed
    /// (`mta.lease_secs`).
    pub lease_secs: i64,
    /// Age of a message after which a deferred recipient's sender gets a
    /// delay notice; 0 for never (`mta.delay_warning_secs`).
    pub delay_warning_secs: i64,
    /// Concurrent sessions per destination domain (`mta.max_connections_per_destination`).
    pub max_connections_per_destination: usize,
    /// `x=` of the DKIM signatures of our reports (`sender_auth.dkim_expiry_secs`).
    pub dkim_expiry: std::time::Duration,
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

/// Sessions in progress per destination domain, for one process.
#[derive(Debug)]
pub struct DestinationLimiter {
    limit: usize,
    active: Mutex<HashMap<String, usize>>,
}

/// One session's place in its destination's limit; given back on drop.
#[derive(Debug)]
pub struct DestinationPermit {
    limiter: Arc<DestinationLimiter>,
    domain: String,
}

impl DestinationLimiter {
    /// A limiter allowing `limit` (at least 1) sessions per destination.
    pub fn new(limit: usize) -> Arc<DestinationLimiter> {
        Arc::new(DestinationLimiter {
            limit: limit.max(1),
            active: Mutex::new(HashMap::new()),
        })
    }

    fn active(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.active.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A permit for one more session to `domain`, unless it is at its limit.
    pub fn try_acquire(self: &Arc<Self>, domain: &str) -> Option<DestinationPermit> {
        let mut active = self.active();
        let n = active.entry(domain.to_string()).or_insert(0);
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(DestinationPermit {
            limiter: self.clone(),
            domain: domain.to_string(),
        })
    }

    /// How many more messages each domain may start now: the limit for
    /// domains without sessions, what is left of it for the others.
    pub fn caps(&self) -> DestinationCaps {
        let active = self.active();
        DestinationCaps {
            default: self.limit as i64,
            domains: active
                .iter()
                .map(|(d, n)| (d.clone(), self.limit.saturating_sub(*n) as i64))
                .collect(),
        }
    }
}

impl Drop for DestinationPermit {
    fn drop(&mut self) {
        let mut active = self.limiter.active();
        if let Some(n) = active.get_mut(&self.domain) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                active.remove(&self.domain);
            }
        }
    }
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
    reporting: Reporting,
    id: String,
    poll: Duration,
    wake: Arc<crate::QueueWake>,
    lease_secs: i64,
    limiter: Arc<DestinationLimiter>,
    /// The longest one attempt may take; whatever MX hosts remain when it
    /// is spent are tried next time.
    attempt_budget: Duration,
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
        wake: Arc<crate::QueueWake>,
    ) -> Result<Relay, String> {
        let router = Router::new(&settings.dns_servers)?;
        let client = ClientSettings::new(settings.hostname.clone(), settings.timeouts.clone());
        let t = &settings.timeouts;
        // One attempt may take as long as one slow session (connect, ten
        // command replies, the end of the data).
        let attempt_budget = t.connect + t.data_end + t.command * 10;
        let reporting = Reporting {
            hostname: settings.hostname.clone(),
            max_queue_age_secs: settings.max_queue_age_secs,
            delay_warning_secs: settings.delay_warning_secs,
            reports_success: false,
            dkim_expiry: settings.dkim_expiry,
        };
        Ok(Relay {
            inner: Arc::new(Inner {
                store,
                router,
                client,
                reporting,
                id: format!("relay-{}-{:08x}", std::process::id(), rand::random::<u32>()),
                poll,
                wake,
                lease_secs: settings.lease_secs.max(1),
                limiter: DestinationLimiter::new(settings.max_connections_per_destination),
                settings,
                attempt_budget,
            }),
        })
    }

    /// Runs until `shutdown`; attempts in progress finish first.
    pub async fn run(self, shutdown: CancellationToken) {
        let inner = &self.inner;
        let _presence = crate::hold_presence(&inner.store, &inner.id, &shutdown).await;
        let leases = outcome::Leases::new(inner.store.clone(), inner.id.clone(), inner.lease_secs);
        let renewal = leases.renew();
        let slots = Arc::new(Semaphore::new(CONCURRENT_DESTINATIONS));
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            while tasks.try_join_next().is_some() {}
            let free = slots.available_permits();
            let leased = if free == 0 {
                Vec::new()
            } else {
                match inner
                    .store
                    .lease_remote_recipients(
                        &inner.id,
                        inner.lease_secs,
                        BATCH,
                        &inner.limiter.caps(),
                    )
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
                    _ = inner.wake.remote.notified() => {}
                    _ = tokio::time::sleep(inner.poll) => {}
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
            // Every leased recipient is held (renewed) from now until its
            // attempt ends, also while it waits for a slot.
            let groups: Vec<_> = groups
                .into_iter()
                .map(|(key, recipients)| {
                    let hold = leases.hold(&recipients);
                    (key, recipients, hold)
                })
                .collect();
            for ((queue_id, domain), recipients, hold) in groups {
                // The lease was capped by the limiter's counts and only this
                // loop takes permits, so one is free; should it not be, the
                // recipients go back to the queue rather than wait leased.
                let Some(destination) = inner.limiter.try_acquire(&domain) else {
                    hold.give_back_in(0);
                    continue;
                };
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    break;
                };
                let inner = inner.clone();
                // A panic inside drops the hold: the leases are given back.
                tasks.spawn(async move {
                    inner.attempt(queue_id, &domain, recipients, hold).await;
                    drop(destination);
                    drop(slot);
                });
            }
            if shutdown.is_cancelled() {
                break;
            }
        }
        while tasks.join_next().await.is_some() {}
        drop(renewal);
        // Nothing is in progress: anything still leased goes back at once.
        leases.release_all().await;
    }
}

impl Inner {
    /// One delivery attempt for the leased recipients of one message at one domain.
    /// Every way out either records the results or gives the leases back.
    async fn attempt(
        &self,
        queue_id: i64,
        domain: &str,
        recipients: Vec<LeasedRecipient>,
        hold: outcome::Hold,
    ) {
        let queued = match self.store.queued_for_attempt(queue_id).await {
            Ok(Some(m)) => m,
            Ok(None) => {
                // Gone (dropped meanwhile: nothing to give back) or its
                // content is missing: tried again later, not in a loop.
                tracing::error!(
                    queue_id,
                    "a queued message could not be found with its content"
                );
                hold.give_back_in(self.settings.first_retry_secs);
                return;
            }
            Err(e) => {
                tracing::warn!(queue_id, error = %e, "cannot load a queued message; it will be retried");
                return; // `hold` drops: given back
            }
        };
        let span = tracing::info_span!(
            "mta.relay",
            queue_id,
            domain,
            recipients = recipients.len(),
            outcome = tracing::field::Empty,
            trace_id = tracing::field::Empty
        );
        if let Some(tp) = &queued.envelope.trace_context {
            mailroom_telemetry::continue_trace(&span, tp);
        }
        async {
            let out: Vec<OutRecipient> = recipients
                .iter()
                .map(|r| OutRecipient {
                    address: r.address.clone(),
                    orcpt: r.orcpt.clone(),
                    notify: r.notify.clone(),
                })
                .collect();
            let outcomes = match tokio::time::timeout(
                self.attempt_budget,
                self.deliver(domain, &queued.envelope, &queued.message, &out),
            )
            .await
            {
                Ok(o) => o,
                Err(_) => vec![
                    Outcome::Deferred(format!("4.4.7 delivery to {domain} took too long"));
                    out.len()
                ],
            };
            let now = outcome::unix_now();
            let mut results = Vec::with_capacity(recipients.len());
            for (r, o) in recipients.iter().zip(&outcomes) {
                let result = match o {
                    Outcome::Delivered(_) => AttemptResult::Delivered,
                    Outcome::Failed(response) => AttemptResult::Failed {
                        response: response.clone(),
                    },
                    Outcome::Deferred(response) if now >= queued.expires_at => {
                        AttemptResult::Failed {
                            response: format!(
                                "4.4.7 message expired in the queue; last error: {response}"
                            ),
                        }
                    }
                    Outcome::Deferred(response) => AttemptResult::Deferred {
                        next_attempt_at: now + backoff(self.settings.first_retry_secs, r.attempts),
                        response: response.clone(),
                    },
                };
                tracing::info!(recipient = %r.address, response = o.text(), ?result, "relay attempt");
                results.push(result);
            }
            tracing::Span::current().record("outcome", outcome::summary(&results));
            if outcome::record(
                &self.store,
                &self.id,
                queue_id,
                &queued,
                &recipients,
                results,
                &self.reporting,
                &self.wake,
            )
            .await
            {
                hold.settle();
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
        let lookup = tracing::info_span!("mta.mx_lookup", domain, outcome = tracing::field::Empty);
        let hosts = self
            .router
            .mx_hosts(domain)
            .instrument(lookup.clone())
            .await;
        lookup.record("outcome", if hosts.is_ok() { "found" } else { "failed" });
        drop(lookup);
        let hosts = match hosts {
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
                let session = tracing::info_span!(
                    "smtp.outbound",
                    otel.kind = "client",
                    mx = %host.name,
                    %addr,
                    outcome = tracing::field::Empty
                );
                let delivered = client::deliver(&self.client, addr, &host.name, &env)
                    .instrument(session.clone())
                    .await;
                session.record(
                    "outcome",
                    if delivered.is_ok() {
                        "completed"
                    } else {
                        "failed"
                    },
                );
                drop(session);
                match delivered {
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
    fn the_destination_limit_counts_sessions_per_domain() {
        let limiter = DestinationLimiter::new(2);
        let a1 = limiter.try_acquire("a.test").unwrap();
        let _a2 = limiter.try_acquire("a.test").unwrap();
        assert!(limiter.try_acquire("a.test").is_none(), "at the limit");
        let _b = limiter
            .try_acquire("b.test")
            .expect("another domain has its own");
        let caps = limiter.caps();
        assert_eq!(caps.default, 2);
        let mut domains = caps.domains.clone();
        domains.sort();
        assert_eq!(domains, [("a.test".into(), 0), ("b.test".into(), 1)]);
        drop(a1);
        assert!(limiter.try_acquire("a.test").is_some(), "a session ended");
        drop(_b);
        assert!(
            limiter.caps().domains.iter().all(|(d, _)| d != "b.test"),
            "idle domains are forgotten"
        );
    }

    #[test]
    fn domains_group_like_the_store_routes_them() {
        assert_eq!(domain_of("a@Example.ORG"), "example.org");
        assert_eq!(domain_of("a@Bücher.example"), "xn--bcher-kva.example");
    }
}
