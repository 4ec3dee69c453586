//! Delivers a partner feed's queued documents: each item is checked against the sharing rules once more
//! (consent may have changed since the plan), the document is rendered in the feed's format and sent to its
//! target, and every item sent is recorded as an audited disclosure in the same transaction as the feed's
//! ledger. Failures that may pass are retried under the feed's [`RetryPolicy`] (shared with destinations), then
//! left in the outbox for a later run; a document the target refuses, or that keeps failing, becomes a dead
//! letter (`connector outbox list`). A backoff ends at once when the daemon stops; the document is then left
//! leased, and the daemon releases it on the way out.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use serde_json::{Value, json};
use tracing::{error, info, warn};

use super::target::{Document, Target};
use super::{Doc, DocItem, collection};
use crate::config::{FeedConfig, FeedFormat};
use crate::context::Context as Engine;
use crate::deliver::retry::RetryPolicy;
use crate::deliver::transport::TransportError;
use crate::model::AuditAction;
use crate::policy::{Audience, Origin, Permit, Verdict};
use crate::store::{AuditEntry, FeedItem, OutboxRow, ResourceKey};

/// Documents leased at a time.
const LEASE: usize = 16;

/// What one delivery pass did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct FeedDelivery {
    pub target: String,
    /// Documents sent.
    pub documents: usize,
    /// Items (resources) sent: each one an audited disclosure.
    pub items: usize,
    /// Items dropped at sending because the rules no longer allow them.
    pub withheld_at_sending: usize,
    /// Documents left in the outbox to try again later.
    pub deferred: usize,
    /// Documents that became dead letters.
    pub dead: usize,
}

/// Sends what the feed has queued, until nothing is due.
pub async fn deliver(
    engine: &Engine,
    feed: &FeedConfig,
    shutdown: &tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<FeedDelivery> {
    let target = Target::from_config(feed, &engine.config)?;
    let name = feed.name();
    let mut report = FeedDelivery { target: target.describe(), ..Default::default() };
    let lease_for = Duration::from_secs(feed.timeout_seconds.max(1) * 4 + 60);
    loop {
        if *shutdown.borrow() {
            break;
        }
        let rows = engine.store.lease(&name, &engine.owner, LEASE, lease_for, Utc::now()).await?;
        if rows.is_empty() {
            break;
        }
        for row in rows {
            if *shutdown.borrow() {
                // Left leased: the daemon releases its leases on the way out.
                break;
            }
            send_row(engine, feed, &target, &row, &mut report, shutdown).await?;
        }
    }
    if report.documents + report.dead + report.deferred > 0 {
        info!(
            feed = %name,
            documents = report.documents,
            items = report.items,
            withheld = report.withheld_at_sending,
            deferred = report.deferred,
            dead = report.dead,
            "Feed delivered."
        );
    }
    // Delivered documents took their bodies (personal data) out of the outbox: out of the WAL too.
    if report.documents > 0
        && let Err(e) = engine.store.checkpoint().await
    {
        tracing::warn!(feed = %name, error = %e, "Checkpoint after the feed failed; it is tried again after the next run.");
    }
    Ok(report)
}

async fn send_row(
    engine: &Engine,
    feed: &FeedConfig,
    target: &Target,
    row: &OutboxRow,
    report: &mut FeedDelivery,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let name = feed.name();
    let doc: Doc = match row.item.body.as_deref().map(serde_json::from_str) {
        Some(Ok(d)) => d,
        _ => {
            error!(feed = %name, seq = row.seq, "Feed document unreadable in the outbox; kept as a dead letter.");
            engine.store.dead_letter(row.seq, "unreadable feed document").await?;
            report.dead += 1;
            return Ok(());
        }
    };
    // The rules again, on today's consent.
    let consent = engine.store.consent_current(std::slice::from_ref(&doc.person)).await?;
    let statement = consent.get(&doc.person);
    let mut allowed: Vec<(&DocItem, Origin, Permit)> = Vec::new();
    for item in &doc.items {
        let Some(origin) = Origin::decode(&item.origin) else {
            report.withheld_at_sending += 1;
            continue;
        };
        match engine.policy.decide_for(&name, Audience::Partner(&feed.partner), &origin, true, statement) {
            Verdict::Send(permit) => allowed.push((item, origin, permit)),
            Verdict::Withhold(_) => report.withheld_at_sending += 1,
        }
    }
    if allowed.is_empty() {
        engine.store.feed_complete(row, &[], &[], Utc::now()).await?;
        return Ok(());
    }
    let resources: Vec<&Value> = allowed.iter().map(|(i, _, _)| &i.resource).collect();
    let docs = match render(engine, feed, target, &doc, &resources, row.seq) {
        Ok((d, skipped)) => {
            // Not in the files, so neither delivered nor disclosed (and sent again once a mapping exists).
            allowed.retain(|(i, _, _)| !skipped.contains(&format!("{}/{}", i.resource_type, i.id)));
            d
        }
        Err(e) => {
            error!(feed = %name, seq = row.seq, error = %e, "Feed document could not be rendered; kept as a dead letter.");
            engine.store.dead_letter(row.seq, &e.to_string()).await?;
            report.dead += 1;
            return Ok(());
        }
    };
    let policy = RetryPolicy::feed();
    let sent = policy
        .call(
            stop,
            || target.send(&docs),
            |e, after| {
                let retry_in_ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
                warn!(feed = %name, seq = row.seq, error = %e, retry_in_ms, "Retrying.");
            },
        )
        .await;
    match sent {
        Ok(()) => {
            let now = Utc::now();
            let reason = format!("partner feed ({}) to {}", format_name(feed.format), report.target);
            let mut delivered = Vec::with_capacity(allowed.len());
            let mut audit = Vec::with_capacity(allowed.len());
            for (item, origin, permit) in &allowed {
                delivered.push(FeedItem {
                    person: doc.person.clone(),
                    key: ResourceKey::new(&item.resource_type, &item.id),
                    content_hash: item.hash.clone(),
                });
                audit.push(AuditEntry {
                    at: now,
                    action: AuditAction::Disclosed,
                    destination: Some(name.clone()),
                    person: Some(doc.person.clone()),
                    resource_type: Some(item.resource_type.clone()),
                    resource_id: Some(item.id.clone()),
                    version_id: item.version.clone(),
                    content_hash: Some(item.hash.clone()),
                    partner: Some(origin.partner.clone()),
                    category: Some(origin.category.as_str().to_string()),
                    agreement: Some(permit.agreement.clone()),
                    lawful_basis: Some(permit.lawful_basis.clone()),
                    consent: permit.consent.clone(),
                    reason: Some(reason.clone()),
                    ..Default::default()
                });
            }
            engine.store.feed_complete(row, &delivered, &audit, now).await?;
            report.documents += 1;
            report.items += delivered.len();
        }
        Err(TransportError::Stopped) => report.deferred += 1,
        Err(e) if e.is_transient() && row.attempts + 1 < i32::try_from(feed.max_attempts).unwrap_or(i32::MAX) => {
            let wait = policy.defer_for(row.attempts, e.retry_after());
            let not_before = Utc::now() + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::minutes(1));
            warn!(feed = %name, seq = row.seq, attempt = row.attempts + 1, error = %e, "Feed delivery failed; will retry.");
            engine.store.retry_later(row.seq, not_before, &e.full_text()).await?;
            report.deferred += 1;
        }
        Err(e) => {
            error!(feed = %name, seq = row.seq, error = %e, "Feed document not delivered; kept as a dead letter for an admin (connector outbox list --dead).");
            engine.store.dead_letter(row.seq, &e.full_text()).await?;
            report.dead += 1;
        }
    }
    Ok(())
}

fn format_name(f: FeedFormat) -> &'static str {
    match f {
        FeedFormat::Bundle => "bundle",
        FeedFormat::Ndjson => "ndjson",
        FeedFormat::Csv => "csv",
    }
}

/// The files (or request bodies) of one document in the feed's format.
fn render(
    engine: &Engine,
    feed: &FeedConfig,
    target: &Target,
    doc: &Doc,
    resources: &[&Value],
    seq: i64,
) -> anyhow::Result<(Vec<Document>, Vec<String>)> {
    let stamp = Utc::now().format("%Y%m%dT%H%M%SZ");
    let stem = format!("{}-{stamp}-{seq:08}", feed.partner);
    if target.is_fhir() {
        let entries: Vec<Value> = resources
            .iter()
            .map(|r| {
                let t = r["resourceType"].as_str().unwrap_or_default();
                let id = r["id"].as_str().unwrap_or_default();
                json!({ "resource": crate::conflict::comparable(r), "request": { "method": "PUT", "url": format!("{t}/{id}") } })
            })
            .collect();
        let bundle = json!({ "resourceType": "Bundle", "type": "transaction", "entry": entries });
        return Ok((
            vec![Document {
                name: format!("{stem}.json"),
                content_type: "application/fhir+json",
                body: serde_json::to_vec(&bundle)?,
            }],
            Vec::new(),
        ));
    }
    Ok(match feed.format {
        FeedFormat::Bundle => {
            let base = engine.config.destinations.get(&feed.from).map(|d| d.fhir_url()).unwrap_or_default();
            let doc = Document {
                name: format!("{stem}.json"),
                content_type: "application/fhir+json",
                body: serde_json::to_vec_pretty(&collection(base, resources))?,
            };
            (vec![doc], Vec::new())
        }
        FeedFormat::Ndjson => {
            let mut body = Vec::new();
            for r in resources {
                serde_json::to_writer(&mut body, r)?;
                body.push(b'\n');
            }
            (
                vec![Document { name: format!("{stem}.ndjson"), content_type: "application/fhir+ndjson", body }],
                Vec::new(),
            )
        }
        FeedFormat::Csv => {
            let partner = &engine.catalog.partners[&feed.partner];
            let owned: Vec<Value> = resources.iter().map(|r| (*r).clone()).collect();
            let anchors: BTreeMap<String, BTreeMap<String, String>> = doc.anchors.clone();
            let csv = crate::mapping::reverse::render_csv(partner, &owned, &anchors)?;
            if !csv.skipped.is_empty() {
                warn!(feed = %feed.name(), skipped = csv.skipped.len(), "Resources with no reverse mapping left out of the CSV feed.");
            }
            let files = csv
                .files
                .into_iter()
                .map(|(file, text)| Document {
                    name: format!("{stem}-{file}"),
                    content_type: "text/csv; charset=utf-8",
                    body: text.into_bytes(),
                })
                .collect();
            (files, csv.skipped)
        }
    })
}
