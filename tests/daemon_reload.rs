//! `connector run` and SIGHUP: a new configuration is proved whole (mappings, schedules, the ops address)
//! while the running one carries on. A broken mapping, a bad cron expression or an ops address that cannot
//! be bound is refused with the reason in the log, and the daemon keeps running the old configuration; a
//! good one is then loaded and used. SIGTERM then stops it with exit 0.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::daemon::{self, Daemon};
use common::{TempDir, copy_fixtures, free_port};

/// `GET /healthz` on the ops port: the status line, or `None` when nothing listens there.
fn healthz(port: u16) -> Option<String> {
    daemon::get(port, "/healthz").and_then(|t| t.lines().next().map(str::to_string))
}

fn write_config(dir: &Path, partners: &str, schedule: &str, port: u16) -> PathBuf {
    let path = dir.join("config.toml");
    let text = format!(
        "[state]\nurl = \"sqlite://{d}/state.db\"\n[mappings]\ndir = \"{d}/mappings\"\n\
         [ops]\nlisten = \"127.0.0.1:{port}\"\n{partners}",
        d = dir.display()
    );
    // Every partner table gets the schedule under test.
    let text =
        text.replace("[[partner]]\nid = \"hub\"\n", &format!("[[partner]]\nid = \"hub\"\nschedule = \"{schedule}\"\n"));
    std::fs::write(&path, text).unwrap();
    path
}

/// What the log says of an ingest job: planned, or not planned again (nothing changed since the last full plan).
const INGESTS: [&str; 2] = ["Partner ingested.", "not planned again"];

fn ingests(daemon: &Daemon) -> usize {
    let log = daemon.log();
    INGESTS.iter().map(|t| log.matches(t).count()).sum()
}

/// Sends SIGHUP and checks the reload is refused, saying `reason`, while the old configuration runs on.
fn refused(daemon: &mut Daemon, port: u16, earlier: usize, what: &str, reason: &str) {
    daemon.signal("HUP");
    let log = daemon.wait_for("Reload refused", earlier);
    let refusal = log.lines().filter(|l| l.contains("Reload refused")).nth(earlier).unwrap();
    assert!(refusal.contains(reason), "{what}: the refusal says why ({reason}): {refusal}");
    daemon.assert_running();
    assert_eq!(healthz(port).as_deref(), Some("HTTP/1.1 200 OK"), "{what}: the old ops listener still answers");
    // The old configuration's jobs go on.
    let ingested = ingests(daemon);
    daemon.wait_for_any(&INGESTS, ingested);
}

#[test]
fn a_reload_that_does_not_prove_keeps_the_old_configuration_running() {
    let dir = TempDir::new("daemon-reload");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mappings = dir.path().join("mappings");
    std::fs::create_dir_all(&mappings).unwrap();
    assert!(Command::new("cp").arg("-r").arg(root.join("mappings/hub")).arg(&mappings).status().unwrap().success());
    let partners = copy_fixtures(dir.path(), &["hub"]);
    let port = free_port();
    // Every two seconds: the old configuration is seen to keep working between reloads.
    let config = write_config(dir.path(), &partners, "*/2 * * * * *", port);

    let mut daemon = Daemon::start(&config, &dir.path().join("daemon.log"));
    daemon.wait_for("Partner ingested.", 0);
    assert_eq!(healthz(port).as_deref(), Some("HTTP/1.1 200 OK"));

    // 1. A broken mapping.
    let person = mappings.join("hub/person.toml");
    let good_mapping = std::fs::read_to_string(&person).unwrap();
    std::fs::write(&person, format!("{good_mapping}\n[this is not = toml\n")).unwrap();
    refused(&mut daemon, port, 0, "broken mapping", "person.toml");
    // 2. A cron expression with a minute 61.
    std::fs::write(&person, &good_mapping).unwrap();
    write_config(dir.path(), &partners, "61 * * * *", port);
    refused(&mut daemon, port, 1, "bad cron expression", "61 * * * *");
    // 3. An ops address another process holds.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    write_config(dir.path(), &partners, "*/2 * * * * *", taken.local_addr().unwrap().port());
    refused(&mut daemon, port, 2, "unbindable ops address", "ops.listen");
    assert_eq!(daemon.log().matches("Configuration reloaded.").count(), 0);

    // 4. A good configuration on a new port is loaded and used; the old port is let go.
    drop(taken);
    let new_port = free_port();
    write_config(dir.path(), &partners, "*/3 * * * * *", new_port);
    daemon.signal("HUP");
    daemon.wait_for("Configuration reloaded.", 0);
    daemon.wait_for("Connector running.", 1);
    assert_eq!(healthz(new_port).as_deref(), Some("HTTP/1.1 200 OK"), "the new ops address answers");
    assert_eq!(healthz(port), None, "the old ops address was let go");
    let ingested = ingests(&daemon);
    daemon.wait_for_any(&INGESTS, ingested);

    // 5. Reloading with the same ops address keeps the listener (the port cannot be bound twice).
    daemon.signal("HUP");
    daemon.wait_for("Configuration reloaded.", 1);
    daemon.wait_for("Connector running.", 2);
    assert_eq!(healthz(new_port).as_deref(), Some("HTTP/1.1 200 OK"));

    assert_eq!(daemon.stop(), Some(0), "{}", daemon.log());
    assert!(daemon.log().contains("Connector stopped."));
}
