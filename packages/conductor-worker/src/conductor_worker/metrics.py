"""Prometheus metrics of the workers, and the HTTP endpoint that serves them.

Every series carries the label ``taskType``. Counters get prometheus_client's ``_total`` suffix;
times are histograms in seconds, sizes histograms in bytes. See docs/metrics.md for the table.

Metrics live in a registry: by default conductor-worker's own (created on first use, never at
import), which ``start_metrics_server()`` serves. To use another registry, pass ``registry=`` to
both TaskRunner and start_metrics_server, or register ours into one you already serve with
``WorkerMetrics(registry)``. The families are created once per registry, whoever asks first:
any number of runners and ``WorkerMetrics`` objects can share one registry.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import socketserver
import threading
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    make_wsgi_app,
)

from conductor_worker.errors import ConfigurationError

log = logging.getLogger(__name__)

__all__ = [
    "EXECUTE_TIME_BUCKETS",
    "REQUEST_TIME_BUCKETS",
    "SIZE_BUCKETS",
    "TIME_BUCKETS",
    "MetricsServer",
    "MetricsSettings",
    "TaskTypeMetrics",
    "WorkerMetrics",
    "default_registry",
    "metrics_for",
    "start_metrics_server",
]

# A poll is a long poll (2 s by default, at most 5 s) on top of the network; an update is one
# round trip; both end at the client's read timeout (30 s by default). Past 30 s is +Inf.
REQUEST_TIME_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
# From a function that returns at once to an hour-long task.
EXECUTE_TIME_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0, 900.0, 3600.0,
)  # fmt: skip
TIME_BUCKETS = EXECUTE_TIME_BUCKETS  # the name of earlier versions
# From "{}" to 16 MiB, by fours; the server's default limit for an output is 10 MiB.
SIZE_BUCKETS = (64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216)

# Slow or silent scrapers must not hold a server thread forever.
SCRAPE_SOCKET_TIMEOUT_SECONDS = 10.0
# How often the idle server checks for stop(): the most stop() waits.
SERVER_POLL_INTERVAL_SECONDS = 0.1

_lock = threading.Lock()
_default_registry: CollectorRegistry | None = None
# Weak keys: a registry that nobody uses any more is freed with its families (tests make one
# per test; a cache keyed by id() that held the registries would keep every one of them).
_families_by_registry: weakref.WeakKeyDictionary[CollectorRegistry, _Families] = (
    weakref.WeakKeyDictionary()
)


def default_registry() -> CollectorRegistry:
    """conductor-worker's registry, created on first use.

    Besides the worker metrics it has prometheus_client's usual process_*, python_info and
    python_gc_* collectors, as prometheus_client's own default registry does.
    """
    global _default_registry
    with _lock:
        if _default_registry is None:
            registry = CollectorRegistry()
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
            GCCollector(registry=registry)
            _default_registry = registry
        return _default_registry


def metrics_for(registry: CollectorRegistry | None = None) -> WorkerMetrics:
    """The worker metrics in `registry` (default: conductor-worker's), registering them there
    the first time. Thread-safe; the same as ``WorkerMetrics(registry)``."""
    return WorkerMetrics(registry)


class WorkerMetrics:
    """The metric families in one registry.

    ``WorkerMetrics(registry)`` registers the families in `registry` the first time and reuses
    them afterwards, so it may be called any number of times for one registry (and TaskRunner
    calls it too). Raises ValueError when the registry already has other collectors with these
    names; nothing is left registered then.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = default_registry() if registry is None else registry
        families = _families_in(self.registry)
        self._families = families
        self.poll = families.poll
        self.poll_error = families.poll_error
        self.execute_error = families.execute_error
        self.update_error = families.update_error
        self.poll_time = families.poll_time
        self.execute_time = families.execute_time
        self.result_size = families.result_size
        self.update_time = families.update_time
        self.polled = families.polled
        self.undelivered = families.undelivered
        self.in_flight = families.in_flight
        self.free_slots = families.free_slots
        self.paused = families.paused

    def for_task_type(self, task_type: str) -> TaskTypeMetrics:
        return TaskTypeMetrics(self, task_type)


class GaugeSource(Protocol):
    """What the gauges read from a poller of one task type (the runner's per-type worker)."""

    @property
    def busy(self) -> int: ...

    @property
    def capacity(self) -> int: ...

    @property
    def paused(self) -> bool: ...


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
        """Count a failed poll. status: the HTTP status ("500"), or "timeout", "connection",
        "malformed_response", "auth" (the token endpoint failed), "unexpected" (an unexpected
        error in the poll loop); after_failures: the polls just before this one failed too."""
        self._m.poll_error.labels(
            self.task_type, "true" if after_failures else "false", status
        ).inc()

    def watch(self, source: GaugeSource) -> None:
        """Show `source` in task_in_flight, task_free_slots and task_paused.

        The gauges add up every watched source of the task type in the registry, so two runners
        serving one task type (say, in two domains) are both counted. Sources are held weakly;
        unwatch() one when it stops.
        """
        self._gauges().add(source)

    def unwatch(self, source: GaugeSource) -> None:
        self._gauges().discard(source)

    def _gauges(self) -> _GaugeSources:
        families = self._m._families
        with _lock:
            sources = families.sources.get(self.task_type)
            if sources is None:
                sources = families.sources[self.task_type] = _GaugeSources(self)
            return sources


class _GaugeSources:
    """The watched sources of one task type, summed into its three gauges."""

    def __init__(self, metrics: TaskTypeMetrics) -> None:
        self._lock = threading.Lock()
        # By identity: sources need not be hashable. A dead source's entry goes with it.
        self._sources: weakref.WeakValueDictionary[int, GaugeSource] = weakref.WeakValueDictionary()
        metrics.in_flight.set_function(lambda: self._sum(lambda s: s.busy))
        metrics.free_slots.set_function(lambda: self._sum(lambda s: max(0, s.capacity - s.busy)))
        metrics.paused.set_function(lambda: self._sum(lambda s: 1 if s.paused else 0))

    def add(self, source: GaugeSource) -> None:
        with self._lock:
            self._sources[id(source)] = source

    def discard(self, source: GaugeSource) -> None:
        with self._lock:
            if self._sources.get(id(source)) is source:
                del self._sources[id(source)]

    def _sum(self, value: Callable[[GaugeSource], int]) -> int:
        with self._lock:
            sources = list(self._sources.values())
        return sum(value(source) for source in sources)


@dataclass
class _Families:
    # No reference to the registry: it is the value of a weak-keyed dict keyed by the registry.
    poll: Counter
    poll_error: Counter
    execute_error: Counter
    update_error: Counter
    poll_time: Histogram
    execute_time: Histogram
    result_size: Histogram
    update_time: Histogram
    polled: Counter
    undelivered: Counter
    in_flight: Gauge
    free_slots: Gauge
    paused: Gauge
    sources: dict[str, _GaugeSources] = field(default_factory=dict)


def _families_in(registry: CollectorRegistry) -> _Families:
    with _lock:
        families = _families_by_registry.get(registry)
        if families is None:
            families = _families_by_registry[registry] = _register(registry)
        return families


def _register(registry: CollectorRegistry) -> _Families:
    # Create unregistered, then register all or nothing: a name clash must not leave half the
    # families in the user's registry.
    t = ("taskType",)

    def counter(name: str, doc: str, labels: tuple[str, ...] = t) -> Counter:
        return Counter(name, doc, labels, registry=None)

    def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
        return Histogram(name, doc, t, buckets=buckets, registry=None)

    def gauge(name: str, doc: str) -> Gauge:
        return Gauge(name, doc, t, registry=None)

    families = _Families(
        poll=counter("task_poll_counter", "Polls made"),
        poll_error=counter(
            "task_poll_error",
            "Polls that failed. status: the HTTP status, or timeout, connection, "
            "malformed_response. includeRetries: true when the polls just before failed too.",
            ("taskType", "includeRetries", "status"),
        ),
        execute_error=counter("task_execute_error", "Executions that raised or returned a failure"),
        update_error=counter("task_update_error", "Attempts to send a result that failed"),
        poll_time=histogram(
            "task_poll_time", "Time of a successful poll for a batch, seconds", REQUEST_TIME_BUCKETS
        ),
        execute_time=histogram(
            "task_execute_time", "Time to execute a task, seconds", EXECUTE_TIME_BUCKETS
        ),
        result_size=histogram("task_result_size", "Bytes of outputData JSON sent", SIZE_BUCKETS),
        update_time=histogram(
            "task_update_time", "Time of a successful result update, seconds", REQUEST_TIME_BUCKETS
        ),
        polled=counter("task_polled", "Tasks received from the server"),
        undelivered=counter("task_result_undelivered", "Results given up on after retries"),
        in_flight=gauge("task_in_flight", "Tasks being executed"),
        free_slots=gauge("task_free_slots", "Free execution slots (batch size minus in flight)"),
        paused=gauge("task_paused", "Pollers of this task type that are paused"),
    )
    collectors = [
        value for value in vars(families).values() if isinstance(value, (Counter, Gauge, Histogram))
    ]
    done = []
    try:
        for collector in collectors:
            registry.register(collector)
            done.append(collector)
    except BaseException:
        for collector in done:
            registry.unregister(collector)
        raise
    return families


@dataclass(frozen=True)
class MetricsSettings:
    """Where the metrics endpoint listens: http://<address>:<port><path>.

    port: 0 picks a free port (MetricsServer.port tells which).
    address: the interface to bind; "0.0.0.0" (the default) is every IPv4 interface, "::" every
        interface, "127.0.0.1" this host only.
    """

    port: int = 2112
    path: str = "/metrics"
    address: str = "0.0.0.0"

    def __post_init__(self) -> None:
        if isinstance(self.port, bool) or not isinstance(self.port, int):
            raise ConfigurationError(f"metrics port must be an integer, got {self.port!r}")
        if not 0 <= self.port <= 65535:
            raise ConfigurationError(f"metrics port out of range: {self.port}")
        if not self.path.startswith("/") or "?" in self.path or "#" in self.path:
            raise ConfigurationError(f"metrics path must start with '/': {self.path!r}")
        if not self.address:
            raise ConfigurationError("metrics address must not be empty (use '0.0.0.0' or '::')")


class MetricsServer:
    """A running metrics endpoint; stop() (or leaving a `with` block) closes it."""

    def __init__(self, server: Any, thread: threading.Thread, settings: MetricsSettings) -> None:
        self._server = server
        self._thread = thread
        self._stop_lock = threading.Lock()
        self._stopped = False
        self.settings = settings
        self.port: int = server.server_address[1]

    @property
    def url(self) -> str:
        """Where to scrape; a wildcard address is given as the loopback address."""
        host = self.settings.address
        if host == "0.0.0.0":
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}{self.settings.path}"

    def stop(self) -> None:
        """Stop serving and close the listening socket, so the port is free again. Idempotent."""
        with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
            self._server.shutdown()  # returns once serve_forever() has left its loop
            self._server.server_close()
            self._thread.join(timeout=5)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<MetricsServer {self.url}{' (stopped)' if self._stopped else ''}>"


def start_metrics_server(
    settings: MetricsSettings | None = None, registry: CollectorRegistry | None = None
) -> MetricsServer:
    """Serve the metrics over HTTP in a background thread; returns at once.

    Only `settings.path` is served (other paths answer 404), with prometheus_client's handling
    of the request: content negotiation (OpenMetrics), gzip and ``?name[]=`` filtering.
    registry: what to serve (default: conductor-worker's registry); the worker metrics are
    registered in it if they are not yet, so they show (at zero) from the first scrape.
    Raises OSError when the address cannot be bound (the port is taken, say).
    """
    settings = settings or MetricsSettings()
    registry = default_registry() if registry is None else registry
    metrics_for(registry)
    app = _only_at(settings.path, make_wsgi_app(registry))
    server = _make_server(settings.address, settings.port, app)
    thread = threading.Thread(
        target=server.serve_forever,
        args=(SERVER_POLL_INTERVAL_SECONDS,),
        name="conductor-metrics-server",
        daemon=True,
    )
    try:
        thread.start()
    except BaseException:
        server.server_close()
        raise
    return MetricsServer(server, thread, settings)


# -- the HTTP server -------------------------------------------------------------------------

_StartResponse = Callable[..., Any]
_WsgiApp = Callable[[dict[str, Any], _StartResponse], Iterable[bytes]]


def _only_at(path: str, app: _WsgiApp) -> _WsgiApp:
    """`app` at exactly `path` (query strings allowed), 404 everywhere else."""
    not_found = f"Not found: metrics are served at {path}\n".encode()

    def serve(environ: dict[str, Any], start_response: _StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != path:
            start_response(
                "404 Not Found",
                [
                    ("Content-Type", "text/plain; charset=utf-8"),
                    ("Content-Length", str(len(not_found))),
                ],
            )
            return [not_found]
        return app(environ, start_response)

    return serve


class _LogStream:
    """wsgiref writes an app's traceback to stderr; the library logs instead of printing."""

    def write(self, text: str) -> int:
        if text.strip():
            log.error("metrics endpoint: %s", text.rstrip())
        return len(text)

    def flush(self) -> None:
        pass


class _QuietHandler(WSGIRequestHandler):
    timeout = SCRAPE_SOCKET_TIMEOUT_SECONDS

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not worth a log line each."""

    def get_stderr(self) -> Any:
        return _LogStream()


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a stuck scrape must not keep the process alive or block stop()

    def server_bind(self) -> None:
        # HTTPServer.server_bind() looks up the host's FQDN, which can take seconds with slow
        # DNS; the WSGI environ's SERVER_NAME is not used here, so the address does.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)
        self.setup_environ()


def _make_server(address: str, port: int, app: _WsgiApp) -> _Server:
    family = _address_family(address, port)
    server_class = type("_MetricsServer", (_Server,), {"address_family": family})
    server: _Server = server_class((address, port), _QuietHandler)
    server.set_app(app)
    return server


def _address_family(address: str, port: int) -> socket.AddressFamily:
    try:
        return socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
    except ValueError:  # a host name: bind where it resolves first
        infos = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        return infos[0][0]
