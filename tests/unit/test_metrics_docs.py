"""docs/metrics.md against what a running TaskRunner exposes (with the fake Conductor).

Every value the `status` label of task_poll_error_total takes in these runs must be one the
documentation lists: someone writing an alert from the docs must not meet an unknown one.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from conductor_worker import (
    AuthenticationSettings,
    ConductorClient,
    HttpSettings,
    TaskRunner,
    task_type_worker,
)
from conductor_worker.transport import Transport
from tests.fakes import FakeConductorServer, FakeResponse, invalid_json

pytestmark = pytest.mark.timeout(60)

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
TASK = "metrics_doc_task"


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(task_type_worker, "MAX_ERROR_BACKOFF_SECONDS", 0.2)
    for name in list(os.environ):
        if name.startswith("CONDUCTOR_WORKER_"):
            monkeypatch.delenv(name)


def documented_statuses() -> set[str]:
    """The words the task_poll_error_total row lists for `status`, besides HTTP codes."""
    [row] = [
        line
        for line in DOC.read_text().splitlines()
        if line.startswith("| `task_poll_error_total`")
    ]
    described = row.split("`status`:", 1)[1].split("`includeRetries`", 1)[0]
    return set(re.findall(r"`([a-z_]+)`", described))


def poll_error_statuses(registry: CollectorRegistry) -> set[str]:
    return {
        sample.labels["status"]
        for family in registry.collect()
        for sample in family.samples
        if sample.name == "task_poll_error_total" and sample.value > 0
    }


def run_until_a_poll_fails(
    fake: FakeConductorServer, auth: AuthenticationSettings | None = None
) -> set[str]:
    client = ConductorClient(auth, HttpSettings(fake.url, timeout_seconds=0.5))
    registry = CollectorRegistry()
    runner = TaskRunner(client, registry=registry)
    try:
        runner.start_worker(
            TASK, lambda: {}, poll_interval=0.05, poll_timeout=0.1, lease_extension=False
        )
        deadline = time.monotonic() + 20
        while not poll_error_statuses(registry):
            assert time.monotonic() < deadline, "no poll failed"
            time.sleep(0.01)
    finally:
        runner.shutdown(5.0)
        client.close()
    return poll_error_statuses(registry)


def test_a_failing_token_endpoint_counts_as_auth_and_is_documented() -> None:
    with FakeConductorServer(auth_enabled=True) as fake:
        fake.inject("token", FakeResponse.error(503, "token service down"))

        statuses = run_until_a_poll_fails(
            fake, AuthenticationSettings(fake.key_id, fake.key_secret)
        )

    assert statuses == {"auth"}
    assert "auth" in documented_statuses()


def test_an_unexpected_poll_error_counts_as_unexpected_and_is_documented(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(self: Transport, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(Transport, "batch_poll", broken)
    with FakeConductorServer() as fake:
        statuses = run_until_a_poll_fails(fake)

    assert statuses == {"unexpected"}
    assert "unexpected" in documented_statuses()


@pytest.mark.parametrize(
    ("fault", "status"),
    [
        (lambda: FakeResponse.connection_reset(), "connection"),
        (lambda: invalid_json(), "malformed_response"),
        (lambda: FakeResponse.hang(5.0), "timeout"),
    ],
    ids=["connection", "malformed_response", "timeout"],
)
def test_the_other_words_are_documented(fault: Callable[[], FakeResponse], status: str) -> None:
    with FakeConductorServer() as fake:
        fake.inject("poll", fault())

        statuses = run_until_a_poll_fails(fake)

    assert statuses == {status}
    assert status in documented_statuses()


def test_the_documentation_lists_exactly_the_words_the_code_uses() -> None:
    assert documented_statuses() == {
        "timeout",
        "connection",
        "malformed_response",
        "auth",
        "unexpected",
    }
