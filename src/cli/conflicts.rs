//! `connector conflicts list|show|resolve|report`: records changed both at their partner and on a destination.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use serde::Serialize;

use super::{EXIT_FOUND, Format, print_json};
use crate::config::Config;
use crate::conflict::report;
use crate::model::ConflictStatus;
use crate::ops::files::{self, Existing};
use crate::reconcile::resolve::{self, Keep};
use crate::store::ConflictRecord;
use crate::sync::Engine;

#[derive(Debug, Subcommand)]
pub enum ConflictsCommand {
    /// Open conflicts (exit 3 when there are any).
    List {
        /// Resolved ones too.
        #[arg(long)]
        all: bool,
        #[arg(long)]
        destination: Option<String>,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// One conflict: the last version sent, the partner's new one and the destination's, element by element.
    Show {
        id: i64,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Decide a conflict: keep the partner's version (it is sent, with the consent check) or the destination's.
    Resolve {
        id: i64,
        #[arg(long, value_enum)]
        keep: Keep,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Write a self-contained HTML page of the open conflicts, side by side, for a browser. It holds personal
    /// data: keep it on the admin's machine and delete it after use.
    Report {
        #[arg(long, value_name = "FILE")]
        html: PathBuf,
        /// Replace FILE if it exists (never the file a symlink there points to).
        #[arg(long)]
        force: bool,
        /// Resolved ones too (their versions are no longer kept).
        #[arg(long)]
        all: bool,
    },
}

pub async fn run(config_path: &Path, cmd: ConflictsCommand) -> anyhow::Result<u8> {
    let config = Config::load(config_path)?;
    match cmd {
        ConflictsCommand::List { all, destination, format } => {
            let store = crate::store::Store::connect(&config.state_url()).await?;
            let list = store.conflicts_list(all, destination.as_deref(), 10_000).await?;
            let open = list.iter().filter(|c| c.status == ConflictStatus::Open).count();
            match format {
                Format::Json => print_json(&list.iter().map(Listed::of).collect::<Vec<_>>())?,
                Format::Table => {
                    if list.is_empty() {
                        println!("No {}conflicts.", if all { "" } else { "open " });
                    } else {
                        println!(
                            "{:>5}  {:<8}  {:<52}  {:<14}  {:<24}  {:<17}  STATUS",
                            "ID", "DEST", "RESOURCE", "PARTNER", "ELEMENTS", "SINCE (UTC)"
                        );
                        for c in &list {
                            let status = match &c.resolution {
                                Some(r) => format!("resolved: {r}"),
                                None => c.status.to_string(),
                            };
                            println!(
                                "{:>5}  {:<8}  {:<52}  {:<14}  {:<24}  {:<17}  {status}",
                                c.id,
                                c.destination,
                                format!("{}/{}", c.resource_type, c.resource_id),
                                partner(c.origin.as_ref()),
                                c.elements.join(","),
                                c.created_at.format("%Y-%m-%d %H:%M"),
                            );
                        }
                        if open > 0 {
                            println!(
                                "\n{open} open. `connector conflicts show ID` compares the versions; `connector conflicts resolve ID --keep source|remote` decides."
                            );
                        }
                    }
                }
            }
            store.close().await;
            Ok(if open > 0 { EXIT_FOUND } else { 0 })
        }
        ConflictsCommand::Show { id, format } => {
            let store = crate::store::Store::connect(&config.state_url()).await?;
            let c = store.conflict_get(id).await?.with_context(|| format!("no conflict {id}"))?;
            store.close().await;
            let rows = report::element_rows(&c);
            match format {
                Format::Json => {
                    print_json(&Shown { conflict: &c, comparison: rows.iter().map(Compared::of).collect() })?
                }
                Format::Table => {
                    let view = crate::conflict::view::ConflictView::new(&c);
                    print!("{}", crate::conflict::text::text(&view, &program(config_path), colour()));
                }
            }
            Ok(0)
        }
        ConflictsCommand::Resolve { id, keep, format } => {
            let engine = Engine::start(config).await?;
            let by = resolve::who();
            let r = resolve::resolve(&engine, id, keep, &by).await;
            engine.store.close().await;
            let r = r?;
            match format {
                Format::Json => println!("{}", serde_json::to_string_pretty(&r)?),
                Format::Table => {
                    let what = match keep {
                        Keep::Source => format!("the partner's version was written to {}", r.destination),
                        Keep::Remote => format!("the version on {} was kept", r.destination),
                    };
                    println!(
                        "Conflict {id} resolved: {what} ({} now at version {}). Audited as decided by {by}.",
                        r.resource,
                        r.version.as_deref().unwrap_or("?")
                    );
                }
            }
            Ok(0)
        }
        ConflictsCommand::Report { html, all, force } => {
            let store = crate::store::Store::connect(&config.state_url()).await?;
            let list = store.conflicts_list(all, None, 10_000).await?;
            store.close().await;
            let page = report::html(&list, chrono::Utc::now(), &program(config_path));
            let existing = if force { Existing::Replace } else { Existing::Refuse };
            files::write_atomic(&html, page.as_bytes(), 0o600, existing).map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    anyhow::anyhow!(
                        "{} exists; nothing was written. Choose another name, or pass --force to replace it",
                        html.display()
                    )
                } else {
                    anyhow::Error::new(e).context(format!("writing {}", html.display()))
                }
            })?;
            eprintln!(
                "Wrote {} ({} conflict(s)). It holds personal data: delete it after use.",
                html.display(),
                list.len()
            );
            Ok(0)
        }
    }
}

fn partner(origin: Option<&crate::model::Provenance>) -> String {
    origin.and_then(crate::model::Provenance::partner).unwrap_or("?").to_string()
}

/// How the admin runs the connector, for the commands a conflict view prints: with `--config` unless it is
/// the default file.
fn program(config_path: &Path) -> String {
    if config_path == Path::new(super::DEFAULT_CONFIG) {
        return "connector".into();
    }
    let path = config_path.display().to_string();
    let plain = !path.is_empty() && path.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+,:=@".contains(c));
    if plain {
        format!("connector --config {path}")
    } else {
        format!("connector --config '{}'", path.replace('\'', "'\\''"))
    }
}

/// Bold and colour only on a terminal, and not when `NO_COLOR` is set or the terminal is dumb.
fn colour() -> bool {
    use std::io::IsTerminal as _;
    std::env::var_os("NO_COLOR").is_none()
        && std::io::stdout().is_terminal()
        && std::env::var_os("TERM").is_none_or(|t| t != "dumb")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_name_the_config_unless_it_is_the_default() {
        assert_eq!(program(Path::new(super::super::DEFAULT_CONFIG)), "connector");
        assert_eq!(program(Path::new("/srv/connector/config.toml")), "connector --config /srv/connector/config.toml");
        assert_eq!(program(Path::new("/tmp/my config's.toml")), "connector --config '/tmp/my config'\\''s.toml'");
    }
}

/// One conflict in `list --format json` (its versions are in `show`).
#[derive(Debug, Serialize)]
struct Listed<'a> {
    id: i64,
    destination: &'a str,
    resource_type: &'a str,
    resource_id: &'a str,
    elements: &'a [String],
    partner: String,
    status: ConflictStatus,
    resolution: Option<&'a str>,
    resolved_by: Option<&'a str>,
    created_at: chrono::DateTime<chrono::Utc>,
    updated_at: chrono::DateTime<chrono::Utc>,
}

impl<'a> Listed<'a> {
    fn of(c: &'a ConflictRecord) -> Self {
        Listed {
            id: c.id,
            destination: &c.destination,
            resource_type: &c.resource_type,
            resource_id: &c.resource_id,
            elements: &c.elements,
            partner: partner(c.origin.as_ref()),
            status: c.status,
            resolution: c.resolution.as_deref(),
            resolved_by: c.resolved_by.as_deref(),
            created_at: c.created_at,
            updated_at: c.updated_at,
        }
    }
}

/// `show --format json`: the conflict as stored, and its element-by-element comparison.
#[derive(Debug, Serialize)]
struct Shown<'a> {
    #[serde(flatten)]
    conflict: &'a ConflictRecord,
    comparison: Vec<Compared<'a>>,
}

#[derive(Debug, Serialize)]
struct Compared<'a> {
    element: &'a str,
    conflict: bool,
    last_sent: Option<&'a serde_json::Value>,
    source: Option<&'a serde_json::Value>,
    destination: Option<&'a serde_json::Value>,
}

impl<'a> Compared<'a> {
    fn of(r: &'a report::ElementRow) -> Self {
        Compared {
            element: &r.name,
            conflict: r.conflict,
            last_sent: r.base.as_ref(),
            source: r.source.as_ref(),
            destination: r.remote.as_ref(),
        }
    }
}
