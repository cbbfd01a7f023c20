"""The `conductor-worker` CLI as a user runs it: a child process, against the real server.

`python -m conductor_worker run examples.workers` runs the example workers until workflows
complete; SIGTERM drains it (tasks in flight finish and are reported, exit 0); and each way of
getting it wrong ends with one clear line on stderr and the documented exit code.

The example task types have fixed names, so every run here polls a task domain of its own and
schedules its workflows there: other workers of the same types on a shared server never see them.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import urllib3

from conductor_client.models import StartWorkflowRequest, WorkflowStatus
from conductor_worker import ConductorClient
from examples import definitions

if TYPE_CHECKING:  # the `conductor` fixture's helper; a test module does not import its conftest
    from tests.integration.conftest import Conductor

pytestmark = pytest.mark.timeout(120)

REPO_ROOT = Path(__file__).resolve().parents[2]
EXIT_USAGE, EXIT_IMPORT, EXIT_NO_WORKERS, EXIT_UNREACHABLE = 2, 3, 4, 5


class Cli:
    """One `python -m conductor_worker ...` child process, its stderr in a file."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path, log: Path) -> None:
        self.log = log
        self._out = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "conductor_worker", *args],
            cwd=cwd,
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
            if self.proc.poll() is not None:
                pytest.fail(f"the CLI exited ({self.proc.returncode}):\n{self.output()}")
            if time.monotonic() > deadline:
                pytest.fail(
                    f"no {pattern!r} in the CLI's output after {timeout:g}s:\n{self.output()}"
                )
            time.sleep(0.05)

    def terminate(self, timeout: float = 45.0) -> int:
        """SIGTERM, then the exit code (fails the test if it does not exit in time)."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the CLI did not exit {timeout:g}s after SIGTERM:\n{self.output()}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._out.close()


@pytest.fixture
def domain(unique: Callable[[str], str]) -> str:
    return unique("cli")


@pytest.fixture
def start_cli(conductor_url: str, domain: str, tmp_path: Path) -> Iterator[Callable[..., Cli]]:
    """Starts `conductor-worker run examples.workers ...` polling this test's domain."""
    started: list[Cli] = []

    def start(*extra: str, callback_seconds: int = 1) -> Cli:
        env = {
            **os.environ,
            "CONDUCTOR_SERVER_URL": conductor_url,
            "EXAMPLE_CALLBACK_SECONDS": str(callback_seconds),
        }
        args = ["run", "examples.workers", "--metrics-port", "0", "--metrics-address",
                "127.0.0.1", "--domain", domain, "--grace", "20", *extra]  # fmt: skip
        cli = Cli(args, env, REPO_ROOT, tmp_path / f"cli-{len(started)}.log")
        started.append(cli)
        cli.wait_for_output(r"running \d+ worker\(s\)")
        return cli

    yield start
    for cli in started:
        cli.close()


@pytest.fixture
def registered(client: ConductorClient) -> None:
    definitions.register(client)


def start_workflows(
    conductor: Conductor, domain: str, inputs: list[dict[str, object]]
) -> list[str]:
    ids = definitions.start_workflows(conductor.client, inputs, domain=domain)
    conductor.workflow_ids.extend(ids)  # terminated at teardown if still running
    return ids


@pytest.mark.usefixtures("registered")
def test_run_executes_the_example_workers_until_workflows_complete(
    conductor: Conductor, start_cli: Callable[..., Cli], domain: str
) -> None:
    cli = start_cli()
    metrics_url = cli.wait_for_output(r"metrics at (http://\S+)").group(1)
    inputs: list[dict[str, object]] = [
        {"name": f"user {i}", "repeat": i, "text": f"text {i}", "delay": 0.05} for i in (1, 2, 3)
    ]
    ids = start_workflows(conductor, domain, inputs)

    workflows = conductor.wait_for_workflows(ids, timeout=60)

    for workflow, given in zip(workflows, inputs, strict=True):
        assert workflow.status is WorkflowStatus.COMPLETED, workflow.reason_for_incompletion
        output = workflow.output or {}
        assert output["message"] == f"Hello {given['name']}"
        assert output["shout"] == f"TEXT {given['repeat']}"
        assert output["summary"]["greeting"].count("Hello") == given["repeat"]
        assert output["long_running"] == {"stage": "done", "job": given["name"], "polls": 2}
    metrics = urllib3.request("GET", metrics_url, timeout=5.0).data.decode()
    executed = re.search(
        r'^task_execute_time_count\{taskType="simple_task"\} (\S+)$', metrics, re.M
    )
    assert executed, metrics
    assert float(executed.group(1)) >= 3, metrics
    assert cli.terminate() == 0, cli.output()
    assert "stopped" in cli.output()


def test_sigterm_drains_tasks_in_flight(
    client: ConductorClient, conductor: Conductor, start_cli: Callable[..., Cli], domain: str
) -> None:
    # A workflow of one async task that sleeps 4 s: SIGTERM lands while all of them run. The
    # workflows are queued before the CLI starts, so one poll takes all five at once.
    client.metadata.register_task_defs(
        [t for t in definitions.task_defs() if t.name == definitions.ASYNC_TASK]
    )
    workflow_name = conductor.workflow_def(
        [
            conductor.simple_task(
                definitions.ASYNC_TASK,
                "async_ref",
                {"text": "${workflow.input.text}", "delay_seconds": 4},
            )
        ],
        prefix="drain",
        output_parameters={"shout": "${async_ref.output.shout}"},
    )
    ids = [
        client.workflows.start_workflow(
            StartWorkflowRequest(
                name=workflow_name,
                version=1,
                input={"text": f"drain {i}"},
                task_to_domain={"*": domain},
            )
        )
        for i in range(5)
    ]
    conductor.workflow_ids.extend(ids)
    cli = start_cli()
    metrics_url = cli.wait_for_output(r"metrics at (http://\S+)").group(1)

    # Polled (IN_PROGRESS on the server) is not yet running: a task still between the poll and
    # its worker is handed back at shutdown. The in-flight gauge counts tasks given a slot.
    def all_in_flight() -> bool:
        metrics = urllib3.request("GET", metrics_url, timeout=5.0).data.decode()
        found = re.search(
            rf'^task_in_flight\{{taskType="{definitions.ASYNC_TASK}"\}} (\S+)$', metrics, re.M
        )
        return found is not None and float(found.group(1)) == len(ids)

    conductor.wait_until(all_in_flight, timeout=30, message="not all five tasks in flight")
    signalled_ms = int(time.time() * 1000)

    assert cli.terminate() == 0, cli.output()

    workflows = conductor.wait_for_workflows(ids, timeout=10)
    for i, workflow in enumerate(workflows):
        assert workflow.status is WorkflowStatus.COMPLETED, workflow.reason_for_incompletion
        assert workflow.output == {"shout": f"DRAIN {i}"}
        (task,) = workflow.tasks or []
        # Finished by the draining process itself: after the signal, first time round.
        assert (task.end_time or 0) > signalled_ms
        assert task.poll_count == 1
        assert task.retry_count == 0
    assert "received SIGTERM" in cli.output()


# -- errors: one line on stderr, the documented exit code ------------------------------------


def closed_port() -> int:
    """A loopback port that nothing listens on (bound for a moment, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def run_cli(
    *args: str, cwd: Path = REPO_ROOT, server_url: str | None = None, metrics: bool = False
) -> subprocess.CompletedProcess[str]:
    url = server_url or f"http://127.0.0.1:{closed_port()}/api"
    env = {**os.environ, "CONDUCTOR_SERVER_URL": url}
    return subprocess.run(
        [sys.executable, "-m", "conductor_worker", "run", *args]
        + ([] if metrics else ["--no-metrics"]),
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def assert_one_error_line(proc: subprocess.CompletedProcess[str], *fragments: str) -> None:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("conductor-worker: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0]
    assert proc.stdout == ""


def test_a_module_that_does_not_exist_exits_3() -> None:
    proc = run_cli("examples.no_such_module")

    assert proc.returncode == EXIT_IMPORT
    assert_one_error_line(proc, "no module named 'examples.no_such_module'")


def test_a_module_that_fails_to_import_exits_3(tmp_path: Path) -> None:
    (tmp_path / "broken_workers.py").write_text("raise RuntimeError('boom at import')\n")

    proc = run_cli("broken_workers", cwd=tmp_path)

    assert proc.returncode == EXIT_IMPORT
    assert_one_error_line(proc, "importing 'broken_workers' failed", "RuntimeError: boom")


def test_a_module_without_workers_exits_4(tmp_path: Path) -> None:
    (tmp_path / "plain.py").write_text("def not_a_worker(x: int) -> int:\n    return x\n")

    proc = run_cli("plain", cwd=tmp_path)

    assert proc.returncode == EXIT_NO_WORKERS
    assert_one_error_line(proc, "no workers found in plain", "@worker_task")


def test_an_unreachable_server_exits_5() -> None:
    url = f"http://127.0.0.1:{closed_port()}/api"

    started = time.monotonic()
    proc = run_cli("examples.workers", server_url=url)

    assert proc.returncode == EXIT_UNREACHABLE
    assert_one_error_line(proc, f"cannot reach the server at {url}", "Connection refused")
    assert time.monotonic() - started < 30


def test_a_metrics_port_in_use_exits_2(conductor_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        proc = run_cli(
            "examples.workers",
            "--metrics-port", str(port), "--metrics-address", "127.0.0.1",
            server_url=conductor_url, metrics=True,
        )  # fmt: skip

    assert proc.returncode == EXIT_USAGE
    assert_one_error_line(proc, f"cannot serve metrics on 127.0.0.1:{port}", "--no-metrics")
