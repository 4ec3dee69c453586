//! The bookkeeping of results: the ledger entry and the audit entry a landed write (or a link) is recorded
//! with.

use super::Destination;
use crate::model::AuditAction;
use crate::model::Provenance;
use crate::policy::Permit;
use crate::store::{AuditEntry, Completion, LedgerEntry, Op, OutboxRow};
use chrono::Utc;

/// A row settled without being sent (a Patient linked to someone else's, a row of a linked resource): what
/// to record of it, with the bundle it goes out with (one transaction).
pub(super) struct Settled {
    pub row: OutboxRow,
    pub ledger: LedgerEntry,
    pub audit: Option<AuditEntry>,
}

impl Settled {
    pub fn completion(&self) -> Completion<'_> {
        Completion { row: &self.row, ledger: Some(&self.ledger), audit: self.audit.as_ref() }
    }
}

pub(super) fn ledger_entry(
    dest: &str,
    row: &OutboxRow,
    remote_id: &str,
    version: Option<String>,
    linked: bool,
) -> LedgerEntry {
    LedgerEntry {
        destination: dest.to_string(),
        key: row.item.key.clone(),
        remote_id: remote_id.to_string(),
        version_id: version,
        content_hash: row.item.content_hash.clone(),
        linked,
        patient: row.item.patient.clone(),
        updated_at: Utc::now(),
        origin: row.item.origin.clone(),
        ..LedgerEntry::default()
    }
}

/// The ledger entry after a write (or after finding the destination already holds the outcome): `held_hash`
/// is the content hash of what the destination now holds, `source_fp` the encoded fingerprints of the
/// partner's version it reflects.
#[allow(clippy::too_many_arguments)]
pub(super) fn held_entry(
    dest: &Destination,
    row: &OutboxRow,
    remote_id: &str,
    version: Option<String>,
    held_hash: String,
    source_fp: String,
    previous: Option<&LedgerEntry>,
    remote_edits: bool,
    written: bool,
) -> LedgerEntry {
    let prev_hash = previous.and_then(|p| {
        if p.held_hash.as_deref() == Some(held_hash.as_str()) { p.prev_hash.clone() } else { p.held_hash.clone() }
    });
    let sent_version = if written { version.clone() } else { previous.and_then(|p| p.sent_version.clone()) };
    LedgerEntry {
        sent_version,
        source_fp: Some(source_fp),
        held_hash: Some(held_hash),
        prev_hash,
        remote_edits,
        ..ledger_entry(&dest.name, row, remote_id, version, false)
    }
}

/// The audit entry for a write that landed (or a Patient linked): what went where, and what allowed it.
pub(super) fn audit_entry(
    dest: &str,
    row: &OutboxRow,
    action: AuditAction,
    version: Option<&str>,
    permit: Option<&Permit>,
) -> AuditEntry {
    let origin = row.item.origin.as_ref().and_then(Provenance::origin);
    AuditEntry {
        at: Utc::now(),
        action,
        destination: Some(dest.to_string()),
        person: row.item.patient.clone(),
        resource_type: Some(row.item.key.resource_type.clone()),
        resource_id: Some(row.item.key.id.clone()),
        version_id: version.map(String::from),
        content_hash: (row.item.op == Op::Upsert).then(|| row.item.content_hash.clone()),
        partner: origin.as_ref().map(|o| o.partner.clone()),
        category: origin.as_ref().map(|o| o.category.as_str().to_string()),
        agreement: permit.map(|p| p.agreement.clone()),
        lawful_basis: permit.map(|p| p.lawful_basis.clone()),
        consent: permit.and_then(|p| p.consent.clone()),
        reason: (row.item.op == Op::Delete)
            .then(|| "no longer allowed there (consent or agreement changed); retract = true".to_string()),
        ..AuditEntry::default()
    }
}
