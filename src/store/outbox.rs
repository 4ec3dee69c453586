//! The outbox: planned writes, each waiting to be leased to a delivery worker and then removed (delivered),
//! put back for later (a transient failure) or kept as a dead letter for an admin. [`Store::enqueue`] plans
//! (its decision, pure, is in `plan.rs`; what differs between the backends in `sqlite.rs` and `postgres.rs`).

use crate::model::Provenance;
use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::plan::{self, KeyState, StoredRow};
use super::{
    AuditEntry, CLEAR_LEASE_BY_TOKEN, Inner, KEY_CHUNK, LEDGER_UPSERT, LedgerEntry, ROW_DONE, ResourceKey, Result,
    Store, StoreError, bind_ledger, consent, duration_ms, from_ms, intent, limit, ms, postgres, sqlite, with_keys,
};

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

    pub(super) fn parse(s: &str) -> Result<Op> {
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
    pub origin: Option<Provenance>,
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

/// A delivered row and what to record of it: see [`Store::complete`] and [`Store::complete_many`].
#[derive(Debug, Clone, Copy)]
pub struct Completion<'a> {
    /// The row as leased.
    pub row: &'a OutboxRow,
    /// What the destination now holds; `None`: the resource was deleted there.
    pub ledger: Option<&'a LedgerEntry>,
    /// The disclosure (or link, or retraction), appended to the audit trail.
    pub audit: Option<&'a AuditEntry>,
}

/// The next lease a delivery worker asks for with the completion of its bundle: see
/// [`Store::complete_and_lease`].
#[derive(Debug, Clone, Copy)]
pub struct LeaseAsk<'a> {
    pub destination: &'a str,
    pub owner: &'a str,
    pub max: usize,
    pub lease_for: Duration,
}

/// A lease's terms as the backends take them (unix ms): see [`Store::lease`].
#[derive(Debug, Clone, Copy)]
pub(super) struct LeaseTerms<'a> {
    pub destination: &'a str,
    pub owner: &'a str,
    pub max: i64,
    pub until: i64,
    pub now: i64,
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
                origin: self.origin.as_deref().map(Provenance::decode),
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
struct DepthDb {
    destination: String,
    pending: i64,
    dead: i64,
    oldest_pending: Option<i64>,
}

/// Inside a transaction `$tx`, records one delivered row (a [`Completion`]) as [`Store::complete`] says;
/// `$now` (unix ms) dates the conflicts a deletion closes.
macro_rules! complete_one {
    ($tx:ident, $c:expr, $now:expr) => {{
        let c: &Completion<'_> = $c;
        let item = &c.row.item;
        match c.ledger {
            Some(entry) => bind_ledger(sqlx::query(LEDGER_UPSERT), entry).execute(&mut *$tx).await,
            None => {
                // A deleted resource has nothing left to be in conflict about.
                sqlx::query(CONFLICTS_RETRACT)
                    .bind(&item.destination)
                    .bind(&item.key.resource_type)
                    .bind(&item.key.id)
                    .bind($now)
                    .execute(&mut *$tx)
                    .await
                    .map_err(StoreError::query("complete: closing conflicts of a deleted resource"))?;
                sqlx::query("DELETE FROM ledger WHERE destination = $1 AND resource_type = $2 AND resource_id = $3")
                    .bind(&item.destination)
                    .bind(&item.key.resource_type)
                    .bind(&item.key.id)
                    .execute(&mut *$tx)
                    .await
            }
        }
        .map_err(StoreError::query("complete: writing the ledger"))?;
        if let Some(entry) = c.audit {
            consent::append_audit(&mut *$tx, entry).await?;
            sqlx::query("DELETE FROM withheld WHERE destination = $1 AND resource_type = $2 AND resource_id = $3")
                .bind(&item.destination)
                .bind(&item.key.resource_type)
                .bind(&item.key.id)
                .execute(&mut *$tx)
                .await
                .map_err(StoreError::query("complete: clearing the withholding"))?;
        }
        // Recorded: no write of this key is in doubt any more.
        sqlx::query(intent::DELETE_KEY)
            .bind(&item.destination)
            .bind(&item.key.resource_type)
            .bind(&item.key.id)
            .execute(&mut *$tx)
            .await
            .map_err(StoreError::query("complete: clearing the send intent"))?;
        // The row as leased (same seq), or replaced meanwhile by a plan that came back to the same content.
        finish_leased_row!($tx, c.row, "complete");
    }};
}

/// Closes the open conflicts of a resource that was deleted on the destination. Binds: destination, type,
/// id, now (unix ms).
pub(super) const CONFLICTS_RETRACT: &str = "UPDATE conflicts SET status = 'resolved', resolution = 'retracted', resolved_at = $4, \
     updated_at = $4, base_json = NULL, source_json = NULL, remote_json = NULL \
     WHERE destination = $1 AND resource_type = $2 AND resource_id = $3 AND status = 'open'";

impl Store {
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
            let applied = match &self.inner {
                Inner::Sqlite(pool) => sqlite::apply(pool, chunk, now).await?,
                Inner::Postgres(pool) => postgres::apply(pool, chunk, now).await?,
            };
            if applied > 0 {
                // Committed: a delivery pass waiting beside planning may lease them now.
                self.queued.send_modify(|n| *n = n.wrapping_add(1));
            }
            changed += applied;
        }
        Ok(changed)
    }

    /// The ledger hash and outbox rows of each item's key, in the order of `items` (the read-only pass).
    async fn key_states(&self, items: &[&OutboxItem]) -> Result<Vec<KeyState>> {
        let what = "enqueue: reading the outbox";
        match &self.inner {
            Inner::Sqlite(writer) => {
                let pool = self.sqlite_reader(writer);
                key_states_on::<sqlx::Sqlite>(&mut *pool.acquire().await.map_err(StoreError::query(what))?, items).await
            }
            Inner::Postgres(pool) => {
                key_states_on::<sqlx::Postgres>(&mut *pool.acquire().await.map_err(StoreError::query(what))?, items)
                    .await
            }
        }
    }

    // -----------------------------------------------------------------------------------------------------
    // Delivery

    /// Leases up to `max` due rows of `destination` to `owner` for `lease_for`, in `seq` order.
    ///
    /// A row is due when it is not dead, its lease is free or expired, `not_before <= now` (a row never leased
    /// and never failed is due at once: its `not_before` is the time it was planned, which a clock set back
    /// may put ahead of `now`), and no earlier pending row of the same patient is leased (by anyone, this
    /// owner included: the earlier lease may be in another task's hands) or backing off. Rows without a
    /// patient are independent. Only rows that were leased or failed are indexed by patient
    /// (`outbox_busy`): a first load's every queued row was an index write at a random place, twice.
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
        let terms = LeaseTerms { destination, owner, max: limit(max), until, now: now_ms };
        let rows = match &self.inner {
            Inner::Sqlite(pool) => sqlite::lease(pool, terms).await?,
            Inner::Postgres(pool) => postgres::lease(pool, terms).await?,
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
        self.complete_many(&[Completion { row, ledger, audit }]).await
    }

    /// [`Store::complete`] for many rows (a delivered bundle) in one transaction: all are recorded or none.
    /// The audit entries are chained in the order of `done`. On PostgreSQL the rows are recorded with a few
    /// statements over arrays, whatever their number; on SQLite with a few multi-row statements per 500 rows.
    pub async fn complete_many(&self, done: &[Completion<'_>]) -> Result<()> {
        self.complete_then(done, None).await.map(|_| ())
    }

    /// [`Store::complete_many`], then [`Store::lease`] as `next` asks: the worker that recorded a bundle takes
    /// its next one, in one transaction (a commit fewer per bundle; on SQLite the queue's pages that both
    /// write, its lease indexes', are written once). The lease sees the rows just recorded gone, so a
    /// person's next row is due in it. Returns the rows leased.
    pub async fn complete_and_lease(&self, done: &[Completion<'_>], next: &LeaseAsk<'_>) -> Result<Vec<OutboxRow>> {
        self.complete_then(done, Some(next)).await
    }

    async fn complete_then(&self, done: &[Completion<'_>], next: Option<&LeaseAsk<'_>>) -> Result<Vec<OutboxRow>> {
        if let Some(leased) = self.record(done, next).await? {
            return Ok(leased);
        }
        match next {
            Some(n) => self.lease(n.destination, n.owner, n.max, n.lease_for, Utc::now()).await,
            None => Ok(Vec::new()),
        }
    }

    /// Records `done` in one transaction; `Some`: the rows `next` asked for, leased in it as well (not on the
    /// row-by-row path).
    async fn record(&self, done: &[Completion<'_>], next: Option<&LeaseAsk<'_>>) -> Result<Option<Vec<OutboxRow>>> {
        if done.is_empty() {
            return Ok(None);
        }
        for c in done {
            if let Some(entry) = c.ledger
                && (entry.destination != c.row.item.destination || entry.key != c.row.item.key)
            {
                return Err(StoreError::Invalid(format!(
                    "complete: ledger entry for {} at {} does not match outbox row {} ({} at {})",
                    entry.key, entry.destination, c.row.seq, c.row.item.key, c.row.item.destination
                )));
            }
        }
        let now = ms(Utc::now());
        let distinct = {
            let mut keys: Vec<(&str, &ResourceKey)> =
                done.iter().map(|c| (c.row.item.destination.as_str(), &c.row.item.key)).collect();
            keys.sort_unstable();
            keys.dedup();
            keys.len() == done.len()
        };
        match &self.inner {
            // One statement cannot write a ledger row twice: a key twice (never seen from delivery, which
            // leases one pending row per key) takes the row-by-row path.
            Inner::Sqlite(_) | Inner::Postgres(_) if distinct => {
                let next = next.map(|n| LeaseTerms {
                    destination: n.destination,
                    owner: n.owner,
                    max: limit(n.max),
                    until: now.saturating_add(duration_ms(n.lease_for)),
                    now,
                });
                let leased = match &self.inner {
                    Inner::Sqlite(pool) => sqlite::complete(pool, done, now, next).await?,
                    Inner::Postgres(pool) => postgres::complete(pool, done, now, next).await?,
                };
                return outbox_rows(leased).map(|rows| next.map(|_| rows));
            }
            _ => {
                in_tx!(self, "complete", |tx| {
                    for c in done {
                        complete_one!(tx, c, now);
                    }
                });
            }
        }
        Ok(None)
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
}

/// The ledger hash and outbox rows of each item's key, in the order of `items`, read on `conn` in two
/// statements per destination and [`KEY_CHUNK`] keys: by the read-only pass of [`Store::enqueue`] and, under
/// the write lock, by SQLite's writing pass.
pub(super) async fn key_states_on<DB>(conn: &mut DB::Connection, items: &[&OutboxItem]) -> Result<Vec<KeyState>>
where
    DB: sqlx::Database,
    DB::Arguments: Default + sqlx::IntoArguments<DB>,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    String: for<'q> sqlx::Encode<'q, DB> + for<'r> sqlx::Decode<'r, DB> + sqlx::Type<DB>,
    StoredRow: for<'r> sqlx::FromRow<'r, DB::Row>,
    (String, String, String): for<'r> sqlx::FromRow<'r, DB::Row>,
{
    use std::collections::HashMap;
    let mut by_dest: HashMap<&str, Vec<&ResourceKey>> = HashMap::new();
    for item in items {
        by_dest.entry(&item.destination).or_default().push(&item.key);
    }
    // (destination, type, id) -> state
    let mut states: HashMap<(String, String, String), KeyState> = HashMap::new();
    for (dest, keys) in by_dest {
        for chunk in keys.chunks(KEY_CHUNK) {
            let mut qb = with_keys::<DB>(chunk.iter().copied());
            qb.push(KEYS_LEDGER_HASHES);
            qb.push_bind(dest.to_string());
            let hashes: Vec<(String, String, String)> = qb
                .build_query_as()
                .fetch_all(&mut *conn)
                .await
                .map_err(StoreError::query("enqueue: reading the ledger"))?;
            for (resource_type, id, hash) in hashes {
                states.entry((dest.to_string(), resource_type, id)).or_default().ledger_hash = Some(hash);
            }
            let rows: Vec<StoredRow> = keys_outbox_rows::<DB>(chunk, dest)
                .build_query_as()
                .fetch_all(&mut *conn)
                .await
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

/// Lookups of many keys: each follows [`with_keys`]; the ledger's is followed by the bound destination, the
/// outbox's by a condition on `o.dead` and the destination (see [`keys_outbox_rows`]).
pub(super) const KEYS_LEDGER_HASHES: &str = "SELECT l.resource_type, l.resource_id, l.content_hash FROM k CROSS JOIN ledger l \
     WHERE l.resource_type = k.t AND l.resource_id = k.i AND l.destination = ";
pub(super) const KEYS_OUTBOX_ROWS: &str = "SELECT o.seq, o.resource_type, o.resource_id, o.op, o.content_hash, o.dead, \
     o.lease_until FROM k CROSS JOIN outbox o \
     WHERE o.resource_type = k.t AND o.resource_id = k.i";

/// The outbox rows of `keys` at `dest`: pending rows and dead letters, each through its own index
/// (`outbox_one_pending`, `outbox_dead_key`); no index holds both.
pub(super) fn keys_outbox_rows<'k, DB>(keys: &[&'k ResourceKey], dest: &str) -> sqlx::QueryBuilder<DB>
where
    DB: sqlx::Database,
    DB::Arguments: Default,
    String: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    let mut qb = with_keys::<DB>(keys.iter().copied());
    for dead in ["FALSE", "TRUE"] {
        if dead == "TRUE" {
            qb.push(" UNION ALL ");
        }
        qb.push(KEYS_OUTBOX_ROWS);
        qb.push(format!(" AND o.dead = {dead} AND o.destination = "));
        qb.push_bind(dest.to_string());
    }
    qb
}

/// Cancelling a pending row (consent withdrawals; enqueue on SQLite cancels many in one statement).
pub(crate) const OUTBOX_CANCEL: &str = "DELETE FROM outbox WHERE seq = $1 AND dead = FALSE";

/// What an item stores as body: deletes carry none.
pub(crate) fn body_of(item: &OutboxItem) -> Option<&str> {
    match item.op {
        Op::Upsert => item.body.as_deref(),
        Op::Delete => None,
    }
}
