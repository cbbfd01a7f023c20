"""Getting results to the server: retries in the background, and a hook for what never arrives.

The first attempt to report a result is made by the thread that ran the task (so update-v2 can
hand it the next task at once). If that attempt fails in a way a retry can help with
(connection error, timeout, 5xx, 429), the result moves here: a single background thread
retries it with exponential backoff and jitter, within a bound, without holding an execution
slot or the poll loop. A result that finally cannot be delivered is logged at ERROR with its
task and workflow ids and passed to the user's `on_undelivered` hook: never dropped silently.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from conductor_worker.transport import ServerError, Transport

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    """How long to keep trying to deliver a result: up to `max_attempts` in all, waiting
    `initial_delay_seconds`, doubling up to `max_delay_seconds`, with full jitter."""

    max_attempts: int = 10
    initial_delay_seconds: float = 0.5
    max_delay_seconds: float = 30.0

    def delay(self, attempt: int) -> float:
        """The pause before attempt number `attempt + 1` (attempt counts from 1)."""
        ceiling = min(self.max_delay_seconds, self.initial_delay_seconds * 2 ** (attempt - 1))
        return random.uniform(ceiling / 2, ceiling)


@dataclass
class PendingResult:
    """A result on its way to the server."""

    task_type: str
    task_id: str
    workflow_instance_id: str
    body: bytes
    attempts: int = 0
    last_error: str = ""


# Called with the result that could not be delivered and the last error.
UndeliveredHook = Callable[[PendingResult, str], None]


class Redelivery:
    """The background retrier. submit() never blocks; drain() waits until the queue is empty."""

    def __init__(
        self,
        transport: Transport,
        policy: RetryPolicy,
        on_undelivered: UndeliveredHook | None,
        on_attempt: Callable[[PendingResult, float, ServerError | None], None] | None = None,
    ) -> None:
        self._transport = transport
        self._policy = policy
        self._on_undelivered = on_undelivered
        self._on_attempt = on_attempt
        self._heap: list[tuple[float, int, PendingResult]] = []
        self._order = itertools.count()
        self._cond = threading.Condition()
        self._busy = 0  # results being sent right now
        self._closed = False
        self._thread: threading.Thread | None = None

    def submit(self, item: PendingResult, error: ServerError) -> None:
        item.attempts += 1
        item.last_error = str(error)
        if item.attempts >= self._policy.max_attempts or not error.retryable:
            self._give_up(item)
            return
        delay = self._policy.delay(item.attempts)
        with self._cond:
            closed = self._closed
            if not closed:
                heapq.heappush(self._heap, (time.monotonic() + delay, next(self._order), item))
                self._ensure_thread()
                self._cond.notify()
        if closed:
            # After close() nothing would ever retry it (a task that outlived the shutdown,
            # or an attempt in flight at close): report it now rather than queue it silently.
            self._give_up(item)
            return
        log.warning(
            "result of task %s (workflow %s) not delivered (attempt %d: %s); retrying in %.1fs",
            item.task_id, item.workflow_instance_id, item.attempts, error, delay,
        )  # fmt: skip

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._heap) + self._busy

    def drain(self, deadline: float) -> bool:
        """Send what is queued, now, until the deadline (monotonic). True when all went out."""
        with self._cond:
            # Shutting down: no point waiting out the backoff.
            self._heap = [(0.0, order, item) for _, order, item in self._heap]
            heapq.heapify(self._heap)
            if self._heap:
                self._ensure_thread()
            self._cond.notify()
            while self._heap or self._busy:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def close(self) -> list[PendingResult]:
        """Stop; returns the results that were still waiting (each one reported undelivered)."""
        with self._cond:
            self._closed = True
            left = [item for _, _, item in self._heap]
            self._heap.clear()
            self._cond.notify()
        for item in left:
            self._give_up(item)
        return left

    def is_current_thread(self) -> bool:
        """Whether the caller is the redelivery thread (e.g. an on_undelivered hook)."""
        return self._thread is not None and threading.current_thread() is self._thread

    def _ensure_thread(self) -> None:
        """Start the retrier thread, or a new one if it died (lock held). It should never die,
        but if it did, every later result would wait in the queue forever, silently."""
        if self._thread is not None and self._thread.is_alive():
            return
        if self._thread is not None:
            log.error("the result redelivery thread had stopped; starting a new one")
        self._thread = threading.Thread(target=self._run, name="conductor-redelivery", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and (not self._heap or self._heap[0][0] > time.monotonic()):
                    timeout = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._cond.wait(timeout)
                if self._closed:
                    return
                _, _, item = heapq.heappop(self._heap)
                self._busy += 1
            try:
                self._attempt(item)
            except BaseException:  # the last line of defence: keep the thread and the queue
                log.exception(
                    "unexpected error delivering the result of task %s (workflow %s)",
                    item.task_id, item.workflow_instance_id,
                )  # fmt: skip
            finally:
                with self._cond:
                    self._busy -= 1
                    self._cond.notify_all()

    def _attempt(self, item: PendingResult) -> None:
        started = time.perf_counter()
        try:
            self._transport.update(item.body, take_next=False)
        except ServerError as error:
            if self._on_attempt:
                self._on_attempt(item, time.perf_counter() - started, error)
            self.submit(item, error)
        except Exception as error:  # a bug must not kill the thread and lose the queue
            log.exception(
                "unexpected error delivering the result of task %s (workflow %s)",
                item.task_id, item.workflow_instance_id,
            )  # fmt: skip
            item.last_error = repr(error)
            self._give_up(item)
        else:
            if self._on_attempt:
                self._on_attempt(item, time.perf_counter() - started, None)
            log.info(
                "result of task %s (workflow %s) delivered after %d failed attempt(s)",
                item.task_id, item.workflow_instance_id, item.attempts,
            )  # fmt: skip

    def _give_up(self, item: PendingResult) -> None:
        log.error(
            "result of task %s (workflow %s, type %s) could not be delivered after %d "
            "attempt(s): %s",
            item.task_id, item.workflow_instance_id, item.task_type, item.attempts,
            item.last_error,
        )  # fmt: skip
        if self._on_undelivered is not None:
            try:
                self._on_undelivered(item, item.last_error)
            except BaseException:  # SystemExit too: it must not kill the retrier thread
                log.exception(
                    "the on_undelivered hook raised (task %s, workflow %s)",
                    item.task_id, item.workflow_instance_id,
                )  # fmt: skip
