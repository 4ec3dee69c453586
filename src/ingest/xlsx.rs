//! XLSX exports: the first sheet (or a named one), the first row as header, cells as text the way a person
//! reads them (whole numbers without ".0", dates as ISO dates).

use std::path::Path;
use std::sync::Arc;

use calamine::{Data, Reader, Xlsx, open_workbook};

use super::{Header, IngestError, Row, Values};

type RowIter = Box<dyn Iterator<Item = Result<Row, IngestError>> + Send>;

pub(super) fn open(path: &Path, sheet: Option<&str>) -> Result<(Option<Arc<Header>>, RowIter), IngestError> {
    let bad = |message: String| IngestError::Malformed { path: path.to_path_buf(), message };
    let mut book: Xlsx<_> = open_workbook(path).map_err(|e| bad(format!("not a readable XLSX workbook: {e}")))?;
    let names = book.sheet_names();
    let name = match sheet {
        Some(wanted) => names
            .iter()
            .find(|n| n.eq_ignore_ascii_case(wanted))
            .cloned()
            .ok_or_else(|| bad(format!("no sheet named \"{wanted}\"; the workbook has: {}", names.join(", "))))?,
        None => names.first().cloned().ok_or_else(|| bad("the workbook has no sheets".into()))?,
    };
    let range = book.worksheet_range(&name).map_err(|e| bad(format!("sheet \"{name}\": {e}")))?;
    // Row numbers as Excel shows them: the range may start below row 1.
    let first_row = range.start().map_or(0, |(r, _)| u64::from(r)) + 1;
    let mut rows = range.rows();
    let header_cells = rows.next().ok_or_else(|| IngestError::NoHeader { path: path.to_path_buf() })?;
    let names: Vec<String> = header_cells.iter().map(|c| cell_text(c).trim().to_string()).collect();
    if names.iter().all(String::is_empty) {
        return Err(IngestError::NoHeader { path: path.to_path_buf() });
    }
    let width = names.len();
    let mut out = Vec::new();
    for (i, cells) in rows.enumerate() {
        let mut values: Vec<String> = cells.iter().map(cell_text).collect();
        if values.iter().all(|v| v.trim().is_empty()) {
            continue;
        }
        let extra_cells = values.iter().skip(width).filter(|c| !c.trim().is_empty()).count();
        if extra_cells == 0 {
            values.truncate(width);
        }
        out.push(Ok(Row { number: first_row + 1 + i as u64, values: Values::Cells(values), extra_cells }));
    }
    Ok((Some(Arc::new(Header { names })), Box::new(out.into_iter())))
}

/// The text of a cell as a person reads it in Excel.
fn cell_text(cell: &Data) -> String {
    match cell {
        Data::Empty => String::new(),
        Data::String(s) | Data::DateTimeIso(s) | Data::DurationIso(s) => s.clone(),
        Data::Int(i) => i.to_string(),
        Data::Float(f) => float_text(*f),
        Data::Bool(b) => if *b { "TRUE" } else { "FALSE" }.to_string(),
        Data::DateTime(dt) => excel_serial_to_iso(dt.as_f64(), dt.is_datetime()),
        Data::Error(e) => format!("#{e:?}"),
    }
}

fn float_text(f: f64) -> String {
    if f.fract() == 0.0 && f.abs() < 1e15 { format!("{}", f as i64) } else { f.to_string() }
}

/// Converts an Excel serial date (days since 1899-12-30, in the 1900 date system) to ISO 8601 text.
pub(crate) fn excel_serial_to_iso(serial: f64, with_time: bool) -> String {
    let days = serial.floor() as i64;
    let Some(date) =
        chrono::NaiveDate::from_ymd_opt(1899, 12, 30).and_then(|d| d.checked_add_signed(chrono::Duration::days(days)))
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
