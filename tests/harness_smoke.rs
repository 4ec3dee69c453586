//! Checks the test harness itself against a real HFS: a transaction lands,
//! identifier search finds it (so the SearchParameter bundle is loaded), and
//! enforce-mode validation rejects an invalid resource.

mod common;

use common::Hfs;
use serde_json::{Value, json};

const NHS: &str = "https://fhir.nhs.uk/Id/nhs-number";
/// Passes the NHS number Modulus 11 check (999 range: never a real person).
const NHS_NUMBER: &str = "9990000018";

fn statuses(bundle: &Value) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .map(|es| es.iter().map(|e| e["response"]["status"].as_str().unwrap_or("?").to_string()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn hfs_transaction_identifier_search_and_enforced_validation() {
    let hfs = Hfs::start().await;
    eprintln!("hfs answered /metadata after {:?}", hfs.startup);

    let bundle = json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": hfs.url("Organization/smoke-org"),
                "resource": {
                    "resourceType": "Organization",
                    "id": "smoke-org",
                    "identifier": [{
                        "system": "https://fhir.nhs.uk/Id/ods-organization-code",
                        "value": "RCB"
                    }],
                    "name": "Smoke Test Trust"
                },
                "request": { "method": "PUT", "url": "Organization/smoke-org" }
            },
            {
                "fullUrl": hfs.url("Patient/smoke-patient"),
                "resource": {
                    "resourceType": "Patient",
                    "id": "smoke-patient",
                    "identifier": [{ "system": NHS, "value": NHS_NUMBER }],
                    "name": [{ "family": "Smoke", "given": ["Test"] }],
                    "gender": "female",
                    "birthDate": "1980-02-29",
                    "managingOrganization": { "reference": "Organization/smoke-org" }
                },
                "request": { "method": "PUT", "url": "Patient/smoke-patient" }
            }
        ]
    });
    let (status, body) = hfs.post_bundle(&bundle).await;
    assert_eq!(status, 200, "transaction rejected: {body:#}");
    assert_eq!(body["resourceType"], "Bundle", "{body:#}");
    assert_eq!(body["type"], "transaction-response", "{body:#}");
    let st = statuses(&body);
    assert_eq!(st.len(), 2, "{body:#}");
    assert!(st.iter().all(|s| s.starts_with("201")), "{st:?}");

    // Identifier search works only with the SearchParameter bundle loaded.
    let found = hfs.search(&format!("Patient?identifier={NHS}|{NHS_NUMBER}")).await;
    let entries = found["entry"].as_array().cloned().unwrap_or_default();
    assert_eq!(entries.len(), 1, "{found:#}");
    assert_eq!(entries[0]["resource"]["id"], "smoke-patient");
    assert_eq!(entries[0]["resource"]["managingOrganization"]["reference"], "Organization/smoke-org");
    // ...and is a real filter, not an ignored parameter.
    let none = hfs.search(&format!("Patient?identifier={NHS}|9990000026")).await;
    assert!(none["entry"].as_array().is_none_or(|e| e.is_empty()), "{none:#}");
    assert_eq!(hfs.count("Patient").await, 1);
    assert_eq!(hfs.count("Organization").await, 1);

    let (status, patient) = hfs.get("Patient/smoke-patient").await;
    assert_eq!(status, 200, "{patient:#}");
    assert_eq!(patient["meta"]["versionId"], "1", "{patient:#}");

    // Enforce mode: a bad code and an unknown element are refused, not stored.
    let (status, outcome) = hfs
        .put("Patient/smoke-bad", &json!({ "resourceType": "Patient", "id": "smoke-bad", "gender": "banana" }))
        .await;
    assert!((400..500).contains(&status), "gender=banana accepted: {status} {outcome:#}");
    assert_eq!(outcome["resourceType"], "OperationOutcome", "{outcome:#}");
    let (status, outcome) = hfs
        .put("Patient/smoke-bad", &json!({ "resourceType": "Patient", "id": "smoke-bad", "favouriteColour": "blue" }))
        .await;
    assert!((400..500).contains(&status), "unknown element accepted: {status} {outcome:#}");
    let (status, _) = hfs.get("Patient/smoke-bad").await;
    assert_eq!(status, 404);
    assert_eq!(hfs.count("Patient").await, 1);
}
