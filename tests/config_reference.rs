//! The configuration reference stays true: every key the config structs accept (src/config/, including
//! nested tables and partner sources) is in the README's "Configuration reference" table and in
//! `config.example.toml` (a commented-out example counts), and neither names a key the structs do not accept.
//!
//! The keys are not listed by hand: they are read from the structs themselves, by walking their `Deserialize`
//! implementations with a deserializer that records the field names serde asks for (`deserialize_struct` is
//! handed every field's name, after renames, without skipped ones). One walk follows one path to its end, so a
//! field whose value the walk cannot make up (a URL, a schedule) does not hide the fields after it.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;

use serde::de::{self, DeserializeOwned, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use york_connector::config::{ApiSource, Config};

/// Stands for a name the admin chooses: `[destination.NAME]`.
const NAME: &str = "NAME";

/// Ends a walk: every walk ends in an error, once it has recorded what it came for.
#[derive(Debug)]
struct Stop;

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("walk ends here")
    }
}

impl std::error::Error for Stop {}

impl de::Error for Stop {
    fn custom<T: fmt::Display>(_: T) -> Self {
        Stop
    }
}

/// What the walks found.
#[derive(Debug, Default)]
struct Schema {
    /// Every key, as a dotted path (`destination.NAME.auth.token_url`; arrays of tables add no segment).
    keys: BTreeSet<String>,
    /// Keys that are tables of further keys (not documented on their own).
    tables: BTreeSet<String>,
    /// Keys whose entries the admin names (`destination`).
    maps: BTreeSet<String>,
    /// Paths still to walk.
    todo: Vec<Vec<String>>,
}

impl Schema {
    /// The keys an admin writes a value for.
    fn leaves(&self) -> BTreeSet<String> {
        self.keys.iter().filter(|k| !self.tables.contains(*k) && !self.maps.contains(*k)).cloned().collect()
    }

    fn table(&mut self, path: &[String], fields: &[&str]) {
        self.tables.insert(path.join("."));
        for f in fields {
            let mut child = path.to_vec();
            child.push((*f).to_string());
            self.keys.insert(child.join("."));
            self.todo.push(child);
        }
    }
}

/// Walks `T`'s `Deserialize` along `focus`, recording what it finds at the end.
struct Walk<'a> {
    schema: &'a RefCell<Schema>,
    path: Vec<String>,
    focus: &'a [String],
}

impl<'a> Walk<'a> {
    /// One step down, along the focus.
    fn next(&self) -> Walk<'a> {
        let mut path = self.path.clone();
        path.push(self.focus[0].clone());
        Walk { schema: self.schema, path, focus: &self.focus[1..] }
    }
}

impl<'de> Deserializer<'de> for Walk<'_> {
    type Error = Stop;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
        Err(Stop)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _: &'static str, visitor: V) -> Result<V::Value, Stop> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        visitor.visit_seq(One(Some(self)))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Stop> {
        if self.focus.is_empty() {
            self.schema.borrow_mut().table(&self.path, fields);
            return Err(Stop);
        }
        visitor.visit_map(Entry(Some(self)))
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        if self.focus.is_empty() {
            let mut schema = self.schema.borrow_mut();
            schema.maps.insert(self.path.join("."));
            let mut entry = self.path.clone();
            entry.push(NAME.into());
            schema.todo.push(entry);
            return Err(Stop);
        }
        visitor.visit_map(Entry(Some(self)))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Stop> {
        if self.focus.is_empty() {
            // Each variant is tried: a unit variant is a value (`profile = "pkb"`), any other is a key
            // (`auth = { bearer_file = "..." }`).
            let mut schema = self.schema.borrow_mut();
            for v in variants {
                let mut probe = self.path.clone();
                probe.push((*v).to_string());
                schema.todo.push(probe);
            }
            return Err(Stop);
        }
        visitor.visit_enum(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf unit unit_struct
        tuple tuple_struct identifier ignored_any
    }
}

/// The one element of a sequence.
struct One<'a>(Option<Walk<'a>>);

impl<'de> SeqAccess<'de> for One<'_> {
    type Error = Stop;
    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, Stop> {
        self.0.take().map(|w| seed.deserialize(w)).transpose()
    }
}

/// The one entry of a table the focus goes into.
struct Entry<'a>(Option<Walk<'a>>);

impl<'de> MapAccess<'de> for Entry<'_> {
    type Error = Stop;
    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, Stop> {
        match &self.0 {
            Some(w) => seed.deserialize(de::value::StrDeserializer::<Stop>::new(&w.focus[0])).map(Some),
            None => Ok(None),
        }
    }
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Stop> {
        let w = self.0.take().ok_or(Stop)?;
        seed.deserialize(w.next())
    }
}

impl<'de, 'a> de::EnumAccess<'de> for Walk<'a> {
    type Error = Stop;
    type Variant = Walk<'a>;
    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Walk<'a>), Stop> {
        let name = seed.deserialize(de::value::StrDeserializer::<Stop>::new(&self.focus[0]))?;
        Ok((name, self.next()))
    }
}

impl<'de> de::VariantAccess<'de> for Walk<'_> {
    type Error = Stop;
    fn unit_variant(self) -> Result<(), Stop> {
        Err(Stop)
    }
    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Stop> {
        if self.focus.is_empty() {
            let mut schema = self.schema.borrow_mut();
            schema.keys.insert(self.path.join("."));
            schema.tables.insert(self.path[..self.path.len() - 1].join("."));
            return Err(Stop);
        }
        seed.deserialize(self)
    }
    fn tuple_variant<V: Visitor<'de>>(self, _: usize, _: V) -> Result<V::Value, Stop> {
        Err(Stop)
    }
    fn struct_variant<V: Visitor<'de>>(self, fields: &'static [&'static str], visitor: V) -> Result<V::Value, Stop> {
        if self.focus.is_empty() {
            let mut schema = self.schema.borrow_mut();
            schema.keys.insert(self.path.join("."));
            schema.tables.insert(self.path[..self.path.len() - 1].join("."));
            schema.table(&self.path, fields);
            return Err(Stop);
        }
        visitor.visit_map(Entry(Some(self)))
    }
}

/// Every key `T` accepts, walking each path found until there is nothing new.
fn schema_of<T: DeserializeOwned>() -> Schema {
    let schema = RefCell::new(Schema::default());
    let mut todo = vec![Vec::new()];
    let mut seen = BTreeSet::new();
    while let Some(focus) = todo.pop() {
        if focus.len() > 10 || !seen.insert(focus.clone()) {
            continue;
        }
        let _ = T::deserialize(Walk { schema: &schema, path: Vec::new(), focus: &focus });
        todo.append(&mut schema.borrow_mut().todo);
    }
    schema.into_inner()
}

/// The config's keys. A partner source reads `api` as a TOML table and turns it (with the source's `url`)
/// into an [`ApiSource`], so the walk sees a map there: its keys are [`ApiSource`]'s.
fn config_schema() -> Schema {
    let mut schema = schema_of::<Config>();
    let api = "partner.source.api";
    assert!(schema.maps.remove(api), "partner sources read `api` as a table: {:?}", schema.maps);
    schema.tables.insert(api.into());
    for key in schema_of::<ApiSource>().leaves().into_iter().filter(|k| k != "url") {
        schema.keys.insert(format!("{api}.{key}"));
    }
    schema
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The keys a TOML table sets, as schema paths (an admin's `[destination.cito]` is `destination.NAME`).
fn toml_keys(table: &toml::Table, prefix: &str, maps: &BTreeSet<String>, out: &mut BTreeSet<String>) {
    for (key, value) in table {
        let segment = if maps.contains(prefix) { NAME } else { key.as_str() };
        let path = if prefix.is_empty() { segment.to_string() } else { format!("{prefix}.{segment}") };
        match value {
            toml::Value::Table(t) => toml_keys(t, &path, maps, out),
            toml::Value::Array(a) if !a.is_empty() && a.iter().all(toml::Value::is_table) => {
                for t in a.iter().filter_map(toml::Value::as_table) {
                    toml_keys(t, &path, maps, out);
                }
            }
            _ => {
                out.insert(path);
            }
        }
    }
}

/// The keys in commented-out examples: in each run of comment lines, the longest stretches that parse as TOML
/// under the table they sit in (the last header above them), prose around them left out.
fn commented_keys(text: &str, maps: &BTreeSet<String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut header = String::new();
    let mut block: Vec<&str> = Vec::new();
    for line in text.lines().chain(std::iter::once("")) {
        let trimmed = line.trim_start();
        if let Some(comment) = trimmed.strip_prefix('#') {
            block.push(comment.strip_prefix(' ').unwrap_or(comment));
            continue;
        }
        examples_in(&block, &header, maps, &mut out);
        block.clear();
        if trimmed.starts_with('[') {
            header = trimmed.to_string();
        }
    }
    out
}

fn examples_in(block: &[&str], header: &str, maps: &BTreeSet<String>, out: &mut BTreeSet<String>) {
    let mut start = 0;
    while start < block.len() {
        let found = (start + 1..=block.len()).rev().find_map(|end| {
            let doc: toml::Table = toml::from_str(&format!("{header}\n{}", block[start..end].join("\n"))).ok()?;
            let mut keys = BTreeSet::new();
            toml_keys(&doc, "", maps, &mut keys);
            // The header alone sets no key: a stretch counts when it sets one.
            (!keys.is_empty()).then_some((end, keys))
        });
        match found {
            Some((end, keys)) => {
                out.extend(keys);
                start = end;
            }
            None => start += 1,
        }
    }
}

/// The keys in the README's configuration reference table (first column, in backticks).
fn readme_keys() -> BTreeSet<String> {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let (_, section) = readme.split_once("### Configuration reference").expect("README has a configuration reference");
    let section = section.split("\n#").next().unwrap_or_default();
    section
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once('`'))
        .map(|(key, _)| key.to_string())
        .collect()
}

fn listed(keys: &BTreeSet<String>) -> String {
    keys.iter().map(|k| format!("\n  {k}")).collect()
}

#[test]
fn the_walk_finds_the_keys_of_nested_tables_sources_and_their_apis() {
    let leaves = config_schema().leaves();
    for key in [
        "state.url",
        "schedule.timezone",
        "partner.id",
        "partner.source.kind",
        "partner.source.inbox",
        "partner.source.api.page_size",
        "partner.source.auth.bearer_file",
        "partner.source.auth.basic.password_file",
        "destination.NAME.base_url",
        "destination.NAME.auth.token_url",
        "sharing.consent_required",
        "feed.webhook_url",
        "ops.listen",
    ] {
        assert!(leaves.contains(key), "{key} not found; found:{}", listed(&leaves));
    }
    for not_a_key in ["destination.NAME", "partner.source", "partner.source.auth", "destination.NAME.profile.cito"] {
        assert!(!leaves.contains(not_a_key), "{not_a_key}");
    }
    assert!(!leaves.iter().any(|k| k.ends_with("base_dir") || k == "partner.source.api.url"), "skipped fields");
}

#[test]
fn every_config_key_is_in_the_example_and_every_example_key_is_real() {
    let schema = config_schema();
    let leaves = schema.leaves();
    let text = std::fs::read_to_string(root().join("config.example.toml")).unwrap();
    let set: toml::Table = toml::from_str(&text).unwrap();
    let mut shown = BTreeSet::new();
    toml_keys(&set, "", &schema.maps, &mut shown);
    let commented = commented_keys(&text, &schema.maps);
    let unknown: BTreeSet<String> = commented.difference(&leaves).cloned().collect();
    assert!(unknown.is_empty(), "commented-out examples set keys the config does not accept:{}", listed(&unknown));
    shown.extend(commented);
    let missing: BTreeSet<String> = leaves.difference(&shown).cloned().collect();
    assert!(missing.is_empty(), "config.example.toml shows no example (set or commented out) of:{}", listed(&missing));
}

#[test]
fn every_config_key_is_in_the_readme_reference_and_nothing_else_is() {
    let leaves = config_schema().leaves();
    let documented = readme_keys();
    let missing: BTreeSet<String> = leaves.difference(&documented).cloned().collect();
    let stale: BTreeSet<String> = documented.difference(&leaves).cloned().collect();
    assert!(missing.is_empty(), "README.md's configuration reference does not document:{}", listed(&missing));
    assert!(
        stale.is_empty(),
        "README.md's configuration reference documents keys that do not exist:{}",
        listed(&stale)
    );
}
