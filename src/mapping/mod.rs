//! Mapping: declarative partner-record-to-FHIR mappings (`mappings/`), compiled once at load, and the engine
//! that runs them over ingested rows. The format is documented in `mappings/README.md`.

mod check;
pub mod compile;
mod engine;
pub mod ids;
pub mod reverse;
mod spill;
mod state;
mod template;
pub mod transform;
mod writer;

use std::collections::BTreeMap;
use std::path::PathBuf;

pub use compile::{CompileError, load_catalog};
#[cfg(test)]
pub(crate) use engine::REFERENCE_PATH;
pub use engine::{
    FileCounts, Input, MappedResource, NoStatement, NoStatementWhy, Quarantined, Reason, RunReport, Sink, organization,
    run, run_with_limit,
};
pub use state::RefKey;
pub use template::Node;

use crate::ingest::ReadOptions;
use transform::Transform;

pub use crate::model::{Category, ConsentFacts, DateSource, Decision, RESOURCE_TYPES, RecordKind, Restriction};

/// All partners and their compiled mappings.
#[derive(Debug)]
pub struct Catalog {
    pub dir: PathBuf,
    pub partners: BTreeMap<String, Partner>,
}

impl Catalog {
    pub fn partner(&self, id: &str) -> Option<&Partner> {
        self.partners.get(id)
    }
}

/// A partner organisation and the mappings of the record kinds it exports.
#[derive(Debug)]
pub struct Partner {
    pub id: String,
    pub name: String,
    pub identifier_system: String,
    pub ods_code: Option<String>,
    pub charity_number: Option<String>,
    /// Other names consent forms use for the partner ("Carers Centre"), matched as its name is.
    pub aliases: Vec<String>,
    pub file: PathBuf,
    pub organization_id: String,
    pub mappings: BTreeMap<RecordKind, Mapping>,
    /// Reverse mappings (`<kind>.reverse.toml`), by the FHIR resource type they turn back into the partner's
    /// layout: at most one per type. Used by partner feeds.
    pub reverse: BTreeMap<String, reverse::ReverseMapping>,
}

/// One compiled mapping file.
#[derive(Debug)]
pub struct Mapping {
    pub file: PathBuf,
    pub partner: String,
    pub kind: RecordKind,
    pub version: String,
    pub category: Category,
    pub read: ReadOptions,
    /// Globs on file names that this mapping reads.
    pub files: Vec<String>,
    pub fields: Vec<Field>,
    pub key: Vec<usize>,
    pub refs: Vec<Ref>,
    pub resources: Vec<ResourceSpec>,
    /// `meta.source` of every resource produced: names the mapping and its version.
    pub meta_source: String,
    /// The boolean field saying whether the person may see this record; false (or empty) marks every
    /// resource of the row not-for-the-patient (safeguarding notes, third-party information).
    pub patient_visible: Option<usize>,
    /// How rows of this mapping state a person's consent to share (consent mappings only).
    pub consent: Option<ConsentSpec>,
}

/// The `[consent]` section of a consent mapping: which fields make a consent statement.
#[derive(Debug)]
pub struct ConsentSpec {
    /// Field whose value is `given`, `declined` or `withdrawn`.
    pub decision: usize,
    /// Field with the date the decision was made (ISO date); none when the statement is dated when first seen.
    pub date: Option<usize>,
    /// Where the statement's date comes from: the `date` field, or the day the connector first saw the answer.
    pub dated: DateSource,
    /// Folded (trimmed, lower case, as value maps fold) decision values that mean the question was
    /// not asked: the row makes no statement. A blank decision always means that.
    pub not_asked: Vec<String>,
    /// Field with the date consent was withdrawn, when the record has one.
    pub withdrawn: Option<usize>,
    /// Boolean fields: sharing with the central record (Cito) and with the patient-held record (PKB).
    pub cito: Option<usize>,
    pub pkb: Option<usize>,
    /// Fields naming partners the person agrees to share with (several names split on `;` or `,`).
    pub partners: Vec<usize>,
    /// Field with restrictions in the partner's words, split on `;`; each looked up in `restriction_codes`.
    pub restrictions: Option<usize>,
    /// Folded (lower case, trimmed) restriction text -> restriction code.
    pub restriction_codes: BTreeMap<String, Restriction>,
    /// The ref naming the person the statement is about.
    pub person_ref: usize,
}

impl Mapping {
    /// The columns (or JSON paths) this mapping reads, for binding to a file's header.
    pub fn columns(&self) -> impl Iterator<Item = (&Field, &str)> {
        self.fields.iter().flat_map(|f| match &f.source {
            FieldSource::Columns(cols) | FieldSource::Join(cols) => cols.iter().map(move |c| (f, c.as_str())).collect(),
            _ => Vec::new(),
        })
    }
}

#[derive(Debug)]
pub struct Field {
    pub name: String,
    pub source: FieldSource,
    pub transforms: Vec<Transform>,
    pub map: Option<ValueMap>,
    pub default: Option<serde_json::Value>,
    pub required: bool,
    pub range: Option<(f64, f64)>,
}

#[derive(Debug)]
pub enum FieldSource {
    /// The first of these columns that has a value.
    Columns(Vec<String>),
    /// These columns' values joined with a space (a date and a time kept apart, say).
    Join(Vec<String>),
    /// The sum of other fields (by index); all must be present.
    Sum(Vec<usize>),
    Const(serde_json::Value),
}

#[derive(Debug)]
pub struct ValueMap {
    pub name: String,
    /// Keys folded to lower case and trimmed.
    pub entries: BTreeMap<String, serde_json::Value>,
    pub fallback: Option<serde_json::Value>,
}

/// A reference to a resource of this row or of another kind of this partner.
#[derive(Debug)]
pub struct Ref {
    pub name: String,
    pub kind: RecordKind,
    pub resource: String,
    pub resource_type: String,
    /// Field indexes giving the target's key; for a sibling, the row's own key.
    pub key: Vec<usize>,
    /// Index of the sibling resource spec when the target is in this same mapping.
    pub sibling: Option<usize>,
    /// Line of the declaration in the mapping file, for errors found after compiling.
    pub line: usize,
}

#[derive(Debug)]
pub struct ResourceSpec {
    pub name: String,
    pub resource_type: String,
    pub when: Option<usize>,
    pub category: Category,
    pub template: Node,
    /// The template compiled for writing, with what its load-time FHIR check learned. None for a template
    /// the writer does not handle (a `meta` that is not a table): its resources are built as `Value`s.
    pub(crate) compiled: Option<check::Compiled>,
    /// Line of the `[[resource]]` in the mapping file, for errors found after compiling.
    pub line: usize,
}

#[cfg(test)]
mod tests;
