#!/usr/bin/env bash
# The whole check, from a fresh machine: set up .venv, lint, type-check, (codegen drift check),
# then run pytest against ONE real Conductor server started for this run.
#
#   scripts/test.sh                 # everything
#   scripts/test.sh -k fixture -x   # arguments go to pytest (and no compatibility run)
#
# A full run (no arguments) then runs the tests marked `compat` once more, against the pinned
# old server line (3.21.14 on Java 17), after the main suite and with its server stopped.
#
# All steps run even when an earlier one fails, so one run reports every problem; the exit
# status is non-zero if any failed. With CI set (truthy) the integration tests may not be
# skipped: a server that cannot start (either one) fails the run.
set -euo pipefail

# shellcheck source=scripts/_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
cd "$REPO_ROOT"

ensure_venv
export PATH="${VENV_DIR}/bin:${PATH}"

ci=""
case "$(printf '%s' "${CI:-}" | tr '[:upper:]' '[:lower:]')" in
    "" | 0 | false | no | off) ;;
    *) ci=1 ;;
esac
if [[ -n "$ci" ]]; then
    # The conftest fixture then fails (instead of skipping) when it has no server.
    export CONDUCTOR_REQUIRE_SERVER=1
fi

# --- server: started in the background now, so it boots while lint and mypy run -----------------
server_state="$(mktemp -d "${TMPDIR:-/tmp}/conductor-test-state.XXXXXX")"
server_pid=""
# shellcheck disable=SC2329  # invoked by the EXIT trap
cleanup() {
    if [[ -n "$server_pid" ]]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    CONDUCTOR_SERVER_STATE_DIR="$server_state" bash scripts/conductor-server.sh stop 2>/dev/null || true
    rm -rf "$server_state"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

unset CONDUCTOR_SERVER_UNAVAILABLE
own_server=""
if [[ -n "${CONDUCTOR_SERVER_URL:-}" ]]; then
    log "using the Conductor server at CONDUCTOR_SERVER_URL=${CONDUCTOR_SERVER_URL}"
else
    CONDUCTOR_SERVER_STATE_DIR="$server_state" bash scripts/conductor-server.sh start \
        >"${server_state}/start.out" 2>"${server_state}/start.err" &
    server_pid=$!
    own_server=1
fi

# --- checks ------------------------------------------------------------------------------------
failed=()
passed=()

# step NAME COMMAND...: runs one check, records the outcome, never aborts the script.
step() {
    local name="$1" began=$SECONDS rc=0
    shift
    log ""
    log "==> ${name}"
    "$@" || rc=$?
    if ((rc == 0)); then
        passed+=("${name} ($((SECONDS - began))s)")
    else
        failed+=("${name} (exit ${rc})")
    fi
    return 0
}

step "ruff check" ruff check .
step "ruff format" ruff format --check .
step "mypy" mypy
if [[ -f scripts/codegen.sh ]]; then
    step "codegen --check" bash scripts/codegen.sh --check
fi

# --- pytest ------------------------------------------------------------------------------------
server_note=""
if [[ -n "$server_pid" ]]; then
    log ""
    log "==> waiting for the Conductor server"
    server_rc=0
    wait "$server_pid" || server_rc=$?
    server_pid=""
    cat "${server_state}/start.err" >&2
    url="$(tail -n 1 "${server_state}/start.out")"
    if ((server_rc == 0)) && [[ "$url" == http* ]]; then
        export CONDUCTOR_SERVER_URL="$url"
        server_note="server ${CONDUCTOR_SERVER_URL}"
    else
        failed+=("conductor server start (exit ${server_rc})")
        export CONDUCTOR_SERVER_UNAVAILABLE="scripts/conductor-server.sh start failed (exit ${server_rc}); see its output above"
        server_note="no server: integration tests $([[ -n "$ci" ]] && echo fail || echo skipped)"
    fi
fi

# shellcheck disable=SC2329  # invoked through `step`
pytest_step() {
    local rc=0
    python -m pytest -p no:cacheprovider "$@" || rc=$?
    if ((rc == 5)); then
        log "error: pytest collected no tests (exit 5); the suite must have tests"
    fi
    return "$rc"
}
step "pytest" pytest_step "$@"

# --- compatibility run: the `compat` tests against the old server line ------------------------
# The session fixture (tests/conftest.py) starts the server itself, downloading its jar on a
# cold cache, and stops it at the end; in CI a server that cannot start fails the step.
COMPAT_SERVER_VERSION="3.21.14" # pinned (sha1, Java, flags) in scripts/conductor-server.sh

# shellcheck disable=SC2329  # invoked through `step`
compat_step() {
    (
        unset CONDUCTOR_SERVER_URL CONDUCTOR_SERVER_UNAVAILABLE
        export CONDUCTOR_SERVER_VERSION="$COMPAT_SERVER_VERSION"
        pytest_step -m compat tests/integration
    )
}
if (($# == 0)); then
    if [[ -n "$own_server" ]]; then
        # Two JVMs on a 2-core machine slow each other down: the main one is done.
        CONDUCTOR_SERVER_STATE_DIR="$server_state" bash scripts/conductor-server.sh stop || true
    fi
    step "pytest compat (server ${COMPAT_SERVER_VERSION})" compat_step
else
    log ""
    log "(compatibility run against server ${COMPAT_SERVER_VERSION} skipped: pytest arguments given)"
fi

# --- summary -----------------------------------------------------------------------------------
log ""
join() {
    local out="" item
    for item in "$@"; do out+="${out:+, }${item}"; done
    printf '%s' "$out"
}
if ((${#failed[@]} == 0)); then
    log "test.sh: PASSED: $(join "${passed[@]}")${server_note:+ [${server_note}]}"
    exit 0
fi
log "test.sh: FAILED: $(join "${failed[@]}")${passed[*]:+; passed: $(join "${passed[@]}")}${server_note:+ [${server_note}]}"
exit 1
