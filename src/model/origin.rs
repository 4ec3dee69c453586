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
