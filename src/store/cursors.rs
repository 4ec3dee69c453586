//! Cursors: named positions (e.g. how far a history was read), 0 until first set.

use super::{Inner, Result, Store, StoreError};

impl Store {
    /// A named position (0 when never set).
    pub async fn cursor_get(&self, name: &str) -> Result<i64> {
        let v: Option<i64> = with_pool!(self, |pool| {
            sqlx::query_scalar("SELECT value FROM cursors WHERE name = $1").bind(name).fetch_optional(pool).await
        })
        .map_err(StoreError::query("cursor_get"))?;
        Ok(v.unwrap_or(0))
    }

    pub async fn cursor_set(&self, name: &str, value: i64) -> Result<()> {
        with_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO cursors (name, value) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            )
            .bind(name)
            .bind(value)
            .execute(pool)
            .await
            .map(|_| ())
        })
        .map_err(StoreError::query("cursor_set"))
    }
}
