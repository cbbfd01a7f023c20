"""Secrets stay secret, and TLS with a private CA works (loopback only, no real server).

A marker secret is used as the Orkes key secret against FakeOrkesServer, through the runner,
TaskExecutor and the generated client, with good and wrong credentials, expiring and revoked
tokens, and a /token that fails with 500 while echoing the secret back. Everything a user or an
operator could see is collected: every log record at DEBUG (root logger), exception messages,
reprs and tracebacks, reprs of the settings and clients, and a metrics scrape. Neither the
secret nor any token the server issued may appear in any of it.

TLS: a CA and a server certificate for 127.0.0.1 are made with the openssl CLI; an HTTPS
endpoint on loopback answers polls. With ``HttpSettings(ca_bundle=ca.pem)`` the runner's
transport and the generated client both work; without it both fail with a certificate error.
"""

from __future__ import annotations

import logging
import shutil
import ssl
import subprocess
import threading
import time
import traceback
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from conductor_client.exceptions import NotFoundException, OpenApiException
from conductor_worker import (
    AuthenticationSettings,
    ConductorClient,
    HttpSettings,
    MetricsSettings,
    Task,
    TaskExecutor,
    TaskResultStatus,
    TaskRunner,
    start_metrics_server,
)
from conductor_worker.transport import ServerError, Transport
from tests.fakes import FakeOrkesServer, FakeRequest, FakeResponse

pytestmark = pytest.mark.timeout(60)

SECRET = "S3CRET-MARKER-42"
KEY_ID = "key-id-visible"
TASK_TYPE = "secure_task"


class Evidence:
    """Everything that could show a secret: texts collected during a test."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def add(self, *items: object) -> None:
        for item in items:
            self.texts.append(item if isinstance(item, str) else repr(item))

    def add_exception(self, error: BaseException) -> None:
        self.texts.append(str(error))
        self.texts.append(repr(error))
        self.texts.append("".join(traceback.format_exception(error)))
        for arg in error.args:
            self.texts.append(repr(arg))

    def check(self, caplog: pytest.LogCaptureFixture, tokens: list[str]) -> None:
        records = caplog.records
        logged = [caplog.text] + [r.getMessage() for r in records] + [repr(r.args) for r in records]
        logged += [r.exc_text or "" for r in records]
        everything = "\n".join(self.texts + logged)
        assert records, "nothing was logged: the capture is not working"
        assert SECRET not in everything, _around(everything, SECRET)
        for token in tokens:
            assert token not in everything, _around(everything, token)
            # nor its signature alone (the part that makes it a credential)
            signature = token.rsplit(".", 1)[-1]
            assert signature not in everything, _around(everything, signature)


def _around(text: str, needle: str) -> str:
    at = text.find(needle)
    return f"leaked: ...{text[max(0, at - 200) : at + len(needle) + 50]!r}..."


@pytest.fixture
def evidence(caplog: pytest.LogCaptureFixture) -> Evidence:
    caplog.set_level(logging.DEBUG)  # root logger: the library's, urllib3's, everything
    return Evidence()


@pytest.fixture
def orkes() -> Iterator[FakeOrkesServer]:
    """A fake Orkes server expecting SECRET, with a task queue of one task and update-v2."""
    with FakeOrkesServer(KEY_ID, SECRET, token_ttl_seconds=2.0) as server:
        handed_out = threading.Event()

        def poll(request: FakeRequest) -> FakeResponse:
            if handed_out.is_set():
                return FakeResponse.json(200, [])
            handed_out.set()
            task = {
                "taskId": "task-1",
                "workflowInstanceId": "wf-1",
                "taskType": TASK_TYPE,
                "taskDefName": TASK_TYPE,
                "status": "IN_PROGRESS",
                "inputData": {"echo": "hello"},
                "responseTimeoutSeconds": 2,  # lease extension runs too, with the token
            }
            return FakeResponse.json(200, [task])

        def update_v2(request: FakeRequest) -> FakeResponse:
            server._update_task(request)
            return FakeResponse(204)

        server.add_route("GET", rf"/api/tasks/poll/batch/{TASK_TYPE}", poll)
        server.add_route("POST", "/api/tasks/update-v2", update_v2)
        yield server


def _client(server: FakeOrkesServer, secret: str = SECRET) -> ConductorClient:
    return ConductorClient(
        AuthenticationSettings(KEY_ID, secret),
        HttpSettings(server.url, timeout_seconds=5.0, connect_timeout_seconds=2.0),
    )


def _scrape(registry: CollectorRegistry) -> str:
    metrics = start_metrics_server(MetricsSettings(port=0, address="127.0.0.1"), registry)
    try:
        with urllib.request.urlopen(metrics.url, timeout=5) as response:
            return str(response.read().decode())
    finally:
        metrics.stop()


def _run_briefly(client: ConductorClient, seconds: float, evidence: Evidence) -> str:
    """Run a runner for `seconds`; returns its metrics scrape."""
    registry = CollectorRegistry()
    runner = TaskRunner(client, registry=registry, shutdown_grace_seconds=5.0)

    def echo(task: Task) -> dict[str, Any]:
        time.sleep(1.2)  # long enough for a lease extension with a refreshed token
        return {"echo": (task.input_data or {}).get("echo")}

    try:
        runner.start_worker(TASK_TYPE, echo, poll_interval=0.1, poll_timeout=0.1)
        time.sleep(seconds)
    finally:
        runner.shutdown(timeout=5)
    scrape = _scrape(registry)
    evidence.add(scrape, runner, client, client.auth, client.http, client.api_client)
    return scrape


def test_good_credentials_with_expiring_and_revoked_tokens(
    orkes: FakeOrkesServer, evidence: Evidence, caplog: pytest.LogCaptureFixture
) -> None:
    client = _client(orkes)

    def revoke_soon() -> None:
        time.sleep(1.0)
        orkes.revoke_all()  # the next calls get EXPIRED_TOKEN and must re-authenticate

    revoker = threading.Thread(target=revoke_soon)
    revoker.start()
    scrape = _run_briefly(client, 3.5, evidence)
    revoker.join()
    assert orkes.tasks["task-1"]["status"] == "COMPLETED"
    assert orkes.tasks["task-1"]["outputData"] == {"echo": "hello"}

    executor = TaskExecutor(client)
    orkes.put_task({"taskId": "task-2", "workflowInstanceId": "wf-1", "status": "IN_PROGRESS"})
    orkes.revoke_all()
    evidence.add(executor.get_task("task-2"))
    executor.update_task("task-2", "wf-1", TaskResultStatus.COMPLETED, {"ok": True})
    with pytest.raises(NotFoundException) as missing:
        executor.get_task("no-such-task")
    evidence.add_exception(missing.value)
    evidence.add(executor, scrape)
    assert orkes.token_issue_count >= 3, "tokens were not refreshed: the test lost its point"
    evidence.check(caplog, orkes.issued_tokens)


def test_wrong_credentials(
    orkes: FakeOrkesServer, evidence: Evidence, caplog: pytest.LogCaptureFixture
) -> None:
    orkes.key_secret = "the-right-one"  # the client sends SECRET: rejected with 401
    client = _client(orkes)
    _run_briefly(client, 1.5, evidence)
    assert orkes.requests_to("/api/token"), "the runner never tried to authenticate"
    assert "task-1" not in orkes.tasks

    executor = TaskExecutor(client)
    for call in (
        lambda: executor.get_task("task-1"),
        lambda: executor.update_task("task-1", "wf-1", TaskResultStatus.COMPLETED, {}),
        lambda: client.tasks.batch_poll(TASK_TYPE, workerid="w", count=1, timeout=100),
    ):
        with pytest.raises(OpenApiException) as caught:
            call()
        evidence.add_exception(caught.value)
    with pytest.raises(ServerError) as polled:
        Transport(client).batch_poll(
            TASK_TYPE, worker_id="w", domain=None, count=1, timeout_seconds=0.1
        )
    assert polled.value.kind == "auth"
    evidence.add_exception(polled.value)
    evidence.check(caplog, orkes.issued_tokens)


def test_token_endpoint_500_echoing_the_secret(
    orkes: FakeOrkesServer, evidence: Evidence, caplog: pytest.LogCaptureFixture
) -> None:
    # A broken gateway that echoes the request body (the credentials) in its error page.
    def echo_credentials(request: FakeRequest) -> FakeResponse | None:
        if request.path == "/api/token":
            text = request.body.decode()
            return FakeResponse.error(500, f"cannot handle {text}", error=text)
        return None

    orkes.add_interceptor(echo_credentials)
    client = _client(orkes)
    _run_briefly(client, 1.5, evidence)
    assert len(orkes.requests_to("/api/token")) >= 1
    executor = TaskExecutor(client)
    with pytest.raises(OpenApiException) as caught:
        executor.get_task("task-1")
    evidence.add_exception(caught.value)
    with pytest.raises(ServerError) as polled:
        Transport(client).batch_poll(
            TASK_TYPE, worker_id="w", domain=None, count=1, timeout_seconds=0.1
        )
    evidence.add_exception(polled.value)
    assert "500" in str(polled.value)
    evidence.check(caplog, orkes.issued_tokens)


def test_expired_token_refresh_while_executor_calls(
    orkes: FakeOrkesServer, evidence: Evidence, caplog: pytest.LogCaptureFixture
) -> None:
    orkes.token_ttl_seconds = 0.5
    orkes.exp_claim = False  # the client cannot see the expiry: it learns from EXPIRED_TOKEN
    client = _client(orkes)
    executor = TaskExecutor(client)
    orkes.put_task({"taskId": "t", "workflowInstanceId": "wf", "status": "IN_PROGRESS"})
    for _ in range(3):
        evidence.add(executor.get_task("t"))
        time.sleep(0.6)
    assert orkes.token_issue_count >= 3
    evidence.check(caplog, orkes.issued_tokens)


# -- TLS with a private CA -----------------------------------------------------------------------


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl CLI is needed to make test certificates")
    where = tmp_path_factory.mktemp("tls")
    (where / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
    )
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=conductor-worker test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=where,
    )  # fmt: skip
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=127.0.0.1",
        cwd=where,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-out", "server.pem", "-extfile", "server.ext",
        cwd=where,
    )  # fmt: skip
    return where


class _PollHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = b"[]" if self.path.startswith("/api/tasks/poll/batch/") else b"{}"
        self.send_response(200 if body == b"[]" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _QuietHttps(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client refusing our certificate is what one test wants


@pytest.fixture
def https_url(certificates: Path) -> Iterator[str]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificates / "server.pem", certificates / "server.key")
    server = _QuietHttps(("127.0.0.1", 0), _PollHandler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}/api"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_tls_with_a_custom_ca_bundle(https_url: str, certificates: Path) -> None:
    http = HttpSettings(https_url, ca_bundle=str(certificates / "ca.pem"), timeout_seconds=5.0)
    with ConductorClient(http=http) as client:
        polled = Transport(client).batch_poll(
            "x", worker_id="w", domain=None, count=1, timeout_seconds=0.1
        )
        assert polled == ([], [])
        assert client.tasks.batch_poll("x", workerid="w", count=1, timeout=100) == []


def test_tls_without_the_ca_fails_with_a_certificate_error(https_url: str) -> None:
    http = HttpSettings(https_url, timeout_seconds=5.0, connect_timeout_seconds=2.0)
    with ConductorClient(http=http) as client:
        with pytest.raises(ServerError) as caught:
            Transport(client).batch_poll(
                "x", worker_id="w", domain=None, count=1, timeout_seconds=0.1
            )
        assert "CERTIFICATE_VERIFY_FAILED" in str(caught.value)
        assert caught.value.retryable  # a connection-level failure, retried with backoff
        with pytest.raises(Exception, match="CERTIFICATE_VERIFY_FAILED"):
            client.tasks.batch_poll("x", workerid="w", count=1, timeout=100)


def test_a_worker_runs_over_tls_with_the_custom_ca(
    https_url: str, certificates: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The runner polls happily over TLS (no poll errors) with the CA bundle."""
    caplog.set_level(logging.WARNING, logger="conductor_worker")
    http = HttpSettings(https_url, ca_bundle=str(certificates / "ca.pem"), timeout_seconds=5.0)
    registry = CollectorRegistry()
    with ConductorClient(http=http) as client:
        runner = TaskRunner(client, registry=registry)
        runner.start_worker("x", lambda: None, poll_interval=0.05, poll_timeout=0.05)
        deadline = time.monotonic() + 10
        while (registry.get_sample_value("task_poll_counter_total", {"taskType": "x"}) or 0) < 3:
            assert time.monotonic() < deadline, "the runner did not poll"
            time.sleep(0.05)
        assert runner.shutdown(timeout=5)
    assert not [r for r in caplog.records if "poll" in r.getMessage()], caplog.text


def test_a_server_error_echoing_the_token_does_not_leak_it(
    orkes: FakeOrkesServer, evidence: Evidence, caplog: pytest.LogCaptureFixture
) -> None:
    """A misbehaving proxy answers polls with an error page quoting the request's headers."""

    def echo_headers(request: FakeRequest) -> FakeResponse | None:
        if "/tasks/poll/batch/" in request.path:
            return FakeResponse.error(400, f"bad request, headers: {dict(request.headers)}")
        return None

    orkes.add_interceptor(echo_headers)
    client = _client(orkes)
    _run_briefly(client, 1.5, evidence)
    with pytest.raises(ServerError) as polled:
        Transport(client).batch_poll(
            TASK_TYPE, worker_id="w", domain=None, count=1, timeout_seconds=0.1
        )
    evidence.add_exception(polled.value)
    assert orkes.token_issue_count >= 1
    evidence.check(caplog, orkes.issued_tokens)
