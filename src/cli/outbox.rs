//! `connector outbox list|retry`: what is waiting to be sent, what was refused, and sending it again.

use std::path::Path;

use clap::Subcommand;

use super::{EXIT_FOUND, Format};
use crate::config::Config;
use crate::store::Store;

#[derive(Debug, Subcommand)]
pub enum OutboxCommand {
    /// List queued writes (or only the dead letters).
    List {
        #[arg(long)]
        destination: Option<String>,
        /// Only writes a destination refused for good.
        #[arg(long)]
        dead: bool,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Put a dead letter (by id) or all of them (--dead) back in the queue.
    Retry {
        /// The outbox id shown by `outbox list`.
        #[arg(required_unless_present = "dead", conflicts_with = "dead")]
        id: Option<i64>,
        #[arg(long)]
        dead: bool,
        #[arg(long)]
        destination: Option<String>,
    },
}

pub async fn run(config_path: &Path, cmd: OutboxCommand) -> anyhow::Result<u8> {
    let config = Config::load(config_path)?;
    let store = Store::connect(&config.state_url()).await?;
    let now = chrono::Utc::now();
    match cmd {
        OutboxCommand::List { destination, dead, limit, format } => {
            let rows = store.outbox_list(destination.as_deref(), dead, limit).await?;
            match format {
                Format::Json => {
                    let v: Vec<serde_json::Value> = rows
                        .iter()
                        .map(|r| {
                            serde_json::json!({
                                "id": r.seq, "destination": r.item.destination, "resource": format!("{}/{}", r.item.key.resource_type, r.item.key.id),
                                "op": format!("{:?}", r.item.op), "attempts": r.attempts, "dead": r.dead,
                                "not_before": r.not_before.to_rfc3339(), "last_error": r.last_error,
                            })
                        })
                        .collect();
                    println!("{}", serde_json::to_string_pretty(&v)?);
                }
                Format::Table => {
                    println!("{:>8}  {:<8} {:<50} {:>3}  {:<5} error", "id", "dest", "resource", "try", "state");
                    for r in &rows {
                        let state = if r.dead { "DEAD" } else { "queued" };
                        let err: String = r.last_error.as_deref().unwrap_or("").chars().take(120).collect();
                        println!(
                            "{:>8}  {:<8} {:<50} {:>3}  {:<5} {err}",
                            r.seq,
                            r.item.destination,
                            format!("{}/{}", r.item.key.resource_type, r.item.key.id),
                            r.attempts,
                            state
                        );
                    }
                    if rows.is_empty() {
                        println!("(empty)");
                    }
                }
            }
            Ok(if dead && !rows.is_empty() { EXIT_FOUND } else { 0 })
        }
        OutboxCommand::Retry { id: Some(id), .. } => {
            if store.outbox_retry(id, now).await? {
                println!("Outbox {id} queued again; it goes with the next delivery.");
                Ok(0)
            } else {
                anyhow::bail!("no dead letter with id {id}; see `connector outbox list --dead`")
            }
        }
        OutboxCommand::Retry { id: None, destination, .. } => {
            let n = store.outbox_retry_dead(destination.as_deref(), now).await?;
            println!("{n} dead letter(s) queued again.");
            Ok(0)
        }
    }
}
