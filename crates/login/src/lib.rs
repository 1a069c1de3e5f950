//! Logins, the same for every protocol that has them: SMTP AUTH (RFC 4954),
//! IMAP LOGIN and AUTHENTICATE (RFC 9051 §6.2), POP3 USER/PASS and AUTH
//! (RFC 1939 §7, RFC 5034). Each protocol keeps only its framing (how a
//! challenge is written and an answer read) and its reply texts; the rules
//! live here once:
//!
//! * [`sasl`] drives a `mailroom-sasl` exchange to its end: challenges go
//!   through the protocol's [`Challenger`], credentials are checked by the
//!   store, an `authzid` must name the authenticated account itself (acting
//!   as someone else is not offered), success data travels in a last
//!   challenge that the client answers with an empty line (`*` cancels),
//!   and a disabled account does not log in;
//! * [`password`] checks a user name and password (LOGIN, USER/PASS);
//! * [`Failures::failed`] is the failure policy: a cancelled or malformed
//!   exchange is not a failed login; a real failure is counted for the
//!   session and for the client's address ([`AuthThrottle`]), then slowed
//!   down by a delay that grows with the session's failures, and after
//!   `max_per_session` the session is to be closed;
//! * [`Failures::blocked`] refuses an address over its limit before any
//!   credential is looked at.

use std::net::IpAddr;
use std::time::Duration;

use mailroom_address::Address;
use mailroom_net::AuthThrottle;
use mailroom_sasl::{Mechanism, SaslConfig, SaslError, ServerExchange, Step};
use mailroom_store::{Account, Store, StoreError};

/// What a client answered to a challenge.
#[derive(Debug)]
pub enum Answer {
    /// The line, without its line end, still base64 as sent.
    Line(Vec<u8>),
    /// A line longer than the protocol allows (the exchange is malformed).
    TooLong,
}

/// A protocol's way of sending a SASL challenge and reading the answer
/// (`334 …` in SMTP, `+ …` in IMAP and POP3).
#[allow(async_fn_in_trait)]
pub trait Challenger {
    /// Why a session ended while waiting (its own type).
    type End;
    /// Sends `data` as a challenge (base64-encoded by the implementation)
    /// and reads the client's answer.
    async fn challenge(&mut self, data: &[u8]) -> Result<Answer, Self::End>;
}

/// How a login ended.
#[derive(Debug)]
pub enum Login<E> {
    /// The account, enabled, is logged in.
    Account(Account),
    /// Refused (see [`Failures::failed`] for what counts as a failure).
    Failed(SaslError),
    /// The store could not answer: a temporary failure for the client.
    Unavailable(StoreError),
    /// The session ended during the exchange.
    Ended(E),
}

/// Runs a SASL exchange for `mechanism` from its optional initial response.
pub async fn sasl<C: Challenger>(
    store: &Store,
    config: &SaslConfig,
    mechanism: Mechanism,
    initial: Option<Vec<u8>>,
    io: &mut C,
) -> Login<C::End> {
    let (mut exchange, mut step) = ServerExchange::start(mechanism, initial, config);
    loop {
        step = match step {
            Step::Challenge(data) => match io.challenge(&data).await {
                Ok(Answer::Line(line)) => exchange.respond_line(&line),
                Ok(Answer::TooLong) => return Login::Failed(SaslError::Malformed("line too long")),
                Err(end) => return Login::Ended(end),
            },
            Step::NeedCredentials(request) => match store.answer_sasl(&mut exchange, request).await
            {
                Ok(next) => next,
                Err(e) => {
                    tracing::error!(error = %e, "credential check failed");
                    return Login::Unavailable(e);
                }
            },
            Step::Success {
                authcid,
                authzid,
                final_data,
            } => {
                let Ok(address) = Address::parse(&authcid) else {
                    return Login::Failed(SaslError::AuthenticationFailed);
                };
                // Acting as someone else is not offered: an authzid must
                // name the same account.
                if let Some(z) = authzid.filter(|z| !z.is_empty())
                    && Address::parse(&z).ok().as_ref() != Some(&address)
                {
                    return Login::Failed(SaslError::AuthenticationFailed);
                }
                if let Some(data) = final_data {
                    // Success data in a last challenge, answered by an empty
                    // line (RFC 4954 §4, RFC 9051 §6.2.2, RFC 5034 §4).
                    match io.challenge(&data).await {
                        Ok(Answer::Line(line)) if line.trim_ascii() == b"*" => {
                            return Login::Failed(SaslError::Cancelled);
                        }
                        Ok(_) => {}
                        Err(end) => return Login::Ended(end),
                    }
                }
                return match enabled_account(store, &address).await {
                    Ok(Some(account)) => Login::Account(account),
                    Ok(None) => Login::Failed(SaslError::AuthenticationFailed),
                    Err(e) => Login::Unavailable(e),
                };
            }
            Step::Failure(e) => return Login::Failed(e),
        };
    }
}

/// Checks `user` and `password` (LOGIN, USER/PASS): the account when both
/// are right and it is enabled.
pub async fn password(
    store: &Store,
    user: &str,
    password: &str,
) -> Login<std::convert::Infallible> {
    let Ok(address) = Address::parse(user) else {
        return Login::Failed(SaslError::AuthenticationFailed);
    };
    match store.verify_password(&address, password).await {
        Ok(Some(account)) => Login::Account(account),
        Ok(None) => Login::Failed(SaslError::AuthenticationFailed),
        Err(e) => {
            tracing::error!(error = %e, "password check failed");
            Login::Unavailable(e)
        }
    }
}

async fn enabled_account(store: &Store, address: &Address) -> Result<Option<Account>, StoreError> {
    match store.get_account(address).await {
        Ok(a) => Ok(a.filter(|a| !a.disabled)),
        Err(e) => {
            tracing::error!(error = %e, "account lookup failed");
            Err(e)
        }
    }
}

/// The failure policy's settings (each protocol's `auth_failure_*` and
/// `max_auth_failures*` configuration).
#[derive(Debug, Clone, Copy)]
pub struct Failures {
    /// Delay after a failure, multiplied by the session's failures so far.
    pub delay: Duration,
    /// Failures in one session before it is closed.
    pub max_per_session: usize,
    /// Failures from one address within `window` before it is refused.
    pub max_per_ip: usize,
    /// How long an address's failures count.
    pub window: Duration,
}

/// What to do after [`Failures::failed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Answer the failure and go on (not counted when the client only
    /// cancelled, sent something malformed or named an unknown mechanism).
    Answer,
    /// Answer it and close the session: too many failures.
    Close,
}

impl Failures {
    /// Whether `ip` has failed too often lately to be let try at all.
    pub fn blocked(&self, throttle: &AuthThrottle, ip: IpAddr) -> bool {
        let blocked = throttle.is_blocked(ip, self.max_per_ip, self.window);
        if blocked {
            tracing::warn!(%ip, "login refused: too many recent failures from this address");
        }
        blocked
    }

    /// Counts a failed login of a session from `ip` (`session_failures` is
    /// the session's counter) and waits the growing delay.
    pub async fn failed(
        &self,
        throttle: &AuthThrottle,
        ip: IpAddr,
        session_failures: &mut usize,
        e: &SaslError,
    ) -> Verdict {
        if matches!(
            e,
            SaslError::Cancelled | SaslError::Malformed(_) | SaslError::UnsupportedMechanism
        ) {
            return Verdict::Answer;
        }
        *session_failures += 1;
        metrics::counter!("mailroom_auth_failures_total").increment(1);
        throttle.record_failure(ip, self.window);
        tracing::warn!(%ip, failures = *session_failures, "login failed");
        tokio::time::sleep(self.delay * u32::try_from(*session_failures).unwrap_or(u32::MAX)).await;
        if *session_failures >= self.max_per_session {
            Verdict::Close
        } else {
            Verdict::Answer
        }
    }
}
