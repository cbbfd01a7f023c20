"""scripts/demo.sh, the README's first command, end to end against the session's server.

CONDUCTOR_SERVER_URL is set, so the demo uses that server instead of starting its own; it still
sets up the venv (a no-op here), starts the workers with the CLI, runs 20 workflows and stops.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(180)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO_TIMEOUT_SECONDS = 120


def test_demo_runs_20_workflows_to_completion(conductor_url: str) -> None:
    env = {**os.environ, "CONDUCTOR_SERVER_URL": conductor_url}
    # A session of its own, so that on a hang the whole tree (bash, demo, workers) is stopped.
    proc = subprocess.Popen(
        ["bash", "scripts/demo.sh", "--workflows", "20", "--timeout", "100"],
        cwd=REPO_ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=DEMO_TIMEOUT_SECONDS + 20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        pytest.fail(f"the demo did not finish in time:\n{out}\n{err}")

    assert proc.returncode == 0, f"{out}\n{err}"
    summary = re.search(
        r"^summary: 20/20 workflows completed, 0 failed, 0 unfinished; ([\d.]+) tasks/s; "
        r"task latency p50 ([\d.]+)s p95 ([\d.]+)s$",
        out,
        re.M,
    )
    assert summary, out
    tasks_per_second, p50, p95 = (float(g) for g in summary.groups())
    assert tasks_per_second > 0
    assert 0 < p50 <= p95
    assert "using the Conductor server at CONDUCTOR_SERVER_URL" in err
    # The workers' metrics, scraped before they stopped, and a workflow's output.
    assert re.search(r'task_execute_time_count\{taskType="simple_task"\} \d+', out), out
    assert '"long_running": {' in out
    assert "workers stopped (exit status 0)" in out
