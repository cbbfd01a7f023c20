"""Unit tests for worker options (and their environment overrides), settings and ConductorClient.

No network: the ``no_connect`` fixture makes any attempt to open a connection fail the test.
"""

from __future__ import annotations

import dataclasses
import math
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3

from conductor_client import (
    ApiClient,
    EventApi,
    MetadataApi,
    TaskApi,
    WorkflowApi,
    WorkflowBulkApi,
)
from conductor_client.auth import AuthenticatingApiClient
from conductor_worker.client import ConductorClient
from conductor_worker.errors import ConductorWorkerError, ConfigurationError
from conductor_worker.options import (
    MAX_POLL_TIMEOUT_SECONDS,
    WorkerOptions,
    apply_environment,
    env_key,
)
from conductor_worker.settings import (
    DEFAULT_SERVER_URL,
    AuthenticationSettings,
    HttpSettings,
)

SECRET = "S3CRET-VALUE-do-not-print"
UNUSED_URL = "http://127.0.0.1:9/api"  # the discard port: nothing is ever sent there


@pytest.fixture
def no_connect(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """Fail (and record) any attempt to open a network connection."""
    attempts: list[Any] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        attempts.append(args)
        raise AssertionError(f"unit tests must not connect anywhere: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    yield attempts
    assert attempts == []


# -- options: task type keys --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("task_type", "key"),
    [
        ("send-email.v2", "SEND_EMAIL_V2"),
        ("simple_task", "SIMPLE_TASK"),
        ("Mixed Case/type", "MIXED_CASE_TYPE"),
        ("ünïcode", "_N_CODE"),
        ("v1", "V1"),
    ],
)
def test_env_key_mangles_the_task_type(task_type: str, key: str) -> None:
    assert env_key(task_type) == key


# -- options: precedence ------------------------------------------------------------------------


def test_no_environment_keeps_the_code_values() -> None:
    options = WorkerOptions(batch_size=4, poll_interval_seconds=0.25, domain="blue")

    result = apply_environment("send-email.v2", options, {"UNRELATED": "1"})

    assert result is options


def test_generic_variable_overrides_code() -> None:
    options = WorkerOptions(batch_size=4, domain="blue")
    env = {"CONDUCTOR_WORKER_BATCH_SIZE": "8", "CONDUCTOR_WORKER_DOMAIN": "green"}

    result = apply_environment("send-email.v2", options, env)

    assert (result.batch_size, result.domain) == (8, "green")
    assert (options.batch_size, options.domain) == (4, "blue")  # the input is not changed


def test_task_type_variable_overrides_generic_and_code() -> None:
    env = {
        "CONDUCTOR_WORKER_BATCH_SIZE": "8",
        "CONDUCTOR_WORKER_SEND_EMAIL_V2_BATCH_SIZE": "16",
        "CONDUCTOR_WORKER_OTHER_BATCH_SIZE": "99",  # another task type's: ignored
        "CONDUCTOR_WORKER_POLL_INTERVAL": "0.5",  # generic only: applies
    }

    result = apply_environment("send-email.v2", WorkerOptions(batch_size=4), env)

    assert result.batch_size == 16
    assert result.poll_interval_seconds == 0.5
    assert apply_environment("other", WorkerOptions(), env).batch_size == 99


def test_every_option_can_be_set_from_the_environment() -> None:
    prefix = "CONDUCTOR_WORKER_BILLING_"
    env = {
        prefix + "BATCH_SIZE": "3",
        prefix + "POLL_INTERVAL": "0.1",
        prefix + "POLL_TIMEOUT": "4.5",
        prefix + "DOMAIN": "staging",
        prefix + "WORKER_ID": "pod-7",
        prefix + "PAUSED": "true",
        prefix + "LEASE_EXTENSION": "off",
    }

    result = apply_environment("billing", WorkerOptions(), env)

    assert result == WorkerOptions(
        batch_size=3,
        poll_interval_seconds=0.1,
        poll_timeout_seconds=4.5,
        domain="staging",
        worker_id="pod-7",
        paused=True,
        lease_extension=False,
    )


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1", True),
        ("TRUE", True),
        (" yes ", True),
        ("On", True),
        ("0", False),
        ("false", False),
        ("No", False),
        ("off", False),
    ],
)
def test_boolean_spellings(text: str, value: bool) -> None:
    result = apply_environment("t", WorkerOptions(), {"CONDUCTOR_WORKER_PAUSED": text})

    assert result.paused is value


def test_empty_domain_in_the_environment_clears_the_code_domain() -> None:
    env = {"CONDUCTOR_WORKER_T_DOMAIN": ""}

    assert apply_environment("t", WorkerOptions(domain="blue"), env).domain is None


def test_os_environ_is_read_when_no_mapping_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONDUCTOR_WORKER_ENV_TEST_TYPE_BATCH_SIZE", "5")

    assert apply_environment("env-test-type", WorkerOptions()).batch_size == 5


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CONDUCTOR_WORKER_BATCH_SIZE", "many"),
        ("CONDUCTOR_WORKER_BATCH_SIZE", "2.5"),
        ("CONDUCTOR_WORKER_SEND_EMAIL_V2_POLL_INTERVAL", "soon"),
        ("CONDUCTOR_WORKER_POLL_TIMEOUT", ""),
        ("CONDUCTOR_WORKER_SEND_EMAIL_V2_PAUSED", "maybe"),
        ("CONDUCTOR_WORKER_LEASE_EXTENSION", "2"),
    ],
)
def test_unparsable_value_names_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        apply_environment("send-email.v2", WorkerOptions(), {variable: value})

    assert str(caught.value).startswith(variable + ":")


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CONDUCTOR_WORKER_BATCH_SIZE", "0"),
        ("CONDUCTOR_WORKER_T_POLL_TIMEOUT", "30"),
        ("CONDUCTOR_WORKER_POLL_INTERVAL", "-1"),
    ],
)
def test_out_of_range_value_from_the_environment_is_rejected(variable: str, value: str) -> None:
    with pytest.raises(ConfigurationError):
        apply_environment("t", WorkerOptions(), {variable: value})


def test_out_of_range_value_from_the_environment_names_the_variable() -> None:
    with pytest.raises(ConfigurationError, match="CONDUCTOR_WORKER_T_BATCH_SIZE"):
        apply_environment("t", WorkerOptions(), {"CONDUCTOR_WORKER_T_BATCH_SIZE": "0"})


# -- options: validation ------------------------------------------------------------------------


def test_option_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "host-a")

    options = WorkerOptions()

    assert options == WorkerOptions(
        batch_size=1,
        poll_interval_seconds=1.0,
        poll_timeout_seconds=2.0,
        domain=None,
        worker_id="host-a",
        paused=False,
        lease_extension=True,
    )
    assert WorkerOptions(domain="").domain is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.batch_size = 2  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"batch_size": 0}, "batch_size must be at least 1, got 0"),
        ({"batch_size": -3}, "batch_size must be at least 1"),
        ({"poll_interval_seconds": -0.1}, "poll_interval_seconds must not be negative"),
        ({"poll_timeout_seconds": 5.01}, "poll_timeout_seconds must be between 0 and 5"),
        ({"poll_timeout_seconds": -1}, "poll_timeout_seconds must be between 0 and 5"),
        ({"poll_timeout_seconds": math.nan}, "poll_timeout_seconds"),
    ],
)
def test_invalid_options_are_rejected(kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        WorkerOptions(**kwargs)


def test_boundary_options_are_accepted() -> None:
    assert WorkerOptions(poll_timeout_seconds=MAX_POLL_TIMEOUT_SECONDS).poll_timeout_seconds == 5
    assert WorkerOptions(poll_timeout_seconds=0).poll_timeout_seconds == 0
    assert WorkerOptions(poll_interval_seconds=0).poll_interval_seconds == 0


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_poll_interval_is_rejected(value: float) -> None:
    with pytest.raises(ConfigurationError):
        WorkerOptions(poll_interval_seconds=value)


def test_configuration_error_is_a_value_error() -> None:
    assert issubclass(ConfigurationError, ValueError)
    assert issubclass(ConfigurationError, ConductorWorkerError)


# -- HttpSettings -------------------------------------------------------------------------------


def test_http_settings_defaults() -> None:
    settings = HttpSettings()

    assert settings.base_url == DEFAULT_SERVER_URL == "http://localhost:8080/api"
    assert settings.timeout_seconds > 0
    assert settings.connect_timeout_seconds > 0
    assert settings.pool_size >= 1
    assert settings.verify_tls is True


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("http://localhost:8080/api/", "http://localhost:8080/api"),
        ("https://x.orkesconductor.io/api///", "https://x.orkesconductor.io/api"),
        ("http://h:1/api", "http://h:1/api"),
    ],
)
def test_http_settings_strip_trailing_slashes(given: str, stored: str) -> None:
    assert HttpSettings(given).base_url == stored


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"base_url": "localhost:8080/api"}, "must start with http:// or https://"),
        ({"base_url": "ftp://host/api"}, "'ftp://host/api'"),
        ({"base_url": ""}, "must start with"),
        ({"timeout_seconds": 0}, "timeouts must be positive"),
        ({"connect_timeout_seconds": -1}, "timeouts must be positive"),
        ({"pool_size": 0}, "pool_size must be at least 1"),
        ({"ca_bundle": "/nonexistent/ca.pem"}, "'/nonexistent/ca.pem' is not a readable file"),
    ],
)
def test_http_settings_validation(kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        HttpSettings(**kwargs)

    assert fragment in str(caught.value)


def test_http_settings_accept_an_existing_ca_bundle(tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text("not parsed here")

    assert HttpSettings(ca_bundle=str(bundle)).ca_bundle == str(bundle)


@pytest.mark.parametrize(
    ("environ", "url"),
    [
        ({}, DEFAULT_SERVER_URL),
        ({"CONDUCTOR_SERVER_URL": ""}, DEFAULT_SERVER_URL),
        ({"CONDUCTOR_SERVER_URL": "https://x.example/api/"}, "https://x.example/api"),
    ],
)
def test_http_settings_from_env(environ: dict[str, str], url: str) -> None:
    assert HttpSettings.from_env(environ).base_url == url


def test_http_settings_from_env_validates() -> None:
    with pytest.raises(ConfigurationError, match="must start with http"):
        HttpSettings.from_env({"CONDUCTOR_SERVER_URL": "example.com"})


def test_http_settings_from_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONDUCTOR_SERVER_URL", "http://from-env:1/api/")

    assert HttpSettings.from_env().base_url == "http://from-env:1/api"


# -- AuthenticationSettings ---------------------------------------------------------------------


def test_authentication_settings_never_show_the_secret() -> None:
    auth = AuthenticationSettings("key-1", SECRET)

    for text in (repr(auth), str(auth), f"{auth}", f"{auth!r}", repr([auth])):
        assert SECRET not in text
        assert "key-1" in text
    assert auth.key_secret == SECRET  # still there to use


@pytest.mark.parametrize(("key", "secret"), [("", SECRET), ("key-1", ""), ("", "")])
def test_authentication_settings_need_both_parts(key: str, secret: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        AuthenticationSettings(key, secret)

    assert SECRET not in str(caught.value)


def test_authentication_from_env() -> None:
    auth = AuthenticationSettings.from_env(
        {"CONDUCTOR_AUTH_KEY": "key-1", "CONDUCTOR_AUTH_SECRET": SECRET}
    )

    assert auth == AuthenticationSettings("key-1", SECRET)
    assert AuthenticationSettings.from_env({}) is None
    assert AuthenticationSettings.from_env({"CONDUCTOR_AUTH_KEY": ""}) is None


@pytest.mark.parametrize(
    ("environ", "missing"),
    [
        ({"CONDUCTOR_AUTH_KEY": "key-1"}, "CONDUCTOR_AUTH_SECRET"),
        ({"CONDUCTOR_AUTH_KEY": "key-1", "CONDUCTOR_AUTH_SECRET": ""}, "CONDUCTOR_AUTH_SECRET"),
        ({"CONDUCTOR_AUTH_SECRET": SECRET}, "CONDUCTOR_AUTH_KEY"),
    ],
)
def test_authentication_from_env_with_one_part_names_the_missing_variable(
    environ: dict[str, str], missing: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        AuthenticationSettings.from_env(environ)

    message = str(caught.value)
    assert message.startswith(f"{missing} is not set")
    assert SECRET not in message


# -- ConductorClient ----------------------------------------------------------------------------


@pytest.mark.usefixtures("no_connect")
def test_client_builds_without_network() -> None:
    client = ConductorClient(http=HttpSettings(UNUSED_URL, timeout_seconds=7, pool_size=3))

    assert client.auth is None
    assert type(client.api_client) is not AuthenticatingApiClient
    assert isinstance(client.api_client, ApiClient)
    assert client.api_client.configuration.host == UNUSED_URL
    assert repr(client) == f"ConductorClient({UNUSED_URL!r}, no auth)"
    client.close()


@pytest.mark.usefixtures("no_connect")
def test_client_with_auth_builds_without_network_and_hides_the_secret() -> None:
    auth = AuthenticationSettings("key-1", SECRET)
    client = ConductorClient(auth, HttpSettings(UNUSED_URL))

    assert isinstance(client.api_client, AuthenticatingApiClient)
    assert client.auth is auth
    assert repr(client) == f"ConductorClient({UNUSED_URL!r}, with auth)"
    for text in (repr(client), str(client), repr(client.api_client), repr(client.__dict__)):
        assert SECRET not in text


@pytest.mark.usefixtures("no_connect")
def test_client_defaults_timeouts_headers_and_no_blind_retries() -> None:
    settings = HttpSettings(
        UNUSED_URL, timeout_seconds=7, connect_timeout_seconds=2, headers={"X-Team": "billing"}
    )
    client = ConductorClient(http=settings)
    api_client: Any = client.api_client

    assert api_client.default_timeout.connect_timeout == 2
    assert api_client.default_timeout.read_timeout == 7
    assert client.api_client.default_headers["X-Team"] == "billing"
    retries = client.api_client.rest_client.pool_manager.connection_pool_kw["retries"]
    assert isinstance(retries, urllib3.Retry)
    assert (retries.total, retries.connect, retries.read, retries.status) == (0, 0, 0, 0)


@pytest.mark.usefixtures("no_connect")
@pytest.mark.parametrize(("verify", "mode"), [(True, ssl.CERT_REQUIRED), (False, ssl.CERT_NONE)])
def test_client_tls_verification(verify: bool, mode: ssl.VerifyMode) -> None:
    client = ConductorClient(http=HttpSettings("https://127.0.0.1:9/api", verify_tls=verify))

    assert client.api_client.rest_client.pool_manager.connection_pool_kw["cert_reqs"] == mode


@pytest.mark.usefixtures("no_connect")
def test_client_from_env() -> None:
    client = ConductorClient.from_env(
        {
            "CONDUCTOR_SERVER_URL": UNUSED_URL + "/",
            "CONDUCTOR_AUTH_KEY": "key-1",
            "CONDUCTOR_AUTH_SECRET": SECRET,
        }
    )

    assert client.http.base_url == UNUSED_URL
    assert client.auth == AuthenticationSettings("key-1", SECRET)
    assert SECRET not in repr(client)
    assert ConductorClient.from_env({}).http.base_url == DEFAULT_SERVER_URL


@pytest.mark.usefixtures("no_connect")
def test_ensure_pool_size_raises_the_pool_maxsize_and_never_lowers_it() -> None:
    client = ConductorClient(http=HttpSettings(UNUSED_URL, pool_size=2))
    manager = client.api_client.rest_client.pool_manager
    old_pool = manager.connection_from_url(UNUSED_URL)  # built lazily; no connection is made
    assert manager.connection_pool_kw["maxsize"] == 2

    client.ensure_pool_size(8)

    assert manager.connection_pool_kw["maxsize"] == 8
    new_pool: Any = manager.connection_from_url(UNUSED_URL)
    assert new_pool is not old_pool  # existing pools were dropped, to be rebuilt at the new size
    assert new_pool.pool.maxsize == 8

    client.ensure_pool_size(4)

    assert manager.connection_pool_kw["maxsize"] == 8
    assert manager.connection_from_url(UNUSED_URL) is new_pool  # untouched


@pytest.mark.usefixtures("no_connect")
@pytest.mark.parametrize(
    ("attribute", "api_class"),
    [
        ("tasks", TaskApi),
        ("workflows", WorkflowApi),
        ("workflow_bulk", WorkflowBulkApi),
        ("metadata", MetadataApi),
        ("events", EventApi),
    ],
)
def test_typed_apis_are_the_generated_classes_and_cached(
    attribute: str, api_class: type[Any]
) -> None:
    client = ConductorClient(http=HttpSettings(UNUSED_URL))

    api = getattr(client, attribute)

    assert type(api) is api_class
    assert api.api_client is client.api_client
    assert getattr(client, attribute) is api
    assert ConductorClient(http=HttpSettings(UNUSED_URL)).tasks is not client.tasks


@pytest.mark.usefixtures("no_connect")
def test_client_close_and_context_manager_release_pools() -> None:
    with ConductorClient(http=HttpSettings(UNUSED_URL)) as client:
        manager = client.api_client.rest_client.pool_manager
        manager.connection_from_url(UNUSED_URL)
        assert len(manager.pools) == 1

    assert len(manager.pools) == 0
