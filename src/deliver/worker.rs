//! The delivery pass: settles writes in doubt, then leases batches from the outbox (the first alone, then
//! `concurrency + 1` workers, `concurrency` requests in flight), checks the sharing rules once more, turns
//! rows into writes (linking Patients, rewriting references, routing conflicts and merges) and hands them to
//! `batch::send_rows`, until the outbox is empty, the circuit opens, rows are deferred or shutdown is asked
//! for.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::Utc;
use serde_json::Value;
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use super::batch::{record_settled, send_rows};
use super::intents::settle_intents;
use super::merge::{conflict_refresh, merge_and_send};
use super::patients::{Outcome, decide, link_to, look_up, match_identifier, patient_key, rewrite_references};
use super::records::{Settled, audit_entry, ledger_entry};
use super::transport::{Body, Method, Write};
use super::{DeliveryReport, Destination};
use crate::model::AuditAction;
use crate::model::Provenance;
use crate::policy::{Permit, Verdict};
use crate::store::{LedgerEntry, Op, OutboxRow, ResourceKey, Store, StoreError};

/// Drains the destination's outbox until it is empty, the circuit opens, or shutdown is asked for.
/// The first bundle goes alone: the rows without a person at the head of the outbox (the partner's
/// Organization, which the rest refer to) must land before anything after them is sent. Then `concurrency + 1`
/// workers share the rest, at most `concurrency` of them with a request in flight; the first of them starts
/// with what the first lease held after those rows (see [`lone_part`]).
///
/// `planning`, when given, is held by a planning pass that is still enqueueing (its sender is dropped when it
/// ends): until then an empty outbox is not the end of the pass, and the workers look again as soon as this
/// process enqueues rows ([`Store::queued`]) or planning ends.
/// A person's rows are numbered in the order planned and leased in that order (a row waits while an earlier
/// one of the same person is in flight), so sending while planning keeps each person's order, as a delivery
/// job running beside the daemon's ingest always has.
pub async fn deliver(
    store: &Store,
    dest: &Arc<Destination>,
    owner: &str,
    shutdown: &watch::Receiver<bool>,
    planning: Option<watch::Receiver<()>>,
) -> Result<DeliveryReport, StoreError> {
    let report = Arc::new(Mutex::new(DeliveryReport { destination: dest.name.clone(), ..Default::default() }));
    settle_intents(store, dest).await?;
    let worker = |owner: String| Worker {
        store: store.clone(),
        dest: dest.clone(),
        owner,
        shutdown: shutdown.clone(),
        report: report.clone(),
        queued: store.queued(),
        planning: planning.clone(),
        ahead: Vec::new(),
    };
    // Boxed: the lone bundle's future (a bundle's whole processing) is large, and `deliver` runs on callers'
    // stacks (a test thread's is 2 MiB).
    let (more, mut rest) = Box::pin(worker(owner.to_string()).lead()).await?;
    if more {
        let mut set = tokio::task::JoinSet::new();
        // One worker more than requests allowed in flight: while `concurrency` bundles are at the server, the
        // spare one leases, checks and looks up the next bundle, and each records its last one without the
        // server waiting. (Twice as many cost more memory at large batches and gained nothing measurable.)
        // Requests take a permit in `send_retrying`.
        for i in 0..dest.concurrency + 1 {
            // The first worker takes the rest of the first lease; the others start empty-handed.
            set.spawn(worker(format!("{owner}/{i}")).run(std::mem::take(&mut rest)));
        }
        while let Some(r) = set.join_next().await {
            match r {
                Ok(r) => {
                    r?;
                }
                Err(e) => error!(destination = %dest.name, error = %e, "Delivery worker failed."),
            }
        }
    }
    let r = report.lock().unwrap_or_else(|p| p.into_inner()).clone();
    // Delivered rows took their bodies (personal data) with them: see them gone from the WAL as well.
    if r.written + r.linked + r.withheld + r.merged > 0
        && let Err(e) = store.checkpoint().await
    {
        warn!(destination = %dest.name, error = %e, "Checkpoint after delivery failed; it is tried again after the next pass.");
    }
    Ok(r)
}

/// The longest a worker that found the outbox empty waits before looking again while planning goes on; it
/// looks sooner when rows are enqueued or planning ends, so this only bounds a wake-up missed (rows another
/// process queued).
const PLANNING_POLL: std::time::Duration = std::time::Duration::from_millis(250);

/// After our Patient `remote_id` of `person` was deleted from `destination`: what other partners linked to it
/// there is sent again ([`Store::relink_after_delete`]), said in the log when there was any. Nothing is
/// forgotten that a later plan needs to retract (the ledger keeps every record the destination holds), so this
/// is safe while another partner's plan goes on beside delivery, or runs later as the daemon's own job.
pub(super) async fn relink(store: &Store, destination: &str, remote_id: &str, person: &str) -> Result<u64, StoreError> {
    let n = store.relink_after_delete(destination, remote_id, person).await?;
    if n > 0 {
        info!(destination = %destination, person = %person, records = n, "A retracted Patient had others linked to it; the person's records there are planned and sent again.");
    }
    Ok(n)
}

/// One of a pass's workers.
struct Worker {
    store: Store,
    dest: Arc<Destination>,
    owner: String,
    shutdown: watch::Receiver<bool>,
    report: Arc<Mutex<DeliveryReport>>,
    /// This process's enqueues (see [`Store::queued`]).
    queued: watch::Receiver<u64>,
    planning: Option<watch::Receiver<()>>,
    /// Rows leased in the transaction that recorded this worker's last bundle
    /// ([`Store::complete_and_lease`]): its next batch.
    ahead: Vec<OutboxRow>,
}

impl Worker {
    /// The pass's first bundle, sent alone (see [`deliver`]). Returns whether the outbox may hold more and the
    /// rows of the first lease that were not part of it, leased and not yet sent: the first worker after it
    /// starts with them.
    async fn lead(mut self) -> Result<(bool, Vec<OutboxRow>), StoreError> {
        let Some(mut rows) = self.next_lease().await? else { return Ok((false, Vec::new())) };
        let rest = lone_part(&mut rows);
        // Alone: the workers lease after it.
        if !self.send(rows, false).await? {
            if !rest.is_empty() {
                // The pass stops here. The rules still run for the rest (consent withdrawn since planning is
                // honoured while the destination is down, as for the rows sent); what they allow goes back to
                // the outbox as it was, deferred with the pass.
                let mut report = DeliveryReport::default();
                let (kept, _) = check_policy(&self.store, &self.dest, rest, &mut report).await?;
                report.deferred += kept.len() as u64;
                self.store.release(&self.owner).await?;
                self.report.lock().unwrap_or_else(|p| p.into_inner()).absorb(&report);
            }
            return Ok((false, Vec::new()));
        }
        Ok((true, rest))
    }

    /// Sends `first` (rows already leased, if any), then leases and sends bundles until the outbox is empty,
    /// the circuit opens, rows are deferred or shutdown is asked for.
    async fn run(mut self, first: Vec<OutboxRow>) -> Result<(), StoreError> {
        if first.is_empty() || self.send(first, true).await? {
            while let Some(rows) = self.next_lease().await? {
                if !self.send(rows, true).await? {
                    break;
                }
            }
        }
        if !self.ahead.is_empty() {
            // Leased with the last bundle, never checked or sent: due again at once, for the next pass.
            self.store.release(&self.owner).await?;
        }
        Ok(())
    }

    /// The next batch of rows due, leased; `None` when there are none (and planning, if it goes on beside,
    /// has ended), the circuit is open or shutdown is asked for.
    async fn next_lease(&mut self) -> Result<Option<Vec<OutboxRow>>, StoreError> {
        let (store, dest) = (&self.store, &self.dest);
        loop {
            if *self.shutdown.borrow() {
                return Ok(None);
            }
            if !dest.breaker.allows() {
                self.report.lock().unwrap_or_else(|p| p.into_inner()).breaker_open = true;
                return Ok(None);
            }
            if !self.ahead.is_empty() {
                return Ok(Some(std::mem::take(&mut self.ahead)));
            }
            // Enqueues from here on wake a wait below: none is missed between this lease and that wait.
            self.queued.mark_unchanged();
            let rows = store.lease(&dest.name, &self.owner, dest.batch_size, dest.lease_for(), Utc::now()).await?;
            if !rows.is_empty() {
                return Ok(Some(rows));
            }
            if !planning_goes_on(&mut self.planning, &mut self.queued).await {
                return Ok(None);
            }
        }
    }

    /// Sends one leased batch; returns whether to go on (no row was deferred). With `lease_next`, the
    /// transaction that records the batch leases the next one as well (into `ahead`).
    async fn send(&mut self, rows: Vec<OutboxRow>, lease_next: bool) -> Result<bool, StoreError> {
        let next = lease_next.then_some((self.owner.as_str(), &mut self.ahead));
        let r = process(&self.store, &self.dest, rows, &self.shutdown, next).await?;
        self.report.lock().unwrap_or_else(|p| p.into_inner()).absorb(&r);
        // Deferred: transient trouble; stop this pass, the rows wait for their not-before time.
        Ok(r.deferred == 0)
    }
}

/// Splits the pass's first lease (in `seq` order): what stays in `rows` goes alone, the rest (returned) with
/// the workers after it. Only rows without a person need to land before later rows are sent (a person's own
/// rows keep their order through the lease, whoever sends them): when the lease begins with such rows and has
/// none after its first row with a person, those leading rows go alone. Otherwise the whole lease does, as
/// it always did. (At 500 rows a bundle, the partner's Organization and 499 other rows took about 1.3 s
/// alone while three of four request slots stood idle.)
fn lone_part(rows: &mut Vec<OutboxRow>) -> Vec<OutboxRow> {
    let lead = rows.iter().take_while(|r| r.item.patient.is_none()).count();
    if lead == 0 || rows[lead..].iter().any(|r| r.item.patient.is_none()) {
        return Vec::new();
    }
    rows.split_off(lead)
}

/// Whether planning is still enqueueing; if so, first waits until rows are enqueued, planning ends, or
/// [`PLANNING_POLL`] has passed.
async fn planning_goes_on(planning: &mut Option<watch::Receiver<()>>, queued: &mut watch::Receiver<u64>) -> bool {
    let Some(rx) = planning.as_mut() else { return false };
    if rx.has_changed().is_err() {
        // The planning pass dropped its end: it has finished, and what it enqueued is committed.
        *planning = None;
        return false;
    }
    tokio::select! {
        _ = rx.changed() => {}
        _ = queued.changed() => {}
        () = tokio::time::sleep(PLANNING_POLL) => {}
    }
    true
}

/// The rules again, for rows about to go out: the person's consent may have changed since they were
/// planned. Rows the rules now refuse are withheld (removed from the outbox, audited); returns the
/// permits of the rest. Deletes (retractions) always go.
async fn check_policy(
    store: &Store,
    dest: &Destination,
    rows: Vec<OutboxRow>,
    report: &mut DeliveryReport,
) -> Result<(Vec<OutboxRow>, HashMap<i64, Permit>), StoreError> {
    let persons: Vec<String> = {
        let mut v: Vec<String> = rows.iter().filter_map(|r| r.item.patient.clone()).collect();
        v.sort();
        v.dedup();
        v
    };
    let consents = store.consent_current(&persons).await?;
    let mut permits = HashMap::new();
    let mut keep = Vec::with_capacity(rows.len());
    for row in rows {
        if row.item.op == Op::Delete || row.item.origin.as_ref().is_some_and(Provenance::is_audit_copy) {
            keep.push(row);
            continue;
        }
        let verdict = match row.item.origin.as_ref().and_then(Provenance::origin).cloned() {
            Some(origin) => {
                let consent = row.item.patient.as_ref().and_then(|p| consents.get(p));
                dest.policy.decide_resource(
                    &dest.name,
                    dest.profile,
                    &origin,
                    &row.item.key.resource_type,
                    row.item.patient.as_deref(),
                    consent,
                )
            }
            None => {
                Verdict::Withhold("planned without its origin (by an older connector); it will be planned again".into())
            }
        };
        match verdict {
            Verdict::Send(permit) => {
                permits.insert(row.seq, permit);
                keep.push(row);
            }
            Verdict::Withhold(reason) => {
                let mut audit = audit_entry(&dest.name, &row, AuditAction::Withheld, None, None);
                audit.reason = Some(reason.clone());
                audit.content_hash = None;
                store.withhold_row(&row, &reason, &audit).await?;
                info!(destination = %dest.name, resource_type = %row.item.key.resource_type, resource = %row.item.key.id, reason = %reason, "Withheld before sending.");
                report.withheld += 1;
            }
        }
    }
    Ok((keep, permits))
}

/// Sends one leased batch. `next` (the worker and where its next batch goes): see [`send_rows`].
async fn process(
    store: &Store,
    dest: &Destination,
    rows: Vec<OutboxRow>,
    stop: &watch::Receiver<bool>,
    next: Option<(&str, &mut Vec<OutboxRow>)>,
) -> Result<DeliveryReport, StoreError> {
    let mut report = DeliveryReport { bundles: 1, ..Default::default() };
    let (rows, permits) = check_policy(store, dest, rows, &mut report).await?;
    if rows.is_empty() {
        return Ok(report);
    }
    let keys: Vec<ResourceKey> = rows.iter().map(|r| r.item.key.clone()).collect();
    let ledger: HashMap<ResourceKey, LedgerEntry> =
        store.ledger_get_many(&dest.name, &keys).await?.into_iter().map(|e| (e.key.clone(), e)).collect();
    let open_conflicts = store.conflicts_open_among(&dest.name, &keys).await?;

    // Patient references of this batch that point at linked (someone else's) Patients.
    let mut links: HashMap<String, String> = HashMap::new();
    // What the batch looks up before any write is made (the Patients its references point at, the matching
    // identifiers of the Patients it creates), read from each queued body in turn: the parsed trees of a
    // whole batch at once would take several times the text's memory. A body that is not JSON is skipped
    // here and dead-lettered below. (The rows' ordering group is the person, not a Patient: read the
    // references from the bodies.)
    let mut referenced: Vec<ResourceKey> = Vec::new();
    let new_patient_identifiers: Vec<Option<String>> = rows
        .iter()
        .map(|row| {
            let body = row.item.body.as_deref().and_then(|text| serde_json::from_str::<Value>(text).ok())?;
            crate::validate::each_reference(&body, &mut |_, reference| referenced.extend(patient_key(reference)));
            let new_patient = row.item.op == Op::Upsert
                && row.item.key.resource_type == "Patient"
                && !ledger.contains_key(&row.item.key);
            new_patient.then(|| match_identifier(&body)).flatten()
        })
        .collect();
    referenced.sort_by(|a, b| a.id.cmp(&b.id));
    referenced.dedup();
    for e in store.ledger_get_many(&dest.name, &referenced).await? {
        if e.remote_id != e.key.id {
            links.insert(format!("Patient/{}", e.key.id), format!("Patient/{}", e.remote_id));
        }
    }

    // Everyone this batch is about to create, looked up on the destination at once.
    let identifiers: Vec<String> = {
        let mut v: Vec<String> = new_patient_identifiers.iter().flatten().cloned().collect();
        v.sort();
        v.dedup();
        v
    };
    let lookups = if *stop.borrow() { Err(Outcome::Stopped) } else { look_up(dest, &identifiers, stop).await };
    if !identifiers.is_empty() {
        debug!(destination = %dest.name, patients = identifiers.len(), found = lookups.as_ref().map_or(0, |l| l.values().filter(|f| !f.is_empty()).count()), "Looked up the batch's new Patients.");
    }

    let mut to_send: Vec<(OutboxRow, Write)> = Vec::new();
    // Rows settled without a write (links): recorded with the bundle, in its transaction.
    let mut settled: Vec<Settled> = Vec::new();
    // Patients this batch creates or links, by matching identifier: a second partner's Patient for the same
    // person in the same batch links to the first instead of searching before it exists (and duplicating).
    let mut batch_patients: HashMap<String, String> = HashMap::new();
    for (mut row, identifier) in rows.into_iter().zip(new_patient_identifiers) {
        if *stop.borrow() {
            // Stopping: what is left keeps its lease until the daemon releases it on the way out.
            report.deferred += 1;
            continue;
        }
        let known = ledger.get(&row.item.key);
        if let Some(entry) = known.filter(|e| e.linked) {
            // Someone else's record (a hospital's Patient in PKB, say): we reference it and never write it.
            let mut updated = entry.clone();
            updated.content_hash = row.item.content_hash.clone();
            updated.updated_at = Utc::now();
            settled.push(Settled { row, ledger: updated, audit: None });
            continue;
        }
        let remote_id = known.map_or(row.item.key.id.clone(), |e| e.remote_id.clone());
        // The body as it will be written, made now: every link that bears on this row is known (matching
        // it below only adds a link to itself, for the rows after it). The queued text goes with it.
        let body = match row.item.body.take().map(|text| outgoing(&text, &remote_id, &links, &dest.salt)).transpose() {
            Ok(b) => b,
            Err(e) => {
                store.dead_letter(row.seq, &e).await?;
                report.dead_lettered += 1;
                continue;
            }
        };
        if row.item.op == Op::Upsert && row.item.key.resource_type == "Patient" && known.is_none() {
            if let Some(first) = identifier.as_ref().and_then(|i| batch_patients.get(i)).cloned() {
                let entry = ledger_entry(&dest.name, &row, &first, None, true);
                let audit = audit_entry(&dest.name, &row, AuditAction::Linked, None, permits.get(&row.seq));
                links.insert(format!("Patient/{}", row.item.key.id), format!("Patient/{first}"));
                settled.push(Settled { row, ledger: entry, audit: Some(audit) });
                report.linked += 1;
                continue;
            }
            if let Some(i) = &identifier {
                let matched = match &lookups {
                    Ok(found) => decide(found.get(i).map_or(&[][..], Vec::as_slice), &row, &dest.name),
                    Err(e) => Err(e.clone()),
                };
                if let Ok(found) = &matched {
                    batch_patients.insert(i.clone(), found.map_or_else(|| row.item.key.id.clone(), |f| f.id.clone()));
                }
                match matched {
                    Ok(Some(other)) => {
                        links.insert(format!("Patient/{}", row.item.key.id), format!("Patient/{}", other.id));
                        let permit = permits.get(&row.seq);
                        settled.push(link_to(&dest.name, row, other, permit));
                        report.linked += 1;
                        continue;
                    }
                    Ok(None) => {}
                    Err(Outcome::Defer(msg)) => {
                        store.retry_later(row.seq, Utc::now() + dest.defer, &msg).await?;
                        report.deferred += 1;
                        continue;
                    }
                    Err(Outcome::Stopped) => {
                        report.deferred += 1;
                        continue;
                    }
                    Err(Outcome::Dead(msg)) => {
                        error!(destination = %dest.name, resource = %row.item.key.id, "Patient match is ambiguous; dead-lettered.");
                        store.dead_letter(row.seq, &msg).await?;
                        report.dead_lettered += 1;
                        continue;
                    }
                }
            }
        }
        let write = Write {
            resource_type: row.item.key.resource_type.clone(),
            id: remote_id,
            method: if row.item.op == Op::Delete { Method::Delete } else { Method::Put },
            body,
            if_match: known.and_then(|e| e.version_id.clone()),
        };
        if write.method == Method::Put && open_conflicts.contains(&row.item.key) {
            conflict_refresh(store, dest, &row, &write, known).await?;
            report.conflicts += 1;
            continue;
        }
        if write.method == Method::Put && known.is_some_and(|e| e.remote_edits) {
            // The destination holds others' changes (kept): read and merge, never write over them.
            merge_and_send(store, dest, &row, &write, known, permits.get(&row.seq), &mut report, stop).await?;
            continue;
        }
        to_send.push((row, write));
    }
    if *stop.borrow() {
        report.deferred += to_send.len() as u64;
        record_settled(store, &mut settled).await?;
        return Ok(report);
    }
    send_rows(store, dest, to_send, settled, &ledger, &permits, &mut report, stop, next).await?;
    Ok(report)
}

/// The body a queued resource is written with: references to linked Patients rewritten to theirs, and the
/// id the destination knows it by. `Err` says why it cannot be sent, for the dead letter.
fn outgoing(text: &str, remote_id: &str, links: &HashMap<String, String>, salt: &str) -> Result<Body, String> {
    let mut body: Value = serde_json::from_str(text).map_err(|e| format!("the queued body is not JSON: {e}"))?;
    rewrite_references(&mut body, links);
    body["id"] = Value::String(remote_id.to_string());
    Body::new(&body, salt).map_err(|e| format!("the body could not be written out as JSON: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PERSON: &str = "Person/x";

    /// Our Patient `hub-p`, another partner's Patient linked to it, and that partner's Encounter.
    async fn linked_person() -> Store {
        let store = Store::connect("sqlite::memory:").await.unwrap();
        let entry = |resource_type: &str, id: &str, remote_id: &str, linked: bool| LedgerEntry {
            destination: "cito".into(),
            key: ResourceKey::new(resource_type, id),
            remote_id: remote_id.into(),
            content_hash: "h".into(),
            linked,
            patient: Some(PERSON.into()),
            updated_at: Utc::now(),
            ..Default::default()
        };
        for e in [
            entry("Patient", "hub-p", "hub-p", false),
            entry("Patient", "mind-p", "hub-p", true),
            entry("Encounter", "mind-e", "mind-e", false),
        ] {
            store.ledger_put(&e).await.unwrap();
        }
        store
    }

    async fn held(store: &Store, resource_type: &str, id: &str) -> Option<LedgerEntry> {
        store.ledger_get("cito", &ResourceKey::new(resource_type, id)).await.unwrap()
    }

    /// A row to queue for cito: `resource_type/id`, of `person` if any.
    fn queued(resource_type: &str, id: &str, person: Option<&str>) -> crate::store::OutboxItem {
        crate::store::OutboxItem {
            destination: "cito".into(),
            key: ResourceKey::new(resource_type, id),
            patient: person.map(String::from),
            op: Op::Upsert,
            content_hash: format!("h-{id}"),
            body: Some("{}".into()),
            origin: None,
        }
    }

    /// The pass's first lease, `(type, person)` in `seq` order, through the store: leased by the lone bundle's
    /// owner, as `deliver` leases it.
    async fn first_lease(rows: &[(&str, Option<&str>)]) -> (Store, Vec<OutboxRow>) {
        let store = Store::connect("sqlite::memory:").await.unwrap();
        let items: Vec<crate::store::OutboxItem> = rows
            .iter()
            .enumerate()
            .map(|(i, (resource_type, person))| queued(resource_type, &format!("r{i}"), *person))
            .collect();
        store.enqueue(&items, Utc::now()).await.unwrap();
        let leased = store.lease("cito", "me", 50, std::time::Duration::from_secs(60), Utc::now()).await.unwrap();
        (store, leased)
    }

    fn kinds(rows: &[OutboxRow]) -> Vec<&str> {
        rows.iter().map(|r| r.item.key.resource_type.as_str()).collect()
    }

    /// Only the rows without a person at the head of the first lease go alone; the rest, still leased, wait
    /// for the workers, and a person's later row is not leased by anyone else meanwhile.
    #[tokio::test]
    async fn the_first_bundle_is_the_leading_rows_without_a_person() {
        let (store, mut rows) =
            first_lease(&[("Organization", None), ("Patient", Some("Person/a")), ("Encounter", Some("Person/a"))])
                .await;
        let rest = lone_part(&mut rows);
        assert_eq!((kinds(&rows), kinds(&rest)), (vec!["Organization"], vec!["Patient", "Encounter"]));
        // The rest stays leased: another worker takes none of it, nor a later row of the same person.
        store.enqueue(&[queued("Encounter", "later", Some("Person/a"))], Utc::now()).await.unwrap();
        let other = store.lease("cito", "me/0", 50, std::time::Duration::from_secs(60), Utc::now()).await.unwrap();
        assert!(other.is_empty(), "{:?}", kinds(&other));
    }

    /// The whole first lease goes alone when a row without a person is not at its head, or comes after a
    /// person's row (it may be what later rows refer to); and when every row is without a person.
    #[tokio::test]
    async fn the_whole_first_lease_goes_alone_otherwise() {
        for case in [
            vec![("Patient", Some("Person/a")), ("Organization", None), ("Encounter", Some("Person/a"))],
            vec![("Organization", None), ("Patient", Some("Person/a")), ("Location", None)],
            vec![("Organization", None), ("Location", None)],
            vec![("Patient", Some("Person/a")), ("Patient", Some("Person/b"))],
        ] {
            let (_store, mut rows) = first_lease(&case).await;
            let all = kinds(&rows).into_iter().map(String::from).collect::<Vec<_>>();
            let rest = lone_part(&mut rows);
            assert!(rest.is_empty(), "{case:?}");
            assert_eq!(kinds(&rows), all, "{case:?}");
        }
    }

    #[tokio::test]
    async fn a_deleted_patients_links_are_forgotten_and_the_persons_records_kept_to_plan_again() {
        let store = linked_person().await;
        assert_eq!(relink(&store, "cito", "hub-p", PERSON).await.unwrap(), 3, "mind-p forgotten, two marked");
        assert!(held(&store, "Patient", "mind-p").await.is_none(), "linked to what is gone");
        let kept = held(&store, "Encounter", "mind-e").await.expect("still known to be held there");
        assert_eq!((kept.content_hash.as_str(), kept.remote_id.as_str()), ("", "mind-e"), "planned again");
        // Nothing was linked to it any more: nothing more to do.
        assert_eq!(relink(&store, "cito", "hub-p", PERSON).await.unwrap(), 0);
    }
}
