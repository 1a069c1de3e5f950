//! POP3 command syntax (RFC 1939 §3, RFC 2449 §3): a case-insensitive
//! keyword and arguments separated by single spaces. Pure: no I/O.

/// A parsed command. Message numbers are 1-based, as on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `CAPA` (RFC 2449 §5).
    Capa,
    /// `STLS` (RFC 2595 §4).
    Stls,
    /// `USER name` (RFC 1939 §7).
    User(String),
    /// `PASS string`; the password may contain spaces (RFC 1939 §7).
    Pass(String),
    /// `AUTH [mechanism [initial-response]]` (RFC 5034 §4).
    Auth(Option<String>, Option<String>),
    /// `STAT` (RFC 1939 §5).
    Stat,
    /// `LIST [msg]`.
    List(Option<usize>),
    /// `RETR msg`.
    Retr(usize),
    /// `DELE msg`.
    Dele(usize),
    /// `NOOP`.
    Noop,
    /// `RSET`.
    Rset,
    /// `QUIT`.
    Quit,
    /// `TOP msg n` (RFC 1939 §7).
    Top(usize, usize),
    /// `UIDL [msg]` (RFC 1939 §7).
    Uidl(Option<usize>),
}

/// Why a line is not a command; the text goes after `-ERR`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError(pub &'static str);

fn number(arg: Option<&str>) -> Result<usize, ParseError> {
    let arg = arg.ok_or(ParseError("missing message number"))?;
    // RFC 1939 §3: arguments are numbers without sign; bound the length so
    // no overflow is possible.
    if arg.is_empty() || arg.len() > 9 || !arg.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ParseError("invalid number"));
    }
    arg.parse().map_err(|_| ParseError("invalid number"))
}

/// A line count for TOP: clients ask for "everything" with huge numbers
/// (fetchmail sends `TOP n 99999999`), so any run of digits is accepted and
/// saturates.
fn count(arg: Option<&str>) -> Result<usize, ParseError> {
    let arg = arg.ok_or(ParseError("missing line count"))?;
    if arg.is_empty() || arg.len() > 40 || !arg.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ParseError("invalid number"));
    }
    Ok(arg.parse().unwrap_or(usize::MAX))
}

fn no_more(rest: Option<&str>) -> Result<(), ParseError> {
    match rest {
        None => Ok(()),
        Some(_) => Err(ParseError("too many arguments")),
    }
}

impl Command {
    /// Parses one line (without its CRLF).
    pub fn parse(line: &[u8]) -> Result<Command, ParseError> {
        let line = std::str::from_utf8(line).map_err(|_| ParseError("invalid UTF-8"))?;
        let (keyword, rest) = match line.split_once(' ') {
            Some((k, r)) => (k, Some(r)),
            None => (line, None),
        };
        let keyword = keyword.to_ascii_uppercase();
        // PASS keeps the rest of the line verbatim: passwords may contain spaces.
        if keyword == "PASS" {
            return match rest {
                Some(p) if !p.is_empty() => Ok(Command::Pass(p.to_string())),
                _ => Err(ParseError("missing password")),
            };
        }
        let mut args = rest.map(|r| r.split(' ')).into_iter().flatten();
        let mut next = || args.next();
        let command = match keyword.as_str() {
            "CAPA" => Command::Capa,
            "STLS" => Command::Stls,
            "USER" => match next() {
                Some(u) if !u.is_empty() => Command::User(u.to_string()),
                _ => return Err(ParseError("missing user name")),
            },
            "AUTH" => {
                let mech = next().filter(|m| !m.is_empty()).map(str::to_string);
                let ir = next().map(str::to_string);
                Command::Auth(mech, ir)
            }
            "STAT" => Command::Stat,
            "LIST" => Command::List(next().map(|a| number(Some(a))).transpose()?),
            "RETR" => Command::Retr(number(next())?),
            "DELE" => Command::Dele(number(next())?),
            "NOOP" => Command::Noop,
            "RSET" => Command::Rset,
            "QUIT" => Command::Quit,
            "TOP" => Command::Top(number(next())?, count(next())?),
            "UIDL" => Command::Uidl(next().map(|a| number(Some(a))).transpose()?),
            _ => return Err(ParseError("unknown command")),
        };
        no_more(next())?;
        Ok(command)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commands_case_insensitively() {
        assert_eq!(Command::parse(b"stat"), Ok(Command::Stat));
        assert_eq!(Command::parse(b"LIST"), Ok(Command::List(None)));
        assert_eq!(Command::parse(b"list 2"), Ok(Command::List(Some(2))));
        assert_eq!(Command::parse(b"TOP 1 0"), Ok(Command::Top(1, 0)));
        assert_eq!(
            Command::parse(b"TOP 1 99999999999999999999999"),
            Ok(Command::Top(1, usize::MAX))
        );
        assert_eq!(
            Command::parse(b"PASS with spaces "),
            Ok(Command::Pass("with spaces ".into()))
        );
        assert_eq!(
            Command::parse(b"AUTH PLAIN AGEAYg=="),
            Ok(Command::Auth(Some("PLAIN".into()), Some("AGEAYg==".into())))
        );
        assert_eq!(Command::parse(b"AUTH"), Ok(Command::Auth(None, None)));
    }

    #[test]
    fn refuses_bad_arguments() {
        assert!(Command::parse(b"RETR").is_err());
        assert!(Command::parse(b"RETR -1").is_err());
        assert!(Command::parse(b"RETR 99999999999999999999").is_err());
        assert!(Command::parse(b"DELE 1 2").is_err());
        assert!(Command::parse(b"STAT x").is_err());
        assert!(Command::parse(b"XYZZY").is_err());
        assert!(Command::parse(b"RETR \xff").is_err());
    }
}
