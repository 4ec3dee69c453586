//! Unit tests on SQLite (in memory or a temporary file). The full contract, on both backends, is in
//! `tests/store_suite.rs`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use sqlx::{Connection, SqliteConnection};

use super::error::redact_url;
use super::ledger::{KEYS_LEDGER_ENTRIES, KEYS_LEDGER_ENTRIES_JSON};
use super::outbox::{KEYS_LEDGER_HASHES, keys_outbox_rows};
use super::plan::{Action, DeadRow, KeyState, PendingRow, decide, last_per_key};
use super::*;

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp_millis(1_750_000_000_000).expect("valid time")
}

fn item(id: &str, op: Op, hash: &str) -> OutboxItem {
    OutboxItem {
        destination: "cito".into(),
        key: ResourceKey::new("Observation", id),
        patient: Some("Patient/p".into()),
        op,
        content_hash: hash.into(),
        body: (op == Op::Upsert).then(|| format!("{{\"id\":\"{id}\"}}")),
        origin: None,
    }
}

/// A directory under the system temp dir, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        Scratch(std::env::temp_dir().join(format!("connector-store-unit-{name}-{}-{nanos}", std::process::id())))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn decide_follows_the_planning_rules() {
    let now = 1_000;
    let upsert = item("o", Op::Upsert, "h2");
    let pending = |hash: &str, lease_until: Option<i64>| PendingRow {
        seq: 7,
        op: Op::Upsert,
        content_hash: hash.into(),
        lease_until,
    };

    // Nothing held, nothing planned: insert.
    assert_eq!(decide(&KeyState::default(), &upsert, now), Action::Insert { superseded_dead: vec![] });
    // The destination holds it already.
    let held = KeyState { ledger_hash: Some("h2".into()), ..KeyState::default() };
    assert_eq!(decide(&held, &upsert, now), Action::Nothing);
    // Planned already.
    let planned = KeyState { pending: Some(pending("h2", None)), ..KeyState::default() };
    assert_eq!(decide(&planned, &upsert, now), Action::Nothing);
    // Planned differently: replace.
    let older = KeyState { pending: Some(pending("h1", None)), ..KeyState::default() };
    assert_eq!(decide(&older, &upsert, now), Action::Replace { seq: 7 });
    // Planned differently but the destination holds the new content: cancel, unless it is on the wire
    // (an expired lease is not).
    let back = KeyState { ledger_hash: Some("h2".into()), pending: Some(pending("h1", None)), dead: vec![] };
    assert_eq!(decide(&back, &upsert, now), Action::Cancel { seq: 7 });
    let on_wire = KeyState { pending: Some(pending("h1", Some(now + 1))), ..back.clone() };
    assert_eq!(decide(&on_wire, &upsert, now), Action::Replace { seq: 7 });
    let expired = KeyState { pending: Some(pending("h1", Some(now))), ..back };
    assert_eq!(decide(&expired, &upsert, now), Action::Cancel { seq: 7 });

    // Dead letters: the same content waits for an admin; new content supersedes them.
    let dead = |hash: &str| KeyState {
        dead: vec![DeadRow { seq: 3, op: Op::Upsert, content_hash: hash.into() }],
        ..KeyState::default()
    };
    assert_eq!(decide(&dead("h2"), &upsert, now), Action::Nothing);
    assert_eq!(decide(&dead("h1"), &upsert, now), Action::Insert { superseded_dead: vec![3] });

    // Deletes: only of what the destination holds.
    let del = item("o", Op::Delete, "");
    assert_eq!(decide(&KeyState::default(), &del, now), Action::Nothing);
    let held = KeyState { ledger_hash: Some("h1".into()), ..KeyState::default() };
    assert_eq!(decide(&held, &del, now), Action::Insert { superseded_dead: vec![] });
}

#[test]
fn last_occurrence_of_a_key_wins() {
    let items = [item("a", Op::Upsert, "1"), item("b", Op::Upsert, "1"), item("a", Op::Upsert, "2")];
    let kept = last_per_key(&items);
    assert_eq!(kept.len(), 2);
    assert_eq!((kept[0].key.id.as_str(), kept[1].key.id.as_str()), ("b", "a"));
    assert_eq!(kept[1].content_hash, "2");
}

#[test]
fn passwords_are_redacted() {
    assert_eq!(redact_url("postgres://conn:s3cret@db:5432/state"), "postgres://conn:***@db:5432/state");
    assert_eq!(redact_url("postgres://conn@db/state"), "postgres://conn@db/state");
    assert_eq!(redact_url("sqlite:///var/lib/connector/state.db"), "sqlite:///var/lib/connector/state.db");
    assert_eq!(redact_url("postgres://u:p@h/d?x=a@b"), "postgres://u:***@h/d?x=a@b");
    // A password given as a query parameter (libpq and sqlx accept it) used to be printed as is.
    assert_eq!(
        redact_url("postgres://conn@db/state?password=s3cret&sslmode=require"),
        "postgres://conn@db/state?password=***&sslmode=require"
    );
    assert_eq!(
        redact_url("postgres://db/state?sslmode=require&Password=s3cret"),
        "postgres://db/state?sslmode=require&Password=***"
    );
    assert_eq!(redact_url("postgres://u:p@db/state?sslpassword=k#x"), "postgres://u:***@db/state?sslpassword=***#x");
}

#[test]
fn lock_keys_are_stable() {
    assert_eq!(postgres::leader_key("scheduler"), postgres::leader_key("scheduler"));
    assert_ne!(postgres::leader_key("scheduler"), postgres::leader_key("reconcile"));
    // Pinned: instances built from different versions must agree on the key.
    assert_eq!(postgres::hash32(&["cito"]), postgres::hash32(&["cito"]));
    assert_ne!(postgres::hash32(&["a", "bc"]), postgres::hash32(&["ab", "c"]));
}

#[tokio::test]
async fn rejects_unknown_urls() {
    for url in ["mysql://x/y", "state.db", "sqlite://"] {
        match Store::connect(url).await {
            Err(StoreError::BadUrl { .. }) => {}
            other => panic!("{url}: expected BadUrl, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn creates_the_file_and_its_directory_in_wal_mode() {
    let scratch = Scratch::new("wal");
    let file = scratch.path().join("nested/dir/state.db");
    let url = format!("sqlite://{}", file.display());
    let store = Store::connect(&url).await.unwrap();
    assert_eq!(store.backend(), Backend::Sqlite);
    assert!(file.is_file());
    // Statement journals and sorts in memory (2), never in the system's temporary folder.
    let Inner::Sqlite(pool) = &store.inner else { unreachable!() };
    let temp_store: i64 = sqlx::query_scalar("PRAGMA temp_store").fetch_one(pool).await.unwrap();
    assert_eq!(temp_store, 2);
    // A page cache of 1 MiB per connection (negative: in KiB), half SQLite's default.
    let cache_size: i64 = sqlx::query_scalar("PRAGMA cache_size").fetch_one(pool).await.unwrap();
    assert_eq!(cache_size, -1024);
    // WAL pages copied into the file every 4,000 (16 MiB), not SQLite's 1,000.
    let autocheckpoint: i64 = sqlx::query_scalar("PRAGMA wal_autocheckpoint").fetch_one(pool).await.unwrap();
    assert_eq!(autocheckpoint, 4000);
    // One connection, kept: calls from many tasks at once take turns on it (none waits for another's
    // connection while holding this one, which would stall until the acquire timeout).
    assert_eq!((pool.options().get_max_connections(), pool.options().get_min_connections()), (1, 1));
    // Beside it, connections that only read (the reads before a worker writes).
    let reader = store.reader.as_ref().expect("a file has a reading pool");
    assert_eq!(reader.options().get_max_connections(), 2);
    let refused = sqlx::query("DELETE FROM settings").execute(reader).await.expect_err("they cannot write");
    assert!(refused.to_string().contains("readonly") || refused.to_string().contains("read-only"), "{refused}");
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..16 {
        let store = store.clone();
        calls.spawn(async move {
            let key = ResourceKey::new("Patient", format!("p{i}"));
            if i % 2 == 0 {
                return store.ledger_get("cito", &key).await.map(|_| ());
            }
            let entry = LedgerEntry {
                destination: "cito".into(),
                key,
                remote_id: format!("p{i}"),
                content_hash: "h".into(),
                updated_at: Utc::now(),
                ..Default::default()
            };
            store.ledger_put(&entry).await
        });
    }
    let done = tokio::time::timeout(Duration::from_secs(10), calls.join_all())
        .await
        .expect("sixteen calls at once on one connection finish");
    assert!(done.iter().all(Result::is_ok), "{done:?}");
    assert_eq!(store.ledger_count("cito").await.unwrap(), 8);
    store.close().await;

    let mut raw = SqliteConnection::connect(&url).await.unwrap();
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode").fetch_one(&mut raw).await.unwrap();
    assert_eq!(mode, "wal");
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite%' ORDER BY name",
    )
    .fetch_all(&mut raw)
    .await
    .unwrap();
    assert_eq!(
        tables,
        [
            "_sqlx_migrations",
            "audit",
            "conflicts",
            "consent_statements",
            "cursors",
            "expected",
            "feed_items",
            "job_runs",
            "ledger",
            "outbox",
            "persons",
            "plan_generation",
            "plan_memo",
            "plan_receipt",
            "quarantine",
            "send_intent",
            "settings",
            "snapshot_members",
            "source_cursors",
            "source_files",
            "source_status",
            "withheld"
        ]
    );
    // Owner-only, whatever the umask: it holds personal data.
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::metadata(file.parent().unwrap()).unwrap().permissions().mode() & 0o777, 0o700);
    assert_eq!(std::fs::metadata(scratch.path().join("nested")).unwrap().permissions().mode() & 0o777, 0o700);
}

#[tokio::test]
async fn in_memory_database_lives_as_long_as_the_store() {
    let store = Store::connect("sqlite::memory:").await.unwrap();
    store.enqueue(&[item("a", Op::Upsert, "1")], t0()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(store.outbox_list(None, false, 10).await.unwrap().len(), 1);
    // Each in-memory store is a database of its own.
    let other = Store::connect("sqlite::memory:").await.unwrap();
    assert!(other.outbox_list(None, false, 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn unchanged_enqueue_leaves_the_file_alone() {
    let scratch = Scratch::new("nowrite");
    let url = format!("sqlite://{}", scratch.path().join("state.db").display());
    let store = Store::connect(&url).await.unwrap();
    let items: Vec<OutboxItem> = (0..1_200).map(|i| item(&format!("o{i}"), Op::Upsert, "h")).collect();
    assert_eq!(store.enqueue(&items, t0()).await.unwrap(), 1_200);

    // `data_version` moves when another connection commits a change to the file.
    let mut raw = SqliteConnection::connect(&url).await.unwrap();
    let before = version(&mut raw).await;
    assert_eq!(store.enqueue(&items, t0() + TimeDelta::seconds(1)).await.unwrap(), 0);
    assert_eq!(version(&mut raw).await, before);
    assert_eq!(store.enqueue(&items[..1], t0()).await.unwrap(), 0);
    assert_eq!(version(&mut raw).await, before);

    let changed = [item("o5", Op::Upsert, "h2")];
    assert_eq!(store.enqueue(&changed, t0()).await.unwrap(), 1);
    assert_ne!(version(&mut raw).await, before, "the probe sees a real change");
}

#[tokio::test]
async fn a_replaced_row_takes_a_number_never_used_before() {
    let store = Store::connect("sqlite::memory:").await.unwrap();
    store.enqueue(&[item("a", Op::Upsert, "1"), item("b", Op::Upsert, "1")], t0()).await.unwrap();
    let rows = store.outbox_list(None, false, 10).await.unwrap();
    // The newest row is gone before the replacement: AUTOINCREMENT's counter still moves past it.
    let b = rows[1].clone();
    store.complete(&b, Some(&ledger_for(&b)), None).await.unwrap();
    store.enqueue(&[item("a", Op::Upsert, "2")], t0()).await.unwrap();
    let a = store.outbox_list(None, false, 10).await.unwrap();
    assert_eq!(a.len(), 1);
    assert!(a[0].seq > b.seq, "{} must be above {}", a[0].seq, b.seq);
    store.enqueue(&[item("c", Op::Upsert, "1")], t0()).await.unwrap();
    let all = store.outbox_list(None, false, 10).await.unwrap();
    assert!(all[1].seq > a[0].seq);
}

async fn version(raw: &mut SqliteConnection) -> i64 {
    sqlx::query_scalar("PRAGMA data_version").fetch_one(raw).await.unwrap()
}

fn ledger_for(row: &OutboxRow) -> LedgerEntry {
    LedgerEntry {
        destination: row.item.destination.clone(),
        key: row.item.key.clone(),
        remote_id: row.item.key.id.clone(),
        version_id: Some("1".into()),
        content_hash: row.item.content_hash.clone(),
        linked: false,
        patient: row.item.patient.clone(),
        updated_at: t0(),
        ..Default::default()
    }
}

#[tokio::test]
async fn times_round_trip_to_the_millisecond() {
    let store = Store::connect("sqlite::memory:").await.unwrap();
    let when = t0() + TimeDelta::microseconds(1_234_567);
    let run = store.job_started(&crate::model::JobName::Reconcile, when).await.unwrap();
    let runs = store.last_runs().await.unwrap();
    assert_eq!(runs[0].run_id, run);
    assert_eq!(runs[0].started_at, t0() + TimeDelta::milliseconds(1_234));
}

#[tokio::test]
async fn refuses_a_schema_from_a_newer_connector() {
    let scratch = Scratch::new("downgrade");
    let url = format!("sqlite://{}", scratch.path().join("state.db").display());
    Store::connect(&url).await.unwrap().close().await;
    let mut raw = SqliteConnection::connect(&url).await.unwrap();
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (99990101000000, 'future', TRUE, X'00', 0)",
    )
    .execute(&mut raw)
    .await
    .unwrap();
    let err = Store::connect(&url).await.unwrap_err();
    assert!(matches!(err, StoreError::SchemaTooNew { found: 99990101000000, .. }), "{err:?}");
}

/// The plan of `sql` on `conn`, one line per step.
async fn plan_of(conn: &mut SqliteConnection, sql: &str) -> String {
    let rows: Vec<(i64, i64, i64, String)> =
        sqlx::query_as(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}"))).fetch_all(conn).await.unwrap();
    rows.into_iter().map(|(_, _, _, detail)| detail).collect::<Vec<_>>().join("\n")
}

/// SQLite's planner has changed its mind between versions (3.51 scanned the whole destination for every
/// key of a lookup until the join order was fixed): the hot statements must stay index lookups.
#[tokio::test]
async fn hot_statements_use_indexes() {
    let scratch = Scratch::new("plans");
    let url = format!("sqlite://{}", scratch.path().join("state.db").display());
    let store = Store::connect(&url).await.unwrap();
    let items: Vec<OutboxItem> = (0..2_000).map(|i| item(&format!("o{i}"), Op::Upsert, "h")).collect();
    store.enqueue(&items, t0()).await.unwrap();
    let mut conn = SqliteConnection::connect(&url).await.unwrap();

    let keys: Vec<ResourceKey> = (0..50).map(|i| ResourceKey::new("Observation", format!("o{i}"))).collect();
    let lookups = [KEYS_LEDGER_HASHES, KEYS_LEDGER_ENTRIES, KEYS_LEDGER_ENTRIES_JSON];
    for tail in lookups {
        let mut qb = with_keys::<sqlx::Sqlite>(&keys);
        qb.push(tail).push("'cito'");
        let plan = plan_of(&mut conn, qb.sql().as_str()).await;
        assert!(plan.starts_with("SCAN jsonb_each"), "the keys are the outer loop:\n{plan}");
        assert!(plan.contains("resource_id=?)"), "each key is looked up in an index:\n{plan}");
    }
    // The outbox has no index of every row by key: pending rows and dead letters have one each.
    let refs: Vec<&ResourceKey> = keys.iter().collect();
    let plan = plan_of(&mut conn, keys_outbox_rows::<sqlx::Sqlite>(&refs, "cito").sql().as_str()).await;
    for index in ["outbox_one_pending", "outbox_dead_key"] {
        assert!(
            plan.contains(&format!("USING INDEX {index} (destination=? AND resource_type=? AND resource_id=?)")),
            "{plan}"
        );
    }
    assert!(!plan.lines().any(|l| l.contains("SCAN o")), "{plan}");
    // The lease's per-person check reads only the rows leased or failed.
    let plan = plan_of(&mut conn, sqlite::LEASE).await;
    assert!(plan.contains("USING INDEX outbox_busy (destination=? AND patient=? AND seq<?)"), "{plan}");
    // A delivered bundle's removals.
    let removals = ["ledger", "withheld", "send_intent"].map(sqlite::delete_keys_sql);
    for sql in removals.iter().map(String::as_str).chain(sqlite::OUTBOX_DONE) {
        let plan = plan_of(&mut conn, sql).await;
        assert!(
            !plan.lines().any(|l| l.starts_with("SCAN") && !l.contains("jsonb_each")),
            "full scan in\n{sql}\n{plan}"
        );
    }
    // Read at every scrape of /metrics, however long the job and audit history grows.
    let metrics = [super::jobs::JOB_LAST_SUCCESS, super::consent::LAST_WRITE_AT];
    let single = [CLEAR_LEASE_BY_TOKEN, sqlite::LEASE].into_iter().chain(metrics);
    for sql in single {
        let plan = plan_of(&mut conn, sql).await;
        for line in plan.lines() {
            assert!(!line.starts_with("SCAN"), "full scan in\n{sql}\n{plan}");
        }
    }
}

/// Compile-time check: the store can be shared across tasks, and its futures can be spawned.
#[allow(dead_code)]
fn store_is_shareable_and_its_futures_are_send(store: &Store, items: &[OutboxItem], row: &OutboxRow) {
    fn shareable<T: Send + Sync + Clone + 'static>() {}
    fn send<T: Send>(_: T) {}
    shareable::<Store>();
    send(store.enqueue(items, t0()));
    send(store.lease("cito", "w", 1, Duration::ZERO, t0()));
    send(store.complete(row, None, None));
    send(store.try_lead("scheduler"));
    send(store.queue_depths());
}
