//! Patient matching: before creating a Patient, look the person up on the destination by NHS number (else the
//! partner's identifier) and link to one that exists instead; references to linked Patients are rewritten.

use std::collections::HashMap;

use serde_json::Value;
use tokio::sync::watch;
use tracing::info;

use super::Destination;
use super::records::{audit_entry, ledger_entry};
use super::retry::send_retrying;
use super::transport::TransportError;
use crate::model::AuditAction;
use crate::policy::Permit;
use crate::store::{OutboxRow, ResourceKey, Store};

use crate::model::fhir::NHS_NUMBER_SYSTEM as NHS_SYSTEM;

pub(super) fn patient_key(reference: &str) -> Option<ResourceKey> {
    let id = reference.strip_prefix("Patient/")?;
    Some(ResourceKey { resource_type: "Patient".into(), id: id.to_string() })
}

/// The identifier a Patient is matched by: the NHS number, else the partner's own (first) identifier.
pub(super) fn match_identifier(patient: &Value) -> Option<String> {
    let ids = patient["identifier"].as_array()?;
    let pick = ids
        .iter()
        .find(|i| i["system"] == NHS_SYSTEM)
        .or_else(|| ids.iter().find(|i| i["system"].is_string() && i["value"].is_string()))?;
    Some(format!("{}|{}", pick["system"].as_str()?, pick["value"].as_str()?))
}

pub(super) fn rewrite_references(v: &mut Value, links: &HashMap<String, String>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m.iter_mut() {
                if k == "reference" {
                    if let Value::String(r) = child
                        && let Some(to) = links.get(r.as_str())
                    {
                        *r = to.clone();
                    }
                } else {
                    rewrite_references(child, links);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|c| rewrite_references(c, links)),
        _ => {}
    }
}

pub(super) enum Outcome {
    Defer(String),
    Dead(String),
    /// The daemon is stopping: the row is left as it is (its lease is released on the way out).
    Stopped,
}

/// Looks the person up on the destination before creating them. Returns the id of someone else's Patient
/// to link to (after recording the link), or `None` to create ours.
pub(super) async fn match_patient(
    store: &Store,
    dest: &Destination,
    row: &OutboxRow,
    body: Option<&Value>,
    permit: Option<&Permit>,
    stop: &watch::Receiver<bool>,
) -> Result<Option<String>, Outcome> {
    let Some(identifier) = body.and_then(match_identifier) else { return Ok(None) };
    let found =
        send_retrying(dest, stop, || dest.transport.find("Patient", &identifier)).await.map_err(|e| match e {
            TransportError::Stopped => Outcome::Stopped,
            e => Outcome::Defer(format!("looking the Patient up on {}: {e}", dest.name)),
        })?;
    let others: Vec<_> = found.iter().filter(|f| f.id != row.item.key.id).collect();
    if found.iter().any(|f| f.id == row.item.key.id) || others.is_empty() {
        return Ok(None);
    }
    if others.len() > 1 {
        return Err(Outcome::Dead(format!(
            "{} Patients on {} share this person's identifier; the connector will not guess which is right: merge them there, then `connector outbox retry {}`",
            others.len(),
            dest.name,
            row.seq
        )));
    }
    let other = others[0];
    let entry = ledger_entry(&dest.name, row, &other.id, other.version_id.clone(), true);
    let audit = audit_entry(&dest.name, row, AuditAction::Linked, other.version_id.as_deref(), permit);
    store.complete(row, Some(&entry), Some(&audit)).await.map_err(|e| Outcome::Defer(e.to_string()))?;
    info!(destination = %dest.name, resource = %row.item.key.id, remote = %other.id, "Linked to an existing Patient.");
    Ok(Some(other.id.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patient_matching_identifier_prefers_the_nhs_number() {
        let p = serde_json::json!({"identifier": [{"system": "https://id.example/hub/client", "value": "H1"}, {"system": NHS_SYSTEM, "value": "9990000018"}]});
        assert_eq!(match_identifier(&p).unwrap(), format!("{NHS_SYSTEM}|9990000018"));
        let p = serde_json::json!({"identifier": [{"system": "https://id.example/hub/client", "value": "H1"}]});
        assert_eq!(match_identifier(&p).unwrap(), "https://id.example/hub/client|H1");
    }

    #[test]
    fn references_to_linked_patients_are_rewritten() {
        let mut v =
            serde_json::json!({"subject": {"reference": "Patient/ours"}, "x": [{"reference": "Patient/other"}]});
        let links = HashMap::from([("Patient/ours".to_string(), "Patient/theirs".to_string())]);
        rewrite_references(&mut v, &links);
        assert_eq!(v["subject"]["reference"], "Patient/theirs");
        assert_eq!(v["x"][0]["reference"], "Patient/other");
    }
}
