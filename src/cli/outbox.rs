//! `connector outbox list|retry`: what is waiting to be sent, what was refused, and sending it again.

use std::path::Path;

use clap::Subcommand;
use serde::Serialize;

use super::{EXIT_FOUND, Format, print_json};
use crate::config::Config;
use crate::store::{OutboxRow, Store};

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
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
}

/// One queued write, as `outbox list --format json` prints it (no resource content).
#[derive(Debug, Serialize)]
struct Listed<'a> {
    id: i64,
    destination: &'a str,
    resource: String,
    op: String,
    attempts: i32,
    dead: bool,
    not_before: String,
    last_error: Option<&'a str>,
}

impl<'a> Listed<'a> {
    fn of(r: &'a OutboxRow) -> Self {
        Listed {
            id: r.seq,
            destination: &r.item.destination,
            resource: format!("{}/{}", r.item.key.resource_type, r.item.key.id),
            op: format!("{:?}", r.item.op),
            attempts: r.attempts,
            dead: r.dead,
            not_before: r.not_before.to_rfc3339(),
            last_error: r.last_error.as_deref(),
        }
    }
}

/// What `outbox retry --format json` prints: how many dead letters went back in the queue, and which.
#[derive(Debug, Serialize)]
struct Retried<'a> {
    requeued: usize,
    /// The id asked for (`retry ID`); null for `retry --dead`.
    id: Option<i64>,
    /// `--destination` with `retry --dead`; null: every destination.
    destination: Option<&'a str>,
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
                    let listed: Vec<Listed> = rows.iter().map(Listed::of).collect();
                    println!("{}", serde_json::to_string_pretty(&listed)?);
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
        OutboxCommand::Retry { id: Some(id), format, .. } => {
            if !store.outbox_retry(id, now).await? {
                anyhow::bail!("no dead letter with id {id}; see `connector outbox list --dead`")
            }
            match format {
                Format::Json => print_json(&Retried { requeued: 1, id: Some(id), destination: None })?,
                Format::Table => println!("Outbox {id} queued again; it goes with the next delivery."),
            }
            Ok(0)
        }
        OutboxCommand::Retry { id: None, destination, format, .. } => {
            let n = store.outbox_retry_dead(destination.as_deref(), now).await?;
            match format {
                Format::Json => print_json(&Retried { requeued: n, id: None, destination: destination.as_deref() })?,
                Format::Table => println!("{n} dead letter(s) queued again."),
            }
            Ok(0)
        }
    }
}
