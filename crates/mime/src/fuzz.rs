//! Fuzzing harness, shared by the cargo-fuzz target `mime` in `fuzz/` and
//! by the stable test over its seed corpus (`tests/tests/fuzz_corpus.rs`).
//! Panics when an invariant breaks. Not part of the supported API.

use std::num::NonZeroU32;

use imap_types::core::{AString, Vec1};
use imap_types::fetch::{Part, Section};

use crate::{
    PREVIEW_CHARS, Summary, binary_section, binary_size, body_contains, date_value, decode_text,
    field_value, header_contains, header_values, msg_ids, preview, section, sent_date,
    text_contains,
};

/// Part numbers tried on every message: the top level, the first parts of
/// one and two levels, and a few beyond.
const PARTS: &[&[u32]] = &[&[1], &[2], &[1, 1], &[1, 2], &[2, 1], &[3, 1, 1]];

/// Everything IMAP reads from a message a stranger wrote: the summary
/// (ENVELOPE, BODYSTRUCTURE) and its JSON round trip, every kind of
/// section, BINARY and BINARY.SIZE, the SEARCH helpers, the sort keys and
/// PREVIEW. Invariants: no panic; the summary survives its JSON form;
/// `BODY[HEADER]` followed by `BODY[TEXT]` is the message; a section
/// is a piece of the message or made of its lines; BINARY.SIZE is the
/// size of BINARY; PREVIEW is at most 200 characters.
pub fn message(raw: &[u8]) {
    let summary = Summary::parse(raw);
    let json = summary.to_json();
    assert_eq!(Summary::from_json(&json).as_ref(), Some(&summary), "{json}");
    let _ = (summary.envelope(), summary.body_structure(true));
    let _ = summary.body_structure(false);

    assert_eq!(section(raw, None).as_deref(), Some(raw));
    let header = section(raw, Some(&Section::Header(None))).expect("HEADER");
    let text = section(raw, Some(&Section::Text(None))).expect("TEXT");
    assert_eq!([header.as_slice(), &text].concat(), raw, "HEADER + TEXT");
    let fields = || Vec1::unvalidated(vec![astring("Subject"), astring("from")]);
    for part in [None]
        .into_iter()
        .chain(PARTS.iter().map(|p| Some(part(p))))
    {
        let sections = [
            Section::Header(part.clone()),
            Section::Text(part.clone()),
            Section::HeaderFields(part.clone(), fields()),
            Section::HeaderFieldsNot(part.clone(), fields()),
        ];
        for s in &sections {
            if let Some(bytes) = section(raw, Some(s)) {
                assert!(bytes.len() <= raw.len());
            }
        }
        if let Some(part) = part {
            for s in [Section::Part(part.clone()), Section::Mime(part)] {
                if let Some(bytes) = section(raw, Some(&s)) {
                    assert!(
                        raw.windows(bytes.len().max(1)).any(|w| w == bytes) || bytes.is_empty(),
                        "{s:?} is not a piece of the message"
                    );
                }
            }
        }
    }
    for numbers in std::iter::once(&[][..]).chain(PARTS.iter().copied()) {
        match (binary_section(raw, numbers), binary_size(raw, numbers)) {
            (Ok(bytes), Ok(size)) => assert_eq!(bytes.len(), size as usize),
            (Err(a), Err(b)) => assert_eq!(a, b),
            (a, b) => panic!("BINARY {a:?} and BINARY.SIZE {b:?} disagree"),
        }
    }

    let _ = (
        header_values(raw, "Subject"),
        header_contains(raw, "from", "a"),
    );
    let _ = (
        body_contains(raw, "needle"),
        text_contains(raw, "é"),
        sent_date(raw),
    );
    let preview = preview(raw);
    assert!(preview.chars().count() <= PREVIEW_CHARS, "{preview:?}");
    for field in ["Subject", "Date", "Message-ID", "References"] {
        if let Some(value) = field_value(raw, field) {
            let _ = (decode_text(&value), date_value(&value), msg_ids(&value));
        }
    }
}

fn part(numbers: &[u32]) -> Part {
    Part(Vec1::unvalidated(
        numbers
            .iter()
            .map(|&n| NonZeroU32::new(n).expect("non-zero"))
            .collect(),
    ))
}

fn astring(s: &str) -> AString<'static> {
    AString::try_from(s.to_string()).expect("an atom")
}
