"""TaskRunner: polls for tasks, runs worker functions on them, reports the results.

One runner serves any number of task types in one process. For each task type a poll thread
asks the server for as many tasks as there are free slots (batch_size is the concurrency), with
a long poll so that an idle worker is cheap and quick to react. `def` workers run on a thread
pool, `async def` workers on one event loop. While tasks are queued up, a result goes back with
update-v2, which hands the same slot its next task at once; otherwise with a plain update (see
_TaskTypeWorker._backlog). Failed reports are retried in the background.

Lifecycle: created -> running (first start_worker) -> stopping (shutdown) -> stopped.
Shutdown stops polling, lets running tasks finish within the grace period while still
reporting, delivers pending results, then stops its threads.
"""

from __future__ import annotations

import enum
import logging
import math
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry

from conductor_client.models import Task
from conductor_worker.client import ConductorClient
from conductor_worker.concurrency import ThreadPool
from conductor_worker.context import TaskContext
from conductor_worker.declarations import declarations_of, unique
from conductor_worker.delivery import PendingResult, Redelivery, RetryPolicy, UndeliveredHook
from conductor_worker.errors import ConfigurationError
from conductor_worker.execution import (
    FAILED,
    Outcome,
    WorkerFunction,
    execute_async,
    execute_sync,
)
from conductor_worker.lease import LeaseKeeper
from conductor_worker.metrics import TaskTypeMetrics, metrics_for
from conductor_worker.options import WorkerOptions, apply_environment
from conductor_worker.transport import MalformedTask, ServerError, Transport

if TYPE_CHECKING:
    from conductor_worker.event_loop import EventLoopThread

log = logging.getLogger(__name__)

MAX_ERROR_BACKOFF_SECONDS = 10.0


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
        self.shutdown_grace_seconds = shutdown_grace_seconds
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
        self._workers: dict[str, _TaskTypeWorker] = {}
        self._lock = threading.Lock()
        self._state = RunnerState.CREATED
        self._stopped = threading.Event()
        self._shutdown_lock = threading.Lock()
        self._clean_shutdown = True

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
            worker = _TaskTypeWorker(self, task_type, function, options)
            self._workers[task_type] = worker
            self._state = RunnerState.RUNNING
            self._size_pool()
        worker.start()
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
        """
        with self._shutdown_lock:
            if self._state is RunnerState.STOPPED:
                return self._clean_shutdown
            grace = self.shutdown_grace_seconds if timeout is None else timeout
            deadline = time.monotonic() + grace
            with self._lock:
                self._state = RunnerState.STOPPING
                workers = list(self._workers.values())
            log.info("shutting down: %d task type(s), grace %.0fs", len(workers), grace)
            for worker in workers:
                worker.stop()
            for worker in workers:
                worker.join_poller(deadline)
            clean = all([worker.wait_idle(deadline) for worker in workers])
            clean = self._redelivery.drain(deadline) and clean
            for worker in workers:
                for task_id, workflow_id in worker.running():
                    log.error(
                        "task %s (workflow %s, type %s) still running after the %.0fs grace "
                        "period; the server will time it out and retry it per its definition",
                        task_id, workflow_id, worker.task_type, grace,
                    )  # fmt: skip
            for worker in workers:
                worker.metrics.unwatch(worker)
            left = self._redelivery.close()
            self._leases.close()
            self._pool.close()
            if self._loop is not None:
                self._loop.stop()
            self._clean_shutdown = clean and not left
            self._state = RunnerState.STOPPED
            self._stopped.set()
            log.info("stopped%s", "" if self._clean_shutdown else " (not everything finished)")
            return self._clean_shutdown

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

    def _worker(self, task_type: str) -> _TaskTypeWorker:
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
        threading.Thread(target=self.shutdown, name="conductor-shutdown", daemon=True).start()
        # Let the state change before a quick second signal arrives.
        self._state = RunnerState.STOPPING

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


class _TaskTypeWorker:
    """Polling and execution for one task type."""

    def __init__(
        self,
        runner: TaskRunner,
        task_type: str,
        function: WorkerFunction,
        options: WorkerOptions,
    ) -> None:
        self.runner = runner
        self.task_type = task_type
        self.function = function
        self.options = options
        self.worker_id: str = options.worker_id or ""
        self.capacity = options.batch_size
        self.busy = 0
        self.paused = options.paused
        self.poll_interval = options.poll_interval_seconds
        self._cond = threading.Condition()
        self._wake = threading.Event()
        self._stopping = False
        self._running: dict[str, str] = {}  # task id -> workflow id
        # Whether more tasks are probably queued: the last instant poll filled every slot it
        # asked for, or the last update-v2 brought a next task. Only then do results go back
        # with update-v2. On an empty queue update-v2 costs more than it saves: Conductor OSS
        # answers it with an update and then a 100 ms long poll for one task, which holds the
        # slot 100-200 ms and makes 2-3 more queue writes (one SQLite write transaction each on
        # the default server); the poll loop asks for the next tasks anyway. Races between
        # threads only pick the less suited call for one result.
        self._backlog = False
        self.metrics: TaskTypeMetrics = runner._metrics.for_task_type(task_type)
        self.metrics.watch(self)  # in_flight, free_slots and paused read this worker
        self._thread = threading.Thread(
            target=self._poll_loop, name=f"conductor-poll-{task_type}", daemon=True
        )

    # -- control -------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._wake.set()

    def join_poller(self, deadline: float) -> None:
        self._thread.join(max(0.0, deadline - time.monotonic()))

    def wait_idle(self, deadline: float) -> bool:
        with self._cond:
            while self.busy:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def running(self) -> list[tuple[str, str]]:
        with self._cond:
            return list(self._running.items())

    def resize(self, capacity: int) -> None:
        with self._cond:
            self.capacity = capacity
            self._cond.notify_all()
        self._wake.set()

    def set_paused(self, paused: bool) -> None:
        self.paused = paused
        log.info("%s polling for task type %r", "paused" if paused else "resumed", self.task_type)
        self._wake.set()

    def set_poll_interval(self, seconds: float) -> None:
        self.poll_interval = seconds
        self._wake.set()

    # -- polling -------------------------------------------------------------------------

    def _sleep(self, seconds: float) -> None:
        """Wait, but wake early for shutdown, resume or a settings change."""
        if self._wake.wait(seconds):
            self._wake.clear()

    def _free_slots(self) -> int:
        """Block until a slot is free; 0 when stopping."""
        with self._cond:
            while not self._stopping and self.busy >= self.capacity:
                self._cond.wait()
            return 0 if self._stopping else self.capacity - self.busy

    def _poll_loop(self) -> None:
        failures = 0
        transport = self.runner._transport
        options = self.options
        metrics = self.metrics
        # The server holds a long poll open until it has `count` tasks or the wait is over, so
        # a long poll for many would delay a lone task by the whole wait. Busy: take what is
        # there now, for every free slot. Idle: wait (long poll) for the next single task.
        busy = False
        while not self._stopping:
            if self.paused:
                self._sleep(1.0)
                continue
            free = self._free_slots()
            if not free:
                break
            started = time.perf_counter()
            metrics.poll.inc()
            count = free if busy else 1
            try:
                tasks, malformed = transport.batch_poll(
                    self.task_type,
                    worker_id=self.worker_id,
                    domain=options.domain,
                    count=count,
                    timeout_seconds=0.0 if busy else options.poll_timeout_seconds,
                )
            except ServerError as error:
                metrics.poll_failed(error.kind.removeprefix("http_"), failures > 0)
                failures += 1
                delay = random.uniform(0.5, 1.0) * min(
                    MAX_ERROR_BACKOFF_SECONDS, 0.25 * 2 ** min(failures, 10)
                )
                if failures == 1:
                    log.warning("poll for %r failed: %s; retrying", self.task_type, error)
                else:
                    log.debug("poll for %r failed again (%d): %s", self.task_type, failures, error)
                self._sleep(delay)
                continue
            except Exception:
                log.exception("unexpected error polling for %r", self.task_type)
                metrics.poll_failed("unexpected", failures > 0)
                failures += 1
                self._sleep(MAX_ERROR_BACKOFF_SECONDS)
                continue
            metrics.poll_time.observe(time.perf_counter() - started)
            if failures:
                log.info("poll for %r works again after %d failure(s)", self.task_type, failures)
                failures = 0
            for broken in malformed:
                self._report_malformed(broken)
            # A long poll returns at its first task, so only an instant one shows a queue.
            self._backlog = busy and len(tasks) + len(malformed) >= count
            if not tasks:
                if busy:
                    busy = False  # drained: go back to waiting, no pause needed
                else:
                    self._sleep(self.poll_interval)
                continue
            busy = True
            metrics.polled.inc(len(tasks))
            for task in tasks:
                self._dispatch(task)

    def _dispatch(self, task: Task) -> None:
        with self._cond:
            self.busy += 1
        if self.function.is_async:
            loop = self.runner._loop
            assert loop is not None
            loop.submit(self._run_async(task))
        else:
            self.runner._pool.submit(self._run_sync, task)

    def _release(self) -> None:
        with self._cond:
            self.busy -= 1
            self._cond.notify_all()

    # -- executing -----------------------------------------------------------------------

    def _begin(self, task: Task) -> tuple[TaskContext, Any]:
        lease = self.runner._leases.track(task, self.worker_id, self.options.lease_extension)
        context = TaskContext(task, self.worker_id, self.runner._leases.heartbeat_callback(lease))
        with self._cond:
            self._running[task.task_id or ""] = task.workflow_instance_id or ""
        return context, lease

    def _end(self, task: Task, lease: Any, outcome: Outcome) -> None:
        self.runner._leases.release(lease)
        with self._cond:
            self._running.pop(task.task_id or "", None)
        self.metrics.execute_time.observe(outcome.duration_seconds)
        if outcome.error_kind is not None:
            self.metrics.execute_error.inc()
            log.debug(
                "task %s (workflow %s) failed: %s",
                task.task_id, task.workflow_instance_id, outcome.reason,
            )  # fmt: skip

    def _run_sync(self, task: Task | None) -> None:
        try:
            while task is not None:
                context, lease = self._begin(task)
                started = time.perf_counter()
                try:
                    outcome = execute_sync(self.function, context)
                except BaseException as error:  # SystemExit and the like, raised by user code
                    outcome = _escaped(task, error, started)
                self._end(task, lease, outcome)
                task = self._deliver(outcome)
        finally:
            self._release()

    async def _run_async(self, task: Task | None) -> None:
        loop = self.runner._loop
        assert loop is not None
        try:
            while task is not None:
                context, lease = self._begin(task)
                started = time.perf_counter()
                try:
                    outcome = await execute_async(self.function, context)
                except BaseException as error:  # cancellation at exit, SystemExit
                    outcome = _escaped(task, error, started)
                self._end(task, lease, outcome)
                future: Any = loop.loop.create_future()
                self.runner._pool.submit(self._deliver_to_future, outcome, future)
                task = await future
        finally:
            self._release()

    def _deliver_to_future(self, outcome: Outcome, future: Any) -> None:
        loop = future.get_loop()
        try:
            result = self._deliver(outcome)
        except BaseException as error:
            loop.call_soon_threadsafe(future.set_exception, error)
        else:
            loop.call_soon_threadsafe(future.set_result, result)

    # -- reporting -----------------------------------------------------------------------

    def _deliver(self, outcome: Outcome, *, take_next: bool = True) -> Task | None:
        """Report an outcome; returns the next task when the server handed one over."""
        task = outcome.task
        body = outcome.encode(self.worker_id)
        self.metrics.result_size.observe(len(outcome.output_json))
        take_next = (
            take_next
            and outcome.terminal
            and self._backlog
            and not self.paused
            and not self._stopping
            and self.runner._state is RunnerState.RUNNING
        )
        started = time.perf_counter()
        try:
            following = self.runner._transport.update(body, take_next=take_next)
        except Exception as error:
            if not isinstance(error, ServerError):
                log.exception("unexpected error reporting task %s", task.task_id)
                error = ServerError(repr(error), kind="unexpected")
            self.metrics.update_error.inc()
            pending = PendingResult(
                self.task_type, task.task_id or "", task.workflow_instance_id or "", body
            )
            self.runner._redelivery.submit(pending, error)
            return None
        self.metrics.update_time.observe(time.perf_counter() - started)
        if take_next:
            self._backlog = following is not None
        if isinstance(following, MalformedTask):
            self._report_malformed(following)
            return None
        if following is not None:
            self.metrics.polled.inc()
        return following

    def _report_malformed(self, broken: MalformedTask) -> None:
        """A task the server handed out that we cannot read: fail it so it is not stuck.

        Not counted as an execution (nothing ran); its report counts as any other.
        """
        if not broken.task_id or not broken.workflow_instance_id:
            log.error("unusable task from the server, without ids: %s", broken.error)
            return
        log.error(
            "task %s (workflow %s): %s", broken.task_id, broken.workflow_instance_id, broken.error
        )
        task = Task.model_construct(
            task_id=broken.task_id, workflow_instance_id=broken.workflow_instance_id
        )
        outcome = Outcome(task, FAILED, reason=broken.error, error_kind="bad_input")
        self.runner._pool.submit(self._deliver_malformed, outcome)

    def _deliver_malformed(self, outcome: Outcome) -> None:
        self._deliver(outcome, take_next=False)


def _escaped(task: Task, error: BaseException, started: float) -> Outcome:
    """An outcome for a BaseException that got past the worker (SystemExit, cancellation)."""
    return Outcome(
        task,
        FAILED,
        reason=repr(error),
        error_kind="exception",
        duration_seconds=time.perf_counter() - started,
    )
