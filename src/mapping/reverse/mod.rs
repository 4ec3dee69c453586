//! Reverse mappings: a FHIR resource turned back into a row of the partner's own export layout, for partner
//! feeds. A `<kind>.reverse.toml` beside a forward mapping names the resource it inverts and the partner's
//! columns; the row is found by matching the forward template against the resource (see `matching`) and
//! undoing each field's value map and transforms (see `invert`). The guarantee, tested on the hub's
//! fixtures: mapping the rendered CSV forward again gives byte-identical resources. The format is documented
//! in `mappings/README.md` ("Reverse mappings").

mod compile;
mod invert;
mod matching;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde_json::Value;

use super::{FieldSource, Mapping, Partner, RecordKind};
use invert::Problem;
use matching::Bound;

pub(super) use compile::{is_reverse_file, load_all};

/// Reference (`Patient/<id>`) -> the partner's own field values (partner text) for the thing referenced, by
/// field name of the mapping that makes it: `{"Patient/7c9e..": {"client_id": "HUB-1004"}}`.
pub type Anchors = BTreeMap<String, BTreeMap<String, String>>;

/// One compiled reverse mapping: how resources of one type become rows of one partner file.
#[derive(Debug)]
pub struct ReverseMapping {
    pub partner: String,
    /// The forward mapping it inverts.
    pub kind: RecordKind,
    pub resource_type: String,
    /// The forward mapping's `[[resource]]` it inverts (its name).
    pub resource: String,
    /// The file name used in a CSV feed.
    pub file: String,
    /// The `.reverse.toml` file, for messages.
    pub path: PathBuf,
    header: Vec<String>,
    /// Per header column, the fields that can write it, best first.
    columns: Vec<Vec<Writer>>,
    /// Index of the inverted resource in the forward mapping.
    spec: usize,
    /// Per field of the forward mapping: its value map's entries in file order (the partner's text, value).
    maps: Vec<Option<Vec<(String, Value)>>>,
    /// Per ref of the forward mapping: (field of this row, the target mapping's key field name) for each part
    /// of the target's key; `None` for a reference to a sibling resource of the same row.
    ref_keys: Vec<Option<Vec<(usize, String)>>>,
    delimiter: u8,
}

/// A field that gives a column its text: all of it, or one part of a `join` (index, number of parts).
#[derive(Debug, Clone, Copy)]
struct Writer {
    field: usize,
    join: Option<(usize, usize)>,
}

/// CSV files of a feed, in the partner's layout.
#[derive(Debug, Clone, Default)]
pub struct CsvFeed {
    /// (file name, CSV text), one per reverse mapping that had at least one resource, in record-kind order.
    pub files: Vec<(String, String)>,
    /// `Type/id` of the resources whose type the partner has no reverse mapping for.
    pub skipped: Vec<String>,
}

/// A resource that cannot be written in the partner's layout. Values are never repeated: they may be
/// personal data, and these messages reach logs.
#[derive(Debug, thiserror::Error)]
pub enum ReverseError {
    #[error(
        "partner \"{partner}\": item {index} of the feed is not a FHIR resource ({message}); pass resources as the central record returns them"
    )]
    NotAResource { partner: String, index: usize, message: String },
    #[error("partner \"{partner}\": {resource}: {message} ({})", mapping.display())]
    Unmatched { partner: String, resource: String, mapping: PathBuf, message: String },
    /// `message` ends with the mapping file to look at.
    #[error("partner \"{partner}\": {resource}, column \"{column}\" (fields.{field}): {message}")]
    Column { partner: String, resource: String, column: String, field: String, message: String },
    #[error("partner \"{partner}\": cannot write {file}: {message}")]
    Write { partner: String, file: String, message: String },
}

/// Where a row's ref key fields are looked up: the caller's anchors first, then what this call learned.
struct Lookup<'a> {
    caller: &'a Anchors,
    learned: &'a Anchors,
}

impl Lookup<'_> {
    fn get(&self, reference: &str, names: [&str; 2]) -> Option<&str> {
        [self.caller, self.learned].into_iter().filter_map(|a| a.get(reference)).find_map(|fields| {
            names.iter().find_map(|n| fields.get(*n)).map(String::as_str).filter(|t| !t.trim().is_empty())
        })
    }
}

/// One resource turned back into partner text, field by field.
struct Inversion {
    /// Partner texts per field of the forward mapping, best first (several when a value map has several
    /// codes for the value); empty when the resource gives none.
    texts: Vec<Vec<String>>,
    /// Why a field the resource has a value for has no text.
    problems: Vec<Option<Problem>>,
    /// Per field: the reference whose key it is, when that reference was not found among the anchors.
    unresolved: Vec<Option<String>>,
}

impl ReverseMapping {
    /// The partner's column headers, in the partner's order.
    pub fn header(&self) -> &[String] {
        &self.header
    }

    /// The row for one resource, a cell per header column. `anchors` names referenced resources in the
    /// partner's terms (see `render_csv`).
    pub fn row(&self, partner: &Partner, resource: &Value, anchors: &Anchors) -> Result<Vec<String>, ReverseError> {
        let none = Anchors::new();
        self.row_with(partner, resource, &Lookup { caller: anchors, learned: &none })
    }

    /// The partner text of each field of the forward mapping that reads a column, for one resource. A field
    /// whose value cannot be written in the partner's terms is left out.
    pub fn fields(
        &self,
        partner: &Partner,
        resource: &Value,
        anchors: &Anchors,
    ) -> Result<BTreeMap<String, String>, ReverseError> {
        let none = Anchors::new();
        let forward = self.forward(partner, resource)?;
        let inv = self.invert(partner, forward, resource, &Lookup { caller: anchors, learned: &none })?;
        Ok(forward
            .fields
            .iter()
            .zip(inv.texts)
            .filter_map(|(f, t)| Some((f.name.clone(), t.into_iter().next()?)))
            .collect())
    }

    fn forward<'p>(&self, partner: &'p Partner, resource: &Value) -> Result<&'p Mapping, ReverseError> {
        partner.mappings.get(&self.kind).filter(|m| m.resources.len() > self.spec).ok_or_else(|| {
            ReverseError::Unmatched {
                partner: partner.id.clone(),
                resource: describe(resource),
                mapping: self.path.clone(),
                message: format!("the partner's \"{}\" mapping is not loaded", self.kind),
            }
        })
    }

    fn row_with(&self, partner: &Partner, resource: &Value, lookup: &Lookup) -> Result<Vec<String>, ReverseError> {
        let forward = self.forward(partner, resource)?;
        let inv = self.invert(partner, forward, resource, lookup)?;
        let column_error = |column: &str, field: usize, message: String| ReverseError::Column {
            partner: partner.id.clone(),
            resource: describe(resource),
            column: column.to_string(),
            field: forward.fields[field].name.clone(),
            message: format!("{message} ({})", forward.file.display()),
        };
        let mut cells = Vec::with_capacity(self.header.len());
        for (column, writers) in self.header.iter().zip(&self.columns) {
            // A value the partner's layout cannot hold (a date without its day, say) is never written half-made.
            for w in writers {
                if let Some(Problem::Transform(message)) = &inv.problems[w.field] {
                    return Err(column_error(column, w.field, message.clone()));
                }
            }
            let given: Vec<(&Writer, &[String])> =
                writers.iter().map(|w| (w, inv.texts[w.field].as_slice())).filter(|(_, t)| !t.is_empty()).collect();
            let cell = match given.split_first() {
                None => String::new(),
                // The engine joins a join's columns with a space; the last column takes what is left over.
                Some(((Writer { join: Some((part, count)), .. }, texts), _)) => {
                    texts[0].splitn(*count, ' ').nth(*part).unwrap_or_default().to_string()
                }
                // The first wording every other field of the column also accepts: a consent's status `active`
                // (Active or Declined) and its policy `OPTOUT` (Declined or Withdrawn) can only be Declined.
                Some(((_, texts), others)) => {
                    let accepts = |text: &str| {
                        others
                            .iter()
                            .filter(|(w, _)| w.join.is_none())
                            .all(|(_, o)| o.iter().any(|t| fold(t) == fold(text)))
                    };
                    texts.iter().find(|t| accepts(t)).unwrap_or(&texts[0]).clone()
                }
            };
            cells.push(cell);
        }
        // A row the partner's import would quarantine is no row at all: say which value is missing and why.
        let key: BTreeSet<usize> = forward.key.iter().copied().collect();
        for (i, f) in forward.fields.iter().enumerate() {
            let must = key.contains(&i) || (f.required && f.default.is_none());
            if !must || !matches!(f.source, FieldSource::Columns(_) | FieldSource::Join(_)) {
                continue;
            }
            let columns: Vec<usize> =
                (0..self.header.len()).filter(|&c| self.columns[c].iter().any(|w| w.field == i)).collect();
            if columns.iter().any(|&c| !cells[c].is_empty()) {
                continue;
            }
            let column = columns.first().map_or("", |&c| self.header[c].as_str());
            let message = match (&inv.problems[i], &inv.unresolved[i]) {
                (Some(p), _) => p.to_string(),
                (None, Some(reference)) => format!(
                    "the resource refers to {reference}, which is neither in the anchors given nor among the resources of this feed; pass the partner's own key for it"
                ),
                (None, None) => format!(
                    "the resource has no value for it, and the partner's import requires it (the {} mapping's key or a required field); is the resource of another shape than the {} mapping makes?",
                    self.kind, self.kind
                ),
            };
            return Err(column_error(column, i, message));
        }
        Ok(cells)
    }

    fn invert(
        &self,
        partner: &Partner,
        forward: &Mapping,
        resource: &Value,
        lookup: &Lookup,
    ) -> Result<Inversion, ReverseError> {
        let found = resource.get("resourceType").and_then(Value::as_str);
        if found != Some(self.resource_type.as_str()) {
            return Err(ReverseError::Unmatched {
                partner: partner.id.clone(),
                resource: describe(resource),
                mapping: self.path.clone(),
                message: format!("this reverse mapping turns back {} resources only", self.resource_type),
            });
        }
        let spec = &forward.resources[self.spec];
        let mut bound = Bound::new(forward.fields.len(), forward.refs.len());
        matching::match_resource(&spec.template, resource, partner, &mut bound);

        let n = forward.fields.len();
        let mut texts: Vec<Vec<String>> = vec![Vec::new(); n];
        let mut unresolved: Vec<Option<String>> = vec![None; n];
        // `{record.key}` is the key fields' values joined with "|".
        if let Some(k) = &bound.record_key {
            let parts: Vec<&str> = k.split('|').collect();
            if parts.len() == forward.key.len() {
                for (&f, part) in forward.key.iter().zip(parts) {
                    bound.fields[f].get_or_insert_with(|| Value::String(part.to_string()));
                }
            }
        }
        // A reference carries no key, only a derived id: the key comes from the anchors, in partner text.
        for (r, target) in bound.refs.iter().enumerate() {
            let (Some(reference), Some(Some(keys))) = (target, self.ref_keys.get(r)) else { continue };
            for (f, target_name) in keys {
                if bound.fields[*f].is_some() {
                    continue;
                }
                match lookup.get(reference, [target_name, &forward.fields[*f].name]) {
                    Some(t) => texts[*f] = vec![t.to_string()],
                    None => unresolved[*f] = Some(reference.clone()),
                }
            }
        }
        if let Some(f) = forward.patient_visible {
            bound.fields[f] = patient_visible(resource).map(Value::Bool);
        }
        let mut problems: Vec<Option<Problem>> = (0..n).map(|_| None).collect();
        for (i, f) in forward.fields.iter().enumerate() {
            if !texts[i].is_empty() || !matches!(f.source, FieldSource::Columns(_) | FieldSource::Join(_)) {
                continue;
            }
            let Some(v) = &bound.fields[i] else { continue };
            match invert::field_texts(f, self.maps[i].as_deref(), v) {
                Ok(t) => texts[i] = t,
                Err(p) => problems[i] = Some(p),
            }
        }
        Ok(Inversion { texts, problems, unresolved })
    }
}

/// Whether the person may see the record, from the security labels the central record carries
/// (`policy::label`): NOPAT means not for the patient. A resource nobody labelled gives no answer, which the
/// partner's own rule (an empty cell is not visible) reads the safe way: it may be a safeguarding note.
fn patient_visible(resource: &Value) -> Option<bool> {
    let labels = resource.pointer("/meta/security").and_then(Value::as_array)?;
    let has = |system: &str, code: Option<&str>| {
        labels.iter().any(|l| {
            l.get("system").and_then(Value::as_str) == Some(system)
                && code.is_none_or(|c| l.get("code").and_then(Value::as_str) == Some(c))
        })
    };
    if has(crate::model::fhir::V3_ACT_CODE, Some("NOPAT")) {
        Some(false)
    } else if has(crate::model::fhir::V3_CONFIDENTIALITY, None) {
        Some(true)
    } else {
        None
    }
}

/// Codes match as the engine matches them: ignoring case and surrounding white space.
fn fold(text: &str) -> String {
    text.trim().to_lowercase()
}

/// `Type/id` of a resource, for messages (ids are not personal data).
fn describe(resource: &Value) -> String {
    let t = resource.get("resourceType").and_then(Value::as_str).unwrap_or("(no resourceType)");
    let id = resource.get("id").and_then(Value::as_str).unwrap_or("(no id)");
    format!("{t}/{id}")
}

/// CSV files for `resources` in `partner`'s layout: one file per reverse mapping that has at least one
/// resource (in record-kind order), rows in input order, header first, RFC 4180 quoting, CRLF line ends,
/// UTF-8. `anchors`: reference (`Patient/<id>`) -> the partner's own field values for the thing referenced,
/// e.g. `{"client_id": "HUB-1004"}`; resources of this call that have a reverse mapping are anchors too (so
/// contacts sent with their episodes name them), the caller's winning. Resources of a type with no reverse
/// mapping are returned in `skipped`; a resource that cannot be written as a row is an error.
pub fn render_csv(partner: &Partner, resources: &[Value], anchors: &Anchors) -> Result<CsvFeed, ReverseError> {
    let mut typed = Vec::with_capacity(resources.len());
    for (index, r) in resources.iter().enumerate() {
        let field = |name: &str| r.get(name).and_then(Value::as_str).filter(|s| !s.is_empty());
        match (field("resourceType"), field("id")) {
            (Some(t), Some(id)) => typed.push((t, id, r)),
            (t, _) => {
                let message = if t.is_none() { "no resourceType" } else { "no id" }.to_string();
                return Err(ReverseError::NotAResource { partner: partner.id.clone(), index, message });
            }
        }
    }

    // Learn, from this call's own resources, the partner keys that references to them need.
    let wanted: BTreeSet<&str> = partner
        .reverse
        .values()
        .flat_map(|rm| rm.ref_keys.iter().flatten().flatten().map(|(_, name)| name.as_str()))
        .collect();
    let mut learned = Anchors::new();
    let none = Anchors::new();
    for (t, id, r) in &typed {
        let Some(rm) = partner.reverse.get(*t) else { continue };
        let Ok(forward) = rm.forward(partner, r) else { continue };
        let Ok(inv) = rm.invert(partner, forward, r, &Lookup { caller: &none, learned: &none }) else { continue };
        let keys: BTreeMap<String, String> = forward
            .fields
            .iter()
            .zip(inv.texts)
            .filter(|(f, _)| wanted.contains(f.name.as_str()))
            .filter_map(|(f, t)| Some((f.name.clone(), t.into_iter().next()?)))
            .collect();
        if !keys.is_empty() {
            learned.insert(format!("{t}/{id}"), keys);
        }
    }

    let lookup = Lookup { caller: anchors, learned: &learned };
    let mut rows: BTreeMap<(RecordKind, &str), Vec<Vec<String>>> = BTreeMap::new();
    let mut skipped = Vec::new();
    for (t, id, r) in &typed {
        match partner.reverse.get(*t) {
            Some(rm) => rows.entry((rm.kind, t)).or_default().push(rm.row_with(partner, r, &lookup)?),
            None => skipped.push(format!("{t}/{id}")),
        }
    }
    let mut files = Vec::with_capacity(rows.len());
    for ((_, t), rows) in rows {
        let Some(rm) = partner.reverse.get(t) else { continue };
        files.push((rm.file.clone(), write_csv(partner, rm, &rows)?));
    }
    Ok(CsvFeed { files, skipped })
}

fn write_csv(partner: &Partner, rm: &ReverseMapping, rows: &[Vec<String>]) -> Result<String, ReverseError> {
    let fail = |message: String| ReverseError::Write { partner: partner.id.clone(), file: rm.file.clone(), message };
    let mut w = csv::WriterBuilder::new()
        .delimiter(rm.delimiter)
        .terminator(csv::Terminator::CRLF)
        .quote_style(csv::QuoteStyle::Necessary)
        .from_writer(Vec::new());
    w.write_record(&rm.header).map_err(|e| fail(e.to_string()))?;
    for record in rows {
        w.write_record(record.iter().map(|cell| neutralise_formula(cell).into_owned()))
            .map_err(|e| fail(e.to_string()))?;
    }
    let bytes = w.into_inner().map_err(|e| fail(e.to_string()))?;
    String::from_utf8(bytes).map_err(|e| fail(e.to_string()))
}

/// A cell a spreadsheet would run as a formula, made text (OWASP "CSV injection"): a cell starting with `=`,
/// `@`, a tab or a carriage return, or with `+` or `-` not followed by a plain number, gets a leading `'`.
/// Plain numbers and phone numbers (`-12.5`, `+44 7700 900345`: a sign, then digits and spaces with at most
/// one decimal point) are data and stay as they are, so feeds still round-trip them. A cell starting with
/// `'` is left alone only if it would be safe without it, so what a reader strips is never a formula.
pub fn neutralise_formula(cell: &str) -> std::borrow::Cow<'_, str> {
    let mut chars = cell.chars();
    let risky = match chars.next() {
        Some('=' | '@' | '\t' | '\r') => true,
        Some('+' | '-') => !plain_number(chars.as_str()),
        _ => false,
    };
    if risky { std::borrow::Cow::Owned(format!("'{cell}")) } else { std::borrow::Cow::Borrowed(cell) }
}

/// Digits and spaces, starting with a digit, with at most one `.` between digits.
fn plain_number(text: &str) -> bool {
    let mut seen_point = false;
    let mut previous_digit = false;
    for (i, c) in text.chars().enumerate() {
        match c {
            '0'..='9' => previous_digit = true,
            ' ' if i > 0 => previous_digit = false,
            '.' if previous_digit && !seen_point => {
                seen_point = true;
                previous_digit = false;
            }
            _ => return false,
        }
    }
    previous_digit
}

/// The field values (as partner text) of one resource under the partner's reverse mapping of its type, e.g.
/// to get the partner's client id from its own Patient; fields whose value cannot be written in the partner's
/// terms are left out. `None` when the partner has no reverse mapping for that type (or the value is not a
/// resource).
pub fn fields_of(partner: &Partner, resource: &Value) -> Option<BTreeMap<String, String>> {
    let t = resource.get("resourceType").and_then(Value::as_str)?;
    partner.reverse.get(t)?.fields(partner, resource, &Anchors::new()).ok()
}

#[cfg(test)]
mod tests;
