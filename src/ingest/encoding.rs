//! Text encodings partners' exports arrive in: UTF-8 with or without a byte order mark, UTF-16 (Excel's
//! "Unicode text"), and Windows-1252 (Excel's "CSV" on a Windows machine in the UK).

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;

use encoding_rs::{Decoder, Encoding, UTF_8, UTF_16BE, UTF_16LE, WINDOWS_1252};

/// Picks the encoding of a file: a byte order mark wins; otherwise UTF-8 if the whole file is valid UTF-8,
/// else Windows-1252. The check streams, so a large file costs time, not memory.
pub fn detect(path: &Path) -> io::Result<&'static Encoding> {
    let mut f = BufReader::with_capacity(64 * 1024, File::open(path)?);
    let mut head = [0u8; 3];
    let n = read_up_to(&mut f, &mut head)?;
    if let Some((enc, _)) = Encoding::for_bom(&head[..n]) {
        return Ok(enc);
    }
    // Validate as a stream; an incomplete sequence at a chunk boundary is carried into the next chunk.
    let mut carry: Vec<u8> = head[..n].to_vec();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let read = f.read(&mut buf)?;
        carry.extend_from_slice(&buf[..read]);
        match std::str::from_utf8(&carry) {
            Ok(_) => carry.clear(),
            Err(e) if e.error_len().is_none() && read > 0 => {
                let tail = carry.split_off(e.valid_up_to());
                carry = tail;
            }
            Err(_) => return Ok(WINDOWS_1252),
        }
        if read == 0 {
            return Ok(if carry.is_empty() { UTF_8 } else { WINDOWS_1252 });
        }
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
