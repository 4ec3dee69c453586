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

locked=()
[ -f Cargo.lock ] && locked=(--locked)
exec cargo test --all-targets "${locked[@]}" "$@"
