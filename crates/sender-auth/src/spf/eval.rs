//! `check_host()` (RFC 7208 §4) over DNS: record lookup and selection
//! (§4.3–§4.5), mechanisms (§5), `redirect=` and `exp=` (§6), and the
//! processing limits (§4.6.4).
//!
//! Invariants:
//! * one [`Eval`] per top-level evaluation carries the counters, so the
//!   limits of 10 DNS-querying terms and 2 void lookups hold across
//!   includes and redirects; loops end at the term limit;
//! * a name that cannot be a DNS name (an empty or over-long label, §4.3;
//!   RFC 1035 §2.3.4) is never queried: as the domain of `check_host()` it
//!   gives `none`, as a mechanism's target it matches nothing, as an
//!   `include`/`redirect` target it is the `permerror` of a target without
//!   a record;
//! * expanded names over 253 characters lose labels on the left until they
//!   fit (§7.3);
//! * the `exp=` lookup counts against no limit and any problem with it just
//!   means no explanation (§6.2).

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;

use hickory_resolver::TokioResolver;
use hickory_resolver::proto::rr::{Name, RData, RecordType};

use super::macros::{Context, Kind, Letter, MacroString, dotted};
use super::record::{self, DualCidr, Mechanism, Qualifier, Record};
use super::{Evaluation, Outcome, Request};

/// DNS-querying terms per evaluation (§4.6.4).
const MAX_TERMS: u32 = 10;
/// Void lookups per evaluation (§4.6.4).
const MAX_VOID: u32 = 2;
/// MX records per `mx`, and names per `ptr` or `%{p}` (§4.6.4).
const MAX_NAMES: usize = 10;

/// Why an evaluation stopped before its end.
enum Stop {
    Temp(String),
    Perm(String),
}

type Step<T> = Result<T, Stop>;

/// Runs `check_host()` for `request`.
pub(super) async fn evaluate(resolver: &TokioResolver, request: Request<'_>) -> Evaluation {
    let ip = match request.ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    };
    // RFC 8616 §4: a domain in U-labels is looked up by its A-labels.
    let domain = match request.domain.is_ascii() {
        true => request.domain.to_string(),
        false => Name::from_utf8(request.domain)
            .map(|n| name_text(&n))
            .unwrap_or_else(|_| request.domain.to_string()),
    };
    let mut eval = Eval {
        resolver,
        ip,
        local: if request.local.is_empty() {
            "postmaster".into()
        } else {
            request.local.to_string()
        },
        sender_domain: domain.clone(),
        helo: request.helo.to_string(),
        receiver: request.receiver.to_string(),
        now: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default(),
        terms: 0,
        voids: 0,
    };
    let (outcome, explanation, problem) = match eval.check_host(domain, true).await {
        Ok((outcome, explanation)) => (outcome, explanation, None),
        Err(Stop::Temp(p)) => (Outcome::TempError, None, Some(p)),
        Err(Stop::Perm(p)) => (Outcome::PermError, None, Some(p)),
    };
    Evaluation {
        outcome,
        explanation,
        problem,
    }
}

struct Eval<'r> {
    resolver: &'r TokioResolver,
    ip: IpAddr,
    local: String,
    sender_domain: String,
    helo: String,
    receiver: String,
    now: u64,
    terms: u32,
    voids: u32,
}

type Boxed<'s, T> = Pin<Box<dyn Future<Output = T> + Send + 's>>;

impl Eval<'_> {
    /// §4: the result for `domain` and, for `fail` when `explain` (not for
    /// an included record, §6.2), its explanation.
    fn check_host(
        &mut self,
        domain: String,
        explain: bool,
    ) -> Boxed<'_, Step<(Outcome, Option<String>)>> {
        Box::pin(async move {
            // One trailing dot (an absolute name) is not part of `%{d}`.
            let domain = match domain.strip_suffix('.') {
                Some(d) if !d.is_empty() => d.to_string(),
                _ => domain,
            };
            // §4.3: a malformed or single-label domain has no policy.
            let Some(name) = dns_name(&domain).filter(|n| n.num_labels() >= 2) else {
                return Ok((Outcome::None, None));
            };
            let records = self.txt(&name).await.map_err(Stop::Temp)?;
            let mut spf = records.iter().filter(|r| record::is_spf_record(r));
            let Some(text) = spf.next() else {
                return Ok((Outcome::None, None));
            };
            if spf.next().is_some() {
                return Err(Stop::Perm(format!(
                    "{domain} publishes more than one SPF record"
                )));
            }
            let record = record::parse(text)
                .map_err(|e| Stop::Perm(format!("the SPF record of {domain}: {e}")))?;
            for directive in &record.directives {
                if self.matches(&directive.mechanism, &domain).await? {
                    let outcome = match directive.qualifier {
                        Qualifier::Pass => Outcome::Pass,
                        Qualifier::Fail => Outcome::Fail,
                        Qualifier::SoftFail => Outcome::SoftFail,
                        Qualifier::Neutral => Outcome::Neutral,
                    };
                    let explanation = match outcome {
                        Outcome::Fail if explain => self.explain(&record, &domain).await,
                        _ => None,
                    };
                    return Ok((outcome, explanation));
                }
            }
            let Some(redirect) = &record.redirect else {
                return Ok((Outcome::Neutral, None)); // §4.7
            };
            // §6.1: the target's result is ours; its explanation too.
            self.count()?;
            let target = self.expand(redirect, &domain).await;
            match self.check_host(target.clone(), explain).await? {
                (Outcome::None, _) => Err(Stop::Perm(format!(
                    "redirect={target} (from {domain}): no SPF record"
                ))),
                result => Ok(result),
            }
        })
    }

    /// Whether `mechanism` of the record of `domain` matches (§5).
    async fn matches(&mut self, mechanism: &Mechanism, domain: &str) -> Step<bool> {
        if mechanism.queries_dns() {
            self.count()?;
        }
        Ok(match mechanism {
            Mechanism::All => true,
            Mechanism::Ip4(net, len) => match self.ip {
                IpAddr::V4(ip) => in_network(IpAddr::V4(ip), IpAddr::V4(*net), *len),
                IpAddr::V6(_) => false,
            },
            Mechanism::Ip6(net, len) => match self.ip {
                IpAddr::V6(ip) => in_network(IpAddr::V6(ip), IpAddr::V6(*net), *len),
                IpAddr::V4(_) => false,
            },
            Mechanism::Include(spec) => {
                let target = self.expand(spec, domain).await;
                // §5.2: only the included record's pass is a match.
                match self.check_host(target.clone(), false).await? {
                    (Outcome::Pass, _) => true,
                    (Outcome::None, _) => {
                        return Err(Stop::Perm(format!(
                            "include:{target} (from {domain}): no SPF record"
                        )));
                    }
                    _ => false,
                }
            }
            Mechanism::A(spec, cidr) => {
                let Some(name) = self.target(spec.as_ref(), domain).await else {
                    return Ok(false);
                };
                let addresses = self.addresses(&name).await.map_err(Stop::Temp)?;
                if addresses.is_empty() {
                    self.void()?;
                }
                addresses.iter().any(|a| self.in_dual(*a, *cidr))
            }
            Mechanism::Mx(spec, cidr) => {
                let Some(name) = self.target(spec.as_ref(), domain).await else {
                    return Ok(false);
                };
                let exchanges: Vec<Name> = self
                    .lookup(&name, RecordType::MX)
                    .await
                    .map_err(Stop::Temp)?
                    .into_iter()
                    .filter_map(|r| match r {
                        RData::MX(mx) => Some(mx.exchange),
                        _ => None,
                    })
                    .collect();
                if exchanges.is_empty() {
                    self.void()?;
                    return Ok(false);
                }
                if exchanges.len() > MAX_NAMES {
                    return Err(Stop::Perm(format!(
                        "mx: {name} has more than {MAX_NAMES} MX records"
                    )));
                }
                for exchange in exchanges.iter().filter(|e| !e.is_root()) {
                    let addresses = self.addresses(exchange).await.map_err(Stop::Temp)?;
                    if addresses.iter().any(|a| self.in_dual(*a, *cidr)) {
                        return Ok(true);
                    }
                }
                false
            }
            Mechanism::Ptr(spec) => {
                let target = match spec {
                    None => domain.to_string(),
                    Some(spec) => self.expand(spec, domain).await,
                };
                let target = target.trim_end_matches('.').to_ascii_lowercase();
                // §5.5: a failed PTR query is no match; names that do not
                // end in the target need no validation.
                let names = match self.ptr_names().await {
                    Ok(names) if names.is_empty() => {
                        self.void()?;
                        return Ok(false);
                    }
                    Ok(names) => names,
                    Err(_) => return Ok(false),
                };
                for name in names {
                    let text = name_text(&name);
                    if (text == target || text.ends_with(&format!(".{target}")))
                        && self.validated(&name).await
                    {
                        return Ok(true);
                    }
                }
                false
            }
            Mechanism::Exists(spec) => {
                let Some(name) = self.target(Some(spec), domain).await else {
                    return Ok(false);
                };
                // §5.7: always an A query, whatever the client's family.
                let found = self
                    .lookup(&name, RecordType::A)
                    .await
                    .map_err(Stop::Temp)?;
                if found.is_empty() {
                    self.void()?;
                }
                !found.is_empty()
            }
        })
    }

    /// §4.6.4: one more DNS-querying term.
    fn count(&mut self) -> Step<()> {
        self.terms += 1;
        if self.terms > MAX_TERMS {
            return Err(Stop::Perm(format!(
                "more than {MAX_TERMS} DNS-querying terms"
            )));
        }
        Ok(())
    }

    /// §4.6.4: one more lookup that found nothing.
    fn void(&mut self) -> Step<()> {
        self.voids += 1;
        if self.voids > MAX_VOID {
            return Err(Stop::Perm(format!("more than {MAX_VOID} void lookups")));
        }
        Ok(())
    }

    /// A mechanism's target name (§4.8: `<domain>` when not given), or
    /// `None` when it cannot be queried (treated as non-existent).
    async fn target(&mut self, spec: Option<&MacroString>, domain: &str) -> Option<Name> {
        let text = match spec {
            None => domain.to_string(),
            Some(spec) => self.expand(spec, domain).await,
        };
        dns_name(&text)
    }

    /// `spec` expanded for the record of `domain`, as a name: truncated
    /// to 253 characters (§7.3).
    async fn expand(&mut self, spec: &MacroString, domain: &str) -> String {
        truncate(self.expand_text(spec, domain).await)
    }

    /// §6.2: the explanation the record of `domain` gives, if any.
    async fn explain(&mut self, record: &Record, domain: &str) -> Option<String> {
        let target = self.expand(record.exp.as_ref()?, domain).await;
        let name = dns_name(&target)?;
        let records = self.txt(&name).await.ok()?;
        let [text] = records.as_slice() else {
            return None;
        };
        let text = std::str::from_utf8(text).ok().filter(|t| t.is_ascii())?;
        let explanation = MacroString::parse(text, Kind::Explanation).ok()?;
        Some(self.expand_text(&explanation, domain).await)
    }

    /// `text` expanded for the record of `domain` (§7.3).
    async fn expand_text(&mut self, text: &MacroString, domain: &str) -> String {
        let ptr = if text.uses(Letter::Ptr) {
            self.validated_name(domain).await
        } else {
            None
        };
        text.expand(&Context {
            local: &self.local,
            sender_domain: &self.sender_domain,
            domain,
            ip: self.ip,
            helo: &self.helo,
            receiver: &self.receiver,
            ptr: ptr.as_deref(),
            now: self.now,
        })
    }

    /// `%{p}` (§7.3): a validated name of the client, preferring `domain`
    /// itself, then its subdomains; `None` (`unknown`) when there is none.
    async fn validated_name(&mut self, domain: &str) -> Option<String> {
        let names = self.ptr_names().await.ok()?;
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let mut validated = Vec::new();
        for name in names {
            if self.validated(&name).await {
                validated.push(name_text(&name));
            }
        }
        validated
            .iter()
            .find(|n| **n == domain)
            .or_else(|| {
                validated
                    .iter()
                    .find(|n| n.ends_with(&format!(".{domain}")))
            })
            .or(validated.first())
            .cloned()
    }

    /// The first 10 names the client's address maps to (§4.6.4, §5.5).
    async fn ptr_names(&self) -> Result<Vec<Name>, String> {
        let reverse = match self.ip {
            IpAddr::V4(_) => format!("{}.in-addr.arpa", reversed(self.ip)),
            IpAddr::V6(_) => format!("{}.ip6.arpa", reversed(self.ip)),
        };
        let name = dns_name(&reverse).ok_or("no reverse name")?;
        Ok(self
            .lookup(&name, RecordType::PTR)
            .await?
            .into_iter()
            .filter_map(|r| match r {
                RData::PTR(ptr) => Some(ptr.0),
                _ => None,
            })
            .take(MAX_NAMES)
            .collect())
    }

    /// Whether `name` has an address record of the client's family equal
    /// to the client's address (§5.5); lookup errors mean no.
    async fn validated(&self, name: &Name) -> bool {
        self.addresses(name)
            .await
            .is_ok_and(|addresses| addresses.contains(&self.ip))
    }

    /// The A (IPv4 client) or AAAA (IPv6 client) addresses of `name`.
    async fn addresses(&self, name: &Name) -> Result<Vec<IpAddr>, String> {
        let rtype = match self.ip {
            IpAddr::V4(_) => RecordType::A,
            IpAddr::V6(_) => RecordType::AAAA,
        };
        Ok(self
            .lookup(name, rtype)
            .await?
            .into_iter()
            .filter_map(|r| match r {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            })
            .collect())
    }

    /// Whether `address` is in the client's network of the `a`/`mx` lengths.
    fn in_dual(&self, address: IpAddr, cidr: DualCidr) -> bool {
        let len = match address {
            IpAddr::V4(_) => cidr.v4,
            IpAddr::V6(_) => cidr.v6,
        };
        in_network(self.ip, address, len)
    }

    /// The TXT records of `name`, each with its strings joined (§3.3).
    async fn txt(&self, name: &Name) -> Result<Vec<Vec<u8>>, String> {
        Ok(self
            .lookup(name, RecordType::TXT)
            .await?
            .into_iter()
            .filter_map(|r| match r {
                RData::TXT(txt) => Some(
                    txt.txt_data
                        .iter()
                        .flat_map(|s| s.iter().copied())
                        .collect(),
                ),
                _ => None,
            })
            .collect())
    }

    /// The records of `rtype` at `name` (CNAMEs followed by the resolver);
    /// none for NXDOMAIN or an empty answer, an error for anything else.
    async fn lookup(&self, name: &Name, rtype: RecordType) -> Result<Vec<RData>, String> {
        match self.resolver.lookup(name.clone(), rtype).await {
            Ok(lookup) => Ok(lookup
                .answers()
                .iter()
                .filter(|r| r.data.record_type() == rtype)
                .map(|r| r.data.clone())
                .collect()),
            Err(e) if e.is_no_records_found() => Ok(Vec::new()),
            Err(e) => Err(format!("{rtype} lookup of {name} failed: {e}")),
        }
    }
}

/// `text` as a DNS name to query, or `None` when it cannot be one: empty,
/// an empty label (but a trailing dot), or a label over 63 octets
/// (§4.3, RFC 1035 §2.3.4). Any other octets are sent as they are.
fn dns_name(text: &str) -> Option<Name> {
    let text = text.strip_suffix('.').unwrap_or(text);
    if text.is_empty() || text.len() > 253 {
        return None;
    }
    let labels: Vec<&[u8]> = text.split('.').map(str::as_bytes).collect();
    if labels.iter().any(|l| l.is_empty() || l.len() > 63) {
        return None;
    }
    Name::from_labels(labels).ok()
}

/// A name as lower-case text without the trailing dot.
fn name_text(name: &Name) -> String {
    name.iter()
        .map(|l| String::from_utf8_lossy(l).to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join(".")
}

/// §7.3: labels removed on the left until the name fits 253 characters.
fn truncate(mut name: String) -> String {
    while name.trim_end_matches('.').len() > 253 {
        match name.find('.') {
            Some(dot) => {
                name.drain(..=dot);
            }
            None => break,
        }
    }
    name
}

/// The `i` value reversed: the labels of the PTR name before
/// `in-addr.arpa`/`ip6.arpa`.
fn reversed(ip: IpAddr) -> String {
    let d = dotted(ip);
    d.rsplit('.').collect::<Vec<_>>().join(".")
}

/// Whether `ip` is in `network/len` (families must agree).
fn in_network(ip: IpAddr, network: IpAddr, len: u8) -> bool {
    match (ip, network) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_match_by_prefix() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(in_network(ip("192.0.2.77"), ip("192.0.2.0"), 24));
        assert!(!in_network(ip("192.0.3.77"), ip("192.0.2.0"), 24));
        assert!(in_network(ip("1.2.3.4"), ip("9.9.9.9"), 0));
        assert!(in_network(ip("1.2.3.4"), ip("1.2.3.4"), 32));
        assert!(in_network(ip("2001:db8::1"), ip("2001:db8::"), 32));
        assert!(in_network(ip("1234::1"), ip("::"), 0));
        assert!(!in_network(ip("1.2.3.4"), ip("::ffff:1.2.3.4"), 0));
    }

    #[test]
    fn names_that_cannot_be_queried() {
        assert!(dns_name("example.com").is_some());
        assert!(dns_name("example.com.").is_some());
        assert!(dns_name("foo:bar/baz.example.com").is_some());
        assert!(dns_name("macro%percent  space%20url-space.example.com").is_some());
        assert!(dns_name("").is_none());
        assert!(dns_name("mail.example...com").is_none());
        assert!(dns_name(&format!("{}.example.com", "a".repeat(64))).is_none());
        let long = format!("{}example.com", "abcdefghi.".repeat(30));
        let cut = truncate(long.clone());
        assert!(cut.len() <= 253 && long.ends_with(&cut) && cut.starts_with("abcdefghi."));
    }

    #[test]
    fn reverse_names() {
        assert_eq!(reversed("192.0.2.3".parse().unwrap()), "3.2.0.192");
        assert_eq!(
            reversed("2001:db8::cb01".parse().unwrap()),
            "1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2"
        );
    }
}
