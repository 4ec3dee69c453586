//! The enqueue decision, shared by both backends: given what the ledger and the outbox hold for one
//! (destination, resource), what one planned write changes. Pure, so the read-only pass and the locked
//! writing pass of [`Store::enqueue`](super::Store::enqueue) agree by construction.

use std::collections::HashMap;

use super::{Op, OutboxItem, ResourceKey, Result};

/// An outbox row of the key, as far as planning needs it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct StoredRow {
    pub seq: i64,
    pub resource_type: String,
    pub resource_id: String,
    pub op: String,
    pub content_hash: String,
    pub dead: bool,
    pub lease_until: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PendingRow {
    pub seq: i64,
    pub op: Op,
    pub content_hash: String,
    pub lease_until: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeadRow {
    pub seq: i64,
    pub op: Op,
    pub content_hash: String,
}

/// What the store holds for one (destination, key).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct KeyState {
    /// The ledger's content hash, if the destination holds the resource.
    pub ledger_hash: Option<String>,
    /// The pending row (at most one: a unique index says so).
    pub pending: Option<PendingRow>,
    pub dead: Vec<DeadRow>,
}

impl KeyState {
    pub fn add(&mut self, row: StoredRow) -> Result<()> {
        let op = Op::parse(&row.op)?;
        if row.dead {
            self.dead.push(DeadRow { seq: row.seq, op, content_hash: row.content_hash });
        } else {
            self.pending =
                Some(PendingRow { seq: row.seq, op, content_hash: row.content_hash, lease_until: row.lease_until });
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    Nothing,
    /// A new pending row; the dead letters of the key (older content) are deleted.
    Insert {
        superseded_dead: Vec<i64>,
    },
    /// The pending row `seq` gets the new content and a new seq.
    Replace {
        seq: i64,
    },
    /// The pending row `seq` is no longer needed: the destination already holds the planned state.
    Cancel {
        seq: i64,
    },
}

pub(crate) fn decide(state: &KeyState, item: &OutboxItem, now_ms: i64) -> Action {
    let satisfied = match item.op {
        Op::Upsert => state.ledger_hash.as_deref() == Some(item.content_hash.as_str()),
        Op::Delete => state.ledger_hash.is_none(),
    };
    if let Some(p) = &state.pending {
        if p.op == item.op && p.content_hash == item.content_hash {
            return Action::Nothing;
        }
        let in_flight = p.lease_until.is_some_and(|until| until > now_ms);
        // A row being sent right now may still change the destination, so it is replaced rather than
        // cancelled: once the send finishes, the planned state goes out again.
        if satisfied && !in_flight {
            return Action::Cancel { seq: p.seq };
        }
        return Action::Replace { seq: p.seq };
    }
    if satisfied {
        return Action::Nothing;
    }
    if state.dead.iter().any(|d| d.op == item.op && d.content_hash == item.content_hash) {
        // Parked for an admin; re-queueing it every cycle would defeat the dead letter.
        return Action::Nothing;
    }
    Action::Insert { superseded_dead: state.dead.iter().map(|d| d.seq).collect() }
}

/// `items` with only the last occurrence of each (destination, key), in their original order.
pub(crate) fn last_per_key(items: &[OutboxItem]) -> Vec<&OutboxItem> {
    let mut last: HashMap<(&str, &ResourceKey), usize> = HashMap::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        last.insert((item.destination.as_str(), &item.key), i);
    }
    items
        .iter()
        .enumerate()
        .filter(|(i, item)| last.get(&(item.destination.as_str(), &item.key)) == Some(i))
        .map(|(_, item)| item)
        .collect()
}
