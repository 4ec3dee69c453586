//! The subject Patient for destinations whose messages name the person in full and that cannot be asked who a
//! `Patient/<id>` is (HL7 v2: PID; [`crate::deliver::transport::Capabilities::subject`]). Planning keeps, per
//! such destination, each Patient of this run as shaped for it (a partner's Patient comes before its records
//! in the same run), and attaches it to the records that follow ([`attach_subject`]).
//!
//! The content hash stays the record's own: a change of name or address sends the Patient again (one ADT^A31)
//! and never the person's documents and results (a re-sent MDM^T02 is a duplicate document in the EPR). When
//! the Patient is not available (withheld from that destination, or not in this run) the record is queued
//! without it and the transport refuses it into a dead letter that names the record and what to do; its hash
//! then carries a mark, so the run that next reads the record with its Patient plans it again. A record the
//! destination already holds unchanged is left alone.

use std::collections::HashMap;

use serde_json::Value;

use super::{Planner, content_hash, patient_of};
use crate::deliver::Destination;
use crate::deliver::transport::attach_subject;
use crate::store::OutboxItem;

/// This run's Patients as shaped for each destination that needs them: (destination, `Patient/<id>`) -> body.
#[derive(Default)]
pub(super) struct Subjects(HashMap<(String, String), Value>);

impl Planner<'_> {
    /// For a destination that needs subjects: remembers the Patients among `items` and attaches them to the
    /// records that follow (in order, so a Patient earlier in the same chunk counts).
    pub(super) async fn attach_subjects(
        &self,
        dest: &Destination,
        items: &mut [OutboxItem],
        subjects: &mut Subjects,
    ) -> anyhow::Result<()> {
        if !dest.transport.capabilities().subject {
            return Ok(());
        }
        let mut missing = Vec::new();
        for (n, item) in items.iter_mut().enumerate() {
            let Some(text) = &item.body else { continue };
            let mut body: Value = serde_json::from_str(text)?;
            let Some(subject) = patient_of(&item.key.resource_type, &item.key.id, &body) else { continue };
            let key = (dest.name.clone(), subject);
            if item.key.resource_type == "Patient" {
                subjects.0.insert(key, body);
                continue;
            }
            match subjects.0.get(&key) {
                Some(patient) => {
                    attach_subject(&mut body, patient.clone());
                    item.body = Some(body.to_string());
                }
                None => missing.push(n),
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        let keys: Vec<_> = missing.iter().map(|n| items[*n].key.clone()).collect();
        let held: HashMap<_, _> = self
            .ctx
            .store
            .ledger_get_many(&dest.name, &keys)
            .await?
            .into_iter()
            .map(|e| (e.key, e.content_hash))
            .collect();
        for n in missing {
            let item = &mut items[n];
            if held.get(&item.key) != Some(&item.content_hash) {
                item.content_hash = without_subject(&item.content_hash);
            }
        }
        Ok(())
    }
}

/// The hash of a record queued without its subject Patient: not the record's own, so that once the Patient
/// is available the record is planned again (superseding its dead letter).
fn without_subject(hash: &str) -> String {
    content_hash(&format!("{hash} without its subject Patient"))
}
