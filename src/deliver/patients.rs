//! Patient matching: before creating Patients, look the people up on the destination by NHS number (else the
//! partner's identifier), all of a batch at once, and link to ones that exist instead; references to linked
//! Patients are rewritten.

use std::collections::HashMap;

use serde_json::Value;
use tokio::sync::watch;
use tracing::info;

use super::Destination;
use super::records::{Settled, audit_entry, ledger_entry};
use super::retry::send_retrying;
use super::transport::{Found, TransportError};
use crate::model::AuditAction;
use crate::policy::Permit;
use crate::store::{OutboxRow, ResourceKey};

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

#[derive(Debug, Clone)]
pub(super) enum Outcome {
    Defer(String),
    Dead(String),
    /// The daemon is stopping: the row is left as it is (its lease is released on the way out).
    Stopped,
}

/// Looks up, on the destination, everyone a batch is about to create: all `identifiers` (see
/// [`match_identifier`]) in as few searches as the transport allows (FHIR: one `POST Patient/_search`
/// per hundred, the NHS numbers in the form body, never in a URL). Returns what was found for each.
pub(super) async fn look_up(
    dest: &Destination,
    identifiers: &[String],
    stop: &watch::Receiver<bool>,
) -> Result<HashMap<String, Vec<Found>>, Outcome> {
    // A destination that cannot be searched (an HL7 v2 engine): nobody else's Patient can be found there, so
    // ours is sent; the engine matches people itself. Said once, when the destination is built.
    if identifiers.is_empty() || !dest.transport.capabilities().read {
        return Ok(HashMap::new());
    }
    let found =
        send_retrying(dest, stop, || dest.transport.find_each("Patient", identifiers)).await.map_err(|e| match e {
            TransportError::Stopped => Outcome::Stopped,
            e => Outcome::Defer(format!("looking the Patients up on {}: {e}", dest.name)),
        })?;
    Ok(identifiers.iter().cloned().zip(found).collect())
}

/// What the destination holding `found` (the Patients carrying this one's identifier) means for `row`, a
/// Patient about to be created: `None` to create ours (nobody else's is there, or ours already is), the
/// Patient to link to when exactly one other is there, and a dead letter when several are (the connector
/// will not guess which is right).
pub(super) fn decide<'f>(found: &'f [Found], row: &OutboxRow, dest: &str) -> Result<Option<&'f Found>, Outcome> {
    let others: Vec<&Found> = found.iter().filter(|f| f.id != row.item.key.id).collect();
    if found.iter().any(|f| f.id == row.item.key.id) || others.is_empty() {
        return Ok(None);
    }
    if others.len() > 1 {
        return Err(Outcome::Dead(format!(
            "{} Patients on {dest} share this person's identifier; the connector will not guess which is right: merge them there, then `connector outbox retry {}`",
            others.len(),
            row.seq
        )));
    }
    Ok(Some(others[0]))
}

/// The link to someone else's Patient, to be recorded (with the bundle it goes out with): the ledger
/// entry pointing at theirs, and its audit entry.
pub(super) fn link_to(dest: &str, row: OutboxRow, other: &Found, permit: Option<&Permit>) -> Settled {
    let ledger = ledger_entry(dest, &row, &other.id, other.version_id.clone(), true);
    let audit = audit_entry(dest, &row, AuditAction::Linked, other.version_id.as_deref(), permit);
    info!(destination = %dest, resource = %row.item.key.id, remote = %other.id, "Linked to an existing Patient.");
    Settled { row, ledger, audit: Some(audit) }
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

    /// What a look-up's answer means for one new Patient: nobody else there, or ours already: create (or
    /// update) ours; exactly one other: link to it; several others: a dead letter for an admin.
    #[test]
    fn a_match_links_only_when_it_is_one_other_patient() {
        let found = |ids: &[&str]| -> Vec<Found> {
            ids.iter()
                .map(|id| Found { id: id.to_string(), version_id: Some("1".into()), resource: serde_json::json!({}) })
                .collect()
        };
        let row = OutboxRow {
            seq: 7,
            item: crate::store::OutboxItem {
                destination: "pkb".into(),
                key: ResourceKey::new("Patient", "ours"),
                patient: None,
                op: crate::store::Op::Upsert,
                content_hash: String::new(),
                body: None,
                origin: None,
            },
            attempts: 0,
            not_before: chrono::Utc::now(),
            last_error: None,
            dead: false,
            created_at: chrono::Utc::now(),
        };
        assert!(matches!(decide(&found(&[]), &row, "pkb"), Ok(None)));
        assert!(matches!(decide(&found(&["ours"]), &row, "pkb"), Ok(None)));
        assert!(matches!(decide(&found(&["ours", "theirs"]), &row, "pkb"), Ok(None)));
        assert!(matches!(decide(&found(&["theirs"]), &row, "pkb"), Ok(Some(f)) if f.id == "theirs"));
        match decide(&found(&["a", "b"]), &row, "pkb") {
            Err(Outcome::Dead(msg)) => assert!(msg.contains("2 Patients") && msg.contains("outbox retry 7"), "{msg}"),
            other => panic!("{other:?}"),
        }
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
