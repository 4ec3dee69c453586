//! Inbox folders (an SFTP drop): which files are complete and new, oldest first; moving each to `archive/` once
//! its rows are planned, or to `rejected/` with a reason file when it cannot be read at all; purging old
//! archives.
//!
//! A file is complete when its name matches the source's pattern, it is not a `.part`/`.tmp`/`.filepart` upload
//! or a hidden file, its `.done` marker is there (when the source asks for one), and its size and modification
//! time have not changed for the settle time: either its modification time is that old, or this process has
//! seen it unchanged for that long. Files are taken strictly in order: a newer complete file waits behind an
//! older one still being written, so a partner's exports are never applied out of order.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use crate::config::{InboxOrder, InboxSource, name_matches};
use crate::ops::files::Existing;

/// Names an upload in progress is commonly given; such files are never read.
const PARTIAL_SUFFIXES: [&str; 4] = [".part", ".tmp", ".filepart", ".partial"];
/// The marker that says a file is complete, when the source asks for one.
const DONE_SUFFIX: &str = ".done";
/// Where finished files go, inside the inbox.
pub const ARCHIVE: &str = "archive";
pub const REJECTED: &str = "rejected";

/// A complete, new file, ready to be read.
#[derive(Debug, Clone)]
pub struct Ready {
    pub path: PathBuf,
    pub name: String,
    pub size: u64,
    pub mtime: SystemTime,
    pub sha256: String,
    /// The `.done` marker, archived with the file.
    pub marker: Option<PathBuf>,
}

/// A file seen in an inbox but not taken this cycle, and why (for the cycle report).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Waiting {
    pub name: String,
    pub why: String,
}

/// What this process has seen of each candidate file: (size, mtime) and since when, to tell a file still growing
/// from a complete one whose modification time was preserved by the uploader.
static SEEN: Mutex<Option<HashMap<PathBuf, Seen>>> = Mutex::new(None);

/// A file's size and modification time when last looked at, and since when they have been so.
type Seen = (u64, SystemTime, SystemTime);

/// Lists the inbox: complete files in order (up to the first that is not complete), and what waits.
pub fn scan(spec: &InboxSource, dir: &Path, now: SystemTime) -> std::io::Result<(Vec<Candidate>, Vec<Waiting>)> {
    let mut found = Vec::new();
    let mut waiting = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let meta = entry.metadata()?;
        if meta.is_dir() || name.starts_with('.') || name.ends_with(DONE_SUFFIX) {
            continue;
        }
        if let Some(base) = PARTIAL_SUFFIXES.iter().find_map(|s| name.strip_suffix(s))
            && name_matches(&spec.files, base)
        {
            waiting.push(Waiting { name, why: "still uploading (partial name)".into() });
            continue;
        }
        if !name_matches(&spec.files, &name) {
            continue;
        }
        if meta.file_type().is_symlink() || !meta.is_file() {
            waiting.push(Waiting { name, why: "not a regular file (a link or device); it is never read".into() });
            continue;
        }
        let mtime = meta.modified()?;
        found.push(Candidate { path: entry.path(), name, size: meta.len(), mtime });
    }
    match spec.order {
        InboxOrder::Name => found.sort_by(|a, b| a.name.cmp(&b.name)),
        InboxOrder::Mtime => found.sort_by(|a, b| a.mtime.cmp(&b.mtime).then_with(|| a.name.cmp(&b.name))),
    }
    let settle = Duration::from_secs(spec.settle_seconds);
    let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
    let seen = seen.get_or_insert_with(HashMap::new);
    let mut ready = Vec::new();
    let mut blocked = false;
    for c in found {
        let why = if blocked {
            Some("waits for an older file to complete".to_string())
        } else if spec.done_marker && !marker_of(&c.path).exists() {
            Some(format!("no {}{DONE_SUFFIX} marker yet", c.name))
        } else if !settled(seen, &c, now, settle) {
            Some(format!("changed in the last {} s; read once it has settled", spec.settle_seconds))
        } else {
            None
        };
        match why {
            Some(why) => {
                blocked = true;
                waiting.push(Waiting { name: c.name, why });
            }
            None => ready.push(c),
        }
    }
    Ok((ready, waiting))
}

/// A matching file found in the inbox.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub path: PathBuf,
    pub name: String,
    pub size: u64,
    pub mtime: SystemTime,
}

fn settled(seen: &mut HashMap<PathBuf, Seen>, c: &Candidate, now: SystemTime, settle: Duration) -> bool {
    let since = match seen.get(&c.path) {
        Some(&(size, mtime, since)) if size == c.size && mtime == c.mtime => since,
        _ => {
            seen.insert(c.path.clone(), (c.size, c.mtime, now));
            now
        }
    };
    let old_mtime = now.duration_since(c.mtime).is_ok_and(|age| age >= settle);
    let watched = now.duration_since(since).is_ok_and(|age| age >= settle);
    old_mtime || watched
}

fn marker_of(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(DONE_SUFFIX);
    PathBuf::from(p)
}

/// Hashes a candidate and checks it did not change since the scan (a writer that resumed): then it is ready.
pub fn take(c: &Candidate, done_marker: bool) -> std::io::Result<Option<Ready>> {
    let mut file = fs::File::open(&c.path)?;
    let mut hasher = Sha256::new();
    crate::store::sha256_update_from(&mut hasher, &mut file)?;
    let meta = file.metadata()?;
    if meta.len() != c.size || meta.modified()? != c.mtime {
        return Ok(None);
    }
    let sha256 = crate::store::hex(&hasher.finalize());
    Ok(Some(Ready {
        path: c.path.clone(),
        name: c.name.clone(),
        size: c.size,
        mtime: c.mtime,
        sha256,
        marker: done_marker.then(|| marker_of(&c.path)),
    }))
}

/// Creates `inbox/<sub>` owner-only (0700), or tightens it.
fn own_dir(inbox: &Path, sub: &str) -> std::io::Result<PathBuf> {
    let dir = inbox.join(sub);
    fs::create_dir_all(&dir)?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
    Ok(dir)
}

/// A free name in `dir` for `name` (`name`, else `name.1`, `name.2`, ...).
fn free_name(dir: &Path, name: &str) -> PathBuf {
    let first = dir.join(name);
    if !first.exists() {
        return first;
    }
    (1..).map(|n| dir.join(format!("{name}.{n}"))).find(|p| !p.exists()).unwrap_or(first)
}

/// Moves a file the connector has finished with into `archive/` (owner-only, 0600), stamped with the time it
/// was archived (which `purge` counts from). Returns where it went.
pub fn archive(inbox: &Path, ready: &Ready) -> std::io::Result<PathBuf> {
    let dir = own_dir(inbox, ARCHIVE)?;
    let to = free_name(&dir, &ready.name);
    fs::rename(&ready.path, &to)?;
    fs::set_permissions(&to, fs::Permissions::from_mode(0o600))?;
    fs::File::options().append(true).open(&to)?.set_modified(SystemTime::now())?;
    if let Some(m) = &ready.marker
        && m.exists()
    {
        let mto = free_name(&dir, &format!("{}{DONE_SUFFIX}", ready.name));
        fs::rename(m, &mto)?;
    }
    Ok(to)
}

/// Moves a file that could not be read into `rejected/` (owner-only) with `<name>.reason.txt` beside it.
pub fn reject(inbox: &Path, ready: &Ready, reason: &str) -> std::io::Result<PathBuf> {
    let dir = own_dir(inbox, REJECTED)?;
    let to = free_name(&dir, &ready.name);
    fs::rename(&ready.path, &to)?;
    fs::set_permissions(&to, fs::Permissions::from_mode(0o600))?;
    let note = format!(
        "{}\n\nThe connector could not read this file and did not use any of it. Fix the export (or the mapping) \
         and drop a corrected file into the inbox; this one is kept here for you and is not read again.\n",
        reason
    );
    let mut reason_path = to.as_os_str().to_owned();
    reason_path.push(".reason.txt");
    crate::ops::files::write_atomic(Path::new(&reason_path), note.as_bytes(), 0o600, Existing::Replace)?;
    if let Some(m) = &ready.marker
        && m.exists()
    {
        fs::remove_file(m)?;
    }
    Ok(to)
}

/// Deletes archived files archived more than `keep_days` ago; returns how many.
pub fn purge(inbox: &Path, keep_days: u32, now: SystemTime) -> std::io::Result<usize> {
    let dir = inbox.join(ARCHIVE);
    let Ok(entries) = fs::read_dir(&dir) else { return Ok(0) };
    let keep = Duration::from_secs(u64::from(keep_days) * 86_400);
    let mut purged = 0;
    for entry in entries {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_file() && now.duration_since(meta.modified()?).is_ok_and(|age| age > keep) {
            fs::remove_file(entry.path())?;
            purged += 1;
        }
    }
    Ok(purged)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(settle: u64) -> InboxSource {
        InboxSource {
            dir: PathBuf::new(),
            files: "c-*.csv".into(),
            order: InboxOrder::Name,
            settle_seconds: settle,
            done_marker: false,
            keep_days: 1,
        }
    }

    #[test]
    fn complete_files_come_in_order_and_a_growing_one_holds_back_the_rest() {
        let dir = tempdir();
        fs::write(dir.join("c-2.csv"), "b").unwrap();
        fs::write(dir.join("c-1.csv"), "a").unwrap();
        fs::write(dir.join("c-3.csv.part"), "c").unwrap();
        fs::write(dir.join("other.csv"), "x").unwrap();
        let later = SystemTime::now() + Duration::from_secs(120);
        let (ready, waiting) = scan(&spec(60), &dir, later).unwrap();
        assert_eq!(ready.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["c-1.csv", "c-2.csv"]);
        assert_eq!(waiting.len(), 1, "{waiting:?}");
        // Just written: not settled, and the newer file waits behind it.
        let (ready, waiting) = scan(&spec(60), &dir, SystemTime::now()).unwrap();
        assert!(ready.is_empty());
        assert!(waiting.iter().any(|w| w.name == "c-2.csv" && w.why.contains("older")), "{waiting:?}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn archived_and_rejected_files_are_owner_only_and_old_archives_go() {
        let dir = tempdir();
        fs::write(dir.join("c-1.csv"), "a").unwrap();
        let later = SystemTime::now() + Duration::from_secs(120);
        let (ready, _) = scan(&spec(60), &dir, later).unwrap();
        let r = take(&ready[0], false).unwrap().unwrap();
        let to = archive(&dir, &r).unwrap();
        assert_eq!(fs::metadata(&to).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::metadata(dir.join(ARCHIVE)).unwrap().permissions().mode() & 0o777, 0o700);
        assert_eq!(purge(&dir, 1, SystemTime::now()).unwrap(), 0);
        assert_eq!(purge(&dir, 1, SystemTime::now() + Duration::from_secs(2 * 86_400)).unwrap(), 1);
        fs::write(dir.join("c-2.csv"), "b").unwrap();
        let (ready, _) = scan(&spec(0), &dir, SystemTime::now()).unwrap();
        let r = take(&ready[0], false).unwrap().unwrap();
        let to = reject(&dir, &r, "c-2.csv: not UTF-8").unwrap();
        let reason = fs::read_to_string(format!("{}.reason.txt", to.display())).unwrap();
        assert!(reason.contains("not UTF-8"));
        fs::remove_dir_all(&dir).unwrap();
    }

    fn tempdir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "inbox-test-{}-{}",
            std::process::id(),
            SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_nanos()
        ));
        fs::create_dir_all(&d).unwrap();
        d
    }
}
