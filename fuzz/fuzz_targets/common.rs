// Shared by the fuzz targets: the readers take files, so each input is written to a per-process file in
// /dev/shm (memory) and read back through the public API, draining every row as the mapper would.
use std::path::PathBuf;

use york_connector::ingest::{self, Format, ReadOptions};

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
                    let _ = r.raw_json(header.as_deref());
                    let _ = r.raw_hash();
                }
                Err(_) => break,
            }
        }
    }
}
