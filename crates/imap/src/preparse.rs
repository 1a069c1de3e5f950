//! Syntax the codec does not parse yet, lifted off a command before it does.
//!
//! `imap-codec` 2.0.0-alpha parses `LIST reference pattern` and
//! `SEARCH criteria`, but not the RFC 9051 / RFC 5258 / RFC 5819 extras:
//!
//! * `LIST (selection-options) reference pattern RETURN (return-options)`
//!   (LIST-EXTENDED; `SUBSCRIBED`, `SPECIAL-USE`, `CHILDREN`, `STATUS (...)`),
//!   and several patterns in parentheses, `LIST "" (a/* b)` (RFC 5258 §3):
//!   the codec is given the first, the session matches them all;
//! * `[UID] SEARCH RETURN (MIN MAX COUNT ALL SAVE) criteria` (ESEARCH,
//!   RFC 4731, part of IMAP4rev2), and `[UID] SORT RETURN (...)` (ESORT,
//!   RFC 5267 §3), lifted alike into [`Lifted::search_return`];
//! * `APPEND mailbox message message…` (MULTIAPPEND, RFC 3502): cut into
//!   single APPENDs by `crate::append`;
//! * `CREATE name (USE (\Archive …))` (CREATE-SPECIAL-USE, RFC 6154 §3);
//! * OBJECTID's FETCH, STATUS and SEARCH items (RFC 8474), by `crate::objectid`.
//!
//! [`lift`] removes these groups from the command's text, parses them here,
//! and gives the rest to the codec. The groups are only recognised at the
//! positions the grammar puts them, so a mailbox name or search string that
//! happens to contain the same words is left alone (a quoted or literal
//! argument always comes after the position looked at, except for LIST's
//! trailing RETURN, which is only taken when it ends the command).

/// Options lifted from a command.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Lifted {
    /// LIST selection options, upper case (`SUBSCRIBED`, `SPECIAL-USE`, …);
    /// a parenthesised group among them reads `(…)` (no option known here
    /// takes one).
    pub list_selection: Vec<String>,
    /// `LIST reference (pattern …)`: the patterns, as sent (a quoted one
    /// unquoted); empty for a LIST with one pattern.
    pub list_patterns: Vec<Vec<u8>>,
    /// LIST return options, upper case; `STATUS` items go to `list_status`.
    pub list_return: Vec<String>,
    /// `RETURN (STATUS (...))` items, upper case.
    pub list_status: Vec<String>,
    /// Whether the LIST had a RETURN group at all.
    pub has_list_return: bool,
    /// `SEARCH RETURN (...)` or `SORT RETURN (...)`, upper case;
    /// `Some(empty)` means `RETURN ()` (= ALL).
    pub search_return: Option<Vec<String>>,
    /// MULTIAPPEND (RFC 3502): the messages after the first, each as a
    /// single APPEND command (see `crate::append`); empty for one message.
    pub more_appends: Vec<Vec<u8>>,
    /// `CREATE name (USE (attr …))` (CREATE-SPECIAL-USE, RFC 6154 §3): the
    /// attributes, upper case; `None` without a USE parameter.
    pub create_use: Option<Vec<String>>,
    /// FETCH `EMAILID`/`THREADID` (OBJECTID, RFC 8474; see
    /// `crate::objectid`), upper case, in the order asked.
    pub fetch_object: Vec<String>,
    /// The FETCH asked for nothing else (its list was replaced by `UID`).
    pub fetch_object_only: bool,
    /// STATUS `MAILBOXID` was asked for.
    pub status_mailboxid: bool,
    /// … and nothing else (the list was replaced by `MESSAGES`).
    pub status_mailboxid_only: bool,
    /// SEARCH `EMAILID x` / `THREADID x` at the top level: (key, value).
    pub search_object: Vec<(String, String)>,
}

/// A parenthesised group of atoms, one level of nesting.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Item {
    Atom(String),
    Group(Vec<Item>),
}

/// Parses `(a b (c d))` at the start of `s`; returns the items and the
/// number of bytes consumed.
fn group(s: &[u8]) -> Option<(Vec<Item>, usize)> {
    if s.first() != Some(&b'(') {
        return None;
    }
    let mut items = Vec::new();
    let mut i = 1;
    loop {
        match s.get(i)? {
            b' ' => i += 1,
            b')' => return Some((items, i + 1)),
            b'(' => {
                let (inner, n) = group(&s[i..])?;
                items.push(Item::Group(inner));
                i += n;
            }
            _ => {
                let start = i;
                while let Some(&c) = s.get(i) {
                    if c == b' ' || c == b')' || c == b'(' || c < 0x20 || c == b'"' || c == b'{' {
                        break;
                    }
                    i += 1;
                }
                if i == start {
                    return None;
                }
                let atom = std::str::from_utf8(&s[start..i]).ok()?.to_ascii_uppercase();
                items.push(Item::Atom(atom));
            }
        }
    }
}

/// Position just after `tag SP` and the command word(s), when the command
/// is `words` (case-insensitive); e.g. `["UID", "SEARCH"]`.
pub(crate) fn after_words(line: &[u8], words: &[&str]) -> Option<usize> {
    let mut i = line.iter().position(|&b| b == b' ')? + 1;
    for w in words {
        let end = i + w.len();
        let word = line.get(i..end)?;
        if !word.eq_ignore_ascii_case(w.as_bytes()) || line.get(end) != Some(&b' ') {
            return None;
        }
        i = end + 1;
    }
    Some(i)
}

/// Lifts the groups described in the module docs out of `message` (a
/// complete command, literals included). Returns the bytes for the codec
/// (`None`: unchanged) and what was lifted. Malformed groups are left in
/// place for the codec to refuse.
pub fn lift(message: &[u8]) -> (Option<Vec<u8>>, Lifted) {
    let mut lifted = Lifted::default();
    let object = crate::objectid::lift(message, &mut lifted);
    let (out, lifted) = lift_rest(object.as_deref().unwrap_or(message), lifted);
    (out.or(object), lifted)
}

fn lift_rest(message: &[u8], mut lifted: Lifted) -> (Option<Vec<u8>>, Lifted) {
    // APPEND mailbox msg msg… (MULTIAPPEND): the codec is given the first.
    if let Some(at) = after_words(message, &["APPEND"])
        && let Some((first, more)) = crate::append::split(message, at)
    {
        lifted.more_appends = more;
        return (Some(first), lifted);
    }
    // CREATE name (USE (attr …)): the group must end the command.
    if let Some(at) = after_words(message, &["CREATE"])
        && let Some(n) = astring_len(&message[at..])
        && message.get(at + n) == Some(&b' ')
        && let Some((items, len)) = group(&message[at + n + 1..])
    {
        let end = message.len() - trailing_newline(message);
        if let [Item::Atom(word), Item::Group(uses)] = items.as_slice()
            && word == "USE"
            && at + n + 1 + len == end
            && uses.iter().all(|u| matches!(u, Item::Atom(_)))
        {
            lifted.create_use = Some(atoms(uses));
            let mut out = message[..at + n].to_vec();
            out.extend_from_slice(&message[end..]);
            return (Some(out), lifted);
        }
    }
    // LIST (selection) ... [RETURN (...)]
    if let Some(at) = after_words(message, &["LIST"]) {
        let mut out = message.to_vec();
        let mut changed = false;
        if let Some((items, n)) = group(&out[at..]) {
            lifted.list_selection = items
                .iter()
                .map(|i| match i {
                    Item::Atom(a) => a.clone(),
                    Item::Group(_) => "(…)".to_string(),
                })
                .collect();
            let end = if out.get(at + n) == Some(&b' ') {
                n + 1
            } else {
                n
            };
            out.drain(at..at + end);
            changed = true;
        }
        // reference (pattern …): the codec is given the first pattern.
        if let Some(n) = astring_len(&out[at..])
            && out.get(at + n) == Some(&b' ')
            && let Some((patterns, len)) = pattern_group(&out[at + n + 1..])
        {
            let start = at + n + 1;
            let first = patterns[0].1.clone();
            lifted.list_patterns = patterns.into_iter().map(|(p, _)| p).collect();
            out.splice(start..start + len, first);
            changed = true;
        }
        // RETURN (...) must end the command: find " RETURN (" whose group ends at CRLF.
        let body_end = out.len() - trailing_newline(&out);
        if let Some(pos) = find_ci(&out[..body_end], b" RETURN (")
            && let Some((items, n)) = group(&out[pos + 8..body_end])
            && pos + 8 + n == body_end
        {
            lifted.has_list_return = true;
            for (i, item) in items.iter().enumerate() {
                match item {
                    Item::Atom(a) if a == "STATUS" => {
                        if let Some(Item::Group(g)) = items.get(i + 1) {
                            lifted.list_status = atoms(g);
                        }
                    }
                    Item::Atom(a) => lifted.list_return.push(a.clone()),
                    Item::Group(_) => {}
                }
            }
            out.drain(pos..body_end);
            changed = true;
        }
        return (changed.then_some(out), lifted);
    }
    // [UID] SEARCH RETURN (...) criteria
    // [UID] SORT RETURN (...) (keys) charset criteria (ESORT, RFC 5267 §3).
    let at = after_words(message, &["SEARCH"])
        .or_else(|| after_words(message, &["UID", "SEARCH"]))
        .or_else(|| after_words(message, &["SORT"]))
        .or_else(|| after_words(message, &["UID", "SORT"]));
    if let Some(at) = at
        && message.len() > at + 7
        && message[at..at + 7].eq_ignore_ascii_case(b"RETURN ")
        && let Some((items, n)) = group(&message[at + 7..])
    {
        lifted.search_return = Some(atoms(&items));
        let mut out = message.to_vec();
        let mut end = at + 7 + n;
        if out.get(end) == Some(&b' ') {
            end += 1;
        }
        out.drain(at..end);
        return (Some(out), lifted);
    }
    (None, lifted)
}

/// Whether `message` is the command `word` without arguments (`tag WORD`
/// CRLF, the word in any case): commands the codec does not know, such as
/// UNAUTHENTICATE (RFC 8437).
pub fn bare_command(message: &[u8], word: &str) -> bool {
    let Some(sp) = message.iter().position(|&b| b == b' ') else {
        return false;
    };
    let rest = &message[sp + 1..];
    let n = trailing_newline(rest);
    n > 0 && rest[..rest.len() - n].eq_ignore_ascii_case(word.as_bytes())
}

/// The length of the quoted string or atom at the start of `s` (`None` for
/// a literal, or nothing there).
pub(crate) fn astring_len(s: &[u8]) -> Option<usize> {
    if s.first() == Some(&b'"') {
        let mut i = 1;
        loop {
            match s.get(i)? {
                b'\\' => i += 2,
                b'"' => return Some(i + 1),
                _ => i += 1,
            }
        }
    }
    let n = s.iter().take_while(|&&c| is_list_char(c)).count();
    (n > 0).then_some(n)
}

/// A byte of an atom or a `list-mailbox` (RFC 9051 §9): `%`, `*` and `]`
/// included.
fn is_list_char(c: u8) -> bool {
    c > b' ' && c < 0x7f && !b"(){\"\\".contains(&c)
}

/// `(pattern …)` at the start of `s`, each pattern a quoted string or a
/// `list-mailbox` atom: each pattern (unquoted) with its text as sent, and
/// the bytes consumed. `None` when `s` holds no such group (a literal in it
/// is left to the codec to refuse).
#[allow(clippy::type_complexity)]
fn pattern_group(s: &[u8]) -> Option<(Vec<(Vec<u8>, Vec<u8>)>, usize)> {
    if s.first() != Some(&b'(') {
        return None;
    }
    let mut patterns = Vec::new();
    let mut i = 1;
    loop {
        match s.get(i)? {
            b' ' if !patterns.is_empty() => i += 1,
            b')' if !patterns.is_empty() => return Some((patterns, i + 1)),
            _ => {
                let n = astring_len(&s[i..])?;
                let raw = &s[i..i + n];
                let pattern = if raw[0] == b'"' {
                    let mut out = Vec::with_capacity(n);
                    let mut escaped = false;
                    for &c in &raw[1..n - 1] {
                        if c == b'\\' && !escaped {
                            escaped = true;
                            continue;
                        }
                        escaped = false;
                        out.push(c);
                    }
                    out
                } else {
                    raw.to_vec()
                };
                patterns.push((pattern, raw.to_vec()));
                i += n;
                if !matches!(s.get(i), Some(b' ' | b')')) {
                    return None;
                }
            }
        }
    }
}

/// A cursor over the arguments of a command the codec does not know
/// (NOTIFY, the ACL commands), literals included as framed. Each read
/// gives `None` when the bytes there are not what it reads.
pub(crate) struct Cursor<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(s: &'a [u8]) -> Self {
        Cursor { s, i: 0 }
    }

    pub(crate) fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    /// Where the cursor is, for [`Cursor::reset`].
    pub(crate) fn mark(&self) -> usize {
        self.i
    }

    /// Goes back to a [`Cursor::mark`].
    pub(crate) fn reset(&mut self, mark: usize) {
        self.i = mark;
    }

    /// Whether the rest starts with `prefix`.
    pub(crate) fn at(&self, prefix: &[u8]) -> bool {
        self.s[self.i..].starts_with(prefix)
    }

    /// Takes `b` when it is next.
    pub(crate) fn eat(&mut self, b: u8) -> bool {
        let hit = self.peek() == Some(b);
        self.i += usize::from(hit);
        hit
    }

    pub(crate) fn sp(&mut self) -> Option<()> {
        self.eat(b' ').then_some(())
    }

    /// Whether only the line end is left.
    pub(crate) fn at_end(&self) -> bool {
        matches!(&self.s[self.i..], b"\r\n" | b"\n")
    }

    /// An atom (RFC 9051 §9 ATOM-CHAR), upper-cased.
    pub(crate) fn atom(&mut self) -> Option<String> {
        let start = self.i;
        while self.peek().is_some_and(atom_char) {
            self.i += 1;
        }
        (self.i > start)
            .then(|| String::from_utf8_lossy(&self.s[start..self.i]).to_ascii_uppercase())
    }

    /// An astring: atom (`]` allowed), quoted string or literal; its bytes.
    pub(crate) fn astring(&mut self) -> Option<Vec<u8>> {
        match self.peek()? {
            b'"' => {
                self.i += 1;
                let mut out = Vec::new();
                loop {
                    match self.peek()? {
                        b'"' => {
                            self.i += 1;
                            return Some(out);
                        }
                        b'\\' => {
                            out.push(*self.s.get(self.i + 1)?);
                            self.i += 2;
                        }
                        b'\r' | b'\n' => return None,
                        c => {
                            out.push(c);
                            self.i += 1;
                        }
                    }
                }
            }
            b'{' => {
                let close = self.s[self.i..].iter().position(|&b| b == b'}')?;
                let digits = std::str::from_utf8(&self.s[self.i + 1..self.i + close])
                    .ok()?
                    .trim_end_matches('+');
                let n: usize = digits.parse().ok()?;
                let data = self.i + close + 1;
                if self.s.get(data..data + 2) != Some(b"\r\n") {
                    return None;
                }
                let out = self.s.get(data + 2..data + 2 + n)?.to_vec();
                self.i = data + 2 + n;
                Some(out)
            }
            _ => {
                let start = self.i;
                while self.peek().is_some_and(|c| atom_char(c) || c == b']') {
                    self.i += 1;
                }
                (self.i > start).then(|| self.s[start..self.i].to_vec())
            }
        }
    }

    /// A parenthesised group as sent (a quoted string in it may hold
    /// parentheses).
    pub(crate) fn raw_group(&mut self) -> Option<Vec<u8>> {
        let start = self.i;
        let mut depth = 0usize;
        loop {
            match self.peek()? {
                b'(' => depth += 1,
                b')' => {
                    depth = depth.checked_sub(1)?;
                    if depth == 0 {
                        self.i += 1;
                        return Some(self.s[start..self.i].to_vec());
                    }
                }
                b'"' => {
                    self.i += 1;
                    while self.peek()? != b'"' {
                        self.i += if self.peek() == Some(b'\\') { 2 } else { 1 };
                    }
                }
                b'\r' | b'\n' => return None,
                _ => {}
            }
            self.i += 1;
        }
    }
}

/// ATOM-CHAR (RFC 9051 §9): not a special, space or control.
fn atom_char(c: u8) -> bool {
    c > b' ' && c < 0x7f && !b"(){%*\"\\]".contains(&c)
}

fn atoms(items: &[Item]) -> Vec<String> {
    items
        .iter()
        .filter_map(|i| match i {
            Item::Atom(a) => Some(a.clone()),
            Item::Group(_) => None,
        })
        .collect()
}

fn trailing_newline(s: &[u8]) -> usize {
    if s.ends_with(b"\r\n") {
        2
    } else if s.ends_with(b"\n") {
        1
    } else {
        0
    }
}

fn find_ci(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len())
        .rposition(|w| w.eq_ignore_ascii_case(needle))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(v: Option<Vec<u8>>) -> String {
        String::from_utf8(v.unwrap()).unwrap()
    }

    #[test]
    fn list_extended_options_are_lifted() {
        let (out, l) =
            lift(b"a1 LIST (SUBSCRIBED) \"\" \"*\" RETURN (CHILDREN STATUS (MESSAGES UNSEEN))\r\n");
        assert_eq!(text(out), "a1 LIST \"\" \"*\"\r\n");
        assert_eq!(l.list_selection, vec!["SUBSCRIBED"]);
        assert_eq!(l.list_return, vec!["CHILDREN"]);
        assert_eq!(l.list_status, vec!["MESSAGES", "UNSEEN"]);
        assert!(l.has_list_return);

        let (out, l) = lift(b"a2 list \"\" % return (special-use)\r\n");
        assert_eq!(text(out), "a2 list \"\" %\r\n");
        assert_eq!(l.list_return, vec!["SPECIAL-USE"]);

        let (out, l) = lift(b"a4 LIST \"\" (a/* \"b c\" %) RETURN (CHILDREN)\r\n");
        assert_eq!(text(out), "a4 LIST \"\" a/*\r\n");
        assert_eq!(l.list_patterns, [&b"a/*"[..], b"b c", b"%"]);
        assert_eq!(l.list_return, vec!["CHILDREN"]);
        let (out, l) = lift(b"a5 LIST (FOO (BAR)) \"x\\\"y\" (\"b\")\r\n");
        assert_eq!(text(out), "a5 LIST \"x\\\"y\" \"b\"\r\n");
        assert_eq!(l.list_selection, ["FOO", "(…)"]);
        assert_eq!(l.list_patterns, [b"b"]);

        // Nothing to lift: unchanged.
        let (out, l) = lift(b"a3 LIST \"\" \"RETURN (x)\"\r\n");
        assert_eq!(out, None);
        assert_eq!(l, Lifted::default());
    }

    #[test]
    fn search_return_is_lifted() {
        let (out, l) = lift(b"t UID SEARCH RETURN (MIN MAX COUNT) UNSEEN\r\n");
        assert_eq!(text(out), "t UID SEARCH UNSEEN\r\n");
        assert_eq!(
            l.search_return,
            Some(vec!["MIN".into(), "MAX".into(), "COUNT".into()])
        );
        let (out, l) = lift(b"t SEARCH RETURN () ALL\r\n");
        assert_eq!(text(out), "t SEARCH ALL\r\n");
        assert_eq!(l.search_return, Some(vec![]));
        let (out, l) = lift(b"t UID SORT RETURN (MIN COUNT) (DATE) UTF-8 ALL\r\n");
        assert_eq!(text(out), "t UID SORT (DATE) UTF-8 ALL\r\n");
        assert_eq!(l.search_return, Some(vec!["MIN".into(), "COUNT".into()]));
        let (out, l) = lift(b"t SEARCH SUBJECT \"RETURN (x)\"\r\n");
        assert_eq!(out, None);
        assert_eq!(l.search_return, None);
    }
}
