//! Issue 3: the sync engine against real Helios FHIR Server instances (Cito and PKB stand-ins), with a
//! fault-injecting proxy in front where the test needs to count or disturb requests.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::proxy::{Fault, FaultPlan, FaultProxy};
use common::{Hfs, TempDir};
use serde_json::{Value, json};
use york_connector::config::Config;
use york_connector::store::{Op, OutboxItem, ResourceKey};
use york_connector::sync::{Engine, content_hash};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A destination block for the generated config.
struct Dest<'a> {
    name: &'a str,
    profile: &'a str,
    url: &'a str,
    extra: &'a str,
}

/// Writes a config with the three partners' fixtures (the Hub's copied into `dir`, so a test can edit them).
fn write_config(dir: &Path, dests: &[Dest<'_>], partners: &[&str]) -> PathBuf {
    let hub = dir.join("hub");
    std::fs::create_dir_all(&hub).unwrap();
    for f in std::fs::read_dir(root().join("tests/fixtures/hub")).unwrap() {
        let f = f.unwrap().path();
        if f.is_file() {
            std::fs::copy(&f, hub.join(f.file_name().unwrap())).unwrap();
        }
    }
    let mut text = format!(
        "[state]\nurl = \"sqlite://{}/state.db\"\n[mappings]\ndir = \"{}/mappings\"\n",
        dir.display(),
        root().display()
    );
    for p in partners {
        let folder = if *p == "hub" { hub.clone() } else { root().join("tests/fixtures").join(p) };
        text.push_str(&format!("[[partner]]\nid = \"{p}\"\nsource = [\n"));
        let mut files: Vec<PathBuf> = std::fs::read_dir(&folder).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        for f in files.iter().filter(|f| f.is_file() && f.extension().is_some_and(|e| e != "md")) {
            let kind = f.file_stem().unwrap().to_string_lossy();
            text.push_str(&format!("  {{ kind = \"{kind}\", path = \"{}\" }},\n", f.display()));
        }
        text.push_str("]\n");
    }
    for d in dests {
        text.push_str(&format!(
            "[destination.{}]\nprofile = \"{}\"\nbase_url = \"{}\"\nbatch_size = 25\nconcurrency = 2\nrate_limit_per_second = 500\n{}\n",
            d.name, d.profile, d.url, d.extra
        ));
    }
    let names: Vec<&str> = dests.iter().map(|d| d.name).collect();
    text.push_str(&common::open_sharing(partners, &names));
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

async fn engine(config: &Path) -> Engine {
    Engine::start(Config::load(config).unwrap()).await.unwrap()
}

fn no_shutdown() -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    std::mem::forget(tx);
    rx
}

/// Every resource the mapping produces for these partners, as (type, id).
fn mapped_keys(engine: &Engine) -> Vec<(String, String)> {
    struct Keys(Vec<(String, String)>);
    impl york_connector::mapping::Sink for Keys {
        fn resource(&mut self, r: &york_connector::mapping::MappedResource<'_>) -> std::io::Result<()> {
            self.0.push((r.resource_type.to_string(), r.id.to_string()));
            Ok(())
        }
        fn quarantined(&mut self, _: &york_connector::mapping::Quarantined) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut keys = Keys(Vec::new());
    for p in &engine.config.partners {
        let inputs = engine.inputs(&p.id).unwrap();
        york_connector::mapping::run(&engine.catalog.partners[&p.id], &inputs, &mut keys).unwrap();
    }
    keys.0
}

/// The transaction entries of a proxied write.
fn entries(record: &common::proxy::ProxyRecord) -> Vec<Value> {
    let bundle: Value = serde_json::from_slice(&record.body).unwrap_or(Value::Null);
    bundle["entry"].as_array().cloned().unwrap_or_default()
}

/// Every mapped resource is on the server, unless the sharing rules withheld it (people who declined or
/// withdrew consent, not-for-the-patient items and PKB).
async fn assert_all_delivered(engine: &Engine, dest: &str, hfs: &Hfs) {
    let withheld: std::collections::HashSet<(String, String)> = engine
        .store
        .audit_list(&york_connector::store::AuditFilter {
            destination: Some(dest.to_string()),
            actions: vec!["withheld".parse().unwrap()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_iter()
        .map(|a| (a.resource_type.unwrap_or_default(), a.resource_id.unwrap_or_default()))
        .collect();
    let mut missing = Vec::new();
    for (t, id) in mapped_keys(engine) {
        if withheld.contains(&(t.clone(), id.clone())) {
            continue;
        }
        let key = ResourceKey { resource_type: t.clone(), id: id.clone() };
        let entry = engine.store.ledger_get(dest, &key).await.unwrap();
        let remote = entry.as_ref().map_or(id.clone(), |e| e.remote_id.clone());
        let (status, _) = hfs.get(&format!("{t}/{remote}")).await;
        if status != 200 {
            missing.push(format!("{t}/{id} (remote {remote}): {status}"));
        }
    }
    assert!(missing.is_empty(), "{dest} lacks {} resources: {missing:?}", missing.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cycle_delivers_everything_then_nothing_then_exactly_the_change() {
    let (cito, pkb) = (Hfs::start().await, Hfs::start().await);
    let (pc, pp) =
        (FaultProxy::start(&cito.base_url, FaultPlan::none()), FaultProxy::start(&pkb.base_url, FaultPlan::none()));
    let dir = TempDir::new("sync-cycle");
    let config = write_config(
        dir.path(),
        &[
            Dest { name: "cito", profile: "cito", url: pc.base_url(), extra: "" },
            Dest { name: "pkb", profile: "pkb", url: pp.base_url(), extra: "" },
        ],
        &["hub", "york-mind", "carers-centre"],
    );
    let engine = engine(&config).await;

    let first = engine.cycle(None, None, false, &no_shutdown()).await.unwrap();
    assert_eq!(first.dead_lettered() + first.deferred(), 0, "{first:?}");
    assert_all_delivered(&engine, "cito", &cito).await;
    assert_all_delivered(&engine, "pkb", &pkb).await;
    assert!(!pc.writes().is_empty() && !pp.writes().is_empty());

    // Same input: not one request that writes.
    pc.clear_log();
    pp.clear_log();
    let second = engine.cycle(None, None, false, &no_shutdown()).await.unwrap();
    assert!(second.ingest.iter().all(|i| i.queued.values().all(|n| *n == 0)), "{second:?}");
    assert_eq!(pc.writes().len() + pp.writes().len(), 0, "the second cycle wrote");

    // One changed source row: exactly one update on each destination.
    let person = dir.path().join("hub/person.csv");
    let bytes = std::fs::read(&person).unwrap();
    let text = String::from_utf8_lossy(&bytes).to_string();
    assert!(text.contains("Connor"), "fixture changed? Connor Walsh (HUB-1006) expected");
    let changed: Vec<u8> = {
        let needle = b"Connor";
        let at = bytes.windows(needle.len()).position(|w| w == needle).unwrap();
        let mut v = bytes[..at].to_vec();
        v.extend_from_slice(b"Conor");
        v.extend_from_slice(&bytes[at + needle.len()..]);
        v
    };
    std::fs::write(&person, changed).unwrap();
    engine.cycle(None, None, false, &no_shutdown()).await.unwrap();
    // Connor (HUB-1006, consent CN-706) agreed to the central record but not to PKB: PKB gets nothing.
    assert!(pp.writes().is_empty(), "PKB was written for someone who did not agree to it");
    for (proxy, hfs) in [(&pc, &cito)] {
        let writes = proxy.writes();
        assert_eq!(writes.len(), 1, "one bundle: {:?}", writes.iter().map(|w| &w.target).collect::<Vec<_>>());
        let e = entries(&writes[0]);
        assert_eq!(e.len(), 1, "one resource in it");
        assert_eq!(e[0]["request"]["method"], "PUT");
        assert!(e[0]["request"]["ifMatch"].is_string(), "updates carry If-Match");
        let url = e[0]["request"]["url"].as_str().unwrap().to_string();
        assert!(url.starts_with("Patient/"));
        let (_, now) = hfs.get(&url).await;
        assert_eq!(now["name"][0]["given"][0], "Conor");
        assert_eq!(now["meta"]["versionId"], "2");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patient_already_on_the_destination_is_linked_not_duplicated() {
    let cito = Hfs::start().await;
    // A hospital created Zoë first, with its own id.
    let hospital = json!({"resourceType": "Patient", "id": "hospital-zoe", "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9990123403"}],
        "name": [{"family": "Bronte", "given": ["Zoe"]}]});
    let (status, _) = cito.put("Patient/hospital-zoe", &hospital).await;
    assert!(status == 200 || status == 201);
    let dir = TempDir::new("sync-link");
    let config =
        write_config(dir.path(), &[Dest { name: "cito", profile: "cito", url: &cito.base_url, extra: "" }], &["hub"]);
    let engine = engine(&config).await;
    let report = engine.cycle(None, None, false, &no_shutdown()).await.unwrap();
    assert_eq!(report.delivery[0].linked, 1, "{report:?}");

    let same_person = cito.search_all("Patient?identifier=https://fhir.nhs.uk/Id/nhs-number|9990123403").await;
    assert_eq!(same_person.len(), 1, "one Patient for the person");
    assert_eq!(same_person[0]["id"], "hospital-zoe");
    assert_eq!(same_person[0]["name"][0]["given"][0], "Zoe", "someone else's Patient is not overwritten");
    let theirs = cito.search_all("Encounter?subject=Patient/hospital-zoe").await;
    assert!(!theirs.is_empty(), "the Hub's contacts with Zoë reference the hospital's Patient");
    // And nothing anywhere references the Patient the Hub would have created.
    let ours = york_connector::mapping::ids::resource_id("hub", "person", "patient", "HUB-1001");
    assert_eq!(cito.get(&format!("Patient/{ours}")).await.0, 404);
    assert!(cito.search_all(&format!("Encounter?subject=Patient/{ours}")).await.is_empty());
}

/// Issue 15: the new Patients of a leased batch are looked up together, with one `POST Patient/_search`
/// whose form body OR-s their identifiers (not one search per person), so no NHS number is in any URL; a
/// match found that way still links instead of creating a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_patients_are_looked_up_a_batch_at_a_time_and_never_in_a_url() {
    let cito = Hfs::start().await;
    let hospital = json!({"resourceType": "Patient", "id": "hospital-zoe", "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9990123403"}],
        "name": [{"family": "Bronte", "given": ["Zoe"]}]});
    let (status, _) = cito.put("Patient/hospital-zoe", &hospital).await;
    assert!(status == 200 || status == 201);
    let proxy = FaultProxy::start(&cito.base_url, FaultPlan::none());
    let dir = TempDir::new("sync-lookups");
    let config =
        write_config(dir.path(), &[Dest { name: "cito", profile: "cito", url: proxy.base_url(), extra: "" }], &["hub"]);
    let engine = engine(&config).await;
    let report = engine.cycle(None, None, false, &no_shutdown()).await.unwrap();
    assert_eq!((report.delivery[0].linked, report.delivery[0].dead_lettered), (1, 0), "{report:?}");
    let same_person = cito.search_all("Patient?identifier=https://fhir.nhs.uk/Id/nhs-number|9990123403").await;
    assert_eq!(same_person.len(), 1, "one Patient for the person");
    assert_eq!(same_person[0]["id"], "hospital-zoe");

    let log = proxy.log();
    // The look-ups: posted batch bundles of single searches, the NHS numbers in the body.
    let searches: Vec<Vec<String>> = log.iter().map(|r| r.searches()).filter(|s| !s.is_empty()).collect();
    let per_search: Vec<usize> = searches
        .iter()
        .map(|urls| {
            assert!(urls.iter().all(|u| u.starts_with("Patient?identifier=")), "one search per person: {urls:?}");
            assert!(urls.iter().any(|u| u.contains("nhs-number")), "by NHS number: {urls:?}");
            urls.len()
        })
        .collect();
    let bundles: Vec<_> = log.iter().filter(|r| r.method == "POST" && r.target == "/" && r.is_write()).collect();
    let created = bundles
        .iter()
        .flat_map(|r| entries(r))
        .filter(|e| {
            e["request"]["method"] == "PUT" && e["request"]["url"].as_str().is_some_and(|u| u.starts_with("Patient/"))
        })
        .count();
    let searched: usize = per_search.iter().sum();
    eprintln!(
        "first load: {} requests, {} bundles, {created} Patients created, 1 linked, {} searches for {searched} people",
        log.len(),
        bundles.len(),
        searches.len()
    );
    assert_eq!(searched, created + 1, "every new Patient is looked up once: {per_search:?}");
    assert!(searches.len() <= bundles.len(), "at most one search per batch: {per_search:?}");
    assert!(per_search.iter().any(|&n| n > 1), "a search asks for several people: {per_search:?}");
    // No NHS number (nor any identifier) in a request line.
    for r in &log {
        let digits: Vec<&str> = r.target.split(|c: char| !c.is_ascii_digit()).filter(|d| d.len() >= 10).collect();
        assert!(
            digits.is_empty() && !r.target.contains("identifier") && !r.target.contains("nhs"),
            "{} {}",
            r.method,
            r.target
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_are_survived_and_a_refused_resource_is_dead_lettered_alone() {
    let cito = Hfs::start().await;
    let plan = FaultPlan::none()
        .with(Fault::Unavailable, 0.12)
        .with(Fault::TooManyRequests, 0.08)
        .with(Fault::Timeout, 0.05)
        .with(Fault::Reset, 0.08)
        .with(Fault::AfterForwardReset, 0.08)
        .retry_after(1)
        .hang_for(Duration::from_millis(2500))
        .seed(7);
    let proxy = FaultProxy::start(&cito.base_url, plan);
    let dir = TempDir::new("sync-faults");
    let rate = 15.0;
    let extra = format!(
        "timeout_seconds = 1\nmax_attempts = 8\ndefer_seconds = 1\nbreaker_failures = 1000\nrate_limit_per_second = {rate}\n"
    );
    let config = write_config(
        dir.path(),
        &[Dest { name: "cito", profile: "cito", url: proxy.base_url(), extra: &extra }],
        &["hub", "york-mind"],
    );
    // The generated config sets a rate of 500 before `extra`; TOML takes the first, so drop it.
    let text = std::fs::read_to_string(&config).unwrap().replace("rate_limit_per_second = 500\n", "");
    std::fs::write(&config, text).unwrap();
    let engine = engine(&config).await;

    // A resource the server refuses (a code outside the value set), queued among good ones. It is about
    // HUB-1001 (consent given to the central record): a resource about no one is withheld before sending.
    let bad_id = "00000000-0000-4000-8000-00000000bad1";
    let hub_1001 = "Patient/85ddeb14-b63a-5283-9836-66d129438d3f";
    let bad = json!({"resourceType": "Encounter", "id": bad_id, "status": "not-a-status",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": hub_1001}})
    .to_string();
    engine
        .store
        .enqueue(
            &[OutboxItem {
                destination: "cito".into(),
                key: ResourceKey { resource_type: "Encounter".into(), id: bad_id.into() },
                patient: Some(hub_1001.into()),
                op: Op::Upsert,
                content_hash: content_hash(&bad),
                body: Some(bad),
                origin: Some(york_connector::model::Provenance::decode("hub|mental_health|0|0")),
            }],
            chrono::Utc::now(),
        )
        .await
        .unwrap();

    let mut rounds = 0;
    loop {
        rounds += 1;
        let r = engine.cycle(None, None, false, &no_shutdown()).await.unwrap();
        // A pass that ends deferred hands back what its workers had leased (their next batches included),
        // so the next pass may take it at once.
        assert_eq!(engine.store.lease_owners().await.unwrap(), Vec::<String>::new(), "round {rounds}: {r:?}");
        let pending =
            engine.store.outbox_list(Some("cito"), false, 10_000).await.unwrap().iter().filter(|r| !r.dead).count();
        if pending == 0 {
            break;
        }
        assert!(rounds < 30, "outbox not drained after {rounds} rounds: {r:?}");
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    assert!(proxy.count_faults(Fault::Unavailable) > 0 && proxy.count_faults(Fault::AfterForwardReset) > 0);

    // Everything arrived, nothing twice, and the rate stayed within the limit.
    proxy.set_plan(FaultPlan::none());
    assert_all_delivered(&engine, "cito", &cito).await;
    let patients = cito.search_all("Patient?_count=200").await;
    let mut ids: Vec<String> = patients
        .iter()
        .flat_map(|p| p["identifier"].as_array().cloned().unwrap_or_default())
        .filter(|i| i["system"] == "https://fhir.nhs.uk/Id/nhs-number")
        .map(|i| i["value"].as_str().unwrap_or_default().to_string())
        .collect();
    let n = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n, "a person was created twice");
    let busiest = proxy.max_in_window(Duration::from_secs(1));
    assert!(busiest as f64 <= rate + 1.0, "{busiest} requests in one second; the limit is {rate}/s");

    // The refused resource alone is in the dead letter, with the server's reason.
    let dead = engine.store.outbox_list(Some("cito"), true, 100).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].item.key.id, bad_id);
    let reason = dead[0].last_error.as_deref().unwrap_or_default();
    assert!(reason.contains("\"status\":4"), "the dead letter keeps the server's answer: {reason}");
    assert_eq!(cito.get(&format!("Encounter/{bad_id}")).await.0, 404);
}

/// Each worker leases its next batch in the transaction that records its last one. When the circuit opens
/// (here on the first refused bundle, after three have landed), workers stop with those batches unsent: the
/// pass hands every lease back, so the next pass takes the rows at once and in order. (Without that, the
/// rows stayed leased to the stopped workers for the lease's length: this test failed 3 runs of 3.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_the_circuit_stops_hands_back_the_batches_its_workers_leased_ahead() {
    let cito = Hfs::start().await;
    let bundles = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = bundles.clone();
    let plan = FaultPlan::always(Fault::Unavailable).only(move |head| {
        // Transaction bundles ask for minimal answers; the batches of Patient searches, posted to the base
        // too, do not.
        head.header("prefer").is_some_and(|p| p.contains("return=minimal"))
            && seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) >= 3
    });
    let proxy = FaultProxy::start(&cito.base_url, plan);
    let dir = TempDir::new("sync-breaker-leases");
    let extra = "breaker_failures = 1\nbreaker_cooldown_seconds = 1\nmax_attempts = 1\ndefer_seconds = 1\ntimeout_seconds = 5\n";
    let config =
        write_config(dir.path(), &[Dest { name: "cito", profile: "cito", url: proxy.base_url(), extra }], &["hub"]);
    let text = std::fs::read_to_string(&config).unwrap().replace("batch_size = 25\n", "batch_size = 2\n");
    std::fs::write(&config, text).unwrap();
    let engine = engine(&config).await;

    let r = engine.cycle(None, None, false, &no_shutdown()).await.unwrap();
    let report = &r.delivery[0];
    // Whether a worker stopped on its own refused bundle or on the open circuit depends on timing; either way
    // none keeps a lease.
    assert!(report.written >= 3 && report.deferred > 0, "{:?}", r.delivery);
    assert_eq!(engine.store.lease_owners().await.unwrap(), Vec::<String>::new(), "{:?}", r.delivery);

    // The server back: the next pass sends the rest.
    proxy.set_plan(FaultPlan::none());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut rounds = 0;
    while engine.store.outbox_list(Some("cito"), false, 10_000).await.unwrap().iter().any(|r| !r.dead) {
        rounds += 1;
        assert!(rounds < 10, "outbox not drained");
        engine.cycle(None, None, false, &no_shutdown()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    assert_all_delivered(&engine, "cito", &cito).await;
}

/// Issue 3, item 6: two connector instances sharing one PostgreSQL deliver a cycle; no resource is sent twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_postgres_never_send_a_resource_twice() {
    let db = common::pg::TestDb::create().await;
    let cito = Hfs::start().await;
    let proxy = FaultProxy::start(&cito.base_url, FaultPlan::none());
    let dir = TempDir::new("sync-two");
    let config = write_config(
        dir.path(),
        &[Dest { name: "cito", profile: "cito", url: proxy.base_url(), extra: "" }],
        &["hub", "york-mind", "carers-centre"],
    );
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text.replace(&format!("sqlite://{}/state.db", dir.path().display()), &db.url);
    std::fs::write(&config, text).unwrap();

    let a = engine(&config).await;
    // A second instance: its own name in leases.
    let mut second = york_connector::context::Context::start(Config::load(&config).unwrap()).await.unwrap();
    second.owner = format!("{}-second", second.owner);
    let b = Engine::new(second);
    assert_eq!(a.store.backend(), york_connector::store::Backend::Postgres);

    // Only the scheduler's leader ingests and plans; both deliver at once.
    let lead_a = a.store.try_lead("scheduler").await.unwrap();
    assert!(lead_a.is_some());
    assert!(b.store.try_lead("scheduler").await.unwrap().is_none(), "one leader at a time");
    for p in ["hub", "york-mind", "carers-centre"] {
        a.ingest(p, false).await.unwrap();
    }
    let (sa, sb) = (no_shutdown(), no_shutdown());
    let (ra, rb) = tokio::join!(a.deliver("cito", &sa), b.deliver("cito", &sb));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(ra.dead_lettered + rb.dead_lettered + ra.deferred + rb.deferred, 0, "{ra:?} {rb:?}");

    let mut sent: Vec<String> = proxy
        .writes()
        .iter()
        .flat_map(entries)
        .map(|e| e["request"]["url"].as_str().unwrap_or_default().to_string())
        .collect();
    let total = sent.len();
    sent.sort();
    sent.dedup();
    assert_eq!(sent.len(), total, "a resource was sent twice");
    assert_eq!(total as u64, ra.written + rb.written);
    assert_all_delivered(&a, "cito", &cito).await;
    // People known to several partners exist once.
    let patients = cito.search_all("Patient?_count=500").await;
    let mut nhs: Vec<&str> = patients
        .iter()
        .flat_map(|p| p["identifier"].as_array().into_iter().flatten())
        .filter(|i| i["system"] == "https://fhir.nhs.uk/Id/nhs-number")
        .filter_map(|i| i["value"].as_str())
        .collect();
    let n = nhs.len();
    nhs.sort();
    nhs.dedup();
    assert_eq!(nhs.len(), n, "a person was created twice");
    eprintln!("instance a wrote {}, instance b wrote {}", ra.written, rb.written);
}

/// Issue 15: a cycle whose partners offer one round each starts delivering while it still plans. The delivery
/// pass then waits for planning instead of ending on an empty outbox, delivers what is enqueued after it
/// started, and keeps each person's order: the Patient planned first lands before the Encounter planned
/// after it, even though the Encounter is enqueued while the Patient may still be in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_beside_planning_waits_for_it_and_keeps_each_persons_order() {
    let cito = Hfs::start().await;
    let pc = FaultProxy::start(&cito.base_url, FaultPlan::none());
    let dir = TempDir::new("sync-pipelined");
    let config =
        write_config(dir.path(), &[Dest { name: "cito", profile: "cito", url: pc.base_url(), extra: "" }], &["hub"]);
    let engine = engine(&config).await;
    let (planning, planned) = tokio::sync::watch::channel(());
    let delivering = {
        let (store, dest, owner) =
            (engine.store.clone(), engine.destination("cito").unwrap().clone(), engine.owner.clone());
        tokio::spawn(async move {
            york_connector::deliver::deliver(&store, &dest, &owner, &no_shutdown(), Some(planned)).await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!delivering.is_finished(), "delivery ended on an empty outbox while planning went on");

    let item = |resource: Value| OutboxItem {
        destination: "cito".into(),
        key: ResourceKey {
            resource_type: resource["resourceType"].as_str().unwrap().into(),
            id: resource["id"].as_str().unwrap().into(),
        },
        patient: Some("Patient/pipelined-p".into()),
        op: Op::Upsert,
        content_hash: content_hash(&resource.to_string()),
        body: Some(resource.to_string()),
        origin: Some(york_connector::model::Provenance::decode("hub|mental_health|0|0")),
    };
    let patient = json!({"resourceType": "Patient", "id": "pipelined-p",
        "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9997770005"}],
        "name": [{"family": "Pipe", "given": ["Lina"]}]});
    let encounter = json!({"resourceType": "Encounter", "id": "pipelined-e", "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": "Patient/pipelined-p"}});
    engine.store.enqueue(&[item(patient)], chrono::Utc::now()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    engine.store.enqueue(&[item(encounter)], chrono::Utc::now()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!delivering.is_finished(), "delivery ended while planning went on");
    drop(planning);
    let report = tokio::time::timeout(Duration::from_secs(30), delivering).await.unwrap().unwrap().unwrap();
    assert_eq!((report.written, report.deferred, report.dead_lettered), (2, 0, 0), "{report:?}");

    let urls: Vec<String> = pc
        .writes()
        .iter()
        .flat_map(entries)
        .filter_map(|e| e["request"]["url"].as_str().map(str::to_string))
        .filter(|u| u.starts_with("Patient/pipelined") || u.starts_with("Encounter/pipelined"))
        .collect();
    assert_eq!(urls, ["Patient/pipelined-p", "Encounter/pipelined-e"], "the person's order");
    assert_eq!(cito.get("Encounter/pipelined-e").await.0, 200);
}

/// Plan receipts (`sync::receipt`): a partner whose exports, mappings, configuration and state are as at a plan
/// that changed nothing is not planned again, and is planned in full as soon as any of them changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_partner_is_not_planned_again_until_anything_it_depends_on_changes() {
    let cito = Hfs::start().await;
    let pc = FaultProxy::start(&cito.base_url, FaultPlan::none());
    let dir = TempDir::new("sync-receipt");
    let config = write_config(
        dir.path(),
        &[Dest { name: "cito", profile: "cito", url: pc.base_url(), extra: "" }],
        &["hub", "york-mind"],
    );
    let engine = engine(&config).await;
    let cycle = || async { engine.cycle(None, None, false, &no_shutdown()).await.unwrap() };
    let unchanged = |r: &york_connector::sync::CycleReport| -> Vec<(String, bool)> {
        r.ingest.iter().map(|i| (i.partner.clone(), i.unchanged_since.is_some())).collect()
    };
    let both = |hub: bool, mind: bool| vec![("hub".to_string(), hub), ("york-mind".to_string(), mind)];

    // The first cycle sends; the second plans in full and changes nothing (a receipt each); the third is the
    // receipts' and reads nothing but the files' fingerprints.
    let first = cycle().await;
    assert_eq!(first.dead_lettered() + first.deferred(), 0, "{first:?}");
    assert_eq!(unchanged(&cycle().await), both(false, false));
    let generation = engine.store.plan_generation().await.unwrap();
    pc.clear_log();
    let third = cycle().await;
    assert_eq!(unchanged(&third), both(true, true), "{third:?}");
    assert!(third.ingest.iter().all(|i| i.queued.values().all(|n| *n == 0)));
    assert!(third.ingest[0].mapping.quarantined() > 0, "the full plan's counts are reported again");
    assert!(third.ingest[0].withheld.values().sum::<u64>() > 0, "the full plan's withholdings are reported again");
    assert_eq!(pc.writes().len(), 0);
    assert_eq!(engine.store.plan_generation().await.unwrap(), generation, "a quiet cycle changes nothing");

    // A receipt stands for an hour at most, and one dated ahead of the clock not at all.
    for at in [chrono::Utc::now() - chrono::Duration::minutes(61), chrono::Utc::now() + chrono::Duration::minutes(5)] {
        let receipt = engine.store.plan_receipt("hub").await.unwrap().expect("a receipt");
        engine.store.plan_receipt_put("hub", &york_connector::store::PlanReceipt { at, ..receipt }).await.unwrap();
        assert_eq!(unchanged(&cycle().await), both(false, true), "receipt dated {at}");
    }

    // The same bytes written again (a new export, its time changed): the Hub is planned in full, York Mind not.
    let person = dir.path().join("hub/person.csv");
    let bytes = std::fs::read(&person).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(&person, &bytes).unwrap();
    assert_eq!(unchanged(&cycle().await), both(false, true));
    assert_eq!(unchanged(&cycle().await), both(true, true), "a new receipt");

    // Anything a plan reads in the store changed (a record marked to be planned again, as a retracted
    // Patient's relinking does): both are planned in full, and the record is sent again.
    let key = ResourceKey::new("Encounter", &mapped_keys(&engine).iter().find(|(t, _)| t == "Encounter").unwrap().1);
    let mut entry = engine.store.ledger_get("cito", &key).await.unwrap().expect("sent");
    entry.content_hash = String::new();
    engine.store.ledger_put(&entry).await.unwrap();
    pc.clear_log();
    let after = cycle().await;
    assert_eq!(unchanged(&after), both(false, false));
    assert_eq!(after.ingest.iter().map(|i| i.queued["cito"]).sum::<u64>(), 1, "{after:?}");
    assert_eq!(pc.writes().len(), 1);

    // A changed consent export: planned in full, and the change is acted on. (The Hub planned the send above,
    // so it has no receipt; York Mind has one when its plan ran after the send had landed.)
    assert_eq!(unchanged(&cycle().await)[0], ("hub".to_string(), false));
    assert_eq!(unchanged(&cycle().await), both(true, true));
    let consent = dir.path().join("hub/consent.csv");
    let text = std::fs::read_to_string(&consent).unwrap();
    std::fs::write(&consent, text.replacen("\n", "\n\n", 1)).unwrap();
    assert_eq!(unchanged(&cycle().await)[0], ("hub".to_string(), false));
}
