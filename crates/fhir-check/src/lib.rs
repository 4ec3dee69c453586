//! The typed FHIR R4 structure check of one resource, through `fhir-model`'s generated R4B types. It owns every
//! use of those types: serde's code for them is generic, so it is compiled in the crate that names them, and
//! behind the one non-generic [`check`] that is this crate, not in the connector, where it would be compiled
//! again with every change. Messages never quote a value from the resource (it may be personal data): only
//! element paths and the kind of problem.

#![forbid(unsafe_code)]

use fhir_model::r4b::resources::Resource;
use serde_json::Value;

/// One way a resource is not FHIR R4. The message is a sentence about the resource, without its values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// The resource could not be read into the typed model (wrong type, a code outside its value set, ...).
    #[error("does not fit the FHIR R4 structure: {reason}")]
    Structure { reason: String },
    /// The typed resource could not be written back as JSON.
    #[error("could not be written back as FHIR: {reason}")]
    WriteBack { reason: String },
    /// An element the model does not know: it did not survive the round trip.
    #[error("element {path} is not part of FHIR R4 here; check its name and place")]
    UnknownElement { path: String },
}

/// Every structural problem with one resource; empty when it fits FHIR R4. The model ignores elements it does
/// not know, so the resource is also written back: anything that did not survive the round trip is not FHIR.
pub fn check(resource: &Value) -> Vec<Problem> {
    let typed: Resource = match serde_json::from_value(resource.clone()) {
        Ok(r) => r,
        Err(e) => return vec![Problem::Structure { reason: without_values(&e.to_string()) }],
    };
    let back = match serde_json::to_value(&typed) {
        Ok(v) => v,
        Err(e) => return vec![Problem::WriteBack { reason: without_values(&e.to_string()) }],
    };
    let mut problems = Vec::new();
    unknown_elements(resource, &back, String::new(), &mut problems);
    problems
}

/// serde's messages quote the offending value (`invalid type: integer \`50231\``); that value may be personal
/// data, so only the kind of problem and what was expected are kept.
fn without_values(message: &str) -> String {
    // fhir-model's code enums say `Unknown value: <code>`.
    if let Some(i) = message.find("Unknown value") {
        return format!("{}a code that is not in the element's FHIR value set", &message[..i]);
    }
    for kind in ["invalid type", "invalid value", "unknown variant", "invalid length"] {
        if let Some(rest) = message.strip_prefix(kind) {
            let expected = rest.find(", expected").map_or("", |i| &rest[i..]);
            return format!("{kind}{expected}");
        }
    }
    unquoted(message)
}

/// Drops every `"..."` and `` `...` `` span of a message: what parsers quote is the value they refused.
fn unquoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut closing: Option<char> = None;
    for c in message.chars() {
        match closing {
            Some(q) if c == q => {
                closing = None;
                out.push_str("(value left out)");
            }
            Some(_) => {}
            None if c == '"' || c == '`' => closing = Some(c),
            None => out.push(c),
        }
    }
    out
}

fn unknown_elements(original: &Value, back: &Value, path: String, out: &mut Vec<Problem>) {
    match (original, back) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                match b.get(k) {
                    Some(bv) => unknown_elements(v, bv, p, out),
                    None => out.push(Problem::UnknownElement { path: p }),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                unknown_elements(x, y, format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::{Problem, check, without_values};
    use serde_json::json;

    fn patient() -> serde_json::Value {
        json!({"resourceType": "Patient", "id": "a", "gender": "female",
            "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9990000018"}],
            "name": [{"family": "Test"}], "managingOrganization": {"reference": "Organization/x"}})
    }

    #[test]
    fn a_resource_that_fits_has_no_problems() {
        assert_eq!(check(&patient()), vec![]);
    }

    #[test]
    fn a_code_outside_its_value_set_is_named_without_the_code() {
        let mut bad = patient();
        bad["gender"] = json!("banana");
        let p = check(&bad);
        assert!(matches!(p.as_slice(), [Problem::Structure { .. }]), "{p:?}");
        let m = p[0].to_string();
        assert!(m.starts_with("does not fit the FHIR R4 structure: "), "{m}");
        assert!(m.ends_with("a code that is not in the element's FHIR value set"), "{m}");
        assert!(!m.contains("banana"), "never echo the value: {m}");
    }

    #[test]
    fn a_wrong_type_keeps_what_was_expected_but_not_the_value() {
        let mut bad = patient();
        bad["name"][0]["family"] = json!(50231);
        let m = check(&bad)[0].to_string();
        assert!(m.starts_with("does not fit the FHIR R4 structure: invalid type"), "{m}");
        assert!(m.contains(", expected"), "{m}");
        assert!(!m.contains("50231"), "never echo the value: {m}");
    }

    #[test]
    fn unknown_elements_are_named_by_their_path() {
        let mut bad = patient();
        bad["name"][0]["surname"] = json!("x");
        bad["favouriteColour"] = json!("x");
        let mut p: Vec<String> = check(&bad).iter().map(ToString::to_string).collect();
        p.sort(); // the order of an object's members depends on serde_json's features, not on this crate
        assert_eq!(
            p,
            [
                "element favouriteColour is not part of FHIR R4 here; check its name and place",
                "element name[0].surname is not part of FHIR R4 here; check its name and place",
            ],
        );
    }

    #[test]
    fn parser_messages_lose_what_they_quote() {
        let m = without_values("input contains invalid characters: \"Brontë 3/4/1987\" at `birthDate`");
        assert!(!m.contains("Bront") && !m.contains("1987") && !m.contains("birthDate"), "{m}");
        assert!(m.starts_with("input contains invalid characters"), "{m}");
    }
}
