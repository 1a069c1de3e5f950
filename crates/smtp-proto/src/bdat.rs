//! The BDAT receiver (CHUNKING, RFC 3030).
//!
//! With BDAT the client announces each chunk's size on the command line and
//! sends exactly that many octets after it: no dot-stuffing, no terminator,
//! nothing inside a chunk is interpreted, which makes BDAT immune to the
//! smuggling tricks DATA must defend against. The message is the
//! concatenation of the chunks up to the one marked `LAST`.
//!
//! The session parses `BDAT size [LAST]` with [`crate::Command::parse`], calls
//! [`BdatReceiver::start_chunk`], then feeds input until the chunk is
//! complete. Chunk octets are always consumed exactly, even for a message
//! that is already too large or a chunk the session refuses, because
//! otherwise the rest of the chunk would be read as commands (RFC 3030 §2:
//! the server must read the whole chunk whatever its reply). A refused chunk
//! can be swallowed with a receiver created with `max_size` 0 and dropped.

use crate::data::DataError;

/// Accumulates the chunks of one message sent with BDAT.
#[derive(Debug, Clone)]
pub struct BdatReceiver {
    max_size: usize,
    content: Vec<u8>,
    /// Octets announced so far, including the rest of the current chunk.
    announced: u64,
    /// Octets of the current chunk still to come.
    remaining: u64,
    last: bool,
}

impl BdatReceiver {
    /// A receiver that stores at most `max_size` octets of message.
    pub fn new(max_size: usize) -> BdatReceiver {
        BdatReceiver {
            max_size,
            content: Vec::new(),
            announced: 0,
            remaining: 0,
            last: false,
        }
    }

    /// Begins a chunk after a `BDAT size [LAST]` command.
    ///
    /// Must only be called when the previous chunk is complete and was not
    /// the last; doing otherwise is a session bug (checked in debug builds).
    /// When the announced total passes `max_size` the stored content is
    /// dropped at once: the message will be refused, so there is no point
    /// in keeping it, and [`BdatReceiver::is_too_large`] lets the session
    /// answer 552 to this chunk already (RFC 3030 §2 allows it).
    pub fn start_chunk(&mut self, size: u64, last: bool) {
        debug_assert!(
            self.remaining == 0,
            "BDAT chunk started before the previous one ended"
        );
        debug_assert!(!self.last, "BDAT chunk started after LAST");
        self.remaining = self.remaining.saturating_add(size);
        self.announced = self.announced.saturating_add(size);
        self.last = last;
        if self.is_too_large() {
            self.content = Vec::new();
        }
    }

    /// Consumes up to the rest of the current chunk from `input` and returns
    /// how many bytes were used; what follows the chunk is the next command.
    pub fn feed(&mut self, input: &[u8]) -> usize {
        let take = usize::try_from(self.remaining)
            .unwrap_or(usize::MAX)
            .min(input.len());
        if !self.is_too_large() {
            // `announced` ≤ max_size here, so this never grows past it.
            self.content.reserve_exact(take);
            self.content.extend_from_slice(&input[..take]);
        }
        self.remaining -= take as u64;
        take
    }

    /// Octets of the current chunk not yet received.
    pub fn chunk_remaining(&self) -> u64 {
        self.remaining
    }

    /// Whether the current chunk has been received completely; the session
    /// then replies to the BDAT command.
    pub fn is_chunk_complete(&self) -> bool {
        self.remaining == 0
    }

    /// Whether the `LAST` chunk has been received completely.
    pub fn is_complete(&self) -> bool {
        self.last && self.remaining == 0
    }

    /// Whether the announced size has passed the limit.
    pub fn is_too_large(&self) -> bool {
        self.announced > self.max_size as u64
    }

    /// Octets announced so far (received plus still expected).
    pub fn size(&self) -> u64 {
        self.announced
    }

    /// Octets currently stored (never more than `max_size`).
    pub fn buffered(&self) -> usize {
        self.content.len()
    }

    /// The message, once the `LAST` chunk is complete.
    pub fn finish(self) -> Result<Vec<u8>, DataError> {
        if !self.is_complete() {
            return Err(DataError::Incomplete);
        }
        if self.is_too_large() {
            return Err(DataError::TooLarge {
                size: self.announced,
            });
        }
        Ok(self.content)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Command;

    /// Plays a BDAT session: `wire` holds BDAT command lines each followed by
    /// its chunk. Input is delivered in pieces of `piece` bytes; returns the
    /// message result and what was left after the LAST chunk.
    fn run(wire: &[u8], max_size: usize, piece: usize) -> (Result<Vec<u8>, DataError>, Vec<u8>) {
        let mut rx = BdatReceiver::new(max_size);
        let mut buf = Vec::new();
        let mut pos = 0;
        let mut in_chunk = false;
        loop {
            if in_chunk {
                let used = rx.feed(&buf);
                assert!(used <= buf.len());
                assert!(rx.buffered() <= max_size);
                buf.drain(..used);
                if rx.is_chunk_complete() {
                    in_chunk = false;
                    if rx.is_complete() {
                        break;
                    }
                    continue;
                }
            } else if let Some(lf) = buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buf.drain(..=lf).collect();
                let Ok(Command::Bdat { size, last }) = Command::parse(&line[..line.len() - 2])
                else {
                    panic!("not BDAT: {line:?}");
                };
                rx.start_chunk(size, last);
                in_chunk = true;
                continue;
            }
            assert!(pos < wire.len(), "ran out of input");
            let n = piece.min(wire.len() - pos);
            buf.extend_from_slice(&wire[pos..pos + n]);
            pos += n;
        }
        buf.extend_from_slice(&wire[pos..]);
        (rx.finish(), buf)
    }

    const WIRE: &[u8] = b"BDAT 10\r\n0123456789BDAT 0\r\nBDAT 5\r\n\r\n.\r\nBDAT 3 LAST\r\nend";

    #[test]
    fn several_chunks_in_any_pieces() {
        let mut wire = WIRE.to_vec();
        wire.extend_from_slice(b"QUIT\r\n");
        for piece in 1..=wire.len() {
            let (res, rest) = run(&wire, 1000, piece);
            assert_eq!(res.unwrap(), b"0123456789\r\n.\r\nend", "piece {piece}");
            assert_eq!(rest, b"QUIT\r\n", "piece {piece}");
        }
    }

    #[test]
    fn chunk_content_is_not_interpreted() {
        // Bare LF, NUL and dots are all plain content in BDAT.
        let wire = b"BDAT 8 LAST\r\n\n.\n\0\r.\r\nRSET\r\n";
        let (res, rest) = run(wire, 100, 3);
        assert_eq!(res.unwrap(), b"\n.\n\0\r.\r\n");
        assert_eq!(rest, b"RSET\r\n");
    }

    #[test]
    fn oversize_keeps_stream_in_sync() {
        for piece in [1, 2, 7, 100] {
            let (res, rest) = run(&[WIRE, b"NOOP\r\n"].concat(), 12, piece);
            assert_eq!(res, Err(DataError::TooLarge { size: 18 }));
            assert_eq!(rest, b"NOOP\r\n");
        }
        let mut rx = BdatReceiver::new(10);
        rx.start_chunk(8, false);
        assert!(!rx.is_too_large());
        assert_eq!(rx.feed(b"12345678"), 8);
        rx.start_chunk(5, true);
        // Known as soon as the chunk is announced, and nothing is kept.
        assert!(rx.is_too_large());
        assert_eq!(rx.buffered(), 0);
        assert_eq!(rx.feed(b"abc"), 3);
        assert_eq!(rx.chunk_remaining(), 2);
        assert_eq!(rx.feed(b"defMAIL"), 2);
        assert!(rx.is_complete());
        assert_eq!(rx.finish(), Err(DataError::TooLarge { size: 13 }));
        // A huge announced size does not overflow or allocate.
        let mut rx = BdatReceiver::new(10);
        rx.start_chunk(u64::MAX, true);
        assert_eq!(rx.feed(&[0; 4096]), 4096);
        assert_eq!(rx.buffered(), 0);
        assert!(!rx.is_complete());
    }

    #[test]
    fn incomplete_and_empty() {
        let mut rx = BdatReceiver::new(10);
        rx.start_chunk(4, false);
        assert_eq!(rx.feed(b"abcd"), 4);
        assert!(rx.is_chunk_complete() && !rx.is_complete());
        assert_eq!(rx.finish(), Err(DataError::Incomplete));
        let mut rx = BdatReceiver::new(10);
        rx.start_chunk(0, true);
        assert!(rx.is_complete());
        assert_eq!(rx.feed(b"QUIT"), 0);
        assert_eq!(rx.finish().unwrap(), b"");
    }
}
