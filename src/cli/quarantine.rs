//! `connector quarantine list|show|replay`: rows that could not be mapped, why, and mapping them again once
//! the source is fixed. Quarantined rows hold personal data (the raw row): `show` prints it, `list` does not.

use std::path::Path;

use clap::Subcommand;

use super::{EXIT_FOUND, Format};
use crate::config::Config;
use crate::mapping::Reason;
use crate::store::Store;
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
    /// Show one quarantined row with its content (personal data) and every reason.
    Show { id: i64 },
    /// Map the row's partner again (after fixing the source) and report whether the row maps now.
    Replay { id: i64 },
}

fn reasons(json: &str) -> Vec<String> {
    serde_json::from_str::<Vec<Reason>>(json).map(|r| r.iter().map(ToString::to_string).collect()).unwrap_or_default()
}

pub async fn run(config_path: &Path, cmd: QuarantineCommand) -> anyhow::Result<u8> {
    let config = Config::load(config_path)?;
    match cmd {
        QuarantineCommand::List { partner, limit, format } => {
            let store = Store::connect(&config.state_url()).await?;
            let rows = store.quarantine_list(partner.as_deref(), limit).await?;
            match format {
                Format::Json => {
                    let v: Vec<serde_json::Value> = rows
                        .iter()
                        .map(|(id, q)| {
                            serde_json::json!({"id": id, "partner": q.partner, "kind": q.kind, "file": q.file, "row": q.row,
                                "key": q.key, "reasons": reasons(&q.reasons_json), "since": q.created_at.to_rfc3339()})
                        })
                        .collect();
                    println!("{}", serde_json::to_string_pretty(&v)?);
                }
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
        QuarantineCommand::Show { id } => {
            let store = Store::connect(&config.state_url()).await?;
            let q = store
                .quarantine_get(id)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no quarantined row {id}; see `connector quarantine list`"))?;
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
        QuarantineCommand::Replay { id } => {
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
            let which = match &q.key {
                Some(k) => format!("The row with key {k} (row {} of {} when quarantined)", q.row, q.file),
                None => format!("Row {} of {} (no key; found by its content)", q.row, q.file),
            };
            if let Some(now) = again {
                println!(
                    "{which} still does not map; it is quarantined again, now as row {} of {}, with the current reasons (`connector quarantine list --partner {}`).",
                    now.row, now.file, q.partner
                );
                Ok(EXIT_FOUND)
            } else if q.key.is_none() {
                println!(
                    "{which} is no longer quarantined as it was: it maps now, or it was changed (a changed row without a key cannot be told from a new one: see `connector quarantine list --partner {}`).",
                    q.partner
                );
                Ok(0)
            } else {
                println!("{which} maps now: its resources are queued for the next delivery.");
                Ok(0)
            }
        }
    }
}
