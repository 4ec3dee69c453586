//! Sync: the pipeline from partner exports to destinations. A cycle maps each partner's sources (on a blocking
//! thread, streaming), plans each destination's outbox from the mapped content (only what differs from the
//! ledger is queued, so unchanged input writes nothing), then delivers the outboxes.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Context as _;
use chrono::Utc;
use tokio::sync::watch;
use tracing::info;

use crate::config::Config;
pub use crate::context::{Context, reclaim_dead_leases};
use crate::deliver::{self, DeliveryReport};
use crate::model::{AuditAction, JobName};
use crate::ops::metrics::{Metrics, label};
use crate::plan::{ConsentRead, Planner};
pub use crate::plan::{Explained, IngestReport, WithdrawalReport, content_hash, patient_of, person_group};
use crate::policy;
use crate::source;
use crate::store::{Op, OutboxItem, ResourceKey};

pub mod receipt;

/// The planner and the cycle over a [`Context`] (which it dereferences to, so `engine.store` reads as before).
pub struct Engine {
    ctx: Arc<Context>,
    /// Print every send/withhold decision while planning (`sync --dry-run --explain`).
    pub explain: bool,
    /// Take a snapshot much smaller than the previous one as complete (`sync --accept-snapshot`).
    pub accept_snapshot: bool,
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

/// Adds what one ingest did to the metrics.
fn count_ingest(m: &Metrics, r: &IngestReport) {
    let p = label("partner", &r.partner);
    if r.unchanged_since.is_some() {
        // Nothing was read: the counts in the report are the last full plan's.
        m.add("connector_plans_unchanged_total", p, 1);
        return;
    }
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

impl Engine {
    /// Builds the context (mappings, state store, destinations, sharing rules) for `config`.
    pub async fn start(config: Config) -> anyhow::Result<Engine> {
        Ok(Engine::new(Context::start(config).await?))
    }

    pub fn new(ctx: Context) -> Engine {
        Engine { ctx: Arc::new(ctx), explain: false, accept_snapshot: false, consent_read: std::sync::Mutex::default() }
    }

    /// The planning stage over this engine's context.
    fn planner(&self) -> Planner<'_> {
        Planner { ctx: &self.ctx, explain: self.explain, consent_read: &self.consent_read, stop: None, expected: None }
    }

    /// The context, to hand to a task that outlives this borrow (the ops endpoints).
    pub fn context(&self) -> Arc<Context> {
        self.ctx.clone()
    }

    /// Maps one partner's sources and plans every destination's outbox. With `dry_run`, compares with the ledger
    /// and reports what would be queued, writing nothing (and moving no inbox file).
    pub async fn ingest(&self, partner_id: &str, dry_run: bool) -> anyhow::Result<IngestReport> {
        let (_keep, never) = watch::channel(false);
        self.ingest_until(partner_id, dry_run, &never).await
    }

    /// As [`Engine::ingest`], ending between rounds (and between API pages) once `stop` is set.
    pub async fn ingest_until(
        &self,
        partner_id: &str,
        dry_run: bool,
        stop: &watch::Receiver<bool>,
    ) -> anyhow::Result<IngestReport> {
        let gathered = source::gather(&self.ctx, partner_id, dry_run, stop).await?;
        self.plan_sources(partner_id, gathered, dry_run, stop, None).await
    }

    /// Plans what the partner's sources gave, as the partner's ingest job (a dry run is not a job). `consent`:
    /// what reading the first round's consent returned earlier in this cycle, when it was.
    async fn plan_sources(
        &self,
        partner_id: &str,
        gathered: source::Gathered,
        dry_run: bool,
        stop: &watch::Receiver<bool>,
        consent: Option<ConsentRead>,
    ) -> anyhow::Result<IngestReport> {
        if dry_run {
            return self.ingest_gathered(partner_id, gathered, true, stop, consent).await;
        }
        let job = JobName::Ingest(partner_id.to_string());
        let work = async {
            // Not planned again when nothing it depends on has changed since a plan that changed nothing
            // (`receipt`); a consent read this cycle that found anything to report rules that out.
            let check = if consent.as_ref().is_none_or(|(_, r)| receipt::consent_quiet(r)) {
                receipt::Check::prepare(&self.ctx, partner_id, &gathered, self.accept_snapshot).await?
            } else {
                None
            };
            if let Some(check) = &check
                && let Some(mut r) = check.unchanged(&self.store).await?
            {
                r.sources = gathered.reports;
                for round in gathered.rounds {
                    source::finish_unchanged(&self.ctx, partner_id, round).await?;
                }
                return Ok(r);
            }
            let r = self.ingest_gathered(partner_id, gathered, false, stop, consent).await?;
            // A plan stopped part-way fails above; none is recorded once a stop is asked for, whatever ended it.
            if let Some(check) = &check
                && !*stop.borrow()
            {
                check.record(&self.store, &r).await?;
            }
            Ok(r)
        };
        let result = self
            .run_job(&job, work, |r| {
                let m = &r.mapping;
                let detail = match r.unchanged_since {
                    Some(since) => format!("not planned again: unchanged since {}", since.to_rfc3339()),
                    None => format!("{} read, {} mapped, {} quarantined", m.read(), m.mapped(), m.quarantined()),
                };
                (m.failed_files().count() == 0 && !r.sources.iter().any(|s| s.failed()), detail)
            })
            .await;
        if let Ok(r) = &result {
            count_ingest(&self.metrics, r);
        }
        result
    }

    /// Plans each round the partner's sources gave, in order, finishing each (inbox files archived, cursors
    /// advanced, snapshots compared) once its rows are planned.
    async fn ingest_gathered(
        &self,
        partner_id: &str,
        gathered: source::Gathered,
        dry_run: bool,
        stop: &watch::Receiver<bool>,
        mut consent: Option<ConsentRead>,
    ) -> anyhow::Result<IngestReport> {
        let mut sources = gathered.reports;
        let mut total: Option<IngestReport> = None;
        for (n, round) in gathered.rounds.into_iter().enumerate() {
            if n > 0 && *stop.borrow() {
                info!(partner = %partner_id, "Stopping: the remaining inbox files are read next time.");
                break;
            }
            let planner = Planner { stop: Some(stop.clone()), ..self.planner() };
            let mut r = planner.ingest_read(partner_id, round.inputs.clone(), dry_run, false, consent.take()).await?;
            if !dry_run {
                let outcome = source::Outcome {
                    members: std::mem::take(&mut r.members),
                    failed: r
                        .mapping
                        .failed_files()
                        .map(|f| (f.path.clone(), f.error.clone().unwrap_or_default()))
                        .collect(),
                };
                source::finish(&self.ctx, partner_id, round, &outcome, self.accept_snapshot, &mut sources).await?;
            }
            match &mut total {
                None => total = Some(r),
                Some(t) => t.absorb(r),
            }
        }
        let mut total = total.unwrap_or_else(|| IngestReport { partner: partner_id.to_string(), ..Default::default() });
        // No round took the consent read (the sources offered nothing): what it reported still counts.
        if let Some((_, read)) = consent {
            total.absorb_consent(read);
        }
        total.sources = sources;
        Ok(total)
    }

    /// Maps a partner's sources and hands `into` what each destination should hold of them under today's
    /// consent, a chunk at a time (writing nothing): reconcile's first step. An inbox source counts by its
    /// newest archived file.
    pub async fn expect(
        &self,
        partner_id: &str,
        into: tokio::sync::mpsc::Sender<(String, Vec<crate::store::Expected>)>,
    ) -> anyhow::Result<IngestReport> {
        let planner = Planner { expected: Some(into), ..self.planner() };
        planner.ingest(partner_id, source::latest_inputs(&self.ctx, partner_id)?, true, true).await
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
                        origin: Some(crate::model::Provenance::AuditCopy),
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
        let mut report =
            crate::reconcile::run(self, opts, |p, into| async move { self.expect(&p, into).await.map(drop) }).await?;
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
    pub async fn pull(
        &self,
        name: &str,
        stop: &watch::Receiver<bool>,
    ) -> anyhow::Result<crate::reconcile::pull::PullReport> {
        let dest = self.destination(name).with_context(|| format!("no destination \"{name}\" in the config"))?;
        let job = JobName::Pull(name.to_string());
        self.run_job(&job, crate::reconcile::pull::pull(&self.store, dest, stop), |r| {
            (
                true,
                format!("{} read, {} changed there, {} stale, {} deleted there", r.read, r.changed, r.stale, r.deleted),
            )
        })
        .await
    }

    /// Delivers one destination's outbox.
    pub async fn deliver(&self, name: &str, shutdown: &watch::Receiver<bool>) -> anyhow::Result<DeliveryReport> {
        self.deliver_while(name, shutdown, None).await
    }

    /// Delivers one destination's outbox; with `planning`, while a planning pass still enqueues (see
    /// [`deliver::deliver`]).
    async fn deliver_while(
        &self,
        name: &str,
        shutdown: &watch::Receiver<bool>,
        planning: Option<watch::Receiver<()>>,
    ) -> anyhow::Result<DeliveryReport> {
        let dest = self.destination(name).with_context(|| format!("no destination \"{name}\" in the config"))?;
        let unread: Vec<String> = {
            let read = self.consent_read.lock().unwrap_or_else(|p| p.into_inner());
            self.config.partners.iter().map(|p| p.id.clone()).filter(|p| !read.contains(p)).collect()
        };
        for p in unread {
            let mut r = IngestReport { partner: p.clone(), ..Default::default() };
            self.planner().read_consent(&p, &self.inputs(&p)?, &mut r).await?;
        }
        if self.config.audit.fhir_destination.as_deref() == Some(name) {
            self.export_audit().await?;
        }
        let job = JobName::Deliver(name.to_string());
        let work = async { Ok(deliver::deliver(&self.store, dest, &self.owner, shutdown, planning).await?) };
        // A pass that ends with the circuit open (found open, or opened by this pass's failures) failed: its
        // rows wait, and `connector_job_last_success_timestamp_seconds` must not move.
        let circuit_open = |r: &DeliveryReport| r.breaker_open || dest.breaker.open_since().is_some();
        let r = self
            .run_job(&job, work, |r: &DeliveryReport| {
                let detail = format!(
                    "{} written, {} linked, {} dead-lettered, {} deferred",
                    r.written, r.linked, r.dead_lettered, r.deferred
                );
                (!circuit_open(r), detail)
            })
            .await?;
        count_delivery(&self.metrics, &r);
        if !circuit_open(&r) {
            self.metrics.mark_cycle_ok();
        }
        info!(destination = %name, written = r.written, linked = r.linked, dead = r.dead_lettered, deferred = r.deferred, "Delivered.");
        Ok(r)
    }

    /// One full cycle: ingest the chosen partners (all by default) and deliver to the chosen destinations.
    /// Delivery runs beside planning when every consent statement of the cycle is read before anything is
    /// planned (each partner offers one round); otherwise, and on a dry run, it follows planning.
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
        // What every source offers first (inbox files listed, partner APIs read), then every partner's consent,
        // so each partner's plan sees every statement of this cycle (a withdrawal at one partner stops, and
        // retracts, the others' data in the same cycle). Later inbox rounds read their own consent in turn.
        let mut gathered = BTreeMap::new();
        for p in &chosen {
            gathered.insert(p.to_string(), source::gather(&self.ctx, p, dry_run, shutdown).await?);
        }
        // What each read returned and reported goes to the partner's first round, which does not read it again.
        let mut consent_read = BTreeMap::new();
        if !dry_run {
            for (p, g) in &gathered {
                let mut r = IngestReport { partner: p.clone(), ..Default::default() };
                let first = g.rounds.first().map(|r| r.inputs.as_slice()).unwrap_or_default();
                let overlay = self.planner().read_consent(p, first, &mut r).await?;
                consent_read.insert(p.clone(), (overlay, r));
            }
        }
        // Delivery starts while planning goes on when every consent statement this cycle reads has been read
        // (above: each partner offers at most one round). A partner with several inbox rounds reads each
        // later round's consent as it plans it, and nothing may leave before a withdrawal there is known:
        // then delivery waits for planning, as it always did. Planning that fails ends the pass's wait; what
        // it enqueued before failing is delivered, as the daemon's delivery job would.
        let pipelined = !dry_run && gathered.values().all(|g| g.rounds.len() <= 1);
        let plan = move |planned: Option<watch::Sender<()>>| async move {
            let mut ingest = Vec::new();
            for p in chosen {
                if *shutdown.borrow() {
                    break;
                }
                let Some(g) = gathered.remove(p) else { continue };
                ingest.push(self.plan_sources(p, g, dry_run, shutdown, consent_read.remove(p)).await?);
            }
            drop(planned);
            anyhow::Ok(ingest)
        };
        let deliver_all = move |planning: Option<watch::Receiver<()>>| async move {
            let mut delivery = Vec::new();
            for d in self.destinations.iter().filter(|d| destination.is_none_or(|only| only == d.name)) {
                if *shutdown.borrow() {
                    break;
                }
                delivery.push(self.deliver_while(&d.name, shutdown, planning.clone()).await?);
            }
            anyhow::Ok(delivery)
        };
        if dry_run {
            report.ingest = plan(None).await?;
            return Ok(report);
        }
        let (ingest, delivery) = if pipelined {
            let (planned, planning) = watch::channel(());
            let (ingest, delivery) = tokio::join!(plan(Some(planned)), deliver_all(Some(planning)));
            (ingest?, delivery?)
        } else {
            let ingest = plan(None).await?;
            (ingest, deliver_all(None).await?)
        };
        report.ingest = ingest;
        report.delivery = delivery;
        // The audit trail's copy: what this cycle disclosed, on the central record now.
        if let Some(d) = self.config.audit.fhir_destination.clone()
            && destination.is_none_or(|only| only == d)
            && !*shutdown.borrow()
            && self.export_audit().await? > 0
        {
            report.delivery.push(self.deliver(&d, shutdown).await?);
        }
        // A retracted Patient that other partners' Patients were linked to: their records there were marked
        // to be planned again and go now, so the destination is not left without the person's Patient.
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
