"""Run a worker function on one task and turn whatever happens into an Outcome.

bind the input -> call the function (sync or async) -> serialize the output. Every path ends
in an Outcome, the result to report: the function's exception, bad input and unserializable
output are reported as task failures, never raised to the runner.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from conductor_client.models import Task, TaskResult, TaskResultStatus
from conductor_worker.binding import InputBinder
from conductor_worker.context import TaskContext, _current
from conductor_worker.errors import (
    InputBindingError,
    NonRetryableError,
    OutputSerializationError,
    WorkerSignatureError,
)
from conductor_worker.serialization import encode_json, to_output_data

# The server truncates reasonForIncompletion to 500 characters; a traceback in the logs keeps
# the rest. Tracebacks are capped too: a log line is stored with the task.
MAX_REASON_CHARS = 500
MAX_TRACEBACK_CHARS = 16_000

COMPLETED = TaskResultStatus.COMPLETED.value
FAILED = TaskResultStatus.FAILED.value
TERMINAL = TaskResultStatus.FAILED_WITH_TERMINAL_ERROR.value

# What counts as a worker error for metrics: anything that is not a clean result.
ERROR_KINDS = ("exception", "non_retryable", "bad_input", "bad_output")


@dataclass(slots=True)
class Outcome:
    """The result of one execution, ready to be encoded and reported."""

    task: Task
    status: str
    output_json: bytes = b"{}"
    reason: str | None = None
    logs: list[dict[str, Any]] = field(default_factory=list)
    callback_after_seconds: int | None = None
    error_kind: str | None = None  # one of ERROR_KINDS, or None
    duration_seconds: float = 0.0

    @property
    def terminal(self) -> bool:
        """True when the task is done with this result (the server gets no more from us)."""
        return self.status != TaskResultStatus.IN_PROGRESS.value

    def encode(self, worker_id: str) -> bytes:
        """The TaskResult JSON body. outputData is spliced in as already-encoded bytes."""
        task = self.task
        head: dict[str, Any] = {
            "taskId": task.task_id,
            "workflowInstanceId": task.workflow_instance_id,
            "workerId": worker_id,
            "status": self.status,
        }
        if self.reason is not None:
            head["reasonForIncompletion"] = self.reason[:MAX_REASON_CHARS]
        if self.callback_after_seconds is not None:
            head["callbackAfterSeconds"] = self.callback_after_seconds
        if self.logs:
            head["logs"] = self.logs
        try:
            text = _dumps(head).encode()
        except UnicodeEncodeError:
            # A lone surrogate in a reason or a log line (a file name decoded with
            # surrogateescape, say) has no UTF-8 form: escape it rather than lose the result.
            text = _dumps(_encodable(head)).encode()
        return text[:-1] + b',"outputData":' + self.output_json + b"}"


_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _encodable(value: Any) -> Any:
    """`value` with every lone surrogate in its strings written as a visible escape (`\\udcff`).

    outputData is not passed here: a lone surrogate there fails the task with its JSON path
    (serialization.py). Reasons and log lines are messages for people; they must get through.
    """
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {_encodable(key): _encodable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encodable(item) for item in value]
    return value


def exception_message(error: BaseException) -> str:
    """`str(error)`, or the exception's type name when that is empty or fails. Never raises:
    user exceptions may have a broken `__str__`, and the task's result must still be built."""
    traceback_ = error.__traceback__
    try:
        text = str(error)
    except BaseException:  # anything a user's __str__ can raise
        text = ""
        error.__traceback__ = traceback_  # a __str__ that raises `self` extended it
    return text or type(error).__name__


def exception_repr(error: BaseException) -> str:
    """`repr(error)`, or the exception's type name when that fails. Never raises."""
    traceback_ = error.__traceback__
    try:
        return repr(error)
    except BaseException:  # anything a user's __repr__ can raise
        error.__traceback__ = traceback_  # a __repr__ that raises `self` extended it
        return type(error).__name__


def format_traceback(error: BaseException) -> str:
    """The exception's traceback as text, capped to MAX_TRACEBACK_CHARS (keeping the end).
    Never raises: when the traceback itself cannot be formatted, says so."""
    try:
        text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    except BaseException as failure:  # formatting user objects can raise anything
        text = (
            f"{type(error).__name__}: {exception_message(error)}\n"
            f"(the traceback could not be formatted: {type(failure).__name__})\n"
        )
    if len(text) > MAX_TRACEBACK_CHARS:
        text = "...\n" + text[-(MAX_TRACEBACK_CHARS - 4) :]
    return text


class WorkerFunction:
    """A user's worker function, analysed once at registration."""

    __slots__ = ("binder", "fn", "is_async", "name")

    def __init__(self, fn: Callable[..., Any]) -> None:
        if not callable(fn):
            raise WorkerSignatureError(f"a worker must be a function, got {type(fn).__name__}")
        self.fn = fn
        self.name = getattr(fn, "__qualname__", repr(fn))
        self.is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
            getattr(fn, "__call__", None)  # noqa: B004 - callable objects with async __call__
        )
        self.binder = InputBinder.for_function(fn, Task)

    def __repr__(self) -> str:
        kind = "async" if self.is_async else "sync"
        return f"<WorkerFunction {self.name} ({kind})>"


def execute_sync(worker: WorkerFunction, context: TaskContext) -> Outcome:
    """Run a `def` worker in the calling thread, with the task context set."""
    started = time.perf_counter()
    token = _current.set(context)
    try:
        try:
            args, kwargs = worker.binder.bind(context.task)
        except InputBindingError as error:
            return _failure(context, TERMINAL, error, "bad_input", started)
        try:
            value = worker.fn(*args, **kwargs)
        except NonRetryableError as error:
            return _failure(context, TERMINAL, error, "non_retryable", started)
        except Exception as error:
            return _failure(context, FAILED, error, "exception", started)
        return _success(context, value, started)
    finally:
        _current.reset(token)


async def execute_async(worker: WorkerFunction, context: TaskContext) -> Outcome:
    """Run an `async def` worker on the running loop, with the task context set.

    The context var is set inside this coroutine's own task context, so concurrent tasks on
    one loop each see their own task.
    """
    started = time.perf_counter()
    token = _current.set(context)
    try:
        try:
            args, kwargs = worker.binder.bind(context.task)
        except InputBindingError as error:
            return _failure(context, TERMINAL, error, "bad_input", started)
        try:
            value = await worker.fn(*args, **kwargs)
        except NonRetryableError as error:
            return _failure(context, TERMINAL, error, "non_retryable", started)
        except Exception as error:
            return _failure(context, FAILED, error, "exception", started)
        return _success(context, value, started)
    finally:
        # A coroutine closed by the garbage collector (after shutdown stopped the loop) runs
        # this in another context, where the token is not valid: nothing to restore there.
        with contextlib.suppress(ValueError):
            _current.reset(token)


def _success(context: TaskContext, value: object, started: float) -> Outcome:
    task = context.task
    if isinstance(value, TaskResult):
        return _from_task_result(context, value, started)
    try:
        output_json = encode_json(to_output_data(value))
    except OutputSerializationError as error:
        return _failure(context, TERMINAL, error, "bad_output", started, with_traceback=False)
    return Outcome(
        task,
        COMPLETED,
        output_json,
        logs=context.logs,
        duration_seconds=time.perf_counter() - started,
    )


def _from_task_result(context: TaskContext, result: TaskResult, started: float) -> Outcome:
    """A worker that returns a TaskResult decides status, output, reason and callback."""
    try:
        output_json = encode_json(to_output_data(result.output_data))
    except OutputSerializationError as error:
        return _failure(context, TERMINAL, error, "bad_output", started, with_traceback=False)
    status = result.status.value if result.status is not None else COMPLETED
    logs = context.logs
    if result.logs:
        logs = [*(log.to_dict() for log in result.logs), *logs]
    error_kind = None
    if status in (FAILED, TERMINAL):
        error_kind = "exception"
    return Outcome(
        context.task,
        status,
        output_json,
        reason=result.reason_for_incompletion,
        logs=logs,
        callback_after_seconds=result.callback_after_seconds,
        error_kind=error_kind,
        duration_seconds=time.perf_counter() - started,
    )


def _failure(
    context: TaskContext,
    status: str,
    error: BaseException,
    kind: str,
    started: float,
    *,
    with_traceback: bool = True,
) -> Outcome:
    reason = exception_message(error)
    logs = context.logs
    if with_traceback:
        logs = [
            *logs,
            {
                "log": format_traceback(error),
                "taskId": context.task_id,
                "createdTime": int(time.time() * 1000),
            },
        ]
    return Outcome(
        context.task,
        status,
        reason=reason,
        logs=logs,
        error_kind=kind,
        duration_seconds=time.perf_counter() - started,
    )
