//! Checks of mail arriving on port 25: SPF, DKIM, ARC, DMARC and the
//! decision they lead to.
//!
//! Invariants:
//! * exactly one `Authentication-Results` field (RFC 8601 §2.2) with our
//!   host name as authserv-id, and one `Received-SPF` (RFC 7208 §9.1), go on
//!   top of every checked message; any `Authentication-Results` already in
//!   the message that claims our authserv-id is removed first
//!   ([`strip_our_results`], RFC 8601 §5), so what a filter or a client
//!   trusts is only ever what we found;
//! * several DMARC records at the author domain mean no DMARC policy
//!   applies (RFC 7489 §6.6.3; `mail-auth` would take the first);
//! * SPF is checked for HELO and MAIL FROM (RFC 7208 §2.3, §2.4; for the
//!   null sender the HELO result stands for MAIL FROM) by our own evaluator
//!   ([`crate::spf`], with the RFC's limits), not `mail-auth`'s; its result
//!   is handed to `mail-auth`'s DMARC as the `SpfOutput` it takes;
//! * DKIM: RSA-SHA1 signatures are never verified and count as `permerror`
//!   (RFC 8301 §3.1); at most `max_dkim_signatures` others are checked, so
//!   a message with a thousand signatures costs no more than one with five;
//! * the decision (see [`Action`]) follows the message's
//!   [`Decisions`](crate::policy::Decisions): DMARC `p=reject` failing →
//!   by default refused with `550 5.7.1`; `p=quarantine` → by default
//!   delivered to Junk; SPF `fail` without a DMARC record → by default
//!   delivered, marked (when refused, the reply carries the domain's `exp=`
//!   explanation, RFC 7208 §8.4); `softfail`/`neutral` → marked only; a DNS temporary
//!   error on a check that decides the outcome (one whose failure would
//!   not only be marked) → `451` (the sender retries), never a silent pass;
//! * all lookups go through one resolver with a per-query timeout, and the
//!   whole check has a deadline: past it, the answer is `451 4.7.0`.

use std::net::IpAddr;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use mail_auth::common::crypto::Algorithm;
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::DkimError;
use mail_auth::dmarc::Policy;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::{
    AuthenticatedMessage, AuthenticationResults, DkimOutput, DmarcResult, Error,
    MessageAuthenticator, ReceivedSpf,
};
pub use mail_auth::{SpfOutput, SpfResult};

use crate::policy::{Decisions, Handling};
use crate::spf;

/// The most of a domain's SPF explanation an SMTP reply repeats.
const MAX_EXPLANATION: usize = 200;

/// The limits of the checks (what failures do is per message: [`Decisions`]).
#[derive(Debug, Clone)]
pub struct InboundPolicy {
    /// DKIM signatures checked per message (RFC 6376 §6.1 lets a verifier
    /// limit them); more are ignored.
    pub max_dkim_signatures: usize,
    /// The longest all checks of one message may take.
    pub deadline: Duration,
}

impl Default for InboundPolicy {
    fn default() -> Self {
        InboundPolicy {
            max_dkim_signatures: 5,
            deadline: Duration::from_secs(30),
        }
    }
}

/// What the session does with the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Accept and deliver.
    Accept,
    /// Accept and deliver to the recipients' Junk mailboxes (DMARC quarantine).
    Quarantine,
    /// Refuse permanently: `code status text`.
    Reject(u16, &'static str, String),
    /// Refuse for now; the sender retries: `code status text`.
    TempFail(u16, &'static str, String),
}

/// The result of the checks.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// `Authentication-Results` and `Received-SPF`, folded, CRLF-terminated,
    /// to put on top of the message.
    pub headers: String,
    /// The decision.
    pub action: Action,
}

/// The SMTP facts the checks need.
#[derive(Debug, Clone, Copy)]
pub struct Envelope<'a> {
    /// The client's address.
    pub ip: IpAddr,
    /// The EHLO/HELO argument as sent.
    pub helo: &'a str,
    /// The MAIL FROM mailbox, `""` for the null sender.
    pub mail_from: &'a str,
}

/// Runs the checks; one per process (it holds the resolver).
#[derive(Clone)]
pub struct Checker {
    auth: MessageAuthenticator,
    hostname: String,
    policy: InboundPolicy,
}

impl std::fmt::Debug for Checker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checker")
            .field("hostname", &self.hostname)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl Checker {
    /// A checker asking `resolver`, writing `hostname` as authserv-id.
    pub fn new(resolver: TokioResolver, hostname: &str, policy: InboundPolicy) -> Self {
        Checker {
            auth: MessageAuthenticator(resolver),
            hostname: hostname.to_ascii_lowercase(),
            policy,
        }
    }

    /// Our authserv-id.
    pub fn authserv_id(&self) -> &str {
        &self.hostname
    }

    /// Checks `message` (our forged-results removal already done, see
    /// [`strip_our_results`]) received with `envelope`; `decisions` say what
    /// failures do (see [`crate::policy::Policies::for_message`]).
    pub async fn check(
        &self,
        envelope: Envelope<'_>,
        message: &[u8],
        decisions: Decisions,
    ) -> Verdict {
        let checks = self.evaluate(envelope, message, decisions);
        match tokio::time::timeout(self.policy.deadline, checks).await {
            Ok(verdict) => verdict,
            Err(_) => Verdict {
                headers: String::new(),
                action: Action::TempFail(
                    451,
                    "4.7.0",
                    "sender authentication checks timed out, try again later".into(),
                ),
            },
        }
    }

    async fn evaluate(
        &self,
        envelope: Envelope<'_>,
        message: &[u8],
        decisions: Decisions,
    ) -> Verdict {
        let ip = envelope.ip;
        let helo = helo_domain(envelope.helo);
        let host = self.hostname.as_str();

        let (spf_helo, spf_mail_from) = self
            .spf_identities(ip, envelope.helo, envelope.mail_from)
            .await;
        let mail_from_domain = mail_from_domain(envelope.mail_from, helo);

        let Some(mut parsed) = AuthenticatedMessage::parse(message) else {
            // Not a message a DKIM or DMARC check can read: SPF still stands.
            let headers = format!(
                "{}{}",
                AuthenticationResults::new(host)
                    .with_spf_ehlo_result(&spf_helo, ip, envelope.helo)
                    .with_spf_mailfrom_result(&spf_mail_from, ip, envelope.mail_from, envelope.helo)
                    .to_header(),
                ReceivedSpf::new(&spf_mail_from, ip, envelope.helo, envelope.mail_from, host)
                    .to_header()
            );
            let action = without_dmarc(&spf_mail_from, decisions);
            return Verdict { headers, action };
        };

        // RFC 8301 §3.1: RSA-SHA1 is not verified; the cap bounds the work.
        let (refused, mut checked): (Vec<_>, Vec<_>) = std::mem::take(&mut parsed.dkim_headers)
            .into_iter()
            .partition(|h| h.header.a == Algorithm::RsaSha1);
        if checked.len() > self.policy.max_dkim_signatures {
            tracing::info!(
                signatures = checked.len(),
                checked = self.policy.max_dkim_signatures,
                "only the first DKIM signatures are checked"
            );
            checked.truncate(self.policy.max_dkim_signatures);
        }
        parsed.dkim_headers = checked;
        let parsed = parsed;
        let mut dkim = self.auth.verify_dkim(&parsed).await;
        for h in &refused {
            dkim.push(
                DkimOutput::perm_err(Error::Dkim(DkimError::UnsupportedAlgorithm))
                    .with_signature(&h.header),
            );
        }
        let arc = self.auth.verify_arc(&parsed).await;
        let dmarc = self
            .auth
            .verify_dmarc(DmarcParameters::new(
                &parsed,
                &dkim,
                &mail_from_domain,
                &spf_mail_from,
            ))
            .await;

        let results = AuthenticationResults::new(host)
            .with_dkim_results(&dkim, parsed.from())
            .with_spf_ehlo_result(&spf_helo, ip, envelope.helo)
            .with_spf_mailfrom_result(&spf_mail_from, ip, envelope.mail_from, envelope.helo)
            .with_arc_result(&arc, ip)
            .with_dmarc_result(&dmarc);
        let headers = format!(
            "{}{}",
            results.to_header(),
            ReceivedSpf::new(&spf_mail_from, ip, envelope.helo, envelope.mail_from, host)
                .to_header()
        );

        // RFC 7489 §6.6.3: several records at the author domain mean no
        // policy applies (mail-auth would take the first).
        let several =
            dmarc.dmarc_record().is_some() && dmarc_records(&self.auth.0, dmarc.domain()).await > 1;
        let action = match dmarc.result() {
            _ if several => without_dmarc(&spf_mail_from, decisions),
            DmarcResult::Pass => Action::Accept,
            // No record, or no single author domain (RFC 7489 §6.6.1).
            DmarcResult::None => without_dmarc(&spf_mail_from, decisions),
            // The policy record itself could not be read: it may say reject.
            DmarcResult::TempError(_) if dmarc.dmarc_record().is_none() => {
                if decisions.any_decides() {
                    temp_dmarc(dmarc.domain())
                } else {
                    Action::Accept
                }
            }
            // A retry could turn it into a pass: only then may it decide.
            DmarcResult::TempError(_) => match dmarc_handling(dmarc.policy(), decisions) {
                Handling::Mark => Action::Accept,
                Handling::Junk | Handling::Reject => temp_dmarc(dmarc.domain()),
            },
            DmarcResult::Fail(_) | DmarcResult::PermError(_) => {
                // RFC 7489 §6.6.4: `pct=` applies the policy to that share
                // of failing mail, the next milder one to the rest
                // (`mail-auth` follows DMARCbis, which dropped `pct=`).
                let pct = dmarc_pct(&self.auth.0, dmarc.domain()).await;
                let policy = match dmarc.policy() {
                    p @ (Policy::Reject | Policy::Quarantine)
                        if pct < 100 && rand::random_range(0..100u8) >= pct =>
                    {
                        tracing::info!(
                            domain = dmarc.domain(),
                            pct,
                            "DMARC policy sampled out by pct="
                        );
                        milder(p)
                    }
                    p => p,
                };
                let p = match policy {
                    Policy::Reject => "reject",
                    _ => "quarantine",
                };
                handle(
                    dmarc_handling(policy, decisions),
                    Action::Reject(
                        550,
                        "5.7.1",
                        format!(
                            "message refused: it fails the DMARC policy (p={p}) of {}",
                            dmarc.domain()
                        ),
                    ),
                )
            }
        };
        Verdict { headers, action }
    }

    /// SPF for the HELO identity (RFC 7208 §2.3) and the MAIL FROM identity
    /// (§2.4; for the null sender, `postmaster@<helo>`, i.e. the HELO
    /// result), as the checks of a message find them.
    pub async fn spf_identities(
        &self,
        ip: IpAddr,
        helo_as_sent: &str,
        mail_from: &str,
    ) -> (SpfOutput, SpfOutput) {
        let helo = helo_domain(helo_as_sent);
        // Only a domain name can be checked.
        let spf_helo = async {
            match helo {
                Some(h) => self.spf(ip, h, "postmaster", helo_as_sent).await,
                None => SpfOutput::new(helo_as_sent.to_string()).with_result(SpfResult::None),
            }
        };
        if mail_from.is_empty() {
            let spf_helo = spf_helo.await;
            return (spf_helo.clone(), spf_helo);
        }
        let domain = mail_from_domain(mail_from, helo);
        let local = mail_from.rsplit_once('@').map_or("", |(l, _)| l);
        // The two identities are independent: checked side by side, so a
        // slow one does not delay the other.
        tokio::join!(
            spf_helo,
            self.spf(ip, &domain, local, helo.unwrap_or(helo_as_sent))
        )
    }

    /// SPF by our evaluator, as the `SpfOutput` `mail-auth`'s DMARC and
    /// header writers take.
    async fn spf(&self, ip: IpAddr, domain: &str, local: &str, helo: &str) -> SpfOutput {
        let evaluation = spf::check_host(
            &self.auth.0,
            spf::Request {
                ip,
                domain,
                local,
                helo,
                receiver: &self.hostname,
            },
        )
        .await;
        if let Some(problem) = &evaluation.problem {
            tracing::info!(domain, %ip, outcome = ?evaluation.outcome, problem, "SPF");
        }
        let result = match evaluation.outcome {
            spf::Outcome::None => SpfResult::None,
            spf::Outcome::Neutral => SpfResult::Neutral,
            spf::Outcome::Pass => SpfResult::Pass,
            spf::Outcome::Fail => SpfResult::Fail,
            spf::Outcome::SoftFail => SpfResult::SoftFail,
            spf::Outcome::TempError => SpfResult::TempError,
            spf::Outcome::PermError => SpfResult::PermError,
        };
        let output = SpfOutput::new(domain.to_string()).with_result(result);
        match evaluation.explanation {
            Some(explanation) => output.with_explanation(explanation),
            None => output,
        }
    }
}

/// The domain SPF checks for MAIL FROM and DMARC aligns with: the
/// sender's, or the HELO name for the null sender.
fn mail_from_domain(mail_from: &str, helo: Option<&str>) -> String {
    match mail_from.rsplit_once('@') {
        Some((_, d)) => d.to_ascii_lowercase(),
        None => helo.unwrap_or_default().to_ascii_lowercase(),
    }
}

/// The decision when no DMARC policy applies: SPF alone. Only `fail` may
/// change delivery (`softfail` and `neutral` are marked); a temporary error
/// asks for a retry when a `fail` would have changed it.
fn without_dmarc(spf: &SpfOutput, decisions: Decisions) -> Action {
    let handling = decisions.spf_fail_without_dmarc;
    match spf.result() {
        SpfResult::Fail => handle(
            handling,
            Action::Reject(
                550,
                "5.7.23",
                match spf.explanation() {
                    // RFC 7208 §8.4: the domain's explanation (§6.2) may be
                    // given in the reply. It is the sender's text (and may
                    // hold the envelope's local-part): only printable ASCII
                    // is kept, cut short.
                    Some(why) => format!(
                        "message refused: SPF check of {} failed: {}",
                        spf.domain(),
                        why.chars()
                            .filter(|c| c.is_ascii_graphic() || *c == ' ')
                            .take(MAX_EXPLANATION)
                            .collect::<String>()
                    ),
                    None => format!("message refused: SPF check of {} failed", spf.domain()),
                },
            ),
        ),
        SpfResult::TempError if handling != Handling::Mark => Action::TempFail(
            451,
            "4.7.24",
            format!(
                "SPF check of {} could not be completed, try again later",
                spf.domain()
            ),
        ),
        _ => Action::Accept,
    }
}

/// What a DMARC failure under `policy` does (`p=none`: nothing).
fn dmarc_handling(policy: Policy, decisions: Decisions) -> Handling {
    match policy {
        Policy::Reject => decisions.dmarc_reject,
        Policy::Quarantine => decisions.dmarc_quarantine,
        Policy::None | Policy::Unspecified => Handling::Mark,
    }
}

/// The action for a failure handled as `handling`, refused with `refusal`.
fn handle(handling: Handling, refusal: Action) -> Action {
    match handling {
        Handling::Mark => Action::Accept,
        Handling::Junk => Action::Quarantine,
        Handling::Reject => refusal,
    }
}

fn temp_dmarc(domain: &str) -> Action {
    Action::TempFail(
        451,
        "4.7.0",
        format!("DMARC check of {domain} could not be completed, try again later"),
    )
}

/// The next milder DMARC policy (RFC 7489 §6.6.4).
fn milder(policy: Policy) -> Policy {
    match policy {
        Policy::Reject => Policy::Quarantine,
        _ => Policy::None,
    }
}

/// The `pct=` of the DMARC record that applies to `domain` (its own, else
/// the nearest parent's, as the policy lookup walks up): 100 when absent or
/// not a number from 0 to 100 (RFC 7489 §6.3).
async fn dmarc_pct(resolver: &TokioResolver, domain: &str) -> u8 {
    let mut name = domain.trim_end_matches('.');
    // The same bound on the walk as the policy lookup's (DMARCbis §4.10:
    // at most 8 lookups).
    for _ in 0..8 {
        if let Ok(records) = crate::dns::txt_records(resolver, &format!("_dmarc.{name}")).await
            && let Some(record) = records.iter().find(|r| is_dmarc_record(r))
        {
            return pct_of(record);
        }
        match name.split_once('.') {
            Some((_, parent)) if parent.contains('.') => name = parent,
            _ => break,
        }
    }
    100
}

/// The `pct=` of a DMARC record: 100 when absent or not a number from 0
/// to 100 (RFC 7489 §6.3).
pub(crate) fn pct_of(record: &[u8]) -> u8 {
    String::from_utf8_lossy(record)
        .split(';')
        .filter_map(|tag| tag.split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("pct"))
        .and_then(|(_, v)| v.trim().parse::<u8>().ok())
        .filter(|&p| p <= 100)
        .unwrap_or(100)
}

/// Whether a TXT string is a DMARC record (RFC 7489 §6.6.3: it starts
/// with `v=DMARC1`; other TXT records at `_dmarc` are ignored).
pub(crate) fn is_dmarc_record(txt: &[u8]) -> bool {
    txt.len() >= 8 && txt[..8].eq_ignore_ascii_case(b"v=DMARC1")
}

/// How many DMARC records (`v=DMARC1`) `_dmarc.<domain>` publishes.
async fn dmarc_records(resolver: &TokioResolver, domain: &str) -> usize {
    crate::dns::txt_records(resolver, &format!("_dmarc.{domain}"))
        .await
        .map(|records| records.iter().filter(|r| is_dmarc_record(r)).count())
        .unwrap_or(0)
}

/// The HELO argument when it is a domain name (not an address literal).
fn helo_domain(helo: &str) -> Option<&str> {
    let h = helo.trim_end_matches('.');
    (!h.is_empty() && !h.starts_with('[') && h.contains('.') && h.parse::<IpAddr>().is_err())
        .then_some(h)
}

/// Removes every `Authentication-Results` header field whose authserv-id is
/// `authserv_id` (RFC 8601 §5: a forged one would be trusted downstream).
/// Fields of other authserv-ids and everything else are kept byte for byte.
pub fn strip_our_results(message: &[u8], authserv_id: &str) -> Vec<u8> {
    let end = header_end(message);
    let mut out = Vec::with_capacity(message.len());
    let mut i = 0;
    let mut removed = 0;
    while i < end {
        // One field: its first line and every continuation line.
        let mut j = next_line(message, i, end);
        while j < end && matches!(message[j], b' ' | b'\t') {
            j = next_line(message, j, end);
        }
        let field = &message[i..j];
        if claims(field, authserv_id) {
            removed += 1;
        } else {
            out.extend_from_slice(field);
        }
        i = j;
    }
    if removed > 0 {
        tracing::info!(
            removed,
            "removed Authentication-Results claiming our authserv-id"
        );
    }
    out.extend_from_slice(&message[end..]);
    out
}

/// Where the header section ends (the start of the blank line, or the end).
fn header_end(message: &[u8]) -> usize {
    let mut i = 0;
    while i < message.len() {
        if message[i..].starts_with(b"\r\n") || message[i] == b'\n' {
            return i;
        }
        i = next_line(message, i, message.len());
    }
    message.len()
}

fn next_line(message: &[u8], from: usize, end: usize) -> usize {
    match message[from..end].iter().position(|&b| b == b'\n') {
        Some(p) => from + p + 1,
        None => end,
    }
}

/// Whether one raw header field is an `Authentication-Results` of `id`.
pub(crate) fn claims(field: &[u8], id: &str) -> bool {
    const NAME: &[u8] = b"authentication-results";
    // The name as the most lenient reader sees it, for a field that any
    // reader takes for ours must go. mail-parser (found by the `dmarc` fuzz
    // target) skips colons before a name and white space anywhere in it
    // (`:Authentication-Result s:`), and a line that ends before the colon
    // holds no name: one may start on the next line, even an indented one.
    let mut name = Vec::new();
    let mut colon = None;
    for (i, &b) in field.iter().enumerate() {
        match b {
            b'\n' => name.clear(),
            b':' if !name.is_empty() => {
                colon = Some(i);
                break;
            }
            _ if b == b':' || b.is_ascii_whitespace() => {}
            _ => name.push(b),
        }
    }
    let Some(colon) = colon else {
        return false;
    };
    if !name.eq_ignore_ascii_case(NAME) {
        return false;
    }
    // The authserv-id is the first token of the value, after any CFWS
    // (RFC 8601 §2.2), up to `;`, whitespace or a comment.
    let value = strip_cfws(&field[colon + 1..]);
    let token_end = value
        .iter()
        .position(|&b| matches!(b, b';' | b' ' | b'\t' | b'\r' | b'\n' | b'('))
        .unwrap_or(value.len());
    let token = &value[..token_end];
    let token = token.strip_suffix(b".").unwrap_or(token);
    token.eq_ignore_ascii_case(id.trim_end_matches('.').as_bytes())
}

/// Leading whitespace and (nested) comments removed.
fn strip_cfws(mut s: &[u8]) -> &[u8] {
    loop {
        s = s.trim_ascii_start();
        if s.first() != Some(&b'(') {
            return s;
        }
        let mut depth = 0usize;
        let mut k = 0;
        while k < s.len() {
            match s[k] {
                b'\\' => k += 1,
                b'(' => depth += 1,
                b')' => {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                _ => {}
            }
            k += 1;
        }
        s = s.get(k + 1..).unwrap_or_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_authentication_results_are_removed() {
        let msg = b"Authentication-Results: mx.example.test;\r\n\tspf=pass smtp.mailfrom=a@b\r\n\
Subject: hi\r\n\
authentication-results: (forged) MX.Example.Test.; dkim=pass\r\n\
Authentication-Results: other.example; dmarc=pass\r\n\
Authentication-Results: mx.example.test.evil; dmarc=pass\r\n\
\r\n\
Authentication-Results: mx.example.test; in the body\r\n";
        let out = strip_our_results(msg, "mx.example.test");
        assert_eq!(
            out,
            b"Subject: hi\r\n\
Authentication-Results: other.example; dmarc=pass\r\n\
Authentication-Results: mx.example.test.evil; dmarc=pass\r\n\
\r\n\
Authentication-Results: mx.example.test; in the body\r\n"
                .to_vec()
        );
    }

    /// Found by the `dmarc` fuzz target: mail-parser (and so anything
    /// built on it downstream) reads `Authentication-Result s:`,
    /// `:Authentication-Results:` and a name on the line after one without
    /// a colon as `Authentication-Results`; such fields claiming our id went
    /// through untouched.
    #[test]
    fn a_field_name_with_white_space_inside_is_ours_too() {
        let msg = b"Authentication-Result s: (forged) mx.example.test.;\r\n\tdmarc=pass\r\n\
Authentication -Results : mx.example.test; spf=pass\r\n\
\tindented\r\n\
:Authentication-Results: mx.example.test\r\n\
no colon here\r\n\tAuthentication-Results: mx.example.test\r\n\
From: a@b.example\r\n\r\n";
        assert_eq!(
            strip_our_results(msg, "mx.example.test"),
            b"From: a@b.example\r\n\r\n".to_vec()
        );
        crate::fuzz::dmarc(msg);
    }

    #[test]
    fn a_message_without_body_or_our_results_is_unchanged() {
        for msg in [
            &b"Subject: x\r\n"[..],
            b"",
            b"Subject: x\r\n\r\n",
            b"\r\nbody",
        ] {
            assert_eq!(strip_our_results(msg, "mx.example.test"), msg.to_vec());
        }
    }

    #[test]
    fn helo_must_be_a_domain_to_be_checked() {
        assert_eq!(helo_domain("mx.example.test"), Some("mx.example.test"));
        assert_eq!(helo_domain("[192.0.2.1]"), None);
        assert_eq!(helo_domain("192.0.2.1"), None);
        assert_eq!(helo_domain("localhost"), None);
    }
}
