//! Black-box: a destination with a plain `http://` URL to a non-loopback host is refused when the connector
//! starts (both the one-shot cycle and the service), with a message naming the destination and the setting
//! that allows it; nothing is read or sent. With `allow_insecure_http = true` it starts and warns.

mod common;

use std::path::Path;
use std::process::Command;

use common::TempDir;

fn config(dir: &Path, extra: &str) -> std::path::PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = format!(
        "[state]\nurl = \"sqlite://{}/state.db\"\n[mappings]\ndir = \"{}/mappings\"\n\
         [destination.cito]\nprofile = \"cito\"\nbase_url = \"http://cito.example.nhs.uk/fhir\"\n{extra}",
        dir.display(),
        root.display()
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn plain_http_to_a_remote_destination_is_refused_at_start() {
    let dir = TempDir::new("insecure-http");
    let cfg = config(dir.path(), "");
    for args in [vec!["sync", "--once"], vec!["run"]] {
        let out = Command::new(env!("CARGO_BIN_EXE_connector")).args(&args).arg("--config").arg(&cfg).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains("destination.cito") && stderr.contains("allow_insecure_http = true"),
            "{args:?}: the message names the destination and the setting: {stderr}"
        );
        assert!(!dir.path().join("state.db").exists(), "{args:?} opened the state store before refusing");
    }
}

#[test]
fn allow_insecure_http_lets_it_start_with_a_warning() {
    let dir = TempDir::new("insecure-http-allowed");
    let cfg = config(dir.path(), "allow_insecure_http = true\n");
    let out = Command::new(env!("CARGO_BIN_EXE_connector"))
        .args(["sync", "--once", "--dry-run", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("allow_insecure_http") && stderr.contains("unencrypted"), "warned: {stderr}");
}
