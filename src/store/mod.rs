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
//!
//! # Layout
//! One file per table (or closely kept group of tables), each adding its `impl Store` methods; this file
//! holds the [`Store`] handle itself (connect, close, backend, checkpoint) and the helpers they share.
//! - `outbox.rs`: planned writes: [`Store::enqueue`] (its pure decision is in `plan.rs`), leasing, finishing
//!   delivered rows (one, or a bundle's in one transaction: [`Store::complete_many`]) or a failed row, dead
//!   letters and queue depths.
//! - `ledger.rs`: what each destination holds of our resources: reads, writes, accepting remote changes,
//!   forgetting.
//! - `jobs.rs`: job runs, for `connector status`. `leader.rs`: leader election ([`LeaderGuard`]).
//! - `quarantine.rs`: rows the mapper rejected. `cursors.rs`: named positions.
//! - `consent.rs`: consent statements, persons, withholdings and the audit trail; `audit.rs`: its hash chain.
//! - `conflict.rs`: conflicts (and emptying the `expected` table older versions wrote). `intent.rs`: writes in flight.
//! - `feed.rs`: partner feeds' own ledger. `sources.rs`: partner sources (inbox files, API cursors, snapshots).
//! - `sqlite.rs`, `postgres.rs`: what differs between the backends (connecting, migrating, leasing, applying
//!   a plan). `error.rs`: [`StoreError`]. `tests.rs`: unit tests on SQLite.

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
pub use consent::{AuditEntry, AuditFilter, StatementRecord, consent_today, prevails};
pub use error::StoreError;
use error::redact_url;
pub use feed::FeedItem;
pub use intent::SendIntent;
pub use jobs::JobRun;
pub use leader::LeaderGuard;
pub use ledger::LedgerEntry;
use ledger::{
    LEDGER_BOUND, LEDGER_COLUMNS, LEDGER_ON_CONFLICT, LEDGER_UPSERT, LEDGER_UPSERT_ARRAYS, bind_ledger,
    bind_ledger_arrays,
};
pub use memo::Memo;
use outbox::LeaseTerms;
pub use outbox::{Completion, LeaseAsk, Op, OutboxItem, OutboxRow, QueueDepth};
pub(crate) use outbox::{OUTBOX_CANCEL, OutboxDb, body_of};
pub use quarantine::QuarantineRecord;
pub use receipt::PlanReceipt;
pub use sources::{FinishedFile, SourceStatus};

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

/// The connector's state database. Cheap to clone (a pool handle).
#[derive(Clone)]
pub struct Store {
    inner: Inner,
    /// SQLite files: connections that only read, for the reads that decide what a delivery or a plan does
    /// next ([`with_read_pool!`]), so that they need not wait for the one writing connection's transaction.
    reader: Option<SqlitePool>,
    /// This installation's salt for element fingerprints (from the `settings` table).
    salt: std::sync::Arc<str>,
    /// Counts the enqueues of this process that wrote rows, for delivery running beside planning
    /// ([`Store::queued`]); shared by every clone.
    queued: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
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

/// Like [`with_pool!`], but on a SQLite file through a reading connection: for the reads a delivery worker or
/// a plan makes before it writes, which then run beside another worker's transaction instead of after it.
/// Each sees what was committed when it began, as on a connection of its own in any pool.
macro_rules! with_read_pool {
    ($store:expr, |$pool:ident| $body:expr) => {
        match &$store.inner {
            Inner::Sqlite(writer) => {
                let $pool = $store.sqlite_reader(writer);
                $body
            }
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
mod cursors;
mod feed;
mod intent;
mod jobs;
mod leader;
mod ledger;
mod memo;
mod outbox;
mod quarantine;
mod receipt;
mod sources;

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

/// Starts a query with a table `k(t, i)` holding `keys`, to be joined on (resource_type, resource_id) as
/// `FROM k CROSS JOIN <table>`: SQLite then loops over the keys and looks each one up in the index (`CROSS
/// JOIN` fixes that order in SQLite; PostgreSQL plans it freely). A row-value `IN (VALUES ...)` list, or
/// letting SQLite choose, checks every row of the destination instead: 100 times slower at 10 000 rows.
///
/// On SQLite the keys are one parameter, a JSON array read by `jsonb_each` ([`json_rows`]): the statement's
/// text is the same whatever the number of keys, so each connection prepares it once. On PostgreSQL,
/// `WITH k(t, i) AS (VALUES ($1, $2), ...)`.
fn with_keys<'k, DB: sqlx::Database>(keys: impl IntoIterator<Item = &'k ResourceKey>) -> sqlx::QueryBuilder<DB>
where
    DB::Arguments: Default,
    String: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    if DB::NAME == <sqlx::Sqlite as sqlx::Database>::NAME {
        let mut qb = sqlx::QueryBuilder::new("WITH k(t, i) AS (SELECT value ->> 0, value ->> 1 FROM jsonb_each(");
        qb.push_bind(json_rows(keys.into_iter().map(|k| [k.resource_type.as_str(), k.id.as_str()])));
        qb.push(")) ");
        return qb;
    }
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
        let (inner, reader) = if url.starts_with("sqlite:") {
            let (writer, reader) = sqlite::connect(url).await?;
            (Inner::Sqlite(writer), reader)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Inner::Postgres(postgres::connect(url).await?), None)
        } else {
            return Err(StoreError::BadUrl {
                url: redact_url(url),
                reason: "the scheme must be sqlite: or postgres://".into(),
            });
        };
        let queued = std::sync::Arc::new(tokio::sync::watch::Sender::new(0));
        let mut store = Store { inner, reader, salt: std::sync::Arc::from(""), queued };
        let salt: String = with_pool!(store, |pool| {
            sqlx::query_scalar("SELECT value FROM settings WHERE name = 'fingerprint_salt'").fetch_one(pool).await
        })
        .map_err(StoreError::query("reading the fingerprint salt"))?;
        store.salt = std::sync::Arc::from(salt.as_str());
        Ok(store)
    }

    /// The pool for a read that decides a worker's next step on SQLite (see [`with_read_pool!`]): the reading
    /// pool of a file, else (in memory) `writer`, the one connection there is.
    fn sqlite_reader<'a>(&'a self, writer: &'a SqlitePool) -> &'a SqlitePool {
        self.reader.as_ref().unwrap_or(writer)
    }

    /// The installation's salt for element fingerprints.
    pub fn salt(&self) -> &str {
        &self.salt
    }

    /// Changes each time an [`Store::enqueue`] of this process (through any clone of this store) has written
    /// rows: a delivery pass running beside planning waits on it instead of polling an empty outbox. Rows
    /// queued by another process do not show here.
    pub fn queued(&self) -> tokio::sync::watch::Receiver<u64> {
        self.queued.subscribe()
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
        if let Some(reader) = &self.reader {
            reader.close().await;
        }
        with_pool!(self, |pool| pool.close().await)
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

/// Removes a delivered outbox row: the row as leased (same seq), or, when a newer plan replaced it meanwhile
/// and came back to the same content, that one. Binds: seq, op, content hash. When neither matches, the
/// row's lease is cleared ([`CLEAR_LEASE_BY_TOKEN`]) so the newer content goes out next.
const ROW_DONE: [&str; 2] = [
    "DELETE FROM outbox WHERE seq = $1 AND op = $2 AND content_hash = $3",
    "DELETE FROM outbox WHERE lease_seq = $1 AND op = $2 AND content_hash = $3 AND dead = FALSE",
];

/// Clears the lease taken under seq `$1` on a row that was replaced (and so renumbered) since.
const CLEAR_LEASE_BY_TOKEN: &str = "UPDATE outbox SET lease_owner = NULL, lease_until = NULL, lease_seq = NULL \
     WHERE lease_seq = $1 AND dead = FALSE";

/// Most rows written by one multi-row statement: 500 rows of at most 16 parameters stay well below SQLite's
/// 32766 parameters and PostgreSQL's 65535.
const ROWS_PER_STATEMENT: usize = 500;

/// The list of an `IN (...)`: on SQLite one JSON parameter read by `jsonb_each` (see [`json_rows`]), on
/// PostgreSQL a parameter per value.
fn push_in_list<DB: sqlx::Database>(qb: &mut sqlx::QueryBuilder<DB>, values: &[String])
where
    DB::Arguments: Default,
    String: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    if DB::NAME == <sqlx::Sqlite as sqlx::Database>::NAME {
        qb.push("SELECT value FROM jsonb_each(");
        qb.push_bind(json_rows(values));
        qb.push(")");
        return;
    }
    let mut sep = qb.separated(", ");
    for v in values {
        sep.push_bind(v.clone());
    }
}

/// `SELECT value ->> 0, ..., value ->> (cols - 1) FROM jsonb_each(?)`: the rows of a [`json_rows`] parameter, in
/// its order, as a SQLite row source (`INSERT ... SELECT` of an upsert ends it with `WHERE true`, which SQLite's
/// grammar needs before `ON CONFLICT`). `jsonb_each` (SQLite 3.51) hands each row to `->>` as binary JSON:
/// 50 rows of 15 columns in 130 µs, against 290 µs through `json_each` (whose rows are written out as text and
/// parsed again) and 240 µs for a `VALUES` list parsed anew (measured with the bundled SQLite).
fn json_select(cols: usize) -> String {
    let columns: Vec<String> = (0..cols).map(|c| format!("value ->> {c}")).collect();
    format!("SELECT {} FROM jsonb_each(?)", columns.join(", "))
}

/// `rows` as one JSON array of arrays, the one parameter of a SQLite statement that reads them with
/// `jsonb_each` (`value ->> 0` is the first column): one statement text whatever the number of rows, so it is
/// prepared once per connection and kept, where a `VALUES` list of each length was parsed and planned again
/// (a tenth of a first load's CPU time), and a few hundred bytes prepared instead of a few hundred kilobytes.
/// Strings come back as TEXT, integers as INTEGER, `null` as NULL.
fn json_rows<R: serde::Serialize>(rows: impl IntoIterator<Item = R>) -> String {
    let rows: Vec<R> = rows.into_iter().collect();
    serde_json::to_string(&rows).expect("strings and integers serialise")
}

/// `($1, $2), ($3, $4)` (`numbered`, for PostgreSQL) or `(?, ?), (?, ?)` (SQLite): `rows` groups of `cols`
/// parameters, for a multi-row `VALUES` list bound in order. SQLite must get anonymous ones: sqlx asks SQLite
/// for each parameter's name, which SQLite finds by a linear search of the statement's named parameters, so
/// binding 7,500 numbered parameters took 40% of a first load's CPU at 500 rows a bundle.
fn values_list(rows: usize, cols: usize, numbered: bool) -> String {
    let mut out = String::with_capacity(rows * cols * 5);
    for r in 0..rows {
        out.push_str(if r == 0 { "(" } else { ", (" });
        for c in 0..cols {
            if c > 0 {
                out.push_str(", ");
            }
            if numbered {
                out.push('$');
                out.push_str(&(r * cols + c + 1).to_string());
            } else {
                out.push('?');
            }
        }
        out.push(')');
    }
    out
}

/// Hex sha256: content hashes in the ledger and outbox, and the identity of a quarantined row.
pub fn sha256_hex(text: &str) -> String {
    use sha2::{Digest, Sha256};
    hex(&Sha256::digest(text.as_bytes()))
}

/// Feeds everything `r` gives to `h`, a block at a time (files of any size: inbox files, the exports and mappings
/// a plan receipt fingerprints).
pub fn sha256_update_from(h: &mut sha2::Sha256, r: &mut impl std::io::Read) -> std::io::Result<()> {
    use sha2::Digest;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        h.update(&buf[..n]);
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}
