//! How many malloc arenas glibc keeps, set from the connector's `main`. The connector forbids unsafe code; this
//! crate holds the one foreign call that needs, and nothing else.
//!
//! glibc gives each thread that allocates an arena of its own, up to eight per core, and memory freed into an
//! arena mostly stays with the process. The connector's threads (the async runtime's workers, one per SQLite
//! connection) each held on to tens of megabytes freed after bundles had gone: a first load of about 100,000
//! resources peaked at 125 MiB resident with about 50 MiB of live heap, 95 MiB with two arenas. Two arenas
//! cost nothing measurable in throughput here (the connector waits on the destination and on SQLite, not on
//! malloc's locks).
#![deny(unsafe_code)]

/// The arenas glibc keeps unless told otherwise by the environment.
pub const DEFAULT_ARENAS: i32 = 2;

/// Caps glibc's malloc arenas at `arenas` (as `MALLOC_ARENA_MAX` does), unless the environment already sets
/// the cap (`MALLOC_ARENA_MAX`, or `glibc.malloc.arena_max` in `GLIBC_TUNABLES`): an operator's setting wins.
/// Call it first thing in `main`, before any thread starts: a thread keeps the arena it was given. Returns
/// whether the cap was set here (never on other C libraries: musl has one allocator lock anyway).
pub fn cap_unless_set(arenas: i32) -> bool {
    let set_outside = std::env::var_os("MALLOC_ARENA_MAX").is_some()
        || std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("glibc.malloc.arena_max"));
    !set_outside && arenas > 0 && cap(arenas)
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn cap(arenas: i32) -> bool {
    // SAFETY: `mallopt` takes two integers and changes one setting of the allocator under the allocator's own
    // lock; it reads and writes no memory of the caller's. It returns 1 on success.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, arenas) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn cap(_: i32) -> bool {
    false
}
