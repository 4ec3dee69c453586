#!/usr/bin/env bash
# Runs each fuzz target (fuzz/fuzz_targets: CSV, JSON and XLSX readers, the mapping engine) for a given time
# with cargo-fuzz (libFuzzer, AddressSanitizer) and prints the executions each ran and whether it crashed.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]        default 600 (ten minutes each)
#   TARGETS="csv_reader json_reader" scripts/fuzz.sh 60
#
# Needs a nightly toolchain (rustup's `nightly`; FUZZ_TOOLCHAIN to name another). cargo-fuzz is installed
# once into the cache folder outside the repo. Seed inputs are the fixtures; corpora and logs go to out/fuzz/.
# A crash leaves its input in fuzz/artifacts/<target>/ and makes the script exit 1.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

seconds=${1:-600}
toolchain=${FUZZ_TOOLCHAIN:-nightly}
targets=${TARGETS:-"csv_reader json_reader xlsx_reader mapping_engine"}
cache="${CONNECTOR_TEST_CACHE:-$HOME/.cache/connector-test}"
# The readers keep to fixed limits (src/ingest/limits.rs): no input may make the process use more than
# rss_limit_mb, nor ask for more than malloc_limit_mb in one allocation (a dense row for a far-away cell, a
# string the size of an unpacked part). Either is reported as a crash, with its input kept.
rss_limit_mb=${FUZZ_RSS_LIMIT_MB:-1024}
malloc_limit_mb=${FUZZ_MALLOC_LIMIT_MB:-64}

if ! rustup run "$toolchain" rustc --version >/dev/null 2>&1; then
    echo "fuzz: no '$toolchain' toolchain; install one with: rustup toolchain install nightly" >&2
    exit 1
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    if [ ! -x "$cache/cargo-fuzz/bin/cargo-fuzz" ]; then
        echo "fuzz: installing cargo-fuzz into $cache/cargo-fuzz (once)" >&2
        cargo install cargo-fuzz --locked --root "$cache/cargo-fuzz"
    fi
    export PATH="$cache/cargo-fuzz/bin:$PATH"
fi

mkdir -p out/fuzz
# LeakSanitizer suppressions (fuzz/lsan.supp): glibc's own registration of thread-local destructors.
export LSAN_OPTIONS="suppressions=$PWD/fuzz/lsan.supp${LSAN_OPTIONS:+:$LSAN_OPTIONS}"
seed() {
    local target=$1 dir=out/fuzz/corpus/$1
    mkdir -p "$dir"
    case $target in
        csv_reader) cp tests/fixtures/hub/*.csv "$dir"/ ;;
        json_reader) cp tests/fixtures/york-mind/*.json tests/fixtures/york-mind/*.ndjson "$dir"/ ;;
        xlsx_reader) cp tests/fixtures/carers-centre/*.xlsx "$dir"/ ;;
        mapping_engine)
            local i=0
            for f in person contact consent reqol; do
                { printf "\\x$(printf %02x $i)"; cat "tests/fixtures/hub/$f.csv"; } >"$dir/$f"
                i=$((i + 1))
            done
            ;;
    esac
}

status=0
summary=()
for t in $targets; do
    seed "$t"
    echo "== $t for ${seconds}s" >&2
    log=out/fuzz/$t.log
    if cargo "+$toolchain" fuzz run --fuzz-dir fuzz "$t" "out/fuzz/corpus/$t" -- \
        -max_total_time="$seconds" -rss_limit_mb="$rss_limit_mb" -malloc_limit_mb="$malloc_limit_mb" \
        -print_final_stats=1 >"$log" 2>&1; then
        result=ok
    else
        result=CRASH
        status=1
    fi
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    summary+=("$t: $result, ${runs:-?} executions in ${seconds}s (log $log)")
    [ "$result" = ok ] || tail -30 "$log" >&2
done
printf '%s\n' "${summary[@]}"
exit $status
