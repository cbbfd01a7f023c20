"""Shared fixtures: a real Conductor server for integration tests, and unique names.

``conductor_url`` is the API base URL (``http://host:port/api``) of a real server:

* ``CONDUCTOR_SERVER_URL`` set: that server is used as is (``scripts/test.sh`` starts one and
  sets it, so the whole run shares one server).
* ``CONDUCTOR_SERVER_UNAVAILABLE`` set (to a reason): no server; ``scripts/test.sh`` sets it
  when its own start failed, so pytest does not try again.
* otherwise one is started with ``scripts/conductor-server.sh start`` (own state dir under the
  pytest tmp dir) and stopped when the session ends.

When no server can be had, the tests using it are skipped locally but FAIL when ``CI`` is set
(truthy) or ``CONDUCTOR_REQUIRE_SERVER=1``, so CI can never pass by silently skipping them.

The server is started before the first test runs (when any collected test needs it) rather than
inside the first test's setup, so its start-up does not count against that test's timeout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SERVER_SCRIPT = REPO_ROOT / "scripts" / "conductor-server.sh"
INTEGRATION_DIR = Path(__file__).resolve().parent / "integration"

# Beyond the script's own bounded wait for /health: time to download the jar on a cold cache.
_DOWNLOAD_ALLOWANCE_SECONDS = 600


def _truthy(value: str | None) -> bool:
    return value is not None and value.strip().lower() not in ("", "0", "false", "no", "off")


def server_required() -> bool:
    """True when a missing server must fail the run instead of skipping tests."""
    return _truthy(os.environ.get("CI")) or os.environ.get("CONDUCTOR_REQUIRE_SERVER") == "1"


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


class _ManagedServer:
    """A server owned by this pytest session: started at most once, stopped at session end."""

    def __init__(self) -> None:
        self._state_dir = Path(tempfile.mkdtemp(prefix="conductor-server-state."))
        self._env = {**os.environ, "CONDUCTOR_SERVER_STATE_DIR": str(self._state_dir)}
        self._attempted = False
        self.url: str | None = None
        self.error: str | None = None
        self.startup_seconds: float | None = None

    def start(self) -> None:
        if self._attempted:
            return
        self._attempted = True
        start_timeout = int(self._env.get("CONDUCTOR_SERVER_START_TIMEOUT", "180"))
        began = time.monotonic()
        try:
            proc = subprocess.run(
                ["bash", str(SERVER_SCRIPT), "start"],
                env=self._env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=start_timeout + _DOWNLOAD_ALLOWANCE_SECONDS,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            self.error = f"could not start a Conductor server: {exc}"
            self.stop()
            return
        lines = proc.stdout.strip().splitlines()
        if proc.returncode != 0 or not lines or not lines[-1].startswith("http"):
            self.error = (
                f"could not start a Conductor server (exit {proc.returncode}):\n"
                f"{_tail(proc.stderr)}"
            )
            self.stop()
            return
        self.url = lines[-1].strip()
        self.startup_seconds = time.monotonic() - began

    def stop(self) -> None:
        if self._attempted:
            # Safe whatever state the server is in: `stop` is idempotent.
            subprocess.run(
                ["bash", str(SERVER_SCRIPT), "stop"],
                env=self._env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=120,
                check=False,
            )
        shutil.rmtree(self._state_dir, ignore_errors=True)


_server_key = pytest.StashKey[_ManagedServer]()


def _managed_server(config: pytest.Config) -> _ManagedServer:
    server = config.stash.get(_server_key, None)
    if server is None:
        server = _ManagedServer()
        config.stash[_server_key] = server
    return server


def _unavailable(reason: str) -> NoReturn:
    if server_required():
        pytest.fail(
            f"{reason}\n(a server is required because CI or CONDUCTOR_REQUIRE_SERVER=1 is set)",
            pytrace=False,
        )
    pytest.skip(reason)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if INTEGRATION_DIR in item.path.parents:
            item.add_marker(pytest.mark.integration)


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session: pytest.Session) -> None:
    """Start the server up front, outside any test's timeout, if a selected test needs it."""
    config = session.config
    if (
        config.option.collectonly
        or os.environ.get("CONDUCTOR_SERVER_URL")
        or os.environ.get("CONDUCTOR_SERVER_UNAVAILABLE")
    ):
        return
    if not any("conductor_url" in getattr(item, "fixturenames", ()) for item in session.items):
        return
    server = _managed_server(config)
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line("starting a Conductor server for the integration tests ...")
    server.start()
    if reporter is not None:
        if server.url is not None:
            reporter.write_line(
                f"Conductor server at {server.url} (ready in {server.startup_seconds:.0f}s)"
            )
        else:
            reporter.write_line(server.error or "Conductor server did not start", yellow=True)


def pytest_sessionfinish(session: pytest.Session) -> None:
    server = session.config.stash.get(_server_key, None)
    if server is not None:
        server.stop()


@pytest.fixture(scope="session")
def conductor_url(pytestconfig: pytest.Config) -> str:
    """API base URL of a real Conductor server, ending in ``/api``."""
    from_env = os.environ.get("CONDUCTOR_SERVER_URL")
    if from_env:
        return from_env.rstrip("/")
    # Set by scripts/test.sh when its server failed to start: do not try a second time.
    unavailable = os.environ.get("CONDUCTOR_SERVER_UNAVAILABLE")
    if unavailable:
        _unavailable(unavailable)
    server = _managed_server(pytestconfig)
    server.start()  # no-op when already started before the test loop
    if server.url is None:
        _unavailable(server.error or "could not start a Conductor server")
    return server.url


@pytest.fixture
def unique() -> Callable[[str], str]:
    """Returns ``make(prefix)`` giving names no other test (or run) on the shared server uses."""

    def make(prefix: str = "test") -> str:
        return f"{prefix}_{uuid.uuid4().hex[:8]}"

    return make
