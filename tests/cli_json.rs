//! `--format json` of the admin commands that need no FHIR server (`quarantine show|replay`, `outbox retry`),
//! run through the real binary: one JSON document on stdout, the exit codes of the table form, no row content,
//! and an error that stops a command (no such id) on stderr with nothing on stdout.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::TempDir;
use serde_json::Value;

/// A config with only a state store, and that store opened, for a test to fill.
async fn state_only(dir: &Path) -> (PathBuf, york_connector::store::Store) {
    let config = dir.join("config.toml");
    let url = format!("sqlite://{}/state.db", dir.display());
    std::fs::write(&config, format!("[state]\nurl = \"{url}\"\n")).unwrap();
    (config, york_connector::store::Store::connect(&url).await.unwrap())
}

fn connector(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_connector")).arg("--config").arg(config).args(args).output().unwrap()
}

/// The exit code and the one JSON document on stdout.
fn json(config: &Path, args: &[&str]) -> (i32, Value) {
    let out = connector(config, args);
    let doc = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{args:?}: {e}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    });
    (out.status.code().unwrap_or(-1), doc)
}

/// An error that stops the command: exit 1, a message on stderr, nothing on stdout.
fn assert_error(out: &Output, says: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(out.stdout.is_empty(), "stdout stays empty: {}", String::from_utf8_lossy(&out.stdout));
    assert!(stderr.contains("error: ") && stderr.contains(says), "{stderr}");
}

fn quarantined(config: &Path, key: &str) -> i64 {
    let (code, rows) = json(config, &["quarantine", "list", "--format", "json"]);
    assert_eq!(code, 3, "rows are quarantined: {rows}");
    let row = rows.as_array().unwrap().iter().find(|r| r["key"] == key);
    row.and_then(|r| r["id"].as_i64()).unwrap_or_else(|| panic!("{key} is not quarantined: {rows}"))
}

/// Replaces ASCII text in a fixture copy, byte-wise (the Hub's export is Windows-1252).
fn edit(path: &Path, from: &str, to: &str) {
    let bytes = std::fs::read(path).unwrap();
    let at = bytes.windows(from.len()).position(|w| w == from.as_bytes()).expect("the text is there");
    let mut out = bytes[..at].to_vec();
    out.extend_from_slice(to.as_bytes());
    out.extend_from_slice(&bytes[at + from.len()..]);
    std::fs::write(path, out).unwrap();
}

/// The Hub's fixtures synced once (nowhere: no destination); exit 3, as rows are quarantined.
fn synced_hub(name: &str) -> (TempDir, PathBuf) {
    let dir = TempDir::new(name);
    let config = common::hub_config(dir.path(), "");
    let out = connector(&config, &["sync", "--once"]);
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    (dir, config)
}

#[test]
fn quarantine_show_and_replay_say_where_and_why_in_json_never_the_row() {
    let (dir, config) = synced_hub("json-quarantine");
    // HUB-1014 (row 11) has no date of birth; HUB-1013 (row 8) fails Modulus 11.
    let id = quarantined(&config, "HUB-1014");

    let (code, shown) = json(&config, &["quarantine", "show", &id.to_string(), "--format", "json"]);
    assert_eq!(code, 0, "{shown}");
    let mut fields: Vec<&str> = shown.as_object().unwrap().keys().map(String::as_str).collect();
    fields.sort_unstable();
    assert_eq!(fields, ["file", "id", "key", "kind", "partner", "reasons", "row", "since"], "no row content");
    assert_eq!((shown["id"].as_i64(), shown["partner"].as_str()), (Some(id), Some("hub")));
    assert_eq!((shown["kind"].as_str(), shown["row"].as_i64()), (Some("person"), Some(11)));
    assert!(shown["file"].as_str().is_some_and(|f| f.ends_with("hub/person.csv")), "{shown}");
    assert!(shown["reasons"].as_array().is_some_and(|r| !r.is_empty()), "{shown}");
    // The table form shows the row as received (for the admin fixing the source); the JSON leaves it out.
    let table =
        String::from_utf8_lossy(&connector(&config, &["quarantine", "show", &id.to_string()]).stdout).into_owned();
    let (_, raw) = table.split_once("row as received (personal data):\n").expect("the table shows the row");
    let raw: Value = serde_json::from_str(raw).unwrap();
    let text = shown.to_string();
    let values: Vec<&str> = raw
        .as_object()
        .unwrap()
        .values()
        .filter_map(Value::as_str)
        .filter(|v| v.len() >= 4 && *v != "HUB-1014")
        .collect();
    assert!(values.len() >= 3, "the row has content to look for: {raw}");
    let leaked: Vec<&&str> = values.iter().filter(|v| text.contains(**v)).collect();
    assert!(leaked.is_empty(), "row content in the JSON: {leaked:?}");

    // Replayed unchanged, it still does not map: exit 3, as in the table form.
    let (code, replayed) = json(&config, &["quarantine", "replay", &id.to_string(), "--format", "json"]);
    assert_eq!(code, 3, "{replayed}");
    assert_eq!(replayed["outcome"], "still_quarantined");
    assert_eq!((replayed["key"].as_str(), replayed["was"]["row"].as_u64()), (Some("HUB-1014"), Some(11)));
    assert_eq!(replayed["now"]["row"].as_u64(), Some(11), "{replayed}");
    assert!(replayed["now"]["file"].as_str().is_some_and(|f| f.ends_with("person.csv")), "{replayed}");

    // HUB-1013's NHS number fixed at source: it maps now, exit 0.
    let id = quarantined(&config, "HUB-1013");
    edit(&dir.path().join("hub/person.csv"), "999 433 8707", "999 433 8706");
    let (code, replayed) = json(&config, &["quarantine", "replay", &id.to_string(), "--format", "json"]);
    assert_eq!(code, 0, "{replayed}");
    assert_eq!((replayed["outcome"].as_str(), replayed["id"].as_i64()), (Some("maps_now"), Some(id)));
    assert!(replayed["now"].is_null(), "{replayed}");

    // That entry is gone: asking for it is an error, on stderr.
    assert_error(
        &connector(&config, &["quarantine", "show", &id.to_string(), "--format", "json"]),
        "no quarantined row",
    );
    assert_error(
        &connector(&config, &["quarantine", "replay", &id.to_string(), "--format", "json"]),
        "no quarantined row",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_retry_in_json_counts_what_went_back_in_the_queue() {
    use york_connector::store::{Op, OutboxItem, ResourceKey};
    let dir = TempDir::new("json-outbox");
    let (config, store) = state_only(dir.path()).await;
    let item = |id: &str| OutboxItem {
        destination: "cito".into(),
        key: ResourceKey::new("Observation", id),
        patient: None,
        op: Op::Upsert,
        content_hash: "a".repeat(64),
        body: Some("{}".into()),
        origin: None,
    };
    let now = chrono::Utc::now();
    store.enqueue(&[item("o1"), item("o2"), item("o3")], now).await.unwrap();
    let rows = store.lease("cito", "test", 3, std::time::Duration::from_secs(60), now).await.unwrap();
    for r in &rows {
        store.dead_letter(r.seq, "422 Unprocessable Entity").await.unwrap();
    }
    store.close().await;
    let first = rows[0].seq;

    let (code, listed) = json(&config, &["outbox", "list", "--dead", "--format", "json"]);
    assert_eq!(code, 3, "dead letters listed: {listed}");
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 3);
    assert_eq!((listed[0]["resource"].as_str(), listed[0]["dead"].as_bool()), (Some("Observation/o1"), Some(true)));

    let (code, retried) = json(&config, &["outbox", "retry", &first.to_string(), "--format", "json"]);
    assert_eq!(code, 0, "{retried}");
    assert_eq!(retried, serde_json::json!({"requeued": 1, "id": first, "destination": null}));

    let (code, retried) = json(&config, &["outbox", "retry", "--dead", "--destination", "cito", "--format", "json"]);
    assert_eq!(code, 0, "{retried}");
    assert_eq!(retried, serde_json::json!({"requeued": 2, "id": null, "destination": "cito"}));

    let (code, listed) = json(&config, &["outbox", "list", "--dead", "--format", "json"]);
    assert_eq!((code, listed), (0, serde_json::json!([])));
    // No longer a dead letter: an error, on stderr, as in the table form.
    assert_error(&connector(&config, &["outbox", "retry", &first.to_string(), "--format", "json"]), "no dead letter");
}

#[test]
fn status_and_consent_show_in_json_name_jobs_and_people_by_id_only() {
    let (_dir, config) = synced_hub("json-status");

    let (code, status) = json(&config, &["status", "--format", "json"]);
    assert_eq!(code, 0, "{status}");
    let jobs = status["jobs"].as_array().unwrap();
    let hub = jobs.iter().find(|j| j["job"] == "ingest:hub").unwrap_or_else(|| panic!("{status}"));
    assert_eq!(hub["schedule"], "*/15 * * * *");
    assert!(hub["next_run"].is_string(), "{status}");
    assert_eq!(status["queues"], serde_json::json!([]), "no destination, no queue");
    assert!(status["sources"].as_array().unwrap().iter().any(|s| s["partner"] == "hub"), "{status}");

    // Zoë Ashworth-Bell, HUB-1001 (see tests/fixtures/hub/README.md): by her client reference.
    let (code, shown) = json(&config, &["consent", "show", "HUB-1001", "--format", "json"]);
    assert_eq!(code, 0, "{shown}");
    assert!(shown["person"].as_str().is_some_and(|p| p.starts_with("Person/")), "an id, not an NHS number: {shown}");
    assert_eq!(shown["patients"][0]["partner"], "hub", "{shown}");
    assert!(shown["history"].is_array() && shown["holdings"] == serde_json::json!([]), "{shown}");
    let text = shown.to_string();
    assert!(!text.contains("9990123403") && !text.contains("999 012 3403"), "no NHS number: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_list_and_show_in_json_compare_element_by_element() {
    use york_connector::store::{AuditEntry, ConflictRecord};
    let dir = TempDir::new("json-conflicts");
    let (config, store) = state_only(dir.path()).await;
    let patient = |phone: &str, city: &str| {
        serde_json::json!({"resourceType": "Patient", "id": "p1", "telecom": [{"system": "phone", "value": phone}],
            "address": [{"city": city}]})
        .to_string()
    };
    let now = chrono::Utc::now();
    let conflict = ConflictRecord {
        destination: "cito".into(),
        resource_type: "Patient".into(),
        resource_id: "p1".into(),
        remote_id: "p1".into(),
        elements: vec!["telecom".into()],
        base_version: Some("1".into()),
        base_json: Some(patient("07700 900111", "York")),
        source_hash: "a".repeat(64),
        source_json: Some(patient("07700 900222", "York")),
        remote_version: Some("2".into()),
        remote_json: Some(patient("07700 900333", "Selby")),
        created_at: now,
        updated_at: now,
        ..ConflictRecord::default()
    };
    let audit = AuditEntry { at: now, action: "conflict".parse().unwrap(), ..AuditEntry::default() };
    let (id, _) = store.conflict_open(&conflict, &audit).await.unwrap();
    store.close().await;

    let (code, list) = json(&config, &["conflicts", "list", "--format", "json"]);
    assert_eq!(code, 3, "open conflicts: {list}");
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!((list[0]["id"].as_i64(), list[0]["status"].as_str()), (Some(id), Some("open")));
    assert_eq!(
        (list[0]["resource_type"].as_str(), list[0]["elements"].clone()),
        (Some("Patient"), serde_json::json!(["telecom"]))
    );

    let (code, shown) = json(&config, &["conflicts", "show", &id.to_string(), "--format", "json"]);
    assert_eq!(code, 0, "{shown}");
    assert_eq!(
        (shown["id"].as_i64(), shown["destination"].as_str()),
        (Some(id), Some("cito")),
        "the conflict as stored"
    );
    let row = |name: &str| shown["comparison"].as_array().unwrap().iter().find(|r| r["element"] == name).cloned();
    let telecom = row("telecom").unwrap_or_else(|| panic!("{shown}"));
    assert_eq!(telecom["conflict"], true);
    let phone = |side: &str| telecom[side][0]["value"].as_str().map(str::to_string);
    assert_eq!(
        (phone("last_sent"), phone("source"), phone("destination")),
        (Some("07700 900111".into()), Some("07700 900222".into()), Some("07700 900333".into()))
    );
    let address = row("address").unwrap_or_else(|| panic!("{shown}"));
    assert_eq!(
        (address["conflict"].as_bool(), address["destination"][0]["city"].as_str()),
        (Some(false), Some("Selby"))
    );
    assert_error(&connector(&config, &["conflicts", "show", "999999", "--format", "json"]), "no conflict 999999");
}
