//! Reading a bundle answer for the few members delivery uses, straight from its text. A transaction's answer
//! echoes every resource written (HFS does), and a tree of it all, per bundle in flight, was one of the larger
//! things delivery held; here the resources are skipped as they are read. Members of an unexpected kind read
//! as missing, as indexing a `serde_json::Value` would.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{Deserialize, DeserializeOwned, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// A bundle's `entry` list, each entry read as `E`; empty when the answer has none (or it is not a list).
pub(super) fn entries<E: DeserializeOwned>(answer: &[u8]) -> Result<Vec<E>, serde_json::Error> {
    let bundle: Object<Bundle<E>> = serde_json::from_slice(answer)?;
    Ok(bundle.0.entry.unwrap_or_default())
}

/// What a transaction answer says of one write: where its new version may be read (see `fhir::version_of`).
#[derive(Debug, Default, PartialEq)]
pub(super) struct WriteAnswer {
    /// `response.etag`
    pub etag: Option<String>,
    /// `response.location`
    pub location: Option<String>,
    /// `resource.meta.versionId`
    pub version_id: Option<String>,
}

impl<'de> Deserialize<'de> for WriteAnswer {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Object::<Entry>::deserialize(d).map(|e| {
            let Entry { response, resource } = e.0;
            WriteAnswer { etag: response.etag, location: response.location, version_id: resource.meta.version_id }
        })
    }
}

/// A JSON object read member by member: the members a type wants are read, the rest skipped.
trait Members: Default {
    fn member<'de, A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error>;
}

/// `T` read from an object; anything else reads as `T::default()`.
struct Object<T>(T);

impl<'de, T: Members> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Members> Visitor<'de> for V<T> {
            type Value = Object<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut t = T::default();
                while let Some(key) = map.next_key::<String>()? {
                    t.member(&key, &mut map)?;
                }
                Ok(Object(t))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Object(T::default()))
            }
            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok(Object(T::default()))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Object(T::default()))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(Object(T::default()))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(Object(T::default()))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Object(T::default()))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Object(T::default()))
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// A list of `T`; `None` for anything else.
struct List<T>(Option<Vec<T>>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for List<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = List<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(List(Some(items)))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(List(None))
            }
            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok(List(None))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(List(None))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(List(None))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(List(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(List(None))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(List(None))
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// A string; `None` for anything else (as `Value::as_str`).
struct Str(Option<String>);

impl<'de> Deserialize<'de> for Str {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Str;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_str<E>(self, s: &str) -> Result<Str, E> {
                Ok(Str(Some(s.to_string())))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Str, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Str(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Str, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Str(None))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Str, E> {
                Ok(Str(None))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Str, E> {
                Ok(Str(None))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Str, E> {
                Ok(Str(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Str, E> {
                Ok(Str(None))
            }
            fn visit_unit<E>(self) -> Result<Str, E> {
                Ok(Str(None))
            }
        }
        d.deserialize_any(V)
    }
}

/// Skips a member's value.
fn skip<'de, A: MapAccess<'de>>(map: &mut A) -> Result<(), A::Error> {
    map.next_value::<IgnoredAny>().map(drop)
}

struct Bundle<E> {
    entry: Option<Vec<E>>,
}

impl<E> Default for Bundle<E> {
    fn default() -> Self {
        Self { entry: None }
    }
}

impl<E: DeserializeOwned> Members for Bundle<E> {
    fn member<'de, A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
        match key {
            "entry" => self.entry = map.next_value::<List<E>>()?.0,
            _ => skip(map)?,
        }
        Ok(())
    }
}

#[derive(Default)]
struct Entry {
    response: Response,
    resource: Resource,
}

impl Members for Entry {
    fn member<'de, A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
        match key {
            "response" => self.response = map.next_value::<Object<Response>>()?.0,
            "resource" => self.resource = map.next_value::<Object<Resource>>()?.0,
            _ => skip(map)?,
        }
        Ok(())
    }
}

#[derive(Default)]
struct Response {
    etag: Option<String>,
    location: Option<String>,
}

impl Members for Response {
    fn member<'de, A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
        match key {
            "etag" => self.etag = map.next_value::<Str>()?.0,
            "location" => self.location = map.next_value::<Str>()?.0,
            _ => skip(map)?,
        }
        Ok(())
    }
}

#[derive(Default)]
struct Resource {
    meta: Meta,
}

impl Members for Resource {
    fn member<'de, A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
        match key {
            "meta" => self.meta = map.next_value::<Object<Meta>>()?.0,
            _ => skip(map)?,
        }
        Ok(())
    }
}

#[derive(Default)]
struct Meta {
    version_id: Option<String>,
}

impl Members for Meta {
    fn member<'de, A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
        match key {
            "versionId" => self.version_id = map.next_value::<Str>()?.0,
            _ => skip(map)?,
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    /// What is read matches what indexing the parsed answer reads, for well-formed and odd answers alike.
    #[test]
    fn reads_what_indexing_a_tree_would() {
        let by_tree = |answer: &Value| -> Vec<WriteAnswer> {
            match answer.get("entry") {
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|e| WriteAnswer {
                        etag: e["response"]["etag"].as_str().map(str::to_string),
                        location: e["response"]["location"].as_str().map(str::to_string),
                        version_id: e.get("resource").and_then(|r| r["meta"]["versionId"].as_str()).map(str::to_string),
                    })
                    .collect(),
                _ => Vec::new(),
            }
        };
        let answers = [
            json!({"resourceType": "Bundle", "type": "transaction-response", "entry": [
                {"response": {"status": "201 Created", "etag": "W/\"1\"", "location": "Patient/a/_history/1"},
                 "resource": {"resourceType": "Patient", "id": "a", "meta": {"versionId": "1"},
                              "name": [{"family": "Brontë"}], "contained": [{"meta": {"versionId": "9"}}]}},
                {"response": {"status": "200 OK", "location": "Encounter/e/_history/3"}},
                {"response": {"etag": 7, "location": ["x"]}, "resource": {"meta": {"versionId": null}}},
                {"response": "odd", "resource": [1, 2]},
                42,
                null,
                {"resource": {"meta": "none"}, "response": {"etag": {"a": 1}}}
            ]}),
            json!({"resourceType": "Bundle", "entry": {"not": "a list"}}),
            json!({"resourceType": "Bundle"}),
            json!([{"entry": []}]),
            json!("text"),
            json!({"entry": [{"response": {"etag": "W/\"2\""}, "response2": {"etag": "no"}}]}),
        ];
        let mut texts: Vec<String> = answers.iter().map(Value::to_string).collect();
        // A member given twice: the last one counts.
        texts.push(
            r#"{"entry": [{"response": {"etag": "W/\"1\""}, "response": {"location": "Patient/a/_history/2"}}]}"#
                .into(),
        );
        for text in texts {
            let read: Vec<WriteAnswer> = entries(text.as_bytes()).unwrap();
            assert_eq!(read, by_tree(&serde_json::from_str(&text).unwrap()), "{text}");
        }
        // Entries read as trees (searches in a batch) are kept whole.
        let batch = json!({"entry": [{"resource": {"resourceType": "Bundle", "entry": []}}, 3]});
        let read: Vec<Value> = entries(batch.to_string().as_bytes()).unwrap();
        assert_eq!(read, batch["entry"].as_array().unwrap().clone());
        assert!(entries::<WriteAnswer>(b"{\"entry\": [").is_err(), "not JSON");
    }
}
