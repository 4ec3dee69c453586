//! A search page as read from a destination, parsed without a `serde_json::Value` tree per resource: [`Node`]
//! keeps object members in a list and strings borrowed from the page's bytes where they need no unescaping,
//! and a resource's content hash is written straight from it. The text hashed is exactly the one of
//! [`crate::conflict::content_hash`] (every ledger's hashes were made that way): keys sorted at every level (a
//! key given twice counts once, its last value, as a map reads it), serde_json's escaping and numbers, and
//! what a server adds (`meta.versionId`, `meta.lastUpdated`, `meta.source`, `text`) left out.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use crate::conflict::SERVER_META;

/// A JSON value borrowing from the text it was read from.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Node<'a> {
    Null,
    Bool(bool),
    Number(Number),
    Str(Cow<'a, str>),
    Array(Vec<Node<'a>>),
    /// Members in the order written (a key may repeat; the last counts).
    Object(Vec<(Cow<'a, str>, Node<'a>)>),
}

impl<'a> Node<'a> {
    /// Parses `text` (a page), borrowing from it.
    pub fn parse(text: &'a [u8]) -> serde_json::Result<Self> {
        serde_json::from_slice(text)
    }

    /// The member `key` of an object (the last, if it repeats).
    pub fn get(&self, key: &str) -> Option<&Node<'a>> {
        match self {
            Node::Object(m) => m.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Takes the member `key` out of an object (the last, if it repeats).
    pub fn take(&mut self, key: &str) -> Option<Node<'a>> {
        match self {
            Node::Object(m) => m.iter().rposition(|(k, _)| k == key).map(|n| m.swap_remove(n).1),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Node::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The same value as a `serde_json::Value` (for what needs one: the rare resource that changed there, and
    /// the repairs).
    pub fn to_value(&self) -> Value {
        match self {
            Node::Null => Value::Null,
            Node::Bool(b) => Value::Bool(*b),
            Node::Number(n) => Value::Number(n.clone()),
            Node::Str(s) => Value::String(s.to_string()),
            Node::Array(a) => Value::Array(a.iter().map(Node::to_value).collect()),
            Node::Object(m) => {
                let mut map = Map::new();
                for (k, v) in m {
                    map.insert(k.to_string(), v.to_value());
                }
                Value::Object(map)
            }
        }
    }

    /// The resource's content hash, as [`crate::conflict::content_hash`] of [`Node::to_value`] gives it.
    pub fn content_hash(&self) -> String {
        let mut text = Vec::with_capacity(4096);
        match self {
            Node::Object(m) => write_members(
                m,
                |k, v| match k {
                    "text" => false,
                    // A `meta` left empty without what the server added is left out whole.
                    "meta" => match v {
                        Node::Object(meta) => meta.iter().any(|(k, _)| !SERVER_META.contains(&&**k)),
                        _ => true,
                    },
                    _ => true,
                },
                |k, v, out| match (k, v) {
                    ("meta", Node::Object(meta)) => {
                        write_members(meta, |k, _| !SERVER_META.contains(&k), |_, v, out| write(v, out), out);
                    }
                    _ => write(v, out),
                },
                &mut text,
            ),
            other => write(other, &mut text),
        }
        crate::conflict::sha256_hex_of(&text)
    }
}

/// Writes `n` as canonical JSON.
fn write(n: &Node<'_>, out: &mut Vec<u8>) {
    match n {
        Node::Null => out.extend_from_slice(b"null"),
        Node::Bool(true) => out.extend_from_slice(b"true"),
        Node::Bool(false) => out.extend_from_slice(b"false"),
        // Writing to a Vec cannot fail.
        Node::Number(x) => drop(serde_json::to_writer(&mut *out, x)),
        Node::Str(s) => drop(serde_json::to_writer(&mut *out, &**s)),
        Node::Array(a) => crate::conflict::write_array(a, write, out),
        Node::Object(m) => write_members(m, |_, _| true, |_, v, out| write(v, out), out),
    }
}

/// Writes the members of an object that `keep` keeps, keys sorted, each key once (its last value); `value`
/// writes each value.
fn write_members(
    members: &[(Cow<'_, str>, Node<'_>)],
    keep: impl Fn(&str, &Node<'_>) -> bool,
    value: impl Fn(&str, &Node<'_>, &mut Vec<u8>),
    out: &mut Vec<u8>,
) {
    let mut sorted: Vec<&(Cow<'_, str>, Node<'_>)> = members.iter().collect();
    // Stable: of a repeated key, the last written stays last.
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    out.push(b'{');
    let mut first = true;
    for (n, (k, v)) in sorted.iter().enumerate() {
        if sorted.get(n + 1).is_some_and(|next| next.0 == *k) || !keep(k, v) {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        drop(serde_json::to_writer(&mut *out, &**k));
        out.push(b':');
        value(k, v, out);
    }
    out.push(b'}');
}

impl<'de> Deserialize<'de> for Node<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Node<'de>, E> {
        Ok(Node::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Node<'de>, E> {
        Ok(Node::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Node<'de>, E> {
        Ok(Node::Number(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Node<'de>, E> {
        // As serde_json's own `Value` reads it.
        Ok(Number::from_f64(v).map_or(Node::Null, Node::Number))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Node<'de>, E> {
        Ok(Node::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Node<'de>, E> {
        Ok(Node::Str(Cow::Owned(v.to_string())))
    }
    fn visit_string<E>(self, v: String) -> Result<Node<'de>, E> {
        Ok(Node::Str(Cow::Owned(v)))
    }
    fn visit_unit<E>(self) -> Result<Node<'de>, E> {
        Ok(Node::Null)
    }
    fn visit_none<E>(self) -> Result<Node<'de>, E> {
        Ok(Node::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node<'de>, D::Error> {
        Node::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node<'de>, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(x) = seq.next_element()? {
            items.push(x);
        }
        Ok(Node::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node<'de>, A::Error> {
        let mut members = Vec::new();
        while let Some((Key(k), v)) = map.next_entry::<Key<'de>, Node<'de>>()? {
            members.push((k, v));
        }
        Ok(Node::Object(members))
    }
}

/// An object key, borrowed where it can be.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_string())))
            }
            fn visit_string<E>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pages as servers write them, and as they might: escapes, numbers of every kind, repeated keys, a
    /// `meta` with only what the server adds, or not an object at all.
    const ODD: &[&str] = &[
        concat!(
            r##"{"resourceType":"Patient","id":"p1","meta":{"versionId":"3","##,
            r##""lastUpdated":"2026-01-01T00:00:00Z","source":"#x","tag":[{"system":"s","code":"hub"}]},"##,
            r##""text":{"status":"generated","div":"<div>x</div>"},"name":[{"family":"Br\u00f6nte","##,
            r##""given":["Zo\u00eb","\"Q\"","tab\there","\u0001"]}]}"##,
        ),
        concat!(
            r##"{"resourceType":"Observation","meta":{"versionId":"1"},"valueQuantity":{"value":1.50,"##,
            r##""unit":"mg"},"component":[{"valueInteger":-7},{"valueDecimal":12345678901234567890},"##,
            r##"{"v":-0.0},{"v":2.5e-8}],"note":null,"b":{},"a":[],"Z":{"z":{"y":[1,{"x":true}]}}}"##,
        ),
        concat!(
            r##"{"resourceType":"Encounter","meta":"not an object","a":1,"a":2,"b":{"c":1,"c":{"d":3}},"##,
            r##""\u00fcnicode":"\ud83d\ude00","/":"a\/b"}"##,
        ),
        r##"{"resourceType":"Encounter","meta":{},"id":"e"}"##,
        r##"{"resourceType":"Encounter","meta":{"source":"x","source":"y"}}"##,
        r##"["not","a","resource"]"##,
        r##""text""##,
        r##"12"##,
    ];

    #[test]
    fn hashes_are_the_ones_a_value_gives() {
        for text in ODD {
            let node = Node::parse(text.as_bytes()).unwrap();
            let value: Value = serde_json::from_str(text).unwrap();
            assert_eq!(node.to_value(), value, "{text}");
            assert_eq!(node.content_hash(), crate::conflict::content_hash(&value), "{text}");
        }
    }

    #[test]
    fn members_are_found_and_taken_the_last_first() {
        let text = br#"{"a":1,"b":{"c":"x"},"a":"two"}"#;
        let mut node = Node::parse(text).unwrap();
        assert_eq!(node.get("a").and_then(Node::as_str), Some("two"));
        assert_eq!(node.get("b").and_then(|b| b.get("c")).and_then(Node::as_str), Some("x"));
        assert_eq!(node.get("nothing"), None);
        assert_eq!(node.take("a"), Some(Node::Str("two".into())));
        assert_eq!(node.take("a"), Some(Node::Number(1.into())));
        assert_eq!(node.take("a"), None);
        // Strings without escapes are not copied.
        assert!(matches!(node.get("b").and_then(|b| b.get("c")), Some(Node::Str(Cow::Borrowed(_)))));
    }
}
