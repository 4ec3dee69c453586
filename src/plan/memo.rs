//! The plan memo's fingerprint, and what planning reads of a mapped resource's JSON without building it.
//!
//! Shaping (labels, the partner tag, the destination's profile: `shape.rs`) is a function of the mapped JSON,
//! its category, not-for-the-patient, the source partner, the destination's profile and the connector's code,
//! nothing else. So when all of those are as they were when the resource was last shaped for a destination,
//! the content hash is the one recorded then (`plan_memo`), and an unchanged resource costs a hash of its
//! JSON instead of a parse, a shape, a serialisation and a hash. Whether it is sent is still decided against
//! the ledger and the outbox, exactly as `Store::enqueue` decides.

use std::borrow::Cow;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::config::Profile;
use crate::mapping::Category;
use crate::model::fhir::NHS_NUMBER_SYSTEM;

/// Raise when shaping changes in a way a version or commit would not show (it is in every fingerprint).
const SHAPING: u32 = 1;

/// sha256 of the mapped JSON: the part of the fingerprint shared by every destination.
pub fn json_hash(json: &str) -> [u8; 32] {
    Sha256::digest(json.as_bytes()).into()
}

/// The fingerprint of one resource's shaping for one destination.
pub fn fingerprint(
    json_hash: &[u8; 32],
    profile: Profile,
    category: Category,
    not_for_patient: bool,
    partner: &str,
) -> String {
    let mut h = Sha256::new();
    h.update(
        format!(
            "shaping {SHAPING} {} {}\0{profile:?}\0{}\0{not_for_patient}\0{partner}\0",
            crate::build_info::VERSION,
            crate::build_info::GIT_COMMIT,
            category.as_str()
        )
        .as_bytes(),
    );
    h.update(json_hash);
    crate::store::hex(&h.finalize())
}

#[derive(Deserialize)]
struct Ref<'a> {
    #[serde(borrow, default)]
    reference: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Identifier<'a> {
    #[serde(borrow, default)]
    system: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    value: Option<Cow<'a, str>>,
}

/// The fields planning reads: the usual places of a resource's Patient, and a Patient's identifiers.
#[derive(Deserialize)]
struct Heads<'a> {
    #[serde(borrow, default)]
    subject: Option<Ref<'a>>,
    #[serde(borrow, default)]
    patient: Option<Ref<'a>>,
    #[serde(borrow, default)]
    beneficiary: Option<Ref<'a>>,
    #[serde(borrow, default)]
    identifier: Option<Vec<Identifier<'a>>>,
}

/// The Patient a mapped resource belongs to (as [`super::patient_of`] finds it), and a Patient's NHS number,
/// read from its JSON. Builds the whole value only when the usual places do not say (or do not parse as
/// expected).
pub fn heads(resource_type: &str, id: &str, json: &str) -> (Option<String>, Option<String>) {
    let Ok(h) = serde_json::from_str::<Heads<'_>>(json) else { return slow(resource_type, id, json) };
    if resource_type == "Patient" {
        let nhs = h.identifier.iter().flatten().find(|i| i.system.as_deref() == Some(NHS_NUMBER_SYSTEM));
        return (Some(format!("Patient/{id}")), nhs.and_then(|i| i.value.as_ref().map(|v| v.to_string())));
    }
    for r in [&h.subject, &h.patient, &h.beneficiary].into_iter().flatten() {
        if let Some(r) = r.reference.as_deref().filter(|r| r.starts_with("Patient/")) {
            return (Some(r.to_string()), None);
        }
    }
    slow(resource_type, id, json)
}

fn slow(resource_type: &str, id: &str, json: &str) -> (Option<String>, Option<String>) {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(json) else { return (None, None) };
    let patient = super::patient_of(resource_type, id, &value);
    let nhs = super::nhs_number(&value).filter(|_| resource_type == "Patient").map(str::to_string);
    (patient, nhs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn heads_agree_with_patient_of_and_person_group() {
        let cases = [
            (
                "Patient",
                json!({"resourceType": "Patient", "id": "p1", "identifier": [
                {"system": "urn:local", "value": "H1"},
                {"system": NHS_NUMBER_SYSTEM, "value": "9990000018"}]}),
            ),
            ("Encounter", json!({"resourceType": "Encounter", "id": "e1", "subject": {"reference": "Patient/p1"}})),
            ("Consent", json!({"resourceType": "Consent", "id": "c1", "patient": {"reference": "Patient/p\"2"}})),
            // Not in the usual places: found by walking every reference.
            ("Flag", json!({"resourceType": "Flag", "id": "f1", "author": {"reference": "Patient/p3"}})),
            // `subject` that is not a reference object: the slow path decides.
            ("Odd", json!({"resourceType": "Odd", "id": "o1", "subject": "x", "focus": {"reference": "Patient/p4"}})),
            ("Organization", json!({"resourceType": "Organization", "id": "org"})),
        ];
        for (t, v) in cases {
            let id = v["id"].as_str().unwrap();
            let (patient, nhs) = heads(t, id, &v.to_string());
            assert_eq!(patient, super::super::patient_of(t, id, &v), "{t}");
            if t == "Patient" {
                assert_eq!(nhs.as_deref(), Some("9990000018"));
                assert_eq!(
                    super::super::person_group_of(patient.as_deref().unwrap(), nhs.as_deref()),
                    super::super::person_group(patient.as_deref().unwrap(), &v)
                );
            } else {
                assert_eq!(nhs, None);
            }
        }
    }

    #[test]
    fn every_input_of_shaping_is_in_the_fingerprint() {
        let h = json_hash("{}");
        let base = fingerprint(&h, Profile::Cito, Category::MentalHealth, false, "hub");
        assert_eq!(base, fingerprint(&h, Profile::Cito, Category::MentalHealth, false, "hub"));
        for other in [
            fingerprint(&json_hash("{ }"), Profile::Cito, Category::MentalHealth, false, "hub"),
            fingerprint(&h, Profile::Pkb, Category::MentalHealth, false, "hub"),
            fingerprint(&h, Profile::Cito, Category::GeneralHealth, false, "hub"),
            fingerprint(&h, Profile::Cito, Category::MentalHealth, true, "hub"),
            fingerprint(&h, Profile::Cito, Category::MentalHealth, false, "york-mind"),
        ] {
            assert_ne!(base, other);
        }
    }
}
