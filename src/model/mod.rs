//! The vocabulary every stage shares, on the ground floor: it imports nothing from the crate, so any module
//! may use it without a cycle. Closed sets are enums with `as_str`/`parse` (their only string spellings are
//! here and in SQL); the store converts at its boundary.
//!
//! - [`record`]: record kinds, sensitivity categories, restrictions, consent decisions and facts, the
//!   resource types a mapping may produce.
//! - [`fhir`]: FHIR code systems and identifier systems, each defined once.
//! - [`origin`]: where a planned write came from (kept with it in the outbox).
//! - [`audit`]: what an audit entry records ([`AuditAction`]).
//! - [`conflict`]: a conflict's status and the side an admin keeps.
//! - [`job`]: the names of the daemon's jobs.

pub mod audit;
pub mod conflict;
pub mod fhir;
pub mod job;
pub mod origin;
pub mod record;

pub use audit::AuditAction;
pub use conflict::{ConflictStatus, Keep};
pub use job::JobName;
pub use origin::{Origin, Provenance};
pub use record::{Category, ConsentFacts, DateSource, Decision, RESOURCE_TYPES, RecordKind, Restriction, Stated};

/// Implements `Display` (as `as_str`) and `FromStr` (as `parse`) for a closed set.
macro_rules! spelled {
    ($t:ty, $what:literal) => {
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.pad(self.as_str())
            }
        }
        impl std::str::FromStr for $t {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                Self::parse(s).ok_or_else(|| format!("\"{s}\" is not a known {}", $what))
            }
        }
    };
}
pub(crate) use spelled;
