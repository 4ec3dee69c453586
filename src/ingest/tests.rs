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
