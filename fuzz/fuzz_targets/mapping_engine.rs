#![no_main]
//! The mapping engine over the shipped mappings: the input is a Hub export (the first byte picks the record
//! kind), mapped end to end (transforms, templates, validation, references, quarantine). Every row must map
//! or be quarantined with reasons; the engine must never panic, rows read = mapped + quarantined, and no
//! resource holds a value longer than the field limit (`ingest::limits::MAX_VALUE_CHARS`).
#[path = "common.rs"]
mod common;

use std::sync::OnceLock;

use york_connector::mapping::{self, Catalog, Input, MappedResource, Quarantined, RecordKind, Sink};

fn catalog() -> &'static Catalog {
    static CATALOG: OnceLock<Catalog> = OnceLock::new();
    CATALOG.get_or_init(|| {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../mappings");
        mapping::load_catalog(&dir).unwrap_or_else(|e| panic!("the shipped mappings do not load: {e:?}"))
    })
}

struct Count(u64, u64);

impl Sink for Count {
    fn resource(&mut self, r: &MappedResource<'_>) -> std::io::Result<()> {
        common::assert_no_overlong_value(r.resource);
        self.0 += 1;
        Ok(())
    }
    fn quarantined(&mut self, q: &Quarantined) -> std::io::Result<()> {
        assert!(!q.reasons.is_empty(), "a quarantined row says why");
        self.1 += 1;
        Ok(())
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else { return };
    let kinds = [RecordKind::Person, RecordKind::Contact, RecordKind::Consent, RecordKind::Reqol];
    let kind = kinds[usize::from(pick) % kinds.len()];
    let hub = &catalog().partners["hub"];
    // The person export always comes first (other kinds refer to people); the fuzzed one is the second file.
    let person = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/hub/person.csv");
    let mut inputs = vec![Input { kind: RecordKind::Person, path: person }];
    let fuzzed = common::file(&format!("{kind}.csv"), rest);
    if kind == RecordKind::Person {
        inputs[0].path = fuzzed;
    } else {
        inputs.push(Input { kind, path: fuzzed });
    }
    let mut sink = Count(0, 0);
    if let Ok(report) = mapping::run(hub, &inputs, &mut sink) {
        assert_eq!(report.read(), report.mapped() + report.quarantined(), "rows read = mapped + quarantined");
    }
});
