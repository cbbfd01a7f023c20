"""The `conductor-worker` CLI as a user runs it: a child process, against the fake Conductor.

Each way of getting the configuration wrong must end with one line on stderr and the documented
exit code (2 bad usage or configuration, 5 no Conductor API at the URL), before any worker
starts. tests/integration/test_cli.py covers the same command against the real server.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes import FakeConductorServer, FakeResponse

pytestmark = pytest.mark.timeout(60)

REPO_ROOT = Path(__file__).resolve().parents[2]
EXIT_OK, EXIT_USAGE, EXIT_UNREACHABLE = 0, 2, 5

WORKERS = """\
from conductor_worker import worker_task

@worker_task("cli_task")
def work(n: int = 0) -> dict[str, int]:
    return {"n": n}
"""


@pytest.fixture
def fake() -> Iterator[FakeConductorServer]:
    with FakeConductorServer() as server:
        yield server


def cli(
    *args: str, cwd: Path, server_url: str, wait: bool = True
) -> subprocess.CompletedProcess[str] | subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONDUCTOR_")}
    env["PYTHONPATH"] = os.pathsep.join([str(cwd), str(REPO_ROOT)])
    command = [
        sys.executable, "-m", "conductor_worker", "run", *args,
        "--server-url", server_url, "--no-metrics",
    ]  # fmt: skip
    if not wait:
        return subprocess.Popen(
            command, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
    return subprocess.run(
        command, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=45, check=False,
    )  # fmt: skip


def run_cli(*args: str, cwd: Path, server_url: str) -> subprocess.CompletedProcess[str]:
    proc = cli(*args, cwd=cwd, server_url=server_url)
    assert isinstance(proc, subprocess.CompletedProcess)
    return proc


def assert_one_error_line(proc: subprocess.CompletedProcess[str], *fragments: str) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    [line] = lines
    assert line.startswith("conductor-worker: error: "), line
    for fragment in fragments:
        assert fragment in line, line
    assert "Traceback" not in proc.stderr
    return line


@pytest.fixture
def workers(tmp_path: Path) -> Path:
    (tmp_path / "cli_workers.py").write_text(WORKERS)
    return tmp_path


# -- --grace ------------------------------------------------------------------------------------


@pytest.mark.parametrize("grace", ["inf", "-inf", "nan", "-1", "1e309", "soon", ""])
def test_a_grace_that_is_not_a_finite_number_of_seconds_exits_2(
    grace: str, workers: Path, fake: FakeConductorServer
) -> None:
    proc = run_cli("cli_workers", f"--grace={grace}", cwd=workers, server_url=fake.url)

    assert proc.returncode == EXIT_USAGE
    assert_one_error_line(proc, "--grace must be a finite number of seconds >= 0", repr(grace))
    assert fake.requests == []  # rejected before anything else happens


def test_a_valid_grace_runs_and_a_sigterm_stops_cleanly(
    workers: Path, fake: FakeConductorServer
) -> None:
    [task_id] = fake.add_tasks("cli_task", 1, input={"n": 7})
    proc = cli("cli_workers", "--grace", "2", cwd=workers, server_url=fake.url, wait=False)
    assert isinstance(proc, subprocess.Popen)
    try:
        [result] = fake.wait_for_results([task_id], timeout=30)[task_id]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == EXIT_OK
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()

    assert result["status"] == "COMPLETED"
    assert result["outputData"] == {"n": 7}


# -- worker signatures --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "fragments"),
    [
        ("def work(*rest):\n    return {}\n", ["worker function", "work", "*rest"]),
        (
            "def work(x: 'Undefined[int]'):\n    return {}\n",
            ["annotation", "parameter 'x'", "work", "Undefined"],
        ),
    ],
    ids=["varargs", "unresolvable-annotation"],
)
def test_a_worker_signature_that_cannot_be_bound_exits_2(
    source: str, fragments: list[str], tmp_path: Path, fake: FakeConductorServer
) -> None:
    header = 'from conductor_worker import worker_task\n\n@worker_task("cli_task")\n'
    (tmp_path / "bad_workers.py").write_text(header + source)

    proc = run_cli("bad_workers", cwd=tmp_path, server_url=fake.url)

    assert proc.returncode == EXIT_USAGE
    assert_one_error_line(proc, "task type 'cli_task'", *fragments)
    assert fake.requests == []  # reported before the server is asked anything


# -- the server check ---------------------------------------------------------------------------


def test_a_server_url_without_api_exits_5_and_suggests_it(
    workers: Path, fake: FakeConductorServer
) -> None:
    url = fake.url.removesuffix("/api")  # the server answers 404 "No static resource"

    started = time.monotonic()
    proc = run_cli("cli_workers", cwd=workers, server_url=url)

    assert proc.returncode == EXIT_UNREACHABLE
    assert_one_error_line(proc, f"no Conductor API at {url}", "404", f"try {url}/api")
    assert time.monotonic() - started < 30  # no polling first
    assert [r.path for r in fake.requests] == ["/tasks/queue/size"]


def test_a_server_url_without_api_answered_by_a_web_page_exits_5_and_suggests_it(
    workers: Path, fake: FakeConductorServer
) -> None:
    # The 3.x server answers paths outside /api with its web UI: 200 and an HTML page.
    url = fake.url.removesuffix("/api")
    page = FakeResponse(200, b"<!doctype html><html></html>", "text/html")
    fake.inject("/tasks/queue/size", page)

    proc = run_cli("cli_workers", cwd=workers, server_url=url)

    assert proc.returncode == EXIT_UNREACHABLE
    assert_one_error_line(proc, f"no Conductor API at {url}", "web page", f"try {url}/api")
    assert [r.path for r in fake.requests] == ["/tasks/queue/size"]


def test_a_server_url_with_a_wrong_path_after_api_exits_5(
    workers: Path, fake: FakeConductorServer
) -> None:
    url = fake.url.replace("/api", "/conductor/api")

    proc = run_cli("cli_workers", cwd=workers, server_url=url)

    assert proc.returncode == EXIT_UNREACHABLE
    line = assert_one_error_line(proc, f"no Conductor API at {url}", "check the path")
    assert "try " not in line
