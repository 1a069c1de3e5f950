//! Fuzzing harness, shared by the cargo-fuzz target `imap` in `fuzz/` and
//! by the stable test over its seed corpus (`tests/tests/fuzz_corpus.rs`).
//! Panics when an invariant breaks. Not part of the supported API.
//!
//! It covers what a session does with a client's bytes before it needs
//! the store: COMPRESS=DEFLATE inflation, framing with literals and the
//! line and literal limits ([`Io`]), the pre-parse ([`crate::preparse`],
//! with MULTIAPPEND splitting and OBJECTID lifting), `imap-codec`, the
//! table of commands per state, mailbox names and LIST pattern matching.

use imap_codec::CommandCodec;
use imap_codec::decode::Decoder;
use imap_types::command::CommandBody;
use imap_types::mailbox::{ListMailbox, Mailbox};

use crate::names;
use crate::preparse;
use crate::session::{Input, Io, allowed_in, decode_pattern, imap_tag};

/// Small limits, so that fuzzing reaches them.
const MAX_MESSAGE: u32 = 2048;
const MAX_LINE: u32 = 512;

/// One client stream. The first byte: bit 0 starts COMPRESS=DEFLATE (the
/// rest of the stream is then raw deflate data), bit 1 enables UTF-8
/// names, the other bits set the read size. Invariants: whole and split
/// reads of a sound stream frame the same messages, refusals and
/// continuation requests; no message exceeds the limits; nothing after
/// framing panics; names the server accepts are valid and survive their
/// wire form.
pub fn session_input(input: &[u8]) {
    let [flags, stream @ ..] = input else {
        return;
    };
    let deflate = flags & 1 != 0;
    let utf8 = flags & 2 != 0;
    let chunk = 1 + usize::from(flags >> 2);
    let whole = frame(stream, stream.len().max(1), deflate);
    let split = frame(stream, chunk, deflate);
    if !whole.2 && !split.2 {
        assert_eq!(whole, split, "whole and split reads disagree");
    }
    let mut names = vec!["INBOX".to_string()];
    for message in whole.0.iter().filter_map(|m| m.as_ref().ok()) {
        command(message, utf8, &mut names);
    }
}

/// What the framer made of a stream: each message (or the tag and text of
/// a refusal), the output it queued (continuation requests), and whether
/// inflation failed.
type Framed = (
    Vec<Result<Vec<u8>, (Option<String>, &'static str)>>,
    Vec<u8>,
    bool,
);

fn frame(stream: &[u8], chunk: usize, deflate: bool) -> Framed {
    let mut io = Io::new(None, MAX_MESSAGE, MAX_LINE);
    if deflate {
        io.start_deflate();
    }
    io.out.clear();
    let mut messages = Vec::new();
    let mut broken = false;
    for piece in stream.chunks(chunk) {
        // A corrupt deflate stream ends the session: what was inflated
        // before the error in the same read may be lost (so whole and split
        // reads are only compared on sound streams); the rest is framed.
        broken = io.receive(piece).is_err();
        while let Some(input) = io.next_buffered() {
            messages.push(match input {
                Input::Message(bytes) => {
                    assert!(bytes.len() <= (MAX_MESSAGE + MAX_LINE) as usize);
                    assert!(bytes.ends_with(b"\n"), "{bytes:?}");
                    Ok(bytes)
                }
                Input::Refused { tag, text } => Err((tag, text)),
            });
        }
        if broken {
            break;
        }
    }
    (messages, std::mem::take(&mut io.out), broken)
}

/// One framed message through the steps of the command loop that do not
/// need the store.
fn command(message: &[u8], utf8: bool, names: &mut Vec<String>) {
    let (rewritten, lifted) = preparse::lift(message);
    let input = rewritten.as_deref().unwrap_or(message);
    let _ = preparse::bare_command(input, "UNAUTHENTICATE");
    let tag = imap_tag(input);
    let Ok((b"", command)) = CommandCodec::default().decode(input) else {
        return;
    };
    // MULTIAPPEND pieces are decoded by the session, which refuses the
    // whole command when one does not decode.
    for more in &lifted.more_appends {
        assert!(more.ends_with(b"\n"), "{more:?}");
        let _ = CommandCodec::default().decode(more);
    }
    assert_eq!(tag.as_deref(), Some(command.tag.as_ref()));
    let states = allowed_in(&command.body);
    assert!(!states.is_empty() && states.iter().all(|s| [1, 2, 4].contains(s)));
    match &command.body {
        CommandBody::Create { mailbox, .. }
        | CommandBody::Select { mailbox, .. }
        | CommandBody::Delete { mailbox } => {
            if let Some(name) = name(mailbox, utf8)
                && names.len() < 8
            {
                names.push(name);
            }
        }
        CommandBody::List {
            reference,
            mailbox_wildcard,
        } => {
            if let Some(reference) = name(reference, utf8) {
                let _ = names::parents(&reference).count();
            }
            let raw = match mailbox_wildcard {
                ListMailbox::Token(t) => t.as_ref().to_vec(),
                ListMailbox::String(s) => s.as_ref().to_vec(),
            };
            let patterns = std::iter::once(&raw).chain(&lifted.list_patterns);
            for pattern in patterns.filter_map(|p| decode_pattern(p, utf8).ok()) {
                for name in names.iter() {
                    let _ = names::matches(&pattern, name);
                }
            }
        }
        _ => {}
    }
}

/// The store name of a mailbox argument, checked: valid, and the same
/// after a trip through its wire form.
fn name(mailbox: &Mailbox<'_>, utf8: bool) -> Option<String> {
    let name = match mailbox {
        Mailbox::Inbox => "INBOX".to_string(),
        Mailbox::Other(other) => names::from_wire(other.as_ref(), utf8).ok()?,
    };
    assert_eq!(names::validate(&name), Ok(()));
    let wire = names::to_wire(&name, utf8);
    assert_eq!(
        names::from_wire(wire.as_bytes(), utf8).as_ref(),
        Ok(&name),
        "{wire:?}"
    );
    Some(name)
}
