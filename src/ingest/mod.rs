//! Ingest: reads partner exports (CSV, XLSX, JSON array, NDJSON) into rows that keep their provenance.
//!
//! Readers stream where the format allows it (CSV, NDJSON), so memory stays flat whatever the export's size.
//! Every row carries its number as a person would find it: the spreadsheet row for tabular files (the header
//! is row 1), the record number for JSON arrays, the line number for NDJSON.

mod csv;
mod encoding;
mod json;
pub mod limits;
mod xlsx;
mod xlsx_scan;
#[doc(hidden)]
pub mod zip_writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

/// The shapes of export the connector reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Csv,
    Xlsx,
    Json,
    Ndjson,
}

impl Format {
    /// Guesses the format from a file name's extension.
    pub fn from_path(path: &Path) -> Option<Self> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "csv" | "txt" | "tsv" => Some(Self::Csv),
            "xlsx" | "xlsm" => Some(Self::Xlsx),
            "json" => Some(Self::Json),
            "ndjson" | "jsonl" => Some(Self::Ndjson),
            _ => None,
        }
    }
}

/// How to read one export; filled from a mapping's `[source]` table.
#[derive(Debug, Clone, Default)]
pub struct ReadOptions {
    pub format: Option<Format>,
    pub delimiter: Option<u8>,
    pub sheet: Option<String>,
    /// Dotted path to the array of records inside a JSON document.
    pub records: Option<String>,
    /// Largest file accepted, in bytes; `None` for no limit.
    pub max_bytes: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("{path}: cannot read the file: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path}: the file is {size} bytes, over the limit of {max} bytes; split the export or raise `max_input_bytes`"
    )]
    TooLarge { path: PathBuf, size: u64, max: u64 },
    #[error(
        "{path}: cannot tell the format from the file name; name it .csv, .xlsx, .json or .ndjson, or set `[source] format` in the mapping"
    )]
    UnknownFormat { path: PathBuf },
    #[error("{path}: the file has no header row; exports must start with the column names")]
    NoHeader { path: PathBuf },
    #[error("{path}: {}", cap_message(message.clone()))]
    Malformed { path: PathBuf, message: String },
}

/// Column names of a tabular export, in file order.
#[derive(Debug)]
pub struct Header {
    pub names: Vec<String>,
}

impl Header {
    /// Finds a column ignoring case, surrounding white space and a byte order mark.
    pub fn position(&self, wanted: &str) -> Option<usize> {
        let wanted = normalise_header(wanted);
        self.names.iter().position(|n| normalise_header(n) == wanted)
    }
}

fn normalise_header(name: &str) -> String {
    name.trim_start_matches('\u{feff}').trim().to_lowercase()
}

/// The values of one row.
#[derive(Debug, Clone)]
pub enum Values {
    /// Cells of a tabular row, in header order; a short row is padded with empty cells on read.
    Cells(Vec<String>),
    /// One JSON record.
    Json(serde_json::Value),
    /// The reader could not make a record of this row (bad JSON line, broken CSV quoting).
    Unreadable { raw: String, reason: String },
    /// Cells the reader could split but must not be trusted (inside a quote left open, invalid UTF-8, a cell over
    /// the limit): the row is quarantined with `reason`, never mapped; its cells still give the record's key, so
    /// whatever holds on a quarantined record (consent) can find the person.
    Untrusted { cells: Vec<String>, reason: String },
}

/// One record of an export, with where it came from.
#[derive(Debug, Clone)]
pub struct Row {
    /// Spreadsheet row (header = 1), JSON record number or NDJSON line number.
    pub number: u64,
    pub values: Values,
    /// Cells beyond the header that hold something: the mark of an unquoted delimiter.
    pub extra_cells: usize,
}

impl Row {
    /// A digest of the row's raw content, used to spot re-exports and duplicates without keeping the content.
    pub fn raw_hash(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        match &self.values {
            Values::Cells(cells) | Values::Untrusted { cells, .. } => {
                for c in cells {
                    h.update(c.as_bytes());
                    h.update([0x1f]);
                }
            }
            Values::Json(v) => h.update(v.to_string().as_bytes()),
            Values::Unreadable { raw, .. } => h.update(raw.as_bytes()),
        }
        h.finalize().into()
    }

    /// The raw content as JSON, for the quarantine (which must keep what it holds so nothing is lost).
    pub fn raw_json(&self, header: Option<&Header>) -> serde_json::Value {
        match &self.values {
            Values::Cells(cells) | Values::Untrusted { cells, .. } => {
                let mut m = serde_json::Map::new();
                for (i, c) in cells.iter().enumerate() {
                    let name =
                        header.and_then(|h| h.names.get(i)).cloned().unwrap_or_else(|| format!("(column {})", i + 1));
                    m.insert(name, serde_json::Value::String(c.clone()));
                }
                serde_json::Value::Object(m)
            }
            Values::Json(v) => v.clone(),
            Values::Unreadable { raw, .. } => serde_json::Value::String(raw.clone()),
        }
    }
}

/// An open export: its header (for tabular formats) and its rows, streamed.
pub struct Rows {
    pub path: PathBuf,
    pub format: Format,
    pub header: Option<Arc<Header>>,
    iter: Box<dyn Iterator<Item = Result<Row, IngestError>> + Send>,
}

impl Iterator for Rows {
    type Item = Result<Row, IngestError>;
    fn next(&mut self) -> Option<Self::Item> {
        self.iter.next()
    }
}

/// Opens an export for reading.
pub fn open(path: &Path, opts: &ReadOptions) -> Result<Rows, IngestError> {
    let io = |source| IngestError::Io { path: path.to_path_buf(), source };
    let meta = std::fs::metadata(path).map_err(io)?;
    if let Some(max) = opts.max_bytes
        && meta.len() > max
    {
        return Err(IngestError::TooLarge { path: path.to_path_buf(), size: meta.len(), max });
    }
    let format = opts
        .format
        .or_else(|| Format::from_path(path))
        .ok_or_else(|| IngestError::UnknownFormat { path: path.to_path_buf() })?;
    let (header, iter) = match format {
        Format::Csv => csv::open(path, opts.delimiter)?,
        Format::Xlsx => xlsx::open(path, opts.sheet.as_deref())?,
        Format::Json => json::open_array(path, opts.records.as_deref())?,
        Format::Ndjson => json::open_lines(path)?,
    };
    Ok(Rows { path: path.to_path_buf(), format, header, iter })
}

/// The longest error message ingest and mapping write, in characters. A message names things (file, row,
/// column, mapping); a longer one is carrying something it should not, such as a whole record.
pub const MAX_MESSAGE_CHARS: usize = 300;

/// A file's name for messages and reports (the whole path when it has no name).
pub fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned())
}

/// Cuts a message to [`MAX_MESSAGE_CHARS`] on a character boundary, saying that it did.
pub fn cap_message(message: String) -> String {
    match message.char_indices().nth(MAX_MESSAGE_CHARS) {
        None => message,
        Some((end, _)) => format!("{} (message cut)", &message[..end]),
    }
}

/// Whether a header cell looks like a value rather than a column name: a date, or ten digits in the
/// shapes NHS numbers come in. A header that holds one is probably the first record of a header-less export.
pub fn looks_like_data(cell: &str) -> bool {
    let t = cell.trim_start_matches('\u{feff}').trim();
    let digits = t.bytes().filter(u8::is_ascii_digit).count();
    let only = |allowed: &[u8]| t.bytes().all(|b| b.is_ascii_digit() || allowed.contains(&b));
    // 999 012 3403, 999-012-3403, 9990123403, 9.990123403E+09
    let nhs_like = (digits == 10 && only(b" -")) || (digits >= 9 && only(b".eE+") && t.contains(['e', 'E']));
    // 3/4/1987, 03-04-1987, 1987-04-03, 2023-03-24T10:00
    let date_like = {
        let parts: Vec<&str> = t.split(['/', '-', '.']).collect();
        parts.len() == 3
            && parts.iter().all(|p| {
                let p = p.split(['T', ' ']).next().unwrap_or_default();
                !p.is_empty() && p.len() <= 4 && p.bytes().all(|b| b.is_ascii_digit())
            })
    };
    nhs_like || date_like
}

/// Looks up a dotted path (`client.name.first`, `phones.0.number`) in a JSON record.
pub fn json_path<'a>(value: &'a serde_json::Value, path: &str) -> Option<&'a serde_json::Value> {
    if let Some(v) = value.get(path) {
        return Some(v);
    }
    let mut cur = value;
    for part in path.split('.') {
        cur = match cur {
            serde_json::Value::Object(m) => m.get(part)?,
            serde_json::Value::Array(a) => a.get(part.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

#[cfg(test)]
mod tests;
