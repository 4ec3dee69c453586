//! The checks of a produced resource, split by when they can be made. A template's structure never changes
//! between rows, so it is checked against the FHIR model (`fhir-check`) once, at load, with representative values:
//! an element FHIR does not know is a load-time error. The same probes learn what FHIR type each placeholder
//! stands in (free text, a date, a dateTime, or something else such as a code with a value set).
//!
//! Per row, [`Memo`] turns what the placeholders held into a signature: which were empty, and for each value its
//! class (any text in a free-text place, a well-formed date in a date place, the NHS number and reference checks'
//! answers, or else the value itself). The full check ([`validate::resource`]) gives the same answer for every row
//! with one signature, so it runs once per signature and the answer is remembered; a row whose answer is "fails"
//! is checked in full again for its reasons, so quarantine reasons are exactly those of the full check.

use std::collections::HashMap;

use serde_json::Value;

use super::state::RefKey;
use super::writer::{Leaf, RowData, Seen, Writer};
use super::{Field, FieldSource, Ref};
use crate::ingest::limits::MAX_VALUE_CHARS;
use crate::mapping::transform::Transform;
use crate::validate;

/// What FHIR type a placeholder's place has, as far as the per-row check needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// Any text is accepted (string, uri, id, markdown ...).
    Text,
    /// A FHIR `date`.
    Date,
    /// A FHIR `dateTime`.
    DateTime,
    /// Something else (a code with a required value set, a number, a structure): values are compared as they are.
    Exact,
}

/// A template compiled for writing, with what its load-time check learned.
#[derive(Debug)]
pub struct Compiled {
    pub writer: Writer,
    /// Per leaf. Empty when the representative resource did not fit FHIR: every row is then checked in full.
    places: Vec<Place>,
}

impl Compiled {
    #[cfg(test)]
    pub fn places(&self) -> &[Place] {
        &self.places
    }
}

const TEXT_PROBES: [&str; 2] = ["Probe text, 1", "x"];
const DATE_PROBES: [&str; 2] = ["2000-01-01", "1999-12-31"];
const DATETIME_PROBES: [&str; 2] = ["2000-01-01T10:00:00+00:00", "1999-12-31T23:59:59-05:00"];

/// Representative values of a mapping's fields, for the load-time check: the first is tried first; the others
/// (a value map's other values, the default) when the first does not fit.
pub fn field_candidates(f: &Field) -> Vec<Value> {
    let mut out = Vec::new();
    if let Some(map) = &f.map {
        out.extend(map.entries.values().cloned());
        out.extend(map.fallback.clone());
    } else {
        match &f.source {
            FieldSource::Const(v) => out.push(v.clone()),
            FieldSource::Sum(_) => out.push(Value::from(1)),
            FieldSource::Columns(_) | FieldSource::Join(_) => {
                let mut v = Value::String("Text".into());
                for t in &f.transforms {
                    v = match t {
                        Transform::NhsNumber => "9990000018".into(),
                        Transform::UkDate => "2000-01-01".into(),
                        Transform::UkDateTime => "2000-01-01T10:00:00+00:00".into(),
                        Transform::Postcode => "YO1 7HH".into(),
                        Transform::UkPhone => "07700900123".into(),
                        Transform::Email => "someone@example.org".into(),
                        Transform::Integer => Value::from(1),
                        Transform::Decimal => Value::from(1.5),
                        Transform::Boolean => Value::Bool(true),
                        Transform::SplitLines => Value::Array(vec!["Text".into()]),
                        Transform::Trim | Transform::Upper | Transform::Lower => v,
                    };
                }
                out.push(v.clone());
                if f.transforms.contains(&Transform::UkDateTime) {
                    out.push("2000-01-01".into());
                }
            }
        }
    }
    out.extend(f.default.clone());
    if out.is_empty() {
        out.push(Value::String("Text".into()));
    }
    out
}

/// Checks a compiled template at load: its representative resource must fit FHIR R4. Returns the problems that
/// hold for every row (elements FHIR does not know) as errors; when the representative resource does not fit for
/// another reason (a value the probes could not guess), every row is checked in full instead.
pub fn prepare(writer: Writer, fields: &[Field], refs: &[Ref]) -> Result<Compiled, Vec<fhir_check::Problem>> {
    let candidates: Vec<Vec<Value>> = fields.iter().map(field_candidates).collect();
    let ref_values: Vec<Option<String>> = refs
        .iter()
        .map(|r| {
            let t = if r.resource_type.is_empty() { "Patient" } else { r.resource_type.as_str() };
            Some(format!("{t}/00000000-0000-5000-8000-000000000000"))
        })
        .collect();
    let mut choice: Vec<usize> = vec![0; fields.len()];
    let id = "00000000-0000-5000-8000-000000000001";
    let render = |choice: &[usize], candidates: &[Vec<Value>], over: Option<(u32, &Value)>| -> Value {
        let values: Vec<Option<Value>> = candidates.iter().zip(choice).map(|(c, &i)| c.get(i).cloned()).collect();
        let row = RowData { fields: &values, refs: &ref_values, key: "KEY-1", id };
        let mut text = String::new();
        writer.write(&row, over, &mut text, &mut |_, _| {});
        serde_json::from_str(&text).unwrap_or(Value::Null)
    };
    let mut problems = fhir_check::check(&render(&choice, &candidates, None));
    // A value map's first value may not fit where it goes (a code map used in two places): try the others.
    'fields: for f in 0..fields.len() {
        if problems.is_empty() {
            break;
        }
        for alt in 1..candidates[f].len() {
            let mut c = choice.clone();
            c[f] = alt;
            let p = fhir_check::check(&render(&c, &candidates, None));
            if p.len() < problems.len() || p.is_empty() {
                choice = c;
                problems = p;
                continue 'fields;
            }
        }
    }
    let unknown: Vec<fhir_check::Problem> =
        problems.iter().filter(|p| matches!(p, fhir_check::Problem::UnknownElement { .. })).cloned().collect();
    if !unknown.is_empty() {
        return Err(unknown);
    }
    if !problems.is_empty() {
        return Ok(Compiled { writer, places: Vec::new() });
    }
    let fits = |leaf: u32, probe: &str| {
        let v = Value::String(probe.to_string());
        fhir_check::check(&render(&choice, &candidates, Some((leaf, &v)))).is_empty()
    };
    let places: Vec<Place> = (0..writer.leaves().len())
        .map(|i| {
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            if TEXT_PROBES.iter().all(|p| fits(i, p)) {
                Place::Text
            } else if DATE_PROBES.iter().all(|p| fits(i, p)) {
                if DATETIME_PROBES.iter().all(|p| fits(i, p)) { Place::DateTime } else { Place::Date }
            } else {
                Place::Exact
            }
        })
        .collect();
    Ok(Compiled { writer, places })
}

/// Signature codes.
const ABSENT: u32 = 0;
const TEXT: u32 = 1;
const TEXT_LIST: u32 = 2;
const DATE_OK: u32 = 3;
/// Flags on [`TEXT`]: the reference check's and NHS number check's answers, and whether it names the NHS
/// number system.
const PLAIN_REFERENCE: u32 = 1 << 4;
const NHS_VALID: u32 = 1 << 5;
const NHS_SYSTEM: u32 = 1 << 6;
/// Values compared as they are: this plus their number in the interner.
const EXACT: u32 = 1 << 8;

/// Distinct values remembered per template and run, and distinct signatures: past these, rows are checked in
/// full (correct, only slower), so memory stays bounded whatever the input.
const MAX_INTERNED: usize = 4096;
const MAX_SIGNATURES: usize = 8192;

/// What one run remembers for one template: the verdicts of the full check by signature.
#[derive(Default)]
pub struct Memo {
    verdicts: HashMap<Box<[u32]>, bool>,
    interned: HashMap<u32, HashMap<String, u32>>,
    interned_count: usize,
    /// The signature of the row being checked.
    sig: Vec<u32>,
    cacheable: bool,
    /// The `reference` strings the row's resource may hold, as the run remembers references.
    pub refs: Vec<RefKey>,
    /// A value holds an object: its references are found by walking the built resource.
    pub walk_refs: bool,
    scratch: String,
}

/// What the memo says about one resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It passes the full check.
    Passes,
    /// Run the full check (it fails, or this signature has not been seen).
    CheckInFull,
}

impl Memo {
    /// Writes one resource of a row into `out` and says whether it must be checked in full.
    pub fn write(&mut self, compiled: &Compiled, row: &RowData<'_>, out: &mut String) -> Verdict {
        self.sig.clear();
        self.refs.clear();
        self.walk_refs = false;
        self.cacheable = !compiled.places.is_empty();
        self.refs.extend(compiled.writer.const_refs.iter().cloned());
        let leaves = compiled.writer.leaves();
        compiled.writer.write(row, None, out, &mut |i, seen| self.see(compiled, &leaves[i as usize], i, seen));
        if !self.cacheable {
            return Verdict::CheckInFull;
        }
        match self.verdicts.get(self.sig.as_slice()) {
            Some(true) => Verdict::Passes,
            _ => Verdict::CheckInFull,
        }
    }

    /// Remembers the full check's answer for the signature of the resource last written.
    pub fn record(&mut self, passes: bool) {
        if self.cacheable && self.verdicts.len() < MAX_SIGNATURES {
            self.verdicts.insert(self.sig.clone().into_boxed_slice(), passes);
        }
    }

    fn see(&mut self, compiled: &Compiled, leaf: &Leaf, i: u32, seen: Seen<'_>) {
        if let (Some("reference"), Seen::Str(s)) = (leaf.key.as_deref(), seen) {
            self.refs.push(RefKey::of(s));
        }
        match seen {
            Seen::Json(v) => self.walk_refs |= holds_object(v),
            Seen::Spread(items) => self.walk_refs |= items.iter().any(holds_object),
            Seen::Absent | Seen::Str(_) => {}
        }
        if !self.cacheable {
            return;
        }
        let place = compiled.places.get(i as usize).copied().unwrap_or(Place::Exact);
        let code = match seen {
            Seen::Absent => Some(ABSENT),
            Seen::Str(s) if overlong(s) => None,
            Seen::Str(s) => match place {
                Place::Text => {
                    let mut c = TEXT;
                    if leaf.key.as_deref() == Some("reference") && validate::is_plain_reference(s) {
                        c |= PLAIN_REFERENCE;
                    }
                    if leaf.identifier_part {
                        if validate::nhs::is_valid(s) {
                            c |= NHS_VALID;
                        }
                        if s == validate::NHS_SYSTEM {
                            c |= NHS_SYSTEM;
                        }
                    }
                    Some(c)
                }
                Place::Date if is_simple_date(s) => Some(DATE_OK),
                Place::DateTime if is_simple_date(s) || is_simple_date_time(s) => Some(DATE_OK),
                Place::Date | Place::DateTime => None,
                Place::Exact => self.intern(i, s),
            },
            Seen::Spread(items)
                if place == Place::Text && items.iter().all(|v| v.as_str().is_some_and(|s| !overlong(s))) =>
            {
                Some(TEXT_LIST)
            }
            Seen::Spread(items) => self.intern_json(i, &Value::Array(items.to_vec())),
            Seen::Json(v) => self.intern_json(i, v),
        };
        match code {
            Some(c) => {
                // Spreads in one list, and leaves in order: the leaf's number keeps signatures apart.
                self.sig.push(i);
                self.sig.push(c);
            }
            None => self.cacheable = false,
        }
    }

    fn intern_json(&mut self, i: u32, v: &Value) -> Option<u32> {
        if has_overlong(v) {
            return None;
        }
        let mut s = std::mem::take(&mut self.scratch);
        s.clear();
        super::writer::push_value(&mut s, v);
        let code = self.intern(i, &format!("j{s}"));
        self.scratch = s;
        code
    }

    fn intern(&mut self, leaf: u32, text: &str) -> Option<u32> {
        let per_leaf = self.interned.entry(leaf).or_default();
        if let Some(&n) = per_leaf.get(text) {
            return Some(EXACT + n);
        }
        if self.interned_count >= MAX_INTERNED {
            return None;
        }
        let n = u32::try_from(per_leaf.len()).ok()?;
        per_leaf.insert(text.to_string(), n);
        self.interned_count += 1;
        Some(EXACT + n)
    }
}

fn overlong(s: &str) -> bool {
    s.len() > MAX_VALUE_CHARS && s.chars().count() > MAX_VALUE_CHARS
}

fn has_overlong(v: &Value) -> bool {
    match v {
        Value::String(s) => overlong(s),
        Value::Array(a) => a.iter().any(has_overlong),
        Value::Object(m) => m.values().any(has_overlong),
        _ => false,
    }
}

fn holds_object(v: &Value) -> bool {
    match v {
        Value::Object(_) => true,
        Value::Array(a) => a.iter().any(holds_object),
        _ => false,
    }
}

/// `YYYY-MM-DD`, a real day, year 1000 to 9999: a subset of what FHIR's `date` (and fhir-model) accepts, so a
/// value it accepts needs no further check. Anything else is checked in full.
pub fn is_simple_date(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return false;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        b[r].iter().try_fold(0u32, |n, &d| d.is_ascii_digit().then(|| n * 10 + u32::from(d - b'0')))
    };
    let (Some(y), Some(m), Some(d)) = (num(0..4), num(5..7), num(8..10)) else { return false };
    (1000..=9999).contains(&y) && chrono::NaiveDate::from_ymd_opt(y as i32, m, d).is_some()
}

/// `YYYY-MM-DDThh:mm:ss+hh:mm` (or `-hh:mm`), as the `uk_datetime` transform writes it: a subset of FHIR's
/// `dateTime`.
pub fn is_simple_date_time(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() != 25 || b[10] != b'T' || !is_simple_date(&s[..10]) {
        return false;
    }
    let two = |at: usize| -> Option<u32> {
        let (x, y) = (b[at], b[at + 1]);
        (x.is_ascii_digit() && y.is_ascii_digit()).then(|| u32::from(x - b'0') * 10 + u32::from(y - b'0'))
    };
    b[13] == b':'
        && b[16] == b':'
        && matches!(b[19], b'+' | b'-')
        && b[22] == b':'
        && two(11).is_some_and(|h| h < 24)
        && two(14).is_some_and(|m| m < 60)
        && two(17).is_some_and(|s| s < 60)
        && two(20).is_some_and(|h| h < 15)
        && two(23).is_some_and(|m| m < 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The quick date checks accept only what the FHIR model accepts in those places.
    #[test]
    fn simple_dates_are_dates_to_the_fhir_model() {
        let patient = |date: &str, when: &str| serde_json::json!({"resourceType": "Patient", "id": "a", "birthDate": date, "deceasedDateTime": when});
        let mut day = chrono::NaiveDate::from_ymd_opt(1999, 12, 1).unwrap();
        while day < chrono::NaiveDate::from_ymd_opt(2001, 3, 5).unwrap() {
            let d = day.format("%Y-%m-%d").to_string();
            assert!(is_simple_date(&d), "{d}");
            let t = format!("{d}T23:59:59+01:00");
            assert!(is_simple_date_time(&t), "{t}");
            assert!(fhir_check::check(&patient(&d, &t)).is_empty(), "{d} {t}");
            day = day.succ_opt().unwrap();
        }
        for ok in ["1000-01-01", "9999-12-31", "2024-02-29"] {
            assert!(is_simple_date(ok) && fhir_check::check(&patient(ok, ok)).is_empty(), "{ok}");
        }
        for t in ["2026-03-28T00:00:00+00:00", "2026-07-01T09:00:00-14:59", "2026-07-01T09:00:00+14:00"] {
            assert!(is_simple_date_time(t) && fhir_check::check(&patient("2000-01-01", t)).is_empty(), "{t}");
        }
        for bad in ["2023-02-29", "0999-01-01", "2000-1-01", "2000-01-01 ", "２０００-01-01", "2000/01/01"] {
            assert!(!is_simple_date(bad), "{bad}");
        }
        for bad in ["2000-01-01T24:00:00+00:00", "2000-01-01T10:00:00Z", "2000-01-01T10:00+00:00:00"] {
            assert!(!is_simple_date_time(bad), "{bad}");
        }
    }
}
