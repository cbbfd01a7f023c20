"""Fixtures for the reliability tests (faults, bad input, shutdown, server restarts).

* ``client`` / ``conductor``: as in tests/integration, against the session's real server.
* ``dedicated_server``: a factory for a real server of the test's own (its own SQLite file and
  port, both fixed, so it can be killed and started again on the same data); see
  :class:`tests.reliability.servers.DedicatedServer`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from conductor_worker import ConductorClient, HttpSettings
from tests.integration.conftest import Conductor


@pytest.fixture
def client(conductor_url: str) -> Iterator[ConductorClient]:
    with ConductorClient(http=HttpSettings(conductor_url)) as client:
        yield client


@pytest.fixture
def conductor(client: ConductorClient, unique: Callable[[str], str]) -> Iterator[Conductor]:
    helper = Conductor(client, unique)
    yield helper
    helper.cleanup()
