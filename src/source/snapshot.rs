//! Snapshot sources: an export that holds every current record. Comparing it with the previous complete
//! snapshot tells what has gone at source; a snapshot much smaller than the previous one is refused as
//! suspicious (a truncated export must never read as a mass deletion).
//!
//! A record is a source row's key. A row quarantined this time still counts as present (it is there, only
//! unreadable), keeping the resources it had before, so a damaged row is never taken as a removal.

use std::collections::{BTreeMap, BTreeSet};

use chrono::Utc;
use tracing::{error, info, warn};

use super::SourceReport;
use crate::config::SourceConfig;
use crate::context::Context;
use crate::model::AuditAction;
use crate::store::{AuditEntry, Op, OutboxItem, ResourceKey, SourceStatus};

/// What planning found in one input file: each record's resources, and the keys of rows quarantined.
#[derive(Debug, Clone, Default)]
pub struct Members {
    /// Source key -> the resource keys (`Type/id`) mapped from it.
    pub records: BTreeMap<String, BTreeSet<String>>,
    pub quarantined: BTreeSet<String>,
}

/// Stored as one row per (record, resource): `source key \t Type/id` (a record without resources keeps one row
/// with an empty resource).
fn encode(key: &str, resource: &str) -> String {
    format!("{key}\t{resource}")
}

fn decode(rows: Vec<String>) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for row in rows {
        let (key, resource) = row.split_once('\t').unwrap_or((row.as_str(), ""));
        let entry = out.entry(key.to_string()).or_default();
        if !resource.is_empty() {
            entry.insert(resource.to_string());
        }
    }
    out
}

/// Compares this snapshot with the previous one: reports (and, where configured, retracts) what has gone,
/// or refuses a suspiciously small snapshot. Replaces the stored snapshot unless refused.
#[allow(clippy::too_many_arguments)] // one call site; the two reports it fills are the point
pub async fn compare(
    ctx: &Context,
    partner: &str,
    src: &SourceConfig,
    label: &str,
    now: Members,
    accept_shrink: bool,
    report: &mut SourceReport,
    status: &mut SourceStatus,
) -> anyhow::Result<()> {
    let previous = decode(ctx.store.snapshot_members(partner, label).await?);
    let present: BTreeSet<&String> = now.records.keys().chain(now.quarantined.iter()).collect();
    let (before, after) = (previous.len(), present.len());
    if before > 0 && after * 100 < before * usize::from(src.refuse_below_percent) && !accept_shrink {
        let why = format!(
            "this export has {after} record(s), under {}% of the previous snapshot's {before}: refused as \
             suspicious (a truncated or partial export?), so nothing was taken as removed; its rows were still \
             read. Ask the partner for a complete export; if they really removed the records, run `connector \
             sync --partner {partner} --accept-snapshot` to take it as complete",
            src.refuse_below_percent
        );
        error!(
            partner,
            source = label,
            before,
            after,
            "Snapshot refused as suspicious: much smaller than the previous one."
        );
        status.refused = Some(why.clone());
        report.refused = Some(why);
        return Ok(());
    }
    let gone: Vec<&String> = previous.keys().filter(|k| !present.contains(k)).collect();
    status.snapshot_size = Some(i64::try_from(after).unwrap_or(i64::MAX));
    status.gone = i64::try_from(gone.len()).unwrap_or(i64::MAX);
    if !gone.is_empty() {
        warn!(partner, source = label, gone = gone.len(), "Records gone at source since the previous snapshot.");
        report.gone = gone.iter().map(|k| (*k).clone()).collect();
    }
    if src.retract_missing && !gone.is_empty() {
        report.retracting = retract(ctx, partner, &gone, &previous).await?;
    }
    // Rows quarantined now keep the resources they had.
    let mut current = now.records;
    for key in now.quarantined {
        let before = previous.get(&key).cloned().unwrap_or_default();
        current.entry(key).or_insert(before);
    }
    // An unchanged snapshot (the usual cycle) is not written again.
    if current != previous {
        let mut rows = Vec::new();
        for (key, resources) in &current {
            rows.extend(resources.iter().map(|r| encode(key, r)));
            if resources.is_empty() {
                rows.push(encode(key, ""));
            }
        }
        ctx.store.snapshot_replace(partner, label, &rows).await?;
    }
    Ok(())
}

/// Queues deletions, where the destination has `retract = true`, of what it holds of records gone at source
/// (Patients last). Returns how many were queued.
async fn retract(
    ctx: &Context,
    partner: &str,
    gone: &[&String],
    previous: &BTreeMap<String, BTreeSet<String>>,
) -> anyhow::Result<u64> {
    let at = Utc::now();
    let mut items = Vec::new();
    for dest in ctx.destinations.iter().filter(|d| d.retract) {
        for key in gone {
            for resource in previous.get(*key).into_iter().flatten() {
                let Some((t, id)) = resource.split_once('/') else { continue };
                let rk = ResourceKey { resource_type: t.to_string(), id: id.to_string() };
                let Some(entry) = ctx.store.ledger_get(&dest.name, &rk).await? else { continue };
                if entry.linked {
                    continue;
                }
                let person = match &entry.patient {
                    Some(p) => Some(ctx.store.person_of(p).await?.unwrap_or_else(|| p.clone())),
                    None => None,
                };
                ctx.store
                    .audit_append(&AuditEntry {
                        at,
                        action: AuditAction::Withheld,
                        person: person.clone(),
                        destination: Some(dest.name.clone()),
                        resource_type: Some(rk.resource_type.clone()),
                        resource_id: Some(rk.id.clone()),
                        partner: Some(partner.to_string()),
                        reason: Some(format!(
                            "record {key} is gone from {partner}'s snapshot export (retract_missing = true): deletion queued"
                        )),
                        ..AuditEntry::default()
                    })
                    .await?;
                items.push(OutboxItem {
                    destination: dest.name.clone(),
                    key: rk,
                    patient: person,
                    op: Op::Delete,
                    content_hash: String::new(),
                    body: None,
                    origin: None,
                });
            }
        }
    }
    let n = items.len() as u64;
    if n > 0 {
        items.sort_by_key(|i| i.key.resource_type == "Patient");
        ctx.store.enqueue(&items, at).await?;
        info!(partner, queued = n, "Deletions queued for records gone at source.");
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip_with_and_without_resources() {
        let rows = vec![encode("K1", "Patient/a"), encode("K1", "Observation/b"), encode("K2", "")];
        let got = decode(rows);
        assert_eq!(got["K1"].len(), 2);
        assert!(got["K2"].is_empty());
    }
}
