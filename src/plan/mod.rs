//! Planning: what each destination should hold of a partner's mapped records, and the outbox rows that get it
//! there. One partner's ingest ([`Planner::ingest`]) runs in this order:
//!
//! 1. `consent.rs`: who each Patient is and what they consented to (a withdrawal cancels pending sends and
//!    reports what each destination holds; an unreadable consent record holds the person).
//! 2. The mapper streams resources (on a blocking thread); each is given its person's ordering group.
//! 3. `chunk.rs`, per chunk of resources and per destination: **decide** (the sharing rules), **shape** (labels,
//!    the source-partner tag, the destination's profile: `shape.rs`), **compare** with the ledger (what is
//!    unchanged, what the destination holds but may no longer), and **record** (withheld notes, the outbox).
//! 4. Quarantined rows are kept in the store; retractions are queued last.
//!
//! `report.rs` holds what an ingest reports. The cycle and its job bookkeeping stay in `sync`.

mod chunk;
mod consent;
mod report;
pub mod shape;

use std::collections::HashSet;
use std::sync::Mutex;

use anyhow::Context as _;
use chrono::Utc;
use serde_json::Value;
use tokio::sync::mpsc;
use tracing::info;

use crate::context::Context;
use crate::mapping::{self, Category, MappedResource, Quarantined, Sink};
use crate::model::fhir::NHS_NUMBER_SYSTEM;
use crate::store::{OutboxItem, QuarantineRecord, ResourceKey};

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

/// A mapped resource on its way to planning.
struct Mapped {
    key: ResourceKey,
    /// The input file and source row it came from (none: the partner's Organization).
    from: Option<(std::path::PathBuf, String)>,
    patient: Option<String>,
    category: Category,
    not_for_patient: bool,
    body: Value,
}

enum Msg {
    Resource(Mapped),
    Quarantined(Box<Quarantined>),
}

struct ChannelSink(mpsc::Sender<Msg>);

impl Sink for ChannelSink {
    fn resource(&mut self, r: &MappedResource<'_>) -> std::io::Result<()> {
        let key = ResourceKey { resource_type: r.resource_type.to_string(), id: r.id.to_string() };
        let body = r.resource();
        let patient = patient_of(r.resource_type, r.id, &body);
        let from = r.kind.map(|_| (r.file.to_path_buf(), r.source_key.to_string()));
        let m = Mapped { key, from, patient, category: r.category, not_for_patient: r.not_for_patient, body };
        self.0.blocking_send(Msg::Resource(m)).map_err(|_| std::io::Error::other("planner stopped"))
    }
    fn quarantined(&mut self, q: &Quarantined) -> std::io::Result<()> {
        self.0
            .blocking_send(Msg::Quarantined(Box::new(q.clone())))
            .map_err(|_| std::io::Error::other("planner stopped"))
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
        let mut report =
            IngestReport { partner: partner_id.to_string(), dry_run, collect_expected: expect, ..Default::default() };
        // First who is who and what they consented to, so the plan below decides on today's consent.
        let overlay = self.read_consent(partner_id, &inputs, &mut report).await?;
        let catalog = self.ctx.catalog.clone();
        let id = partner_id.to_string();
        let max_bytes = self.ctx.config.limits.max_input_bytes;
        let (tx, mut rx) = mpsc::channel::<Msg>(1024);
        let mapper = tokio::task::spawn_blocking(move || {
            let partner = &catalog.partners[&id];
            let mut sink = ChannelSink(tx);
            mapping::run_with_limit(partner, &inputs, &mut sink, Some(max_bytes))
        });

        let mut pending: Vec<Mapped> = Vec::with_capacity(PLAN_CHUNK);
        let mut retractions: Vec<OutboxItem> = Vec::new();
        // Patient reference -> person group, for the resources that follow their Patient in this run.
        let mut groups: std::collections::HashMap<String, String> = std::collections::HashMap::new();
        let mut stop = self.stop.clone();
        loop {
            let msg = match &mut stop {
                Some(s) => tokio::select! {
                    msg = rx.recv() => msg,
                    () = crate::context::stopped(s) => anyhow::bail!("stopped while planning {partner_id}; the rest is read next time"),
                },
                None => rx.recv().await,
            };
            let Some(msg) = msg else { break };
            match msg {
                Msg::Resource(mut m) => {
                    if let Some((file, key)) = m.from.take() {
                        let members = report.members.entry(file).or_default();
                        members.records.entry(key).or_default().insert(m.key.to_string());
                    }
                    if let Some(p) = m.patient.take() {
                        let group = if m.key.resource_type == "Patient" {
                            let g = person_group(&p, &m.body);
                            groups.insert(p, g.clone());
                            g
                        } else {
                            groups.get(&p).cloned().unwrap_or(p)
                        };
                        m.patient = Some(group);
                    }
                    pending.push(m);
                    if pending.len() >= PLAN_CHUNK {
                        self.chunk(&mut pending, &overlay, &mut retractions, &mut report).await?;
                    }
                }
                Msg::Quarantined(q) => {
                    if let Some(key) = &q.key {
                        report.members.entry(q.file.clone()).or_default().quarantined.insert(key.clone());
                    }
                    report.quarantined_rows.push(crate::quarantine::QuarantinedRow::of(&q));
                    if !dry_run {
                        self.keep_quarantined(&q).await?;
                    }
                }
            }
        }
        self.chunk(&mut pending, &overlay, &mut retractions, &mut report).await?;
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

/// The ordering group of a Patient: the person. With an NHS number, every partner's Patient for that person
/// shares one group, so their writes (and the look-up before creating) go one after another and two
/// partners can never both create the same person. The NHS number itself is not kept: the group is a UUID v5.
pub fn person_group(patient_ref: &str, patient: &Value) -> String {
    let nhs = patient["identifier"]
        .as_array()
        .and_then(|ids| ids.iter().find(|i| i["system"] == NHS_NUMBER_SYSTEM).and_then(|i| i["value"].as_str()));
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
