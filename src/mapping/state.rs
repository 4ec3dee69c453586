//! What one mapping run remembers while it streams: each kind's record keys (to quarantine duplicates), the
//! resources produced so far (every reference must point at one), and the resources of quarantined rows (to
//! say why a reference does not resolve). Memory stays bounded however large the export: each is a
//! [`SpillMap`] that keeps a fixed number of entries in memory and the rest in temporary files.
//!
//! Nothing here is approximate where an answer could be wrong:
//! - a reference `Type/<uuid>` is kept as its UUID's 128 bits with the type's number in the four bits that
//!   name every v5 UUID's version: the same reference always, and no other, gives the same key. Any other
//!   reference (not a v5 UUID in its canonical form, or another type) is kept as its text.
//! - a record key is kept as the first 128 bits of the SHA-256 of its kind and text. Two keys with the same
//!   digest would be taken for one record (the second quarantined as a duplicate): at these sizes that is
//!   less likely than two records getting the same resource id (122 bits of SHA-1), which the whole
//!   connector already relies on never happening.
//! - only which row a resource was quarantined from, and whether a duplicate's content is identical, are
//!   told by 64 bits; a wrong answer there changes a message's wording, never what is quarantined.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use sha2::{Digest, Sha256};

use super::RecordKind;
use super::spill::{Key, SpillMap};
use crate::model::RESOURCE_TYPES;

/// Entries kept in memory by each map before it spills: sized to hashbrown's tables (7/8 of a power of two), so
/// a table never grows past them. Record keys take 33 bytes an entry (about 2 MiB), resources 17.
const SEEN_IN_MEMORY: usize = (1 << 16) / 8 * 7;
const KNOWN_IN_MEMORY: usize = (1 << 16) / 8 * 7;
const WITHHELD_IN_MEMORY: usize = (1 << 12) / 8 * 7;

/// A reference (`Type/id`) as a run remembers it: its exact 16-byte key, or (rarely) its text. Its `Display`
/// gives back the reference's text.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RefKey {
    Code(Key),
    Text(Box<str>),
}

impl RefKey {
    pub fn of(reference: &str) -> Self {
        match ref_code(reference) {
            Some(k) => Self::Code(k),
            None => Self::Text(reference.into()),
        }
    }
}

impl std::fmt::Display for RefKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Text(t) => f.write_str(t),
            Self::Code(k) => {
                let mut id = *k;
                let t = RESOURCE_TYPES.get(usize::from(id[6] >> 4)).copied().unwrap_or_default();
                id[6] = 0x50 | (id[6] & 0x0f);
                write!(f, "{t}/{}", uuid::Uuid::from_bytes(id))
            }
        }
    }
}

/// The exact 128-bit key of `Type/<uuid>` when the type is one the connector makes and the id a v5 UUID
/// written as `Uuid::to_string` writes it (lower case, hyphenated): such a UUID's version nibble is always
/// 5, so it can hold the type's number instead and the key still names one reference only.
pub fn ref_code(reference: &str) -> Option<Key> {
    let (t, id) = reference.split_once('/')?;
    let type_number = RESOURCE_TYPES.iter().position(|x| *x == t)?;
    let type_number = u8::try_from(type_number).ok().filter(|n| *n < 16)?;
    let id = id.as_bytes();
    if id.len() != 36 {
        return None;
    }
    let mut key = [0u8; 16];
    let mut nibbles = 0;
    for (i, &c) in id.iter().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            if c != b'-' {
                return None;
            }
            continue;
        }
        let v = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        key[nibbles / 2] |= if nibbles % 2 == 0 { v << 4 } else { v };
        nibbles += 1;
    }
    // Version 5, RFC 4122 variant.
    if key[6] >> 4 != 5 || key[8] >> 6 != 0b10 {
        return None;
    }
    key[6] = (type_number << 4) | (key[6] & 0x0f);
    Some(key)
}

/// The key a record's key is remembered by: 128 bits of the SHA-256 of its kind and text.
fn record_key(kind: RecordKind, key: &str) -> Key {
    let mut h = Sha256::new();
    h.update(kind.as_str().as_bytes());
    h.update([0]);
    h.update(key.as_bytes());
    let d = h.finalize();
    let mut k = [0u8; 16];
    k.copy_from_slice(&d[..16]);
    k
}

/// Where a row was first seen: its row number and 64 bits of its content's digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FirstSeen {
    pub row: u64,
    pub content: u64,
}

/// The run's memory; see the module's documentation.
pub struct RunState {
    seen: SpillMap<(u64, u64)>,
    known: SpillMap<()>,
    known_text: HashSet<Box<str>>,
    withheld: SpillMap<(u64, u64)>,
    withheld_text: HashMap<Box<str>, (usize, u64)>,
}

impl RunState {
    /// An empty run's memory, spilling to files in `dir`.
    pub fn new(dir: &Path) -> Self {
        Self::with_memory(dir, [SEEN_IN_MEMORY, KNOWN_IN_MEMORY, WITHHELD_IN_MEMORY])
    }

    /// As `new`, keeping at most these numbers of record keys, resources and withheld resources in memory.
    pub fn with_memory(dir: &Path, [seen, known, withheld]: [usize; 3]) -> Self {
        Self {
            seen: SpillMap::new(dir, seen, "record keys seen"),
            known: SpillMap::new(dir, known, "resources produced"),
            known_text: HashSet::new(),
            withheld: SpillMap::new(dir, withheld, "resources of quarantined rows"),
            withheld_text: HashMap::new(),
        }
    }

    /// Where a record with this key was first mapped in this run, if it was.
    pub fn seen(&mut self, kind: RecordKind, key: &str) -> std::io::Result<Option<FirstSeen>> {
        Ok(self.seen.get(&record_key(kind, key))?.map(|(row, content)| FirstSeen { row, content }))
    }

    /// Remembers that the record with this key was mapped.
    pub fn see(&mut self, kind: RecordKind, key: &str, first: FirstSeen) -> std::io::Result<()> {
        self.seen.insert(record_key(kind, key), (first.row, first.content))
    }

    /// Whether this run produced the resource.
    pub fn known(&mut self, reference: &RefKey) -> std::io::Result<bool> {
        match reference {
            RefKey::Code(k) => self.known.contains(k),
            RefKey::Text(t) => Ok(self.known_text.contains(t)),
        }
    }

    /// Remembers a resource produced.
    pub fn produced(&mut self, reference: RefKey) -> std::io::Result<()> {
        match reference {
            RefKey::Code(k) => self.known.insert(k, ()),
            RefKey::Text(t) => {
                self.known_text.insert(t);
                Ok(())
            }
        }
    }

    /// The input file (by index) and row a resource would have come from, had its row not been quarantined.
    pub fn withheld(&mut self, reference: &RefKey) -> std::io::Result<Option<(usize, u64)>> {
        match reference {
            RefKey::Code(k) => Ok(self.withheld.get(k)?.map(|(file, row)| (usize::try_from(file).unwrap_or(0), row))),
            RefKey::Text(t) => Ok(self.withheld_text.get(t).copied()),
        }
    }

    /// Remembers the resource a quarantined row would have produced.
    pub fn withhold(&mut self, reference: RefKey, file: usize, row: u64) -> std::io::Result<()> {
        match reference {
            RefKey::Code(k) => self.withheld.insert(k, (file as u64, row)),
            RefKey::Text(t) => {
                self.withheld_text.insert(t, (file, row));
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reference_key_names_one_reference() {
        let id = crate::mapping::ids::resource_id("hub", "person", "patient", "C001");
        let patient = ref_code(&format!("Patient/{id}")).expect("a v5 UUID");
        let encounter = ref_code(&format!("Encounter/{id}")).expect("a v5 UUID");
        assert_ne!(patient, encounter, "the type is part of the key");
        let other = crate::mapping::ids::resource_id("hub", "person", "patient", "C002");
        assert_ne!(patient, ref_code(&format!("Patient/{other}")).unwrap());
        // Anything but the canonical text of a v5 UUID of a known type is kept as text.
        for odd in [
            format!("Patient/{}", id.to_uppercase()),
            format!("Patient/{}", id.replace('-', "")),
            format!("Practitioner/{id}"),
            "Patient/00000000-0000-4000-8000-000000000000".to_string(),
            "Organization/ods-RCB".to_string(),
            format!("Patient/{id}/_history/1"),
            "Patient".to_string(),
        ] {
            assert_eq!(ref_code(&odd), None, "{odd}");
            assert_eq!(RefKey::of(&odd), RefKey::Text(odd.clone().into()));
        }
    }

    #[test]
    fn a_reference_key_gives_back_its_text() {
        let id = crate::mapping::ids::resource_id("hub", "person", "patient", "C001");
        for t in RESOURCE_TYPES {
            let text = format!("{t}/{id}");
            assert!(matches!(RefKey::of(&text), RefKey::Code(_)));
            assert_eq!(RefKey::of(&text).to_string(), text);
        }
        assert_eq!(RefKey::of("Organization/ods-RCB").to_string(), "Organization/ods-RCB");
        assert_eq!(RefKey::of("").to_string(), "");
    }

    #[test]
    fn every_type_keeps_its_number() {
        let id = crate::mapping::ids::resource_id("hub", "contact", "encounter", "E1");
        let keys: HashSet<Key> = RESOURCE_TYPES.iter().map(|t| ref_code(&format!("{t}/{id}")).unwrap()).collect();
        assert_eq!(keys.len(), RESOURCE_TYPES.len());
    }

    #[test]
    fn remembers_across_spills() {
        let mut s = RunState::new(&std::env::temp_dir());
        let n = KNOWN_IN_MEMORY as u64 * 2 + 17;
        for i in 0..n {
            let id = crate::mapping::ids::resource_id("hub", "person", "patient", &i.to_string());
            s.produced(RefKey::of(&format!("Patient/{id}"))).unwrap();
            s.see(RecordKind::Person, &i.to_string(), FirstSeen { row: i + 2, content: i }).unwrap();
        }
        for i in (0..n).step_by(997) {
            let id = crate::mapping::ids::resource_id("hub", "person", "patient", &i.to_string());
            assert!(s.known(&RefKey::of(&format!("Patient/{id}"))).unwrap());
            assert!(!s.known(&RefKey::of(&format!("Encounter/{id}"))).unwrap());
            assert_eq!(s.seen(RecordKind::Person, &i.to_string()).unwrap(), Some(FirstSeen { row: i + 2, content: i }));
            assert_eq!(s.seen(RecordKind::Contact, &i.to_string()).unwrap(), None, "keys are per kind");
        }
        assert_eq!(s.seen(RecordKind::Person, &n.to_string()).unwrap(), None);
    }
}
