//! Partner API sources: JSON pages read into a spool file the mapper reads as NDJSON. (Being built.)

use std::path::{Path, PathBuf};

use tokio::sync::watch;

use crate::config::ApiSource;

/// What one read of a partner's API fetched.
#[derive(Debug)]
pub struct Fetched {
    /// NDJSON spool file holding every record read, one per line (owner-only; deleted once planned).
    pub spool: PathBuf,
    pub pages: u64,
    pub records: u64,
    /// The cursor to store once the rows are planned (none: keep the stored one).
    pub next_cursor: Option<String>,
    /// True when the read started from nothing (no since parameter): it holds every current record.
    pub complete: bool,
}

/// Why a read failed; the message names the source and what to do, never a record's content.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Failed(String),
    #[error("stopped while reading")]
    Stopped,
}

/// Reads every page of `api` (from `cursor`, when incremental) into `spool`.
pub async fn fetch(
    api: &ApiSource,
    base_dir: &Path,
    cursor: Option<&str>,
    spool: &Path,
    stop: &watch::Receiver<bool>,
) -> Result<Fetched, ApiError> {
    let _ = (api, base_dir, cursor, spool, stop);
    Err(ApiError::Failed("partner API sources are not built yet".into()))
}
