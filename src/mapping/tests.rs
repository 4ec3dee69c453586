//! Engine tests on a small mapping set written here, independent of the shipped mappings.

use std::path::{Path, PathBuf};

use super::engine::says_what_to_do;
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
        self.resources.push((r.row, r.resource()));
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

/// Every duplicate and reference check gives the same answer, with the same words, when the run's memory of
/// keys and resources is on disk (here after four entries) as when it is all in memory.
#[test]
fn checks_fire_the_same_when_the_run_remembers_on_disk() {
    // 300 people; then duplicates of early rows (identical, and changed) and a quarantined early person.
    let mut people = String::from("Client ID,NHS,Surname,Forename,DOB,Sex\n");
    for n in 1..=300 {
        let dob = if n == 7 { "" } else { "01/01/1990" };
        people.push_str(&format!("C{n},,Family{n},Given,{dob},F\n"));
    }
    people.push_str("C1,,Family1,Given,01/01/1990,F\n"); // row 302: identical to row 2
    people.push_str("C2,,Changed,Given,01/01/1990,F\n"); // row 303: same key as row 3, other content
    let mut contacts = String::from("Contact,Client ID,Date,Time\n");
    for n in 1..=300 {
        contacts.push_str(&format!("K{n},C{n},28/03/2026,10:30\n"));
    }
    contacts.push_str("K1,C1,28/03/2026,10:30\n"); // row 302: a duplicate contact
    contacts.push_str("K900,C7,28/03/2026,10:30\n"); // row 303: its person was quarantined (person row 8)
    contacts.push_str("K901,C999,28/03/2026,10:30\n"); // row 304: no such person
    contacts.push_str("K902,C300,28/03/2026,10:30\n"); // row 305: the last person, fine
    let d = setup(
        "spilled",
        &[
            ("mappings/p1/partner.toml", PARTNER),
            ("mappings/p1/person.toml", PERSON),
            ("mappings/p1/contact.toml", CONTACT),
            ("person.csv", &people),
            ("contact.csv", &contacts),
        ],
    );
    let cat = catalog(&d.0);
    let p = cat.partner("p1").unwrap();
    let inputs = vec![
        Input { kind: RecordKind::Person, path: d.0.join("person.csv") },
        Input { kind: RecordKind::Contact, path: d.0.join("contact.csv") },
    ];
    let mut in_memory = Got::default();
    run(p, &inputs, &mut in_memory).unwrap();
    let mut on_disk = Got::default();
    let state = super::state::RunState::with_memory(&d.0, [4, 4, 4]);
    let report = super::engine::run_with_state(p, &inputs, &mut on_disk, None, state).unwrap();

    let reasons = |got: &Got| -> Vec<(RecordKind, u64, String)> {
        got.quarantined
            .iter()
            .map(|q| (q.kind, q.row, q.reasons.iter().map(ToString::to_string).collect::<Vec<_>>().join(" | ")))
            .collect()
    };
    assert_eq!(reasons(&on_disk), reasons(&in_memory));
    assert_eq!(on_disk.resources, in_memory.resources);
    assert_eq!((report.read(), report.mapped(), report.quarantined()), (606, 599, 7));
    let said = reasons(&on_disk);
    let of = |kind: RecordKind, row: u64| said.iter().find(|(k, r, _)| *k == kind && *r == row).unwrap().2.clone();
    assert!(of(RecordKind::Person, 8).contains("required"));
    assert!(of(RecordKind::Person, 302).contains("duplicate of row 2 (identical content)"));
    assert!(of(RecordKind::Person, 303).contains("another row (3) has the same key with different content"));
    assert!(of(RecordKind::Contact, 8).contains("quarantined (person.csv row 8)"));
    assert!(of(RecordKind::Contact, 302).contains("duplicate of row 2"));
    assert!(of(RecordKind::Contact, 303).contains("quarantined (person.csv row 8)"));
    assert!(of(RecordKind::Contact, 304).contains("not in this run's output"));
    assert!(!said.iter().any(|(k, r, _)| *k == RecordKind::Contact && *r == 305));
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

/// One export feeding two kinds: people, with a Y/N consent column kept as small charities keep it.
const CLIENTS: &str = "Client ID,Surname,Forename,DOB,Address,Consent to share (Y/N)\n\
C1,Brontë,Zoë,3/4/1987,\"12 Low Lane\r\n\r\n  Flat 2 \",Y\n\
C2,Plain,Person,02/02/1992,1 High St,N\n\
C3,Blank,Answer,03/03/1993,,\n\
C4,Not,Asked,04/04/1994,2 High St,  NOT ASKED \n\
C5,Odd,Answer,05/05/1995,3 High St,maybe\n";

const CLIENT_PERSON: &str = r#"
[mapping]
partner = "p1"
kind = "person"
version = "1.0.0"
key = ["client_id"]

[source]
files = ["clients*"]

[fields]
client_id = { from = "Client ID", required = true }
family = { from = "Surname", required = true }
given = { from = "Forename" }
dob = { from = "DOB", transform = "uk_date", required = true }
address = { from = "Address", transform = "split_lines" }

[[resource]]
name = "patient"
type = "Patient"
[resource.template]
identifier = [{ system = "{partner.identifier_system}/client", value = "{client_id}" }]
name = [{ family = "{family}", given = ["{given}"] }]
birthDate = "{dob}"
address = [{ use = "home", line = ["{address}"] }]
managingOrganization = { reference = "{partner.org}" }
"#;

const CLIENT_CONSENT: &str = r#"
[mapping]
partner = "p1"
kind = "consent"
version = "1.0.0"
key = ["client_id"]

[source]
files = ["clients*"]

[fields]
client_id = { from = "Client ID", required = true }
decision = { from = "Consent to share (Y/N)", map = "decision", required = true }
share = { from = "Consent to share (Y/N)", transform = "boolean" }

[maps.decision]
Y = "given"
N = "declined"

[refs]
patient = { kind = "person", resource = "patient", key = ["client_id"] }

[[resource]]
name = "consent"
type = "Consent"
[resource.template]
status = "active"
scope = { coding = [{ system = "http://terminology.hl7.org/CodeSystem/consentscope", code = "patient-privacy" }] }
category = [{ coding = [{ system = "http://loinc.org", code = "59284-0" }] }]
patient = { reference = "{ref.patient}" }
policyRule = { coding = [{ system = "http://terminology.hl7.org/CodeSystem/v3-ActCode", code = "OPTIN" }] }

[consent]
decision = "decision"
date_source = "first_seen"
not_asked = ["Not asked", "n/a"]
cito = "share"
pkb = "share"
"#;

#[derive(Default)]
struct Statements {
    facts: Vec<(String, ConsentFacts)>,
    patients: Vec<serde_json::Value>,
    quarantined: Vec<Quarantined>,
    none: Vec<(u64, Option<String>, Option<String>, NoStatementWhy)>,
}
impl Sink for Statements {
    fn resource(&mut self, r: &MappedResource<'_>) -> std::io::Result<()> {
        if let Some(f) = r.consent {
            self.facts.push((r.source_key.to_string(), f.clone()));
        }
        if r.resource_type == "Patient" {
            self.patients.push(r.resource());
        }
        Ok(())
    }
    fn quarantined(&mut self, q: &Quarantined) -> std::io::Result<()> {
        self.quarantined.push(q.clone());
        Ok(())
    }
    fn no_statement(&mut self, n: &NoStatement<'_>) -> std::io::Result<()> {
        self.none.push((n.row, n.key.clone(), n.person.clone(), n.why));
        Ok(())
    }
}

fn clients_setup(name: &str, consent: &str) -> Dir {
    setup(
        name,
        &[
            ("mappings/p1/partner.toml", PARTNER),
            ("mappings/p1/person.toml", CLIENT_PERSON),
            ("mappings/p1/consent.toml", consent),
            ("clients.csv", CLIENTS),
        ],
    )
}

fn run_clients(dir: &Path) -> (RunReport, Statements) {
    let cat = catalog(dir);
    let p = cat.partner("p1").unwrap();
    let file = dir.join("clients.csv");
    let inputs = [RecordKind::Consent, RecordKind::Person].map(|kind| Input { kind, path: file.clone() });
    let mut got = Statements::default();
    let report = run(p, &inputs, &mut got).unwrap();
    (report, got)
}

#[test]
fn a_consent_column_without_dates_is_dated_when_first_seen_and_blanks_state_nothing() {
    let d = clients_setup("firstseen", CLIENT_CONSENT);
    let (report, got) = run_clients(&d.0);
    let counts = |k: RecordKind| report.files.iter().find(|f| f.kind == Some(k)).unwrap().clone();
    let (person, consent) = (counts(RecordKind::Person), counts(RecordKind::Consent));
    assert_eq!((person.read, person.mapped, person.quarantined, person.no_statement), (5, 5, 0, 0));
    assert_eq!((consent.read, consent.mapped, consent.quarantined, consent.no_statement), (5, 2, 1, 2));
    assert_eq!(report.no_statement(), 2);

    let (key, given) = &got.facts[0];
    assert_eq!(key, "C1");
    assert_eq!((given.decision, given.dated), (Decision::Given, DateSource::FirstSeen));
    assert!(given.given.is_empty() && given.effective.is_empty() && given.withdrawn.is_none(), "no invented date");
    assert!(given.cito && given.pkb);
    assert_eq!(got.facts[1].1.decision, Decision::Declined);
    let json = serde_json::to_value(given).unwrap();
    assert_eq!(json["dated"], "first_seen");

    // Blank and "not asked" (folded like value maps): no statement, no Consent, nothing quarantined.
    assert_eq!(got.none.len(), 2);
    assert_eq!((got.none[0].0, got.none[0].1.as_deref(), got.none[0].3), (4, Some("C3"), NoStatementWhy::Blank));
    assert_eq!((got.none[1].0, got.none[1].3), (5, NoStatementWhy::NotAsked));
    let c3 = got.patients.iter().find(|p| p["identifier"][0]["value"] == "C3").unwrap();
    assert_eq!(got.none[0].2.as_deref(), Some(format!("Patient/{}", c3["id"].as_str().unwrap()).as_str()));
    assert_eq!(got.quarantined.len(), 1, "only the answer that is neither Y, N nor blank");
    assert_eq!(got.quarantined[0].row, 6);
    assert!(got.quarantined[0].reasons[0].to_string().contains("value map \"decision\""));

    // The address cell's lines became line entries, blank lines dropped, each trimmed.
    let zoe = got.patients.iter().find(|p| p["identifier"][0]["value"] == "C1").unwrap();
    assert_eq!(zoe["address"][0]["line"], serde_json::json!(["12 Low Lane", "Flat 2"]));
    assert!(c3.get("address").is_none(), "an empty address cell leaves no address");
}

#[test]
fn consent_facts_dated_by_the_export_serialize_as_before() {
    // Statement hashes are taken over this form: a new field must not change the hash of existing statements.
    let facts = ConsentFacts {
        patient: "Patient/a".into(),
        decision: Decision::Given,
        effective: "2024-01-02".into(),
        given: "2024-01-02".into(),
        withdrawn: None,
        cito: true,
        pkb: false,
        partners: vec!["Hub".into()],
        restrictions: vec![Restriction::ThirdParty],
        dated: DateSource::Export,
    };
    assert_eq!(
        serde_json::to_string(&facts).unwrap(),
        r#"{"patient":"Patient/a","decision":"given","effective":"2024-01-02","given":"2024-01-02","withdrawn":null,"cito":true,"pkb":false,"partners":["Hub"],"restrictions":["third_party"]}"#
    );
    let back: ConsentFacts = serde_json::from_str(&serde_json::to_string(&facts).unwrap()).unwrap();
    assert_eq!(back, facts);
}

#[test]
fn a_consent_section_needs_exactly_one_way_to_date_its_statements() {
    let errors = |consent: &str| -> String {
        let d = clients_setup("dating", consent);
        let all: Vec<String> =
            load_catalog(&d.0.join("mappings")).unwrap_err().iter().map(ToString::to_string).collect();
        all.join("\n")
    };
    let both =
        CLIENT_CONSENT.replace("date_source = \"first_seen\"", "date_source = \"first_seen\"\ndate = \"client_id\"");
    assert!(
        errors(&both).contains("consent.date_source: date_source = \"first_seen\" and a date field are both given")
    );
    let neither = CLIENT_CONSENT.replace("date_source = \"first_seen\"\n", "");
    assert!(errors(&neither).contains("consent.date: say which field holds the date"), "{}", errors(&neither));
    let typo = CLIENT_CONSENT.replace("\"first_seen\"", "\"first-seen\"");
    assert!(errors(&typo).contains("is not a date source"));
    let decision_word = CLIENT_CONSENT.replace("\"n/a\"", "\"Declined\"");
    assert!(errors(&decision_word).contains("is a consent decision word"));
    let mapped_too = CLIENT_CONSENT.replace("\"n/a\"", "\" y \"");
    assert!(errors(&mapped_too).contains("is also a key of [maps.decision]"));
    let withdrawn = CLIENT_CONSENT.replace("cito = \"share\"", "cito = \"share\"\nwithdrawn = \"client_id\"");
    assert!(errors(&withdrawn).contains("consent.withdrawn: a statement dated when first seen"));
}

/// A mapping whose rows can fail in every way a field, a row, a reference or a consent statement can.
const EVERY_FAILURE_CONSENT: &str = r#"
[mapping]
partner = "p1"
kind = "consent"
version = "1.0.0"
key = ["consent_id"]

[fields]
consent_id = { from = "Consent ID" }
client_id = { from = "Client ID", required = true }
date = { from = "Date", transform = "uk_date", required = true }
decision = { from = "Decision", map = "decision", required = true }
score = { from = "Score", transform = "integer", range = [0, 4] }
level = { from = "Level", range = [0, 4] }
phone = { from = "Phone", transform = "uk_phone" }
email = { from = "Email", transform = "email" }
yes = { from = "Share", transform = "boolean" }
restrictions = { from = "Restrictions" }
status = { from = "Status", map = "status", default = "active" }

[maps.decision]
Y = "given"
N = "declined"
"?" = "perhaps"

[maps.status]
gone = "banana"

[refs]
patient = { kind = "person", resource = "patient", key = ["client_id"] }

[[resource]]
name = "consent"
type = "Consent"
[resource.template]
status = "{status}"
scope = { coding = [{ system = "http://terminology.hl7.org/CodeSystem/consentscope", code = "patient-privacy" }] }
category = [{ coding = [{ system = "http://loinc.org", code = "59284-0" }] }]
patient = { reference = "{ref.patient}" }
dateTime = "{date}"
policyRule = { coding = [{ system = "http://terminology.hl7.org/CodeSystem/v3-ActCode", code = "OPTIN" }] }

[consent]
decision = "decision"
date = "date"
cito = "yes"
restrictions = "restrictions"
restriction_codes = { "No third-party information" = "third_party" }
"#;

#[test]
fn every_quarantine_reason_says_what_to_do() {
    let header = "Consent ID,Client ID,Date,Decision,Score,Level,Phone,Email,Share,Restrictions,Status\n";
    let rows = [
        "K1,C1,31/02/2025,Y,,,,,,,",               // impossible date
        "K2,C1,02/13/2025,Y,,,,,,,",               // US order
        "K3,C1,3/4/25,Y,,,,,,,",                   // two-digit year
        "K4,C1,yesterday,Y,,,,,,,",                // not a date
        "K5,C1,01/01/2025,Y,9,,,,,,",              // out of range
        "K6,C1,01/01/2025,Y,two,,,,,,",            // not a whole number
        "K7,C1,01/01/2025,Y,,high,,,,,",           // not a number, but a range
        "K8,C1,01/01/2025,Y,,,call me,,,,",        // phone with letters
        "K9,C1,01/01/2025,Y,,,0123,,,,",           // phone too short
        "K10,C1,01/01/2025,Y,,,,nobody,,,",        // email
        "K11,C1,01/01/2025,Y,,,,,perhaps,,",       // boolean
        "K12,C1,01/01/2025,Q,,,,,,,",              // not in the value map
        "K13,C1,01/01/2025,?,,,,,,,",              // a decision word the policy does not know
        "K14,C1,01/01/2099,Y,,,,,,,",              // future date
        "K15,C1,01/01/2025,Y,,,,,,Only Tuesdays,", // restriction not recognised
        ",C1,01/01/2025,Y,,,,,,,",                 // key empty
        "K17,,01/01/2025,Y,,,,,,,",                // required empty
        "K18,C404,01/01/2025,Y,,,,,,,",            // person not in the run
        "K19,C2,01/01/2025,Y,,,,,,,",              // person quarantined
        "K20,C1,01/01/2025,Y,,,,,,,",              // fine
        "K20,C1,01/01/2025,Y,,,,,,,",              // duplicate, identical
        "K20,C1,02/01/2025,Y,,,,,,,",              // duplicate, different
        "K23,C1,01/01/2025,Y,,,,,,,,extra",        // extra cell
        "K24,C1,01/01/2025,Y,,,,,,,gone",          // the FHIR check refuses the resource
        "K25,C1,01/01/2025,Y,,,,,,\"never closed", // unclosed quote
    ];
    let consent_csv = format!("{header}{}\n", rows.join("\n"));
    let people = "Client ID,NHS,Surname,Forename,DOB,Sex\nC1,,Plain,Person,01/01/1990,F\nC2,,Bad,Date,31/02/1990,F\n";
    let d = setup(
        "actions",
        &[
            ("mappings/p1/partner.toml", PARTNER),
            ("mappings/p1/person.toml", PERSON),
            ("mappings/p1/consent.toml", EVERY_FAILURE_CONSENT),
            ("person.csv", people),
            ("consent.csv", &consent_csv),
        ],
    );
    let cat = catalog(&d.0);
    let p = cat.partner("p1").unwrap();
    let inputs = vec![
        Input { kind: RecordKind::Person, path: d.0.join("person.csv") },
        Input { kind: RecordKind::Consent, path: d.0.join("consent.csv") },
    ];
    let mut got = Got::default();
    let report = run(p, &inputs, &mut got).unwrap();
    let consent = report.files.iter().find(|f| f.kind == Some(RecordKind::Consent)).unwrap();
    assert_eq!(consent.mapped, 1, "only K20: {:#?}", got.quarantined);
    let mut families = std::collections::BTreeSet::new();
    for q in &got.quarantined {
        for r in &q.reasons {
            assert!(says_what_to_do(&r.message), "row {} {}: does not say what to do: {r}", q.row, q.kind);
            families.insert(r.message.split([';', ':', '(']).next().unwrap_or_default().trim().to_string());
        }
    }
    assert!(families.len() >= 18, "{families:#?}");
    let reason = |row: u64| {
        got.quarantined
            .iter()
            .find(|q| q.row == row && q.kind == RecordKind::Consent)
            .map(|q| q.reasons.iter().map(ToString::to_string).collect::<Vec<_>>().join(" | "))
            .unwrap_or_default()
    };
    assert!(reason(2).contains("no such day in that month") && reason(2).contains("correct the date in the export"));

    // The readers' own reasons (JSON records that are not objects or not JSON) say it too.
    let json_mapping = EVERY_FAILURE_CONSENT.replace("[fields]", "[source]\nformat = \"ndjson\"\n\n[fields]");
    let d2 = setup(
        "actions-json",
        &[
            ("mappings/p1/partner.toml", PARTNER),
            ("mappings/p1/person.toml", PERSON),
            ("mappings/p1/consent.toml", &json_mapping),
            ("consent.ndjson", "[1]\n{oops\n"),
        ],
    );
    let cat = catalog(&d2.0);
    let mut got = Got::default();
    run(
        cat.partner("p1").unwrap(),
        &[Input { kind: RecordKind::Consent, path: d2.0.join("consent.ndjson") }],
        &mut got,
    )
    .unwrap();
    assert_eq!(got.quarantined.len(), 2);
    for q in &got.quarantined {
        assert!(q.reasons.iter().all(|r| says_what_to_do(&r.message)), "{:?}", q.reasons);
    }
}

#[test]
fn every_transform_refusal_says_what_to_do() {
    use transform::Transform as T;
    let refused = [
        (T::NhsNumber, vec!["9.99E+09", "12ab", "12345", "9990000017"]),
        (
            T::UkDate,
            vec![
                "31/02/2025",
                "02/13/2025",
                "3/4/25",
                "x/4/2025",
                "3/xx/2025",
                "3/4/yyyy",
                "soon",
                "2025-02-31",
                "2025-01-01x",
                "99999",
            ],
        ),
        (T::UkDateTime, vec!["01/01/2025 25:00", "01/01/2025T10:00+9", "29/03/2026 01:30"]),
        (T::Postcode, vec!["York"]),
        (T::UkPhone, vec!["+33 1 23 45 67 89", "call me", "0123"]),
        (T::Email, vec!["nobody"]),
        (T::Integer, vec!["two"]),
        (T::Decimal, vec!["lots"]),
        (T::Boolean, vec!["perhaps"]),
    ];
    for (t, inputs) in refused {
        for input in inputs {
            let Err(message) = t.apply(serde_json::Value::String(input.into())) else { continue };
            assert!(says_what_to_do(&message), "{t:?} on {input:?}: {message}");
        }
    }
}

/// Issue 15: every shipped template passes its load-time FHIR check with representative values, so its rows take
/// the quick per-row path, and the probes tell free text, dates, dateTimes and coded places apart.
#[test]
fn shipped_templates_are_checked_once_at_load() {
    let cat = load_catalog(&Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings")).unwrap();
    let mut places = Vec::new();
    for p in cat.partners.values() {
        for m in p.mappings.values() {
            for spec in &m.resources {
                let c = spec
                    .compiled
                    .as_ref()
                    .unwrap_or_else(|| panic!("{} {}: not compiled", m.file.display(), spec.name));
                assert!(
                    !c.places().is_empty(),
                    "{} {}: the representative resource did not fit",
                    m.file.display(),
                    spec.name
                );
                places.extend_from_slice(c.places());
            }
        }
    }
    for p in [check::Place::Text, check::Place::Date, check::Place::DateTime, check::Place::Exact] {
        assert!(places.contains(&p), "{p:?}");
    }
}

/// A person mapping that hands values to FHIR as the partner wrote them (no transforms, no value maps), so the
/// checks on the produced resource are the only ones that can refuse them.
const RAW_PERSON: &str = r#"
[mapping]
partner = "p1"
kind = "person"
version = "1.0.0"
key = ["client_id"]

[fields]
client_id = { from = "Client ID", required = true }
nhs = { from = "NHS" }
family = { from = "Surname" }
dob = { from = "DOB" }
gender = { from = "Sex" }
gp = { from = "GP" }
age = { from = "Age", transform = "integer" }
note = { from = "Note" }

[[resource]]
name = "patient"
type = "Patient"
[resource.template]
identifier = [
  { system = "https://fhir.nhs.uk/Id/nhs-number", value = "{nhs}" },
  { system = "{partner.identifier_system}/client", value = "{client_id}" },
]
name = [{ family = "{family}", text = "{age}" }]
gender = "{gender}"
birthDate = "{dob}"
generalPractitioner = [{ reference = "{gp}" }]
managingOrganization = { reference = "{partner.org}" }
address = [{ text = "NOTES" }]
"#;

/// Maps `people` with RAW_PERSON both ways (compiled, and building and checking every `Value` in full), asserts
/// the two agree byte for byte and reason for reason, and returns the quarantined rows' reasons by client id.
fn raw_person_both_ways(name: &str, people: &str) -> (Vec<String>, Vec<(String, Vec<String>)>) {
    let template = RAW_PERSON.replace("NOTES", &"{note}".repeat(33));
    let d = setup(name, &[("mappings/p1/partner.toml", PARTNER), ("mappings/p1/person.toml", &template)]);
    std::fs::write(d.0.join("person.csv"), people).unwrap();
    let cat = catalog(&d.0);
    let p = cat.partner("p1").unwrap();
    let inputs = vec![Input { kind: RecordKind::Person, path: d.0.join("person.csv") }];
    let mut outs = Vec::new();
    for reference in [false, true] {
        REFERENCE_PATH.with(|r| r.set(reference));
        let mut got = Got::default();
        run(p, &inputs, &mut got).unwrap();
        let resources: Vec<String> = got.resources.iter().map(|(_, v)| v.to_string()).collect();
        let quarantined: Vec<(String, Vec<String>)> = got
            .quarantined
            .iter()
            .map(|q| (q.key.clone().unwrap_or_default(), q.reasons.iter().map(ToString::to_string).collect()))
            .collect();
        outs.push((resources, quarantined));
    }
    REFERENCE_PATH.with(|r| r.set(false));
    assert_eq!(outs[0], outs[1], "compiled and full checks agree");
    outs.swap_remove(0)
}

/// Issue 15: with the structure checked once at load and rows checked by their values, every check on a produced
/// resource still refuses what it refused: a date FHIR cannot read, a code outside its value set, a value of the
/// wrong type, an NHS number failing Modulus 11, a reference that is not `Type/id` or points at nothing in the
/// run, an element the partnership requires left empty, a value over the length limit. A refused value is
/// refused again when it comes back (its verdict is remembered), and good rows around them still map.
#[test]
fn every_check_on_a_produced_resource_still_fires() {
    let long = "n".repeat(1000);
    let people = format!(
        "Client ID,NHS,Surname,DOB,Sex,GP,Age,Note\n\
         C01,9990000018,Brontë,1987-04-03,female,,,\n\
         C02,,Date,03/04/1987,female,,,\n\
         C03,,Code,1987-04-03,F,,,\n\
         C04,9990000017,Nhs,1987-04-03,male,,,\n\
         C05,,Url,1987-04-03,male,http://elsewhere/Practitioner/1,,\n\
         C06,,Dangling,1987-04-03,male,Practitioner/abc,,\n\
         C07,,,1987-04-03,male,,,\n\
         C08,,Type,1987-04-03,male,,42,\n\
         C09,,Long,1987-04-03,male,,,{long}\n\
         C10,,Code,1987-04-03,F,,,\n\
         C11,,Month,1987-04,other,,,\n\
         C12,,Brontë,1990-12-31,female,,,\n\
         C13,,Date,31/12/1990,female,,,\n"
    );
    let (resources, quarantined) = raw_person_both_ways("checks", &people);
    let reasons = |key: &str| {
        quarantined.iter().find(|(k, _)| k == key).map(|(_, r)| r.join("\n")).unwrap_or_else(|| panic!("{key} mapped"))
    };
    let structure = "Patient (patient): does not fit the FHIR R4 structure";
    assert!(reasons("C02").contains(structure), "{}", reasons("C02"));
    assert!(reasons("C13").contains(structure), "a new bad date is checked in full: {}", reasons("C13"));
    assert!(reasons("C03").contains("a code that is not in the element's FHIR value set"), "{}", reasons("C03"));
    assert_eq!(reasons("C10"), reasons("C03"), "a remembered verdict gives the same reasons");
    assert!(reasons("C04").contains("identifier: the NHS number fails the Modulus 11 check"), "{}", reasons("C04"));
    assert!(reasons("C05").contains("generalPractitioner.reference: not a plain relative reference"));
    assert!(
        reasons("C06")
            .contains("generalPractitioner.reference points at Practitioner/abc, which is not in this run's output"),
        "{}",
        reasons("C06")
    );
    assert!(reasons("C07").contains("name is required by the partnership's rules but is empty"), "{}", reasons("C07"));
    assert!(reasons("C08").contains("invalid type") && reasons("C08").contains(", expected"), "{}", reasons("C08"));
    assert!(reasons("C09").contains("address.text: the value is 33000 characters long"), "{}", reasons("C09"));
    let mapped: Vec<&str> = ["C01", "C11", "C12"]
        .into_iter()
        .filter(|k| !resources.iter().any(|r| r.contains(&format!("\"value\":\"{k}\""))))
        .collect();
    assert!(mapped.is_empty(), "good rows map: {mapped:?} missing");
    assert_eq!(quarantined.len(), 10, "{quarantined:?}");
}

/// Issue 15: an element FHIR does not know is refused when the mapping loads, naming the file, line and element,
/// instead of quarantining every row that fills it in.
#[test]
fn an_unknown_element_is_a_load_time_error() {
    let broken = PERSON.replace("name = [{ family = \"{family}\"", "name = [{ surname = \"{family}\"");
    let d = setup("unknown-element", &[("mappings/p1/partner.toml", PARTNER), ("mappings/p1/person.toml", &broken)]);
    let errors: Vec<String> =
        load_catalog(&d.0.join("mappings")).unwrap_err().iter().map(ToString::to_string).collect();
    assert_eq!(
        errors,
        [format!(
            "{}:28: resource[0] (patient).template: element name[0].surname is not part of FHIR R4 here; check its name and place",
            d.0.join("mappings/p1/person.toml").display()
        )]
    );
}
