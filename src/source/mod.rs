//! Sources: where a partner's exports come from this cycle, and what happens once their rows are planned.
//!
//! [`gather`] turns a partner's `[[partner.source]]` entries into rounds of inputs for planning:
//! - a fixed file (`path`) is read in the first round, every cycle;
//! - an inbox (`inbox`, `inbox.rs`) gives its complete new files oldest first, one per round, so a partner's
//!   exports are applied in order within one cycle;
//! - a partner API (`url`, `api.rs`) is read page by page into a spool file, read in the first round.
//!
//! [`finish`] runs after a round's rows are durably planned: an inbox file moves to `archive/` (or to
//! `rejected/` with a reason when it could not be read at all), an API cursor advances, and a snapshot source's
//! records are compared with its previous snapshot (`snapshot.rs`): what has gone at source is reported, and
//! retracted where configured. Nothing here is undone by a crash: a file archived twice is recognised by its
//! hash, a cursor not yet advanced reads the same pages again, and planning an unchanged row writes nothing.

pub mod api;
pub mod inbox;
mod snapshot;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::SystemTime;

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::config::{Location, SourceMode};
use crate::context::Context;
use crate::mapping::Input;
use crate::store::{FinishedFile, SourceStatus};

pub use snapshot::Members;

/// What one source did in a cycle, for the cycle report and `connector status`. Names files and record keys,
/// never a record's content.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SourceReport {
    /// The source's kinds (`person+consent`).
    pub source: String,
    /// Where it is (a path, an inbox and its pattern, an API's URL without its query).
    pub place: String,
    /// What was read: inbox file names, or `N page(s), M record(s)` for an API.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub read: Vec<String>,
    /// Inbox files seen but not read yet, and why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub waiting: Vec<inbox::Waiting>,
    /// Inbox files that could not be read at all: name, reason (moved to `rejected/`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rejected: Vec<(String, String)>,
    /// Record keys that were in the previous snapshot and are missing from this one.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gone: Vec<String>,
    /// Deletions queued for records gone at source (`retract_missing = true`, destinations with `retract`).
    pub retracting: u64,
    /// Why this snapshot was refused as suspicious (nothing was taken as removed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    /// Why the source could not be read this cycle (an API that failed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Archived files older than `keep_days` deleted.
    #[serde(skip_serializing_if = "is_zero")]
    pub purged: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl SourceReport {
    /// Whether an admin must act (exit 1): a file rejected or a source that could not be read.
    pub fn failed(&self) -> bool {
        !self.rejected.is_empty() || self.error.is_some()
    }
}

/// One round of a partner's ingest: the inputs to read, and what was taken to make them.
#[derive(Debug, Default)]
pub struct Round {
    pub inputs: Vec<Input>,
    taken: Vec<Taken>,
}

#[derive(Debug)]
struct Taken {
    /// Index of the source in the partner's `[[partner.source]]` list.
    source: usize,
    what: What,
}

#[derive(Debug)]
enum What {
    File(PathBuf),
    Inbox { dir: PathBuf, ready: inbox::Ready },
    Api(api::Fetched),
}

impl Taken {
    fn path(&self) -> &std::path::Path {
        match &self.what {
            What::File(p) => p,
            What::Inbox { ready, .. } => &ready.path,
            What::Api(f) => &f.spool,
        }
    }
}

/// A partner's rounds for this cycle and what each source reports so far.
#[derive(Debug, Default)]
pub struct Gathered {
    pub rounds: Vec<Round>,
    pub reports: Vec<SourceReport>,
}

/// What planning a round found, per input file: the records mapped from it (`source key -> resource keys`),
/// the keys of its rows that were quarantined (present, if unreadable), and why a file could not be read.
#[derive(Debug, Default)]
pub struct Outcome {
    pub members: BTreeMap<PathBuf, Members>,
    pub failed: BTreeMap<PathBuf, String>,
}

impl Gathered {
    /// The inputs when this is one round of fixed files (no inbox file, no API read) and no source failed: what
    /// a plan receipt can fingerprint (`sync::receipt`). `None` otherwise.
    pub fn fixed_inputs(&self) -> Option<&[Input]> {
        if self.rounds.len() != 1 || self.reports.iter().any(SourceReport::failed) {
            return None;
        }
        let round = &self.rounds[0];
        round.taken.iter().all(|t| matches!(t.what, What::File(_))).then_some(round.inputs.as_slice())
    }
}

/// Lists what each of the partner's sources offers this cycle. With `dry_run`, nothing is moved or stored.
pub async fn gather(
    ctx: &Context,
    partner: &str,
    dry_run: bool,
    stop: &watch::Receiver<bool>,
) -> anyhow::Result<Gathered> {
    let pc = ctx.partner_config(partner)?;
    let mut out = Gathered { rounds: vec![Round::default()], reports: Vec::new() };
    let now = SystemTime::now();
    for (i, src) in pc.sources.iter().enumerate() {
        let label = src.kinds_label();
        let mut report = SourceReport { source: label.clone(), place: src.place(), ..Default::default() };
        let mut taken: Vec<What> = Vec::new();
        match &src.location {
            Location::File(p) => taken.push(What::File(ctx.config.resolve(p))),
            Location::Inbox(spec) => {
                let dir = ctx.config.resolve(&spec.dir);
                let scanned = {
                    let (spec, dir) = (spec.clone(), dir.clone());
                    tokio::task::spawn_blocking(move || inbox::scan(&spec, &dir, now)).await?
                };
                let (candidates, waiting) = match scanned {
                    Ok(found) => found,
                    Err(e) => {
                        let why = format!(
                            "inbox {} cannot be listed ({e}); check it exists and the connector's user may read and write it",
                            dir.display()
                        );
                        error!(partner, source = %label, error = %e, "Inbox cannot be listed.");
                        report.error = Some(why);
                        out.reports.push(report);
                        continue;
                    }
                };
                report.waiting = waiting;
                for c in candidates {
                    let Some(ready) = inbox::take(&c, spec.done_marker)? else {
                        report.waiting.push(inbox::Waiting { name: c.name.clone(), why: "changed while read".into() });
                        break;
                    };
                    if let Some(first) = ctx.store.source_file_finished(partner, &label, &ready.sha256).await? {
                        // Finished in an earlier run that stopped before moving it (or uploaded again).
                        warn!(partner, source = %label, file = %ready.name, first = %first, "Inbox file already read; archived without reading it again.");
                        if !dry_run {
                            inbox::archive(&dir, &ready)?;
                        }
                        continue;
                    }
                    taken.push(What::Inbox { dir: dir.clone(), ready });
                }
                if !dry_run {
                    report.purged = inbox::purge(&dir, spec.keep_days, now)?;
                }
            }
            Location::Api(a) => {
                let cursor = ctx.store.source_cursor(partner, &label).await?;
                let spool_dir = ctx.config.spool_dir();
                std::fs::create_dir_all(&spool_dir)?;
                std::fs::set_permissions(&spool_dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
                let spool = spool_dir.join(format!("{partner}-{}.ndjson", label.replace('+', "-")));
                match api::fetch(a, &ctx.config.base_dir, cursor.as_deref(), &spool, stop).await {
                    Ok(f) => {
                        report.read.push(format!("{} page(s), {} record(s)", f.pages, f.records));
                        taken.push(What::Api(f));
                    }
                    Err(api::ApiError::Stopped) => anyhow::bail!("stopped while reading {partner}'s API"),
                    Err(api::ApiError::Failed(why)) => {
                        error!(partner, source = %label, error = %why, "Partner API not read.");
                        report.error = Some(why);
                    }
                }
            }
        }
        for (n, what) in taken.into_iter().enumerate() {
            if let What::Inbox { ready, .. } = &what {
                report.read.push(ready.name.clone());
            }
            while out.rounds.len() <= n {
                out.rounds.push(Round::default());
            }
            let t = Taken { source: i, what };
            let round = &mut out.rounds[n];
            round.inputs.extend(src.kinds.iter().map(|&kind| Input { kind, path: t.path().to_path_buf() }));
            round.taken.push(t);
        }
        out.reports.push(report);
    }
    if out.rounds.len() > 1 {
        info!(partner, rounds = out.rounds.len(), "Several inbox files waiting: reading them oldest first.");
    }
    Ok(out)
}

/// After a round's rows are planned: archive or reject its inbox files, advance API cursors, compare
/// snapshots and record each source's freshness.
pub async fn finish(
    ctx: &Context,
    partner: &str,
    round: Round,
    outcome: &Outcome,
    accept_shrink: bool,
    reports: &mut [SourceReport],
) -> anyhow::Result<()> {
    let pc = ctx.partner_config(partner)?;
    let now = Utc::now();
    for t in round.taken {
        let src = &pc.sources[t.source];
        let label = src.kinds_label();
        let report = &mut reports[t.source];
        let failed = outcome.failed.get(t.path());
        if src.kinds.contains(&crate::model::RecordKind::Consent) {
            // Held until a consent export from this source is read cleanly, even across restarts.
            let why = failed.map(|w| format!("{} not mapped ({w})", crate::ingest::file_name(t.path())));
            ctx.store.source_consent_hold(partner, &label, why.as_deref()).await?;
        }
        let mut status = SourceStatus { partner: partner.to_string(), source: label.clone(), ..Default::default() };
        match &t.what {
            What::Inbox { dir, ready } => {
                status.last_file = Some(ready.name.clone());
                status.last_file_mtime = Some(DateTime::<Utc>::from(ready.mtime));
                let finished = FinishedFile {
                    name: ready.name.clone(),
                    sha256: ready.sha256.clone(),
                    size: i64::try_from(ready.size).unwrap_or(i64::MAX),
                    rejected: failed.is_some(),
                    reason: failed.cloned(),
                };
                ctx.store.source_file_finish(partner, &label, &finished, now).await?;
                match failed {
                    Some(why) => {
                        inbox::reject(dir, ready, why)?;
                        error!(partner, source = %label, file = %ready.name, "Inbox file could not be read: moved to rejected/ with the reason beside it.");
                        report.rejected.push((ready.name.clone(), why.clone()));
                    }
                    None => {
                        inbox::archive(dir, ready)?;
                        info!(partner, source = %label, file = %ready.name, "Inbox file read and archived.");
                    }
                }
            }
            What::Api(f) => {
                status.last_file = Some(format!("{} record(s) from the API", f.records));
                status.last_file_mtime = Some(now);
                if failed.is_none()
                    && let Some(c) = &f.next_cursor
                {
                    ctx.store.source_cursor_set(partner, &label, c, now).await?;
                }
                let _ = std::fs::remove_file(&f.spool);
            }
            What::File(path) => {
                if let Ok(meta) = std::fs::metadata(path) {
                    status.last_file = path.file_name().map(|n| n.to_string_lossy().into_owned());
                    status.last_file_mtime = meta.modified().ok().map(DateTime::<Utc>::from);
                }
            }
        }
        if failed.is_some() {
            // The newest file is the newest usable one: a rejected file does not count as an export received.
            continue;
        }
        status.last_success_at = Some(now);
        let complete = match &t.what {
            What::Api(f) => f.complete,
            _ => true,
        };
        if src.mode == SourceMode::Snapshot && complete {
            let none = Members::default();
            let members = outcome.members.get(t.path()).unwrap_or(&none);
            snapshot::compare(ctx, partner, src, &label, members, accept_shrink, report, &mut status).await?;
        }
        ctx.store.source_status_put(&status).await?;
    }
    Ok(())
}

/// After a plan not made again (`sync::receipt`: the same fixed files as the last full plan, which changed
/// nothing): each source's freshness is recorded as read now; its snapshot figures stay those of that plan.
pub async fn finish_unchanged(ctx: &Context, partner: &str, round: Round) -> anyhow::Result<()> {
    let pc = ctx.partner_config(partner)?;
    let now = Utc::now();
    for t in round.taken {
        let What::File(path) = &t.what else { continue };
        let mut status = SourceStatus {
            partner: partner.to_string(),
            source: pc.sources[t.source].kinds_label(),
            ..Default::default()
        };
        if let Ok(meta) = std::fs::metadata(path) {
            status.last_file = path.file_name().map(|n| n.to_string_lossy().into_owned());
            status.last_file_mtime = meta.modified().ok().map(DateTime::<Utc>::from);
        }
        status.last_success_at = Some(now);
        ctx.store.source_status_put(&status).await?;
    }
    Ok(())
}

/// What each source holds now, without taking anything new: fixed files, and an inbox's newest archived file
/// (reconcile's expected set). An API source is not read here.
pub fn latest_inputs(ctx: &Context, partner: &str) -> anyhow::Result<Vec<Input>> {
    let pc = ctx.partner_config(partner)?;
    let mut inputs = Vec::new();
    for src in &pc.sources {
        let path = match &src.location {
            Location::File(p) => Some(ctx.config.resolve(p)),
            Location::Inbox(spec) => newest_archived(&ctx.config.resolve(&spec.dir).join(inbox::ARCHIVE), &spec.files),
            Location::Api(_) => None,
        };
        if let Some(path) = path {
            inputs.extend(src.kinds.iter().map(|&kind| Input { kind, path: path.clone() }));
        }
    }
    Ok(inputs)
}

fn newest_archived(dir: &std::path::Path, pattern: &str) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| crate::config::name_matches(pattern, &e.file_name().to_string_lossy()))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .max()
        .map(|(_, p)| p)
}
