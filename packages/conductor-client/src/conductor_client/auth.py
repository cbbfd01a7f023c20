"""Orkes authentication for the generated client (hand-written; regeneration never touches it).

Hosted (Orkes) Conductor servers want a short-lived JWT on every call, in the header
``X-Authorization: <token>`` (no ``Bearer``). The token comes from ``POST {host}/token`` with the
application's key id and secret. The OSS server has no authentication and answers 404 there.

* :class:`TokenProvider` gets, caches and refreshes that token. It refreshes shortly before the
  JWT's ``exp`` claim (read without verifying the signature; the client only needs the time), and
  lets concurrent callers share one in-flight refresh.
* :class:`AuthenticatingApiClient` is a drop-in :class:`~conductor_client.api_client.ApiClient`
  that adds the header to every call and, when the server says the token expired or is invalid
  (401/403 with ``EXPIRED_TOKEN``/``INVALID_TOKEN``), gets a new one and resends that call (at
  most :data:`TOKEN_RENEWALS_PER_CALL` times).
* :func:`authenticated_api_client` builds one from a host URL and credentials.
* :class:`AuthenticationError` is raised when no token can be had (wrong credentials, server
  error, unreachable server). Its message never contains the secret or a token, and neither does
  any log line or ``repr`` here. (``Configuration.debug = True`` makes ``http.client`` print
  request headers, the token included, to stdout: keep it off where output is collected.)

Example::

    from conductor_client import TaskApi
    from conductor_client.auth import authenticated_api_client

    api_client = authenticated_api_client("https://example.orkesconductor.io/api", key, secret)
    task = TaskApi(api_client).get_task(task_id)
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, TypedDict

import urllib3
from pydantic import SecretStr
from typing_extensions import Unpack

from conductor_client import rest
from conductor_client.api_client import ApiClient
from conductor_client.configuration import Configuration
from conductor_client.exceptions import ApiException, OpenApiException

__all__ = [
    "TOKEN_HEADER",
    "TOKEN_RENEWALS_PER_CALL",
    "AuthenticatingApiClient",
    "AuthenticationError",
    "TokenOptions",
    "TokenProvider",
    "authenticated_api_client",
    "token_rejection",
]

logger = logging.getLogger(__name__)

TOKEN_HEADER: Final = "X-Authorization"
"""The request header that carries the token (its value is the bare JWT, no ``Bearer``)."""

TOKEN_RENEWALS_PER_CALL: Final = 2
"""How many times one call is resent with a renewed token after the server rejects its token.
More than one: with short-lived tokens on a busy machine, a renewed token (perhaps fetched by
another thread a while ago) can expire before the resent call lands."""

# The codes, as whole phrases: "expired token", "Invalid-Token: ..." count; "invalid token
# audience" (renewal would not help) and "not an expired token issue" do not.
_TOKEN_ERROR_PATTERN: Final = re.compile(r"(?<![A-Z0-9])(EXPIRED_TOKEN|INVALID_TOKEN)(?!_?[A-Z0-9])")
_SEPARATORS: Final = re.compile(r"[\s_-]+")
_TOKEN_REJECTION_STATUSES: Final = (401, 403)
# After a failed proactive refresh (the current token still valid), wait this long before trying
# again, so that every call made during the refresh window does not hit /token.
_RETRY_AFTER_FAILED_REFRESH_SECONDS: Final = 5.0
# A token whose exp is this close (or already past) by the local clock is taken as a sign of clock
# skew rather than a token that must be refreshed on every call.
_MIN_PLAUSIBLE_LIFETIME_SECONDS: Final = 1.0
# Server messages quoted in errors are cut to this length.
_MAX_QUOTED_CHARS: Final = 300


class AuthenticationError(OpenApiException):
    """No token could be obtained from ``POST {host}/token``.

    ``status`` is the HTTP status the token endpoint answered (None when it could not be
    reached), ``url`` the token endpoint. The message says what failed; it never contains the
    key secret or a token.
    """

    def __init__(self, message: str, *, url: str, status: int | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.status = status


class TokenOptions(TypedDict, total=False):
    """Keyword options of :class:`TokenProvider` (also accepted by the client constructors)."""

    refresh_margin_seconds: float
    default_ttl_seconds: float
    request_timeout_seconds: float


class _Response(Protocol):
    """What is used of :class:`conductor_client.rest.RESTResponse`."""

    status: int

    def read(self) -> bytes: ...


class _Transport(Protocol):
    """What is used of :class:`conductor_client.rest.RESTClientObject` (its ``request``)."""

    def request(
        self,
        method: str,
        url: str,
        headers: dict[str, str] | None = ...,
        body: Any = ...,
        post_params: Any = ...,
        _request_timeout: float | tuple[float, float] | None = ...,
    ) -> _Response: ...


@dataclass(frozen=True)
class _Token:
    value: str = field(repr=False)
    expires_at: float  # local clock (time.time())
    refresh_at: float  # local clock: refresh from this moment on


class TokenProvider:
    """Gets, caches and refreshes the token for one key id on one server. Thread-safe.

    :param key_id: the application's key id.
    :param key_secret: its secret.
    :param host: the API base URL, e.g. ``https://example.orkesconductor.io/api``; the token
        comes from ``{host}/token``.
    :param rest_client: what sends the token request; pass the ``rest_client`` of the
        :class:`~conductor_client.api_client.ApiClient` the token is for, so that its TLS
        settings, CA bundle and proxy apply (default: a new one built for ``host``).
    :param refresh_margin_seconds: refresh this long before the token expires (default 60),
        capped at half the token's lifetime.
    :param default_ttl_seconds: the lifetime assumed for a token whose ``exp`` claim cannot be
        read (default 30 minutes).
    :param request_timeout_seconds: total timeout of one token request (default 30).

    A 404 from ``/token`` means the server has no authentication: from then on
    :meth:`get_token` returns None and no request for a token is made again.
    """

    def __init__(
        self,
        key_id: str,
        key_secret: str,
        host: str,
        *,
        rest_client: _Transport | None = None,
        refresh_margin_seconds: float = 60.0,
        default_ttl_seconds: float = 30 * 60.0,
        request_timeout_seconds: float = 30.0,
    ) -> None:
        if not key_id:
            raise ValueError("key_id must not be empty")
        if not key_secret:
            raise ValueError("key_secret must not be empty")
        if refresh_margin_seconds < 0:
            raise ValueError("refresh_margin_seconds must be >= 0")
        if default_ttl_seconds <= 0:
            raise ValueError("default_ttl_seconds must be > 0")
        if request_timeout_seconds <= 0:
            raise ValueError("request_timeout_seconds must be > 0")
        self._key_id = key_id
        # SecretStr: shows as '**********' in reprs, debuggers and tracebacks with locals.
        self._key_secret = SecretStr(key_secret)
        self._token_url = host.rstrip("/") + "/token"
        self._transport: _Transport = (
            rest_client
            if rest_client is not None
            else rest.RESTClientObject(Configuration(host=host))
        )
        self._refresh_margin_seconds = refresh_margin_seconds
        self._default_ttl_seconds = default_ttl_seconds
        self._request_timeout_seconds = request_timeout_seconds

        # Guards everything below. Held while a token is being fetched: a caller arriving then
        # waits for that fetch and uses its outcome instead of starting another one.
        self._lock = threading.Lock()
        self._token: _Token | None = None
        self._auth_disabled = False
        # Token requests finished (either way): tells a caller that waited for the lock that a
        # request ran meanwhile, so it uses that outcome instead of making another one.
        self._fetches_done = 0
        self._last_error: AuthenticationError | None = None

    @property
    def key_id(self) -> str:
        return self._key_id

    @property
    def token_url(self) -> str:
        return self._token_url

    @property
    def auth_disabled(self) -> bool:
        """True once ``/token`` answered 404: the server has no authentication."""
        return self._auth_disabled

    def __repr__(self) -> str:
        token = self._token
        state = (
            "auth disabled"
            if self._auth_disabled
            else "no token"
            if token is None
            else f"token expires in {token.expires_at - time.time():.0f}s"
        )
        return f"TokenProvider(key_id={self._key_id!r}, url={self._token_url!r}, {state})"

    def get_token(self) -> str | None:
        """The current token, fetched or refreshed first when needed.

        Returns None when the server has no authentication. Raises :class:`AuthenticationError`
        when no valid token can be had.
        """
        # Fast path without the lock: a token is replaced whole, so reading it is safe.
        hit, value = self._cached(time.time())
        if hit:
            return value
        fetches_seen = self._fetches_done
        with self._lock:
            now = time.time()
            hit, value = self._cached(now)
            if hit:
                return value
            token = self._token
            if self._fetches_done != fetches_seen:
                # A fetch ran while this caller waited for the lock, and did not leave a fresh
                # token: use its outcome rather than asking again straight away.
                if token is not None and now < token.expires_at:
                    return token.value
                if self._last_error is not None:
                    raise AuthenticationError(
                        str(self._last_error),
                        url=self._last_error.url,
                        status=self._last_error.status,
                    )
            return self._refresh_locked(now)

    def invalidate(self, token_used: str) -> None:
        """Drop ``token_used`` (the server rejected it) if it is still the current token.

        The next :meth:`get_token` then fetches a new one. When another caller has already
        replaced it, nothing happens: its replacement is used.
        """
        with self._lock:
            if self._token is not None and self._token.value == token_used:
                self._token = None

    # -- internals -------------------------------------------------------------------------------

    def _cached(self, now: float) -> tuple[bool, str | None]:
        """(True, what to send) when no token request is needed now, else (False, None)."""
        if self._auth_disabled:
            return True, None
        token = self._token
        if token is not None and now < token.refresh_at:
            return True, token.value
        return False, None

    def _refresh_locked(self, now: float) -> str | None:
        current = self._token
        try:
            value = self._request_token()
        except AuthenticationError as exc:
            self._last_error = exc
            if current is not None and now < current.expires_at:
                # Proactive refresh failed, but the current token is still good: keep using it
                # and try again a little later.
                retry_at = min(now + _RETRY_AFTER_FAILED_REFRESH_SECONDS, current.expires_at)
                self._token = _Token(current.value, current.expires_at, retry_at)
                logger.warning(
                    "could not refresh the token for key id %r (the current one is valid for "
                    "%.0fs more; retrying in %.0fs): %s",
                    self._key_id,
                    current.expires_at - now,
                    retry_at - now,
                    exc,
                )
                return current.value
            raise
        finally:
            self._fetches_done += 1
        if value is None:
            self._auth_disabled = True
            self._token = None
            self._last_error = None
            logger.info(
                "%s answered 404: the server has no authentication; calls go out without a token",
                self._token_url,
            )
            return None
        self._last_error = None
        self._token = self._token_times(value, now)
        logger.debug(
            "got a token for key id %r, valid for %.0fs",
            self._key_id,
            self._token.expires_at - now,
        )
        return value

    def _token_times(self, value: str, requested_at: float) -> _Token:
        claims = _jwt_claims(value)
        exp = _number(claims.get("exp")) if claims is not None else None
        if exp is None:
            expires_at = requested_at + self._default_ttl_seconds
        elif exp - requested_at >= _MIN_PLAUSIBLE_LIFETIME_SECONDS:
            expires_at = exp
        else:
            # Already (nearly) expired by our clock: most likely the clocks disagree. Use the
            # lifetime the server meant (exp - iat) when it says, else the default.
            iat = _number(claims.get("iat")) if claims is not None else None
            lifetime = (
                exp - iat
                if iat is not None and exp - iat >= _MIN_PLAUSIBLE_LIFETIME_SECONDS
                else self._default_ttl_seconds
            )
            logger.warning(
                "the token's exp claim is %.0fs in the past by the local clock (clock skew?); "
                "assuming it is valid for %.0fs",
                requested_at - exp,
                lifetime,
            )
            expires_at = requested_at + lifetime
        lifetime = expires_at - requested_at
        margin = min(self._refresh_margin_seconds, lifetime / 2)
        return _Token(value, expires_at, expires_at - margin)

    def _request_token(self) -> str | None:
        """POST the credentials; the token, or None on 404 (no auth). Raises AuthenticationError."""
        url = self._token_url
        body = {"keyId": self._key_id, "keySecret": self._key_secret.get_secret_value()}
        try:
            response = self._transport.request(
                "POST",
                url,
                headers={"Content-Type": "application/json", "Accept": "application/json"},
                body=body,
                _request_timeout=self._request_timeout_seconds,
            )
            status = response.status
            data = response.read()
        except (urllib3.exceptions.HTTPError, ApiException, OSError) as exc:
            # Neither the urllib3 errors nor ApiException(status=0) carry the request body.
            raise AuthenticationError(
                f"could not get a token: POST {url} failed: {self._redact(str(exc))}",
                url=url,
            ) from exc
        if status == 404:
            return None
        if status in (401, 403):
            raise AuthenticationError(
                f"could not get a token: POST {url} answered {status}: the server rejected the "
                f"key id {self._key_id!r} or its secret{self._quote(data)}",
                url=url,
                status=status,
            )
        if not 200 <= status <= 299:
            raise AuthenticationError(
                f"could not get a token: POST {url} answered {status}{self._quote(data)}",
                url=url,
                status=status,
            )
        token = _parse_token(data)
        if token is None:
            raise AuthenticationError(
                f"could not get a token: POST {url} answered {status} without a 'token' string "
                "in a JSON object",
                url=url,
                status=status,
            )
        return token

    def _quote(self, data: bytes) -> str:
        """The server's message for an error text (redacted, shortened), or ''."""
        text = data.decode("utf-8", "replace").strip()
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            parts = [str(parsed[k]) for k in ("error", "message") if parsed.get(k)]
            text = ": ".join(parts)
        text = self._redact(text)
        if len(text) > _MAX_QUOTED_CHARS:
            text = text[:_MAX_QUOTED_CHARS] + "..."
        return f" ({text})" if text else ""

    def _redact(self, text: str) -> str:
        secret = self._key_secret.get_secret_value()
        text = text.replace(secret, "***")
        token = self._token
        if token is not None:
            text = text.replace(token.value, "***")
        return text


class AuthenticatingApiClient(ApiClient):
    """An :class:`~conductor_client.api_client.ApiClient` that authenticates to Orkes.

    Every call carries ``X-Authorization: <token>`` (no header at all when the server has no
    authentication). When the server answers 401 or 403 saying the token expired or is
    invalid, a new token is fetched and the call is resent, up to
    :data:`TOKEN_RENEWALS_PER_CALL` times; a rejection beyond that reaches the caller as the
    usual ``UnauthorizedException``/``ForbiddenException``. The header is
    always the provider's: an ``X-Authorization`` passed in ``_headers`` is replaced.

    :param configuration: as for ``ApiClient``; its ``host`` is also where the token comes from.
    :param key_id: the application's key id.
    :param key_secret: its secret.
    :param token_options: see :class:`TokenProvider`.
    """

    def __init__(
        self,
        configuration: Configuration | None,
        key_id: str,
        key_secret: str,
        **token_options: Unpack[TokenOptions],
    ) -> None:
        super().__init__(configuration)
        self._token_provider = TokenProvider(
            key_id,
            key_secret,
            self.configuration.host,
            rest_client=self.rest_client,
            **token_options,
        )

    @property
    def token_provider(self) -> TokenProvider:
        return self._token_provider

    def __repr__(self) -> str:
        return (
            f"AuthenticatingApiClient(host={self.configuration.host!r}, "
            f"key_id={self._token_provider.key_id!r})"
        )

    def call_api(
        self,
        method: str,
        url: str,
        header_params: dict[str, str] | None = None,
        body: Any = None,
        post_params: Any = None,
        _request_timeout: float | tuple[float, float] | None = None,
    ) -> rest.RESTResponse:
        def send(token: str | None) -> rest.RESTResponse:
            return super(AuthenticatingApiClient, self).call_api(
                method,
                url,
                _with_token(header_params, token),
                body,
                post_params,
                _request_timeout,
            )

        token = self._token_provider.get_token()
        response = send(token)
        for _ in range(TOKEN_RENEWALS_PER_CALL):
            rejection = None if token is None else token_rejection(response)
            if token is None or rejection is None:
                return _without_token(response, token)
            logger.info(
                "%s %s: the server rejected the token (%s); getting a new one and retrying",
                method,
                _path_of(url),
                rejection,
            )
            self._token_provider.invalidate(token)
            token = self._token_provider.get_token()
            response = send(token)
        return _without_token(response, token)


def authenticated_api_client(
    host: str, key_id: str, key_secret: str, **kwargs: Unpack[TokenOptions]
) -> AuthenticatingApiClient:
    """An :class:`AuthenticatingApiClient` for the API base URL ``host`` (``.../api``)."""
    return AuthenticatingApiClient(Configuration(host=host), key_id, key_secret, **kwargs)


# -- helpers -------------------------------------------------------------------------------------


def _with_token(header_params: dict[str, str] | None, token: str | None) -> dict[str, str]:
    headers = dict(header_params or {})
    # Header names are case-insensitive: drop any other spelling before setting ours.
    for name in [n for n in headers if n.lower() == TOKEN_HEADER.lower()]:
        del headers[name]
    if token is not None:
        headers[TOKEN_HEADER] = token
    return headers


def _without_token(response: rest.RESTResponse, token: str | None) -> rest.RESTResponse:
    """The response, with ``token`` masked in an error body (which ends up in the exception's
    message): a proxy's or server's error page may echo the request headers."""
    if token is None or 200 <= response.status <= 299:
        return response
    readable: _Response = response
    data = readable.read()
    marker = token.encode()
    if marker in data:
        # The generated class declares `data` as None until the body has been read.
        response.data = data.replace(marker, b"***")  # type: ignore[assignment]
    return response


def token_rejection(response: _Response) -> str | None:
    """``EXPIRED_TOKEN``/``INVALID_TOKEN`` when the response rejects the token, else None.

    Reading the body here is safe: ``RESTResponse.read()`` keeps it for the caller.
    """
    if response.status not in _TOKEN_REJECTION_STATUSES:
        return None
    text = response.read().decode("utf-8", "replace")
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        candidates = [parsed.get("error"), parsed.get("message")]
    else:
        candidates = [text]
    for candidate in candidates:
        if not isinstance(candidate, str):
            continue
        match = _TOKEN_ERROR_PATTERN.search(_SEPARATORS.sub("_", candidate.upper()))
        if match is not None:
            return match.group(1)
    return None


def _path_of(url: str) -> str:
    """The URL without its query string (kept out of logs: it may hold user data)."""
    return url.split("?", 1)[0]


def _jwt_claims(token: str) -> dict[str, Any] | None:
    """The JWT's payload, decoded but NOT verified (only its times are used), or None."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload.encode("ascii")))
    except (ValueError, binascii.Error, UnicodeError):
        return None
    return claims if isinstance(claims, dict) else None


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _parse_token(data: bytes) -> str | None:
    try:
        parsed = json.loads(data)
    except ValueError:
        return None
    if not isinstance(parsed, dict):
        return None
    token = parsed.get("token")
    return token if isinstance(token, str) and token else None
