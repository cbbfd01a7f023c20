"""Orkes authentication (conductor_client.auth) against the fake server: loopback sockets only."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator

import pytest

import conductor_client as cc
from conductor_client.auth import (
    TOKEN_HEADER,
    TOKEN_RENEWALS_PER_CALL,
    AuthenticatingApiClient,
    AuthenticationError,
    TokenProvider,
    authenticated_api_client,
)
from conductor_client.exceptions import (
    ForbiddenException,
    OpenApiException,
    UnauthorizedException,
)
from tests.fakes import FakeOrkesServer, FakeResponse

KEY_ID = "key-id-42"
SECRET = "S3CRET-MARKER-123"
TASK_ID = "task-1"
TASK_PATH = f"/api/tasks/{TASK_ID}"

pytestmark = pytest.mark.timeout(60)


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(0.02)


def run_threads(count: int, target: Callable[[], None]) -> list[BaseException]:
    """Runs ``target`` in ``count`` threads released together; the exceptions they raised."""
    barrier = threading.Barrier(count)
    errors: list[BaseException] = []

    def body() -> None:
        barrier.wait()
        try:
            target()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=body) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
        assert not thread.is_alive()
    return errors


@pytest.fixture
def server() -> Iterator[FakeOrkesServer]:
    with FakeOrkesServer(KEY_ID, SECRET) as fake:
        fake.put_task({"taskId": TASK_ID, "status": "IN_PROGRESS", "taskType": "demo"})
        yield fake


@pytest.fixture
def make_client() -> Iterator[Callable[..., AuthenticatingApiClient]]:
    """``make_client(server, secret=..., **token_options)``; pools are closed at teardown."""
    clients: list[AuthenticatingApiClient] = []

    def make(
        fake: FakeOrkesServer, secret: str = SECRET, **options: float
    ) -> AuthenticatingApiClient:
        client = authenticated_api_client(fake.url, KEY_ID, secret, **options)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.rest_client.pool_manager.clear()


def assert_task_readable(tasks: cc.TaskApi) -> None:
    assert tasks.get_task(TASK_ID).task_id == TASK_ID


def task_requests(fake: FakeOrkesServer) -> list[tuple[int, str | None]]:
    """(status answered, token sent) of each GET of the test task."""
    return [(r.status, r.header(TOKEN_HEADER)) for r in fake.requests_to(TASK_PATH, "GET")]


# -- the happy path --------------------------------------------------------------------------------


def test_token_is_fetched_once_and_sent_on_every_call(server, make_client) -> None:
    tasks = cc.TaskApi(make_client(server))
    for _ in range(5):
        assert tasks.get_task(TASK_ID).task_id == TASK_ID

    assert server.token_issue_count == 1
    (token,) = server.issued_tokens
    # The bare token, no "Bearer".
    assert task_requests(server) == [(200, token)] * 5
    (token_request,) = server.requests_to("/api/token")
    assert token_request.method == "POST"
    assert token_request.header(TOKEN_HEADER) is None
    assert json.loads(token_request.body) == {"keyId": KEY_ID, "keySecret": SECRET}


def test_post_with_text_response_carries_the_token(server, make_client) -> None:
    tasks = cc.TaskApi(make_client(server))
    result = cc.TaskResult(
        task_id=TASK_ID,
        workflow_instance_id="wf-1",
        status=cc.TaskResultStatus.COMPLETED,
        output_data={"x": 1},
    )
    assert tasks.update_task(result) == TASK_ID
    (post,) = server.requests_to("/api/tasks", "POST")
    assert post.header(TOKEN_HEADER) == server.issued_tokens[0]
    assert server.tasks[TASK_ID]["status"] == "COMPLETED"


def test_convenience_constructor_and_explicit_configuration_agree(server, make_client) -> None:
    client = AuthenticatingApiClient(
        cc.Configuration(host=server.url), KEY_ID, SECRET, refresh_margin_seconds=10
    )
    try:
        assert cc.TaskApi(client).get_task(TASK_ID).task_id == TASK_ID
        assert client.token_provider.key_id == KEY_ID
        assert client.token_provider.token_url == server.url + "/token"
    finally:
        client.rest_client.pool_manager.clear()


# -- expiry and rejection --------------------------------------------------------------------------


@pytest.mark.parametrize("rejection_status", [401, 403])
def test_token_expiring_mid_run_is_refreshed_once_and_the_call_succeeds(
    make_client, caplog: pytest.LogCaptureFixture, rejection_status: int
) -> None:
    caplog.set_level(logging.DEBUG)
    # No exp claim: the client cannot see the expiry coming, so the server's rejection is what
    # tells it (the reactive path).
    with FakeOrkesServer(
        KEY_ID, SECRET, token_ttl_seconds=1.0, exp_claim=False, token_error_status=rejection_status
    ) as fake:
        fake.put_task({"taskId": TASK_ID, "status": "IN_PROGRESS"})
        tasks = cc.TaskApi(make_client(fake))
        tasks.get_task(TASK_ID)
        first = fake.issued_tokens[0]
        fake.token_ttl_seconds = 3600  # the replacement outlives the test
        wait_until(lambda: fake.is_expired(first))

        assert tasks.get_task(TASK_ID).task_id == TASK_ID

        assert fake.token_issue_count == 2
        second = fake.issued_tokens[1]
        assert task_requests(fake) == [(200, first), (rejection_status, first), (200, second)]
    for token in (first, second):
        assert token not in caplog.text
    assert "EXPIRED_TOKEN" in caplog.text  # the retry is logged, with the reason


@pytest.mark.parametrize("how", ["revoked", "unknown"])
def test_revoked_or_unknown_token_is_replaced_once(server, make_client, how: str) -> None:
    tasks = cc.TaskApi(make_client(server))
    tasks.get_task(TASK_ID)
    first = server.issued_tokens[0]
    if how == "revoked":
        server.revoke(first)  # answered EXPIRED_TOKEN
    else:
        server.forget_all_tokens()  # answered INVALID_TOKEN

    assert tasks.get_task(TASK_ID).task_id == TASK_ID
    assert server.token_issue_count == 2
    assert task_requests(server) == [(200, first), (401, first), (200, server.issued_tokens[1])]


def test_retried_post_resends_the_same_body(server, make_client) -> None:
    tasks = cc.TaskApi(make_client(server))
    tasks.get_task(TASK_ID)
    server.revoke(server.issued_tokens[0])
    result = cc.TaskResult(
        task_id=TASK_ID, workflow_instance_id="wf-1", status=cc.TaskResultStatus.COMPLETED
    )

    assert tasks.update_task(result) == TASK_ID

    posts = server.requests_to("/api/tasks", "POST")
    assert [p.status for p in posts] == [401, 200]
    assert posts[0].body == posts[1].body
    assert json.loads(posts[1].body)["taskId"] == TASK_ID


def test_a_renewed_token_rejected_too_is_renewed_again(server, make_client) -> None:
    # A renewed token can expire before the resent call lands (short-lived tokens, busy machine).
    tasks = cc.TaskApi(make_client(server))
    server.fail_next(401, count=2, body={"error": "EXPIRED_TOKEN"}, path=TASK_PATH)

    assert tasks.get_task(TASK_ID).task_id == TASK_ID
    assert server.token_issue_count == 3
    requests = task_requests(server)
    assert [status for status, _ in requests] == [401, 401, 200]
    assert [token for _, token in requests] == server.issued_tokens


def test_renewals_per_call_are_bounded(server, make_client) -> None:
    tasks = cc.TaskApi(make_client(server))
    server.fail_next(401, count=10, body={"error": "INVALID_TOKEN"}, path=TASK_PATH)

    with pytest.raises(UnauthorizedException):
        tasks.get_task(TASK_ID)
    assert server.token_issue_count == 1 + TOKEN_RENEWALS_PER_CALL
    assert len(task_requests(server)) == 1 + TOKEN_RENEWALS_PER_CALL


@pytest.mark.parametrize(
    ("status", "body", "exception"),
    [
        (401, {"error": "ACCESS_DENIED", "message": "no permission"}, UnauthorizedException),
        (403, {"message": "Forbidden: missing role"}, ForbiddenException),
        (401, None, UnauthorizedException),
        # Token words, but not a token a new one would fix (or not a rejection at all).
        (403, {"message": "Forbidden - invalid token audience"}, ForbiddenException),
        (401, {"message": "denied: not an expired token issue"}, UnauthorizedException),
        (401, {"error": "EXPIRED_TOKENS_DISABLED"}, UnauthorizedException),
    ],
)
def test_other_401_and_403_are_not_retried(
    server, make_client, status: int, body: object, exception: type[Exception]
) -> None:
    tasks = cc.TaskApi(make_client(server))
    server.fail_next(status, body=body, path=TASK_PATH)

    with pytest.raises(exception):
        tasks.get_task(TASK_ID)
    assert server.token_issue_count == 1
    assert len(task_requests(server)) == 1


@pytest.mark.parametrize(
    "body",
    [
        {"message": "Invalid token: signature mismatch"},
        {"message": "expired token"},
        {"status": 401, "error": "invalid-token"},
    ],
)
def test_token_errors_are_recognized_leniently(server, make_client, body: object) -> None:
    tasks = cc.TaskApi(make_client(server))
    server.fail_next(401, body=body, path=TASK_PATH)

    assert tasks.get_task(TASK_ID).task_id == TASK_ID
    assert server.token_issue_count == 2


def test_a_token_echoed_in_an_error_body_is_masked(server, make_client) -> None:
    # A proxy's or server's error page may echo the request headers; the body becomes the
    # exception's message, which ends up in logs.
    tasks = cc.TaskApi(make_client(server))
    assert tasks.get_task(TASK_ID).task_id == TASK_ID
    (token,) = server.issued_tokens
    server.fail_next(403, body={"message": f"denied for X-Authorization: {token}"}, path=TASK_PATH)

    with pytest.raises(ForbiddenException) as caught:
        tasks.get_task(TASK_ID)
    assert token not in str(caught.value)
    assert "denied for X-Authorization: ***" in str(caught.value)


def test_a_stale_rejection_does_not_refresh_again(server) -> None:
    provider = TokenProvider(KEY_ID, SECRET, server.url)
    first = provider.get_token()
    assert first is not None
    provider.invalidate(first)
    second = provider.get_token()
    assert second not in (None, first)

    provider.invalidate(first)  # a late report about the old token
    assert provider.get_token() == second
    assert server.token_issue_count == 2


# -- concurrency -----------------------------------------------------------------------------------


def test_concurrent_first_callers_share_one_token_request(server) -> None:
    server.token_delay_seconds = 0.3
    provider = TokenProvider(KEY_ID, SECRET, server.url)
    seen: list[str | None] = []

    errors = run_threads(20, lambda: seen.append(provider.get_token()))

    assert errors == []
    assert server.token_issue_count == 1
    assert seen == [server.issued_tokens[0]] * 20


def test_twenty_threads_rejected_together_cause_one_refresh(server, make_client) -> None:
    tasks = cc.TaskApi(make_client(server))
    tasks.get_task(TASK_ID)
    server.revoke(server.issued_tokens[0])
    server.token_delay_seconds = 0.3  # they all pile up behind the one refresh

    errors = run_threads(20, lambda: assert_task_readable(tasks))

    assert errors == []
    assert server.token_issue_count == 2
    first, second = server.issued_tokens
    after = task_requests(server)[1:]
    assert sum(status == 200 for status, _ in after) == 20
    assert {(s, t) for s, t in after} <= {(401, first), (200, second)}


def test_twenty_threads_calling_across_an_expiry_cause_one_refresh(make_client) -> None:
    with FakeOrkesServer(KEY_ID, SECRET, token_ttl_seconds=1.0, token_delay_seconds=0.1) as fake:
        fake.put_task({"taskId": TASK_ID, "status": "IN_PROGRESS"})
        tasks = cc.TaskApi(make_client(fake))
        tasks.get_task(TASK_ID)
        fake.token_ttl_seconds = 3600  # the replacement outlives the test
        until = time.monotonic() + 1.5  # past the first token's expiry
        calls = 0
        lock = threading.Lock()

        def keep_calling() -> None:
            nonlocal calls
            while time.monotonic() < until:
                assert tasks.get_task(TASK_ID).task_id == TASK_ID
                with lock:
                    calls += 1
                time.sleep(0.01)

        errors = run_threads(20, keep_calling)

        assert errors == []
        assert calls > 20
        assert fake.token_issue_count == 2
        # Both tokens were used: the expiry really fell inside the run.
        assert {token for _, token in task_requests(fake)} == set(fake.issued_tokens)


def test_concurrent_callers_share_a_failed_token_request(server) -> None:
    server.token_delay_seconds = 2.0  # long enough for all 20 threads to be waiting on it
    provider = TokenProvider(KEY_ID, "wrong-secret", server.url)
    seen: list[str | None] = []

    errors = run_threads(20, lambda: seen.append(provider.get_token()))

    assert seen == []
    assert len(errors) == 20
    assert all(isinstance(e, AuthenticationError) for e in errors)
    assert len(server.requests_to("/api/token")) == 1


# -- proactive refresh -----------------------------------------------------------------------------


def test_token_is_refreshed_before_it_expires_without_any_401(make_client) -> None:
    # A 2 s token: the 60 s default margin is capped at half its lifetime (1 s of slack).
    with FakeOrkesServer(KEY_ID, SECRET, token_ttl_seconds=2.0) as fake:
        fake.put_task({"taskId": TASK_ID, "status": "IN_PROGRESS"})
        tasks = cc.TaskApi(make_client(fake))

        def call_and_check() -> bool:
            tasks.get_task(TASK_ID)
            return fake.token_issue_count >= 3

        wait_until(call_and_check, timeout=10)

        statuses = [status for status, _ in task_requests(fake)]
        assert set(statuses) == {200}
        assert len({token for _, token in task_requests(fake)}) == 3


def test_without_exp_claim_the_configured_ttl_is_assumed(make_client) -> None:
    with FakeOrkesServer(KEY_ID, SECRET, exp_claim=False) as fake:
        fake.put_task({"taskId": TASK_ID, "status": "IN_PROGRESS"})
        tasks = cc.TaskApi(make_client(fake, default_ttl_seconds=1.0))
        began = time.monotonic()

        def call_and_check() -> bool:
            tasks.get_task(TASK_ID)
            return fake.token_issue_count >= 2

        wait_until(call_and_check)

        # Refreshed at half the assumed 1 s lifetime, not at the (hour-long) real one.
        assert time.monotonic() - began < 2
        assert {status for status, _ in task_requests(fake)} == {200}


def test_failed_proactive_refresh_keeps_using_the_valid_token(
    make_client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="conductor_client.auth")
    with FakeOrkesServer(KEY_ID, SECRET, token_ttl_seconds=4.0) as fake:
        fake.put_task({"taskId": TASK_ID, "status": "IN_PROGRESS"})
        tasks = cc.TaskApi(make_client(fake))
        issued_at = time.time()
        tasks.get_task(TASK_ID)
        first = fake.issued_tokens[0]
        fake.fail_next(503, path="/api/token")
        # Refresh is due after 2 s (half of 4 s); the token is valid until 4 s.
        wait_until(lambda: time.time() > issued_at + 2.2)

        assert tasks.get_task(TASK_ID).task_id == TASK_ID

        assert fake.token_issue_count == 1
        assert task_requests(fake)[-1] == (200, first)
        assert [r.status for r in fake.requests_to("/api/token")] == [200, 503]
    assert "could not refresh the token" in caplog.text
    assert first not in caplog.text


# -- failures --------------------------------------------------------------------------------------


def test_wrong_credentials_raise_a_clear_error_without_the_secret(
    make_client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with FakeOrkesServer(KEY_ID, "the-right-secret") as fake:
        tasks = cc.TaskApi(make_client(fake, secret=SECRET))

        with pytest.raises(AuthenticationError) as caught:
            tasks.get_task(TASK_ID)

        (token_request,) = fake.requests_to("/api/token")
        assert SECRET in token_request.body.decode()  # it was sent, so its absence below counts
        assert fake.requests_to(TASK_PATH) == []  # the call itself never went out
    error = caught.value
    assert isinstance(error, OpenApiException)
    assert error.status == 401
    assert error.url == fake.url + "/token"
    message = str(error)
    assert "401" in message
    assert KEY_ID in message
    assert "rejected" in message
    for text in (message, repr(error), repr(error.__cause__), caplog.text):
        assert SECRET not in text
    assert all(SECRET not in record.getMessage() for record in caplog.records)


def test_a_secret_echoed_by_the_server_is_redacted(server, make_client) -> None:
    server.fail_next(401, body={"message": f"bad secret {SECRET}"}, path="/api/token")

    with pytest.raises(AuthenticationError) as caught:
        cc.TaskApi(make_client(server)).get_task(TASK_ID)
    assert SECRET not in str(caught.value)
    assert "bad secret ***" in str(caught.value)


def test_server_error_on_token_raises_and_a_later_call_recovers(server, make_client) -> None:
    tasks = cc.TaskApi(make_client(server))
    server.fail_next(503, path="/api/token")

    with pytest.raises(AuthenticationError, match="answered 503") as caught:
        tasks.get_task(TASK_ID)
    assert caught.value.status == 503
    assert tasks.get_task(TASK_ID).task_id == TASK_ID  # failures are not cached


def test_unreachable_server_raises_authentication_error() -> None:
    with FakeOrkesServer(KEY_ID, SECRET) as fake:
        url = fake.url
    # Stopped: its port now refuses connections.
    config = cc.Configuration(host=url)
    config.retries = 0
    client = AuthenticatingApiClient(config, KEY_ID, SECRET)
    try:
        with pytest.raises(AuthenticationError, match="could not get a token") as caught:
            cc.TaskApi(client).get_task(TASK_ID)
    finally:
        client.rest_client.pool_manager.clear()
    assert caught.value.status is None
    assert SECRET not in str(caught.value)


def test_a_200_without_a_token_is_an_error(server) -> None:
    server.add_route(
        "POST", "/api/token", lambda _: FakeResponse.json(200, {"jwt": "x"}), protected=False
    )
    with pytest.raises(AuthenticationError, match="without a 'token'"):
        TokenProvider(KEY_ID, SECRET, server.url).get_token()


def test_an_opaque_token_is_used_with_the_default_ttl(server) -> None:
    server.add_route(
        "POST",
        "/api/token",
        lambda _: FakeResponse.json(200, {"token": "a.%%%.c"}),
        protected=False,
    )
    provider = TokenProvider(KEY_ID, SECRET, server.url)
    assert provider.get_token() == "a.%%%.c"
    assert provider.get_token() == "a.%%%.c"
    assert len(server.requests_to("/api/token")) == 1


# -- servers without authentication ----------------------------------------------------------------


def test_404_on_token_means_no_auth_calls_go_out_without_a_header(
    make_client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="conductor_client.auth")
    with FakeOrkesServer(KEY_ID, SECRET, auth_enabled=False) as fake:
        fake.put_task({"taskId": TASK_ID, "status": "IN_PROGRESS"})
        client = make_client(fake)
        tasks = cc.TaskApi(client)
        for _ in range(3):
            assert tasks.get_task(TASK_ID).task_id == TASK_ID

        assert task_requests(fake) == [(200, None)] * 3
        assert [r.status for r in fake.requests_to("/api/token")] == [404]
        assert client.token_provider.auth_disabled
    no_auth_logs = [r for r in caplog.records if "no authentication" in r.getMessage()]
    assert len(no_auth_logs) == 1
    assert no_auth_logs[0].levelno == logging.INFO


# -- hygiene ---------------------------------------------------------------------------------------


def test_reprs_show_neither_secret_nor_token(server, make_client) -> None:
    client = make_client(server)
    cc.TaskApi(client).get_task(TASK_ID)
    token = server.issued_tokens[0]
    for text in (repr(client), repr(client.token_provider), str(client.token_provider)):
        assert SECRET not in text
        assert token not in text
        assert KEY_ID in text


def test_invalid_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="key_secret"):
        TokenProvider(KEY_ID, "", "http://127.0.0.1:1/api")
    with pytest.raises(ValueError, match="refresh_margin_seconds"):
        TokenProvider(KEY_ID, SECRET, "http://127.0.0.1:1/api", refresh_margin_seconds=-1)
