//! `/healthz`, `/readyz` and `/metrics` on the loopback listener, scraped after a real cycle: the counters
//! match the cycle's report, and `/readyz` turns unready once a destination's circuit has stayed open for
//! `[ops] unready_after_seconds` (PKB stand-in behind a proxy that always answers 503).

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_match_the_cycle_and_readyz_follows_the_circuit() {
    let (cito, pkb) = (Hfs::start().await, Hfs::start().await);
    let broken = FaultProxy::start(&pkb.url(""), FaultPlan::always(Fault::Unavailable));
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
        cito.url(""),
        broken.base_url()
    ));
    text.push_str(&common::open_sharing(&["hub"], &["cito", "pkb"]));
    let config = dir.path().join("config.toml");
    std::fs::write(&config, text).unwrap();

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
    let report = engine.cycle(None, None, false, &rx).await.unwrap();
    let (status, m) = get(&format!("{base}/metrics")).await;
    assert_eq!(status, 200);
    let hub = &report.ingest[0];
    assert_eq!(metric(&m, "connector_records_ingested_total{partner=\"hub\"}"), hub.mapping.read());
    assert_eq!(metric(&m, "connector_records_quarantined_total{partner=\"hub\"}"), hub.mapping.quarantined());
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

    // The circuit has just opened; once it has stayed open past unready_after_seconds, not ready.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (status, why) = get(&format!("{base}/readyz")).await;
    assert_eq!(status, 503, "{why}");
    assert!(why.contains("pkb") && why.contains("circuit open"), "{why}");
    assert_eq!(get(&format!("{base}/healthz")).await.0, 200, "alive all the same");
}
