//! Snapshot and delta sources, through `connector sync --once` against a real Helios FHIR Server:
//! - a record missing from a snapshot export is reported as gone at source and, with `retract_missing = true`
//!   and a destination with `retract = true`, deleted there;
//! - a snapshot under half the size of the previous one is refused as suspicious (exit 3, nothing taken as
//!   removed) until an admin accepts it;
//! - a delta source never reports removals.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Hfs, TempDir};
use serde_json::Value;

const HEADER: &str = "Client ID,Forename,Surname,Date of Birth,Gender,NHS Number,NHS No. Verified,Address Line 1,\
                      Address Line 2,Town,Postcode,Mobile,Home Phone,Email,Ethnicity,GP Practice";

/// A clean Hub person export of these clients (synthetic people, no NHS numbers).
fn export(path: &Path, clients: &[u32]) {
    let mut text = format!("{HEADER}\n");
    for c in clients {
        text.push_str(&format!("HUB-{c},Given{c},Testperson,01/02/1980,F,,,{c} Test Road,,York,YO1 7HH,,,,,\n"));
    }
    std::fs::write(path, text).unwrap();
}

fn config(dir: &Path, mode: &str, retract: bool, cito: Option<&str>) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut text = format!(
        "[state]\nurl = \"sqlite://{d}/state.db\"\n[mappings]\ndir = \"{m}/mappings\"\n\
         [[partner]]\nid = \"hub\"\n[[partner.source]]\nkind = \"person\"\npath = \"{d}/person.csv\"\nmode = \"{mode}\"\n",
        d = dir.display(),
        m = root.display()
    );
    if retract {
        text.push_str("retract_missing = true\n");
    }
    if let Some(url) = cito {
        text.push_str(&common::open_sharing(&["hub"], &["cito"]));
        text.push_str(&format!(
            "[destination.cito]\nprofile = \"cito\"\nbase_url = \"{url}\"\nrate_limit_per_second = 500\nretract = true\n"
        ));
    }
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `connector sync --once [extra]`: exit code and the report's one source.
fn sync(config: &Path, extra: &[&str]) -> (i32, Value) {
    let (code, report) = common::sync_json(config, extra);
    (code, report["ingest"][0]["sources"][0].clone())
}

async fn patients(hfs: &Hfs) -> u64 {
    hfs.search("Patient?_summary=count").await["total"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn gone_records_are_reported_and_retracted_and_a_shrunken_snapshot_is_refused() {
    let hfs = Hfs::start().await;
    let dir = TempDir::new("snapshot");
    let cfg = config(dir.path(), "snapshot", true, Some(&hfs.base_url));
    let all: Vec<u32> = (2001..=2010).collect();
    export(&dir.path().join("person.csv"), &all);
    let (code, src) = sync(&cfg, &[]);
    assert_eq!(code, 0, "{src}");
    assert!(src.get("gone").is_none(), "a first snapshot has nothing gone: {src}");
    assert_eq!(patients(&hfs).await, 10);

    // One client left the export: gone at source, and deleted where retract = true.
    let without: Vec<u32> = all.iter().copied().filter(|c| *c != 2003).collect();
    export(&dir.path().join("person.csv"), &without);
    let (code, src) = sync(&cfg, &[]);
    assert_eq!(code, 0, "{src}");
    assert_eq!(src["gone"], serde_json::json!(["HUB-2003"]), "{src}");
    assert_eq!(src["retracting"], 1, "{src}");
    assert_eq!(patients(&hfs).await, 9, "the gone client's Patient was deleted");

    // Four of nine: under half, refused; nothing taken as removed.
    export(&dir.path().join("person.csv"), &without[..4]);
    let (code, src) = sync(&cfg, &[]);
    assert_eq!(code, 3, "a refused snapshot needs an admin: {src}");
    assert!(src["refused"].as_str().unwrap().contains("--accept-snapshot"), "{src}");
    assert!(src.get("gone").is_none(), "{src}");
    assert_eq!(patients(&hfs).await, 9);
    let status = Command::new(env!("CARGO_BIN_EXE_connector")).args(["status", "--config"]).arg(&cfg).output().unwrap();
    assert!(String::from_utf8_lossy(&status.stdout).contains("LAST SNAPSHOT REFUSED"));

    // The admin confirms the partner really removed them.
    let (code, src) = sync(&cfg, &["--partner", "hub", "--accept-snapshot"]);
    assert_eq!(code, 0, "{src}");
    assert_eq!(src["gone"].as_array().unwrap().len(), 5, "{src}");
    assert_eq!(patients(&hfs).await, 4);
}

#[test]
fn a_delta_source_never_reports_removals() {
    let dir = TempDir::new("delta");
    let cfg = config(dir.path(), "delta", false, None);
    export(&dir.path().join("person.csv"), &(2001..=2010).collect::<Vec<_>>());
    assert_eq!(sync(&cfg, &[]).0, 0);
    export(&dir.path().join("person.csv"), &[2004]);
    let (code, src) = sync(&cfg, &[]);
    assert_eq!(code, 0, "{src}");
    assert!(src.get("gone").is_none() && src.get("refused").is_none(), "{src}");
}
