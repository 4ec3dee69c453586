//! `connector config check`: is this installation ready? Validates the config and the mappings, finds each
//! secret and checks who can read it, opens the state store, and reaches each destination's metadata and
//! token endpoints, without sending any personal data. Exit 0 only when everything passes; warnings (a
//! missing export) do not fail the check but are printed. A state database, secret or feed token file that
//! its group or others can read fails it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::{Format, print_json};
use crate::config::{Config, Location};
use crate::deliver::auth::TokenProvider;
use crate::deliver::fhir::FhirTransport;
use crate::deliver::limit::RateLimiter;
use crate::mapping;
use crate::store::Store;

/// How one check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Level {
    Ok,
    Warn,
    Fail,
}

/// One line of the check: `ok`, `warn` or `fail`, and what was checked (no secrets, no personal data).
#[derive(Debug, Serialize)]
struct Check {
    level: Level,
    message: String,
}

/// The whole check, as `--format json` prints it.
#[derive(Debug, Default, Serialize)]
struct Report {
    /// True when nothing failed (warnings allowed): the exit code is then 0.
    ready: bool,
    failed: usize,
    warnings: usize,
    checks: Vec<Check>,
}

/// The checks so far: printed one by one as they finish for a person (a destination may take a while to
/// answer), kept for one JSON document at the end for a machine.
struct Outcome {
    format: Format,
    report: Report,
}

impl Outcome {
    fn add(&mut self, level: Level, message: String) {
        match level {
            Level::Ok => {}
            Level::Warn => self.report.warnings += 1,
            Level::Fail => self.report.failed += 1,
        }
        if self.format == Format::Table {
            let label = match level {
                Level::Ok => "ok   ",
                Level::Warn => "WARN ",
                Level::Fail => "FAIL ",
            };
            println!("{label} {message}");
        }
        self.report.checks.push(Check { level, message });
    }
    fn ok(&mut self, what: &str) {
        self.add(Level::Ok, what.to_string());
    }
    fn warn(&mut self, what: &str) {
        self.add(Level::Warn, what.to_string());
    }
    fn fail(&mut self, what: &str) {
        self.add(Level::Fail, what.to_string());
    }

    /// Prints the summary (or the JSON document) and returns the exit code: 0 only when nothing failed.
    fn finish(mut self) -> anyhow::Result<u8> {
        let r = &mut self.report;
        r.ready = r.failed == 0;
        match self.format {
            Format::Json => print_json(r)?,
            Format::Table => println!(
                "{}: {} failed, {} warning(s)",
                if r.ready { "ready" } else { "NOT READY" },
                r.failed,
                r.warnings
            ),
        }
        Ok(if r.ready { 0 } else { 1 })
    }
}

pub async fn run(config_path: &Path, format: Format) -> anyhow::Result<u8> {
    let mut o = Outcome { format, report: Report::default() };
    let config = match Config::load(config_path) {
        Ok(c) => {
            o.ok(&format!("config {} reads and checks", config_path.display()));
            c
        }
        Err(e) => {
            o.fail(&format!("config: {e}"));
            return o.finish();
        }
    };
    let dir = config.resolve(&config.mappings.dir);
    match mapping::load_catalog(&dir) {
        Ok(catalog) => {
            o.ok(&format!("mappings in {} load ({} partner(s))", dir.display(), catalog.partners.len()));
            for p in &config.partners {
                match catalog.partner(&p.id) {
                    None => o.fail(&format!("partner {}: no mappings folder under {}", p.id, dir.display())),
                    Some(m) => {
                        for s in &p.sources {
                            if let Some(k) = s.kinds.iter().find(|k| !m.mappings.contains_key(k)) {
                                o.fail(&format!(
                                    "partner {}: source {} is kind {k}, which has no mapping",
                                    p.id,
                                    s.place()
                                ));
                                continue;
                            }
                            match &s.location {
                                Location::File(path) if !config.resolve(path).exists() => o.warn(&format!(
                                    "partner {}: export {} is not there yet",
                                    p.id,
                                    config.resolve(path).display()
                                )),
                                Location::Inbox(i) if !config.resolve(&i.dir).is_dir() => o.fail(&format!(
                                    "partner {}: inbox {} is not a folder the connector can read",
                                    p.id,
                                    config.resolve(&i.dir).display()
                                )),
                                _ => {}
                            }
                        }
                    }
                }
            }
        }
        Err(errors) => {
            for e in errors {
                o.fail(&format!("mapping: {e}"));
            }
        }
    }
    if config.sharing.is_empty() {
        o.warn("no [[sharing]] agreements: nothing will be sent anywhere");
    } else {
        o.ok(&format!("{} information sharing agreement(s)", config.sharing.len()));
    }
    for path in sqlite_files(&config.state_url()) {
        if let Some(why) = readable_by_others(&path) {
            o.fail(&format!(
                "state database file {} {why}: it holds personal data; chmod 600 it (and its -wal and -shm files) and chmod 700 its folder",
                path.display()
            ));
        }
    }
    for feed in &config.feeds {
        let Some(path) = feed.token_file.as_ref().map(|f| config.resolve(f)) else { continue };
        if let Some(why) = readable_by_others(&path) {
            o.fail(&format!("feed for {}: token file {} {why}; chmod 600 it", feed.partner, path.display()));
        }
    }
    match Store::connect(&config.state_url()).await {
        Ok(store) => {
            o.ok(&format!("state store opens ({}, schema up to date)", store.backend()));
            store.close().await;
        }
        Err(e) => o.fail(&format!("state store: {e}")),
    }
    for (name, d) in &config.destinations {
        if d.allow_insecure_http && !crate::config::is_loopback_url(d.fhir_url()) {
            o.warn(&format!("destination {name}: plain http to a remote host is allowed (allow_insecure_http)"));
        }
        let timeout = Duration::from_secs(d.timeout_seconds.clamp(1, 30));
        let mut token = None;
        if let Some(a) = &d.auth {
            match a.client_secret(&config, name) {
                Ok(secret) => {
                    o.ok(&format!("destination {name}: client secret found"));
                    if let Some(path) = a.secret_path(&config)
                        && let Some(why) = readable_by_others(&path)
                    {
                        o.fail(&format!("destination {name}: secret file {} {why}; chmod 600 it", path.display()));
                    }
                    let provider =
                        TokenProvider::new(&a.token_url, &a.client_id, secret, Duration::from_secs(0), timeout);
                    match provider.token().await {
                        Ok(_) => o.ok(&format!("destination {name}: token endpoint {} issues a token", a.token_url)),
                        Err(e) => o.fail(&format!("destination {name}: token endpoint {}: {e}", a.token_url)),
                    }
                    token = Some(provider);
                }
                Err(e) => o.fail(&format!("destination {name}: {e}")),
            }
        }
        if let Some(h) = &d.hl7v2 {
            let dir = h.messages_dir(&config);
            match crate::deliver::hl7v2::MessageDefinition::load_dir(&dir) {
                Ok(defs) => o.ok(&format!(
                    "destination {name}: HL7 v2 messages defined for {}",
                    defs.keys().cloned().collect::<Vec<_>>().join(", ")
                )),
                Err(e) => o.fail(&format!("destination {name}: {e}")),
            }
            // Connects and closes: an MLLP port answers nothing until sent a message, and nothing is sent.
            let ca = h.ca_file(&config);
            match crate::deliver::hl7v2::Hl7v2Transport::probe(h, ca.as_deref(), timeout).await {
                Ok(()) if h.address.tls => o.ok(&format!(
                    "destination {name}: {} accepts connections, with a trusted TLS certificate (HL7 v2; nothing sent)",
                    h.address
                )),
                Ok(()) => {
                    o.ok(&format!("destination {name}: {} accepts connections (HL7 v2; nothing sent)", h.address))
                }
                Err(e) => o.fail(&format!("destination {name}: {e}")),
            }
            continue;
        }
        let limiter = Arc::new(RateLimiter::per_second(d.rate_limit_per_second));
        let base_url = d.fhir_url();
        match FhirTransport::new(base_url, timeout, limiter, token, d.org_public_id.clone()) {
            Ok(t) => match t.capability().await {
                Ok(v) if v.starts_with("4.0") => {
                    o.ok(&format!("destination {name}: {} answers metadata (FHIR {v})", base_url))
                }
                Ok(v) => o.fail(&format!("destination {name}: {} speaks FHIR {v}, not R4 (4.0.x)", base_url)),
                Err(e) => o.fail(&format!("destination {name}: {base_url}/metadata: {e}")),
            },
            Err(e) => o.fail(&format!("destination {name}: {e}")),
        }
    }
    o.finish()
}

/// The files of a SQLite state database that exist (the database, its WAL and shared-memory files).
fn sqlite_files(url: &str) -> Vec<std::path::PathBuf> {
    let Some(rest) = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")) else { return Vec::new() };
    let path = rest.split_once('?').map_or(rest, |(p, _)| p);
    if path.is_empty() || path.starts_with(':') {
        return Vec::new();
    }
    ["", "-wal", "-shm"].iter().map(|s| std::path::PathBuf::from(format!("{path}{s}"))).filter(|p| p.exists()).collect()
}

/// Why a file's permissions let people other than its owner read it, if they do.
fn readable_by_others(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    if mode & 0o004 != 0 {
        Some(format!("is readable by everyone (mode {:o})", mode & 0o777))
    } else if mode & 0o040 != 0 {
        Some(format!("is readable by its group (mode {:o})", mode & 0o777))
    } else {
        None
    }
}
