//! The audit trail's copy on `[audit] fhir_destination` (Provenance) tells the central record only about what
//! was disclosed to (or deleted from) the central record itself: not about disclosures to the patient-held
//! record or to a partner's feed, which are not its to know (issue 12, item 6).

mod common;

use std::path::Path;

use common::TempDir;
use york_connector::config::Config;
use york_connector::store::AuditEntry;
use york_connector::sync::Engine;

fn config(dir: &Path) -> Config {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut text = format!(
        "[state]\nurl = \"sqlite://{}/state.db\"\n[mappings]\ndir = \"{}/mappings\"\n",
        dir.display(),
        root.display()
    );
    text.push_str(&common::copy_fixtures(dir, &["hub"]));
    for d in ["cito", "pkb"] {
        text.push_str(&format!(
            "[destination.{d}]\nprofile = \"{d}\"\nbase_url = \"http://127.0.0.1:{}/fhir\"\n",
            common::free_port()
        ));
    }
    text.push_str("[audit]\nfhir_destination = \"cito\"\n");
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    Config::load(&path).unwrap()
}

fn entry(action: &str, destination: &str, id: &str) -> AuditEntry {
    AuditEntry {
        at: chrono::Utc::now(),
        action: action.parse().unwrap(),
        destination: Some(destination.into()),
        person: Some("Person/someone".into()),
        resource_type: Some("Encounter".into()),
        resource_id: Some(id.into()),
        version_id: Some("1".into()),
        partner: Some("hub".into()),
        category: Some("mental_health".into()),
        reason: None,
        ..AuditEntry::default()
    }
}

#[tokio::test]
async fn the_audit_copy_holds_only_disclosures_to_its_own_destination() {
    let dir = TempDir::new("audit-copy");
    let engine = Engine::start(config(dir.path())).await.unwrap();
    for e in [
        entry("disclosed", "pkb", "to-pkb"),
        entry("disclosed", "feed:york-mind", "to-feed"),
        entry("retracted", "pkb", "from-pkb"),
        entry("disclosed", "cito", "to-cito"),
        entry("retracted", "cito", "from-cito"),
    ] {
        engine.store.audit_append(&e).await.unwrap();
    }
    let queued = engine.export_audit().await.unwrap();
    let rows = engine.store.outbox_list(Some("cito"), false, 100).await.unwrap();
    let targets: Vec<String> = rows
        .iter()
        .filter_map(|r| r.item.body.as_deref())
        .map(|b| serde_json::from_str::<serde_json::Value>(b).unwrap()["target"][0]["reference"].to_string())
        .collect();
    assert_eq!(queued, 2, "only the central record's own disclosure and retraction: {targets:?}");
    assert!(targets.iter().any(|t| t.contains("to-cito")) && targets.iter().any(|t| t.contains("from-cito")));
    assert!(!targets.iter().any(|t| t.contains("pkb") || t.contains("feed")), "{targets:?}");
}
