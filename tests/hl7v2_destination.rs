//! Issue 17: an HL7 v2 destination (Cito through the trust's integration engine) against an independent
//! receiver: `tests/hl7/listener.py`, an MLLP listener on the hl7apy library that parses every message with
//! strict validation for HL7 v2.5.1 and answers AA, or AE with an ERR segment for a configured rejection,
//! and can drop the connection or never answer. `scripts/setup-test-env.sh` installs hl7apy in a venv.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::{TempDir, no_shutdown};
use serde_json::Value;
use york_connector::config::Config;
use york_connector::sync::Engine;

const PARTNERS: [&str; 3] = ["hub", "york-mind", "carers-centre"];

/// The listener process, killed on drop.
struct Listener {
    child: Child,
    port: u16,
    record: PathBuf,
    mode: PathBuf,
    reject: PathBuf,
}

impl Listener {
    /// `None` (skipped, with the reason printed) when hl7apy's venv is missing outside CI.
    fn start(dir: &Path) -> Option<Self> {
        Self::start_for(dir, "2.5.1")
    }

    /// A listener validating strictly for HL7 v2 `version`.
    fn start_for(dir: &Path, version: &str) -> Option<Self> {
        let python = common::cache_dir().join("hl7-venv/bin/python");
        if !python.exists() {
            let why = format!("{} not found; run scripts/setup-test-env.sh", python.display());
            assert!(std::env::var_os("CI").is_none(), "{why}");
            eprintln!("skipped: {why}");
            return None;
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hl7/listener.py");
        let (record, mode, reject) = (dir.join("received.jsonl"), dir.join("mode"), dir.join("reject"));
        let mut child = Command::new(python)
            .arg(script)
            .args(["--version", version, "--record"])
            .arg(&record)
            .arg("--mode-file")
            .arg(&mode)
            .arg("--reject-file")
            .arg(&reject)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let port = line.trim().strip_prefix("LISTENING ").and_then(|p| p.parse().ok()).expect("listener's port");
        Some(Self { child, port, record, mode, reject })
    }

    /// Every message received so far, in order.
    fn received(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.record).unwrap_or_default();
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    fn set_mode(&self, mode: &str) {
        std::fs::write(&self.mode, mode).unwrap();
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A config with the three partners' fixtures (copied, so a test can edit them) and one HL7 v2 destination.
fn write_config(dir: &Path, port: u16) -> PathBuf {
    write_config_with(dir, port, "", "")
}

/// As [`write_config`], with `extra` lines in the destination's table.
/// `hl7_extra` in its `hl7v2` table.
fn write_config_with(dir: &Path, port: u16, extra: &str, hl7_extra: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut text = format!(
        "[state]\nurl = \"sqlite://{}/state.db\"\n[mappings]\ndir = \"{}/mappings\"\n",
        dir.display(),
        root.display()
    );
    text.push_str(&common::copy_fixtures(dir, &PARTNERS));
    text.push_str(&format!(
        "[destination.cito-hl7]\nprofile = \"cito\"\ntransport = \"hl7v2\"\nmax_attempts = 3\ndefer_seconds = 0\n{extra}\
         [destination.cito-hl7.hl7v2]\naddress = \"mllp://127.0.0.1:{port}\"\nreceiving_application = \"CITO\"\n\
         receiving_facility = \"YTHFT\"\nack_timeout_seconds = 2\n{hl7_extra}"
    ));
    text.push_str(&common::open_sharing(&PARTNERS, &["cito-hl7"]));
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The connector's id for the person a message is about (PID-3's `^^^YORKHUB^PI` repetition).
fn person_of(message: &Value) -> String {
    let raw = message["raw"].as_str().unwrap();
    let pid = raw.split('\r').find(|s| s.starts_with("PID|")).expect("a PID segment");
    let pid3 = pid.split('|').nth(3).unwrap();
    pid3.split('~').find_map(|r| r.strip_suffix("^^^YORKHUB^PI")).expect("the connector's id in PID-3").to_string()
}

/// Every Patient the mapping produces that the sharing rules allow on `dest` (not audited as withheld),
/// and the withheld ones.
async fn patients(engine: &Engine) -> (HashSet<String>, HashSet<String>) {
    let withheld: HashSet<String> = common::withheld(&engine.store, "cito-hl7")
        .await
        .into_iter()
        .filter_map(|(t, id)| (t == "Patient").then_some(id))
        .collect();
    struct Ids(HashSet<String>);
    impl york_connector::mapping::Sink for Ids {
        fn resource(&mut self, r: &york_connector::mapping::MappedResource<'_>) -> std::io::Result<()> {
            if r.resource_type == "Patient" {
                self.0.insert(r.id.to_string());
            }
            Ok(())
        }
        fn quarantined(&mut self, _: &york_connector::mapping::Quarantined) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut ids = Ids(HashSet::new());
    for p in &engine.config.partners {
        let inputs = engine.inputs(&p.id).unwrap();
        york_connector::mapping::run(&engine.catalog.partners[&p.id], &inputs, &mut ids).unwrap();
    }
    let allowed = ids.0.difference(&withheld).cloned().collect();
    (allowed, withheld)
}

/// Messages acknowledged (AA), by person.
fn acknowledged(received: &[Value]) -> BTreeMap<String, Vec<Value>> {
    let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for m in received.iter().filter(|m| m["answer"] == "AA") {
        out.entry(person_of(m)).or_default().push(m.clone());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cycle_sends_every_allowed_patient_once_then_nothing_then_one_a31() {
    let dir = TempDir::new("hl7v2-cycle");
    let Some(listener) = Listener::start(dir.path()) else { return };
    let engine = Engine::start(Config::load(&write_config(dir.path(), listener.port)).unwrap()).await.unwrap();

    engine.cycle(None, None, false, &no_shutdown()).await.unwrap();
    let received = listener.received();
    let invalid: Vec<_> = received.iter().filter(|m| m["valid"] != true).map(|m| &m["error"]).collect();
    assert!(invalid.is_empty(), "hl7apy (strict, 2.5.1) refused: {invalid:?}");
    assert!(received.iter().all(|m| m["type"] == "ADT^A28^ADT_A05" && m["answer"] == "AA"));
    let (allowed, withheld) = patients(&engine).await;
    let acked = acknowledged(&received);
    assert_eq!(acked.keys().cloned().collect::<HashSet<_>>(), allowed, "every allowed Patient, as an A28");
    assert!(acked.values().all(|m| m.len() == 1), "each exactly once");
    // Consent: nobody withheld appears on the wire, in any message.
    assert!(!withheld.is_empty(), "the fixtures hold people who declined or withdrew");
    for id in &withheld {
        assert!(!received.iter().any(|m| m["raw"].as_str().unwrap().contains(id.as_str())), "{id} was sent");
    }
    // Everything else has no message definition: refused for this destination, saying so.
    let dead = engine.store.outbox_list(Some("cito-hl7"), true, 10_000).await.unwrap();
    for row in &dead {
        assert_ne!(row.item.key.resource_type, "Patient");
        let why = row.last_error.as_deref().unwrap_or_default();
        assert!(why.contains("no HL7 v2 message is defined for"), "{why}");
    }

    // Same input: nothing sent.
    engine.cycle(None, None, false, &no_shutdown()).await.unwrap();
    assert_eq!(listener.received().len(), received.len(), "the second cycle sent messages");

    // One changed source row: exactly one A31.
    let person = dir.path().join("hub/person.csv");
    let bytes = std::fs::read(&person).unwrap();
    let at = bytes.windows(6).position(|w| w == b"Connor").expect("Connor Walsh (HUB-1006) in the fixture");
    let changed = [&bytes[..at], b"Conor", &bytes[at + 6..]].concat();
    std::fs::write(&person, changed).unwrap();
    engine.cycle(None, None, false, &no_shutdown()).await.unwrap();
    let after = listener.received();
    assert_eq!(after.len(), received.len() + 1, "exactly one message for one change");
    let update = &after[received.len()];
    assert_eq!(update["type"], "ADT^A31^ADT_A05");
    assert_eq!(update["valid"], true, "{:?}", update["error"]);
    assert!(update["raw"].as_str().unwrap().contains("|Walsh^Conor^"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resets_and_silence_are_retried_with_the_same_control_id_and_an_ae_is_a_dead_letter() {
    let dir = TempDir::new("hl7v2-faults");
    let Some(listener) = Listener::start(dir.path()) else { return };
    // Connor Walsh's NHS number: the engine refuses him.
    std::fs::write(&listener.reject, "9995158302\n").unwrap();
    listener.set_mode("reset-once");
    let engine = Engine::start(Config::load(&write_config(dir.path(), listener.port)).unwrap()).await.unwrap();
    engine.cycle(None, None, false, &no_shutdown()).await.unwrap();
    let received = listener.received();
    assert_eq!(received[0]["answer"], "none", "the first message met a reset");
    // Sent again with the same control id (another person's message may go in between: two workers).
    let again: Vec<&Value> = received[1..].iter().filter(|m| m["control_id"] == received[0]["control_id"]).collect();
    assert_eq!(again.len(), 1, "resent once with the same control id");

    let (allowed, _) = patients(&engine).await;
    let acked = acknowledged(&received);
    let refused: Vec<&Value> = received.iter().filter(|m| m["answer"] == "AE").collect();
    // Connor is a client of the Hub and of York Mind: two Patients, each refused once and not retried.
    let refused: HashSet<String> = refused.iter().map(|m| person_of(m)).collect::<Vec<_>>().into_iter().collect();
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert_eq!(received.iter().filter(|m| m["answer"] == "AE").count(), 2, "an AE is not retried");
    let expected: HashSet<String> = allowed.difference(&refused).cloned().collect();
    assert_eq!(acked.keys().cloned().collect::<HashSet<_>>(), expected);
    // Exactly once per control id among the acknowledged.
    let ids: Vec<&str> = acked.values().flatten().map(|m| m["control_id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), ids.iter().collect::<HashSet<_>>().len());
    let dead = engine.store.outbox_list(Some("cito-hl7"), true, 10_000).await.unwrap();
    for id in &refused {
        let row = dead.iter().find(|r| &r.item.key.id == id).expect("a refused Patient is a dead letter");
        assert!(row.last_error.as_deref().unwrap_or_default().contains("Refused by the engine's rule"), "{row:?}");
    }

    // Silence: no ACK within the timeout, sent again (same control id) and acknowledged.
    let person = dir.path().join("hub/person.csv");
    let bytes = std::fs::read(&person).unwrap();
    let at = bytes.windows(8).position(|w| w == b"Roberts,").expect("Sian Roberts (HUB-1002)");
    let changed = [&bytes[..at], b"Robertz,", &bytes[at + 8..]].concat();
    std::fs::write(&person, changed).unwrap();
    listener.set_mode("silent-once");
    engine.cycle(None, None, false, &no_shutdown()).await.unwrap();
    let after = &listener.received()[received.len()..];
    assert_eq!(after.len(), 2, "the change met silence, then went again: {after:?}");
    assert_eq!(after[0]["answer"], "none");
    assert_eq!(after[1]["answer"], "AA");
    assert_eq!(after[0]["control_id"], after[1]["control_id"]);
    assert_eq!(after[1]["type"], "ADT^A31^ADT_A05");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withdrawal_sends_nothing_more_retracts_nothing_and_says_who_must_remove_what_was_sent() {
    let dir = TempDir::new("hl7v2-withdraw");
    let Some(listener) = Listener::start(dir.path()) else { return };
    // retract = true is ignored: the destination cannot delete.
    let config = write_config_with(dir.path(), listener.port, "retract = true\n", "");
    let engine = Engine::start(Config::load(&config).unwrap()).await.unwrap();
    engine.cycle(None, None, false, &no_shutdown()).await.unwrap();
    let before = listener.received().len();

    // Sian (HUB-1002) withdraws at the Hub.
    let consent = dir.path().join("hub/consent.csv");
    let text = std::fs::read_to_string(&consent).unwrap();
    let line = "CN-702,HUB-1002,20/03/2023,Yes,Yes,,,Active,";
    assert!(text.contains(line), "fixture changed?");
    std::fs::write(&consent, text.replace(line, "CN-702,HUB-1002,20/03/2023,Yes,Yes,,,Withdrawn,01/06/2024")).unwrap();
    let report = engine.cycle(None, None, false, &no_shutdown()).await.unwrap();

    assert_eq!(listener.received().len(), before, "nothing is sent after a withdrawal, and no retraction");
    let w = report.ingest.iter().flat_map(|i| &i.withdrawals).find(|w| w.holdings.contains_key("cito-hl7"));
    let w = w.expect("a withdrawal report listing what was sent to cito-hl7");
    assert!(w.holdings["cito-hl7"].iter().any(|k| k.starts_with("Patient/")), "{w:?}");
    assert!(w.retracting.is_empty(), "{w:?}");
    assert_eq!(w.cannot_delete, ["cito-hl7"]);
    let rows = engine.store.outbox_list(Some("cito-hl7"), false, 10_000).await.unwrap();
    assert!(rows.iter().all(|r| r.item.op != york_connector::store::Op::Delete), "a retraction was queued");
}

#[test]
fn config_check_connects_without_sending_and_reconcile_and_pull_explain_instead_of_failing() {
    let dir = TempDir::new("hl7v2-cli");
    let Some(listener) = Listener::start(dir.path()) else { return };
    let config = write_config(dir.path(), listener.port);
    let run = |args: &[&str]| {
        let out =
            Command::new(env!("CARGO_BIN_EXE_connector")).arg("--config").arg(&config).args(args).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = run(&["config", "check"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains(&format!("mllp://127.0.0.1:{} accepts connections", listener.port)), "{out}");
    assert!(out.contains("cito-hl7: HL7 v2 messages defined for Patient"), "{out}");
    assert!(listener.received().is_empty(), "config check sent a message");

    for args in [&["reconcile", "--destination", "cito-hl7"][..], &["pull", "--destination", "cito-hl7"][..]] {
        let (code, out, err) = run(args);
        assert_eq!(code, Some(0), "{args:?}: {out}{err}");
        assert!(out.contains("cito-hl7: cannot be") && out.contains("write-only"), "{args:?}: {out}");
        assert!(out.contains("From the connector's ledger instead"), "{out}");
        assert!(!err.to_lowercase().contains("error"), "{args:?}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_24_destination_gets_messages_valid_for_hl7_v24() {
    let dir = TempDir::new("hl7v2-v24");
    let Some(listener) = Listener::start_for(dir.path(), "2.4") else { return };
    let config = write_config_with(dir.path(), listener.port, "", "version = \"2.4\"\n");
    let engine = Engine::start(Config::load(&config).unwrap()).await.unwrap();
    engine.cycle(None, None, false, &no_shutdown()).await.unwrap();
    let received = listener.received();
    assert!(!received.is_empty());
    let invalid: Vec<_> = received.iter().filter(|m| m["valid"] != true).map(|m| &m["error"]).collect();
    assert!(invalid.is_empty(), "hl7apy (strict, 2.4) refused: {invalid:?}");
    assert!(received.iter().all(|m| m["version"] == "2.4" && m["answer"] == "AA"));
}
