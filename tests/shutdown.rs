//! Black-box: `connector run` stopped with SIGTERM while a delivery waits out a server's `Retry-After`. The
//! destination (Helios FHIR Server behind the fault proxy) answers every write `503` with `Retry-After: 50`,
//! which the connector honours within the pass (up to a minute). SIGTERM must end that wait at once: the
//! daemon exits 0 within a second or two, and no outbox row is left leased (other instances, or the next
//! start, can take the rows at once).

mod common;

use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::proxy::{Fault, FaultPlan, FaultProxy};
use common::{Hfs, TempDir};
use york_connector::store::Store;

/// Every second, so the daemon ingests and delivers at once after it starts.
const EVERY_SECOND: &str = "* * * * * *";

fn write_config(dir: &Path, destination_url: &str) -> std::path::PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut text = format!(
        "[state]\nurl = \"sqlite://{}/state.db\"\n[mappings]\ndir = \"{}/mappings\"\n",
        dir.display(),
        root.display()
    );
    // The `[[partner]]` table is still open after its sources: its schedule goes with it.
    text.push_str(&common::copy_fixtures(dir, &["hub"]));
    text.push_str(&format!("schedule = \"{EVERY_SECOND}\"\n"));
    text.push_str(&format!(
        "[destination.cito]\nprofile = \"cito\"\nbase_url = \"{destination_url}\"\nschedule = \"{EVERY_SECOND}\"\n\
         max_attempts = 5\nbreaker_failures = 1000\n"
    ));
    text.push_str(&common::open_sharing(&["hub"], &["cito"]));
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Waits until the log holds `needle`; panics with the log after `timeout` (or if the daemon exits).
async fn wait_for_log(child: &mut Child, log: &Path, needle: &str, timeout: Duration) {
    let started = Instant::now();
    while !read(log).contains(needle) {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the daemon exited ({status}) before logging {needle:?}; its log:\n{}", common::tail(log, 40));
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!("no {needle:?} in the log within {timeout:?}; its log:\n{}", common::tail(log, 40));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits for the process to exit; `None` after `timeout` (the process is then killed).
async fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_retry_after_wait_exits_at_once_and_releases_the_leases() {
    let cito = Hfs::start().await;
    // Reads (the Patient search, metadata) reach the server; every write is told to come back in 50 s.
    let plan = FaultPlan::always(Fault::Unavailable).retry_after_on_unavailable(50).only_writes();
    let proxy = FaultProxy::start(&cito.base_url, plan);
    let dir = TempDir::new("shutdown");
    let config = write_config(dir.path(), proxy.base_url());
    let log = dir.path().join("connector.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_connector"))
        .args(["run", "--config"])
        .arg(&config)
        .env("CONNECTOR_LOG", "york_connector=info")
        .env("CONNECTOR_LOG_FORMAT", "text")
        .env_remove("CONNECTOR_CONFIG")
        .env_remove("CONNECTOR_MAPPINGS")
        .env_remove("NOTIFY_SOCKET")
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&log).unwrap())
        .spawn()
        .expect("start the connector");

    wait_for_log(&mut child, &log, "Retrying.", Duration::from_secs(120)).await;
    assert!(proxy.count_faults(Fault::Unavailable) > 0, "the write met the 503");
    assert!(read(&log).contains("retry_in_ms=50000"), "the wait is the server's Retry-After:\n{}", read(&log));

    let stopping = Instant::now();
    let kill = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("run kill");
    assert!(kill.success(), "SIGTERM sent");
    let status = wait_exit(&mut child, Duration::from_secs(5)).await;
    let took = stopping.elapsed();
    let status = status.unwrap_or_else(|| {
        panic!("the daemon did not exit within 5 s of SIGTERM; its log:\n{}", common::tail(&log, 40))
    });
    assert_eq!(status.code(), Some(0), "clean exit; its log:\n{}", common::tail(&log, 40));
    assert!(took < Duration::from_secs(5), "exited {took:?} after SIGTERM");
    eprintln!("exited {took:?} after SIGTERM");

    let store = Store::connect(&format!("sqlite://{}/state.db", dir.path().display())).await.unwrap();
    let pending = store.queue_depths().await.unwrap();
    assert!(
        pending.iter().any(|d| d.destination == "cito" && d.pending > 0),
        "the refused rows are still waiting in the outbox: {pending:?}"
    );
    assert_eq!(store.lease_owners().await.unwrap(), Vec::<String>::new(), "no lease left held");
    store.close().await;
}
