//! Deliver: drains a destination's outbox. Rows are leased in order (per patient), Patients are matched to
//! ones that already exist there, references to linked Patients are rewritten, and writes go out as
//! transaction bundles with `If-Match`. Transient failures are retried with exponential backoff and jitter
//! (honouring `Retry-After`); a bundle the server refuses is split until the refused resource is found, and
//! that one alone goes to the dead letter with the server's OperationOutcome. A destination that keeps failing
//! trips its circuit breaker and is paused.

pub mod auth;
pub mod fhir;
pub mod http;
pub mod limit;
pub mod paging;
pub mod profile;
pub mod transport;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use chrono::Utc;
use serde_json::Value;
use tracing::{error, info, warn};

use crate::config::{Config, DestinationConfig, Profile};
use crate::model::{AuditAction, ConflictStatus};
use crate::policy::{Origin, Permit, Policy, Verdict};
use crate::store::{AuditEntry, LedgerEntry, Op, OutboxRow, ResourceKey, SendIntent, Store, StoreError};
use limit::{Breaker, RateLimiter};
use transport::{Method, Transport, TransportError, Write, Written};

const NHS_SYSTEM: &str = "https://fhir.nhs.uk/Id/nhs-number";

/// What every destination of one configuration shares, given when it is built.
#[derive(Clone, Default)]
pub struct Shared {
    /// The sharing rules.
    pub policy: Arc<Policy>,
    /// The installation's salt for element fingerprints (the state store's).
    pub salt: Arc<str>,
    /// Resource types whose changes on both sides are merged when they touch different elements.
    pub auto_merge: Arc<std::collections::HashSet<String>>,
}

/// A destination as the delivery loop sees it.
pub struct Destination {
    pub name: String,
    pub profile: Profile,
    pub batch_size: usize,
    pub concurrency: usize,
    pub max_attempts: usize,
    pub timeout: Duration,
    /// How long rows wait after every attempt failed.
    pub defer: chrono::Duration,
    pub transport: Box<dyn Transport>,
    pub breaker: Breaker,
    /// The sharing rules, checked again for every row just before it is sent.
    pub policy: Arc<Policy>,
    /// Delete what it holds but may no longer hold.
    pub retract: bool,
    /// The installation's salt for element fingerprints (the state store's).
    pub salt: Arc<str>,
    /// Resource types whose changes on both sides are merged when they touch different elements.
    pub auto_merge: Arc<std::collections::HashSet<String>>,
}

impl Destination {
    pub fn from_config(name: &str, d: &DestinationConfig, config: &Config, shared: &Shared) -> anyhow::Result<Self> {
        let timeout = Duration::from_secs(d.timeout_seconds.max(1));
        let limiter = Arc::new(RateLimiter::per_second(d.rate_limit_per_second));
        let token = match &d.auth {
            Some(a) => Some(auth::TokenProvider::new(
                &a.token_url,
                &a.client_id,
                a.client_secret(config, name)?,
                Duration::from_secs(a.renew_before_seconds),
                timeout,
            )),
            None => None,
        };
        let transport: Box<dyn Transport> = match d.transport {
            crate::config::TransportKind::Fhir => {
                Box::new(fhir::FhirTransport::new(&d.base_url, timeout, limiter, token, d.org_public_id.clone())?)
            }
        };
        Ok(Self::new(name, d, transport, shared))
    }

    pub fn new(name: &str, d: &DestinationConfig, transport: Box<dyn Transport>, shared: &Shared) -> Self {
        Self {
            name: name.to_string(),
            profile: d.profile,
            batch_size: d.batch_size.max(1),
            concurrency: d.concurrency.max(1),
            max_attempts: d.max_attempts.max(1),
            timeout: Duration::from_secs(d.timeout_seconds.max(1)),
            defer: chrono::Duration::seconds(i64::try_from(d.defer_seconds).unwrap_or(60)),
            transport,
            breaker: Breaker::new(d.breaker_failures, Duration::from_secs(d.breaker_cooldown_seconds)),
            policy: shared.policy.clone(),
            retract: d.retract,
            salt: shared.salt.clone(),
            auto_merge: shared.auto_merge.clone(),
        }
    }

    /// How long a lease must last to cover a bundle's retries.
    fn lease_for(&self) -> Duration {
        let per_try = self.timeout + Duration::from_secs(30);
        per_try * u32::try_from(self.max_attempts).unwrap_or(10) + Duration::from_secs(60)
    }
}

/// What one delivery pass did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct DeliveryReport {
    pub destination: String,
    /// Resources written (created, updated or deleted).
    pub written: u64,
    /// Patients found already on the destination and linked instead of created.
    pub linked: u64,
    pub dead_lettered: u64,
    /// Rows the sharing rules stopped just before sending (consent changed after they were planned).
    pub withheld: u64,
    /// Ledger entries forgotten because a retracted Patient had others linked to it: those records must be
    /// planned and sent again (the sync cycle does that at once).
    pub relink: u64,
    /// Rows put back for a later attempt after transient failures.
    pub deferred: u64,
    /// Updates merged with changes made on the destination by others (which were kept).
    pub merged: u64,
    /// Updates not sent because the same elements were changed on the destination: conflicts for an admin.
    pub conflicts: u64,
    pub bundles: u64,
    pub breaker_open: bool,
}

/// The intent of a disclosure about to be sent (retractions need none: they disclose nothing).
fn intent_of(dest: &Destination, row: &OutboxRow, write: &Write, permit: Option<&Permit>) -> Option<SendIntent> {
    let body = write.body.as_ref().filter(|_| write.method == Method::Put)?;
    Some(SendIntent {
        destination: dest.name.clone(),
        resource_type: write.resource_type.clone(),
        resource_id: row.item.key.id.clone(),
        held_hash: crate::conflict::content_hash(body),
        remote_id: write.id.clone(),
        patient: row.item.patient.clone(),
        origin: row.item.origin.clone(),
        content_hash: row.item.content_hash.clone(),
        agreement: permit.map(|p| p.agreement.clone()),
        lawful_basis: permit.map(|p| p.lawful_basis.clone()),
        consent: permit.and_then(|p| p.consent.clone()),
        since: Utc::now(),
    })
}

/// Settles writes sent earlier whose outcome was never recorded (the connector stopped, or the answer was
/// lost, after sending): reads each from the destination; one it holds is audited as disclosed and recorded
/// in the ledger, one it does not hold is forgotten. Unreachable: tried again on the next pass.
pub async fn settle_intents(store: &Store, dest: &Destination) -> Result<usize, StoreError> {
    let mut settled = 0;
    for intent in store.intents_due(&dest.name, Utc::now(), 500).await? {
        let found = match dest.transport.read(&intent.resource_type, &intent.remote_id).await {
            Ok(found) => found,
            Err(e) => {
                warn!(destination = %dest.name, error = %e, "Could not settle writes in doubt; trying again on the next pass.");
                break;
            }
        };
        let landed = found.filter(|f| crate::conflict::content_hash(&f.resource) == intent.held_hash);
        let origin = intent.origin.as_deref().and_then(Origin::decode);
        match landed {
            Some(f) => {
                let entry = LedgerEntry {
                    destination: dest.name.clone(),
                    key: ResourceKey::new(intent.resource_type.clone(), intent.resource_id.clone()),
                    remote_id: intent.remote_id.clone(),
                    version_id: f.version_id.clone(),
                    content_hash: intent.content_hash.clone(),
                    patient: intent.patient.clone(),
                    updated_at: Utc::now(),
                    origin: intent.origin.clone(),
                    held_hash: Some(intent.held_hash.clone()),
                    sent_version: f.version_id.clone(),
                    ..LedgerEntry::default()
                };
                let audit = AuditEntry {
                    at: Utc::now(),
                    action: AuditAction::Disclosed,
                    destination: Some(dest.name.clone()),
                    person: intent.patient.clone(),
                    resource_type: Some(intent.resource_type.clone()),
                    resource_id: Some(intent.resource_id.clone()),
                    version_id: f.version_id.clone(),
                    content_hash: Some(intent.content_hash.clone()),
                    partner: origin.as_ref().map(|o| o.partner.clone()),
                    category: origin.as_ref().map(|o| o.category.as_str().to_string()),
                    agreement: intent.agreement.clone(),
                    lawful_basis: intent.lawful_basis.clone(),
                    consent: intent.consent.clone(),
                    reason: Some(format!(
                        "sent at {} and found there afterwards: the connector stopped or lost the answer before recording it",
                        intent.since.to_rfc3339()
                    )),
                    ..AuditEntry::default()
                };
                let audited = intent.origin.as_deref() != Some(crate::policy::AUDIT_ORIGIN);
                if audited {
                    store.intent_settle(&intent, Some((&entry, &audit))).await?;
                } else {
                    store.intent_settle(&intent, None).await?;
                }
                info!(destination = %dest.name, resource_type = %intent.resource_type, resource = %intent.resource_id, "A write in doubt had landed; audited and recorded now.");
            }
            None => store.intent_settle(&intent, None).await?,
        }
        settled += 1;
    }
    Ok(settled)
}

/// Drains the destination's outbox until it is empty, the circuit opens, or shutdown is asked for.
/// The first bundle goes alone (it carries the lowest rows, Organizations among them), then `concurrency`
/// workers share the rest.
pub async fn deliver(
    store: &Store,
    dest: &Arc<Destination>,
    owner: &str,
    shutdown: &tokio::sync::watch::Receiver<bool>,
) -> Result<DeliveryReport, StoreError> {
    let report = Arc::new(Mutex::new(DeliveryReport { destination: dest.name.clone(), ..Default::default() }));
    settle_intents(store, dest).await?;
    let more =
        worker(store.clone(), dest.clone(), owner.to_string(), shutdown.clone(), report.clone(), Some(1)).await?;
    if more {
        let mut set = tokio::task::JoinSet::new();
        for i in 0..dest.concurrency {
            set.spawn(worker(
                store.clone(),
                dest.clone(),
                format!("{owner}/{i}"),
                shutdown.clone(),
                report.clone(),
                None,
            ));
        }
        while let Some(r) = set.join_next().await {
            match r {
                Ok(r) => {
                    r?;
                }
                Err(e) => error!(destination = %dest.name, error = %e, "Delivery worker failed."),
            }
        }
    }
    let r = report.lock().unwrap_or_else(|p| p.into_inner()).clone();
    // Delivered rows took their bodies (personal data) with them: see them gone from the WAL as well.
    if r.written + r.linked + r.withheld + r.merged > 0
        && let Err(e) = store.checkpoint().await
    {
        warn!(destination = %dest.name, error = %e, "Checkpoint after delivery failed; it is tried again after the next pass.");
    }
    Ok(r)
}

/// Leases and sends bundles; returns whether the outbox may hold more.
async fn worker(
    store: Store,
    dest: Arc<Destination>,
    owner: String,
    shutdown: tokio::sync::watch::Receiver<bool>,
    report: Arc<Mutex<DeliveryReport>>,
    max_bundles: Option<usize>,
) -> Result<bool, StoreError> {
    let mut bundles = 0usize;
    loop {
        if *shutdown.borrow() {
            return Ok(false);
        }
        if !dest.breaker.allows() {
            report.lock().unwrap_or_else(|p| p.into_inner()).breaker_open = true;
            return Ok(false);
        }
        if max_bundles.is_some_and(|m| bundles >= m) {
            return Ok(true);
        }
        let rows = store.lease(&dest.name, &owner, dest.batch_size, dest.lease_for(), Utc::now()).await?;
        if rows.is_empty() {
            return Ok(false);
        }
        bundles += 1;
        let r = process(&store, &dest, rows).await?;
        let mut total = report.lock().unwrap_or_else(|p| p.into_inner());
        total.written += r.written;
        total.linked += r.linked;
        total.dead_lettered += r.dead_lettered;
        total.withheld += r.withheld;
        total.relink += r.relink;
        total.deferred += r.deferred;
        total.merged += r.merged;
        total.conflicts += r.conflicts;
        total.bundles += r.bundles;
        if r.deferred > 0 {
            // Transient trouble: stop this pass; the rows wait for their not-before time.
            return Ok(false);
        }
    }
}

fn patient_key(reference: &str) -> Option<ResourceKey> {
    let id = reference.strip_prefix("Patient/")?;
    Some(ResourceKey { resource_type: "Patient".into(), id: id.to_string() })
}

/// The identifier a Patient is matched by: the NHS number, else the partner's own (first) identifier.
fn match_identifier(patient: &Value) -> Option<String> {
    let ids = patient["identifier"].as_array()?;
    let pick = ids
        .iter()
        .find(|i| i["system"] == NHS_SYSTEM)
        .or_else(|| ids.iter().find(|i| i["system"].is_string() && i["value"].is_string()))?;
    Some(format!("{}|{}", pick["system"].as_str()?, pick["value"].as_str()?))
}

fn rewrite_references(v: &mut Value, links: &HashMap<String, String>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m.iter_mut() {
                if k == "reference" {
                    if let Value::String(r) = child
                        && let Some(to) = links.get(r.as_str())
                    {
                        *r = to.clone();
                    }
                } else {
                    rewrite_references(child, links);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|c| rewrite_references(c, links)),
        _ => {}
    }
}

pub use crate::conflict::comparable;

fn ledger_entry(dest: &str, row: &OutboxRow, remote_id: &str, version: Option<String>, linked: bool) -> LedgerEntry {
    LedgerEntry {
        destination: dest.to_string(),
        key: row.item.key.clone(),
        remote_id: remote_id.to_string(),
        version_id: version,
        content_hash: row.item.content_hash.clone(),
        linked,
        patient: row.item.patient.clone(),
        updated_at: Utc::now(),
        origin: row.item.origin.clone(),
        ..LedgerEntry::default()
    }
}

/// The ledger entry after a write (or after finding the destination already holds the outcome): `held` is
/// what the destination now holds, `source` the partner's version it reflects.
#[allow(clippy::too_many_arguments)]
fn held_entry(
    dest: &Destination,
    row: &OutboxRow,
    remote_id: &str,
    version: Option<String>,
    held: &Value,
    source: &Value,
    previous: Option<&LedgerEntry>,
    remote_edits: bool,
    written: bool,
) -> LedgerEntry {
    let held_hash = crate::conflict::content_hash(held);
    let prev_hash = previous.and_then(|p| {
        if p.held_hash.as_deref() == Some(held_hash.as_str()) { p.prev_hash.clone() } else { p.held_hash.clone() }
    });
    let sent_version = if written { version.clone() } else { previous.and_then(|p| p.sent_version.clone()) };
    LedgerEntry {
        sent_version,
        source_fp: Some(crate::conflict::encode(&crate::conflict::fingerprints(&dest.salt, source))),
        held_hash: Some(held_hash),
        prev_hash,
        remote_edits,
        ..ledger_entry(&dest.name, row, remote_id, version, false)
    }
}

/// The audit entry for a write that landed (or a Patient linked): what went where, and what allowed it.
fn audit_entry(
    dest: &str,
    row: &OutboxRow,
    action: AuditAction,
    version: Option<&str>,
    permit: Option<&Permit>,
) -> AuditEntry {
    let origin = row.item.origin.as_deref().and_then(Origin::decode);
    AuditEntry {
        at: Utc::now(),
        action,
        destination: Some(dest.to_string()),
        person: row.item.patient.clone(),
        resource_type: Some(row.item.key.resource_type.clone()),
        resource_id: Some(row.item.key.id.clone()),
        version_id: version.map(String::from),
        content_hash: (row.item.op == Op::Upsert).then(|| row.item.content_hash.clone()),
        partner: origin.as_ref().map(|o| o.partner.clone()),
        category: origin.as_ref().map(|o| o.category.as_str().to_string()),
        agreement: permit.map(|p| p.agreement.clone()),
        lawful_basis: permit.map(|p| p.lawful_basis.clone()),
        consent: permit.and_then(|p| p.consent.clone()),
        reason: (row.item.op == Op::Delete)
            .then(|| "no longer allowed there (consent or agreement changed); retract = true".to_string()),
        ..AuditEntry::default()
    }
}

/// The rules again, for rows about to go out: the person's consent may have changed since they were
/// planned. Rows the rules now refuse are withheld (removed from the outbox, audited); returns the
/// permits of the rest. Deletes (retractions) always go.
async fn check_policy(
    store: &Store,
    dest: &Destination,
    rows: Vec<OutboxRow>,
    report: &mut DeliveryReport,
) -> Result<(Vec<OutboxRow>, HashMap<i64, Permit>), StoreError> {
    let persons: Vec<String> = {
        let mut v: Vec<String> = rows.iter().filter_map(|r| r.item.patient.clone()).collect();
        v.sort();
        v.dedup();
        v
    };
    let consents = store.consent_current(&persons).await?;
    let mut permits = HashMap::new();
    let mut keep = Vec::with_capacity(rows.len());
    for row in rows {
        if row.item.op == Op::Delete || row.item.origin.as_deref() == Some(crate::policy::AUDIT_ORIGIN) {
            keep.push(row);
            continue;
        }
        let verdict = match row.item.origin.as_deref().and_then(Origin::decode) {
            Some(origin) => {
                let consent = row.item.patient.as_ref().and_then(|p| consents.get(p));
                dest.policy.decide_resource(
                    &dest.name,
                    dest.profile,
                    &origin,
                    &row.item.key.resource_type,
                    row.item.patient.as_deref(),
                    consent,
                )
            }
            None => {
                Verdict::Withhold("planned without its origin (by an older connector); it will be planned again".into())
            }
        };
        match verdict {
            Verdict::Send(permit) => {
                permits.insert(row.seq, permit);
                keep.push(row);
            }
            Verdict::Withhold(reason) => {
                let mut audit = audit_entry(&dest.name, &row, AuditAction::Withheld, None, None);
                audit.reason = Some(reason.clone());
                audit.content_hash = None;
                store.withhold_row(&row, &reason, &audit).await?;
                info!(destination = %dest.name, resource_type = %row.item.key.resource_type, resource = %row.item.key.id, reason = %reason, "Withheld before sending.");
                report.withheld += 1;
            }
        }
    }
    Ok((keep, permits))
}

/// Sends one leased batch.
async fn process(store: &Store, dest: &Destination, rows: Vec<OutboxRow>) -> Result<DeliveryReport, StoreError> {
    let mut report = DeliveryReport { bundles: 1, ..Default::default() };
    let (rows, permits) = check_policy(store, dest, rows, &mut report).await?;
    if rows.is_empty() {
        return Ok(report);
    }
    let keys: Vec<ResourceKey> = rows.iter().map(|r| r.item.key.clone()).collect();
    let ledger: HashMap<ResourceKey, LedgerEntry> =
        store.ledger_get_many(&dest.name, &keys).await?.into_iter().map(|e| (e.key.clone(), e)).collect();
    let open_conflicts = store.conflicts_open_among(&dest.name, &keys).await?;

    // Patient references of this batch that point at linked (someone else's) Patients.
    let mut links: HashMap<String, String> = HashMap::new();
    // Each queued body, parsed once: `None` for a delete, `Err` for a body that is not JSON.
    let bodies: Vec<Result<Option<Value>, String>> = rows
        .iter()
        .map(|r| r.item.body.as_deref().map(serde_json::from_str::<Value>).transpose().map_err(|e| e.to_string()))
        .collect();
    // (The rows' ordering group is the person, not a Patient: read the references from the bodies.)
    let referenced: Vec<ResourceKey> = {
        let mut v: Vec<ResourceKey> = Vec::new();
        for body in bodies.iter().filter_map(|b| b.as_ref().ok().and_then(Option::as_ref)) {
            crate::validate::each_reference(body, &mut |_, reference| v.extend(patient_key(reference)));
        }
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v.dedup();
        v
    };
    for e in store.ledger_get_many(&dest.name, &referenced).await? {
        if e.remote_id != e.key.id {
            links.insert(format!("Patient/{}", e.key.id), format!("Patient/{}", e.remote_id));
        }
    }

    let mut to_send: Vec<(OutboxRow, Write)> = Vec::new();
    // Patients this batch creates or links, by matching identifier: a second partner's Patient for the same
    // person in the same batch links to the first instead of searching before it exists (and duplicating).
    let mut batch_patients: HashMap<String, String> = HashMap::new();
    for (row, body) in rows.into_iter().zip(bodies) {
        let known = ledger.get(&row.item.key);
        if let Some(entry) = known.filter(|e| e.linked) {
            // Someone else's record (a hospital's Patient in PKB, say): we reference it and never write it.
            let mut updated = entry.clone();
            updated.content_hash = row.item.content_hash.clone();
            updated.updated_at = Utc::now();
            store.complete(&row, Some(&updated), None).await?;
            continue;
        }
        let body = match body {
            Ok(b) => b,
            Err(e) => {
                store.dead_letter(row.seq, &format!("the queued body is not JSON: {e}")).await?;
                report.dead_lettered += 1;
                continue;
            }
        };
        if row.item.op == Op::Upsert && row.item.key.resource_type == "Patient" && known.is_none() {
            let identifier = body.as_ref().and_then(match_identifier);
            if let Some(first) = identifier.as_ref().and_then(|i| batch_patients.get(i)).cloned() {
                let entry = ledger_entry(&dest.name, &row, &first, None, true);
                let audit = audit_entry(&dest.name, &row, AuditAction::Linked, None, permits.get(&row.seq));
                store.complete(&row, Some(&entry), Some(&audit)).await?;
                links.insert(format!("Patient/{}", row.item.key.id), format!("Patient/{first}"));
                report.linked += 1;
                continue;
            }
            let matched = match_patient(store, dest, &row, body.as_ref(), permits.get(&row.seq)).await;
            if let (Some(i), Ok(found)) = (&identifier, &matched) {
                batch_patients.insert(i.clone(), found.clone().unwrap_or_else(|| row.item.key.id.clone()));
            }
            match matched {
                Ok(Some(remote_id)) => {
                    links.insert(format!("Patient/{}", row.item.key.id), format!("Patient/{remote_id}"));
                    report.linked += 1;
                    continue;
                }
                Ok(None) => {}
                Err(Outcome::Defer(msg)) => {
                    store.retry_later(row.seq, Utc::now() + dest.defer, &msg).await?;
                    report.deferred += 1;
                    continue;
                }
                Err(Outcome::Dead(msg)) => {
                    error!(destination = %dest.name, resource = %row.item.key.id, "Patient match is ambiguous; dead-lettered.");
                    store.dead_letter(row.seq, &msg).await?;
                    report.dead_lettered += 1;
                    continue;
                }
            }
        }
        let remote_id = known.map_or(row.item.key.id.clone(), |e| e.remote_id.clone());
        let body = body.map(|mut b| {
            rewrite_references(&mut b, &links);
            b["id"] = Value::String(remote_id.clone());
            b
        });
        let write = Write {
            resource_type: row.item.key.resource_type.clone(),
            id: remote_id,
            method: if row.item.op == Op::Delete { Method::Delete } else { Method::Put },
            body,
            if_match: known.and_then(|e| e.version_id.clone()),
        };
        if write.method == Method::Put && open_conflicts.contains(&row.item.key) {
            conflict_refresh(store, dest, &row, &write, known).await?;
            report.conflicts += 1;
            continue;
        }
        if write.method == Method::Put && known.is_some_and(|e| e.remote_edits) {
            // The destination holds others' changes (kept): read and merge, never write over them.
            merge_and_send(store, dest, &row, &write, known, permits.get(&row.seq), &mut report).await?;
            continue;
        }
        to_send.push((row, write));
    }
    send_rows(store, dest, to_send, &ledger, &permits, &mut report).await?;
    Ok(report)
}

enum Outcome {
    Defer(String),
    Dead(String),
}

/// Looks the person up on the destination before creating them. Returns the id of someone else's Patient
/// to link to (after recording the link), or `None` to create ours.
async fn match_patient(
    store: &Store,
    dest: &Destination,
    row: &OutboxRow,
    body: Option<&Value>,
    permit: Option<&Permit>,
) -> Result<Option<String>, Outcome> {
    let Some(identifier) = body.and_then(match_identifier) else { return Ok(None) };
    let found = send_retrying(dest, || dest.transport.find("Patient", &identifier))
        .await
        .map_err(|e| Outcome::Defer(format!("looking the Patient up on {}: {e}", dest.name)))?;
    let others: Vec<_> = found.iter().filter(|f| f.id != row.item.key.id).collect();
    if found.iter().any(|f| f.id == row.item.key.id) || others.is_empty() {
        return Ok(None);
    }
    if others.len() > 1 {
        return Err(Outcome::Dead(format!(
            "{} Patients on {} share this person's identifier; the connector will not guess which is right: merge them there, then `connector outbox retry {}`",
            others.len(),
            dest.name,
            row.seq
        )));
    }
    let other = others[0];
    let entry = ledger_entry(&dest.name, row, &other.id, other.version_id.clone(), true);
    let audit = audit_entry(&dest.name, row, AuditAction::Linked, other.version_id.as_deref(), permit);
    store.complete(row, Some(&entry), Some(&audit)).await.map_err(|e| Outcome::Defer(e.to_string()))?;
    info!(destination = %dest.name, resource = %row.item.key.id, remote = %other.id, "Linked to an existing Patient.");
    Ok(Some(other.id.clone()))
}

/// The longest `Retry-After` waited for within a delivery pass; a longer one defers the rows instead.
const MAX_WAIT_IN_PASS: Duration = Duration::from_secs(60);

/// Calls the destination with retries on transient failures: exponential backoff with jitter, honouring
/// `Retry-After`.
async fn send_retrying<T, F, Fut>(dest: &Destination, call: F) -> Result<T, TransportError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, TransportError>>,
{
    let backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(30))
        .with_max_times(dest.max_attempts.saturating_sub(1))
        .with_jitter();
    call.retry(backoff)
        .when(TransportError::is_transient)
        .adjust(|e: &TransportError, next: Option<Duration>| {
            // A wait longer than a worker should hold its lease ends this pass: the rows are deferred
            // until then instead (the server's value is already clamped to an hour).
            match e.retry_after() {
                Some(ra) if ra > MAX_WAIT_IN_PASS => None,
                Some(ra) => next.map(|d| ra.max(d.min(ra))),
                None => next,
            }
        })
        .notify(|e: &TransportError, after: Duration| {
            warn!(destination = %dest.name, error = %e, retry_in_ms = after.as_millis() as u64, "Retrying.");
        })
        .await
}

/// Sends rows as bundles, splitting a refused bundle to find the resource the server refuses.
async fn send_rows(
    store: &Store,
    dest: &Destination,
    rows: Vec<(OutboxRow, Write)>,
    ledger: &HashMap<ResourceKey, LedgerEntry>,
    permits: &HashMap<i64, Permit>,
    report: &mut DeliveryReport,
) -> Result<(), StoreError> {
    let mut stack: Vec<Vec<(OutboxRow, Write)>> = vec![rows];
    while let Some(chunk) = stack.pop() {
        if chunk.is_empty() {
            continue;
        }
        let writes: Vec<Write> = chunk.iter().map(|(_, w)| w.clone()).collect();
        // Before anything leaves: should the answer never be recorded (a crash, a lost answer), the next pass
        // finds out whether it landed and audits it then.
        let intents: Vec<SendIntent> =
            chunk.iter().filter_map(|(row, write)| intent_of(dest, row, write, permits.get(&row.seq))).collect();
        store.intents_record(&intents).await?;
        match send_retrying(dest, || dest.transport.send(&writes)).await {
            Ok(results) => {
                dest.breaker.success();
                for ((row, write), Written { version_id }) in chunk.iter().zip(results) {
                    let action =
                        if write.method == Method::Put { AuditAction::Disclosed } else { AuditAction::Retracted };
                    let audit = audit_entry(&dest.name, row, action, version_id.as_deref(), permits.get(&row.seq));
                    let audited = row.item.origin.as_deref() != Some(crate::policy::AUDIT_ORIGIN);
                    let entry = match &write.body {
                        Some(body) => held_entry(
                            dest,
                            row,
                            &write.id,
                            version_id,
                            body,
                            body,
                            ledger.get(&row.item.key),
                            false,
                            true,
                        ),
                        None => ledger_entry(&dest.name, row, &write.id, version_id, false),
                    };
                    let entry = (write.method == Method::Put).then_some(&entry);
                    store.complete(row, entry, audited.then_some(&audit)).await?;
                    if write.method == Method::Delete
                        && write.resource_type == "Patient"
                        && let Some(person) = &row.item.patient
                    {
                        let n = store.forget_links_to(&dest.name, &write.id, person).await?;
                        report.relink += n;
                        if n > 0 {
                            info!(destination = %dest.name, person = %person, forgotten = n, "A retracted Patient had others linked to it; the person's records will be sent again.");
                        }
                    }
                    report.written += 1;
                }
            }
            Err(TransportError::Rejected { .. } | TransportError::PreconditionFailed { .. }) if chunk.len() > 1 => {
                let mut first = chunk;
                let second = first.split_off(first.len() / 2);
                stack.push(second);
                stack.push(first);
            }
            Err(TransportError::Rejected { status, message, outcome }) => {
                let (row, write) = &chunk[0];
                error!(destination = %dest.name, resource_type = %write.resource_type, resource = %write.id, status, "Rejected; dead-lettered.");
                let detail = serde_json::json!({ "status": status, "message": message, "outcome": outcome });
                store.dead_letter(row.seq, &detail.to_string()).await?;
                report.dead_lettered += 1;
            }
            Err(TransportError::PreconditionFailed { .. }) => {
                let (row, write) = &chunk[0];
                if write.method == Method::Delete {
                    // Retracting something changed there since: the person's consent still rules; delete the
                    // current version.
                    let mut again = write.clone();
                    again.if_match = None;
                    stack.push(vec![(row.clone(), again)]);
                    continue;
                }
                merge_and_send(store, dest, row, write, ledger.get(&row.item.key), permits.get(&row.seq), report)
                    .await?;
            }
            Err(e) => {
                // Transient after every retry, or a setup problem: everything left waits for a later pass.
                let opened = dest.breaker.failure();
                error!(destination = %dest.name, error = %e, circuit_opened = opened, "Delivery failed; rows deferred.");
                let wait = e.retry_after().and_then(|ra| chrono::Duration::from_std(ra).ok()).unwrap_or_default();
                let later = Utc::now() + dest.defer.max(wait);
                for (row, _) in chunk.iter().chain(stack.iter().flatten()) {
                    store.retry_later(row.seq, later, &e.full_text()).await?;
                    report.deferred += 1;
                }
                return Ok(());
            }
        }
    }
    Ok(())
}

/// An update to a resource that may have been changed on the destination by someone else (`If-Match`
/// failed, or the ledger says others' changes are kept there): read the current version and compare three
/// ways. Changes to different elements are merged (when `[conflicts] auto_merge` allows it for the type) and
/// written with `If-Match` on the version read; the same element changed on both sides is a conflict, recorded
/// for an admin, and nothing is written. Our own earlier write that landed without the ledger knowing (a crash
/// in between) shows up as "already holds the outcome" and is adopted.
async fn merge_and_send(
    store: &Store,
    dest: &Destination,
    row: &OutboxRow,
    write: &Write,
    known: Option<&LedgerEntry>,
    permit: Option<&Permit>,
    report: &mut DeliveryReport,
) -> Result<(), StoreError> {
    let Some(source) = write.body.as_ref() else { return Ok(()) };
    let base = known.and_then(|k| crate::conflict::decode(k.source_fp.as_deref()));
    for _ in 0..3 {
        let current = match send_retrying(dest, || dest.transport.read(&write.resource_type, &write.id)).await {
            Ok(c) => c,
            Err(e) => {
                store.retry_later(row.seq, Utc::now() + dest.defer, &e.to_string()).await?;
                report.deferred += 1;
                return Ok(());
            }
        };
        let Some(found) = current else {
            let c = conflict_record(dest, row, write, known, vec!["(deleted on the destination)".into()], None);
            return open_conflict(store, dest, row, known, c, report).await;
        };
        let stale =
            known.and_then(|k| k.prev_hash.as_deref()) == Some(crate::conflict::content_hash(&found.resource).as_str());
        let rules = crate::conflict::Rules {
            salt: &dest.salt,
            auto_merge: dest.auto_merge.contains(&write.resource_type),
            stale,
        };
        match crate::conflict::three_way(rules, base.as_ref(), source, &found.resource) {
            crate::conflict::Merge::Unchanged { kept_remote } => {
                let entry = held_entry(
                    dest,
                    row,
                    &write.id,
                    found.version_id.clone(),
                    &found.resource,
                    source,
                    known,
                    !kept_remote.is_empty(),
                    false,
                );
                let audit = if kept_remote.is_empty() {
                    audit_entry(&dest.name, row, AuditAction::Disclosed, found.version_id.as_deref(), permit)
                } else {
                    let mut a =
                        audit_entry(&dest.name, row, AuditAction::RemoteChange, found.version_id.as_deref(), None);
                    a.reason = Some(format!("kept changes made on {} to: {}", dest.name, kept_remote.join(", ")));
                    a.content_hash = None;
                    a
                };
                store.complete(row, Some(&entry), Some(&audit)).await?;
                return Ok(());
            }
            crate::conflict::Merge::Write { body, kept_remote } => {
                let mut w = write.clone();
                w.body = Some(body.clone());
                w.if_match = found.version_id.clone();
                let intent: Vec<SendIntent> = intent_of(dest, row, &w, permit).into_iter().collect();
                store.intents_record(&intent).await?;
                match send_retrying(dest, || dest.transport.send(std::slice::from_ref(&w))).await {
                    Ok(results) => {
                        let version = results.into_iter().next().and_then(|r| r.version_id);
                        let entry = held_entry(
                            dest,
                            row,
                            &write.id,
                            version.clone(),
                            &body,
                            source,
                            known,
                            !kept_remote.is_empty(),
                            true,
                        );
                        let mut audit =
                            audit_entry(&dest.name, row, AuditAction::Disclosed, version.as_deref(), permit);
                        if !kept_remote.is_empty() {
                            audit.reason = Some(format!(
                                "merged: kept changes made on {} to: {}",
                                dest.name,
                                kept_remote.join(", ")
                            ));
                            report.merged += 1;
                            info!(destination = %dest.name, resource_type = %write.resource_type, resource = %write.id, kept = %kept_remote.join(","), "Merged with changes made on the destination.");
                        }
                        store.complete(row, Some(&entry), Some(&audit)).await?;
                        report.written += 1;
                        return Ok(());
                    }
                    Err(TransportError::PreconditionFailed { .. }) => continue, // changed again meanwhile
                    Err(TransportError::Rejected { status, message, outcome }) => {
                        let detail = serde_json::json!({ "status": status, "message": message, "outcome": outcome });
                        store.dead_letter(row.seq, &detail.to_string()).await?;
                        report.dead_lettered += 1;
                        return Ok(());
                    }
                    Err(e) => {
                        store.retry_later(row.seq, Utc::now() + dest.defer, &e.to_string()).await?;
                        report.deferred += 1;
                        return Ok(());
                    }
                }
            }
            crate::conflict::Merge::Conflict { elements } => {
                let mut c = conflict_record(dest, row, write, known, elements, Some(&found));
                if let Some(v) = c.base_version.clone().as_deref() {
                    // The version last written, for the admin to compare with (when the server keeps history).
                    if let Ok(Some(b)) = dest.transport.vread(&write.resource_type, &write.id, v).await {
                        c.base_json = Some(b.resource.to_string());
                    }
                }
                return open_conflict(store, dest, row, known, c, report).await;
            }
        }
    }
    store
        .retry_later(row.seq, Utc::now() + dest.defer, "changed on the destination while merging; will try again")
        .await?;
    report.deferred += 1;
    Ok(())
}

fn conflict_record(
    dest: &Destination,
    row: &OutboxRow,
    write: &Write,
    known: Option<&LedgerEntry>,
    elements: Vec<String>,
    remote: Option<&transport::Found>,
) -> crate::store::ConflictRecord {
    let now = Utc::now();
    crate::store::ConflictRecord {
        destination: dest.name.clone(),
        resource_type: write.resource_type.clone(),
        resource_id: row.item.key.id.clone(),
        remote_id: write.id.clone(),
        patient: row.item.patient.clone(),
        origin: row.item.origin.clone(),
        elements,
        base_version: known.and_then(|k| k.sent_version.clone().or_else(|| k.version_id.clone())),
        source_hash: row.item.content_hash.clone(),
        source_json: write.body.as_ref().map(Value::to_string),
        remote_version: remote.and_then(|r| r.version_id.clone()),
        remote_json: remote.map(|r| r.resource.to_string()),
        status: ConflictStatus::Open,
        created_at: now,
        updated_at: now,
        ..Default::default()
    }
}

/// Records the conflict and takes the row off the outbox without writing: the ledger notes the partner's
/// version as planned (so it is not planned again every cycle) but keeps the base and version as they were.
async fn open_conflict(
    store: &Store,
    dest: &Destination,
    row: &OutboxRow,
    known: Option<&LedgerEntry>,
    c: crate::store::ConflictRecord,
    report: &mut DeliveryReport,
) -> Result<(), StoreError> {
    let mut audit = audit_entry(&dest.name, row, AuditAction::Conflict, c.remote_version.as_deref(), None);
    audit.content_hash = Some(row.item.content_hash.clone());
    audit.reason = Some(format!("changed on both sides: {}; nothing was written", c.elements.join(", ")));
    let (id, new) = store.conflict_open(&c, &audit).await?;
    let mut entry = known.cloned().unwrap_or_else(|| ledger_entry(&dest.name, row, &c.remote_id, None, false));
    entry.content_hash = row.item.content_hash.clone();
    entry.updated_at = Utc::now();
    store.complete(row, Some(&entry), None).await?;
    report.conflicts += 1;
    if new {
        warn!(destination = %dest.name, resource_type = %c.resource_type, resource = %c.resource_id, conflict = id, elements = %c.elements.join(","), "Changed on both sides; not overwritten. See `connector conflicts show`.");
    }
    Ok(())
}

/// A newer partner version of a resource already in conflict: the conflict shows it; nothing is written.
async fn conflict_refresh(
    store: &Store,
    dest: &Destination,
    row: &OutboxRow,
    write: &Write,
    known: Option<&LedgerEntry>,
) -> Result<(), StoreError> {
    if let Some(mut c) = store.conflict_open_for(&dest.name, &row.item.key).await? {
        c.source_hash = row.item.content_hash.clone();
        c.source_json = write.body.as_ref().map(Value::to_string);
        c.updated_at = Utc::now();
        let audit = audit_entry(&dest.name, row, AuditAction::Conflict, None, None);
        store.conflict_open(&c, &audit).await?;
    }
    let mut entry = known.cloned().unwrap_or_else(|| ledger_entry(&dest.name, row, &write.id, None, false));
    entry.content_hash = row.item.content_hash.clone();
    entry.updated_at = Utc::now();
    store.complete(row, Some(&entry), None).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patient_matching_identifier_prefers_the_nhs_number() {
        let p = serde_json::json!({"identifier": [{"system": "https://id.example/hub/client", "value": "H1"}, {"system": NHS_SYSTEM, "value": "9990000018"}]});
        assert_eq!(match_identifier(&p).unwrap(), format!("{NHS_SYSTEM}|9990000018"));
        let p = serde_json::json!({"identifier": [{"system": "https://id.example/hub/client", "value": "H1"}]});
        assert_eq!(match_identifier(&p).unwrap(), "https://id.example/hub/client|H1");
    }

    #[test]
    fn references_to_linked_patients_are_rewritten() {
        let mut v =
            serde_json::json!({"subject": {"reference": "Patient/ours"}, "x": [{"reference": "Patient/other"}]});
        let links = HashMap::from([("Patient/ours".to_string(), "Patient/theirs".to_string())]);
        rewrite_references(&mut v, &links);
        assert_eq!(v["subject"]["reference"], "Patient/theirs");
        assert_eq!(v["x"][0]["reference"], "Patient/other");
    }
}
