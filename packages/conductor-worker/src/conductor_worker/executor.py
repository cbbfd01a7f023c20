"""TaskExecutor: read and update tasks from outside a worker function.

For the long-running pattern: a worker hands a task off (returns IN_PROGRESS, or starts work
elsewhere), and some other code finishes it later by id or by its reference name.
"""

from __future__ import annotations

from typing import Any, cast

from conductor_client.exceptions import NotFoundException
from conductor_client.models import Task, TaskResult, TaskResultStatus
from conductor_worker.client import ConductorClient
from conductor_worker.options import default_worker_id
from conductor_worker.serialization import to_output_data


class TaskExecutor:
    """Task management calls. Server errors are raised as conductor_client exceptions
    (e.g. `conductor_client.exceptions.NotFoundException` for an unknown task id)."""

    def __init__(self, client: ConductorClient, *, worker_id: str | None = None) -> None:
        self.client = client
        self.worker_id = worker_id or default_worker_id()

    def get_task(self, task_id: str) -> Task:
        """The task with this id, with its status, input and output.

        Raises `NotFoundException` when there is none, on every server: older ones (3.21.14
        does) answer an unknown id with an empty 204, which the generated client returns as
        None.
        """
        task = cast("Task | None", self.client.tasks.get_task(task_id))
        if task is None:
            raise NotFoundException(status=404, reason=f"no task with id {task_id!r}")
        return task

    def update_task(
        self,
        task_id: str,
        workflow_instance_id: str,
        status: TaskResultStatus | str,
        output: Any = None,
        *,
        reason: str | None = None,
    ) -> str:
        """Set a task's status and output by its id; returns the task id.

        `output` follows the worker return rules: a dict, dataclass, pydantic model, or any
        JSON value (stored under "result").
        """
        result = TaskResult(
            task_id=task_id,
            workflow_instance_id=workflow_instance_id,
            status=TaskResultStatus(status),
            output_data=to_output_data(output),
            reason_for_incompletion=reason,
            worker_id=self.worker_id,
        )
        return self.client.tasks.update_task(result)

    def update_task_by_ref_name(
        self,
        task_ref_name: str,
        workflow_instance_id: str,
        status: TaskResultStatus | str,
        output: Any = None,
    ) -> str | None:
        """Set the status and output of the workflow's pending task with this reference name.

        The server merges `output` into the task's existing outputData (update_task by id
        replaces it). Returns the task id, or None when the workflow has no pending task by
        that name.
        """
        task_id = self.client.tasks.update_task_by_ref_name(
            workflow_instance_id,
            task_ref_name,
            TaskResultStatus(status),
            to_output_data(output),
            workerid=self.worker_id,
        )
        return task_id or None
