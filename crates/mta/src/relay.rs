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
//! * **session reuse**: the messages one round leased for one domain are
//!   cut into sessions of at most `SESSION_SHARE` (or
//!   `mta.max_messages_per_session`, when lower) messages, and each such
//!   batch travels over one SMTP session, `RSET` between the transactions
//!   (RFC 5321 §4.1.1.5), pipelined with the next MAIL when the server
//!   offers PIPELINING (RFC 2920). A session carries at most
//!   `mta.max_messages_per_session` messages and is dropped on a broken
//!   connection, a timeout, a 421 or a reply to RSET other than 250. A reply
//!   to one message (a refused recipient, a refused content) is that
//!   message's only; a message the server refuses before any recipient
//!   answer (a limit it announced, MAIL 4xx) is tried alone through every
//!   MX, as before. When a reused session ends cleanly before a message was
//!   taken (RSET refused, closed or 421 before MAIL was accepted), the
//!   message goes on a fresh session, once. When the connection breaks in a
//!   transaction, that message's unanswered recipients and the rest of the
//!   batch are deferred: what was answered stands, what was not is sent
//!   again later (never lost, and never sent twice once answered).
//!   REQUIRETLS messages always get a session of their own. A batch's
//!   messages are loaded a few at a time in one query (`LOAD_AHEAD`
//!   messages, `LOAD_BYTES` of content);
//! * **results of one session, one transaction**: the results of a batch's
//!   messages are recorded together (`Store::finish_attempts_of_entries`),
//!   at the end of the batch or sooner (every `RECORD_EVERY` messages,
//!   `RECORD_BYTES` of content or `RECORD_AFTER`), and only ever after the
//!   remote's final reply for each; a crash before the commit sends those
//!   messages again (a duplicate beats a loss);
//! * **per-destination limit**: at most `mta.max_connections_per_destination`
//!   sessions run at once, per process, for one destination. The destination
//!   is the recipient's routing domain, as Postfix's default (per next-hop
//!   domain, `default_destination_concurrency_limit = 20`): it is known
//!   before any DNS lookup, so the limit is applied when leasing. The worker
//!   only leases as many messages per domain as the sessions it may start
//!   will carry ([`DestinationCaps`]); the rest stay due and unleased in the queue,
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

use crate::client::{
    self, ClientSettings, Envelope, HostError, OutRecipient, Outcome, Sent, Session, Timeouts,
};
use crate::outcome::{self, Ahead, Answered, Reporting};
use crate::route::{RouteError, Router};
use crate::worker::MAX_RETRY_SECS;

/// Recipients leased per round, at most.
const BATCH: i64 = 256;
/// Messages handed to one session per round, at most (fewer when
/// `mta.max_messages_per_session` is lower): enough to spare most
/// connections, few enough that one round's sessions end together.
const SESSION_SHARE: usize = 32;
/// The default of `mta.max_messages_per_session`.
pub const MAX_MESSAGES_PER_SESSION: usize = 100;
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
    /// Messages one SMTP session carries at most (`mta.max_messages_per_session`).
    pub max_messages_per_session: usize,
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

    /// How many more messages each domain may start now, when each session
    /// carries `per_session` of them: the limit's worth for domains without
    /// sessions, what is left of it for the others.
    pub fn caps(&self, per_session: usize) -> DestinationCaps {
        let per_session = per_session.max(1);
        let active = self.active();
        DestinationCaps {
            default: (self.limit * per_session) as i64,
            domains: active
                .iter()
                .map(|(d, n)| {
                    (
                        d.clone(),
                        (self.limit.saturating_sub(*n) * per_session) as i64,
                    )
                })
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
    /// `mta.max_messages_per_session` (at least 1).
    max_per_session: usize,
    /// Messages per session and round: the lower of that and [`SESSION_SHARE`].
    share: usize,
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
                max_per_session: settings.max_messages_per_session.max(1),
                share: settings.max_messages_per_session.clamp(1, SESSION_SHARE),
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
                // Enough for the free slots, each a session of `share`
                // messages; per domain, `share` for each session it may
                // still start.
                let limit = BATCH.min((free * inner.share) as i64);
                match inner
                    .store
                    .lease_remote_recipients(
                        &inner.id,
                        inner.lease_secs,
                        limit,
                        &inner.limiter.caps(inner.share),
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
            // destinations (one message at one domain), keeping that order.
            let mut groups: Vec<((i64, String), Vec<LeasedRecipient>)> = Vec::new();
            for r in leased {
                let key = (r.queue_id, domain_of(&r.address));
                match groups.last_mut() {
                    Some((k, v)) if *k == key => v.push(r),
                    _ => groups.push((key, vec![r])),
                }
            }
            // Every leased recipient is held (renewed) from now until its
            // attempt ends, also while it waits for a slot. The messages of
            // one domain are then cut into sessions.
            let mut by_domain: Vec<(String, Vec<Leased>)> = Vec::new();
            for ((queue_id, domain), recipients) in groups {
                let hold = leases.hold(&recipients);
                let leased = (queue_id, recipients, hold);
                match by_domain.iter_mut().find(|(d, _)| *d == domain) {
                    Some((_, v)) => v.push(leased),
                    None => by_domain.push((domain, vec![leased])),
                }
            }
            'domains: for (domain, messages) in by_domain {
                for batch in sessions_of(messages, inner.share) {
                    // The lease was capped by the limiter's counts and only
                    // this loop takes permits, so one is free; should it
                    // not be, the recipients go back to the queue rather
                    // than wait leased.
                    let Some(destination) = inner.limiter.try_acquire(&domain) else {
                        for (_, _, hold) in batch {
                            hold.give_back_in(0);
                        }
                        continue;
                    };
                    let Ok(slot) = slots.clone().acquire_owned().await else {
                        break 'domains;
                    };
                    let (inner, domain, shutdown) =
                        (inner.clone(), domain.clone(), shutdown.clone());
                    // A panic inside drops the holds: the leases are given back.
                    tasks.spawn(async move {
                        inner.attempt_session(&domain, batch, &shutdown).await;
                        drop(destination);
                        drop(slot);
                    });
                }
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

/// One message's leased recipients at one domain, held.
type Leased = (i64, Vec<LeasedRecipient>, outcome::Hold);

/// Cuts one domain's messages (in lease order) into sessions of at most
/// `share` messages, as even as possible: `n` messages make
/// `ceil(n / share)` sessions.
fn sessions_of<T>(messages: Vec<T>, share: usize) -> Vec<Vec<T>> {
    let share = share.max(1);
    let n = messages.len();
    let sessions = n.div_ceil(share).max(1);
    let (size, extra) = (n / sessions, n % sessions);
    let mut out = Vec::with_capacity(sessions);
    let mut rest = messages.into_iter();
    for i in 0..sessions {
        let take = size + usize::from(i < extra);
        out.push(rest.by_ref().take(take).collect::<Vec<T>>());
    }
    out.retain(|s| !s.is_empty());
    out
}

/// Results are recorded once this many messages wait …
const RECORD_EVERY: usize = 32;
/// … or once their content adds up to this many bytes, or the first of
/// them waited this long (a slow peer should not keep finished results
/// unrecorded: a crash would send them again).
const RECORD_BYTES: usize = 8 << 20;
const RECORD_AFTER: Duration = Duration::from_secs(1);

impl Inner {
    /// One session's worth of messages for `domain`: each is loaded, sent
    /// over one SMTP session (opened when the first needs it, reopened when
    /// the server ended it cleanly between messages or the session reached
    /// `mta.max_messages_per_session`), and its results recorded with the
    /// others' in one transaction. Every way out either records a message's
    /// results or gives its leases back. At `shutdown` the message in
    /// progress finishes; the rest are given back.
    async fn attempt_session(
        &self,
        domain: &str,
        messages: Vec<Leased>,
        shutdown: &CancellationToken,
    ) {
        let mut session: Option<Session<'_>> = None;
        // Once the destination failed this batch (no MX reachable, the
        // connection broke mid-transaction), the rest get the same outcome
        // without another try.
        let mut verdict: Option<Outcome> = None;
        let mut answered: Vec<Answered> = Vec::new();
        let mut since: Option<tokio::time::Instant> = None;
        let mut messages = messages;
        messages.sort_by_key(|(queue_id, _, _)| *queue_id);
        let ids: Vec<i64> = messages.iter().map(|(queue_id, _, _)| *queue_id).collect();
        let mut ahead = Ahead::default();
        for (queue_id, recipients, hold) in messages {
            if shutdown.is_cancelled() {
                break; // the remaining holds drop: given back
            }
            let loaded = ahead.take(&self.store, queue_id, &ids).await;
            let Some((queued, hold)) =
                outcome::loaded(loaded, queue_id, hold, self.settings.first_retry_secs)
            else {
                continue;
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
            let results = async {
                let out: Vec<OutRecipient> = recipients
                    .iter()
                    .map(|r| OutRecipient {
                        address: r.address.clone(),
                        orcpt: r.orcpt.clone(),
                        notify: r.notify.clone(),
                    })
                    .collect();
                let env = envelope(&queued.envelope, &queued.message, &out);
                let outcomes = if env.requiretls {
                    // RFC 8689: a session of its own, verified TLS to a
                    // server that offers REQUIRETLS.
                    self.deliver_alone(domain, &env).await
                } else if let Some(v) = &verdict {
                    vec![v.clone(); out.len()]
                } else {
                    self.send_on(&mut session, &mut verdict, domain, &env).await
                };
                let results = self.results_of(&queued, &recipients, &outcomes);
                tracing::Span::current().record("outcome", outcome::summary(&results));
                results
            }
            .instrument(span)
            .await;
            since.get_or_insert_with(tokio::time::Instant::now);
            answered.push(Answered {
                queue_id,
                queued,
                recipients,
                results,
                hold,
            });
            let bytes: usize = answered.iter().map(|a| a.queued.message.len()).sum();
            if answered.len() >= RECORD_EVERY
                || bytes >= RECORD_BYTES
                || since.is_some_and(|t| t.elapsed() >= RECORD_AFTER)
            {
                self.record(&mut answered).await;
                since = None;
            }
        }
        if let Some(s) = session {
            s.quit().await;
        }
        self.record(&mut answered).await;
    }

    /// Sends `env` over the batch's session, opening one when there is
    /// none (or it is used up); one outcome per recipient.
    async fn send_on<'s>(
        &'s self,
        session: &mut Option<Session<'s>>,
        verdict: &mut Option<Outcome>,
        domain: &str,
        env: &Envelope<'_>,
    ) -> Vec<Outcome> {
        let all = |o: &Outcome| vec![o.clone(); env.recipients.len()];
        let mut retried = false;
        loop {
            let spent = session
                .as_ref()
                .is_none_or(|s| !s.usable() || s.transactions() >= self.max_per_session);
            if spent {
                if let Some(old) = session.take() {
                    old.quit().await;
                }
                match tokio::time::timeout(self.attempt_budget, self.open_session(domain)).await {
                    Ok(Ok(s)) => *session = Some(s),
                    Ok(Err(o)) => {
                        let outcomes = all(&o);
                        *verdict = Some(o);
                        return outcomes;
                    }
                    Err(_) => {
                        let o =
                            Outcome::Deferred(format!("4.4.7 delivery to {domain} took too long"));
                        let outcomes = all(&o);
                        *verdict = Some(o);
                        return outcomes;
                    }
                }
            }
            let Some(s) = session.as_mut() else {
                continue;
            };
            let sent = tokio::time::timeout(self.attempt_budget, s.send(env)).await;
            match sent {
                Ok(Sent::Answered { outcomes, broken }) => {
                    if let Some(why) = broken {
                        // RFC 5321 §3.8: the connection is gone; what is
                        // left of the batch waits for the next attempt.
                        *session = None;
                        *verdict = Some(Outcome::Deferred(why));
                    }
                    return outcomes;
                }
                Ok(Sent::Refused(e)) => {
                    tracing::info!(error = %e.reason, "refused on the shared session; trying every MX for this message alone");
                    return self.deliver_alone(domain, env).await;
                }
                Ok(Sent::Retry(why)) if !retried => {
                    tracing::info!(error = %why, "the reused session ended before the message; opening a new one");
                    retried = true;
                    *session = None;
                }
                Ok(Sent::Retry(why)) => {
                    *session = None;
                    let o = Outcome::Deferred(why);
                    *verdict = Some(o.clone());
                    return all(&o);
                }
                Err(_) => {
                    // Dropped mid-way: the session's state is unknown.
                    *session = None;
                    let o = Outcome::Deferred(format!("4.4.7 delivery to {domain} took too long"));
                    *verdict = Some(o.clone());
                    return all(&o);
                }
            }
        }
    }

    /// The queue results of one message's outcomes (a deferral past the
    /// message's expiry fails it), logged.
    fn results_of(
        &self,
        queued: &mailroom_store::QueuedMessage,
        recipients: &[LeasedRecipient],
        outcomes: &[Outcome],
    ) -> Vec<AttemptResult> {
        let now = outcome::unix_now();
        let mut results = Vec::with_capacity(recipients.len());
        for (r, o) in recipients.iter().zip(outcomes) {
            let result = match o {
                Outcome::Delivered(_) => AttemptResult::Delivered,
                Outcome::Failed(response) => AttemptResult::Failed {
                    response: response.clone(),
                },
                Outcome::Deferred(response) if now >= queued.expires_at => AttemptResult::Failed {
                    response: format!("4.4.7 message expired in the queue; last error: {response}"),
                },
                Outcome::Deferred(response) => AttemptResult::Deferred {
                    next_attempt_at: now + backoff(self.settings.first_retry_secs, r.attempts),
                    response: response.clone(),
                },
            };
            tracing::info!(recipient = %r.address, response = o.text(), ?result, "relay attempt");
            results.push(result);
        }
        results
    }

    /// Records the results of `answered` in one transaction
    /// ([`outcome::record_answered`]).
    async fn record(&self, answered: &mut Vec<Answered>) {
        outcome::record_answered(&self.store, &self.id, answered, &self.reporting, &self.wake)
            .await;
    }

    /// Tries `domain`'s MX hosts in order, each of their addresses in turn
    /// (RFC 5321 §5.1), until `goal` is reached at one; else the outcome
    /// every recipient gets.
    async fn walk_mx<'s>(&'s self, domain: &str, goal: Goal<'_>) -> Result<Reached<'s>, Outcome> {
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
            Err(RouteError::Permanent(why)) => return Err(Outcome::Failed(why)),
            Err(RouteError::Temporary(why)) => return Err(Outcome::Deferred(why)),
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
                let done = match goal {
                    Goal::Open => Session::open(&self.client, addr, &host.name, false)
                        .instrument(session.clone())
                        .await
                        .map(Reached::Session),
                    Goal::Deliver(env) => client::deliver(&self.client, addr, &host.name, env)
                        .instrument(session.clone())
                        .await
                        .map(|result| {
                            tracing::info!(mx = %host.name, %addr, tls = ?result.tls, "SMTP session done");
                            Reached::Outcomes(result.outcomes)
                        }),
                };
                session.record("outcome", if done.is_ok() { "completed" } else { "failed" });
                drop(session);
                match done {
                    Ok(t) => return Ok(t),
                    Err(e) => {
                        tracing::info!(mx = %host.name, %addr, error = %e.reason, "MX attempt failed; trying the next");
                        last = Some(e);
                    }
                }
            }
        }
        Err(match last {
            Some(HostError {
                reason,
                permanent: true,
            }) => Outcome::Failed(reason),
            Some(HostError { reason, .. }) => Outcome::Deferred(reason),
            None => Outcome::Deferred(format!(
                "4.4.4 no mail exchanger of {domain} could be reached"
            )),
        })
    }

    /// A session to the first MX address of `domain` that greets us.
    async fn open_session(&self, domain: &str) -> Result<Session<'_>, Outcome> {
        match self.walk_mx(domain, Goal::Open).await? {
            Reached::Session(s) => Ok(s),
            Reached::Outcomes(_) => unreachable!("opening gives a session"),
        }
    }

    /// Delivers one message in a session of its own, through every MX until
    /// one gives per-recipient answers; one outcome per recipient. Bounded
    /// by the attempt budget.
    async fn deliver_alone(&self, domain: &str, env: &Envelope<'_>) -> Vec<Outcome> {
        let walk = self.walk_mx(domain, Goal::Deliver(env));
        match tokio::time::timeout(self.attempt_budget, walk).await {
            Ok(Ok(Reached::Outcomes(outcomes))) => outcomes,
            Ok(Ok(Reached::Session(_))) => unreachable!("delivering gives outcomes"),
            Ok(Err(o)) => vec![o; env.recipients.len()],
            Err(_) => vec![
                Outcome::Deferred(format!("4.4.7 delivery to {domain} took too long"));
                env.recipients.len()
            ],
        }
    }
}

/// What [`Inner::walk_mx`] tries at each MX address.
#[derive(Clone, Copy)]
enum Goal<'e> {
    /// A session for the messages of a batch.
    Open,
    /// One message in a session of its own.
    Deliver(&'e Envelope<'e>),
}

/// What [`Inner::walk_mx`] reached.
enum Reached<'s> {
    /// For [`Goal::Open`].
    Session(Session<'s>),
    /// For [`Goal::Deliver`]: one per recipient.
    Outcomes(Vec<Outcome>),
}

/// The client's view of a queued message for `recipients`.
fn envelope<'a>(
    envelope: &'a QueueEnvelope,
    message: &'a [u8],
    recipients: &'a [OutRecipient],
) -> Envelope<'a> {
    Envelope {
        sender: &envelope.sender,
        recipients,
        env_id: envelope.env_id.as_deref(),
        ret: envelope.ret.as_deref(),
        body_type: envelope.body_type.as_deref(),
        smtputf8: envelope.smtputf8,
        requiretls: envelope.requiretls,
        message,
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
        let caps = limiter.caps(1);
        assert_eq!(caps.default, 2);
        let mut domains = caps.domains.clone();
        domains.sort();
        assert_eq!(domains, [("a.test".into(), 0), ("b.test".into(), 1)]);
        let caps = limiter.caps(10);
        assert_eq!(caps.default, 20, "ten messages a session");
        assert!(caps.domains.contains(&("b.test".into(), 10)));
        drop(a1);
        assert!(limiter.try_acquire("a.test").is_some(), "a session ended");
        drop(_b);
        assert!(
            limiter.caps(1).domains.iter().all(|(d, _)| d != "b.test"),
            "idle domains are forgotten"
        );
    }

    #[test]
    fn a_domains_messages_are_cut_into_even_sessions_of_at_most_the_share() {
        let sizes = |n: usize, share: usize| -> Vec<usize> {
            sessions_of((0..n).collect::<Vec<_>>(), share)
                .iter()
                .map(Vec::len)
                .collect()
        };
        assert_eq!(sizes(5, 32), [5], "one session for a few messages");
        assert_eq!(sizes(5, 2), [2, 2, 1]);
        assert_eq!(sizes(100, 32), [25, 25, 25, 25], "even, not 32+32+32+4");
        assert_eq!(sizes(1, 1), [1]);
        assert!(sizes(0, 8).is_empty());
        let order: Vec<usize> = sessions_of((0..7).collect::<Vec<_>>(), 3)
            .into_iter()
            .flatten()
            .collect();
        assert_eq!(order, [0, 1, 2, 3, 4, 5, 6], "lease order kept");
    }

    #[test]
    fn domains_group_like_the_store_routes_them() {
        assert_eq!(domain_of("a@Example.ORG"), "example.org");
        assert_eq!(domain_of("a@Bücher.example"), "xn--bcher-kva.example");
    }
}
