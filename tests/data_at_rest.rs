//! Personal data at rest and the admin's tools around it, run through the real binary without a FHIR
//! server: the state store's files and their modes, what `config check` refuses, what deleting really
//! deletes, and `quarantine replay` finding the row it was asked about.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::TempDir;

fn connector(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_connector")).arg("--config").arg(config).args(args).output().unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// The quarantine entry of the row with `key`.
fn quarantined(config: &Path, key: &str) -> Option<i64> {
    let out = connector(config, &["quarantine", "list", "--format", "json"]);
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    rows.as_array().unwrap().iter().find(|r| r["key"] == key).and_then(|r| r["id"].as_i64())
}

/// Edits the Hub's person export byte-wise (it is Windows-1252 with CRLF lines): swaps the lines of two
/// clients and replaces text.
fn edit_person(dir: &Path, swap: (&str, &str), from: &str, to: &str) {
    let path = dir.join("hub/person.csv");
    let bytes = std::fs::read(&path).unwrap();
    let mut lines: Vec<Vec<u8>> = bytes.split(|b| *b == b'\n').map(<[u8]>::to_vec).collect();
    let at = |lines: &[Vec<u8>], client: &str| lines.iter().position(|l| l.starts_with(client.as_bytes())).unwrap();
    let (a, b) = (at(&lines, swap.0), at(&lines, swap.1));
    lines.swap(a, b);
    let mut out = lines.join(&b'\n');
    let text = String::from_utf8_lossy(&out).into_owned();
    assert!(text.contains(from));
    out = text.replace(from, to).into_bytes();
    std::fs::write(&path, out).unwrap();
}

#[test]
fn quarantine_replay_follows_the_row_by_its_key_not_its_number() {
    let dir = TempDir::new("replay-by-key");
    let config = common::hub_config(dir.path(), "");
    let out = connector(&config, &["sync", "--once"]);
    assert!(matches!(out.status.code(), Some(0 | 3)), "{}", text(&out));
    // HUB-1013 (row 8) fails Modulus 11; HUB-1014 (row 11) has no date of birth.
    let id = quarantined(&config, "HUB-1013").expect("HUB-1013 is quarantined");

    // The partner fixes the NHS number, and the export now lists HUB-1014 at row 8 and HUB-1013 at row 11.
    edit_person(dir.path(), ("HUB-1013", "HUB-1014"), "999 433 8707", "999 433 8706");
    let out = connector(&config, &["quarantine", "replay", &id.to_string()]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(0), "HUB-1013 maps now, whatever sits at row 8: {said}");
    assert!(said.contains("key HUB-1013") && said.contains("maps now"), "{said}");
    assert_eq!(quarantined(&config, "HUB-1013"), None);
    assert!(quarantined(&config, "HUB-1014").is_some(), "the other person's row is still quarantined");

    // HUB-1014, replayed unchanged, still fails (now at row 8) and stays in quarantine.
    let other = quarantined(&config, "HUB-1014").unwrap();
    let out = connector(&config, &["quarantine", "replay", &other.to_string()]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(3), "{said}");
    assert!(said.contains("still does not map") && said.contains("now as row 8"), "{said}");
    assert!(quarantined(&config, "HUB-1014").is_some(), "still quarantined after its replay: {said}");
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

#[test]
fn a_new_state_store_is_owner_only_and_config_check_fails_when_others_can_read_it() {
    let dir = TempDir::new("state-modes");
    let config = common::hub_config(dir.path(), "");
    let out = connector(&config, &["sync", "--once", "--dry-run"]);
    assert!(matches!(out.status.code(), Some(0 | 3)), "{}", text(&out));
    let state = dir.path().join("state");
    assert_eq!(mode(&state), 0o700, "the folder the store created");
    for f in ["state.db", "state.db-wal", "state.db-shm"] {
        let path = state.join(f);
        if path.exists() || f == "state.db" {
            assert_eq!(mode(&path), 0o600, "{f}");
        }
    }
    let out = connector(&config, &["config", "check"]);
    assert!(!text(&out).contains("state database file"), "{}", text(&out));

    // An admin's copy or an old install left it readable: the check fails and says what to do.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(state.join("state.db"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = connector(&config, &["config", "check"]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("FAIL  state database file") && said.contains("readable by everyone"), "{said}");
    assert!(said.contains("chmod 600"), "{said}");
}

/// Whether `needle` occurs anywhere in the file (missing file: no).
fn file_holds(path: &Path, needle: &str) -> bool {
    let bytes = std::fs::read(path).unwrap_or_default();
    bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_quarantined_row_is_gone_from_the_sqlite_file_and_its_wal() {
    use york_connector::store::{QuarantineRecord, Store};
    let dir = TempDir::new("secure-delete");
    let db = dir.path().join("state.db");
    let store = Store::connect(&format!("sqlite://{}", db.display())).await.unwrap();
    const MARK: &str = "Quxleyworth-Synthetic-7781";
    let mut ids = Vec::new();
    for (i, name) in [MARK, "Other-Person-Kept"].iter().enumerate() {
        let record = QuarantineRecord {
            partner: "hub".into(),
            kind: "person".into(),
            file: "person.csv".into(),
            row: i as i64 + 2,
            key: Some(format!("HUB-90{i}")),
            reasons_json: "[]".into(),
            raw_json: format!(r#"{{"Surname":"{name}","NHS Number":"999 012 3403"}}"#),
            created_at: chrono::Utc::now(),
        };
        ids.push(store.quarantine_put(&record).await.unwrap());
    }
    let wal = dir.path().join("state.db-wal");
    assert!(file_holds(&db, MARK) || file_holds(&wal, MARK), "the row was written");

    assert!(store.quarantine_delete(ids[0]).await.unwrap());
    for f in [&db, &wal] {
        assert!(!file_holds(f, MARK), "{} still holds the deleted row", f.display());
    }
    assert!(file_holds(&db, "Other-Person-Kept") || file_holds(&wal, "Other-Person-Kept"));
    store.close().await;
    assert!(!file_holds(&db, MARK) && !file_holds(&wal, MARK));
}

#[test]
fn the_conflict_report_never_writes_through_a_planted_symlink_nor_over_a_file_without_force() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("report-file");
    let config = common::hub_config(dir.path(), "");
    let victim = dir.path().join("victim.txt");
    std::fs::write(&victim, "keep me").unwrap();
    let report = dir.path().join("conflicts.html");
    std::os::unix::fs::symlink(&victim, &report).unwrap();
    let html = report.to_str().unwrap();

    let out = connector(&config, &["conflicts", "report", "--html", html]);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("--force"), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me");

    let out = connector(&config, &["conflicts", "report", "--html", html, "--force"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me", "the symlink's target was overwritten");
    let meta = std::fs::symlink_metadata(&report).unwrap();
    assert!(meta.file_type().is_file(), "the report replaced the symlink itself");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert!(std::fs::read_to_string(&report).unwrap().contains("<html"), "a report was written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_names_the_first_entry_edited_past_the_triggers() {
    use sqlx::Connection;
    use york_connector::store::{AuditEntry, AuditFilter, Store};
    let dir = TempDir::new("audit-verify");
    let config = common::hub_config(dir.path(), "");
    let url = format!("sqlite://{}/state/state.db", dir.path().display());
    let store = Store::connect(&url).await.unwrap();
    for i in 0..3 {
        let entry = AuditEntry {
            at: chrono::Utc::now(),
            action: "consent".parse().unwrap(),
            reason: Some(format!("entry {i}")),
            ..AuditEntry::default()
        };
        store.audit_append(&entry).await.unwrap();
    }
    let ids: Vec<i64> = store.audit_list(&AuditFilter::default()).await.unwrap().iter().map(|e| e.id).collect();
    store.close().await;
    let out = connector(&config, &["audit", "verify"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("intact: 3 chained entries"), "{}", text(&out));

    // Someone with the file drops the append-only trigger and rewrites an entry.
    let mut raw = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP TRIGGER audit_append_only_update; UPDATE audit SET reason = 'nothing' WHERE id = {}",
        ids[1]
    )))
    .execute(&mut raw)
    .await
    .unwrap();
    raw.close().await.unwrap();
    let out = connector(&config, &["audit", "verify"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(text(&out).contains(&format!("BROKEN at entry {}: it was edited", ids[1])), "{}", text(&out));
}
