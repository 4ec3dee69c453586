#!/usr/bin/env bash
# Installs the Debian package on this machine and checks it as an admin would, then removes and purges it
# (issue 16, "what it must show" 1 and 2): files, modes, the service user, `systemd-analyze verify` and
# `security` of the installed units, `connector --version`, `connector config check` on the installed
# configuration (as the service user), `man connector`, bash completion, an upgrade over a locally edited
# conffile, remove (keeps the configuration and state), purge (leaves nothing).
#
#   scripts/package-test.sh [--binary PATH]
#
# With --binary the package holds that binary: tests/debian_package.rs passes the debug one `cargo test` has
# already built, and the package is compressed with zstd -1 (dpkg reads it since Debian 12), so the test
# costs seconds, not a release build (the layout and maintainer scripts are the same). Without it,
# scripts/build-deb.sh builds the release binary and compresses with xz, as for a real release.
# Needs root and dpkg. It never touches an existing installation: if the package, its user's folders or
# /usr/bin/connector are there it exits 77 (skipped), as without root or dpkg. It leaves the machine as it
# found it, the `connector` user included, except man-db (installed from Debian's packages if `man` is
# missing). Exit 0 when every check passed, 1 at the first that failed (the package is purged all the same).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

binary=""
while [ $# -gt 0 ]; do
    case "$1" in
        --binary) binary="$(realpath "$2")"; shift 2 ;;
        *) echo "package-test: unknown argument $1 (usage: scripts/package-test.sh [--binary PATH])" >&2; exit 2 ;;
    esac
done

PKG=york-connector
UNITS=(connector.service connector-reconcile.service connector-reconcile.timer)
passed=0
skip() { echo "package-test: skipped: $*"; exit 77; }
ok() { echo "ok    $*"; passed=$((passed + 1)); }
fail() { echo "FAIL  $*"; exit 1; }
check() { # check DESCRIPTION COMMAND...: ok when the command succeeds
    local what="$1"; shift
    if "$@"; then ok "$what"; else fail "$what"; fi
}

[ "$(id -u)" = 0 ] || skip "not root (dpkg -i needs root)"
for tool in dpkg dpkg-deb systemd-analyze runuser flock; do
    command -v "$tool" >/dev/null || skip "$tool is not installed"
done
# One package test at a time on a machine (several checkouts may run the suite).
exec 9>/run/lock/york-connector-package-test.lock
flock -w 900 9 || skip "another package test held the lock for 15 minutes"
if dpkg-query -W -f='${db:Status-Status}' "$PKG" 2>/dev/null | grep -qv '^not-installed$'; then
    skip "$PKG is installed on this machine; this test does not touch an existing installation"
fi
for path in /usr/bin/connector /etc/connector /var/lib/connector /srv/connector; do
    [ ! -e "$path" ] || skip "$path exists; this test does not touch an existing installation"
done
user_existed=no
getent passwd connector >/dev/null && user_existed=yes

work="$(mktemp -d)"
cleanup() {
    if dpkg-query -W -f='${db:Status-Status}' "$PKG" 2>/dev/null | grep -qv '^not-installed$'; then
        dpkg --purge "$PKG" >/dev/null 2>&1 || true
    fi
    if [ "$user_existed" = no ] && getent passwd connector >/dev/null; then
        userdel connector 2>/dev/null || true
    fi
    if [ "$user_existed" = no ] && getent group connector >/dev/null; then
        groupdel connector 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

if ! command -v man >/dev/null; then
    echo "package-test: installing man-db from Debian's packages..."
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq man-db >/dev/null
fi

# What is on the machine under the connector's names before, to compare after the purge.
leftovers() {
    # (some of these folders may not exist: find then exits 1, which is no failure here)
    { find /etc /usr/bin /usr/lib /usr/share/doc /usr/share/man/man1 /usr/share/bash-completion /usr/share/zsh \
        /usr/share/fish /var/lib /var/log /srv -xdev \( -name '*connector*' -o -name "$PKG*" \) 2>/dev/null || true; } | sort
}
leftovers >"$work/before"

started=$SECONDS
if [ -n "$binary" ]; then
    deb="$(DEB_COMPRESS="${DEB_COMPRESS:-zstd}" DEB_COMPRESS_LEVEL="${DEB_COMPRESS_LEVEL:-1}" \
        bash scripts/build-deb.sh --binary "$binary" --out "$work")"
else
    deb="$(bash scripts/build-deb.sh --out "$work")"
fi
ok "built $(basename "$deb") ($(du -h "$deb" | cut -f1), $((SECONDS - started)) s)"

dpkg --install "$deb" >"$work/install.log" 2>&1 || { cat "$work/install.log"; fail "dpkg --install"; }
check "dpkg --install: $PKG is installed" \
    test "$(dpkg-query -W -f='${db:Status-Status}' "$PKG")" = installed

# Files and modes.
mode_is() { # PATH MODE OWNER:GROUP
    local got
    got="$(stat -c '%a %U:%G' "$1" 2>/dev/null)" || { echo "  $1 is missing"; return 1; }
    [ "$got" = "$2 $3" ] || { echo "  $1 is $got, not $2 $3"; return 1; }
}
all_modes() {
    local bad=0
    while read -r path mode owner; do mode_is "$path" "$mode" "$owner" || bad=1; done
    return $bad
}
check "files and modes: binary, units, sysusers.d, tmpfiles.d, config, mappings, docs, man page, completions" all_modes <<'LIST'
/usr/bin/connector 755 root:root
/usr/lib/systemd/system/connector.service 644 root:root
/usr/lib/systemd/system/connector-reconcile.service 644 root:root
/usr/lib/systemd/system/connector-reconcile.timer 644 root:root
/usr/lib/sysusers.d/connector.conf 644 root:root
/usr/lib/tmpfiles.d/connector.conf 644 root:root
/etc/connector 755 root:root
/etc/connector/config.toml 644 root:root
/etc/connector/credentials 700 root:root
/etc/connector/mappings/hub/person.toml 644 root:root
/usr/share/doc/york-connector/README.md.gz 644 root:root
/usr/share/doc/york-connector/changelog.gz 644 root:root
/usr/share/doc/york-connector/copyright 644 root:root
/usr/share/man/man1/connector.1.gz 644 root:root
/usr/share/man/man1/connector-config-check.1.gz 644 root:root
/usr/share/bash-completion/completions/connector 644 root:root
/usr/share/zsh/vendor-completions/_connector 644 root:root
/usr/share/fish/vendor_completions.d/connector.fish 644 root:root
/var/lib/connector 700 connector:connector
/var/lib/connector/spool 700 connector:connector
/srv/connector/inbox 750 root:connector
LIST
check "docs and man pages are gzip -9n (Debian policy 12.3)" \
    gzip -t /usr/share/doc/york-connector/README.md.gz /usr/share/doc/york-connector/changelog.gz /usr/share/man/man1/connector.1.gz
conffiles="$(dpkg-query -W -f='${Conffiles}' "$PKG")"
check "/etc/connector/config.toml and the mappings are conffiles" \
    bash -c '[[ "$1" == *"/etc/connector/config.toml "* && "$1" == *"/etc/connector/mappings/hub/person.toml "* ]]' _ "$conffiles"

# The service user.
IFS=: read -r _ _ uid gid _ home shell < <(getent passwd connector) || fail "no user connector"
check "user connector: system uid $uid, home $home, shell $shell, group $(getent group "$gid" | cut -d: -f1)" \
    bash -c '[ "$1" -lt 1000 ] && [ "$2" = /var/lib/connector ] && [ "$3" = /usr/sbin/nologin ] && [ "$(getent group "$4" | cut -d: -f1)" = connector ]' \
    _ "$uid" "$home" "$shell" "$gid"
check "neither unit is enabled on a first installation (the config has no destination yet)" \
    bash -c '! ls /etc/systemd/system/*.wants/connector* 2>/dev/null | grep -q .'

# The installed units, as systemd reads them.
units=("${UNITS[@]/#//usr/lib/systemd/system/}")
verify="$(systemd-analyze verify --no-pager "${units[@]}" 2>&1)" || fail "systemd-analyze verify: $verify"
ours="$(grep -E 'connector(-reconcile)?\.(service|timer)' <<<"$verify" || true)"
check "systemd-analyze verify: the installed units verify without a word about them" test -z "$ours"
for unit in "${units[@]::2}"; do
    level="$(systemd-analyze security --offline=true --no-pager "$unit" 2>&1 | grep 'Overall exposure level')"
    check "systemd-analyze security $(basename "$unit"): ${level#*: }" \
        bash -c 'awk -v l="$(cut -d: -f2 <<<"$1" | awk "{print \$1}")" "BEGIN{exit !(l <= 2.0)}" && [[ "$1" == *OK* ]]' _ "$level"
done

# The binary and the installed configuration.
version="$(connector --version)"
check "connector --version: $(paste -sd' ' <<<"$version" | tr -s ' ')" \
    bash -c '[[ "$1" == *"commit:"*"build date:"*"target:"*"schema version:"* ]]' _ "$version"
config_check="$(runuser -u connector -- connector config check 2>&1)" || { echo "$config_check"; fail "connector config check"; }
check "connector config check (as user connector, on /etc/connector/config.toml): $(tail -1 <<<"$config_check")" \
    grep -q '^ready: 0 failed' <<<"$config_check"
check "the state database it made is owner-only" mode_is /var/lib/connector/state.db 600 connector:connector

# Documentation and completion.
man_text="$(MANWIDTH=100 MANPAGER=cat man connector 2>&1)" || fail "man connector: $man_text"
check "man connector renders (NAME, EXIT STATUS, ENVIRONMENT)" \
    bash -c '[[ "$1" == *NAME*"EXIT STATUS"*CONNECTOR_LOG* ]]' _ "$man_text"
check "man connector-config-check renders" bash -c 'MANPAGER=cat man connector-config-check 2>&1 | grep -q "^NAME"'
completion="$(bash -c 'source /usr/share/bash-completion/completions/connector; complete -p connector' 2>&1)"
check "bash completion loads: $completion" grep -q -- '-F _connector connector$' <<<"$completion"
for shell in zsh fish; do
    command -v "$shell" >/dev/null || continue
    script=/usr/share/zsh/vendor-completions/_connector
    [ "$shell" = fish ] && script=/usr/share/fish/vendor_completions.d/connector.fish
    check "$shell reads its completion" "$shell" -n "$script"
done

# Upgrade over a locally edited conffile: the edit stays, the state stays.
echo "# local edit by package-test" >>/etc/connector/config.toml
dpkg --install --force-confold "$deb" >"$work/upgrade.log" 2>&1 || { cat "$work/upgrade.log"; fail "dpkg --install (upgrade)"; }
check "upgrade (dpkg -i again): the admin's edit to config.toml and the state database are kept" \
    bash -c 'grep -q "local edit by package-test" /etc/connector/config.toml && [ -f /var/lib/connector/state.db ]'

# Remove keeps the configuration, secrets and state; purge removes them.
dpkg --remove "$PKG" >"$work/remove.log" 2>&1 || { cat "$work/remove.log"; fail "dpkg --remove"; }
check "dpkg --remove: binary and units gone; config, mappings, state and user kept" bash -c '
    [ "$(dpkg-query -W -f="\${db:Status-Status}" york-connector)" = config-files ] &&
    [ ! -e /usr/bin/connector ] && [ ! -e /usr/lib/systemd/system/connector.service ] &&
    grep -q "local edit" /etc/connector/config.toml && [ -f /etc/connector/mappings/hub/person.toml ] &&
    [ -f /var/lib/connector/state.db ] && getent passwd connector >/dev/null'
dpkg --purge "$PKG" >"$work/purge.log" 2>&1 || { cat "$work/purge.log"; fail "dpkg --purge"; }
check "dpkg --purge: config, mappings, credentials, state and /srv/connector gone" bash -c '
    ! dpkg-query -W -f="\${db:Status-Status}" york-connector 2>/dev/null | grep -qv "^not-installed$" &&
    [ ! -e /etc/connector ] && [ ! -e /var/lib/connector ] && [ ! -e /srv/connector ]'
check "purge keeps the connector user (Debian: files elsewhere may still be its)" \
    bash -c 'getent passwd connector >/dev/null'
if [ "$user_existed" = no ]; then
    userdel connector
    getent group connector >/dev/null && groupdel connector
fi
leftovers >"$work/after"
check "nothing left: the same files under the connector's names as before, and no connector user" bash -c '
    diff "$1" "$2" && { [ "$3" = yes ] || ! getent passwd connector >/dev/null; }' _ "$work/before" "$work/after" "$user_existed"

echo "package-test: $passed checks passed ($((SECONDS - started)) s)"
