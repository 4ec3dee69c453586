//! Writes in flight, so that "no disclosure without its audit entry" holds across crashes. Before a write is
//! sent its intent is recorded (what goes where, the hash of the body, what allowed it); [`Store::complete`]
//! removes it in the transaction that records the write. An intent still there once no worker holds a
//! lease on its key means the connector stopped, or lost the answer, after sending: the next delivery pass
//! settles it by reading the destination.
//! If the destination holds what was sent, the disclosure is audited and the ledger records it (so a
//! withdrawal that meanwhile cancelled the row still finds, and can retract, what the destination holds);
//! if not, the intent is dropped.

use crate::model::Provenance;
use chrono::{DateTime, Utc};

use super::{AuditEntry, Inner, LedgerEntry, Result, Store, StoreError, bind_ledger, consent, from_ms, ms};

/// A write about to be sent, or whose outcome is not known yet.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SendIntent {
    pub destination: String,
    pub resource_type: String,
    pub resource_id: String,
    /// Hash (`conflict::content_hash`) of the body as sent, to compare with what the destination holds.
    pub held_hash: String,
    /// The id on the destination.
    pub remote_id: String,
    pub patient: Option<String>,
    pub origin: Option<Provenance>,
    /// The outbox row's content hash (the ledger's `content_hash` once recorded).
    pub content_hash: String,
    pub agreement: Option<String>,
    pub lawful_basis: Option<String>,
    pub consent: Option<String>,
    pub since: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct IntentDb {
    destination: String,
    resource_type: String,
    resource_id: String,
    held_hash: String,
    remote_id: String,
    patient: Option<String>,
    origin: Option<String>,
    content_hash: String,
    agreement: Option<String>,
    lawful_basis: Option<String>,
    consent: Option<String>,
    since: i64,
}

impl IntentDb {
    fn into_intent(self) -> Result<SendIntent> {
        Ok(SendIntent {
            destination: self.destination,
            resource_type: self.resource_type,
            resource_id: self.resource_id,
            held_hash: self.held_hash,
            remote_id: self.remote_id,
            patient: self.patient,
            origin: self.origin.as_deref().map(Provenance::decode),
            content_hash: self.content_hash,
            agreement: self.agreement,
            lawful_basis: self.lawful_basis,
            consent: self.consent,
            since: from_ms("send_intent.since", self.since)?,
        })
    }
}

const DELETE_ONE: &str = "DELETE FROM send_intent WHERE destination = $1 AND resource_type = $2 \
     AND resource_id = $3 AND held_hash = $4";

/// Removes every intent for a key, inside the transaction that records a write of it as delivered.
pub(crate) const DELETE_KEY: &str =
    "DELETE FROM send_intent WHERE destination = $1 AND resource_type = $2 AND resource_id = $3";

impl Store {
    /// Records writes about to be sent (again: a later attempt keeps the first record).
    pub async fn intents_record(&self, intents: &[SendIntent]) -> Result<()> {
        if intents.is_empty() {
            return Ok(());
        }
        const INSERT: &str = "INSERT INTO send_intent (destination, resource_type, resource_id, held_hash, \
             remote_id, patient, origin, content_hash, agreement, lawful_basis, consent, since)";
        const ON_CONFLICT: &str = "ON CONFLICT (destination, resource_type, resource_id, held_hash) DO NOTHING";
        if let super::Inner::Sqlite(pool) = &self.inner {
            // One statement whatever their number, its rows one JSON parameter (see `json_rows`).
            let rows = super::json_rows(intents.iter().map(|i| {
                (
                    &i.destination,
                    &i.resource_type,
                    &i.resource_id,
                    &i.held_hash,
                    &i.remote_id,
                    &i.patient,
                    i.origin.as_ref().map(Provenance::encode),
                    &i.content_hash,
                    &i.agreement,
                    &i.lawful_basis,
                    &i.consent,
                    ms(i.since),
                )
            }));
            let sql = format!("{INSERT} {} WHERE true {ON_CONFLICT}", super::json_select(12));
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(rows)
                .execute(pool)
                .await
                .map_err(StoreError::query("intents_record"))?;
            return Ok(());
        }
        // PostgreSQL: one statement per 500 intents (a statement is a round trip).
        in_tx!(self, "intents_record", |tx| {
            for chunk in intents.chunks(super::ROWS_PER_STATEMENT) {
                let sql = format!("{INSERT} VALUES {} {ON_CONFLICT}", super::values_list(chunk.len(), 12, true));
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                for i in chunk {
                    q = q
                        .bind(&i.destination)
                        .bind(&i.resource_type)
                        .bind(&i.resource_id)
                        .bind(&i.held_hash)
                        .bind(&i.remote_id)
                        .bind(&i.patient)
                        .bind(i.origin.as_ref().map(Provenance::encode))
                        .bind(&i.content_hash)
                        .bind(&i.agreement)
                        .bind(&i.lawful_basis)
                        .bind(&i.consent)
                        .bind(ms(i.since));
                }
                q.execute(&mut *tx).await.map_err(StoreError::query("intents_record"))?;
            }
        });
        Ok(())
    }

    /// Intents of `destination` that no worker is sending now (no live lease on an outbox row of the key),
    /// oldest first: writes whose outcome was never recorded.
    pub async fn intents_due(&self, destination: &str, now: DateTime<Utc>, max: usize) -> Result<Vec<SendIntent>> {
        let rows: Vec<IntentDb> = with_pool!(self, |pool| {
            sqlx::query_as(
                "SELECT i.destination, i.resource_type, i.resource_id, i.held_hash, i.remote_id, i.patient, \
                 i.origin, i.content_hash, i.agreement, i.lawful_basis, i.consent, i.since FROM send_intent i \
                 WHERE i.destination = $1 AND NOT EXISTS (SELECT 1 FROM outbox o \
                     WHERE o.destination = i.destination AND o.resource_type = i.resource_type \
                     AND o.resource_id = i.resource_id AND o.dead = FALSE AND o.lease_until > $2) \
                 ORDER BY i.since LIMIT $3",
            )
            .bind(destination)
            .bind(ms(now))
            .bind(super::limit(max))
            .fetch_all(pool)
            .await
        })
        .map_err(StoreError::query("intents_due"))?;
        rows.into_iter().map(IntentDb::into_intent).collect()
    }

    /// Settles an intent: when `landed` holds the ledger entry and audit entry of a write the destination
    /// was found to hold, records both; either way removes the intent. One transaction.
    pub async fn intent_settle(&self, intent: &SendIntent, landed: Option<(&LedgerEntry, &AuditEntry)>) -> Result<()> {
        in_tx!(self, "intent_settle", |tx| {
            let n = sqlx::query(DELETE_ONE)
                .bind(&intent.destination)
                .bind(&intent.resource_type)
                .bind(&intent.resource_id)
                .bind(&intent.held_hash)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::query("intent_settle"))?
                .rows_affected();
            // Gone meanwhile: another instance settled it, or the write was recorded after all.
            if n > 0
                && let Some((entry, audit)) = landed
            {
                bind_ledger(sqlx::query(super::LEDGER_UPSERT), entry)
                    .execute(&mut *tx)
                    .await
                    .map_err(StoreError::query("intent_settle: writing the ledger"))?;
                consent::append_audit(&mut *tx, audit).await?;
            }
        });
        Ok(())
    }
}
