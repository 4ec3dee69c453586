//! What an audit entry records.

/// The action of one audit entry. The spellings are stored in the `audit` table and printed by
/// `connector consent show` and `connector audit`; never change one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuditAction {
    /// A resource was written to a destination or a partner feed.
    #[default]
    Disclosed,
    /// The connector linked its Patient to one a destination already held for the person.
    Linked,
    /// A resource was deleted from a destination (consent withdrawn, agreement ended).
    Retracted,
    /// The sharing rules kept a resource back.
    Withheld,
    /// A consent statement was read.
    Consent,
    /// Pending sends were cancelled (consent withdrawn).
    Cancelled,
    /// A record changed both at its partner and on a destination: kept for an admin, not overwritten.
    Conflict,
    /// An admin resolved a conflict.
    ConflictResolved,
    /// Someone else changed a resource on a destination (read back by pull).
    RemoteChange,
}

impl AuditAction {
    pub const ALL: [AuditAction; 9] = [
        Self::Disclosed,
        Self::Linked,
        Self::Retracted,
        Self::Withheld,
        Self::Consent,
        Self::Cancelled,
        Self::Conflict,
        Self::ConflictResolved,
        Self::RemoteChange,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disclosed => "disclosed",
            Self::Linked => "linked",
            Self::Retracted => "retracted",
            Self::Withheld => "withheld",
            Self::Consent => "consent",
            Self::Cancelled => "cancelled",
            Self::Conflict => "conflict",
            Self::ConflictResolved => "conflict-resolved",
            Self::RemoteChange => "remote-change",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

super::spelled!(AuditAction, "audit action");
