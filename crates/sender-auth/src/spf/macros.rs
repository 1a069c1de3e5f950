//! SPF macro strings (RFC 7208 §7): their syntax (§7.1, the
//! `macro-string` and `explain-string` rules of §12) and their expansion
//! (§7.3, §7.4).
//!
//! Invariants:
//! * parsing is total and strict: a `%` not followed by `%`, `_`, `-` or a
//!   well-formed `%{…}` is an error, as is any byte outside `%x21-7E` (and
//!   SP in explanations), so a bad macro is a `permerror` of the record that
//!   holds it (§7.1) and never a guess;
//! * `c`, `r` and `t` are refused outside explanation text (§7.2), and a
//!   digit transformer of zero is refused (§7.3);
//! * expansion does no I/O: the one DNS-derived value (`%{p}`) is looked up
//!   by the caller beforehand and handed in through [`Context`].

use std::net::IpAddr;

/// Where a macro string appears; decides which letters and bytes it may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A `domain-spec` of a mechanism, `redirect=` or `exp=` (§7.1).
    Domain,
    /// The TXT record an `exp=` points at: `explain-string` (§6.2, §7.1),
    /// where SP and the letters `c`, `r`, `t` are allowed.
    Explanation,
    /// The value of an unknown modifier: only its syntax matters (§6).
    Unknown,
}

/// The macro letters of §7.3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Letter {
    /// `s`: the sender, `local-part@domain`.
    Sender,
    /// `l`: the local-part of the sender.
    Local,
    /// `o`: the domain of the sender.
    SenderDomain,
    /// `d`: the domain being checked.
    Domain,
    /// `i`: the client IP, dotted (IPv4) or as dot-separated nibbles (IPv6).
    Ip,
    /// `p`: the validated domain name of the client IP (§7.3), or `unknown`.
    Ptr,
    /// `v`: `in-addr` or `ip6`.
    IpVersion,
    /// `h`: the HELO/EHLO domain.
    Helo,
    /// `c`: the client IP in its readable form (explanations only).
    ClientIp,
    /// `r`: the receiving host (explanations only).
    Receiver,
    /// `t`: the current time in seconds since the epoch (explanations only).
    Timestamp,
}

impl Letter {
    fn from_char(c: u8) -> Option<Letter> {
        Some(match c.to_ascii_lowercase() {
            b's' => Letter::Sender,
            b'l' => Letter::Local,
            b'o' => Letter::SenderDomain,
            b'd' => Letter::Domain,
            b'i' => Letter::Ip,
            b'p' => Letter::Ptr,
            b'v' => Letter::IpVersion,
            b'h' => Letter::Helo,
            b'c' => Letter::ClientIp,
            b'r' => Letter::Receiver,
            b't' => Letter::Timestamp,
            _ => return None,
        })
    }

    /// §7.2: `c`, `r` and `t` belong to explanations only.
    fn explanation_only(self) -> bool {
        matches!(
            self,
            Letter::ClientIp | Letter::Receiver | Letter::Timestamp
        )
    }
}

/// One `%{…}` expansion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Macro {
    /// Which value.
    pub letter: Letter,
    /// An upper-case letter: the value is URL-escaped (§7.3).
    pub escape: bool,
    /// The digit transformer: keep this many right-hand parts.
    pub keep: Option<usize>,
    /// The `r` transformer: reverse the parts first.
    pub reverse: bool,
    /// The delimiters the value is split on (`.` when none are given).
    pub delimiters: Vec<u8>,
}

/// A piece of a macro string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Literal text, with `%%`, `%_` and `%-` already turned into `%`, SP
    /// and `%20`.
    Literal(String),
    /// A `%{…}` expansion.
    Macro(Macro),
}

/// A parsed macro string.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MacroString {
    pieces: Vec<Piece>,
    /// The literal characters after the last `macro-expand` (`%{…}`, `%%`,
    /// `%_`, `%-`), or `None` when the string ends with one: what the
    /// `domain-end` rule of §7.1 is checked against.
    literal_tail: Option<String>,
}

/// The values a macro string expands from (§7.3).
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The local-part of the sender (`postmaster` when it had none, §4.3).
    pub local: &'a str,
    /// The domain of the sender.
    pub sender_domain: &'a str,
    /// The domain being checked (`<domain>` of the current `check_host()`).
    pub domain: &'a str,
    /// The client IP, IPv4-mapped addresses already made IPv4 (§5).
    pub ip: IpAddr,
    /// The HELO/EHLO domain as given.
    pub helo: &'a str,
    /// Our host name.
    pub receiver: &'a str,
    /// The validated domain name of `ip`, when the string uses `%{p}`.
    pub ptr: Option<&'a str>,
    /// Seconds since the epoch.
    pub now: u64,
}

impl MacroString {
    /// Parses `text` as the macro string of `kind`.
    pub fn parse(text: &str, kind: Kind) -> Result<MacroString, String> {
        let bytes = text.as_bytes();
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut tail = Some(String::new());
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            if b != b'%' {
                let allowed =
                    (0x21..=0x7e).contains(&b) || (b == b' ' && kind == Kind::Explanation);
                if !allowed {
                    return Err(format!("byte {b:#04x} is not allowed in {text:?}"));
                }
                literal.push(b as char);
                if let Some(t) = tail.as_mut() {
                    t.push(b as char);
                } else {
                    tail = Some((b as char).to_string());
                }
                i += 1;
                continue;
            }
            // A macro-expand.
            match bytes.get(i + 1) {
                Some(b'%') => literal.push('%'),
                Some(b'_') => literal.push(' '),
                Some(b'-') => literal.push_str("%20"),
                Some(b'{') => {
                    let close = bytes[i..]
                        .iter()
                        .position(|&c| c == b'}')
                        .map(|p| i + p)
                        .ok_or_else(|| format!("unterminated macro in {text:?}"))?;
                    let m = parse_macro(&bytes[i + 2..close], kind)
                        .map_err(|e| format!("{e} in {text:?}"))?;
                    if !literal.is_empty() {
                        pieces.push(Piece::Literal(std::mem::take(&mut literal)));
                    }
                    pieces.push(Piece::Macro(m));
                    tail = None;
                    i = close + 1;
                    continue;
                }
                _ => return Err(format!("a lone '%' in {text:?}")),
            }
            tail = None;
            i += 2;
        }
        if !literal.is_empty() {
            pieces.push(Piece::Literal(literal));
        }
        Ok(MacroString {
            pieces,
            literal_tail: tail,
        })
    }

    /// Whether the string is empty.
    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }

    /// Whether the string expands `letter` anywhere.
    pub fn uses(&self, letter: Letter) -> bool {
        self.pieces
            .iter()
            .any(|p| matches!(p, Piece::Macro(m) if m.letter == letter))
    }

    /// Whether the string satisfies §7.1's `domain-spec = macro-string
    /// domain-end`, `domain-end = ( "." toplabel [ "." ] ) / macro-expand`.
    pub fn is_domain_spec(&self) -> bool {
        let Some(tail) = &self.literal_tail else {
            return !self.pieces.is_empty();
        };
        let tail = tail.strip_suffix('.').unwrap_or(tail);
        match tail.rsplit_once('.') {
            Some((_, top)) => is_toplabel(top),
            None => false,
        }
    }

    /// The expansion of the string with the values of `ctx` (§7.3).
    pub fn expand(&self, ctx: &Context<'_>) -> String {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Literal(s) => out.push_str(s),
                Piece::Macro(m) => out.push_str(&expand_macro(m, ctx)),
            }
        }
        out
    }
}

/// §7.1 `toplabel = ( *alphanum ALPHA *alphanum ) /
/// ( 1*alphanum "-" *( alphanum / "-" ) alphanum )`.
pub fn is_toplabel(label: &str) -> bool {
    let b = label.as_bytes();
    let (Some(first), Some(last)) = (b.first(), b.last()) else {
        return false;
    };
    b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        && first.is_ascii_alphanumeric()
        && last.is_ascii_alphanumeric()
        && b.iter().any(|c| c.is_ascii_alphabetic() || *c == b'-')
}

/// The inside of `%{…}`: `macro-letter transformers *delimiter`.
fn parse_macro(inner: &[u8], kind: Kind) -> Result<Macro, String> {
    let (&first, rest) = inner
        .split_first()
        .ok_or_else(|| "an empty macro".to_string())?;
    let letter = Letter::from_char(first)
        .ok_or_else(|| format!("unknown macro letter {:?}", first as char))?;
    if letter.explanation_only() && kind == Kind::Domain {
        return Err(format!(
            "macro letter {:?} is allowed in explanations only",
            first as char
        ));
    }
    let digits = rest.iter().take_while(|c| c.is_ascii_digit()).count();
    let keep = if digits == 0 {
        None
    } else {
        let n = rest[..digits].iter().fold(0usize, |n, d| {
            n.saturating_mul(10).saturating_add(usize::from(d - b'0'))
        });
        if n == 0 {
            return Err("a digit transformer of zero".into());
        }
        Some(n)
    };
    let mut rest = &rest[digits..];
    let reverse = matches!(rest.first(), Some(b'r' | b'R'));
    if reverse {
        rest = &rest[1..];
    }
    if let Some(bad) = rest.iter().find(|c| !b".-+,/_=".contains(c)) {
        return Err(format!("{:?} is not a macro delimiter", *bad as char));
    }
    Ok(Macro {
        letter,
        escape: first.is_ascii_uppercase(),
        keep,
        reverse,
        delimiters: rest.to_vec(),
    })
}

fn expand_macro(m: &Macro, ctx: &Context<'_>) -> String {
    let value = match m.letter {
        Letter::Sender => format!("{}@{}", ctx.local, ctx.sender_domain),
        Letter::Local => ctx.local.to_string(),
        Letter::SenderDomain => ctx.sender_domain.to_string(),
        Letter::Domain => ctx.domain.to_string(),
        Letter::Ip => dotted(ctx.ip),
        Letter::Ptr => ctx.ptr.unwrap_or("unknown").to_string(),
        Letter::IpVersion => match ctx.ip {
            IpAddr::V4(_) => "in-addr".into(),
            IpAddr::V6(_) => "ip6".into(),
        },
        Letter::Helo => ctx.helo.to_string(),
        Letter::ClientIp => ctx.ip.to_string(),
        Letter::Receiver => {
            if ctx.receiver.is_empty() {
                "unknown".into()
            } else {
                ctx.receiver.to_string()
            }
        }
        Letter::Timestamp => ctx.now.to_string(),
    };
    let delimiters: &[u8] = if m.delimiters.is_empty() {
        b"."
    } else {
        &m.delimiters
    };
    let mut parts: Vec<&str> = value
        .split(|c: char| c.is_ascii() && delimiters.contains(&(c as u8)))
        .collect();
    if m.reverse {
        parts.reverse();
    }
    if let Some(n) = m.keep
        && n < parts.len()
    {
        parts.drain(..parts.len() - n);
    }
    let joined = parts.join(".");
    if m.escape {
        url_escape(&joined)
    } else {
        joined
    }
}

/// The `i` value (§7.3): dotted decimal for IPv4, 32 dot-separated
/// lower-case nibbles for IPv6; reversed with `.in-addr.arpa` or `.ip6.arpa`
/// appended it is the name a PTR query asks for.
pub fn dotted(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => v6
            .octets()
            .iter()
            .flat_map(|o| [o >> 4, o & 0xf])
            .map(|n| format!("{n:x}"))
            .collect::<Vec<_>>()
            .join("."),
    }
}

/// §7.3: upper-case macros are URL-escaped, everything but RFC 3986's
/// unreserved characters as `%XX`.
fn url_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The context of RFC 7208 §7.4's examples.
    fn rfc_context(ip: &str) -> Context<'static> {
        Context {
            local: "strong-bad",
            sender_domain: "email.example.com",
            domain: "email.example.com",
            ip: ip.parse().unwrap(),
            helo: "mx.example.org",
            receiver: "mx.example.net",
            ptr: None,
            now: 1_000_000_000,
        }
    }

    fn expand(text: &str, ctx: &Context<'_>) -> String {
        MacroString::parse(text, Kind::Explanation)
            .unwrap()
            .expand(ctx)
    }

    #[test]
    fn rfc7208_7_4_examples_expand_as_the_rfc_says() {
        let ctx = rfc_context("192.0.2.3");
        for (macro_string, expected) in [
            ("%{s}", "strong-bad@email.example.com"),
            ("%{o}", "email.example.com"),
            ("%{d}", "email.example.com"),
            ("%{d4}", "email.example.com"),
            ("%{d3}", "email.example.com"),
            ("%{d2}", "example.com"),
            ("%{d1}", "com"),
            ("%{dr}", "com.example.email"),
            ("%{d2r}", "example.email"),
            ("%{l}", "strong-bad"),
            ("%{l-}", "strong.bad"),
            ("%{lr}", "strong-bad"),
            ("%{lr-}", "bad.strong"),
            ("%{l1r-}", "strong"),
            (
                "%{ir}.%{v}._spf.%{d2}",
                "3.2.0.192.in-addr._spf.example.com",
            ),
            ("%{lr-}.lp._spf.%{d2}", "bad.strong.lp._spf.example.com"),
            (
                "%{lr-}.lp.%{ir}.%{v}._spf.%{d2}",
                "bad.strong.lp.3.2.0.192.in-addr._spf.example.com",
            ),
            (
                "%{ir}.%{v}.%{l1r-}.lp._spf.%{d2}",
                "3.2.0.192.in-addr.strong.lp._spf.example.com",
            ),
            (
                "%{d2}.trusted-domains.example.net",
                "example.com.trusted-domains.example.net",
            ),
        ] {
            assert_eq!(expand(macro_string, &ctx), expected, "{macro_string}");
        }
        let ctx6 = rfc_context("2001:db8::cb01");
        assert_eq!(
            expand("%{ir}.%{v}._spf.%{d2}", &ctx6),
            "1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6._spf.example.com"
        );
    }

    #[test]
    fn escapes_and_explanation_letters() {
        let mut ctx = rfc_context("192.0.2.3");
        ctx.local = "~jack&jill=up-a_b3.c";
        assert_eq!(expand("%{L}", &ctx), "~jack%26jill%3Dup-a_b3.c");
        assert_eq!(expand("a%%b%_c%-d", &ctx), "a%b c%20d");
        assert_eq!(
            expand("%{c} at %{t} via %{r}", &ctx),
            "192.0.2.3 at 1000000000 via mx.example.net"
        );
        assert_eq!(expand("%{p}", &ctx), "unknown");
        ctx.ptr = Some("mx.example.com");
        assert_eq!(expand("%{p2}", &ctx), "example.com");
        assert_eq!(expand("%{d9}", &ctx), "email.example.com");
        let v6 = rfc_context("cafe:babe::1");
        assert_eq!(expand("%{c}", &v6), "cafe:babe::1");
    }

    #[test]
    fn bad_macros_are_syntax_errors() {
        for bad in [
            "%",
            "a%",
            "%x",
            "%{",
            "%{d",
            "%{}",
            "%{q}",
            "%{d0}",
            "%{d2x}",
            "%{dr r}",
            "%(ir)",
            "foo%.bar",
            "a b",
            "caf\u{e9}",
            "tab\there",
        ] {
            assert!(MacroString::parse(bad, Kind::Domain).is_err(), "{bad:?}");
        }
        // c, r, t: explanations only (§7.2).
        for letter in ["%{c}", "%{r}.example.com", "%{t}"] {
            assert!(
                MacroString::parse(letter, Kind::Domain).is_err(),
                "{letter}"
            );
            assert!(
                MacroString::parse(letter, Kind::Explanation).is_ok(),
                "{letter}"
            );
        }
        assert!(MacroString::parse("two words", Kind::Explanation).is_ok());
    }

    #[test]
    fn domain_end_follows_7_1() {
        for good in [
            "example.com",
            "example.com.",
            "%{d}",
            "%{d}.example.com",
            "foo:bar/baz.example.com",
            "a.%-",
            "e14.example.xn--ca-fb",
            "e14.example.1-2",
        ] {
            let m = MacroString::parse(good, Kind::Domain).unwrap();
            assert!(m.is_domain_spec(), "{good}");
        }
        for bad in [
            "",
            "museum",
            "museum.",
            "foo.1",
            "111.222.33.44",
            "example.-com",
            "example.com-",
            "example.com:8080",
            "%{d}com",
            "%{d}.",
            "example.com/24",
        ] {
            let ok = MacroString::parse(bad, Kind::Domain).is_ok_and(|m| m.is_domain_spec());
            assert!(!ok, "{bad}");
        }
    }
}
