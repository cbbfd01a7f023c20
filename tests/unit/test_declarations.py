"""Unit tests for conductor_worker.declarations, and TaskRunner.start_workers() without a server.

The runner tests start only paused workers against an unused loopback URL: a paused worker
never polls, and the ``no_connect`` fixture fails the test if anything tries to connect.
"""

from __future__ import annotations

import functools
import os
import socket
import types
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from conductor_worker.client import ConductorClient
from conductor_worker.declarations import (
    ATTRIBUTE,
    WorkerDeclaration,
    declarations_of,
    unique,
    worker_task,
)
from conductor_worker.errors import ConfigurationError
from conductor_worker.runner import RunnerState, TaskRunner
from conductor_worker.settings import HttpSettings

UNUSED_URL = "http://127.0.0.1:9/api"

DEFAULT_OPTIONS = {
    "batch_size": 1,
    "poll_interval": 1.0,
    "domain": None,
    "worker_id": None,
    "poll_timeout": None,
    "paused": False,
    "lease_extension": True,
}


def module(name: str, **namespace: Any) -> types.ModuleType:
    mod = types.ModuleType(name)
    vars(mod).update(namespace)
    return mod


def task_types(declarations: list[WorkerDeclaration]) -> list[str]:
    return [d.task_type for d in declarations]


# -- @worker_task ---------------------------------------------------------------------------------


def test_worker_task_returns_the_same_function_still_callable() -> None:
    def send_email(to: str, subject: str) -> dict[str, str]:
        return {"sent": f"{subject} -> {to}"}

    decorated = worker_task("send_email", batch_size=10, poll_interval=0.5)(send_email)

    assert decorated is send_email
    assert send_email("a@b.c", "hi") == {"sent": "hi -> a@b.c"}


def test_worker_task_records_the_declaration_with_its_options() -> None:
    @worker_task("charge", batch_size=4, domain="blue", poll_timeout=3.0, lease_extension=False)
    def charge(amount: int) -> None:
        pass

    [declaration] = declarations_of(charge)

    assert declaration.task_type == "charge"
    assert declaration.fn is charge
    assert declaration.options == {
        **DEFAULT_OPTIONS,
        "batch_size": 4,
        "domain": "blue",
        "poll_timeout": 3.0,
        "lease_extension": False,
    }


def test_worker_task_defaults() -> None:
    @worker_task("plain")
    def plain() -> None:
        pass

    assert declarations_of(plain) == [WorkerDeclaration("plain", plain, DEFAULT_OPTIONS)]


def test_one_function_declared_for_two_task_types() -> None:
    @worker_task("v2", batch_size=2)
    @worker_task("v1")
    def handler() -> None:
        pass

    declared = declarations_of(handler)

    assert task_types(declared) == ["v1", "v2"]
    assert [d.options["batch_size"] for d in declared] == [1, 2]
    assert all(d.fn is handler for d in declared)


def test_worker_task_works_on_async_functions_and_callables() -> None:
    async def fetch() -> None:
        pass

    class Job:
        def __call__(self) -> None:
            pass

    job = Job()

    assert worker_task("fetch")(fetch) is fetch
    assert worker_task("job")(job) is job
    assert declarations_of(fetch)[0].fn is fetch
    assert declarations_of(job)[0].fn is job


def test_worker_task_above_another_decorator_runs_the_wrapper() -> None:
    calls: list[str] = []

    def traced(fn: Callable[[], str]) -> Callable[[], str]:
        @functools.wraps(fn)
        def wrapper() -> str:
            calls.append("traced")
            return fn()

        return wrapper

    @worker_task("t")
    @traced
    def work() -> str:
        return "done"

    [declaration] = declarations_of(work)

    assert declaration.fn() == "done"
    assert calls == ["traced"]


def test_decorator_above_worker_task_is_not_bypassed() -> None:
    calls: list[str] = []

    def traced(fn: Callable[[], str]) -> Callable[[], str]:
        @functools.wraps(fn)
        def wrapper() -> str:
            calls.append("traced")
            return fn()

        return wrapper

    @traced
    @worker_task("t")
    def work() -> str:
        return "done"

    declared = declarations_of(module("m", work=work))

    assert [d.fn for d in declared] == [work]


def test_undecorated_objects_declare_nothing() -> None:
    def plain() -> None:
        pass

    assert declarations_of(plain) == []
    assert declarations_of(42) == []
    assert not hasattr(plain, ATTRIBUTE)


# -- declarations_of(module) ----------------------------------------------------------------------


def test_declarations_of_a_module_finds_every_form() -> None:
    @worker_task("decorated")
    def decorated() -> None:
        pass

    def plain_a() -> None:
        pass

    def plain_b() -> None:
        pass

    def plain_c() -> None:
        pass

    single = WorkerDeclaration("single", plain_a, {"batch_size": 2})
    listed = [WorkerDeclaration("listed-1", plain_b), WorkerDeclaration("listed-2", plain_c)]
    mod = module(
        "workers",
        decorated=decorated,
        single=single,
        WORKERS=listed,
        TUPLE=(WorkerDeclaration("in-tuple", plain_c),),
        # not declarations:
        plain=plain_a,
        numbers=[1, 2],
        empty=[],
        mixed=[WorkerDeclaration("mixed", plain_a), "not a declaration"],
        os=os,
    )

    found = declarations_of(mod)

    assert sorted(task_types(found)) == ["decorated", "in-tuple", "listed-1", "listed-2", "single"]
    assert single in found
    assert all(d in found for d in listed)


def test_declarations_of_a_module_deduplicates_a_function_under_two_names() -> None:
    @worker_task("once")
    def handler() -> None:
        pass

    mod = module("workers", handler=handler, alias=handler, again=[*declarations_of(handler)])

    assert declarations_of(mod) == declarations_of(handler)


def test_declarations_of_a_declaration_is_itself() -> None:
    declaration = WorkerDeclaration("t", print)

    assert declarations_of(declaration) == [declaration]


def test_unique_keeps_distinct_functions_and_task_types() -> None:
    def a() -> None:
        pass

    def b() -> None:
        pass

    declared = [
        WorkerDeclaration("t", a),
        WorkerDeclaration("t", a, {"batch_size": 5}),  # same type, same function: a repeat
        WorkerDeclaration("t", b),  # same type, another function: kept (the runner rejects it)
        WorkerDeclaration("u", a),
    ]

    kept = unique(declared)

    assert kept == [declared[0], declared[2], declared[3]]


# -- TaskRunner.start_workers ---------------------------------------------------------------------


@pytest.fixture
def no_connect(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any attempt to open a network connection, and ignore worker settings in os.environ."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"unit tests must not connect anywhere: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    for name in list(os.environ):
        if name.startswith("CONDUCTOR_WORKER_"):
            monkeypatch.delenv(name)


@pytest.fixture
def runner(no_connect: None) -> Iterator[TaskRunner]:
    client = ConductorClient(http=HttpSettings(UNUSED_URL))
    task_runner = TaskRunner(client, shutdown_grace_seconds=2, registry=CollectorRegistry())
    try:
        yield task_runner
    finally:
        task_runner.shutdown(timeout=2)
        client.close()


@worker_task("unit_decl_a", paused=True, batch_size=2)
def worker_a(x: int) -> int:
    return x


@worker_task("unit_decl_b", paused=True)
async def worker_b() -> None:
    pass


def worker_c() -> None:
    pass


def test_start_workers_from_functions_declarations_and_modules(runner: TaskRunner) -> None:
    declaration_c = WorkerDeclaration("unit_decl_c", worker_c, {"paused": True})
    mod = module("workers", worker_a=worker_a, alias=worker_a, c=declaration_c)

    started = runner.start_workers(mod, worker_a, worker_b, declaration_c)

    assert started == 3
    assert sorted(runner.task_types) == ["unit_decl_a", "unit_decl_b", "unit_decl_c"]
    states = [runner.state]
    assert runner.shutdown(timeout=2) is True  # nothing ran, so everything finished
    states.append(runner.state)
    assert states == [RunnerState.RUNNING, RunnerState.STOPPED]


def test_start_workers_with_nothing_declared_starts_nothing(runner: TaskRunner) -> None:
    assert runner.start_workers(module("empty"), worker_c) == 0
    assert runner.task_types == []
    assert runner.state is RunnerState.CREATED


def test_start_workers_rejects_another_function_for_a_started_task_type(
    runner: TaskRunner,
) -> None:
    runner.start_workers(worker_a)

    with pytest.raises(ConfigurationError, match="already runs"):
        runner.start_workers(WorkerDeclaration("unit_decl_a", worker_c, {"paused": True}))


def test_start_workers_after_shutdown_is_rejected(runner: TaskRunner) -> None:
    runner.shutdown(timeout=2)

    with pytest.raises(ConfigurationError, match="shut down"):
        runner.start_workers(worker_a)
    assert runner.task_types == []
