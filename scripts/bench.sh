#!/usr/bin/env bash
# Benchmark conductor_worker against conductor-python (PyPI, pinned) and a raw urllib3 floor.
#
#   scripts/bench.sh --quick                  # a few minutes: fake server + a small real run
#   scripts/bench.sh                          # the full run (about half an hour)
#   scripts/bench.sh --modes fake --reps 5    # options go to benchmarks/bench.py
#
# Results: benchmarks/results/latest.{json,md,png}, client logs in benchmarks/results/logs/.
# Each SDK runs in its own virtual environment (benchmarks/.venv-*, git-ignored), built on the
# first run. Loopback only; pip fetches from PyPI.
set -euo pipefail

# shellcheck source=scripts/_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
cd "$REPO_ROOT"

CONDUCTOR_PYTHON_VERSION="2.0.0"
BENCH_VENV="benchmarks/.venv-bench"
CP_VENV="benchmarks/.venv-conductor-python"

python="$(find_python)" || die "no python3 >= 3.10 found"

# make_venv DIR STAMP PACKAGES...: (re)builds DIR unless its stamp file says the same packages.
make_venv() {
    local dir="$1" stamp="$2"
    shift 2
    if [[ -f "${dir}/.bench-stamp" && "$(cat "${dir}/.bench-stamp")" == "$stamp" ]]; then
        return 0
    fi
    log "bench: building ${dir}"
    rm -rf "$dir"
    "$python" -m venv "$dir"
    "${dir}/bin/python" -m pip install -q --upgrade pip >&2
    "${dir}/bin/python" -m pip install -q "$@" >&2
    printf '%s' "$stamp" >"${dir}/.bench-stamp"
}

make_venv "$BENCH_VENV" "bench-2" \
    -e packages/conductor-client -e packages/conductor-worker psutil matplotlib pyinstrument yappi
make_venv "$CP_VENV" "conductor-python-${CONDUCTOR_PYTHON_VERSION}" \
    "conductor-python==${CONDUCTOR_PYTHON_VERSION}" psutil

limit=5400
for arg in "$@"; do
    [[ "$arg" == "--quick" ]] && limit=1500
done

# Bounded in time: the orchestrator stops every client and server it started on exit.
exec timeout --signal=TERM --kill-after=30 "$limit" \
    "${BENCH_VENV}/bin/python" benchmarks/bench.py \
    --ours-python "${REPO_ROOT}/${BENCH_VENV}/bin/python" \
    --conductor-python-python "${REPO_ROOT}/${CP_VENV}/bin/python" \
    "$@"
