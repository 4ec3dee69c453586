//! Consent and information sharing against two real Helios FHIR Servers standing in for Cito and PKB, with
//! the partners' fixture exports and agreements like config.example.toml's (explicit consent required):
//! - PKB receives exactly one privacy label on everything, and never a not-for-the-patient item;
//! - a withdrawal stops every send for the person, reports what each destination holds, and with
//!   `retract = true` the destination no longer holds it;
//! - `connector audit --person` lists exactly the versions the servers received for a person.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use common::proxy::{FaultPlan, FaultProxy};
use common::{Hfs, TempDir};
use serde_json::Value;
use york_connector::config::Config;
use york_connector::mapping::{self, MappedResource, Quarantined, Sink, ids};
use york_connector::sync::Engine;

const PARTNERS: [&str; 3] = ["hub", "york-mind", "carers-centre"];
const PKB_LABELS: &str = "http://fhir.patientsknowbest.com/codesystem/privacy-label";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Copies the fixtures into `dir` (so a test can edit them) and writes a config with agreements for every
/// partner to both destinations.
fn write_config(dir: &Path, cito: &str, pkb: &str, retract_pkb: bool) -> PathBuf {
    let mut text = format!(
        "[state]\nurl = \"sqlite://{}/state.db\"\n[mappings]\ndir = \"{}/mappings\"\n",
        dir.display(),
        root().display()
    );
    text.push_str(&common::copy_fixtures(dir, &PARTNERS));
    for p in PARTNERS {
        for d in ["cito", "pkb"] {
            let cats = match p {
                "hub" => "\"general_health\", \"mental_health\", \"social_care\"",
                "york-mind" => "\"general_health\", \"mental_health\"",
                _ => "\"general_health\", \"social_care\"",
            };
            text.push_str(&format!(
                "[[sharing]]\nname = \"ISA {p} to {d}\"\npartner = \"{p}\"\ndestination = \"{d}\"\n\
                 categories = [{cats}]\nlawful_basis = \"UK GDPR 6(1)(e); 9(2)(h)\"\n"
            ));
        }
    }
    text.push_str(&format!(
        "[destination.cito]\nprofile = \"cito\"\nbase_url = \"{cito}\"\nrate_limit_per_second = 500\n\
         [destination.pkb]\nprofile = \"pkb\"\nbase_url = \"{pkb}\"\nrate_limit_per_second = 500\nretract = {retract_pkb}\n\
         [audit]\nfhir_destination = \"cito\"\n"
    ));
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn no_shutdown() -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    std::mem::forget(tx);
    rx
}

/// A mapped resource: type, id, its Patient (if any) and whether it is not for the patient.
#[derive(Debug, Clone)]
struct Item {
    resource_type: String,
    id: String,
    patient: Option<String>,
    not_for_patient: bool,
}

fn mapped(config: &Config) -> Vec<Item> {
    struct Collect(Vec<Item>);
    impl Sink for Collect {
        fn resource(&mut self, r: &MappedResource<'_>) -> std::io::Result<()> {
            self.0.push(Item {
                resource_type: r.resource_type.to_string(),
                id: r.id.to_string(),
                patient: york_connector::sync::patient_of(r.resource_type, r.id, &r.resource()),
                not_for_patient: r.not_for_patient,
            });
            Ok(())
        }
        fn quarantined(&mut self, _: &Quarantined) -> std::io::Result<()> {
            Ok(())
        }
    }
    let catalog = mapping::load_catalog(&config.resolve(&config.mappings.dir)).unwrap();
    let mut out = Collect(Vec::new());
    for p in &config.partners {
        let inputs = common::file_inputs(config, p);
        mapping::run(&catalog.partners[&p.id], &inputs, &mut out).unwrap();
    }
    out.0
}

fn patient_ref(partner: &str, client: &str) -> String {
    format!("Patient/{}", ids::resource_id(partner, "person", "patient", client))
}

/// Every write entry (method, url) the proxy passed on.
fn written(proxy: &FaultProxy) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for w in proxy.writes() {
        let bundle: Value = serde_json::from_slice(&w.body).unwrap_or(Value::Null);
        for e in bundle["entry"].as_array().cloned().unwrap_or_default() {
            out.push((
                e["request"]["method"].as_str().unwrap_or_default().to_string(),
                e["request"]["url"].as_str().unwrap_or_default().to_string(),
            ));
        }
    }
    out
}

fn references(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, c) in m {
                match (k.as_str(), c) {
                    ("reference", Value::String(r)) => out.push(r.clone()),
                    _ => references(c, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|c| references(c, out)),
        _ => {}
    }
}

const TYPES: [&str; 10] = [
    "Patient",
    "RelatedPerson",
    "ServiceRequest",
    "EpisodeOfCare",
    "Encounter",
    "Goal",
    "CarePlan",
    "QuestionnaireResponse",
    "Observation",
    "Consent",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pkb_gets_exactly_one_privacy_label_and_never_a_not_for_the_patient_item() {
    let (cito, pkb) = (Hfs::start().await, Hfs::start().await);
    let proxy = FaultProxy::start(&pkb.url(""), FaultPlan::none());
    let dir = TempDir::new("consent-pkb");
    let config = write_config(dir.path(), &cito.url(""), proxy.base_url(), false);
    let engine = Engine::start(Config::load(&config).unwrap()).await.unwrap();
    let report = engine.cycle(None, None, false, &no_shutdown()).await.unwrap();
    assert_eq!(report.dead_lettered() + report.deferred(), 0, "{report:?}");

    let mut received = 0;
    for t in TYPES.iter().chain(["Organization"].iter()) {
        for r in pkb.search_all(&format!("{t}?_count=200")).await {
            let labels: Vec<&Value> = r["meta"]["security"]
                .as_array()
                .map(|l| l.iter().filter(|c| c["system"] == PKB_LABELS).collect())
                .unwrap_or_default();
            assert_eq!(labels.len(), 1, "{t}/{} carries {} privacy labels", r["id"], labels.len());
            received += 1;
        }
    }
    assert!(received > 20, "PKB received only {received} resources");

    let nfp: Vec<Item> = mapped(&engine.config).into_iter().filter(|i| i.not_for_patient).collect();
    assert!(nfp.len() >= 2, "the fixtures mark contacts not for the patient");
    let sent: BTreeSet<String> = written(&proxy).into_iter().map(|(_, url)| url).collect();
    for i in &nfp {
        let url = format!("{}/{}", i.resource_type, i.id);
        assert!(!sent.contains(&url), "{url} (not for the patient) was sent to PKB");
        assert_eq!(pkb.get(&url).await.0, 404, "{url} is on PKB");
    }
    // HUB-1009 consented to PKB, so contact C-5011 is kept from PKB by its marking alone.
    let c5011 = ids::resource_id("hub", "contact", "encounter", "C-5011");
    let why = engine
        .store
        .audit_list(&york_connector::store::AuditFilter {
            destination: Some("pkb".into()),
            actions: vec!["withheld".parse().unwrap()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_iter()
        .find(|a| a.resource_id.as_deref() == Some(c5011.as_str()))
        .and_then(|a| a.reason)
        .expect("C-5011's withholding is audited");
    assert!(why.contains("not for the patient"), "{why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withdrawal_stops_sends_reports_holdings_and_retracts_where_configured() {
    let (cito, pkb) = (Hfs::start().await, Hfs::start().await);
    let (pc, pp) =
        (FaultProxy::start(&cito.url(""), FaultPlan::none()), FaultProxy::start(&pkb.url(""), FaultPlan::none()));
    let dir = TempDir::new("consent-withdraw");
    let config = write_config(dir.path(), pc.base_url(), pp.base_url(), true);
    let engine = Engine::start(Config::load(&config).unwrap()).await.unwrap();
    engine.cycle(None, None, false, &no_shutdown()).await.unwrap();

    // Siân (HUB-1002, no NHS number) consented to both; the servers hold her records.
    let person = patient_ref("hub", "HUB-1002");
    let hers: Vec<Item> =
        mapped(&engine.config).into_iter().filter(|i| i.patient.as_deref() == Some(person.as_str())).collect();
    assert!(hers.len() >= 5, "{hers:?}");
    let held_before = engine.store.ledger_for_person(&person).await.unwrap();
    let on = |d: &str| held_before.iter().filter(|e| e.destination == d).count();
    assert!(on("cito") >= 5 && on("pkb") >= 5, "{held_before:?}");

    // She withdraws at the Hub.
    let consent = dir.path().join("hub/consent.csv");
    let text = std::fs::read_to_string(&consent).unwrap();
    let line = "CN-702,HUB-1002,20/03/2023,Yes,Yes,,,Active,";
    assert!(text.contains(line), "fixture changed?");
    std::fs::write(&consent, text.replace(line, "CN-702,HUB-1002,20/03/2023,Yes,Yes,,,Withdrawn,01/06/2024")).unwrap();
    pc.clear_log();
    pp.clear_log();
    let report = engine.cycle(None, None, false, &no_shutdown()).await.unwrap();

    let w = report
        .ingest
        .iter()
        .flat_map(|i| &i.withdrawals)
        .find(|w| w.person == person)
        .expect("a withdrawal report for her");
    for d in ["cito", "pkb"] {
        let listed: BTreeSet<&String> = w.holdings[d].iter().collect();
        let held: BTreeSet<String> =
            held_before.iter().filter(|e| e.destination == d).map(|e| e.key.to_string()).collect();
        assert_eq!(listed, held.iter().collect(), "the report lists what {d} holds");
    }
    assert_eq!(w.retracting, ["pkb"]);

    let her_urls: BTreeSet<String> = hers.iter().map(|i| format!("{}/{}", i.resource_type, i.id)).collect();
    for (name, proxy) in [("cito", &pc), ("pkb", &pp)] {
        let puts: Vec<String> =
            written(proxy).into_iter().filter(|(m, u)| m == "PUT" && her_urls.contains(u)).map(|(_, u)| u).collect();
        assert!(puts.is_empty(), "{name} was sent {puts:?} after the withdrawal");
    }
    // PKB (retract = true) no longer holds anything of hers; Cito (retract = false) keeps what it had.
    for e in held_before.iter().filter(|e| e.destination == "pkb") {
        let (status, _) = pkb.get(&format!("{}/{}", e.key.resource_type, e.remote_id)).await;
        assert!(status == 404 || status == 410, "PKB still holds {} ({status})", e.key);
    }
    for e in held_before.iter().filter(|e| e.destination == "cito") {
        assert_eq!(cito.get(&format!("{}/{}", e.key.resource_type, e.remote_id)).await.0, 200);
    }
    let retracted = engine
        .store
        .audit_list(&york_connector::store::AuditFilter {
            persons: vec![person.clone()],
            actions: vec!["retracted".parse().unwrap()],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(retracted.len(), on("pkb"), "each deletion is audited");

    // The cycle after sends nothing at all for her.
    pc.clear_log();
    pp.clear_log();
    engine.cycle(None, None, false, &no_shutdown()).await.unwrap();
    for proxy in [&pc, &pp] {
        assert!(written(proxy).iter().all(|(_, u)| !her_urls.contains(u)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_for_a_person_lists_exactly_the_versions_the_servers_received() {
    let (cito, pkb) = (Hfs::start().await, Hfs::start().await);
    let dir = TempDir::new("consent-audit");
    let config = write_config(dir.path(), &cito.url(""), &pkb.url(""), false);
    let engine = Engine::start(Config::load(&config).unwrap()).await.unwrap();
    engine.cycle(None, None, false, &no_shutdown()).await.unwrap();
    // A second version of some of Daniel's records (HUB-1004; also a York Mind client under the same NHS number).
    let person_csv = dir.path().join("hub/person.csv");
    let bytes = std::fs::read(&person_csv).unwrap();
    let needle = b"d.okafor@example.com";
    let at = bytes.windows(needle.len()).position(|w| w == needle).expect("fixture changed?");
    let mut changed = bytes[..at].to_vec();
    changed.extend_from_slice(b"daniel.okafor@example.com");
    changed.extend_from_slice(&bytes[at + needle.len()..]);
    std::fs::write(&person_csv, changed).unwrap();
    engine.cycle(None, None, false, &no_shutdown()).await.unwrap();

    // What the servers received for him: every version of every resource that is his or refers to him.
    let group = engine.store.person_of(&patient_ref("hub", "HUB-1004")).await.unwrap().expect("known");
    let patients: Vec<String> = engine.store.patients_of(&group).await.unwrap().into_iter().map(|(p, _)| p).collect();
    assert!(patients.len() >= 2, "Daniel is a client of more than one partner: {patients:?}");
    let mut on_servers = BTreeSet::new();
    for (dest, hfs) in [("cito", &cito), ("pkb", &pkb)] {
        for t in TYPES {
            for r in hfs.search_all(&format!("{t}?_count=200")).await {
                let id = r["id"].as_str().unwrap().to_string();
                let mut refs = Vec::new();
                references(&r, &mut refs);
                let his = patients.iter().any(|p| refs.contains(p) || *p == format!("{t}/{id}"));
                if !his {
                    continue;
                }
                let history = hfs.search(&format!("{t}/{id}/_history")).await;
                let versions: Vec<String> = history["entry"]
                    .as_array()
                    .map(|e| {
                        e.iter().filter_map(|x| x["resource"]["meta"]["versionId"].as_str().map(String::from)).collect()
                    })
                    .unwrap_or_default();
                assert!(!versions.is_empty(), "no history for {t}/{id}: {history}");
                for v in versions {
                    on_servers.insert((dest.to_string(), t.to_string(), id.clone(), v));
                }
            }
        }
    }
    assert!(on_servers.len() > 10, "{on_servers:?}");
    for (dest, hfs) in [("cito", &cito), ("pkb", &pkb)] {
        let same = hfs.search_all("Patient?identifier=https://fhir.nhs.uk/Id/nhs-number|9993001465").await;
        assert_eq!(same.len(), 1, "{dest} holds {} Patients for one person", same.len());
    }
    assert!(on_servers.iter().any(|(_, _, _, v)| v == "2"), "the change made second versions");

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_connector"))
        .args(["audit", "--person", "999 300 1465", "--format", "json", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let entries: Vec<Value> = serde_json::from_slice(&out.stdout).expect("audit --format json is JSON");
    let disclosed: BTreeSet<(String, String, String, String)> = entries
        .iter()
        .filter(|e| e["action"] == "disclosed")
        .map(|e| {
            assert!(e["agreement"].is_string() && e["lawful_basis"].is_string(), "{e}");
            assert!(e["consent"].is_string(), "consent is required, so each disclosure cites it: {e}");
            (
                e["destination"].as_str().unwrap().to_string(),
                e["resource_type"].as_str().unwrap().to_string(),
                e["resource_id"].as_str().unwrap().to_string(),
                e["version_id"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    // The audit trail is copied to the central record as Provenance: one per disclosure to, or retraction from,
    // the central record itself (never about what went to PKB).
    let all = engine
        .store
        .audit_list(&york_connector::store::AuditFilter {
            destination: Some("cito".into()),
            actions: vec!["disclosed".parse().unwrap(), "retracted".parse().unwrap()],
            ..Default::default()
        })
        .await
        .unwrap();
    let events = cito.search_all("Provenance?_count=500").await;
    assert_eq!(events.len(), all.len(), "one Provenance per disclosure on the central record");
    let targets: BTreeSet<String> =
        events.iter().filter_map(|e| e["target"][0]["reference"].as_str().map(String::from)).collect();
    for (dest, t, id, v) in &disclosed {
        let copied = targets.contains(&format!("{t}/{id}/_history/{v}"));
        if dest == "cito" {
            assert!(copied, "no Provenance for {dest} {t}/{id} v{v}");
        }
    }
    let pkb_only: Vec<_> = events
        .iter()
        .filter(|e| e["reason"].as_array().is_some_and(|r| r.iter().any(|t| t["text"] == "destination: pkb")))
        .collect();
    assert!(pkb_only.is_empty(), "disclosures to PKB are not copied to the central record: {pkb_only:?}");
    let missing: Vec<_> = on_servers.difference(&disclosed).collect();
    let extra: Vec<_> = disclosed.difference(&on_servers).collect();
    assert!(missing.is_empty() && extra.is_empty(), "not audited: {missing:?}\naudited but not on a server: {extra:?}");
}
