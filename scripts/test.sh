#!/usr/bin/env bash
# The project's one test command, also on a brand-new machine:
# prepares the test environment (hfs, SearchParameter bundle, PostgreSQL; see
# scripts/setup-test-env.sh), then runs every test target. Extra arguments are
# passed on to `cargo test`. Exit code is cargo test's.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup-test-env.sh

CACHE="${CONNECTOR_TEST_CACHE:-$HOME/.cache/connector-test}"
export HFS_BIN="${HFS_BIN:-$CACHE/hfs/bin/hfs}"
export HFS_DATA_DIR="${HFS_DATA_DIR:-$CACHE/hfs-data}"

# Disk: a debug build of the suite takes about 4 GB (38 test binaries of 45-140 MB), and cargo's incremental
# data 1.7 GB more, which only a later rebuild on the same machine uses. Under CI, or with little space
# free, incremental data is not written (CARGO_INCREMENTAL set by the caller wins); with less than the build
# needs, say so before cargo fails halfway with "No space left on device".
target_dir="${CARGO_TARGET_DIR:-target}"
mkdir -p "$target_dir"
free_gib=$(df -Pk "$target_dir" | awk 'NR == 2 {print int($4 / 1048576)}')
if [ -z "${CARGO_INCREMENTAL:-}" ] && { [ -n "${CI:-}" ] || [ "$free_gib" -lt 15 ]; }; then
    export CARGO_INCREMENTAL=0
    echo "test: incremental compilation off (CI set, or ${free_gib} GiB free where $target_dir is)" >&2
fi
if [ "$free_gib" -lt 6 ]; then
    echo "test: only ${free_gib} GiB free where $target_dir is; building the suite needs about 5 GiB" \
        "(free some, or set CARGO_TARGET_DIR to a roomier disk). Going on." >&2
fi

locked=()
[ -f Cargo.lock ] && locked=(--locked)
exec cargo test --all-targets "${locked[@]}" "$@"
