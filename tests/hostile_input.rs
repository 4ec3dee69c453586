//! Damaged and hostile exports through the real binary (`connector mappings preview`): for each, the exit code,
//! no crash, peak memory within a bound, every row a person sees in the file either mapped or quarantined, no
//! resource holding another person's identifiers, and no personal data on stderr.
//!
//! The damaged files are made here from the Hub's fixtures (tests/fixtures/hub), so nothing big is committed;
//! the XLSX cases build a small workbook by hand (stored zip entries) for the same reason.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Peak resident memory any case may reach. The connector holds a bounded amount per row whatever the input's
/// size; a reader that follows a cell's claimed size or a giant line goes far past this.
const PEAK_LIMIT_KB: u64 = 256 * 1024;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("connector-hostile-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What one run of the binary did.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    peak_kb: u64,
}

impl Run {
    /// Resources printed on stdout.
    fn resources(&self) -> Vec<Value> {
        self.stdout.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    /// `(read, mapped, quarantined)` for one input, or `None` when the file was not mapped at all.
    fn counts(&self, input: &Path) -> Option<(u64, u64, u64)> {
        let name = input.display().to_string();
        let line =
            self.stderr.lines().find(|l| l.contains(&name) && (l.contains(" read, ") || l.contains("NOT MAPPED")))?;
        if line.contains("NOT MAPPED") {
            return None;
        }
        let tail = &line[line.rfind(": ").unwrap() + 2..];
        let n: Vec<u64> = tail.split(", ").map(|p| p.split(' ').next().unwrap().parse().unwrap()).collect();
        Some((n[0], n[1], n[2]))
    }
}

/// Runs `connector mappings preview` on the inputs.
fn preview(scratch: &Scratch, partner: &str, inputs: &[&Path]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_connector"));
    cmd.args(["mappings", "preview", "--partner", partner]);
    for i in inputs {
        cmd.arg("--input").arg(i);
    }
    cmd.arg("--quarantine-dir").arg(scratch.0.join("q"));
    watch(scratch, cmd)
}

/// Runs the connector, watching the child's peak memory (VmHWM) while it runs.
fn watch(scratch: &Scratch, mut cmd: Command) -> Run {
    let out = scratch.0.join("stdout");
    let err = scratch.0.join("stderr");
    let mut child = cmd
        .env("CONNECTOR_MAPPINGS", root().join("mappings"))
        // Everything the connector logs; sqlx's statement log (migrations' SQL, no bound values) is left out.
        .env("CONNECTOR_LOG", "trace,sqlx=warn")
        .env_remove("RUST_BACKTRACE")
        .current_dir(&scratch.0)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .expect("run connector");
    let status_file = format!("/proc/{}/status", child.id());
    let started = Instant::now();
    let mut peak_kb = 0;
    let status = loop {
        if let Ok(text) = std::fs::read_to_string(&status_file)
            && let Some(kb) = text
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        {
            peak_kb = peak_kb.max(kb);
        }
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(300) || peak_kb > 4 * PEAK_LIMIT_KB {
            // Far past the bound: stop it before it takes the machine with it.
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let read = |p: &Path| {
        let mut s = Vec::new();
        std::fs::File::open(p).unwrap().read_to_end(&mut s).unwrap();
        String::from_utf8_lossy(&s).into_owned()
    };
    Run { code: status.code(), stdout: read(&out), stderr: read(&err), peak_kb }
}

/// One person of the Hub's person fixture: what identifies them and what must never be logged.
struct Person {
    client_id: String,
    nhs: Option<String>,
    personal: Vec<String>,
}

/// The Hub's person.csv as text (it is Windows-1252), header first.
fn hub_person_text() -> String {
    let bytes = std::fs::read(root().join("tests/fixtures/hub/person.csv")).unwrap();
    encoding_rs::WINDOWS_1252.decode(&bytes).0.into_owned()
}

/// The people of the Hub's person fixture (the multi-line address joined back).
fn hub_people() -> Vec<Person> {
    let text = hub_person_text().replace("\"Flat 3\nRiverside Court\"", "Flat 3 Riverside Court");
    text.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let c: Vec<&str> = l.trim_end_matches('\r').split(',').collect();
            let nhs: String = c[5].chars().filter(char::is_ascii_digit).collect();
            // Forename, surname, date of birth, NHS number as written, address line 1, postcode, e-mail.
            let personal = [1, 2, 3, 5, 7, 10, 13]
                .iter()
                .map(|&i| c[i].trim().to_string())
                .filter(|v| v.chars().count() >= 4)
                // Row 16's unquoted comma shifts the town into the postcode column: "York" is no one's
                // personal data (and is in partner names such as "York Mind" that preview prints).
                .filter(|v| v != "York")
                .collect();
            Person {
                client_id: c[0].to_string(),
                nhs: (nhs.len() == 10 && !c[5].contains('E')).then_some(nhs),
                personal,
            }
        })
        .collect()
}

/// The checks every case makes.
fn assert_safe(run: &Run, case: &str, people: &[Person]) {
    let all = format!("{case}: exit {:?}\n--- stderr ---\n{}", run.code, cut(&run.stderr));
    assert!(run.code.is_some(), "{all}\nkilled by a signal (crash, abort or out of memory)");
    assert!(!run.stderr.contains("panicked"), "{all}");
    assert!(run.peak_kb > 0, "{case}: peak memory was not measured");
    assert!(run.peak_kb <= PEAK_LIMIT_KB, "{case}: peak memory {} kB over {PEAK_LIMIT_KB} kB", run.peak_kb);
    assert!(run.stderr.lines().all(|l| l.chars().count() <= 2000), "{case}: an unbounded log line\n{all}");
    for p in people {
        for v in &p.personal {
            assert!(!run.stderr.contains(v.as_str()), "{case}: personal data of {} on stderr\n{all}", p.client_id);
        }
        if let Some(n) = &p.nhs {
            assert!(!run.stderr.contains(n.as_str()), "{case}: an NHS number on stderr\n{all}");
        }
    }
    for r in run.resources() {
        let text = r.to_string();
        let whose: BTreeSet<&str> = people
            .iter()
            .filter(|p| {
                text.contains(&format!("\"{}\"", p.client_id))
                    || p.nhs.as_ref().is_some_and(|n| text.contains(n.as_str()))
            })
            .map(|p| p.client_id.as_str())
            .collect();
        assert!(whose.len() <= 1, "{case}: one resource holds the identifiers of {whose:?}");
        assert_no_long_values(&r, case);
    }
}

fn assert_no_long_values(v: &Value, case: &str) {
    match v {
        Value::String(s) => assert!(s.chars().count() <= 1000, "{case}: a resource value of {} chars", s.len()),
        Value::Array(a) => a.iter().for_each(|x| assert_no_long_values(x, case)),
        Value::Object(m) => m.values().for_each(|x| assert_no_long_values(x, case)),
        _ => {}
    }
}

fn cut(s: &str) -> String {
    match s.char_indices().nth(6000) {
        Some((end, _)) => format!("{}... ({} bytes)", &s[..end], s.len()),
        None => s.to_string(),
    }
}

/// The Hub's person export as UTF-8 with CRLF, as many systems write it.
fn hub_person_utf8() -> String {
    hub_person_text()
}

/// Rows a person sees in the Hub's person.csv (the header is not one).
const HUB_PERSON_ROWS: u64 = 16;

#[test]
fn unclosed_quote_keeps_every_swallowed_person_aside_and_counts_add_up() {
    let s = Scratch::new("unclosed");
    let text = hub_person_text().replace(",4 Heslington Lane,", ",\"4 Heslington Lane,");
    assert_ne!(text, hub_person_text());
    let input = s.write("person.csv", text.as_bytes());
    let run = preview(&s, "hub", &[&input]);
    let people = hub_people();
    assert_safe(&run, "unclosed quote", &people);
    assert_eq!(run.code, Some(3), "rows were quarantined\n{}", run.stderr);
    let (read, mapped, quarantined) = run.counts(&input).expect("the file is mapped");
    assert_eq!(read, HUB_PERSON_ROWS, "every row a person sees is read\n{}", run.stderr);
    assert_eq!(read, mapped + quarantined);
    // Row 3 opened the quote; rows 4 to 7 were inside it; 8, 11, 14 and 16 are the fixture's own bad rows.
    for row in 3..=7 {
        assert!(run.stderr.contains(&format!(": row {row}")), "row {row} is not quarantined\n{}", run.stderr);
    }
    assert!(run.stderr.contains("opens a quote that is not closed"), "{}", run.stderr);
    assert_eq!(quarantined, 9, "{}", run.stderr);
}

#[test]
fn header_missing_names_the_missing_columns_and_leaks_nothing() {
    let s = Scratch::new("noheader");
    let text = hub_person_text();
    let without = &text[text.find('\n').unwrap() + 1..];
    let input = s.write("person.csv", without.as_bytes());
    let run = preview(&s, "hub", &[&input]);
    assert_safe(&run, "header missing", &hub_people());
    assert_eq!(run.code, Some(1), "the file is not mapped\n{}", run.stderr);
    assert_eq!(run.counts(&input), None);
    assert!(run.stderr.contains("header row is probably missing"), "{}", run.stderr);
    assert!(run.stderr.contains("\"Client ID\""), "names the expected column\n{}", run.stderr);
}

#[test]
fn one_enormous_header_less_line_gives_a_short_error() {
    let s = Scratch::new("hugeline");
    let text = hub_person_text();
    let first_row = text.lines().nth(1).unwrap().trim_end_matches('\r').to_string();
    let line = vec![first_row; 60_000].join(",");
    assert!(line.len() > 6_000_000);
    let input = s.write("person.csv", line.as_bytes());
    let run = preview(&s, "hub", &[&input]);
    assert_safe(&run, "one enormous line", &hub_people());
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.len() < 4000, "stderr is {} bytes", run.stderr.len());
}

#[test]
fn a_stray_byte_in_utf8_quarantines_its_row_and_keeps_accents() {
    let s = Scratch::new("badbyte");
    let mut bytes = Vec::new();
    for line in hub_person_utf8().split_inclusive('\n') {
        if line.starts_with("HUB-1006,") {
            // Connor Walsh's surname gets one byte that is not UTF-8.
            let at = line.find("Walsh").unwrap() + 3;
            bytes.extend_from_slice(&line.as_bytes()[..at]);
            bytes.push(0xFF);
            bytes.extend_from_slice(&line.as_bytes()[at..]);
        } else {
            bytes.extend_from_slice(line.as_bytes());
        }
    }
    assert!(std::str::from_utf8(&bytes).is_err());
    let input = s.write("person.csv", &bytes);
    let run = preview(&s, "hub", &[&input]);
    let people = hub_people();
    assert_safe(&run, "stray byte", &people);
    assert_eq!(run.code, Some(3));
    let (read, mapped, quarantined) = run.counts(&input).expect("the file is mapped");
    assert_eq!((read, mapped + quarantined), (HUB_PERSON_ROWS, HUB_PERSON_ROWS), "{}", run.stderr);
    let families: Vec<String> = run
        .resources()
        .iter()
        .filter(|r| r["resourceType"] == "Patient")
        .map(|r| r["name"][0]["family"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(families.iter().any(|f| f == "Brontë"), "accents survive: {families:?}");
    assert!(!families.iter().any(|f| f.contains('Ã')), "nothing decoded as Windows-1252: {families:?}");
    assert!(
        run.stderr.contains("row 9") && run.stderr.contains("invalid UTF-8 in column \"Surname\""),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("encoding=\"utf-8\"") || run.stderr.contains("encoding=utf-8"),
        "the fallback is logged\n{}",
        run.stderr
    );
}

#[test]
fn a_giant_cell_quarantines_its_row_within_bounded_memory() {
    let s = Scratch::new("giant");
    let giant = "A".repeat(5 << 20);
    let text = hub_person_utf8().replace("41 Gillygate", &giant);
    let input = s.write("person.csv", text.as_bytes());
    let run = preview(&s, "hub", &[&input]);
    assert_safe(&run, "giant cell", &hub_people());
    assert_eq!(run.code, Some(3));
    let (read, mapped, quarantined) = run.counts(&input).expect("the file is mapped");
    assert_eq!((read, mapped + quarantined), (HUB_PERSON_ROWS, HUB_PERSON_ROWS), "{}", run.stderr);
    assert!(run.stderr.contains("row 15"), "{}", run.stderr);
}

/// `connector sync --once --dry-run` over the Hub's exports, the person export replaced by `person`: the daemon's
/// own path (config, state store, consent, sharing rules), which maps, plans and sends nothing. The destination is
/// a loopback address nothing listens on: a dry run compares with the state store, not the server.
fn dry_run_sync(s: &Scratch, person: &Path) -> (Run, Value) {
    let fixtures = root().join("tests/fixtures/hub");
    let config = format!(
        "[state]\nurl = \"sqlite://{state}\"\n[mappings]\ndir = \"{mappings}\"\n\
         [destination.cito]\nprofile = \"cito\"\nbase_url = \"http://127.0.0.1:9/fhir\"\n\
         [[partner]]\nid = \"hub\"\nsource = [\n\
           {{ kind = \"person\", path = \"{person}\" }},\n\
           {{ kind = \"consent\", path = \"{consent}\" }},\n]\n\
         [[sharing]]\nname = \"ISA test\"\npartner = \"hub\"\ndestination = \"cito\"\n\
         categories = [\"general_health\", \"mental_health\", \"social_care\"]\nlawful_basis = \"test\"\n",
        state = s.0.join("state.db").display(),
        mappings = root().join("mappings").display(),
        person = person.display(),
        consent = fixtures.join("consent.csv").display(),
    );
    let cfg = s.write("config.toml", config.as_bytes());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_connector"));
    cmd.args(["sync", "--once", "--dry-run", "--format", "json", "--config"]).arg(&cfg);
    let run = watch(s, cmd);
    let report: Value =
        serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}\n{}", run.stdout, run.stderr));
    (run, report)
}

#[test]
fn dry_run_sync_of_an_unclosed_quote_plans_nobody_merged() {
    let s = Scratch::new("dry-run-unclosed");
    let text = hub_person_text().replace(",4 Heslington Lane,", ",\"4 Heslington Lane,");
    let person = s.write("person.csv", text.as_bytes());
    let (run, report) = dry_run_sync(&s, &person);
    let people = hub_people();
    let check = Run { stdout: String::new(), ..run };
    assert_safe(&check, "dry-run sync, unclosed quote", &people);
    assert!(!check.stderr.contains("Heslington"), "{}", check.stderr);
    assert_eq!(check.code, Some(3), "rows were quarantined\n{}", check.stderr);
    let files = report["ingest"][0]["mapping"]["files"].as_array().unwrap();
    let f = files.iter().find(|f| f["kind"] == "person").unwrap();
    assert_eq!((f["read"].as_u64(), f["quarantined"].as_u64()), (Some(HUB_PERSON_ROWS), Some(9)), "{report}");
    assert_eq!(f["read"].as_u64().unwrap(), f["mapped"].as_u64().unwrap() + f["quarantined"].as_u64().unwrap());
    for p in &people {
        for v in &p.personal {
            assert!(!run_stdout_has(&report, v), "personal data of {} in the report", p.client_id);
        }
    }
}

#[test]
fn dry_run_sync_of_a_header_less_export_logs_no_record() {
    let s = Scratch::new("dry-run-noheader");
    let text = hub_person_text();
    let person = s.write("person.csv", &text.as_bytes()[text.find('\n').unwrap() + 1..]);
    let (run, report) = dry_run_sync(&s, &person);
    let check = Run { stdout: String::new(), ..run };
    assert_safe(&check, "dry-run sync, header missing", &hub_people());
    assert_eq!(check.code, Some(1), "{}", check.stderr);
    assert!(
        check.stderr.contains("Export not mapped.") && check.stderr.contains("header row is probably missing"),
        "{}",
        check.stderr
    );
    let files = report["ingest"][0]["mapping"]["files"].as_array().unwrap();
    let f = files.iter().find(|f| f["kind"] == "person").unwrap();
    assert!(f["error"].as_str().is_some_and(|e| e.chars().count() <= 320), "{report}");
    for p in &hub_people() {
        for v in &p.personal {
            assert!(!run_stdout_has(&report, v), "personal data of {} in the report", p.client_id);
        }
    }
}

fn run_stdout_has(report: &Value, needle: &str) -> bool {
    report.to_string().contains(needle)
}

/// The Hub's consent export with one cell changed, mapped with the person export it refers to.
fn consent_case(name: &str, from: &str, to: &str) -> (Scratch, Run, PathBuf) {
    let s = Scratch::new(name);
    let consent = std::fs::read_to_string(root().join("tests/fixtures/hub/consent.csv")).unwrap();
    let changed = consent.replacen(from, to, 1);
    assert_ne!(changed, consent);
    let person = s.write("person.csv", &std::fs::read(root().join("tests/fixtures/hub/person.csv")).unwrap());
    let input = s.write("consent.csv", changed.as_bytes());
    let run = preview(&s, "hub", &[&person, &input]);
    (s, run, input)
}

#[test]
fn an_impossible_consent_date_is_quarantined() {
    let (_s, run, input) =
        consent_case("consent-impossible", "CN-702,HUB-1002,20/03/2023", "CN-702,HUB-1002,31/02/2025");
    assert_safe(&run, "impossible consent date", &hub_people());
    assert_eq!(run.code, Some(3));
    let (read, mapped, quarantined) = run.counts(&input).expect("the file is mapped");
    assert_eq!(read, mapped + quarantined);
    assert!(run.stderr.contains("key CN-702"), "{}", run.stderr);
}

#[test]
fn a_future_consent_date_is_quarantined() {
    let (_s, run, input) = consent_case("consent-future", "CN-702,HUB-1002,20/03/2023", "CN-702,HUB-1002,20/03/2033");
    assert_safe(&run, "future consent date", &hub_people());
    assert_eq!(run.code, Some(3));
    let (read, mapped, quarantined) = run.counts(&input).expect("the file is mapped");
    assert_eq!(read, mapped + quarantined);
    assert!(run.stderr.contains("key CN-702"), "{}", run.stderr);
}

// ---- XLSX, built by hand: a zip of stored (uncompressed) entries (ingest::zip_writer) ----

fn zip_stored(entries: &[(&str, String)]) -> Vec<u8> {
    let parts: Vec<(&str, &[u8])> = entries.iter().map(|(name, body)| (*name, body.as_bytes())).collect();
    york_connector::ingest::zip_writer::stored_zip(&parts)
}

fn inline(cell: &str, text: &str) -> String {
    format!("<c r=\"{cell}\" t=\"inlineStr\"><is><t>{text}</t></is></c>")
}

/// A Carers Centre "Clients" workbook with two people; `extra` is added to the first person's row.
fn carers_workbook(date1904: bool, dob_serials: [u32; 2], extra: &str) -> Vec<u8> {
    let header = ["Lamplight ID", "Forename", "Surname", "D.O.B.", "Gender", "NHS No."];
    let cols = ["A", "B", "C", "D", "E", "F"];
    let mut rows = String::from("<row r=\"1\">");
    for (c, h) in cols.iter().zip(header) {
        rows.push_str(&inline(&format!("{c}1"), h));
    }
    rows.push_str("</row>");
    let people =
        [("CC-2001", "Zoë", "Brontë", "Female", "9990123403"), ("CC-2002", "Daniel", "Okafor", "Male", "9993001465")];
    for (i, (id, given, family, gender, nhs)) in people.iter().enumerate() {
        let r = i + 2;
        rows.push_str(&format!("<row r=\"{r}\">"));
        rows.push_str(&inline(&format!("A{r}"), id));
        rows.push_str(&inline(&format!("B{r}"), given));
        rows.push_str(&inline(&format!("C{r}"), family));
        rows.push_str(&format!("<c r=\"D{r}\" s=\"1\"><v>{}</v></c>", dob_serials[i]));
        rows.push_str(&inline(&format!("E{r}"), gender));
        rows.push_str(&inline(&format!("F{r}"), nhs));
        if i == 0 {
            rows.push_str(extra);
        }
        rows.push_str("</row>");
    }
    let main = "http://schemas.openxmlformats.org/spreadsheetml/2006/main";
    let rel = "http://schemas.openxmlformats.org/officeDocument/2006/relationships";
    let pkg = "http://schemas.openxmlformats.org/package/2006/relationships";
    let ct = "application/vnd.openxmlformats-officedocument.spreadsheetml";
    zip_stored(&[
        (
            "[Content_Types].xml",
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Types xmlns=\"http://schemas.openxmlformats.org/package/2006/content-types\">\
                 <Default Extension=\"rels\" ContentType=\"application/vnd.openxmlformats-package.relationships+xml\"/>\
                 <Default Extension=\"xml\" ContentType=\"application/xml\"/>\
                 <Override PartName=\"/xl/workbook.xml\" ContentType=\"{ct}.sheet.main+xml\"/>\
                 <Override PartName=\"/xl/worksheets/sheet1.xml\" ContentType=\"{ct}.worksheet+xml\"/>\
                 <Override PartName=\"/xl/styles.xml\" ContentType=\"{ct}.styles+xml\"/></Types>"
            ),
        ),
        (
            "_rels/.rels",
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Relationships xmlns=\"{pkg}\"><Relationship Id=\"rId1\" \
                 Type=\"{rel}/officeDocument\" Target=\"xl/workbook.xml\"/></Relationships>"
            ),
        ),
        (
            "xl/workbook.xml",
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><workbook xmlns=\"{main}\" xmlns:r=\"{rel}\"><workbookPr{}/>\
                 <sheets><sheet name=\"Clients\" sheetId=\"1\" r:id=\"rId1\"/></sheets></workbook>",
                if date1904 { " date1904=\"1\"" } else { "" }
            ),
        ),
        (
            "xl/_rels/workbook.xml.rels",
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Relationships xmlns=\"{pkg}\">\
                 <Relationship Id=\"rId1\" Type=\"{rel}/worksheet\" Target=\"worksheets/sheet1.xml\"/>\
                 <Relationship Id=\"rId2\" Type=\"{rel}/styles\" Target=\"styles.xml\"/></Relationships>"
            ),
        ),
        (
            "xl/styles.xml",
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><styleSheet xmlns=\"{main}\">\
                 <numFmts count=\"1\"><numFmt numFmtId=\"167\" formatCode=\"dd/mm/yyyy\"/></numFmts>\
                 <fonts count=\"1\"><font/></fonts><fills count=\"1\"><fill/></fills><borders count=\"1\"><border/></borders>\
                 <cellStyleXfs count=\"1\"><xf numFmtId=\"0\"/></cellStyleXfs>\
                 <cellXfs count=\"2\"><xf numFmtId=\"0\" xfId=\"0\"/><xf numFmtId=\"167\" xfId=\"0\" applyNumberFormat=\"1\"/></cellXfs>\
                 </styleSheet>"
            ),
        ),
        (
            "xl/worksheets/sheet1.xml",
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><worksheet xmlns=\"{main}\"><sheetData>{rows}</sheetData></worksheet>"
            ),
        ),
    ])
}

fn carers_people() -> Vec<Person> {
    vec![
        Person { client_id: "CC-2001".into(), nhs: Some("9990123403".into()), personal: vec!["Brontë".into()] },
        Person {
            client_id: "CC-2002".into(),
            nhs: Some("9993001465".into()),
            personal: vec!["Okafor".into(), "Daniel".into()],
        },
    ]
}

#[test]
fn a_hand_built_workbook_maps() {
    // The generator itself: 1 April 1987 and 10 May 1990 in the 1900 date system.
    let s = Scratch::new("xlsx-plain");
    let input = s.write("person.xlsx", &carers_workbook(false, [31868, 33003], ""));
    let run = preview(&s, "carers-centre", &[&input]);
    assert_safe(&run, "plain workbook", &carers_people());
    assert_eq!(run.counts(&input), Some((2, 2, 0)), "{}", run.stderr);
    let resources = run.resources();
    let dobs: BTreeSet<&str> = resources.iter().filter_map(|r| r["birthDate"].as_str()).collect();
    assert_eq!(dobs, BTreeSet::from(["1987-04-01", "1990-05-10"]), "{}", run.stdout);
}

#[test]
fn a_1904_workbook_keeps_dates_of_birth() {
    let s = Scratch::new("xlsx-1904");
    // The same dates in the 1904 system are 1462 days smaller.
    let input = s.write("person.xlsx", &carers_workbook(true, [31868 - 1462, 33003 - 1462], ""));
    let run = preview(&s, "carers-centre", &[&input]);
    assert_safe(&run, "1904 workbook", &carers_people());
    let resources = run.resources();
    let dobs: BTreeSet<&str> = resources.iter().filter_map(|r| r["birthDate"].as_str()).collect();
    assert_eq!(dobs, BTreeSet::from(["1987-04-01", "1990-05-10"]), "{}", run.stderr);
}

#[test]
fn a_far_away_xlsx_cell_is_refused_within_bounded_memory() {
    let s = Scratch::new("xlsx-far");
    let input = s.write("person.xlsx", &carers_workbook(false, [31868, 33003], &inline("ZZZZZ2", "x")));
    let run = preview(&s, "carers-centre", &[&input]);
    assert_safe(&run, "far-away cell", &carers_people());
    assert_ne!(run.code, Some(0), "{}", run.stderr);
    if let Some((read, mapped, quarantined)) = run.counts(&input) {
        assert_eq!((read, mapped + quarantined), (2, 2), "{}", run.stderr);
    }
}
