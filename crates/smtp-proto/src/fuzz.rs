//! Fuzzing harnesses, shared by the cargo-fuzz targets in `fuzz/` and by a
//! deterministic test in this crate, so the invariants are checked on every
//! `cargo test` even where no fuzzer runs. Each function panics when an
//! invariant breaks. Not part of the supported API.

use crate::bdat::BdatReceiver;
use crate::command::Command;
use crate::data::{DataError, DataReceiver};
use crate::line::{Line, skip_line, take_line};
use crate::path::{ForwardPath, Host, Path, ReversePath};
use crate::reply::{Capabilities, Reply, ReplyParse};

/// A tiny xorshift generator: the harnesses derive split points from the
/// fuzz input itself, so runs are reproducible from the input alone.
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    /// A generator from a seed (0 is replaced, xorshift needs a non-zero state).
    pub fn new(seed: u64) -> XorShift {
        XorShift(seed.max(1))
    }

    /// The next pseudo-random number.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A number below `n` (which must not be 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// Command line framing, command parsing and reply parsing on arbitrary
/// bytes: nothing panics, consumed counts stay in bounds, and a parsed
/// command's canonical form parses again to the same canonical form.
pub fn command(input: &[u8]) {
    match Command::parse(input) {
        Ok(cmd) => {
            let wire = cmd.to_string();
            let again = Command::parse(wire.as_bytes())
                .unwrap_or_else(|e| panic!("canonical form {wire:?} does not parse: {e}"));
            assert_eq!(again.to_string(), wire);
            let mut out = Vec::new();
            cmd.write_to(&mut out);
            assert!(out.ends_with(b"\r\n"));
            assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
        }
        Err(e) => {
            let reply = e.reply();
            assert!(reply.is_permanent());
            check_reply_wire(&reply);
        }
    }

    for max in [1, 8, 64, 512] {
        match take_line(input, max) {
            Line::Incomplete => {
                assert!(input.len() < max && !input.contains(&b'\n'));
            }
            Line::Complete { line, consumed } => {
                assert!(consumed <= input.len() && consumed <= max);
                assert_eq!(input[consumed - 1], b'\n');
                assert!(line.len() < consumed && !line.contains(&b'\n'));
            }
            Line::TooLong { consumed, ended } => {
                assert!(consumed <= input.len() && consumed >= max);
                assert!(!input[..max.min(input.len())].contains(&b'\n'));
                assert_eq!(ended, input[..consumed].ends_with(b"\n"));
                let rest = skip_line(&input[consumed..]);
                assert!(rest.consumed <= input.len() - consumed);
            }
        }
    }

    match Reply::parse(input, 512) {
        ReplyParse::Complete(reply, consumed) => {
            assert!(consumed <= input.len());
            assert!((200..600).contains(&reply.code));
            let _ = Capabilities::from_reply(&reply);
            check_reply_wire(&reply);
        }
        ReplyParse::Incomplete | ReplyParse::Invalid => {}
    }
}

/// A reply's wire form always parses back as one whole reply.
fn check_reply_wire(reply: &Reply) {
    let wire = reply.to_bytes();
    match Reply::parse(&wire, usize::MAX) {
        ReplyParse::Complete(parsed, consumed) => {
            assert_eq!(consumed, wire.len(), "{wire:?}");
            assert_eq!(parsed.code, reply.code);
            assert_eq!(parsed.lines.len(), reply.lines.len().max(1));
        }
        other => panic!("{wire:?} parsed as {other:?}"),
    }
}

/// Replies as the outbound client reads them from a hostile server. The
/// first byte sets the line limit, the second the read size; the rest is
/// the server's stream. Reading it whole and reading it in pieces (parsing
/// after every read, as the client does) must give the same replies and
/// the same end (invalid, or incomplete with the same bytes left), and
/// every reply read must write back as one whole reply.
pub fn reply(input: &[u8]) {
    let [max_byte, chunk_byte, stream @ ..] = input else {
        return;
    };
    let max_line = 4 + usize::from(*max_byte) * 2;
    let whole = read_replies(stream, max_line, stream.len().max(1));
    let split = read_replies(stream, max_line, 1 + usize::from(*chunk_byte % 16));
    assert_eq!(whole, split, "whole and split reads disagree");
    for reply in &whole.0 {
        assert!((200..600).contains(&reply.code));
        assert!(!reply.lines.is_empty() && reply.lines.len() <= crate::MAX_REPLY_LINES);
        check_reply_wire(reply);
        if let Some(caps) = Capabilities::from_reply(reply) {
            let _ = (
                caps.size_limit(),
                caps.auth_mechanisms(),
                caps.has("PIPELINING"),
            );
            assert!(caps.keywords().all(|k| !k.contains(' ')));
        }
        let _ = (reply.text(), reply.to_string());
    }
}

/// The replies in `stream` read `chunk` bytes at a time, and how reading
/// ended: `None` when a reply was invalid, else the bytes left over.
fn read_replies(stream: &[u8], max_line: usize, chunk: usize) -> (Vec<Reply>, Option<usize>) {
    let (mut buf, mut replies, mut fed) = (Vec::new(), Vec::new(), 0);
    loop {
        match Reply::parse(&buf, max_line) {
            ReplyParse::Complete(reply, consumed) => {
                assert!(consumed > 0 && consumed <= buf.len());
                buf.drain(..consumed);
                replies.push(reply);
            }
            ReplyParse::Invalid => return (replies, None),
            ReplyParse::Incomplete if fed == stream.len() => {
                return (replies, Some(buf.len()));
            }
            ReplyParse::Incomplete => {
                let n = chunk.min(stream.len() - fed);
                buf.extend_from_slice(&stream[fed..fed + n]);
                fed += n;
            }
        }
    }
}

/// MAIL FROM and RCPT TO paths and hosts on arbitrary text: a path that
/// parses has a canonical form (brackets, `mailbox()`) that parses again
/// to the same path, minus its source route.
pub fn path(input: &[u8]) {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    for candidate in [text.to_string(), format!("<{text}>")] {
        if let Ok(path) = Path::parse(&candidate) {
            check_path(&path);
        }
        if let Ok(ReversePath::Path(path)) = ReversePath::parse(&candidate) {
            check_path(&path);
        }
        if let Ok(ForwardPath::Path(path)) = ForwardPath::parse(&candidate) {
            check_path(&path);
        }
    }
    if let Ok(host) = Host::parse(text) {
        let shown = host.to_string();
        let again = Host::parse(&shown)
            .unwrap_or_else(|e| panic!("host {shown:?} does not parse again: {e:?}"));
        assert_eq!(again.to_string(), shown);
    }
}

fn check_path(path: &Path) {
    let wire = path.to_string();
    let again =
        Path::parse(&wire).unwrap_or_else(|e| panic!("{wire:?} does not parse again: {e:?}"));
    assert_eq!(again.to_string(), wire);
    assert_eq!(again.local_part(), path.local_part());
    assert!(!again.had_source_route());
    let from_mailbox = Path::from_mailbox(&path.mailbox())
        .unwrap_or_else(|e| panic!("mailbox {:?} does not parse: {e:?}", path.mailbox()));
    assert_eq!(from_mailbox.to_string(), wire);
}

/// Where the data ends according to the specification, computed the slow
/// and obvious way: the first `.CRLF` at position 0 or right after a CRLF.
fn reference_end(stream: &[u8]) -> Option<usize> {
    (0..stream.len()).find(|&i| {
        stream[i..].starts_with(b".\r\n") && (i == 0 || (i >= 2 && &stream[i - 2..i] == b"\r\n"))
    })
}

/// The expected outcome for content `body` (everything before the final dot).
fn reference_result(body: &[u8], max_size: usize) -> Result<Vec<u8>, DataError> {
    let bare = body.iter().enumerate().any(|(k, &c)| {
        (c == b'\r' && body.get(k + 1) != Some(&b'\n'))
            || (c == b'\n' && (k == 0 || body[k - 1] != b'\r'))
    });
    if bare {
        return Err(DataError::BareLineEnding);
    }
    if body.contains(&0) {
        return Err(DataError::Nul);
    }
    let mut content = Vec::new();
    // `body` is empty or ends with CRLF (it precedes the terminating dot).
    let mut rest = body;
    while let Some(pos) = rest.windows(2).position(|w| w == b"\r\n") {
        let line = &rest[..pos];
        content.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
        content.extend_from_slice(b"\r\n");
        rest = &rest[pos + 2..];
    }
    if content.len() > max_size {
        return Err(DataError::TooLarge {
            size: content.len() as u64,
        });
    }
    Ok(content)
}

/// Feeds `stream` to a receiver in pieces chosen by `rng` (`None`: whole),
/// checking per-call invariants; returns the end position and result.
fn run_data(
    stream: &[u8],
    max_size: usize,
    mut rng: Option<&mut XorShift>,
) -> Option<(usize, Result<Vec<u8>, DataError>)> {
    let mut rx = DataReceiver::new(max_size);
    let mut pos = 0;
    while pos < stream.len() {
        let left = stream.len() - pos;
        let n = match rng.as_deref_mut() {
            None => left,
            Some(rng) => 1 + rng.below(left.min(16)),
        };
        let fed = rx.feed(&stream[pos..pos + n]);
        assert!(fed.consumed <= n, "consumed more than given");
        assert!(rx.buffered() <= max_size, "stored more than max_size");
        if !fed.done {
            assert_eq!(fed.consumed, n, "not done but left input unconsumed");
        }
        pos += fed.consumed;
        if fed.done {
            return Some((pos, rx.finish()));
        }
    }
    assert!(!rx.is_done());
    None
}

/// The DATA receiver on arbitrary input. The first byte sets `max_size`
/// (small, so the size limit is hit), the next two seed the splits; the
/// rest is the stream after the DATA command. Whole, byte-by-byte and
/// random splits must all agree with the reference, which means: never done
/// before a real `CRLF.CRLF`, never consuming past it, and bare CR/LF/NUL
/// always refused.
pub fn data(input: &[u8]) {
    let [size_byte, s1, s2, stream @ ..] = input else {
        return;
    };
    let max_size = usize::from(*size_byte) * 2;
    let expected = reference_end(stream).map(|end| {
        let consumed = end + 3;
        (consumed, reference_result(&stream[..end], max_size))
    });
    assert_eq!(run_data(stream, max_size, None), expected, "whole");
    let mut rng = XorShift::new(u64::from(*s1) << 8 | u64::from(*s2));
    assert_eq!(
        run_data(stream, max_size, Some(&mut rng)),
        expected,
        "split"
    );
    let mut rx = DataReceiver::new(max_size);
    let mut result = None;
    for (i, b) in stream.iter().enumerate() {
        let fed = rx.feed(std::slice::from_ref(b));
        assert_eq!(fed.consumed, 1);
        if fed.done {
            result = Some((i + 1, rx.finish()));
            break;
        }
    }
    assert_eq!(result, expected, "byte by byte");
}

/// The BDAT receiver on arbitrary input: the first byte sets `max_size`;
/// then each chunk is a header byte (size in the low 6 bits, LAST in the
/// top bit) followed by that many bytes. Content must be exactly the
/// concatenation (when within the limit), consumption exact, and storage
/// bounded.
pub fn bdat(input: &[u8]) {
    let [size_byte, seed, rest @ ..] = input else {
        return;
    };
    let mut rest: &[u8] = rest;
    let max_size = usize::from(*size_byte);
    let mut rng = XorShift::new(u64::from(*seed) + 1);
    let mut rx = BdatReceiver::new(max_size);
    let mut expected = Vec::new();
    while let [header, tail @ ..] = rest {
        let header = *header;
        let size = usize::from(header & 0x3f).min(tail.len());
        let last = header & 0x80 != 0;
        rx.start_chunk(size as u64, last);
        // Feed the chunk followed by some of what comes next, in pieces:
        // the receiver must stop exactly at the chunk's end.
        let window = &tail[..(size + 8).min(tail.len())];
        let mut pos = 0;
        while !rx.is_chunk_complete() {
            let n = 1 + rng.below((window.len() - pos).clamp(1, 12));
            let n = n.min(window.len() - pos);
            let used = rx.feed(&window[pos..pos + n]);
            assert!(used <= n);
            assert!(rx.buffered() <= max_size);
            pos += used;
            assert!(pos <= size, "consumed past the chunk");
        }
        assert_eq!(pos, size);
        expected.extend_from_slice(&tail[..size]);
        rest = &tail[size..];
        if last {
            break;
        }
    }
    let complete = rx.is_complete();
    let result = rx.finish();
    if !complete {
        assert_eq!(result, Err(DataError::Incomplete));
    } else if expected.len() > max_size {
        assert_eq!(
            result,
            Err(DataError::TooLarge {
                size: expected.len() as u64
            })
        );
    } else {
        assert_eq!(result, Ok(expected));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random inputs made of the byte sequences that matter (CR, LF, dot,
    /// NUL, real and fake terminators), so both endings are common.
    fn random_tokens(rng: &mut XorShift, tokens: &[&[u8]], max_tokens: usize) -> Vec<u8> {
        let n = rng.below(max_tokens + 1);
        let mut out = Vec::new();
        for _ in 0..n {
            out.extend_from_slice(tokens[rng.below(tokens.len())]);
        }
        out
    }

    #[test]
    fn data_harness_on_random_input() {
        let mut rng = XorShift::new(0x5eed);
        let tokens: &[&[u8]] = &[
            b"\r\n",
            b"\r\n",
            b"\r\n",
            b".",
            b".",
            b"\r",
            b"\n",
            b"a",
            b"text ",
            b"\0",
            b".\r\n",
            b"\r\n.\r\n",
            b"\n.\n",
            b"\r.\r",
            b"..",
            b"QUIT\r\n",
        ];
        let (mut ended, mut accepted) = (0, 0);
        for _ in 0..4000 {
            let mut input = vec![
                rng.below(40) as u8,
                rng.next_u64() as u8,
                rng.next_u64() as u8,
            ];
            input.extend(random_tokens(&mut rng, tokens, 30));
            if let Some(end) = reference_end(&input[3..]) {
                ended += 1;
                let max = usize::from(input[0]) * 2;
                accepted += usize::from(reference_result(&input[3..3 + end], max).is_ok());
            }
            data(&input);
        }
        // The generator must produce all outcomes, or the test proves little.
        assert!(ended > 1500, "only {ended} inputs ended");
        assert!(accepted > 300, "only {accepted} inputs accepted");
    }

    #[test]
    fn bdat_harness_on_random_input() {
        let mut rng = XorShift::new(42);
        for _ in 0..3000 {
            let len = rng.below(200);
            let input: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            bdat(&input);
        }
    }

    #[test]
    fn command_harness_on_random_input() {
        let mut rng = XorShift::new(7);
        // Fragments of valid commands glued with random bytes.
        let pieces: &[&[u8]] = &[
            b"MAIL FROM:",
            b"RCPT TO:",
            b"<",
            b">",
            b"@",
            b"\"",
            b"\\",
            b"a",
            b"example.com",
            b" ",
            b"SIZE=",
            b"1",
            b"NOTIFY=",
            b"SUCCESS,",
            b"NEVER",
            b"ORCPT=rfc822;",
            b"+2B",
            b"[",
            b"]",
            b"IPv6:",
            b"::1",
            b"192.0.2.1",
            b"EHLO ",
            b"BDAT ",
            b" LAST",
            b"AUTH ",
            b"PLAIN",
            b"=",
            b"\r\n",
            b"\n",
            b"\0",
            b"\xc3\xa9",
            b"\xff",
            b"250",
            b"-",
            b"2.0.0",
            b"postmaster",
            b",",
            b":",
            b".",
            b"%",
            b"!",
            b"ENVID=",
            b"AUTH=",
            b"BODY=8BITMIME",
        ];
        for _ in 0..20000 {
            let n = rng.below(12);
            let mut input = Vec::new();
            for _ in 0..n {
                input.extend_from_slice(pieces[rng.below(pieces.len())]);
            }
            command(&input);
        }
        let mut parsed = 0;
        for line in [
            &b"MAIL FROM:<\"a b\"@[IPv6:::ffff:102:304]> SIZE=1 AUTH=a+2Bb ENVID=x"[..],
            b"RCPT TO:<@r.example:a@b.example> NOTIFY=DELAY,SUCCESS ORCPT=utf-8;a+40b",
            b"AUTH plain =",
            b"250-x\r\n250 y\r\n",
        ] {
            command(line);
            parsed += usize::from(Command::parse(line).is_ok());
        }
        assert_eq!(parsed, 3);
    }

    #[test]
    fn reference_agrees_on_known_cases() {
        assert_eq!(reference_end(b".\r\n"), Some(0));
        assert_eq!(reference_end(b"a\r\n.\r\n"), Some(3));
        assert_eq!(reference_end(b"a\n.\r\n"), None);
        assert_eq!(reference_end(b"a\r\n..\r\n"), None);
        assert_eq!(reference_result(b"..x\r\n", 100), Ok(b".x\r\n".to_vec()));
    }
}
