"""Fixtures for tests against a real Conductor server.

* ``client``: a ``ConductorClient`` for the session's server, closed after the test.
* ``conductor``: a :class:`Conductor` helper that registers task and workflow definitions under
  unique names, starts workflows and waits for them with a deadline (never a fixed sleep). At
  teardown it terminates the workflows it started that are still running (a parked task must not
  outlive its test) and unregisters its definitions, best effort.
* ``registry`` / ``runner``: a ``TaskRunner`` with its own Prometheus registry (so metrics of
  different tests never collide, and a test can read its runner's metrics), always shut down at
  teardown with a short grace. ``runner`` is torn down before ``conductor`` cleans up.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
import urllib3
from prometheus_client import CollectorRegistry

from conductor_client.models import (
    StartWorkflowRequest,
    Task,
    TaskDef,
    Workflow,
    WorkflowDef,
    WorkflowStatus,
    WorkflowTask,
)
from conductor_worker import ConductorClient, HttpSettings, TaskRunner

OWNER_EMAIL = "conductor-worker-tests@example.com"
TERMINAL_WORKFLOW_STATUSES = frozenset(
    {
        WorkflowStatus.COMPLETED,
        WorkflowStatus.FAILED,
        WorkflowStatus.TIMED_OUT,
        WorkflowStatus.TERMINATED,
    }
)
# Teardown grace for a runner whose test is over: a worker still running by then has lost anyway.
RUNNER_TEARDOWN_GRACE_SECONDS = 5.0

T = TypeVar("T")


class Conductor:
    """Definitions, workflows and waiting, on the real server, for one test."""

    def __init__(self, client: ConductorClient, unique: Callable[[str], str]) -> None:
        self.client = client
        self.unique = unique
        self.task_types: list[str] = []
        self.workflow_names: list[str] = []
        self.workflow_ids: list[str] = []

    # -- definitions -----------------------------------------------------------------------

    def task_def(
        self,
        prefix: str = "task",
        *,
        retry_count: int = 0,
        retry_delay_seconds: int = 0,
        response_timeout_seconds: int = 60,
        timeout_seconds: int = 0,
    ) -> str:
        """Register a task definition under a unique name; returns the name (the task type).

        The server requires responseTimeoutSeconds <= timeoutSeconds when timeoutSeconds > 0;
        0 (the default here) means no overall timeout.
        """
        name = self.unique(prefix)
        definition = TaskDef(
            name=name,
            owner_email=OWNER_EMAIL,
            retry_count=retry_count,
            retry_delay_seconds=retry_delay_seconds,
            response_timeout_seconds=response_timeout_seconds,
            timeout_seconds=timeout_seconds,
        )
        self.client.metadata.register_task_defs([definition])
        self.task_types.append(name)
        return name

    @staticmethod
    def simple_task(
        task_type: str, ref: str | None = None, inputs: Mapping[str, Any] | None = None
    ) -> WorkflowTask:
        """A SIMPLE task of `task_type`; the reference name defaults to the task type."""
        return WorkflowTask(
            name=task_type,
            task_reference_name=ref or task_type,
            type="SIMPLE",
            input_parameters=dict(inputs or {}),
        )

    def workflow_def(
        self,
        tasks: Sequence[str | WorkflowTask],
        *,
        prefix: str = "wf",
        output_parameters: Mapping[str, Any] | None = None,
    ) -> str:
        """Register a workflow of SIMPLE tasks (a task type alone: no inputs, ref = the type);
        returns its name (version 1)."""
        name = self.unique(prefix)
        definition = WorkflowDef(
            name=name,
            version=1,
            owner_email=OWNER_EMAIL,
            schema_version=2,
            timeout_seconds=0,
            tasks=[t if isinstance(t, WorkflowTask) else self.simple_task(t) for t in tasks],
            output_parameters=dict(output_parameters or {}),
        )
        self.client.metadata.register_workflow_def(definition)
        self.workflow_names.append(name)
        return name

    # -- workflows -------------------------------------------------------------------------

    def start(self, workflow_name: str, inputs: Mapping[str, Any] | None = None) -> str:
        workflow_id = self.client.workflows.start_workflow(
            StartWorkflowRequest(name=workflow_name, version=1, input=dict(inputs or {}))
        )
        self.workflow_ids.append(workflow_id)
        return workflow_id

    def start_many(
        self, workflow_name: str, count: int, inputs: Mapping[str, Any] | None = None
    ) -> list[str]:
        return [self.start(workflow_name, inputs) for _ in range(count)]

    def get(self, workflow_id: str) -> Workflow:
        """The workflow with its tasks, as the server has it now."""
        return self.client.workflows.get_workflow(workflow_id, include_tasks=True)

    def wait_for_workflows(
        self,
        workflow_ids: Sequence[str],
        *,
        timeout: float = 30.0,
        statuses: frozenset[WorkflowStatus] = TERMINAL_WORKFLOW_STATUSES,
    ) -> list[Workflow]:
        """Poll until every workflow has one of `statuses` (default: any terminal one); returns
        them in the order given. Fails the test at the deadline, showing where each one is."""
        done: dict[str, Workflow] = {}
        latest: dict[str, Workflow] = {}

        def all_done() -> bool:
            for workflow_id in workflow_ids:
                if workflow_id in done:
                    continue
                workflow = latest[workflow_id] = self.get(workflow_id)
                if workflow.status in statuses:
                    done[workflow_id] = workflow
            return len(done) == len(set(workflow_ids))

        def describe() -> str:
            waiting = [latest[w] for w in workflow_ids if w not in done and w in latest]
            return f"{len(waiting)} workflow(s) not in {sorted(s.value for s in statuses)}: " + (
                "; ".join(describe_workflow(w) for w in waiting[:5])
            )

        self.wait_until(all_done, timeout=timeout, interval=0.2, message=describe)
        return [done[w] for w in workflow_ids]

    def wait_for_workflow(self, workflow_id: str, *, timeout: float = 30.0) -> Workflow:
        return self.wait_for_workflows([workflow_id], timeout=timeout)[0]

    def wait_for_task(
        self,
        workflow_id: str,
        condition: Callable[[Task], bool],
        *,
        timeout: float = 30.0,
        what: str = "the condition",
    ) -> Task:
        """Poll the workflow until one of its tasks meets `condition`; returns that task."""
        latest: list[Workflow] = []

        def found() -> Task | None:
            workflow = self.get(workflow_id)
            latest[:] = [workflow]
            return next((t for t in workflow.tasks or [] if condition(t)), None)

        def describe() -> str:
            shown = describe_workflow(latest[0]) if latest else workflow_id
            return f"no task of workflow meets {what}: {shown}"

        return self.wait_until(found, timeout=timeout, interval=0.1, message=describe)

    @staticmethod
    def wait_until(
        condition: Callable[[], T | None],
        *,
        timeout: float,
        interval: float = 0.05,
        message: str | Callable[[], str] = "condition not met",
    ) -> T:
        """Call `condition` until it returns something truthy (returned); fail at the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            value = condition()
            if value:
                return value
            if time.monotonic() >= deadline:
                text = message() if callable(message) else message
                pytest.fail(f"after {timeout:g}s: {text}", pytrace=False)
            time.sleep(interval)

    def queue_size(self, task_type: str) -> int:
        return self.client.tasks.get_queue_size(task_type)

    # -- cleanup ---------------------------------------------------------------------------

    def cleanup(self) -> None:
        """Best effort: nothing here may hide the test's own outcome."""
        for workflow_id in self.workflow_ids:
            with contextlib.suppress(Exception):
                if self.client.workflows.get_workflow(workflow_id).status is WorkflowStatus.RUNNING:
                    self.client.workflows.terminate_workflow(workflow_id, reason="test teardown")
        for name in self.workflow_names:
            with contextlib.suppress(Exception):
                self.client.metadata.unregister_workflow_def(name, 1)
        for task_type in self.task_types:
            with contextlib.suppress(Exception):
                self.client.metadata.unregister_task_def(task_type)


def describe_workflow(workflow: Workflow) -> str:
    tasks = ", ".join(
        f"{t.reference_task_name}={t.status.value if t.status else None}"
        f"(polls={t.poll_count}, reason={t.reason_for_incompletion!r})"
        for t in workflow.tasks or []
    )
    status = workflow.status.value if workflow.status else None
    return f"{workflow.workflow_id} {status} [{tasks}]"


# -- how the server lines differ ----------------------------------------------------------


@dataclass(frozen=True)
class ServerFacts:
    """How one server version answers where the lines differ (checked in test_server_compat.py)."""

    empty_batch_poll_status: int  # GET /tasks/poll/batch/{type} with nothing queued
    missing_task_status: int  # GET /tasks/{id} for an id that does not exist
    has_update_v2: bool  # POST /tasks/update-v2
    keeps_task_logs: bool  # POST /tasks/{id}/log is stored and read back


FACTS = {
    # conductor-server 3.32.3 (boot jar, SQLite store): the pinned server.
    "3.32.3": ServerFacts(200, 404, has_update_v2=True, keeps_task_logs=True),
    # conductor-server 3.21.14 (boot jar, in-memory store, no index) on Java 17. Its controller
    # has a 204 branch for an empty batch poll, but the service always returns a list, so the
    # answer is 200 []. Task logs go to the index, which is off, so they are dropped.
    "3.21.14": ServerFacts(200, 204, has_update_v2=True, keeps_task_logs=False),
}


@pytest.fixture(scope="session")
def server_version(conductor_url: str) -> str | None:
    """The session server's version: its /api/version (3.22 and later answer it), else
    CONDUCTOR_SERVER_VERSION (the version the session started, or the one declared for
    CONDUCTOR_SERVER_URL), else None."""
    http = urllib3.PoolManager(timeout=urllib3.Timeout(total=10.0), retries=False)
    answer = http.request("GET", f"{conductor_url}/version")
    text = answer.data.decode("utf-8", "replace").strip()
    if answer.status == 200 and text[:1].isdigit():
        return text
    return os.environ.get("CONDUCTOR_SERVER_VERSION") or None


@pytest.fixture(scope="session")
def facts(server_version: str | None) -> ServerFacts | None:
    return FACTS.get(server_version or "")


@pytest.fixture
def client(conductor_url: str) -> Iterator[ConductorClient]:
    with ConductorClient(http=HttpSettings(conductor_url)) as client:
        yield client


@pytest.fixture
def conductor(client: ConductorClient, unique: Callable[[str], str]) -> Iterator[Conductor]:
    helper = Conductor(client, unique)
    yield helper
    helper.cleanup()


@pytest.fixture
def registry() -> CollectorRegistry:
    """A fresh Prometheus registry for this test's runner."""
    return CollectorRegistry()


@pytest.fixture
def runner(
    client: ConductorClient, registry: CollectorRegistry, conductor: Conductor
) -> Iterator[TaskRunner]:
    """A TaskRunner, always shut down at teardown (before `conductor` cleans up)."""
    task_runner = TaskRunner(client, registry=registry, shutdown_grace_seconds=10.0)
    try:
        yield task_runner
    finally:
        task_runner.shutdown(timeout=RUNNER_TEARDOWN_GRACE_SECONDS)
