// Shared by the fuzz targets: the readers take files, so each input is written to a per-process file in
// /dev/shm (memory) and read back through the public API, draining every row as the mapper would.
use std::path::PathBuf;

use york_connector::ingest::limits::{MAX_JSON_RECORD_BYTES, MAX_VALUE_CHARS, MAX_XML_CELL_BYTES};
use york_connector::ingest::{self, Format, ReadOptions, Values};

pub fn file(ext: &str, data: &[u8]) -> PathBuf {
    let dir = if std::path::Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
    let path = dir.join(format!("york-fuzz-{}.{ext}", std::process::id()));
    std::fs::write(&path, data).expect("writing the fuzz input");
    path
}

#[allow(dead_code)] // not every target drains a reader
pub fn drain(ext: &str, format: Format, records: Option<&str>, data: &[u8]) {
    let path = file(ext, data);
    let opts = ReadOptions { format: Some(format), records: records.map(String::from), ..Default::default() };
    if let Ok(rows) = ingest::open(&path, &opts) {
        let header = rows.header.clone();
        for row in rows {
            match row {
                Ok(r) => {
                    bounded(format, &r.values);
                    let _ = r.raw_json(header.as_deref());
                    let _ = r.raw_hash();
                }
                Err(e) => {
                    assert!(e.to_string().len() <= 2048, "an error message is short: {} bytes", e.to_string().len());
                    break;
                }
            }
        }
    }
}

/// What a reader hands over keeps to its limits: an XLSX cell to what the package check lets through, a JSON
/// record to one record's bytes.
#[allow(dead_code)] // used by `drain`
fn bounded(format: Format, values: &Values) {
    match (format, values) {
        (Format::Xlsx, Values::Cells(cells)) => {
            for c in cells {
                assert!(c.len() <= MAX_XML_CELL_BYTES, "an XLSX cell of {} bytes got through", c.len());
            }
        }
        (Format::Json | Format::Ndjson, Values::Json(v)) => {
            let len = v.to_string().len();
            // Re-serialised, escapes may grow a record a little beyond the bytes it took in the file.
            assert!(len <= 6 * MAX_JSON_RECORD_BYTES, "a JSON record of {len} bytes got through");
        }
        _ => {}
    }
}

/// Every string in a mapped resource is within the field limit.
#[allow(dead_code)] // only the mapping engine target maps
pub fn assert_no_overlong_value(v: &serde_json::Value) {
    match v {
        serde_json::Value::String(s) => {
            assert!(
                s.chars().count() <= MAX_VALUE_CHARS,
                "a resource holds a value of {} characters",
                s.chars().count()
            )
        }
        serde_json::Value::Array(a) => a.iter().for_each(assert_no_overlong_value),
        serde_json::Value::Object(m) => m.values().for_each(assert_no_overlong_value),
        _ => {}
    }
}
