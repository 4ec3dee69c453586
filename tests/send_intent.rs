//! Issue 12, item 23: "no disclosure without its audit entry" across a crash. A write lands on the
//! destination but its answer never reaches the connector (here the proxy resets the connection after the
//! server acted on it; a crash between sending and recording leaves the same state), and then the person
//! withdraws consent, which cancels the pending row. The next delivery pass settles the write in doubt: it
//! reads the destination, finds what was sent, audits the disclosure and records it in the ledger, so the
//! person's audit shows it and a retraction knows what the destination holds.

mod common;

use std::path::{Path, PathBuf};

use common::proxy::{Fault, FaultPlan, FaultProxy};
use common::{Hfs, TempDir};
use serde_json::json;
use york_connector::config::Config;
use york_connector::store::{AuditFilter, Op, OutboxItem, ResourceKey};
use york_connector::sync::{Engine, content_hash};

fn write_config(dir: &Path, cito: &str) -> PathBuf {
    let text = format!(
        "[state]\nurl = \"sqlite://{}/state.db\"\n[mappings]\ndir = \"{}/mappings\"\n{}\
         [destination.cito]\nprofile = \"cito\"\nbase_url = \"{cito}\"\nmax_attempts = 1\ntimeout_seconds = 5\n{}",
        dir.display(),
        env!("CARGO_MANIFEST_DIR"),
        common::copy_fixtures(dir, &["hub"]),
        common::open_sharing(&["hub"], &["cito"]),
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn no_shutdown() -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    std::mem::forget(tx);
    rx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_landed_unrecorded_is_audited_even_after_a_withdrawal_cancelled_it() {
    let cito = Hfs::start().await;
    let proxy = FaultProxy::start(&cito.base_url, FaultPlan::always(Fault::AfterForwardReset).only_writes());
    let dir = TempDir::new("send-intent");
    let engine = Engine::start(Config::load(&write_config(dir.path(), proxy.base_url())).unwrap()).await.unwrap();

    let person = "Person/00000000-0000-5000-8000-0000000000c1";
    let id = "00000000-0000-4000-8000-0000000c0de1";
    let body = json!({"resourceType": "Encounter", "id": id, "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"}})
    .to_string();
    let key = ResourceKey::new("Encounter", id);
    engine
        .store
        .enqueue(
            &[OutboxItem {
                destination: "cito".into(),
                key: key.clone(),
                patient: Some(person.into()),
                op: Op::Upsert,
                content_hash: content_hash(&body),
                body: Some(body),
                origin: Some(york_connector::model::Provenance::decode("hub|mental_health|0|0")),
            }],
            chrono::Utc::now(),
        )
        .await
        .unwrap();

    // The write lands; the answer is lost. The row waits for a retry; nothing is recorded or audited yet.
    let r = engine.deliver("cito", &no_shutdown()).await.unwrap();
    assert_eq!((r.written, r.deferred), (0, 1), "{r:?}");
    assert_eq!(cito.get(&format!("Encounter/{id}")).await.0, 200, "the write landed");
    assert_eq!(engine.store.ledger_get("cito", &key).await.unwrap(), None);

    // The person withdraws: the pending row is cancelled, so it will never be sent (and recorded) again.
    let cancelled = engine.store.outbox_cancel_person(person, "consent withdrawn", chrono::Utc::now()).await.unwrap();
    assert_eq!(cancelled, 1);

    // The next pass settles the write in doubt: found on the destination, audited and recorded.
    proxy.set_plan(FaultPlan::none());
    engine.deliver("cito", &no_shutdown()).await.unwrap();
    let disclosed = engine
        .store
        .audit_list(&AuditFilter { actions: vec!["disclosed".parse().unwrap()], ..Default::default() })
        .await
        .unwrap();
    let found: Vec<_> = disclosed.iter().filter(|a| a.resource_id.as_deref() == Some(id)).collect();
    assert_eq!(found.len(), 1, "the disclosure is audited once: {disclosed:?}");
    assert_eq!(found[0].person.as_deref(), Some(person));
    assert_eq!(found[0].destination.as_deref(), Some("cito"));
    assert!(found[0].agreement.is_some(), "what allowed it is kept: {:?}", found[0]);
    let entry = engine.store.ledger_get("cito", &key).await.unwrap();
    assert!(entry.is_some_and(|e| e.version_id.is_some()), "the ledger knows what cito holds");
    assert!(engine.store.intents_due("cito", chrono::Utc::now(), 10).await.unwrap().is_empty());
    // Settled for good: another pass audits nothing more.
    engine.deliver("cito", &no_shutdown()).await.unwrap();
    let again = engine
        .store
        .audit_list(&AuditFilter { actions: vec!["disclosed".parse().unwrap()], ..Default::default() })
        .await
        .unwrap();
    assert_eq!(again.len(), disclosed.len());
}
