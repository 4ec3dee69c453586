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
    assert_eq!(xlsx::excel_serial_to_iso(31_870.0, true), "1987-04-03");
    assert_eq!(xlsx::excel_serial_to_iso(45_000.5, true), "2023-03-15T12:00:00");
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
    for i in 0..400 {
        text.push_str(&format!("\nline {i} of free text"));
    }
    text.push_str("\n2,after\n");
    let p = write_tmp("long.csv", text.as_bytes());
    let (rows, reasons) = outcome(open(&p, &ReadOptions::default()).unwrap());
    assert!(reasons[0].contains("past the cell limit"), "{}", reasons[0]);
    assert_eq!(rows.len(), 402, "every physical line is a row: the opener, 400 swallowed, the last");
    assert!(rows.iter().all(|r| r.1.is_none()), "the quote never closes, so nothing after it can be trusted");

    let giant = "x".repeat(csv::MAX_CELL_CHARS + 1);
    let p = write_tmp("giant.csv", format!("A,B\n1,{giant}\n2,ok\n").as_bytes());
    let (rows, reasons) = outcome(open(&p, &ReadOptions::default()).unwrap());
    assert_eq!(rows.len(), 2);
    assert!(reasons[0].contains("column \"B\" (2) holds more than 1000 characters"), "{}", reasons[0]);
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
