//! Merging with what the destination holds: an update to a resource changed there by others is read and
//! compared three ways; changes to different elements are merged and written, the same element changed on
//! both sides opens a conflict for an admin.

use chrono::Utc;
use tokio::sync::watch;
use tracing::{info, warn};

use super::intents::intent_of;
use super::records::{audit_entry, held_entry, ledger_entry};
use super::retry::send_retrying;
use super::transport::{self, Body, TransportError, Write};
use super::{DeliveryReport, Destination};
use crate::model::AuditAction;
use crate::policy::Permit;
use crate::store::{LedgerEntry, OutboxRow, SendIntent, Store, StoreError};

/// An update to a resource that may have been changed on the destination by someone else (`If-Match`
/// failed, or the ledger says others' changes are kept there): read the current version and compare three
/// ways. Changes to different elements are merged (when `[conflicts] auto_merge` allows it for the type) and
/// written with `If-Match` on the version read; the same element changed on both sides is a conflict, recorded
/// for an admin, and nothing is written. Our own earlier write that landed without the ledger knowing (a crash
/// in between) shows up as "already holds the outcome" and is adopted.
#[allow(clippy::too_many_arguments)]
pub(super) async fn merge_and_send(
    store: &Store,
    dest: &Destination,
    row: &OutboxRow,
    write: &Write,
    known: Option<&LedgerEntry>,
    permit: Option<&Permit>,
    report: &mut DeliveryReport,
    stop: &watch::Receiver<bool>,
) -> Result<(), StoreError> {
    let Some(queued) = write.body.as_ref() else { return Ok(()) };
    let source = match queued.resource() {
        Ok(v) => v,
        Err(e) => return dead_letter(store, row, &format!("the body to merge is not JSON: {e}"), report).await,
    };
    let base = known.and_then(|k| crate::conflict::decode(k.source_fp.as_deref()));
    for _ in 0..3 {
        let current = match send_retrying(dest, stop, || dest.transport.read(&write.resource_type, &write.id)).await {
            Ok(c) => c,
            Err(TransportError::Stopped) => {
                report.deferred += 1;
                return Ok(());
            }
            Err(e) => {
                store.retry_later(row.seq, Utc::now() + dest.defer, &e.to_string()).await?;
                report.deferred += 1;
                return Ok(());
            }
        };
        let Some(found) = current else {
            let c = conflict_record(dest, row, write, known, vec!["(deleted on the destination)".into()], None);
            return open_conflict(store, dest, row, known, c, report).await;
        };
        let stale =
            known.and_then(|k| k.prev_hash.as_deref()) == Some(crate::conflict::content_hash(&found.resource).as_str());
        let rules = crate::conflict::Rules {
            salt: &dest.salt,
            auto_merge: dest.auto_merge.contains(&write.resource_type),
            stale,
        };
        match crate::conflict::three_way(rules, base.as_ref(), &source, &found.resource) {
            crate::conflict::Merge::Unchanged { kept_remote } => {
                let entry = held_entry(
                    dest,
                    row,
                    &write.id,
                    found.version_id.clone(),
                    crate::conflict::content_hash(&found.resource),
                    queued.fingerprints().to_string(),
                    known,
                    !kept_remote.is_empty(),
                    false,
                );
                let audit = if kept_remote.is_empty() {
                    audit_entry(&dest.name, row, AuditAction::Disclosed, found.version_id.as_deref(), permit)
                } else {
                    let mut a =
                        audit_entry(&dest.name, row, AuditAction::RemoteChange, found.version_id.as_deref(), None);
                    a.reason = Some(format!("kept changes made on {} to: {}", dest.name, kept_remote.join(", ")));
                    a.content_hash = None;
                    a
                };
                store.complete(row, Some(&entry), Some(&audit)).await?;
                return Ok(());
            }
            crate::conflict::Merge::Write { body, kept_remote } => {
                let merged = match Body::new(&body, &dest.salt) {
                    Ok(b) => b,
                    Err(e) => {
                        let why = format!("the merged body could not be written out as JSON: {e}");
                        return dead_letter(store, row, &why, report).await;
                    }
                };
                let mut w = write.clone();
                w.body = Some(merged);
                w.if_match = found.version_id.clone();
                let intent: Vec<SendIntent> = intent_of(dest, row, &w, permit).into_iter().collect();
                store.intents_record(&intent).await?;
                match send_retrying(dest, stop, || dest.transport.send(std::slice::from_ref(&w))).await {
                    Ok(results) => {
                        let version = results.into_iter().next().and_then(|r| r.version_id);
                        let entry = held_entry(
                            dest,
                            row,
                            &write.id,
                            version.clone(),
                            crate::conflict::content_hash(&body),
                            queued.fingerprints().to_string(),
                            known,
                            !kept_remote.is_empty(),
                            true,
                        );
                        let mut audit =
                            audit_entry(&dest.name, row, AuditAction::Disclosed, version.as_deref(), permit);
                        if !kept_remote.is_empty() {
                            audit.reason = Some(format!(
                                "merged: kept changes made on {} to: {}",
                                dest.name,
                                kept_remote.join(", ")
                            ));
                            report.merged += 1;
                            info!(destination = %dest.name, resource_type = %write.resource_type, resource = %write.id, kept = %kept_remote.join(","), "Merged with changes made on the destination.");
                        }
                        store.complete(row, Some(&entry), Some(&audit)).await?;
                        report.written += 1;
                        return Ok(());
                    }
                    Err(TransportError::PreconditionFailed { .. }) => continue, // changed again meanwhile
                    Err(TransportError::Stopped) => {
                        report.deferred += 1;
                        return Ok(());
                    }
                    Err(TransportError::Rejected { status, message, outcome }) => {
                        let detail = serde_json::json!({ "status": status, "message": message, "outcome": outcome });
                        return dead_letter(store, row, &detail.to_string(), report).await;
                    }
                    Err(e) => {
                        store.retry_later(row.seq, Utc::now() + dest.defer, &e.to_string()).await?;
                        report.deferred += 1;
                        return Ok(());
                    }
                }
            }
            crate::conflict::Merge::Conflict { elements } => {
                let mut c = conflict_record(dest, row, write, known, elements, Some(&found));
                if let Some(v) = c.base_version.clone().as_deref() {
                    // The version last written, for the admin to compare with (when the server keeps history).
                    if let Ok(Some(b)) = dest.transport.vread(&write.resource_type, &write.id, v).await {
                        c.base_json = Some(b.resource.to_string());
                    }
                }
                return open_conflict(store, dest, row, known, c, report).await;
            }
        }
    }
    store
        .retry_later(row.seq, Utc::now() + dest.defer, "changed on the destination while merging; will try again")
        .await?;
    report.deferred += 1;
    Ok(())
}

/// Takes the row off the outbox for an admin, with `why`.
async fn dead_letter(store: &Store, row: &OutboxRow, why: &str, report: &mut DeliveryReport) -> Result<(), StoreError> {
    store.dead_letter(row.seq, why).await?;
    report.dead_lettered += 1;
    Ok(())
}

fn conflict_record(
    dest: &Destination,
    row: &OutboxRow,
    write: &Write,
    known: Option<&LedgerEntry>,
    elements: Vec<String>,
    remote: Option<&transport::Found>,
) -> crate::store::ConflictRecord {
    let now = Utc::now();
    crate::store::ConflictRecord {
        destination: dest.name.clone(),
        resource_type: write.resource_type.clone(),
        resource_id: row.item.key.id.clone(),
        remote_id: write.id.clone(),
        patient: row.item.patient.clone(),
        origin: row.item.origin.clone(),
        elements,
        base_version: known.and_then(|k| k.sent_version.clone().or_else(|| k.version_id.clone())),
        source_hash: row.item.content_hash.clone(),
        source_json: write.body.as_ref().map(|b| b.json().get().to_string()),
        remote_version: remote.and_then(|r| r.version_id.clone()),
        remote_json: remote.map(|r| r.resource.to_string()),
        status: crate::model::ConflictStatus::Open,
        created_at: now,
        updated_at: now,
        ..Default::default()
    }
}

/// Records the conflict and takes the row off the outbox without writing: the ledger notes the partner's
/// version as planned (so it is not planned again every cycle) but keeps the base and version as they were.
async fn open_conflict(
    store: &Store,
    dest: &Destination,
    row: &OutboxRow,
    known: Option<&LedgerEntry>,
    c: crate::store::ConflictRecord,
    report: &mut DeliveryReport,
) -> Result<(), StoreError> {
    let mut audit = audit_entry(&dest.name, row, AuditAction::Conflict, c.remote_version.as_deref(), None);
    audit.content_hash = Some(row.item.content_hash.clone());
    audit.reason = Some(format!("changed on both sides: {}; nothing was written", c.elements.join(", ")));
    let (id, new) = store.conflict_open(&c, &audit).await?;
    let mut entry = known.cloned().unwrap_or_else(|| ledger_entry(&dest.name, row, &c.remote_id, None, false));
    entry.content_hash = row.item.content_hash.clone();
    entry.updated_at = Utc::now();
    store.complete(row, Some(&entry), None).await?;
    report.conflicts += 1;
    if new {
        warn!(destination = %dest.name, resource_type = %c.resource_type, resource = %c.resource_id, conflict = id, elements = %c.elements.join(","), "Changed on both sides; not overwritten. See `connector conflicts show`.");
    }
    Ok(())
}

/// A newer partner version of a resource already in conflict: the conflict shows it; nothing is written.
pub(super) async fn conflict_refresh(
    store: &Store,
    dest: &Destination,
    row: &OutboxRow,
    write: &Write,
    known: Option<&LedgerEntry>,
) -> Result<(), StoreError> {
    if let Some(mut c) = store.conflict_open_for(&dest.name, &row.item.key).await? {
        c.source_hash = row.item.content_hash.clone();
        c.source_json = write.body.as_ref().map(|b| b.json().get().to_string());
        c.updated_at = Utc::now();
        let audit = audit_entry(&dest.name, row, AuditAction::Conflict, None, None);
        store.conflict_open(&c, &audit).await?;
    }
    let mut entry = known.cloned().unwrap_or_else(|| ledger_entry(&dest.name, row, &write.id, None, false));
    entry.content_hash = row.item.content_hash.clone();
    entry.updated_at = Utc::now();
    store.complete(row, Some(&entry), None).await
}
