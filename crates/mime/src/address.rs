//! Address lists for the ENVELOPE (RFC 9051 §7.5.2, RFC 5322 §3.4).
//!
//! mail-parser decodes RFC 2047 encoded words in display names and joins
//! comments into them, and it has no source route; the envelope needs the
//! header text as it is, split into name, source route, mailbox and host.
//! So this is a small RFC 5322 address-list reader working on raw bytes
//! (8-bit bytes are kept):
//!
//! * display names are the phrase's words joined by single spaces, quoted
//!   strings unquoted; without a phrase, a comment becomes the name;
//! * `<@a,@b:user@host>` gives the source route `@a,@b`;
//! * a group `name: a, b;` becomes a start marker (mailbox = group name,
//!   host NIL), its members, and an end marker (all NIL);
//! * a missing local part or domain becomes `MISSING_MAILBOX` /
//!   `MISSING_DOMAIN` (as Dovecot does), never NIL, since a NIL host marks
//!   group syntax.

use serde::{Deserialize, Serialize};

use crate::raw::Raw;

/// Mailbox name given to an address without a local part.
pub const MISSING_MAILBOX: &str = "MISSING_MAILBOX";
/// Host name given to an address without a domain.
pub const MISSING_DOMAIN: &str = "MISSING_DOMAIN";

/// One address structure of the envelope, or a group marker.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AddressFields {
    /// Display name (phrase), not decoded.
    #[serde(rename = "n", default, skip_serializing_if = "Option::is_none")]
    pub name: Option<Raw>,
    /// Source route (`@a,@b`).
    #[serde(rename = "a", default, skip_serializing_if = "Option::is_none")]
    pub adl: Option<Raw>,
    /// Local part; the group name in a group start marker.
    #[serde(rename = "m", default, skip_serializing_if = "Option::is_none")]
    pub mailbox: Option<Raw>,
    /// Domain; NIL in group markers.
    #[serde(rename = "h", default, skip_serializing_if = "Option::is_none")]
    pub host: Option<Raw>,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    /// An atom, or a quoted string's unescaped content.
    Word(Vec<u8>),
    /// A comment's content.
    Comment(Vec<u8>),
    /// `[...]`, brackets included.
    DomainLiteral(Vec<u8>),
    /// One of `< > : ; @ , .`
    Special(u8),
}

#[derive(Debug)]
struct Token {
    tok: Tok,
    /// White space (or a comment) came before it.
    ws: bool,
}

const SPECIALS: &[u8] = b"()<>[]:;@,.\"";

fn tokenize(s: &[u8]) -> Vec<Token> {
    let mut out = Vec::new();
    let mut i = 0;
    let mut ws = false;
    while i < s.len() {
        let c = s[i];
        match c {
            b' ' | b'\t' | b'\r' | b'\n' => {
                ws = true;
                i += 1;
                continue;
            }
            b'(' => {
                let mut depth = 0usize;
                let mut text = Vec::new();
                while i < s.len() {
                    let c = s[i];
                    i += 1;
                    match c {
                        b'\\' if i < s.len() => {
                            text.push(s[i]);
                            i += 1;
                        }
                        b'(' => {
                            if depth > 0 {
                                text.push(c);
                            }
                            depth += 1;
                        }
                        b')' => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                            text.push(c);
                        }
                        _ => text.push(c),
                    }
                }
                out.push(Token {
                    tok: Tok::Comment(text),
                    ws,
                });
                ws = true;
                continue;
            }
            b'"' => {
                let mut text = Vec::new();
                i += 1;
                while i < s.len() {
                    let c = s[i];
                    i += 1;
                    match c {
                        b'\\' if i < s.len() => {
                            text.push(s[i]);
                            i += 1;
                        }
                        b'"' => break,
                        _ => text.push(c),
                    }
                }
                out.push(Token {
                    tok: Tok::Word(text),
                    ws,
                });
            }
            b'[' => {
                let start = i;
                let end = s[i..]
                    .iter()
                    .position(|&b| b == b']')
                    .map_or(s.len(), |p| i + p + 1);
                out.push(Token {
                    tok: Tok::DomainLiteral(s[start..end].to_vec()),
                    ws,
                });
                i = end;
            }
            b'<' | b'>' | b':' | b';' | b'@' | b',' | b'.' => {
                out.push(Token {
                    tok: Tok::Special(c),
                    ws,
                });
                i += 1;
            }
            _ => {
                // An atom; a stray `)` or `]` is taken as a one-byte atom.
                let start = i;
                i += 1;
                while i < s.len() && !SPECIALS.contains(&s[i]) && !matches!(s[i], b' ' | b'\t') {
                    i += 1;
                }
                out.push(Token {
                    tok: Tok::Word(s[start..i].to_vec()),
                    ws,
                });
            }
        }
        ws = false;
    }
    out
}

/// Words joined by single spaces where the header had white space.
fn phrase(tokens: &[Token]) -> Vec<u8> {
    let mut out = Vec::new();
    for t in tokens {
        let text: &[u8] = match &t.tok {
            Tok::Word(w) => w,
            Tok::DomainLiteral(d) => d,
            Tok::Special(c) => std::slice::from_ref(c),
            Tok::Comment(_) => continue,
        };
        if t.ws && !out.is_empty() {
            out.push(b' ');
        }
        out.extend_from_slice(text);
    }
    out
}

/// Tokens concatenated without white space (local parts, domains, routes).
fn joined(tokens: &[Token]) -> Vec<u8> {
    let mut out = Vec::new();
    for t in tokens {
        match &t.tok {
            Tok::Word(w) => out.extend_from_slice(w),
            Tok::DomainLiteral(d) => out.extend_from_slice(d),
            Tok::Special(c) => out.push(*c),
            Tok::Comment(_) => {}
        }
    }
    out
}

fn last_comment(tokens: &[Token]) -> Option<Vec<u8>> {
    tokens.iter().rev().find_map(|t| match &t.tok {
        Tok::Comment(c) if !c.is_empty() => Some(c.clone()),
        _ => None,
    })
}

fn non_empty(v: Vec<u8>) -> Option<Raw> {
    (!v.is_empty()).then_some(Raw(v))
}

fn or_missing(v: Vec<u8>, missing: &str) -> Option<Raw> {
    Some(if v.is_empty() {
        Raw::from(missing)
    } else {
        Raw(v)
    })
}

struct Parser {
    toks: Vec<Token>,
    i: usize,
    out: Vec<AddressFields>,
}

impl Parser {
    fn special(&self) -> Option<u8> {
        match self.toks.get(self.i) {
            Some(Token {
                tok: Tok::Special(c),
                ..
            }) => Some(*c),
            _ => None,
        }
    }

    /// Index of the next token at or after `self.i` that is one of `stops`.
    fn find(&self, stops: &[u8]) -> usize {
        (self.i..self.toks.len())
            .find(|&j| matches!(self.toks[j].tok, Tok::Special(c) if stops.contains(&c)))
            .unwrap_or(self.toks.len())
    }

    fn push(&mut self, name: Option<Raw>, adl: Option<Raw>, local: Vec<u8>, domain: Vec<u8>) {
        if name.is_none() && local.is_empty() && domain.is_empty() {
            return;
        }
        self.out.push(AddressFields {
            name,
            adl,
            mailbox: or_missing(local, MISSING_MAILBOX),
            host: or_missing(domain, MISSING_DOMAIN),
        });
    }

    /// One address (mailbox or group) and the separator after it.
    fn address(&mut self, in_group: bool) {
        let start = self.i;
        let stop = self.find(b"<:,;");
        self.i = stop;
        match self.special() {
            Some(b'<') => {
                self.i += 1;
                let (adl, local, domain) = self.angle_addr();
                let words = &self.toks[start..stop];
                // A comment inside the brackets is no name (Dovecot agrees:
                // `<user (c)@ (c) host>` has a NIL name).
                let name = non_empty(phrase(words)).or_else(|| last_comment(words).map(Raw));
                self.push(name, adl, local, domain);
                self.skip_to_separator(in_group);
            }
            Some(b':') if !in_group => {
                self.i += 1;
                let name = phrase(&self.toks[start..stop]);
                self.out.push(AddressFields {
                    mailbox: Some(Raw(name)),
                    ..Default::default()
                });
                while self.i < self.toks.len() {
                    match self.special() {
                        Some(b';') => {
                            self.i += 1;
                            break;
                        }
                        Some(b',') => self.i += 1,
                        _ => self.address(true),
                    }
                }
                self.out.push(AddressFields::default());
                self.skip_to_separator(false);
            }
            _ => {
                let words = &self.toks[start..stop];
                let (name, local, domain) = addr_spec(words);
                self.push(name, None, local, domain);
                match self.special() {
                    Some(b';') if in_group => {}
                    Some(_) => self.i += 1,
                    None => {}
                }
            }
        }
    }

    /// After `<`: optional route, addr-spec, `>`. Returns the route, local
    /// part and domain (comments inside are dropped).
    fn angle_addr(&mut self) -> (Option<Raw>, Vec<u8>, Vec<u8>) {
        let mut adl = None;
        if self.special() == Some(b'@') {
            let end = self.find(b":>");
            if matches!(self.toks.get(end).map(|t| &t.tok), Some(Tok::Special(b':'))) {
                adl = non_empty(joined(&self.toks[self.i..end]));
                self.i = end + 1;
            }
        }
        let end = self.find(b">");
        let spec = &self.toks[self.i..end];
        let (local, domain) = match spec.iter().rposition(|t| t.tok == Tok::Special(b'@')) {
            Some(at) => (joined(&spec[..at]), joined(&spec[at + 1..])),
            None => (joined(spec), Vec::new()),
        };
        self.i = (end + 1).min(self.toks.len());
        (adl, local, domain)
    }

    /// Skips anything up to and including the next `,` (or up to a `;`
    /// that closes the current group).
    fn skip_to_separator(&mut self, in_group: bool) {
        while self.i < self.toks.len() {
            match self.special() {
                Some(b',') => {
                    self.i += 1;
                    return;
                }
                Some(b';') if in_group => return,
                _ => self.i += 1,
            }
        }
    }
}

/// A bare `local@domain` (or something less).
fn addr_spec(words: &[Token]) -> (Option<Raw>, Vec<u8>, Vec<u8>) {
    let comment = last_comment(words).map(Raw);
    match words.iter().rposition(|t| t.tok == Tok::Special(b'@')) {
        Some(at) => (comment, joined(&words[..at]), joined(&words[at + 1..])),
        None => {
            let content: Vec<&Token> = words
                .iter()
                .filter(|t| !matches!(t.tok, Tok::Comment(_)))
                .collect();
            // Several words separated by white space are a display name
            // without an address; a single (dotted) word is a local part.
            if content.is_empty() {
                // Only comments (`group: (foo) ;`): no address at all.
                (None, Vec::new(), Vec::new())
            } else if content.iter().skip(1).any(|t| t.ws) {
                (non_empty(phrase(words)), Vec::new(), Vec::new())
            } else {
                (comment, joined(words), Vec::new())
            }
        }
    }
}

/// Reads an unfolded address-list header value.
pub(crate) fn parse_list(value: &[u8]) -> Vec<AddressFields> {
    let mut p = Parser {
        toks: tokenize(value),
        i: 0,
        out: Vec::new(),
    };
    while p.i < p.toks.len() {
        let before = p.i;
        p.address(false);
        if p.i == before {
            p.i += 1;
        }
    }
    p.out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(
        name: Option<&str>,
        adl: Option<&str>,
        mailbox: Option<&str>,
        host: Option<&str>,
    ) -> AddressFields {
        AddressFields {
            name: name.map(Raw::from),
            adl: adl.map(Raw::from),
            mailbox: mailbox.map(Raw::from),
            host: host.map(Raw::from),
        }
    }

    #[test]
    fn name_addr_and_addr_spec() {
        assert_eq!(
            parse_list(b"\"Doe, John\" <john@example.com>, jane@example.com (Jane  D.)"),
            vec![
                a(Some("Doe, John"), None, Some("john"), Some("example.com")),
                a(Some("Jane  D."), None, Some("jane"), Some("example.com")),
            ]
        );
        assert_eq!(
            parse_list(b"John  Q. Public <john.q.public@example.com>"),
            vec![a(
                Some("John Q. Public"),
                None,
                Some("john.q.public"),
                Some("example.com")
            )]
        );
    }

    #[test]
    fn encoded_words_and_8bit_stay_as_they_are() {
        assert_eq!(
            parse_list(b"=?UTF-8?Q?J=C3=B6rg?= <j@example.com>"),
            vec![a(
                Some("=?UTF-8?Q?J=C3=B6rg?="),
                None,
                Some("j"),
                Some("example.com")
            )]
        );
        let v = parse_list("Jörg <j@example.com>".as_bytes());
        assert_eq!(v[0].name.as_ref().unwrap().as_bytes(), "Jörg".as_bytes());
    }

    #[test]
    fn source_route_and_domain_literal() {
        assert_eq!(
            parse_list(b"<@relay1.test,@relay2.test:user@[192.0.2.1]>"),
            vec![a(
                None,
                Some("@relay1.test,@relay2.test"),
                Some("user"),
                Some("[192.0.2.1]")
            )]
        );
    }

    #[test]
    fn groups_give_start_and_end_markers() {
        assert_eq!(
            parse_list(b"Team: ann@example.com, Bob <bob@example.com>;, carl@example.com"),
            vec![
                a(None, None, Some("Team"), None),
                a(None, None, Some("ann"), Some("example.com")),
                a(Some("Bob"), None, Some("bob"), Some("example.com")),
                a(None, None, None, None),
                a(None, None, Some("carl"), Some("example.com")),
            ]
        );
        // A comment alone in a group is no member (RFC 3501 §7.4.2).
        assert_eq!(
            parse_list(b"group:;, group2: (foo) ;"),
            vec![
                a(None, None, Some("group"), None),
                a(None, None, None, None),
                a(None, None, Some("group2"), None),
                a(None, None, None, None)
            ]
        );
        assert_eq!(
            parse_list(b"undisclosed-recipients:;"),
            vec![
                a(None, None, Some("undisclosed-recipients"), None),
                a(None, None, None, None)
            ]
        );
    }

    #[test]
    fn missing_parts_are_filled_in() {
        assert_eq!(
            parse_list(b"user, @example.com, Display Name"),
            vec![
                a(None, None, Some("user"), Some(MISSING_DOMAIN)),
                a(None, None, Some(MISSING_MAILBOX), Some("example.com")),
                a(
                    Some("Display Name"),
                    None,
                    Some(MISSING_MAILBOX),
                    Some(MISSING_DOMAIN)
                ),
            ]
        );
        assert_eq!(parse_list(b""), vec![]);
        assert_eq!(parse_list(b"<>, ,"), vec![]);
    }

    #[test]
    fn quoted_local_part_is_unquoted() {
        assert_eq!(
            parse_list(b"\"john doe\"@example.com"),
            vec![a(None, None, Some("john doe"), Some("example.com"))]
        );
    }
}
