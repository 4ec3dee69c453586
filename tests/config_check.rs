//! `connector config check` against a real Helios FHIR Server (metadata) and a small stand-in for PKB's
//! OAuth2 token endpoint (no local server has one): ready when everything answers; a secret readable by
//! its group or others fails the check; a refused secret or an unreachable destination fails the check (exit 1), and the
//! secret itself is never printed.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Hfs, TempDir};

const SECRET: &str = "s3cret-value-never-printed";

/// Answers client-credentials token requests: 200 with a token when Basic auth carries `york:<SECRET>`,
/// 401 otherwise. Runs on its own thread until the process ends.
fn token_endpoint() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = vec![0u8; 8192];
            let n = s.read(&mut buf).unwrap_or(0);
            let request = String::from_utf8_lossy(&buf[..n]).to_string();
            // base64("york:s3cret-value-never-printed")
            let good = request.lines().any(|l| {
                l.to_ascii_lowercase().starts_with("authorization: basic ")
                    && l[21..].trim() == "eW9yazpzM2NyZXQtdmFsdWUtbmV2ZXItcHJpbnRlZA=="
            });
            let (status, body) = if good {
                ("200 OK", r#"{"access_token":"tok","token_type":"bearer","expires_in":600,"scope":"none"}"#)
            } else {
                ("401 Unauthorized", r#"{"error":"invalid_client"}"#)
            };
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    format!("http://{addr}/oauth/token")
}

fn write_config(dir: &Path, fhir: &str, token_url: &str, secret: &str, mode: u32) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let secret_file = dir.join("pkb-secret");
    std::fs::write(&secret_file, format!("{secret}\n")).unwrap();
    std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(mode)).unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = format!(
        "[state]\nurl = \"sqlite://{}/state.db\"\n[mappings]\ndir = \"{}/mappings\"\n\
         [[partner]]\nid = \"hub\"\nsource = [{{ kind = \"person\", path = \"{}/tests/fixtures/hub/person.csv\" }}]\n\
         [[sharing]]\nname = \"ISA\"\npartner = \"hub\"\ndestination = \"pkb\"\ncategories = [\"general_health\"]\n\
         lawful_basis = \"6(1)(a)\"\n\
         [destination.pkb]\nprofile = \"pkb\"\nbase_url = \"{fhir}\"\n\
         [destination.pkb.auth]\ntoken_url = \"{token_url}\"\nclient_id = \"york\"\nclient_secret_file = \"pkb-secret\"\n",
        dir.display(),
        root.display(),
        root.display()
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn run_check(config: &Path, extra: &[&str]) -> std::process::Output {
    let out = Command::new(env!("CARGO_BIN_EXE_connector"))
        .args(["config", "check", "--config"])
        .arg(config)
        .args(extra)
        .env_remove("CREDENTIALS_DIRECTORY")
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!text.contains(SECRET), "the secret was printed: {text}");
    out
}

fn check(config: &Path) -> (i32, String) {
    let out = run_check(config, &[]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

/// `config check --format json`: the exit code and the document on stdout.
fn check_json(config: &Path) -> (i32, serde_json::Value) {
    let out = run_check(config, &["--format", "json"]);
    let doc = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    });
    (out.status.code().unwrap_or(-1), doc)
}

/// The messages of the checks at `level` (`ok`, `warn`, `fail`).
fn at_level<'a>(doc: &'a serde_json::Value, level: &str) -> Vec<&'a str> {
    let checks = doc["checks"].as_array().unwrap();
    checks.iter().filter(|c| c["level"] == level).filter_map(|c| c["message"].as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_check_passes_warns_and_fails_as_it_should() {
    let hfs = Hfs::start().await;
    let token = token_endpoint();

    let dir = TempDir::new("config-check-ok");
    let (code, out) = check(&write_config(dir.path(), &hfs.url(""), &token, SECRET, 0o600));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("issues a token") && out.contains("answers metadata (FHIR 4.0"), "{out}");
    assert!(out.contains("ready: 0 failed, 0 warning(s)"), "{out}");
    let (code, doc) = check_json(&dir.path().join("config.toml"));
    assert_eq!(code, 0, "{doc}");
    assert_eq!(
        (doc["ready"].as_bool(), doc["failed"].as_u64(), doc["warnings"].as_u64()),
        (Some(true), Some(0), Some(0))
    );
    assert!(at_level(&doc, "ok").iter().any(|m| m.contains("issues a token")), "{doc}");
    assert!(at_level(&doc, "fail").is_empty() && at_level(&doc, "warn").is_empty(), "{doc}");

    let dir = TempDir::new("config-check-mode");
    let (code, out) = check(&write_config(dir.path(), &hfs.url(""), &token, SECRET, 0o644));
    assert_eq!(code, 1, "a secret others can read fails the check: {out}");
    assert!(out.contains("FAIL") && out.contains("readable by everyone") && out.contains("chmod 600"), "{out}");
    let dir = TempDir::new("config-check-group");
    let (code, out) = check(&write_config(dir.path(), &hfs.url(""), &token, SECRET, 0o640));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAIL") && out.contains("readable by its group"), "{out}");

    let dir = TempDir::new("config-check-bad-secret");
    let (code, out) = check(&write_config(dir.path(), &hfs.url(""), &token, "wrong-secret", 0o600));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAIL") && out.contains("token endpoint") && out.contains("401"), "{out}");

    let dir = TempDir::new("config-check-unreachable");
    let nobody = format!("http://127.0.0.1:{}", common::free_port());
    let (code, out) = check(&write_config(dir.path(), &nobody, &token, SECRET, 0o600));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAIL  destination pkb") && out.contains("/metadata"), "{out}");
    assert!(out.contains("NOT READY"), "{out}");
    let (code, doc) = check_json(&dir.path().join("config.toml"));
    assert_eq!(code, 1, "{doc}");
    assert_eq!(doc["ready"], false);
    let failed = at_level(&doc, "fail");
    assert_eq!(doc["failed"].as_u64(), Some(failed.len() as u64));
    assert!(failed.iter().any(|m| m.starts_with("destination pkb") && m.contains("/metadata")), "{doc}");

    // A config that does not load is a failed check too, in the same document.
    std::fs::write(dir.path().join("config.toml"), "[state]\nurl = \"sqlite://x.db\"\nshedule = 1\n").unwrap();
    let (code, doc) = check_json(&dir.path().join("config.toml"));
    assert_eq!((code, doc["ready"].as_bool(), doc["failed"].as_u64()), (1, Some(false), Some(1)), "{doc}");
    assert!(at_level(&doc, "fail")[0].contains("config.toml:3: unknown field `shedule`"), "{doc}");
}
