"""Lease extension: keep long executions from being timed out by the server.

The server times a task out when it has not heard about it for responseTimeoutSeconds. While a
task with a response timeout runs, one background thread sends `extendLease` heartbeats for it
at half that interval; `TaskContext.heartbeat()` asks for one at once. A heartbeat only resets
the task's update time on the server (the update returns before touching anything else).
"""

from __future__ import annotations

import heapq
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from conductor_client.models import Task
from conductor_worker.transport import ServerError, Transport

log = logging.getLogger(__name__)

MIN_INTERVAL_SECONDS = 0.5


@dataclass
class _Lease:
    task: Task
    worker_id: str
    interval: float | None  # None: heartbeats only on demand
    active: bool = True
    sent: int = field(default=0)


class LeaseKeeper:
    def __init__(self, transport: Transport) -> None:
        self._transport = transport
        self._heap: list[tuple[float, int, _Lease, bool]] = []
        self._cond = threading.Condition()
        self._seq = 0
        self._closed = False
        self._thread: threading.Thread | None = None

    def track(self, task: Task, worker_id: str, automatic: bool) -> _Lease:
        """Start tracking a task that is about to run; stop with release()."""
        timeout = task.response_timeout_seconds or 0
        interval = max(MIN_INTERVAL_SECONDS, timeout / 2) if automatic and timeout > 0 else None
        lease = _Lease(task, worker_id, interval)
        if interval is not None:
            self._schedule(lease, interval, periodic=True)
        return lease

    def heartbeat_now(self, lease: _Lease) -> None:
        self._schedule(lease, 0.0, periodic=False)

    def heartbeat_callback(self, lease: _Lease) -> Callable[[], None]:
        return lambda: self.heartbeat_now(lease)

    @staticmethod
    def release(lease: _Lease) -> None:
        lease.active = False  # dropped lazily when it comes up in the heap

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._heap.clear()
            self._cond.notify()

    def _schedule(self, lease: _Lease, delay: float, *, periodic: bool) -> None:
        with self._cond:
            if self._closed:
                return
            self._seq += 1
            heapq.heappush(self._heap, (time.monotonic() + delay, self._seq, lease, periodic))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="conductor-lease", daemon=True
                )
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and (not self._heap or self._heap[0][0] > time.monotonic()):
                    timeout = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._cond.wait(timeout)
                if self._closed:
                    return
                _, _, lease, periodic = heapq.heappop(self._heap)
            if not lease.active:
                continue
            self._send(lease)
            if periodic and lease.interval is not None and lease.active:
                self._schedule(lease, lease.interval, periodic=True)

    def _send(self, lease: _Lease) -> None:
        task = lease.task
        body = json.dumps(
            {
                "taskId": task.task_id,
                "workflowInstanceId": task.workflow_instance_id,
                "workerId": lease.worker_id,
                "status": "IN_PROGRESS",
                "extendLease": True,
            }
        ).encode()
        try:
            self._transport.update(body, take_next=False)
            lease.sent += 1
            log.debug("extended the lease of task %s", task.task_id)
        except ServerError as error:
            log.warning(
                "could not extend the lease of task %s (workflow %s): %s",
                task.task_id, task.workflow_instance_id, error,
            )  # fmt: skip
        except Exception:  # a bug must not stop the heartbeats of every other task
            log.exception("unexpected error extending the lease of task %s", task.task_id)
