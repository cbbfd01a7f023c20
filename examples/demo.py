"""The demo behind scripts/demo.sh: the example workers, run by the CLI, under a batch of workflows.

    scripts/demo.sh [--workflows N] [--timeout SECONDS] ...     # sets up everything first
    python -m examples.demo --server-url URL ...                # a server you already have

1. registers the example task definitions and examples_workflow;
2. starts ``conductor-worker run examples.workers`` as a child process, with metrics on;
3. starts N workflows with varied input and shows their progress;
4. summarises: workflows completed and failed, tasks per second, task latency (p50/p95, from
   the server's own timestamps: scheduled -> end), the workers' metrics, one workflow's output.

Exits 0 only when every workflow completed (and the workers stopped cleanly). The workers are
stopped at the end, on Ctrl-C and on SIGTERM too. Everything runs in a task domain of its own,
so other workers of the same task types on a shared server neither take nor lose its tasks.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import urllib3

from conductor_client.exceptions import ApiException
from conductor_client.models import Workflow
from conductor_worker import ConductorClient, HttpSettings
from examples import definitions

REPO_ROOT = Path(__file__).resolve().parent.parent
TERMINAL = frozenset({"COMPLETED", "FAILED", "TIMED_OUT", "TERMINATED"})
# Metric families shown in the summary (one line per task type each).
SHOWN_METRICS = ("task_execute_time_count", "task_execute_error_total", "task_update_error_total")
WORKERS_GRACE_SECONDS = 10.0
NAMES = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Margaret", "Ken"]
WORDS = ["workflow", "worker", "task", "conductor", "python", "queue", "poll", "result"]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="demo", description="Run the example workers under a batch of workflows."
    )
    parser.add_argument(
        "--workflows", type=int, default=200, metavar="N", help="how many to run (default 200)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="give up when the workflows are not done by then (default 300)",
    )
    parser.add_argument(
        "--callback-seconds",
        type=int,
        default=1,
        metavar="SECONDS",
        help="the long-running task's callback (default 1; the example's own default is 60)",
    )
    parser.add_argument(
        "--server-url",
        default=os.environ.get("CONDUCTOR_SERVER_URL") or "http://localhost:8080/api",
        help="the server's API URL (default: $CONDUCTOR_SERVER_URL)",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed for the workflows' input")
    args = parser.parse_args(argv)
    if args.workflows < 1:
        parser.error("--workflows must be at least 1")
    if args.timeout <= 0:
        parser.error("--timeout must be positive")
    return args


def say(message: str = "") -> None:
    print(message, flush=True)


# -- the workers: the CLI in a child process ---------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Workers:
    """`conductor-worker run examples.workers` as a child process, with its log in a file."""

    def __init__(self, server_url: str, domain: str, callback_seconds: int, log_dir: Path) -> None:
        self.server_url = server_url
        self.domain = domain
        self.callback_seconds = callback_seconds
        self.metrics_url = ""
        self.log_path = log_dir / "workers.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: TextIO | None = None
        self._signalled = False

    def start(self, ready_timeout: float = 30.0) -> str:
        port = free_port()
        script = Path(sys.executable).with_name("conductor-worker")
        command = [str(script)] if script.exists() else [sys.executable, "-m", "conductor_worker"]
        command += [
            "run", "examples.workers",
            "--metrics-port", str(port), "--metrics-address", "127.0.0.1",
            "--domain", self.domain, "--grace", str(WORKERS_GRACE_SECONDS),
        ]  # fmt: skip
        env = {
            **os.environ,
            "CONDUCTOR_SERVER_URL": self.server_url,
            "EXAMPLE_CALLBACK_SECONDS": str(self.callback_seconds),
        }
        self._log = self.log_path.open("w")
        # A session of its own: a Ctrl-C in the terminal reaches only this demo, which then
        # stops the workers with one SIGTERM (a second signal would make them exit at once).
        self._proc = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.metrics_url = f"http://127.0.0.1:{port}/metrics"
        deadline = time.monotonic() + ready_timeout
        while not self._metrics_served():
            if self._proc.poll() is not None:
                raise DemoError(
                    f"the workers exited with status {self._proc.returncode}:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise DemoError(
                    f"the workers did not start within {ready_timeout:g}s:\n{self.log_tail()}"
                )
            time.sleep(0.1)
        return " ".join(["conductor-worker", *command[command.index("run") :]])

    def _metrics_served(self) -> bool:
        try:
            return bool(scrape(self.metrics_url, timeout=1.0))
        except Exception:
            return False

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def stop(self) -> int | None:
        """SIGTERM, which drains them; SIGKILL if they are still there after the grace period.
        Returns their exit status (None when they never started)."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            if not self._signalled:
                self._signalled = True
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=WORKERS_GRACE_SECONDS + 10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._proc = None
        if self._log is not None:
            self._log.close()
        return proc.returncode

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def scrape(url: str, timeout: float = 5.0) -> str:
    response = urllib3.request("GET", url, timeout=timeout, retries=False)
    if response.status != 200:
        raise DemoError(f"GET {url}: HTTP {response.status}")
    return response.data.decode()


def metric_lines(text: str, names: Iterable[str]) -> list[str]:
    wanted = tuple(f"{name}{{" for name in names)
    return [line for line in text.splitlines() if line.startswith(wanted)]


# -- the workflows ------------------------------------------------------------------------------


def workflow_inputs(count: int, seed: int | None) -> list[dict[str, Any]]:
    """Varied input: names, repeats, texts and async delays differ from one workflow to the next."""
    rng = random.Random(seed)
    return [
        {
            "name": f"{rng.choice(NAMES)} #{i + 1}",
            "repeat": rng.randint(1, 3),
            "text": " ".join(rng.sample(WORDS, 3)),
            "delay": round(rng.uniform(0.01, 0.3), 3),
        }
        for i in range(count)
    ]


@dataclass
class Progress:
    """Where the workflows are: started ones by id, with their last known status."""

    total: int
    ids: list[str] = field(default_factory=list)
    status: dict[str, str] = field(default_factory=dict)

    def count(self, predicate: Callable[[str], bool]) -> int:
        return sum(1 for w in self.ids if predicate(self.status.get(w, "RUNNING")))

    @property
    def completed(self) -> int:
        return self.count(lambda s: s == "COMPLETED")

    @property
    def failed(self) -> int:
        return self.count(lambda s: s in TERMINAL and s != "COMPLETED")

    @property
    def unfinished(self) -> int:
        """Not started yet, or not done yet."""
        return self.total - self.completed - self.failed

    def line(self, elapsed: float) -> str:
        running = len(self.ids) - self.completed - self.failed
        return (
            f"  started {len(self.ids):>5}/{self.total}   completed {self.completed:>5}   "
            f"failed {self.failed:>3}   running {running:>5}   elapsed {elapsed:6.1f}s"
        )


def run_workflows(
    client: ConductorClient,
    inputs: Sequence[dict[str, Any]],
    domain: str,
    progress: Progress,
    deadline: float,
) -> bool:
    """Start the workflows and follow them until all are done (True) or the deadline."""
    live = sys.stdout.isatty()
    began = time.monotonic()
    last_print = 0.0

    def start(one: dict[str, Any]) -> str:
        return definitions.start_workflow(client, one, domain=domain, correlation_id=domain)

    def status_of(workflow_id: str) -> str:
        workflow = client.workflows.get_workflow(workflow_id, include_tasks=False)
        return workflow.status.value if workflow.status is not None else "RUNNING"

    # Two pools: status checks must not queue behind the starts.
    starts: list[Future[str]] = []
    try:
        with (
            ThreadPoolExecutor(max_workers=8, thread_name_prefix="demo-start") as starting,
            ThreadPoolExecutor(max_workers=4, thread_name_prefix="demo-watch") as watching,
        ):
            starts = [starting.submit(start, one) for one in inputs]
            try:
                while True:
                    progress.ids[:] = [f.result() for f in starts if f.done()]  # raises failures
                    pending = [w for w in progress.ids if progress.status.get(w) not in TERMINAL]
                    statuses = watching.map(status_of, pending)
                    for workflow_id, status in zip(pending, statuses, strict=True):
                        progress.status[workflow_id] = status
                    now = time.monotonic()
                    done = progress.unfinished == 0
                    if live:
                        print("\r" + progress.line(now - began), end="", flush=True)
                    elif done or now - last_print >= 2.0:
                        say(progress.line(now - began))
                        last_print = now
                    if done or now >= deadline:
                        return done
                    time.sleep(0.5)
            finally:
                for future in starts:
                    future.cancel()
                if live:
                    say()
    finally:
        # Leaving the pools waited for the starts already under way: count them all, so that
        # none is left behind unterminated after an interrupt.
        progress.ids[:] = [
            f.result() for f in starts if f.done() and not f.cancelled() and not f.exception()
        ]


# -- the summary --------------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return float("nan")
    rank = max(1, round(p / 100 * len(sorted_values) + 0.5 - 1e-9))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def secs(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}s"


@dataclass
class TaskStats:
    latencies: dict[str, list[float]]  # task type -> seconds, scheduled -> end
    first_start_ms: int
    last_end_ms: int

    @classmethod
    def of(cls, workflows: Iterable[Workflow]) -> TaskStats:
        latencies: dict[str, list[float]] = {}
        starts: list[int] = []
        ends: list[int] = []
        for workflow in workflows:
            if workflow.start_time:
                starts.append(workflow.start_time)
            for task in workflow.tasks or []:
                status = task.status.value if task.status is not None else ""
                if status != "COMPLETED" or not task.end_time or not task.scheduled_time:
                    continue
                seconds = (task.end_time - task.scheduled_time) / 1000
                latencies.setdefault(task.task_type or "?", []).append(seconds)
                ends.append(task.end_time)
        for values in latencies.values():
            values.sort()
        return cls(latencies, min(starts, default=0), max(ends, default=0))

    @property
    def all(self) -> list[float]:
        return sorted(v for values in self.latencies.values() for v in values)

    @property
    def span_seconds(self) -> float:
        return max(0.001, (self.last_end_ms - self.first_start_ms) / 1000)


def print_summary(
    stats: TaskStats,
    metrics_url: str,
    metrics_text: str,
    sample: Workflow | None,
) -> None:
    say()
    say("Task latency, scheduled -> completed (server timestamps):")
    say(f"  {'task type':<20} {'tasks':>6} {'p50':>8} {'p95':>8}")
    for task_type in sorted(stats.latencies):
        values = stats.latencies[task_type]
        say(
            f"  {task_type:<20} {len(values):>6} {secs(percentile(values, 50)):>8} "
            f"{secs(percentile(values, 95)):>8}"
        )
    every = stats.all
    say(
        f"  {'all':<20} {len(every):>6} {secs(percentile(every, 50)):>8} "
        f"{secs(percentile(every, 95)):>8}"
    )
    say("  (long_running_task includes its callback: the server holds it that long by design)")
    say()
    say(f"Worker metrics were served at {metrics_url} (Prometheus text format); excerpt:")
    for line in metric_lines(metrics_text, SHOWN_METRICS) or ["  (none scraped)"]:
        say(f"  {line}")
    if sample is not None:
        say()
        say(f"Output of workflow {sample.workflow_id}:")
        say(json.dumps(sample.output, indent=2, sort_keys=True))


# -- main ---------------------------------------------------------------------------------------


class DemoError(Exception):
    pass


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the demo as Ctrl-C does


def run(args: argparse.Namespace) -> int:
    client = ConductorClient(http=HttpSettings(args.server_url))
    domain = f"demo_{uuid.uuid4().hex[:8]}"
    log_dir = Path(tempfile.mkdtemp(prefix="conductor-demo."))
    workers = Workers(args.server_url, domain, args.callback_seconds, log_dir)
    ok = False
    progress = Progress(args.workflows)
    try:
        try:
            definitions.register(client)
        except Exception as error:
            raise DemoError(f"cannot register definitions at {args.server_url}: {error}") from None
        say(f"demo: server {args.server_url}; task domain {domain}")
        say(
            f"demo: registered {len(definitions.task_defs())} task definitions and "
            f"{definitions.WORKFLOW_NAME}"
        )
        command = workers.start()
        say(f"demo: workers running (pid {workers.pid}): {command}")
        say(f"demo: worker log {workers.log_path}")

        inputs = workflow_inputs(args.workflows, args.seed)
        say(
            f"demo: starting {len(inputs)} workflows of {definitions.WORKFLOW_NAME} "
            f"(long-running callback {args.callback_seconds}s) ..."
        )
        began = time.monotonic()
        all_done = run_workflows(client, inputs, domain, progress, began + args.timeout)
        elapsed = time.monotonic() - began
        if not all_done:
            say(f"demo: TIMEOUT after {args.timeout:g}s: {progress.unfinished} unfinished")
        # The metrics live in the workers: scrape them before stopping the workers, and stop
        # the workers before reading the workflows back, so that what is read is final.
        metrics_text = ""
        with contextlib.suppress(Exception):
            metrics_text = scrape(workers.metrics_url)
        worker_status = workers.stop()
        say(f"demo: workers stopped (exit status {worker_status})")

        def details(workflow_id: str) -> Workflow:
            return client.workflows.get_workflow(workflow_id, include_tasks=True)

        with ThreadPoolExecutor(max_workers=4, thread_name_prefix="demo") as pool:
            workflows = list(pool.map(details, progress.ids))
        for workflow in workflows:
            if workflow.workflow_id and workflow.status is not None:
                progress.status[workflow.workflow_id] = workflow.status.value

        stats = TaskStats.of(workflows)
        sample = next((w for w in workflows if w.status and w.status.value == "COMPLETED"), None)
        print_summary(stats, workers.metrics_url, metrics_text, sample)
        for workflow in workflows:
            if workflow.status and workflow.status.value != "COMPLETED":
                say(
                    f"demo: workflow {workflow.workflow_id} {workflow.status.value}: "
                    f"{workflow.reason_for_incompletion}"
                )
                break
        if worker_status != 0:
            say(f"demo: the workers exited with status {worker_status}; log: {workers.log_path}")
            say(workers.log_tail())

        tasks = len(stats.all)
        every = stats.all
        say()
        say(
            f"demo: {progress.total} workflows in {elapsed:.1f}s; {tasks} tasks in "
            f"{stats.span_seconds:.1f}s = {tasks / stats.span_seconds:.1f} tasks/s"
        )
        ok = progress.completed == progress.total and worker_status == 0
        say(
            f"summary: {progress.completed}/{progress.total} workflows completed, "
            f"{progress.failed} failed, {progress.unfinished} unfinished; "
            f"{tasks / stats.span_seconds:.1f} tasks/s; task latency "
            f"p50 {secs(percentile(every, 50))} p95 {secs(percentile(every, 95))}"
        )
        return 0 if ok else 1
    finally:
        # Cleanup is bounded (the workers' grace period, then SIGKILL): let nothing cut it short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        status = workers.stop()  # None when already stopped
        if status is not None:
            say(f"demo: workers stopped (exit status {status})")
        terminate_unfinished(client, progress)
        client.close()
        if ok:
            shutil.rmtree(log_dir, ignore_errors=True)
        else:
            say(f"demo: worker log kept in {workers.log_path}")


def terminate_unfinished(client: ConductorClient, progress: Progress) -> None:
    """Leave no workflow of ours running on the server (after a timeout or an interrupt)."""
    unfinished = [w for w in progress.ids if progress.status.get(w) not in TERMINAL]
    if not unfinished:
        return

    def terminate(workflow_id: str) -> str | None:
        try:
            client.workflows.terminate_workflow(workflow_id, reason="demo stopped")
            return None
        except ApiException as error:
            if error.status == 409:  # finished meanwhile
                return None
            return f"{type(error).__name__}: {str(error).strip()[:200]}"
        except Exception as error:
            return f"{type(error).__name__}: {str(error).strip()[:200]}"

    with ThreadPoolExecutor(max_workers=8, thread_name_prefix="demo") as pool:
        errors = [e for e in pool.map(terminate, unfinished) if e is not None]
    done = len(unfinished) - len(errors)
    say(f"demo: terminated {done} of {len(unfinished)} unfinished workflow(s)")
    if errors:
        say(f"demo: could not terminate {len(errors)}, e.g. {errors[0]}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return run(args)
    except (DemoError, ApiException, urllib3.exceptions.HTTPError) as error:
        say(f"demo: error: {type(error).__name__}: {error}")
        return 1
    except KeyboardInterrupt:
        say("\ndemo: interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
