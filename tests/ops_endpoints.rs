//! `/healthz`, `/readyz` and `/metrics` on the loopback listener, scraped after a real cycle: the counters
//! match the cycle's report, the build, start time, job and destination success timestamps are right, the
//! request histograms count exactly the requests the destinations received, and `/readyz` turns unready once
//! a destination's circuit has stayed open for `[ops] unready_after_seconds` (PKB stand-in behind a proxy that
//! always answers 503; Cito behind one that passes everything through and counts it).

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::proxy::{Fault, FaultPlan, FaultProxy};
use common::{Hfs, TempDir};
use york_connector::config::Config;
use york_connector::sync::Engine;

async fn get(url: &str) -> (u16, String) {
    let r = reqwest::get(url).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
}

fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64()
}

/// Whether a whole-second timestamp from `/metrics` falls within `[from, to]` (real seconds).
fn within(t: u64, from: f64, to: f64) -> bool {
    t as f64 >= from.floor() && t as f64 <= to
}

/// The request histograms of one destination, checked for shape (cumulative buckets, `+Inf` = `_count`):
/// `_count` by `method="..",outcome=".."`.
fn request_counts(text: &str, destination: &str) -> std::collections::BTreeMap<String, u64> {
    let name = "connector_request_duration_seconds";
    let prefix = format!("{name}_count{{destination=\"{destination}\",");
    let mut counts = std::collections::BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with(&prefix)) {
        let (labels, count) = line[prefix.len()..].split_once("} ").unwrap();
        let count: u64 = count.parse().unwrap();
        let series = format!("{name}_bucket{{destination=\"{destination}\",{labels},le=");
        let buckets: Vec<u64> = text
            .lines()
            .filter_map(|l| l.strip_prefix(&series))
            .map(|b| b.split(' ').nth(1).unwrap().parse().unwrap())
            .collect();
        assert!(buckets.len() > 2, "{series}: {buckets:?}");
        assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{series} is not cumulative: {buckets:?}");
        assert!(text.contains(&format!("{series}\"+Inf\"}} {count}\n")), "{series}: +Inf is not _count {count}");
        counts.insert(labels.to_string(), count);
    }
    counts
}

/// `promtool check metrics` on the scrape (skipped when promtool is missing, see [`common::promtool`]).
fn promtool_accepts(text: &str) {
    use std::io::Write;
    let Some(promtool) = common::promtool() else { return };
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "promtool check metrics:\n{said}");
}

/// The example alert rules (docs/alerts.yml) load in Prometheus: `promtool check rules`.
#[test]
fn example_alert_rules_pass_promtool() {
    let Some(promtool) = common::promtool() else { return };
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/alerts.yml");
    let out = std::process::Command::new(promtool).arg("check").arg("rules").arg(&rules).output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.contains("SUCCESS"), "promtool check rules docs/alerts.yml:\n{said}");
}

/// Every connector metric docs/alerts.yml names is one `/metrics` has, so renaming a metric cannot leave
/// an alert silently watching nothing.
fn alerts_name_only_real_metrics(scrape: &str) {
    let rules = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/alerts.yml")).unwrap();
    let names: std::collections::BTreeSet<&str> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("connector_") || w.starts_with("process_"))
        .map(|w| w.strip_suffix("_bucket").unwrap_or(w))
        .collect();
    assert!(names.len() > 8, "{names:?}");
    for name in names {
        assert!(scrape.contains(&format!("# TYPE {name} ")), "docs/alerts.yml names {name}, which /metrics lacks");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_match_the_cycle_and_readyz_follows_the_circuit() {
    let (cito, pkb) = (Hfs::start().await, Hfs::start().await);
    let broken = FaultProxy::start(&pkb.url(""), FaultPlan::always(Fault::Unavailable));
    let counted = FaultProxy::start(&cito.url(""), FaultPlan::none());
    let dir = TempDir::new("ops");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let fixtures = root.join("tests/fixtures/hub");
    let mut text = format!(
        "[state]\nurl = \"sqlite://{}/state.db\"\n[mappings]\ndir = \"{}/mappings\"\n[[partner]]\nid = \"hub\"\nsource = [\n",
        dir.path().display(),
        root.display()
    );
    for kind in ["person", "carer", "referral", "episode", "contact", "goals", "reqol", "consent"] {
        text.push_str(&format!("  {{ kind = \"{kind}\", path = \"{}/{kind}.csv\" }},\n", fixtures.display()));
    }
    text.push_str(&format!(
        "]\n[destination.cito]\nprofile = \"cito\"\nbase_url = \"{}\"\nrate_limit_per_second = 500\n\
         [destination.pkb]\nprofile = \"pkb\"\nbase_url = \"{}\"\nmax_attempts = 1\nbreaker_failures = 1\n\
         breaker_cooldown_seconds = 600\n[ops]\nlisten = \"127.0.0.1:0\"\nunready_after_seconds = 1\n",
        counted.base_url(),
        broken.base_url()
    ));
    text.push_str(&common::open_sharing(&["hub"], &["cito", "pkb"]));
    let config = dir.path().join("config.toml");
    std::fs::write(&config, text).unwrap();

    let started = unix_now();
    let engine = Arc::new(Engine::start(Config::load(&config).unwrap()).await.unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(york_connector::ops::http::serve(
        std::sync::Arc::new(listener),
        engine.context(),
        Duration::from_secs(1),
    ));

    assert_eq!(get(&format!("{base}/healthz")).await.0, 200);
    assert_eq!(get(&format!("{base}/readyz")).await.0, 200, "ready before anything failed");

    let (_tx, rx) = tokio::sync::watch::channel(false);
    let before_cycle = unix_now();
    let report = engine.cycle(None, None, false, &rx).await.unwrap();
    let after_cycle = unix_now();
    let (status, m) = get(&format!("{base}/metrics")).await;
    assert_eq!(status, 200);
    promtool_accepts(&m);
    alerts_name_only_real_metrics(&m);
    let hub = &report.ingest[0];
    assert_eq!(metric(&m, "connector_records_ingested_total{partner=\"hub\"}"), hub.mapping.read());
    assert_eq!(metric(&m, "connector_records_quarantined_total{partner=\"hub\"}"), hub.mapping.quarantined());
    let waiting = engine.store.quarantine_list(Some("hub"), 100_000).await.unwrap().len() as u64;
    assert!(waiting > 0, "the hub fixtures hold rows the mapper rejects");
    assert_eq!(metric(&m, "connector_quarantine_rows{partner=\"hub\"}"), waiting);
    for d in ["cito", "pkb"] {
        let withheld = hub.withheld.get(d).copied().unwrap_or(0);
        assert_eq!(
            metric(&m, &format!("connector_resources_withheld_total{{partner=\"hub\",destination=\"{d}\"}}")),
            withheld
        );
        let delivered = report.delivery.iter().find(|r| r.destination == d).unwrap();
        assert_eq!(metric(&m, &format!("connector_resources_sent_total{{destination=\"{d}\"}}")), delivered.written);
        assert_eq!(
            metric(&m, &format!("connector_resources_retried_total{{destination=\"{d}\"}}")),
            delivered.deferred
        );
        assert_eq!(
            metric(&m, &format!("connector_resources_dead_lettered_total{{destination=\"{d}\"}}")),
            delivered.dead_lettered
        );
    }
    let cito_sent = report.delivery.iter().find(|r| r.destination == "cito").unwrap().written;
    assert!(cito_sent > 50, "cito received {cito_sent}");
    let depths = engine.store.queue_depths().await.unwrap();
    let pkb_pending = depths.iter().find(|q| q.destination == "pkb").map_or(0, |q| q.pending);
    assert!(pkb_pending > 0, "PKB's writes wait in the outbox");
    assert_eq!(metric(&m, "connector_outbox_pending{destination=\"pkb\"}"), pkb_pending);
    assert_eq!(metric(&m, "connector_outbox_pending{destination=\"cito\"}"), 0);
    assert_eq!(metric(&m, "connector_circuit_open{destination=\"pkb\"}"), 1);
    assert!(metric(&m, "connector_last_successful_cycle_timestamp_seconds") > 0, "Cito's delivery succeeded");

    // What the build and the process are.
    let build = format!(
        "connector_build_info{{version=\"{}\",commit=\"{}\"}} 1\n",
        env!("CARGO_PKG_VERSION"),
        york_connector::ops::metrics::COMMIT
    );
    assert!(m.contains(&build), "{build} in:\n{m}");
    assert!(!york_connector::ops::metrics::COMMIT.is_empty());
    let start: f64 = m
        .lines()
        .find_map(|l| l.strip_prefix("process_start_time_seconds "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no process_start_time_seconds in:\n{m}"));
    assert!(start >= started - 0.001 && start <= before_cycle, "start {start} not in [{started}, {before_cycle}]");

    // Jobs that ran and succeeded carry this cycle's time; PKB's delivery failed (circuit open) and never did.
    for job in ["ingest:hub", "deliver:cito"] {
        let t = metric(&m, &format!("connector_job_last_success_timestamp_seconds{{job_name=\"{job}\"}}"));
        assert!(within(t, before_cycle, after_cycle), "{job}: {t} not in [{before_cycle}, {after_cycle}]");
    }
    assert_eq!(metric(&m, "connector_job_last_success_timestamp_seconds{job_name=\"deliver:pkb\"}"), 0);
    let cito_write = metric(&m, "connector_destination_last_write_timestamp_seconds{destination=\"cito\"}");
    assert!(within(cito_write, before_cycle, after_cycle), "cito last write {cito_write}");
    assert_eq!(metric(&m, "connector_destination_last_write_timestamp_seconds{destination=\"pkb\"}"), 0);

    // One observation per request each destination received, by method and outcome.
    let cito_log = counted.log();
    let posts = cito_log.iter().filter(|r| r.method == "POST").count() as u64;
    let gets = cito_log.iter().filter(|r| r.method == "GET").count() as u64;
    assert!(posts > 0 && cito_log.iter().all(|r| r.upstream_status.is_some_and(|s| s < 300)), "{cito_log:?}");
    let cito_counts = request_counts(&m, "cito");
    assert_eq!(cito_counts.get("method=\"POST\",outcome=\"2xx\"").copied().unwrap_or(0), posts, "{cito_counts:?}");
    assert_eq!(cito_counts.get("method=\"GET\",outcome=\"2xx\"").copied().unwrap_or(0), gets, "{cito_counts:?}");
    assert_eq!(cito_counts.values().sum::<u64>(), cito_log.len() as u64, "{cito_counts:?}");
    let pkb_counts = request_counts(&m, "pkb");
    let pkb_requests = broken.log().len() as u64;
    assert!(pkb_requests > 0);
    assert_eq!(pkb_counts.values().sum::<u64>(), pkb_requests, "{pkb_counts:?}");
    assert_eq!(pkb_counts.keys().filter(|k| k.contains("outcome=\"5xx\"")).count(), pkb_counts.len(), "{pkb_counts:?}");

    // The circuit has just opened; once it has stayed open past unready_after_seconds, not ready.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (status, why) = get(&format!("{base}/readyz")).await;
    assert_eq!(status, 503, "{why}");
    assert!(why.contains("pkb") && why.contains("circuit open"), "{why}");
    assert_eq!(get(&format!("{base}/healthz")).await.0, 200, "alive all the same");
}
