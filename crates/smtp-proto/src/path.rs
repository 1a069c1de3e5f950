//! Reverse and forward paths: the `<local@domain>` of MAIL FROM and RCPT TO.
//!
//! RFC 5321 §4.1.2 grammar, with the SMTPUTF8 extension (RFC 6531 §3.3:
//! UTF-8 allowed in local parts and domains). The parser is strict about
//! structure (brackets, one `@`, balanced quotes, lengths) and keeps the
//! facts policy needs as flags instead of acting on them:
//!
//! * source routes (`<@relay:user@domain>`) are accepted and dropped, as
//!   RFC 5321 §4.1.2 and Appendix C require, but [`Path::had_source_route`]
//!   lets the MTA refuse to relay such mail;
//! * quoted local parts are decoded, with [`Path::was_quoted`] set;
//! * percent-hack and bang-path local parts are ordinary syntax, reported by
//!   [`Path::has_percent_hack`] and [`Path::has_bang_path`];
//! * [`Path::has_non_ascii`] tells the session whether the `SMTPUTF8`
//!   parameter is required (RFC 6531 §3.4).
//!
//! Domains are not IDNA-converted here (that is `mailroom-address`'s job);
//! they are syntax-checked and their ASCII letters lower-cased.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// RFC 5321 §4.5.3.1.1: at most 64 octets of local part (as written,
/// quotes included).
pub const MAX_LOCAL_PART_LEN: usize = 64;
/// RFC 5321 §4.5.3.1.2: at most 255 octets of domain.
pub const MAX_DOMAIN_LEN: usize = 255;
/// RFC 5321 §4.5.3.1.3: at most 256 octets of path, angle brackets and any
/// source route included.
pub const MAX_PATH_LEN: usize = 256;

/// The part after `@` in a path, or the argument of EHLO/HELO.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// A domain name: ASCII letters lower-cased, UTF-8 labels as given.
    Name(String),
    /// An address literal, `[192.0.2.1]` or `[IPv6:2001:db8::1]`
    /// (RFC 5321 §4.1.3). General literals (`[tag:…]`) are refused.
    Literal(IpAddr),
}

impl Host {
    /// Parses a domain name or an address literal.
    pub fn parse(s: &str) -> Result<Host, PathError> {
        if s.len() > MAX_DOMAIN_LEN {
            return Err(PathError::DomainTooLong);
        }
        if let Some(inner) = s.strip_prefix('[') {
            let inner = inner.strip_suffix(']').ok_or(PathError::InvalidDomain)?;
            // RFC 5321 §4.1.3: `IPv6-address-literal = "IPv6:" IPv6-addr`;
            // the tag is case-insensitive like all SMTP keywords.
            let ip = match inner.get(..5) {
                Some(tag) if tag.eq_ignore_ascii_case("IPv6:") => inner[5..]
                    .parse::<Ipv6Addr>()
                    .map(IpAddr::V6)
                    .map_err(|_| PathError::InvalidDomain)?,
                _ => inner
                    .parse::<Ipv4Addr>()
                    .map(IpAddr::V4)
                    .map_err(|_| PathError::InvalidDomain)?,
            };
            return Ok(Host::Literal(ip));
        }
        if !is_domain_name(s) {
            return Err(PathError::InvalidDomain);
        }
        Ok(Host::Name(s.to_ascii_lowercase()))
    }

    /// Whether the name holds UTF-8 (a U-label), which needs SMTPUTF8.
    pub fn has_non_ascii(&self) -> bool {
        matches!(self, Host::Name(name) if !name.is_ascii())
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(name) => f.write_str(name),
            Host::Literal(IpAddr::V4(ip)) => write!(f, "[{ip}]"),
            Host::Literal(IpAddr::V6(ip)) => write!(f, "[IPv6:{ip}]"),
        }
    }
}

/// RFC 5321 §4.1.2 `Domain = sub-domain *("." sub-domain)`, where a
/// sub-domain is letters, digits and inner hyphens, plus UTF-8 (RFC 6531).
/// Underscores are tolerated: they are common in Windows host names sent in
/// EHLO and harmless in a syntax check.
fn is_domain_name(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(is_domain_byte)
        })
}

fn is_domain_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b >= 0x80
}

/// RFC 5322 §3.2.3 `atext`, extended with UTF-8 by RFC 6531 §3.3.
fn is_atext(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b) || b >= 0x80
}

/// RFC 5321 §4.1.2 `qtextSMTP`, with UTF-8 (RFC 6531).
fn is_qtext(b: u8) -> bool {
    matches!(b, 32 | 33 | 35..=91 | 93..=126) || b >= 0x80
}

/// `Dot-string = Atom *("." Atom)`: the local parts that need no quotes.
fn is_dot_string(s: &str) -> bool {
    !s.is_empty()
        && s.split('.')
            .all(|atom| !atom.is_empty() && atom.bytes().all(is_atext))
}

/// A mailbox in a path, `<local-part@domain>`, after syntax checks.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Path {
    local_part: String,
    domain: Host,
    quoted: bool,
    had_source_route: bool,
}

impl Path {
    /// Parses a complete path, `<local@domain>`; the null path and the
    /// bare `<Postmaster>` are refused (use [`ReversePath::parse`] or
    /// [`ForwardPath::parse`] where they are allowed).
    pub fn parse(s: &str) -> Result<Path, PathError> {
        match parse_whole(s)? {
            Parsed::Path(path) => Ok(path),
            Parsed::Null => Err(PathError::NullPathNotAllowed),
            Parsed::Postmaster => Err(PathError::MissingDomain),
        }
    }

    /// Parses `local@domain` without brackets, for addresses that come from
    /// the store or configuration rather than from the wire.
    pub fn from_mailbox(mailbox: &str) -> Result<Path, PathError> {
        Path::parse(&format!("<{mailbox}>"))
    }

    /// The local part, decoded: quotes and backslash escapes removed, case
    /// kept (RFC 5321 §2.4: only the destination host may interpret it).
    pub fn local_part(&self) -> &str {
        &self.local_part
    }

    /// The domain or address literal after `@`.
    pub fn domain(&self) -> &Host {
        &self.domain
    }

    /// Whether the local part was written as a quoted string on the wire.
    pub fn was_quoted(&self) -> bool {
        self.quoted
    }

    /// Whether the client sent a source route (`<@relay,@relay2:user@host>`).
    /// The route has been dropped (RFC 5321 §4.1.2, Appendix C); an MTA may
    /// still want to refuse such mail rather than relay it.
    pub fn had_source_route(&self) -> bool {
        self.had_source_route
    }

    /// Whether the local part or the domain holds non-ASCII characters; the
    /// session must then require the `SMTPUTF8` parameter (RFC 6531 §3.4).
    pub fn has_non_ascii(&self) -> bool {
        !self.local_part.is_ascii() || self.domain.has_non_ascii()
    }

    /// Whether the local part contains `%`, the "percent hack" for relaying
    /// (`user%other@relay`). Checked on the decoded local part, quoted or not,
    /// because that is what a downstream system would see.
    pub fn has_percent_hack(&self) -> bool {
        self.local_part.contains('%')
    }

    /// Whether the local part contains `!`, a UUCP bang path
    /// (`host!user@relay`), which old relays forward to `host`.
    pub fn has_bang_path(&self) -> bool {
        self.local_part.contains('!')
    }

    /// `local@domain` in canonical form: the local part quoted only when it
    /// must be, the domain lower-cased, no source route.
    pub fn mailbox(&self) -> String {
        let mut out = String::with_capacity(self.local_part.len() + 32);
        if is_dot_string(&self.local_part) {
            out.push_str(&self.local_part);
        } else {
            out.push('"');
            for c in self.local_part.chars() {
                if c == '"' || c == '\\' {
                    out.push('\\');
                }
                out.push(c);
            }
            out.push('"');
        }
        out.push('@');
        out.push_str(&self.domain.to_string());
        out
    }
}

/// The canonical wire form, angle brackets included: `<local@domain>`.
impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{}>", self.mailbox())
    }
}

/// The argument of MAIL FROM: a sender, or nobody.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ReversePath {
    /// `<>`: bounces and other notifications, which must never themselves be
    /// bounced (RFC 5321 §4.5.5).
    Null,
    /// A sender mailbox.
    Path(Path),
}

impl ReversePath {
    /// Parses `<>` or a path.
    pub fn parse(s: &str) -> Result<ReversePath, PathError> {
        match parse_whole(s)? {
            Parsed::Null => Ok(ReversePath::Null),
            Parsed::Path(path) => Ok(ReversePath::Path(path)),
            Parsed::Postmaster => Err(PathError::MissingDomain),
        }
    }

    /// The sender, unless this is the null path.
    pub fn path(&self) -> Option<&Path> {
        match self {
            ReversePath::Null => None,
            ReversePath::Path(path) => Some(path),
        }
    }
}

/// Wire form: `<>` or `<local@domain>`.
impl fmt::Display for ReversePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReversePath::Null => f.write_str("<>"),
            ReversePath::Path(path) => path.fmt(f),
        }
    }
}

/// The argument of RCPT TO.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ForwardPath {
    /// `<Postmaster>` without a domain, which every server must accept for
    /// its own postmaster (RFC 5321 §4.5.1); matched case-insensitively.
    Postmaster,
    /// A recipient mailbox.
    Path(Path),
}

impl ForwardPath {
    /// Parses `<Postmaster>` or a path.
    pub fn parse(s: &str) -> Result<ForwardPath, PathError> {
        match parse_whole(s)? {
            Parsed::Postmaster => Ok(ForwardPath::Postmaster),
            Parsed::Path(path) => Ok(ForwardPath::Path(path)),
            Parsed::Null => Err(PathError::NullPathNotAllowed),
        }
    }

    /// The recipient mailbox, unless this is the bare postmaster.
    pub fn path(&self) -> Option<&Path> {
        match self {
            ForwardPath::Postmaster => None,
            ForwardPath::Path(path) => Some(path),
        }
    }
}

/// Wire form: `<Postmaster>` or `<local@domain>`.
impl fmt::Display for ForwardPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ForwardPath::Postmaster => f.write_str("<Postmaster>"),
            ForwardPath::Path(path) => path.fmt(f),
        }
    }
}

/// Why a path was refused. The session maps it to `501 5.1.7` for a sender
/// and `501 5.1.3` for a recipient; the text says what was wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// The path does not start with `<` or has no closing `>`: RFC 5321
    /// requires the brackets, and accepting bare addresses invites parsing
    /// ambiguities with parameters.
    MissingBrackets,
    /// A control character (including NUL) in the path.
    ControlCharacter,
    /// Nothing before the `@`.
    EmptyLocalPart,
    /// The local part is not a dot-string or quoted string.
    InvalidLocalPart,
    /// A quoted local part without its closing quote.
    UnbalancedQuote,
    /// More than 64 octets of local part.
    LocalPartTooLong,
    /// No `@domain` (and not the special `<Postmaster>`).
    MissingDomain,
    /// The domain is neither a valid name nor a supported address literal.
    InvalidDomain,
    /// More than 255 octets of domain.
    DomainTooLong,
    /// A second `@` outside quotes (`<a@b@c>`).
    TooManyAtSigns,
    /// A malformed source route.
    InvalidSourceRoute,
    /// More than 256 octets in the whole path.
    PathTooLong,
    /// `<>` where a mailbox is required (RCPT TO).
    NullPathNotAllowed,
    /// Characters after the closing `>`.
    TrailingCharacters,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathError::MissingBrackets => "address must be enclosed in <>",
            PathError::ControlCharacter => "control character in address",
            PathError::EmptyLocalPart => "empty local part",
            PathError::InvalidLocalPart => "invalid local part",
            PathError::UnbalancedQuote => "unbalanced quote in local part",
            PathError::LocalPartTooLong => "local part longer than 64 octets",
            PathError::MissingDomain => "missing domain",
            PathError::InvalidDomain => "invalid domain",
            PathError::DomainTooLong => "domain longer than 255 octets",
            PathError::TooManyAtSigns => "more than one @ outside quotes",
            PathError::InvalidSourceRoute => "invalid source route",
            PathError::PathTooLong => "path longer than 256 octets",
            PathError::NullPathNotAllowed => "null path not allowed here",
            PathError::TrailingCharacters => "characters after the closing >",
        })
    }
}

impl std::error::Error for PathError {}

/// What [`parse_prefix`] found at the front of a command argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Parsed {
    Null,
    Postmaster,
    Path(Path),
}

fn parse_whole(s: &str) -> Result<Parsed, PathError> {
    let (parsed, consumed) = parse_prefix(s)?;
    if consumed != s.len() {
        return Err(PathError::TrailingCharacters);
    }
    Ok(parsed)
}

/// Scans the end of a domain or address literal starting at `i`; the caller
/// checks what terminates it. Literals are scanned to their `]` because they
/// contain `:`, which also ends a source-route domain.
fn scan_domain(b: &[u8], mut i: usize) -> usize {
    if b.get(i) == Some(&b'[') {
        while i < b.len() && b[i] != b']' {
            i += 1;
        }
        return (i + 1).min(b.len());
    }
    while i < b.len() && (is_domain_byte(b[i]) || b[i] == b'.') {
        i += 1;
    }
    i
}

/// Parses a path at the front of `s` and says how many bytes it used, so
/// that MAIL and RCPT can read parameters after it.
pub(crate) fn parse_prefix(s: &str) -> Result<(Parsed, usize), PathError> {
    let b = s.as_bytes();
    if b.first() != Some(&b'<') {
        return Err(PathError::MissingBrackets);
    }
    // Look for control characters only inside the path; the bytes after
    // it are parameters, checked by their own parser.
    let scan_end = b.len().min(MAX_PATH_LEN + 1);
    if let Some(pos) = b[..scan_end]
        .iter()
        .position(|&c| c < 0x20 || c == 0x7f || c == b'>')
        && b[pos] != b'>'
    {
        // A '>' inside a quoted local part would stop this scan early;
        // control characters after it are caught by the grammar below.
        return Err(PathError::ControlCharacter);
    }
    if b.get(1) == Some(&b'>') {
        return Ok((Parsed::Null, 2));
    }
    let mut i = 1;

    // RFC 5321 §4.1.2 `A-d-l = At-domain *( "," At-domain )`, followed by ':'.
    // Accepted and ignored (RFC 5321 Appendix C), but remembered.
    let mut had_source_route = false;
    if b.get(i) == Some(&b'@') {
        had_source_route = true;
        let mut first = true;
        loop {
            // b[i] == '@'
            let start = i + 1;
            let end = scan_domain(b, start);
            Host::parse(&s[start..end]).map_err(|_| PathError::InvalidSourceRoute)?;
            i = end;
            match b.get(i) {
                Some(b',') if b.get(i + 1) == Some(&b'@') => i += 1,
                Some(b':') => {
                    i += 1;
                    break;
                }
                // `<@example.com>`: an address with nothing before the '@'.
                Some(b'>') if first => return Err(PathError::EmptyLocalPart),
                None => return Err(PathError::MissingBrackets),
                _ => return Err(PathError::InvalidSourceRoute),
            }
            first = false;
        }
    }

    // RFC 5321 §4.1.2 `Local-part = Dot-string / Quoted-string`.
    let local_start = i;
    let (local_part, quoted) = if b.get(i) == Some(&b'"') {
        i += 1;
        let mut out = String::new();
        loop {
            match b.get(i) {
                None => return Err(PathError::UnbalancedQuote),
                Some(b'"') => {
                    i += 1;
                    break;
                }
                // `quoted-pairSMTP = %d92 %d32-126`
                Some(b'\\') => match b.get(i + 1) {
                    Some(&c) if (32..=126).contains(&c) => {
                        out.push(char::from(c));
                        i += 2;
                    }
                    None => return Err(PathError::UnbalancedQuote),
                    Some(_) => return Err(PathError::InvalidLocalPart),
                },
                Some(&c) if c >= 0x80 => {
                    // `s` is valid UTF-8 and `i` is at a char boundary
                    // (everything before it was ASCII or whole chars).
                    let Some(ch) = s[i..].chars().next() else {
                        return Err(PathError::InvalidLocalPart);
                    };
                    out.push(ch);
                    i += ch.len_utf8();
                }
                Some(&c) if is_qtext(c) => {
                    out.push(char::from(c));
                    i += 1;
                }
                Some(_) => return Err(PathError::InvalidLocalPart),
            }
        }
        (out, true)
    } else {
        while i < b.len() && (is_atext(b[i]) || b[i] == b'.') {
            i += 1;
        }
        let local = &s[local_start..i];
        if local.is_empty() {
            return Err(match b.get(i) {
                Some(b'@') | Some(b'>') => PathError::EmptyLocalPart,
                Some(b'"') => PathError::UnbalancedQuote,
                None => PathError::MissingBrackets,
                Some(_) => PathError::InvalidLocalPart,
            });
        }
        if !is_dot_string(local) {
            return Err(PathError::InvalidLocalPart);
        }
        (local.to_string(), false)
    };
    if local_part.is_empty() {
        return Err(PathError::EmptyLocalPart);
    }
    if i - local_start > MAX_LOCAL_PART_LEN {
        return Err(PathError::LocalPartTooLong);
    }

    match b.get(i) {
        Some(b'@') => {}
        // RFC 5321 §4.5.1: `RCPT TO:<Postmaster>` names the local postmaster.
        Some(b'>') => {
            if !quoted && !had_source_route && local_part.eq_ignore_ascii_case("postmaster") {
                return Ok((Parsed::Postmaster, i + 1));
            }
            return Err(PathError::MissingDomain);
        }
        None => return Err(PathError::MissingBrackets),
        Some(b'"') => return Err(PathError::UnbalancedQuote),
        Some(_) => return Err(PathError::InvalidLocalPart),
    }
    i += 1;
    let domain_start = i;
    let domain_end = scan_domain(b, domain_start);
    match b.get(domain_end) {
        Some(b'>') => {}
        Some(b'@') => return Err(PathError::TooManyAtSigns),
        None => return Err(PathError::MissingBrackets),
        Some(_) => return Err(PathError::InvalidDomain),
    }
    if domain_start == domain_end {
        return Err(PathError::MissingDomain);
    }
    let domain = Host::parse(&s[domain_start..domain_end])?;
    let consumed = domain_end + 1;
    if consumed > MAX_PATH_LEN {
        return Err(PathError::PathTooLong);
    }
    Ok((
        Parsed::Path(Path {
            local_part,
            domain,
            quoted,
            had_source_route,
        }),
        consumed,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn name(s: &str) -> Host {
        Host::Name(s.to_string())
    }

    #[test]
    fn valid_paths() {
        // (input, local part, domain, quoted, source route, canonical)
        let cases: &[(&str, &str, Host, bool, bool, &str)] = &[
            (
                "<user@example.com>",
                "user",
                name("example.com"),
                false,
                false,
                "<user@example.com>",
            ),
            (
                "<User@Example.COM>",
                "User",
                name("example.com"),
                false,
                false,
                "<User@example.com>",
            ),
            (
                "<first.last+tag@example.com>",
                "first.last+tag",
                name("example.com"),
                false,
                false,
                "<first.last+tag@example.com>",
            ),
            (
                "<\"john doe\"@example.com>",
                "john doe",
                name("example.com"),
                true,
                false,
                "<\"john doe\"@example.com>",
            ),
            (
                "<\"a@b\"@example.com>",
                "a@b",
                name("example.com"),
                true,
                false,
                "<\"a@b\"@example.com>",
            ),
            (
                "<\"a%b\"@example.com>",
                "a%b",
                name("example.com"),
                true,
                false,
                "<a%b@example.com>",
            ),
            (
                "<\"a>b\"@example.com>",
                "a>b",
                name("example.com"),
                true,
                false,
                "<\"a>b\"@example.com>",
            ),
            (
                "<\"a\\\"b\\\\c\"@example.com>",
                "a\"b\\c",
                name("example.com"),
                true,
                false,
                "<\"a\\\"b\\\\c\"@example.com>",
            ),
            (
                "<\"plain\"@example.com>",
                "plain",
                name("example.com"),
                true,
                false,
                "<plain@example.com>",
            ),
            (
                "<@relay1.example,@relay2.example:user@example.com>",
                "user",
                name("example.com"),
                false,
                true,
                "<user@example.com>",
            ),
            (
                "<@relay.example:user@example.com>",
                "user",
                name("example.com"),
                false,
                true,
                "<user@example.com>",
            ),
            (
                "<@[192.0.2.9]:user@example.com>",
                "user",
                name("example.com"),
                false,
                true,
                "<user@example.com>",
            ),
            (
                "<user%other.example@relay.example>",
                "user%other.example",
                name("relay.example"),
                false,
                false,
                "<user%other.example@relay.example>",
            ),
            (
                "<host!user@relay.example>",
                "host!user",
                name("relay.example"),
                false,
                false,
                "<host!user@relay.example>",
            ),
            (
                "<user@[192.0.2.1]>",
                "user",
                Host::Literal(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))),
                false,
                false,
                "<user@[192.0.2.1]>",
            ),
            (
                "<user@[IPv6:2001:db8::1]>",
                "user",
                Host::Literal("2001:db8::1".parse::<Ipv6Addr>().unwrap().into()),
                false,
                false,
                "<user@[IPv6:2001:db8::1]>",
            ),
            (
                "<user@[ipv6:2001:DB8:0:0:0:0:0:1]>",
                "user",
                Host::Literal("2001:db8::1".parse::<Ipv6Addr>().unwrap().into()),
                false,
                false,
                "<user@[IPv6:2001:db8::1]>",
            ),
            (
                "<jürgen@bücher.example>",
                "jürgen",
                name("bücher.example"),
                false,
                false,
                "<jürgen@bücher.example>",
            ),
            (
                "<\"jü rgen\"@example.com>",
                "jü rgen",
                name("example.com"),
                true,
                false,
                "<\"jü rgen\"@example.com>",
            ),
            (
                "<user@localhost>",
                "user",
                name("localhost"),
                false,
                false,
                "<user@localhost>",
            ),
            (
                "<user@my_host.example>",
                "user",
                name("my_host.example"),
                false,
                false,
                "<user@my_host.example>",
            ),
        ];
        for (input, local, domain, quoted, route, canonical) in cases {
            let path = Path::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(path.local_part(), *local, "{input}");
            assert_eq!(path.domain(), domain, "{input}");
            assert_eq!(path.was_quoted(), *quoted, "{input}");
            assert_eq!(path.had_source_route(), *route, "{input}");
            assert_eq!(path.to_string(), *canonical, "{input}");
            // The canonical form parses back to the same mailbox.
            let again = Path::parse(canonical).unwrap();
            assert_eq!(again.local_part(), path.local_part());
            assert_eq!(again.domain(), path.domain());
        }
    }

    #[test]
    fn flags() {
        let p = Path::parse("<user%other@relay.example>").unwrap();
        assert!(p.has_percent_hack() && !p.has_bang_path() && !p.has_non_ascii());
        let p = Path::parse("<host!user@relay.example>").unwrap();
        assert!(p.has_bang_path() && !p.has_percent_hack());
        let p = Path::parse("<\"a%b\"@example.com>").unwrap();
        assert!(p.has_percent_hack());
        assert!(Path::parse("<jürgen@example.com>").unwrap().has_non_ascii());
        assert!(
            Path::parse("<user@bücher.example>")
                .unwrap()
                .has_non_ascii()
        );
        assert!(Path::parse("<\"é\"@example.com>").unwrap().has_non_ascii());
        assert!(!Path::parse("<user@example.com>").unwrap().has_non_ascii());
        assert_eq!(
            Path::from_mailbox("a@example.com").unwrap().mailbox(),
            "a@example.com"
        );
    }

    #[test]
    fn invalid_paths() {
        let long_local = format!("<{}@example.com>", "a".repeat(65));
        let ok_local = format!("<{}@example.com>", "a".repeat(64));
        assert!(Path::parse(&ok_local).is_ok());
        let long_label = format!("<a@{}.example>", "b".repeat(64));
        let long_domain = format!("<a@{}example>", "abcdefghi.".repeat(26));
        let long_path = format!(
            "<@relay.example:{}@{}example>",
            "a".repeat(60),
            "abcdefghi.".repeat(19)
        );
        let cases: &[(&str, PathError)] = &[
            ("user@example.com", PathError::MissingBrackets),
            ("<user@example.com", PathError::MissingBrackets),
            ("<user", PathError::MissingBrackets),
            ("<>", PathError::NullPathNotAllowed),
            ("<@example.com>", PathError::EmptyLocalPart),
            ("<\"\"@example.com>", PathError::EmptyLocalPart),
            ("<a@b@c>", PathError::TooManyAtSigns),
            ("<a@b.example@c.example>", PathError::TooManyAtSigns),
            ("<\"john doe@example.com>", PathError::UnbalancedQuote),
            ("<john\"doe@example.com>", PathError::UnbalancedQuote),
            ("<user>", PathError::MissingDomain),
            ("<Postmaster>", PathError::MissingDomain),
            ("<user@>", PathError::MissingDomain),
            ("<.user@example.com>", PathError::InvalidLocalPart),
            ("<user.@example.com>", PathError::InvalidLocalPart),
            ("<us..er@example.com>", PathError::InvalidLocalPart),
            ("<us er@example.com>", PathError::InvalidLocalPart),
            ("<user@exa mple.com>", PathError::InvalidDomain),
            ("<user@example..com>", PathError::InvalidDomain),
            ("<user@-example.com>", PathError::InvalidDomain),
            ("<user@example.com.>", PathError::InvalidDomain),
            ("<user@[300.0.0.1]>", PathError::InvalidDomain),
            ("<user@[192.0.2.1>", PathError::MissingBrackets),
            ("<user@[tag:content]>", PathError::InvalidDomain),
            ("<user@[IPv6:192.0.2.1]>", PathError::InvalidDomain),
            ("<us\0er@example.com>", PathError::ControlCharacter),
            ("<user@exam\rple.com>", PathError::ControlCharacter),
            ("<\"a\tb\"@example.com>", PathError::ControlCharacter),
            (
                "<@relay.example,user@example.com>",
                PathError::InvalidSourceRoute,
            ),
            ("<@:user@example.com>", PathError::InvalidSourceRoute),
            (
                "<@bad..relay:user@example.com>",
                PathError::InvalidSourceRoute,
            ),
            ("<user@example.com> ", PathError::TrailingCharacters),
            (&long_local, PathError::LocalPartTooLong),
            (&long_label, PathError::InvalidDomain),
            (&long_domain, PathError::DomainTooLong),
            (&long_path, PathError::PathTooLong),
        ];
        for (input, err) in cases {
            assert_eq!(Path::parse(input), Err(*err), "{input}");
        }
    }

    #[test]
    fn reverse_and_forward() {
        assert_eq!(ReversePath::parse("<>"), Ok(ReversePath::Null));
        assert_eq!(ReversePath::Null.to_string(), "<>");
        assert_eq!(
            ForwardPath::parse("<Postmaster>"),
            Ok(ForwardPath::Postmaster)
        );
        assert_eq!(
            ForwardPath::parse("<POSTMASTER>"),
            Ok(ForwardPath::Postmaster)
        );
        assert_eq!(
            ForwardPath::parse("<postmaster>"),
            Ok(ForwardPath::Postmaster)
        );
        assert_eq!(
            ForwardPath::parse("<\"postmaster\">"),
            Err(PathError::MissingDomain)
        );
        assert_eq!(ForwardPath::parse("<>"), Err(PathError::NullPathNotAllowed));
        assert_eq!(
            ReversePath::parse("<postmaster>"),
            Err(PathError::MissingDomain)
        );
        let p = ForwardPath::parse("<Postmaster@Example.com>").unwrap();
        assert_eq!(p.path().unwrap().local_part(), "Postmaster");
        assert_eq!(ForwardPath::Postmaster.to_string(), "<Postmaster>");
    }
}
