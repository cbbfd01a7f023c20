"""Polling, execution and reporting for one task type: poll -> run -> report, per slot.

A TaskTypeWorker belongs to a TaskRunner, which owns what the task types share (the transport,
the thread pool, the event loop, lease extension, redelivery, metrics) and the lifecycle.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from conductor_client.models import Task, TaskResultStatus
from conductor_worker.context import TaskContext
from conductor_worker.delivery import PendingResult
from conductor_worker.execution import (
    FAILED,
    Outcome,
    WorkerFunction,
    exception_message,
    exception_repr,
    execute_async,
    execute_sync,
)
from conductor_worker.metrics import TaskTypeMetrics
from conductor_worker.options import WorkerOptions
from conductor_worker.transport import MalformedTask, ServerError

if TYPE_CHECKING:
    from conductor_worker.runner import TaskRunner

log = logging.getLogger(__name__)

MAX_ERROR_BACKOFF_SECONDS = 10.0
# While polls keep failing, the failure is logged again at WARNING this often (not only once:
# a misconfigured worker must not look merely idle).
FAILURE_REMINDER_SECONDS = 60.0
IN_PROGRESS = TaskResultStatus.IN_PROGRESS.value


class TaskTypeWorker:
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
        self.hand_back_failures = 0  # tasks left assigned to us on the server
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

    def join_poller(self, deadline: float) -> bool:
        """Wait for the poll thread to end; False if a poll is still open at the deadline."""
        if self._thread.ident is None:
            return True  # never started
        self._thread.join(max(0.0, deadline - time.monotonic()))
        return not self._thread.is_alive()

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
        remind_at = 0.0
        transport = self.runner._transport
        options = self.options
        metrics = self.metrics
        # The server holds a long poll open until it has `count` tasks or the wait is over, so
        # a long poll for many would delay a lone task by the whole wait. Busy: take what is
        # there now, for every free slot. Idle: wait (long poll) for the next single task.
        busy = False
        while not self._stopping:
            free = self._free_slots()
            if not free:
                break
            if self.paused:  # checked after the wait for a slot, which may be long
                self._sleep(1.0)
                continue
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
            except Exception as error:
                if not isinstance(error, ServerError):
                    log.exception("unexpected error polling for %r", self.task_type)
                    error = ServerError(repr(error), kind="unexpected")
                metrics.poll_failed(error.kind.removeprefix("http_"), failures > 0)
                failures += 1
                now = time.monotonic()
                if failures == 1 or now >= remind_at:
                    remind_at = now + FAILURE_REMINDER_SECONDS
                    # A rejected token is retried too, but needs someone's attention.
                    serious = not error.retryable or error.status in (401, 403)
                    log.log(
                        logging.ERROR if serious else logging.WARNING,
                        "poll for %r failed%s: %s; retrying",
                        self.task_type,
                        f" ({failures} times in a row)" if failures > 1 else "",
                        error,
                    )
                else:
                    log.debug("poll for %r failed again (%d): %s", self.task_type, failures, error)
                self._sleep(
                    random.uniform(0.5, 1.0)
                    * min(MAX_ERROR_BACKOFF_SECONDS, 0.25 * 2 ** min(failures, 10))
                )
                continue
            metrics.poll_time.observe(time.perf_counter() - started)
            if failures:
                log.info("poll for %r works again after %d failure(s)", self.task_type, failures)
                failures = 0
            received = len(tasks) + len(malformed)
            metrics.polled.inc(received)
            # A long poll returns at its first task, so only an instant one shows a queue.
            self._backlog = busy and received >= count
            self._take(tasks, malformed)
            # This thread must not keep the last batch (inputs and all) alive while it waits.
            del tasks, malformed
            if received:
                busy = True
            elif busy:
                busy = False  # drained: go back to waiting, no pause needed
            else:
                self._sleep(self.poll_interval)

    def _take(self, tasks: list[Task], malformed: list[MalformedTask]) -> None:
        for broken in malformed:
            self._report_malformed(broken)
        for task in self._admit(tasks):
            self._dispatch(task)

    def _admit(self, tasks: Iterable[Task]) -> list[Task]:
        """The polled tasks to run here: each once, and only of this task type.

        A server answer is not trusted blindly: a task already running here (listed twice, or
        handed out again) is not started a second time, and a task of another type is handed
        back rather than run by the wrong function.
        """
        admitted: list[Task] = []
        for task in tasks:
            task_id = task.task_id or ""
            if task.task_type not in (None, self.task_type):
                self._hand_back(task, f"it is of type {task.task_type!r}, not {self.task_type!r}")
                continue
            with self._cond:
                # Recorded at once, not when the function starts: a copy handed out in
                # between must find it.
                duplicate = task_id in self._running  # also a task listed twice in one batch
                if not duplicate:
                    self._running[task_id] = task.workflow_instance_id or ""
            if duplicate:
                log.warning(
                    "task %s (workflow %s) handed out again while it runs here; ignored",
                    task_id, task.workflow_instance_id,
                )  # fmt: skip
                continue
            admitted.append(task)
        return admitted

    def _dispatch(self, task: Task) -> None:
        if self._stopping or self.runner._closed:
            self._forget(task)
            self._hand_back(task, "the runner is stopping")
            return
        with self._cond:
            self.busy += 1
        try:
            if self.function.is_async:
                loop = self.runner._loop
                assert loop is not None
                loop.submit(self._run_async(task)).add_done_callback(self._log_crash)
            else:
                self.runner._pool.submit(self._run_sync, task)
        except RuntimeError:  # the pool or the loop closed in the meantime
            self._forget(task)
            self._release()
            self._hand_back(task, "the runner has stopped")

    def _forget(self, task: Task) -> None:
        """An admitted task that will not run here after all."""
        with self._cond:
            self._running.pop(task.task_id or "", None)

    def _hand_back(self, task: Task, why: str) -> None:
        """Return a task the server handed to us that we will not run: reported IN_PROGRESS
        with no callback delay, the server queues it again at once (for any worker)."""
        log.warning(
            "task %s (workflow %s) not run here: %s; handing it back to the server",
            task.task_id, task.workflow_instance_id, why,
        )  # fmt: skip
        body = Outcome(task, IN_PROGRESS, callback_after_seconds=0).encode(self.worker_id)
        try:
            self.runner._transport.update(body, take_next=False)
        except Exception as error:
            self.hand_back_failures += 1
            log.error(
                "task %s (workflow %s) could not be handed back (%s); the server will time it "
                "out and retry it per its definition",
                task.task_id, task.workflow_instance_id, error,
            )  # fmt: skip

    def _log_crash(self, future: Any) -> None:
        """A bug in the async path must not vanish in a future nobody reads."""
        if not future.cancelled() and future.exception() is not None:
            log.error(
                "unexpected error running a task of type %r",
                self.task_type,
                exc_info=future.exception(),
            )

    def _release(self) -> None:
        with self._cond:
            self.busy -= 1
            self._cond.notify_all()

    # -- executing -----------------------------------------------------------------------

    def _begin(self, task: Task) -> tuple[TaskContext, Any]:
        """Set up a task's lease and context (it is in _running since _admit). If that fails
        (e.g. no thread for the lease keeper), the task is handed back, not left behind."""
        lease = None
        try:
            lease = self.runner._leases.track(task, self.worker_id, self.options.lease_extension)
            heartbeat = self.runner._leases.heartbeat_callback(lease)
            return TaskContext(task, self.worker_id, heartbeat), lease
        except BaseException as error:
            if lease is not None:
                self.runner._leases.release(lease)
            self._forget(task)
            self._hand_back(task, f"it could not be started ({exception_message(error)})")
            raise

    def _end(self, task: Task, lease: Any, outcome: Outcome) -> None:
        self.runner._leases.release(lease)
        with self._cond:
            self._running.pop(task.task_id or "", None)
        self.metrics.execute_time.observe(outcome.duration_seconds)
        if outcome.error_kind is not None:
            self.metrics.execute_error.inc()
            log.warning(
                "task %s (workflow %s, type %s) failed: %s",
                task.task_id, task.workflow_instance_id, self.task_type, outcome.reason,
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
                except GeneratorExit:
                    if not loop.loop.is_running():
                        # Closed after shutdown stopped the loop (the task outlived the grace
                        # period): nothing reports it now; the server times it out and retries
                        # it, as shutdown logged. Delivering here could hang interpreter exit.
                        raise
                    outcome = _escaped(task, GeneratorExit(), started)
                except BaseException as error:  # cancellation at exit, SystemExit
                    outcome = _escaped(task, error, started)
                self._end(task, lease, outcome)
                # Reporting blocks: on a pool thread, so the loop runs other tasks meanwhile.
                future: Any = loop.loop.create_future()
                try:
                    self.runner._pool.submit(self._deliver_to_future, outcome, future)
                except RuntimeError:  # the pool closed: a late result still goes out
                    threading.Thread(
                        target=self._deliver_to_future, args=(outcome, future), daemon=True
                    ).start()
                task = await future
        finally:
            self._release()

    def _deliver_to_future(self, outcome: Outcome, future: Any) -> None:
        loop = future.get_loop()
        try:
            result = self._deliver(outcome)
        except BaseException as error:
            with contextlib.suppress(RuntimeError):  # the loop has closed: nothing waits
                loop.call_soon_threadsafe(future.set_exception, error)
            return
        try:
            loop.call_soon_threadsafe(future.set_result, result)
        except RuntimeError:  # the loop has closed: the next task cannot run here
            if result is not None:
                self._forget(result)
                self._hand_back(result, "the runner has stopped")

    # -- reporting -----------------------------------------------------------------------

    def _deliver(self, outcome: Outcome, *, take_next: bool = True) -> Task | None:
        """Report an outcome; returns the next task when the server handed one over."""
        task = outcome.task
        body = self._encode(outcome)
        self.metrics.result_size.observe(len(outcome.output_json))
        with self._cond:
            within_capacity = self.busy <= self.capacity  # a lowered batch size sheds slots
        take_next = (
            take_next
            and outcome.terminal
            and self._backlog
            and within_capacity
            and not self.paused
            and not self._stopping
            and not self.runner._closed
        )
        started = time.perf_counter()
        try:
            following = self.runner._transport.update(body, take_next=take_next)
        except Exception as error:
            if not isinstance(error, ServerError):
                log.exception(
                    "unexpected error reporting task %s (workflow %s)",
                    task.task_id, task.workflow_instance_id,
                )  # fmt: skip
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
        if following is None:
            return None
        self.metrics.polled.inc()
        if isinstance(following, MalformedTask):
            self._report_malformed(following)
            return None
        # Admitted first: a copy of a task running here is ignored even while stopping
        # (handing it back would free it on the server).
        admitted = self._admit([following])
        if admitted and (self._stopping or self.runner._closed):  # shutdown began meanwhile
            self._forget(following)
            self._hand_back(following, "the runner is stopping")
            return None
        return admitted[0] if admitted else None

    def _encode(self, outcome: Outcome) -> bytes:
        """The result's body; if encoding fails (a bug, not user data: outputs are checked
        when serialized), a plain FAILED result still reports the task."""
        try:
            return outcome.encode(self.worker_id)
        except Exception as error:
            task = outcome.task
            log.exception(
                "task %s (workflow %s): the result could not be encoded; reporting FAILED",
                task.task_id, task.workflow_instance_id,
            )  # fmt: skip
            return json.dumps(
                {
                    "taskId": task.task_id,
                    "workflowInstanceId": task.workflow_instance_id,
                    "workerId": self.worker_id,
                    "status": FAILED,
                    "reasonForIncompletion": (
                        f"the result could not be encoded: {exception_message(error)}"[:500]
                    ),
                }
            ).encode()

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
        try:
            self.runner._pool.submit(self._deliver_malformed, outcome)
        except RuntimeError:  # the pool closed: report it from here
            self._deliver_malformed(outcome)

    def _deliver_malformed(self, outcome: Outcome) -> None:
        self._deliver(outcome, take_next=False)


def _escaped(task: Task, error: BaseException, started: float) -> Outcome:
    """An outcome for a BaseException that got past the worker (SystemExit, cancellation)."""
    return Outcome(
        task,
        FAILED,
        reason=exception_repr(error),  # never raises, whatever the exception's __repr__ does
        error_kind="exception",
        duration_seconds=time.perf_counter() - started,
    )
