//! Quarantine: rows that could not be mapped, kept whole with every reason so that nothing is lost and an
//! admin can fix the source and replay. A sync keeps them in the state store (`quarantine` table); `connector
//! mappings run` writes them to an NDJSON file per run, owner-only because it holds personal data (the raw
//! row). This module also finds a replayed row again among a run's quarantined rows.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::mapping::Quarantined;
use crate::store::{QuarantineRecord, sha256_hex};

/// An NDJSON quarantine file, created on the first row it receives.
pub struct QuarantineFile {
    path: PathBuf,
    out: Option<BufWriter<File>>,
    pub count: u64,
}

impl QuarantineFile {
    /// A file under `dir` named after the partner and the moment of the run.
    pub fn new(dir: &Path, partner: &str) -> Self {
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
        Self { path: dir.join(format!("{partner}-{stamp}.ndjson")), out: None, count: 0 }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn write(&mut self, q: &Quarantined) -> std::io::Result<()> {
        if self.out.is_none() {
            if let Some(parent) = self.path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let mut opts = OpenOptions::new();
            opts.create(true).append(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            self.out = Some(BufWriter::new(opts.open(&self.path)?));
        }
        if let Some(out) = self.out.as_mut() {
            serde_json::to_writer(&mut *out, q)?;
            out.write_all(b"\n")?;
        }
        self.count += 1;
        Ok(())
    }

    pub fn finish(&mut self) -> std::io::Result<()> {
        match self.out.as_mut() {
            Some(out) => out.flush(),
            None => Ok(()),
        }
    }
}

/// One line a person reads: file, row, key, and every reason.
pub fn describe(q: &Quarantined) -> String {
    let key = q.key.as_ref().map(|k| format!(" (key {k})")).unwrap_or_default();
    let reasons: Vec<String> = q.reasons.iter().map(ToString::to_string).collect();
    format!("{}: row {}{key}: {}", q.file.display(), q.row, reasons.join("; "))
}

/// A row quarantined by a run, as a replay compares it: never its content, only a hash of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuarantinedRow {
    pub kind: String,
    /// The file's name (without its folder).
    pub file: String,
    pub row: u64,
    pub key: Option<String>,
    /// Hex sha256 of the raw row as stored (`quarantine.raw_hash`).
    pub raw_hash: String,
}

impl QuarantinedRow {
    pub fn of(q: &Quarantined) -> Self {
        Self {
            kind: q.kind.to_string(),
            file: file_name(&q.file.display().to_string()),
            row: q.row,
            key: q.key.clone(),
            raw_hash: sha256_hex(&q.raw.to_string()),
        }
    }
}

fn file_name(path: &str) -> String {
    Path::new(path).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Where a stored quarantined row is among the rows a fresh run quarantined, if it still fails. The row is
/// the same when its key is (it may have moved within the export, or to another file of the same kind);
/// a row without a key is the same only when its content is unchanged, in the same file. Row numbers are
/// never compared: after the export changed, the same number is another person's row.
pub fn find_again<'a>(stored: &QuarantineRecord, fresh: &'a [QuarantinedRow]) -> Option<&'a QuarantinedRow> {
    let same_kind = fresh.iter().filter(|r| r.kind == stored.kind);
    match &stored.key {
        Some(key) => same_kind.into_iter().find(|r| r.key.as_ref() == Some(key)),
        None => {
            let (file, hash) = (file_name(&stored.file), sha256_hex(&stored.raw_json));
            same_kind.into_iter().find(|r| r.key.is_none() && r.file == file && r.raw_hash == hash)
        }
    }
}

/// Whether a fresh run kept `fresh` under the stored entry itself (same file, row and content: the store
/// keeps such a row once, under its first id).
pub fn is_entry(stored: &QuarantineRecord, fresh: &QuarantinedRow) -> bool {
    i64::try_from(fresh.row).ok() == Some(stored.row)
        && fresh.kind == stored.kind
        && fresh.file == file_name(&stored.file)
        && fresh.raw_hash == sha256_hex(&stored.raw_json)
}

#[cfg(test)]
mod tests {
    use super::{QuarantinedRow, find_again};
    use crate::store::{QuarantineRecord, sha256_hex};

    fn stored(key: Option<&str>, raw: &str) -> QuarantineRecord {
        QuarantineRecord {
            partner: "hub".into(),
            kind: "person".into(),
            file: "/exports/hub/person.csv".into(),
            row: 8,
            key: key.map(String::from),
            reasons_json: "[]".into(),
            raw_json: raw.into(),
            created_at: chrono::Utc::now(),
        }
    }

    fn fresh(row: u64, key: Option<&str>, raw: &str) -> QuarantinedRow {
        QuarantinedRow {
            kind: "person".into(),
            file: "person.csv".into(),
            row,
            key: key.map(String::from),
            raw_hash: sha256_hex(raw),
        }
    }

    #[test]
    fn a_replay_finds_the_row_by_key_or_content_never_by_row_number() {
        // Another person's row now sits at row 8: the fixed row is not reported as failing.
        let now = [fresh(8, Some("HUB-1014"), r#"{"b":1}"#)];
        assert_eq!(find_again(&stored(Some("HUB-1013"), r#"{"a":1}"#), &now), None);
        // The same person moved to row 11 and still fails: found there.
        let now = [fresh(8, Some("HUB-1014"), "x"), fresh(11, Some("HUB-1013"), "y")];
        assert_eq!(find_again(&stored(Some("HUB-1013"), "z"), &now).map(|r| r.row), Some(11));
        // No key: the same content, wherever it moved in the file, is the same row; other content is not.
        let now = [fresh(8, None, r#"{"b":1}"#), fresh(12, None, r#"{"a":1}"#)];
        assert_eq!(find_again(&stored(None, r#"{"a":1}"#), &now).map(|r| r.row), Some(12));
        assert_eq!(find_again(&stored(None, r#"{"c":1}"#), &now), None);
    }
}
