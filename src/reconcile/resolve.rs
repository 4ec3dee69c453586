//! An admin's decision on a conflict (`connector conflicts resolve ID --keep source|remote`).
//!
//! - `source`: the partner's version goes to the destination (its changed elements on top of the current
//!   version; the whole partner version where merging is off for the type), with `If-Match` on the version
//!   read just before, after the sharing rules are checked again. A disclosure, audited as such.
//! - `remote`: the destination's version stays; the ledger records that it reflects the partner's version
//!   too, so the same partner version is not proposed again.
//!
//! Either way the decision is audited (`conflict-resolved`, naming who decided) in the same transaction that
//! closes the conflict and updates the ledger.

use anyhow::{Context as _, bail};
use chrono::Utc;
use serde_json::Value;

use crate::context::Context;
use crate::deliver::transport::{Body, Method, TransportError, Write};
use crate::model::Provenance;
use crate::model::{AuditAction, ConflictStatus};
use crate::policy::Verdict;
use crate::store::{AuditEntry, LedgerEntry};

pub use crate::model::Keep;

/// What a resolution did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Resolved {
    pub id: i64,
    pub keep: Keep,
    pub destination: String,
    pub resource: String,
    /// The destination's version afterwards.
    pub version: Option<String>,
    /// Whether anything was written to the destination.
    pub written: bool,
}

/// Who is deciding: the account of the process's real user id, from `/proc/self/status` and `/etc/passwd`.
/// `USER`, `LOGNAME` and `SUDO_USER` are not trusted (anyone can set them), except `SUDO_USER` when the real
/// user is root and `SUDO_UID` names that same account: that is sudo saying who ran it.
pub fn who() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let sudo = std::env::var("SUDO_USER").ok().zip(std::env::var("SUDO_UID").ok());
    who_from(&status, &passwd, sudo.as_ref().map(|(u, id)| (u.as_str(), id.as_str())))
}

/// [`who`] on given texts: `status` as in `/proc/self/status`, `passwd` as in `/etc/passwd`, and sudo's
/// `SUDO_USER`/`SUDO_UID` when both are set.
pub fn who_from(status: &str, passwd: &str, sudo: Option<(&str, &str)>) -> String {
    let Some(uid) = real_uid(status) else { return "unknown (no real user id)".into() };
    let name = account(passwd, uid);
    if uid == 0
        && let Some((user, sudo_uid)) = sudo
        && let Ok(sudo_uid) = sudo_uid.trim().parse::<u32>()
        && sudo_uid != 0
        && account(passwd, sudo_uid).as_deref() == Some(user)
    {
        return format!("{user} (via sudo)");
    }
    name.unwrap_or_else(|| format!("uid {uid}"))
}

/// The real user id: the first number of the `Uid:` line.
fn real_uid(status: &str) -> Option<u32> {
    status.lines().find_map(|l| l.strip_prefix("Uid:"))?.split_whitespace().next()?.parse().ok()
}

/// The account name `/etc/passwd` gives `uid`.
fn account(passwd: &str, uid: u32) -> Option<String> {
    passwd.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        let id: u32 = f.nth(1)?.parse().ok()?;
        (id == uid && !name.is_empty()).then(|| name.to_string())
    })
}

pub async fn resolve(ctx: &Context, id: i64, keep: Keep, by: &str) -> anyhow::Result<Resolved> {
    let store = &ctx.store;
    let Some(c) = store.conflict_get(id).await? else {
        bail!("no conflict {id}: `connector conflicts list` shows them")
    };
    if c.status != ConflictStatus::Open {
        bail!(
            "conflict {id} is already resolved ({} by {} at {})",
            c.resolution.as_deref().unwrap_or("?"),
            c.resolved_by.as_deref().unwrap_or("?"),
            c.resolved_at.map(|t| t.to_rfc3339()).unwrap_or_default()
        );
    }
    let dest = ctx.destination(&c.destination).with_context(|| {
        format!("conflict {id} is at destination \"{}\", which is not in the config", c.destination)
    })?;
    let source: Value = c
        .source_json
        .as_deref()
        .and_then(|t| serde_json::from_str(t).ok())
        .with_context(|| format!("conflict {id} has no readable partner version"))?;
    let key = c.key();
    let known = store.ledger_get(&dest.name, &key).await?;
    let current = dest
        .transport
        .read(&c.resource_type, &c.remote_id)
        .await
        .with_context(|| format!("reading {}/{} from {}", c.resource_type, c.remote_id, dest.name))?;
    let salt = dest.salt.clone();
    let base = known.as_ref().and_then(|k| crate::conflict::decode(k.source_fp.as_deref()));
    let now = Utc::now();
    let mut entry = known.clone().unwrap_or_else(|| LedgerEntry {
        destination: dest.name.clone(),
        key: key.clone(),
        remote_id: c.remote_id.clone(),
        patient: c.patient.clone(),
        origin: c.origin.clone(),
        ..Default::default()
    });
    entry.content_hash = c.source_hash.clone();
    entry.source_fp = Some(crate::conflict::encode(&crate::conflict::fingerprints(&salt, &source)));
    entry.updated_at = now;
    let mut decision = AuditEntry {
        at: now,
        action: AuditAction::ConflictResolved,
        destination: Some(dest.name.clone()),
        person: c.patient.clone(),
        resource_type: Some(c.resource_type.clone()),
        resource_id: Some(c.resource_id.clone()),
        partner: c.origin.as_ref().and_then(Provenance::origin).map(|o| o.partner.clone()),
        ..AuditEntry::default()
    };
    let elements = c.elements.join(", ");
    let (audits, version, written) = match keep {
        Keep::Remote => {
            let found = current.as_ref();
            entry.version_id = found.and_then(|f| f.version_id.clone());
            entry.held_hash = found.map(|f| crate::conflict::content_hash(&f.resource));
            entry.remote_edits = found.is_some();
            decision.version_id = entry.version_id.clone();
            decision.reason =
                Some(format!("conflict {id}: kept the version on {} for {elements}; decided by {by}", dest.name));
            (vec![decision], entry.version_id.clone(), false)
        }
        Keep::Source => {
            let origin = c.origin.as_ref().and_then(Provenance::origin).cloned().with_context(|| {
                format!("conflict {id} does not say where its data came from; resolve with --keep remote, or let the next sync plan it again")
            })?;
            let consents = match &c.patient {
                Some(p) => store.consent_current(std::slice::from_ref(p)).await?,
                None => Default::default(),
            };
            let consent = c.patient.as_ref().and_then(|p| consents.get(p));
            let verdict = ctx.policy.decide_resource(
                &dest.name,
                dest.profile,
                &origin,
                &c.resource_type,
                c.patient.as_deref(),
                consent,
            );
            let permit = match verdict {
                Verdict::Send(p) => p,
                Verdict::Withhold(reason) => bail!(
                    "the partner's version may not go to {} now: {reason}. Resolve with --keep remote instead",
                    dest.name
                ),
            };
            let rules = crate::conflict::Rules {
                salt: &salt,
                auto_merge: dest.auto_merge.contains(&c.resource_type),
                stale: false,
            };
            let mut body = match &current {
                Some(found) => crate::conflict::resolve_keep_source(rules, base.as_ref(), &source, &found.resource),
                None => source.clone(),
            };
            body["id"] = Value::String(c.remote_id.clone());
            let write = Write {
                resource_type: c.resource_type.clone(),
                id: c.remote_id.clone(),
                method: Method::Put,
                body: Some(Body::new(&body, &salt).context("writing the partner's version out as JSON")?),
                if_match: current.as_ref().and_then(|f| f.version_id.clone()),
            };
            let results = match dest.transport.send(std::slice::from_ref(&write)).await {
                Ok(r) => r,
                Err(TransportError::PreconditionFailed { .. }) => bail!(
                    "{}/{} changed again on {} just now; nothing was written. Look again: `connector conflicts show {id}`",
                    c.resource_type,
                    c.remote_id,
                    dest.name
                ),
                Err(e) => return Err(e).with_context(|| format!("writing the partner's version to {}", dest.name)),
            };
            let version = results.into_iter().next().and_then(|r| r.version_id);
            let held = crate::conflict::content_hash(&body);
            entry.prev_hash = entry.held_hash.clone().filter(|h| *h != held);
            entry.held_hash = Some(held);
            entry.version_id = version.clone();
            entry.sent_version = version.clone();
            entry.remote_edits =
                crate::conflict::fingerprints(&salt, &body) != crate::conflict::fingerprints(&salt, &source);
            decision.version_id = version.clone();
            decision.reason =
                Some(format!("conflict {id}: kept the partner's version for {elements}; decided by {by}"));
            let disclosed = AuditEntry {
                action: AuditAction::Disclosed,
                content_hash: Some(c.source_hash.clone()),
                category: Some(origin.category.as_str().to_string()),
                agreement: Some(permit.agreement.clone()),
                lawful_basis: Some(permit.lawful_basis.clone()),
                consent: permit.consent.clone(),
                reason: Some(format!("conflict {id} resolved by {by}: the partner's version")),
                ..decision.clone()
            };
            (vec![decision, disclosed], version, true)
        }
    };
    store.conflict_resolve(id, keep.as_str(), by, &entry, &audits, now).await?;
    Ok(Resolved {
        id,
        keep,
        destination: dest.name.clone(),
        resource: format!("{}/{}", c.resource_type, c.resource_id),
        version,
        written,
    })
}

#[cfg(test)]
mod tests {
    use super::who_from;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000:Alice:/home/alice:/bin/bash\n\
                          bob:x:1001:1001::/home/bob:/bin/sh\n";

    fn status(uid: u32) -> String {
        format!("Name:\tconnector\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\nGid:\t0\t0\t0\t0\n")
    }

    #[test]
    fn the_deciding_user_is_the_real_uids_account_not_what_the_environment_claims() {
        // alice claims to be bob through SUDO_USER without being root: ignored.
        assert_eq!(who_from(&status(1000), PASSWD, Some(("bob", "1001"))), "alice");
        assert_eq!(who_from(&status(1000), PASSWD, None), "alice");
        // Root through sudo: sudo's word is taken when SUDO_UID names the same account.
        assert_eq!(who_from(&status(0), PASSWD, Some(("alice", "1000"))), "alice (via sudo)");
        assert_eq!(who_from(&status(0), PASSWD, Some(("bob", "1000"))), "root");
        assert_eq!(who_from(&status(0), PASSWD, None), "root");
        // A uid with no account is named by number.
        assert_eq!(who_from(&status(4242), PASSWD, None), "uid 4242");
    }

    #[test]
    fn this_process_is_named_by_its_real_uid() {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
        let uid: u32 = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let who = super::who();
        assert!(
            who.starts_with(&who_from(&status, &passwd, None)) || who.ends_with("(via sudo)"),
            "{who} for uid {uid}"
        );
    }
}
