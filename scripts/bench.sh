#!/usr/bin/env bash
# Benchmarks, run by hand (never part of the test suite). Figures go in the issue notes and the CHANGELOG.
#
#   scripts/bench.sh mapping [ROWS]   map a generated Hub export of ROWS people (default 100000) plus about two
#                                     contacts each, with the release binary: wall time, rows/s, peak memory.
#
# Needs python3 (the generator is in scripts/gen-fixtures/) and GNU time (/usr/bin/time, Debian package `time`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

what="${1:-mapping}"
rows="${2:-100000}"
work="${BENCH_DIR:-${TMPDIR:-/tmp}/connector-bench}"

if [ ! -x /usr/bin/time ]; then
    apt-get install -y -qq time >/dev/null 2>&1 || { echo "bench: install GNU time (apt-get install time)" >&2; exit 1; }
fi

machine() {
    echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
}

case "$what" in
mapping)
    echo "Building the release binary..." >&2
    cargo build --release --quiet --bin connector
    data="$work/export-$rows"
    if [ ! -s "$data/person.csv" ]; then
        mkdir -p "$data"
        echo "Generating a Hub export of $rows people in $data..." >&2
        python3 scripts/gen-fixtures/bench_export.py --rows "$rows" --out "$data"
    fi
    person_rows=$(($(python3 -c "import sys; print(sum(1 for _ in open(sys.argv[1], 'rb')))" "$data/person.csv") - 1))
    contact_rows=$(($(python3 -c "import sys; print(sum(1 for _ in open(sys.argv[1], 'rb')))" "$data/contact.csv") - 1))
    machine
    echo "input: $person_rows person rows ($(du -h "$data/person.csv" | cut -f1)), about $contact_rows contact lines ($(du -h "$data/contact.csv" | cut -f1))"
    stats="$work/time-$rows.txt"
    /usr/bin/time -v -o "$stats" target/release/connector --mappings mappings mappings preview --partner hub \
        --input "$data/person.csv" --input "$data/contact.csv" --quarantine-dir "$work/quarantine" \
        >"$work/out.ndjson" 2>"$work/stderr.txt" || true
    grep -E "^Total:" "$work/stderr.txt" || { tail -5 "$work/stderr.txt"; exit 1; }
    wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$stats")
    rss_kb=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$stats")
    secs=$(python3 -c "p='$wall'.split(':'); print(sum(float(x)*60**i for i,x in enumerate(reversed(p))))")
    read_total=$(grep -oE '^Total: [0-9]+' "$work/stderr.txt" | grep -oE '[0-9]+')
    echo "wall: ${secs}s; rows read: $read_total; throughput: $(python3 -c "print(round($read_total/$secs))") rows/s; peak RSS: $((rss_kb / 1024)) MiB"
    echo "output: $(wc -l <"$work/out.ndjson") resources, $(du -h "$work/out.ndjson" | cut -f1)"
    ;;
*)
    echo "usage: scripts/bench.sh mapping [ROWS]" >&2
    exit 2
    ;;
esac
