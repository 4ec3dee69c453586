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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::context::Context;
    use crate::store::{LedgerEntry, Op, ResourceKey};

    async fn context(name: &str) -> Context {
        let dir = std::env::temp_dir().join(format!("connector-subjects-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let root = env!("CARGO_MANIFEST_DIR");
        let text = format!(
            "[state]\nurl = \"sqlite://{}/state.db\"\n[mappings]\ndir = \"{root}/mappings\"\n\
             [destination.cito-hl7]\nprofile = \"cito\"\ntransport = \"hl7v2\"\n\
             [destination.cito-hl7.hl7v2]\naddress = \"mllp://127.0.0.1:9\"\nreceiving_application = \"CITO\"\n\
             receiving_facility = \"YTHFT\"\n",
            dir.display()
        );
        std::fs::write(dir.join("config.toml"), text).unwrap();
        Context::start(crate::config::Config::load(&dir.join("config.toml")).unwrap()).await.unwrap()
    }

    fn item(resource_type: &str, id: &str, body: Value) -> OutboxItem {
        let text = body.to_string();
        OutboxItem {
            destination: "cito-hl7".into(),
            key: ResourceKey::new(resource_type, id),
            patient: Some("Person/x".into()),
            op: Op::Upsert,
            content_hash: content_hash(&text),
            body: Some(text),
            origin: None,
        }
    }

    fn chunk(family: &str) -> Vec<OutboxItem> {
        vec![
            item("Patient", "p1", json!({"resourceType": "Patient", "id": "p1", "name": [{"family": family}]})),
            item("Goal", "g1", json!({"resourceType": "Goal", "id": "g1", "subject": {"reference": "Patient/p1"}})),
            item("Goal", "g2", json!({"resourceType": "Goal", "id": "g2", "subject": {"reference": "Patient/p2"}})),
        ]
    }

    fn body(item: &OutboxItem) -> Value {
        serde_json::from_str(item.body.as_deref().unwrap()).unwrap()
    }

    #[tokio::test]
    async fn the_subject_is_attached_and_hashed_out_and_a_missing_one_marks_the_record() {
        let ctx = context("attach").await;
        let planner = Planner {
            ctx: &ctx,
            explain: false,
            consent_read: &std::sync::Mutex::default(),
            stop: None,
            expected: None,
        };
        let dest = &ctx.destinations[0];
        let plain = chunk("Walsh");
        let mut items = plain.clone();
        planner.attach_subjects(dest, &mut items, &mut Subjects::default()).await.unwrap();
        // The Patient is sent as it is; its record carries it, hashed without it.
        assert_eq!(items[0].body, plain[0].body);
        let g1 = body(&items[1]);
        let subject = crate::deliver::transport::attached_subject(&g1).expect("attached");
        assert_eq!(subject["name"][0]["family"], "Walsh");
        assert_eq!(items[1].content_hash, plain[1].content_hash);
        // A new name: the Patient's hash changes, the record's does not (it is not sent again).
        let mut renamed = chunk("Welsh");
        planner.attach_subjects(dest, &mut renamed, &mut Subjects::default()).await.unwrap();
        assert_ne!(renamed[0].content_hash, items[0].content_hash);
        assert_eq!(renamed[1].content_hash, items[1].content_hash);
        assert_eq!(
            crate::deliver::transport::attached_subject(&body(&renamed[1])).unwrap()["name"][0]["family"],
            "Welsh"
        );
        // Patient/p2 is not in the run: the record goes without it (the transport refuses it into a dead letter),
        // with a marked hash, so that it is planned again once its Patient is read with it...
        assert!(crate::deliver::transport::attached_subject(&body(&items[2])).is_none());
        assert_ne!(items[2].content_hash, plain[2].content_hash);
        // ...unless the destination holds it unchanged already: then nothing is queued at all.
        let held = LedgerEntry {
            destination: "cito-hl7".into(),
            key: plain[2].key.clone(),
            remote_id: "g2".into(),
            content_hash: plain[2].content_hash.clone(),
            ..LedgerEntry::default()
        };
        ctx.store.ledger_put(&held).await.unwrap();
        let mut again = chunk("Walsh");
        planner.attach_subjects(dest, &mut again, &mut Subjects::default()).await.unwrap();
        assert_eq!(again[2].content_hash, plain[2].content_hash);
    }
}
