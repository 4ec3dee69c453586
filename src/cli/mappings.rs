//! `connector mappings check|test|preview|new`: load the mappings, run them on their fixtures and compare with
//! the expected FHIR, map a file and show the result, or start a partner's mapping from an export's header
//! (`new`, in `mappings_new.rs`).
//!
//! The mappings folder is `--mappings` (or `CONNECTOR_MAPPINGS`) when given, else the config's `[mappings] dir`
//! when `--config` (or `CONNECTOR_CONFIG`) is given, else `mappings`. Fixtures default to `tests/fixtures`
//! beside that folder, so the commands work from any working directory.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Subcommand;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{EXIT_FOUND, Format, print_json};
use crate::ingest::file_name;
use crate::mapping::{
    self, Catalog, CompileError, ConsentFacts, DateSource, Decision, Input, MappedResource, NoStatement, Partner,
    Quarantined, RecordKind, RunReport, Sink,
};
use crate::quarantine::{self, QuarantineFile};

#[derive(Debug, Subcommand)]
pub enum MappingsCommand {
    /// Load and compile every mapping file; report every problem with its file, line and key.
    Check {
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Run each partner's mappings on its fixtures and compare with the expected FHIR.
    ///
    /// A fixture named after a kind (`person.csv`) feeds that kind; any other file feeds every mapping whose
    /// `[source] files` patterns match its name, so one export holding several kinds (people and their consent
    /// answer) is one fixture, with one expected file per kind (`expected/<kind>.json`).
    Test {
        /// Only this partner.
        #[arg(long)]
        partner: Option<String>,
        /// Folder with one sub-folder of fixtures per partner [default: `tests/fixtures` beside the mappings
        /// folder].
        #[arg(long)]
        fixtures: Option<PathBuf>,
        /// Rewrite the expected files from the current output (review the diff before committing).
        #[arg(long)]
        update: bool,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Map export files and print the resources as NDJSON on stdout; quarantined rows are reported on stderr
    /// and kept in a quarantine file, and so is the consent statement each consent row makes (decision, its
    /// date and where the date comes from, destinations, restrictions). Exits 3 when any row was quarantined.
    Preview {
        #[arg(long)]
        partner: String,
        /// An export file; repeat to map several together (references between them then resolve).
        #[arg(long = "input", required = true)]
        inputs: Vec<PathBuf>,
        /// The record kind(s) of the inputs (`--kind person,consent` for an export holding both); by default
        /// taken from the file name (person.csv), or every mapping whose `[source] files` patterns match it.
        #[arg(long, value_delimiter = ',')]
        kind: Vec<String>,
        /// Where quarantined rows are kept (they contain personal data; the files are owner-only)
        /// [default: `$XDG_STATE_HOME/connector/preview-quarantine`, else `~/.local/state/...`, else a folder
        /// in the temporary directory; printed when rows are kept].
        #[arg(long)]
        quarantine_dir: Option<PathBuf>,
    },
    /// Start a mapping from an export: reads its header (CSV in UTF-8 or Windows-1252, the first sheet of an
    /// XLSX, JSON/NDJSON keys), binds the usual columns (client reference, names, date of birth, NHS number,
    /// address, postcode, phones, email, gender, consent Y/N) and leaves a `# TODO` for the rest. Writes
    /// `<mappings>/<partner>/<kind>.toml` (and `partner.toml` when the partner is new), a fixture with the
    /// header and one synthetic row, and the expected output, then checks the mappings load.
    New(super::mappings_new::NewArgs),
}

/// The mappings folder: `--mappings` when given, else the config's `[mappings] dir` when a config is given,
/// else `mappings` in the working directory.
pub fn mappings_dir(explicit: Option<&Path>, config: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(dir) = explicit {
        return Ok(dir.to_path_buf());
    }
    match config {
        Some(path) => {
            let config = crate::config::Config::load(path)
                .with_context(|| format!("reading {} for its [mappings] dir", path.display()))?;
            Ok(config.resolve(&config.mappings.dir))
        }
        None => Ok(PathBuf::from("mappings")),
    }
}

/// `tests/fixtures` beside the mappings folder.
pub(super) fn default_fixtures(mappings_dir: &Path) -> PathBuf {
    mappings_dir.parent().unwrap_or(Path::new("")).join("tests").join("fixtures")
}

/// Where `preview` keeps quarantined rows unless told: outside any working tree, as they hold personal data.
fn default_quarantine_dir() -> PathBuf {
    let state = std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").filter(|v| !v.is_empty()).map(|h| PathBuf::from(h).join(".local/state")));
    match state {
        Some(dir) if dir.is_absolute() => dir.join("connector").join("preview-quarantine"),
        _ => std::env::temp_dir().join("connector-preview-quarantine"),
    }
}

pub fn run(mappings_dir: &Path, cmd: MappingsCommand) -> anyhow::Result<u8> {
    if let MappingsCommand::New(args) = cmd {
        return super::mappings_new::run(mappings_dir, args);
    }
    let loaded = mapping::load_catalog(mappings_dir)
        .and_then(|c| hl7v2_messages(mappings_dir).map(|m| (c, m)).map_err(|e| vec![e]));
    let (catalog, hl7v2) = match loaded {
        Ok(c) => c,
        Err(errors) if matches!(cmd, MappingsCommand::Check { format: Format::Json }) => {
            print_json(&Checked {
                ok: false,
                partners: Vec::new(),
                hl7v2_messages: Vec::new(),
                problems: errors.iter().map(Problem::of).collect(),
            })?;
            return Ok(1);
        }
        Err(errors) => {
            for e in &errors {
                eprintln!("{e}");
            }
            bail!("{} problem(s) in the mappings under {}", errors.len(), mappings_dir.display());
        }
    };
    match cmd {
        MappingsCommand::Check { format: Format::Json } => {
            let partners = catalog.partners.values().map(PartnerMappings::of).collect();
            print_json(&Checked { ok: true, partners, hl7v2_messages: hl7v2, problems: Vec::new() })?;
            Ok(0)
        }
        MappingsCommand::Check { format: Format::Table } => {
            for p in catalog.partners.values() {
                let kinds: Vec<String> = p.mappings.values().map(|m| format!("{}@{}", m.kind, m.version)).collect();
                println!("{}: {} mapping(s): {}", p.id, p.mappings.len(), kinds.join(", "));
            }
            if !hl7v2.is_empty() {
                println!("{}: HL7 v2 messages for {}", mapping::compile::HL7V2_MESSAGES_FOLDER, hl7v2.join(", "));
            }
            println!("All mappings load.");
            Ok(0)
        }
        MappingsCommand::Test { partner, fixtures, update, format } => {
            let fixtures = fixtures.unwrap_or_else(|| default_fixtures(mappings_dir));
            let mut run = TestRun { format, report: TestReport::default() };
            test(&mut run, &catalog, partner.as_deref(), &fixtures, update)?;
            run.finish(update)
        }
        MappingsCommand::Preview { partner, inputs, kind, quarantine_dir } => {
            let qdir = quarantine_dir.unwrap_or_else(default_quarantine_dir);
            preview(&catalog, &partner, &inputs, &kind, &qdir)
        }
        MappingsCommand::New(_) => Ok(0),
    }
}

/// The resource types `<mappings>/hl7v2/` has HL7 v2 message definitions for (none without the folder).
fn hl7v2_messages(mappings_dir: &Path) -> Result<Vec<String>, CompileError> {
    let dir = mappings_dir.join(mapping::compile::HL7V2_MESSAGES_FOLDER);
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    match crate::deliver::hl7v2::MessageDefinition::load_dir(&dir) {
        Ok(defs) => Ok(defs.into_keys().collect()),
        Err(crate::deliver::hl7v2::DefinitionError::Invalid { path, message }) => {
            Err(CompileError::File { path: path.into(), message })
        }
        Err(e @ crate::deliver::hl7v2::DefinitionError::Read { .. }) => {
            Err(CompileError::File { path: dir, message: e.to_string() })
        }
    }
}

/// `check --format json`: every partner's mappings, or every problem that stopped them loading.
#[derive(Debug, Serialize)]
struct Checked<'a> {
    ok: bool,
    partners: Vec<PartnerMappings<'a>>,
    /// The resource types with an HL7 v2 message definition in `hl7v2/`.
    hl7v2_messages: Vec<String>,
    problems: Vec<Problem<'a>>,
}

#[derive(Debug, Serialize)]
struct PartnerMappings<'a> {
    partner: &'a str,
    mappings: Vec<MappingVersion<'a>>,
}

impl<'a> PartnerMappings<'a> {
    fn of(p: &'a Partner) -> Self {
        let mappings = p.mappings.values().map(|m| MappingVersion { kind: m.kind, version: &m.version }).collect();
        PartnerMappings { partner: &p.id, mappings }
    }
}

#[derive(Debug, Serialize)]
struct MappingVersion<'a> {
    kind: RecordKind,
    version: &'a str,
}

/// A mapping file that does not load: where, and what is wrong (line and key when the error has them).
#[derive(Debug, Serialize)]
struct Problem<'a> {
    file: &'a Path,
    line: Option<usize>,
    key: Option<&'a str>,
    message: &'a str,
}

impl<'a> Problem<'a> {
    fn of(e: &'a CompileError) -> Self {
        match e {
            CompileError::At { file, line, key, message } => {
                Problem { file, line: Some(*line), key: Some(key), message }
            }
            CompileError::File { path, message } => Problem { file: path, line: None, key: None, message },
        }
    }
}

/// `test --format json`: what passed and failed, with each difference.
#[derive(Debug, Default, Serialize)]
struct TestReport {
    passed: usize,
    failed: usize,
    /// One per expected file compared (`organization`, or a record kind), with the differences found.
    checked: Vec<TestCheck>,
    /// A partner without a fixture for some kind, or a fixture that could not be read at all.
    problems: Vec<TestProblem>,
    /// With `--update`: the expected files written.
    updated: Vec<PathBuf>,
}

#[derive(Debug, Serialize)]
struct TestCheck {
    partner: String,
    /// `organization` or a record kind: which expected file.
    expected: String,
    ok: bool,
    differences: Vec<String>,
}

#[derive(Debug, Serialize)]
struct TestProblem {
    partner: String,
    /// The fixture file, when the problem is one file.
    file: Option<PathBuf>,
    message: String,
}

/// A `mappings test` run: each result printed as it comes for a person, kept for one JSON document.
struct TestRun {
    format: Format,
    report: TestReport,
}

impl TestRun {
    fn table(&self) -> bool {
        self.format == Format::Table
    }

    fn problem(&mut self, partner: &str, file: Option<&Path>, message: String) {
        if self.table() {
            match file {
                Some(f) => println!("FAIL {partner} {}: {message}", f.display()),
                None => println!("FAIL {partner}: {message}"),
            }
        }
        self.report.failed += 1;
        self.report.problems.push(TestProblem {
            partner: partner.to_string(),
            file: file.map(Path::to_path_buf),
            message,
        });
    }

    fn checked(&mut self, partner: &str, expected: &str, mut differences: Vec<String>) {
        let label = format!("{partner}/{expected}");
        let ok = differences.is_empty();
        if self.table() {
            report_diffs(&label, &differences);
        }
        // As many as the table shows: a broken mapping can differ in every element of every row.
        if differences.len() > MAX_DIFFS {
            let more = differences.len() - MAX_DIFFS;
            differences.truncate(MAX_DIFFS);
            differences.push(format!("... and {more} more differences"));
        }
        if ok {
            self.report.passed += 1;
        } else {
            self.report.failed += 1;
        }
        self.report.checked.push(TestCheck {
            partner: partner.to_string(),
            expected: expected.to_string(),
            ok,
            differences,
        });
    }

    fn updated(&mut self, path: PathBuf, quiet: bool) {
        if self.table() && !quiet {
            println!("updated {}", path.display());
        }
        self.report.updated.push(path);
    }

    /// Prints the summary (or the JSON document); exit 1 when anything failed, except when updating.
    fn finish(self, update: bool) -> anyhow::Result<u8> {
        let r = &self.report;
        match self.format {
            Format::Json => print_json(r)?,
            Format::Table if update => {
                println!("Expected files written; review them with `git diff` before committing.")
            }
            Format::Table => println!("{} passed, {} failed", r.passed, r.failed),
        }
        Ok(if update || r.failed == 0 { 0 } else { 1 })
    }
}

fn partner<'a>(catalog: &'a Catalog, id: &str) -> anyhow::Result<&'a Partner> {
    catalog.partner(id).with_context(|| {
        format!(
            "no partner \"{id}\" in the mappings; known: {}",
            catalog.partners.keys().cloned().collect::<Vec<_>>().join(", ")
        )
    })
}

/// Which kinds a file holds: named on the command line, or from its name: a kind's name (`person.csv`) is
/// that kind; otherwise every mapping whose `[source] files` patterns match the name reads it.
fn kinds_of(partner: &Partner, path: &Path, explicit: &[String]) -> anyhow::Result<Vec<RecordKind>> {
    let known = || partner.mappings.keys().map(|k| k.as_str()).collect::<Vec<_>>().join(", ");
    if !explicit.is_empty() {
        return explicit
            .iter()
            .map(|k| {
                RecordKind::parse(k.trim())
                    .with_context(|| format!("--kind {k}: not a record kind; this partner maps: {}", known()))
            })
            .collect();
    }
    let matching = kinds_by_name(partner, path);
    if matching.is_empty() {
        bail!(
            "{}: cannot tell which record kind this file holds; pass --kind (one of: {}), or add its name to a mapping's [source] files",
            path.display(),
            known()
        );
    }
    Ok(matching)
}

/// The kinds a file feeds by its name: the kind it is named after, else those whose `files` patterns match.
fn kinds_by_name(partner: &Partner, path: &Path) -> Vec<RecordKind> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_lowercase();
    let stem = path.file_stem().and_then(|n| n.to_str()).unwrap_or_default().to_lowercase();
    if let Some(k) = RecordKind::parse(&stem) {
        return vec![k];
    }
    partner
        .mappings
        .values()
        .filter(|m| m.files.iter().any(|g| glob_match(&g.to_lowercase(), &name)))
        .map(|m| m.kind)
        .collect()
}

/// `*` matches any run of characters; everything else matches itself.
fn glob_match(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || !name[first.len()..].ends_with(last) || name.len() < first.len() + last.len() {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for p in &parts[1..parts.len() - 1] {
        match rest.find(p) {
            Some(i) => rest = &rest[i + p.len()..],
            None => return false,
        }
    }
    true
}

/// Prints counts to stderr: every run says what it read, mapped and quarantined (and, for consent, how many
/// rows stated nothing).
fn print_counts(report: &RunReport) {
    for f in &report.files {
        let kind = f.kind.map_or("?", |k| k.as_str());
        let none = if f.kind == Some(RecordKind::Consent) || f.no_statement > 0 {
            format!(", {} no statement", f.no_statement)
        } else {
            String::new()
        };
        match &f.error {
            Some(e) => eprintln!("{} {kind} {}: NOT MAPPED: {e}", report.partner, f.path.display()),
            None => eprintln!(
                "{} {kind} {}: {} read, {} mapped, {} quarantined{none}",
                report.partner,
                f.path.display(),
                f.read,
                f.mapped,
                f.quarantined
            ),
        }
    }
    let by_type: Vec<String> = report.resources.iter().map(|(t, n)| format!("{t} {n}")).collect();
    let none =
        if report.no_statement() > 0 { format!(", {} no statement", report.no_statement()) } else { String::new() };
    eprintln!(
        "Total: {} read, {} mapped, {} quarantined{none}. Resources: {}",
        report.read(),
        report.mapped(),
        report.quarantined(),
        by_type.join(", ")
    );
}

/// The consent statement a row makes, as the sharing rules will read it (no names or free text).
pub(super) fn describe_statement(f: &ConsentFacts) -> String {
    let decision = match (f.decision, &f.withdrawn) {
        (Decision::Withdrawn, Some(w)) => format!("withdrawn on {w}"),
        (d, _) => d.as_str().to_string(),
    };
    let date = match f.dated {
        DateSource::Export => format!("takes effect {} (date from the export)", f.effective),
        DateSource::FirstSeen => "dated when the connector first sees this answer (the export has no date)".into(),
    };
    let yes = |b: bool| if b { "yes" } else { "no" };
    let partners = if f.partners.is_empty() { "none".into() } else { f.partners.join(", ") };
    let restrictions = if f.restrictions.is_empty() {
        "none".to_string()
    } else {
        f.restrictions.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", ")
    };
    format!(
        "{decision}, {date}; central record (cito): {}, patient-held record (pkb): {}, partners: {partners}; restrictions: {restrictions}",
        yes(f.cito),
        yes(f.pkb)
    )
}

struct PreviewSink<W: Write> {
    out: W,
    quarantine: QuarantineFile,
}

impl<W: Write> Sink for PreviewSink<W> {
    fn resource(&mut self, r: &MappedResource<'_>) -> std::io::Result<()> {
        if let Some(f) = r.consent {
            eprintln!("CONSENT {}: row {} (key {}): {}", file_name(r.file), r.row, r.source_key, describe_statement(f));
        }
        self.out.write_all(r.json.as_bytes())?;
        self.out.write_all(b"\n")
    }
    fn quarantined(&mut self, q: &Quarantined) -> std::io::Result<()> {
        eprintln!("QUARANTINED {}", quarantine::describe(q));
        self.quarantine.write(q)
    }
    fn no_statement(&mut self, n: &NoStatement<'_>) -> std::io::Result<()> {
        let key = n.key.as_ref().map(|k| format!(" (key {k})")).unwrap_or_default();
        eprintln!(
            "NO STATEMENT {}: row {}{key}: {}: no consent statement is recorded and nothing is quarantined",
            file_name(n.file),
            n.row,
            n.why.as_str()
        );
        Ok(())
    }
}

fn preview(catalog: &Catalog, partner_id: &str, files: &[PathBuf], kind: &[String], qdir: &Path) -> anyhow::Result<u8> {
    let partner = partner(catalog, partner_id)?;
    let mut inputs = Vec::new();
    for p in files {
        for k in kinds_of(partner, p, kind)? {
            if !partner.mappings.contains_key(&k) {
                bail!("{}: partner \"{partner_id}\" has no {k} mapping", p.display());
            }
            inputs.push(Input { kind: k, path: p.clone() });
        }
    }
    let stdout = std::io::stdout();
    let mut sink =
        PreviewSink { out: std::io::BufWriter::new(stdout.lock()), quarantine: QuarantineFile::new(qdir, partner_id) };
    let report = mapping::run(partner, &inputs, &mut sink).context("writing the output")?;
    sink.out.flush()?;
    sink.quarantine.finish()?;
    print_counts(&report);
    if sink.quarantine.count > 0 {
        eprintln!("Quarantined rows kept in {} (contains personal data).", sink.quarantine.path().display());
    }
    Ok(if report.failed_files().next().is_some() {
        1
    } else if report.quarantined() > 0 {
        EXIT_FOUND
    } else {
        0
    })
}

/// The expected result of mapping one fixture file.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Expected {
    file: String,
    counts: Counts,
    resources: Vec<ExpectedResource>,
    quarantined: Vec<ExpectedQuarantine>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Default)]
struct Counts {
    read: u64,
    mapped: u64,
    quarantined: u64,
    /// Consent rows that stated nothing (blank or "not asked"); left out when none, as before it existed.
    #[serde(default, skip_serializing_if = "is_zero")]
    no_statement: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct ExpectedResource {
    row: u64,
    /// The mapping's resource name (`goal_2`), so a diff says which of a row's resources differs.
    name: String,
    /// The sensitivity category: it becomes privacy labels, so a wrong one must show in the test.
    category: crate::mapping::Category,
    resource: Value,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct ExpectedQuarantine {
    row: u64,
    reasons: Vec<String>,
}

#[derive(Default)]
pub(super) struct Collect {
    organization: Option<Value>,
    by_kind: BTreeMap<RecordKind, (Vec<ExpectedResource>, Vec<ExpectedQuarantine>)>,
}

impl Sink for Collect {
    fn resource(&mut self, r: &MappedResource<'_>) -> std::io::Result<()> {
        match r.kind {
            Some(k) => self.by_kind.entry(k).or_default().0.push(ExpectedResource {
                row: r.row,
                name: r.name.to_string(),
                category: r.category,
                resource: r.resource(),
            }),
            None => self.organization = Some(r.resource()),
        }
        Ok(())
    }
    fn quarantined(&mut self, q: &Quarantined) -> std::io::Result<()> {
        let reasons = q.reasons.iter().map(ToString::to_string).collect();
        self.by_kind.entry(q.kind).or_default().1.push(ExpectedQuarantine { row: q.row, reasons });
        Ok(())
    }
}

/// A partner's fixtures: each file feeds the kinds its name gives (see [`kinds_by_name`]), so one export
/// holding several kinds is one fixture.
pub(super) fn fixture_inputs(dir: &Path, partner: &Partner) -> anyhow::Result<Vec<Input>> {
    let mut inputs = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading fixtures in {}", dir.display()))? {
        let path = entry?.path();
        if !path.is_file() || path.extension().is_some_and(|e| e == "md") {
            continue;
        }
        for kind in kinds_by_name(partner, &path).into_iter().filter(|k| partner.mappings.contains_key(k)) {
            inputs.push(Input { kind, path: path.clone() });
        }
    }
    inputs.sort_by(|a, b| a.kind.cmp(&b.kind).then(a.path.cmp(&b.path)));
    Ok(inputs)
}

pub(super) fn write_json(path: &Path, value: &impl Serialize) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> anyhow::Result<Option<T>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(
            serde_json::from_str(&text).with_context(|| format!("{} is not a valid expected file", path.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn test(run: &mut TestRun, catalog: &Catalog, only: Option<&str>, fixtures: &Path, update: bool) -> anyhow::Result<()> {
    let partners: Vec<&Partner> = match only {
        Some(id) => vec![partner(catalog, id)?],
        None => catalog.partners.values().collect(),
    };
    for p in partners {
        let dir = fixtures.join(&p.id);
        let inputs = fixture_inputs(&dir, p)?;
        let untested: Vec<&str> =
            p.mappings.keys().filter(|k| !inputs.iter().any(|i| i.kind == **k)).map(|k| k.as_str()).collect();
        if !untested.is_empty() {
            run.problem(&p.id, None, format!("no fixture for {} in {}", untested.join(", "), dir.display()));
        }
        let mut got = Collect::default();
        let report = mapping::run(p, &inputs, &mut got)?;
        for f in report.failed_files() {
            run.problem(&p.id, Some(&f.path), f.error.clone().unwrap_or_default());
        }
        let expected_dir = dir.join("expected");
        let org_path = expected_dir.join("organization.json");
        let org = got.organization.take().unwrap_or_default();
        if update {
            write_json(&org_path, &org)?;
            run.updated(org_path, true);
        } else {
            let mut diffs = Vec::new();
            match read_json::<Value>(&org_path)? {
                Some(want) => diff_json("Organization", &want, &org, &mut diffs),
                None => diffs.push(format!("{} is missing; run with --update to create it", org_path.display())),
            }
            run.checked(&p.id, "organization", diffs);
        }
        for f in report.files.iter().filter(|f| f.error.is_none()) {
            let Some(kind) = f.kind else { continue };
            let (resources, quarantined) = got.by_kind.remove(&kind).unwrap_or_default();
            let now = Expected {
                file: file_name(&f.path),
                counts: Counts {
                    read: f.read,
                    mapped: f.mapped,
                    quarantined: f.quarantined,
                    no_statement: f.no_statement,
                },
                resources,
                quarantined,
            };
            let path = expected_dir.join(format!("{kind}.json"));
            if update {
                write_json(&path, &now)?;
                run.updated(path, false);
                continue;
            }
            let diffs = match read_json::<Expected>(&path)? {
                Some(want) => compare(&want, &now),
                None => vec![format!("{} is missing; run with --update to create it", path.display())],
            };
            run.checked(&p.id, kind.as_str(), diffs);
        }
    }
    Ok(())
}

/// Writes the expected output of one kind of a partner from its fixtures (and the Organization's, when missing),
/// as `test --update` would, leaving other kinds' files alone. Returns the files written.
pub(super) fn write_expected(
    p: &Partner,
    fixtures: &Path,
    kind: RecordKind,
    overwrite: bool,
) -> anyhow::Result<Vec<PathBuf>> {
    let dir = fixtures.join(&p.id);
    let inputs = fixture_inputs(&dir, p)?;
    let mut got = Collect::default();
    let report = mapping::run(p, &inputs, &mut got)?;
    if let Some(f) = report.failed_files().next() {
        bail!("{}: {}", f.path.display(), f.error.as_deref().unwrap_or_default());
    }
    let mut written = Vec::new();
    let expected_dir = dir.join("expected");
    let org_path = expected_dir.join("organization.json");
    if !org_path.exists() {
        write_json(&org_path, &got.organization.take().unwrap_or_default())?;
        written.push(org_path);
    }
    for f in report.files.iter().filter(|f| f.kind == Some(kind)) {
        let path = expected_dir.join(format!("{kind}.json"));
        if path.exists() && !overwrite {
            continue;
        }
        let (resources, quarantined) = got.by_kind.remove(&kind).unwrap_or_default();
        let now = Expected {
            file: file_name(&f.path),
            counts: Counts { read: f.read, mapped: f.mapped, quarantined: f.quarantined, no_statement: f.no_statement },
            resources,
            quarantined,
        };
        write_json(&path, &now)?;
        written.push(path);
    }
    Ok(written)
}

/// Differences shown for one expected file.
const MAX_DIFFS: usize = 50;

fn report_diffs(label: &str, diffs: &[String]) {
    if diffs.is_empty() {
        println!("ok   {label}");
        return;
    }
    println!("FAIL {label}");
    for d in diffs.iter().take(MAX_DIFFS) {
        println!("     {label} {d}");
    }
    if diffs.len() > MAX_DIFFS {
        println!("     ... and {} more differences", diffs.len() - MAX_DIFFS);
    }
}

fn compare(want: &Expected, got: &Expected) -> Vec<String> {
    let mut out = Vec::new();
    if want.counts != got.counts {
        out.push(format!(
            "counts: expected {} read / {} mapped / {} quarantined / {} no statement, got {} / {} / {} / {}",
            want.counts.read,
            want.counts.mapped,
            want.counts.quarantined,
            want.counts.no_statement,
            got.counts.read,
            got.counts.mapped,
            got.counts.quarantined,
            got.counts.no_statement
        ));
    }
    let label = |r: &ExpectedResource| {
        format!("{}/{}", r.resource["resourceType"].as_str().unwrap_or("?"), r.resource["id"].as_str().unwrap_or("?"))
    };
    let got_by: BTreeMap<String, &ExpectedResource> = got.resources.iter().map(|r| (label(r), r)).collect();
    let want_by: BTreeMap<String, &ExpectedResource> = want.resources.iter().map(|r| (label(r), r)).collect();
    for (id, w) in &want_by {
        let rt = w.resource["resourceType"].as_str().unwrap_or("?");
        match got_by.get(id) {
            Some(g) => {
                let at = format!("row {} {rt}", w.row);
                let at = if w.name.to_lowercase() == rt.to_lowercase() { at } else { format!("{at} ({})", w.name) };
                if w.category != g.category {
                    out.push(format!("{at}: category expected {:?}, got {:?}", w.category, g.category));
                }
                diff_json(&at, &w.resource, &g.resource, &mut out);
            }
            None => out.push(format!("row {} {rt}: expected {id}, but it was not produced", w.row)),
        }
    }
    for (id, g) in &got_by {
        if !want_by.contains_key(id) {
            out.push(format!("row {}: produced {id}, which is not expected", g.row));
        }
    }
    let qwant: BTreeMap<u64, &Vec<String>> = want.quarantined.iter().map(|q| (q.row, &q.reasons)).collect();
    let qgot: BTreeMap<u64, &Vec<String>> = got.quarantined.iter().map(|q| (q.row, &q.reasons)).collect();
    for (row, w) in &qwant {
        match qgot.get(row) {
            Some(g) if g == w => {}
            Some(g) => out.push(format!("row {row} quarantined: expected reasons {w:?}, got {g:?}")),
            None => out.push(format!("row {row}: expected to be quarantined ({}), but it was mapped", w.join("; "))),
        }
    }
    for (row, g) in &qgot {
        if !qwant.contains_key(row) {
            out.push(format!("row {row}: quarantined, which is not expected: {}", g.join("; ")));
        }
    }
    out
}

/// Lists the element paths where two JSON values differ, as `path: expected X, got Y`.
fn diff_json(path: &str, want: &Value, got: &Value, out: &mut Vec<String>) {
    match (want, got) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, av) in a {
                let p = format!("{path}.{k}");
                match b.get(k) {
                    Some(bv) => diff_json(&p, av, bv, out),
                    None => out.push(format!("{p}: expected {}, but it is missing", short(av))),
                }
            }
            for (k, bv) in b {
                if !a.contains_key(k) {
                    out.push(format!("{path}.{k}: not expected, got {}", short(bv)));
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (av, bv)) in a.iter().zip(b).enumerate() {
                diff_json(&format!("{path}[{i}]"), av, bv, out);
            }
            if a.len() != b.len() {
                out.push(format!("{path}: expected {} item(s), got {}", a.len(), b.len()));
            }
        }
        _ if want == got => {}
        _ => out.push(format!("{path}: expected {}, got {}", short(want), short(got))),
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 80 { format!("{}...", s.chars().take(77).collect::<String>()) } else { s }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a run gave, as text: each resource's JSON (and its value written back, to prove the two agree), each
    /// quarantined row's reasons.
    #[derive(Default)]
    struct Texts(Vec<String>);
    impl Sink for Texts {
        fn resource(&mut self, r: &MappedResource<'_>) -> std::io::Result<()> {
            assert_eq!(
                r.json,
                r.resource().to_string(),
                "{} row {} {}: text and value differ",
                r.file.display(),
                r.row,
                r.name
            );
            self.0.push(format!("{} row {} {}: {}", r.file.display(), r.row, r.name, r.json));
            Ok(())
        }
        fn quarantined(&mut self, q: &Quarantined) -> std::io::Result<()> {
            let reasons: Vec<String> = q.reasons.iter().map(ToString::to_string).collect();
            self.0.push(format!("{} row {} quarantined: {reasons:?}", q.file.display(), q.row));
            Ok(())
        }
    }

    /// Issue 15: templates compiled to write bytes give, for every fixture of every partner, byte for byte the
    /// text that building a `Value` and serialising it gave, and quarantine the same rows with the same reasons
    /// as checking every resource in full did.
    #[test]
    fn compiled_templates_match_the_value_path_on_every_fixture() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let catalog = crate::mapping::load_catalog(&root.join("mappings")).unwrap();
        let mut checked = 0;
        for (id, partner) in &catalog.partners {
            let inputs = fixture_inputs(&root.join("tests/fixtures").join(id), partner).unwrap();
            let mut runs = Vec::new();
            for reference in [false, true] {
                crate::mapping::REFERENCE_PATH.with(|r| r.set(reference));
                let mut texts = Texts::default();
                mapping::run(partner, &inputs, &mut texts).unwrap();
                runs.push(texts.0);
            }
            crate::mapping::REFERENCE_PATH.with(|r| r.set(false));
            assert_eq!(runs[0].len(), runs[1].len(), "{id}");
            for (compiled, reference) in runs[0].iter().zip(&runs[1]) {
                assert_eq!(compiled, reference, "{id}");
            }
            checked += runs[0].len();
        }
        assert!(checked > 100, "the fixtures were read: {checked}");
    }

    #[test]
    fn globs() {
        assert!(glob_match("*client*", "hub_clients_2026.csv"));
        assert!(glob_match("*.csv", "a.csv"));
        assert!(!glob_match("*client*", "contacts.csv"));
        assert!(glob_match("person.csv", "person.csv"));
    }

    #[test]
    fn diff_points_at_the_element() {
        let mut out = Vec::new();
        diff_json(
            "row 4 Patient",
            &serde_json::json!({"birthDate": "1987-04-03", "name": [{"given": ["Zoë"]}]}),
            &serde_json::json!({"birthDate": "1987-03-04", "name": [{"given": ["Zoe"]}]}),
            &mut out,
        );
        assert_eq!(
            out,
            [
                "row 4 Patient.birthDate: expected \"1987-04-03\", got \"1987-03-04\"",
                "row 4 Patient.name[0].given[0]: expected \"Zoë\", got \"Zoe\""
            ]
        );
    }
}
