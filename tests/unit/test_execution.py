"""Unit tests for conductor_worker.execution and conductor_worker.context.

A worker function is run on a generated ``Task`` built here; every path must end in an Outcome
whose fields, and whose encoded TaskResult body, say what happened.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from conductor_client.models import Task, TaskExecLog, TaskResult, TaskResultStatus
from conductor_worker.context import (
    NoTaskContextError,
    TaskContext,
    in_progress,
    new_task_result,
    task_context,
)
from conductor_worker.errors import ConductorWorkerError, NonRetryableError
from conductor_worker.execution import (
    MAX_REASON_CHARS,
    MAX_TRACEBACK_CHARS,
    Outcome,
    WorkerFunction,
    exception_message,
    exception_repr,
    execute_async,
    execute_sync,
)
from tests.unit.awkward_user_code import (
    UNDECODABLE_NAME,
    Unprintable,
    async_unprintable,
    sync_unprintable,
)

COMPLETED = "COMPLETED"
FAILED = "FAILED"
TERMINAL = "FAILED_WITH_TERMINAL_ERROR"
IN_PROGRESS = "IN_PROGRESS"
WORKER_ID = "worker-7"


def make_task(
    input_data: dict[str, Any] | None = None,
    *,
    task_id: str = "task-1",
    workflow_id: str = "wf-1",
    **extra: Any,
) -> Task:
    return Task(task_id=task_id, workflow_instance_id=workflow_id, input_data=input_data, **extra)


def run(
    fn: Callable[..., Any],
    task: Task | None = None,
    heartbeat: Callable[[], None] | None = None,
) -> Outcome:
    """Run `fn` the way the runner would: sync in this thread, async on a fresh loop."""
    worker = WorkerFunction(fn)
    context = TaskContext(task or make_task(), WORKER_ID, heartbeat)
    if worker.is_async:
        return asyncio.run(execute_async(worker, context))
    return execute_sync(worker, context)


def output_of(outcome: Outcome) -> Any:
    return json.loads(outcome.output_json)


def traceback_logs(outcome: Outcome) -> list[str]:
    return [entry["log"] for entry in outcome.logs if "Traceback" in entry["log"]]


class Oops(Exception):
    """An exception whose str() is empty when raised without a message."""


# -- the two flavours of one worker -------------------------------------------------------------


def sync_add(a: int, b: int) -> dict[str, int]:
    return {"sum": a + b}


async def async_add(a: int, b: int) -> dict[str, int]:
    await asyncio.sleep(0)
    return {"sum": a + b}


def sync_raise(message: str) -> None:
    raise ValueError(message)


async def async_raise(message: str) -> None:
    await asyncio.sleep(0)
    raise ValueError(message)


def sync_non_retryable(message: str) -> None:
    raise NonRetryableError(message)


async def async_non_retryable(message: str) -> None:
    await asyncio.sleep(0)
    raise NonRetryableError(message)


both_add = pytest.mark.parametrize("fn", [sync_add, async_add], ids=["sync", "async"])
both_raise = pytest.mark.parametrize("fn", [sync_raise, async_raise], ids=["sync", "async"])
both_non_retryable = pytest.mark.parametrize(
    "fn", [sync_non_retryable, async_non_retryable], ids=["sync", "async"]
)


# -- completed ----------------------------------------------------------------------------------


@both_add
def test_completed_with_output_bytes(fn: Callable[..., Any]) -> None:
    task = make_task({"a": 2, "b": "3"})

    outcome = run(fn, task)

    assert outcome.status == COMPLETED
    assert isinstance(outcome.output_json, bytes)
    assert output_of(outcome) == {"sum": 5}
    assert outcome.task is task
    assert outcome.reason is None
    assert outcome.error_kind is None
    assert outcome.callback_after_seconds is None
    assert outcome.logs == []
    assert outcome.terminal
    assert outcome.duration_seconds >= 0


@pytest.mark.parametrize(
    ("returned", "expected"),
    [
        (None, {}),
        ([1, "two"], {"result": [1, "two"]}),
        ("text", {"result": "text"}),
        ({"nested": {"x": [True, None]}}, {"nested": {"x": [True, None]}}),
    ],
)
def test_return_value_shapes_the_output(returned: Any, expected: dict[str, Any]) -> None:
    outcome = run(lambda: returned)

    assert outcome.status == COMPLETED
    assert output_of(outcome) == expected


def test_worker_taking_the_task_receives_it() -> None:
    seen: list[Task] = []

    def worker(task: Task) -> None:
        seen.append(task)

    task = make_task({"ignored": 1})
    assert run(worker, task).status == COMPLETED
    assert seen == [task]


def test_worker_function_rejects_non_callables_and_detects_async_callables() -> None:
    class AsyncCallable:
        async def __call__(self) -> str:
            return "done"

    with pytest.raises(TypeError, match="a worker must be a function"):
        WorkerFunction("not a function")  # type: ignore[arg-type]
    assert WorkerFunction(AsyncCallable()).is_async
    assert not WorkerFunction(sync_add).is_async
    assert output_of(run(AsyncCallable())) == {"result": "done"}


# -- failures -----------------------------------------------------------------------------------


@both_raise
def test_exception_fails_the_task_with_reason_and_traceback(fn: Callable[..., Any]) -> None:
    outcome = run(fn, make_task({"message": "database is down"}))

    assert outcome.status == FAILED
    assert outcome.reason == "database is down"
    assert outcome.error_kind == "exception"
    assert outcome.terminal
    assert output_of(outcome) == {}
    [text] = traceback_logs(outcome)
    assert "ValueError: database is down" in text
    assert fn.__name__ in text  # the user's frame is in it
    [entry] = outcome.logs
    assert entry["taskId"] == "task-1"
    assert isinstance(entry["createdTime"], int)


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_exception_without_message_uses_the_class_name(is_async: bool) -> None:
    def sync_worker() -> None:
        raise Oops()

    async def async_worker() -> None:
        raise Oops()

    outcome = run(async_worker if is_async else sync_worker)

    assert outcome.status == FAILED
    assert outcome.reason == "Oops"


def test_traceback_in_logs_is_capped_and_keeps_the_end() -> None:
    message = "x" * (MAX_TRACEBACK_CHARS * 3)

    outcome = run(sync_raise, make_task({"message": message}))

    [entry] = outcome.logs
    text = entry["log"]
    assert len(text) <= MAX_TRACEBACK_CHARS + len("...\n")
    assert text.startswith("...\n")
    assert text.rstrip().endswith("x" * 100)  # the end (the exception line) is what is kept
    assert outcome.reason == message  # the reason is cut only when encoded


def test_deep_traceback_is_capped() -> None:
    def recurse(depth: int) -> None:
        if depth == 0:
            raise RuntimeError("bottom")
        recurse(depth - 1)

    outcome = run(lambda: recurse(400))

    text = outcome.logs[-1]["log"]
    assert len(text) <= MAX_TRACEBACK_CHARS + len("...\n")
    assert text.rstrip().endswith("RuntimeError: bottom")


@both_non_retryable
def test_non_retryable_error_is_terminal(fn: Callable[..., Any]) -> None:
    outcome = run(fn, make_task({"message": "card declined"}))

    assert outcome.status == TERMINAL
    assert outcome.reason == "card declined"
    assert outcome.error_kind == "non_retryable"
    assert any("NonRetryableError: card declined" in text for text in traceback_logs(outcome))


def test_non_retryable_subclass_and_empty_message() -> None:
    class Declined(NonRetryableError):
        pass

    def worker() -> None:
        raise Declined("")

    outcome = run(worker)

    assert outcome.status == TERMINAL
    assert outcome.reason == "Declined"


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize(
    ("input_data", "fragment"),
    [({}, "missing required input 'count'"), ({"count": "many"}, "invalid input 'count'")],
    ids=["missing", "wrong-type"],
)
def test_bad_input_is_terminal_and_names_the_parameter(
    is_async: bool, input_data: dict[str, Any], fragment: str
) -> None:
    calls: list[int] = []

    def sync_worker(count: int) -> None:
        calls.append(count)

    async def async_worker(count: int) -> None:
        calls.append(count)

    outcome = run(async_worker if is_async else sync_worker, make_task(input_data))

    assert outcome.status == TERMINAL
    assert outcome.error_kind == "bad_input"
    assert outcome.reason is not None
    assert fragment in outcome.reason
    assert calls == []  # the function never ran


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_unserializable_output_is_terminal_without_traceback(is_async: bool) -> None:
    def sync_worker() -> dict[str, float]:
        task_context().add_log("computed")
        return {"ratio": float("nan")}

    async def async_worker() -> object:
        return object()

    outcome = run(async_worker if is_async else sync_worker)

    assert outcome.status == TERMINAL
    assert outcome.error_kind == "bad_output"
    assert outcome.reason is not None
    assert outcome.reason.startswith("$.result: " if is_async else "$.ratio: ")
    assert traceback_logs(outcome) == []
    assert output_of(outcome) == {}
    if not is_async:
        assert [entry["log"] for entry in outcome.logs] == ["computed"]


def test_base_exceptions_are_not_swallowed() -> None:
    def worker() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(worker)


# -- returning a TaskResult ---------------------------------------------------------------------


@dataclasses.dataclass
class Progress:
    done: int
    of: int


def test_in_progress_result_with_callback() -> None:
    def worker() -> TaskResult:
        return in_progress(callback_after_seconds=45, output={"step": Progress(1, 3)})

    outcome = run(worker)

    assert outcome.status == IN_PROGRESS
    assert outcome.callback_after_seconds == 45
    assert not outcome.terminal
    assert outcome.error_kind is None
    assert output_of(outcome) == {"step": {"done": 1, "of": 3}}


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_task_result_output_data_with_dataclasses(is_async: bool) -> None:
    def build(task: Task) -> TaskResult:
        return TaskResult(
            task_id=task.task_id,
            workflow_instance_id=task.workflow_instance_id,
            status=TaskResultStatus.COMPLETED,
            output_data={"items": [Progress(1, 2), Progress(2, 2)], "total": 2},
        )

    async def async_build(task: Task) -> TaskResult:
        return build(task)

    outcome = run(async_build if is_async else build)

    assert outcome.status == COMPLETED
    assert output_of(outcome) == {
        "items": [{"done": 1, "of": 2}, {"done": 2, "of": 2}],
        "total": 2,
    }


def test_task_result_logs_come_before_context_logs() -> None:
    def worker(task: Task) -> TaskResult:
        task_context().add_log("from the context")
        result = new_task_result(task, TaskResultStatus.COMPLETED, {"ok": True})
        result.logs = [TaskExecLog(log="from the result", task_id=task.task_id, created_time=7)]
        return result

    outcome = run(worker)

    assert outcome.status == COMPLETED
    assert outcome.logs[0] == {"log": "from the result", "taskId": "task-1", "createdTime": 7}
    assert [entry["log"] for entry in outcome.logs] == ["from the result", "from the context"]


def test_failed_task_result_keeps_its_reason() -> None:
    def worker(task: Task) -> TaskResult:
        return new_task_result(task, "FAILED", reason="upstream said no")

    outcome = run(worker)

    assert outcome.status == FAILED
    assert outcome.reason == "upstream said no"
    assert outcome.error_kind == "exception"  # counted as a worker error
    assert traceback_logs(outcome) == []


def test_task_result_without_status_is_completed() -> None:
    outcome = run(lambda: TaskResult(output_data={"a": 1}))

    assert outcome.status == COMPLETED
    assert output_of(outcome) == {"a": 1}


def test_task_result_with_unserializable_output_is_terminal() -> None:
    outcome = run(lambda: TaskResult(output_data={"bad": {1, object()}}))

    assert outcome.status == TERMINAL
    assert outcome.error_kind == "bad_output"
    assert outcome.reason is not None
    assert outcome.reason.startswith("$.bad")


# -- encoding -----------------------------------------------------------------------------------


def test_encode_of_a_failure_matches_the_outcome() -> None:
    task = make_task(task_id="t-42", workflow_id="wf-42")
    long_reason = "é" * (MAX_REASON_CHARS + 100)  # non-ASCII: counted in characters
    logs = [{"log": "line", "taskId": "t-42", "createdTime": 1}]
    outcome = Outcome(task, FAILED, reason=long_reason, logs=logs, callback_after_seconds=9)

    body = json.loads(outcome.encode(WORKER_ID).decode("utf-8"))

    assert body == {
        "taskId": "t-42",
        "workflowInstanceId": "wf-42",
        "workerId": WORKER_ID,
        "status": FAILED,
        "reasonForIncompletion": "é" * MAX_REASON_CHARS,
        "callbackAfterSeconds": 9,
        "logs": logs,
        "outputData": {},
    }


def test_encode_of_a_run_outcome_splices_output_and_omits_empty_fields() -> None:
    outcome = run(lambda: {"greeting": "héllo", "n": [1, 2.5, None]}, make_task(task_id="t-9"))

    body = json.loads(outcome.encode("w"))

    assert body == {
        "taskId": "t-9",
        "workflowInstanceId": "wf-1",
        "workerId": "w",
        "status": COMPLETED,
        "outputData": {"greeting": "héllo", "n": [1, 2.5, None]},
    }


def test_encode_of_an_in_progress_result_with_logs() -> None:
    def worker() -> TaskResult:
        task_context().add_log("halfway")
        return in_progress(callback_after_seconds=30, output={"half": True})

    body = json.loads(run(worker).encode(WORKER_ID))

    assert body["status"] == IN_PROGRESS
    assert body["callbackAfterSeconds"] == 30
    assert body["outputData"] == {"half": True}
    assert [entry["log"] for entry in body["logs"]] == ["halfway"]
    assert "reasonForIncompletion" not in body


def test_encode_of_an_exception_outcome() -> None:
    outcome = run(sync_raise, make_task({"message": "m" * 2000}))

    body = json.loads(outcome.encode(WORKER_ID))

    assert body["status"] == FAILED
    assert body["reasonForIncompletion"] == "m" * MAX_REASON_CHARS
    assert "Traceback" in body["logs"][-1]["log"]


# A file name read from a non-UTF-8 directory: os.fsdecode() keeps the byte as a lone surrogate.


def sync_cannot_open() -> None:
    raise FileNotFoundError(f"cannot open {UNDECODABLE_NAME}")


async def async_cannot_open() -> None:
    await asyncio.sleep(0)
    raise FileNotFoundError(f"cannot open {UNDECODABLE_NAME}")


@pytest.mark.parametrize("fn", [sync_cannot_open, async_cannot_open], ids=["sync", "async"])
def test_a_lone_surrogate_in_the_reason_is_escaped_so_the_result_encodes(
    fn: Callable[..., Any],
) -> None:
    outcome = run(fn)

    body = json.loads(outcome.encode(WORKER_ID).decode("utf-8"))  # strict UTF-8

    assert body["status"] == FAILED
    assert body["reasonForIncompletion"] == "cannot open report-\\udcff.csv"
    assert "FileNotFoundError: cannot open report-\\udcff.csv" in body["logs"][-1]["log"]
    assert body["outputData"] == {}


def test_a_lone_surrogate_in_a_log_line_is_escaped_so_the_result_encodes() -> None:
    def worker() -> dict[str, bool]:
        task_context().add_log(f"processing {UNDECODABLE_NAME}")
        task_context().add_log("done ✓")  # ordinary non-ASCII text stays as it is
        return {"ok": True}

    body = json.loads(run(worker).encode(WORKER_ID).decode("utf-8"))

    assert body["status"] == COMPLETED
    assert [entry["log"] for entry in body["logs"]] == [
        "processing report-\\udcff.csv",
        "done ✓",
    ]
    assert body["outputData"] == {"ok": True}


def test_a_lone_surrogate_in_a_returned_reason_is_escaped() -> None:
    def worker(task: Task) -> TaskResult:
        return new_task_result(task, TaskResultStatus.FAILED, reason=f"bad {UNDECODABLE_NAME}")

    body = json.loads(run(worker).encode(WORKER_ID).decode("utf-8"))

    assert body["status"] == FAILED
    assert body["reasonForIncompletion"] == "bad report-\\udcff.csv"


def test_a_lone_surrogate_in_the_output_still_fails_with_its_json_path() -> None:
    outcome = run(lambda: {"files": [UNDECODABLE_NAME]})

    body = json.loads(outcome.encode(WORKER_ID).decode("utf-8"))

    assert body["status"] == TERMINAL
    assert body["reasonForIncompletion"].startswith("$.files[0]: ")


@pytest.mark.parametrize("fn", [sync_unprintable, async_unprintable], ids=["sync", "async"])
def test_an_exception_that_cannot_be_printed_still_fails_the_task(fn: Callable[..., Any]) -> None:
    outcome = run(fn, make_task({"n": 1}))

    assert outcome.status == FAILED
    assert outcome.reason == "Unprintable"  # the type name stands in for the message
    assert outcome.error_kind == "exception"
    [text] = traceback_logs(outcome)
    assert fn.__name__ in text  # the user's frame ...
    assert "exception_message" not in text  # ... and none of ours from formatting the reason
    body = json.loads(outcome.encode(WORKER_ID))
    assert body["reasonForIncompletion"] == "Unprintable"


def test_a_traceback_that_cannot_be_formatted_is_replaced_by_a_note(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*args: Any, **kwargs: Any) -> list[str]:
        raise RecursionError("too deep")

    monkeypatch.setattr(traceback, "format_exception", broken)

    outcome = run(sync_raise, make_task({"message": "database is down"}))

    assert outcome.status == FAILED
    assert outcome.reason == "database is down"
    assert outcome.logs[-1]["log"] == (
        "ValueError: database is down\n(the traceback could not be formatted: RecursionError)\n"
    )


def test_exception_helpers_never_raise() -> None:
    error = Unprintable()

    assert exception_message(error) == "Unprintable"
    assert exception_repr(error) == "Unprintable"
    assert exception_message(Oops()) == "Oops"
    assert exception_repr(SystemExit(3)) == "SystemExit(3)"


# -- the task context ---------------------------------------------------------------------------


def describe_context() -> dict[str, Any]:
    context = task_context()
    return {
        "task": context.task_id,
        "workflow": context.workflow_instance_id,
        "worker": context.worker_id,
        "polls": context.poll_count,
        "retries": context.retry_count,
    }


async def async_describe_context() -> dict[str, Any]:
    await asyncio.sleep(0)
    return describe_context()


@pytest.mark.parametrize("fn", [describe_context, async_describe_context], ids=["sync", "async"])
def test_task_context_gives_the_running_task(fn: Callable[..., Any]) -> None:
    task = make_task(task_id="t-ctx", workflow_id="wf-ctx", poll_count=3, retry_count=2)

    assert output_of(run(fn, task)) == {
        "task": "t-ctx",
        "workflow": "wf-ctx",
        "worker": WORKER_ID,
        "polls": 3,
        "retries": 2,
    }


def test_task_context_defaults_for_missing_task_fields() -> None:
    context = TaskContext(Task(), "w")

    assert (context.task_id, context.workflow_instance_id) == ("", "")
    assert (context.poll_count, context.retry_count) == (0, 0)


def test_concurrent_coroutines_each_see_their_own_task() -> None:
    async def worker(delay: float) -> dict[str, str]:
        before = task_context().task_id
        for _ in range(3):
            await asyncio.sleep(delay)  # interleave with the other coroutines
        task_context().add_log(f"log of {before}")
        return {"before": before, "after": task_context().task_id}

    function = WorkerFunction(worker)
    count = 50
    contexts = [
        TaskContext(make_task({"delay": (i % 5) / 1000}, task_id=f"t-{i}"), WORKER_ID)
        for i in range(count)
    ]

    async def main() -> list[Outcome]:
        return await asyncio.gather(*(execute_async(function, c) for c in contexts))

    outcomes = asyncio.run(main())

    for i, outcome in enumerate(outcomes):
        assert outcome.task.task_id == f"t-{i}"
        assert output_of(outcome) == {"before": f"t-{i}", "after": f"t-{i}"}
        assert [entry["log"] for entry in outcome.logs] == [f"log of t-{i}"]
        assert outcome.logs[0]["taskId"] == f"t-{i}"


def test_concurrent_threads_each_see_their_own_task() -> None:
    count = 8
    barrier = threading.Barrier(count, timeout=5)

    def worker() -> dict[str, str]:
        before = task_context().task_id
        barrier.wait()  # every thread is inside its task at the same time
        return {"before": before, "after": task_context().task_id}

    function = WorkerFunction(worker)
    contexts = [TaskContext(make_task(task_id=f"t-{i}"), WORKER_ID) for i in range(count)]
    with ThreadPoolExecutor(count) as executor:
        outcomes = list(executor.map(lambda c: execute_sync(function, c), contexts))

    for i, outcome in enumerate(outcomes):
        assert output_of(outcome) == {"before": f"t-{i}", "after": f"t-{i}"}


def test_task_context_outside_a_task_raises() -> None:
    with pytest.raises(NoTaskContextError, match="only available while a worker function runs"):
        task_context()
    assert issubclass(NoTaskContextError, LookupError)
    assert issubclass(NoTaskContextError, ConductorWorkerError)


def test_task_context_is_cleared_after_a_sync_execution() -> None:
    assert run(describe_context).status == COMPLETED
    with pytest.raises(NoTaskContextError):
        task_context()


def test_task_context_is_cleared_after_an_awaited_async_execution() -> None:
    async def main() -> None:
        context = TaskContext(make_task(), WORKER_ID)
        await execute_async(WorkerFunction(async_describe_context), context)
        with pytest.raises(NoTaskContextError):
            task_context()

    asyncio.run(main())


def test_add_log_lines_appear_in_the_outcome() -> None:
    def worker() -> dict[str, int]:
        context = task_context()
        context.add_log("first")
        context.add_log(42)  # type: ignore[arg-type]
        return {"n": 1}

    before_ms = int(time.time() * 1000)
    outcome = run(worker, make_task(task_id="t-logs"))
    after_ms = int(time.time() * 1000)

    assert [entry["log"] for entry in outcome.logs] == ["first", "42"]
    assert {entry["taskId"] for entry in outcome.logs} == {"t-logs"}
    assert all(before_ms <= entry["createdTime"] <= after_ms for entry in outcome.logs)
    assert json.loads(outcome.encode("w"))["logs"] == outcome.logs


def test_add_log_lines_come_before_the_traceback_of_a_failure() -> None:
    def worker() -> None:
        task_context().add_log("about to fail")
        raise RuntimeError("failed")

    outcome = run(worker)

    assert outcome.logs[0]["log"] == "about to fail"
    assert "RuntimeError: failed" in outcome.logs[1]["log"]
    assert len(outcome.logs) == 2


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_heartbeat_calls_the_callback(is_async: bool) -> None:
    beats: list[str] = []

    def sync_worker() -> None:
        task_context().heartbeat()
        task_context().heartbeat()

    async def async_worker() -> None:
        task_context().heartbeat()
        task_context().heartbeat()

    outcome = run(async_worker if is_async else sync_worker, heartbeat=lambda: beats.append("b"))

    assert outcome.status == COMPLETED
    assert beats == ["b", "b"]


def test_heartbeat_without_a_callback_does_nothing() -> None:
    TaskContext(make_task(), WORKER_ID).heartbeat()


# -- building results ---------------------------------------------------------------------------


def test_in_progress_builds_a_result_for_the_running_task() -> None:
    results: list[TaskResult] = []

    def worker() -> TaskResult:
        result = in_progress(60, {"stage": "upload"})
        results.append(result)
        return result

    run(worker, make_task(task_id="t-long", workflow_id="wf-long"))

    [result] = results
    assert result.task_id == "t-long"
    assert result.workflow_instance_id == "wf-long"
    assert result.status == TaskResultStatus.IN_PROGRESS
    assert result.callback_after_seconds == 60
    assert result.output_data == {"stage": "upload"}


def test_in_progress_outside_a_task_raises() -> None:
    with pytest.raises(NoTaskContextError):
        in_progress(10)


def test_new_task_result_defaults() -> None:
    result = new_task_result(make_task(task_id="t-1", workflow_id="wf-1"))

    assert result.task_id == "t-1"
    assert result.workflow_instance_id == "wf-1"
    assert result.status == TaskResultStatus.COMPLETED
    assert result.output_data == {}
    assert result.reason_for_incompletion is None
    assert result.callback_after_seconds is None


def test_new_task_result_with_every_field_and_a_string_status() -> None:
    output = {"a": 1}

    result = new_task_result(
        make_task(), "FAILED_WITH_TERMINAL_ERROR", output, reason="bad", callback_after_seconds=5
    )
    output["a"] = 2  # the result holds its own copy

    assert result.status == TaskResultStatus.FAILED_WITH_TERMINAL_ERROR
    assert result.output_data == {"a": 1}
    assert result.reason_for_incompletion == "bad"
    assert result.callback_after_seconds == 5
