//! Loads `<kind>.reverse.toml` files beside the forward mappings they invert, checking at load that a row
//! rebuilt from the named resource can be imported again whole: every column exists in the forward mapping,
//! and every field the forward mapping needs is carried by the resource and has its column.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::super::compile::{CompileError, toml_to_json};
use super::super::template::Slot;
use super::super::{FieldSource, Mapping, RecordKind};
use super::{ReverseMapping, Writer, matching};

const SUFFIX: &str = ".reverse.toml";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    reverse: RawReverse,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReverse {
    kind: Spanned<String>,
    resource: Spanned<String>,
    file: Spanned<String>,
    columns: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    blank: Vec<Spanned<String>>,
}

/// Only the value maps of a forward mapping, with where each code is written, for their file order.
#[derive(Deserialize)]
struct RawMaps {
    #[serde(default)]
    maps: BTreeMap<String, BTreeMap<Spanned<String>, toml::Value>>,
}

/// Whether a file in a partner folder is a reverse mapping (not a forward one).
pub(in crate::mapping) fn is_reverse_file(path: &Path) -> bool {
    path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with(SUFFIX))
}

/// Loads a partner's reverse mappings, by resource type. `mappings` are its compiled forward mappings.
pub(in crate::mapping) fn load_all(
    files: &[PathBuf],
    partner: &str,
    mappings: &BTreeMap<RecordKind, Mapping>,
    errors: &mut Vec<CompileError>,
) -> BTreeMap<String, ReverseMapping> {
    let mut out: BTreeMap<String, ReverseMapping> = BTreeMap::new();
    for f in files.iter().filter(|f| is_reverse_file(f)) {
        let Some(r) = load(f, partner, mappings, errors) else { continue };
        if let Some(prev) = out.get(&r.resource_type) {
            errors.push(CompileError::File {
                path: f.clone(),
                message: format!(
                    "{} resources are already turned back by {}; one reverse mapping per resource type, so remove one",
                    r.resource_type,
                    prev.path.display()
                ),
            });
        } else if let Some(prev) = out.values().find(|p| p.file.eq_ignore_ascii_case(&r.file)) {
            errors.push(CompileError::File {
                path: f.clone(),
                message: format!(
                    "reverse.file \"{}\" is also the file of {}; each file of a feed needs its own name",
                    r.file,
                    prev.path.display()
                ),
            });
        } else {
            out.insert(r.resource_type.clone(), r);
        }
    }
    out
}

/// Headers are matched as the reader matches them: ignoring case and surrounding white space.
fn fold(column: &str) -> String {
    column.trim_start_matches('\u{feff}').trim().to_lowercase()
}

fn load(
    file: &Path,
    partner: &str,
    mappings: &BTreeMap<RecordKind, Mapping>,
    errors: &mut Vec<CompileError>,
) -> Option<ReverseMapping> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| errors.push(CompileError::File { path: file.to_path_buf(), message: format!("cannot read: {e}") }))
        .ok()?;
    let before = errors.len();
    let line_of = |offset: usize| text.as_bytes()[..offset.min(text.len())].iter().filter(|&&b| b == b'\n').count() + 1;
    let mut at = |offset: usize, key: &str, message: String| {
        errors.push(CompileError::At {
            file: file.to_path_buf(),
            line: line_of(offset),
            key: key.to_string(),
            message,
        });
    };
    let raw = match toml::from_str::<RawFile>(&text) {
        Ok(r) => r.reverse,
        Err(e) => {
            let key = e.span().and_then(|s| text.get(s)).and_then(|t| t.lines().next()).unwrap_or("reverse");
            let key: String = key.chars().take(40).collect();
            at(e.span().map_or(0, |s| s.start), &key, e.message().to_string());
            return None;
        }
    };

    let Some(kind) = RecordKind::parse(raw.kind.get_ref()) else {
        let known: Vec<&str> = RecordKind::ALL.iter().map(|k| k.as_str()).collect();
        at(
            raw.kind.span().start,
            "reverse.kind",
            format!("\"{}\" is not a record kind (known: {})", raw.kind.get_ref(), known.join(", ")),
        );
        return None;
    };
    let name = file.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    if name != format!("{kind}{SUFFIX}") {
        at(
            raw.kind.span().start,
            "reverse.kind",
            format!(
                "kind \"{kind}\" in a file named {name}; name the file {kind}{SUFFIX}, beside the {kind}.toml it inverts"
            ),
        );
    }
    let Some(forward) = mappings.get(&kind) else {
        // A forward mapping that failed to load has its own errors; this file adds nothing to them.
        if !file.with_file_name(format!("{kind}.toml")).exists() {
            at(
                raw.kind.span().start,
                "reverse.kind",
                format!(
                    "partner \"{partner}\" has no {kind}.toml to invert; a reverse mapping sits beside its forward mapping"
                ),
            );
        }
        return None;
    };
    let Some(spec) = forward.resources.iter().position(|r| r.name == *raw.resource.get_ref()) else {
        let names: Vec<&str> = forward.resources.iter().map(|r| r.name.as_str()).collect();
        at(
            raw.resource.span().start,
            "reverse.resource",
            format!(
                "no [[resource]] named \"{}\" in {} (it has: {})",
                raw.resource.get_ref(),
                forward.file.display(),
                names.join(", ")
            ),
        );
        return None;
    };
    let feed_file = raw.file.get_ref().trim();
    if feed_file.is_empty() || feed_file.contains(['/', '\\']) || feed_file.starts_with('.') {
        at(raw.file.span().start, "reverse.file", "a plain file name such as \"contact.csv\" (no folders)".into());
    }

    // The columns the forward mapping reads.
    let readers: BTreeSet<String> = forward.columns().map(|(_, c)| fold(c)).collect();
    let read_columns = || {
        let mut v: Vec<String> = Vec::new();
        for (_, c) in forward.columns() {
            let c = format!("\"{c}\"");
            if !v.contains(&c) {
                v.push(c);
            }
        }
        v.join(", ")
    };
    let blank: BTreeSet<String> = raw.blank.iter().map(|b| fold(b.get_ref())).collect();
    let mut header = Vec::new();
    let mut seen = BTreeSet::new();
    for c in raw.columns.get_ref() {
        let folded = fold(c.get_ref());
        if !seen.insert(folded.clone()) {
            at(c.span().start, "reverse.columns", format!("\"{}\" is listed twice", c.get_ref()));
        } else if !readers.contains(&folded) && !blank.contains(&folded) {
            at(
                c.span().start,
                "reverse.columns",
                format!(
                    "\"{}\" is not a column {} reads (it reads: {}); a column of the partner's layout that the mapping does not read goes in `blank = [...]`, and is written empty",
                    c.get_ref(),
                    forward.file.display(),
                    read_columns()
                ),
            );
        }
        header.push(c.get_ref().trim().to_string());
    }
    if header.is_empty() {
        at(raw.columns.span().start, "reverse.columns", "list the partner's columns, in the partner's order".into());
    }
    for b in &raw.blank {
        let folded = fold(b.get_ref());
        if !seen.contains(&folded) {
            at(
                b.span().start,
                "reverse.blank",
                format!("\"{}\" is not in `columns`; add it there, in its place", b.get_ref()),
            );
        } else if readers.contains(&folded) {
            at(
                b.span().start,
                "reverse.blank",
                format!(
                    "\"{}\" is read by the forward mapping, so it is not blank; remove it from `blank`",
                    b.get_ref()
                ),
            );
        }
    }

    // A field of several columns ("the first that has a value") is written to the first of them listed.
    let position = |c: &str| header.iter().position(|h| fold(h) == fold(c));
    let mut columns: Vec<Vec<Writer>> = vec![Vec::new(); header.len()];
    for (i, f) in forward.fields.iter().enumerate() {
        match &f.source {
            FieldSource::Columns(cols) => {
                if let Some(p) = cols.iter().find_map(|c| position(c)) {
                    columns[p].push(Writer { field: i, join: None });
                }
            }
            FieldSource::Join(cols) => {
                for (n, c) in cols.iter().enumerate() {
                    if let Some(p) = position(c) {
                        columns[p].push(Writer { field: i, join: Some((n, cols.len())) });
                    }
                }
            }
            FieldSource::Sum(_) | FieldSource::Const(_) => {}
        }
    }
    // Plain text says what the partner wrote; a value map's first code is only one of the wordings for a value.
    for writers in &mut columns {
        writers.sort_by_key(|w| (forward.fields[w.field].map.is_some(), w.field));
    }

    check_whole_row(forward, spec, &header, raw.resource.span().start, raw.columns.span().start, &mut at);

    let maps = value_maps(forward, errors);
    if errors.len() != before {
        return None;
    }
    let ref_keys = forward
        .refs
        .iter()
        .map(|r| {
            if r.sibling.is_some() {
                return None;
            }
            let target = mappings.get(&r.kind);
            Some(
                r.key
                    .iter()
                    .enumerate()
                    .map(|(n, &f)| {
                        let name = target
                            .and_then(|t| t.key.get(n))
                            .and_then(|&k| target.map(|t| t.fields[k].name.clone()))
                            .unwrap_or_else(|| forward.fields[f].name.clone());
                        (f, name)
                    })
                    .collect(),
            )
        })
        .collect();
    Some(ReverseMapping {
        partner: partner.to_string(),
        kind,
        resource_type: forward.resources[spec].resource_type.clone(),
        resource: raw.resource.into_inner(),
        file: feed_file.to_string(),
        path: file.to_path_buf(),
        header,
        columns,
        spec,
        maps,
        ref_keys,
        delimiter: forward.read.delimiter.unwrap_or(b','),
    })
}

/// Checks that a row rebuilt from the one resource re-imports whole: every field the forward mapping needs
/// (for any of its resources, its key, its consent statement, or because it is required) is carried by the
/// resource, and has a column.
fn check_whole_row(
    forward: &Mapping,
    spec: usize,
    header: &[String],
    resource_at: usize,
    columns_at: usize,
    at: &mut impl FnMut(usize, &str, String),
) {
    let fields = &forward.fields;
    let mut carried = BTreeSet::new();
    let mut found = Vec::new();
    matching::slots(&forward.resources[spec].template, &mut found);
    for s in found {
        match s {
            Slot::Field(i) => {
                carried.insert(i);
            }
            // A reference to another record is named in the partner's terms by the anchors.
            Slot::Ref(r) if forward.refs[r].sibling.is_none() => carried.extend(forward.refs[r].key.iter().copied()),
            Slot::RecordKey => carried.extend(forward.key.iter().copied()),
            _ => {}
        }
    }
    carried.extend(forward.patient_visible);
    carried
        .extend(fields.iter().enumerate().filter(|(_, f)| matches!(f.source, FieldSource::Const(_))).map(|(i, _)| i));
    for (i, f) in fields.iter().enumerate() {
        if let FieldSource::Sum(parts) = &f.source
            && parts.iter().all(|p| carried.contains(p))
        {
            carried.insert(i);
        }
    }

    // Why each field is needed, for the message.
    let mut needed: BTreeMap<usize, String> = BTreeMap::new();
    let mut need = |i: usize, why: String| {
        needed.entry(i).or_insert(why);
    };
    for res in &forward.resources {
        let mut found = Vec::new();
        matching::slots(&res.template, &mut found);
        for s in found {
            match s {
                Slot::Field(i) => need(i, format!("resource \"{}\"", res.name)),
                Slot::Ref(r) => {
                    let keys = if forward.refs[r].sibling.is_some() { &forward.key } else { &forward.refs[r].key };
                    keys.iter().for_each(|&k| need(k, format!("refs.{}", forward.refs[r].name)));
                }
                Slot::RecordKey => forward.key.iter().for_each(|&k| need(k, "record.key".into())),
                _ => {}
            }
        }
        if let Some(w) = res.when {
            need(w, format!("resource \"{}\" (when)", res.name));
        }
    }
    forward.key.iter().for_each(|&k| need(k, "mapping.key".into()));
    if let Some(p) = forward.patient_visible {
        need(p, "mapping.patient_visible".into());
    }
    if let Some(c) = &forward.consent {
        let flags = [Some(c.decision), c.date, c.withdrawn, c.cito, c.pkb, c.restrictions];
        flags.into_iter().flatten().chain(c.partners.iter().copied()).for_each(|i| need(i, "[consent]".into()));
    }
    for (i, f) in fields.iter().enumerate() {
        if f.required && f.default.is_none() {
            need(i, "required".into());
        }
    }
    let sums: Vec<(usize, Vec<usize>)> = needed
        .keys()
        .filter_map(|&i| match &fields[i].source {
            FieldSource::Sum(parts) => Some((i, parts.clone())),
            _ => None,
        })
        .collect();
    for (i, parts) in sums {
        for p in parts {
            needed.entry(p).or_insert_with(|| format!("fields.{}", fields[i].name));
        }
    }

    let lost: Vec<String> = needed
        .iter()
        .filter(|(i, _)| !carried.contains(i))
        .map(|(i, why)| format!("{} ({why})", fields[*i].name))
        .collect();
    if !lost.is_empty() {
        at(
            resource_at,
            "reverse.resource",
            format!(
                "the \"{}\" resource does not carry field(s) {} that {} needs, so a row rebuilt from it would lose them on re-import; a reverse mapping needs a resource that carries the whole record (see mappings/README.md)",
                forward.resources[spec].name,
                lost.join(", "),
                forward.file.display()
            ),
        );
    }
    for (&i, why) in &needed {
        if fields[i].transforms.contains(&crate::mapping::transform::Transform::SplitLines) {
            at(
                resource_at,
                "reverse.resource",
                format!(
                    "fields.{} is split into lines (split_lines), which cannot be joined back into the partner's cell exactly, and is needed ({why}); drop this reverse mapping or the split_lines transform in {}",
                    fields[i].name,
                    forward.file.display()
                ),
            );
        }
    }
    let listed = |c: &str| header.iter().any(|h| fold(h) == fold(c));
    for (&i, why) in &needed {
        let f = &fields[i];
        let missing: Vec<&String> = match &f.source {
            FieldSource::Columns(cols) if !cols.iter().any(|c| listed(c)) => cols.iter().take(1).collect(),
            FieldSource::Join(cols) => cols.iter().filter(|c| !listed(c)).collect(),
            _ => Vec::new(),
        };
        for c in missing {
            at(
                columns_at,
                "reverse.columns",
                format!(
                    "add \"{c}\": fields.{} reads it and is needed ({why}), so a re-import without it would differ",
                    f.name
                ),
            );
        }
    }
}

/// Each field's value map with its codes in file order (the partner's own wording, as written), read again
/// from the forward mapping's file because the compiled map folds codes to lower case.
fn value_maps(forward: &Mapping, errors: &mut Vec<CompileError>) -> Vec<Option<Vec<(String, serde_json::Value)>>> {
    let raw = std::fs::read_to_string(&forward.file)
        .map_err(|e| e.to_string())
        .and_then(|t| toml::from_str::<RawMaps>(&t).map_err(|e| e.to_string()));
    let raw = match raw {
        Ok(r) => r,
        Err(message) => {
            errors.push(CompileError::File {
                path: forward.file.clone(),
                message: format!("cannot read again: {message}"),
            });
            return Vec::new();
        }
    };
    forward
        .fields
        .iter()
        .map(|f| {
            let table = raw.maps.get(&f.map.as_ref()?.name)?;
            let mut codes: Vec<(&Spanned<String>, &toml::Value)> =
                table.iter().filter(|(k, _)| k.get_ref() != "*").collect();
            codes.sort_by_key(|(k, _)| k.span().start);
            Some(codes.into_iter().map(|(k, v)| (k.get_ref().trim().to_string(), toml_to_json(v))).collect())
        })
        .collect()
}
