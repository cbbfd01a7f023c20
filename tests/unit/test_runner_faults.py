"""TaskRunner against a misbehaving server (tests/fakes/conductor.py): loopback sockets only.

Every test runs a real TaskRunner, with a fast retry policy, against
a FakeConductorServer that fails in one way or another, and checks what matters to a user:
every result reaches the server with the right status and output (exactly once, unless a test
says why at least once is the right promise), the runner keeps working afterwards, and
shutdown() returns.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from conductor_client.auth import TOKEN_RENEWALS_PER_CALL
from conductor_worker import (
    AuthenticationSettings,
    RunnerState,
    Task,
)
from tests.fakes import FakeConductorServer, FakeResponse, invalid_json
from tests.fakes.conductor import UPDATES
from tests.unit.runner_harness import (
    ANY_UPDATE_PATH,
    KEY_ID,
    KEY_SECRET,
    POLL_PATH,
    TASK,
    UPDATE_PATH,
    UPDATE_V2_PATH,
    add_numbers,
    assert_doubled_exactly_once,
    double,
    fast_and_isolated,
    raw_task,
    running,
    statuses,
    wait_until,
)

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(autouse=True)
def _fast_and_isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    fast_and_isolated(monkeypatch)


# -- 5xx and 429 while polling -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "failures"),
    [(503, 5), (500, 2), (502, 2), (429, 2)],
)
def test_poll_errors_back_off_and_polling_resumes(status: int, failures: int) -> None:
    with FakeConductorServer() as fake:
        numbers = add_numbers(fake, 6)
        fault = fake.inject("poll", FakeResponse.error(status, "unavailable"), count=failures)
        with running(fake) as run:
            fake.wait_for_results(numbers)
            assert fault.hits == failures
            assert run.poll_errors(str(status), after_failures=False) == 1
            assert run.poll_errors(str(status), after_failures=True) == failures - 1

            # Backing off: the failed polls are spread out (0.25-0.5 s after the first
            # failure, then at least 0.5 s), not sent in a tight loop.
            failed = [r.at for r in fake.requests_to(POLL_PATH) if r.status == status]
            gaps = [later - earlier for earlier, later in itertools.pairwise(failed)]
            assert len(gaps) == failures - 1
            assert all(gap >= 0.2 for gap in gaps[:1])
            assert all(gap >= 0.45 for gap in gaps[1:])

            more = add_numbers(fake, 3, start=100)
            fake.wait_for_results(more)
            assert run.stop()
        assert_doubled_exactly_once(fake, numbers | more)


# -- connection resets ---------------------------------------------------------------------------


def test_connection_resets_during_poll_and_update_lose_nothing() -> None:
    # The server never saw the reset requests: each result arrives exactly once.
    with FakeConductorServer() as fake:
        numbers = add_numbers(fake, 6)
        poll_fault = fake.inject("poll", FakeResponse.connection_reset(), count=3)
        update_fault = fake.inject(UPDATES, FakeResponse.connection_reset(), count=3)
        with running(fake) as run:
            fake.wait_for_results(numbers)
            assert poll_fault.hits == 3
            assert update_fault.hits == 3
            assert run.poll_errors("connection") == 3
            # Each failed attempt is counted, the first (update-v2) and the background retries.
            assert run.metric("task_update_error_total") == 3

            more = add_numbers(fake, 3, start=100)
            fake.wait_for_results(more)
            assert run.stop()
            assert run.undelivered == []
        assert statuses(fake, ANY_UPDATE_PATH).count(0) == 3
        assert_doubled_exactly_once(fake, numbers | more)


def test_update_answer_lost_after_the_server_acted_is_delivered_at_least_once() -> None:
    # The connection drops after the server has recorded the result: the runner cannot tell
    # this from a result that never arrived, so it sends it again. Here AT LEAST once is the
    # promise (the server ignores an update to a task that is already terminal); a missing
    # result would be the bug. update-v2 is off so that a lost answer cannot take a next task
    # with it (that one would wait for its response timeout on a real server).
    with FakeConductorServer(update_v2=False) as fake:
        numbers = add_numbers(fake, 4)
        fault = fake.inject(
            "update", FakeResponse.connection_reset(), count=2, after_processing=True
        )
        with running(fake) as run:
            fake.wait_for_results(numbers)
            assert run.stop()
            assert run.undelivered == []
        assert fault.hits == 2
        results = fake.results
        for task_id, n in numbers.items():
            received = results[task_id]
            # One extra copy per lost answer, and both losses may hit the same task.
            assert 1 <= len(received) <= 1 + fault.hits
            for result in received:
                assert result["status"] == "COMPLETED"
                assert result["outputData"] == {"doubled": 2 * n}
        assert sum(len(results[task_id]) for task_id in numbers) == len(numbers) + 2


# -- 5xx while updating --------------------------------------------------------------------------


def test_update_errors_are_retried_in_the_background() -> None:
    with FakeConductorServer() as fake:
        numbers = add_numbers(fake, 4)
        fault = fake.inject(UPDATES, FakeResponse.error(500, "database is down"), count=3)
        with running(fake) as run:
            fake.wait_for_results(numbers)
            assert fault.hits == 3
            assert run.metric("task_update_error_total") == 3
            assert run.metric("task_result_undelivered_total") == 0

            more = add_numbers(fake, 2, start=100)
            fake.wait_for_results(more)
            assert run.stop()
            assert run.undelivered == []
        assert_doubled_exactly_once(fake, numbers | more)


# -- a hung server -------------------------------------------------------------------------------


def test_hung_server_times_out_and_the_runner_carries_on() -> None:
    # Hung requests are never processed (the fake resets them when it gives up), so the
    # results still arrive exactly once.
    hang = FakeResponse.hang(60)  # far beyond the client's timeout; ended by stop()
    with FakeConductorServer() as fake:
        poll_fault = fake.inject("poll", hang, count=1)
        with running(fake, client_timeout=0.5) as run:
            wait_until(lambda: run.poll_errors("timeout") >= 1, timeout=5)
            update_fault = fake.inject(UPDATES, hang, count=2)
            numbers = add_numbers(fake, 3)
            fake.wait_for_results(numbers, timeout=15)
            assert poll_fault.hits >= 1
            assert update_fault.hits == 2
            assert run.metric("task_update_error_total") == 2

            more = add_numbers(fake, 2, start=100)
            fake.wait_for_results(more)
            assert run.stop()
            assert run.undelivered == []
        assert_doubled_exactly_once(fake, numbers | more)


# -- results that cannot be delivered ------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "attempts"),
    [
        pytest.param(500, 3, id="retryable-until-max-attempts"),
        pytest.param(400, 1, id="not-retryable"),
    ],
)
def test_undeliverable_result_goes_to_the_hook_and_an_error_log(
    caplog: pytest.LogCaptureFixture, status: int, attempts: int
) -> None:
    caplog.set_level(logging.ERROR, logger="conductor_worker")
    with FakeConductorServer() as fake:
        fault = fake.inject(UPDATES, FakeResponse.error(status, "rejected"))
        numbers = add_numbers(fake, 1)
        (task_id,) = numbers
        workflow_id = fake.task(task_id)["workflowInstanceId"]
        with running(fake, max_attempts=3) as run:
            wait_until(lambda: run.undelivered)
            ((item, error),) = run.undelivered
            assert (item.task_id, item.workflow_instance_id) == (task_id, workflow_id)
            assert item.attempts == attempts == fault.hits
            assert str(status) in error
            # The hook gets the whole result, so it can be kept and sent later.
            body = json.loads(item.body)
            assert body["status"] == "COMPLETED"
            assert body["outputData"] == {"doubled": 0}
            assert run.metric("task_result_undelivered_total") == 1
            errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
            assert any(task_id in m and workflow_id in m for m in errors), errors

            fault.cancel()
            more = add_numbers(fake, 2, start=100)
            fake.wait_for_results(more)
            assert run.stop()
        assert task_id not in fake.results
        assert_doubled_exactly_once(fake, more)


# -- authentication ------------------------------------------------------------------------------


def test_expired_and_revoked_tokens_are_renewed_without_a_failed_call(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="conductor_worker")
    gate = threading.Event()

    def gated_double(n: int) -> dict[str, int]:
        assert gate.wait(10)
        return {"doubled": 2 * n}

    # Tokens without an exp claim: the client cannot refresh ahead of time, so every expiry
    # (the server's, after 0.7 s) is met by a call that gets 401 EXPIRED_TOKEN.
    with FakeConductorServer(
        auth_enabled=True,
        key_id=KEY_ID,
        key_secret=KEY_SECRET,
        token_ttl_seconds=0.7,
        exp_claim=False,
    ) as fake:

        def rejections() -> int:
            return sum(1 for r in fake.requests if r.status == 401)

        def more_rejections(than: int) -> bool:
            return rejections() > than

        auth = AuthenticationSettings(KEY_ID, KEY_SECRET)
        with running(fake, gated_double, batch_size=3, auth=auth) as run:
            numbers: dict[str, int] = {}
            gate.set()
            for wave in range(3):
                batch = add_numbers(fake, 3, start=10 * wave)
                numbers |= batch
                fake.wait_for_results(batch)
                # The runner keeps polling; its token expires under it.
                assert fake.wait_for(functools.partial(more_rejections, rejections()), timeout=5)

            # Revoked while tasks run: their updates are the calls that meet the rejection.
            gate.clear()
            batch = add_numbers(fake, 3, start=100)
            numbers |= batch
            assert fake.wait_for(lambda: all(fake.task(t)["pollCount"] for t in batch))
            fake.revoke_all()
            gate.set()
            fake.wait_for_results(batch)
            assert run.stop()

            assert run.poll_errors() == 0
            assert run.metric("task_update_error_total") == 0
            assert run.undelivered == []
        assert 401 in statuses(fake, ANY_UPDATE_PATH)
        assert 401 in statuses(fake, POLL_PATH)
        assert fake.token_issue_count >= 3  # the first, at least one renewal, after the revocation
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
        assert_doubled_exactly_once(fake, numbers)


@pytest.mark.parametrize(
    ("answer", "retried"),
    [
        pytest.param({"error": "EXPIRED_TOKEN"}, True, id="renewed-token-expired-too"),
        pytest.param({"message": "not allowed"}, False, id="other-401-is-final"),
    ],
)
def test_a_token_rejected_after_renewal_is_retried_later(
    caplog: pytest.LogCaptureFixture, answer: dict[str, str], retried: bool
) -> None:
    # Short-lived tokens on a slow machine: a renewed token can expire before the call it was
    # fetched for lands. Rejections beyond what one call renews must not lose the result (the
    # next delivery attempt renews again); other 401s are final.
    caplog.set_level(logging.ERROR, logger="conductor_worker")
    sends = 1 + TOKEN_RENEWALS_PER_CALL  # one call: its token renewed and the call resent
    with FakeConductorServer(auth_enabled=True, key_id=KEY_ID, key_secret=KEY_SECRET) as fake:
        fault = fake.inject(UPDATES, FakeResponse.json(401, answer), count=sends)
        numbers = add_numbers(fake, 1)
        (task_id,) = numbers
        auth = AuthenticationSettings(KEY_ID, KEY_SECRET)
        with running(fake, auth=auth, max_attempts=3) as run:
            if retried:
                fake.wait_for_results(numbers)
                assert run.stop()
                assert run.undelivered == []
                assert run.metric("task_update_error_total") == 1
                assert [r.getMessage() for r in caplog.records] == []
            else:
                wait_until(lambda: run.undelivered)
                ((item, error),) = run.undelivered
                assert (item.task_id, item.attempts) == (task_id, 1)
                assert "401" in error
                assert "not allowed" in error
        assert fault.hits == (sends if retried else 1)
        assert fake.token_issue_count == (sends if retried else 1)
    if retried:
        assert_doubled_exactly_once(fake, numbers)


@pytest.mark.parametrize(
    ("answer", "retried"),
    [
        pytest.param(FakeResponse.error(503, "busy"), True, id="token-endpoint-503"),
        pytest.param(FakeResponse.error(429, "slow down"), True, id="token-endpoint-429"),
        pytest.param(FakeResponse.text(200, "<html>proxy</html>"), True, id="token-garbled"),
        pytest.param(FakeResponse.connection_reset(), True, id="token-endpoint-reset"),
        pytest.param(FakeResponse.error(401, "bad key"), False, id="credentials-refused"),
    ],
)
def test_a_renewal_that_fails_for_a_while_does_not_lose_the_result(
    caplog: pytest.LogCaptureFixture, answer: FakeResponse, retried: bool
) -> None:
    # The server rejects the token of the update; getting a new one fails. Unless the token
    # endpoint refused the credentials, the next delivery attempt renews again and delivers.
    caplog.set_level(logging.ERROR, logger="conductor_worker")
    with FakeConductorServer(auth_enabled=True, key_id=KEY_ID, key_secret=KEY_SECRET) as fake:

        def double_then_break_the_renewal(n: int) -> dict[str, int]:
            # Now: the first token is in use, and the renewal is still to come.
            fake.inject("token", answer, count=1)
            return double(n)

        fake.inject(UPDATES, FakeResponse.json(401, {"error": "EXPIRED_TOKEN"}), count=1)
        numbers = add_numbers(fake, 1)
        (task_id,) = numbers
        auth = AuthenticationSettings(KEY_ID, KEY_SECRET)
        with running(fake, double_then_break_the_renewal, auth=auth, max_attempts=3) as run:
            if retried:
                fake.wait_for_results(numbers)
                assert run.stop()
                assert run.undelivered == []
                assert [r.getMessage() for r in caplog.records] == []
            else:
                wait_until(lambda: run.undelivered)
                ((item, error),) = run.undelivered
                assert (item.task_id, item.attempts) == (task_id, 1)
                assert "could not get a token" in error
                assert "401" in error
    if retried:
        assert_doubled_exactly_once(fake, numbers)


# -- older servers -------------------------------------------------------------------------------


def test_old_server_without_update_v2_and_with_204_for_empty_polls() -> None:
    with FakeConductorServer(update_v2=False, empty_poll_204=True) as fake:
        with running(fake) as run:
            assert fake.wait_for(lambda: 204 in statuses(fake, POLL_PATH))
            first = add_numbers(fake, 4)
            fake.wait_for_results(first)
            probes = statuses(fake, UPDATE_V2_PATH)
            # Asked once (or once per slot delivering at the same moment), then remembered.
            assert 1 <= len(probes) <= 2
            assert set(probes) == {405}

            second = add_numbers(fake, 4, start=100)
            fake.wait_for_results(second)
            assert statuses(fake, UPDATE_V2_PATH) == probes
            assert run.poll_errors() == 0
            assert run.metric("task_update_error_total") == 0
            assert run.stop()
        assert_doubled_exactly_once(fake, first | second)


def test_rebuilt_connection_pools_and_redirects_lose_nothing() -> None:
    # The transport keeps the host's connection pool; set_batch_size() makes the client
    # rebuild its pools, and a redirect goes back through the pool manager, as before.
    with FakeConductorServer() as fake:
        with running(fake) as run:
            first = add_numbers(fake, 4)
            fake.wait_for_results(first)
            run.runner.set_batch_size(TASK, 20)  # ensure_pool_size() replaces the pools
            second = add_numbers(fake, 4, start=100)
            fake.wait_for_results(second)
            pool = run.runner._transport._pool
            assert pool is not None
            assert pool.pool is not None
            assert pool.pool.maxsize >= 20  # the transport took the resized pool
            redirect = FakeResponse(307, headers={"Location": "/api/tasks/poll/batch/elsewhere"})
            fake.inject(POLL_PATH, redirect, count=1)
            third = add_numbers(fake, 4, start=200)
            fake.wait_for_results(third)
            assert 307 in statuses(fake, POLL_PATH)
            assert run.metric("task_update_error_total") == 0
            assert run.stop()
        assert_doubled_exactly_once(fake, first | second | third)


# -- malformed answers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "label"),
    [
        pytest.param(FakeResponse.html(502), "502", id="html-502"),
        pytest.param(FakeResponse.html(200, "Welcome"), "malformed_response", id="html-200"),
        pytest.param(invalid_json(), "malformed_response", id="invalid-json"),
        pytest.param(FakeResponse.json(200, {"tasks": []}), "malformed_response", id="object"),
        pytest.param(FakeResponse.json(200, "[]"), "malformed_response", id="string"),
    ],
)
def test_unreadable_poll_answer_is_a_poll_error(response: FakeResponse, label: str) -> None:
    with FakeConductorServer() as fake:
        numbers = add_numbers(fake, 3)
        fault = fake.inject("poll", response, count=1)
        with running(fake) as run:
            fake.wait_for_results(numbers)
            assert fault.hits == 1
            assert run.poll_errors(label) == 1
            assert run.stop()
        assert_doubled_exactly_once(fake, numbers)


@pytest.mark.parametrize(
    ("answer", "level"),
    [
        pytest.param(FakeResponse.error(503, "busy"), logging.WARNING, id="outage-warns"),
        pytest.param(
            FakeResponse.json(401, {"error": "INVALID_TOKEN"}), logging.ERROR, id="token-errs"
        ),
    ],
)
def test_poll_failures_are_logged_by_how_much_attention_they_need(
    caplog: pytest.LogCaptureFixture, answer: FakeResponse, level: int
) -> None:
    # Both are retried; a token the server keeps rejecting after renewals is a configuration
    # problem someone must look at, a busy server is not.
    caplog.set_level(logging.WARNING, logger="conductor_worker")
    with FakeConductorServer(auth_enabled=True, key_id=KEY_ID, key_secret=KEY_SECRET) as fake:
        fake.inject("poll", answer, count=1 + TOKEN_RENEWALS_PER_CALL)
        numbers = add_numbers(fake, 1)
        with running(fake, auth=AuthenticationSettings(KEY_ID, KEY_SECRET)) as run:
            fake.wait_for_results(numbers)
            assert run.stop()
    # caplog keeps WARNING and up only: the first poll line is the failure's.
    polls = [(r.levelno, r.getMessage()) for r in caplog.records if "poll for" in r.getMessage()]
    assert [lvl for lvl, _ in polls][:1] == [level], polls
    assert_doubled_exactly_once(fake, numbers)


def test_a_web_page_instead_of_the_api_is_logged_with_a_hint(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="conductor_worker")
    with FakeConductorServer() as fake:
        numbers = add_numbers(fake, 1)
        fake.inject("poll", FakeResponse.html(200, "Conductor"), count=1)
        with running(fake) as run:
            fake.wait_for_results(numbers)
            assert run.stop()
    polls = [r.getMessage() for r in caplog.records if "poll for" in r.getMessage()]
    assert any("not JSON" in m and "end in /api" in m for m in polls), polls


def test_malformed_task_is_failed_and_the_good_ones_run(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="conductor_worker")
    with FakeConductorServer() as fake:
        fake.add_raw_task(TASK, raw_task("bad-poll-count", pollCount="abc"))
        good = add_numbers(fake, 1)
        fake.add_raw_task(TASK, raw_task("bad-input", inputData=5))
        fake.add_raw_task(TASK, {"taskId": 7, "inputData": {}})  # not even a usable id
        with running(fake, batch_size=4) as run:
            bad = {"bad-poll-count": "pollCount", "bad-input": "inputData"}
            results = fake.wait_for_results([*good, *bad])
            for task_id, field_name in bad.items():
                (result,) = results[task_id]
                assert result["status"] == "FAILED"
                assert result["workflowInstanceId"] == f"wf-{task_id}"
                assert field_name in result["reasonForIncompletion"]
            errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
            assert any("bad-input" in m and "wf-bad-input" in m for m in errors), errors
            assert any("without ids" in m for m in errors), errors

            more = add_numbers(fake, 2, start=100)
            fake.wait_for_results(more)
            assert run.stop()
        assert_doubled_exactly_once(fake, good | more)
        assert {len(fake.results[task_id]) for task_id in bad} == {1}


def test_unknown_fields_and_enum_values_are_accepted() -> None:
    def describe(task: Task) -> dict[str, Any]:
        assert task.task_definition is not None
        assert task.workflow_task is not None
        return {
            "status": task.status,
            "timeoutPolicy": task.task_definition.timeout_policy,
            "retryLogic": task.task_definition.retry_logic,
            "type": task.workflow_task.type,
        }

    from_the_future = raw_task(
        "future-1",
        status="PARKED",  # a Task.status this client does not know
        someNewField={"nested": [1, 2]},
        taskDefinition={
            "name": TASK,
            "timeoutSeconds": 0,
            "timeoutPolicy": "ESCALATE",
            "retryLogic": "FIBONACCI",
            "newDefinitionField": True,
        },
        workflowTask={
            "name": TASK,
            "taskReferenceName": f"{TASK}_ref",
            "type": "QUANTUM",
            "newWorkflowTaskField": [],
        },
        executionMetadata={"serverSendTime": 1, "newMetadata": "x"},
    )
    with FakeConductorServer() as fake:
        fake.add_raw_task(TASK, from_the_future)
        with running(fake, describe) as run:
            (result,) = fake.wait_for_results(["future-1"])["future-1"]
            assert run.stop()
        assert result["status"] == "COMPLETED", result
        assert result["outputData"] == {
            "status": "PARKED",
            "timeoutPolicy": "ESCALATE",
            "retryLogic": "FIBONACCI",
            "type": "QUANTUM",
        }


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(invalid_json(), id="invalid-json"),
        pytest.param(FakeResponse.html(200), id="html-200"),
    ],
)
def test_unreadable_update_v2_answer_after_the_result_was_taken(answer: FakeResponse) -> None:
    # A 2xx from update-v2 means the server has the result, whatever the body looks like: it
    # must not be retried as if lost, nor reported to on_undelivered.
    with FakeConductorServer() as fake:
        numbers = add_numbers(fake, 1)
        fault = fake.inject("update_v2", answer, count=1, after_processing=True)
        with running(fake) as run:
            fake.wait_for_results(numbers)
            more = add_numbers(fake, 2, start=100)
            fake.wait_for_results(more)
            assert run.stop()
            assert fault.hits == 1
            assert run.undelivered == []
            assert run.metric("task_result_undelivered_total") == 0
        assert_doubled_exactly_once(fake, numbers | more)


def test_update_v2_only_while_tasks_are_queued_up() -> None:
    # On an empty queue update-v2 would make the server long-poll for a next task (Conductor
    # OSS: 100 ms and 2-3 queue writes); with tasks waiting it saves a poll per task.
    with FakeConductorServer() as fake:
        with running(fake, batch_size=4) as run:
            assert fake.wait_for(lambda: len(fake.requests_to(POLL_PATH)) >= 1)
            lone = add_numbers(fake, 1)
            fake.wait_for_results(lone)
            assert fake.requests_to(UPDATE_V2_PATH) == []
            assert len(fake.requests_to(UPDATE_PATH)) == 1

            queued = add_numbers(fake, 40, start=100)
            fake.wait_for_results(queued)
            handed_over = [r for r in fake.requests_to(UPDATE_V2_PATH) if r.status == 200]
            assert len(handed_over) >= 20  # most tasks came with the result before them
            assert run.stop()
        assert_doubled_exactly_once(fake, lone | queued)


def test_malformed_next_task_from_update_v2_is_failed() -> None:
    gate = threading.Event()

    def gated_double(n: int) -> dict[str, int]:
        if n == 1:
            assert gate.wait(10)
        return {"doubled": 2 * n}

    with FakeConductorServer() as fake:
        numbers = add_numbers(fake, 2)
        second = next(task_id for task_id, n in numbers.items() if n == 1)
        # One slot: while it is busy nothing polls, so the next task can only come from the
        # update-v2 answer. The second task comes from an instant poll that filled the slot
        # (tasks are queued up), so its result goes back with update-v2.
        with running(fake, gated_double, batch_size=1) as run:
            assert fake.wait_for(lambda: fake.task(second)["status"] == "IN_PROGRESS")
            fake.add_raw_task(TASK, raw_task("bad-next", inputData="not an object"))
            gate.set()
            results = fake.wait_for_results(["bad-next"])
            (failed,) = results["bad-next"]
            assert failed["status"] == "FAILED"
            assert "inputData" in failed["reasonForIncompletion"]
            assert fake.requests_to(UPDATE_V2_PATH)[0].status == 200

            more = add_numbers(fake, 2, start=100)
            fake.wait_for_results(more)
            assert run.stop()
        assert_doubled_exactly_once(fake, numbers | more)


# -- misbehaving workers -------------------------------------------------------------------------


def misbehave(mode: str, n: int = 0) -> dict[str, Any]:
    if mode == "raise":
        raise ValueError("boom")
    if mode == "nan":
        return {"value": math.nan}
    if mode == "unserializable":
        return {"value": object()}
    if mode == "exit":
        raise SystemExit(3)
    if mode == "sleep":
        time.sleep(0.3)
    return {"doubled": 2 * n}


async def misbehave_async(mode: str, n: int = 0) -> dict[str, Any]:
    if mode == "sleep":
        await asyncio.sleep(0.3)
        mode = "ok"
    if mode == "block":
        time.sleep(0.3)  # noqa: ASYNC251 - blocks the event loop on purpose: slow, nothing breaks
    return misbehave(mode, n)


EXPECTED = {
    "raise": ("FAILED", "boom"),
    "nan": ("FAILED_WITH_TERMINAL_ERROR", "NaN"),
    "unserializable": ("FAILED_WITH_TERMINAL_ERROR", "cannot serialize"),
    "exit": ("FAILED", "SystemExit"),
    "sleep": ("COMPLETED", None),
}


@pytest.mark.parametrize("worker", [misbehave, misbehave_async], ids=["def", "async-def"])
def test_misbehaving_worker_never_kills_the_runner(worker: Callable[..., Any]) -> None:
    modes = [*EXPECTED, *(["block"] if worker is misbehave_async else [])]
    with FakeConductorServer() as fake:
        ids = fake.add_tasks(TASK, len(modes), input=lambda i: {"mode": modes[i], "n": i})
        with running(fake, worker, batch_size=3) as run:
            results = fake.wait_for_results(ids)
            for task_id, mode in zip(ids, modes, strict=True):
                (result,) = results[task_id]
                status, reason = EXPECTED.get(mode, ("COMPLETED", None))
                assert result["status"] == status, (mode, result)
                if reason is not None:
                    assert reason in result["reasonForIncompletion"], (mode, result)
            raised = results[ids[modes.index("raise")]][0]
            assert "ValueError: boom" in raised["logs"][-1]["log"]  # the traceback

            # Still polling and running.
            assert run.runner.state is RunnerState.RUNNING
            more = fake.add_tasks(TASK, 3, input=lambda i: {"mode": "ok", "n": i})
            more_results = fake.wait_for_results(more)
            assert all(r[0]["status"] == "COMPLETED" for r in more_results.values())
            assert run.stop()


def test_shutdown_returns_while_a_worker_outlives_the_grace_period(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="conductor_worker")
    release = threading.Event()
    started = threading.Event()

    def stuck(n: int) -> dict[str, int]:
        started.set()
        release.wait(20)
        return {"doubled": 2 * n}

    with FakeConductorServer() as fake:
        numbers = add_numbers(fake, 1)
        (task_id,) = numbers
        workflow_id = fake.task(task_id)["workflowInstanceId"]
        with running(fake, stuck, batch_size=1) as run:
            # Polled is not yet running: a task still between the poll and its worker is
            # handed back at shutdown, so wait for the function itself.
            assert started.wait(10)
            assert run.stop(timeout=0.5) is False
            errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
            assert any(task_id in m and workflow_id in m for m in errors), errors

            # The task ends after all: its result still goes out (the client is open).
            release.set()
            fake.wait_for_results(numbers)
        assert_doubled_exactly_once(fake, numbers)


def test_late_result_that_cannot_be_sent_after_shutdown_is_reported() -> None:
    # After shutdown nobody retries, so a failed late result must go to on_undelivered at once
    # rather than wait in a queue that is never served.
    release = threading.Event()
    started = threading.Event()

    def stuck(n: int) -> dict[str, int]:
        started.set()
        release.wait(20)
        return {"doubled": 2 * n}

    with FakeConductorServer() as fake:
        numbers = add_numbers(fake, 1)
        (task_id,) = numbers
        with running(fake, stuck, batch_size=1) as run:
            # Polled is not yet running: a task still between the poll and its worker is
            # handed back at shutdown, so wait for the function itself.
            assert started.wait(10)
            assert run.stop(timeout=0.5) is False
            fake.inject(UPDATES, FakeResponse.error(503, "going away"))
            release.set()
            wait_until(lambda: run.undelivered, timeout=5)
            ((item, _),) = run.undelivered
            assert item.task_id == task_id
