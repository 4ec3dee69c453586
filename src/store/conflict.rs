//! Conflicts (a resource changed both by its partner and on the destination) and reconcile's expected set.
//! A conflict keeps three versions of the resource (personal data) while it is open; resolving it clears them.

use crate::model::Provenance;
use chrono::{DateTime, Utc};

use super::{
    AuditEntry, Inner, KEY_CHUNK, LedgerEntry, ResourceKey, Result, Store, StoreError, bind_ledger, consent, from_ms,
    limit, ms, with_keys,
};
use crate::model::ConflictStatus;

/// One conflict as stored.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize)]
pub struct ConflictRecord {
    pub id: i64,
    pub destination: String,
    pub resource_type: String,
    pub resource_id: String,
    /// The id on the destination (ours unless linked).
    pub remote_id: String,
    pub patient: Option<String>,
    pub origin: Option<Provenance>,
    /// Elements changed on both sides to different values.
    pub elements: Vec<String>,
    /// The version the connector last wrote or accepted, and its content when the destination still has it.
    pub base_version: Option<String>,
    pub base_json: Option<String>,
    pub source_hash: String,
    pub source_json: Option<String>,
    pub remote_version: Option<String>,
    pub remote_json: Option<String>,
    /// open | resolved
    pub status: ConflictStatus,
    /// source | remote | retracted
    pub resolution: Option<String>,
    pub resolved_by: Option<String>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl ConflictRecord {
    pub fn key(&self) -> ResourceKey {
        ResourceKey::new(&self.resource_type, &self.resource_id)
    }
}

#[derive(sqlx::FromRow)]
struct ConflictDb {
    id: i64,
    destination: String,
    resource_type: String,
    resource_id: String,
    remote_id: String,
    patient: Option<String>,
    origin: Option<String>,
    elements: String,
    base_version: Option<String>,
    base_json: Option<String>,
    source_hash: String,
    source_json: Option<String>,
    remote_version: Option<String>,
    remote_json: Option<String>,
    status: String,
    resolution: Option<String>,
    resolved_by: Option<String>,
    resolved_at: Option<i64>,
    created_at: i64,
    updated_at: i64,
}

impl ConflictDb {
    fn into_record(self) -> Result<ConflictRecord> {
        Ok(ConflictRecord {
            id: self.id,
            destination: self.destination,
            resource_type: self.resource_type,
            resource_id: self.resource_id,
            remote_id: self.remote_id,
            patient: self.patient,
            origin: self.origin.as_deref().map(Provenance::decode),
            elements: serde_json::from_str(&self.elements)
                .map_err(|e| StoreError::Corrupt { what: "conflicts.elements", detail: e.to_string() })?,
            base_version: self.base_version,
            base_json: self.base_json,
            source_hash: self.source_hash,
            source_json: self.source_json,
            remote_version: self.remote_version,
            remote_json: self.remote_json,
            status: ConflictStatus::parse(&self.status).ok_or_else(|| StoreError::Corrupt {
                what: "conflicts.status",
                detail: format!("unknown status {:?}", self.status),
            })?,
            resolution: self.resolution,
            resolved_by: self.resolved_by,
            resolved_at: self.resolved_at.map(|t| from_ms("conflicts.resolved_at", t)).transpose()?,
            created_at: from_ms("conflicts.created_at", self.created_at)?,
            updated_at: from_ms("conflicts.updated_at", self.updated_at)?,
        })
    }
}

/// A resource reconcile expects a destination to hold (handed from planning to reconcile; not stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub key: ResourceKey,
    pub content_hash: String,
    pub partner: String,
}

impl Store {
    /// Records a conflict, or refreshes the open one for the same resource (a newer partner version, a newer
    /// remote version). Appends `audit` when the conflict is new. Returns the conflict's id and whether it is new.
    pub async fn conflict_open(&self, c: &ConflictRecord, audit: &AuditEntry) -> Result<(i64, bool)> {
        let elements = serde_json::to_string(&c.elements).unwrap_or_else(|_| "[]".into());
        let now = ms(c.updated_at);
        let out = in_tx!(self, "conflict_open", |tx| {
            let existing: Option<i64> = sqlx::query_scalar(
                "SELECT id FROM conflicts WHERE destination = $1 AND resource_type = $2 AND resource_id = $3 \
                 AND status = 'open'",
            )
            .bind(&c.destination)
            .bind(&c.resource_type)
            .bind(&c.resource_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(StoreError::query("conflict_open: looking for an open conflict"))?;
            match existing {
                Some(id) => {
                    sqlx::query(
                        "UPDATE conflicts SET elements = $2, source_hash = $3, source_json = $4, \
                         remote_version = $5, remote_json = $6, updated_at = $7 WHERE id = $1",
                    )
                    .bind(id)
                    .bind(&elements)
                    .bind(&c.source_hash)
                    .bind(&c.source_json)
                    .bind(&c.remote_version)
                    .bind(&c.remote_json)
                    .bind(now)
                    .execute(&mut *tx)
                    .await
                    .map_err(StoreError::query("conflict_open: refreshing"))?;
                    (id, false)
                }
                None => {
                    let id: i64 = sqlx::query_scalar(
                        "INSERT INTO conflicts (destination, resource_type, resource_id, remote_id, patient, origin, \
                         elements, base_version, base_json, source_hash, source_json, remote_version, remote_json, \
                         status, created_at, updated_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, 'open', $14, $14) RETURNING id",
                    )
                    .bind(&c.destination)
                    .bind(&c.resource_type)
                    .bind(&c.resource_id)
                    .bind(&c.remote_id)
                    .bind(&c.patient)
                    .bind(c.origin.as_ref().map(Provenance::encode))
                    .bind(&elements)
                    .bind(&c.base_version)
                    .bind(&c.base_json)
                    .bind(&c.source_hash)
                    .bind(&c.source_json)
                    .bind(&c.remote_version)
                    .bind(&c.remote_json)
                    .bind(now)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(StoreError::query("conflict_open: inserting"))?;
                    let mut a = audit.clone();
                    a.reason = Some(format!("conflict {id}: {}", a.reason.clone().unwrap_or_default()));
                    consent::append_audit(&mut *tx, &a).await?;
                    (id, true)
                }
            }
        });
        Ok(out)
    }

    /// The open conflict for a resource at a destination, if any.
    pub async fn conflict_open_for(&self, destination: &str, key: &ResourceKey) -> Result<Option<ConflictRecord>> {
        let row: Option<ConflictDb> = with_pool!(self, |pool| {
            sqlx::query_as(
                "SELECT * FROM conflicts WHERE destination = $1 AND resource_type = $2 AND resource_id = $3 \
                 AND status = 'open'",
            )
            .bind(destination)
            .bind(&key.resource_type)
            .bind(&key.id)
            .fetch_optional(pool)
            .await
        })
        .map_err(StoreError::query("conflict_open_for"))?;
        row.map(ConflictDb::into_record).transpose()
    }

    /// Which of `keys` have an open conflict at `destination`.
    pub async fn conflicts_open_among(
        &self,
        destination: &str,
        keys: &[ResourceKey],
    ) -> Result<std::collections::HashSet<ResourceKey>> {
        let mut out = std::collections::HashSet::new();
        for chunk in keys.chunks(KEY_CHUNK) {
            let rows: Vec<(String, String)> = with_read_pool!(self, |pool| {
                let mut qb = with_keys(chunk);
                qb.push(
                    "SELECT c.resource_type, c.resource_id FROM k CROSS JOIN conflicts c \
                     WHERE c.resource_type = k.t AND c.resource_id = k.i AND c.status = 'open' AND c.destination = ",
                );
                qb.push_bind(destination.to_string());
                qb.build_query_as().fetch_all(pool).await
            })
            .map_err(StoreError::query("conflicts_open_among"))?;
            out.extend(rows.into_iter().map(|(t, i)| ResourceKey::new(t, i)));
        }
        Ok(out)
    }

    /// Open conflicts per destination.
    pub async fn conflicts_open_count(&self) -> Result<Vec<(String, i64)>> {
        with_pool!(self, |pool| {
            sqlx::query_as(
                "SELECT destination, COUNT(*) FROM conflicts WHERE status = 'open' GROUP BY destination ORDER BY destination",
            )
            .fetch_all(pool)
            .await
        })
        .map_err(StoreError::query("conflicts_open_count"))
    }

    pub async fn conflict_get(&self, id: i64) -> Result<Option<ConflictRecord>> {
        let row: Option<ConflictDb> = with_pool!(self, |pool| {
            sqlx::query_as("SELECT * FROM conflicts WHERE id = $1").bind(id).fetch_optional(pool).await
        })
        .map_err(StoreError::query("conflict_get"))?;
        row.map(ConflictDb::into_record).transpose()
    }

    /// Conflicts, oldest first: only open ones unless `all`.
    pub async fn conflicts_list(
        &self,
        all: bool,
        destination: Option<&str>,
        max: usize,
    ) -> Result<Vec<ConflictRecord>> {
        let rows: Vec<ConflictDb> = with_pool!(self, |pool| {
            let mut qb = sqlx::QueryBuilder::new("SELECT * FROM conflicts WHERE 1 = 1");
            if !all {
                qb.push(" AND status = 'open'");
            }
            if let Some(d) = destination {
                qb.push(" AND destination = ");
                qb.push_bind(d.to_string());
            }
            qb.push(" ORDER BY id LIMIT ");
            qb.push_bind(limit(max));
            qb.build_query_as().fetch_all(pool).await
        })
        .map_err(StoreError::query("conflicts_list"))?;
        rows.into_iter().map(ConflictDb::into_record).collect()
    }

    /// Marks a conflict resolved and, in the same transaction, records the ledger entry that follows from the
    /// decision and its audit entry. The three versions are cleared: they were kept only for the decision.
    /// Fails with [`StoreError::Invalid`] when the conflict is not open (someone resolved it meanwhile).
    pub async fn conflict_resolve(
        &self,
        id: i64,
        resolution: &str,
        by: &str,
        ledger: &LedgerEntry,
        audits: &[AuditEntry],
        now: DateTime<Utc>,
    ) -> Result<()> {
        in_tx!(self, "conflict_resolve", |tx| {
            let n = sqlx::query(
                "UPDATE conflicts SET status = 'resolved', resolution = $2, resolved_by = $3, resolved_at = $4, \
                 updated_at = $4, base_json = NULL, source_json = NULL, remote_json = NULL \
                 WHERE id = $1 AND status = 'open'",
            )
            .bind(id)
            .bind(resolution)
            .bind(by)
            .bind(ms(now))
            .execute(&mut *tx)
            .await
            .map_err(StoreError::query("conflict_resolve"))?
            .rows_affected();
            if n == 0 {
                return Err(StoreError::Invalid(format!("conflict {id} is not open")));
            }
            bind_ledger(sqlx::query(super::LEDGER_UPSERT), ledger)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::query("conflict_resolve: writing the ledger"))?;
            for audit in audits {
                consent::append_audit(&mut *tx, audit).await?;
            }
        });
        // The versions just cleared hold personal data.
        self.checkpoint().await
    }

    // -----------------------------------------------------------------------------------------------------
    // Reconcile's expected set: held in memory by reconcile now; the table is only emptied, of what a run of an
    // earlier version may have left there.

    /// Empties a destination's rows of the `expected` table.
    pub async fn expected_clear(&self, destination: &str) -> Result<()> {
        with_pool!(self, |pool| {
            sqlx::query("DELETE FROM expected WHERE destination = $1").bind(destination).execute(pool).await.map(|_| ())
        })
        .map_err(StoreError::query("expected_clear"))?;
        Ok(())
    }
}
