//! Black-box, item 25 of issue 12: a destination whose `next` link points back at the page just read used to
//! make `connector reconcile` (and pull and feeds, which share the paging) read forever. Now it stops with an
//! error naming the destination. The stand-in server is needed: no real server sends such links.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::TempDir;

/// Answers every request with an empty search page whose `next` link is the request itself.
fn looping_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut buf = vec![0u8; 65536];
            let n = s.read(&mut buf).unwrap_or(0);
            let head = String::from_utf8_lossy(&buf[..n]).to_string();
            let target = head.split_whitespace().nth(1).unwrap_or("/").to_string();
            let body = serde_json::json!({
                "resourceType": "Bundle", "type": "searchset", "entry": [],
                "link": [{"relation": "next", "url": target.trim_start_matches('/')}]
            })
            .to_string();
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    format!("http://{addr}")
}

#[test]
fn a_next_link_back_to_the_same_page_stops_reconcile() {
    let dir = TempDir::new("looping-pages");
    let base = looping_server();
    let text = format!(
        "[state]\nurl = \"sqlite://{}/state.db\"\n[mappings]\ndir = \"{}/mappings\"\n{}\
         [destination.cito]\nprofile = \"cito\"\nbase_url = \"{base}\"\nrate_limit_per_second = 500\n{}",
        dir.path().display(),
        env!("CARGO_MANIFEST_DIR"),
        common::copy_fixtures(dir.path(), &["hub"]),
        common::open_sharing(&["hub"], &["cito"])
    );
    let config = dir.path().join("config.toml");
    std::fs::write(&config, text).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_connector"))
        .args(["reconcile", "--destination", "cito", "--config"])
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
    let status = status.unwrap_or_else(|| panic!("reconcile was still reading pages after 60 s: {stderr}"));
    assert!(!status.success(), "reconcile fails: {stderr}");
    assert!(stderr.contains("destination cito") && stderr.contains("already read"), "{stderr}");
}
