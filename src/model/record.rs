//! What partners' records are: their kinds, the sensitivity categories of what they say, and the consent
//! statements and restrictions people make about sharing them.

/// The kinds of record partners export. The order is the order a run maps them in: a kind may only refer
/// to kinds before it, so every reference can be checked as the rows stream past.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    Person,
    Carer,
    Referral,
    Episode,
    Contact,
    Goals,
    Reqol,
    Consent,
}

impl RecordKind {
    pub const ALL: [RecordKind; 8] = [
        Self::Person,
        Self::Carer,
        Self::Referral,
        Self::Episode,
        Self::Contact,
        Self::Goals,
        Self::Reqol,
        Self::Consent,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Person => "person",
            Self::Carer => "carer",
            Self::Referral => "referral",
            Self::Episode => "episode",
            Self::Contact => "contact",
            Self::Goals => "goals",
            Self::Reqol => "reqol",
            Self::Consent => "consent",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl Category {
    pub const ALL: [Category; 4] = [Self::GeneralHealth, Self::MentalHealth, Self::SexualHealth, Self::SocialCare];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::GeneralHealth => "general_health",
            Self::MentalHealth => "mental_health",
            Self::SexualHealth => "sexual_health",
            Self::SocialCare => "social_care",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// Sensitivity categories; they become PKB privacy labels and confidentiality codes when sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    GeneralHealth,
    MentalHealth,
    SexualHealth,
    SocialCare,
}

/// FHIR resource types a mapping may produce: those the partnership's records need and that the validator knows.
pub const RESOURCE_TYPES: &[&str] = &[
    "Patient",
    "RelatedPerson",
    "Organization",
    "ServiceRequest",
    "EpisodeOfCare",
    "Encounter",
    "Goal",
    "CarePlan",
    "QuestionnaireResponse",
    "Observation",
    "Consent",
];

/// What a person may ask to be left out of sharing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Restriction {
    GeneralHealth,
    MentalHealth,
    SexualHealth,
    SocialCare,
    /// Nothing marked not-for-the-patient (third-party information) is shared anywhere.
    ThirdParty,
}

impl Restriction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::GeneralHealth => "general_health",
            Self::MentalHealth => "mental_health",
            Self::SexualHealth => "sexual_health",
            Self::SocialCare => "social_care",
            Self::ThirdParty => "third_party",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::GeneralHealth, Self::MentalHealth, Self::SexualHealth, Self::SocialCare, Self::ThirdParty]
            .into_iter()
            .find(|r| r.as_str() == s)
    }

    /// The category this restriction keeps back, if it is one.
    pub fn category(self) -> Option<Category> {
        match self {
            Self::GeneralHealth => Some(Category::GeneralHealth),
            Self::MentalHealth => Some(Category::MentalHealth),
            Self::SexualHealth => Some(Category::SexualHealth),
            Self::SocialCare => Some(Category::SocialCare),
            Self::ThirdParty => None,
        }
    }
}

/// A person's decision about sharing, as one consent record states it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Given,
    Declined,
    Withdrawn,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Given => "given",
            Self::Declined => "declined",
            Self::Withdrawn => "withdrawn",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Given, Self::Declined, Self::Withdrawn].into_iter().find(|d| d.as_str() == s)
    }
}

/// What a recorded consent statement says: a partner's decision, or a hold put because one of the person's
/// consent records could not be read (nothing about them is sent while it stands).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stated {
    Given,
    Declined,
    Withdrawn,
    Unreadable,
}

impl Stated {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Given => "given",
            Self::Declined => "declined",
            Self::Withdrawn => "withdrawn",
            Self::Unreadable => "unreadable",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Given, Self::Declined, Self::Withdrawn, Self::Unreadable].into_iter().find(|d| d.as_str() == s)
    }

    /// The partner's decision; none for a hold.
    pub fn decision(self) -> Option<Decision> {
        match self {
            Self::Given => Some(Decision::Given),
            Self::Declined => Some(Decision::Declined),
            Self::Withdrawn => Some(Decision::Withdrawn),
            Self::Unreadable => None,
        }
    }

    /// A withdrawal or refusal: every send about the person stops.
    pub fn refuses(self) -> bool {
        matches!(self, Self::Declined | Self::Withdrawn)
    }
}

impl From<Decision> for Stated {
    fn from(d: Decision) -> Self {
        match d {
            Decision::Given => Self::Given,
            Decision::Declined => Self::Declined,
            Decision::Withdrawn => Self::Withdrawn,
        }
    }
}

/// Where a consent statement's date comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DateSource {
    /// The record's own decision (and withdrawal) date.
    #[default]
    Export,
    /// The record has no date: the statement is dated when the connector first saw that answer.
    FirstSeen,
}

impl DateSource {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Export => "export",
            Self::FirstSeen => "first_seen",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Export, Self::FirstSeen].into_iter().find(|d| d.as_str() == s)
    }

    /// True for the default, so the field is left out of a statement's serialized (and hashed) form and the
    /// hashes of statements recorded before it existed stay the same.
    pub fn is_export(&self) -> bool {
        *self == Self::Export
    }
}

/// A consent statement read from one partner record (no names or free text: flags, dates and codes).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConsentFacts {
    /// `Patient/<id>` of the partner's person record.
    pub patient: String,
    pub decision: Decision,
    /// The date the statement takes effect: the withdrawal date for a withdrawal, else the decision date.
    /// Empty when `dated` is [`DateSource::FirstSeen`]: the planner dates it when the answer is first seen.
    pub effective: String,
    /// The decision date; empty when `dated` is [`DateSource::FirstSeen`].
    pub given: String,
    pub withdrawn: Option<String>,
    pub cito: bool,
    pub pkb: bool,
    /// Partner names as the record gives them.
    pub partners: Vec<String>,
    pub restrictions: Vec<Restriction>,
    /// Where the dates come from. Not serialized when [`DateSource::Export`] (see [`DateSource::is_export`]).
    #[serde(default, skip_serializing_if = "DateSource::is_export")]
    pub dated: DateSource,
}

super::spelled!(RecordKind, "record kind");
super::spelled!(Category, "category");
super::spelled!(DateSource, "consent date source");
super::spelled!(Stated, "consent statement");
