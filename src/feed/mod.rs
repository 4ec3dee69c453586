//! Partner feeds: each partner receives, in its own system, the unified record of the people it supports.
//!
//! A feed run for partner A:
//! 1. maps A's own exports to find its clients: the people A has an open episode with (an EpisodeOfCare it
//!    manages, or a referral to it, that is active, on hold or waiting);
//! 2. reads each client's record from the central record (`from`, Cito): the Patient(s) the connector
//!    placed or linked there and any found by NHS number, and every resource of the feed's types that
//!    refers to them, including entries others made there directly;
//! 3. decides each resource under the sharing rules for `feed:A` (an agreement for its origin and category,
//!    the person's consent naming A, their restrictions; A's own records need no agreement), so nothing A
//!    may not see is ever queued;
//! 4. queues, through the same durable outbox as the destinations, one document per person holding what
//!    changed since A's last delivery (compared by content hash with the feed's ledger).
//!
//! Delivery ([`deliver`]) checks every item again just before sending, renders the document (Bundle,
//! NDJSON, or CSV in A's own layout through its reverse mappings), sends it (folder, FHIR endpoint,
//! webhook), and records each item as an audited disclosure in the same transaction as the feed's ledger.

pub mod deliver;
mod target;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use anyhow::Context;
use chrono::Utc;
use serde_json::{Value, json};
use tracing::{info, warn};

use crate::config::{FeedConfig, FeedFormat};
use crate::context::Context as Engine;
use crate::deliver::transport::Transport;
use crate::mapping::{self, MappedResource, Quarantined, Sink};
use crate::plan::{patient_of, person_group};
use crate::policy::{Audience, Origin, V3_ACT_CODE, V3_CONFIDENTIALITY, Verdict};
use crate::store::{Op, OutboxItem, ResourceKey};

use crate::model::JobName;
use crate::model::fhir::NHS_NUMBER_SYSTEM as NHS_SYSTEM;

/// Statuses of an episode or referral that is still open.
const OPEN_EPISODE: [&str; 4] = ["planned", "waitlist", "active", "onhold"];
const OPEN_REFERRAL: [&str; 3] = ["draft", "active", "on-hold"];

/// Pages of one resource type read for one client: far more than one person's record fills.
const MAX_PAGES_PER_CLIENT: usize = 1000;
/// Search results per page when reading a client's record.
const PAGE: usize = 200;

/// What one feed run planned.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct FeedPlan {
    pub feed: String,
    pub partner: String,
    pub rebuild: bool,
    /// People the partner has an open episode with.
    pub clients: usize,
    /// Clients whose consent does not let the partner receive their record: nothing of theirs is queued.
    pub clients_withheld: usize,
    /// Resources read from the central record for the clients who agreed.
    pub read: usize,
    /// Of those, kept back by the sharing rules (agreement, restrictions).
    pub withheld: usize,
    /// Allowed and unchanged since the last delivery.
    pub unchanged: usize,
    /// Allowed and new or changed: queued.
    pub queued_items: usize,
    /// Documents (one per person with something new) queued.
    pub queued_documents: usize,
    /// Delivered before but no longer in the feed (withheld now, or gone from the central record).
    pub dropped: usize,
    /// Why resources were withheld, with counts (no personal data).
    pub withheld_reasons: BTreeMap<String, usize>,
}

/// One of the partner's clients, from its own exports.
#[derive(Debug, Clone)]
struct Client {
    person: String,
    /// The partner's own Patient for them.
    own: Value,
}

/// One resource in a queued feed document.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct DocItem {
    pub resource_type: String,
    pub id: String,
    pub version: Option<String>,
    /// Content hash ([`crate::conflict::content_hash`]).
    pub hash: String,
    /// `partner|category|nfp|patient` (the partner is the central record's name for others' entries).
    pub origin: String,
    pub resource: Value,
}

/// The body of a queued feed document: one person's changes.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Doc {
    pub feed: String,
    pub partner: String,
    pub person: String,
    /// Central-record references -> the partner's own field values for them (its client id), for CSV.
    pub anchors: BTreeMap<String, BTreeMap<String, String>>,
    pub items: Vec<DocItem>,
}

/// The feed configured for `partner`.
pub fn feed_for<'a>(engine: &'a Engine, partner: &str) -> anyhow::Result<&'a FeedConfig> {
    engine.config.feeds.iter().find(|f| f.partner == partner).with_context(|| {
        let known: Vec<&str> = engine.config.feeds.iter().map(|f| f.partner.as_str()).collect();
        format!("no [[feed]] for partner \"{partner}\" in the config (feeds: {})", known.join(", "))
    })
}

/// Checks what the config cannot: a CSV feed needs a reverse mapping for each resource type it carries.
pub fn check(engine: &Engine, feed: &FeedConfig) -> anyhow::Result<()> {
    let partner = engine
        .catalog
        .partner(&feed.partner)
        .with_context(|| format!("feed for \"{}\": the partner has no mappings folder", feed.partner))?;
    if feed.format == FeedFormat::Csv {
        let missing: Vec<&str> =
            feed.resources.iter().filter(|t| !partner.reverse.contains_key(*t)).map(String::as_str).collect();
        if !missing.is_empty() {
            anyhow::bail!(
                "feed for \"{}\" is format = \"csv\" but {} has no reverse mapping for {}: add <kind>.reverse.toml \
                 beside the forward mapping (see mappings/README.md), or remove the type from the feed's resources",
                feed.partner,
                partner.file.parent().map(|p| p.display().to_string()).unwrap_or_default(),
                missing.join(", ")
            );
        }
    }
    if engine.destination(&feed.from).is_none() {
        anyhow::bail!("feed for \"{}\" reads from \"{}\", which is not a destination", feed.partner, feed.from);
    }
    Ok(())
}

/// Plans one feed run (see the module documentation). With `rebuild`, everything the feed delivered is
/// forgotten first, so every client's whole record is queued again. With `dry_run`, nothing is written.
pub async fn plan(engine: &Engine, feed: &FeedConfig, rebuild: bool, dry_run: bool) -> anyhow::Result<FeedPlan> {
    plan_until(engine, feed, rebuild, dry_run, None).await
}

/// [`plan`], stopping between clients once `stop` is true: the clients planned so far are queued, the rest
/// wait for the next run. (Never within a client: a record read in part would look like resources gone.)
async fn plan_until(
    engine: &Engine,
    feed: &FeedConfig,
    rebuild: bool,
    dry_run: bool,
    stop: Option<&tokio::sync::watch::Receiver<bool>>,
) -> anyhow::Result<FeedPlan> {
    check(engine, feed)?;
    let name = feed.name();
    let mut report = FeedPlan { feed: name.clone(), partner: feed.partner.clone(), rebuild, ..Default::default() };
    let clients = clients(engine, &feed.partner).await?;
    report.clients = clients.len();
    if rebuild && !dry_run {
        let (items, docs) = engine.store.feed_forget(&name).await?;
        info!(feed = %name, items, documents = docs, "Feed forgotten; every client's record is queued again.");
    }
    let source = engine.destination(&feed.from).with_context(|| format!("destination {}", feed.from))?.clone();
    let persons: Vec<String> = clients.iter().map(|c| c.person.clone()).collect();
    let consent = engine.store.consent_current(&persons).await?;
    let partner = &engine.catalog.partners[&feed.partner];
    let mut queue = Vec::new();
    for client in &clients {
        if stop.is_some_and(|s| *s.borrow()) {
            info!(feed = %name, "Stopping: the remaining clients are planned on the next run.");
            break;
        }
        let statement = consent.get(&client.person);
        let delivered = engine.store.feed_items(&name, &client.person).await?;
        // First the person: without their agreement that this partner receives their record, nothing.
        let person_origin = Origin {
            partner: feed.partner.clone(),
            category: crate::mapping::Category::GeneralHealth,
            not_for_patient: false,
            is_patient: true,
        };
        let verdict =
            engine.policy.decide_for(&name, Audience::Partner(&feed.partner), &person_origin, true, statement);
        if let Verdict::Withhold(why) = verdict {
            report.clients_withheld += 1;
            *report.withheld_reasons.entry(why).or_default() += 1;
            report.dropped += drop_delivered(engine, &name, delivered.keys().cloned().collect(), dry_run).await?;
            continue;
        }
        let (resources, origins, central_patients) =
            read_record(engine, source.transport.as_ref(), feed, client).await?;
        report.read += resources.len();
        let mut anchors = BTreeMap::new();
        if let Some(fields) = mapping::reverse::fields_of(partner, &client.own) {
            for p in &central_patients {
                anchors.insert(p.clone(), fields.clone());
            }
        }
        let mut items = Vec::new();
        let mut keep: BTreeSet<ResourceKey> = BTreeSet::new();
        for r in resources {
            let (Some(t), Some(id)) = (r["resourceType"].as_str(), r["id"].as_str()) else { continue };
            let key = ResourceKey::new(t, id);
            let origin = origins.get(&key).cloned().unwrap_or_else(|| others_origin(&feed.from, t, &r));
            match engine.policy.decide_for(&name, Audience::Partner(&feed.partner), &origin, true, statement) {
                Verdict::Withhold(why) => {
                    report.withheld += 1;
                    *report.withheld_reasons.entry(why).or_default() += 1;
                }
                Verdict::Send(_) => {
                    // A record the partner's own layout cannot hold (a required column with no value in
                    // it) is left out rather than sent half-empty or breaking the partner's import.
                    if feed.format == FeedFormat::Csv
                        && let Err(e) = mapping::reverse::render_csv(partner, std::slice::from_ref(&r), &anchors)
                    {
                        report.withheld += 1;
                        *report
                            .withheld_reasons
                            .entry(format!("{t}: cannot be written in the partner's CSV layout ({})", csv_hint(&e)))
                            .or_default() += 1;
                        continue;
                    }
                    let hash = crate::conflict::content_hash(&r);
                    keep.insert(key.clone());
                    if delivered.get(&key) == Some(&hash) {
                        report.unchanged += 1;
                        continue;
                    }
                    items.push(DocItem {
                        resource_type: t.to_string(),
                        id: id.to_string(),
                        version: r["meta"]["versionId"].as_str().map(str::to_string),
                        hash,
                        origin: origin.encode(),
                        resource: r,
                    });
                }
            }
        }
        let gone: Vec<ResourceKey> = delivered.keys().filter(|k| !keep.contains(*k)).cloned().collect();
        report.dropped += drop_delivered(engine, &name, gone, dry_run).await?;
        if items.is_empty() {
            continue;
        }
        report.queued_items += items.len();
        report.queued_documents += 1;
        let doc =
            Doc { feed: name.clone(), partner: feed.partner.clone(), person: client.person.clone(), anchors, items };
        let body = serde_json::to_string(&doc)?;
        queue.push(OutboxItem {
            destination: name.clone(),
            key: ResourceKey::new("Bundle", document_id(&name, &client.person)),
            patient: Some(client.person.clone()),
            op: Op::Upsert,
            content_hash: crate::store::sha256_hex(&body),
            body: Some(body),
            origin: None,
        });
    }
    // People delivered before who are no longer the partner's clients (episode closed).
    let current: BTreeSet<&String> = persons.iter().collect();
    for person in engine.store.feed_persons(&name).await? {
        if !current.contains(&person) {
            let gone = engine.store.feed_items(&name, &person).await?.into_keys().collect();
            report.dropped += drop_delivered(engine, &name, gone, dry_run).await?;
        }
    }
    if !dry_run {
        engine.store.enqueue(&queue, Utc::now()).await?;
    }
    info!(
        feed = %name,
        clients = report.clients,
        clients_withheld = report.clients_withheld,
        read = report.read,
        withheld = report.withheld,
        unchanged = report.unchanged,
        queued = report.queued_items,
        documents = report.queued_documents,
        dropped = report.dropped,
        "Feed planned."
    );
    Ok(report)
}

/// Why a resource does not fit the partner's CSV layout, naming the column but no value (the counts are
/// shown to admins and logged).
fn csv_hint(e: &mapping::reverse::ReverseError) -> String {
    use mapping::reverse::ReverseError as E;
    match e {
        E::Column { column, .. } => format!("no value for its column \"{column}\""),
        E::Unmatched { .. } => "not of the shape the partner's mapping makes".into(),
        other => other.to_string(),
    }
}

/// The outbox id of a person's feed document: the same for every run, so a newer plan replaces one not yet
/// delivered (it holds everything the older one did, being compared with the last delivery).
fn document_id(feed: &str, person: &str) -> String {
    crate::mapping::ids::resource_id(feed, "feed", "document", person)
}

/// Forgets delivered items that are no longer in the feed, so they are sent again if they come back.
async fn drop_delivered(engine: &Engine, feed: &str, keys: Vec<ResourceKey>, dry_run: bool) -> anyhow::Result<usize> {
    if keys.is_empty() {
        return Ok(0);
    }
    if !dry_run {
        engine.store.feed_drop(feed, &keys).await?;
    }
    Ok(keys.len())
}

/// The origin of an entry someone else made on the central record: the central record itself, with the
/// category its security labels give (mental health when labelled PSY, sexual health SEX, else general).
fn others_origin(from: &str, resource_type: &str, r: &Value) -> Origin {
    let labels: Vec<(&str, &str)> = r["meta"]["security"]
        .as_array()
        .map(|l| l.iter().filter_map(|c| Some((c["system"].as_str()?, c["code"].as_str()?))).collect())
        .unwrap_or_default();
    let has = |system: &str, code: &str| labels.iter().any(|(s, c)| *s == system && *c == code);
    let category = if has(V3_ACT_CODE, "SEX") {
        crate::mapping::Category::SexualHealth
    } else if has(V3_ACT_CODE, "PSY") || has(V3_ACT_CODE, "MH") || has(V3_CONFIDENTIALITY, "R") {
        crate::mapping::Category::MentalHealth
    } else {
        crate::mapping::Category::GeneralHealth
    };
    Origin {
        partner: from.to_string(),
        category,
        not_for_patient: has(V3_ACT_CODE, "NOPAT"),
        is_patient: resource_type == "Patient",
    }
}

/// Collects, from the partner's mapped exports, its Patients and which of them have an open episode.
#[derive(Default)]
struct ClientSink {
    org: String,
    patients: HashMap<String, Value>,
    open: BTreeSet<String>,
}

impl Sink for ClientSink {
    fn resource(&mut self, r: &MappedResource<'_>) -> std::io::Result<()> {
        let res = &r.resource();
        let ours = |v: &Value| v["reference"].as_str() == Some(self.org.as_str());
        let open = match r.resource_type {
            "Patient" => {
                self.patients.insert(format!("Patient/{}", r.id), res.clone());
                false
            }
            "EpisodeOfCare" => {
                OPEN_EPISODE.contains(&res["status"].as_str().unwrap_or_default())
                    && res["period"]["end"].is_null()
                    && ours(&res["managingOrganization"])
            }
            "ServiceRequest" => {
                OPEN_REFERRAL.contains(&res["status"].as_str().unwrap_or_default())
                    && res["performer"].as_array().is_some_and(|p| p.iter().any(ours))
            }
            _ => false,
        };
        if open && let Some(p) = patient_of(r.resource_type, r.id, res) {
            self.open.insert(p);
        }
        Ok(())
    }
    fn quarantined(&mut self, _: &Quarantined) -> std::io::Result<()> {
        Ok(())
    }
}

/// The partner's clients: the people it has an open episode with, from its own exports (read, not
/// recorded: the partner's ingest does that).
async fn clients(engine: &Engine, partner_id: &str) -> anyhow::Result<Vec<Client>> {
    let inputs = engine.inputs(partner_id)?;
    let catalog = engine.catalog.clone();
    let id = partner_id.to_string();
    let max_bytes = engine.config.limits.max_input_bytes;
    let sink = tokio::task::spawn_blocking(move || {
        let partner = &catalog.partners[&id];
        let mut sink = ClientSink { org: format!("Organization/{}", partner.organization_id), ..Default::default() };
        mapping::run_with_limit(partner, &inputs, &mut sink, Some(max_bytes)).map(|_| sink)
    })
    .await
    .context("the mapper stopped")?
    .with_context(|| format!("mapping {partner_id}'s exports to find its clients"))?;
    let mut by_person: BTreeMap<String, Client> = BTreeMap::new();
    for p in &sink.open {
        let Some(own) = sink.patients.get(p) else { continue };
        let person = person_group(p, own);
        by_person.entry(person.clone()).or_insert_with(|| Client { person, own: own.clone() });
    }
    Ok(by_person.into_values().collect())
}

/// The search parameter that finds a type's resources by their Patient.
fn patient_param(resource_type: &str) -> &'static str {
    match resource_type {
        "EpisodeOfCare" | "Consent" | "RelatedPerson" => "patient",
        _ => "subject",
    }
}

type Record = (Vec<Value>, HashMap<ResourceKey, Origin>, Vec<String>);

/// A client's record on the central record: the resources of the feed's types, the origin of those the
/// connector placed there (from the ledger), and the central Patient references.
async fn read_record(
    engine: &Engine,
    source: &dyn Transport,
    feed: &FeedConfig,
    client: &Client,
) -> anyhow::Result<Record> {
    let ledger = engine.store.ledger_for_person(&client.person).await?;
    let mut origins = HashMap::new();
    let mut patients: BTreeSet<String> = BTreeSet::new();
    for e in ledger.iter().filter(|e| e.destination == feed.from) {
        if let Some(o) = e.origin.as_ref().and_then(crate::model::Provenance::origin).cloned() {
            origins.insert(ResourceKey::new(&e.key.resource_type, &e.remote_id), o);
        }
        if e.key.resource_type == "Patient" {
            patients.insert(e.remote_id.clone());
        }
    }
    // Patients others created there (a hospital, the central record's own users) for the same NHS number.
    let nhs = client.own["identifier"]
        .as_array()
        .and_then(|ids| ids.iter().find(|i| i["system"] == NHS_SYSTEM).and_then(|i| i["value"].as_str()));
    if let Some(nhs) = nhs {
        let found = source
            .find("Patient", &format!("{NHS_SYSTEM}|{nhs}"))
            .await
            .with_context(|| format!("looking the client up on {} by NHS number", feed.from))?;
        patients.extend(found.into_iter().map(|f| f.id));
    }
    let mut seen: BTreeSet<ResourceKey> = BTreeSet::new();
    let mut out = Vec::new();
    for pid in &patients {
        if feed.resources.iter().any(|t| t == "Patient")
            && let Some(found) = source.read("Patient", pid).await.context("reading a Patient")?
            && seen.insert(ResourceKey::new("Patient", &found.id))
        {
            out.push(found.resource);
        }
        for t in feed.resources.iter().filter(|t| *t != "Patient") {
            let mut link = format!("{t}?{}=Patient/{pid}&_count={PAGE}", patient_param(t));
            let mut pages = crate::deliver::paging::Pages::new(&feed.from, &link, MAX_PAGES_PER_CLIENT);
            loop {
                let page =
                    source.page(&link).await.with_context(|| format!("reading {t} of a client from {}", feed.from))?;
                for e in page["entry"].as_array().into_iter().flatten() {
                    if e["search"]["mode"].as_str().is_some_and(|m| m != "match") {
                        continue;
                    }
                    let r = &e["resource"];
                    let (Some(rt), Some(id)) = (r["resourceType"].as_str(), r["id"].as_str()) else { continue };
                    if rt == t && seen.insert(ResourceKey::new(rt, id)) {
                        out.push(r.clone());
                    }
                }
                match pages.next(&page).with_context(|| format!("reading {t} of a client from {}", feed.from))? {
                    Some(n) => link = n,
                    None => break,
                }
            }
        }
    }
    if patients.is_empty() {
        warn!(feed = %feed.name(), person = %client.person, "Client not found on the central record; nothing to send yet.");
    }
    Ok((out, origins, patients.into_iter().map(|p| format!("Patient/{p}")).collect()))
}

/// What one `feed run` did: the plan and the delivery.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct FeedRun {
    pub plan: FeedPlan,
    pub delivery: deliver::FeedDelivery,
}

/// Plans and delivers one feed, recorded as job `feed:<partner>` (`connector status`).
pub async fn run(
    engine: &Engine,
    feed: &FeedConfig,
    rebuild: bool,
    shutdown: &tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<FeedRun> {
    let work = async {
        let plan = plan_until(engine, feed, rebuild, false, Some(shutdown)).await?;
        let delivery = deliver::deliver(engine, feed, shutdown).await?;
        anyhow::Ok(FeedRun { plan, delivery })
    };
    engine
        .run_job(&JobName::Feed(feed.partner.clone()), work, |r| {
            let detail = format!(
                "{} clients, {} items queued, {} sent in {} documents, {} dead-lettered",
                r.plan.clients, r.plan.queued_items, r.delivery.items, r.delivery.documents, r.delivery.dead
            );
            (r.delivery.dead == 0, detail)
        })
        .await
}

/// A FHIR Bundle of type collection holding `resources`.
pub(crate) fn collection(base: &str, resources: &[&Value]) -> Value {
    let entries: Vec<Value> = resources
        .iter()
        .map(|r| {
            json!({
                "fullUrl": format!("{}/{}/{}", base.trim_end_matches('/'), r["resourceType"].as_str().unwrap_or_default(), r["id"].as_str().unwrap_or_default()),
                "resource": r,
            })
        })
        .collect();
    json!({
        "resourceType": "Bundle",
        "type": "collection",
        "timestamp": Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "entry": entries,
    })
}
