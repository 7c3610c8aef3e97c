#!/usr/bin/env bash
# test-rpm.sh - package test of the .rpm: the files it installs (with owners and
# modes) and its scriptlets (user creation, systemd enable/start/restart/stop), read
# from the package with rpm -qp. (It is installed and driven for real on an RPM
# distribution, not here: this host boots only a Debian box.)
#
# Usage: packaging/test-rpm.sh [PATH.rpm]
#   Default package: target/package/ker-agent-<version>-1.<arch>.rpm (from build.sh).
#
# Prints one PASS or FAIL line per check and exits non-zero if any check failed.

# Single-quoted $ expressions below are meant for eval.
# shellcheck disable=SC2016

set -euo pipefail

ROOT=$(cd -- "$(dirname -- "$0")/.." && pwd)
version=$(awk -F'"' '/^\[/ { p = ($0 == "[package]") } p && /^version[ \t]*=/ { print $2; exit }' \
    "$ROOT/Cargo.toml")
RPM=${1:-$ROOT/target/package/ker-agent-${version//-/\~}-1.$(uname -m).rpm}
[ -f "$RPM" ] || { echo "test-rpm.sh: no package at $RPM (run packaging/build.sh)" >&2; exit 1; }
command -v rpm >/dev/null || { echo "test-rpm.sh: rpm not found: apt-get install -y rpm" >&2; exit 1; }

FAILURES=0
CHECKS=0
check() {
    local description=$1; shift
    CHECKS=$((CHECKS + 1))
    if "$@"; then printf 'PASS: %s\n' "$description"; else FAILURES=$((FAILURES + 1)); printf 'FAIL: %s\n' "$description"; fi
}

# "mode owner group path" for every file of the package.
listing=$(rpm -qp --queryformat '[%{FILEMODES:perms} %{FILEUSERNAME} %{FILEGROUPNAME} %{FILENAMES}\n]' "$RPM")
scripts=$(rpm -qp --scripts "$RPM")
configs=$(rpm -qpc "$RPM")
has_file() { grep -qxF -- "$1" <<<"$listing"; }
has_script() { grep -qE -- "$1" <<<"$scripts"; }

check "rpm -qpl lists the binary (root, 0755)" has_file "-rwxr-xr-x root root /usr/bin/ker-agent"
check "rpm -qpl lists the unit" has_file "-rw-r--r-- root root /usr/lib/systemd/system/ker-agent.service"
check "rpm -qpl lists the sysusers file" has_file "-rw-r--r-- root root /usr/lib/sysusers.d/ker-agent.conf"
check "rpm -qpl lists the alerting rules" has_file "-rw-r--r-- root root /usr/share/ker-agent/prometheus/alerts.yml"
check "rpm -qpl lists the node dashboard" has_file "-rw-r--r-- root root /usr/share/ker-agent/grafana/ker-agent-node.json"
check "rpm -qpl lists the instance dashboard" has_file "-rw-r--r-- root root /usr/share/ker-agent/grafana/ker-agent-instance.json"
check "rpm -qpl lists the manual page" has_file "-rw-r--r-- root root /usr/share/man/man1/ker-agent.1.gz"
check "rpm -qpl lists the bash completion" has_file "-rw-r--r-- root root /usr/share/bash-completion/completions/ker-agent"
check "rpm -qpl lists the zsh completion" has_file "-rw-r--r-- root root /usr/share/zsh/site-functions/_ker-agent"
check "rpm -qpl lists the fish completion" has_file "-rw-r--r-- root root /usr/share/fish/vendor_completions.d/ker-agent.fish"
check "rpm -qpl lists /etc/ker-agent (root:ker-agent 0750)" has_file "drwxr-x--- root ker-agent /etc/ker-agent"
check "rpm -qpl lists an empty instances.d (root:ker-agent 0750)" \
    has_file "drwxr-x--- root ker-agent /etc/ker-agent/instances.d"
check "rpm -qpl lists agent.toml (root:ker-agent 0640)" has_file "-rw-r----- root ker-agent /etc/ker-agent/agent.toml"
check "agent.toml is a config file (kept on upgrade)" grep -qxF /etc/ker-agent/agent.toml <<<"$configs"
check "rpm -qp --scripts: the user is created before install" has_script 'useradd -r .*ker-agent'
check "rpm -qp --scripts: the group is created before install" has_script 'groupadd -r ker-agent'
check "rpm -qp --scripts: enabled and started on install" has_script 'systemctl enable ker-agent.service'
check "rpm -qp --scripts: restarted on upgrade" has_script 'systemctl restart ker-agent.service'
check "rpm -qp --scripts: stopped and disabled on erase" has_script 'systemctl stop ker-agent.service'
check "rpm -qp --scripts: systemd reloaded" has_script 'systemctl daemon-reload'
check "rpm -qp --requires: no OpenSSL (TLS is rustls)" eval '! rpm -qp --requires "$RPM" | grep -q libssl'
check "rpm -qp --requires: the user tools" eval 'rpm -qp --requires "$RPM" | grep -qx /usr/sbin/useradd'
check "rpm -qp --recommends: redis (a host may run Pika only)" eval 'rpm -qp --recommends "$RPM" | grep -qx redis'
check "rpm -qp --changelog: the newest entry is ${version//-/\~}-1, from packaging/changelog" \
    eval '[[ "$(rpm -qp --changelog "$RPM" | sed -n 1p)" == *" - ${version//-/\~}-1" ]]'
check "rpm -qp: Packager, URL and Group are set" \
    eval '! rpm -qp --queryformat "%{PACKAGER}\n%{URL}\n%{GROUP}\n" "$RPM" | grep -qxE "|\(none\)|Unspecified"'

if [ "$FAILURES" -gt 0 ]; then
    printf 'FAIL: %d of %d checks failed\n' "$FAILURES" "$CHECKS"
    exit 1
fi
printf 'PASS: all %d rpm checks passed\n' "$CHECKS"
