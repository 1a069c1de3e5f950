//! SMTP replies: written by the servers, parsed by the outbound client.
//!
//! RFC 5321 §4.2: a reply is one or more lines `code-text` / `code text`,
//! the last one marked by a space after the code. With ENHANCEDSTATUSCODES
//! (RFC 2034) the text of every line starts with a status such as `5.7.1`.
//! The writer guarantees the framing cannot be broken by the text (no CR, LF
//! or other control characters reach the wire); the parser is bounded in
//! line length and line count so a hostile server cannot make the client
//! buffer without limit.

use std::fmt;

use crate::line::{Line, take_line};

/// An RFC 3463 enhanced status code, `class.subject.detail`, which tells
/// machines what a reply means more precisely than the 3-digit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EnhancedStatus {
    /// 2 (success), 4 (persistent transient failure) or 5 (permanent).
    pub class: u8,
    /// The subject (1 to 3 digits): 1 addressing, 5 protocol, 7 security…
    pub subject: u16,
    /// The detail (1 to 3 digits).
    pub detail: u16,
}

impl EnhancedStatus {
    /// Builds a status from its parts.
    pub const fn new(class: u8, subject: u16, detail: u16) -> EnhancedStatus {
        EnhancedStatus {
            class,
            subject,
            detail,
        }
    }

    /// Parses `class.subject.detail` (RFC 3463 §2: class is 2, 4 or 5;
    /// subject and detail are 1 to 3 digits).
    pub fn parse(s: &str) -> Option<EnhancedStatus> {
        let mut parts = s.split('.');
        let class = parts.next()?;
        let subject = parts.next()?;
        let detail = parts.next()?;
        if parts.next().is_some() {
            return None;
        }
        let class = match class {
            "2" => 2,
            "4" => 4,
            "5" => 5,
            _ => return None,
        };
        let number = |p: &str| -> Option<u16> {
            if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            p.parse().ok()
        };
        Some(EnhancedStatus {
            class,
            subject: number(subject)?,
            detail: number(detail)?,
        })
    }
}

impl fmt::Display for EnhancedStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// One SMTP reply, possibly multi-line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit reply code (RFC 5321 §4.2.1).
    pub code: u16,
    /// The enhanced status, written at the start of every line.
    pub status: Option<EnhancedStatus>,
    /// The text lines, without code or status. Empty means a bare code.
    pub lines: Vec<String>,
}

/// Outcome of [`Reply::parse`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyParse {
    /// The final line has not arrived yet: read more and parse again.
    Incomplete,
    /// A whole reply, and the bytes it used from the buffer.
    Complete(Reply, usize),
    /// Not an SMTP reply (bad code, mixed codes, overlong line, too many
    /// lines); the client should give up on the connection.
    Invalid,
}

/// Upper bound on lines in one parsed reply, so a server cannot stream
/// continuation lines forever. EHLO replies are the longest in practice
/// (a few dozen lines at most).
pub const MAX_REPLY_LINES: usize = 256;

fn parse_status_str(status: &str) -> Option<EnhancedStatus> {
    if status.is_empty() {
        return None;
    }
    let parsed = EnhancedStatus::parse(status);
    debug_assert!(parsed.is_some(), "malformed enhanced status {status:?}");
    parsed
}

/// Replaces control characters (other than HT, which RFC 5321 `textstring`
/// allows) so text can never end a reply line early or inject a second one.
fn push_sanitised(out: &mut Vec<u8>, text: &str) {
    for c in text.chars() {
        if (c.is_control() && c != '\t') || c == '\u{2028}' || c == '\u{2029}' {
            out.push(b' ');
        } else {
            let mut buf = [0; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
        }
    }
}

impl Reply {
    /// A one-line reply. `status` is an RFC 3463 code such as `"5.7.1"`, or
    /// `""` for replies that carry none (greeting, EHLO). A malformed status
    /// is a programming error: it panics in debug builds and is dropped in
    /// release builds.
    pub fn new(code: u16, status: &str, text: impl Into<String>) -> Reply {
        Reply {
            code,
            status: parse_status_str(status),
            lines: vec![text.into()],
        }
    }

    /// A multi-line reply (EHLO capabilities, HELP text…).
    pub fn multiline<I, S>(code: u16, status: &str, lines: I) -> Reply
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Reply {
            code,
            status: parse_status_str(status),
            lines: lines.into_iter().map(Into::into).collect(),
        }
    }

    /// Appends the reply in wire form: `250-first\r\n250 last\r\n`, the
    /// enhanced status repeated on every line (RFC 2034 §3).
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let count = self.lines.len().max(1);
        for i in 0..count {
            let text = self.lines.get(i).map(String::as_str).unwrap_or("");
            let last = i + 1 == count;
            // Codes are three digits; anything else is a caller bug, clamped
            // so the framing stays valid.
            let code = self.code.clamp(100, 999);
            out.extend_from_slice(code.to_string().as_bytes());
            if last && self.status.is_none() && text.is_empty() {
                out.extend_from_slice(b"\r\n");
                continue;
            }
            out.push(if last { b' ' } else { b'-' });
            if let Some(status) = self.status {
                out.extend_from_slice(status.to_string().as_bytes());
                if !text.is_empty() {
                    out.push(b' ');
                }
            }
            push_sanitised(out, text);
            out.extend_from_slice(b"\r\n");
        }
    }

    /// The wire form as a new buffer.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_to(&mut out);
        out
    }

    /// Parses one reply from the front of `buf` (client side). `max_line`
    /// bounds each line, CRLF included (RFC 5321 §4.5.3.1.5: 512).
    ///
    /// The enhanced status is taken from the first line when its class
    /// matches the code's first digit, and removed from every line that
    /// repeats it. Line endings are read leniently (a bare LF is accepted):
    /// the client only reads replies, where that cannot smuggle anything.
    pub fn parse(buf: &[u8], max_line: usize) -> ReplyParse {
        let mut pos = 0;
        let mut code = None;
        let mut status = None;
        let mut lines = Vec::new();
        loop {
            let (line, consumed) = match take_line(&buf[pos..], max_line) {
                Line::Incomplete => return ReplyParse::Incomplete,
                Line::TooLong { .. } => return ReplyParse::Invalid,
                Line::Complete { line, consumed } => (line, consumed),
            };
            pos += consumed;
            // RFC 5321 §4.2: `Reply-code = %x32-35 %x30-35 %x30-39`.
            let (c, sep, text) = match line {
                [a @ b'2'..=b'5', b @ b'0'..=b'5', c @ b'0'..=b'9', rest @ ..] => {
                    let n =
                        u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0');
                    match rest {
                        [] => (n, b' ', rest),
                        [sep @ (b' ' | b'-'), text @ ..] => (n, *sep, text),
                        _ => return ReplyParse::Invalid,
                    }
                }
                _ => return ReplyParse::Invalid,
            };
            if code.is_some_and(|prev| prev != c) {
                return ReplyParse::Invalid;
            }
            code = Some(c);
            let text = String::from_utf8_lossy(text);
            let (first_word, after) = match text.split_once(' ') {
                Some((w, after)) => (w, after),
                None => (&*text, ""),
            };
            let parsed =
                EnhancedStatus::parse(first_word).filter(|s| u16::from(s.class) == c / 100);
            let text = if lines.is_empty() {
                status = parsed;
                if parsed.is_some() {
                    after.to_string()
                } else {
                    text.to_string()
                }
            } else if parsed.is_some() && parsed == status {
                after.to_string()
            } else {
                text.to_string()
            };
            lines.push(text);
            if sep == b' ' {
                return ReplyParse::Complete(
                    Reply {
                        code: c,
                        status,
                        lines,
                    },
                    pos,
                );
            }
            if lines.len() >= MAX_REPLY_LINES {
                return ReplyParse::Invalid;
            }
        }
    }

    /// 2xx or 3xx: the command succeeded or the server waits for more.
    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }

    /// 3xx: the server waits for more (354 after DATA, 334 during AUTH).
    pub fn is_intermediate(&self) -> bool {
        (300..400).contains(&self.code)
    }

    /// 4xx: a transient failure; the client should retry later.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// 5xx: a permanent failure; the client must not retry as is.
    pub fn is_permanent(&self) -> bool {
        (500..600).contains(&self.code)
    }

    /// The text lines joined with spaces, for logs and DSNs.
    pub fn text(&self) -> String {
        self.lines.join(" ")
    }
}

/// What [`Reply::write_to`] sends, without the final CRLF, for logs.
impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.to_bytes();
        f.write_str(String::from_utf8_lossy(&bytes).trim_end_matches("\r\n"))
    }
}

/// The extensions a server announced in its EHLO reply (RFC 5321
/// §4.1.1.1), so the outbound client knows whether it may pipeline, use
/// STARTTLS, send 8-bit data, and so on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    domain: String,
    extensions: Vec<(String, Vec<String>)>,
}

impl Capabilities {
    /// Reads a 250 reply to EHLO; `None` for any other code. The first line
    /// is the server's name and greeting; each further line is
    /// `KEYWORD [params]`. The obsolete `AUTH=MECH …` form some servers
    /// still send is folded into `AUTH`.
    pub fn from_reply(reply: &Reply) -> Option<Capabilities> {
        if reply.code != 250 {
            return None;
        }
        let mut lines = reply.lines.iter();
        let domain = lines
            .next()
            .and_then(|l| l.split(' ').next())
            .unwrap_or("")
            .to_string();
        let mut extensions: Vec<(String, Vec<String>)> = Vec::new();
        for line in lines {
            let mut words = line.split(' ').filter(|w| !w.is_empty());
            let Some(keyword) = words.next() else {
                continue;
            };
            let mut keyword = keyword.to_ascii_uppercase();
            let mut params: Vec<String> = words.map(str::to_string).collect();
            if let Some(mechanism) = keyword.strip_prefix("AUTH=") {
                params.insert(0, mechanism.to_string());
                keyword = "AUTH".to_string();
            }
            match extensions.iter_mut().find(|(k, _)| *k == keyword) {
                Some((_, existing)) => {
                    for p in params {
                        if !existing.contains(&p) {
                            existing.push(p);
                        }
                    }
                }
                None => extensions.push((keyword, params)),
            }
        }
        Some(Capabilities { domain, extensions })
    }

    /// The name the server gave for itself on the first line.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// Whether the server announced `keyword` (case-insensitive).
    pub fn has(&self, keyword: &str) -> bool {
        self.params(keyword).is_some()
    }

    /// The parameters announced with `keyword`, if it was announced.
    pub fn params(&self, keyword: &str) -> Option<&[String]> {
        self.extensions
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(keyword))
            .map(|(_, p)| p.as_slice())
    }

    /// The announced keywords, upper-cased, in order.
    pub fn keywords(&self) -> impl Iterator<Item = &str> {
        self.extensions.iter().map(|(k, _)| k.as_str())
    }

    /// RFC 1870 `SIZE n`: the server's fixed message size limit, when it
    /// gave a positive one (`SIZE` alone or `SIZE 0` means no stated limit).
    pub fn size_limit(&self) -> Option<u64> {
        self.params("SIZE")?
            .first()?
            .parse()
            .ok()
            .filter(|&n| n > 0)
    }

    /// The SASL mechanisms from `AUTH` (RFC 4954 §3), upper-cased.
    pub fn auth_mechanisms(&self) -> Vec<String> {
        self.params("AUTH")
            .unwrap_or(&[])
            .iter()
            .map(|m| m.to_ascii_uppercase())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_single_and_multi_line() {
        assert_eq!(
            Reply::new(250, "2.1.0", "Sender OK").to_bytes(),
            b"250 2.1.0 Sender OK\r\n"
        );
        assert_eq!(
            Reply::new(220, "", "mx.example.com ESMTP").to_bytes(),
            b"220 mx.example.com ESMTP\r\n"
        );
        assert_eq!(
            Reply::multiline(250, "", ["mx.example.com", "PIPELINING", "SIZE 1000"]).to_bytes(),
            b"250-mx.example.com\r\n250-PIPELINING\r\n250 SIZE 1000\r\n"
        );
        // RFC 2034 §3: the status starts every line.
        assert_eq!(
            Reply::multiline(550, "5.7.1", ["first", "second", "last"]).to_bytes(),
            b"550-5.7.1 first\r\n550-5.7.1 second\r\n550 5.7.1 last\r\n"
        );
        assert_eq!(
            Reply::multiline(250, "", Vec::<String>::new()).to_bytes(),
            b"250\r\n"
        );
        assert_eq!(Reply::new(250, "2.0.0", "").to_bytes(), b"250 2.0.0\r\n");
        assert_eq!(
            Reply::multiline(250, "", ["", "x"]).to_bytes(),
            b"250-\r\n250 x\r\n"
        );
        assert_eq!(Reply::new(354, "", "Go ahead").to_string(), "354 Go ahead");
    }

    #[test]
    fn text_cannot_break_framing() {
        let reply = Reply::new(
            550,
            "5.1.1",
            "no such user\r\n250 2.0.0 Ok\nfake\rx\0y\u{85}z",
        );
        let wire = reply.to_bytes();
        assert_eq!(wire.iter().filter(|&&b| b == b'\n').count(), 1);
        assert_eq!(wire.iter().filter(|&&b| b == b'\r').count(), 1);
        assert!(wire.ends_with(b"\r\n"));
        assert!(!wire.contains(&0));
        assert_eq!(
            String::from_utf8(wire).unwrap(),
            "550 5.1.1 no such user  250 2.0.0 Ok fake x y z\r\n"
        );
        // Tabs are legal text.
        assert_eq!(Reply::new(250, "", "a\tb").to_bytes(), b"250 a\tb\r\n");
    }

    #[test]
    fn enhanced_status() {
        assert_eq!(
            EnhancedStatus::parse("5.7.1"),
            Some(EnhancedStatus::new(5, 7, 1))
        );
        assert_eq!(
            EnhancedStatus::parse("4.3.100"),
            Some(EnhancedStatus::new(4, 3, 100))
        );
        assert_eq!(EnhancedStatus::new(2, 0, 0).to_string(), "2.0.0");
        for bad in [
            "", "5.7", "5.7.1.1", "3.0.0", "5..1", "5.7.1000", "5.x.1", " 5.7.1", "55.7.1",
        ] {
            assert_eq!(EnhancedStatus::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn parses_replies() {
        let ok = |input: &[u8]| match Reply::parse(input, 512) {
            ReplyParse::Complete(reply, consumed) => (reply, consumed),
            other => panic!("{input:?}: {other:?}"),
        };
        let (r, n) = ok(b"250 2.1.0 Sender OK\r\n354 next\r\n");
        assert_eq!(n, 21);
        assert_eq!(r, Reply::new(250, "2.1.0", "Sender OK"));
        let (r, _) = ok(b"220 mx.example.com ESMTP ready\r\n");
        assert_eq!(r.status, None);
        assert_eq!(r.lines, ["mx.example.com ESMTP ready"]);
        let (r, _) = ok(b"250\r\n");
        assert_eq!(
            r,
            Reply {
                code: 250,
                status: None,
                lines: vec![String::new()]
            }
        );
        // The status must match the code's class to count as one.
        let (r, _) = ok(b"250 5.0.0 odd\r\n");
        assert_eq!(r.status, None);
        assert_eq!(r.lines, ["5.0.0 odd"]);
        // Bare LF is tolerated on the client side.
        let (r, n) = ok(b"421 4.3.2 Shutting down\n");
        assert_eq!(n, 24);
        assert!(r.is_transient() && !r.is_positive() && !r.is_permanent());
        let (r, _) = ok(b"550-5.7.1 one\r\n550-5.7.1 two\r\n550 5.7.1 three\r\n");
        assert_eq!(r, Reply::multiline(550, "5.7.1", ["one", "two", "three"]));
        assert!(r.is_permanent());
        assert_eq!(r.text(), "one two three");

        assert_eq!(Reply::parse(b"", 512), ReplyParse::Incomplete);
        assert_eq!(
            Reply::parse(b"250-first\r\n250 sec", 512),
            ReplyParse::Incomplete
        );
        for bad in [
            &b"25 short\r\n"[..],
            b"abc x\r\n",
            b"250x\r\n",
            b"150 too low\r\n",
            b"650 too high\r\n",
            b"260 bad second digit\r\n",
            b"250-a\r\n251 b\r\n",
        ] {
            assert_eq!(Reply::parse(bad, 512), ReplyParse::Invalid, "{bad:?}");
        }
        let long = [b"250 ".as_slice(), &[b'x'; 600], b"\r\n"].concat();
        assert_eq!(Reply::parse(&long, 512), ReplyParse::Invalid);
        let endless = b"250-x\r\n".repeat(MAX_REPLY_LINES + 1);
        assert_eq!(Reply::parse(&endless, 512), ReplyParse::Invalid);
    }

    #[test]
    fn round_trip_split_anywhere() {
        let replies = [
            Reply::new(250, "2.0.0", "OK"),
            Reply::multiline(250, "", ["mx.example", "PIPELINING", "8BITMIME"]),
            Reply::multiline(451, "4.3.0", ["Temporary failure", "try later"]),
            Reply::new(221, "2.0.0", "Bye"),
            Reply::new(334, "", ""),
        ];
        let mut wire = Vec::new();
        for r in &replies {
            r.write_to(&mut wire);
        }
        // Parse the concatenation whole, then with every prefix cut.
        let mut pos = 0;
        for r in &replies {
            let ReplyParse::Complete(parsed, n) = Reply::parse(&wire[pos..], 512) else {
                panic!("at {pos}");
            };
            assert_eq!(&parsed, r);
            for cut in pos..pos + n {
                assert_eq!(Reply::parse(&wire[pos..cut], 512), ReplyParse::Incomplete);
            }
            pos += n;
        }
        assert_eq!(pos, wire.len());
    }

    #[test]
    fn capabilities() {
        let wire = b"250-mx.example.com Hello client\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-8BITMIME\r\n250-AUTH PLAIN LOGIN\r\n250-AUTH=LOGIN CRAM-MD5\r\n250-STARTTLS\r\n250-ENHANCEDSTATUSCODES\r\n250-chunking\r\n250 SMTPUTF8\r\n";
        let ReplyParse::Complete(reply, n) = Reply::parse(wire, 512) else {
            panic!()
        };
        assert_eq!(n, wire.len());
        let caps = Capabilities::from_reply(&reply).unwrap();
        assert_eq!(caps.domain(), "mx.example.com");
        for k in [
            "PIPELINING",
            "8bitmime",
            "STARTTLS",
            "ENHANCEDSTATUSCODES",
            "CHUNKING",
            "SMTPUTF8",
        ] {
            assert!(caps.has(k), "{k}");
        }
        assert!(!caps.has("DSN"));
        assert_eq!(caps.size_limit(), Some(10240000));
        assert_eq!(caps.auth_mechanisms(), ["PLAIN", "LOGIN", "CRAM-MD5"]);
        assert_eq!(caps.keywords().count(), 8);
        let no_size = Reply::multiline(250, "", ["mx", "SIZE"]);
        let caps = Capabilities::from_reply(&no_size).unwrap();
        assert!(caps.has("SIZE"));
        assert_eq!(caps.size_limit(), None);
        assert_eq!(
            Capabilities::from_reply(&Reply::new(550, "5.0.0", "no")),
            None
        );
    }
}
