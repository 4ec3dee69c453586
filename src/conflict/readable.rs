//! A FHIR element as a person reads it: "Mobile phone: 07700 900678", a name as "Alex Turner", an address as
//! its lines, dates as dates, codings by their display with the code in brackets, identifiers by the name of
//! their system. It knows the element kinds the mappings produce (`mappings/`) and falls back to compact JSON
//! for anything else, so nothing a destination adds is hidden. Used by the conflict views (terminal and page);
//! the text it returns is not escaped.

use chrono::{DateTime, NaiveDate};
use serde_json::{Map, Value};

use crate::model::fhir::NHS_NUMBER_SYSTEM;

/// The ODS organisation code system (an Organization's identifier).
const ODS_CODE_SYSTEM: &str = "https://fhir.nhs.uk/Id/ods-organization-code";

/// One entry of an element as a person reads it: a label ("Mobile phone") and its value, on one or more
/// lines (an address).
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub label: String,
    pub lines: Vec<String>,
    /// The entry as stored: two entries that read the same can still differ (`07700900678` and
    /// `07700 900678` both read `07700 900678`).
    raw: Value,
}

impl Item {
    /// "Mobile phone: 07700 900678"; the lines of an address joined with ", ".
    pub fn one_line(&self) -> String {
        format!("{}: {}", self.label, self.lines.join(", "))
    }
}

/// What one side did to one entry of an element, relative to the version last sent.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Added(Item),
    Removed(Item),
    Changed { label: String, was: Vec<String>, now: Vec<String> },
}

impl Change {
    /// "Mobile phone: 07700 900678 → 07700 900679", "Email: a@example.com (removed)".
    pub fn one_line(&self) -> String {
        match self {
            Change::Added(i) => format!("{} (added)", i.one_line()),
            Change::Removed(i) => format!("{} (removed)", i.one_line()),
            Change::Changed { label, was, now } => format!("{label}: {} → {}", was.join(", "), now.join(", ")),
        }
    }
}

/// An element's name in words: `telecom` -> "Phone and email", `startDate` -> "Start date".
pub fn element_words(name: &str) -> String {
    let known = match name {
        "telecom" => "Phone and email",
        "birthDate" => "Date of birth",
        "identifier" => "Identifiers",
        "meta" => "Labels",
        "managingOrganization" => "Managing organisation",
        "valueInteger" | "valueQuantity" | "valueString" | "valueCodeableConcept" => "Value",
        "effectiveDateTime" => "Date",
        _ => "",
    };
    if !known.is_empty() {
        return known.to_string();
    }
    let mut out = String::new();
    for ch in name.chars() {
        if ch.is_uppercase() && !out.is_empty() {
            out.push(' ');
            out.extend(ch.to_lowercase());
        } else {
            out.push(ch);
        }
    }
    capitalised(&out)
}

/// The text with its first letter in upper case.
fn capitalised(s: &str) -> String {
    let mut chars = s.chars();
    chars.next().map(|c| c.to_uppercase().chain(chars).collect()).unwrap_or_default()
}

/// Reads one entry of a list a person tells apart by labels: its label and its lines.
type Entry = fn(&Map<String, Value>) -> (String, Vec<String>);

/// The entries of an element, labelled. Lists whose entries a person tells apart by a label (telephone
/// numbers, names, addresses, identifiers) give one entry each; anything else is one entry.
pub fn items(element: &str, value: &Value) -> Vec<Item> {
    let entry: Option<Entry> = match element {
        "telecom" => Some(contact_point),
        "name" => Some(human_name),
        "address" => Some(address),
        "identifier" => Some(identifier),
        _ => None,
    };
    let (Some(entry), true) = (entry, matches!(value, Value::Array(_) | Value::Object(_))) else {
        return meta_items(element, value).unwrap_or_else(|| {
            vec![Item { label: element_words(element), lines: value_lines(value), raw: value.clone() }]
        });
    };
    let entries: Vec<&Value> = match value {
        Value::Array(a) => a.iter().collect(),
        v => vec![v],
    };
    let mut out: Vec<Item> = Vec::new();
    for v in entries {
        let (label, lines) = match v.as_object() {
            Some(o) => entry(o),
            None => (element_words(element), value_lines(v)),
        };
        // A second "Mobile phone" is "Mobile phone (2)", so that each entry keeps a label of its own.
        let same = out.iter().filter(|i| i.label == label || i.label.starts_with(&format!("{label} ("))).count();
        let label = if same == 0 { label } else { format!("{label} ({})", same + 1) };
        out.push(Item { label, lines, raw: v.clone() });
    }
    out
}

/// A whole resource as a person reads it: "Label: value" for each entry of each element ([`items`]), the
/// elements in name order, leaving out those named in `omit` and entries with nothing to read. The text is
/// not escaped. (The HL7 v2 transport writes it as a plain-text document.)
pub fn lines(resource: &Value, omit: &[&str]) -> Vec<String> {
    let Some(elements) = resource.as_object() else { return Vec::new() };
    elements
        .iter()
        .filter(|(name, _)| !omit.contains(&name.as_str()))
        .flat_map(|(name, value)| items(name, value))
        .filter(|i| i.lines.iter().any(|l| !l.trim().is_empty()))
        .map(|i| i.one_line())
        .collect()
}

/// `meta` as security labels and tags; `None` for any other element.
fn meta_items(element: &str, value: &Value) -> Option<Vec<Item>> {
    let meta = value.as_object().filter(|_| element == "meta")?;
    let mut out = Vec::new();
    for (key, v) in meta {
        let label = match key.as_str() {
            "security" => "Security labels".to_string(),
            "tag" => "Tags".to_string(),
            "profile" => "Profiles".to_string(),
            other => element_words(other),
        };
        out.push(Item { label, lines: value_lines(v), raw: v.clone() });
    }
    Some(out)
}

/// How each side's version differs from the version last sent, entry by entry (`None`: the element is absent).
pub fn changes(element: &str, before: Option<&Value>, after: Option<&Value>) -> Vec<Change> {
    let before = before.map(|v| items(element, v)).unwrap_or_default();
    let after = after.map(|v| items(element, v)).unwrap_or_default();
    let mut out = Vec::new();
    for was in &before {
        match after.iter().find(|i| i.label == was.label) {
            None => out.push(Change::Removed(was.clone())),
            Some(now) if now.raw != was.raw => out.push(changed(was, now)),
            Some(_) => {}
        }
    }
    for now in after.iter().filter(|i| !before.iter().any(|b| b.label == i.label)) {
        out.push(Change::Added(now.clone()));
    }
    out
}

/// A change of one entry; when both read the same, they are shown as stored so that the change is visible.
fn changed(was: &Item, now: &Item) -> Change {
    let (was_lines, now_lines) = if was.lines == now.lines {
        (vec![super::canonical(&was.raw)], vec![super::canonical(&now.raw)])
    } else {
        (was.lines.clone(), now.lines.clone())
    };
    Change::Changed { label: was.label.clone(), was: was_lines, now: now_lines }
}

/// A value as lines of text: each entry of a list on its own line, data types in words.
pub fn value_lines(v: &Value) -> Vec<String> {
    match v {
        Value::Null => vec![],
        Value::String(s) => vec![string(s)],
        Value::Bool(b) => vec![if *b { "yes" } else { "no" }.to_string()],
        Value::Number(n) => vec![n.to_string()],
        Value::Array(a) => a.iter().flat_map(value_lines).collect(),
        Value::Object(o) => vec![object(o)],
    }
}

/// A string as it reads: a FHIR date or dateTime as a date, anything else as it is.
fn string(s: &str) -> String {
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return d.format("%-d %b %Y").to_string();
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        let offset = t.format("%:z").to_string();
        let zone = if offset == "+00:00" { "UTC".to_string() } else { format!("UTC{offset}") };
        return format!("{} ({zone})", t.format("%-d %b %Y, %H:%M"));
    }
    s.to_string()
}

fn text<'a>(o: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    o.get(key).and_then(Value::as_str).filter(|s| !s.trim().is_empty())
}

/// A complex value by its shape: a CodeableConcept, Coding, Reference, Quantity or Period in words, else
/// compact JSON.
fn object(o: &Map<String, Value>) -> String {
    let only = |keys: &[&str]| o.keys().all(|k| keys.contains(&k.as_str()));
    if o.contains_key("coding") || (only(&["text"]) && text(o, "text").is_some()) {
        return concept(o);
    }
    if only(&["system", "code", "display", "version", "userSelected"])
        && (o.contains_key("code") || o.contains_key("display"))
    {
        return coding(o);
    }
    if only(&["reference", "display", "type", "identifier"])
        && (o.contains_key("reference") || o.contains_key("display"))
    {
        return text(o, "display")
            .or_else(|| text(o, "reference"))
            .map_or_else(|| super::canonical(&Value::Object(o.clone())), String::from);
    }
    if only(&["value", "unit", "system", "code", "comparator"]) && o.contains_key("value") {
        let value = o.get("value").map(value_lines).unwrap_or_default().join("");
        let unit = text(o, "unit").or_else(|| text(o, "code")).unwrap_or_default();
        return format!("{value} {unit}").trim_end().to_string();
    }
    if only(&["start", "end"]) && !o.is_empty() {
        let at = |k: &str| text(o, k).map(string);
        return match (at("start"), at("end")) {
            (Some(s), Some(e)) => format!("{s} to {e}"),
            (Some(s), None) => format!("from {s}"),
            (None, Some(e)) => format!("until {e}"),
            (None, None) => String::new(),
        };
    }
    super::canonical(&Value::Object(o.clone()))
}

/// "Welcoming conversation (welcoming-conversation)": the display, the code in brackets.
fn coding(o: &Map<String, Value>) -> String {
    match (text(o, "display"), text(o, "code")) {
        (Some(d), Some(c)) if d != c => format!("{d} ({c})"),
        (Some(d), _) => d.to_string(),
        (None, Some(c)) => c.to_string(),
        (None, None) => super::canonical(&Value::Object(o.clone())),
    }
}

/// A CodeableConcept by its codings (see [`coding`]), or its text when it has none.
fn concept(o: &Map<String, Value>) -> String {
    let codings: Vec<String> = o
        .get("coding")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object)
        .map(coding)
        .collect();
    if codings.is_empty() { text(o, "text").unwrap_or_default().to_string() } else { codings.join("; ") }
}

/// "Mobile phone" / "07700 900678".
fn contact_point(o: &Map<String, Value>) -> (String, Vec<String>) {
    let system = match text(o, "system") {
        Some("phone") | None => "phone",
        Some("email") => "email",
        Some("sms") => "SMS",
        Some("url") => "web address",
        Some("fax") => "fax",
        Some("pager") => "pager",
        Some(_) => "contact",
    };
    let label = match text(o, "use") {
        Some("temp") => format!("Temporary {system}"),
        Some(u) => format!("{} {system}", capitalised(u)),
        None => element_words(system),
    };
    let value = text(o, "value").unwrap_or_default();
    let value = if system == "phone" || system == "SMS" { phone(value) } else { value.to_string() };
    (label, vec![value])
}

/// A UK mobile number in its usual groups (`07700900678` -> `07700 900678`); other numbers as written, since
/// landline area codes differ in length.
fn phone(value: &str) -> String {
    let digits: String = value.chars().filter(|c| !c.is_whitespace()).collect();
    if digits.len() == 11 && digits.starts_with("07") && digits.chars().all(|c| c.is_ascii_digit()) {
        format!("{} {}", &digits[..5], &digits[5..])
    } else {
        value.to_string()
    }
}

/// "Name" / "Alex Turner" (prefix, given names, family name, suffix).
fn human_name(o: &Map<String, Value>) -> (String, Vec<String>) {
    let label = match text(o, "use") {
        None | Some("official") | Some("usual") => "Name".to_string(),
        Some("nickname") => "Nickname".to_string(),
        Some("temp") => "Temporary name".to_string(),
        Some(u) => format!("{} name", capitalised(u)),
    };
    let parts = |key: &str| -> Vec<String> {
        match o.get(key) {
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).map(String::from).collect(),
            Some(Value::String(s)) => vec![s.clone()],
            _ => vec![],
        }
    };
    let words: Vec<String> = [parts("prefix"), parts("given"), parts("family"), parts("suffix")]
        .concat()
        .into_iter()
        .filter(|w| !w.trim().is_empty())
        .collect();
    let name = if words.is_empty() { text(o, "text").unwrap_or_default().to_string() } else { words.join(" ") };
    (label, vec![name])
}

/// "Home address" / its lines, town, district, county, postcode and country, each on a line.
fn address(o: &Map<String, Value>) -> (String, Vec<String>) {
    let label = match text(o, "use") {
        None => "Address".to_string(),
        Some("temp") => "Temporary address".to_string(),
        Some(u) => format!("{} address", capitalised(u)),
    };
    let mut lines: Vec<String> = o
        .get("line")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(String::from)
        .collect();
    lines.extend(
        ["city", "district", "state", "postalCode", "country"].iter().filter_map(|k| text(o, k)).map(String::from),
    );
    if lines.is_empty()
        && let Some(t) = text(o, "text")
    {
        lines = t.lines().map(String::from).collect();
    }
    (label, lines)
}

/// "NHS number" / "999 620 0191 (Number present but not traced)": named by its system, with the verification
/// status (or any coded extension) after it.
fn identifier(o: &Map<String, Value>) -> (String, Vec<String>) {
    let system = text(o, "system").unwrap_or_default();
    let mut value = text(o, "value").unwrap_or_default().to_string();
    if system == NHS_NUMBER_SYSTEM && value.len() == 10 && value.chars().all(|c| c.is_ascii_digit()) {
        value = format!("{} {} {}", &value[..3], &value[3..6], &value[6..]);
    }
    let notes: Vec<String> = o
        .get("extension")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|x| x.get("valueCodeableConcept").and_then(Value::as_object))
        .map(concept)
        .filter(|t| !t.is_empty())
        .collect();
    if !notes.is_empty() {
        value = format!("{value} ({})", notes.join("; "));
    }
    (identifier_label(system), vec![value])
}

/// An identifier system's name: "NHS number", "ODS code", or the last part of a partner's system
/// (`https://id.example/hub/client` -> "Client ID").
pub fn identifier_label(system: &str) -> String {
    match system {
        NHS_NUMBER_SYSTEM => "NHS number".to_string(),
        ODS_CODE_SYSTEM => "ODS code".to_string(),
        "" => "Identifier".to_string(),
        s => match s.rsplit('/').find(|p| !p.is_empty()) {
            Some(last) if s.starts_with("http") => format!("{} ID", element_words(&last.replace(['-', '_'], " "))),
            _ => s.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn lines(element: &str, v: Value) -> Vec<String> {
        items(element, &v).iter().map(Item::one_line).collect()
    }

    #[test]
    fn telecom_names_each_number_by_its_use() {
        let t = json!([
            {"system": "phone", "value": "07700900678", "use": "mobile"},
            {"system": "phone", "value": "01904 000001", "use": "home"},
            {"system": "email", "value": "alex.t@example.com", "use": "home"},
            {"system": "phone", "value": "07700 900111", "use": "mobile"}
        ]);
        assert_eq!(
            lines("telecom", t),
            [
                "Mobile phone: 07700 900678",
                "Home phone: 01904 000001",
                "Home email: alex.t@example.com",
                "Mobile phone (2): 07700 900111"
            ]
        );
    }

    #[test]
    fn a_changed_number_reads_old_arrow_new_and_removals_are_named() {
        let was = json!([{"system": "phone", "value": "07700900678", "use": "mobile"},
                         {"system": "email", "value": "alex.t@example.com", "use": "home"}]);
        let now = json!([{"system": "phone", "value": "07700 900679", "use": "mobile"},
                         {"system": "phone", "value": "01904 000002"}]);
        let said: Vec<String> = changes("telecom", Some(&was), Some(&now)).iter().map(Change::one_line).collect();
        assert_eq!(
            said,
            [
                "Mobile phone: 07700 900678 → 07700 900679",
                "Home email: alex.t@example.com (removed)",
                "Phone: 01904 000002 (added)"
            ]
        );
        assert!(changes("telecom", Some(&was), Some(&was)).is_empty());
        // A whole element added or removed.
        assert_eq!(changes("gender", None, Some(&json!("female")))[0].one_line(), "Gender: female (added)");
    }

    #[test]
    fn entries_that_read_the_same_but_differ_show_as_stored() {
        let was = json!([{"system": "phone", "value": "07700900678", "use": "mobile"}]);
        let now = json!([{"system": "phone", "value": "07700 900678", "use": "mobile"}]);
        assert_eq!(
            changes("telecom", Some(&was), Some(&now))[0].one_line(),
            r#"Mobile phone: {"system":"phone","use":"mobile","value":"07700900678"} → {"system":"phone","use":"mobile","value":"07700 900678"}"#
        );
    }

    #[test]
    fn names_addresses_and_identifiers_read_as_people_write_them() {
        assert_eq!(
            lines(
                "name",
                json!([{"use": "official", "family": "Turner", "given": ["Alex", "J"], "prefix": ["Mx"]},
                                 {"use": "maiden", "family": "Smith"}])
            ),
            ["Name: Mx Alex J Turner", "Maiden name: Smith"]
        );
        let home = items(
            "address",
            &json!([{"use": "home", "line": ["9 Hull Road", "Flat 2"], "city": "York", "postalCode": "YO10 3JL"}]),
        );
        assert_eq!(home[0].label, "Home address");
        assert_eq!(home[0].lines, ["9 Hull Road", "Flat 2", "York", "YO10 3JL"]);
        let ids = json!([
            {"system": NHS_NUMBER_SYSTEM, "value": "9996200191", "extension": [{"url": "x", "valueCodeableConcept":
                {"coding": [{"system": "s", "code": "02", "display": "Number present but not traced"}]}}]},
            {"system": "https://id.york-connector.example/hub/client", "value": "HUB-1008"},
            {"system": "https://id.york-connector.example/hub/hardest-thing", "value": "P-1-1"},
            {"system": "urn:oid:1.2.3", "value": "x"}
        ]);
        assert_eq!(
            lines("identifier", ids),
            [
                "NHS number: 999 620 0191 (Number present but not traced (02))",
                "Client ID: HUB-1008",
                "Hardest thing ID: P-1-1",
                "urn:oid:1.2.3: x"
            ]
        );
    }

    #[test]
    fn a_resource_reads_as_labelled_lines_in_name_order() {
        let goal = json!({"resourceType": "Goal", "id": "g1", "lifecycleStatus": "active", "note": [],
            "description": {"text": "Getting out of the house"}, "startDate": "2023-03-24",
            "identifier": [{"system": "https://id.york-connector.example/hub/hardest-thing", "value": "GP-401-1"}]});
        assert_eq!(
            super::lines(&goal, &["resourceType", "id"]),
            [
                "Description: Getting out of the house",
                "Hardest thing ID: GP-401-1",
                "Lifecycle status: active",
                "Start date: 24 Mar 2023"
            ]
        );
    }

    #[test]
    fn dates_codings_and_other_data_types_in_words() {
        assert_eq!(lines("birthDate", json!("1999-10-05")), ["Date of birth: 5 Oct 1999"]);
        assert_eq!(
            lines("authoredOn", json!("2025-06-02T14:30:00+01:00")),
            ["Authored on: 2 Jun 2025, 14:30 (UTC+01:00)"]
        );
        assert_eq!(lines("period", json!({"start": "2025-01-02T09:00:00Z"})), ["Period: from 2 Jan 2025, 09:00 (UTC)"]);
        let class = json!({"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB", "display": "ambulatory"});
        assert_eq!(lines("class", class), ["Class: ambulatory (AMB)"]);
        let types =
            json!([{"coding": [{"system": "s", "code": "one-to-one", "display": "1-2-1"}]}, {"text": "Drop-in"}]);
        assert_eq!(items("type", &types)[0].lines, ["1-2-1 (one-to-one)", "Drop-in"]);
        assert_eq!(lines("subject", json!({"reference": "Patient/p1"})), ["Subject: Patient/p1"]);
        assert_eq!(
            lines("length", json!({"value": 45, "unit": "min", "system": "u", "code": "min"})),
            ["Length: 45 min"]
        );
        assert_eq!(lines("active", json!(true)), ["Active: yes"]);
        assert_eq!(lines("status", json!("finished")), ["Status: finished"]);
        let meta = json!({"security": [{"system": "s", "code": "R", "display": "restricted"}]});
        assert_eq!(lines("meta", meta), ["Security labels: restricted (R)"]);
        // Anything else: compact JSON, keys sorted.
        assert_eq!(
            lines("provision", json!({"type": "permit", "actor": [1]})),
            [r#"Provision: {"actor":[1],"type":"permit"}"#]
        );
    }
}
