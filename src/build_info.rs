//! What this binary is: its version, the commit and date it was built from, its target and the state store
//! schema it migrates to. `build.rs` works them out; `connector --version` prints them and change control
//! records them. The `connector_build_info` metric reads `CONNECTOR_GIT_COMMIT` itself (with `option_env!`).

/// The crate's version (Cargo.toml).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The short git commit, `+dirty` when built from changed files, `unknown` outside a git checkout.
pub const GIT_COMMIT: &str = env!("CONNECTOR_GIT_COMMIT");

/// The UTC date of the build (`SOURCE_DATE_EPOCH`'s when set), `YYYY-MM-DD`.
pub const BUILD_DATE: &str = env!("CONNECTOR_BUILD_DATE");

/// The target triple the binary was built for.
pub const TARGET: &str = env!("CONNECTOR_BUILD_TARGET");

/// The newest state store migration: a database migrated past it is from a newer connector (refused).
pub const SCHEMA_VERSION: &str = env!("CONNECTOR_SCHEMA_VERSION");

/// `connector -V`: one line.
pub const SHORT_VERSION: &str =
    concat!(env!("CARGO_PKG_VERSION"), " (", env!("CONNECTOR_GIT_COMMIT"), " ", env!("CONNECTOR_BUILD_DATE"), ")");

/// `connector --version`: everything change control records about a build.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    "\ncommit:         ",
    env!("CONNECTOR_GIT_COMMIT"),
    "\nbuild date:     ",
    env!("CONNECTOR_BUILD_DATE"),
    "\ntarget:         ",
    env!("CONNECTOR_BUILD_TARGET"),
    "\nschema version: ",
    env!("CONNECTOR_SCHEMA_VERSION"),
    " (state store migrations)"
);

#[cfg(test)]
mod tests {
    use super::*;

    /// The number of the last migration file (in name order) of one backend.
    fn newest_migration(backend: &str) -> String {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations").join(backend);
        let mut names: Vec<String> =
            std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        let last = names.last().unwrap_or_else(|| panic!("no migrations in {}", dir.display()));
        last.split('_').next().unwrap().trim_start_matches('0').to_string()
    }

    #[test]
    fn the_schema_version_is_each_backends_newest_migration() {
        for backend in ["sqlite", "postgres"] {
            assert_eq!(SCHEMA_VERSION, newest_migration(backend), "migrations/{backend}");
        }
    }

    #[test]
    fn the_build_facts_are_filled_in() {
        assert!(GIT_COMMIT == "unknown" || GIT_COMMIT.len() >= 7, "{GIT_COMMIT}");
        let date: Vec<&str> = BUILD_DATE.split('-').collect();
        assert!(date.len() == 3 && date[0].len() == 4 && date[1].len() == 2 && date[2].len() == 2, "{BUILD_DATE}");
        assert!(TARGET.contains('-'), "{TARGET}");
        assert!(LONG_VERSION.starts_with(VERSION) && LONG_VERSION.contains(GIT_COMMIT), "{LONG_VERSION}");
    }
}
