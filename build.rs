//! Build facts for `connector --version` and the `connector_build_info` metric (read in src/build_info.rs),
//! as `cargo:rustc-env=` variables:
//! - `CONNECTOR_GIT_COMMIT`: the short commit, with `+dirty` when tracked files differ from it; `unknown`
//!   outside a git checkout (a source tarball, even one unpacked inside another repository).
//! - `CONNECTOR_BUILD_DATE`: the UTC date, from `SOURCE_DATE_EPOCH` when set (reproducible builds).
//! - `CONNECTOR_BUILD_TARGET`: the target triple.
//! - `CONNECTOR_SCHEMA_VERSION`: the newest migration's number, the schema the binary migrates to.
//!
//! Also rebuilds when a migration is added: `sqlx::migrate!` embeds the folder, but cargo only watches files it
//! knows. The script runs again only when a migration, `SOURCE_DATE_EPOCH`, `HEAD` or the branch `HEAD` names
//! moves (a commit, a checkout), not on every edit, so `+dirty` is as of the last of those; a release is built
//! from a clean checkout.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=migrations");
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default());
    println!("cargo:rustc-env=CONNECTOR_GIT_COMMIT={}", git_commit(&root).unwrap_or_else(|| "unknown".into()));
    println!("cargo:rustc-env=CONNECTOR_BUILD_DATE={}", build_date());
    println!("cargo:rustc-env=CONNECTOR_BUILD_TARGET={}", std::env::var("TARGET").unwrap_or_default());
    println!("cargo:rustc-env=CONNECTOR_SCHEMA_VERSION={}", schema_version(&root.join("migrations")));
}

/// `git` in `root`, its output trimmed; `None` when git is missing or fails.
fn git(root: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git").arg("-C").arg(root).arg("--no-optional-locks").args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The short commit of the checkout at `root` (and `+dirty`), watching the files a commit or checkout moves.
fn git_commit(root: &Path) -> Option<String> {
    // Only this crate's own checkout counts, not a repository it happens to sit in.
    let top = PathBuf::from(git(root, &["rev-parse", "--show-toplevel"])?);
    if top.canonicalize().ok()? != root.canonicalize().ok()? {
        return None;
    }
    watch_head(root);
    let commit = git(root, &["rev-parse", "--short=10", "HEAD"])?;
    let dirty = git(root, &["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    Some(if dirty { format!("{commit}+dirty") } else { commit })
}

/// Reruns the script when `HEAD` moves: `HEAD` itself (a checkout) and the branch it names (a commit). In a
/// worktree, `HEAD` is in the worktree's git folder and the branches in the shared one.
fn watch_head(root: &Path) {
    let (Some(git_dir), Some(common)) =
        (git(root, &["rev-parse", "--absolute-git-dir"]), git(root, &["rev-parse", "--git-common-dir"]))
    else {
        return;
    };
    let git_dir = PathBuf::from(git_dir);
    let common = root.join(common); // relative to `root` when not absolute; join keeps an absolute one
    let head = git_dir.join("HEAD");
    let mut watched = vec![head.clone()];
    if let Some(branch) = std::fs::read_to_string(&head).ok().and_then(|h| h.strip_prefix("ref: ").map(str::to_owned)) {
        let loose = common.join(branch.trim());
        // A packed branch has no file of its own; cargo reruns every build for a watched file that is missing.
        watched.push(if loose.exists() { loose } else { common.join("packed-refs") });
    }
    for path in watched.into_iter().filter(|p| p.exists()) {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}

/// Today's UTC date, or `SOURCE_DATE_EPOCH`'s, as `YYYY-MM-DD`.
fn build_date() -> String {
    let epoch =
        std::env::var("SOURCE_DATE_EPOCH").ok().and_then(|s| s.trim().parse::<i64>().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0))
        });
    let (y, m, d) = civil_from_days(epoch.div_euclid(86_400));
    format!("{y:04}-{m:02}-{d:02}")
}

/// Year, month and day of a count of days since 1970-01-01 (H. Hinnant's `civil_from_days`), so that the
/// build script needs no date crate.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// The highest `NNNN` of `migrations/*/NNNN_name.sql` (both backends; src/build_info.rs tests that each
/// backend's embedded migrations end there).
fn schema_version(dir: &Path) -> u32 {
    let backends = std::fs::read_dir(dir).into_iter().flatten().flatten().map(|e| e.path());
    let files = backends.filter_map(|b| std::fs::read_dir(b).ok()).flatten().flatten();
    files
        .filter_map(|f| {
            let name = f.file_name().to_string_lossy().into_owned();
            let digits: String = name.strip_suffix(".sql")?.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .max()
        .unwrap_or(0)
}
