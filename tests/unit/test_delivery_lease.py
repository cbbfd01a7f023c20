"""Unit tests for conductor_worker.delivery (RetryPolicy, Redelivery) and conductor_worker.lease.

Both talk to the server only through ``transport.update(body, take_next=...)``; here that is a
stub that records every call and fails on demand. Timing is checked with deadline loops.
"""

from __future__ import annotations

import gc
import json
import logging
import random
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from conductor_client.models import Task
from conductor_worker.delivery import PendingResult, Redelivery, RetryPolicy
from conductor_worker.lease import COMPACT_MIN_ENTRIES, MIN_INTERVAL_SECONDS, LeaseKeeper
from conductor_worker.transport import ServerError

FAST = RetryPolicy(max_attempts=5, initial_delay_seconds=0.001, max_delay_seconds=0.01)
SLOW = RetryPolicy(max_attempts=5, initial_delay_seconds=60.0, max_delay_seconds=60.0)


def retryable(message: str = "HTTP 503") -> ServerError:
    return ServerError(message, kind="http_503", status=503, retryable=True)


def not_retryable(message: str = "HTTP 400: bad body") -> ServerError:
    return ServerError(message, kind="http_400", status=400, retryable=False)


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.002)


@dataclass
class Call:
    at: float
    body: bytes
    take_next: bool
    error: BaseException | None
    thread: threading.Thread


@dataclass
class StubTransport:
    """update() raises the queued errors in order, then succeeds; `gate` can hold calls and
    `on_call` runs inside each call, before it is recorded."""

    errors: list[BaseException] = field(default_factory=list)
    gate: threading.Event | None = None
    on_call: Callable[[bytes], None] | None = None
    calls: list[Call] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def update(self, body: bytes, *, take_next: bool) -> None:
        if self.on_call is not None:
            self.on_call(body)
        if self.gate is not None:
            self.gate.wait(5)
        with self.lock:
            error = self.errors.pop(0) if self.errors else None
            now = time.monotonic()
            self.calls.append(Call(now, body, take_next, error, threading.current_thread()))
        if error is not None:
            raise error

    def bodies(self) -> list[bytes]:
        with self.lock:
            return [call.body for call in self.calls]

    def successes(self) -> list[Call]:
        with self.lock:
            return [call for call in self.calls if call.error is None]


@dataclass
class Hooks:
    undelivered: list[tuple[PendingResult, str]] = field(default_factory=list)
    attempts: list[tuple[PendingResult, float, ServerError | None]] = field(default_factory=list)

    def on_undelivered(self, item: PendingResult, error: str) -> None:
        self.undelivered.append((item, error))

    def on_attempt(self, item: PendingResult, seconds: float, error: ServerError | None) -> None:
        self.attempts.append((item, seconds, error))


def pending(n: int = 1) -> PendingResult:
    return PendingResult("t", f"task-{n}", f"wf-{n}", f'{{"taskId":"task-{n}"}}'.encode())


@pytest.fixture
def hooks() -> Hooks:
    return Hooks()


@pytest.fixture
def make_redelivery(hooks: Hooks) -> Iterator[Callable[[StubTransport, RetryPolicy], Redelivery]]:
    made: list[Redelivery] = []

    def make(transport: StubTransport, policy: RetryPolicy) -> Redelivery:
        stub: Any = transport
        redelivery = Redelivery(stub, policy, hooks.on_undelivered, hooks.on_attempt)
        made.append(redelivery)
        return redelivery

    yield make
    for redelivery in made:
        redelivery.close()


# -- RetryPolicy --------------------------------------------------------------------------------


def test_retry_delay_is_within_half_ceiling_and_ceiling() -> None:
    policy = RetryPolicy(max_attempts=20, initial_delay_seconds=0.5, max_delay_seconds=30.0)

    for attempt in range(1, 15):
        ceiling = min(30.0, 0.5 * 2 ** (attempt - 1))
        delays = [policy.delay(attempt) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays), attempt
        assert max(delays) - min(delays) > 0  # jittered, not fixed


def test_retry_delay_ceiling_doubles_and_is_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(random, "uniform", lambda low, high: (low, high))
    policy = RetryPolicy(initial_delay_seconds=0.5, max_delay_seconds=5.0)

    bounds: list[Any] = [policy.delay(attempt) for attempt in range(1, 8)]

    assert bounds == [
        (0.25, 0.5),
        (0.5, 1.0),
        (1.0, 2.0),
        (2.0, 4.0),
        (2.5, 5.0),
        (2.5, 5.0),
        (2.5, 5.0),
    ]


def test_retry_policy_defaults() -> None:
    policy = RetryPolicy()

    assert policy.max_attempts >= 2
    assert 0 < policy.initial_delay_seconds <= policy.max_delay_seconds


# -- Redelivery ---------------------------------------------------------------------------------


def test_delivered_after_retries(make_redelivery: Any, hooks: Hooks) -> None:
    transport = StubTransport(errors=[retryable("first"), retryable("second")])
    redelivery = make_redelivery(transport, FAST)
    item = pending()

    redelivery.submit(item, retryable("initial"))  # the caller's own attempt failed
    wait_for(lambda: len(transport.successes()) == 1 and redelivery.pending == 0)

    assert transport.bodies() == [item.body] * 3
    assert all(call.take_next is False for call in transport.calls)
    assert [error and str(error) for _, _, error in hooks.attempts] == ["first", "second", None]
    assert all(seen is item and seconds >= 0 for seen, seconds, _ in hooks.attempts)
    assert item.attempts == 3
    assert item.last_error == "second"
    assert hooks.undelivered == []


def test_non_retryable_error_gives_up_at_once(make_redelivery: Any, hooks: Hooks) -> None:
    transport = StubTransport()
    redelivery = make_redelivery(transport, FAST)
    item = pending()

    redelivery.submit(item, not_retryable("HTTP 400: no such task"))

    assert hooks.undelivered == [(item, "HTTP 400: no such task")]  # before submit returned
    assert item.attempts == 1
    assert redelivery.pending == 0
    assert transport.calls == []


def test_non_retryable_error_on_a_retry_gives_up(make_redelivery: Any, hooks: Hooks) -> None:
    transport = StubTransport(errors=[not_retryable("HTTP 404: gone"), retryable()])
    redelivery = make_redelivery(transport, FAST)
    item = pending()

    redelivery.submit(item, retryable())
    wait_for(lambda: len(hooks.undelivered) == 1)

    assert hooks.undelivered == [(item, "HTTP 404: gone")]
    assert len(transport.calls) == 1
    assert [str(error) for _, _, error in hooks.attempts] == ["HTTP 404: gone"]
    assert item.attempts == 2


def test_max_attempts_counts_every_attempt(make_redelivery: Any, hooks: Hooks) -> None:
    policy = RetryPolicy(max_attempts=4, initial_delay_seconds=0.001, max_delay_seconds=0.005)
    transport = StubTransport(errors=[retryable(f"fail {i}") for i in range(1, 10)])
    redelivery = make_redelivery(transport, policy)
    item = pending()

    redelivery.submit(item, retryable("fail 0"))
    wait_for(lambda: len(hooks.undelivered) == 1 and redelivery.pending == 0)

    assert len(transport.calls) == 3  # plus the caller's own first attempt: 4 in all
    assert item.attempts == 4
    assert hooks.undelivered == [(item, "fail 3")]
    assert len(hooks.attempts) == 3


def test_drain_sends_everything_queued_now(make_redelivery: Any, hooks: Hooks) -> None:
    transport = StubTransport()
    redelivery = make_redelivery(transport, SLOW)  # a minute of backoff for each
    items = [pending(n) for n in range(3)]
    for item in items:
        redelivery.submit(item, retryable())
    assert redelivery.pending == 3

    started = time.monotonic()
    assert redelivery.drain(started + 5) is True

    assert time.monotonic() - started < 4  # the backoff was skipped
    assert sorted(transport.bodies()) == sorted(item.body for item in items)
    assert redelivery.pending == 0
    assert hooks.undelivered == []


def test_drain_with_nothing_queued_returns_at_once(make_redelivery: Any) -> None:
    redelivery = make_redelivery(StubTransport(), FAST)

    assert redelivery.drain(time.monotonic() + 5) is True


def test_drain_gives_up_at_the_deadline(make_redelivery: Any, hooks: Hooks) -> None:
    gate = threading.Event()
    transport = StubTransport(gate=gate)
    redelivery = make_redelivery(transport, SLOW)
    redelivery.submit(pending(), retryable())

    started = time.monotonic()
    try:
        assert redelivery.drain(started + 0.2) is False
        assert time.monotonic() - started >= 0.2
        assert redelivery.pending == 1  # being sent
    finally:
        gate.set()
    wait_for(lambda: redelivery.pending == 0)
    assert hooks.undelivered == []


def test_close_reports_what_is_left_as_undelivered(make_redelivery: Any, hooks: Hooks) -> None:
    transport = StubTransport()
    redelivery = make_redelivery(transport, SLOW)
    items = [pending(1), pending(2)]
    before = set(threading.enumerate())
    for item in items:
        redelivery.submit(item, retryable("HTTP 503: busy"))
    [thread] = [t for t in threading.enumerate() if t not in before]
    assert thread.name == "conductor-redelivery"

    left = redelivery.close()

    assert sorted(i.task_id for i in left) == ["task-1", "task-2"]
    assert sorted((i.task_id, e) for i, e in hooks.undelivered) == [
        ("task-1", "HTTP 503: busy"),
        ("task-2", "HTTP 503: busy"),
    ]
    assert redelivery.pending == 0
    assert transport.calls == []
    thread.join(5)
    assert not thread.is_alive()


def test_close_with_nothing_queued_returns_nothing(make_redelivery: Any, hooks: Hooks) -> None:
    assert make_redelivery(StubTransport(), FAST).close() == []
    assert hooks.undelivered == []


def test_submit_after_close_is_reported_undelivered(make_redelivery: Any, hooks: Hooks) -> None:
    transport = StubTransport()
    redelivery = make_redelivery(transport, FAST)
    redelivery.close()
    item = pending()

    redelivery.submit(item, retryable("late"))  # a task that outlived the shutdown

    assert hooks.undelivered == [(item, "late")]
    assert redelivery.pending == 0
    assert transport.calls == []


def test_unexpected_transport_error_gives_up_and_keeps_the_thread(
    make_redelivery: Any, hooks: Hooks, caplog: pytest.LogCaptureFixture
) -> None:
    transport = StubTransport(errors=[RuntimeError("bug in transport")])
    redelivery = make_redelivery(transport, FAST)
    broken, fine = pending(1), pending(2)

    with caplog.at_level(logging.ERROR, logger="conductor_worker.delivery"):
        redelivery.submit(broken, retryable())
        wait_for(lambda: len(hooks.undelivered) == 1)
        redelivery.submit(fine, retryable())
        wait_for(lambda: len(transport.successes()) == 1)

    assert hooks.undelivered == [(broken, "RuntimeError('bug in transport')")]
    assert transport.successes()[0].body == fine.body
    assert any(r.exc_info and "task-1" in r.getMessage() for r in caplog.records)


def test_undelivered_is_logged_with_ids_and_a_raising_hook_is_contained(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def hook(item: PendingResult, error: str) -> None:
        raise ValueError("hook bug")

    stub: Any = StubTransport()
    redelivery = Redelivery(stub, FAST, hook)

    with caplog.at_level(logging.ERROR, logger="conductor_worker.delivery"):
        redelivery.submit(pending(5), not_retryable())

    messages = [r.getMessage() for r in caplog.records]
    assert any("task-5" in m and "wf-5" in m and "could not be delivered" in m for m in messages)
    assert any("on_undelivered hook raised" in m for m in messages)


@pytest.mark.parametrize("raised", [SystemExit("hook says no"), KeyboardInterrupt()])
def test_a_hook_raising_a_base_exception_leaves_the_retrier_working(
    raised: BaseException, caplog: pytest.LogCaptureFixture
) -> None:
    given_up: list[str] = []

    def hook(item: PendingResult, error: str) -> None:
        given_up.append(item.task_id)
        raise raised

    transport = StubTransport(errors=[retryable(), retryable(), retryable()])
    stub: Any = transport
    redelivery = Redelivery(stub, RetryPolicy(max_attempts=3, initial_delay_seconds=0.001), hook)
    try:
        with caplog.at_level(logging.ERROR, logger="conductor_worker.delivery"):
            redelivery.submit(pending(1), retryable())  # given up in the retrier thread
            wait_for(lambda: given_up == ["task-1"])
            redelivery.submit(pending(2), retryable())  # the next retry succeeds

            wait_for(lambda: len(transport.successes()) == 1)
    finally:
        redelivery.close()

    assert json.loads(transport.successes()[0].body) == {"taskId": "task-2"}
    assert redelivery.pending == 0
    [record] = [r for r in caplog.records if "on_undelivered hook raised" in r.getMessage()]
    assert "task-1" in record.getMessage()
    assert "wf-1" in record.getMessage()


def test_a_base_exception_in_an_attempt_leaves_the_retrier_working(
    caplog: pytest.LogCaptureFixture,
) -> None:
    attempts: list[str] = []

    def on_attempt(item: PendingResult, seconds: float, error: ServerError | None) -> None:
        attempts.append(item.task_id)
        if len(attempts) == 1:
            raise SystemExit("metrics bug")

    transport = StubTransport()
    stub: Any = transport
    redelivery = Redelivery(stub, FAST, None, on_attempt)
    try:
        with caplog.at_level(logging.ERROR, logger="conductor_worker.delivery"):
            redelivery.submit(pending(1), retryable())
            wait_for(lambda: attempts == ["task-1"])
            redelivery.submit(pending(2), retryable())

            wait_for(lambda: attempts == ["task-1", "task-2"])
    finally:
        redelivery.close()

    assert len(transport.successes()) == 2
    assert any("task-1" in r.getMessage() and r.exc_info for r in caplog.records)


def test_a_dead_retrier_thread_is_replaced_on_the_next_submit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    transport = StubTransport()
    stub: Any = transport
    redelivery = Redelivery(stub, FAST, None)
    dead = threading.Thread(target=lambda: None)
    dead.start()
    dead.join()
    redelivery._thread = dead  # as if it had been killed
    try:
        with caplog.at_level(logging.ERROR, logger="conductor_worker.delivery"):
            redelivery.submit(pending(1), retryable())

            wait_for(lambda: len(transport.successes()) == 1)
    finally:
        redelivery.close()

    assert transport.successes()[0].thread is not dead
    assert any("redelivery thread had stopped" in r.getMessage() for r in caplog.records)


# -- LeaseKeeper --------------------------------------------------------------------------------


def lease_task(task_id: str, response_timeout: int | None) -> Task:
    return Task(
        task_id=task_id,
        workflow_instance_id=f"wf-{task_id}",
        response_timeout_seconds=response_timeout,
    )


def heartbeats(transport: StubTransport, task_id: str) -> list[Call]:
    return [c for c in transport.successes() if json.loads(c.body)["taskId"] == task_id]


@pytest.fixture
def keeper_and_transport() -> Iterator[tuple[LeaseKeeper, StubTransport]]:
    transport = StubTransport()
    stub: Any = transport
    keeper = LeaseKeeper(stub)
    yield keeper, transport
    keeper.close()


@pytest.mark.parametrize(
    ("response_timeout", "automatic", "interval"),
    [
        (1, True, 0.5),
        (10, True, 5.0),
        (600, True, 300.0),
        (0, True, None),
        (None, True, None),
        (10, False, None),
    ],
)
def test_lease_interval_is_half_the_response_timeout(
    keeper_and_transport: tuple[LeaseKeeper, StubTransport],
    response_timeout: int | None,
    automatic: bool,
    interval: float | None,
) -> None:
    keeper, _ = keeper_and_transport

    lease = keeper.track(lease_task("t", response_timeout), "w", automatic)

    assert lease.interval == interval
    assert MIN_INTERVAL_SECONDS == 0.5


def test_periodic_heartbeats_only_for_tasks_with_a_response_timeout(
    keeper_and_transport: tuple[LeaseKeeper, StubTransport],
) -> None:
    keeper, transport = keeper_and_transport
    started = time.monotonic()
    keeper.track(lease_task("timed", 1), "worker-1", True)  # every 0.5 s
    keeper.track(lease_task("untimed", None), "worker-1", True)
    keeper.track(lease_task("zero", 0), "worker-1", True)
    keeper.track(lease_task("manual", 1), "worker-1", False)

    wait_for(lambda: len(heartbeats(transport, "timed")) >= 2)

    first, second = heartbeats(transport, "timed")[:2]
    assert first.at - started >= MIN_INTERVAL_SECONDS * 0.9
    assert second.at - first.at >= MIN_INTERVAL_SECONDS * 0.9
    assert second.at - started < 3.0
    assert {json.loads(c.body)["taskId"] for c in transport.calls} == {"timed"}
    assert json.loads(first.body) == {
        "taskId": "timed",
        "workflowInstanceId": "wf-timed",
        "workerId": "worker-1",
        "status": "IN_PROGRESS",
        "extendLease": True,
    }
    assert first.take_next is False


def test_heartbeat_now_sends_one_at_once(
    keeper_and_transport: tuple[LeaseKeeper, StubTransport],
) -> None:
    keeper, transport = keeper_and_transport
    lease = keeper.track(lease_task("t1", None), "w", True)
    started = time.monotonic()

    keeper.heartbeat_now(lease)
    wait_for(lambda: len(heartbeats(transport, "t1")) == 1)

    # No response timeout, so no schedule: only heartbeat_now can have sent it, and soon.
    assert heartbeats(transport, "t1")[0].at - started < 2.0
    assert json.loads(transport.calls[0].body)["extendLease"] is True

    keeper.heartbeat_callback(lease)()  # what TaskContext.heartbeat() calls
    wait_for(lambda: len(heartbeats(transport, "t1")) == 2)
    assert lease.sent == 2


def test_release_stops_the_heartbeats(
    keeper_and_transport: tuple[LeaseKeeper, StubTransport],
) -> None:
    keeper, transport = keeper_and_transport
    released = keeper.track(lease_task("released", 1), "w", True)
    keeper.track(lease_task("kept", 1), "w", True)

    def release_during_first_send(body: bytes) -> None:
        if json.loads(body)["taskId"] == "released":
            keeper.release(released)  # the task finished while its heartbeat was being sent

    transport.on_call = release_during_first_send
    # Both run on the same schedule, "released" just ahead: a second heartbeat of it would be
    # sent before the second of "kept".
    wait_for(lambda: len(heartbeats(transport, "kept")) >= 2)

    assert len(heartbeats(transport, "released")) == 1
    assert released.sent == 1


def test_release_before_a_manual_heartbeat_drops_it(
    keeper_and_transport: tuple[LeaseKeeper, StubTransport],
) -> None:
    keeper, transport = keeper_and_transport
    gate = threading.Event()
    transport.gate = gate  # hold the thread in the first send
    first = keeper.track(lease_task("first", None), "w", True)
    second = keeper.track(lease_task("second", None), "w", True)
    keeper.heartbeat_now(first)
    keeper.heartbeat_now(second)

    keeper.release(second)
    gate.set()
    keeper.heartbeat_now(first)
    wait_for(lambda: len(heartbeats(transport, "first")) == 2)

    assert heartbeats(transport, "second") == []


def test_a_released_lease_keeps_nothing_of_its_task(
    keeper_and_transport: tuple[LeaseKeeper, StubTransport],
) -> None:
    keeper, _ = keeper_and_transport
    tasks = [
        Task(
            task_id=f"t{i}",
            workflow_instance_id=f"wf-t{i}",
            response_timeout_seconds=3600,  # next heartbeat in 30 min
            input_data={"blob": "x" * 100_000},
        )
        for i in range(200)
    ]
    alive = [weakref.ref(task) for task in tasks]
    running = keeper.track(lease_task("still-running", 3600), "w", True)

    for task in tasks:
        keeper.release(keeper.track(task, "w", True))  # a task that finished at once
    del tasks, task
    gc.collect()

    assert [ref for ref in alive if ref() is not None] == []  # inputData and all, freed
    # The released leases' entries are compacted away well before their heartbeats come due.
    assert keeper.scheduled <= COMPACT_MIN_ENTRIES
    assert running.active


def test_compaction_keeps_the_heartbeats_of_running_tasks(
    keeper_and_transport: tuple[LeaseKeeper, StubTransport],
) -> None:
    keeper, transport = keeper_and_transport
    kept = keeper.track(lease_task("kept", 1), "w", True)  # every 0.5 s
    for i in range(500):
        keeper.release(keeper.track(lease_task(f"done-{i}", 1), "w", True))

    wait_for(lambda: len(heartbeats(transport, "kept")) >= 2)

    assert {json.loads(c.body)["taskId"] for c in transport.calls} == {"kept"}
    assert kept.sent >= 2


def test_failed_heartbeat_is_logged_and_the_next_one_goes_out(
    keeper_and_transport: tuple[LeaseKeeper, StubTransport],
    caplog: pytest.LogCaptureFixture,
) -> None:
    keeper, transport = keeper_and_transport
    transport.errors.append(retryable("HTTP 503"))
    lease = keeper.track(lease_task("t1", None), "w", True)

    with caplog.at_level(logging.WARNING, logger="conductor_worker.lease"):
        keeper.heartbeat_now(lease)
        wait_for(lambda: len(transport.calls) == 1)
        keeper.heartbeat_now(lease)
        wait_for(lambda: len(heartbeats(transport, "t1")) == 1)

    assert lease.sent == 1
    assert any(
        "could not extend the lease of task t1 (workflow wf-t1)" in r.getMessage()
        for r in caplog.records
    )


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_unexpected_heartbeat_error_does_not_stop_later_heartbeats(
    keeper_and_transport: tuple[LeaseKeeper, StubTransport],
) -> None:
    keeper, transport = keeper_and_transport
    transport.errors.append(RuntimeError("bug"))
    lease = keeper.track(lease_task("t1", None), "w", True)

    keeper.heartbeat_now(lease)
    wait_for(lambda: len(transport.calls) == 1)
    keeper.heartbeat_now(lease)

    wait_for(lambda: len(heartbeats(transport, "t1")) == 1)


def test_close_stops_the_lease_thread(
    keeper_and_transport: tuple[LeaseKeeper, StubTransport],
) -> None:
    keeper, transport = keeper_and_transport
    lease = keeper.track(lease_task("t1", 1), "w", True)
    keeper.heartbeat_now(lease)
    wait_for(lambda: len(transport.calls) == 1)

    keeper.close()
    keeper.heartbeat_now(lease)  # ignored once closed

    thread = transport.calls[0].thread
    assert thread.name == "conductor-lease"
    thread.join(5)
    assert not thread.is_alive()
    assert len(transport.calls) == 1
