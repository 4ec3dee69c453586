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

#[test]
fn messages_are_capped_on_a_char_boundary() {
    let long = "ë".repeat(1000);
    let capped = cap_message(long);
    assert_eq!(capped.chars().filter(|&c| c == 'ë').count(), MAX_MESSAGE_CHARS);
    assert!(capped.ends_with("(message cut)"));
    assert_eq!(cap_message("short".into()), "short");
}

#[test]
fn header_cells_that_look_like_data() {
    for data in
        ["999 012 3403", "9990123403", "999-012-3403", "9.992115785E+09", "3/4/1987", "1987-04-03", "24/03/2023 10:00"]
    {
        assert!(looks_like_data(data), "{data}");
    }
    for name in ["NHS Number", "Date of Birth", "Contact Date/Time", "Client ID", "Q1", "2023 score"] {
        assert!(!looks_like_data(name), "{name}");
    }
}

/// A row's number and its cells, `None` when the reader kept it aside.
type Outcome = (u64, Option<Vec<String>>);

/// Each row as (number, Some(cells)) or (number, None) for a row kept aside, with the reasons of those.
fn outcome(rows: Rows) -> (Vec<Outcome>, Vec<String>) {
    let mut out = Vec::new();
    let mut reasons = Vec::new();
    for r in rows {
        let r = r.unwrap();
        match r.values {
            Values::Cells(c) => out.push((r.number, Some(c))),
            Values::Untrusted { reason, .. } => {
                out.push((r.number, None));
                reasons.push(reason);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    (out, reasons)
}

const PEOPLE_HEADER: &str = "Client ID,Forename,Surname,NHS Number,Address Line 1,Town\r\n";

#[test]
fn csv_unclosed_quote_keeps_aside_the_row_and_every_row_it_swallowed() {
    let text = format!(
        "{PEOPLE_HEADER}\
         P1,Zoë,Brontë,999 012 3403,12 Bishopthorpe Road,York\r\n\
         P2,Siân,Roberts,,\"4 Heslington Lane,York\r\n\
         P3,Mohammed,Iqbal,9992115785,58 Burton Stone Lane,York\r\n\
         P4,Daniel,Okafor,9993001465,7 Water End,York\r\n\
         P5,Ewa,Kowalska,999 402 6135,\"Flat 3\r\n\
         Riverside Court\",York\r\n\
         P6,Connor,Walsh,9995158302,21 Tang Hall Lane,York\r\n\
         P7,Tom,Bennett,999 846 2010,\"41 Gillygate\nYork Centre\",York\r\n"
    );
    let p = write_tmp("unclosed.csv", text.as_bytes());
    let (rows, reasons) = outcome(open(&p, &ReadOptions::default()).unwrap());
    let numbers: Vec<u64> = rows.iter().map(|r| r.0).collect();
    assert_eq!(numbers, [2, 3, 4, 5, 6, 7, 8], "seven people, seven rows: nobody vanishes");
    assert_eq!(rows[0].1.as_ref().unwrap()[1], "Zoë");
    // Row 3 opened the quote; 4 and 5 were swallowed whole; 6 (Ewa) starts inside the swallowed stretch, which
    // ends where the quote before "Flat 3" would have closed it.
    assert!(rows[1..5].iter().all(|r| r.1.is_none()), "{rows:?}");
    assert!(reasons[0].contains("column \"Address Line 1\" (5) opens a quote that is not closed"), "{}", reasons[0]);
    assert!(reasons[1].contains("inside the quote left open on row 3"), "{}", reasons[1]);
    assert_eq!(reasons.len(), 4);
    assert_eq!(rows[5].1.as_ref().unwrap()[0], "P6", "reading resumes after the swallowed stretch");
    // The kept-aside rows still carry their cells (so the quarantined record names its key), nothing from others.
    let p = write_tmp("unclosed-cells.csv", text.as_bytes());
    let kept: Vec<Vec<String>> = open(&p, &ReadOptions::default())
        .unwrap()
        .filter_map(|r| match r.unwrap().values {
            Values::Untrusted { cells, .. } => Some(cells),
            _ => None,
        })
        .collect();
    assert_eq!(kept[0][..5], ["P2", "Siân", "Roberts", "", "4 Heslington Lane,York"]);
    assert_eq!(kept[1][0], "P3");
    assert_eq!(rows[6].1.as_ref().unwrap()[4], "41 Gillygate\nYork Centre", "a real multi-line cell still reads");
    for r in &reasons {
        for value in ["Heslington", "Mohammed", "999", "Ewa", "Flat"] {
            assert!(!r.contains(value), "a reason quotes a value: {r}");
        }
    }
}

#[test]
fn csv_quote_open_at_the_end_of_the_file_and_giant_cells() {
    let text = format!("{PEOPLE_HEADER}P1,Zoë,Brontë,,\"12 Bishopthorpe Road,York\r\nP2,Siân,Roberts,,4 Lane,York\r\n");
    let p = write_tmp("eof.csv", text.as_bytes());
    let (rows, reasons) = outcome(open(&p, &ReadOptions::default()).unwrap());
    assert_eq!(rows.iter().map(|r| (r.0, r.1.is_some())).collect::<Vec<_>>(), [(2, false), (3, false)]);
    assert!(reasons[0].contains("opens a quote"), "{}", reasons[0]);

    // A quote that never closes over narrow rows (not shaped like the header) is still caught by the cell limit.
    let mut text = "Client ID,Note\n1,\"open".to_string();
    for i in 0..7000 {
        text.push_str(&format!("\nline {i} of free text"));
    }
    text.push_str("\n2,after\n");
    let p = write_tmp("long.csv", text.as_bytes());
    let (rows, reasons) = outcome(open(&p, &ReadOptions::default()).unwrap());
    assert!(reasons[0].contains("past the cell limit"), "{}", reasons[0]);
    assert_eq!(rows.len(), 7002, "every physical line is a row: the opener, 7000 swallowed, the last");
    assert!(rows.iter().all(|r| r.1.is_none()), "the quote never closes, so nothing after it can be trusted");

    let giant = "x".repeat(csv::MAX_CELL_CHARS + 1);
    let p = write_tmp("giant.csv", format!("A,B\n1,{giant}\n2,ok\n").as_bytes());
    let (rows, reasons) = outcome(open(&p, &ReadOptions::default()).unwrap());
    assert_eq!(rows.len(), 2);
    assert!(reasons[0].contains("column \"B\" (2) holds more than 32767 characters"), "{}", reasons[0]);
    assert!(reasons[0].len() < 400);

    // One enormous line costs a bounded amount of memory and is one quarantined row.
    let p = write_tmp("huge-line.csv", format!("A,B\n1,{}\n2,ok\n", "y".repeat(3 << 20)).as_bytes());
    let (rows, reasons) = outcome(open(&p, &ReadOptions::default()).unwrap());
    assert_eq!(rows.iter().map(|r| (r.0, r.1.is_some())).collect::<Vec<_>>(), [(2, false), (3, true)]);
    assert!(reasons[0].contains("longer than"), "{}", reasons[0]);
}

#[test]
fn csv_utf8_with_a_stray_byte_stays_utf8_and_quarantines_that_row() {
    let mut bytes = format!("{PEOPLE_HEADER}P1,Zoë,Brontë,,12 Road,York\r\n").into_bytes();
    bytes.extend_from_slice(b"P2,Si\xe2n,Roberts,,4 Lane,York\r\n");
    bytes.extend_from_slice("P3,Niamh,O’Brien,,16 Street,York\r\n".as_bytes());
    let p = write_tmp("stray.csv", &bytes);
    let (rows, reasons) = outcome(open(&p, &ReadOptions::default()).unwrap());
    assert_eq!(rows[0].1.as_ref().unwrap()[2], "Brontë", "not decoded as Windows-1252");
    assert!(rows[1].1.is_none());
    assert!(
        reasons[0].contains("invalid UTF-8 in column \"Forename\" (2)") && reasons[0].contains("re-export it as UTF-8")
    );
    assert_eq!(rows[2].1.as_ref().unwrap()[2], "O’Brien");

    // The same with a byte order mark.
    let mut with_bom = b"\xef\xbb\xbf".to_vec();
    with_bom.extend_from_slice(&bytes);
    let p = write_tmp("stray-bom.csv", &with_bom);
    let (rows, _) = outcome(open(&p, &ReadOptions::default()).unwrap());
    assert_eq!(rows.iter().map(|r| r.1.is_some()).collect::<Vec<_>>(), [true, false, true]);
}

#[test]
fn encoding_choice_counts_valid_and_invalid_sequences() {
    let mut bytes = "Brontë,Zoë\n".repeat(3).into_bytes();
    bytes.extend_from_slice(b"Si\xe2n\n");
    let p = write_tmp("mostly-utf8.csv", &bytes);
    assert_eq!(encoding::detect(&p).unwrap(), encoding_rs::UTF_8);
    let p = write_tmp("cp1252.csv", b"Zo\xeb,Bront\xeb\nSi\xe2n,O\x92Brien\n");
    assert_eq!(encoding::detect(&p).unwrap(), encoding_rs::WINDOWS_1252);
}

#[test]
fn csv_reader_reads_any_mess_without_panicking_or_losing_lines() {
    // A small deterministic generator over the bytes that matter to the parser: quotes, delimiters, line ends,
    // a multi-byte letter and bytes that are not UTF-8.
    let alphabet: [&[u8]; 9] = [b"a", b",", b"\"", b"\r\n", b"\n", "ë".as_bytes(), b"\xff", b"\"\"", b"1,2,3,4"];
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for case in 0..1500 {
        let mut bytes = b"A,B,C,D\n".to_vec();
        for _ in 0..(next() % 120) {
            bytes.extend_from_slice(alphabet[(next() % alphabet.len() as u64) as usize]);
        }
        let p = write_tmp("mess.csv", &bytes);
        let rows = open(&p, &ReadOptions::default()).unwrap();
        let mut last = 1;
        for r in rows {
            let r = r.unwrap_or_else(|e| panic!("case {case}: {e}: {bytes:?}"));
            assert!(r.number > last, "case {case}: row numbers go up");
            last = r.number;
        }
    }
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
