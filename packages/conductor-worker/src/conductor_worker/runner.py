"""TaskRunner: polls for tasks, runs worker functions on them, reports the results.

One runner serves any number of task types in one process. For each task type a poll thread
asks the server for as many tasks as there are free slots (batch_size is the concurrency), with
a long poll so that an idle worker is cheap and quick to react. `def` workers run on a thread
pool, `async def` workers on one event loop. While tasks are queued up, a result goes back with
update-v2, which hands the same slot its next task at once; otherwise with a plain update (see
TaskTypeWorker._backlog). Failed reports are retried in the background.

Lifecycle: created -> running (first start_worker) -> stopping (shutdown) -> stopped.
Shutdown stops polling, lets running tasks finish within the grace period while still
reporting, delivers pending results, then stops its threads.
"""

from __future__ import annotations

import enum
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry

from conductor_worker.client import ConductorClient
from conductor_worker.concurrency import ThreadPool
from conductor_worker.context import current_task_context
from conductor_worker.declarations import declarations_of, unique
from conductor_worker.delivery import PendingResult, Redelivery, RetryPolicy, UndeliveredHook
from conductor_worker.errors import ConfigurationError
from conductor_worker.execution import WorkerFunction
from conductor_worker.lease import LeaseKeeper
from conductor_worker.metrics import metrics_for
from conductor_worker.options import WorkerOptions, apply_environment
from conductor_worker.task_type_worker import TaskTypeWorker
from conductor_worker.transport import ServerError, Transport

if TYPE_CHECKING:
    from conductor_worker.event_loop import EventLoopThread

log = logging.getLogger(__name__)


class RunnerState(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


class TaskRunner:
    """Runs workers for any number of task types.

    >>> runner = TaskRunner(ConductorClient.from_env())
    >>> runner.start_worker("simple_task", simple_worker, batch_size=1, poll_interval=1.0)
    >>> runner.wait_workers()      # blocks; SIGINT/SIGTERM start a graceful shutdown

    shutdown_grace_seconds: how long shutdown waits for running tasks and pending results.
    retry_policy: how hard to try delivering a result whose first report failed.
    on_undelivered: called with a result that could not be delivered in the end.
    registry: the Prometheus registry for the metrics (default: conductor-worker's own).
    """

    def __init__(
        self,
        client: ConductorClient,
        *,
        shutdown_grace_seconds: float = 30.0,
        retry_policy: RetryPolicy | None = None,
        on_undelivered: UndeliveredHook | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.client = client
        self.shutdown_grace_seconds = _grace(shutdown_grace_seconds, "shutdown_grace_seconds")
        self._transport = Transport(client)
        self._metrics = metrics_for(registry)
        self._user_on_undelivered = on_undelivered
        self._redelivery = Redelivery(
            self._transport,
            retry_policy or RetryPolicy(),
            self._undelivered,
            self._on_redelivery_attempt,
        )
        self._leases = LeaseKeeper(self._transport)
        self._pool = ThreadPool("conductor-worker")
        self._loop: EventLoopThread | None = None
        self._workers: dict[str, TaskTypeWorker] = {}
        self._lock = threading.Lock()
        self._state = RunnerState.CREATED
        self._stopped = threading.Event()
        self._shutdown_lock = threading.Lock()
        self._shutdown_owner: threading.Thread | None = None
        self._clean_shutdown = True
        self._closed = False  # set once the pool and loop are closing: no task starts after

    # -- public API ----------------------------------------------------------------------

    @property
    def state(self) -> RunnerState:
        return self._state

    @property
    def task_types(self) -> list[str]:
        return list(self._workers)

    def start_worker(
        self,
        task_type: str,
        fn: Callable[..., Any],
        batch_size: int = 1,
        poll_interval: float = 1.0,
        *,
        domain: str | None = None,
        worker_id: str | None = None,
        poll_timeout: float | None = None,
        paused: bool = False,
        lease_extension: bool = True,
    ) -> None:
        """Start polling for `task_type` and running `fn` on its tasks.

        batch_size: how many of these tasks run at once. Starting the same task type again
            with the same function adds to its batch size.
        poll_interval: seconds to wait after a poll that found nothing.
        poll_timeout: seconds the server may hold a poll open for a task to arrive (<= 5).
        Environment variables override these (see conductor_worker.options).
        """
        if not task_type:
            raise ConfigurationError("task_type must not be empty")
        options = WorkerOptions(
            batch_size=batch_size,
            poll_interval_seconds=poll_interval,
            domain=domain,
            worker_id=worker_id,
            paused=paused,
            lease_extension=lease_extension,
            **({} if poll_timeout is None else {"poll_timeout_seconds": poll_timeout}),
        )
        options = apply_environment(task_type, options)
        with self._lock:
            if self._state in (RunnerState.STOPPING, RunnerState.STOPPED):
                raise ConfigurationError("this runner has been shut down")
            existing = self._workers.get(task_type)
            if existing is not None:
                if existing.function.fn is not fn:
                    raise ConfigurationError(
                        f"task type {task_type!r} already runs {existing.function.name}; "
                        "one task type has one worker function"
                    )
                existing.resize(existing.capacity + options.batch_size)
                self._size_pool()
                return
            function = WorkerFunction(fn)
            if function.is_async and self._loop is None:
                from conductor_worker.event_loop import EventLoopThread  # imports asyncio

                self._loop = EventLoopThread()
            worker = TaskTypeWorker(self, task_type, function, options)
            self._workers[task_type] = worker
            self._state = RunnerState.RUNNING
            self._size_pool()
            worker.start()  # under the lock: a concurrent shutdown sees it running
        log.info(
            "started worker %s for task type %r (batch size %d, poll interval %gs%s)",
            function.name, task_type, options.batch_size, options.poll_interval_seconds,
            f", domain {options.domain}" if options.domain else "",
        )  # fmt: skip

    def start_workers(self, *declared: object) -> int:
        """Start the workers declared with @worker_task: pass functions, WorkerDeclarations or
        modules (every declaration in them). Returns how many workers were started."""
        found = unique(d for obj in declared for d in declarations_of(obj))
        for declaration in found:
            self.start_worker(declaration.task_type, declaration.fn, **declaration.options)
        return len(found)

    def wait_workers(self, *, handle_signals: bool = True) -> None:
        """Block until the runner has stopped.

        With handle_signals (and when called from the main thread), SIGINT and SIGTERM start a
        graceful shutdown; a second signal exits at once.
        """
        restore: list[tuple[signal.Signals, Any]] = []
        if handle_signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                restore.append((sig, signal.signal(sig, self._on_signal)))
        try:
            while not self._stopped.wait(0.25):
                pass
        finally:
            for signum, previous in restore:
                signal.signal(signum, previous)

    def shutdown(self, timeout: float | None = None) -> bool:
        """Stop polling, finish running tasks and deliver their results, then stop.

        Waits at most `timeout` seconds (default: shutdown_grace_seconds). Returns True when
        every task finished and every result was delivered. Idempotent and thread-safe.
        Called from a thread the shutdown has to wait for (inside a worker function, or an
        on_undelivered hook), it cannot wait for itself: the shutdown then proceeds in the
        background and the call returns False at once.
        """
        grace = self.shutdown_grace_seconds if timeout is None else _grace(timeout, "timeout")
        if self._shutdown_owner is threading.current_thread():
            return False  # called again during this shutdown, e.g. from on_undelivered
        if (
            current_task_context() is not None
            or (self._loop is not None and self._loop.is_current_thread())
            or self._pool.is_pool_thread()
            or self._redelivery.is_current_thread()
        ):
            threading.Thread(
                target=self._shutdown, args=(grace,), name="conductor-shutdown", daemon=True
            ).start()
            return False
        return self._shutdown(grace)

    def _shutdown(self, grace: float) -> bool:
        with self._shutdown_lock:
            if self._state is RunnerState.STOPPED:
                return self._clean_shutdown
            self._shutdown_owner = threading.current_thread()
            deadline = time.monotonic() + grace
            with self._lock:
                self._state = RunnerState.STOPPING
                workers = list(self._workers.values())
            self._clean_shutdown = False  # unless the drain completes
            try:
                self._clean_shutdown = self._drain(workers, grace, deadline)
            finally:
                self._state = RunnerState.STOPPED
                self._shutdown_owner = None
                self._stopped.set()
            log.info("stopped%s", "" if self._clean_shutdown else " (not everything finished)")
            return self._clean_shutdown

    def _drain(self, workers: list[TaskTypeWorker], grace: float, deadline: float) -> bool:
        """Shutdown in order: stop polling, let running tasks finish and report, deliver what
        is pending, then close. True when nothing was left behind."""
        log.info("shutting down: %d task type(s), grace %gs", len(workers), grace)
        for worker in workers:
            worker.stop()
        clean = True
        open_polls = [worker for worker in workers if not worker.join_poller(deadline)]
        if open_polls:
            # Past the grace period, what an open long poll brings is handed back rather than
            # run; wait for it (at most its own timeout + 1 s) so that nothing it brings is lost.
            self._closed = True
            extra = time.monotonic() + max(w.options.poll_timeout_seconds for w in open_polls) + 1
            for worker in open_polls:
                if not worker.join_poller(extra):
                    clean = False
                    log.error(
                        "a poll for %r did not end after the grace period; a task it brings "
                        "is handed back only if it ends before this process does",
                        worker.task_type,
                    )
        clean = all([worker.wait_idle(deadline) for worker in workers]) and clean
        clean = self._redelivery.drain(deadline) and clean
        clean = clean and not any(worker.hand_back_failures for worker in workers)
        for worker in workers:
            for task_id, workflow_id in worker.running():
                log.error(
                    "task %s (workflow %s, type %s) still running after the %gs grace "
                    "period; the server will time it out and retry it per its definition",
                    task_id, workflow_id, worker.task_type, grace,
                )  # fmt: skip
        for worker in workers:
            worker.metrics.unwatch(worker)
        self._closed = True
        left = self._redelivery.close()
        self._leases.close()
        self._pool.close()
        if self._loop is not None:
            self._loop.stop(max(0.0, deadline - time.monotonic()))
        return clean and not left

    def pause(self, task_type: str) -> None:
        """Stop polling for `task_type`; resume() starts again.

        Running tasks finish. A long poll already open when pause() is called may still bring
        tasks (within poll_timeout seconds); they run, since the server has handed them over.
        """
        self._worker(task_type).set_paused(True)

    def resume(self, task_type: str) -> None:
        self._worker(task_type).set_paused(False)

    def set_batch_size(self, task_type: str, batch_size: int) -> None:
        """Change how many tasks of this type run at once (takes effect at the next poll)."""
        if batch_size < 1:
            raise ConfigurationError("batch_size must be at least 1")
        with self._lock:
            self._worker(task_type).resize(batch_size)
            self._size_pool()

    def set_poll_interval(self, task_type: str, seconds: float) -> None:
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ConfigurationError(f"poll interval must be a number >= 0, got {seconds}")
        self._worker(task_type).set_poll_interval(seconds)

    def __enter__(self) -> TaskRunner:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown()

    # -- internals -----------------------------------------------------------------------

    def _worker(self, task_type: str) -> TaskTypeWorker:
        try:
            return self._workers[task_type]
        except KeyError:
            raise ConfigurationError(f"no worker for task type {task_type!r}") from None

    def _size_pool(self) -> None:
        # Every slot may hold a connection, plus one poll per type, leases and redelivery.
        total = sum(w.capacity for w in self._workers.values()) + len(self._workers) + 2
        self.client.ensure_pool_size(total)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._state in (RunnerState.STOPPING, RunnerState.STOPPED):
            log.error("second signal: exiting now, without waiting for running tasks")
            os._exit(128 + signum)
        log.info("received %s: shutting down gracefully", signal.Signals(signum).name)
        # Before the thread starts (which may finish, setting STOPPED): a quick second signal
        # must see that the first one is being handled.
        self._state = RunnerState.STOPPING
        threading.Thread(
            target=self._shutdown,
            args=(self.shutdown_grace_seconds,),
            name="conductor-shutdown",
            daemon=True,
        ).start()

    def _undelivered(self, item: PendingResult, error: str) -> None:
        worker = self._workers.get(item.task_type)
        if worker is not None:
            worker.metrics.undelivered.inc()
        if self._user_on_undelivered is not None:
            self._user_on_undelivered(item, error)

    def _on_redelivery_attempt(
        self, item: PendingResult, seconds: float, error: ServerError | None
    ) -> None:
        worker = self._workers.get(item.task_type)
        if worker is None:
            return
        if error is None:
            worker.metrics.update_time.observe(seconds)
        else:
            worker.metrics.update_error.inc()


def _grace(seconds: float, name: str) -> float:
    if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds >= 0):
        raise ConfigurationError(f"{name} must be a finite number of seconds >= 0, got {seconds!r}")
    # Thread.join and Condition.wait refuse longer waits (about 292 years).
    return min(float(seconds), threading.TIMEOUT_MAX)
