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


@dataclass(slots=True)
class _Lease:
    """What a heartbeat needs: the ids, not the Task (its inputData may be large, and a lease
    can sit in the schedule long after its task finished)."""

    task_id: str
    workflow_instance_id: str
    worker_id: str
    interval: float | None  # None: heartbeats only on demand
    active: bool = True
    sent: int = field(default=0)
    scheduled: int = 0  # entries for this lease in the heap


# Compact the heap when more than this share of its entries belong to released leases, and it
# has at least COMPACT_MIN_ENTRIES entries (a handful of dead ones are not worth a rebuild).
COMPACT_MIN_ENTRIES = 64


class LeaseKeeper:
    def __init__(self, transport: Transport) -> None:
        self._transport = transport
        self._heap: list[tuple[float, int, _Lease, bool]] = []
        self._dead = 0  # heap entries of released leases, dropped lazily
        self._cond = threading.Condition()
        self._seq = 0
        self._closed = False
        self._thread: threading.Thread | None = None

    def track(self, task: Task, worker_id: str, automatic: bool) -> _Lease:
        """Start tracking a task that is about to run; stop with release()."""
        timeout = task.response_timeout_seconds or 0
        interval = max(MIN_INTERVAL_SECONDS, timeout / 2) if automatic and timeout > 0 else None
        lease = _Lease(task.task_id or "", task.workflow_instance_id or "", worker_id, interval)
        if interval is not None:
            self._schedule(lease, interval, periodic=True)
        return lease

    def heartbeat_now(self, lease: _Lease) -> None:
        self._schedule(lease, 0.0, periodic=False)

    def heartbeat_callback(self, lease: _Lease) -> Callable[[], None]:
        return lambda: self.heartbeat_now(lease)

    def release(self, lease: _Lease) -> None:
        """Stop the heartbeats of a task (it finished). Its heap entries are dropped when they
        come up, or all at once when released entries make up over half of the heap."""
        with self._cond:
            if not lease.active:
                return
            lease.active = False
            self._dead += lease.scheduled
            if len(self._heap) >= COMPACT_MIN_ENTRIES and self._dead * 2 > len(self._heap):
                self._heap = [entry for entry in self._heap if entry[2].active]
                heapq.heapify(self._heap)
                self._dead = 0

    @property
    def scheduled(self) -> int:
        """How many heartbeats are scheduled (released leases' entries included until
        dropped)."""
        with self._cond:
            return len(self._heap)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._heap.clear()
            self._dead = 0
            self._cond.notify()

    def _schedule(self, lease: _Lease, delay: float, *, periodic: bool) -> None:
        with self._cond:
            if self._closed or not lease.active:
                return
            self._seq += 1
            heapq.heappush(self._heap, (time.monotonic() + delay, self._seq, lease, periodic))
            lease.scheduled += 1
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
                lease.scheduled -= 1
                if not lease.active:
                    self._dead -= 1
                    continue
            self._send(lease)
            if periodic and lease.interval is not None:
                self._schedule(lease, lease.interval, periodic=True)  # not if released since

    def _send(self, lease: _Lease) -> None:
        body = json.dumps(
            {
                "taskId": lease.task_id,
                "workflowInstanceId": lease.workflow_instance_id,
                "workerId": lease.worker_id,
                "status": "IN_PROGRESS",
                "extendLease": True,
            }
        ).encode()
        try:
            self._transport.update(body, take_next=False)
            lease.sent += 1
            log.debug("extended the lease of task %s", lease.task_id)
        except ServerError as error:
            log.warning(
                "could not extend the lease of task %s (workflow %s): %s",
                lease.task_id, lease.workflow_instance_id, error,
            )  # fmt: skip
        except Exception:  # a bug must not stop the heartbeats of every other task
            log.exception(
                "unexpected error extending the lease of task %s (workflow %s)",
                lease.task_id, lease.workflow_instance_id,
            )  # fmt: skip
