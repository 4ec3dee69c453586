//! `connector sync --once`: one full cycle (map every partner, plan, deliver) and a summary.

use std::path::Path;

use clap::Args;

use super::{EXIT_FOUND, Format};
use crate::config::Config;
use crate::sync::{CycleReport, Engine};

#[derive(Debug, Args)]
pub struct SyncArgs {
    /// Run one cycle and exit (the daemon is `connector run`).
    #[arg(long)]
    pub once: bool,
    /// Only this partner's sources.
    #[arg(long)]
    pub partner: Option<String>,
    /// Only deliver to this destination.
    #[arg(long)]
    pub destination: Option<String>,
    /// Map and compare with what each destination holds, but queue and send nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// List, per resource and destination, whether it would be sent or withheld and why.
    #[arg(long)]
    pub explain: bool,
    /// Take a snapshot export much smaller than the previous one as complete (it was refused as suspicious):
    /// the records missing from it are then gone at source. Needs --partner.
    #[arg(long, requires = "partner")]
    pub accept_snapshot: bool,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

pub async fn run(config_path: &Path, args: SyncArgs) -> anyhow::Result<u8> {
    if !args.once {
        anyhow::bail!("`connector sync` runs one cycle: pass --once (the long-running service is `connector run`)");
    }
    let config = Config::load(config_path)?;
    if let Some(p) = &args.partner
        && !config.partners.iter().any(|c| &c.id == p)
    {
        anyhow::bail!("--partner {p}: no such [[partner]] in {}", config_path.display());
    }
    if let Some(d) = &args.destination
        && !config.destinations.contains_key(d)
    {
        anyhow::bail!("--destination {d}: no such [destination.{d}] in {}", config_path.display());
    }
    let mut engine = Engine::start(config).await?;
    engine.explain = args.explain;
    engine.accept_snapshot = args.accept_snapshot;
    let (tx, rx) = tokio::sync::watch::channel(false);
    let stop = tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            let _ = tx.send(true);
        }
    });
    let report = engine.cycle(args.partner.as_deref(), args.destination.as_deref(), args.dry_run, &rx).await;
    stop.abort();
    engine.store.release(&engine.owner).await.ok();
    let report = report?;
    // Rows still waiting after the cycle (deferred, or behind a lease of another instance) are worth a look.
    let waiting: u64 = if args.dry_run {
        0
    } else {
        engine
            .store
            .queue_depths()
            .await?
            .iter()
            .filter(|d| args.destination.as_deref().is_none_or(|only| only == d.destination))
            .map(|d| d.pending)
            .sum()
    };
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Format::Table => {
            print_table(&report);
            if waiting > 0 {
                println!("{waiting} write(s) still queued after this cycle: `connector outbox list`.");
            }
        }
    }
    let sources = report.ingest.iter().flat_map(|i| &i.sources);
    let (failed_sources, refused) = (sources.clone().any(|s| s.failed()), sources.clone().any(|s| s.refused.is_some()));
    Ok(if report.failed_files() > 0 || failed_sources {
        1
    } else if refused
        || report.quarantined() > 0
        || report.dead_lettered() > 0
        || report.deferred() > 0
        || waiting > 0
        || report.delivery.iter().any(|d| d.conflicts > 0)
    {
        EXIT_FOUND
    } else {
        0
    })
}

fn print_source(partner: &str, s: &crate::source::SourceReport) {
    let name = format!("{partner}/{}", s.source);
    if !s.read.is_empty() {
        println!("  source {name}: read {}", s.read.join(", "));
    }
    for w in &s.waiting {
        println!("  source {name}: {} waits: {}", w.name, w.why);
    }
    for (file, why) in &s.rejected {
        println!("  REJECTED {file} ({name}): {why}; moved to the inbox's rejected/ folder with the reason beside it");
    }
    if let Some(e) = &s.error {
        println!("  SOURCE NOT READ {name}: {e}");
    }
    if let Some(why) = &s.refused {
        println!("  SNAPSHOT REFUSED {name}: {why}");
    }
    if !s.gone.is_empty() {
        let shown: Vec<&str> = s.gone.iter().take(20).map(String::as_str).collect();
        let more = if s.gone.len() > 20 { format!(" and {} more", s.gone.len() - 20) } else { String::new() };
        let what = if s.retracting > 0 {
            format!("{} deletion(s) queued where retract = true", s.retracting)
        } else {
            "left in place at destinations (set retract_missing = true on the source to delete them)".into()
        };
        println!("  GONE AT SOURCE {name}: {} record(s) ({}{more}); {what}", s.gone.len(), shown.join(", "));
    }
    if s.purged > 0 {
        println!("  source {name}: {} archived file(s) older than keep_days deleted", s.purged);
    }
}

fn print_table(r: &CycleReport) {
    for i in &r.ingest {
        let m = &i.mapping;
        let queued: Vec<String> = i.queued.iter().map(|(d, n)| format!("{d} {n}")).collect();
        let verb = if i.dry_run { "would queue" } else { "queued" };
        let unchanged = i.unchanged_since.map_or(String::new(), |since| {
            format!(
                " (unchanged since the full plan at {}: same export files, mappings, configuration and state; not planned again)",
                since.format("%Y-%m-%d %H:%M:%S UTC")
            )
        });
        println!(
            "partner {}: {} read, {} mapped, {} quarantined{}{unchanged}; {verb}: {}",
            i.partner,
            m.read(),
            m.mapped(),
            m.quarantined(),
            if m.no_statement() > 0 { format!(", {} no statement", m.no_statement()) } else { String::new() },
            if queued.is_empty() { "nothing".into() } else { queued.join(", ") }
        );
        for f in m.failed_files() {
            println!("  NOT MAPPED {}: {}", f.path.display(), f.error.as_deref().unwrap_or_default());
        }
        for s in &i.sources {
            print_source(&i.partner, s);
        }
        if let Some(why) = &i.consent_unreadable {
            println!(
                "  CONSENT EXPORT UNREADABLE ({why}): everything about a person from {} is held until it is read",
                i.partner
            );
        }
        for (person, record) in &i.consent_held {
            println!(
                "  HELD {person}: consent record {record} is unreadable (quarantined); correct it, and the next cycle releases the hold"
            );
        }
        for (d, n) in i.withheld.iter().filter(|(_, n)| **n > 0) {
            println!(
                "  withheld from {d}: {n} (no agreement or consent allows them; `connector audit --destination {d}`)"
            );
        }
        for (d, n) in &i.no_longer_allowed {
            println!("  {d} holds {n} resource(s) it may no longer hold (deleted there only with retract = true)");
        }
        if i.consent_statements > 0 {
            println!("  {} new consent statement(s)", i.consent_statements);
        }
        for w in &i.withdrawals {
            println!("  WITHDRAWAL {} ({}): {} pending send(s) cancelled", w.person, w.statement, w.cancelled);
            if w.holdings.is_empty() {
                println!("    no destination holds anything for this person");
            }
            for (d, list) in &w.holdings {
                let action = if w.retracting.contains(d) {
                    "being deleted (retract = true)"
                } else if w.cannot_delete.contains(d) {
                    "sent as messages the connector cannot take back (write-only destination): ask its owners \
                     (the trust's integration engine and EPR team) to remove them"
                } else {
                    "left in place: ask its administrator, or set retract = true"
                };
                println!("    {d} holds {} resource(s), {action}: {}", list.len(), list.join(", "));
            }
        }
        for e in &i.explained {
            let state = match (e.decision, e.unchanged) {
                ("send", true) => "send (already there)",
                ("send", false) => "send",
                (_, true) => "withhold",
                _ => "withhold (it holds an older copy)",
            };
            println!(
                "  {} {}/{} [{} {}]: {state}: {}",
                e.destination, e.resource_type, e.id, e.partner, e.category, e.why
            );
        }
    }
    for d in &r.delivery {
        println!(
            "destination {}: {} written, {} linked to existing Patients, {} withheld at sending, {} dead-lettered, {} deferred, {} bundles{}",
            d.destination,
            d.written,
            d.linked,
            d.withheld,
            d.dead_lettered,
            d.deferred,
            d.bundles,
            if d.breaker_open { " (circuit open: destination paused)" } else { "" }
        );
        if d.merged + d.conflicts > 0 {
            println!(
                "destination {}: {} update(s) merged with changes made there (kept), {} conflict(s): `connector conflicts list`",
                d.destination, d.merged, d.conflicts
            );
        }
    }
    if r.quarantined() > 0 {
        println!("Quarantined rows: `connector quarantine list`.");
    }
    if r.dead_lettered() > 0 {
        println!("Dead letters: `connector outbox list --dead`.");
    }
}
