//! COMPRESS=DEFLATE (RFC 4978): the deflate layer between a session's
//! framer and its socket.
//!
//! After the tagged `OK` to `COMPRESS DEFLATE` both directions carry raw
//! deflate (RFC 1951: no zlib header, no checksum), inside TLS when TLS is
//! active (RFC 4978 §4: compression is applied to the clear text, so it sits
//! above TLS). The session keeps its plain buffers; this layer turns each
//! batch of responses into deflate blocks and each chunk read from the
//! socket back into command bytes.
//!
//! Invariants:
//! - Every batch of output ends with a SYNC_FLUSH (RFC 4978 §3: "the server
//!   MUST flush"), so everything written is decodable by the client at once
//!   and the compressed stream ends on a byte boundary at an empty stored
//!   block.
//! - Because each batch ends on such a boundary, a compressor may be dropped
//!   between batches and a fresh one started later: its blocks follow the
//!   previous ones in the same stream, they only no longer refer back to
//!   earlier text. [`Deflate::hibernate`] does that for idling sessions, so
//!   the large compressor state (hash chains and window) is held only while
//!   a session is busy.
//! - The decompressor is never dropped: the client's compressor may refer
//!   back up to 32 KiB (a 15-bit window) at any time, so that window is the
//!   irreducible cost of a compressed session at rest.
//! - Inflating a chunk is done in bounded steps straight into the caller's
//!   sink, so a small "deflate bomb" never sits in one large buffer; the
//!   framer's message limits then apply to the decompressed bytes as to
//!   plain ones.

use std::io;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// Decompressed bytes handed to the sink at a time.
const INFLATE_STEP: usize = 16 * 1024;

/// Both directions of a compressed session.
pub struct Deflate {
    /// `None` between batches of an idling session (see [`Deflate::hibernate`]).
    deflate: Option<Box<Compress>>,
    inflate: Decompress,
    level: Compression,
}

impl Default for Deflate {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Deflate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deflate")
            .field("deflating", &self.deflate.is_some())
            .finish_non_exhaustive()
    }
}

impl Deflate {
    /// A raw deflate pair at the default level (6, as zlib and Dovecot).
    pub fn new() -> Self {
        Self {
            deflate: None,
            inflate: Decompress::new(false),
            level: Compression::default(),
        }
    }

    /// Compresses `input` and ends it with a SYNC_FLUSH, appending the
    /// deflate bytes to `out`.
    pub fn compress(&mut self, input: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        let level = self.level;
        let c = self
            .deflate
            .get_or_insert_with(|| Box::new(Compress::new(level, false)));
        let mut done = 0usize;
        loop {
            // Room for the worst case of what is left plus the flush marker.
            out.reserve((input.len() - done) / 2 + 64);
            let before = c.total_in();
            c.compress_vec(&input[done..], out, FlushCompress::Sync)
                .map_err(io::Error::other)?;
            done += usize::try_from(c.total_in() - before).map_err(io::Error::other)?;
            // The flush is complete when all input is taken and the output
            // was not filled to the brim.
            if done == input.len() && out.len() < out.capacity() {
                return Ok(());
            }
        }
    }

    /// Decompresses `input` (bytes as read from the socket), handing the
    /// clear text to `sink` in steps of at most 16 KiB. Fails on a corrupt
    /// stream or one the client ended (a final block: nothing may follow).
    pub fn decompress(&mut self, input: &[u8], mut sink: impl FnMut(&[u8])) -> io::Result<()> {
        let mut done = 0usize;
        let mut step = Vec::with_capacity(INFLATE_STEP);
        loop {
            step.clear();
            let before = self.inflate.total_in();
            let status = self
                .inflate
                .decompress_vec(&input[done..], &mut step, FlushDecompress::None)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            done += usize::try_from(self.inflate.total_in() - before).map_err(io::Error::other)?;
            if !step.is_empty() {
                sink(&step);
            }
            if status == Status::StreamEnd {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the client ended its deflate stream",
                ));
            }
            // More may be pending only when the step was filled.
            if done == input.len() && step.len() < step.capacity() {
                return Ok(());
            }
            if status == Status::BufError && step.is_empty() {
                // No progress possible without more input.
                return Ok(());
            }
        }
    }

    /// Drops the compressor: only valid after a completed
    /// [`Deflate::compress`] (its SYNC_FLUSH left the stream at a block
    /// boundary). The next batch starts a fresh compressor.
    pub fn hibernate(&mut self) {
        self.deflate = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a client (zlib with a raw 15-bit window) would see.
    fn client_inflate(d: &mut Decompress, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 << 20);
        let before = d.total_in();
        d.decompress_vec(bytes, &mut out, FlushDecompress::Sync)
            .unwrap();
        assert_eq!(d.total_in() - before, bytes.len() as u64);
        out
    }

    #[test]
    fn each_batch_is_complete_and_survives_hibernation() {
        let mut server = Deflate::new();
        let mut client = Decompress::new(false);
        let batches: [&[u8]; 3] = [
            b"* OK [CAPABILITY IMAP4rev1] ready\r\n",
            b"* 1 FETCH (FLAGS (\\Seen))\r\na OK done\r\n",
            b"* 2 EXISTS\r\n",
        ];
        for (i, batch) in batches.iter().enumerate() {
            let mut wire = Vec::new();
            server.compress(batch, &mut wire).unwrap();
            // SYNC_FLUSH ends with an empty stored block.
            assert!(wire.ends_with(&[0, 0, 0xff, 0xff]), "batch {i}");
            assert_eq!(client_inflate(&mut client, &wire), *batch);
            if i == 1 {
                server.hibernate();
            }
        }
    }

    #[test]
    fn large_batches_round_trip() {
        let mut server = Deflate::new();
        let mut client = Decompress::new(false);
        let body: Vec<u8> = (0..300_000u32)
            .map(|i| b"abcdefghij\r\n"[(i % 12) as usize] ^ ((i / 997) as u8 & 1))
            .collect();
        let mut wire = Vec::new();
        server.compress(&body, &mut wire).unwrap();
        assert!(wire.len() < body.len() / 10);
        assert_eq!(client_inflate(&mut client, &wire), body);
    }

    #[test]
    fn inflates_in_bounded_steps_across_split_input() {
        let mut client = Compress::new(Compression::default(), false);
        let text = vec![b'x'; 100_000];
        let mut wire = Vec::with_capacity(1024);
        client
            .compress_vec(&text, &mut wire, FlushCompress::Sync)
            .unwrap();
        let mut server = Deflate::new();
        let mut got = Vec::new();
        let mut largest = 0;
        for piece in wire.chunks(7) {
            server
                .decompress(piece, |b| {
                    largest = largest.max(b.len());
                    got.extend_from_slice(b);
                })
                .unwrap();
        }
        assert_eq!(got, text);
        assert!(largest <= INFLATE_STEP);
    }

    #[test]
    fn garbage_is_an_error() {
        let mut server = Deflate::new();
        let err = server
            .decompress(b"\xff\xff\xff\xff\xff\xff", |_| {})
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
