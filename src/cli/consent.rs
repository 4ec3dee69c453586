//! `connector consent show PERSON` and `connector audit`: what a person agreed to, and what went where.
//!
//! PERSON is an NHS number (spaces allowed) or a partner's client reference (`HUB-1001`, or `hub:HUB-1001`
//! when two partners use the same reference). The store knows people by ids only; the NHS number is turned
//! into the same id the connector uses (a UUID v5), never stored or printed.

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, NaiveDate, Utc};
use clap::{Args, Subcommand};

use serde::Serialize;

use super::{EXIT_FOUND, Format, print_json};
use crate::config::Config;
use crate::mapping::{self, Catalog, RecordKind, ids};
use crate::model::AuditAction;
use crate::store::{AuditEntry, AuditFilter, LedgerEntry, StatementRecord, Store};

#[derive(Debug, Subcommand)]
pub enum ConsentCommand {
    /// A person's consent now, its history, and what each destination holds for them.
    Show {
        /// NHS number or partner client reference (optionally `partner:reference`).
        person: String,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub command: Option<super::audit::AuditCommand>,
    /// Only this person (NHS number or partner client reference).
    #[arg(long)]
    pub person: Option<String>,
    /// Only this destination.
    #[arg(long)]
    pub destination: Option<String>,
    /// Only entries from this date (YYYY-MM-DD, UTC) or time (RFC 3339) on.
    #[arg(long)]
    pub since: Option<String>,
    /// Only these actions: disclosed, linked, withheld, cancelled, retracted, consent, conflict,
    /// conflict-resolved, remote-change (repeatable).
    #[arg(long)]
    pub action: Vec<AuditAction>,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

/// The person ids (`Person/...` or `Patient/...`) PERSON names; empty when no one is known by it.
pub async fn resolve_person(store: &Store, catalog: &Catalog, text: &str) -> anyhow::Result<Vec<String>> {
    let digits: String = text.chars().filter(|c| !c.is_whitespace() && *c != '-').collect();
    if digits.len() == 10 && digits.bytes().all(|b| b.is_ascii_digit()) {
        if !crate::validate::nhs::is_valid(&digits) {
            anyhow::bail!("{text} looks like an NHS number but fails the Modulus 11 check; check the digits");
        }
        let person = format!("Person/{}", ids::resource_id("person", "nhs-number", "group", &digits));
        if !store.patients_of(&person).await?.is_empty() {
            return Ok(vec![person]);
        }
        return Ok(Vec::new());
    }
    let (only, reference) = match text.split_once(':') {
        Some((p, r)) if catalog.partner(p).is_some() => (Some(p), r),
        _ => (None, text),
    };
    let mut found = Vec::new();
    for (id, partner) in catalog.partners.iter().filter(|(id, _)| only.is_none_or(|o| o == id.as_str())) {
        let Some(m) = partner.mappings.get(&RecordKind::Person) else { continue };
        for spec in m.resources.iter().filter(|r| r.resource_type == "Patient") {
            let patient =
                format!("Patient/{}", ids::resource_id(id, RecordKind::Person.as_str(), &spec.name, reference));
            if let Some(person) = store.person_of(&patient).await? {
                found.push(person);
            }
        }
    }
    found.sort();
    found.dedup();
    Ok(found)
}

/// The config, the mappings it names (`--mappings` is for the `mappings` commands) and the state store.
async fn open(config_path: &Path, _mappings: &Path) -> anyhow::Result<(Config, Catalog, Store)> {
    let config = Config::load(config_path)?;
    let dir = config.resolve(&config.mappings.dir);
    let catalog = mapping::load_catalog(&dir).map_err(|errors| {
        let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
        anyhow::anyhow!("the mappings do not load:\n{}", list.join("\n"))
    })?;
    let store = Store::connect(&config.state_url()).await?;
    Ok((config, catalog, store))
}

async fn one_person(store: &Store, catalog: &Catalog, text: &str) -> anyhow::Result<Option<String>> {
    let found = resolve_person(store, catalog, text).await?;
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.into_iter().next()),
        _ => anyhow::bail!(
            "{text} is a client reference at more than one partner; say which: {}",
            catalog.partners.keys().map(|p| format!("{p}:{text}")).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// `consent show --format json`: the person's id (never their NHS number), their records at each partner,
/// consent in force and its history, what each destination holds, what was withheld.
#[derive(Debug, Serialize)]
struct Shown<'a> {
    person: &'a str,
    patients: Vec<PatientRecord<'a>>,
    in_force: Option<&'a StatementRecord>,
    history: &'a [StatementRecord],
    holdings: Vec<Holding<'a>>,
    withheld: &'a [AuditEntry],
}

#[derive(Debug, Serialize)]
struct PatientRecord<'a> {
    patient: &'a str,
    partner: &'a str,
}

/// One resource a destination holds for the person.
#[derive(Debug, Serialize)]
struct Holding<'a> {
    destination: &'a str,
    resource: String,
    remote_id: &'a str,
    version: Option<&'a str>,
    linked: bool,
}

impl<'a> Holding<'a> {
    fn of(e: &'a LedgerEntry) -> Self {
        Holding {
            destination: &e.destination,
            resource: e.key.to_string(),
            remote_id: &e.remote_id,
            version: e.version_id.as_deref(),
            linked: e.linked,
        }
    }
}

pub async fn run_consent(config_path: &Path, mappings: &Path, cmd: ConsentCommand) -> anyhow::Result<u8> {
    let ConsentCommand::Show { person, format } = cmd;
    let (_config, catalog, store) = open(config_path, mappings).await?;
    let Some(id) = one_person(&store, &catalog, &person).await? else {
        eprintln!("No one known as {person}: not in any partner's export synced so far.");
        return Ok(EXIT_FOUND);
    };
    let patients = store.patients_of(&id).await?;
    let history = store.consent_history(&id).await?;
    let current = store.consent_current(std::slice::from_ref(&id)).await?.remove(&id);
    let holdings = store.ledger_for_person(&id).await?;
    let withheld = store
        .audit_list(&AuditFilter {
            persons: vec![id.clone()],
            actions: vec![AuditAction::Withheld],
            ..Default::default()
        })
        .await?;
    match format {
        Format::Json => print_json(&Shown {
            person: &id,
            patients: patients.iter().map(|(patient, partner)| PatientRecord { patient, partner }).collect(),
            in_force: current.as_ref(),
            history: &history,
            holdings: holdings.iter().map(Holding::of).collect(),
            withheld: &withheld,
        })?,
        Format::Table => {
            println!("Person {id}");
            for (p, partner) in &patients {
                println!("  record at {partner}: {p}");
            }
            match &current {
                None => {
                    println!("Consent in force: none recorded. Nothing is shared where an agreement needs consent.")
                }
                Some(s) => {
                    println!("Consent in force: {} ({})", s.decision, crate::policy::cite(s));
                    if s.decision == crate::model::Stated::Given {
                        let partners: Vec<String> = serde_json::from_str(&s.share_partners).unwrap_or_default();
                        let restrictions: Vec<String> = serde_json::from_str(&s.restrictions).unwrap_or_default();
                        println!(
                            "  central record: {}; PKB: {}; partners: {}; restrictions: {}",
                            yes_no(s.share_cito),
                            yes_no(s.share_pkb),
                            if partners.is_empty() { "none".into() } else { partners.join(", ") },
                            if restrictions.is_empty() { "none".into() } else { restrictions.join(", ") }
                        );
                    }
                }
            }
            println!("History ({} statement(s), oldest first):", history.len());
            for s in &history {
                println!(
                    "  {}{} {:<9} {}/{} (central record {}, PKB {}, restrictions {}) recorded {}",
                    s.effective,
                    if s.first_seen { " (dated when first seen: the record gives no date)" } else { "" },
                    s.decision,
                    s.partner,
                    s.record_key,
                    yes_no(s.share_cito),
                    yes_no(s.share_pkb),
                    s.restrictions,
                    s.recorded_at.format("%Y-%m-%d %H:%M")
                );
            }
            let mut by_dest: BTreeMap<&str, Vec<String>> = BTreeMap::new();
            for e in &holdings {
                let v = e.version_id.as_deref().map(|v| format!(" v{v}")).unwrap_or_default();
                by_dest.entry(&e.destination).or_default().push(format!("{}{v}", e.key));
            }
            println!("What each destination holds:");
            if by_dest.is_empty() {
                println!("  nothing");
            }
            for (d, list) in by_dest {
                println!("  {d}: {} resource(s)", list.len());
                for r in list {
                    println!("    {r}");
                }
            }
            if !withheld.is_empty() {
                println!("Withheld (latest first, up to 10; `connector audit --person {person}` for all):");
                for a in withheld.iter().rev().take(10) {
                    println!(
                        "  {} {} {}/{}: {}",
                        a.at.format("%Y-%m-%d %H:%M"),
                        a.destination.as_deref().unwrap_or("-"),
                        a.resource_type.as_deref().unwrap_or("-"),
                        a.resource_id.as_deref().unwrap_or("-"),
                        a.reason.as_deref().unwrap_or("")
                    );
                }
            }
        }
    }
    Ok(0)
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn parse_since(s: &str) -> anyhow::Result<DateTime<Utc>> {
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc());
    }
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| anyhow::anyhow!("--since {s}: give a date (2024-03-01) or a time (2024-03-01T09:00:00Z)"))
}

pub async fn run_audit(config_path: &Path, mappings: &Path, args: AuditArgs) -> anyhow::Result<u8> {
    let (_config, catalog, store) = open(config_path, mappings).await?;
    let mut filter = AuditFilter {
        destination: args.destination.clone(),
        since: args.since.as_deref().map(parse_since).transpose()?,
        actions: args.action.clone(),
        limit: 5000,
        ..Default::default()
    };
    if let Some(p) = &args.person {
        match one_person(&store, &catalog, p).await? {
            Some(id) => {
                // The person, and each of their Patients (entries made before the person was linked).
                filter.persons = vec![id.clone()];
                filter.persons.extend(store.patients_of(&id).await?.into_iter().map(|(p, _)| p));
            }
            None => {
                eprintln!("No one known as {p}.");
                return Ok(EXIT_FOUND);
            }
        }
    }
    let mut first = true;
    if args.format == Format::Json {
        print!("[");
    }
    loop {
        let page: Vec<AuditEntry> = store.audit_list(&filter).await?;
        let Some(last) = page.last() else { break };
        filter.after_id = last.id;
        for e in &page {
            match args.format {
                Format::Json => {
                    print!("{}{}", if first { "\n  " } else { ",\n  " }, serde_json::to_string(e)?);
                }
                Format::Table => println!("{}", line(e)),
            }
            first = false;
        }
    }
    if args.format == Format::Json {
        println!("{}]", if first { "" } else { "\n" });
    } else if first {
        println!("No audit entries match.");
    }
    Ok(0)
}

fn line(e: &AuditEntry) -> String {
    let mut s = format!("{} {:<9}", e.at.format("%Y-%m-%dT%H:%M:%SZ"), e.action);
    if let Some(d) = &e.destination {
        s.push_str(&format!(" {d}"));
    }
    if let (Some(t), Some(i)) = (&e.resource_type, &e.resource_id) {
        s.push_str(&format!(" {t}/{i}"));
    }
    if let Some(v) = &e.version_id {
        s.push_str(&format!(" v{v}"));
    }
    if let Some(p) = &e.partner {
        s.push_str(&format!(" from {p}"));
    }
    if let Some(c) = &e.category {
        s.push_str(&format!(" [{c}]"));
    }
    if let Some(a) = &e.agreement {
        s.push_str(&format!(" agreement \"{a}\""));
    }
    if let Some(b) = &e.lawful_basis {
        s.push_str(&format!(" basis \"{b}\""));
    }
    if let Some(c) = &e.consent {
        s.push_str(&format!(" consent {c}"));
    }
    if let Some(r) = &e.reason {
        s.push_str(&format!(": {r}"));
    }
    if let Some(p) = &e.person {
        s.push_str(&format!(" (person {p})"));
    }
    s
}
