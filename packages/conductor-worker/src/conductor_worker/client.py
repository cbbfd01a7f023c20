"""ConductorClient: one configured connection to a Conductor server.

It owns the urllib3 pool, the authentication and the timeouts, and gives typed access to the
generated APIs (`client.tasks`, `client.workflows`, `client.metadata`, ...) for everything that
is not running workers: registering definitions, starting workflows, searching.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import urllib3

from conductor_client.api_client import ApiClient
from conductor_client.auth import AuthenticatingApiClient
from conductor_client.configuration import Configuration
from conductor_worker.settings import AuthenticationSettings, HttpSettings

if TYPE_CHECKING:
    # Imported on first use (the properties below): building the generated API classes, whose
    # every method is wrapped in pydantic's validate_call, costs more than the rest of the
    # package's import together, and the runner never uses them (see transport.py).
    from conductor_client.api.event_api import EventApi
    from conductor_client.api.metadata_api import MetadataApi
    from conductor_client.api.task_api import TaskApi
    from conductor_client.api.workflow_api import WorkflowApi
    from conductor_client.api.workflow_bulk_api import WorkflowBulkApi


class _TimeoutDefaults:
    """Mixin: every request gets a timeout, even when the caller of a generated API gives none.

    The generated client sends no timeout by default, so a hung server would hang the caller.
    """

    default_timeout: urllib3.Timeout

    def call_api(
        self,
        method: str,
        url: str,
        header_params: Any = None,
        body: Any = None,
        post_params: Any = None,
        _request_timeout: Any = None,
    ) -> Any:
        return super().call_api(  # type: ignore[misc]
            method,
            url,
            header_params,
            body,
            post_params,
            _request_timeout if _request_timeout is not None else self.default_timeout,
        )


class _PlainApiClient(_TimeoutDefaults, ApiClient):
    pass


class _AuthApiClient(_TimeoutDefaults, AuthenticatingApiClient):
    pass


class ConductorClient:
    """A connection to one Conductor server.

    >>> client = ConductorClient(http=HttpSettings("http://localhost:8080/api"))
    >>> client = ConductorClient(AuthenticationSettings(key_id, key_secret), HttpSettings(url))
    >>> client = ConductorClient.from_env()

    Thread-safe; share one per process. `close()` (or `with`) releases its connections.
    """

    def __init__(
        self,
        auth: AuthenticationSettings | None = None,
        http: HttpSettings | None = None,
    ) -> None:
        self.auth = auth
        self.http = http or HttpSettings()
        configuration = Configuration(host=self.http.base_url)
        configuration.verify_ssl = self.http.verify_tls
        configuration.ssl_ca_cert = self.http.ca_bundle
        # The runner decides when a retry helps; the pool must not retry blindly underneath.
        configuration.retries = urllib3.Retry(total=0, connect=0, read=0, redirect=2, status=0)
        configuration.connection_pool_maxsize = self.http.pool_size
        api_client: _PlainApiClient | _AuthApiClient
        if auth is None:
            api_client = _PlainApiClient(configuration)
        else:
            api_client = _AuthApiClient(configuration, auth.key_id, auth.key_secret)
        api_client.default_timeout = urllib3.Timeout(
            connect=self.http.connect_timeout_seconds, read=self.http.timeout_seconds
        )
        for name, value in self.http.headers.items():
            api_client.default_headers[name] = value
        self.api_client: ApiClient = api_client
        self._apis: dict[str, Any] = {}
        # Counts pool rebuilds, so that the runner's transport, which keeps the host's pool,
        # knows to take the new one (urllib3 2 leaves a replaced pool open and working).
        self.pool_generation = 0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ConductorClient:
        """From CONDUCTOR_SERVER_URL, CONDUCTOR_AUTH_KEY and CONDUCTOR_AUTH_SECRET."""
        return cls(AuthenticationSettings.from_env(environ), HttpSettings.from_env(environ))

    def __repr__(self) -> str:
        auth = "with auth" if self.auth else "no auth"
        return f"ConductorClient({self.http.base_url!r}, {auth})"

    def ensure_pool_size(self, size: int) -> None:
        """Keep at least `size` connections per host (the runner sizes it to its concurrency)."""
        manager = self.api_client.rest_client.pool_manager
        if manager.connection_pool_kw.get("maxsize", 1) < size:
            manager.connection_pool_kw["maxsize"] = size
            manager.clear()  # pools are rebuilt lazily with the new size
            self.pool_generation += 1

    def _api(self, module: str, name: str) -> Any:
        api = self._apis.get(name)
        if api is None:
            cls = getattr(importlib.import_module(f"conductor_client.api.{module}"), name)
            api = self._apis.setdefault(name, cls(self.api_client))  # one per client
        return api

    @property
    def tasks(self) -> TaskApi:
        return self._api("task_api", "TaskApi")  # type: ignore[no-any-return]

    @property
    def workflows(self) -> WorkflowApi:
        return self._api("workflow_api", "WorkflowApi")  # type: ignore[no-any-return]

    @property
    def workflow_bulk(self) -> WorkflowBulkApi:
        return self._api("workflow_bulk_api", "WorkflowBulkApi")  # type: ignore[no-any-return]

    @property
    def metadata(self) -> MetadataApi:
        return self._api("metadata_api", "MetadataApi")  # type: ignore[no-any-return]

    @property
    def events(self) -> EventApi:
        return self._api("event_api", "EventApi")  # type: ignore[no-any-return]

    def close(self) -> None:
        self.api_client.rest_client.pool_manager.clear()
        self.pool_generation += 1

    def __enter__(self) -> ConductorClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
