//! Consent reading: who each Patient is and what each person consented to, before anything is planned.

use std::collections::{BTreeMap, HashMap};

use anyhow::Context as _;
use chrono::Utc;
use tracing::warn;

use super::{IngestReport, Planner, WithdrawalReport, person_group_of};
use crate::mapping::{self, ConsentFacts, Input, MappedResource, Quarantined, RecordKind, RunReport, Sink};
use crate::model::AuditAction;
use crate::policy;
use crate::store::{AuditEntry, Op, OutboxItem, StatementRecord};

/// Collects, from a partner's person and consent records, who each Patient is and the consent statements.
#[derive(Default)]
struct ConsentSink {
    /// (patient, person, partner)
    links: Vec<(String, String, String)>,
    groups: std::collections::HashMap<String, String>,
    /// (facts, record key, Consent resource id)
    statements: Vec<(ConsentFacts, String, String)>,
    /// Consent rows that could not be mapped: (file name, row, record key, the Patient they name).
    unreadable: Vec<(String, u64, Option<String>, Option<String>)>,
}

impl Sink for ConsentSink {
    fn resource(&mut self, r: &MappedResource<'_>) -> std::io::Result<()> {
        if r.resource_type == "Patient" {
            let (patient, nhs) = super::memo::heads(r.resource_type, r.id, r.json);
            let patient = patient.unwrap_or_else(|| format!("Patient/{}", r.id));
            let group = person_group_of(&patient, nhs.as_deref());
            self.groups.insert(patient.clone(), group.clone());
            self.links.push((patient, group, r.partner.to_string()));
        }
        if let Some(f) = r.consent {
            self.statements.push((f.clone(), r.source_key.to_string(), format!("{}/{}", r.resource_type, r.id)));
        }
        Ok(())
    }
    fn quarantined(&mut self, q: &Quarantined) -> std::io::Result<()> {
        if q.kind == RecordKind::Consent {
            let file = q.file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            self.unreadable.push((file, q.row, q.key.clone(), q.person.clone()));
        }
        Ok(())
    }
}

impl Planner<'_> {
    /// Reads the partner's person and consent records: records who each Patient is and every new consent
    /// statement. A new statement that withdraws (or declines) consent cancels the person's pending sends,
    /// reports what each destination holds of them, and queues its deletion where `retract = true`.
    /// Returns, for a dry run, the statements that would be recorded (nothing is written then).
    pub async fn read_consent(
        &self,
        partner_id: &str,
        inputs: &[Input],
        report: &mut IngestReport,
    ) -> anyhow::Result<HashMap<String, StatementRecord>> {
        let mut overlay = HashMap::new();
        let inputs: Vec<Input> = inputs
            .iter()
            .filter(|i| matches!(i.kind, RecordKind::Person | RecordKind::Consent))
            .map(|i| Input { kind: i.kind, path: i.path.clone() })
            .collect();
        self.consent_read.lock().unwrap_or_else(|p| p.into_inner()).insert(partner_id.to_string());
        let has_consent = inputs.iter().any(|i| i.kind == RecordKind::Consent);
        if inputs.is_empty() {
            self.note_unreadable_export(partner_id, None, has_consent, report).await?;
            return Ok(overlay);
        }
        let (sink, run) = self.map_consent(partner_id, inputs).await?;
        let now = Utc::now();
        self.note_unreadable_export(partner_id, Some(&run), has_consent, report).await?;
        if !report.dry_run {
            self.ctx.store.persons_put(&sink.links, now).await?;
        }
        self.hold_unreadable(partner_id, &sink, &mut overlay, report, now).await?;
        let changed = self.record_statements(partner_id, &sink, &mut overlay, report, now).await?;
        self.stop_refused(changed, report, now).await?;
        Ok(overlay)
    }

    /// Maps the partner's person and consent inputs (on a blocking thread) into who is who and what they said.
    async fn map_consent(&self, partner_id: &str, inputs: Vec<Input>) -> anyhow::Result<(ConsentSink, RunReport)> {
        let catalog = self.ctx.catalog.clone();
        let id = partner_id.to_string();
        let max_bytes = self.ctx.config.limits.max_input_bytes;
        tokio::task::spawn_blocking(move || -> std::io::Result<(ConsentSink, RunReport)> {
            let mut sink = ConsentSink::default();
            let run = mapping::run_with_limit(&catalog.partners[&id], &inputs, &mut sink, Some(max_bytes))?;
            Ok((sink, run))
        })
        .await
        .context("the consent reader stopped")?
        .context("reading consent")
    }

    /// A consent export that cannot be read at all: what the partner holds now is unknown, so the statements
    /// recorded in earlier cycles are not relied on, and the partner's data about people is held until one is
    /// read. Without a consent export in this read (an inbox that brought none), the hold a source recorded
    /// earlier stands (`source_consent_hold`).
    async fn note_unreadable_export(
        &self,
        partner_id: &str,
        run: Option<&RunReport>,
        has_consent: bool,
        report: &mut IngestReport,
    ) -> anyhow::Result<()> {
        let failed: Vec<String> = run
            .into_iter()
            .flat_map(RunReport::failed_files)
            .filter(|f| f.kind == Some(RecordKind::Consent))
            .map(|f| crate::ingest::file_name(&f.path))
            .collect();
        let unreadable = if !failed.is_empty() {
            Some(format!("{} not mapped", failed.join(", ")))
        } else if has_consent {
            None
        } else {
            self.ctx.store.partner_consent_hold(partner_id).await?
        };
        if let Some(why) = &unreadable {
            tracing::error!(partner = %partner_id, files = %failed.join(","), "Consent export unreadable: every send about a person from this partner is held until it is read.");
            report.consent_unreadable = Some(why.clone());
        }
        self.ctx.policy.set_consent_unreadable(partner_id, unreadable);
        Ok(())
    }

    /// Records each statement that is new (a dry run only counts it, in the overlay); returns the people whose
    /// statements were recorded, with the new statement's id.
    async fn record_statements(
        &self,
        partner_id: &str,
        sink: &ConsentSink,
        overlay: &mut HashMap<String, StatementRecord>,
        report: &mut IngestReport,
        now: chrono::DateTime<Utc>,
    ) -> anyhow::Result<Vec<(String, i64)>> {
        let today = crate::store::consent_today();
        let today_text = today.format("%Y-%m-%d").to_string();
        let mut changed: Vec<(String, i64)> = Vec::new();
        for (facts, record_key, resource_id) in &sink.statements {
            // No date in the record: the answer is dated the day it is first read. Its hash leaves the date
            // out, so the same answer read again is the same statement and keeps that date; a changed answer
            // is a new statement, dated the day it is seen.
            let first_seen = facts.dated == crate::model::DateSource::FirstSeen;
            let person = sink.groups.get(&facts.patient).cloned().unwrap_or_else(|| facts.patient.clone());
            let mut record = StatementRecord {
                id: 0,
                person: person.clone(),
                patient: facts.patient.clone(),
                partner: partner_id.to_string(),
                record_key: record_key.clone(),
                resource_id: resource_id.clone(),
                decision: facts.decision.into(),
                effective: if first_seen { today_text.clone() } else { facts.effective.clone() },
                given_on: if first_seen { today_text.clone() } else { facts.given.clone() },
                withdrawn_on: facts.withdrawn.clone(),
                share_cito: facts.cito,
                share_pkb: facts.pkb,
                share_partners: serde_json::to_string(&facts.partners)?,
                restrictions: serde_json::to_string(
                    &facts.restrictions.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
                )?,
                statement_hash: crate::store::sha256_hex(&serde_json::to_string(&(&person, facts))?),
                recorded_at: now,
                first_seen,
            };
            if report.dry_run {
                // Would it be new? Then it counts as the latest of its day.
                let known = self.ctx.store.consent_history(&person).await?;
                let last = known
                    .iter()
                    .filter(|k| k.partner == record.partner && k.record_key == record.record_key)
                    .max_by_key(|k| k.id);
                if last.is_none_or(|k| k.statement_hash != record.statement_hash) {
                    record.id = i64::MAX;
                    if crate::store::prevails(overlay.get(&person), &record, today) {
                        overlay.insert(person.clone(), record);
                    }
                    report.consent_statements += 1;
                }
                continue;
            }
            if let Some(new_id) = self.ctx.store.consent_record(&record).await? {
                report.consent_statements += 1;
                record.id = new_id;
                self.ctx
                    .store
                    .audit_append(&AuditEntry {
                        at: now,
                        action: AuditAction::Consent,
                        person: Some(person.clone()),
                        resource_type: Some("Consent".into()),
                        resource_id: resource_id.strip_prefix("Consent/").map(String::from),
                        partner: Some(partner_id.to_string()),
                        consent: Some(policy::cite(&record)),
                        reason: Some("consent statement recorded".into()),
                        ..AuditEntry::default()
                    })
                    .await?;
                changed.push((person, new_id));
            }
        }
        Ok(changed)
    }

    /// Withdrawals and refusals now in force: each cancels the person's pending sends, reports what each
    /// destination holds of them and queues its deletion where `retract = true`.
    async fn stop_refused(
        &self,
        changed: Vec<(String, i64)>,
        report: &mut IngestReport,
        now: chrono::DateTime<Utc>,
    ) -> anyhow::Result<()> {
        let persons: Vec<String> = changed.iter().map(|(p, _)| p.clone()).collect();
        let current = self.ctx.store.consent_current(&persons).await?;
        for (person, new_id) in changed {
            let Some(s) = current.get(&person).filter(|s| s.id == new_id) else { continue };
            if !s.decision.refuses() {
                continue;
            }
            let cite = policy::cite(s);
            let cancelled =
                self.ctx.store.outbox_cancel_person(&person, &format!("consent {} ({cite})", s.decision), now).await?;
            let mut holdings: BTreeMap<String, Vec<String>> = BTreeMap::new();
            let mut retract = Vec::new();
            for e in self.ctx.store.ledger_for_person(&person).await? {
                holdings.entry(e.destination.clone()).or_default().push(e.key.to_string());
                let dest = self.ctx.destination(&e.destination);
                if !e.linked && dest.is_some_and(|d| d.retract) {
                    retract.push(OutboxItem {
                        destination: e.destination.clone(),
                        key: e.key.clone(),
                        patient: Some(person.clone()),
                        op: Op::Delete,
                        content_hash: String::new(),
                        body: None,
                        origin: None,
                    });
                }
            }
            // Destinations that cannot delete (HL7 v2 engines): what was sent there stays until their owners remove it.
            let cannot_delete: Vec<String> = holdings
                .keys()
                .filter(|d| self.ctx.destination(d).is_some_and(|d| !d.transport.capabilities().delete))
                .cloned()
                .collect();
            let retracting: Vec<String> = {
                let mut d: Vec<String> = retract.iter().map(|i| i.destination.clone()).collect();
                d.dedup();
                d
            };
            warn!(person = %person, statement = %cite, cancelled, held = holdings.values().map(Vec::len).sum::<usize>(), retracting = ?retracting, "Consent withdrawn or declined: sends stopped.");
            self.retract(retract).await?;
            report.withdrawals.push(WithdrawalReport {
                person,
                statement: cite,
                cancelled,
                holdings,
                retracting,
                cannot_delete,
            });
        }
        Ok(())
    }

    /// Puts a hold on each person named by a consent row that could not be mapped: a statement "unreadable"
    /// for that consent record (never the row itself), in force until a cycle reads the record cleanly (its new
    /// version replaces the hold). The person is found from the Patient the row names (the person fields read
    /// on their own), else from what the same record said before.
    async fn hold_unreadable(
        &self,
        partner_id: &str,
        sink: &ConsentSink,
        overlay: &mut std::collections::HashMap<String, StatementRecord>,
        report: &mut IngestReport,
        now: chrono::DateTime<Utc>,
    ) -> anyhow::Result<()> {
        let today = crate::store::consent_today();
        // A record with a row read cleanly in this run is readable (its other row is a duplicate, quarantined).
        let clean: std::collections::HashSet<&str> = sink.statements.iter().map(|(_, k, _)| k.as_str()).collect();
        for (file, row, key, patient) in &sink.unreadable {
            if key.as_deref().is_some_and(|k| clean.contains(k)) {
                continue;
            }
            let mut person = match patient {
                Some(p) => match sink.groups.get(p) {
                    Some(g) => Some(g.clone()),
                    None => Some(self.ctx.store.person_of(p).await?.unwrap_or_else(|| p.clone())),
                },
                None => None,
            };
            if person.is_none()
                && let Some(k) = key
            {
                person = self.ctx.store.consent_record_person(partner_id, k).await?;
            }
            let Some(person) = person else {
                warn!(partner = %partner_id, file = %file, row, "Unreadable consent row names no person that can be found; no one could be held for it: correct the row.");
                continue;
            };
            // Without a key the hold cannot be matched to the record once it is fixed: it is keyed by the person.
            let record_key = key.clone().unwrap_or_else(|| format!("(unreadable row naming {person})"));
            let mut record = StatementRecord {
                id: 0,
                person: person.clone(),
                patient: patient.clone().unwrap_or_else(|| person.clone()),
                partner: partner_id.to_string(),
                record_key: record_key.clone(),
                resource_id: String::new(),
                decision: crate::model::Stated::Unreadable,
                effective: today.format("%Y-%m-%d").to_string(),
                given_on: String::new(),
                withdrawn_on: None,
                share_cito: false,
                share_pkb: false,
                share_partners: "[]".into(),
                restrictions: "[]".into(),
                // The same unreadable record is one hold, however many cycles read it.
                statement_hash: crate::store::sha256_hex(&format!(
                    "{}|{person}|{partner_id}|{record_key}",
                    crate::model::Stated::Unreadable.as_str()
                )),
                recorded_at: now,
                first_seen: false,
            };
            warn!(partner = %partner_id, file = %file, row, record = %record_key, person = %person, "Consent record unreadable: the person's sends are held until it is corrected.");
            report.consent_held.push((person.clone(), record_key.clone()));
            if report.dry_run {
                record.id = i64::MAX;
                overlay.insert(person, record);
                continue;
            }
            if let Some(id) = self.ctx.store.consent_record(&record).await? {
                record.id = id;
                self.ctx.store
                    .audit_append(&AuditEntry {
                        at: now,
                        action: AuditAction::Consent,
                        person: Some(person),
                        partner: Some(partner_id.to_string()),
                        consent: Some(policy::cite(&record)),
                        reason: Some(format!(
                            "consent record unreadable ({file} row {row}): the person's sends are held until it is corrected"
                        )),
                        ..AuditEntry::default()
                    })
                    .await?;
            }
        }
        Ok(())
    }
}
