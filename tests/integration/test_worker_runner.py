"""TaskRunner against a real Conductor server: what a user sees on the server.

Every test registers its own task and workflow definitions (unique names), runs workers on a
TaskRunner with its own metrics registry, and asserts on the server's record: workflow status
and output, task status, reasonForIncompletion, logs and pollCount.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pydantic
import pytest
from prometheus_client import CollectorRegistry

from conductor_client.exceptions import NotFoundException
from conductor_client.models import TaskStatus, Workflow, WorkflowStatus
from conductor_worker import (
    ConductorClient,
    NonRetryableError,
    RunnerState,
    Task,
    TaskExecutor,
    TaskResult,
    TaskResultStatus,
    TaskRunner,
    in_progress,
    new_task_result,
    task_context,
)

# The fixtures' helper and the server facts (tests/integration/conftest.py); typed loosely here
# because a test module does not import its conftest.
Conductor = Any
ServerFacts = Any

POLL_INTERVAL = 0.1


def only_task(workflow: Workflow) -> Task:
    tasks = workflow.tasks or []
    assert len(tasks) == 1, [(t.reference_task_name, t.status) for t in tasks]
    return tasks[0]


def sample(registry: CollectorRegistry, name: str, task_type: str) -> float:
    value = registry.get_sample_value(name, {"taskType": task_type})
    return 0.0 if value is None else value


def hold_for(seconds: float, check: Callable[[], None]) -> None:
    """Run `check` repeatedly for `seconds`: for asserting that something does NOT happen."""
    deadline = time.monotonic() + seconds
    while True:
        check()
        if time.monotonic() >= deadline:
            return
        time.sleep(0.2)


# -- 1. inputs bound by name, outputs serialized ------------------------------------------------


@dataclass
class Invoice:
    customer: str
    total: int
    lines: list[str]


class Receipt(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(populate_by_name=True)

    invoice_for: str = pydantic.Field(alias="invoiceFor")
    paid: bool
    amount: Decimal


def add(a: int, b: int) -> dict[str, int]:
    return {"sum": a + b}  # a arrives as the string "2": only a converted int adds up


async def make_invoice(customer: str, total: int) -> Invoice:
    await asyncio.sleep(0)
    return Invoice(customer=customer, total=total * 10, lines=[f"{customer}:{total}"])


def pay(invoice: Invoice) -> Receipt:
    return Receipt(invoice_for=invoice.customer, paid=True, amount=Decimal(invoice.total) / 4)


async def summarize(paid: bool, amount: Decimal) -> str:
    return f"{'paid' if paid else 'unpaid'} {amount}"


@pytest.mark.compat
def test_sync_and_async_workers_run_a_workflow_with_converted_inputs_and_outputs(
    conductor: Conductor, runner: TaskRunner
) -> None:
    types = {name: conductor.task_def(name) for name in ("add", "invoice", "pay", "summary")}
    workflow_name = conductor.workflow_def(
        [
            conductor.simple_task(
                types["add"], "add", {"a": "${workflow.input.a}", "b": "${workflow.input.b}"}
            ),
            conductor.simple_task(
                types["invoice"],
                "invoice",
                {"customer": "${workflow.input.customer}", "total": "${add.output.sum}"},
            ),
            conductor.simple_task(types["pay"], "pay", {"invoice": "${invoice.output}"}),
            conductor.simple_task(
                types["summary"],
                "summary",
                {"paid": "${pay.output.paid}", "amount": "${pay.output.amount}"},
            ),
        ],
        output_parameters={
            "sum": "${add.output.sum}",
            "invoice": "${invoice.output}",
            "receipt": "${pay.output}",
            "summary": "${summary.output.result}",
        },
    )
    for name, fn in (
        ("add", add),
        ("invoice", make_invoice),
        ("pay", pay),
        ("summary", summarize),
    ):
        runner.start_worker(types[name], fn, poll_interval=POLL_INTERVAL)

    workflow_ids = [
        conductor.start(workflow_name, {"a": "2", "b": 3, "customer": "ACME"}),
        conductor.start(workflow_name, {"a": 10, "b": "-4", "customer": "Initech"}),
    ]
    first, second = conductor.wait_for_workflows(workflow_ids)

    assert first.status is WorkflowStatus.COMPLETED, first.reason_for_incompletion
    assert first.output == {
        "sum": 5,
        "invoice": {"customer": "ACME", "total": 50, "lines": ["ACME:5"]},  # a dataclass
        "receipt": {"invoiceFor": "ACME", "paid": True, "amount": "12.5"},  # pydantic, by alias
        "summary": "paid 12.5",
    }
    by_ref = {t.reference_task_name: t for t in first.tasks or []}
    assert by_ref["summary"].output_data == {"result": "paid 12.5"}  # a str lands under "result"
    assert all(t.status is TaskStatus.COMPLETED for t in by_ref.values())

    assert second.status is WorkflowStatus.COMPLETED, second.reason_for_incompletion
    assert second.output is not None
    assert second.output["sum"] == 6
    assert second.output["summary"] == "paid 15"


# -- 2. IN_PROGRESS with a callback ------------------------------------------------------------


@pytest.mark.compat
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_in_progress_task_is_polled_again_after_its_callback_then_completes(
    kind: str, conductor: Conductor, runner: TaskRunner
) -> None:
    task_type = conductor.task_def(f"callback_{kind}")
    workflow_name = conductor.workflow_def(
        [conductor.simple_task(task_type, "step", {"target": "${workflow.input.target}"})]
    )
    runs: list[tuple[int, float]] = []  # (task_context().poll_count, when)

    def sync_worker(target: int) -> Any:
        polls = task_context().poll_count
        runs.append((polls, time.monotonic()))
        if polls < target:
            return in_progress(callback_after_seconds=1, output={"polls": polls})
        return {"polls": polls, "done": True}

    async def async_worker(task: Task) -> TaskResult:
        polls = task.poll_count or 0
        runs.append((polls, time.monotonic()))
        if polls < int((task.input_data or {})["target"]):
            return new_task_result(
                task, TaskResultStatus.IN_PROGRESS, {"polls": polls}, callback_after_seconds=1
            )
        return new_task_result(task, TaskResultStatus.COMPLETED, {"polls": polls, "done": True})

    worker = sync_worker if kind == "sync" else async_worker
    runner.start_worker(task_type, worker, poll_interval=POLL_INTERVAL)
    workflow = conductor.wait_for_workflow(conductor.start(workflow_name, {"target": 2}))

    assert workflow.status is WorkflowStatus.COMPLETED, workflow.reason_for_incompletion
    task = only_task(workflow)  # the same task came back, no new attempt was scheduled
    assert task.status is TaskStatus.COMPLETED
    assert (task.poll_count or 0) >= 2
    assert task.output_data == {"polls": 2, "done": True}
    assert [polls for polls, _ in runs] == [1, 2]
    assert runs[1][1] - runs[0][1] >= 0.9, "polled again before its callback"


# -- 3. an exception fails the task; the server's retry succeeds -------------------------------


@pytest.mark.compat
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_exception_fails_the_attempt_with_traceback_and_the_retry_succeeds(
    kind: str,
    conductor: Conductor,
    runner: TaskRunner,
    client: ConductorClient,
    facts: ServerFacts | None,
) -> None:
    task_type = conductor.task_def(f"flaky_{kind}", retry_count=1, retry_delay_seconds=0)
    workflow_name = conductor.workflow_def(
        [conductor.simple_task(task_type, "flaky", {"order": "${workflow.input.order}"})],
        output_parameters={"result": "${flaky.output}"},
    )

    def attempt(order: str) -> dict[str, Any]:
        context = task_context()
        context.add_log(f"attempt {context.retry_count} for {order}")
        if context.retry_count == 0:
            raise RuntimeError(f"inventory service unavailable for {order}")
        return {"order": order, "attempt": context.retry_count}

    def flaky_sync(order: str) -> dict[str, Any]:
        return attempt(order)

    async def flaky_async(order: str) -> dict[str, Any]:
        await asyncio.sleep(0)
        return attempt(order)

    runner.start_worker(
        task_type, flaky_sync if kind == "sync" else flaky_async, poll_interval=POLL_INTERVAL
    )
    workflow = conductor.wait_for_workflow(conductor.start(workflow_name, {"order": "o-17"}))

    assert workflow.status is WorkflowStatus.COMPLETED, workflow.reason_for_incompletion
    assert workflow.output == {"result": {"order": "o-17", "attempt": 1}}
    failed, retried = workflow.tasks or []
    assert failed.status is TaskStatus.FAILED
    assert failed.reason_for_incompletion == "inventory service unavailable for o-17"
    assert retried.status is TaskStatus.COMPLETED
    assert retried.retry_count == 1
    assert retried.output_data == {"order": "o-17", "attempt": 1}

    if facts is not None and not facts.keeps_task_logs:
        return  # sent with each result, but this server's store drops task logs
    failed_logs = [entry.log or "" for entry in client.tasks.get_task_logs(failed.task_id or "")]
    assert "attempt 0 for o-17" in failed_logs
    traceback = next(text for text in failed_logs if text.startswith("Traceback"))
    assert f"flaky_{kind}" in traceback
    assert "RuntimeError: inventory service unavailable for o-17" in traceback
    retried_logs = [entry.log for entry in client.tasks.get_task_logs(retried.task_id or "")]
    assert retried_logs == ["attempt 1 for o-17"]


# -- 4. terminal failures: no retry whatever the task definition allows -----------------------


def refuse(card: str) -> dict[str, str]:
    raise NonRetryableError(f"card {card} declined")


def count_items(count: int) -> dict[str, int]:
    return {"count": count}


async def nan_output() -> dict[str, float]:
    return {"ratio": float("nan")}


def object_output() -> dict[str, Any]:
    return {"items": [1, object()]}


@pytest.mark.compat
@pytest.mark.parametrize(
    ("fn", "inputs", "reason"),
    [
        pytest.param(refuse, {"card": "4111"}, "card 4111 declined", id="non_retryable"),
        pytest.param(count_items, {}, "missing required input 'count'", id="missing_input"),
        pytest.param(count_items, {"count": "abc"}, "invalid input 'count'", id="not_an_int"),
        pytest.param(nan_output, {}, "$.ratio: float NaN is not valid JSON", id="nan_output"),
        pytest.param(
            object_output,
            {},
            "$.items[1]: cannot serialize object of type object",
            id="object_output",
        ),
    ],
)
def test_terminal_failures_are_not_retried(
    fn: Callable[..., Any],
    inputs: dict[str, Any],
    reason: str,
    conductor: Conductor,
    runner: TaskRunner,
) -> None:
    task_type = conductor.task_def("terminal", retry_count=2, retry_delay_seconds=0)
    workflow_name = conductor.workflow_def(
        [conductor.simple_task(task_type, "step", {k: f"${{workflow.input.{k}}}" for k in inputs})]
    )
    runner.start_worker(task_type, fn, poll_interval=POLL_INTERVAL)
    workflow = conductor.wait_for_workflow(conductor.start(workflow_name, inputs))

    assert workflow.status is WorkflowStatus.FAILED
    task = only_task(workflow)  # retryCount=2, yet no second attempt
    assert task.status is TaskStatus.FAILED_WITH_TERMINAL_ERROR
    assert task.reason_for_incompletion is not None
    if fn is refuse:
        assert task.reason_for_incompletion == reason
    else:
        assert reason in task.reason_for_incompletion
    if inputs.get("count") == "abc":
        assert "'abc'" in task.reason_for_incompletion


# -- 5. TaskExecutor: finishing parked tasks from outside a worker -----------------------------


@pytest.mark.compat
def test_task_executor_completes_parked_tasks_by_id_and_by_reference_name(
    conductor: Conductor, runner: TaskRunner, client: ConductorClient
) -> None:
    task_type = conductor.task_def("approval")
    workflow_name = conductor.workflow_def(
        [conductor.simple_task(task_type, "approval", {"request": "${workflow.input.request}"})],
        output_parameters={"decision": "${approval.output}"},
    )

    def park(request: str) -> TaskResult:
        return in_progress(callback_after_seconds=3600, output={"request": request})

    runner.start_worker(task_type, park, poll_interval=POLL_INTERVAL)
    by_id, by_ref = conductor.start_many(workflow_name, 2, {"request": "r-1"})
    parked = [
        conductor.wait_for_task(
            workflow_id,
            lambda t: t.callback_after_seconds == 3600,
            what="parked by the worker with a 3600 s callback",
        )
        for workflow_id in (by_id, by_ref)
    ]
    assert all(t.output_data == {"request": "r-1"} for t in parked)

    executor = TaskExecutor(client, worker_id="approver")
    task_id = parked[0].task_id or ""
    updated = executor.update_task(
        task_id, by_id, TaskResultStatus.COMPLETED, {"approved": True, "by": "alice"}
    )
    assert updated == task_id
    updated_by_ref = executor.update_task_by_ref_name(
        "approval", by_ref, TaskResultStatus.COMPLETED, "rejected"
    )
    assert updated_by_ref == parked[1].task_id

    first, second = conductor.wait_for_workflows([by_id, by_ref])
    assert first.status is WorkflowStatus.COMPLETED
    assert first.output == {"decision": {"approved": True, "by": "alice"}}
    assert second.status is WorkflowStatus.COMPLETED
    # By reference name the server merges the given output into what the task had; by id
    # (above) it replaces it.
    assert second.output == {"decision": {"request": "r-1", "result": "rejected"}}

    task = executor.get_task(task_id)
    assert task.status is TaskStatus.COMPLETED
    assert task.output_data == {"approved": True, "by": "alice"}
    assert task.poll_count == 1  # the worker saw it once; the executor finished it

    # Nothing left to update: no pending task by that name, no task by that id.
    assert executor.update_task_by_ref_name("approval", by_ref, "COMPLETED", {"late": 1}) is None
    with pytest.raises(NotFoundException):
        executor.get_task(f"no-such-task-{task_id}")


# -- 6. lease extension ------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_lease_extension_keeps_a_long_task_alive_past_its_response_timeout(
    conductor: Conductor, runner: TaskRunner
) -> None:
    # responseTimeoutSeconds=3 and a 7 s execution: only heartbeats keep the task alive.
    leased_sync = conductor.task_def("leased_sync", response_timeout_seconds=3)
    leased_async = conductor.task_def("leased_async", response_timeout_seconds=3)
    unleased = conductor.task_def("unleased", response_timeout_seconds=3)
    workflows = {t: conductor.workflow_def([t]) for t in (leased_sync, leased_async, unleased)}
    stop = threading.Event()

    def slow_sync() -> dict[str, str]:
        time.sleep(7)
        return {"finished": "sync"}

    async def slow_async() -> dict[str, str]:
        await asyncio.sleep(7)
        return {"finished": "async"}

    def slow_unleased() -> dict[str, str]:
        stop.wait(30)  # returns once the test is over: the server's timeout must come first
        return {"finished": "too late"}

    runner.start_worker(leased_sync, slow_sync, poll_interval=POLL_INTERVAL)
    runner.start_worker(leased_async, slow_async, poll_interval=POLL_INTERVAL)
    runner.start_worker(unleased, slow_unleased, poll_interval=POLL_INTERVAL, lease_extension=False)
    ids = [conductor.start(workflows[t]) for t in (leased_sync, leased_async, unleased)]
    try:
        done_sync, done_async, control = conductor.wait_for_workflows(ids, timeout=40)
    finally:
        stop.set()

    for workflow, expected in ((done_sync, "sync"), (done_async, "async")):
        assert workflow.status is WorkflowStatus.COMPLETED, workflow.reason_for_incompletion
        task = only_task(workflow)  # not timed out and retried
        assert task.status is TaskStatus.COMPLETED
        assert task.output_data == {"finished": expected}
        assert (task.end_time or 0) - (task.start_time or 0) >= 6_000

    # The control: without lease extension the server times the same execution out.
    assert control.status in (WorkflowStatus.TIMED_OUT, WorkflowStatus.FAILED)
    task = only_task(control)
    assert task.status is TaskStatus.TIMED_OUT
    assert "responseTimeout" in (task.reason_for_incompletion or "")


# -- 7. shutdown drains running tasks ----------------------------------------------------------


@pytest.mark.timeout(90)
def test_shutdown_finishes_running_tasks_and_delivers_their_results(
    conductor: Conductor, runner: TaskRunner, registry: CollectorRegistry
) -> None:
    per_type = 8
    sync_type = conductor.task_def("drain_sync")
    async_type = conductor.task_def("drain_async")
    sync_workflow = conductor.workflow_def(
        [conductor.simple_task(sync_type, "work", {"i": "${workflow.input.i}"})]
    )
    async_workflow = conductor.workflow_def(
        [conductor.simple_task(async_type, "work", {"i": "${workflow.input.i}"})]
    )
    ids = [conductor.start(sync_workflow, {"i": i}) for i in range(per_type)]
    ids += [conductor.start(async_workflow, {"i": i}) for i in range(per_type)]

    # Every task waits until all are running, so shutdown surely finds them all in flight.
    lock = threading.Lock()
    running_ids: set[str] = set()
    all_running = threading.Event()

    def arrived() -> None:
        with lock:
            running_ids.add(task_context().task_id)
            if len(running_ids) == 2 * per_type:
                all_running.set()

    def sync_work(i: int) -> dict[str, Any]:
        arrived()
        all_running.wait(20)
        time.sleep(2)
        return {"i": i, "kind": "sync"}

    async def async_work(i: int) -> dict[str, Any]:
        arrived()
        await asyncio.to_thread(all_running.wait, 20)
        await asyncio.sleep(2)
        return {"i": i, "kind": "async"}

    runner.start_worker(sync_type, sync_work, batch_size=per_type, poll_interval=POLL_INTERVAL)
    runner.start_worker(async_type, async_work, batch_size=per_type, poll_interval=POLL_INTERVAL)
    conductor.wait_until(
        all_running.is_set,
        timeout=30,
        message=lambda: f"only {len(running_ids)} of {2 * per_type} tasks started",
    )
    assert sample(registry, "task_in_flight", sync_type) == per_type
    assert sample(registry, "task_in_flight", async_type) == per_type

    started = time.monotonic()
    assert runner.shutdown(timeout=20) is True
    assert time.monotonic() - started < 20
    assert runner.state is RunnerState.STOPPED
    assert sample(registry, "task_in_flight", sync_type) == 0
    assert sample(registry, "task_in_flight", async_type) == 0

    workflows = conductor.wait_for_workflows(ids, timeout=20)
    assert [w.status for w in workflows] == [WorkflowStatus.COMPLETED] * len(ids)
    assert [only_task(w).output_data for w in workflows] == [
        {"i": i, "kind": kind} for kind in ("sync", "async") for i in range(per_type)
    ]
    assert {only_task(w).task_id for w in workflows} == running_ids


# -- 8. pause / resume / batch size at run time ------------------------------------------------


def test_paused_task_type_picks_up_nothing_until_resumed(
    conductor: Conductor, runner: TaskRunner, registry: CollectorRegistry
) -> None:
    task_type = conductor.task_def("pausable")
    workflow_name = conductor.workflow_def(
        [conductor.simple_task(task_type, "step", {"n": "${workflow.input.n}"})]
    )

    def echo(n: int) -> dict[str, int]:
        return {"n": n}

    runner.start_worker(task_type, echo, poll_interval=POLL_INTERVAL, poll_timeout=0.5)
    warm_up = conductor.wait_for_workflow(conductor.start(workflow_name, {"n": 0}))
    assert warm_up.status is WorkflowStatus.COMPLETED

    runner.pause(task_type)
    assert sample(registry, "task_paused", task_type) == 1

    # pause() cannot recall a long poll already sent: wait until no poll has been open for a
    # while (polls made == polls answered), which an unpaused loop never allows for long.
    quiet_since: list[float] = []

    def polling_stopped() -> bool:
        made = sample(registry, "task_poll_counter_total", task_type)
        answered = sample(registry, "task_poll_time_count", task_type)
        if made != answered:
            quiet_since.clear()
            return False
        quiet_since[:] = quiet_since or [time.monotonic()]
        return time.monotonic() - quiet_since[0] >= 0.6

    conductor.wait_until(polling_stopped, timeout=10, message="still polling after pause()")

    ids = [conductor.start(workflow_name, {"n": n}) for n in (1, 2)]

    def nothing_picked_up() -> None:
        assert conductor.queue_size(task_type) == 2
        for workflow_id in ids:
            workflow = conductor.get(workflow_id)
            assert workflow.status is WorkflowStatus.RUNNING
            task = only_task(workflow)
            assert task.status is TaskStatus.SCHEDULED
            assert not task.poll_count

    hold_for(2.0, nothing_picked_up)

    runner.resume(task_type)
    assert sample(registry, "task_paused", task_type) == 0
    workflows = conductor.wait_for_workflows(ids, timeout=15)
    assert [w.status for w in workflows] == [WorkflowStatus.COMPLETED] * 2
    assert [only_task(w).output_data for w in workflows] == [{"n": 1}, {"n": 2}]


def test_set_batch_size_at_run_time_changes_concurrency(
    conductor: Conductor, runner: TaskRunner, registry: CollectorRegistry
) -> None:
    task_type = conductor.task_def("resizable")
    workflow_name = conductor.workflow_def(
        [conductor.simple_task(task_type, "step", {"n": "${workflow.input.n}"})]
    )
    release = threading.Event()
    lock = threading.Lock()
    running = 0
    peak = 0

    def gated(n: int) -> dict[str, int]:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        try:
            release.wait(30)
        finally:
            with lock:
                running -= 1
        return {"n": n}

    runner.start_worker(task_type, gated, batch_size=1, poll_interval=POLL_INTERVAL)
    ids = [conductor.start(workflow_name, {"n": n}) for n in range(3)]
    try:
        conductor.wait_until(lambda: running == 1, timeout=15, message="no task started")

        def one_at_a_time() -> None:
            assert running == 1
            assert conductor.queue_size(task_type) == 2

        hold_for(1.0, one_at_a_time)

        runner.set_batch_size(task_type, 3)
        conductor.wait_until(
            lambda: running == 3,
            timeout=15,
            message=lambda: f"{running} running after set_batch_size(3)",
        )
        assert sample(registry, "task_in_flight", task_type) == 3
        assert conductor.queue_size(task_type) == 0
    finally:
        release.set()

    workflows = conductor.wait_for_workflows(ids, timeout=15)
    assert [w.status for w in workflows] == [WorkflowStatus.COMPLETED] * 3
    assert [only_task(w).output_data for w in workflows] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert peak == 3
