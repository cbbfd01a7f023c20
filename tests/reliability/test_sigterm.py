"""Shutdown by signal, in a real process (tests/reliability/signal_worker.py).

SIGTERM while tasks (sync and async) are running: the process stops polling, lets them finish,
delivers every result, and exits 0 within the grace period; the server has every result and
handed out nothing after the signal. A second signal forces the exit at once (128 + SIGTERM).
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conductor_client.models import TaskStatus, WorkflowStatus
from tests.integration.conftest import Conductor, describe_workflow

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

SCRIPT = Path(__file__).resolve().parent / "signal_worker.py"
TASK_SECONDS = 4.0
BATCH = 5
EXTRA = 3  # workflows per type beyond what the worker takes at once: they must stay queued
GRACE_SECONDS = 20.0


class WorkerProcess:
    """signal_worker.py as a child process; its stdout lines collected by a thread."""

    def __init__(self, url: str, sync_type: str, async_type: str, seconds: float, batch: int):
        args = [url, sync_type, async_type, str(seconds), str(batch), str(GRACE_SECONDS)]
        self.proc = subprocess.Popen(
            [sys.executable, str(SCRIPT), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self.stderr = ""
        self._readers = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.strip())

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        self.stderr = self.proc.stderr.read()

    def ids(self, word: str) -> set[str]:
        return {line.split()[1] for line in list(self.lines) if line.startswith(word + " ")}

    def wait_for(self, condition: str, check: object, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not callable(check) or not check():
            if self.proc.poll() is not None:
                pytest.fail(f"worker exited ({self.proc.returncode}) before {condition}")
            if time.monotonic() > deadline:
                pytest.fail(f"after {timeout:g}s: not {condition}; output {self.lines}")
            time.sleep(0.05)

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait_exit(self, timeout: float) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"worker still running {timeout:g}s after the signal; output {self.lines}")
        for reader in self._readers:
            reader.join(5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def processes() -> Iterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    yield started
    for process in started:
        process.kill()


def test_sigterm_drains_running_tasks_and_delivers_every_result(
    conductor: Conductor, conductor_url: str, processes: list[WorkerProcess]
) -> None:
    sync_type = conductor.task_def("sigterm_sync", response_timeout_seconds=60)
    async_type = conductor.task_def("sigterm_async", response_timeout_seconds=60)
    sync_wf = conductor.workflow_def([sync_type], prefix="sigterm_sync_wf")
    async_wf = conductor.workflow_def([async_type], prefix="sigterm_async_wf")

    # Queued before the worker starts, so each type fills its slots at once and no task
    # finishes before the last one starts, however slow the workflow starts are.
    workflow_ids = conductor.start_many(sync_wf, BATCH + EXTRA) + conductor.start_many(
        async_wf, BATCH + EXTRA
    )
    worker = WorkerProcess(conductor_url, sync_type, async_type, TASK_SECONDS, BATCH)
    processes.append(worker)
    worker.wait_for("ready", lambda: "READY" in worker.lines)
    # Every slot busy (BATCH sync + BATCH async), nothing finished yet: then the signal.
    worker.wait_for(f"{2 * BATCH} tasks running", lambda: len(worker.ids("STARTED")) >= 2 * BATCH)
    assert not worker.ids("FINISHED"), "a task finished before the signal: make them longer"
    signalled = time.monotonic()
    worker.signal(signal.SIGTERM)
    code = worker.wait_exit(GRACE_SECONDS + 10)
    took = time.monotonic() - signalled

    started, finished = worker.ids("STARTED"), worker.ids("FINISHED")
    assert code == 0, f"exit {code}; stderr:\n{worker.stderr[-3000:]}"
    assert "EXIT clean" in worker.lines
    assert len(started) == 2 * BATCH, "tasks were polled after the signal"
    assert finished == started
    assert took < GRACE_SECONDS, f"drain took {took:.1f}s"

    # The server's record, read after the process is gone: every result arrived.
    by_id = {}
    for workflow_id in workflow_ids:
        wf = conductor.get(workflow_id)
        (task,) = wf.tasks or []
        by_id[task.task_id] = (wf, task)
    ran = [by_id[task_id] for task_id in started]
    for wf, task in ran:
        assert task.status is TaskStatus.COMPLETED, describe_workflow(wf)
        assert task.poll_count == 1, describe_workflow(wf)  # no retry, no second hand-out
        assert (task.output_data or {}).get("taskId") == task.task_id
    # The rest were never handed out: the worker stopped polling at the signal.
    waiting = [(wf, task) for task_id, (wf, task) in by_id.items() if task_id not in started]
    assert len(waiting) == 2 * EXTRA
    for wf, task in waiting:
        assert task.status is TaskStatus.SCHEDULED, describe_workflow(wf)
        assert not task.poll_count, describe_workflow(wf)
    completed = conductor.wait_for_workflows([wf.workflow_id or "" for wf, _ in ran], timeout=15)
    assert all(wf.status is WorkflowStatus.COMPLETED for wf in completed)
    print(f"\nSIGTERM with {len(ran)} tasks running: exit 0 after {took:.1f}s, 0 results lost")


def test_second_sigterm_exits_at_once(
    conductor: Conductor, conductor_url: str, processes: list[WorkerProcess]
) -> None:
    sync_type = conductor.task_def("sigterm2_sync", response_timeout_seconds=120)
    async_type = conductor.task_def("sigterm2_async", response_timeout_seconds=120)
    sync_wf = conductor.workflow_def([sync_type], prefix="sigterm2_sync_wf")
    async_wf = conductor.workflow_def([async_type], prefix="sigterm2_async_wf")

    worker = WorkerProcess(conductor_url, sync_type, async_type, 600.0, 1)
    processes.append(worker)
    worker.wait_for("ready", lambda: "READY" in worker.lines)
    conductor.start(sync_wf)
    conductor.start(async_wf)
    worker.wait_for("both tasks running", lambda: len(worker.ids("STARTED")) == 2)

    signalled = time.monotonic()
    worker.signal(signal.SIGTERM)
    # The first signal starts a drain that would take 10 minutes. Two signals that arrive
    # before Python runs its handler count as one, so repeat until the process is gone.
    deadline = time.monotonic() + 10
    while worker.proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
        with contextlib.suppress(ProcessLookupError):
            worker.signal(signal.SIGTERM)
    code = worker.wait_exit(10)
    took = time.monotonic() - signalled

    assert code == 128 + signal.SIGTERM, f"exit {code}; stderr:\n{worker.stderr[-3000:]}"
    assert took < 5, f"took {took:.1f}s to exit after the second signal"
    assert not worker.ids("FINISHED")
    assert "second signal" in worker.stderr
