//! Inbox sources under a running daemon: files dropped into a partner's SFTP folder while `connector run`
//! works. One is written slowly in pieces, one is uploaded as `.part` and renamed, one cannot be read. Each is
//! read exactly once and in name order (the slow one only once complete, the later ones waiting behind it); the
//! unreadable one goes to `rejected/` with its reason; archive and rejected are owner-only; an old archive is
//! purged; a restart reads nothing again (even a file put back into the inbox); `connector status` and
//! `/metrics` show the source's newest file and when it was last read through.

mod common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use common::daemon::{self, Daemon};
use common::{TempDir, free_port};

const ARCHIVED: &str = "Inbox file read and archived.";

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// The Hub's person export (Windows-1252 bytes), header and rows.
fn hub_people() -> (Vec<u8>, Vec<Vec<u8>>) {
    let text = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hub/person.csv")).unwrap();
    let mut lines: Vec<Vec<u8>> = text.split(|b| *b == b'\n').map(<[u8]>::to_vec).filter(|l| !l.is_empty()).collect();
    let header = lines.remove(0);
    (header, lines)
}

fn file_with(header: &[u8], rows: &[Vec<u8>]) -> Vec<u8> {
    let mut out = header.to_vec();
    out.push(b'\n');
    for r in rows {
        out.extend_from_slice(r);
        out.push(b'\n');
    }
    out
}

/// The positions in the log of each line saying `file` was archived.
fn archived_lines(log: &str, file: &str) -> Vec<usize> {
    log.lines().enumerate().filter(|(_, l)| l.contains(ARCHIVED) && l.contains(file)).map(|(i, _)| i).collect()
}

#[test]
fn dropped_files_are_read_once_in_order_and_only_when_complete() {
    let dir = TempDir::new("inbox");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mappings = dir.path().join("mappings");
    std::fs::create_dir_all(&mappings).unwrap();
    assert!(Command::new("cp").arg("-r").arg(root.join("mappings/hub")).arg(&mappings).status().unwrap().success());
    let inbox = dir.path().join("in");
    std::fs::create_dir_all(inbox.join("archive")).unwrap();
    // An archive from long ago: purged (keep_days = 1).
    let old = inbox.join("archive/hub-person-0.csv");
    std::fs::write(&old, b"old").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(3 * 86_400))
        .unwrap();
    let port = free_port();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[state]\nurl = \"sqlite://{d}/state.db\"\n[mappings]\ndir = \"{d}/mappings\"\n[ops]\nlisten = \"127.0.0.1:{port}\"\n\
             [[partner]]\nid = \"hub\"\nschedule = \"* * * * * *\"\n\
             [[partner.source]]\nkind = \"person\"\ninbox = \"{d}/in\"\nfiles = \"hub-person-*.csv\"\nsettle_seconds = 2\nkeep_days = 1\n",
            d = dir.path().display()
        ),
    )
    .unwrap();
    let log = dir.path().join("daemon.log");
    let mut d = Daemon::start(&config, &log);
    d.wait_for("Partner ingested.", 0);
    assert!(!old.exists(), "the three-day-old archive was purged");

    let (header, rows) = hub_people();
    // 1. Written slowly: a piece every 700 ms, so it keeps changing for longer than the settle time.
    // 2. Uploaded as .part while 1 is being written, then renamed: complete, but waits behind 1.
    // 3. Cannot be read: its header is not the export's.
    let slow_path = inbox.join("hub-person-1.csv");
    let mut slow = std::fs::File::create(&slow_path).unwrap();
    slow.write_all(&file_with(&header, &rows[..1])).unwrap();
    let part = inbox.join("hub-person-2.csv.part");
    std::fs::write(&part, file_with(&header, &rows[1..3])).unwrap();
    std::fs::write(inbox.join("hub-person-3.csv"), b"Nothing,Here\nat,all\n").unwrap();
    for (i, row) in rows[1..].iter().enumerate() {
        std::thread::sleep(Duration::from_millis(700));
        slow.write_all(row).unwrap();
        slow.write_all(b"\n").unwrap();
        slow.flush().unwrap();
        if i == 1 {
            std::fs::rename(&part, inbox.join("hub-person-2.csv")).unwrap();
        }
        assert!(archived_lines(&d.log(), "hub-person-1.csv").is_empty(), "file 1 was read while still being written");
        assert!(archived_lines(&d.log(), "hub-person-2.csv").is_empty(), "file 2 was read before file 1");
    }
    drop(slow);
    let full = std::fs::read(&slow_path).unwrap();
    d.wait_for("Inbox file could not be read", 0);
    let text = d.log();
    let (one, two) = (archived_lines(&text, "hub-person-1.csv"), archived_lines(&text, "hub-person-2.csv"));
    assert_eq!((one.len(), two.len()), (1, 1), "each read once:\n{text}");
    assert!(one[0] < two[0], "in order:\n{text}");

    // What is where, owner-only.
    let archived = inbox.join("archive/hub-person-1.csv");
    assert_eq!(std::fs::read(&archived).unwrap(), full, "the slow file was read only once complete");
    assert!(inbox.join("archive/hub-person-2.csv").is_file());
    let rejected = inbox.join("rejected/hub-person-3.csv");
    assert!(rejected.is_file());
    let reason = std::fs::read_to_string(inbox.join("rejected/hub-person-3.csv.reason.txt")).unwrap();
    assert!(reason.contains("Client ID"), "the reason names what is missing: {reason}");
    for p in [inbox.join("archive"), inbox.join("rejected")] {
        assert_eq!(mode(&p), 0o700, "{}", p.display());
    }
    for p in [archived.clone(), rejected] {
        assert_eq!(mode(&p), 0o600, "{}", p.display());
    }
    assert_eq!(std::fs::read_dir(&inbox).unwrap().filter(|e| e.as_ref().unwrap().path().is_file()).count(), 0);

    // The source's freshness, for alerting.
    let metrics = daemon::get(port, "/metrics").unwrap();
    assert!(
        metrics.contains("connector_source_last_success_timestamp_seconds{partner=\"hub\",kind=\"person\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("connector_source_newest_file_timestamp_seconds{partner=\"hub\",kind=\"person\"}"));
    assert_eq!(d.stop(), Some(0), "{}", d.log());

    // A restart reads nothing again, even file 2 put back into the inbox (a re-upload, or a crash before it
    // was moved): it is recognised by its content and archived unread.
    std::fs::copy(inbox.join("archive/hub-person-2.csv"), inbox.join("hub-person-2.csv")).unwrap();
    let mut d = Daemon::start(&config, &log);
    d.wait_for("Inbox file already read", 0);
    let ingested = d.log().matches("Partner ingested.").count();
    d.wait_for("Partner ingested.", ingested);
    assert_eq!(d.log().matches(ARCHIVED).count(), 2, "nothing read twice:\n{}", d.log());
    assert!(!inbox.join("hub-person-2.csv").exists());
    assert_eq!(d.stop(), Some(0));

    let status =
        Command::new(env!("CARGO_BIN_EXE_connector")).args(["status", "--config"]).arg(&config).output().unwrap();
    let out = String::from_utf8_lossy(&status.stdout);
    assert!(out.contains("source hub/person") && out.contains("hub-person-2.csv"), "{out}");
}

/// `connector sync --once`: exit code and the partner's report.
fn sync_json(config: &Path) -> (i32, serde_json::Value) {
    let (code, report) = common::sync_json(config, &[]);
    (code, report["ingest"][0].clone())
}

#[test]
fn an_unreadable_consent_export_from_an_inbox_holds_the_partner_until_one_is_read() {
    let dir = TempDir::new("inbox-consent");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let inbox = dir.path().join("in");
    std::fs::create_dir_all(&inbox).unwrap();
    std::fs::copy(root.join("tests/fixtures/hub/person.csv"), dir.path().join("person.csv")).unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[state]\nurl = \"sqlite://{d}/state.db\"\n[mappings]\ndir = \"{m}/mappings\"\n\
             [[partner]]\nid = \"hub\"\nsource = [\n  {{ kind = \"person\", path = \"{d}/person.csv\" }},\n\
               {{ kind = \"consent\", inbox = \"{d}/in\", files = \"hub-consent-*.csv\", settle_seconds = 0 }},\n]\n",
            d = dir.path().display(),
            m = root.display()
        ),
    )
    .unwrap();
    // A consent export that cannot be read: rejected, and the partner's data about people held.
    std::fs::write(inbox.join("hub-consent-1.csv"), b"Nothing,Here\nat,all\n").unwrap();
    let (code, r) = sync_json(&config);
    assert_eq!(code, 1, "{r}");
    assert!(r["consent_unreadable"].as_str().unwrap().contains("hub-consent-1.csv"), "{r}");
    assert!(inbox.join("rejected/hub-consent-1.csv").is_file());
    // The next cycle brings no consent export: the hold stands (also across this new process).
    let (_, r) = sync_json(&config);
    assert!(r["consent_unreadable"].is_string(), "the hold stands until a consent export is read: {r}");
    // A readable one lifts it.
    std::fs::copy(root.join("tests/fixtures/hub/consent.csv"), inbox.join("hub-consent-2.csv")).unwrap();
    let (_, r) = sync_json(&config);
    assert!(r.get("consent_unreadable").is_none(), "{r}");
    assert!(inbox.join("archive/hub-consent-2.csv").is_file());
}
