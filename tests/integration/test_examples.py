"""Every example under examples/ runs against the real server and does what it says.

The examples use fixed task type names, so each test here runs its workers in a task domain of
its own (CONDUCTOR_WORKER_DOMAIN, which every runner honours) and schedules its workflows there;
it only ever waits for its own workflow ids.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import urllib3

from conductor_client.models import Workflow, WorkflowStatus
from conductor_worker import ConductorClient, TaskRunner
from examples import definitions, workers

if TYPE_CHECKING:  # the `conductor` fixture's helper; a test module does not import its conftest
    from tests.integration.conftest import Conductor

pytestmark = pytest.mark.timeout(120)

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def domain(unique: Callable[[str], str]) -> str:
    return unique("examples")


@pytest.fixture
def example_env(conductor_url: str, domain: str) -> dict[str, str]:
    """The environment an example runs in: this server, this test's domain, a 1 s callback."""
    return {
        **os.environ,
        "CONDUCTOR_SERVER_URL": conductor_url,
        "CONDUCTOR_WORKER_DOMAIN": domain,
        "EXAMPLE_CALLBACK_SECONDS": "1",
    }


@pytest.fixture
def registered(client: ConductorClient) -> None:
    definitions.register(client)


class Example:
    """`python -m examples.<name>` as a child process, its output in a file."""

    def __init__(self, module: str, env: dict[str, str], log: Path, *args: str) -> None:
        self.log = log
        self._out = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_output(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            match = re.search(pattern, self.output())
            if match:
                return match
            if self.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"no {pattern!r} in the example's output:\n{self.output()}")
            time.sleep(0.05)

    def terminate(self, timeout: float = 30.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the example did not exit after SIGTERM:\n{self.output()}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._out.close()


@pytest.fixture
def run_example(example_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., Example]]:
    started: list[Example] = []

    def start(module: str, *args: str, env: dict[str, str] | None = None) -> Example:
        log = tmp_path / f"{module}-{len(started)}.log"
        example = Example(module, env or example_env, log, *args)
        started.append(example)
        return example

    yield start
    for example in started:
        example.close()


def start_workflows(conductor: Conductor, domain: str, inputs: list[dict[str, Any]]) -> list[str]:
    ids = definitions.start_workflows(conductor.client, inputs, domain=domain)
    conductor.workflow_ids.extend(ids)  # terminated at teardown if still running
    return ids


def assert_example_output(workflow: Workflow, given: dict[str, Any]) -> None:
    """What examples_workflow's output must look like for `given` input."""
    assert workflow.status is WorkflowStatus.COMPLETED, workflow.reason_for_incompletion
    output = workflow.output or {}
    assert set(output) == {"message", "value", "summary", "shout", "long_running"}
    assert output["message"] == f"Hello {given['name']}"
    assert isinstance(output["value"], float)
    assert output["value"] >= 0
    summary = output["summary"]
    assert summary == {
        "greeting": " ".join([f"Hello {given['name']}!"] * (given.get("repeat") or 1)),
        "value": round(output["value"], 3),
        "key_count": 2,
    }
    assert output["shout"] == given["text"].upper()
    assert output["long_running"] == {"stage": "done", "job": given["name"], "polls": 2}


INPUTS: list[dict[str, Any]] = [
    {"name": "Ada", "repeat": 2, "text": "first", "delay": 0.05},
    {"name": "Alan", "text": "no repeat, no delay"},  # missing inputs arrive as null
]


# -- examples/workers.py + examples/definitions.py, in-process ---------------------------------


@pytest.mark.usefixtures("registered")
def test_workers_module_runs_the_example_workflow(
    conductor: Conductor,
    runner: TaskRunner,
    domain: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CONDUCTOR_WORKER_DOMAIN", domain)
    monkeypatch.setenv("EXAMPLE_CALLBACK_SECONDS", "1")
    assert runner.start_workers(workers) == 4

    ids = start_workflows(conductor, domain, INPUTS)
    workflows = conductor.wait_for_workflows(ids, timeout=60)

    for workflow, given in zip(workflows, INPUTS, strict=True):
        assert_example_output(workflow, given)
        simple = next(t for t in workflow.tasks or [] if t.reference_task_name == "simple_ref")
        assert (simple.output_data or {})["keys"] == ["Key1", "Key2"]
        long_running = workflow.tasks[-1] if workflow.tasks else None
        assert long_running is not None
        assert long_running.poll_count == 2  # handed back IN_PROGRESS once, then finished
        logs = conductor.client.tasks.get_task_logs(long_running.task_id or "")
        assert [log.log for log in logs or []] == [
            f"job {given['name']!r} started; checking again in 1s"
        ]


def test_definitions_registers_idempotently_and_starts_a_workflow(
    conductor: Conductor, example_env: dict[str, str], domain: str
) -> None:
    def run(*args: str) -> str:
        proc = subprocess.run(
            [sys.executable, "-m", "examples.definitions", *args],
            cwd=REPO_ROOT,
            env=example_env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    assert "registered 4 task definitions" in run("--no-start")
    out = run()  # registers again: no error
    match = re.search(r"started examples_workflow: (\S+)", out)
    assert match, out
    workflow_id = match.group(1)
    conductor.workflow_ids.append(workflow_id)

    workflow = conductor.get(workflow_id)
    assert workflow.status is WorkflowStatus.RUNNING
    assert workflow.task_to_domain == {"*": domain}
    for name in ("simple_task", "typed_task", "async_task", "long_running_task"):
        task_def = conductor.client.metadata.get_task_def(name)
        assert task_def.owner_email == definitions.OWNER_EMAIL
    definition = conductor.client.metadata.get_workflow_def(definitions.WORKFLOW_NAME, version=1)
    assert [t.name for t in definition.tasks] == [
        "simple_task", "typed_task", "async_task", "long_running_task",
    ]  # fmt: skip


# -- the runnable examples, as a user runs them -------------------------------------------------


@pytest.mark.usefixtures("registered")
def test_start_workers_example(
    conductor: Conductor, run_example: Callable[..., Example], domain: str
) -> None:
    example = run_example("examples.start_workers")
    example.wait_for_output(r"started worker long_running_worker")

    ids = start_workflows(conductor, domain, INPUTS)
    workflows = conductor.wait_for_workflows(ids, timeout=60)

    for workflow, given in zip(workflows, INPUTS, strict=True):
        assert_example_output(workflow, given)
    assert example.terminate() == 0, example.output()


@pytest.mark.usefixtures("registered")
def test_metrics_example(
    conductor: Conductor, run_example: Callable[..., Example], domain: str
) -> None:
    example = run_example("examples.metrics", "--port", "0")
    metrics_url = example.wait_for_output(r"metrics at (http://\S+)").group(1)
    example.wait_for_output(r"started worker long_running_worker")

    (workflow_id,) = start_workflows(conductor, domain, INPUTS[:1])
    assert_example_output(conductor.wait_for_workflow(workflow_id, timeout=60), INPUTS[0])

    response = urllib3.request("GET", metrics_url, timeout=5.0)
    assert response.status == 200
    text = response.data.decode()
    for task_type, executions in [
        ("simple_task", 1), ("typed_task", 1), ("async_task", 1), ("long_running_task", 2),
    ]:  # fmt: skip
        line = f'task_execute_time_count{{taskType="{task_type}"}} {executions:.1f}'
        assert line in text.splitlines(), text
        assert f'task_poll_counter_total{{taskType="{task_type}"}}' in text
        assert f'task_execute_error_total{{taskType="{task_type}"}} 0.0' in text
    assert example.terminate() == 0, example.output()


@pytest.mark.usefixtures("registered")
def test_task_management_example_completes_parked_tasks_by_id_and_by_ref_name(
    conductor: Conductor,
    run_example: Callable[..., Example],
    example_env: dict[str, str],
) -> None:
    # The example's own 60 s callback: the tasks stay parked until the example completes them.
    env = {**example_env, "EXAMPLE_CALLBACK_SECONDS": "60"}
    example = run_example("examples.task_management", env=env)
    try:
        code = example.proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the example did not finish:\n{example.output()}")
    out = example.output()
    assert code == 0, out
    conductor.workflow_ids.extend(re.findall(r"workflow (\S+) COMPLETED", out))

    parked = re.search(r"parked task (\S+): status SCHEDULED, polled 1 time", out)
    assert parked, out
    assert "callback in 60s" in out
    by_id = re.search(r"completing it by id: (\S+)", out)
    by_ref = re.search(r"completing the other by reference name: (\S+)", out)
    assert by_id, out
    assert by_ref, out
    assert by_id.group(1) == parked.group(1)

    workflow_ids = re.findall(r"workflow (\S+) COMPLETED; output:", out)
    assert len(workflow_ids) == 2, out
    first, second = (conductor.get(w) for w in workflow_ids)
    for workflow, task_id, message in [
        (first, by_id.group(1), "Completed by id"),
        (second, by_ref.group(1), "Completed by reference name"),
    ]:
        assert workflow.status is WorkflowStatus.COMPLETED
        task = workflow.tasks[-1] if workflow.tasks else None
        assert task is not None
        assert task.task_id == task_id
        assert task.reference_task_name == definitions.LONG_RUNNING_REF
        assert task.poll_count == 1  # completed from outside, not by a second poll
        output = task.output_data or {}
        assert output["message"] == message
        assert output["keys"] == ["Key1", "Key2"]
        assert isinstance(output["value"], float)
        assert (workflow.output or {})["long_running"] == output
    # By id replaces the task's output; by reference name merges into it.
    assert "stage" not in (first.output or {})["long_running"]
    assert (second.output or {})["long_running"]["stage"] == "waiting"
