"""A TaskRunner against the fake Conductor (tests/fakes/conductor.py), for the runner's unit
tests: short client timeouts, a fast retry policy, helpers that check what reached the server.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from conductor_worker import (
    AuthenticationSettings,
    ConductorClient,
    HttpSettings,
    PendingResult,
    RetryPolicy,
    RunnerState,
    TaskRunner,
    task_type_worker,
)
from tests.fakes import FakeConductorServer

TASK = "fault_test_task"
WORKER_ID = "fault-test-worker"
POLL_PATH = f"/api/tasks/poll/batch/{TASK}"
UPDATE_PATH = "/api/tasks"
UPDATE_V2_PATH = "/api/tasks/update-v2"
ANY_UPDATE_PATH = r"/api/tasks(/update-v2)?"

# Read timeout; a poll adds POLL_TIMEOUT on top. Generous, so that a stall of the loaded test
# machine does not turn into a resent update; tests of timeouts pass a short one.
CLIENT_TIMEOUT = 3.0
POLL_TIMEOUT = 0.1
POLL_INTERVAL = 0.05
KEY_ID, KEY_SECRET = "fault-key", "fault-secret"


def fast_and_isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    """For an autouse fixture of each test module using the harness."""
    # The poll back-off doubles from 0.5 s up to 10 s; capped at 1 s here so that a test with
    # five failed polls takes seconds, not half a minute. The doubling itself is unchanged.
    monkeypatch.setattr(task_type_worker, "MAX_ERROR_BACKOFF_SECONDS", 1.0)
    for name in list(os.environ):
        if name.startswith("CONDUCTOR_WORKER_"):
            monkeypatch.delenv(name)


# -- helpers -------------------------------------------------------------------------------------


def wait_until(condition: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(0.01)


def double(n: int) -> dict[str, int]:
    return {"doubled": 2 * n}


def add_numbers(
    fake: FakeConductorServer, count: int, start: int = 0, **fields: Any
) -> dict[str, int]:
    """Schedules `count` tasks with inputs n = start, start+1, ...; task id -> n."""
    ids = fake.add_tasks(TASK, count, input=lambda i: {"n": start + i}, **fields)
    return {task_id: start + i for i, task_id in enumerate(ids)}


def assert_doubled_exactly_once(fake: FakeConductorServer, numbers: Mapping[str, int]) -> None:
    """Each task has exactly one result, COMPLETED with the right output. Call it after the
    runner has shut down, so that a late duplicate would have arrived."""
    results = fake.results
    for task_id, n in numbers.items():
        received = results.get(task_id, [])
        assert len(received) == 1, (task_id, received)
        (result,) = received
        assert result["status"] == "COMPLETED"
        assert result["outputData"] == {"doubled": 2 * n}
        assert result["workerId"] == WORKER_ID
        assert result["workflowInstanceId"] == fake.task(task_id)["workflowInstanceId"]


def raw_task(task_id: str, **overrides: Any) -> dict[str, Any]:
    """A task as the server sends it, for add_raw_task (handed out exactly like this)."""
    return {
        "taskId": task_id,
        "workflowInstanceId": f"wf-{task_id}",
        "taskType": TASK,
        "taskDefName": TASK,
        "referenceTaskName": f"{TASK}_ref",
        "status": "IN_PROGRESS",
        "inputData": {"n": 1},
        "pollCount": 1,
        "responseTimeoutSeconds": 3600,
        **overrides,
    }


@dataclass
class Run:
    fake: FakeConductorServer
    runner: TaskRunner
    registry: CollectorRegistry
    undelivered: list[tuple[PendingResult, str]] = field(default_factory=list)

    def metric(self, name: str) -> float:
        value = self.registry.get_sample_value(name, {"taskType": TASK})
        return 0.0 if value is None else value

    def poll_errors(
        self, status: str | None = None, *, after_failures: bool | None = None
    ) -> float:
        """task_poll_error_total for the task type, summed over the labels not given."""
        total = 0.0
        for family in self.registry.collect():
            for sample in family.samples:
                labels = sample.labels
                if (
                    sample.name == "task_poll_error_total"
                    and labels.get("taskType") == TASK
                    and (status is None or labels.get("status") == status)
                    and (
                        after_failures is None
                        or labels.get("includeRetries") == str(after_failures).lower()
                    )
                ):
                    total += sample.value
        return total

    def stop(self, timeout: float = 5.0) -> bool:
        """shutdown(), checking that it returns within its bound."""
        started = time.monotonic()
        clean = self.runner.shutdown(timeout)
        assert time.monotonic() - started < timeout + 1.0
        assert self.runner.state is RunnerState.STOPPED
        return clean


@contextmanager
def running(
    fake: FakeConductorServer,
    fn: Callable[..., Any] = double,
    *,
    batch_size: int = 2,
    max_attempts: int = 10,
    auth: AuthenticationSettings | None = None,
    on_undelivered: Callable[[PendingResult, str], None] | None = None,
    client_timeout: float = CLIENT_TIMEOUT,
) -> Iterator[Run]:
    """A TaskRunner serving TASK with `fn`, against `fake`; shut down and closed at the end."""
    client = ConductorClient(
        auth,
        HttpSettings(
            fake.url, timeout_seconds=client_timeout, connect_timeout_seconds=client_timeout
        ),
    )
    registry = CollectorRegistry()
    undelivered: list[tuple[PendingResult, str]] = []
    runner = TaskRunner(
        client,
        shutdown_grace_seconds=5.0,
        retry_policy=RetryPolicy(
            max_attempts=max_attempts, initial_delay_seconds=0.05, max_delay_seconds=0.2
        ),
        on_undelivered=on_undelivered or (lambda item, error: undelivered.append((item, error))),
        registry=registry,
    )
    try:
        runner.start_worker(
            TASK,
            fn,
            batch_size=batch_size,
            poll_interval=POLL_INTERVAL,
            poll_timeout=POLL_TIMEOUT,
            worker_id=WORKER_ID,
        )
        yield Run(fake, runner, registry, undelivered)
    finally:
        runner.shutdown(5.0)
        client.close()


def statuses(fake: FakeConductorServer, path: str) -> list[int]:
    return [r.status for r in fake.requests_to(path)]
