//! `connector quarantine list|show|replay`: rows that could not be mapped, why, and mapping them again once
//! the source is fixed. Quarantined rows hold personal data (the raw row): `show` prints it, `list` does not.

use std::path::Path;

use clap::Subcommand;

use serde::Serialize;

use super::{EXIT_FOUND, Format, print_json};
use crate::config::Config;
use crate::mapping::Reason;
use crate::quarantine::QuarantinedRow;
use crate::store::{QuarantineRecord, Store};
use crate::sync::Engine;

#[derive(Debug, Subcommand)]
pub enum QuarantineCommand {
    /// List quarantined rows: partner, file, row, key and reasons (no row content).
    List {
        #[arg(long)]
        partner: Option<String>,
        #[arg(long, default_value_t = 200)]
        limit: usize,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Show one quarantined row with its content (personal data) and every reason. `--format json` gives
    /// where it is and why, without the row's content.
    Show {
        id: i64,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Map the row's partner again (after fixing the source) and report whether the row maps now.
    Replay {
        id: i64,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
}

fn reasons(json: &str) -> Vec<String> {
    serde_json::from_str::<Vec<Reason>>(json).map(|r| r.iter().map(ToString::to_string).collect()).unwrap_or_default()
}

/// A quarantined row as `list` and `show` print it for machines: where it is and why, never its content.
#[derive(Debug, Serialize)]
struct Entry<'a> {
    id: i64,
    partner: &'a str,
    kind: &'a str,
    file: &'a str,
    row: i64,
    key: Option<&'a str>,
    reasons: Vec<String>,
    since: String,
}

impl<'a> Entry<'a> {
    fn of(id: i64, q: &'a QuarantineRecord) -> Self {
        Entry {
            id,
            partner: &q.partner,
            kind: &q.kind,
            file: &q.file,
            row: q.row,
            key: q.key.as_deref(),
            reasons: reasons(&q.reasons_json),
            since: q.created_at.to_rfc3339(),
        }
    }
}

/// What became of a replayed row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Replay {
    /// The row with that key maps now: its resources are queued.
    MapsNow,
    /// It still does not map and is quarantined again (see `now`).
    StillQuarantined,
    /// A row without a key is not quarantined as it was: it maps now, or it was changed.
    NoLongerQuarantined,
}

/// What `replay --format json` prints.
#[derive(Debug, Serialize)]
struct Replayed<'a> {
    id: i64,
    partner: &'a str,
    key: Option<&'a str>,
    /// Where the row was when it was quarantined.
    was: Place<'a>,
    outcome: Replay,
    /// Where it is quarantined now, when it still does not map.
    now: Option<Place<'a>>,
}

#[derive(Debug, Serialize)]
struct Place<'a> {
    file: &'a str,
    row: u64,
}

pub async fn run(config_path: &Path, cmd: QuarantineCommand) -> anyhow::Result<u8> {
    let config = Config::load(config_path)?;
    match cmd {
        QuarantineCommand::List { partner, limit, format } => {
            let store = Store::connect(&config.state_url()).await?;
            let rows = store.quarantine_list(partner.as_deref(), limit).await?;
            match format {
                Format::Json => print_json(&rows.iter().map(|(id, q)| Entry::of(*id, q)).collect::<Vec<_>>())?,
                Format::Table => {
                    for (id, q) in &rows {
                        let key = q.key.as_deref().map(|k| format!(" key {k}")).unwrap_or_default();
                        println!(
                            "{id:>6}  {} {} {} row {}{key}: {}",
                            q.partner,
                            q.kind,
                            q.file,
                            q.row,
                            reasons(&q.reasons_json).join("; ")
                        );
                    }
                    if rows.is_empty() {
                        println!("(no quarantined rows)");
                    }
                }
            }
            Ok(if rows.is_empty() { 0 } else { EXIT_FOUND })
        }
        QuarantineCommand::Show { id, format } => {
            let store = Store::connect(&config.state_url()).await?;
            let q = store
                .quarantine_get(id)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no quarantined row {id}; see `connector quarantine list`"))?;
            if format == Format::Json {
                print_json(&Entry::of(id, &q))?;
                return Ok(0);
            }
            println!(
                "partner {}  kind {}  file {}  row {}  key {}",
                q.partner,
                q.kind,
                q.file,
                q.row,
                q.key.as_deref().unwrap_or("-")
            );
            println!("quarantined {}", q.created_at.to_rfc3339());
            for r in reasons(&q.reasons_json) {
                println!("  - {r}");
            }
            let raw: serde_json::Value = serde_json::from_str(&q.raw_json).unwrap_or(serde_json::Value::Null);
            println!("row as received (personal data):\n{}", serde_json::to_string_pretty(&raw)?);
            Ok(0)
        }
        QuarantineCommand::Replay { id, format } => {
            let engine = Engine::start(config).await?;
            let q = engine
                .store
                .quarantine_get(id)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no quarantined row {id}; see `connector quarantine list`"))?;
            let report = engine.ingest(&q.partner, false).await?;
            let again = crate::quarantine::find_again(&q, &report.quarantined_rows);
            // The run above quarantined afresh whatever still fails, so the old entry goes, unless the run kept
            // the row under the same entry (same place, same content).
            if !again.is_some_and(|r| crate::quarantine::is_entry(&q, r)) {
                engine.store.quarantine_delete(id).await?;
            }
            let outcome = match (again, &q.key) {
                (Some(_), _) => Replay::StillQuarantined,
                (None, None) => Replay::NoLongerQuarantined,
                (None, Some(_)) => Replay::MapsNow,
            };
            match format {
                Format::Json => print_json(&Replayed {
                    id,
                    partner: &q.partner,
                    key: q.key.as_deref(),
                    was: Place { file: &q.file, row: u64::try_from(q.row).unwrap_or_default() },
                    outcome,
                    now: again.map(|r| Place { file: &r.file, row: r.row }),
                })?,
                Format::Table => print_replay(&q, again),
            }
            Ok(if outcome == Replay::StillQuarantined { EXIT_FOUND } else { 0 })
        }
    }
}

fn print_replay(q: &QuarantineRecord, again: Option<&QuarantinedRow>) {
    let which = match &q.key {
        Some(k) => format!("The row with key {k} (row {} of {} when quarantined)", q.row, q.file),
        None => format!("Row {} of {} (no key; found by its content)", q.row, q.file),
    };
    if let Some(now) = again {
        println!(
            "{which} still does not map; it is quarantined again, now as row {} of {}, with the current reasons (`connector quarantine list --partner {}`).",
            now.row, now.file, q.partner
        );
    } else if q.key.is_none() {
        println!(
            "{which} is no longer quarantined as it was: it maps now, or it was changed (a changed row without a key cannot be told from a new one: see `connector quarantine list --partner {}`).",
            q.partner
        );
    } else {
        println!("{which} maps now: its resources are queued for the next delivery.");
    }
}
