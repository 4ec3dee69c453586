//! The quarantine: source rows the mapper rejected, kept (personal data) until replayed or purged.

use chrono::{DateTime, Utc};

use super::{Inner, Result, Store, StoreError, from_ms, limit, ms, sha256_hex};

/// A row the mapper rejected. `raw_json` is the source row: personal data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuarantineRecord {
    pub partner: String,
    pub kind: String,
    pub file: String,
    pub row: i64,
    pub key: Option<String>,
    pub reasons_json: String,
    pub raw_json: String,
    pub created_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct QuarantineDb {
    id: i64,
    partner: String,
    kind: String,
    file: String,
    source_row: i64,
    record_key: Option<String>,
    reasons_json: String,
    raw_json: String,
    created_at: i64,
}

impl QuarantineDb {
    fn into_record(self) -> Result<(i64, QuarantineRecord)> {
        Ok((
            self.id,
            QuarantineRecord {
                partner: self.partner,
                kind: self.kind,
                file: self.file,
                row: self.source_row,
                key: self.record_key,
                reasons_json: self.reasons_json,
                raw_json: self.raw_json,
                created_at: from_ms("quarantine.created_at", self.created_at)?,
            },
        ))
    }
}

const QUARANTINE_COLUMNS: &str = "id, partner, kind, file, source_row, record_key, reasons_json, raw_json, created_at";

impl Store {
    // -----------------------------------------------------------------------------------------------------
    // Quarantine

    /// Keeps a rejected row. The same row rejected again (same partner, kind, file, row and content) is kept
    /// once, with the latest reasons; it keeps the id and date it was first quarantined under.
    pub async fn quarantine_put(&self, q: &QuarantineRecord) -> Result<i64> {
        with_pool!(self, |pool| {
            sqlx::query_scalar(
                "INSERT INTO quarantine (partner, kind, file, source_row, record_key, reasons_json, raw_json, \
                 created_at, raw_hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                 ON CONFLICT (partner, kind, file, source_row, raw_hash) \
                 DO UPDATE SET reasons_json = excluded.reasons_json, record_key = excluded.record_key RETURNING id",
            )
            .bind(&q.partner)
            .bind(&q.kind)
            .bind(&q.file)
            .bind(q.row)
            .bind(&q.key)
            .bind(&q.reasons_json)
            .bind(&q.raw_json)
            .bind(ms(q.created_at))
            .bind(sha256_hex(&q.raw_json))
            .fetch_one(pool)
            .await
        })
        .map_err(StoreError::query("quarantine_put"))
    }

    /// Quarantined rows, oldest first, of one partner or all.
    pub async fn quarantine_list(&self, partner: Option<&str>, limit: usize) -> Result<Vec<(i64, QuarantineRecord)>> {
        let rows: Vec<QuarantineDb> = with_pool!(self, |pool| {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {QUARANTINE_COLUMNS} FROM quarantine WHERE ($1 IS NULL OR partner = $1) \
                 ORDER BY id LIMIT $2"
            )))
            .bind(partner)
            .bind(self::limit(limit))
            .fetch_all(pool)
            .await
        })
        .map_err(StoreError::query("quarantine_list"))?;
        rows.into_iter().map(QuarantineDb::into_record).collect()
    }

    /// How many rows wait in the quarantine, by partner (partners with none are left out).
    pub async fn quarantine_counts(&self) -> Result<Vec<(String, i64)>> {
        with_pool!(self, |pool| {
            sqlx::query_as("SELECT partner, COUNT(*) FROM quarantine GROUP BY partner ORDER BY partner")
                .fetch_all(pool)
                .await
        })
        .map_err(StoreError::query("quarantine_counts"))
    }

    pub async fn quarantine_get(&self, id: i64) -> Result<Option<QuarantineRecord>> {
        let row: Option<QuarantineDb> = with_pool!(self, |pool| {
            sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {QUARANTINE_COLUMNS} FROM quarantine WHERE id = $1")))
                .bind(id)
                .fetch_optional(pool)
                .await
        })
        .map_err(StoreError::query("quarantine_get"))?;
        Ok(row.map(QuarantineDb::into_record).transpose()?.map(|(_, r)| r))
    }

    /// Deletes a quarantined row (after replay, or to purge it), leaving none of its content in the SQLite
    /// file or WAL. `false` if there was none.
    pub async fn quarantine_delete(&self, id: i64) -> Result<bool> {
        let n = with_pool!(self, |pool| {
            sqlx::query("DELETE FROM quarantine WHERE id = $1").bind(id).execute(pool).await.map(|r| r.rows_affected())
        })
        .map_err(StoreError::query("quarantine_delete"))?;
        if n > 0 {
            self.checkpoint().await?;
        }
        Ok(n > 0)
    }
}
