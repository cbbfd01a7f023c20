"""The running task's context, and helpers that build a TaskResult from a task.

Inside a worker function (``def`` or ``async def``), ``task_context()`` gives the task being
executed, lets the worker add log lines that are sent with its result, and ``heartbeat()``
extends the task's lease on the server. It is a contextvar, so it is right in threads and in
concurrent coroutines alike.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from typing import Any

from conductor_client.models import Task, TaskResult, TaskResultStatus
from conductor_worker.errors import ConductorWorkerError

_current: ContextVar[TaskContext] = ContextVar("conductor_task_context")


class TaskContext:
    """What a worker can see and do about the task it is running."""

    __slots__ = ("_heartbeat", "logs", "task", "worker_id")

    def __init__(
        self, task: Task, worker_id: str, heartbeat: Callable[[], None] | None = None
    ) -> None:
        self.task = task
        self.worker_id = worker_id
        self.logs: list[dict[str, Any]] = []
        self._heartbeat = heartbeat

    @property
    def task_id(self) -> str:
        return self.task.task_id or ""

    @property
    def workflow_instance_id(self) -> str:
        return self.task.workflow_instance_id or ""

    @property
    def poll_count(self) -> int:
        """How many times the server has handed this task out (1 on the first run; it rises
        each time an IN_PROGRESS task comes back after its callback)."""
        return self.task.poll_count or 0

    @property
    def retry_count(self) -> int:
        return self.task.retry_count or 0

    def add_log(self, message: str) -> None:
        """Add a line to the task's execution logs (sent with the result)."""
        self.logs.append(
            {"log": str(message), "taskId": self.task_id, "createdTime": int(time.time() * 1000)}
        )

    def heartbeat(self) -> None:
        """Extend the task's lease now (does not block; the runner sends it in the background).

        Use it in long executions when automatic lease extension is off, or to be explicit.
        """
        if self._heartbeat is not None:
            self._heartbeat()


class NoTaskContextError(ConductorWorkerError, LookupError):
    """task_context() was called outside the execution of a task."""


def current_task_context() -> TaskContext | None:
    """The running task's context, or None outside a worker function."""
    return _current.get(None)


def task_context() -> TaskContext:
    """The context of the task that the calling worker function is running."""
    try:
        return _current.get()
    except LookupError:
        raise NoTaskContextError(
            "task_context() is only available while a worker function runs a task"
        ) from None


def new_task_result(
    task: Task,
    status: TaskResultStatus | str = TaskResultStatus.COMPLETED,
    output: Mapping[str, Any] | None = None,
    *,
    reason: str | None = None,
    callback_after_seconds: int | None = None,
) -> TaskResult:
    """A TaskResult for `task`, ready to return from a worker or to send with TaskExecutor.

    >>> return new_task_result(task, TaskResultStatus.IN_PROGRESS, callback_after_seconds=60)
    """
    return TaskResult(
        task_id=task.task_id,
        workflow_instance_id=task.workflow_instance_id,
        status=TaskResultStatus(status),
        output_data=dict(output) if output is not None else {},
        reason_for_incompletion=reason,
        callback_after_seconds=callback_after_seconds,
    )


def in_progress(callback_after_seconds: int, output: Mapping[str, Any] | None = None) -> TaskResult:
    """Hand the running task back to the server, to be polled again after the callback.

    >>> def long_running(task: Task) -> TaskResult:
    ...     return in_progress(callback_after_seconds=60)
    """
    return new_task_result(
        task_context().task,
        TaskResultStatus.IN_PROGRESS,
        output,
        callback_after_seconds=callback_after_seconds,
    )
