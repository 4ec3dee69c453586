//! Not planning again what cannot have changed. A partner's plan is a function of its export files, the
//! configuration and mappings the process loaded, the connector's build, today's date (consent and
//! agreements take effect by date) and what the state store holds (ledger, outbox, consent, the person
//! index, withholdings, snapshots, rows taken out of quarantine). When a plan changed nothing and found nothing
//! for an admin, the partner gets a receipt: the fingerprint of all of those, the store's part being
//! `plan_generation`, which triggers move in the same transaction as any write to those tables, from any code
//! path or instance. A later plan with the same fingerprint would decide exactly as that one did, so it is not
//! made: its report says the partner is unchanged since the receipt, with the withholdings counted then.
//!
//! Safe by construction, and loud where it is not taken: only a partner whose every source is a fixed file
//! gets a receipt (an inbox file or an API read is new input by nature); the files are fingerprinted by size,
//! modification time and content, before and after the plan, and the receipt is kept only if they and the
//! generation stayed the same throughout; a plan that queued, retracted, held or reported anything for an admin
//! to act on gets none (quarantined rows stay quarantined and are reported again); and a receipt stands for at most [`FULL_PLAN_EVERY`], so everything is planned in
//! full at least that often whatever else this fingerprint might have missed. A skip sends and deletes
//! nothing: the worst a wrong one could do is leave a change to the next full plan.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::Utc;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::{debug, info};

use crate::config::Location;
use crate::context::Context;
use crate::mapping::Input;
use crate::plan::IngestReport;
use crate::store::{PlanReceipt, Store};

/// The longest a receipt stands: a partner is planned in full at least this often.
pub const FULL_PLAN_EVERY: chrono::Duration = chrono::Duration::hours(1);

/// Raise when what a plan depends on changes in a way the build would not show.
const RECEIPT: u32 = 1;

/// What a receipt's plan reported that a skipped plan reports again.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Summary {
    queued: BTreeMap<String, u64>,
    withheld: BTreeMap<String, u64>,
    /// Rows read, mapped and quarantined per file (quarantined rows stay quarantined: the same file maps the
    /// same way).
    files: Vec<crate::mapping::FileCounts>,
}

/// A partner's plan about to be made, fingerprinted.
pub(super) struct Check {
    partner: String,
    inputs: Vec<Input>,
    generation: i64,
    /// The files' part of the fingerprint, compared again after the plan.
    files: String,
    fingerprint: String,
}

impl Check {
    /// Fingerprints the partner's plan when it can have a receipt: every source a fixed file, gathered in one
    /// round with nothing failed, and the mappings the process loaded known. `None` otherwise, or when a file
    /// cannot be read for its fingerprint (the plan then meets it and says so).
    pub(super) async fn prepare(
        ctx: &Context,
        partner: &str,
        gathered: &crate::source::Gathered,
        accept_shrink: bool,
    ) -> anyhow::Result<Option<Check>> {
        let Some(mappings) = ctx.mappings_hash.as_deref() else { return Ok(None) };
        let pc = ctx.partner_config(partner)?;
        if !pc.sources.iter().all(|s| matches!(s.location, Location::File(_))) {
            return Ok(None);
        }
        let Some(inputs) = gathered.fixed_inputs() else { return Ok(None) };
        let inputs = inputs.to_vec();
        let generation = ctx.store.plan_generation().await?;
        let context = format!(
            "plan receipt {RECEIPT} {} {} {}\0{partner}\0{:?}\0{mappings}\0{}\0{accept_shrink}\0{generation}\0",
            crate::build_info::VERSION,
            crate::build_info::GIT_COMMIT,
            crate::build_info::BUILD_DATE,
            ctx.config,
            crate::store::consent_today(),
        );
        let Some(files) = files_hash(inputs.clone()).await else { return Ok(None) };
        let fingerprint = format!("{}.{files}", crate::store::hex(&Sha256::digest(context.as_bytes())));
        Ok(Some(Check { partner: partner.to_string(), inputs, generation, files, fingerprint }))
    }

    /// The report of a plan not made again, when the partner's receipt is this fingerprint's and still stands.
    pub(super) async fn unchanged(&self, store: &Store) -> anyhow::Result<Option<IngestReport>> {
        let Some(receipt) = store.plan_receipt(&self.partner).await? else { return Ok(None) };
        // The fingerprint holds the generation read when it was made: anything written since counts too.
        if store.plan_generation().await? != self.generation {
            return Ok(None);
        }
        let now = Utc::now();
        if receipt.fingerprint != self.fingerprint || receipt.at > now || now - receipt.at >= FULL_PLAN_EVERY {
            return Ok(None);
        }
        let Ok(summary) = serde_json::from_str::<Summary>(&receipt.summary) else { return Ok(None) };
        info!(partner = %self.partner, since = %receipt.at.to_rfc3339(), "Exports, mappings, configuration and state unchanged since the last full plan: not planned again.");
        Ok(Some(IngestReport {
            partner: self.partner.clone(),
            queued: summary.queued,
            withheld: summary.withheld,
            mapping: crate::mapping::RunReport {
                partner: self.partner.clone(),
                files: summary.files,
                ..Default::default()
            },
            unchanged_since: Some(receipt.at),
            ..Default::default()
        }))
    }

    /// After a full plan: keeps a receipt when it changed nothing, found nothing for an admin, and its files and
    /// the store's generation stayed as fingerprinted throughout; otherwise forgets the partner's receipt.
    pub(super) async fn record(&self, store: &Store, report: &IngestReport) -> anyhow::Result<()> {
        let quiet = quiet(report);
        let same = quiet
            && store.plan_generation().await? == self.generation
            && files_hash(self.inputs.clone()).await.as_deref() == Some(self.files.as_str());
        if !same {
            debug!(partner = %self.partner, quiet, "No plan receipt: the plan changed or found something, or its inputs moved while it ran.");
            store.plan_receipt_clear(&self.partner).await?;
            return Ok(());
        }
        let summary = Summary {
            queued: report.queued.clone(),
            withheld: report.withheld.clone(),
            files: report.mapping.files.clone(),
        };
        let receipt = PlanReceipt {
            fingerprint: self.fingerprint.clone(),
            at: Utc::now(),
            summary: serde_json::to_string(&summary)?,
        };
        store.plan_receipt_put(&self.partner, &receipt).await?;
        Ok(())
    }
}

/// Whether reading consent found nothing to report: no statement newly read, no withdrawal, no hold, no
/// unreadable export. Also asked of the read a cycle makes before planning, which a skip would otherwise drop.
pub(super) fn consent_quiet(r: &IngestReport) -> bool {
    r.consent_statements == 0 && r.withdrawals.is_empty() && r.consent_held.is_empty() && r.consent_unreadable.is_none()
}

/// Whether a plan changed nothing and reported nothing an admin must act on this cycle. Quarantined rows do not
/// count: they stay in quarantine (a same row is kept once), the report says how many, and removing one from
/// quarantine changes the generation, so the next plan quarantines it again if it is still in the file.
fn quiet(r: &IngestReport) -> bool {
    let m = &r.mapping;
    !r.dry_run
        && r.unchanged_since.is_none()
        && r.queued.values().all(|n| *n == 0)
        && r.no_longer_allowed.values().all(|n| *n == 0)
        && consent_quiet(r)
        && m.failed_files().next().is_none()
        && r.sources.iter().all(|s| {
            !s.failed() && s.gone.is_empty() && s.retracting == 0 && s.refused.is_none() && s.waiting.is_empty()
        })
}

/// sha256 over each input's kind and path, in order, and each file's size, modification time and content (once
/// per file: a source of several kinds, `person+consent`, is one file read once).
async fn files_hash(inputs: Vec<Input>) -> Option<String> {
    tokio::task::spawn_blocking(move || {
        let mut h = Sha256::new();
        let mut read = std::collections::HashSet::new();
        for input in &inputs {
            h.update(format!("{}\0{}\0", input.kind, input.path.display()).as_bytes());
            if read.insert(&input.path) {
                file_into(&mut h, &input.path).ok()?;
            }
        }
        Some(crate::store::hex(&h.finalize()))
    })
    .await
    .ok()
    .flatten()
}

fn file_into(h: &mut Sha256, path: &Path) -> std::io::Result<()> {
    let mut f = std::fs::File::open(path)?;
    let meta = f.metadata()?;
    let mtime = meta.modified()?.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    h.update(format!("{}\0{mtime}\0", meta.len()).as_bytes());
    crate::store::sha256_update_from(h, &mut f)
}

/// sha256 over every file under `dir` (relative path and content, in path order): the mappings as loaded.
/// Folders are walked without following links (a link to a folder cannot be read as a file: `None`, and no
/// receipts).
pub fn tree_hash(dir: &Path) -> Option<String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            let p = e.path();
            if e.file_type()?.is_dir() {
                walk(&p, out)?;
            } else {
                out.push(p);
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    walk(dir, &mut files).ok()?;
    files.sort();
    let mut h = Sha256::new();
    for f in &files {
        h.update(format!("{}\0", f.strip_prefix(dir).unwrap_or(f).display()).as_bytes());
        let mut file = std::fs::File::open(f).ok()?;
        h.update(format!("{}\0", file.metadata().ok()?.len()).as_bytes());
        crate::store::sha256_update_from(&mut h, &mut file).ok()?;
    }
    Some(crate::store::hex(&h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mappings_hash_follows_every_file_and_no_link_to_a_folder() {
        let dir = std::env::temp_dir().join(format!("connector-tree-hash-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("hub")).unwrap();
        std::fs::write(dir.join("hub/person.toml"), "a").unwrap();
        let first = tree_hash(&dir).expect("a hash");
        assert_eq!(tree_hash(&dir).as_ref(), Some(&first), "the same files, the same hash");
        std::fs::write(dir.join("hub/person.toml"), "b").unwrap();
        assert_ne!(tree_hash(&dir).as_ref(), Some(&first), "a changed file");
        std::fs::write(dir.join("hub/person.toml"), "a").unwrap();
        std::fs::write(dir.join("hub/extra.toml"), "").unwrap();
        assert_ne!(tree_hash(&dir).as_ref(), Some(&first), "a new file, even empty");
        // A link back to the folder itself is not walked (no endless walk); it cannot be read as a file.
        std::os::unix::fs::symlink(&dir, dir.join("hub/loop")).unwrap();
        assert_eq!(tree_hash(&dir), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
