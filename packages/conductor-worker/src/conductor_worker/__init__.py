"""Workers for the Conductor workflow engine.

    client = ConductorClient.from_env()
    runner = TaskRunner(client)
    runner.start_worker("simple_task", simple_worker, batch_size=1, poll_interval=1.0)
    runner.wait_workers()

Nothing here runs at import: no logging set-up, no threads, no environment reads.
"""

from __future__ import annotations

from conductor_client.models import Task, TaskResult, TaskResultStatus
from conductor_worker.client import ConductorClient
from conductor_worker.context import (
    NoTaskContextError,
    TaskContext,
    in_progress,
    new_task_result,
    task_context,
)
from conductor_worker.declarations import WorkerDeclaration, worker_task
from conductor_worker.delivery import PendingResult, RetryPolicy
from conductor_worker.errors import (
    ConductorWorkerError,
    ConfigurationError,
    InputBindingError,
    NonRetryableError,
    OutputSerializationError,
    WorkerSignatureError,
)
from conductor_worker.executor import TaskExecutor
from conductor_worker.metrics import (
    MetricsServer,
    MetricsSettings,
    WorkerMetrics,
    metrics_for,
    start_metrics_server,
)
from conductor_worker.options import WorkerOptions
from conductor_worker.runner import RunnerState, TaskRunner
from conductor_worker.settings import AuthenticationSettings, HttpSettings
from conductor_worker.transport import ServerError

__all__ = [
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
    "WorkerSignatureError",
    "ServerError",
]
