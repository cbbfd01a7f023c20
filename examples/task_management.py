"""Task management: read a task and finish it from outside the worker.

    python -m examples.task_management        # from the repository root

The long-running pattern: a worker starts some work and hands its task back IN_PROGRESS; later,
whatever notices that the work is done (a webhook, a queue consumer, a person) completes the
task through TaskExecutor, by task id or by the task's reference name in its workflow.

main() shows it on the example workflow: it runs the example workers until the long-running
task of two workflows is parked (IN_PROGRESS, called back in 60 s), then completes one by id and
the other by reference name, without waiting for the callback.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from conductor_client.models import Workflow, WorkflowStatus
from conductor_worker import ConductorClient, Task, TaskExecutor, TaskResultStatus, TaskRunner
from examples import definitions, workers
from examples.workers import TaskOutput

# -- The task management calls ------------------------------------------------------------


def get_task(executor: TaskExecutor, task_id: str) -> Task:
    """Get task details: status, input, output, poll count, times."""
    return executor.get_task(task_id)


def complete_by_id(executor: TaskExecutor, task_id: str, workflow_instance_id: str) -> str:
    """Update a task by its id. The output follows the worker rules (dict, dataclass, ...)."""
    output = TaskOutput(keys=["Key1", "Key2"], message="Completed by id")
    return executor.update_task(task_id, workflow_instance_id, TaskResultStatus.COMPLETED, output)


def complete_by_ref_name(
    executor: TaskExecutor, task_ref_name: str, workflow_instance_id: str
) -> str | None:
    """Update the workflow's pending task with this reference name (no task id needed).
    Returns the task id, or None when the workflow has no pending task by that name. The
    server merges this output into the task's current output."""
    output = TaskOutput(keys=["Key1", "Key2"], message="Completed by reference name")
    return executor.update_task_by_ref_name(
        task_ref_name, workflow_instance_id, TaskResultStatus.COMPLETED, output
    )


# -- The demonstration ---------------------------------------------------------------------


def _wait_for(what: str, check: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up after {timeout:g}s waiting for {what}")
        time.sleep(0.2)


def _parked_task(client: ConductorClient, workflow_id: str) -> Task | None:
    """The workflow's long-running task once its worker has handed it back IN_PROGRESS."""
    workflow = client.workflows.get_workflow(workflow_id, include_tasks=True)
    for task in workflow.tasks or []:
        output = task.output_data or {}
        if (
            task.reference_task_name == definitions.LONG_RUNNING_REF
            and output.get("stage") == "waiting"
        ):
            return task
    return None


def _workflow(client: ConductorClient, workflow_id: str) -> Workflow:
    return client.workflows.get_workflow(workflow_id, include_tasks=False)


def main() -> int:
    with ConductorClient.from_env() as client:
        definitions.register(client)
        executor = TaskExecutor(client)
        runner = TaskRunner(client, shutdown_grace_seconds=10)
        runner.start_workers(workers)
        try:
            domain = definitions.worker_domain()
            inputs = [{"name": "by id", "text": "a"}, {"name": "by ref", "text": "b"}]
            by_id, by_ref = definitions.start_workflows(client, inputs, domain=domain)
            parked: dict[str, Task] = {}

            def both_parked() -> bool:
                for workflow_id in (by_id, by_ref):
                    task = parked.get(workflow_id) or _parked_task(client, workflow_id)
                    if task is not None:
                        parked[workflow_id] = task
                return len(parked) == 2

            _wait_for("the long-running tasks to be parked", both_parked)

            task = get_task(executor, parked[by_id].task_id or "")
            status = task.status.value if task.status else None
            print(f"parked task {task.task_id}: status {status}, polled {task.poll_count} time(s)")
            print(f"  callback in {task.callback_after_seconds}s, output {task.output_data}")

            print("completing it by id:", complete_by_id(executor, task.task_id or "", by_id))
            print(
                "completing the other by reference name:",
                complete_by_ref_name(executor, definitions.LONG_RUNNING_REF, by_ref),
            )

            def both_completed() -> bool:
                statuses = [_workflow(client, w).status for w in (by_id, by_ref)]
                return all(s is WorkflowStatus.COMPLETED for s in statuses)

            _wait_for("both workflows to complete", both_completed, timeout=30)
            for workflow_id in (by_id, by_ref):
                output = _workflow(client, workflow_id).output
                print(f"workflow {workflow_id} COMPLETED; output:")
                print(json.dumps(output, indent=2, sort_keys=True))
        finally:
            runner.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
