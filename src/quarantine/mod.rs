//! Quarantine: rows that could not be mapped, kept whole with every reason so that nothing is lost and an
//! admin can fix the source and replay. Until the state store exists, the quarantine is an NDJSON file per run.
//! It holds personal data (the raw row), so it is written with owner-only permissions.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::mapping::Quarantined;

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
