//! Black-box: consent fails closed when the Hub's consent export is damaged. The real binary runs on copies of
//! the fixtures; the first cycle records everyone's consent (the destination is unreachable, so nothing leaves),
//! then the export is damaged and `sync --once --dry-run --explain` (and a real cycle) must hold the data:
//! - an unreadable consent row (impossible date, unknown decision word) holds its person, everywhere, until the
//!   row is fixed (issue 12, item 1);
//! - a consent export that cannot be read at all holds everything about a person from that partner, instead of
//!   relying on the statements of earlier cycles (item 2);
//! - consent dated after today is pending and cannot outrank a withdrawal; a date far ahead is quarantined
//!   with a reason that says what to do (item 3).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::TempDir;
use serde_json::Value;
use york_connector::mapping::ids;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The Hub's fixtures copied into `dir`, an agreement (explicit consent required) to an unreachable central
/// record, and no waiting between attempts (so the last-moment check sees the rows of the first cycle).
fn setup(dir: &Path) -> PathBuf {
    let mut text = format!(
        "[state]\nurl = \"sqlite://{}/state.db\"\n[mappings]\ndir = \"{}/mappings\"\n",
        dir.display(),
        root().display()
    );
    text.push_str(&common::copy_fixtures(dir, &["hub"]));
    text.push_str(
        "[[sharing]]\nname = \"ISA hub to cito\"\npartner = \"hub\"\ndestination = \"cito\"\n\
         categories = [\"general_health\", \"mental_health\", \"social_care\"]\nlawful_basis = \"UK GDPR 6(1)(e); 9(2)(h)\"\n",
    );
    text.push_str(&format!(
        "[destination.cito]\nprofile = \"cito\"\nbase_url = \"http://127.0.0.1:{}/fhir\"\nmax_attempts = 1\ndefer_seconds = 0\nbatch_size = 500\n",
        common::free_port()
    ));
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn connector(cfg: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_connector"))
        .args(args)
        .arg("--config")
        .arg(cfg)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A real cycle: records persons and consent statements (delivery fails: the destination is unreachable).
fn real_cycle(cfg: &Path) -> Value {
    let (code, out, err) = connector(cfg, &["sync", "--once", "--format", "json"]);
    assert!(matches!(code, Some(0 | 1 | 3)), "sync crashed ({code:?}): {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\n{err}"))
}

/// `sync --once --dry-run --explain --format json`: exit code, the explained decisions, the report, stderr.
fn explain(cfg: &Path) -> (Option<i32>, Vec<Value>, Value, String) {
    let (code, out, err) = connector(cfg, &["sync", "--once", "--dry-run", "--explain", "--format", "json"]);
    let report: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\n{err}"));
    let explained = report["ingest"][0]["explained"].as_array().cloned().unwrap_or_default();
    (code, explained, report, err)
}

fn patient(client: &str) -> String {
    ids::resource_id("hub", "person", "patient", client)
}

/// The decision and reason for the Hub's Patient of `client` at cito.
fn decision_for<'a>(explained: &'a [Value], client: &str) -> (&'a str, &'a str) {
    let id = patient(client);
    let e = explained
        .iter()
        .find(|e| e["resource_type"] == "Patient" && e["id"] == id.as_str() && e["destination"] == "cito")
        .unwrap_or_else(|| panic!("no decision for the Patient of {client}"));
    (e["decision"].as_str().unwrap(), e["why"].as_str().unwrap())
}

fn edit_consent(dir: &Path, edit: impl FnOnce(String) -> String) {
    let path = dir.join("hub/consent.csv");
    let text = std::fs::read_to_string(&path).unwrap();
    let changed = edit(text.clone());
    assert_ne!(changed, text, "the edit changed nothing");
    std::fs::write(path, changed).unwrap();
}

const CN_701: &str = "CN-701,HUB-1001,24/03/2023,Yes,No,York Mind,,Active,";

#[test]
fn an_unreadable_consent_row_holds_the_persons_sends_until_it_is_fixed() {
    for damaged in [
        // An impossible withdrawal date: the person may well have withdrawn.
        "CN-701,HUB-1001,24/03/2023,Yes,No,York Mind,,Withdrawn,31/02/2025",
        // A decision word the mapping does not know.
        "CN-701,HUB-1001,24/03/2023,Yes,No,York Mind,,Revoked,",
    ] {
        let dir = TempDir::new("consent-unreadable-row");
        let cfg = setup(dir.path());
        real_cycle(&cfg);
        let (_, before, _, _) = explain(&cfg);
        assert_eq!(decision_for(&before, "HUB-1001").0, "send", "consent given: the Patient goes to cito");

        edit_consent(dir.path(), |t| t.replace(CN_701, damaged));
        let (code, explained, report, stderr) = explain(&cfg);
        assert_eq!(code, Some(3), "a quarantined row: exit 3\n{stderr}");
        let (decision, why) = decision_for(&explained, "HUB-1001");
        assert_eq!(decision, "withhold", "{damaged}: the earlier 'given' must not stay in force: {why}");
        assert!(why.contains("consent record unreadable"), "{why}");
        // Everything about the person is held, not only their Patient; other people are not.
        let held = explained
            .iter()
            .filter(|e| e["why"].as_str().is_some_and(|w| w.contains("consent record unreadable")))
            .count();
        assert!(held >= 2, "the person's other resources are held too: {held}");
        assert_eq!(decision_for(&explained, "HUB-1002").0, "send", "other people are not held");
        assert!(report["ingest"][0]["consent_held"].to_string().contains("CN-701"), "{report:#}");
        assert!(stderr.contains("Consent record unreadable"), "loud: {stderr}");
        assert!(!stderr.contains("999 012 3403") && !stderr.contains("9990123403"), "no NHS number in logs");

        // A real cycle: planned sends are withheld and audited with the reason, and the rows queued by the first
        // cycle are stopped by the last-moment check before sending.
        let real = real_cycle(&cfg);
        let withheld_at_delivery = real["delivery"][0]["withheld"].as_u64().unwrap_or(0);
        assert!(withheld_at_delivery > 0, "the last-moment check holds the queued rows: {real:#}");
        let audit = audit_reasons(dir.path());
        assert!(
            audit.iter().filter(|(a, r)| a == "withheld" && r.contains("consent record unreadable")).count() >= 2,
            "withholdings audited with the reason: {audit:?}"
        );

        // Fixed: the next cycle reads the record and the hold is gone.
        edit_consent(dir.path(), |t| t.replace(damaged, CN_701));
        real_cycle(&cfg);
        let (_, after, _, _) = explain(&cfg);
        assert_eq!(decision_for(&after, "HUB-1001").0, "send", "released once the row reads cleanly");
    }
}

fn audit_reasons(dir: &Path) -> Vec<(String, String)> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let store =
            york_connector::store::Store::connect(&format!("sqlite://{}/state.db", dir.display())).await.unwrap();
        let entries = store.audit_list(&york_connector::store::AuditFilter::default()).await.unwrap();
        entries.into_iter().map(|e| (e.action.to_string(), e.reason.unwrap_or_default())).collect()
    })
}

/// What is done to the export, and how.
type Damage = (&'static str, fn(&Path));

#[test]
fn a_consent_export_that_cannot_be_read_holds_the_partners_sends() {
    let damages: [Damage; 2] = [
        ("renamed header column", |d| edit_consent(d, |t| t.replacen("Consent Status", "Status", 1))),
        ("missing file", |d| std::fs::remove_file(d.join("hub/consent.csv")).unwrap()),
    ];
    for (what, damage) in damages {
        let dir = TempDir::new("consent-unreadable-export");
        let cfg = setup(dir.path());
        real_cycle(&cfg);
        damage(dir.path());
        let (code, explained, report, stderr) = explain(&cfg);
        assert!(!explained.is_empty());
        for e in &explained {
            let why = e["why"].as_str().unwrap();
            if e["resource_type"] == "Organization" {
                assert_eq!(e["decision"], "send", "{what}: the partner's Organization is about no one");
            } else {
                assert_eq!(
                    e["decision"], "withhold",
                    "{what}: {} {} relied on earlier statements: {why}",
                    e["resource_type"], e["id"]
                );
                if e["resource_type"] == "Patient" {
                    assert!(
                        why.contains("consent record unreadable") && why.contains("hub's consent export"),
                        "{what}: {why}"
                    );
                }
            }
        }
        assert!(explained.iter().any(|e| e["resource_type"] == "Patient"), "{what}: Patients were decided on");
        assert_eq!(code, Some(1), "{what}: a file not mapped is a failure\n{stderr}");
        assert!(stderr.contains("Consent export unreadable"), "{what}: loud: {stderr}");
        assert!(report["ingest"][0]["consent_unreadable"].as_str().is_some_and(|w| w.contains("consent.csv")));
    }
}

/// Rows of the Hub's consent export quarantined in a run.
fn consent_quarantined(report: &Value) -> u64 {
    let files = report["ingest"][0]["mapping"]["files"].as_array().cloned().unwrap_or_default();
    let consent = files.iter().find(|f| f["path"].as_str().is_some_and(|p| p.ends_with("consent.csv")));
    consent.and_then(|f| f["quarantined"].as_u64()).expect("the consent export was mapped")
}

#[test]
fn consent_dated_in_the_future_cannot_outrank_a_withdrawal() {
    let dir = TempDir::new("consent-future");
    let cfg = setup(dir.path());
    real_cycle(&cfg);
    // HUB-1005 withdrew (CN-705, 01/12/2023).
    let (_, before, _, _) = explain(&cfg);
    assert_eq!(decision_for(&before, "HUB-1005").0, "withhold");

    // A second record giving consent, dated three days ahead (within the tolerance): pending, not in force.
    let soon = (chrono::Utc::now() + chrono::Duration::days(3)).format("%d/%m/%Y").to_string();
    edit_consent(dir.path(), |t| format!("{t}CN-798,HUB-1005,{soon},Yes,Yes,,,Active,\n"));
    let (_, explained, report, stderr) = explain(&cfg);
    assert_eq!(consent_quarantined(&report), 0, "within the tolerance: read, not quarantined: {stderr}");
    let (decision, why) = decision_for(&explained, "HUB-1005");
    assert_eq!(decision, "withhold", "a statement dated after today must not beat the withdrawal: {why}");
    assert!(why.contains("withdrawn"), "{why}");

    // A typo years ahead (2033 for 2023): quarantined with what to do, and the person is held.
    edit_consent(dir.path(), |t| t.replace(&format!("CN-798,HUB-1005,{soon}"), "CN-798,HUB-1005,24/03/2033"));
    let (code, explained, report, stderr) = explain(&cfg);
    assert_eq!(code, Some(3), "{stderr}");
    assert_eq!(consent_quarantined(&report), 1, "{stderr}");
    let (decision, why) = decision_for(&explained, "HUB-1005");
    assert_eq!(decision, "withhold", "{why}");
    assert!(why.contains("consent record unreadable"), "{why}");

    let qdir = dir.path().join("quarantine");
    let out = Command::new(env!("CARGO_BIN_EXE_connector"))
        .arg("--mappings")
        .arg(root().join("mappings"))
        .args(["mappings", "preview", "--partner", "hub", "--input"])
        .arg(dir.path().join("hub/person.csv"))
        .arg("--input")
        .arg(dir.path().join("hub/consent.csv"))
        .arg("--quarantine-dir")
        .arg(&qdir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("date is in the future") && stderr.contains("correct the consent record's date"),
        "{stderr}"
    );
}
