//! Partner API sources: a partner's JSON API read page by page into a spool file, one record per line
//! (NDJSON), which the mapper then reads like any NDJSON export. It owns the paging (`next` links, page
//! numbers, offsets), where a page keeps its records, the partner's credentials, and the incremental cursor.
//!
//! The transport rules are a destination's (`deliver::http`, `deliver::retry`, `deliver::limit`): no
//! redirects, bounded bodies, no URL in any error (a URL may carry the since value), 408/429/5xx and network
//! failures retried with backoff honouring `Retry-After`, a stop ending any wait at once. A `next` link is
//! followed only to the configured URL's own scheme, host and port, so the credentials never go elsewhere.
//! Messages name pages by number, fields by their configured path and secret files by path, never a record's
//! content or a secret.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::header::{ACCEPT, HeaderName, HeaderValue};
use reqwest::{Client, RequestBuilder, Url};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::sync::watch;

use crate::config::{ApiAuth, ApiSource, Paging};
use crate::deliver::http;
use crate::deliver::limit::RateLimiter;
use crate::deliver::retry::{self, Answer, RetryPolicy};
use crate::deliver::transport::TransportError;

/// What one read of a partner's API fetched.
#[derive(Debug)]
pub struct Fetched {
    /// NDJSON spool file holding every record read, one per line (owner-only; deleted once planned).
    pub spool: PathBuf,
    pub pages: u64,
    pub records: u64,
    /// The cursor to store once the rows are planned (none: keep the stored one).
    pub next_cursor: Option<String>,
    /// True when the read started from nothing (no since parameter): it holds every current record.
    pub complete: bool,
}

/// Why a read failed; the message names the source and what to do, never a record's content.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Failed(String),
    #[error("stopped while reading")]
    Stopped,
}

/// Reads every page of `api` (from `cursor`, when incremental) into `spool`.
///
/// `base_dir` is the configuration file's folder (relative secret files are taken from it). `spool` is
/// replaced: created anew owner-only (0600), written, then fsynced; on any error, [`ApiError::Stopped`]
/// included, it is removed, so a half-read API is never planned. The read is `complete` when no since
/// parameter was sent; `next_cursor` is set only when `api.since_param` is.
pub async fn fetch(
    api: &ApiSource,
    base_dir: &Path,
    cursor: Option<&str>,
    spool: &Path,
    stop: &watch::Receiver<bool>,
) -> Result<Fetched, ApiError> {
    if *stop.borrow() {
        return Err(ApiError::Stopped);
    }
    let started = chrono::Utc::now();
    let reader = Reader::new(api, base_dir, stop)?;
    let mut out = Spool::create(spool).await?;
    let read = reader.read(cursor, &mut out).await;
    let read = match read {
        Ok(read) => out.finish().await.map(|()| read),
        Err(e) => Err(e),
    };
    let read = match read {
        Ok(read) => read,
        Err(e) => {
            // Nothing half-read may be planned; the next cycle reads again from the stored cursor.
            let _ = tokio::fs::remove_file(spool).await;
            return Err(e);
        }
    };
    let incremental = api.since_param.is_some() && cursor.is_some();
    let next_cursor = api.since_param.as_ref().and_then(|_| match &api.since_field {
        Some(_) => newest(cursor, read.newest),
        None => Some(started.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
    });
    if read.without_since_field > 0 {
        tracing::warn!(
            records = read.without_since_field,
            field = api.since_field.as_deref().unwrap_or_default(),
            "Partner API records without a text value in since_field; they do not move the cursor."
        );
    }
    tracing::debug!(pages = read.pages, records = read.records, complete = !incremental, "Read the partner API.");
    Ok(Fetched {
        spool: spool.to_path_buf(),
        pages: read.pages,
        records: read.records,
        next_cursor,
        complete: !incremental,
    })
}

/// What the page loop saw.
struct Read {
    pages: u64,
    records: u64,
    /// The greatest `since_field` value among the records (string order).
    newest: Option<String>,
    without_since_field: u64,
}

/// One read's fixed parts: the configuration, the client, the credentials, the pacing.
struct Reader<'a> {
    api: &'a ApiSource,
    base: Url,
    client: Client,
    credentials: Option<Credentials>,
    limiter: RateLimiter,
    policy: RetryPolicy,
    stop: &'a watch::Receiver<bool>,
}

impl<'a> Reader<'a> {
    fn new(api: &'a ApiSource, base_dir: &Path, stop: &'a watch::Receiver<bool>) -> Result<Self, ApiError> {
        // Checked at load (`config::check_url`); parsed again here as the value is still a string.
        let base = Url::parse(&api.url)
            .map_err(|e| ApiError::Failed(format!("the partner API's url is not a URL ({e}); check api url")))?;
        let client = http::client(Duration::from_secs(api.timeout_seconds.max(1)))
            .map_err(|e| ApiError::Failed(e.to_string()))?;
        let credentials = api.auth.as_ref().map(|a| Credentials::load(a, base_dir)).transpose()?;
        Ok(Self {
            api,
            base,
            client,
            credentials,
            limiter: RateLimiter::per_second(api.rate_limit_per_second),
            policy: RetryPolicy::partner_api(api.max_attempts.max(1)),
            stop,
        })
    }

    /// Reads page after page into `out` until the last one.
    async fn read(&self, cursor: Option<&str>, out: &mut Spool) -> Result<Read, ApiError> {
        let api = self.api;
        let since = api.since_param.as_deref().zip(cursor);
        let mut read = Read { pages: 0, records: 0, newest: None, without_since_field: 0 };
        let (mut page_no, mut offset) = (api.first_page, 0u64);
        let mut url = match api.paging {
            Paging::NextLink => with_query(&self.base, &[], since),
            Paging::Page => {
                with_query(&self.base, &[(&api.page_param, page_no), (&api.size_param, api.page_size)], since)
            }
            Paging::Offset => {
                with_query(&self.base, &[(&api.page_param, offset), (&api.size_param, api.page_size)], since)
            }
        };
        let mut seen = HashSet::from([url.to_string()]);
        loop {
            if *self.stop.borrow() {
                return Err(ApiError::Stopped);
            }
            if read.pages >= api.max_pages {
                return Err(ApiError::Failed(format!(
                    "the partner API still had more pages after {} (api.max_pages); stopped reading so that broken \
                     paging cannot loop forever, and nothing from this read is used. Check the API's paging \
                     settings (api.paging, api.next), or raise api.max_pages if it really has this many pages",
                    api.max_pages
                )));
            }
            let n = read.pages + 1;
            let body = self.get(&url, n).await?;
            let page: Value = serde_json::from_slice(&body).map_err(|e| {
                // serde_json's message gives a line and column, never the text around it.
                ApiError::Failed(format!(
                    "page {n} of the partner API is not JSON ({e}); expected a JSON page with {}",
                    expected(api)
                ))
            })?;
            drop(body);
            let items = records_at(&page, &api.records).ok_or_else(|| {
                let found = if api.records.is_empty() { kind(Some(&page)) } else { kind(at_path(&page, &api.records)) };
                ApiError::Failed(format!(
                    "page {n} of the partner API holds {found} where {} was expected; check api.records",
                    expected(api)
                ))
            })?;
            for record in items {
                out.write(record).await?;
                if let Some(field) = &api.since_field {
                    match at_path(record, field).and_then(Value::as_str) {
                        Some(v) => read.newest = newest(read.newest.as_deref(), Some(v.to_string())),
                        None => read.without_since_field += 1,
                    }
                }
            }
            let got = items.len() as u64;
            read.pages = n;
            read.records += got;
            tracing::debug!(page = n, records = got, "Read a partner API page.");
            url = match api.paging {
                Paging::NextLink => match next_link(&page, &api.next, n)? {
                    None => break,
                    Some(link) => {
                        let next = url.join(link).map_err(|_| {
                            ApiError::Failed(format!(
                                "page {n} of the partner API gives a next link (at `{}`) that is not a URL",
                                api.next
                            ))
                        })?;
                        self.check_origin(&next, n)?;
                        if !seen.insert(next.to_string()) {
                            return Err(ApiError::Failed(format!(
                                "page {n} of the partner API links back to a page already read; stopped reading so as \
                                 not to loop forever, and nothing from this read is used. The API's paging is \
                                 broken: report it to the partner"
                            )));
                        }
                        next
                    }
                },
                // A short page is the last; a server that ignores the size parameter ends on an empty page.
                Paging::Page | Paging::Offset if got < api.page_size => break,
                Paging::Page => {
                    page_no += 1;
                    let paging = [(api.page_param.as_str(), page_no), (api.size_param.as_str(), api.page_size)];
                    with_query(&self.base, &paging, since)
                }
                Paging::Offset => {
                    offset += got;
                    let paging = [(api.page_param.as_str(), offset), (api.size_param.as_str(), api.page_size)];
                    with_query(&self.base, &paging, since)
                }
            };
        }
        Ok(read)
    }

    /// Refuses a next link to anywhere but the configured URL's scheme, host and port.
    fn check_origin(&self, next: &Url, n: u64) -> Result<(), ApiError> {
        if next.origin() == self.base.origin() && next.username().is_empty() && next.password().is_none() {
            return Ok(());
        }
        Err(ApiError::Failed(format!(
            "page {n} of the partner API gives a next link to another server ({}), not {}; the connector sends \
             the partner's credentials only to the configured server, so it stopped reading and nothing from this \
             read is used. Ask the partner why its API links elsewhere, or check api.next",
            next.origin().ascii_serialization(),
            self.base.origin().ascii_serialization()
        )))
    }

    /// GETs page `n`, retrying what is worth retrying; any wait (rate limit, backoff, the request itself)
    /// ends at once when `stop` comes.
    async fn get(&self, url: &Url, n: u64) -> Result<Vec<u8>, ApiError> {
        let what = format!("page {n} of the partner API");
        let attempt = || async {
            let call = async {
                self.limiter.acquire().await;
                let mut req = self.client.get(url.clone()).header(ACCEPT, "application/json");
                if let Some(c) = &self.credentials {
                    req = c.apply(req);
                }
                let resp = req.send().await.map_err(|e| http::network_error(&what, e))?;
                let status = resp.status();
                if status.is_success() {
                    return http::read_body(resp, http::MAX_PAGE_BYTES, &what).await;
                }
                if status.is_redirection() {
                    return Err(http::redirect_error(&what, status));
                }
                // The answer's body is not read: it may quote records, and nothing here would show it.
                Err(match retry::classify(status, resp.headers()) {
                    Answer::Unavailable { retry_after } => TransportError::Unavailable {
                        message: format!("{what} answered {status}"),
                        detail: String::new(),
                        retry_after,
                    },
                    _ => TransportError::Rejected { status: status.as_u16(), message: String::new(), outcome: None },
                })
            };
            // A read may be dropped mid-flight: nothing was changed anywhere.
            tokio::select! {
                r = call => r,
                () = stopped(self.stop) => Err(TransportError::Stopped),
            }
        };
        let notify = |e: &TransportError, wait: Duration| {
            let retry_in_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
            tracing::warn!(page = n, error = %e, retry_in_ms, "Retrying a partner API page.");
        };
        self.policy.call(self.stop, attempt, notify).await.map_err(|e| self.failure(e, n))
    }

    /// A failed page as the operator should read it.
    fn failure(&self, e: TransportError, n: u64) -> ApiError {
        match e {
            TransportError::Stopped => ApiError::Stopped,
            TransportError::Rejected { status: s @ (401 | 403), .. } => ApiError::Failed(match &self.credentials {
                Some(c) => c.refused(s),
                None => format!(
                    "the partner API refused the connector (HTTP {s}) and no credentials are configured: add \
                     auth = {{ bearer_file = \"...\" }} (or basic, or api_key_header) beside the source's url"
                ),
            }),
            TransportError::Rejected { status, .. } => ApiError::Failed(format!(
                "page {n} of the partner API was refused (HTTP {status}); check the source's url and its paging and \
                 since parameters (api.page_param, api.size_param, api.since_param)"
            )),
            e @ (TransportError::Transient { .. } | TransportError::Unavailable { .. }) => {
                let gave_up = match e.retry_after() {
                    Some(ra) if ra > self.policy.max_wait => {
                        format!("the server asked to wait {} s, longer than a read waits", ra.as_secs())
                    }
                    _ => format!("gave up after {} attempts", self.policy.max_attempts),
                };
                ApiError::Failed(format!(
                    "{e}; {gave_up}. Nothing from this read is used; the next cycle reads again from the stored cursor"
                ))
            }
            e => ApiError::Failed(e.to_string()),
        }
    }
}

/// The partner's credentials, read from their files once per read.
#[derive(Debug)]
enum Credentials {
    Bearer { token: SecretString, file: PathBuf },
    Basic { user: String, password: SecretString, file: PathBuf },
    ApiKey { header: HeaderName, key: SecretString, file: PathBuf },
}

impl Credentials {
    fn load(auth: &ApiAuth, base_dir: &Path) -> Result<Self, ApiError> {
        let resolve = |p: &Path| if p.is_absolute() { p.to_path_buf() } else { base_dir.join(p) };
        Ok(match auth {
            ApiAuth::BearerFile(f) => {
                let file = resolve(f);
                Self::Bearer { token: read_secret(&file, "token file")?, file }
            }
            ApiAuth::Basic { user, password_file } => {
                let file = resolve(password_file);
                Self::Basic { user: user.clone(), password: read_secret(&file, "password file")?, file }
            }
            ApiAuth::ApiKeyHeader { header, key_file } => {
                let header = HeaderName::from_bytes(header.as_bytes()).map_err(|_| {
                    ApiError::Failed(format!("auth.header {header:?} is not an HTTP header name (such as X-API-Key)"))
                })?;
                let file = resolve(key_file);
                let key = read_secret(&file, "key file")?;
                if HeaderValue::from_str(key.expose_secret()).is_err() {
                    return Err(ApiError::Failed(format!(
                        "the key file {} holds characters a header cannot carry (a line break inside, or control \
                         characters); it should hold the key alone",
                        file.display()
                    )));
                }
                Self::ApiKey { header, key, file }
            }
        })
    }

    fn apply(&self, req: RequestBuilder) -> RequestBuilder {
        match self {
            // reqwest marks both Authorization values sensitive (left out of its Debug output).
            Self::Bearer { token, .. } => req.bearer_auth(token.expose_secret()),
            Self::Basic { user, password, .. } => req.basic_auth(user, Some(password.expose_secret())),
            Self::ApiKey { header, key, .. } => match HeaderValue::from_str(key.expose_secret()) {
                Ok(mut v) => {
                    v.set_sensitive(true);
                    req.header(header.clone(), v)
                }
                // Checked when read.
                Err(_) => req,
            },
        }
    }

    /// The message for a 401 or 403: which file to check.
    fn refused(&self, status: u16) -> String {
        let check = match self {
            Self::Bearer { file, .. } => format!("check the token file {}", file.display()),
            Self::Basic { user, file, .. } => {
                format!("check the user ({user}) and the password file {}", file.display())
            }
            Self::ApiKey { header, file, .. } => {
                format!("check the key file {} (sent in the header {header})", file.display())
            }
        };
        format!("the partner API refused the connector's credentials (HTTP {status}): {check}")
    }
}

/// A secret file's text without its trailing line break.
fn read_secret(path: &Path, what: &str) -> Result<SecretString, ApiError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ApiError::Failed(format!(
            "cannot read the {what} {} ({e}); check that it exists and that the connector's user may read it",
            path.display()
        ))
    })?;
    let secret = text.trim_end_matches(['\n', '\r']);
    if secret.is_empty() {
        return Err(ApiError::Failed(format!("the {what} {} is empty", path.display())));
    }
    Ok(SecretString::from(secret.to_string()))
}

/// The spool file being written.
struct Spool {
    path: PathBuf,
    file: BufWriter<tokio::fs::File>,
}

impl Spool {
    /// Creates `path` anew, owner-only: an older file there (a crashed read's) is removed first, as opening
    /// it would keep its mode.
    async fn create(path: &Path) -> Result<Self, ApiError> {
        let failed = |e: std::io::Error| {
            ApiError::Failed(format!(
                "cannot create the spool file {} ({e}); check the folder's permissions and free space",
                path.display()
            ))
        };
        match tokio::fs::remove_file(path).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(failed(e)),
            _ => {}
        }
        let file =
            tokio::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).await.map_err(failed)?;
        Ok(Self { path: path.to_path_buf(), file: BufWriter::new(file) })
    }

    /// Appends one record as a line (serde_json escapes line breaks inside strings).
    async fn write(&mut self, record: &Value) -> Result<(), ApiError> {
        let mut line = serde_json::to_vec(record).map_err(|e| self.failed(e.into()))?;
        line.push(b'\n');
        self.file.write_all(&line).await.map_err(|e| self.failed(e))
    }

    async fn finish(mut self) -> Result<(), ApiError> {
        self.file.flush().await.map_err(|e| self.failed(e))?;
        self.file.get_ref().sync_all().await.map_err(|e| self.failed(e))
    }

    fn failed(&self, e: std::io::Error) -> ApiError {
        ApiError::Failed(format!(
            "cannot write the spool file {} ({e}); check the free space on its disk",
            self.path.display()
        ))
    }
}

/// Resolves when `stop` is (or becomes) true; never, once the sender is gone.
async fn stopped(stop: &watch::Receiver<bool>) {
    let mut stop = stop.clone();
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// `base` with the paging parameters and the since parameter set (replacing any of the same name in it).
fn with_query(base: &Url, paging: &[(&str, u64)], since: Option<(&str, &str)>) -> Url {
    let mut names: Vec<&str> = paging.iter().map(|(k, _)| *k).collect();
    names.extend(since.map(|(k, _)| k));
    let kept: Vec<(String, String)> =
        base.query_pairs().filter(|(k, _)| !names.contains(&k.as_ref())).map(|(k, v)| (k.into(), v.into())).collect();
    let mut url = base.clone();
    url.set_query(None);
    if kept.is_empty() && names.is_empty() {
        return url;
    }
    {
        let mut q = url.query_pairs_mut();
        q.extend_pairs(kept);
        for (k, v) in paging {
            q.append_pair(k, &v.to_string());
        }
        if let Some((k, v)) = since {
            q.append_pair(k, v);
        }
    }
    url
}

/// The value at a dotted path of object keys (`result.items`); the value itself for an empty path.
pub fn at_path<'v>(value: &'v Value, path: &str) -> Option<&'v Value> {
    if path.is_empty() {
        return Some(value);
    }
    path.split('.').try_fold(value, |v, key| v.as_object()?.get(key))
}

/// The records array of a page: at `path`, or the page itself when `path` is empty.
fn records_at<'v>(page: &'v Value, path: &str) -> Option<&'v Vec<Value>> {
    at_path(page, path)?.as_array()
}

/// The next page's link: `None` when absent, null or empty (the last page).
fn next_link<'v>(page: &'v Value, path: &str, n: u64) -> Result<Option<&'v str>, ApiError> {
    match at_path(page, path) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.trim())),
        Some(other) => Err(ApiError::Failed(format!(
            "page {n} of the partner API holds {} at `{path}` (api.next), where a next-page URL, null or nothing \
             was expected",
            kind(Some(other))
        ))),
    }
}

/// The later of two cursor values, in string order (ISO 8601 times in one format and zone sort so).
pub fn newest(a: Option<&str>, b: Option<String>) -> Option<String> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if b.as_str() > a { b } else { a.to_string() }),
        (Some(a), None) => Some(a.to_string()),
        (None, b) => b,
    }
}

/// What a page was expected to hold, for messages.
fn expected(api: &ApiSource) -> String {
    if api.records.is_empty() {
        "an array of records (the page itself, as api.records is empty)".into()
    } else {
        format!("an array of records at `{}` (api.records)", api.records)
    }
}

/// A JSON value's kind, for messages (never its content).
fn kind(v: Option<&Value>) -> &'static str {
    match v {
        None => "nothing",
        Some(Value::Null) => "null",
        Some(Value::Bool(_)) => "a boolean",
        Some(Value::Number(_)) => "a number",
        Some(Value::String(_)) => "a string",
        Some(Value::Array(_)) => "an array",
        Some(Value::Object(_)) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn dotted_paths_walk_object_keys() {
        let page = json!({"result": {"items": [1, 2], "next": null}, "data": "x"});
        assert_eq!(at_path(&page, "result.items"), Some(&json!([1, 2])));
        assert_eq!(at_path(&page, ""), Some(&page));
        assert_eq!(at_path(&page, "result.missing"), None);
        assert_eq!(at_path(&page, "data.deeper"), None, "a string has no keys");
        assert_eq!(records_at(&json!([{"a": 1}]), "").map(Vec::len), Some(1));
        assert!(records_at(&page, "data").is_none(), "a string is not a records array");
    }

    #[test]
    fn a_missing_null_or_empty_next_link_ends_the_read() {
        let p = json!({"links": {"next": "/p?after=2", "prev": null, "blank": " "}, "n": 3});
        assert_eq!(next_link(&p, "links.next", 1).unwrap(), Some("/p?after=2"));
        assert_eq!(next_link(&p, "links.prev", 1).unwrap(), None);
        assert_eq!(next_link(&p, "links.blank", 1).unwrap(), None);
        assert_eq!(next_link(&p, "links.gone", 1).unwrap(), None);
        let err = next_link(&p, "n", 4).unwrap_err().to_string();
        assert!(err.contains("page 4") && err.contains("a number") && err.contains("`n`"), "{err}");
    }

    #[test]
    fn the_cursor_is_the_greatest_value_and_never_goes_back() {
        assert_eq!(newest(None, None), None);
        assert_eq!(newest(None, Some("b".into())).as_deref(), Some("b"));
        assert_eq!(newest(Some("2026-01-02T00:00:00Z"), None).as_deref(), Some("2026-01-02T00:00:00Z"));
        assert_eq!(
            newest(Some("2026-01-02T00:00:00Z"), Some("2026-01-01T09:00:00Z".into())).as_deref(),
            Some("2026-01-02T00:00:00Z"),
            "an older value keeps the previous cursor"
        );
        assert_eq!(
            newest(Some("2026-01-02T00:00:00Z"), Some("2026-01-03T00:00:00Z".into())).as_deref(),
            Some("2026-01-03T00:00:00Z")
        );
    }

    #[test]
    fn paging_parameters_replace_those_already_in_the_url() {
        let base = Url::parse("https://p.example/api/clients?region=york&page=9").unwrap();
        let url =
            with_query(&base, &[("page", 2), ("per_page", 50)], Some(("modified_since", "2026-01-01T00:00:00+00:00")));
        assert_eq!(
            url.as_str(),
            "https://p.example/api/clients?region=york&page=2&per_page=50&modified_since=2026-01-01T00%3A00%3A00%2B00%3A00"
        );
        let bare = Url::parse("https://p.example/api").unwrap();
        assert_eq!(with_query(&bare, &[], None).as_str(), "https://p.example/api");
    }
}
