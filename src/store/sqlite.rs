//! SQLite specifics: opening the file (WAL, busy timeout, foreign keys), migrations, leasing and the
//! writing pass of enqueue. A SQLite file serves one connector instance, which writes through one connection
//! and reads beside it through a small read-only pool (see [`connect`]); writes from other processes (the CLI beside the daemon) are serialised by SQLite's write
//! lock, taken up front with `BEGIN IMMEDIATE` wherever a transaction reads before it writes.

use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{SqliteConnection, SqlitePool};

use super::error::redact_url;
use super::plan::{self, Action};
use super::{
    AuditEntry, CLEAR_LEASE_BY_TOKEN, Completion, LEDGER_BOUND, LEDGER_COLUMNS, LEDGER_ON_CONFLICT, LeaseTerms,
    LedgerEntry, OutboxDb, OutboxItem, Result, StoreError, json_rows, json_select,
};

pub(crate) static MIGRATOR: Migrator = sqlx::migrate!("migrations/sqlite");

/// How long a statement waits for another connection's write lock before failing with "database is locked".
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Prepared statements each connection keeps (sqlx's default is 100). The many-row statements of planning and
/// delivery take their rows as one JSON parameter (`json_rows`), so each has one text, a few hundred bytes
/// prepared, whatever the number of rows; a delivered bundle's cycle uses about fifteen of them. Eight,
/// when those statements were `VALUES` lists of each length (a few hundred kilobytes each at 500 rows),
/// kept the heap down but were all evicted within a cycle: every statement was parsed again, a tenth of a
/// first load's CPU time.
const STATEMENT_CACHE: usize = 32;

/// The connection's page cache, in KiB (SQLite's default is 2,000 KiB). The store is read through its indexes
/// a few rows at a time and the operating system caches the file's pages anyway: a smaller cache cost no
/// measurable time and, with [`STATEMENT_CACHE`], took 11-13 MiB off a first load's peak (with one
/// connection, 4 and 8 MiB were no faster either).
const PAGE_CACHE_KIB: u32 = 1024;

/// WAL pages after which a commit copies them into the database file (SQLite's default is 1,000, 4 MiB). A
/// first load rewrites the same pages (the queue's, its indexes') in commit after commit; copied less often,
/// each is copied once for several commits (a 10,000-person load: a tenth fewer page writes and reads, a fifth
/// fewer fsyncs, about 4% less CPU time).
/// The WAL is still emptied at the end of every delivery pass ([`checkpoint`]); between, it grows to about
/// 16 MiB (it holds what the database file holds, with the same owner-only mode).
const WAL_AUTOCHECKPOINT_PAGES: u32 = 4000;

/// Connections of a file's reading pool (`Store::reader`): the reads that decide a delivery worker's or a
/// plan's next step run on them beside the writing connection's transaction, as they did when every
/// connection of the pool could write, so that a long transaction (a plan's chunk, a purge) does not hold up
/// the workers' reads. (A first load at batch 500 with four requests in flight took the same time with them,
/// with the writing connection alone and with four writing connections: 18.5-24 s each.)
const READERS: u32 = 2;

/// Opens the database: the pool every write goes through (one connection, see below) and, for a file, the
/// reading pool ([`READERS`] connections that cannot write) for the reads that decide a worker's next step.
pub(super) async fn connect(url: &str) -> Result<(SqlitePool, Option<SqlitePool>)> {
    let shown = redact_url(url);
    let rest = url.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
    let (path, params) = rest.split_once('?').unwrap_or((rest, ""));
    let in_memory = path == ":memory:" || params.split('&').any(|p| p == "mode=memory");
    if path.is_empty() && !in_memory {
        return Err(StoreError::BadUrl { url: shown, reason: "it names no database file".into() });
    }
    let mut options = SqliteConnectOptions::from_str(url)
        .map_err(|e| StoreError::BadUrl { url: shown.clone(), reason: e.to_string() })?
        .foreign_keys(true)
        .busy_timeout(BUSY_TIMEOUT)
        // Deleted rows (replayed quarantine rows, delivered bodies, cleared conflict versions) hold personal
        // data: overwrite their bytes instead of leaving them in free pages. See [`checkpoint`] for the WAL.
        .pragma("secure_delete", "ON")
        // Statement journals and sorts stay in memory: in files they would put pages of the outbox (personal data)
        // in the system's temporary folder, outside the state directory, and cost a write per page (a first
        // load of 10,000 people wrote 670 MiB there in 300,000 writes).
        .pragma("temp_store", "MEMORY")
        // A negative size is in KiB.
        .pragma("cache_size", format!("-{PAGE_CACHE_KIB}"))
        .pragma("wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES.to_string())
        .statement_cache_capacity(STATEMENT_CACHE);
    let reading = (!in_memory).then(|| options.clone().pragma("query_only", "ON"));
    let pool_options = if in_memory {
        // An in-memory database lives as long as a connection to it: keep exactly one, for ever.
        SqlitePoolOptions::new().max_connections(1).min_connections(1).idle_timeout(None).max_lifetime(None)
    } else {
        let file = options.get_filename().to_path_buf();
        create_private(&file)?;
        // FULL keeps the last commits across a power cut: the ledger is the record of what went where.
        options =
            options.create_if_missing(true).journal_mode(SqliteJournalMode::Wal).synchronous(SqliteSynchronous::Full);
        // One writing connection, kept open. SQLite writes one transaction at a time whatever the number of
        // connections, and in WAL mode a connection throws its whole page cache away whenever another one has
        // written since its last transaction: with four that all wrote, nearly every transaction of a delivery
        // pass began by reading its pages again (a 10,000-person first load: a tenth more CPU time, a fifth
        // more page reads, 8 MiB more memory than with one). The reads a worker makes before it writes go
        // through the reading pool; the rest wait for the transaction in hand (every store call is a few
        // statements: none streams rows or holds the connection across a request to a server). Like a writer
        // waiting on the lock, a call gives up after [`BUSY_TIMEOUT`]. No ping before each use: a file does
        // not drop connections.
        SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .acquire_timeout(BUSY_TIMEOUT)
            .test_before_acquire(false)
    };
    let pool = pool_options
        .connect_with(options)
        .await
        .map_err(|source| StoreError::Connect { url: shown.clone(), source })?;
    if let Err(e) = migrate(&pool, &shown).await {
        pool.close().await;
        return Err(e);
    }
    // Opened when first used, after the migrations; `query_only`: they cannot write, so the writing
    // connection's cache is never thrown away on their account.
    let reader = reading.map(|options| {
        SqlitePoolOptions::new()
            .max_connections(READERS)
            .acquire_timeout(BUSY_TIMEOUT)
            .test_before_acquire(false)
            .connect_lazy_with(options)
    });
    Ok((pool, reader))
}

/// Creates the database's missing folders owner-only (0700) and a missing database file owner-only (0600),
/// whatever the umask: the file holds personal data. SQLite gives its `-wal` and `-shm` files the database
/// file's mode. An existing file keeps its mode (`connector config check` fails when others can read it).
fn create_private(file: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.exists()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| StoreError::CreateDir { dir: dir.to_path_buf(), source })?;
    }
    match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(file) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            if let Ok(meta) = std::fs::metadata(file) {
                use std::os::unix::fs::PermissionsExt as _;
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    tracing::warn!(file = %file.display(), mode = %format!("{mode:o}"), "State database readable by others than its owner; chmod 600 it and its -wal and -shm files.");
                }
            }
            Ok(())
        }
        Err(source) => Err(StoreError::CreateFile { file: file.to_path_buf(), source }),
    }
}

/// Moves every committed page from the WAL into the database file and truncates the WAL, so that rows just
/// deleted (with `secure_delete` on) no longer sit in the WAL's copies of their pages. Waits for readers.
pub(super) async fn checkpoint(pool: &SqlitePool) -> Result<()> {
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(pool)
        .await
        .map(|_| ())
        .map_err(StoreError::query("checkpointing the WAL after a purge"))
}

async fn migrate(pool: &SqlitePool, shown: &str) -> Result<()> {
    let has_table: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'")
            .fetch_one(pool)
            .await
            .map_err(|source| StoreError::Connect { url: shown.to_string(), source })?;
    let mut newest = None;
    if has_table > 0 {
        newest = sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations")
            .fetch_one(pool)
            .await
            .map_err(StoreError::query("reading the schema version"))?;
        super::check_not_newer(&MIGRATOR, newest, shown)?;
    }
    MIGRATOR.run(pool).await.map_err(|e| super::migrate_error(&MIGRATOR, e, shown))?;
    super::log_ready(super::Backend::Sqlite, shown, &MIGRATOR, newest);
    Ok(())
}

/// Rows of `destination` that may go out now, oldest first; see [`super::Store::lease`].
pub(super) const LEASE: &str = "UPDATE outbox SET lease_owner = $2, lease_until = $4, lease_seq = seq \
     WHERE seq IN (SELECT o.seq FROM outbox o \
         WHERE o.destination = $1 AND o.dead = FALSE \
         AND (o.not_before <= $5 OR (o.attempts = 0 AND o.lease_until IS NULL)) \
         AND (o.lease_until IS NULL OR o.lease_until <= $5) \
         AND (o.patient IS NULL OR NOT EXISTS (SELECT 1 FROM outbox e \
             WHERE e.destination = o.destination AND e.patient = o.patient AND e.dead = FALSE \
             AND (e.lease_until IS NOT NULL OR e.attempts > 0) \
             AND e.seq < o.seq AND (e.not_before > $5 OR e.lease_until > $5))) \
         ORDER BY o.seq LIMIT $3) \
     RETURNING seq, destination, resource_type, resource_id, patient, op, content_hash, body, attempts, \
         not_before, last_error, dead, created_at, origin";

pub(super) async fn lease(pool: &SqlitePool, ask: LeaseTerms<'_>) -> Result<Vec<OutboxDb>> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.map_err(StoreError::query("lease"))?;
    let rows = lease_in(&mut tx, ask).await?;
    tx.commit().await.map_err(StoreError::query("lease"))?;
    Ok(rows)
}

async fn lease_in(tx: &mut SqliteConnection, ask: LeaseTerms<'_>) -> Result<Vec<OutboxDb>> {
    sqlx::query_as(LEASE)
        .bind(ask.destination)
        .bind(ask.owner)
        .bind(ask.max)
        .bind(ask.until)
        .bind(ask.now)
        .fetch_all(&mut *tx)
        .await
        .map_err(StoreError::query("lease"))
}

/// The writing pass of enqueue: one `IMMEDIATE` transaction in which the items' keys are read again (two
/// statements per destination) and each item decided again, then the decisions applied in a few statements:
/// superseded dead letters and cancelled rows deleted, new rows inserted in one multi-row statement. New and
/// replaced rows take numbers reserved from AUTOINCREMENT's counter in one go and handed out in the items'
/// order, so a person's writes keep the order they were planned in and no number is ever handed out twice.
/// Row by row it took about three statements per new row, each a hand-off to SQLite's worker thread: most of
/// a first load's planning time.
pub(super) async fn apply(pool: &SqlitePool, items: &[&OutboxItem], now: i64) -> Result<usize> {
    let op = "enqueue";
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.map_err(StoreError::query(op))?;
    let states = super::outbox::key_states_on::<sqlx::Sqlite>(&mut tx, items).await?;
    let (mut gone_dead, mut cancelled) = (Vec::new(), Vec::new());
    // (item, the pending row it replaces) in the items' order.
    let mut numbered: Vec<(&OutboxItem, Option<i64>)> = Vec::new();
    for (item, state) in items.iter().zip(&states) {
        match plan::decide(state, item, now) {
            Action::Nothing => {}
            Action::Insert { superseded_dead } => {
                gone_dead.extend(superseded_dead);
                numbered.push((item, None));
            }
            Action::Replace { seq } => numbered.push((item, Some(seq))),
            Action::Cancel { seq } => cancelled.push(seq),
        }
    }
    let changed = numbered.len() + cancelled.len();
    for (seqs, dead) in [(&gone_dead, true), (&cancelled, false)] {
        for chunk in seqs.chunks(super::ROWS_PER_STATEMENT) {
            let sql = format!("DELETE FROM outbox WHERE dead = ? AND seq IN ({})", vec!["?"; chunk.len()].join(", "));
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(dead);
            for seq in chunk {
                q = q.bind(seq);
            }
            q.execute(&mut *tx).await.map_err(StoreError::query(op))?;
        }
    }
    if numbered.is_empty() {
        tx.commit().await.map_err(StoreError::query(op))?;
        return Ok(changed);
    }
    let first = reserve_seqs(&mut tx, numbered.len()).await?;
    let origin = |i: &OutboxItem| i.origin.as_ref().map(crate::model::Provenance::encode);
    let mut inserts: Vec<(i64, &OutboxItem)> = Vec::new();
    for ((item, replaced), seq) in numbered.iter().zip(first..) {
        let Some(old) = replaced else {
            inserts.push((seq, item));
            continue;
        };
        sqlx::query(
            "UPDATE outbox SET seq = $7, patient = $2, op = $3, content_hash = $4, body = $5, \
             attempts = 0, not_before = $6, last_error = NULL, origin = $8 WHERE seq = $1",
        )
        .bind(old)
        .bind(&item.patient)
        .bind(item.op.as_str())
        .bind(&item.content_hash)
        .bind(super::body_of(item))
        .bind(now)
        .bind(seq)
        .bind(origin(item))
        .execute(&mut *tx)
        .await
        .map_err(StoreError::query(op))?;
    }
    if !inserts.is_empty() {
        let rows = json_rows(inserts.iter().map(|(seq, item)| {
            (
                seq,
                &item.destination,
                &item.key.resource_type,
                &item.key.id,
                &item.patient,
                item.op.as_str(),
                &item.content_hash,
                super::body_of(item),
                origin(item),
            )
        }));
        sqlx::query(
            "INSERT INTO outbox (seq, destination, resource_type, resource_id, patient, op, content_hash, body, \
             attempts, not_before, dead, created_at, origin) \
             SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5, value ->> 6, \
             value ->> 7, 0, ?, FALSE, ?, value ->> 8 FROM jsonb_each(?)",
        )
        .bind(now)
        .bind(now)
        .bind(rows)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::query(op))?;
    }
    tx.commit().await.map_err(StoreError::query(op))?;
    Ok(changed)
}

/// Reserves `n` fresh outbox numbers from AUTOINCREMENT's counter (above every number it ever handed out and
/// every row's) and returns the first; the caller uses them in order.
async fn reserve_seqs(tx: &mut SqliteConnection, n: usize) -> Result<i64> {
    let op = "enqueue: numbering the outbox rows";
    // The counter's row exists once the table has had a row; before that there is nothing to be above.
    sqlx::query(
        "INSERT INTO sqlite_sequence (name, seq) SELECT 'outbox', 0 \
         WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'outbox')",
    )
    .execute(&mut *tx)
    .await
    .map_err(StoreError::query(op))?;
    let last: i64 = sqlx::query_scalar(
        "UPDATE sqlite_sequence SET seq = MAX(seq, (SELECT COALESCE(MAX(seq), 0) FROM outbox)) + $1 \
         WHERE name = 'outbox' RETURNING seq",
    )
    .bind(n as i64)
    .fetch_one(&mut *tx)
    .await
    .map_err(StoreError::query(op))?;
    Ok(last - n as i64 + 1)
}

/// The key columns of a completion's row, for [`delete_keys`].
fn key_of<'c>(c: &'c Completion<'_>) -> [&'c str; 3] {
    [&c.row.item.destination, &c.row.item.key.resource_type, &c.row.item.key.id]
}

/// Deletes the rows of `table` (one of this file's constants) whose (destination, resource_type,
/// resource_id) is among `keys`, [`super::ROWS_PER_STATEMENT`] keys per statement.
async fn delete_keys<'k>(
    tx: &mut SqliteConnection,
    table: &'static str,
    keys: impl Iterator<Item = [&'k str; 3]>,
    what: &'static str,
) -> Result<()> {
    let keys: Vec<[&str; 3]> = keys.collect();
    if keys.is_empty() {
        return Ok(());
    }
    sqlx::query(sqlx::AssertSqlSafe(delete_keys_sql(table)))
        .bind(json_rows(keys))
        .execute(&mut *tx)
        .await
        .map_err(StoreError::query(what))?;
    Ok(())
}

/// Deletes the rows of `table` whose (destination, resource_type, resource_id) is in the JSON array bound.
pub(super) fn delete_keys_sql(table: &str) -> String {
    format!(
        "DELETE FROM {table} WHERE (destination, resource_type, resource_id) IN \
         (SELECT value ->> 0, value ->> 1, value ->> 2 FROM jsonb_each(?))"
    )
}

/// Removes delivered outbox rows, given as a JSON array of `[seq, op, content_hash]`: the rows as leased (same
/// seq), then, for those replaced meanwhile, a replacement that came back to the same content (leased under
/// the old seq). Each returns the seq it was given for each row it removed.
pub(super) const OUTBOX_DONE: [&str; 2] = [
    "DELETE FROM outbox WHERE (seq, op, content_hash) IN \
     (SELECT value ->> 0, value ->> 1, value ->> 2 FROM jsonb_each(?)) RETURNING seq",
    "DELETE FROM outbox WHERE (lease_seq, op, content_hash) IN \
     (SELECT value ->> 0, value ->> 1, value ->> 2 FROM jsonb_each(?)) \
     AND lease_seq IS NOT NULL AND dead = FALSE RETURNING lease_seq",
];

/// [`super::Store::complete_many`] on SQLite for rows of distinct keys, in one transaction and a few
/// statements per [`super::ROWS_PER_STATEMENT`] rows, in the steps of PostgreSQL's `complete`: every
/// statement is a round trip to SQLite's worker thread, and recording row by row took about eight per row
/// (a third of a first load's CPU time).
/// With `next`, the worker's next rows are leased in the same transaction, after the rows are recorded, and
/// returned.
pub(super) async fn complete(
    pool: &SqlitePool,
    done: &[Completion<'_>],
    now: i64,
    next: Option<LeaseTerms<'_>>,
) -> Result<Vec<OutboxDb>> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.map_err(StoreError::query("complete"))?;
    // Deleted resources (retractions, few): nothing left to be in conflict about, nothing held.
    for c in done.iter().filter(|c| c.ledger.is_none()) {
        let [d, t, i] = key_of(c);
        sqlx::query(super::outbox::CONFLICTS_RETRACT)
            .bind(d)
            .bind(t)
            .bind(i)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::query("complete: closing conflicts of a deleted resource"))?;
    }
    let deleted = done.iter().filter(|c| c.ledger.is_none()).map(key_of);
    delete_keys(&mut tx, "ledger", deleted, "complete: writing the ledger").await?;
    let written: Vec<&LedgerEntry> = done.iter().filter_map(|c| c.ledger).collect();
    if !written.is_empty() {
        let sql = format!(
            "INSERT INTO ledger ({LEDGER_COLUMNS}) {} WHERE true {LEDGER_ON_CONFLICT}",
            json_select(LEDGER_BOUND)
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(json_rows(written.into_iter().map(super::ledger::ledger_row)))
            .execute(&mut *tx)
            .await
            .map_err(StoreError::query("complete: writing the ledger"))?;
    }
    let audits: Vec<&AuditEntry> = done.iter().filter_map(|c| c.audit).collect();
    super::audit::append_chained_sqlite(&mut tx, &audits).await?;
    let audited = done.iter().filter(|c| c.audit.is_some()).map(key_of);
    delete_keys(&mut tx, "withheld", audited, "complete: clearing the withholding").await?;
    // Recorded: no write of these keys is in doubt any more.
    delete_keys(&mut tx, "send_intent", done.iter().map(key_of), "complete: clearing the send intents").await?;
    // The rows as leased (same seq); then, for those replaced meanwhile, a replacement that came back to the
    // same content (leased under the old seq); the rest keep their newer plan, without the lease.
    let mut left: Vec<&Completion<'_>> = done.iter().collect();
    for sql in OUTBOX_DONE {
        if left.is_empty() {
            break;
        }
        let rows = json_rows(left.iter().map(|c| (c.row.seq, c.row.item.op.as_str(), &c.row.item.content_hash)));
        let gone: std::collections::HashSet<i64> = sqlx::query_scalar::<_, i64>(sql)
            .bind(rows)
            .fetch_all(&mut *tx)
            .await
            .map_err(StoreError::query("complete: removing the outbox rows"))?
            .into_iter()
            .collect();
        left.retain(|c| !gone.contains(&c.row.seq));
    }
    for c in left {
        sqlx::query(CLEAR_LEASE_BY_TOKEN)
            .bind(c.row.seq)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::query("complete: releasing the replaced outbox row"))?;
    }
    let leased = match next {
        Some(ask) => lease_in(&mut tx, ask).await?,
        None => Vec::new(),
    };
    tx.commit().await.map_err(StoreError::query("complete"))?;
    Ok(leased)
}
