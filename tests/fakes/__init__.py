"""Controllable fake servers for tests (loopback only, started per test)."""

from .token_server import FakeOrkesServer, FakeRequest, FakeResponse, RecordedRequest

__all__ = ["FakeOrkesServer", "FakeRequest", "FakeResponse", "RecordedRequest"]
