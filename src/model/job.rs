//! The names of the daemon's jobs, as `connector status`, the `jobs` table and the logs show them.

use std::fmt;

/// One job: a partner's ingest, a destination's delivery or pull, a partner feed, the nightly reconcile.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum JobName {
    /// `ingest:<partner>`: map the partner's exports and plan every destination's outbox.
    Ingest(String),
    /// `deliver:<destination>`: send the destination's outbox.
    Deliver(String),
    /// `pull:<destination>`: read back what others changed there.
    Pull(String),
    /// `feed:<partner>`: the partner's feed of the unified record.
    Feed(String),
    /// `reconcile`: compare every destination with what it should hold.
    Reconcile,
}

impl JobName {
    pub fn parse(s: &str) -> Option<Self> {
        if s == "reconcile" {
            return Some(Self::Reconcile);
        }
        let (kind, name) = s.split_once(':')?;
        let name = name.to_string();
        match kind {
            "ingest" => Some(Self::Ingest(name)),
            "deliver" => Some(Self::Deliver(name)),
            "pull" => Some(Self::Pull(name)),
            "feed" => Some(Self::Feed(name)),
            _ => None,
        }
    }
}

impl fmt::Display for JobName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ingest(p) => write!(f, "ingest:{p}"),
            Self::Deliver(d) => write!(f, "deliver:{d}"),
            Self::Pull(d) => write!(f, "pull:{d}"),
            Self::Feed(p) => write!(f, "feed:{p}"),
            Self::Reconcile => f.write_str("reconcile"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::JobName;

    #[test]
    fn names_read_back_as_written() {
        for j in [
            JobName::Ingest("hub".into()),
            JobName::Deliver("cito".into()),
            JobName::Pull("pkb".into()),
            JobName::Feed("york-mind".into()),
            JobName::Reconcile,
        ] {
            assert_eq!(JobName::parse(&j.to_string()), Some(j));
        }
        assert_eq!(JobName::parse("sync:hub"), None);
    }
}
