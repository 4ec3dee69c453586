//! Where a planned write came from: what the sharing rules need to decide again before it is sent.

use super::Category;

/// Where a planned write came from: what the rules need to decide again before it is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub partner: String,
    pub category: Category,
    pub not_for_patient: bool,
    /// True for the person's own Patient resource.
    pub is_patient: bool,
}

impl Origin {
    /// `partner|category|nfp|patient`, as kept in the outbox.
    pub fn encode(&self) -> String {
        format!(
            "{}|{}|{}|{}",
            self.partner,
            self.category.as_str(),
            u8::from(self.not_for_patient),
            u8::from(self.is_patient)
        )
    }

    pub fn decode(s: &str) -> Option<Origin> {
        let mut parts = s.split('|');
        let partner = parts.next().filter(|p| !p.is_empty())?.to_string();
        let category = Category::parse(parts.next()?)?;
        let not_for_patient = parts.next()? == "1";
        let is_patient = parts.next().is_some_and(|p| p == "1");
        Some(Origin { partner, category, not_for_patient, is_patient })
    }
}

/// The spelling of [`Provenance::AuditCopy`] in the store.
const AUDIT_COPY: &str = "audit";

/// Why a write is planned, as the store keeps it beside the write (outbox, ledger, writes in flight,
/// conflicts, feed items): converted at the store's boundary, so no stage above it parses text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Provenance {
    /// A partner's record: what the sharing rules need to decide again before it is sent.
    Record(Origin),
    /// The audit trail's copy on the central record (`[audit] fhir_destination`): not itself a disclosure.
    AuditCopy,
    /// Stored text that reads as neither (a damaged row): the rules cannot be evaluated, so it is withheld.
    Unreadable(String),
}

impl Provenance {
    /// As kept in the store: `partner|category|nfp|patient`, or `audit`.
    pub fn encode(&self) -> String {
        match self {
            Self::Record(o) => o.encode(),
            Self::AuditCopy => AUDIT_COPY.to_string(),
            Self::Unreadable(s) => s.clone(),
        }
    }

    pub fn decode(s: &str) -> Provenance {
        if s == AUDIT_COPY {
            return Self::AuditCopy;
        }
        Origin::decode(s).map_or_else(|| Self::Unreadable(s.to_string()), Self::Record)
    }

    /// The partner record's origin, when it is one that reads.
    pub fn origin(&self) -> Option<&Origin> {
        match self {
            Self::Record(o) => Some(o),
            _ => None,
        }
    }

    pub fn is_audit_copy(&self) -> bool {
        *self == Self::AuditCopy
    }

    /// The partner whose record it is (from the stored text's first field even when the rest is damaged, for
    /// reports; never for a sharing decision).
    pub fn partner(&self) -> Option<&str> {
        match self {
            Self::Record(o) => Some(&o.partner),
            Self::AuditCopy => None,
            Self::Unreadable(s) => s.split('|').next().filter(|p| !p.is_empty()),
        }
    }
}

impl From<Origin> for Provenance {
    fn from(o: Origin) -> Self {
        Self::Record(o)
    }
}

/// Written as the store keeps it (JSON output that shows it stays as it was).
impl serde::Serialize for Provenance {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.encode())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provenance_reads_what_the_store_kept_and_keeps_what_it_cannot_read() {
        let o = Origin {
            partner: "hub".into(),
            category: Category::MentalHealth,
            not_for_patient: true,
            is_patient: false,
        };
        let p = Provenance::from(o.clone());
        assert_eq!(Provenance::decode(&p.encode()), p);
        assert_eq!(Provenance::decode("audit"), Provenance::AuditCopy);
        // A damaged row reads as unreadable, never as a partner record the rules could pass.
        let damaged = Provenance::decode("hub|no_such_category|0|0");
        assert_eq!(damaged, Provenance::Unreadable("hub|no_such_category|0|0".into()));
        assert_eq!(damaged.origin(), None);
        assert_eq!(damaged.partner(), Some("hub"));
        assert_eq!(damaged.encode(), "hub|no_such_category|0|0");
    }
}
