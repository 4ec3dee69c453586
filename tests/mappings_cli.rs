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
        .env_remove("CONNECTOR_CONFIG")
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

/// The partner folders under mappings/ (`hl7v2/` holds HL7 v2 message definitions, not a partner).
fn partners() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(root().join("mappings"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir() && e.file_name() != york_connector::mapping::compile::HL7V2_MESSAGES_FOLDER)
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
    assert!(
        text(&out).contains("hl7v2: HL7 v2 messages for CarePlan, Encounter, Goal, Observation, Patient"),
        "{}",
        text(&out)
    );
}

#[test]
fn mappings_check_names_a_broken_hl7v2_message_definition() {
    let dir = scratch("broken-hl7v2");
    copy_dir(&root().join("mappings"), &dir.join("mappings"));
    let goal = dir.join("mappings/hl7v2/Goal.toml");
    let before = std::fs::read_to_string(&goal).unwrap();
    std::fs::write(&goal, before.replace("\"{$document}\"", "\"{$document|date}\"")).unwrap();
    let out = connector(&["mappings", "check", "--format", "json"], &dir);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let problem = &json(&out)["problems"][0];
    assert!(problem["file"].as_str().is_some_and(|f| f.ends_with("hl7v2/Goal.toml")), "{problem}");
    assert!(problem["message"].as_str().is_some_and(|m| m.contains("OBX-5") && m.contains("no filter")), "{problem}");
}

#[test]
fn mappings_test_passes_for_every_shipped_mapping() {
    let out = connector(&["mappings", "test"], root());
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains(" 0 failed"), "{t}");
    assert!(!t.contains("FAIL"), "{t}");
}

/// The one JSON document a command printed on stdout.
fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(o)))
}

#[test]
fn mappings_check_and_test_in_json_list_every_mapping_and_every_result() {
    let out = connector(&["mappings", "check", "--format", "json"], root());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let checked = json(&out);
    assert_eq!((checked["ok"].as_bool(), checked["problems"].as_array().map(Vec::len)), (Some(true), Some(0)));
    let listed: Vec<&str> =
        checked["partners"].as_array().unwrap().iter().filter_map(|p| p["partner"].as_str()).collect();
    assert_eq!(listed, partners());
    let hub = &checked["partners"].as_array().unwrap().iter().find(|p| p["partner"] == "hub").unwrap()["mappings"];
    assert!(hub.as_array().unwrap().iter().any(|m| m["kind"] == "person" && m["version"].is_string()), "{hub}");

    let out = connector(&["mappings", "test", "--format", "json"], root());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let tested = json(&out);
    let results = tested["checked"].as_array().unwrap();
    assert!(results.len() > partners().len(), "an organization and each kind per partner: {tested}");
    assert_eq!(tested["passed"].as_u64(), Some(results.len() as u64));
    assert_eq!((tested["failed"].as_u64(), tested["problems"].as_array().map(Vec::len)), (Some(0), Some(0)));
    assert!(results.iter().all(|r| r["ok"] == true && r["differences"] == serde_json::json!([])), "{tested}");
    assert!(results.iter().any(|r| r["partner"] == "hub" && r["expected"] == "organization"), "{tested}");
}

#[test]
fn a_mapping_that_does_not_load_is_a_problem_in_check_json_and_an_error_elsewhere() {
    let dir = scratch("broken-mapping");
    copy_dir(&root().join("mappings"), &dir.join("mappings"));
    let person = dir.join("mappings/hub/person.toml");
    let text_before = std::fs::read_to_string(&person).unwrap();
    std::fs::write(&person, text_before.replacen("version = ", "versoin = \"2\"\nversion = ", 1)).unwrap();

    let out = connector(&["mappings", "check", "--format", "json"], &dir);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let checked = json(&out);
    assert_eq!(checked["ok"], false);
    let problem = &checked["problems"][0];
    assert!(problem["file"].as_str().is_some_and(|f| f.ends_with("hub/person.toml")), "{checked}");
    assert_eq!((problem["key"].as_str(), problem["line"].as_u64().is_some()), (Some("versoin"), true), "{checked}");
    assert!(problem["message"].as_str().is_some_and(|m| m.contains("unknown field")), "{checked}");

    // `test` cannot run at all: an error on stderr, nothing on stdout, exit 1.
    let out = connector(&["mappings", "test", "--format", "json"], &dir);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(out.stdout.is_empty(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("versoin"), "{}", text(&out));
    let _ = std::fs::remove_dir_all(dir);
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

    let out = connector(&["mappings", "test", "--format", "json"], &dir);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let tested = json(&out);
    assert_eq!(tested["failed"].as_u64(), Some(1), "{tested}");
    let results = tested["checked"].as_array().unwrap();
    let failed: Vec<&serde_json::Value> = results.iter().filter(|r| r["ok"] == false).collect();
    assert_eq!(failed.len(), 1, "{tested}");
    assert_eq!((failed[0]["partner"].as_str(), failed[0]["expected"].as_str()), (Some("hub"), Some("person")));
    let wanted = format!("row {row} Patient.birthDate: expected \"1900-01-01\", got \"");
    assert!(failed[0]["differences"].as_array().unwrap().iter().any(|d| d.as_str().unwrap().starts_with(&wanted)));
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

/// Issue 14: a new partner onboarded from its export's header alone, with `--config` given from another folder.
/// One export holds people and a Y/N consent column (blank and "not asked" answers, a two-line address),
/// written in Windows-1252 as the partner's spreadsheet saves it.
#[test]
fn mappings_new_starts_a_partner_from_an_export_header_that_check_test_and_preview_accept() {
    let dir = scratch("new");
    let site = dir.join("site");
    let elsewhere = dir.join("elsewhere");
    std::fs::create_dir_all(site.join("export")).unwrap();
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::write(site.join("config.toml"), "[state]\nurl = \"sqlite://state.db\"\n\n[mappings]\ndir = \"maps\"\n")
        .unwrap();
    let mut export = b"Client Ref,First Name,Surname,D.O.B.,NHS No.,Address,Post Code,Mobile,E-mail,Sex,Consent to share (Y/N),Keyworker\r\n".to_vec();
    export.extend_from_slice(b"K-1,Zo\xeb,Bront\xeb,3/4/1987,999 000 0018,\"1 Low Lane\r\nFlat 2\",YO1 7HH,07700900123,z@example.org,F,Y,Sam\r\n");
    export.extend_from_slice(b"K-2,Al,Plain,4/5/1990,,2 High St,YO1 7HH,,,M,,Sam\r\n");
    export.extend_from_slice(b"K-3,Bo,Plain,4/5/1991,,3 High St,YO1 7HH,,,M,Not asked,Sam\r\n");
    export.extend_from_slice(b"K-4,Cy,Plain,4/5/1992,9990000017,4 High St,YO1 7HH,,,M,N,Sam\r\n");
    let export_path = site.join("export/kyra-clients-2025-06.csv");
    std::fs::write(&export_path, export).unwrap();
    let config = site.join("config.toml").display().to_string();
    let from = export_path.display().to_string();
    let run = |args: &[&str]| {
        let mut all = vec!["--config", config.as_str(), "mappings"];
        all.extend_from_slice(args);
        connector(&all, &elsewhere)
    };

    let person = run(&["new", "--partner", "kyra", "--kind", "person", "--from", &from]);
    let t = text(&person);
    assert!(person.status.success(), "{t}");
    assert!(t.contains("passes"), "{t}");
    let mapping = std::fs::read_to_string(site.join("maps/kyra/person.toml")).unwrap();
    for bound in [
        "client_id = { from = \"Client Ref\"",
        "given = { from = \"First Name\"",
        "family = { from = \"Surname\"",
        "dob = { from = \"D.O.B.\", transform = \"uk_date\"",
        "nhs_number = { from = \"NHS No.\", transform = \"nhs_number\"",
        "address = { from = \"Address\", transform = \"split_lines\"",
        "postcode = { from = \"Post Code\", transform = \"postcode\"",
        "mobile = { from = \"Mobile\", transform = \"uk_phone\"",
        "email = { from = \"E-mail\", transform = \"email\"",
        "gender = { from = \"Sex\", map = \"gender\"",
    ] {
        assert!(mapping.contains(bound), "{bound} not in:\n{mapping}");
    }
    assert!(mapping.contains("# TODO: column \"Keyworker\""), "{mapping}");
    let fixture = std::fs::read_to_string(site.join("tests/fixtures/kyra/kyra-clients.csv")).unwrap();
    assert!(fixture.starts_with("Client Ref,First Name,"), "{fixture}");
    assert!(fixture.contains("999 000 0018") && !fixture.contains("Zo") && !fixture.contains("K-1"), "{fixture}");

    // Refuses to overwrite; the consent mapping reuses the fixture, read by both kinds.
    let again = run(&["new", "--partner", "kyra", "--kind", "person", "--from", &from]);
    assert_eq!(again.status.code(), Some(1));
    assert!(text(&again).contains("pass --force"), "{}", text(&again));
    let consent = run(&["new", "--partner", "kyra", "--kind", "consent", "--from", &from]);
    assert!(consent.status.success(), "{}", text(&consent));
    let mapping = std::fs::read_to_string(site.join("maps/kyra/consent.toml")).unwrap();
    assert!(mapping.contains("date_source = \"first_seen\"") && mapping.contains("not_asked = "), "{mapping}");

    let check = run(&["check"]);
    assert!(check.status.success() && text(&check).contains("kyra: 2 mapping(s)"), "{}", text(&check));
    let test = run(&["test", "--partner", "kyra"]);
    assert!(test.status.success(), "{}", text(&test));
    assert!(text(&test).contains("ok   kyra/person") && text(&test).contains("ok   kyra/consent"), "{}", text(&test));

    // Preview reads the one export for both kinds, shows each statement, counts blanks, keeps quarantine away.
    let state = dir.join("state");
    let preview = Command::new(env!("CARGO_BIN_EXE_connector"))
        .args(["--config", &config, "mappings", "preview", "--partner", "kyra", "--input", &from])
        .env_remove("CONNECTOR_MAPPINGS")
        .env("XDG_STATE_HOME", &state)
        .current_dir(&elsewhere)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&preview.stderr).to_string();
    assert_eq!(preview.status.code(), Some(3), "the bad NHS number is quarantined: {err}");
    assert!(err.contains("kyra-clients-2025-06.csv: 4 read, 3 mapped, 1 quarantined"), "{err}");
    assert!(err.contains("consent") && err.contains("2 no statement"), "{err}");
    assert!(
        err.contains("CONSENT kyra-clients-2025-06.csv: row 2 (key K-1): given, dated when the connector first sees"),
        "{err}"
    );
    assert!(err.contains("NO STATEMENT kyra-clients-2025-06.csv: row 3 (key K-2): blank answer"), "{err}");
    assert!(err.contains("row 4 (key K-3): \"not asked\" answer"), "{err}");
    let kept = state.join("connector/preview-quarantine");
    assert!(err.contains(&kept.display().to_string()), "says where the quarantine is: {err}");
    assert_eq!(std::fs::read_dir(&kept).unwrap().count(), 1);
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0, "nothing written in the working directory");
    let out = String::from_utf8(preview.stdout).unwrap();
    let zoe: serde_json::Value = out
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|r| r["resourceType"] == "Patient" && r["name"][0]["given"][0] == "Zoë")
        .expect("Windows-1252 name read");
    assert_eq!(zoe["address"][0]["line"], serde_json::json!(["1 Low Lane", "Flat 2"]));
    let _ = std::fs::remove_dir_all(dir);
}
