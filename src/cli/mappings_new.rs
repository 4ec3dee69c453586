//! `connector mappings new`: a starting mapping written from an export's header. The usual columns (client
//! reference, names, date of birth, NHS number, address, postcode, phones, email, gender, a consent Y/N) are
//! recognised by their folded names and common variants and bound to fields with the right transforms; every
//! other column gets a `# TODO`. A fixture with the header and one synthetic row, and its expected output, are
//! written beside it, and the mappings are loaded to prove the result passes `mappings check`.
//!
//! Nothing from the export but its column names is written: the fixture's row is invented (an NHS number in
//! the 999 range that passes Modulus 11), so an export holding real people can be used safely.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde_json::Value;

use crate::ingest::{self, Format, ReadOptions, Values};
use crate::mapping::{self, RecordKind};

#[derive(Debug, clap::Args)]
pub struct NewArgs {
    /// The partner's id: its folder under the mappings folder (lower case letters, digits and `-`).
    #[arg(long)]
    partner: String,
    /// The record kind this export holds (person, carer, referral, episode, contact, goals, reqol, consent).
    /// For an export holding several kinds, run once per kind: they share one fixture.
    #[arg(long)]
    kind: String,
    /// The export to read the header from (CSV, XLSX, JSON or NDJSON). Only its column names are used.
    #[arg(long = "from")]
    from: PathBuf,
    /// Overwrite an existing mapping (and the fixture and expected output).
    #[arg(long)]
    force: bool,
    /// Folder with one sub-folder of fixtures per partner [default: `tests/fixtures` beside the mappings
    /// folder].
    #[arg(long)]
    fixtures: Option<PathBuf>,
}

/// The columns `new` recognises, each bound to a field of a fixed name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Concept {
    ClientId,
    RecordId,
    Given,
    Family,
    Dob,
    Nhs,
    Address,
    Address1,
    Address2,
    Address3,
    Town,
    Postcode,
    Mobile,
    HomePhone,
    Email,
    Gender,
    Consent,
    ConsentDate,
}

impl Concept {
    const ALL: [Concept; 18] = [
        Self::ClientId,
        Self::RecordId,
        Self::Given,
        Self::Family,
        Self::Dob,
        Self::Nhs,
        Self::Address,
        Self::Address1,
        Self::Address2,
        Self::Address3,
        Self::Town,
        Self::Postcode,
        Self::Mobile,
        Self::HomePhone,
        Self::Email,
        Self::Gender,
        Self::Consent,
        Self::ConsentDate,
    ];

    fn field(self) -> &'static str {
        match self {
            Self::ClientId => "client_id",
            Self::RecordId => "record_id",
            Self::Given => "given",
            Self::Family => "family",
            Self::Dob => "dob",
            Self::Nhs => "nhs_number",
            Self::Address => "address",
            Self::Address1 => "address_1",
            Self::Address2 => "address_2",
            Self::Address3 => "address_3",
            Self::Town => "town",
            Self::Postcode => "postcode",
            Self::Mobile => "mobile",
            Self::HomePhone => "home_phone",
            Self::Email => "email",
            Self::Gender => "gender",
            Self::Consent => "decision",
            Self::ConsentDate => "consent_date",
        }
    }

    /// Folded column names (lower case, letters and digits only) that mean this concept.
    fn names(self) -> &'static [&'static str] {
        match self {
            Self::ClientId => &[
                "clientid",
                "clientref",
                "clientreference",
                "clientno",
                "clientnumber",
                "clientcode",
                "customerid",
                "serviceuserid",
                "serviceuserref",
                "personid",
                "personref",
                "caseid",
                "caseref",
                "casereference",
                "casenumber",
                "caseno",
                "urn",
                "id",
                "ref",
                "reference",
            ],
            Self::RecordId => &[],
            Self::Given => &["firstname", "forename", "forenames", "givenname", "givennames", "first", "namefirst"],
            Self::Family => &["lastname", "surname", "familyname", "last", "namelast"],
            Self::Dob => &["dob", "dateofbirth", "birthdate", "birthday", "dobddmmyyyy", "dateofbirthddmmyyyy"],
            Self::Nhs => &["nhsnumber", "nhsno", "nhs", "nhsnum", "nhsid"],
            Self::Address => &["address", "homeaddress", "fulladdress", "postaladdress", "addresslines"],
            Self::Address1 => &["address1", "addressline1", "line1", "addr1", "street", "streetaddress"],
            Self::Address2 => &["address2", "addressline2", "line2", "addr2", "locality", "district"],
            Self::Address3 => &["address3", "addressline3", "line3", "addr3"],
            Self::Town => &["town", "city", "towncity", "posttown"],
            Self::Postcode => &["postcode", "postalcode", "zip", "zipcode", "pcode"],
            Self::Mobile => &[
                "mobile",
                "mobilephone",
                "mobileno",
                "mobilenumber",
                "mob",
                "cell",
                "cellphone",
                "mobiletel",
                "mobiletelephone",
            ],
            Self::HomePhone => &[
                "phone",
                "telephone",
                "tel",
                "homephone",
                "hometel",
                "hometelephone",
                "landline",
                "phonenumber",
                "telephonenumber",
                "telno",
                "homeno",
                "contactnumber",
            ],
            Self::Email => &["email", "emailaddress", "mail"],
            Self::Gender => &["gender", "sex", "genderidentity"],
            Self::Consent | Self::ConsentDate => &[],
        }
    }

    /// The synthetic value the fixture's row holds.
    fn sample(self) -> &'static str {
        match self {
            Self::ClientId => "TEST-0001",
            Self::RecordId => "REC-0001",
            Self::Given => "Alex",
            Self::Family => "Example",
            Self::Dob => "01/02/1980",
            // The 999 range is never issued to anyone; this one passes Modulus 11.
            Self::Nhs => SAMPLE_NHS_NUMBER,
            Self::Address => "1 Example Street\nExample Village",
            Self::Address1 => "1 Example Street",
            Self::Address2 => "Example Village",
            Self::Address3 => "",
            Self::Town => "York",
            Self::Postcode => "YO1 7HH",
            Self::Mobile => "07700 900123",
            Self::HomePhone => "01134 960000",
            Self::Email => "alex.example@example.org",
            Self::Gender => "Female",
            Self::Consent => "Y",
            Self::ConsentDate => "01/03/2025",
        }
    }
}

const SAMPLE_NHS_NUMBER: &str = "999 000 0018";

/// Lower case letters and digits only: `"Consent to share (Y/N)"` -> `consenttoshareyn`.
fn fold_name(s: &str) -> String {
    s.chars().filter(char::is_ascii_alphanumeric).map(|c| c.to_ascii_lowercase()).collect()
}

/// What a column (or JSON path) means, if it is one of the usual ones.
fn recognise(column: &str, kind: RecordKind) -> Option<Concept> {
    let parts: Vec<&str> = column.split('.').filter(|p| p.parse::<usize>().is_err()).collect();
    let mut candidates = vec![fold_name(column)];
    if parts.len() > 1 {
        candidates.push(fold_name(&parts[parts.len() - 2..].concat()));
        candidates.push(fold_name(parts[parts.len() - 1]));
    }
    let kind_name = kind.as_str();
    for c in &candidates {
        if c.contains("consent") {
            return Some(if c.contains("date") { Concept::ConsentDate } else { Concept::Consent });
        }
        // In an export of contacts, referrals and the like, a bare "ID" is that record's own id.
        if kind != RecordKind::Person
            && (["id", "ref", "reference", "no", "number"].iter().any(|s| *c == format!("{kind_name}{s}"))
                || (kind != RecordKind::Consent && matches!(c.as_str(), "id" | "ref" | "reference")))
        {
            return Some(Concept::RecordId);
        }
        if let Some(found) = Concept::ALL.into_iter().find(|k| k.names().contains(&c.as_str())) {
            return Some(found);
        }
    }
    None
}

/// The export's columns (CSV/XLSX header cells, or the dotted paths of a JSON record's values), and how its
/// records are reached in a JSON document.
struct ExportShape {
    format: Format,
    columns: Vec<String>,
    records: Option<String>,
}

fn read_shape(path: &Path) -> anyhow::Result<ExportShape> {
    let format = Format::from_path(path).with_context(|| {
        format!("{}: not a file the connector reads (.csv, .xlsx, .json or .ndjson)", path.display())
    })?;
    let attempts: &[Option<&str>] = match format {
        Format::Json => &[None, Some("data"), Some("records"), Some("items"), Some("results")],
        _ => &[None],
    };
    let mut last_error = None;
    for records in attempts {
        let opts = ReadOptions { records: records.map(String::from), ..ReadOptions::default() };
        let mut rows = match ingest::open(path, &opts) {
            Ok(r) => r,
            Err(e) => {
                last_error = Some(e.to_string());
                continue;
            }
        };
        if let Some(header) = &rows.header {
            let columns = header.names.iter().map(|n| n.trim_start_matches('\u{feff}').trim().to_string()).collect();
            return Ok(ExportShape { format, columns, records: None });
        }
        match rows.next() {
            Some(Ok(row)) => {
                if let Values::Json(record) = &row.values {
                    let mut columns = Vec::new();
                    json_paths(record, "", &mut columns);
                    return Ok(ExportShape { format, columns, records: records.map(String::from) });
                }
                last_error = Some("its first record is not a JSON object".into());
            }
            Some(Err(e)) => last_error = Some(e.to_string()),
            None => last_error = Some("it holds no records to take the keys from".into()),
        }
    }
    bail!("{}: cannot read its columns: {}", path.display(), last_error.unwrap_or_default())
}

/// The dotted paths of a JSON record's values (the first item of a list stands for the list).
fn json_paths(v: &Value, prefix: &str, out: &mut Vec<String>) {
    let join = |k: &str| if prefix.is_empty() { k.to_string() } else { format!("{prefix}.{k}") };
    match v {
        Value::Object(m) => m.iter().for_each(|(k, child)| json_paths(child, &join(k), out)),
        Value::Array(items) => match items.first() {
            Some(first) => json_paths(first, &join("0"), out),
            None => out.push(prefix.to_string()),
        },
        _ if !prefix.is_empty() => out.push(prefix.to_string()),
        _ => {}
    }
}

/// A TOML basic string literal.
fn q(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Where `new` writes, and what it found.
struct Plan<'a> {
    partner: &'a str,
    kind: RecordKind,
    export_name: String,
    shape: ExportShape,
    /// Concept -> column; the first column of a concept wins.
    bound: BTreeMap<Concept, String>,
    /// Columns not bound, with why.
    left: Vec<(String, &'static str)>,
    glob: String,
    fixture_name: String,
}

fn plan<'a>(partner: &'a str, kind: RecordKind, from: &Path) -> anyhow::Result<Plan<'a>> {
    let shape = read_shape(from)?;
    let mut bound = BTreeMap::new();
    let mut left = Vec::new();
    for c in &shape.columns {
        match recognise(c, kind) {
            Some(concept) if !bound.contains_key(&concept) => {
                bound.insert(concept, c.clone());
            }
            Some(_) => left.push((c.clone(), "another column already gives this")),
            None => left.push((c.clone(), "not recognised")),
        }
    }
    let stem = from.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_lowercase();
    let prefix: String = stem.chars().take_while(|c| !c.is_ascii_digit()).collect();
    let prefix = prefix.trim_end_matches(['-', '_', '.', ' ']).to_string();
    let prefix = if prefix.is_empty() || !prefix.chars().all(|c| c.is_ascii_alphanumeric() || "-_".contains(c)) {
        kind.as_str().to_string()
    } else {
        prefix
    };
    let ext = match shape.format {
        Format::Csv | Format::Xlsx => "csv",
        Format::Json => "json",
        Format::Ndjson => "ndjson",
    };
    Ok(Plan {
        partner,
        kind,
        export_name: from.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        glob: format!("{prefix}*"),
        fixture_name: format!("{prefix}.{ext}"),
        shape,
        bound,
        left,
    })
}

impl Plan<'_> {
    fn has(&self, c: Concept) -> bool {
        self.bound.contains_key(&c)
    }

    /// The key field: the record's own id, else (a person, or one record per person) the client reference.
    fn key(&self) -> Concept {
        if self.kind != RecordKind::Person && self.has(Concept::RecordId) {
            Concept::RecordId
        } else {
            Concept::ClientId
        }
    }

    fn mapping_toml(&self) -> String {
        let mut t = String::new();
        let (p, kind) = (self.partner, self.kind);
        let _ =
            writeln!(t, "# {p} {kind}: written by `connector mappings new` from the header of {}.", self.export_name);
        let _ =
            writeln!(t, "# Resolve every TODO, then run `connector mappings test --partner {p} --update` and review.");
        let _ = writeln!(t, "[mapping]\npartner = {}\nkind = \"{kind}\"\nversion = \"0.1.0\"", q(p));
        let _ = writeln!(t, "key = [\"{}\"]", self.key().field());
        let _ = writeln!(
            t,
            "category = \"general_health\"   # TODO: general_health | mental_health | sexual_health | social_care"
        );
        let _ = writeln!(t, "\n[source]");
        if self.shape.format == Format::Xlsx {
            let _ = writeln!(t, "# An XLSX export: its first sheet is read (set sheet = \"...\" for another).");
        }
        if let Some(r) = &self.shape.records {
            let _ = writeln!(t, "records = {}", q(r));
        }
        let _ = writeln!(
            t,
            "# Files this mapping reads, by name: an export feeding several kinds is read by each kind's mapping."
        );
        let _ = writeln!(t, "files = [{}]", q(&self.glob));

        let _ = writeln!(t, "\n[fields]");
        for (concept, column) in &self.bound {
            if let Some(line) = self.field_line(*concept, column) {
                t.push_str(&line);
                t.push('\n');
            }
        }
        for (column, why) in &self.left {
            let _ = writeln!(
                t,
                "# TODO: column {} ({why}): bind it to a field (see mappings/README.md, Fields), or leave it unread.",
                q(column)
            );
        }
        if self.has(Concept::Gender) && matches!(kind, RecordKind::Person | RecordKind::Carer) {
            t.push_str(GENDER_MAP);
        }
        if kind == RecordKind::Consent {
            t.push_str(CONSENT_MAPS);
        }
        if kind != RecordKind::Person {
            let _ = writeln!(
                t,
                "\n[refs]\npatient = {{ kind = \"person\", resource = \"patient\", key = [\"{}\"] }}",
                Concept::ClientId.field()
            );
        }
        t.push_str(&self.resource_toml());
        if kind == RecordKind::Consent {
            t.push_str(&self.consent_toml());
        }
        t
    }

    fn field_line(&self, concept: Concept, column: &str) -> Option<String> {
        let name = concept.field();
        let from = q(column);
        let about_the_person =
            !matches!(concept, Concept::ClientId | Concept::RecordId | Concept::Consent | Concept::ConsentDate);
        if about_the_person && !matches!(self.kind, RecordKind::Person | RecordKind::Carer) {
            return Some(format!("# Column {from}: the person's details, read by person.toml."));
        }
        let key = self.key();
        let required = if concept == key || concept == Concept::ClientId { ", required = true" } else { "" };
        Some(match concept {
            Concept::ClientId | Concept::RecordId | Concept::Given | Concept::Town => {
                format!("{name} = {{ from = {from}, transform = \"trim\"{required} }}")
            }
            Concept::Family if self.kind == RecordKind::Person => {
                format!("{name} = {{ from = {from}, transform = \"trim\", required = true }}")
            }
            Concept::Family | Concept::Address1 | Concept::Address2 | Concept::Address3 => {
                format!("{name} = {{ from = {from}, transform = \"trim\" }}")
            }
            Concept::Dob => format!(
                "{name} = {{ from = {from}, transform = \"uk_date\" }}   # add required = true if every record has one"
            ),
            Concept::Nhs => format!("{name} = {{ from = {from}, transform = \"nhs_number\" }}"),
            Concept::Address => format!(
                "# A multi-line cell: each line becomes an address line.\n{name} = {{ from = {from}, transform = \"split_lines\" }}"
            ),
            Concept::Postcode => format!("{name} = {{ from = {from}, transform = \"postcode\" }}"),
            Concept::Mobile | Concept::HomePhone => format!("{name} = {{ from = {from}, transform = \"uk_phone\" }}"),
            Concept::Email => format!("{name} = {{ from = {from}, transform = \"email\" }}"),
            Concept::Gender => format!("{name} = {{ from = {from}, map = \"gender\", default = \"unknown\" }}"),
            Concept::Consent if self.kind == RecordKind::Consent => format!(
                "# A blank answer, or one listed in [consent] not_asked, is \"no statement\": counted, not quarantined.\n\
                 {name} = {{ from = {from}, map = \"decision\", required = true }}\n\
                 status = {{ from = {from}, map = \"status\" }}\n\
                 policy = {{ from = {from}, map = \"policy\" }}\n\
                 provision = {{ from = {from}, map = \"provision\" }}\n\
                 share = {{ from = {from}, transform = \"boolean\" }}"
            ),
            Concept::Consent => {
                format!("# Column {from}: the consent answer, read by consent.toml (`mappings new --kind consent`).")
            }
            Concept::ConsentDate if self.kind == RecordKind::Consent => {
                format!("{name} = {{ from = {from}, transform = \"uk_date\" }}")
            }
            Concept::ConsentDate => format!("# Column {from}: the consent date, read by consent.toml."),
        })
    }

    fn resource_toml(&self) -> String {
        let has = |c: Concept| self.has(c);
        let mut t = String::new();
        let (name, rtype) = match self.kind {
            RecordKind::Person => ("patient", "Patient"),
            RecordKind::Carer => ("related_person", "RelatedPerson"),
            RecordKind::Referral => ("service_request", "ServiceRequest"),
            RecordKind::Episode => ("episode", "EpisodeOfCare"),
            RecordKind::Contact => ("encounter", "Encounter"),
            RecordKind::Goals => ("goal", "Goal"),
            RecordKind::Reqol => ("questionnaire_response", "QuestionnaireResponse"),
            RecordKind::Consent => ("consent", "Consent"),
        };
        let _ = writeln!(t, "\n[[resource]]\nname = \"{name}\"\ntype = \"{rtype}\"\n\n[resource.template]");
        let key = self.key().field();
        let id_kind = if self.kind == RecordKind::Person { "client" } else { self.kind.as_str() };
        let mut ids = Vec::new();
        if has(Concept::Nhs) && matches!(self.kind, RecordKind::Person) {
            ids.push(
                "  { system = \"https://fhir.nhs.uk/Id/nhs-number\", value = \"{nhs_number}\", extension = [\n    \
                 { url = \"https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-NHSNumberVerificationStatus\", valueCodeableConcept = { coding = [\n      \
                 { system = \"https://fhir.hl7.org.uk/CodeSystem/UKCore-NHSNumberVerificationStatusEngland\", code = \"02\", display = \"Number present but not traced\" },\n    \
                 ] } },\n  ] },"
                    .to_string(),
            );
        }
        ids.push(format!("  {{ system = \"{{partner.identifier_system}}/{id_kind}\", value = \"{{{key}}}\" }},"));
        let _ = writeln!(t, "identifier = [\n{}\n]", ids.join("\n"));
        let subject = "{ reference = \"{ref.patient}\" }";
        match self.kind {
            RecordKind::Person | RecordKind::Carer => {
                if self.kind == RecordKind::Carer {
                    let _ = writeln!(t, "patient = {subject}");
                } else {
                    let _ = writeln!(t, "active = true");
                }
                let given = if has(Concept::Given) { ", given = [\"{given}\"]" } else { "" };
                if has(Concept::Family) {
                    let _ = writeln!(t, "name = [{{ use = \"official\", family = \"{{family}}\"{given} }}]");
                } else {
                    let _ = writeln!(t, "# TODO: no surname column was recognised; a Patient needs a name.");
                }
                let mut telecom = Vec::new();
                if has(Concept::Mobile) {
                    telecom.push("  { system = \"phone\", value = \"{mobile}\", use = \"mobile\" },");
                }
                if has(Concept::HomePhone) {
                    telecom.push("  { system = \"phone\", value = \"{home_phone}\", use = \"home\" },");
                }
                if has(Concept::Email) {
                    telecom.push("  { system = \"email\", value = \"{email}\", use = \"home\" },");
                }
                if !telecom.is_empty() {
                    let _ = writeln!(t, "telecom = [\n{}\n]", telecom.join("\n"));
                }
                if has(Concept::Gender) {
                    let _ = writeln!(t, "gender = \"{{gender}}\"");
                }
                if has(Concept::Dob) {
                    let _ = writeln!(t, "birthDate = \"{{dob}}\"");
                }
                let lines: Vec<String> = [Concept::Address, Concept::Address1, Concept::Address2, Concept::Address3]
                    .into_iter()
                    .filter(|c| has(*c))
                    .map(|c| format!("\"{{{}}}\"", c.field()))
                    .collect();
                let mut address = Vec::new();
                if !lines.is_empty() {
                    address.push(format!("line = [{}]", lines.join(", ")));
                }
                if has(Concept::Town) {
                    address.push("city = \"{town}\"".into());
                }
                if has(Concept::Postcode) {
                    address.push("postalCode = \"{postcode}\"".into());
                }
                if !address.is_empty() {
                    let _ = writeln!(t, "address = [{{ use = \"home\", {} }}]", address.join(", "));
                }
                if self.kind == RecordKind::Person {
                    let _ = writeln!(t, "managingOrganization = {{ reference = \"{{partner.org}}\" }}");
                }
            }
            RecordKind::Referral => {
                let _ = writeln!(
                    t,
                    "status = \"active\"   # TODO: from the referral's status\nintent = \"order\"\nsubject = {subject}"
                );
            }
            RecordKind::Episode => {
                let _ = writeln!(
                    t,
                    "status = \"active\"   # TODO: from the episode's status\npatient = {subject}\nmanagingOrganization = {{ reference = \"{{partner.org}}\" }}"
                );
            }
            RecordKind::Contact => {
                let _ = writeln!(
                    t,
                    "status = \"finished\"   # TODO: from the attendance\nclass = {{ system = \"http://terminology.hl7.org/CodeSystem/v3-ActCode\", code = \"AMB\" }}\nsubject = {subject}"
                );
            }
            RecordKind::Goals => {
                let _ = writeln!(
                    t,
                    "lifecycleStatus = \"active\"\ndescription = {{ text = \"TODO: the goal's text field\" }}\nsubject = {subject}"
                );
            }
            RecordKind::Reqol => {
                let _ = writeln!(
                    t,
                    "status = \"completed\"\nquestionnaire = \"TODO: the questionnaire's canonical URL\"\nsubject = {subject}"
                );
            }
            RecordKind::Consent => {
                let date = has(Concept::ConsentDate);
                let _ = writeln!(
                    t,
                    "status = \"{{status}}\"\n\
                     scope = {{ coding = [{{ system = \"http://terminology.hl7.org/CodeSystem/consentscope\", code = \"patient-privacy\", display = \"Privacy Consent\" }}] }}\n\
                     category = [{{ coding = [{{ system = \"http://loinc.org\", code = \"59284-0\", display = \"Patient Consent\" }}] }}]\n\
                     patient = {subject}\n{}\
                     organization = [{{ reference = \"{{partner.org}}\" }}]\n\
                     policyRule = {{ coding = [{{ system = \"http://terminology.hl7.org/CodeSystem/v3-ActCode\", code = \"{{policy}}\" }}] }}\n\
                     provision = {{ type = \"{{provision}}\"{} }}",
                    if date { "dateTime = \"{consent_date}\"\n" } else { "" },
                    if date { ", period = { start = \"{consent_date}\" }" } else { "" },
                );
            }
        }
        t
    }

    fn consent_toml(&self) -> String {
        let date = if self.has(Concept::ConsentDate) {
            "date = \"consent_date\"".to_string()
        } else {
            "# The export has no date for the answer: each statement is dated when the connector first sees it.\n\
             date_source = \"first_seen\""
                .to_string()
        };
        format!(
            "\n# The consent statement each row makes, read by the sharing rules (see mappings/README.md).\n\
             [consent]\nperson = \"patient\"\ndecision = \"decision\"\n{date}\n\
             # Answers that mean the question was not asked yet (compared ignoring case): no statement, not quarantined.\n\
             not_asked = [\"not asked\", \"n/a\"]\n\
             # TODO: say what a \"Y\" agrees to. Until you do, no destination is agreed and nothing is shared:\n\
             # cito = \"share\"   # the central record\n\
             # pkb = \"share\"    # the patient-held record\n\
             # partners = [\"...\"]   # fields naming partners the person agrees to share with\n"
        )
    }

    /// The fixture: the header and one synthetic row.
    fn fixture(&self) -> anyhow::Result<Vec<u8>> {
        let value = |c: &str| -> String {
            self.bound.iter().find(|(_, col)| *col == c).map(|(k, _)| k.sample().to_string()).unwrap_or_default()
        };
        Ok(match self.shape.format {
            Format::Csv | Format::Xlsx => {
                let mut w = csv::WriterBuilder::new().terminator(csv::Terminator::CRLF).from_writer(Vec::new());
                w.write_record(&self.shape.columns)?;
                w.write_record(self.shape.columns.iter().map(|c| value(c)))?;
                w.into_inner().map_err(|e| anyhow::anyhow!("writing the fixture: {e}"))?
            }
            Format::Json | Format::Ndjson => {
                let mut record = Value::Object(serde_json::Map::new());
                for c in &self.shape.columns {
                    let v = value(c);
                    set_path(&mut record, c, if v.is_empty() { Value::Null } else { Value::String(v) });
                }
                let mut text = if self.shape.format == Format::Ndjson {
                    serde_json::to_string(&record)?
                } else {
                    let mut doc = Value::Array(vec![record]);
                    if let Some(path) = &self.shape.records {
                        for part in path.split('.').rev() {
                            let mut m = serde_json::Map::new();
                            m.insert(part.to_string(), doc);
                            doc = Value::Object(m);
                        }
                    }
                    serde_json::to_string_pretty(&doc)?
                };
                text.push('\n');
                text.into_bytes()
            }
        })
    }
}

/// Sets a dotted path (`client.name.first`, `phones.0`) in a JSON value, making objects and lists on the way.
fn set_path(root: &mut Value, path: &str, value: Value) {
    let parts: Vec<&str> = path.split('.').collect();
    let mut cur = root;
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        let next_is_index = parts.get(i + 1).is_some_and(|p| p.parse::<usize>().is_ok());
        let empty = || if next_is_index { Value::Array(Vec::new()) } else { Value::Object(serde_json::Map::new()) };
        cur = match (cur, part.parse::<usize>()) {
            (Value::Array(items), Ok(n)) => {
                while items.len() <= n {
                    items.push(Value::Null);
                }
                if last {
                    items[n] = value;
                    return;
                }
                if items[n].is_null() {
                    items[n] = empty();
                }
                &mut items[n]
            }
            (Value::Object(m), _) => {
                if last {
                    m.insert(part.to_string(), value);
                    return;
                }
                m.entry(part.to_string()).or_insert_with(empty)
            }
            _ => return,
        };
    }
}

const GENDER_MAP: &str = r#"
# TODO: the partner's own codes for gender; a code not listed quarantines the row, naming this map.
[maps.gender]
M = "male"
F = "female"
Male = "male"
Female = "female"
"Non-binary" = "other"
Other = "other"
Unknown = "unknown"
"Not known" = "unknown"
"Prefer not to say" = "unknown"
"#;

const CONSENT_MAPS: &str = r#"
# TODO: the partner's answers. A blank answer needs no entry (it is "no statement").
[maps.decision]
Y = "given"
Yes = "given"
N = "declined"
No = "declined"

[maps.status]
Y = "active"
Yes = "active"
N = "active"
No = "active"

[maps.policy]
Y = "OPTIN"
Yes = "OPTIN"
N = "OPTOUT"
No = "OPTOUT"

[maps.provision]
Y = "permit"
Yes = "permit"
N = "deny"
No = "deny"
"#;

fn partner_toml(id: &str) -> String {
    format!(
        "# {id}: written by `connector mappings new`; resolve the TODOs.\n\
         [partner]\n\
         id = {}\n\
         name = {}   # TODO: the partner's name (Organization.name)\n\
         identifier_system = \"https://id.york-connector.example/{id}\"   # TODO: the base of the partner's identifiers\n\
         # TODO: the partner's registered charity number, or ods_code = \"...\" (at least one is needed).\n\
         charity_number = \"0000000\"\n",
        q(id),
        q(id)
    )
}

/// Writes a file, refusing to replace one unless `force`. Returns whether it was written.
fn write_new(path: &Path, bytes: &[u8], force: bool) -> anyhow::Result<bool> {
    if path.exists() && !force {
        return Ok(false);
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
    Ok(true)
}

pub fn run(mappings_dir: &Path, args: NewArgs) -> anyhow::Result<u8> {
    let partner = args.partner.as_str();
    if partner.is_empty() || !partner.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
        bail!("--partner {partner}: use lower case letters, digits and - only (it names a folder and ids)");
    }
    let kind = RecordKind::parse(&args.kind).with_context(|| {
        format!(
            "--kind {}: not a record kind (one of: {})",
            args.kind,
            RecordKind::ALL.map(RecordKind::as_str).join(", ")
        )
    })?;
    let dir = mappings_dir.join(partner);
    let file = dir.join(format!("{kind}.toml"));
    if file.exists() && !args.force {
        bail!("{} exists; pass --force to overwrite it", file.display());
    }
    if kind != RecordKind::Person && !dir.join("person.toml").exists() {
        bail!(
            "a {kind} mapping refers to the person's Patient, and {} has no person.toml yet; run `connector mappings new --partner {partner} --kind person --from <people export>` first",
            dir.display()
        );
    }
    let plan = plan(partner, kind, &args.from)?;
    if kind != RecordKind::Person && !plan.has(Concept::ClientId) {
        bail!(
            "{}: no column recognised as the client reference (Client ID, Client Ref, Person ID, ...), which a {kind} record needs to name its person; write this mapping by hand (see mappings/README.md)",
            args.from.display()
        );
    }
    if kind == RecordKind::Consent && !plan.has(Concept::Consent) {
        bail!(
            "{}: no consent column recognised (a column whose name contains \"consent\"); write the consent mapping by hand (see mappings/README.md)",
            args.from.display()
        );
    }
    let mut plan = plan;
    if kind == RecordKind::Person && !plan.has(Concept::ClientId) {
        // A key is needed to load; the first column is the usual place for it, but say so loudly.
        let first = plan.shape.columns.first().cloned().context("the export has no columns")?;
        plan.left.retain(|(c, _)| *c != first);
        plan.bound.retain(|_, c| *c != first);
        plan.bound.insert(Concept::ClientId, first.clone());
        eprintln!(
            "No client reference column recognised: the first column ({}) is taken as the key; check it.",
            q(&first)
        );
    }

    let mut written = Vec::new();
    let partner_file = dir.join("partner.toml");
    if write_new(&partner_file, partner_toml(partner).as_bytes(), false)? {
        written.push(partner_file);
    }
    write_new(&file, plan.mapping_toml().as_bytes(), true)?;
    written.push(file.clone());
    let fixtures = args.fixtures.clone().unwrap_or_else(|| super::mappings::default_fixtures(mappings_dir));
    let fixture = fixtures.join(partner).join(&plan.fixture_name);
    if write_new(&fixture, &plan.fixture()?, args.force)? {
        written.push(fixture.clone());
    } else {
        println!("kept {} (shared with the partner's other kinds; --force rewrites it)", fixture.display());
    }

    // Prove it loads, as `mappings check` would.
    let catalog = match mapping::load_catalog(mappings_dir) {
        Ok(c) => c,
        Err(errors) => {
            for w in &written {
                println!("wrote {}", w.display());
            }
            for e in &errors {
                eprintln!("{e}");
            }
            bail!(
                "the mappings under {} do not load ({} problem(s) above); fix them, then run `connector mappings check`",
                mappings_dir.display(),
                errors.len()
            );
        }
    };
    let p = catalog.partner(partner).context("the partner did not load")?;
    written.extend(super::mappings::write_expected(p, &fixtures, kind, args.force)?);
    for w in &written {
        println!("wrote {}", w.display());
    }
    let recognised: Vec<String> = plan.bound.iter().map(|(c, col)| format!("{} <- {}", c.field(), q(col))).collect();
    println!("Recognised {} column(s): {}", recognised.len(), recognised.join(", "));
    println!("Left {} column(s) as TODO in {}.", plan.left.len(), file.display());
    println!("The mappings load (`connector mappings check` passes).");
    println!("\nNext:");
    let mut step = 0;
    let mut next = |s: String| {
        step += 1;
        println!("  {step}. {s}");
    };
    if dir.join("partner.toml").exists()
        && std::fs::read_to_string(dir.join("partner.toml")).is_ok_and(|t| t.contains("TODO"))
    {
        next(format!("Fill in {} (name, charity number or ODS code).", dir.join("partner.toml").display()));
    }
    next(format!("Resolve the TODOs in {} (category, unrecognised columns, value maps).", file.display()));
    if kind == RecordKind::Consent {
        next("Say what a \"Y\" agrees to in [consent] (cito, pkb, partners): until then nothing is shared.".into());
    }
    next(format!(
        "Preview the real export: connector mappings preview --partner {partner} --input {}",
        args.from.display()
    ));
    next(format!(
        "Add rows to {} for the mess the partner really sends (synthetic people only; NHS numbers in the 999 range), then run connector mappings test --partner {partner} --update and review the diff.",
        fixture.display()
    ));
    next(format!(
        "Add the source to the config: [[partner]] id = \"{partner}\" with a [[partner.source]] (kind = \"{kind}\", or kinds = [\"person\", \"consent\"] for one export holding both), and [[sharing]] agreements for what may flow."
    ));
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usual_columns_are_recognised_by_their_folded_names() {
        let k = |c: &str| recognise(c, RecordKind::Person);
        assert_eq!(k("Client Ref"), Some(Concept::ClientId));
        assert_eq!(k("\u{feff}Client ID"), Some(Concept::ClientId));
        assert_eq!(k("First Name"), Some(Concept::Given));
        assert_eq!(k("SURNAME"), Some(Concept::Family));
        assert_eq!(k("D.O.B."), Some(Concept::Dob));
        assert_eq!(k("NHS No."), Some(Concept::Nhs));
        assert_eq!(k("Post Code"), Some(Concept::Postcode));
        assert_eq!(k("Address Line 1"), Some(Concept::Address1));
        assert_eq!(k("Mobile No"), Some(Concept::Mobile));
        assert_eq!(k("Tel"), Some(Concept::HomePhone));
        assert_eq!(k("E-mail"), Some(Concept::Email));
        assert_eq!(k("Sex"), Some(Concept::Gender));
        assert_eq!(k("Consent to share (Y/N)"), Some(Concept::Consent));
        assert_eq!(k("client.name.first"), Some(Concept::Given));
        assert_eq!(k("contactDetails.email"), Some(Concept::Email));
        assert_eq!(k("Keyworker"), None);
        assert_eq!(recognise("ID", RecordKind::Contact), Some(Concept::RecordId));
        assert_eq!(recognise("Contact ID", RecordKind::Contact), Some(Concept::RecordId));
        assert_eq!(recognise("Client ID", RecordKind::Contact), Some(Concept::ClientId));
    }

    #[test]
    fn the_sample_nhs_number_is_valid_and_never_issued() {
        let n = crate::mapping::transform::nhs_number(SAMPLE_NHS_NUMBER).unwrap();
        assert!(n.starts_with("999"));
    }

    #[test]
    fn json_paths_and_back() {
        let v = serde_json::json!({"id": 1, "client": {"name": {"first": "A"}}, "phones": ["1", "2"]});
        let mut paths = Vec::new();
        json_paths(&v, "", &mut paths);
        assert_eq!(paths, ["client.name.first", "id", "phones.0"]);
        let mut back = Value::Object(serde_json::Map::new());
        for p in &paths {
            set_path(&mut back, p, Value::String("x".into()));
        }
        assert_eq!(back, serde_json::json!({"id": "x", "client": {"name": {"first": "x"}}, "phones": ["x"]}));
    }
}
