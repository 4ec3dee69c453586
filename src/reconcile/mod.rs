//! Reconcile: proves that each destination holds what it should. What it should hold is the latest mapped
//! source data under today's consent (a dry-run plan, recorded in the `expected` table); what it does hold is
//! read from the destination in pages (the resources carrying the connector's partner tag), compared page by
//! page with the ledger and the expected set, so memory stays flat however many resources there are.
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

pub mod pull;
pub mod resolve;

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::Context;
use chrono::Utc;
use serde_json::Value;

use crate::context::Context as Engine;
use crate::deliver::Destination;
use crate::deliver::transport::Found;
use crate::store::{Expected, LedgerEntry, Op, OutboxItem, ResourceKey};

pub use crate::model::fhir::SOURCE_PARTNER_TAG as TAG_SYSTEM;
pub use crate::plan::shape::tag;

/// Resources per page read from a destination (HFS serves at most 1000).
const PAGE: usize = 1000;
/// Findings listed one by one in a report; beyond that only counted.
const MAX_LISTED: usize = 1000;

fn partner_of(resource: &Value) -> Option<String> {
    resource["meta"]["tag"]
        .as_array()?
        .iter()
        .find(|c| c["system"] == TAG_SYSTEM)
        .and_then(|c| c["code"].as_str())
        .map(str::to_string)
}

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
}

/// Where reconcile has got to, after one page.
#[derive(Debug, Clone, Copy)]
pub struct PageRead<'a> {
    pub destination: &'a str,
    pub resource_type: &'a str,
    /// Resources read so far, all types.
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
    report: ReconcileReport,
    counts: BTreeMap<(String, String, String), Summary>,
    started: Instant,
    /// Deletions and re-sends queued by `--fix`.
    queued: u64,
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
                read: self.report.read,
                not_in_sync: self.report.findings_total,
                seconds: self.started.elapsed().as_secs_f64(),
                type_done,
            });
        }
    }

    fn wanted(&self, partner: &str) -> bool {
        self.opts.partner.as_deref().is_none_or(|p| p == partner)
    }

    /// Compares one page of resources read from the destination.
    async fn page(&mut self, dest: &Destination, resource_type: &str, resources: Vec<Value>) -> anyhow::Result<()> {
        let store = &self.engine.store;
        let keys: Vec<ResourceKey> =
            resources.iter().filter_map(|r| r["id"].as_str()).map(|id| ResourceKey::new(resource_type, id)).collect();
        let ledger: std::collections::HashMap<ResourceKey, LedgerEntry> =
            store.ledger_get_many(&dest.name, &keys).await?.into_iter().map(|e| (e.key.clone(), e)).collect();
        let expected: std::collections::HashMap<ResourceKey, Expected> =
            store.expected_see(&dest.name, &keys).await?.into_iter().map(|e| (e.key.clone(), e)).collect();
        let conflicts = store.conflicts_open_among(&dest.name, &keys).await?;
        let mut deletions = Vec::new();
        for resource in resources {
            let Some(id) = resource["id"].as_str().map(str::to_string) else { continue };
            let key = ResourceKey::new(resource_type, &id);
            let led = ledger.get(&key);
            let exp = expected.get(&key);
            let partner = exp
                .map(|e| e.partner.clone())
                .or_else(|| partner_of(&resource))
                .or_else(|| {
                    led.and_then(|l| l.origin.as_ref()).and_then(crate::model::Provenance::partner).map(str::to_string)
                })
                .unwrap_or_else(|| "?".into());
            if !self.wanted(&partner) {
                continue;
            }
            self.report.read += 1;
            if led.is_some_and(|l| l.linked) {
                continue;
            }
            if conflicts.contains(&key) {
                self.note(
                    &dest.name,
                    &partner,
                    resource_type,
                    &id,
                    Some(Class::Conflict),
                    "waiting for an admin: connector conflicts list".into(),
                    None,
                );
                continue;
            }
            let hash = crate::conflict::content_hash(&resource);
            let version = resource["meta"]["versionId"].as_str().map(str::to_string);
            let found = Found { id: id.clone(), version_id: version.clone(), resource };
            let (class, detail, fix): (Option<Class>, String, Option<String>) = match (exp, led) {
                (None, led) => {
                    let deletable = led.is_none() || dest.retract;
                    let fix = if !self.opts.fix {
                        None
                    } else if deletable {
                        if led.is_none() {
                            // The outbox deletes only what the ledger says is there: record it first.
                            store.ledger_accept(&adopted(dest, &found, None), None).await?;
                        }
                        deletions.push(OutboxItem {
                            destination: dest.name.clone(),
                            key: key.clone(),
                            patient: led.and_then(|l| l.patient.clone()),
                            op: Op::Delete,
                            content_hash: String::new(),
                            body: None,
                            origin: None,
                        });
                        Some("deletion queued".into())
                    } else {
                        Some(format!("kept: retract = false for {}", dest.name))
                    };
                    let detail = if led.is_some() {
                        "no longer in the source, or no longer allowed there"
                    } else {
                        "carries the connector's tag but the connector neither sent nor expects it"
                    };
                    (Some(Class::Unexpected), detail.into(), fix)
                }
                (Some(_), None) => {
                    let fix = if self.opts.fix {
                        // Adopt what is there as the base, so the update goes out with If-Match.
                        let fp = crate::conflict::fingerprints(&dest.salt, &found.resource);
                        store.ledger_accept(&adopted(dest, &found, Some(crate::conflict::encode(&fp))), None).await?;
                        Some("adopted; update queued".into())
                    } else {
                        None
                    };
                    (
                        Some(Class::Stale),
                        "there, but the ledger does not know it (state restored from an older backup?)".into(),
                        fix,
                    )
                }
                (Some(e), Some(l)) => {
                    if l.prev_hash.as_deref() == Some(hash.as_str()) {
                        let fix = if self.opts.fix {
                            let mut entry = l.clone();
                            entry.content_hash = String::new(); // planned again; the merge sees the stale copy
                            store.ledger_accept(&entry, None).await?;
                            Some("current version queued".into())
                        } else {
                            None
                        };
                        (
                            Some(Class::Stale),
                            "holds an older version the connector wrote (restored or replayed there)".into(),
                            fix,
                        )
                    } else if l.held_hash.as_deref() != Some(hash.as_str()) {
                        let changed = crate::conflict::decode(l.source_fp.as_deref())
                            .map(|b| crate::conflict::changed_from(&dest.salt, &b, &found.resource).join(", "))
                            .unwrap_or_default();
                        let fix = if self.opts.fix {
                            pull::note_remote(store, dest, l, &found).await?;
                            Some("accepted as a change made there (kept)".into())
                        } else {
                            None
                        };
                        (Some(Class::Drifted), format!("changed there since the connector last looked: {changed}"), fix)
                    } else if e.content_hash != l.content_hash {
                        let fix = self.opts.fix.then(|| "queued by the sync cycle".to_string());
                        (Some(Class::Stale), "the source has changed since; not delivered yet".into(), fix)
                    } else {
                        (None, String::new(), None)
                    }
                }
            };
            self.note(&dest.name, &partner, resource_type, &id, class, detail, fix);
        }
        if !deletions.is_empty() {
            self.queued += self.engine.store.enqueue(&deletions, Utc::now()).await? as u64;
        }
        Ok(())
    }

    /// Reads every resource of ours of one type on the destination, a page at a time.
    async fn scan(&mut self, dest: &Destination, resource_type: &str) -> anyhow::Result<()> {
        let tag = match &self.opts.partner {
            Some(p) => format!("{TAG_SYSTEM}|{p}"),
            None => format!("{TAG_SYSTEM}|"),
        };
        let first = format!("{resource_type}?_tag={}&_count={PAGE}", crate::deliver::fhir::url_encode(&tag));
        let mut pages = crate::deliver::paging::Pages::new(&dest.name, &first, crate::deliver::paging::MAX_PAGES);
        let mut next = Some(first);
        while let Some(path) = next.take() {
            let read = dest.transport.page(&path);
            let page = match self.opts.stop.clone() {
                Some(mut stop) => tokio::select! {
                    page = read => page,
                    () = crate::context::stopped(&mut stop) => anyhow::bail!("reconcile stopped while reading {resource_type} from {}", dest.name),
                },
                None => read.await,
            }
            .with_context(|| format!("reading {resource_type} from {}", dest.name))?;
            let resources: Vec<Value> = page["entry"]
                .as_array()
                .map(|es| {
                    es.iter()
                        .filter(|e| e["search"]["mode"].as_str().is_none_or(|m| m == "match"))
                        .map(|e| e["resource"].clone())
                        .filter(|r| r["resourceType"] == resource_type)
                        .collect()
                })
                .unwrap_or_default();
            self.page(dest, resource_type, resources).await?;
            self.progress(&dest.name, resource_type, page_next(&page).is_none());
            next = pages.next(&page).with_context(|| format!("reading {resource_type} from {}", dest.name))?;
        }
        Ok(())
    }

    /// What was expected but not found.
    async fn missing(&mut self, dest: &Destination) -> anyhow::Result<()> {
        let store = self.engine.store.clone();
        let mut after: Option<ResourceKey> = None;
        loop {
            let page = store.expected_unseen(&dest.name, after.as_ref(), PAGE).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.key.clone());
            let keys: Vec<ResourceKey> = page.iter().map(|e| e.key.clone()).collect();
            let ledger: std::collections::HashMap<ResourceKey, LedgerEntry> =
                store.ledger_get_many(&dest.name, &keys).await?.into_iter().map(|e| (e.key.clone(), e)).collect();
            let conflicts = store.conflicts_open_among(&dest.name, &keys).await?;
            let mut forget = Vec::new();
            for e in &page {
                let led = ledger.get(&e.key);
                if led.is_some_and(|l| l.linked) {
                    continue; // someone else's Patient: found by identifier, not by our tag
                }
                if conflicts.contains(&e.key) {
                    self.note(
                        &dest.name,
                        &e.partner,
                        &e.key.resource_type,
                        &e.key.id,
                        Some(Class::Conflict),
                        "waiting for an admin: connector conflicts list".into(),
                        None,
                    );
                    continue;
                }
                let detail = if led.is_some() { "deleted there" } else { "not delivered yet" };
                let fix = if self.opts.fix && led.is_some() {
                    forget.push(e.key.clone());
                    Some("planned again".to_string())
                } else {
                    self.opts.fix.then(|| "queued by the sync cycle".to_string())
                };
                self.note(
                    &dest.name,
                    &e.partner,
                    &e.key.resource_type,
                    &e.key.id,
                    Some(Class::Missing),
                    detail.into(),
                    fix,
                );
            }
            if !forget.is_empty() {
                store.ledger_forget(&dest.name, &forget).await?;
            }
        }
        Ok(())
    }
}

/// A ledger entry for a resource found on the destination that the ledger did not know (content hash empty,
/// so the next plan sends the source's version).
fn adopted(dest: &Destination, found: &Found, source_fp: Option<String>) -> LedgerEntry {
    LedgerEntry {
        destination: dest.name.clone(),
        key: ResourceKey::new(found.resource["resourceType"].as_str().unwrap_or_default(), &found.id),
        remote_id: found.id.clone(),
        version_id: found.version_id.clone(),
        content_hash: String::new(),
        updated_at: Utc::now(),
        source_fp,
        held_hash: Some(crate::conflict::content_hash(&found.resource)),
        ..Default::default()
    }
}

fn page_next(page: &Value) -> Option<&str> {
    page["link"].as_array()?.iter().find(|l| l["relation"] == "next")?["url"].as_str()
}

/// Runs a reconcile. `expect` maps one partner's sources into the `expected` table (the planning stage's
/// `Engine::expect` in `sync`). With `fix`, the repairs are queued and counted in `fixed.queued`; the
/// caller delivers them (`Engine::reconcile` runs the cycle).
pub async fn run<E, F>(engine: &Engine, opts: &Options, expect: E) -> anyhow::Result<ReconcileReport>
where
    E: Fn(String) -> F,
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
    E: Fn(String) -> F,
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
    let mut run = Run {
        engine,
        opts,
        report: ReconcileReport::default(),
        counts: BTreeMap::new(),
        started: Instant::now(),
        queued: 0,
    };
    for d in &dests {
        engine.store.expected_clear(&d.name).await?;
    }
    // What should be there: the source under today's consent (recorded for every destination at once).
    for p in &partners {
        expect(p.clone()).await.with_context(|| format!("mapping partner {p}"))?;
    }
    for d in &dests {
        let mut types: Vec<String> = engine.store.ledger_types(&d.name).await?;
        types.extend(engine.store.expected_types(&d.name).await?);
        types.retain(|t| t != "Provenance");
        types.sort();
        types.dedup();
        for t in &types {
            run.scan(d, t).await?;
        }
        run.missing(d).await?;
        engine.store.expected_clear(&d.name).await?;
    }
    if opts.fix {
        // The re-sends and deletions are queued; the caller runs the cycle that delivers them.
        run.report.fixed = Some(FixReport { queued: run.queued, ..Default::default() });
    }
    run.report.summaries = run.counts.into_values().collect();
    run.report.seconds = run.started.elapsed().as_secs_f64();
    Ok(run.report)
}
