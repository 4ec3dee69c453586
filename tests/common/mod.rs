//! Shared harness for the integration tests (each `tests/*.rs` says `mod common;`).
//!
//! [`Hfs::start`] runs a real Helios FHIR Server (`hfs` 0.2.7, SQLite, R4,
//! `HFS_VALIDATION_MODE=enforce`, `HFS_SEED_CONFORMANCE=false`; see
//! docs/hfs-notes.md for how it behaves) on a free loopback port with its own
//! database in a fresh temporary directory; dropping the [`Hfs`] (also while a
//! test panics) kills the server and removes the directory.
//!
//! The binary and the SearchParameter bundle come from
//! `scripts/setup-test-env.sh` (`scripts/test.sh` runs it and sets `HFS_BIN`
//! and `HFS_DATA_DIR`). Missing pieces are a test failure, never a skip.
//!
//! Environment:
//! - `HFS_BIN`: the hfs binary (default `$CACHE/hfs/bin/hfs`)
//! - `HFS_DATA_DIR`: holds `search-parameters-r4.json` (default `$CACHE/hfs-data`)
//! - `CONNECTOR_TEST_CACHE`: `$CACHE` (default `~/.cache/connector-test`)
//! - `HFS_START_TIMEOUT_SECS`: how long to wait for `/metadata` (default 60)
//! - `CONNECTOR_TEST_KEEP_TMP=1`: keep the temporary directories (database, log)
//! - `PROMTOOL`: Prometheus's promtool (default `$CACHE/promtool/promtool`, else on `PATH`)
#![allow(dead_code)]
pub mod daemon;
pub mod paged_api;
pub mod pg;
pub mod proxy;

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::Method;
use reqwest::header::HeaderMap;
use serde_json::Value;

/// The FHIR JSON media type; HFS answers it (and `application/json`).
pub const FHIR_JSON: &str = "application/fhir+json";

/// `${CONNECTOR_TEST_CACHE:-$HOME/.cache/connector-test}`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CONNECTOR_TEST_CACHE").filter(|v| !v.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    Path::new(&home).join(".cache/connector-test")
}

/// `$HFS_BIN`, else `$CACHE/hfs/bin/hfs`.
pub fn hfs_bin() -> PathBuf {
    std::env::var_os("HFS_BIN")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join("hfs/bin/hfs"))
}

/// `$HFS_DATA_DIR`, else `$CACHE/hfs-data`.
pub fn hfs_data_dir() -> PathBuf {
    std::env::var_os("HFS_DATA_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join("hfs-data"))
}

/// Prometheus's `promtool` (Debian package `prometheus`; scripts/setup-test-env.sh copies it to
/// `$CACHE/promtool/promtool`): `$PROMTOOL`, else that copy, else `promtool` on `PATH`. `None`, with the
/// reason printed, when none runs: the caller skips. Under CI (`CI` set) a missing promtool is a failure,
/// as the setup script should have provided it.
pub fn promtool() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("PROMTOOL").filter(|v| !v.is_empty()).map(PathBuf::from),
        Some(cache_dir().join("promtool/promtool")),
        Some(PathBuf::from("promtool")),
    ];
    let found = candidates.into_iter().flatten().find(|p| {
        Command::new(p).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
    });
    if found.is_none() {
        let why = "promtool not found ($PROMTOOL, $CACHE/promtool/promtool or PATH); \
                   run scripts/setup-test-env.sh or apt-get install prometheus";
        assert!(std::env::var_os("CI").is_none(), "{why}");
        eprintln!("skipped: {why}");
    }
    found
}

/// A uniquely named directory under `std::env::temp_dir()`, removed on drop
/// (unless `CONNECTOR_TEST_KEEP_TMP` is set). Created with the default mode
/// (0755 under the usual umask), so a server run as another user (PostgreSQL
/// as `postgres`) can use a subdirectory of it.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let base = std::env::temp_dir();
        loop {
            let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = base.join(format!("{prefix}-{}-{n}-{nanos:08x}", std::process::id()));
            match fs::create_dir(&path) {
                Ok(()) => return TempDir { path },
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => panic!("cannot create temporary directory {}: {e}", path.display()),
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("CONNECTOR_TEST_KEEP_TMP").is_some() {
            eprintln!("keeping {}", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// A free TCP port on 127.0.0.1 (bound, then released for the server to take).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("bind 127.0.0.1:0")
}

/// The last `lines` lines of a text file (lossy UTF-8), at most 64 KiB read.
pub fn tail(path: &Path, lines: usize) -> String {
    let Ok(mut f) = File::open(path) else {
        return format!("(no log at {})", path.display());
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// One HTTP exchange with the server: status, headers and the body parsed as
/// JSON (`Value::Null` when empty, `Value::String` when not JSON).
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Polls `GET /metadata` until 200, the process exits, or `timeout` passes.
async fn wait_ready(
    client: &reqwest::Client,
    child: &mut Child,
    base_url: &str,
    timeout: Duration,
) -> Result<Duration, String> {
    let started = Instant::now();
    let url = format!("{base_url}/metadata");
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("hfs exited early with {status}"));
        }
        let probe = client.get(&url).header("Accept", FHIR_JSON).timeout(Duration::from_secs(5)).send().await;
        if let Ok(resp) = probe
            && resp.status().as_u16() == 200
        {
            return Ok(started.elapsed());
        }
        if started.elapsed() > timeout {
            return Err(format!("GET /metadata did not answer 200 within {} s", timeout.as_secs()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A running Helios FHIR Server, killed on drop.
pub struct Hfs {
    /// `http://127.0.0.1:PORT`, no trailing slash; also the server's `--base-url`.
    pub base_url: String,
    pub port: u16,
    /// How long the server took to answer `GET /metadata` with 200.
    pub startup: Duration,
    client: reqwest::Client,
    child: Child,
    log: PathBuf,
    // Dropped after `Drop for Hfs` has killed the server.
    dir: TempDir,
}

impl Hfs {
    /// Starts a server with an empty database, in enforce validation mode.
    pub async fn start() -> Hfs {
        Hfs::start_with_env(&[]).await
    }

    /// As [`Hfs::start`], with extra `HFS_*` settings, e.g.
    /// `[("HFS_REQUIRE_IF_MATCH", "true")]`. Any `HFS_*` variable of the test
    /// process itself is *not* passed on (hfs reads many of them).
    pub async fn start_with_env(extra_env: &[(&str, &str)]) -> Hfs {
        let bin = hfs_bin();
        let data_dir = hfs_data_dir();
        let sp = data_dir.join("search-parameters-r4.json");
        if !bin.is_file() {
            panic!(
                "hfs binary not found at {} (HFS_BIN). Run scripts/setup-test-env.sh \
                 (or scripts/test.sh) first; it builds helios-hfs 0.2.7 into the test cache.",
                bin.display()
            );
        }
        if !sp.is_file() {
            panic!(
                "{} not found (HFS_DATA_DIR). Run scripts/setup-test-env.sh first; \
                 hfs needs the R4 SearchParameter bundle for identifier search.",
                sp.display()
            );
        }

        let dir = TempDir::new("connector-hfs");
        let log = dir.path().join("hfs.log");
        let db = dir.path().join("hfs.db");
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .expect("reqwest client");
        let timeout = std::env::var("HFS_START_TIMEOUT_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(Duration::from_secs)
            .unwrap_or(Duration::from_secs(60));

        // The port is free when we look but could be taken before hfs binds
        // it; a start that fails because of that is retried on another port.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = free_port();
            let base_url = format!("http://127.0.0.1:{port}");
            let out = File::create(&log).expect("create hfs log");
            let err = out.try_clone().expect("clone log handle");
            let mut cmd = Command::new(&bin);
            for (k, _) in std::env::vars_os() {
                if k.to_string_lossy().starts_with("HFS_") {
                    cmd.env_remove(k);
                }
            }
            cmd.arg("--port")
                .arg(port.to_string())
                .arg("--base-url")
                .arg(&base_url)
                .arg("--database-url")
                .arg(&db)
                .arg("--data-dir")
                .arg(&data_dir)
                .env("HFS_VALIDATION_MODE", "enforce")
                // Seeding copies the 1375 spec SearchParameters into the
                // database: ~3 s and a ~200 MB WAL per server, and they show up
                // in `/_history`. Search works the same without it (the
                // registry is read from the data dir). Override with
                // `start_with_env(&[("HFS_SEED_CONFORMANCE", "true")])`.
                .env("HFS_SEED_CONFORMANCE", "false")
                // No outbound calls from the test server.
                .env("HFS_NL_SEARCH_ENABLED", "false")
                .envs(extra_env.iter().copied())
                // Relative paths (exports, ...) land in the temp dir.
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err);
            let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
            match wait_ready(&client, &mut child, &base_url, timeout).await {
                Ok(startup) => {
                    return Hfs { base_url, port, startup, client, child, log, dir };
                }
                Err(why) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let text = tail(&log, 60);
                    let port_taken = text.contains("Address already in use")
                        || text.contains("address already in use")
                        || text.contains("AddrInUse");
                    if port_taken && attempt < 3 {
                        let _ = fs::remove_file(&db);
                        continue;
                    }
                    panic!("hfs did not come up on {base_url}: {why}\n--- last lines of {} ---\n{text}", log.display());
                }
            }
        }
    }

    /// The server's temporary directory (database, `hfs.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's log (stdout and stderr) so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The HTTP client used by the helpers (no proxy, 60 s timeout).
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// `path` relative to the base URL (`"Patient?x=y"`, `"/Patient/1"`); an
    /// absolute `http...` URL (e.g. a Bundle `next` link) is used as it is.
    pub fn url(&self, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            path.to_string()
        } else {
            format!("{}/{}", self.base_url, path.trim_start_matches('/'))
        }
    }

    /// Any request, with `Accept: application/fhir+json` and, when there is
    /// a body, `Content-Type: application/fhir+json`. `headers` are added
    /// (and may override those two).
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Response {
        let url = self.url(path);
        let mut req = self.client.request(method.clone(), &url).header("Accept", FHIR_JSON);
        if let Some(body) = body {
            req = req.header("Content-Type", FHIR_JSON).body(serde_json::to_vec(body).expect("serialise body"));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap_or_else(|e| panic!("{method} {url}: reading body: {e}"));
        let body = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Response { status, headers, body }
    }

    /// `GET path`: status and body.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.request(Method::GET, path, None, &[]).await;
        (r.status, r.body)
    }

    /// `PUT path` with a resource: status and body.
    pub async fn put(&self, path: &str, resource: &Value) -> (u16, Value) {
        let r = self.request(Method::PUT, path, Some(resource), &[]).await;
        (r.status, r.body)
    }

    /// `POST path` with a resource: status and body.
    pub async fn post(&self, path: &str, resource: &Value) -> (u16, Value) {
        let r = self.request(Method::POST, path, Some(resource), &[]).await;
        (r.status, r.body)
    }

    /// `DELETE path`: status and body.
    pub async fn delete(&self, path: &str) -> (u16, Value) {
        let r = self.request(Method::DELETE, path, None, &[]).await;
        (r.status, r.body)
    }

    /// Posts a `transaction` or `batch` Bundle to the base URL. A transaction
    /// answers 200 with a `transaction-response`; a failed one answers 4xx
    /// with an OperationOutcome.
    pub async fn post_bundle(&self, bundle: &Value) -> (u16, Value) {
        let r = self.request(Method::POST, "", Some(bundle), &[]).await;
        (r.status, r.body)
    }

    /// A search (`"Patient?identifier=sys|val"`): the searchset Bundle. Panics
    /// unless the answer is 200 with a Bundle.
    pub async fn search(&self, path_and_query: &str) -> Value {
        let (status, body) = self.get(path_and_query).await;
        if status != 200 || body["resourceType"] != "Bundle" {
            panic!("search {path_and_query} answered {status}: {body:#}");
        }
        body
    }

    /// The resources of a searchset Bundle, following `next` links to the end.
    pub async fn search_all(&self, path_and_query: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut page = self.search(path_and_query).await;
        let mut pages = 0;
        loop {
            pages += 1;
            assert!(pages <= 10_000, "search {path_and_query}: too many pages");
            if let Some(entries) = page["entry"].as_array() {
                out.extend(entries.iter().map(|e| e["resource"].clone()));
            }
            let next = page["link"].as_array().and_then(|links| {
                links.iter().find(|l| l["relation"] == "next").and_then(|l| l["url"].as_str()).map(str::to_string)
            });
            match next {
                Some(url) => page = self.search(&url).await,
                None => return out,
            }
        }
    }

    /// How many resources of a type the server holds (current versions, not
    /// deleted), by `_summary=count`.
    pub async fn count(&self, resource_type: &str) -> usize {
        let body = self.search(&format!("{resource_type}?_summary=count")).await;
        match body["total"].as_u64() {
            Some(n) => n as usize,
            None => panic!("{resource_type}?_summary=count gave no total: {body:#}"),
        }
    }
}

impl Drop for Hfs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- hfs on {} (log {}), last lines ---\n{}\n--- end of hfs log ---",
                self.base_url,
                self.log.display(),
                tail(&self.log, 40)
            );
        }
    }
}

/// `[[sharing]]` agreements letting every category of `partners` go to every one of `destinations`, without
/// requiring explicit consent (objections are still honoured): for tests about delivery, not consent.
#[allow(dead_code)]
pub fn open_sharing(partners: &[&str], destinations: &[&str]) -> String {
    let mut text = String::new();
    for p in partners {
        for d in destinations {
            text.push_str(&format!(
                "[[sharing]]\nname = \"test {p} to {d}\"\npartner = \"{p}\"\ndestination = \"{d}\"\n\
                 categories = [\"general_health\", \"mental_health\", \"sexual_health\", \"social_care\"]\n\
                 lawful_basis = \"test\"\nconsent_required = false\n"
            ));
        }
    }
    text
}

/// Copies each partner's fixtures into `dir/<partner>/` (so a test can edit them) and returns the
/// `[[partner]]` tables reading the copies.
#[allow(dead_code)]
pub fn copy_fixtures(dir: &Path, partners: &[&str]) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut text = String::new();
    for p in partners {
        let to = dir.join(p);
        std::fs::create_dir_all(&to).unwrap();
        let mut files: Vec<PathBuf> = std::fs::read_dir(root.join("tests/fixtures").join(p))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|f| f.is_file() && f.extension().is_some_and(|e| e != "md"))
            .collect();
        files.sort();
        text.push_str(&format!("[[partner]]\nid = \"{p}\"\nsource = [\n"));
        for f in files {
            let copy = to.join(f.file_name().unwrap());
            std::fs::copy(&f, &copy).unwrap();
            let kind = f.file_stem().unwrap().to_string_lossy().to_string();
            text.push_str(&format!("  {{ kind = \"{kind}\", path = \"{}\" }},\n", copy.display()));
        }
        text.push_str("]\n");
    }
    text
}

/// A config reading copies of the Hub's fixtures (so a test can edit them), with no destination, its state in
/// `dir/state/state.db`, and `extra` tables after.
#[allow(dead_code)]
pub fn hub_config(dir: &Path, extra: &str) -> PathBuf {
    let text = format!(
        "[state]\nurl = \"sqlite://{}/state/state.db\"\n[mappings]\ndir = \"{}/mappings\"\n{}{extra}",
        dir.display(),
        Path::new(env!("CARGO_MANIFEST_DIR")).display(),
        copy_fixtures(dir, &["hub"])
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The inputs a partner's fixed-file sources give (one per kind), as the mapper takes them.
pub fn file_inputs(
    config: &york_connector::config::Config,
    p: &york_connector::config::PartnerConfig,
) -> Vec<york_connector::mapping::Input> {
    p.sources
        .iter()
        .filter_map(|s| match &s.location {
            york_connector::config::Location::File(path) => Some((s, config.resolve(path))),
            _ => None,
        })
        .flat_map(|(s, path)| {
            s.kinds.iter().map(move |&kind| york_connector::mapping::Input { kind, path: path.clone() })
        })
        .collect()
}

/// `connector sync --once --format json --config CONFIG [extra]`: the exit code and the cycle report.
pub fn sync_json(config: &Path, extra: &[&str]) -> (i32, Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_connector"))
        .args(["sync", "--once", "--format", "json", "--config"])
        .arg(config)
        .args(extra)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let report: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}\n{}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code().unwrap_or(-1), report)
}

/// A stop signal that never fires, for a cycle run by a test.
#[allow(dead_code)]
pub fn no_shutdown() -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    std::mem::forget(tx);
    rx
}

/// The resources audited as withheld from `destination`, as (type, id).
#[allow(dead_code)]
pub async fn withheld(store: &york_connector::store::Store, destination: &str) -> Vec<(String, String)> {
    let filter = york_connector::store::AuditFilter {
        destination: Some(destination.to_string()),
        actions: vec!["withheld".parse().unwrap()],
        ..Default::default()
    };
    let entries = store.audit_list(&filter).await.unwrap();
    entries.into_iter().map(|a| (a.resource_type.unwrap_or_default(), a.resource_id.unwrap_or_default())).collect()
}
