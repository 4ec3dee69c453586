//! Sync: the pipeline from partner exports to destinations. A cycle maps each partner's sources (on a blocking
//! thread, streaming), plans each destination's outbox from the mapped content (only what differs from the
//! ledger is queued, so unchanged input writes nothing), then delivers the outboxes.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Context as _;
use chrono::Utc;
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::config::Config;
pub use crate::context::{Context, reclaim_dead_leases};
use crate::deliver::{self, DeliveryReport, profile};
use crate::mapping::{
    self, Category, ConsentFacts, Decision, Input, MappedResource, Quarantined, RecordKind, RunReport, Sink,
};
use crate::model::{AuditAction, JobName};
use crate::ops::metrics::{Metrics, label};
pub use crate::plan::{patient_of, person_group};
use crate::policy::{self, Origin, Verdict};
use crate::store::{AuditEntry, Op, OutboxItem, QuarantineRecord, ResourceKey, StatementRecord};

/// Resources planned per call to the store.
const PLAN_CHUNK: usize = 500;

/// The planner and the cycle over a [`Context`] (which it dereferences to, so `engine.store` reads as before).
pub struct Engine {
    ctx: Arc<Context>,
    /// Print every send/withhold decision while planning (`sync --dry-run --explain`).
    pub explain: bool,
    /// Partners whose consent this process has read: until then a delivery reads it first, so a restart cannot
    /// send rows queued earlier without knowing whether the partner's consent export is still readable.
    consent_read: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl std::ops::Deref for Engine {
    type Target = Context;
    fn deref(&self) -> &Context {
        &self.ctx
    }
}

/// One decision, for `sync --dry-run --explain`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Explained {
    pub destination: String,
    pub resource_type: String,
    pub id: String,
    pub partner: String,
    pub category: Category,
    /// send | withhold
    pub decision: &'static str,
    /// Whether the destination already holds exactly this (nothing would be written).
    pub unchanged: bool,
    /// For a send: the agreement, lawful basis and consent; for a withholding: why.
    pub why: String,
}

/// What a destination held for a person when their consent was withdrawn (or declined).
#[derive(Debug, Clone, serde::Serialize)]
pub struct WithdrawalReport {
    pub person: String,
    pub statement: String,
    /// Pending sends cancelled.
    pub cancelled: usize,
    /// Destination -> the resources it holds for the person (type/id).
    pub holdings: BTreeMap<String, Vec<String>>,
    /// Destinations where those are being deleted (`retract = true`).
    pub retracting: Vec<String>,
}

/// What mapping and planning one partner did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct IngestReport {
    pub partner: String,
    pub mapping: RunReport,
    /// Per destination: resources queued because they are new or changed.
    pub queued: BTreeMap<String, u64>,
    /// Per destination: resources that the sharing rules or the destination's profile do not allow.
    pub withheld: BTreeMap<String, u64>,
    /// Per destination: resources it holds that it may no longer hold (deleted there when `retract = true`).
    pub no_longer_allowed: BTreeMap<String, u64>,
    /// Consent statements newly read.
    pub consent_statements: u64,
    /// People whose consent is now withdrawn or declined, with what each destination holds of them.
    pub withdrawals: Vec<WithdrawalReport>,
    /// People held because one of their consent records could not be read (quarantined): person, record key.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub consent_held: Vec<(String, String)>,
    /// Why the partner's consent export could not be read at all; everything about a person from this partner
    /// is then held.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consent_unreadable: Option<String>,
    /// Every decision, when explaining.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub explained: Vec<Explained>,
    pub dry_run: bool,
    /// The rows quarantined in this run: kind, file name, row, key and content hash (never their content).
    #[serde(skip)]
    pub quarantined_rows: Vec<crate::quarantine::QuarantinedRow>,
    /// Record what each destination should hold in the `expected` table (reconcile's dry run).
    #[serde(skip)]
    pub collect_expected: bool,
}

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct CycleReport {
    pub ingest: Vec<IngestReport>,
    pub delivery: Vec<DeliveryReport>,
}

impl CycleReport {
    pub fn quarantined(&self) -> u64 {
        self.ingest.iter().map(|i| i.mapping.quarantined()).sum()
    }
    pub fn failed_files(&self) -> usize {
        self.ingest.iter().map(|i| i.mapping.failed_files().count()).sum()
    }
    pub fn dead_lettered(&self) -> u64 {
        self.delivery.iter().map(|d| d.dead_lettered).sum()
    }
    pub fn deferred(&self) -> u64 {
        self.delivery.iter().map(|d| d.deferred).sum()
    }
}

/// A mapped resource on its way to planning.
struct Mapped {
    key: ResourceKey,
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
        let patient = patient_of(r.resource_type, r.id, r.resource);
        let m =
            Mapped { key, patient, category: r.category, not_for_patient: r.not_for_patient, body: r.resource.clone() };
        self.0.blocking_send(Msg::Resource(m)).map_err(|_| std::io::Error::other("planner stopped"))
    }
    fn quarantined(&mut self, q: &Quarantined) -> std::io::Result<()> {
        self.0
            .blocking_send(Msg::Quarantined(Box::new(q.clone())))
            .map_err(|_| std::io::Error::other("planner stopped"))
    }
}

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
            let patient = format!("Patient/{}", r.id);
            let group = person_group(&patient, r.resource);
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

/// Adds what one ingest did to the metrics.
fn count_ingest(m: &Metrics, r: &IngestReport) {
    let p = label("partner", &r.partner);
    m.add("connector_records_ingested_total", p.clone(), r.mapping.read());
    m.add("connector_records_quarantined_total", p.clone(), r.mapping.quarantined());
    for (d, n) in &r.withheld {
        m.add("connector_resources_withheld_total", format!("{p},{}", label("destination", d)), *n);
    }
}

/// Adds what one delivery pass did to the metrics.
fn count_delivery(m: &Metrics, r: &DeliveryReport) {
    let d = label("destination", &r.destination);
    m.add("connector_resources_sent_total", d.clone(), r.written);
    m.add("connector_resources_withheld_at_send_total", d.clone(), r.withheld);
    m.add("connector_resources_retried_total", d.clone(), r.deferred);
    m.add("connector_resources_dead_lettered_total", d, r.dead_lettered);
}

/// The hash planning compares with the ledger: of exactly the text that is sent.
pub fn content_hash(body: &str) -> String {
    crate::store::sha256_hex(body)
}

impl Engine {
    /// Builds the context (mappings, state store, destinations, sharing rules) for `config`.
    pub async fn start(config: Config) -> anyhow::Result<Engine> {
        Ok(Engine::new(Context::start(config).await?))
    }

    pub fn new(ctx: Context) -> Engine {
        Engine { ctx: Arc::new(ctx), explain: false, consent_read: std::sync::Mutex::default() }
    }

    /// The context, to hand to a task that outlives this borrow (the ops endpoints).
    pub fn context(&self) -> Arc<Context> {
        self.ctx.clone()
    }

    /// Maps one partner's sources and plans every destination's outbox. With `dry_run`, compares with the ledger
    /// and reports what would be queued, writing nothing.
    pub async fn ingest(&self, partner_id: &str, dry_run: bool) -> anyhow::Result<IngestReport> {
        if dry_run {
            return self.ingest_inner(partner_id, true, false).await;
        }
        let job = JobName::Ingest(partner_id.to_string()).to_string();
        let run = self.store.job_started(&job, Utc::now()).await?;
        let result = self.ingest_inner(partner_id, false, false).await;
        let (ok, detail) = match &result {
            Ok(r) => (
                r.mapping.failed_files().count() == 0,
                format!(
                    "{} read, {} mapped, {} quarantined",
                    r.mapping.read(),
                    r.mapping.mapped(),
                    r.mapping.quarantined()
                ),
            ),
            Err(e) => (false, e.to_string()),
        };
        self.store.job_finished(run, ok, &detail, Utc::now()).await?;
        if let Ok(r) = &result {
            count_ingest(&self.metrics, r);
        }
        result
    }

    /// Maps a partner's sources and records, in the `expected` table, what each destination should hold of
    /// them under today's consent (writing nothing else): reconcile's first step.
    pub async fn expect(&self, partner_id: &str) -> anyhow::Result<IngestReport> {
        self.ingest_inner(partner_id, true, true).await
    }

    async fn ingest_inner(&self, partner_id: &str, dry_run: bool, expect: bool) -> anyhow::Result<IngestReport> {
        let inputs = self.inputs(partner_id)?;
        let mut report =
            IngestReport { partner: partner_id.to_string(), dry_run, collect_expected: expect, ..Default::default() };
        // First who is who and what they consented to, so the plan below decides on today's consent.
        let overlay = self.read_consent(partner_id, &inputs, &mut report).await?;
        let catalog = self.catalog.clone();
        let id = partner_id.to_string();
        let max_bytes = self.config.limits.max_input_bytes;
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
        while let Some(msg) = rx.recv().await {
            match msg {
                Msg::Resource(mut m) => {
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
                        self.plan(&mut pending, &overlay, &mut retractions, &mut report).await?;
                    }
                }
                Msg::Quarantined(q) => {
                    report.quarantined_rows.push(crate::quarantine::QuarantinedRow::of(&q));
                    if !dry_run {
                        self.keep_quarantined(&q).await?;
                    }
                }
            }
        }
        self.plan(&mut pending, &overlay, &mut retractions, &mut report).await?;
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
        self.store.quarantine_put(&record).await?;
        Ok(())
    }

    /// Reads the partner's person and consent records: records who each Patient is and every new consent
    /// statement. A new statement that withdraws (or declines) consent cancels the person's pending sends,
    /// reports what each destination holds of them, and queues its deletion where `retract = true`.
    /// Returns, for a dry run, the statements that would be recorded (nothing is written then).
    async fn read_consent(
        &self,
        partner_id: &str,
        inputs: &[Input],
        report: &mut IngestReport,
    ) -> anyhow::Result<std::collections::HashMap<String, StatementRecord>> {
        let mut overlay = std::collections::HashMap::new();
        let inputs: Vec<Input> = inputs
            .iter()
            .filter(|i| matches!(i.kind, RecordKind::Person | RecordKind::Consent))
            .map(|i| Input { kind: i.kind, path: i.path.clone() })
            .collect();
        self.consent_read.lock().unwrap_or_else(|p| p.into_inner()).insert(partner_id.to_string());
        if inputs.is_empty() {
            return Ok(overlay);
        }
        let catalog = self.catalog.clone();
        let id = partner_id.to_string();
        let max_bytes = self.config.limits.max_input_bytes;
        let (sink, run) = tokio::task::spawn_blocking(move || -> std::io::Result<(ConsentSink, RunReport)> {
            let mut sink = ConsentSink::default();
            let run = mapping::run_with_limit(&catalog.partners[&id], &inputs, &mut sink, Some(max_bytes))?;
            Ok((sink, run))
        })
        .await
        .context("the consent reader stopped")?
        .context("reading consent")?;
        let now = Utc::now();
        // A consent export that cannot be read at all: what the partner holds now is unknown, so the statements
        // recorded in earlier cycles are not relied on; the partner's data about people is held until it is read.
        let failed: Vec<String> = run
            .failed_files()
            .filter(|f| f.kind == Some(RecordKind::Consent))
            .map(|f| {
                f.path.file_name().map_or_else(|| f.path.display().to_string(), |n| n.to_string_lossy().into_owned())
            })
            .collect();
        let unreadable = (!failed.is_empty()).then(|| format!("{} not mapped", failed.join(", ")));
        if let Some(why) = &unreadable {
            tracing::error!(partner = %partner_id, files = %failed.join(","), "Consent export unreadable: every send about a person from this partner is held until it is read.");
            report.consent_unreadable = Some(why.clone());
        }
        self.policy.set_consent_unreadable(partner_id, unreadable);
        if !report.dry_run {
            self.store.persons_put(&sink.links, now).await?;
        }
        let today = crate::store::consent_today();
        let mut changed: Vec<(String, i64)> = Vec::new();
        self.hold_unreadable(partner_id, &sink, &mut overlay, report, now).await?;
        for (facts, record_key, resource_id) in &sink.statements {
            let person = sink.groups.get(&facts.patient).cloned().unwrap_or_else(|| facts.patient.clone());
            let mut record = StatementRecord {
                id: 0,
                person: person.clone(),
                patient: facts.patient.clone(),
                partner: partner_id.to_string(),
                record_key: record_key.clone(),
                resource_id: resource_id.clone(),
                decision: facts.decision.as_str().to_string(),
                effective: facts.effective.clone(),
                given_on: facts.given.clone(),
                withdrawn_on: facts.withdrawn.clone(),
                share_cito: facts.cito,
                share_pkb: facts.pkb,
                share_partners: serde_json::to_string(&facts.partners)?,
                restrictions: serde_json::to_string(
                    &facts.restrictions.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
                )?,
                statement_hash: crate::store::sha256_hex(&serde_json::to_string(&(&person, facts))?),
                recorded_at: now,
            };
            if report.dry_run {
                // Would it be new? Then it counts as the latest of its day.
                let known = self.store.consent_history(&person).await?;
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
            if let Some(new_id) = self.store.consent_record(&record).await? {
                report.consent_statements += 1;
                record.id = new_id;
                self.store
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
        // Withdrawals and refusals now in force.
        let persons: Vec<String> = changed.iter().map(|(p, _)| p.clone()).collect();
        let current = self.store.consent_current(&persons).await?;
        for (person, new_id) in changed {
            let Some(s) = current.get(&person).filter(|s| s.id == new_id) else { continue };
            if Decision::parse(&s.decision) != Some(Decision::Withdrawn)
                && Decision::parse(&s.decision) != Some(Decision::Declined)
            {
                continue;
            }
            let cite = policy::cite(s);
            let cancelled =
                self.store.outbox_cancel_person(&person, &format!("consent {} ({cite})", s.decision), now).await?;
            let mut holdings: BTreeMap<String, Vec<String>> = BTreeMap::new();
            let mut retract = Vec::new();
            for e in self.store.ledger_for_person(&person).await? {
                holdings.entry(e.destination.clone()).or_default().push(e.key.to_string());
                let dest = self.destination(&e.destination);
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
            let retracting: Vec<String> = {
                let mut d: Vec<String> = retract.iter().map(|i| i.destination.clone()).collect();
                d.dedup();
                d
            };
            warn!(person = %person, statement = %cite, cancelled, held = holdings.values().map(Vec::len).sum::<usize>(), retracting = ?retracting, "Consent withdrawn or declined: sends stopped.");
            self.retract(retract).await?;
            report.withdrawals.push(WithdrawalReport { person, statement: cite, cancelled, holdings, retracting });
        }
        Ok(overlay)
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
                    None => Some(self.store.person_of(p).await?.unwrap_or_else(|| p.clone())),
                },
                None => None,
            };
            if person.is_none()
                && let Some(k) = key
            {
                person = self.store.consent_record_person(partner_id, k).await?;
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
                decision: crate::store::UNREADABLE.to_string(),
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
                    crate::store::UNREADABLE
                )),
                recorded_at: now,
            };
            warn!(partner = %partner_id, file = %file, row, record = %record_key, person = %person, "Consent record unreadable: the person's sends are held until it is corrected.");
            report.consent_held.push((person.clone(), record_key.clone()));
            if report.dry_run {
                record.id = i64::MAX;
                overlay.insert(person, record);
                continue;
            }
            if let Some(id) = self.store.consent_record(&record).await? {
                record.id = id;
                self.store
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

    /// Queues deletions, the person's Patient last (nothing is left pointing at a deleted Patient).
    async fn retract(&self, mut items: Vec<OutboxItem>) -> anyhow::Result<()> {
        if items.is_empty() {
            return Ok(());
        }
        items.sort_by_key(|i| i.key.resource_type == "Patient");
        self.store.enqueue(&items, Utc::now()).await?;
        Ok(())
    }

    async fn plan(
        &self,
        pending: &mut Vec<Mapped>,
        overlay: &std::collections::HashMap<String, StatementRecord>,
        retractions: &mut Vec<OutboxItem>,
        report: &mut IngestReport,
    ) -> anyhow::Result<()> {
        if pending.is_empty() {
            return Ok(());
        }
        let persons: Vec<String> = {
            let mut v: Vec<String> = pending.iter().filter_map(|m| m.patient.clone()).collect();
            v.sort();
            v.dedup();
            v
        };
        let mut consents = self.store.consent_current(&persons).await?;
        let today = crate::store::consent_today();
        for (person, s) in overlay {
            if crate::store::prevails(consents.get(person), s, today) {
                consents.insert(person.clone(), s.clone());
            }
        }
        let partner = report.partner.clone();
        let now = Utc::now();
        for dest in &self.destinations {
            let mut items = Vec::with_capacity(pending.len());
            let mut sends: Vec<(usize, String)> = Vec::new();
            let mut withheld: Vec<(usize, String)> = Vec::new();
            for (n, m) in pending.iter().enumerate() {
                let origin = Origin {
                    partner: partner.clone(),
                    category: m.category,
                    not_for_patient: m.not_for_patient,
                    is_patient: m.key.resource_type == "Patient",
                };
                let consent = m.patient.as_ref().and_then(|p| consents.get(p));
                let verdict = self.policy.decide_resource(
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
                        withheld.push((n, reason));
                        continue;
                    }
                };
                let mut body = m.body.clone();
                policy::label(&mut body, m.category, m.not_for_patient);
                crate::reconcile::tag(&mut body, &partner);
                match profile::apply(dest.profile, m.category, body) {
                    Ok(body) => {
                        let text = body.to_string();
                        items.push(OutboxItem {
                            destination: dest.name.clone(),
                            key: m.key.clone(),
                            patient: m.patient.clone(),
                            op: Op::Upsert,
                            content_hash: content_hash(&text),
                            body: Some(text),
                            origin: Some(origin.encode()),
                        });
                        if self.explain {
                            let consent = permit.consent.as_deref().unwrap_or("no consent needed");
                            sends.push((
                                n,
                                format!(
                                    "agreement \"{}\" ({}); consent {consent}",
                                    permit.agreement, permit.lawful_basis
                                ),
                            ));
                        }
                    }
                    Err(why) => withheld.push((n, format!("{} rules: {why}", dest.name))),
                }
            }
            *report.withheld.entry(dest.name.clone()).or_default() += withheld.len() as u64;
            if report.collect_expected {
                let expected: Vec<crate::store::Expected> = items
                    .iter()
                    .map(|i| crate::store::Expected {
                        key: i.key.clone(),
                        content_hash: i.content_hash.clone(),
                        partner: partner.clone(),
                    })
                    .collect();
                self.store.expected_put(&dest.name, &expected).await?;
            }
            let need_ledger = report.dry_run || self.explain;
            let held: std::collections::HashMap<ResourceKey, crate::store::LedgerEntry> = {
                let mut keys: Vec<ResourceKey> = withheld.iter().map(|(n, _)| pending[*n].key.clone()).collect();
                if need_ledger {
                    keys.extend(items.iter().map(|i| i.key.clone()));
                }
                self.store.ledger_get_many(&dest.name, &keys).await?.into_iter().map(|e| (e.key.clone(), e)).collect()
            };
            if self.explain {
                for (n, why) in sends {
                    let m = &pending[n];
                    let hash = items.iter().find(|i| i.key == m.key).map(|i| i.content_hash.clone());
                    report.explained.push(Explained {
                        destination: dest.name.clone(),
                        resource_type: m.key.resource_type.clone(),
                        id: m.key.id.clone(),
                        partner: partner.clone(),
                        category: m.category,
                        decision: "send",
                        unchanged: held.get(&m.key).map(|e| Some(e.content_hash.clone())) == Some(hash),
                        why,
                    });
                }
                for (n, why) in &withheld {
                    let m = &pending[*n];
                    report.explained.push(Explained {
                        destination: dest.name.clone(),
                        resource_type: m.key.resource_type.clone(),
                        id: m.key.id.clone(),
                        partner: partner.clone(),
                        category: m.category,
                        decision: "withhold",
                        unchanged: !held.contains_key(&m.key),
                        why: why.clone(),
                    });
                }
            }
            // What the destination holds but may no longer: deleted there with `retract`, else reported. A hold for
            // unreadable consent is not a decision against the person's data: what is there stays until it is read.
            for (n, why) in &withheld {
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
            let queued = if report.dry_run {
                items.iter().filter(|i| held.get(&i.key).map(|e| &e.content_hash) != Some(&i.content_hash)).count()
            } else {
                let notes: Vec<(ResourceKey, String, AuditEntry)> = withheld
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
                            partner: Some(partner.clone()),
                            category: Some(m.category.as_str().to_string()),
                            reason: Some(reason.clone()),
                            ..AuditEntry::default()
                        };
                        (m.key.clone(), reason.clone(), audit)
                    })
                    .collect();
                self.store.withheld_note_many(&dest.name, &notes).await?;
                self.store.enqueue(&items, now).await?
            };
            *report.queued.entry(dest.name.clone()).or_default() += queued as u64;
        }
        pending.clear();
        Ok(())
    }

    /// Copies new disclosures and retractions from the audit trail to `[audit] fhir_destination` as FHIR
    /// Provenance resources, through that destination's outbox. Returns how many were queued.
    pub async fn export_audit(&self) -> anyhow::Result<usize> {
        let Some(dest) = self.config.audit.fhir_destination.clone() else { return Ok(0) };
        let cursor = format!("audit-fhir:{dest}");
        let mut after = self.store.cursor_get(&cursor).await?;
        let mut queued = 0;
        loop {
            let page = self
                .store
                .audit_list(&crate::store::AuditFilter {
                    after_id: after,
                    // Only what was disclosed to (or deleted from) the central record itself: disclosures to PKB or
                    // a partner's feed are not the central record's to know, least of all for someone who
                    // refused it.
                    destination: Some(dest.clone()),
                    actions: vec![AuditAction::Disclosed, AuditAction::Retracted],
                    limit: 500,
                    ..Default::default()
                })
                .await?;
            let Some(last) = page.last().map(|e| e.id) else { break };
            let items: Vec<OutboxItem> = page
                .iter()
                .map(|e| {
                    let body = policy::provenance(e);
                    let text = body.to_string();
                    OutboxItem {
                        destination: dest.clone(),
                        key: ResourceKey::new("Provenance", body["id"].as_str().unwrap_or_default()),
                        patient: None,
                        op: Op::Upsert,
                        content_hash: content_hash(&text),
                        body: Some(text),
                        origin: Some(policy::AUDIT_ORIGIN.to_string()),
                    }
                })
                .collect();
            queued += self.store.enqueue(&items, Utc::now()).await?;
            self.store.cursor_set(&cursor, last).await?;
            after = last;
        }
        Ok(queued)
    }

    /// Reconciles the destinations with the source (see [`crate::reconcile`]); with `fix`, then runs the
    /// cycle that delivers the repairs and adds what it did to the report.
    pub async fn reconcile(
        &self,
        opts: &crate::reconcile::Options,
    ) -> anyhow::Result<crate::reconcile::ReconcileReport> {
        let mut report = crate::reconcile::run(self, opts, |p| async move { self.expect(&p).await.map(drop) }).await?;
        if let Some(f) = report.fixed.as_mut() {
            let (_tx, rx) = watch::channel(false);
            let cycle = self
                .cycle(opts.partner.as_deref(), opts.destination.as_deref(), false, &rx)
                .await
                .context("delivering the repairs")?;
            for i in &cycle.ingest {
                f.queued += i.queued.values().sum::<u64>();
            }
            for d in &cycle.delivery {
                f.written += d.written;
                f.merged += d.merged;
                f.conflicts += d.conflicts;
                f.dead_lettered += d.dead_lettered;
                f.deferred += d.deferred;
            }
        }
        Ok(report)
    }

    /// Reads back what others changed on one destination (see [`crate::reconcile::pull`]).
    pub async fn pull(&self, name: &str) -> anyhow::Result<crate::reconcile::pull::PullReport> {
        let dest = self.destination(name).with_context(|| format!("no destination \"{name}\" in the config"))?;
        let run = self.store.job_started(&JobName::Pull(name.to_string()).to_string(), Utc::now()).await?;
        let result = crate::reconcile::pull::pull(&self.store, dest).await;
        let (ok, detail) = match &result {
            Ok(r) => (
                true,
                format!("{} read, {} changed there, {} stale, {} deleted there", r.read, r.changed, r.stale, r.deleted),
            ),
            Err(e) => (false, e.to_string()),
        };
        self.store.job_finished(run, ok, &detail, Utc::now()).await?;
        result
    }

    /// Delivers one destination's outbox.
    pub async fn deliver(&self, name: &str, shutdown: &watch::Receiver<bool>) -> anyhow::Result<DeliveryReport> {
        let dest = self.destination(name).with_context(|| format!("no destination \"{name}\" in the config"))?;
        let unread: Vec<String> = {
            let read = self.consent_read.lock().unwrap_or_else(|p| p.into_inner());
            self.config.partners.iter().map(|p| p.id.clone()).filter(|p| !read.contains(p)).collect()
        };
        for p in unread {
            let mut r = IngestReport { partner: p.clone(), ..Default::default() };
            self.read_consent(&p, &self.inputs(&p)?, &mut r).await?;
        }
        if self.config.audit.fhir_destination.as_deref() == Some(name) {
            self.export_audit().await?;
        }
        let run = self.store.job_started(&JobName::Deliver(name.to_string()).to_string(), Utc::now()).await?;
        let result = deliver::deliver(&self.store, dest, &self.owner, shutdown).await;
        let (ok, detail) = match &result {
            Ok(r) => (
                !r.breaker_open,
                format!(
                    "{} written, {} linked, {} dead-lettered, {} deferred",
                    r.written, r.linked, r.dead_lettered, r.deferred
                ),
            ),
            Err(e) => (false, e.to_string()),
        };
        self.store.job_finished(run, ok, &detail, Utc::now()).await?;
        let r = result?;
        count_delivery(&self.metrics, &r);
        if ok {
            self.metrics.mark_cycle_ok();
        }
        info!(destination = %name, written = r.written, linked = r.linked, dead = r.dead_lettered, deferred = r.deferred, "Delivered.");
        Ok(r)
    }

    /// One full cycle: ingest the chosen partners (all by default), then deliver to the chosen destinations.
    pub async fn cycle(
        &self,
        partner: Option<&str>,
        destination: Option<&str>,
        dry_run: bool,
        shutdown: &watch::Receiver<bool>,
    ) -> anyhow::Result<CycleReport> {
        let mut report = CycleReport::default();
        let chosen: Vec<&str> = self
            .config
            .partners
            .iter()
            .filter(|p| partner.is_none_or(|only| only == p.id))
            .map(|p| p.id.as_str())
            .collect();
        // Every partner's consent first, so each partner's plan sees every statement of this cycle (a
        // withdrawal at one partner stops, and retracts, the others' data in the same cycle).
        let mut consent_reports = BTreeMap::new();
        if !dry_run {
            for p in &chosen {
                let mut r = IngestReport { partner: p.to_string(), ..Default::default() };
                self.read_consent(p, &self.inputs(p)?, &mut r).await?;
                consent_reports.insert(p.to_string(), r);
            }
        }
        for p in chosen {
            if *shutdown.borrow() {
                break;
            }
            let mut r = self.ingest(p, dry_run).await?;
            if let Some(pre) = consent_reports.remove(p) {
                r.consent_statements += pre.consent_statements;
                let mut w = pre.withdrawals;
                w.append(&mut r.withdrawals);
                r.withdrawals = w;
            }
            report.ingest.push(r);
        }
        if dry_run {
            return Ok(report);
        }
        for d in self.destinations.iter().filter(|d| destination.is_none_or(|only| only == d.name)) {
            if *shutdown.borrow() {
                break;
            }
            report.delivery.push(self.deliver(&d.name, shutdown).await?);
        }
        // The audit trail's copy: what this cycle disclosed, on the central record now.
        if let Some(d) = self.config.audit.fhir_destination.clone()
            && destination.is_none_or(|only| only == d)
            && !*shutdown.borrow()
            && self.export_audit().await? > 0
        {
            report.delivery.push(self.deliver(&d, shutdown).await?);
        }
        // A retracted Patient that other partners' Patients were linked to: their records were forgotten
        // there and go again now, so the destination is not left without the person's Patient.
        if report.delivery.iter().any(|d| d.relink > 0) && !*shutdown.borrow() {
            for p in self.config.partners.iter().filter(|p| partner.is_none_or(|only| only == p.id)) {
                report.ingest.push(self.ingest(&p.id, false).await?);
            }
            for d in self.destinations.iter().filter(|d| destination.is_none_or(|only| only == d.name)) {
                report.delivery.push(self.deliver(&d.name, shutdown).await?);
            }
        }
        Ok(report)
    }
}
