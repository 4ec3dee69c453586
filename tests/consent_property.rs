//! Property test of the sharing rules, end to end against two real Helios FHIR Servers (Cito and PKB
//! stand-ins). Each case generates consent histories for the Hub's and York Mind's clients (given with random
//! destinations and restrictions, declined, withdrawn, given again; dated in any order, across both partners)
//! and random information sharing agreements, then after each change runs a full sync cycle or, as the daemon
//! does, each partner's ingest and each destination's delivery as separate jobs (two rounds). After that each
//! server must hold exactly the resources the rules allowed at that moment: nothing they did not allow,
//! everything they did. The rules are re-implemented here, independently of `src/policy`, as the
//! oracle. Both destinations retract, so "never holds" is checkable.
//!
//! Cases and steps: `CONSENT_PROPERTY_CASES` (default 6) and `CONSENT_PROPERTY_STEPS` (default 4); a failing
//! case prints its seed, and `CONSENT_PROPERTY_SEED` runs just that one.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use common::{Hfs, TempDir};
use serde_json::{Value, json};
use york_connector::config::Config;
use york_connector::mapping::{self, MappedResource, Quarantined, Sink, ids};
use york_connector::store::ResourceKey;
use york_connector::sync::Engine;

const PARTNERS: [&str; 2] = ["hub", "york-mind"];
const DESTS: [&str; 2] = ["cito", "pkb"];
const CATEGORIES: [&str; 4] = ["general_health", "mental_health", "sexual_health", "social_care"];
const RESTRICTIONS: [(&str, &str); 4] = [
    ("general_health", "No general health information"),
    ("mental_health", "No mental health information"),
    ("social_care", "No social care information"),
    ("third_party", "No third-party information"),
];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// xorshift64*: small, seedable, good enough to pick test cases.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Agreement {
    categories: Vec<&'static str>,
    consent_required: bool,
}

/// One consent record as a partner's export states it.
#[derive(Debug, Clone, PartialEq)]
struct Record {
    client: String,
    decision: &'static str,
    given: chrono::NaiveDate,
    withdrawn: Option<chrono::NaiveDate>,
    cito: bool,
    pkb: bool,
    restrictions: Vec<&'static str>,
}

impl Record {
    fn effective(&self) -> String {
        match (self.decision, self.withdrawn) {
            ("withdrawn", Some(w)) => w.to_string(),
            _ => self.given.to_string(),
        }
    }
}

/// The oracle's memory of statements: each record's versions, numbered in the order the connector reads them.
#[derive(Default)]
struct History {
    /// (partner, record key) -> (record, sequence number of this version)
    latest: BTreeMap<(String, String), (Record, u64)>,
    seq: u64,
}

/// What the mapping makes of the current exports.
#[derive(Debug, Clone)]
struct Item {
    partner: String,
    key: ResourceKey,
    category: String,
    not_for_patient: bool,
    person: Option<String>,
}

fn mapped(config: &Config) -> Vec<Item> {
    struct Collect {
        items: Vec<Item>,
        groups: HashMap<String, String>,
    }
    impl Sink for Collect {
        fn resource(&mut self, r: &MappedResource<'_>) -> std::io::Result<()> {
            let patient = york_connector::sync::patient_of(r.resource_type, r.id, &r.resource());
            if r.resource_type == "Patient" {
                let p = format!("Patient/{}", r.id);
                self.groups.insert(p.clone(), york_connector::sync::person_group(&p, &r.resource()));
            }
            let person = patient.map(|p| self.groups.get(&p).cloned().unwrap_or(p));
            self.items.push(Item {
                partner: r.partner.to_string(),
                key: ResourceKey::new(r.resource_type, r.id),
                category: serde_json::to_value(r.category).unwrap().as_str().unwrap().to_string(),
                not_for_patient: r.not_for_patient,
                person,
            });
            Ok(())
        }
        fn quarantined(&mut self, _: &Quarantined) -> std::io::Result<()> {
            Ok(())
        }
    }
    let catalog = mapping::load_catalog(&config.resolve(&config.mappings.dir)).unwrap();
    let mut out = Collect { items: Vec::new(), groups: HashMap::new() };
    for p in &config.partners {
        let inputs = common::file_inputs(config, p);
        mapping::run(&catalog.partners[&p.id], &inputs, &mut out).unwrap();
    }
    out.items
}

/// The rules, written out again from the issue: the oracle.
fn allowed(
    item: &Item,
    dest: &str,
    agreements: &BTreeMap<(String, String), Agreement>,
    current: &HashMap<String, Record>,
) -> bool {
    let Some(a) = agreements.get(&(item.partner.clone(), dest.to_string())) else { return false };
    if !a.categories.contains(&item.category.as_str()) {
        return false;
    }
    let is_patient = item.key.resource_type == "Patient";
    if item.person.is_some() && !is_patient && !a.categories.contains(&"general_health") {
        return false; // the person's own record (general health) may not go there
    }
    if item.not_for_patient && dest == "pkb" {
        return false;
    }
    let Some(person) = &item.person else { return true };
    let Some(s) = current.get(person) else { return !a.consent_required };
    if s.decision != "given" {
        return false;
    }
    if !(if dest == "cito" { s.cito } else { s.pkb }) {
        return false;
    }
    if !is_patient && s.restrictions.contains(&item.category.as_str()) {
        return false;
    }
    !(item.not_for_patient && s.restrictions.contains(&"third_party"))
}

fn write_exports(dir: &Path, records: &BTreeMap<(String, String), Record>) {
    // Hub consent report (CSV, UK dates).
    let mut csv = String::from(
        "Consent ID,Client ID,Consent Date,Share with Central Record,Share with PKB,Share with Partners,Restrictions,Consent Status,Withdrawn Date\n",
    );
    let yn = |b: bool| if b { "Yes" } else { "No" };
    let text = |r: &Record| {
        r.restrictions
            .iter()
            .map(|c| RESTRICTIONS.iter().find(|(k, _)| k == c).unwrap().1)
            .collect::<Vec<_>>()
            .join("; ")
    };
    let mut ym = Vec::new();
    for ((partner, key), r) in records {
        if partner == "hub" {
            let status = match r.decision {
                "given" => "Active",
                "declined" => "Declined",
                _ => "Withdrawn",
            };
            csv.push_str(&format!(
                "{key},{},{},{},{},,{},{status},{}\n",
                r.client,
                r.given.format("%d/%m/%Y"),
                yn(r.cito),
                yn(r.pkb),
                text(r),
                r.withdrawn.map(|w| w.format("%d/%m/%Y").to_string()).unwrap_or_default()
            ));
        } else {
            let status = match r.decision {
                "given" => "active",
                "declined" => "declined",
                _ => "withdrawn",
            };
            let restrictions = text(r);
            ym.push(json!({
                "id": key.parse::<u64>().unwrap(),
                "clientId": r.client.parse::<u64>().unwrap(),
                "givenDate": r.given.to_string(),
                "sharing": {"centralRecord": r.cito, "pkb": r.pkb, "partners": []},
                "restrictions": if restrictions.is_empty() { Value::Null } else { Value::String(restrictions) },
                "status": status,
                "withdrawnDate": r.withdrawn.map(|w| w.to_string()),
            }));
        }
    }
    std::fs::write(dir.join("hub/consent.csv"), csv).unwrap();
    std::fs::write(dir.join("york-mind/consent.json"), serde_json::to_string_pretty(&json!({"data": ym})).unwrap())
        .unwrap();
}

fn write_config(dir: &Path, cito: &str, pkb: &str, agreements: &BTreeMap<(String, String), Agreement>) -> PathBuf {
    let mut text = format!(
        "[state]\nurl = \"sqlite://{}/state.db\"\n[mappings]\ndir = \"{}/mappings\"\n",
        dir.display(),
        root().display()
    );
    for p in PARTNERS {
        let mut files: Vec<PathBuf> =
            std::fs::read_dir(dir.join(p)).unwrap().map(|e| e.unwrap().path()).filter(|f| f.is_file()).collect();
        files.sort();
        text.push_str(&format!("[[partner]]\nid = \"{p}\"\nsource = [\n"));
        for f in files {
            let kind = f.file_stem().unwrap().to_string_lossy().to_string();
            text.push_str(&format!("  {{ kind = \"{kind}\", path = \"{}\" }},\n", f.display()));
        }
        text.push_str("]\n");
    }
    for ((p, d), a) in agreements {
        let cats: Vec<String> = a.categories.iter().map(|c| format!("\"{c}\"")).collect();
        text.push_str(&format!(
            "[[sharing]]\nname = \"{p} to {d}\"\npartner = \"{p}\"\ndestination = \"{d}\"\ncategories = [{}]\n\
             lawful_basis = \"test\"\nconsent_required = {}\n",
            cats.join(", "),
            a.consent_required
        ));
    }
    text.push_str(&format!(
        "[destination.cito]\nprofile = \"cito\"\nbase_url = \"{cito}\"\nrate_limit_per_second = 1000\nretract = true\n\
         [destination.pkb]\nprofile = \"pkb\"\nbase_url = \"{pkb}\"\nrate_limit_per_second = 1000\nretract = true\n"
    ));
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn random_agreements(rng: &mut Rng) -> BTreeMap<(String, String), Agreement> {
    let mut out = BTreeMap::new();
    for p in PARTNERS {
        for d in DESTS {
            if rng.chance(0.15) {
                continue;
            }
            let mut categories: Vec<&'static str> = CATEGORIES.iter().copied().filter(|_| rng.chance(0.65)).collect();
            if rng.chance(0.8) && !categories.contains(&"general_health") {
                categories.insert(0, "general_health");
            }
            if categories.is_empty() {
                categories.push("mental_health");
            }
            out.insert((p.to_string(), d.to_string()), Agreement { categories, consent_required: rng.chance(0.7) });
        }
    }
    out
}

fn random_date(rng: &mut Rng, step: u64) -> chrono::NaiveDate {
    let base = chrono::NaiveDate::from_ymd_opt(2024, 1, 1).unwrap();
    // Later steps tend to be later, but not always: statements arrive in any order.
    base + chrono::Duration::days((step * 30) as i64 + rng.below(90) as i64 - 45)
}

/// Changes some people's consent: new statements, withdrawals of existing ones, refusals, re-consent.
fn change_consent(
    rng: &mut Rng,
    step: u64,
    clients: &BTreeMap<&'static str, Vec<String>>,
    records: &mut BTreeMap<(String, String), Record>,
    next_key: &mut u64,
) {
    let changes = 2 + rng.below(5);
    for _ in 0..changes {
        let partner = PARTNERS[rng.below(2) as usize];
        let list = &clients[partner];
        let client = list[rng.below(list.len() as u64) as usize].clone();
        let existing: Vec<String> = records
            .iter()
            .filter(|((p, _), r)| p == partner && r.client == client && r.decision == "given")
            .map(|((_, k), _)| k.clone())
            .collect();
        if !existing.is_empty() && rng.chance(0.3) {
            // Withdraw an existing consent.
            let key = &existing[rng.below(existing.len() as u64) as usize];
            let r = records.get_mut(&(partner.to_string(), key.clone())).unwrap();
            r.decision = "withdrawn";
            r.withdrawn = Some(r.given + chrono::Duration::days(1 + rng.below(60) as i64));
            continue;
        }
        *next_key += 1;
        let key = if partner == "hub" { format!("CN-{next_key}") } else { format!("{}", 90_000 + *next_key) };
        let decision = if rng.chance(0.2) { "declined" } else { "given" };
        let restrictions: Vec<&'static str> = if decision == "given" && rng.chance(0.4) {
            RESTRICTIONS.iter().map(|(c, _)| *c).filter(|_| rng.chance(0.35)).collect()
        } else {
            Vec::new()
        };
        records.insert(
            (partner.to_string(), key),
            Record {
                client,
                decision,
                given: random_date(rng, step),
                withdrawn: None,
                cito: decision == "given" && rng.chance(0.75),
                pkb: decision == "given" && rng.chance(0.6),
                restrictions,
            },
        );
    }
}

/// The statement in force per person after the connector has read `records` (hub first, then York Mind,
/// each in file order): of each record's newest version, the one that takes effect last.
fn current(
    history: &mut History,
    records: &BTreeMap<(String, String), Record>,
    person_of: &HashMap<(String, String), String>,
) -> HashMap<String, Record> {
    for p in PARTNERS {
        for ((partner, key), r) in records.iter().filter(|((partner, _), _)| partner == p) {
            let k = (partner.clone(), key.clone());
            if history.latest.get(&k).is_none_or(|(old, _)| old != r) {
                history.seq += 1;
                history.latest.insert(k, (r.clone(), history.seq));
            }
        }
    }
    let mut best: HashMap<String, (String, u64, Record)> = HashMap::new();
    for ((partner, _), (r, seq)) in &history.latest {
        let Some(person) = person_of.get(&(partner.clone(), r.client.clone())) else { continue };
        let rank = (r.effective(), *seq);
        if best.get(person).is_none_or(|(e, s, _)| (e.clone(), *s) < rank) {
            best.insert(person.clone(), (rank.0, rank.1, r.clone()));
        }
    }
    best.into_iter().map(|(p, (_, _, r))| (p, r)).collect()
}

async fn run_case(seed: u64, steps: u64) {
    let mut rng = Rng(seed.max(1));
    // Whether a step runs one cycle or the daemon's separate jobs, and in which order: drawn apart from `rng`, so
    // a seed's consent histories are those it always gave.
    let mut order = Rng((seed ^ 0xD1B5_4A32_D192_ED03).max(1));
    let (cito, pkb) = (Hfs::start().await, Hfs::start().await);
    let dir = TempDir::new("consent-property");
    for p in PARTNERS {
        std::fs::create_dir_all(dir.path().join(p)).unwrap();
        for f in std::fs::read_dir(root().join("tests/fixtures").join(p)).unwrap() {
            let f = f.unwrap().path();
            if f.is_file() && f.extension().is_some_and(|e| e != "md") {
                std::fs::copy(&f, dir.path().join(p).join(f.file_name().unwrap())).unwrap();
            }
        }
    }
    let servers = [("cito", &cito), ("pkb", &pkb)];
    let mut records: BTreeMap<(String, String), Record> = BTreeMap::new();
    let mut history = History::default();
    let mut next_key = 0;
    let mut clients: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
    let mut person_of: HashMap<(String, String), String> = HashMap::new();
    for step in 0..steps {
        let agreements = random_agreements(&mut rng);
        if step == 0 {
            // Who the clients are (people whose records map), and which person each is.
            write_exports(dir.path(), &records);
            let config = write_config(dir.path(), &cito.url(""), &pkb.url(""), &agreements);
            let items = mapped(&Config::load(&config).unwrap());
            for p in PARTNERS {
                let mut list = Vec::new();
                for i in items.iter().filter(|i| i.partner == p && i.key.resource_type == "Patient") {
                    // Find the client reference whose id this is.
                    let reference =
                        client_refs(p).into_iter().find(|c| ids::resource_id(p, "person", "patient", c) == i.key.id);
                    if let Some(c) = reference {
                        person_of.insert((p.to_string(), c.clone()), i.person.clone().unwrap());
                        list.push(c);
                    }
                }
                assert!(list.len() >= 5, "{p}: {list:?}");
                clients.insert(p, list);
            }
        }
        change_consent(&mut rng, step, &clients, &mut records, &mut next_key);
        write_exports(dir.path(), &records);
        let config = write_config(dir.path(), &cito.url(""), &pkb.url(""), &agreements);
        let engine = Engine::start(Config::load(&config).unwrap()).await.unwrap();
        let (tx, rx) = tokio::sync::watch::channel(false);
        if order.chance(0.5) {
            let report = engine.cycle(None, None, false, &rx).await.unwrap();
            assert_eq!(report.dead_lettered() + report.deferred(), 0, "seed {seed} step {step}: {report:?}");
        } else {
            as_the_daemon_runs(&engine, &mut order, &rx, &format!("seed {seed} step {step}")).await;
        }
        drop(tx);

        let now = current(&mut history, &records, &person_of);
        let items = mapped(&engine.config);
        let mut wrong = Vec::new();
        let mut held = 0;
        for (dest, hfs) in servers {
            for item in &items {
                let expect = allowed(item, dest, &agreements, &now);
                let entry = engine.store.ledger_get(dest, &item.key).await.unwrap();
                let linked = entry.as_ref().is_some_and(|e| e.linked);
                let remote = entry.as_ref().map_or(item.key.id.clone(), |e| e.remote_id.clone());
                if linked && !expect {
                    continue; // someone else's Patient: never ours to hold or remove
                }
                let status = hfs.get(&format!("{}/{remote}", item.key.resource_type)).await.0;
                let holds = status == 200;
                held += usize::from(holds);
                if holds != expect {
                    wrong.push(format!(
                        "{dest} {} {}/{} [{} nfp={}] person {:?}: holds {holds}, rules say {expect}; consent {:?}",
                        item.partner,
                        item.key.resource_type,
                        item.key.id,
                        item.category,
                        item.not_for_patient,
                        item.person,
                        item.person.as_ref().and_then(|p| now.get(p))
                    ));
                }
            }
        }
        assert!(
            wrong.is_empty(),
            "seed {seed} step {step}: {} resource(s) disagree with the rules (agreements {agreements:?}):\n{}",
            wrong.len(),
            wrong.join("\n")
        );
        eprintln!("seed {seed} step {step}: {held} resources held, all as the rules allow");
        engine.store.close().await;
    }
}

/// The daemon's way: each partner's ingest and each destination's delivery are separate jobs, so a delivery can
/// land between two partners' plans (a Patient deleted before another partner has planned its retractions).
/// Two rounds, partners in a random order each time: a statement read at one partner reaches another's records
/// at that partner's next plan, so after two rounds every server must hold what the rules allow.
async fn as_the_daemon_runs(engine: &Engine, order: &mut Rng, stop: &tokio::sync::watch::Receiver<bool>, what: &str) {
    for round in 0..2 {
        let mut partners = PARTNERS.to_vec();
        if order.chance(0.5) {
            partners.reverse();
        }
        for p in partners {
            engine.ingest(p, false).await.unwrap();
            for d in DESTS {
                let r = engine.deliver(d, stop).await.unwrap();
                assert_eq!(r.dead_lettered + r.deferred, 0, "{what} round {round} after {p}'s ingest: {r:?}");
            }
        }
    }
}

/// Client references in a partner's fixture person export.
fn client_refs(partner: &str) -> Vec<String> {
    if partner == "hub" {
        let text = std::fs::read(root().join("tests/fixtures/hub/person.csv")).unwrap();
        let text = String::from_utf8_lossy(&text);
        text.lines().filter_map(|l| l.split(',').next()).filter(|c| c.starts_with("HUB-")).map(String::from).collect()
    } else {
        let v: Value = serde_json::from_str(
            &std::fs::read_to_string(root().join("tests/fixtures/york-mind/person.json")).unwrap(),
        )
        .unwrap();
        v["data"].as_array().unwrap().iter().map(|d| d["id"].to_string()).collect()
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_hold_exactly_what_the_rules_allow_after_every_cycle() {
    let steps = env_u64("CONSENT_PROPERTY_STEPS", 4);
    if let Ok(seed) = std::env::var("CONSENT_PROPERTY_SEED") {
        run_case(seed.parse().expect("a number"), steps).await;
        return;
    }
    let cases = env_u64("CONSENT_PROPERTY_CASES", 6);
    for case in 0..cases {
        let seed = 0x9E37_79B9_7F4A_7C15u64.wrapping_mul(case + 1);
        eprintln!("case {case}: seed {seed}");
        run_case(seed, steps).await;
    }
}
