//! Issue 3, item 2: crash safety. The real `connector` binary runs `sync --once` over a generated Hub export
//! of 3000 people and their contacts (about 8,800 resources per destination) into two real Helios FHIR
//! Servers (Cito and PKB profiles), and is killed with SIGKILL again and again: while it maps and plans, while
//! it delivers to Cito, while it delivers to PKB, and while a restarted run re-reads the exports with half the
//! work already done. Each restart resumes from the same state database. Then it runs to completion, and once
//! more (which must find nothing to queue and write nothing), and each server must hold exactly the expected
//! resources, counted by identifier: none lost, none duplicated, each with the content that was planned.
//!
//! Kill points are chosen by a seeded PRNG (no new crates), relative to the start of the process or to the
//! moment a phase ends in the run's log (`CONNECTOR_LOG=york_connector=info`), so they land in the phase meant
//! however fast the machine is. Set `CRASH_SAFETY_SEED` to try other points; every kill is printed (run with
//! `--nocapture` to see the table) with the phase it hit and the state it left.
//!
//! Takes about a minute and a half on a 2-core machine (debug build; the test itself about 65 s).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::{Hfs, TempDir};
use serde_json::Value;
use york_connector::config::Config;
use york_connector::deliver::{comparable, profile};
use york_connector::mapping::{self, MappedResource, Quarantined, Sink};

/// People in the generated export (each with about two contacts).
const PEOPLE: usize = 3000;
/// Seed of the export generator (its default) and of the kill points.
const EXPORT_SEED: u64 = 2024;
const DEFAULT_KILL_SEED: u64 = 0x00c0_ffee_d00d_f00d;
/// How long one uninterrupted run may take before the test gives up on it.
const RUN_TIMEOUT: Duration = Duration::from_secs(240);

const CLIENT_SYSTEM: &str = "https://id.york-connector.example/hub/client";
const CONTACT_SYSTEM: &str = "https://id.york-connector.example/hub/contact";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// SplitMix64: small, seeded, good enough to spread kill points.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi` milliseconds.
    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next() % (hi - lo + 1))
    }
}

/// What a kill's delay counts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    /// The start of the process: start-up, mapping and planning (or re-planning, in a restarted run).
    Start,
    /// The log line that ends ingest (mapping and planning): delivery to Cito, the first destination.
    Ingested,
    /// The log line that ends delivery to Cito: delivery to PKB.
    CitoDelivered,
}

impl Trigger {
    fn marker(self) -> Option<&'static str> {
        match self {
            Trigger::Start => None,
            Trigger::Ingested => Some("Partner ingested."),
            Trigger::CitoDelivered => Some("Delivered. destination=cito"),
        }
    }
}

/// The phase a run was in, read from its log.
fn phase(log: &str) -> &'static str {
    if !log.contains("Partner ingested.") {
        "map+plan"
    } else if !log.contains("Delivered. destination=cito") {
        "deliver cito"
    } else if !log.contains("Delivered. destination=pkb") {
        "deliver pkb"
    } else {
        "after delivery"
    }
}

/// The kill schedule: (trigger, shortest delay ms, longest delay ms). The Start kills come first, so they hit
/// the first run's mapping and planning; the later ones alternate between phases of restarted runs.
const SCHEDULE: &[(Trigger, u64, u64)] = &[
    (Trigger::Start, 50, 150),            // start-up: opening and migrating the state database
    (Trigger::Start, 400, 1500),          // mapping, first chunks planned
    (Trigger::Start, 1500, 4000),         // mapping and planning
    (Trigger::Ingested, 0, 300),          // the first bundles (Organization alone, then the workers)
    (Trigger::Ingested, 500, 3000),       // delivering to Cito
    (Trigger::Start, 300, 2500),          // re-mapping and re-planning with part of Cito delivered
    (Trigger::Ingested, 1000, 4000),      // delivering to Cito
    (Trigger::CitoDelivered, 0, 300),     // the first bundles to PKB
    (Trigger::CitoDelivered, 500, 3000),  // delivering to PKB
    (Trigger::Start, 300, 2500),          // re-planning with Cito done and part of PKB
    (Trigger::CitoDelivered, 1000, 4000), // delivering to PKB
];

/// What the mapping produces for one destination (after its profile), to compare with the server.
#[derive(Default)]
struct Expected {
    /// (type, id) -> the resource as the destination should hold it (without server metadata).
    resources: BTreeMap<(String, String), Value>,
    per_type: BTreeMap<String, usize>,
}

struct Collect<'a> {
    profiles: &'a [(String, york_connector::config::Profile)],
    out: &'a mut HashMap<String, Expected>,
}

impl Sink for Collect<'_> {
    fn resource(&mut self, r: &MappedResource<'_>) -> std::io::Result<()> {
        for (dest, p) in self.profiles {
            // The sharing rules (open agreements, no consent records): all but not-for-the-patient to PKB.
            if *p == york_connector::config::Profile::Pkb && r.not_for_patient {
                continue;
            }
            let mut body = r.resource();
            york_connector::policy::label(&mut body, r.category, r.not_for_patient);
            york_connector::reconcile::tag(&mut body, "hub");
            if let Ok(body) = profile::apply(*p, r.category, body) {
                let e = self.out.entry(dest.clone()).or_default();
                let prev = e.resources.insert((r.resource_type.to_string(), r.id.to_string()), comparable(&body));
                assert!(prev.is_none(), "the mapping produced {}/{} twice", r.resource_type, r.id);
                *e.per_type.entry(r.resource_type.to_string()).or_default() += 1;
            }
        }
        Ok(())
    }
    fn quarantined(&mut self, q: &Quarantined) -> std::io::Result<()> {
        panic!("the generated export should map cleanly, but row {} of {} was quarantined", q.row, q.file.display());
    }
}

fn expected(config: &Config) -> HashMap<String, Expected> {
    let catalog = mapping::load_catalog(&config.resolve(&config.mappings.dir)).expect("the mappings load");
    let profiles: Vec<_> = config.destinations.iter().map(|(n, d)| (n.clone(), d.profile)).collect();
    let mut out = HashMap::new();
    for p in &config.partners {
        let inputs = common::file_inputs(config, p);
        mapping::run(&catalog.partners[&p.id], &inputs, &mut Collect { profiles: &profiles, out: &mut out })
            .expect("mapping the export");
    }
    out
}

fn write_config(dir: &Path, export: &Path, cito: &str, pkb: &str) -> PathBuf {
    let mut text = format!(
        "[state]\nurl = \"sqlite://{}/state.db\"\n[mappings]\ndir = \"{}/mappings\"\n\
         [[partner]]\nid = \"hub\"\nsource = [\n  {{ kind = \"person\", path = \"{}\" }},\n  \
         {{ kind = \"contact\", path = \"{}\" }},\n]\n",
        dir.display(),
        root().display(),
        export.join("person.csv").display(),
        export.join("contact.csv").display()
    );
    for (name, url) in [("cito", cito), ("pkb", pkb)] {
        text.push_str(&format!(
            "[destination.{name}]\nprofile = \"{name}\"\nbase_url = \"{url}\"\nbatch_size = 50\nconcurrency = 2\n\
             rate_limit_per_second = 1000\n"
        ));
    }
    text.push_str(&common::open_sharing(&["hub"], &["cito", "pkb"]));
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Starts `connector sync --once`, stdout and stderr to files named after the run.
fn spawn(dir: &Path, config: &Path, run: usize) -> (Child, PathBuf, PathBuf) {
    let log = dir.join(format!("run-{run:02}.log"));
    let out = dir.join(format!("run-{run:02}.json"));
    let child = Command::new(env!("CARGO_BIN_EXE_connector"))
        .args(["sync", "--once", "--format", "json", "--config"])
        .arg(config)
        .env("CONNECTOR_LOG", "york_connector=info")
        .env_remove("CONNECTOR_CONFIG")
        .env_remove("CONNECTOR_MAPPINGS")
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(File::create(&out).unwrap())
        .stderr(File::create(&log).unwrap())
        .spawn()
        .expect("start the connector");
    (child, log, out)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Waits for the run to end on its own; panics with its log after `timeout`.
async fn wait(child: &mut Child, log: &Path, timeout: Duration) -> ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the connector did not finish within {timeout:?}; its log:\n{}", common::tail(log, 40));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A finished run must have succeeded: 0, or 3 ("ran fine but found something").
fn assert_ok(status: ExitStatus, log: &Path) {
    assert!(
        matches!(status.code(), Some(0 | 3)),
        "the connector exited with {status} after a restart; its log:\n{}",
        common::tail(log, 40)
    );
}

/// Per destination: (pending outbox rows, dead letters, ledger entries, pending rows still leased); or why
/// the state could not be read.
type StateByDestination = Result<BTreeMap<String, (u64, u64, u64, u64)>, String>;

/// The state per destination, read straight from the state database without migrating it (a run killed
/// during start-up may have left none).
async fn state(config: &Config) -> StateByDestination {
    let url = config.state_url();
    let pool = sqlx::SqlitePool::connect(&url).await.map_err(|e| format!("no state database yet ({e})"))?;
    let mut out: BTreeMap<String, (u64, u64, u64, u64)> =
        config.destinations.keys().map(|d| (d.clone(), (0, 0, 0, 0))).collect();
    let outbox: Result<Vec<(String, i64, i64, i64)>, _> = sqlx::query_as(
        "SELECT destination, COALESCE(SUM(dead = 0), 0), COALESCE(SUM(dead = 1), 0), \
         COALESCE(SUM(dead = 0 AND lease_owner IS NOT NULL), 0) FROM outbox GROUP BY destination",
    )
    .fetch_all(&pool)
    .await;
    let ledger: Result<Vec<(String, i64)>, _> =
        sqlx::query_as("SELECT destination, COUNT(*) FROM ledger GROUP BY destination").fetch_all(&pool).await;
    pool.close().await;
    let (outbox, ledger) = match (outbox, ledger) {
        (Ok(o), Ok(l)) => (o, l),
        (Err(e), _) | (_, Err(e)) => return Err(format!("no schema yet ({e})")),
    };
    for (d, pending, dead, leased) in outbox {
        let e = out.entry(d).or_default();
        (e.0, e.1, e.3) = (pending as u64, dead as u64, leased as u64);
    }
    for (d, n) in ledger {
        out.entry(d).or_default().2 = n as u64;
    }
    Ok(out)
}

fn show_state(s: &StateByDestination) -> String {
    match s {
        Err(why) => why.clone(),
        Ok(s) => s
            .iter()
            .map(|(d, (pending, dead, ledger, leased))| {
                format!("{d}: ledger {ledger}, pending {pending} ({leased} leased), dead {dead}")
            })
            .collect::<Vec<_>>()
            .join("; "),
    }
}

/// `system|value` of every identifier of `resources` with that system, counted.
fn identifiers(resources: &[Value], system: &str) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for r in resources {
        for i in r["identifier"].as_array().into_iter().flatten().filter(|i| i["system"] == system) {
            *out.entry(i["value"].as_str().unwrap_or_default().to_string()).or_default() += 1;
        }
    }
    out
}

/// Every expected resource of `resource_type` on the server exactly once (by identifier and by id), nothing
/// else, and each with the planned content. Returns the problems found.
async fn check_type(
    hfs: &Hfs,
    dest: &str,
    expected: &Expected,
    resource_type: &str,
    system: Option<&str>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let held = hfs.search_all(&format!("{resource_type}?_count=1000")).await;
    let want: BTreeMap<&str, &Value> = expected
        .resources
        .iter()
        .filter(|((t, _), _)| t == resource_type)
        .map(|((_, id), v)| (id.as_str(), v))
        .collect();
    let n_want = expected.per_type.get(resource_type).copied().unwrap_or(0);
    if held.len() != n_want {
        problems.push(format!("{dest}: {} {resource_type} resources, expected {n_want}", held.len()));
    }
    let counted = hfs.count(resource_type).await;
    if counted != held.len() {
        problems
            .push(format!("{dest}: {resource_type}?_summary=count says {counted}, the search paged {}", held.len()));
    }
    if let Some(system) = system {
        let have = identifiers(&held, system);
        let wanted = identifiers(&want.values().map(|v| (*v).clone()).collect::<Vec<_>>(), system);
        assert_eq!(wanted.len(), n_want, "each expected {resource_type} carries one {system} identifier");
        let missing: Vec<_> = wanted.keys().filter(|v| !have.contains_key(*v)).take(10).collect();
        let twice: Vec<_> = have.iter().filter(|(_, n)| **n > 1).map(|(v, n)| format!("{v} x{n}")).take(10).collect();
        let unknown: Vec<_> = have.keys().filter(|v| !wanted.contains_key(*v)).take(10).collect();
        let n_missing = wanted.keys().filter(|v| !have.contains_key(*v)).count();
        if n_missing > 0 {
            problems
                .push(format!("{dest}: {n_missing} {resource_type} identifiers missing ({system}), e.g. {missing:?}"));
        }
        if !twice.is_empty() {
            problems.push(format!("{dest}: {resource_type} identifiers held more than once: {twice:?}"));
        }
        if !unknown.is_empty() {
            problems.push(format!("{dest}: {resource_type} identifiers nobody planned: {unknown:?}"));
        }
    }
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut different = Vec::new();
    for r in &held {
        let id = r["id"].as_str().unwrap_or_default();
        *seen.entry(id).or_default() += 1;
        match want.get(id) {
            None => problems.push(format!("{dest}: {resource_type}/{id} is not one of ours")),
            Some(v) if **v != comparable(r) => different.push(id.to_string()),
            Some(_) => {}
        }
    }
    if !different.is_empty() {
        problems.push(format!(
            "{dest}: {} {resource_type} resources differ from what was planned, e.g. {:?}",
            different.len(),
            &different[..different.len().min(5)]
        ));
    }
    let lost: Vec<_> = want.keys().filter(|id| !seen.contains_key(*id)).take(10).collect();
    if !lost.is_empty() {
        problems.push(format!("{dest}: {resource_type} ids never delivered, e.g. {lost:?}"));
    }
    problems
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_any_point_then_restart_loses_and_duplicates_nothing() {
    let started = Instant::now();
    let dir = TempDir::new("crash-safety");
    let export = dir.path().join("export");
    let gen_status = Command::new("python3")
        .arg(root().join("scripts/gen-fixtures/bench_export.py"))
        .args(["--rows", &PEOPLE.to_string(), "--seed", &EXPORT_SEED.to_string(), "--utf8", "--out"])
        .arg(&export)
        .stderr(Stdio::null())
        .status()
        .expect("python3 runs the export generator");
    assert!(gen_status.success(), "bench_export.py failed: {gen_status}");

    let (cito, pkb) = tokio::join!(Hfs::start(), Hfs::start());
    let config_path = write_config(dir.path(), &export, &cito.base_url, &pkb.base_url);
    let config = Config::load(&config_path).unwrap();
    let expected = expected(&config);
    assert_eq!(expected["cito"].per_type["Patient"], PEOPLE);
    assert!(
        expected["cito"].per_type["Encounter"] > PEOPLE,
        "about two contacts each: {:?}",
        expected["cito"].per_type
    );
    eprintln!(
        "export: {PEOPLE} people; expected per destination: {}",
        expected.iter().map(|(d, e)| format!("{d} {:?}", e.per_type)).collect::<Vec<_>>().join(", ")
    );

    let seed = std::env::var("CRASH_SAFETY_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(DEFAULT_KILL_SEED);
    let mut rng = Rng(seed);
    let mut phases_hit: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut run = 0;
    eprintln!("kill seed {seed:#x}");
    for &(trigger, lo, hi) in SCHEDULE {
        run += 1;
        let delay = rng.millis(lo, hi);
        let (mut child, log, _) = spawn(dir.path(), &config_path, run);
        let spawned = Instant::now();
        // Wait for the trigger, then the delay; the run may end first (nothing left to do in that phase).
        let mut armed_at = trigger.marker().is_none().then_some(spawned);
        let finished = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if armed_at.is_none() && trigger.marker().is_some_and(|m| read(&log).contains(m)) {
                armed_at = Some(Instant::now());
            }
            if armed_at.is_some_and(|t| t.elapsed() >= delay) {
                child.kill().expect("SIGKILL the connector");
                child.wait().unwrap();
                break None;
            }
            assert!(
                spawned.elapsed() < RUN_TIMEOUT,
                "run {run} never reached {trigger:?}:\n{}",
                common::tail(&log, 40)
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let text = read(&log);
        let at = phase(&text);
        let after = state(&config).await;
        match finished {
            Some(status) => {
                assert_ok(status, &log);
                eprintln!(
                    "run {run:2}: finished ({status}) before the kill ({trigger:?} + {delay:?}); {}",
                    show_state(&after)
                );
            }
            None => {
                *phases_hit.entry(at).or_default() += 1;
                eprintln!(
                    "run {run:2}: SIGKILL at {:>6} ms ({trigger:?} + {delay:?}) in {at:<12}; {}",
                    spawned.elapsed().as_millis(),
                    show_state(&after)
                );
            }
        }
    }
    for p in ["map+plan", "deliver cito", "deliver pkb"] {
        assert!(phases_hit.contains_key(p), "no kill landed in {p}: {phases_hit:?}");
    }

    // Restarted once more, the run completes ...
    run += 1;
    let (mut child, log, out) = spawn(dir.path(), &config_path, run);
    let status = wait(&mut child, &log, RUN_TIMEOUT).await;
    assert_ok(status, &log);
    let report: Value = serde_json::from_str(&read(&out)).expect("the completing run prints its JSON report");
    for d in report["delivery"].as_array().unwrap() {
        assert_eq!(d["dead_lettered"], 0, "nothing may be refused: {d}");
        assert_eq!(d["deferred"], 0, "nothing may be left for later: {d}");
    }
    let completed = state(&config).await;
    eprintln!("run {run:2}: completed ({status}); {}", show_state(&completed));

    // ... and the next one finds nothing to queue and writes nothing.
    run += 1;
    let (mut child, log, out) = spawn(dir.path(), &config_path, run);
    let status = wait(&mut child, &log, RUN_TIMEOUT).await;
    assert_ok(status, &log);
    let report: Value = serde_json::from_str(&read(&out)).expect("the last run prints its JSON report");
    for i in report["ingest"].as_array().unwrap() {
        for (d, n) in i["queued"].as_object().unwrap() {
            assert_eq!(n, 0, "the run after completion queued {n} resources for {d}: {report:#}");
        }
    }
    for d in report["delivery"].as_array().unwrap() {
        assert_eq!(d["written"], 0, "the run after completion wrote: {d}");
        assert_eq!(d["bundles"], 0, "the run after completion sent bundles: {d}");
    }
    let last = state(&config).await;
    eprintln!("run {run:2}: no change ({status}); {}", show_state(&last));
    let last = last.expect("the state database after a completed run");

    // The state: nothing pending, nothing dead, one ledger entry per expected resource.
    for (d, (pending, dead, ledger, leased)) in &last {
        assert_eq!(
            (*pending, *dead),
            (0, 0),
            "{d}: {pending} outbox rows still pending ({leased} of them leased, by runs that were killed) and {dead} dead letters after completion"
        );
        assert_eq!(*ledger as usize, expected[d].resources.len(), "{d}: ledger entries");
    }

    // The servers: each expected resource exactly once, by identifier and by id, with the planned content.
    let mut problems = Vec::new();
    for (name, hfs) in [("cito", &cito), ("pkb", &pkb)] {
        let e = &expected[name];
        problems.extend(check_type(hfs, name, e, "Patient", Some(CLIENT_SYSTEM)).await);
        problems.extend(check_type(hfs, name, e, "Encounter", Some(CONTACT_SYSTEM)).await);
        problems.extend(check_type(hfs, name, e, "Organization", None).await);
        let types: Vec<&String> = e.per_type.keys().collect();
        assert_eq!(types, ["Encounter", "Organization", "Patient"], "the check covers every type the mapping makes");
    }
    assert!(problems.is_empty(), "after {} kills:\n{}", SCHEDULE.len(), problems.join("\n"));
    eprintln!("crash safety: {} kills, {run} runs, {:.0} s in all", SCHEDULE.len(), started.elapsed().as_secs_f64());
}
