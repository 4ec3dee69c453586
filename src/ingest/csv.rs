//! CSV exports: UTF-8 (with or without a BOM), UTF-16 and Windows-1252, CRLF or LF, quoted newlines, ragged rows.
//!
//! The parser is our own small RFC 4180 reader over physical lines, because it must notice what a general CSV
//! parser accepts silently. One quote left open (`"4 Heslington Lane` without its closing quote) makes the rest
//! of the file one cell: the row would map with other people's data inside it and the people after it would
//! vanish. So a quoted cell that runs on over a line shaped like a row, past the cell limit or to the end of the
//! file is damage: the row that opened it is kept aside, the lines after it are read again as rows of their own,
//! and every one of them up to where the open quote would have closed is kept aside too (it cannot be trusted:
//! it may be text inside a real cell). Every physical line ends up in exactly one row, so rows read always add
//! up to the rows a person sees, and the reader checks that at the end.
//!
//! A UTF-8 file comes through as bytes and each cell is checked here, so a stray invalid byte quarantines its
//! row (naming the column) instead of turning the whole file into Windows-1252.

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Header, IngestError, Row, Values, encoding};

type RowIter = Box<dyn Iterator<Item = Result<Row, IngestError>> + Send>;

/// The longest cell read, in characters: a spreadsheet cell's own limit, the same as XLSX, so a long free-text
/// column the mappings never read (a contact's notes) does not quarantine its row. Mapped values have tighter
/// limits (`mapping::engine::MAX_FIELD_CHARS` and per transform); a broken quote is caught by the shape of the
/// lines it swallows long before this. A longer cell quarantines its row.
pub const MAX_CELL_CHARS: usize = super::limits::MAX_VALUE_CHARS;
/// The longest physical line kept, in bytes; the rest of a longer line is skipped (and its row quarantined), so
/// a file that is one enormous line costs no more memory than this.
const MAX_LINE_BYTES: usize = 1 << 20;
/// Cells beyond the header's width that are kept (counted, not stored, after that).
const MAX_EXTRA_CELLS: usize = 256;
/// Columns a header may have.
const MAX_COLUMNS: usize = 4096;

pub(super) fn open(path: &Path, delimiter: Option<u8>) -> Result<(Option<Arc<Header>>, RowIter), IngestError> {
    let io = |source| IngestError::Io { path: path.to_path_buf(), source };
    let text = encoding::open_checked(path).map_err(io)?;
    let mut buffered = BufReader::with_capacity(64 * 1024, text);
    let delimiter = match delimiter {
        Some(d) => d,
        None => sniff_delimiter(buffered.fill_buf().map_err(io)?),
    };
    let mut parser = Parser {
        lines: Lines { src: buffered, pending: VecDeque::new(), read: 0, naive: None, delimiter },
        delimiter,
        width: MAX_COLUMNS,
        accounted: 0,
        row: 0,
    };
    let first = match parser.record().map_err(io)? {
        Some(Record::Fields(f)) if !f.blank() => f,
        None | Some(Record::Fields(_)) => return Err(IngestError::NoHeader { path: path.to_path_buf() }),
        Some(Record::Damaged(_)) => {
            return Err(IngestError::Malformed {
                path: path.to_path_buf(),
                message: "row 1 (the header) opens a quote that is never closed; fix the header row".into(),
            });
        }
    };
    let names: Vec<String> =
        first.cells.iter().map(|c| String::from_utf8_lossy(c).trim_start_matches('\u{feff}').to_string()).collect();
    let header = Arc::new(Header { names });
    parser.width = header.names.len();
    let names = Arc::clone(&header);
    let path: PathBuf = path.to_path_buf();
    let mut done = false;
    let iter = std::iter::from_fn(move || {
        while !done {
            let record = match parser.record() {
                Ok(r) => r,
                Err(e) => {
                    done = true;
                    return Some(Err(IngestError::Malformed { path: path.clone(), message: e.to_string() }));
                }
            };
            let Some(record) = record else {
                done = true;
                // Every physical line read must belong to the header, a row or a blank line.
                if parser.accounted != parser.lines.read {
                    return Some(Err(IngestError::Malformed {
                        path: path.clone(),
                        message: format!(
                            "{} physical line(s) read but {} accounted for in rows; the file is not mapped",
                            parser.lines.read, parser.accounted
                        ),
                    }));
                }
                return None;
            };
            match record {
                // A wholly empty line is not a record; spreadsheets leave them at the end.
                Record::Fields(f) if f.blank() => continue,
                record => return Some(Ok(to_row(record, parser.row, &names))),
            }
        }
        None
    });
    Ok((Some(header), Box::new(iter)))
}

/// Turns a parsed record into a row: cells when it can be trusted, else an unreadable row whose reason names the
/// column and what to do, never a value.
fn to_row(record: Record, number: u64, header: &Header) -> Row {
    let column = |i: usize| match header.names.get(i) {
        Some(name) => format!("column \"{name}\" ({})", i + 1),
        None => format!("column {}", i + 1),
    };
    // Cells as text for the quarantine: invalid bytes replaced, each cut at the cell limit.
    let untrusted = |cells: &[Vec<u8>], reason: String| {
        let mut cells: Vec<String> =
            cells.iter().map(|c| String::from_utf8_lossy(c).chars().take(MAX_CELL_CHARS).collect::<String>()).collect();
        if cells.len() < header.names.len() {
            cells.resize(header.names.len(), String::new());
        }
        Row { number, values: Values::Untrusted { cells, reason }, extra_cells: 0 }
    };
    let f = match record {
        Record::Damaged(d) => {
            let why = match d.why {
                Damage::RowShaped => "the next line is shaped like a row",
                Damage::TooLong => "the cell runs past the cell limit",
                Damage::EndOfFile => "still open at the end of the file",
            };
            return untrusted(
                &d.cells,
                format!(
                    "{} opens a quote that is not closed ({why}); the rows it would have swallowed are kept aside \
                     too; close the quote at the source and re-export",
                    column(d.column)
                ),
            );
        }
        Record::Fields(f) => f,
    };
    if let Some(origin) = f.swallowed {
        return untrusted(
            &f.cells,
            format!(
                "this row lies inside the quote left open on row {} ({}), so it cannot be trusted; fix row {} at the \
                 source and re-export",
                origin.row,
                column(origin.column),
                origin.row
            ),
        );
    }
    if f.truncated {
        return untrusted(
            &f.cells,
            format!("the row's line is longer than {MAX_LINE_BYTES} bytes: the export is damaged; re-export it"),
        );
    }
    let mut cells = Vec::with_capacity(f.cells.len());
    let mut bad_utf8 = Vec::new();
    let mut too_long = Vec::new();
    for (i, c) in f.cells.iter().enumerate() {
        match std::str::from_utf8(c) {
            Ok(s) if s.chars().count() > MAX_CELL_CHARS => too_long.push(column(i)),
            Ok(s) => cells.push(s.to_string()),
            Err(_) => bad_utf8.push(column(i)),
        }
    }
    if !bad_utf8.is_empty() {
        return untrusted(
            &f.cells,
            format!(
                "invalid UTF-8 in {}: the file is UTF-8 apart from a few bytes; re-export it as UTF-8",
                bad_utf8.join(", ")
            ),
        );
    }
    if !too_long.is_empty() {
        return untrusted(
            &f.cells,
            format!(
                "{} holds more than {MAX_CELL_CHARS} characters, the limit for one cell; check the export (a broken \
                 quote or a pasted document?) and correct the source",
                too_long.join(", ")
            ),
        );
    }
    let width = header.names.len();
    let extra_cells = f.dropped_cells + cells.iter().skip(width).filter(|c| !c.trim().is_empty()).count();
    if cells.len() < width {
        cells.resize(width, String::new());
    } else if extra_cells == 0 {
        cells.truncate(width);
    }
    Row { number, values: Values::Cells(cells), extra_cells }
}

/// Where an open quote that swallowed rows began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Origin {
    row: u64,
    column: usize,
}

/// One physical line: up to and including its `\n` (the last line may have none).
struct Line {
    bytes: Vec<u8>,
    /// Longer than `MAX_LINE_BYTES`; the rest was skipped.
    truncated: bool,
    /// Decided when the line is first read after damage: inside the open quote (and whose), or not.
    swallowed: Option<Option<Origin>>,
}

/// The file's physical lines, with lines given back after damage read again first.
struct Lines {
    src: BufReader<Box<dyn Read + Send>>,
    pending: VecDeque<Line>,
    /// Physical lines read from the file.
    read: u64,
    /// After damage: how a plain CSV reader would have gone on, still inside the open quote, so we know where the
    /// swallowed stretch ends.
    naive: Option<(Naive, Origin)>,
    delimiter: u8,
}

impl Lines {
    fn next(&mut self) -> io::Result<Option<Line>> {
        let mut line = match self.pending.pop_front() {
            Some(l) => l,
            None => {
                let mut bytes = Vec::new();
                let (consumed, truncated) = read_line_capped(&mut self.src, &mut bytes, MAX_LINE_BYTES)?;
                if consumed == 0 {
                    return Ok(None);
                }
                self.read += 1;
                Line { bytes, truncated, swallowed: None }
            }
        };
        if line.swallowed.is_none() {
            line.swallowed = Some(match &mut self.naive {
                Some((naive, origin)) => {
                    let origin = *origin;
                    if naive.feed(&line.bytes, self.delimiter) {
                        self.naive = None;
                    }
                    Some(origin)
                }
                None => None,
            });
        }
        Ok(Some(line))
    }
}

/// Reads one line into `buf`, keeping at most `max` bytes; returns the bytes consumed and whether some were dropped.
fn read_line_capped(src: &mut impl BufRead, buf: &mut Vec<u8>, max: usize) -> io::Result<(usize, bool)> {
    let mut consumed = 0;
    let mut truncated = false;
    loop {
        let chunk = src.fill_buf()?;
        if chunk.is_empty() {
            return Ok((consumed, truncated));
        }
        let (take, end) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        let room = max.saturating_sub(buf.len());
        if take > room {
            truncated = true;
        }
        buf.extend_from_slice(&chunk[..take.min(room)]);
        src.consume(take);
        consumed += take;
        if end {
            if truncated && buf.last() != Some(&b'\n') {
                buf.push(b'\n');
            }
            return Ok((consumed, truncated));
        }
    }
}

/// The states of a CSV field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Start,
    Unquoted,
    Quoted,
    /// A quote inside a quoted field: the end of the field, or the first of a doubled quote.
    QuoteInQuoted,
}

/// A plain CSV reader's view, fed line by line; used only to find where an open quote would have closed.
struct Naive(State);

impl Naive {
    /// True once the record it is in has ended (at a line break outside quotes, or at the end of the file).
    fn feed(&mut self, line: &[u8], delimiter: u8) -> bool {
        for &b in line {
            self.0 = match (self.0, b) {
                (State::Quoted, b'"') => State::QuoteInQuoted,
                (State::Quoted, _) => State::Quoted,
                (State::QuoteInQuoted, b'"') => State::Quoted,
                (State::Start, b'"') => State::Quoted,
                (_, b'\n') => return true,
                (_, d) if d == delimiter => State::Start,
                _ => State::Unquoted,
            };
        }
        !line.ends_with(b"\n") && self.0 != State::Quoted
    }
}

enum Damage {
    RowShaped,
    TooLong,
    EndOfFile,
}

struct Damaged {
    /// The cells of the line that opened the quote, the open cell cut at the line's end (for the quarantine, which
    /// keeps what it holds, and for the record's key).
    cells: Vec<Vec<u8>>,
    column: usize,
    why: Damage,
}

struct Fields {
    cells: Vec<Vec<u8>>,
    /// Non-empty cells beyond `MAX_EXTRA_CELLS` that were counted, not kept.
    dropped_cells: usize,
    truncated: bool,
    swallowed: Option<Origin>,
}

impl Fields {
    fn blank(&self) -> bool {
        self.dropped_cells == 0 && self.cells.iter().all(|c| c.iter().all(u8::is_ascii_whitespace))
    }
}

enum Record {
    Fields(Fields),
    Damaged(Damaged),
}

struct Parser {
    lines: Lines,
    delimiter: u8,
    /// The header's width (a generous cap until the header is read).
    width: usize,
    /// Physical lines that belong to a record returned so far.
    accounted: u64,
    /// The spreadsheet row of the last record returned (the header is row 1; a blank line takes a number too).
    row: u64,
}

/// The cells a damaged record keeps: those the first line completed, and the open cell up to the first line's end.
fn first_line_cells(cells: &[Vec<u8>], cur: &[u8], (complete, open): (usize, usize)) -> Vec<Vec<u8>> {
    let mut kept: Vec<Vec<u8>> = cells[..complete.min(cells.len())].to_vec();
    let mut partial = cur[..open.min(cur.len())].to_vec();
    while partial.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        partial.pop();
    }
    kept.push(partial);
    kept
}

/// Ends a cell, keeping it unless the row already has more cells than are kept.
fn end_cell(cells: &mut Vec<Vec<u8>>, cur: &mut Vec<u8>, keep: usize, dropped: &mut usize) {
    let cell = std::mem::take(cur);
    if cells.len() < keep {
        cells.push(cell);
    } else if !cell.iter().all(u8::is_ascii_whitespace) {
        *dropped += 1;
    }
}

impl Parser {
    /// The next record, or `None` at the end of the file.
    fn record(&mut self) -> io::Result<Option<Record>> {
        let mut lines: Vec<Line> = Vec::new();
        let mut cells: Vec<Vec<u8>> = Vec::new();
        let mut cur: Vec<u8> = Vec::new();
        let mut state = State::Start;
        let mut open_column = 0;
        let mut dropped_cells = 0;
        // Cells complete, and bytes of the open cell, at the end of the first line: what a damaged record keeps.
        let mut first_line = (0, 0);
        let keep = self.width.saturating_add(MAX_EXTRA_CELLS).min(MAX_COLUMNS + MAX_EXTRA_CELLS);
        let d = self.delimiter;
        loop {
            let Some(line) = self.lines.next()? else {
                if lines.is_empty() {
                    return Ok(None);
                }
                // The file ended inside a quoted cell.
                let kept = first_line_cells(&cells, &cur, first_line);
                return Ok(Some(self.damaged(lines, kept, open_column, Damage::EndOfFile)));
            };
            if !lines.is_empty() && self.row_shaped(&line.bytes, open_column) {
                self.lines.pending.push_front(line);
                let kept = first_line_cells(&cells, &cur, first_line);
                return Ok(Some(self.damaged(lines, kept, open_column, Damage::RowShaped)));
            }
            let bytes = &line.bytes;
            let mut ended = false;
            for (i, &b) in bytes.iter().enumerate() {
                let line_end = i + 1 == bytes.len() || bytes[i + 1] == b'\n';
                state = match (state, b) {
                    (State::Quoted, b'"') => State::QuoteInQuoted,
                    (State::Quoted, _) => {
                        cur.push(b);
                        State::Quoted
                    }
                    (State::QuoteInQuoted, b'"') => {
                        cur.push(b'"');
                        State::Quoted
                    }
                    (State::Start, b'"') => {
                        open_column = cells.len();
                        State::Quoted
                    }
                    (_, b'\n') => {
                        ended = true;
                        break;
                    }
                    (s, b'\r') if line_end => s,
                    (_, x) if x == d => {
                        end_cell(&mut cells, &mut cur, keep, &mut dropped_cells);
                        State::Start
                    }
                    _ => {
                        cur.push(b);
                        State::Unquoted
                    }
                };
            }
            // The last line of a file may have no line break.
            let ended = ended || (!bytes.ends_with(b"\n") && state != State::Quoted);
            let too_long = state == State::Quoted && cur.len() > MAX_CELL_CHARS * 4;
            let truncated = line.truncated;
            lines.push(line);
            if ended || truncated {
                end_cell(&mut cells, &mut cur, keep, &mut dropped_cells);
                self.accounted += lines.len() as u64;
                self.row += 1;
                let swallowed = lines[0].swallowed.flatten();
                return Ok(Some(Record::Fields(Fields { cells, dropped_cells, truncated, swallowed })));
            }
            if lines.len() == 1 {
                first_line = (cells.len(), cur.len());
            }
            if too_long {
                let kept = first_line_cells(&cells, &cur, first_line);
                return Ok(Some(self.damaged(lines, kept, open_column, Damage::TooLong)));
            }
        }
    }

    /// A line read while a quoted cell is open looks like a row of its own: about the header's number of fields,
    /// and more than the rest of the record could hold.
    fn row_shaped(&self, line: &[u8], open_column: usize) -> bool {
        let fields = line.iter().filter(|&&b| b == self.delimiter).count() + 1;
        let width = self.width;
        width >= 3 && fields >= (width - width / 4).max(3) && fields > width.saturating_sub(open_column)
    }

    /// Keeps aside the line that opened the quote and gives the lines after it back to be read as rows, marking
    /// those the open quote would have swallowed.
    fn damaged(&mut self, mut lines: Vec<Line>, cells: Vec<Vec<u8>>, column: usize, why: Damage) -> Record {
        lines.remove(0);
        self.row += 1;
        self.accounted += 1;
        if self.lines.naive.is_none() {
            for l in &mut lines {
                if l.swallowed == Some(None) {
                    l.swallowed = None;
                }
            }
            for l in self.lines.pending.iter_mut() {
                if l.swallowed == Some(None) {
                    l.swallowed = None;
                }
            }
            self.lines.naive = Some((Naive(State::Quoted), Origin { row: self.row, column }));
        }
        for l in lines.into_iter().rev() {
            self.lines.pending.push_front(l);
        }
        Record::Damaged(Damaged { cells, column, why })
    }
}

/// Picks the delimiter from the first line: the most frequent of comma, tab and semicolon outside quotes.
fn sniff_delimiter(head: &[u8]) -> u8 {
    let line_end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
    let mut counts = [(b',', 0usize), (b'\t', 0), (b';', 0)];
    let mut quoted = false;
    for &b in &head[..line_end] {
        if b == b'"' {
            quoted = !quoted;
        } else if !quoted && let Some(c) = counts.iter_mut().find(|(d, _)| *d == b) {
            c.1 += 1;
        }
    }
    counts.iter().max_by_key(|(_, n)| *n).filter(|(_, n)| *n > 0).map_or(b',', |(d, _)| *d)
}
