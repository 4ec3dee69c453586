//! `connector feed run|rebuild`: each partner's feed of the unified record for the people it supports.

use std::path::Path;

use clap::Subcommand;

use super::{EXIT_FOUND, Format};
use crate::config::Config;
use crate::feed::{self, FeedRun};
use crate::sync::Engine;

#[derive(Debug, Subcommand)]
pub enum FeedCommand {
    /// Send each partner what changed in its clients' records since its last delivery (exit 3 when a
    /// document became a dead letter).
    Run {
        /// Only this partner's feed (default: every [[feed]]).
        #[arg(long)]
        partner: Option<String>,
        /// Show what would be queued; send and record nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Forget what the partner's feed delivered and send its clients' whole records again (after the
    /// partner lost data, or changed its import).
    Rebuild {
        #[arg(long)]
        partner: String,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
}

pub async fn run(config_path: &Path, cmd: FeedCommand) -> anyhow::Result<u8> {
    let config = Config::load(config_path)?;
    let engine = Engine::start(config).await?;
    let result = run_with(&engine, cmd).await;
    engine.store.release(&engine.owner).await.ok();
    engine.store.close().await;
    result
}

async fn run_with(engine: &Engine, cmd: FeedCommand) -> anyhow::Result<u8> {
    let (partners, rebuild, dry_run, format) = match cmd {
        FeedCommand::Run { partner, dry_run, format } => (partner.map(|p| vec![p]), false, dry_run, format),
        FeedCommand::Rebuild { partner, format } => (Some(vec![partner]), true, false, format),
    };
    let feeds: Vec<_> = match partners {
        Some(ps) => ps.iter().map(|p| feed::feed_for(engine, p).cloned()).collect::<anyhow::Result<_>>()?,
        None => engine.config.feeds.clone(),
    };
    if feeds.is_empty() {
        anyhow::bail!("no [[feed]] in the config: nothing to run (see config.example.toml)");
    }
    let (_tx, stop) = tokio::sync::watch::channel(false);
    let mut runs = Vec::new();
    for f in &feeds {
        runs.push(if dry_run {
            FeedRun { plan: feed::plan(engine, f, false, true).await?, ..Default::default() }
        } else {
            feed::run(engine, f, rebuild, &stop).await?
        });
    }
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&runs)?),
        Format::Table => print_table(&runs, dry_run),
    }
    Ok(if runs.iter().any(|r| r.delivery.dead > 0) { EXIT_FOUND } else { 0 })
}

fn print_table(runs: &[FeedRun], dry_run: bool) {
    println!(
        "{:<22} {:>7} {:>9} {:>6} {:>8} {:>9} {:>7} {:>7} {:>5} {:>5}",
        "FEED", "CLIENTS", "NO-CONSENT", "READ", "WITHHELD", "UNCHANGED", "QUEUED", "SENT", "DOCS", "DEAD"
    );
    for r in runs {
        let p = &r.plan;
        println!(
            "{:<22} {:>7} {:>9} {:>6} {:>8} {:>9} {:>7} {:>7} {:>5} {:>5}",
            p.feed,
            p.clients,
            p.clients_withheld,
            p.read,
            p.withheld,
            p.unchanged,
            p.queued_items,
            r.delivery.items,
            r.delivery.documents,
            r.delivery.dead
        );
        for (why, n) in &p.withheld_reasons {
            println!("    withheld {n:>4}: {why}");
        }
        if !dry_run && !r.delivery.target.is_empty() {
            println!("    delivered to {}", r.delivery.target);
        }
    }
    if dry_run {
        println!("Dry run: nothing was queued, sent or recorded.");
    }
}
