use std::io::Write;

use super::*;

fn write_tmp(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("connector-ingest-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::File::create(&p).unwrap().write_all(bytes).unwrap();
    p
}

fn cells(rows: Rows) -> Vec<(u64, Vec<String>, usize)> {
    rows.map(|r| {
        let r = r.unwrap();
        match r.values {
            Values::Cells(c) => (r.number, c, r.extra_cells),
            other => panic!("unexpected {other:?}"),
        }
    })
    .collect()
}

#[test]
fn csv_windows_1252_crlf_quoted_newline_and_ragged_rows() {
    // "Zoë" in Windows-1252 is 0x5A 0x6F 0xEB.
    let mut bytes =
        b"Name,Address,Phone\r\nZo\xeb,\"1 High St\r\nYork\",7700900123\r\nAl,,\r\nBea,x,y,surplus\r\nCy\r\n".to_vec();
    bytes.extend_from_slice(b"Di,a,b,,\r\n");
    let p = write_tmp("w1252.csv", &bytes);
    let rows = open(&p, &ReadOptions::default()).unwrap();
    assert_eq!(rows.header.as_ref().unwrap().names, ["Name", "Address", "Phone"]);
    let got = cells(rows);
    assert_eq!(got[0], (2, vec!["Zoë".into(), "1 High St\r\nYork".into(), "7700900123".into()], 0));
    assert_eq!(got[1].0, 3);
    assert_eq!(got[2], (4, vec!["Bea".into(), "x".into(), "y".into(), "surplus".into()], 1));
    assert_eq!(got[3], (5, vec!["Cy".into(), String::new(), String::new()], 0), "short rows are padded");
    assert_eq!(got[4], (6, vec!["Di".into(), "a".into(), "b".into()], 0), "empty trailing cells are not extra");
}

#[test]
fn csv_utf8_bom_and_semicolon_delimiter() {
    let p = write_tmp("bom.csv", "\u{feff}Nom;Ville\nZoë;York\n".as_bytes());
    let rows = open(&p, &ReadOptions::default()).unwrap();
    assert_eq!(rows.header.as_ref().unwrap().position("nom"), Some(0));
    assert_eq!(cells(rows)[0].1, ["Zoë", "York"]);
}

#[test]
fn encoding_detection_sees_late_windows_1252_bytes() {
    let mut bytes = "a,b\n".repeat(40_000).into_bytes();
    bytes.extend_from_slice(b"Zo\xeb,1\n");
    let p = write_tmp("late.csv", &bytes);
    let last = cells(open(&p, &ReadOptions::default()).unwrap()).pop().unwrap();
    assert_eq!(last.1[0], "Zoë");
}

#[test]
fn json_array_under_a_path_and_ndjson_with_a_bad_line() {
    let p = write_tmp("a.json", br#"{"data":[{"client":{"nhsNumber":9990000018}},3]}"#);
    let rows: Vec<Row> = open(&p, &ReadOptions { records: Some("data".into()), ..Default::default() })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let Values::Json(v) = &rows[0].values else { panic!() };
    assert_eq!(json_path(v, "client.nhsNumber").unwrap(), 9990000018u64);
    assert!(matches!(rows[1].values, Values::Unreadable { .. }));

    let p = write_tmp("b.ndjson", b"{\"a\":1}\n\n{oops\n{\"a\":2}\n");
    let rows: Vec<Row> = open(&p, &ReadOptions::default()).unwrap().map(Result::unwrap).collect();
    assert_eq!(rows.iter().map(|r| r.number).collect::<Vec<_>>(), [1, 3, 4]);
    assert!(matches!(rows[1].values, Values::Unreadable { .. }));
}

#[test]
fn excel_serial_dates() {
    assert_eq!(xlsx::excel_serial_to_iso(31_870.0, true, false), "1987-04-03");
    assert_eq!(xlsx::excel_serial_to_iso(45_000.5, true, false), "2023-03-15T12:00:00");
    assert_eq!(xlsx::excel_serial_to_iso(31_870.0 - 1_462.0, true, true), "1987-04-03");
}

#[test]
fn file_size_limit_is_a_clear_error() {
    let p = write_tmp("big.csv", b"a\n1\n");
    let err = open(&p, &ReadOptions { max_bytes: Some(2), ..Default::default() }).err().unwrap();
    assert!(err.to_string().contains("over the limit"), "{err}");
}

mod xlsx_limits {
    use super::*;
    use crate::ingest::zip_writer::{date_cell, edited, text_cell, workbook, workbook_parts};

    fn header_and(rows: &str) -> String {
        format!(r#"<row r="1">{}{}</row>{rows}"#, text_cell("A1", "Lamplight ID"), text_cell("B1", "D.O.B."))
    }

    fn error_of(name: &str, bytes: &[u8]) -> String {
        let p = write_tmp(name, bytes);
        match open(&p, &ReadOptions::default()) {
            Err(e) => e.to_string(),
            Ok(rows) => rows.filter_map(Result::err).map(|e| e.to_string()).next().unwrap_or_default(),
        }
    }

    /// Issue 12, item 10: a workbook saved with the 1904 date system keeps its dates.
    #[test]
    fn a_1904_workbook_reads_the_dates_it_shows() {
        // 1987-04-03 is serial 31870 in the 1900 system and 30408 in the 1904 one.
        let rows = header_and(&format!(r#"<row r="2">{}{}</row>"#, text_cell("A2", "10236"), date_cell("B2", 30_408)));
        let p = write_tmp("d1904.xlsx", &workbook("Clients", &rows, &[], true));
        assert_eq!(cells(open(&p, &ReadOptions::default()).unwrap())[0].1, ["10236", "1987-04-03"]);
        let rows = header_and(&format!(r#"<row r="2">{}{}</row>"#, text_cell("A2", "10236"), date_cell("B2", 31_870)));
        let p = write_tmp("d1900.xlsx", &workbook("Clients", &rows, &[], false));
        assert_eq!(cells(open(&p, &ReadOptions::default()).unwrap())[0].1, ["10236", "1987-04-03"]);
    }

    /// Issue 12, item 9: a cell at column ZZZZZ took 1.9 GB; ZZZZZZ aborted on a 7.7 GB allocation.
    #[test]
    fn far_away_cells_are_refused_before_a_row_grows() {
        for (i, far) in ["XFE2", "ZZZZZ2", "ZZZZZZ2", "ZZZZZZZZ2", "A1048577", "A99999999999"].iter().enumerate() {
            let rows = header_and(&format!(r#"<row r="2">{}{}</row>"#, text_cell("A2", "1"), text_cell(far, "x")));
            let e = error_of(&format!("far{i}.xlsx"), &workbook("Clients", &rows, &[], false));
            assert!(e.contains("beyond column XFD") && e.contains("re-export"), "{far}: {e}");
        }
        // Cells without a reference count on from the last one; past XFD they are refused too.
        let many: String = (0..16_400).map(|_| r#"<c t="inlineStr"><is><t>x</t></is></c>"#).collect();
        let e =
            error_of("many.xlsx", &workbook("Clients", &header_and(&format!("<row r=\"2\">{many}</row>")), &[], false));
        assert!(e.contains("beyond column XFD"), "{e}");
        // A backwards dimension would underflow in calamine.
        let parts = workbook_parts("Clients", &header_and(""), &[], false);
        let book = edited(parts, "xl/worksheets/sheet1.xml", "<sheetData>", r#"<dimension ref="B2:A1"/><sheetData>"#);
        let e = error_of("backwards.xlsx", &book);
        assert!(e.contains("not a range of cells"), "{e}");
    }

    /// Issue 12, item 9: a 201 KB XLSX held a 200 MB string.
    #[test]
    fn giant_cells_and_lying_counts_are_refused() {
        let big = "A".repeat(600 * 1024);
        let rows = header_and(&format!(r#"<row r="2">{}{}</row>"#, text_cell("A2", "1"), text_cell("B2", &big)));
        let e = error_of("bigcell.xlsx", &workbook("Clients", &rows, &[], false));
        assert!(e.contains("longer than 512 KiB") && e.contains("xl/worksheets/sheet1.xml"), "{e}");
        // The same through many small runs of one shared string.
        let runs: String = (0..40_000).map(|_| "<r><t>0123456789abcdef</t></r>").collect();
        let rows = header_and(r#"<row r="2"><c r="A2" t="s"><v>0</v></c></row>"#);
        let e = error_of("bigsst.xlsx", &workbook("Clients", &rows, &[&format!("</t>{runs}<t>")], false));
        assert!(e.contains("a cell is longer than 512 KiB") && e.contains("sharedStrings"), "{e}");
        // calamine reserves room for as many strings as the table claims.
        let parts = workbook_parts("Clients", &rows, &["x"], false);
        let book = edited(parts, "xl/sharedStrings.xml", r#"uniqueCount="1""#, r#"uniqueCount="9000000000""#);
        let e = error_of("count.xlsx", &book);
        assert!(e.contains("claim 9000000000 strings but hold 1"), "{e}");
    }

    #[test]
    fn shared_strings_beyond_the_open_budget_are_refused() {
        let many: Vec<String> = (0..1_600_000).map(|i| format!("{i:07}")).collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        let rows = header_and(r#"<row r="2"><c r="A2" t="s"><v>0</v></c></row>"#);
        let e = error_of("opencap.xlsx", &workbook("Clients", &rows, &refs, false));
        assert!(e.contains("unpack to more than 32 MiB"), "{e}");
    }

    #[test]
    fn a_document_type_declaration_is_refused() {
        let parts = workbook_parts("Clients", &header_and(""), &[], false);
        let book =
            edited(parts, "xl/worksheets/sheet1.xml", "<worksheet", "<!DOCTYPE x [<!ENTITY a \"b\">]><worksheet");
        let e = error_of("dtd.xlsx", &book);
        assert!(e.contains("document type"), "{e}");
    }
}

mod json_limits {
    use super::*;
    use crate::ingest::limits::MAX_JSON_RECORD_BYTES;

    fn err(rows: Result<Rows, IngestError>) -> String {
        match rows {
            Err(e) => e.to_string(),
            Ok(rows) => rows.filter_map(Result::err).map(|e| e.to_string()).next().unwrap_or_default(),
        }
    }

    #[test]
    fn arrays_stream_under_a_path_and_damage_gives_nothing() {
        let opts = |p: &str| ReadOptions { records: Some(p.into()), ..Default::default() };
        let p = write_tmp("paged.json", br#"{"meta":{"x":[1,{"y":"z"}]},"data":[{"a":1},{"a":2},"x"],"more":true}"#);
        let rows: Vec<Row> = open(&p, &opts("data")).unwrap().map(Result::unwrap).collect();
        assert_eq!(rows.iter().map(|r| r.number).collect::<Vec<_>>(), [1, 2, 3]);
        assert!(matches!(rows[2].values, Values::Unreadable { .. }));
        let p = write_tmp("nested.json", br#"{"pages":[{"data":[]},{"data":[{"a":1}]}]}"#);
        assert_eq!(open(&p, &opts("pages.1.data")).unwrap().count(), 1);
        assert!(err(open(&p, &opts("pages.2.data"))).contains("no \"pages.2.data\""));
        assert!(err(open(&p, &opts("pages"))).is_empty(), "an array of pages is an array of records");
        assert!(err(open(&p, &ReadOptions::default())).contains("expected an array of records at the top level"));
        // A half-uploaded file: nothing is read from it, as when the document was parsed whole.
        let p = write_tmp("cut.json", br#"{"data":[{"a":1},{"a":2},{"a""#);
        let e = err(open(&p, &opts("data")));
        assert!(e.contains("not valid JSON"), "{e}");
        let p = write_tmp("trail.json", br#"[{"a":1}] x"#);
        assert!(err(open(&p, &ReadOptions::default())).contains("not valid JSON"));
    }

    /// Issue 12, item 9: memory follows one record, so one record (or string) has a limit.
    #[test]
    fn an_over_long_record_or_string_stops_the_file_with_the_line() {
        let big = "x".repeat(MAX_JSON_RECORD_BYTES + 10);
        let p = write_tmp("bigstr.json", format!("[{{\"a\":1}},\n{{\"note\":\"{big}\"}}]").as_bytes());
        let e = err(open(&p, &ReadOptions::default()));
        assert!(e.contains("line 2: a record is longer than 1024 KiB"), "{e}");
        assert!(!e.contains("xxxx"), "the value is not quoted: {e}");
        // Outside the records, a string is not kept either, but it still has the same limit.
        let p = write_tmp("bigkey.json", format!("{{\"meta\":\"{big}\",\"data\":[]}}").as_bytes());
        let e = err(open(&p, &ReadOptions { records: Some("data".into()), ..Default::default() }));
        assert!(e.contains("line 1: a string is longer than 1024 KiB"), "{e}");
        let many: String = (0..MAX_JSON_RECORD_BYTES / 2 + 10).map(|_| "1,").collect();
        let p = write_tmp("bigrec.json", format!("[{{\"a\":[{many}1]}}]").as_bytes());
        assert!(err(open(&p, &ReadOptions::default())).contains("a record is longer than 1024 KiB"));
        // Big outside the records is fine: only the records are kept.
        let p = write_tmp("bigmeta.json", format!("{{\"meta\":[{many}1],\"data\":[{{\"a\":1}}]}}").as_bytes());
        let opts = ReadOptions { records: Some("data".into()), ..Default::default() };
        assert_eq!(open(&p, &opts).unwrap().map(Result::unwrap).count(), 1);
    }

    #[test]
    fn an_over_long_ndjson_line_is_an_unreadable_row_and_the_next_lines_read() {
        let big = "x".repeat(MAX_JSON_RECORD_BYTES + 10);
        let p = write_tmp("long.ndjson", format!("{{\"a\":1}}\n{{\"note\":\"{big}\"}}\r\n{{\"a\":3}}\r\n").as_bytes());
        let rows: Vec<Row> = open(&p, &ReadOptions::default()).unwrap().map(Result::unwrap).collect();
        assert_eq!(rows.len(), 3);
        let Values::Unreadable { raw, reason } = &rows[1].values else { panic!("{:?}", rows[1].values) };
        assert!(raw.is_empty() && reason.contains("over the limit"), "{reason}");
        assert!(matches!(rows[2].values, Values::Json(_)) && rows[2].number == 3);
    }

    /// Issue 12, item 9: the default limit on an export's size is 256 MiB (was 4 GiB).
    #[test]
    fn the_default_input_limit_is_256_mib() {
        assert_eq!(crate::config::LimitsConfig::default().max_input_bytes, 256 * 1024 * 1024);
    }
}
