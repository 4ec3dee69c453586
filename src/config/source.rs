//! `[[partner.source]]`: where one of a partner's exports comes from, typed at load. Three places:
//!
//! - `path = "exports/clients.csv"`: one fixed file, read whole every cycle (the file is replaced in place);
//! - `inbox = "/srv/sftp/kyra/in"` with `files = "clients-*.csv"`: each new complete file dropped there is
//!   read exactly once, oldest first, then moved to `archive/` (or `rejected/` when it cannot be read);
//! - `url = "https://..."`: a partner's API, read page by page (see [`ApiSource`]).
//!
//! and two meanings (`mode`): a `snapshot` holds every current record, so a record missing from it is gone at
//! source; a `delta` holds only what changed, so absence means nothing.

use std::path::PathBuf;

use serde::Deserialize;

use crate::model::RecordKind;

/// One source, checked: its kinds, where it is and what it means.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "RawSource")]
pub struct SourceConfig {
    /// The record kinds read from this export (one file may hold people and their consent answer).
    pub kinds: Vec<RecordKind>,
    pub location: Location,
    pub mode: SourceMode,
    /// Snapshot only: retract records gone at source from destinations that have `retract = true`.
    pub retract_missing: bool,
    /// Snapshot only: a snapshot with fewer records than this percentage of the previous one is refused as
    /// suspicious (a truncated export), not taken as a mass deletion.
    pub refuse_below_percent: u8,
}

/// Where a source's files come from.
#[derive(Debug, Clone)]
pub enum Location {
    File(PathBuf),
    Inbox(InboxSource),
    Api(Box<ApiSource>),
}

/// An inbox folder (an SFTP drop).
#[derive(Debug, Clone)]
pub struct InboxSource {
    pub dir: PathBuf,
    /// A file-name pattern: `*` any run of characters, `?` one character.
    pub files: String,
    pub order: InboxOrder,
    /// A file is read only once its size and modification time have not changed for this long.
    pub settle_seconds: u64,
    /// Also require `<name>.done` beside the file before reading it (the marker is archived with it).
    pub done_marker: bool,
    /// Archived files older than this are deleted.
    pub keep_days: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum InboxOrder {
    /// Oldest first by file name (exports named with their date, `clients-2026-11-30.csv`).
    #[default]
    Name,
    /// Oldest first by modification time.
    Mtime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SourceMode {
    /// The export holds every current record: a record missing from it is gone at source.
    #[default]
    Snapshot,
    /// The export holds only changed records: absence means nothing.
    Delta,
}

/// A partner's JSON API, read page by page with the same transport rules as a destination.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSource {
    /// The first page's URL (https, or http to loopback).
    pub url: super::HttpUrl,
    /// Allow plain http:// to a host that is not loopback (only on a network protected otherwise).
    #[serde(default)]
    pub allow_insecure_http: bool,
    /// Given beside `url` (`auth = { bearer_file = "..." }`), not in `api`.
    #[serde(skip)]
    pub auth: Option<ApiAuth>,
    /// How pages follow each other.
    #[serde(default)]
    pub paging: Paging,
    /// Where the records are in a page: a dotted path (`data`, `result.items`); empty: the page is an array.
    #[serde(default)]
    pub records: String,
    /// `next_link` paging: the dotted path of the next page's URL (absent, null or empty: last page).
    #[serde(default = "ApiSource::default_next")]
    pub next: String,
    /// `page` paging: the page-number parameter, the first page's number; `offset` paging: the offset
    /// parameter. Both send `size_param=page_size`.
    #[serde(default = "ApiSource::default_page_param")]
    pub page_param: String,
    #[serde(default = "ApiSource::default_first_page")]
    pub first_page: u64,
    /// The page-size parameter (`page` and `offset` paging).
    #[serde(default = "ApiSource::default_size_param")]
    pub size_param: String,
    /// Records asked for per page; a shorter page ends a `page` or `offset` read.
    #[serde(default = "ApiSource::default_page_size")]
    pub page_size: u64,
    /// Incremental reads: after a complete read, later reads send `since_param=<cursor>`.
    pub since_param: Option<String>,
    /// The cursor is the newest value of this record field (dotted path) seen in a complete read; none: the
    /// time the last complete read started (UTC, RFC 3339).
    pub since_field: Option<String>,
    /// Most requests per second sent to the API.
    #[serde(default = "ApiSource::default_rate")]
    pub rate_limit_per_second: f64,
    /// Seconds before a request is given up (and retried).
    #[serde(default = "ApiSource::default_timeout")]
    pub timeout_seconds: u64,
    /// Attempts per page (408, 429, 5xx, timeouts and network errors are retried).
    #[serde(default = "ApiSource::default_attempts")]
    pub max_attempts: usize,
    /// Most pages read in one cycle (a runaway next link stops here, loudly).
    #[serde(default = "ApiSource::default_max_pages")]
    pub max_pages: u64,
}

impl ApiSource {
    fn default_next() -> String {
        "next".into()
    }
    fn default_page_param() -> String {
        "page".into()
    }
    const fn default_first_page() -> u64 {
        1
    }
    fn default_size_param() -> String {
        "per_page".into()
    }
    const fn default_page_size() -> u64 {
        100
    }
    const fn default_rate() -> f64 {
        5.0
    }
    const fn default_timeout() -> u64 {
        30
    }
    const fn default_attempts() -> usize {
        5
    }
    const fn default_max_pages() -> u64 {
        10_000
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Paging {
    /// Each page names the next page's URL (`next`).
    #[default]
    NextLink,
    /// `?page=N&per_page=M`, until a page with fewer than M records.
    Page,
    /// `?offset=N&limit=M` (set `page_param = "offset"`, `size_param = "limit"`), until a short page.
    Offset,
}

/// How the connector proves who it is to a partner's API. Secrets come from files, never inline.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum ApiAuth {
    /// `Authorization: Bearer <token>`, the token read from this file.
    BearerFile(PathBuf),
    /// HTTP basic: `{ user = "...", password_file = "..." }`.
    Basic { user: String, password_file: PathBuf },
    /// A key sent in a header: `{ header = "X-API-Key", key_file = "..." }`.
    ApiKeyHeader { header: String, key_file: PathBuf },
}

/// The file's spelling, checked into [`SourceConfig`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    kind: Option<RecordKind>,
    #[serde(default)]
    kinds: Vec<RecordKind>,
    path: Option<PathBuf>,
    inbox: Option<PathBuf>,
    files: Option<String>,
    #[serde(default)]
    order: InboxOrder,
    #[serde(default = "default_settle")]
    settle_seconds: u64,
    #[serde(default)]
    done_marker: bool,
    #[serde(default = "default_keep_days")]
    keep_days: u32,
    url: Option<String>,
    auth: Option<ApiAuth>,
    api: Option<toml::Table>,
    #[serde(default)]
    mode: SourceMode,
    #[serde(default)]
    retract_missing: bool,
    #[serde(default = "default_refuse_below")]
    refuse_below_percent: u8,
}

const fn default_settle() -> u64 {
    60
}
const fn default_keep_days() -> u32 {
    90
}
const fn default_refuse_below() -> u8 {
    50
}

impl TryFrom<RawSource> for SourceConfig {
    type Error = String;

    fn try_from(r: RawSource) -> Result<Self, String> {
        let kinds = match (r.kind, r.kinds.is_empty()) {
            (Some(k), true) => vec![k],
            (None, false) => {
                let mut ks = r.kinds.clone();
                ks.sort();
                ks.dedup();
                if ks.len() != r.kinds.len() {
                    return Err("kinds lists a kind twice".into());
                }
                r.kinds
            }
            (Some(_), false) => return Err("set kind or kinds, not both".into()),
            (None, true) => return Err("set kind = \"person\" (or kinds = [\"person\", \"consent\"])".into()),
        };
        if r.url.is_none() && (r.auth.is_some() || r.api.is_some()) {
            return Err("auth and api go with url = \"https://...\" (a partner API source)".into());
        }
        let location = match (r.path, r.inbox, r.url) {
            (Some(p), None, None) => {
                if r.files.is_some() {
                    return Err("files = ... goes with inbox = ..., not path".into());
                }
                Location::File(p)
            }
            (None, Some(dir), None) => {
                let files = r.files.ok_or("an inbox source needs files = \"clients-*.csv\" (which files to read)")?;
                if files.contains('/') {
                    return Err("files is a file-name pattern, without folders".into());
                }
                if r.settle_seconds > 86_400 {
                    return Err("settle_seconds must be at most 86400".into());
                }
                if r.keep_days == 0 || r.keep_days > 3650 {
                    return Err("keep_days must be 1..3650".into());
                }
                Location::Inbox(InboxSource {
                    dir,
                    files,
                    order: r.order,
                    settle_seconds: r.settle_seconds,
                    done_marker: r.done_marker,
                    keep_days: r.keep_days,
                })
            }
            (None, None, Some(url)) => {
                let mut table = r.api.unwrap_or_default();
                table.insert("url".into(), toml::Value::String(url));
                let mut api: ApiSource = toml::Value::Table(table)
                    .try_into()
                    .map_err(|e: toml::de::Error| format!("api: {}", e.message()))?;
                api.auth = r.auth;
                Location::Api(Box::new(api))
            }
            (None, None, None) => return Err("say where the export is: path, inbox or url".into()),
            _ => return Err("set only one of path, inbox and url".into()),
        };
        if !(1..=100).contains(&r.refuse_below_percent) {
            return Err("refuse_below_percent must be 1..100".into());
        }
        if r.mode == SourceMode::Delta && r.retract_missing {
            return Err("retract_missing needs mode = \"snapshot\": in a delta, absence means nothing".into());
        }
        Ok(SourceConfig {
            kinds,
            location,
            mode: r.mode,
            retract_missing: r.retract_missing,
            refuse_below_percent: r.refuse_below_percent,
        })
    }
}

impl SourceConfig {
    /// How the source is named in messages, reports and metrics: its kinds, joined by `+`.
    pub fn kinds_label(&self) -> String {
        self.kinds.iter().map(ToString::to_string).collect::<Vec<_>>().join("+")
    }

    /// Where it is, for messages (a path, an inbox folder and pattern, or a URL without its query).
    pub fn place(&self) -> String {
        match &self.location {
            Location::File(p) => p.display().to_string(),
            Location::Inbox(i) => format!("{}/{}", i.dir.display(), i.files),
            Location::Api(a) => a.url.split('?').next().unwrap_or_default().to_string(),
        }
    }
}

/// True when `name` matches `pattern` (`*` any run, `?` one character; nothing else is special).
pub fn name_matches(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_names() {
        assert!(name_matches("clients-*.csv", "clients-2026-11-30.csv"));
        assert!(!name_matches("clients-*.csv", "clients-2026-11-30.csv.part"));
        assert!(name_matches("c?.csv", "c1.csv"));
        assert!(!name_matches("c?.csv", "c12.csv"));
        assert!(name_matches("*", "anything"));
    }

    fn parse(text: &str) -> Result<SourceConfig, String> {
        toml::from_str::<SourceConfig>(text).map_err(|e| e.message().to_string())
    }

    #[test]
    fn a_source_is_in_exactly_one_place() {
        assert!(matches!(parse("kind = \"person\"\npath = \"a.csv\"").unwrap().location, Location::File(_)));
        let inbox = parse("kinds = [\"person\", \"consent\"]\ninbox = \"in\"\nfiles = \"c-*.csv\"").unwrap();
        assert_eq!(inbox.kinds, vec![RecordKind::Person, RecordKind::Consent]);
        assert!(parse("kind = \"person\"\npath = \"a.csv\"\ninbox = \"in\"").unwrap_err().contains("only one"));
        assert!(parse("kind = \"person\"\ninbox = \"in\"").unwrap_err().contains("files"));
        assert!(parse("kind = \"person\"").unwrap_err().contains("path, inbox or url"));
        let api = parse("kind = \"person\"\nurl = \"https://p.example/api\"\napi = { paging = \"page\" }").unwrap();
        let Location::Api(a) = api.location else { panic!() };
        assert_eq!(a.paging, Paging::Page);
        assert!(
            parse("kind = \"person\"\npath = \"a.csv\"\nmode = \"delta\"\nretract_missing = true")
                .unwrap_err()
                .contains("snapshot")
        );
    }
}
