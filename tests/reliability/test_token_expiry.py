"""A long run against a fake Orkes server whose tokens expire every second or two.

Workers poll and report a steady trickle of tasks while a user thread calls TaskExecutor
(get a task, update a task) the whole time. Nothing may fail where the user can see it: no
poll or update error, no undelivered result, no exception from TaskExecutor, no warning in the
logs; every task is done exactly once. And the client renews each token once: it never asks
for a new token before the one it holds is due (half its lifetime with an ``exp`` claim, the
server's rejection without one), however many threads meet the expiry together.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from conductor_worker import (
    AuthenticationSettings,
    ConductorClient,
    HttpSettings,
    PendingResult,
    RetryPolicy,
    TaskExecutor,
    TaskResultStatus,
    TaskRunner,
)
from tests.fakes import FakeConductorServer, FakeRequest, FakeResponse

pytestmark = pytest.mark.timeout(90)

KEY_ID, KEY_SECRET = "long-run-key", "long-run-secret"
TASK = "token_expiry_task"
RUN_SECONDS = 12.0
FEED_EVERY_SECONDS = 0.05


def double(n: int) -> dict[str, int]:
    time.sleep(0.02)
    return {"doubled": 2 * n}


@contextmanager
def long_run(fake: FakeConductorServer) -> Iterator[dict[str, Any]]:
    """Runs workers, a task feeder and a TaskExecutor user for RUN_SECONDS; yields what the
    run left behind once everything has stopped."""
    client = ConductorClient(
        AuthenticationSettings(KEY_ID, KEY_SECRET),
        HttpSettings(fake.url, timeout_seconds=2.0, connect_timeout_seconds=2.0),
    )
    registry = CollectorRegistry()
    undelivered: list[tuple[PendingResult, str]] = []
    runner = TaskRunner(
        client,
        registry=registry,
        shutdown_grace_seconds=5.0,
        retry_policy=RetryPolicy(max_attempts=5, initial_delay_seconds=0.05),
        on_undelivered=lambda item, error: undelivered.append((item, error)),
    )
    numbers: dict[str, int] = {}
    executor_errors: list[BaseException] = []
    executor_calls = 0
    stop = threading.Event()

    def feed() -> None:
        n = 0
        while not stop.is_set():
            (task_id,) = fake.add_tasks(TASK, 1, input={"n": n})
            numbers[task_id] = n
            n += 1
            stop.wait(FEED_EVERY_SECONDS)

    def use_executor() -> None:
        # The user's own calls through the generated client share the token provider.
        nonlocal executor_calls
        executor = TaskExecutor(client)
        other = fake.add_tasks("executor_task", 1_000)
        for task_id in other:
            if stop.is_set():
                break
            try:
                assert executor.get_task(task_id).task_id == task_id
                workflow_id = fake.task(task_id)["workflowInstanceId"]
                executor.update_task(
                    task_id, workflow_id, TaskResultStatus.COMPLETED, {"by": "executor"}
                )
                executor_calls += 2
            except BaseException as error:  # any failure is the finding
                executor_errors.append(error)
            stop.wait(0.03)

    threads = [threading.Thread(target=feed), threading.Thread(target=use_executor)]
    began = time.monotonic()
    try:
        runner.start_worker(TASK, double, batch_size=4, poll_interval=0.05, poll_timeout=0.2)
        for thread in threads:
            thread.start()
        time.sleep(RUN_SECONDS)
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
        fake.wait_for_results(list(numbers), timeout=10)
        clean = runner.shutdown(10.0)
        client.close()
    yield {
        "seconds": time.monotonic() - began,
        "registry": registry,
        "undelivered": undelivered,
        "numbers": dict(numbers),
        "executor_errors": executor_errors,
        "executor_calls": executor_calls,
        "clean": clean,
    }


def serve_get_task(fake: FakeConductorServer) -> None:
    """GET /api/tasks/{id} for TaskExecutor.get_task (behind the token check, like the rest)."""

    def get_task(request: FakeRequest) -> FakeResponse:
        return FakeResponse.json(200, fake.task(request.path_params["task_id"]))

    fake.add_route("GET", r"/api/tasks/(?P<task_id>[^/]+)", get_task)


def metric_total(registry: CollectorRegistry, name: str) -> float:
    return sum(
        sample.value
        for family in registry.collect()
        for sample in family.samples
        if sample.name == name
    )


def assert_nothing_failed(fake: FakeConductorServer, run: dict[str, Any]) -> None:
    assert run["executor_errors"] == []
    assert run["executor_calls"] > 50, "the user thread hardly ran: the test lost its point"
    assert run["undelivered"] == []
    assert run["clean"]
    registry = run["registry"]
    assert metric_total(registry, "task_poll_error_total") == 0
    assert metric_total(registry, "task_update_error_total") == 0
    numbers: dict[str, int] = run["numbers"]
    assert len(numbers) > 100
    results = fake.results
    for task_id, n in numbers.items():
        received = results.get(task_id, [])
        assert [r["status"] for r in received] == ["COMPLETED"], (task_id, received)
        assert received[0]["outputData"] == {"doubled": 2 * n}


def token_request_times(fake: FakeConductorServer) -> list[float]:
    return sorted(r.at for r in fake.requests_to("/api/token") if r.status == 200)


def test_tokens_with_exp_are_renewed_ahead_once_per_lifetime(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ttl = 2.0
    caplog.set_level(logging.WARNING)
    with FakeConductorServer(
        auth_enabled=True, key_id=KEY_ID, key_secret=KEY_SECRET, token_ttl_seconds=ttl
    ) as fake:
        serve_get_task(fake)
        with long_run(fake) as run:
            assert_nothing_failed(fake, run)
            # Renewed ahead of the expiry, so the server never had to reject one.
            assert [r for r in fake.requests if r.status == 401] == []
            times = token_request_times(fake)
            # A token is renewed when half its life is left (the margin is capped at half
            # the lifetime): one renewal per token, never several for the same one.
            assert len(times) >= RUN_SECONDS / ttl, times
            gaps = [b - a for a, b in itertools.pairwise(times)]
            # Times are when answers were logged, not when tokens were issued: allow for a
            # stalled handler. Several renewals of one token would show as gaps near zero.
            assert min(gaps) >= ttl / 2 - 0.25, gaps
            assert len(fake.requests_to("/api/token")) == len(times)  # none refused
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_tokens_without_exp_are_renewed_once_per_expiry(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Without an exp claim the client cannot know the lifetime (it assumes 30 minutes): it
    # learns of each expiry from a 401 EXPIRED_TOKEN, renews once for all the threads that met
    # it, and retries their calls.
    ttl = 1.0
    caplog.set_level(logging.WARNING)
    with FakeConductorServer(
        auth_enabled=True,
        key_id=KEY_ID,
        key_secret=KEY_SECRET,
        token_ttl_seconds=ttl,
        exp_claim=False,
    ) as fake:
        serve_get_task(fake)
        with long_run(fake) as run:
            assert_nothing_failed(fake, run)
            times = token_request_times(fake)
            expiries = len(times) - 1
            assert expiries >= RUN_SECONDS / (2 * ttl), times
            # Each renewal only after the previous token had expired: one per expiry.
            gaps = [b - a for a, b in itertools.pairwise(times)]
            assert min(gaps) >= ttl - 0.25, gaps  # logging-time slack, as above
            rejected = [r for r in fake.requests if r.status == 401]
            assert rejected, "no call met an expired token: the test lost its point"
            # Every rejected call was a call with a token the server had let expire.
            assert all(fake.is_expired(r.header("X-Authorization") or "") for r in rejected)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
