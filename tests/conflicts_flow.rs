//! Conflicts and reconcile against a real Helios FHIR Server standing in for Cito, with the Hub's fixtures:
//! - a remote edit to an element the partner did not change is kept and merged;
//! - a remote edit to the element the partner changed is a conflict, and the remote value stays;
//! - `--keep source` and `--keep remote` each lead to the expected server state and an audit entry;
//! - reconcile finds a deleted, an extra, an edited and a stale resource (the same, resource by resource, when
//!   it reads two a page), `--fix` repairs all but the conflict, and reconcile then exits 0.
//!
//! With `CONFLICT_REPORT_HTML=FILE` the first test also writes the HTML report of its open conflicts there
//! (`scripts/conflict-report-screenshot.sh` uses it).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Hfs, TempDir};
use serde_json::{Value, json};
use york_connector::config::Config;
use york_connector::reconcile::Options;
use york_connector::reconcile::resolve::{self, Keep};
use york_connector::store::AuditFilter;
use york_connector::sync::Engine;

const HUB_SYSTEM: &str = "https://id.york-connector.example/hub/client";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The Hub's fixtures copied into `dir` (the test edits them) and a config sending them to `cito`.
fn write_config(dir: &Path, cito: &str) -> PathBuf {
    let mut text = format!(
        "[state]\nurl = \"sqlite://{}/state.db\"\n[mappings]\ndir = \"{}/mappings\"\n",
        dir.display(),
        root().display()
    );
    text.push_str(&common::copy_fixtures(dir, &["hub"]));
    text.push_str(&format!(
        "[destination.cito]\nprofile = \"cito\"\nbase_url = \"{cito}\"\nrate_limit_per_second = 500\n\
         [conflicts]\nauto_merge = [\"Patient\"]\n"
    ));
    text.push_str(&common::open_sharing(&["hub"], &["cito"]));
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Changes the Hub's export in place (bytes: the file is Windows-1252).
fn edit_export(dir: &Path, from: &str, to: &str) {
    let path = dir.join("hub/person.csv");
    let bytes = std::fs::read(&path).unwrap();
    let text: String = bytes.iter().map(|&b| b as char).collect();
    assert_eq!(text.matches(from).count(), 1, "{from} should appear once in person.csv");
    let edited: Vec<u8> = text.replace(from, to).chars().map(|c| c as u32 as u8).collect();
    std::fs::write(&path, edited).unwrap();
}

fn no_shutdown() -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    std::mem::forget(tx);
    rx
}

async fn sync(engine: &Engine) -> york_connector::sync::CycleReport {
    engine.cycle(None, None, false, &no_shutdown()).await.unwrap()
}

/// The Hub client's Patient as the server holds it.
async fn patient(hfs: &Hfs, client: &str) -> Value {
    let found = hfs.search_all(&format!("Patient?identifier={HUB_SYSTEM}|{client}")).await;
    assert_eq!(found.len(), 1, "one Patient for {client}");
    found[0].clone()
}

/// Someone else edits a Patient on the server (a plain PUT of the whole resource, as a client would).
async fn remote_edit(hfs: &Hfs, mut p: Value, element: &str, value: Value) -> Value {
    p[element] = value;
    let id = p["id"].as_str().unwrap().to_string();
    let (status, stored) = hfs.put(&format!("Patient/{id}"), &p).await;
    assert_eq!(status, 200, "{stored}");
    stored
}

fn mobile(p: &Value) -> Vec<String> {
    p["telecom"]
        .as_array()
        .map(|t| {
            t.iter().filter(|c| c["system"] == "phone").filter_map(|c| c["value"].as_str().map(String::from)).collect()
        })
        .unwrap_or_default()
}

async fn audit(engine: &Engine, action: &str) -> Vec<york_connector::store::AuditEntry> {
    engine
        .store
        .audit_list(&AuditFilter { actions: vec![action.parse().unwrap()], ..Default::default() })
        .await
        .unwrap()
}

fn connector(config: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_connector")).arg("--config").arg(config).args(args).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_edits_are_merged_or_kept_as_conflicts_and_resolved_by_an_admin() {
    let cito = Hfs::start().await;
    let dir = TempDir::new("conflicts");
    let config = write_config(dir.path(), &cito.base_url);
    let engine = Engine::start(Config::load(&config).unwrap()).await.unwrap();
    sync(&engine).await;

    // Three people edited on the server by someone else.
    let moved = json!([{"use": "home", "line": ["1 Clinician Street"], "city": "York", "postalCode": "YO1 7HH"}]);
    let clinician_phone = json!([{"system": "phone", "value": "07700 900111", "use": "mobile"}]);
    remote_edit(&cito, patient(&cito, "HUB-1006").await, "address", moved.clone()).await;
    remote_edit(&cito, patient(&cito, "HUB-1008").await, "telecom", clinician_phone.clone()).await;
    remote_edit(&cito, patient(&cito, "HUB-1010").await, "telecom", clinician_phone.clone()).await;

    // A pull asked to stop (the daemon is stopping) reads nothing and keeps its cursor, so the next pull
    // still finds every change.
    let stopping = engine.pull("cito", &tokio::sync::watch::channel(true).1).await.unwrap();
    assert_eq!((stopping.read, stopping.changed), (0, 0), "{stopping:?}");

    // A pull notices the three changes made there and keeps them (the next updates merge instead of
    // writing over them); a second pull finds nothing new.
    let pulled = engine.pull("cito", &tokio::sync::watch::channel(false).1).await.unwrap();
    assert_eq!((pulled.changed, pulled.stale, pulled.deleted), (3, 0, 0), "{pulled:?}");
    assert_eq!(audit(&engine, "remote-change").await.len(), 3);
    assert_eq!(engine.pull("cito", &tokio::sync::watch::channel(false).1).await.unwrap().changed, 0);

    // The partner changes each one's mobile number.
    edit_export(dir.path(), "07700900567", "07700900568");
    edit_export(dir.path(), "07700 900678", "07700 900679");
    edit_export(dir.path(), "07700 900789", "07700 900780");
    let report = sync(&engine).await;
    let d = &report.delivery[0];
    assert_eq!((d.merged, d.conflicts), (1, 2), "{d:?}");

    // Different elements: merged. The partner's new number and the clinician's address are both there.
    let merged = patient(&cito, "HUB-1006").await;
    assert!(mobile(&merged).iter().any(|m| m.replace(' ', "") == "07700900568"), "{merged}");
    assert_eq!(merged["address"], moved);
    // The same element: a conflict; the clinician's number is still on the server.
    for client in ["HUB-1008", "HUB-1010"] {
        assert_eq!(patient(&cito, client).await["telecom"], clinician_phone, "{client} was overwritten");
    }
    let open = engine.store.conflicts_list(false, None, 100).await.unwrap();
    assert_eq!(open.len(), 2);
    assert!(open.iter().all(|c| c.elements == ["telecom"]), "{open:?}");
    assert!(open.iter().all(|c| c.base_json.is_some() && c.source_json.is_some() && c.remote_json.is_some()));
    // Nothing more happens on the next cycle: no write, no new conflict.
    let again = sync(&engine).await;
    assert_eq!((again.delivery[0].written, again.delivery[0].conflicts), (0, 0), "{:?}", again.delivery[0]);
    assert_eq!(audit(&engine, "conflict").await.len(), 2);

    // The admin's view: list exits 3 while conflicts are open; show compares element by element.
    let (code, list) = connector(&config, &["conflicts", "list"]);
    assert_eq!(code, 3, "{list}");
    assert!(list.contains("telecom"), "{list}");
    let (code, shown) = connector(&config, &["conflicts", "show", &open[0].id.to_string()]);
    assert_eq!(code, 0);
    // In words: whose record, what each side did to the mobile number, and the commands that decide it.
    assert!(shown.starts_with(&format!("Conflict {}: Person (Patient) HUB-10", open[0].id)), "{shown}");
    assert!(shown.contains("! Phone and email (telecom): changed on both sides"), "{shown}");
    assert!(
        shown.contains("cito changed    Mobile phone: 07700 900") && shown.contains(" → 07700 900111\n"),
        "{shown}"
    );
    let decide = format!("--config {} conflicts resolve {} --keep remote", config.display(), open[0].id);
    assert!(shown.contains(&decide), "{shown}");
    let html = york_connector::conflict::report::html(&open, chrono::Utc::now(), "connector");
    assert!(html.contains("Person (Patient) HUB-1008 from hub, at cito") && html.contains("07700 900111"));
    if let Some(out) = std::env::var_os("CONFLICT_REPORT_HTML") {
        let out = PathBuf::from(out);
        std::fs::create_dir_all(out.parent().unwrap()).unwrap();
        let (code, _) = connector(&config, &["conflicts", "report", "--html", out.to_str().unwrap()]);
        assert_eq!(code, 0);
    }

    let (id_1008, id_1010) = (
        patient(&cito, "HUB-1008").await["id"].as_str().unwrap().to_string(),
        patient(&cito, "HUB-1010").await["id"].as_str().unwrap().to_string(),
    );
    let by_client = |client: &str| {
        let id = if client == "HUB-1008" { &id_1008 } else { &id_1010 };
        open.iter().find(|c| &c.resource_id == id).unwrap().id
    };
    // Keep source: the partner's number goes to the server, audited as decided and disclosed.
    let r = resolve::resolve(&engine, by_client("HUB-1008"), Keep::Source, "admin-test").await.unwrap();
    assert!(r.written);
    let kept_source = patient(&cito, "HUB-1008").await;
    assert!(mobile(&kept_source).iter().any(|m| m.replace(' ', "") == "07700900679"), "{kept_source}");
    // Keep remote, from the command line of someone whose environment claims another user: nothing is
    // written, the clinician's number stays, and the audit names the account of the real user id.
    let out = Command::new(env!("CARGO_BIN_EXE_connector"))
        .arg("--config")
        .arg(&config)
        .args(["conflicts", "resolve", &by_client("HUB-1010").to_string(), "--keep", "remote"])
        .env("USER", "mallory")
        .env("LOGNAME", "mallory")
        .env("SUDO_USER", "mallory")
        .env_remove("SUDO_UID")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && said.contains("was kept"), "{said}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(patient(&cito, "HUB-1010").await["telecom"], clinician_phone);
    let real = resolve::who_from(
        &std::fs::read_to_string("/proc/self/status").unwrap(),
        &std::fs::read_to_string("/etc/passwd").unwrap(),
        None,
    );
    let decided = audit(&engine, "conflict-resolved").await;
    assert_eq!(decided.len(), 2);
    let reason = |a: &york_connector::store::AuditEntry| a.reason.clone().unwrap_or_default();
    assert!(decided.iter().any(|a| reason(a).contains("admin-test")), "{decided:?}");
    assert!(decided.iter().any(|a| reason(a).ends_with(&format!("decided by {real}"))), "{real}: {decided:?}");
    assert!(decided.iter().all(|a| !reason(a).contains("mallory")), "{decided:?}");
    assert!(decided.iter().any(|a| a.reason.as_deref().unwrap_or_default().contains("partner's version")));
    assert!(decided.iter().any(|a| a.reason.as_deref().unwrap_or_default().contains("version on cito")));
    assert!(engine.store.conflicts_list(false, None, 100).await.unwrap().is_empty());
    // Resolved for good: the next cycle writes nothing, and resolving again is refused.
    let after = sync(&engine).await;
    assert_eq!((after.delivery[0].written, after.delivery[0].conflicts), (0, 0), "{:?}", after.delivery[0]);
    assert!(resolve::resolve(&engine, by_client("HUB-1010"), Keep::Source, "x").await.is_err());
    let (code, _) = connector(&config, &["conflicts", "list"]);
    assert_eq!(code, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_finds_each_kind_of_drift_and_fix_repairs_all_but_conflicts() {
    let cito = Hfs::start().await;
    let dir = TempDir::new("reconcile");
    let config = write_config(dir.path(), &cito.base_url);
    let engine = Engine::start(Config::load(&config).unwrap()).await.unwrap();
    sync(&engine).await;
    let opts = Options { destination: Some("cito".into()), ..Default::default() };
    let clean = engine.reconcile(&opts).await.unwrap();
    assert_eq!(clean.drift(), 0, "{:?}", clean.findings);
    assert!(clean.read > 20);
    let (code, out) = connector(&config, &["reconcile"]);
    assert_eq!(code, 0, "{out}");

    // Stale: the partner changes HUB-1002's number, it is synced, then an old copy is put back on the server.
    let before = patient(&cito, "HUB-1002").await;
    edit_export(dir.path(), "07700 900234", "07700 900235");
    sync(&engine).await;
    let (status, _) = cito.put(&format!("Patient/{}", before["id"].as_str().unwrap()), &before).await;
    assert_eq!(status, 200);
    // Deleted: an Encounter goes. Extra: a tagged Observation nobody sent. Edited: a Patient's address.
    let encounters = cito.search_all("Encounter?_count=5").await;
    let gone = encounters[0]["id"].as_str().unwrap().to_string();
    assert_eq!(cito.delete(&format!("Encounter/{gone}")).await.0, 204);
    let mut extra = cito.search_all("Observation?_count=1").await[0].clone();
    extra["id"] = json!("planted-extra-1");
    assert_eq!(cito.put("Observation/planted-extra-1", &extra).await.0, 201);
    let edited = remote_edit(
        &cito,
        patient(&cito, "HUB-1006").await,
        "address",
        json!([{"line": ["1 Clinician Street"], "city": "York"}]),
    )
    .await;
    // And a conflict: HUB-1008's telecom changed on both sides.
    remote_edit(
        &cito,
        patient(&cito, "HUB-1008").await,
        "telecom",
        json!([{"system": "phone", "value": "07700 900111"}]),
    )
    .await;
    edit_export(dir.path(), "07700 900678", "07700 900679");
    let r = sync(&engine).await;
    assert_eq!(r.delivery[0].conflicts, 1);

    let found = engine.reconcile(&opts).await.unwrap();
    let count = |class: &str| found.findings.iter().filter(|f| f.class.as_str() == class).count();
    assert_eq!(
        (count("missing"), count("unexpected"), count("drifted"), count("stale"), count("conflict")),
        (1, 1, 1, 1, 1),
        "{:#?}",
        found.findings
    );
    let id_of = |class: &str| found.findings.iter().find(|f| f.class.as_str() == class).unwrap().id.clone();
    assert_eq!(id_of("missing"), gone);
    assert_eq!(id_of("unexpected"), "planted-extra-1");
    assert_eq!(id_of("drifted"), edited["id"].as_str().unwrap());
    assert_eq!(id_of("stale"), before["id"].as_str().unwrap());
    let (code, out) = connector(&config, &["reconcile", "--format", "json"]);
    assert_eq!(code, 3, "{out}");
    // Read two resources a page (the types side by side, most pages read while the source is still being
    // mapped), the verdicts are the same, resource by resource.
    let paged = engine.reconcile(&Options { page_size: 2, ..opts.clone() }).await.unwrap();
    let verdicts = |r: &york_connector::reconcile::ReconcileReport| {
        let mut v: Vec<(String, String, String, String)> = r
            .findings
            .iter()
            .map(|f| (f.resource_type.clone(), f.id.clone(), f.class.as_str().to_string(), f.detail.clone()))
            .collect();
        v.sort();
        v
    };
    assert_eq!(verdicts(&paged), verdicts(&found));
    let counts = |r: &york_connector::reconcile::ReconcileReport| {
        r.summaries
            .iter()
            .map(|s| (s.resource_type.clone(), s.in_sync, s.missing, s.unexpected, s.drifted, s.stale, s.conflict))
            .collect::<Vec<_>>()
    };
    assert_eq!(counts(&paged), counts(&found));
    assert_eq!(paged.read, found.read);

    let fixed = engine.reconcile(&Options { fix: true, ..opts.clone() }).await.unwrap();
    assert!(fixed.fixed.is_some());
    let (code, out) = connector(&config, &["reconcile"]);
    assert_eq!(code, 0, "after --fix:\n{out}");
    assert!(out.contains("1 in conflict"), "{out}");

    // The server: the deleted Encounter is back, the extra is gone, the stale Patient is current, the
    // clinician's edit is kept, and the conflict's remote value is untouched.
    assert_eq!(cito.get(&format!("Encounter/{gone}")).await.0, 200);
    assert_eq!(cito.get("Observation/planted-extra-1").await.0, 410);
    let current = patient(&cito, "HUB-1002").await;
    assert!(mobile(&current).iter().any(|m| m.replace(' ', "") == "07700900235"), "{current}");
    assert_eq!(patient(&cito, "HUB-1006").await["address"], edited["address"]);
    assert_eq!(patient(&cito, "HUB-1008").await["telecom"], json!([{"system": "phone", "value": "07700 900111"}]));
}
