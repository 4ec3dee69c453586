//! The ledger: what each destination holds of our resources (by our key and its remote id), the hash of what
//! the connector last sent, and what merging needs (the partner's fingerprints, the held and previous hashes).
//! Delivery writes it as it finishes a row (`outbox.rs`, in the same transaction); pull, reconcile and
//! retraction read, accept and forget here.

use crate::model::Provenance;
use chrono::{DateTime, Utc};

use super::{AuditEntry, Inner, KEY_CHUNK, ResourceKey, Result, Store, StoreError, consent, from_ms, ms, with_keys};

/// What a destination holds of one of our resources.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LedgerEntry {
    pub destination: String,
    pub key: ResourceKey,
    /// Equals `key.id` unless we linked to a pre-existing remote resource.
    pub remote_id: String,
    /// The server's `meta.versionId` / ETag after our last write.
    pub version_id: Option<String>,
    /// Hex sha256 of what we last sent (empty for a linked resource we never wrote).
    pub content_hash: String,
    /// Someone else's resource (e.g. a Patient a hospital created): we reference it, never write it.
    pub linked: bool,
    /// `"Patient/<our id>"` the resource belongs to.
    pub patient: Option<String>,
    pub updated_at: DateTime<Utc>,
    /// Where what was sent came from (`partner|category|nfp|patient`, as in the outbox).
    pub origin: Option<Provenance>,
    /// Salted hashes of each element of the partner's version last reflected there (JSON object): the base
    /// of a three-way merge on the partner's side. `None` for entries written before conflicts were tracked.
    pub source_fp: Option<String>,
    /// Hash of what the destination holds, as last known (written or accepted).
    pub held_hash: Option<String>,
    /// Hash of what the connector wrote before that: a destination holding it again holds a stale copy.
    pub prev_hash: Option<String>,
    /// The destination holds changes made there by others (kept): an update must read and merge first.
    pub remote_edits: bool,
    /// The version the connector itself last wrote (`version_id` moves on when others' changes are kept).
    pub sent_version: Option<String>,
}

/// A ledger row: read by column name (`sqlx::FromRow`), or from SQLite's one-row answer
/// ([`KEYS_LEDGER_ENTRIES_JSON`]), an array per entry in [`LEDGER_COLUMNS`] order, which is this field order.
#[derive(sqlx::FromRow, serde::Deserialize)]
pub(super) struct LedgerDb {
    destination: String,
    resource_type: String,
    resource_id: String,
    remote_id: String,
    version_id: Option<String>,
    content_hash: String,
    #[serde(deserialize_with = "flag")]
    linked: bool,
    patient: Option<String>,
    updated_at: i64,
    origin: Option<String>,
    source_fp: Option<String>,
    held_hash: Option<String>,
    prev_hash: Option<String>,
    #[serde(deserialize_with = "flag")]
    remote_edits: bool,
    sent_version: Option<String>,
}

/// A flag as SQLite's JSON gives it (0 or 1).
fn flag<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<bool, D::Error> {
    <i64 as serde::Deserialize>::deserialize(d).map(|n| n != 0)
}

impl LedgerDb {
    pub(super) fn into_entry(self) -> Result<LedgerEntry> {
        Ok(LedgerEntry {
            destination: self.destination,
            key: ResourceKey { resource_type: self.resource_type, id: self.resource_id },
            remote_id: self.remote_id,
            version_id: self.version_id,
            content_hash: self.content_hash,
            linked: self.linked,
            patient: self.patient,
            updated_at: from_ms("ledger.updated_at", self.updated_at)?,
            origin: self.origin.as_deref().map(Provenance::decode),
            source_fp: self.source_fp,
            held_hash: self.held_hash,
            prev_hash: self.prev_hash,
            remote_edits: self.remote_edits,
            sent_version: self.sent_version,
        })
    }
}

pub(super) const LEDGER_COLUMNS: &str = "destination, resource_type, resource_id, remote_id, version_id, content_hash, linked, \
     patient, updated_at, origin, source_fp, held_hash, prev_hash, remote_edits, sent_version";

/// What an upsert of the ledger does when the entry exists: every column but the key is replaced.
macro_rules! ledger_on_conflict {
    () => {
        "ON CONFLICT (destination, resource_type, resource_id) DO UPDATE SET remote_id = excluded.remote_id, \
         version_id = excluded.version_id, content_hash = excluded.content_hash, linked = excluded.linked, \
         patient = excluded.patient, updated_at = excluded.updated_at, origin = excluded.origin, \
         source_fp = excluded.source_fp, held_hash = excluded.held_hash, prev_hash = excluded.prev_hash, \
         remote_edits = excluded.remote_edits, sent_version = excluded.sent_version"
    };
}

/// [`LEDGER_UPSERT`]'s conflict clause, for multi-row inserts (SQLite's `complete`).
pub(super) const LEDGER_ON_CONFLICT: &str = ledger_on_conflict!();
/// The ledger's columns as [`bind_ledger`] binds them.
pub(super) const LEDGER_BOUND: usize = 15;

/// The insert or update of one ledger entry ([`bind_ledger`] binds it).
pub(super) const LEDGER_UPSERT: &str = concat!(
    "INSERT INTO ledger (destination, resource_type, resource_id, remote_id, \
     version_id, content_hash, linked, patient, updated_at, origin, source_fp, held_hash, prev_hash, remote_edits, \
     sent_version) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) ",
    ledger_on_conflict!()
);

/// The insert or update of many ledger entries at once (PostgreSQL): one array per column, in
/// [`LEDGER_COLUMNS`] order. The entries' keys must differ (one statement cannot update a row twice).
pub(super) const LEDGER_UPSERT_ARRAYS: &str = concat!(
    "INSERT INTO ledger (destination, resource_type, resource_id, remote_id, \
     version_id, content_hash, linked, patient, updated_at, origin, source_fp, held_hash, prev_hash, remote_edits, \
     sent_version) SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
     $7::bool[], $8::text[], $9::int8[], $10::text[], $11::text[], $12::text[], $13::text[], $14::bool[], \
     $15::text[]) ",
    ledger_on_conflict!()
);

/// Binds a ledger entry to [`LEDGER_UPSERT`]'s parameters: the values of [`ledger_row`], in its order.
pub(super) fn bind_ledger<'q, DB: sqlx::Database>(
    q: sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments>,
    e: &'q LedgerEntry,
) -> sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments>
where
    &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    &'q Option<String>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<String>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    bool: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    let r = ledger_row(e);
    q.bind(r.0)
        .bind(r.1)
        .bind(r.2)
        .bind(r.3)
        .bind(r.4)
        .bind(r.5)
        .bind(r.6)
        .bind(r.7)
        .bind(r.8)
        .bind(r.9)
        .bind(r.10)
        .bind(r.11)
        .bind(r.12)
        .bind(r.13)
        .bind(r.14)
}

/// A ledger entry's values in [`LEDGER_COLUMNS`] order, as stored: bound one by one ([`bind_ledger`]) or as
/// a row of a [`super::json_rows`] parameter (SQLite's `complete`).
#[allow(clippy::type_complexity)]
pub(super) fn ledger_row(
    e: &LedgerEntry,
) -> (
    &str,
    &str,
    &str,
    &str,
    &Option<String>,
    &str,
    bool,
    &Option<String>,
    i64,
    Option<String>,
    &Option<String>,
    &Option<String>,
    &Option<String>,
    bool,
    &Option<String>,
) {
    (
        &e.destination,
        &e.key.resource_type,
        &e.key.id,
        &e.remote_id,
        &e.version_id,
        &e.content_hash,
        e.linked,
        &e.patient,
        ms(e.updated_at),
        e.origin.as_ref().map(Provenance::encode),
        &e.source_fp,
        &e.held_hash,
        &e.prev_hash,
        e.remote_edits,
        &e.sent_version,
    )
}

pub(super) const KEYS_LEDGER_ENTRIES: &str = "SELECT l.* FROM k CROSS JOIN ledger l \
     WHERE l.resource_type = k.t AND l.resource_id = k.i AND l.destination = ";
/// [`KEYS_LEDGER_ENTRIES`] for SQLite, answered in one row: a JSON array with an array per entry, its columns
/// in [`LEDGER_COLUMNS`] order (read as [`LedgerDb`]). Row by row, each entry was a hand-off from SQLite's worker
/// thread (16 ms for 500 entries, reconcile's look-up of each page read).
pub(super) const KEYS_LEDGER_ENTRIES_JSON: &str = "SELECT json_group_array(json_array(l.destination, \
     l.resource_type, l.resource_id, l.remote_id, l.version_id, l.content_hash, l.linked, l.patient, l.updated_at, \
     l.origin, l.source_fp, l.held_hash, l.prev_hash, l.remote_edits, l.sent_version)) FROM k CROSS JOIN ledger l \
     WHERE l.resource_type = k.t AND l.resource_id = k.i AND l.destination = ";

impl Store {
    // -----------------------------------------------------------------------------------------------------
    // Ledger

    pub async fn ledger_get(&self, destination: &str, key: &ResourceKey) -> Result<Option<LedgerEntry>> {
        let row: Option<LedgerDb> = with_pool!(self, |pool| {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {LEDGER_COLUMNS} FROM ledger \
                 WHERE destination = $1 AND resource_type = $2 AND resource_id = $3"
            )))
            .bind(destination)
            .bind(&key.resource_type)
            .bind(&key.id)
            .fetch_optional(pool)
            .await
        })
        .map_err(StoreError::query("ledger_get"))?;
        row.map(LedgerDb::into_entry).transpose()
    }

    /// The entries that exist among `keys` (in no particular order; missing keys are left out).
    pub async fn ledger_get_many(&self, destination: &str, keys: &[ResourceKey]) -> Result<Vec<LedgerEntry>> {
        let mut out = Vec::with_capacity(keys.len());
        let what = "ledger_get_many";
        for chunk in keys.chunks(KEY_CHUNK) {
            let rows: Vec<LedgerDb> = match &self.inner {
                Inner::Sqlite(writer) => {
                    let pool = self.sqlite_reader(writer);
                    let mut qb = with_keys(chunk);
                    qb.push(KEYS_LEDGER_ENTRIES_JSON);
                    qb.push_bind(destination.to_string());
                    let all: String = qb.build_query_scalar().fetch_one(pool).await.map_err(StoreError::query(what))?;
                    serde_json::from_str(&all).map_err(|e| StoreError::Invalid(format!("{what}: {e}")))?
                }
                Inner::Postgres(pool) => {
                    let mut qb = with_keys(chunk);
                    qb.push(KEYS_LEDGER_ENTRIES);
                    qb.push_bind(destination.to_string());
                    qb.build_query_as().fetch_all(pool).await.map_err(StoreError::query(what))?
                }
            };
            for row in rows {
                out.push(row.into_entry()?);
            }
        }
        Ok(out)
    }

    /// Inserts or replaces the entry (e.g. when linking to a pre-existing Patient).
    pub async fn ledger_put(&self, entry: &LedgerEntry) -> Result<()> {
        with_pool!(self, |pool| {
            bind_ledger(sqlx::query(LEDGER_UPSERT), entry).execute(pool).await.map(|r| r.rows_affected())
        })
        .map_err(StoreError::query("ledger_put"))?;
        Ok(())
    }

    pub async fn ledger_count(&self, destination: &str) -> Result<u64> {
        let n: i64 = with_pool!(self, |pool| {
            sqlx::query_scalar("SELECT COUNT(*) FROM ledger WHERE destination = $1")
                .bind(destination)
                .fetch_one(pool)
                .await
        })
        .map_err(StoreError::query("ledger_count"))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    // -----------------------------------------------------------------------------------------------------
    // Ledger, for pull and reconcile

    /// Records what the destination now holds (a remote change accepted, or adopted by reconcile), with its
    /// audit entry in the same transaction.
    pub async fn ledger_accept(&self, entry: &LedgerEntry, audit: Option<&AuditEntry>) -> Result<()> {
        in_tx!(self, "ledger_accept", |tx| {
            bind_ledger(sqlx::query(LEDGER_UPSERT), entry)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::query("ledger_accept"))?;
            if let Some(a) = audit {
                consent::append_audit(&mut *tx, a).await?;
            }
        });
        Ok(())
    }

    /// Forgets what a destination holds of some resources, so the next plan sends them again.
    pub async fn ledger_forget(&self, destination: &str, keys: &[ResourceKey]) -> Result<u64> {
        let mut n = 0;
        for key in keys {
            n += with_pool!(self, |pool| {
                sqlx::query("DELETE FROM ledger WHERE destination = $1 AND resource_type = $2 AND resource_id = $3")
                    .bind(destination)
                    .bind(&key.resource_type)
                    .bind(&key.id)
                    .execute(pool)
                    .await
                    .map(|r| r.rows_affected())
            })
            .map_err(StoreError::query("ledger_forget"))?;
        }
        Ok(n)
    }

    /// The resource types a destination holds of ours.
    pub async fn ledger_types(&self, destination: &str) -> Result<Vec<String>> {
        with_pool!(self, |pool| {
            sqlx::query_scalar(
                "SELECT DISTINCT resource_type FROM ledger WHERE destination = $1 ORDER BY resource_type",
            )
            .bind(destination)
            .fetch_all(pool)
            .await
        })
        .map_err(StoreError::query("ledger_types"))
    }

    /// Entries whose remote id (not ours) is among `keys`: resources linked to someone else's. Pull and
    /// reconcile see remote ids.
    pub async fn ledger_by_remote_ids(&self, destination: &str, keys: &[ResourceKey]) -> Result<Vec<LedgerEntry>> {
        let mut out = Vec::new();
        for chunk in keys.chunks(KEY_CHUNK) {
            let rows: Vec<LedgerDb> = with_pool!(self, |pool| {
                let mut qb = with_keys(chunk);
                qb.push(
                    "SELECT l.* FROM k CROSS JOIN ledger l WHERE l.resource_type = k.t AND l.remote_id = k.i \
                     AND l.remote_id <> l.resource_id AND l.destination = ",
                );
                qb.push_bind(destination.to_string());
                qb.build_query_as().fetch_all(pool).await
            })
            .map_err(StoreError::query("ledger_by_remote_ids"))?;
            for r in rows {
                out.push(r.into_entry()?);
            }
        }
        Ok(out)
    }

    /// After our Patient `remote_id` was deleted from `destination`, when other partners' Patients were linked
    /// to it there (they would point at nothing): those links are forgotten, so each such Patient is sent again
    /// and finds, or creates, one that exists; and the person's other records there are marked to be planned
    /// again (their content hash emptied, as reconcile marks what it finds stale), so they go again with their
    /// references to that Patient. They are kept, not forgotten: the ledger is how a plan knows the destination
    /// holds them, and a partner whose plan now withholds them (the same refusal that deleted the Patient, or an
    /// agreement that ended) retracts only what the ledger says is there, however late that partner's plan
    /// runs. What is queued for deletion is left as it is. Returns how many entries were forgotten or marked.
    pub async fn relink_after_delete(&self, destination: &str, remote_id: &str, person: &str) -> Result<u64> {
        let n = in_tx!(self, "relink_after_delete", |tx| {
            let unlinked = sqlx::query(
                "DELETE FROM ledger WHERE destination = $1 AND resource_type = 'Patient' AND remote_id = $2 \
                 AND linked = TRUE",
            )
            .bind(destination)
            .bind(remote_id)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::query("relink_after_delete"))?
            .rows_affected();
            if unlinked == 0 {
                0
            } else {
                unlinked
                    + sqlx::query(
                        "UPDATE ledger SET content_hash = '' WHERE destination = $1 AND patient = $2 \
                         AND content_hash <> '' AND NOT EXISTS (\
                         SELECT 1 FROM outbox o WHERE o.destination = ledger.destination \
                         AND o.resource_type = ledger.resource_type AND o.resource_id = ledger.resource_id \
                         AND o.op = 'delete' AND o.dead = FALSE)",
                    )
                    .bind(destination)
                    .bind(person)
                    .execute(&mut *tx)
                    .await
                    .map_err(StoreError::query("relink_after_delete"))?
                    .rows_affected()
            }
        });
        Ok(n)
    }

    /// What every destination holds for `person`, by destination.
    pub async fn ledger_for_person(&self, person: &str) -> Result<Vec<LedgerEntry>> {
        let rows: Vec<LedgerDb> = with_pool!(self, |pool| {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {} FROM ledger WHERE patient = $1 ORDER BY destination, resource_type, resource_id",
                LEDGER_COLUMNS
            )))
            .bind(person)
            .fetch_all(pool)
            .await
        })
        .map_err(StoreError::query("ledger_for_person"))?;
        rows.into_iter().map(LedgerDb::into_entry).collect()
    }
}

/// Binds ledger entries to [`LEDGER_UPSERT_ARRAYS`]'s parameters (one array per column).
pub(super) fn bind_ledger_arrays<'q>(
    q: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    entries: &[&LedgerEntry],
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    fn col<T>(entries: &[&LedgerEntry], f: impl Fn(&LedgerEntry) -> T) -> Vec<T> {
        entries.iter().map(|e| f(e)).collect()
    }
    q.bind(col(entries, |e| e.destination.clone()))
        .bind(col(entries, |e| e.key.resource_type.clone()))
        .bind(col(entries, |e| e.key.id.clone()))
        .bind(col(entries, |e| e.remote_id.clone()))
        .bind(col(entries, |e| e.version_id.clone()))
        .bind(col(entries, |e| e.content_hash.clone()))
        .bind(col(entries, |e| e.linked))
        .bind(col(entries, |e| e.patient.clone()))
        .bind(col(entries, |e| ms(e.updated_at)))
        .bind(col(entries, |e| e.origin.as_ref().map(Provenance::encode)))
        .bind(col(entries, |e| e.source_fp.clone()))
        .bind(col(entries, |e| e.held_hash.clone()))
        .bind(col(entries, |e| e.prev_hash.clone()))
        .bind(col(entries, |e| e.remote_edits))
        .bind(col(entries, |e| e.sent_version.clone()))
}
