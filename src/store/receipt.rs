//! Partner plan receipts (`migrations/*/0011_plan_receipt.sql`; used by `crate::sync::receipt`): the
//! fingerprint of a partner's last plan that changed nothing, and the generation of what plans read here.

use chrono::{DateTime, Utc};

use super::{Inner, Result, Store, StoreError};

/// A partner's receipt: what its last plan that changed nothing depended on, when it was made, and the
/// summary it reported (text the caller wrote).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanReceipt {
    pub fingerprint: String,
    pub at: DateTime<Utc>,
    pub summary: String,
}

impl Store {
    /// How many changes the tables plans read have seen (kept by triggers, in the writing transaction).
    pub async fn plan_generation(&self) -> Result<i64> {
        with_pool!(self, |pool| sqlx::query_scalar("SELECT n FROM plan_generation").fetch_one(pool).await)
            .map_err(StoreError::query("plan_generation"))
    }

    pub async fn plan_receipt(&self, partner: &str) -> Result<Option<PlanReceipt>> {
        let row: Option<(String, i64, String)> = with_pool!(self, |pool| {
            sqlx::query_as("SELECT fingerprint, at, summary FROM plan_receipt WHERE partner = $1")
                .bind(partner)
                .fetch_optional(pool)
                .await
        })
        .map_err(StoreError::query("plan_receipt"))?;
        Ok(row.map(|(fingerprint, at, summary)| PlanReceipt {
            fingerprint,
            at: DateTime::from_timestamp_millis(at).unwrap_or_default(),
            summary,
        }))
    }

    pub async fn plan_receipt_put(&self, partner: &str, receipt: &PlanReceipt) -> Result<()> {
        with_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO plan_receipt (partner, fingerprint, at, summary) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (partner) DO UPDATE SET fingerprint = excluded.fingerprint, at = excluded.at, \
                 summary = excluded.summary",
            )
            .bind(partner)
            .bind(&receipt.fingerprint)
            .bind(receipt.at.timestamp_millis())
            .bind(&receipt.summary)
            .execute(pool)
            .await
            .map(|_| ())
        })
        .map_err(StoreError::query("plan_receipt_put"))
    }

    /// Forgets a partner's receipt (its next plan is made in full).
    pub async fn plan_receipt_clear(&self, partner: &str) -> Result<()> {
        with_pool!(self, |pool| {
            sqlx::query("DELETE FROM plan_receipt WHERE partner = $1").bind(partner).execute(pool).await.map(|_| ())
        })
        .map_err(StoreError::query("plan_receipt_clear"))
    }
}
