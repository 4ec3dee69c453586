//! `connector reconcile`: does each destination hold what it should? And `connector pull`: read back what
//! others changed there.

use std::io::{IsTerminal, Write as _};
use std::path::Path;

use clap::Args;

use super::{EXIT_FOUND, Format};
use crate::config::Config;
use crate::reconcile::{self, Options, ReconcileReport};
use crate::sync::Engine;

#[derive(Debug, Args)]
pub struct ReconcileArgs {
    /// Only this destination.
    #[arg(long)]
    pub destination: Option<String>,
    /// Only this partner's resources.
    #[arg(long)]
    pub partner: Option<String>,
    /// Queue the repairs through the outbox and deliver them (conflicts are left for an admin).
    #[arg(long)]
    pub fix: bool,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct PullArgs {
    /// Only this destination (default: every destination).
    #[arg(long)]
    pub destination: Option<String>,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

/// A stop signal set by SIGTERM or Ctrl-C (the reconcile timer's unit is stopped with SIGTERM).
fn stop_on_signal() -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            () = term => {}
        }
        let _ = tx.send(true);
    });
    rx
}

pub async fn run(config_path: &Path, args: ReconcileArgs) -> anyhow::Result<u8> {
    let config = Config::load(config_path)?;
    let engine = Engine::start(config).await?;
    if let Some(code) = write_only(&engine, args.destination.as_deref(), "reconciled").await? {
        return Ok(code);
    }
    let opts = Options {
        destination: args.destination.clone(),
        partner: args.partner.clone(),
        fix: args.fix,
        progress: Some(progress(bar_wanted())),
        stop: Some(stop_on_signal()),
        page_size: 0,
    };
    let report = engine.reconcile(&opts).await;
    if bar_wanted() {
        eprintln!();
    }
    engine.store.release(&engine.owner).await.ok();
    engine.store.close().await;
    let report = report?;
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Format::Table => print_table(&report),
    }
    Ok(if report.drift() > 0 { EXIT_FOUND } else { 0 })
}

/// A line redrawn in place on a terminal; elsewhere (a log, a pipe) a plain line per resource type read.
fn bar_wanted() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("TERM").is_none_or(|t| t != "dumb")
}

/// Prints reconcile's progress on stderr.
fn progress(bar: bool) -> reconcile::Progress {
    reconcile::Progress(std::sync::Arc::new(move |p: &reconcile::PageRead<'_>| {
        let (dest, kind) = (p.destination, p.resource_type);
        if bar {
            let mut err = std::io::stderr().lock();
            let _ = write!(
                err,
                "\r\x1b[2K{dest} {kind}: {} read, {} not in sync ({:.0} s)",
                p.read, p.not_in_sync, p.seconds
            );
            let _ = err.flush();
        } else if p.type_done {
            eprintln!(
                "{dest} {kind}: read; {} read in all, {} not in sync so far ({:.1} s)",
                p.read, p.not_in_sync, p.seconds
            );
        }
    }))
}

fn print_table(r: &ReconcileReport) {
    println!(
        "{:<8} {:<14} {:<22} {:>8} {:>8} {:>10} {:>8} {:>8} {:>9}",
        "DEST", "PARTNER", "KIND", "IN SYNC", "MISSING", "UNEXPECTED", "DRIFTED", "STALE", "CONFLICT"
    );
    for s in &r.summaries {
        println!(
            "{:<8} {:<14} {:<22} {:>8} {:>8} {:>10} {:>8} {:>8} {:>9}",
            s.destination,
            s.partner,
            s.resource_type,
            s.in_sync,
            s.missing,
            s.unexpected,
            s.drifted,
            s.stale,
            s.conflict
        );
    }
    let shown = r.findings.len().min(50);
    if shown > 0 {
        println!();
        for f in &r.findings[..shown] {
            let fix = f.fix.as_deref().map(|x| format!(" -> {x}")).unwrap_or_default();
            println!(
                "{:<10} {} {}/{} ({}): {}{fix}",
                f.class.as_str(),
                f.destination,
                f.resource_type,
                f.id,
                f.partner,
                f.detail
            );
        }
        if r.findings_total > shown as u64 {
            println!("... and {} more (`--format json` lists up to 1000).", r.findings_total - shown as u64);
        }
    }
    println!();
    println!(
        "{} resource(s) read in {:.1} s; {} not in sync{}.",
        r.read,
        r.seconds,
        r.drift(),
        if r.conflicts() > 0 {
            format!(", {} in conflict (`connector conflicts list`)", r.conflicts())
        } else {
            String::new()
        }
    );
    if let Some(f) = &r.fixed {
        println!(
            "Fixed: {} queued, {} written, {} merged, {} new conflict(s), {} dead-lettered, {} deferred. Run `connector reconcile` again to confirm.",
            f.queued, f.written, f.merged, f.conflicts, f.dead_lettered, f.deferred
        );
    } else if r.drift() > 0 {
        println!("`connector reconcile --fix` repairs it through the outbox.");
    }
}

/// When `only` names a destination that cannot be read back (an HL7 v2 engine), says so plainly, reports
/// what the ledger says was sent there instead, and returns the exit code (0: nothing failed).
async fn write_only(engine: &Engine, only: Option<&str>, verb: &str) -> anyhow::Result<Option<u8>> {
    let Some(d) = only.and_then(|n| engine.destinations.iter().find(|d| d.name == n)) else { return Ok(None) };
    if d.transport.capabilities().read {
        return Ok(None);
    }
    let count = engine.store.ledger_count(&d.name).await?;
    let types = engine.store.ledger_types(&d.name).await?;
    println!(
        "{}: cannot be {verb}: it is write-only (HL7 v2 messages to an integration engine; nothing can be read back).",
        d.name
    );
    println!(
        "From the connector's ledger instead: {count} resource(s) acknowledged there{}.",
        if types.is_empty() { String::new() } else { format!(" ({})", types.join(", ")) }
    );
    println!(
        "`connector outbox list --destination {}` shows what waits or was refused; `connector audit` what was disclosed.",
        d.name
    );
    engine.store.close().await;
    Ok(Some(0))
}

pub async fn pull(config_path: &Path, args: PullArgs) -> anyhow::Result<u8> {
    let config = Config::load(config_path)?;
    let engine = Engine::start(config).await?;
    // A one-off command: Ctrl-C ends the process, so nothing needs to be told to stop.
    let (_stop, no_stop) = tokio::sync::watch::channel(false);
    if let Some(code) = write_only(&engine, args.destination.as_deref(), "pulled from").await? {
        return Ok(code);
    }
    let mut reports = Vec::new();
    for d in engine.destinations.iter().filter(|d| args.destination.as_deref().is_none_or(|o| o == d.name)) {
        if !d.transport.capabilities().read {
            eprintln!("{}: skipped: it cannot be read back (write-only destination).", d.name);
            continue;
        }
        reports.push(engine.pull(&d.name, &no_stop).await?);
    }
    engine.store.close().await;
    if reports.is_empty() {
        anyhow::bail!("--destination {}: no such destination in the config", args.destination.unwrap_or_default());
    }
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&reports)?),
        Format::Table => {
            for r in &reports {
                println!(
                    "{}: {} history entries read; {} changed there by others (kept), {} stale, {} deleted there",
                    r.destination, r.read, r.changed, r.stale, r.deleted
                );
            }
        }
    }
    Ok(if reports.iter().any(|r| r.stale + r.deleted > 0) { EXIT_FOUND } else { 0 })
}
