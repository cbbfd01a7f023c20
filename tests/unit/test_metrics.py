"""conductor_worker.metrics: the families, registries and the HTTP endpoint.

No Conductor server: the endpoint and a fake server that fails polls listen on loopback only.
"""

from __future__ import annotations

import gc
import gzip
import http.server
import logging
import socket
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass

import pytest
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families

from conductor_worker import ConductorClient, HttpSettings, TaskRunner
from conductor_worker.errors import ConfigurationError
from conductor_worker.metrics import (
    MetricsServer,
    MetricsSettings,
    WorkerMetrics,
    default_registry,
    metrics_for,
    start_metrics_server,
)

pytestmark = pytest.mark.timeout(20)

FAMILIES = {
    "task_poll_counter": "counter",
    "task_poll_error": "counter",
    "task_execute_error": "counter",
    "task_update_error": "counter",
    "task_poll_time": "histogram",
    "task_execute_time": "histogram",
    "task_result_size": "histogram",
    "task_update_time": "histogram",
    "task_polled": "counter",
    "task_result_undelivered": "counter",
    "task_in_flight": "gauge",
    "task_free_slots": "gauge",
    "task_paused": "gauge",
}


# -- helpers -------------------------------------------------------------------------------


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


def get(url: str, headers: dict[str, str] | None = None) -> Response:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return Response(answer.status, dict(answer.headers), answer.read())
    except urllib.error.HTTPError as error:
        with error:
            return Response(error.code, dict(error.headers), error.read())


@contextmanager
def serving(
    settings: MetricsSettings | None = None, registry: CollectorRegistry | None = None
) -> Iterator[MetricsServer]:
    server = start_metrics_server(
        settings or MetricsSettings(port=0, address="127.0.0.1"), registry=registry
    )
    try:
        yield server
    finally:
        server.stop()


def root(server: MetricsServer) -> str:
    return f"http://127.0.0.1:{server.port}"


def families(text: str) -> dict[str, str]:
    return {f.name: f.type for f in text_string_to_metric_families(text)}


def connection_refused(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with closing(socket.socket(family, socket.SOCK_STREAM)) as probe:
        probe.settimeout(2)
        try:
            probe.connect((host, port))
        except ConnectionRefusedError:
            return True
        return False


def ipv6_loopback() -> bool:
    try:
        with closing(socket.socket(socket.AF_INET6, socket.SOCK_STREAM)) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


def wait_for(condition: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(0.01)


# -- settings ------------------------------------------------------------------------------


def test_default_settings_are_the_seeds() -> None:
    settings = MetricsSettings()
    assert (settings.port, settings.path, settings.address) == (2112, "/metrics", "0.0.0.0")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"port": -1},
        {"port": 65536},
        {"port": True},
        {"port": "2112"},
        {"path": "metrics"},
        {"path": "/metrics?x=1"},
        {"address": ""},
    ],
)
def test_settings_are_validated(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        MetricsSettings(**kwargs)  # type: ignore[arg-type]


# -- the endpoint --------------------------------------------------------------------------


def test_serves_the_families_at_metrics_and_404_elsewhere() -> None:
    registry = CollectorRegistry()
    with serving(registry=registry) as server:
        assert server.url == f"http://127.0.0.1:{server.port}/metrics"
        answer = get(server.url)
        assert answer.status == 200
        assert answer.headers["Content-Type"].startswith("text/plain")
        assert families(answer.body.decode()) == FAMILIES
        for path in ("/", "/nope", "/metrics/", "/metricsx", "/favicon.ico", "/METRICS"):
            answer = get(root(server) + path)
            assert answer.status == 404, path
            assert b"/metrics" in answer.body


def test_custom_path() -> None:
    settings = MetricsSettings(port=0, path="/prom/worker", address="127.0.0.1")
    with serving(settings, CollectorRegistry()) as server:
        assert server.url.endswith("/prom/worker")
        assert get(server.url).status == 200
        assert get(root(server) + "/metrics").status == 404


def test_prometheus_client_request_handling_still_works() -> None:
    registry = CollectorRegistry()
    metrics_for(registry).for_task_type("t").poll.inc(3)
    metrics_for(registry).for_task_type("t").polled.inc()
    with serving(registry=registry) as server:
        filtered = get(server.url + "?name[]=task_poll_counter_total")
        assert filtered.status == 200
        assert families(filtered.body.decode()) == {"task_poll_counter": "counter"}

        zipped = get(server.url, {"Accept-Encoding": "gzip"})
        assert zipped.headers.get("Content-Encoding") == "gzip"
        text = gzip.decompress(zipped.body).decode()
        assert 'task_poll_counter_total{taskType="t"} 3.0' in text

        open_metrics = get(server.url, {"Accept": "application/openmetrics-text"})
        assert open_metrics.headers["Content-Type"].startswith("application/openmetrics-text")
        assert open_metrics.body.endswith(b"# EOF\n")


def test_stop_frees_the_port() -> None:
    with serving(registry=CollectorRegistry()) as server:
        port = server.port
        assert get(server.url).status == 200
        server.stop()
        server.stop()  # idempotent
        assert connection_refused("127.0.0.1", port)
    again = start_metrics_server(MetricsSettings(port=port, address="127.0.0.1"))
    try:
        assert again.port == port
        assert get(again.url).status == 200
    finally:
        again.stop()


def test_a_port_in_use_raises_and_leaves_nothing_running() -> None:
    with serving(registry=CollectorRegistry()) as server:
        with pytest.raises(OSError, match="in use"):
            start_metrics_server(MetricsSettings(port=server.port, address="127.0.0.1"))
        assert get(server.url).status == 200


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback here")
def test_the_bind_address_is_honoured() -> None:
    with serving(MetricsSettings(port=0, address="::1"), CollectorRegistry()) as server:
        assert server.url == f"http://[::1]:{server.port}/metrics"
        assert get(server.url).status == 200
        assert connection_refused("127.0.0.1", server.port)
    with serving(MetricsSettings(port=0, address="127.0.0.1"), CollectorRegistry()) as server:
        assert connection_refused("::1", server.port)


def test_a_failing_collector_is_logged_not_printed(
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = CollectorRegistry()

    def broken() -> float:
        raise RuntimeError("gauge source broke")

    metrics_for(registry).for_task_type("t").in_flight.set_function(broken)
    with caplog.at_level(logging.ERROR, "conductor_worker.metrics"), serving(None, registry) as s:
        assert get(s.url).status == 500
    assert "gauge source broke" in caplog.text
    assert "gauge source broke" not in capsys.readouterr().err


# -- registries ----------------------------------------------------------------------------


def test_a_custom_registry_is_isolated() -> None:
    mine, other = CollectorRegistry(), CollectorRegistry()
    metrics_for(mine).for_task_type("iso").execute_error.inc()
    labels = {"taskType": "iso"}
    assert mine.get_sample_value("task_execute_error_total", labels) == 1
    assert other.get_sample_value("task_execute_error_total", labels) is None
    assert default_registry().get_sample_value("task_execute_error_total", labels) is None
    with serving(registry=mine) as server:
        assert 'task_execute_error_total{taskType="iso"} 1.0' in get(server.url).body.decode()


def test_users_of_one_registry_share_the_families() -> None:
    registry = CollectorRegistry()
    first = WorkerMetrics(registry)
    second = metrics_for(registry)
    third = WorkerMetrics(registry)
    assert first.poll is second.poll is third.poll
    assert first.result_size is third.result_size
    first.for_task_type("t").poll.inc()
    third.for_task_type("t").poll.inc()
    assert registry.get_sample_value("task_poll_counter_total", {"taskType": "t"}) == 2

    client = ConductorClient(http=HttpSettings("http://127.0.0.1:9/api"))
    TaskRunner(client, registry=registry)
    TaskRunner(client, registry=registry)  # no "Duplicated timeseries"


def test_concurrent_first_use_registers_once() -> None:
    registry = CollectorRegistry()
    barrier = threading.Barrier(16)
    results: list[WorkerMetrics] = []
    errors: list[BaseException] = []

    def use() -> None:
        barrier.wait()
        try:
            results.append(metrics_for(registry))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=use) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert not errors
    assert len({id(m.poll) for m in results}) == 1


def test_a_registry_nobody_uses_is_freed() -> None:
    registry = CollectorRegistry()
    metrics_for(registry).for_task_type("t").poll.inc()
    assert registry.get_sample_value("task_poll_counter_total", {"taskType": "t"}) == 1
    gone = weakref.ref(registry)
    del registry
    gc.collect()
    assert gone() is None


def test_a_name_clash_raises_and_registers_nothing() -> None:
    registry = CollectorRegistry()
    Counter("task_update_error", "someone else's", registry=registry)
    with pytest.raises(ValueError, match="Duplicated"):
        WorkerMetrics(registry)
    names = {f.name for f in registry.collect()}
    assert names == {"task_update_error"}


def test_the_default_registry_has_the_process_collectors_too() -> None:
    names = {f.name for f in metrics_for().registry.collect()}
    assert set(FAMILIES) <= names
    assert "python_info" in names


@dataclass
class Source:
    busy: int
    capacity: int
    paused: bool = False


def test_watched_sources_add_up_in_the_gauges() -> None:
    registry = CollectorRegistry()
    metrics = metrics_for(registry).for_task_type("g")
    labels = {"taskType": "g"}

    def value(name: str) -> float | None:
        return registry.get_sample_value(name, labels)

    one, two = Source(busy=2, capacity=5), Source(busy=3, capacity=3, paused=True)
    metrics.watch(one)
    metrics_for(registry).for_task_type("g").watch(two)  # another runner, same task type
    assert (value("task_in_flight"), value("task_free_slots"), value("task_paused")) == (5, 3, 1)
    metrics.unwatch(two)
    assert (value("task_in_flight"), value("task_free_slots"), value("task_paused")) == (2, 3, 0)
    del one
    gc.collect()
    assert (value("task_in_flight"), value("task_free_slots")) == (0, 0)


# -- failed polls, against a fake server ---------------------------------------------------


class FakeConductor:
    """Answers every batch poll with `status` and `body`, and counts the polls it saw."""

    def __init__(self, status: int, body: bytes) -> None:
        self.polls = 0
        lock = threading.Lock()
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.startswith("/api/tasks/poll/batch/"):
                    with lock:
                        fake.polls += 1
                    self.send_response(status)
                else:
                    self.send_response(404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeConductor:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def noop() -> dict[str, str]:
    return {}


def run_failing_polls(url: str, task_type: str, polls_seen: Callable[[], int] | None) -> None:
    registry = CollectorRegistry()
    status = POLL_STATUS[task_type]

    def errors(retries: str) -> float:
        labels = {"taskType": task_type, "includeRetries": retries, "status": status}
        return registry.get_sample_value("task_poll_error_total", labels) or 0.0

    runner = TaskRunner(ConductorClient(http=HttpSettings(url)), registry=registry)
    try:
        runner.start_worker(task_type, noop, poll_timeout=0.1)
        wait_for(lambda: errors("false") + errors("true") >= 2, what="two failed polls")
    finally:
        assert runner.shutdown(timeout=5)

    polls = registry.get_sample_value("task_poll_counter_total", {"taskType": task_type})
    assert polls is not None
    assert errors("false") == 1  # the first failure
    assert errors("true") == polls - 1  # every later one followed failures
    # Nothing else was counted: no successful poll, no other status.
    assert registry.get_sample_value("task_poll_time_count", {"taskType": task_type}) == 0
    samples = [
        s
        for f in registry.collect()
        if f.name == "task_poll_error"
        for s in f.samples
        if s.name == "task_poll_error_total"
    ]
    assert {s.labels["status"] for s in samples} == {status}
    if polls_seen is not None:
        assert polls == polls_seen()


POLL_STATUS = {"fails_500": "500", "fails_json": "malformed_response", "refused": "connection"}


def test_failed_polls_are_counted_with_the_http_status() -> None:
    with FakeConductor(500, b'{"message":"boom"}') as fake:
        run_failing_polls(fake.url, "fails_500", lambda: fake.polls)


def test_an_unreadable_poll_answer_counts_as_malformed_response() -> None:
    with FakeConductor(200, b"<html>not json</html>") as fake:
        run_failing_polls(fake.url, "fails_json", lambda: fake.polls)


def test_a_refused_connection_counts_as_connection() -> None:
    with closing(socket.socket()) as sock:  # bound, not listening: connections are refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        run_failing_polls(f"http://127.0.0.1:{port}/api", "refused", None)
