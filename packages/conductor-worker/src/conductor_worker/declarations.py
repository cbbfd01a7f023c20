"""Declaring workers next to their code, for the CLI and for `TaskRunner.start_workers()`.

    @worker_task("send_email", batch_size=10, poll_interval=0.5)
    def send_email(to: str, subject: str) -> dict[str, str]: ...

The decorator only records the declaration on the function (it returns the function itself,
still callable as before); nothing polls until a runner starts it. For a function you cannot
decorate, declare it explicitly: `worker_task("send_email")(send_email)`, or
`WorkerDeclaration("send_email", send_email)` anywhere at module level.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

ATTRIBUTE = "__conductor_workers__"


@dataclass(frozen=True)
class WorkerDeclaration:
    """A task type, the function that runs it, and start_worker() options."""

    task_type: str
    fn: Callable[..., Any]
    options: dict[str, Any] = field(default_factory=dict)


def worker_task(
    task_type: str,
    *,
    batch_size: int = 1,
    poll_interval: float = 1.0,
    domain: str | None = None,
    worker_id: str | None = None,
    poll_timeout: float | None = None,
    paused: bool = False,
    lease_extension: bool = True,
) -> Callable[[F], F]:
    """Declare `fn` as the worker for `task_type` (see TaskRunner.start_worker for options)."""
    options: dict[str, Any] = {
        "batch_size": batch_size,
        "poll_interval": poll_interval,
        "domain": domain,
        "worker_id": worker_id,
        "poll_timeout": poll_timeout,
        "paused": paused,
        "lease_extension": lease_extension,
    }

    def declare(fn: F) -> F:
        declared: list[WorkerDeclaration] = list(getattr(fn, ATTRIBUTE, ()))
        declared.append(WorkerDeclaration(task_type, fn, options))
        setattr(fn, ATTRIBUTE, declared)
        return fn

    return declare


def declarations_of(obj: object) -> list[WorkerDeclaration]:
    """The workers declared by a function, a WorkerDeclaration, or in a module's namespace."""
    if isinstance(obj, WorkerDeclaration):
        return [obj]
    if isinstance(obj, types.ModuleType):
        found: list[WorkerDeclaration] = []
        for value in vars(obj).values():
            if isinstance(value, WorkerDeclaration) or hasattr(value, ATTRIBUTE):
                found.extend(declarations_of(value))
            elif (
                isinstance(value, (list, tuple))
                and value
                and all(isinstance(item, WorkerDeclaration) for item in value)
            ):
                found.extend(value)
        return unique(found)
    return [_outermost(obj, d) for d in getattr(obj, ATTRIBUTE, ())]


def _outermost(obj: object, declaration: WorkerDeclaration) -> WorkerDeclaration:
    """functools.wraps copies our attribute onto a wrapper (@traced over @worker_task): run
    the wrapper, which is what the module exposes, not the function inside it."""
    inner: object = obj
    while inner is not declaration.fn and hasattr(inner, "__wrapped__"):
        inner = inner.__wrapped__
    if inner is declaration.fn and obj is not declaration.fn and callable(obj):
        return replace(declaration, fn=obj)
    return declaration


def unique(declarations: Iterable[WorkerDeclaration]) -> list[WorkerDeclaration]:
    """Drop repeats: a decorated function imported into several scanned modules counts once."""
    seen: set[tuple[str, int]] = set()
    result = []
    for declaration in declarations:
        key = (declaration.task_type, id(declaration.fn))
        if key not in seen:
            seen.add(key)
            result.append(declaration)
    return result
