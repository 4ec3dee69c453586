//! Pull: reads back, per resource type the connector holds there, what changed on a destination since the
//! last pull (`[type]/_history?_since=`), and notes changes made by others to resources the connector
//! manages. A change by someone else is kept: the ledger records that the destination now holds it, so the
//! next update of that resource reads and merges instead of writing over it (and a change to the same element
//! becomes a conflict). A copy of the connector's own older version (a restored backup) is left for
//! `connector reconcile --fix`; a deletion there is reported.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::deliver::Destination;
use crate::deliver::transport::Found;
use crate::model::AuditAction;
use crate::store::{AuditEntry, LedgerEntry, ResourceKey, Store};

/// Entries per history page.
const PAGE: usize = 500;
/// How far back each pull reads again: a write committed just before the last pull's newest entry may
/// appear in history after it was read. Entries seen twice are skipped by version.
const OVERLAP_MS: i64 = 60_000;

/// What one pull found.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct PullReport {
    pub destination: String,
    /// History entries read.
    pub read: u64,
    /// Changes made there by others to resources the connector manages (kept).
    pub changed: u64,
    /// Resources holding an older copy of what the connector wrote (see `connector reconcile --fix`).
    pub stale: u64,
    /// Resources the connector manages that were deleted there (see `connector reconcile`).
    pub deleted: u64,
}

/// What one remote version means for the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// What the ledger says the destination holds.
    Known,
    /// An older copy of what the connector wrote.
    Stale,
    /// Changed there by someone else: accepted into the ledger.
    Changed,
}

/// Notes the current remote version of a managed resource: adopts an equal copy's version, reports a stale
/// copy, and accepts a change by someone else (audited as `remote-change`, naming the elements).
pub async fn note_remote(
    store: &Store,
    dest: &Destination,
    entry: &LedgerEntry,
    found: &Found,
) -> crate::store::Result<Seen> {
    let hash = crate::conflict::content_hash(&found.resource);
    if entry.held_hash.as_deref() == Some(hash.as_str()) {
        if entry.version_id != found.version_id {
            let mut e = entry.clone();
            e.version_id = found.version_id.clone();
            store.ledger_accept(&e, None).await?;
        }
        return Ok(Seen::Known);
    }
    if entry.prev_hash.as_deref() == Some(hash.as_str()) {
        return Ok(Seen::Stale);
    }
    let base = crate::conflict::decode(entry.source_fp.as_deref());
    let changed: Vec<String> = match &base {
        Some(b) => crate::conflict::changed_from(&dest.salt, b, &found.resource),
        None => vec!["(unknown: no base)".into()],
    };
    let mut e = entry.clone();
    e.version_id = found.version_id.clone();
    e.held_hash = Some(hash);
    e.remote_edits = !changed.is_empty();
    e.updated_at = Utc::now();
    let audit = AuditEntry {
        at: Utc::now(),
        action: AuditAction::RemoteChange,
        destination: Some(dest.name.clone()),
        person: entry.patient.clone(),
        resource_type: Some(entry.key.resource_type.clone()),
        resource_id: Some(entry.key.id.clone()),
        version_id: found.version_id.clone(),
        reason: Some(format!("changed on {} by someone else; kept: {}", dest.name, changed.join(", "))),
        ..AuditEntry::default()
    };
    store.ledger_accept(&e, Some(&audit)).await?;
    info!(destination = %dest.name, resource_type = %entry.key.resource_type, resource = %entry.key.id, elements = %changed.join(","), "Changed on the destination by someone else; kept.");
    Ok(Seen::Changed)
}

fn entry_time(e: &Value) -> Option<DateTime<Utc>> {
    let t = e["resource"]["meta"]["lastUpdated"].as_str().or(e["response"]["lastModified"].as_str())?;
    DateTime::parse_from_rfc3339(t).ok().map(|t| t.with_timezone(&Utc))
}

fn entry_id(e: &Value) -> Option<String> {
    if let Some(id) = e["resource"]["id"].as_str() {
        return Some(id.to_string());
    }
    // A deletion carries no resource: `request.url` is `Type/id`.
    e["request"]["url"].as_str()?.split('/').nth(1).map(|s| s.split('?').next().unwrap_or(s).to_string())
}

fn entry_version(e: &Value) -> Option<String> {
    if let Some(v) = e["resource"]["meta"]["versionId"].as_str() {
        return Some(v.to_string());
    }
    let etag = e["response"]["etag"].as_str()?;
    Some(etag.trim_start_matches("W/").trim_matches('"').to_string())
}

/// Whether version `a` is newer than `b` (numbers when both are; otherwise any difference counts).
fn newer(a: &str, b: Option<&str>) -> bool {
    match (a.parse::<u64>(), b.map(str::parse::<u64>)) {
        (Ok(x), Some(Ok(y))) => x > y,
        _ => Some(a) != b,
    }
}

/// Pulls one destination. When `stop` turns true (the daemon is stopping), the pull ends between two pages or
/// two reads; the resource type it was reading keeps its cursor, so the next pull reads it again (what was
/// already noted is recognised as known).
pub async fn pull(store: &Store, dest: &Destination, stop: &watch::Receiver<bool>) -> anyhow::Result<PullReport> {
    let mut report = PullReport { destination: dest.name.clone(), ..Default::default() };
    for resource_type in store.ledger_types(&dest.name).await? {
        if resource_type == "Provenance" {
            continue; // the audit trail's copy: written by us only
        }
        let cursor = format!("pull:{}:{resource_type}", dest.name);
        let since = store.cursor_get(&cursor).await?;
        let mut next = if since > 0 {
            let from = DateTime::<Utc>::from_timestamp_millis(since - OVERLAP_MS).unwrap_or_default();
            let stamp = from.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            Some(format!("{resource_type}/_history?_since={}&_count={PAGE}", stamp.replace('+', "%2B")))
        } else {
            Some(format!("{resource_type}/_history?_count={PAGE}"))
        };
        let mut newest = since;
        let mut done: HashSet<String> = HashSet::new();
        let mut pages = crate::deliver::paging::Pages::new(
            &dest.name,
            next.as_deref().unwrap_or_default(),
            crate::deliver::paging::MAX_PAGES,
        );
        while let Some(path) = next.take() {
            if *stop.borrow() {
                info!(destination = %dest.name, resource_type = %resource_type, "Pull stopped: the connector is stopping.");
                return Ok(report);
            }
            let page = dest.transport.page(&path).await?;
            let entries = page["entry"].as_array().cloned().unwrap_or_default();
            report.read += entries.len() as u64;
            let keys: Vec<ResourceKey> =
                entries.iter().filter_map(entry_id).map(|id| ResourceKey::new(&resource_type, id)).collect();
            let mut ledger: std::collections::HashMap<String, LedgerEntry> = std::collections::HashMap::new();
            for e in store.ledger_get_many(&dest.name, &keys).await? {
                ledger.insert(e.remote_id.clone(), e);
            }
            for e in store.ledger_by_remote_ids(&dest.name, &keys).await? {
                ledger.insert(e.remote_id.clone(), e);
            }
            for e in &entries {
                if let Some(t) = entry_time(e) {
                    newest = newest.max(t.timestamp_millis());
                }
                let (Some(id), Some(version)) = (entry_id(e), entry_version(e)) else { continue };
                let Some(known) = ledger.get(&id).filter(|l| !l.linked) else { continue };
                if !newer(&version, known.version_id.as_deref()) || done.contains(&id) {
                    continue;
                }
                if *stop.borrow() {
                    info!(destination = %dest.name, resource_type = %resource_type, "Pull stopped: the connector is stopping.");
                    return Ok(report);
                }
                done.insert(id.clone());
                let current = dest.transport.read(&resource_type, &id).await?;
                match current {
                    None => {
                        report.deleted += 1;
                        warn!(destination = %dest.name, resource_type = %resource_type, resource = %id, "Deleted on the destination by someone else; `connector reconcile` lists it as missing.");
                    }
                    Some(found) => match note_remote(store, dest, known, &found).await? {
                        Seen::Known => {}
                        Seen::Stale => {
                            report.stale += 1;
                            warn!(destination = %dest.name, resource_type = %resource_type, resource = %id, "Holds an older copy of what the connector wrote; `connector reconcile --fix` repairs it.");
                        }
                        Seen::Changed => report.changed += 1,
                    },
                }
            }
            next = pages.next(&page)?;
        }
        if newest > since {
            store.cursor_set(&cursor, newest).await?;
        }
    }
    info!(destination = %dest.name, read = report.read, changed = report.changed, stale = report.stale, deleted = report.deleted, "Pulled.");
    Ok(report)
}
