//! The state store's contract, written once and run against both backends: SQLite (a file in a temporary
//! directory) and PostgreSQL (a fresh database per test on the server of `tests/common/pg.rs`).
//!
//! Each case is an `async fn(&Db)`; `suite!` turns every case into `sqlite::<case>` and `postgres::<case>`,
//! so `cargo test --test store_suite sqlite::` or `postgres::` runs one backend.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use sha2::{Digest, Sha256};
use sqlx::{Connection, PgConnection, SqliteConnection};
use york_connector::model::{AuditAction, JobName, Provenance};
use york_connector::store::{
    AuditEntry, AuditFilter, Backend, Completion, LeaseAsk, LedgerEntry, Memo, Op, OutboxItem, OutboxRow, PlanReceipt,
    QuarantineRecord, ResourceKey, SendIntent, Store, StoreError,
};

use common::TempDir;
use common::pg::TestDb;

// ---------------------------------------------------------------------------------------------------------
// Test databases

enum Db {
    Sqlite { url: String, _dir: TempDir },
    Postgres(TestDb),
}

impl Db {
    fn sqlite() -> Db {
        let dir = TempDir::new("connector-store");
        // A directory that does not exist yet: connect must create it.
        let url = format!("sqlite://{}/state/state.db", dir.path().display());
        Db::Sqlite { url, _dir: dir }
    }

    async fn postgres() -> Db {
        Db::Postgres(TestDb::create().await)
    }

    fn url(&self) -> &str {
        match self {
            Db::Sqlite { url, .. } => url,
            Db::Postgres(db) => &db.url,
        }
    }

    fn backend(&self) -> Backend {
        match self {
            Db::Sqlite { .. } => Backend::Sqlite,
            Db::Postgres(_) => Backend::Postgres,
        }
    }

    async fn connect(&self) -> Store {
        let store = Store::connect(self.url()).await.unwrap_or_else(|e| panic!("connect: {e}"));
        assert_eq!(store.backend(), self.backend());
        store
    }

    async fn raw(&self) -> Raw {
        match self {
            Db::Sqlite { url, .. } => Raw::Sqlite(SqliteConnection::connect(url).await.expect("raw sqlite")),
            Db::Postgres(db) => Raw::Postgres(PgConnection::connect(&db.url).await.expect("raw postgres")),
        }
    }
}

/// A connection of the test's own, beside the store's pool.
enum Raw {
    Sqlite(SqliteConnection),
    Postgres(PgConnection),
}

impl Raw {
    async fn exec(&mut self, sql: &str) {
        let sql = sqlx::AssertSqlSafe(sql.to_string());
        match self {
            Raw::Sqlite(c) => sqlx::raw_sql(sql).execute(c).await.map(|_| ()),
            Raw::Postgres(c) => sqlx::raw_sql(sql).execute(c).await.map(|_| ()),
        }
        .unwrap_or_else(|e| panic!("raw SQL failed: {e}"));
    }

    /// Runs SQL that may fail (an append-only trigger refusing it).
    async fn try_exec(&mut self, sql: &str) -> Result<(), sqlx::Error> {
        let sql = sqlx::AssertSqlSafe(sql.to_string());
        match self {
            Raw::Sqlite(c) => sqlx::raw_sql(sql).execute(c).await.map(|_| ()),
            Raw::Postgres(c) => sqlx::raw_sql(sql).execute(c).await.map(|_| ()),
        }
    }

    async fn scalar_i64(&mut self, sql: &'static str) -> i64 {
        match self {
            Raw::Sqlite(c) => sqlx::query_scalar(sql).fetch_one(c).await,
            Raw::Postgres(c) => sqlx::query_scalar(sql).fetch_one(c).await,
        }
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Something that changes whenever any row of the store's tables is inserted, updated or deleted
    /// by another connection. SQLite: `PRAGMA data_version` (moves on every commit of another connection
    /// that changed the file). PostgreSQL: every row version's (ctid, xmin): an UPDATE, even one that sets
    /// the same values, creates a new row version.
    async fn write_mark(&mut self) -> String {
        match self {
            Raw::Sqlite(c) => {
                let v: i64 = sqlx::query_scalar("PRAGMA data_version").fetch_one(c).await.expect("data_version");
                v.to_string()
            }
            Raw::Postgres(c) => {
                let mut mark = String::new();
                for table in ["ledger", "outbox", "job_runs", "quarantine", "_sqlx_migrations"] {
                    let sql = format!(
                        "SELECT COALESCE(string_agg(ctid::text || ':' || xmin::text, ',' ORDER BY ctid), '') \
                         FROM {table}"
                    );
                    let part: String =
                        sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_one(&mut *c).await.expect("row versions");
                    mark.push_str(table);
                    mark.push('=');
                    mark.push_str(&part);
                    mark.push(';');
                }
                mark
            }
        }
    }
}

macro_rules! suite {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let db = super::Db::sqlite();
                    super::$case(&db).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let db = super::Db::postgres().await;
                    super::$case(&db).await;
                }
            )*
        }
    };
}

suite!(
    migrations_are_idempotent,
    refuses_a_newer_schema,
    unchanged_input_writes_nothing,
    enqueue_replaces_a_pending_row,
    enqueue_cancels_what_the_destination_already_holds,
    relinking_after_a_patients_delete_keeps_what_the_destination_holds,
    the_plan_memo_answers_only_for_what_is_held_unchanged_and_not_queued,
    the_plan_generation_moves_with_every_change_plans_read_and_only_then,
    lease_keeps_seq_order_per_patient,
    recording_a_bundle_leases_the_workers_next_one,
    a_row_planned_ahead_of_the_clock_is_due_and_keeps_its_place,
    expired_lease_is_taken_over,
    complete_when_a_newer_plan_replaced_the_row,
    complete_delete_removes_the_ledger_entry,
    complete_many_records_a_bundle_whole_or_not_at_all,
    enqueue_numbers_a_batch_in_the_order_planned,
    dead_letter_and_retry,
    two_instances_never_lease_the_same_row,
    leader_election,
    ledger_round_trip,
    job_runs,
    last_write_times,
    quarantine_round_trip,
    feed_ledger_round_trip,
    audit_chain_detects_edits_deletions_and_truncation,
);

// ---------------------------------------------------------------------------------------------------------
// Helpers

const CITO: &str = "cito";
const PKB: &str = "pkb";
const LONG: Duration = Duration::from_secs(300);

/// A fixed moment (whole milliseconds, as the store keeps them).
fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp_millis(1_750_000_000_000).expect("valid time")
}

fn at(secs: i64) -> DateTime<Utc> {
    t0() + TimeDelta::seconds(secs)
}

fn sha(body: &str) -> String {
    Sha256::digest(body.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

fn key(resource_type: &str, id: &str) -> ResourceKey {
    ResourceKey::new(resource_type, id)
}

fn upsert(dest: &str, resource_type: &str, id: &str, patient: Option<&str>, body: &str) -> OutboxItem {
    OutboxItem {
        destination: dest.to_string(),
        key: key(resource_type, id),
        patient: patient.map(str::to_string),
        op: Op::Upsert,
        content_hash: sha(body),
        body: Some(body.to_string()),
        origin: None,
    }
}

fn delete(dest: &str, resource_type: &str, id: &str, patient: Option<&str>) -> OutboxItem {
    OutboxItem {
        destination: dest.to_string(),
        key: key(resource_type, id),
        patient: patient.map(str::to_string),
        op: Op::Delete,
        content_hash: String::new(),
        body: None,
        origin: None,
    }
}

/// The ledger entry a successful send of `row` produces.
fn sent(row: &OutboxRow, now: DateTime<Utc>) -> LedgerEntry {
    LedgerEntry {
        destination: row.item.destination.clone(),
        key: row.item.key.clone(),
        remote_id: row.item.key.id.clone(),
        version_id: Some(format!("v{}", row.seq)),
        content_hash: row.item.content_hash.clone(),
        linked: false,
        patient: row.item.patient.clone(),
        updated_at: now,
        ..Default::default()
    }
}

fn ids(rows: &[OutboxRow]) -> Vec<&str> {
    rows.iter().map(|r| r.item.key.id.as_str()).collect()
}

/// Leases and completes everything of `dest` that is due at `now`.
async fn deliver_all(store: &Store, dest: &str, now: DateTime<Utc>) -> Vec<OutboxRow> {
    let mut all = Vec::new();
    loop {
        let rows = store.lease(dest, "deliver-all", 100, LONG, now).await.expect("lease");
        if rows.is_empty() {
            return all;
        }
        for row in rows {
            let entry = match row.item.op {
                Op::Upsert => Some(sent(&row, now)),
                Op::Delete => None,
            };
            store.complete(&row, entry.as_ref(), None).await.expect("complete");
            all.push(row);
        }
    }
}

async fn pending(store: &Store, dest: &str) -> Vec<OutboxRow> {
    store.outbox_list(Some(dest), false, 10_000).await.expect("outbox_list")
}

// ---------------------------------------------------------------------------------------------------------
// Cases

async fn migrations_are_idempotent(db: &Db) {
    let store = db.connect().await;
    let entry = LedgerEntry {
        destination: CITO.into(),
        key: key("Patient", "p1"),
        remote_id: "p1".into(),
        version_id: Some("1".into()),
        content_hash: sha("p1"),
        linked: false,
        patient: Some("Patient/p1".into()),
        updated_at: t0(),
        ..Default::default()
    };
    store.ledger_put(&entry).await.unwrap();
    store.close().await;

    // Again, twice at once: nothing to apply, nothing lost.
    let (a, b) = tokio::join!(db.connect(), db.connect());
    assert_eq!(a.ledger_get(CITO, &entry.key).await.unwrap(), Some(entry.clone()));
    assert_eq!(b.ledger_count(CITO).await.unwrap(), 1);

    let dir = match db.backend() {
        Backend::Sqlite => "migrations/sqlite",
        Backend::Postgres => "migrations/postgres",
    };
    let files = std::fs::read_dir(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir))
        .unwrap()
        .filter(|e| e.as_ref().is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".sql")))
        .count();
    let mut raw = db.raw().await;
    let applied = raw.scalar_i64("SELECT COUNT(*) FROM _sqlx_migrations").await;
    assert_eq!(applied, files as i64, "each migration applied exactly once");
}

async fn refuses_a_newer_schema(db: &Db) {
    db.connect().await.close().await;
    let mut raw = db.raw().await;
    let checksum = match db.backend() {
        Backend::Sqlite => "X'00'",
        Backend::Postgres => "decode('00', 'hex')",
    };
    raw.exec(&format!(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (99990101000000, 'from a newer connector', TRUE, {checksum}, 0)"
    ))
    .await;
    let before = raw.write_mark().await;

    let err = Store::connect(db.url()).await.expect_err("a newer schema must be refused");
    match &err {
        StoreError::SchemaTooNew { found, known, .. } => {
            assert_eq!(*found, 99990101000000);
            assert!(known < found);
        }
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
    let message = err.to_string();
    assert!(message.contains("newer connector"), "message says why: {message}");
    assert!(message.contains("restore"), "message says what to do: {message}");
    assert_eq!(raw.write_mark().await, before, "a refused start changes nothing");
}

async fn unchanged_input_writes_nothing(db: &Db) {
    let store = db.connect().await;
    let mut raw = db.raw().await;
    let items = vec![
        upsert(CITO, "Patient", "p1", Some("Patient/p1"), r#"{"resourceType":"Patient","id":"p1"}"#),
        upsert(CITO, "Observation", "o1", Some("Patient/p1"), r#"{"resourceType":"Observation","id":"o1"}"#),
        upsert(CITO, "Organization", "org", None, r#"{"resourceType":"Organization","id":"org"}"#),
        upsert(PKB, "Patient", "p1", Some("Patient/p1"), r#"{"resourceType":"Patient","id":"p1"}"#),
    ];
    assert_eq!(store.enqueue(&items, t0()).await.unwrap(), 4);

    // Planned but not yet sent: the same plan again changes nothing.
    let mark = raw.write_mark().await;
    assert_eq!(store.enqueue(&items, at(60)).await.unwrap(), 0);
    assert_eq!(store.enqueue(&[], at(60)).await.unwrap(), 0);
    assert_eq!(raw.write_mark().await, mark, "re-planning the pending outbox wrote something");

    // Sent: the ledger holds the hashes; the same plan, and deletes of unknown resources, change nothing.
    assert_eq!(deliver_all(&store, CITO, at(1)).await.len(), 3);
    assert_eq!(deliver_all(&store, PKB, at(1)).await.len(), 1);
    let mark = raw.write_mark().await;
    assert_eq!(store.enqueue(&items, at(120)).await.unwrap(), 0);
    assert_eq!(store.enqueue(&[delete(CITO, "Observation", "gone", None)], at(120)).await.unwrap(), 0);
    assert_eq!(raw.write_mark().await, mark, "an unchanged cycle wrote something");

    // The probe does see writes: one changed resource is one change.
    let mut changed = items.clone();
    changed[1] = upsert(CITO, "Observation", "o1", Some("Patient/p1"), r#"{"resourceType":"Observation"}"#);
    assert_eq!(store.enqueue(&changed, at(180)).await.unwrap(), 1);
    assert_ne!(raw.write_mark().await, mark);
    assert_eq!(ids(&pending(&store, CITO).await), ["o1"]);
    assert!(pending(&store, PKB).await.is_empty());
}

async fn enqueue_replaces_a_pending_row(db: &Db) {
    let store = db.connect().await;
    let a1 = upsert(CITO, "Observation", "a", Some("Patient/p"), "a-1");
    let b = upsert(CITO, "Observation", "b", Some("Patient/p"), "b-1");
    assert_eq!(store.enqueue(&[a1.clone(), b.clone()], t0()).await.unwrap(), 2);
    let before = pending(&store, CITO).await;
    assert_eq!(ids(&before), ["a", "b"]);

    // A failed attempt, then a new plan for `a`.
    let leased = store.lease(CITO, "w", 1, LONG, at(1)).await.unwrap();
    assert_eq!(ids(&leased), ["a"]);
    store.retry_later(leased[0].seq, at(30), "503 Service Unavailable").await.unwrap();
    let a2 = upsert(CITO, "Observation", "a", Some("Patient/p2"), "a-2");
    assert_eq!(store.enqueue(std::slice::from_ref(&a2), at(10)).await.unwrap(), 1);

    let after = pending(&store, CITO).await;
    assert_eq!(ids(&after), ["b", "a"], "the replaced row goes after everything planned before it");
    let (old_a, new_a) = (&before[0], &after[1]);
    assert!(new_a.seq > before[1].seq);
    assert_eq!(new_a.item, a2, "op, hash, body and patient replaced");
    assert_eq!(new_a.attempts, 0);
    assert_eq!(new_a.not_before, at(10), "due at once, not at the old back-off time");
    assert_eq!(new_a.last_error, None);
    assert_eq!(new_a.created_at, old_a.created_at, "the change has waited since the first plan");
    assert_eq!(after[0], before[1], "the other row is untouched");

    // The same plan once more is no change; the last of duplicates counts.
    assert_eq!(store.enqueue(std::slice::from_ref(&a2), at(11)).await.unwrap(), 0);
    let a3 = upsert(CITO, "Observation", "a", Some("Patient/p2"), "a-3");
    assert_eq!(store.enqueue(&[a3.clone(), a2.clone()], at(12)).await.unwrap(), 0);
    assert_eq!(store.enqueue(&[a2.clone(), a3.clone()], at(12)).await.unwrap(), 1);
    assert_eq!(pending(&store, CITO).await[1].item, a3);
    assert_eq!(pending(&store, CITO).await.len(), 2);

    let err = store
        .enqueue(&[OutboxItem { body: None, ..a3 }], at(13))
        .await
        .expect_err("an upsert without a body is a caller bug");
    assert!(matches!(err, StoreError::Invalid(_)), "{err:?}");
}

async fn enqueue_cancels_what_the_destination_already_holds(db: &Db) {
    let store = db.connect().await;
    let v1 = upsert(CITO, "Condition", "c", Some("Patient/p"), "c-1");
    store.enqueue(std::slice::from_ref(&v1), t0()).await.unwrap();
    deliver_all(&store, CITO, t0()).await;

    // Changed, then changed back before it went out: nothing left to send.
    let v2 = upsert(CITO, "Condition", "c", Some("Patient/p"), "c-2");
    assert_eq!(store.enqueue(std::slice::from_ref(&v2), at(1)).await.unwrap(), 1);
    assert_eq!(store.enqueue(std::slice::from_ref(&v1), at(2)).await.unwrap(), 1);
    assert!(pending(&store, CITO).await.is_empty());

    // A delete of something never sent cancels the planned create.
    let n = upsert(CITO, "Condition", "new", Some("Patient/p"), "n-1");
    store.enqueue(std::slice::from_ref(&n), at(3)).await.unwrap();
    assert_eq!(store.enqueue(&[delete(CITO, "Condition", "new", Some("Patient/p"))], at(4)).await.unwrap(), 1);
    assert!(pending(&store, CITO).await.is_empty());

    // But while the create is being sent, the delete is queued behind it instead.
    store.enqueue(std::slice::from_ref(&n), at(5)).await.unwrap();
    let in_flight = store.lease(CITO, "w", 10, LONG, at(5)).await.unwrap();
    assert_eq!(ids(&in_flight), ["new"]);
    assert_eq!(store.enqueue(&[delete(CITO, "Condition", "new", Some("Patient/p"))], at(6)).await.unwrap(), 1);
    store.complete(&in_flight[0], Some(&sent(&in_flight[0], at(7))), None).await.unwrap();
    let next = store.lease(CITO, "w", 10, LONG, at(8)).await.unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].item.op, Op::Delete);
}

/// When our Patient's delete lands and another partner's Patient was linked to it, that link is forgotten and
/// the person's other records there are marked to be planned again; none is forgotten, so a plan made later
/// (the daemon's ingest of the other partner, after a refusal) can still retract them. What is queued for
/// deletion is left as it is: a plan made meanwhile asks for the same retraction, once.
async fn relinking_after_a_patients_delete_keeps_what_the_destination_holds(db: &Db) {
    let store = db.connect().await;
    let person = "Person/x";
    let entry = |resource_type: &str, id: &str, remote_id: &str, linked: bool| LedgerEntry {
        destination: CITO.to_string(),
        key: key(resource_type, id),
        remote_id: remote_id.to_string(),
        version_id: Some("1".into()),
        content_hash: sha(id),
        linked,
        patient: Some(person.to_string()),
        updated_at: t0(),
        ..Default::default()
    };
    for e in [
        entry("Patient", "mind-p", "hub-p", true),
        entry("Encounter", "mind-e", "mind-e", false),
        entry("Encounter", "kept-e", "kept-e", false),
        entry("Encounter", "other-e", "other-e", false),
    ] {
        store.ledger_put(&e).await.unwrap();
    }
    store
        .ledger_put(&LedgerEntry { patient: Some("Person/y".into()), ..entry("Encounter", "y-e", "y-e", false) })
        .await
        .unwrap();
    // The withdrawal's retraction of the other partner's Encounter waits in the outbox.
    let retract = delete(CITO, "Encounter", "mind-e", Some(person));
    store.enqueue(std::slice::from_ref(&retract), at(1)).await.unwrap();

    // Our Patient's delete landed (its own entry went with it).
    assert_eq!(store.relink_after_delete(CITO, "hub-p", person).await.unwrap(), 3, "mind-p; kept-e, other-e");
    assert!(store.ledger_get(CITO, &key("Patient", "mind-p")).await.unwrap().is_none(), "linked to what is gone");
    for id in ["kept-e", "other-e"] {
        let e = store.ledger_get(CITO, &key("Encounter", id)).await.unwrap().expect("still held there");
        assert_eq!((e.content_hash.as_str(), e.remote_id.as_str(), e.version_id.as_deref()), ("", id, Some("1")));
    }
    assert_eq!(store.ledger_get(CITO, &key("Encounter", "mind-e")).await.unwrap().unwrap().content_hash, sha("mind-e"));
    assert_eq!(store.ledger_get(CITO, &key("Encounter", "y-e")).await.unwrap().unwrap().content_hash, sha("y-e"));

    // A plan made meanwhile asks for the same retraction: it stays queued, once.
    store.enqueue(std::slice::from_ref(&retract), at(2)).await.unwrap();
    let queued = pending(&store, CITO).await;
    assert_eq!((ids(&queued), queued[0].item.op), (vec!["mind-e"], Op::Delete));
    // A later plan that withholds a marked record retracts it; one that sends it queues it again.
    let gone = delete(CITO, "Encounter", "kept-e", Some(person));
    let again = upsert(CITO, "Encounter", "other-e", Some(person), "other-e");
    assert_eq!(store.enqueue(&[gone, again], at(3)).await.unwrap(), 2);
    // Nothing is linked to it any more: nothing more to do.
    assert_eq!(store.relink_after_delete(CITO, "hub-p", person).await.unwrap(), 0);
}

/// `plan_generation` (plan receipts, `sync::receipt`): every write that changes a row a plan reads moves it,
/// in the writing transaction; a statement that changes nothing (a lease of an empty outbox, a key already
/// queued the same way) and writes plans do not read (the memo, the receipts) do not.
async fn the_plan_generation_moves_with_every_change_plans_read_and_only_then(db: &Db) {
    let store = db.connect().await;
    let person = "Person/x";
    let mut last = store.plan_generation().await.unwrap();
    let mut moved = |now: i64, what: &str, expect: bool| {
        assert_eq!(now != last, expect, "{what}: generation {last} -> {now}");
        last = now;
    };
    let lease_counts = db.backend() == Backend::Postgres; // SQLite's triggers leave a lease's columns out
    store.lease(CITO, "me", 10, LONG, at(0)).await.unwrap();
    moved(store.plan_generation().await.unwrap(), "a lease of an empty outbox", false);
    let item = upsert(CITO, "Patient", "p", Some(person), "{}");
    store.enqueue(std::slice::from_ref(&item), at(1)).await.unwrap();
    moved(store.plan_generation().await.unwrap(), "enqueue", true);
    store.enqueue(std::slice::from_ref(&item), at(2)).await.unwrap();
    moved(store.plan_generation().await.unwrap(), "the same enqueue again", false);
    let rows = store.lease(CITO, "me", 10, LONG, at(3)).await.unwrap();
    moved(store.plan_generation().await.unwrap(), "a lease", lease_counts);
    store.complete(&rows[0], Some(&sent(&rows[0], at(4))), None).await.unwrap();
    moved(store.plan_generation().await.unwrap(), "complete (outbox row, ledger entry)", true);
    let memo = Memo { input_hash: sha("in"), content_hash: sha("{}") };
    store.memo_put(CITO, &[(&key("Patient", "p"), memo)]).await.unwrap();
    let receipt = PlanReceipt { fingerprint: "f".into(), at: t0(), summary: "{}".into() };
    store.plan_receipt_put("hub", &receipt).await.unwrap();
    moved(store.plan_generation().await.unwrap(), "the memo and a receipt", false);
    assert_eq!(store.plan_receipt("hub").await.unwrap(), Some(receipt));
    store.plan_receipt_clear("hub").await.unwrap();
    assert_eq!(store.plan_receipt("hub").await.unwrap(), None);
    store.relink_after_delete(CITO, "nobody", person).await.unwrap();
    moved(store.plan_generation().await.unwrap(), "a relink with nothing linked", false);
    store.ledger_forget(CITO, &[key("Patient", "p")]).await.unwrap();
    moved(store.plan_generation().await.unwrap(), "a ledger entry forgotten", true);
}

async fn the_plan_memo_answers_only_for_what_is_held_unchanged_and_not_queued(db: &Db) {
    let store = db.connect().await;
    let memo = |input: &str, body: &str| Memo { input_hash: sha(input), content_hash: sha(body) };
    let (held, queued, dead, stale, unheld) = (
        key("Patient", "held"),
        key("Patient", "queued"),
        key("Patient", "dead"),
        key("Patient", "stale"),
        key("Patient", "unheld"),
    );
    store
        .memo_put(
            CITO,
            &[
                (&held, memo("in-held", "held")),
                (&queued, memo("in-queued", "queued")),
                (&dead, memo("in-dead", "dead")),
                (&stale, memo("in-stale", "stale v2")),
                (&unheld, memo("in-unheld", "unheld")),
            ],
        )
        .await
        .unwrap();
    // Replacing a memo keeps one row per key.
    store.memo_put(CITO, &[(&held, memo("in-held", "held"))]).await.unwrap();
    for id in ["held", "queued", "dead", "stale"] {
        let entry = LedgerEntry {
            destination: CITO.to_string(),
            key: key("Patient", id),
            remote_id: id.to_string(),
            version_id: Some("1".into()),
            content_hash: sha(id),
            updated_at: t0(),
            ..Default::default()
        };
        store.ledger_put(&entry).await.unwrap();
    }
    // "queued": a newer plan waits in the outbox; "dead": a dead letter of another version is parked.
    store.enqueue(&[upsert(CITO, "Patient", "queued", None, "queued v2")], t0()).await.unwrap();
    store.enqueue(&[upsert(CITO, "Patient", "dead", None, "dead v2")], t0()).await.unwrap();
    let row = store.lease(CITO, "w", 10, LONG, t0()).await.unwrap().into_iter().find(|r| r.item.key == dead).unwrap();
    store.dead_letter(row.seq, "refused").await.unwrap();
    let never = key("Patient", "never");
    let probes: Vec<(&ResourceKey, String)> = vec![
        (&held, sha("in-held")),
        (&held, sha("in-held-changed")),
        (&queued, sha("in-queued")),
        (&dead, sha("in-dead")),
        (&stale, sha("in-stale")),
        (&unheld, sha("in-unheld")),
        (&never, sha("x")),
    ];
    let probes: Vec<(&ResourceKey, &str)> = probes.iter().map(|(k, f)| (*k, f.as_str())).collect();
    let answers = store.memo_unchanged(CITO, &probes).await.unwrap();
    assert_eq!(answers, [Some(sha("held")), None, None, None, None, None, None]);
    // Another destination's memo says nothing about this one.
    assert_eq!(store.memo_unchanged(PKB, &probes[..1]).await.unwrap(), [None]);
}

async fn lease_keeps_seq_order_per_patient(db: &Db) {
    let store = db.connect().await;
    let items = [
        upsert(CITO, "Patient", "1", Some("Patient/A"), "1"),
        upsert(CITO, "Encounter", "2", Some("Patient/A"), "2"),
        upsert(CITO, "Patient", "3", Some("Patient/B"), "3"),
        upsert(CITO, "Organization", "4", None, "4"),
        upsert(CITO, "Observation", "5", Some("Patient/A"), "5"),
        upsert(CITO, "Organization", "6", None, "6"),
        upsert(PKB, "Patient", "7", Some("Patient/A"), "7"),
    ];
    store.enqueue(&items, t0()).await.unwrap();
    let seqs: Vec<i64> = pending(&store, CITO).await.iter().map(|r| r.seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "seq follows the order of planning");

    // x takes A's first write; A's later writes wait for it, even for x itself, other groups do not.
    assert_eq!(ids(&store.lease(CITO, "x", 1, LONG, t0()).await.unwrap()), ["1"]);
    assert_eq!(ids(&store.lease(CITO, "y", 10, LONG, t0()).await.unwrap()), ["3", "4", "6"]);
    assert!(store.lease(CITO, "x", 10, LONG, t0()).await.unwrap().is_empty());
    // Another destination is another queue.
    assert_eq!(ids(&store.lease(PKB, "y", 10, LONG, t0()).await.unwrap()), ["7"]);

    // A's first write fails and backs off: A's later writes still wait.
    let first = pending(&store, CITO).await[0].seq;
    store.retry_later(first, at(60), "timeout").await.unwrap();
    assert!(store.lease(CITO, "z", 10, LONG, at(59)).await.unwrap().is_empty());
    // Once it is due, A's writes go out together, in order, `max` respected.
    assert_eq!(ids(&store.lease(CITO, "z", 2, LONG, at(60)).await.unwrap()), ["1", "2"]);
    assert!(store.lease(CITO, "z", 10, LONG, at(60)).await.unwrap().is_empty());

    // A clean shutdown hands the leases back at once.
    store.release("z").await.unwrap();
    let again = store.lease(CITO, "w", 10, LONG, at(61)).await.unwrap();
    assert_eq!(ids(&again), ["1", "2", "5"]);
    assert_eq!(again[0].attempts, 1);
    assert_eq!(again[0].last_error.as_deref(), Some("timeout"));
    assert!(store.lease(CITO, "w", 0, LONG, at(61)).await.unwrap().is_empty());
}

/// A worker records its bundle and leases its next one in one call: the lease sees the rows just recorded
/// gone (the person's next row is due in it) and follows the lease's rules (order, owner, `max`).
async fn recording_a_bundle_leases_the_workers_next_one(db: &Db) {
    let store = db.connect().await;
    let items = [
        upsert(CITO, "Patient", "1", Some("Patient/A"), "1"),
        upsert(CITO, "Encounter", "2", Some("Patient/A"), "2"),
        upsert(CITO, "Patient", "3", Some("Patient/B"), "3"),
        upsert(CITO, "Organization", "4", None, "4"),
        upsert(CITO, "Observation", "5", Some("Patient/B"), "5"),
    ];
    store.enqueue(&items, t0()).await.unwrap();
    let first = store.lease(CITO, "x", 1, LONG, t0()).await.unwrap();
    assert_eq!(ids(&first), ["1"]);
    let entry = sent(&first[0], at(1));
    let done = [Completion { row: &first[0], ledger: Some(&entry), audit: None }];
    let ask = LeaseAsk { destination: CITO, owner: "x", max: 2, lease_for: LONG };
    let next = store.complete_and_lease(&done, &ask).await.unwrap();
    assert_eq!(ids(&next), ["2", "3"], "A's next row is due once 1 is recorded; max respected");
    assert!(next.iter().all(|r| r.attempts == 0));
    // 1 is recorded as complete() records it.
    let held = store.ledger_get_many(CITO, &[key("Patient", "1")]).await.unwrap();
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].version_id, entry.version_id);
    assert_eq!(ids(&pending(&store, CITO).await), ["2", "3", "4", "5"]);
    // They are x's: another worker gets the rest, B's later row waiting for 3.
    assert_eq!(ids(&store.lease(CITO, "y", 10, LONG, Utc::now()).await.unwrap()), ["4"]);
    // Nothing to record: a lease alone.
    let ask = LeaseAsk { destination: CITO, owner: "z", max: 10, lease_for: LONG };
    assert!(store.complete_and_lease(&[], &ask).await.unwrap().is_empty());
    store.release("x").await.unwrap();
    assert_eq!(ids(&store.complete_and_lease(&[], &ask).await.unwrap()), ["2", "3", "5"]);
}

/// The clock was set back between two plans of one person: the first row's `not_before` (the time it was
/// planned) is ahead of the clock. It is due all the same, and the later row does not overtake it.
async fn a_row_planned_ahead_of_the_clock_is_due_and_keeps_its_place(db: &Db) {
    let store = db.connect().await;
    store.enqueue(&[upsert(CITO, "Patient", "1", Some("Patient/A"), "1")], at(100)).await.unwrap();
    store.enqueue(&[upsert(CITO, "Encounter", "2", Some("Patient/A"), "2")], at(10)).await.unwrap();
    assert_eq!(ids(&store.lease(CITO, "x", 1, LONG, at(20)).await.unwrap()), ["1"]);
    assert!(store.lease(CITO, "y", 10, LONG, at(20)).await.unwrap().is_empty(), "2 waits for 1, leased");
    // Once it has failed, its not_before is a back-off and holds the person's later writes.
    let first = pending(&store, CITO).await[0].seq;
    store.retry_later(first, at(60), "timeout").await.unwrap();
    assert!(store.lease(CITO, "y", 10, LONG, at(30)).await.unwrap().is_empty(), "1 backs off, 2 waits");
    assert_eq!(ids(&store.lease(CITO, "y", 10, LONG, at(60)).await.unwrap()), ["1", "2"]);
}

async fn expired_lease_is_taken_over(db: &Db) {
    let store = db.connect().await;
    store
        .enqueue(
            &[upsert(CITO, "Patient", "p", Some("Patient/p"), "p"), upsert(CITO, "Flag", "f", Some("Patient/p"), "f")],
            t0(),
        )
        .await
        .unwrap();
    let first = store.lease(CITO, "crashed", 1, Duration::from_secs(30), t0()).await.unwrap();
    assert_eq!(ids(&first), ["p"]);
    assert!(store.lease(CITO, "other", 10, LONG, at(29)).await.unwrap().is_empty());
    let taken = store.lease(CITO, "other", 10, LONG, at(30)).await.unwrap();
    assert_eq!(ids(&taken), ["p", "f"]);
    assert_eq!(taken[0].seq, first[0].seq);
    assert_eq!(taken[0].attempts, 0, "an expired lease is not a failed attempt");
}

async fn complete_when_a_newer_plan_replaced_the_row(db: &Db) {
    let store = db.connect().await;
    let v1 = upsert(CITO, "Observation", "o", Some("Patient/p"), "v1");
    store.enqueue(std::slice::from_ref(&v1), t0()).await.unwrap();
    let leased = store.lease(CITO, "x", 10, LONG, t0()).await.unwrap();

    // While v1 is on the wire, v2 is planned: it replaces the row but must not go out in parallel.
    let v2 = upsert(CITO, "Observation", "o", Some("Patient/p"), "v2");
    assert_eq!(store.enqueue(std::slice::from_ref(&v2), at(1)).await.unwrap(), 1);
    assert!(store.lease(CITO, "y", 10, LONG, at(2)).await.unwrap().is_empty());

    // v1 lands: the ledger says v1, v2 stays queued and is free again.
    store.complete(&leased[0], Some(&sent(&leased[0], at(3))), None).await.unwrap();
    assert_eq!(store.ledger_get(CITO, &v1.key).await.unwrap().unwrap().content_hash, v1.content_hash);
    let next = store.lease(CITO, "y", 10, LONG, at(4)).await.unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].item, v2);
    assert!(next[0].seq > leased[0].seq);
    store.complete(&next[0], Some(&sent(&next[0], at(5))), None).await.unwrap();
    assert_eq!(store.ledger_get(CITO, &v1.key).await.unwrap().unwrap().content_hash, v2.content_hash);
    assert!(pending(&store, CITO).await.is_empty());

    // Replaced and replaced back while on the wire: what landed is what is planned, nothing more to do.
    let v3 = upsert(CITO, "Observation", "o", Some("Patient/p"), "v3");
    store.enqueue(std::slice::from_ref(&v3), at(6)).await.unwrap();
    let leased = store.lease(CITO, "x", 10, LONG, at(6)).await.unwrap();
    store.enqueue(std::slice::from_ref(&v1), at(7)).await.unwrap();
    store.enqueue(std::slice::from_ref(&v3), at(8)).await.unwrap();
    store.complete(&leased[0], Some(&sent(&leased[0], at(9))), None).await.unwrap();
    assert!(pending(&store, CITO).await.is_empty());
    assert_eq!(store.ledger_get(CITO, &v1.key).await.unwrap().unwrap().content_hash, v3.content_hash);

    // A failure report for the replaced row leaves the new plan due, without a back-off or an attempt.
    let v4 = upsert(CITO, "Observation", "o", Some("Patient/p"), "v4");
    store.enqueue(std::slice::from_ref(&v4), at(10)).await.unwrap();
    let leased = store.lease(CITO, "x", 10, LONG, at(10)).await.unwrap();
    let v5 = upsert(CITO, "Observation", "o", Some("Patient/p"), "v5");
    store.enqueue(std::slice::from_ref(&v5), at(11)).await.unwrap();
    store.dead_letter(leased[0].seq, r#"{"resourceType":"OperationOutcome"}"#).await.unwrap();
    let next = store.lease(CITO, "y", 10, LONG, at(12)).await.unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!((next[0].item.clone(), next[0].attempts, next[0].dead), (v5, 0, false));
}

async fn complete_delete_removes_the_ledger_entry(db: &Db) {
    let store = db.connect().await;
    let item = upsert(PKB, "DocumentReference", "d", Some("Patient/p"), "doc");
    store.enqueue(std::slice::from_ref(&item), t0()).await.unwrap();
    deliver_all(&store, PKB, t0()).await;
    assert_eq!(store.ledger_count(PKB).await.unwrap(), 1);

    let del = delete(PKB, "DocumentReference", "d", Some("Patient/p"));
    assert_eq!(store.enqueue(std::slice::from_ref(&del), at(1)).await.unwrap(), 1);
    let rows = store.lease(PKB, "w", 10, LONG, at(1)).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].item.op, rows[0].item.body.as_deref()), (Op::Delete, None));
    store.complete(&rows[0], None, None).await.unwrap();
    assert_eq!(store.ledger_get(PKB, &item.key).await.unwrap(), None);
    assert!(pending(&store, PKB).await.is_empty());
    assert_eq!(store.enqueue(&[del], at(2)).await.unwrap(), 0, "already deleted");

    // A ledger entry for another resource than the row is a caller bug.
    store.enqueue(std::slice::from_ref(&item), at(3)).await.unwrap();
    let rows = store.lease(PKB, "w", 10, LONG, at(3)).await.unwrap();
    let mut wrong = sent(&rows[0], at(4));
    wrong.key.id = "other".into();
    assert!(matches!(store.complete(&rows[0], Some(&wrong), None).await, Err(StoreError::Invalid(_))));
}

/// A delivered bundle is recorded in one transaction: ledger entries written and removed, audit entries
/// chained in the bundle's order, send intents cleared, outbox rows removed (a row replaced meanwhile keeps
/// its newer plan, free to go) — and when any part fails, none of it is recorded.
async fn complete_many_records_a_bundle_whole_or_not_at_all(db: &Db) {
    let store = db.connect().await;
    let doc = upsert(CITO, "DocumentReference", "d", Some("Patient/p"), "doc");
    store.enqueue(std::slice::from_ref(&doc), t0()).await.unwrap();
    deliver_all(&store, CITO, t0()).await;
    let items = [
        upsert(CITO, "Patient", "p", Some("Patient/p"), "p-1"),
        upsert(CITO, "Encounter", "e1", Some("Patient/p"), "e1-1"),
        upsert(CITO, "Encounter", "e2", Some("Patient/p"), "e2-1"),
        upsert(CITO, "Observation", "o", Some("Patient/q"), "o-1"),
        upsert(CITO, "Observation", "back", Some("Patient/q"), "back-1"),
        delete(CITO, "DocumentReference", "d", Some("Patient/p")),
    ];
    store.enqueue(&items, at(1)).await.unwrap();
    let rows = store.lease(CITO, "w", 10, LONG, at(1)).await.unwrap();
    assert_eq!(ids(&rows), ["p", "e1", "e2", "o", "back", "d"]);
    // While the bundle is on the wire: `o` gets a newer plan; `back` is replaced and planned back again.
    let o2 = upsert(CITO, "Observation", "o", Some("Patient/q"), "o-2");
    store.enqueue(std::slice::from_ref(&o2), at(2)).await.unwrap();
    store.enqueue(&[upsert(CITO, "Observation", "back", Some("Patient/q"), "back-2")], at(2)).await.unwrap();
    store.enqueue(std::slice::from_ref(&items[4]), at(2)).await.unwrap();
    let intents: Vec<SendIntent> = rows
        .iter()
        .filter(|r| r.item.op == Op::Upsert)
        .map(|r| SendIntent {
            destination: CITO.into(),
            resource_type: r.item.key.resource_type.clone(),
            resource_id: r.item.key.id.clone(),
            held_hash: format!("held-{}", r.item.key.id),
            remote_id: r.item.key.id.clone(),
            content_hash: r.item.content_hash.clone(),
            since: at(1),
            ..Default::default()
        })
        .collect();
    store.intents_record(&intents).await.unwrap();

    let entries: Vec<Option<LedgerEntry>> =
        rows.iter().map(|r| (r.item.op == Op::Upsert).then(|| sent(r, at(3)))).collect();
    let audits: Vec<AuditEntry> = rows
        .iter()
        .map(|r| AuditEntry {
            at: at(3),
            action: (if r.item.op == Op::Upsert { "disclosed" } else { "retracted" }).parse().unwrap(),
            destination: Some(CITO.into()),
            person: r.item.patient.clone(),
            resource_type: Some(r.item.key.resource_type.clone()),
            resource_id: Some(r.item.key.id.clone()),
            ..Default::default()
        })
        .collect();
    let done: Vec<Completion<'_>> = rows
        .iter()
        .zip(&entries)
        .zip(&audits)
        .map(|((row, entry), audit)| Completion { row, ledger: entry.as_ref(), audit: Some(audit) })
        .collect();

    // The audit chain's head gone: the audit cannot be written, so nothing of the bundle is recorded.
    let mut raw = db.raw().await;
    let head: String = match &mut raw {
        Raw::Sqlite(c) => {
            sqlx::query_scalar("SELECT value FROM settings WHERE name = 'audit_chain_head'").fetch_one(c).await.unwrap()
        }
        Raw::Postgres(c) => {
            sqlx::query_scalar("SELECT value FROM settings WHERE name = 'audit_chain_head'").fetch_one(c).await.unwrap()
        }
    };
    raw.exec("DELETE FROM settings WHERE name = 'audit_chain_head'").await;
    let err = store.complete_many(&done).await.expect_err("no audit, no record");
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    assert_eq!(store.ledger_count(CITO).await.unwrap(), 1, "only the document delivered before");
    assert!(store.ledger_get(CITO, &key("Patient", "p")).await.unwrap().is_none());
    assert_eq!(store.intents_due(CITO, at(1_000_000), 100).await.unwrap().len(), 5, "intents kept");
    assert_eq!(pending(&store, CITO).await.len(), 6, "every row still queued");
    assert!(store.audit_list(&AuditFilter::default()).await.unwrap().is_empty());
    raw.exec(&format!("INSERT INTO settings (name, value) VALUES ('audit_chain_head', '{head}')")).await;

    // A ledger entry of another resource than its row is refused before anything is written.
    let mut wrong = sent(&rows[0], at(3));
    wrong.key.id = "other".into();
    let mut bad = done.clone();
    bad[0].ledger = Some(&wrong);
    assert!(matches!(store.complete_many(&bad).await, Err(StoreError::Invalid(_))));

    store.complete_many(&done).await.unwrap();
    for row in &rows[..5] {
        let entry = store.ledger_get(CITO, &row.item.key).await.unwrap().expect("recorded");
        assert_eq!(entry.content_hash, row.item.content_hash);
    }
    assert_eq!(store.ledger_get(CITO, &doc.key).await.unwrap(), None, "the deleted document is forgotten");
    assert!(store.intents_due(CITO, at(1_000_000), 100).await.unwrap().is_empty(), "nothing in doubt");
    // Only o's newer plan is left, free to go at once.
    let left = store.lease(CITO, "w2", 10, LONG, at(4)).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].item, o2);
    // The audit holds the bundle in its order, chained.
    let trail = store.audit_list(&AuditFilter::default()).await.unwrap();
    let mut listed: Vec<(i64, String)> =
        trail.iter().map(|a| (a.id, a.resource_id.clone().unwrap_or_default())).collect();
    listed.sort();
    assert_eq!(listed.iter().map(|(_, id)| id.as_str()).collect::<Vec<_>>(), ["p", "e1", "e2", "o", "back", "d"]);
    let chain = store.audit_verify().await.unwrap();
    assert_eq!((chain.chained, chain.head_count, &chain.broken), (6, 6, &None), "{chain:?}");
    // And it grows on from there.
    store.audit_append(&audits[0]).await.unwrap();
    assert_eq!(store.audit_verify().await.unwrap().broken, None);
    store.close().await;
}

/// Writes planned in one call are numbered in the order planned, whether they are new rows or replace
/// pending ones, so one person's writes go out in that order.
async fn enqueue_numbers_a_batch_in_the_order_planned(db: &Db) {
    let store = db.connect().await;
    store
        .enqueue(
            &[
                upsert(CITO, "Patient", "p", Some("Patient/p"), "p-1"),
                upsert(CITO, "Flag", "f", Some("Patient/p"), "f-1"),
            ],
            t0(),
        )
        .await
        .unwrap();
    // The Patient changes, with a new Encounter planned before and a new Condition after it; the Flag is
    // planned unchanged.
    let batch = [
        upsert(CITO, "Encounter", "e", Some("Patient/p"), "e-1"),
        upsert(CITO, "Patient", "p", Some("Patient/p"), "p-2"),
        upsert(CITO, "Flag", "f", Some("Patient/p"), "f-1"),
        upsert(CITO, "Condition", "c", Some("Patient/p"), "c-1"),
    ];
    assert_eq!(store.enqueue(&batch, at(1)).await.unwrap(), 3);
    assert_eq!(ids(&pending(&store, CITO).await), ["f", "e", "p", "c"]);
    // Many keys at once, across destinations, in one batch.
    let many: Vec<OutboxItem> = (0..1200)
        .map(|i| {
            upsert(if i % 2 == 0 { CITO } else { PKB }, "Observation", &format!("o{i:04}"), Some("Patient/p"), "x")
        })
        .collect();
    assert_eq!(store.enqueue(&many, at(2)).await.unwrap(), 1200);
    let cito = pending(&store, CITO).await;
    assert_eq!(cito.len(), 604);
    assert!(cito[4..].windows(2).all(|w| w[0].item.key.id < w[1].item.key.id), "in the order planned");
    assert_eq!(store.enqueue(&many, at(3)).await.unwrap(), 0);
}

async fn dead_letter_and_retry(db: &Db) {
    let store = db.connect().await;
    let bad = upsert(CITO, "Observation", "bad", Some("Patient/p"), "bad");
    let worse = upsert(CITO, "Observation", "worse", None, "worse");
    let later = upsert(CITO, "Observation", "later", Some("Patient/p"), "later");
    store.enqueue(&[bad.clone(), worse.clone(), later.clone()], t0()).await.unwrap();
    let rows = store.lease(CITO, "w", 2, LONG, t0()).await.unwrap();
    let outcome = r#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"invalid"}]}"#;
    store.dead_letter(rows[0].seq, outcome).await.unwrap();
    store.dead_letter(rows[1].seq, "422").await.unwrap();

    let dead = store.outbox_list(Some(CITO), true, 100).await.unwrap();
    assert_eq!(ids(&dead), ["bad", "worse"]);
    assert!(dead.iter().all(|r| r.dead && r.attempts == 1));
    assert_eq!(dead[0].last_error.as_deref(), Some(outcome));
    assert_eq!(dead[0].item.body, bad.body, "the body is kept for the admin");
    assert_eq!(store.outbox_list(None, false, 100).await.unwrap().len(), 3);
    assert_eq!(store.outbox_list(None, false, 1).await.unwrap().len(), 1);

    // A dead letter does not hold the patient's later writes.
    assert_eq!(ids(&store.lease(CITO, "w", 10, LONG, at(1)).await.unwrap()), ["later"]);
    let depths = store.queue_depths().await.unwrap();
    assert_eq!(depths.len(), 1);
    assert_eq!((depths[0].destination.as_str(), depths[0].pending, depths[0].dead), (CITO, 1, 2));
    assert_eq!(depths[0].oldest_pending, Some(t0()));

    // The same plan again does not resurrect it: it waits for an admin.
    assert_eq!(store.enqueue(&[bad.clone(), worse.clone()], at(2)).await.unwrap(), 0);
    assert!(store.outbox_retry(rows[0].seq, at(3)).await.unwrap());
    assert!(!store.outbox_retry(rows[0].seq, at(3)).await.unwrap(), "no longer dead");
    assert!(!store.outbox_retry(999_999, at(3)).await.unwrap(), "no such row");
    let retried = store.lease(CITO, "w", 10, LONG, at(3)).await.unwrap();
    assert_eq!(ids(&retried), ["bad"]);
    assert_eq!(retried[0].attempts, 0);

    // New content supersedes a dead letter.
    let worse2 = upsert(CITO, "Observation", "worse", None, "worse-fixed");
    assert_eq!(store.enqueue(std::slice::from_ref(&worse2), at(4)).await.unwrap(), 1);
    assert!(store.outbox_list(Some(CITO), true, 100).await.unwrap().is_empty());

    // Retry all.
    store.dead_letter(retried[0].seq, "400").await.unwrap();
    let rows = store.lease(CITO, "w", 10, LONG, at(5)).await.unwrap();
    assert_eq!(ids(&rows), ["worse"]);
    store.dead_letter(rows[0].seq, "400").await.unwrap();
    assert_eq!(store.outbox_retry_dead(Some(PKB), at(6)).await.unwrap(), 0);
    assert_eq!(store.outbox_retry_dead(Some(CITO), at(6)).await.unwrap(), 2);
    assert_eq!(store.outbox_retry_dead(None, at(6)).await.unwrap(), 0);
    let depths = store.queue_depths().await.unwrap();
    assert_eq!((depths[0].pending, depths[0].dead), (3, 0));
}

async fn two_instances_never_lease_the_same_row(db: &Db) {
    const ROWS: usize = 500;
    const PATIENTS: usize = 40;
    let setup = db.connect().await;
    let items: Vec<OutboxItem> = (0..ROWS)
        .map(|i| {
            let patient = (i < 400).then(|| format!("Patient/{}", i % PATIENTS));
            upsert(CITO, "Observation", &format!("o{i:04}"), patient.as_deref(), &format!("body {i}"))
        })
        .collect();
    assert_eq!(setup.enqueue(&items, t0()).await.unwrap(), ROWS);
    let all = pending(&setup, CITO).await;
    assert_eq!(all.len(), ROWS);
    // Each patient's rows, in seq order.
    let mut by_patient: HashMap<String, Vec<i64>> = HashMap::new();
    for row in &all {
        if let Some(p) = &row.item.patient {
            by_patient.entry(p.clone()).or_default().push(row.seq);
        }
    }
    let by_patient = Arc::new(by_patient);
    let done: Arc<Mutex<HashSet<i64>>> = Arc::default();
    // Both instances hold their first batch before either completes anything, so that each
    // takes part however the scheduler orders them (on a busy machine one instance could
    // otherwise drain the queue before the other has started).
    let first_batch = Arc::new(tokio::sync::Barrier::new(2));

    let mut workers = Vec::new();
    for n in 0..2 {
        let store = db.connect().await; // an instance of its own: own pool, own connections
        let by_patient = by_patient.clone();
        let done = done.clone();
        let first_batch = first_batch.clone();
        workers.push(tokio::spawn(async move {
            let owner = format!("instance-{n}");
            let mut got = Vec::new();
            let mut idle_rounds = 0;
            let mut waited = false;
            loop {
                let rows = store.lease(CITO, &owner, 7, LONG, t0()).await.expect("lease");
                if !rows.is_empty() && !waited {
                    waited = true;
                    tokio::time::timeout(Duration::from_secs(30), first_batch.wait())
                        .await
                        .unwrap_or_else(|_| panic!("{owner}: the other instance never leased a row"));
                }
                if rows.is_empty() {
                    if store.queue_depths().await.expect("depths").iter().all(|d| d.pending == 0) {
                        break;
                    }
                    idle_rounds += 1;
                    assert!(idle_rounds < 10_000, "{owner}: starved");
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
                let in_batch: HashSet<i64> = rows.iter().map(|r| r.seq).collect();
                for row in &rows {
                    if let Some(p) = &row.item.patient {
                        let finished = done.lock().unwrap();
                        for earlier in by_patient[p].iter().filter(|&&s| s < row.seq) {
                            assert!(
                                finished.contains(earlier) || in_batch.contains(earlier),
                                "{owner} leased seq {} of {p} before seq {earlier} was sent",
                                row.seq
                            );
                        }
                    }
                }
                for row in rows {
                    done.lock().unwrap().insert(row.seq);
                    store.complete(&row, Some(&sent(&row, t0())), None).await.expect("complete");
                    got.push(row.seq);
                }
            }
            store.close().await;
            got
        }));
    }
    let mut seen: BTreeMap<i64, usize> = BTreeMap::new();
    let mut counts = Vec::new();
    for (n, worker) in workers.into_iter().enumerate() {
        let got = worker.await.expect("worker panicked");
        counts.push(got.len());
        for seq in got {
            if let Some(other) = seen.insert(seq, n) {
                panic!("seq {seq} leased by instance {other} and instance {n}");
            }
        }
    }
    let expected: Vec<i64> = all.iter().map(|r| r.seq).collect();
    assert_eq!(seen.keys().copied().collect::<Vec<_>>(), expected, "every row delivered exactly once");
    assert!(counts.iter().all(|&c| c > 0), "both instances took part: {counts:?}");
    assert_eq!(setup.ledger_count(CITO).await.unwrap(), ROWS as u64);
    assert!(pending(&setup, CITO).await.is_empty());
}

async fn leader_election(db: &Db) {
    let one = db.connect().await;
    let two = db.connect().await;
    let mut first = one.try_lead("scheduler").await.unwrap().expect("nobody leads yet");
    assert_eq!(first.name(), "scheduler");
    assert!(first.still_leading().await);
    match db.backend() {
        Backend::Sqlite => {
            // One instance per file: leading is always granted.
            assert!(two.try_lead("scheduler").await.unwrap().is_some());
        }
        Backend::Postgres => {
            assert!(two.try_lead("scheduler").await.unwrap().is_none(), "another instance leads");
            assert!(one.try_lead("scheduler").await.unwrap().is_none(), "even the same store: one session");
            let other = two.try_lead("reconcile").await.unwrap().expect("another name is another lock");

            // Dropping the guard closes its session; the server then drops the lock.
            drop(first);
            let mut second = None;
            for _ in 0..100 {
                second = two.try_lead("scheduler").await.unwrap();
                if second.is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let second = second.expect("leadership free again within 5 s of dropping the guard");
            // An explicit release is confirmed by the server before it returns.
            second.release().await.unwrap();
            let third = one.try_lead("scheduler").await.unwrap().expect("free right after release");
            assert!(two.try_lead("scheduler").await.unwrap().is_none());
            drop(third);
            other.release().await.unwrap();
        }
    }
}

async fn ledger_round_trip(db: &Db) {
    let store = db.connect().await;
    let linked = LedgerEntry {
        destination: CITO.into(),
        key: key("Patient", "ours"),
        remote_id: "hospital-123".into(),
        version_id: None,
        content_hash: String::new(),
        linked: true,
        patient: Some("Patient/ours".into()),
        updated_at: t0(),
        ..Default::default()
    };
    store.ledger_put(&linked).await.unwrap();
    assert_eq!(store.ledger_get(CITO, &linked.key).await.unwrap(), Some(linked.clone()));
    assert_eq!(store.ledger_get(PKB, &linked.key).await.unwrap(), None);

    let mut updated = linked.clone();
    updated.version_id = Some("7".into());
    updated.updated_at = at(1);
    store.ledger_put(&updated).await.unwrap();
    assert_eq!(store.ledger_get(CITO, &linked.key).await.unwrap(), Some(updated.clone()));

    // More keys than one statement takes.
    let mut keys = Vec::new();
    for i in 0..1_200 {
        let k = key("Observation", &format!("o{i}"));
        if i % 12 != 0 {
            let entry = LedgerEntry {
                destination: CITO.into(),
                key: k.clone(),
                remote_id: k.id.clone(),
                version_id: Some("1".into()),
                content_hash: sha(&k.id),
                linked: false,
                patient: None,
                updated_at: t0(),
                ..Default::default()
            };
            store.ledger_put(&entry).await.unwrap();
        }
        keys.push(k);
    }
    keys.push(linked.key.clone());
    let found = store.ledger_get_many(CITO, &keys).await.unwrap();
    assert_eq!(found.len(), 1_100 + 1);
    let found_keys: HashSet<&ResourceKey> = found.iter().map(|e| &e.key).collect();
    assert!(found_keys.contains(&linked.key));
    assert!(!found_keys.contains(&key("Observation", "o0")));
    assert!(found.iter().all(|e| e.key.resource_type != "Observation" || e.content_hash == sha(&e.key.id)));
    assert!(store.ledger_get_many(PKB, &keys).await.unwrap().is_empty());
    assert!(store.ledger_get_many(CITO, &[]).await.unwrap().is_empty());

    // A batch read gives every field as a single read does (SQLite answers a batch as JSON text): every
    // optional field set, both flags true, text that needs escaping, a time with milliseconds.
    let full = LedgerEntry {
        destination: CITO.into(),
        key: key("Encounter", "e-\"quoted\"-é"),
        remote_id: "remote/1".into(),
        version_id: Some("W/\"3\"".into()),
        content_hash: sha("full"),
        linked: true,
        patient: Some("Patient/p-ü".into()),
        updated_at: at(3) + chrono::Duration::milliseconds(457),
        origin: Some(Provenance::Unreadable("hub|x\\y\n".into())),
        source_fp: Some(r#"{"name[0]":"ab","\u00e9":"\"x\""}"#.into()),
        held_hash: Some(sha("held")),
        prev_hash: Some(sha("prev")),
        remote_edits: true,
        sent_version: Some("2".into()),
    };
    store.ledger_put(&full).await.unwrap();
    let batch = store.ledger_get_many(CITO, &[full.key.clone(), linked.key.clone()]).await.unwrap();
    let batch: HashMap<ResourceKey, LedgerEntry> = batch.into_iter().map(|e| (e.key.clone(), e)).collect();
    assert_eq!(batch.get(&full.key), store.ledger_get(CITO, &full.key).await.unwrap().as_ref());
    assert_eq!(batch.get(&full.key), Some(&full));
    assert_eq!(batch.get(&linked.key), Some(&updated));
    store.ledger_forget(CITO, std::slice::from_ref(&full.key)).await.unwrap();
    assert_eq!(store.ledger_count(CITO).await.unwrap(), 1_101);
    assert_eq!(store.ledger_count(PKB).await.unwrap(), 0);
}

async fn job_runs(db: &Db) {
    let store = db.connect().await;
    assert!(store.last_runs().await.unwrap().is_empty());
    let ingest = JobName::Ingest("hub".into());
    let a = store.job_started(&ingest, t0()).await.unwrap();
    store.job_finished(a, false, "cito: 3 dead letters", at(5)).await.unwrap();
    let b = store.job_started(&ingest, at(60)).await.unwrap();
    store.job_finished(b, true, "cito: 120 sent", at(70)).await.unwrap();
    let c = store.job_started(&JobName::Reconcile, at(80)).await.unwrap();

    let runs = store.last_runs().await.unwrap();
    assert_eq!(runs.len(), 2);
    // By job name: `ingest:hub` before `reconcile`.
    assert_eq!((runs[1].job.as_str(), runs[1].run_id, runs[1].finished_at, runs[1].ok), ("reconcile", c, None, None));
    assert_eq!(runs[0].job, "ingest:hub");
    assert_eq!(runs[0].run_id, b);
    assert_eq!((runs[0].started_at, runs[0].finished_at), (at(60), Some(at(70))));
    assert_eq!((runs[0].ok, runs[0].detail.as_deref()), (Some(true), Some("cito: 120 sent")));

    // The last success stays put through a later failure; a job that never succeeded has none.
    let d = store.job_started(&ingest, at(90)).await.unwrap();
    store.job_finished(d, false, "person.csv unreadable", at(95)).await.unwrap();
    assert_eq!(store.job_last_success(&ingest).await.unwrap(), Some(at(70)));
    assert_eq!(store.job_last_success(&JobName::Reconcile).await.unwrap(), None);
    assert_eq!(store.job_last_success(&JobName::Deliver("pkb".into())).await.unwrap(), None);
}

/// When each destination last accepted a write: the newest disclosure or retraction naming it, whatever
/// else was audited for it since.
async fn last_write_times(db: &Db) {
    let store = db.connect().await;
    let entry = |action: AuditAction, destination: &str, secs: i64| AuditEntry {
        at: at(secs),
        action,
        destination: Some(destination.into()),
        resource_type: Some("Patient".into()),
        resource_id: Some("p1".into()),
        ..AuditEntry::default()
    };
    assert_eq!(store.last_write_at("cito").await.unwrap(), None);
    for e in [
        entry(AuditAction::Disclosed, "cito", 10),
        entry(AuditAction::Retracted, "cito", 20),
        entry(AuditAction::Withheld, "cito", 30),
        entry(AuditAction::Withheld, "pkb", 40),
        entry(AuditAction::Disclosed, "feed:hub", 50),
    ] {
        store.audit_append(&e).await.unwrap();
    }
    assert_eq!(store.last_write_at("cito").await.unwrap(), Some(at(20)));
    assert_eq!(store.last_write_at("pkb").await.unwrap(), None, "withheld is not a write");
}

async fn quarantine_round_trip(db: &Db) {
    let store = db.connect().await;
    let record = |partner: &str, row: i64| QuarantineRecord {
        partner: partner.into(),
        kind: "person".into(),
        file: "people-2025-06-01.csv".into(),
        row,
        key: Some(format!("P{row}")),
        reasons_json: r#"[{"field":"nhs_number","problem":"checksum"}]"#.into(),
        raw_json: r#"{"NHS No":"999 000 0018","Surname":"Example"}"#.into(),
        created_at: at(row),
    };
    let a = store.quarantine_put(&record("york-mind", 2)).await.unwrap();
    let b = store.quarantine_put(&record("carers-centre", 3)).await.unwrap();
    let c = store.quarantine_put(&QuarantineRecord { key: None, ..record("york-mind", 4) }).await.unwrap();

    let all = store.quarantine_list(None, 100).await.unwrap();
    assert_eq!(all.iter().map(|(id, _)| *id).collect::<Vec<_>>(), [a, b, c]);
    let mind = store.quarantine_list(Some("york-mind"), 100).await.unwrap();
    assert_eq!(mind.len(), 2);
    assert_eq!(mind[1].1.key, None);
    assert_eq!(store.quarantine_list(None, 1).await.unwrap().len(), 1);
    let counts = store.quarantine_counts().await.unwrap();
    assert_eq!(counts, [("carers-centre".to_string(), 1), ("york-mind".to_string(), 2)]);
    assert_eq!(store.quarantine_get(b).await.unwrap(), Some(record("carers-centre", 3)));
    assert!(store.quarantine_delete(b).await.unwrap());
    assert!(!store.quarantine_delete(b).await.unwrap());
    assert_eq!(store.quarantine_get(b).await.unwrap(), None);

    // The same row rejected again in a later cycle is kept once, with the latest reasons.
    let again = QuarantineRecord {
        reasons_json: r#"[{"message":"still wrong"}]"#.into(),
        created_at: at(99),
        ..record("york-mind", 2)
    };
    assert_eq!(store.quarantine_put(&again).await.unwrap(), a);
    assert_eq!(store.quarantine_list(Some("york-mind"), 100).await.unwrap().len(), 2);
    let kept = store.quarantine_get(a).await.unwrap().unwrap();
    assert_eq!(kept.reasons_json, again.reasons_json);
    assert_eq!(kept.created_at, at(2), "kept under the date it was first quarantined");
    // A different content in the same row is a different rejected row.
    let changed = QuarantineRecord { raw_json: r#"{"NHS No":"999 000 0026"}"#.into(), ..record("york-mind", 2) };
    assert_ne!(store.quarantine_put(&changed).await.unwrap(), a);
}

async fn feed_ledger_round_trip(db: &Db) {
    use york_connector::store::{AuditEntry, AuditFilter, FeedItem};
    let store = db.connect().await;
    let feed = "feed:york-mind";
    let doc = upsert(feed, "Bundle", "d1", Some("Person/p"), "doc v1");
    store.enqueue(std::slice::from_ref(&doc), t0()).await.unwrap();
    let leased = store.lease(feed, "x", 10, LONG, t0()).await.unwrap();
    assert_eq!(leased.len(), 1);
    let items = vec![
        FeedItem { person: "Person/p".into(), key: key("Encounter", "e1"), content_hash: sha("e1") },
        FeedItem { person: "Person/p".into(), key: key("Patient", "p1"), content_hash: sha("p1") },
    ];
    let audit: Vec<AuditEntry> = items
        .iter()
        .map(|i| AuditEntry {
            at: at(1),
            action: "disclosed".parse().unwrap(),
            destination: Some(feed.into()),
            person: Some(i.person.clone()),
            resource_type: Some(i.key.resource_type.clone()),
            resource_id: Some(i.key.id.clone()),
            ..Default::default()
        })
        .collect();
    store.feed_complete(&leased[0], &items, &audit, at(1)).await.unwrap();
    // Delivered in one transaction: the outbox row gone, the items and their audit entries recorded.
    assert!(pending(&store, feed).await.is_empty());
    let held = store.feed_items(feed, "Person/p").await.unwrap();
    assert_eq!(held.get(&key("Encounter", "e1")), Some(&sha("e1")));
    assert_eq!(store.feed_persons(feed).await.unwrap(), vec!["Person/p".to_string()]);
    let audited = store
        .audit_list(&AuditFilter { destination: Some(feed.into()), limit: 10, ..Default::default() })
        .await
        .unwrap();
    assert_eq!(audited.len(), 2);
    // An item that left the feed is forgotten; a rebuild forgets the rest and cancels what is queued.
    store.feed_drop(feed, &[key("Encounter", "e1")]).await.unwrap();
    assert_eq!(store.feed_items(feed, "Person/p").await.unwrap().len(), 1);
    store.enqueue(&[upsert(feed, "Bundle", "d1", Some("Person/p"), "doc v2")], at(2)).await.unwrap();
    assert_eq!(store.feed_forget(feed).await.unwrap(), (1, 1));
    assert!(store.feed_items(feed, "Person/p").await.unwrap().is_empty());
    assert!(pending(&store, feed).await.is_empty());
}

async fn audit_chain_detects_edits_deletions_and_truncation(db: &Db) {
    use york_connector::store::{AuditEntry, AuditFilter};
    let store = db.connect().await;
    let entry = |i: i64| AuditEntry {
        at: at(i),
        action: "disclosed".parse().unwrap(),
        destination: Some(CITO.into()),
        resource_type: Some("Patient".into()),
        resource_id: Some(format!("p{i}")),
        reason: Some(format!("entry {i}")),
        ..Default::default()
    };
    let intact = store.audit_verify().await.unwrap();
    assert_eq!((intact.chained, &intact.broken), (0, &None), "an empty trail is whole");
    // Two instances appending at once: the appends are serialised, the chain stays one line.
    let other = db.connect().await;
    let (a, b) = tokio::join!(
        async {
            for i in 1..=5 {
                store.audit_append(&entry(i)).await.unwrap();
            }
        },
        async {
            for i in 11..=15 {
                other.audit_append(&entry(i)).await.unwrap();
            }
        }
    );
    let ((), ()) = (a, b);
    other.close().await;
    let intact = store.audit_verify().await.unwrap();
    assert_eq!((intact.chained, intact.head_count, &intact.broken), (10, 10, &None), "{intact:?}");
    let ids: Vec<i64> = store.audit_list(&AuditFilter::default()).await.unwrap().iter().map(|e| e.id).collect();
    assert_eq!(ids.len(), 10);

    // The triggers refuse edits and deletes (and, on PostgreSQL, TRUNCATE)...
    let mut raw = db.raw().await;
    assert!(raw.try_exec("UPDATE audit SET reason = 'x'").await.is_err());
    assert!(raw.try_exec("DELETE FROM audit").await.is_err());
    if db.backend() == Backend::Postgres {
        assert!(raw.try_exec("TRUNCATE audit").await.is_err(), "TRUNCATE is refused");
    }
    // ...but the file's or table's owner can take them away. The chain still tells.
    raw.exec("CREATE TABLE audit_copy AS SELECT * FROM audit").await;
    raw.exec(match db.backend() {
        Backend::Sqlite => "DROP TRIGGER audit_append_only_update; DROP TRIGGER audit_append_only_delete",
        Backend::Postgres => "ALTER TABLE audit DISABLE TRIGGER USER",
    })
    .await;
    let broken =
        |r: york_connector::store::ChainReport| r.broken.clone().unwrap_or_else(|| panic!("not detected: {r:?}"));

    // An edited entry is named.
    raw.exec(&format!("UPDATE audit SET reason = 'nothing happened' WHERE id = {}", ids[2])).await;
    let b = broken(store.audit_verify().await.unwrap());
    assert_eq!(b.id, ids[2], "{b:?}");
    assert!(b.reason.contains("edited"), "{b:?}");
    raw.exec(&format!(
        "UPDATE audit SET reason = (SELECT c.reason FROM audit_copy c WHERE c.id = audit.id) WHERE id = {}",
        ids[2]
    ))
    .await;
    assert_eq!(store.audit_verify().await.unwrap().broken, None, "restored");

    // A deleted entry: the next one no longer follows the one before.
    raw.exec(&format!("DELETE FROM audit WHERE id = {}", ids[4])).await;
    let b = broken(store.audit_verify().await.unwrap());
    assert_eq!(b.id, ids[5], "{b:?}");
    assert!(b.reason.contains(&format!("entry {}", ids[3])) && b.reason.contains("deleted"), "{b:?}");
    raw.exec(&format!("INSERT INTO audit SELECT * FROM audit_copy WHERE id = {}", ids[4])).await;
    assert_eq!(store.audit_verify().await.unwrap().broken, None, "restored");

    // The last entry deleted: missing against the recorded head.
    raw.exec(&format!("DELETE FROM audit WHERE id = {}", ids[9])).await;
    let b = broken(store.audit_verify().await.unwrap());
    assert_eq!(b.id, ids[8], "{b:?}");
    assert!(b.reason.contains("missing"), "{b:?}");
    raw.exec(&format!("INSERT INTO audit SELECT * FROM audit_copy WHERE id = {}", ids[9])).await;

    // The whole table emptied.
    raw.exec(match db.backend() {
        Backend::Sqlite => "DELETE FROM audit",
        Backend::Postgres => "TRUNCATE audit",
    })
    .await;
    let r = store.audit_verify().await.unwrap();
    assert_eq!(r.chained, 0);
    assert!(broken(r).reason.contains("truncated"));

    // Put back as it was, the trail verifies and grows on.
    raw.exec("INSERT INTO audit SELECT * FROM audit_copy").await;
    store.audit_append(&entry(20)).await.unwrap();
    let intact = store.audit_verify().await.unwrap();
    assert_eq!((intact.chained, &intact.broken), (11, &None), "{intact:?}");
    store.close().await;
}
