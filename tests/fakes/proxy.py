"""A fault-injecting TCP proxy for HTTP/1.1 clients, on loopback, switchable at run time.

It sits between a client and a real server and forwards bytes both ways, unless told to
misbehave::

    with FaultProxy("127.0.0.1", 8080) as proxy:
        client = ConductorClient(http=HttpSettings(proxy.url_for("/api")))
        proxy.latency(0.1, 0.3)        # every chunk, each way: 100-300 ms later, order kept
        proxy.reset_fraction(0.2)      # 20% of requests: the connection is reset (RST) mid-way
        proxy.black_hole(True)         # accept, forward nothing, answer nothing
        proxy.http_5xx_fraction(0.2)   # 20% of requests answered 503 by the proxy itself
        proxy.clear()                  # back to a plain proxy
        proxy.counters()               # what it did (a snapshot)

Faults are decided **per request**, not per connection: the proxy reads each request of a
connection in full (request line, headers, a Content-Length or chunked body; just enough of
HTTP/1.1 to find where a request ends) and decides, for that request: swallow it (black hole),
answer it itself (5xx), reset the connection during it, or forward it. Answers from the server
are relayed as bytes, never parsed. That is enough because an HTTP/1.1 client that does not
pipeline (urllib3, requests, httpx: none do) sends a request only after reading the whole
previous answer, so when a request arrives the connection carries nothing else: the proxy can
answer it itself without mixing its answer into the server's, and keep-alive connections (the
client's pool) keep working across injected answers. A pipelining client is not supported.

The faults:

* ``latency(seconds, max_seconds)``: each chunk, in each direction, is held back by a delay
  drawn from [seconds, max_seconds]; chunks of a direction never overtake each other, so a
  round trip costs at least twice the delay.
* ``reset_fraction(p)``: each request, with probability p, gets its connection reset (a TCP RST
  to the client, the server side closed), at random one of two ways: *before the server*, after
  forwarding only part of the request (the server never sees it whole and does nothing), or
  *mid-answer*, after forwarding the request and the first few bytes of the server's answer (the
  server has acted; its answer is lost).
* ``black_hole(on)``: while on, connections are accepted and requests read, but nothing goes
  on and nothing comes back: no answer, no close, so the client's read timeout fires. A
  connection that swallowed anything (a request, or a server's answer arriving during the hole)
  stays silent for good, like a connection whose state a broken middlebox lost; a connection
  accepted during the hole never reaches the server. Idle connections live on.
* ``http_5xx_fraction(p, status=503)``: each request, with probability p, is answered by the
  proxy with that status (a small text body, keep-alive) instead of being forwarded: the server
  never sees it.

Faults apply to requests read and server answers received after the call (a chunk already
held back by the latency still goes out, unless its connection has been silenced by then).
Each switch replaces only its own fault; they combine.

Threading: the proxy runs an asyncio loop in one daemon thread; the methods above may be called
from any thread. ``stop()`` closes the listening socket, aborts every connection and waits a
bounded time for the thread: it never hangs.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType

log = logging.getLogger(__name__)

__all__ = ["FaultProxy", "ProxyCounters"]

# A request head (request line and headers) longer than this is not HTTP we want to handle.
MAX_HEAD_BYTES = 64 * 1024
# A request body longer than this is refused (the connection closed); task results are small.
MAX_BODY_BYTES = 64 * 1024 * 1024
READ_CHUNK_BYTES = 64 * 1024
# A mid-answer reset comes after this many bytes of the answer at most: inside the status line
# or the headers of any answer, so the client never gets a whole one.
MAX_RESET_OFFSET_BYTES = 48


@dataclass
class ProxyCounters:
    """What the proxy did, since it started (a snapshot from ``FaultProxy.counters()``)."""

    connections: int = 0  # accepted from clients
    requests: int = 0  # whole requests read from clients
    forwarded: int = 0  # requests passed on to the server in full
    delayed_chunks: int = 0  # chunks (either way) held back by the latency
    resets: int = 0  # connections reset (RST to the client)
    resets_before_server: int = 0  # ... after only part of a request reached the server
    resets_mid_answer: int = 0  # ... after the server had the request, inside its answer
    black_holed_requests: int = 0  # requests swallowed by the black hole
    black_holed_answers: int = 0  # chunks of server answers swallowed by the black hole
    black_holed_connections: int = 0  # connections accepted during a black hole
    injected_5xx: int = 0  # requests answered by the proxy with a 5xx
    upstream_failures: int = 0  # connections to the server that could not be made
    bad_requests: int = 0  # connections dropped because a request was not HTTP/1.x


@dataclass(frozen=True)
class _Faults:
    latency_min: float = 0.0
    latency_max: float = 0.0
    reset_fraction: float = 0.0
    black_hole: bool = False
    http_5xx_fraction: float = 0.0
    http_5xx_status: int = 503


class _Bad(Exception):
    """A request the proxy cannot frame."""


_EOF = object()  # in a direction's queue: close the destination (after what came before)
_RESET = object()  # reset the client connection, close the server side


@dataclass(eq=False)
class _Connection:
    client_reader: asyncio.StreamReader
    client_writer: asyncio.StreamWriter
    server_reader: asyncio.StreamReader | None = None
    server_writer: asyncio.StreamWriter | None = None
    # Items for the server (bytes, _EOF, _RESET) and for the client (bytes, _EOF), each with
    # the loop time it is due.
    to_server: asyncio.Queue[tuple[float, object]] = dataclasses.field(
        default_factory=asyncio.Queue
    )
    to_client: asyncio.Queue[tuple[float, object]] = dataclasses.field(
        default_factory=asyncio.Queue
    )
    due_to_server: float = 0.0  # the last due time queued, so that nothing overtakes
    due_to_client: float = 0.0
    silent: bool = False  # black-holed: forwards nothing, ever again
    reset_after: int | None = None  # reset the client after this many more answer bytes

    def abort(self) -> None:
        for writer in (self.client_writer, self.server_writer):
            if writer is not None:
                writer.transport.abort()


class FaultProxy:
    """A TCP proxy on 127.0.0.1 in front of ``upstream_host:upstream_port``; see the module.

    port: where to listen (0: a free port, read ``.port``). seed: for the random choices.
    connect_timeout_seconds: how long a connection to the server may take.
    """

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        port: int = 0,
        seed: int | None = None,
        connect_timeout_seconds: float = 5.0,
    ) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.host = "127.0.0.1"
        self.port = port
        self.connect_timeout_seconds = connect_timeout_seconds
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._faults = _Faults()
        self._counters = ProxyCounters()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._connections: set[_Connection] = set()

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> FaultProxy:
        if self._thread is not None:
            raise RuntimeError("FaultProxy already started")
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self.host, self.port))
            listener.listen(128)
            listener.setblocking(False)
        except OSError:
            listener.close()
            raise
        self.port = listener.getsockname()[1]
        self._thread = threading.Thread(
            target=self._run, args=(listener,), name=f"fault-proxy-{self.port}", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(10.0) or self._startup_error is not None:
            self.stop()
            raise RuntimeError(f"FaultProxy did not start: {self._startup_error!r}")
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Close everything; waits at most `timeout` seconds for the proxy's thread."""
        thread, loop, stop_event = self._thread, self._loop, self._stop_event
        if thread is None:
            return
        if loop is not None and stop_event is not None:
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                loop.call_soon_threadsafe(stop_event.set)
        thread.join(timeout)
        if thread.is_alive():
            log.warning("fault proxy thread still running %gs after stop()", timeout)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def url_for(self, api_path: str = "/api") -> str:
        """The URL a client uses to reach the server's `api_path` through the proxy."""
        return f"http://{self.host}:{self.port}{api_path}"

    # -- faults (any thread) ---------------------------------------------------------------

    def latency(self, seconds: float, max_seconds: float | None = None) -> None:
        """Delay every chunk, each way, by [seconds, max_seconds] (default: exactly seconds)."""
        high = seconds if max_seconds is None else max_seconds
        if not 0 <= seconds <= high:
            raise ValueError("need 0 <= seconds <= max_seconds")
        self._set(latency_min=seconds, latency_max=high)

    def reset_fraction(self, p: float) -> None:
        """Reset the connection during this share of requests (0 to 1)."""
        self._set(reset_fraction=_fraction(p))

    def black_hole(self, on: bool = True) -> None:
        self._set(black_hole=on)

    def http_5xx_fraction(self, p: float, status: int = 503) -> None:
        """Answer this share of requests with `status` instead of forwarding them."""
        if not 500 <= status <= 599:
            raise ValueError(f"not a 5xx status: {status}")
        self._set(http_5xx_fraction=_fraction(p), http_5xx_status=status)

    def clear(self) -> None:
        """No more faults (connections silenced by a black hole stay silent)."""
        with self._lock:
            self._faults = _Faults()

    def counters(self) -> ProxyCounters:
        with self._lock:
            return dataclasses.replace(self._counters)

    def _set(self, **changes: float | bool) -> None:
        with self._lock:
            self._faults = dataclasses.replace(self._faults, **changes)  # type: ignore[arg-type]

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            setattr(self._counters, name, getattr(self._counters, name) + n)

    # -- the loop ----------------------------------------------------------------------------

    def _run(self, listener: socket.socket) -> None:
        try:
            asyncio.run(self._main(listener))
        except BaseException as error:  # pragma: no cover - reported to start() or logged
            self._startup_error = error
            self._ready.set()
            log.exception("fault proxy loop failed")
        finally:
            listener.close()

    async def _main(self, listener: socket.socket) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        server = await asyncio.start_server(self._serve, sock=listener, limit=MAX_HEAD_BYTES)
        self._ready.set()
        try:
            await self._stop_event.wait()
        finally:
            server.close()
            for connection in list(self._connections):
                connection.abort()
            handlers = [
                task
                for task in asyncio.all_tasks()
                if task is not asyncio.current_task() and not task.done()
            ]
            for task in handlers:
                task.cancel()
            if handlers:
                await asyncio.wait(handlers, timeout=2.0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = _Connection(reader, writer)
        self._connections.add(connection)
        self._count("connections")
        tasks: list[asyncio.Task[None]] = []
        try:
            if self._faults.black_hole:
                connection.silent = True
                self._count("black_holed_connections")
            else:
                try:
                    connection.server_reader, connection.server_writer = await asyncio.wait_for(
                        asyncio.open_connection(self.upstream_host, self.upstream_port),
                        self.connect_timeout_seconds,
                    )
                except (OSError, asyncio.TimeoutError) as error:
                    self._count("upstream_failures")
                    log.warning("fault proxy: cannot reach the server: %r", error)
                    return
                tasks.append(asyncio.create_task(self._read_server(connection)))
            tasks.append(asyncio.create_task(self._read_client(connection)))
            senders = [
                asyncio.create_task(self._send_to_server(connection)),
                asyncio.create_task(self._send_to_client(connection)),
            ]
            tasks.extend(senders)
            # The connection is over when either direction has closed (or reset) its side.
            await asyncio.wait(senders, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            # stop(): end quietly. (asyncio's stream callback, before Python 3.12, logs a
            # cancelled handler task as an error.)
            pass
        except Exception:
            log.exception("fault proxy: connection failed")
        finally:
            for task in tasks:
                task.cancel()
            connection.abort()
            self._connections.discard(connection)
            if tasks:
                await asyncio.wait(tasks, timeout=1.0)

    # -- client -> server ----------------------------------------------------------------

    async def _read_client(self, connection: _Connection) -> None:
        """Read whole requests and decide each one's fate."""
        try:
            while True:
                request = await _read_request(connection.client_reader)
                if request is None:
                    break
                self._count("requests")
                self._decide(connection, request)
        except _Bad as error:
            self._count("bad_requests")
            log.warning("fault proxy: dropping a connection: %s", error)
        except (OSError, asyncio.IncompleteReadError):
            pass  # the client went away mid-request
        except Exception:
            log.exception("fault proxy: reading a request failed")
        self._enqueue(connection, to_client=False, item=_EOF)

    def _decide(self, connection: _Connection, request: bytes) -> None:
        faults = self._faults
        if connection.silent or faults.black_hole:
            connection.silent = True
            self._count("black_holed_requests")
            return
        if self._random.random() < faults.http_5xx_fraction:
            self._count("injected_5xx")
            self._enqueue(connection, to_client=True, item=_error_answer(faults.http_5xx_status))
            return
        if self._random.random() < faults.reset_fraction:
            if len(request) > 1 and self._random.random() < 0.5:
                cut = self._random.randint(1, len(request) - 1)
                self._enqueue(connection, to_client=False, item=request[:cut])
                self._enqueue(connection, to_client=False, item=_RESET)
                return
            # No answer bytes can be on their way: the client asked only after reading the
            # whole previous answer (no pipelining), so the next answer bytes are this one's.
            connection.reset_after = self._random.randint(1, MAX_RESET_OFFSET_BYTES)
        self._enqueue(connection, to_client=False, item=request)
        self._count("forwarded")

    async def _send_to_server(self, connection: _Connection) -> None:
        writer = connection.server_writer
        while True:
            item = await _next_due(connection.to_server)
            if item is _EOF:
                return
            if item is _RESET:
                self._reset(connection, "resets_before_server")
                return
            if writer is None or connection.silent:
                continue
            assert isinstance(item, bytes)
            try:
                writer.write(item)
                await writer.drain()
            except OSError:
                return

    # -- server -> client ----------------------------------------------------------------

    async def _read_server(self, connection: _Connection) -> None:
        reader = connection.server_reader
        assert reader is not None
        try:
            while True:
                data = await reader.read(READ_CHUNK_BYTES)
                if not data:
                    break
                if connection.silent or self._faults.black_hole:
                    connection.silent = True
                    self._count("black_holed_answers")
                    continue
                self._enqueue(connection, to_client=True, item=data)
        except OSError:
            pass
        except Exception:
            log.exception("fault proxy: reading an answer failed")
        if not connection.silent:  # a silenced connection leaves it to the client to give up
            self._enqueue(connection, to_client=True, item=_EOF)

    async def _send_to_client(self, connection: _Connection) -> None:
        writer = connection.client_writer
        while True:
            item = await _next_due(connection.to_client)
            if item is _EOF:
                return
            assert isinstance(item, bytes)
            if connection.silent:
                continue
            cut = connection.reset_after
            if cut is not None and cut <= len(item):
                with contextlib.suppress(OSError):
                    writer.write(item[:cut])
                    await writer.drain()
                self._reset(connection, "resets_mid_answer")
                return
            if cut is not None:
                connection.reset_after = cut - len(item)
            try:
                writer.write(item)
                await writer.drain()
            except OSError:
                return

    # -- plumbing ------------------------------------------------------------------------

    def _enqueue(self, connection: _Connection, *, to_client: bool, item: object) -> None:
        """Queue `item` for one direction, due after the latency, never before earlier ones."""
        faults = self._faults
        loop = asyncio.get_running_loop()
        delay = 0.0
        if faults.latency_max > 0 and isinstance(item, bytes):
            delay = self._random.uniform(faults.latency_min, faults.latency_max)
            self._count("delayed_chunks")
        if to_client:
            due = connection.due_to_client = max(connection.due_to_client, loop.time() + delay)
            connection.to_client.put_nowait((due, item))
        else:
            due = connection.due_to_server = max(connection.due_to_server, loop.time() + delay)
            connection.to_server.put_nowait((due, item))

    def _reset(self, connection: _Connection, kind: str) -> None:
        """A TCP RST to the client (SO_LINGER 0, then close); the server side just closes."""
        sock = connection.client_writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        connection.abort()
        self._count("resets")
        self._count(kind)


def _fraction(p: float) -> float:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"a fraction is between 0 and 1, got {p}")
    return p


async def _next_due(queue: asyncio.Queue[tuple[float, object]]) -> object:
    due, item = await queue.get()
    delay = due - asyncio.get_running_loop().time()
    if delay > 0:
        await asyncio.sleep(delay)
    return item


def _error_answer(status: int) -> bytes:
    body = f"fault proxy: injected {status}\n".encode()
    head = (
        f"HTTP/1.1 {status} Injected Fault\r\n"
        "Content-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: keep-alive\r\n\r\n"
    )
    return head.encode("ascii") + body


async def _read_request(reader: asyncio.StreamReader) -> bytes | None:
    """One whole HTTP/1.x request as sent (head and body); None at a clean end of stream."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as error:
        if error.partial.strip():
            raise _Bad("the client closed mid-request") from None
        return None
    except asyncio.LimitOverrunError:
        raise _Bad(f"a request head over {MAX_HEAD_BYTES} bytes") from None
    head = head.lstrip(b"\r\n")  # RFC 9112 2.2: empty lines before a request are ignored
    lines = head.decode("latin-1").split("\r\n")
    request_line = lines[0].split(" ")
    if len(request_line) != 3 or not request_line[2].startswith("HTTP/1."):
        raise _Bad(f"not an HTTP/1.x request line: {lines[0][:80]!r}")
    headers = dict(_header_fields(lines[1:]))
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return head + await _read_chunked(reader)
    length_text = headers.get("content-length", "0").strip()
    if not length_text.isdigit() or int(length_text) > MAX_BODY_BYTES:
        raise _Bad(f"unusable Content-Length {length_text[:20]!r}")
    length = int(length_text)
    return head + (await reader.readexactly(length) if length else b"")


def _header_fields(lines: list[str]) -> Iterator[tuple[str, str]]:
    for line in lines:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise _Bad(f"not a header field: {line[:80]!r}")
        yield name.strip().lower(), value.strip()


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    """A chunked body, as sent: chunks up to the last (size 0) and the trailer section."""
    parts: list[bytes] = []
    total = 0
    while True:
        size_line = await reader.readuntil(b"\r\n")
        parts.append(size_line)
        try:
            size = int(size_line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise _Bad(f"bad chunk size line {size_line[:40]!r}") from None
        total += size
        if total > MAX_BODY_BYTES:
            raise _Bad("chunked body too large")
        if size == 0:
            break
        parts.append(await reader.readexactly(size + 2))
    while True:  # trailer fields, then an empty line
        line = await reader.readuntil(b"\r\n")
        parts.append(line)
        if line == b"\r\n":
            return b"".join(parts)
