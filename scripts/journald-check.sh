#!/usr/bin/env bash
# Checks the connector's journald logging against a real systemd-journald, on a machine (or container)
# where none runs: journald is started in a private mount namespace (its sockets and journal files on
# tmpfs, gone afterwards), `connector run` logs to it for a few seconds, and journalctl must show the
# entries with their priority and structured fields. Then, with the socket gone, the same run must fall
# back to `<N>`-prefixed lines on stderr.
#
# Needs root, unshare(1) and /lib/systemd/systemd-journald (Debian: package systemd).
# Usage: scripts/journald-check.sh [path/to/connector]   (default target/debug/connector)
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="$(realpath "${1:-$REPO_ROOT/target/debug/connector}")"
JOURNALD=/lib/systemd/systemd-journald
[ -x "$BIN" ] || { echo "no connector binary at $BIN (cargo build first)" >&2; exit 1; }
[ -x "$JOURNALD" ] || { echo "no $JOURNALD (apt-get install systemd)" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || { echo "needs root (for a private mount namespace)" >&2; exit 1; }

if [ "${JOURNALD_CHECK_INSIDE:-}" != 1 ]; then
    exec env JOURNALD_CHECK_INSIDE=1 unshare --mount --propagation private bash "$0" "$BIN"
fi

# Inside the namespace: nothing below is seen outside it.
work="$(mktemp -d)"
trap 'kill "$jpid" 2>/dev/null || true; rm -rf "$work"' EXIT
mount -t tmpfs tmpfs /run/systemd
mkdir -p /run/systemd/journal /run/log /var/log/journal
mount -t tmpfs tmpfs /run/log
mount -t tmpfs tmpfs /var/log/journal
"$JOURNALD" >"$work/journald.log" 2>&1 &
jpid=$!
for _ in $(seq 50); do [ -S /run/systemd/journal/socket ] && break; sleep 0.1; done
[ -S /run/systemd/journal/socket ] || { cat "$work/journald.log" >&2; echo "journald did not start" >&2; exit 1; }

# A configuration that starts and logs (a WARN for the missing [[sharing]], INFO lines with fields) and
# whose jobs never come due.
cat >"$work/config.toml" <<EOF
[state]
url = "sqlite://$work/state.db"
[mappings]
dir = "$REPO_ROOT/mappings"
[[partner]]
id = "hub"
schedule = "0 0 1 1 *"
source = [ { kind = "person", path = "$REPO_ROOT/tests/fixtures/hub/person.csv" } ]
[destination.cito]
profile = "cito"
base_url = "http://127.0.0.1:9/fhir"
schedule = "0 0 1 1 *"
[ops]
listen = "127.0.0.1:0"
EOF

fail() { echo "FAIL: $*" >&2; exit 1; }

# JOURNAL_STREAM set, as systemd sets it: `auto` picks journald.
CONNECTOR_LOG=info JOURNAL_STREAM=8:1 timeout -s TERM 3 "$BIN" run --config "$work/config.toml" 2>"$work/stderr" || true
[ ! -s "$work/stderr" ] || fail "wrote to stderr although the journal was there: $(cat "$work/stderr")"
journalctl --sync 2>/dev/null || true
journalctl -t connector -o verbose --no-pager >"$work/verbose"
grep -q '^    MESSAGE=Connector running\.$' "$work/verbose" || fail "no 'Connector running.' entry"
grep -q '^    CONNECTOR_PARTNERS=1$' "$work/verbose" || fail "no CONNECTOR_PARTNERS field"
grep -q '^    TARGET=york_connector::daemon$' "$work/verbose" || fail "no TARGET field"
[ "$(journalctl -t connector -p warning -o cat --no-pager)" = \
  "No [[sharing]] agreements in the config: nothing will be sent to any destination." ] ||
    fail "journalctl -p warning does not show exactly the one WARN"
journalctl -t connector -o cat --no-pager CONNECTOR_DESTINATIONS=1 | grep -q 'Connector running' ||
    fail "cannot select entries by a structured field"
echo "journald: entries with PRIORITY, TARGET, MESSAGE and CONNECTOR_* fields"

# The socket gone: `--log-format journald` falls back to <N>-prefixed lines.
kill "$jpid"; wait "$jpid" 2>/dev/null || true
rm -f /run/systemd/journal/socket "$work"/state.db*
CONNECTOR_LOG=info timeout -s TERM 3 "$BIN" --log-format journald run --config "$work/config.toml" 2>"$work/stderr" || true
grep -q '^<4> WARN york_connector::config: No \[\[sharing\]\]' "$work/stderr" || fail "no <4> WARN line: $(cat "$work/stderr")"
grep -q '^<6> INFO york_connector::daemon: Connector running\. partners=1' "$work/stderr" || fail "no <6> INFO line"
echo "fallback: <N>-prefixed lines on stderr"
echo "journald-check: ok"
