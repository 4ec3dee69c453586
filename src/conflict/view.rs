//! A conflict as an admin deciding it reads it, whichever way it is shown (`conflicts show` on a terminal,
//! `conflicts report` as a page): whose record it is (the partner, its own reference for the record, the
//! record kind in words), each differing element in words (see [`super::readable`]) with what each side
//! changed since the version last sent, and the commands that decide it.

use std::collections::BTreeSet;

use serde_json::Value;

use super::readable::{self, Change, Item};
use crate::model::fhir::{MAPPING_SOURCE_PREFIX, NHS_NUMBER_SYSTEM};
use crate::model::{ConflictStatus, Keep, RecordKind};
use crate::store::ConflictRecord;

/// One element of the resource as the three versions hold it. A value is `None` when that version lacks the
/// element or the version itself is not kept.
#[derive(Debug, Clone, PartialEq)]
pub struct ElementRow {
    pub name: String,
    pub base: Option<Value>,
    pub source: Option<Value>,
    pub remote: Option<Value>,
    /// Named in the conflict (changed on both sides to different values, or on different sides where the
    /// type is not merged).
    pub conflict: bool,
}

/// A version as stored; `None` when it is not kept or not JSON.
fn stored(text: Option<&str>) -> Option<Value> {
    text.and_then(|t| serde_json::from_str::<Value>(t).ok())
}

/// The versions stored for a conflict: last sent, the partner's new one, the destination's current one.
fn versions(c: &ConflictRecord) -> [Option<Value>; 3] {
    [stored(c.base_json.as_deref()), stored(c.source_json.as_deref()), stored(c.remote_json.as_deref())]
}

/// The elements whose value is not the same in every version kept: the conflicting ones first, then by name.
pub fn element_rows(c: &ConflictRecord) -> Vec<ElementRow> {
    let docs = versions(c).map(|d| d.map(|v| super::comparable(&v)));
    let names: BTreeSet<&String> = docs
        .iter()
        .flatten()
        .filter_map(Value::as_object)
        .flat_map(|o| o.keys())
        .chain(c.elements.iter())
        .filter(|k| !super::NOT_ELEMENTS.contains(&k.as_str()))
        .collect();
    let mut rows: Vec<ElementRow> = names
        .into_iter()
        .filter_map(|name| {
            let present: Vec<Option<&Value>> = docs.iter().flatten().map(|d| d.get(name)).collect();
            let conflict = c.elements.contains(name);
            let differ = present.windows(2).any(|w| w[0] != w[1]);
            if !differ && !conflict {
                return None;
            }
            let value = |i: usize| docs[i].as_ref().and_then(|d| d.get(name)).cloned();
            Some(ElementRow { name: name.clone(), base: value(0), source: value(1), remote: value(2), conflict })
        })
        .collect();
    rows.sort_by(|a, b| b.conflict.cmp(&a.conflict).then_with(|| a.name.cmp(&b.name)));
    rows
}

/// Which sides changed an element since the version last sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sides {
    Both,
    Partner,
    Destination,
    /// The version last sent is not kept: every difference counts as changed on both sides.
    NoBase,
}

/// One side's version of an element, as shown.
#[derive(Debug, Clone, PartialEq)]
pub enum SideView {
    /// That version is not kept (a resolved conflict, or a destination that no longer has it).
    NotKept,
    /// The same as the version last sent.
    Unchanged,
    /// What changed since the version last sent.
    Changed(Vec<Change>),
    /// The whole value (no version last sent to compare with); empty when the element is absent.
    Holds(Vec<Item>),
}

/// One differing element, in words.
#[derive(Debug, Clone, PartialEq)]
pub struct RowView {
    /// The FHIR element (`telecom`).
    pub element: String,
    /// In words ("Phone and email").
    pub words: String,
    pub conflict: bool,
    pub sides: Sides,
    /// The version last sent: [`SideView::Holds`] or [`SideView::NotKept`].
    pub last_sent: SideView,
    pub partner: SideView,
    pub destination: SideView,
}

/// The partner's own reference for the record: its identifier in the partner's system.
#[derive(Debug, Clone, PartialEq)]
pub struct PartnerRef {
    /// "HUB-1008".
    pub value: String,
    /// What it is: "hub client ID".
    pub what: String,
}

/// A command that decides the conflict and what it does.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolution {
    pub command: String,
    pub effect: String,
}

/// A conflict as it is shown.
#[derive(Debug, Clone)]
pub struct ConflictView<'a> {
    pub record: &'a ConflictRecord,
    /// The partner's id ("hub"), or "the partner" when the stored origin does not name one.
    pub partner: String,
    /// The record kind and resource type in words: "Person (Patient)", "Contact (Encounter)", "Goal".
    pub kind: String,
    pub reference: Option<PartnerRef>,
    /// Whether the version last sent is kept.
    pub base_kept: bool,
    pub rows: Vec<RowView>,
}

impl<'a> ConflictView<'a> {
    pub fn new(c: &'a ConflictRecord) -> Self {
        let partner = c.origin.as_ref().and_then(crate::model::Provenance::partner).map(String::from);
        let docs = versions(c);
        // The partner's version names the mapping and the partner's reference best; the others stand in.
        let ordered = [&docs[1], &docs[0], &docs[2]];
        let kind = ordered.iter().find_map(|d| d.as_ref().and_then(record_kind));
        let reference = ordered.iter().find_map(|d| d.as_ref().and_then(|d| partner_reference(d, partner.as_deref())));
        let base_kept = docs[0].is_some();
        let kept = docs.map(|d| d.is_some());
        let rows = element_rows(c).into_iter().map(|r| row_view(r, kept)).collect();
        ConflictView {
            record: c,
            partner: partner.unwrap_or_else(|| "the partner".into()),
            kind: kind_words(kind, &c.resource_type),
            reference,
            base_kept,
            rows,
        }
    }

    /// "Conflict 7: Person (Patient) HUB-1008 from hub, at cito".
    pub fn title(&self) -> String {
        let c = self.record;
        let reference = self.reference.as_ref().map(|r| format!(" {}", r.value)).unwrap_or_default();
        format!("Conflict {}: {}{reference} from {}, at {}", c.id, self.kind, self.partner, c.destination)
    }

    /// Which sides changed an element, in words.
    pub fn sides_words(&self, sides: Sides) -> String {
        match sides {
            Sides::Both | Sides::NoBase => "changed on both sides".into(),
            Sides::Partner => format!("changed by {} only", self.partner),
            Sides::Destination => format!("changed on {} only", self.record.destination),
        }
    }

    /// The commands that decide an open conflict (none once it is resolved). `program` is how the admin runs
    /// the connector (`connector`, or with `--config FILE`).
    pub fn resolutions(&self, program: &str) -> Vec<Resolution> {
        if self.record.status != ConflictStatus::Open {
            return vec![];
        }
        let (partner, dest) = (&self.partner, &self.record.destination);
        Keep::ALL
            .into_iter()
            .map(|keep| Resolution {
                command: format!("{program} conflicts resolve {} --keep {}", self.record.id, keep.as_str()),
                effect: match keep {
                    Keep::Source => {
                        format!("Write {partner}'s version to {dest} (the sharing rules are checked again first)")
                    }
                    Keep::Remote => format!("Keep {dest}'s version as it is; {partner}'s is not proposed again"),
                },
            })
            .collect()
    }
}

fn row_view(r: ElementRow, kept: [bool; 3]) -> RowView {
    let [base_kept, source_kept, remote_kept] = kept;
    let side = |kept: bool, value: Option<&Value>| match (kept, base_kept) {
        (false, _) => SideView::NotKept,
        (true, false) => SideView::Holds(value.map(|v| readable::items(&r.name, v)).unwrap_or_default()),
        (true, true) if value == r.base.as_ref() => SideView::Unchanged,
        (true, true) => SideView::Changed(readable::changes(&r.name, r.base.as_ref(), value)),
    };
    let partner = side(source_kept, r.source.as_ref());
    let destination = side(remote_kept, r.remote.as_ref());
    let sides = match (&partner, &destination) {
        _ if !base_kept => Sides::NoBase,
        (SideView::Changed(_), SideView::Changed(_)) => Sides::Both,
        (SideView::Changed(_), _) => Sides::Partner,
        (_, SideView::Changed(_)) => Sides::Destination,
        _ => Sides::Both,
    };
    let last_sent = if base_kept {
        SideView::Holds(r.base.as_ref().map(|v| readable::items(&r.name, v)).unwrap_or_default())
    } else {
        SideView::NotKept
    };
    RowView {
        words: readable::element_words(&r.name),
        element: r.name,
        conflict: r.conflict,
        sides,
        last_sent,
        partner,
        destination,
    }
}

/// The record kind from the mapping named in `meta.source` (`urn:york-connector:mapping:hub/person@1.0.0`).
fn record_kind(resource: &Value) -> Option<RecordKind> {
    let source = resource.pointer("/meta/source")?.as_str()?.strip_prefix(MAPPING_SOURCE_PREFIX)?;
    let (_partner, rest) = source.split_once('/')?;
    RecordKind::parse(rest.split('@').next()?)
}

/// "Person (Patient)"; just the type where the kind says the same ("Goal", "Consent") or is not known.
fn kind_words(kind: Option<RecordKind>, resource_type: &str) -> String {
    let Some(kind) = kind else { return resource_type.to_string() };
    let words = match kind {
        RecordKind::Person => "Person",
        RecordKind::Carer => "Carer",
        RecordKind::Referral => "Referral",
        RecordKind::Episode => "Episode",
        RecordKind::Contact => "Contact",
        RecordKind::Goals => "Goals",
        RecordKind::Reqol => "ReQoL",
        RecordKind::Consent => "Consent",
    };
    if words == resource_type || words == format!("{resource_type}s") {
        resource_type.to_string()
    } else {
        format!("{words} ({resource_type})")
    }
}

/// The partner's identifier for the record: in a system under the partner's (`.../hub/client`) where there
/// is one, else the first that is not an NHS number.
fn partner_reference(resource: &Value, partner: Option<&str>) -> Option<PartnerRef> {
    let ids: Vec<&Value> = match resource.get("identifier")? {
        Value::Array(a) => a.iter().collect(),
        one => vec![one],
    };
    let candidates: Vec<(&str, &str)> = ids
        .iter()
        .filter_map(|i| Some((i.get("system")?.as_str()?, i.get("value")?.as_str().filter(|v| !v.trim().is_empty())?)))
        .filter(|(system, _)| *system != NHS_NUMBER_SYSTEM)
        .collect();
    let under_partner = |system: &str| partner.is_some_and(|p| system.split('/').any(|part| part == p));
    let (system, value) = candidates.iter().find(|(s, _)| under_partner(s)).or_else(|| candidates.first()).copied()?;
    let label = readable::identifier_label(system);
    let what = match (partner, label.strip_suffix(" ID")) {
        (Some(p), Some(thing)) => format!("{p} {} ID", thing.to_lowercase()),
        (Some(p), None) => format!("{p} {label}"),
        (None, _) => label,
    };
    Some(PartnerRef { value: value.to_string(), what })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_record_is_named_by_kind_and_partner_reference() {
        let patient = json!({"resourceType": "Patient", "meta": {"source": "urn:york-connector:mapping:hub/person@1.0.0"},
            "identifier": [{"system": NHS_NUMBER_SYSTEM, "value": "9996200191"},
                           {"system": "https://id.york-connector.example/hub/client", "value": "HUB-1008"}]});
        assert_eq!(record_kind(&patient), Some(RecordKind::Person));
        assert_eq!(kind_words(Some(RecordKind::Person), "Patient"), "Person (Patient)");
        assert_eq!(kind_words(Some(RecordKind::Contact), "Encounter"), "Contact (Encounter)");
        assert_eq!(kind_words(Some(RecordKind::Goals), "Goal"), "Goal");
        assert_eq!(kind_words(Some(RecordKind::Goals), "CarePlan"), "Goals (CarePlan)");
        assert_eq!(kind_words(None, "Observation"), "Observation");
        assert_eq!(
            partner_reference(&patient, Some("hub")),
            Some(PartnerRef { value: "HUB-1008".into(), what: "hub client ID".into() })
        );
        // A single identifier (QuestionnaireResponse), and no partner known.
        let qr = json!({"identifier": {"system": "https://id.york-connector.example/hub/reqol", "value": "M-1"}});
        assert_eq!(partner_reference(&qr, None).map(|r| (r.value, r.what)), Some(("M-1".into(), "Reqol ID".into())));
        assert_eq!(
            partner_reference(&json!({"identifier": [{"system": NHS_NUMBER_SYSTEM, "value": "1"}]}), None),
            None
        );
    }

    #[test]
    fn rows_put_the_conflict_first_and_say_which_side_changed_what() {
        let c = fixture::conflict();
        let view = ConflictView::new(&c);
        assert_eq!(view.title(), "Conflict 7: Person (Patient) HUB-1008 from hub, at cito");
        let rows: Vec<(&str, bool, Sides)> =
            view.rows.iter().map(|r| (r.element.as_str(), r.conflict, r.sides)).collect();
        // name, birthDate, meta (server fields only) and text are the same everywhere, so they are not rows.
        assert_eq!(rows, [("telecom", true, Sides::Both), ("address", false, Sides::Destination)]);
        let SideView::Changed(partner) = &view.rows[0].partner else { panic!("{:?}", view.rows[0].partner) };
        assert_eq!(
            partner.iter().map(Change::one_line).collect::<Vec<_>>(),
            ["Mobile phone: 07700 900678 → 07700 900679"]
        );
        assert_eq!(view.rows[1].partner, SideView::Unchanged);
        assert_eq!(view.sides_words(Sides::Destination), "changed on cito only");
        let commands: Vec<String> = view.resolutions("connector").into_iter().map(|r| r.command).collect();
        assert_eq!(
            commands,
            ["connector conflicts resolve 7 --keep source", "connector conflicts resolve 7 --keep remote"]
        );
        // Resolved: nothing left to decide.
        let done = ConflictRecord { status: ConflictStatus::Resolved, ..fixture::conflict() };
        assert!(ConflictView::new(&done).resolutions("connector").is_empty());
    }

    #[test]
    fn without_the_version_last_sent_both_sides_are_shown_whole() {
        let c = ConflictRecord { base_json: None, base_version: None, ..fixture::conflict() };
        let view = ConflictView::new(&c);
        assert_eq!(view.rows.iter().map(|r| r.element.as_str()).collect::<Vec<_>>(), ["telecom", "address"]);
        assert!(view.rows.iter().all(|r| r.sides == Sides::NoBase && r.last_sent == SideView::NotKept));
        assert_eq!(view.sides_words(Sides::NoBase), "changed on both sides");
        let SideView::Holds(remote) = &view.rows[0].destination else { panic!() };
        assert_eq!(remote.iter().map(Item::one_line).collect::<Vec<_>>(), ["Mobile phone: 07700 900111"]);
    }
}

/// A conflict like the ones the Hub's fixtures give (synthetic person): the partner changed the mobile number,
/// a clinician on `cito` changed it too, dropped the email and moved the address.
#[cfg(test)]
pub(crate) mod fixture {
    use chrono::{TimeZone, Utc};
    use serde_json::{Value, json};

    use crate::store::ConflictRecord;

    pub fn patient(mobile: &str, email: bool, line: &str, version: &str) -> Value {
        let mut telecom = vec![json!({"system": "phone", "value": mobile, "use": "mobile"})];
        if email {
            telecom.push(json!({"system": "email", "value": "alex.t@example.com", "use": "home"}));
        }
        json!({
            "resourceType": "Patient", "id": "p1",
            "meta": {"versionId": version, "lastUpdated": "2025-01-01T00:00:00Z",
                     "source": "urn:york-connector:mapping:hub/person@1.0.0"},
            "text": {"status": "generated", "div": "<div>generated</div>"},
            "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9996200191"},
                           {"system": "https://id.york-connector.example/hub/client", "value": "HUB-1008"}],
            "name": [{"use": "official", "family": "Turner", "given": ["Alex"]}],
            "telecom": telecom,
            "birthDate": "1999-10-05",
            "address": [{"use": "home", "line": [line], "city": "York", "postalCode": "YO10 3JL"}]
        })
    }

    pub fn conflict() -> ConflictRecord {
        let t = Utc.with_ymd_and_hms(2025, 3, 4, 5, 6, 7).unwrap();
        ConflictRecord {
            id: 7,
            destination: "cito".into(),
            resource_type: "Patient".into(),
            resource_id: "p1".into(),
            remote_id: "p1".into(),
            origin: Some(crate::model::Provenance::decode("hub|general_health|0|1")),
            elements: vec!["telecom".into()],
            base_version: Some("3".into()),
            base_json: Some(patient("07700900678", true, "9 Hull Road", "3").to_string()),
            source_json: Some(patient("07700900679", true, "9 Hull Road", "3").to_string()),
            remote_version: Some("5".into()),
            remote_json: Some(patient("07700 900111", false, "1 Clinician Street", "5").to_string()),
            status: crate::model::ConflictStatus::Open,
            created_at: t,
            updated_at: t,
            ..Default::default()
        }
    }
}
