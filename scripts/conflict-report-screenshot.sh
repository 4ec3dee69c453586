#!/usr/bin/env bash
# Screenshot of the HTML conflict report (src/conflict/report.rs) with headless Chromium, to check by eye that
# it is legible (the partner's reference, values in words, the resolve commands), and a check that the page
# parsed (its DOM holds a conflict, a table, the Content-Security-Policy and the resolve commands).
#
#   scripts/conflict-report-screenshot.sh [REPORT_HTML] [OUT_PNG]
#
# REPORT_HTML defaults to ${TMPDIR:-/tmp}/connector-conflicts/report.html; when it does not exist the
# conflicts_flow test writes it (CONFLICT_REPORT_HTML). OUT_PNG defaults to report.png beside it.
# Chromium: $CHROMIUM, or chromium / chromium-browser / google-chrome on PATH; else Debian's `chromium` package
# is installed (needs root). The report holds synthetic data here, but a real one holds personal data: delete
# both files after use.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

report="${1:-${TMPDIR:-/tmp}/connector-conflicts/report.html}"
out="${2:-$(dirname "$report")/report.png}"

if [ ! -f "$report" ]; then
    echo "conflict-report-screenshot: $report is missing; writing it with the conflicts_flow test..." >&2
    mkdir -p "$(dirname "$report")"
    CONFLICT_REPORT_HTML="$report" cargo test --test conflicts_flow -- --nocapture >&2
    if [ ! -f "$report" ]; then
        echo "conflict-report-screenshot: the conflicts_flow test did not write $report" >&2
        exit 1
    fi
fi
report_abs="$(cd "$(dirname "$report")" && pwd)/$(basename "$report")"
mkdir -p "$(dirname "$out")"

find_browser() {
    if [ -n "${CHROMIUM:-}" ]; then
        command -v "$CHROMIUM" && return 0
        echo "conflict-report-screenshot: CHROMIUM=$CHROMIUM is not an executable" >&2
        return 1
    fi
    local b
    for b in chromium chromium-browser google-chrome; do
        command -v "$b" && return 0
    done
    return 1
}

if ! browser="$(find_browser)"; then
    [ -n "${CHROMIUM:-}" ] && exit 1
    echo "conflict-report-screenshot: installing Debian's chromium package..." >&2
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -qq chromium >/dev/null 2>&1; then
        apt-get update -qq >/dev/null
        apt-get install -y -qq chromium >/dev/null
    fi
    browser="$(find_browser)" || { echo "conflict-report-screenshot: no Chromium after installing it" >&2; exit 1; }
fi

# A throwaway profile, so nothing of a user's browser is read or written.
profile="$(mktemp -d)"
trap 'rm -rf "$profile"' EXIT
# shellcheck disable=SC2054 # the comma is part of --window-size
common=(--no-sandbox --disable-gpu --hide-scrollbars --no-first-run --no-default-browser-check
    --user-data-dir="$profile" --window-size=1400,1800)

run_browser() { # MODE_FLAG... : tries the new headless mode, then the old one (older Chromium builds)
    "$browser" --headless=new "${common[@]}" "$@" 2>/dev/null || "$browser" --headless "${common[@]}" "$@" 2>/dev/null
}

rm -f "$out"
run_browser --screenshot="$out" "file://$report_abs" >/dev/null || true
if [ ! -s "$out" ]; then
    echo "conflict-report-screenshot: $browser wrote no screenshot to $out" >&2
    exit 1
fi

dom="$(run_browser --dump-dom "file://$report_abs" || true)"
if ! grep -q "Conflict " <<<"$dom" || ! grep -q "<table" <<<"$dom"; then
    echo "conflict-report-screenshot: the page's DOM has no \"Conflict \" heading or no table (is the report empty?)" >&2
    exit 1
fi
if ! grep -q 'http-equiv="Content-Security-Policy"' <<<"$dom" || ! grep -q "conflicts resolve .* --keep source" <<<"$dom"; then
    echo "conflict-report-screenshot: the page has no Content-Security-Policy or no resolve commands" >&2
    exit 1
fi

echo "$out ($(stat -c %s "$out") bytes)"
