//! Writes in flight: the intent recorded before a disclosure leaves, and settling, on the next pass, writes
//! whose outcome was never recorded (the connector stopped, or lost the answer, after sending).

use chrono::Utc;
use tracing::{info, warn};

use super::Destination;
use super::transport::{Method, Write};
use crate::model::AuditAction;
use crate::model::Provenance;
use crate::policy::Permit;
use crate::store::{AuditEntry, LedgerEntry, OutboxRow, ResourceKey, SendIntent, Store, StoreError};

/// The intent of a disclosure about to be sent (retractions need none: they disclose nothing).
pub(super) fn intent_of(
    dest: &Destination,
    row: &OutboxRow,
    write: &Write,
    permit: Option<&Permit>,
) -> Option<SendIntent> {
    let body = write.body.as_ref().filter(|_| write.method == Method::Put)?;
    Some(SendIntent {
        destination: dest.name.clone(),
        resource_type: write.resource_type.clone(),
        resource_id: row.item.key.id.clone(),
        held_hash: body.hash().to_string(),
        remote_id: write.id.clone(),
        patient: row.item.patient.clone(),
        origin: row.item.origin.clone(),
        content_hash: row.item.content_hash.clone(),
        agreement: permit.map(|p| p.agreement.clone()),
        lawful_basis: permit.map(|p| p.lawful_basis.clone()),
        consent: permit.and_then(|p| p.consent.clone()),
        since: Utc::now(),
    })
}

/// Settles writes sent earlier whose outcome was never recorded (the connector stopped, or the answer was
/// lost, after sending): reads each from the destination; one it holds is audited as disclosed and recorded
/// in the ledger, one it does not hold is forgotten. Unreachable: tried again on the next pass.
pub async fn settle_intents(store: &Store, dest: &Destination) -> Result<usize, StoreError> {
    let mut settled = 0;
    let can_read = dest.transport.capabilities().read;
    for intent in store.intents_due(&dest.name, Utc::now(), 500).await? {
        if !can_read {
            // It cannot be read back (HL7 v2): the row is still in the outbox and goes again with the same
            // message control id, which the engine recognises as a duplicate if the first one landed.
            store.intent_settle(&intent, None).await?;
            settled += 1;
            continue;
        }
        let found = match dest.transport.read(&intent.resource_type, &intent.remote_id).await {
            Ok(found) => found,
            Err(e) => {
                warn!(destination = %dest.name, error = %e, "Could not settle writes in doubt; trying again on the next pass.");
                break;
            }
        };
        let landed = found.filter(|f| crate::conflict::content_hash(&f.resource) == intent.held_hash);
        let origin = intent.origin.as_ref().and_then(Provenance::origin).cloned();
        match landed {
            Some(f) => {
                let entry = LedgerEntry {
                    destination: dest.name.clone(),
                    key: ResourceKey::new(intent.resource_type.clone(), intent.resource_id.clone()),
                    remote_id: intent.remote_id.clone(),
                    version_id: f.version_id.clone(),
                    content_hash: intent.content_hash.clone(),
                    patient: intent.patient.clone(),
                    updated_at: Utc::now(),
                    origin: intent.origin.clone(),
                    held_hash: Some(intent.held_hash.clone()),
                    sent_version: f.version_id.clone(),
                    ..LedgerEntry::default()
                };
                let audit = AuditEntry {
                    at: Utc::now(),
                    action: AuditAction::Disclosed,
                    destination: Some(dest.name.clone()),
                    person: intent.patient.clone(),
                    resource_type: Some(intent.resource_type.clone()),
                    resource_id: Some(intent.resource_id.clone()),
                    version_id: f.version_id.clone(),
                    content_hash: Some(intent.content_hash.clone()),
                    partner: origin.as_ref().map(|o| o.partner.clone()),
                    category: origin.as_ref().map(|o| o.category.as_str().to_string()),
                    agreement: intent.agreement.clone(),
                    lawful_basis: intent.lawful_basis.clone(),
                    consent: intent.consent.clone(),
                    reason: Some(format!(
                        "sent at {} and found there afterwards: the connector stopped or lost the answer before recording it",
                        intent.since.to_rfc3339()
                    )),
                    ..AuditEntry::default()
                };
                let audited = !intent.origin.as_ref().is_some_and(Provenance::is_audit_copy);
                if audited {
                    store.intent_settle(&intent, Some((&entry, &audit))).await?;
                } else {
                    store.intent_settle(&intent, None).await?;
                }
                info!(destination = %dest.name, resource_type = %intent.resource_type, resource = %intent.resource_id, "A write in doubt had landed; audited and recorded now.");
            }
            None => store.intent_settle(&intent, None).await?,
        }
        settled += 1;
    }
    Ok(settled)
}
