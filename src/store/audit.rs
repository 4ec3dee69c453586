//! The audit trail's hash chain. Each entry carries `prev_hash` (the hash of the entry before it) and `hash`
//! = sha256 of `prev_hash`, a newline and the entry's fields as a JSON array ([`canonical`]). The chain's head
//! (how many entries were chained, and the last hash) is kept in `settings` and moved in the same
//! transaction as each insert, under a row lock, so appends from several instances are serialised and a
//! deleted last entry or a truncated table does not go unnoticed. [`Store::audit_verify`] walks the chain.
//!
//! Entries written before the chain existed (ids up to `settings.audit_chain_start`, set by migration 0006)
//! are not chained: verification counts them but cannot vouch for them.
//!
//! What it does not stop: someone able to write the database can recompute every hash and the head. Run the
//! connector's PostgreSQL role with INSERT and SELECT only on `audit` (it is not the table's owner), and keep
//! the head `connector audit verify` prints somewhere else, to compare.

use super::{AuditEntry, Inner, Result, Store, StoreError, ms, sha256_hex};

/// `settings` name of the chain head: `"<entries chained> <hash of the last>"`.
const HEAD: &str = "audit_chain_head";
/// `settings` name of the highest id written before the chain existed.
const START: &str = "audit_chain_start";

/// Takes the head's row lock (PostgreSQL: held to the end of the transaction; SQLite: the transaction
/// already holds the write lock) and reads it.
const HEAD_LOCK: &str = "UPDATE settings SET value = value WHERE name = 'audit_chain_head' RETURNING value";
const HEAD_SET: &str = "UPDATE settings SET value = $1 WHERE name = 'audit_chain_head'";
const INSERT_COLUMNS: &str = "INSERT INTO audit (at, action, destination, person, resource_type, resource_id, \
     version_id, content_hash, partner, category, agreement, lawful_basis, consent, reason, prev_hash, hash)";
/// The columns [`INSERT_COLUMNS`] names.
const COLUMNS: usize = 16;

/// The fields an entry's hash covers, in a fixed order (its id is not among them: it is given by the
/// database after the hash is computed; the order of entries is held by the chain itself).
pub(crate) fn canonical(e: &AuditEntry) -> String {
    serde_json::json!([
        ms(e.at),
        e.action.as_str(),
        e.destination,
        e.person,
        e.resource_type,
        e.resource_id,
        e.version_id,
        e.content_hash,
        e.partner,
        e.category,
        e.agreement,
        e.lawful_basis,
        e.consent,
        e.reason
    ])
    .to_string()
}

pub(crate) fn chain_hash(prev: &str, e: &AuditEntry) -> String {
    sha256_hex(&format!("{prev}\n{}", canonical(e)))
}

fn parse_head(value: &str) -> Result<(u64, String)> {
    let (count, hash) = value.split_once(' ').unwrap_or((value, ""));
    let count = count.parse().map_err(|_| StoreError::Corrupt {
        what: "settings.audit_chain_head",
        detail: "not \"<count> <hash>\"".into(),
    })?;
    Ok((count, hash.to_string()))
}

/// A connection that can append a chained audit entry inside the caller's transaction.
pub(crate) trait AuditConn {
    fn append_chained(&mut self, entry: &AuditEntry) -> impl std::future::Future<Output = Result<()>> + Send;
}

impl AuditConn for sqlx::SqliteConnection {
    async fn append_chained(&mut self, entry: &AuditEntry) -> Result<()> {
        append_chained_sqlite(self, &[entry]).await
    }
}

impl AuditConn for sqlx::PgConnection {
    async fn append_chained(&mut self, entry: &AuditEntry) -> Result<()> {
        append_chained_pg(self, &[entry]).await
    }
}

/// The chain's head as [`HEAD_LOCK`] read it: (entries chained, last hash).
fn head_of(head: Option<String>) -> Result<(u64, String)> {
    let head = head.ok_or(StoreError::Corrupt {
        what: "settings.audit_chain_head",
        detail: "missing (the audit chain's head was deleted)".into(),
    })?;
    parse_head(&head)
}

/// Each entry's predecessor's hash and its own, chained in the entries' order from the head's hash `prev`,
/// which ends as the last entry's hash (the new head).
fn link(prev: &mut String, entries: &[&AuditEntry]) -> Vec<(String, String)> {
    entries
        .iter()
        .map(|e| {
            let hash = chain_hash(prev, e);
            (std::mem::replace(prev, hash.clone()), hash)
        })
        .collect()
}

/// Appends `entries`, chained in their order, inside the caller's SQLite transaction (which holds the write
/// lock): the head read once, the entries inserted with one multi-row statement per
/// [`super::ROWS_PER_STATEMENT`] (SQLite numbers them in that order), the head moved once. Each statement is
/// a round trip to SQLite's worker thread: three per entry were most of a delivered bundle's recording.
pub(crate) async fn append_chained_sqlite(conn: &mut sqlx::SqliteConnection, entries: &[&AuditEntry]) -> Result<()> {
    let op = "writing the audit trail";
    if entries.is_empty() {
        return Ok(());
    }
    let head = sqlx::query_scalar(HEAD_LOCK).fetch_optional(&mut *conn).await.map_err(StoreError::query(op))?;
    let (count, mut prev) = head_of(head)?;
    let mut rows = Vec::with_capacity(entries.len());
    for (e, (prev, hash)) in entries.iter().zip(link(&mut prev, entries)) {
        rows.push((
            ms(e.at),
            e.action.as_str(),
            &e.destination,
            &e.person,
            &e.resource_type,
            &e.resource_id,
            &e.version_id,
            &e.content_hash,
            &e.partner,
            &e.category,
            &e.agreement,
            &e.lawful_basis,
            &e.consent,
            &e.reason,
            prev,
            hash,
        ));
    }
    // In the array's order (`key` is the index): SQLite numbers the rows as they come, the chain's order.
    let insert = format!("{INSERT_COLUMNS} {} ORDER BY key", super::json_select(COLUMNS));
    sqlx::query(sqlx::AssertSqlSafe(insert))
        .bind(super::json_rows(rows))
        .execute(&mut *conn)
        .await
        .map_err(StoreError::query(op))?;
    sqlx::query(HEAD_SET)
        .bind(format!("{} {prev}", count + entries.len() as u64))
        .execute(&mut *conn)
        .await
        .map_err(StoreError::query(op))?;
    Ok(())
}

/// Appends `entries`, chained in their order, inside the caller's transaction, with three statements
/// whatever their number: the head locked and read, the entries inserted from arrays, the head moved.
///
/// The database numbers the rows as the array yields them, which is the chain's order; that is checked
/// (the ids returned must rise in chain order) and the transaction fails rather than leave a chain that
/// `audit verify` would report broken. No sequence privilege is needed (the role may only INSERT here).
pub(crate) async fn append_chained_pg(conn: &mut sqlx::PgConnection, entries: &[&AuditEntry]) -> Result<()> {
    let op = "writing the audit trail";
    if entries.is_empty() {
        return Ok(());
    }
    let head = sqlx::query_scalar(HEAD_LOCK).fetch_optional(&mut *conn).await.map_err(StoreError::query(op))?;
    let (count, mut prev) = head_of(head)?;
    let (prevs, hashes): (Vec<String>, Vec<String>) = link(&mut prev, entries).into_iter().unzip();
    fn col<T>(entries: &[&AuditEntry], f: impl Fn(&AuditEntry) -> T) -> Vec<T> {
        entries.iter().map(|e| f(e)).collect()
    }
    let mut ids: Vec<(i64, String)> = sqlx::query_as(
        "INSERT INTO audit (at, action, destination, person, resource_type, resource_id, version_id, \
         content_hash, partner, category, agreement, lawful_basis, consent, reason, prev_hash, hash) \
         SELECT * FROM UNNEST($1::int8[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
         $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], $14::text[], \
         $15::text[], $16::text[]) RETURNING id, hash",
    )
    .bind(col(entries, |e| ms(e.at)))
    .bind(col(entries, |e| e.action.as_str().to_string()))
    .bind(col(entries, |e| e.destination.clone()))
    .bind(col(entries, |e| e.person.clone()))
    .bind(col(entries, |e| e.resource_type.clone()))
    .bind(col(entries, |e| e.resource_id.clone()))
    .bind(col(entries, |e| e.version_id.clone()))
    .bind(col(entries, |e| e.content_hash.clone()))
    .bind(col(entries, |e| e.partner.clone()))
    .bind(col(entries, |e| e.category.clone()))
    .bind(col(entries, |e| e.agreement.clone()))
    .bind(col(entries, |e| e.lawful_basis.clone()))
    .bind(col(entries, |e| e.consent.clone()))
    .bind(col(entries, |e| e.reason.clone()))
    .bind(&prevs)
    .bind(&hashes)
    .fetch_all(&mut *conn)
    .await
    .map_err(StoreError::query(op))?;
    ids.sort_unstable_by_key(|(id, _)| *id);
    if !ids.iter().map(|(_, h)| h).eq(hashes.iter()) {
        return Err(StoreError::Corrupt {
            what: "audit.id",
            detail: "the database numbered a batch of audit entries out of their chain order; nothing was recorded"
                .into(),
        });
    }
    sqlx::query(HEAD_SET)
        .bind(format!("{} {prev}", count + entries.len() as u64))
        .execute(&mut *conn)
        .await
        .map_err(StoreError::query(op))?;
    Ok(())
}

/// What [`Store::audit_verify`] found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ChainReport {
    /// Entries checked along the chain.
    pub chained: u64,
    /// Entries from before the chain existed (not verifiable).
    pub unchained: u64,
    /// The head as recorded: entries chained and the last hash (compare with a copy kept elsewhere).
    pub head_count: u64,
    pub head_hash: String,
    /// The first break, if any.
    pub broken: Option<Break>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Break {
    /// The first entry that does not verify; for entries missing at the end, the last one left (0: none).
    pub id: i64,
    pub reason: String,
}

/// An audit row with its chain links: the entry's own columns are the same as `audit list` reads.
#[derive(sqlx::FromRow)]
struct ChainDb {
    #[sqlx(flatten)]
    row: super::consent::AuditDb,
    prev_hash: Option<String>,
    hash: Option<String>,
}

impl ChainDb {
    fn entry(&self) -> Result<AuditEntry> {
        self.row.entry()
    }
}

const PAGE: i64 = 5000;

impl Store {
    /// Walks the audit trail's hash chain from its start and reports the first entry that was edited, the
    /// first gap where entries were deleted, and entries missing at the end (deleted or truncated), against
    /// the head recorded at each append. Reads only.
    pub async fn audit_verify(&self) -> Result<ChainReport> {
        let op = "audit_verify";
        let setting = |name: &'static str| async move {
            let v: Option<String> = with_pool!(self, |pool| {
                sqlx::query_scalar("SELECT value FROM settings WHERE name = $1").bind(name).fetch_optional(pool).await
            })
            .map_err(StoreError::query(op))?;
            Ok::<_, StoreError>(v)
        };
        let head = setting(HEAD).await?;
        let start: i64 = setting(START).await?.and_then(|s| s.parse().ok()).unwrap_or(0);
        let unchained: i64 = with_pool!(self, |pool| {
            sqlx::query_scalar("SELECT COUNT(*) FROM audit WHERE id <= $1").bind(start).fetch_one(pool).await
        })
        .map_err(StoreError::query(op))?;
        let Some(head) = head else {
            return Ok(ChainReport {
                chained: 0,
                unchained: u64::try_from(unchained).unwrap_or(0),
                head_count: 0,
                head_hash: String::new(),
                broken: Some(Break { id: 0, reason: "the chain's head is missing from settings (deleted)".into() }),
            });
        };
        let (head_count, head_hash) = parse_head(&head)?;
        let mut report = ChainReport {
            chained: 0,
            unchained: u64::try_from(unchained).unwrap_or(0),
            head_count,
            head_hash: head_hash.clone(),
            broken: None,
        };
        let (mut prev, mut last_id, mut after) = (String::new(), 0i64, start);
        'pages: loop {
            let rows: Vec<ChainDb> = with_pool!(self, |pool| {
                sqlx::query_as(
                    "SELECT id, at, action, destination, person, resource_type, resource_id, version_id, \
                     content_hash, partner, category, agreement, lawful_basis, consent, reason, prev_hash, hash \
                     FROM audit WHERE id > $1 ORDER BY id LIMIT $2",
                )
                .bind(after)
                .bind(PAGE)
                .fetch_all(pool)
                .await
            })
            .map_err(StoreError::query(op))?;
            let Some(last) = rows.last() else { break };
            after = last.row.id;
            for row in &rows {
                let (Some(row_prev), Some(row_hash)) = (&row.prev_hash, &row.hash) else {
                    report.broken = Some(Break {
                        id: row.row.id,
                        reason: "it is not chained: it was inserted past the connector".into(),
                    });
                    break 'pages;
                };
                if chain_hash(row_prev, &row.entry()?) != *row_hash {
                    report.broken = Some(Break { id: row.row.id, reason: "it was edited after it was written".into() });
                    break 'pages;
                }
                if *row_prev != prev {
                    let before =
                        if last_id == 0 { "the start of the chain".to_string() } else { format!("entry {last_id}") };
                    report.broken = Some(Break {
                        id: row.row.id,
                        reason: format!("it does not follow {before}: entries between them were deleted or edited"),
                    });
                    break 'pages;
                }
                prev = row_hash.clone();
                last_id = row.row.id;
                report.chained += 1;
            }
        }
        if report.broken.is_none() {
            if report.chained < head_count {
                let missing = head_count - report.chained;
                report.broken = Some(Break {
                    id: last_id,
                    reason: if report.chained == 0 {
                        format!("all {head_count} chained entries are gone: the audit table was emptied or truncated")
                    } else {
                        format!("{missing} entries after entry {last_id} are missing: deleted or truncated")
                    },
                });
            } else if report.chained > head_count || prev != head_hash {
                report.broken = Some(Break {
                    id: last_id,
                    reason:
                        "the last entries do not match the chain's recorded head: replaced, or added past the connector"
                            .into(),
                });
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::{AuditEntry, chain_hash};

    #[test]
    fn the_hash_covers_every_field_and_the_entry_before() {
        let e = AuditEntry {
            action: crate::model::AuditAction::Disclosed,
            reason: Some("r".into()),
            ..AuditEntry::default()
        };
        let h = chain_hash("", &e);
        assert_eq!(h.len(), 64);
        assert_ne!(h, chain_hash("x", &e));
        assert_ne!(h, chain_hash("", &AuditEntry { reason: Some("s".into()), ..e.clone() }));
        assert_ne!(h, chain_hash("", &AuditEntry { destination: Some("pkb".into()), ..e.clone() }));
        // The id is the database's, given after the hash; it does not change the hash.
        assert_eq!(h, chain_hash("", &AuditEntry { id: 7, ..e }));
    }
}
