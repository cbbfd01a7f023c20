#!/usr/bin/env bash
# Run a throw-away Conductor OSS server on 127.0.0.1 for tests and local development.
#
#   scripts/conductor-server.sh start    # prints the API base URL (http://127.0.0.1:PORT/api) last
#   scripts/conductor-server.sh url      # the running server's API base URL
#   scripts/conductor-server.sh status   # exit 0 when running, 3 when not
#   scripts/conductor-server.sh stop     # stops it and deletes its data
#
# Environment:
#   CONDUCTOR_SERVER_VERSION        server version (default: the pin below); 3.21.14 is the
#                                   pinned old line (Java 17, in-memory store; see below)
#   CONDUCTOR_SERVER_CACHE          where the jar is cached
#                                   (default: ${XDG_CACHE_HOME:-$HOME/.cache}/conductor-server)
#   CONDUCTOR_SERVER_STATE_DIR      where the pid/port state lives (default: <repo>/.conductor);
#                                   use different ones to run several servers at once
#   CONDUCTOR_SERVER_START_TIMEOUT  seconds to wait for /health (default 180)
#   CONDUCTOR_SERVER_STOP_TIMEOUT   seconds between TERM and KILL on stop (default 30)
#   CONDUCTOR_SERVER_JAVA_OPTS      JVM options (default "-Xms256m -Xmx1g")
#   JAVA_HOME                       preferred JDK (must be 21+; 17+ for the 3.21 line)
#
# Progress goes to stderr; stdout carries only the URL.
set -euo pipefail

# shellcheck source=scripts/_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

# Pinned server: 3.32.3 is the newest GA release of org.conductoross:conductor-server served by
# Maven Central (checked 2026-12-03). Servers from 3.22.0 on need Java 21+ and default to SQLite
# for data, queues and index, so the boot jar runs fully self-contained (no Redis/ES/Postgres).
PINNED_VERSION="3.32.3"
# sha1 of conductor-server-3.32.3-boot.jar as published on Maven Central (checked in addition
# to the published .sha1 file, so a changed artifact is noticed).
PINNED_SHA1="06bd2746cba9a238101970e09c9b3e73916a77e0"

# The old line, for the compatibility run of scripts/test.sh: 3.21.14 (boot jar, ~400 MB) runs
# on Java 17, answers GET /tasks/{id} of a missing task with 204 (not 404) and has update-v2
# (since 3.21.12). conductor-server-lite, the all-SQLite 3.21 build, is not on Maven Central.
OLD_PINNED_VERSION="3.21.14"
OLD_PINNED_SHA1="1b9feda88c519187549649763567d5eee2b898de"

VERSION="${CONDUCTOR_SERVER_VERSION:-$PINNED_VERSION}"
SERVER_LINE="" MIN_JAVA=21 PREFERRED_JAVA=""
if [[ ! "$VERSION" =~ ^([0-9]+)\.([0-9]+)\.[0-9A-Za-z.-]+$ ]]; then
    : # refused by `start`; stop/status/url still work
elif ((BASH_REMATCH[1] < 3 || (BASH_REMATCH[1] == 3 && BASH_REMATCH[2] < 22))); then
    # 3.16 .. 3.21 (checked with 3.21.14): Java 17; the jar defaults to a Redis queue
    # (conductor.queue.type=redis_standalone, from the orkes-conductor-queues library) and
    # cannot run alone without flags (server_flags in cmd_start).
    SERVER_LINE="memory"
    MIN_JAVA=17
    PREFERRED_JAVA=17 # what the line was built and released for
else
    # 3.22 and later: Java 21+, SQLite for data, queues and index by default.
    SERVER_LINE="sqlite"
    MIN_JAVA=21
    PREFERRED_JAVA=""
fi
CACHE_DIR="${CONDUCTOR_SERVER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/conductor-server}"
STATE_DIR="${CONDUCTOR_SERVER_STATE_DIR:-${REPO_ROOT}/.conductor}"
STATE_FILE="${STATE_DIR}/server.state"
START_TIMEOUT="${CONDUCTOR_SERVER_START_TIMEOUT:-180}"
STOP_TIMEOUT="${CONDUCTOR_SERVER_STOP_TIMEOUT:-30}"
JAVA_OPTS="${CONDUCTOR_SERVER_JAVA_OPTS:--Xms256m -Xmx1g}"
JAR_NAME="conductor-server-${VERSION}-boot.jar"
JAR_URL="https://repo1.maven.org/maven2/org/conductoross/conductor-server/${VERSION}/${JAR_NAME}"
# A file in each data dir we create, so `stop` never deletes a directory that is not ours.
DATA_MARKER=".conductor-server-data"

usage() {
    log "usage: $(basename "$0") start|stop|status|url"
    exit 2
}

# --- jar ---------------------------------------------------------------------------------------

# pinned_sha1 VERSION: prints the sha1 this script pins for VERSION (nothing when not pinned).
pinned_sha1() {
    case "$1" in
        "$PINNED_VERSION") printf '%s\n' "$PINNED_SHA1" ;;
        "$OLD_PINNED_VERSION") printf '%s\n' "$OLD_PINNED_SHA1" ;;
    esac
}

sha1_of() {
    if command -v sha1sum >/dev/null 2>&1; then
        sha1sum "$1" | cut -d' ' -f1
    elif command -v shasum >/dev/null 2>&1; then
        shasum -a 1 "$1" | cut -d' ' -f1
    else
        python3 -c 'import hashlib, sys
h = hashlib.sha1()
with open(sys.argv[1], "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
print(h.hexdigest())' "$1"
    fi
}

# ensure_jar: prints the path of the cached server jar, downloading it first if absent.
ensure_jar() {
    local jar="${CACHE_DIR}/${JAR_NAME}"
    if [[ -f "$jar" ]]; then
        printf '%s\n' "$jar"
        return 0
    fi
    mkdir -p "$CACHE_DIR"
    # A per-process .part name: concurrent starts never write the same file, and the final
    # rename is atomic, so the cache only ever holds complete, verified jars.
    local part="${jar}.part.$$" pinned
    pinned="$(pinned_sha1 "$VERSION")"
    if command -v curl >/dev/null 2>&1; then
        log "downloading ${JAR_URL} (~400-450 MB) into ${CACHE_DIR}"
        local expected actual
        expected="$(curl -fsSL --retry 3 "${JAR_URL}.sha1" | tr -d '[:space:]')" \
            || die "could not fetch ${JAR_URL}.sha1"
        expected="${expected:0:40}"
        if [[ -n "$pinned" && "$expected" != "$pinned" ]]; then
            die "published sha1 ${expected} for ${JAR_NAME} differs from the pinned ${pinned}"
        fi
        if ! curl -fSL --retry 3 --progress-bar -o "$part" "$JAR_URL"; then
            rm -f "$part"
            die "download of ${JAR_URL} failed"
        fi
        actual="$(sha1_of "$part")"
        if [[ "$actual" != "$expected" ]]; then
            rm -f "$part"
            die "sha1 mismatch for ${JAR_NAME}: got ${actual}, expected ${expected}"
        fi
    elif command -v mvn >/dev/null 2>&1; then
        # Maven checks the repository checksums itself.
        log "curl not found; fetching ${JAR_NAME} with Maven into ${CACHE_DIR}"
        local tmp
        tmp="$(mktemp -d "${CACHE_DIR}/mvn.XXXXXX")"
        if ! mvn -q -B org.apache.maven.plugins:maven-dependency-plugin:3.11.0:copy \
            "-Dartifact=org.conductoross:conductor-server:${VERSION}:jar:boot" \
            "-DoutputDirectory=${tmp}" >&2; then
            rm -rf "$tmp"
            die "mvn could not fetch org.conductoross:conductor-server:${VERSION}:jar:boot"
        fi
        mv "${tmp}/${JAR_NAME}" "$part"
        rm -rf "$tmp"
        if [[ -n "$pinned" && "$(sha1_of "$part")" != "$pinned" ]]; then
            rm -f "$part"
            die "sha1 mismatch for ${JAR_NAME} fetched by Maven"
        fi
    else
        die "neither curl nor mvn is installed; one is needed to download ${JAR_NAME}"
    fi
    mv -f "$part" "$jar"
    printf '%s\n' "$jar"
}

# --- state -------------------------------------------------------------------------------------

# read_state: loads PID, PORT, DATA_DIR, URL from the state file; fails if there is none.
# The file is parsed, not sourced, so nothing in it is ever executed.
read_state() {
    PID="" PORT="" DATA_DIR="" URL=""
    [[ -f "$STATE_FILE" ]] || return 1
    local key value
    while IFS='=' read -r key value; do
        case "$key" in
            pid) PID="$value" ;;
            port) PORT="$value" ;;
            data_dir) DATA_DIR="$value" ;;
            url) URL="$value" ;;
        esac
    done <"$STATE_FILE"
    [[ "$PID" =~ ^[0-9]+$ ]]
}

write_state() {
    mkdir -p "$STATE_DIR"
    local tmp="${STATE_FILE}.tmp.$$"
    printf 'pid=%s\nport=%s\ndata_dir=%s\nurl=%s\nversion=%s\n' \
        "$PID" "$PORT" "$DATA_DIR" "$URL" "$VERSION" >"$tmp"
    mv -f "$tmp" "$STATE_FILE"
}

# is_our_server PID: the process exists and is a conductor-server JVM (guards against pid reuse).
is_our_server() {
    kill -0 "$1" 2>/dev/null || return 1
    local args=""
    if [[ -r "/proc/$1/cmdline" ]]; then
        args="$(tr '\0' ' ' <"/proc/$1/cmdline")"
    elif command -v ps >/dev/null 2>&1; then
        args="$(ps -p "$1" -o args= 2>/dev/null)" || return 1
    else
        return 0 # cannot tell; the pid is alive, trust the state file
    fi
    [[ "$args" == *conductor-server* ]]
}

# remove_data_dir DIR: deletes DIR only if it is one of ours (carries the marker file).
remove_data_dir() {
    if [[ -n "$1" && -d "$1" && -f "$1/${DATA_MARKER}" ]]; then
        rm -rf "$1"
    fi
}

# --- http --------------------------------------------------------------------------------------

# healthy ROOT_URL: success when GET ROOT_URL/health answers {"healthy": true}.
healthy() {
    local body
    if command -v curl >/dev/null 2>&1; then
        body="$(curl -fsS --max-time 3 "$1/health" 2>/dev/null)" || return 1
    else
        body="$(python3 -c 'import sys, urllib.request
print(urllib.request.urlopen(sys.argv[1], timeout=3).read().decode())' "$1/health" 2>/dev/null)" \
            || return 1
    fi
    [[ "$body" =~ \"healthy\"[[:space:]]*:[[:space:]]*true ]]
}

free_port() {
    python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()'
}

# --- commands ----------------------------------------------------------------------------------

# kill_server PID [GRACE_SECONDS]: TERM, then KILL if it is still alive after the grace.
kill_server() {
    local pid="$1" grace="${2:-$STOP_TIMEOUT}"
    is_our_server "$pid" || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    local deadline=$((SECONDS + grace))
    while kill -0 "$pid" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            log "server pid ${pid} still alive ${grace}s after TERM; sending KILL"
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.2
    done
}

cmd_stop() {
    if ! read_state; then
        log "no Conductor server recorded in ${STATE_DIR}"
        rm -f "$STATE_FILE"
        return 0
    fi
    log "stopping Conductor server pid ${PID} (${URL})"
    kill_server "$PID"
    remove_data_dir "$DATA_DIR"
    rm -f "$STATE_FILE"
    rmdir "$STATE_DIR" 2>/dev/null || true
}

cmd_status() {
    if read_state && is_our_server "$PID"; then
        printf 'running pid=%s url=%s data_dir=%s\n' "$PID" "$URL" "$DATA_DIR"
        return 0
    fi
    printf 'not running\n'
    return 3
}

cmd_url() {
    if read_state && is_our_server "$PID"; then
        printf '%s\n' "$URL"
        return 0
    fi
    die "no Conductor server running for state dir ${STATE_DIR}"
}

# Set while `start` owns a half-started server; the EXIT trap cleans it up on any failure
# (including Ctrl-C), so no JVM or data dir is left behind.
STARTING_PID=""
STARTING_DATA_DIR=""
cleanup_failed_start() {
    if [[ -n "$STARTING_PID" ]]; then
        # Short grace: a JVM still booting is slow to honour TERM, and its data is thrown away.
        kill_server "$STARTING_PID" 3
    fi
    if [[ -n "$STARTING_DATA_DIR" ]]; then
        remove_data_dir "$STARTING_DATA_DIR"
        rm -f "$STATE_FILE"
        rmdir "$STATE_DIR" 2>/dev/null || true
    fi
}

cmd_start() {
    if read_state; then
        if is_our_server "$PID"; then
            log "Conductor server already running (pid ${PID}) for state dir ${STATE_DIR}"
            printf '%s\n' "$URL"
            return 0
        fi
        log "removing stale state of a server that is gone (pid ${PID})"
        remove_data_dir "$DATA_DIR"
        rm -f "$STATE_FILE"
    fi

    [[ -n "$SERVER_LINE" ]] || die "CONDUCTOR_SERVER_VERSION must look like 3.32.3, got '${VERSION}'"
    [[ "$START_TIMEOUT" =~ ^[0-9]+$ ]] || die "CONDUCTOR_SERVER_START_TIMEOUT must be whole seconds"
    command -v python3 >/dev/null 2>&1 || die "python3 is needed (to pick a free port)"

    local jar java
    jar="$(ensure_jar)" || exit 1
    java="$(find_java "$MIN_JAVA" "$PREFERRED_JAVA")" || die "Conductor ${VERSION} needs Java ${MIN_JAVA}+"
    local -a java_opts server_flags
    read -r -a java_opts <<<"$JAVA_OPTS"

    trap cleanup_failed_start EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    local attempt started=$SECONDS
    for attempt in 1 2 3; do
        DATA_DIR="$(mktemp -d "${TMPDIR:-/tmp}/conductor-server.XXXXXX")"
        STARTING_DATA_DIR="$DATA_DIR"
        : >"${DATA_DIR}/${DATA_MARKER}"
        PORT="$(free_port)"
        URL="http://127.0.0.1:${PORT}/api"
        local root="http://127.0.0.1:${PORT}" logfile="${DATA_DIR}/server.log"
        if [[ "$SERVER_LINE" == "sqlite" ]]; then
            # file-storage.parentDir: the AI module otherwise creates ~/worker-payload (from the
            # JVM's user.home, which ignores $HOME).
            server_flags=(
                "--spring.datasource.url=jdbc:sqlite:${DATA_DIR}/conductor.db?busy_timeout=15000&journal_mode=WAL"
                "--conductor.file-storage.parentDir=${DATA_DIR}/worker-payload"
            )
        else
            # Self-contained on 3.21.x (read from the v3.21.14 source):
            # - conductor.db.type=memory: redis-persistence's InMemoryRedisConfiguration, data
            #   in an in-process JedisMock (gone when the server stops);
            # - conductor.queue.type=memory: any value but redis_standalone/_sentinel/_cluster
            #   switches off orkes-conductor-queues' RedisQueueConfiguration (which would
            #   connect to localhost:6379), so the queues are redis-persistence's DynoQueueDAO
            #   on that same JedisMock;
            # - indexing.enabled=false: no Elasticsearch (a no-op index: task logs and
            #   search are not kept);
            # - loadSample=false: no kitchensink sample definitions and workflows.
            # (The SQLite store of 3.21.14, db and queue type sqlite, starts, but fails
            # workflows with SQLITE_BUSY as soon as two run at once and hands an IN_PROGRESS
            # task out again before its callbackAfterSeconds.)
            server_flags=(
                --conductor.db.type=memory
                --conductor.queue.type=memory
                --conductor.indexing.enabled=false
                --conductor.app.ownerEmailMandatory=false
                --loadSample=false
            )
        fi
        log "starting Conductor ${VERSION} on 127.0.0.1:${PORT} with $("$java" -version 2>&1 | head -n1)"
        log "  data and logs: ${DATA_DIR}"
        # cwd is the data dir so anything the server writes relative to it stays in there.
        (
            cd "$DATA_DIR"
            exec nohup "$java" "${java_opts[@]}" -jar "$jar" \
                --server.address=127.0.0.1 \
                "--server.port=${PORT}" \
                "${server_flags[@]}" \
                </dev/null >"$logfile" 2>&1
        ) &
        PID=$!
        STARTING_PID="$PID"
        write_state

        local deadline=$((SECONDS + START_TIMEOUT)) dead=""
        until healthy "$root"; do
            if ! kill -0 "$PID" 2>/dev/null; then
                dead=1
                break
            fi
            if ((SECONDS >= deadline)); then
                log "error: Conductor server not healthy after ${START_TIMEOUT}s; last 40 log lines:"
                tail -n 40 "$logfile" >&2 || true
                exit 1
            fi
            sleep 1
        done
        if [[ -z "$dead" ]]; then
            STARTING_PID="" STARTING_DATA_DIR=""
            trap - EXIT INT TERM
            log "Conductor server ready in $((SECONDS - started))s (pid ${PID})"
            printf '%s\n' "$URL"
            return 0
        fi
        # Another process may have taken the port between picking and binding it: retry.
        if grep -q "Port ${PORT} was already in use" "$logfile" 2>/dev/null && ((attempt < 3)); then
            log "port ${PORT} was taken meanwhile; retrying on another port"
            STARTING_PID=""
            cleanup_failed_start
            continue
        fi
        log "error: Conductor server exited during start-up; last 40 log lines:"
        tail -n 40 "$logfile" >&2 || true
        exit 1
    done
}

main() {
    [[ $# -eq 1 ]] || usage
    case "$1" in
        start) cmd_start ;;
        stop) cmd_stop ;;
        status) cmd_status ;;
        url) cmd_url ;;
        *) usage ;;
    esac
}

main "$@"
