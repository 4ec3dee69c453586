//! JSON exports: an array of records (possibly under a path such as `data`), or NDJSON, one record per line.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::Arc;

use serde_json::Value;

use super::{Header, IngestError, Row, Values, encoding, json_path};

type RowIter = Box<dyn Iterator<Item = Result<Row, IngestError>> + Send>;

/// Reads a JSON document whose records are an array at the top level or at `records` (a dotted path).
pub(super) fn open_array(path: &Path, records: Option<&str>) -> Result<(Option<Arc<Header>>, RowIter), IngestError> {
    let io = |source| IngestError::Io { path: path.to_path_buf(), source };
    let bad = |message: String| IngestError::Malformed { path: path.to_path_buf(), message };
    let reader = BufReader::new(encoding::open_text(path).map_err(io)?);
    let doc: Value = serde_json::from_reader(reader)
        .map_err(|e| bad(format!("not valid JSON at line {}, column {}: {e}", e.line(), e.column())))?;
    let array = match records {
        Some(p) => json_path(&doc, p)
            .cloned()
            .ok_or_else(|| bad(format!("no \"{p}\" in the document; check `[source] records`")))?,
        None => doc,
    };
    let Value::Array(items) = array else {
        let at = records.map_or("the top level".to_string(), |p| format!("\"{p}\""));
        return Err(bad(format!("expected an array of records at {at}")));
    };
    let rows = items.into_iter().enumerate().map(|(i, v)| {
        let values = match v {
            Value::Object(_) => Values::Json(v),
            other => Values::Unreadable { raw: other.to_string(), reason: "the record is not a JSON object".into() },
        };
        Ok(Row { number: i as u64 + 1, values, extra_cells: 0 })
    });
    Ok((None, Box::new(rows.collect::<Vec<_>>().into_iter())))
}

/// Reads NDJSON as a stream: one record per line; blank lines are skipped, a bad line becomes an unreadable row.
pub(super) fn open_lines(path: &Path) -> Result<(Option<Arc<Header>>, RowIter), IngestError> {
    let io = |source| IngestError::Io { path: path.to_path_buf(), source };
    let reader = BufReader::with_capacity(64 * 1024, encoding::open_text(path).map_err(io)?);
    let path = path.to_path_buf();
    let mut lines = reader.lines().enumerate();
    let iter = std::iter::from_fn(move || {
        loop {
            let (i, line) = lines.next()?;
            let line = match line {
                Ok(l) => l,
                Err(source) => return Some(Err(IngestError::Io { path: path.clone(), source })),
            };
            if line.trim().is_empty() {
                continue;
            }
            let values = match serde_json::from_str::<Value>(&line) {
                Ok(v @ Value::Object(_)) => Values::Json(v),
                Ok(_) => Values::Unreadable { raw: line, reason: "the line is not a JSON object".into() },
                Err(e) => {
                    Values::Unreadable { raw: line, reason: format!("not valid JSON at column {}: {e}", e.column()) }
                }
            };
            return Some(Ok(Row { number: i as u64 + 1, values, extra_cells: 0 }));
        }
    });
    Ok((None, Box::new(iter)))
}
