//! `connector audit verify`: walks the audit trail's hash chain and names the first entry that was edited,
//! the gap where entries were deleted, or entries missing at the end (a truncated table). Exit 0 when the
//! chain is whole, 3 when it is broken, 1 when it could not be read.

use std::path::Path;

use clap::Subcommand;

use super::{EXIT_FOUND, Format};
use crate::config::Config;
use crate::store::Store;

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check that no audit entry was edited, deleted or truncated away (exit 3 names the first broken one).
    /// It prints the chain's head: keep a copy elsewhere and compare, since someone able to rewrite the
    /// whole database could rewrite the chain too.
    Verify {
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
}

pub async fn run(config_path: &Path, cmd: AuditCommand) -> anyhow::Result<u8> {
    let AuditCommand::Verify { format } = cmd;
    let config = Config::load(config_path)?;
    let store = Store::connect(&config.state_url()).await?;
    let report = store.audit_verify().await;
    store.close().await;
    let report = report?;
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Format::Table => {
            match &report.broken {
                None => println!("Audit trail intact: {} chained entries verified.", report.chained),
                Some(b) if b.id > 0 => println!(
                    "Audit trail BROKEN at entry {}: {}. {} entries before it verified.",
                    b.id, b.reason, report.chained
                ),
                Some(b) => println!("Audit trail BROKEN: {}.", b.reason),
            }
            if report.unchained > 0 {
                println!(
                    "{} entries were written before the chain existed (before this version) and cannot be verified.",
                    report.unchained
                );
            }
            println!("Head: {} entries, last hash {}", report.head_count, report.head_hash);
        }
    }
    Ok(if report.broken.is_some() { EXIT_FOUND } else { 0 })
}
