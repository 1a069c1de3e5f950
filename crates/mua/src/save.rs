//! Saving attachments to disk as they arrive: an incremental
//! Content-Transfer-Encoding decoder (RFC 2045 §6.7 quoted-printable,
//! §6.8 base64) writing into a temporary file in the target directory,
//! which becomes the attachment only once it is complete.
//!
//! Invariants:
//! * memory is bounded whatever the part's size: the decoders keep a few
//!   bytes of state (base64: under one byte of bits; quoted-printable: an
//!   escape in progress and at most [`MAX_PENDING_SPACE`] bytes of trailing
//!   white space), and every chunk is written out before the next is read;
//! * files are created only directly inside the chosen directory: the
//!   temporary file under a fixed hidden name pattern, the attachment under
//!   a [`safe_file_name`];
//! * nothing is ever overwritten: the temporary file is created with
//!   `create_new` and put in place with a hard link, which fails rather than
//!   replace an existing name (`name (1).ext`, `name (2).ext`… are tried
//!   next); where the file system has no hard links, the name is reserved
//!   with `create_new` and the temporary file renamed over that reservation;
//! * a part that does not arrive whole (connection lost, server error, disk
//!   full) leaves nothing behind: the temporary file is removed on drop
//!   unless [`PartFile::commit`] put it in place.

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::message::safe_file_name;

/// White space held back at most while waiting to see whether a
/// quoted-printable line ends (trailing white space is dropped, RFC 2045
/// §6.7 rule 3); longer runs are written out as data.
pub const MAX_PENDING_SPACE: usize = 1024;

/// A Content-Transfer-Encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// 7bit, 8bit, binary, or anything unknown: the bytes as they are.
    Identity,
    /// base64.
    Base64,
    /// quoted-printable.
    QuotedPrintable,
}

impl Encoding {
    /// From a header or BODYSTRUCTURE value (any case).
    pub fn from_name(name: &str) -> Encoding {
        match name.trim().to_ascii_lowercase().as_str() {
            "base64" => Encoding::Base64,
            "quoted-printable" => Encoding::QuotedPrintable,
            _ => Encoding::Identity,
        }
    }
}

/// Decodes a transfer encoding chunk by chunk. Lenient like mail readers
/// are: base64 skips characters outside its alphabet and stops at `=`;
/// quoted-printable keeps a malformed `=` escape as it is.
#[derive(Debug)]
pub struct Decoder {
    encoding: Encoding,
    // base64
    bits: u32,
    nbits: u32,
    ended: bool,
    // quoted-printable
    qp: Qp,
    space: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Qp {
    Text,
    /// After `=`.
    Equals,
    /// After `=` and one hex digit.
    Hex(u8),
    /// After `=` and white space: a soft line break may follow.
    EqualsSpace,
    /// After `=` CR.
    EqualsCr,
    /// After CR in text.
    Cr,
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

impl Decoder {
    /// A decoder for `encoding`.
    pub fn new(encoding: Encoding) -> Decoder {
        Decoder {
            encoding,
            bits: 0,
            nbits: 0,
            ended: false,
            qp: Qp::Text,
            space: Vec::new(),
        }
    }

    /// Decodes `input`, appending to `out`.
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) {
        match self.encoding {
            Encoding::Identity => out.extend_from_slice(input),
            Encoding::Base64 => self.base64(input, out),
            Encoding::QuotedPrintable => {
                for &b in input {
                    self.qp_byte(b, out);
                }
            }
        }
    }

    /// The end of the input: flushes what is held back.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.encoding == Encoding::QuotedPrintable {
            match self.qp {
                Qp::Equals | Qp::EqualsSpace => out.push(b'='),
                Qp::Hex(h) => out.extend_from_slice(&[b'=', h]),
                Qp::EqualsCr => out.extend_from_slice(b"=\r"),
                Qp::Cr => out.push(b'\r'),
                Qp::Text => {}
            }
            // Trailing white space at the very end is dropped like at a line end.
            self.space.clear();
            self.qp = Qp::Text;
        }
    }

    fn base64(&mut self, input: &[u8], out: &mut Vec<u8>) {
        for &c in input {
            if self.ended {
                return;
            }
            let v = match c {
                b'A'..=b'Z' => c - b'A',
                b'a'..=b'z' => c - b'a' + 26,
                b'0'..=b'9' => c - b'0' + 52,
                b'+' => 62,
                b'/' => 63,
                b'=' => {
                    self.ended = true;
                    continue;
                }
                _ => continue,
            };
            self.bits = (self.bits << 6) | u32::from(v);
            self.nbits += 6;
            if self.nbits >= 8 {
                self.nbits -= 8;
                out.push((self.bits >> self.nbits) as u8);
                self.bits &= (1 << self.nbits) - 1;
            }
        }
    }

    fn qp_byte(&mut self, b: u8, out: &mut Vec<u8>) {
        match self.qp {
            Qp::Equals => match b {
                b'\n' => self.qp = Qp::Text, // soft break (bare LF)
                b'\r' => self.qp = Qp::EqualsCr,
                b' ' | b'\t' => self.qp = Qp::EqualsSpace,
                _ if hex(b).is_some() => self.qp = Qp::Hex(b),
                _ => {
                    out.push(b'=');
                    self.qp = Qp::Text;
                    self.qp_byte(b, out);
                }
            },
            Qp::Hex(h) => {
                self.qp = Qp::Text;
                match (hex(h), hex(b)) {
                    (Some(hi), Some(lo)) => out.push(hi << 4 | lo),
                    _ => {
                        out.extend_from_slice(&[b'=', h]);
                        self.qp_byte(b, out);
                    }
                }
            }
            // `=` followed by trailing white space, then the line end: a
            // soft break whose padding a transport added.
            Qp::EqualsSpace => match b {
                b' ' | b'\t' => {}
                b'\r' => self.qp = Qp::EqualsCr,
                b'\n' => self.qp = Qp::Text,
                _ => {
                    out.push(b'=');
                    self.qp = Qp::Text;
                    self.qp_byte(b, out);
                }
            },
            Qp::EqualsCr => {
                self.qp = Qp::Text;
                if b != b'\n' {
                    out.extend_from_slice(b"=\r");
                    self.qp_byte(b, out);
                }
            }
            Qp::Cr => {
                self.qp = Qp::Text;
                if b == b'\n' {
                    // Hard line break: white space before it was padding.
                    self.space.clear();
                    out.extend_from_slice(b"\r\n");
                } else {
                    self.flush_space(out);
                    out.push(b'\r');
                    self.qp_byte(b, out);
                }
            }
            Qp::Text => match b {
                b'=' => {
                    self.flush_space(out);
                    self.qp = Qp::Equals;
                }
                b' ' | b'\t' => {
                    if self.space.len() >= MAX_PENDING_SPACE {
                        self.flush_space(out);
                    }
                    self.space.push(b);
                }
                b'\r' => self.qp = Qp::Cr,
                b'\n' => {
                    self.space.clear();
                    out.push(b'\n');
                }
                _ => {
                    self.flush_space(out);
                    out.push(b);
                }
            },
        }
    }

    fn flush_space(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.space);
    }
}

/// A part being written: decoded into a temporary file inside the target
/// directory, put in place by [`PartFile::commit`], removed when dropped
/// before that.
#[derive(Debug)]
pub struct PartFile {
    dir: PathBuf,
    temp: PathBuf,
    file: Option<File>,
    decoder: Decoder,
    scratch: Vec<u8>,
    written: u64,
}

impl PartFile {
    /// Creates the temporary file (`.mailroom-<random>.part`) in `dir`.
    pub fn create(dir: &Path, encoding: Encoding) -> Result<PartFile> {
        use rand::Rng as _;
        for _ in 0..16 {
            let temp = dir.join(format!(
                ".mailroom-{:016x}.part",
                rand::rng().random::<u64>()
            ));
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&temp)
            {
                Ok(file) => {
                    return Ok(PartFile {
                        dir: dir.to_path_buf(),
                        temp,
                        file: Some(file),
                        decoder: Decoder::new(encoding),
                        scratch: Vec::new(),
                        written: 0,
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(Error::File(format!(
                        "cannot create a file in {}: {e}",
                        dir.display()
                    )));
                }
            }
        }
        Err(Error::File(format!(
            "cannot create a temporary file in {}",
            dir.display()
        )))
    }

    /// Decodes and writes one chunk of the encoded part.
    pub fn write(&mut self, encoded: &[u8]) -> Result<()> {
        self.scratch.clear();
        self.decoder.push(encoded, &mut self.scratch);
        self.flush_scratch()
    }

    fn flush_scratch(&mut self) -> Result<()> {
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| Error::File("the part file is closed".into()))?;
        file.write_all(&self.scratch)
            .map_err(|e| Error::File(format!("cannot write {}: {e}", self.temp.display())))?;
        self.written += self.scratch.len() as u64;
        self.scratch.clear();
        Ok(())
    }

    /// Decoded bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Finishes the decoding, syncs the file and gives it the sanitised
    /// `name` (or `name (1).ext`… when taken). Returns the path and the
    /// decoded size.
    pub fn commit(mut self, name: &str) -> Result<(PathBuf, u64)> {
        self.scratch.clear();
        self.decoder.finish(&mut self.scratch);
        self.flush_scratch()?;
        let file = self.file.take().expect("open until commit");
        file.sync_all()
            .map_err(|e| Error::File(format!("cannot write {}: {e}", self.temp.display())))?;
        drop(file);
        let path = place(&self.dir, name, |candidate| {
            match std::fs::hard_link(&self.temp, candidate) {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
                // No hard links here (some file systems): reserve the name,
                // then rename over the reservation.
                Err(_) => match std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(candidate)
                {
                    Ok(_) => std::fs::rename(&self.temp, candidate).map(|_| true),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
                    Err(e) => Err(e),
                },
            }
        })?;
        let _ = std::fs::remove_file(&self.temp);
        Ok((path, self.written))
    }
}

impl Drop for PartFile {
    fn drop(&mut self) {
        // After a successful hard link this removes only the temporary name.
        let _ = std::fs::remove_file(&self.temp);
    }
}

/// Tries `name`, `name (1).ext`, `name (2).ext`… inside `dir` with
/// `try_name`, which says whether it took the name (`false`: taken).
pub(crate) fn place(
    dir: &Path,
    name: &str,
    mut try_name: impl FnMut(&Path) -> std::io::Result<bool>,
) -> Result<PathBuf> {
    let name = safe_file_name(name);
    let (stem, ext) = match name.rsplit_once('.') {
        Some((s, e)) if !s.is_empty() => (s.to_string(), format!(".{e}")),
        _ => (name.clone(), String::new()),
    };
    for n in 0..1000 {
        let candidate = if n == 0 {
            name.clone()
        } else {
            format!("{stem} ({n}){ext}")
        };
        let path = dir.join(&candidate);
        match try_name(&path) {
            Ok(true) => return Ok(path),
            Ok(false) => continue,
            Err(e) => {
                return Err(Error::File(format!(
                    "cannot create {}: {e}",
                    path.display()
                )));
            }
        }
    }
    Err(Error::File(format!(
        "{}: too many files named like {name:?}",
        dir.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    fn decode_in_chunks(encoding: Encoding, input: &[u8], chunk: usize) -> Vec<u8> {
        let mut d = Decoder::new(encoding);
        let mut out = Vec::new();
        for c in input.chunks(chunk.max(1)) {
            d.push(c, &mut out);
        }
        d.finish(&mut out);
        out
    }

    #[test]
    fn base64_in_any_chunking() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 31 % 256) as u8).collect();
        let mut encoded = base64::engine::general_purpose::STANDARD
            .encode(&data)
            .into_bytes();
        // Folded at 76 like MIME does.
        let folded: Vec<u8> = encoded
            .chunks(76)
            .flat_map(|l| [l, b"\r\n"].concat())
            .collect();
        for chunk in [1, 2, 3, 5, 77, 4096] {
            assert_eq!(decode_in_chunks(Encoding::Base64, &folded, chunk), data);
        }
        encoded.extend_from_slice(b"\r\n!!garbage after padding");
        assert_eq!(decode_in_chunks(Encoding::Base64, &encoded, 7), data);
    }

    #[test]
    fn quoted_printable_in_any_chunking() {
        let cases: [(&[u8], &[u8]); 7] = [
            (b"Gr=C3=BC=C3=9Fe", "Grüße".as_bytes()),
            (b"soft=\r\nbreak", b"softbreak"),
            (b"soft= \t\r\nbreak", b"softbreak"),
            (b"trailing   \r\nspace", b"trailing\r\nspace"),
            (b"inner  space", b"inner  space"),
            (b"bad =ZZ and =4", b"bad =ZZ and =4"),
            (b"bare lf=\nsoft\nhard", b"bare lfsoft\nhard"),
        ];
        for (input, expected) in cases {
            for chunk in [1, 2, 3, 100] {
                assert_eq!(
                    decode_in_chunks(Encoding::QuotedPrintable, input, chunk),
                    expected,
                    "{:?} in chunks of {chunk}",
                    String::from_utf8_lossy(input)
                );
            }
        }
        // An endless run of spaces is not held in memory.
        let mut d = Decoder::new(Encoding::QuotedPrintable);
        let mut out = Vec::new();
        d.push(&vec![b' '; 100_000], &mut out);
        assert!(d.space.len() <= MAX_PENDING_SPACE);
        assert!(out.len() >= 100_000 - MAX_PENDING_SPACE);
    }

    #[test]
    fn part_files_appear_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("x.bin"), b"old").unwrap();
        let mut part = PartFile::create(dir.path(), Encoding::Base64).unwrap();
        part.write(b"AAEC").unwrap();
        part.write(b"/w==").unwrap();
        let (path, size) = part.commit("../x.bin").unwrap();
        assert_eq!(path, dir.path().join("x (1).bin"));
        assert_eq!(size, 4);
        assert_eq!(std::fs::read(&path).unwrap(), [0, 1, 2, 255]);
        assert_eq!(std::fs::read(dir.path().join("x.bin")).unwrap(), b"old");
        // Abandoned: nothing left behind.
        let mut part = PartFile::create(dir.path(), Encoding::Identity).unwrap();
        part.write(b"half").unwrap();
        drop(part);
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["x (1).bin", "x.bin"]);
    }
}
