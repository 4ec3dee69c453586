#!/usr/bin/env bash
# The main job end to end on the embedded default: SQLite state, two local Helios FHIR Server instances
# standing in for Cito (port 8181) and PKB (port 8182), the partners' fixture exports, config.example.toml.
# Runs a full sync cycle, then a second one (which must send nothing), then the partner feeds (files under
# out/demo/feeds/), then shows `connector status` and what each server now holds. Servers are stopped on exit; state and logs stay in out/demo/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup-test-env.sh
CACHE="${CONNECTOR_TEST_CACHE:-$HOME/.cache/connector-test}"
HFS_BIN="${HFS_BIN:-$CACHE/hfs/bin/hfs}"
HFS_DATA_DIR="${HFS_DATA_DIR:-$CACHE/hfs-data}"

echo "Building the connector..." >&2
cargo build --quiet --bin connector
connector=target/debug/connector

rm -rf out/demo
mkdir -p out/demo
pids=()
stop() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap stop EXIT

for spec in cito:8181 pkb:8182; do
    name=${spec%%:*} port=${spec##*:}
    if (echo >/dev/tcp/127.0.0.1/"$port") 2>/dev/null; then
        echo "demo: port $port is in use; stop whatever listens there (the demo's $name stand-in needs it)" >&2
        exit 1
    fi
    mkdir -p "out/demo/$name"
    HFS_VALIDATION_MODE=enforce HFS_SEED_CONFORMANCE=false "$HFS_BIN" --port "$port" --base-url "http://127.0.0.1:$port" \
        --database-url "out/demo/$name/fhir.db" --data-dir "$HFS_DATA_DIR" >"out/demo/$name.log" 2>&1 &
    pids+=($!)
done
for port in 8181 8182; do
    for _ in $(seq 120); do
        curl -sf -o /dev/null "http://127.0.0.1:$port/metadata" && break
        sleep 0.5
    done
done

echo "== First cycle: everything is new" >&2
code=0
"$connector" sync --once --config config.example.toml || code=$?
echo "== Second cycle: nothing changed, so nothing is sent" >&2
"$connector" sync --once --config config.example.toml || code=$?
echo "== Partner feeds: each partner's clients' unified records, in its own format" >&2
"$connector" feed run --config config.example.toml || code=$?
find out/demo/feeds -type f | sort | sed 's/^/   /' >&2
echo "== connector status" >&2
"$connector" status --config config.example.toml || true
echo "== What the servers hold" >&2
for spec in Cito:8181 PKB:8182; do
    name=${spec%%:*} port=${spec##*:}
    line="$name:"
    for t in Organization Patient RelatedPerson ServiceRequest EpisodeOfCare Encounter Goal CarePlan QuestionnaireResponse Observation Consent; do
        n=$(curl -sf "http://127.0.0.1:$port/$t?_summary=count" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("total", 0))')
        line="$line $t $n,"
    done
    echo "${line%,}"
done
# Exit 3 means "ran, and found something": the Hub's fixture export is deliberately messy.
if [ "$code" -ne 0 ] && [ "$code" -ne 3 ]; then exit "$code"; fi
echo "Done. State: out/demo/state.db; server logs: out/demo/*.log" >&2
