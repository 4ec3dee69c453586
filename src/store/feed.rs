//! Partner feeds' own ledger: for each feed (`feed:<partner>`), the hash of every central-record resource it
//! last delivered, and whose record it is. Hashes and ids only, never content: the next run compares what
//! the central record holds now with these to send only what changed.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use super::{
    AuditEntry, CLEAR_LEASE_BY_TOKEN, Inner, OutboxRow, ROW_DONE, ResourceKey, Result, Store, StoreError, consent, ms,
};

/// One resource a feed delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedItem {
    pub person: String,
    pub key: ResourceKey,
    pub content_hash: String,
}

impl Store {
    /// What `feed` last delivered of `person`'s record: key -> content hash.
    pub async fn feed_items(&self, feed: &str, person: &str) -> Result<HashMap<ResourceKey, String>> {
        let rows: Vec<(String, String, String)> = with_pool!(self, |pool| {
            sqlx::query_as(
                "SELECT resource_type, resource_id, content_hash FROM feed_items WHERE feed = $1 AND person = $2",
            )
            .bind(feed)
            .bind(person)
            .fetch_all(pool)
            .await
        })
        .map_err(StoreError::query("feed_items"))?;
        Ok(rows.into_iter().map(|(t, i, h)| (ResourceKey::new(t, i), h)).collect())
    }

    /// The people `feed` has delivered something of.
    pub async fn feed_persons(&self, feed: &str) -> Result<Vec<String>> {
        with_pool!(self, |pool| {
            sqlx::query_scalar("SELECT DISTINCT person FROM feed_items WHERE feed = $1 ORDER BY person")
                .bind(feed)
                .fetch_all(pool)
                .await
        })
        .map_err(StoreError::query("feed_persons"))
    }

    /// Records a delivered feed document in one transaction: the items it carried, an audit entry per
    /// disclosure, and the outbox row removed (or, when a newer plan replaced it
    /// meanwhile, only its lease cleared, so the newer one goes out next).
    pub async fn feed_complete(
        &self,
        row: &OutboxRow,
        delivered: &[FeedItem],
        audit: &[AuditEntry],
        now: DateTime<Utc>,
    ) -> Result<()> {
        let feed = &row.item.destination;
        in_tx!(self, "feed_complete", |tx| {
            for item in delivered {
                sqlx::query(
                    "INSERT INTO feed_items (feed, resource_type, resource_id, person, content_hash, delivered_at) \
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (feed, resource_type, resource_id) DO UPDATE \
                     SET person = excluded.person, content_hash = excluded.content_hash, \
                     delivered_at = excluded.delivered_at",
                )
                .bind(feed)
                .bind(&item.key.resource_type)
                .bind(&item.key.id)
                .bind(&item.person)
                .bind(&item.content_hash)
                .bind(ms(now))
                .execute(&mut *tx)
                .await
                .map_err(StoreError::query("feed_complete: recording delivered items"))?;
            }
            for entry in audit {
                consent::append_audit(&mut *tx, entry).await?;
            }
            finish_leased_row!(tx, row, "feed_complete");
        });
        Ok(())
    }

    /// Forgets delivered items that are no longer in the feed.
    pub async fn feed_drop(&self, feed: &str, keys: &[ResourceKey]) -> Result<()> {
        in_tx!(self, "feed_drop", |tx| {
            for key in keys {
                sqlx::query("DELETE FROM feed_items WHERE feed = $1 AND resource_type = $2 AND resource_id = $3")
                    .bind(feed)
                    .bind(&key.resource_type)
                    .bind(&key.id)
                    .execute(&mut *tx)
                    .await
                    .map_err(StoreError::query("feed_drop"))?;
            }
        });
        Ok(())
    }

    /// Forgets everything `feed` delivered and cancels what it has queued (`feed rebuild`): the next run
    /// sends every person's whole record again. Returns (items forgotten, queued documents cancelled).
    pub async fn feed_forget(&self, feed: &str) -> Result<(u64, u64)> {
        let out = in_tx!(self, "feed_forget", |tx| {
            let items = sqlx::query("DELETE FROM feed_items WHERE feed = $1")
                .bind(feed)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::query("feed_forget"))?
                .rows_affected();
            let queued = sqlx::query("DELETE FROM outbox WHERE destination = $1 AND lease_owner IS NULL")
                .bind(feed)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::query("feed_forget"))?
                .rows_affected();
            (items, queued)
        });
        Ok(out)
    }
}
