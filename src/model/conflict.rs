//! A conflict's status, and the side an admin keeps when deciding it.

/// Open until an admin resolves it (`connector conflicts resolve`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConflictStatus {
    #[default]
    Open,
    Resolved,
}

impl ConflictStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Resolved => "resolved",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Open, Self::Resolved].into_iter().find(|c| c.as_str() == s)
    }
}

super::spelled!(ConflictStatus, "conflict status");

/// The side an admin keeps (`connector conflicts resolve ID --keep source|remote`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Keep {
    /// The partner's version.
    Source,
    /// The destination's version.
    Remote,
}

impl Keep {
    pub const ALL: [Keep; 2] = [Keep::Source, Keep::Remote];

    pub fn as_str(self) -> &'static str {
        match self {
            Keep::Source => "source",
            Keep::Remote => "remote",
        }
    }
}
