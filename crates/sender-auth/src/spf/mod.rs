//! Our SPF evaluator: RFC 7208's `check_host()` for the HELO and MAIL FROM
//! identities.
//!
//! * [`record`]: the record grammar (§4.5, §5, §6, §12);
//! * [`macros`]: macro strings and their expansion (§7);
//! * [`eval`]: `check_host()` itself (§4, §5, §6) over DNS.
//!
//! Why ours and not `mail-auth`'s: the OpenSPF suite found 51 deviations in
//! that crate's SPF (syntax errors accepted, valid syntax refused, invalid
//! target names looked up, IPv4 clients matched against `ip6`, void lookups
//! not counted, two records not a `permerror`); see
//! `docs/ARCHITECTURE.md`, departure 37. DKIM, ARC and DMARC stay with
//! `mail-auth`, which takes our result as its SPF input.
//!
//! Invariants:
//! * every lookup goes through the one resolver the caller hands in
//!   ([`crate::dns`]), so its cache, servers and per-query timeout apply;
//! * the work is bounded: at most 10 DNS-querying terms (`include`, `a`,
//!   `mx`, `ptr`, `exists`, `redirect`) per evaluation, includes and
//!   redirects included, and more is a `permerror`; more than 2 void
//!   lookups is a `permerror`; an `mx` with more than 10 MX records is a
//!   `permerror`; `ptr` and `%{p}` look at no more than 10 names (§4.6.4);
//!   and the whole evaluation has a deadline ([`MAX_TIME`]), past which the
//!   result is `temperror`;
//! * a DNS failure other than NXDOMAIN or an empty answer is `temperror`,
//!   never a guess (§2.6.6), except where the RFC says the term just does
//!   not match (`ptr` §5.5, `%{p}` §7.3) or no explanation is given (§6.2);
//! * an IPv4-mapped IPv6 client is treated as the IPv4 client it is (§5),
//!   and a domain in U-labels is looked up by its A-labels (RFC 8616 §4);
//! * only `fail` carries an explanation, the one the record that failed
//!   points at with `exp=` (never an included record's, §6.2).

pub mod eval;
pub mod macros;
pub mod record;

use std::net::IpAddr;
use std::time::Duration;

use hickory_resolver::TokioResolver;

/// The longest one `check_host()` may take (§4.6.4 asks for at least 20
/// seconds before giving up).
pub const MAX_TIME: Duration = Duration::from_secs(20);

/// The results of §2.6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// No SPF record, or no domain to check.
    None,
    /// The domain states nothing about the client.
    Neutral,
    /// The client is authorized.
    Pass,
    /// The client is not authorized.
    Fail,
    /// Probably not authorized.
    SoftFail,
    /// A transient (DNS) error; a later check may succeed.
    TempError,
    /// The published records could not be interpreted.
    PermError,
}

/// The result of an evaluation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluation {
    /// The result.
    pub outcome: Outcome,
    /// For `fail`, the domain's explanation (§6.2), when it gave one.
    pub explanation: Option<String>,
    /// For the errors, what went wrong (for logs).
    pub problem: Option<String>,
}

/// The inputs of `check_host()` (§4.1).
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The SMTP client's address.
    pub ip: IpAddr,
    /// The domain to check: the MAIL FROM domain, or the HELO name.
    pub domain: &'a str,
    /// The local-part of MAIL FROM (`postmaster` is used when empty, §4.3).
    pub local: &'a str,
    /// The HELO/EHLO argument, for `%{h}`.
    pub helo: &'a str,
    /// Our host name, for `%{r}`.
    pub receiver: &'a str,
}

/// Evaluates SPF for `request`, every lookup through `resolver`.
pub async fn check_host(resolver: &TokioResolver, request: Request<'_>) -> Evaluation {
    match tokio::time::timeout(MAX_TIME, eval::evaluate(resolver, request)).await {
        Ok(evaluation) => evaluation,
        Err(_) => Evaluation {
            outcome: Outcome::TempError,
            explanation: None,
            problem: Some(format!(
                "SPF evaluation of {} took longer than {MAX_TIME:?}",
                request.domain
            )),
        },
    }
}
