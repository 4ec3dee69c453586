use serde_json::json;

use super::*;

const SALT: &str = "test-salt";

fn rules(auto_merge: bool) -> Rules<'static> {
    Rules { salt: SALT, auto_merge, stale: false }
}

fn base() -> Value {
    json!({"resourceType": "Patient", "id": "p1", "meta": {"security": [{"system": "s", "code": "R"}]},
        "name": [{"family": "Smith"}], "telecom": [{"system": "phone", "value": "01904 000001"}],
        "address": [{"city": "York"}]})
}

fn on_server(mut v: Value) -> Value {
    v["meta"]["versionId"] = json!("3");
    v["meta"]["lastUpdated"] = json!("2026-11-22T10:00:00.000Z");
    v["text"] = json!({"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>"});
    v
}

#[test]
fn what_a_server_adds_is_not_content() {
    assert_eq!(content_hash(&base()), content_hash(&on_server(base())));
    assert_eq!(fingerprints(SALT, &base()), fingerprints(SALT, &on_server(base())));
    // Key order does not matter either.
    let reordered: Value = serde_json::from_str(r#"{"telecom":[{"value":"01904 000001","system":"phone"}],"address":[{"city":"York"}],"name":[{"family":"Smith"}],"id":"p1","resourceType":"Patient","meta":{"security":[{"code":"R","system":"s"}]}}"#).unwrap();
    assert_eq!(content_hash(&base()), content_hash(&reordered));
}

#[test]
fn fingerprints_are_salted_and_hold_no_values() {
    let a = fingerprints(SALT, &base());
    let b = fingerprints("another-installation", &base());
    assert_ne!(a["name"], b["name"]);
    let text = encode(&a);
    assert!(!text.contains("Smith") && !text.contains("01904"));
    assert_eq!(decode(Some(&text)).unwrap(), a);
}

#[test]
fn a_remote_edit_to_another_element_is_kept_and_merged() {
    let b = fingerprints(SALT, &base());
    let mut source = base();
    source["name"] = json!([{"family": "Smith-Jones"}]);
    let mut remote = on_server(base());
    remote["address"] = json!([{"city": "Selby"}]);
    match three_way(rules(true), Some(&b), &source, &remote) {
        Merge::Write { body, kept_remote } => {
            assert_eq!(body["name"], json!([{"family": "Smith-Jones"}]));
            assert_eq!(body["address"], json!([{"city": "Selby"}]));
            assert_eq!(kept_remote, ["address"]);
            assert!(body["meta"].get("versionId").is_none());
        }
        other => panic!("expected a merge, got {other:?}"),
    }
    // With merging off for the type, the same edits are a conflict on both elements.
    assert_eq!(
        three_way(rules(false), Some(&b), &source, &remote),
        Merge::Conflict { elements: vec!["address".into(), "name".into()] }
    );
}

#[test]
fn both_sides_changing_one_element_is_a_conflict_unless_they_agree() {
    let b = fingerprints(SALT, &base());
    let mut source = base();
    source["telecom"] = json!([{"system": "phone", "value": "01904 000002"}]);
    let mut remote = on_server(base());
    remote["telecom"] = json!([{"system": "phone", "value": "07700 900003"}]);
    assert_eq!(
        three_way(rules(true), Some(&b), &source, &remote),
        Merge::Conflict { elements: vec!["telecom".into()] }
    );
    remote["telecom"] = source["telecom"].clone();
    assert_eq!(three_way(rules(true), Some(&b), &source, &remote), Merge::Unchanged { kept_remote: vec![] });
}

#[test]
fn a_remote_edit_kept_earlier_still_conflicts_with_a_later_partner_change() {
    // The clinician's telecom was accepted at the last pull; the partner now changes telecom too.
    let b = fingerprints(SALT, &base());
    let mut remote = on_server(base());
    remote["telecom"] = json!([{"system": "phone", "value": "07700 900003"}]);
    assert_eq!(
        three_way(rules(true), Some(&b), &base(), &remote),
        Merge::Unchanged { kept_remote: vec!["telecom".into()] }
    );
    let mut source = base();
    source["telecom"] = json!([{"system": "phone", "value": "01904 000002"}]);
    assert_eq!(
        three_way(rules(true), Some(&b), &source, &remote),
        Merge::Conflict { elements: vec!["telecom".into()] }
    );
}

#[test]
fn removed_elements_and_unknown_bases() {
    let b = fingerprints(SALT, &base());
    let mut source = base();
    source.as_object_mut().unwrap().remove("telecom");
    let remote = on_server(base());
    match three_way(rules(true), Some(&b), &source, &remote) {
        Merge::Write { body, .. } => assert!(body.get("telecom").is_none()),
        other => panic!("{other:?}"),
    }
    // No base: every difference is treated as changed on both sides.
    assert_eq!(three_way(rules(true), None, &source, &remote), Merge::Conflict { elements: vec!["telecom".into()] });
    assert_eq!(three_way(rules(true), None, &base(), &remote), Merge::Unchanged { kept_remote: vec![] });
}

#[test]
fn a_stale_copy_is_replaced_whole() {
    let mut old = base();
    old["name"] = json!([{"family": "Smyth"}]);
    let b = fingerprints(SALT, &base());
    let stale = Rules { stale: true, ..rules(false) };
    assert_eq!(
        three_way(stale, Some(&b), &base(), &on_server(old)),
        Merge::Write { body: base(), kept_remote: vec![] }
    );
    assert_eq!(three_way(stale, Some(&b), &base(), &on_server(base())), Merge::Unchanged { kept_remote: vec![] });
}

#[test]
fn keeping_the_source_overlays_every_partner_change() {
    let b = fingerprints(SALT, &base());
    let mut source = base();
    source["telecom"] = json!([{"system": "phone", "value": "01904 000002"}]);
    let mut remote = on_server(base());
    remote["telecom"] = json!([{"system": "phone", "value": "07700 900003"}]);
    remote["address"] = json!([{"city": "Selby"}]);
    let kept = resolve_keep_source(rules(true), Some(&b), &source, &remote);
    assert_eq!(kept["telecom"], source["telecom"]);
    assert_eq!(kept["address"], json!([{"city": "Selby"}]));
    assert_eq!(resolve_keep_source(rules(false), Some(&b), &source, &remote), source);
}

/// The canonical text as it was first written (a sorted copy of the tree, then its text): the hashes in
/// every ledger were made this way, so the faster writer must give exactly the same bytes.
fn canonical_as_first_written(v: &Value) -> String {
    fn sorted(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let b: BTreeMap<&String, Value> = m.iter().map(|(k, v)| (k, sorted(v))).collect();
                Value::Object(b.into_iter().map(|(k, v)| (k.clone(), v)).collect::<Map<_, _>>())
            }
            Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    fn write(v: &Value, out: &mut String) {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                out.push('{');
                for (n, k) in keys.into_iter().enumerate() {
                    if n > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::String(k.clone()).to_string());
                    out.push(':');
                    write(&m[k], out);
                }
                out.push('}');
            }
            Value::Array(a) => {
                out.push('[');
                for (n, x) in a.iter().enumerate() {
                    if n > 0 {
                        out.push(',');
                    }
                    write(x, out);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut out = String::new();
    write(&sorted(v), &mut out);
    out
}

#[test]
fn content_hashes_are_the_ones_already_in_ledgers() {
    let odd = [
        on_server(base()),
        json!({"resourceType": "Patient", "id": "p2", "meta": {"versionId": "9", "lastUpdated": "x", "source": "y"},
            "text": {"div": "<div/>"}, "name": [{"given": ["Zoë", "\"quoted\"", "tab\there", "\u{1}"]}]}),
        json!({"resourceType": "Observation", "meta": "not an object", "valueQuantity": {"value": 1.50, "unit": "mg"},
            "component": [{"valueInteger": -7}, {"valueDecimal": 12345678901234567890u64}, {"valueBoolean": false}],
            "note": null, "b": {}, "a": [], "Z": {"z": {"y": [1, {"x": 2}]}}}),
        json!({"resourceType": "Encounter", "meta": {"tag": [{"system": "s", "code": "hub"}], "versionId": "2"},
            "period": {"start": "2026-01-01"}, "ünïcode": "😀", "/": "a/b"}),
        json!({"resourceType": "Encounter", "meta": {}}),
        json!(["not", "a", "resource"]),
        json!("text"),
    ];
    for v in odd {
        let expected = crate::store::sha256_hex(&canonical_as_first_written(&comparable(&v)));
        assert_eq!(content_hash(&v), expected, "{v}");
        assert_eq!(canonical(&v), canonical_as_first_written(&v), "{v}");
        // Fingerprints as first made: of a copy without what a server adds, each element's canonical text
        // formatted with the salt and name, the first 12 hex digits of its sha256.
        let as_first_made: Fingerprints = comparable(&v)
            .as_object()
            .map(|o| {
                o.iter()
                    .filter(|(k, _)| !NOT_ELEMENTS.contains(&k.as_str()))
                    .map(|(k, e)| {
                        let text = format!("{SALT}\u{1f}{k}\u{1f}{}", canonical_as_first_written(e));
                        (k.clone(), crate::store::sha256_hex(&text)[..12].to_string())
                    })
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(fingerprints(SALT, &v), as_first_made, "{v}");
    }
}
