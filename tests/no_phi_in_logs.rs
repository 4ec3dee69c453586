//! A full cycle with every partner's fixtures at trace level (every crate), through real Helios FHIR Servers
//! and a PKB token endpoint stand-in: no fixture person's name, NHS number, date of birth, address, phone or
//! email, and not the client secret, appears anywhere in the output, in text or JSON log format.
//!
//! The same holds when things go wrong: a destination that cannot be reached, one that hangs (the fault
//! proxy), one that answers with diagnostics quoting the resource sent, a token endpoint that refuses (small
//! stand-ins: no local server quotes resources back or has a token endpoint), and an export without its
//! header row; neither the log nor `connector outbox list` carries personal data, and no request target
//! sent to a destination carries an NHS number.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::proxy::{Fault, FaultPlan, FaultProxy};
use common::{Hfs, TempDir};
use serde_json::Value;
use york_connector::config::Config;
use york_connector::mapping::{self, MappedResource, Quarantined, Sink};

const SECRET: &str = "pkb-client-secret-7f3a9c";

/// Grants a token to anyone (the secret is only checked for not leaking).
fn token_endpoint() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = vec![0u8; 8192];
            let _ = s.read(&mut buf);
            let body = r#"{"access_token":"tok-123","token_type":"bearer","expires_in":600}"#;
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    format!("http://{addr}/token")
}

/// Personal data in the fixtures, as the mapping reads it (names, NHS numbers, dates of birth, addresses,
/// phones, emails of people and carers), plus the Hub's dates of birth as written in the export.
fn personal_data(config: &Config) -> Vec<String> {
    struct Collect(Vec<String>);
    impl Sink for Collect {
        fn resource(&mut self, r: &MappedResource<'_>) -> std::io::Result<()> {
            if !matches!(r.resource_type, "Patient" | "RelatedPerson") {
                return Ok(());
            }
            let v = &r.resource();
            let mut push = |x: &Value| {
                if let Some(s) = x.as_str() {
                    self.0.push(s.to_string());
                }
            };
            for n in v["name"].as_array().into_iter().flatten() {
                push(&n["family"]);
                n["given"].as_array().into_iter().flatten().for_each(&mut push);
            }
            push(&v["birthDate"]);
            for i in v["identifier"].as_array().into_iter().flatten() {
                if i["system"] == "https://fhir.nhs.uk/Id/nhs-number" {
                    push(&i["value"]);
                }
            }
            for a in v["address"].as_array().into_iter().flatten() {
                a["line"].as_array().into_iter().flatten().for_each(&mut push);
                push(&a["postalCode"]);
            }
            for t in v["telecom"].as_array().into_iter().flatten() {
                push(&t["value"]);
            }
            Ok(())
        }
        fn quarantined(&mut self, _: &Quarantined) -> std::io::Result<()> {
            Ok(())
        }
    }
    let catalog = mapping::load_catalog(&config.resolve(&config.mappings.dir)).unwrap();
    let mut out = Collect(Vec::new());
    for p in &config.partners {
        let inputs = common::file_inputs(config, p);
        mapping::run(&catalog.partners[&p.id], &inputs, &mut out).unwrap();
    }
    let hub = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hub/person.csv")).unwrap();
    for line in String::from_utf8_lossy(&hub).lines().skip(1) {
        if let Some(dob) = line.split(',').nth(3).filter(|d| d.contains('/')) {
            out.0.push(dob.to_string());
        }
    }
    let mut v: Vec<String> = out.0.into_iter().filter(|s| s.chars().count() >= 4).collect();
    v.sort();
    v.dedup();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_level_cycle_logs_no_personal_data_and_no_secret() {
    let (cito, pkb) = (Hfs::start().await, Hfs::start().await);
    let token = token_endpoint();
    let dir = TempDir::new("no-phi");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::write(dir.path().join("pkb-secret"), SECRET).unwrap();
    let mut text = format!(
        "[state]\nurl = \"sqlite://{}/state.db\"\n[mappings]\ndir = \"{}/mappings\"\n",
        dir.path().display(),
        root.display()
    );
    let partners = ["hub", "york-mind", "carers-centre"];
    for p in partners {
        let mut files: Vec<_> = std::fs::read_dir(root.join("tests/fixtures").join(p))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|f| f.is_file() && f.extension().is_some_and(|e| e != "md"))
            .collect();
        files.sort();
        text.push_str(&format!("[[partner]]\nid = \"{p}\"\nsource = [\n"));
        for f in files {
            let kind = f.file_stem().unwrap().to_string_lossy().to_string();
            text.push_str(&format!("  {{ kind = \"{kind}\", path = \"{}\" }},\n", f.display()));
        }
        text.push_str("]\n");
    }
    text.push_str(&format!(
        "[destination.cito]\nprofile = \"cito\"\nbase_url = \"{}\"\nrate_limit_per_second = 500\n\
         [destination.pkb]\nprofile = \"pkb\"\nbase_url = \"{}\"\nrate_limit_per_second = 500\n\
         [destination.pkb.auth]\ntoken_url = \"{token}\"\nclient_id = \"york\"\nclient_secret_file = \"pkb-secret\"\n",
        cito.url(""),
        pkb.url("")
    ));
    text.push_str(&common::open_sharing(&partners, &["cito", "pkb"]));
    let config = dir.path().join("config.toml");
    std::fs::write(&config, text).unwrap();
    let phi = personal_data(&Config::load(&config).unwrap());
    assert!(phi.len() > 40, "collected {} personal values: {phi:?}", phi.len());

    for format in ["text", "json"] {
        // A fresh state each time, so the second run sends everything again too.
        let _ = std::fs::remove_file(dir.path().join("state.db"));
        let out = Command::new(env!("CARGO_BIN_EXE_connector"))
            .args(["sync", "--once", "--log-format", format, "--config"])
            .arg(&config)
            .env("CONNECTOR_LOG", "trace")
            .env_remove("CREDENTIALS_DIRECTORY")
            .output()
            .unwrap();
        let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(all.lines().count() > 1000, "{format}: trace logging is on ({} lines)", all.lines().count());
        assert!(all.contains("Delivered."), "{format}: the cycle ran: {}", &all[all.len().saturating_sub(2000)..]);
        let found: Vec<&String> = phi.iter().filter(|v| all.contains(v.as_str())).collect();
        assert!(found.is_empty(), "{format}: personal data in the log output: {found:?}");
        assert!(!all.contains(SECRET), "{format}: the client secret is in the log output");
        assert!(!all.contains("tok-123"), "{format}: the access token is in the log output");
    }
}

/// A stand-in HTTP server: `answer(method, target, body)` gives the status and JSON body of each request.
fn stand_in(answer: fn(&str, &str, &str) -> (u16, String)) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut buf = Vec::new();
            let mut chunk = [0u8; 65536];
            let head_end = loop {
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break Some(i + 4);
                }
                match s.read(&mut chunk) {
                    Ok(0) | Err(_) => break None,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            };
            let Some(head_end) = head_end else { continue };
            let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
            let length: usize = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            while buf.len() < head_end + length {
                match s.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let body = String::from_utf8_lossy(&buf[head_end..]).to_string();
            let mut words = head.split_whitespace();
            let (method, target) = (words.next().unwrap_or_default(), words.next().unwrap_or_default());
            let (status, answer) = answer(method, target, &body);
            let _ = write!(
                s,
                "HTTP/1.1 {status} X\r\nContent-Type: application/fhir+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                answer.len()
            );
        }
    });
    format!("http://{addr}")
}

/// An OperationOutcome whose diagnostics quote `text` (as servers do with the resource they refuse).
fn quoting(text: &str) -> String {
    serde_json::json!({"resourceType": "OperationOutcome", "issue": [
        {"severity": "error", "code": "invalid", "diagnostics": format!("cannot accept {text}")}
    ]})
    .to_string()
}

fn empty_search() -> String {
    r#"{"resourceType":"Bundle","type":"searchset","total":0,"entry":[]}"#.to_string()
}

/// Searches find nothing; every transaction is refused for good (400) quoting the bundle.
fn refusing(method: &str, target: &str, body: &str) -> (u16, String) {
    match (method, target.ends_with("/_search")) {
        ("POST", true) => (200, empty_search()),
        ("POST", false) => (400, quoting(body)),
        _ => (404, quoting(target)),
    }
}

/// Searches find nothing; every transaction gets a 503 quoting the bundle (retried, then deferred).
fn busy(method: &str, target: &str, body: &str) -> (u16, String) {
    match (method, target.ends_with("/_search")) {
        ("POST", true) => (200, empty_search()),
        ("POST", false) => (503, quoting(body)),
        _ => (404, quoting(target)),
    }
}

/// A token endpoint that refuses the client, quoting what it was sent.
fn refusing_tokens(_: &str, target: &str, body: &str) -> (u16, String) {
    (401, serde_json::json!({"error": "invalid_client", "error_description": format!("{target} {body}")}).to_string())
}

/// The personal data in the fixtures of `partners`, read through a config over the untouched fixtures.
fn fixture_personal_data(partners: &[&str]) -> Vec<String> {
    let dir = TempDir::new("no-phi-fixtures");
    let text = format!(
        "[state]\nurl = \"sqlite://{}/state.db\"\n[mappings]\ndir = \"{}/mappings\"\n{}",
        dir.path().display(),
        env!("CARGO_MANIFEST_DIR"),
        common::copy_fixtures(dir.path(), partners)
    );
    let config = dir.path().join("config.toml");
    std::fs::write(&config, text).unwrap();
    personal_data(&Config::load(&config).unwrap())
}

fn run(config: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_connector"))
        .args(args)
        .arg("--config")
        .arg(config)
        .env("CONNECTOR_LOG", "trace")
        .env_remove("CREDENTIALS_DIRECTORY")
        .output()
        .unwrap();
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Item 11 and 14 of issue 12: a cycle at trace level against destinations that fail in every way leaks no
/// personal data into the log or the outbox's `last_error` (shown by `connector outbox list`). Before, the
/// Patient search URL (with the NHS number) was in every `Retrying.` line and in `last_error`, and a 5xx's
/// diagnostics (quoting the bundle) were logged at WARN.
#[test]
fn failing_destinations_log_no_personal_data() {
    let partners = ["hub"];
    let phi = fixture_personal_data(&partners);
    assert!(phi.len() > 20, "collected {} personal values: {phi:?}", phi.len());
    let dir = TempDir::new("no-phi-failing");
    std::fs::write(dir.path().join("pkb-secret"), SECRET).unwrap();
    let unreachable = format!("http://127.0.0.1:{}", common::free_port());
    // A destination that hangs past the client's timeout: the fault proxy, answering nothing.
    let hanging = FaultProxy::start(&unreachable, FaultPlan::always(Fault::Timeout).hang_for(Duration::from_secs(5)));
    let (refused, unavailable, tokens) = (stand_in(refusing), stand_in(busy), stand_in(refusing_tokens));
    let dests = ["down", "slow", "refusing", "busy", "pkb"];
    let mut text = format!(
        "[state]\nurl = \"sqlite://{}/state.db\"\n[mappings]\ndir = \"{}/mappings\"\n{}",
        dir.path().display(),
        env!("CARGO_MANIFEST_DIR"),
        common::copy_fixtures(dir.path(), &partners)
    );
    for (name, url) in [
        ("down", unreachable.as_str()),
        ("slow", hanging.base_url()),
        ("refusing", refused.as_str()),
        ("busy", unavailable.as_str()),
    ] {
        text.push_str(&format!(
            "[destination.{name}]\nprofile = \"cito\"\nbase_url = \"{url}\"\nrate_limit_per_second = 500\n\
             max_attempts = 2\ntimeout_seconds = 1\n"
        ));
    }
    text.push_str(&format!(
        "[destination.pkb]\nprofile = \"pkb\"\nbase_url = \"{refused}\"\nrate_limit_per_second = 500\nmax_attempts = 2\n\
         [destination.pkb.auth]\ntoken_url = \"{tokens}/token\"\nclient_id = \"york\"\nclient_secret_file = \"pkb-secret\"\n"
    ));
    text.push_str(&common::open_sharing(&partners, &dests));
    let config = dir.path().join("config.toml");
    std::fs::write(&config, text).unwrap();

    let log = run(&config, &["sync", "--once"]);
    // Each failure happened: a connection refused, a timeout, a refusal, a 503, a refused token.
    for expected in ["could not connect", "timed out", "Rejected; dead-lettered.", "503", "token endpoint answered 401"]
    {
        assert!(log.contains(expected), "the log shows {expected:?}: {}", &log[log.len().saturating_sub(3000)..]);
    }
    // What the connector itself wrote into `last_error` (network failures, a refused token): no personal
    // data. (A server's own words, kept there for an admin on purpose, are checked below.)
    let mut outbox = String::new();
    for d in ["down", "slow", "pkb"] {
        let listed = run(&config, &["outbox", "list", "--destination", d, "--limit", "10000", "--format", "json"]);
        assert!(listed.contains("last_error"), "the outbox lists {d}'s rows: {listed}");
        outbox.push_str(&listed);
    }
    let dead = run(&config, &["outbox", "list", "--dead", "--limit", "10000", "--format", "json"]);
    for (what, text) in [("log", &log), ("outbox list", &outbox)] {
        let found: Vec<&String> = phi.iter().filter(|v| text.contains(v.as_str())).collect();
        assert!(found.is_empty(), "{what}: personal data: {found:?}");
        assert!(!text.contains(SECRET), "{what}: the client secret");
    }
    // The refused writes keep the server's words for an admin, in the dead letter only.
    assert!(dead.contains("cannot accept"), "the dead letters keep the server's diagnostics: {dead}");
    // Searches go in a posted batch bundle (or as POST _search): no NHS number in a URL, so none in a
    // destination's access log.
    let targets: Vec<String> = hanging.log().iter().map(|r| r.target.clone()).collect();
    assert!(!targets.is_empty(), "the hanging destination was asked");
    assert!(targets.iter().all(|t| t == "/" || t.ends_with("/_search")), "searched by POST: {targets:?}");
    let found: Vec<&String> = phi.iter().filter(|v| targets.iter().any(|t| t.contains(v.as_str()))).collect();
    assert!(found.is_empty(), "personal data in request targets: {found:?}");
}

/// Item 12 and must-show 3 of issue 12: an export without its header row, at trace level, logs none of the
/// first row's values (it used to log the whole first record as "the header has: ...").
#[test]
fn a_headerless_export_logs_no_personal_data() {
    let partners = ["hub"];
    let dir = TempDir::new("no-phi-headerless");
    let mut text = format!(
        "[state]\nurl = \"sqlite://{}/state.db\"\n[mappings]\ndir = \"{}/mappings\"\n{}",
        dir.path().display(),
        env!("CARGO_MANIFEST_DIR"),
        common::copy_fixtures(dir.path(), &partners)
    );
    text.push_str(&common::open_sharing(&partners, &[]));
    let person = dir.path().join("hub/person.csv");
    let bytes = std::fs::read(&person).unwrap();
    let header_end = bytes.iter().position(|&b| b == b'\n').unwrap() + 1;
    std::fs::write(&person, &bytes[header_end..]).unwrap();
    // What leaked: the first row's cells, as written, besides the fixtures' values as mapped.
    let first = String::from_utf8_lossy(&bytes[header_end..]).lines().next().unwrap().to_string();
    let mut phi = fixture_personal_data(&partners);
    phi.extend(
        first
            .split(',')
            .skip(1)
            .filter(|c| c.chars().count() >= 4 && !matches!(*c, "White - British" | "York"))
            .map(str::to_string),
    );
    let config = dir.path().join("config.toml");
    std::fs::write(&config, text).unwrap();

    let log = run(&config, &["sync", "--once", "--dry-run"]);
    assert!(log.to_lowercase().contains("person.csv"), "the damaged export is reported: {log}");
    let found: Vec<&String> = phi.iter().filter(|v| log.contains(v.as_str())).collect();
    assert!(found.is_empty(), "personal data in the log: {found:?}");
}
