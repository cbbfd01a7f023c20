"""Controllable fake servers for tests (loopback only, started per test)."""

from .conductor import FakeConductorServer, Injection, invalid_json
from .token_server import FakeOrkesServer, FakeRequest, FakeResponse, RecordedRequest

__all__ = [
    "FakeConductorServer",
    "FakeOrkesServer",
    "FakeRequest",
    "FakeResponse",
    "Injection",
    "RecordedRequest",
    "invalid_json",
]
