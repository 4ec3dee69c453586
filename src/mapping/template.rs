//! Templates: a resource written out in TOML with `{placeholders}`, compiled to a tree once and evaluated
//! per row. An absent value removes its key; an object or list whose placeholders all came up empty is
//! removed whole, so an identifier without its value never goes out half-made.

use serde_json::{Map, Value};

/// A compiled template element.
#[derive(Debug, Clone)]
pub enum Node {
    Const(Value),
    Slot(Slot),
    /// A string with placeholders inside text.
    Interp(Vec<Part>),
    Object(Vec<(String, Node)>),
    Array(Vec<Node>),
}

#[derive(Debug, Clone)]
pub enum Part {
    Text(String),
    Slot(Slot),
}

/// Where a placeholder's value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    Field(usize),
    Ref(usize),
    PartnerId,
    PartnerOrg,
    PartnerIdentifierSystem,
    RecordKey,
    ResourceId,
}

impl Slot {
    /// Built-ins are the same for every row: they neither keep nor drop an element.
    fn is_data(self) -> bool {
        matches!(self, Slot::Field(_) | Slot::Ref(_))
    }
}

/// Resolves a placeholder name to a slot, or says why not.
pub trait Names {
    fn slot(&self, name: &str) -> Result<Slot, String>;
}

/// Compiles a TOML value into a template node.
pub fn compile(value: &toml::Value, names: &dyn Names) -> Result<Node, String> {
    Ok(match value {
        toml::Value::String(s) => compile_string(s, names)?,
        toml::Value::Integer(i) => Node::Const(Value::from(*i)),
        toml::Value::Float(f) => Node::Const(serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number)),
        toml::Value::Boolean(b) => Node::Const(Value::Bool(*b)),
        toml::Value::Datetime(d) => Node::Const(Value::String(d.to_string())),
        toml::Value::Array(items) => Node::Array(items.iter().map(|v| compile(v, names)).collect::<Result<_, _>>()?),
        toml::Value::Table(t) => {
            Node::Object(t.iter().map(|(k, v)| Ok((k.clone(), compile(v, names)?))).collect::<Result<_, String>>()?)
        }
    })
}

fn compile_string(s: &str, names: &dyn Names) -> Result<Node, String> {
    let mut parts = Vec::new();
    let mut text = String::new();
    let mut chars = s.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '{' if chars.peek().map(|p| p.1) == Some('{') => {
                chars.next();
                text.push('{');
            }
            '}' if chars.peek().map(|p| p.1) == Some('}') => {
                chars.next();
                text.push('}');
            }
            '{' => {
                let end = s[i..]
                    .find('}')
                    .ok_or_else(|| format!("unclosed placeholder in \"{s}\"; write {{{{ for a literal brace"))?;
                let name = s[i + 1..i + end].trim();
                if !text.is_empty() {
                    parts.push(Part::Text(std::mem::take(&mut text)));
                }
                parts.push(Part::Slot(names.slot(name)?));
                while chars.peek().is_some_and(|&(j, _)| j <= i + end) {
                    chars.next();
                }
            }
            '}' => return Err(format!("stray '}}' in \"{s}\"; write }}}} for a literal brace")),
            c => text.push(c),
        }
    }
    if !text.is_empty() {
        parts.push(Part::Text(text));
    }
    Ok(match parts.as_slice() {
        [] => Node::Const(Value::String(String::new())),
        [Part::Text(t)] => Node::Const(Value::String(t.clone())),
        [Part::Slot(s)] => Node::Slot(*s),
        _ => Node::Interp(parts),
    })
}

/// What a row supplies to a template.
pub trait Values {
    fn value(&self, slot: Slot) -> Option<Value>;
}

/// Evaluates a node: `None` when the element is to be left out.
pub fn eval(node: &Node, vals: &dyn Values) -> Option<Value> {
    eval_inner(node, vals).0
}

/// Returns the value and whether the element used data placeholders and got any value from them.
fn eval_inner(node: &Node, vals: &dyn Values) -> (Option<Value>, bool, bool) {
    match node {
        Node::Const(v) => (Some(v.clone()), false, false),
        Node::Slot(s) => {
            let v = vals.value(*s);
            let present = v.is_some();
            (v, s.is_data(), present && s.is_data())
        }
        Node::Interp(parts) => {
            let mut out = String::new();
            let mut uses = false;
            for p in parts {
                match p {
                    Part::Text(t) => out.push_str(t),
                    Part::Slot(s) => {
                        uses |= s.is_data();
                        match vals.value(*s) {
                            Some(Value::String(v)) => out.push_str(&v),
                            // Lines (split_lines) inside text: one line, comma-separated.
                            Some(Value::Array(items)) => out.push_str(
                                &items
                                    .iter()
                                    .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_string))
                                    .collect::<Vec<_>>()
                                    .join(", "),
                            ),
                            Some(v) => out.push_str(&v.to_string()),
                            None => return (None, uses || s.is_data(), false),
                        }
                    }
                }
            }
            (Some(Value::String(out)), uses, uses)
        }
        Node::Object(entries) => {
            let mut map = Map::new();
            let (mut uses, mut present) = (false, false);
            for (k, child) in entries {
                let (v, u, p) = eval_inner(child, vals);
                uses |= u;
                present |= p;
                if let Some(v) = v {
                    map.insert(k.clone(), v);
                }
            }
            let keep = !map.is_empty() && (present || !uses);
            (keep.then_some(Value::Object(map)), uses, present)
        }
        Node::Array(items) => {
            let mut out = Vec::new();
            let (mut uses, mut present) = (false, false);
            for child in items {
                let (v, u, p) = eval_inner(child, vals);
                uses |= u;
                present |= p;
                match (child, v) {
                    // A field holding a list (split_lines) spreads into the list it stands in: "line" gets one
                    // entry per line of the cell, followed by any other entries the template lists.
                    (Node::Slot(s), Some(Value::Array(spread))) if s.is_data() => out.extend(spread),
                    (_, v) => out.extend(v),
                }
            }
            let keep = !out.is_empty() && (present || !uses);
            (keep.then_some(Value::Array(out)), uses, present)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct N;
    impl Names for N {
        fn slot(&self, name: &str) -> Result<Slot, String> {
            match name {
                "a" => Ok(Slot::Field(0)),
                "b" => Ok(Slot::Field(1)),
                "partner.org" => Ok(Slot::PartnerOrg),
                other => Err(format!("unknown {other}")),
            }
        }
    }
    struct V(Vec<Option<Value>>);
    impl Values for V {
        fn value(&self, slot: Slot) -> Option<Value> {
            match slot {
                Slot::Field(i) => self.0[i].clone(),
                Slot::PartnerOrg => Some("Organization/x".into()),
                _ => None,
            }
        }
    }

    fn t(s: &str) -> Node {
        compile(&toml::from_str::<toml::Value>(s).unwrap(), &N).unwrap()
    }

    #[test]
    fn absent_values_prune_their_element() {
        let node = t(r#"
            identifier = [{ system = "nhs", value = "{a}" }, { system = "local", value = "{b}" }]
            org = { reference = "{partner.org}" }
            label = "n={a}, {{literal}}"
        "#);
        let out = eval(&node, &V(vec![None, Some("X1".into())])).unwrap();
        assert_eq!(
            out,
            serde_json::json!({"identifier": [{"system": "local", "value": "X1"}], "org": {"reference": "Organization/x"}})
        );
        let out = eval(&node, &V(vec![Some(7.into()), None])).unwrap();
        assert_eq!(out["identifier"][0]["value"], 7, "a whole-string placeholder keeps the value's type");
        assert_eq!(out["label"], "n=7, {literal}");
    }

    #[test]
    fn a_list_field_spreads_into_the_list_it_stands_in() {
        let node = t(r#"
            address = [{ line = ["{a}", "{b}"], text = "{a}" }]
        "#);
        let out = eval(&node, &V(vec![Some(serde_json::json!(["12 Low Lane", "Flat 2"])), Some("Heworth".into())]));
        assert_eq!(
            out.unwrap(),
            serde_json::json!({"address": [{"line": ["12 Low Lane", "Flat 2", "Heworth"], "text": ["12 Low Lane", "Flat 2"]}]})
        );
        let out = eval(&t(r#"label = "at {a}""#), &V(vec![Some(serde_json::json!(["x", "y"])), None]));
        assert_eq!(out.unwrap()["label"], "at x, y");
    }

    #[test]
    fn unknown_placeholders_are_compile_errors() {
        let err = compile(&toml::Value::String("{nope}".into()), &N).unwrap_err();
        assert!(err.contains("unknown nope"));
        assert!(compile(&toml::Value::String("{a".into()), &N).is_err());
    }
}
