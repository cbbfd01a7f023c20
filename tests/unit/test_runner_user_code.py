"""TaskRunner against user code that misbehaves in odd ways, with the fake Conductor.

Worker functions and hooks are the user's: an exception that cannot be printed, a message with
a lone surrogate, an on_undelivered hook that raises SystemExit. Whatever they do, each task's
result reaches the server (or on_undelivered), the runner keeps working and lets go of the
memory of finished tasks, and shutdown() returns True.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Callable
from typing import Any

import pytest

from conductor_worker import (
    PendingResult,
    Task,
    task_context,
)
from tests.fakes import FakeConductorServer, FakeResponse
from tests.fakes.conductor import UPDATES
from tests.unit.awkward_user_code import (
    UNDECODABLE_NAME,
    async_unprintable,
    sync_unprintable,
)
from tests.unit.runner_harness import TASK, fast_and_isolated, running, wait_until

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    fast_and_isolated(monkeypatch)


# -- results that must get through --------------------------------------------------------------


def sync_files(mode: str) -> dict[str, bool]:
    if mode == "raise":
        raise FileNotFoundError(f"cannot open {UNDECODABLE_NAME}")
    task_context().add_log(f"processing {UNDECODABLE_NAME}")
    return {"ok": True}


async def async_files(mode: str) -> dict[str, bool]:
    await asyncio.sleep(0)
    return sync_files(mode)


@pytest.mark.parametrize("fn", [sync_files, async_files], ids=["sync", "async"])
def test_a_lone_surrogate_in_a_reason_or_log_line_is_reported_readably(
    fn: Callable[..., Any],
) -> None:
    with FakeConductorServer() as fake:
        raising, logging_ = fake.add_tasks(TASK, 2, input=lambda i: {"mode": ["raise", "log"][i]})
        with running(fake, fn, batch_size=1) as run:
            results = fake.wait_for_results([raising, logging_])
            assert run.runner.shutdown(5.0)

        [failed] = results[raising]
        assert failed["status"] == "FAILED"
        assert failed["reasonForIncompletion"] == "cannot open report-\\udcff.csv"
        [completed] = results[logging_]
        assert completed["status"] == "COMPLETED"
        assert completed["logs"][0]["log"] == "processing report-\\udcff.csv"
        assert run.undelivered == []


@pytest.mark.parametrize("fn", [sync_unprintable, async_unprintable], ids=["sync", "async"])
def test_an_exception_that_cannot_be_printed_fails_the_task_and_ends_its_lease(
    fn: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    with FakeConductorServer() as fake:
        # A 2 s response timeout: the lease would be extended every second while "running".
        [task_id] = fake.add_tasks(TASK, 1, input={"n": 1}, responseTimeoutSeconds=2)
        with running(fake, fn, batch_size=1) as run:
            [result] = fake.wait_for_results([task_id])[task_id]
            with caplog.at_level(logging.ERROR, logger="conductor_worker"):
                assert run.runner.shutdown(5.0)  # nothing left running

    assert result["status"] == "FAILED"
    assert result["reasonForIncompletion"] == "Unprintable"
    assert fn.__name__ in result["logs"][-1]["log"]  # the traceback, with the user's frame
    assert not [r for r in caplog.records if "still running" in r.getMessage()]
    assert fake.task(task_id)["status"] == "FAILED"


# -- memory of finished tasks --------------------------------------------------------------------


def live_tasks(ids: list[str]) -> int:
    """How many of these tasks (Task objects, inputData and all) are still in memory."""
    wanted = set(ids)
    gc.collect()
    return sum(1 for obj in gc.get_objects() if isinstance(obj, Task) and obj.task_id in wanted)


@pytest.mark.parametrize("fn", [sync_files, async_files], ids=["sync", "async"])
def test_finished_tasks_with_a_response_timeout_are_not_kept_in_memory(
    fn: Callable[..., Any],
) -> None:
    tasks, batch_size = 60, 4
    with FakeConductorServer() as fake:
        # The default response timeout (1 hour): the next automatic heartbeat is 30 min away.
        ids = fake.add_tasks(
            TASK, tasks, input={"mode": "log", "blob": "x" * 100_000}, responseTimeoutSeconds=3600
        )
        with running(fake, fn, batch_size=batch_size) as run:
            fake.wait_for_results(ids, timeout=30)

            wait_until(lambda: live_tasks(ids) == 0)  # idle pool threads keep no job
            assert run.runner.shutdown(5.0)


# -- the on_undelivered hook ---------------------------------------------------------------------


@pytest.mark.parametrize("raised", [SystemExit("hook says no"), KeyboardInterrupt()])
def test_a_hook_raising_a_base_exception_does_not_stop_later_redeliveries(
    raised: BaseException, caplog: pytest.LogCaptureFixture
) -> None:
    given_up: list[str] = []

    def hook(item: PendingResult, error: str) -> None:
        given_up.append(item.task_id)
        if len(given_up) == 1:
            raise raised

    with FakeConductorServer() as fake:
        down = fake.inject(UPDATES, FakeResponse.error(503, "down"))
        [first] = fake.add_tasks(TASK, 1, input={"mode": "log"})
        with running(fake, sync_files, batch_size=1, max_attempts=3, on_undelivered=hook) as run:
            wait_until(lambda: given_up == [first])  # retried, given up; the hook raised
            down.cancel()
            blip = fake.inject(UPDATES, FakeResponse.error(503, "blip"), count=1)
            [second] = fake.add_tasks(TASK, 1, input={"mode": "log"})

            # The first report of the second result fails once; the retry delivers it.
            [result] = fake.wait_for_results([second])[second]
            assert blip.hits == 1
            assert result["status"] == "COMPLETED"
            assert run.runner.shutdown(5.0)

    assert given_up == [first]
    [record] = [r for r in caplog.records if "on_undelivered hook raised" in r.getMessage()]
    assert first in record.getMessage()
    assert fake.task(first)["workflowInstanceId"] in record.getMessage()
