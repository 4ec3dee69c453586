//! Consent statements, the person each Patient belongs to, current withholdings and the append-only audit
//! trail. People are known by ids only: a person is `Person/<uuid5 of NHS number>` (or their Patient
//! reference when no NHS number is known); nothing here names anyone.

use chrono::{DateTime, Utc};

use super::{Inner, OUTBOX_CANCEL, OutboxRow, ResourceKey, Result, Store, StoreError, from_ms, limit, ms};
use crate::model::{AuditAction, Stated};

/// One consent statement as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StatementRecord {
    /// Store id (0 before it is stored).
    pub id: i64,
    pub person: String,
    pub patient: String,
    pub partner: String,
    pub record_key: String,
    pub resource_id: String,
    /// What it says (a hold when one of the person's consent records could not be read).
    pub decision: Stated,
    pub effective: String,
    pub given_on: String,
    pub withdrawn_on: Option<String>,
    pub share_cito: bool,
    pub share_pkb: bool,
    /// JSON list of partner names.
    pub share_partners: String,
    /// JSON list of restriction codes.
    pub restrictions: String,
    pub statement_hash: String,
    pub recorded_at: DateTime<Utc>,
    /// The record gives no date: `effective` is the day the connector first read this answer.
    pub first_seen: bool,
}

impl StatementRecord {
    /// A hold put because one of the person's consent records could not be read (an impossible date, an
    /// unknown decision word, a date far in the future). It stands for that record until a cycle reads the
    /// record cleanly (a new version of the same record replaces it), and while it stands nothing about the
    /// person is sent anywhere: the record might have been a withdrawal.
    pub fn is_unreadable(&self) -> bool {
        self.decision == Stated::Unreadable
    }

    /// Consent given with an effective date after `today` (or no date that can be read): not yet in force,
    /// so a typo in a year cannot outrank a real withdrawal. A withdrawal or refusal dated ahead is honoured
    /// at once: holding data back early is the safe side.
    pub fn is_pending(&self, today: chrono::NaiveDate) -> bool {
        if self.decision != Stated::Given {
            return false;
        }
        let date = self.effective.get(..10).and_then(|d| chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").ok());
        date.is_none_or(|d| d > today)
    }
}

/// Today's date where the partners record consent (the UK): what "in force" is measured against.
pub fn consent_today() -> chrono::NaiveDate {
    Utc::now().with_timezone(&chrono_tz::Europe::London).date_naive()
}

/// Whether `candidate` takes over from `current` as the statement in force: a hold always does (and is not
/// displaced by a later statement of another record); pending consent never does; otherwise the one that
/// takes effect last (the caller offers them in effective order, so a tie goes to the later one).
pub fn prevails(current: Option<&StatementRecord>, candidate: &StatementRecord, today: chrono::NaiveDate) -> bool {
    if candidate.is_unreadable() {
        return true;
    }
    if candidate.is_pending(today) {
        return false;
    }
    match current {
        None => true,
        Some(c) if c.is_unreadable() => false,
        Some(c) => c.effective <= candidate.effective,
    }
}

#[derive(sqlx::FromRow)]
struct StatementDb {
    id: i64,
    person: String,
    patient: String,
    partner: String,
    record_key: String,
    resource_id: String,
    decision: String,
    effective: String,
    given_on: String,
    withdrawn_on: Option<String>,
    share_cito: bool,
    share_pkb: bool,
    share_partners: String,
    restrictions: String,
    statement_hash: String,
    recorded_at: i64,
    dated: String,
}

impl StatementDb {
    fn into_record(self) -> Result<StatementRecord> {
        Ok(StatementRecord {
            id: self.id,
            person: self.person,
            patient: self.patient,
            partner: self.partner,
            record_key: self.record_key,
            resource_id: self.resource_id,
            // The table's CHECK keeps it to the four spellings; anything else would hold the person.
            decision: Stated::parse(&self.decision).unwrap_or(Stated::Unreadable),
            effective: self.effective,
            given_on: self.given_on,
            withdrawn_on: self.withdrawn_on,
            share_cito: self.share_cito,
            share_pkb: self.share_pkb,
            share_partners: self.share_partners,
            restrictions: self.restrictions,
            statement_hash: self.statement_hash,
            recorded_at: from_ms("consent_statements.recorded_at", self.recorded_at)?,
            first_seen: self.dated == "first_seen",
        })
    }
}

const STATEMENT_COLUMNS: &str = "id, person, patient, partner, record_key, resource_id, decision, effective, \
     given_on, withdrawn_on, share_cito, share_pkb, share_partners, restrictions, statement_hash, recorded_at, dated";

/// One entry of the audit trail. `action`: disclosed, linked, withheld, cancelled, retracted or consent.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct AuditEntry {
    /// Store id (0 before it is stored).
    pub id: i64,
    pub at: DateTime<Utc>,
    pub action: AuditAction,
    pub destination: Option<String>,
    pub person: Option<String>,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    pub version_id: Option<String>,
    pub content_hash: Option<String>,
    pub partner: Option<String>,
    pub category: Option<String>,
    pub agreement: Option<String>,
    pub lawful_basis: Option<String>,
    pub consent: Option<String>,
    pub reason: Option<String>,
}

#[derive(sqlx::FromRow)]
pub(super) struct AuditDb {
    pub(super) id: i64,
    at: i64,
    action: String,
    destination: Option<String>,
    person: Option<String>,
    resource_type: Option<String>,
    resource_id: Option<String>,
    version_id: Option<String>,
    content_hash: Option<String>,
    partner: Option<String>,
    category: Option<String>,
    agreement: Option<String>,
    lawful_basis: Option<String>,
    consent: Option<String>,
    reason: Option<String>,
}

impl AuditDb {
    pub(super) fn entry(&self) -> Result<AuditEntry> {
        Ok(AuditEntry {
            id: self.id,
            at: from_ms("audit.at", self.at)?,
            action: AuditAction::parse(&self.action).ok_or_else(|| StoreError::Corrupt {
                what: "audit.action",
                detail: format!("unknown action {:?}", self.action),
            })?,
            destination: self.destination.clone(),
            person: self.person.clone(),
            resource_type: self.resource_type.clone(),
            resource_id: self.resource_id.clone(),
            version_id: self.version_id.clone(),
            content_hash: self.content_hash.clone(),
            partner: self.partner.clone(),
            category: self.category.clone(),
            agreement: self.agreement.clone(),
            lawful_basis: self.lawful_basis.clone(),
            consent: self.consent.clone(),
            reason: self.reason.clone(),
        })
    }
}

/// Which audit entries to list.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Person ids (`Person/...` or `Patient/...`); empty: everyone.
    pub persons: Vec<String>,
    pub destination: Option<String>,
    pub since: Option<DateTime<Utc>>,
    /// Only these actions; empty: all.
    pub actions: Vec<AuditAction>,
    pub after_id: i64,
    pub limit: usize,
}

/// Appends `entry` inside an open transaction, chained to the entry before it (see `store/audit.rs`).
pub(crate) async fn append_audit<C>(conn: &mut C, entry: &AuditEntry) -> Result<()>
where
    C: super::audit::AuditConn + Send,
{
    conn.append_chained(entry).await
}

/// Records, inside the caller's transaction, that `key` is kept from `destination` for `reason` (since the
/// audit entry's time). The caller appends the audit entry.
async fn note_withheld<'c, E, DB>(
    conn: E,
    destination: &str,
    key: &ResourceKey,
    reason: &str,
    at: DateTime<Utc>,
) -> Result<()>
where
    E: sqlx::Executor<'c, Database = DB>,
    DB: sqlx::Database,
    for<'q> DB::Arguments: sqlx::IntoArguments<DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    sqlx::query::<DB>(
        "INSERT INTO withheld (destination, resource_type, resource_id, reason, since) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (destination, resource_type, resource_id) \
         DO UPDATE SET reason = excluded.reason, since = excluded.since",
    )
    .bind(destination.to_string())
    .bind(key.resource_type.clone())
    .bind(key.id.clone())
    .bind(reason.to_string())
    .bind(ms(at))
    .execute(conn)
    .await
    .map_err(StoreError::query("noting a withholding"))?;
    Ok(())
}

/// The newest write a destination accepted: walks its audit entries backwards through `audit_by_destination`.
pub(super) const LAST_WRITE_AT: &str =
    "SELECT at FROM audit WHERE destination = $1 AND action IN ($2, $3) ORDER BY id DESC LIMIT 1";

impl Store {
    /// Records which person each Patient is (upsert).
    pub async fn persons_put(&self, links: &[(String, String, String)], now: DateTime<Utc>) -> Result<()> {
        if links.is_empty() {
            return Ok(());
        }
        // The last link of each Patient (one statement may not touch a row twice), 200 to a statement: a
        // cycle links every Patient it reads, and one statement each was most of a no-change cycle's time.
        let last: std::collections::BTreeMap<&str, (&str, &str)> = links
            .iter()
            .map(|(patient, person, partner)| (patient.as_str(), (person.as_str(), partner.as_str())))
            .collect();
        let rows: Vec<(&str, (&str, &str))> = last.into_iter().collect();
        in_tx!(self, "persons_put", |tx| {
            for chunk in rows.chunks(200) {
                let mut q = String::from("INSERT INTO persons (patient, person, partner, updated_at) VALUES ");
                for i in 0..chunk.len() {
                    let b = i * 3;
                    q.push_str(&format!("{}(${}, ${}, ${}, $1)", if i > 0 { "," } else { "" }, b + 2, b + 3, b + 4));
                }
                q.push_str(
                    " ON CONFLICT (patient) DO UPDATE SET person = excluded.person, updated_at = excluded.updated_at \
                     WHERE persons.person <> excluded.person",
                );
                // Placeholders only; every value is bound.
                let mut query = sqlx::query(sqlx::AssertSqlSafe(q)).bind(ms(now));
                for (patient, (person, partner)) in chunk {
                    query = query.bind(*patient).bind(*person).bind(*partner);
                }
                query.execute(&mut *tx).await.map_err(StoreError::query("persons_put"))?;
            }
        });
        Ok(())
    }

    /// The person a Patient belongs to, if known.
    pub async fn person_of(&self, patient: &str) -> Result<Option<String>> {
        with_pool!(self, |pool| {
            sqlx::query_scalar("SELECT person FROM persons WHERE patient = $1").bind(patient).fetch_optional(pool).await
        })
        .map_err(StoreError::query("person_of"))
    }

    /// A person's Patients: (patient, partner).
    pub async fn patients_of(&self, person: &str) -> Result<Vec<(String, String)>> {
        with_pool!(self, |pool| {
            sqlx::query_as("SELECT patient, partner FROM persons WHERE person = $1 ORDER BY partner, patient")
                .bind(person)
                .fetch_all(pool)
                .await
        })
        .map_err(StoreError::query("patients_of"))
    }

    /// Stores a statement unless it is what the same consent record (partner, record key) said last time.
    /// Returns the new statement's id, or `None` when nothing changed. (A record that goes back to what it
    /// said before is a new statement: its newest version is the one that counts.)
    pub async fn consent_record(&self, s: &StatementRecord) -> Result<Option<i64>> {
        let id = in_tx!(self, "consent_record", |tx| {
            let last: Option<String> = sqlx::query_scalar(
                "SELECT statement_hash FROM consent_statements WHERE partner = $1 AND record_key = $2 \
                 ORDER BY id DESC LIMIT 1",
            )
            .bind(&s.partner)
            .bind(&s.record_key)
            .fetch_optional(&mut *tx)
            .await
            .map_err(StoreError::query("consent_record"))?;
            if last.as_deref() == Some(s.statement_hash.as_str()) {
                None
            } else {
                let id: i64 = sqlx::query_scalar(
                    "INSERT INTO consent_statements (person, patient, partner, record_key, resource_id, decision, \
                     effective, given_on, withdrawn_on, share_cito, share_pkb, share_partners, restrictions, \
                     statement_hash, recorded_at, dated) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) \
                     RETURNING id",
                )
                .bind(&s.person)
                .bind(&s.patient)
                .bind(&s.partner)
                .bind(&s.record_key)
                .bind(&s.resource_id)
                .bind(s.decision.as_str())
                .bind(&s.effective)
                .bind(&s.given_on)
                .bind(&s.withdrawn_on)
                .bind(s.share_cito)
                .bind(s.share_pkb)
                .bind(&s.share_partners)
                .bind(&s.restrictions)
                .bind(&s.statement_hash)
                .bind(ms(s.recorded_at))
                .bind(if s.first_seen { "first_seen" } else { "export" })
                .fetch_one(&mut *tx)
                .await
                .map_err(StoreError::query("consent_record"))?;
                Some(id)
            }
        });
        Ok(id)
    }

    /// The person a partner's consent record (by its key) was last recorded about, if it ever was.
    pub async fn consent_record_person(&self, partner: &str, record_key: &str) -> Result<Option<String>> {
        with_pool!(self, |pool| {
            sqlx::query_scalar(
                "SELECT person FROM consent_statements WHERE partner = $1 AND record_key = $2 ORDER BY id DESC LIMIT 1",
            )
            .bind(partner)
            .bind(record_key)
            .fetch_optional(pool)
            .await
        })
        .map_err(StoreError::query("consent_record_person"))
    }

    /// Every statement about `person`, in the order they take effect (the last one is in force).
    pub async fn consent_history(&self, person: &str) -> Result<Vec<StatementRecord>> {
        let rows: Vec<StatementDb> = with_pool!(self, |pool| {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {STATEMENT_COLUMNS} FROM consent_statements WHERE person = $1 ORDER BY effective, id"
            )))
            .bind(person)
            .fetch_all(pool)
            .await
        })
        .map_err(StoreError::query("consent_history"))?;
        rows.into_iter().map(StatementDb::into_record).collect()
    }

    /// The statement in force for each of `persons` (those with none are left out): of each consent
    /// record's latest version (a corrected record replaces what it said before), a hold on an unreadable
    /// record if there is one, else the one that takes effect last (of two on the same day, the one recorded
    /// last), leaving out consent given with a date after today (pending, see [`prevails`]).
    pub async fn consent_current(
        &self,
        persons: &[String],
    ) -> Result<std::collections::HashMap<String, StatementRecord>> {
        let today = consent_today();
        let mut out = std::collections::HashMap::new();
        for chunk in persons.chunks(super::KEY_CHUNK) {
            let rows: Vec<StatementDb> = with_read_pool!(self, |pool| {
                let mut qb = sqlx::QueryBuilder::new(format!(
                    "SELECT {STATEMENT_COLUMNS} FROM consent_statements WHERE id IN \
                     (SELECT MAX(id) FROM consent_statements WHERE person IN ("
                ));
                super::push_in_list(&mut qb, chunk);
                qb.push(") GROUP BY person, partner, record_key) ORDER BY person, effective, id");
                qb.build_query_as().fetch_all(pool).await
            })
            .map_err(StoreError::query("consent_current"))?;
            for row in rows {
                let r = row.into_record()?;
                if prevails(out.get(&r.person), &r, today) {
                    out.insert(r.person.clone(), r);
                }
            }
        }
        Ok(out)
    }

    /// Notes that the rules keep each key from `destination` for its reason, auditing only withholdings that
    /// are new or whose reason changed (not every cycle): reads the current reasons in chunks and writes what
    /// changed in one transaction. Returns how many were new or changed.
    pub async fn withheld_note_many(
        &self,
        destination: &str,
        items: &[(ResourceKey, String, AuditEntry)],
    ) -> Result<usize> {
        let mut known: std::collections::HashMap<ResourceKey, String> = std::collections::HashMap::new();
        for chunk in items.chunks(super::KEY_CHUNK) {
            let rows: Vec<(String, String, String)> = with_pool!(self, |pool| {
                let mut qb = super::with_keys(chunk.iter().map(|(k, _, _)| k));
                qb.push(
                    "SELECT w.resource_type, w.resource_id, w.reason FROM k CROSS JOIN withheld w \
                     WHERE w.resource_type = k.t AND w.resource_id = k.i AND w.destination = ",
                );
                qb.push_bind(destination.to_string());
                qb.build_query_as().fetch_all(pool).await
            })
            .map_err(StoreError::query("withheld_note_many"))?;
            for (t, i, reason) in rows {
                known.insert(ResourceKey::new(t, i), reason);
            }
        }
        let todo: Vec<&(ResourceKey, String, AuditEntry)> =
            items.iter().filter(|(k, reason, _)| known.get(k) != Some(reason)).collect();
        if todo.is_empty() {
            return Ok(0);
        }
        in_tx!(self, "withheld_note_many", |tx| {
            for (key, reason, audit) in &todo {
                note_withheld(&mut *tx, destination, key, reason, audit.at).await?;
                append_audit(&mut *tx, audit).await?;
            }
        });
        Ok(todo.len())
    }

    /// Withholds a leased outbox row at the last moment (the rules changed after it was planned): the row
    /// is removed, the withholding noted and audited.
    pub async fn withhold_row(&self, row: &OutboxRow, reason: &str, audit: &AuditEntry) -> Result<()> {
        in_tx!(self, "withhold_row", |tx| {
            sqlx::query(OUTBOX_CANCEL)
                .bind(row.seq)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::query("withhold_row"))?;
            note_withheld(&mut *tx, &row.item.destination, &row.item.key, reason, audit.at).await?;
            append_audit(&mut *tx, audit).await?;
        });
        Ok(())
    }

    /// Cancels every pending upsert for `person` (all destinations), auditing each as cancelled with
    /// `reason`. Rows being sent right now finish; dead letters are left for an admin. Returns the count.
    pub async fn outbox_cancel_person(&self, person: &str, reason: &str, now: DateTime<Utc>) -> Result<usize> {
        let n = in_tx!(self, "outbox_cancel_person", |tx| {
            let rows: Vec<(i64, String, String, String, Option<String>)> = sqlx::query_as(
                "SELECT seq, destination, resource_type, resource_id, origin FROM outbox \
                 WHERE patient = $1 AND dead = FALSE AND op = 'upsert' \
                 AND (lease_until IS NULL OR lease_until <= $2)",
            )
            .bind(person)
            .bind(ms(now))
            .fetch_all(&mut *tx)
            .await
            .map_err(StoreError::query("outbox_cancel_person"))?;
            for (seq, destination, resource_type, resource_id, origin) in &rows {
                sqlx::query(OUTBOX_CANCEL)
                    .bind(seq)
                    .execute(&mut *tx)
                    .await
                    .map_err(StoreError::query("outbox_cancel_person"))?;
                let mut parts = origin.as_deref().unwrap_or_default().split('|');
                let entry = AuditEntry {
                    at: now,
                    action: AuditAction::Cancelled,
                    destination: Some(destination.clone()),
                    person: Some(person.to_string()),
                    resource_type: Some(resource_type.clone()),
                    resource_id: Some(resource_id.clone()),
                    partner: parts.next().filter(|p| !p.is_empty()).map(String::from),
                    category: parts.next().map(String::from),
                    reason: Some(reason.to_string()),
                    ..AuditEntry::default()
                };
                append_audit(&mut *tx, &entry).await?;
            }
            rows.len()
        });
        Ok(n)
    }

    /// Appends one entry to the audit trail.
    pub async fn audit_append(&self, entry: &AuditEntry) -> Result<()> {
        in_tx!(self, "audit_append", |tx| append_audit(&mut *tx, entry).await?);
        Ok(())
    }

    /// When `destination` last accepted a write (the newest `disclosed` or `retracted` audit entry naming it);
    /// `None` if it never has. Walks the destination's entries from the newest (index `audit_by_destination`).
    pub async fn last_write_at(&self, destination: &str) -> Result<Option<DateTime<Utc>>> {
        let at: Option<i64> = with_pool!(self, |pool| {
            sqlx::query_scalar(LAST_WRITE_AT)
                .bind(destination)
                .bind(AuditAction::Disclosed.as_str())
                .bind(AuditAction::Retracted.as_str())
                .fetch_optional(pool)
                .await
        })
        .map_err(StoreError::query("last_write_at"))?;
        at.map(|v| from_ms("audit.at", v)).transpose()
    }

    /// Audit entries matching `filter`, oldest first.
    pub async fn audit_list(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>> {
        let rows: Vec<AuditDb> = with_pool!(self, |pool| {
            let mut qb = sqlx::QueryBuilder::new("SELECT * FROM audit WHERE id > ");
            qb.push_bind(filter.after_id);
            if !filter.persons.is_empty() {
                qb.push(" AND person IN (");
                let mut sep = qb.separated(", ");
                for p in &filter.persons {
                    sep.push_bind(p.clone());
                }
                qb.push(")");
            }
            if let Some(d) = &filter.destination {
                qb.push(" AND destination = ");
                qb.push_bind(d.clone());
            }
            if let Some(since) = filter.since {
                qb.push(" AND at >= ");
                qb.push_bind(ms(since));
            }
            if !filter.actions.is_empty() {
                qb.push(" AND action IN (");
                let mut sep = qb.separated(", ");
                for a in &filter.actions {
                    sep.push_bind(a.as_str());
                }
                qb.push(")");
            }
            qb.push(" ORDER BY id LIMIT ");
            qb.push_bind(limit(if filter.limit == 0 { usize::MAX } else { filter.limit }));
            qb.build_query_as().fetch_all(pool).await
        })
        .map_err(StoreError::query("audit_list"))?;
        rows.into_iter().map(|r| r.entry()).collect()
    }
}
