//! SEARCH and UID SEARCH (RFC 9051 §6.4.4) with ESEARCH results (RFC 4731,
//! part of IMAP4rev2) and the MODSEQ criterion (RFC 7162 §3.1.5).
//!
//! Criteria on flags, sizes, dates, UIDs and MODSEQ are answered from the
//! session's metadata; criteria on content (headers, body, text, sent date)
//! read the messages in batches and match case-insensitively on decoded text
//! (`mailroom_mime`). A search that needs no content reads no message.

use chrono::NaiveDate;
use imap_types::core::{Charset, Vec1};
use imap_types::search::SearchKey;
use imap_types::sequence::{SeqOrUid, Sequence, SequenceSet};
use mailroom_store::{MessageMeta, flag_bits};

use crate::ImapServer;
use crate::preparse::Lifted;
use crate::selected::{Selected, uid_set};
use crate::session::{Failure, Io, Outcome, Phase, State};

/// Messages read at a time for content criteria.
const BATCH: usize = 128;

/// SEARCH and UID SEARCH.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn search(
    server: &ImapServer,
    io: &mut Io,
    state: &mut State,
    tag: &str,
    charset: Option<Charset<'_>>,
    criteria: Vec1<SearchKey<'_>>,
    uid: bool,
    lifted: &Lifted,
) -> Outcome {
    if let Some(cs) = &charset {
        check_charset(cs)?;
    }
    let keys: Vec<SearchKey<'_>> = criteria.into_inner();
    let uses_modseq = uses_modseq(&keys);
    if uses_modseq {
        state.enable_condstore(io);
    }
    let rev2 = state.rev2;
    let Phase::Selected(sel) = &state.phase else {
        unreachable!("state checked")
    };
    let mut matched = matching(server, sel, &keys).await?;
    if !lifted.search_object.is_empty() {
        matched = crate::objectid::filter_search(
            server,
            sel.mailbox.id,
            &sel.messages,
            matched,
            &lifted.search_object,
        )
        .await?;
    }
    let ids: Vec<u32> = matched
        .iter()
        .map(|&i| {
            if uid {
                sel.messages[i].uid
            } else {
                (i + 1) as u32
            }
        })
        .collect();
    let highest = matched.iter().map(|&i| sel.messages[i].modseq).max();
    let esearch = lifted.search_return.clone().or_else(|| rev2.then(Vec::new));
    match esearch {
        None => {
            let mut line = String::from("* SEARCH");
            for id in &ids {
                line.push(' ');
                line.push_str(&id.to_string());
            }
            if uses_modseq && let Some(m) = highest {
                line.push_str(&format!(" (MODSEQ {m})"));
            }
            io.line(&line);
        }
        Some(mut opts) => {
            if opts.is_empty() {
                opts.push("ALL".into());
            }
            let mut line = format!("* ESEARCH (TAG \"{tag}\")");
            if uid {
                line.push_str(" UID");
            }
            for o in &opts {
                match o.as_str() {
                    "MIN" => {
                        if let Some(v) = ids.iter().min() {
                            line.push_str(&format!(" MIN {v}"));
                        }
                    }
                    "MAX" => {
                        if let Some(v) = ids.iter().max() {
                            line.push_str(&format!(" MAX {v}"));
                        }
                    }
                    "COUNT" => line.push_str(&format!(" COUNT {}", ids.len())),
                    "ALL" => {
                        if !ids.is_empty() {
                            let mut sorted = ids.clone();
                            sorted.sort_unstable();
                            line.push_str(&format!(" ALL {}", uid_set(&sorted)));
                        }
                    }
                    "SAVE" => {}
                    _ => return Err(Failure::Bad(format!("unknown SEARCH RETURN option {o}"))),
                }
            }
            // RFC 7162 §3.1.5 (RFC 4731 §3.2): the MODSEQ of the messages
            // returned; with only MIN and/or MAX, those are the first and
            // last match, not every match.
            let returned = if opts.iter().any(|o| o == "ALL" || o == "COUNT") {
                highest
            } else {
                let first = opts.iter().any(|o| o == "MIN").then(|| matched.first());
                let last = opts.iter().any(|o| o == "MAX").then(|| matched.last());
                [first, last]
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|&i| sel.messages[i].modseq)
                    .max()
            };
            if uses_modseq && let Some(m) = returned {
                line.push_str(&format!(" MODSEQ {m}"));
            }
            io.line(&line);
        }
    }
    Ok(format!(
        "OK {}SEARCH completed",
        if uid { "UID " } else { "" }
    ))
}

/// RFC 9051 §6.4.4 (RFC 5256 §3 for SORT and THREAD): UTF-8 and US-ASCII
/// are the charsets searched in; any other is refused with the list.
pub(crate) fn check_charset(cs: &Charset<'_>) -> Result<(), Failure> {
    let name = match cs {
        Charset::Atom(a) => a.as_ref().to_string(),
        Charset::Quoted(q) => q.as_ref().to_string(),
    };
    if !name.eq_ignore_ascii_case("UTF-8") && !name.eq_ignore_ascii_case("US-ASCII") {
        return Err(Failure::No(
            "[BADCHARSET (UTF-8 US-ASCII)] unsupported charset".into(),
        ));
    }
    Ok(())
}

/// Whether any of `keys` is MODSEQ (the caller then enables CONDSTORE).
pub(crate) fn uses_modseq(keys: &[SearchKey<'_>]) -> bool {
    keys.iter().any(has_modseq)
}

/// The indexes (sequence number - 1) of the messages of `sel` matching all
/// of `keys`, in sequence order; messages known to be gone are left out.
pub(crate) async fn matching(
    server: &ImapServer,
    sel: &Selected,
    keys: &[SearchKey<'_>],
) -> Result<Vec<usize>, Failure> {
    let count = sel.messages.len();
    let needs_text = keys.iter().any(needs_text);
    let mut matched: Vec<usize> = Vec::new();
    let candidates: Vec<usize> = (0..count)
        .filter(|&i| !sel.is_gone(sel.messages[i].uid))
        .collect();
    let last_uid = sel.messages.last().map_or(0, |m| m.uid);
    if keys.iter().all(|k| matches!(k, SearchKey::All)) {
        return Ok(candidates);
    }
    for chunk in candidates.chunks(BATCH) {
        let texts = if needs_text {
            let uids: Vec<u32> = chunk.iter().map(|&i| sel.messages[i].uid).collect();
            server.store.message_texts(sel.mailbox.id, &uids).await?
        } else {
            Vec::new()
        };
        for &i in chunk {
            let meta = &sel.messages[i];
            let text = texts
                .iter()
                .find(|(u, _)| *u == meta.uid)
                .map(|(_, t)| t.as_slice());
            if needs_text && text.is_none() {
                continue;
            }
            let ctx = Ctx {
                seq: i + 1,
                count,
                last_uid,
                recent: sel.is_recent(meta.uid),
                meta,
                text,
            };
            if keys.iter().all(|k| eval(k, &ctx)) {
                matched.push(i);
            }
        }
    }
    Ok(matched)
}

struct Ctx<'m> {
    seq: usize,
    count: usize,
    last_uid: u32,
    /// `\Recent` in this session (IMAP4rev1 only; never for rev2).
    recent: bool,
    meta: &'m MessageMeta,
    text: Option<&'m [u8]>,
}

fn has_modseq(k: &SearchKey<'_>) -> bool {
    match k {
        SearchKey::ModSequence { .. } => true,
        SearchKey::Not(k) => has_modseq(k),
        SearchKey::Or(a, b) => has_modseq(a) || has_modseq(b),
        SearchKey::And(v) => v.as_ref().iter().any(has_modseq),
        _ => false,
    }
}

fn needs_text(k: &SearchKey<'_>) -> bool {
    use SearchKey as K;
    match k {
        K::Bcc(_)
        | K::Body(_)
        | K::Cc(_)
        | K::From(_)
        | K::Header(..)
        | K::Subject(_)
        | K::Text(_)
        | K::To(_)
        | K::SentBefore(_)
        | K::SentOn(_)
        | K::SentSince(_) => true,
        K::Not(k) => needs_text(k),
        K::Or(a, b) => needs_text(a) || needs_text(b),
        K::And(v) => v.as_ref().iter().any(needs_text),
        _ => false,
    }
}

fn in_set(set: &SequenceSet, value: u32, star: u32) -> bool {
    set.0.as_ref().iter().any(|s| {
        let v = |x: &SeqOrUid| match x {
            SeqOrUid::Value(n) => n.get(),
            SeqOrUid::Asterisk => star,
        };
        let (a, b) = match s {
            Sequence::Single(x) => (v(x), v(x)),
            Sequence::Range(a, b) => (v(a), v(b)),
        };
        a.min(b) <= value && value <= a.max(b)
    })
}

fn day_of(ts: i64) -> NaiveDate {
    chrono::DateTime::from_timestamp(ts, 0)
        .unwrap_or_default()
        .date_naive()
}

fn s(a: &impl AsRef<[u8]>) -> String {
    String::from_utf8_lossy(a.as_ref()).into_owned()
}

fn eval(k: &SearchKey<'_>, c: &Ctx<'_>) -> bool {
    use SearchKey as K;
    let m = c.meta;
    let flag = |bit: i64| m.flags & bit != 0;
    let text = c.text.unwrap_or_default();
    // RFC 9051 §6.4.4: the date as written in the Date header, its zone disregarded.
    let sent = || mailroom_mime::sent_date_local(text).map(day_of);
    match k {
        K::And(v) => v.as_ref().iter().all(|k| eval(k, c)),
        K::Or(a, b) => eval(a, c) || eval(b, c),
        K::Not(k) => !eval(k, c),
        K::All => true,
        K::SequenceSet(set) => in_set(set, c.seq as u32, c.count as u32),
        K::Uid(set) => in_set(set, m.uid, c.last_uid),
        K::Answered => flag(flag_bits::ANSWERED),
        K::Unanswered => !flag(flag_bits::ANSWERED),
        K::Deleted => flag(flag_bits::DELETED),
        K::Undeleted => !flag(flag_bits::DELETED),
        K::Draft => flag(flag_bits::DRAFT),
        K::Undraft => !flag(flag_bits::DRAFT),
        K::Flagged => flag(flag_bits::FLAGGED),
        K::Unflagged => !flag(flag_bits::FLAGGED),
        K::Seen => flag(flag_bits::SEEN),
        K::Unseen => !flag(flag_bits::SEEN),
        // RFC 3501 §6.4.4: NEW is RECENT and UNSEEN; OLD is NOT RECENT.
        K::Recent => c.recent,
        K::New => c.recent && !flag(flag_bits::SEEN),
        K::Old => !c.recent,
        K::Keyword(a) => m
            .keywords
            .iter()
            .any(|k| k.eq_ignore_ascii_case(a.as_ref())),
        K::Unkeyword(a) => !m
            .keywords
            .iter()
            .any(|k| k.eq_ignore_ascii_case(a.as_ref())),
        K::Larger(n) => m.size > u64::from(*n),
        K::Smaller(n) => m.size < u64::from(*n),
        K::Before(d) => day_of(m.internal_date) < *d.as_ref(),
        K::On(d) => day_of(m.internal_date) == *d.as_ref(),
        K::Since(d) => day_of(m.internal_date) >= *d.as_ref(),
        K::SentBefore(d) => sent().is_some_and(|x| x < *d.as_ref()),
        K::SentOn(d) => sent().is_some_and(|x| x == *d.as_ref()),
        K::SentSince(d) => sent().is_some_and(|x| x >= *d.as_ref()),
        K::Bcc(v) => mailroom_mime::header_contains(text, "Bcc", &s(v)),
        K::Cc(v) => mailroom_mime::header_contains(text, "Cc", &s(v)),
        K::From(v) => mailroom_mime::header_contains(text, "From", &s(v)),
        K::To(v) => mailroom_mime::header_contains(text, "To", &s(v)),
        K::Subject(v) => mailroom_mime::header_contains(text, "Subject", &s(v)),
        K::Header(name, v) => mailroom_mime::header_contains(text, &s(name), &s(v)),
        K::Body(v) => mailroom_mime::body_contains(text, &s(v)),
        K::Text(v) => mailroom_mime::text_contains(text, &s(v)),
        K::ModSequence { modseq, .. } => m.modseq >= *modseq,
    }
}
