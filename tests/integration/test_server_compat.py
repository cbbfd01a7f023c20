"""Server compatibility: what differs between server lines, checked on the real servers.

Every test here carries the ``compat`` marker, as do the core runner tests elsewhere in
``tests/integration`` (a workflow of sync and async workers, IN_PROGRESS with a callback,
terminal failures and server retries, lease extension, TaskExecutor, update-v2).
``scripts/test.sh`` runs them twice: in the main run against the pinned server (3.32.3), then
once more against the pinned old line::

    CONDUCTOR_SERVER_VERSION=3.21.14 pytest -m compat    # the session starts that server

The tests assert what a user of the SDK sees, which must be the same on every line; where the
servers' raw answers differ, ``FACTS`` (tests/integration/conftest.py) records what each pinned
server answers and the tests check it (on a server not listed, only the SDK's behaviour is
checked).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import Any, cast

import pytest
import urllib3
from prometheus_client import CollectorRegistry

import conductor_client as cc
from conductor_client.exceptions import NotFoundException
from conductor_client.models import WorkflowStatus
from conductor_worker import ConductorClient, TaskExecutor, TaskRunner, task_context

pytestmark = pytest.mark.compat

# The fixtures' helper and the server facts (tests/integration/conftest.py); typed loosely here
# because a test module does not import its conftest.
Conductor = Any
ServerFacts = Any

POLL_INTERVAL = 0.1
WORKER_ID = "compat-test"


def series_total(registry: CollectorRegistry, name: str, task_type: str) -> float:
    """Sum of every sample called `name` for this task type, whatever its other labels."""
    return sum(
        sample.value
        for family in registry.collect()
        for sample in family.samples
        if sample.name == name and sample.labels.get("taskType") == task_type
    )


# -- the raw answers that differ between lines -------------------------------------------------


def test_empty_poll_and_missing_task_answers_match_the_recorded_facts(
    conductor_url: str,
    server_version: str | None,
    facts: ServerFacts | None,
    unique: Callable[[str], str],
) -> None:
    if os.environ.get("CONDUCTOR_SERVER_VERSION") and facts is None:
        pytest.fail(f"no FACTS recorded for server {server_version}: check them and add them")
    http = urllib3.PoolManager(timeout=urllib3.Timeout(total=15.0), retries=False)
    nothing = unique("compat_nothing")
    batch = http.request(
        "GET", f"{conductor_url}/tasks/poll/batch/{nothing}?workerid=w&count=2&timeout=100"
    )
    assert batch.status in (200, 204)
    if batch.status == 200:
        assert batch.data.strip() == b"[]"
    single = http.request("GET", f"{conductor_url}/tasks/poll/{nothing}?workerid=w")
    assert single.status == 204
    missing = http.request("GET", f"{conductor_url}/tasks/{unique('no_such_task')}")
    assert missing.status in (204, 404)
    if facts is not None:
        assert batch.status == facts.empty_batch_poll_status
        assert missing.status == facts.missing_task_status


def test_generated_client_reads_an_empty_poll_as_an_empty_list(
    client: ConductorClient, unique: Callable[[str], str]
) -> None:
    nothing = unique("compat_nothing")
    answer = client.tasks.batch_poll_with_http_info(
        nothing, workerid=WORKER_ID, count=5, timeout=100
    )
    assert answer.status_code in (200, 204)
    assert answer.data == []
    assert client.tasks.batch_poll(nothing, workerid=WORKER_ID, count=1, timeout=0) == []


def test_a_missing_task_is_not_found_through_task_executor(
    client: ConductorClient, facts: ServerFacts | None, unique: Callable[[str], str]
) -> None:
    missing = unique("no_such_task")
    executor = TaskExecutor(client, worker_id=WORKER_ID)
    with pytest.raises(NotFoundException):
        executor.get_task(missing)
    # The generated client passes the server's answer through: None for a 204.
    if facts is not None and facts.missing_task_status == 204:
        assert cast("cc.Task | None", client.tasks.get_task(missing)) is None
    elif facts is not None:
        with pytest.raises(NotFoundException):
            client.tasks.get_task(missing)


# -- the runner on the server ------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_an_idle_worker_keeps_polling_quietly_and_runs_a_late_task(
    conductor: Conductor,
    runner: TaskRunner,
    registry: CollectorRegistry,
    caplog: pytest.LogCaptureFixture,
) -> None:
    task_type = conductor.task_def("compat_idle")
    workflow_name = conductor.workflow_def(
        [conductor.simple_task(task_type, "echo", {"n": "${workflow.input.n}"})],
        output_parameters={"echo": "${echo.output}"},
    )

    def echo(n: int) -> dict[str, int]:
        return {"n": n, "twice": 2 * n}

    caplog.set_level(logging.INFO, logger="conductor_worker")
    runner.start_worker(task_type, echo, poll_interval=POLL_INTERVAL, poll_timeout=0.3)
    # Nothing is queued: every poll comes back empty, and the loop just polls again.
    conductor.wait_until(
        lambda: series_total(registry, "task_poll_time_count", task_type) >= 5,
        timeout=20,
        message="fewer than 5 empty polls answered",
    )
    assert series_total(registry, "task_polled_total", task_type) == 0
    assert series_total(registry, "task_poll_error_total", task_type) == 0

    workflow = conductor.wait_for_workflow(conductor.start(workflow_name, {"n": 21}))
    assert workflow.status is WorkflowStatus.COMPLETED, workflow.reason_for_incompletion
    assert workflow.output == {"echo": {"n": 21, "twice": 42}}
    assert series_total(registry, "task_poll_error_total", task_type) == 0
    assert series_total(registry, "task_update_error_total", task_type) == 0
    noisy = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert noisy == [], [r.getMessage() for r in noisy]


@pytest.mark.timeout(60)
def test_results_go_back_by_update_v2_which_hands_over_the_next_task(
    conductor: Conductor,
    runner: TaskRunner,
    registry: CollectorRegistry,
    facts: ServerFacts | None,
) -> None:
    count = 6
    task_type = conductor.task_def("compat_v2")
    workflow_name = conductor.workflow_def(
        [conductor.simple_task(task_type, "step", {"i": "${workflow.input.i}"})],
        output_parameters={"i": "${step.output.i}", "by": "${step.output.by}"},
    )
    ids = [conductor.start(workflow_name, {"i": i}) for i in range(count)]
    conductor.wait_until(lambda: conductor.queue_size(task_type) == count, timeout=15)

    async def step(i: int) -> dict[str, Any]:
        await asyncio.sleep(0)
        return {"i": i, "by": task_context().worker_id}

    # A long poll_timeout: idle polls after the last task must not pad the count below.
    runner.start_worker(
        task_type,
        step,
        batch_size=1,
        poll_interval=POLL_INTERVAL,
        poll_timeout=5.0,
        worker_id=WORKER_ID,
    )
    workflows = conductor.wait_for_workflows(ids)

    assert [w.status for w in workflows] == [WorkflowStatus.COMPLETED] * count
    # A task handed over by update-v2 is assigned to the worker id of the result sent.
    assert [w.output for w in workflows] == [{"i": i, "by": WORKER_ID} for i in range(count)]
    assert all(t.worker_id == WORKER_ID for w in workflows for t in w.tasks or [])
    assert series_total(registry, "task_polled_total", task_type) == count
    polls = series_total(registry, "task_poll_counter_total", task_type)
    transport = runner._transport
    if facts is not None:
        assert transport.update_v2_supported is facts.has_update_v2
    if transport.update_v2_supported:
        # One slot, six tasks: after the first poll, each result's update-v2 answer carried
        # the next task, so far fewer polls than tasks were needed.
        assert polls < count, f"{polls:g} polls for {count} tasks"
    else:
        assert transport.update_v2_supported is False  # it was tried and fell back
        assert polls >= count
