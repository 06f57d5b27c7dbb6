#!/usr/bin/env bash
# Soak and chaos: hours of mixed load through one gateway while its upstreams
# fail, to find what short tests miss (leaks of memory, fds or threads; a
# rare lost, duplicated or silently cut answer; a restart without a reason).
# It prints figures and never passes or fails: it exits non-zero only when it
# cannot set up.
#
#   scripts/soak.sh 1h                       # DURATION: 90 (seconds), 10m, 1h
#   SOAK_INTERVAL=10 scripts/soak.sh 90      # a quick look: a line every 10 s
#
# On 127.0.0.1 only, it starts the fake upstreams the black-box tests use
# (tests/peers/openai_peer.py, anthropic_peer.py) and one gateway with an
# `openai` pool (3 accounts), an `anthropic` pool (2) and a `demo` pool, with
# short supervisor timings so sessions restart and cool down often. For
# DURATION it sends streamed and whole requests on both frontends
# (/v1/chat/completions, /v1/messages) to every pool, and every few seconds
# plays a fault episode through the peers' control APIs (5xx, 429, resets,
# mid-stream drops, hangs shorter and longer than the first-token timeout,
# refused keys that kill a session, peer outages) or the admin API. Every
# answer is checked against the exact text the upstream sent; an error while
# no fault was active counts as lost. A line every SOAK_INTERVAL seconds
# (default 60) shows the gateway's RSS, fds, threads, outcomes and restarts;
# a summary and a verdict line close the run. Ctrl-C ends the load early and
# still prints the summary.
#
# Environment: CONCURRENCY (16), SOAK_INTERVAL (60), SOAK_SEED (the episode
# sequence and the peer's rate faults; random by default), SOAK_KEEP=1 keeps
# the temp dir with the config, restart log and every process's log,
# SOAK_RUST_LOG (warn), TROUPE_BIN (default target/debug/troupe, else a
# `dist` build made here). The driver is scripts/soak/driver.py.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$(pwd)"

usage() {
    echo "usage: scripts/soak.sh DURATION   (e.g. 90, 90s, 10m, 1h)" >&2
    exit 2
}

[ $# -eq 1 ] && [[ "$1" =~ ^([0-9]+)([smh]?)$ ]] || usage
SECONDS_TOTAL=$((10#${BASH_REMATCH[1]}))
case "${BASH_REMATCH[2]}" in
    h) SECONDS_TOTAL=$((SECONDS_TOTAL * 3600)) ;;
    m) SECONDS_TOTAL=$((SECONDS_TOTAL * 60)) ;;
esac
[ "$SECONDS_TOTAL" -gt 0 ] || usage

# The Python side: the same venv and requirements as scripts/test.sh.
VENV="$ROOT/.venv"
REQS="$ROOT/tests/requirements.txt"
STAMP="$VENV/.requirements.stamp"
PYTHON="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    echo "creating $VENV" >&2
    "$PYTHON" -m venv "$VENV" || {
        echo "error: '$PYTHON -m venv' failed (on Debian: apt-get install python3-venv)" >&2
        exit 2
    }
fi
if [ ! -f "$STAMP" ] || [ "$REQS" -nt "$STAMP" ]; then
    echo "installing tests/requirements.txt into $VENV" >&2
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$REQS"
    touch "$STAMP"
fi

# The gateway: as the tests find it, else the profile the container ships.
if [ -n "${TROUPE_BIN:-}" ]; then
    BIN="$TROUPE_BIN"
    [ -x "$BIN" ] || { echo "error: TROUPE_BIN=$BIN is not an executable" >&2; exit 2; }
elif [ -x "$ROOT/target/debug/troupe" ]; then
    BIN="$ROOT/target/debug/troupe"
else
    echo "no target/debug/troupe: building the dist profile (set TROUPE_BIN to skip)" >&2
    cargo build --profile dist --quiet || { echo "error: cargo build --profile dist failed" >&2; exit 2; }
    BIN="$ROOT/target/dist/troupe"
fi
case "$BIN" in /*) ;; *) BIN="$ROOT/$BIN" ;; esac

# The driver runs in a process group of its own, which the peers and the
# gateway it starts join: whatever happens to the driver, the EXIT trap ends
# that group and nothing is left running. setsid does not fork here (a
# background job of a script is no group leader), so the group's id is the
# driver's pid.
DRIVER_PID=""
WORKDIR="$(mktemp -d "${TMPDIR:-/tmp}/troupe-soak-XXXXXX")"
stop_group() {
    [ -n "$DRIVER_PID" ] || return 0
    kill -TERM -- "-$DRIVER_PID" 2>/dev/null || return 0
    for _ in $(seq 50); do
        kill -0 -- "-$DRIVER_PID" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL -- "-$DRIVER_PID" 2>/dev/null || true
}
cleanup() {
    stop_group
    [ -n "${SOAK_KEEP:-}" ] || rm -rf "$WORKDIR"
}
on_signal() {
    # Ctrl-C reaches this script only (the driver has a session of its
    # own): pass it on, so the driver stops the load and prints its summary.
    if [ -n "$DRIVER_PID" ]; then
        kill -INT "$DRIVER_PID" 2>/dev/null || true
    else
        exit 130
    fi
}
trap cleanup EXIT
trap on_signal INT TERM

setsid "$VENV/bin/python" "$ROOT/scripts/soak/driver.py" --duration "$SECONDS_TOTAL" --bin "$BIN" --workdir "$WORKDIR" &
DRIVER_PID=$!
rc=0
while :; do
    wait "$DRIVER_PID" && rc=0 || rc=$?
    # `wait` also returns when a trapped signal arrives: go on waiting while
    # the driver is still there.
    kill -0 "$DRIVER_PID" 2>/dev/null || break
done
exit "$rc"
