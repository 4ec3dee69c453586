//! The state store's error type. Each message says what failed and what the operator can do about it.

use std::path::PathBuf;

/// Why a state-store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "state database URL {url:?} is not usable: {reason}. Use sqlite:///absolute/path/state.db, \
         sqlite://relative/state.db, sqlite::memory: (tests only) or postgres://user@host:port/database \
         in [state] url"
    )]
    BadUrl { url: String, reason: String },

    #[error(
        "cannot create the directory {} for the SQLite state database: {source}. Create it, or fix its \
         permissions, or point [state] url elsewhere",
        dir.display()
    )]
    CreateDir { dir: PathBuf, source: std::io::Error },

    #[error(
        "cannot create the SQLite state database {} (owner-only): {source}. Fix the folder's permissions, \
         or point [state] url elsewhere",
        file.display()
    )]
    CreateFile { file: PathBuf, source: std::io::Error },

    #[error(
        "cannot open the state database {url}: {source}. Check that the file or server is reachable and \
         that the connector may read and write it"
    )]
    Connect { url: String, source: sqlx::Error },

    #[error(
        "the state database {url} has schema version {found}, but this connector only knows versions up to \
         {known}: it was upgraded by a newer connector. Refusing to start so the newer data is not damaged. \
         Run the newer connector, or restore the backup taken before the upgrade"
    )]
    SchemaTooNew { url: String, found: i64, known: i64 },

    #[error(
        "migrating the state database {url} failed: {source}. The database was left as it was before the \
         failing migration; fix the cause (disk space, permissions, a hand-edited schema) and start again"
    )]
    Migrate { url: String, source: sqlx::migrate::MigrateError },

    #[error("state database: {op} failed: {source}")]
    Query { op: &'static str, source: sqlx::Error },

    #[error(
        "state database holds an invalid value in {what}: {detail}. It may have been edited by hand; \
         restore it from a backup"
    )]
    Corrupt { what: &'static str, detail: String },

    #[error("state store called with invalid input: {0} (a bug in the caller)")]
    Invalid(String),
}

impl StoreError {
    /// A closure for `map_err` that wraps a query error with the operation's name.
    pub(crate) fn query(op: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
        move |source| StoreError::Query { op, source }
    }
}

/// `url` with any password replaced by `***`, for messages and logs: the user-info password
/// (`user:secret@host`) and any query parameter naming a password (`?password=secret`, `sslpassword=`), which
/// PostgreSQL accepts too.
pub(crate) fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return redact_query(url);
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let head = match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            match userinfo.find(':') {
                Some(colon) => format!("{}{}:***{}", &url[..scheme_end + 3], &userinfo[..colon], &authority[at..]),
                None => url[..scheme_end + 3 + authority_end].to_string(),
            }
        }
        None => url[..scheme_end + 3 + authority_end].to_string(),
    };
    format!("{head}{}", redact_query(&rest[authority_end..]))
}

/// The path, query and fragment with the value of every query parameter whose name contains "password"
/// replaced by `***`.
fn redact_query(tail: &str) -> String {
    let Some(q) = tail.find('?') else {
        return tail.to_string();
    };
    let (path, query) = tail.split_at(q + 1);
    let (query, fragment) = query.split_at(query.find('#').unwrap_or(query.len()));
    let params: Vec<String> = query
        .split('&')
        .map(|p| match p.split_once('=') {
            Some((name, _)) if name.to_ascii_lowercase().contains("password") => format!("{name}=***"),
            _ => p.to_string(),
        })
        .collect();
    format!("{path}{}{fragment}", params.join("&"))
}
