"""The runner's calls to the server: batch poll, update, update-v2, lease extension.

This is the one place where the worker talks to the server on its hot path. It uses the
ConductorClient's urllib3 pool and authentication, but sends pre-encoded JSON and parses
answers itself: the generated API methods validate every argument with pydantic and encode
the body again, which costs more than the rest of a task's handling.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import pydantic
import urllib3
from urllib3.exceptions import ClosedPoolError

from conductor_client.auth import (
    TOKEN_HEADER,
    TOKEN_RENEWALS_PER_CALL,
    AuthenticatingApiClient,
    AuthenticationError,
    TokenProvider,
    token_rejection,
)
from conductor_client.models import Task
from conductor_worker.client import ConductorClient
from conductor_worker.errors import ConductorWorkerError

log = logging.getLogger(__name__)

JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


class ServerError(ConductorWorkerError):
    """A call to the server failed.

    kind: a short label for metrics and logs: "timeout", "connection", "http_<status>",
        "malformed_response".
    retryable: whether the same call may succeed if tried again (network trouble, 5xx, 429, a
        token rejected even after renewal).
    """

    def __init__(
        self, message: str, *, kind: str, status: int | None = None, retryable: bool = False
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.retryable = retryable


@dataclass(frozen=True, slots=True)
class MalformedTask:
    """A task in a poll answer that does not fit the Task model (a broken or hostile server).

    The server has already handed it to us, so the runner reports it as failed rather than
    letting it sit until its response timeout.
    """

    raw: Mapping[str, Any]
    error: str

    @property
    def task_id(self) -> str | None:
        value = self.raw.get("taskId")
        return value if isinstance(value, str) else None

    @property
    def workflow_instance_id(self) -> str | None:
        value = self.raw.get("workflowInstanceId")
        return value if isinstance(value, str) else None


@dataclass(slots=True)
class _Buffered:
    """A response whose body was already read, in the shape auth's rejection check reads."""

    status: int
    data: bytes

    def read(self) -> bytes:
        return self.data


class Transport:
    def __init__(self, client: ConductorClient) -> None:
        self.client = client
        self._api = client.api_client
        self._base = client.http.base_url
        self._timeout = client.http.timeout_seconds
        self._connect_timeout = client.http.connect_timeout_seconds
        self._tokens: TokenProvider | None = (
            self._api.token_provider if isinstance(self._api, AuthenticatingApiClient) else None
        )
        # Built once: the client's headers are set when it is made. The pool copies them per
        # request; _send copies them only to add a token.
        self._headers = {**self._api.default_headers, **JSON_HEADERS}
        self._timeouts: dict[float, urllib3.Timeout] = {}
        # Straight to the host's connection pool, past PoolManager.urlopen's per-request URL
        # parsing and pool lookup (a tenth of a request's CPU). Not through a proxy, which
        # needs the manager's absolute-form URLs and headers.
        url = urllib3.util.parse_url(self._base)
        self._origin = (url.scheme or "http", url.host or "", url.port)
        self._base_path = (url.path or "").rstrip("/")
        self._direct = not isinstance(self._api.rest_client.pool_manager, urllib3.ProxyManager)
        self._pool: urllib3.HTTPConnectionPool | None = None
        self._pool_generation = client.pool_generation
        # Unknown until the first update: servers before 3.21.12 have no update-v2.
        self.update_v2_supported: bool | None = None

    # -- calls ---------------------------------------------------------------------------

    def batch_poll(
        self,
        task_type: str,
        *,
        worker_id: str,
        domain: str | None,
        count: int,
        timeout_seconds: float,
    ) -> tuple[list[Task], list[MalformedTask]]:
        query: dict[str, Any] = {
            "workerid": worker_id,
            "count": count,
            "timeout": int(timeout_seconds * 1000),
        }
        if domain:
            query["domain"] = domain
        path = f"/tasks/poll/batch/{quote(task_type, safe='')}?{urlencode(query)}"
        status, data = self._request(
            "GET", path, None, read_timeout=self._timeout + timeout_seconds
        )
        if status == 204 or not data:
            return [], []  # older servers answer an empty poll with 204
        items = self._parse_json(data, path)
        if not isinstance(items, list):
            raise ServerError(
                f"poll for {task_type!r} answered {type(items).__name__}, not a list",
                kind="malformed_response",
            )
        return parse_tasks(items)

    def update(self, body: bytes, *, take_next: bool) -> Task | MalformedTask | None:
        """Report a result. With take_next (update-v2), the server may answer the next task of
        the same type, already assigned to us; the caller must run it."""
        if take_next and self.update_v2_supported is not False:
            try:
                status, data = self._request("POST", "/tasks/update-v2", body)
            except ServerError as error:
                if not _means_no_update_v2(error):
                    raise
                log.info("the server has no update-v2 (%s); using POST /tasks", error)
                self.update_v2_supported = False
            else:
                self.update_v2_supported = True
                if status == 204 or not data:
                    return None
                try:
                    raw = self._parse_json(data, "/tasks/update-v2")
                except ServerError as error:
                    # A 2xx: the server has the result, so it must not be retried or reported
                    # undelivered. Only a next task in the answer is lost (the server times it
                    # out and hands it out again).
                    task_id, workflow_id = _ids_in(body)
                    log.warning(
                        "task %s (workflow %s): result taken, but the answer of update-v2 is "
                        "unreadable: %s", task_id, workflow_id, error,
                    )  # fmt: skip
                    return None
                if not isinstance(raw, dict):
                    return None
                tasks, malformed = parse_tasks([raw])
                return tasks[0] if tasks else malformed[0]
        self._request("POST", "/tasks", body)
        return None

    # -- plumbing ------------------------------------------------------------------------

    def _request(
        self, method: str, path: str, body: bytes | None, *, read_timeout: float | None = None
    ) -> tuple[int, bytes]:
        read = read_timeout or self._timeout
        timeout = self._timeouts.get(read)
        if timeout is None:
            timeout = urllib3.Timeout(connect=self._connect_timeout, read=read)
            self._timeouts[read] = timeout
        headers = self._headers
        try:
            response, token = self._send(method, path, headers, body, timeout)
        except AuthenticationError as error:
            # Final only when the token endpoint refused the request (wrong key or secret, a
            # bad URL); unreachable, overloaded (5xx, 408, 429) or answering nonsense: try again.
            refused = (
                error.status is not None
                and 400 <= error.status < 500
                and error.status not in RETRYABLE_STATUSES
            )
            raise ServerError(
                f"{method} {path}: {error}",
                kind="auth",
                status=error.status,
                retryable=not refused,
            ) from None
        except urllib3.exceptions.HTTPError as error:
            # With the pool's Retry(total=0), a failed GET comes wrapped in MaxRetryError (a
            # POST's read error is raised as is): classify by what happened underneath.
            cause: BaseException = error
            if isinstance(error, urllib3.exceptions.MaxRetryError) and error.reason is not None:
                cause = error.reason
            # NewConnectionError (refused, unreachable) subclasses ConnectTimeoutError.
            if isinstance(cause, urllib3.exceptions.TimeoutError) and not isinstance(
                cause, urllib3.exceptions.NewConnectionError
            ):
                raise ServerError(
                    f"{method} {path}: timed out ({cause})", kind="timeout", retryable=True
                ) from None
            raise ServerError(
                f"{method} {path}: {type(cause).__name__}: {cause}",
                kind="connection",
                retryable=True,
            ) from None
        status = response.status
        if 200 <= status < 300:
            return status, response.data
        text = response.data[:500].decode("utf-8", "replace")
        if token:  # a proxy's error page may echo the request headers
            text = text.replace(token, "***")
        # A token rejected even after renewal (e.g. the new one expired before the retry
        # landed, on a slow machine with short-lived tokens) is worth another try later: the
        # next attempt renews it again. Other 401/403s are final.
        token_rejected = (
            token is not None
            and status in (401, 403)
            and token_rejection(_Buffered(status, response.data)) is not None
        )
        raise ServerError(
            f"{method} {path}: HTTP {status}: {text}",
            kind=f"http_{status}",
            status=status,
            retryable=status in RETRYABLE_STATUSES or token_rejected,
        )

    def _send(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        body: bytes | None,
        timeout: urllib3.Timeout,
    ) -> tuple[urllib3.BaseHTTPResponse, str | None]:
        """Send with the current token; returns the response and the token it was sent with."""
        provider = self._tokens
        if provider is None:
            return self._open(method, path, headers, body, timeout), None
        token = provider.get_token()
        if token is not None:
            headers = {**headers, TOKEN_HEADER: token}
        response = self._open(method, path, headers, body, timeout)
        # The token expired or was revoked: renew it and resend, as the generated client does
        # through AuthenticatingApiClient.
        for _ in range(TOKEN_RENEWALS_PER_CALL):
            if token is None or response.status not in (401, 403):
                break
            if token_rejection(_Buffered(response.status, response.data)) is None:
                break
            provider.invalidate(token)
            token = provider.get_token()
            if token is not None:
                headers = {**headers, TOKEN_HEADER: token}
            response = self._open(method, path, headers, body, timeout)
        return response, token

    def _open(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        body: bytes | None,
        timeout: urllib3.Timeout,
    ) -> urllib3.BaseHTTPResponse:
        manager = self._api.rest_client.pool_manager
        if self._direct:
            for _ in range(2):
                pool = self._pool
                if pool is None or self._pool_generation != self.client.pool_generation:
                    self._pool_generation = self.client.pool_generation
                    scheme, host, port = self._origin
                    pool = self._pool = manager.connection_from_host(host, port, scheme)
                try:
                    response = pool.urlopen(
                        method, self._base_path + path, body=body, headers=headers,
                        timeout=timeout, redirect=False, assert_same_host=False,
                    )  # fmt: skip
                except ClosedPoolError:
                    # Someone closed the pool before this request took a connection: nothing
                    # was sent; take the manager's current one.
                    self._pool = None
                    continue
                if not response.get_redirect_location():
                    return response
                break  # a redirect: let the manager follow it, as it always has
        return manager.request(
            method, self._base + path, body=body, headers=headers, timeout=timeout
        )

    @staticmethod
    def _parse_json(data: bytes, what: str) -> Any:
        try:
            return json.loads(data)
        except (ValueError, RecursionError) as error:  # RecursionError: absurdly deep nesting
            snippet = data[:120].decode("utf-8", "replace")
            # The 3.x server answers paths outside /api with its web UI.
            hint = (
                "; a web page: does the server URL end in /api?"
                if data.lstrip().startswith(b"<")
                else ""
            )
            raise ServerError(
                f"{what}: the server's answer is not JSON ({error}): {snippet!r}{hint}",
                kind="malformed_response",
            ) from None


def parse_tasks(items: list[Any]) -> tuple[list[Task], list[MalformedTask]]:
    """Validate each polled task on its own, so one bad task does not lose the others."""
    tasks: list[Task] = []
    malformed: list[MalformedTask] = []
    for item in items:
        if not isinstance(item, dict):
            malformed.append(MalformedTask({}, f"a task must be a JSON object, got {item!r:.80}"))
            continue
        if not isinstance(item.get("taskId"), str) or not isinstance(
            item.get("workflowInstanceId"), str
        ):
            # Without its ids a task can be neither run meaningfully nor reported.
            malformed.append(
                MalformedTask(item, "malformed task from server: no taskId or workflowInstanceId")
            )
            continue
        try:
            tasks.append(Task.model_validate(item))
        except pydantic.ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            malformed.append(
                MalformedTask(item, f"malformed task from server: {where}: {first['msg']}")
            )
    return tasks, malformed


def _ids_in(body: bytes) -> tuple[str | None, str | None]:
    """The task and workflow ids of a TaskResult body, for log messages."""
    try:
        result = json.loads(body)
    except ValueError:
        return None, None
    if not isinstance(result, dict):
        return None, None
    return result.get("taskId"), result.get("workflowInstanceId")


def _means_no_update_v2(error: ServerError) -> bool:
    # Before 3.21.12 there is no such route: 405 (the path matches GET /tasks/{taskId}) or a
    # framework 404. A 404 for a missing task is Conductor's own ("No such task found ...").
    if error.status == 405:
        return True
    text = str(error)
    return error.status == 404 and ("No static resource" in text or '"Not Found"' in text)
