"""The public surface of conductor_worker, pinned; and importing it has no side effects.

Changing ``__all__`` is an API change: update the list below on purpose, never to make this pass.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import conductor_worker

REPO_ROOT = Path(__file__).resolve().parents[2]

PUBLIC_NAMES = {
    # connecting
    "AuthenticationSettings",
    "ConductorClient",
    "HttpSettings",
    # running workers
    "RetryPolicy",
    "RunnerState",
    "TaskRunner",
    "WorkerOptions",
    "WorkerDeclaration",
    "worker_task",
    # inside a worker
    "NoTaskContextError",
    "TaskContext",
    "in_progress",
    "new_task_result",
    "task_context",
    # task management
    "TaskExecutor",
    # models (generated, re-exported)
    "Task",
    "TaskResult",
    "TaskResultStatus",
    # metrics
    "MetricsServer",
    "MetricsSettings",
    "WorkerMetrics",
    "metrics_for",
    "start_metrics_server",
    # delivery
    "PendingResult",
    # errors
    "ConductorWorkerError",
    "ConfigurationError",
    "InputBindingError",
    "NonRetryableError",
    "OutputSerializationError",
    "ServerError",
    "WorkerSignatureError",
}


def test_all_is_exactly_the_public_names() -> None:
    assert set(conductor_worker.__all__) == PUBLIC_NAMES
    assert len(conductor_worker.__all__) == len(PUBLIC_NAMES)  # no name listed twice


@pytest.mark.parametrize("name", sorted(PUBLIC_NAMES))
def test_every_public_name_is_importable(name: str) -> None:
    namespace: dict[str, object] = {}
    exec(f"from conductor_worker import {name}", namespace)

    assert namespace[name] is getattr(conductor_worker, name)


def test_star_import_gives_exactly_the_public_names() -> None:
    namespace: dict[str, object] = {}
    exec("from conductor_worker import *", namespace)

    assert set(namespace) - {"__builtins__"} == PUBLIC_NAMES


def test_errors_share_one_root() -> None:
    errors = [
        conductor_worker.ConfigurationError,
        conductor_worker.InputBindingError,
        conductor_worker.NonRetryableError,
        conductor_worker.OutputSerializationError,
        conductor_worker.ServerError,
        conductor_worker.NoTaskContextError,
        conductor_worker.WorkerSignatureError,
    ]

    assert all(issubclass(error, conductor_worker.ConductorWorkerError) for error in errors)


def test_generated_models_are_re_exported_not_copied() -> None:
    from conductor_client import models

    assert conductor_worker.Task is models.Task
    assert conductor_worker.TaskResult is models.TaskResult
    assert conductor_worker.TaskResultStatus is models.TaskResultStatus


IMPORT_PROBE = textwrap.dedent(
    """
    import logging
    import socket
    import sys
    import threading

    import prometheus_client
    import urllib3  # its own import probes IPv6 with a socket: not ours to check

    sockets = []
    _init = socket.socket.__init__

    def recording_init(self, *args, **kwargs):
        sockets.append(args)
        _init(self, *args, **kwargs)

    socket.socket.__init__ = recording_init

    root = logging.getLogger()
    root_handlers = list(root.handlers)
    root_level = root.level
    threads = set(threading.enumerate())
    metric_names = {m.name for m in prometheus_client.REGISTRY.collect()}

    import conductor_worker  # the import under test

    problems = []
    if set(threading.enumerate()) != threads:
        problems.append(f"threads started: {set(threading.enumerate()) - threads}")
    if root.handlers != root_handlers:
        problems.append(f"root logger handlers changed: {root.handlers}")
    if root.level != root_level:
        problems.append(f"root logger level changed to {root.level}")
    if logging.getLogger("conductor_worker").handlers != []:
        problems.append("conductor_worker logger has handlers")
    for name, logger in sorted(logging.Logger.manager.loggerDict.items()):
        if name.startswith(("conductor_worker", "conductor_client")):
            if isinstance(logger, logging.Logger) and logger.handlers:
                problems.append(f"logger {name} has handlers {logger.handlers}")
    if sockets:
        problems.append(f"sockets created: {sockets}")
    new_metrics = {m.name for m in prometheus_client.REGISTRY.collect()} - metric_names
    if new_metrics:
        problems.append(f"metrics registered in the default registry: {sorted(new_metrics)}")
    print("\\n".join(problems) if problems else "clean")
    """
)


def test_import_has_no_side_effects() -> None:
    # Settings that would fail validation if anything read them at import time.
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(REPO_ROOT),
        "CONDUCTOR_SERVER_URL": "not a url",
        "CONDUCTOR_AUTH_KEY": "only-a-key",
        "CONDUCTOR_WORKER_BATCH_SIZE": "not a number",
    }

    result = subprocess.run(
        [sys.executable, "-c", IMPORT_PROBE],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout == "clean\n"  # nothing else printed by the library either
    assert result.stderr == ""
