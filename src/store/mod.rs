//! State store: the connector's durable memory, in SQLite (embedded default: one file, WAL mode) or PostgreSQL
//! (several connector instances sharing the work). It owns the ledger (what each destination holds of our
//! resources and the hash of what we last sent), the outbox (planned writes, leased to delivery workers),
//! job runs (for `connector status`), leader election for the scheduler, and the quarantine.
//!
//! The schema lives in `migrations/sqlite` and `migrations/postgres`, embedded in the binary and applied by
//! [`Store::connect`], which refuses a database migrated by a newer connector. Times are stored as unix
//! milliseconds, so they come back truncated to the millisecond.
//!
//! Data protection: the schema keeps ids and hashes, not personal data, with three exceptions that must hold
//! content: `outbox.body` (the FHIR JSON waiting to be sent; deleted once delivered), `outbox.last_error` (a
//! server's OperationOutcome, which may quote the resource) and `quarantine.raw_json` (the rejected source row,
//! kept until replayed or purged). Backups of the state database are therefore personal data.
//!
//! Guarantees the rest of the pipeline relies on:
//! - [`Store::enqueue`] with input that matches the ledger and the pending outbox issues no statement that
//!   modifies a row (it only reads), so a cycle with unchanged input writes nothing.
//! - [`Store::lease`] hands a row to one worker at a time (PostgreSQL: `FOR UPDATE SKIP LOCKED`; SQLite: one
//!   `IMMEDIATE` transaction) and keeps each patient's writes in `seq` order, as long as workers finish (or
//!   give up on) a row before its lease runs out.
//!
//! The store does not know FHIR: the planner decides what to write and must not plan writes for ledger
//! entries that are `linked` (someone else's resource).

mod error;
mod plan;
mod postgres;
mod sqlite;
#[cfg(test)]
mod tests;

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgPool, SqlitePool};

pub use audit::{Break, ChainReport};
pub use conflict::{ConflictRecord, Expected};
pub use consent::{AuditEntry, AuditFilter, StatementRecord, UNREADABLE, consent_today, prevails};
pub use error::StoreError;
use error::redact_url;
pub use feed::FeedItem;
pub use intent::SendIntent;
use plan::{KeyState, StoredRow};

/// `Result` with a [`StoreError`].
pub type Result<T> = std::result::Result<T, StoreError>;

/// Which database a [`Store`] runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        })
    }
}

/// One of our resources, by its deterministic id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ResourceKey {
    pub resource_type: String,
    pub id: String,
}

impl ResourceKey {
    pub fn new(resource_type: impl Into<String>, id: impl Into<String>) -> Self {
        Self { resource_type: resource_type.into(), id: id.into() }
    }
}

impl fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.resource_type, self.id)
    }
}

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
    pub origin: Option<String>,
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

/// What a planned write does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Upsert,
    Delete,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Upsert => "upsert",
            Op::Delete => "delete",
        }
    }

    fn parse(s: &str) -> Result<Op> {
        match s {
            "upsert" => Ok(Op::Upsert),
            "delete" => Ok(Op::Delete),
            other => Err(StoreError::Corrupt { what: "outbox.op", detail: format!("unknown op {other:?}") }),
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A planned write.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxItem {
    pub destination: String,
    pub key: ResourceKey,
    /// Ordering group: writes for one patient go out in `seq` order. `None`: independent.
    pub patient: Option<String>,
    pub op: Op,
    pub content_hash: String,
    /// The FHIR JSON to send; required for [`Op::Upsert`], ignored (stored as NULL) for [`Op::Delete`].
    pub body: Option<String>,
    /// Where it came from, for the policy check before sending (`partner|category|nfp`); opaque to the store.
    pub origin: Option<String>,
}

/// A row of the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRow {
    pub seq: i64,
    pub item: OutboxItem,
    pub attempts: i32,
    pub not_before: DateTime<Utc>,
    pub last_error: Option<String>,
    pub dead: bool,
    pub created_at: DateTime<Utc>,
}

/// Outbox size of one destination (destinations with no rows are not listed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueDepth {
    pub destination: String,
    /// Rows waiting to be sent (including leased and backing-off rows).
    pub pending: u64,
    /// Dead letters waiting for an admin.
    pub dead: u64,
    /// `created_at` of the oldest pending row: how long the oldest undelivered change has waited.
    pub oldest_pending: Option<DateTime<Utc>>,
}

/// The latest run of one job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRun {
    pub run_id: i64,
    pub job: String,
    pub started_at: DateTime<Utc>,
    /// `None` while running (or when the process died during the run).
    pub finished_at: Option<DateTime<Utc>>,
    pub ok: Option<bool>,
    pub detail: Option<String>,
}

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

/// The connector's state database. Cheap to clone (a pool handle).
#[derive(Clone)]
pub struct Store {
    inner: Inner,
    /// This installation's salt for element fingerprints (from the `settings` table).
    salt: std::sync::Arc<str>,
}

#[derive(Clone)]
enum Inner {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").field("backend", &self.backend()).finish_non_exhaustive()
    }
}

/// Runs `$body` with `$pool` bound to the backend's pool. SQL shared by both backends uses `$n` parameters
/// (SQLite accepts them too), `TRUE`/`FALSE` literals and standard upserts, so one text serves both.
macro_rules! with_pool {
    ($store:expr, |$pool:ident| $body:expr) => {
        match &$store.inner {
            Inner::Sqlite($pool) => $body,
            Inner::Postgres($pool) => $body,
        }
    };
}

/// Runs `$body` inside a transaction `$tx` (SQLite: `BEGIN IMMEDIATE`, so the write lock is taken up front
/// and a concurrent writer waits on `busy_timeout` instead of failing on a stale snapshot).
macro_rules! in_tx {
    ($store:expr, $op:literal, |$tx:ident| $body:expr) => {
        match &$store.inner {
            Inner::Sqlite(pool) => {
                let mut $tx = pool.begin_with("BEGIN IMMEDIATE").await.map_err(StoreError::query($op))?;
                let out = $body;
                $tx.commit().await.map_err(StoreError::query($op))?;
                out
            }
            Inner::Postgres(pool) => {
                let mut $tx = pool.begin().await.map_err(StoreError::query($op))?;
                let out = $body;
                $tx.commit().await.map_err(StoreError::query($op))?;
                out
            }
        }
    };
}

/// Inside a transaction `$tx`, removes a delivered outbox row (see [`ROW_DONE`]), or clears its lease when a
/// newer plan replaced it meanwhile. `$op` names the operation in errors.
macro_rules! finish_leased_row {
    ($tx:ident, $row:expr, $op:literal) => {{
        let row: &OutboxRow = $row;
        let mut done = 0;
        for sql in ROW_DONE {
            done = sqlx::query(sql)
                .bind(row.seq)
                .bind(row.item.op.as_str())
                .bind(&row.item.content_hash)
                .execute(&mut *$tx)
                .await
                .map_err(StoreError::query(concat!($op, ": removing the outbox row")))?
                .rows_affected();
            if done > 0 {
                break;
            }
        }
        if done == 0 {
            sqlx::query(CLEAR_LEASE_BY_TOKEN)
                .bind(row.seq)
                .execute(&mut *$tx)
                .await
                .map_err(StoreError::query(concat!($op, ": releasing the replaced outbox row")))?;
        }
    }};
}

// Declared after the macros above, which they use.
mod audit;
mod conflict;
mod consent;
mod feed;
mod intent;

// ---------------------------------------------------------------------------------------------------------
// Row shapes as stored; converted to the public types (validating what came from disk).

pub(crate) const OUTBOX_COLUMNS: &str = "seq, destination, resource_type, resource_id, patient, op, content_hash, \
     body, attempts, not_before, last_error, dead, created_at, origin";

#[derive(sqlx::FromRow)]
pub(crate) struct OutboxDb {
    seq: i64,
    destination: String,
    resource_type: String,
    resource_id: String,
    patient: Option<String>,
    op: String,
    content_hash: String,
    body: Option<String>,
    attempts: i32,
    not_before: i64,
    last_error: Option<String>,
    dead: bool,
    created_at: i64,
    origin: Option<String>,
}

impl OutboxDb {
    pub(crate) fn into_row(self) -> Result<OutboxRow> {
        Ok(OutboxRow {
            seq: self.seq,
            item: OutboxItem {
                destination: self.destination,
                key: ResourceKey { resource_type: self.resource_type, id: self.resource_id },
                patient: self.patient,
                op: Op::parse(&self.op)?,
                content_hash: self.content_hash,
                body: self.body,
                origin: self.origin,
            },
            attempts: self.attempts,
            not_before: from_ms("outbox.not_before", self.not_before)?,
            last_error: self.last_error,
            dead: self.dead,
            created_at: from_ms("outbox.created_at", self.created_at)?,
        })
    }
}

pub(crate) fn outbox_rows(rows: Vec<OutboxDb>) -> Result<Vec<OutboxRow>> {
    let mut out = rows.into_iter().map(OutboxDb::into_row).collect::<Result<Vec<_>>>()?;
    out.sort_by_key(|r| r.seq);
    Ok(out)
}

#[derive(sqlx::FromRow)]
struct LedgerDb {
    destination: String,
    resource_type: String,
    resource_id: String,
    remote_id: String,
    version_id: Option<String>,
    content_hash: String,
    linked: bool,
    patient: Option<String>,
    updated_at: i64,
    origin: Option<String>,
    source_fp: Option<String>,
    held_hash: Option<String>,
    prev_hash: Option<String>,
    remote_edits: bool,
    sent_version: Option<String>,
}

impl LedgerDb {
    fn into_entry(self) -> Result<LedgerEntry> {
        Ok(LedgerEntry {
            destination: self.destination,
            key: ResourceKey { resource_type: self.resource_type, id: self.resource_id },
            remote_id: self.remote_id,
            version_id: self.version_id,
            content_hash: self.content_hash,
            linked: self.linked,
            patient: self.patient,
            updated_at: from_ms("ledger.updated_at", self.updated_at)?,
            origin: self.origin,
            source_fp: self.source_fp,
            held_hash: self.held_hash,
            prev_hash: self.prev_hash,
            remote_edits: self.remote_edits,
            sent_version: self.sent_version,
        })
    }
}

#[derive(sqlx::FromRow)]
struct JobRunDb {
    id: i64,
    job: String,
    started_at: i64,
    finished_at: Option<i64>,
    ok: Option<bool>,
    detail: Option<String>,
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

#[derive(sqlx::FromRow)]
struct DepthDb {
    destination: String,
    pending: i64,
    dead: i64,
    oldest_pending: Option<i64>,
}

pub(crate) fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub(crate) fn from_ms(what: &'static str, v: i64) -> Result<DateTime<Utc>> {
    DateTime::from_timestamp_millis(v)
        .ok_or_else(|| StoreError::Corrupt { what, detail: format!("{v} is not a time in unix milliseconds") })
}

fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Keys per statement when looking up many at once: 2 parameters each, well under SQLite's limit of 32766
/// variables (and PostgreSQL's 65535).
pub(crate) const KEY_CHUNK: usize = 500;

/// Starts a query with `WITH k(t, i) AS (VALUES ($1, $2), ...)` holding `keys`, to be joined on
/// (resource_type, resource_id) as `FROM k CROSS JOIN <table>`: SQLite then loops over the keys and looks
/// each one up in the index (`CROSS JOIN` fixes that order in SQLite; PostgreSQL plans it freely). A
/// row-value `IN (VALUES ...)` list, or letting SQLite choose, checks every row of the destination instead:
/// 100 times slower at 10 000 rows.
fn with_keys<'k, DB: sqlx::Database>(keys: impl IntoIterator<Item = &'k ResourceKey>) -> sqlx::QueryBuilder<DB>
where
    DB::Arguments: Default,
    String: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    let mut qb = sqlx::QueryBuilder::new("WITH k(t, i) AS (VALUES ");
    let mut first = true;
    for key in keys {
        if !first {
            qb.push(", ");
        }
        first = false;
        qb.push("(");
        qb.push_bind(key.resource_type.clone());
        qb.push(", ");
        qb.push_bind(key.id.clone());
        qb.push(")");
    }
    qb.push(") ");
    qb
}

impl Store {
    /// Opens the state database and brings its schema up to date.
    ///
    /// `url`: `sqlite:///abs/path/state.db`, `sqlite://relative/state.db`, `sqlite::memory:` (tests) or
    /// `postgres://...`. A missing SQLite file (and its directory) is created; SQLite runs in WAL mode with a
    /// busy timeout and foreign keys on. Fails with [`StoreError::SchemaTooNew`] when the database was
    /// migrated by a newer connector.
    pub async fn connect(url: &str) -> Result<Store> {
        let inner = if url.starts_with("sqlite:") {
            Inner::Sqlite(sqlite::connect(url).await?)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Inner::Postgres(postgres::connect(url).await?)
        } else {
            return Err(StoreError::BadUrl {
                url: redact_url(url),
                reason: "the scheme must be sqlite: or postgres://".into(),
            });
        };
        let mut store = Store { inner, salt: std::sync::Arc::from("") };
        let salt: String = with_pool!(store, |pool| {
            sqlx::query_scalar("SELECT value FROM settings WHERE name = 'fingerprint_salt'").fetch_one(pool).await
        })
        .map_err(StoreError::query("reading the fingerprint salt"))?;
        store.salt = std::sync::Arc::from(salt.as_str());
        Ok(store)
    }

    /// The installation's salt for element fingerprints.
    pub fn salt(&self) -> &str {
        &self.salt
    }

    pub fn backend(&self) -> Backend {
        match self.inner {
            Inner::Sqlite(_) => Backend::Sqlite,
            Inner::Postgres(_) => Backend::Postgres,
        }
    }

    /// Closes the pool, waiting for connections in use to be returned. Leader guards hold their own
    /// connection and are not affected.
    pub async fn close(&self) {
        with_pool!(self, |pool| pool.close().await)
    }

    // -----------------------------------------------------------------------------------------------------
    // Planning

    /// Plans writes. Per item, atomically: when the destination already holds this content (ledger hash
    /// equal; for a delete: no ledger entry) nothing is queued and a pending row for the key is cancelled
    /// (or, if a worker is sending it right now, replaced so the target state is restored after it); when a
    /// pending row holds the same op and hash nothing happens; when it holds something else it is replaced
    /// in place with a new, higher `seq` (attempts 0, due now, lease kept so an in-flight send of the old
    /// content finishes first); otherwise a row is inserted, superseding any dead letter for the key. A dead
    /// letter with the same op and hash blocks re-queueing: it waits for an admin (`outbox retry`).
    ///
    /// When the same (destination, key) appears more than once in `items`, the last one counts.
    /// Returns how many rows were inserted, replaced or cancelled. When that is 0, nothing was written:
    /// the decision is made by reading only, and the writing transaction is begun only when something
    /// changes.
    pub async fn enqueue(&self, items: &[OutboxItem], now: DateTime<Utc>) -> Result<usize> {
        for item in items {
            if item.op == Op::Upsert && item.body.is_none() {
                return Err(StoreError::Invalid(format!(
                    "upsert of {} for {} has no body",
                    item.key, item.destination
                )));
            }
        }
        let now = ms(now);
        let items = plan::last_per_key(items);
        if items.is_empty() {
            return Ok(0);
        }
        // Read-only pass: the current state of every key, in chunks.
        let states = self.key_states(&items).await?;
        let todo: Vec<&OutboxItem> = items
            .iter()
            .zip(&states)
            .filter(|(item, state)| plan::decide(state, item, now) != plan::Action::Nothing)
            .map(|(item, _)| *item)
            .collect();
        if todo.is_empty() {
            return Ok(0);
        }
        // Writing pass: re-read each key under lock and apply what is still needed.
        let mut changed = 0;
        for chunk in todo.chunks(KEY_CHUNK) {
            changed += match &self.inner {
                Inner::Sqlite(pool) => sqlite::apply(pool, chunk, now).await?,
                Inner::Postgres(pool) => postgres::apply(pool, chunk, now).await?,
            };
        }
        Ok(changed)
    }

    /// The ledger hash and outbox rows of each item's key, in the order of `items`.
    async fn key_states(&self, items: &[&OutboxItem]) -> Result<Vec<KeyState>> {
        use std::collections::HashMap;
        let mut by_dest: HashMap<&str, Vec<&ResourceKey>> = HashMap::new();
        for item in items {
            by_dest.entry(&item.destination).or_default().push(&item.key);
        }
        // (destination, type, id) -> state
        let mut states: HashMap<(String, String, String), KeyState> = HashMap::new();
        for (dest, keys) in by_dest {
            for chunk in keys.chunks(KEY_CHUNK) {
                let hashes: Vec<(String, String, String)> = with_pool!(self, |pool| {
                    let mut qb = with_keys(chunk.iter().copied());
                    qb.push(KEYS_LEDGER_HASHES);
                    qb.push_bind(dest.to_string());
                    qb.build_query_as().fetch_all(pool).await
                })
                .map_err(StoreError::query("enqueue: reading the ledger"))?;
                for (resource_type, id, hash) in hashes {
                    states.entry((dest.to_string(), resource_type, id)).or_default().ledger_hash = Some(hash);
                }
                let rows: Vec<StoredRow> = with_pool!(self, |pool| {
                    let mut qb = with_keys(chunk.iter().copied());
                    qb.push(KEYS_OUTBOX_ROWS);
                    qb.push_bind(dest.to_string());
                    qb.build_query_as().fetch_all(pool).await
                })
                .map_err(StoreError::query("enqueue: reading the outbox"))?;
                for row in rows {
                    let key = (dest.to_string(), row.resource_type.clone(), row.resource_id.clone());
                    states.entry(key).or_default().add(row)?;
                }
            }
        }
        Ok(items
            .iter()
            .map(|item| {
                let key = (item.destination.clone(), item.key.resource_type.clone(), item.key.id.clone());
                states.remove(&key).unwrap_or_default()
            })
            .collect())
    }

    // -----------------------------------------------------------------------------------------------------
    // Delivery

    /// Leases up to `max` due rows of `destination` to `owner` for `lease_for`, in `seq` order.
    ///
    /// A row is due when `not_before <= now`, it is not dead, its lease is free or expired, and no earlier
    /// pending row of the same patient is leased (by anyone, this owner included: the earlier lease may be in
    /// another task's hands) or backing off. Rows without a patient are independent.
    pub async fn lease(
        &self,
        destination: &str,
        owner: &str,
        max: usize,
        lease_for: Duration,
        now: DateTime<Utc>,
    ) -> Result<Vec<OutboxRow>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let now_ms = ms(now);
        let until = now_ms.saturating_add(duration_ms(lease_for));
        let rows = match &self.inner {
            Inner::Sqlite(pool) => sqlite::lease(pool, destination, owner, limit(max), until, now_ms).await?,
            Inner::Postgres(pool) => postgres::lease(pool, destination, owner, limit(max), until, now_ms).await?,
        };
        outbox_rows(rows)
    }

    /// Records a successful send: in one transaction, writes `ledger` (or, when `None`, removes the ledger
    /// entry: the resource was deleted) and removes the outbox row if it still holds what was leased. If a
    /// newer plan replaced the row meanwhile, only its lease is cleared, so the new content goes out next.
    ///
    /// `audit`, when given, is appended in the same transaction (a disclosure is never recorded without its
    /// audit entry, nor audited without being recorded), and the key stops counting as withheld.
    pub async fn complete(
        &self,
        row: &OutboxRow,
        ledger: Option<&LedgerEntry>,
        audit: Option<&AuditEntry>,
    ) -> Result<()> {
        if let Some(entry) = ledger
            && (entry.destination != row.item.destination || entry.key != row.item.key)
        {
            return Err(StoreError::Invalid(format!(
                "complete: ledger entry for {} at {} does not match outbox row {} ({} at {})",
                entry.key, entry.destination, row.seq, row.item.key, row.item.destination
            )));
        }
        let item = &row.item;
        in_tx!(self, "complete", |tx| {
            match ledger {
                Some(entry) => bind_ledger(sqlx::query(LEDGER_UPSERT), entry).execute(&mut *tx).await,
                None => {
                    // A deleted resource has nothing left to be in conflict about.
                    sqlx::query(
                        "UPDATE conflicts SET status = 'resolved', resolution = 'retracted', resolved_at = $4, \
                         updated_at = $4, base_json = NULL, source_json = NULL, remote_json = NULL \
                         WHERE destination = $1 AND resource_type = $2 AND resource_id = $3 AND status = 'open'",
                    )
                    .bind(&item.destination)
                    .bind(&item.key.resource_type)
                    .bind(&item.key.id)
                    .bind(ms(Utc::now()))
                    .execute(&mut *tx)
                    .await
                    .map_err(StoreError::query("complete: closing conflicts of a deleted resource"))?;
                    sqlx::query("DELETE FROM ledger WHERE destination = $1 AND resource_type = $2 AND resource_id = $3")
                        .bind(&item.destination)
                        .bind(&item.key.resource_type)
                        .bind(&item.key.id)
                        .execute(&mut *tx)
                        .await
                }
            }
            .map_err(StoreError::query("complete: writing the ledger"))?;
            if let Some(entry) = audit {
                consent::append_audit(&mut *tx, entry).await?;
                sqlx::query("DELETE FROM withheld WHERE destination = $1 AND resource_type = $2 AND resource_id = $3")
                    .bind(&item.destination)
                    .bind(&item.key.resource_type)
                    .bind(&item.key.id)
                    .execute(&mut *tx)
                    .await
                    .map_err(StoreError::query("complete: clearing the withholding"))?;
            }
            // Recorded: no write of this key is in doubt any more.
            sqlx::query(intent::DELETE_KEY)
                .bind(&item.destination)
                .bind(&item.key.resource_type)
                .bind(&item.key.id)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::query("complete: clearing the send intent"))?;
            // The row as leased (same seq), or replaced meanwhile by a plan that came back to the same content.
            finish_leased_row!(tx, row, "complete");
        });
        Ok(())
    }

    /// A failed attempt that may succeed later: attempts + 1, due again at `not_before`, lease cleared.
    /// If the row was replaced by a newer plan while it was being sent, the newer plan is left due now and
    /// only its lease is cleared.
    pub async fn retry_later(&self, seq: i64, not_before: DateTime<Utc>, error: &str) -> Result<()> {
        in_tx!(self, "retry_later", |tx| {
            let n = sqlx::query(
                "UPDATE outbox SET attempts = attempts + 1, not_before = $2, last_error = $3, \
                 lease_owner = NULL, lease_until = NULL, lease_seq = NULL WHERE seq = $1 AND dead = FALSE",
            )
            .bind(seq)
            .bind(ms(not_before))
            .bind(error)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::query("retry_later"))?
            .rows_affected();
            if n == 0 {
                sqlx::query(CLEAR_LEASE_BY_TOKEN)
                    .bind(seq)
                    .execute(&mut *tx)
                    .await
                    .map_err(StoreError::query("retry_later"))?;
            }
        });
        Ok(())
    }

    /// A permanent failure: the row becomes a dead letter, keeping its body and `error` (e.g. the
    /// OperationOutcome JSON) for an admin. If the row was replaced by a newer plan while it was being
    /// sent, the newer plan is not dead-lettered (it may well succeed); only its lease is cleared.
    pub async fn dead_letter(&self, seq: i64, error: &str) -> Result<()> {
        in_tx!(self, "dead_letter", |tx| {
            let n = sqlx::query(
                "UPDATE outbox SET dead = TRUE, attempts = attempts + 1, last_error = $2, \
                 lease_owner = NULL, lease_until = NULL, lease_seq = NULL WHERE seq = $1 AND dead = FALSE",
            )
            .bind(seq)
            .bind(error)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::query("dead_letter"))?
            .rows_affected();
            if n == 0 {
                sqlx::query(CLEAR_LEASE_BY_TOKEN)
                    .bind(seq)
                    .execute(&mut *tx)
                    .await
                    .map_err(StoreError::query("dead_letter"))?;
            }
        });
        Ok(())
    }

    /// The owners holding leases now (an instance, or one of its workers as `owner/N`).
    pub async fn lease_owners(&self) -> Result<Vec<String>> {
        with_pool!(self, |pool| {
            sqlx::query_scalar(
                "SELECT DISTINCT lease_owner FROM outbox WHERE lease_owner IS NOT NULL ORDER BY lease_owner",
            )
            .fetch_all(pool)
            .await
        })
        .map_err(StoreError::query("lease_owners"))
    }

    /// Clears every lease held by `owner` and its workers (`owner/N`) on a clean shutdown, so other
    /// instances can take the rows at once.
    pub async fn release(&self, owner: &str) -> Result<()> {
        with_pool!(self, |pool| {
            sqlx::query(
                "UPDATE outbox SET lease_owner = NULL, lease_until = NULL, lease_seq = NULL \
                 WHERE lease_owner = $1 OR substr(lease_owner, 1, length($1) + 1) = $1 || '/'",
            )
            .bind(owner)
            .execute(pool)
            .await
            .map(|r| r.rows_affected())
        })
        .map_err(StoreError::query("release"))?;
        Ok(())
    }

    /// Outbox rows in `seq` order, of one destination or all; only dead letters when `dead_only`.
    pub async fn outbox_list(
        &self,
        destination: Option<&str>,
        dead_only: bool,
        limit: usize,
    ) -> Result<Vec<OutboxRow>> {
        let rows: Vec<OutboxDb> = with_pool!(self, |pool| {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {OUTBOX_COLUMNS} FROM outbox WHERE ($1 IS NULL OR destination = $1) \
                 AND ($2 = FALSE OR dead = TRUE) ORDER BY seq LIMIT $3"
            )))
            .bind(destination)
            .bind(dead_only)
            .bind(self::limit(limit))
            .fetch_all(pool)
            .await
        })
        .map_err(StoreError::query("outbox_list"))?;
        outbox_rows(rows)
    }

    /// Puts a dead letter back in the queue (due `now`, attempts 0). `false` if there is no dead row `seq`,
    /// or if a newer plan for the same resource is already pending (that one supersedes it).
    pub async fn outbox_retry(&self, seq: i64, now: DateTime<Utc>) -> Result<bool> {
        let n = with_pool!(self, |pool| {
            sqlx::query(
                "UPDATE outbox SET dead = FALSE, attempts = 0, not_before = $2 \
                 WHERE seq = $1 AND dead = TRUE AND NOT EXISTS (SELECT 1 FROM outbox p \
                 WHERE p.destination = outbox.destination AND p.resource_type = outbox.resource_type \
                 AND p.resource_id = outbox.resource_id AND p.dead = FALSE)",
            )
            .bind(seq)
            .bind(ms(now))
            .execute(pool)
            .await
            .map(|r| r.rows_affected())
        })
        .map_err(StoreError::query("outbox_retry"))?;
        Ok(n > 0)
    }

    /// Puts every dead letter (of one destination, or all) back in the queue; returns how many.
    pub async fn outbox_retry_dead(&self, destination: Option<&str>, now: DateTime<Utc>) -> Result<usize> {
        let n = with_pool!(self, |pool| {
            sqlx::query(
                "UPDATE outbox SET dead = FALSE, attempts = 0, not_before = $2 \
                 WHERE dead = TRUE AND ($1 IS NULL OR destination = $1) AND NOT EXISTS (SELECT 1 FROM outbox p \
                 WHERE p.destination = outbox.destination AND p.resource_type = outbox.resource_type \
                 AND p.resource_id = outbox.resource_id AND p.dead = FALSE)",
            )
            .bind(destination)
            .bind(ms(now))
            .execute(pool)
            .await
            .map(|r| r.rows_affected())
        })
        .map_err(StoreError::query("outbox_retry_dead"))?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    /// Per destination with outbox rows: pending, dead, and the oldest pending `created_at`.
    pub async fn queue_depths(&self) -> Result<Vec<QueueDepth>> {
        let rows: Vec<DepthDb> = with_pool!(self, |pool| {
            sqlx::query_as(
                "SELECT destination, \
                 COUNT(*) FILTER (WHERE dead = FALSE) AS pending, \
                 COUNT(*) FILTER (WHERE dead = TRUE) AS dead, \
                 MIN(created_at) FILTER (WHERE dead = FALSE) AS oldest_pending \
                 FROM outbox GROUP BY destination ORDER BY destination",
            )
            .fetch_all(pool)
            .await
        })
        .map_err(StoreError::query("queue_depths"))?;
        rows.into_iter()
            .map(|r| {
                Ok(QueueDepth {
                    destination: r.destination,
                    pending: u64::try_from(r.pending).unwrap_or(0),
                    dead: u64::try_from(r.dead).unwrap_or(0),
                    oldest_pending: r.oldest_pending.map(|v| from_ms("outbox.created_at", v)).transpose()?,
                })
            })
            .collect()
    }

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
        for chunk in keys.chunks(KEY_CHUNK) {
            let rows: Vec<LedgerDb> = with_pool!(self, |pool| {
                let mut qb = with_keys(chunk);
                qb.push(KEYS_LEDGER_ENTRIES);
                qb.push_bind(destination.to_string());
                qb.build_query_as().fetch_all(pool).await
            })
            .map_err(StoreError::query("ledger_get_many"))?;
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
    // Jobs

    /// Records the start of a run of `job`; returns its run id for [`Store::job_finished`].
    pub async fn job_started(&self, job: &str, now: DateTime<Utc>) -> Result<i64> {
        with_pool!(self, |pool| {
            sqlx::query_scalar("INSERT INTO job_runs (job, started_at) VALUES ($1, $2) RETURNING id")
                .bind(job)
                .bind(ms(now))
                .fetch_one(pool)
                .await
        })
        .map_err(StoreError::query("job_started"))
    }

    /// Records the end of a run. `detail` is a short summary for `connector status`: no personal data.
    pub async fn job_finished(&self, run_id: i64, ok: bool, detail: &str, now: DateTime<Utc>) -> Result<()> {
        with_pool!(self, |pool| {
            sqlx::query("UPDATE job_runs SET finished_at = $2, ok = $3, detail = $4 WHERE id = $1")
                .bind(run_id)
                .bind(ms(now))
                .bind(ok)
                .bind(detail)
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
        })
        .map_err(StoreError::query("job_finished"))?;
        Ok(())
    }

    /// The latest run of each job, by job name.
    pub async fn last_runs(&self) -> Result<Vec<JobRun>> {
        let rows: Vec<JobRunDb> = with_pool!(self, |pool| {
            sqlx::query_as(
                "SELECT id, job, started_at, finished_at, ok, detail FROM job_runs \
                 WHERE id IN (SELECT MAX(id) FROM job_runs GROUP BY job) ORDER BY job",
            )
            .fetch_all(pool)
            .await
        })
        .map_err(StoreError::query("last_runs"))?;
        rows.into_iter()
            .map(|r| {
                Ok(JobRun {
                    run_id: r.id,
                    job: r.job,
                    started_at: from_ms("job_runs.started_at", r.started_at)?,
                    finished_at: r.finished_at.map(|v| from_ms("job_runs.finished_at", v)).transpose()?,
                    ok: r.ok,
                    detail: r.detail,
                })
            })
            .collect()
    }

    // -----------------------------------------------------------------------------------------------------
    // Leader election

    /// Tries to become the leader `name` (e.g. the scheduler). PostgreSQL: a session advisory lock on a
    /// connection of its own, held by the returned guard; `None` while another holder has it. The lock goes
    /// when the guard is released or dropped, or when its connection dies (check with
    /// [`LeaderGuard::still_leading`]). SQLite: one instance per file, so always `Some`.
    pub async fn try_lead(&self, name: &str) -> Result<Option<LeaderGuard>> {
        match &self.inner {
            Inner::Sqlite(_) => Ok(Some(LeaderGuard { name: name.to_string(), conn: None })),
            Inner::Postgres(pool) => Ok(postgres::try_lead(pool, name)
                .await?
                .map(|conn| LeaderGuard { name: name.to_string(), conn: Some(conn) })),
        }
    }

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

    /// After personal data was deleted (SQLite, where `secure_delete` is on): copies the WAL into the
    /// database file and truncates the WAL, so the deleted rows are gone from both files. PostgreSQL: nothing
    /// (its dead row versions are reclaimed by VACUUM). Backups taken before keep what was deleted.
    pub async fn checkpoint(&self) -> Result<()> {
        match &self.inner {
            Inner::Sqlite(pool) => sqlite::checkpoint(pool).await,
            Inner::Postgres(_) => Ok(()),
        }
    }
}

const LEDGER_COLUMNS: &str = "destination, resource_type, resource_id, remote_id, version_id, content_hash, linked, \
     patient, updated_at, origin, source_fp, held_hash, prev_hash, remote_edits, sent_version";

const QUARANTINE_COLUMNS: &str = "id, partner, kind, file, source_row, record_key, reasons_json, raw_json, created_at";

const LEDGER_UPSERT: &str = "INSERT INTO ledger (destination, resource_type, resource_id, remote_id, \
     version_id, content_hash, linked, patient, updated_at, origin, source_fp, held_hash, prev_hash, remote_edits, \
     sent_version) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) \
     ON CONFLICT (destination, resource_type, resource_id) DO UPDATE SET remote_id = excluded.remote_id, \
     version_id = excluded.version_id, content_hash = excluded.content_hash, linked = excluded.linked, \
     patient = excluded.patient, updated_at = excluded.updated_at, origin = excluded.origin, \
     source_fp = excluded.source_fp, held_hash = excluded.held_hash, prev_hash = excluded.prev_hash, \
     remote_edits = excluded.remote_edits, sent_version = excluded.sent_version";

/// Binds a ledger entry to [`LEDGER_UPSERT`]'s parameters.
fn bind_ledger<'q, DB: sqlx::Database>(
    q: sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments>,
    e: &'q LedgerEntry,
) -> sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments>
where
    String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<String>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    bool: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    q.bind(e.destination.clone())
        .bind(e.key.resource_type.clone())
        .bind(e.key.id.clone())
        .bind(e.remote_id.clone())
        .bind(e.version_id.clone())
        .bind(e.content_hash.clone())
        .bind(e.linked)
        .bind(e.patient.clone())
        .bind(ms(e.updated_at))
        .bind(e.origin.clone())
        .bind(e.source_fp.clone())
        .bind(e.held_hash.clone())
        .bind(e.prev_hash.clone())
        .bind(e.remote_edits)
        .bind(e.sent_version.clone())
}

/// Lookups of many keys: each follows [`with_keys`] and is followed by the bound destination.
const KEYS_LEDGER_HASHES: &str = "SELECT l.resource_type, l.resource_id, l.content_hash FROM k CROSS JOIN ledger l \
     WHERE l.resource_type = k.t AND l.resource_id = k.i AND l.destination = ";
const KEYS_OUTBOX_ROWS: &str = "SELECT o.seq, o.resource_type, o.resource_id, o.op, o.content_hash, o.dead, \
     o.lease_until FROM k CROSS JOIN outbox o \
     WHERE o.resource_type = k.t AND o.resource_id = k.i AND o.destination = ";
const KEYS_LEDGER_ENTRIES: &str = "SELECT l.* FROM k CROSS JOIN ledger l \
     WHERE l.resource_type = k.t AND l.resource_id = k.i AND l.destination = ";

/// Enqueue's statements shared by both backends (replacing a row differs: see the backend modules).
pub(crate) const KEY_LEDGER_HASH: &str =
    "SELECT content_hash FROM ledger WHERE destination = $1 AND resource_type = $2 AND resource_id = $3";
pub(crate) const KEY_ROWS: &str = "SELECT seq, resource_type, resource_id, op, content_hash, dead, lease_until \
     FROM outbox WHERE destination = $1 AND resource_type = $2 AND resource_id = $3";
pub(crate) const OUTBOX_INSERT: &str = "INSERT INTO outbox (destination, resource_type, resource_id, patient, op, \
     content_hash, body, attempts, not_before, dead, created_at, origin) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, 0, $8, FALSE, $8, $9)";
pub(crate) const OUTBOX_CANCEL: &str = "DELETE FROM outbox WHERE seq = $1 AND dead = FALSE";
pub(crate) const OUTBOX_DELETE_DEAD: &str = "DELETE FROM outbox WHERE seq = $1 AND dead = TRUE";

/// What an item stores as body: deletes carry none.
pub(crate) fn body_of(item: &OutboxItem) -> Option<&str> {
    match item.op {
        Op::Upsert => item.body.as_deref(),
        Op::Delete => None,
    }
}

/// The newest migration `migrator` knows.
fn known_version(migrator: &sqlx::migrate::Migrator) -> i64 {
    migrator.iter().map(|m| m.version).max().unwrap_or(0)
}

/// Refuses a database whose newest applied migration is newer than this binary's (a downgrade).
pub(crate) fn check_not_newer(migrator: &sqlx::migrate::Migrator, newest: Option<i64>, url: &str) -> Result<()> {
    let known = known_version(migrator);
    match newest {
        Some(found) if found > known => Err(StoreError::SchemaTooNew { url: url.to_string(), found, known }),
        _ => Ok(()),
    }
}

pub(crate) fn log_ready(backend: Backend, url: &str, migrator: &sqlx::migrate::Migrator, before: Option<i64>) {
    let schema = known_version(migrator);
    if before != Some(schema) {
        tracing::info!(%backend, url, from = before.unwrap_or(0), to = schema, "Migrated the state database.");
    }
    tracing::debug!(%backend, url, schema, "State database ready.");
}

pub(crate) fn migrate_error(
    migrator: &sqlx::migrate::Migrator,
    e: sqlx::migrate::MigrateError,
    url: &str,
) -> StoreError {
    let known = known_version(migrator);
    match e {
        // Raced with a newer connector migrating the same database.
        sqlx::migrate::MigrateError::VersionMissing(found) if found > known => {
            StoreError::SchemaTooNew { url: url.to_string(), found, known }
        }
        source => StoreError::Migrate { url: url.to_string(), source },
    }
}

/// Clears the lease taken under seq `$1` on a row that was replaced (and so renumbered) since.
/// Removes a delivered outbox row: the row as leased (same seq), or, when a newer plan replaced it meanwhile
/// and came back to the same content, that one. Binds: seq, op, content hash. When neither matches, the
/// row's lease is cleared ([`CLEAR_LEASE_BY_TOKEN`]) so the newer content goes out next.
const ROW_DONE: [&str; 2] = [
    "DELETE FROM outbox WHERE seq = $1 AND op = $2 AND content_hash = $3",
    "DELETE FROM outbox WHERE lease_seq = $1 AND op = $2 AND content_hash = $3 AND dead = FALSE",
];

const CLEAR_LEASE_BY_TOKEN: &str = "UPDATE outbox SET lease_owner = NULL, lease_until = NULL, lease_seq = NULL \
     WHERE lease_seq = $1 AND dead = FALSE";

/// Holds the leadership taken by [`Store::try_lead`]. Dropping it gives the leadership up (PostgreSQL: the
/// dedicated connection closes and the server drops the lock); [`LeaderGuard::release`] does so and waits
/// for the server to confirm.
pub struct LeaderGuard {
    name: String,
    /// PostgreSQL: the session holding the advisory lock. `None` on SQLite.
    conn: Option<sqlx::PgConnection>,
}

impl fmt::Debug for LeaderGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaderGuard").field("name", &self.name).field("postgres", &self.conn.is_some()).finish()
    }
}

impl LeaderGuard {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the leadership is still held: on PostgreSQL, whether the lock's session still answers and
    /// still holds it. A leader that gets `false` must stop leading (another instance may take over).
    pub async fn still_leading(&mut self) -> bool {
        match &mut self.conn {
            None => true,
            Some(conn) => postgres::holds_lead(conn, &self.name).await,
        }
    }

    /// Gives the leadership up and closes the connection, waiting for the server.
    pub async fn release(mut self) -> Result<()> {
        match self.conn.take() {
            None => Ok(()),
            Some(conn) => postgres::release_lead(conn, &self.name).await,
        }
    }
}

/// Hex sha256: content hashes in the ledger and outbox, and the identity of a quarantined row.
pub fn sha256_hex(text: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}
