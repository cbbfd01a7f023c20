"""The reliability tests' audit of task attempts, from the server's own records.

Nothing lost means, for each task of a finished workflow:

* the last attempt is COMPLETED with the output our worker made for that very attempt;
* every earlier attempt ended FAILED or TIMED_OUT and the server retried it, within retryCount;
* or, rarely, an earlier attempt is COMPLETED, with our worker's output for it. That one is the
  server's doing: ``POST /tasks`` reads the task, checks that it is not finished and writes it
  back without taking the workflow's lock (``WorkflowExecutorOps.updateTask``), so a late result
  that lands while the decider times the attempt out and schedules a retry overwrites TIMED_OUT
  with COMPLETED. Our result arrived; the retry runs too. It is counted, not failed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from conductor_client.models import Task, TaskStatus, Workflow
from tests.integration.conftest import describe_workflow


@dataclass
class AttemptCounts:
    attempts: int = 0  # task attempts the server made
    retried: int = 0  # attempts the server retried
    superseded: int = 0  # ... of them, attempts our worker had finished (its result was late)
    overwritten: int = 0  # ... of those, taken as COMPLETED all the same (see the docstring)

    def __str__(self) -> str:
        return (
            f"{self.attempts} task attempts, {self.retried} retried by the server "
            f"({self.superseded} after our result came too late, {self.overwritten} of them "
            "COMPLETED by that late result anyway)"
        )


def audit_attempts(
    workflow: Workflow,
    task_refs: Collection[str],
    executed: Mapping[str, Any],
    retry_count: int,
    counts: AttemptCounts,
) -> None:
    """Asserts the module's rules for one COMPLETED workflow whose tasks have the reference
    names ``task_refs``; ``executed`` maps each task id our worker finished to the output it
    made. Adds what it saw to ``counts``."""
    by_ref: dict[str, list[Task]] = defaultdict(list)
    for task in workflow.tasks or []:
        by_ref[task.reference_task_name or ""].append(task)
    assert sorted(by_ref) == sorted(task_refs), describe_workflow(workflow)
    for ref, tries in by_ref.items():
        tries.sort(key=lambda t: t.seq or 0)
        counts.attempts += len(tries)
        counts.retried += len(tries) - 1
        assert len(tries) <= retry_count + 1, describe_workflow(workflow)
        *earlier, last = tries
        assert last.status is TaskStatus.COMPLETED, describe_workflow(workflow)
        for task in tries:
            if task.status is TaskStatus.COMPLETED:
                # The output our worker made for this very attempt: not lost, not another's.
                assert task.task_id in executed, describe_workflow(workflow)
                assert task.output_data == executed[task.task_id or ""], describe_workflow(workflow)
        for retried in earlier:
            assert retried.status in (
                TaskStatus.FAILED,
                TaskStatus.TIMED_OUT,
                TaskStatus.COMPLETED,
            ), f"{ref}: attempt {retried.task_id} is {retried.status} but was retried: " + (
                describe_workflow(workflow)
            )
            if retried.task_id in executed:
                counts.superseded += 1
                counts.overwritten += retried.status is TaskStatus.COMPLETED
