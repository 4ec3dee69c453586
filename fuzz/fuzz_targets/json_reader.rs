#![no_main]
//! JSON exports: arrays (at the top level or under a path) and NDJSON.
#[path = "common.rs"]
mod common;

use york_connector::ingest::Format;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    common::drain("json", Format::Json, None, data);
    common::drain("json", Format::Json, Some("data"), data);
    common::drain("ndjson", Format::Ndjson, None, data);
});
