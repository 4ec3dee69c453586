//! Issue 2, item 4: every resource mapped from every fixture is accepted by a real FHIR server (Helios FHIR
//! Server in enforce mode), sent as transaction bundles of PUTs with the deterministic ids.

mod common;

use std::path::Path;

use serde_json::{Value, json};
use york_connector::mapping::{self, Input, MappedResource, Quarantined, RecordKind, Sink};

#[derive(Default)]
struct Collect(Vec<Value>);

impl Sink for Collect {
    fn resource(&mut self, r: &MappedResource<'_>) -> std::io::Result<()> {
        self.0.push(r.resource());
        Ok(())
    }
    fn quarantined(&mut self, _: &Quarantined) -> std::io::Result<()> {
        Ok(())
    }
}

/// Maps every fixture of every partner, as `connector mappings test` does.
fn all_fixture_resources() -> Vec<(String, Vec<Value>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let catalog = mapping::load_catalog(&root.join("mappings")).expect("mappings load");
    let mut out = Vec::new();
    for (id, partner) in &catalog.partners {
        let dir = root.join("tests/fixtures").join(id);
        let mut inputs = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_string();
            if let Some(kind) = RecordKind::parse(&stem).filter(|k| partner.mappings.contains_key(k)) {
                inputs.push(Input { kind, path });
            }
        }
        let mut sink = Collect::default();
        let report = mapping::run(partner, &inputs, &mut sink).unwrap();
        assert_eq!(report.failed_files().count(), 0, "{id}: {:?}", report.files);
        out.push((id.clone(), sink.0));
    }
    out
}

fn transaction(resources: &[Value]) -> Value {
    let entries: Vec<Value> = resources
        .iter()
        .map(|r| {
            let url = format!("{}/{}", r["resourceType"].as_str().unwrap(), r["id"].as_str().unwrap());
            json!({ "fullUrl": format!("urn:uuid:{}", r["id"].as_str().unwrap()), "resource": r, "request": { "method": "PUT", "url": url } })
        })
        .collect();
    json!({ "resourceType": "Bundle", "type": "transaction", "entry": entries })
}

#[tokio::test(flavor = "multi_thread")]
async fn every_mapped_resource_is_accepted_by_hfs_in_enforce_mode() {
    let hfs = common::Hfs::start().await;
    let mut total = 0;
    for (partner, resources) in all_fixture_resources() {
        assert!(resources.len() > 5, "{partner} produced only {} resources", resources.len());
        for chunk in resources.chunks(50) {
            let (status, body) = hfs.post_bundle(&transaction(chunk)).await;
            assert_eq!(status, 200, "{partner}: transaction rejected: {body}");
            for (entry, sent) in body["entry"].as_array().unwrap().iter().zip(chunk) {
                let s = entry["response"]["status"].as_str().unwrap_or_default();
                assert!(
                    s.starts_with("200") || s.starts_with("201"),
                    "{partner}: {} {} got {s}",
                    sent["resourceType"],
                    sent["id"]
                );
            }
            total += chunk.len();
        }
        // And each one reads back by id.
        for r in &resources {
            let (status, _) =
                hfs.get(&format!("{}/{}", r["resourceType"].as_str().unwrap(), r["id"].as_str().unwrap())).await;
            assert_eq!(status, 200, "{partner}: {} {} not stored", r["resourceType"], r["id"]);
        }
    }
    assert!(total > 50, "only {total} resources mapped from all fixtures");
}
