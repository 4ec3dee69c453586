//! [`Context`]: what every stage above the store works with, built whole from one configuration: the
//! configuration itself, the compiled mappings, the state store, the destinations, the sharing rules, the
//! metrics and this process's name in leases. Nothing in it is patched after it is built.

use std::sync::Arc;

use std::future::Future;

use anyhow::Context as _;
use chrono::Utc;
use tracing::warn;

use crate::config::{Config, Location};
use crate::deliver::{Destination, Shared};
use crate::mapping::{self, Catalog, Input};
use crate::model::JobName;
use crate::ops::metrics::Metrics;
use crate::policy::Policy;
use crate::store::Store;

/// Everything a running connector needs.
pub struct Context {
    pub config: Arc<Config>,
    pub catalog: Arc<Catalog>,
    pub store: Store,
    pub destinations: Vec<Arc<Destination>>,
    /// The sharing rules (agreements from the config).
    pub policy: Arc<Policy>,
    /// Counters for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// This instance's name in leases: host and process id.
    pub owner: String,
    /// The mappings folder as loaded (`sync::receipt::tree_hash`), `None` when it changed while it was loaded:
    /// a plan receipt is then neither kept nor honoured by this process.
    pub mappings_hash: Option<String>,
}

impl Context {
    /// Loads the mappings, opens the state store (running migrations) and builds the destinations.
    pub async fn start(config: Config) -> anyhow::Result<Context> {
        // `process_start_time_seconds`: fixed by `main` already; here for library users (tests, benches).
        crate::ops::metrics::process_start();
        let mappings_dir = config.resolve(&config.mappings.dir);
        let before = crate::sync::receipt::tree_hash(&mappings_dir);
        let catalog = mapping::load_catalog(&mappings_dir).map_err(|errors| {
            let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
            anyhow::anyhow!("the mappings do not load:\n{}", list.join("\n"))
        })?;
        let mappings_hash = before.filter(|b| crate::sync::receipt::tree_hash(&mappings_dir).as_ref() == Some(b));
        for p in &config.partners {
            if catalog.partner(&p.id).is_none() {
                anyhow::bail!(
                    "partner \"{}\" in the config has no mappings folder under {}",
                    p.id,
                    mappings_dir.display()
                );
            }
            for s in &p.sources {
                if let Some(k) = s.kinds.iter().find(|k| !catalog.partners[&p.id].mappings.contains_key(k)) {
                    anyhow::bail!("partner \"{}\": source {} is kind \"{k}\", which has no mapping", p.id, s.place());
                }
            }
        }
        let store = Store::connect(&config.state_url()).await.context("opening the state store")?;
        let policy = Arc::new(Policy::new(&config, &catalog));
        let metrics = Arc::new(Metrics::default());
        let shared = Shared {
            policy: policy.clone(),
            salt: Arc::from(store.salt()),
            auto_merge: Arc::new(config.conflicts.auto_merge.iter().cloned().collect()),
            metrics: metrics.clone(),
        };
        let mut destinations = Vec::new();
        for (name, d) in &config.destinations {
            if d.allow_insecure_http && !crate::config::is_loopback_url(d.fhir_url()) {
                warn!(destination = %name, "Plain http to a non-loopback destination is allowed by allow_insecure_http; personal data travels unencrypted.");
            }
            destinations.push(Arc::new(
                Destination::from_config(name, d, &config, &shared).with_context(|| format!("destination {name}"))?,
            ));
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let owner = format!("{}-{}", host.trim(), std::process::id());
        reclaim_dead_leases(&store, host.trim()).await?;
        Ok(Context {
            config: Arc::new(config),
            catalog: Arc::new(catalog),
            store,
            destinations,
            policy,
            metrics,
            owner,
            mappings_hash,
        })
    }

    /// Runs one job with its record in `job_runs` (for `connector status`): started, then finished with the
    /// verdict and one-line detail `summary` gives (never personal data), or with the error.
    pub async fn run_job<T>(
        &self,
        job: &JobName,
        work: impl Future<Output = anyhow::Result<T>>,
        summary: impl FnOnce(&T) -> (bool, String),
    ) -> anyhow::Result<T> {
        let run = self.store.job_started(job, Utc::now()).await?;
        let result = work.await;
        let (ok, detail) = match &result {
            Ok(r) => summary(r),
            Err(e) => (false, e.to_string()),
        };
        self.store.job_finished(run, ok, &detail, Utc::now()).await?;
        result
    }

    pub fn destination(&self, name: &str) -> Option<&Arc<Destination>> {
        self.destinations.iter().find(|d| d.name == name)
    }

    /// The `[[partner]]` of this id.
    pub fn partner_config(&self, partner_id: &str) -> anyhow::Result<&crate::config::PartnerConfig> {
        self.config
            .partners
            .iter()
            .find(|p| p.id == partner_id)
            .with_context(|| format!("no [[partner]] \"{partner_id}\" in the config"))
    }

    /// The partner's fixed-file sources as mapping inputs (inbox and API sources are gathered by `source`).
    pub fn inputs(&self, partner_id: &str) -> anyhow::Result<Vec<Input>> {
        Ok(self
            .partner_config(partner_id)?
            .sources
            .iter()
            .filter_map(|s| match &s.location {
                Location::File(path) => Some((s, self.config.resolve(path))),
                _ => None,
            })
            .flat_map(|(s, path)| s.kinds.iter().map(move |&kind| Input { kind, path: path.clone() }))
            .collect())
    }
}

/// Releases outbox leases held by connector processes on this host that no longer exist (killed, crashed).
/// Without this their rows, and every later write for the same people, would wait for the leases to expire.
/// Owners on other hosts are left to their lease expiry.
pub async fn reclaim_dead_leases(store: &Store, host: &str) -> anyhow::Result<usize> {
    let prefix = format!("{host}-");
    let mut released = 0;
    let mut seen = std::collections::HashSet::new();
    for owner in store.lease_owners().await? {
        let base = owner.split('/').next().unwrap_or_default().to_string();
        let Some(pid) = base.strip_prefix(&prefix).and_then(|p| p.parse::<u32>().ok()) else { continue };
        if pid == std::process::id() || !seen.insert(base.clone()) {
            continue;
        }
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            store.release(&base).await?;
            warn!(owner = %base, "Released outbox leases of a connector process that is gone; its rows will be sent again.");
            released += 1;
        }
    }
    Ok(released)
}

/// Resolves once `stop` is set; never, when its sender is gone without setting it (a caller that cannot stop).
/// For `tokio::select!` at an await that may block.
pub async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}
