//! SMTP commands: parsing a line from the client, writing one as the client.
//!
//! RFC 5321 §4.1.1 and the extension RFCs define the syntax. Verbs are
//! case-insensitive (§2.4). The parser is strict where a lax reading could
//! change meaning (paths, parameters, arguments of argument-less commands)
//! and lenient where real clients deviate harmlessly (several spaces between
//! words, a space after `FROM:`/`TO:`, trailing spaces, address literals in
//! HELO). Every error says which reply to send, so sessions never guess.

use std::fmt;

use crate::params::{MAIL_USAGE, MailParameters, RCPT_USAGE, RcptParameters};
use crate::path::{self, ForwardPath, Host, Parsed, PathError, ReversePath};
use crate::reply::Reply;

/// The argument of EHLO or HELO: how the client names itself.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HeloName {
    /// Exactly what the client sent, for the `Received:` header (RFC 5321
    /// §4.4 wants the name as given, not a normalised one).
    pub as_sent: String,
    /// The parsed name or address literal, for checks (e.g. does the literal
    /// match the peer's address).
    pub host: Host,
}

/// One SMTP command, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `EHLO domain-or-literal` (RFC 5321 §4.1.1.1): start an ESMTP session.
    Ehlo(HeloName),
    /// `HELO domain` (RFC 5321 §4.1.1.1): start a plain SMTP session.
    /// Address literals are tolerated here too, as many clients send them.
    Helo(HeloName),
    /// `MAIL FROM:<reverse-path> [params]` (RFC 5321 §4.1.1.2).
    Mail {
        /// The sender, or `<>` for notifications.
        from: ReversePath,
        /// ESMTP parameters.
        params: MailParameters,
    },
    /// `RCPT TO:<forward-path> [params]` (RFC 5321 §4.1.1.3).
    Rcpt {
        /// The recipient.
        to: ForwardPath,
        /// ESMTP parameters.
        params: RcptParameters,
    },
    /// `DATA` (RFC 5321 §4.1.1.4).
    Data,
    /// `BDAT size [LAST]` (RFC 3030 §2): exactly `size` octets follow the
    /// command line.
    Bdat {
        /// Octets in this chunk.
        size: u64,
        /// Whether this is the last chunk of the message.
        last: bool,
    },
    /// `RSET` (RFC 5321 §4.1.1.5).
    Rset,
    /// `NOOP [string]` (RFC 5321 §4.1.1.9); the string has no meaning.
    Noop(Option<String>),
    /// `QUIT` (RFC 5321 §4.1.1.10).
    Quit,
    /// `VRFY string` (RFC 5321 §4.1.1.6).
    Vrfy(String),
    /// `EXPN string` (RFC 5321 §4.1.1.7).
    Expn(String),
    /// `HELP [string]` (RFC 5321 §4.1.1.8).
    Help(Option<String>),
    /// `STARTTLS` (RFC 3207).
    StartTls,
    /// `AUTH mechanism [initial-response]` (RFC 4954 §4).
    Auth {
        /// The SASL mechanism name, upper-cased.
        mechanism: String,
        /// The base64 initial response as sent; `Some("")` when the client
        /// sent `=` (an empty response), `None` when it sent nothing.
        initial_response: Option<String>,
    },
}

/// Why a command line was refused, and what to answer.
///
/// Kept as data (not just a reply) so that sessions can count and log error
/// kinds; [`SyntaxError::reply`] gives the reply RFC 5321 and RFC 3463 call
/// for. The reply text never echoes client input beyond a sanitised
/// parameter name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyntaxError {
    /// The verb is not a command we know: `500 5.5.1`.
    UnknownCommand,
    /// Control characters, NUL or invalid UTF-8 in the line: `500 5.5.2`.
    InvalidCharacters,
    /// A known command with malformed arguments: `501 5.5.4`.
    InvalidArguments {
        /// The expected syntax, shown to the client.
        usage: &'static str,
    },
    /// A bad MAIL FROM path: `501 5.1.7` (RFC 3463 "bad sender's mailbox
    /// address syntax").
    InvalidSender(PathError),
    /// A bad RCPT TO path: `501 5.1.3` (RFC 3463 "bad destination mailbox
    /// address syntax").
    InvalidRecipient(PathError),
    /// A MAIL or RCPT parameter we do not implement: `555 5.5.4`
    /// (RFC 5321 §4.1.1.11).
    UnknownParameter {
        /// The keyword, upper-cased and truncated.
        name: String,
    },
    /// A known parameter with a bad value: `501 5.5.4`.
    InvalidParameter {
        /// The keyword.
        name: &'static str,
        /// What is wrong with the value.
        reason: &'static str,
    },
    /// The same parameter twice: `501 5.5.4`.
    DuplicateParameter {
        /// The keyword.
        name: &'static str,
    },
}

impl SyntaxError {
    /// The reply to send for this error.
    pub fn reply(&self) -> Reply {
        match self {
            SyntaxError::UnknownCommand => Reply::new(500, "5.5.1", "Command unrecognized"),
            SyntaxError::InvalidCharacters => {
                Reply::new(500, "5.5.2", "Syntax error: invalid characters in command")
            }
            SyntaxError::InvalidArguments { usage } => {
                Reply::new(501, "5.5.4", format!("Syntax: {usage}"))
            }
            SyntaxError::InvalidSender(e) => {
                Reply::new(501, "5.1.7", format!("Bad sender address syntax: {e}"))
            }
            SyntaxError::InvalidRecipient(e) => {
                Reply::new(501, "5.1.3", format!("Bad recipient address syntax: {e}"))
            }
            SyntaxError::UnknownParameter { name } => {
                Reply::new(555, "5.5.4", format!("Unsupported parameter {name}"))
            }
            SyntaxError::InvalidParameter { name, reason } => {
                Reply::new(501, "5.5.4", format!("Invalid {name} parameter: {reason}"))
            }
            SyntaxError::DuplicateParameter { name } => {
                Reply::new(501, "5.5.4", format!("Duplicate {name} parameter"))
            }
        }
    }
}

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let reply = self.reply();
        f.write_str(reply.lines.first().map(String::as_str).unwrap_or(""))
    }
}

impl std::error::Error for SyntaxError {}

fn args(usage: &'static str) -> SyntaxError {
    SyntaxError::InvalidArguments { usage }
}

/// For commands that take no argument (RFC 5321 §4.1.1.4 and others).
fn no_argument(rest: &str, cmd: Command, usage: &'static str) -> Result<Command, SyntaxError> {
    if rest.is_empty() {
        Ok(cmd)
    } else {
        Err(args(usage))
    }
}

fn optional(rest: &str) -> Option<String> {
    (!rest.is_empty()).then(|| rest.to_string())
}

fn parse_helo_name(rest: &str, usage: &'static str) -> Result<HeloName, SyntaxError> {
    if rest.is_empty() || rest.contains(' ') {
        return Err(args(usage));
    }
    let host = Host::parse(rest).map_err(|_| args(usage))?;
    Ok(HeloName {
        as_sent: rest.to_string(),
        host,
    })
}

/// Strips a case-insensitive `FROM:` / `TO:` and any spaces after it.
fn strip_keyword<'a>(rest: &'a str, keyword: &str) -> Option<&'a str> {
    let head = rest.get(..keyword.len())?;
    head.eq_ignore_ascii_case(keyword)
        .then(|| rest[keyword.len()..].trim_start_matches(' '))
}

/// Splits a path from the parameters that follow it. The parameters must be
/// separated from the `>` by a space.
fn path_and_params(s: &str) -> Result<(Parsed, &str), Option<PathError>> {
    let (parsed, consumed) = path::parse_prefix(s).map_err(Some)?;
    let rest = &s[consumed..];
    if !rest.is_empty() && !rest.starts_with(' ') {
        return Err(None);
    }
    Ok((parsed, rest))
}

impl Command {
    /// Parses one command line, without its CRLF (see [`crate::take_line`]).
    pub fn parse(line: &[u8]) -> Result<Command, SyntaxError> {
        // No control characters anywhere in a command line: CR, LF and NUL in
        // particular would let one line be read as two by another parser.
        if line.iter().any(|&b| b < 0x20 || b == 0x7f) {
            return Err(SyntaxError::InvalidCharacters);
        }
        let line = std::str::from_utf8(line).map_err(|_| SyntaxError::InvalidCharacters)?;
        let line = line.trim_end_matches(' ');
        let (verb, rest) = match line.split_once(' ') {
            Some((verb, rest)) => (verb, rest.trim_start_matches(' ')),
            None => (line, ""),
        };
        if verb.len() > 8 {
            return Err(SyntaxError::UnknownCommand);
        }
        match verb.to_ascii_uppercase().as_str() {
            "EHLO" => Ok(Command::Ehlo(parse_helo_name(rest, "EHLO hostname")?)),
            "HELO" => Ok(Command::Helo(parse_helo_name(rest, "HELO hostname")?)),
            "MAIL" => {
                let arg = strip_keyword(rest, "FROM:").ok_or(args(MAIL_USAGE))?;
                let (parsed, params) = path_and_params(arg).map_err(|e| match e {
                    Some(e) => SyntaxError::InvalidSender(e),
                    None => args(MAIL_USAGE),
                })?;
                let from = match parsed {
                    Parsed::Null => ReversePath::Null,
                    Parsed::Path(p) => ReversePath::Path(p),
                    Parsed::Postmaster => {
                        return Err(SyntaxError::InvalidSender(PathError::MissingDomain));
                    }
                };
                let params = MailParameters::parse(params)?;
                Ok(Command::Mail { from, params })
            }
            "RCPT" => {
                let arg = strip_keyword(rest, "TO:").ok_or(args(RCPT_USAGE))?;
                let (parsed, params) = path_and_params(arg).map_err(|e| match e {
                    Some(e) => SyntaxError::InvalidRecipient(e),
                    None => args(RCPT_USAGE),
                })?;
                let to = match parsed {
                    Parsed::Postmaster => ForwardPath::Postmaster,
                    Parsed::Path(p) => ForwardPath::Path(p),
                    Parsed::Null => {
                        return Err(SyntaxError::InvalidRecipient(PathError::NullPathNotAllowed));
                    }
                };
                let params = RcptParameters::parse(params)?;
                Ok(Command::Rcpt { to, params })
            }
            "DATA" => no_argument(rest, Command::Data, "DATA"),
            "BDAT" => {
                // RFC 3030 §2: `bdat-cmd ::= "BDAT" SP chunk-size [ SP end-marker ]`,
                // `chunk-size ::= 1*DIGIT`, `end-marker ::= "LAST"`.
                const USAGE: &str = "BDAT size [LAST]";
                let mut words = rest.split(' ').filter(|w| !w.is_empty());
                let size = words.next().ok_or(args(USAGE))?;
                if !size.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(args(USAGE));
                }
                let size = size.parse::<u64>().map_err(|_| args(USAGE))?;
                let last = match words.next() {
                    None => false,
                    Some(w) if w.eq_ignore_ascii_case("LAST") => true,
                    Some(_) => return Err(args(USAGE)),
                };
                if words.next().is_some() {
                    return Err(args(USAGE));
                }
                Ok(Command::Bdat { size, last })
            }
            "RSET" => no_argument(rest, Command::Rset, "RSET"),
            "NOOP" => Ok(Command::Noop(optional(rest))),
            "QUIT" => no_argument(rest, Command::Quit, "QUIT"),
            "VRFY" => optional(rest)
                .map(Command::Vrfy)
                .ok_or(args("VRFY address")),
            "EXPN" => optional(rest).map(Command::Expn).ok_or(args("EXPN list")),
            "HELP" => Ok(Command::Help(optional(rest))),
            "STARTTLS" => no_argument(rest, Command::StartTls, "STARTTLS"),
            "AUTH" => {
                const USAGE: &str = "AUTH mechanism [initial-response]";
                let mut words = rest.split(' ').filter(|w| !w.is_empty());
                let mechanism = words.next().ok_or(args(USAGE))?;
                // RFC 4422 §3.1: 1 to 20 of upper-case letters, digits, '-' and '_'
                // (accepted in any case and upper-cased).
                if mechanism.len() > 20
                    || !mechanism
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                {
                    return Err(args(USAGE));
                }
                // RFC 4954 §4: `initial-response = base64 / "="`.
                let initial_response = match words.next() {
                    None => None,
                    Some("=") => Some(String::new()),
                    Some(r) if is_base64(r) => Some(r.to_string()),
                    Some(_) => return Err(args(USAGE)),
                };
                if words.next().is_some() {
                    return Err(args(USAGE));
                }
                Ok(Command::Auth {
                    mechanism: mechanism.to_ascii_uppercase(),
                    initial_response,
                })
            }
            _ => Err(SyntaxError::UnknownCommand),
        }
    }

    /// The verb, for logs and metrics.
    pub fn verb(&self) -> &'static str {
        match self {
            Command::Ehlo(_) => "EHLO",
            Command::Helo(_) => "HELO",
            Command::Mail { .. } => "MAIL",
            Command::Rcpt { .. } => "RCPT",
            Command::Data => "DATA",
            Command::Bdat { .. } => "BDAT",
            Command::Rset => "RSET",
            Command::Noop(_) => "NOOP",
            Command::Quit => "QUIT",
            Command::Vrfy(_) => "VRFY",
            Command::Expn(_) => "EXPN",
            Command::Help(_) => "HELP",
            Command::StartTls => "STARTTLS",
            Command::Auth { .. } => "AUTH",
        }
    }

    /// Appends the command with its CRLF, as the outbound client sends it.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// `base64 = base64-terminal / ( 1*(4base64-char) [base64-terminal] )`
/// (RFC 4954 §4); only the alphabet is checked, the SASL layer decodes.
fn is_base64(s: &str) -> bool {
    let body = s.trim_end_matches('=');
    s.len() - body.len() <= 2
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

/// The canonical wire form without CRLF: upper-case verbs, canonical paths,
/// parameters in a fixed order. Parsing it gives the same command back.
impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let with_text = |f: &mut fmt::Formatter<'_>, verb: &str, text: &Option<String>| match text {
            Some(t) => write!(f, "{verb} {t}"),
            None => f.write_str(verb),
        };
        match self {
            Command::Ehlo(name) => write!(f, "EHLO {}", name.as_sent),
            Command::Helo(name) => write!(f, "HELO {}", name.as_sent),
            Command::Mail { from, params } => {
                let mut s = format!("MAIL FROM:{from}");
                params.write(&mut s);
                f.write_str(&s)
            }
            Command::Rcpt { to, params } => {
                let mut s = format!("RCPT TO:{to}");
                params.write(&mut s);
                f.write_str(&s)
            }
            Command::Data => f.write_str("DATA"),
            Command::Bdat { size, last: true } => write!(f, "BDAT {size} LAST"),
            Command::Bdat { size, last: false } => write!(f, "BDAT {size}"),
            Command::Rset => f.write_str("RSET"),
            Command::Noop(text) => with_text(f, "NOOP", text),
            Command::Quit => f.write_str("QUIT"),
            Command::Vrfy(text) => write!(f, "VRFY {text}"),
            Command::Expn(text) => write!(f, "EXPN {text}"),
            Command::Help(text) => with_text(f, "HELP", text),
            Command::StartTls => f.write_str("STARTTLS"),
            Command::Auth {
                mechanism,
                initial_response,
            } => match initial_response.as_deref() {
                None => write!(f, "AUTH {mechanism}"),
                Some("") => write!(f, "AUTH {mechanism} ="),
                Some(r) => write!(f, "AUTH {mechanism} {r}"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::{Body, MailAuth, Notify, Ret};
    use crate::path::Path;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    fn parse(s: &str) -> Result<Command, SyntaxError> {
        Command::parse(s.as_bytes())
    }

    fn mail(path: &str) -> Command {
        Command::Mail {
            from: ReversePath::Path(Path::parse(path).unwrap()),
            params: MailParameters::default(),
        }
    }

    fn rcpt(path: &str) -> Command {
        Command::Rcpt {
            to: ForwardPath::Path(Path::parse(path).unwrap()),
            params: RcptParameters::default(),
        }
    }

    fn helo_name(s: &str, host: Host) -> HeloName {
        HeloName {
            as_sent: s.to_string(),
            host,
        }
    }

    #[test]
    fn valid_commands() {
        let name = |s: &str| Host::Name(s.to_string());
        let cases: Vec<(&str, Command)> = vec![
            (
                "EHLO bar.com",
                Command::Ehlo(helo_name("bar.com", name("bar.com"))),
            ),
            (
                "ehlo Bar.COM",
                Command::Ehlo(helo_name("Bar.COM", name("bar.com"))),
            ),
            (
                "EHLO  localhost ",
                Command::Ehlo(helo_name("localhost", name("localhost"))),
            ),
            (
                "EHLO [192.0.2.1]",
                Command::Ehlo(helo_name(
                    "[192.0.2.1]",
                    Host::Literal(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))),
                )),
            ),
            (
                "EHLO [IPv6:2001:db8::1]",
                Command::Ehlo(helo_name(
                    "[IPv6:2001:db8::1]",
                    Host::Literal(IpAddr::V6("2001:db8::1".parse::<Ipv6Addr>().unwrap())),
                )),
            ),
            (
                "HELO relay.example.org",
                Command::Helo(helo_name("relay.example.org", name("relay.example.org"))),
            ),
            (
                "HeLo WIN_PC",
                Command::Helo(helo_name("WIN_PC", name("win_pc"))),
            ),
            ("MAIL FROM:<Smith@bar.com>", mail("<Smith@bar.com>")),
            ("mail from:<Smith@bar.com>", mail("<Smith@bar.com>")),
            ("MAIL FROM: <Smith@bar.com>", mail("<Smith@bar.com>")),
            ("MAIL  FROM:<Smith@bar.com>  ", mail("<Smith@bar.com>")),
            (
                "MAIL FROM:<>",
                Command::Mail {
                    from: ReversePath::Null,
                    params: MailParameters::default(),
                },
            ),
            (
                "MAIL FROM:<> SIZE=5000 BODY=8BITMIME",
                Command::Mail {
                    from: ReversePath::Null,
                    params: MailParameters {
                        size: Some(5000),
                        body: Some(Body::EightBitMime),
                        ..MailParameters::default()
                    },
                },
            ),
            (
                "MAIL FROM:<jürgen@bücher.example> SMTPUTF8 RET=FULL ENVID=x AUTH=<> REQUIRETLS",
                Command::Mail {
                    from: ReversePath::Path(Path::parse("<jürgen@bücher.example>").unwrap()),
                    params: MailParameters {
                        smtputf8: true,
                        ret: Some(Ret::Full),
                        envid: Some("x".into()),
                        auth: Some(MailAuth::Unknown),
                        requiretls: true,
                        ..MailParameters::default()
                    },
                },
            ),
            ("RCPT TO:<Jones@foo.com>", rcpt("<Jones@foo.com>")),
            ("rcpt to: <Jones@foo.com>", rcpt("<Jones@foo.com>")),
            (
                "RCPT TO:<@hosta.int,@jkl.org:userc@d.bar.org>",
                rcpt("<@hosta.int,@jkl.org:userc@d.bar.org>"),
            ),
            (
                "RCPT TO:<Postmaster>",
                Command::Rcpt {
                    to: ForwardPath::Postmaster,
                    params: RcptParameters::default(),
                },
            ),
            (
                "RCPT TO:<postmaster> NOTIFY=NEVER",
                Command::Rcpt {
                    to: ForwardPath::Postmaster,
                    params: RcptParameters {
                        notify: Some(Notify::NEVER),
                        orcpt: None,
                    },
                },
            ),
            ("DATA", Command::Data),
            ("data", Command::Data),
            (
                "BDAT 0 LAST",
                Command::Bdat {
                    size: 0,
                    last: true,
                },
            ),
            (
                "BDAT 86 last",
                Command::Bdat {
                    size: 86,
                    last: true,
                },
            ),
            (
                "BDAT 100000",
                Command::Bdat {
                    size: 100000,
                    last: false,
                },
            ),
            ("RSET", Command::Rset),
            ("NOOP", Command::Noop(None)),
            (
                "NOOP hello there",
                Command::Noop(Some("hello there".into())),
            ),
            ("QUIT", Command::Quit),
            ("VRFY Smith", Command::Vrfy("Smith".into())),
            (
                "VRFY <Smith@bar.com>",
                Command::Vrfy("<Smith@bar.com>".into()),
            ),
            (
                "EXPN Example-People",
                Command::Expn("Example-People".into()),
            ),
            ("HELP", Command::Help(None)),
            ("HELP MAIL", Command::Help(Some("MAIL".into()))),
            ("STARTTLS", Command::StartTls),
            ("starttls", Command::StartTls),
            (
                "AUTH PLAIN",
                Command::Auth {
                    mechanism: "PLAIN".into(),
                    initial_response: None,
                },
            ),
            (
                "auth plain AHRlc3QAMTIzNA==",
                Command::Auth {
                    mechanism: "PLAIN".into(),
                    initial_response: Some("AHRlc3QAMTIzNA==".into()),
                },
            ),
            (
                "AUTH EXTERNAL =",
                Command::Auth {
                    mechanism: "EXTERNAL".into(),
                    initial_response: Some(String::new()),
                },
            ),
            (
                "AUTH SCRAM-SHA-256 biwsbj11c2VyLHI9ZnlrbytkMmxiYkZnT05Sdjlx",
                Command::Auth {
                    mechanism: "SCRAM-SHA-256".into(),
                    initial_response: Some("biwsbj11c2VyLHI9ZnlrbytkMmxiYkZnT05Sdjlx".into()),
                },
            ),
        ];
        for (line, expected) in cases {
            let cmd = parse(line).unwrap_or_else(|e| panic!("{line}: {e}"));
            assert_eq!(cmd, expected, "{line}");
            // The canonical form is stable and parses to the same command
            // (source routes are dropped, so compare the canonical strings).
            let wire = cmd.to_string();
            assert_eq!(parse(&wire).unwrap().to_string(), wire, "{line}");
        }
    }

    #[test]
    fn source_route_flag_survives_parsing() {
        let Command::Rcpt { to, .. } =
            parse("RCPT TO:<@hosta.int,@jkl.org:userc@d.bar.org>").unwrap()
        else {
            panic!("not RCPT");
        };
        assert!(to.path().unwrap().had_source_route());
    }

    /// The commands of the RFC 5321 Appendix D scenarios, client side.
    #[test]
    fn rfc5321_appendix_d() {
        let lines = [
            "EHLO bar.com",
            "MAIL FROM:<Smith@bar.com>",
            "RCPT TO:<Jones@foo.com>",
            "RCPT TO:<Green@foo.com>",
            "RCPT TO:<Brown@foo.com>",
            "DATA",
            "QUIT",
            "EHLO foo.com",
            "MAIL FROM:<JQP@bar.com>",
            "RCPT TO:<Jones@XYZ.COM>",
            "VRFY Crispin",
            "EXPN Example-People",
            "EXPN Executive-Washroom-List",
            "VRFY Green",
            "MAIL FROM:<JQP@bar.com> SIZE=1000",
            "RSET",
            "NOOP",
        ];
        for line in lines {
            assert!(parse(line).is_ok(), "{line}");
        }
        assert_eq!(parse("QUIT").unwrap().verb(), "QUIT");
    }

    #[test]
    fn invalid_commands() {
        use PathError as P;
        let a = |usage| SyntaxError::InvalidArguments { usage };
        let cases: Vec<(&[u8], SyntaxError)> = vec![
            (b"", SyntaxError::UnknownCommand),
            (b"FOO", SyntaxError::UnknownCommand),
            (b"MAILFROM:<a@b.c>", SyntaxError::UnknownCommand),
            (b"TURN", SyntaxError::UnknownCommand),
            (b" QUIT", SyntaxError::UnknownCommand),
            (b"QUIT\0", SyntaxError::InvalidCharacters),
            (b"QU\rIT", SyntaxError::InvalidCharacters),
            (b"NOOP \x1b[31m", SyntaxError::InvalidCharacters),
            (b"NOOP\tx", SyntaxError::InvalidCharacters),
            (b"NOOP \xff", SyntaxError::InvalidCharacters),
            (b"EHLO", a("EHLO hostname")),
            (b"EHLO a b", a("EHLO hostname")),
            (b"EHLO bad..name", a("EHLO hostname")),
            (b"EHLO [999.0.0.1]", a("EHLO hostname")),
            (b"HELO", a("HELO hostname")),
            (b"MAIL", a(MAIL_USAGE)),
            (b"MAIL TO:<a@b.c>", a(MAIL_USAGE)),
            (b"MAIL FROM <a@b.c>", a(MAIL_USAGE)),
            (b"MAIL FROM:<a@b.c>SIZE=10", a(MAIL_USAGE)),
            (
                b"MAIL FROM:a@b.c",
                SyntaxError::InvalidSender(P::MissingBrackets),
            ),
            (
                b"MAIL FROM:",
                SyntaxError::InvalidSender(P::MissingBrackets),
            ),
            (
                b"MAIL FROM:<a@b@c>",
                SyntaxError::InvalidSender(P::TooManyAtSigns),
            ),
            (
                b"MAIL FROM:<postmaster>",
                SyntaxError::InvalidSender(P::MissingDomain),
            ),
            (
                b"MAIL FROM:<\"a@b.c>",
                SyntaxError::InvalidSender(P::UnbalancedQuote),
            ),
            (
                b"MAIL FROM:<a@b.c> SIZE=abc",
                SyntaxError::InvalidParameter {
                    name: "SIZE",
                    reason: "not a number",
                },
            ),
            (
                b"MAIL FROM:<a@b.c> FOO=bar",
                SyntaxError::UnknownParameter { name: "FOO".into() },
            ),
            (
                b"MAIL FROM:<a@b.c> SIZE=1 size=2",
                SyntaxError::DuplicateParameter { name: "SIZE" },
            ),
            (b"RCPT", a(RCPT_USAGE)),
            (b"RCPT FROM:<a@b.c>", a(RCPT_USAGE)),
            (
                b"RCPT TO:<>",
                SyntaxError::InvalidRecipient(P::NullPathNotAllowed),
            ),
            (
                b"RCPT TO:<a@b@c>",
                SyntaxError::InvalidRecipient(P::TooManyAtSigns),
            ),
            (
                b"RCPT TO:<user>",
                SyntaxError::InvalidRecipient(P::MissingDomain),
            ),
            (
                b"RCPT TO:user@b.c",
                SyntaxError::InvalidRecipient(P::MissingBrackets),
            ),
            (
                b"RCPT TO:<a@b.c> NOTIFY=NEVER,SUCCESS",
                SyntaxError::InvalidParameter {
                    name: "NOTIFY",
                    reason: "NEVER must be used alone",
                },
            ),
            (
                b"RCPT TO:<a@b.c> SIZE=1",
                SyntaxError::UnknownParameter {
                    name: "SIZE".into(),
                },
            ),
            (b"DATA x", a("DATA")),
            (b"RSET now", a("RSET")),
            (b"QUIT now", a("QUIT")),
            (b"STARTTLS x", a("STARTTLS")),
            (b"VRFY", a("VRFY address")),
            (b"EXPN", a("EXPN list")),
            (b"BDAT", a("BDAT size [LAST]")),
            (b"BDAT x", a("BDAT size [LAST]")),
            (b"BDAT -1", a("BDAT size [LAST]")),
            (b"BDAT +1", a("BDAT size [LAST]")),
            (b"BDAT 10 FIRST", a("BDAT size [LAST]")),
            (b"BDAT 10 LAST x", a("BDAT size [LAST]")),
            (b"BDAT 99999999999999999999999", a("BDAT size [LAST]")),
            (b"AUTH", a("AUTH mechanism [initial-response]")),
            (b"AUTH PL@IN", a("AUTH mechanism [initial-response]")),
            (
                b"AUTH ABCDEFGHIJKLMNOPQRSTU",
                a("AUTH mechanism [initial-response]"),
            ),
            (
                b"AUTH PLAIN not-base64!",
                a("AUTH mechanism [initial-response]"),
            ),
            (
                b"AUTH PLAIN abc=== ",
                a("AUTH mechanism [initial-response]"),
            ),
            (
                b"AUTH PLAIN abc def",
                a("AUTH mechanism [initial-response]"),
            ),
        ];
        for (line, err) in cases {
            assert_eq!(
                Command::parse(line),
                Err(err),
                "{}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn error_replies() {
        let cases: Vec<(&str, &str)> = vec![
            ("FOO", "500 5.5.1 Command unrecognized\r\n"),
            ("EHLO", "501 5.5.4 Syntax: EHLO hostname\r\n"),
            (
                "MAIL FROM:<a@b@c>",
                "501 5.1.7 Bad sender address syntax: more than one @ outside quotes\r\n",
            ),
            (
                "RCPT TO:<a@b@c>",
                "501 5.1.3 Bad recipient address syntax: more than one @ outside quotes\r\n",
            ),
            (
                "MAIL FROM:<a@b.c> X-FOO",
                "555 5.5.4 Unsupported parameter X-FOO\r\n",
            ),
            (
                "MAIL FROM:<a@b.c> SIZE=x",
                "501 5.5.4 Invalid SIZE parameter: not a number\r\n",
            ),
            (
                "RCPT TO:<a@b.c> NOTIFY=NEVER NOTIFY=NEVER",
                "501 5.5.4 Duplicate NOTIFY parameter\r\n",
            ),
        ];
        for (line, wire) in cases {
            let err = parse(line).unwrap_err();
            assert_eq!(
                String::from_utf8(err.reply().to_bytes()).unwrap(),
                wire,
                "{line}"
            );
        }
        assert_eq!(
            Command::parse(b"\0").unwrap_err().reply().to_bytes(),
            b"500 5.5.2 Syntax error: invalid characters in command\r\n"
        );
        // Long unknown parameter names are cut before they reach the reply.
        let long = format!("MAIL FROM:<a@b.c> {}=1", "X".repeat(300));
        let reply = parse(&long).unwrap_err().reply();
        assert!(reply.lines[0].len() < 64, "{reply:?}");
    }

    #[test]
    fn client_side_writing() {
        let mut out = Vec::new();
        let cmd = Command::Mail {
            from: ReversePath::Path(Path::from_mailbox("a@example.com").unwrap()),
            params: MailParameters {
                size: Some(12),
                body: Some(Body::EightBitMime),
                ..MailParameters::default()
            },
        };
        cmd.write_to(&mut out);
        Command::Bdat {
            size: 12,
            last: true,
        }
        .write_to(&mut out);
        Command::Auth {
            mechanism: "PLAIN".into(),
            initial_response: Some(String::new()),
        }
        .write_to(&mut out);
        assert_eq!(
            out,
            b"MAIL FROM:<a@example.com> SIZE=12 BODY=8BITMIME\r\nBDAT 12 LAST\r\nAUTH PLAIN =\r\n"
        );
    }
}
