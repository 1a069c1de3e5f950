//! SORT and UID SORT (RFC 5256 §3, SORT=DISPLAY of RFC 5957, ESORT's
//! `RETURN (MIN MAX COUNT ALL)` of RFC 5267 §3), with the
//! base subject (§2.1) and the collation THREAD (`crate::thread`) also
//! uses.
//!
//! * **Which messages**: the search criteria are evaluated by
//!   [`crate::search::matching`], exactly as SEARCH evaluates them.
//! * **Where the keys come from**: the parse cache the store keeps of each
//!   message ([`mailroom_mime::Summary`], the one FETCH ENVELOPE uses):
//!   Date, Subject, From, To, Cc and Message-ID / In-Reply-To are in it,
//!   so SORT reads no message text when the cache is there, and reads only
//!   the envelope of the cache, not building the body structure (a message
//!   stored without one is parsed from its text, as FETCH does). ARRIVAL
//!   (INTERNALDATE) and SIZE come from the session's metadata.
//! * **Keys** (RFC 5256 §3): ARRIVAL = INTERNALDATE; DATE = the Date
//!   header in UTC, or INTERNALDATE when it is missing or does not parse;
//!   FROM / TO / CC = the local part (addr-mailbox) of the first address
//!   of the field, empty when there is none; SIZE = RFC822.SIZE; SUBJECT
//!   = the base subject (§2.1, [`base_subject`]); DISPLAYFROM / DISPLAYTO
//!   (SORT=DISPLAY, RFC 5957 §3) = the decoded display name of the first
//!   From / To address, or its addr-spec when it has none.
//! * **Only what is needed**: [`Need`] says which keys a command uses; a
//!   SORT by ARRIVAL or SIZE reads no cache, a SORT by DATE decodes no
//!   subject.
//! * **Collation**: strings compare by [`casemap`], RFC 5051's
//!   i;unicode-casemap: each character mapped to its Unicode titlecase
//!   (here the uppercase mapping, which equals titlecase except for the
//!   four digraph letters and `ß`), then decomposed (NFKD), then compared
//!   as UTF-8 octets: `é`, `É` and `e` + U+0301 are equal, `Ärger` sorts
//!   before `Bob` (as `A` + U+0308), as Dovecot sorts them.
//! * **Invariant**: the order is total and deterministic: after all the
//!   criteria (each possibly REVERSEd), ties go by sequence number,
//!   ascending (RFC 5256 §3: "the order is the order in the mailbox"),
//!   REVERSE never reversing this last tie-break.

use std::cmp::Ordering;

use imap_types::core::{Charset, Vec1};
use imap_types::extensions::sort::{SortCriterion, SortKey};
use imap_types::search::SearchKey;
use mailroom_mime::{AddressFields, EnvelopeFields, Summary};
use unicode_normalization::UnicodeNormalization;

use crate::ImapServer;
use crate::preparse::Lifted;
use crate::search::{check_charset, matching, uses_modseq};
use crate::selected::Selected;
use crate::session::{Failure, Io, Outcome, Phase, State};

/// Parse caches read at a time.
const BATCH: usize = 1024;

/// What SORT and THREAD know of one message.
#[derive(Debug, Clone, Default)]
pub(crate) struct Info {
    /// Index in the session's messages (sequence number - 1).
    pub idx: usize,
    /// The sent date (Date, else INTERNALDATE), Unix seconds.
    pub date: i64,
    /// The base subject, collated ([`casemap`]).
    pub subject: String,
    /// Whether the subject was a reply or forward (RFC 5256 §2.1).
    pub reply: bool,
    /// Collated local part of the first From / To / Cc address.
    pub from: String,
    pub to: String,
    pub cc: String,
    /// Collated RFC 5957 display name (or addr-spec) of From and To.
    pub display_from: String,
    pub display_to: String,
    /// Message-ID and In-Reply-To, as sent.
    pub message_id: Option<Vec<u8>>,
    pub in_reply_to: Option<Vec<u8>>,
}

/// Which [`Info`] fields a command needs (the others stay empty): decoding
/// subjects and collating addresses is most of the work of a SORT.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Need {
    pub date: bool,
    pub subject: bool,
    pub addresses: bool,
    pub display: bool,
    pub ids: bool,
}

impl Need {
    /// What THREAD needs: dates, subjects and (REFERENCES) the ids.
    pub(crate) fn thread() -> Need {
        Need {
            date: true,
            subject: true,
            ids: true,
            ..Need::default()
        }
    }

    fn sort(criteria: &[SortCriterion]) -> Need {
        let mut need = Need::default();
        for c in criteria {
            match c.key {
                SortKey::Date => need.date = true,
                SortKey::Subject => need.subject = true,
                SortKey::From | SortKey::To | SortKey::Cc => need.addresses = true,
                SortKey::DisplayFrom | SortKey::DisplayTo => need.display = true,
                SortKey::Arrival | SortKey::Size => {}
            }
        }
        need
    }

    fn any(self) -> bool {
        self.date || self.subject || self.addresses || self.display || self.ids
    }
}

impl Info {
    /// The fields `need` asks for of the message at `idx`, from its envelope.
    fn of(idx: usize, internal_date: i64, e: &EnvelopeFields, need: Need) -> Info {
        let mut info = Info {
            idx,
            ..Info::default()
        };
        if need.date {
            info.date = e
                .date
                .as_ref()
                .and_then(|d| mailroom_mime::date_value(d.as_bytes()))
                .unwrap_or(internal_date);
        }
        if need.subject {
            let decoded = e
                .subject
                .as_ref()
                .map(|s| subject_text(s.as_bytes()))
                .unwrap_or_default();
            let (subject, reply) = base_subject(&decoded);
            info.subject = casemap(&subject);
            info.reply = reply;
        }
        if need.addresses {
            info.from = first_mailbox(&e.from);
            info.to = first_mailbox(&e.to);
            info.cc = first_mailbox(&e.cc);
        }
        if need.display {
            info.display_from = display(&e.from);
            info.display_to = display(&e.to);
        }
        if need.ids {
            info.message_id = e.message_id.as_ref().map(|r| r.as_bytes().to_vec());
            info.in_reply_to = e.in_reply_to.as_ref().map(|r| r.as_bytes().to_vec());
        }
        info
    }
}

/// A Subject's text for [`base_subject`] (RFC 5256 §2.1 (1)): RFC 2047
/// words decoded; a subject without any (`=?` absent) is taken as it is,
/// since [`base_subject`] does the unfolding and white space itself.
fn subject_text(raw: &[u8]) -> String {
    if raw.windows(2).any(|w| w == b"=?") {
        mailroom_mime::decode_text(raw)
    } else {
        String::from_utf8_lossy(raw).into_owned()
    }
}

/// RFC 5957 §3 DISPLAYFROM / DISPLAYTO: the display name of the first
/// address (RFC 2047 decoded) if it has a non-empty one, else its addr-spec
/// (`mailbox@host`), collated; empty without an address.
fn display(list: &[AddressFields]) -> String {
    let Some(a) = list.iter().find(|a| a.host.is_some()) else {
        return String::new();
    };
    let name = a
        .name
        .as_ref()
        .map(|n| mailroom_mime::decode_text(n.as_bytes()))
        .unwrap_or_default();
    let name = name.trim();
    if !name.is_empty() {
        return casemap(name);
    }
    let part = |r: &Option<mailroom_mime::Raw>| {
        r.as_ref().map(|r| r.to_string_lossy()).unwrap_or_default()
    };
    casemap(&format!("{}@{}", part(&a.mailbox), part(&a.host)))
}

/// i;unicode-casemap (RFC 5051) in its simple form: see the module docs.
pub(crate) fn casemap(s: &str) -> String {
    if s.is_ascii() {
        // NFKD leaves US-ASCII as it is.
        return s.to_ascii_uppercase();
    }
    s.chars().flat_map(char::to_uppercase).nfkd().collect()
}

fn first_mailbox(list: &[AddressFields]) -> String {
    list.iter()
        .find(|a| a.host.is_some())
        .and_then(|a| a.mailbox.as_ref())
        .map(|m| casemap(&m.to_string_lossy()))
        .unwrap_or_default()
}

fn is_wsp(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// `s` starts with `p`, ASCII case-insensitively.
fn starts_ci(s: &str, p: &str) -> bool {
    s.len() >= p.len() && s.as_bytes()[..p.len()].eq_ignore_ascii_case(p.as_bytes())
}

/// subj-blob = "[" *BLOBCHAR "]" *WSP: what follows it, if `s` starts with one.
fn strip_blob(s: &str) -> Option<&str> {
    let rest = s.strip_prefix('[')?;
    let end = rest.find([']', '['])?;
    (rest.as_bytes()[end] == b']').then(|| rest[end + 1..].trim_start_matches(is_wsp))
}

/// subj-leader's `*subj-blob subj-refwd`, subj-refwd = ("re" / ("fw" ["d"]))
/// *WSP [subj-blob] ":": what follows it, if `s` starts with one.
fn strip_refwd(s: &str) -> Option<&str> {
    let mut p = s;
    while let Some(r) = strip_blob(p) {
        p = r;
    }
    let p = if starts_ci(p, "re") {
        &p[2..]
    } else if starts_ci(p, "fwd") {
        &p[3..]
    } else if starts_ci(p, "fw") {
        &p[2..]
    } else {
        return None;
    };
    let p = p.trim_start_matches(is_wsp);
    let p = strip_blob(p).unwrap_or(p);
    p.strip_prefix(':')
}

/// The base subject of a decoded subject (RFC 5256 §2.1), not yet
/// collated, and whether the subject was a reply or forward (a subj-refwd,
/// a `(fwd)` trailer or a `[fwd: ...]` wrapper was removed).
pub(crate) fn base_subject(decoded: &str) -> (String, bool) {
    // (1) Runs of white space (folding included) become one space.
    let mut s = String::with_capacity(decoded.len());
    for w in decoded
        .split([' ', '\t', '\r', '\n'])
        .filter(|w| !w.is_empty())
    {
        if !s.is_empty() {
            s.push(' ');
        }
        s.push_str(w);
    }
    let mut reply = false;
    loop {
        // (2) subj-trailer = "(fwd)" / WSP, repeatedly.
        loop {
            let t = s.trim_end_matches(is_wsp);
            if t.len() >= 5 && t.as_bytes()[t.len() - 5..].eq_ignore_ascii_case(b"(fwd)") {
                s.truncate(t.len() - 5);
                reply = true;
            } else {
                s.truncate(t.len());
                break;
            }
        }
        // (3)-(5) subj-leader and a leading subj-blob, until nothing changes.
        loop {
            let before = s.len();
            let mut t = s.trim_start_matches(is_wsp);
            if let Some(r) = strip_refwd(t) {
                t = r;
                reply = true;
            }
            if let Some(r) = strip_blob(t)
                && !r.is_empty()
            {
                t = r;
            }
            s = t.to_string();
            if s.len() == before {
                break;
            }
        }
        // (6) subj-fwd-hdr "[fwd:" ... subj-fwd-trl "]": unwrap, back to (2).
        if starts_ci(&s, "[fwd:") && s.ends_with(']') {
            s = s[5..s.len() - 1].to_string();
            reply = true;
            continue;
        }
        return (s, reply);
    }
}

/// The [`Info`] of the messages `idxs` of `sel`, in the same order: from
/// their parse caches, else (no cache) from their text.
pub(crate) async fn infos(
    server: &ImapServer,
    sel: &Selected,
    idxs: &[usize],
    need: Need,
) -> Result<Vec<Info>, Failure> {
    let mut out = Vec::with_capacity(idxs.len());
    for chunk in idxs.chunks(BATCH) {
        let uids: Vec<u32> = chunk.iter().map(|&i| sel.messages[i].uid).collect();
        let caches = server.store.parse_caches(sel.mailbox.id, &uids).await?;
        for &i in chunk {
            let meta = &sel.messages[i];
            let cached = caches
                .binary_search_by_key(&meta.uid, |(u, _)| *u)
                .ok()
                .and_then(|p| caches[p].1.as_deref())
                .and_then(mailroom_mime::envelope_from_json);
            let envelope = match cached {
                Some(e) => e,
                None => match server.store.read_message(sel.mailbox.id, meta.uid).await? {
                    Some(text) => Summary::parse(&text).envelope,
                    // Expunged meanwhile: sorted on what the session knows.
                    None => EnvelopeFields::default(),
                },
            };
            out.push(Info::of(i, meta.internal_date, &envelope, need));
        }
    }
    Ok(out)
}

/// The messages SORT or THREAD works on (RFC 5256 §3): the charset
/// checked, CONDSTORE enabled by a MODSEQ criterion, the criteria matched
/// as SEARCH matches them.
pub(crate) async fn matched(
    server: &ImapServer,
    io: &mut Io,
    state: &mut State,
    charset: &Charset<'_>,
    search: Vec1<SearchKey<'_>>,
) -> Result<Vec<usize>, Failure> {
    check_charset(charset)?;
    let keys = search.into_inner();
    if uses_modseq(&keys) {
        state.enable_condstore(io);
    }
    let Phase::Selected(sel) = &state.phase else {
        unreachable!("state checked")
    };
    matching(server, sel, &keys).await
}

/// The ESEARCH response of an ESORT (RFC 5267 §3.2): MIN and MAX are the
/// first and last message in sort order, ALL all of them in sort order
/// (runs of consecutive ascending numbers written `a:b`), COUNT how many.
/// `RETURN ()` means ALL. MIN, MAX and ALL are left out when nothing
/// matched.
fn esort(tag: &str, uid: bool, opts: &[String], ids: &[u32]) -> Result<String, Failure> {
    let all = ["ALL".to_string()];
    let opts = if opts.is_empty() { &all[..] } else { opts };
    let mut line = format!("* ESEARCH (TAG \"{tag}\")");
    if uid {
        line.push_str(" UID");
    }
    for o in opts {
        match o.as_str() {
            "MIN" => {
                if let Some(v) = ids.first() {
                    line.push_str(&format!(" MIN {v}"));
                }
            }
            "MAX" => {
                if let Some(v) = ids.last() {
                    line.push_str(&format!(" MAX {v}"));
                }
            }
            "COUNT" => line.push_str(&format!(" COUNT {}", ids.len())),
            "ALL" => {
                if !ids.is_empty() {
                    line.push_str(" ALL ");
                    line.push_str(&runs(ids));
                }
            }
            _ => return Err(Failure::Bad(format!("unknown SORT RETURN option {o}"))),
        }
    }
    Ok(line)
}

/// `ids` in their order, runs of consecutive ascending numbers as `a:b`.
fn runs(ids: &[u32]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < ids.len() {
        let mut j = i;
        while j + 1 < ids.len() && ids[j + 1] == ids[j] + 1 {
            j += 1;
        }
        if !out.is_empty() {
            out.push(',');
        }
        if j == i {
            out.push_str(&ids[i].to_string());
        } else {
            out.push_str(&format!("{}:{}", ids[i], ids[j]));
        }
        i = j + 1;
    }
    out
}

fn compare(sel: &Selected, a: &Info, b: &Info, criteria: &[SortCriterion]) -> Ordering {
    for c in criteria {
        let (ma, mb) = (&sel.messages[a.idx], &sel.messages[b.idx]);
        let o = match c.key {
            SortKey::Arrival => ma.internal_date.cmp(&mb.internal_date),
            SortKey::Date => a.date.cmp(&b.date),
            SortKey::Size => ma.size.cmp(&mb.size),
            SortKey::Subject => a.subject.cmp(&b.subject),
            SortKey::From => a.from.cmp(&b.from),
            SortKey::To => a.to.cmp(&b.to),
            SortKey::Cc => a.cc.cmp(&b.cc),
            SortKey::DisplayFrom => a.display_from.cmp(&b.display_from),
            SortKey::DisplayTo => a.display_to.cmp(&b.display_to),
        };
        let o = if c.reverse { o.reverse() } else { o };
        if o != Ordering::Equal {
            return o;
        }
    }
    a.idx.cmp(&b.idx)
}

/// SORT and UID SORT (RFC 5256 §3): `* SORT` with the sequence numbers (or
/// UIDs) of the matching messages in sort order.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn sort(
    server: &ImapServer,
    io: &mut Io,
    state: &mut State,
    (tag, lifted): (&str, &Lifted),
    criteria: Vec1<SortCriterion>,
    charset: Charset<'_>,
    search: Vec1<SearchKey<'_>>,
    uid: bool,
) -> Outcome {
    let criteria = criteria.into_inner();
    let matched = matched(server, io, state, &charset, search).await?;
    let Phase::Selected(sel) = &state.phase else {
        unreachable!("state checked")
    };
    let need = Need::sort(&criteria);
    let mut infos = if need.any() {
        infos(server, sel, &matched, need).await?
    } else {
        matched
            .iter()
            .map(|&idx| Info {
                idx,
                ..Info::default()
            })
            .collect()
    };
    infos.sort_unstable_by(|a, b| compare(sel, a, b, &criteria));
    let ids: Vec<u32> = infos
        .iter()
        .map(|i| {
            if uid {
                sel.messages[i.idx].uid
            } else {
                i.idx as u32 + 1
            }
        })
        .collect();
    match &lifted.search_return {
        None => {
            let mut line = String::with_capacity(8 + ids.len() * 7);
            line.push_str("* SORT");
            for id in &ids {
                line.push(' ');
                line.push_str(&id.to_string());
            }
            io.line(&line);
        }
        Some(opts) => io.line(&esort(tag, uid, opts, &ids)?),
    }
    Ok(format!(
        "OK {}SORT completed",
        if uid { "UID " } else { "" }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_subjects_per_rfc_5256() {
        let b = |s: &str| base_subject(s);
        assert_eq!(b("Re: hello"), ("hello".into(), true));
        assert_eq!(b("RE: Re: re:hello"), ("hello".into(), true));
        assert_eq!(b("Fwd: hello (fwd)"), ("hello".into(), true));
        assert_eq!(b("[list] Re: [list] hello"), ("hello".into(), true));
        assert_eq!(b("Re [x]: hello"), ("hello".into(), true));
        assert_eq!(b("[fwd: Re: hello]"), ("hello".into(), true));
        assert_eq!(b("  hello   \t world  "), ("hello world".into(), false));
        // A blob that is all there is stays.
        assert_eq!(b("[only]"), ("[only]".into(), false));
        assert_eq!(b("Reply to me"), ("Reply to me".into(), false));
        assert_eq!(b("FW: x"), ("x".into(), true));
        assert_eq!(b(""), (String::new(), false));
        assert_eq!(b("Re: Ünïcödé"), ("Ünïcödé".into(), true));
    }

    #[test]
    fn esort_runs_follow_the_sort_order() {
        assert_eq!(runs(&[3, 4, 5, 1, 2, 9]), "3:5,1:2,9");
        assert_eq!(runs(&[5, 4]), "5,4");
        let line = esort(
            "t",
            true,
            &["MIN".into(), "MAX".into(), "COUNT".into()],
            &[7, 2, 9],
        );
        assert_eq!(
            line.ok().as_deref(),
            Some("* ESEARCH (TAG \"t\") UID MIN 7 MAX 9 COUNT 3")
        );
        let line = esort("t", false, &[], &[]);
        assert_eq!(line.ok().as_deref(), Some("* ESEARCH (TAG \"t\")"));
    }

    #[test]
    fn casemap_is_case_insensitive_and_orders_like_titlecase() {
        assert_eq!(casemap("abc"), casemap("ABC"));
        assert_eq!(casemap("ünï"), casemap("ÜNÏ"));
        // Titlecase: `_` (0x5F) sorts after letters mapped to upper case.
        assert!(casemap("a") < casemap("_"));
        assert_eq!(casemap("été"), casemap("E\u{301}TE\u{301}"));
        assert!(casemap("ärger") < casemap("bob"));
        assert_eq!(casemap("Hello_x"), "HELLO_X");
    }
}
