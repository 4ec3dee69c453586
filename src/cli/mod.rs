//! Command line: the admin's contract. Each command is a variant here and a function in its own file.
//!
//! Exit codes: 0 success, 1 failure, 2 usage error (clap), 3 "ran fine but found something" (quarantined
//! rows, drift, open conflicts) so that cron and monitoring can act on it.

mod audit;
mod config_check;
mod conflicts;
mod consent;
mod feed;
pub mod generate;
mod help;
mod mappings;
mod mappings_new;
mod outbox;
mod quarantine;
mod reconcile;
mod status;
mod sync;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Ran, and found something an admin should look at.
pub const EXIT_FOUND: u8 = 3;

/// Output for people or for machines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Debug, Parser)]
#[command(
    name = "connector",
    version = crate::build_info::SHORT_VERSION,
    long_version = crate::build_info::LONG_VERSION,
    about = "York Hub connector: partner records to UK Core FHIR R4, synced to Cito and PKB.",
    after_help = help::footer(),
    next_help_heading = "Global options"
)]
pub struct Cli {
    /// The configuration file [default: /etc/connector/config.toml]. The `mappings` commands read it only
    /// when it is given, for its `[mappings] dir`.
    #[arg(long, global = true, env = "CONNECTOR_CONFIG")]
    pub config: Option<PathBuf>,

    /// Folder of mapping files (one sub-folder per partner; see mappings/README.md), for the `mappings`
    /// commands [default: the config's `[mappings] dir` when --config is given, else `mappings`].
    #[arg(long, global = true, env = "CONNECTOR_MAPPINGS")]
    pub mappings: Option<PathBuf>,

    /// Log lines as text, JSON lines, or journald (priority-prefixed); `auto` picks journald under systemd.
    #[arg(long, global = true, env = "CONNECTOR_LOG_FORMAT", value_enum, default_value_t = crate::ops::logging::LogFormat::Auto)]
    pub log_format: crate::ops::logging::LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check, test and try out partner mappings.
    #[command(subcommand)]
    Mappings(mappings::MappingsCommand),
    /// Rows that could not be mapped: list, show, replay after fixing the source.
    #[command(subcommand)]
    Quarantine(quarantine::QuarantineCommand),
    /// Run as a service: ingest and deliver on the configured schedules until SIGTERM (SIGHUP reloads).
    Run,
    /// Show each job's last and next run, queue depths and dead letters.
    Status {
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Run one sync cycle: map every partner's exports, plan, deliver to each destination.
    Sync(sync::SyncArgs),
    /// Inspect and retry the queue of writes to destinations.
    #[command(subcommand)]
    Outbox(outbox::OutboxCommand),
    /// A person's consent to share: in force, history, and what each destination holds.
    #[command(subcommand)]
    Consent(consent::ConsentCommand),
    /// The audit trail: every disclosure, withholding, cancellation and retraction; `audit verify` checks
    /// that none was edited or deleted.
    Audit(consent::AuditArgs),
    /// Check the installation: config, mappings, secrets, state store, destinations (sends no data).
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Records changed both at their partner and on a destination: list, compare, decide, report.
    #[command(subcommand)]
    Conflicts(conflicts::ConflictsCommand),
    /// Compare what each destination holds with what it should (exit 3 on drift); `--fix` repairs.
    Reconcile(reconcile::ReconcileArgs),
    /// Read back what others changed on the destinations since the last pull (the daemon does this on
    /// each destination's `pull_schedule`).
    Pull(reconcile::PullArgs),
    /// Partner feeds: send each partner the unified record of the people it supports (`run`), or all of it
    /// again (`rebuild --partner P`).
    #[command(subcommand)]
    Feed(feed::FeedCommand),
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate everything and reach each destination's metadata and token endpoints; exit 0 only when all pass.
    Check {
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
}

/// Prints one command's `--format json` document on stdout. Errors that stop a command before it has a
/// result are not JSON: they go to stderr as `error: ...` with exit 1, and stdout stays empty.
fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

/// The configuration file when none is given.
pub const DEFAULT_CONFIG: &str = "/etc/connector/config.toml";

/// Runs a parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    let config = cli.config.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
    // Other commands take the mappings from the config; this is passed where a signature still carries it.
    let legacy_mappings = cli.mappings.clone().unwrap_or_else(|| PathBuf::from("mappings"));
    let result = match cli.command {
        Command::Mappings(cmd) => mappings::mappings_dir(cli.mappings.as_deref(), cli.config.as_deref())
            .and_then(|dir| mappings::run(&dir, cmd)),
        Command::Quarantine(cmd) => runtime().and_then(|rt| rt.block_on(quarantine::run(&config, cmd))),
        Command::Run => runtime().and_then(|rt| rt.block_on(crate::daemon::run(&config))),
        Command::Status { format } => runtime().and_then(|rt| rt.block_on(status::run(&config, format))),
        Command::Sync(args) => runtime().and_then(|rt| rt.block_on(sync::run(&config, args))),
        Command::Outbox(cmd) => runtime().and_then(|rt| rt.block_on(outbox::run(&config, cmd))),
        Command::Consent(cmd) => {
            runtime().and_then(|rt| rt.block_on(consent::run_consent(&config, &legacy_mappings, cmd)))
        }
        Command::Config(ConfigCommand::Check { format }) => {
            runtime().and_then(|rt| rt.block_on(config_check::run(&config, format)))
        }
        Command::Conflicts(cmd) => runtime().and_then(|rt| rt.block_on(conflicts::run(&config, cmd))),
        Command::Reconcile(args) => runtime().and_then(|rt| rt.block_on(reconcile::run(&config, args))),
        Command::Pull(args) => runtime().and_then(|rt| rt.block_on(reconcile::pull(&config, args))),
        Command::Feed(cmd) => runtime().and_then(|rt| rt.block_on(feed::run(&config, cmd))),
        Command::Audit(consent::AuditArgs { command: Some(cmd), .. }) => {
            runtime().and_then(|rt| rt.block_on(audit::run(&config, cmd)))
        }
        Command::Audit(args) => {
            runtime().and_then(|rt| rt.block_on(consent::run_audit(&config, &legacy_mappings, args)))
        }
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
