#![no_main]
//! CSV exports: any bytes (encodings, BOMs, quotes, delimiters, ragged rows) must read or fail cleanly.
#[path = "common.rs"]
mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    common::drain("csv", york_connector::ingest::Format::Csv, None, data);
});
