#!/usr/bin/env bash
# The main job end to end on this machine, with the shipped fixtures: maps every partner's exports to FHIR
# and writes the resources to out/<partner>.ndjson, the quarantined rows to out/quarantine/.
# (The sync stages, SQLite state and local FHIR servers join this script as they are built.)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build --quiet --bin connector
mkdir -p out
status=0
for dir in mappings/*/; do
    partner=$(basename "$dir")
    args=()
    for f in tests/fixtures/"$partner"/*; do
        case "$(basename "$f")" in
        person.* | carer.* | referral.* | episode.* | contact.* | goals.* | reqol.* | consent.*) args+=(--input "$f") ;;
        esac
    done
    echo "== $partner" >&2
    code=0
    target/debug/connector mappings preview --partner "$partner" "${args[@]}" --quarantine-dir out/quarantine \
        >"out/$partner.ndjson" || code=$?
    # Exit 3 means "mapped, with rows quarantined": expected for the deliberately messy fixtures.
    if [ "$code" -ne 0 ] && [ "$code" -ne 3 ]; then status=$code; fi
done
echo "Resources in out/*.ndjson; quarantined rows in out/quarantine/." >&2
exit "$status"
