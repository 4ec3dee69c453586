//! Engine tests on a small mapping set written here, independent of the shipped mappings.

use std::path::{Path, PathBuf};

use super::*;

struct Dir(PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn setup(name: &str, files: &[(&str, &str)]) -> Dir {
    let dir = std::env::temp_dir().join(format!("connector-mapping-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    for (path, text) in files {
        let p = dir.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    Dir(dir)
}

const PARTNER: &str = r#"
[partner]
id = "p1"
name = "Partner One"
identifier_system = "https://id.example/p1"
charity_number = "1000001"
"#;

const PERSON: &str = r#"
[mapping]
partner = "p1"
kind = "person"
version = "1.0.0"
key = ["client_id"]

[fields]
client_id = { from = "Client ID", required = true }
nhs = { from = "NHS", transform = "nhs_number" }
family = { from = "Surname", required = true }
given = { from = "Forename" }
dob = { from = "DOB", transform = "uk_date", required = true }
gender = { from = "Sex", map = "gender", default = "unknown" }

[maps.gender]
M = "male"
F = "female"

[[resource]]
name = "patient"
type = "Patient"
[resource.template]
identifier = [
  { system = "https://fhir.nhs.uk/Id/nhs-number", value = "{nhs}" },
  { system = "{partner.identifier_system}/client", value = "{client_id}" },
]
name = [{ family = "{family}", given = ["{given}"] }]
gender = "{gender}"
birthDate = "{dob}"
managingOrganization = { reference = "{partner.org}" }
"#;

const CONTACT: &str = r#"
[mapping]
partner = "p1"
kind = "contact"
version = "2.1.0"
key = ["contact_id"]
category = "mental_health"

[fields]
contact_id = { from = "Contact", required = true }
client_id = { from = "Client ID", required = true }
when = { join = ["Date", "Time"], transform = "uk_datetime", required = true }

[refs]
patient = { kind = "person", resource = "patient", key = ["client_id"] }

[[resource]]
name = "encounter"
type = "Encounter"
[resource.template]
status = "finished"
class = { system = "http://terminology.hl7.org/CodeSystem/v3-ActCode", code = "AMB" }
subject = { reference = "{ref.patient}" }
period = { start = "{when}" }
"#;

fn catalog(dir: &Path) -> Catalog {
    load_catalog(&dir.join("mappings")).unwrap_or_else(|e| panic!("{e:?}"))
}

#[derive(Default)]
struct Got {
    resources: Vec<(u64, serde_json::Value)>,
    quarantined: Vec<Quarantined>,
}
impl Sink for Got {
    fn resource(&mut self, r: &MappedResource<'_>) -> std::io::Result<()> {
        self.resources.push((r.row, r.resource.clone()));
        Ok(())
    }
    fn quarantined(&mut self, q: &Quarantined) -> std::io::Result<()> {
        self.quarantined.push(q.clone());
        Ok(())
    }
}

fn run_all(dir: &Path) -> (RunReport, Got) {
    let cat = catalog(dir);
    let p = cat.partner("p1").unwrap();
    let inputs = vec![
        Input { kind: RecordKind::Contact, path: dir.join("contact.csv") },
        Input { kind: RecordKind::Person, path: dir.join("person.csv") },
    ];
    let mut got = Got::default();
    let report = run(p, &inputs, &mut got).unwrap();
    (report, got)
}

const PEOPLE: &str = "Client ID,NHS,Surname,Forename,DOB,Sex\n\
C1,999 000 0018,Brontë,Zoë,3/4/1987,F\n\
C2,9990000017,Bad,Nhs,01/01/1990,M\n\
C3,,NoDob,Anne,,F\n\
C1,999 000 0018,Brontë,Zoë,3/4/1987,F\n\
C4,,Extra,Col,01/01/1990,M,oops\n\
C5,,Odd,Sex,01/01/1990,Q\n\
C6,,Plain,Person,02/02/1992,\n";

const CONTACTS: &str = "Contact,Client ID,Date,Time\n\
K1,C1,28/03/2026,10:30\n\
K2,C2,30/03/2026,10:30\n\
K3,C99,30/03/2026,11:00\n\
K4,C6,29/03/2026,01:30\n";

#[test]
fn header_less_export_names_missing_columns_and_not_the_first_record() {
    // The first line is a person, not the column names.
    let people = "C1,999 012 3403,Brontë,Zoë,3/4/1987,F\nC2,,Plain,Person,02/02/1992,M\n";
    let d = setup(
        "noheader",
        &[
            ("mappings/p1/partner.toml", PARTNER),
            ("mappings/p1/person.toml", PERSON),
            ("mappings/p1/contact.toml", CONTACT),
            ("person.csv", people),
            ("contact.csv", "Contact,Client ID,Date,Time\n"),
        ],
    );
    let (report, _) = run_all(&d.0);
    let err = report.files.iter().find(|f| f.kind == Some(RecordKind::Person)).unwrap().error.clone().unwrap();
    assert!(err.contains("\"Client ID\" (fields.client_id)") && err.contains("\"DOB\" (fields.dob)"), "{err}");
    assert!(err.contains("header row is probably missing"), "says the first row looks like data: {err}");
    for leaked in ["999 012 3403", "Bront", "Zo", "3/4/1987", "C1"] {
        assert!(!err.contains(leaked), "the error quotes the first record: {err}");
    }
    assert!(err.chars().count() <= crate::ingest::MAX_MESSAGE_CHARS + 20, "{err}");
}

#[test]
fn field_length_limits_are_tight_where_the_transform_knows_the_shape() {
    let long_nhs = "9".repeat(40);
    // 40 characters: short enough for the reader's cell limit, too long for any NHS number, even with spaces.
    let people = format!("Client ID,NHS,Surname,Forename,DOB,Sex\nC1,{long_nhs},Plain,Person,3/4/1987,F\n");
    let d = setup(
        "lengths",
        &[
            ("mappings/p1/partner.toml", PARTNER),
            ("mappings/p1/person.toml", PERSON),
            ("mappings/p1/contact.toml", CONTACT),
            ("person.csv", &people),
            ("contact.csv", "Contact,Client ID,Date,Time\n"),
        ],
    );
    let (report, got) = run_all(&d.0);
    assert_eq!(report.files.iter().find(|f| f.kind == Some(RecordKind::Person)).unwrap().quarantined, 1);
    let text = |row: u64| {
        let q = got.quarantined.iter().find(|q| q.row == row).expect("quarantined");
        q.reasons.iter().map(ToString::to_string).collect::<Vec<_>>().join(" | ")
    };
    assert!(text(2).contains("column \"NHS\" (field nhs): longer than 32 characters"), "{}", text(2));
    assert!(!text(2).contains("9999"));
}

#[test]
fn value_map_failure_names_the_column_and_map_but_not_the_value() {
    // An unquoted comma shifted the NHS number into the Sex column: the reason must not repeat it.
    let people = "Client ID,NHS,Surname,Forename,DOB,Sex\nC1,,Brontë,Zoë,3/4/1987,999 012 3403\n";
    let d = setup(
        "valuemap",
        &[
            ("mappings/p1/partner.toml", PARTNER),
            ("mappings/p1/person.toml", PERSON),
            ("mappings/p1/contact.toml", CONTACT),
            ("person.csv", people),
            ("contact.csv", "Contact,Client ID,Date,Time\n"),
        ],
    );
    let (_, got) = run_all(&d.0);
    let q = got.quarantined.iter().find(|q| q.row == 2).expect("row 2 quarantined");
    let text: Vec<String> = q.reasons.iter().map(ToString::to_string).collect();
    let text = text.join(" | ");
    assert!(text.contains("column \"Sex\" (field gender): the value is not in value map \"gender\""), "{text}");
    assert!(text.contains("[maps.gender]"), "says what to do: {text}");
    for leaked in ["999 012 3403", "9990123403", "Bront"] {
        assert!(!text.contains(leaked), "the reason quotes the cell: {text}");
    }
}

#[test]
fn messy_rows_are_quarantined_with_reasons_and_counts_add_up() {
    let d = setup(
        "messy",
        &[
            ("mappings/p1/partner.toml", PARTNER),
            ("mappings/p1/person.toml", PERSON),
            ("mappings/p1/contact.toml", CONTACT),
            ("person.csv", PEOPLE),
            ("contact.csv", CONTACTS),
        ],
    );
    let (report, got) = run_all(&d.0);
    assert_eq!(report.files[0].kind, Some(RecordKind::Person), "people are mapped before contacts");
    assert_eq!((report.read(), report.mapped(), report.quarantined()), (11, 3, 8));
    for f in &report.files {
        assert_eq!(f.read, f.mapped + f.quarantined);
    }
    let reasons = |row: u64, kind: RecordKind| {
        got.quarantined
            .iter()
            .find(|q| q.row == row && q.kind == kind)
            .map(|q| q.reasons.iter().map(ToString::to_string).collect::<Vec<_>>().join(" | "))
            .unwrap_or_default()
    };
    assert!(reasons(3, RecordKind::Person).contains("column \"NHS\" (field nhs): not a valid NHS number"));
    assert!(reasons(4, RecordKind::Person).contains("column \"DOB\" (field dob): required"));
    assert!(reasons(5, RecordKind::Person).contains("duplicate of row 2"));
    assert!(reasons(6, RecordKind::Person).contains("1 more cell(s)"));
    assert!(
        reasons(7, RecordKind::Person)
            .contains("column \"Sex\" (field gender): the value is not in value map \"gender\"")
    );
    assert!(
        reasons(3, RecordKind::Contact).contains("quarantined (") && reasons(3, RecordKind::Contact).contains("row 3")
    );
    assert!(reasons(4, RecordKind::Contact).contains("not in this run's output"));
    assert!(reasons(5, RecordKind::Contact).contains("clocks went forward"));

    let patient = &got.resources.iter().find(|(row, r)| *row == 2 && r["resourceType"] == "Patient").unwrap().1;
    assert_eq!(patient["name"][0]["given"][0], "Zoë");
    assert_eq!(patient["birthDate"], "1987-04-03");
    assert_eq!(patient["identifier"][0]["value"], "9990000018");
    assert_eq!(patient["meta"]["source"], "urn:york-connector:mapping:p1/person@1.0.0");
    let plain = &got.resources.iter().find(|(row, _)| *row == 8).unwrap().1;
    assert_eq!(plain["identifier"].as_array().unwrap().len(), 1, "no NHS number, no half identifier");
    assert_eq!(plain["gender"], "unknown");
    let enc = &got.resources.iter().find(|(_, r)| r["resourceType"] == "Encounter").unwrap().1;
    assert_eq!(enc["period"]["start"], "2026-03-28T10:30:00+00:00");
    assert_eq!(enc["subject"]["reference"], format!("Patient/{}", patient["id"].as_str().unwrap()));
}

#[test]
fn same_input_gives_identical_output() {
    let d = setup(
        "determinism",
        &[
            ("mappings/p1/partner.toml", PARTNER),
            ("mappings/p1/person.toml", PERSON),
            ("mappings/p1/contact.toml", CONTACT),
            ("person.csv", PEOPLE),
            ("contact.csv", CONTACTS),
        ],
    );
    let a = run_all(&d.0).1.resources;
    let b = run_all(&d.0).1.resources;
    let bytes = |v: &[(u64, serde_json::Value)]| v.iter().map(|(_, r)| r.to_string()).collect::<Vec<_>>().join("\n");
    assert_eq!(bytes(&a), bytes(&b));
}

#[test]
fn mapping_errors_name_file_line_and_key() {
    let broken = PERSON.replace("transform = \"uk_date\"", "transform = \"uk-date\"").replace("{given}", "{givn}");
    let d = setup(
        "errors",
        &[
            ("mappings/p1/partner.toml", PARTNER),
            ("mappings/p1/person.toml", &broken),
            ("mappings/p1/contact.toml", CONTACT),
        ],
    );
    let errors: Vec<String> =
        load_catalog(&d.0.join("mappings")).unwrap_err().iter().map(ToString::to_string).collect();
    let all = errors.join("\n");
    assert!(all.contains("person.toml:13: fields.dob.transform: unknown transform \"uk-date\""), "{all}");
    assert!(all.contains("person.toml:28: resource[0] (patient).template: {givn}: not a field"), "{all}");
    assert!(!all.contains("contact.toml"), "no cascade of errors from a kind that failed: {all}");

    let d2 = setup(
        "errors2",
        &[("mappings/p1/partner.toml", PARTNER), ("mappings/p1/person.toml", &PERSON.replace("key = [", "kee = ["))],
    );
    let all: Vec<String> = load_catalog(&d2.0.join("mappings")).unwrap_err().iter().map(ToString::to_string).collect();
    assert!(all[0].contains("person.toml:6:") && all[0].contains("unknown field `kee`"), "{all:?}");
}

#[test]
fn a_template_about_a_person_must_refer_to_their_patient() {
    let orphan = CONTACT.replace("subject = { reference = \"{ref.patient}\" }\n", "");
    assert_ne!(orphan, CONTACT);
    let d = setup(
        "orphan",
        &[
            ("mappings/p1/partner.toml", PARTNER),
            ("mappings/p1/person.toml", PERSON),
            ("mappings/p1/contact.toml", &orphan),
        ],
    );
    let all: Vec<String> = load_catalog(&d.0.join("mappings")).unwrap_err().iter().map(ToString::to_string).collect();
    assert_eq!(all.len(), 1, "{all:?}");
    assert!(all[0].contains("contact.toml:"), "{all:?}");
    assert!(
        all[0].contains("resource[0] (encounter).template: Encounter resources are about a person, but this template refers to no Patient"),
        "{all:?}"
    );
    // The shipped mappings all refer to their person.
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings");
    if let Err(e) = load_catalog(&shipped) {
        panic!("{:?}", e.iter().map(ToString::to_string).collect::<Vec<_>>());
    }
}
