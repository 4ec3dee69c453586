//! Configuration: the TOML file an IT team writes (see `config.example.toml`). Unknown keys are rejected and
//! errors name the key and line. Everything is checked once, here, into typed values; the rest of the code
//! never re-checks strings. Secrets are read from files (or systemd credentials), never written inline.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use secrecy::SecretString;
use serde::Deserialize;

mod source;
pub use source::{
    ApiAuth, ApiSource, InboxOrder, InboxSource, Location, Paging, SourceConfig, SourceMode, name_matches,
};

use crate::schedule::{DEFAULT_TIMEZONE, Schedule};

/// A default schedule written in this file (a constant expression, known to parse).
fn every(expr: &str) -> Schedule {
    Schedule::parse(expr, DEFAULT_TIMEZONE).unwrap_or_else(|e| unreachable!("default schedule {expr}: {e}"))
}

/// The whole configuration file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the connector keeps its state (ledger, outbox, quarantine, audit).
    pub state: StateConfig,
    /// Where the mapping files are.
    #[serde(default)]
    pub mappings: MappingsConfig,
    /// Time zone and defaults for schedules.
    #[serde(default)]
    pub schedule: ScheduleConfig,
    /// Limits that keep memory and work bounded.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// The partners whose exports the connector reads.
    #[serde(default, rename = "partner")]
    pub partners: Vec<PartnerConfig>,
    /// The systems the connector writes to, by name (`cito`, `pkb`).
    #[serde(default, rename = "destination")]
    pub destinations: BTreeMap<String, DestinationConfig>,
    /// Information sharing agreements: what may flow where, and on which lawful basis. None: nothing flows.
    #[serde(default)]
    pub sharing: Vec<SharingConfig>,
    /// Where the audit trail is copied as FHIR, besides the state store.
    #[serde(default)]
    pub audit: AuditConfig,
    /// Health and metrics endpoints.
    #[serde(default)]
    pub ops: OpsConfig,
    /// What happens when a record changed both at its partner and on a destination.
    #[serde(default)]
    pub conflicts: ConflictsConfig,
    /// Partner feeds: each partner receives, in its own system, the unified record of its clients.
    #[serde(default, rename = "feed")]
    pub feeds: Vec<FeedConfig>,

    /// The folder the file was read from; relative paths in the file are taken from here.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// `sqlite://PATH` (embedded default; a relative path is taken from the config file's folder) or
    /// `postgres://user@host/db` when several connector instances share the work.
    pub url: String,
    /// Folder for partner API reads on their way to planning (owner-only; each file is deleted once its rows
    /// are planned). Default: `spool` under systemd's `$STATE_DIRECTORY`, else beside the SQLite file, else
    /// under the system's temporary folder.
    pub spool_dir: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MappingsConfig {
    /// Folder with one sub-folder per partner (see mappings/README.md).
    #[serde(default = "MappingsConfig::default_dir")]
    pub dir: PathBuf,
}

impl MappingsConfig {
    fn default_dir() -> PathBuf {
        PathBuf::from("mappings")
    }
}

impl Default for MappingsConfig {
    fn default() -> Self {
        Self { dir: Self::default_dir() }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// IANA time zone that cron expressions are read in; Europe/London follows the UK clock changes.
    #[serde(default = "ScheduleConfig::default_tz", deserialize_with = "crate::schedule::deserialize_timezone")]
    pub timezone: chrono_tz::Tz,
    /// A job (one partner's ingest, one destination's delivery, a feed) that has been running this long is
    /// taken to be stuck: the connector logs an error naming it and stops feeding the systemd watchdog, so
    /// systemd restarts it (the outbox is durable and leases are reclaimed, so nothing is lost or sent twice).
    #[serde(default = "ScheduleConfig::default_stuck_after")]
    pub stuck_after_seconds: u64,
}

impl ScheduleConfig {
    const fn default_tz() -> chrono_tz::Tz {
        DEFAULT_TIMEZONE
    }
    const fn default_stuck_after() -> u64 {
        6 * 3600
    }
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self { timezone: Self::default_tz(), stuck_after_seconds: Self::default_stuck_after() }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest export file accepted, in bytes; a larger one is refused with a clear error. The default,
    /// 256 MiB, is about ten times the largest export a partner sends today (the Hub's full contact history,
    /// ~25 MB as CSV): room to grow, while a runaway or hostile file is refused before it costs a cycle. The
    /// readers stream, so memory does not follow this number (see the README's limits), but time and the
    /// quarantine's size do.
    #[serde(default = "LimitsConfig::default_max_input_bytes")]
    pub max_input_bytes: u64,
}

impl LimitsConfig {
    pub const fn default_max_input_bytes() -> u64 {
        256 * 1024 * 1024
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self { max_input_bytes: Self::default_max_input_bytes() }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartnerConfig {
    /// The partner's id: the name of its folder under the mappings folder.
    pub id: String,
    /// When to read this partner's sources (cron: `min hour day month weekday`, in `[schedule] timezone`).
    #[serde(default = "PartnerConfig::default_schedule")]
    pub schedule: Schedule,
    /// The exports this partner delivers.
    #[serde(default, rename = "source")]
    pub sources: Vec<SourceConfig>,
}

impl PartnerConfig {
    fn default_schedule() -> Schedule {
        every("*/15 * * * *")
    }
}

/// The destination profiles: what rules a destination's data must follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// Cito, the central record: generic FHIR R4.
    Cito,
    /// Patients Know Best: privacy labels, OAuth2 client credentials, X-Org-Public-Id.
    Pkb,
}

/// How a destination is reached; one variant per transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    /// FHIR R4 REST with transaction bundles.
    #[default]
    Fhir,
    /// HL7 v2 messages over MLLP (a trust's integration engine): write-only, settings in `[destination.NAME.hl7v2]`.
    Hl7v2,
}

/// `[destination.NAME.hl7v2]`: how an HL7 v2 destination (an integration engine's MLLP port) is reached and
/// what its messages say about who sends them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hl7v2Config {
    /// `mllp://host:port` (plain TCP: loopback only unless `allow_plain_mllp`) or `mllps://host:port` (TLS).
    pub address: MllpAddress,
    /// Allow plain `mllp://` to a host that is not loopback (only on a network protected otherwise, e.g. the
    /// trust's HSCN link to the engine); a warning is logged.
    #[serde(default)]
    pub allow_plain_mllp: bool,
    /// The HL7 v2 version the messages declare and follow: `2.5.1` (default) or `2.4`.
    #[serde(default)]
    pub version: Hl7Version,
    /// Seconds to wait for the engine's ACK before the message is sent again (same control id).
    #[serde(default = "Hl7v2Config::default_ack_timeout")]
    pub ack_timeout_seconds: u64,
    /// MSH-3, the sending application.
    #[serde(default = "Hl7v2Config::default_sending_application")]
    pub sending_application: String,
    /// MSH-4, the sending facility.
    #[serde(default = "Hl7v2Config::default_sending_facility")]
    pub sending_facility: String,
    /// MSH-5, the receiving application (the engine's name for the EPR feed).
    pub receiving_application: String,
    /// MSH-6, the receiving facility (the trust).
    pub receiving_facility: String,
    /// The folder of message definitions (`<type>.toml`, see mappings/hl7v2/README.md); default
    /// `<mappings.dir>/hl7v2`.
    pub messages_dir: Option<PathBuf>,
    /// For `mllps://`: a PEM file of CA certificates trusted besides the system's (a trust's own CA for the
    /// engine's certificate). Relative to the config file's folder.
    pub ca_file: Option<PathBuf>,
}

impl Hl7v2Config {
    const fn default_ack_timeout() -> u64 {
        30
    }
    /// The folder of message definitions: `messages_dir`, else `<mappings.dir>/hl7v2`.
    pub fn messages_dir(&self, config: &Config) -> PathBuf {
        match &self.messages_dir {
            Some(p) => config.resolve(p),
            None => config.resolve(&config.mappings.dir).join(crate::mapping::compile::HL7V2_MESSAGES_FOLDER),
        }
    }
    /// `ca_file`, resolved against the config file's folder.
    pub fn ca_file(&self, config: &Config) -> Option<PathBuf> {
        self.ca_file.as_ref().map(|p| config.resolve(p))
    }
    fn default_sending_application() -> String {
        "YORKHUB".into()
    }
    fn default_sending_facility() -> String {
        "YORKHUB".into()
    }
}

/// An HL7 v2 version the connector writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub enum Hl7Version {
    #[serde(rename = "2.4")]
    V2_4,
    #[default]
    #[serde(rename = "2.5.1")]
    V2_5_1,
}

impl Hl7Version {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::V2_4 => "2.4",
            Self::V2_5_1 => "2.5.1",
        }
    }
}

/// An MLLP address, parsed as the file is read: `mllp://host:port` or `mllps://host:port` (TLS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MllpAddress {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

impl MllpAddress {
    pub fn parse(text: &str) -> Result<Self, String> {
        let (tls, rest) = if let Some(r) = text.strip_prefix("mllps://") {
            (true, r)
        } else if let Some(r) = text.strip_prefix("mllp://") {
            (false, r)
        } else {
            return Err(format!("\"{text}\" must start with mllp:// or mllps:// (TLS)"));
        };
        let rest = rest.trim_end_matches('/');
        if rest.contains(['@', '/', '?', '#']) {
            return Err(format!("\"{text}\" must be mllp://host:port, with no user-info or path"));
        }
        let (host, port) = rest.rsplit_once(':').ok_or_else(|| format!("\"{text}\" has no port (mllp://host:port)"))?;
        let port = port.parse::<u16>().map_err(|_| format!("\"{text}\": the port must be a number up to 65535"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("\"{text}\" has no host name"));
        }
        Ok(Self { host: host.to_string(), port, tls })
    }

    /// True when the host is a loopback address or `localhost`.
    pub fn is_loopback(&self) -> bool {
        self.host.eq_ignore_ascii_case("localhost")
            || self.host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }
}

impl std::fmt::Display for MllpAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "mllps" } else { "mllp" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

impl<'de> Deserialize<'de> for MllpAddress {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        MllpAddress::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationConfig {
    /// The rules this destination's data follows: `cito` or `pkb`.
    pub profile: Profile,
    /// How it is reached: `fhir` (default) or `hl7v2` (then `[destination.NAME.hl7v2]` says where).
    #[serde(default)]
    pub transport: TransportKind,
    /// The FHIR base URL, for example `https://fhir.example.nhs.uk/R4` (required for `transport = "fhir"`).
    pub base_url: Option<HttpUrl>,
    /// HL7 v2 over MLLP settings (required for `transport = "hl7v2"`).
    pub hl7v2: Option<Hl7v2Config>,
    /// Plain `http://` to anything but loopback is refused unless this is true (and then warned about).
    #[serde(default)]
    pub allow_insecure_http: bool,
    /// Resources per transaction bundle.
    #[serde(default = "DestinationConfig::default_batch_size")]
    pub batch_size: usize,
    /// Bundles in flight at once.
    #[serde(default = "DestinationConfig::default_concurrency")]
    pub concurrency: usize,
    /// Most requests per second sent to this destination.
    #[serde(default = "DestinationConfig::default_rate")]
    pub rate_limit_per_second: f64,
    /// Seconds before a request is given up (and retried).
    #[serde(default = "DestinationConfig::default_timeout")]
    pub timeout_seconds: u64,
    /// Attempts for one bundle before its rows wait for a later cycle.
    #[serde(default = "DestinationConfig::default_attempts")]
    pub max_attempts: usize,
    /// Seconds a bundle waits before it is tried again, once every attempt has failed.
    #[serde(default = "DestinationConfig::default_defer")]
    pub defer_seconds: u64,
    /// Consecutive failed bundles that open the circuit breaker, pausing the destination.
    #[serde(default = "DestinationConfig::default_breaker_failures")]
    pub breaker_failures: u32,
    /// Seconds the circuit stays open before one trial bundle.
    #[serde(default = "DestinationConfig::default_breaker_cooldown")]
    pub breaker_cooldown_seconds: u64,
    /// When to deliver the outbox (cron, in `[schedule] timezone`).
    #[serde(default = "DestinationConfig::default_schedule")]
    pub schedule: Schedule,
    /// OAuth2 client credentials (PKB).
    pub auth: Option<AuthConfig>,
    /// PKB: the organisation's public id, sent as X-Org-Public-Id.
    pub org_public_id: Option<String>,
    /// Delete from this destination what it holds but may no longer hold (consent withdrawn or narrowed,
    /// agreement ended). Off: such records are listed in the withdrawal report for an admin to act on.
    #[serde(default)]
    pub retract: bool,
    /// When to read back what others changed there (cron, in `[schedule] timezone`); none: no pull.
    pub pull_schedule: Option<Schedule>,
}

/// `[[feed]]`: what one partner receives of the unified record, how often and where.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedConfig {
    /// The partner receiving the feed (a `[[partner]]`). Its clients are the people it has an open
    /// episode with in its own exports: an EpisodeOfCare it manages, or a referral (ServiceRequest) to it,
    /// that is active, on hold or waiting.
    pub partner: String,
    /// The destination holding the central record the feed is assembled from (default `cito`).
    #[serde(default = "FeedConfig::default_from")]
    pub from: String,
    /// The FHIR resource types the partner receives, e.g. `["Patient", "Encounter", "Goal"]`.
    pub resources: Vec<String>,
    /// How often (cron: `min hour day month weekday`, in `[schedule] timezone`).
    #[serde(default = "FeedConfig::default_schedule")]
    pub schedule: Schedule,
    /// `bundle` (a FHIR Bundle of type collection per person), `ndjson` (one resource a line, per person)
    /// or `csv` (the partner's own column layout, through its reverse mappings, `<kind>.reverse.toml`).
    #[serde(default)]
    pub format: FeedFormat,
    /// Deliver to a folder (for SFTP pick-up): each document is written whole, then renamed into place.
    pub folder: Option<PathBuf>,
    /// Deliver to the partner's FHIR R4 endpoint, as a transaction of PUTs (format must be `bundle`).
    pub fhir_url: Option<HttpUrl>,
    /// Deliver by HTTP POST of each document to the partner's webhook.
    pub webhook_url: Option<HttpUrl>,
    /// A file holding a bearer token sent to `fhir_url` or `webhook_url` (e.g. a systemd credential).
    pub token_file: Option<PathBuf>,
    /// Allow plain http:// to a host that is not loopback (only on a network protected otherwise).
    #[serde(default)]
    pub allow_insecure_http: bool,
    /// Attempts per document before it becomes a dead letter (`connector outbox list --destination feed:P`).
    #[serde(default = "FeedConfig::default_attempts")]
    pub max_attempts: usize,
    /// Seconds each request may take.
    #[serde(default = "FeedConfig::default_timeout")]
    pub timeout_seconds: u64,
}

impl FeedConfig {
    fn default_from() -> String {
        "cito".into()
    }
    fn default_schedule() -> Schedule {
        every("0 * * * *")
    }
    const fn default_attempts() -> usize {
        5
    }
    const fn default_timeout() -> u64 {
        30
    }
    /// The feed's name in the outbox, the audit trail and sharing agreements: `feed:<partner>`.
    pub fn name(&self) -> String {
        crate::model::JobName::Feed(self.partner.clone()).to_string()
    }
}

/// The shape of a partner feed's documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FeedFormat {
    #[default]
    Bundle,
    Ndjson,
    Csv,
}

/// `[conflicts]`: a record changed both by its partner and on a destination since the connector last wrote it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConflictsConfig {
    /// Resource types whose changes on the two sides are merged when they touch different elements (for
    /// example a partner's new address and a clinician's new phone number on a Patient). Types not listed:
    /// any change on both sides is a conflict for an admin. Changes to the same element are always a conflict.
    #[serde(default)]
    pub auto_merge: Vec<String>,
}

/// One information sharing agreement: `partner`'s data of `categories` may go to `destination`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharingConfig {
    /// The agreement's name or reference, as the audit trail will cite it (e.g. "ISA-2024-03 Hub to Cito").
    pub name: String,
    /// The partner whose data it covers.
    pub partner: String,
    /// The destination it may go to.
    pub destination: String,
    /// general_health, mental_health, sexual_health, social_care.
    pub categories: Vec<crate::model::Category>,
    /// The lawful basis, as the agreement states it (UK GDPR articles 6 and 9).
    pub lawful_basis: String,
    /// True (the default): the person's explicit consent to share with this destination is needed.
    /// False: it flows unless the person has objected (declined, withdrawn, said no to this destination or
    /// restricted the category).
    #[serde(default = "yes")]
    pub consent_required: bool,
}

fn yes() -> bool {
    true
}

/// `[ops]`: `/healthz`, `/readyz` and `/metrics` for the service's watchers.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpsConfig {
    /// A loopback address and port to serve them on, e.g. "127.0.0.1:9464"; none: not served.
    pub listen: Option<std::net::SocketAddr>,
    /// `/readyz` reports unready once a destination's circuit has stayed open this long.
    #[serde(default = "OpsConfig::default_unready_after")]
    pub unready_after_seconds: u64,
}

impl OpsConfig {
    const fn default_unready_after() -> u64 {
        300
    }
}

impl Default for OpsConfig {
    fn default() -> Self {
        Self { listen: None, unready_after_seconds: Self::default_unready_after() }
    }
}

/// `[audit]`: the audit trail is always kept in the state store; this copies it to a FHIR destination too.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// A destination name: each disclosure and retraction is also written there as a FHIR Provenance.
    pub fhir_destination: Option<String>,
}

impl DestinationConfig {
    const fn default_batch_size() -> usize {
        50
    }
    const fn default_concurrency() -> usize {
        2
    }
    const fn default_rate() -> f64 {
        20.0
    }
    const fn default_timeout() -> u64 {
        30
    }
    const fn default_attempts() -> usize {
        6
    }
    const fn default_defer() -> u64 {
        60
    }
    const fn default_breaker_failures() -> u32 {
        5
    }
    const fn default_breaker_cooldown() -> u64 {
        60
    }
    fn default_schedule() -> Schedule {
        every("*/5 * * * *")
    }
    /// The FHIR base URL; empty for a destination reached another way.
    pub fn fhir_url(&self) -> &str {
        self.base_url.as_ref().map_or("", HttpUrl::as_str)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// OAuth2 token endpoint (client credentials, sent with HTTP Basic).
    pub token_url: HttpUrl,
    /// The OAuth2 client id.
    pub client_id: String,
    /// File holding the client secret: a path, or a name looked up in `$CREDENTIALS_DIRECTORY` (systemd
    /// `LoadCredential=`) first.
    pub client_secret_file: PathBuf,
    /// Renew the token this many seconds before it expires.
    #[serde(default = "AuthConfig::default_renew")]
    pub renew_before_seconds: u64,
}

impl AuthConfig {
    const fn default_renew() -> u64 {
        60
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read the configuration: {source}; pass --config FILE or set CONNECTOR_CONFIG", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}:{line}: {message}", path.display())]
    Parse { path: PathBuf, line: usize, message: String },
    #[error("{}: {key}: {message}", path.display())]
    Invalid { path: PathBuf, key: String, message: String },
    #[error("{}: cannot read the secret for {key}: {source}", path.display())]
    Secret {
        path: PathBuf,
        key: String,
        #[source]
        source: std::io::Error,
    },
}

impl Config {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        let mut config: Config = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            line: e.span().map_or(1, |s| text[..s.start.min(text.len())].bytes().filter(|&b| b == b'\n').count() + 1),
            message: e.message().to_string(),
        })?;
        config.base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        config.zone_schedules();
        config.check(path)?;
        Ok(config)
    }

    fn check(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: String, message: String| ConfigError::Invalid { path: path.to_path_buf(), key, message };
        bounded("schedule.stuck_after_seconds", self.schedule.stuck_after_seconds, 60, MAX_SECONDS_WEEK)
            .map_err(|(k, m)| invalid(k, m))?;
        let mut seen = std::collections::HashSet::new();
        for p in &self.partners {
            if !seen.insert(&p.id) {
                return Err(invalid(format!("partner {}", p.id), "listed twice".into()));
            }
        }
        for p in &self.partners {
            for (i, src) in p.sources.iter().enumerate() {
                let key = |k: &str| format!("partner {}: source[{i}] ({}).{k}", p.id, src.kinds_label());
                if let Location::Api(a) = &src.location {
                    check_url(&a.url, &key("api.allow_insecure_http"), a.allow_insecure_http)
                        .map_err(|m| invalid(key("url"), m))?;
                    if !a.rate_limit_per_second.is_finite()
                        || a.rate_limit_per_second <= 0.0
                        || a.rate_limit_per_second > 1000.0
                    {
                        return Err(invalid(
                            key("api.rate_limit_per_second"),
                            "must be above 0 and at most 1000".into(),
                        ));
                    }
                    for (k, v, min, max) in [
                        ("api.page_size", a.page_size, 1, 10_000),
                        ("api.max_attempts", a.max_attempts as u64, 1, 100),
                        ("api.timeout_seconds", a.timeout_seconds, 1, MAX_SECONDS_HOUR),
                        ("api.max_pages", a.max_pages, 1, 1_000_000),
                    ] {
                        bounded(&key(k), v, min, max).map_err(|(k, m)| invalid(k, m))?;
                    }
                }
            }
        }
        for (name, d) in &self.destinations {
            let key = |k: &str| format!("destination.{name}.{k}");
            let insecure_key = format!("destination.{name}.allow_insecure_http");
            match (d.transport, &d.base_url, &d.hl7v2) {
                (TransportKind::Fhir, Some(url), None) => {
                    check_url(url, &insecure_key, d.allow_insecure_http).map_err(|m| invalid(key("base_url"), m))?;
                }
                (TransportKind::Fhir, None, _) => {
                    return Err(invalid(key("base_url"), "is required for a FHIR destination".into()));
                }
                (TransportKind::Fhir, Some(_), Some(_)) => {
                    return Err(invalid(key("hl7v2"), "is only for transport = \"hl7v2\"; remove it".into()));
                }
                (TransportKind::Hl7v2, _, None) => {
                    return Err(invalid(
                        key("hl7v2"),
                        "is required for transport = \"hl7v2\" (address, receiving_application, receiving_facility)"
                            .into(),
                    ));
                }
                (TransportKind::Hl7v2, Some(_), Some(_)) => {
                    return Err(invalid(
                        key("base_url"),
                        "is for FHIR destinations; an HL7 v2 destination is reached at hl7v2.address".into(),
                    ));
                }
                (TransportKind::Hl7v2, None, Some(h)) => check_hl7v2(h, &key).map_err(|(k, m)| invalid(k, m))?,
            }
            if d.transport == TransportKind::Hl7v2 && d.pull_schedule.is_some() {
                return Err(invalid(
                    key("pull_schedule"),
                    "an HL7 v2 destination cannot be read back, so there is nothing to pull; remove it".into(),
                ));
            }
            if let Some(a) = &d.auth {
                // The client secret goes here: the same rule as the data, under the destination's own key.
                check_url(&a.token_url, &insecure_key, d.allow_insecure_http)
                    .map_err(|m| invalid(key("auth.token_url"), m))?;
                bounded(&key("auth.renew_before_seconds"), a.renew_before_seconds, 0, MAX_SECONDS_DAY)
                    .map_err(|(k, m)| invalid(k, m))?;
            }
            for (k, v, min, max) in [
                ("batch_size", d.batch_size as u64, 1, 1000),
                ("concurrency", d.concurrency as u64, 1, 64),
                ("max_attempts", d.max_attempts as u64, 1, 100),
                ("timeout_seconds", d.timeout_seconds, 1, MAX_SECONDS_HOUR),
                ("defer_seconds", d.defer_seconds, 0, MAX_SECONDS_WEEK),
                ("breaker_cooldown_seconds", d.breaker_cooldown_seconds, 0, MAX_SECONDS_DAY),
            ] {
                bounded(&key(k), v, min, max).map_err(|(k, m)| invalid(k, m))?;
            }
            if !d.rate_limit_per_second.is_finite()
                || d.rate_limit_per_second <= 0.0
                || d.rate_limit_per_second > 10_000.0
            {
                return Err(invalid(key("rate_limit_per_second"), "must be above 0 and at most 10000".into()));
            }
            if d.retract && d.profile == Profile::Pkb {
                tracing::info!(destination = %name, "retract = true: records this destination may no longer hold will be deleted from it.");
            }
            if d.profile == Profile::Pkb && d.auth.is_none() {
                tracing::warn!(destination = %name, "PKB destination without [auth]; requests go unauthenticated (test servers only).");
            }
        }
        let partners: std::collections::HashSet<&str> = self.partners.iter().map(|p| p.id.as_str()).collect();
        let mut feeds = std::collections::HashSet::new();
        for (i, f) in self.feeds.iter().enumerate() {
            let key = |k: &str| format!("feed[{i}] ({}).{k}", f.partner);
            if !partners.contains(f.partner.as_str()) {
                return Err(invalid(key("partner"), format!("\"{}\" is not a [[partner]] of this config", f.partner)));
            }
            if !feeds.insert(f.name()) {
                return Err(invalid(key("partner"), "a partner has one feed; this one is listed twice".into()));
            }
            if !self.destinations.contains_key(&f.from) {
                return Err(invalid(key("from"), format!("\"{}\" is not a [destination.*] of this config", f.from)));
            }
            if f.resources.is_empty() {
                return Err(invalid(key("resources"), "lists no resource type, so the feed would be empty".into()));
            }
            if let Some(t) = f.resources.iter().find(|t| !crate::model::RESOURCE_TYPES.contains(&t.as_str())) {
                return Err(invalid(
                    key("resources"),
                    format!("\"{t}\" is not one of {}", crate::model::RESOURCE_TYPES.join(", ")),
                ));
            }
            let targets = [f.folder.is_some(), f.fhir_url.is_some(), f.webhook_url.is_some()];
            if targets.iter().filter(|t| **t).count() != 1 {
                return Err(invalid(
                    key("folder"),
                    "set exactly one of folder, fhir_url and webhook_url: where the feed is delivered".into(),
                ));
            }
            if f.fhir_url.is_some() && f.format != FeedFormat::Bundle {
                return Err(invalid(key("format"), "a FHIR endpoint takes format = \"bundle\"".into()));
            }
            let insecure_key = key("allow_insecure_http");
            for (k, url) in [("fhir_url", &f.fhir_url), ("webhook_url", &f.webhook_url)] {
                if let Some(url) = url {
                    check_url(url, &insecure_key, f.allow_insecure_http).map_err(|m| invalid(key(k), m))?;
                }
            }
            bounded(&key("max_attempts"), f.max_attempts as u64, 1, 100).map_err(|(k, m)| invalid(k, m))?;
            bounded(&key("timeout_seconds"), f.timeout_seconds, 1, MAX_SECONDS_HOUR).map_err(|(k, m)| invalid(k, m))?;
        }
        let mut names = std::collections::HashSet::new();
        for (i, a) in self.sharing.iter().enumerate() {
            let key = |k: &str| format!("sharing[{i}] ({}).{k}", a.name);
            if !names.insert(a.name.as_str()) {
                return Err(invalid(key("name"), "two agreements share this name; the audit trail cites it".into()));
            }
            let to_feed = feeds.contains(a.destination.as_str());
            // Into a feed may also flow what others entered directly on the central record it reads.
            let known_partner = partners.contains(a.partner.as_str())
                || (to_feed && self.feeds.iter().any(|f| f.name() == a.destination && f.from == a.partner));
            if !known_partner {
                return Err(invalid(
                    key("partner"),
                    format!(
                        "\"{}\" is not a [[partner]] of this config (nor, for a feed, the destination it reads)",
                        a.partner
                    ),
                ));
            }
            if !self.destinations.contains_key(&a.destination) && !to_feed {
                return Err(invalid(
                    key("destination"),
                    format!(
                        "\"{}\" is not a [destination.*] of this config, nor a partner feed (feed:<partner> of a [[feed]])",
                        a.destination
                    ),
                ));
            }
            if a.categories.is_empty() {
                return Err(invalid(key("categories"), "lists no category, so it allows nothing; remove it".into()));
            }
            if a.lawful_basis.trim().is_empty() {
                return Err(invalid(key("lawful_basis"), "every agreement must state its lawful basis".into()));
            }
        }
        if let Some(d) = &self.audit.fhir_destination
            && !self.destinations.contains_key(d)
        {
            return Err(invalid("audit.fhir_destination".into(), format!("\"{d}\" is not a [destination.*]")));
        }
        bounded("ops.unready_after_seconds", self.ops.unready_after_seconds, 0, MAX_SECONDS_WEEK)
            .map_err(|(k, m)| invalid(k, m))?;
        if let Some(listen) = &self.ops.listen
            && !listen.ip().is_loopback()
        {
            return Err(invalid(
                "ops.listen".into(),
                "must be a loopback address (127.0.0.1:PORT or [::1]:PORT); put a proxy in front to reach it from elsewhere".into(),
            ));
        }
        if self.sharing.is_empty() && !self.destinations.is_empty() {
            tracing::warn!("No [[sharing]] agreements in the config: nothing will be sent to any destination.");
        }
        Ok(())
    }

    /// The jobs `connector run` schedules for this configuration, with their schedules: each partner's ingest,
    /// each destination's delivery, each partner feed, and each destination's pull where it has a
    /// `pull_schedule`. `connector status` and `/metrics` list these.
    pub fn jobs(&self) -> Vec<(crate::model::JobName, &Schedule)> {
        use crate::model::JobName;
        let ingest = self.partners.iter().map(|p| (JobName::Ingest(p.id.clone()), &p.schedule));
        let deliver = self.destinations.iter().map(|(n, d)| (JobName::Deliver(n.clone()), &d.schedule));
        let feed = self.feeds.iter().map(|f| (JobName::Feed(f.partner.clone()), &f.schedule));
        let pull =
            self.destinations.iter().filter_map(|(n, d)| Some((JobName::Pull(n.clone()), d.pull_schedule.as_ref()?)));
        ingest.chain(deliver).chain(feed).chain(pull).collect()
    }

    /// A path from the file, taken from the config file's folder when relative.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() { p.to_path_buf() } else { self.base_dir.join(p) }
    }

    /// The state URL with a relative SQLite path taken from the config file's folder.
    pub fn state_url(&self) -> String {
        match self.state.url.strip_prefix("sqlite://") {
            Some(rest) if !rest.starts_with('/') && !rest.starts_with(':') => {
                format!("sqlite://{}", self.base_dir.join(rest).display())
            }
            _ => self.state.url.clone(),
        }
    }

    /// Where partner API reads are spooled (see `[state] spool_dir`).
    pub fn spool_dir(&self) -> PathBuf {
        if let Some(d) = &self.state.spool_dir {
            return self.resolve(d);
        }
        if let Some(d) = std::env::var_os("STATE_DIRECTORY").filter(|d| !d.is_empty()) {
            // systemd may list several, separated by ':'; the first is the connector's own.
            let first = d.to_string_lossy().split(':').next().unwrap_or_default().to_string();
            return PathBuf::from(first).join("spool");
        }
        match self.state_url().strip_prefix("sqlite://") {
            Some(file) if file.starts_with('/') => {
                let file = file.split('?').next().unwrap_or(file);
                Path::new(file).parent().map_or_else(|| PathBuf::from("spool"), |d| d.join("spool"))
            }
            _ => std::env::temp_dir().join(format!("connector-spool-{}", std::process::id())),
        }
    }

    pub fn timezone(&self) -> chrono_tz::Tz {
        self.schedule.timezone
    }

    /// Moves every schedule into `[schedule] timezone` (they are parsed before it is known).
    fn zone_schedules(&mut self) {
        let tz = self.schedule.timezone;
        let rezone = |s: &mut Schedule| *s = s.clone().in_timezone(tz);
        self.partners.iter_mut().for_each(|p| rezone(&mut p.schedule));
        for d in self.destinations.values_mut() {
            rezone(&mut d.schedule);
            d.pull_schedule.iter_mut().for_each(rezone);
        }
        self.feeds.iter_mut().for_each(|f| rezone(&mut f.schedule));
    }
}

const MAX_SECONDS_HOUR: u64 = 3600;
const MAX_SECONDS_DAY: u64 = 86_400;
const MAX_SECONDS_WEEK: u64 = 7 * 86_400;

/// `Ok` when `min <= value <= max`; else the key and a message saying the range. Bounds keep every
/// duration and count the connector computes with far from overflow.
fn bounded(key: &str, value: u64, min: u64, max: u64) -> Result<(), (String, String)> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err((key.to_string(), format!("is {value}; it must be between {min} and {max}")))
    }
}

/// The HL7 v2 settings: the plain-MLLP rule (as for http: loopback only unless allowed), the ACK timeout, and
/// MSH names that fit in a field.
fn check_hl7v2(h: &Hl7v2Config, key: &dyn Fn(&str) -> String) -> Result<(), (String, String)> {
    if h.ca_file.is_some() && !h.address.tls {
        return Err((key("hl7v2.ca_file"), "is for mllps:// (TLS) addresses; remove it or use mllps://".into()));
    }
    if !h.address.tls && !h.address.is_loopback() {
        if !h.allow_plain_mllp {
            return Err((
                key("hl7v2.address"),
                "plain mllp:// to a non-loopback host would send personal data unencrypted; use mllps://, or set \
                 hl7v2.allow_plain_mllp = true if this network is protected otherwise"
                    .into(),
            ));
        }
        tracing::warn!(key = %key("hl7v2.allow_plain_mllp"), "Plain mllp:// to a host that is not loopback: data goes unencrypted.");
    }
    bounded(&key("hl7v2.ack_timeout_seconds"), h.ack_timeout_seconds, 1, MAX_SECONDS_HOUR)?;
    for (k, v) in [
        ("hl7v2.sending_application", &h.sending_application),
        ("hl7v2.sending_facility", &h.sending_facility),
        ("hl7v2.receiving_application", &h.receiving_application),
        ("hl7v2.receiving_facility", &h.receiving_facility),
    ] {
        if v.is_empty() || v.len() > 180 || !v.chars().all(|c| c.is_ascii_alphanumeric() || " -_.".contains(c)) {
            return Err((key(k), "must be 1-180 letters, digits, spaces, '-', '_' or '.'".into()));
        }
    }
    Ok(())
}

/// The rule for every URL the connector calls (destinations, token endpoints, partner feeds): parsed as a URL
/// (never matched as text), `https://`, or `http://` to a loopback host; plain http to another host only when
/// the setting `insecure_key` allows it (`allow_insecure`; then a warning is logged). User-info
/// (`user:password@`) is refused: credentials belong in secret files, and `@` is how a URL hides its real host.
pub fn check_url(url: &str, insecure_key: &str, allow_insecure: bool) -> Result<reqwest::Url, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("is not a URL ({e})"))?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("must not contain user-info (user:password@); put credentials in a secret file".into());
    }
    if parsed.host().is_none() {
        return Err("has no host name".into());
    }
    match parsed.scheme() {
        "https" => Ok(parsed),
        "http" if is_loopback(&parsed) => Ok(parsed),
        "http" if allow_insecure => {
            tracing::warn!(
                key = insecure_key,
                "Plain http:// to a host that is not loopback: data and secrets go unencrypted."
            );
            Ok(parsed)
        }
        "http" => Err(format!(
            "plain http:// to a non-loopback host would send personal data and secrets unencrypted; use https://, \
             or set {insecure_key} = true if this network is protected otherwise"
        )),
        other => Err(format!("must start with https:// (or http:// for loopback), not {other}://")),
    }
}

/// An `http(s)://` URL from the file, parsed as it is read: a URL that does not parse, has no host, carries
/// user-info or another scheme is refused with its line. The text is kept as written (parsing would add a
/// trailing `/`); whether plain http is allowed depends on the sibling `allow_insecure_http` and is checked
/// with the rest of the file ([`check_url`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl(String);

impl HttpUrl {
    pub fn parse(text: &str) -> Result<HttpUrl, String> {
        let parsed = reqwest::Url::parse(text).map_err(|e| format!("\"{text}\" is not a URL ({e})"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(format!("\"{text}\" must start with https:// (or http:// for loopback)"));
        }
        if parsed.host().is_none() {
            return Err(format!("\"{text}\" has no host name"));
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err("a URL must not contain user-info (user:password@); put credentials in a secret file".into());
        }
        Ok(HttpUrl(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for HttpUrl {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for HttpUrl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        HttpUrl::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// True when the parsed URL's host is a loopback address or `localhost`.
fn is_loopback(url: &reqwest::Url) -> bool {
    // `host_str` is the parsed host: an IPv6 address in brackets, a domain lower-cased.
    let Some(host) = url.host_str() else { return false };
    let host = host.trim_start_matches('[').trim_end_matches(']').trim_end_matches('.');
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// True when the URL's host, as a URL parser reads it (so `http://remote?@127.0.0.1/` is `remote`), is a
/// loopback address or `localhost`. Unparseable URLs are not loopback.
pub fn is_loopback_url(url: &str) -> bool {
    reqwest::Url::parse(url).is_ok_and(|u| is_loopback(&u))
}

impl AuthConfig {
    /// Where the client secret is read from: `$CREDENTIALS_DIRECTORY/<name>` when systemd supplies it, else
    /// the configured path (taken from the config's folder); `None` when neither exists.
    pub fn secret_path(&self, config: &Config) -> Option<PathBuf> {
        std::env::var_os("CREDENTIALS_DIRECTORY")
            .map(|d| PathBuf::from(d).join(&self.client_secret_file))
            .filter(|p| p.exists())
            .or_else(|| Some(config.resolve(&self.client_secret_file)).filter(|p| p.exists()))
    }

    /// Reads the client secret: from `$CREDENTIALS_DIRECTORY/<name>` when systemd supplies it, else the path.
    pub fn client_secret(&self, config: &Config, destination: &str) -> Result<SecretString, ConfigError> {
        let path = self.secret_path(config).unwrap_or_else(|| config.resolve(&self.client_secret_file));
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Secret {
            path,
            key: format!("destination.{destination}.auth.client_secret_file"),
            source,
        })?;
        Ok(SecretString::from(text.trim_end_matches(['\n', '\r']).to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Config, ConfigError> {
        let dir = std::env::temp_dir().join(format!("connector-config-{}-{}", std::process::id(), text.len()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("config.toml");
        std::fs::write(&p, text).unwrap();
        Config::load(&p)
    }

    #[test]
    fn unknown_keys_name_the_line() {
        let err = load("[state]\nurl = \"sqlite://x.db\"\n\n[[partner]]\nid = \"hub\"\nshedule = \"* * * * *\"\n")
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("config.toml:6:") && msg.contains("unknown field `shedule`"), "{msg}");
    }

    #[test]
    fn schedules_zones_and_addresses_are_refused_as_the_file_is_read() {
        let base = "[state]\nurl = \"sqlite://x.db\"\n";
        for (text, line, says) in [
            ("[[partner]]\nid = \"hub\"\nschedule = \"61 * * * *\"\n", 5, "61 * * * *"),
            ("[[partner]]\nid = \"hub\"\nschedule = \"0 0 30 2 *\"\n", 5, "never fires"),
            ("[schedule]\ntimezone = \"Europe/Lundun\"\n", 4, "Europe/Lundun"),
            ("[ops]\nlisten = \"localhost-9464\"\n", 4, "socket address"),
        ] {
            let msg = load(&format!("{base}{text}")).unwrap_err().to_string();
            assert!(msg.contains(&format!("config.toml:{line}:")) && msg.contains(says), "{text}: {msg}");
        }
    }

    #[test]
    fn schedules_are_read_in_the_configured_zone() {
        let c = load(
            "[state]\nurl = \"sqlite://x.db\"\n[schedule]\ntimezone = \"America/New_York\"\n\
             [[partner]]\nid = \"hub\"\nschedule = \"30 1 * * *\"\n[[partner]]\nid = \"mind\"\n",
        )
        .unwrap();
        assert_eq!(c.partners[0].schedule.to_string(), "30 1 * * * (America/New_York)");
        assert_eq!(c.partners[1].schedule.to_string(), "*/15 * * * * (America/New_York)", "defaults too");
    }

    #[test]
    fn an_hl7v2_destination_is_plain_mllp_only_to_loopback_and_needs_its_table() {
        let base =
            "[state]\nurl = \"sqlite://x.db\"\n[destination.cito-hl7]\nprofile = \"cito\"\ntransport = \"hl7v2\"\n";
        let table = "[destination.cito-hl7.hl7v2]\nreceiving_application = \"CITO\"\nreceiving_facility = \"YTHFT\"\n";
        let with = |extra: &str, address: &str| load(&format!("{base}{extra}{table}address = \"{address}\"\n"));
        let c = with("", "mllp://127.0.0.1:2575").unwrap();
        let h = c.destinations["cito-hl7"].hl7v2.as_ref().unwrap();
        assert_eq!((h.address.port, h.version.as_str(), h.ack_timeout_seconds), (2575, "2.5.1", 30));
        for (extra, address, says) in [
            ("", "mllp://engine.trust.nhs.uk:2575", "allow_plain_mllp"),
            ("", "tcp://127.0.0.1:2575", "mllp://"),
            ("", "mllp://127.0.0.1", "no port"),
            ("", "mllp://user@127.0.0.1:1", "user-info"),
            ("base_url = \"http://127.0.0.1:1\"\n", "mllp://127.0.0.1:2575", "hl7v2.address"),
            ("pull_schedule = \"0 * * * *\"\n", "mllp://127.0.0.1:2575", "nothing to pull"),
        ] {
            let msg = with(extra, address).unwrap_err().to_string();
            assert!(msg.contains(says), "{address} {extra}: {msg}");
        }
        let remote = format!("{base}{table}address = \"mllp://engine.trust.nhs.uk:2575\"\nallow_plain_mllp = true\n");
        assert!(load(&remote).is_ok());
        // TLS: to any host; a CA file only with it.
        let tls = with("", "mllps://engine.trust.nhs.uk:2575").unwrap();
        assert!(tls.destinations["cito-hl7"].hl7v2.as_ref().unwrap().address.tls);
        let plain_ca = format!("{base}{table}address = \"mllp://127.0.0.1:2575\"\nca_file = \"ca.pem\"\n");
        let msg = load(&plain_ca).unwrap_err().to_string();
        assert!(msg.contains("hl7v2.ca_file") && msg.contains("mllps://"), "{msg}");
        let msg = load(base).unwrap_err().to_string();
        assert!(msg.contains("destination.cito-hl7.hl7v2") && msg.contains("required"), "{msg}");
        let msg = load("[state]\nurl = \"sqlite://x.db\"\n[destination.cito]\nprofile = \"cito\"\n").unwrap_err();
        assert!(msg.to_string().contains("base_url"), "{msg}");
    }

    #[test]
    fn insecure_http_to_a_remote_host_is_refused() {
        let base = "[state]\nurl = \"sqlite://x.db\"\n[destination.cito]\nprofile = \"cito\"\n";
        let err = load(&format!("{base}base_url = \"http://cito.example.nhs.uk/fhir\"\n")).unwrap_err().to_string();
        assert!(err.contains("destination.cito.base_url") && err.contains("allow_insecure_http"), "{err}");
        assert!(load(&format!("{base}base_url = \"http://127.0.0.1:8080\"\n")).is_ok());
        assert!(load(&format!("{base}base_url = \"http://[::1]:8080\"\n")).is_ok());
        assert!(load(&format!("{base}base_url = \"http://cito.example/fhir\"\nallow_insecure_http = true\n")).is_ok());
    }

    #[test]
    fn loopback_detection() {
        assert!(is_loopback_url("http://localhost:8080/fhir"));
        assert!(is_loopback_url("http://127.0.0.2/"));
        assert!(is_loopback_url("http://[::1]:8080/"));
        assert!(!is_loopback_url("http://127.0.0.1.evil.example/"));
        assert!(!is_loopback_url("http://10.0.0.1/"));
    }

    /// `http://remote-host?@127.0.0.1/` (and `#@`, `\@`) used to pass as loopback: the text after the last
    /// `@` was taken as the host, but a URL parser (and reqwest) sends to `remote-host`.
    #[test]
    fn user_info_tricks_are_not_loopback() {
        for url in
            ["http://remote-host?@127.0.0.1/", "http://remote-host#@127.0.0.1/", "http://remote-host\\@127.0.0.1/"]
        {
            assert!(!is_loopback_url(url), "{url}");
            assert!(check_url(url, "k", false).is_err(), "{url}");
        }
        let err = check_url("https://user:pw@cito.example/fhir", "k", false).unwrap_err();
        assert!(err.contains("user-info"), "{err}");
        assert!(check_url("http://127.0.0.1@evil.example/", "k", false).is_err());
        assert!(check_url("ftp://127.0.0.1/", "k", false).is_err());
        assert!(check_url("https://cito.example/fhir", "k", false).is_ok());
    }

    /// `token_url` and the feed's `fhir_url` / `webhook_url` follow the same https-or-loopback rule as a
    /// destination's `base_url`.
    #[test]
    fn every_called_url_is_https_or_loopback() {
        std::fs::create_dir_all(std::env::temp_dir().join("ccfg")).unwrap();
        let secret = std::env::temp_dir().join("ccfg/secret");
        std::fs::write(&secret, "s").unwrap();
        let base = "[state]\nurl = \"sqlite://x.db\"\n[destination.pkb]\nprofile = \"pkb\"\nbase_url = \"https://pkb.example/fhir\"\n";
        let auth = |url: &str| {
            format!(
                "{base}[destination.pkb.auth]\ntoken_url = \"{url}\"\nclient_id = \"c\"\nclient_secret_file = \"{}\"\n",
                secret.display()
            )
        };
        let err = load(&auth("http://login.pkb.example/token")).unwrap_err().to_string();
        assert!(err.contains("destination.pkb.auth.token_url") && err.contains("unencrypted"), "{err}");
        let err = load(&auth("http://evil.example?@127.0.0.1/token")).unwrap_err().to_string();
        assert!(err.contains("destination.pkb.auth.token_url"), "{err}");
        assert!(load(&auth("https://login.pkb.example/token")).is_ok());
        assert!(load(&auth("http://127.0.0.1:9/token")).is_ok());

        let feed = |target: &str| {
            format!(
                "[state]\nurl = \"sqlite://x.db\"\n[[partner]]\nid = \"mind\"\n[destination.cito]\nprofile = \"cito\"\nbase_url = \"https://cito.example/fhir\"\n[[feed]]\npartner = \"mind\"\nresources = [\"Patient\"]\n{target}\n"
            )
        };
        let err = load(&feed("fhir_url = \"http://mind.example/fhir\"")).unwrap_err().to_string();
        assert!(err.contains(".fhir_url") && err.contains("unencrypted"), "{err}");
        let err = load(&feed("format = \"ndjson\"\nwebhook_url = \"http://mind.example#@localhost/hook\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains(".webhook_url"), "{err}");
        assert!(load(&feed("fhir_url = \"https://mind.example/fhir\"")).is_ok());
    }

    /// Numbers that feed durations and counts are bounded, with an error naming the key (extreme values used
    /// to pass the check and panic at delivery).
    #[test]
    fn extreme_numbers_are_refused_naming_the_key() {
        let base = "[state]\nurl = \"sqlite://x.db\"\n[destination.cito]\nprofile = \"cito\"\nbase_url = \"https://cito.example/fhir\"\n";
        for (k, v) in [
            ("defer_seconds", "18446744073709551615"),
            ("timeout_seconds", "18446744073709551615"),
            ("timeout_seconds", "0"),
            ("breaker_cooldown_seconds", "9223372036854775807"),
            ("max_attempts", "100000"),
            ("batch_size", "0"),
        ] {
            let err = load(&format!("{base}{k} = {v}\n")).unwrap_err().to_string();
            assert!(err.contains(&format!("destination.cito.{k}")) && err.contains("between"), "{k}: {err}");
        }
        assert!(load(&format!("{base}rate_limit_per_second = inf\n")).is_err());
        assert!(load(&format!("{base}defer_seconds = 3600\ntimeout_seconds = 60\n")).is_ok());
    }
}
