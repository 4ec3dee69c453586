#!/usr/bin/env bash
# Builds the Debian package york-connector_VERSION-REVISION_ARCH.deb with dpkg-deb alone (no cargo-deb: it
# would be one more tool to compile on every fresh machine, for what is a file layout and four small scripts;
# the layout is in packaging/debian/ and below).
#
#   scripts/build-deb.sh [--binary PATH] [--out DIR]
#
# Without --binary it builds the release binary (`cargo build --release --locked`): a real release. With it
# the package holds that binary (scripts/package-test.sh passes the debug one, already built by `cargo test`).
# The man pages and the bash, zsh and fish completions are written by the binary itself (`connector generate`)
# from its clap definitions, so they cannot drift from --help. DIR defaults to target/debian. Environment:
# DEB_REVISION (default 1); DEB_COMPRESS (xz, the default, readable by every dpkg; or gzip, zstd, none) and
# DEB_COMPRESS_LEVEL for quicker test builds (xz takes minutes on a debug binary, zstd -z1 a second or two).
# Prints the package's path.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

binary="" out="target/debian"
while [ $# -gt 0 ]; do
    case "$1" in
        --binary) binary="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        *) echo "build-deb: unknown argument $1 (usage: scripts/build-deb.sh [--binary PATH] [--out DIR])" >&2; exit 2 ;;
    esac
done
if [ -z "$binary" ]; then
    echo "build-deb: building the release binary..." >&2
    cargo build --release --locked --bin connector >&2
    binary=target/release/connector
fi
[ -x "$binary" ] || { echo "build-deb: $binary is not an executable" >&2; exit 1; }

# The shared libraries the binary needs (libc, libgcc_s), as package dependencies, found the way
# dh_shlibdeps does; without dpkg-dev the two a Rust binary on glibc links.
shared_library_depends() {
    local dir
    dir="$(mktemp -d -p "$work")"
    mkdir "$dir/debian"
    printf 'Source: york-connector\n\nPackage: york-connector\nArchitecture: any\n' >"$dir/debian/control"
    if command -v dpkg-shlibdeps >/dev/null &&
        (cd "$dir" && dpkg-shlibdeps -O "$root/usr/bin/connector" 2>/dev/null) | sed -n 's/^shlibs:Depends=//p' | grep .; then
        return
    fi
    echo "libc6, libgcc-s1"
}

umask 022
version="$("$binary" --version | sed -n '1s/^connector //p')"
commit="$("$binary" --version | sed -n 's/^commit: *//p')"
case "$commit" in
    *+dirty | unknown) echo "build-deb: warning: the binary was built from commit $commit; a release is built from a clean checkout" >&2 ;;
esac
deb_version="$version-${DEB_REVISION:-1}"
arch="$(dpkg --print-architecture)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
root="$work/root"
doc="$root/usr/share/doc/york-connector"

# Files, with the modes Debian expects (root-owned: dpkg-deb --root-owner-group).
install -D -m 0755 "$binary" "$root/usr/bin/connector"
for unit in systemd/*.service systemd/*.timer; do
    install -D -m 0644 "$unit" "$root/usr/lib/systemd/system/$(basename "$unit")"
done
install -D -m 0644 packaging/debian/connector.sysusers "$root/usr/lib/sysusers.d/connector.conf"
install -D -m 0644 packaging/debian/connector.tmpfiles "$root/usr/lib/tmpfiles.d/connector.conf"
install -D -m 0644 packaging/debian/config.toml "$root/etc/connector/config.toml"
install -d -m 0700 "$root/etc/connector/credentials"
for partner in mappings/*/; do
    install -d -m 0755 "$root/etc/connector/mappings/$(basename "$partner")"
    install -m 0644 "$partner"*.toml "$root/etc/connector/mappings/$(basename "$partner")/"
done
install -D -m 0644 packaging/debian/copyright "$doc/copyright"
gzip -9n -c README.md >"$doc/README.md.gz"
gzip -9n -c mappings/README.md >"$doc/mappings-README.md.gz"
gzip -9n -c CHANGELOG.md >"$doc/changelog.gz"
install -d -m 0755 "$root/usr/share/man/man1" "$root/usr/share/bash-completion/completions" \
    "$root/usr/share/zsh/vendor-completions" "$root/usr/share/fish/vendor_completions.d"
"$binary" generate man "$root/usr/share/man/man1" >/dev/null
gzip -9n "$root"/usr/share/man/man1/*.1
"$binary" generate completions bash "$root/usr/share/bash-completion/completions" >/dev/null
"$binary" generate completions zsh "$root/usr/share/zsh/vendor-completions" >/dev/null
"$binary" generate completions fish "$root/usr/share/fish/vendor_completions.d" >/dev/null

# Control area: every file under /etc is a conffile (as debhelper does), the scripts, checksums.
install -d -m 0755 "$root/DEBIAN"
install -m 0755 packaging/debian/postinst packaging/debian/prerm packaging/debian/postrm "$root/DEBIAN/"
(cd "$root" && find etc -type f | sort | sed 's|^|/|') >"$root/DEBIAN/conffiles"
(cd "$root" && find usr -type f -print0 | sort -z | xargs -0 md5sum) >"$root/DEBIAN/md5sums"
chmod 0644 "$root/DEBIAN/conffiles" "$root/DEBIAN/md5sums"
depends="$(shared_library_depends), init-system-helpers (>= 1.54~)"
sed -e "s/@VERSION@/$deb_version/" -e "s/@ARCH@/$arch/" -e "s/@DEPENDS@/$depends/" \
    -e "s/@SIZE@/$(du -sk --exclude=DEBIAN "$root" | cut -f1)/" packaging/debian/control >"$root/DEBIAN/control"

mkdir -p "$out"
deb="$out/york-connector_${deb_version}_$arch.deb"
dpkg-deb --root-owner-group -Z"${DEB_COMPRESS:-xz}" ${DEB_COMPRESS_LEVEL:+-z"$DEB_COMPRESS_LEVEL"} --build "$root" "$deb" >/dev/null
echo "$deb"
