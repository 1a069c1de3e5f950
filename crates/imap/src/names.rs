//! Mailbox names: what clients send, what the store keeps, what LIST shows.
//!
//! The store keeps full names in UTF-8 with `/` as the hierarchy delimiter,
//! and `INBOX` in that spelling. On the wire a name is modified UTF-7
//! (RFC 3501 §5.1.3, coded by `mailroom-imap-utf7`, which the client
//! shares) unless the client enabled UTF-8 (`UTF8=ACCEPT`,
//! RFC 6855, or `IMAP4rev2`, RFC 9051 §5.1), in which case it is UTF-8.
//!
//! Refused names (RFC 9051 §5.1 leaves the policy to the server; these are
//! the ones that make trouble for clients and file-based peers): empty
//! names and empty levels (`a//b`, `/a`, `a/`), the levels `.` and `..`,
//! control characters, the wildcards `*` and `%`, invalid modified UTF-7,
//! and names longer than [`MAX_NAME_BYTES`].

/// The hierarchy delimiter.
pub const DELIMITER: char = '/';
/// Longest mailbox name, in UTF-8 bytes.
pub const MAX_NAME_BYTES: usize = 512;
/// Deepest hierarchy.
pub const MAX_LEVELS: usize = 32;

/// Why a name is refused (shown to the client after `NO`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadName(pub &'static str);

/// The store's form of a name the client sent: decoded, validated, with a
/// leading `INBOX` level (any case) spelled `INBOX`.
pub fn from_wire(raw: &[u8], utf8: bool) -> Result<String, BadName> {
    let text = if utf8 {
        // UTF-8 clients may still send a modified UTF-7 name (RFC 9051 §5.1 SHOULD accept).
        let s = std::str::from_utf8(raw).map_err(|_| BadName("the name is not valid UTF-8"))?;
        if s.is_ascii() && s.contains('&') {
            mailroom_imap_utf7::decode(s).unwrap_or_else(|| s.to_string())
        } else {
            s.to_string()
        }
    } else {
        let s = std::str::from_utf8(raw)
            .ok()
            .filter(|s| s.is_ascii())
            .ok_or(BadName("8-bit mailbox names need ENABLE UTF8=ACCEPT"))?;
        mailroom_imap_utf7::decode(s).ok_or(BadName("the name is not valid modified UTF-7"))?
    };
    let name = canonical(&text);
    validate(&name)?;
    Ok(name)
}

/// `INBOX` in any case as the first level becomes `INBOX`.
pub fn canonical(name: &str) -> String {
    let first = name.split(DELIMITER).next().unwrap_or("");
    if first.eq_ignore_ascii_case("INBOX") && first != "INBOX" {
        format!("INBOX{}", &name[first.len()..])
    } else {
        name.to_string()
    }
}

/// Checks a store-form name against the rules in the module docs.
pub fn validate(name: &str) -> Result<(), BadName> {
    if name.is_empty() {
        return Err(BadName("empty mailbox name"));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(BadName("mailbox name too long"));
    }
    if name.chars().any(|c| c.is_control()) {
        return Err(BadName(
            "control characters are not allowed in mailbox names",
        ));
    }
    if name.contains(['*', '%']) {
        return Err(BadName("wildcards are not allowed in mailbox names"));
    }
    let mut levels = 0;
    for level in name.split(DELIMITER) {
        levels += 1;
        if level.is_empty() {
            return Err(BadName("empty hierarchy level in mailbox name"));
        }
        if level == "." || level == ".." {
            return Err(BadName(
                "'.' and '..' are not allowed as mailbox name levels",
            ));
        }
    }
    if levels > MAX_LEVELS {
        return Err(BadName("mailbox hierarchy too deep"));
    }
    Ok(())
}

/// The wire form of a store name.
pub fn to_wire(name: &str, utf8: bool) -> String {
    if utf8 {
        name.to_string()
    } else {
        mailroom_imap_utf7::encode(name)
    }
}

/// A name (or any string) as an IMAP `astring`/`string` on the wire:
/// quoted when possible, else a literal. UTF-8 goes in a quoted string only
/// when the client enabled UTF-8.
pub fn quote(s: &str, utf8: bool) -> String {
    let ascii_safe = s.bytes().all(|b| (0x20..0x7f).contains(&b));
    let utf8_safe = utf8 && !s.chars().any(|c| c.is_control());
    if ascii_safe || utf8_safe {
        let mut out = String::with_capacity(s.len() + 2);
        out.push('"');
        for c in s.chars() {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
        out
    } else {
        format!("{{{}}}\r\n{}", s.len(), s)
    }
}

/// Whether `name` matches a LIST pattern (RFC 9051 §6.3.9): `*` matches
/// anything, `%` anything but the delimiter. A leading `INBOX` in the
/// pattern matches without regard to case, as the name does.
pub fn matches(pattern: &str, name: &str) -> bool {
    let pattern = canonical(pattern);
    fn go(p: &[char], n: &[char]) -> bool {
        match p.split_first() {
            None => n.is_empty(),
            Some(('*', rest)) => (0..=n.len()).any(|i| go(rest, &n[i..])),
            Some(('%', rest)) => {
                for i in 0..=n.len() {
                    if go(rest, &n[i..]) {
                        return true;
                    }
                    if i < n.len() && n[i] == DELIMITER {
                        break;
                    }
                }
                false
            }
            Some((c, rest)) => n.first() == Some(c) && go(rest, &n[1..]),
        }
    }
    // Collapse runs of '*' so that the search stays polynomial.
    let mut p: Vec<char> = Vec::with_capacity(pattern.len());
    for c in pattern.chars() {
        if c == '*' && p.last() == Some(&'*') {
            continue;
        }
        p.push(c);
    }
    let n: Vec<char> = name.chars().collect();
    go(&p, &n)
}

/// The parent names of `name` (`a/b/c` → `a`, `a/b`).
pub fn parents(name: &str) -> impl Iterator<Item = &str> {
    name.match_indices(DELIMITER).map(move |(i, _)| &name[..i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert_eq!(from_wire(b"inbox", false).unwrap(), "INBOX");
        assert_eq!(from_wire(b"Inbox/Sub", false).unwrap(), "INBOX/Sub");
        assert_eq!(from_wire(b"Work/2024", false).unwrap(), "Work/2024");
        for bad in [
            &b"a//b"[..],
            b"/a",
            b"a/",
            b"a/../b",
            b"..",
            b"a/.",
            b"a*",
            b"b%",
            b"x\x01y",
            b"",
        ] {
            assert!(
                from_wire(bad, false).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(from_wire("Entwürfe".as_bytes(), false).is_err());
        assert_eq!(from_wire("Entwürfe".as_bytes(), true).unwrap(), "Entwürfe");
        assert_eq!(from_wire(b"Entw&APw-rfe", true).unwrap(), "Entwürfe");
        assert!(from_wire(b"&Jjo!-", false).is_err());
    }

    #[test]
    fn list_patterns() {
        assert!(matches("*", "a/b/c"));
        assert!(matches("%", "a"));
        assert!(!matches("%", "a/b"));
        assert!(matches("a/%", "a/b"));
        assert!(!matches("a/%", "a/b/c"));
        assert!(matches("a/*", "a/b/c"));
        assert!(matches("inbox", "INBOX"));
        assert!(matches("Inbox/%", "INBOX/x"));
        assert!(!matches("inbox", "Inbox2"));
        assert!(matches("*b*", "abc"));
        assert!(matches("a%c", "abc"));
        assert!(!matches("a%c", "a/c"));
        assert_eq!(parents("a/b/c").collect::<Vec<_>>(), vec!["a", "a/b"]);
    }

    #[test]
    fn quoting() {
        assert_eq!(quote("INBOX", false), "\"INBOX\"");
        assert_eq!(quote("a\"b\\c", false), "\"a\\\"b\\\\c\"");
        assert_eq!(quote("ü", false), "{2}\r\nü");
        assert_eq!(quote("ü", true), "\"ü\"");
    }
}
