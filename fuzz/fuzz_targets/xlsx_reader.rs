#![no_main]
//! Spreadsheet exports: any bytes as an .xlsx (a zip of XML parts) must read or fail cleanly. Raw bytes rarely
//! make a zip whose checksums hold, so the input is also put, as it is, inside a well-formed workbook: as the
//! sheet's rows (cell references, inline strings, dates), as the shared strings, and as the workbook part.
//! Whatever the input, the reader keeps to its limits (see common::bounded and scripts/fuzz.sh).
#[path = "common.rs"]
mod common;

use york_connector::ingest::Format;
use york_connector::ingest::zip_writer::{edited, workbook, workbook_parts};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    common::drain("xlsx", Format::Xlsx, None, data);
    let Some((&pick, rest)) = data.split_first() else { return };
    let text = String::from_utf8_lossy(rest).into_owned();
    let book = match pick % 4 {
        0 => workbook("Sheet1", &text, &[], pick & 4 != 0),
        1 => workbook(
            "Sheet1",
            r#"<row r="1"><c r="A1" t="s"><v>0</v></c><c r="B1" t="s"><v>1</v></c></row>"#,
            &[text.as_str(), "x"],
            false,
        ),
        2 => {
            let parts = workbook_parts("Sheet1", r#"<row r="1"><c r="A1" s="1"><v>1</v></c></row>"#, &["a"], false);
            edited(parts, "xl/workbook.xml", "<sheets>", &format!("{text}<sheets>"))
        }
        _ => {
            let parts = workbook_parts("Sheet1", "", &[], false);
            edited(parts, "xl/worksheets/sheet1.xml", "<sheetData></sheetData>", &text)
        }
    };
    common::drain("xlsx", Format::Xlsx, None, &book);
});
