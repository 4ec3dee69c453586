//! A full cycle with every partner's fixtures at trace level (every crate), through real Helios FHIR Servers
//! and a PKB token endpoint stand-in: no fixture person's name, NHS number, date of birth, address, phone or
//! email, and not the client secret, appears anywhere in the output, in text or JSON log format.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;

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
            let v = r.resource;
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
        let inputs: Vec<_> =
            p.sources.iter().map(|s| mapping::Input { kind: s.kind, path: config.resolve(&s.path) }).collect();
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
