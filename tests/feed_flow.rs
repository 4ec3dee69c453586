//! Partner feeds against a real Helios FHIR Server standing in for the central record (Cito), with all three
//! partners' fixtures synced there first:
//! - York Mind's feed (FHIR Bundles to a folder) carries, for a shared client who consented, records from
//!   the Hub, the Carers Centre and York Mind itself plus an entry made directly on the central record; and
//!   nothing for a client whose consent does not name York Mind, nor for one whose referral is closed;
//! - a second run sends nothing; one change on the central record sends exactly that change;
//! - `connector audit --person` lists the feed's deliveries beside the destination disclosures;
//! - the Hub's CSV feed, re-imported through the Hub's own forward mappings, gives back the same resources.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use common::{Hfs, TempDir};
use serde_json::{Value, json};
use york_connector::config::Config;
use york_connector::mapping::{self, MappedResource, Quarantined, Sink};
use york_connector::sync::Engine;

const PARTNERS: [&str; 3] = ["hub", "york-mind", "carers-centre"];
const NHS: &str = "https://fhir.nhs.uk/Id/nhs-number";
const DANIEL: &str = "9993001465"; // HUB-1004, York Mind 50244 (referral open), Carers Centre 10237
const ZOE: &str = "9990123403"; // HUB-1001, York Mind 50231 (referral open); the test takes York Mind off her consent
const CONNOR: &str = "9995158302"; // HUB-1006, York Mind 50260 (referral closed)

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn no_shutdown() -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    std::mem::forget(tx);
    rx
}

/// Copies the fixtures into `dir` and writes a config: every partner to Cito under consent, York Mind's
/// feed as Bundles in `dir/feeds/york-mind` and the Hub's as CSV in `dir/feeds/hub`, with agreements letting
/// each partner's data (and what others enter on Cito) into both feeds.
fn write_config(dir: &Path, cito: &str) -> PathBuf {
    let feeds = format!(
        "[[feed]]\npartner = \"york-mind\"\nresources = [\"Patient\", \"ServiceRequest\", \"EpisodeOfCare\", \"Encounter\", \"Goal\", \"Observation\", \"QuestionnaireResponse\", \"RelatedPerson\"]\n\
         format = \"bundle\"\nfolder = \"{0}/feeds/york-mind\"\n\
         [[feed]]\npartner = \"hub\"\nresources = [\"Patient\", \"ServiceRequest\", \"EpisodeOfCare\", \"Encounter\"]\nformat = \"csv\"\nfolder = \"{0}/feeds/hub\"\n",
        dir.display()
    );
    write_config_with(dir, cito, &feeds)
}

/// As [`write_config`], with these `[[feed]]` tables.
fn write_config_with(dir: &Path, cito: &str, feeds: &str) -> PathBuf {
    let mut text = format!(
        "[state]\nurl = \"sqlite://{}/state.db\"\n[mappings]\ndir = \"{}/mappings\"\n",
        dir.display(),
        root().display()
    );
    text.push_str(&common::copy_fixtures(dir, &PARTNERS));
    let all = "\"general_health\", \"mental_health\", \"sexual_health\", \"social_care\"";
    for p in PARTNERS.iter().chain(["cito"].iter()) {
        for d in ["cito", "feed:york-mind", "feed:hub", "feed:carers-centre"] {
            let fed = d.strip_prefix("feed:").is_some_and(|f| feeds.contains(&format!("partner = \"{f}\"")));
            if (*p == "cito" && d == "cito") || (d != "cito" && !fed) {
                continue;
            }
            text.push_str(&format!(
                "[[sharing]]\nname = \"ISA {p} to {d}\"\npartner = \"{p}\"\ndestination = \"{d}\"\n\
                 categories = [{all}]\nlawful_basis = \"UK GDPR 6(1)(e); 9(2)(h)\"\n"
            ));
        }
    }
    text.push_str(&format!(
        "[destination.cito]\nprofile = \"cito\"\nbase_url = \"{cito}\"\nrate_limit_per_second = 500\n{feeds}"
    ));
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Replaces `from` by `to` in a fixture copy (exactly once).
fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert_eq!(text.matches(from).count(), 1, "{from:?} in {}", path.display());
    std::fs::write(path, text.replace(from, to)).unwrap();
}

/// The files in a feed folder, by name (temporary files would start with a dot).
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let Ok(entries) = std::fs::read_dir(dir) else { return BTreeMap::new() };
    entries
        .map(|e| e.unwrap().path())
        .map(|p| (p.file_name().unwrap().to_string_lossy().to_string(), std::fs::read(&p).unwrap()))
        .collect()
}

/// Every resource in the Bundle files named.
fn bundled(all: &BTreeMap<String, Vec<u8>>, names: &BTreeSet<String>) -> Vec<Value> {
    let mut out = Vec::new();
    for n in names {
        let b: Value = serde_json::from_slice(&all[n]).unwrap();
        assert_eq!(b["resourceType"], "Bundle");
        assert_eq!(b["type"], "collection");
        for e in b["entry"].as_array().unwrap() {
            out.push(e["resource"].clone());
        }
    }
    out
}

/// The central record's Patient id for an NHS number.
async fn central_patient(cito: &Hfs, nhs: &str) -> String {
    let found = cito.search_all(&format!("Patient?identifier={NHS}|{nhs}")).await;
    assert_eq!(found.len(), 1, "one Patient on Cito for {nhs}");
    found[0]["id"].as_str().unwrap().to_string()
}

fn refers_to(r: &Value, patient_id: &str) -> bool {
    let me = format!("Patient/{patient_id}");
    r["resourceType"] == "Patient" && r["id"] == patient_id || r.to_string().contains(&format!("\"{me}\""))
}

fn tagged_partner(r: &Value) -> Option<String> {
    r["meta"]["tag"].as_array()?.iter().find_map(|t| {
        (t["system"] == york_connector::reconcile::TAG_SYSTEM)
            .then(|| t["code"].as_str().unwrap_or_default().to_string())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_feed_carries_the_unified_record_only_for_open_clients_who_consented() {
    let cito = Hfs::start().await;
    let dir = TempDir::new("feed-flow");
    let config = write_config(dir.path(), &cito.url(""));
    // Zoë's hub consent (in force: the newest) no longer names York Mind.
    edit(
        &dir.path().join("hub/consent.csv"),
        "CN-701,HUB-1001,24/03/2023,Yes,No,York Mind,",
        "CN-701,HUB-1001,24/03/2023,Yes,No,,",
    );
    let engine = Engine::start(Config::load(&config).unwrap()).await.unwrap();
    engine.cycle(None, None, false, &no_shutdown()).await.unwrap();

    // An entry made directly on the central record by its own users (no connector tag): a contact with Daniel.
    let daniel = central_patient(&cito, DANIEL).await;
    let entry = json!({
        "resourceType": "Encounter", "id": "cito-entry-1", "status": "finished",
        "class": { "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "VR", "display": "virtual" },
        "subject": { "reference": format!("Patient/{daniel}") },
        "period": { "start": "2024-02-01T10:00:00+00:00" },
        "meta": { "security": [{ "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "PSY" }] },
    });
    let (status, body) = cito.put("Encounter/cito-entry-1", &entry).await;
    assert!(status < 300, "{status} {body}");

    let ym = engine.config.feeds.iter().find(|f| f.partner == "york-mind").unwrap().clone();
    let first = york_connector::feed::run(&engine, &ym, false, &no_shutdown()).await.unwrap();
    assert!(first.delivery.documents > 0 && first.delivery.dead == 0, "{first:#?}");
    let folder = dir.path().join("feeds/york-mind");
    let after_first = files(&folder);
    assert!(after_first.keys().all(|n| !n.starts_with('.')), "no temporary file left behind");
    let sent = bundled(&after_first, &after_first.keys().cloned().collect());
    assert_eq!(sent.len(), first.delivery.items, "every item sent is in the files");

    // Daniel: his record from all three partners and the central record's own entry.
    let his: Vec<&Value> = sent.iter().filter(|r| refers_to(r, &daniel)).collect();
    let origins: BTreeSet<String> = his.iter().map(|r| tagged_partner(r).unwrap_or_else(|| "cito".into())).collect();
    for o in ["hub", "york-mind", "carers-centre", "cito"] {
        assert!(origins.contains(o), "Daniel's feed holds records from {o}: {origins:?}");
    }
    assert!(his.iter().any(|r| r["id"] == "cito-entry-1"), "the entry made on the central record is in the feed");
    assert!(his.iter().any(|r| r["resourceType"] == "EpisodeOfCare"), "the Hub's open episode is in the feed");
    // Zoë (consent does not name York Mind) and Connor (York Mind referral closed): nothing at all.
    for (who, nhs) in [("Zoë", ZOE), ("Connor", CONNOR)] {
        let p = central_patient(&cito, nhs).await;
        let leaked: Vec<&Value> = sent.iter().filter(|r| refers_to(r, &p)).collect();
        assert!(leaked.is_empty(), "{who}'s record must not be in York Mind's feed: {leaked:?}");
    }
    // Everything sent belongs to someone York Mind supports: nothing stray.
    assert!(sent.iter().all(|r| r["resourceType"] != "Organization"));

    // Item 3: a second run with nothing changed delivers nothing.
    let second = york_connector::feed::run(&engine, &ym, false, &no_shutdown()).await.unwrap();
    assert_eq!((second.plan.queued_items, second.delivery.items), (0, 0), "{second:#?}");
    assert_eq!(files(&folder).len(), after_first.len(), "no new file");
    // One change on the central record: exactly that change.
    let mut changed = cito.get("Encounter/cito-entry-1").await.1;
    changed["status"] = json!("cancelled");
    let (status, body) = cito.put("Encounter/cito-entry-1", &changed).await;
    assert!(status < 300, "{status} {body}");
    let third = york_connector::feed::run(&engine, &ym, false, &no_shutdown()).await.unwrap();
    assert_eq!((third.plan.queued_items, third.delivery.items, third.delivery.documents), (1, 1, 1), "{third:#?}");
    let now = files(&folder);
    let new: BTreeSet<String> = now.keys().filter(|k| !after_first.contains_key(*k)).cloned().collect();
    let delta = bundled(&now, &new);
    assert_eq!(delta.len(), 1, "{delta:?}");
    assert_eq!((delta[0]["id"].as_str(), delta[0]["status"].as_str()), (Some("cito-entry-1"), Some("cancelled")));

    // Item 4: the audit trail for Daniel lists the feed's deliveries beside the disclosures to Cito.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_connector"))
        .args(["audit", "--person", "999 300 1465", "--format", "json", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let entries: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let fed: Vec<&Value> =
        entries.iter().filter(|e| e["action"] == "disclosed" && e["destination"] == "feed:york-mind").collect();
    assert_eq!(fed.len(), his.len() + 1, "each item sent for Daniel (and the changed entry) is one audited disclosure");
    assert!(fed.iter().any(|e| e["resource_id"] == "cito-entry-1" && e["partner"] == "cito"));
    assert!(fed.iter().all(|e| e["agreement"].as_str().is_some() && e["lawful_basis"].as_str().is_some()));
    assert!(entries.iter().any(|e| e["action"] == "disclosed" && e["destination"] == "cito"), "and the destination's");

    // Consent withdrawn at the Hub (a new, later statement): the next run sends nothing more of his.
    edit(
        &dir.path().join("hub/consent.csv"),
        "CN-704,HUB-1004,03/10/2023,Yes,Yes,York Mind; Carers Centre,,Active,",
        "CN-704,HUB-1004,03/10/2023,Yes,Yes,York Mind; Carers Centre,,Withdrawn,01/03/2024",
    );
    engine.ingest("hub", false).await.unwrap();
    changed["status"] = json!("finished");
    let (status, _) = cito.put("Encounter/cito-entry-1", &changed).await;
    assert!(status < 300);
    let fourth = york_connector::feed::run(&engine, &ym, false, &no_shutdown()).await.unwrap();
    assert_eq!(fourth.delivery.items, 0, "{fourth:#?}");
    engine.store.close().await;
}

/// A mapping sink keeping every resource by id.
#[derive(Default)]
struct Keep(BTreeMap<String, Value>);
impl Sink for Keep {
    fn resource(&mut self, r: &MappedResource<'_>) -> std::io::Result<()> {
        self.0.insert(format!("{}/{}", r.resource_type, r.id), r.resource());
        Ok(())
    }
    fn quarantined(&mut self, _: &Quarantined) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csv_feed_re_imported_through_the_partners_own_mapping_gives_back_the_same_resources() {
    let cito = Hfs::start().await;
    let dir = TempDir::new("feed-csv");
    let config_path = write_config(dir.path(), &cito.url(""));
    let config = Config::load(&config_path).unwrap();
    let engine = Engine::start(Config::load(&config_path).unwrap()).await.unwrap();
    engine.cycle(None, None, false, &no_shutdown()).await.unwrap();
    let hub_feed = engine.config.feeds.iter().find(|f| f.partner == "hub").unwrap().clone();
    let run = york_connector::feed::run(&engine, &hub_feed, false, &no_shutdown()).await.unwrap();
    let dead: Vec<String> = engine
        .store
        .outbox_list(Some("feed:hub"), true, 10)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|r| r.last_error)
        .collect();
    assert!(run.delivery.items > 0 && run.delivery.dead == 0, "{run:#?}\n{dead:#?}");

    // The hub's own forward mapping of its fixtures: what the round trip must give back.
    let catalog = mapping::load_catalog(&config.resolve(&config.mappings.dir)).unwrap();
    let hub = &catalog.partners["hub"];
    let inputs = |dir: &Path| -> Vec<mapping::Input> {
        let mut v = Vec::new();
        for f in std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()) {
            let stem = f.file_stem().unwrap().to_string_lossy().to_string();
            if let Some(kind) = mapping::RecordKind::parse(&stem) {
                v.push(mapping::Input { kind, path: f });
            }
        }
        v.sort_by_key(|i| i.kind);
        v
    };
    let mut original = Keep::default();
    mapping::run(hub, &inputs(&dir.path().join("hub")), &mut original).unwrap();

    // Each delivered document is a set of CSV files (<stem>-<kind>.csv): re-import each document alone.
    let folder = dir.path().join("feeds/hub");
    let mut documents: BTreeMap<String, Vec<(String, Vec<u8>)>> = BTreeMap::new();
    for (name, body) in files(&folder) {
        let (stem, file) = name.rsplit_once('-').unwrap();
        documents.entry(stem.to_string()).or_default().push((file.to_string(), body));
    }
    assert_eq!(documents.len(), run.delivery.documents);
    let mut exact = 0;
    let mut quarantined = 0;
    let mut kinds = BTreeSet::new();
    for (stem, docs) in &documents {
        let back_dir = dir.path().join("reimport").join(stem);
        std::fs::create_dir_all(&back_dir).unwrap();
        for (file, body) in docs {
            assert!(String::from_utf8(body.clone()).is_ok(), "CSV is UTF-8");
            std::fs::write(back_dir.join(file), body).unwrap();
        }
        let mut back = Keep::default();
        let report = mapping::run(hub, &inputs(&back_dir), &mut back).unwrap();
        quarantined += report.quarantined();
        for (key, again) in &back.0 {
            let Some(before) = original.0.get(key) else { continue };
            // What the central record holds of the hub's own resources comes back exactly as the hub made it.
            let (t, id) = key.split_once('/').unwrap();
            let central = cito.get(&format!("{t}/{id}")).await.1;
            if tagged_partner(&central).as_deref() == Some("hub") {
                assert_eq!(again, before, "{key} round trip");
                exact += 1;
                kinds.insert(t.to_string());
            }
        }
    }
    assert!(exact >= 10, "{exact} resources round-tripped exactly ({quarantined} rows of others' records quarantined)");
    for t in ["Patient", "ServiceRequest", "EpisodeOfCare", "Encounter"] {
        assert!(kinds.contains(t), "{t} round-trips: {kinds:?}");
    }
    engine.store.close().await;
}

/// A webhook receiver: answers the first request 503 (the feed must retry), then 200, keeping each body
/// with its `X-Feed-Document` and `Content-Type` headers.
async fn webhook() -> (String, std::sync::Arc<std::sync::Mutex<Vec<(String, String, Vec<u8>)>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/feed", listener.local_addr().unwrap());
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = got.clone();
    tokio::spawn(async move {
        let mut n = 0;
        loop {
            let Ok((mut sock, _)) = listener.accept().await else { return };
            n += 1;
            let mut buf = Vec::new();
            let mut chunk = [0u8; 8192];
            let (head, body) = loop {
                let read = sock.read(&mut chunk).await.unwrap();
                buf.extend_from_slice(&chunk[..read]);
                let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
                let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map(|v| v.trim().parse().unwrap())
                    .unwrap_or(0);
                while buf.len() < end + 4 + len {
                    let read = sock.read(&mut chunk).await.unwrap();
                    buf.extend_from_slice(&chunk[..read]);
                }
                break (head, buf[end + 4..end + 4 + len].to_vec());
            };
            let header = |name: &str| {
                head.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_string()).unwrap_or_default()
            };
            let status = if n == 1 { "503 Service Unavailable" } else { "200 OK" };
            if n > 1 {
                keep.lock().unwrap().push((header("x-feed-document:"), header("content-type:"), body));
            }
            let reply = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            let _ = sock.write_all(reply.as_bytes()).await;
        }
    });
    (url, got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feeds_reach_a_partner_fhir_endpoint_and_a_webhook() {
    let (cito, partner_fhir) = (Hfs::start().await, Hfs::start().await);
    let (hook, received) = webhook().await;
    let dir = TempDir::new("feed-targets");
    let feeds = format!(
        "[[feed]]\npartner = \"york-mind\"\nresources = [\"Patient\", \"ServiceRequest\", \"Encounter\"]\nfhir_url = \"{}\"\n\
         [[feed]]\npartner = \"carers-centre\"\nresources = [\"Patient\", \"Encounter\"]\nformat = \"ndjson\"\nwebhook_url = \"{hook}\"\n",
        partner_fhir.url("")
    );
    let config = write_config_with(dir.path(), &cito.url(""), &feeds);
    let engine = Engine::start(Config::load(&config).unwrap()).await.unwrap();
    engine.cycle(None, None, false, &no_shutdown()).await.unwrap();

    // York Mind's FHIR endpoint holds exactly what was sent, under the central record's ids.
    let ym = engine.config.feeds.iter().find(|f| f.partner == "york-mind").unwrap().clone();
    let run = york_connector::feed::run(&engine, &ym, false, &no_shutdown()).await.unwrap();
    assert!(run.delivery.items > 0 && run.delivery.dead == 0, "{run:#?}");
    let mut held = 0;
    for t in ["Patient", "ServiceRequest", "Encounter"] {
        for r in partner_fhir.search_all(&format!("{t}?_count=200")).await {
            let id = r["id"].as_str().unwrap();
            let (status, central) = cito.get(&format!("{t}/{id}")).await;
            assert_eq!(status, 200, "{t}/{id} sent to York Mind is the central record's");
            assert_eq!(r["subject"], central["subject"]);
            held += 1;
        }
    }
    assert_eq!(held, run.delivery.items);
    // Sent again (rebuild): updated in place, never duplicated.
    let again = york_connector::feed::run(&engine, &ym, true, &no_shutdown()).await.unwrap();
    assert_eq!(again.delivery.items, run.delivery.items, "{again:#?}");
    let mut after = 0;
    for t in ["Patient", "ServiceRequest", "Encounter"] {
        after += partner_fhir.search_all(&format!("{t}?_count=200")).await.len();
    }
    assert_eq!(after, held);

    // The Carers Centre's webhook: the first attempt meets a 503 and is retried; NDJSON, one resource a line.
    let cc = engine.config.feeds.iter().find(|f| f.partner == "carers-centre").unwrap().clone();
    let run = york_connector::feed::run(&engine, &cc, false, &no_shutdown()).await.unwrap();
    assert!(run.delivery.items > 0 && run.delivery.dead == 0 && run.delivery.deferred == 0, "{run:#?}");
    let got = received.lock().unwrap().clone();
    assert_eq!(got.len(), run.delivery.documents);
    let lines: usize = got
        .iter()
        .map(|(name, content_type, body)| {
            assert!(name.ends_with(".ndjson") && content_type == "application/fhir+ndjson", "{name} {content_type}");
            let text = String::from_utf8(body.clone()).unwrap();
            let parsed: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
            parsed.len()
        })
        .sum();
    assert_eq!(lines, run.delivery.items);
    engine.store.close().await;

    // `connector feed rebuild --format json`: one document, York Mind's whole feed sent again, exit 0.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_connector"))
        .args(["feed", "rebuild", "--partner", "york-mind", "--format", "json", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{said}");
    let runs: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {said}"));
    let runs = runs.as_array().unwrap();
    assert_eq!(runs.len(), 1, "{said}");
    let (plan, delivery) = (&runs[0]["plan"], &runs[0]["delivery"]);
    assert_eq!((plan["feed"].as_str(), plan["rebuild"].as_bool()), (Some("feed:york-mind"), Some(true)), "{said}");
    assert_eq!(delivery["items"].as_u64(), Some(held as u64), "everything sent again: {said}");
    assert_eq!(delivery["dead"].as_u64(), Some(0), "{said}");
}
