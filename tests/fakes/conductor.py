"""A fake Conductor task server for worker tests: loopback only, one per test.

It serves the calls a TaskRunner makes, with an in-memory queue of tasks per task type, records
every result it receives, and can be told to misbehave::

    with FakeConductorServer() as server:
        ids = server.add_tasks("greet", 3, input={"name": "Ada"})
        server.inject("poll", FakeResponse.error(503, "busy"), count=5)
        ... run a TaskRunner against server.url ...
        results = server.wait_for_results(ids)
        assert [r["status"] for r in results[ids[0]]] == ["COMPLETED"]

Served (all under ``/api``):

* ``GET /tasks/poll/batch/{taskType}?count&timeout&workerid``: up to ``count`` tasks of the type
  (each set IN_PROGRESS, ``pollCount`` + 1, ``workerId`` recorded). When none is ready it waits
  up to ``timeout`` ms for one (a long poll), then answers ``[]``, or 204 with
  ``empty_poll_204`` (servers before 3.21.20). ``timeout`` over 5000 is a 400, as on the server.
* ``POST /tasks`` (a TaskResult): recorded in :attr:`results`; answers the task id as text.
* ``POST /tasks/update-v2``: the same, then answers the next task of the type for the result's
  worker (200), or 204 when there is none or the result is not terminal. With
  ``update_v2=False`` it answers 405, as servers before 3.21.12 do.
* ``GET /tasks/{taskId}``: the task as the server holds it now.
* ``GET /tasks/queue/size?taskType``: how many tasks of the type wait (what the CLI's start-up
  check asks).
* With ``auth_enabled=True``, Orkes authentication as in :class:`FakeOrkesServer`.

A result with ``extendLease`` is a heartbeat: recorded in :attr:`heartbeats`, not in
:attr:`results`. An IN_PROGRESS result puts the task back in its queue, pollable after its
``callbackAfterSeconds``. A result for a task that is already terminal is recorded (so duplicate
deliveries show) but changes nothing, as on the server.

Faults (:meth:`inject`) apply per route, bounded by a count, a time window, or both; the answer
is any :class:`FakeResponse`: an error status with a body, an HTML page, invalid JSON, a
connection reset (:meth:`FakeResponse.connection_reset`), or a hang
(:meth:`FakeResponse.hang`, which ends when the server stops). By default the request is not
processed (the server never saw it); ``after_processing=True`` processes it first and then
loses the answer, as when a connection drops after the server has acted. Malformed tasks go in
the queue with :meth:`add_raw_task`.
"""

from __future__ import annotations

import copy
import itertools
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .token_server import FakeOrkesServer, FakeRequest, FakeResponse

# Route names for inject(): method and path (a regular expression, full match).
ROUTES: dict[str, tuple[str, str]] = {
    "poll": ("GET", r"/api/tasks/poll/batch/[^/]+"),
    "update": ("POST", r"/api/tasks"),
    "update_v2": ("POST", r"/api/tasks/update-v2"),
    "token": ("POST", r"/api/token"),
}
UPDATES = ("update", "update_v2")  # both ways a result reaches the server

MAX_POLL_TIMEOUT_MS = 5000
TERMINAL_TASK_STATUSES = frozenset(
    {
        "CANCELED",
        "FAILED",
        "FAILED_WITH_TERMINAL_ERROR",
        "COMPLETED",
        "COMPLETED_WITH_ERRORS",
        "TIMED_OUT",
        "SKIPPED",
    }
)


@dataclass
class Injection:
    """One injected fault; the handle inject() returns. ``hits``: how often it was applied."""

    response: FakeResponse
    routes: tuple[tuple[str | None, re.Pattern[str]], ...]
    remaining: int | None  # None: unlimited
    until: float | None  # time.monotonic(); None: no time limit
    after_processing: bool
    hits: int = 0
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True

    @property
    def active(self) -> bool:
        if self.cancelled or (self.remaining is not None and self.remaining <= 0):
            return False
        return self.until is None or time.monotonic() < self.until

    def matches(self, request: FakeRequest) -> bool:
        return any(
            (method is None or method == request.method) and pattern.fullmatch(request.path)
            for method, pattern in self.routes
        )


@dataclass
class _Entry:
    """A queued task: a known task (by id) or a raw JSON value handed out as it is."""

    task_type: str
    available_at: float  # time.monotonic()
    task_id: str | None = None
    raw: Any = None


@dataclass
class _State:
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    queue: list[_Entry] = field(default_factory=list)
    results: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    heartbeats: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


class FakeConductorServer(FakeOrkesServer):
    """See the module docstring. ``update_v2`` and ``empty_poll_204`` may be changed while it
    runs. Authentication is off unless ``auth_enabled=True`` (then the other keyword arguments
    are those of :class:`FakeOrkesServer`)."""

    def __init__(
        self,
        *,
        update_v2: bool = True,
        empty_poll_204: bool = False,
        auth_enabled: bool = False,
        **orkes: Any,
    ) -> None:
        super().__init__(auth_enabled=auth_enabled, **orkes)
        self.update_v2 = update_v2
        self.empty_poll_204 = empty_poll_204
        # One lock for everything: the base class's, so put_task() and the rest stay consistent.
        self._cond = threading.Condition(self._lock)
        self._state = _State()
        self.tasks = self._state.tasks  # GET /api/tasks/{taskId} and put_task() use it
        self._injections: list[Injection] = []
        self._ids = itertools.count(1)
        self.add_route("GET", r"/api/tasks/poll/batch/(?P<taskType>[^/]+)", self._poll)
        self.add_route("POST", r"/api/tasks", self._update)
        self.add_route("POST", r"/api/tasks/update-v2", self._update_v2)
        self.add_route("GET", r"/api/tasks/queue/size", self._queue_size)

    def stop(self) -> None:
        self.stopping.set()
        with self._cond:
            self._cond.notify_all()  # ends long polls
        super().stop()

    # -- the queue -----------------------------------------------------------------------------

    def add_tasks(
        self,
        task_type: str,
        n: int = 1,
        *,
        input: Mapping[str, Any] | Callable[[int], Mapping[str, Any]] | None = None,
        **fields: Any,
    ) -> list[str]:
        """Schedules ``n`` tasks of ``task_type``; returns their ids. ``input``: the inputData of
        each, or a function of the task's index (0..n-1) giving it. ``fields``: Task JSON fields
        to set or override (``responseTimeoutSeconds=0``, ``workflowInstanceId=...``)."""
        ids = []
        now_ms = int(time.time() * 1000)
        with self._cond:
            for index in range(n):
                seq = next(self._ids)
                task_id = f"task-{seq}-{uuid.uuid4().hex[:8]}"
                data = input(index) if callable(input) else input
                task: dict[str, Any] = {
                    "taskId": task_id,
                    "workflowInstanceId": f"wf-{seq}-{uuid.uuid4().hex[:8]}",
                    "taskType": task_type,
                    "taskDefName": task_type,
                    "referenceTaskName": f"{task_type}_ref",
                    "workflowType": "fake_workflow",
                    "status": "SCHEDULED",
                    "inputData": dict(data or {}),
                    "pollCount": 0,
                    "retryCount": 0,
                    "seq": seq,
                    "callbackAfterSeconds": 0,
                    "responseTimeoutSeconds": 3600,
                    "scheduledTime": now_ms,
                    "workflowPriority": 0,
                    **fields,
                }
                self._state.tasks[task_id] = task
                self._state.queue.append(_Entry(task_type, time.monotonic(), task_id))
                ids.append(task_id)
            self._cond.notify_all()
        return ids

    def add_raw_task(self, task_type: str, raw: Any) -> None:
        """Queues ``raw`` to be handed out exactly as it is (malformed tasks, unknown fields).
        When it is an object with a string ``taskId``, results for that id are accepted."""
        with self._cond:
            if isinstance(raw, dict) and isinstance(raw.get("taskId"), str):
                self._state.tasks[raw["taskId"]] = copy.deepcopy(raw)
            self._state.queue.append(_Entry(task_type, time.monotonic(), raw=copy.deepcopy(raw)))
            self._cond.notify_all()

    def queued(self, task_type: str | None = None) -> int:
        """How many tasks wait to be polled (ready or not)."""
        with self._cond:
            return sum(
                1 for e in self._state.queue if task_type is None or e.task_type == task_type
            )

    def task(self, task_id: str) -> dict[str, Any]:
        """The task as the server holds it now (a copy)."""
        with self._cond:
            return copy.deepcopy(self._state.tasks[task_id])

    # -- what arrived --------------------------------------------------------------------------

    @property
    def results(self) -> dict[str, list[dict[str, Any]]]:
        """Task id -> every TaskResult received for it, in order (heartbeats excluded)."""
        with self._cond:
            return {k: copy.deepcopy(v) for k, v in self._state.results.items()}

    @property
    def heartbeats(self) -> dict[str, list[dict[str, Any]]]:
        """Task id -> every ``extendLease`` update received for it."""
        with self._cond:
            return {k: copy.deepcopy(v) for k, v in self._state.heartbeats.items()}

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
        """Waits until ``predicate()`` is true (checked whenever the server's state changes);
        False on timeout. ``predicate`` may use :attr:`results` and the other accessors."""
        deadline = time.monotonic() + timeout
        while not predicate():  # called without the lock: the accessors take it
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with self._cond:
                # Short: a change between the check and this wait is not missed for long.
                self._cond.wait(min(remaining, 0.05))
        return True

    def wait_for_results(
        self, task_ids: Iterable[str], timeout: float = 10.0, *, count: int = 1
    ) -> dict[str, list[dict[str, Any]]]:
        """Waits until each task has at least ``count`` results; returns :attr:`results` for
        them. Raises AssertionError naming the tasks still missing at the timeout."""
        wanted = list(task_ids)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                missing = [t for t in wanted if len(self._state.results.get(t, ())) < count]
                if not missing:
                    return {t: copy.deepcopy(self._state.results[t]) for t in wanted}
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"{len(missing)} of {len(wanted)} task(s) without {count} result(s) "
                        f"after {timeout}s: {missing[:5]}"
                    )
                self._cond.wait(remaining)

    # -- faults --------------------------------------------------------------------------------

    def inject(
        self,
        routes: str | Iterable[str],
        response: FakeResponse,
        *,
        count: int | None = None,
        seconds: float | None = None,
        after_processing: bool = False,
    ) -> Injection:
        """Answers ``response`` to requests on ``routes`` (names in ROUTES, or path regular
        expressions starting with "/", any method): the next ``count`` of them, those in the
        next ``seconds``, or (neither given) all until cancelled. Checked before
        authentication; the most recent injection wins."""
        names = [routes] if isinstance(routes, str) else list(routes)
        compiled: list[tuple[str | None, re.Pattern[str]]] = []
        for name in names:
            if name.startswith("/"):
                compiled.append((None, re.compile(name)))
            else:
                method, path = ROUTES[name]
                compiled.append((method, re.compile(path)))
        injection = Injection(
            response,
            tuple(compiled),
            count,
            None if seconds is None else time.monotonic() + seconds,
            after_processing,
        )
        with self._cond:
            self._injections.insert(0, injection)
        return injection

    def clear_faults(self) -> None:
        with self._cond:
            for injection in self._injections:
                injection.cancel()
            self._injections.clear()

    def _dispatch(self, request: FakeRequest) -> FakeResponse:
        injection = self._take_injection(request)
        if injection is None:
            return super()._dispatch(request)
        if injection.after_processing:
            super()._dispatch(request)  # the server acts; its answer is lost
        return injection.response

    def _take_injection(self, request: FakeRequest) -> Injection | None:
        with self._cond:
            for injection in self._injections:
                if injection.active and injection.matches(request):
                    if injection.remaining is not None:
                        injection.remaining -= 1
                    injection.hits += 1
                    return injection
        return None

    # -- routes (handler threads) --------------------------------------------------------------

    def _poll(self, request: FakeRequest) -> FakeResponse:
        task_type = request.path_params["taskType"]
        try:
            count = int(_query(request, "count", "1"))
            timeout_ms = int(_query(request, "timeout", "100"))
        except ValueError as error:
            return FakeResponse.error(400, f"bad argument: {error}")
        if timeout_ms > MAX_POLL_TIMEOUT_MS:
            return FakeResponse.error(400, "Long Poll timeout cannot be more than 5 seconds")
        worker_id = _query(request, "workerid", "")
        deadline = time.monotonic() + max(0, timeout_ms) / 1000
        with self._cond:
            while True:
                handed = self._take_locked(task_type, max(1, count), worker_id)
                remaining = deadline - time.monotonic()
                if handed or remaining <= 0 or self.stopping.is_set():
                    break
                # Wake for a new task, a callback coming due, or stop().
                due = [e.available_at for e in self._state.queue if e.task_type == task_type]
                if due:
                    remaining = min(remaining, max(0.0, min(due) - time.monotonic()) + 0.001)
                self._cond.wait(remaining)
        if not handed and self.empty_poll_204:
            return FakeResponse(204)
        return FakeResponse.json(200, handed)

    def _queue_size(self, request: FakeRequest) -> FakeResponse:
        task_type = _query(request, "taskType", "")
        if not task_type:
            return FakeResponse.error(400, "taskType is required")
        return FakeResponse.json(200, self.queued(task_type))

    def _update(self, request: FakeRequest) -> FakeResponse:
        error, task_id, _ = self._apply_result(request)
        if error is not None:
            return error
        return FakeResponse.text(200, task_id)

    def _update_v2(self, request: FakeRequest) -> FakeResponse:
        if not self.update_v2:
            # Before 3.21.12 the path matches GET /tasks/{taskId} only.
            return FakeResponse.error(405, "Request method 'POST' is not supported")
        error, _, take_next = self._apply_result(request)
        if error is not None:
            return error
        if take_next is None:
            return FakeResponse(204)
        task_type, worker_id = take_next
        with self._cond:
            handed = self._take_locked(task_type, 1, worker_id)
        return FakeResponse.json(200, handed[0]) if handed else FakeResponse(204)

    def _apply_result(
        self, request: FakeRequest
    ) -> tuple[FakeResponse | None, str, tuple[str, str] | None]:
        """Records a TaskResult: (error answer or None, task id, (type, worker) when the
        worker may be handed its next task)."""
        try:
            result = request.json()
        except ValueError:
            return FakeResponse.error(400, "malformed JSON"), "", None
        if not isinstance(result, dict) or not isinstance(result.get("taskId"), str):
            return FakeResponse.error(400, "taskId missing"), "", None
        task_id = result["taskId"]
        with self._cond:
            task = self._state.tasks.get(task_id)
            if task is None:
                return FakeResponse.error(404, f"No such task found by id: {task_id}"), "", None
            if result.get("extendLease"):
                self._state.heartbeats.setdefault(task_id, []).append(result)
                self._cond.notify_all()
                return None, task_id, None
            self._state.results.setdefault(task_id, []).append(result)
            status = result.get("status")
            take_next = None
            if task.get("status") not in TERMINAL_TASK_STATUSES:
                task["updateTime"] = int(time.time() * 1000)
                for key in ("outputData", "reasonForIncompletion", "workerId"):
                    if key in result:
                        task[key] = result[key]
                if status == "IN_PROGRESS":
                    task["status"] = "SCHEDULED"
                    delay = float(result.get("callbackAfterSeconds") or 0)
                    task_type = str(task.get("taskType"))
                    self._state.queue.append(_Entry(task_type, time.monotonic() + delay, task_id))
                else:
                    task["status"] = status
                    take_next = (str(task.get("taskType")), str(result.get("workerId") or ""))
            self._cond.notify_all()
        return None, task_id, take_next

    def _take_locked(self, task_type: str, count: int, worker_id: str) -> list[Any]:
        """Hands out up to ``count`` ready tasks of the type (lock held)."""
        now = time.monotonic()
        handed: list[Any] = []
        kept: list[_Entry] = []
        for entry in self._state.queue:
            if len(handed) < count and entry.task_type == task_type and entry.available_at <= now:
                if entry.task_id is None:
                    handed.append(entry.raw)
                    continue
                task = self._state.tasks[entry.task_id]
                task["status"] = "IN_PROGRESS"
                task["pollCount"] = int(task.get("pollCount") or 0) + 1
                task["workerId"] = worker_id
                task["callbackAfterSeconds"] = 0
                task.setdefault("startTime", int(time.time() * 1000))
                task["updateTime"] = int(time.time() * 1000)
                handed.append(copy.deepcopy(task))
            else:
                kept.append(entry)
        self._state.queue = kept
        return handed


def _query(request: FakeRequest, name: str, default: str) -> str:
    values = request.query.get(name)
    return values[0] if values else default


def invalid_json(status: int = 200) -> FakeResponse:
    """A JSON content type with a body that is not JSON (cut short)."""
    return FakeResponse(status, b'[{"taskId": "t-1", "inputData": {', "application/json")
