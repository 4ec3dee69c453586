//! Deterministic resource ids: UUID v5 of partner, kind, resource name and source key, so the same record
//! gets the same id in every run and on every machine, and re-exports update rather than duplicate.

use std::sync::LazyLock;

use uuid::Uuid;

/// The connector's own UUID namespace (itself a v5 UUID of the URL namespace and the product name).
static NAMESPACE: LazyLock<Uuid> = LazyLock::new(|| Uuid::new_v5(&Uuid::NAMESPACE_URL, b"urn:york-connector"));

fn namespace() -> Uuid {
    *NAMESPACE
}

pub fn resource_id(partner: &str, kind: &str, resource: &str, key: &str) -> String {
    Uuid::new_v5(&namespace(), format!("{partner}/{kind}/{resource}/{key}").as_bytes()).to_string()
}

pub fn organization_id(partner: &str) -> String {
    Uuid::new_v5(&namespace(), format!("{partner}/organization").as_bytes()).to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_are_stable_and_distinct() {
        let a = super::resource_id("hub", "person", "patient", "C001");
        assert_eq!(a, super::resource_id("hub", "person", "patient", "C001"));
        assert_ne!(a, super::resource_id("york-mind", "person", "patient", "C001"));
        assert_ne!(a, super::resource_id("hub", "person", "patient", "C002"));
    }
}
