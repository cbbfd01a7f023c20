"""A fake Orkes (authenticated Conductor) server for tests: loopback only, one per test.

It speaks just enough of the API to exercise authentication and, through routes added by tests,
anything else::

    with FakeOrkesServer(key_id="k", key_secret="s", token_ttl_seconds=2) as server:
        client = authenticated_api_client(server.url, "k", "s")
        server.put_task({"taskId": "t1", "status": "IN_PROGRESS"})
        TaskApi(client).get_task("t1")
        assert server.token_issue_count == 1

Built in:

* ``POST /api/token`` checks ``keyId``/``keySecret`` (401 when wrong) and issues JWT-shaped
  tokens (``header.payload.signature``, base64url; payload ``sub``, ``iat``, ``exp`` = issue time
  + ``token_ttl_seconds``, ``jti``). With ``auth_enabled = False`` it answers 404 like the OSS
  server, and nothing is protected.
* Protected endpoints check ``X-Authorization``: 401 (or ``token_error_status``) with
  ``{"error": "EXPIRED_TOKEN"}`` for a token past its expiry or revoked by the test, and
  ``INVALID_TOKEN`` for an unknown or missing one.
* ``GET /api/tasks/{taskId}`` (tasks put by the test, else 404) and ``POST /api/tasks`` (a
  TaskResult: updates the stored task, answers its id as text/plain).

For tests to build on:

* :meth:`FakeOrkesServer.add_route` adds an endpoint (protected by default).
* :meth:`FakeOrkesServer.fail_next` answers a given status to the next N matching requests
  (fault injection); :meth:`FakeOrkesServer.add_interceptor` sees every request first and may
  answer it itself (delays, dropped connections, custom faults).
* A :class:`FakeResponse` may also hang before it is sent (``delay_seconds``, cut short when the
  server stops) or reset the connection instead of answering (:meth:`FakeResponse.connection_reset`,
  :meth:`FakeResponse.hang`).
* Every request is recorded (method, path, query, headers, body, and the status answered; 0 for
  a connection reset without an answer).

``stop()`` never hangs: it ends hung answers, closes every open connection (so no handler thread
lingers on a kept-alive socket) and does not wait for handler threads.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import io
import json
import re
import socket
import struct
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

from typing_extensions import Self

TOKEN_HEADER = "X-Authorization"

Handler = Callable[["FakeRequest"], "FakeResponse"]
Interceptor = Callable[["FakeRequest"], "FakeResponse | None"]


@dataclass(frozen=True)
class FakeRequest:
    """A request as a route handler or interceptor sees it."""

    method: str
    path: str
    query: Mapping[str, list[str]]
    headers: Mapping[str, str]
    body: bytes
    path_params: Mapping[str, str] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        """A header's value, name matched case-insensitively."""
        lowered = name.lower()
        for key, value in self.headers.items():
            if key.lower() == lowered:
                return value
        return None

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None

    def text(self) -> str:
        return self.body.decode("utf-8")


@dataclass(frozen=True)
class FakeResponse:
    """What the server does with a request.

    ``delay_seconds``: wait this long before answering (a slow or hung server; the wait ends
    early when the server stops, and then the connection is reset instead).
    ``reset``: close the connection with a TCP reset instead of answering (``status`` is then
    only what is recorded: 0).
    """

    status: int
    body: bytes = b""
    content_type: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    delay_seconds: float = 0.0
    reset: bool = False

    @classmethod
    def json(cls, status: int, payload: Any) -> FakeResponse:
        return cls(status, json.dumps(payload).encode(), "application/json")

    @classmethod
    def text(cls, status: int, text: str) -> FakeResponse:
        return cls(status, text.encode(), "text/plain;charset=UTF-8")

    @classmethod
    def error(cls, status: int, message: str, **extra: Any) -> FakeResponse:
        """The error shape of the Conductor server (plus ``extra`` fields, e.g. ``error``)."""
        payload = {"status": status, "message": message, "retryable": False, **extra}
        return cls.json(status, payload)

    @classmethod
    def html(cls, status: int, title: str = "Bad Gateway") -> FakeResponse:
        """An HTML error page, as a proxy or load balancer in front of the server sends."""
        page = (
            f"<html><head><title>{status} {title}</title></head>"
            f"<body><h1>{title}</h1><hr><center>nginx</center></body></html>"
        )
        return cls(status, page.encode(), "text/html")

    @classmethod
    def connection_reset(cls) -> FakeResponse:
        """No answer: the connection is closed with a TCP reset (RST)."""
        return cls(0, reset=True)

    @classmethod
    def hang(cls, seconds: float, then: FakeResponse | None = None) -> FakeResponse:
        """Answer nothing for ``seconds``, then ``then`` (default: reset the connection)."""
        after = then if then is not None else cls.connection_reset()
        return FakeResponse(
            after.status, after.body, after.content_type, after.headers, seconds, after.reset
        )


@dataclass(frozen=True)
class RecordedRequest:
    """A request the server received, and the status it answered."""

    method: str
    path: str
    query: Mapping[str, list[str]]
    headers: Mapping[str, str]
    body: bytes
    status: int
    at: float = field(default_factory=time.monotonic)  # when it was answered (monotonic)

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        for key, value in self.headers.items():
            if key.lower() == lowered:
                return value
        return None


@dataclass
class _Route:
    method: str
    pattern: re.Pattern[str]
    handler: Handler
    protected: bool


@dataclass
class _Fault:
    response: FakeResponse
    remaining: int
    method: str | None
    path: re.Pattern[str] | None

    def matches(self, request: FakeRequest) -> bool:
        return (self.method is None or self.method == request.method) and (
            self.path is None or self.path.fullmatch(request.path) is not None
        )


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class FakeOrkesServer:
    """See the module docstring. Attributes may be changed while it runs (they are read per
    request); they apply to tokens issued and requests answered from then on.

    :param key_id: the accepted key id.
    :param key_secret: the accepted secret.
    :param token_ttl_seconds: lifetime of the tokens issued (fractions allowed).
    :param exp_claim: put ``exp`` (and ``iat``) in the token payload; False issues tokens a
        client cannot read an expiry from (the server still enforces the TTL).
    :param token_delay_seconds: time /token takes to answer (widens races in tests).
    :param token_error_status: the status for a rejected token (401; some servers use 403).
    :param auth_enabled: False makes /token answer 404 and protects nothing (the OSS server).
    """

    def __init__(
        self,
        key_id: str = "test-key-id",
        key_secret: str = "test-key-secret",
        *,
        token_ttl_seconds: float = 3600.0,
        exp_claim: bool = True,
        token_delay_seconds: float = 0.0,
        token_error_status: int = 401,
        auth_enabled: bool = True,
    ) -> None:
        self.key_id = key_id
        self.key_secret = key_secret
        self.token_ttl_seconds = token_ttl_seconds
        self.exp_claim = exp_claim
        self.token_delay_seconds = token_delay_seconds
        self.token_error_status = token_error_status
        self.auth_enabled = auth_enabled

        self._lock = threading.Lock()
        self._signing_key = uuid.uuid4().bytes
        self._tokens: dict[str, float] = {}  # token -> expiry (time.time())
        self._revoked: set[str] = set()
        self._issued: list[str] = []
        self._requests: list[RecordedRequest] = []
        self._faults: list[_Fault] = []
        self._interceptors: list[Interceptor] = []
        self._routes: list[_Route] = []
        self.tasks: dict[str, dict[str, Any]] = {}

        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None
        self._stopping = threading.Event()  # ends hung answers
        self._connections: set[socket.socket] = set()

        self.add_route("POST", "/api/token", self._issue_token, protected=False)
        self.add_route("GET", r"/api/tasks/(?P<taskId>[^/]+)", self._get_task)
        self.add_route("POST", "/api/tasks", self._update_task)

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> Self:
        if self._httpd is not None:
            raise RuntimeError("already started")
        self._stopping.clear()
        httpd = _QuietServer(("127.0.0.1", 0), _make_handler(self))
        httpd.daemon_threads = True
        self._httpd = httpd
        self._port = int(httpd.server_address[1])
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fake-orkes-server",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stops serving, ends hung answers, closes the listening socket and every open
        connection. Idempotent; does not wait for handler threads (they are daemons)."""
        httpd, thread = self._httpd, self._thread
        self._httpd = self._thread = None
        if httpd is None:
            return
        self._stopping.set()
        httpd.shutdown()
        httpd.server_close()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            # Wakes a handler thread blocked reading a kept-alive connection.
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        if thread is not None:
            thread.join(timeout=5)

    @property
    def stopping(self) -> threading.Event:
        """Set once stop() has begun: long waits in handlers should end on it."""
        return self._stopping

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The port it listens (or, once stopped, listened) on."""
        if self._port is None:
            raise RuntimeError("not started")
        return self._port

    @property
    def url(self) -> str:
        """The API base URL, ending in ``/api``."""
        return f"http://127.0.0.1:{self.port}/api"

    # -- tokens ----------------------------------------------------------------------------------

    @property
    def token_issue_count(self) -> int:
        with self._lock:
            return len(self._issued)

    @property
    def issued_tokens(self) -> list[str]:
        with self._lock:
            return list(self._issued)

    def revoke(self, token: str) -> None:
        """From now on ``token`` is answered with EXPIRED_TOKEN."""
        with self._lock:
            self._revoked.add(token)

    def revoke_all(self) -> None:
        with self._lock:
            self._revoked.update(self._tokens)

    def forget_all_tokens(self) -> None:
        """Every token issued so far becomes unknown (INVALID_TOKEN), as after a key rotation."""
        with self._lock:
            self._tokens.clear()

    def is_expired(self, token: str) -> bool:
        with self._lock:
            expiry = self._tokens.get(token)
        return expiry is not None and time.time() >= expiry

    def token_problem(self, token: str | None) -> str | None:
        """None for a valid token, else the error code the server answers."""
        if not token:
            return "INVALID_TOKEN"
        with self._lock:
            expiry = self._tokens.get(token)
            revoked = token in self._revoked
        if expiry is None:
            return "INVALID_TOKEN"
        if revoked or time.time() >= expiry:
            return "EXPIRED_TOKEN"
        return None

    def make_token(self, ttl_seconds: float | None = None) -> str:
        """Issues a token (as /token does) without a request; it is counted as issued."""
        now = time.time()
        ttl = self.token_ttl_seconds if ttl_seconds is None else ttl_seconds
        payload: dict[str, Any] = {"sub": self.key_id, "jti": uuid.uuid4().hex}
        if self.exp_claim:
            # Fractional seconds are valid NumericDates; they let tests use sub-second TTLs.
            payload.update(iat=now, exp=now + ttl)
        header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        body = _b64url(json.dumps(payload).encode())
        signature = hmac.new(
            self._signing_key, f"{header}.{body}".encode(), hashlib.sha256
        ).digest()
        token = f"{header}.{body}.{_b64url(signature)}"
        with self._lock:
            self._tokens[token] = now + ttl
            self._issued.append(token)
        return token

    # -- requests --------------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def requests_to(self, path: str, method: str | None = None) -> list[RecordedRequest]:
        """The recorded requests whose path (a regular expression, full match) is ``path``."""
        pattern = re.compile(path)
        return [
            r
            for r in self.requests
            if pattern.fullmatch(r.path) and (method is None or r.method == method)
        ]

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    # -- extension points ------------------------------------------------------------------------

    def add_route(
        self, method: str, path: str, handler: Handler, *, protected: bool = True
    ) -> None:
        """Serves ``method path`` (``path`` a regular expression, full match; named groups become
        ``request.path_params``). Later routes win over earlier ones for the same request."""
        with self._lock:
            self._routes.insert(0, _Route(method.upper(), re.compile(path), handler, protected))

    def fail_next(
        self,
        status: int,
        count: int = 1,
        *,
        body: Any = None,
        method: str | None = None,
        path: str | None = None,
    ) -> None:
        """Answers ``status`` (with JSON ``body``, default the server's error shape) to the next
        ``count`` requests matching ``method``/``path`` (a regular expression), before any
        authentication check."""
        response = (
            FakeResponse.error(status, f"injected {status}")
            if body is None
            else FakeResponse.json(status, body)
        )
        fault = _Fault(
            response,
            count,
            method.upper() if method else None,
            re.compile(path) if path else None,
        )
        with self._lock:
            self._faults.append(fault)

    def add_interceptor(self, interceptor: Interceptor) -> None:
        """``interceptor(request)`` runs first for every request (in its handler thread); a
        response it returns is sent instead of the normal handling."""
        with self._lock:
            self._interceptors.append(interceptor)

    def put_task(self, task: Mapping[str, Any]) -> None:
        """Stores a Task (JSON shape, ``taskId`` required) for ``GET /api/tasks/{taskId}``."""
        with self._lock:
            self.tasks[str(task["taskId"])] = dict(task)

    # -- dispatch (handler threads) ----------------------------------------------------------------

    def _dispatch(self, request: FakeRequest) -> FakeResponse:
        with self._lock:
            interceptors = list(self._interceptors)
        for interceptor in interceptors:
            answer = interceptor(request)
            if answer is not None:
                return answer
        fault = self._take_fault(request)
        if fault is not None:
            return fault
        return self.serve(request)

    def serve(self, request: FakeRequest) -> FakeResponse:
        """The normal handling of a request (token check, then its route), without the
        interceptors and injected faults."""
        with self._lock:
            routes = list(self._routes)
        for route in routes:
            match = route.pattern.fullmatch(request.path)
            if route.method != request.method or match is None:
                continue
            if route.protected and self.auth_enabled:
                problem = self.token_problem(request.header(TOKEN_HEADER))
                if problem is not None:
                    return FakeResponse.error(
                        self.token_error_status,
                        f"Token rejected: {problem}",
                        error=problem,
                    )
            routed = FakeRequest(
                request.method,
                request.path,
                request.query,
                request.headers,
                request.body,
                match.groupdict(),
            )
            return route.handler(routed)
        return FakeResponse.error(404, f"No static resource {request.path.lstrip('/')}.")

    def _take_fault(self, request: FakeRequest) -> FakeResponse | None:
        with self._lock:
            for fault in self._faults:
                if fault.remaining > 0 and fault.matches(request):
                    fault.remaining -= 1
                    return fault.response
        return None

    def _record(self, request: FakeRequest, status: int) -> None:
        recorded = RecordedRequest(
            request.method, request.path, request.query, request.headers, request.body, status
        )
        with self._lock:
            self._requests.append(recorded)

    # -- built-in routes -------------------------------------------------------------------------

    def _issue_token(self, request: FakeRequest) -> FakeResponse:
        if not self.auth_enabled:
            return FakeResponse.error(404, "No static resource api/token.")
        if self.token_delay_seconds:
            time.sleep(self.token_delay_seconds)
        try:
            credentials = request.json()
        except ValueError:
            credentials = None
        if (
            not isinstance(credentials, dict)
            or credentials.get("keyId") != self.key_id
            or credentials.get("keySecret") != self.key_secret
        ):
            return FakeResponse.error(401, "Invalid credentials", error="UNAUTHORIZED")
        return FakeResponse.json(200, {"token": self.make_token()})

    def _get_task(self, request: FakeRequest) -> FakeResponse:
        task_id = request.path_params["taskId"]
        with self._lock:
            task = self.tasks.get(task_id)
        if task is None:
            return FakeResponse.error(404, f"Task not found for taskId: {task_id}")
        return FakeResponse.json(200, task)

    def _update_task(self, request: FakeRequest) -> FakeResponse:
        result = request.json()
        if not isinstance(result, dict) or not result.get("taskId"):
            return FakeResponse.error(400, "taskId missing")
        task_id = str(result["taskId"])
        with self._lock:
            task = self.tasks.setdefault(task_id, {"taskId": task_id})
            for key in ("status", "outputData", "workerId", "reasonForIncompletion"):
                if key in result:
                    task[key] = result[key]
        return FakeResponse.text(200, task_id)


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (timeout, closed pool) or a stopping server: not worth a
        # traceback on stderr. Anything else is printed as usual.
        if not isinstance(sys.exc_info()[1], (OSError, ValueError)):
            super().handle_error(request, client_address)


def _make_handler(server: FakeOrkesServer) -> type[BaseHTTPRequestHandler]:
    class _Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as urllib3's pool expects
        timeout = 30  # an idle kept-alive connection frees its thread after this

        def setup(self) -> None:
            super().setup()
            with server._lock:
                server._connections.add(self.connection)

        def finish(self) -> None:
            with server._lock:
                server._connections.discard(self.connection)
            with contextlib.suppress(OSError):
                super().finish()

        def _reset(self) -> None:
            """Close the connection with a TCP reset, answering nothing."""
            self.close_connection = True
            connection = self.connection
            with contextlib.suppress(OSError):
                connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            # The socket really closes (sending RST) only once its file objects are closed;
            # what handle_one_request flushes afterwards goes nowhere.
            self.rfile.close()
            self.wfile.close()
            self.wfile = io.BytesIO()
            connection.close()

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            parts = urlsplit(self.path)
            request = FakeRequest(
                self.command,
                parts.path,
                parse_qs(parts.query, keep_blank_values=True),
                dict(self.headers.items()),
                body,
            )
            try:
                response = server._dispatch(request)
            except Exception as exc:  # a broken handler is a 500, not a hung client
                response = FakeResponse.error(500, f"fake server error: {exc!r}")
            if response.delay_seconds > 0 and server.stopping.wait(response.delay_seconds):
                response = FakeResponse.connection_reset()  # stopping: end the hang now
            server._record(request, 0 if response.reset else response.status)
            if response.reset:
                self._reset()
                return
            self.send_response(response.status, _reason(response.status))
            if response.content_type:
                self.send_header("Content-Type", response.content_type)
            for name, value in response.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(response.body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(response.body)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _handle

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep test output clean

    return _Handler


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""
