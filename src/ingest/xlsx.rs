//! XLSX exports: the first sheet (or a named one), the first row as header, cells as text the way a person
//! reads them (whole numbers without ".0", dates as ISO dates).
//!
//! Streams: a reader thread walks the sheet's cells in order (calamine's cell reader) and hands over one row
//! at a time through a small bounded channel, so memory does not grow with the number of rows (only the
//! workbook's shared-strings table, which calamine loads whole, grows with the number of distinct texts).

use std::io::{BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use calamine::{Data, Reader, Xlsx};

use super::limits::{MAX_XLSX_COLUMNS, MAX_XLSX_ROWS};
use super::{Header, IngestError, Row, Values, xlsx_scan};

type RowIter = Box<dyn Iterator<Item = Result<Row, IngestError>> + Send>;

/// Rows read ahead of the mapper.
const READ_AHEAD: usize = 256;

/// A sheet row: its Excel row number (1-based), and its cells from column A.
type SheetRow = (u64, Vec<String>);

pub(super) fn open(path: &Path, sheet: Option<&str>) -> Result<(Option<Arc<Header>>, RowIter), IngestError> {
    let bad = |message: String| IngestError::Malformed { path: path.to_path_buf(), message };
    let mut file = std::fs::File::open(path).map_err(|source| IngestError::Io { path: path.to_path_buf(), source })?;
    // calamine trusts what the package claims; check it first, on the same open file it will read.
    xlsx_scan::check(&file).map_err(bad)?;
    file.seek(SeekFrom::Start(0)).map_err(|source| IngestError::Io { path: path.to_path_buf(), source })?;
    let book: Xlsx<_> =
        Xlsx::new(BufReader::new(file)).map_err(|e| bad(format!("not a readable XLSX workbook: {e}")))?;
    // Serial dates count from 1904-01-01 in a workbook saved with the 1904 date system (old Mac Excel).
    let date1904 = book.has_1904_epoch();
    let names = book.sheet_names();
    let name = match sheet {
        Some(wanted) => names
            .iter()
            .find(|n| n.eq_ignore_ascii_case(wanted))
            .cloned()
            .ok_or_else(|| bad(format!("no sheet named \"{wanted}\"; the workbook has: {}", names.join(", "))))?,
        None => names.first().cloned().ok_or_else(|| bad("the workbook has no sheets".into()))?,
    };
    let (tx, rx) = sync_channel::<Result<SheetRow, String>>(READ_AHEAD);
    std::thread::Builder::new()
        .name("xlsx-reader".into())
        .spawn(move || read_sheet(book, &name, date1904, &tx))
        .map_err(|e| bad(format!("cannot start the reader: {e}")))?;
    // The header: the first row with anything in it. Its first cell fixes the first column.
    let (_, mut header_cells) = loop {
        match rx.recv() {
            Ok(Ok((n, cells))) if cells.iter().any(|c| !c.trim().is_empty()) => break (n, cells),
            Ok(Ok(_)) => continue,
            Ok(Err(e)) => return Err(bad(e)),
            Err(_) => return Err(IngestError::NoHeader { path: path.to_path_buf() }),
        }
    };
    let offset = header_cells.iter().position(|c| !c.trim().is_empty()).unwrap_or(0);
    header_cells.drain(..offset);
    let names: Vec<String> = header_cells.iter().map(|c| c.trim().to_string()).collect();
    let width = names.len();
    let rows = Rows { rx, path: path.to_path_buf(), offset, width };
    Ok((Some(Arc::new(Header { names })), Box::new(rows)))
}

/// Reads the sheet's cells in order and sends each row when the next one starts.
fn read_sheet(
    mut book: Xlsx<std::io::BufReader<std::fs::File>>,
    name: &str,
    date1904: bool,
    tx: &SyncSender<Result<SheetRow, String>>,
) {
    let mut reader = match book.worksheet_cells_reader(name) {
        Ok(r) => r,
        Err(e) => {
            let _ = tx.send(Err(format!("sheet \"{name}\": {e}")));
            return;
        }
    };
    let mut current: Option<SheetRow> = None;
    loop {
        match reader.next_cell() {
            Ok(Some(cell)) => {
                let (r, c) = cell.get_position();
                // Refused before a row grows to reach the cell: a cell at column ZZZZZZ would take gigabytes.
                if c >= MAX_XLSX_COLUMNS || r >= MAX_XLSX_ROWS {
                    let _ = tx.send(Err(format!(
                        "sheet \"{name}\": a cell at row {}, column {} lies beyond column XFD or row {MAX_XLSX_ROWS}, the last a spreadsheet can have; the file is damaged or was not written by a spreadsheet program: re-export it from the case system",
                        u64::from(r) + 1,
                        u64::from(c) + 1
                    )));
                    return;
                }
                let number = u64::from(r) + 1;
                if current.as_ref().is_some_and(|(n, _)| *n != number)
                    && let Some(done) = current.take()
                    && tx.send(Ok(done)).is_err()
                {
                    return; // the mapper stopped reading
                }
                let row = current.get_or_insert_with(|| (number, Vec::new()));
                let c = c as usize;
                if row.1.len() <= c {
                    row.1.resize(c + 1, String::new());
                }
                row.1[c] = cell_text(&Data::from(cell.get_value().clone()), date1904);
            }
            Ok(None) => break,
            Err(e) => {
                let _ = tx.send(Err(format!("sheet \"{name}\": {e}")));
                return;
            }
        }
    }
    if let Some(done) = current {
        let _ = tx.send(Ok(done));
    }
}

struct Rows {
    rx: Receiver<Result<SheetRow, String>>,
    path: PathBuf,
    offset: usize,
    width: usize,
}

impl Iterator for Rows {
    type Item = Result<Row, IngestError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let (number, mut values) = match self.rx.recv().ok()? {
                Ok(row) => row,
                Err(message) => return Some(Err(IngestError::Malformed { path: self.path.clone(), message })),
            };
            if values.iter().all(|v| v.trim().is_empty()) {
                continue;
            }
            // Cells left of the header's first column have no column name: count them as surplus.
            let before = values.iter().take(self.offset).filter(|c| !c.trim().is_empty()).count();
            values.drain(..self.offset.min(values.len()));
            values.resize(values.len().max(self.width), String::new());
            let extra_cells = before + values.iter().skip(self.width).filter(|c| !c.trim().is_empty()).count();
            if extra_cells == 0 {
                values.truncate(self.width);
            }
            return Some(Ok(Row { number, values: Values::Cells(values), extra_cells }));
        }
    }
}

/// The text of a cell as a person reads it in Excel.
fn cell_text(cell: &Data, date1904: bool) -> String {
    match cell {
        Data::Empty => String::new(),
        Data::String(s) | Data::DateTimeIso(s) | Data::DurationIso(s) => s.clone(),
        Data::Int(i) => i.to_string(),
        Data::Float(f) => float_text(*f),
        Data::Bool(b) => if *b { "TRUE" } else { "FALSE" }.to_string(),
        Data::DateTime(dt) => excel_serial_to_iso(dt.as_f64(), dt.is_datetime(), date1904),
        Data::Error(e) => format!("#{e:?}"),
    }
}

fn float_text(f: f64) -> String {
    if f.fract() == 0.0 && f.abs() < 1e15 { format!("{}", f as i64) } else { f.to_string() }
}

/// Converts an Excel serial date to ISO 8601 text: days since 1899-12-30 in the 1900 date system, since
/// 1904-01-01 in the 1904 one (the same date is 1,462 lower there).
pub(crate) fn excel_serial_to_iso(serial: f64, with_time: bool, date1904: bool) -> String {
    let days = serial.floor() as i64;
    let epoch = if date1904 { (1904, 1, 1) } else { (1899, 12, 30) };
    let Some(date) = chrono::NaiveDate::from_ymd_opt(epoch.0, epoch.1, epoch.2)
        .and_then(|d| d.checked_add_signed(chrono::TimeDelta::try_days(days)?))
    else {
        return float_text(serial);
    };
    let seconds = ((serial - serial.floor()) * 86_400.0).round() as u32;
    if with_time && seconds > 0 {
        let (h, m, s) = (seconds / 3600, (seconds % 3600) / 60, seconds % 60);
        format!("{}T{h:02}:{m:02}:{s:02}", date.format("%Y-%m-%d"))
    } else {
        date.format("%Y-%m-%d").to_string()
    }
}
