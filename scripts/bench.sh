#!/usr/bin/env bash
# Benchmarks, run by hand (never part of the test suite). Figures go in the issue notes and the CHANGELOG.
#
#   scripts/bench.sh mapping [ROWS]   a generated Hub export of ROWS people (default 100000) plus about two
#                                     contacts each, with the release binaries: (1) the simple Patient mapping
#                                     (scripts/bench/simple-patient) beside its hand-written baseline
#                                     (crates/bench-baseline), same input, as a ratio, with their outputs compared;
#                                     (2) the full Hub mappings: wall time, rows/s, peak memory.
#   scripts/bench.sh sync [PATIENTS]  initial load of a generated Hub export of PATIENTS people (default 10000)
#                                     and their contacts into a fresh local Helios FHIR Server with
#                                     `connector sync --once` (wall time, peak memory), then two no-change cycles
#                                     (the first plans in full after the load; the second is the plan receipts')
#                                     beside the time of mapping the same exports alone (`mappings preview`);
#                                     compared with a plain client (scripts/bench/post_bundles.py) posting the same
#                                     resources as the connector sends (the bodies a planning run of its own
#                                     queued, provenance tag and confidentiality label included), precomputed, as
#                                     transaction bundles of the same size and concurrency to a second fresh server
#                                     (only the posting is timed); and with a "durable floor"
#                                     (scripts/bench/durable_floor.py: the plain client plus the least SQLite
#                                     bookkeeping the connector's duties call for: queue, send intents, ledger,
#                                     audit), to a third fresh server; each client's CPU seconds are printed too.
#                                     The machine's speed drifts by a fifth from one half-minute to the next here
#                                     (shared cores), so the load and the plain client then run again, one after
#                                     the other, each on a fresh server (and a fresh state), BENCH_ROUNDS times in
#                                     all (default 3): each round's ratio is printed, and their median.
#                                     Settings: BENCH_BATCH_SIZE (50), BENCH_CONCURRENCY (2), BENCH_RATE (10000
#                                     requests/s, i.e. no limit), BENCH_STORE (sqlite, or postgres: a throwaway
#                                     Debian PostgreSQL from scripts/pg-test-server.sh), BENCH_ROUNDS (3),
#                                     HFS_BIN, HFS_DATA_DIR (default: the test cache).
#   scripts/bench.sh reconcile [RESOURCES]
#                                     loads a generated Hub export sized to map to about RESOURCES resources
#                                     (default 100000) into a fresh local Helios FHIR Server (`connector sync
#                                     --once`, setup, not measured), then times `connector reconcile` twice (wall,
#                                     peak memory, resources read) against a plain paged read of the same resources
#                                     with the same query (scripts/bench/paged_read.py). Settings: BENCH_BATCH_SIZE
#                                     (500, for the load), BENCH_CONCURRENCY (2), BENCH_RATE, HFS_BIN, HFS_DATA_DIR.
#
# Needs python3 (the generator is in scripts/gen-fixtures/) and GNU time (/usr/bin/time, Debian package `time`);
# `sync` and `reconcile` also need hfs and the SearchParameter bundle (scripts/setup-test-env.sh installs them if
# missing).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

what="${1:-mapping}"
work="${BENCH_DIR:-${TMPDIR:-/tmp}/connector-bench}"

if [ ! -x /usr/bin/time ]; then
    apt-get install -y -qq time >/dev/null 2>&1 || { echo "bench: install GNU time (apt-get install time)" >&2; exit 1; }
fi

machine() {
    echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
}

# The helpers of the modes that run servers (sync, reconcile).

# need_hfs: sets $hfs_bin and $hfs_data, installing them first if missing.
need_hfs() {
    local cache="${CONNECTOR_TEST_CACHE:-$HOME/.cache/connector-test}"
    hfs_bin="${HFS_BIN:-$cache/hfs/bin/hfs}"
    hfs_data="${HFS_DATA_DIR:-$cache/hfs-data}"
    if [ ! -x "$hfs_bin" ] || [ ! -s "$hfs_data/search-parameters-r4.json" ]; then
        echo "Installing hfs and the SearchParameter bundle (scripts/setup-test-env.sh; ~30 min the first time)..." >&2
        bash scripts/setup-test-env.sh
    fi
}
# build_connector: builds the release binary and sets $connector to its absolute path.
build_connector() {
    echo "Building the release binary..." >&2
    cargo build --release --quiet --bin connector
    local target_dir="${CARGO_TARGET_DIR:-target}"
    case "$target_dir" in /*) ;; *) target_dir="$PWD/$target_dir" ;; esac
    connector="$target_dir/release/connector"
}
# The servers started, stopped on exit; start_hfs and stop_hfs keep the list.
pids=()
stop_all() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
    pids=()
    if [ -n "${pg_dir:-}" ]; then bash scripts/pg-test-server.sh stop "$pg_dir" || true; fi
    if [ -n "${round_pg:-}" ]; then bash scripts/pg-test-server.sh stop "$round_pg" || true; fi
}
trap stop_all EXIT
# free_port: a TCP port free on the loopback now.
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# start_hfs NAME: a fresh server (own database under $run/NAME) on a free port, as tests/common starts it;
# sets $port and $hfs_pid.
start_hfs() {
    local name="$1"
    mkdir -p "$run/$name"
    port=$(free_port)
    (
        for v in $(compgen -e | grep '^HFS_' || true); do unset "$v"; done
        export HFS_VALIDATION_MODE=enforce HFS_SEED_CONFORMANCE=false HFS_NL_SEARCH_ENABLED=false
        cd "$run/$name"
        exec "$hfs_bin" --port "$port" --base-url "http://127.0.0.1:$port" --database-url "$run/$name/hfs.db" \
            --data-dir "$hfs_data" >"$run/$name/hfs.log" 2>&1
    ) &
    hfs_pid=$!
    pids+=("$hfs_pid")
    for _ in $(seq 600); do
        curl -sf -o /dev/null "http://127.0.0.1:$port/metadata" && return 0
        kill -0 "$hfs_pid" 2>/dev/null || break
        sleep 0.1
    done
    echo "bench: hfs ($name) did not come up; see $run/$name/hfs.log" >&2
    tail -20 "$run/$name/hfs.log" >&2
    exit 1
}
stop_hfs() {
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
    local keep=()
    for p in "${pids[@]}"; do [ "$p" != "$1" ] && keep+=("$p"); done
    pids=("${keep[@]}")
}
# count PORT TYPE: how many TYPE resources the server holds.
count() {
    curl -sf "http://127.0.0.1:$1/$2?_summary=count" | python3 -c 'import json, sys; print(json.load(sys.stdin)["total"])'
}
seconds() { # the wall time from a GNU time -v report, in seconds
    python3 -c "import sys; p = sys.argv[1].split(':'); print(round(sum(float(x) * 60 ** i for i, x in enumerate(reversed(p))), 2))" \
        "$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$1")"
}
rss_mib() { echo $(($(awk -F': ' '/Maximum resident set size/ {print $2}' "$1") / 1024)); }
ok_exit() { [ "$1" -eq 0 ] || [ "$1" -eq 3 ]; }
# write_config FILE: a config with the `hub` partner reading $data and one destination `cito` (the hfs on
# $port; $batch, $concurrency, $rate), with an open sharing agreement (every category, no consent needed) so
# that every resource the mappings make is sent.
write_config() {
    cat >"$1" <<EOF
[state]
url = "${state_url:-sqlite://$run/state.db}"
[mappings]
dir = "$PWD/mappings"
[[partner]]
id = "hub"
source = [
  { kind = "person", path = "$data/person.csv" },
  { kind = "contact", path = "$data/contact.csv" },
]
[destination.cito]
profile = "cito"
base_url = "http://127.0.0.1:$port"
batch_size = $batch
concurrency = $concurrency
rate_limit_per_second = $rate
${dest_extra:-}
[[sharing]]
name = "bench"
partner = "hub"
destination = "cito"
categories = ["general_health", "mental_health", "sexual_health", "social_care"]
lawful_basis = "bench"
consent_required = false
EOF
}

case "$what" in
mapping)
    rows="${2:-100000}"
    echo "Building the release binaries (connector, bench-baseline)..." >&2
    cargo build --release --quiet --bin connector
    cargo build --release --quiet -p bench-baseline
    target_dir="${CARGO_TARGET_DIR:-target}"
    data="$work/export-$rows"
    if [ ! -s "$data/person.csv" ]; then
        mkdir -p "$data"
        echo "Generating a Hub export of $rows people in $data..." >&2
        python3 scripts/gen-fixtures/bench_export.py --rows "$rows" --out "$data"
    fi
    person_rows=$(($(python3 -c "import sys; print(sum(1 for _ in open(sys.argv[1], 'rb')))" "$data/person.csv") - 1))
    contact_rows=$(($(python3 -c "import sys; print(sum(1 for _ in open(sys.argv[1], 'rb')))" "$data/contact.csv") - 1))
    machine
    echo "input: $person_rows person lines ($(du -h "$data/person.csv" | cut -f1)), about $contact_rows contact lines ($(du -h "$data/contact.csv" | cut -f1))"
    # timed NAME CMD...: runs CMD under GNU time, sets ${NAME}_secs and ${NAME}_rss_mib.
    timed() {
        local name="$1"
        shift
        /usr/bin/time -v -o "$work/time-$name.txt" "$@" || true
        local wall rss
        wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$work/time-$name.txt")
        rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$work/time-$name.txt")
        printf -v "${name}_secs" '%s' "$(python3 -c "p='$wall'.split(':'); print(sum(float(x)*60**i for i,x in enumerate(reversed(p))))")"
        printf -v "${name}_rss_mib" '%s' "$((rss / 1024))"
    }

    # 1. The simple Patient mapping (scripts/bench/simple-patient) against its hand-written baseline
    #    (crates/bench-baseline: csv + serde + uuid v5, no validation), same input, same run, same output.
    timed baseline "$target_dir/release/bench-baseline" "$data/person.csv" >"$work/baseline.ndjson" 2>"$work/baseline.txt"
    timed simple "$target_dir/release/connector" --mappings scripts/bench/simple-patient mappings preview --partner bench \
        --input "$data/person.csv" --quarantine-dir "$work/quarantine" >"$work/simple.ndjson" 2>"$work/simple.txt"
    # The connector's first line is the partner's Organization; the rest must equal the baseline's, byte for byte
    # (rows the connector quarantines, such as a bad NHS number, are left out of the comparison by key).
    same=$(python3 - "$work/simple.ndjson" "$work/baseline.ndjson" <<'PY'
import json, sys
ours = {json.loads(l)["id"]: l for l in open(sys.argv[1]) if '"resourceType":"Patient"' in l}
base = [l for l in open(sys.argv[2])]
same = sum(1 for l in base if ours.get(json.loads(l)["id"]) == l)
print(f"{same} of {len(base)} baseline Patients identical in the connector's output ({len(ours)} written)")
PY
)
    simple_rows=$(grep -oE '^Total: [0-9]+' "$work/simple.txt" | grep -oE '[0-9]+')
    echo "simple Patient mapping ($simple_rows rows): connector ${simple_secs}s ($(python3 -c "print(round($simple_rows/$simple_secs))") rows/s, peak ${simple_rss_mib} MiB); hand-written baseline ${baseline_secs}s ($(python3 -c "print(round($simple_rows/$baseline_secs))") rows/s, peak ${baseline_rss_mib} MiB); ratio $(python3 -c "print(round($simple_secs/$baseline_secs, 2))")x the baseline's time"
    echo "  $same"

    # 2. The full Hub mappings over the person and contact exports, reported on their own (rows/s).
    timed hub "$target_dir/release/connector" --mappings mappings mappings preview --partner hub \
        --input "$data/person.csv" --input "$data/contact.csv" --quarantine-dir "$work/quarantine" \
        >"$work/out.ndjson" 2>"$work/stderr.txt"
    grep -E "^Total:" "$work/stderr.txt" || { tail -5 "$work/stderr.txt"; exit 1; }
    read_total=$(grep -oE '^Total: [0-9]+' "$work/stderr.txt" | grep -oE '[0-9]+')
    echo "full Hub mappings: wall ${hub_secs}s; rows read: $read_total; throughput: $(python3 -c "print(round($read_total/$hub_secs))") rows/s; peak RSS: ${hub_rss_mib} MiB"
    echo "output: $(wc -l <"$work/out.ndjson") resources, $(du -h "$work/out.ndjson" | cut -f1)"
    ;;
sync)
    patients="${2:-10000}"
    batch="${BENCH_BATCH_SIZE:-50}"
    concurrency="${BENCH_CONCURRENCY:-2}"
    rate="${BENCH_RATE:-10000}"
    need_hfs
    build_connector
    data="$work/export-$patients"
    if [ ! -s "$data/person.csv" ] || [ ! -s "$data/contact.csv" ]; then
        mkdir -p "$data"
        echo "Generating a Hub export of $patients people in $data..." >&2
        python3 scripts/gen-fixtures/bench_export.py --rows "$patients" --out "$data"
    fi
    run="$work/sync-$patients"
    rm -rf "$run"
    mkdir -p "$run"
    store="${BENCH_STORE:-sqlite}"
    if [ "$store" = postgres ]; then
        # Debian's PostgreSQL, as the tests run it (scripts/pg-test-server.sh: fsync and synchronous commit off).
        pg_dir="$run/pg"
        state_url=$(bash scripts/pg-test-server.sh start "$pg_dir" "$(free_port)")
    fi

    echo "Precomputing the resources (connector mappings preview; timed: the no-change cycle's baseline)..." >&2
    /usr/bin/time -v -o "$run/time-mapping.txt" "$connector" --mappings mappings mappings preview --partner hub \
        --input "$data/person.csv" --input "$data/contact.csv" --quarantine-dir "$run/quarantine" \
        >"$run/resources.ndjson" 2>"$run/preview.txt" ||
        ok_exit $? || { tail -5 "$run/preview.txt" >&2; exit 1; }
    read -r n_resources n_patients n_encounters n_orgs < <(python3 -c '
import collections, json, sys
c = collections.Counter(json.loads(l)["resourceType"] for l in open(sys.argv[1]))
print(sum(c.values()), c["Patient"], c["Encounter"], c["Organization"])' "$run/resources.ndjson")
    # Records, not lines: some contact notes hold a newline.
    contact_rows=$(python3 -c 'import csv, sys; print(sum(1 for _ in csv.reader(open(sys.argv[1], encoding="utf-8-sig", newline=""))) - 1)' "$data/contact.csv")

    # The plain client posts what the connector sends: the planned bodies (with the provenance tag and
    # confidentiality label planning adds to the mapped resources), in the order planned. They are taken from
    # the outbox of a planning run of its own (a scratch SQLite state; the destination a closed port, one
    # attempt, so nothing is sent and every row stays queued).
    echo "Planning into a scratch outbox (the plain client's resources, as the connector sends them)..." >&2
    mkdir -p "$run/planned"
    closed=$(free_port)
    (state_url="sqlite://$run/planned/state.db" port="$closed" dest_extra="max_attempts = 1" \
        write_config "$run/planned/config.toml")
    CONNECTOR_LOG=york_connector=warn "$connector" sync --once --config "$run/planned/config.toml" \
        >"$run/planned/out.txt" 2>"$run/planned/log.txt" || true
    python3 - "$run/planned/state.db" "$run/planned.ndjson" "$n_resources" <<'PY'
import sqlite3, sys
db, out, expected = sys.argv[1], sys.argv[2], int(sys.argv[3])
rows = sqlite3.connect(db).execute(
    "SELECT body FROM outbox WHERE destination = 'cito' AND op = 'upsert' AND NOT dead ORDER BY seq").fetchall()
if len(rows) != expected:
    sys.exit(f"bench: the planning run queued {len(rows)} resources, expected {expected} (see {db})")
with open(out, "w", encoding="utf-8") as f:
    for (body,) in rows:
        f.write(body.strip() + "\n")
PY
    rm -rf "$run/planned"

    # field FILE KEY: KEY of the one JSON object in FILE (a client's summary line).
    field() { python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }
    # cpu REPORT: user + system seconds from a GNU time -v report.
    cpu() { awk -F': ' '/User time/ {u = $2} /System time/ {s = $2} END {printf "%.2f", u + s}' "$1"; }
    # initial_load DIR WHAT: `connector sync --once` with DIR/config.toml into DIR/initial.txt, initial.log and
    # time-initial.txt; it must succeed. Its exit code is left in load_code.
    initial_load() {
        load_code=0
        CONNECTOR_LOG=york_connector=info /usr/bin/time -v -o "$1/time-initial.txt" "$connector" sync --once \
            --config "$1/config.toml" >"$1/initial.txt" 2>"$1/initial.log" || load_code=$?
        ok_exit "$load_code" || { echo "bench: $2 failed ($load_code):" >&2; tail -20 "$1/initial.log" >&2; exit 1; }
    }
    # expect_held WHOSE: the server on $port holds every Patient, Encounter and Organization planned.
    expect_held() {
        local held
        held="$(count "$port" Patient) $(count "$port" Encounter) $(count "$port" Organization)"
        if [ "$held" != "$n_patients $n_encounters $n_orgs" ]; then
            echo "bench: $1 holds Patient/Encounter/Organization $held, expected $n_patients $n_encounters $n_orgs" >&2
            exit 1
        fi
    }
    # rate_ratio PLAIN_JSON TIME_REPORT: the connector's rate as a share of the plain client's.
    rate_ratio() { python3 -c "print(round($(field "$1" seconds) / $(seconds "$2"), 3))"; }
    load_before=$(cut -d' ' -f1-3 /proc/loadavg)
    start_hfs connector
    write_config "$run/config.toml"
    echo "Initial load with the connector ($n_resources resources)..." >&2
    initial_load "$run" "the initial sync"
    code=$load_code
    cat "$run/initial.txt" >&2
    # A no-change cycle: `sync --once` into $run/NAME.txt, .log and time-NAME.txt; it must succeed and queue
    # nothing. Its exit code is left in code_NAME.
    no_change_cycle() {
        local name="$1" what="$2" code=0
        echo "$what..." >&2
        /usr/bin/time -v -o "$run/time-$name.txt" "$connector" sync --once --config "$run/config.toml" \
            >"$run/$name.txt" 2>"$run/$name.log" || code=$?
        ok_exit "$code" || { echo "bench: the $what failed ($code):" >&2; tail -20 "$run/$name.log" >&2; exit 1; }
        cat "$run/$name.txt" >&2
        if ! grep -q "queued: cito 0" "$run/$name.txt"; then
            echo "bench: the $what queued something:" >&2
            cat "$run/$name.txt" >&2
            exit 1
        fi
        printf -v "code_$name" '%s' "$code"
    }
    no_change_cycle nochange "no-change cycle"
    # The cycle after: nothing was delivered by the one before, so each partner holds a plan receipt now
    # (`sync::receipt`) and is not planned again. Both are reported: the first plans in full.
    no_change_cycle nochange2 "second no-change cycle"
    expect_held "the server"
    stop_hfs "$hfs_pid"

    # post_plain DIR NAME [--lookups] [--minimal]: the plain client posts the planned resources to a fresh
    # server; DIR/NAME.json holds its figures, DIR/time-NAME.txt its GNU time report.
    post_plain() {
        local dir="$1" name="$2"
        shift 2
        start_hfs "${dir#"$run"}/$name-hfs"
        /usr/bin/time -v -o "$dir/time-$name.txt" python3 scripts/bench/post_bundles.py \
            --base-url "http://127.0.0.1:$port" --ndjson "$run/planned.ndjson" --batch-size "$batch" \
            --concurrency "$concurrency" "$@" >"$dir/$name.json"
        expect_held "the plain client's server"
        stop_hfs "$hfs_pid"
    }
    echo "Plain client: the same resources as $batch-entry transaction bundles, $concurrency at a time..." >&2
    post_plain "$run" plain

    # A second baseline: the plain client that also searches for each new Patient first, as the connector must
    # (duplicates), so the ratio to it is the connector's own cost.
    echo "Plain client with the connector's Patient searches..." >&2
    post_plain "$run" plain-lookups --lookups

    # A third: the plain client asking for minimal transaction answers (status, location, ETag; not the
    # resources written out again), as the connector does: the same request headers as the connector's.
    echo "Plain client asking for minimal answers, as the connector does..." >&2
    post_plain "$run" plain-minimal --minimal

    # A fourth: the plain client plus the least durable bookkeeping the connector's duties call for (a queue,
    # send intents, ledger, hash-chained audit) in SQLite kept as the connector keeps it
    # (scripts/bench/durable_floor.py): what any connector with those duties would cost on this machine.
    start_hfs floor
    echo "Durable floor: the plain client with a SQLite outbox, intents, ledger and audit..." >&2
    /usr/bin/time -v -o "$run/time-floor.txt" python3 scripts/bench/durable_floor.py --base-url "http://127.0.0.1:$port" \
        --ndjson "$run/planned.ndjson" --state "$run/floor.db" --batch-size "$batch" --concurrency "$concurrency" \
        >"$run/floor.json"
    stop_hfs "$hfs_pid"

    # The rounds after the first: the load (fresh server, fresh state) and then the plain client (fresh server),
    # side by side in time, so each round's ratio is taken at one speed of the machine.
    rounds="${BENCH_ROUNDS:-3}"
    round_ratios=("$(rate_ratio "$run/plain.json" "$run/time-initial.txt")")
    minimal_ratios=("$(rate_ratio "$run/plain-minimal.json" "$run/time-initial.txt")")
    for ((r = 2; r <= rounds; r++)); do
        rdir="$run/round-$r"
        mkdir -p "$rdir"
        if [ "$store" = postgres ]; then
            round_pg="$rdir/pg"
            round_url=$(bash scripts/pg-test-server.sh start "$round_pg" "$(free_port)")
        else
            round_url="sqlite://$rdir/state.db"
        fi
        start_hfs "round-$r/connector-hfs"
        (state_url="$round_url" write_config "$rdir/config.toml")
        echo "Round $r of $rounds: initial load with the connector..." >&2
        initial_load "$rdir" "round $r's load"
        expect_held "round $r's server"
        stop_hfs "$hfs_pid"
        if [ -n "${round_pg:-}" ]; then
            bash scripts/pg-test-server.sh stop "$round_pg" || true
            round_pg=""
        fi
        echo "Round $r of $rounds: plain client, then the plain client asking for minimal answers..." >&2
        post_plain "$rdir" plain
        post_plain "$rdir" plain-minimal --minimal
        round_ratios+=("$(rate_ratio "$rdir/plain.json" "$rdir/time-initial.txt")")
        minimal_ratios+=("$(rate_ratio "$rdir/plain-minimal.json" "$rdir/time-initial.txt")")
        echo "round $r: connector $(seconds "$rdir/time-initial.txt")s (CPU $(cpu "$rdir/time-initial.txt")s, peak RSS $(rss_mib "$rdir/time-initial.txt") MiB), plain $(field "$rdir/plain.json" seconds)s, plain asking for minimal answers $(field "$rdir/plain-minimal.json" seconds)s" >&2
    done

    initial=$(seconds "$run/time-initial.txt")
    nochange=$(seconds "$run/time-nochange.txt")
    nochange2=$(seconds "$run/time-nochange2.txt")
    plain=$(field "$run/plain.json" seconds)
    plain_lookups=$(field "$run/plain-lookups.json" seconds)
    floor=$(field "$run/floor.json" seconds)
    bundles=$(field "$run/plain.json" bundles)
    rate_of() { python3 -c "print(round($n_resources / $1))"; }
    # From the end of ingest (mapping and planning into the outbox) to the end of delivery, per the log: delivery
    # runs beside planning, so this is the part of it left when planning ends.
    delivery=$(python3 -c '
import datetime, re, sys
t = {}
for line in open(sys.argv[1], encoding="utf-8", errors="replace"):
    for key, marker in (("ingested", "Partner ingested."), ("delivered", "Delivered. destination=cito")):
        if marker in line:
            t[key] = datetime.datetime.fromisoformat(re.match(r"\S+", line).group(0).replace("Z", "+00:00"))
print(round((t["delivered"] - t["ingested"]).total_seconds(), 2) if len(t) == 2 else "?")' "$run/initial.log")
    echo
    machine
    echo "load average before: $load_before"
    echo "patients: $patients people, $contact_rows contacts -> $n_resources resources (Patient $n_patients, Encounter $n_encounters, Organization $n_orgs); batch $batch, concurrency $concurrency; state: $store"
    echo "connector initial load: ${initial}s ($(rate_of "$initial") resources/s), exit $code, peak RSS $(rss_mib "$run/time-initial.txt") MiB"
    echo "  of which after planning: ${delivery}s (delivery starts beside planning, with its first chunk)"
    echo "plain client:           ${plain}s ($(rate_of "$plain") resources/s), $bundles bundles"
    echo "ratio connector/plain:  $(python3 -c "print(round($initial / $plain, 2))")x the time, $(python3 -c "print(round($plain / $initial, 2))")x the rate (target: rate >= $([ "$store" = postgres ] && echo 0.9 || echo 0.95)x)"
    median() { python3 -c 'import statistics, sys; print(round(statistics.median(map(float, sys.argv[1:])), 2))' "$@"; }
    echo "rounds (load, then plain client, fresh servers): plain/connector rate ratio per round: ${round_ratios[*]}; median: $(median "${round_ratios[@]}")x (the first round is the one above)"
    echo "  the same against the plain client asking for minimal answers, as the connector does: ${minimal_ratios[*]}; median: $(median "${minimal_ratios[@]}")x"
    echo "plain client that also searches for new Patients: ${plain_lookups}s ($(rate_of "$plain_lookups") resources/s); connector: $(python3 -c "print(round($plain_lookups / $initial, 2))")x its rate"
    echo "durable floor (plain client + SQLite outbox, intents, ledger, audit): ${floor}s ($(rate_of "$floor") resources/s); its rate $(python3 -c "print(round($plain / $floor, 2))")x the plain client's; connector: $(python3 -c "print(round($floor / $initial, 2))")x its rate"
    echo "CPU seconds (user + system) of each client: connector $(cpu "$run/time-initial.txt"), plain $(cpu "$run/time-plain.txt"), durable floor $(cpu "$run/time-floor.txt") (the server shares the same $(nproc) cores)"
    mapping=$(seconds "$run/time-mapping.txt")
    echo "no-change cycle:        ${nochange}s, exit $code_nochange, peak RSS $(rss_mib "$run/time-nochange.txt") MiB"
    echo "mapping the same exports alone (mappings preview): ${mapping}s; no-change/mapping: $(python3 -c "print(round($nochange / $mapping, 2))")x"
    unchanged=$(grep -c "not planned again" "$run/nochange2.txt" || true)
    echo "no-change cycle again:  ${nochange2}s, exit $code_nochange2, peak RSS $(rss_mib "$run/time-nochange2.txt") MiB, $unchanged partner(s) not planned again (plan receipts); no-change again/mapping: $(python3 -c "print(round($nochange2 / $mapping, 2))")x (target: <= 1.3x)"
    echo "files: $run (config, logs, GNU time reports)"
    ;;
reconcile)
    want="${2:-100000}"
    batch="${BENCH_BATCH_SIZE:-500}"
    concurrency="${BENCH_CONCURRENCY:-2}"
    rate="${BENCH_RATE:-10000}"
    need_hfs
    build_connector
    # preview_count DATA OUT: maps the export DATA (as the hub partner) into OUT (ndjson, GNU time report in
    # OUT.time); prints the resources.
    preview_count() {
        local code=0
        /usr/bin/time -v -o "$2.time" "$connector" --mappings mappings mappings preview --partner hub \
            --input "$1/person.csv" --input "$1/contact.csv" --quarantine-dir "$2.quarantine" >"$2" 2>"$2.stderr" ||
            code=$?
        ok_exit "$code" || { tail -5 "$2.stderr" >&2; exit 1; }
        wc -l <"$2"
    }
    # Size the export: a 1000-person probe gives the resources per person (about three: a Patient and two
    # Encounters, plus the shared GP practice Organizations).
    probe="$work/export-1000"
    if [ ! -s "$probe/person.csv" ] || [ ! -s "$probe/contact.csv" ]; then
        mkdir -p "$probe"
        python3 scripts/gen-fixtures/bench_export.py --rows 1000 --out "$probe"
    fi
    per_1000=$(preview_count "$probe" "$work/probe.ndjson")
    patients=$(python3 -c "import math; print(math.ceil($want * 1000 / $per_1000))")
    echo "A 1000-person export maps to $per_1000 resources: $patients people for about $want." >&2
    data="$work/export-$patients"
    if [ ! -s "$data/person.csv" ] || [ ! -s "$data/contact.csv" ]; then
        mkdir -p "$data"
        echo "Generating a Hub export of $patients people in $data..." >&2
        python3 scripts/gen-fixtures/bench_export.py --rows "$patients" --out "$data"
    fi
    run="$work/reconcile-$want"
    rm -rf "$run"
    mkdir -p "$run"
    echo "Mapping it (connector mappings preview) for the resource counts..." >&2
    preview_count "$data" "$run/resources.ndjson" >/dev/null
    tally=$(python3 -c '
import collections, json, sys
c = collections.Counter(json.loads(l)["resourceType"] for l in open(sys.argv[1]))
print(sum(c.values()))
print(" ".join(sorted(c)))
print(", ".join(f"{t} {n}" for t, n in sorted(c.items())))' "$run/resources.ndjson")
    n_resources=$(sed -n 1p <<<"$tally")
    read -r -a types <<<"$(sed -n 2p <<<"$tally")"
    by_type=$(sed -n 3p <<<"$tally")

    start_hfs connector
    write_config "$run/config.toml"
    echo "Loading $n_resources resources ($by_type) with connector sync --once (setup, not measured)..." >&2
    code=0
    /usr/bin/time -v -o "$run/time-load.txt" "$connector" sync --once --config "$run/config.toml" \
        >"$run/load.txt" 2>"$run/load.log" || code=$?
    ok_exit "$code" || { echo "bench: the load failed ($code):" >&2; tail -20 "$run/load.log" >&2; exit 1; }
    held=0
    for t in "${types[@]}"; do held=$((held + $(count "$port" "$t"))); done
    if [ "$held" != "$n_resources" ]; then
        echo "bench: the server holds $held resources of ${types[*]}, expected $n_resources:" >&2
        cat "$run/load.txt" >&2
        exit 1
    fi
    echo "Loaded in $(seconds "$run/time-load.txt")s (exit $code)." >&2

    # reconcile N: one timed `connector reconcile` into $run/reconcile-N.json; its exit code in ${rcode[N]}, the
    # seconds from its start to the end of mapping the source (its first step) in ${mapped[N]}.
    rcode=()
    mapped=()
    reconcile() {
        local code=0 started
        started=$(date +%s.%N)
        CONNECTOR_LOG=york_connector=info /usr/bin/time -v -o "$run/time-reconcile-$1.txt" "$connector" \
            --config "$run/config.toml" reconcile --destination cito --format json >"$run/reconcile-$1.json" \
            2>"$run/reconcile-$1.log" || code=$?
        ok_exit "$code" || { echo "bench: reconcile failed ($code):" >&2; tail -20 "$run/reconcile-$1.log" >&2; exit 1; }
        [ "$code" -eq 0 ] || echo "bench: reconcile $1 found drift (exit 3); see $run/reconcile-$1.json" >&2
        rcode[$1]=$code
        mapped[$1]=$(python3 -c '
import datetime, re, sys
for line in open(sys.argv[1], encoding="utf-8", errors="replace"):
    if "Partner ingested." in line:
        t = datetime.datetime.fromisoformat(re.match(r"\S+", line).group(0).replace("Z", "+00:00"))
        print(round(t.timestamp() - float(sys.argv[2]), 2))
        break
else:
    print("?")' "$run/reconcile-$1.log" "$started")
    }
    field() { python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }
    in_sync() {
        python3 -c 'import json, sys; print(sum(s["in_sync"] for s in json.load(open(sys.argv[1]))["summaries"]))' "$1"
    }
    echo "Reconcile, twice..." >&2
    reconcile 1
    reconcile 2
    echo "Plain paged read of the same resources..." >&2
    /usr/bin/time -v -o "$run/time-paged.txt" python3 scripts/bench/paged_read.py "http://127.0.0.1:$port" \
        "${types[@]}" >"$run/paged.json"
    stop_hfs "$hfs_pid"

    paged=$(field "$run/paged.json" seconds)
    paged_read=$(field "$run/paged.json" resources)
    echo
    machine
    echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "resources: $n_resources ($by_type) from $patients people"
    echo "load (setup): sync --once, batch $batch, concurrency $concurrency: $(seconds "$run/time-load.txt")s," \
        "peak RSS $(rss_mib "$run/time-load.txt") MiB"
    for n in 1 2; do
        r="$run/reconcile-$n.json"
        wall=$(seconds "$run/time-reconcile-$n.txt")
        echo "reconcile $n: ${wall}s wall, $(python3 -c "print(round($wall / $paged, 2))")x the paged read;" \
            "$(field "$r" read) read, $(in_sync "$r") in sync, $(field "$r" findings_total) not, exit ${rcode[$n]}," \
            "peak RSS $(rss_mib "$run/time-reconcile-$n.txt") MiB"
        echo "  of which start-up and mapping the source into the expected set: ${mapped[$n]}s; reading and comparing:" \
            "$(python3 -c "m = '${mapped[$n]}'; print(round($wall - float(m), 2) if m != '?' else '?')")s"
    done
    echo "mapping the same export alone (mappings preview): $(seconds "$run/resources.ndjson.time")s"
    echo "plain paged read: ${paged}s, $paged_read read in $(field "$run/paged.json" pages) pages (slowest page" \
        "$(field "$run/paged.json" slowest_page_seconds)s), peak RSS $(rss_mib "$run/time-paged.txt") MiB"
    echo "files: $run (config, logs, JSON reports, GNU time reports)"
    ;;
*)
    echo "usage: scripts/bench.sh mapping [ROWS] | scripts/bench.sh sync [PATIENTS] | scripts/bench.sh reconcile [RESOURCES]" >&2
    exit 2
    ;;
esac
