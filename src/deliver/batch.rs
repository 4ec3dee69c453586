//! Sending rows as transaction bundles: intents first, then the bundle; a bundle the server refuses is split
//! until the refused resource is found (that one alone is dead-lettered); a transient failure defers what is
//! left.

use std::collections::HashMap;

use chrono::Utc;
use tokio::sync::watch;
use tracing::error;

use super::intents::intent_of;
use super::merge::merge_and_send;
use super::records::{Settled, audit_entry, held_entry, ledger_entry};
use super::retry::send_retrying;
use super::transport::{Method, TransportError, Write, Written};
use super::worker::relink;
use super::{DeliveryReport, Destination};
use crate::model::{AuditAction, Provenance};
use crate::policy::Permit;
use crate::store::{
    AuditEntry, Completion, LeaseAsk, LedgerEntry, OutboxRow, ResourceKey, SendIntent, Store, StoreError,
};

/// Records rows settled without a write (see [`Settled`]) on their own, when no bundle took them along.
pub(super) async fn record_settled(store: &Store, settled: &mut Vec<Settled>) -> Result<(), StoreError> {
    let done: Vec<Completion<'_>> = settled.iter().map(Settled::completion).collect();
    store.complete_many(&done).await?;
    settled.clear();
    Ok(())
}

/// Sends rows as bundles, splitting a refused bundle to find the resource the server refuses. Each bundle
/// that lands is recorded in one transaction (ledger, audit, outbox), together with the rows `settled`
/// without a write, which are recorded on their own if no bundle lands.
///
/// `next` names the worker (the lease owner) and where its next batch goes: when the last bundle lands with
/// nothing deferred and no stop asked, the transaction that records it leases the worker's next batch
/// ([`Store::complete_and_lease`]), a commit fewer per bundle.
#[allow(clippy::too_many_arguments)]
pub(super) async fn send_rows(
    store: &Store,
    dest: &Destination,
    rows: Vec<(OutboxRow, Write)>,
    mut settled: Vec<Settled>,
    ledger: &HashMap<ResourceKey, LedgerEntry>,
    permits: &HashMap<i64, Permit>,
    report: &mut DeliveryReport,
    stop: &watch::Receiver<bool>,
    mut next: Option<(&str, &mut Vec<OutboxRow>)>,
) -> Result<(), StoreError> {
    // Rows and their writes side by side, so a bundle is sent from the writes as they are (no copy of the
    // bodies per attempt).
    let (rows, writes): (Vec<OutboxRow>, Vec<Write>) = rows.into_iter().unzip();
    let mut stack: Vec<(Vec<OutboxRow>, Vec<Write>)> = vec![(rows, writes)];
    while let Some((rows, writes)) = stack.pop() {
        if rows.is_empty() {
            continue;
        }
        let chunk = || rows.iter().zip(&writes);
        // Before anything leaves: should the answer never be recorded (a crash, a lost answer), the next pass
        // finds out whether it landed and audits it then.
        let intents: Vec<SendIntent> =
            chunk().filter_map(|(row, write)| intent_of(dest, row, write, permits.get(&row.seq))).collect();
        store.intents_record(&intents).await?;
        match send_retrying(dest, stop, || dest.transport.send(&writes)).await {
            Ok(results) => {
                dest.breaker.success();
                let recorded: Vec<(Option<LedgerEntry>, Option<AuditEntry>)> = chunk()
                    .zip(results)
                    .map(|((row, write), Written { version_id })| {
                        let action =
                            if write.method == Method::Put { AuditAction::Disclosed } else { AuditAction::Retracted };
                        let audit = audit_entry(&dest.name, row, action, version_id.as_deref(), permits.get(&row.seq));
                        let audited = !row.item.origin.as_ref().is_some_and(Provenance::is_audit_copy);
                        let entry = match &write.body {
                            Some(body) => held_entry(
                                dest,
                                row,
                                &write.id,
                                version_id,
                                body.hash().to_string(),
                                body.fingerprints().to_string(),
                                ledger.get(&row.item.key),
                                false,
                                true,
                            ),
                            None => ledger_entry(&dest.name, row, &write.id, version_id, false),
                        };
                        ((write.method == Method::Put).then_some(entry), audited.then_some(audit))
                    })
                    .collect();
                // The bundle landed whole (a transaction): it is recorded whole, in one transaction.
                let mut done: Vec<Completion<'_>> = settled.iter().map(Settled::completion).collect();
                done.extend(chunk().zip(&recorded).map(|((row, _), (entry, audit))| Completion {
                    row,
                    ledger: entry.as_ref(),
                    audit: audit.as_ref(),
                }));
                let last = stack.is_empty() && report.deferred == 0 && !*stop.borrow();
                match next.as_mut().filter(|_| last) {
                    Some((owner, ahead)) => {
                        let ask = LeaseAsk {
                            destination: &dest.name,
                            owner,
                            max: dest.batch_size,
                            lease_for: dest.lease_for(),
                        };
                        **ahead = store.complete_and_lease(&done, &ask).await?;
                    }
                    None => store.complete_many(&done).await?,
                }
                drop(done);
                settled.clear();
                for (row, write) in chunk() {
                    if write.method == Method::Delete
                        && write.resource_type == "Patient"
                        && let Some(person) = &row.item.patient
                    {
                        report.relink += relink(store, &dest.name, &write.id, person).await?;
                    }
                    report.written += 1;
                }
            }
            Err(TransportError::Rejected { .. } | TransportError::PreconditionFailed { .. }) if rows.len() > 1 => {
                let (mut first_rows, mut first_writes) = (rows, writes);
                let half = first_rows.len() / 2;
                let second = (first_rows.split_off(half), first_writes.split_off(half));
                stack.push(second);
                stack.push((first_rows, first_writes));
            }
            Err(TransportError::Rejected { status, message, outcome }) => {
                let (row, write) = (&rows[0], &writes[0]);
                error!(destination = %dest.name, resource_type = %write.resource_type, resource = %write.id, status, "Rejected; dead-lettered.");
                let detail = serde_json::json!({ "status": status, "message": message, "outcome": outcome });
                store.dead_letter(row.seq, &detail.to_string()).await?;
                report.dead_lettered += 1;
            }
            Err(TransportError::PreconditionFailed { .. }) => {
                let (row, write) = (&rows[0], &writes[0]);
                if write.method == Method::Delete {
                    // Retracting something changed there since: the person's consent still rules; delete the
                    // current version.
                    let mut again = write.clone();
                    again.if_match = None;
                    stack.push((vec![row.clone()], vec![again]));
                    continue;
                }
                let known = ledger.get(&row.item.key);
                merge_and_send(store, dest, row, write, known, permits.get(&row.seq), report, stop).await?;
            }
            Err(TransportError::Stopped) => {
                // The daemon is stopping: nothing failed. The rows keep their leases until the daemon releases
                // them on the way out; the intents just recorded are settled by the next pass.
                report.deferred += rows.len() as u64 + stack.iter().map(|(r, _)| r.len() as u64).sum::<u64>();
                return record_settled(store, &mut settled).await;
            }
            Err(e) => {
                // Transient after every retry, or a setup problem: everything left waits for a later pass.
                let opened = dest.breaker.failure();
                error!(destination = %dest.name, error = %e, circuit_opened = opened, "Delivery failed; rows deferred.");
                let wait = dest.retry_policy().defer_for(0, e.retry_after());
                let later = Utc::now() + chrono::Duration::from_std(wait).unwrap_or(dest.defer);
                for row in rows.iter().chain(stack.iter().flat_map(|(r, _)| r)) {
                    store.retry_later(row.seq, later, &e.full_text()).await?;
                    report.deferred += 1;
                }
                return record_settled(store, &mut settled).await;
            }
        }
    }
    record_settled(store, &mut settled).await
}
