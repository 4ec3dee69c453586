//! Snapshot sources: an export that holds every current record. Comparing it with the previous complete
//! snapshot tells what has gone at source; a snapshot much smaller than the previous one is refused as
//! suspicious (a truncated export must never read as a mass deletion).
//!
//! A record is a source row's key. A row quarantined this time still counts as present (it is there, only
//! unreadable), keeping the resources it had before, so a damaged row is never taken as a removal.

use chrono::Utc;
use tracing::{error, info, warn};

use super::SourceReport;
use crate::config::SourceConfig;
use crate::context::Context;
use crate::mapping::RefKey;
use crate::model::AuditAction;
use crate::store::{AuditEntry, Op, OutboxItem, ResourceKey, SourceStatus};

/// What planning found in one input file: each record's resources, and the keys of rows quarantined. Each
/// resource is kept as a [`RefKey`] (16 bytes for the connector's own ids), so a large export's members take
/// well under 100 bytes a record: with the run's memory spilled to disk, this is most of what planning holds.
#[derive(Debug, Clone, Default)]
pub struct Members {
    /// (source key, resource), in the order planned; a record's key once per resource.
    records: Vec<(Box<str>, RefKey)>,
    quarantined: Vec<Box<str>>,
}

impl Members {
    /// The record with `key` gave the resource `Type/id`.
    pub fn add(&mut self, key: &str, resource: &str) {
        self.records.push((key.into(), RefKey::of(resource)));
    }

    /// The row with `key` was quarantined (it is still present at source).
    pub fn add_quarantined(&mut self, key: &str) {
        self.quarantined.push(key.into());
    }
}

/// A snapshot as (source key, resource) pairs, sorted, each once; a record without resources has one pair
/// with an empty resource (as it is stored).
type Pairs<'a> = Vec<(&'a str, &'a RefKey)>;

/// Stored as one row per (record, resource): `source key \t Type/id` (a record without resources keeps one row
/// with an empty resource).
fn encode(key: &str, resource: &str) -> String {
    format!("{key}\t{resource}")
}

fn decode(rows: Vec<String>) -> Vec<(Box<str>, RefKey)> {
    let mut out: Vec<(Box<str>, RefKey)> = rows
        .iter()
        .map(|row| {
            let (key, resource) = row.split_once('\t').unwrap_or((row.as_str(), ""));
            (key.into(), RefKey::of(resource))
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// The distinct keys of sorted pairs.
fn keys<'a>(pairs: &'a [(&'a str, &'a RefKey)]) -> impl Iterator<Item = &'a str> + 'a {
    let mut last: Option<&str> = None;
    pairs.iter().map(|&(k, _)| k).filter(move |&k| last.replace(k) != Some(k))
}

/// The pairs of `key` in sorted pairs.
fn of_key<'a, 'b>(pairs: &'b [(&'a str, &'a RefKey)], key: &str) -> &'b [(&'a str, &'a RefKey)] {
    let start = pairs.partition_point(|(k, _)| *k < key);
    let end = start + pairs[start..].partition_point(|(k, _)| *k == key);
    &pairs[start..end]
}

/// Compares this snapshot with the previous one: reports (and, where configured, retracts) what has gone,
/// or refuses a suspiciously small snapshot. Replaces the stored snapshot unless refused.
#[allow(clippy::too_many_arguments)] // one call site; the two reports it fills are the point
pub async fn compare(
    ctx: &Context,
    partner: &str,
    src: &SourceConfig,
    label: &str,
    now: &Members,
    accept_shrink: bool,
    report: &mut SourceReport,
    status: &mut SourceStatus,
) -> anyhow::Result<()> {
    let stored = decode(ctx.store.snapshot_members(partner, label).await?);
    let previous: Pairs<'_> = stored.iter().map(|(k, r)| (&**k, r)).collect();
    let mut records: Pairs<'_> = now.records.iter().map(|(k, r)| (&**k, r)).collect();
    records.sort_unstable();
    records.dedup();
    let mut present: Vec<&str> = keys(&records).chain(now.quarantined.iter().map(|k| &**k)).collect();
    present.sort_unstable();
    present.dedup();
    let (before, after) = (keys(&previous).count(), present.len());
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
    let gone: Vec<&str> = keys(&previous).filter(|k| present.binary_search(k).is_err()).collect();
    status.snapshot_size = Some(i64::try_from(after).unwrap_or(i64::MAX));
    status.gone = i64::try_from(gone.len()).unwrap_or(i64::MAX);
    if !gone.is_empty() {
        warn!(partner, source = label, gone = gone.len(), "Records gone at source since the previous snapshot.");
        report.gone = gone.iter().map(|k| (*k).to_string()).collect();
    }
    if src.retract_missing && !gone.is_empty() {
        report.retracting = retract(ctx, partner, &gone, &previous).await?;
    }
    // Rows quarantined now keep the resources they had (none: one pair with an empty resource).
    let no_resource = RefKey::of("");
    let mut current = records.clone();
    for key in &now.quarantined {
        if !of_key(&records, key).is_empty() {
            continue;
        }
        match of_key(&previous, key) {
            [] => current.push((&**key, &no_resource)),
            had => current.extend_from_slice(had),
        }
    }
    current.sort_unstable();
    current.dedup();
    // An unchanged snapshot (the usual cycle) is not written again.
    if current != previous {
        let rows: Vec<String> = current.iter().map(|(k, r)| encode(k, &r.to_string())).collect();
        ctx.store.snapshot_replace(partner, label, &rows).await?;
    }
    Ok(())
}

/// Queues deletions, where the destination has `retract = true`, of what it holds of records gone at source
/// (Patients last). Returns how many were queued.
async fn retract(ctx: &Context, partner: &str, gone: &[&str], previous: &Pairs<'_>) -> anyhow::Result<u64> {
    let at = Utc::now();
    let mut items = Vec::new();
    for dest in ctx.destinations.iter().filter(|d| d.retract) {
        for key in gone {
            for (_, resource) in of_key(previous, key) {
                let resource = resource.to_string();
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
        let id = crate::mapping::ids::resource_id("hub", "person", "patient", "K1");
        let rows = vec![encode("K1", &format!("Patient/{id}")), encode("K1", "Observation/b"), encode("K2", "")];
        let got = decode(rows.clone());
        let pairs: Pairs<'_> = got.iter().map(|(k, r)| (&**k, r)).collect();
        assert_eq!(keys(&pairs).collect::<Vec<_>>(), ["K1", "K2"]);
        assert_eq!(of_key(&pairs, "K1").len(), 2);
        let mut back: Vec<String> = pairs.iter().map(|(k, r)| encode(k, &r.to_string())).collect();
        back.sort();
        let mut rows = rows;
        rows.sort();
        assert_eq!(back, rows, "what is stored again is what was read");
    }
}
