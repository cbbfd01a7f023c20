"""Register the examples' task definitions and workflow, and start workflows.

    python -m examples.definitions               # register (safe to run again), start one

Uses ConductorClient's typed APIs (the generated conductor_client models): a TaskDef per task
type, and examples_workflow, which runs the four example workers in a row and wires their
outputs into the workflow's output:

    simple_task -> typed_task -> async_task -> long_running_task

Registering is idempotent: POST /metadata/taskdefs creates or replaces task definitions, and
PUT /metadata/workflow creates or updates workflow definitions.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import urllib3

from conductor_client.models import StartWorkflowRequest, TaskDef, WorkflowDef, WorkflowTask
from conductor_worker import ConductorClient

WORKFLOW_NAME = "examples_workflow"
WORKFLOW_VERSION = 1
# Servers may be configured to require an owner on every definition.
OWNER_EMAIL = "examples@conductor-worker.example.com"

SIMPLE_TASK = "simple_task"
TYPED_TASK = "typed_task"
ASYNC_TASK = "async_task"
LONG_RUNNING_TASK = "long_running_task"
LONG_RUNNING_REF = "long_running_ref"


def task_defs() -> list[TaskDef]:
    """One definition per task type: how the server times out and retries its tasks."""

    def define(name: str, description: str, response_timeout: int) -> TaskDef:
        return TaskDef(
            name=name,
            description=description,
            owner_email=OWNER_EMAIL,
            retry_count=2,
            retry_delay_seconds=1,  # the server's default is 60 s
            # A task whose worker goes silent for this long is timed out and retried. While a
            # task runs, the runner extends its lease, so this is not a limit on run time.
            response_timeout_seconds=response_timeout,
            timeout_seconds=0,  # no overall limit
        )

    return [
        define(SIMPLE_TASK, "Returns a typed TaskOutput", 30),
        define(TYPED_TASK, "Typed inputs bound by name", 30),
        define(ASYNC_TASK, "An async def worker", 30),
        # responseTimeout must outlast the callback: the server times an IN_PROGRESS task out
        # when it has not heard from a worker for responseTimeout + callbackAfterSeconds.
        define(LONG_RUNNING_TASK, "IN_PROGRESS with a callback, done on a later poll", 120),
    ]


def _task(name: str, ref: str, inputs: Mapping[str, Any]) -> WorkflowTask:
    return WorkflowTask(
        name=name, task_reference_name=ref, type="SIMPLE", input_parameters=dict(inputs)
    )


def workflow_def() -> WorkflowDef:
    """examples_workflow: each task's input is wired from the workflow input or an earlier
    task's output with ${...} expressions; the workflow output collects the results."""
    return WorkflowDef(
        name=WORKFLOW_NAME,
        version=WORKFLOW_VERSION,
        description="The conductor-worker examples, one task after the other",
        owner_email=OWNER_EMAIL,
        schema_version=2,
        timeout_seconds=0,  # required by the model; 0 = no workflow timeout
        input_parameters=["name", "repeat", "text", "delay"],
        tasks=[
            _task(SIMPLE_TASK, "simple_ref", {"name": "${workflow.input.name}"}),
            _task(
                TYPED_TASK,
                "typed_ref",
                {
                    "name": "${workflow.input.name}",
                    "value": "${simple_ref.output.value}",
                    "keys": "${simple_ref.output.keys}",
                    "repeat": "${workflow.input.repeat}",
                },
            ),
            _task(
                ASYNC_TASK,
                "async_ref",
                {"text": "${workflow.input.text}", "delay_seconds": "${workflow.input.delay}"},
            ),
            _task(LONG_RUNNING_TASK, LONG_RUNNING_REF, {"job": "${workflow.input.name}"}),
        ],
        output_parameters={
            "message": "${simple_ref.output.message}",
            "value": "${simple_ref.output.value}",
            "summary": "${typed_ref.output}",
            "shout": "${async_ref.output.shout}",
            "long_running": "${long_running_ref.output}",
        },
    )


def register(client: ConductorClient) -> None:
    """Create or update the task definitions and examples_workflow."""
    client.metadata.register_task_defs(task_defs())
    client.metadata.update_workflow_defs([workflow_def()])


def worker_domain() -> str | None:
    """The task domain the workers poll, from CONDUCTOR_WORKER_DOMAIN (see
    conductor_worker.options), so the examples can schedule their tasks there too."""
    return os.environ.get("CONDUCTOR_WORKER_DOMAIN") or None


def start_workflow(
    client: ConductorClient,
    workflow_input: Mapping[str, Any] | None = None,
    *,
    domain: str | None = None,
    correlation_id: str | None = None,
) -> str:
    """Start examples_workflow; returns the workflow id.

    domain: schedule every task in this task domain (``taskToDomain {"*": domain}``); only
        workers polling that domain get them. It keeps runs apart on a shared server.
    """
    request = StartWorkflowRequest(
        name=WORKFLOW_NAME,
        version=WORKFLOW_VERSION,
        input=dict(workflow_input or {}),
        correlation_id=correlation_id,
        task_to_domain={"*": domain} if domain else None,
    )
    return client.workflows.start_workflow(request)


def start_workflows(
    client: ConductorClient,
    inputs: Iterable[Mapping[str, Any]],
    *,
    domain: str | None = None,
    correlation_id: str | None = None,
) -> list[str]:
    """Start one examples_workflow per input; returns their ids in order."""
    return [
        start_workflow(client, one, domain=domain, correlation_id=correlation_id) for one in inputs
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--no-start", action="store_true", help="only register the definitions")
    parser.add_argument("--name", default="World", help="the workflow's 'name' input")
    args = parser.parse_args(argv)
    with ConductorClient.from_env() as client:
        try:
            client.tasks.get_queue_size("simple_task", _request_timeout=(5.0, 10.0))
        except urllib3.exceptions.HTTPError as error:  # no answer at all: say where we looked
            url = client.http.base_url
            message = f"cannot reach the Conductor server at {url} ({error})"
            print(f"{message}; is CONDUCTOR_SERVER_URL set?", file=sys.stderr)
            return 1
        register(client)
        print(f"registered {len(task_defs())} task definitions and {WORKFLOW_NAME}")
        if not args.no_start:
            workflow_id = start_workflow(
                client,
                {"name": args.name, "repeat": 1, "text": "hello", "delay": 0.1},
                domain=worker_domain(),
            )
            print(f"started {WORKFLOW_NAME}: {workflow_id}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
