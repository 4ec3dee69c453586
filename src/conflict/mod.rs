//! Conflicts: a resource changed by its partner and, since the connector last wrote it, by someone else on the
//! destination (a clinician in Cito, a patient in PKB). This module owns the three-way comparison, element by
//! element (a resource's top-level elements: `name`, `telecom`, `address`, ...):
//!
//! - the partner's side is judged against salted fingerprints of the partner's version last reflected there
//!   (`ledger.source_fp`), so the state store keeps no values, only hashes;
//! - the destination's side is judged against the same base: an element whose value there is not the
//!   partner's old value was changed by someone else (now, or earlier and kept).
//!
//! Elements only one side changed are merged when the config allows it for the resource type
//! (`[conflicts] auto_merge`); an element both changed to different values is a conflict, and the connector
//! never overwrites it: an admin decides (`connector conflicts resolve`), reading the conflict in words
//! (`view`: whose record, what each side changed; `readable`: FHIR elements as a person reads them), on a
//! terminal (`text`) or as a page (`report`).

pub mod readable;
pub mod report;
pub mod text;
pub mod view;

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

/// Elements that are not content: identity, and what servers add.
const NOT_ELEMENTS: [&str; 3] = ["resourceType", "id", "text"];

/// What a destination adds to `meta` and a comparison ignores.
pub(crate) const SERVER_META: [&str; 3] = ["versionId", "lastUpdated", "source"];

/// The resource as content: without what a server adds (`meta.versionId`, `meta.lastUpdated`, `meta.source`,
/// a generated narrative).
pub fn comparable(resource: &Value) -> Value {
    let mut r = resource.clone();
    if let Some(o) = r.as_object_mut() {
        o.remove("text");
        if let Some(meta) = o.get_mut("meta").and_then(Value::as_object_mut) {
            for k in SERVER_META {
                meta.remove(k);
            }
            if meta.is_empty() {
                o.remove("meta");
            }
        }
    }
    r
}

/// JSON with object keys sorted at every level: the same content always gives the same text.
pub fn canonical(v: &Value) -> String {
    let mut out = Vec::new();
    write_canonical(v, &mut out);
    // Only UTF-8 goes in: the keys and strings as serde_json escapes them, and its numbers.
    String::from_utf8(out).unwrap_or_default()
}

/// Writes `v` as [`canonical`] text. serde_json's `Map` keeps insertion order when `preserve_order` is on (a
/// dependency may turn it on), so the keys are sorted here either way; nothing is copied on the way.
fn write_canonical(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(m) => write_object(m, |_, _| true, |_, v, out| write_canonical(v, out), out),
        Value::Array(a) => write_array(a, write_canonical, out),
        leaf => write_leaf(leaf, out),
    }
}

/// Writes `items` as a JSON array, each with `write`.
pub(crate) fn write_array<T>(items: &[T], write: impl Fn(&T, &mut Vec<u8>), out: &mut Vec<u8>) {
    out.push(b'[');
    for (n, x) in items.iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        write(x, out);
    }
    out.push(b']');
}

/// Writes the members of `m` that `keep` keeps, keys sorted, as a canonical object; `value` writes each.
fn write_object(
    m: &Map<String, Value>,
    keep: impl Fn(&str, &Value) -> bool,
    value: impl Fn(&str, &Value, &mut Vec<u8>),
    out: &mut Vec<u8>,
) {
    let mut members: Vec<(&String, &Value)> = m.iter().filter(|(k, v)| keep(k, v)).collect();
    members.sort_unstable_by(|a, b| a.0.cmp(b.0));
    out.push(b'{');
    for (n, (k, v)) in members.into_iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        write_leaf_str(k, out);
        out.push(b':');
        value(k, v, out);
    }
    out.push(b'}');
}

fn write_leaf_str(s: &str, out: &mut Vec<u8>) {
    // Writing to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

fn write_leaf(v: &Value, out: &mut Vec<u8>) {
    let _ = serde_json::to_writer(&mut *out, v);
}

/// Writes [`comparable`]`(resource)` as [`canonical`] text, without building the comparable copy.
fn write_comparable(resource: &Value, out: &mut Vec<u8>) {
    let Some(o) = resource.as_object() else { return write_canonical(resource, out) };
    write_object(o, |k, v| k != "text" && comparable_meta(k, v), write_comparable_member, out);
}

/// Whether member `k` of a resource is left in [`comparable`] as far as `meta` goes: a `meta` left empty
/// without what the server added is left out whole.
fn comparable_meta(k: &str, v: &Value) -> bool {
    k != "meta" || v.as_object().is_none_or(|meta| meta.keys().any(|k| !SERVER_META.contains(&k.as_str())))
}

/// Writes member `k` of a resource as [`comparable`] holds it, as [`canonical`] text: `meta` without what the
/// server added, anything else as it is.
fn write_comparable_member(k: &str, v: &Value, out: &mut Vec<u8>) {
    match (k, v) {
        ("meta", Value::Object(meta)) => {
            write_object(meta, |k, _| !SERVER_META.contains(&k), |_, v, out| write_canonical(v, out), out);
        }
        _ => write_canonical(v, out),
    }
}

/// Hash of a resource's content as a destination holds it (see [`comparable`]): the sha256 of its canonical
/// text, written straight from the resource.
pub fn content_hash(resource: &Value) -> String {
    let mut text = Vec::with_capacity(4096);
    write_comparable(resource, &mut text);
    sha256_hex_of(&text)
}

/// The sha256 of `bytes`, in lowercase hex.
pub(crate) fn sha256_hex_of(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    crate::store::hex(&Sha256::digest(bytes))
}

/// Salted fingerprint of one element's value (12 hex digits: enough to tell values apart, too short and
/// salted to look a value up): the sha256 of the salt, the name and the value's canonical text (as it is in
/// [`comparable`]), each after a unit separator. `text` is scratch space, reused between elements.
fn fingerprint(salt: &str, name: &str, value: &Value, text: &mut Vec<u8>) -> String {
    use sha2::{Digest, Sha256};
    text.clear();
    text.extend_from_slice(salt.as_bytes());
    text.push(0x1f);
    text.extend_from_slice(name.as_bytes());
    text.push(0x1f);
    write_comparable_member(name, value, text);
    crate::store::hex(&Sha256::digest(&text[..])[..6])
}

/// Element name -> fingerprint.
pub type Fingerprints = BTreeMap<String, String>;

/// The fingerprints of a resource's elements, as they are in [`comparable`] (no copy of it is made).
pub fn fingerprints(salt: &str, resource: &Value) -> Fingerprints {
    let Some(o) = resource.as_object() else { return Fingerprints::new() };
    let mut text = Vec::with_capacity(1024);
    o.iter()
        .filter(|(k, v)| !NOT_ELEMENTS.contains(&k.as_str()) && comparable_meta(k, v))
        .map(|(k, v)| (k.clone(), fingerprint(salt, k, v, &mut text)))
        .collect()
}

pub fn encode(fp: &Fingerprints) -> String {
    serde_json::to_string(fp).unwrap_or_else(|_| "{}".into())
}

pub fn decode(text: Option<&str>) -> Option<Fingerprints> {
    text.and_then(|t| serde_json::from_str(t).ok())
}

/// The elements of `resource` that differ from `base` (added, changed or removed).
pub fn changed_from(salt: &str, base: &Fingerprints, resource: &Value) -> Vec<String> {
    let now = fingerprints(salt, resource);
    let names: BTreeSet<&String> = now.keys().chain(base.keys()).collect();
    names.into_iter().filter(|n| now.get(*n) != base.get(*n)).cloned().collect()
}

/// The outcome of comparing the partner's new version with the destination's current one.
#[derive(Debug, Clone, PartialEq)]
pub enum Merge {
    /// Write this (the partner's changes on top of the destination's version).
    Write { body: Value, kept_remote: Vec<String> },
    /// The destination already holds the outcome: nothing to write.
    Unchanged { kept_remote: Vec<String> },
    /// These elements changed on both sides (or, with merging off, the two sides changed different ones).
    Conflict { elements: Vec<String> },
}

/// How to compare.
#[derive(Debug, Clone, Copy)]
pub struct Rules<'a> {
    pub salt: &'a str,
    /// Merge changes to different elements (`[conflicts] auto_merge` lists the type).
    pub auto_merge: bool,
    /// The destination holds a copy the connector wrote before its last write (restored from a backup,
    /// replayed): nobody edited it, so the partner's version replaces it whole.
    pub stale: bool,
}

/// Three-way comparison. `base`: fingerprints of the partner's version last reflected at the destination
/// (`None` when unknown: every difference is then treated as changed on both sides). `source`: the partner's
/// new version as it would be sent. `remote`: the destination's current version.
pub fn three_way(rules: Rules<'_>, base: Option<&Fingerprints>, source: &Value, remote: &Value) -> Merge {
    let s_fp = fingerprints(rules.salt, source);
    let r_fp = fingerprints(rules.salt, remote);
    if rules.stale {
        return if s_fp == r_fp {
            Merge::Unchanged { kept_remote: vec![] }
        } else {
            Merge::Write { body: source.clone(), kept_remote: vec![] }
        };
    }
    let names: BTreeSet<&String> =
        s_fp.keys().chain(r_fp.keys()).chain(base.into_iter().flat_map(|b| b.keys())).collect();
    let mut conflicts = Vec::new();
    let mut partner_changed = Vec::new();
    let mut kept_remote = Vec::new();
    for name in names {
        let s = s_fp.get(name);
        let r = r_fp.get(name);
        if s == r {
            continue;
        }
        let (p_changed, r_changed) = match base {
            Some(b) => (s != b.get(name), r != b.get(name)),
            None => (true, true),
        };
        match (p_changed, r_changed) {
            (true, true) => conflicts.push(name.clone()),
            (true, false) => partner_changed.push(name.clone()),
            (false, true) => kept_remote.push(name.clone()),
            (false, false) => {}
        }
    }
    if !conflicts.is_empty() {
        return Merge::Conflict { elements: conflicts };
    }
    if !rules.auto_merge && !kept_remote.is_empty() && !partner_changed.is_empty() {
        let mut elements = partner_changed;
        elements.extend(kept_remote);
        elements.sort();
        return Merge::Conflict { elements };
    }
    if partner_changed.is_empty() {
        return Merge::Unchanged { kept_remote };
    }
    Merge::Write { body: overlay(remote, source, &partner_changed), kept_remote }
}

/// The destination's version with `names` taken from the partner's (removed where the partner has none).
fn overlay(remote: &Value, source: &Value, names: &[String]) -> Value {
    let mut body = comparable(remote);
    if let (Some(out), Some(src)) = (body.as_object_mut(), source.as_object()) {
        for name in names {
            match src.get(name) {
                Some(v) => {
                    out.insert(name.clone(), v.clone());
                }
                None => {
                    out.remove(name);
                }
            }
        }
        if let Some(id) = src.get("id") {
            out.insert("id".into(), id.clone());
        }
    }
    body
}

/// The resolved version when an admin keeps one side of a conflict: `source` puts every element the partner
/// changed (the conflicting ones included) on top of the destination's version; with merging off, the
/// partner's version whole. `remote` keeps the destination's version as it is.
pub fn resolve_keep_source(rules: Rules<'_>, base: Option<&Fingerprints>, source: &Value, remote: &Value) -> Value {
    if !rules.auto_merge || base.is_none() {
        return source.clone();
    }
    let base = base.cloned().unwrap_or_default();
    overlay(remote, source, &changed_from(rules.salt, &base, source))
}

#[cfg(test)]
mod tests;
