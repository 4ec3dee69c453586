//! Issue 12, items 9 and 10: hostile spreadsheets and JSON exports, and workbooks in the 1904 date system,
//! through `connector mappings preview` as an admin runs it. The child's peak memory (VmHWM) is read from
//! /proc while it runs: memory must follow the readers' limits, not what a file unpacks or parses to.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use york_connector::ingest::limits::MAX_VALUE_CHARS;
use york_connector::ingest::zip_writer::{date_cell, text_cell, workbook};

const MIB: u64 = 1024 * 1024;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("connector-hostile-xlsx-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    /// Peak resident memory of the child, in bytes.
    peak: u64,
}

/// Runs `connector mappings preview` on one input, polling the child's VmHWM (a high-water mark, so a read
/// after the peak sees it) until it exits.
fn preview(dir: &Path, partner: &str, input: &Path) -> Run {
    let out = dir.join("stdout");
    let err = dir.join("stderr");
    let mut child = Command::new(env!("CARGO_BIN_EXE_connector"))
        .args(["mappings", "preview", "--partner", partner, "--input"])
        .arg(input)
        .arg("--quarantine-dir")
        .arg(dir.join("q"))
        .env("CONNECTOR_MAPPINGS", root().join("mappings"))
        .current_dir(dir)
        .stdout(Stdio::from(std::fs::File::create(&out).unwrap()))
        .stderr(Stdio::from(std::fs::File::create(&err).unwrap()))
        .spawn()
        .expect("run connector");
    let status = format!("/proc/{}/status", child.id());
    let mut peak = 0u64;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if let Ok(text) = std::fs::read_to_string(&status)
            && let Some(kib) = text
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        {
            peak = peak.max(kib * 1024);
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    eprintln!("{}: peak {} MiB", input.display(), peak / MIB);
    Run {
        code: status.code(),
        stdout: std::fs::read_to_string(out).unwrap(),
        stderr: std::fs::read_to_string(err).unwrap(),
        peak,
    }
}

/// The Carers Centre "Clients" sheet: the header and Susan Brontë (synthetic), then `more` rows.
fn clients(more: &str, date1904: bool, shared: &[&str]) -> Vec<u8> {
    let header = [
        "Lamplight ID",
        "Forename",
        "Surname",
        "D.O.B.",
        "Gender",
        "NHS No.",
        "Address 1",
        "Address 2",
        "Town/City",
        "Post Code",
        "Mobile No.",
        "Tel No.",
        "Email",
        "Caring For",
        "Date Registered",
    ];
    let columns = "ABCDEFGHIJKLMNO".chars().map(String::from).collect::<Vec<_>>();
    let header_row: String = header.iter().zip(&columns).map(|(h, c)| text_cell(&format!("{c}1"), h)).collect();
    // 1961-09-14: serial 22538 in the 1900 date system, 21076 in the 1904 one.
    let dob = if date1904 { 21_076 } else { 22_538 };
    let susan = [
        text_cell("A2", "10231"),
        text_cell("B2", "Susan"),
        text_cell("C2", "Brontë"),
        date_cell("D2", dob),
        text_cell("E2", "Female"),
        text_cell("F2", "9996642739"),
        text_cell("G2", "12 Bishopthorpe Road"),
        text_cell("I2", "York"),
        text_cell("J2", "YO23 1JJ"),
    ]
    .concat();
    let data = format!(r#"<row r="1">{header_row}</row><row r="2">{susan}</row>{more}"#);
    workbook("Clients", &data, shared, date1904)
}

fn baseline(dir: &Path) -> u64 {
    let input = dir.join("baseline-person.xlsx");
    std::fs::write(&input, clients("", false, &[])).unwrap();
    let run = preview(dir, "carers-centre", &input);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    run.peak
}

/// Issue 12, item 9: a 6.7 KB XLSX with one cell at column ZZZZZ took 1.9 GB; at ZZZZZZ it aborted on a
/// 7.7 GB allocation. Now the file is refused, naming it and the cell, in about the memory of a clean run.
#[test]
fn far_away_cells_are_refused_in_bounded_memory() {
    let dir = scratch("far");
    let base = baseline(&dir);
    for far in ["ZZZZZ3", "ZZZZZZ3"] {
        let input = dir.join(format!("person-{far}.xlsx"));
        let more = format!(r#"<row r="3">{}{}</row>"#, text_cell("A3", "10232"), text_cell(far, "x"));
        std::fs::write(&input, clients(&more, false, &[])).unwrap();
        let run = preview(&dir, "carers-centre", &input);
        assert_eq!(run.code, Some(1), "{far}: a refused file exits 1, not a crash: {}", run.stderr);
        assert!(run.stderr.contains(&format!("person-{far}.xlsx")), "{}", run.stderr);
        assert!(run.stderr.contains(far) && run.stderr.contains("beyond column XFD"), "{}", run.stderr);
        assert!(run.stderr.contains("re-export"), "says what to do: {}", run.stderr);
        assert!(!run.stderr.contains("Susan") && !run.stderr.contains("9996642739"), "{}", run.stderr);
        assert!(run.stdout.lines().all(|l| !l.contains("\"Patient\"")), "nothing of a refused file is mapped");
        assert!(run.peak < base + 32 * MIB, "{far}: peak {} MiB (a clean run: {} MiB)", run.peak / MIB, base / MIB);
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Issue 12, item 9: a 201 KB XLSX held a 200 MB string (998 MB RSS). A 64 MB shared string is refused
/// before calamine loads the shared-strings table.
#[test]
fn a_giant_shared_string_is_refused_in_bounded_memory() {
    let dir = scratch("giant");
    let base = baseline(&dir);
    let giant = "A".repeat(64 * MIB as usize);
    let more = format!(r#"<row r="3">{}<c r="B3" t="s"><v>0</v></c></row>"#, text_cell("A3", "10232"));
    let input = dir.join("person-giant.xlsx");
    std::fs::write(&input, clients(&more, false, &[&giant])).unwrap();
    drop(giant);
    let run = preview(&dir, "carers-centre", &input);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains("xl/sharedStrings.xml") && run.stderr.contains("longer than 512 KiB"),
        "{}",
        run.stderr
    );
    assert!(run.peak < base + 32 * MIB, "peak {} MiB (a clean run: {} MiB)", run.peak / MIB, base / MIB);
    let _ = std::fs::remove_dir_all(dir);
}

/// Issue 12, item 9 (cell and field lengths): a cell longer than a spreadsheet allows quarantines its row,
/// naming the column and not quoting the value; the other rows map and no resource holds such a string.
#[test]
fn an_over_long_cell_quarantines_its_row() {
    let dir = scratch("long");
    let long = "Q".repeat(MAX_VALUE_CHARS + 1);
    let more = format!(
        r#"<row r="3">{}{}{}{}{}</row>"#,
        text_cell("A3", "10232"),
        text_cell("B3", "Peter"),
        text_cell("C3", "Hughes"),
        date_cell("D3", 20_000),
        text_cell("G3", &long)
    );
    let input = dir.join("person.xlsx");
    std::fs::write(&input, clients(&more, false, &[])).unwrap();
    let run = preview(&dir, "carers-centre", &input);
    assert_eq!(run.code, Some(3), "exit 3: rows were quarantined: {}", run.stderr);
    assert!(run.stderr.contains("2 read, 1 mapped, 1 quarantined"), "{}", run.stderr);
    let line = run.stderr.lines().find(|l| l.starts_with("QUARANTINED")).unwrap();
    assert!(line.contains("row 3") && line.contains("Address 1") && line.contains("over the limit of 32767"), "{line}");
    assert!(!run.stderr.contains("QQQQ"), "the value is not quoted");
    for l in run.stdout.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert!(!v.to_string().contains("QQQQ"));
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Issue 12, item 10: a workbook saved with the 1904 date system shifted every date by four years and a
/// day (1961-09-14 became 1957-09-13). The date of birth comes out as the spreadsheet shows it.
#[test]
fn a_1904_workbook_gives_the_right_date_of_birth() {
    let dir = scratch("d1904");
    for date1904 in [true, false] {
        let input = dir.join(format!("person-{date1904}.xlsx"));
        std::fs::write(&input, clients("", date1904, &[])).unwrap();
        let run = preview(&dir, "carers-centre", &input);
        assert_eq!(run.code, Some(0), "{}", run.stderr);
        let patient: serde_json::Value = run
            .stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .find(|v: &serde_json::Value| v["resourceType"] == "Patient")
            .unwrap();
        assert_eq!(patient["birthDate"], "1961-09-14", "date1904={date1904}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Issue 12, item 9 (stream JSON arrays): a York Mind page of 60,000 clients was parsed whole, holding
/// many times the file's size. Memory now follows one record; every record is read.
#[test]
fn a_large_json_array_streams_in_bounded_memory() {
    let dir = scratch("json");
    let small = dir.join("person-small.json");
    let big = dir.join("person-big.json");
    let record = |i: u32| {
        format!(
            r#"{{"id":{},"client":{{"nhsNumber":null,"name":{{"title":null,"first":"Test","last":"Person{i}"}},"dateOfBirth":"1987-04-03","gender":"Female"}},"address":{{"line1":"{i} Bishopthorpe Road","line2":null,"town":"York","postcode":"YO23 1JJ"}},"contactDetails":{{"mobile":null,"landline":null,"email":null}},"status":"Active","notes":[{{"at":"2024-01-01","by":"staff {i}"}},{{"at":"2024-02-01","by":"staff"}}]}}"#,
            60_000 + i
        )
    };
    let doc = |n: u32| {
        let records: Vec<String> = (0..n).map(record).collect();
        format!(r#"{{"meta":{{"page":1}},"data":[{}]}}"#, records.join(","))
    };
    std::fs::write(&small, doc(10)).unwrap();
    let n = 60_000;
    std::fs::write(&big, doc(n)).unwrap();
    let size = std::fs::metadata(&big).unwrap().len();
    // The peak is sampled while the process runs, and a short run can end between two samples: the
    // baseline is the highest of three runs of the small file.
    let base = (0..3).map(|_| preview(&dir, "york-mind", &small)).max_by_key(|r| r.peak).unwrap();
    assert_eq!(base.code, Some(0), "{}", base.stderr);
    let run = preview(&dir, "york-mind", &big);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(run.stderr.contains(&format!("{n} read, {n} mapped, 0 quarantined")), "{}", run.stderr);
    assert!(
        run.peak < base.peak + size / 2,
        "peak {} MiB for a {} MiB file (10 records: {} MiB)",
        run.peak / MIB,
        size / MIB,
        base.peak / MIB
    );
    let _ = std::fs::remove_dir_all(dir);
}
