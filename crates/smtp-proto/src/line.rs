//! Cutting command and reply lines out of an input buffer.
//!
//! SMTP commands and replies are lines ended by CRLF. The session keeps one
//! input buffer per connection; [`take_line`] looks at its front and says
//! whether a whole line is there, without copying. Lines are bounded: a peer
//! that never sends a line ending must not make us buffer without limit, so
//! an overlong line is reported as soon as the limit is passed and the rest of
//! it can be thrown away with [`skip_line`] as it arrives.
//!
//! Robustness exception, documented because it matters for security: in
//! *command* mode a bare LF is accepted as a line terminator, as Postfix,
//! Exim and most servers do, because many hand-written clients send it. This
//! is harmless for commands (a command line cannot hide message content), and
//! it never applies to DATA content, where only CRLF ends a line (see
//! [`crate::DataReceiver`]).

/// RFC 5321 §4.5.3.1.4: a command line is at most 512 octets including CRLF.
/// Extensions can raise this (RFC 1870 and others add parameters); the caller
/// passes the limit it wants to [`take_line`].
pub const MAX_COMMAND_LINE: usize = 512;

/// RFC 5321 §4.5.3.1.5: a reply line is at most 512 octets including CRLF.
pub const MAX_REPLY_LINE: usize = 512;

/// RFC 5321 §4.5.3.1.6: a line of message text is at most 1000 octets
/// including CRLF. Not enforced by the DATA receiver (real mail breaks it and
/// the standard says to be liberal here); exported for callers that want it.
pub const MAX_TEXT_LINE: usize = 1000;

/// What the front of the input buffer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Line<'a> {
    /// No line terminator yet and the buffer is still under the limit: read
    /// more from the peer and try again.
    Incomplete,
    /// A whole line is there.
    Complete {
        /// The line without its CRLF (or bare LF, see the module docs).
        line: &'a [u8],
        /// How many bytes to drop from the buffer, terminator included.
        consumed: usize,
    },
    /// The line is longer than the limit. Drop `consumed` bytes; reply
    /// `500 5.5.6` (RFC 3463 X.5.6 "syntax error, line too long"). If `ended`
    /// is false the rest of the line has not arrived yet: pass later input to
    /// [`skip_line`] until it reports `ended`, so the oversized line is
    /// discarded in bounded memory and never parsed as a command.
    TooLong {
        /// Bytes of the overlong line present in the buffer (terminator
        /// included when `ended`).
        consumed: usize,
        /// Whether the terminator of the overlong line was in the buffer.
        ended: bool,
    },
}

/// Progress of discarding the remainder of an overlong line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Skipped {
    /// Bytes to drop from the buffer.
    pub consumed: usize,
    /// Whether the line terminator was among them; if so the session is back
    /// in sync and the next byte starts a new command.
    pub ended: bool,
}

/// Takes one line from the front of `buf`, if a whole one is there.
///
/// `max_len` counts the terminator, as RFC 5321 does (so a 512 limit allows
/// 510 octets of text). The line is returned without CRLF; a bare LF also
/// ends the line (command-mode leniency, see the module docs), and a CR that
/// is not directly before the LF stays in the line, where
/// [`crate::Command::parse`] rejects it as a control character.
///
/// ```
/// use mailroom_smtp_proto::{Line, take_line};
/// assert_eq!(
///     take_line(b"NOOP\r\nQUIT\r\n", 512),
///     Line::Complete { line: b"NOOP", consumed: 6 }
/// );
/// assert_eq!(take_line(b"NO", 512), Line::Incomplete);
/// assert_eq!(take_line(b"NOOP NOOP", 5), Line::TooLong { consumed: 9, ended: false });
/// ```
pub fn take_line(buf: &[u8], max_len: usize) -> Line<'_> {
    let window = &buf[..buf.len().min(max_len)];
    if let Some(lf) = window.iter().position(|&b| b == b'\n') {
        let line = &buf[..lf];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        return Line::Complete {
            line,
            consumed: lf + 1,
        };
    }
    if buf.len() < max_len {
        return Line::Incomplete;
    }
    let Skipped { consumed, ended } = skip_line(buf);
    Line::TooLong { consumed, ended }
}

/// Discards input up to and including the next line terminator.
///
/// Used after [`Line::TooLong`] with `ended == false`: every new read is
/// passed here until `ended` is true. Nothing needs to be kept in between, so
/// an endless line costs no memory.
pub fn skip_line(buf: &[u8]) -> Skipped {
    match buf.iter().position(|&b| b == b'\n') {
        Some(lf) => Skipped {
            consumed: lf + 1,
            ended: true,
        },
        None => Skipped {
            consumed: buf.len(),
            ended: false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complete_lines() {
        let cases: &[(&[u8], &[u8], usize)] = &[
            (b"QUIT\r\n", b"QUIT", 6),
            (b"QUIT\r\nRSET\r\n", b"QUIT", 6),
            (b"\r\n", b"", 2),
            // Bare LF accepted in command mode.
            (b"QUIT\n", b"QUIT", 5),
            // A CR that is not before the LF stays in the line.
            (b"QU\rIT\r\n", b"QU\rIT", 7),
            (b"QUIT\r\r\n", b"QUIT\r", 7),
        ];
        for (input, line, consumed) in cases {
            assert_eq!(
                take_line(input, 512),
                Line::Complete {
                    line,
                    consumed: *consumed
                },
                "{input:?}"
            );
        }
    }

    #[test]
    fn incomplete() {
        assert_eq!(take_line(b"", 512), Line::Incomplete);
        assert_eq!(take_line(b"QUIT", 512), Line::Incomplete);
        assert_eq!(take_line(b"QUIT\r", 512), Line::Incomplete);
    }

    #[test]
    fn limit_counts_the_terminator() {
        let mut exact = vec![b'a'; 510];
        exact.extend_from_slice(b"\r\n");
        assert_eq!(
            take_line(&exact, 512),
            Line::Complete {
                line: &exact[..510],
                consumed: 512
            }
        );
        let mut over = vec![b'a'; 511];
        over.extend_from_slice(b"\r\nQUIT\r\n");
        assert_eq!(
            take_line(&over, 512),
            Line::TooLong {
                consumed: 513,
                ended: true
            }
        );
        // The next command is intact after the skipped line.
        assert_eq!(
            take_line(&over[513..], 512),
            Line::Complete {
                line: b"QUIT",
                consumed: 6
            }
        );
    }

    #[test]
    fn too_long_without_end_is_skipped_in_pieces() {
        let chunk = vec![b'x'; 600];
        assert_eq!(
            take_line(&chunk, 512),
            Line::TooLong {
                consumed: 600,
                ended: false
            }
        );
        // Exactly at the limit with no terminator is already too long: a
        // terminator would make it 513 or more.
        assert_eq!(
            take_line(&chunk[..512], 512),
            Line::TooLong {
                consumed: 512,
                ended: false
            }
        );
        assert_eq!(take_line(&chunk[..511], 512), Line::Incomplete);
        assert_eq!(
            skip_line(b"xxxx"),
            Skipped {
                consumed: 4,
                ended: false
            }
        );
        assert_eq!(
            skip_line(b"xx\r\nQUIT\r\n"),
            Skipped {
                consumed: 4,
                ended: true
            }
        );
    }
}
