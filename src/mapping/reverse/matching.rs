//! Matching a forward template against a resource, binding each placeholder to the value it produced.
//!
//! Below the resource's top level an element matches as a unit: its constants must be there and equal, so
//! they pick which list item a template entry made (telecom `use = "mobile"` against `use = "home"`,
//! identifiers by system) and a `length` in hours never binds minutes. At the top level each element is
//! matched on its own, so a resource another partner's mapping made (with another `status` constant, or no
//! `active`) still gives what it shares with this template. Elements the template does not have (`meta`, `id`,
//! another partner's extensions) are ignored.

use serde_json::Value;

use super::super::Partner;
use super::super::template::{Node, Part, Slot};

/// What the template's placeholders matched in one resource.
#[derive(Debug, Clone)]
pub(super) struct Bound {
    /// Per field of the forward mapping: its value as the template wrote it (a FHIR value).
    pub fields: Vec<Option<Value>>,
    /// Per ref: the reference (`Patient/<id>`).
    pub refs: Vec<Option<String>>,
    /// `{record.key}`, when the template writes it.
    pub record_key: Option<String>,
}

impl Bound {
    pub fn new(fields: usize, refs: usize) -> Self {
        Self { fields: vec![None; fields], refs: vec![None; refs], record_key: None }
    }
}

/// The partner's own values of the built-in placeholders.
struct Ctx<'a> {
    id: &'a str,
    org: String,
    system: &'a str,
}

/// Binds what `template` produced in `resource`. Binds nothing from a resource that is not an object.
pub(super) fn match_resource(template: &Node, resource: &Value, partner: &Partner, b: &mut Bound) {
    let ctx = Ctx {
        id: &partner.id,
        org: format!("Organization/{}", partner.organization_id),
        system: &partner.identifier_system,
    };
    let (Node::Object(entries), Value::Object(obj)) = (template, resource) else { return };
    for (key, child) in entries {
        let Some(v) = obj.get(key) else { continue };
        let mut trial = b.clone();
        if node(child, v, &ctx, &mut trial, false) {
            *b = trial;
        }
    }
}

/// Matches one element as a unit. `exact`: the partner's built-ins (`{partner.identifier_system}`,
/// `{partner.org}`) must be the partner's own; otherwise they match any value, as another partner's
/// resources carry their own.
fn node(n: &Node, v: &Value, ctx: &Ctx, b: &mut Bound, exact: bool) -> bool {
    match n {
        Node::Const(c) => same(c, v),
        Node::Slot(s) => match v {
            Value::String(text) => slot(*s, text, ctx, b, exact),
            Value::Number(_) | Value::Bool(_) => match s {
                Slot::Field(i) => bind(&mut b.fields[*i], v),
                _ => false,
            },
            _ => false,
        },
        Node::Interp(parts) => v.as_str().is_some_and(|text| interp(parts, text, ctx, b, exact)),
        Node::Object(entries) => {
            let Some(obj) = v.as_object() else { return false };
            // The engine drops an object whose data all came up empty, so one it wrote holds some of it: an
            // object with none of this one's data is something else (another coding, another identifier).
            let mut holds_data = !uses_data(n);
            for (key, child) in entries {
                match obj.get(key) {
                    Some(cv) if node(child, cv, ctx, b, exact) => holds_data |= uses_data(child),
                    Some(_) => return false,
                    None if always_present(child) => return false,
                    None => {}
                }
            }
            holds_data
        }
        Node::Array(entries) => {
            let Some(items) = v.as_array() else { return false };
            let mut used = vec![false; items.len()];
            let mut matched = false;
            for entry in entries {
                // The partner's own items first, so its own identifier wins over another partner's.
                let passes: &[bool] = if exact { &[true] } else { &[true, false] };
                let found = passes.iter().any(|&pass| {
                    items.iter().enumerate().any(|(j, item)| {
                        if used[j] {
                            return false;
                        }
                        let mut trial = b.clone();
                        let ok = node(entry, item, ctx, &mut trial, pass);
                        if ok {
                            *b = trial;
                            used[j] = true;
                        }
                        ok
                    })
                });
                if !found && always_present(entry) {
                    return false;
                }
                matched |= found;
            }
            // Likewise a list the engine wrote has an item some entry made.
            matched || items.is_empty()
        }
    }
}

/// Matches a placeholder against text.
fn slot(s: Slot, text: &str, ctx: &Ctx, b: &mut Bound, exact: bool) -> bool {
    let builtin = |own: &str| !text.is_empty() && (!exact || text == own);
    match s {
        Slot::Field(i) => bind(&mut b.fields[i], &Value::String(text.to_string())),
        Slot::Ref(i) => match &b.refs[i] {
            Some(old) => old == text,
            None => {
                b.refs[i] = Some(text.to_string());
                true
            }
        },
        Slot::PartnerId => builtin(ctx.id),
        Slot::PartnerOrg => builtin(&ctx.org),
        Slot::PartnerIdentifierSystem => builtin(ctx.system),
        Slot::RecordKey => match &b.record_key {
            Some(old) => old == text,
            None => {
                b.record_key = Some(text.to_string());
                true
            }
        },
        Slot::ResourceId => !text.is_empty(),
    }
}

/// Matches an interpolated string: literal parts must be there, placeholders take what lies between them
/// (never nothing: an empty value is absent, and an absent value removes the whole string). Where a split is
/// ambiguous the first that binds consistently wins.
fn interp(parts: &[Part], text: &str, ctx: &Ctx, b: &mut Bound, exact: bool) -> bool {
    match parts.split_first() {
        None => text.is_empty(),
        Some((Part::Text(t), rest)) => text.strip_prefix(t.as_str()).is_some_and(|r| interp(rest, r, ctx, b, exact)),
        Some((Part::Slot(s), rest)) => {
            let ends: Vec<usize> = match rest.first() {
                None => vec![text.len()],
                Some(Part::Text(t)) => {
                    text.char_indices().map(|(i, _)| i).filter(|&i| text[i..].starts_with(t.as_str())).collect()
                }
                Some(Part::Slot(_)) => text.char_indices().map(|(i, _)| i).skip(1).collect(),
            };
            for end in ends.into_iter().filter(|&e| e > 0) {
                let mut trial = b.clone();
                if slot(*s, &text[..end], ctx, &mut trial, exact) && interp(rest, &text[end..], ctx, &mut trial, exact)
                {
                    *b = trial;
                    return true;
                }
            }
            false
        }
    }
}

/// Binds a field, or checks a second placeholder of it agrees with the first.
fn bind(slot: &mut Option<Value>, v: &Value) -> bool {
    match slot {
        Some(old) => same(old, v),
        None => {
            *slot = Some(v.clone());
            true
        }
    }
}

/// Equal as values; numbers by value (`60` and `60.0`), and text against a typed value by its text (an
/// interpolated number is text in the resource).
pub(super) fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::String(text), Value::Number(n)) | (Value::Number(n), Value::String(text)) => {
            text.trim().parse::<f64>().ok() == n.as_f64()
        }
        (Value::String(text), Value::Bool(v)) | (Value::Bool(v), Value::String(text)) => {
            text.as_str() == if *v { "true" } else { "false" }
        }
        _ => a == b,
    }
}

fn is_data(s: Slot) -> bool {
    matches!(s, Slot::Field(_) | Slot::Ref(_))
}

/// Whether an element has placeholders for row data (fields, references), which may come up empty.
fn uses_data(n: &Node) -> bool {
    match n {
        Node::Const(_) => false,
        Node::Slot(s) => is_data(*s),
        Node::Interp(parts) => parts.iter().any(|p| matches!(p, Part::Slot(s) if is_data(*s))),
        Node::Object(entries) => entries.iter().any(|(_, c)| uses_data(c)),
        Node::Array(items) => items.iter().any(uses_data),
    }
}

/// Whether the engine always writes this element (it uses no data, so nothing can remove it).
fn always_present(n: &Node) -> bool {
    fn writes_something(n: &Node) -> bool {
        match n {
            Node::Const(_) | Node::Slot(_) | Node::Interp(_) => true,
            Node::Object(entries) => entries.iter().any(|(_, c)| writes_something(c)),
            Node::Array(items) => items.iter().any(writes_something),
        }
    }
    !uses_data(n) && writes_something(n)
}

/// Every placeholder in a template.
pub(super) fn slots(n: &Node, out: &mut Vec<Slot>) {
    match n {
        Node::Const(_) => {}
        Node::Slot(s) => out.push(*s),
        Node::Interp(parts) => out.extend(parts.iter().filter_map(|p| match p {
            Part::Slot(s) => Some(*s),
            Part::Text(_) => None,
        })),
        Node::Object(entries) => entries.iter().for_each(|(_, c)| slots(c, out)),
        Node::Array(items) => items.iter().for_each(|c| slots(c, out)),
    }
}
