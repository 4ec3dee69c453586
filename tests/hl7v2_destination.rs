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
        Self::spawn(dir, version, &[])
    }

    /// A listener speaking MLLP over TLS with this certificate and key.
    fn start_tls(dir: &Path, cert: &Path, key: &Path) -> Option<Self> {
        Self::spawn(dir, "2.5.1", &["--tls-cert".as_ref(), cert.as_os_str(), "--tls-key".as_ref(), key.as_os_str()])
    }

    fn spawn(dir: &Path, version: &str, extra: &[&std::ffi::OsStr]) -> Option<Self> {
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
            .args(extra)
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

/// A message's segment `id`, split into fields (`[0]` is the id).
fn segment<'a>(message: &'a Value, id: &str) -> Option<Vec<&'a str>> {
    let raw = message["raw"].as_str().unwrap();
    raw.split('\r').find(|s| s.starts_with(&format!("{id}|"))).map(|s| s.split('|').collect())
}

/// The connector's id for the person a message is about (PID-3's `^^^YORKHUB^PI` repetition).
fn person_of(message: &Value) -> String {
    let pid = segment(message, "PID").expect("a PID segment");
    pid[3].split('~').find_map(|r| r.strip_suffix("^^^YORKHUB^PI")).expect("the connector's id in PID-3").to_string()
}

/// The id of the resource a message carries: the Patient's (ADT), or the connector's id in OBR-3 (ORU),
/// TXA-12 (MDM) or RF1-6 (REF).
fn resource_of(message: &Value) -> String {
    let kind = message["type"].as_str().unwrap();
    let (seg, n) = match &kind[..3] {
        "ADT" => return person_of(message),
        "ORU" => ("OBR", 3),
        "MDM" => ("TXA", 12),
        "REF" => ("RF1", 6),
        other => panic!("unexpected message type {other}"),
    };
    let fields = segment(message, seg).unwrap_or_else(|| panic!("{kind} without {seg}"));
    fields[n].strip_suffix("^YORKHUB").expect("the connector's id").to_string()
}

/// The message type each resource type is sent as.
fn message_type(resource_type: &str) -> &'static str {
    match resource_type {
        "Patient" => "ADT^A28^ADT_A05",
        "Observation" | "QuestionnaireResponse" => "ORU^R01^ORU_R01",
        "Encounter" | "Goal" | "CarePlan" => "MDM^T02^MDM_T02",
        "ServiceRequest" => "REF^I12^REF_I12",
        other => panic!("no message for {other}"),
    }
}

/// One mapped resource: type, id, and its Patient's id.
#[derive(Debug, Clone)]
struct Mapped {
    resource_type: String,
    id: String,
    patient: Option<String>,
}

/// Every resource the mapping produces from the config's sources, in the order it is planned, and the ids
/// the sharing rules withheld from the destination (audited).
async fn resources(engine: &Engine) -> (Vec<Mapped>, HashSet<String>) {
    let withheld: HashSet<String> =
        common::withheld(&engine.store, "cito-hl7").await.into_iter().map(|(_, id)| id).collect();
    struct All(Vec<Mapped>);
    impl york_connector::mapping::Sink for All {
        fn resource(&mut self, r: &york_connector::mapping::MappedResource<'_>) -> std::io::Result<()> {
            let patient = york_connector::sync::patient_of(r.resource_type, r.id, &r.resource());
            self.0.push(Mapped {
                resource_type: r.resource_type.to_string(),
                id: r.id.to_string(),
                patient: patient.map(|p| p.trim_start_matches("Patient/").to_string()),
            });
            Ok(())
        }
        fn quarantined(&mut self, _: &york_connector::mapping::Quarantined) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut all = All(Vec::new());
    for p in &engine.config.partners {
        let inputs = engine.inputs(&p.id).unwrap();
        york_connector::mapping::run(&engine.catalog.partners[&p.id], &inputs, &mut all).unwrap();
    }
    (all.0, withheld)
}

/// The resource types the destination has a message definition for.
fn defined() -> HashSet<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings/hl7v2");
    york_connector::deliver::hl7v2::MessageDefinition::load_dir(&dir).unwrap().into_keys().collect()
}

/// What the destination should receive, in planning order: every mapped resource with a message definition
/// that the rules allow there.
async fn expected(engine: &Engine) -> (Vec<Mapped>, HashSet<String>) {
    let (all, withheld) = resources(engine).await;
    let defined = defined();
    let allowed = all.into_iter().filter(|r| defined.contains(&r.resource_type) && !withheld.contains(&r.id)).collect();
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

/// Fails with hl7apy's reasons when any message was not valid for the listener's version.
fn assert_all_valid(received: &[Value]) {
    let invalid: Vec<_> = received.iter().filter(|m| m["valid"] != true).map(|m| (&m["type"], &m["error"])).collect();
    assert!(invalid.is_empty(), "hl7apy (strict) refused: {invalid:?}");
}

/// Replaces `from` (which must be there) with `to` in a copied fixture.
fn edit(path: &Path, from: &str, to: &str) {
    let bytes = std::fs::read(path).unwrap();
    let at = bytes.windows(from.len()).position(|w| w == from.as_bytes()).unwrap_or_else(|| panic!("{from}?"));
    std::fs::write(path, [&bytes[..at], to.as_bytes(), &bytes[at + from.len()..]].concat()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cycle_sends_every_allowed_resource_once_then_nothing_then_one_a31_and_no_document_again() {
    let dir = TempDir::new("hl7v2-cycle");
    let Some(listener) = Listener::start(dir.path()) else { return };
    let engine = Engine::start(Config::load(&write_config(dir.path(), listener.port)).unwrap()).await.unwrap();

    engine.cycle(None, None, false, &no_shutdown()).await.unwrap();
    let received = listener.received();
    assert_all_valid(&received);
    assert!(received.iter().all(|m| m["answer"] == "AA"), "{received:?}");
    let (allowed, withheld) = expected(&engine).await;
    // Every allowed resource exactly once, as its message type, naming its person in PID.
    let mut sent: BTreeMap<String, &Value> = BTreeMap::new();
    for m in &received {
        assert!(sent.insert(resource_of(m), m).is_none(), "sent twice: {}", resource_of(m));
    }
    assert_eq!(sent.len(), allowed.len(), "one message per allowed resource");
    let mut kinds = HashSet::new();
    for r in &allowed {
        let m = sent.get(&r.id).unwrap_or_else(|| panic!("{} {} was not sent", r.resource_type, r.id));
        assert_eq!(m["type"], message_type(&r.resource_type), "{}", r.resource_type);
        assert_eq!(Some(person_of(m)), r.patient, "PID names the subject of {} {}", r.resource_type, r.id);
        assert!(!segment(m, "PID").unwrap()[5].is_empty(), "a person without a name: {m}");
        kinds.insert(r.resource_type.clone());
    }
    let all: HashSet<String> = defined();
    assert_eq!(kinds, all, "the fixtures exercise every message definition");
    // Documents: the record in readable lines (TX, a line per repetition), without the person's details. The
    // Hub's first contact (C-5001): people's messages go out side by side, in no fixed order between people.
    let contact = received.iter().find(|m| {
        let raw = m["raw"].as_str().unwrap();
        m["type"] == "MDM^T02^MDM_T02" && raw.contains("YH-CONTACT") && raw.contains("Contact ID: C-5001")
    });
    let obx = segment(contact.expect("a contact document"), "OBX").unwrap();
    assert_eq!(obx[2], "TX");
    assert!(obx[5].split('~').any(|l| l.starts_with("Type: Welcoming conversation")), "{}", obx[5]);
    // Consent: nobody and nothing withheld appears on the wire, in any message.
    assert!(!withheld.is_empty(), "the fixtures hold people who declined or withdrew");
    for id in &withheld {
        assert!(!received.iter().any(|m| m["raw"].as_str().unwrap().contains(id.as_str())), "{id} was sent");
    }
    // Everything else has no message definition: refused for this destination, saying so.
    let dead = engine.store.outbox_list(Some("cito-hl7"), true, 10_000).await.unwrap();
    assert!(!dead.is_empty());
    for row in &dead {
        assert!(!all.contains(&row.item.key.resource_type), "{row:?}");
        let why = row.last_error.as_deref().unwrap_or_default();
        assert!(why.contains("no HL7 v2 message is defined for"), "{why}");
    }

    // Same input: nothing sent.
    engine.cycle(None, None, false, &no_shutdown()).await.unwrap();
    assert_eq!(listener.received().len(), received.len(), "the second cycle sent messages");

    // Connor Walsh (HUB-1006, with contacts, goals, a referral and ReQoL scores) changes his name: exactly one
    // A31. His documents and results, which name him in PID, are not sent again (the EPR would file them twice).
    edit(&dir.path().join("hub/person.csv"), "Connor", "Conor");
    engine.cycle(None, None, false, &no_shutdown()).await.unwrap();
    let after = listener.received();
    assert_eq!(after.len(), received.len() + 1, "exactly one message for one change");
    let update = &after[received.len()];
    assert_eq!(update["type"], "ADT^A31^ADT_A05");
    assert_eq!(update["valid"], true, "{:?}", update["error"]);
    assert!(update["raw"].as_str().unwrap().contains("|Walsh^Conor^"));
    let connor = person_of(update);
    let his = allowed.iter().filter(|r| r.patient.as_deref() == Some(&connor) && r.resource_type != "Patient");
    assert!(his.count() >= 4, "Connor's records in the fixture");

    // One of his records changes: that one goes again (the person as now known), and nothing else.
    edit(
        &dir.path().join("hub/goals.csv"),
        "Less gaming through the night,,",
        "Less gaming through the night,Improving,",
    );
    engine.cycle(None, None, false, &no_shutdown()).await.unwrap();
    let later = &listener.received()[after.len()..];
    assert_eq!(later.len(), 1, "{later:?}");
    assert_eq!(later[0]["type"], "MDM^T02^MDM_T02");
    assert_eq!(later[0]["valid"], true, "{:?}", later[0]["error"]);
    let raw = later[0]["raw"].as_str().unwrap();
    assert!(raw.contains("|Walsh^Conor^"), "the person as now known: {raw}");
    assert!(raw.contains("Achievement status: Improving"), "{raw}");
    assert_eq!(segment(&later[0], "OBX").unwrap()[11], "C", "a corrected document");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resets_and_silence_are_retried_with_the_same_control_id_and_an_ae_is_a_dead_letter() {
    let dir = TempDir::new("hl7v2-faults");
    let Some(listener) = Listener::start(dir.path()) else { return };
    // Connor Walsh's NHS number: the engine refuses every message about him (PID-3's first identifier).
    std::fs::write(&listener.reject, "9995158302\n").unwrap();
    listener.set_mode("reset-once");
    let engine = Engine::start(Config::load(&write_config(dir.path(), listener.port)).unwrap()).await.unwrap();
    engine.cycle(None, None, false, &no_shutdown()).await.unwrap();
    let received = listener.received();
    assert_all_valid(&received);
    assert_eq!(received[0]["answer"], "none", "the first message met a reset");
    // Sent again with the same control id (another person's message may go in between: two workers).
    let again: Vec<&Value> = received[1..].iter().filter(|m| m["control_id"] == received[0]["control_id"]).collect();
    assert_eq!(again.len(), 1, "resent once with the same control id");

    let (allowed, _) = expected(&engine).await;
    let refused: Vec<&Value> = received.iter().filter(|m| m["answer"] == "AE").collect();
    // Connor is a client of the Hub and of York Mind: two Patients, each of their messages refused once and
    // not retried.
    let refused_people: HashSet<String> = refused.iter().map(|m| person_of(m)).collect();
    assert_eq!(refused_people.len(), 2, "{refused_people:?}");
    let refused_ids: Vec<String> = refused.iter().map(|m| resource_of(m)).collect();
    assert_eq!(refused_ids.len(), refused_ids.iter().collect::<HashSet<_>>().len(), "an AE is not retried");
    let expected: HashSet<String> = allowed
        .iter()
        .filter(|r| !r.patient.as_ref().is_some_and(|p| refused_people.contains(p)))
        .map(|r| r.id.clone())
        .collect();
    let acked: Vec<String> = acknowledged(&received).values().flatten().map(resource_of).collect();
    assert_eq!(acked.iter().cloned().collect::<HashSet<_>>(), expected);
    // Exactly once per control id among the acknowledged.
    assert_eq!(acked.len(), expected.len(), "acknowledged twice");
    let dead = engine.store.outbox_list(Some("cito-hl7"), true, 10_000).await.unwrap();
    for id in &refused_ids {
        let row = dead.iter().find(|r| &r.item.key.id == id).expect("a refused message is a dead letter");
        assert!(row.last_error.as_deref().unwrap_or_default().contains("Refused by the engine's rule"), "{row:?}");
    }

    // Silence: no ACK within the timeout, sent again (same control id) and acknowledged.
    edit(&dir.path().join("hub/person.csv"), "Roberts,", "Robertz,");
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
async fn under_resets_and_silence_each_persons_messages_arrive_in_outbox_order_exactly_once() {
    let dir = TempDir::new("hl7v2-order");
    let Some(listener) = Listener::start(dir.path()) else { return };
    // Faults all through the run: every 4th message received is met by a reset, every 7th by silence.
    listener.set_mode("every reset=4 silent=7");
    let config = write_config_with(dir.path(), listener.port, "concurrency = 2\nbreaker_failures = 1000\n", "");
    let text = std::fs::read_to_string(&config).unwrap().replace("ack_timeout_seconds = 2", "ack_timeout_seconds = 1");
    std::fs::write(&config, text).unwrap();
    let engine = Engine::start(Config::load(&config).unwrap()).await.unwrap();
    // A pass stops at the first row it defers; cycles go on until the outbox holds only dead letters.
    for _ in 0..40 {
        engine.cycle(None, None, false, &no_shutdown()).await.unwrap();
        let rows = engine.store.outbox_list(Some("cito-hl7"), false, 10_000).await.unwrap();
        if rows.iter().all(|r| r.dead) {
            break;
        }
    }
    let rows = engine.store.outbox_list(Some("cito-hl7"), false, 10_000).await.unwrap();
    assert!(rows.iter().all(|r| r.dead), "still queued after 40 cycles");
    let received = listener.received();
    assert_all_valid(&received);
    let faults = received.iter().filter(|m| m["answer"] == "none").count();
    assert!(faults >= received.len() / 4, "{faults} faults in {} messages", received.len());

    // Everything allowed is acknowledged exactly once (by control id and by resource).
    let (allowed, _) = expected(&engine).await;
    let acked: Vec<&Value> = received.iter().filter(|m| m["answer"] == "AA").collect();
    let controls: HashSet<&str> = acked.iter().map(|m| m["control_id"].as_str().unwrap()).collect();
    assert_eq!(controls.len(), acked.len(), "a control id acknowledged twice");
    assert_eq!(acked.len(), allowed.len());

    // Per person, in outbox (planning) order: the Patient's A28 first, then their records; a message that met
    // a fault is the next one of that person on the wire again, before anything after it.
    let mut by_person: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for m in &received {
        by_person.entry(person_of(m)).or_default().push(m);
    }
    for (person, messages) in &by_person {
        let want: Vec<&str> =
            allowed.iter().filter(|r| r.patient.as_deref() == Some(person)).map(|r| r.id.as_str()).collect();
        let got: Vec<String> = messages.iter().filter(|m| m["answer"] == "AA").map(|m| resource_of(m)).collect();
        assert_eq!(got, want, "person {person}: acknowledged out of order");
        assert_eq!(messages[0]["type"], "ADT^A28^ADT_A05", "person {person}: a record before the Patient");
        for pair in messages.windows(2) {
            if pair[0]["answer"] == "none" {
                assert_eq!(pair[1]["control_id"], pair[0]["control_id"], "person {person}: overtaken after a fault");
            }
        }
    }
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
    assert!(
        out.contains(
            "cito-hl7: HL7 v2 messages defined for CarePlan, Encounter, Goal, Observation, Patient, \
             QuestionnaireResponse, ServiceRequest"
        ),
        "{out}"
    );
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

/// A test CA and a certificate it issued for 127.0.0.1 and localhost (openssl CLI), made fresh for the test:
/// (CA certificate, server certificate, server key).
fn test_ca(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl").args(args).current_dir(dir).output().expect("the openssl command");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &["-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=Connector test CA"],
            &["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        ]
        .concat(),
    );
    openssl(&[&["req"][..], &ec, &["-keyout", "engine.key", "-out", "engine.csr", "-subj", "/CN=localhost"]].concat());
    std::fs::write(
        dir.join("engine.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "engine.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "engine.pem",
        "-days",
        "2",
        "-extfile",
        "engine.ext",
    ]);
    (dir.join("ca.pem"), dir.join("engine.pem"), dir.join("engine.key"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_messages_go_only_to_an_engine_whose_certificate_is_trusted() {
    let dir = TempDir::new("hl7v2-tls");
    let (ca, cert, key) = test_ca(dir.path());
    let Some(listener) = Listener::start_tls(dir.path(), &cert, &key) else { return };
    let config = write_config(dir.path(), listener.port);
    let plain = std::fs::read_to_string(&config).unwrap();
    let tls = plain.replace("address = \"mllp://127.0.0.1:", "address = \"mllps://127.0.0.1:");
    let check = || {
        let out = Command::new(env!("CARGO_BIN_EXE_connector"))
            .arg("--config")
            .arg(&config)
            .args(["config", "check"])
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    };

    // The engine's CA is not trusted: config check says so and what to do; a cycle sends nothing.
    std::fs::write(&config, &tls).unwrap();
    let (code, out) = check();
    assert_ne!(code, Some(0), "{out}");
    assert!(out.contains("does not trust") && out.contains("hl7v2.ca_file"), "{out}");
    let engine = Engine::start(Config::load(&config).unwrap()).await.unwrap();
    engine.cycle(None, None, false, &no_shutdown()).await.unwrap();
    assert!(listener.received().is_empty(), "sent to an engine whose certificate is not trusted");
    let waiting = engine.store.outbox_list(Some("cito-hl7"), false, 10_000).await.unwrap();
    let why = waiting.iter().filter(|r| !r.dead).find_map(|r| r.last_error.clone()).expect("rows wait, saying why");
    assert!(why.contains("does not trust"), "{why}");
    drop(engine);

    // With the CA in hl7v2.ca_file: the handshake checks out and every message arrives, valid, acknowledged.
    let with_ca = format!("ack_timeout_seconds = 2\nca_file = \"{}\"\n", ca.display());
    std::fs::write(&config, tls.replace("ack_timeout_seconds = 2\n", &with_ca)).unwrap();
    let (code, out) = check();
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("accepts connections, with a trusted TLS certificate"), "{out}");
    assert!(listener.received().is_empty(), "config check sent a message");
    let engine = Engine::start(Config::load(&config).unwrap()).await.unwrap();
    engine.cycle(None, None, false, &no_shutdown()).await.unwrap();
    let received = listener.received();
    assert_all_valid(&received);
    let (allowed, _) = expected(&engine).await;
    assert_eq!(received.len(), allowed.len());
    assert!(received.iter().all(|m| m["answer"] == "AA"));
}
