//! Comparing what a destination holds with what it should hold: each resource read, as [`Observed`] against
//! the ledger, meets its entry in the expected set (or its absence) and gets a [`Verdict`]; with `--fix` the
//! repair is queued beside it. Pages read while the source is still being mapped wait (compact: a few hundred
//! bytes a resource, at most `READ_AHEAD` of them) until the expected set is whole, since only then
//! does "not expected" mean anything.

use chrono::Utc;

use super::read::{Full, Read, ReadPage};
use super::{Class, Run, pull};
use crate::deliver::Destination;
use crate::store::{LedgerEntry, Op, OutboxItem, ResourceKey};

/// A resource read from a destination, as far as the verdict needs it.
pub(super) struct Observed {
    pub id: String,
    /// The partner in its source-partner tag.
    pub tag: Option<String>,
    /// What the ledger says of it; `None` when the ledger does not know it.
    pub known: Option<Known>,
    /// It has an open conflict.
    pub conflict: bool,
}

/// What the ledger says of a resource read, compared with what was read.
pub(super) struct Known {
    /// Someone else's resource that the connector links to: not ours to judge.
    pub linked: bool,
    /// The partner it was sent for.
    pub origin_partner: Option<String>,
    /// The hash of what the connector last sent.
    pub content_hash: String,
    pub copy: Copy,
}

/// The copy there, by the ledger's hashes of what the destination held.
pub(super) enum Copy {
    /// What the ledger says it holds.
    Held,
    /// An older version the connector wrote (`prev_hash`).
    Older,
    /// Changed there since the connector last looked, with the elements that differ from the partner's
    /// version last reflected there.
    Changed(String),
}

impl Known {
    /// Judges a resource read (content hash `hash`; `resource` gives it whole, when the elements that changed
    /// are to be named) against its ledger entry `l`.
    pub fn of(l: &LedgerEntry, hash: &str, resource: impl FnOnce() -> serde_json::Value, salt: &str) -> Self {
        let copy = if l.prev_hash.as_deref() == Some(hash) {
            Copy::Older
        } else if l.held_hash.as_deref() != Some(hash) && !l.linked {
            let changed = crate::conflict::decode(l.source_fp.as_deref())
                .map(|b| crate::conflict::changed_from(salt, &b, &resource()).join(", "))
                .unwrap_or_default();
            Copy::Changed(changed)
        } else {
            Copy::Held
        };
        Self {
            linked: l.linked,
            origin_partner: l.origin.as_ref().and_then(crate::model::Provenance::partner).map(str::to_string),
            content_hash: l.content_hash.clone(),
            copy,
        }
    }
}

/// What reconcile makes of one resource read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Verdict {
    InSync,
    /// Changed on both sides, waiting for an admin.
    Conflict,
    /// Not expected; `known`: the ledger says the connector sent it.
    Unexpected {
        known: bool,
    },
    /// Expected, but the ledger does not know it.
    Unknown,
    /// An older version the connector wrote.
    OlderCopy,
    /// Changed there by someone else (the elements).
    Drifted(String),
    /// The source has changed since it was delivered.
    Undelivered,
}

impl Verdict {
    /// The verdict on `o`: `expected` is `None` when it is not expected, and otherwise whether the ledger's
    /// hash of what was last sent is the hash expected now.
    pub fn of(o: &Observed, expected: Option<bool>) -> Self {
        if o.conflict {
            return Verdict::Conflict;
        }
        match (expected, &o.known) {
            (None, known) => Verdict::Unexpected { known: known.is_some() },
            (Some(_), None) => Verdict::Unknown,
            (Some(current), Some(k)) => match &k.copy {
                Copy::Older => Verdict::OlderCopy,
                Copy::Changed(elements) => Verdict::Drifted(elements.clone()),
                Copy::Held if !current => Verdict::Undelivered,
                Copy::Held => Verdict::InSync,
            },
        }
    }

    pub fn class(&self) -> Option<Class> {
        match self {
            Verdict::InSync => None,
            Verdict::Conflict => Some(Class::Conflict),
            Verdict::Unexpected { .. } => Some(Class::Unexpected),
            Verdict::Drifted(_) => Some(Class::Drifted),
            Verdict::Unknown | Verdict::OlderCopy | Verdict::Undelivered => Some(Class::Stale),
        }
    }

    pub fn detail(&self) -> String {
        match self {
            Verdict::InSync => String::new(),
            Verdict::Conflict => "waiting for an admin: connector conflicts list".into(),
            Verdict::Unexpected { known: true } => "no longer in the source, or no longer allowed there".into(),
            Verdict::Unexpected { known: false } => {
                "carries the connector's tag but the connector neither sent nor expects it".into()
            }
            Verdict::Unknown => "there, but the ledger does not know it (state restored from an older backup?)".into(),
            Verdict::OlderCopy => "holds an older version the connector wrote (restored or replayed there)".into(),
            Verdict::Drifted(elements) => format!("changed there since the connector last looked: {elements}"),
            Verdict::Undelivered => "the source has changed since; not delivered yet".into(),
        }
    }
}

impl Run<'_> {
    /// Judges one page read against the expected set, which must be whole by now (marking what it finds
    /// there as seen), and queues the repairs with `--fix`.
    pub(super) async fn judge(&mut self, dest: &Destination, page: ReadPage) -> anyhow::Result<()> {
        let store = self.engine.store.clone();
        let ReadPage { resource_type, resources, .. } = page;
        let wants =
            self.expected_lock().see(&dest.name, &resource_type, resources.iter().map(|r| r.observed.id.as_str()));
        let mut deletions = Vec::new();
        for (Read { observed: o, full }, want) in resources.into_iter().zip(wants) {
            let key = ResourceKey::new(&resource_type, &o.id);
            let partner = want
                .as_ref()
                .map(|w| w.partner.clone())
                .or_else(|| o.tag.clone())
                .or_else(|| o.known.as_ref().and_then(|k| k.origin_partner.clone()))
                .unwrap_or_else(|| "?".into());
            if !self.wanted(&partner) {
                continue;
            }
            self.report.read += 1;
            if o.known.as_ref().is_some_and(|k| k.linked) {
                continue;
            }
            let current =
                want.map(|w| o.known.as_ref().is_some_and(|k| self.expected_lock().same(w.hash, &k.content_hash)));
            let verdict = Verdict::of(&o, current);
            let fix = match (self.opts.fix, full) {
                (true, Some(full)) => self.repair(dest, &verdict, &key, *full, &mut deletions).await?,
                _ => None,
            };
            self.note(&dest.name, &partner, &resource_type, &o.id, verdict.class(), verdict.detail(), fix);
        }
        if !deletions.is_empty() {
            self.queued += store.enqueue(&deletions, Utc::now()).await? as u64;
        }
        Ok(())
    }

    /// Queues the repair of one resource (`--fix`); returns what was done.
    async fn repair(
        &mut self,
        dest: &Destination,
        verdict: &Verdict,
        key: &ResourceKey,
        full: Full,
        deletions: &mut Vec<OutboxItem>,
    ) -> anyhow::Result<Option<String>> {
        let store = &self.engine.store;
        let Full { found, hash, ledger } = full;
        Ok(match (verdict, ledger) {
            (Verdict::InSync | Verdict::Conflict, _) => None,
            (Verdict::Unexpected { .. }, led) => {
                if led.is_none() || dest.retract {
                    if led.is_none() {
                        // The outbox deletes only what the ledger says is there: record it first.
                        store.ledger_accept(&adopted(dest, key, &found, &hash, None), None).await?;
                    }
                    deletions.push(OutboxItem {
                        destination: dest.name.clone(),
                        key: key.clone(),
                        patient: led.and_then(|l| l.patient),
                        op: Op::Delete,
                        content_hash: String::new(),
                        body: None,
                        origin: None,
                    });
                    Some("deletion queued".into())
                } else {
                    Some(format!("kept: retract = false for {}", dest.name))
                }
            }
            (Verdict::Unknown, _) => {
                // Adopt what is there as the base, so the update goes out with If-Match.
                let fp = crate::conflict::fingerprints(&dest.salt, &found.resource);
                let entry = adopted(dest, key, &found, &hash, Some(crate::conflict::encode(&fp)));
                store.ledger_accept(&entry, None).await?;
                Some("adopted; update queued".into())
            }
            (Verdict::OlderCopy, Some(mut entry)) => {
                entry.content_hash = String::new(); // planned again; the merge sees the stale copy
                store.ledger_accept(&entry, None).await?;
                Some("current version queued".into())
            }
            (Verdict::Drifted(_), Some(entry)) => {
                pull::note_remote(store, dest, &entry, &found).await?;
                Some("accepted as a change made there (kept)".into())
            }
            (Verdict::Undelivered, _) => Some("queued by the sync cycle".into()),
            // A verdict that needs a ledger entry always has one.
            (Verdict::OlderCopy | Verdict::Drifted(_), None) => None,
        })
    }
}

/// A ledger entry for a resource found on the destination that the ledger did not know (content hash empty,
/// so the next plan sends the source's version).
fn adopted(
    dest: &Destination,
    key: &ResourceKey,
    found: &crate::deliver::transport::Found,
    hash: &str,
    source_fp: Option<String>,
) -> LedgerEntry {
    LedgerEntry {
        destination: dest.name.clone(),
        key: key.clone(),
        remote_id: found.id.clone(),
        version_id: found.version_id.clone(),
        content_hash: String::new(),
        updated_at: Utc::now(),
        source_fp,
        held_hash: Some(hash.to_string()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SALT: &str = "salt";

    fn resource(phone: &str) -> serde_json::Value {
        json!({"resourceType": "Patient", "id": "p1", "meta": {"versionId": "4"},
            "telecom": [{"system": "phone", "value": phone}], "gender": "female"})
    }

    /// The ledger entry after the connector wrote `resource("1")`, having written `resource("0")` before.
    fn ledger() -> LedgerEntry {
        let sent = resource("1");
        LedgerEntry {
            destination: "cito".into(),
            key: ResourceKey::new("Patient", "p1"),
            remote_id: "p1".into(),
            content_hash: "planned-1".into(),
            source_fp: Some(crate::conflict::encode(&crate::conflict::fingerprints(SALT, &sent))),
            held_hash: Some(crate::conflict::content_hash(&sent)),
            prev_hash: Some(crate::conflict::content_hash(&resource("0"))),
            ..Default::default()
        }
    }

    fn observed(there: &serde_json::Value, ledger: Option<&LedgerEntry>, conflict: bool) -> Observed {
        let hash = crate::conflict::content_hash(there);
        Observed {
            id: "p1".into(),
            tag: None,
            known: ledger.map(|l| Known::of(l, &hash, || there.clone(), SALT)),
            conflict,
        }
    }

    #[test]
    fn each_kind_of_difference_has_its_verdict() {
        let l = ledger();
        let held = resource("1");
        assert_eq!(Verdict::of(&observed(&held, Some(&l), false), Some(true)), Verdict::InSync);
        // The server's additions are not content.
        let mut served = held.clone();
        served["meta"]["lastUpdated"] = json!("2026-01-01T00:00:00Z");
        served["text"] = json!({"status": "generated", "div": "<div/>"});
        assert_eq!(Verdict::of(&observed(&served, Some(&l), false), Some(true)), Verdict::InSync);
        assert_eq!(Verdict::of(&observed(&held, Some(&l), false), Some(false)), Verdict::Undelivered);
        assert_eq!(Verdict::of(&observed(&resource("0"), Some(&l), false), Some(true)), Verdict::OlderCopy);
        assert_eq!(
            Verdict::of(&observed(&resource("2"), Some(&l), false), Some(true)),
            Verdict::Drifted("telecom".into())
        );
        assert_eq!(Verdict::of(&observed(&held, None, false), Some(false)), Verdict::Unknown);
        assert_eq!(Verdict::of(&observed(&held, Some(&l), false), None), Verdict::Unexpected { known: true });
        assert_eq!(Verdict::of(&observed(&held, None, false), None), Verdict::Unexpected { known: false });
        // An open conflict comes first, whatever else differs.
        assert_eq!(Verdict::of(&observed(&resource("2"), Some(&l), true), Some(true)), Verdict::Conflict);
        assert_eq!(Verdict::of(&observed(&held, None, true), None), Verdict::Conflict);
    }

    #[test]
    fn classes_and_details_are_the_reported_ones() {
        let cases = [
            (Verdict::InSync, None, ""),
            (Verdict::Conflict, Some(Class::Conflict), "waiting for an admin"),
            (Verdict::Unexpected { known: true }, Some(Class::Unexpected), "no longer in the source"),
            (Verdict::Unexpected { known: false }, Some(Class::Unexpected), "neither sent nor expects"),
            (Verdict::Unknown, Some(Class::Stale), "the ledger does not know it"),
            (Verdict::OlderCopy, Some(Class::Stale), "an older version"),
            (Verdict::Drifted("address, telecom".into()), Some(Class::Drifted), "looked: address, telecom"),
            (Verdict::Undelivered, Some(Class::Stale), "not delivered yet"),
        ];
        for (verdict, class, detail) in cases {
            assert_eq!(verdict.class(), class, "{verdict:?}");
            assert!(verdict.detail().contains(detail), "{verdict:?}: {}", verdict.detail());
        }
    }
}
