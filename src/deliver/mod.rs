//! Deliver: drains a destination's outbox. Rows are leased in order (per patient), Patients are matched to
//! ones that already exist there (a batch's new Patients looked up with one search), references to linked
//! Patients are rewritten, and writes go out as transaction bundles with `If-Match`; a bundle that lands is
//! recorded (ledger, audit, outbox) in one state-store transaction. Transient failures are retried with exponential backoff and jitter
//! (honouring `Retry-After`; a backoff ends at once when the daemon stops); a bundle the server refuses is split until the refused resource is found, and
//! that one alone goes to the dead letter with the server's OperationOutcome. A destination that keeps failing
//! trips its circuit breaker and is paused.
//!
//! # Layout
//! - `mod.rs`: [`Destination`] (one configured destination, as delivery sees it) and [`DeliveryReport`].
//! - `worker.rs`: the delivery pass ([`deliver`]): leasing, the rules checked again, rows turned into writes.
//! - `batch.rs`: sending writes as bundles, splitting a refused bundle, deferring on transient failure.
//! - `merge.rs`: merging with changes made on the destination by others, and conflicts.
//! - `patients.rs`: matching Patients that already exist there, and rewriting references to them.
//! - `records.rs`: the ledger and audit entries a result is recorded with.
//! - `intents.rs`: writes in flight, and settling those in doubt ([`settle_intents`]).
//! - `retry.rs`: the retry vocabulary shared with partner feeds: one classifier of HTTP answers and
//!   `Retry-After`, one [`retry::RetryPolicy`], backoff sleeps that end when the daemon stops.
//! - The transport seam and its plumbing: `transport.rs` (the trait and its errors), `fhir.rs` (FHIR REST),
//!   `answer.rs` (reading bundle answers without a tree of them), `http.rs` (shared HTTP rules), `auth.rs` (tokens), `limit.rs` (rate limiter, circuit breaker),
//!   `paging.rs` (following `next` links), `profile.rs` (destination profiles).

pub mod auth;
pub mod fhir;
pub mod hl7v2;
pub mod http;
pub mod limit;
pub mod paging;
pub mod profile;
pub mod retry;
pub mod transport;

mod answer;
mod batch;
mod intents;
mod merge;
mod patients;
mod records;
mod worker;

use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, DestinationConfig, Profile};
pub use crate::conflict::comparable;
use crate::policy::Policy;
pub use intents::settle_intents;
use limit::{Breaker, RateLimiter};
use transport::Transport;
pub use worker::deliver;

/// What every destination of one configuration shares, given when it is built.
#[derive(Clone, Default)]
pub struct Shared {
    /// The sharing rules.
    pub policy: Arc<Policy>,
    /// The installation's salt for element fingerprints (the state store's).
    pub salt: Arc<str>,
    /// Resource types whose changes on both sides are merged when they touch different elements.
    pub auto_merge: Arc<std::collections::HashSet<String>>,
    /// Where each destination records its requests' durations.
    pub metrics: Arc<crate::ops::metrics::Metrics>,
}

/// A destination as the delivery loop sees it.
pub struct Destination {
    pub name: String,
    pub profile: Profile,
    pub batch_size: usize,
    pub concurrency: usize,
    /// Requests in flight to the destination: at most `concurrency`, whatever the number of workers preparing
    /// bundles (see [`retry::send_retrying`]).
    pub in_flight: Arc<tokio::sync::Semaphore>,
    pub max_attempts: usize,
    pub timeout: Duration,
    /// How long rows wait after every attempt failed.
    pub defer: chrono::Duration,
    pub transport: Box<dyn Transport>,
    pub breaker: Breaker,
    /// The sharing rules, checked again for every row just before it is sent.
    pub policy: Arc<Policy>,
    /// Delete what it holds but may no longer hold.
    pub retract: bool,
    /// The installation's salt for element fingerprints (the state store's).
    pub salt: Arc<str>,
    /// Resource types whose changes on both sides are merged when they touch different elements.
    pub auto_merge: Arc<std::collections::HashSet<String>>,
}

impl Destination {
    pub fn from_config(name: &str, d: &DestinationConfig, config: &Config, shared: &Shared) -> anyhow::Result<Self> {
        let timeout = Duration::from_secs(d.timeout_seconds.max(1));
        let limiter = Arc::new(RateLimiter::per_second(d.rate_limit_per_second));
        let token = match &d.auth {
            Some(a) => Some(auth::TokenProvider::new(
                &a.token_url,
                &a.client_id,
                a.client_secret(config, name)?,
                Duration::from_secs(a.renew_before_seconds),
                timeout,
            )),
            None => None,
        };
        let transport: Box<dyn Transport> = match d.transport {
            crate::config::TransportKind::Fhir => Box::new(
                fhir::FhirTransport::new(d.fhir_url(), timeout, limiter, token, d.org_public_id.clone())?
                    .observed_by(name, shared.metrics.clone()),
            ),
            crate::config::TransportKind::Hl7v2 => {
                let h = d.hl7v2.as_ref().ok_or_else(|| anyhow::anyhow!("destination {name}: [hl7v2] is missing"))?;
                let dir = h.messages_dir(config);
                let ca = h.ca_file(config);
                Box::new(hl7v2::Hl7v2Transport::new(name, h, &dir, ca.as_deref(), timeout, limiter)?)
            }
        };
        Ok(Self::new(name, d, transport, shared))
    }

    pub fn new(name: &str, d: &DestinationConfig, transport: Box<dyn Transport>, shared: &Shared) -> Self {
        let can = transport.capabilities();
        if !can.read {
            tracing::info!(destination = %name, "This destination cannot be searched or read back: new Patients are sent without a look-up, and writes in doubt are sent again with the same message id.");
        }
        if d.retract && !can.delete {
            tracing::warn!(destination = %name, "retract = true, but this destination cannot delete: nothing will be retracted there; the withdrawal report lists what was sent.");
        }
        Self {
            name: name.to_string(),
            profile: d.profile,
            // Without all-or-nothing batches, one write a time: a refusal then never undoes (or resends) another.
            batch_size: if can.atomic_batches { d.batch_size.max(1) } else { 1 },
            concurrency: d.concurrency.max(1),
            in_flight: Arc::new(tokio::sync::Semaphore::new(d.concurrency.max(1))),
            max_attempts: d.max_attempts.max(1),
            timeout: Duration::from_secs(d.timeout_seconds.max(1)),
            defer: chrono::Duration::seconds(i64::try_from(d.defer_seconds).unwrap_or(60)),
            transport,
            breaker: Breaker::new(d.breaker_failures, Duration::from_secs(d.breaker_cooldown_seconds)),
            policy: shared.policy.clone(),
            // A destination that cannot delete gets no retractions: the withdrawal report lists what was sent.
            retract: d.retract && can.delete,
            salt: shared.salt.clone(),
            auto_merge: shared.auto_merge.clone(),
        }
    }

    /// How calls to this destination are retried, and how long rows wait once a pass gives up on them.
    pub fn retry_policy(&self) -> retry::RetryPolicy {
        let defer = self.defer.to_std().unwrap_or(Duration::from_secs(60));
        retry::RetryPolicy::destination(self.max_attempts, defer)
    }

    /// How long a lease must last to cover a bundle's retries.
    fn lease_for(&self) -> Duration {
        let per_try = self.timeout + Duration::from_secs(30);
        per_try * u32::try_from(self.max_attempts).unwrap_or(10) + Duration::from_secs(60)
    }
}

/// What one delivery pass did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct DeliveryReport {
    pub destination: String,
    /// Resources written (created, updated or deleted).
    pub written: u64,
    /// Patients found already on the destination and linked instead of created.
    pub linked: u64,
    pub dead_lettered: u64,
    /// Rows the sharing rules stopped just before sending (consent changed after they were planned).
    pub withheld: u64,
    /// Ledger entries forgotten (links) or marked to be planned again (the person's records) because a
    /// retracted Patient had others linked to it: those records are planned and sent again (the sync cycle
    /// does that at once; the daemon at each partner's next ingest).
    pub relink: u64,
    /// Rows put back for a later attempt after transient failures.
    pub deferred: u64,
    /// Updates merged with changes made on the destination by others (which were kept).
    pub merged: u64,
    /// Updates not sent because the same elements were changed on the destination: conflicts for an admin.
    pub conflicts: u64,
    pub bundles: u64,
    pub breaker_open: bool,
}

impl DeliveryReport {
    /// Adds what another pass to the same destination did (the circuit state is this pass's own).
    pub fn absorb(&mut self, other: &DeliveryReport) {
        self.written += other.written;
        self.linked += other.linked;
        self.dead_lettered += other.dead_lettered;
        self.withheld += other.withheld;
        self.relink += other.relink;
        self.deferred += other.deferred;
        self.merged += other.merged;
        self.conflicts += other.conflicts;
        self.bundles += other.bundles;
    }
}
