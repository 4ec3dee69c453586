//! The `connector mappings` commands as an admin runs them, on the shipped mappings and fixtures.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn connector(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_connector"))
        .args(args)
        .current_dir(cwd)
        .env_remove("CONNECTOR_MAPPINGS")
        .output()
        .expect("run connector")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("connector-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn partners() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(root().join("mappings"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// The fixture inputs of one partner (files named after a record kind).
fn inputs(partner: &str) -> Vec<PathBuf> {
    let kinds = ["person", "carer", "referral", "episode", "contact", "goals", "reqol", "consent"];
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("tests/fixtures").join(partner))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && kinds.contains(&p.file_stem().and_then(|s| s.to_str()).unwrap_or_default()))
        .collect();
    v.sort();
    v
}

#[test]
fn mappings_check_loads_every_shipped_mapping() {
    let out = connector(&["mappings", "check"], root());
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("All mappings load."));
    assert!(partners().len() >= 3, "the hub and at least two VCSE partners");
}

#[test]
fn mappings_test_passes_for_every_shipped_mapping() {
    let out = connector(&["mappings", "test"], root());
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains(" 0 failed"), "{t}");
    assert!(!t.contains("FAIL"), "{t}");
}

#[test]
fn a_broken_expected_file_fails_with_a_diff_that_points_at_the_element() {
    let dir = scratch("broken");
    copy_dir(&root().join("mappings"), &dir.join("mappings"));
    copy_dir(&root().join("tests/fixtures"), &dir.join("tests/fixtures"));
    let expected = dir.join("tests/fixtures/hub/expected/person.json");
    let mut doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&expected).unwrap()).unwrap();
    let first =
        doc["resources"].as_array_mut().unwrap().iter_mut().find(|r| r["resource"]["birthDate"].is_string()).unwrap();
    let row = first["row"].as_u64().unwrap();
    first["resource"]["birthDate"] = serde_json::json!("1900-01-01");
    std::fs::write(&expected, serde_json::to_string_pretty(&doc).unwrap()).unwrap();

    let out = connector(&["mappings", "test"], &dir);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("FAIL hub/person"), "{t}");
    assert!(t.contains(&format!("hub/person row {row} Patient.birthDate: expected \"1900-01-01\", got \"")), "{t}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn mapping_the_same_input_twice_gives_identical_bytes() {
    for partner in partners() {
        let dir = scratch(&format!("twice-{partner}"));
        let mut args: Vec<String> = vec!["mappings".into(), "preview".into(), "--partner".into(), partner.clone()];
        for i in inputs(&partner) {
            args.push("--input".into());
            args.push(i.display().to_string());
        }
        args.push("--quarantine-dir".into());
        args.push(dir.join("q").display().to_string());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env_mappings = root().join("mappings").display().to_string();
        let run = || {
            Command::new(env!("CARGO_BIN_EXE_connector"))
                .args(&args)
                .env("CONNECTOR_MAPPINGS", &env_mappings)
                .current_dir(&dir)
                .output()
                .unwrap()
        };
        let (a, b) = (run(), run());
        assert!(matches!(a.status.code(), Some(0 | 3)), "{partner}: {}", text(&a));
        assert!(a.stdout.len() > 1000, "{partner}: little output");
        assert_eq!(a.stdout, b.stdout, "{partner}: two runs on the same input differ");
        for line in String::from_utf8(a.stdout).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(line).expect("NDJSON on stdout");
            assert!(v["id"].is_string() && v["resourceType"].is_string());
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Issue 2, item 3: the deliberately messy Hub export (see tests/fixtures/hub/README.md for each row's intent).
#[test]
fn messy_hub_export_keeps_good_rows_and_quarantines_bad_ones_with_reasons() {
    let dir = scratch("messy");
    let fixtures = root().join("tests/fixtures/hub");
    let person = fixtures.join("person.csv").display().to_string();
    let contact = fixtures.join("contact.csv").display().to_string();
    let qdir = dir.join("q").display().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_connector"))
        .args([
            "mappings",
            "preview",
            "--partner",
            "hub",
            "--input",
            &person,
            "--input",
            &contact,
            "--quarantine-dir",
            &qdir,
        ])
        .env("CONNECTOR_MAPPINGS", root().join("mappings"))
        .current_dir(&dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(3), "exit 3 when rows were quarantined: {stderr}");

    // Counts add up, per file.
    assert!(stderr.contains("person.csv: 16 read, 11 mapped, 5 quarantined"), "{stderr}");
    let contact_line = stderr.lines().find(|l| l.contains("contact.csv:") && l.contains(" read, ")).unwrap();
    let nums: Vec<u64> = contact_line.split(|c: char| !c.is_ascii_digit()).filter_map(|s| s.parse().ok()).collect();
    let (read, mapped, quarantined) = (nums[nums.len() - 3], nums[nums.len() - 2], nums[nums.len() - 1]);
    assert_eq!(read, mapped + quarantined, "{contact_line}");

    // Each bad row is quarantined with its reason, naming file, row and column.
    let reason = |row: u64| {
        stderr
            .lines()
            .find(|l| {
                l.starts_with("QUARANTINED") && l.contains("person.csv: row ") && l.contains(&format!("row {row} "))
            })
            .unwrap_or_else(|| panic!("person row {row} not quarantined: {stderr}"))
            .to_string()
    };
    assert!(reason(5).contains("column \"NHS Number\"") && reason(5).contains("lost digits"));
    assert!(reason(8).contains("Modulus 11"));
    assert!(reason(11).contains("column \"Date of Birth\"") && reason(11).contains("required, but empty"));
    assert!(reason(14).contains("duplicate of row 13"));
    assert!(reason(16).contains("1 more cell(s) than the header's 16 columns"));
    let contact_reason = |row: u64| {
        stderr
            .lines()
            .find(|l| l.contains("contact.csv: row ") && l.contains(&format!("row {row} ")))
            .unwrap_or_default()
            .to_string()
    };
    assert!(contact_reason(15).contains("not in this run's output"), "{stderr}");
    assert!(
        contact_reason(16).contains("which was quarantined") && contact_reason(16).contains("person.csv row 5"),
        "{stderr}"
    );
    assert!(contact_reason(20).contains("clocks went forward"), "{stderr}");
    assert!(!stderr.contains("999 433 8707") && !stderr.contains("9994338707"), "reasons never repeat an NHS number");

    // The good rows are kept, cleaned.
    let stdout = String::from_utf8(out.stdout).unwrap();
    let resources: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let patients: Vec<&serde_json::Value> = resources.iter().filter(|r| r["resourceType"] == "Patient").collect();
    assert_eq!(patients.len(), 11);
    let zoe = patients.iter().find(|p| p["name"][0]["given"][0] == "Zoë").expect("Windows-1252 name decoded");
    assert_eq!(zoe["birthDate"], "1987-04-03", "3/4/1987 is 3 April");
    assert_eq!(zoe["identifier"][0]["value"], "9990123403", "spaces removed");
    assert!(zoe["telecom"].as_array().unwrap().iter().any(|t| t["value"] == "07700900123"), "leading zero restored");
    assert!(
        patients.iter().any(|p| p["identifier"][0]["value"] == "9992115785"),
        "scientific notation with every digit read"
    );
    assert!(patients.iter().any(|p| p["name"][0]["family"] == "O’Brien"));

    // Nothing lost: every quarantined row is in the quarantine file, with its raw content.
    let qfile = std::fs::read_dir(dir.join("q")).unwrap().next().unwrap().unwrap().path();
    let kept: Vec<serde_json::Value> =
        std::fs::read_to_string(&qfile).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(kept.len() as u64, 5 + quarantined);
    assert!(kept.iter().all(|q| q["raw"].is_object() && q["reasons"].as_array().is_some_and(|r| !r.is_empty())));
    let _ = std::fs::remove_dir_all(dir);
}
