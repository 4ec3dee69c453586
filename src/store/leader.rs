//! Leader election: one instance runs the scheduler. PostgreSQL: a session advisory lock held on a connection
//! of its own; SQLite: one instance per file, so always the leader.

use std::fmt;

use super::{Inner, Result, Store, postgres};

impl Store {
    // -----------------------------------------------------------------------------------------------------
    // Leader election

    /// Tries to become the leader `name` (e.g. the scheduler). PostgreSQL: a session advisory lock on a
    /// connection of its own, held by the returned guard; `None` while another holder has it. The lock goes
    /// when the guard is released or dropped, or when its connection dies (check with
    /// [`LeaderGuard::still_leading`]). SQLite: one instance per file, so always `Some`.
    pub async fn try_lead(&self, name: &str) -> Result<Option<LeaderGuard>> {
        match &self.inner {
            Inner::Sqlite(_) => Ok(Some(LeaderGuard { name: name.to_string(), conn: None })),
            Inner::Postgres(pool) => Ok(postgres::try_lead(pool, name)
                .await?
                .map(|conn| LeaderGuard { name: name.to_string(), conn: Some(conn) })),
        }
    }
}

/// Holds the leadership taken by [`Store::try_lead`]. Dropping it gives the leadership up (PostgreSQL: the
/// dedicated connection closes and the server drops the lock); [`LeaderGuard::release`] does so and waits
/// for the server to confirm.
pub struct LeaderGuard {
    name: String,
    /// PostgreSQL: the session holding the advisory lock. `None` on SQLite.
    conn: Option<sqlx::PgConnection>,
}

impl fmt::Debug for LeaderGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaderGuard").field("name", &self.name).field("postgres", &self.conn.is_some()).finish()
    }
}

impl LeaderGuard {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the leadership is still held: on PostgreSQL, whether the lock's session still answers and
    /// still holds it. A leader that gets `false` must stop leading (another instance may take over).
    pub async fn still_leading(&mut self) -> bool {
        match &mut self.conn {
            None => true,
            Some(conn) => postgres::holds_lead(conn, &self.name).await,
        }
    }

    /// Gives the leadership up and closes the connection, waiting for the server.
    pub async fn release(mut self) -> Result<()> {
        match self.conn.take() {
            None => Ok(()),
            Some(conn) => postgres::release_lead(conn, &self.name).await,
        }
    }
}
