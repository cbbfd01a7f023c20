"""Network faults between the worker and the real server: latency, resets, a black hole, 5xx.

A FaultProxy (tests/fakes/proxy.py) on 127.0.0.1 sits between a TaskRunner and the session's
real Conductor server. Each test registers its own definitions (two SIMPLE tasks, one run by a
sync worker and one by an async worker; retryCount 3, retryDelaySeconds 0, responseTimeout
10 s), starts 20 workflows, and runs the runner through the proxy with short timeouts (2 s read,
1 s connect) and a quick RetryPolicy while the proxy misbehaves. Then, from the server's own
records, read directly (never through the proxy):

* every workflow COMPLETED;
* no result lost: for every task the last attempt is COMPLETED and carries the output our
  worker made for that very attempt; earlier attempts ended FAILED or TIMED_OUT and were
  retried by the server within retryCount (tests/reliability/attempts.py has the details);
* the runner's on_undelivered hook was never called and its shutdown was clean;
* the faults really happened: the proxy's counters, and the runner's poll/update error metrics.

Allowed, because delivery is at-least-once: a lost answer after the server acted (a reset
mid-answer, a black-holed answer) makes the runner send a result again, which the server
ignores, or loses the tasks a poll or update-v2 answer was carrying: the server times those
attempts out after responseTimeoutSeconds and retries them (counted as "retried" below). Not
allowed: a task whose last attempt is not COMPLETED.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pytest
from prometheus_client import CollectorRegistry

from conductor_client.models import TaskStatus, Workflow, WorkflowStatus
from conductor_worker import (
    ConductorClient,
    HttpSettings,
    PendingResult,
    RetryPolicy,
    Task,
    TaskRunner,
)
from tests.fakes.proxy import FaultProxy, ProxyCounters
from tests.integration.conftest import Conductor, describe_workflow
from tests.reliability.attempts import AttemptCounts, audit_attempts
from tests.reliability.two_task_workflow import two_task_workflow

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

WORKFLOWS = 20
RETRY_COUNT = 3
RESPONSE_TIMEOUT_SECONDS = 10
TASK_SECONDS = 0.2
BATCH_SIZE = 4
POLL_INTERVAL_SECONDS = 0.1
POLL_TIMEOUT_SECONDS = 1.0  # a poll's read timeout is then 2 + 1 s
# A task whose poll answer is lost stays IN_PROGRESS until the server re-examines its
# workflow, times the task out (responseTimeoutSeconds) and schedules a retry. The 3.32.3
# server re-examines a running workflow 30 s after it started (workflowOffsetTimeout) and
# then only when its SQLite decider-queue message is redelivered: popped messages come back
# after 60 s, checked every 60 s. So a lost task is retried 30 to ~130 s later, and a task lost
# twice (its retry's answer lost too: it happens) up to ~260 s later.
COMPLETE_TIMEOUT_SECONDS = 300.0
BLACK_HOLE_SECONDS = 3.0
RETRY_POLICY = RetryPolicy(max_attempts=20, initial_delay_seconds=0.1, max_delay_seconds=1.0)


@pytest.fixture
def proxy(conductor_url: str) -> Iterator[FaultProxy]:
    """A FaultProxy in front of the session's server; `proxy.url_for(api_path)` for clients."""
    parts = urlsplit(conductor_url)
    assert parts.hostname is not None, conductor_url
    assert parts.port is not None, conductor_url
    with FaultProxy(parts.hostname, parts.port) as fault_proxy:
        yield fault_proxy


@dataclass
class Run:
    """What one run through the proxy left behind."""

    task_types: tuple[str, str]
    workflows: list[Workflow]
    seconds: float
    counters: ProxyCounters
    registry: CollectorRegistry
    executed: dict[str, dict[str, Any]]  # task id -> the output our worker made for it
    undelivered: list[tuple[str, str]]  # (task id, last error) handed to on_undelivered
    clean_shutdown: bool
    counts: AttemptCounts = field(default_factory=AttemptCounts)

    def metric(self, name: str, **labels: str) -> float:
        """The sum of a metric's samples over both task types (and any other labels)."""
        return sum(
            sample.value
            for family in self.registry.collect()
            for sample in family.samples
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
        )

    @property
    def poll_errors(self) -> float:
        return self.metric("task_poll_error_total")

    @property
    def update_errors(self) -> float:
        return self.metric("task_update_error_total")

    def summary(self, fault: str) -> str:
        return (
            f"\n{fault}: {len(self.workflows)} workflows COMPLETED in {self.seconds:.1f}s; "
            f"{self.counts}; "
            f"poll errors {self.poll_errors:.0f}, update errors {self.update_errors:.0f}; "
            f"0 results lost\n  proxy: {self.counters}"
        )


def run_through_proxy(
    conductor: Conductor,
    proxy: FaultProxy,
    api_path: str,
    *,
    during: Callable[[Callable[[], int]], None] | None = None,
) -> Run:
    """Run WORKFLOWS workflows of two tasks with a runner that talks through `proxy` (whose
    faults the caller has switched on), call `during(finished)` once they are started
    (`finished()`: how many executions our workers have finished so far), wait for every
    workflow on the server directly, then audit the server's records."""
    sync_type, async_type, workflow_name = two_task_workflow(
        conductor,
        "netfault",
        retry_count=RETRY_COUNT,
        response_timeout_seconds=RESPONSE_TIMEOUT_SECONDS,
    )

    lock = threading.Lock()
    executed: dict[str, dict[str, Any]] = {}
    undelivered: list[tuple[str, str]] = []

    def record(task: Task) -> dict[str, Any]:
        output = {"taskId": task.task_id, "workflowId": task.workflow_instance_id}
        with lock:
            executed[task.task_id or ""] = output
        return output

    def sync_worker(task: Task) -> dict[str, Any]:
        time.sleep(TASK_SECONDS)
        return record(task)

    async def async_worker(task: Task) -> dict[str, Any]:
        await asyncio.sleep(TASK_SECONDS)
        return record(task)

    def on_undelivered(item: PendingResult, error: str) -> None:
        with lock:
            undelivered.append((item.task_id, error))

    registry = CollectorRegistry()
    http = HttpSettings(proxy.url_for(api_path), timeout_seconds=2.0, connect_timeout_seconds=1.0)
    began = time.monotonic()
    with ConductorClient(http=http) as proxied:
        runner = TaskRunner(
            proxied,
            registry=registry,
            shutdown_grace_seconds=10.0,
            retry_policy=RETRY_POLICY,
            on_undelivered=on_undelivered,
        )
        try:
            for task_type, worker in ((sync_type, sync_worker), (async_type, async_worker)):
                runner.start_worker(
                    task_type,
                    worker,
                    batch_size=BATCH_SIZE,
                    poll_interval=POLL_INTERVAL_SECONDS,
                    poll_timeout=POLL_TIMEOUT_SECONDS,
                )
            # Started and watched on the server directly: only the worker's traffic is faulty.
            workflow_ids = conductor.start_many(workflow_name, WORKFLOWS)
            if during is not None:
                during(lambda: len(executed))
            try:
                workflows = conductor.wait_for_workflows(
                    workflow_ids, timeout=COMPLETE_TIMEOUT_SECONDS
                )
            except pytest.fail.Exception as failure:
                pytest.fail(f"{failure}\n{stuck_tasks(conductor, workflow_ids, executed, proxy)}")
            seconds = time.monotonic() - began
        finally:
            # Whatever is still on its way (late duplicates) should go out quickly now.
            proxy.clear()
            clean = runner.shutdown(timeout=10.0)

    run = Run(
        task_types=(sync_type, async_type),
        workflows=workflows,
        seconds=seconds,
        counters=proxy.counters(),
        registry=registry,
        executed=dict(executed),
        undelivered=list(undelivered),
        clean_shutdown=clean,
    )
    audit(run)
    return run


def stuck_tasks(
    conductor: Conductor,
    workflow_ids: list[str],
    executed: dict[str, dict[str, Any]],
    proxy: FaultProxy,
) -> str:
    """For a failure message: the unfinished tasks, and whether our worker ever ran them (if
    not, the answer that carried them was lost and only the server's timeout brings them back)."""
    lines = []
    for workflow_id in workflow_ids:
        for task in conductor.get(workflow_id).tasks or []:
            if task.status in (TaskStatus.SCHEDULED, TaskStatus.IN_PROGRESS):
                seen = "run by our worker" if task.task_id in executed else "never run here"
                lines.append(
                    f"  {workflow_id} {task.reference_task_name} {task.task_id} {task.status}"
                    f" (polls={task.poll_count}, last update {task.update_time}): {seen}"
                )
    return "unfinished tasks:\n" + "\n".join(lines) + f"\nproxy: {proxy.counters()}"


def audit(run: Run) -> None:
    """Nothing lost, from the server's own records; counts attempts and retries on `run`."""
    assert run.undelivered == [], run.undelivered
    assert run.clean_shutdown, "the runner left tasks or results behind at shutdown"
    not_completed = [
        describe_workflow(w) for w in run.workflows if w.status is not WorkflowStatus.COMPLETED
    ]
    assert not_completed == [], not_completed
    for wf in run.workflows:
        audit_attempts(wf, run.task_types, run.executed, RETRY_COUNT, run.counts)


def api_path_of(conductor_url: str) -> str:
    return urlsplit(conductor_url).path or "/api"


# -- the faults ------------------------------------------------------------------------------


def black_hole_mid_run(proxy: FaultProxy, seconds: float) -> Callable[[Callable[[], int]], None]:
    """A `during` callback: once a quarter of the tasks are done, swallow all traffic for
    `seconds`."""

    def during(finished: Callable[[], int]) -> None:
        Conductor.wait_until(
            lambda: finished() >= WORKFLOWS // 4,
            timeout=30,
            message=lambda: f"workers finished only {finished()} tasks",
        )
        proxy.black_hole(True)
        time.sleep(seconds)  # the fault's duration, not a wait for a condition
        proxy.black_hole(False)

    return during


def test_latency_each_way(conductor: Conductor, proxy: FaultProxy, conductor_url: str) -> None:
    proxy.latency(0.1, 0.3)
    run = run_through_proxy(conductor, proxy, api_path_of(conductor_url))
    print(run.summary("latency 100-300 ms each way"))
    assert run.counters.delayed_chunks > 0
    # Each successful update took at least a round trip through the delay: 2 x 100 ms.
    updates = run.metric("task_update_time_count")
    assert updates >= 2 * WORKFLOWS
    assert run.metric("task_update_time_sum") / updates >= 0.2


def test_connection_resets(conductor: Conductor, proxy: FaultProxy, conductor_url: str) -> None:
    proxy.reset_fraction(0.2)
    run = run_through_proxy(conductor, proxy, api_path_of(conductor_url))
    print(run.summary("20% of requests: connection reset"))
    counters = run.counters
    assert counters.resets_before_server > 0, counters
    assert counters.resets_mid_answer > 0, counters
    # As with 503s: polls or updates, as chance has it.
    assert run.metric("task_poll_error_total", status="connection") + run.update_errors > 0


def test_black_hole(conductor: Conductor, proxy: FaultProxy, conductor_url: str) -> None:
    run = run_through_proxy(
        conductor,
        proxy,
        api_path_of(conductor_url),
        during=black_hole_mid_run(proxy, BLACK_HOLE_SECONDS),
    )
    print(run.summary(f"black hole for {BLACK_HOLE_SECONDS:g}s mid-run"))
    assert run.counters.black_holed_requests > 0, run.counters
    assert run.metric("task_poll_error_total", status="timeout") > 0
    assert run.update_errors > 0


def test_http_503_answers(conductor: Conductor, proxy: FaultProxy, conductor_url: str) -> None:
    proxy.http_5xx_fraction(0.2)
    run = run_through_proxy(conductor, proxy, api_path_of(conductor_url))
    print(run.summary("20% of requests answered 503 by the proxy"))
    assert run.counters.injected_5xx > 0
    # Which requests the random faults hit is chance (few are polls: update-v2 hands most
    # tasks over), so the runner must have counted them, as poll or as update errors.
    assert run.metric("task_poll_error_total", status="503") + run.update_errors > 0


def test_all_faults_combined(conductor: Conductor, proxy: FaultProxy, conductor_url: str) -> None:
    proxy.latency(0.05, 0.15)
    proxy.reset_fraction(0.1)
    proxy.http_5xx_fraction(0.1)

    run = run_through_proxy(
        conductor,
        proxy,
        api_path_of(conductor_url),
        during=black_hole_mid_run(proxy, BLACK_HOLE_SECONDS / 1.5),
    )
    print(run.summary("latency 50-150 ms + 10% resets + 10% 503 + a 2 s black hole"))
    counters = run.counters
    assert counters.delayed_chunks > 0, counters
    assert counters.resets > 0, counters
    assert counters.injected_5xx > 0, counters
    # The black hole swallowed traffic; with latency on, what it caught may be answers only.
    assert counters.black_holed_requests + counters.black_holed_answers > 0, counters
    assert run.poll_errors > 0
    assert run.update_errors > 0
