"""The generated client alone (no conductor_worker) against a real Conductor server.

Proves the generated code end to end: metadata registration, starting a workflow, polling and
completing tasks through each of the three update calls, task logs, reading tasks and workflows
back, the empty poll, 404s, and that values of enums this client does not know survive.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import cast

import pytest

import conductor_client as cc
from conductor_client.exceptions import ApiException, NotFoundException

pytestmark = pytest.mark.timeout(120)

WORKER_ID = "generated-client-test"
# Long poll: the server waits up to this long (its maximum is 5000 ms) for a task to appear.
POLL_TIMEOUT_MS = 5000
# The HTTP read timeout must outlast the long poll.
REQUEST_TIMEOUT_SECONDS = 20.0


@dataclass
class Server:
    """The APIs of the generated client for one test, and what to clean up after it."""

    client: cc.ApiClient
    tasks: cc.TaskApi
    workflows: cc.WorkflowApi
    metadata: cc.MetadataApi
    task_defs: list[str] = field(default_factory=list)
    workflow_defs: list[tuple[str, int]] = field(default_factory=list)
    workflow_ids: list[str] = field(default_factory=list)

    def register_task_defs(self, names: list[str]) -> None:
        defs = [
            cc.TaskDef(
                name=name,
                retry_count=0,
                timeout_seconds=300,
                response_timeout_seconds=120,
                owner_email="tests@example.com",
            )
            for name in names
        ]
        self.metadata.register_task_defs(defs)
        self.task_defs.extend(names)

    def register_workflow(self, name: str, tasks: list[cc.WorkflowTask], **kwargs: object) -> None:
        definition = cc.WorkflowDef(
            name=name,
            version=1,
            schema_version=2,
            timeout_seconds=0,
            owner_email="tests@example.com",
            tasks=tasks,
            **kwargs,
        )
        self.metadata.update_workflow_defs([definition])
        self.workflow_defs.append((name, 1))

    def start(self, name: str, workflow_input: dict[str, object]) -> str:
        workflow_id = self.workflows.start_workflow(
            cc.StartWorkflowRequest(name=name, version=1, input=workflow_input)
        )
        self.workflow_ids.append(workflow_id)
        return workflow_id

    def poll_one(self, task_type: str, deadline_seconds: float = 30.0) -> cc.Task:
        """Long-polls until one task of ``task_type`` is handed out."""
        deadline = time.monotonic() + deadline_seconds
        while time.monotonic() < deadline:
            polled = self.tasks.batch_poll(
                task_type,
                workerid=WORKER_ID,
                count=1,
                timeout=POLL_TIMEOUT_MS,
                _request_timeout=REQUEST_TIMEOUT_SECONDS,
            )
            if polled:
                (task,) = polled
                return task
        raise AssertionError(f"no {task_type} task within {deadline_seconds}s")

    def wait_for_workflow(
        self, workflow_id: str, status: cc.WorkflowStatus, timeout: float = 30.0
    ) -> cc.Workflow:
        deadline = time.monotonic() + timeout
        while True:
            workflow = self.workflows.get_workflow(workflow_id, include_tasks=True)
            if workflow.status == status or time.monotonic() > deadline:
                assert workflow.status == status, workflow
                return workflow
            time.sleep(0.1)

    def cleanup(self) -> None:
        for workflow_id in self.workflow_ids:
            try:
                workflow = self.workflows.get_workflow(workflow_id, include_tasks=False)
                if workflow.status == cc.WorkflowStatus.RUNNING:
                    self.workflows.terminate_workflow(workflow_id, reason="test cleanup")
                self.workflows.delete_workflow(workflow_id, archive_workflow=False)
            except ApiException:
                pass
        for name, version in self.workflow_defs:
            with contextlib.suppress(ApiException):
                self.metadata.unregister_workflow_def(name, version)
        for name in self.task_defs:
            with contextlib.suppress(ApiException):
                self.metadata.unregister_task_def(name)


@pytest.fixture
def server(conductor_url: str) -> Iterator[Server]:
    client = cc.ApiClient(cc.Configuration(host=conductor_url))
    api = Server(client, cc.TaskApi(client), cc.WorkflowApi(client), cc.MetadataApi(client))
    try:
        yield api
    finally:
        api.cleanup()
        client.rest_client.pool_manager.clear()


def simple(name: str, ref: str, inputs: dict[str, object]) -> cc.WorkflowTask:
    return cc.WorkflowTask(
        name=name, task_reference_name=ref, type="SIMPLE", input_parameters=inputs
    )


def test_three_simple_tasks_completed_through_the_three_update_calls(
    server: Server, unique: Callable[[str], str]
) -> None:
    names = [unique(f"gen_client_t{i}") for i in (1, 2, 3)]
    refs = ["first", "second", "third"]
    workflow_name = unique("gen_client_wf")
    server.register_task_defs(names)
    server.register_workflow(
        workflow_name,
        [
            simple(names[0], refs[0], {"n": "${workflow.input.n}"}),
            simple(names[1], refs[1], {"prev": "${first.output.value}"}),
            simple(names[2], refs[2], {"prev": "${second.output.value}"}),
        ],
        output_parameters={
            "a": "${first.output.value}",
            "b": "${second.output.value}",
            "c": "${third.output.value}",
        },
    )
    assert server.metadata.get_task_def(names[0]).name == names[0]

    workflow_id = server.start(workflow_name, {"n": 7})
    assert isinstance(workflow_id, str)
    assert workflow_id

    # 1: update_task answers the task id.
    first = server.poll_one(names[0])
    assert first.status == cc.TaskStatus.IN_PROGRESS
    assert first.workflow_instance_id == workflow_id
    assert first.reference_task_name == refs[0]
    assert first.input_data == {"n": 7}
    assert first.worker_id == WORKER_ID
    answered = server.tasks.update_task(
        cc.TaskResult(
            workflow_instance_id=workflow_id,
            task_id=first.task_id,
            worker_id=WORKER_ID,
            status=cc.TaskResultStatus.COMPLETED,
            output_data={"value": 1},
        )
    )
    assert answered == first.task_id

    # 2: update_task_v2 answers the next task of the same type for this worker; no other
    # workflow has one, so None.
    second = server.poll_one(names[1])
    assert second.input_data == {"prev": 1}
    # The generated signature says Task, but a 204 (no next task) gives None.
    next_task = cast(
        "cc.Task | None",
        server.tasks.update_task_v2(
            cc.TaskResult(
                workflow_instance_id=workflow_id,
                task_id=second.task_id,
                worker_id=WORKER_ID,
                status=cc.TaskResultStatus.COMPLETED,
                output_data={"value": "two"},
            )
        ),
    )
    assert next_task is None

    # 3: by reference name; the body is the output map.
    third = server.poll_one(names[2])
    assert third.input_data == {"prev": "two"}
    answered = server.tasks.update_task_by_ref_name(
        workflow_id,
        refs[2],
        cc.TaskResultStatus.COMPLETED,
        {"value": [3, {"x": True}]},
        workerid=WORKER_ID,
    )
    assert answered == third.task_id

    fetched = server.tasks.get_task(first.task_id)
    assert fetched.task_id == first.task_id
    assert fetched.status == cc.TaskStatus.COMPLETED
    assert fetched.output_data == {"value": 1}
    assert fetched.task_def_name == names[0]

    # Logs come back exactly as sent: no added quotes, escapes intact, non-ASCII intact.
    lines = ["plain line", 'with "quotes" and a \\ backslash', "ünïcødé ✓", '{"looks": "json"}']
    for line in lines:
        server.tasks.add_task_log(first.task_id, line)
    logs = server.tasks.get_task_logs(first.task_id)
    assert [log.log for log in logs] == lines
    assert all(log.task_id == first.task_id for log in logs)

    workflow = server.wait_for_workflow(workflow_id, cc.WorkflowStatus.COMPLETED)
    assert workflow.output == {"a": 1, "b": "two", "c": [3, {"x": True}]}
    assert workflow.tasks is not None
    assert [t.reference_task_name for t in workflow.tasks] == refs
    assert all(t.status == cc.TaskStatus.COMPLETED for t in workflow.tasks)


@pytest.mark.compat
def test_update_task_v2_hands_out_the_next_task_of_the_same_type(
    server: Server, unique: Callable[[str], str]
) -> None:
    name = unique("gen_client_v2")
    workflow_name = unique("gen_client_v2_wf")
    server.register_task_defs([name])
    server.register_workflow(workflow_name, [simple(name, "only", {"i": "${workflow.input.i}"})])
    workflow_ids = {server.start(workflow_name, {"i": i}) for i in (1, 2)}

    polled = server.poll_one(name)
    next_task = server.tasks.update_task_v2(
        cc.TaskResult(
            workflow_instance_id=polled.workflow_instance_id,
            task_id=polled.task_id,
            worker_id=WORKER_ID,
            status=cc.TaskResultStatus.COMPLETED,
        )
    )

    assert isinstance(next_task, cc.Task)
    assert next_task.task_def_name == name
    assert next_task.status == cc.TaskStatus.IN_PROGRESS
    assert next_task.worker_id == WORKER_ID
    assert {polled.workflow_instance_id, next_task.workflow_instance_id} == workflow_ids
    last = cast(
        "cc.Task | None",
        server.tasks.update_task_v2(
            cc.TaskResult(
                workflow_instance_id=next_task.workflow_instance_id,
                task_id=next_task.task_id,
                worker_id=WORKER_ID,
                status=cc.TaskResultStatus.COMPLETED,
            )
        ),
    )
    assert last is None
    for workflow_id in workflow_ids:
        server.wait_for_workflow(workflow_id, cc.WorkflowStatus.COMPLETED)


@pytest.mark.compat
def test_empty_batch_poll_is_an_empty_list(server: Server, unique: Callable[[str], str]) -> None:
    polled = server.tasks.batch_poll(
        unique("gen_client_nothing"), workerid=WORKER_ID, count=5, timeout=100
    )
    assert polled == []
    assert isinstance(polled, list)


def test_missing_task_raises_not_found(server: Server, unique: Callable[[str], str]) -> None:
    with pytest.raises(NotFoundException) as caught:
        server.tasks.get_task(unique("no_such_task"))
    assert caught.value.status == 404


def test_unknown_enum_values_are_kept() -> None:
    task = cc.Task.from_dict({"taskId": "t", "status": "SOME_FUTURE_STATUS"})
    assert task is not None
    assert task.status == "SOME_FUTURE_STATUS"
    assert task.status.value == "SOME_FUTURE_STATUS"
    assert isinstance(task.status, cc.TaskStatus)
    assert task.to_dict()["status"] == "SOME_FUTURE_STATUS"
    # A known value is still the known member.
    known = cc.Task.from_dict({"status": "COMPLETED"})
    assert known is not None
    assert known.status is cc.TaskStatus.COMPLETED


def test_workflow_from_the_server_with_unknown_statuses_deserializes(
    server: Server, unique: Callable[[str], str]
) -> None:
    name = unique("gen_client_enum")
    workflow_name = unique("gen_client_enum_wf")
    server.register_task_defs([name])
    server.register_workflow(workflow_name, [simple(name, "only", {})])
    workflow_id = server.start(workflow_name, {"k": "v"})
    # A full Workflow JSON as this server sends it, with statuses from a "future" server.
    raw = server.workflows.get_workflow_with_http_info(workflow_id, include_tasks=True).raw_data
    document = json.loads(raw)
    assert document["status"] == "RUNNING"
    assert document["tasks"]
    document["status"] = "HIBERNATING"
    document["tasks"][0]["status"] = "WAITING_FOR_GODOT"

    workflow = cc.Workflow.from_dict(document)
    assert workflow is not None
    assert workflow.workflow_id == workflow_id
    assert workflow.status == "HIBERNATING"
    assert isinstance(workflow.status, cc.WorkflowStatus)
    assert workflow.tasks is not None
    assert workflow.tasks[0].status == "WAITING_FOR_GODOT"
    assert workflow.input == {"k": "v"}
    # And back to JSON unchanged.
    assert json.loads(workflow.to_json())["status"] == "HIBERNATING"
    # The same through the client's own response path.
    via_client = server.client.deserialize(json.dumps(document), "Workflow", "application/json")
    assert via_client.status == "HIBERNATING"
