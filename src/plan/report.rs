//! What planning one partner reports.

use std::collections::BTreeMap;

use crate::mapping::{Category, RunReport};

/// One decision, for `sync --dry-run --explain`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Explained {
    pub destination: String,
    pub resource_type: String,
    pub id: String,
    pub partner: String,
    pub category: Category,
    /// send | withhold
    pub decision: &'static str,
    /// Whether the destination already holds exactly this (nothing would be written).
    pub unchanged: bool,
    /// For a send: the agreement, lawful basis and consent; for a withholding: why.
    pub why: String,
}

/// What a destination held for a person when their consent was withdrawn (or declined).
#[derive(Debug, Clone, serde::Serialize)]
pub struct WithdrawalReport {
    pub person: String,
    pub statement: String,
    /// Pending sends cancelled.
    pub cancelled: usize,
    /// Destination -> the resources it holds for the person (type/id).
    pub holdings: BTreeMap<String, Vec<String>>,
    /// Destinations where those are being deleted (`retract = true`).
    pub retracting: Vec<String>,
    /// Destinations that cannot delete (write-only, e.g. HL7 v2): their administrators must be asked to remove
    /// what is listed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cannot_delete: Vec<String>,
}

/// What mapping and planning one partner did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct IngestReport {
    pub partner: String,
    pub mapping: RunReport,
    /// Per destination: resources queued because they are new or changed.
    pub queued: BTreeMap<String, u64>,
    /// Per destination: resources that the sharing rules or the destination's profile do not allow.
    pub withheld: BTreeMap<String, u64>,
    /// Per destination: resources it holds that it may no longer hold (deleted there when `retract = true`).
    pub no_longer_allowed: BTreeMap<String, u64>,
    /// Consent statements newly read.
    pub consent_statements: u64,
    /// People whose consent is now withdrawn or declined, with what each destination holds of them.
    pub withdrawals: Vec<WithdrawalReport>,
    /// People held because one of their consent records could not be read (quarantined): person, record key.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub consent_held: Vec<(String, String)>,
    /// Why the partner's consent export could not be read at all; everything about a person from this partner
    /// is then held.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consent_unreadable: Option<String>,
    /// Every decision, when explaining.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub explained: Vec<Explained>,
    pub dry_run: bool,
    /// Not planned again: exports, mappings, configuration and state are as at this full plan, which changed
    /// nothing (`sync::receipt`); `queued` and `withheld` are that plan's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unchanged_since: Option<chrono::DateTime<chrono::Utc>>,
    /// The rows quarantined in this run: kind, file name, row, key and content hash (never their content).
    #[serde(skip)]
    pub quarantined_rows: Vec<crate::quarantine::QuarantinedRow>,
    /// Record what each destination should hold in the `expected` table (reconcile's dry run).
    #[serde(skip)]
    pub collect_expected: bool,
    /// What each source offered and what became of it (inbox files, API reads, snapshots).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<crate::source::SourceReport>,
    /// Per input file, the records mapped from it (snapshot comparison).
    #[serde(skip)]
    pub members: BTreeMap<std::path::PathBuf, crate::source::Members>,
}

impl IngestReport {
    /// Takes what reading consent reported (statements recorded, withdrawals, holds, an unreadable export)
    /// from `read`, a report of [`super::Planner::read_consent`] alone.
    pub fn absorb_consent(&mut self, read: IngestReport) {
        self.consent_statements += read.consent_statements;
        let mut withdrawals = read.withdrawals;
        withdrawals.append(&mut self.withdrawals);
        self.withdrawals = withdrawals;
        let mut held = read.consent_held;
        held.append(&mut self.consent_held);
        self.consent_held = held;
        if self.consent_unreadable.is_none() {
            self.consent_unreadable = read.consent_unreadable;
        }
    }

    /// Adds a later round's report to this one (several inbox files read in one cycle).
    pub fn absorb(&mut self, o: IngestReport) {
        self.mapping.files.extend(o.mapping.files);
        for (k, v) in o.mapping.resources {
            *self.mapping.resources.entry(k).or_default() += v;
        }
        for (mine, theirs) in [
            (&mut self.queued, o.queued),
            (&mut self.withheld, o.withheld),
            (&mut self.no_longer_allowed, o.no_longer_allowed),
        ] {
            for (k, v) in theirs {
                *mine.entry(k).or_default() += v;
            }
        }
        self.consent_statements += o.consent_statements;
        self.withdrawals.extend(o.withdrawals);
        self.consent_held.extend(o.consent_held);
        if o.consent_unreadable.is_some() {
            self.consent_unreadable = o.consent_unreadable;
        }
        self.explained.extend(o.explained);
        self.quarantined_rows.extend(o.quarantined_rows);
        self.members.extend(o.members);
    }
}
