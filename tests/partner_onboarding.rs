//! A small partner as it really delivers (tests/fixtures/kyra): one export holding people and a
//! "Consent to share (Y/N)" column with no dates, blank answers and multi-line addresses, synced to a real HFS.
//! No date is invented (each answer is dated when first seen), blanks are counted as no statement (never
//! quarantined, so the run exits 0), address cells become lines; a later export changing one answer from N to
//! Y sends that person's records in that cycle.

mod common;

use std::path::Path;
use std::process::Command;

use common::{Hfs, TempDir};
use serde_json::Value;

const HEADER: &str = "Client Ref,First Name,Last Name,DOB,NHS No,Address,Postcode,Mobile,Consent to share (Y/N)";

fn export(path: &Path, ky002: &str) {
    let rows = [
        "KY-001,Amara,Testwood,03/04/1987,999 000 1014,\"12 Low Lane\nFlat 2\",YO1 7HH,07700 900101,Y".to_string(),
        format!("KY-002,Beth,Testwood,11/07/1972,9990001022,4 High Street,YO10 5DD,,{ky002}"),
        "KY-003,Cara,Testwood,01/01/1990,9990001030,,YO24 1AB,,".into(),
        "KY-004,Dina,Testwood,02/02/1991,9990001049,,YO24 1AB,,Not asked".into(),
        "KY-005,Esme,Testwood,05/05/1995,9990001057,\"Rose Cottage\r\n\r\n  Main Street \",YO32 9XX,,Yes".into(),
    ];
    std::fs::write(path, format!("{HEADER}\n{}\n", rows.join("\n"))).unwrap();
}

fn sync(config: &Path) -> (i32, Value) {
    common::sync_json(config, &[])
}

async fn patients(hfs: &Hfs) -> Vec<Value> {
    let page = hfs.search("Patient?_count=100").await;
    page["entry"].as_array().map_or_else(Vec::new, |e| e.iter().map(|e| e["resource"].clone()).collect())
}

fn client_ref(p: &Value) -> String {
    p["identifier"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["system"].as_str().unwrap().ends_with("/kyra/client"))
        .map(|i| i["value"].as_str().unwrap().to_string())
        .unwrap()
}

fn consent_show(config: &Path, who: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_connector"))
        .args(["consent", "show", who, "--config"])
        .arg(config)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_yes_no_consent_column_without_dates_syncs_and_a_changed_answer_sends_that_cycle() {
    let hfs = Hfs::start().await;
    let dir = TempDir::new("kyra");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    assert!(
        Command::new("cp")
            .arg("-r")
            .arg(root.join("tests/fixtures/kyra/mappings"))
            .arg(dir.path())
            .status()
            .unwrap()
            .success()
    );
    let export_path = dir.path().join("clients.csv");
    export(&export_path, "N");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[state]\nurl = \"sqlite://{d}/state.db\"\n[mappings]\ndir = \"{d}/mappings\"\n\
             [[partner]]\nid = \"kyra\"\n[[partner.source]]\nkinds = [\"person\", \"consent\"]\npath = \"{d}/clients.csv\"\n\
             [[sharing]]\nname = \"ISA kyra to cito\"\npartner = \"kyra\"\ndestination = \"cito\"\n\
             categories = [\"general_health\"]\nlawful_basis = \"UK GDPR 6(1)(e); 9(2)(h)\"\n\
             [destination.cito]\nprofile = \"cito\"\nbase_url = \"{url}\"\nrate_limit_per_second = 500\n",
            d = dir.path().display(),
            url = hfs.base_url
        ),
    )
    .unwrap();

    let (code, report) = sync(&config);
    assert_eq!(code, 0, "blank answers are not errors: {report}");
    let files = report["ingest"][0]["mapping"]["files"].as_array().unwrap();
    let consent = files.iter().find(|f| f["kind"] == "consent").unwrap();
    assert_eq!(consent["no_statement"], 2, "KY-003 (blank) and KY-004 (Not asked): {consent}");
    assert_eq!(consent["quarantined"], 0);
    let sent: Vec<Value> = patients(&hfs).await;
    let mut refs: Vec<String> = sent.iter().map(client_ref).collect();
    refs.sort();
    assert_eq!(refs, ["KY-001", "KY-005"], "only those who said yes");
    let esme = sent.iter().find(|p| client_ref(p) == "KY-005").unwrap();
    assert_eq!(esme["address"][0]["line"], serde_json::json!(["Rose Cottage", "Main Street"]));
    let amara = sent.iter().find(|p| client_ref(p) == "KY-001").unwrap();
    assert_eq!(amara["address"][0]["line"], serde_json::json!(["12 Low Lane", "Flat 2"]));
    let shown = consent_show(&config, "kyra:KY-001");
    assert!(shown.contains("dated when first seen"), "no date is invented: {shown}");

    // KY-002 changes their answer: their records go in the same cycle, the statement dated today.
    export(&export_path, "Y");
    let (code, report) = sync(&config);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["ingest"][0]["consent_statements"], 1, "one new statement: {report}");
    let refs: Vec<String> = patients(&hfs).await.iter().map(client_ref).collect();
    assert!(refs.contains(&"KY-002".to_string()), "{refs:?}");
    let shown = consent_show(&config, "kyra:KY-002");
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let given = shown.lines().find(|l| l.contains("given")).unwrap_or_default();
    assert!(given.contains(&today) && given.contains("dated when first seen"), "{shown}");

    // The same answers again: nothing new, nothing re-dated.
    let (_, report) = sync(&config);
    assert_eq!(report["ingest"][0]["consent_statements"], 0, "{report}");
}
