"""Per task type worker options, and how the environment overrides them.

Precedence, highest first (read once, when the worker is started):

    CONDUCTOR_WORKER_<TASK_TYPE>_<OPTION>   e.g. CONDUCTOR_WORKER_SEND_EMAIL_BATCH_SIZE=20
    CONDUCTOR_WORKER_<OPTION>               e.g. CONDUCTOR_WORKER_DOMAIN=staging
    the value given in code
    the default

<TASK_TYPE> is the task type upper-cased with every character that is not a letter or digit
replaced by "_". Options: BATCH_SIZE, POLL_INTERVAL (seconds), POLL_TIMEOUT (seconds), DOMAIN,
WORKER_ID, PAUSED (true/false), LEASE_EXTENSION (true/false).
"""

from __future__ import annotations

import math
import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from conductor_worker.errors import ConfigurationError

# The server rejects a long-poll wait over 5000 ms.
MAX_POLL_TIMEOUT_SECONDS = 5.0


def default_worker_id() -> str:
    return socket.gethostname()


@dataclass(frozen=True)
class WorkerOptions:
    """How one task type is polled and run.

    batch_size: how many tasks of this type run at once (its concurrency).
    poll_interval_seconds: pause after a poll that found no task.
    poll_timeout_seconds: how long the server may hold a poll open waiting for a task (long
        poll, at most 5 s); this is what makes an idle worker both cheap and quick to react.
    domain: the task domain to poll, if any.
    worker_id: recorded by the server on each task; default the host name.
    paused: start without polling (resume it at run time).
    lease_extension: while a task with a responseTimeoutSeconds runs, extend its lease
        automatically so that a long execution is not timed out by the server.
    """

    batch_size: int = 1
    poll_interval_seconds: float = 1.0
    # Not the server's 5 s: an idle worker's shutdown and pause wait for its open long poll,
    # and on Conductor OSS a longer hold saves requests but not queue work (the server pops
    # the queue every 100 ms while it holds a poll). 2 s + the interval: <= 0.5 req/s.
    poll_timeout_seconds: float = 2.0
    domain: str | None = None
    worker_id: str | None = None
    paused: bool = False
    lease_extension: bool = True

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigurationError(f"batch_size must be at least 1, got {self.batch_size}")
        if not (math.isfinite(self.poll_interval_seconds) and self.poll_interval_seconds >= 0):
            raise ConfigurationError(
                "poll_interval_seconds must not be negative or infinite, "
                f"got {self.poll_interval_seconds}"
            )
        if not 0 <= self.poll_timeout_seconds <= MAX_POLL_TIMEOUT_SECONDS:
            raise ConfigurationError(
                f"poll_timeout_seconds must be between 0 and {MAX_POLL_TIMEOUT_SECONDS:g} "
                f"(the server's limit), got {self.poll_timeout_seconds}"
            )
        if not self.worker_id:
            object.__setattr__(self, "worker_id", default_worker_id())
        if self.domain == "":
            object.__setattr__(self, "domain", None)


def env_key(task_type: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "_", task_type).upper()


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"expected true or false, got {text!r}")


_PARSERS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "BATCH_SIZE": ("batch_size", int),
    "POLL_INTERVAL": ("poll_interval_seconds", float),
    "POLL_TIMEOUT": ("poll_timeout_seconds", float),
    "DOMAIN": ("domain", str),
    "WORKER_ID": ("worker_id", str),
    "PAUSED": ("paused", _parse_bool),
    "LEASE_EXTENSION": ("lease_extension", _parse_bool),
}
assert {name for name, _ in _PARSERS.values()} == {f.name for f in fields(WorkerOptions)}


def apply_environment(
    task_type: str, options: WorkerOptions, environ: Mapping[str, str] | None = None
) -> WorkerOptions:
    """The options for `task_type` with environment overrides applied (see module docs)."""
    env = os.environ if environ is None else environ
    prefixes = ("CONDUCTOR_WORKER_", f"CONDUCTOR_WORKER_{env_key(task_type)}_")
    for suffix, (name, parse) in _PARSERS.items():
        for prefix in prefixes:  # the task-type specific one is applied last and wins
            variable = prefix + suffix
            if variable in env:
                try:
                    options = replace(options, **{name: parse(env[variable])})
                except ValueError as error:  # ConfigurationError is a ValueError too
                    raise ConfigurationError(f"{variable}: {error}") from None
    return options
