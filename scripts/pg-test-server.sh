#!/usr/bin/env bash
# A throwaway PostgreSQL server for tests.
#
#   scripts/pg-test-server.sh start DIR PORT   # prints DATABASE_URL on stdout
#   scripts/pg-test-server.sh stop  DIR
#
# start: initdb (trust auth, superuser `postgres`) into DIR/data unless it is
# already there, then pg_ctl start listening on 127.0.0.1:PORT only (no Unix
# socket), with durability switched off for speed. Idempotent: a server that
# is already running in DIR is reused. The only thing written to stdout is the
# URL, e.g. `postgres://postgres@127.0.0.1:PORT/postgres`, so callers can do
#   DATABASE_URL=$(scripts/pg-test-server.sh start /tmp/pg 54329)
# stop: pg_ctl stop -m fast (no error if it is not running). DIR is left for
# the caller to remove.
#
# PostgreSQL refuses to run as root, so when run as root the server runs as the
# `postgres` user (runuser); DIR must then be reachable by that user (a
# directory under /tmp is; one under /root is not). Binaries come from
# /usr/lib/postgresql/<newest>/bin (Debian's layout; scripts/setup-test-env.sh
# installs the package).
set -euo pipefail

usage() { echo "usage: $0 start DIR PORT | stop DIR" >&2; exit 2; }
die() { echo "pg-test-server: $*" >&2; exit 1; }

[ $# -ge 2 ] || usage
cmd=$1
dir=$2

# The glob sorts 10 before 9; pick the highest version explicitly.
bindir=$(for d in /usr/lib/postgresql/*/bin; do [ -x "$d/initdb" ] && echo "$d"; done | sort -V | tail -n 1)
[ -n "$bindir" ] || die "no /usr/lib/postgresql/*/bin/initdb; run scripts/setup-test-env.sh"

if [ "$(id -u)" -eq 0 ]; then
    as_pg() { runuser -u postgres -- "$@"; }
else
    as_pg() { "$@"; }
fi

data="$dir/data"
log="$dir/postgres.log"

case "$cmd" in
start)
    [ $# -eq 3 ] || usage
    port=$3
    [[ "$port" =~ ^[0-9]+$ ]] || die "PORT must be a number, got '$port'"
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    data="$dir/data"
    log="$dir/postgres.log"
    if [ "$(id -u)" -eq 0 ]; then
        chown postgres: "$dir"
        as_pg test -w "$dir" ||
            die "user postgres cannot write $dir (is a parent directory private, like /root?); use a directory under /tmp"
    fi
    if [ ! -f "$data/PG_VERSION" ]; then
        as_pg "$bindir/initdb" -D "$data" -U postgres --auth=trust \
            --encoding=UTF8 --no-locale --no-sync >"$dir/initdb.log" 2>&1 ||
            { cat "$dir/initdb.log" >&2; die "initdb failed"; }
    fi
    if ! as_pg "$bindir/pg_ctl" -D "$data" status >/dev/null 2>&1; then
        opts="-c listen_addresses=127.0.0.1 -p $port -c unix_socket_directories= "
        opts+="-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        as_pg "$bindir/pg_ctl" -D "$data" -l "$log" -o "$opts" -w -t 60 start >/dev/null ||
            { tail -n 30 "$log" >&2 || true; die "pg_ctl start failed (port $port in use?)"; }
    fi
    # The port of a reused server is the one it was started with.
    running_port=$(sed -n 4p "$data/postmaster.pid" 2>/dev/null || true)
    [ "$running_port" = "$port" ] ||
        die "a server is already running in $data on port ${running_port:-?}, not $port"
    echo "postgres://postgres@127.0.0.1:$port/postgres"
    ;;
stop)
    [ $# -eq 2 ] || usage
    if [ -f "$data/postmaster.pid" ]; then
        as_pg "$bindir/pg_ctl" -D "$data" -m fast -w -t 60 stop >/dev/null
    fi
    ;;
*)
    usage
    ;;
esac
