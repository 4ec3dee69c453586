//! Writing files that hold personal data into folders others may write to (a partner's SFTP drop, an admin's
//! home): never through a name someone else chose or planted. A file is written under a fresh random name
//! created exclusively (`O_CREAT|O_EXCL`, which also refuses a symlink in its place) with its final mode,
//! synced, then moved to its name in the same folder.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

/// What to do when the target name is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Replace it (the name, never the file a symlink there points to).
    Replace,
    /// Fail with `AlreadyExists`, leaving it as it was.
    Refuse,
}

/// Writes `bytes` to `path` whole, with `mode`, via a random temporary name in the same folder (starting
/// with `.`, ending `.part`, so pick-up jobs skip it). A reader sees the old file or the new one, never a
/// part; a symlink or file planted at any name the connector uses is never written through.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32, existing: Existing) -> std::io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let (tmp, mut file) = create_temp(dir, &name, mode)?;
    let written = file.write_all(bytes).and_then(|()| file.sync_all());
    drop(file);
    let placed = written.and_then(|()| match existing {
        Existing::Replace => std::fs::rename(&tmp, path),
        // A hard link fails when the name exists (even as a dangling symlink): an atomic "create, never replace".
        Existing::Refuse => std::fs::hard_link(&tmp, path).and_then(|()| std::fs::remove_file(&tmp)),
    });
    if placed.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    placed
}

/// Creates `.<name>.<random>.part` in `dir` exclusively with `mode` (the umask may only narrow it).
fn create_temp(dir: &Path, name: &str, mode: u32) -> std::io::Result<(PathBuf, std::fs::File)> {
    let mut last = None;
    for _ in 0..8 {
        let tmp = dir.join(format!(".{name}.{}.part", random_hex()));
        match std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp) {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no free temporary name")))
}

/// 128 random bits as hex, from the kernel (`/dev/urandom`), else from std's randomly keyed hasher.
fn random_hex() -> String {
    use std::io::Read as _;
    let mut bytes = [0u8; 16];
    let from_kernel = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).is_ok();
    if !from_kernel {
        use std::hash::{BuildHasher as _, Hasher as _};
        for chunk in bytes.chunks_mut(8) {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos(),
            );
            h.write_u32(std::process::id());
            chunk.copy_from_slice(&h.finish().to_le_bytes());
        }
    }
    crate::store::hex(&bytes)
}

#[cfg(test)]
mod tests {
    use super::{Existing, write_atomic};
    use std::os::unix::fs::PermissionsExt as _;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("connector-files-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn planted_symlinks_and_files_are_never_written_through() {
        let dir = scratch("planted");
        let victim = dir.join("victim.txt");
        std::fs::write(&victim, "keep me").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).unwrap();
        // The old predictable temporary name, and the target name, both planted as symlinks to the victim.
        std::os::unix::fs::symlink(&victim, dir.join(".feed.csv.part")).unwrap();
        std::os::unix::fs::symlink(&victim, dir.join("feed.csv")).unwrap();

        write_atomic(&dir.join("feed.csv"), b"rows", 0o640, Existing::Replace).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me");
        let placed = dir.join("feed.csv");
        assert!(!std::fs::symlink_metadata(&placed).unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read_to_string(&placed).unwrap(), "rows");
        assert_eq!(std::fs::metadata(&placed).unwrap().permissions().mode() & 0o777, 0o640);

        // Refuse: an existing name (a symlink too) stays as it was, and no temporary file is left behind.
        std::os::unix::fs::symlink(&victim, dir.join("report.html")).unwrap();
        let e = write_atomic(&dir.join("report.html"), b"page", 0o600, Existing::Refuse).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me");
        write_atomic(&dir.join("new.html"), b"page", 0o600, Existing::Refuse).unwrap();
        assert_eq!(std::fs::metadata(dir.join("new.html")).unwrap().permissions().mode() & 0o777, 0o600);
        let left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".part") && n != ".feed.csv.part")
            .collect();
        assert!(left.is_empty(), "{left:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
