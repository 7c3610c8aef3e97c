#!/usr/bin/env bash
# test-deb.sh - package test: install the ker-agent .deb into a booted Debian bookworm
# system (systemd as PID 1 in a systemd-nspawn container, see systemd-box.sh) and check
# the service end to end: install, instances from manifests, reload, restart, stop and
# start of the agent without touching the instances, adoption, crash restart, log
# rotation, upgrade and removal.
#
# Usage: packaging/test-deb.sh [PATH.deb]
#   Default package: target/package/ker-agent_<version>_<arch>.deb (built with
#   packaging/build.sh when it does not exist). Must run as root.
#
# The rootfs is created once and cached in target/systemd-box/rootfs (delete it to
# start from scratch). The box boots with --volatile=overlay: everything the test
# writes is thrown away when the box stops, so the cache stays clean.
#
# Prints one PASS or FAIL line per check and exits non-zero if any check failed.

# Single-quoted $ expressions below are meant for awk or for a shell in the box.
# shellcheck disable=SC2016

set -euo pipefail

PROG=${0##*/}
ROOT=$(cd -- "$(dirname -- "$0")/.." && pwd)
BOX="$ROOT/packaging/systemd-box.sh"
ROOTFS="$ROOT/target/systemd-box/rootfs"
LOGS="$ROOT/target/systemd-box"
UNIT=ker-agent.service
PORTS=(7001 7002)
NAMES=(a b)

log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() { log "error: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (it boots a systemd container)"

# ------------------------------------------------------------------ the package

version=$(awk -F'"' '/^\[/ { p = ($0 == "[package]") } p && /^version[ \t]*=/ { print $2; exit }' \
    "$ROOT/Cargo.toml")
DEB=${1:-$ROOT/target/package/ker-agent_${version//-/\~}_$(dpkg --print-architecture).deb}
if [ $# -eq 0 ] && [ ! -f "$DEB" ]; then
    log "$DEB does not exist; building it"
    KER_AGENT_SKIP_RPM=1 "$ROOT/packaging/build.sh"
fi
[ -f "$DEB" ] || die "no package at $DEB"
DEB=$(realpath -- "$DEB")
# The version the packaged binary reports (a "~" in the package version is a "-").
version=$(dpkg-deb -f "$DEB" Version)
version=${version//\~/-}

# ---------------------------------------------------------------- check helpers

FAILURES=0
CHECKS=0
FINISHED=0
pass() { CHECKS=$((CHECKS + 1)); printf 'PASS: %s\n' "$*"; }
fail() { CHECKS=$((CHECKS + 1)); FAILURES=$((FAILURES + 1)); printf 'FAIL: %s\n' "$*"; }

# check DESCRIPTION CMD [ARG]...: PASS if the command succeeds.
check() {
    local description=$1; shift
    if "$@"; then pass "$description"; else fail "$description"; fi
}

# check_within SECONDS DESCRIPTION CMD [ARG]...: PASS once the command succeeds.
check_within() {
    local seconds=$1 description=$2; shift 2
    if wait_until "$seconds" "$@"; then pass "$description"; else fail "$description (not within ${seconds}s)"; fi
}

# Stops the test: a failed step that everything after it depends on.
abort() {
    fail "$*"
    diagnostics
    printf 'FAIL: package test aborted after %d checks (%d failed)\n' "$CHECKS" "$FAILURES"
    FINISHED=1
    exit 1
}

# Runs a command inside the box.
bx() { "$BOX" exec "$ROOTFS" "$@"; }

# wait_until TIMEOUT_S CMD [ARG]...: polls until the command succeeds.
wait_until() {
    local deadline=$((SECONDS + $1)); shift
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || return 1
        sleep 0.2
    done
}

diagnostics() {
    printf '%s\n' "----- diagnostics -----"
    bx systemctl status --no-pager --lines=0 "$UNIT" || true
    bx journalctl -u "$UNIT" --no-pager --lines=60 || true
    bx ker-agent status || true
    bx sh -c 'tail -n 5 /var/log/ker-agent/*.log' || true
    printf '%s\n' "-----------------------"
}

# ---------------------------------------------------------- queries in the box

CAP_SYS_RESOURCE=24
# cap_mask PID FIELD: a capability mask (CapEff, CapBnd, ...) of a process, in hex.
cap_mask() { bx awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"; }
has_cap() { [ $(( (16#$(cap_mask "$1" "$2") >> CAP_SYS_RESOURCE) & 1 )) = 1 ]; }
hard_nofile() { bx awk '/^Max open files/ { print $5 }' "/proc/$1/limits"; }

ping_ok() { [ "$(bx redis-cli -p "$1" ping 2>/dev/null)" = PONG ]; }

# The pid a Redis server on port $1 reports for itself.
redis_pid() { bx redis-cli -p "$1" info server | tr -d '\r' | awk -F: '$1 == "process_id" { print $2 }'; }

# Whether `ker-agent status` lists instance $1 as running and ready.
status_running() { bx ker-agent status 2>/dev/null | awk -v n="$1" '$1 == n && $4 == "running" && $5 == "yes" { f = 1 } END { exit !f }'; }

# The pid column of `ker-agent status` for instance $1.
status_pid() { bx ker-agent status 2>/dev/null | awk -v n="$1" '$1 == n { print $6 }'; }

all_running() {
    local name port i
    for i in "${!NAMES[@]}"; do
        name=${NAMES[$i]}; port=${PORTS[$i]}
        ping_ok "$port" && status_running "$name" || return 1
    done
}

unit_prop() { bx systemctl show -p "$1" --value "$UNIT"; }
main_pid() { unit_prop MainPID; }
active_state() { bx systemctl is-active "$UNIT" 2>/dev/null || true; }
is_active() { [ "$(active_state)" = active ]; }

# Whether systemd logged a watchdog timeout for the unit (the journal is read first:
# grep -q closing the pipe early would fail the pipeline under pipefail).
watchdog_timed_out() {
    local journal
    journal=$(bx journalctl --no-pager -u "$UNIT") || return 1
    grep -q "Watchdog timeout" <<<"$journal"
}

# signal_and_expect_restart SIGNAL TIMEOUT_S DESCRIPTION: sends SIGNAL to the agent and
# passes once systemd has restarted it (a new main pid, the unit active).
signal_and_expect_restart() {
    local signal=$1 seconds=$2 description=$3 old_main restarts
    old_main=$(main_pid)
    # shellcheck disable=SC2034 # used in the eval below
    restarts=$(unit_prop NRestarts)
    bx kill "-$signal" "$old_main"
    if wait_until "$seconds" eval '[ "$(unit_prop NRestarts)" -gt "$restarts" ] && is_active && [ "$(main_pid)" != "$old_main" ]'; then
        pass "$description"
    else
        fail "$description (not within ${seconds}s: state $(active_state), main pid $(main_pid))"
    fi
}

# Journal lines of the current (or given) invocation of the unit.
journal_of() { bx journalctl --no-pager -o cat "_SYSTEMD_INVOCATION_ID=${1:-$(unit_prop InvocationID)}"; }
# journal_has ERE [INVOCATION] (read first: grep -q closing the pipe early would fail
# the pipeline under pipefail).
journal_has() {
    local journal
    journal=$(journal_of "${2:-}") || return 1
    grep -Eq -- "$1" <<<"$journal"
}

# pids_unchanged WHAT: every instance still runs with the pid recorded in PIDS and
# answers PING.
declare -A PIDS=()
pids_unchanged() {
    local what=$1 i port now ok=1
    for i in "${!NAMES[@]}"; do
        port=${PORTS[$i]}
        now=$(redis_pid "$port" 2>/dev/null || true)
        if [ -n "$now" ] && [ "$now" = "${PIDS[$port]}" ]; then
            pass "$what: redis-server on port $port still pid $now and answers PONG"
        else
            fail "$what: redis-server on port $port was pid ${PIDS[$port]}, now '${now:-not answering}'"
            ok=0
        fi
    done
    [ $ok = 1 ]
}

# adopted_in INVOCATION: the journal of that invocation says each instance was adopted
# (workers adopt right after READY=1; the journal may lag a little).
adopted() { journal_has "Instance adopted\..*instance=\"?$2\"?( |$)" "$1"; }
adopted_in() {
    local name
    for name in "${NAMES[@]}"; do
        if wait_until 10 adopted "$1" "$name"; then
            pass "journal: instance $name adopted (\"Instance adopted.\")"
        else
            fail "journal: no \"Instance adopted.\" for instance $name in this invocation"
        fi
    done
}

not_failed() {
    if bx systemctl is-failed --quiet "$UNIT"; then
        fail "$1: systemctl reports the unit failed"
    else
        pass "$1: unit not failed (state $(active_state), result $(unit_prop Result))"
    fi
}

# run_package LOG DESCRIPTION COMMAND...: a package operation in the box, its output
# kept in $LOGS/LOG.log and shown if it fails.
run_package() {
    local log=$1 description=$2; shift 2
    if bx env DEBIAN_FRONTEND=noninteractive "$@" >"$LOGS/$log.log" 2>&1; then
        pass "$description"
    else
        cat "$LOGS/$log.log"
        fail "$description"
    fi
}

# ------------------------------------------------------------------- the box

"$BOX" create "$ROOTFS"
# A box left running by an interrupted run holds state from that run: start afresh.
"$BOX" stop "$ROOTFS"
# An unexpected error (not a failed check) also ends with a FAIL line.
on_exit() {
    local rc=$?
    if [ "$rc" != 0 ] && [ "$FINISHED" = 0 ]; then
        printf 'FAIL: package test stopped by an unexpected error (exit status %s)\n' "$rc"
    fi
    "$BOX" stop "$ROOTFS" || true
}
trap on_exit EXIT
trap 'printf "error at line %s: %s\n" "$LINENO" "$BASH_COMMAND"; diagnostics' ERR
SYSTEMD_BOX_NSPAWN_ARGS="--volatile=overlay" "$BOX" boot "$ROOTFS" >/dev/null

printf 'package: %s\n' "$DEB"
"$BOX" copy "$ROOTFS" "$DEB" /root/ker-agent.deb

# -------------------------------------------------------------------- install

bx env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null ||
    abort "apt-get update in the box"
if bx env DEBIAN_FRONTEND=noninteractive apt-get install -y -q /root/ker-agent.deb >"$LOGS/install.log" 2>&1; then
    pass "apt-get install ./ker-agent.deb (pulls redis-server from the mirror)"
else
    cat "$LOGS/install.log"
    abort "apt-get install ./ker-agent.deb"
fi
check "redis-server and redis-cli installed with the package (Recommends)" bx test -x /usr/bin/redis-server -a -x /usr/bin/redis-cli
check "ker-agent version prints ker-agent $version" test "$(bx ker-agent version)" = "ker-agent $version"
check "the changelog is installed, its newest entry is $version" \
    eval '[ "$(bx zcat /usr/share/doc/ker-agent/changelog.gz | head -n 1)" = "ker-agent ($version) unstable; urgency=medium" ]'
DSH_STATE=/var/lib/systemd/deb-systemd-helper-enabled/$UNIT.dsh-also
check "deb-systemd-helper recorded the enablement (purged with the package)" bx test -f "$DSH_STATE"
if bx env DEBIAN_FRONTEND=noninteractive apt-get install -y -q man-db >>"$LOGS/install.log" 2>&1; then
    manual=$(bx env MANPAGER=cat MANWIDTH=80 man ker-agent 2>&1 || true)
    check "man ker-agent shows the manual page (with its commands)" \
        grep -q "recent events of the node" <<<"$manual"
else
    fail "apt-get install man-db in the box (to read the manual page)"
fi
if bx env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus \
    >>"$LOGS/install.log" 2>&1; then
    check "the shipped alerting rules pass promtool check rules" \
        bx promtool check rules /usr/share/ker-agent/prometheus/alerts.yml
else
    fail "apt-get install prometheus in the box (for promtool)"
fi
check "the Grafana dashboards are installed, as JSON" \
    bx sh -c 'for f in /usr/share/ker-agent/grafana/ker-agent-node.json /usr/share/ker-agent/grafana/ker-agent-instance.json; do grep -q "\"panels\"" "$f" || exit 1; done'
check "bash completion installed and loads" \
    bx bash -c '. /usr/share/bash-completion/completions/ker-agent && complete -p ker-agent'
check "zsh and fish completions installed" \
    bx test -s /usr/share/zsh/vendor-completions/_ker-agent -a -s /usr/share/fish/vendor_completions.d/ker-agent.fish
check "ker-agent check accepts the shipped /etc/ker-agent/agent.toml" \
    bx ker-agent check --config /etc/ker-agent/agent.toml
check "system user ker-agent exists" bx getent passwd ker-agent
check "/etc/ker-agent is root:ker-agent 0750" test "$(bx stat -c '%U:%G %a' /etc/ker-agent)" = "root:ker-agent 750"
check "/etc/ker-agent/agent.toml is root:ker-agent 0640" \
    test "$(bx stat -c '%U:%G %a' /etc/ker-agent/agent.toml)" = "root:ker-agent 640"
check "/var/lib/ker-agent is ker-agent:ker-agent 0750" \
    test "$(bx stat -c '%U:%G %a' /var/lib/ker-agent)" = "ker-agent:ker-agent 750"
check "unit enabled on fresh install" test "$(bx systemctl is-enabled "$UNIT")" = enabled
check "unit active right after install (Type=notify: READY=1 received)" is_active
check "unit type is notify" test "$(unit_prop Type)" = notify
check "unit KillMode is process" test "$(unit_prop KillMode)" = process
check "systemd-analyze verify ker-agent.service passes" bx systemd-analyze verify "$UNIT"
check "unit is sandboxed (ProtectSystem=strict, PrivateTmp, ProtectKernelTunables)" \
    test "$(unit_prop ProtectSystem)/$(unit_prop PrivateTmp)/$(unit_prop ProtectKernelTunables)" = "strict/yes/yes"
check "agent runs as user ker-agent" test "$(bx ps -o user= -p "$(main_pid)" | tr -d ' ')" = ker-agent
check "agent API answers (ker-agent status)" bx ker-agent status

# ------------------------------------------------------------- two instances

for i in "${!NAMES[@]}"; do
    printf 'name = "%s"\nengine = "redis"\nversion = "7.0"\nport = %s\n' "${NAMES[$i]}" "${PORTS[$i]}" |
        bx sh -c 'cat >"$1" && chgrp ker-agent "$1" && chmod 0640 "$1"' sh "/etc/ker-agent/instances.d/${NAMES[$i]}.toml"
done
check "ker-agent check accepts the two manifests" bx ker-agent check --config /etc/ker-agent/agent.toml
check "systemctl reload (ExecReload: SIGHUP) returns once the agent says READY=1 again" \
    bx systemctl reload "$UNIT"
check "the unit is active after the reload (RELOADING=1, then READY=1)" \
    eval '[[ "$(unit_prop ActiveState)" == active ]]'
check_within 10 "journal: the agent read the manifests again on SIGHUP" \
    journal_has "SIGHUP: reading the manifests and the secret files again\."
if wait_until 60 all_running; then
    pass "redis-cli -p 7001/7002 ping answer PONG; ker-agent status shows a and b running"
else
    abort "instances a and b did not come up within 60 s"
fi
bx ker-agent status
check_within 10 "systemctl status shows what the agent runs (STATUS=)" \
    eval '[[ "$(unit_prop StatusText)" == "2 instances: 2 running (2 ready)"* ]]'
for i in "${!NAMES[@]}"; do
    port=${PORTS[$i]}
    PIDS[$port]=$(redis_pid "$port")
    check "status pid of ${NAMES[$i]} is the pid redis-server reports (${PIDS[$port]})" \
        test "$(status_pid "${NAMES[$i]}")" = "${PIDS[$port]}"
    check "instance ${NAMES[$i]} runs as user ker-agent" \
        test "$(bx ps -o user= -p "${PIDS[$port]}" | tr -d ' ')" = ker-agent
done

# LimitNOFILE=1048576, or the box's own hard limit when that is lower: systemd lowers a
# limit it cannot grant (a box inherits the host's limit) to the highest it can.
box_nofile=$(hard_nofile 1)
want_nofile=$((box_nofile < 1048576 ? box_nofile : 1048576))
[ "$want_nofile" = 1048576 ] ||
    printf 'NOTE: the box itself has a file limit of %s, so the unit gets that instead of 1048576\n' "$box_nofile"
check "agent runs with the unit's file limit ($want_nofile)" test "$(hard_nofile "$(main_pid)")" = "$want_nofile"
check "instances inherit the agent's file limit" test "$(hard_nofile "${PIDS[7001]}")" = "$want_nofile"
check "agent has no capability but CAP_SYS_RESOURCE" \
    test $(( 16#$(cap_mask "$(main_pid)" CapEff) & ~(1 << CAP_SYS_RESOURCE) )) = 0
if has_cap 1 CapBnd; then
    BOX_HAS_CAP=1
    check "agent has CAP_SYS_RESOURCE (AmbientCapabilities=)" has_cap "$(main_pid)" CapEff
else
    BOX_HAS_CAP=0
    printf 'SKIP: the box lacks CAP_SYS_RESOURCE (the host withholds it): AmbientCapabilities= not checked\n'
fi
check "instance data dir is writable (BGSAVE)" bx redis-cli -p 7001 bgsave
check_within 10 "dump.rdb written to /var/lib/ker-agent/instances/a/data" \
    bx test -s /var/lib/ker-agent/instances/a/data/dump.rdb

# ------------------------------------------------------------ agent restart

old_main=$(main_pid)
check "systemctl restart ker-agent" bx systemctl restart "$UNIT"
check "after restart: unit active, new main pid" test "$(active_state)/$(main_pid)" != "active/$old_main" -a "$(active_state)" = active
pids_unchanged "after systemctl restart" || true
adopted_in "$(unit_prop InvocationID)"
check_within 30 "after restart: ker-agent status shows a and b running" all_running
not_failed "after restart"

# --------------------------------------------------------------- agent stop

check "systemctl stop ker-agent" bx systemctl stop "$UNIT"
check "after stop: unit inactive" test "$(active_state)" = inactive
not_failed "after stop"
pids_unchanged "after systemctl stop" || true

# -------------------------------------------------------------- agent start

check "systemctl start ker-agent" bx systemctl start "$UNIT"
# Type=notify: start returns only after READY=1, which the agent sends once its API
# listens; so the API must answer at once, without waiting.
check "after start: unit active as soon as systemctl start returns" is_active
check "after start: API answers immediately (readiness means listening)" bx ker-agent status
pids_unchanged "after systemctl start" || true
adopted_in "$(unit_prop InvocationID)"
check_within 30 "after start: ker-agent status shows a and b running" all_running
not_failed "after start"
check "no 'Instance started.' in this invocation (nothing restarted)" \
    eval '! journal_has "Instance started\."'

# ------------------------------------------------------------ agent crash

signal_and_expect_restart KILL 30 "agent killed with SIGKILL: systemd restarted it (Restart=on-failure)"
pids_unchanged "after the agent crashed and was restarted" || true
adopted_in "$(unit_prop InvocationID)"

# ------------------------------------------------------------ agent frozen

# A short watchdog (and abort timeout) for this check only; the shipped 30 s would make
# the test wait a minute.
bx mkdir -p /run/systemd/system/ker-agent.service.d
printf '[Service]\nWatchdogSec=3s\nTimeoutAbortSec=2s\n' |
    bx sh -c 'cat >/run/systemd/system/ker-agent.service.d/watchdog-test.conf'
bx systemctl daemon-reload
check "systemctl restart ker-agent with WatchdogSec=3s" bx systemctl restart "$UNIT"
check_within 30 "with WatchdogSec=3s: a and b running" all_running
signal_and_expect_restart STOP 40 "agent froze with SIGSTOP: the watchdog restarted it"
check_within 10 "journal: systemd saw the watchdog time out" watchdog_timed_out
pids_unchanged "after the watchdog restarted the agent" || true
adopted_in "$(unit_prop InvocationID)"
bx rm -f /run/systemd/system/ker-agent.service.d/watchdog-test.conf
bx systemctl daemon-reload
check "systemctl restart ker-agent with the shipped watchdog" bx systemctl restart "$UNIT"
check_within 30 "after the watchdog test: a and b running" all_running

# ------------------------------------------------------------- log rotation

check "logrotate -f /etc/logrotate.d/ker-agent" bx logrotate -f /etc/logrotate.d/ker-agent
check "logrotate kept a copy (a.log.1)" bx test -s /var/log/ker-agent/a.log.1
bx redis-cli -p 7001 bgsave >/dev/null || true
check_within 10 "redis-server keeps logging to the truncated a.log" \
    bx grep -q "Background saving" /var/log/ker-agent/a.log

# ------------------------------------------- redis-server binary replaced

# A redis-server package update replaces the binary under running instances; the
# next agent must still adopt them (their /proc/<pid>/exe now ends in " (deleted)").
if bx env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --reinstall redis-tools >"$LOGS/reinstall-redis.log" 2>&1; then
    pass "redis-tools reinstalled (redis-server binary replaced under the instances)"
    exe=$(bx readlink "/proc/${PIDS[7001]}/exe" || true)
    check "instance a now runs a deleted binary ($exe)" test "${exe% (deleted)}" != "$exe"
    check "systemctl restart ker-agent after the binary was replaced" bx systemctl restart "$UNIT"
    pids_unchanged "after the binary was replaced and the agent restarted" || true
    adopted_in "$(unit_prop InvocationID)"
else
    cat "$LOGS/reinstall-redis.log"
    fail "apt-get install --reinstall redis-tools"
fi

# ------------------------------------------------ an instance with [limits]

# Lowering oom_score_adj needs CAP_SYS_RESOURCE; raising it does not.
oom=$([ "$BOX_HAS_CAP" = 1 ] && echo -100 || echo 100)
printf 'name = "c"\nengine = "redis"\nversion = "7.0"\nport = 7003\n[limits]\nnofile = 4096\noom_score_adj = %s\n' "$oom" |
    bx sh -c 'cat >"$1" && chgrp ker-agent "$1" && chmod 0640 "$1"' sh /etc/ker-agent/instances.d/c.toml
bx systemctl reload "$UNIT"
if wait_until 30 eval 'ping_ok 7003 && status_running c'; then
    pass "instance c with [limits] started"
    c_pid=$(redis_pid 7003)
    check "instance c has [limits] nofile = 4096" test "$(hard_nofile "$c_pid")" = 4096
    check "instance c has [limits] oom_score_adj = $oom" test "$(bx cat "/proc/$c_pid/oom_score_adj")" = "$oom"
    bx rm -f /etc/ker-agent/instances.d/c.toml
    bx systemctl reload "$UNIT"
    check_within 30 "manifest of c removed: the agent stopped instance c (pid $c_pid)" \
        eval '! bx kill -0 "$c_pid"'
else
    fail "instance c with [limits] (oom_score_adj = $oom) did not start"
fi
pids_unchanged "after adding and removing instance c" || true

# ------------------------------------------------------------------- upgrade

old_main=$(main_pid)
run_package upgrade "dpkg -i over the installed package (upgrade path of the maintainer scripts)" dpkg -i /root/ker-agent.deb
check "after upgrade: agent restarted (new main pid), unit active" \
    test "$(active_state)" = active -a "$(main_pid)" != "$old_main"
pids_unchanged "after package upgrade" || true
not_failed "after upgrade"

# An administrator who disabled the agent keeps it disabled across an upgrade; the
# running agent is still replaced by the new one.
bx systemctl disable --quiet "$UNIT"
old_main=$(main_pid)
run_package upgrade-disabled "dpkg -i over the installed package with the unit disabled" dpkg -i /root/ker-agent.deb
check "after upgrade: a disabled unit stays disabled" test "$(bx systemctl is-enabled "$UNIT")" = disabled
check "after upgrade: the running, disabled agent was restarted (new main pid)" \
    test "$(active_state)" = active -a "$(main_pid)" != "$old_main"
pids_unchanged "after package upgrade with the unit disabled" || true

# The same over a package that enabled the unit with systemctl and so left no record
# for deb-systemd-helper: the administrator's choice is kept as well.
bx rm -f "$DSH_STATE"
run_package upgrade-unrecorded "dpkg -i over a disabled unit that deb-systemd-helper has no record of" dpkg -i /root/ker-agent.deb
check "after upgrade: the unrecorded, disabled unit stays disabled" \
    test "$(bx systemctl is-enabled "$UNIT")" = disabled
check "after upgrade: the record is made" bx test -f "$DSH_STATE"
bx systemctl enable --quiet "$UNIT"

# Diagnostics while the agent is still installed.
[ "$FAILURES" = 0 ] || diagnostics

# -------------------------------------------------------------------- remove

check "apt-get remove ker-agent" bx env DEBIAN_FRONTEND=noninteractive apt-get remove -y -q ker-agent
check "after remove: agent stopped" test "$(active_state)" != active
pids_unchanged "after package removal" || true
check "after remove: instance data kept" bx test -s /var/lib/ker-agent/instances/a/data/dump.rdb
check "after remove: the unit is masked, its enablement kept for a reinstall" \
    eval '[ "$(bx readlink "/etc/systemd/system/$UNIT")" = /dev/null ] &&
        bx test -L "/etc/systemd/system/multi-user.target.wants/$UNIT"'

# ---------------------------------------------------------- purge, reinstall

check "apt-get purge ker-agent" bx env DEBIAN_FRONTEND=noninteractive apt-get purge -y -q ker-agent
check "after purge: no enablement left (no wants link, no deb-systemd-helper record)" \
    eval '! bx test -e "/etc/systemd/system/multi-user.target.wants/$UNIT" &&
        ! bx test -e "$DSH_STATE"'
check "after purge: the unit is not masked" eval '! bx test -L "/etc/systemd/system/$UNIT"'
check "after purge: no permission override left" \
    eval '[ -z "$(bx dpkg-statoverride --list "/etc/ker-agent*")" ]'
check "after purge: instance data kept" bx test -s /var/lib/ker-agent/instances/a/data/dump.rdb
pids_unchanged "after package purge" || true
run_package reinstall "apt-get install ./ker-agent.deb after the purge" apt-get install -y -q /root/ker-agent.deb
check "after reinstall: unit enabled again" test "$(bx systemctl is-enabled "$UNIT")" = enabled
check "after reinstall: unit active" is_active
# The manifests are not package files, so they outlived the purge: the new agent finds
# the instances still running and adopts them.
check "after reinstall: both instances running and ready" wait_until 20 all_running
pids_unchanged "after reinstall" || true

FINISHED=1
if [ "$FAILURES" -gt 0 ]; then
    printf 'FAIL: %d of %d checks failed\n' "$FAILURES" "$CHECKS"
    exit 1
fi
printf 'PASS: all %d checks passed\n' "$CHECKS"
