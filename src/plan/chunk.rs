//! One chunk of mapped resources planned for every destination: **decide** (the sharing rules) and **shape**
//! (labels, tag, profile), **compare** with the ledger (unchanged rows, holdings no longer allowed), then
//! **record** (withheld notes and the outbox; a dry run records nothing and counts what would be queued).

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use serde_json::Value;

use super::subjects::Subjects;
use super::{Explained, IngestReport, Mapped, Planner, content_hash, memo, shape};
use crate::deliver::Destination;
use crate::model::AuditAction;
use crate::policy::{self, Origin, Verdict};
use crate::store::{AuditEntry, Expected, LedgerEntry, Memo, Op, OutboxItem, ResourceKey, StatementRecord};

/// What the rules and the destination's profile decided for one destination, by index in the chunk.
struct Decided {
    /// The rows to queue, in the chunk's order.
    items: Vec<OutboxItem>,
    /// Sent resources the plan memo knows unchanged: queueing them would change nothing (index, content hash).
    unchanged: Vec<(usize, String)>,
    /// When explaining: why each sent resource may go.
    sends: Vec<(usize, String)>,
    /// Why each withheld resource may not go.
    withheld: Vec<(usize, String)>,
}

/// How a pass uses the plan memo: to skip shaping what it knows unchanged, and to record what it shaped.
#[derive(Debug, Clone, Copy)]
struct MemoUse {
    read: bool,
    write: bool,
}

/// What the destination holds of the chunk's resources, as the ledger says.
type Held = HashMap<ResourceKey, LedgerEntry>;

impl Planner<'_> {
    /// Plans `pending` for every destination, then empties it.
    pub(super) async fn chunk(
        &self,
        pending: &mut Vec<Mapped>,
        overlay: &HashMap<String, StatementRecord>,
        retractions: &mut Vec<OutboxItem>,
        subjects: &mut Subjects,
        report: &mut IngestReport,
    ) -> anyhow::Result<()> {
        if pending.is_empty() {
            return Ok(());
        }
        let consents = self.consents(pending, overlay).await?;
        let partner = report.partner.clone();
        let now = Utc::now();
        for dest in &self.ctx.destinations {
            // The plan memo serves every pass but an explained dry run (which reports what it computes), and
            // is written only by a plan that writes.
            let memo =
                MemoUse { read: !self.explain && (!report.dry_run || report.collect_expected), write: !report.dry_run };
            let mut decided = self.decide(dest, pending, &consents, &partner, memo).await?;
            self.attach_subjects(dest, &mut decided.items, subjects).await?;
            *report.withheld.entry(dest.name.clone()).or_default() += decided.withheld.len() as u64;
            if report.collect_expected {
                // Reconcile's pass: the expected set is all it asks for (it compares with the ledger itself).
                self.expect(dest, pending, &decided, &partner).await?;
                continue;
            }
            let held = self.held(dest, pending, &decided, report.dry_run).await?;
            if self.explain {
                explain(dest, pending, &decided, &held, report);
            }
            no_longer_allowed(dest, pending, &decided, &held, retractions, report);
            let queued = if report.dry_run {
                decided
                    .items
                    .iter()
                    .filter(|i| held.get(&i.key).map(|e| &e.content_hash) != Some(&i.content_hash))
                    .count()
            } else {
                self.record(dest, pending, &decided, &partner, now).await?
            };
            *report.queued.entry(dest.name.clone()).or_default() += queued as u64;
        }
        pending.clear();
        Ok(())
    }

    /// The consent in force for each person in the chunk: the store's, or this run's new statement where
    /// it prevails.
    async fn consents(
        &self,
        pending: &[Mapped],
        overlay: &HashMap<String, StatementRecord>,
    ) -> anyhow::Result<HashMap<String, StatementRecord>> {
        let mut persons: Vec<String> = pending.iter().filter_map(|m| m.patient.clone()).collect();
        persons.sort();
        persons.dedup();
        let mut consents = self.ctx.store.consent_current(&persons).await?;
        let today = crate::store::consent_today();
        for (person, s) in overlay {
            if crate::store::prevails(consents.get(person), s, today) {
                consents.insert(person.clone(), s.clone());
            }
        }
        Ok(consents)
    }

    /// Decides each resource for `dest` and shapes those it may send. With `memo.read`, a resource whose shaping
    /// inputs are those the plan memo recorded, and whose recorded content the destination holds with nothing
    /// else queued, is not shaped again (it goes in `unchanged`); an explanation shapes everything, so what it
    /// reports is computed as it always was. With `memo.write`, what was shaped is recorded in the memo.
    async fn decide(
        &self,
        dest: &Destination,
        pending: &[Mapped],
        consents: &HashMap<String, StatementRecord>,
        partner: &str,
        memo: MemoUse,
    ) -> anyhow::Result<Decided> {
        let mut d = Decided {
            items: Vec::with_capacity(pending.len()),
            unchanged: Vec::new(),
            sends: Vec::new(),
            withheld: Vec::new(),
        };
        let mut permitted = Vec::with_capacity(pending.len());
        for (n, m) in pending.iter().enumerate() {
            let origin = Origin {
                partner: partner.to_string(),
                category: m.category,
                not_for_patient: m.not_for_patient,
                is_patient: m.key.resource_type == "Patient",
            };
            let consent = m.patient.as_ref().and_then(|p| consents.get(p));
            let verdict = self.ctx.policy.decide_resource(
                &dest.name,
                dest.profile,
                &origin,
                &m.key.resource_type,
                m.patient.as_deref(),
                consent,
            );
            let permit = match verdict {
                Verdict::Send(p) => p,
                Verdict::Withhold(reason) => {
                    d.withheld.push((n, reason));
                    continue;
                }
            };
            if self.explain {
                let consent = permit.consent.as_deref().unwrap_or("no consent needed");
                let why = format!("agreement \"{}\" ({}); consent {consent}", permit.agreement, permit.lawful_basis);
                d.sends.push((n, why));
            }
            permitted.push((n, origin));
        }
        let fingerprints: Vec<String> = permitted
            .iter()
            .map(|(n, _)| {
                let m = &pending[*n];
                memo::fingerprint(&m.json_hash, dest.profile, m.category, m.not_for_patient, partner)
            })
            .collect();
        let known = if memo.read {
            self.known_unchanged(dest, pending, &permitted, &fingerprints).await?
        } else {
            vec![None; permitted.len()]
        };
        let mut memos = Vec::new();
        for (((n, origin), fingerprint), known) in permitted.into_iter().zip(fingerprints).zip(known) {
            if let Some(hash) = known {
                d.unchanged.push((n, hash));
                continue;
            }
            let m = &pending[n];
            let shaped = serde_json::from_str::<Value>(&m.json)
                .map_err(|e| format!("the mapped resource could not be read back ({e}); report this as a bug"))
                .and_then(|body| shape::shape(dest.profile, &body, m.category, m.not_for_patient, partner));
            match shaped {
                Ok(body) => {
                    let text = body.to_string();
                    let hash = content_hash(&text);
                    memos.push((&m.key, Memo { input_hash: fingerprint, content_hash: hash.clone() }));
                    d.items.push(OutboxItem {
                        destination: dest.name.clone(),
                        key: m.key.clone(),
                        patient: m.patient.clone(),
                        op: Op::Upsert,
                        content_hash: hash,
                        body: Some(text),
                        origin: Some(origin.into()),
                    });
                }
                Err(why) => {
                    d.sends.retain(|(s, _)| *s != n);
                    d.withheld.push((n, format!("{} rules: {why}", dest.name)));
                }
            }
        }
        if memo.write {
            self.ctx.store.memo_put(&dest.name, &memos).await?;
        }
        Ok(d)
    }

    /// For each permitted resource, its content hash when the plan memo knows it (same fingerprint), the
    /// destination holds exactly that, and nothing of it is queued or parked.
    async fn known_unchanged(
        &self,
        dest: &Destination,
        pending: &[Mapped],
        permitted: &[(usize, Origin)],
        fingerprints: &[String],
    ) -> anyhow::Result<Vec<Option<String>>> {
        // A destination that is sent each record's Patient with it gets the Patients shaped every time, so that
        // the records that follow find them (`subjects.rs`).
        let shape_patients = dest.transport.capabilities().subject;
        let probes: Vec<(&ResourceKey, &str)> = permitted
            .iter()
            .zip(fingerprints)
            .map(|((n, _), fp)| (&pending[*n].key, fp.as_str()))
            .filter(|(key, _)| !(shape_patients && key.resource_type == "Patient"))
            .collect();
        let mut unchanged: HashMap<&ResourceKey, String> = probes
            .iter()
            .map(|(k, _)| *k)
            .zip(self.ctx.store.memo_unchanged(&dest.name, &probes).await?)
            .filter_map(|(k, h)| h.map(|h| (k, h)))
            .collect();
        Ok(permitted.iter().map(|(n, _)| unchanged.remove(&pending[*n].key)).collect())
    }

    /// Hands over what `dest` should hold of the chunk (reconcile's expected set).
    async fn expect(&self, dest: &Destination, pending: &[Mapped], d: &Decided, partner: &str) -> anyhow::Result<()> {
        let Some(to) = &self.expected else { anyhow::bail!("planning for reconcile without an expected set") };
        let expected: Vec<Expected> = d
            .items
            .iter()
            .map(|i| (&i.key, &i.content_hash))
            .chain(d.unchanged.iter().map(|(n, hash)| (&pending[*n].key, hash)))
            .map(|(key, hash)| Expected { key: key.clone(), content_hash: hash.clone(), partner: partner.to_string() })
            .collect();
        to.send((dest.name.clone(), expected)).await.map_err(|_| anyhow::anyhow!("reconcile stopped"))?;
        Ok(())
    }

    /// The ledger entries the comparison needs: the withheld resources (is one held there?), and when
    /// reporting what would change, the sent ones too.
    async fn held(&self, dest: &Destination, pending: &[Mapped], d: &Decided, dry_run: bool) -> anyhow::Result<Held> {
        let mut keys: Vec<ResourceKey> = d.withheld.iter().map(|(n, _)| pending[*n].key.clone()).collect();
        if dry_run || self.explain {
            keys.extend(d.items.iter().map(|i| i.key.clone()));
        }
        Ok(self.ctx.store.ledger_get_many(&dest.name, &keys).await?.into_iter().map(|e| (e.key.clone(), e)).collect())
    }

    /// Notes each withholding (audited) and queues what differs from the ledger; returns how many were queued.
    async fn record(
        &self,
        dest: &Destination,
        pending: &[Mapped],
        d: &Decided,
        partner: &str,
        now: DateTime<Utc>,
    ) -> anyhow::Result<usize> {
        let notes: Vec<(ResourceKey, String, AuditEntry)> = d
            .withheld
            .iter()
            .map(|(n, reason)| {
                let m = &pending[*n];
                let audit = AuditEntry {
                    at: now,
                    action: AuditAction::Withheld,
                    destination: Some(dest.name.clone()),
                    person: m.patient.clone(),
                    resource_type: Some(m.key.resource_type.clone()),
                    resource_id: Some(m.key.id.clone()),
                    partner: Some(partner.to_string()),
                    category: Some(m.category.as_str().to_string()),
                    reason: Some(reason.clone()),
                    ..AuditEntry::default()
                };
                (m.key.clone(), reason.clone(), audit)
            })
            .collect();
        self.ctx.store.withheld_note_many(&dest.name, &notes).await?;
        Ok(self.ctx.store.enqueue(&d.items, now).await?)
    }
}

/// Adds every decision for `dest` to the report (`sync --dry-run --explain`).
fn explain(dest: &Destination, pending: &[Mapped], d: &Decided, held: &Held, report: &mut IngestReport) {
    let partner = report.partner.clone();
    let entry = |m: &Mapped, decision, unchanged, why: String| Explained {
        destination: dest.name.clone(),
        resource_type: m.key.resource_type.clone(),
        id: m.key.id.clone(),
        partner: partner.clone(),
        category: m.category,
        decision,
        unchanged,
        why,
    };
    for (n, why) in &d.sends {
        let m = &pending[*n];
        let hash = d.items.iter().find(|i| i.key == m.key).map(|i| i.content_hash.clone());
        let unchanged = held.get(&m.key).map(|e| Some(e.content_hash.clone())) == Some(hash);
        report.explained.push(entry(m, "send", unchanged, why.clone()));
    }
    for (n, why) in &d.withheld {
        let m = &pending[*n];
        report.explained.push(entry(m, "withhold", !held.contains_key(&m.key), why.clone()));
    }
}

/// What `dest` holds but may no longer: deleted there with `retract`, else counted for the report. A hold for
/// unreadable consent is not a decision against the person's data: what is there stays until it is read.
fn no_longer_allowed(
    dest: &Destination,
    pending: &[Mapped],
    d: &Decided,
    held: &Held,
    retractions: &mut Vec<OutboxItem>,
    report: &mut IngestReport,
) {
    for (n, why) in &d.withheld {
        if policy::is_unreadable_hold(why) {
            continue;
        }
        let m = &pending[*n];
        if let Some(e) = held.get(&m.key).filter(|e| !e.linked) {
            *report.no_longer_allowed.entry(dest.name.clone()).or_default() += 1;
            if dest.retract {
                retractions.push(OutboxItem {
                    destination: dest.name.clone(),
                    key: e.key.clone(),
                    patient: m.patient.clone(),
                    op: Op::Delete,
                    content_hash: String::new(),
                    body: None,
                    origin: None,
                });
            }
        }
    }
}
