//! CSV exports: any encoding `encoding` knows, CRLF or LF, quoted newlines, ragged rows.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::sync::Arc;

use super::{Header, IngestError, Row, Values, encoding};

type RowIter = Box<dyn Iterator<Item = Result<Row, IngestError>> + Send>;

pub(super) fn open(path: &Path, delimiter: Option<u8>) -> Result<(Option<Arc<Header>>, RowIter), IngestError> {
    let io = |source| IngestError::Io { path: path.to_path_buf(), source };
    let text = encoding::open_text(path).map_err(io)?;
    let mut buffered = BufReader::with_capacity(64 * 1024, text);
    let delimiter = match delimiter {
        Some(d) => d,
        None => sniff_delimiter(buffered.fill_buf().map_err(io)?),
    };
    let mut reader = ::csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .flexible(true)
        .has_headers(false)
        .from_reader(Box::new(buffered) as Box<dyn Read + Send>);
    let mut first = ::csv::StringRecord::new();
    let has_header = reader.read_record(&mut first).map_err(|e| malformed(path, 1, &e))?;
    if !has_header || first.iter().all(|c| c.trim().is_empty()) {
        return Err(IngestError::NoHeader { path: path.to_path_buf() });
    }
    let header =
        Arc::new(Header { names: first.iter().map(|s| s.trim_start_matches('\u{feff}').to_string()).collect() });
    let width = header.names.len();
    let path = path.to_path_buf();
    let mut number = 1u64;
    let mut record = ::csv::StringRecord::new();
    let iter = std::iter::from_fn(move || {
        loop {
            number += 1;
            match reader.read_record(&mut record) {
                Ok(false) => return None,
                Ok(true) => {
                    // A line that is wholly empty is not a record; spreadsheets leave them at the end.
                    if record.iter().all(|c| c.trim().is_empty()) {
                        continue;
                    }
                    let mut cells: Vec<String> = record.iter().map(str::to_string).collect();
                    let extra_cells = cells.iter().skip(width).filter(|c| !c.trim().is_empty()).count();
                    if cells.len() < width {
                        cells.resize(width, String::new());
                    } else if extra_cells == 0 {
                        cells.truncate(width);
                    }
                    return Some(Ok(Row { number, values: Values::Cells(cells), extra_cells }));
                }
                Err(e) => {
                    if e.is_io_error() {
                        return Some(Err(IngestError::Malformed { path: path.clone(), message: e.to_string() }));
                    }
                    return Some(Ok(Row {
                        number,
                        values: Values::Unreadable { raw: String::new(), reason: e.to_string() },
                        extra_cells: 0,
                    }));
                }
            }
        }
    });
    Ok((Some(header), Box::new(iter)))
}

fn malformed(path: &Path, row: u64, e: &::csv::Error) -> IngestError {
    IngestError::Malformed { path: path.to_path_buf(), message: format!("row {row}: {e}") }
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
