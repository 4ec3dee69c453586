//! Planning: what each destination should hold of a partner's mapped records, and the outbox rows that get it
//! there. One partner's ingest ([`Planner::ingest`]) runs in this order:
//!
//! 1. `consent.rs`: who each Patient is and what they consented to (a withdrawal cancels pending sends and
//!    reports what each destination holds; an unreadable consent record holds the person).
//! 2. The mapper streams resources (on a blocking thread); each is given its person's ordering group.
//! 3. `chunk.rs`, per chunk of resources and per destination: **decide** (the sharing rules), **shape** (labels,
//!    the source-partner tag, the destination's profile: `shape.rs`), **compare** with the ledger (what is
//!    unchanged, what the destination holds but may no longer), and **record** (withheld notes, the outbox).
//!    For a destination whose messages name the person in full (HL7 v2), `subjects.rs` attaches each record's
//!    subject Patient between decide and compare.
//! 4. Quarantined rows are kept in the store; retractions are queued last.
//!
//! `report.rs` holds what an ingest reports. The cycle and its job bookkeeping stay in `sync`.

mod chunk;
mod consent;
mod memo;
mod report;
pub mod shape;
mod subjects;

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use anyhow::Context as _;
use chrono::Utc;
use serde_json::Value;
use tokio::sync::mpsc;
use tracing::info;

use crate::context::Context;
use crate::mapping::{self, Category, MappedResource, Quarantined, Sink};
use crate::model::fhir::NHS_NUMBER_SYSTEM;
use crate::store::{OutboxItem, QuarantineRecord, ResourceKey, StatementRecord};

pub use report::{Explained, IngestReport, WithdrawalReport};

/// Resources planned per call to the store.
const PLAN_CHUNK: usize = 500;

/// Plans over a context.
pub struct Planner<'a> {
    pub ctx: &'a Context,
    /// Record every send/withhold decision in the report (`sync --dry-run --explain`).
    pub explain: bool,
    /// Partners whose consent this process has read (see `sync::Engine`); planning adds the partner.
    pub consent_read: &'a Mutex<HashSet<String>>,
    /// Set to stop: planning ends between resources (what was planned stays planned; the source is read
    /// again next time, and unchanged rows write nothing).
    pub stop: Option<tokio::sync::watch::Receiver<bool>>,
    /// Reconcile's pass (`ingest` with `expect`): where each chunk's expected set goes, with its destination.
    pub expected: Option<mpsc::Sender<(String, Vec<crate::store::Expected>)>>,
}

/// What [`Planner::read_consent`] returned (the statements of this read that prevail) and reported.
pub type ConsentRead = (HashMap<String, StatementRecord>, IngestReport);

/// A mapped resource on its way to planning.
struct Mapped {
    key: ResourceKey,
    /// The input file and source row it came from (none: the partner's Organization).
    from: Option<(std::path::PathBuf, String)>,
    patient: Option<String>,
    category: Category,
    not_for_patient: bool,
    /// The resource as the mapper wrote it (compact, keys sorted); parsed only when it must be shaped.
    json: String,
    /// sha256 of `json`, for the plan memo's fingerprints.
    json_hash: [u8; 32],
    /// A Patient's NHS number (its person group), read with `patient`.
    nhs: Option<String>,
}

enum Msg {
    Resource(Mapped),
    Quarantined(Box<Quarantined>),
}

/// Hands the mapper's output to the planner in batches of [`SINK_BATCH`]: one message per resource woke the
/// planner's task for each (a tenth of an unchanged cycle's CPU went to waking threads).
struct ChannelSink {
    tx: mpsc::Sender<Vec<Msg>>,
    buf: Vec<Msg>,
}

/// Messages per hand-over from the mapper's thread to the planner.
const SINK_BATCH: usize = 64;

impl ChannelSink {
    fn push(&mut self, msg: Msg) -> std::io::Result<()> {
        self.buf.push(msg);
        if self.buf.len() >= SINK_BATCH { self.flush() } else { Ok(()) }
    }

    /// Hands over what is buffered (after the last row, and before a failed run's error is returned).
    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let batch = std::mem::replace(&mut self.buf, Vec::with_capacity(SINK_BATCH));
        self.tx.blocking_send(batch).map_err(|_| std::io::Error::other("planner stopped"))
    }
}

impl Sink for ChannelSink {
    fn resource(&mut self, r: &MappedResource<'_>) -> std::io::Result<()> {
        let key = ResourceKey { resource_type: r.resource_type.to_string(), id: r.id.to_string() };
        // The hash and the few fields planning reads are taken here, on the mapper's thread, from the JSON the
        // mapper wrote: no value tree is built for a resource that turns out unchanged.
        let (patient, nhs) = memo::heads(r.resource_type, r.id, r.json);
        let from = r.kind.map(|_| (r.file.to_path_buf(), r.source_key.to_string()));
        let m = Mapped {
            key,
            from,
            patient,
            category: r.category,
            not_for_patient: r.not_for_patient,
            json: r.json.to_string(),
            json_hash: memo::json_hash(r.json),
            nhs,
        };
        self.push(Msg::Resource(m))
    }
    fn quarantined(&mut self, q: &Quarantined) -> std::io::Result<()> {
        self.push(Msg::Quarantined(Box::new(q.clone())))
    }
}

/// The hash planning compares with the ledger: of exactly the text that is sent.
pub fn content_hash(body: &str) -> String {
    crate::store::sha256_hex(body)
}

impl Planner<'_> {
    /// Maps one partner's sources and plans every destination's outbox. With `dry_run`, compares with the
    /// ledger and reports what would be queued, writing nothing; with `expect`, records in the `expected`
    /// table what each destination should hold (reconcile's first step).
    pub async fn ingest(
        &self,
        partner_id: &str,
        inputs: Vec<mapping::Input>,
        dry_run: bool,
        expect: bool,
    ) -> anyhow::Result<IngestReport> {
        self.ingest_read(partner_id, inputs, dry_run, expect, None).await
    }

    /// [`Planner::ingest`], given what [`Planner::read_consent`] returned and reported for exactly these inputs
    /// earlier in the same cycle (`consent`), so the person and consent records are not mapped a second time.
    pub async fn ingest_read(
        &self,
        partner_id: &str,
        inputs: Vec<mapping::Input>,
        dry_run: bool,
        expect: bool,
        consent: Option<ConsentRead>,
    ) -> anyhow::Result<IngestReport> {
        let mut report =
            IngestReport { partner: partner_id.to_string(), dry_run, collect_expected: expect, ..Default::default() };
        // First who is who and what they consented to, so the plan below decides on today's consent.
        let overlay = match consent {
            Some((overlay, read)) => {
                report.absorb_consent(read);
                overlay
            }
            None => self.read_consent(partner_id, &inputs, &mut report).await?,
        };
        let catalog = self.ctx.catalog.clone();
        let id = partner_id.to_string();
        let max_bytes = self.ctx.config.limits.max_input_bytes;
        let (tx, mut rx) = mpsc::channel::<Vec<Msg>>(1024 / SINK_BATCH);
        let mapper = tokio::task::spawn_blocking(move || {
            let partner = &catalog.partners[&id];
            let mut sink = ChannelSink { tx, buf: Vec::with_capacity(SINK_BATCH) };
            let run = mapping::run_with_limit(partner, &inputs, &mut sink, Some(max_bytes));
            let flushed = sink.flush();
            run.and_then(|r| flushed.map(|()| r))
        });

        let mut pending: Vec<Mapped> = Vec::with_capacity(PLAN_CHUNK);
        let mut retractions: Vec<OutboxItem> = Vec::new();
        let mut groups = Groups::default();
        // This run's Patients, for the destinations whose messages carry the person (`subjects.rs`).
        let mut subjects = subjects::Subjects::default();
        let mut stop = self.stop.clone();
        loop {
            let batch = match &mut stop {
                Some(s) => tokio::select! {
                    batch = rx.recv() => batch,
                    () = crate::context::stopped(s) => anyhow::bail!("stopped while planning {partner_id}; the rest is read next time"),
                },
                None => rx.recv().await,
            };
            let Some(batch) = batch else { break };
            for msg in batch {
                match msg {
                    Msg::Resource(mut m) => {
                        if let Some((file, key)) = m.from.take() {
                            report.members.entry(file).or_default().add(&key, &m.key.to_string());
                        }
                        if let Some(p) = m.patient.take() {
                            let group = if m.key.resource_type == "Patient" {
                                groups.of_patient(p, m.nhs.as_deref())
                            } else {
                                groups.of(p)
                            };
                            m.patient = Some(group);
                        }
                        pending.push(m);
                        if pending.len() >= PLAN_CHUNK {
                            self.chunk(&mut pending, &overlay, &mut retractions, &mut subjects, &mut report).await?;
                        }
                    }
                    Msg::Quarantined(q) => {
                        if let Some(key) = &q.key {
                            report.members.entry(q.file.clone()).or_default().add_quarantined(key);
                        }
                        report.quarantined_rows.push(crate::quarantine::QuarantinedRow::of(&q));
                        if !dry_run {
                            self.keep_quarantined(&q).await?;
                        }
                    }
                }
            }
        }
        self.chunk(&mut pending, &overlay, &mut retractions, &mut subjects, &mut report).await?;
        if !dry_run {
            self.retract(retractions).await?;
        }
        report.mapping = mapper.await.context("the mapper stopped")?.context("mapping")?;
        for f in report.mapping.failed_files() {
            tracing::error!(partner = %partner_id, file = %f.path.display(), error = f.error.as_deref().unwrap_or_default(), "Export not mapped.");
        }
        info!(
            partner = %partner_id,
            read = report.mapping.read(),
            mapped = report.mapping.mapped(),
            quarantined = report.mapping.quarantined(),
            "Partner ingested."
        );
        Ok(report)
    }

    async fn keep_quarantined(&self, q: &Quarantined) -> anyhow::Result<()> {
        let record = QuarantineRecord {
            partner: q.partner.clone(),
            kind: q.kind.to_string(),
            file: q.file.display().to_string(),
            row: i64::try_from(q.row).unwrap_or(i64::MAX),
            key: q.key.clone(),
            reasons_json: serde_json::to_string(&q.reasons)?,
            raw_json: q.raw.to_string(),
            created_at: Utc::now(),
        };
        self.ctx.store.quarantine_put(&record).await?;
        Ok(())
    }

    /// Queues deletions, the person's Patient last (nothing is left pointing at a deleted Patient).
    pub(super) async fn retract(&self, mut items: Vec<OutboxItem>) -> anyhow::Result<()> {
        if items.is_empty() {
            return Ok(());
        }
        items.sort_by_key(|i| i.key.resource_type == "Patient");
        self.ctx.store.enqueue(&items, Utc::now()).await?;
        Ok(())
    }
}

/// The person groups of this run's Patients, for the resources that follow their Patient. Only groups that are
/// not the Patient itself (an NHS number's `Person/<uuid>`) are kept, as 16-byte keys and ids: a million
/// Patients take about 50 MB rather than 160.
#[derive(Default)]
struct Groups(std::collections::HashMap<mapping::RefKey, uuid::Uuid>);

impl Groups {
    /// The group of a Patient (`patient` is its reference), remembered for what follows it.
    fn of_patient(&mut self, patient: String, nhs: Option<&str>) -> String {
        let group = person_group_of(&patient, nhs);
        let key = mapping::RefKey::of(&patient);
        match group.strip_prefix("Person/").and_then(|id| uuid::Uuid::try_parse(id).ok()) {
            Some(id) if format!("Person/{id}") == group => self.0.insert(key, id),
            _ => self.0.remove(&key),
        };
        group
    }

    /// The group of a resource about `patient`: its Patient's, or the Patient itself.
    fn of(&self, patient: String) -> String {
        match self.0.get(&mapping::RefKey::of(&patient)) {
            Some(id) => format!("Person/{id}"),
            None => patient,
        }
    }
}

/// The ordering group of a Patient: the person. With an NHS number, every partner's Patient for that person
/// shares one group, so their writes (and the look-up before creating) go one after another and two
/// partners can never both create the same person. The NHS number itself is not kept: the group is a UUID v5.
pub fn person_group(patient_ref: &str, patient: &Value) -> String {
    person_group_of(patient_ref, nhs_number(patient))
}

/// A Patient's NHS number, when its identifiers carry one.
fn nhs_number(patient: &Value) -> Option<&str> {
    patient["identifier"]
        .as_array()
        .and_then(|ids| ids.iter().find(|i| i["system"] == NHS_NUMBER_SYSTEM).and_then(|i| i["value"].as_str()))
}

/// [`person_group`] from the Patient's NHS number, when it has one.
pub fn person_group_of(patient_ref: &str, nhs: Option<&str>) -> String {
    match nhs {
        Some(n) => format!("Person/{}", crate::mapping::ids::resource_id("person", "nhs-number", "group", n)),
        None => patient_ref.to_string(),
    }
}

/// The Patient a resource belongs to: itself, or the first Patient it refers to.
pub fn patient_of(resource_type: &str, id: &str, resource: &Value) -> Option<String> {
    if resource_type == "Patient" {
        return Some(format!("Patient/{id}"));
    }
    for field in ["subject", "patient", "beneficiary"] {
        if let Some(r) = resource[field]["reference"].as_str().filter(|r| r.starts_with("Patient/")) {
            return Some(r.to_string());
        }
    }
    let mut found = None;
    crate::validate::each_reference(resource, &mut |_, r| {
        if found.is_none() && r.starts_with("Patient/") {
            found = Some(r.to_string());
        }
    });
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_take_their_patients_person_group() {
        let mut groups = Groups::default();
        let with_nhs = format!("Patient/{}", mapping::ids::resource_id("p1", "person", "patient", "C1"));
        let without = format!("Patient/{}", mapping::ids::resource_id("p1", "person", "patient", "C2"));
        let body = serde_json::json!({ "identifier": [{ "system": NHS_NUMBER_SYSTEM, "value": "9990000018" }] });
        let group = groups.of_patient(with_nhs.clone(), Some("9990000018"));
        assert!(group.starts_with("Person/"), "{group}");
        assert_eq!(group, person_group(&with_nhs, &body));
        assert_eq!(groups.of(with_nhs.clone()), group, "what follows the Patient shares its group");
        assert_eq!(groups.of_patient(without.clone(), None), without);
        assert_eq!(groups.of(without.clone()), without, "no NHS number: the Patient is the group");
        assert_eq!(groups.of("Patient/elsewhere".into()), "Patient/elsewhere", "a Patient not in this run");
    }
}
