//! PostgreSQL specifics: several connector instances share one database. Leasing uses
//! `FOR UPDATE SKIP LOCKED`, so two instances never lease the same row; enqueue takes a per-resource advisory
//! lock so two planners cannot both insert a row for one resource; the scheduler's leader holds a session
//! advisory lock on a connection of its own.
//!
//! Advisory lock keys: leadership uses the one-`bigint` form (a hash of the leader name); the store's own
//! transaction locks use the two-`int4` form with a class number, a separate key space in `pg_locks`.

use std::str::FromStr;
use std::time::Duration;

use sha2::{Digest, Sha256};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};

use super::error::redact_url;
use super::plan::{self, Action, KeyState, StoredRow};
use super::{Completion, LeaseTerms, OutboxDb, OutboxItem, Result, StoreError};

pub(crate) static MIGRATOR: Migrator = sqlx::migrate!("migrations/postgres");

/// Class of the transaction lock serialising `lease` per destination (see [`lease`]).
const LOCK_LEASE: i32 = 0x4C45_4153; // "LEAS"
/// Class of the transaction lock serialising enqueue per (destination, resource).
const LOCK_KEY: i32 = 0x4B45_5921; // "KEY!"

/// How long [`holds_lead`] waits for the leader's session to answer.
const LEAD_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// Set on each of the connector's sessions (after connecting, not as startup options, which poolers such as
/// PgBouncer refuse). The state tables are small and read over and over, so their pages are in memory: with
/// the default `random_page_cost` of 4 PostgreSQL looked up 500 keys of a 30,000-row ledger by reading the
/// whole table (20 ms, growing with the table) rather than by its primary key (4 ms, measured); 1.1 is what
/// PostgreSQL's documentation suggests when the data is cached or on solid-state storage. And each statement
/// is planned for its own values: a statement prepared while a table was empty (a first load) otherwise kept
/// the whole-table plan it got then (17 ms per bundle's ledger look-up at 30,000 rows, against 0.2 ms).
const SESSION_SETTINGS: &str = "SELECT set_config('random_page_cost', '1.1', false), \
     set_config('plan_cache_mode', 'force_custom_plan', false)";

pub(super) async fn connect(url: &str) -> Result<PgPool> {
    let shown = redact_url(url);
    let options = PgConnectOptions::from_str(url)
        .map_err(|e| StoreError::BadUrl { url: shown.clone(), reason: e.to_string() })?;
    let pool = PgPoolOptions::new()
        .max_connections(10)
        .acquire_timeout(Duration::from_secs(30))
        .after_connect(|conn, _| {
            Box::pin(async move { sqlx::Executor::execute(conn, SESSION_SETTINGS).await.map(drop) })
        })
        .connect_with(options)
        .await
        .map_err(|source| StoreError::Connect { url: shown.clone(), source })?;
    if let Err(e) = migrate(&pool, &shown).await {
        // The migrator may have left its advisory lock on a pooled connection; closing drops it.
        pool.close().await;
        return Err(e);
    }
    Ok(pool)
}

async fn migrate(pool: &PgPool, shown: &str) -> Result<()> {
    let has_table: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(pool)
        .await
        .map_err(|source| StoreError::Connect { url: shown.to_string(), source })?;
    let mut newest = None;
    if has_table {
        newest = sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations")
            .fetch_one(pool)
            .await
            .map_err(StoreError::query("reading the schema version"))?;
        super::check_not_newer(&MIGRATOR, newest, shown)?;
    }
    MIGRATOR.run(pool).await.map_err(|e| super::migrate_error(&MIGRATOR, e, shown))?;
    super::log_ready(super::Backend::Postgres, shown, &MIGRATOR, newest);
    Ok(())
}

/// As the SQLite statement, plus `FOR UPDATE OF o SKIP LOCKED`: rows another transaction holds are passed
/// over, so concurrent instances never lease the same row.
const LEASE: &str = "UPDATE outbox SET lease_owner = $2, lease_until = $4, lease_seq = seq \
     WHERE seq IN (SELECT o.seq FROM outbox o \
         WHERE o.destination = $1 AND o.dead = FALSE \
         AND (o.not_before <= $5 OR (o.attempts = 0 AND o.lease_until IS NULL)) \
         AND (o.lease_until IS NULL OR o.lease_until <= $5) \
         AND (o.patient IS NULL OR NOT EXISTS (SELECT 1 FROM outbox e \
             WHERE e.destination = o.destination AND e.patient = o.patient AND e.dead = FALSE \
             AND (e.lease_until IS NOT NULL OR e.attempts > 0) \
             AND e.seq < o.seq AND (e.not_before > $5 OR e.lease_until > $5))) \
         ORDER BY o.seq LIMIT $3 FOR UPDATE OF o SKIP LOCKED) \
     RETURNING seq, destination, resource_type, resource_id, patient, op, content_hash, body, attempts, \
         not_before, last_error, dead, created_at, origin";

/// The outbox rows of the keys `UNNEST($1, $2, $3)` (destination, type, id) that match `$dead`, locked.
macro_rules! keys_outbox_rows_locked {
    ($dead:literal) => {
        concat!(
            "SELECT o.destination, o.seq, o.resource_type, o.resource_id, o.op, o.content_hash, o.dead, \
             o.lease_until FROM outbox o JOIN UNNEST($1::text[], $2::text[], $3::text[]) AS k(d, t, i) \
             ON o.destination = k.d AND o.resource_type = k.t AND o.resource_id = k.i WHERE ",
            $dead,
            " FOR UPDATE OF o"
        )
    };
}

/// Pending rows, then dead letters (a literal condition each, so each uses its partial index).
const KEYS_OUTBOX_ROWS_LOCKED: [&str; 2] = [keys_outbox_rows_locked!("NOT o.dead"), keys_outbox_rows_locked!("o.dead")];

/// Leases in one transaction. Leasers of one destination take turns (a transaction advisory lock): the
/// per-patient check reads other rows' leases, and without the turn two instances could each see the other's
/// earlier row as free (its lease not yet committed) and send one patient's writes out of order. The lease
/// statement is short, so the turn costs little; `SKIP LOCKED` still keeps rows that other transactions
/// (enqueue, complete) hold from blocking the lease.
pub(super) async fn lease(pool: &PgPool, terms: LeaseTerms<'_>) -> Result<Vec<OutboxDb>> {
    let mut tx = pool.begin().await.map_err(StoreError::query("lease"))?;
    let rows = lease_in(&mut tx, terms).await?;
    tx.commit().await.map_err(StoreError::query("lease"))?;
    Ok(rows)
}

/// Leases inside the caller's transaction, under the destination's lease lock (held to its end).
async fn lease_in(tx: &mut PgConnection, terms: LeaseTerms<'_>) -> Result<Vec<OutboxDb>> {
    let op = "lease";
    sqlx::query("SELECT pg_advisory_xact_lock($1, $2)")
        .bind(LOCK_LEASE)
        .bind(hash32(&[terms.destination]))
        .execute(&mut *tx)
        .await
        .map_err(StoreError::query(op))?;
    sqlx::query_as(LEASE)
        .bind(terms.destination)
        .bind(terms.owner)
        .bind(terms.max)
        .bind(terms.until)
        .bind(terms.now)
        .fetch_all(&mut *tx)
        .await
        .map_err(StoreError::query(op))
}

/// The writing pass of enqueue: one transaction and a few statements over arrays, whatever the number of
/// items. The advisory locks of all its keys are taken first, in key order (so two planners cannot
/// deadlock); then the keys' outbox rows are read `FOR UPDATE` and their ledger hashes after them, each
/// item is decided again, and the decisions are applied: superseded dead letters and cancelled rows
/// deleted, new rows inserted and replaced rows renumbered. New and replaced rows take numbers drawn from
/// the outbox's sequence in one go and handed out in the items' order, so a person's writes keep the order
/// they were planned in.
pub(super) async fn apply(pool: &PgPool, items: &[&OutboxItem], now: i64) -> Result<usize> {
    use std::collections::HashMap;
    let op = "enqueue";
    let mut tx = pool.begin().await.map_err(StoreError::query(op))?;
    let mut locks: Vec<i32> =
        items.iter().map(|i| hash32(&[&i.destination, &i.key.resource_type, &i.key.id])).collect();
    locks.sort_unstable();
    locks.dedup();
    // The array is read in its order, one row at a time: the locks are taken in key order.
    sqlx::query("SELECT pg_advisory_xact_lock($1, k) FROM UNNEST($2::int4[]) WITH ORDINALITY AS l(k, n)")
        .bind(LOCK_KEY)
        .bind(&locks)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::query(op))?;

    let d: Vec<&str> = items.iter().map(|i| i.destination.as_str()).collect();
    let t: Vec<&str> = items.iter().map(|i| i.key.resource_type.as_str()).collect();
    let k: Vec<&str> = items.iter().map(|i| i.key.id.as_str()).collect();
    // Rows first, under lock: a `complete` that committed before the locks were granted is then visible in
    // the ledger read that follows (each statement sees what was committed when it started). Pending rows
    // and dead letters each through their own index (`outbox_one_pending`, `outbox_dead_key`).
    let mut rows: Vec<KeyedRow> = Vec::new();
    for sql in KEYS_OUTBOX_ROWS_LOCKED {
        rows.extend(
            sqlx::query_as::<_, KeyedRow>(sql)
                .bind(&d)
                .bind(&t)
                .bind(&k)
                .fetch_all(&mut *tx)
                .await
                .map_err(StoreError::query("enqueue: reading the outbox"))?,
        );
    }
    let hashes: Vec<(String, String, String, String)> = sqlx::query_as(
        "SELECT l.destination, l.resource_type, l.resource_id, l.content_hash \
         FROM ledger l JOIN UNNEST($1::text[], $2::text[], $3::text[]) AS k(d, t, i) \
         ON l.destination = k.d AND l.resource_type = k.t AND l.resource_id = k.i",
    )
    .bind(&d)
    .bind(&t)
    .bind(&k)
    .fetch_all(&mut *tx)
    .await
    .map_err(StoreError::query("enqueue: reading the ledger"))?;
    let mut states: HashMap<(String, String, String), KeyState> = HashMap::new();
    for (dest, resource_type, id, hash) in hashes {
        states.entry((dest, resource_type, id)).or_default().ledger_hash = Some(hash);
    }
    for KeyedRow { destination, row } in rows {
        states.entry((destination, row.resource_type.clone(), row.resource_id.clone())).or_default().add(row)?;
    }

    let (mut gone_dead, mut cancelled) = (Vec::new(), Vec::new());
    // (item, the pending row it replaces) in the items' order.
    let mut numbered: Vec<(&OutboxItem, Option<i64>)> = Vec::new();
    for item in items {
        let key = (item.destination.clone(), item.key.resource_type.clone(), item.key.id.clone());
        match plan::decide(&states.remove(&key).unwrap_or_default(), item, now) {
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
    if !gone_dead.is_empty() {
        sqlx::query("DELETE FROM outbox WHERE seq = ANY($1) AND dead = TRUE")
            .bind(&gone_dead)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::query(op))?;
    }
    if !cancelled.is_empty() {
        sqlx::query("DELETE FROM outbox WHERE seq = ANY($1) AND dead = FALSE")
            .bind(&cancelled)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::query(op))?;
    }
    if numbered.is_empty() {
        tx.commit().await.map_err(StoreError::query(op))?;
        return Ok(changed);
    }
    let mut seqs: Vec<i64> =
        sqlx::query_scalar("SELECT nextval(pg_get_serial_sequence('outbox', 'seq')) FROM generate_series(1, $1::int8)")
            .bind(numbered.len() as i64)
            .fetch_all(&mut *tx)
            .await
            .map_err(StoreError::query(op))?;
    seqs.sort_unstable();
    let origin = |i: &OutboxItem| i.origin.as_ref().map(crate::model::Provenance::encode);
    let (inserts, replaces): (Vec<_>, Vec<_>) =
        numbered.iter().zip(&seqs).partition(|((_, replaced), _)| replaced.is_none());
    if !inserts.is_empty() {
        let col = |f: &dyn Fn(&OutboxItem) -> Option<String>| -> Vec<Option<String>> {
            inserts.iter().map(|((i, _), _)| f(i)).collect()
        };
        sqlx::query(
            "INSERT INTO outbox (seq, destination, resource_type, resource_id, patient, op, content_hash, body, \
             attempts, not_before, dead, created_at, origin) \
             SELECT s, d, t, i, p, op, h, b, 0, $10, FALSE, $10, o FROM UNNEST($1::int8[], $2::text[], $3::text[], \
             $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[]) AS u(s, d, t, i, p, op, h, b, o)",
        )
        .bind(inserts.iter().map(|(_, s)| **s).collect::<Vec<i64>>())
        .bind(col(&|i| Some(i.destination.clone())))
        .bind(col(&|i| Some(i.key.resource_type.clone())))
        .bind(col(&|i| Some(i.key.id.clone())))
        .bind(col(&|i| i.patient.clone()))
        .bind(col(&|i| Some(i.op.as_str().to_string())))
        .bind(col(&|i| Some(i.content_hash.clone())))
        .bind(col(&|i| super::body_of(i).map(str::to_string)))
        .bind(col(&|i| origin(i)))
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::query(op))?;
    }
    if !replaces.is_empty() {
        let col = |f: &dyn Fn(&OutboxItem) -> Option<String>| -> Vec<Option<String>> {
            replaces.iter().map(|((i, _), _)| f(i)).collect()
        };
        // Fresh numbers from the sequence never collide with a row's, so renumbering cannot trip the key.
        sqlx::query(
            "UPDATE outbox o SET seq = u.s, patient = u.p, op = u.op, content_hash = u.h, body = u.b, \
             attempts = 0, not_before = $8, last_error = NULL, origin = u.o \
             FROM UNNEST($1::int8[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[]) \
             AS u(old, s, p, op, h, b, o) WHERE o.seq = u.old",
        )
        .bind(replaces.iter().map(|((_, old), _)| old.unwrap_or_default()).collect::<Vec<i64>>())
        .bind(replaces.iter().map(|(_, s)| **s).collect::<Vec<i64>>())
        .bind(col(&|i| i.patient.clone()))
        .bind(col(&|i| Some(i.op.as_str().to_string())))
        .bind(col(&|i| Some(i.content_hash.clone())))
        .bind(col(&|i| super::body_of(i).map(str::to_string)))
        .bind(col(&|i| origin(i)))
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::query(op))?;
    }
    tx.commit().await.map_err(StoreError::query(op))?;
    Ok(changed)
}

/// An outbox row of a key, with its destination (one writing pass spans destinations).
#[derive(sqlx::FromRow)]
struct KeyedRow {
    destination: String,
    #[sqlx(flatten)]
    row: StoredRow,
}

/// Deletes the rows of `table` (one of the tables keyed by destination, resource type and resource id) for
/// these keys, given as three parallel arrays.
async fn delete_keys(
    tx: &mut sqlx::PgConnection,
    table: &'static str,
    (d, t, i): (&[String], &[String], &[String]),
    what: &'static str,
) -> Result<()> {
    // `table` is one of this file's constants; every value is bound.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DELETE FROM {table} x USING UNNEST($1::text[], $2::text[], $3::text[]) AS k(d, t, i) \
         WHERE x.destination = k.d AND x.resource_type = k.t AND x.resource_id = k.i"
    )))
    .bind(d)
    .bind(t)
    .bind(i)
    .execute(tx)
    .await
    .map_err(StoreError::query(what))?;
    Ok(())
}

/// [`super::Store::complete_many`] in one transaction and a few statements over arrays, whatever the number
/// of rows: the ledger written, deleted resources' ledger entries and conflicts closed, the audit entries
/// chained, withholdings and send intents cleared, and the outbox rows removed (as `ROW_DONE` says, in two
/// passes) or, for rows replaced meanwhile, their leases cleared. The rows' keys must differ. With `next`, the
/// worker's next rows are leased last in the same transaction (it waits for the lease lock holding the
/// locks of what it recorded; a lease skips locked rows and waits for nothing, so no wait goes round) and
/// returned.
pub(super) async fn complete(
    pool: &PgPool,
    done: &[Completion<'_>],
    now: i64,
    next: Option<LeaseTerms<'_>>,
) -> Result<Vec<OutboxDb>> {
    let op = "complete";
    let keys = |cs: &mut dyn Iterator<Item = &Completion<'_>>| {
        let (mut d, mut t, mut i) = (Vec::new(), Vec::new(), Vec::new());
        for c in cs {
            d.push(c.row.item.destination.clone());
            t.push(c.row.item.key.resource_type.clone());
            i.push(c.row.item.key.id.clone());
        }
        (d, t, i)
    };
    let mut tx = pool.begin().await.map_err(StoreError::query(op))?;

    let written: Vec<&super::LedgerEntry> = done.iter().filter_map(|c| c.ledger).collect();
    if !written.is_empty() {
        super::bind_ledger_arrays(sqlx::query(super::LEDGER_UPSERT_ARRAYS), &written)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::query("complete: writing the ledger"))?;
    }
    let (d, t, i) = keys(&mut done.iter().filter(|c| c.ledger.is_none()));
    if !d.is_empty() {
        // Deleted resources: nothing left to be in conflict about, nothing held.
        sqlx::query(
            "UPDATE conflicts c SET status = 'resolved', resolution = 'retracted', resolved_at = $4, \
             updated_at = $4, base_json = NULL, source_json = NULL, remote_json = NULL \
             FROM UNNEST($1::text[], $2::text[], $3::text[]) AS k(d, t, i) \
             WHERE c.destination = k.d AND c.resource_type = k.t AND c.resource_id = k.i AND c.status = 'open'",
        )
        .bind(&d)
        .bind(&t)
        .bind(&i)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::query("complete: closing conflicts of deleted resources"))?;
        delete_keys(&mut tx, "ledger", (&d, &t, &i), "complete: writing the ledger").await?;
    }
    let audits: Vec<&super::AuditEntry> = done.iter().filter_map(|c| c.audit).collect();
    if !audits.is_empty() {
        super::audit::append_chained_pg(&mut tx, &audits).await?;
        let (d, t, i) = keys(&mut done.iter().filter(|c| c.audit.is_some()));
        delete_keys(&mut tx, "withheld", (&d, &t, &i), "complete: clearing the withholding").await?;
    }
    // Recorded: no write of these keys is in doubt any more.
    let (d, t, i) = keys(&mut done.iter());
    delete_keys(&mut tx, "send_intent", (&d, &t, &i), "complete: clearing the send intents").await?;

    // The rows as leased (same seq); then, for those replaced meanwhile, a replacement that came back to
    // the same content (leased under the old seq); the rest keep their newer plan, without the lease.
    let mut left: Vec<&Completion<'_>> = done.iter().collect();
    for sql in [
        "DELETE FROM outbox o USING UNNEST($1::int8[], $2::text[], $3::text[]) AS u(s, op, h) \
         WHERE o.seq = u.s AND o.op = u.op AND o.content_hash = u.h RETURNING u.s",
        "DELETE FROM outbox o USING UNNEST($1::int8[], $2::text[], $3::text[]) AS u(s, op, h) \
         WHERE o.lease_seq = u.s AND o.op = u.op AND o.content_hash = u.h AND o.dead = FALSE RETURNING u.s",
    ] {
        if left.is_empty() {
            break;
        }
        let gone: Vec<i64> = sqlx::query_scalar(sql)
            .bind(left.iter().map(|c| c.row.seq).collect::<Vec<_>>())
            .bind(left.iter().map(|c| c.row.item.op.as_str()).collect::<Vec<_>>())
            .bind(left.iter().map(|c| c.row.item.content_hash.as_str()).collect::<Vec<_>>())
            .fetch_all(&mut *tx)
            .await
            .map_err(StoreError::query("complete: removing the outbox rows"))?;
        let gone: std::collections::HashSet<i64> = gone.into_iter().collect();
        left.retain(|c| !gone.contains(&c.row.seq));
    }
    if !left.is_empty() {
        sqlx::query(
            "UPDATE outbox SET lease_owner = NULL, lease_until = NULL, lease_seq = NULL \
             WHERE lease_seq = ANY($1) AND dead = FALSE",
        )
        .bind(left.iter().map(|c| c.row.seq).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await
        .map_err(StoreError::query("complete: releasing the replaced outbox rows"))?;
    }
    let leased = match next {
        Some(terms) => lease_in(&mut tx, terms).await?,
        None => Vec::new(),
    };
    tx.commit().await.map_err(StoreError::query(op))?;
    Ok(leased)
}

/// Opens a connection of its own and tries the leader lock on it; `None` if another session holds it.
pub(super) async fn try_lead(pool: &PgPool, name: &str) -> Result<Option<PgConnection>> {
    let options = pool.connect_options();
    let mut conn = options.connect().await.map_err(|source| StoreError::Connect {
        url: "the [state] PostgreSQL server (leader session)".to_string(),
        source,
    })?;
    // The server notices a vanished leader (network cut, host gone) through TCP keepalives on this
    // session, and then drops the lock: within about a minute instead of the OS default of hours.
    sqlx::raw_sql(
        "SET application_name = 'connector-leader'; SET tcp_keepalives_idle = 30; \
         SET tcp_keepalives_interval = 10; SET tcp_keepalives_count = 3",
    )
    .execute(&mut conn)
    .await
    .map_err(StoreError::query("try_lead: preparing the leader session"))?;
    let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(leader_key(name))
        .fetch_one(&mut conn)
        .await
        .map_err(StoreError::query("try_lead"))?;
    if got {
        Ok(Some(conn))
    } else {
        let _ = conn.close().await;
        Ok(None)
    }
}

/// Whether `conn` answers within a timeout and still holds the leader lock of `name`.
pub(super) async fn holds_lead(conn: &mut PgConnection, name: &str) -> bool {
    let key = leader_key(name);
    let check = sqlx::query_scalar::<_, bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted \
         AND pid = pg_backend_pid() AND objsubid = 1 \
         AND classid::bigint = $1 AND objid::bigint = $2)",
    )
    .bind((key >> 32) & 0xFFFF_FFFF)
    .bind(key & 0xFFFF_FFFF)
    .fetch_one(conn);
    matches!(tokio::time::timeout(LEAD_CHECK_TIMEOUT, check).await, Ok(Ok(true)))
}

pub(super) async fn release_lead(mut conn: PgConnection, name: &str) -> Result<()> {
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(leader_key(name))
        .execute(&mut conn)
        .await
        .map_err(StoreError::query("releasing the leader lock"))?;
    conn.close().await.map_err(StoreError::query("closing the leader session"))
}

/// The advisory lock key of leader `name`: the same in every instance and every build.
pub(crate) fn leader_key(name: &str) -> i64 {
    let digest = Sha256::digest(format!("york-connector/leader/{name}").as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(bytes)
}

/// A stable 32-bit hash of `parts` (NUL-separated) for transaction lock keys.
pub(crate) fn hash32(parts: &[&str]) -> i32 {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    let digest = hasher.finalize();
    let mut bytes = [0u8; 4];
    bytes.copy_from_slice(&digest[..4]);
    i32::from_be_bytes(bytes)
}
