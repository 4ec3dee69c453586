//! Black-box, issue 14: a partner source that is the partner's JSON API, read page by page into a spool file
//! by `source::api::fetch`, against a small paged API of our own (`common::paged_api`): the three paging
//! styles, bearer and API-key credentials, a 503 retried, a refused token reported without the token, the
//! incremental cursor, a next link to another server refused, and a stop during a `Retry-After` wait.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::TempDir;
use common::paged_api::{Credential, PagedApi};
use serde_json::{Value, json};
use tokio::sync::watch;
use york_connector::config::{ApiSource, Location, SourceConfig};
use york_connector::source::api::{ApiError, Fetched, fetch};

const TOKEN: &str = "tok-3f9a1c7e";
const KEY: &str = "key-51b0d2aa";

/// Five records, updated one a day.
fn records() -> Vec<Value> {
    (1..=5)
        .map(|i| json!({"id": format!("c{i}"), "name": format!("Client {i}"), "updated_at": format!("2026-03-0{i}T09:00:00Z")}))
        .collect()
}

/// The source as an admin writes it in `[[partner.source]]` (`url`, `auth`, `api = { ... }`).
fn source(url: &str, auth: &str, api: &str) -> ApiSource {
    let text = format!("kind = \"person\"\nurl = \"{url}\"\nauth = {auth}\napi = {{ {api} }}");
    let config: SourceConfig = toml::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
    match config.location {
        Location::Api(api) => *api,
        other => panic!("not an API source: {other:?}"),
    }
}

/// A folder with the token and key files (each ending in a line break, as editors save them).
fn secrets() -> TempDir {
    let dir = TempDir::new("api-source");
    std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
    std::fs::write(dir.path().join("key"), format!("{KEY}\n")).unwrap();
    dir
}

fn no_stop() -> (watch::Sender<bool>, watch::Receiver<bool>) {
    watch::channel(false)
}

/// The spool's records, after checking it is owner-only and one record a line.
fn spooled(path: &Path) -> Vec<Value> {
    let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the spool file is owner-only");
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.ends_with('\n') || text.is_empty());
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn ids(records: &[Value]) -> Vec<&str> {
    records.iter().map(|r| r["id"].as_str().unwrap()).collect()
}

fn spool_in(dir: &TempDir) -> PathBuf {
    dir.path().join("spool.ndjson")
}

#[tokio::test]
async fn next_link_paging_with_a_bearer_token_reads_every_record_once() {
    let server = PagedApi::start(records(), Credential::Bearer(TOKEN.into()));
    let dir = secrets();
    let api =
        source(&server.url("/linked"), "{ bearer_file = \"token\" }", "records = \"data\", next = \"links.next\"");
    let (_tx, stop) = no_stop();
    let f: Fetched = fetch(&api, dir.path(), None, &spool_in(&dir), &stop).await.unwrap();

    assert_eq!((f.pages, f.records, f.complete), (3, 5, true));
    assert_eq!(f.next_cursor, None, "no since_param, no cursor");
    assert_eq!(f.spool, spool_in(&dir));
    assert_eq!(spooled(&f.spool), records(), "every record, once, in order");
    assert_eq!(server.requests(), ["/linked", "/linked?after=2", "/linked?after=4"]);
}

#[tokio::test]
async fn page_paging_with_an_api_key_stops_at_a_short_page() {
    let server = PagedApi::start(records(), Credential::ApiKey { header: "X-API-Key".into(), key: KEY.into() });
    let dir = secrets();
    let api = source(
        &server.url("/pages"),
        "{ api_key_header = { header = \"X-API-Key\", key_file = \"key\" } }",
        "paging = \"page\", page_size = 2",
    );
    let (_tx, stop) = no_stop();
    let f = fetch(&api, dir.path(), None, &spool_in(&dir), &stop).await.unwrap();

    assert_eq!((f.pages, f.records, f.complete), (3, 5, true));
    assert_eq!(ids(&spooled(&f.spool)), ["c1", "c2", "c3", "c4", "c5"]);
    assert_eq!(
        server.requests(),
        ["/pages?page=1&per_page=2", "/pages?page=2&per_page=2", "/pages?page=3&per_page=2"],
        "the third page is short: the last"
    );
}

#[tokio::test]
async fn offset_paging_advances_by_the_records_received_and_stops_at_an_empty_page() {
    let server =
        PagedApi::start(records()[..4].to_vec(), Credential::ApiKey { header: "x-api-key".into(), key: KEY.into() });
    let dir = secrets();
    let api = source(
        &server.url("/offsets"),
        "{ api_key_header = { header = \"X-API-Key\", key_file = \"key\" } }",
        "paging = \"offset\", page_param = \"offset\", size_param = \"limit\", page_size = 2, \
         records = \"result.items\", since_param = \"modified_since\"",
    );
    let (_tx, stop) = no_stop();
    let before = chrono::Utc::now() - chrono::Duration::seconds(1);
    let f = fetch(&api, dir.path(), None, &spool_in(&dir), &stop).await.unwrap();

    assert_eq!((f.pages, f.records, f.complete), (3, 4, true));
    assert_eq!(ids(&spooled(&f.spool)), ["c1", "c2", "c3", "c4"]);
    assert_eq!(
        server.requests(),
        ["/offsets?offset=0&limit=2", "/offsets?offset=2&limit=2", "/offsets?offset=4&limit=2"]
    );
    // No since_field: the cursor is when the read started, UTC to the second.
    let cursor = f.next_cursor.expect("since_param set: a cursor");
    assert!(cursor.ends_with('Z') && cursor.len() == 20, "{cursor}");
    let at = chrono::DateTime::parse_from_rfc3339(&cursor).unwrap();
    assert!(at >= before && at <= chrono::Utc::now(), "{cursor}");
}

#[tokio::test]
async fn a_503_in_the_middle_is_retried_after_retry_after_and_the_read_is_whole() {
    let server = PagedApi::start(records(), Credential::Bearer(TOKEN.into()));
    server.unavailable_once_at(2, 1);
    let dir = secrets();
    let api =
        source(&server.url("/linked"), "{ bearer_file = \"token\" }", "records = \"data\", next = \"links.next\"");
    let (_tx, stop) = no_stop();
    let start = Instant::now();
    let f = fetch(&api, dir.path(), None, &spool_in(&dir), &stop).await.unwrap();

    assert!(start.elapsed() >= Duration::from_secs(1), "Retry-After: 1 was honoured");
    assert_eq!((f.pages, f.records, f.complete), (3, 5, true));
    assert_eq!(spooled(&f.spool), records(), "the retried page once, not twice");
    assert_eq!(server.requests(), ["/linked", "/linked?after=2", "/linked?after=2", "/linked?after=4"]);
}

#[tokio::test]
async fn a_refused_token_is_reported_with_its_file_never_its_value() {
    let server = PagedApi::start(records(), Credential::Bearer("the-right-one".into()));
    let dir = secrets();
    let api =
        source(&server.url("/linked"), "{ bearer_file = \"token\" }", "records = \"data\", next = \"links.next\"");
    let (_tx, stop) = no_stop();
    let spool = spool_in(&dir);
    let err = fetch(&api, dir.path(), None, &spool, &stop).await.unwrap_err();

    let message = err.to_string();
    assert!(matches!(err, ApiError::Failed(_)), "{err:?}");
    assert!(message.contains("HTTP 401") && message.contains("credentials"), "{message}");
    assert!(message.contains(&dir.path().join("token").display().to_string()), "names the token file: {message}");
    assert!(!message.contains(TOKEN), "never the token: {message}");
    assert!(!format!("{err:?}").contains(TOKEN));
    assert_eq!(server.requests().len(), 1, "a 401 is not retried");
    assert!(!spool.exists(), "no spool is left from a failed read");
}

#[tokio::test]
async fn a_second_read_sends_the_cursor_and_gets_only_what_changed() {
    let server = PagedApi::start(records(), Credential::Bearer(TOKEN.into()));
    let dir = secrets();
    let api = source(
        &server.url("/linked"),
        "{ bearer_file = \"token\" }",
        "records = \"data\", next = \"links.next\", since_param = \"modified_since\", since_field = \"updated_at\"",
    );
    let (_tx, stop) = no_stop();
    let first = fetch(&api, dir.path(), None, &spool_in(&dir), &stop).await.unwrap();
    assert_eq!((first.records, first.complete), (5, true));
    let cursor = first.next_cursor.expect("a cursor after a complete read");
    assert_eq!(cursor, "2026-03-05T09:00:00Z", "the newest updated_at read");

    // At source: c2 changes, c6 is added.
    let mut now = records();
    now[1]["updated_at"] = json!("2026-03-07T10:00:00Z");
    now.push(json!({"id": "c6", "name": "Client 6", "updated_at": "2026-03-06T08:30:00Z"}));
    server.set_records(now);

    let second_spool = dir.path().join("spool-2.ndjson");
    let second = fetch(&api, dir.path(), Some(&cursor), &second_spool, &stop).await.unwrap();
    assert_eq!((second.pages, second.records, second.complete), (1, 2, false), "a delta");
    assert_eq!(ids(&spooled(&second.spool)), ["c2", "c6"]);
    assert_eq!(second.next_cursor.as_deref(), Some("2026-03-07T10:00:00Z"));
    assert_eq!(server.requests().last().unwrap(), "/linked?modified_since=2026-03-05T09%3A00%3A00Z");

    // Nothing newer: the cursor stays where it was.
    let third = fetch(&api, dir.path(), Some("2026-03-07T10:00:00Z"), &second_spool, &stop).await.unwrap();
    assert_eq!((third.records, third.complete), (0, false));
    assert_eq!(third.next_cursor.as_deref(), Some("2026-03-07T10:00:00Z"));
    assert!(spooled(&third.spool).is_empty(), "the earlier spool was replaced");
}

#[tokio::test]
async fn a_next_link_to_another_server_is_refused_before_anything_is_sent_there() {
    let server = PagedApi::start(records(), Credential::Bearer(TOKEN.into()));
    server.next_links_to("http://collector.example:8080");
    let dir = secrets();
    let api =
        source(&server.url("/linked"), "{ bearer_file = \"token\" }", "records = \"data\", next = \"links.next\"");
    let (_tx, stop) = no_stop();
    let spool = spool_in(&dir);
    let err = fetch(&api, dir.path(), None, &spool, &stop).await.unwrap_err().to_string();

    assert!(err.contains("another server") && err.contains("http://collector.example:8080"), "{err}");
    assert!(err.contains("page 1"), "{err}");
    assert_eq!(server.requests(), ["/linked"]);
    assert!(!spool.exists(), "the first page is not kept");
}

#[tokio::test]
async fn a_stop_during_a_retry_after_wait_ends_the_read_at_once() {
    let server = PagedApi::start(records(), Credential::Bearer(TOKEN.into()));
    server.unavailable_once_at(2, 30);
    let dir = secrets();
    let api =
        source(&server.url("/linked"), "{ bearer_file = \"token\" }", "records = \"data\", next = \"links.next\"");
    let (tx, stop) = no_stop();
    let spool = spool_in(&dir);
    let mut answered = server.unavailable_answered();

    let read = fetch(&api, dir.path(), None, &spool, &stop);
    let stopper = async {
        answered.wait_for(|n| *n > 0).await.unwrap();
        tx.send(true).unwrap();
        Instant::now()
    };
    let (result, stopped_at) =
        tokio::time::timeout(Duration::from_secs(20), async { tokio::join!(read, stopper) }).await.expect("ended");

    assert!(matches!(result, Err(ApiError::Stopped)), "{result:?}");
    assert!(stopped_at.elapsed() < Duration::from_secs(5), "not the 30 s Retry-After: {:?}", stopped_at.elapsed());
    assert_eq!(server.requests(), ["/linked", "/linked?after=2"], "nothing after the stop");
    assert!(!spool.exists(), "a stopped read leaves no spool");
}

#[tokio::test]
async fn a_page_that_is_not_json_or_lacks_the_records_array_is_named_by_number() {
    let server = PagedApi::start(records(), Credential::Bearer(TOKEN.into()));
    let dir = secrets();
    let (_tx, stop) = no_stop();
    let spool = spool_in(&dir);

    let html = source(&server.url("/not-json"), "{ bearer_file = \"token\" }", "records = \"data\"");
    let err = fetch(&html, dir.path(), None, &spool, &stop).await.unwrap_err().to_string();
    assert!(err.contains("page 1") && err.contains("not JSON") && err.contains("`data`"), "{err}");
    assert!(!err.contains("log in"), "nothing of the page's content: {err}");

    let moved =
        source(&server.url("/linked"), "{ bearer_file = \"token\" }", "records = \"items\", next = \"links.next\"");
    let err = fetch(&moved, dir.path(), None, &spool, &stop).await.unwrap_err().to_string();
    assert!(err.contains("page 1") && err.contains("holds nothing") && err.contains("`items`"), "{err}");
    assert!(!err.contains("Client"), "no record content: {err}");
    assert!(!spool.exists());
}

#[tokio::test]
async fn more_pages_than_max_pages_stop_the_read_loudly() {
    let server = PagedApi::start(records(), Credential::Bearer(TOKEN.into()));
    let dir = secrets();
    let api = source(
        &server.url("/linked"),
        "{ bearer_file = \"token\" }",
        "records = \"data\", next = \"links.next\", max_pages = 2",
    );
    let (_tx, stop) = no_stop();
    let spool = spool_in(&dir);
    let err = fetch(&api, dir.path(), None, &spool, &stop).await.unwrap_err().to_string();

    assert!(err.contains("more pages after 2") && err.contains("api.max_pages"), "{err}");
    assert_eq!(server.requests().len(), 2, "the third page is not asked for");
    assert!(!spool.exists(), "nothing from a cut-short read is kept");
}

// ---------------------------------------------------------------------------------------------------------
// End to end: `connector sync --once` reading York Mind's clients from the paged API into a real HFS.

/// York Mind's client records (the fixture export's `data`), each stamped with an `updated_at`.
fn york_mind_clients() -> Vec<Value> {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/york-mind/person.json"))
            .unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    let mut out = doc["data"].as_array().unwrap().clone();
    for (i, r) in out.iter_mut().enumerate() {
        r["updated_at"] = json!(format!("2026-11-0{}T09:00:00Z", i % 9 + 1));
    }
    out
}

fn sync_once(config: &Path) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_connector"))
        .args(["sync", "--once", "--format", "json", "--config"])
        .arg(config)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

async fn patient_ids(hfs: &common::Hfs) -> Vec<String> {
    let page = hfs.search("Patient?_count=200&_elements=id").await;
    page["entry"]
        .as_array()
        .map_or_else(Vec::new, |e| e.iter().map(|e| e["resource"]["id"].as_str().unwrap().to_string()).collect())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_api_source_survives_a_kill_between_pages_and_then_reads_only_what_changed() {
    let hfs = common::Hfs::start().await;
    let dir = TempDir::new("api-e2e");
    let token = dir.path().join("york-mind.token");
    std::fs::write(&token, "s3cret-token\n").unwrap();
    let mut clients = york_mind_clients();
    let api = PagedApi::start(clients.clone(), Credential::Bearer("s3cret-token".into()));
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[state]\nurl = \"sqlite://{d}/state.db\"\nspool_dir = \"{d}/spool\"\n[mappings]\ndir = \"{m}/mappings\"\n\
             [[partner]]\nid = \"york-mind\"\n[[partner.source]]\nkind = \"person\"\nurl = \"{url}\"\nmode = \"delta\"\n\
             auth = {{ bearer_file = \"{t}\" }}\n\
             api = {{ records = \"data\", next = \"links.next\", since_param = \"modified_since\", since_field = \"updated_at\" }}\n\
             {sharing}[destination.cito]\nprofile = \"cito\"\nbase_url = \"{hfs}\"\nrate_limit_per_second = 500\n",
            d = dir.path().display(),
            m = root.display(),
            url = api.url("/linked"),
            t = token.display(),
            sharing = common::open_sharing(&["york-mind"], &["cito"]),
            hfs = hfs.base_url,
        ),
    )
    .unwrap();

    // 1. Killed (SIGKILL) while waiting to retry page 2: nothing is planned, no cursor stored.
    api.unavailable_once_at(2, 30);
    let mut answered = api.unavailable_answered();
    let mut child = sync_once(&config);
    tokio::time::timeout(Duration::from_secs(60), answered.wait_for(|n| *n > 0)).await.unwrap().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(patient_ids(&hfs).await.is_empty(), "a half-read API planned nothing");

    // 2. The next run reads everything from the start, once.
    let first_request = api.requests().len();
    let out = sync_once(&config).wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(matches!(out.status.code(), Some(0 | 3)), "{report}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(!api.requests()[first_request].contains("modified_since"), "no cursor yet: a full read");
    let ids = patient_ids(&hfs).await;
    assert!(!ids.is_empty());
    let unique: std::collections::BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "nothing duplicated");
    assert!(!report.contains("s3cret-token"));

    // 3. One client changes: the next run asks only for what changed since the stored cursor.
    clients[0]["updated_at"] = json!("2026-11-20T10:00:00Z");
    clients[0]["client"]["gender"] = json!("Male");
    api.set_records(clients);
    let before = api.requests().len();
    let out = sync_once(&config).wait_with_output().unwrap();
    assert!(matches!(out.status.code(), Some(0 | 3)), "{}", String::from_utf8_lossy(&out.stderr));
    let asked = &api.requests()[before..];
    assert_eq!(asked.len(), 1, "one page of changes: {asked:?}");
    assert!(asked[0].contains("modified_since=2026-11-08T09"), "{asked:?}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ingest"][0]["sources"][0]["read"][0], "1 page(s), 1 record(s)", "{report}");
    assert_eq!(patient_ids(&hfs).await.len(), ids.len());
}
