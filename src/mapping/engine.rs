//! The mapping engine: streams a partner's exports through their compiled mappings, producing validated
//! resources and quarantining whatever cannot be mapped, with every reason. Rows read always equal rows
//! mapped plus rows quarantined.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::check::{Memo, Verdict};
use super::state::{FirstSeen, RefKey, RunState};
use super::template::{self, Slot};
use super::writer::RowData;
use super::{
    Category, ConsentFacts, ConsentSpec, Decision, Field, FieldSource, Mapping, Partner, RecordKind, ResourceSpec, ids,
};
use crate::ingest::limits::MAX_VALUE_CHARS;
use crate::ingest::{self, Header, Row, Values};
use crate::validate;

/// One export to map, with the kind of record it holds.
#[derive(Debug, Clone)]
pub struct Input {
    pub kind: RecordKind,
    pub path: PathBuf,
}

/// A resource the engine produced, with where it came from.
#[derive(Debug)]
pub struct MappedResource<'a> {
    pub partner: &'a str,
    pub kind: Option<RecordKind>,
    pub name: &'a str,
    pub resource_type: &'a str,
    pub id: &'a str,
    pub source_key: &'a str,
    pub file: &'a Path,
    pub row: u64,
    pub category: Category,
    /// The resource as JSON text: compact, object keys sorted, exactly what `serde_json` writes for
    /// [`resource`](Self::resource)'s value. What is sent and hashed can be taken from here as it is.
    pub json: &'a str,
    /// Builds the resource as a `Value` when a sink asks for one ([`MappedResource::resource`]).
    body: Body<'a>,
    /// Marked not-for-the-patient by the partner (safeguarding notes, third-party information).
    pub not_for_patient: bool,
    /// The consent statement the row makes (on the first resource of a consent mapping's row).
    pub consent: Option<&'a ConsentFacts>,
}

/// Where [`MappedResource::resource`] gets its value: one already built, or the row's values and template.
#[derive(Debug, Clone, Copy)]
enum Body<'a> {
    Value(&'a Value),
    Template {
        partner: &'a Partner,
        mapping: &'a Mapping,
        spec: &'a ResourceSpec,
        fields: &'a [Option<Value>],
        refs: &'a [Option<String>],
        key: &'a str,
    },
}

impl MappedResource<'_> {
    /// The resource as a JSON value, built on demand (the mapper itself writes [`json`](Self::json) without one).
    /// Equal to parsing `json`, without parsing's rounding of decimals.
    pub fn resource(&self) -> Value {
        match self.body {
            Body::Value(v) => v.clone(),
            Body::Template { partner, mapping, spec, fields, refs, key } => {
                build(partner, mapping, spec, fields, refs, key, self.id)
            }
        }
    }
}

/// Why a row was not mapped: the column and field concerned, when there is one, and what to do.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Reason {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub message: String,
}

impl Reason {
    fn row(message: impl Into<String>) -> Self {
        Self { column: None, field: None, message: message.into() }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.column, &self.field) {
            (Some(c), Some(field)) => write!(f, "column \"{c}\" (field {field}): {}", self.message),
            (None, Some(field)) => write!(f, "field {field}: {}", self.message),
            (Some(c), None) => write!(f, "column \"{c}\": {}", self.message),
            (None, None) => f.write_str(&self.message),
        }
    }
}

/// A row kept aside with every reason it could not be mapped, and its raw content so nothing is lost.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Quarantined {
    pub partner: String,
    pub kind: RecordKind,
    pub file: PathBuf,
    pub row: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// For a consent record: the `Patient/<id>` its person reference names, when the fields giving it could be
    /// read, so the person's sends can be held while the record is unreadable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub person: Option<String>,
    pub reasons: Vec<Reason>,
    pub raw: Value,
}

/// A consent row that states nothing: its decision is blank or one of the mapping's `not_asked` values. It
/// produces no resources and no consent statement, and is not quarantined: the person was not asked yet.
#[derive(Debug, Clone)]
pub struct NoStatement<'a> {
    pub partner: &'a str,
    pub kind: RecordKind,
    pub file: &'a Path,
    pub row: u64,
    /// The record's key, when its fields could be read.
    pub key: Option<String>,
    /// The `Patient/<id>` the row's person reference names, when the fields giving it could be read.
    pub person: Option<String>,
    pub why: NoStatementWhy,
}

/// Why a consent row states nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoStatementWhy {
    /// The decision cell is empty.
    Blank,
    /// The decision is one of the mapping's `not_asked` values.
    NotAsked,
}

impl NoStatementWhy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Blank => "blank answer",
            Self::NotAsked => "\"not asked\" answer",
        }
    }
}

/// Receives the engine's output as it streams.
pub trait Sink {
    fn resource(&mut self, r: &MappedResource<'_>) -> std::io::Result<()>;
    fn quarantined(&mut self, q: &Quarantined) -> std::io::Result<()>;
    /// A consent row that states nothing (counted in [`FileCounts::no_statement`]). Most sinks ignore it.
    fn no_statement(&mut self, _n: &NoStatement<'_>) -> std::io::Result<()> {
        Ok(())
    }
}

/// Counts for one input file.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct FileCounts {
    pub path: PathBuf,
    pub kind: Option<RecordKind>,
    pub read: u64,
    pub mapped: u64,
    pub quarantined: u64,
    /// Consent rows whose answer was blank or "not asked": neither mapped nor quarantined. Rows read equal
    /// mapped + quarantined + no_statement.
    pub no_statement: u64,
    /// Set when the file could not be read at all; none of its rows were mapped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What one run did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RunReport {
    pub partner: String,
    pub files: Vec<FileCounts>,
    pub resources: std::collections::BTreeMap<String, u64>,
}

impl RunReport {
    pub fn read(&self) -> u64 {
        self.files.iter().map(|f| f.read).sum()
    }
    pub fn mapped(&self) -> u64 {
        self.files.iter().map(|f| f.mapped).sum()
    }
    pub fn quarantined(&self) -> u64 {
        self.files.iter().map(|f| f.quarantined).sum()
    }
    /// Consent rows that stated nothing (blank or "not asked").
    pub fn no_statement(&self) -> u64 {
        self.files.iter().map(|f| f.no_statement).sum()
    }
    pub fn failed_files(&self) -> impl Iterator<Item = &FileCounts> {
        self.files.iter().filter(|f| f.error.is_some())
    }
}

/// Maps a partner's inputs. Inputs are taken in kind order (person first) so that references resolve.
pub fn run(partner: &Partner, inputs: &[Input], sink: &mut dyn Sink) -> std::io::Result<RunReport> {
    run_with_limit(partner, inputs, sink, None)
}

/// As `run`, refusing any input file larger than `max_bytes`.
pub fn run_with_limit(
    partner: &Partner,
    inputs: &[Input],
    sink: &mut dyn Sink,
    max_bytes: Option<u64>,
) -> std::io::Result<RunReport> {
    run_with_state(partner, inputs, sink, max_bytes, RunState::new(&std::env::temp_dir()))
}

/// As `run_with_limit`, remembering the run in `state` (tests make it spill early).
pub(crate) fn run_with_state(
    partner: &Partner,
    inputs: &[Input],
    sink: &mut dyn Sink,
    max_bytes: Option<u64>,
    mut state: RunState,
) -> std::io::Result<RunReport> {
    let mut report = RunReport { partner: partner.id.clone(), ..Default::default() };

    let org = organization(partner);
    let org_json = org.to_string();
    let org_ref = format!("Organization/{}", partner.organization_id);
    state.produced(RefKey::of(&org_ref))?;
    sink.resource(&MappedResource {
        partner: &partner.id,
        kind: None,
        name: "organization",
        resource_type: "Organization",
        id: &partner.organization_id,
        source_key: &partner.id,
        file: &partner.file,
        row: 0,
        category: Category::GeneralHealth,
        not_for_patient: false,
        consent: None,
        json: &org_json,
        body: Body::Value(&org),
    })?;
    *report.resources.entry("Organization".into()).or_default() += 1;

    let mut order: Vec<&Input> = inputs.iter().collect();
    order.sort_by_key(|i| i.kind);
    let paths: Vec<&Path> = order.iter().map(|i| i.path.as_path()).collect();
    for (file_index, input) in order.iter().enumerate() {
        let mut counts = FileCounts { path: input.path.clone(), kind: Some(input.kind), ..Default::default() };
        let Some(mapping) = partner.mappings.get(&input.kind) else {
            counts.error = Some(format!("partner \"{}\" has no mapping for kind \"{}\"", partner.id, input.kind));
            report.files.push(counts);
            continue;
        };
        if let Err(e) =
            map_file(partner, mapping, input, max_bytes, file_index, &paths, &mut state, &mut counts, &mut report, sink)
        {
            match e {
                FileError::Io(e) => return Err(e),
                FileError::Unreadable(msg) => counts.error = Some(msg),
            }
        }
        report.files.push(counts);
    }
    Ok(report)
}

enum FileError {
    Io(std::io::Error),
    Unreadable(String),
}

impl From<std::io::Error> for FileError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

/// Where each field's columns sit in a tabular file.
type Binding = Vec<Vec<Option<usize>>>;

fn bind(mapping: &Mapping, header: &Header, path: &Path) -> Result<Binding, String> {
    let mut binding = Vec::with_capacity(mapping.fields.len());
    let mut missing = Vec::new();
    for f in &mapping.fields {
        let cols: &[String] = match &f.source {
            FieldSource::Columns(c) | FieldSource::Join(c) => c,
            _ => &[],
        };
        let found: Vec<Option<usize>> = cols.iter().map(|c| header.position(c)).collect();
        if f.required && !cols.is_empty() && found.iter().all(Option::is_none) {
            missing.push(format!("\"{}\" (fields.{})", cols.join("\" or \""), f.name));
        }
        binding.push(found);
    }
    if missing.is_empty() {
        return Ok(binding);
    }
    // The header's own cells are never quoted: when the header row is missing they are the first person's record.
    // What to do comes first, so the cap on message length never cuts it.
    let hint = if header.names.iter().any(|n| ingest::looks_like_data(n)) {
        "the first row looks like data, not column names: the header row is probably missing; re-export with the \
         column names on row 1. "
    } else {
        ""
    };
    Err(ingest::cap_message(format!(
        "{}: {hint}Required column(s) not in the header: {} (mapping {})",
        path.display(),
        missing.join(", "),
        mapping.file.display(),
    )))
}

#[allow(clippy::too_many_arguments)]
fn map_file(
    partner: &Partner,
    mapping: &Mapping,
    input: &Input,
    max_bytes: Option<u64>,
    file_index: usize,
    paths: &[&Path],
    state: &mut RunState,
    counts: &mut FileCounts,
    report: &mut RunReport,
    sink: &mut dyn Sink,
) -> Result<(), FileError> {
    let mut read = ingest::ReadOptions { max_bytes, ..mapping.read.clone() };
    // A JSON mapping reads a `.ndjson`/`.jsonl` file as its records one per line (a partner API's pages are
    // spooled that way, the records already taken out of their pages).
    if read.format == Some(ingest::Format::Json)
        && ingest::Format::from_path(&input.path) == Some(ingest::Format::Ndjson)
    {
        read.format = Some(ingest::Format::Ndjson);
    }
    let rows =
        ingest::open(&input.path, &read).map_err(|e| FileError::Unreadable(ingest::cap_message(e.to_string())))?;
    let header = rows.header.clone();
    let binding = match &header {
        Some(h) => Some(bind(mapping, h, &input.path).map_err(FileError::Unreadable)?),
        None => None,
    };
    // What the per-row checks remember for each template (see check.rs), and the row's resources as text.
    let mut memos: Vec<Memo> = mapping.resources.iter().map(|_| Memo::default()).collect();
    let mut buf = String::new();
    for row in rows {
        let row = row.map_err(|e| FileError::Unreadable(ingest::cap_message(e.to_string())))?;
        counts.read += 1;
        buf.clear();
        let cx = RowCx { header: header.as_deref(), binding: binding.as_ref(), paths };
        match map_row(partner, mapping, &row, &cx, state, &mut memos, &mut buf)? {
            Ok(RowResult::NoStatement(why)) => {
                let spec = mapping.consent.as_ref();
                sink.no_statement(&NoStatement {
                    partner: &partner.id,
                    kind: mapping.kind,
                    file: &input.path,
                    row: row.number,
                    key: own_key(mapping, &row, binding.as_ref()),
                    person: spec.and_then(|spec| consent_person(partner, mapping, spec, &row, binding.as_ref())),
                    why,
                })?;
                counts.no_statement += 1;
            }
            Ok(RowResult::Mapped(out)) => {
                for (n, made) in out.resources.iter().enumerate() {
                    let spec = &mapping.resources[made.spec];
                    let id = &made.id;
                    let body = match &made.value {
                        Some(v) => Body::Value(v),
                        None => Body::Template {
                            partner,
                            mapping,
                            spec,
                            fields: &out.fields,
                            refs: &out.refs,
                            key: &out.key,
                        },
                    };
                    sink.resource(&MappedResource {
                        partner: &partner.id,
                        kind: Some(mapping.kind),
                        name: &spec.name,
                        resource_type: &spec.resource_type,
                        id,
                        source_key: &out.key,
                        file: &input.path,
                        row: row.number,
                        category: spec.category,
                        json: &buf[made.text.clone()],
                        body,
                        not_for_patient: out.not_for_patient,
                        consent: if n == 0 { out.consent.as_ref() } else { None },
                    })?;
                    *report.resources.entry(spec.resource_type.clone()).or_default() += 1;
                }
                counts.mapped += 1;
            }
            Err((key, reasons)) => {
                // Remember what this row would have produced, so rows that refer to it can say why it is missing.
                if let Some(k) = &key {
                    for spec in &mapping.resources {
                        let id = ids::resource_id(&partner.id, mapping.kind.as_str(), &spec.name, k);
                        let reference = RefKey::of(&format!("{}/{id}", spec.resource_type));
                        state.withhold(reference, file_index, row.number)?;
                    }
                }
                let person = mapping
                    .consent
                    .as_ref()
                    .and_then(|spec| consent_person(partner, mapping, spec, &row, binding.as_ref()));
                sink.quarantined(&Quarantined {
                    partner: partner.id.clone(),
                    kind: mapping.kind,
                    file: input.path.clone(),
                    row: row.number,
                    key,
                    person,
                    reasons,
                    raw: row.raw_json(header.as_deref()),
                })?;
                counts.quarantined += 1;
            }
        }
    }
    Ok(())
}

// Returned once per row and matched at once, never stored: boxing the large variant would allocate per row.
#[allow(clippy::large_enum_variant)]
enum RowResult {
    Mapped(RowOut),
    NoStatement(NoStatementWhy),
}

struct RowOut {
    key: String,
    resources: Vec<Made>,
    not_for_patient: bool,
    consent: Option<ConsentFacts>,
    /// The row's field values and reference targets, for building a resource's `Value` on demand.
    fields: Vec<Option<Value>>,
    refs: Vec<Option<String>>,
}

/// One resource of a row.
struct Made {
    spec: usize,
    id: String,
    /// Where its text is in the row's buffer.
    text: std::ops::Range<usize>,
    /// Its value, when the row needed it built (a full check, or a template the writer does not handle).
    value: Option<Value>,
}

/// What stays the same for every row of a file.
struct RowCx<'a> {
    header: Option<&'a Header>,
    binding: Option<&'a Binding>,
    paths: &'a [&'a Path],
}

/// The resource as the template and the engine's finishing step build it: the reference the writer's output
/// equals byte for byte, and what the full check reads.
fn build(
    partner: &Partner,
    mapping: &Mapping,
    spec: &ResourceSpec,
    fields: &[Option<Value>],
    refs: &[Option<String>],
    key: &str,
    id: &str,
) -> Value {
    let vals = RowValues { partner, fields, refs, key, resource_id: id };
    let body = template::eval(&spec.template, &vals).unwrap_or(Value::Object(Map::new()));
    finish(body, &spec.resource_type, id, &mapping.meta_source)
}

#[cfg(test)]
thread_local! {
    /// Test-only: build every resource as a `Value` and check it in full, as before templates were compiled, so
    /// tests can compare the two ways byte for byte.
    pub(crate) static REFERENCE_PATH: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn reference_path() -> bool {
    #[cfg(test)]
    return REFERENCE_PATH.with(std::cell::Cell::get);
    #[cfg(not(test))]
    false
}

/// The row's values, as templates see them.
struct RowValues<'a> {
    partner: &'a Partner,
    fields: &'a [Option<Value>],
    refs: &'a [Option<String>],
    key: &'a str,
    resource_id: &'a str,
}

impl template::Values for RowValues<'_> {
    fn value(&self, slot: Slot) -> Option<Value> {
        match slot {
            Slot::Field(i) => self.fields[i].clone(),
            Slot::Ref(i) => self.refs[i].clone().map(Value::String),
            Slot::PartnerId => Some(Value::String(self.partner.id.clone())),
            Slot::PartnerOrg => Some(Value::String(format!("Organization/{}", self.partner.organization_id))),
            Slot::PartnerIdentifierSystem => Some(Value::String(self.partner.identifier_system.clone())),
            Slot::RecordKey => Some(Value::String(self.key.to_string())),
            Slot::ResourceId => Some(Value::String(self.resource_id.to_string())),
        }
    }
}

fn key_string(values: &[Option<Value>], fields: &[usize]) -> Option<String> {
    let mut parts = Vec::with_capacity(fields.len());
    for &f in fields {
        parts.push(match values[f].as_ref()? {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        });
    }
    Some(parts.join("|"))
}

type RowFailure = (Option<String>, Vec<Reason>);

/// Maps one row, or says why it cannot be; fails only when the run's memory cannot be read or written.
fn map_row(
    partner: &Partner,
    mapping: &Mapping,
    row: &Row,
    cx: &RowCx<'_>,
    state: &mut RunState,
    memos: &mut [Memo],
    buf: &mut String,
) -> std::io::Result<Result<RowResult, RowFailure>> {
    let (header, binding, paths) = (cx.header, cx.binding, cx.paths);
    let mut reasons = Vec::new();
    if let Values::Unreadable { reason, .. } = &row.values {
        return Ok(Err((
            None,
            vec![Reason::row(ingest::cap_message(with_action(
                format!("the reader could not make a record of this row: {reason}"),
                "fix the record at the source and re-send it",
            )))],
        )));
    }
    if let Values::Untrusted { reason, .. } = &row.values {
        // Never mapped; the key is read only so that the quarantined record names its person.
        let reason = with_action(reason.clone(), "fix the row at the source and re-export");
        return Ok(Err((own_key(mapping, row, binding), vec![Reason::row(ingest::cap_message(reason))])));
    }
    if row.extra_cells > 0 {
        let width = header.map_or(0, |h| h.names.len());
        reasons.push(Reason::row(format!(
            "the row has {} more cell(s) than the header's {width} columns: probably a value with an unquoted delimiter (a comma in an address?); quote it in the export or fix the row",
            row.extra_cells
        )));
    } else if let Some(spec) = &mapping.consent
        && let Some(why) = no_statement(spec, mapping, row, binding)
    {
        return Ok(Ok(RowResult::NoStatement(why)));
    }

    // Fields: source fields first, computed sums after.
    let mut values: Vec<Option<Value>> = vec![None; mapping.fields.len()];
    for pass_sums in [false, true] {
        for (i, f) in mapping.fields.iter().enumerate() {
            if matches!(f.source, FieldSource::Sum(_)) != pass_sums {
                continue;
            }
            match field_value(&mapping.file, f, i, row, binding, &values) {
                Ok(v) => values[i] = v,
                Err(r) => reasons.push(r),
            }
        }
    }
    let key = key_string(&values, &mapping.key);
    if key.is_none() {
        for &k in &mapping.key {
            let f = &mapping.fields[k];
            if values[k].is_none() && !f.required {
                reasons.push(Reason {
                    column: first_column(f),
                    field: Some(f.name.clone()),
                    message: "empty, but it is part of the record's key: every record needs its identifier; fill it in at the source and re-export".into(),
                });
            }
        }
    }
    let key = match key {
        Some(k) if reasons.is_empty() => k,
        other => return Ok(Err((other, reasons))),
    };
    // Not for the patient unless the partner said it is: a missing answer keeps it from the patient-held record.
    let not_for_patient = mapping.patient_visible.is_some_and(|f| values[f] != Some(Value::Bool(true)));

    // Duplicates within this run.
    let full = row.raw_hash();
    let raw_hash = u64::from_le_bytes([full[0], full[1], full[2], full[3], full[4], full[5], full[6], full[7]]);
    if let Some(FirstSeen { row: first_row, content: first_hash }) = state.seen(mapping.kind, &key)? {
        let message = if first_hash == raw_hash {
            format!("duplicate of row {first_row} (identical content); nothing to do unless the export itself is wrong")
        } else {
            format!(
                "another row ({first_row}) has the same key with different content: the export holds two versions of one record; keep the right one and re-export"
            )
        };
        return Ok(Err((Some(key), vec![Reason::row(message)])));
    }

    // References this row makes.
    let ref_targets: Vec<Option<String>> = mapping
        .refs
        .iter()
        .map(|r| {
            let k = key_string(&values, &r.key)?;
            if let Some(s) = r.sibling {
                let spec = &mapping.resources[s];
                if spec.when.is_some_and(|w| values[w].is_none()) {
                    return None;
                }
            }
            Some(format!("{}/{}", r.resource_type, ids::resource_id(&partner.id, r.kind.as_str(), &r.resource, &k)))
        })
        .collect();

    let mut resources: Vec<Made> = Vec::new();
    let mut produced = Vec::new();
    // The references the resources may hold, and whether a value holds an object (whose references only a
    // walk of the built resource finds).
    let mut ref_keys: Vec<RefKey> = Vec::new();
    let mut walk_refs = false;
    let problems_of = |spec: &ResourceSpec, problems: Vec<String>, reasons: &mut Vec<Reason>| {
        for problem in problems {
            reasons.push(Reason::row(with_action(
                format!("{} ({}): {problem}", spec.resource_type, spec.name),
                &format!("check the fields and value maps that build it in {}", mapping.file.display()),
            )));
        }
    };
    for (si, spec) in mapping.resources.iter().enumerate() {
        if spec.when.is_some_and(|w| values[w].is_none()) {
            continue;
        }
        let id = ids::resource_id(&partner.id, mapping.kind.as_str(), &spec.name, &key);
        let start = buf.len();
        let value = match spec.compiled.as_ref().filter(|_| !reference_path()) {
            Some(compiled) => {
                let data = RowData { fields: &values, refs: &ref_targets, key: &key, id: &id };
                let memo = &mut memos[si];
                let verdict = memo.write(compiled, &data, buf);
                ref_keys.extend(memo.refs.iter().cloned());
                walk_refs |= memo.walk_refs;
                match verdict {
                    Verdict::Passes => None,
                    Verdict::CheckInFull => {
                        let v = build(partner, mapping, spec, &values, &ref_targets, &key, &id);
                        let problems = validate::resource(&spec.resource_type, &v);
                        memos[si].record(problems.is_empty());
                        problems_of(spec, problems, &mut reasons);
                        Some(v)
                    }
                }
            }
            None => {
                let v = build(partner, mapping, spec, &values, &ref_targets, &key, &id);
                problems_of(spec, validate::resource(&spec.resource_type, &v), &mut reasons);
                buf.push_str(&v.to_string());
                walk_refs = true;
                Some(v)
            }
        };
        produced.push(format!("{}/{id}", spec.resource_type));
        resources.push(Made { spec: si, id, text: start..buf.len(), value });
    }

    // Every reference must point at something this run produced (this row's own resources included). The
    // references the templates can make are known; when one does not resolve (or a value held an object), the
    // resources are walked as before, for the reasons.
    let own: Vec<RefKey> = produced.iter().map(|p| RefKey::of(p)).collect();
    let mut resolved = !walk_refs;
    for r in &ref_keys {
        if !resolved {
            break;
        }
        resolved = own.contains(r) || state.known(r)?;
    }
    let mut failed: Option<std::io::Error> = None;
    for made in resources.iter_mut().filter(|_| !resolved) {
        let spec = &mapping.resources[made.spec];
        let resource =
            made.value.get_or_insert_with(|| build(partner, mapping, spec, &values, &ref_targets, &key, &made.id));
        validate::each_reference(resource, &mut |path, reference| {
            let r = RefKey::of(reference);
            if failed.is_some() || own.contains(&r) {
                return;
            }
            let found = state.known(&r).and_then(|known| if known { Ok(None) } else { state.withheld(&r).map(Some) });
            let withheld = match found {
                Ok(None) => return,
                Ok(Some(w)) => w,
                Err(e) => {
                    failed = Some(e);
                    return;
                }
            };
            let named = mapping.refs.iter().zip(&ref_targets).find(|(_, t)| t.as_deref() == Some(reference));
            let target = match named {
                Some((r, _)) => format!(
                    "refs.{} points at the {} record with key \"{}\"",
                    r.name,
                    r.kind,
                    key_string(&values, &r.key).unwrap_or_default()
                ),
                None => format!("{path} points at {reference}"),
            };
            let why = match withheld {
                Some((file, row)) => {
                    let name = paths[file]
                        .file_name()
                        .map_or_else(|| paths[file].display().to_string(), |n| n.to_string_lossy().into_owned());
                    format!("which was quarantined ({name} row {row}); fix that row first")
                }
                None => "which is not in this run's output; include that export, or check the key".to_string(),
            };
            reasons.push(Reason::row(format!("{target}, {why}")));
        });
    }
    if let Some(e) = failed {
        return Err(e);
    }
    let consent = match &mapping.consent {
        Some(spec) => match consent_facts(spec, mapping, &values, &ref_targets) {
            Ok(f) => Some(f),
            Err(r) => {
                reasons.extend(r);
                None
            }
        },
        None => None,
    };
    if !reasons.is_empty() {
        return Ok(Err((Some(key), reasons)));
    }
    for r in own {
        state.produced(r)?;
    }
    state.see(mapping.kind, &key, FirstSeen { row: row.number, content: raw_hash })?;
    Ok(Ok(RowResult::Mapped(RowOut { key, resources, not_for_patient, consent, fields: values, refs: ref_targets })))
}

/// The row's key, from the key fields read on their own (for rows that are not mapped).
fn own_key(mapping: &Mapping, row: &Row, binding: Option<&Binding>) -> Option<String> {
    let mut values: Vec<Option<Value>> = vec![None; mapping.fields.len()];
    for &k in &mapping.key {
        values[k] = field_value(&mapping.file, &mapping.fields[k], k, row, binding, &values).ok().flatten();
    }
    key_string(&values, &mapping.key)
}

/// Whether a consent row states nothing: its decision cell is blank (and the field has no `default`), or its
/// text is one of the mapping's `not_asked` values. The raw cell is read, before transforms and value maps, so a
/// blank answer is never mistaken for a refusal. A cell that cannot be read is not "no statement": the row
/// goes on to be quarantined with the reason.
fn no_statement(spec: &ConsentSpec, mapping: &Mapping, row: &Row, binding: Option<&Binding>) -> Option<NoStatementWhy> {
    let f = &mapping.fields[spec.decision];
    let cols = match &f.source {
        FieldSource::Columns(c) | FieldSource::Join(c) => c,
        FieldSource::Sum(_) | FieldSource::Const(_) => return None,
    };
    let mut first = None;
    for (ci, c) in cols.iter().enumerate() {
        match cell(row, binding.map(|b| b[spec.decision][ci]), c) {
            Ok(Some(v)) => {
                first = Some(v);
                break;
            }
            Ok(None) => {}
            Err(_) => return None,
        }
    }
    match first {
        None if f.default.is_none() => Some(NoStatementWhy::Blank),
        None => None,
        Some(v) => {
            let text = match v {
                Value::String(s) => s,
                other => other.to_string(),
            };
            spec.not_asked.contains(&super::compile::fold(&text)).then_some(NoStatementWhy::NotAsked)
        }
    }
}

/// The Patient an unmappable consent row is about, from the fields its person reference is keyed by (read on
/// their own, so a bad date or decision elsewhere in the row does not hide who the record is about).
fn consent_person(
    partner: &Partner,
    mapping: &Mapping,
    spec: &ConsentSpec,
    row: &Row,
    binding: Option<&Binding>,
) -> Option<String> {
    let r = mapping.refs.get(spec.person_ref)?;
    let mut values: Vec<Option<Value>> = vec![None; mapping.fields.len()];
    for &k in &r.key {
        values[k] = field_value(&mapping.file, &mapping.fields[k], k, row, binding, &values).ok().flatten();
    }
    let key = key_string(&values, &r.key)?;
    Some(format!("{}/{}", r.resource_type, ids::resource_id(&partner.id, r.kind.as_str(), &r.resource, &key)))
}

/// How far ahead of today a consent date may be before the record is refused as a typo (2033 for 2023).
const CONSENT_DAYS_AHEAD: i64 = 7;

/// Checks a consent date: a date (after the field's transforms), and not more than [`CONSENT_DAYS_AHEAD`] days
/// ahead of today. Dates ahead by less are read, and stay pending until their day (see the policy).
fn check_consent_date(value: &str, today: chrono::NaiveDate) -> Result<(), String> {
    let date = value
        .get(..10)
        .and_then(|d| chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
        .ok_or_else(|| "not a date the connector can read (YYYY-MM-DD after the field's transforms, e.g. uk_date); correct the consent record's date or the mapping".to_string())?;
    if date > today + chrono::Days::new(CONSENT_DAYS_AHEAD.unsigned_abs()) {
        return Err(format!(
            "date is in the future (more than {CONSENT_DAYS_AHEAD} days ahead); correct the consent record's date"
        ));
    }
    Ok(())
}

/// The consent statement a row makes, from the fields the mapping's `[consent]` section names.
fn consent_facts(
    spec: &ConsentSpec,
    mapping: &Mapping,
    values: &[Option<Value>],
    refs: &[Option<String>],
) -> Result<ConsentFacts, Vec<Reason>> {
    let mut reasons = Vec::new();
    let field_reason = |i: usize, message: String| Reason {
        column: first_column(&mapping.fields[i]),
        field: Some(mapping.fields[i].name.clone()),
        message,
    };
    let text = |i: usize| match &values[i] {
        Some(Value::String(s)) => Some(s.trim().to_string()).filter(|s| !s.is_empty()),
        Some(other) => Some(other.to_string()),
        None => None,
    };
    let decision = match text(spec.decision) {
        Some(d) => match Decision::parse(&d) {
            Some(d) => Some(d),
            None => {
                reasons.push(field_reason(
                    spec.decision,
                    format!(
                        "not a consent decision; map the partner's wording to given, declined or withdrawn in the field's value map, or list it in [consent] not_asked, in {}",
                        mapping.file.display()
                    ),
                ));
                None
            }
        },
        None => {
            reasons.push(field_reason(
                spec.decision,
                "empty after the field's transforms; a consent record must say what was decided: fill it in at the source".into(),
            ));
            None
        }
    };
    let given = spec.date.and_then(text);
    if let Some(date) = spec.date
        && given.is_none()
    {
        reasons.push(field_reason(
            date,
            format!(
                "empty; a consent record must say when it was decided: fill it in at the source, or, if the export never has this date, set date_source = \"first_seen\" in [consent] of {}",
                mapping.file.display()
            ),
        ));
    }
    let withdrawn = spec.withdrawn.and_then(text);
    let today = chrono::Utc::now().with_timezone(&chrono_tz::Europe::London).date_naive();
    for (field, value) in [(spec.date, &given), (spec.withdrawn, &withdrawn)] {
        if let (Some(f), Some(v)) = (field, value)
            && let Err(why) = check_consent_date(v, today)
        {
            reasons.push(field_reason(f, why));
        }
    }
    let flag = |f: Option<usize>| f.is_some_and(|i| values[i] == Some(Value::Bool(true)));
    let mut partners = Vec::new();
    for &f in &spec.partners {
        if let Some(t) = text(f) {
            partners.extend(t.split([';', ',']).map(str::trim).filter(|p| !p.is_empty()).map(String::from));
        }
    }
    let mut restrictions = Vec::new();
    if let Some(f) = spec.restrictions
        && let Some(t) = text(f)
    {
        for part in t.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            match spec.restriction_codes.get(&part.to_lowercase()) {
                Some(r) => restrictions.push(*r),
                None => reasons.push(field_reason(
                    f,
                    format!(
                        "restriction text not recognised (part {} of the cell); add it to [consent.restriction_codes] in {} so it is honoured",
                        restrictions.len() + 1,
                        mapping.file.display()
                    ),
                )),
            }
        }
    }
    restrictions.sort();
    restrictions.dedup();
    let patient = refs[spec.person_ref].clone();
    if patient.is_none() {
        reasons.push(Reason::row(
            "the consent record does not name its person; fill in the fields its person reference is keyed by at the source",
        ));
    }
    if !reasons.is_empty() {
        return Err(reasons);
    }
    let (decision, given, patient) =
        (decision.unwrap_or(Decision::Declined), given.unwrap_or_default(), patient.unwrap_or_default());
    let effective = match (decision, &withdrawn) {
        (Decision::Withdrawn, Some(w)) => w.clone(),
        _ => given.clone(),
    };
    Ok(ConsentFacts {
        patient,
        decision,
        effective,
        given,
        withdrawn,
        cito: flag(spec.cito),
        pkb: flag(spec.pkb),
        partners,
        restrictions,
        dated: spec.dated,
    })
}

fn first_column(f: &Field) -> Option<String> {
    match &f.source {
        FieldSource::Columns(c) | FieldSource::Join(c) => c.first().cloned(),
        _ => None,
    }
}

/// Imperative verbs a quarantine reason's last clause starts with: every reason ends saying what to do.
const ACTIONS: &[&str] = &[
    "add",
    "ask",
    "check",
    "close",
    "correct",
    "drop",
    "fill",
    "fix",
    "give",
    "include",
    "keep",
    "leave",
    "list",
    "map",
    "nothing",
    "point",
    "quote",
    "re-export",
    "re-send",
    "remove",
    "shorten",
    "tell",
    "use",
];

/// Whether a reason ends with what to do: its last `; ` clause starts with one of [`ACTIONS`].
pub(crate) fn says_what_to_do(message: &str) -> bool {
    message.rsplit_once("; ").is_some_and(|(_, last)| {
        last.split_whitespace().next().is_some_and(|w| ACTIONS.contains(&w.to_lowercase().as_str()))
    })
}

/// A message from elsewhere (the reader, the FHIR check) with `action` added when it does not say what to do.
fn with_action(message: String, action: &str) -> String {
    if says_what_to_do(&message) { message } else { format!("{message}; {action}") }
}

/// The longest value a field may hold, in characters, when its transforms set no tighter limit: longer than any
/// name, address line or code, and short enough that no resource carries a swallowed record or a pasted document.
pub const MAX_FIELD_CHARS: usize = 1000;

/// Reads, cleans and checks one field of a row.
fn field_value(
    file: &Path,
    f: &Field,
    index: usize,
    row: &Row,
    binding: Option<&Binding>,
    values: &[Option<Value>],
) -> Result<Option<Value>, Reason> {
    let fail = |column: Option<String>, message: String| Reason { column, field: Some(f.name.clone()), message };
    let (column, raw): (Option<String>, Option<Value>) = match &f.source {
        FieldSource::Const(v) => (None, Some(v.clone())),
        FieldSource::Sum(parts) => {
            let mut total = 0i64;
            let mut all = true;
            for &p in parts {
                match values[p].as_ref().and_then(Value::as_i64) {
                    Some(n) => total += n,
                    None => all = false,
                }
            }
            (None, all.then(|| Value::from(total)))
        }
        FieldSource::Columns(cols) => {
            let mut found = (cols.first().cloned(), None);
            for (ci, c) in cols.iter().enumerate() {
                let v = cell(row, binding.map(|b| b[index][ci]), c).map_err(|m| fail(Some(c.clone()), m))?;
                if v.is_some() {
                    found = (Some(c.clone()), v);
                    break;
                }
            }
            found
        }
        FieldSource::Join(cols) => {
            let mut parts = Vec::new();
            for (ci, c) in cols.iter().enumerate() {
                if let Some(v) = cell(row, binding.map(|b| b[index][ci]), c).map_err(|m| fail(Some(c.clone()), m))? {
                    parts.push(match v {
                        Value::String(s) => s,
                        other => other.to_string(),
                    });
                }
            }
            (Some(cols.join(" + ")), (!parts.is_empty()).then(|| Value::String(parts.join(" "))))
        }
    };
    let Some(mut v) = raw else {
        return match &f.default {
            Some(d) => Ok(Some(d.clone())),
            None if f.required => {
                Err(fail(column, "required, but empty; fill it in at the source and re-export".into()))
            }
            None => Ok(None),
        };
    };
    // Length limits before any parsing: tight where the transform knows the shape, a global cap otherwise.
    if let Value::String(s) = &v {
        let limit = f.transforms.iter().filter_map(|t| t.max_chars()).min().unwrap_or(MAX_FIELD_CHARS);
        if s.chars().nth(limit).is_some() {
            return Err(fail(
                column,
                format!(
                    "longer than {limit} characters, the limit for this field: the value is probably in the wrong \
                     column or the export is damaged; correct the source"
                ),
            ));
        }
    }
    for t in &f.transforms {
        v = t.apply(v).map_err(|m| fail(column.clone(), m))?;
    }
    // A cell of blank lines (split_lines) holds nothing.
    if v.as_array().is_some_and(Vec::is_empty) {
        return match &f.default {
            Some(d) => Ok(Some(d.clone())),
            None if f.required => Err(fail(
                column,
                "required, but it holds only blank lines; fill it in at the source and re-export".into(),
            )),
            None => Ok(None),
        };
    }
    if let Some(map) = &f.map {
        let lookup = |v: &Value| {
            let code = match v {
                Value::String(s) => super::compile::fold(s),
                other => other.to_string(),
            };
            map.entries.get(&code).or(map.fallback.as_ref()).cloned().ok_or_else(|| {
                // The cell is not quoted: a value in the wrong column may be anyone's personal data.
                fail(
                    column.clone(),
                    format!(
                        "the value is not in value map \"{}\"; add the partner's code to [maps.{}] in {} or correct the source",
                        map.name,
                        map.name,
                        file.display()
                    ),
                )
            })
        };
        v = match v {
            Value::Array(items) => Value::Array(items.iter().map(lookup).collect::<Result<_, _>>()?),
            one => lookup(&one)?,
        };
    }
    if let Some((min, max)) = f.range {
        match v.as_f64() {
            Some(n) if n >= min && n <= max => {}
            Some(_) => {
                return Err(fail(
                    column,
                    format!("out of range: must be between {min} and {max}; correct the value in the export"),
                ));
            }
            None => {
                return Err(fail(
                    column,
                    format!(
                        "not a number, but the field has a range; correct the value in the export, or give the field an integer or decimal transform in {}",
                        file.display()
                    ),
                ));
            }
        }
    }
    Ok(Some(v))
}

/// A tabular cell as a value: over the length limit is an error, surrounding white space is trimmed, and an
/// empty cell is absent (as [`cell`] does for a JSON string).
fn checked_cell(s: &str) -> Result<Option<Value>, String> {
    if s.len() > MAX_VALUE_CHARS && s.chars().count() > MAX_VALUE_CHARS {
        return Err(too_long(s));
    }
    let t = s.trim();
    Ok((!t.is_empty()).then(|| Value::String(t.to_string())))
}

fn too_long(s: &str) -> String {
    format!(
        "the cell holds {} characters, over the limit of {MAX_VALUE_CHARS} (a spreadsheet cell's own limit): the export is damaged or the column holds something else; fix it at the source",
        s.chars().count()
    )
}

/// Reads one cell (tabular) or path (JSON); an empty value is absent.
fn cell(row: &Row, position: Option<Option<usize>>, column: &str) -> Result<Option<Value>, String> {
    let v = match &row.values {
        Values::Cells(cells) | Values::Untrusted { cells, .. } => match position.flatten() {
            // Checked and trimmed before it is copied: one copy of the cell, not two.
            Some(i) => return Ok(cells.get(i).map(String::as_str).map(checked_cell).transpose()?.flatten()),
            None => None,
        },
        Values::Json(record) => ingest::json_path(record, column).cloned(),
        Values::Unreadable { .. } => None,
    };
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.len() > MAX_VALUE_CHARS && s.chars().count() > MAX_VALUE_CHARS => Err(too_long(&s)),
        Some(Value::String(s)) => {
            let trimmed = s.trim().len();
            Ok(match trimmed {
                0 => None,
                n if n == s.len() => Some(Value::String(s)),
                _ => Some(Value::String(s.trim().to_string())),
            })
        }
        // Source values are text, as in a CSV; only transforms (integer, decimal, boolean) make them typed, so a
        // numeric client id from a JSON API still lands in identifier.value as a string.
        Some(v @ (Value::Number(_) | Value::Bool(_))) => Ok(Some(Value::String(v.to_string()))),
        Some(Value::Array(_) | Value::Object(_)) => {
            Err("holds a list or an object, not a value; point `from` at an element inside it".into())
        }
    }
}

/// Sets the parts of a resource the engine owns: type, id and the mapping that made it.
fn finish(body: Value, resource_type: &str, id: &str, meta_source: &str) -> Value {
    let mut obj = match body {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    obj.insert("resourceType".into(), Value::String(resource_type.to_string()));
    obj.insert("id".into(), Value::String(id.to_string()));
    let meta = obj.entry("meta").or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(m) = meta {
        m.insert("source".into(), Value::String(meta_source.to_string()));
    }
    Value::Object(obj)
}

/// The partner's Organization, from partner.toml.
pub fn organization(partner: &Partner) -> Value {
    let mut identifier = Vec::new();
    if let Some(ods) = &partner.ods_code {
        identifier.push(serde_json::json!({ "system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": ods }));
    }
    if let Some(charity) = &partner.charity_number {
        identifier.push(
            serde_json::json!({ "system": "https://register-of-charities.charitycommission.gov.uk", "value": charity }),
        );
    }
    serde_json::json!({
        "resourceType": "Organization",
        "id": partner.organization_id,
        "meta": { "source": format!("urn:york-connector:partner:{}", partner.id) },
        "identifier": identifier,
        "active": true,
        "name": partner.name,
    })
}
