//! `connector config check`: is this installation ready? Validates the config and the mappings, finds each
//! secret and checks who can read it, opens the state store, and reaches each destination's metadata and
//! token endpoints, without sending any personal data. Exit 0 only when everything passes; warnings (a
//! missing export) do not fail the check but are printed. A state database, secret or feed token file that
//! its group or others can read fails it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, Location};
use crate::deliver::auth::TokenProvider;
use crate::deliver::fhir::FhirTransport;
use crate::deliver::limit::RateLimiter;
use crate::mapping;
use crate::store::Store;

#[derive(Default)]
struct Outcome {
    failed: usize,
    warned: usize,
}

impl Outcome {
    fn ok(&self, what: &str) {
        println!("ok    {what}");
    }
    fn warn(&mut self, what: &str) {
        self.warned += 1;
        println!("WARN  {what}");
    }
    fn fail(&mut self, what: &str) {
        self.failed += 1;
        println!("FAIL  {what}");
    }
}

pub async fn run(config_path: &Path) -> anyhow::Result<u8> {
    let mut o = Outcome::default();
    let config = match Config::load(config_path) {
        Ok(c) => {
            o.ok(&format!("config {} reads and checks", config_path.display()));
            c
        }
        Err(e) => {
            o.fail(&format!("config: {e}"));
            return Ok(1);
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
        if d.allow_insecure_http && !crate::config::is_loopback_url(&d.base_url) {
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
        let limiter = Arc::new(RateLimiter::per_second(d.rate_limit_per_second));
        match FhirTransport::new(&d.base_url, timeout, limiter, token, d.org_public_id.clone()) {
            Ok(t) => match t.capability().await {
                Ok(v) if v.starts_with("4.0") => {
                    o.ok(&format!("destination {name}: {} answers metadata (FHIR {v})", d.base_url))
                }
                Ok(v) => o.fail(&format!("destination {name}: {} speaks FHIR {v}, not R4 (4.0.x)", d.base_url)),
                Err(e) => o.fail(&format!("destination {name}: {}/metadata: {e}", d.base_url)),
            },
            Err(e) => o.fail(&format!("destination {name}: {e}")),
        }
    }
    println!("{}: {} failed, {} warning(s)", if o.failed == 0 { "ready" } else { "NOT READY" }, o.failed, o.warned);
    Ok(if o.failed == 0 { 0 } else { 1 })
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
