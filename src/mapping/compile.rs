//! Loads and compiles `mappings/`: every problem is reported at once, each naming the file, line and key.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::check;
use super::template::{self, Names, Slot};
use super::writer::{Builtins, Writer};
use super::{
    Catalog, Category, ConsentSpec, DateSource, Decision, Field, FieldSource, Mapping, Partner, RESOURCE_TYPES,
    RecordKind, Ref, ResourceSpec, ValueMap, ids,
};
use crate::ingest::{Format, ReadOptions};
use crate::mapping::transform::Transform;

#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("{}:{line}: {key}: {message}", file.display())]
    At { file: PathBuf, line: usize, key: String, message: String },
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPartnerFile {
    partner: RawPartner,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPartner {
    id: Spanned<String>,
    name: String,
    identifier_system: String,
    ods_code: Option<String>,
    charity_number: Option<String>,
    #[serde(default)]
    aliases: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMappingFile {
    mapping: RawHeader,
    #[serde(default)]
    source: RawSource,
    #[serde(default)]
    fields: BTreeMap<String, Spanned<RawField>>,
    #[serde(default)]
    maps: BTreeMap<String, Spanned<toml::Table>>,
    #[serde(default)]
    refs: BTreeMap<String, Spanned<RawRef>>,
    #[serde(default, rename = "resource")]
    resources: Vec<Spanned<RawResource>>,
    consent: Option<Spanned<RawConsent>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConsent {
    person: Option<String>,
    decision: String,
    date: Option<String>,
    date_source: Option<String>,
    #[serde(default)]
    not_asked: Vec<String>,
    withdrawn: Option<String>,
    cito: Option<String>,
    pkb: Option<String>,
    #[serde(default)]
    partners: Vec<String>,
    restrictions: Option<String>,
    #[serde(default)]
    restriction_codes: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeader {
    partner: Spanned<String>,
    kind: RecordKind,
    version: String,
    key: Spanned<Vec<String>>,
    category: Option<Category>,
    patient_visible: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSource {
    format: Option<Format>,
    #[serde(default)]
    files: Vec<String>,
    delimiter: Option<Spanned<String>>,
    sheet: Option<String>,
    records: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn to_vec(&self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s.clone()],
            Self::Many(v) => v.clone(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawField {
    from: Option<OneOrMany>,
    join: Option<Vec<String>>,
    sum: Option<Vec<String>>,
    #[serde(rename = "const")]
    constant: Option<toml::Value>,
    transform: Option<OneOrMany>,
    map: Option<String>,
    default: Option<toml::Value>,
    #[serde(default)]
    required: bool,
    range: Option<[f64; 2]>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRef {
    kind: Option<RecordKind>,
    resource: String,
    key: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResource {
    name: String,
    #[serde(rename = "type")]
    resource_type: String,
    when: Option<String>,
    category: Option<Category>,
    template: toml::Table,
}

/// Collects errors for one file, turning byte offsets into line numbers.
struct Errors<'a> {
    file: &'a Path,
    text: &'a str,
    list: &'a mut Vec<CompileError>,
}

impl Errors<'_> {
    fn line_of(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())].bytes().filter(|&b| b == b'\n').count() + 1
    }

    fn at(&mut self, offset: usize, key: impl Into<String>, message: impl Into<String>) {
        self.list.push(CompileError::At {
            file: self.file.to_path_buf(),
            line: self.line_of(offset),
            key: key.into(),
            message: message.into(),
        });
    }

    /// Offset of `needle` at or after `from`, to point at a placeholder inside a template.
    fn find(&self, from: usize, needle: &str) -> usize {
        self.text.get(from..).and_then(|t| t.find(needle)).map_or(from, |i| from + i)
    }

    fn toml(&mut self, e: &toml::de::Error) {
        let offset = e.span().map_or(0, |s| s.start);
        let key = e
            .span()
            .and_then(|s| self.text.get(s))
            .map(|t| t.lines().next().unwrap_or("").chars().take(40).collect::<String>())
            .unwrap_or_default();
        self.at(offset, key, e.message().to_string());
    }
}

/// The folder under the mappings folder that holds HL7 v2 message definitions instead of a partner.
pub const HL7V2_MESSAGES_FOLDER: &str = "hl7v2";

/// Loads every partner folder under `dir`. Returns all problems found, not just the first.
pub fn load_catalog(dir: &Path) -> Result<Catalog, Vec<CompileError>> {
    let mut errors = Vec::new();
    let mut partners = BTreeMap::new();
    let entries = match sorted_entries(dir) {
        Ok(e) => e,
        Err(message) => return Err(vec![CompileError::File { path: dir.to_path_buf(), message }]),
    };
    // `hl7v2/` holds HL7 v2 message definitions (read by that transport), not a partner's mappings.
    for sub in entries.into_iter().filter(|p| p.is_dir() && !p.ends_with(HL7V2_MESSAGES_FOLDER)) {
        let partner_file = sub.join("partner.toml");
        if !partner_file.exists() {
            errors.push(CompileError::File {
                path: sub.clone(),
                message: "a partner folder needs a partner.toml (see mappings/README.md)".into(),
            });
            continue;
        }
        if let Some(p) = load_partner(&sub, &partner_file, &mut errors) {
            partners.insert(p.id.clone(), p);
        }
    }
    if partners.is_empty() && errors.is_empty() {
        errors.push(CompileError::File { path: dir.to_path_buf(), message: "no partner folders found".into() });
    }
    if errors.is_empty() { Ok(Catalog { dir: dir.to_path_buf(), partners }) } else { Err(errors) }
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read the mappings folder: {e}"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    v.sort();
    Ok(v)
}

fn read(path: &Path, errors: &mut Vec<CompileError>) -> Option<String> {
    std::fs::read_to_string(path)
        .map_err(|e| errors.push(CompileError::File { path: path.to_path_buf(), message: format!("cannot read: {e}") }))
        .ok()
}

fn load_partner(dir: &Path, file: &Path, errors: &mut Vec<CompileError>) -> Option<Partner> {
    let text = read(file, errors)?;
    let before = errors.len();
    let mut errs = Errors { file, text: &text, list: errors };
    let raw: RawPartnerFile = toml::from_str(&text).map_err(|e| errs.toml(&e)).ok()?;
    let p = raw.partner;
    let folder = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    if p.id.get_ref() != folder {
        errs.at(
            p.id.span().start,
            "partner.id",
            format!("\"{}\" does not match the folder name \"{folder}\"", p.id.get_ref()),
        );
    }
    if p.ods_code.is_none() && p.charity_number.is_none() {
        errs.at(0, "partner", "set ods_code or charity_number (or both) so the Organization can be identified");
    }
    let id = p.id.into_inner();
    let builtins = Builtins {
        partner_id: id.clone(),
        partner_org: format!("Organization/{}", ids::organization_id(&id)),
        identifier_system: p.identifier_system.trim_end_matches('/').to_string(),
    };
    let mut mappings = BTreeMap::new();
    let files = sorted_entries(dir).unwrap_or_default();
    for f in files.iter().filter(|f| {
        f.extension().is_some_and(|e| e == "toml")
            && f.file_name() != Some("partner.toml".as_ref())
            && !super::reverse::is_reverse_file(f)
    }) {
        if let Some(m) = load_mapping(f, &id, &builtins, errs.list) {
            if let Some(prev) = mappings.get(&m.kind).map(|p: &Mapping| p.file.clone()) {
                errs.list.push(CompileError::File {
                    path: f.clone(),
                    message: format!("kind \"{}\" is already mapped by {}; one file per kind", m.kind, prev.display()),
                });
            } else {
                mappings.insert(m.kind, m);
            }
        }
    }
    // A kind whose file failed to compile is not reported again by every reference to it.
    let failed: Vec<RecordKind> = files
        .iter()
        .filter_map(|f| f.file_stem().and_then(|s| s.to_str()).and_then(RecordKind::parse))
        .filter(|k| !mappings.contains_key(k))
        .collect();
    resolve_cross_refs(&mut mappings, &failed, errs.list);
    check_about_person(&mappings, errs.list);
    let reverse = super::reverse::load_all(&files, &id, &mappings, errs.list);
    (errors.len() == before).then(|| Partner {
        organization_id: ids::organization_id(&id),
        id,
        name: p.name,
        identifier_system: p.identifier_system.trim_end_matches('/').to_string(),
        ods_code: p.ods_code,
        charity_number: p.charity_number,
        aliases: p.aliases,
        file: file.to_path_buf(),
        mappings,
        reverse,
    })
}

/// Fills in the resource types of references to other kinds, now that all of the partner's kinds are known.
fn resolve_cross_refs(
    mappings: &mut BTreeMap<RecordKind, Mapping>,
    failed: &[RecordKind],
    errors: &mut Vec<CompileError>,
) {
    let types: HashMap<(RecordKind, String), String> = mappings
        .values()
        .flat_map(|m| m.resources.iter().map(move |r| ((m.kind, r.name.clone()), r.resource_type.clone())))
        .collect();
    for m in mappings.values_mut() {
        for r in m.refs.iter_mut().filter(|r| r.sibling.is_none() && !failed.contains(&r.kind)) {
            match types.get(&(r.kind, r.resource.clone())) {
                Some(t) => r.resource_type = t.clone(),
                None => errors.push(CompileError::At {
                    file: m.file.clone(),
                    line: r.line,
                    key: format!("refs.{}", r.name),
                    message: format!("no resource named \"{}\" in this partner's \"{}\" mapping", r.resource, r.kind),
                }),
            }
        }
    }
}

/// Everything but an Organization is about a person, and the connector finds the person (and so their consent)
/// through the resource's reference to their Patient: a template without one would make resources no one's
/// consent governs. Refused here, naming the file, line and resource.
fn check_about_person(mappings: &BTreeMap<RecordKind, Mapping>, errors: &mut Vec<CompileError>) {
    fn refers_to_patient(node: &template::Node, refs: &[Ref]) -> bool {
        // A ref whose type is unknown points at a kind that failed to compile: that error is reported already.
        let is_patient = |slot: &Slot| matches!(slot, Slot::Ref(i) if refs.get(*i).is_some_and(|r| r.resource_type == "Patient" || r.resource_type.is_empty()));
        match node {
            template::Node::Const(_) => false,
            template::Node::Slot(slot) => is_patient(slot),
            template::Node::Interp(parts) => {
                parts.iter().any(|p| matches!(p, template::Part::Slot(slot) if is_patient(slot)))
            }
            template::Node::Object(entries) => entries.iter().any(|(_, n)| refers_to_patient(n, refs)),
            template::Node::Array(items) => items.iter().any(|n| refers_to_patient(n, refs)),
        }
    }
    for m in mappings.values() {
        for (i, spec) in m.resources.iter().enumerate() {
            if matches!(spec.resource_type.as_str(), "Organization" | "Patient")
                || refers_to_patient(&spec.template, &m.refs)
            {
                continue;
            }
            errors.push(CompileError::At {
                file: m.file.clone(),
                line: spec.line,
                key: format!("resource[{i}] ({}).template", spec.name),
                message: format!(
                    "{} resources are about a person, but this template refers to no Patient; add a reference such as subject = {{ reference = \"{{ref.patient}}\" }} with a [refs] entry for the person's Patient, or its consent cannot be checked",
                    spec.resource_type
                ),
            });
        }
    }
}

struct Scope<'a> {
    fields: &'a HashMap<String, usize>,
    refs: &'a HashMap<String, usize>,
}

impl Names for Scope<'_> {
    fn slot(&self, name: &str) -> Result<Slot, String> {
        Ok(match name {
            "partner.id" => Slot::PartnerId,
            "partner.org" => Slot::PartnerOrg,
            "partner.identifier_system" => Slot::PartnerIdentifierSystem,
            "record.key" => Slot::RecordKey,
            "resource.id" => Slot::ResourceId,
            _ => {
                if let Some(r) = name.strip_prefix("ref.") {
                    Slot::Ref(*self.refs.get(r).ok_or_else(|| format!("{{{name}}}: no ref named \"{r}\" in [refs]"))?)
                } else if let Some(&f) = self.fields.get(name) {
                    Slot::Field(f)
                } else {
                    return Err(format!(
                        "{{{name}}}: not a field of this mapping nor a built-in (partner.id, partner.org, partner.identifier_system, record.key, resource.id, ref.NAME)"
                    ));
                }
            }
        })
    }
}

fn load_mapping(file: &Path, partner: &str, builtins: &Builtins, errors: &mut Vec<CompileError>) -> Option<Mapping> {
    let text = read(file, errors)?;
    let before = errors.len();
    let mut e = Errors { file, text: &text, list: errors };
    let raw: RawMappingFile = toml::from_str(&text).map_err(|err| e.toml(&err)).ok()?;
    let h = &raw.mapping;
    if h.partner.get_ref() != partner {
        e.at(
            h.partner.span().start,
            "mapping.partner",
            format!("\"{}\" but the folder is partner \"{partner}\"", h.partner.get_ref()),
        );
    }
    let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
    if stem != h.kind.as_str() {
        e.at(
            0,
            "mapping.kind",
            format!("kind \"{}\" in a file named {stem}.toml; name the file after its kind", h.kind),
        );
    }

    // Value maps.
    let mut maps: HashMap<String, (usize, ValueMap)> = HashMap::new();
    for (name, table) in &raw.maps {
        let offset = table.span().start;
        let mut entries = BTreeMap::new();
        let mut fallback = None;
        for (k, v) in table.get_ref() {
            let json = toml_to_json(v);
            if k == "*" {
                fallback = Some(json);
            } else if entries.insert(fold(k), json).is_some() {
                e.at(offset, format!("maps.{name}.{k}"), "the same code twice (keys ignore case)");
            }
        }
        maps.insert(name.clone(), (offset, ValueMap { name: name.clone(), entries, fallback }));
    }

    // Fields: indexes first, so `sum` may name any field.
    let index: HashMap<String, usize> = raw.fields.keys().enumerate().map(|(i, k)| (k.clone(), i)).collect();
    let mut fields = Vec::new();
    for (name, spanned) in &raw.fields {
        let offset = spanned.span().start;
        let f = spanned.get_ref();
        let key = format!("fields.{name}");
        if !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
            e.at(offset, &key, "field names use lower case letters, digits and _ only");
        }
        let sources = [f.from.is_some(), f.join.is_some(), f.sum.is_some(), f.constant.is_some()];
        let source = match sources.iter().filter(|&&s| s).count() {
            1 => {
                if let Some(from) = &f.from {
                    FieldSource::Columns(from.to_vec())
                } else if let Some(cols) = &f.join {
                    FieldSource::Join(cols.clone())
                } else if let Some(parts) = &f.sum {
                    let mut ids = Vec::new();
                    for p in parts {
                        match index.get(p) {
                            Some(&i) if raw.fields.get(p).is_some_and(|pf| pf.get_ref().sum.is_none()) => ids.push(i),
                            Some(_) => {
                                e.at(offset, &key, format!("sum of \"{p}\", itself a sum; sum the source fields"))
                            }
                            None => e.at(offset, &key, format!("sum names \"{p}\", which is not a field")),
                        }
                    }
                    FieldSource::Sum(ids)
                } else {
                    FieldSource::Const(f.constant.as_ref().map(toml_to_json).unwrap_or_default())
                }
            }
            0 => {
                e.at(offset, &key, "say where the value comes from: from, join, sum or const");
                continue;
            }
            _ => {
                e.at(offset, &key, "use only one of from, join, sum and const");
                continue;
            }
        };
        let mut transforms = Vec::new();
        for t in f.transform.iter().flat_map(OneOrMany::to_vec) {
            match Transform::from_name(&t) {
                Some(t) => transforms.push(t),
                None => e.at(
                    offset,
                    format!("{key}.transform"),
                    format!("unknown transform \"{t}\" (known: {})", Transform::NAMES.join(", ")),
                ),
            }
        }
        let map = match &f.map {
            Some(m) => match maps.get(m) {
                Some((_, vm)) => {
                    Some(ValueMap { name: vm.name.clone(), entries: vm.entries.clone(), fallback: vm.fallback.clone() })
                }
                None => {
                    e.at(offset, format!("{key}.map"), format!("no [maps.{m}] in this file"));
                    None
                }
            },
            None => None,
        };
        let range = f.range.map(|[a, b]| (a, b));
        if range.is_some_and(|(a, b)| a > b) {
            e.at(offset, format!("{key}.range"), "the minimum is above the maximum");
        }
        fields.push(Field {
            name: name.clone(),
            source,
            transforms,
            map,
            default: f.default.as_ref().map(toml_to_json),
            required: f.required,
            range,
        });
    }
    let field_ids = |names: &[String], e: &mut Errors, offset: usize, key: &str| -> Vec<usize> {
        names
            .iter()
            .filter_map(|n| {
                let id = index.get(n).copied();
                if id.is_none() {
                    e.at(offset, key, format!("\"{n}\" is not a field of this mapping"));
                }
                id
            })
            .collect()
    };
    let key = field_ids(h.key.get_ref(), &mut e, h.key.span().start, "mapping.key");
    if h.key.get_ref().is_empty() {
        e.at(h.key.span().start, "mapping.key", "name at least one field that identifies the source record");
    }

    // Resources (names first, so refs can point at siblings).
    let resource_names: Vec<&str> = raw.resources.iter().map(|r| r.get_ref().name.as_str()).collect();
    if raw.resources.is_empty() {
        e.at(0, "resource", "the mapping produces no [[resource]]");
    }

    let mut refs = Vec::new();
    let mut ref_index = HashMap::new();
    for (name, spanned) in &raw.refs {
        let offset = spanned.span().start;
        let r = spanned.get_ref();
        let rkey = format!("refs.{name}");
        let kind = r.kind.unwrap_or(h.kind);
        let sibling = if kind == h.kind { resource_names.iter().position(|n| *n == r.resource) } else { None };
        if kind == h.kind && sibling.is_none() {
            e.at(offset, &rkey, format!("no [[resource]] named \"{}\" in this file", r.resource));
        }
        if kind > h.kind {
            e.at(
                offset,
                &rkey,
                format!("kind \"{kind}\" is mapped after \"{}\"; a reference may only point at an earlier kind (order: person, carer, referral, episode, contact, goals, reqol, consent)", h.kind),
            );
        }
        let key_fields = match &r.key {
            Some(k) => field_ids(k, &mut e, offset, &rkey),
            None if sibling.is_some() => key.clone(),
            None => {
                e.at(offset, &rkey, "say which fields of this row give the target's key: key = [...]");
                Vec::new()
            }
        };
        let resource_type = sibling.map(|i| raw.resources[i].get_ref().resource_type.clone()).unwrap_or_default();
        ref_index.insert(name.clone(), refs.len());
        let line = e.line_of(offset);
        refs.push(Ref {
            name: name.clone(),
            kind,
            resource: r.resource.clone(),
            resource_type,
            key: key_fields,
            sibling,
            line,
        });
    }

    let scope = Scope { fields: &index, refs: &ref_index };
    let default_category = h.category.unwrap_or(Category::GeneralHealth);
    let mut resources = Vec::new();
    for (i, spanned) in raw.resources.iter().enumerate() {
        let offset = spanned.span().start;
        let r = spanned.get_ref();
        let rkey = format!("resource[{i}] ({})", r.name);
        if resource_names.iter().filter(|n| **n == r.name).count() > 1 {
            e.at(offset, &rkey, "two resources share this name; names make ids and must be unique");
        }
        if !RESOURCE_TYPES.contains(&r.resource_type.as_str()) {
            e.at(
                offset,
                format!("{rkey}.type"),
                format!("unsupported resource type \"{}\" (supported: {})", r.resource_type, RESOURCE_TYPES.join(", ")),
            );
        }
        for k in ["resourceType", "id"] {
            if r.template.contains_key(k) {
                e.at(offset, format!("{rkey}.template.{k}"), "set by the engine; remove it");
            }
        }
        if r.template.get("meta").and_then(|m| m.get("source")).is_some() {
            e.at(
                offset,
                format!("{rkey}.template.meta.source"),
                "set by the engine (mapping name and version); remove it",
            );
        }
        let when = r.when.as_ref().and_then(|w| {
            let id = index.get(w).copied();
            if id.is_none() {
                e.at(offset, format!("{rkey}.when"), format!("\"{w}\" is not a field of this mapping"));
            }
            id
        });
        let template = match template::compile(&toml::Value::Table(r.template.clone()), &scope) {
            Ok(t) => t,
            Err(msg) => {
                let needle = msg.split(':').next().unwrap_or_default().to_string();
                let at = e.find(offset, &needle);
                e.at(at, format!("{rkey}.template"), msg);
                continue;
            }
        };
        resources.push(ResourceSpec {
            name: r.name.clone(),
            resource_type: r.resource_type.clone(),
            when,
            category: r.category.unwrap_or(default_category),
            template,
            compiled: None,
            line: e.line_of(offset),
        });
    }

    // Each template compiled for writing and checked against the FHIR model once, here; rows then need only
    // their values checked (see check.rs).
    let meta_source = format!("{}{partner}/{}@{}", crate::model::fhir::MAPPING_SOURCE_PREFIX, h.kind, h.version);
    if e.list.len() == before {
        for (i, spec) in resources.iter_mut().enumerate() {
            let Ok(writer) = Writer::compile(&spec.template, &spec.resource_type, &meta_source, builtins) else {
                continue;
            };
            match check::prepare(writer, &fields, &refs) {
                Ok(c) => spec.compiled = Some(c),
                Err(unknown) => {
                    let offset = raw.resources[i].span().start;
                    for problem in unknown {
                        // Point at the line that names the element (`name[0].surname` -> `surname`).
                        let at = match &problem {
                            fhir_check::Problem::UnknownElement { path } => {
                                let last = path.rsplit('.').next().unwrap_or(path);
                                e.find(offset, last.split('[').next().unwrap_or(last))
                            }
                            _ => offset,
                        };
                        e.at(at, format!("resource[{i}] ({}).template", spec.name), problem.to_string());
                    }
                }
            }
        }
    }

    let patient_visible = h.patient_visible.as_ref().and_then(|f| {
        let id = index.get(f).copied();
        if id.is_none() {
            e.at(0, "mapping.patient_visible", format!("\"{f}\" is not a field of this mapping"));
        }
        id
    });
    let consent = raw.consent.as_ref().and_then(|c| {
        let offset = c.span().start;
        let c = c.get_ref();
        let mut field = |key: &str, name: &str| {
            let id = index.get(name).copied();
            if id.is_none() {
                e.at(offset, format!("consent.{key}"), format!("\"{name}\" is not a field of this mapping"));
            }
            id
        };
        let decision = field("decision", &c.decision);
        let date = c.date.as_ref().map(|f| field("date", f));
        let withdrawn = c.withdrawn.as_ref().map(|f| field("withdrawn", f));
        let cito = c.cito.as_ref().map(|f| field("cito", f));
        let pkb = c.pkb.as_ref().map(|f| field("pkb", f));
        let partners: Vec<Option<usize>> = c.partners.iter().map(|f| field("partners", f)).collect();
        let restrictions = c.restrictions.as_ref().map(|f| field("restrictions", f));
        let mut restriction_codes = BTreeMap::new();
        for (text, code) in &c.restriction_codes {
            match crate::mapping::Restriction::parse(code) {
                Some(r) => {
                    restriction_codes.insert(text.trim().to_lowercase(), r);
                }
                None => e.at(
                    offset,
                    format!("consent.restriction_codes.\"{text}\""),
                    format!(
                        "\"{code}\" is not a restriction (general_health, mental_health, sexual_health, social_care, third_party)"
                    ),
                ),
            }
        }
        let person_name = c.person.clone().unwrap_or_else(|| "patient".into());
        let person_ref = ref_index.get(&person_name).copied();
        if person_ref.is_none() {
            e.at(offset, "consent.person", format!("\"{person_name}\" is not a ref of this mapping (see [refs])"));
        }
        if h.kind != RecordKind::Consent {
            e.at(offset, "consent", "only a consent mapping can state consent");
        }
        let dated = match c.date_source.as_deref().map(|d| (d, DateSource::parse(d))) {
            None => DateSource::Export,
            Some((_, Some(d))) => d,
            Some((d, None)) => {
                e.at(
                    offset,
                    "consent.date_source",
                    format!("\"{d}\" is not a date source; use \"export\" (with date = \"FIELD\") or \"first_seen\""),
                );
                DateSource::Export
            }
        };
        match (dated, &c.date) {
            (DateSource::Export, None) => e.at(
                offset,
                "consent.date",
                "say which field holds the date of the decision (date = \"FIELD\"), or, when the export has no such date, set date_source = \"first_seen\" to date each answer when the connector first sees it",
            ),
            (DateSource::FirstSeen, Some(_)) => e.at(
                offset,
                "consent.date_source",
                "date_source = \"first_seen\" and a date field are both given; keep the date field when the export has one, else remove it",
            ),
            _ => {}
        }
        if dated == DateSource::FirstSeen && c.withdrawn.is_some() {
            e.at(
                offset,
                "consent.withdrawn",
                "a statement dated when first seen has no dates from the export; remove withdrawn, or give both date and withdrawn fields and drop date_source",
            );
        }
        let mut not_asked = Vec::new();
        for v in &c.not_asked {
            let folded = fold(v);
            if folded.is_empty() {
                e.at(offset, "consent.not_asked", "an empty value; a blank decision already means \"no statement\"");
            } else if Decision::parse(&folded).is_some() {
                e.at(
                    offset,
                    "consent.not_asked",
                    format!("\"{v}\" is a consent decision word; it cannot also mean \"not asked\""),
                );
            } else {
                not_asked.push(folded);
            }
        }
        if let Some(map) = decision.and_then(|d| fields.get(d)).and_then(|f| f.map.as_ref()) {
            for v in not_asked.iter().filter(|v| map.entries.contains_key(*v)) {
                e.at(
                    offset,
                    "consent.not_asked",
                    format!(
                        "\"{v}\" is also a key of [maps.{}]; a value cannot be both a decision and \"not asked\"",
                        map.name
                    ),
                );
            }
        }
        Some(ConsentSpec {
            decision: decision?,
            date: date.flatten(),
            dated,
            not_asked,
            withdrawn: withdrawn.flatten(),
            cito: cito.flatten(),
            pkb: pkb.flatten(),
            partners: partners.into_iter().flatten().collect(),
            restrictions: restrictions.flatten(),
            restriction_codes,
            person_ref: person_ref?,
        })
    });
    if h.kind == RecordKind::Consent && raw.consent.is_none() {
        e.at(
            0,
            "consent",
            "a consent mapping needs a [consent] section saying which fields state the decision; without it no one's consent is known and nothing is shared",
        );
    }

    let delimiter = raw.source.delimiter.as_ref().and_then(|d| match d.get_ref().as_str() {
        "tab" | "\t" => Some(b'\t'),
        s if s.len() == 1 && s.is_ascii() => Some(s.as_bytes()[0]),
        _ => {
            e.at(d.span().start, "source.delimiter", "one ASCII character, or \"tab\"");
            None
        }
    });
    if errors.len() != before {
        return None;
    }
    Some(Mapping {
        file: file.to_path_buf(),
        partner: partner.to_string(),
        kind: h.kind,
        version: h.version.clone(),
        category: default_category,
        read: ReadOptions {
            format: raw.source.format,
            delimiter,
            sheet: raw.source.sheet,
            records: raw.source.records,
            max_bytes: None,
        },
        files: raw.source.files,
        meta_source,
        fields,
        key,
        refs,
        resources,
        patient_visible,
        consent,
    })
}

/// Folds a value as value maps and `not_asked` compare it: trimmed and lower case.
pub(crate) fn fold(s: &str) -> String {
    s.trim().to_lowercase()
}

pub(crate) fn toml_to_json(v: &toml::Value) -> serde_json::Value {
    match v {
        toml::Value::String(s) => serde_json::Value::String(s.clone()),
        toml::Value::Integer(i) => serde_json::Value::from(*i),
        toml::Value::Float(f) => {
            serde_json::Number::from_f64(*f).map_or(serde_json::Value::Null, serde_json::Value::Number)
        }
        toml::Value::Boolean(b) => serde_json::Value::Bool(*b),
        toml::Value::Datetime(d) => serde_json::Value::String(d.to_string()),
        toml::Value::Array(a) => serde_json::Value::Array(a.iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => {
            serde_json::Value::Object(t.iter().map(|(k, v)| (k.clone(), toml_to_json(v))).collect())
        }
    }
}
