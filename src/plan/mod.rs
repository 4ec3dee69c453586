//! Planning: what each destination should hold of a partner's mapped records. This folder is being carved out
//! of `sync` (issue 13); so far it holds who a resource is about and the person's ordering group.

use serde_json::Value;

use crate::model::fhir::NHS_NUMBER_SYSTEM;

/// The ordering group of a Patient: the person. With an NHS number, every partner's Patient for that person
/// shares one group, so their writes (and the look-up before creating) go one after another and two
/// partners can never both create the same person. The NHS number itself is not kept: the group is a UUID v5.
pub fn person_group(patient_ref: &str, patient: &Value) -> String {
    let nhs = patient["identifier"]
        .as_array()
        .and_then(|ids| ids.iter().find(|i| i["system"] == NHS_NUMBER_SYSTEM).and_then(|i| i["value"].as_str()));
    match nhs {
        Some(n) => format!("Person/{}", crate::mapping::ids::resource_id("person", "nhs-number", "group", n)),
        None => patient_ref.to_string(),
    }
}

/// The Patient a resource belongs to: itself, or the first Patient it refers to.
pub fn patient_of(resource_type: &str, id: &str, resource: &Value) -> Option<String> {
    if resource_type == "Patient" {
        return Some(format!("Patient/{id}"));
    }
    for field in ["subject", "patient", "beneficiary"] {
        if let Some(r) = resource[field]["reference"].as_str().filter(|r| r.starts_with("Patient/")) {
            return Some(r.to_string());
        }
    }
    let mut found = None;
    crate::validate::each_reference(resource, &mut |_, r| {
        if found.is_none() && r.starts_with("Patient/") {
            found = Some(r.to_string());
        }
    });
    found
}
