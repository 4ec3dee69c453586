//! Text encodings partners' exports arrive in: UTF-8 with or without a byte order mark, UTF-16 (Excel's
//! "Unicode text"), and Windows-1252 (Excel's "CSV" on a Windows machine in the UK).

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;

use encoding_rs::{Decoder, Encoding, UTF_8, UTF_16BE, UTF_16LE, WINDOWS_1252};

/// Picks the encoding of a file: a byte order mark wins; otherwise UTF-8 unless the file is mostly not UTF-8, in
/// which case Windows-1252. One stray byte in a UTF-8 file must not turn every "Brontë" into "BrontÃ«": a file
/// whose valid multi-byte sequences are not far outnumbered by invalid bytes stays UTF-8, and the CSV reader
/// quarantines the rows that hold the invalid bytes. The check streams, so a large file costs time, not memory.
/// Every fallback is logged with the file and the encoding chosen.
pub fn detect(path: &Path) -> io::Result<&'static Encoding> {
    let mut f = BufReader::with_capacity(64 * 1024, File::open(path)?);
    let mut head = [0u8; 3];
    let n = read_up_to(&mut f, &mut head)?;
    if let Some((enc, _)) = Encoding::for_bom(&head[..n]) {
        return Ok(enc);
    }
    let mut scan = Utf8Scan::default();
    let mut carry: Vec<u8> = head[..n].to_vec();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let read = f.read(&mut buf)?;
        carry.extend_from_slice(&buf[..read]);
        let kept = scan.feed(&carry, read == 0);
        carry.drain(..carry.len() - kept);
        if read == 0 {
            break;
        }
    }
    let enc = scan.choose();
    let file = path.display();
    if enc == WINDOWS_1252 {
        tracing::warn!(
            %file,
            encoding = "windows-1252",
            invalid_utf8_bytes = scan.invalid,
            "File is not UTF-8; reading it as Windows-1252."
        );
    } else if scan.invalid > 0 {
        tracing::warn!(
            %file,
            encoding = "utf-8",
            invalid_utf8_bytes = scan.invalid,
            "File is UTF-8 apart from a few bytes; reading it as UTF-8 and quarantining the rows that hold them."
        );
    }
    Ok(enc)
}

/// Counts of what a UTF-8 validation found.
#[derive(Debug, Default, Clone, Copy)]
pub struct Utf8Scan {
    /// Valid sequences of two to four bytes: the accented letters a UTF-8 export holds.
    pub multi_byte: u64,
    /// Bytes that are not part of any valid sequence.
    pub invalid: u64,
}

impl Utf8Scan {
    /// Scans `bytes`; returns how many bytes at the end were left unscanned (an incomplete sequence that the next
    /// chunk may finish). At the end of input nothing is left: an incomplete sequence counts as invalid.
    fn feed(&mut self, bytes: &[u8], last: bool) -> usize {
        let mut rest = bytes;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    self.count_multi(s);
                    return 0;
                }
                Err(e) => {
                    let (good, bad) = rest.split_at(e.valid_up_to());
                    self.count_multi(std::str::from_utf8(good).unwrap_or_default());
                    match e.error_len() {
                        Some(len) => {
                            self.invalid += len as u64;
                            rest = &bad[len..];
                        }
                        None if last => {
                            self.invalid += bad.len() as u64;
                            return 0;
                        }
                        None => return bad.len(),
                    }
                }
            }
        }
    }

    fn count_multi(&mut self, s: &str) {
        self.multi_byte += s.bytes().filter(|&b| b >= 0xC0).count() as u64;
    }

    /// UTF-8 unless invalid bytes outnumber valid multi-byte sequences four to one (a Windows-1252 file has
    /// high bytes and almost never a valid sequence).
    pub fn choose(&self) -> &'static Encoding {
        if self.invalid == 0 || self.multi_byte.saturating_mul(4) >= self.invalid { UTF_8 } else { WINDOWS_1252 }
    }
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// A reader that turns any supported encoding into UTF-8, dropping a byte order mark.
pub struct Utf8Reader<R> {
    inner: R,
    decoder: Decoder,
    in_buf: Vec<u8>,
    in_len: usize,
    in_pos: usize,
    out_buf: Vec<u8>,
    out_pos: usize,
    out_len: usize,
    eof: bool,
}

impl<R: Read> Utf8Reader<R> {
    pub fn new(inner: R, encoding: &'static Encoding) -> Self {
        Self {
            inner,
            decoder: encoding.new_decoder_with_bom_removal(),
            in_buf: vec![0; 32 * 1024],
            in_len: 0,
            in_pos: 0,
            out_buf: vec![0; 96 * 1024 + 16],
            out_pos: 0,
            out_len: 0,
            eof: false,
        }
    }
}

impl<R: Read> Read for Utf8Reader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.out_pos == self.out_len {
            if self.eof && self.in_pos == self.in_len {
                return Ok(0);
            }
            if self.in_pos == self.in_len && !self.eof {
                self.in_len = self.inner.read(&mut self.in_buf)?;
                self.in_pos = 0;
                self.eof = self.in_len == 0;
            }
            let (_, read, written, _) =
                self.decoder.decode_to_utf8(&self.in_buf[self.in_pos..self.in_len], &mut self.out_buf, self.eof);
            self.in_pos += read;
            self.out_pos = 0;
            self.out_len = written;
            if self.eof && written == 0 {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.out_len - self.out_pos);
        buf[..n].copy_from_slice(&self.out_buf[self.out_pos..self.out_pos + n]);
        self.out_pos += n;
        Ok(n)
    }
}

/// Opens a text file for a reader that checks UTF-8 itself: a UTF-8 file comes through byte for byte (without
/// its byte order mark), so invalid bytes reach the reader, which can name the row and column that hold them;
/// any other encoding is decoded to UTF-8.
pub fn open_checked(path: &Path) -> io::Result<Box<dyn Read + Send>> {
    let enc = detect(path)?;
    let mut file = File::open(path)?;
    if enc != UTF_8 {
        return Ok(Box::new(Utf8Reader::new(file, enc)));
    }
    let mut head = [0u8; 3];
    let n = read_up_to(&mut file, &mut head)?;
    let skip = if head[..n] == [0xEF, 0xBB, 0xBF] { 3 } else { 0 };
    Ok(Box::new(io::Cursor::new(head[skip..n].to_vec()).chain(file)))
}

/// Opens a text file as a UTF-8 stream, whatever its encoding.
pub fn open_text(path: &Path) -> io::Result<Box<dyn Read + Send>> {
    let enc = detect(path)?;
    let file = File::open(path)?;
    if enc == UTF_8 {
        // Valid UTF-8: only a BOM needs removing, which the decoder does cheaply too.
        return Ok(Box::new(Utf8Reader::new(file, UTF_8)));
    }
    let _ = (UTF_16LE, UTF_16BE); // reached through Encoding::for_bom
    Ok(Box::new(Utf8Reader::new(file, enc)))
}
