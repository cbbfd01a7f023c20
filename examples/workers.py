"""The workers of "Writing Workers", in Python.

Run every worker in this module with the CLI, from the repository root:

    conductor-worker run examples.workers

A worker is a plain function. The runner polls the server for its task type, binds the task's
input to the function's parameters BY NAME, calls it (``def`` on a thread pool, ``async def`` on
an event loop), and reports what it returns:

* a dict, dataclass or pydantic model  -> the task is COMPLETED with that as its output
* a ``TaskResult`` (``in_progress()``)  -> full control: status, output, callback
* an exception                          -> FAILED (the server retries per the task definition);
  ``NonRetryableError``                 -> FAILED_WITH_TERMINAL_ERROR (no retries)

Workers follow Conductor's design principles: stateless, one job each, idempotent (a task may
run again after a timeout), and no retry logic of their own: the server does that.
"""

from __future__ import annotations

import asyncio
import os
import random
from dataclasses import dataclass, field

from pydantic import BaseModel

from conductor_worker import Task, TaskResult, in_progress, task_context, worker_task

# -- A worker that returns a typed output ---------------------------------------------------


@dataclass
class TaskOutput:
    """The output of simple_task. Any dataclass (or dict, or pydantic model) whose values are
    JSON-serializable will do: the runner turns it into the task's JSON outputData."""

    keys: list[str]
    message: str
    value: float = field(default_factory=lambda: random.expovariate(1.0))


@worker_task("simple_task", batch_size=10, poll_interval=0.5)
def simple_worker(task: Task) -> TaskOutput:
    """Takes the whole Task (a sole parameter annotated ``Task`` receives the task itself) and
    returns a TaskOutput. Raising an exception instead would mark the task FAILED."""
    name = (task.input_data or {}).get("name") or "World"
    return TaskOutput(keys=["Key1", "Key2"], message=f"Hello {name}")


# -- A worker with typed inputs, bound by name ----------------------------------------------


class Summary(BaseModel):
    greeting: str
    value: float
    key_count: int


@worker_task("typed_task", batch_size=10, poll_interval=0.5)
def typed_worker(name: str, value: float, keys: list[str], repeat: int | None = None) -> Summary:
    """Each parameter is looked up by name in the task's input and converted to its annotation
    (``"2"`` becomes ``2`` for an int). A missing input takes the parameter's default; with no
    default, or an input that does not convert, the task fails without retries.

    ``repeat`` is ``int | None``: a workflow that wires ``${workflow.input.repeat}`` passes null
    when the workflow was started without it, and null is not an int.
    """
    return Summary(
        greeting=" ".join([f"Hello {name}!"] * (repeat or 1)),
        value=round(value, 3),
        key_count=len(keys),
    )


# -- An async worker ------------------------------------------------------------------------


@worker_task("async_task", batch_size=20, poll_interval=0.5)
async def async_worker(text: str, delay_seconds: float | None = None) -> dict[str, str]:
    """``async def`` workers run on one event loop: while one awaits I/O (the sleep stands in
    for an HTTP call), the others run. Never block the loop with slow synchronous calls in
    here; write those workers as plain ``def``."""
    await asyncio.sleep(delay_seconds if delay_seconds is not None else 0.1)
    return {"shout": text.upper()}


# -- A long-running task: hand it back to the server, finish it on a later poll -------------


def callback_seconds() -> int:
    """How long the server keeps the task before handing it out again (default 60, as in the
    original text; EXAMPLE_CALLBACK_SECONDS=1 makes the examples and the demo quick)."""
    return int(os.environ.get("EXAMPLE_CALLBACK_SECONDS", "60"))


@worker_task("long_running_task", batch_size=20, poll_interval=0.5)
def long_running_worker(job: str | None = None) -> TaskResult | dict[str, object]:
    """Returns IN_PROGRESS to ask the server to send the task again after the callback, without
    keeping a thread busy meanwhile. Each time the server hands the task out, its poll count
    rises; here the second time round finishes it. Real code would check on the work it started
    (a batch job, a human approval); another process can also finish the task directly with
    TaskExecutor (see examples/task_management.py)."""
    context = task_context()
    if context.poll_count < 2:
        context.add_log(f"job {job!r} started; checking again in {callback_seconds()}s")
        return in_progress(
            callback_after_seconds=callback_seconds(),
            output={"stage": "waiting", "job": job},
        )
    return {"stage": "done", "job": job, "polls": context.poll_count}
