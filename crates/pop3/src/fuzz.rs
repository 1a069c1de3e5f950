//! Fuzzing harness, shared by the cargo-fuzz target `pop3` in `fuzz/` and
//! by the stable test over its seed corpus (`tests/tests/fuzz_corpus.rs`).
//! Panics when an invariant breaks. Not part of the supported API.

use crate::command::Command;
use crate::session::{MAX_COMMAND_LINE, Stuffer, frame_line, top_cut};

/// What a POP3 server reads from a client, and what it sends of a message
/// whose text a stranger wrote. The first byte sets the read size; the
/// rest is the client's stream, and also a message's text.
///
/// Invariants: line framing in pieces gives exactly the lines of the
/// stream that fit in [`MAX_COMMAND_LINE`] (and `None` for each that does
/// not), never buffering more than the limit of an over-long line; parsing
/// never panics; byte-stuffing the text, in any pieces, gives one
/// multi-line response that only its own final `.` line ends, and that
/// unstuffs to the text with its line endings made CRLF; `TOP` cuts stay in
/// bounds and grow with the line count.
pub fn session_input(input: &[u8]) {
    let [chunk_byte, stream @ ..] = input else {
        return;
    };
    let chunk = 1 + usize::from(*chunk_byte % 32);
    let max = MAX_COMMAND_LINE;
    let (mut buf, mut too_long, mut lines) = (Vec::new(), false, Vec::new());
    for piece in stream.chunks(chunk) {
        buf.extend_from_slice(piece);
        while let Some(line) = frame_line(&mut buf, max, &mut too_long) {
            lines.push(line);
        }
        assert!(buf.len() < max + chunk, "buffered {} octets", buf.len());
    }
    assert_eq!(lines, reference_lines(stream, max));
    for line in lines.iter().flatten() {
        if let Ok(Command::Pass(p)) = Command::parse(line) {
            assert!(!p.is_empty());
        }
    }

    let mut whole = Vec::new();
    let mut s = Stuffer::default();
    s.feed(stream, &mut whole);
    s.finish(&mut whole);
    let mut pieces = Vec::new();
    let mut s = Stuffer::default();
    for piece in stream.chunks(chunk) {
        s.feed(piece, &mut pieces);
    }
    s.finish(&mut pieces);
    assert_eq!(whole, pieces, "stuffing depends on the pieces");
    let framed = [b"\r\n".as_slice(), &whole].concat();
    let end = framed
        .windows(5)
        .position(|w| w == b"\r\n.\r\n")
        .expect("no end of response");
    assert_eq!(end + 5, framed.len(), "the message ends the response early");
    assert_eq!(unstuff(&whole), crlf(stream));

    let mut last = 0;
    for n in [0, 1, 2, 10, usize::MAX] {
        let cut = top_cut(stream, n);
        assert!(cut >= last && cut <= stream.len());
        last = cut;
    }
}

/// The lines of `stream` the slow way: each LF-terminated line that fits
/// in `max` octets, without its line ending; `None` for each that does not.
fn reference_lines(stream: &[u8], max: usize) -> Vec<Option<Vec<u8>>> {
    let mut out = Vec::new();
    let mut rest = stream;
    while let Some(p) = rest.iter().position(|&b| b == b'\n') {
        let line = &rest[..p];
        out.push((p < max).then(|| line.strip_suffix(b"\r").unwrap_or(line).to_vec()));
        rest = &rest[p + 1..];
    }
    out
}

/// The text a client gets back from a stuffed response.
fn unstuff(response: &[u8]) -> Vec<u8> {
    let body = &response[..response.len() - 3];
    let mut out = Vec::new();
    for line in body.split_inclusive(|&b| b == b'\n') {
        out.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
    }
    out
}

/// `text` with every line ending (CRLF, bare LF, bare CR) made CRLF and a
/// final CRLF added when missing.
fn crlf(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'\r' if text.get(i + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                i += 1;
            }
            b'\r' | b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}
