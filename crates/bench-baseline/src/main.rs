//! The hand-written baseline of `scripts/bench.sh mapping`: the simple Patient mapping of
//! `scripts/bench/simple-patient/` written directly in Rust, the way a developer would without the connector:
//! csv + serde structs + uuid v5 (and encoding_rs for Windows-1252 exports), no validation beyond what the mapping's transforms need. Its output is the
//! same NDJSON the connector writes for that mapping (the bench script compares them), so the ratio between the
//! two is the cost of the declarative engine and its checks.
//!
//! Usage: `bench-baseline PERSON_CSV > out.ndjson` (prints rows and rows/s on stderr).

use std::io::Write;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Deserialize)]
struct Row {
    #[serde(rename = "Client ID")]
    client_id: String,
    #[serde(rename = "Forename")]
    forename: String,
    #[serde(rename = "Surname")]
    surname: String,
    #[serde(rename = "Date of Birth")]
    dob: String,
    #[serde(rename = "Gender")]
    gender: String,
    #[serde(rename = "NHS Number")]
    nhs: String,
}

// Fields in alphabetical order: the connector writes keys sorted.
#[derive(Serialize)]
struct Patient<'a> {
    #[serde(rename = "birthDate")]
    birth_date: String,
    gender: &'a str,
    id: String,
    identifier: Vec<Identifier<'a>>,
    #[serde(rename = "managingOrganization")]
    managing_organization: Reference<'a>,
    meta: Meta,
    name: [Name<'a>; 1],
    #[serde(rename = "resourceType")]
    resource_type: &'static str,
}

#[derive(Serialize)]
struct Identifier<'a> {
    system: &'a str,
    value: String,
}

#[derive(Serialize)]
struct Reference<'a> {
    reference: &'a str,
}

#[derive(Serialize)]
struct Meta {
    source: &'static str,
}

#[derive(Serialize)]
struct Name<'a> {
    family: &'a str,
    given: [&'a str; 1],
}

const SOURCE: &str = "urn:york-connector:mapping:bench/person@1.0.0";
const CLIENT_SYSTEM: &str = "https://id.york-connector.example/bench/client";
const NHS_SYSTEM: &str = "https://fhir.nhs.uk/Id/nhs-number";

fn gender(g: &str) -> &'static str {
    match g.trim().to_ascii_lowercase().as_str() {
        "m" | "male" => "male",
        "f" | "female" => "female",
        "non-binary" | "other" => "other",
        _ => "unknown",
    }
}

/// `d/m/yyyy` to ISO; none when it is not one.
fn uk_date(s: &str) -> Option<String> {
    let mut p = s.trim().split('/');
    let (d, m, y) = (p.next()?.parse().ok()?, p.next()?.parse().ok()?, p.next()?.parse().ok()?);
    chrono::NaiveDate::from_ymd_opt(y, m, d).map(|d| d.format("%Y-%m-%d").to_string())
}

fn header_text(h: &csv::ByteRecord) -> csv::StringRecord {
    h.iter().map(|c| String::from_utf8_lossy(c).into_owned()).collect()
}

fn main() {
    let path = std::env::args().nth(1).expect("usage: bench-baseline PERSON_CSV");
    let namespace = Uuid::new_v5(&Uuid::NAMESPACE_URL, b"urn:york-connector");
    let org = format!("Organization/{}", Uuid::new_v5(&namespace, b"bench/organization"));
    let started = Instant::now();
    let mut reader = csv::Reader::from_path(&path).expect("reading the export");
    let header = header_text(reader.byte_headers().expect("reading the header"));
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
    let mut rows = 0u64;
    let mut record = csv::ByteRecord::new();
    let mut fields = csv::StringRecord::new();
    while reader.read_byte_record(&mut record).expect("reading a row") {
        // Exports come in UTF-8 or Windows-1252, as the connector's readers allow: decode each cell.
        fields.clear();
        for cell in &record {
            match std::str::from_utf8(cell) {
                Ok(t) => fields.push_field(t),
                Err(_) => fields.push_field(&encoding_rs::WINDOWS_1252.decode(cell).0),
            }
        }
        let Ok(row) = fields.deserialize::<Row>(Some(&header)) else { continue };
        rows += 1;
        let Some(birth_date) = uk_date(&row.dob) else { continue };
        // Excel writes long numbers in scientific notation (9.990001057E+09).
        let nhs: String = match row.nhs.trim().parse::<f64>() {
            Ok(n) if row.nhs.contains(['E', 'e']) => format!("{n:.0}"),
            _ => row.nhs.chars().filter(char::is_ascii_digit).collect(),
        };
        let mut identifier = Vec::with_capacity(2);
        if !nhs.is_empty() {
            identifier.push(Identifier { system: NHS_SYSTEM, value: nhs });
        }
        identifier.push(Identifier { system: CLIENT_SYSTEM, value: row.client_id.clone() });
        let id = Uuid::new_v5(&namespace, format!("bench/person/patient/{}", row.client_id).as_bytes()).to_string();
        let p = Patient {
            birth_date,
            gender: gender(&row.gender),
            id,
            identifier,
            managing_organization: Reference { reference: &org },
            meta: Meta { source: SOURCE },
            name: [Name { family: row.surname.trim(), given: [row.forename.trim()] }],
            resource_type: "Patient",
        };
        serde_json::to_writer(&mut out, &p).expect("writing");
        out.write_all(b"\n").expect("writing");
    }
    out.flush().expect("writing");
    let secs = started.elapsed().as_secs_f64();
    eprintln!("baseline: {rows} rows in {secs:.3}s: {:.0} rows/s", rows as f64 / secs);
}
