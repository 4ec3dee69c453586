//! Reconcile: proves that each destination holds what it should. What it should hold is the latest mapped
//! source data under today's consent (a dry-run plan, recorded in the `expected` table); what it does hold is
//! read from the destination in pages (the resources carrying the connector's partner tag), compared page by
//! page with the ledger and the expected set. The two happen at once: the source is mapped while the
//! destination is read (`read.rs`: the types side by side, within the destination's `concurrency`), and what
//! is read before the expected set is whole waits in a compact form, at most `READ_AHEAD` resources, to be
//! judged (`compare.rs`); so memory stays bounded however many resources there are.
//!
//! Per destination, partner and resource type it reports:
//! - missing: expected but not there (deleted there, or never delivered);
//! - unexpected: tagged as ours but not expected (no longer in the source, or no longer allowed);
//! - drifted: changed there by someone else since the connector last looked (not yet pulled);
//! - stale: an older version than the source's latest (an old copy restored there, an undelivered change,
//!   or a copy the ledger does not know);
//! - conflict: changed on both sides, waiting for an admin (`connector conflicts`); not counted as drift.
//!
//! `--fix` repairs through the normal outbox: missing resources are forgotten in the ledger so they are
//! planned again, unexpected ones are queued for deletion (ones the ledger knows only where `retract = true`),
//! drifted ones are accepted as others' changes (merged, or conflicts, at the next update), stale ones are
//! queued again; then a sync cycle plans and delivers.

mod compare;
mod expected;
mod page;
pub mod pull;
mod read;
pub mod resolve;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use tokio::sync::{mpsc, watch};

use crate::context::Context as Engine;
use crate::deliver::Destination;
use crate::store::{Expected, LedgerEntry, ResourceKey};

pub use crate::model::fhir::SOURCE_PARTNER_TAG as TAG_SYSTEM;
pub use crate::plan::shape::tag;

/// Resources per page read from a destination (HFS serves at most 1000).
const PAGE: usize = 1000;
/// Resources read and held, compactly, while the source is still being mapped (a few hundred bytes each);
/// past that, reading waits for the expected set.
const READ_AHEAD: usize = 100_000;
/// Findings listed one by one in a report; beyond that only counted.
const MAX_LISTED: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Class {
    Missing,
    Unexpected,
    Drifted,
    Stale,
    Conflict,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Missing => "missing",
            Class::Unexpected => "unexpected",
            Class::Drifted => "drifted",
            Class::Stale => "stale",
            Class::Conflict => "conflict",
        }
    }
}

/// One resource that is not as it should be.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Finding {
    pub destination: String,
    pub partner: String,
    pub resource_type: String,
    pub id: String,
    pub class: Class,
    pub detail: String,
    /// What `--fix` did about it (when fixing).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// Counts for one destination, partner and resource type.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Summary {
    pub destination: String,
    pub partner: String,
    pub resource_type: String,
    pub in_sync: u64,
    pub missing: u64,
    pub unexpected: u64,
    pub drifted: u64,
    pub stale: u64,
    pub conflict: u64,
}

impl Summary {
    fn add(&mut self, class: Option<Class>) {
        match class {
            None => self.in_sync += 1,
            Some(Class::Missing) => self.missing += 1,
            Some(Class::Unexpected) => self.unexpected += 1,
            Some(Class::Drifted) => self.drifted += 1,
            Some(Class::Stale) => self.stale += 1,
            Some(Class::Conflict) => self.conflict += 1,
        }
    }
}

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ReconcileReport {
    pub summaries: Vec<Summary>,
    /// The first findings, one by one (at most 1000).
    pub findings: Vec<Finding>,
    pub findings_total: u64,
    /// Resources read from the destinations.
    pub read: u64,
    pub seconds: f64,
    /// With `--fix`: the sync cycle that delivered the repairs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fixed: Option<FixReport>,
}

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct FixReport {
    pub queued: u64,
    pub written: u64,
    pub merged: u64,
    pub conflicts: u64,
    pub dead_lettered: u64,
    pub deferred: u64,
}

impl ReconcileReport {
    /// Resources not as they should be, conflicts aside (they wait for an admin, not for reconcile).
    pub fn drift(&self) -> u64 {
        self.summaries.iter().map(|s| s.missing + s.unexpected + s.drifted + s.stale).sum()
    }
    pub fn conflicts(&self) -> u64 {
        self.summaries.iter().map(|s| s.conflict).sum()
    }
}

#[derive(Debug, Clone, Default)]
pub struct Options {
    pub destination: Option<String>,
    pub partner: Option<String>,
    pub fix: bool,
    /// Told after every page read; the CLI prints it. None: nothing is told (library use, tests).
    pub progress: Option<Progress>,
    /// Set to stop (SIGTERM, Ctrl-C): the page being read is abandoned and reconcile ends with an error
    /// saying it was stopped; nothing half-compared is reported or fixed.
    pub stop: Option<tokio::sync::watch::Receiver<bool>>,
    /// Resources asked for per page (0: 1000, the most HFS serves).
    pub page_size: usize,
}

/// Where reconcile has got to, after one page.
#[derive(Debug, Clone, Copy)]
pub struct PageRead<'a> {
    pub destination: &'a str,
    pub resource_type: &'a str,
    /// Resources read so far, all types (those read while the source is still being mapped included).
    pub read: u64,
    /// Findings so far.
    pub not_in_sync: u64,
    pub seconds: f64,
    /// Whether that was the resource type's last page.
    pub type_done: bool,
}

/// What is told of reconcile's progress.
#[derive(Clone)]
pub struct Progress(pub std::sync::Arc<dyn Fn(&PageRead<'_>) + Send + Sync>);

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Progress(..)")
    }
}

struct Run<'a> {
    engine: &'a Engine,
    opts: &'a Options,
    /// What each destination should hold (filled while the destinations are read).
    expected: &'a std::sync::Mutex<expected::Sets>,
    report: ReconcileReport,
    counts: BTreeMap<(String, String, String), Summary>,
    started: Instant,
    /// Deletions and re-sends queued by `--fix`.
    queued: u64,
    /// Resources read so far, for the progress.
    received: u64,
}

impl Run<'_> {
    #[allow(clippy::too_many_arguments)]
    fn note(
        &mut self,
        dest: &str,
        partner: &str,
        resource_type: &str,
        id: &str,
        class: Option<Class>,
        detail: String,
        fix: Option<String>,
    ) {
        let key = (dest.to_string(), partner.to_string(), resource_type.to_string());
        self.counts
            .entry(key)
            .or_insert_with(|| Summary {
                destination: dest.to_string(),
                partner: partner.to_string(),
                resource_type: resource_type.to_string(),
                ..Default::default()
            })
            .add(class);
        if let Some(class) = class {
            self.report.findings_total += 1;
            if self.report.findings.len() < MAX_LISTED {
                self.report.findings.push(Finding {
                    destination: dest.to_string(),
                    partner: partner.to_string(),
                    resource_type: resource_type.to_string(),
                    id: id.to_string(),
                    class,
                    detail,
                    fix,
                });
            }
        }
    }

    fn progress(&self, destination: &str, resource_type: &str, type_done: bool) {
        if let Some(Progress(tell)) = &self.opts.progress {
            tell(&PageRead {
                destination,
                resource_type,
                read: self.received,
                not_in_sync: self.report.findings_total,
                seconds: self.started.elapsed().as_secs_f64(),
                type_done,
            });
        }
    }

    fn expected_lock(&self) -> std::sync::MutexGuard<'_, expected::Sets> {
        self.expected.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn wanted(&self, partner: &str) -> bool {
        self.opts.partner.as_deref().is_none_or(|p| p == partner)
    }

    /// Reads and compares one destination. Reading starts at once, for the types the ledger knows; what is read
    /// before the source is mapped (`mapped` turns true) waits, compactly, to be judged; the types only the
    /// expected set has are read once it is whole. With `--fix` nothing is read before then (the repairs need
    /// each resource whole), and the types are read one after another in name order, so that deletions are
    /// queued as they always were: a person's Encounters before their Patient.
    async fn destination(&mut self, dest: &Arc<Destination>, mut mapped: watch::Receiver<bool>) -> anyhow::Result<()> {
        let store = self.engine.store.clone();
        let mut stop = self.opts.stop.clone();
        let one_at_a_time = self.opts.fix;
        if one_at_a_time {
            wait_mapped(&mut mapped, stop.as_mut(), &dest.name).await?;
        }
        let tag = match &self.opts.partner {
            Some(p) => format!("{TAG_SYSTEM}|{p}"),
            None => format!("{TAG_SYSTEM}|"),
        };
        let page_size = if self.opts.page_size == 0 { PAGE } else { self.opts.page_size };
        let mut readers = read::Readers::new(dest.clone(), store.clone(), tag, page_size, self.opts.fix);
        // The types known so far, and those of them not started yet.
        let mut types: BTreeSet<String> = store.ledger_types(&dest.name).await?.into_iter().collect();
        let mut queue: VecDeque<String> = types.iter().cloned().collect();
        let mut reading = 0;
        let mut whole = false;
        let mut waiting: Vec<read::ReadPage> = Vec::new();
        let mut held = 0;
        loop {
            if !whole && *mapped.borrow() {
                whole = true;
                for t in self.expected_lock().types(&dest.name) {
                    if types.insert(t.clone()) {
                        queue.push_back(t);
                    }
                }
                queue.make_contiguous().sort();
                for page in std::mem::take(&mut waiting) {
                    self.judge(dest, page).await?;
                }
            }
            while reading == 0 || !one_at_a_time {
                let Some(t) = queue.pop_front() else { break };
                if t != "Provenance" {
                    readers.start(&t);
                    reading += 1;
                }
            }
            if whole && queue.is_empty() {
                readers.close();
            }
            let page = tokio::select! {
                () = stopped(stop.as_mut()) => anyhow::bail!("reconcile stopped while reading from {}", dest.name),
                changed = mapped.changed(), if !whole => {
                    changed.map_err(|_| anyhow::anyhow!("the source was not mapped"))?;
                    continue;
                }
                page = readers.next(), if whole || held < READ_AHEAD => page,
            };
            let Some(page) = page else { break };
            let page = page?;
            let (resource_type, last) = (page.resource_type.clone(), page.last);
            self.received += page.resources.len() as u64;
            if last {
                reading -= 1;
            }
            if whole {
                self.judge(dest, page).await?;
            } else {
                held += page.resources.len();
                waiting.push(page);
            }
            self.progress(&dest.name, &resource_type, last);
        }
        self.missing(dest).await?;
        self.expected_lock().drop_destination(&dest.name);
        Ok(())
    }

    /// What was expected but not found.
    async fn missing(&mut self, dest: &Destination) -> anyhow::Result<()> {
        let store = self.engine.store.clone();
        let unseen = self.expected_lock().unseen(&dest.name);
        for page in unseen.chunks(PAGE) {
            let keys: Vec<ResourceKey> = page.iter().map(|(t, id, _)| ResourceKey::new(t, id)).collect();
            let ledger: std::collections::HashMap<ResourceKey, LedgerEntry> =
                store.ledger_get_many(&dest.name, &keys).await?.into_iter().map(|e| (e.key.clone(), e)).collect();
            let conflicts = store.conflicts_open_among(&dest.name, &keys).await?;
            let mut forget = Vec::new();
            for ((_, _, partner), key) in page.iter().zip(keys) {
                let led = ledger.get(&key);
                if led.is_some_and(|l| l.linked) {
                    continue; // someone else's Patient: found by identifier, not by our tag
                }
                let (class, detail, fix) = if conflicts.contains(&key) {
                    (Class::Conflict, "waiting for an admin: connector conflicts list", None)
                } else {
                    let detail = if led.is_some() { "deleted there" } else { "not delivered yet" };
                    let fix = if self.opts.fix && led.is_some() {
                        forget.push(key.clone());
                        Some("planned again".to_string())
                    } else {
                        self.opts.fix.then(|| "queued by the sync cycle".to_string())
                    };
                    (Class::Missing, detail, fix)
                };
                self.note(&dest.name, partner, &key.resource_type, &key.id, Some(class), detail.into(), fix);
            }
            if !forget.is_empty() {
                store.ledger_forget(&dest.name, &forget).await?;
            }
        }
        Ok(())
    }
}

/// Where the planning pass hands over what a destination should hold.
pub type ExpectedTx = mpsc::Sender<(String, Vec<Expected>)>;

/// Waits until the source is mapped (or reconcile is stopped).
async fn wait_mapped(
    mapped: &mut watch::Receiver<bool>,
    stop: Option<&mut watch::Receiver<bool>>,
    dest: &str,
) -> anyhow::Result<()> {
    tokio::select! {
        () = stopped(stop) => anyhow::bail!("reconcile stopped before reading from {dest}"),
        r = mapped.wait_for(|m| *m) => r.map(drop).map_err(|_| anyhow::anyhow!("the source was not mapped")),
    }
}

/// Resolves once `stop` is set; never without one.
async fn stopped(stop: Option<&mut watch::Receiver<bool>>) {
    match stop {
        Some(s) => crate::context::stopped(s).await,
        None => std::future::pending().await,
    }
}

/// Runs a reconcile. `expect` maps one partner's sources and hands over what each destination should hold of
/// them, a chunk at a time, to the sender it is given (the planning stage's `Engine::expect` in `sync`). With
/// `fix`, the repairs are queued and counted in `fixed.queued`; the caller delivers them (`Engine::reconcile`
/// runs the cycle).
pub async fn run<E, F>(engine: &Engine, opts: &Options, expect: E) -> anyhow::Result<ReconcileReport>
where
    E: Fn(String, ExpectedTx) -> F,
    F: std::future::Future<Output = anyhow::Result<()>>,
{
    let Some(lock) = engine.store.try_lead("reconcile").await? else {
        anyhow::bail!("another reconcile is running against this state store; try again when it has finished");
    };
    let result = run_locked(engine, opts, expect).await;
    let _ = lock.release().await;
    result
}

async fn run_locked<E, F>(engine: &Engine, opts: &Options, expect: E) -> anyhow::Result<ReconcileReport>
where
    E: Fn(String, ExpectedTx) -> F,
    F: std::future::Future<Output = anyhow::Result<()>>,
{
    let dests: Vec<&std::sync::Arc<Destination>> = engine
        .destinations
        .iter()
        .filter(|d| opts.destination.as_deref().is_none_or(|only| only == d.name))
        // A write-only destination (HL7 v2) cannot be read back: there is nothing to compare with.
        .filter(|d| d.transport.capabilities().read)
        .collect();
    if dests.is_empty() {
        anyhow::bail!("no destination \"{}\" in the config", opts.destination.as_deref().unwrap_or_default());
    }
    let partners: Vec<String> = engine
        .config
        .partners
        .iter()
        .filter(|p| opts.partner.as_deref().is_none_or(|only| only == p.id))
        .map(|p| p.id.clone())
        .collect();
    if partners.is_empty() {
        anyhow::bail!("no partner \"{}\" in the config", opts.partner.as_deref().unwrap_or_default());
    }
    let sets = std::sync::Mutex::new(expected::Sets::default());
    let mut run = Run {
        engine,
        opts,
        expected: &sets,
        report: ReconcileReport::default(),
        counts: BTreeMap::new(),
        started: Instant::now(),
        queued: 0,
        received: 0,
    };
    for d in &dests {
        // What a run of an earlier version may have left in the store; nothing is written there now.
        engine.store.expected_clear(&d.name).await?;
    }
    // What should be there (the source under today's consent, for every destination at once) is mapped while
    // what is there is read; any of the three failing ends the others.
    let (tx, mut rx) = mpsc::channel::<(String, Vec<Expected>)>(8);
    let (mapped_tx, mapped_rx) = watch::channel(false);
    let expecting = async {
        for p in &partners {
            expect(p.clone(), tx.clone()).await.with_context(|| format!("mapping partner {p}"))?;
        }
        drop(tx);
        anyhow::Ok(())
    };
    let collecting = async {
        while let Some((dest, items)) = rx.recv().await {
            // The planning pass plans for every destination; only those being reconciled are kept.
            if dests.iter().any(|d| d.name == dest) {
                sets.lock().unwrap_or_else(std::sync::PoisonError::into_inner).add(&dest, items);
            }
        }
        // Every sender is gone: the set is whole.
        let _ = mapped_tx.send(true);
        anyhow::Ok(())
    };
    let comparing = async {
        for d in &dests {
            run.destination(d, mapped_rx.clone()).await?;
        }
        anyhow::Ok(())
    };
    tokio::try_join!(expecting, collecting, comparing)?;
    if opts.fix {
        // The re-sends and deletions are queued; the caller runs the cycle that delivers them.
        run.report.fixed = Some(FixReport { queued: run.queued, ..Default::default() });
    }
    // Types are read side by side: list the findings a type at a time, as they were when read in turn.
    run.report.findings.sort_by(|a, b| (&a.destination, &a.resource_type).cmp(&(&b.destination, &b.resource_type)));
    run.report.summaries = run.counts.into_values().collect();
    run.report.seconds = run.started.elapsed().as_secs_f64();
    Ok(run.report)
}
