//! Destination profiles: what a resource must look like for each destination, applied when the outbox is
//! planned so that the content hash covers exactly what is sent.
//!
//! PKB (../shared/domain.md): every item carries exactly one privacy label in meta.security; references are
//! plain and relative; a Patient names its managing Organization. An unlabelled item would be visible only to
//! people holding every label, so the profile never lets one through.

use serde_json::{Value, json};

use crate::config::Profile;
use crate::mapping::Category;

pub const PKB_LABEL_SYSTEM: &str = "http://fhir.patientsknowbest.com/codesystem/privacy-label";

pub fn pkb_label(category: Category) -> &'static str {
    match category {
        Category::GeneralHealth => "GENERAL_HEALTH",
        Category::MentalHealth => "MENTAL_HEALTH",
        Category::SexualHealth => "SEXUAL_HEALTH",
        Category::SocialCare => "SOCIAL_CARE",
    }
}

/// Shapes a mapped resource for a destination; an error means it must not be sent there (and why).
pub fn apply(profile: Profile, category: Category, mut resource: Value) -> Result<Value, String> {
    match profile {
        Profile::Cito => Ok(resource),
        Profile::Pkb => {
            let meta = resource.as_object_mut().ok_or("not a JSON object")?.entry("meta").or_insert_with(|| json!({}));
            let security =
                meta.as_object_mut().ok_or("meta is not an object")?.entry("security").or_insert_with(|| json!([]));
            let list = security.as_array_mut().ok_or("meta.security is not a list")?;
            list.retain(|c| c["system"] != PKB_LABEL_SYSTEM);
            list.push(json!({ "system": PKB_LABEL_SYSTEM, "code": pkb_label(category) }));
            check_pkb(&resource)?;
            Ok(resource)
        }
    }
}

/// PKB's rules, checked on what is about to be sent.
pub fn check_pkb(resource: &Value) -> Result<(), String> {
    let labels = resource["meta"]["security"]
        .as_array()
        .map_or(0, |l| l.iter().filter(|c| c["system"] == PKB_LABEL_SYSTEM).count());
    if labels != 1 {
        return Err(format!("PKB needs exactly one privacy label, found {labels}"));
    }
    if resource.get("contained").is_some() {
        return Err("PKB does not accept contained resources".into());
    }
    if resource["resourceType"] == "Patient" && resource["managingOrganization"]["reference"].as_str().is_none() {
        return Err("PKB needs Patient.managingOrganization".into());
    }
    let mut bad = None;
    crate::validate::each_reference(resource, &mut |path, r| {
        if r.contains("://") || r.starts_with('#') || !r.contains('/') {
            bad = Some(format!("{path}: PKB accepts only plain relative references"));
        }
    });
    bad.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkb_gets_exactly_one_label() {
        let r = json!({"resourceType": "Encounter", "meta": {"security": [{"system": PKB_LABEL_SYSTEM, "code": "GENERAL_HEALTH"}]},
            "subject": {"reference": "Patient/a"}});
        let out = apply(Profile::Pkb, Category::MentalHealth, r).unwrap();
        assert_eq!(out["meta"]["security"], json!([{"system": PKB_LABEL_SYSTEM, "code": "MENTAL_HEALTH"}]));
        let p = json!({"resourceType": "Patient"});
        assert!(apply(Profile::Pkb, Category::GeneralHealth, p).unwrap_err().contains("managingOrganization"));
    }
}
