#!/usr/bin/env bash
# The demo, from a fresh machine: the example workers run by the conductor-worker CLI under a
# batch of workflows on a real Conductor server, with live progress and a summary.
#
#   scripts/demo.sh                        # 200 workflows on a local server started for it
#   scripts/demo.sh --workflows 50         # options go to examples/demo.py (--help lists them)
#   CONDUCTOR_SERVER_URL=http://host:8080/api scripts/demo.sh     # use that server instead
#
# Sets up .venv (once), starts a throw-away Conductor server (the jar is downloaded once and
# cached; needs Java 21+, found or installed by scripts/conductor-server.sh), runs
# `python -m examples.demo`, and stops the server again, on Ctrl-C too. Exits 0 only when every
# workflow completed.
set -euo pipefail

# shellcheck source=scripts/_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
cd "$REPO_ROOT"

ensure_venv
PY="${VENV_DIR}/bin/python"

for arg in "$@"; do
    if [[ "$arg" == "-h" || "$arg" == "--help" ]]; then
        exec "$PY" -m examples.demo --help
    fi
done

server_state=""
start_pid=""
demo_pid=""
# stop_child PID: SIGTERM it (if still running) and wait for it to exit.
stop_child() {
    if [[ -n "$1" ]] && kill -0 "$1" 2>/dev/null; then
        kill -TERM "$1" 2>/dev/null || true
        wait "$1" 2>/dev/null || true
    fi
}
# shellcheck disable=SC2329  # invoked by the EXIT trap
cleanup() {
    # In order: the demo (it stops its workers), a server start in progress (its own trap
    # removes a half-started server), then the server.
    stop_child "$demo_pid"
    stop_child "$start_pid"
    if [[ -n "$server_state" ]]; then
        CONDUCTOR_SERVER_STATE_DIR="$server_state" bash scripts/conductor-server.sh stop || true
        rm -rf "$server_state"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [[ -n "${CONDUCTOR_SERVER_URL:-}" ]]; then
    log "demo: using the Conductor server at CONDUCTOR_SERVER_URL=${CONDUCTOR_SERVER_URL}"
else
    server_state="$(mktemp -d "${TMPDIR:-/tmp}/conductor-demo-server.XXXXXX")"
    log "demo: starting a local Conductor server (its ~450 MB jar is downloaded on the first run only)"
    # In a session of its own where possible, so that a Ctrl-C in the terminal does not kill
    # the server under the workers while they drain; the EXIT trap stops it. In the background
    # with `wait`, so that a signal interrupts the wait at once.
    own_session=()
    command -v setsid >/dev/null 2>&1 && own_session=(setsid)
    CONDUCTOR_SERVER_STATE_DIR="$server_state" ${own_session[@]+"${own_session[@]}"} \
        bash scripts/conductor-server.sh start >"${server_state}/url" &
    start_pid=$!
    wait "$start_pid" || die "could not start a Conductor server (see above)"
    start_pid=""
    CONDUCTOR_SERVER_URL="$(tail -n 1 "${server_state}/url")"
    export CONDUCTOR_SERVER_URL
fi

# In the background with `wait`, so that Ctrl-C or SIGTERM reach the traps at once; the EXIT
# trap then sends the demo SIGTERM, which stops its workers gracefully, and stops the server.
status=0
"$PY" -m examples.demo "$@" &
demo_pid=$!
wait "$demo_pid" || status=$?
demo_pid=""
log "demo: finished in ${SECONDS}s (set-up included)"
exit "$status"
