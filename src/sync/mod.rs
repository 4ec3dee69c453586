//! Sync: the pipeline from partner exports to destinations. A cycle maps each partner's sources (on a blocking
//! thread, streaming), plans each destination's outbox from the mapped content (only what differs from the
//! ledger is queued, so unchanged input writes nothing), then delivers the outboxes.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Context;
use chrono::Utc;
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::config::Config;
use crate::deliver::{self, DeliveryReport, Destination, profile};
use crate::mapping::{self, Catalog, Category, Input, MappedResource, Quarantined, RunReport, Sink};
use crate::store::{Op, OutboxItem, QuarantineRecord, ResourceKey, Store};

/// Resources planned per call to the store.
const PLAN_CHUNK: usize = 500;

/// Everything a running connector needs.
pub struct Engine {
    pub config: Arc<Config>,
    pub catalog: Arc<Catalog>,
    pub store: Store,
    pub destinations: Vec<Arc<Destination>>,
    /// This instance's name in leases: host and process id.
    pub owner: String,
}

/// What mapping and planning one partner did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct IngestReport {
    pub partner: String,
    pub mapping: RunReport,
    /// Per destination: resources queued because they are new or changed.
    pub queued: BTreeMap<String, u64>,
    /// Per destination: resources that the destination's rules do not allow, with the count.
    pub withheld: BTreeMap<String, u64>,
    pub dry_run: bool,
    /// The rows quarantined in this run: kind, file name, row and key (never their content).
    #[serde(skip)]
    pub quarantined_rows: Vec<(String, String, u64, Option<String>)>,
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
        let m = Mapped { key, patient, category: r.category, body: r.resource.clone() };
        self.0.blocking_send(Msg::Resource(m)).map_err(|_| std::io::Error::other("planner stopped"))
    }
    fn quarantined(&mut self, q: &Quarantined) -> std::io::Result<()> {
        self.0
            .blocking_send(Msg::Quarantined(Box::new(q.clone())))
            .map_err(|_| std::io::Error::other("planner stopped"))
    }
}

/// The ordering group of a Patient: the person. With an NHS number, every partner's Patient for that person
/// shares one group, so their writes (and the look-up before creating) go one after another and two
/// partners can never both create the same person. The NHS number itself is not kept: the group is a UUID v5.
pub fn person_group(patient_ref: &str, patient: &Value) -> String {
    let nhs = patient["identifier"].as_array().and_then(|ids| {
        ids.iter().find(|i| i["system"] == "https://fhir.nhs.uk/Id/nhs-number").and_then(|i| i["value"].as_str())
    });
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

/// Releases outbox leases held by connector processes on this host that no longer exist (killed, crashed).
/// Without this their rows, and every later write for the same people, would wait for the leases to expire.
/// Owners on other hosts are left to their lease expiry.
pub async fn reclaim_dead_leases(store: &Store, host: &str) -> anyhow::Result<usize> {
    let prefix = format!("{host}-");
    let mut released = 0;
    let mut seen = std::collections::HashSet::new();
    for owner in store.lease_owners().await? {
        let base = owner.split('/').next().unwrap_or_default().to_string();
        let Some(pid) = base.strip_prefix(&prefix).and_then(|p| p.parse::<u32>().ok()) else { continue };
        if pid == std::process::id() || !seen.insert(base.clone()) {
            continue;
        }
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            store.release(&base).await?;
            warn!(owner = %base, "Released outbox leases of a connector process that is gone; its rows will be sent again.");
            released += 1;
        }
    }
    Ok(released)
}

/// The hash planning compares with the ledger: of exactly the text that is sent.
pub fn content_hash(body: &str) -> String {
    crate::store::sha256_hex(body)
}

impl Engine {
    /// Loads the mappings, opens the state store (running migrations) and prepares the destinations.
    pub async fn start(config: Config) -> anyhow::Result<Engine> {
        let mappings_dir = config.resolve(&config.mappings.dir);
        let catalog = mapping::load_catalog(&mappings_dir).map_err(|errors| {
            let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
            anyhow::anyhow!("the mappings do not load:\n{}", list.join("\n"))
        })?;
        for p in &config.partners {
            if catalog.partner(&p.id).is_none() {
                anyhow::bail!(
                    "partner \"{}\" in the config has no mappings folder under {}",
                    p.id,
                    mappings_dir.display()
                );
            }
            for s in &p.sources {
                if !catalog.partners[&p.id].mappings.contains_key(&s.kind) {
                    anyhow::bail!(
                        "partner \"{}\": source {} is kind \"{}\", which has no mapping",
                        p.id,
                        s.path.display(),
                        s.kind
                    );
                }
            }
        }
        let store = Store::connect(&config.state_url()).await.context("opening the state store")?;
        let mut destinations = Vec::new();
        for (name, d) in &config.destinations {
            if d.allow_insecure_http && !crate::config::is_loopback_url(&d.base_url) {
                warn!(destination = %name, "Plain http to a non-loopback destination is allowed by allow_insecure_http; personal data travels unencrypted.");
            }
            destinations.push(Arc::new(
                Destination::from_config(name, d, &config).with_context(|| format!("destination {name}"))?,
            ));
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let owner = format!("{}-{}", host.trim(), std::process::id());
        reclaim_dead_leases(&store, host.trim()).await?;
        Ok(Engine { config: Arc::new(config), catalog: Arc::new(catalog), store, destinations, owner })
    }

    pub fn destination(&self, name: &str) -> Option<&Arc<Destination>> {
        self.destinations.iter().find(|d| d.name == name)
    }

    /// Maps one partner's sources and plans every destination's outbox. With `dry_run`, compares with the ledger
    /// and reports what would be queued, writing nothing.
    pub async fn ingest(&self, partner_id: &str, dry_run: bool) -> anyhow::Result<IngestReport> {
        if dry_run {
            return self.ingest_inner(partner_id, true).await;
        }
        let job = format!("ingest:{partner_id}");
        let run = self.store.job_started(&job, Utc::now()).await?;
        let result = self.ingest_inner(partner_id, false).await;
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
        result
    }

    async fn ingest_inner(&self, partner_id: &str, dry_run: bool) -> anyhow::Result<IngestReport> {
        let pc = self
            .config
            .partners
            .iter()
            .find(|p| p.id == partner_id)
            .with_context(|| format!("no [[partner]] \"{partner_id}\" in the config"))?;
        let inputs: Vec<Input> =
            pc.sources.iter().map(|s| Input { kind: s.kind, path: self.config.resolve(&s.path) }).collect();
        let catalog = self.catalog.clone();
        let id = partner_id.to_string();
        let max_bytes = self.config.limits.max_input_bytes;
        let (tx, mut rx) = mpsc::channel::<Msg>(1024);
        let mapper = tokio::task::spawn_blocking(move || {
            let partner = &catalog.partners[&id];
            let mut sink = ChannelSink(tx);
            mapping::run_with_limit(partner, &inputs, &mut sink, Some(max_bytes))
        });

        let mut report = IngestReport { partner: partner_id.to_string(), dry_run, ..Default::default() };
        let mut pending: Vec<Mapped> = Vec::with_capacity(PLAN_CHUNK);
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
                        self.plan(&mut pending, &mut report).await?;
                    }
                }
                Msg::Quarantined(q) => {
                    let file = q.file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                    report.quarantined_rows.push((q.kind.to_string(), file, q.row, q.key.clone()));
                    if !dry_run {
                        self.keep_quarantined(&q).await?;
                    }
                }
            }
        }
        self.plan(&mut pending, &mut report).await?;
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

    async fn plan(&self, pending: &mut Vec<Mapped>, report: &mut IngestReport) -> anyhow::Result<()> {
        if pending.is_empty() {
            return Ok(());
        }
        for dest in &self.destinations {
            let mut items = Vec::with_capacity(pending.len());
            for m in pending.iter() {
                match profile::apply(dest.profile, m.category, m.body.clone()) {
                    Ok(body) => {
                        let text = body.to_string();
                        items.push(OutboxItem {
                            destination: dest.name.clone(),
                            key: m.key.clone(),
                            patient: m.patient.clone(),
                            op: Op::Upsert,
                            content_hash: content_hash(&text),
                            body: Some(text),
                        });
                    }
                    Err(why) => {
                        warn!(destination = %dest.name, resource_type = %m.key.resource_type, resource = %m.key.id, reason = %why, "Withheld by the destination's rules.");
                        *report.withheld.entry(dest.name.clone()).or_default() += 1;
                    }
                }
            }
            let queued = if report.dry_run {
                let keys: Vec<ResourceKey> = items.iter().map(|i| i.key.clone()).collect();
                let held: std::collections::HashMap<ResourceKey, String> = self
                    .store
                    .ledger_get_many(&dest.name, &keys)
                    .await?
                    .into_iter()
                    .map(|e| (e.key, e.content_hash))
                    .collect();
                items.iter().filter(|i| held.get(&i.key) != Some(&i.content_hash)).count()
            } else {
                self.store.enqueue(&items, Utc::now()).await?
            };
            *report.queued.entry(dest.name.clone()).or_default() += queued as u64;
        }
        pending.clear();
        Ok(())
    }

    /// Delivers one destination's outbox.
    pub async fn deliver(&self, name: &str, shutdown: &watch::Receiver<bool>) -> anyhow::Result<DeliveryReport> {
        let dest = self.destination(name).with_context(|| format!("no destination \"{name}\" in the config"))?;
        let run = self.store.job_started(&format!("deliver:{name}"), Utc::now()).await?;
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
        for p in self.config.partners.iter().filter(|p| partner.is_none_or(|only| only == p.id)) {
            if *shutdown.borrow() {
                break;
            }
            report.ingest.push(self.ingest(&p.id, dry_run).await?);
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
        Ok(report)
    }
}
