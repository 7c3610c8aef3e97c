#!/usr/bin/env bash
# build.sh - build the ker-agent release binary and its .deb and .rpm packages.
#
# Usage: packaging/build.sh            (from any directory)
#
# Output:
#   target/package/ker-agent_<version>_<deb-arch>.deb      e.g. ker-agent_0.1.0_amd64.deb
#   target/package/ker-agent-<version>-1.<arch>.rpm        e.g. ker-agent-0.1.0-1.x86_64.rpm
#
# Needs cargo (Rust >= the crate's rust-version), dpkg-deb, binutils and rpmbuild. On a
# Debian host, run as root, it installs the missing binutils and rpm packages with
# apt-get. The .deb is assembled with plain dpkg-deb from a staged tree (no debhelper).
#
# Environment (optional; set the first two to your organisation's when you build
# packages you distribute):
#   KER_AGENT_MAINTAINER   Maintainer of the .deb and Packager of the .rpm
#   KER_AGENT_HOMEPAGE     Homepage of the .deb and URL of the .rpm
#   KER_AGENT_SKIP_RPM=1   build only the .deb
#
# The release notes of both packages come from packaging/changelog (Debian format),
# whose newest entry must be the version being built.

set -euo pipefail
umask 022

PROG=${0##*/}
log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() { log "error: $*"; exit 1; }

ROOT=$(cd -- "$(dirname -- "$0")/.." && pwd)
PKG_DIR="$ROOT/packaging"
OUT_DIR="$ROOT/target/package"
WORK="$OUT_DIR/work"
MAINTAINER=${KER_AGENT_MAINTAINER:-ker-agent maintainers <ker-agent@example.org>}
HOMEPAGE=${KER_AGENT_HOMEPAGE:-https://ker-agent.example.org/}
CHANGELOG="$PKG_DIR/changelog"
RPM_RELEASE=1
cd -- "$ROOT"

# ------------------------------------------------------------------------- tools

apt_install() {
    [ "$(id -u)" = 0 ] || die "missing $*; install it (apt-get install $*) or run as root"
    command -v apt-get >/dev/null || die "missing $* and no apt-get to install it"
    log "installing: $*"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q "$@" >&2 || { apt-get update -q >&2 && apt-get install -y -q "$@" >&2; }
}

ensure_tools() {
    local missing=()
    if ! command -v cargo >/dev/null && [ -x "${HOME:-/root}/.cargo/bin/cargo" ]; then
        PATH="${HOME:-/root}/.cargo/bin:$PATH"
    fi
    command -v cargo >/dev/null ||
        die "cargo not found: install Rust (https://rustup.rs; Debian's rustc is too old for this crate)"
    command -v dpkg-deb >/dev/null || die "dpkg-deb not found: the .deb is built on a Debian-based host"
    command -v strip >/dev/null && command -v objdump >/dev/null || missing+=(binutils)
    if [ "${KER_AGENT_SKIP_RPM:-0}" != 1 ]; then
        command -v rpmbuild >/dev/null || missing+=(rpm)
    fi
    if [ ${#missing[@]} -gt 0 ]; then
        apt_install "${missing[@]}"
    fi
}

# ------------------------------------------------------------------------ helpers

# The version in Cargo.toml's [package] table.
crate_version() {
    awk -F'"' '/^\[/ { in_pkg = ($0 == "[package]") }
               in_pkg && /^version[ \t]*=/ { print $2; exit }' Cargo.toml
}

# $1 made safe as the replacement of a sed s|…|…| command.
sed_replacement() {
    printf '%s' "$1" | sed 's/[&|\\]/\\&/g'
}

# dpkg Depends entries for the shared libraries the binary needs.
shlib_depends() {
    local binary=$1 glibc lib deps=() libgcc=""
    glibc=$(objdump -T "$binary" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/^GLIBC_//' | sort -uV | tail -n 1)
    [ -n "$glibc" ] || die "cannot read the glibc symbol versions of $binary"
    deps+=("libc6 (>= $glibc)")
    for lib in $(objdump -p "$binary" | awk '$1 == "NEEDED" { print $2 }'); do
        case $lib in
            libc.so.*|libm.so.*|libpthread.so.*|libdl.so.*|librt.so.*|ld-linux*.so.*) ;;
            libgcc_s.so.1) libgcc="libgcc-s1" ;;
            *) die "$binary needs $lib: add its Debian package to shlib_depends in $PROG" ;;
        esac
    done
    [ -z "$libgcc" ] || deps+=("$libgcc")
    local IFS=,
    printf '%s' "${deps[*]}" | sed 's/,/, /g'
}

# The version of the newest entry of packaging/changelog.
changelog_version() {
    sed -n '1s/^ker-agent (\([^)]*\)) .*/\1/p' "$CHANGELOG"
}

# packaging/changelog (Debian format) as the entries of an RPM %changelog, newest first:
#   * Mon Nov 30 2026 Name <address> - 0.1.0-1
#   - the first line of an item
#     its continuation
# A "%" is doubled: rpm expands macros in %changelog.
rpm_changelog() {
    awk -v release="$RPM_RELEASE" '
        /^ker-agent \(/      { version = $2; gsub(/[()]/, "", version); n = 0; next }
        /^  \* /             { lines[++n] = "- " substr($0, 5); gsub(/%/, "%%", lines[n]); next }
        /^    [^ ]/          { lines[++n] = "  " substr($0, 5); gsub(/%/, "%%", lines[n]); next }
        /^ -- /              {
            split(substr($0, 5), trailer, /  /)
            gsub(/%/, "%%", trailer[1])
            # Only an RFC 5322 date goes to date(1), through the shell.
            valid = trailer[2] ~ /^[A-Z][a-z][a-z], [0-9][0-9]? [A-Z][a-z][a-z] [0-9][0-9][0-9][0-9] [0-9][0-9]:[0-9][0-9]:[0-9][0-9] [+-][0-9][0-9][0-9][0-9]$/
            cmd = "date -u -d \"" trailer[2] "\" +\"%a %b %d %Y\""
            day = ""
            if (!valid || (cmd | getline day) <= 0 || day == "") {
                print "unreadable date in the changelog: " trailer[2] > "/dev/stderr"
                exit 1
            }
            close(cmd)
            print "* " day " " trailer[1] " - " version "-" release
            for (i = 1; i <= n; i++) print lines[i]
            print ""
            next
        }
    ' "$CHANGELOG"
}

# The files both packages install, staged under $1; $2 is where zsh finds completions
# on that distribution.
stage_common() {
    local root=$1
    install -d -m 0755 "$root/usr/bin" "$root/usr/lib/systemd/system" "$root/usr/lib/sysusers.d" \
        "$root/etc/ker-agent/instances.d" "$root/etc/logrotate.d" "$root/usr/share/doc/ker-agent"
    strip --remove-section=.comment -o "$root/usr/bin/ker-agent" "$BINARY"
    chmod 0755 "$root/usr/bin/ker-agent"
    install -m 0644 systemd/ker-agent.service "$root/usr/lib/systemd/system/ker-agent.service"
    install -m 0644 "$PKG_DIR/files/sysusers.conf" "$root/usr/lib/sysusers.d/ker-agent.conf"
    install -m 0644 "$PKG_DIR/files/agent.toml" "$root/etc/ker-agent/agent.toml"
    install -m 0644 "$PKG_DIR/files/example.toml.disabled" \
        "$root/etc/ker-agent/instances.d/example.toml.disabled"
    install -m 0644 "$PKG_DIR/files/logrotate" "$root/etc/logrotate.d/ker-agent"
    install -m 0644 README.md "$root/usr/share/doc/ker-agent/README.md"
    install -d -m 0755 "$root/usr/share/ker-agent/prometheus"
    install -m 0644 operator/prometheus/alerts.yml "$root/usr/share/ker-agent/prometheus/alerts.yml"
    install -d -m 0755 "$root/usr/share/ker-agent/grafana"
    install -m 0644 operator/grafana/ker-agent-node.json operator/grafana/ker-agent-instance.json \
        "$root/usr/share/ker-agent/grafana/"
    # The manual page and completions, made by the binary from its own clap definitions.
    install -d -m 0755 "$root/usr/share/man/man1" "$root/usr/share/bash-completion/completions" \
        "$root/usr/share/fish/vendor_completions.d" "$root/$2"
    "$BINARY" generate man | gzip -9n >"$root/usr/share/man/man1/ker-agent.1.gz"
    "$BINARY" generate bash >"$root/usr/share/bash-completion/completions/ker-agent"
    "$BINARY" generate fish >"$root/usr/share/fish/vendor_completions.d/ker-agent.fish"
    "$BINARY" generate zsh >"$root/$2/_ker-agent"
    chmod 0644 "$root/usr/share/man/man1/ker-agent.1.gz" "$root/usr/share/bash-completion/completions/ker-agent" \
        "$root/usr/share/fish/vendor_completions.d/ker-agent.fish" "$root/$2/_ker-agent"
}

# Validates the shipped agent.toml with the built binary (needs /usr/bin/redis-server,
# which the packages depend on; skipped without it).
check_default_config() {
    local dir="$WORK/check"
    if [ ! -x /usr/bin/redis-server ]; then
        log "skipping 'ker-agent check' of the default config: /usr/bin/redis-server is not installed"
        return 0
    fi
    rm -rf -- "$dir"
    install -d "$dir/instances.d"
    sed 's#^manifest_dir = .*#manifest_dir = "instances.d"#' "$PKG_DIR/files/agent.toml" >"$dir/agent.toml"
    cp "$PKG_DIR/files/example.toml.disabled" "$dir/instances.d/example.toml"
    "$BINARY" check --config "$dir/agent.toml" >&2 || die "the default agent.toml or the example manifest is invalid"
}

# ------------------------------------------------------------------------- build

ensure_tools
VERSION=$(crate_version)
[ -n "$VERSION" ] || die "cannot read the version from Cargo.toml"
# A Cargo pre-release (0.2.0-rc.1) sorts before the release with "~" in both formats.
PKG_VERSION=${VERSION//-/\~}
[ "$(changelog_version)" = "$PKG_VERSION" ] ||
    die "the newest entry of $CHANGELOG is '$(changelog_version)', not $PKG_VERSION: add an entry for $PKG_VERSION"
DEB_ARCH=$(dpkg --print-architecture)
RPM_ARCH=$(uname -m)

if [ -f Cargo.lock ]; then
    cargo build --release --locked
else
    cargo build --release
fi
BINARY="${CARGO_TARGET_DIR:-$ROOT/target}/release/ker-agent"
[ -x "$BINARY" ] || die "$BINARY was not built"
[ "$("$BINARY" version)" = "ker-agent $VERSION" ] || die "$BINARY does not report version $VERSION"
check_default_config

rm -rf -- "$WORK"
install -d "$OUT_DIR" "$WORK"

# ----------------------------------------------------------------------- .deb
DEB_ROOT="$WORK/deb"
stage_common "$DEB_ROOT" usr/share/zsh/vendor-completions
install -m 0644 "$PKG_DIR/files/copyright" "$DEB_ROOT/usr/share/doc/ker-agent/copyright"
gzip -9n <"$CHANGELOG" >"$DEB_ROOT/usr/share/doc/ker-agent/changelog.gz"
chmod 0644 "$DEB_ROOT/usr/share/doc/ker-agent/changelog.gz"
install -D -m 0644 "$PKG_DIR/deb/lintian-overrides" "$DEB_ROOT/usr/share/lintian/overrides/ker-agent"
install -d -m 0755 "$DEB_ROOT/DEBIAN"
for script in postinst prerm postrm; do
    install -m 0755 "$PKG_DIR/deb/$script" "$DEB_ROOT/DEBIAN/$script"
done
install -m 0644 "$PKG_DIR/deb/conffiles" "$DEB_ROOT/DEBIAN/conffiles"
(cd -- "$DEB_ROOT" && find usr etc -type f -print0 | sort -z | xargs -0 md5sum) >"$DEB_ROOT/DEBIAN/md5sums"
chmod 0644 "$DEB_ROOT/DEBIAN/md5sums"
INSTALLED_SIZE=$(du -sk --exclude=DEBIAN "$DEB_ROOT" | cut -f1)
SHLIBS=$(shlib_depends "$DEB_ROOT/usr/bin/ker-agent")
sed -e "s|@VERSION@|$PKG_VERSION|" -e "s|@ARCH@|$DEB_ARCH|" \
    -e "s|@INSTALLED_SIZE@|$INSTALLED_SIZE|" -e "s|@SHLIBS@|$SHLIBS|" \
    -e "s|@HOMEPAGE@|$(sed_replacement "$HOMEPAGE")|" -e "s|@MAINTAINER@|$(sed_replacement "$MAINTAINER")|" \
    "$PKG_DIR/deb/control.in" >"$DEB_ROOT/DEBIAN/control"
DEB="$OUT_DIR/ker-agent_${PKG_VERSION}_${DEB_ARCH}.deb"
rm -f -- "$DEB"
dpkg-deb --root-owner-group -Zxz --build "$DEB_ROOT" "$DEB" >&2
log "built $DEB"

# ----------------------------------------------------------------------- .rpm
if [ "${KER_AGENT_SKIP_RPM:-0}" != 1 ]; then
    RPM_ROOT="$WORK/rpm-root"
    stage_common "$RPM_ROOT" usr/share/zsh/site-functions
    install -d -m 0750 "$RPM_ROOT/var/lib/ker-agent" "$RPM_ROOT/var/log/ker-agent"
    SPEC="$WORK/ker-agent.spec"
    { cat "$PKG_DIR/rpm/ker-agent.spec"; printf '\n%%changelog\n'; rpm_changelog; } >"$SPEC"
    RPM="$OUT_DIR/ker-agent-${PKG_VERSION}-${RPM_RELEASE}.${RPM_ARCH}.rpm"
    rm -f -- "$RPM"
    rpmbuild -bb --quiet --target "$RPM_ARCH" \
        --define "_topdir $WORK/rpmbuild" \
        --define "_build_id_links none" \
        --define "ker_version $PKG_VERSION" \
        --define "ker_release $RPM_RELEASE" \
        --define "ker_packager $MAINTAINER" \
        --define "ker_url $HOMEPAGE" \
        --define "ker_stage $RPM_ROOT" \
        "$SPEC" >&2
    mv -- "$WORK/rpmbuild/RPMS/$RPM_ARCH/ker-agent-${PKG_VERSION}-${RPM_RELEASE}.${RPM_ARCH}.rpm" "$RPM"
    log "built $RPM"
fi

rm -rf -- "$WORK"
