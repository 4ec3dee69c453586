//! A conflict's status.

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
