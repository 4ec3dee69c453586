//! The plan memo (`plan_memo`): for each destination and resource, the fingerprint of what planning last shaped
//! and the content hash it shaped to, so an unchanged resource is recognised without shaping it again. And the
//! read-only question planning asks before it shapes: would queueing this hash change anything?

use std::collections::HashMap;

use super::{Inner, KEY_CHUNK, ResourceKey, Result, Store, StoreError};

/// What planning last made of one resource for one destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Memo {
    /// The fingerprint of the input (see `plan::memo`).
    pub input_hash: String,
    /// The content hash of the body that input shaped to.
    pub content_hash: String,
}

/// After the keys `k(t, i, f)`: the memo rows of the keys with their fingerprint whose content the ledger holds,
/// with no outbox row; the destination's parameter goes between the two parts.
/// Its columns are named for SQLite's one-row answer, which aggregates them.
const MEMO_UNCHANGED: &str = "SELECT m.resource_type AS t, m.resource_id AS i, m.content_hash AS h \
     FROM k CROSS JOIN plan_memo m CROSS JOIN ledger l WHERE m.destination =";
const MEMO_UNCHANGED_END: &str = " AND m.resource_type = k.t AND m.resource_id = k.i AND m.input_hash = k.f \
     AND l.destination = m.destination AND l.resource_type = k.t AND l.resource_id = k.i \
     AND l.content_hash = m.content_hash AND NOT EXISTS (SELECT 1 FROM outbox o \
     WHERE o.destination = m.destination AND o.resource_type = k.t AND o.resource_id = k.i AND o.dead = FALSE) \
     AND NOT EXISTS (SELECT 1 FROM outbox o \
     WHERE o.destination = m.destination AND o.resource_type = k.t AND o.resource_id = k.i AND o.dead = TRUE)";

impl Store {
    /// Records (or replaces) the memo of each resource.
    pub async fn memo_put(&self, destination: &str, memos: &[(&ResourceKey, Memo)]) -> Result<()> {
        if memos.is_empty() {
            return Ok(());
        }
        const INSERT: &str =
            "INSERT INTO plan_memo (destination, resource_type, resource_id, input_hash, content_hash)";
        const ON_CONFLICT: &str = "ON CONFLICT (destination, resource_type, resource_id) DO UPDATE SET \
             input_hash = excluded.input_hash, content_hash = excluded.content_hash";
        if let Inner::Sqlite(pool) = &self.inner {
            // One statement per 500 whatever their number, its rows one JSON parameter (see `json_rows`).
            let sql = format!("{INSERT} {} WHERE true {ON_CONFLICT}", super::json_select(5));
            let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.map_err(StoreError::query("memo_put"))?;
            for chunk in memos.chunks(super::ROWS_PER_STATEMENT) {
                let rows = super::json_rows(
                    chunk
                        .iter()
                        .map(|(key, m)| (destination, &key.resource_type, &key.id, &m.input_hash, &m.content_hash)),
                );
                sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                    .bind(rows)
                    .execute(&mut *tx)
                    .await
                    .map_err(StoreError::query("memo_put"))?;
            }
            tx.commit().await.map_err(StoreError::query("memo_put"))?;
            return Ok(());
        }
        // PostgreSQL: one statement per 500.
        in_tx!(self, "memo_put", |tx| {
            for chunk in memos.chunks(super::ROWS_PER_STATEMENT) {
                let sql = format!("{INSERT} VALUES {} {ON_CONFLICT}", super::values_list(chunk.len(), 5, true));
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                for (key, m) in chunk {
                    q = q
                        .bind(destination)
                        .bind(&key.resource_type)
                        .bind(&key.id)
                        .bind(&m.input_hash)
                        .bind(&m.content_hash);
                }
                q.execute(&mut *tx).await.map_err(StoreError::query("memo_put"))?;
            }
        });
        Ok(())
    }

    /// For each (key, fingerprint) of `destination`: the content hash the memo recorded for that fingerprint,
    /// when the destination holds exactly that content (the ledger) and the outbox has no row of the key, pending
    /// or dead; otherwise `None`, and planning shapes the resource and lets [`Store::enqueue`] decide. One read
    /// per chunk: the keys as a `VALUES` list (SQLite: faster there than one JSON array through `json_each`,
    /// measured) or as three arrays (PostgreSQL). SQLite answers in one row, a JSON array of `[type, id, hash]`:
    /// row by row, each row was a hand-off from its worker thread, half the time of an unchanged cycle's reads.
    pub async fn memo_unchanged(
        &self,
        destination: &str,
        items: &[(&ResourceKey, &str)],
    ) -> Result<Vec<Option<String>>> {
        let what = "memo_unchanged";
        let mut found: HashMap<(String, String), String> = HashMap::new();
        for chunk in items.chunks(KEY_CHUNK) {
            let rows: Vec<(String, String, String)> = match &self.inner {
                Inner::Sqlite(writer) => {
                    let pool = self.sqlite_reader(writer);
                    let mut qb = sqlx::QueryBuilder::new("WITH k(t, i, f) AS (VALUES ");
                    for (n, (key, fingerprint)) in chunk.iter().enumerate() {
                        qb.push(if n == 0 { "(" } else { ", (" });
                        qb.push_bind(key.resource_type.as_str());
                        qb.push(", ");
                        qb.push_bind(key.id.as_str());
                        qb.push(", ");
                        qb.push_bind(*fingerprint);
                        qb.push(")");
                    }
                    qb.push(") SELECT json_group_array(json_array(t, i, h)) FROM (");
                    qb.push(MEMO_UNCHANGED);
                    qb.push(" ");
                    qb.push_bind(destination);
                    qb.push(MEMO_UNCHANGED_END);
                    qb.push(")");
                    let all: String = qb.build_query_scalar().fetch_one(pool).await.map_err(StoreError::query(what))?;
                    serde_json::from_str(&all).map_err(|e| StoreError::Invalid(format!("{what}: {e}")))?
                }
                Inner::Postgres(pool) => {
                    let (t, i, f): (Vec<&str>, Vec<&str>, Vec<&str>) =
                        chunk.iter().fold((Vec::new(), Vec::new(), Vec::new()), |(mut t, mut i, mut f), (k, fp)| {
                            t.push(k.resource_type.as_str());
                            i.push(k.id.as_str());
                            f.push(fp);
                            (t, i, f)
                        });
                    sqlx::query_as(sqlx::AssertSqlSafe(format!(
                        "WITH k(t, i, f) AS (SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[])) \
                         {MEMO_UNCHANGED} $4{MEMO_UNCHANGED_END}"
                    )))
                    .bind(t)
                    .bind(i)
                    .bind(f)
                    .bind(destination)
                    .fetch_all(pool)
                    .await
                    .map_err(StoreError::query(what))?
                }
            };
            for (t, i, hash) in rows {
                found.insert((t, i), hash);
            }
        }
        Ok(items.iter().map(|(key, _)| found.remove(&(key.resource_type.clone(), key.id.clone()))).collect())
    }
}
