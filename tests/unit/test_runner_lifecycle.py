"""TaskRunner lifecycle and distrust of server answers, against the fake Conductor.

Shutdown from inside a worker, tasks that arrive after the grace period, a lowered batch size
under a backlog, validation of the grace period, and server answers that must not be run as
they are (tasks without ids, a task listed twice, a task of another type).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from conductor_worker import (
    ConductorClient,
    ConfigurationError,
    HttpSettings,
    PendingResult,
    RunnerState,
    TaskResult,
    TaskResultStatus,
    TaskRunner,
    concurrency,
    lease,
    task_context,
    task_type_worker,
)
from tests.conftest import REPO_ROOT
from tests.fakes import FakeConductorServer, FakeResponse
from tests.fakes.conductor import UPDATES
from tests.unit.runner_harness import (
    TASK,
    WORKER_ID,
    add_numbers,
    assert_doubled_exactly_once,
    double,
    fast_and_isolated,
    raw_task,
    running,
    wait_until,
)

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(autouse=True)
def _fast_and_isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    fast_and_isolated(monkeypatch)


# -- shutdown ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_shutdown_from_inside_a_worker_stops_the_runner_and_delivers_that_result(
    kind: str,
) -> None:
    answers: list[bool] = []
    holder: list[TaskRunner] = []

    def stop_here(n: int) -> dict[str, int]:
        answers.append(holder[0].shutdown(5.0))
        return {"doubled": 2 * n}

    async def stop_here_async(n: int) -> dict[str, int]:
        await asyncio.sleep(0)
        return stop_here(n)

    with (
        FakeConductorServer() as fake,
        running(fake, stop_here if kind == "sync" else stop_here_async, batch_size=1) as run,
    ):
        holder.append(run.runner)
        numbers = add_numbers(fake, 1)
        waiter = threading.Thread(target=run.runner.wait_workers, kwargs={"handle_signals": False})
        waiter.start()
        waiter.join(10.0)

        assert not waiter.is_alive(), "wait_workers() did not return"
        assert run.runner.state is RunnerState.STOPPED
        assert answers == [False]  # it could not wait for the task that called it
        assert_doubled_exactly_once(fake, numbers)
        assert run.runner.shutdown() is True  # that shutdown left nothing behind


def test_a_task_arriving_after_the_grace_period_is_handed_back_not_dropped() -> None:
    ran: list[int] = []

    def work(n: int) -> dict[str, int]:
        ran.append(n)
        return {"doubled": 2 * n}

    with FakeConductorServer() as fake:
        client = ConductorClient(http=HttpSettings(fake.url))
        registry = CollectorRegistry()
        runner = TaskRunner(client, registry=registry)
        runner.start_worker(TASK, work, poll_timeout=2.0, worker_id=WORKER_ID)
        wait_until(lambda: registry.get_sample_value("task_poll_counter_total", {"taskType": TASK}))
        # The long poll is open; the task arrives after shutdown's short grace has ended.
        ids: list[str] = []
        adder = threading.Timer(0.6, lambda: ids.extend(add_numbers(fake, 1)))
        adder.start()
        # shutdown() waits for the open poll past its grace period, hands its task back,
        # and has then left nothing behind.
        assert runner.shutdown(timeout=0.3) is True
        adder.join()
        assert ids
        assert ids[0] in fake.results

        (result,) = fake.results[ids[0]]
        assert result["status"] == "IN_PROGRESS"
        assert result["callbackAfterSeconds"] == 0
        assert fake.task(ids[0])["status"] == "SCHEDULED"  # queued again for any worker
        assert ran == []
        client.close()


@pytest.mark.parametrize("grace", [math.inf, math.nan, -1.0])
def test_the_grace_period_must_be_a_finite_number_of_seconds(grace: float) -> None:
    client = ConductorClient(http=HttpSettings("http://127.0.0.1:9/api"))
    with pytest.raises(ConfigurationError, match="finite number of seconds"):
        TaskRunner(client, shutdown_grace_seconds=grace)
    runner = TaskRunner(client)
    with pytest.raises(ConfigurationError, match="finite number of seconds"):
        runner.shutdown(timeout=grace)
    assert runner.shutdown(timeout=0) is True


# -- runtime control -----------------------------------------------------------------------------


def test_a_lowered_batch_size_holds_even_while_tasks_are_queued() -> None:
    lock = threading.Lock()
    now_running = [0]
    peak = [0]

    def slow(n: int) -> dict[str, int]:
        with lock:
            now_running[0] += 1
            peak[0] = max(peak[0], now_running[0])
        time.sleep(0.05)
        with lock:
            now_running[0] -= 1
        return {"doubled": 2 * n}

    with FakeConductorServer() as fake, running(fake, slow, batch_size=6) as run:
        numbers = add_numbers(fake, 120)
        wait_until(lambda: peak[0] == 6)
        run.runner.set_batch_size(TASK, 1)
        worker = run.runner._workers[TASK]
        wait_until(lambda: worker.busy <= 1)  # slots above the new size are given up
        with lock:
            peak[0] = now_running[0]
        done = len(fake.results)
        wait_until(lambda: len(fake.results) >= done + 10)

        assert peak[0] == 1
        fake.wait_for_results(numbers, timeout=20)
        assert run.stop()
        assert_doubled_exactly_once(fake, numbers)


# -- server answers that are not run as they are -------------------------------------------------


def doubling_into(ran: list[str]) -> Callable[[int], dict[str, int]]:
    """`double`, recording each task id it runs in `ran`."""

    def work(n: int) -> dict[str, int]:
        ran.append(task_context().task_id)
        return {"doubled": 2 * n}

    return work


def test_tasks_without_ids_are_not_run_and_the_rest_of_the_answer_is() -> None:
    ran: list[str] = []
    work = doubling_into(ran)

    with FakeConductorServer() as fake:
        good = raw_task("task-good")
        fake.inject("poll", FakeResponse.json(200, [{}, {"hello": "world"}, good]), count=1)
        fake.put_task(good)  # known to the fake (results accepted), not queued
        with running(fake, work) as run:
            wait_until(lambda: "task-good" in fake.results)
            assert run.stop()
            assert ran == ["task-good"]
            assert fake.results["task-good"][0]["status"] == "COMPLETED"
            assert run.metric("task_polled_total") == 3  # everything the server handed over
            assert run.metric("task_execute_time_count") == 1


def test_a_task_handed_out_twice_while_it_runs_is_run_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    started = threading.Event()
    release = threading.Event()
    ran: list[str] = []

    def work(n: int) -> dict[str, int]:
        ran.append(task_context().task_id)
        started.set()
        release.wait(10)
        return {"doubled": 2 * n}

    with FakeConductorServer() as fake:
        twice = raw_task("task-twice")
        fake.add_raw_task(TASK, twice)
        with running(fake, work, batch_size=3) as run:
            assert started.wait(10)
            fake.add_raw_task(TASK, twice)  # the same task again, while it runs here
            wait_until(lambda: "handed out again" in caplog.text)
            release.set()
            wait_until(lambda: "task-twice" in fake.results)
            assert run.stop()

    assert ran == ["task-twice"]
    assert [r["status"] for r in fake.results["task-twice"]] == ["COMPLETED"]


def test_a_task_handed_out_again_before_its_function_starts_is_run_once(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first copy is held between the poll and the worker's thread (as a busy machine
    # might hold it); the second copy arrives in that window.
    gate = threading.Event()
    original_submit = concurrency.ThreadPool.submit
    held: list[threading.Thread] = []

    def held_submit(pool: concurrency.ThreadPool, fn: Any, *args: Any) -> None:
        if not held:
            thread = threading.Thread(
                target=lambda: gate.wait(10) and original_submit(pool, fn, *args)
            )
            held.append(thread)
            thread.start()
            return
        original_submit(pool, fn, *args)

    monkeypatch.setattr(concurrency.ThreadPool, "submit", held_submit)
    ran: list[str] = []
    work = doubling_into(ran)

    with FakeConductorServer() as fake:
        twice = raw_task("task-twice")
        fake.add_raw_task(TASK, twice)
        with running(fake, work, batch_size=3) as run:
            wait_until(lambda: held)
            fake.add_raw_task(TASK, twice)
            wait_until(lambda: "handed out again" in caplog.text)
            gate.set()
            wait_until(lambda: "task-twice" in fake.results)
            assert run.stop()
        held[0].join(5)

    assert ran == ["task-twice"]
    assert [r["status"] for r in fake.results["task-twice"]] == ["COMPLETED"]


def test_a_task_that_cannot_be_started_is_handed_back_and_runs_when_handed_out_again(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Setting up the task's lease fails once (as "can't start new thread" would): the task is
    # not run, not forgotten in the books as running, and goes back to the server at once.
    original_track = lease.LeaseKeeper.track
    failed: list[str] = []

    def track_failing_once(keeper: lease.LeaseKeeper, task: Any, *args: Any) -> Any:
        if not failed:
            failed.append(task.task_id)
            raise RuntimeError("can't start new thread")
        return original_track(keeper, task, *args)

    monkeypatch.setattr(lease.LeaseKeeper, "track", track_failing_once)
    ran: list[str] = []
    work = doubling_into(ran)

    with FakeConductorServer() as fake:
        fake.add_raw_task(TASK, raw_task("task-unlucky"))
        with running(fake, work, batch_size=1) as run:
            wait_until(
                lambda: (
                    [r["status"] for r in fake.results.get("task-unlucky", [])][-1:]
                    == ["COMPLETED"]
                )
            )
            worker = run.runner._workers[TASK]
            wait_until(lambda: worker.busy == 0)
            assert worker.running() == []
            assert run.stop()

    assert failed == ["task-unlucky"]
    assert ran == ["task-unlucky"]
    handed_back, completed = fake.results["task-unlucky"]
    assert (handed_back["status"], handed_back["callbackAfterSeconds"]) == ("IN_PROGRESS", 0)
    assert completed["outputData"] == {"doubled": 2}  # raw_task's input is n=1
    assert "could not be started" in caplog.text
    assert "handed out again" not in caplog.text
    assert "still running after" not in caplog.text


def test_an_in_progress_task_with_a_callback_runs_again_when_handed_out_again() -> None:
    # The same task id comes back after an IN_PROGRESS result: it is not a duplicate.
    ran: list[int] = []

    def work() -> TaskResult:
        context = task_context()
        ran.append(context.poll_count)
        result = TaskResult(
            task_id=context.task_id, workflow_instance_id=context.workflow_instance_id
        )
        if context.poll_count < 3:
            result.status = TaskResultStatus.IN_PROGRESS
            result.callback_after_seconds = 1 if context.poll_count == 1 else 0
        else:
            result.status = TaskResultStatus.COMPLETED
        return result

    with FakeConductorServer() as fake:
        (task_id,) = fake.add_tasks(TASK, 1)
        with running(fake, work, batch_size=2) as run:
            wait_until(
                lambda: [r["status"] for r in fake.results.get(task_id, [])][-1:] == ["COMPLETED"]
            )
            worker = run.runner._workers[TASK]
            wait_until(lambda: worker.busy == 0)
            assert worker.running() == []
            assert run.stop()

    assert ran == [1, 2, 3]
    statuses = [r["status"] for r in fake.results[task_id]]
    assert statuses == ["IN_PROGRESS", "IN_PROGRESS", "COMPLETED"]


def test_a_task_of_another_type_from_update_v2_is_handed_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ran: list[str] = []
    work = doubling_into(ran)

    with FakeConductorServer() as fake:
        foreign = raw_task("task-foreign", taskType="other_type", taskDefName="other_type")
        fake.add_raw_task("other_type", foreign)
        # Queued work (so results go back by update-v2); one answer brings the foreign task.
        numbers = add_numbers(fake, 6)
        injection = fake.inject(
            "update_v2", FakeResponse.json(200, foreign), count=1, after_processing=True
        )
        with caplog.at_level(logging.WARNING), running(fake, work, batch_size=1) as run:
            wait_until(lambda: "task-foreign" in fake.results)
            # The fake took the next queued task for the answer it then replaced: that one
            # is lost to the worker (a real server hands out what it answers).
            wait_until(lambda: sum(1 for t in numbers if t in fake.results) == len(numbers) - 1)
            assert run.stop()

    assert injection.hits == 1
    assert "task-foreign" not in ran
    (handed_back,) = fake.results["task-foreign"]
    assert handed_back["status"] == "IN_PROGRESS"
    assert handed_back["callbackAfterSeconds"] == 0
    assert "of type 'other_type'" in caplog.text


# -- failures that must still be reported and seen ----------------------------------------------


class _Unprintable(KeyboardInterrupt):
    def __str__(self) -> str:
        raise RuntimeError("no str")

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


def test_an_escaping_error_that_cannot_be_printed_still_fails_the_task() -> None:
    def explode(n: int) -> dict[str, int]:
        raise _Unprintable

    with FakeConductorServer() as fake, running(fake, explode) as run:
        numbers = add_numbers(fake, 1)
        fake.wait_for_results(numbers)
        assert run.stop()
        (result,) = fake.results[next(iter(numbers))]
        assert result["status"] == "FAILED"
        assert "_Unprintable" in result["reasonForIncompletion"]
        assert run.runner._workers[TASK].running() == []  # nothing left as running


def test_polls_that_keep_failing_are_logged_again_not_only_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(task_type_worker, "FAILURE_REMINDER_SECONDS", 0.0)
    with FakeConductorServer() as fake:
        fake.inject("poll", FakeResponse.error(404, "No static resource tasks/poll."))
        with caplog.at_level(logging.WARNING), running(fake, double) as run:
            wait_until(lambda: len(_poll_failures(caplog)) >= 3)
            assert run.stop()
    failures = _poll_failures(caplog)
    # A 404 will not heal by retrying: an ERROR, every time it is repeated.
    assert all(record.levelno == logging.ERROR for record in failures)
    assert "times in a row" in failures[-1].getMessage()


def _poll_failures(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().startswith(f"poll for {TASK!r} failed")]


def test_shutdown_called_from_the_undelivered_hook_during_shutdown_returns() -> None:
    calls: list[bool] = []
    holder: list[TaskRunner] = []

    def hook(item: PendingResult, error: str) -> None:
        calls.append(holder[0].shutdown(1.0))  # re-entered from shutdown's own thread

    with FakeConductorServer() as fake:
        fake.inject(UPDATES, FakeResponse.error(503, "down"))
        numbers = add_numbers(fake, 1)
        with running(fake, double, batch_size=1, max_attempts=1000, on_undelivered=hook) as run:
            holder.append(run.runner)
            wait_until(lambda: run.metric("task_update_error_total") >= 2)
            assert run.stop(timeout=0.5) is False  # the result was left undelivered

    assert calls == [False]  # the hook got the result, and its shutdown() call returned
    assert set(numbers).isdisjoint(fake.results)  # the server never accepted it


def test_pause_holds_for_a_poll_that_was_waiting_for_a_free_slot() -> None:
    release = threading.Event()
    ran: list[int] = []

    def gated(n: int) -> dict[str, int]:
        ran.append(n)
        release.wait(10)
        return {"doubled": 2 * n}

    with FakeConductorServer() as fake, running(fake, gated, batch_size=1) as run:
        first = add_numbers(fake, 1)
        wait_until(lambda: ran == [0])
        second = add_numbers(fake, 1, start=1)  # queued; the poll thread waits for the slot
        run.runner.pause(TASK)
        release.set()
        fake.wait_for_results(first)
        time.sleep(0.5)  # a poll, had one been sent, would have taken the queued task by now
        assert ran == [0]
        assert fake.queued(TASK) == 1

        run.runner.resume(TASK)
        fake.wait_for_results(second)
        assert ran == [0, 1]


# -- threads the shutdown waits for, and tasks that outlive it -----------------------------------


@pytest.mark.parametrize(
    ("status", "failures", "max_attempts"),
    [
        pytest.param(503, 3, 2, id="retries-run-out-on-the-redelivery-thread"),
        pytest.param(400, 1, 10, id="rejected-on-the-worker-thread"),
    ],
)
def test_shutdown_from_an_on_undelivered_hook_returns_at_once_and_loses_nothing_else(
    status: int, failures: int, max_attempts: int
) -> None:
    # The hook runs on a thread the shutdown waits for: it cannot wait for itself.
    calls: list[tuple[str, bool, float]] = []
    runners: list[TaskRunner] = []

    def stop_from_the_hook(item: PendingResult, error: str) -> None:
        # The faults are for the task given up; the other one's update or hand-back must land.
        fake.clear_faults()
        started = time.monotonic()
        clean = runners[0].shutdown(5.0)
        calls.append((item.task_id, clean, time.monotonic() - started))

    with FakeConductorServer() as fake:
        fake.inject(UPDATES, FakeResponse.error(status, "no"), count=failures)
        numbers = add_numbers(fake, 2)
        with running(
            fake, batch_size=2, max_attempts=max_attempts, on_undelivered=stop_from_the_hook
        ) as run:
            runners.append(run.runner)
            wait_until(lambda: calls, timeout=15)
            wait_until(lambda: run.runner.state is RunnerState.STOPPED, timeout=10)

        ((given_up, clean, took),) = calls
        assert clean is False
        assert took < 4.0  # not the 5 s it would wait for itself
        # The other task: its result delivered, or (not started yet) handed back.
        (other,) = set(numbers) - {given_up}
        last = fake.results[other][-1]
        assert (last["status"], last.get("callbackAfterSeconds")) in {
            ("COMPLETED", None),
            ("IN_PROGRESS", 0),
        }, fake.results[other]


def test_an_async_task_that_outlives_the_grace_period_is_left_to_the_server(
    tmp_path: Any,
) -> None:
    # A plain program: the runner's shutdown gives up on an async task, the program drops the
    # runner and ends. The task must not be reported (the server times it out, as documented),
    # and the process must exit.
    program = """
import asyncio, gc, time
from tests.fakes import FakeConductorServer
from conductor_worker import ConductorClient, HttpSettings, TaskRunner

async def slow(n: int) -> dict:
    await asyncio.sleep(60)
    return {"doubled": 2 * n}

fake = FakeConductorServer().start()
(task_id,) = fake.add_tasks("slow", 1, input={"n": 1})
runner = TaskRunner(ConductorClient(http=HttpSettings(fake.url)))
runner.start_worker("slow", slow)
while fake.task(task_id)["status"] != "IN_PROGRESS":
    time.sleep(0.05)
print("clean" if runner.shutdown(timeout=0.5) else "not clean", flush=True)
del runner
gc.collect()
time.sleep(0.5)
print("results", fake.results.get(task_id, []), flush=True)
fake.stop()
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONDUCTOR_")}
    proc = subprocess.run(
        [sys.executable, "-c", program],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["not clean", "results []"], proc.stderr
