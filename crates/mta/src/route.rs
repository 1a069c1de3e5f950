//! Where mail for a remote domain goes: MX lookup and address resolution
//! (RFC 5321 §5.1) through hickory-resolver.
//!
//! Invariants:
//! * MX hosts are tried by ascending preference; hosts of equal preference
//!   are shuffled for every message so load spreads over them (§5.1);
//! * a domain without MX records but with an address is its own implicit MX
//!   (§5.1, "implicit MX"); a domain without either fails permanently;
//! * a null MX (`0 .`, RFC 7505 §3) fails permanently with 5.1.10 and is
//!   never retried;
//! * NXDOMAIN for the recipient domain fails permanently (5.1.2); every other
//!   DNS trouble (timeouts, SERVFAIL, no server reachable) is temporary, so
//!   the recipient is deferred, never bounced, because of a DNS outage.
//!
//! Names are queried fully qualified (with the trailing dot), so the search
//! list of the system resolver never rewrites a recipient domain.

use std::net::{IpAddr, SocketAddr};

use hickory_proto::rr::{Name, RData};
use hickory_resolver::TokioResolver;
use hickory_resolver::net::NetError;
use rand::seq::SliceRandom;

/// One mail exchanger of a domain, in the order it should be tried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxHost {
    /// The exchange's host name, lower case, without the trailing dot.
    pub name: String,
    /// Its MX preference (0 for an implicit MX).
    pub preference: u16,
}

/// Why a destination cannot be reached, with an RFC 3463 status in the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    /// Will not get better by retrying: the recipient fails.
    Permanent(String),
    /// May get better: the recipient is deferred.
    Temporary(String),
}

impl std::fmt::Display for RouteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RouteError::Permanent(s) | RouteError::Temporary(s) => f.write_str(s),
        }
    }
}

/// Orders MX records `(preference, exchange)` for delivery: ascending
/// preference, equal preferences shuffled with `rng`, duplicates removed.
///
/// A lone record whose exchange is the root (`.`) is a null MX (RFC 7505
/// §3): the domain accepts no mail, which is a permanent 5.1.10 failure.
/// Root exchanges mixed with real ones are ignored (RFC 7505 §3 forbids the
/// mix; the real hosts are the better guess).
pub fn order_mx<R: rand::Rng + ?Sized>(
    domain: &str,
    records: &[(u16, String)],
    rng: &mut R,
) -> Result<Vec<MxHost>, RouteError> {
    let is_root = |name: &str| name.trim_end_matches('.').is_empty();
    if !records.is_empty() && records.iter().all(|(_, n)| is_root(n)) {
        return Err(RouteError::Permanent(format!(
            "5.1.10 {domain} does not accept mail (null MX, RFC 7505)"
        )));
    }
    let mut hosts: Vec<MxHost> = Vec::new();
    for (preference, name) in records {
        if is_root(name) {
            continue;
        }
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        match hosts.iter_mut().find(|h| h.name == name) {
            // The same host twice: keep its best preference.
            Some(h) => h.preference = h.preference.min(*preference),
            None => hosts.push(MxHost {
                name,
                preference: *preference,
            }),
        }
    }
    hosts.shuffle(rng);
    // A stable sort keeps the shuffled order within one preference.
    hosts.sort_by_key(|h| h.preference);
    Ok(hosts)
}

/// Looks up routes; one per process, shared by the relay workers (the
/// resolver caches answers by their TTL).
#[derive(Clone)]
pub struct Router {
    resolver: TokioResolver,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router").finish_non_exhaustive()
    }
}

fn fqdn(name: &str) -> Result<Name, RouteError> {
    let text = format!("{}.", name.trim_end_matches('.'));
    Name::from_ascii(&text).map_err(|e| {
        RouteError::Permanent(format!("5.1.2 {name:?} is not a valid domain name: {e}"))
    })
}

/// What an error of the resolver means for delivery.
enum Lookup {
    /// The name does not exist (NXDOMAIN).
    NoDomain,
    /// The name exists but has no record of that type (NOERROR, empty).
    NoRecords,
    /// Anything else: timeouts, SERVFAIL, refused, unreachable servers.
    Failed(String),
}

fn classify(e: &NetError) -> Lookup {
    if e.is_nx_domain() {
        Lookup::NoDomain
    } else if e.is_no_records_found() {
        Lookup::NoRecords
    } else {
        Lookup::Failed(e.to_string())
    }
}

impl Router {
    /// A router asking `servers` (`ip:port`), or the system's resolvers
    /// (`/etc/resolv.conf`) when the list is empty.
    pub fn new(servers: &[SocketAddr]) -> Result<Router, String> {
        Ok(Router::with_resolver(mailroom_sender_auth::dns::resolver(
            servers,
            mailroom_sender_auth::dns::DEFAULT_TIMEOUT,
        )?))
    }

    /// A router asking `resolver` (the process's shared one, see
    /// `mailroom_sender_auth::dns`).
    pub fn with_resolver(resolver: TokioResolver) -> Router {
        Router { resolver }
    }

    /// The mail exchangers of `domain`, in the order to try them.
    pub async fn mx_hosts(&self, domain: &str) -> Result<Vec<MxHost>, RouteError> {
        let name = fqdn(domain)?;
        match self.resolver.mx_lookup(name).await {
            Ok(lookup) => {
                let records: Vec<(u16, String)> = lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::MX(mx) => Some((mx.preference, mx.exchange.to_ascii())),
                        _ => None,
                    })
                    .collect();
                if records.is_empty() {
                    return self.implicit_mx(domain).await;
                }
                order_mx(domain, &records, &mut rand::rng())
            }
            Err(e) => match classify(&e) {
                Lookup::NoDomain => Err(RouteError::Permanent(format!(
                    "5.1.2 domain {domain} does not exist (NXDOMAIN)"
                ))),
                Lookup::NoRecords => self.implicit_mx(domain).await,
                Lookup::Failed(why) => Err(RouteError::Temporary(format!(
                    "4.4.3 MX lookup for {domain} failed: {why}"
                ))),
            },
        }
    }

    /// RFC 5321 §5.1: with no MX, the domain itself is the exchanger if it
    /// has an address.
    async fn implicit_mx(&self, domain: &str) -> Result<Vec<MxHost>, RouteError> {
        match self.addresses(domain).await {
            Ok(_) => Ok(vec![MxHost {
                name: domain.trim_end_matches('.').to_ascii_lowercase(),
                preference: 0,
            }]),
            Err(RouteError::Permanent(_)) => Err(RouteError::Permanent(format!(
                "5.1.2 {domain} has neither MX nor address records"
            ))),
            Err(e) => Err(e),
        }
    }

    /// The addresses of a host: IPv6 first, then IPv4, tried in that order.
    /// Permanent when the host has none (or does not exist); temporary when
    /// a lookup failed and no address was found.
    pub async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, RouteError> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        let name = fqdn(host)?;
        let (v6, v4) = tokio::join!(
            self.resolver.ipv6_lookup(name.clone()),
            self.resolver.ipv4_lookup(name)
        );
        let mut out = Vec::new();
        let mut failure = None;
        for result in [v6, v4] {
            match result {
                Ok(lookup) => out.extend(lookup.answers().iter().filter_map(|r| match &r.data {
                    RData::A(a) => Some(IpAddr::V4(a.0)),
                    RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                    _ => None,
                })),
                Err(e) => {
                    if let Lookup::Failed(why) = classify(&e) {
                        failure = Some(why);
                    }
                }
            }
        }
        match (out.is_empty(), failure) {
            (false, _) => Ok(out),
            (true, Some(why)) => Err(RouteError::Temporary(format!(
                "4.4.3 address lookup for {host} failed: {why}"
            ))),
            (true, None) => Err(RouteError::Permanent(format!(
                "5.1.2 {host} has no address records"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn recs(list: &[(u16, &str)]) -> Vec<(u16, String)> {
        list.iter().map(|(p, n)| (*p, n.to_string())).collect()
    }

    #[test]
    fn mx_hosts_are_ordered_by_preference() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let hosts = order_mx(
            "example.org",
            &recs(&[
                (20, "b.example.org."),
                (5, "A.example.org."),
                (10, "c.example.org."),
            ]),
            &mut rng,
        )
        .unwrap();
        let names: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["a.example.org", "c.example.org", "b.example.org"]);
    }

    #[test]
    fn equal_preferences_are_shuffled_but_stay_in_their_rank() {
        let records = recs(&[
            (10, "a.example."),
            (10, "b.example."),
            (10, "c.example."),
            (10, "d.example."),
            (50, "z.example."),
        ]);
        let mut firsts = std::collections::BTreeSet::new();
        for seed in 0..64 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let hosts = order_mx("example", &records, &mut rng).unwrap();
            assert_eq!(hosts.len(), 5);
            assert_eq!(
                hosts[4].name, "z.example",
                "the worse preference stays last"
            );
            firsts.insert(hosts[0].name.clone());
        }
        assert!(
            firsts.len() > 1,
            "equal preferences must not always come out in one order"
        );
    }

    #[test]
    fn null_mx_fails_permanently() {
        let mut rng = rand::rng();
        match order_mx("nomail.example", &recs(&[(0, ".")]), &mut rng) {
            Err(RouteError::Permanent(m)) => assert!(m.starts_with("5.1.10"), "{m}"),
            other => panic!("{other:?}"),
        }
        // A root exchange next to real ones is ignored.
        let hosts = order_mx(
            "mixed.example",
            &recs(&[(0, "."), (10, "mx.mixed.example.")]),
            &mut rng,
        )
        .unwrap();
        assert_eq!(hosts.len(), 1);
    }

    #[test]
    fn duplicate_exchanges_keep_the_best_preference() {
        let hosts = order_mx(
            "example",
            &recs(&[(30, "mx.example."), (10, "MX.example")]),
            &mut rand::rng(),
        )
        .unwrap();
        assert_eq!(
            hosts,
            [MxHost {
                name: "mx.example".into(),
                preference: 10
            }]
        );
    }
}
