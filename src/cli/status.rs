//! `connector status`: for each job its last and next run, each destination's queue and dead letters.

use std::path::Path;

use chrono::{DateTime, Utc};

use serde::Serialize;

use super::{EXIT_FOUND, Format, print_json};
use crate::config::Config;
use crate::store::{SourceStatus, Store};

fn when(t: Option<DateTime<Utc>>, tz: chrono_tz::Tz) -> String {
    t.map_or_else(|| "-".into(), |t| t.with_timezone(&tz).format("%Y-%m-%d %H:%M:%S %Z").to_string())
}

/// `status --format json`: each job, each destination's queue, each source.
#[derive(Debug, Serialize)]
struct Status<'a> {
    jobs: Vec<JobStatus<'a>>,
    queues: Vec<QueueStatus<'a>>,
    sources: &'a [SourceStatus],
}

#[derive(Debug, Serialize)]
struct JobStatus<'a> {
    job: String,
    schedule: &'a str,
    last_started: Option<String>,
    last_finished: Option<String>,
    /// Null while it runs, or when it was interrupted.
    last_ok: Option<bool>,
    last_detail: Option<&'a str>,
    next_run: Option<String>,
}

#[derive(Debug, Serialize)]
struct QueueStatus<'a> {
    destination: &'a str,
    pending: u64,
    dead: u64,
    oldest_pending: Option<String>,
}

pub async fn run(config_path: &Path, format: Format) -> anyhow::Result<u8> {
    let config = Config::load(config_path)?;
    let tz = config.timezone();
    let store = Store::connect(&config.state_url()).await?;
    let runs = store.last_runs().await?;
    let depths = store.queue_depths().await?;
    let now = Utc::now();
    let mut jobs = Vec::new();
    for (job, schedule) in config.jobs() {
        let job = job.to_string();
        let next = schedule.next_after(now);
        let expr = schedule.expression();
        let last = runs.iter().find(|r| r.job == job);
        if format == Format::Json {
            jobs.push(JobStatus {
                schedule: expr,
                last_started: last.map(|r| r.started_at.to_rfc3339()),
                last_finished: last.and_then(|r| r.finished_at.map(|t| t.to_rfc3339())),
                last_ok: last.and_then(|r| r.ok),
                last_detail: last.and_then(|r| r.detail.as_deref()),
                next_run: next.map(|t| t.to_rfc3339()),
                job,
            });
        } else {
            let outcome = match last.and_then(|r| r.ok) {
                Some(true) => "ok",
                Some(false) => "FAILED",
                None if last.is_some() => "running or interrupted",
                None => "never run",
            };
            println!(
                "{job:<24} last {} ({outcome}{})  next {}",
                when(last.map(|r| r.started_at), tz),
                last.and_then(|r| r.detail.as_ref()).map(|d| format!(": {d}")).unwrap_or_default(),
                when(next, tz)
            );
        }
    }
    let dead: u64 = depths.iter().map(|d| d.dead).sum();
    let sources = store.source_statuses().await?;
    let refused = sources.iter().any(|s| s.refused.is_some());
    if format == Format::Table {
        for s in &sources {
            let age = s.last_file_mtime.map(|t| age_of(now - t)).unwrap_or_else(|| "never".into());
            println!(
                "source {:<24} newest {} ({age} old), last read through {}{}{}",
                format!("{}/{}", s.partner, s.source),
                s.last_file.as_deref().unwrap_or("none yet"),
                when(s.last_success_at, tz),
                if s.gone > 0 { format!(", {} record(s) gone at source", s.gone) } else { String::new() },
                if s.refused.is_some() { ", LAST SNAPSHOT REFUSED (see `connector sync` output)" } else { "" },
            );
        }
        for d in &depths {
            println!(
                "queue {:<18} {} pending (oldest {}), {} dead letter(s)",
                d.destination,
                d.pending,
                when(d.oldest_pending, tz),
                d.dead
            );
        }
        if depths.is_empty() {
            println!("queues empty");
        }
        if dead > 0 {
            println!("Dead letters need an admin: `connector outbox list --dead`.");
        }
    } else {
        let queues = depths
            .iter()
            .map(|d| QueueStatus {
                destination: &d.destination,
                pending: d.pending,
                dead: d.dead,
                oldest_pending: d.oldest_pending.map(|t| t.to_rfc3339()),
            })
            .collect();
        print_json(&Status { jobs, queues, sources: &sources })?;
    }
    Ok(if dead > 0 || refused { EXIT_FOUND } else { 0 })
}

/// A duration as an admin reads it: `40 min`, `5 h`, `3 days`.
fn age_of(d: chrono::Duration) -> String {
    let m = d.num_minutes().max(0);
    match m {
        0..=119 => format!("{m} min"),
        120..=2879 => format!("{} h", m / 60),
        _ => format!("{} days", m / 1440),
    }
}
