//! Partner sources (`src/source/`): inbox files finished with, API cursors, snapshot membership and each
//! source's freshness. A source is named by its partner and its kinds label (`person+consent`).

use chrono::{DateTime, Utc};

use super::{Inner, Result, Store, StoreError, from_ms, ms};

/// What `connector status` and `/metrics` show of one source.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SourceStatus {
    pub partner: String,
    pub source: String,
    /// The newest file (or API read) taken in, and its modification time.
    pub last_file: Option<String>,
    pub last_file_mtime: Option<DateTime<Utc>>,
    /// When a read of this source last went through to planning.
    pub last_success_at: Option<DateTime<Utc>>,
    /// Records in the last complete snapshot (snapshot sources).
    pub snapshot_size: Option<i64>,
    /// Records gone at source in the last snapshot.
    pub gone: i64,
    /// Why the last snapshot was refused, when it was.
    pub refused: Option<String>,
}

/// An inbox file the connector has finished with.
#[derive(Debug, Clone)]
pub struct FinishedFile {
    pub name: String,
    pub sha256: String,
    pub size: i64,
    /// `archived` or `rejected`.
    pub rejected: bool,
    pub reason: Option<String>,
}

impl Store {
    /// Where an API source's incremental read resumes; none before its first complete read.
    pub async fn source_cursor(&self, partner: &str, source: &str) -> Result<Option<String>> {
        with_pool!(self, |pool| {
            sqlx::query_scalar("SELECT value FROM source_cursors WHERE partner = $1 AND source = $2")
                .bind(partner)
                .bind(source)
                .fetch_optional(pool)
                .await
        })
        .map_err(StoreError::query("source_cursor"))
    }

    /// Moves an API source's cursor (only once the read's rows are planned).
    pub async fn source_cursor_set(&self, partner: &str, source: &str, value: &str, now: DateTime<Utc>) -> Result<()> {
        with_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO source_cursors (partner, source, value, updated_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (partner, source) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            )
            .bind(partner)
            .bind(source)
            .bind(value)
            .bind(ms(now))
            .execute(pool)
            .await
            .map(|_| ())
        })
        .map_err(StoreError::query("source_cursor_set"))
    }

    /// The name a file with this content was finished under, if it was (archived or rejected).
    pub async fn source_file_finished(&self, partner: &str, source: &str, sha256: &str) -> Result<Option<String>> {
        with_pool!(self, |pool| {
            sqlx::query_scalar("SELECT name FROM source_files WHERE partner = $1 AND source = $2 AND sha256 = $3")
                .bind(partner)
                .bind(source)
                .bind(sha256)
                .fetch_optional(pool)
                .await
        })
        .map_err(StoreError::query("source_file_finished"))
    }

    /// Records an inbox file as finished with, before it is moved out of the inbox.
    pub async fn source_file_finish(
        &self,
        partner: &str,
        source: &str,
        file: &FinishedFile,
        now: DateTime<Utc>,
    ) -> Result<()> {
        with_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO source_files (partner, source, name, sha256, size, status, reason, finished_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (partner, source, sha256) DO NOTHING",
            )
            .bind(partner)
            .bind(source)
            .bind(&file.name)
            .bind(&file.sha256)
            .bind(file.size)
            .bind(if file.rejected { "rejected" } else { "archived" })
            .bind(&file.reason)
            .bind(ms(now))
            .execute(pool)
            .await
            .map(|_| ())
        })
        .map_err(StoreError::query("source_file_finish"))
    }

    /// The records of the source's last complete snapshot (`Type/id`), in no particular order; empty before the
    /// first. SQLite hands them over as one JSON array: row by row, each row is a hand-off from SQLite's worker
    /// thread, 0.17 s for 20,000 members (measured), most of an unchanged cycle's time after mapping.
    pub async fn snapshot_members(&self, partner: &str, source: &str) -> Result<Vec<String>> {
        let what = "snapshot_members";
        match &self.inner {
            Inner::Sqlite(pool) => {
                let all: String = sqlx::query_scalar(
                    "SELECT json_group_array(key) FROM snapshot_members WHERE partner = $1 AND source = $2",
                )
                .bind(partner)
                .bind(source)
                .fetch_one(pool)
                .await
                .map_err(StoreError::query(what))?;
                serde_json::from_str(&all).map_err(|e| StoreError::Invalid(format!("{what}: {e}")))
            }
            Inner::Postgres(pool) => {
                sqlx::query_scalar("SELECT key FROM snapshot_members WHERE partner = $1 AND source = $2")
                    .bind(partner)
                    .bind(source)
                    .fetch_all(pool)
                    .await
                    .map_err(StoreError::query(what))
            }
        }
    }

    /// Replaces the source's snapshot with these records, in one transaction.
    pub async fn snapshot_replace(&self, partner: &str, source: &str, keys: &[String]) -> Result<()> {
        in_tx!(self, "snapshot_replace", |tx| {
            sqlx::query("DELETE FROM snapshot_members WHERE partner = $1 AND source = $2")
                .bind(partner)
                .bind(source)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::query("snapshot_replace"))?;
            for chunk in keys.chunks(500) {
                // Placeholders only; every value is bound.
                let mut q = String::from("INSERT INTO snapshot_members (partner, source, key) VALUES ");
                for i in 0..chunk.len() {
                    if i > 0 {
                        q.push(',');
                    }
                    q.push_str(&format!("($1, $2, ${})", i + 3));
                }
                let mut query = sqlx::query(sqlx::AssertSqlSafe(q)).bind(partner).bind(source);
                for k in chunk {
                    query = query.bind(k);
                }
                query.execute(&mut *tx).await.map_err(StoreError::query("snapshot_replace"))?;
            }
        });
        Ok(())
    }

    /// Updates a source's freshness and snapshot figures (fields left `None` keep their stored value).
    pub async fn source_status_put(&self, s: &SourceStatus) -> Result<()> {
        with_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO source_status (partner, source, last_file, last_file_mtime, last_success_at, snapshot_size, gone, refused) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (partner, source) DO UPDATE SET \
                 last_file = COALESCE(excluded.last_file, source_status.last_file), \
                 last_file_mtime = COALESCE(excluded.last_file_mtime, source_status.last_file_mtime), \
                 last_success_at = COALESCE(excluded.last_success_at, source_status.last_success_at), \
                 snapshot_size = COALESCE(excluded.snapshot_size, source_status.snapshot_size), \
                 gone = excluded.gone, refused = excluded.refused",
            )
            .bind(&s.partner)
            .bind(&s.source)
            .bind(&s.last_file)
            .bind(s.last_file_mtime.map(ms))
            .bind(s.last_success_at.map(ms))
            .bind(s.snapshot_size)
            .bind(s.gone)
            .bind(&s.refused)
            .execute(pool)
            .await
            .map(|_| ())
        })
        .map_err(StoreError::query("source_status_put"))
    }

    /// Records that a consent export from this source could not be read (`Some(why)`), or was read cleanly
    /// (`None`). While any of a partner's sources holds one, its data about people is held, across restarts
    /// and cycles that bring no new consent export.
    pub async fn source_consent_hold(&self, partner: &str, source: &str, why: Option<&str>) -> Result<()> {
        with_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO source_status (partner, source, gone, consent_unreadable) VALUES ($1, $2, 0, $3) \
                 ON CONFLICT (partner, source) DO UPDATE SET consent_unreadable = excluded.consent_unreadable",
            )
            .bind(partner)
            .bind(source)
            .bind(why)
            .execute(pool)
            .await
            .map(|_| ())
        })
        .map_err(StoreError::query("source_consent_hold"))
    }

    /// Why the partner's consent is unreadable, when one of its sources holds it so.
    pub async fn partner_consent_hold(&self, partner: &str) -> Result<Option<String>> {
        with_pool!(self, |pool| {
            sqlx::query_scalar(
                "SELECT consent_unreadable FROM source_status WHERE partner = $1 AND consent_unreadable IS NOT NULL \
                 ORDER BY source LIMIT 1",
            )
            .bind(partner)
            .fetch_optional(pool)
            .await
        })
        .map_err(StoreError::query("partner_consent_hold"))
    }

    /// Every source's status, by partner and source.
    pub async fn source_statuses(&self) -> Result<Vec<SourceStatus>> {
        type Row = (String, String, Option<String>, Option<i64>, Option<i64>, Option<i64>, i64, Option<String>);
        let rows: Vec<Row> = with_pool!(self, |pool| {
            sqlx::query_as(
                "SELECT partner, source, last_file, last_file_mtime, last_success_at, snapshot_size, gone, refused \
                 FROM source_status ORDER BY partner, source",
            )
            .fetch_all(pool)
            .await
        })
        .map_err(StoreError::query("source_statuses"))?;
        rows.into_iter()
            .map(|(partner, source, last_file, mtime, success, snapshot_size, gone, refused)| {
                Ok(SourceStatus {
                    partner,
                    source,
                    last_file,
                    last_file_mtime: mtime.map(|v| from_ms("source_status.last_file_mtime", v)).transpose()?,
                    last_success_at: success.map(|v| from_ms("source_status.last_success_at", v)).transpose()?,
                    snapshot_size,
                    gone,
                    refused,
                })
            })
            .collect()
    }
}
