//! OBJECTID (RFC 8474): MAILBOXID, EMAILID and THREADID; SAVEDATE (RFC
//! 8514) and PREVIEW (RFC 8970), whose FETCH items and SEARCH keys are
//! lifted the same way.
//!
//! The codec knows none of the three, so [`lift`] (called first by
//! [`crate::preparse::lift`]) takes them off a command:
//! * `FETCH set (… EMAILID THREADID SAVEDATE PREVIEW [(LAZY)] …)`: the
//!   items are removed (a list left
//!   empty becomes `UID`, which is then not sent unless asked for) and
//!   answered after the codec's items ([`fetch_items`]);
//! * `STATUS name (… MAILBOXID …)`: likewise (an empty list becomes
//!   `MESSAGES`, then not sent);
//! * `SEARCH … EMAILID id … THREADID id …`, `SAVEDBEFORE`/`SAVEDON`/
//!   `SAVEDSINCE date` and `SAVEDATESUPPORTED` among the top-level criteria
//!   (which are ANDed): each pair becomes `ALL` and the result is filtered
//!   ([`filter_search`]). Inside `OR`, `NOT` or a parenthesised group they
//!   are left to the codec, which refuses them (`BAD`); a documented limit.
//!
//! Invariants: EMAILID and MAILBOXID come from the store
//! ([`mailroom_store::Store::email_ids`], [`mailroom_store::mailbox_object_id`]:
//! stable across COPY, MOVE and RENAME). Threads are not tracked, so
//! THREADID is `NIL` for every message (RFC 8474 §5.2 allows it) and
//! `SEARCH THREADID x` matches nothing. Save dates come from the store
//! ([`mailroom_store::Store::saved_dates`]); every mailbox has them, so
//! `SAVEDATESUPPORTED` matches every message (RFC 8514 §3).

use mailroom_store::MessageMeta;

use crate::ImapServer;
use crate::preparse::Lifted;
use crate::session::Failure;

/// Lifts the OBJECTID syntax off `message` into `lifted`; `None` when there
/// is none.
pub(crate) fn lift(message: &[u8], lifted: &mut Lifted) -> Option<Vec<u8>> {
    let words = |w: &[&str]| crate::preparse::after_words(message, w);
    if let Some(at) = words(&["FETCH"]).or_else(|| words(&["UID", "FETCH"])) {
        let set_end = at + message[at..].iter().position(|&b| b == b' ')?;
        let (out, removed, emptied) = lift_list(
            message,
            set_end + 1,
            &["EMAILID", "THREADID", "SAVEDATE", "PREVIEW"],
            "UID",
        )?;
        lifted.fetch_object = removed;
        lifted.fetch_object_only = emptied;
        return Some(out);
    }
    if let Some(at) = words(&["STATUS"]) {
        let n = crate::preparse::astring_len(&message[at..])?;
        let (out, _, emptied) = lift_list(message, at + n + 1, &["MAILBOXID"], "MESSAGES")?;
        lifted.status_mailboxid = true;
        lifted.status_mailboxid_only = emptied;
        return Some(out);
    }
    if let Some(at) = words(&["SEARCH"]).or_else(|| words(&["UID", "SEARCH"])) {
        return lift_search(message, at, lifted);
    }
    None
}

/// The byte ranges of the space-separated items of `s` at depth 0
/// (parentheses, brackets, quoted strings and literals kept whole), up to
/// the end of `s`.
fn items(s: &[u8]) -> Option<Vec<std::ops::Range<usize>>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < s.len() {
        if s[i] == b' ' {
            i += 1;
            continue;
        }
        let start = i;
        let mut depth = 0i32;
        while i < s.len() {
            match s[i] {
                b' ' if depth == 0 => break,
                b'(' | b'[' => depth += 1,
                b')' | b']' => depth -= 1,
                b'"' => {
                    i += 1;
                    while *s.get(i)? != b'"' {
                        i += if s[i] == b'\\' { 2 } else { 1 };
                    }
                }
                b'{' => {
                    let close = i + s[i..].iter().position(|&b| b == b'}')?;
                    let digits = s[i + 1..close]
                        .strip_suffix(b"+")
                        .unwrap_or(&s[i + 1..close]);
                    let n: usize = std::str::from_utf8(digits).ok()?.parse().ok()?;
                    i = close + 3 + n - 1; // `}` CRLF data
                }
                _ => {}
            }
            i += 1;
        }
        if depth != 0 || i > s.len() {
            return None;
        }
        out.push(start..i);
    }
    Some(out)
}

/// Removes the atoms `names` from the list (or single item) at `at` of
/// `message`; `placeholder` stands in for a list left empty. Returns the
/// new message, the names removed (upper case) and whether the list was
/// left empty. `None` when none is there.
fn lift_list(
    message: &[u8],
    at: usize,
    names: &[&str],
    placeholder: &str,
) -> Option<(Vec<u8>, Vec<String>, bool)> {
    let end = message.len() - if message.ends_with(b"\r\n") { 2 } else { 1 };
    let rest = message.get(at..end)?;
    let (inner_start, inner_end) = if rest.first() == Some(&b'(') {
        let all = items(rest)?;
        (at + 1, at + all.first()?.end - 1)
    } else {
        let first = items(rest)?.into_iter().next()?;
        (at + first.start, at + first.end)
    };
    let inner = &message[inner_start..inner_end];
    let mut kept: Vec<&[u8]> = Vec::new();
    let mut removed = Vec::new();
    let all = items(inner)?;
    let mut skip_lazy = false;
    for r in all {
        let word = std::str::from_utf8(&inner[r.clone()]).ok();
        let after_preview = std::mem::take(&mut skip_lazy);
        match word.map(str::to_ascii_uppercase) {
            // RFC 8970 §3: PREVIEW's only modifier; the preview is always
            // computed, so LAZY changes nothing.
            Some(w) if after_preview && w == "(LAZY)" => {}
            Some(w) if names.contains(&w.as_str()) => {
                skip_lazy = w == "PREVIEW";
                if !removed.contains(&w) {
                    removed.push(w);
                }
            }
            _ => kept.push(&inner[r]),
        }
    }
    if removed.is_empty() {
        return None;
    }
    let emptied = kept.is_empty();
    let mut out = message[..inner_start].to_vec();
    if emptied {
        out.extend_from_slice(placeholder.as_bytes());
    } else {
        out.extend_from_slice(&kept.join(&b' '));
    }
    out.extend_from_slice(&message[inner_end..]);
    Some((out, removed, emptied))
}

/// Search keys that take arguments, and how many (RFC 9051 §6.4.4, RFC
/// 7162 §3.1.5's simple form).
fn arity(key: &str) -> usize {
    match key {
        "BCC" | "BEFORE" | "BODY" | "CC" | "FROM" | "KEYWORD" | "LARGER" | "ON" | "SENTBEFORE"
        | "SENTON" | "SENTSINCE" | "SINCE" | "SMALLER" | "SUBJECT" | "TEXT" | "TO" | "UID"
        | "UNKEYWORD" | "MODSEQ" | "CHARSET" | "RETURN" => 1,
        "HEADER" => 2,
        _ => 0,
    }
}

fn lift_search(message: &[u8], at: usize, lifted: &mut Lifted) -> Option<Vec<u8>> {
    let end = message.len() - if message.ends_with(b"\r\n") { 2 } else { 1 };
    let rest = &message[at..end];
    let toks = items(rest)?;
    let word = |r: &std::ops::Range<usize>| {
        std::str::from_utf8(&rest[r.clone()])
            .ok()
            .map(str::to_ascii_uppercase)
    };
    let mut out = message[..at].to_vec();
    let mut found = false;
    let mut i = 0;
    let mut pieces: Vec<Vec<u8>> = Vec::new();
    while i < toks.len() {
        let w = word(&toks[i]).unwrap_or_default();
        if w == "OR" || w == "NOT" {
            // Operands follow: nothing after this point is top-level AND.
            pieces.extend(toks[i..].iter().map(|r| rest[r.clone()].to_vec()));
            break;
        }
        if w == "SAVEDATESUPPORTED" {
            lifted.search_object.push((w, String::new()));
            pieces.push(b"ALL".to_vec());
            found = true;
            i += 1;
            continue;
        }
        if matches!(
            w.as_str(),
            "EMAILID" | "THREADID" | "SAVEDBEFORE" | "SAVEDON" | "SAVEDSINCE"
        ) && i + 1 < toks.len()
        {
            let value = String::from_utf8_lossy(&rest[toks[i + 1].clone()]).into_owned();
            lifted.search_object.push((w, value));
            pieces.push(b"ALL".to_vec());
            found = true;
            i += 2;
            continue;
        }
        let n = 1 + arity(&w);
        pieces.extend(
            toks[i..(i + n).min(toks.len())]
                .iter()
                .map(|r| rest[r.clone()].to_vec()),
        );
        i += n;
    }
    if !found {
        return None;
    }
    out.extend_from_slice(&pieces.join(&b' '));
    out.extend_from_slice(&message[end..]);
    Some(out)
}

/// ` EMAILID (…) THREADID NIL SAVEDATE "…" PREVIEW …` for a FETCH
/// response, as asked.
pub(crate) fn fetch_items(
    names: &[String],
    email_id: Option<&str>,
    saved: Option<i64>,
    preview: Option<&str>,
) -> String {
    let mut out = String::new();
    for n in names {
        match n.as_str() {
            "EMAILID" => {
                if let Some(id) = email_id {
                    out.push_str(&format!(" EMAILID ({id})"));
                }
            }
            "THREADID" => out.push_str(" THREADID NIL"),
            "SAVEDATE" => match saved.and_then(|t| chrono::DateTime::from_timestamp(t, 0)) {
                Some(d) => out.push_str(
                    &d.format(" SAVEDATE \"%d-%b-%Y %H:%M:%S +0000\"")
                        .to_string(),
                ),
                None => out.push_str(" SAVEDATE NIL"),
            },
            "PREVIEW" => match preview {
                // A quoted string when it can be one, else a literal.
                Some(p)
                    if p.bytes()
                        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\') =>
                {
                    out.push_str(&format!(" PREVIEW \"{p}\""));
                }
                Some(p) => out.push_str(&format!(" PREVIEW {{{}}}\r\n{p}", p.len())),
                None => out.push_str(" PREVIEW NIL"),
            },
            _ => {}
        }
    }
    out
}

/// The day of a SAVED* search key's date (`1-Feb-1994`, quoted or not).
fn search_day(value: &str) -> Result<chrono::NaiveDate, Failure> {
    chrono::NaiveDate::parse_from_str(value.trim_matches('"'), "%d-%b-%Y")
        .map_err(|_| Failure::Bad(format!("{value} is not a date")))
}

/// Keeps the matches (indexes into `messages`) that satisfy the lifted
/// `EMAILID`/`THREADID` criteria.
pub(crate) async fn filter_search(
    server: &ImapServer,
    mailbox_id: i64,
    messages: &[MessageMeta],
    matched: Vec<usize>,
    criteria: &[(String, String)],
) -> Result<Vec<usize>, Failure> {
    let mut days = Vec::new();
    for (k, v) in criteria {
        if k.starts_with("SAVED") && k != "SAVEDATESUPPORTED" {
            days.push((k.as_str(), search_day(v)?));
        }
    }
    if criteria.iter().any(|(k, _)| k == "THREADID") || matched.is_empty() {
        return Ok(Vec::new());
    }
    let uids: Vec<u32> = matched.iter().map(|&i| messages[i].uid).collect();
    let emails: Vec<&str> = criteria
        .iter()
        .filter(|(k, _)| k == "EMAILID")
        .map(|(_, v)| v.as_str())
        .collect();
    let ids = if emails.is_empty() {
        Vec::new()
    } else {
        server.store.email_ids(mailbox_id, &uids).await?
    };
    let saved = if days.is_empty() {
        Vec::new()
    } else {
        server.store.saved_dates(mailbox_id, &uids).await?
    };
    Ok(matched
        .into_iter()
        .filter(|&i| {
            let uid = messages[i].uid;
            let email_ok = emails.is_empty()
                || ids
                    .iter()
                    .find(|(u, _)| *u == uid)
                    .is_some_and(|(_, id)| emails.iter().all(|want| want == id));
            let day = saved
                .iter()
                .find(|(u, _)| *u == uid)
                .and_then(|(_, t)| chrono::DateTime::from_timestamp(*t, 0))
                .map(|d| d.date_naive());
            let saved_ok = days.iter().all(|(k, want)| match (*k, day) {
                ("SAVEDBEFORE", Some(d)) => d < *want,
                ("SAVEDON", Some(d)) => d == *want,
                ("SAVEDSINCE", Some(d)) => d >= *want,
                _ => false,
            });
            email_ok && saved_ok
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lifted(m: &[u8]) -> (String, Lifted) {
        let mut l = Lifted::default();
        let out = lift(m, &mut l)
            .map(|o| String::from_utf8(o).unwrap())
            .unwrap_or_default();
        (out, l)
    }

    #[test]
    fn fetch_items_are_lifted() {
        let (out, l) =
            lifted(b"a FETCH 1:* (FLAGS EMAILID BODY[HEADER.FIELDS (A B)] threadid)\r\n");
        assert_eq!(out, "a FETCH 1:* (FLAGS BODY[HEADER.FIELDS (A B)])\r\n");
        assert_eq!(l.fetch_object, vec!["EMAILID", "THREADID"]);
        assert!(!l.fetch_object_only);
        let (out, l) = lifted(b"a UID FETCH 1 (EMAILID) (CHANGEDSINCE 3)\r\n");
        assert_eq!(out, "a UID FETCH 1 (UID) (CHANGEDSINCE 3)\r\n");
        assert!(l.fetch_object_only);
        let (out, _) = lifted(b"a FETCH 2 EMAILID\r\n");
        assert_eq!(out, "a FETCH 2 UID\r\n");
        assert_eq!(lifted(b"a FETCH 2 (FLAGS)\r\n").0, "");
    }

    #[test]
    fn status_and_search_are_lifted() {
        let (out, l) = lifted(b"a STATUS \"x y\" (MESSAGES MAILBOXID)\r\n");
        assert_eq!(out, "a STATUS \"x y\" (MESSAGES)\r\n");
        assert!(l.status_mailboxid && !l.status_mailboxid_only);
        let (out, l) = lifted(b"a UID SEARCH SUBJECT emailid EMAILID E12 UNSEEN\r\n");
        assert_eq!(out, "a UID SEARCH SUBJECT emailid ALL UNSEEN\r\n");
        assert_eq!(
            l.search_object,
            vec![("EMAILID".to_string(), "E12".to_string())]
        );
        // Under OR: left to the codec.
        assert_eq!(lifted(b"a SEARCH OR EMAILID E1 SEEN\r\n").0, "");
        // A literal holding the word.
        let (out, _) = lifted(b"a SEARCH TEXT {7}\r\nEMAILID THREADID T1\r\n");
        assert_eq!(out, "a SEARCH TEXT {7}\r\nEMAILID ALL\r\n");
    }
}
