//! Mail addresses and domain names, parsed and normalised once.
//!
//! Everything that stores or compares an address goes through this crate, so
//! that `Alice@Bücher.Example`, `alice@bücher.example` and
//! `alice@xn--bcher-kva.example` are the same key everywhere (store, admin,
//! delivery). Domains are kept in their ASCII (A-label) form, lower case;
//! local parts are lower-cased too, which is the default local-part policy
//! (RFC 5321 §2.4 allows case-sensitive local parts, but almost no deployment
//! wants `Alice` and `alice` to be two mailboxes).
//!
//! This crate is pure: no I/O, no allocation beyond the strings it returns.

use std::fmt;

#[doc(hidden)]
pub mod fuzz;

/// Why a domain name or address was refused. The text is meant for the
/// person who typed it (CLI, admin API), so it says what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// The domain name is not a valid (internationalised) host name.
    #[error("invalid domain {input:?}: {reason}")]
    Domain {
        /// What was given.
        input: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The address is not `local-part@domain` with a valid local part.
    #[error("invalid address {input:?}: {reason}")]
    Address {
        /// What was given.
        input: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// A domain name in canonical form: IDNA A-labels, lower case, no trailing dot.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Domain(String);

/// RFC 1035 §2.3.4 and RFC 5321 §4.5.3.1.2: 255 octets on the wire, 253 as text.
const MAX_DOMAIN_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;
/// RFC 5321 §4.5.3.1.1.
const MAX_LOCAL_LEN: usize = 64;
/// RFC 5321 §4.5.3.1.3 (path of 256 octets including the angle brackets).
const MAX_ADDRESS_LEN: usize = 254;

impl Domain {
    /// Parses a domain name, converting Unicode labels to A-labels.
    ///
    /// Refuses IP literals, empty labels, labels over 63 octets, names over
    /// 253 octets, characters outside letters, digits and hyphen (after IDNA
    /// mapping), labels that start or end with a hyphen, and single-label
    /// names (a mail domain needs a dot).
    pub fn parse(input: &str) -> Result<Self, AddressError> {
        let err = |reason| AddressError::Domain {
            input: input.to_string(),
            reason,
        };
        let trimmed = input.strip_suffix('.').unwrap_or(input);
        if trimmed.is_empty() {
            return Err(err("empty"));
        }
        if trimmed.starts_with('[') {
            return Err(err("address literals are not domain names"));
        }
        if trimmed.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(err("contains whitespace or control characters"));
        }
        let ascii = if trimmed.is_ascii() {
            trimmed.to_ascii_lowercase()
        } else {
            idna::domain_to_ascii(trimmed).map_err(|_| err("not a valid internationalised name"))?
        };
        if ascii.len() > MAX_DOMAIN_LEN {
            return Err(err("longer than 253 characters"));
        }
        let mut labels = 0;
        for label in ascii.split('.') {
            labels += 1;
            if label.is_empty() {
                return Err(err("empty label"));
            }
            if label.len() > MAX_LABEL_LEN {
                return Err(err("a label is longer than 63 characters"));
            }
            if !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            {
                return Err(err("only letters, digits, hyphens and dots are allowed"));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(err("a label starts or ends with a hyphen"));
            }
        }
        if labels < 2 {
            return Err(err("a mail domain needs at least two labels"));
        }
        if ascii
            .rsplit('.')
            .next()
            .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(err("looks like an IP address, not a domain name"));
        }
        Ok(Domain(ascii))
    }

    /// The canonical ASCII form (what is stored and compared).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The Unicode form for display (`xn--bcher-kva.example` → `bücher.example`).
    pub fn to_unicode(&self) -> String {
        let (unicode, result) = idna::domain_to_unicode(&self.0);
        if result.is_ok() {
            unicode
        } else {
            self.0.clone()
        }
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A mailbox address `local-part@domain` in canonical form.
///
/// Only dot-atom local parts are accepted here (RFC 5322 §3.4.1, with UTF-8
/// allowed as in RFC 6532); quoted local parts are a matter for the SMTP
/// engine, which may see them on the wire but never creates accounts for them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address {
    local: String,
    domain: Domain,
}

/// RFC 5322 `atext` beyond letters and digits.
const ATEXT_SPECIALS: &str = "!#$%&'*+-/=?^_`{|}~";

fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || ATEXT_SPECIALS.contains(c) || (!c.is_ascii() && !c.is_control())
}

impl Address {
    /// Parses and normalises `local@domain`.
    pub fn parse(input: &str) -> Result<Self, AddressError> {
        let err = |reason| AddressError::Address {
            input: input.to_string(),
            reason,
        };
        let (local, domain) = input.rsplit_once('@').ok_or_else(|| err("missing '@'"))?;
        Self::from_parts(local, domain).map_err(|e| match e {
            AddressError::Domain { reason, .. } => err(reason),
            AddressError::Address { reason, .. } => err(reason),
        })
    }

    /// Builds an address from a local part and a domain, with the same checks as [`Address::parse`].
    pub fn from_parts(local: &str, domain: &str) -> Result<Self, AddressError> {
        let err = |reason| AddressError::Address {
            input: format!("{local}@{domain}"),
            reason,
        };
        // Checked in the form that is kept: lower-casing can lengthen a
        // local part ('İ' is 2 octets, "i̇" 3), and a canonical form longer
        // than the limit would not parse again (found by the `address`
        // fuzz target).
        let lowered = local.to_lowercase();
        let local = lowered.as_str();
        if local.is_empty() {
            return Err(err("empty local part"));
        }
        if local.starts_with('"') {
            return Err(err("quoted local parts are not supported"));
        }
        if local.len() > MAX_LOCAL_LEN {
            return Err(err("local part longer than 64 octets"));
        }
        if !local.chars().all(|c| is_atext(c) || c == '.') {
            return Err(err("local part has characters that need quoting"));
        }
        if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
            return Err(err("local part has a misplaced dot"));
        }
        let domain = Domain::parse(domain)?;
        let local = lowered;
        if local.len() + 1 + domain.as_str().len() > MAX_ADDRESS_LEN {
            return Err(err("address longer than 254 octets"));
        }
        Ok(Address { local, domain })
    }

    /// The local part, lower-cased.
    pub fn local_part(&self) -> &str {
        &self.local
    }

    /// The domain, canonical ASCII.
    pub fn domain(&self) -> &Domain {
        &self.domain
    }

    /// The local part without a `+tag` suffix, and the tag if there was one
    /// (plus-addressing: `user+tag` delivers to `user`).
    pub fn split_plus(&self) -> (&str, Option<&str>) {
        match self.local.split_once('+') {
            Some((base, tag)) if !base.is_empty() => (base, Some(tag)),
            _ => (&self.local, None),
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local, self.domain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idna_and_case_variants_are_one_domain() {
        let a = Domain::parse("Bücher.Example").unwrap();
        let b = Domain::parse("xn--bcher-kva.example").unwrap();
        let c = Domain::parse("XN--BCHER-KVA.EXAMPLE.").unwrap();
        assert_eq!(a, b);
        assert_eq!(b, c);
        assert_eq!(a.as_str(), "xn--bcher-kva.example");
        assert_eq!(a.to_unicode(), "bücher.example");
    }

    #[test]
    fn bad_domains_are_refused_with_a_reason() {
        for bad in [
            "",
            "localhost",
            "exa mple.test",
            "-bad.test",
            "bad-.test",
            "a..test",
            "[127.0.0.1]",
            "127.0.0.1",
            "under_score.test",
            &format!("{}.test", "a".repeat(64)),
            &format!("{}test", "abcdefghi.".repeat(26)),
        ] {
            let e = Domain::parse(bad).expect_err(bad);
            assert!(matches!(e, AddressError::Domain { .. }), "{bad}: {e}");
        }
    }

    #[test]
    fn addresses_normalise() {
        let a = Address::parse("Alice.Smith@Bücher.Example").unwrap();
        assert_eq!(a.to_string(), "alice.smith@xn--bcher-kva.example");
        let u = Address::parse("Jörg@example.test").unwrap();
        assert_eq!(u.local_part(), "jörg");
        let p = Address::parse("bob+lists@example.test").unwrap();
        assert_eq!(p.split_plus(), ("bob", Some("lists")));
        let q = Address::parse("+only@example.test").unwrap();
        assert_eq!(q.split_plus(), ("+only", None));
    }

    /// Found by the `address` fuzz target: 63 octets with one 'İ' passed
    /// the 64-octet limit and lower-cased to 65, so the canonical form
    /// did not parse again.
    #[test]
    fn the_length_limit_applies_to_the_lower_cased_local_part() {
        let local = format!("{}\u{130}", "a".repeat(62));
        assert_eq!(local.len(), 64);
        assert!(Address::from_parts(&local, "example.com").is_err());
        let ok = format!("{}\u{130}", "a".repeat(61));
        let address = Address::from_parts(&ok, "example.com").unwrap();
        assert_eq!(Address::parse(&address.to_string()), Ok(address));
        crate::fuzz::address(
            b"\xc4Ao.mgAB.sgrBXn--xcn.n.oed\xc4\xb0Risc.Sn.oo.moee.s.m0ae.s.eome.sm.r@Xn--xcn.n.oed\xc4\xb0Risc.So.m",
        );
    }

    #[test]
    fn bad_addresses_are_refused() {
        for bad in [
            "nobody",
            "@example.test",
            "a@",
            ".a@example.test",
            "a.@example.test",
            "a..b@example.test",
            "a b@example.test",
            "\"a@b\"@example.test",
            "a@b@example.test",
            "a(comment)@example.test",
            "a\r\n@example.test",
            &format!("{}@example.test", "a".repeat(65)),
        ] {
            assert!(Address::parse(bad).is_err(), "{bad} was accepted");
        }
    }
}
