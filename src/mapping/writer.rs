//! Templates compiled for writing: each `[[resource]]` template becomes a tree of JSON pieces written out once at
//! load and placeholders ("leaves"), which writes a resource's text straight into a buffer, with no
//! `serde_json::Value` per row. The text is byte for byte what serde_json writes for the `Value` that
//! [`template::eval`](super::template::eval) and the engine's finishing step build: compact, object keys sorted,
//! and an element whose placeholders all came up empty pruned the same way (see [`Writer::write`]).

use std::fmt::Write as _;

use serde_json::Value;

use super::template::{Node, Part, Slot};

/// The values a row gives a template's placeholders.
pub struct RowData<'a> {
    pub fields: &'a [Option<Value>],
    pub refs: &'a [Option<String>],
    pub key: &'a str,
    pub id: &'a str,
}

/// The partner's built-in placeholders, the same for every row (folded into the written-out pieces).
#[derive(Debug, Clone)]
pub struct Builtins {
    pub partner_id: String,
    pub partner_org: String,
    pub identifier_system: String,
}

impl Builtins {
    fn constant(&self, slot: Slot) -> Option<&str> {
        match slot {
            Slot::PartnerId => Some(&self.partner_id),
            Slot::PartnerOrg => Some(&self.partner_org),
            Slot::PartnerIdentifierSystem => Some(&self.identifier_system),
            Slot::Field(_) | Slot::Ref(_) | Slot::RecordKey | Slot::ResourceId => None,
        }
    }
}

/// What a leaf held in one row, as the writer saw it (for the per-row checks).
#[derive(Debug, Clone, Copy)]
pub enum Seen<'a> {
    Absent,
    Str(&'a str),
    /// A value that is not a string (a number, a yes/no, or a list or object from a value map).
    Json(&'a Value),
    /// A list (split_lines) spread into the list the placeholder stands in.
    Spread(&'a [Value]),
}

/// A placeholder of the template, at one place in it.
#[derive(Debug, Clone)]
pub struct Leaf {
    pub kind: LeafKind,
    /// The object key the leaf is the value of, when it is directly an object member (not a list item).
    pub key: Option<String>,
    /// The leaf is a value of the top-level `identifier` list's items (`identifier[n].value` or `.system`).
    pub identifier_part: bool,
}

#[derive(Debug, Clone)]
pub enum LeafKind {
    Slot(Slot),
    /// Text with placeholders; the built-ins that never change are already folded into the text.
    Interp(Vec<Part>),
}

impl LeafKind {
    fn uses_data(&self) -> bool {
        match self {
            LeafKind::Slot(s) => is_data(*s),
            LeafKind::Interp(parts) => parts.iter().any(|p| matches!(p, Part::Slot(s) if is_data(*s))),
        }
    }
}

fn is_data(s: Slot) -> bool {
    matches!(s, Slot::Field(_) | Slot::Ref(_))
}

#[derive(Debug)]
enum W {
    /// Constant JSON, written out at load.
    Lit(Box<str>),
    /// An element that is never present (an empty table or list in the template).
    Never,
    Leaf(u32),
    /// Members in key order; each key already written out as `"key":`.
    Object(Vec<(Box<str>, W)>),
    Array(Vec<W>),
}

/// A template compiled for writing.
#[derive(Debug)]
pub struct Writer {
    /// The template's members in key order, with the engine's own (`id`, `meta`, `resourceType`) merged in.
    top: Vec<Top>,
    leaves: Vec<Leaf>,
    /// `{"source":"..."}`: the `meta` the engine sets when the template's own is absent.
    bare_meta: Box<str>,
    resource_type: Box<str>,
    /// `reference` strings that are constant in the template, as the run remembers references.
    pub const_refs: Vec<super::state::RefKey>,
}

#[derive(Debug)]
enum Top {
    Member(Box<str>, W),
    Id,
    ResourceType,
    /// The template's own `meta` members (in key order, `source` merged in), or none.
    Meta(Option<Vec<(Box<str>, MetaMember)>>),
}

#[derive(Debug)]
enum MetaMember {
    Template(W),
    Source,
}

/// Why a template cannot be compiled for writing; the engine then builds the resource as a `Value`.
#[derive(Debug)]
pub struct Unsupported;

impl Writer {
    /// Compiles a template. `Err` for shapes whose `Value` handling the writer does not copy (a `meta` that is
    /// not a table); those resources keep the old way of being built.
    pub fn compile(
        template: &Node,
        resource_type: &str,
        meta_source: &str,
        builtins: &Builtins,
    ) -> Result<Self, Unsupported> {
        let Node::Object(entries) = template else { return Err(Unsupported) };
        let mut c = Compiler { builtins, leaves: Vec::new(), const_refs: Vec::new() };
        let mut members: Vec<(String, Option<&Node>)> = entries.iter().map(|(k, n)| (k.clone(), Some(n))).collect();
        for k in ["id", "resourceType", "meta"] {
            if !members.iter().any(|(m, _)| m == k) {
                members.push((k.to_string(), None));
            }
        }
        members.sort_by(|a, b| a.0.cmp(&b.0));
        let mut top = Vec::new();
        for (k, node) in &members {
            top.push(match (k.as_str(), node) {
                ("id", _) => Top::Id,
                ("resourceType", _) => Top::ResourceType,
                ("meta", None) => Top::Meta(None),
                ("meta", Some(Node::Object(meta))) => {
                    let mut m: Vec<(String, Option<&Node>)> = meta.iter().map(|(k, n)| (k.clone(), Some(n))).collect();
                    m.push(("source".into(), None));
                    m.sort_by(|a, b| a.0.cmp(&b.0));
                    let mut out = Vec::new();
                    for (mk, mn) in m {
                        let member = match mn {
                            Some(n) => MetaMember::Template(c.node(n, &format!("meta.{mk}"), Some(&mk), false)),
                            None => MetaMember::Source,
                        };
                        out.push((key_text(&mk), member));
                    }
                    Top::Meta(Some(out))
                }
                ("meta", Some(_)) => return Err(Unsupported),
                (_, Some(n)) => Top::Member(key_text(k), c.node(n, k, Some(k), false)),
                (_, None) => unreachable!("only the engine's own members are added without a node"),
            });
        }
        let mut bare_meta = String::from("{\"source\":");
        push_str(&mut bare_meta, meta_source);
        bare_meta.push('}');
        let mut rt = String::new();
        push_str(&mut rt, resource_type);
        Ok(Writer {
            top,
            leaves: c.leaves,
            bare_meta: bare_meta.into(),
            resource_type: rt.into(),
            const_refs: c.const_refs.iter().map(|r| super::state::RefKey::of(r)).collect(),
        })
    }

    pub fn leaves(&self) -> &[Leaf] {
        &self.leaves
    }

    /// Writes the resource for one row into `out` (appending). `over` replaces one leaf's value (the load-time
    /// probes); `seen` is told each leaf's value.
    ///
    /// Pruning follows `template::eval`: an element is left out when absent; an object or list is left out when
    /// it is empty, or when it uses data placeholders and none of them had a value; a placeholder standing in a
    /// list spreads a list value into it. When the whole template is pruned, only the engine's members remain.
    pub fn write(
        &self,
        row: &RowData<'_>,
        over: Option<(u32, &Value)>,
        out: &mut String,
        seen: &mut dyn FnMut(u32, Seen<'_>),
    ) {
        let mut cx = Cx { w: self, row, over, seen, scratch: String::new() };
        let start = out.len();
        out.push('{');
        let mut t = Tally::default();
        let mut wrote_any = false;
        for member in &self.top {
            let mark = out.len();
            if wrote_any {
                out.push(',');
            }
            match member {
                Top::Id => {
                    out.push_str("\"id\":");
                    push_str(out, row.id);
                }
                Top::ResourceType => {
                    out.push_str("\"resourceType\":");
                    out.push_str(&self.resource_type);
                }
                Top::Meta(None) => {
                    out.push_str("\"meta\":");
                    out.push_str(&self.bare_meta);
                }
                Top::Meta(Some(members)) => {
                    out.push_str("\"meta\":");
                    let r = cx.meta(members, out);
                    t.add(r);
                }
                Top::Member(key, node) => {
                    out.push_str(key);
                    let r = cx.node(node, out, false);
                    t.add(r);
                    if !r.written {
                        out.truncate(mark);
                        continue;
                    }
                }
            }
            wrote_any = true;
        }
        out.push('}');
        if !t.keep() {
            // The template came out empty: the engine's members alone, as the engine's `finish` makes them.
            out.truncate(start);
            out.push_str("{\"id\":");
            push_str(out, row.id);
            out.push_str(",\"meta\":");
            out.push_str(&self.bare_meta);
            out.push_str(",\"resourceType\":");
            out.push_str(&self.resource_type);
            out.push('}');
        }
    }
}

/// `"key":`
fn key_text(k: &str) -> Box<str> {
    let mut s = String::new();
    push_str(&mut s, k);
    s.push(':');
    s.into()
}

struct Compiler<'b> {
    builtins: &'b Builtins,
    leaves: Vec<Leaf>,
    const_refs: Vec<String>,
}

impl Compiler<'_> {
    fn node(&mut self, node: &Node, path: &str, key: Option<&str>, in_identifier: bool) -> W {
        let identifier_part = in_identifier && matches!(key, Some("value" | "system"));
        match node {
            Node::Const(v) => {
                if key == Some("reference")
                    && let Value::String(s) = v
                {
                    self.const_refs.push(s.clone());
                }
                let mut s = String::new();
                push_value(&mut s, v);
                W::Lit(s.into())
            }
            Node::Slot(slot) => match self.builtins.constant(*slot) {
                Some(text) => self.node(&Node::Const(Value::String(text.to_string())), path, key, in_identifier),
                None => self.leaf(LeafKind::Slot(*slot), key, identifier_part),
            },
            Node::Interp(parts) => {
                let mut folded: Vec<Part> = Vec::new();
                for p in parts {
                    let text = match p {
                        Part::Text(t) => Some(t.as_str()),
                        Part::Slot(s) => self.builtins.constant(*s),
                    };
                    match (text, folded.last_mut()) {
                        (Some(t), Some(Part::Text(prev))) => prev.push_str(t),
                        (Some(t), _) => folded.push(Part::Text(t.to_string())),
                        (None, _) => folded.push(p.clone()),
                    }
                }
                match folded.as_slice() {
                    [] => self.node(&Node::Const(Value::String(String::new())), path, key, in_identifier),
                    [Part::Text(t)] => self.node(&Node::Const(Value::String(t.clone())), path, key, in_identifier),
                    _ => self.leaf(LeafKind::Interp(folded), key, identifier_part),
                }
            }
            Node::Object(entries) => {
                let mut members = Vec::new();
                for (k, child) in entries {
                    let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                    let w = self.node(child, &p, Some(k), in_identifier);
                    members.push((k.clone(), w));
                }
                members.sort_by(|a, b| a.0.cmp(&b.0));
                let members: Vec<(Box<str>, W)> = members.into_iter().map(|(k, w)| (key_text(&k), w)).collect();
                fold_object(members)
            }
            Node::Array(items) => {
                let identifier_list = path == "identifier";
                let mut out = Vec::new();
                for (i, child) in items.iter().enumerate() {
                    out.push(self.node(child, &format!("{path}[{i}]"), None, identifier_list));
                }
                fold_array(out)
            }
        }
    }

    fn leaf(&mut self, kind: LeafKind, key: Option<&str>, identifier_part: bool) -> W {
        self.leaves.push(Leaf { kind, key: key.map(str::to_string), identifier_part });
        W::Leaf(u32::try_from(self.leaves.len() - 1).unwrap_or(u32::MAX))
    }
}

/// An object whose members are all constant is itself constant: written out once.
fn fold_object(members: Vec<(Box<str>, W)>) -> W {
    if !members.iter().all(|(_, w)| matches!(w, W::Lit(_) | W::Never)) {
        return W::Object(members);
    }
    let kept: Vec<String> =
        members.iter().filter_map(|(k, w)| if let W::Lit(v) = w { Some(format!("{k}{v}")) } else { None }).collect();
    if kept.is_empty() { W::Never } else { W::Lit(format!("{{{}}}", kept.join(",")).into()) }
}

fn fold_array(items: Vec<W>) -> W {
    if !items.iter().all(|w| matches!(w, W::Lit(_) | W::Never)) {
        return W::Array(items);
    }
    let kept: Vec<&str> = items.iter().filter_map(|w| if let W::Lit(v) = w { Some(&**v) } else { None }).collect();
    if kept.is_empty() { W::Never } else { W::Lit(format!("[{}]", kept.join(",")).into()) }
}

/// What writing one element gave, as `template::eval_inner` counts it.
#[derive(Debug, Clone, Copy, Default)]
struct Written {
    written: bool,
    uses: bool,
    present: bool,
}

#[derive(Default)]
struct Tally {
    any: bool,
    uses: bool,
    present: bool,
}

impl Tally {
    fn add(&mut self, r: Written) {
        self.any |= r.written;
        self.uses |= r.uses;
        self.present |= r.present;
    }
    fn keep(&self) -> bool {
        self.any && (self.present || !self.uses)
    }
    fn result(&self) -> Written {
        Written { written: self.keep(), uses: self.uses, present: self.present }
    }
}

struct Cx<'a, 'r> {
    w: &'a Writer,
    row: &'a RowData<'r>,
    over: Option<(u32, &'a Value)>,
    seen: &'a mut dyn FnMut(u32, Seen<'_>),
    scratch: String,
}

impl Cx<'_, '_> {
    /// An object's members (each key already written as `"key":`) or an array's items, between `open` and
    /// `close`: a member that writes nothing leaves no trace, and a container left empty is not written at all.
    fn container<'w>(
        &mut self,
        out: &mut String,
        (open, close): (char, char),
        children: impl Iterator<Item = (Option<&'w str>, &'w W)>,
        in_array: bool,
    ) -> Written {
        let start = out.len();
        out.push(open);
        let mut t = Tally::default();
        for (key, child) in children {
            let mark = out.len();
            if t.any {
                out.push(',');
            }
            if let Some(key) = key {
                out.push_str(key);
            }
            let r = self.node(child, out, in_array);
            t.add(r);
            if !r.written {
                out.truncate(mark);
            }
        }
        let r = t.result();
        if r.written {
            out.push(close);
        } else {
            out.truncate(start);
        }
        r
    }

    fn node(&mut self, w: &W, out: &mut String, in_array: bool) -> Written {
        match w {
            W::Lit(text) => {
                out.push_str(text);
                Written { written: true, uses: false, present: false }
            }
            W::Never => Written::default(),
            W::Leaf(i) => self.leaf(*i, out, in_array),
            W::Object(members) => {
                self.container(out, ('{', '}'), members.iter().map(|(key, child)| (Some(&**key), child)), false)
            }
            W::Array(items) => self.container(out, ('[', ']'), items.iter().map(|child| (None, child)), true),
        }
    }

    /// The template's `meta` with the engine's `source` merged in; when the template's part is pruned, `meta` is
    /// the engine's alone. Returns what the template's part counted.
    fn meta(&mut self, members: &[(Box<str>, MetaMember)], out: &mut String) -> Written {
        let start = out.len();
        out.push('{');
        let mut t = Tally::default();
        let mut wrote_any = false;
        for (key, member) in members {
            let mark = out.len();
            if wrote_any {
                out.push(',');
            }
            out.push_str(key);
            match member {
                MetaMember::Source => {
                    // `bare_meta` is `{"source":X}`: its value part.
                    let bare = &self.w.bare_meta;
                    out.push_str(&bare["{\"source\":".len()..bare.len() - 1]);
                    wrote_any = true;
                }
                MetaMember::Template(w) => {
                    let r = self.node(w, out, false);
                    t.add(r);
                    if r.written {
                        wrote_any = true;
                    } else {
                        out.truncate(mark);
                    }
                }
            }
        }
        out.push('}');
        let r = t.result();
        if !r.written {
            out.truncate(start);
            out.push_str(&self.w.bare_meta);
        }
        r
    }

    fn leaf(&mut self, i: u32, out: &mut String, in_array: bool) -> Written {
        let leaf = &self.w.leaves[i as usize];
        let data = leaf.kind.uses_data();
        if let Some((oi, v)) = self.over
            && oi == i
        {
            (self.seen)(i, seen_of(v));
            push_value(out, v);
            return Written { written: true, uses: data, present: data };
        }
        match &leaf.kind {
            LeafKind::Slot(slot) => {
                let row = self.row;
                let v: Option<Seen<'_>> = match *slot {
                    Slot::Field(f) => row.fields[f].as_ref().map(seen_of),
                    Slot::Ref(r) => row.refs[r].as_deref().map(Seen::Str),
                    Slot::RecordKey => Some(Seen::Str(row.key)),
                    Slot::ResourceId => Some(Seen::Str(row.id)),
                    // Folded into the text at compile time.
                    Slot::PartnerId | Slot::PartnerOrg | Slot::PartnerIdentifierSystem => None,
                };
                match v {
                    None => {
                        (self.seen)(i, Seen::Absent);
                        Written { written: false, uses: data, present: false }
                    }
                    Some(Seen::Json(Value::Array(items))) if in_array && data => {
                        (self.seen)(i, Seen::Spread(items));
                        for (n, item) in items.iter().enumerate() {
                            if n > 0 {
                                out.push(',');
                            }
                            push_value(out, item);
                        }
                        Written { written: !items.is_empty(), uses: true, present: true }
                    }
                    Some(s) => {
                        (self.seen)(i, s);
                        match s {
                            Seen::Str(text) => push_str(out, text),
                            Seen::Json(v) => push_value(out, v),
                            Seen::Absent | Seen::Spread(_) => {}
                        }
                        Written { written: true, uses: data, present: data }
                    }
                }
            }
            LeafKind::Interp(parts) => {
                let row = self.row;
                self.scratch.clear();
                for p in parts {
                    match p {
                        Part::Text(t) => self.scratch.push_str(t),
                        Part::Slot(slot) => {
                            let v: Option<Seen<'_>> = match *slot {
                                Slot::Field(f) => row.fields[f].as_ref().map(seen_of),
                                Slot::Ref(r) => row.refs[r].as_deref().map(Seen::Str),
                                Slot::RecordKey => Some(Seen::Str(row.key)),
                                Slot::ResourceId => Some(Seen::Str(row.id)),
                                Slot::PartnerId | Slot::PartnerOrg | Slot::PartnerIdentifierSystem => None,
                            };
                            match v {
                                Some(Seen::Str(s)) => self.scratch.push_str(s),
                                // Lines (split_lines) inside text: one line, comma-separated.
                                Some(Seen::Json(Value::Array(items))) => {
                                    for (n, item) in items.iter().enumerate() {
                                        if n > 0 {
                                            self.scratch.push_str(", ");
                                        }
                                        match item.as_str() {
                                            Some(s) => self.scratch.push_str(s),
                                            None => push_value(&mut self.scratch, item),
                                        }
                                    }
                                }
                                Some(Seen::Json(v)) => push_value(&mut self.scratch, v),
                                Some(Seen::Absent | Seen::Spread(_)) | None => {
                                    (self.seen)(i, Seen::Absent);
                                    return Written { written: false, uses: true, present: false };
                                }
                            }
                        }
                    }
                }
                (self.seen)(i, Seen::Str(&self.scratch));
                push_str(out, &self.scratch);
                Written { written: true, uses: data, present: data }
            }
        }
    }
}

fn seen_of(v: &Value) -> Seen<'_> {
    match v {
        Value::String(s) => Seen::Str(s),
        other => Seen::Json(other),
    }
}

/// Writes a string as serde_json does: `"`, `\` and control characters escaped, nothing else.
pub fn push_str(out: &mut String, s: &str) {
    out.reserve(s.len() + 2);
    out.push('"');
    let bytes = s.as_bytes();
    let mut from = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[from..i]);
        if esc.is_empty() {
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.push_str(esc);
        }
        from = i + 1;
    }
    out.push_str(&s[from..]);
    out.push('"');
}

/// Writes a value as serde_json's compact writer does (object keys in the map's order: sorted).
pub fn push_value(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            let _ = write!(out, "{n}");
        }
        Value::String(s) => push_str(out, s),
        Value::Array(items) => {
            out.push('[');
            for (n, item) in items.iter().enumerate() {
                if n > 0 {
                    out.push(',');
                }
                push_value(out, item);
            }
            out.push(']');
        }
        Value::Object(m) => {
            out.push('{');
            for (n, (k, item)) in m.iter().enumerate() {
                if n > 0 {
                    out.push(',');
                }
                push_str(out, k);
                out.push(':');
                push_value(out, item);
            }
            out.push('}');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::template::{self, Names, Values};
    use super::*;

    struct N;
    impl Names for N {
        fn slot(&self, name: &str) -> Result<Slot, String> {
            Ok(match name {
                "partner.org" => Slot::PartnerOrg,
                "partner.identifier_system" => Slot::PartnerIdentifierSystem,
                "record.key" => Slot::RecordKey,
                "resource.id" => Slot::ResourceId,
                f => Slot::Field(f.strip_prefix('f').and_then(|n| n.parse().ok()).ok_or(format!("no {f}"))?),
            })
        }
    }
    struct V<'a>(&'a [Option<Value>]);
    impl Values for V<'_> {
        fn value(&self, slot: Slot) -> Option<Value> {
            Some(match slot {
                Slot::Field(i) => return self.0[i].clone(),
                Slot::PartnerOrg => "Organization/o".into(),
                Slot::PartnerIdentifierSystem => "https://id.example/p".into(),
                Slot::RecordKey => "K1".into(),
                Slot::ResourceId => "R1".into(),
                Slot::PartnerId | Slot::Ref(_) => return None,
            })
        }
    }

    /// The `Value` way, as the engine built resources before templates were compiled (eval, then `finish`).
    fn by_value(node: &Node, fields: &[Option<Value>]) -> String {
        let mut obj = match template::eval(node, &V(fields)) {
            Some(Value::Object(m)) => m,
            _ => serde_json::Map::new(),
        };
        obj.insert("resourceType".into(), "Patient".into());
        obj.insert("id".into(), "R1".into());
        let meta = obj.entry("meta").or_insert_with(|| Value::Object(serde_json::Map::new()));
        if let Value::Object(m) = meta {
            m.insert("source".into(), "urn:m".into());
        }
        Value::Object(obj).to_string()
    }

    /// Every combination of present and absent fields, on templates with the shapes pruning cares about: constant
    /// members beside placeholders, a list spread into a list, text around placeholders and built-ins, a `meta`
    /// of the template's own, empty tables and lists, and a template that can come out empty.
    #[test]
    fn writes_what_eval_and_finish_built_for_every_combination() {
        let templates = [
            r#"identifier = [{ system = "nhs", value = "{f0}", extension = [{ url = "u", valueCode = "{f1}" }] },
                             { system = "{partner.identifier_system}/client", value = "{record.key}" }]
               name = [{ use = "official", family = "{f2}", given = ["{f3}", "{f1}"] }]
               meta = { tag = [{ code = "{f1}" }], security = [{ code = "fixed" }] }
               text = { status = "generated", div = "<div>{f2} at {f3}, {{x}} {partner.org}</div>" }
               empty = {}
               none = []
               active = true
               weight = 1.5"#,
            r#"managingOrganization = { reference = "{partner.org}" }
               address = [{ line = ["{f3}", "{f2}"], text = "{f3}" }]
               meta = { }
               zeta = "{resource.id}""#,
            r#"a = "{f0}"
               b = { c = "{f1}", d = ["{f2}"] }"#,
            r#"meta = { profile = ["{f0}"] }"#,
        ];
        let values = [
            Some(Value::String("9990000018".into())),
            Some(Value::String("01 \"q\"\n".into())),
            Some(Value::from(42)),
            Some(serde_json::json!(["12 Low Lane", "Flat 2"])),
        ];
        let builtins = Builtins {
            partner_id: "p".into(),
            partner_org: "Organization/o".into(),
            identifier_system: "https://id.example/p".into(),
        };
        for t in templates {
            let node = template::compile(&toml::from_str::<toml::Value>(t).unwrap(), &N).unwrap();
            let w = Writer::compile(&node, "Patient", "urn:m", &builtins).unwrap();
            for mask in 0..16u32 {
                let fields: Vec<Option<Value>> =
                    values.iter().enumerate().map(|(i, v)| v.clone().filter(|_| mask & (1 << i) != 0)).collect();
                let mut out = String::new();
                let row = RowData { fields: &fields, refs: &[], key: "K1", id: "R1" };
                w.write(&row, None, &mut out, &mut |_, _| {});
                assert_eq!(out, by_value(&node, &fields), "template {t}, fields {mask:04b}");
            }
        }
    }

    #[test]
    fn strings_and_values_are_written_as_serde_json_writes_them() {
        let mut all = String::new();
        for c in (0u32..0x80).chain([0xa0, 0xe9, 0x2028, 0x1f600]) {
            all.push(char::from_u32(c).unwrap());
        }
        for s in [all.as_str(), "", "plain", "Brontë \"Zoë\" \\ \u{7f}"] {
            let mut out = String::new();
            push_str(&mut out, s);
            assert_eq!(out, serde_json::to_string(s).unwrap());
        }
        let v = serde_json::json!({"b": [1, -2, 1.5, 1e300, 0.1, true, null], "a": {"z": "x\ny", "é": {}}, "c": []});
        let mut out = String::new();
        push_value(&mut out, &v);
        assert_eq!(out, v.to_string());
    }
}
