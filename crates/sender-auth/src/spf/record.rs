//! SPF record syntax (RFC 7208 §4.5, §4.6.1, §5, §6 and the ABNF of §12).
//!
//! Invariants:
//! * a record is parsed whole before anything is evaluated, so a syntax
//!   error anywhere makes the record a `permerror` even when an earlier
//!   mechanism would have matched (§4.6);
//! * only the grammar decides: terms are separated by SP alone (a TAB, CR,
//!   LF or any byte outside US-ASCII is a syntax error), names are
//!   case-insensitive, unknown mechanisms are errors, unknown modifiers
//!   are ignored once their value parses as a macro string (§6), and
//!   `redirect=`/`exp=` may each appear once;
//! * CIDR lengths are checked against the grammar and range (`0`–`32`,
//!   `0`–`128`, no leading zero), IPv4 networks are dotted quads of
//!   `qnum`s, and every `domain-spec` must end in `.toplabel` or a macro
//!   (§7.1).

use std::net::{Ipv4Addr, Ipv6Addr};

use super::macros::{Kind, MacroString};

/// What a matching mechanism makes the result (§4.6.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qualifier {
    /// `+` (the default).
    Pass,
    /// `-`.
    Fail,
    /// `~`.
    SoftFail,
    /// `?`.
    Neutral,
}

/// The prefix lengths of `a` and `mx` (§5.6 `dual-cidr-length`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DualCidr {
    /// Applied to A records.
    pub v4: u8,
    /// Applied to AAAA records.
    pub v6: u8,
}

impl Default for DualCidr {
    fn default() -> Self {
        DualCidr { v4: 32, v6: 128 }
    }
}

/// A mechanism (§5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mechanism {
    /// `all`.
    All,
    /// `include:<domain-spec>`.
    Include(MacroString),
    /// `a[:<domain-spec>][<dual-cidr-length>]`.
    A(Option<MacroString>, DualCidr),
    /// `mx[:<domain-spec>][<dual-cidr-length>]`.
    Mx(Option<MacroString>, DualCidr),
    /// `ptr[:<domain-spec>]`.
    Ptr(Option<MacroString>),
    /// `ip4:<network>[/<length>]`.
    Ip4(Ipv4Addr, u8),
    /// `ip6:<network>[/<length>]`.
    Ip6(Ipv6Addr, u8),
    /// `exists:<domain-spec>`.
    Exists(MacroString),
}

impl Mechanism {
    /// Whether evaluating it queries DNS, and so counts against the limit
    /// of 10 (§4.6.4).
    pub fn queries_dns(&self) -> bool {
        !matches!(
            self,
            Mechanism::All | Mechanism::Ip4(..) | Mechanism::Ip6(..)
        )
    }
}

/// A qualifier and a mechanism.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    /// The result when it matches.
    pub qualifier: Qualifier,
    /// What is matched.
    pub mechanism: Mechanism,
}

/// A parsed SPF record.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    /// The directives, in order.
    pub directives: Vec<Directive>,
    /// `redirect=` (§6.1).
    pub redirect: Option<MacroString>,
    /// `exp=` (§6.2).
    pub exp: Option<MacroString>,
}

/// Whether a TXT string is an SPF record (§4.5: `v=spf1`, case-insensitive,
/// then SP or the end).
pub fn is_spf_record(text: &[u8]) -> bool {
    text.len() >= 6
        && text[..6].eq_ignore_ascii_case(b"v=spf1")
        && (text.len() == 6 || text[6] == b' ')
}

/// Parses a record selected by [`is_spf_record`]; an error is a
/// `permerror` (§4.6), described.
pub fn parse(text: &[u8]) -> Result<Record, String> {
    if !is_spf_record(text) {
        return Err("not an SPF record".into());
    }
    let text = std::str::from_utf8(text)
        .ok()
        .filter(|t| t.is_ascii())
        .ok_or_else(|| "the record holds bytes outside US-ASCII".to_string())?;
    let mut record = Record::default();
    for term in text[6..].split(' ').filter(|t| !t.is_empty()) {
        parse_term(term, &mut record).map_err(|e| format!("{term:?}: {e}"))?;
    }
    Ok(record)
}

fn parse_term(term: &str, record: &mut Record) -> Result<(), String> {
    // A modifier: name "=" value, name = ALPHA *( ALPHA / DIGIT / "-" / "_" / "." ).
    let name_len = term
        .bytes()
        .take_while(|c| c.is_ascii_alphanumeric() || b"-_.".contains(c))
        .count();
    if name_len > 0
        && term.as_bytes()[0].is_ascii_alphabetic()
        && term.as_bytes().get(name_len) == Some(&b'=')
    {
        let (name, value) = (&term[..name_len], &term[name_len + 1..]);
        let slot = if name.eq_ignore_ascii_case("redirect") {
            &mut record.redirect
        } else if name.eq_ignore_ascii_case("exp") {
            &mut record.exp
        } else {
            MacroString::parse(value, Kind::Unknown)?;
            return Ok(());
        };
        if slot.is_some() {
            return Err(format!("{name}= appears more than once"));
        }
        *slot = Some(domain_spec(value)?);
        return Ok(());
    }

    let (qualifier, rest) = match term.as_bytes()[0] {
        b'+' => (Qualifier::Pass, &term[1..]),
        b'-' => (Qualifier::Fail, &term[1..]),
        b'~' => (Qualifier::SoftFail, &term[1..]),
        b'?' => (Qualifier::Neutral, &term[1..]),
        _ => (Qualifier::Pass, term),
    };
    let name_len = rest
        .bytes()
        .take_while(|c| c.is_ascii_alphanumeric())
        .count();
    let (name, args) = rest.split_at(name_len);
    let name = name.to_ascii_lowercase();
    let mechanism = match name.as_str() {
        "all" if args.is_empty() => Mechanism::All,
        "include" => Mechanism::Include(required_domain(args)?),
        "exists" => Mechanism::Exists(required_domain(args)?),
        "ptr" => Mechanism::Ptr(match args {
            "" => None,
            _ => Some(required_domain(args)?),
        }),
        "a" | "mx" => {
            let (domain, cidr) = dual_cidr(args)?;
            let domain = match domain {
                "" => None,
                d => Some(required_domain(d)?),
            };
            if name == "a" {
                Mechanism::A(domain, cidr)
            } else {
                Mechanism::Mx(domain, cidr)
            }
        }
        "ip4" => {
            let value = args.strip_prefix(':').ok_or("ip4 needs a network")?;
            let (net, len) = match value.split_once('/') {
                Some((net, len)) => (net, cidr_length(len, 32)?),
                None => (value, 32),
            };
            Mechanism::Ip4(ip4_network(net)?, len)
        }
        "ip6" => {
            let value = args.strip_prefix(':').ok_or("ip6 needs a network")?;
            let (net, len) = match value.split_once('/') {
                Some((net, len)) => (net, cidr_length(len, 128)?),
                None => (value, 128),
            };
            let net: Ipv6Addr = net
                .parse()
                .map_err(|_| format!("{net:?} is not an IPv6 network"))?;
            Mechanism::Ip6(net, len)
        }
        _ => return Err("not a mechanism or modifier".into()),
    };
    record.directives.push(Directive {
        qualifier,
        mechanism,
    });
    Ok(())
}

/// `":" domain-spec`.
fn required_domain(args: &str) -> Result<MacroString, String> {
    let spec = args.strip_prefix(':').ok_or("expected ':' and a domain")?;
    domain_spec(spec)
}

fn domain_spec(text: &str) -> Result<MacroString, String> {
    let m = MacroString::parse(text, Kind::Domain)?;
    if !m.is_domain_spec() {
        return Err(format!(
            "{text:?} is not a domain-spec (it must end in .toplabel or a macro)"
        ));
    }
    Ok(m)
}

/// Splits `[":" domain-spec] [dual-cidr-length]` into the `":"…` part and
/// the lengths (§5.6: `[ ip4-cidr-length ] [ "/" ip6-cidr-length ]`).
fn dual_cidr(args: &str) -> Result<(&str, DualCidr), String> {
    let mut cidr = DualCidr::default();
    let mut rest = args;
    if let Some((before, len)) = trailing_length(rest)
        && before.ends_with('/')
    {
        cidr.v6 = cidr_length(len, 128)?;
        rest = &before[..before.len() - 1];
    }
    if let Some((before, len)) = trailing_length(rest) {
        cidr.v4 = cidr_length(len, 32)?;
        rest = before;
    }
    if !rest.is_empty() && !rest.starts_with(':') {
        return Err("not a mechanism".into());
    }
    Ok((rest, cidr))
}

/// `(before, digits)` when `s` ends with `/` and digits.
fn trailing_length(s: &str) -> Option<(&str, &str)> {
    let (before, after) = s.rsplit_once('/')?;
    (!after.is_empty() && after.bytes().all(|c| c.is_ascii_digit())).then_some((before, after))
}

/// A CIDR length: `"0" / %x31-39 *DIGIT` up to `max`.
fn cidr_length(s: &str, max: u8) -> Result<u8, String> {
    let well_formed = !s.is_empty()
        && s.len() <= 3
        && s.bytes().all(|c| c.is_ascii_digit())
        && (s == "0" || !s.starts_with('0'));
    match s.parse::<u8>() {
        Ok(n) if well_formed && n <= max => Ok(n),
        _ => Err(format!("{s:?} is not a prefix length of at most {max}")),
    }
}

/// §12 `ip4-network = qnum "." qnum "." qnum "." qnum`, `qnum` 0–255
/// without leading zeros.
fn ip4_network(s: &str) -> Result<Ipv4Addr, String> {
    let err = || format!("{s:?} is not an IPv4 network");
    let parts: Vec<&str> = s.split('.').collect();
    if parts.len() != 4 {
        return Err(err());
    }
    let mut octets = [0u8; 4];
    for (o, p) in octets.iter_mut().zip(&parts) {
        if p.is_empty() || p.len() > 3 || !p.bytes().all(|c| c.is_ascii_digit()) {
            return Err(err());
        }
        if p.len() > 1 && p.starts_with('0') {
            return Err(err());
        }
        *o = p.parse().map_err(|_| err())?;
    }
    Ok(Ipv4Addr::from(octets))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Record {
        parse(text.as_bytes()).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn records_are_selected_by_version() {
        assert!(is_spf_record(b"v=spf1"));
        assert!(is_spf_record(b"V=SPF1 -all"));
        assert!(!is_spf_record(b"v=spf10 -all"));
        assert!(!is_spf_record(b"v=spf"));
        assert!(!is_spf_record(b"spf2.0/pra -all"));
        assert!(!is_spf_record(b"v=spf1\t-all"));
    }

    #[test]
    fn every_mechanism_and_modifier_parses() {
        let r = ok(
            "v=spf1  +all -include:_spf.example.com ~a ?a:%{d}.example.com/24//64 mx/0 \
             MX:example.com//0 ptr ptr:example.com ip4:192.0.2.0/24 ip6:2001:db8::/32 \
             exists:%{ir}.%{v}._spf.%{d2} redirect=_spf.example.com exp=explain.%{d} \
             moo.cow-far_out=man:dog/cat ",
        );
        use Mechanism::*;
        let mechanisms: Vec<_> = r.directives.iter().map(|d| &d.mechanism).collect();
        assert_eq!(mechanisms.len(), 11);
        assert_eq!(*mechanisms[0], All);
        assert_eq!(r.directives[1].qualifier, Qualifier::Fail);
        assert_eq!(r.directives[2].qualifier, Qualifier::SoftFail);
        assert!(matches!(
            mechanisms[2],
            A(None, DualCidr { v4: 32, v6: 128 })
        ));
        assert!(matches!(
            mechanisms[3],
            A(Some(_), DualCidr { v4: 24, v6: 64 })
        ));
        assert!(matches!(
            mechanisms[4],
            Mx(None, DualCidr { v4: 0, v6: 128 })
        ));
        assert!(matches!(
            mechanisms[5],
            Mx(Some(_), DualCidr { v4: 32, v6: 0 })
        ));
        assert_eq!(*mechanisms[8], Ip4(Ipv4Addr::new(192, 0, 2, 0), 24));
        assert_eq!(*mechanisms[9], Ip6("2001:db8::".parse().unwrap(), 32));
        assert!(r.redirect.is_some() && r.exp.is_some());
        // A ':' or '/' inside a domain is not a CIDR length (§7.1).
        let r = ok("v=spf1 a:foo:bar/baz.example.com");
        assert!(matches!(
            r.directives[0].mechanism,
            A(Some(_), DualCidr { v4: 32, v6: 128 })
        ));
        assert_eq!(ok("v=spf1").directives.len(), 0);
    }

    #[test]
    fn syntax_errors_anywhere_are_errors() {
        for bad in [
            "v=spf1 ip4:1.2.3.4 -all moo",
            "v=spf1 all.",
            "v=spf1 all:foo",
            "v=spf1 all/8",
            "v=spf1 ptr/0",
            "v=spf1 ptr:",
            "v=spf1 include:",
            "v=spf1 include:example.com/24",
            "v=spf1 exists",
            "v=spf1 a:foo-bar",
            "v=spf1 a:example.com:8080",
            "v=spf1 a:museum",
            "v=spf1 a/33",
            "v=spf1 a//129",
            "v=spf1 a/032",
            "v=spf1 a:example.com/24/64",
            "v=spf1 ip4",
            "v=spf1 ip4:1.2.3",
            "v=spf1 ip4:1.2.3.4/33",
            "v=spf1 ip4:1.2.3.4/032",
            "v=spf1 ip4:1.2.3.4//32",
            "v=spf1 ip4:1.2.3.4:8080",
            "v=spf1 ip4:01.2.3.4",
            "v=spf1 ip6",
            "v=spf1 ip6:1.2.3.4",
            "v=spf1 ip6:::1/129",
            "v=spf1 redirect=-all",
            "v=spf1 redirect:example.com",
            "v=spf1 exp=",
            "v=spf1 exp=a.example.com exp=b.example.com",
            "v=spf1 redirect=a.example.com redirect=b.example.com",
            "v=spf1 =all",
            "v=spf1 1up=foo",
            "v=spf1 moo.cow/far_out=man:dog/cat",
            "v=spf1 foo=%",
            "v=spf1 exists:%{c}.example.com",
            "v=spf1 a:ctrl.example.com\rptr -all",
            "v=spf1 ip4:192.0.2.5\n include:example.com ~all",
            "v=spf1 -all\tip4:1.2.3.4",
            "v=spf1 a:\u{feff}garbage.example.net -all",
        ] {
            assert!(parse(bad.as_bytes()).is_err(), "{bad:?}");
        }
    }
}
