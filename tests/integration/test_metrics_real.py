"""Worker metrics against a real Conductor server, read the way Prometheus reads them.

Workers run N workflows of two one-task workflows (task retryCount=0, so each task executes
exactly once); the metrics are scraped over HTTP from start_metrics_server() and parsed with
prometheus_client's parser, and the values must be exact.
"""

from __future__ import annotations

import contextlib
import json
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

import conductor_client as cc
from conductor_worker import ConductorClient, HttpSettings, TaskRunner
from conductor_worker.metrics import MetricsServer, MetricsSettings, start_metrics_server

pytestmark = pytest.mark.timeout(60)

N = 10
OUTPUT: dict[str, object] = {
    "greeting": "grüße, 世界 ✓",
    "items": [1, 2.5, True, None],
    "nested": {"k": "v"},
}
# outputData exactly as the worker sends it: compact UTF-8 JSON.
OUTPUT_BYTES = len(json.dumps(OUTPUT, separators=(",", ":"), ensure_ascii=False).encode())


def fixed_output() -> dict[str, object]:
    return OUTPUT


def fails_on_multiples_of_three(i: int) -> dict[str, int]:
    if i % 3 == 0:
        raise RuntimeError(f"input {i} is a multiple of three")
    return {"i": i}


FAILING_INPUTS = [i for i in range(N) if i % 3 == 0]


# -- local helpers -------------------------------------------------------------------------


Samples = dict[tuple[str, str], float]  # (sample name, taskType) -> value


def scrape(server: MetricsServer) -> Samples:
    """The worker samples at the endpoint, summed over labels other than taskType."""
    with urllib.request.urlopen(server.url, timeout=5) as answer:
        assert answer.status == 200
        text = answer.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            task_type = sample.labels.get("taskType")
            if task_type is None or sample.name.endswith("_created"):
                continue
            key = (sample.name, task_type)
            samples[key] = samples.get(key, 0.0) + sample.value
    return samples


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


@dataclass
class Definitions:
    """Task and workflow definitions made for one test, removed after it."""

    client: ConductorClient
    task_defs: list[str] = field(default_factory=list)
    workflow_defs: list[str] = field(default_factory=list)
    workflow_ids: list[str] = field(default_factory=list)

    def one_task_workflow(self, name: str, task_type: str) -> None:
        self.client.metadata.register_task_defs(
            [
                cc.TaskDef(
                    name=task_type,
                    retry_count=0,
                    timeout_seconds=120,
                    response_timeout_seconds=60,
                    owner_email="tests@example.com",
                )
            ]
        )
        self.task_defs.append(task_type)
        task = cc.WorkflowTask(
            name=task_type,
            task_reference_name="only",
            type="SIMPLE",
            input_parameters={"i": "${workflow.input.i}"},
        )
        definition = cc.WorkflowDef(
            name=name,
            version=1,
            schema_version=2,
            timeout_seconds=0,
            owner_email="tests@example.com",
            tasks=[task],
        )
        self.client.metadata.update_workflow_defs([definition])
        self.workflow_defs.append(name)

    def start(self, name: str, i: int) -> str:
        request = cc.StartWorkflowRequest(name=name, version=1, input={"i": i})
        workflow_id = self.client.workflows.start_workflow(request)
        self.workflow_ids.append(workflow_id)
        return workflow_id

    def status(self, workflow_id: str) -> cc.WorkflowStatus | None:
        return self.client.workflows.get_workflow_status_summary(workflow_id).status

    def cleanup(self) -> None:
        workflows, metadata = self.client.workflows, self.client.metadata
        for workflow_id in self.workflow_ids:
            with contextlib.suppress(Exception):
                if self.status(workflow_id) == cc.WorkflowStatus.RUNNING:
                    workflows.terminate_workflow(workflow_id, reason="test cleanup")
                workflows.delete_workflow(workflow_id, archive_workflow=False)
        for name in self.workflow_defs:
            with contextlib.suppress(Exception):
                metadata.unregister_workflow_def(name, 1)
        for task_type in self.task_defs:
            with contextlib.suppress(Exception):
                metadata.unregister_task_def(task_type)


@pytest.fixture
def definitions(conductor_url: str) -> Iterator[Definitions]:
    client = ConductorClient(http=HttpSettings(conductor_url, timeout_seconds=10))
    made = Definitions(client)
    try:
        yield made
    finally:
        made.cleanup()
        client.close()


# -- the test ------------------------------------------------------------------------------


def test_metrics_of_real_work_are_exact(
    definitions: Definitions, conductor_url: str, unique: Callable[[str], str]
) -> None:
    ok, flaky = unique("metrics_ok"), unique("metrics_flaky")
    definitions.one_task_workflow(ok + "_wf", ok)
    definitions.one_task_workflow(flaky + "_wf", flaky)

    registry = CollectorRegistry()
    client = ConductorClient(http=HttpSettings(conductor_url, timeout_seconds=10))
    runner = TaskRunner(client, registry=registry, shutdown_grace_seconds=10)
    server = start_metrics_server(MetricsSettings(port=0, address="127.0.0.1"), registry)
    try:
        runner.start_worker(ok, fixed_output, batch_size=4, poll_interval=0.05, poll_timeout=0.5)
        runner.start_worker(
            flaky, fails_on_multiples_of_three, batch_size=4, poll_interval=0.05, poll_timeout=0.5
        )
        ok_ids = [definitions.start(ok + "_wf", i) for i in range(N)]
        flaky_ids = [definitions.start(flaky + "_wf", i) for i in range(N)]

        def all_reported() -> bool:
            s = scrape(server)

            def done(t: str) -> bool:
                sent = s.get(("task_update_time_count", t), 0)
                failed = s.get(("task_update_error_total", t), 0)
                executed = s.get(("task_execute_time_count", t))
                return executed == N and sent + failed >= N and s.get(("task_in_flight", t)) == 0

            return done(ok) and done(flaky)

        wait_for(all_reported, 30, f"{N} executions of each type reported, none in flight")

        # The server saw the same: every ok workflow completed, exactly the failing inputs failed.
        completed, failed = cc.WorkflowStatus.COMPLETED, cc.WorkflowStatus.FAILED
        expected = {wid: completed for wid in ok_ids}
        for i, wid in enumerate(flaky_ids):
            expected[wid] = failed if i in FAILING_INPUTS else completed
        wait_for(
            lambda: all(definitions.status(wid) == want for wid, want in expected.items()),
            15,
            "the workflows to end as expected",
        )
        assert runner.shutdown(timeout=10)  # polls finished, so the poll counts are final
        s = scrape(server)
    finally:
        runner.shutdown(timeout=10)
        server.stop()
        client.close()

    def value(name: str, task_type: str) -> float:
        return s.get((name, task_type), 0.0)

    for task_type in (ok, flaky):
        assert value("task_execute_time_count", task_type) == N
        assert value("task_polled_total", task_type) == N
        assert value("task_result_size_count", task_type) == N
        assert value("task_update_time_count", task_type) == N
        assert value("task_update_error_total", task_type) == 0
        assert value("task_result_undelivered_total", task_type) == 0
        assert value("task_in_flight", task_type) == 0
        polls = value("task_poll_counter_total", task_type)
        assert polls >= 1
        assert polls == value("task_poll_time_count", task_type) + value(
            "task_poll_error_total", task_type
        )

    assert value("task_execute_error_total", ok) == 0
    assert value("task_result_size_sum", ok) == N * OUTPUT_BYTES

    assert value("task_execute_error_total", flaky) == len(FAILING_INPUTS)
    # A failure sends outputData {}; a success {"i":<i>}.
    sent = sum(2 if i in FAILING_INPUTS else len(f'{{"i":{i}}}') for i in range(N))
    assert value("task_result_size_sum", flaky) == sent
