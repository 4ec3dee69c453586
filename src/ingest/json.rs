//! JSON exports: an array of records (possibly under a path such as `data`), or NDJSON, one record per line.
//!
//! Both stream: memory follows one record, never the document. An array is read twice: once to check that
//! the whole document is JSON and holds the records where the mapping says (so a damaged or half-uploaded
//! file gives nothing, as before), then record by record through a small channel. A record or string over
//! `MAX_JSON_RECORD_BYTES` stops the file (array) or quarantines the line (NDJSON) with a reason.

use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::{SyncSender, sync_channel};

use serde::de::{DeserializeSeed, Error as _, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use super::limits::MAX_JSON_RECORD_BYTES;
use super::{Header, IngestError, Row, Values, encoding};

type RowIter = Box<dyn Iterator<Item = Result<Row, IngestError>> + Send>;

/// Records read ahead of the mapper.
const READ_AHEAD: usize = 256;

/// Reads a JSON document whose records are an array at the top level or at `records` (a dotted path).
pub(super) fn open_array(path: &Path, records: Option<&str>) -> Result<(Option<Arc<Header>>, RowIter), IngestError> {
    let bad = |message: String| IngestError::Malformed { path: path.to_path_buf(), message };
    let parts: Vec<String> = records.map(|p| p.split('.').map(String::from).collect()).unwrap_or_default();
    walk(path, records, &parts, None).map_err(bad)?;

    let (tx, rx) = sync_channel::<Result<Value, String>>(READ_AHEAD);
    let owned = (path.to_path_buf(), records.map(String::from));
    std::thread::Builder::new()
        .name("json-reader".into())
        .spawn(move || {
            if let Err(e) = walk(&owned.0, owned.1.as_deref(), &parts, Some(&tx)) {
                let _ = tx.send(Err(e));
            }
        })
        .map_err(|e| bad(format!("cannot start the reader: {e}")))?;
    let path = path.to_path_buf();
    let mut number = 0u64;
    let rows = std::iter::from_fn(move || {
        let v = match rx.recv().ok()? {
            Ok(v) => v,
            Err(message) => return Some(Err(IngestError::Malformed { path: path.clone(), message })),
        };
        number += 1;
        let values = match v {
            Value::Object(_) => Values::Json(v),
            other => Values::Unreadable {
                raw: other.to_string(),
                reason: "the record is not a JSON object; fix the record at the source and re-send it".into(),
            },
        };
        Some(Ok(Row { number, values, extra_cells: 0 }))
    });
    Ok((None, Box::new(rows)))
}

/// Reads the document once; sends each record when `tx` is given, else only checks.
fn walk(
    path: &Path,
    records: Option<&str>,
    parts: &[String],
    tx: Option<&SyncSender<Result<Value, String>>>,
) -> Result<(), String> {
    let text = encoding::open_text(path).map_err(|e| format!("cannot read the file: {e}"))?;
    let guard = Guard::new(BufReader::with_capacity(64 * 1024, text), parts.len() + 1);
    let mut de = serde_json::Deserializer::from_reader(guard);
    let mut state = WalkState::default();
    let result = Walk { parts, tx, state: &mut state }.deserialize(&mut de).and_then(|()| de.end());
    if state.stopped {
        return Ok(()); // the mapper stopped reading
    }
    result.map_err(|e| {
        if e.is_io() {
            e.to_string()
        } else {
            format!("not valid JSON at line {}, column {}: {e}", e.line(), e.column())
        }
    })?;
    let at = records.map_or("the top level".to_string(), |p| format!("\"{p}\""));
    if state.missing {
        return Err(format!("no \"{}\" in the document; check `[source] records`", records.unwrap_or_default()));
    }
    if !state.found {
        return Err(format!("expected an array of records at {at}"));
    }
    Ok(())
}

#[derive(Default)]
struct WalkState {
    /// The records array was reached.
    found: bool,
    /// A step of the path was not in the document.
    missing: bool,
    /// The receiver hung up.
    stopped: bool,
}

/// Follows the records path down the document, ignoring (without keeping) everything beside it.
struct Walk<'a> {
    parts: &'a [String],
    tx: Option<&'a SyncSender<Result<Value, String>>>,
    state: &'a mut WalkState,
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

/// Anything but what the path expects: the records are not there.
macro_rules! not_here {
    ($($name:ident: $t:ty),*) => {$(
        fn $name<E: serde::de::Error>(self, _: $t) -> Result<(), E> {
            self.state.missing |= !self.parts.is_empty();
            Ok(())
        }
    )*};
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON document")
    }

    not_here!(visit_bool: bool, visit_i64: i64, visit_u64: u64, visit_f64: f64, visit_str: &str);

    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        self.state.missing |= !self.parts.is_empty();
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Walk { parts, tx, state } = self;
        let Some((first, rest)) = parts.split_first() else {
            // The records.
            state.found = true;
            match tx {
                None => while seq.next_element::<IgnoredAny>()?.is_some() {},
                Some(tx) => {
                    while let Some(v) = seq.next_element::<Value>()? {
                        if tx.send(Ok(v)).is_err() {
                            state.stopped = true;
                            return Err(A::Error::custom("the reader was stopped"));
                        }
                    }
                }
            }
            return Ok(());
        };
        let wanted = first.parse::<usize>().ok();
        let mut reached = false;
        let mut i = 0usize;
        loop {
            if Some(i) == wanted {
                match seq.next_element_seed(Walk { parts: rest, tx, state: &mut *state })? {
                    Some(()) => reached = true,
                    None => break,
                }
            } else if seq.next_element::<IgnoredAny>()?.is_none() {
                break;
            }
            i += 1;
        }
        state.missing |= !reached;
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Walk { parts, tx, state } = self;
        let Some((first, rest)) = parts.split_first() else {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            return Ok(()); // an object where the records should be: `found` stays false
        };
        let mut reached = false;
        while let Some(key) = map.next_key::<String>()? {
            if !reached && key == *first {
                map.next_value_seed(Walk { parts: rest, tx, state: &mut *state })?;
                reached = true;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        state.missing |= !reached;
        Ok(())
    }
}

/// Watches the bytes on their way to the parser: no string, and no record (an element inside the records
/// array, which sits `array_depth` containers deep), may pass `MAX_JSON_RECORD_BYTES`. What it refuses, the
/// parser never buffers.
struct Guard<R> {
    inner: R,
    array_depth: usize,
    depth: usize,
    in_string: bool,
    escaped: bool,
    string_bytes: usize,
    record_bytes: usize,
    line: u64,
}

impl<R> Guard<R> {
    fn new(inner: R, array_depth: usize) -> Self {
        Self {
            inner,
            array_depth,
            depth: 0,
            in_string: false,
            escaped: false,
            string_bytes: 0,
            record_bytes: 0,
            line: 1,
        }
    }

    fn over(&self, what: &str) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "line {}: {what} is longer than {} KiB, the limit for one record; the export is damaged, or holds something that is not a record (an attachment?): fix it at the source",
                self.line,
                MAX_JSON_RECORD_BYTES / 1024
            ),
        )
    }
}

impl<R: Read> Read for Guard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        for &b in &buf[..n] {
            if b == b'\n' {
                self.line += 1;
            }
            if self.depth > self.array_depth {
                self.record_bytes += 1;
                if self.record_bytes > MAX_JSON_RECORD_BYTES {
                    return Err(self.over("a record"));
                }
            }
            if self.in_string {
                self.string_bytes += 1;
                if self.string_bytes > MAX_JSON_RECORD_BYTES {
                    return Err(self.over("a string"));
                }
                match (self.escaped, b) {
                    (true, _) => self.escaped = false,
                    (false, b'\\') => self.escaped = true,
                    (false, b'"') => self.in_string = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => {
                    self.in_string = true;
                    self.string_bytes = 0;
                }
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => {
                    self.depth = self.depth.saturating_sub(1);
                    if self.depth <= self.array_depth {
                        self.record_bytes = 0;
                    }
                }
                _ => {}
            }
        }
        Ok(n)
    }
}

/// Reads NDJSON as a stream: one record per line; blank lines are skipped, a bad or over-long line becomes an
/// unreadable row (an over-long line is not kept: only its length is).
pub(super) fn open_lines(path: &Path) -> Result<(Option<Arc<Header>>, RowIter), IngestError> {
    let io = |source| IngestError::Io { path: path.to_path_buf(), source };
    let mut reader = BufReader::with_capacity(64 * 1024, encoding::open_text(path).map_err(io)?);
    let path = path.to_path_buf();
    let mut number = 0u64;
    let mut line = Vec::new();
    let iter = std::iter::from_fn(move || {
        loop {
            number += 1;
            let length = match read_line(&mut reader, &mut line) {
                Ok(None) => return None,
                Ok(Some(length)) => length,
                Err(source) => return Some(Err(IngestError::Io { path: path.clone(), source })),
            };
            if length > MAX_JSON_RECORD_BYTES {
                let reason = format!(
                    "the line is {length} bytes long, over the limit of {} KiB for one record, and was not kept; fix it at the source",
                    MAX_JSON_RECORD_BYTES / 1024
                );
                return Some(Ok(Row {
                    number,
                    values: Values::Unreadable { raw: String::new(), reason },
                    extra_cells: 0,
                }));
            }
            let text = String::from_utf8_lossy(&line);
            if text.trim().is_empty() {
                continue;
            }
            let values = match serde_json::from_str::<Value>(&text) {
                Ok(v @ Value::Object(_)) => Values::Json(v),
                Ok(_) => Values::Unreadable {
                    raw: text.into_owned(),
                    reason: "the line is not a JSON object; fix the record at the source and re-send it".into(),
                },
                Err(e) => Values::Unreadable {
                    raw: text.into_owned(),
                    reason: format!(
                        "not valid JSON at column {}: {e}; fix the record at the source and re-send it",
                        e.column()
                    ),
                },
            };
            return Some(Ok(Row { number, values, extra_cells: 0 }));
        }
    });
    Ok((None, Box::new(iter)))
}

/// Reads one line (without its end) into `out`, keeping at most `MAX_JSON_RECORD_BYTES` of it; returns the
/// line's full length, or `None` at the end of the file.
fn read_line(reader: &mut impl BufRead, out: &mut Vec<u8>) -> io::Result<Option<usize>> {
    out.clear();
    let mut length = 0usize;
    let mut any = false;
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok(any.then_some(length));
        }
        any = true;
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i, true),
            None => (buf.len(), false),
        };
        length += take;
        if length <= MAX_JSON_RECORD_BYTES {
            out.extend_from_slice(&buf[..take]);
        }
        reader.consume(take + usize::from(done));
        if done {
            if out.last() == Some(&b'\r') {
                out.pop();
            }
            return Ok(Some(length));
        }
    }
}
