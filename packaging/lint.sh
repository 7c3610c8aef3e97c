#!/usr/bin/env bash
# lint.sh - Debian's lintian on the .deb and rpmlint on the .rpm. Fails on any error or
# warning: what the packages deliberately do differently is explained where it is
# allowed, in packaging/deb/lintian-overrides (shipped in the .deb) and in
# packaging/rpm/rpmlint.toml.
#
# Usage: packaging/lint.sh [PATH.deb [PATH.rpm]]
#   Default packages: those packaging/build.sh writes to target/package/.
#   Run as root on Debian, it installs lintian and rpmlint when they are missing.

set -euo pipefail

PROG=${0##*/}
log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() { log "error: $*"; exit 1; }

ROOT=$(cd -- "$(dirname -- "$0")/.." && pwd)
version=$(awk -F'"' '/^\[/ { p = ($0 == "[package]") } p && /^version[ \t]*=/ { print $2; exit }' \
    "$ROOT/Cargo.toml")
version=${version//-/\~}
DEB=${1:-$ROOT/target/package/ker-agent_${version}_$(dpkg --print-architecture).deb}
RPM=${2:-$ROOT/target/package/ker-agent-${version}-1.$(uname -m).rpm}
[ -f "$DEB" ] || die "no package at $DEB (run packaging/build.sh)"
[ -f "$RPM" ] || die "no package at $RPM (run packaging/build.sh)"

missing=()
command -v lintian >/dev/null || missing+=(lintian)
command -v rpmlint >/dev/null || missing+=(rpmlint)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        die "missing ${missing[*]}: apt-get install -y ${missing[*]}"
    fi
    log "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q "${missing[@]}" >&2 ||
        { apt-get update -q >&2 && apt-get install -y -q "${missing[@]}" >&2; }
fi

failed=0

# lintian's tags at its default level (errors and warnings), with the package's own
# overrides applied; --fail-on makes either one fail.
log "lintian $DEB"
if ! lintian --fail-on error,warning "$DEB"; then
    log "FAIL: lintian reports errors or warnings for $DEB"
    failed=1
fi

# rpmlint fails only on errors by itself: a warning that no filter explains fails too.
log "rpmlint $RPM"
rpm_failed=0
rpmlint_out=$(rpmlint -c "$ROOT/packaging/rpm/rpmlint.toml" "$RPM" 2>&1) || rpm_failed=1
printf '%s\n' "$rpmlint_out"
if grep -qE '^[^ ]+: [EW]: ' <<<"$rpmlint_out"; then
    rpm_failed=1
fi
if [ "$rpm_failed" != 0 ]; then
    log "FAIL: rpmlint reports errors or warnings for $RPM"
    failed=1
fi

if [ "$failed" != 0 ]; then
    exit 1
fi
log "PASS: lintian and rpmlint report no error and no warning"
