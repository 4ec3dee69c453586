//! PostgreSQL for the integration tests: one server per test process and a fresh database per test.
//!
//! [`server`] uses `DATABASE_URL` when it is set (a developer's own server; it must allow `CREATE DATABASE`),
//! and otherwise starts a throwaway server with `scripts/pg-test-server.sh start DIR PORT` in a new directory
//! under the system temp dir, the first time a test asks. The server is shared by the tests of the process
//! and stopped (`scripts/pg-test-server.sh stop DIR`, then DIR removed) by a guard process that waits for the
//! test process to end, however it ends: all tests passed, a test panicked, or the process was aborted or
//! interrupted. A static's `Drop` never runs, so the guard is a process rather than a value.
//!
//! [`TestDb::create`] makes `CREATE DATABASE test_<unique>` on that server; dropping the [`TestDb`] (also
//! while a test panics) drops the database again. Missing PostgreSQL binaries fail the test with a pointer
//! to `scripts/setup-test-env.sh`; nothing is skipped.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::{Connection, PgConnection};

/// A PostgreSQL server the tests may create databases on.
pub struct PgServer {
    /// A URL of the server's maintenance database (`postgres`), as superuser.
    pub admin_url: String,
    /// The throwaway server's directory (`None` for `DATABASE_URL`).
    pub dir: Option<PathBuf>,
}

static SERVER: OnceLock<PgServer> = OnceLock::new();

/// The server for this test process, started on first use.
pub fn server() -> &'static PgServer {
    SERVER.get_or_init(|| match std::env::var("DATABASE_URL") {
        Ok(url) if !url.trim().is_empty() => PgServer { admin_url: url.trim().to_string(), dir: None },
        _ => start_throwaway(),
    })
}

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The newest `/usr/lib/postgresql/<version>/bin` with an `initdb`, as the script picks it.
fn pg_bindir() -> Option<PathBuf> {
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    dirs.sort();
    dirs.pop().map(|(_, bin)| bin)
}

fn start_throwaway() -> PgServer {
    if pg_bindir().is_none() {
        panic!(
            "PostgreSQL server binaries not found (no /usr/lib/postgresql/*/bin/initdb) and DATABASE_URL is \
             not set. Run scripts/setup-test-env.sh (it installs the postgresql package), or set DATABASE_URL \
             to a server where the tests may create databases."
        );
    }
    let script = repo_root().join("scripts/pg-test-server.sh");
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("connector-pg-{}-{nanos:08x}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    // Armed before the server starts, so a start that half-succeeds is cleaned up too.
    spawn_stop_guard(&script, &dir);

    let mut last_error = String::new();
    for _attempt in 0..3 {
        let port = super::free_port();
        let out = Command::new("bash")
            .arg(&script)
            .arg("start")
            .arg(&dir)
            .arg(port.to_string())
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        if out.status.success() {
            let url = String::from_utf8_lossy(&out.stdout).trim().to_string();
            assert!(url.starts_with("postgres://"), "pg-test-server.sh printed {url:?}, not a URL");
            return PgServer { admin_url: url, dir: Some(dir) };
        }
        // Most likely the port was taken between our look and the server's bind: try another.
        last_error = String::from_utf8_lossy(&out.stderr).into_owned();
    }
    panic!(
        "could not start a throwaway PostgreSQL server in {} (scripts/pg-test-server.sh):\n{last_error}\n\
         Run scripts/setup-test-env.sh, or set DATABASE_URL to a server of your own.",
        dir.display()
    );
}

/// Starts a detached shell that waits until this process has ended, then stops the server in `dir` and
/// removes `dir` (unless `CONNECTOR_TEST_KEEP_TMP` is set). It runs in a session of its own and ignores
/// interrupts, so a Ctrl-C that ends the tests still gets the server stopped. The shell we start only puts
/// the guard in the background and exits, so it is waited for and the guard is adopted by init.
fn spawn_stop_guard(script: &Path, dir: &Path) {
    let keep = std::env::var_os("CONNECTOR_TEST_KEEP_TMP").is_some();
    let cleanup = if keep { "" } else { "rm -rf \"$2\";" };
    let program = format!(
        "( trap '' INT HUP TERM; while kill -0 \"$0\" 2>/dev/null; do sleep 0.2; done; \
         bash \"$1\" stop \"$2\"; {cleanup} ) </dev/null >/dev/null 2>&1 &"
    );
    let mut cmd = if Path::new("/usr/bin/setsid").exists() {
        let mut c = Command::new("/usr/bin/setsid");
        c.arg("sh");
        c
    } else {
        Command::new("sh")
    };
    let status = cmd
        .arg("-c")
        .arg(program)
        .arg(std::process::id().to_string())
        .arg(script)
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("cannot start the PostgreSQL stop guard: {e}"));
    assert!(status.success(), "the PostgreSQL stop guard did not start: {status}");
}

/// `url` with its database (path) replaced by `db`; the query string is kept.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let authority_start = base.find("://").map(|i| i + 3).unwrap_or(0);
    let path_start = base[authority_start..].find('/').map(|i| i + authority_start).unwrap_or(base.len());
    let mut out = format!("{}/{db}", &base[..path_start]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// A database of its own for one test, dropped when this value is dropped.
pub struct TestDb {
    pub name: String,
    pub url: String,
    admin_url: String,
}

impl TestDb {
    pub async fn create() -> TestDb {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let server = server();
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let name = format!("test_{}_{}_{nanos:08x}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
        let mut admin = PgConnection::connect(&server.admin_url)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to PostgreSQL at {}: {e}", server.admin_url));
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        let _ = admin.close().await;
        TestDb { url: with_database(&server.admin_url, &name), name, admin_url: server.admin_url.clone() }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if std::env::var_os("CONNECTOR_TEST_KEEP_TMP").is_some() {
            eprintln!("keeping database {}", self.name);
            return;
        }
        // Drop may run inside a runtime (the test's), which cannot be blocked on: use a thread of our own.
        let admin_url = self.admin_url.clone();
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            rt.block_on(async {
                let mut admin = PgConnection::connect(&admin_url).await.ok()?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut admin).await.ok()?;
                admin.close().await.ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(()))) {
            eprintln!("could not drop test database {} (left behind)", self.name);
        }
    }
}
