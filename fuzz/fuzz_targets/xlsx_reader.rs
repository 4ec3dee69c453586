#![no_main]
//! Spreadsheet exports: any bytes as an .xlsx (a zip of XML parts) must read or fail cleanly.
#[path = "common.rs"]
mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    common::drain("xlsx", york_connector::ingest::Format::Xlsx, None, data);
});
