//! The receiving policy: what a failed check does to a message, per
//! recipient domain with a global default.
//!
//! Invariants:
//! * every domain's policy is complete (the configuration's unset keys are
//!   resolved to the global ones before they get here), and a domain
//!   without one of its own gets the global policy; domains are matched
//!   exactly (lower case, IDNA A-labels, no trailing dot), a subdomain
//!   does not inherit its parent's policy;
//! * one message gets one decision, whatever its recipients: when they
//!   are in domains with different policies, [`Policies::for_message`]
//!   takes the stricter of each setting (`reject` over `junk` over `mark`),
//!   and the checks are skipped only when every recipient domain skips
//!   them for this client (checks off, or the client is one of its trusted
//!   relays). A lenient domain never weakens what a strict one asked for;
//!   the price is that its recipients share the strict domain's outcome
//!   for that one message (a sender who is refused retries or splits);
//! * SPF `softfail` and `neutral` (RFC 7208 §8.5, §8.2) are never more than
//!   marked; DMARC `p=none` never changes delivery (RFC 7489 §6.3).

use std::collections::HashMap;
use std::net::IpAddr;

/// What a failed check does. Ordered from the mildest to the strictest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Handling {
    /// Deliver it, with the result in `Authentication-Results`.
    #[default]
    Mark,
    /// Deliver it into the recipients' Junk mailboxes.
    Junk,
    /// Refuse it at the end of DATA.
    Reject,
}

/// The decisions the checks lead to; one set per message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decisions {
    /// DMARC failure under the author domain's `p=reject` (RFC 7489 §6.3):
    /// by default refused with `550 5.7.1`.
    pub dmarc_reject: Handling,
    /// DMARC failure under `p=quarantine`: by default delivered to Junk.
    pub dmarc_quarantine: Handling,
    /// SPF `fail` from a domain without a DMARC record: by default marked.
    pub spf_fail_without_dmarc: Handling,
}

impl Default for Decisions {
    fn default() -> Self {
        Decisions {
            dmarc_reject: Handling::Reject,
            dmarc_quarantine: Handling::Junk,
            spf_fail_without_dmarc: Handling::Mark,
        }
    }
}

impl Decisions {
    /// Setting by setting, the stricter of the two.
    pub fn stricter(self, other: Decisions) -> Decisions {
        Decisions {
            dmarc_reject: self.dmarc_reject.max(other.dmarc_reject),
            dmarc_quarantine: self.dmarc_quarantine.max(other.dmarc_quarantine),
            spf_fail_without_dmarc: self
                .spf_fail_without_dmarc
                .max(other.spf_fail_without_dmarc),
        }
    }

    /// Whether any failure changes delivery (else every check only marks).
    pub fn any_decides(&self) -> bool {
        [
            self.dmarc_reject,
            self.dmarc_quarantine,
            self.spf_fail_without_dmarc,
        ]
        .iter()
        .any(|h| *h != Handling::Mark)
    }
}

/// The policy of one recipient domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainPolicy {
    /// Whether mail to it is checked at all.
    pub check: bool,
    /// Clients whose mail to it is not checked (our own relays in front).
    pub trusted_relays: Vec<IpAddr>,
    /// What failures do.
    pub decisions: Decisions,
}

impl Default for DomainPolicy {
    fn default() -> Self {
        DomainPolicy {
            check: true,
            trusted_relays: Vec::new(),
            decisions: Decisions::default(),
        }
    }
}

impl DomainPolicy {
    /// Whether mail from `client` to this domain is checked.
    pub fn checks(&self, client: IpAddr) -> bool {
        self.check && !self.trusted_relays.contains(&client)
    }
}

/// The global policy and the domains that have their own.
#[derive(Debug, Clone, Default)]
pub struct Policies {
    global: DomainPolicy,
    domains: HashMap<String, DomainPolicy>,
}

impl Policies {
    /// `global` for every domain but those of `domains` (names as the store
    /// writes them; lower-cased here).
    pub fn new(
        global: DomainPolicy,
        domains: impl IntoIterator<Item = (String, DomainPolicy)>,
    ) -> Self {
        Policies {
            global,
            domains: domains
                .into_iter()
                .map(|(d, p)| (normalise(&d), p))
                .collect(),
        }
    }

    /// The policy of mail to `domain`.
    pub fn for_domain(&self, domain: &str) -> &DomainPolicy {
        self.domains.get(&normalise(domain)).unwrap_or(&self.global)
    }

    /// Whether some domain's mail may be checked (else no checker is needed).
    pub fn checks_anything(&self) -> bool {
        self.global.check || self.domains.values().any(|p| p.check)
    }

    /// The decisions for one message from `client` to recipients in
    /// `domains`: `None` when none of them checks its mail (see the module
    /// invariants), else the stricter setting of those that do.
    pub fn for_message<'a>(
        &self,
        client: IpAddr,
        domains: impl IntoIterator<Item = &'a str>,
    ) -> Option<Decisions> {
        domains
            .into_iter()
            .map(|d| self.for_domain(d))
            .filter(|p| p.checks(client))
            .map(|p| p.decisions)
            .reduce(Decisions::stricter)
    }
}

fn normalise(domain: &str) -> String {
    domain.trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(check: bool, relays: &[&str], d: (Handling, Handling, Handling)) -> DomainPolicy {
        DomainPolicy {
            check,
            trusted_relays: relays.iter().map(|r| r.parse().unwrap()).collect(),
            decisions: Decisions {
                dmarc_reject: d.0,
                dmarc_quarantine: d.1,
                spf_fail_without_dmarc: d.2,
            },
        }
    }

    #[test]
    fn the_stricter_setting_wins_setting_by_setting() {
        use Handling::*;
        let p = Policies::new(
            DomainPolicy::default(),
            [
                (
                    "Lenient.Test".to_string(),
                    policy(true, &[], (Mark, Mark, Mark)),
                ),
                (
                    "strict.test".to_string(),
                    policy(true, &[], (Junk, Reject, Reject)),
                ),
                (
                    "relayed.test".to_string(),
                    policy(true, &["192.0.2.7"], (Reject, Reject, Reject)),
                ),
                (
                    "off.test".to_string(),
                    policy(false, &[], (Reject, Reject, Reject)),
                ),
            ],
        );
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let other: IpAddr = "198.51.100.1".parse().unwrap();
        assert_eq!(
            p.for_message(ip, ["lenient.test."]),
            Some(Decisions {
                dmarc_reject: Mark,
                dmarc_quarantine: Mark,
                spf_fail_without_dmarc: Mark
            })
        );
        assert_eq!(
            p.for_message(ip, ["lenient.test", "strict.test"]),
            Some(Decisions {
                dmarc_reject: Junk,
                dmarc_quarantine: Reject,
                spf_fail_without_dmarc: Reject
            })
        );
        // The global default (reject, junk, mark) joins in for other domains.
        assert_eq!(
            p.for_message(ip, ["strict.test", "elsewhere.test"]),
            Some(Decisions {
                dmarc_reject: Reject,
                dmarc_quarantine: Reject,
                spf_fail_without_dmarc: Reject
            })
        );
        // Skipped only when no recipient domain checks this client.
        assert_eq!(p.for_message(ip, ["relayed.test", "off.test"]), None);
        assert_eq!(
            p.for_message(ip, ["relayed.test", "lenient.test"]),
            p.for_message(ip, ["lenient.test"])
        );
        assert_eq!(
            p.for_message(other, ["relayed.test"]),
            Some(Decisions {
                dmarc_reject: Reject,
                dmarc_quarantine: Reject,
                spf_fail_without_dmarc: Reject
            })
        );
        assert!(p.checks_anything());
        let off = Policies::new(policy(false, &[], (Mark, Mark, Mark)), []);
        assert!(!off.checks_anything());
        assert_eq!(off.for_message(ip, ["a.test"]), None);
    }
}
