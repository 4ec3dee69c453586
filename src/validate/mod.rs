//! Validation of produced resources: the typed FHIR R4 structure (through the `fhir-check` crate, which owns
//! `fhir-model`'s generated types) and the partnership's own rules (NHS numbers, plain relative references,
//! elements every resource needs).

pub mod nhs;

use serde_json::Value;

pub const NHS_SYSTEM: &str = "https://fhir.nhs.uk/Id/nhs-number";

/// Every problem with one resource, as sentences; empty when it is good.
pub fn resource(resource_type: &str, resource: &Value) -> Vec<String> {
    let mut problems = structure(resource);
    rules(resource_type, resource, &mut problems);
    overlong(resource, &mut String::new(), &mut problems);
    problems
}

/// No value may be longer than a spreadsheet cell, however it was put together (joined columns, templates).
fn overlong(v: &Value, path: &mut String, problems: &mut Vec<String>) {
    use crate::ingest::limits::MAX_VALUE_CHARS;
    match v {
        Value::String(s) if s.len() > MAX_VALUE_CHARS && s.chars().count() > MAX_VALUE_CHARS => problems.push(format!(
            "{path}: the value is {} characters long, over the limit of {MAX_VALUE_CHARS} for one value; shorten it at the source",
            s.chars().count()
        )),
        Value::Object(m) => {
            for (k, child) in m {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k);
                overlong(child, path, problems);
                path.truncate(len);
            }
        }
        Value::Array(a) => {
            for child in a {
                overlong(child, path, problems);
            }
        }
        _ => {}
    }
}

/// The typed FHIR R4 structure, checked in the `fhir-check` crate: fhir-model's serde code is compiled there,
/// once, not with every change to the connector.
fn structure(resource: &Value) -> Vec<String> {
    fhir_check::check(resource).iter().map(ToString::to_string).collect()
}

fn rules(resource_type: &str, resource: &Value, problems: &mut Vec<String>) {
    if let Some(ids) = resource.get("identifier").and_then(Value::as_array) {
        for id in ids {
            if id.get("system").and_then(Value::as_str) == Some(NHS_SYSTEM) {
                let ok = id.get("value").and_then(Value::as_str).is_some_and(nhs::is_valid);
                if !ok {
                    problems.push("identifier: the NHS number fails the Modulus 11 check".into());
                }
            }
        }
    }
    let needs: &[&str] = match resource_type {
        "Patient" => &["identifier", "name", "managingOrganization"],
        "RelatedPerson" => &["patient"],
        "ServiceRequest" | "Goal" | "CarePlan" | "Observation" => &["subject"],
        "Encounter" => &["subject", "class"],
        "EpisodeOfCare" => &["patient", "managingOrganization"],
        "QuestionnaireResponse" => &["subject", "questionnaire"],
        "Consent" => &["patient"],
        _ => &[],
    };
    for el in needs {
        if resource.get(*el).is_none() {
            problems.push(format!(
                "{el} is required by the partnership's rules but is empty; check the fields it comes from"
            ));
        }
    }
    each_reference(resource, &mut |path, reference| {
        if !is_plain_reference(reference) {
            problems
                .push(format!("{path}: not a plain relative reference (Type/id); check the template that builds it"));
        }
    });
}

/// A plain relative reference: `Type/id`, the type capitalised, the id without a slash.
pub fn is_plain_reference(reference: &str) -> bool {
    reference.split_once('/').is_some_and(|(t, id)| {
        t.chars().next().is_some_and(|c| c.is_ascii_uppercase()) && !id.is_empty() && !id.contains('/')
    })
}

/// Calls `f(path, reference)` for every `reference` string in a resource.
pub fn each_reference(value: &Value, f: &mut dyn FnMut(&str, &str)) {
    fn walk(v: &Value, path: &mut String, f: &mut dyn FnMut(&str, &str)) {
        match v {
            Value::Object(m) => {
                for (k, child) in m {
                    let len = path.len();
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(k);
                    if k == "reference" {
                        if let Value::String(r) = child {
                            f(path, r);
                        }
                    } else {
                        walk(child, path, f);
                    }
                    path.truncate(len);
                }
            }
            Value::Array(a) => {
                for child in a {
                    walk(child, path, f);
                }
            }
            _ => {}
        }
    }
    walk(value, &mut String::new(), f);
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn typed_structure_and_unknown_elements() {
        let good = json!({"resourceType": "Patient", "id": "a", "gender": "female",
            "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9990000018"}],
            "name": [{"family": "Test"}], "managingOrganization": {"reference": "Organization/x"}});
        assert!(super::resource("Patient", &good).is_empty(), "{:?}", super::resource("Patient", &good));
        let mut bad = good.clone();
        bad["gender"] = json!("banana");
        let p = super::resource("Patient", &bad);
        assert!(p[0].contains("FHIR R4 structure") && p[0].contains("not in the element's FHIR value set"), "{p:?}");
        assert!(!p[0].contains("banana"), "never echo the value: {p:?}");
        let mut bad = good.clone();
        bad["name"][0]["surname"] = json!("x");
        assert!(super::resource("Patient", &bad).iter().any(|p| p.contains("name[0].surname")));
        let mut bad = good;
        bad["identifier"][0]["value"] = json!("9990000017");
        bad["managingOrganization"]["reference"] = json!("http://elsewhere/Organization/x");
        let p = super::resource("Patient", &bad);
        assert!(p.iter().any(|p| p.contains("Modulus 11")) && p.iter().any(|p| p.contains("relative")), "{p:?}");
        assert!(!p.iter().any(|p| p.contains("elsewhere")), "references are not echoed: {p:?}");
    }

    /// Issue 12, item 9: however a value was put together (joined columns, a template), none is longer than a
    /// spreadsheet cell; the problem names the element, never the value.
    #[test]
    fn no_value_longer_than_the_field_limit() {
        let long = "Q".repeat(crate::ingest::limits::MAX_VALUE_CHARS + 1);
        let r = json!({"resourceType": "Patient", "id": "a", "managingOrganization": {"reference": "Organization/x"},
            "address": [{"line": ["1 High St", long]}]});
        let p = super::resource("Patient", &r);
        assert!(p.iter().any(|p| p.starts_with("address.line: the value is 32768 characters long")), "{p:?}");
        assert!(p.iter().all(|p| !p.contains("QQQQ")), "{p:?}");
    }
}
