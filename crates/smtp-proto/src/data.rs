//! The DATA receiver: message content up to `CRLF . CRLF`, dot-unstuffed.
//!
//! This is the SMTP smuggling defence (CVE-2023-51764/51765/51766). A
//! smuggler sends a message whose content contains a fake end of data that
//! *some* server in the path accepts (`\n.\n`, `\r.\r`, `\n.\r\n`, …) followed
//! by a second SMTP transaction; a server that ends the data there runs the
//! hidden transaction with the first one's authority. Here:
//!
//! * the end of data is only `CRLF . CRLF` (RFC 5321 §4.1.1.4), where the
//!   first CRLF may be the one that ended the `DATA` command line, so a `.`
//!   line at the very start ends an empty message;
//! * a CR not followed by LF, or an LF not preceded by CR, is a *bare line
//!   ending*: never a line end, never part of a terminator, never
//!   normalised; the message fails with [`DataError::BareLineEnding`]
//!   (RFC 5321 §2.3.8: CR and LF only occur together as CRLF);
//! * NUL fails the message with [`DataError::Nul`]: RFC 5321 §4.5.2 and
//!   RFC 6152 do not allow it in DATA, and C-based software downstream may
//!   treat it as the end of a string, hiding what follows (e.g. a fake
//!   terminator in `\r\n\0.\r\n`). Binary content must use BDAT with
//!   `BODY=BINARYMIME` (RFC 3030);
//! * after a bare CR, LF or NUL the receiver keeps consuming up to the real
//!   `CRLF . CRLF`, so whatever the smuggler hid is swallowed as content of
//!   the refused message instead of being read as commands.
//!
//! The receiver is a byte-level state machine: input may be split anywhere,
//! one byte at a time included, with identical results. It never consumes
//! input after the terminator, which belongs to the next (pipelined)
//! command. Memory is bounded by `max_size`: beyond it bytes are counted,
//! not stored.

use crate::reply::Reply;

/// Where the receiver is within a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a line: right after a CRLF, or at the start of data.
    LineStart,
    /// Inside a line.
    Text,
    /// After a CR (not yet stored: it is only content if an LF follows).
    Cr,
    /// After a `.` at the start of a line.
    Dot,
    /// After `.` CR at the start of a line: an LF now ends the data.
    DotCr,
    /// `CRLF . CRLF` has been read.
    Done,
}

/// Why a message received with DATA is refused. The receiver has consumed
/// the whole message by the time this is known, so the session is in sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataError {
    /// The content had a CR without LF or an LF without CR: a possible
    /// SMTP smuggling attempt, always refused (`554 5.6.0`).
    BareLineEnding,
    /// The content had a NUL octet (`554 5.6.0`).
    Nul,
    /// The message was larger than the limit (`552 5.3.4`, RFC 5321
    /// §4.5.3.1.10 and RFC 1870). `size` is the full dot-unstuffed size.
    TooLarge {
        /// Octets of message content received, stored or not.
        size: u64,
    },
    /// [`DataReceiver::finish`] or [`crate::BdatReceiver::finish`] was called
    /// before the end of the message: a bug in the session (`451 4.3.0`).
    Incomplete,
}

impl DataError {
    /// The reply to send for this error.
    pub fn reply(&self) -> Reply {
        match self {
            DataError::BareLineEnding => Reply::new(
                554,
                "5.6.0",
                "Message contains bare CR or LF characters; lines must end with CRLF",
            ),
            DataError::Nul => Reply::new(554, "5.6.0", "Message contains NUL characters"),
            DataError::TooLarge { .. } => Reply::new(
                552,
                "5.3.4",
                "Message size exceeds fixed maximum message size",
            ),
            DataError::Incomplete => Reply::new(451, "4.3.0", "Internal error"),
        }
    }
}

impl std::fmt::Display for DataError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DataError::BareLineEnding => f.write_str("bare CR or LF in message content"),
            DataError::Nul => f.write_str("NUL in message content"),
            DataError::TooLarge { size } => write!(f, "message too large ({size} octets)"),
            DataError::Incomplete => f.write_str("message not complete"),
        }
    }
}

impl std::error::Error for DataError {}

/// Result of one [`DataReceiver::feed`] call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fed {
    /// Bytes used from the input. Equal to the input length unless `done`,
    /// in which case the rest of the input is the next command.
    pub consumed: usize,
    /// Whether `CRLF . CRLF` has been read; call [`DataReceiver::finish`].
    pub done: bool,
}

/// Receives the content after a `354` reply to DATA.
#[derive(Debug, Clone)]
pub struct DataReceiver {
    max_size: usize,
    content: Vec<u8>,
    size: u64,
    state: State,
    bare_line_ending: bool,
    nul: bool,
}

impl DataReceiver {
    /// A receiver that stores at most `max_size` octets of content; a larger
    /// message is still read to its end, then refused.
    pub fn new(max_size: usize) -> DataReceiver {
        DataReceiver {
            max_size,
            content: Vec::new(),
            size: 0,
            state: State::LineStart,
            bare_line_ending: false,
            nul: false,
        }
    }

    /// Consumes input, up to and including the terminator if it is there.
    pub fn feed(&mut self, input: &[u8]) -> Fed {
        let mut i = 0;
        while i < input.len() && self.state != State::Done {
            if self.state == State::Text {
                // Fast path: copy a run of ordinary bytes at once.
                let run = input[i..]
                    .iter()
                    .position(|&b| matches!(b, b'\r' | b'\n' | 0))
                    .unwrap_or(input.len() - i);
                if run > 0 {
                    self.push(&input[i..i + run]);
                    i += run;
                    continue;
                }
            }
            self.step(input[i]);
            i += 1;
        }
        Fed {
            consumed: i,
            done: self.state == State::Done,
        }
    }

    fn step(&mut self, b: u8) {
        self.state = match (self.state, b) {
            (State::Done, _) => State::Done,
            (State::Cr, b'\n') => {
                self.push(b"\r\n");
                State::LineStart
            }
            // RFC 5321 §4.1.1.4: the end is `CRLF . CRLF` and nothing else.
            (State::DotCr, b'\n') => State::Done,
            // A CR not followed by LF. The dot before it (if any) was at
            // the start of a line and is unstuffed as usual.
            (State::Cr | State::DotCr, _) => {
                self.bare_line_ending = true;
                self.push(b"\r");
                self.text_byte(b)
            }
            (State::LineStart, b'.') => State::Dot,
            (State::Dot, b'\r') => State::DotCr,
            // RFC 5321 §4.5.2: a line starting with '.' has it removed
            // (the dot was not stored when it was seen).
            (State::Dot | State::LineStart | State::Text, _) => self.text_byte(b),
        };
    }

    fn text_byte(&mut self, b: u8) -> State {
        match b {
            b'\r' => State::Cr,
            b'\n' => {
                // An LF without CR: never a line end here.
                self.bare_line_ending = true;
                self.push(b"\n");
                State::Text
            }
            0 => {
                self.nul = true;
                self.push(b"\0");
                State::Text
            }
            _ => {
                self.push(&[b]);
                State::Text
            }
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        self.size += bytes.len() as u64;
        if self.size > self.max_size as u64 {
            // Over the limit: keep counting, store nothing, give the memory
            // back at once.
            if self.content.capacity() > 0 {
                self.content = Vec::new();
            }
            return;
        }
        let needed = self.content.len() + bytes.len();
        if needed > self.content.capacity() {
            // Grow geometrically but never past the limit.
            let target = (self.content.capacity() * 2)
                .max(needed)
                .max(1024)
                .min(self.max_size);
            self.content.reserve_exact(target - self.content.len());
        }
        self.content.extend_from_slice(bytes);
    }

    /// Whether `CRLF . CRLF` has been read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Octets of dot-unstuffed content received so far, stored or not.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Octets currently stored (never more than `max_size`).
    pub fn buffered(&self) -> usize {
        self.content.len()
    }

    /// Whether the message has already gone over the limit; the session may
    /// stop doing work on it but must keep feeding until done.
    pub fn is_too_large(&self) -> bool {
        self.size > self.max_size as u64
    }

    /// The message content (dot-unstuffed, ending with the CRLF before the
    /// terminating dot), or why it is refused.
    ///
    /// When several problems occurred, a bare line ending is reported first
    /// (it is the one worth logging as an attack), then NUL, then size.
    pub fn finish(self) -> Result<Vec<u8>, DataError> {
        if self.state != State::Done {
            return Err(DataError::Incomplete);
        }
        if self.bare_line_ending {
            return Err(DataError::BareLineEnding);
        }
        if self.nul {
            return Err(DataError::Nul);
        }
        if self.is_too_large() {
            return Err(DataError::TooLarge { size: self.size });
        }
        Ok(self.content)
    }
}

/// The header section of a message (RFC 5322 §2.1): everything up to and
/// including the CRLF of the last header line, without the blank line. A
/// message without a blank line is all header.
pub fn header_section(message: &[u8]) -> &[u8] {
    if message.starts_with(b"\r\n") {
        return &message[..0];
    }
    match message.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(pos) => &message[..pos + 2],
        None => message,
    }
}

/// Counts `Received:` fields in the header section. RFC 5321 §6.3: a
/// message with too many (Mailroom's MTA uses 100) is in a loop and is
/// refused with `554 5.4.6`.
pub fn count_received_headers(message: &[u8]) -> usize {
    header_section(message)
        .split(|&b| b == b'\n')
        .filter(|line| {
            // Continuation lines start with white space; a field name is
            // followed by optional white space (RFC 5322 §4.5.3 obs-syntax)
            // and a colon.
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                return false;
            };
            let name = &line[..colon];
            let name = match name.iter().rposition(|&b| b != b' ' && b != b'\t') {
                Some(end) => &name[..=end],
                None => return false,
            };
            name.eq_ignore_ascii_case(b"Received")
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of the given sizes (cycled) and returns
    /// the consumed total if done, plus the finished result.
    fn feed_in_pieces(
        input: &[u8],
        max_size: usize,
        pieces: &mut dyn FnMut() -> usize,
    ) -> (Option<usize>, Option<Result<Vec<u8>, DataError>>) {
        let mut rx = DataReceiver::new(max_size);
        let mut pos = 0;
        while pos < input.len() {
            let n = pieces().max(1).min(input.len() - pos);
            let fed = rx.feed(&input[pos..pos + n]);
            assert!(fed.consumed <= n);
            assert!(rx.buffered() <= max_size);
            if !fed.done {
                assert_eq!(fed.consumed, n, "consumed less without being done");
            }
            pos += fed.consumed;
            if fed.done {
                assert_eq!(
                    rx.feed(b"more"),
                    Fed {
                        consumed: 0,
                        done: true
                    }
                );
                return (Some(pos), Some(rx.finish()));
            }
        }
        (None, None)
    }

    /// Runs `input` whole, byte by byte, and split at every position
    /// (in two pieces and in three), checking all give the same answer.
    fn all_splits(
        input: &[u8],
        max_size: usize,
    ) -> (Option<usize>, Option<Result<Vec<u8>, DataError>>) {
        let whole = feed_in_pieces(input, max_size, &mut || usize::MAX);
        let bytes = feed_in_pieces(input, max_size, &mut || 1);
        assert_eq!(bytes, whole, "byte by byte: {input:?}");
        for a in 0..=input.len() {
            let mut first = true;
            let split = feed_in_pieces(input, max_size, &mut || {
                if std::mem::take(&mut first) {
                    a
                } else {
                    usize::MAX
                }
            });
            assert_eq!(split, whole, "split at {a}: {input:?}");
            if input.len() <= 64 {
                for b in a..=input.len() {
                    let mut k = 0;
                    let split3 = feed_in_pieces(input, max_size, &mut || {
                        k += 1;
                        match k {
                            1 => a,
                            2 => b - a,
                            _ => usize::MAX,
                        }
                    });
                    assert_eq!(split3, whole, "split at {a},{b}: {input:?}");
                }
            }
        }
        whole
    }

    #[test]
    fn normal_message() {
        let input = b"Subject: hi\r\n\r\nHello\r\n.\r\n";
        let (end, res) = all_splits(input, 1000);
        assert_eq!(end, Some(input.len()));
        assert_eq!(res.unwrap().unwrap(), b"Subject: hi\r\n\r\nHello\r\n");
    }

    #[test]
    fn dot_stuffing_is_removed() {
        let input = b"..leading dot\r\n...two\r\n.x\r\nmid.dot.\r\n..\r\n.\r\n";
        let (end, res) = all_splits(input, 1000);
        assert_eq!(end, Some(input.len()));
        assert_eq!(
            res.unwrap().unwrap(),
            b".leading dot\r\n..two\r\nx\r\nmid.dot.\r\n.\r\n"
        );
    }

    #[test]
    fn dot_as_first_line_ends_empty_message() {
        let (end, res) = all_splits(b".\r\n", 1000);
        assert_eq!(end, Some(3));
        assert_eq!(res.unwrap().unwrap(), b"");
        // An empty line then the end.
        let (end, res) = all_splits(b"\r\n.\r\n", 1000);
        assert_eq!(end, Some(5));
        assert_eq!(res.unwrap().unwrap(), b"\r\n");
    }

    #[test]
    fn pipelined_command_is_not_consumed() {
        let input = b"Subject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n";
        let (end, res) = all_splits(input, 1000);
        assert_eq!(end, Some(input.len() - 6));
        assert_eq!(&input[end.unwrap()..], b"QUIT\r\n");
        assert_eq!(res.unwrap().unwrap(), b"Subject: x\r\n\r\nbody\r\n");
        // Even when the next command arrives glued to the terminator's LF.
        let mut rx = DataReceiver::new(100);
        assert_eq!(
            rx.feed(b"a\r\n.\r"),
            Fed {
                consumed: 5,
                done: false
            }
        );
        assert_eq!(
            rx.feed(b"\nMAIL FROM:<>\r\n"),
            Fed {
                consumed: 1,
                done: true
            }
        );
    }

    #[test]
    fn incomplete_message_is_not_done() {
        for input in [
            &b""[..],
            b"abc",
            b"abc\r\n",
            b"abc\r\n.",
            b"abc\r\n.\r",
            b".",
            b".\r",
        ] {
            let (end, _) = all_splits(input, 100);
            assert_eq!(end, None, "{input:?}");
        }
        let mut rx = DataReceiver::new(100);
        rx.feed(b"abc\r\n");
        assert!(!rx.is_done());
        assert_eq!(rx.finish(), Err(DataError::Incomplete));
    }

    /// Every fake terminator of the SMTP smuggling attacks, and NUL
    /// variants: none of them ends the data, the hidden "commands" after
    /// them are swallowed, and the message is refused at the real end.
    #[test]
    fn smuggling_endings_do_not_end_data() {
        let fakes: &[(&[u8], DataError)] = &[
            (b"\n.\n", DataError::BareLineEnding),
            (b"\r.\r", DataError::BareLineEnding),
            (b"\r.\n", DataError::BareLineEnding),
            (b"\n.\r", DataError::BareLineEnding),
            (b"\n.\r\n", DataError::BareLineEnding),
            (b"\r\n.\n", DataError::BareLineEnding),
            (b"\r.\r\n", DataError::BareLineEnding),
            (b"\r\n.\r", DataError::BareLineEnding),
            (b"\r\n\0.\r\n", DataError::Nul),
            (b"\r\n.\0\r\n", DataError::Nul),
            (b"\n", DataError::BareLineEnding),
            (b"\r", DataError::BareLineEnding),
            (b"\r\r\n", DataError::BareLineEnding),
            (b"\n\r\n", DataError::BareLineEnding),
        ];
        let smuggled =
            b"MAIL FROM:<admin@victim.example>\r\nRCPT TO:<x@example.org>\r\nDATA\r\nsmuggled\r\n";
        for (fake, err) in fakes {
            let mut input = b"Subject: test\r\n\r\nbody".to_vec();
            input.extend_from_slice(fake);
            input.extend_from_slice(smuggled);
            let real_end = input.len() + 3;
            input.extend_from_slice(b".\r\nQUIT\r\n");
            let (end, res) = all_splits(&input, 10_000);
            assert_eq!(end, Some(real_end), "fake ending {fake:?} ended the data");
            assert_eq!(res.unwrap(), Err(*err), "{fake:?}");

            // Also at the very start of the data, where the DATA line's CRLF
            // counts as the first half of the terminator.
            let mut input = fake.to_vec();
            input.extend_from_slice(smuggled);
            let real_end = input.len() + 3;
            input.extend_from_slice(b".\r\n");
            let (end, res) = all_splits(&input, 10_000);
            assert_eq!(end, Some(real_end), "fake ending {fake:?} at start");
            assert_eq!(res.unwrap(), Err(*err), "{fake:?} at start");
        }
    }

    #[test]
    fn bare_line_ending_wins_over_nul_and_size() {
        let (_, res) = all_splits(b"\0\0\0\0\0\n\0\r\n.\r\n", 2);
        assert_eq!(res.unwrap(), Err(DataError::BareLineEnding));
        let (_, res) = all_splits(b"\0\0\0\0\0\r\n.\r\n", 2);
        assert_eq!(res.unwrap(), Err(DataError::Nul));
    }

    #[test]
    fn oversize_is_counted_not_stored() {
        let mut input = Vec::new();
        for i in 0..200 {
            input.extend_from_slice(format!("line {i} of a long message\r\n").as_bytes());
        }
        let content_len = input.len() as u64;
        input.extend_from_slice(b".\r\nQUIT\r\n");
        for max in [0, 1, 10, 100, 1000] {
            let (end, res) = all_splits(&input, max);
            assert_eq!(end, Some(input.len() - 6), "max {max}");
            assert_eq!(res.unwrap(), Err(DataError::TooLarge { size: content_len }));
        }
        // Exactly at the limit is fine.
        let (_, res) = all_splits(b"abc\r\n.\r\n", 5);
        assert_eq!(res.unwrap().unwrap(), b"abc\r\n");
        let (_, res) = all_splits(b"abcd\r\n.\r\n", 5);
        assert_eq!(res.unwrap(), Err(DataError::TooLarge { size: 6 }));
        // Capacity stays within the limit as well, not just length.
        let mut rx = DataReceiver::new(3000);
        rx.feed(&input[..input.len() - 9]);
        assert!(rx.is_too_large());
        assert_eq!(rx.buffered(), 0);
        let mut rx = DataReceiver::new(5000);
        for chunk in input[..4000].chunks(7) {
            rx.feed(chunk);
            assert!(rx.content.capacity() <= 5000);
        }
    }

    #[test]
    fn error_replies() {
        assert_eq!(DataError::BareLineEnding.reply().code, 554);
        assert_eq!(
            DataError::TooLarge { size: 1 }.reply().to_bytes(),
            b"552 5.3.4 Message size exceeds fixed maximum message size\r\n"
        );
        assert_eq!(DataError::Nul.reply().status.unwrap().to_string(), "5.6.0");
    }

    #[test]
    fn headers() {
        let msg = b"Received: from a\r\n\tby b\r\nreceived : from c\r\nX-Received: no\r\nSubject: Received: no\r\n\r\nReceived: in body\r\n";
        assert_eq!(count_received_headers(msg), 2);
        assert_eq!(
            header_section(msg),
            &b"Received: from a\r\n\tby b\r\nreceived : from c\r\nX-Received: no\r\nSubject: Received: no\r\n"[..]
        );
        assert_eq!(header_section(b"\r\nbody"), b"");
        assert_eq!(header_section(b"A: b\r\n"), b"A: b\r\n");
        let many = b"Received: x\r\n".repeat(101);
        assert_eq!(count_received_headers(&many), 101);
        assert_eq!(count_received_headers(b""), 0);
    }
}
