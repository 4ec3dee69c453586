#!/usr/bin/env bash
# Build figures for one or more commits, side by side, each in a throwaway worktree with its own target
# folder (nothing shared, so every clean build is really clean):
#   - clean release build (`cargo build --release --locked`), wall time;
#   - the release binary's size;
#   - release rebuild after a one-line edit of the planner (src/plan/chunk.rs, or src/sync/mod.rs before
#     the planner had its own folder): what a packager or CI pays for a change to the connector's code;
#   - with DEV=1, a dev build and then a dev rebuild after the same edit (what a developer waits for; the
#     first dev build is cold, dependencies included, so this adds a quarter of an hour per commit).
#
#   scripts/build-times.sh [REV ...]          default: HEAD
#   BUILD_TIMES_DIR=/tmp/bt scripts/build-times.sh 2d58334 HEAD
#   DEV=1 scripts/build-times.sh HEAD
#
# Run it on an otherwise idle machine: every figure is a wall time. Results are printed as a table and
# appended to $BUILD_TIMES_DIR/results.tsv. The worktrees and target folders are removed afterwards.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=${BUILD_TIMES_DIR:-/tmp/connector-build-times}
mkdir -p "$out"
results="$out/results.tsv"
[ -f "$results" ] || printf 'rev\tclean_release_s\tbinary_bytes\trelease_rebuild_s\tdev_first_s\tdev_rebuild_s\n' >"$results"

seconds() { # runs "$@" quietly, prints its wall time in seconds
    local t0 t1
    t0=$(date +%s.%N)
    "$@" >/dev/null 2>&1
    t1=$(date +%s.%N)
    echo "$t1 - $t0" | bc
}

revs=("$@")
[ ${#revs[@]} -gt 0 ] || revs=(HEAD)
for rev in "${revs[@]}"; do
    sha=$(git rev-parse --short "$rev")
    wt="$out/wt-$sha"
    export CARGO_TARGET_DIR="$out/target-$sha"
    rm -rf "$wt" "$CARGO_TARGET_DIR"
    git worktree add -q --detach "$wt" "$rev"
    (
        cd "$wt"
        planner=src/plan/chunk.rs
        [ -f "$planner" ] || planner=src/sync/mod.rs
        echo "== $sha: clean release build" >&2
        clean=$(seconds cargo build --release --locked)
        size=$(stat -c %s "$CARGO_TARGET_DIR/release/connector")
        echo "== $sha: release rebuild after editing $planner" >&2
        echo "// build-times: an edit" >>"$planner"
        rebuild=$(seconds cargo build --release --locked)
        git checkout -q -- "$planner"
        dev_first=- dev_rebuild=-
        if [ "${DEV:-0}" = 1 ]; then
            echo "== $sha: dev build, then a rebuild after the same edit" >&2
            dev_first=$(seconds cargo build --locked)
            echo "// build-times: an edit" >>"$planner"
            dev_rebuild=$(seconds cargo build --locked)
            git checkout -q -- "$planner"
        fi
        printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$sha" "$clean" "$size" "$rebuild" "$dev_first" "$dev_rebuild" >>"$results"
    )
    git worktree remove --force "$wt"
    rm -rf "$CARGO_TARGET_DIR"
done
column -t -s $'\t' "$results"
