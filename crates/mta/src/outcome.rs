//! Recording what one attempt gave: the results of the leased recipients
//! of one message, the reports they owe (failure DSNs and delay notices,
//! see `dsn`) and, once no recipient is left to try, the removal of the
//! entry. The store does all of it in one transaction
//! ([`Store::finish_attempts`]; for the messages of one relay session,
//! [`Store::finish_attempts_of_entries`], still one transaction); both
//! workers come through here.
//!
//! Invariants:
//! * a report covers exactly the results that were recorded under the
//!   worker's lease, so a worker that lost its lease reports nothing and a
//!   result is never reported twice;
//! * a delay notice is owed once per recipient: when it is deferred, the
//!   message was queued at least `mta.delay_warning_secs` ago (0 turns
//!   notices off), none was sent for it yet, its sender is not `<>` and its
//!   `NOTIFY` allows it (RFC 3461 §4.1). It is sent at the first deferral
//!   after that moment, since deferrals are when the queue looks at it;
//! * every report is DKIM-signed (RFC 6376) as it is rendered, with the
//!   active keys of our host name's domain or, failing that, of its closest
//!   parent domain with keys (its `From:` is `MAILER-DAEMON@<hostname>`, so
//!   `d=` aligns with it under DMARC's relaxed alignment, RFC 7489 §3.1.1);
//!   without keys, or when they cannot be read, it goes unsigned rather
//!   than not at all.

use std::collections::HashMap;
use std::sync::Arc;

use mailroom_store::{
    AttemptResult, DkimSigningKey, LeasedRecipient, OwedReport, QueuedMessage, RecipientResult,
    Store,
};

use crate::dsn::{self, ReportKind, ReportedRecipient};

/// What reports need from the configuration.
#[derive(Debug, Clone)]
pub(crate) struct Reporting {
    /// Our name (`server.hostname`): `Reporting-MTA`, `From:`.
    pub hostname: String,
    /// How long a report may stay queued (`mta.max_queue_age_secs`).
    pub max_queue_age_secs: i64,
    /// Age of a message after which a deferral sends a delay notice; 0: never.
    pub delay_warning_secs: i64,
    /// Whether a delivery here is final, so that `NOTIFY=SUCCESS` owes a
    /// "delivered" report (RFC 3461 §6.2.6.1): true for the local worker.
    /// The relay passes `NOTIFY` on to the next server, which reports.
    pub reports_success: bool,
    /// `x=` of the reports' DKIM signatures (`sender_auth.dkim_expiry_secs`).
    pub dkim_expiry: std::time::Duration,
}

pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Whether a deferral of `recipient` now owes a delay notice.
pub(crate) fn delay_notice_due(
    reporting: &Reporting,
    queued: &QueuedMessage,
    recipient: &LeasedRecipient,
    now: i64,
) -> bool {
    reporting.delay_warning_secs > 0
        && now.saturating_sub(queued.created_at) >= reporting.delay_warning_secs
        && !recipient.delay_notified
        && dsn::delay_report_wanted(&queued.envelope, recipient.notify.as_deref())
}

fn reported(r: &LeasedRecipient, response: &str) -> ReportedRecipient {
    ReportedRecipient {
        address: r.address.clone(),
        orcpt: r.orcpt.clone(),
        notify: r.notify.clone(),
        response: response.to_string(),
    }
}

/// The keys reports are signed with: the active DKIM keys of `hostname`'s
/// domain, else of its closest parent with keys (not a top-level name).
/// None found, or the store failing: no keys (the report goes unsigned).
pub(crate) async fn report_keys(store: &Store, hostname: &str) -> Vec<DkimSigningKey> {
    let mut name = hostname.trim_end_matches('.');
    while name.contains('.') {
        if let Ok(domain) = mailroom_address::Domain::parse(name) {
            match store.dkim_signing_keys(&domain).await {
                Ok(keys) if !keys.is_empty() => return keys,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the DKIM keys; reports go unsigned");
                    return Vec::new();
                }
            }
        }
        name = name.split_once('.').map_or("", |(_, parent)| parent);
    }
    Vec::new()
}

/// Whether recording `results` may owe a report (so its keys are worth
/// reading first).
fn may_report(reporting: &Reporting, queued: &QueuedMessage, results: &[RecipientResult]) -> bool {
    !queued.envelope.sender.is_empty()
        && results.iter().any(|r| match r.result {
            AttemptResult::Failed { .. } => true,
            AttemptResult::Deferred { .. } => r.delay_notice,
            AttemptResult::Delivered => reporting.reports_success,
        })
}

/// The reports owed by the recorded results among `results`, signed with
/// `keys`.
fn owed_reports(
    reporting: &Reporting,
    keys: &[DkimSigningKey],
    queued: &QueuedMessage,
    recipients: &[LeasedRecipient],
    results: &[RecipientResult],
    recorded: &[bool],
    now: i64,
) -> Vec<OwedReport> {
    let mut failed = Vec::new();
    let mut delayed = Vec::new();
    let mut succeeded = Vec::new();
    for ((r, result), recorded) in recipients.iter().zip(results).zip(recorded) {
        if !recorded {
            continue;
        }
        match &result.result {
            AttemptResult::Failed { response } => failed.push(reported(r, response)),
            AttemptResult::Deferred { response, .. } if result.delay_notice => {
                delayed.push(reported(r, response))
            }
            AttemptResult::Delivered
                if reporting.reports_success
                    && dsn::success_report_wanted(&queued.envelope, r.notify.as_deref()) =>
            {
                succeeded.push(reported(r, "2.0.0 delivered to the mailbox"))
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    let mut add = |kind: ReportKind, chosen: Vec<&ReportedRecipient>| {
        if chosen.is_empty() {
            return;
        }
        let message = dsn::render_kind(
            kind,
            &reporting.hostname,
            &queued.envelope,
            &queued.message,
            &chosen,
            now,
            rand::random(),
        );
        let message = crate::sign_with(message, keys, reporting.dkim_expiry);
        out.push(OwedReport {
            envelope: dsn::envelope_for(&queued.envelope, &message),
            message,
            max_age_secs: reporting.max_queue_age_secs,
        });
    };
    add(
        ReportKind::Failure,
        dsn::recipients_to_report(&queued.envelope, &failed),
    );
    add(
        ReportKind::Delay {
            will_retry_until: queued.expires_at,
        },
        delayed.iter().collect(),
    );
    add(ReportKind::Success, succeeded.iter().collect());
    out
}

/// A message whose attempt is done, waiting for its results to be recorded
/// with others' (those of one relay session, or of one local worker's
/// concurrent attempts).
pub(crate) struct Answered {
    /// The queue entry.
    pub queue_id: i64,
    /// Its message.
    pub queued: QueuedMessage,
    /// The recipients attempted.
    pub recipients: Vec<LeasedRecipient>,
    /// One result per recipient, in order.
    pub results: Vec<AttemptResult>,
    /// The leases, settled once the results are recorded.
    pub hold: Hold,
}

/// Records the results of `answered` in one transaction ([`record_all`])
/// and settles their holds; when that fails, the holds drop and the leases
/// are given back (the messages are attempted again: a duplicate, never a
/// loss). Leaves `answered` empty.
pub(crate) async fn record_answered(
    store: &Store,
    worker: &str,
    answered: &mut Vec<Answered>,
    reporting: &Reporting,
    wake: &Arc<crate::QueueWake>,
) {
    if answered.is_empty() {
        return;
    }
    let attempts = answered
        .iter_mut()
        .map(|a| Attempted {
            queue_id: a.queue_id,
            queued: &a.queued,
            recipients: &a.recipients,
            results: std::mem::take(&mut a.results),
        })
        .collect();
    let recorded = record_all(store, worker, attempts, reporting, wake).await;
    for a in answered.drain(..) {
        if recorded {
            a.hold.settle();
        }
    }
}

/// Messages loaded ahead in one query, at most …
const LOAD_AHEAD: usize = 16;
/// … and while their content adds up to less than this.
const LOAD_BYTES: i64 = 4 << 20;

/// A batch's messages, loaded a few at a time in one query each
/// ([`Store::queued_for_attempts`]) rather than one query per message.
#[derive(Default)]
pub(crate) struct Ahead {
    loaded: HashMap<i64, QueuedMessage>,
    /// Every id up to this one was asked for: what is not in `loaded` is gone.
    through: i64,
}

impl Ahead {
    /// Message `queue_id` of the batch whose ids (ascending) are `ids`,
    /// loading it and the next few when it is not loaded yet.
    pub(crate) async fn take(
        &mut self,
        store: &Store,
        queue_id: i64,
        ids: &[i64],
    ) -> Result<Option<QueuedMessage>, mailroom_store::StoreError> {
        if queue_id > self.through {
            let from = ids.partition_point(|id| *id < queue_id);
            let wanted = &ids[from..ids.len().min(from + LOAD_AHEAD)];
            let got = store.queued_for_attempts(wanted, LOAD_BYTES).await?;
            // The result is a prefix of the entries that exist: an id up to
            // the last one loaded and not among them is gone.
            self.through = match got.last() {
                Some((last, _)) => *last,
                None => wanted.last().copied().unwrap_or(queue_id),
            };
            self.loaded.extend(got);
        }
        Ok(self.loaded.remove(&queue_id))
    }
}

/// One message's attempt, answered by the remote (or given up on), to be
/// recorded.
pub(crate) struct Attempted<'a> {
    /// The queue entry.
    pub queue_id: i64,
    /// Its message.
    pub queued: &'a QueuedMessage,
    /// The recipients attempted.
    pub recipients: &'a [LeasedRecipient],
    /// One result per recipient, in order.
    pub results: Vec<AttemptResult>,
}

/// Records the results of several attempts (the messages of one relay
/// session) with the reports they owe in ONE store transaction
/// ([`Store::finish_attempts_of_entries`]); see [`record`]. Returns whether
/// the transaction committed (then every result still under our lease was
/// recorded).
pub(crate) async fn record_all(
    store: &Store,
    worker: &str,
    attempts: Vec<Attempted<'_>>,
    reporting: &Reporting,
    wake: &Arc<crate::QueueWake>,
) -> bool {
    if attempts.is_empty() {
        return true;
    }
    let now = unix_now();
    let inputs: Vec<Vec<RecipientResult>> = attempts
        .iter()
        .map(|a| {
            a.recipients
                .iter()
                .zip(&a.results)
                .map(|(r, result)| {
                    let delay_notice = matches!(result, AttemptResult::Deferred { .. })
                        && delay_notice_due(reporting, a.queued, r, now);
                    RecipientResult {
                        recipient_id: r.id,
                        result: result.clone(),
                        delay_notice,
                    }
                })
                .collect()
        })
        .collect();
    let kind = if reporting.reports_success {
        "local"
    } else {
        "relay"
    };
    for r in inputs.iter().flatten() {
        let result = match r.result {
            AttemptResult::Delivered => "delivered",
            AttemptResult::Deferred { .. } => "deferred",
            AttemptResult::Failed { .. } => "failed",
        };
        metrics::counter!("mailroom_delivery_results_total", "kind" => kind, "result" => result)
            .increment(1);
    }
    let keys = if attempts
        .iter()
        .zip(&inputs)
        .any(|(a, input)| may_report(reporting, a.queued, input))
    {
        report_keys(store, &reporting.hostname).await
    } else {
        Vec::new()
    };
    let entries: Vec<(i64, &[RecipientResult])> = attempts
        .iter()
        .zip(&inputs)
        .map(|(a, input)| (a.queue_id, input.as_slice()))
        .collect();
    let finished = store
        .finish_attempts_of_entries(worker, &entries, |i, recorded| {
            let a = &attempts[i];
            owed_reports(
                reporting,
                &keys,
                a.queued,
                a.recipients,
                &inputs[i],
                recorded,
                now,
            )
        })
        .await;
    match finished {
        Ok(all) => {
            for (a, f) in attempts.iter().zip(&all) {
                for (r, recorded) in a.recipients.iter().zip(&f.recorded) {
                    if !recorded {
                        tracing::warn!(recipient = %r.address, "lease lost before the result was recorded");
                    }
                }
                if !f.reports.is_empty() {
                    tracing::info!(queue_id = a.queue_id, reports = ?f.reports, to = %a.queued.envelope.sender, "delivery status notification queued");
                    // A report may go to a local or a remote sender.
                    wake.both();
                }
                if f.removed {
                    tracing::info!(
                        queue_id = a.queue_id,
                        blob_released = f.blob_released,
                        "queue entry finished and removed"
                    );
                }
            }
            true
        }
        Err(e) => {
            let ids: Vec<i64> = attempts.iter().map(|a| a.queue_id).collect();
            tracing::error!(queue_ids = ?ids, error = %e, "cannot record delivery results; the recipients are given back and will be retried");
            false
        }
    }
}

/// The message of leased entry `queue_id` as the store `loaded` it, for an
/// attempt, with its hold; `None` when it could not be loaded: the hold is
/// then given back, after `retry_secs` when the entry or its content is
/// missing (so that it is not retried in a loop), soon after a store error.
pub(crate) fn loaded(
    loaded: Result<Option<QueuedMessage>, mailroom_store::StoreError>,
    queue_id: i64,
    hold: Hold,
    retry_secs: i64,
) -> Option<(QueuedMessage, Hold)> {
    match loaded {
        Ok(Some(m)) => Some((m, hold)),
        Ok(None) => {
            // Gone (dropped meanwhile: nothing to give back) or its
            // content is missing.
            tracing::error!(
                queue_id,
                "a queued message could not be found with its content"
            );
            hold.give_back_in(retry_secs);
            None
        }
        Err(e) => {
            tracing::warn!(queue_id, error = %e, "cannot load a queued message; it will be retried");
            None // `hold` drops: given back
        }
    }
}

/// How soon a recipient whose attempt could not finish (its message could
/// not be loaded, its results not recorded, its task panicked) may be
/// leased again: soon, but not in a tight loop while a fault lasts.
pub(crate) const GIVE_BACK_SECS: i64 = 5;

/// The leases one worker's tasks are working on. The invariant (see the
/// store's queue module): a worker holds a lease only while a task works on
/// that entry. Every leased recipient is put under a [`Hold`] at once; the
/// renewal renews exactly the held ones; a hold ends either settled (its
/// results were recorded, which released the leases) or given back (the
/// leases lapse after [`GIVE_BACK_SECS`], retried in the background until
/// the store takes it, or until the lease would have run out anyway).
#[derive(Debug, Clone)]
pub(crate) struct Leases(Arc<LeasesInner>);

#[derive(Debug)]
struct LeasesInner {
    store: Store,
    worker: String,
    lease_secs: i64,
    held: std::sync::Mutex<std::collections::BTreeSet<i64>>,
}

impl Leases {
    pub(crate) fn new(store: Store, worker: String, lease_secs: i64) -> Leases {
        Leases(Arc::new(LeasesInner {
            store,
            worker,
            lease_secs: lease_secs.max(1),
            held: Default::default(),
        }))
    }

    fn held(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeSet<i64>> {
        // A panic elsewhere never leaves the set half-changed.
        self.0.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Renews the held leases every third of the lease length until the
    /// guard is dropped.
    pub(crate) fn renew(&self) -> RenewalGuard {
        let every = std::time::Duration::from_millis(
            u64::try_from(self.0.lease_secs)
                .unwrap_or(1)
                .saturating_mul(1000)
                / 3,
        )
        .max(std::time::Duration::from_millis(100));
        let leases = self.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let ids: Vec<i64> = leases.held().iter().copied().collect();
                let inner = &leases.0;
                if let Err(e) = inner
                    .store
                    .renew_leases(&inner.worker, &ids, inner.lease_secs)
                    .await
                {
                    tracing::warn!(error = %e, "cannot renew queue leases; retrying");
                }
            }
        });
        RenewalGuard(task)
    }

    /// Puts `recipients` (just leased) under a hold.
    pub(crate) fn hold(&self, recipients: &[LeasedRecipient]) -> Hold {
        let ids: Vec<i64> = recipients.iter().map(|r| r.id).collect();
        self.held().extend(ids.iter().copied());
        Hold {
            leases: self.clone(),
            ids,
            settled: false,
            give_back_secs: GIVE_BACK_SECS,
        }
    }

    /// Gives back every lease the worker still has in the store (at
    /// shutdown, when no task is left).
    pub(crate) async fn release_all(&self) {
        let inner = &self.0;
        if let Err(e) = inner.store.release_leases(&inner.worker, None).await {
            tracing::warn!(error = %e, "cannot release leases at shutdown; they will expire");
        }
    }
}

/// Leased recipients a task is responsible for; see [`Leases`]. Dropping
/// a hold that was not [settled](Hold::settle) gives its leases back, so a
/// task that returns early, fails or panics never strands an entry.
#[derive(Debug)]
pub(crate) struct Hold {
    leases: Leases,
    ids: Vec<i64>,
    settled: bool,
    give_back_secs: i64,
}

impl Hold {
    /// The results were recorded (which released the leases).
    pub(crate) fn settle(mut self) {
        self.settled = true;
    }

    /// Gives the leases back to be taken again in `secs` (rather than
    /// [`GIVE_BACK_SECS`]).
    pub(crate) fn give_back_in(mut self, secs: i64) {
        self.give_back_secs = secs;
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        {
            let mut held = self.leases.held();
            for id in &self.ids {
                held.remove(id);
            }
        }
        if self.settled || self.ids.is_empty() {
            return;
        }
        let (leases, ids, after) = (
            self.leases.clone(),
            std::mem::take(&mut self.ids),
            self.give_back_secs,
        );
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // no runtime left: the leases run out by themselves
        };
        runtime.spawn(async move {
            let inner = &leases.0;
            let deadline = std::time::Instant::now()
                + std::time::Duration::from_secs(u64::try_from(inner.lease_secs).unwrap_or(1));
            let mut wait = std::time::Duration::from_millis(200);
            loop {
                match inner.store.lapse_leases(&inner.worker, &ids, after).await {
                    Ok(_) => {
                        tracing::info!(recipients = ?ids, after_secs = after, "leases given back without a result");
                        return;
                    }
                    Err(e) if std::time::Instant::now() < deadline => {
                        tracing::warn!(error = %e, "cannot give leases back yet; retrying");
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot give leases back; they will expire");
                        return;
                    }
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(std::time::Duration::from_secs(5));
            }
        });
    }
}

/// Stops a lease renewal when dropped.
#[derive(Debug)]
pub(crate) struct RenewalGuard(tokio::task::JoinHandle<()>);

impl Drop for RenewalGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One word for an attempt's results, for its span's `outcome` attribute:
/// `delivered`, `deferred` or `failed` when all agree, else `mixed`.
pub(crate) fn summary(results: &[AttemptResult]) -> &'static str {
    let word = |r: &AttemptResult| match r {
        AttemptResult::Delivered => "delivered",
        AttemptResult::Deferred { .. } => "deferred",
        AttemptResult::Failed { .. } => "failed",
    };
    match results.split_first() {
        None => "none",
        Some((first, rest)) if rest.iter().all(|r| word(r) == word(first)) => word(first),
        Some(_) => "mixed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mailroom_store::QueueEnvelope;

    fn queued(sender: &str, created_at: i64) -> QueuedMessage {
        QueuedMessage {
            envelope: QueueEnvelope {
                sender: sender.into(),
                ..Default::default()
            },
            message: b"Subject: x\r\n\r\nbody\r\n".to_vec(),
            created_at,
            expires_at: created_at + 5 * 86400,
        }
    }

    fn leased(notify: Option<&str>, delay_notified: bool) -> LeasedRecipient {
        LeasedRecipient {
            id: 1,
            queue_id: 1,
            address: "bob@remote.test".into(),
            attempts: 3,
            orcpt: None,
            notify: notify.map(str::to_string),
            delay_notified,
        }
    }

    const REPORTING: Reporting = Reporting {
        hostname: String::new(),
        max_queue_age_secs: 3600,
        delay_warning_secs: 4 * 3600,
        reports_success: false,
        dkim_expiry: std::time::Duration::from_secs(0),
    };

    #[test]
    fn a_delay_notice_is_due_once_after_the_warning_time_if_notify_allows() {
        let now = 1_000_000;
        let old = queued("alice@example.test", now - 4 * 3600);
        let young = queued("alice@example.test", now - 4 * 3600 + 1);
        assert!(delay_notice_due(
            &REPORTING,
            &old,
            &leased(None, false),
            now
        ));
        assert!(!delay_notice_due(
            &REPORTING,
            &young,
            &leased(None, false),
            now
        ));
        assert!(
            !delay_notice_due(&REPORTING, &old, &leased(None, true), now),
            "once"
        );
        assert!(delay_notice_due(
            &REPORTING,
            &old,
            &leased(Some("DELAY"), false),
            now
        ));
        assert!(!delay_notice_due(
            &REPORTING,
            &old,
            &leased(Some("FAILURE"), false),
            now
        ));
        assert!(!delay_notice_due(
            &REPORTING,
            &old,
            &leased(Some("NEVER"), false),
            now
        ));
        let bounce = queued("", now - 5 * 3600);
        assert!(
            !delay_notice_due(&REPORTING, &bounce, &leased(None, false), now),
            "never to <>"
        );
        let off = Reporting {
            delay_warning_secs: 0,
            ..REPORTING
        };
        assert!(
            !delay_notice_due(&off, &old, &leased(None, false), now),
            "0 is off"
        );
    }

    #[test]
    fn only_recorded_results_are_reported() {
        let q = queued("alice@example.test", 0);
        let recipients = [leased(None, false), leased(None, false)];
        let results = [
            RecipientResult {
                recipient_id: 1,
                result: AttemptResult::Failed {
                    response: "5.1.1 no".into(),
                },
                delay_notice: false,
            },
            RecipientResult {
                recipient_id: 2,
                result: AttemptResult::Deferred {
                    next_attempt_at: 9,
                    response: "4.2.1 busy".into(),
                },
                delay_notice: true,
            },
        ];
        let both = owed_reports(&REPORTING, &[], &q, &recipients, &results, &[true, true], 0);
        assert_eq!(both.len(), 2, "a failure report and a delay notice");
        let text = String::from_utf8_lossy(&both[1].message).into_owned();
        assert!(
            text.contains("Action: delayed\r\nStatus: 4.2.1\r\n"),
            "{text}"
        );
        assert!(
            owed_reports(
                &REPORTING,
                &[],
                &q,
                &recipients,
                &results,
                &[false, false],
                0
            )
            .is_empty()
        );
        let one = owed_reports(
            &REPORTING,
            &[],
            &q,
            &recipients,
            &results,
            &[false, true],
            0,
        );
        assert_eq!(one.len(), 1);
    }
}
