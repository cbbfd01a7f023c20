"""The server dies (SIGKILL) while workflows run, and comes back on the same data and port.

A dedicated real server (its own SQLite file and a fixed port, so it can be started again on the
same data; never the session's server) runs 30 workflows of two tasks (one sync worker, one
async) while a TaskRunner works on them. Part-way through, the server is killed with SIGKILL and
started again. Nobody touches the runner: it must reconnect by itself, and every workflow must
complete. Then the server's own records are audited (tests/reliability/attempts.py): every task
attempt ended COMPLETED with the output our worker produced for that very attempt, or
FAILED/TIMED_OUT and was retried within the definition's retryCount, and no result was handed to
on_undelivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from conductor_client.models import WorkflowStatus
from conductor_worker import (
    ConductorClient,
    HttpSettings,
    PendingResult,
    RetryPolicy,
    Task,
    TaskRunner,
)
from tests.conftest import REPO_ROOT, server_required
from tests.integration.conftest import Conductor, describe_workflow
from tests.reliability.attempts import AttemptCounts, audit_attempts
from tests.reliability.two_task_workflow import two_task_workflow

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SERVER_SCRIPT = REPO_ROOT / "scripts" / "conductor-server.sh"
WORKFLOWS = 30
RETRY_COUNT = 3
RESPONSE_TIMEOUT_SECONDS = 10
TASK_SECONDS = 0.5
BATCH_SIZE = 3
START_TIMEOUT_SECONDS = 150.0


def _script_default(name: str) -> str:
    """A value assigned in scripts/conductor-server.sh (NAME="value"), e.g. the pinned version."""
    for line in SERVER_SCRIPT.read_text().splitlines():
        if line.startswith(f"{name}="):
            return line.split("=", 1)[1].strip().strip('"')
    raise AssertionError(f"{name} not found in {SERVER_SCRIPT}")


def _server_jar() -> Path:
    version = os.environ.get("CONDUCTOR_SERVER_VERSION") or _script_default("PINNED_VERSION")
    cache = os.environ.get("CONDUCTOR_SERVER_CACHE") or str(
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "conductor-server"
    )
    return Path(cache) / f"conductor-server-{version}-boot.jar"


def _find_java() -> str | None:
    """The Java 21+ the scripts would use (their own search: JAVA_HOME, /usr/lib/jvm, PATH)."""
    proc = subprocess.run(
        ["bash", "-c", f'source "{REPO_ROOT}/scripts/_common.sh" && find_java 21'],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    lines = proc.stdout.strip().splitlines()
    return lines[-1] if proc.returncode == 0 and lines else None


def _unavailable(reason: str) -> None:
    if server_required():
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class DedicatedServer:
    """A real Conductor server owned by one test: fixed port, SQLite file in `data_dir`."""

    def __init__(self, java: str, jar: Path, data_dir: Path, port: int) -> None:
        self.java = java
        self.jar = jar
        self.data_dir = data_dir
        self.port = port
        self.root = f"http://127.0.0.1:{port}"
        self.url = f"{self.root}/api"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        data_dir.mkdir(parents=True, exist_ok=True)

    def start(self, timeout: float = START_TIMEOUT_SECONDS) -> float:
        """Start the JVM and wait for /health; returns the seconds it took."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.starts += 1
        log = (self.data_dir / f"server-{self.starts}.log").open("wb")
        began = time.monotonic()
        db = f"jdbc:sqlite:{self.data_dir}/conductor.db?busy_timeout=15000&journal_mode=WAL"
        self.proc = subprocess.Popen(
            [
                self.java,
                "-Xms256m",
                "-Xmx1g",
                "-jar",
                str(self.jar),
                "--server.address=127.0.0.1",
                f"--server.port={self.port}",
                f"--spring.datasource.url={db}",
                f"--conductor.file-storage.parentDir={self.data_dir}/worker-payload",
                # Re-check running workflows every 5 s instead of 30 s, so that tasks timed out
                # while the server was down are retried sooner (the test is about the worker).
                "--conductor.app.workflowOffsetTimeout=5",
            ],
            cwd=self.data_dir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = began + timeout
        while not self.healthy():
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited during start-up:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"server not healthy after {timeout:g}s:\n{self.log_tail()}")
            time.sleep(0.5)
        return time.monotonic() - began

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.root}/health", timeout=2) as response:
                return bool(json.loads(response.read()).get("healthy"))
        except (OSError, ValueError):
            return False

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks, no flushing; the SQLite file is left as it is."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)

    def log_tail(self, lines: int = 40) -> str:
        path = self.data_dir / f"server-{self.starts}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@pytest.fixture
def dedicated_server(tmp_path: Path) -> Iterator[DedicatedServer]:
    jar = _server_jar()
    if not jar.is_file():
        _unavailable(f"no Conductor server jar at {jar} (scripts/conductor-server.sh fetches it)")
    java = _find_java()
    if java is None:
        _unavailable("no Java 21+ found for a dedicated Conductor server")
    assert java is not None
    server = DedicatedServer(java, jar, tmp_path / "data", _free_port())
    try:
        yield server
    finally:
        server.stop()


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"after {timeout:g}s: {what}", pytrace=False)
        time.sleep(0.1)


def test_workers_survive_a_server_kill_and_restart_on_the_same_data(
    dedicated_server: DedicatedServer, unique: Callable[[str], str]
) -> None:
    server = dedicated_server
    first_start = server.start()

    # Short timeouts so that requests to the dead server fail fast, as they would in production
    # with a load balancer in front; the runner's own backoff does the rest.
    http = HttpSettings(server.url, timeout_seconds=10.0, connect_timeout_seconds=2.0)
    client = ConductorClient(http=http)
    conductor = Conductor(client, unique)
    sync_type, async_type, workflow = two_task_workflow(
        conductor,
        "restart",
        retry_count=RETRY_COUNT,
        response_timeout_seconds=RESPONSE_TIMEOUT_SECONDS,
    )

    lock = threading.Lock()
    finished: dict[str, dict[str, Any]] = {}  # task id -> the output our worker made for it
    undelivered: list[tuple[PendingResult, str]] = []

    def record(task: Task) -> dict[str, Any]:
        output = {"taskId": task.task_id, "workflowId": task.workflow_instance_id}
        with lock:
            finished[task.task_id or ""] = output
        return output

    def sync_worker(task: Task) -> dict[str, Any]:
        time.sleep(TASK_SECONDS)
        return record(task)

    async def async_worker(task: Task) -> dict[str, Any]:
        await asyncio.sleep(TASK_SECONDS)
        return record(task)

    runner = TaskRunner(
        client,
        registry=CollectorRegistry(),
        shutdown_grace_seconds=10.0,
        # The default policy gives up after about a minute on average (full jitter); a restart
        # on a loaded machine can take longer than that, and what is tested here is that
        # nothing is lost while the server is away.
        retry_policy=RetryPolicy(
            max_attempts=40, initial_delay_seconds=0.5, max_delay_seconds=10.0
        ),
        on_undelivered=lambda item, error: undelivered.append((item, error)),
    )
    try:
        runner.start_worker(sync_type, sync_worker, batch_size=BATCH_SIZE, poll_interval=0.1)
        runner.start_worker(async_type, async_worker, batch_size=BATCH_SIZE, poll_interval=0.1)
        workflow_ids = conductor.start_many(workflow, WORKFLOWS)

        # Kill it while the first stage is part-way through and tasks of both types are running.
        _wait(
            lambda: len(finished) >= WORKFLOWS // 2,
            60,
            f"workers finished only {len(finished)} tasks",
        )
        finished_before_kill = len(finished)
        killed_at = time.monotonic()
        server.kill()
        restart_seconds = server.start()
        print(
            f"\nfirst start {first_start:.0f}s; killed after {finished_before_kill} task results; "
            f"down for {time.monotonic() - killed_at:.0f}s (restart {restart_seconds:.0f}s)"
        )

        # Nobody tells the runner: it has to find the server again by itself.
        done = conductor.wait_for_workflows(workflow_ids, timeout=150)
        completed_at = time.monotonic()
    finally:
        clean = runner.shutdown(timeout=10)

    assert clean, "the runner left tasks or results behind at shutdown"
    assert undelivered == [], [(item.task_id, error) for item, error in undelivered]
    not_completed = [describe_workflow(w) for w in done if w.status is not WorkflowStatus.COMPLETED]
    assert not_completed == [], not_completed

    # The audit, from the server's own records.
    counts = AttemptCounts()
    for wf in done:
        audit_attempts(wf, (sync_type, async_type), finished, RETRY_COUNT, counts)
    print(
        f"{WORKFLOWS} workflows COMPLETED {completed_at - killed_at:.0f}s after the kill; "
        f"{counts}, 0 results lost"
    )
    with contextlib.suppress(Exception):
        conductor.cleanup()
    client.close()
