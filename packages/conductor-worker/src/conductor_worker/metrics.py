"""Prometheus metrics of the workers, and the HTTP endpoint that serves them.

Every series carries the label ``taskType``. Counters get prometheus_client's ``_total`` suffix;
times are histograms in seconds, sizes histograms in bytes. See the README's metrics table.

Metrics live in a registry: by default conductor-worker's own (created on first use, never at
import), which ``start_metrics_server()`` serves; pass ``registry=`` to both TaskRunner and
start_metrics_server, or register ours into an existing one with ``WorkerMetrics(registry)``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import start_http_server

from conductor_worker.errors import ConfigurationError

# From a fast loopback poll to an hour-long task.
TIME_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0, 900.0, 3600.0,
)  # fmt: skip
SIZE_BUCKETS = (64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216)

_lock = threading.Lock()
_default_registry: CollectorRegistry | None = None
_by_registry: dict[int, WorkerMetrics] = {}


def default_registry() -> CollectorRegistry:
    """conductor-worker's registry, created on first use."""
    global _default_registry
    with _lock:
        if _default_registry is None:
            _default_registry = CollectorRegistry()
        return _default_registry


def metrics_for(registry: CollectorRegistry | None = None) -> WorkerMetrics:
    """The WorkerMetrics registered in `registry` (created once per registry)."""
    registry = registry or default_registry()
    with _lock:
        metrics = _by_registry.get(id(registry))
        if metrics is None:
            metrics = _by_registry[id(registry)] = WorkerMetrics(registry)
        return metrics


class WorkerMetrics:
    """The metric families; one instance per registry (use metrics_for())."""

    def __init__(self, registry: CollectorRegistry) -> None:
        t = ("taskType",)
        r = registry
        self.registry = registry
        self.poll = Counter("task_poll_counter", "Polls made", t, registry=r)
        self.poll_error = Counter(
            "task_poll_error",
            "Polls that failed. status: the HTTP status, or timeout, connection, "
            "malformed_response. includeRetries: true when earlier polls had failed too.",
            ("taskType", "includeRetries", "status"),
            registry=r,
        )
        self.execute_error = Counter(
            "task_execute_error", "Executions that raised or returned a failure", t, registry=r
        )
        self.update_error = Counter(
            "task_update_error", "Result updates the server did not accept", t, registry=r
        )
        self.poll_time = Histogram(
            "task_poll_time", "Time to poll a batch, seconds", t, buckets=TIME_BUCKETS, registry=r
        )
        self.execute_time = Histogram(
            "task_execute_time", "Time to execute a task, seconds", t,
            buckets=TIME_BUCKETS, registry=r,
        )  # fmt: skip
        self.result_size = Histogram(
            "task_result_size", "Bytes of JSON outputData sent", t,
            buckets=SIZE_BUCKETS, registry=r,
        )  # fmt: skip
        self.update_time = Histogram(
            "task_update_time", "Time to send a result, seconds", t,
            buckets=TIME_BUCKETS, registry=r,
        )  # fmt: skip
        self.polled = Counter("task_polled", "Tasks received from polls", t, registry=r)
        self.undelivered = Counter(
            "task_result_undelivered", "Results given up on after retries", t, registry=r
        )
        self.in_flight = Gauge("task_in_flight", "Tasks being executed", t, registry=r)
        self.free_slots = Gauge(
            "task_free_slots", "Free execution slots (batch size minus in flight)", t, registry=r
        )
        self.paused = Gauge("task_paused", "1 while polling is paused", t, registry=r)

    def for_task_type(self, task_type: str) -> TaskTypeMetrics:
        return TaskTypeMetrics(self, task_type)


class TaskTypeMetrics:
    """The children of each family for one task type, bound once (labels() is not free)."""

    def __init__(self, m: WorkerMetrics, task_type: str) -> None:
        self._m = m
        self.task_type = task_type
        self.poll = m.poll.labels(task_type)
        self.execute_error = m.execute_error.labels(task_type)
        self.update_error = m.update_error.labels(task_type)
        self.poll_time = m.poll_time.labels(task_type)
        self.execute_time = m.execute_time.labels(task_type)
        self.result_size = m.result_size.labels(task_type)
        self.update_time = m.update_time.labels(task_type)
        self.polled = m.polled.labels(task_type)
        self.undelivered = m.undelivered.labels(task_type)
        self.in_flight = m.in_flight.labels(task_type)
        self.free_slots = m.free_slots.labels(task_type)
        self.paused = m.paused.labels(task_type)

    def poll_failed(self, status: str, after_failures: bool) -> None:
        self._m.poll_error.labels(
            self.task_type, "true" if after_failures else "false", status
        ).inc()


@dataclass(frozen=True)
class MetricsSettings:
    """Where the metrics endpoint listens: http://<address>:<port><path>."""

    port: int = 2112
    path: str = "/metrics"
    address: str = "0.0.0.0"

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigurationError(f"metrics port out of range: {self.port}")
        if not self.path.startswith("/"):
            raise ConfigurationError(f"metrics path must start with '/': {self.path!r}")


class MetricsServer:
    """A running metrics endpoint; stop() closes it."""

    def __init__(self, server: Any, thread: threading.Thread, settings: MetricsSettings) -> None:
        self._server = server
        self._thread = thread
        self.settings = settings
        self.port: int = server.server_address[1]

    @property
    def url(self) -> str:
        host = self.settings.address
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        return f"http://{host}:{self.port}{self.settings.path}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def start_metrics_server(
    settings: MetricsSettings | None = None, registry: CollectorRegistry | None = None
) -> MetricsServer:
    """Serve the metrics over HTTP in a background thread; returns at once.

    Port 0 picks a free port (see `.port`). The path is served exactly; prometheus_client
    serves every path, so other paths answer 404 here.
    """
    settings = settings or MetricsSettings()
    registry = registry or default_registry()
    metrics_for(registry)  # the families exist (at zero) from the first scrape
    server, thread = start_http_server(settings.port, settings.address, registry=registry)
    _restrict_path(server, settings.path)
    return MetricsServer(server, thread, settings)


def _restrict_path(server: Any, path: str) -> None:
    handler = server.RequestHandlerClass
    original = handler.do_GET

    def do_get(self: Any) -> None:
        if self.path.split("?", 1)[0] != path:
            self.send_error(404, "metrics are served at " + path)
            return
        original(self)

    server.RequestHandlerClass = type("MetricsHandler", (handler,), {"do_GET": do_get})
