//! The expected set: what each destination should hold, as the planning pass decided it (resource, content
//! hash of what would be sent, partner), kept in memory for the run, compactly (about 120 bytes a resource:
//! the id, the hash as 32 bytes, a partner number), with a mark for each resource found there. It used to be
//! written to the state store and read back page by page; writing 100,000 rows of random keys, marking them
//! and deleting them again cost more than all the rest of a reconcile, and left pseudonymised ids at rest.

use std::collections::{BTreeMap, HashMap};

use crate::store::Expected;

/// The content hash of what would be sent: sha256 hex, kept as its 32 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ContentHash {
    Sha256([u8; 32]),
    /// Anything else (never made by the planner): compared as it is, through [`Sets::odd`].
    Odd(u32),
}

struct Entry {
    hash: ContentHash,
    partner: u16,
    seen: bool,
}

/// What one resource should be: the hash of what would be sent, and for which partner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Want {
    pub hash: ContentHash,
    pub partner: String,
}

/// The expected sets of every destination.
#[derive(Default)]
pub(super) struct Sets {
    /// Destination -> resource type -> id -> entry.
    sets: HashMap<String, BTreeMap<String, HashMap<Box<str>, Entry>>>,
    partners: Vec<String>,
    /// Hashes that are not sha256 hex, by number.
    odd: Vec<String>,
}

impl Sets {
    /// Adds what `destination` should hold (a later entry for the same resource replaces the earlier one).
    pub fn add(&mut self, destination: &str, items: Vec<Expected>) {
        for e in items {
            let partner = match self.partners.iter().position(|p| *p == e.partner) {
                Some(n) => n,
                None => {
                    self.partners.push(e.partner);
                    self.partners.len() - 1
                }
            };
            let hash = match decode_sha256(&e.content_hash) {
                Some(h) => ContentHash::Sha256(h),
                None => {
                    self.odd.push(e.content_hash);
                    ContentHash::Odd(u32::try_from(self.odd.len() - 1).unwrap_or(u32::MAX))
                }
            };
            let set = match self.sets.get_mut(destination) {
                Some(s) => s,
                None => self.sets.entry(destination.to_string()).or_default(),
            };
            let by_id = match set.get_mut(&e.key.resource_type) {
                Some(m) => m,
                None => set.entry(e.key.resource_type).or_default(),
            };
            let partner = u16::try_from(partner).unwrap_or(u16::MAX);
            by_id.insert(e.key.id.into_boxed_str(), Entry { hash, partner, seen: false });
        }
    }

    /// Whether `hash` (hex, as the ledger keeps it) is the one expected.
    pub fn same(&self, want: ContentHash, hash: &str) -> bool {
        match want {
            ContentHash::Sha256(h) => decode_sha256(hash) == Some(h),
            ContentHash::Odd(n) => self.odd.get(n as usize).is_some_and(|o| o == hash),
        }
    }

    /// The resource types expected at `destination`.
    pub fn types(&self, destination: &str) -> Vec<String> {
        self.sets
            .get(destination)
            .map(|s| s.iter().filter(|(_, m)| !m.is_empty()).map(|(t, _)| t.clone()).collect())
            .unwrap_or_default()
    }

    /// What is expected of each of `ids` (of `resource_type`) at `destination`, marking those found seen.
    pub fn see<'i>(
        &mut self,
        destination: &str,
        resource_type: &str,
        ids: impl IntoIterator<Item = &'i str>,
    ) -> Vec<Option<Want>> {
        let partners = &self.partners;
        let by_id = self.sets.get_mut(destination).and_then(|s| s.get_mut(resource_type));
        match by_id {
            None => ids.into_iter().map(|_| None).collect(),
            Some(by_id) => ids
                .into_iter()
                .map(|id| {
                    let e = by_id.get_mut(id)?;
                    e.seen = true;
                    Some(Want {
                        hash: e.hash,
                        partner: partners.get(usize::from(e.partner)).cloned().unwrap_or_default(),
                    })
                })
                .collect(),
        }
    }

    /// What `destination` should hold but was not found there, in key order: (type, id, partner).
    pub fn unseen(&self, destination: &str) -> Vec<(String, String, String)> {
        let Some(set) = self.sets.get(destination) else { return Vec::new() };
        let mut out = Vec::new();
        for (t, by_id) in set {
            let mut ids: Vec<(&str, u16)> =
                by_id.iter().filter(|(_, e)| !e.seen).map(|(id, e)| (&**id, e.partner)).collect();
            ids.sort_unstable();
            out.extend(ids.into_iter().map(|(id, p)| {
                (t.clone(), id.to_string(), self.partners.get(usize::from(p)).cloned().unwrap_or_default())
            }));
        }
        out
    }

    /// Forgets `destination`'s set (its comparison is done).
    pub fn drop_destination(&mut self, destination: &str) {
        self.sets.remove(destination);
    }
}

/// The 32 bytes of a lowercase sha256 hex digest; `None` for anything else.
fn decode_sha256(hex: &str) -> Option<[u8; 32]> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    let b = hex.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (n, pair) in b.chunks_exact(2).enumerate() {
        out[n] = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ResourceKey;

    fn exp(t: &str, id: &str, hash: &str, partner: &str) -> Expected {
        Expected { key: ResourceKey::new(t, id), content_hash: hash.into(), partner: partner.into() }
    }

    #[test]
    fn what_is_found_is_marked_and_the_rest_listed_in_key_order() {
        let h1 = crate::store::sha256_hex("one");
        let h2 = crate::store::sha256_hex("two");
        let mut sets = Sets::default();
        sets.add("cito", vec![exp("Patient", "p2", &h1, "hub"), exp("Patient", "p1", &h2, "gp")]);
        sets.add("cito", vec![exp("Encounter", "e1", &h1, "hub"), exp("Patient", "p3", "not-hex", "hub")]);
        sets.add("pkb", vec![exp("Patient", "p1", &h1, "hub")]);
        // A later plan of the same resource replaces the earlier.
        sets.add("cito", vec![exp("Patient", "p2", &h2, "hub")]);
        assert_eq!(sets.types("cito"), ["Encounter", "Patient"]);
        assert!(sets.types("nowhere").is_empty());

        let seen = sets.see("cito", "Patient", ["p2", "stranger", "p3"]);
        assert_eq!(
            seen[0],
            Some(Want { hash: ContentHash::Sha256(decode_sha256(&h2).unwrap()), partner: "hub".into() })
        );
        assert_eq!(seen[1], None);
        let odd = seen[2].clone().unwrap().hash;
        assert!(sets.same(odd, "not-hex") && !sets.same(odd, &h1));
        assert!(sets.same(seen[0].clone().unwrap().hash, &h2));
        assert!(!sets.same(seen[0].clone().unwrap().hash, &h1));
        assert!(!sets.same(seen[0].clone().unwrap().hash, ""));
        assert_eq!(sets.see("cito", "Observation", ["p2"]), [None]);
        // Seeing again finds the same (it is still expected).
        assert_eq!(sets.see("cito", "Patient", ["p2"])[0].as_ref().map(|w| w.partner.as_str()), Some("hub"));

        assert_eq!(
            sets.unseen("cito"),
            [
                ("Encounter".to_string(), "e1".to_string(), "hub".to_string()),
                ("Patient".to_string(), "p1".to_string(), "gp".to_string())
            ]
        );
        assert_eq!(sets.unseen("pkb").len(), 1);
        sets.drop_destination("cito");
        assert!(sets.unseen("cito").is_empty() && sets.types("cito").is_empty());
    }

    #[test]
    fn only_lowercase_sha256_hex_is_packed() {
        let h = crate::store::sha256_hex("x");
        assert!(decode_sha256(&h).is_some());
        assert!(decode_sha256(&h.to_uppercase()).is_none());
        assert!(decode_sha256(&h[..62]).is_none());
        assert!(decode_sha256("").is_none());
    }
}
