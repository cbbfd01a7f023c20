"""Configuration values: where the server is, how to authenticate, how to talk HTTP.

All durations are in seconds (floats). Every settings object is a frozen dataclass validated on
construction; reading the environment is always an explicit `from_env()` call.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from conductor_worker.errors import ConfigurationError

DEFAULT_SERVER_URL = "http://localhost:8080/api"

ENV_SERVER_URL = "CONDUCTOR_SERVER_URL"
ENV_AUTH_KEY = "CONDUCTOR_AUTH_KEY"
ENV_AUTH_SECRET = "CONDUCTOR_AUTH_SECRET"


@dataclass(frozen=True)
class AuthenticationSettings:
    """Orkes key id and secret, exchanged for a token at `POST /api/token`.

    The OSS server has no authentication: leave it out (`ConductorClient(http=...)`).
    """

    key_id: str
    key_secret: str = field(repr=False)

    def __post_init__(self) -> None:
        if not self.key_id or not self.key_secret:
            raise ConfigurationError("AuthenticationSettings needs both a key id and a secret")

    def __repr__(self) -> str:
        return f"AuthenticationSettings(key_id={self.key_id!r}, key_secret='***')"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AuthenticationSettings | None:
        """From CONDUCTOR_AUTH_KEY and CONDUCTOR_AUTH_SECRET; None when neither is set."""
        env = os.environ if environ is None else environ
        key, secret = env.get(ENV_AUTH_KEY, ""), env.get(ENV_AUTH_SECRET, "")
        if not key and not secret:
            return None
        if not key or not secret:
            missing = ENV_AUTH_KEY if not key else ENV_AUTH_SECRET
            raise ConfigurationError(f"{missing} is not set (both key and secret are needed)")
        return cls(key, secret)


@dataclass(frozen=True)
class HttpSettings:
    """How to reach the server.

    base_url: the API root, e.g. "http://localhost:8080/api" or "https://x.orkesconductor.io/api".
    timeout_seconds: read timeout of a request (a long poll adds its own wait on top).
    connect_timeout_seconds: TCP/TLS connect timeout.
    ca_bundle: a PEM file of CA certificates to trust instead of the system ones.
    verify_tls: turn certificate verification off only for local experiments.
    pool_size: connections kept per host; the runner raises it to its concurrency.
    """

    base_url: str = DEFAULT_SERVER_URL
    timeout_seconds: float = 30.0
    connect_timeout_seconds: float = 10.0
    ca_bundle: str | None = None
    verify_tls: bool = True
    pool_size: int = 10
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)  # may hold tokens

    def __post_init__(self) -> None:
        if (
            not self.base_url.startswith(("http://", "https://"))
            or not urlsplit(self.base_url).netloc
        ):
            raise ConfigurationError(
                f"base_url must start with http:// or https://, got {self.base_url!r}"
            )
        object.__setattr__(self, "base_url", self.base_url.rstrip("/"))
        if not all(
            math.isfinite(t) and t > 0 for t in (self.timeout_seconds, self.connect_timeout_seconds)
        ):
            raise ConfigurationError("timeouts must be positive numbers of seconds")
        if self.pool_size < 1:
            raise ConfigurationError("pool_size must be at least 1")
        if self.ca_bundle is not None and not os.path.isfile(self.ca_bundle):
            raise ConfigurationError(f"ca_bundle {self.ca_bundle!r} is not a readable file")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> HttpSettings:
        """From CONDUCTOR_SERVER_URL (default http://localhost:8080/api)."""
        env = os.environ if environ is None else environ
        return cls(base_url=env.get(ENV_SERVER_URL) or DEFAULT_SERVER_URL)
