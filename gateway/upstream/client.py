"""The upstream HTTP/1.1 client: keep-alive pools on an asyncio Protocol with httptools' parser.

Chosen by measurement over aiohttp (bench/clients/, numbers in bench/README.md): the gateway
needs one thing from a client, a pooled request/response with a streamed body, and doing only
that on the bare protocol costs about half of aiohttp's per-request time.

Theory of operation
-------------------
A `_Connection` is one TCP (or TLS) connection plus one httptools response parser, and carries
at most one exchange at a time. `UpstreamClient.request` writes the request head and body in one
write (held to the end of the event loop's turn when another request already wrote in it,
see `_WriteBatch`), waits (first_byte timeout) until the parser has seen the status line and headers, and
returns an `UpstreamResponse`. Body bytes from the parser queue up in a deque that the response
drains (idle timeout between chunks). A `total` timeout bounds the whole exchange (connect, head
and body): every wait of the exchange is cut to what is left of it, so an exchange past its
deadline fails at its next wait, without a timer of its own. When more than _HIGH_WATER bytes
wait unread the transport stops reading, so a slow consumer throttles the upstream through TCP
instead of growing memory.

When the parser says the message is complete and the upstream allowed keep-alive, the
connection goes back to its pool (LIFO: the warmest connection is reused first; at most
`max_idle_per_host` idle ones). A pooled connection the upstream dropped while idle is noticed
on its next use: if it dies before a single response byte arrives, the request is replayed once
on a fresh connection. That is the keep-alive race every HTTP client retries (the upstream
closed an idle connection just as we reused it), not a general retry policy.

The public names of the modules beside it are imported from here, as they were when this
module held them all: the rest of the gateway and the tests import from
`tollway.gateway.upstream.client`.
"""
from __future__ import annotations

import asyncio
import os
import socket
import ssl
from collections import deque
from time import perf_counter
from typing import Any

import httptools

from tollway.core.config import Timeouts
from tollway.gateway.upstream.egress import ProxyRules, open_tunnel
from tollway.gateway.upstream.errors import (
    UpstreamConnectError,
    UpstreamDisconnected,
    UpstreamError,
    UpstreamTimeout,
    UpstreamTooLarge,
    _NoResponse,
)
from tollway.gateway.upstream.head import _framed, _Head, _Origin, endpoint_of, split_url

__all__ = [
    "Timeouts",
    "UpstreamClient",
    "UpstreamConnectError",
    "UpstreamDisconnected",
    "UpstreamError",
    "UpstreamResponse",
    "UpstreamTimeout",
    "UpstreamTooLarge",
    "endpoint_of",
    "split_url",
]

_MAX_HEAD_BYTES = 64 * 1024  # status line + headers (plus at most one socket read)
_HIGH_WATER = 256 * 1024  # unread body bytes before we stop reading the socket
_LOW_WATER = 64 * 1024  # ... and when we start again
_MAX_CACHED_ORIGINS = 1024
_MAX_CACHED_HEADS = 1024
# Lengths of content-length (14), content-encoding (16) and transfer-encoding (17): on_header
# lower-cases only names of these lengths.
_FRAMING_NAME_LENGTHS = (14, 16, 17)
_IDENTITY = (b"", b"identity")


class _WriteBatch:
    """Request writes of one event-loop turn: the first goes out at once, the rest together at
    the end of the turn.

    A write to an idle upstream wakes its process, and on a VM that wake-up (an
    inter-processor interrupt) is charged to the writer: perf put ~11% of the gateway's CPU at
    c=32 inside write(). granian hands requests over in bursts, and between two requests' writes
    lies a whole request's Python work, long enough for the upstream to answer and sleep again.
    Written back to back at the end of the turn, a burst wakes it about twice instead of once
    per request (c=32: +15% req/s). The first write of a turn is not held back, so a lone
    request waits for nothing (c=1 p50 unchanged within 5 us).
    """

    __slots__ = ("loop", "_pending", "_in_turn")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._pending: list[tuple[asyncio.Transport, bytes]] = []
        self._in_turn = False

    def write(self, transport: asyncio.Transport, data: bytes) -> None:
        if self._in_turn:
            self._pending.append((transport, data))
            return
        transport.write(data)
        self._in_turn = True
        self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._in_turn = False
        pending, self._pending = self._pending, []
        for transport, data in pending:
            if not transport.is_closing():  # dropped meanwhile (timeout, cancelled request)
                transport.write(data)


class _WaitClock:
    """Timeouts of the waits on one loop that are seconds long, checked by one ticker.

    A wait's timer (call_later, then cancel) costs ~1.7 us of uvloop's time, and a request
    waits two to four times (its head, then between body chunks); the first_byte and idle
    bounds it guards (300 s and 120 s by default) almost never fire. So a wait of EXACT_BELOW
    seconds or more is entered in this table instead, and one timer every TICK seconds, running
    only while the table is not empty, ends the overdue waits: at most TICK late, which a
    bound of seconds does not notice. A shorter wait keeps its exact timer.
    """

    TICK = 0.05
    EXACT_BELOW = 1.0

    __slots__ = ("loop", "_due", "_armed")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._due: dict[asyncio.Future[bool], float] = {}
        self._armed = False

    def watch(self, waiter: asyncio.Future[bool], deadline: float) -> None:
        self._due[waiter] = deadline
        if not self._armed:
            self._armed = True
            self.loop.call_later(self.TICK, self._tick)

    def unwatch(self, waiter: asyncio.Future[bool]) -> None:
        self._due.pop(waiter, None)

    def _tick(self) -> None:
        now = self.loop.time()
        try:
            for waiter, deadline in list(self._due.items()):
                if deadline <= now:
                    del self._due[waiter]
                    _expire(waiter)
        finally:  # re-armed whatever happened: later waits depend on it
            self._armed = bool(self._due)
            if self._armed:
                self.loop.call_later(self.TICK, self._tick)


def _expire(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)


class _Connection(asyncio.Protocol):
    """One upstream connection and its response parser; see the module docstring."""

    def __init__(self, loop: asyncio.AbstractEventLoop, label: str, writes: _WriteBatch,
                 clock: _WaitClock) -> None:
        self.label = label
        self._writes = writes
        self._clock = clock
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.busy = False
        self._loop = loop
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[bool] | None = None
        self._woke = 0.0  # when data last woke the waiter (perf_counter)
        self._deadline: float | None = None  # the exchange's `total` deadline (loop time)
        self._begin(skip_body=False)

    def _begin(self, skip_body: bool) -> None:
        """Reset the per-exchange state."""
        self.status = 0
        self.raw_headers: list[tuple[bytes, bytes]] = []  # decoded only if someone reads them
        self.headers_done = False
        self.complete = False
        self.keep_alive = False
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.error: UpstreamError | None = None
        self._skip_body = skip_body  # HEAD: a body is announced but never sent
        self._head_bytes = 0
        self._got_bytes = False
        self._framed = False  # Content-Length or Transfer-Encoding seen, so EOF is not the end
        self.declared_length: bytes | None = None  # Content-Length's raw value, when the upstream sent one
        self.encoded = False  # a Content-Encoding other than identity: the bytes are not the body
        self._paused = False
        # Seconds this exchange waited for the upstream: from each wait's start to the data (or
        # failure) that ended it, not to when the loop resumed the request; the time after is the
        # gateway's (tollway_gateway_overhead_seconds).
        self.waited = 0.0

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if not self.busy or self.error is not None:
            self.abort()  # bytes nobody asked for: the connection's framing can't be trusted
            return
        self._got_bytes = True
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._fail(f"malformed response ({type(exc).__name__})")
            return
        if not self.headers_done:
            self._head_bytes += len(data)
            if self._head_bytes > _MAX_HEAD_BYTES:
                self._fail("response headers too large")
                return
        self._wake()

    def eof_received(self) -> bool:
        return False  # close; connection_lost decides whether the body was complete

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.busy and not self.complete and self.error is None:
            self.error = self._loss_error(exc)
            if self.error is None:
                self.complete = True  # a close-delimited body ends at a clean EOF
        self._wake()

    def _loss_error(self, exc: Exception | None) -> UpstreamError | None:
        if self.headers_done:
            if exc is None and not self._framed:
                return None
            return UpstreamDisconnected(f"upstream {self.label} closed the connection mid-body")
        if self._got_bytes:
            return UpstreamConnectError(
                f"upstream {self.label} closed the connection before the response headers ended"
            )
        return _NoResponse(f"upstream {self.label} closed the connection without responding")

    # -- httptools callbacks ---------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        # Noted here, not found later: decoding every header costs ~2 us a response.
        if len(name) in _FRAMING_NAME_LENGTHS:
            lower = name.lower()
            if lower == b"content-length":
                self._framed = True
                self.declared_length = value  # parsed only if a caller asks (UpstreamResponse.read)
            elif lower == b"transfer-encoding":
                self._framed = True
            elif lower == b"content-encoding":  # sticky: "gzip" then "identity" is still coded
                self.encoded = self.encoded or value.strip().lower() not in _IDENTITY
        self.raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:  # interim 1xx (100 Continue, 103 Early Hints): the real one follows
            self.raw_headers = []
            self._framed = self.encoded = False
            self.declared_length = None
            return
        self.status = status
        self.headers_done = True
        if self._skip_body:
            self.complete = True

    def on_body(self, body: bytes) -> None:
        if self.complete:
            return
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > _HIGH_WATER and not self._paused:
            self._paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]

    def on_message_complete(self) -> None:
        if not self.headers_done:
            return  # the end of an interim 1xx response
        self.complete = True
        self.keep_alive = self._parser.should_keep_alive()

    # -- used by the client and the response -----------------------------------------------

    def send(self, head: bytes, body: bytes, skip_body: bool, deadline: float | None) -> None:
        """Start an exchange: write the request (now, or at the end of this loop turn: see
        _WriteBatch), in one write when it is small. The exchange fails with UpstreamTimeout("total") if it is
        not over by `deadline` (loop time)."""
        self._begin(skip_body)
        self.busy = True
        self._deadline = deadline
        if len(body) < 65536:
            self._writes.write(self.transport, head + body)  # type: ignore[arg-type]
        else:  # not worth copying a large body to save a write
            self._writes.write(self.transport, head)  # type: ignore[arg-type]
            self._writes.write(self.transport, body)  # type: ignore[arg-type]

    async def read_head(self, timeout: float) -> None:
        """Wait until the status line and headers arrived; raises UpstreamError."""
        deadline = self._loop.time() + timeout
        while not self.headers_done:
            if self.error is not None:
                raise self.error
            await self._wait(deadline - self._loop.time(), "first_byte")

    async def next_chunk(self, idle: float) -> bytes | None:
        """The next body chunk, or None at the end; raises UpstreamError."""
        while True:
            if self.chunks:
                chunk = self.chunks.popleft()
                self.buffered -= len(chunk)
                if self._paused and self.buffered <= _LOW_WATER:
                    self._paused = False
                    self.transport.resume_reading()  # type: ignore[union-attr]
                return chunk
            if self.complete:
                return None
            if self.error is not None:
                raise self.error
            await self._wait(idle, "idle")

    def reusable(self) -> bool:
        """True if the last exchange ended cleanly and the upstream allows another one."""
        return self.complete and self.keep_alive and not self.closed and self.error is None

    def finish(self) -> None:
        """End the exchange on a reusable connection, ready for the pool."""
        self.busy = False
        self.chunks.clear()
        if self._paused:
            self._paused = False
            self.transport.resume_reading()  # type: ignore[union-attr]

    def abort(self) -> None:
        """Drop the connection now (mid-exchange or broken); idempotent."""
        self.busy = False
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    async def _wait(self, timeout: float, phase: str) -> None:
        """Sleep until the parser or the connection makes progress; raises UpstreamTimeout.
        The exchange's `total` deadline bounds every wait: no timer of its own is needed (one
        per exchange cost ~1.5 us a request), since an exchange past it fails at its next wait,
        and one that never waits is receiving, bounded by the body caps above it."""
        if self._deadline is not None:
            left = self._deadline - self._loop.time()
            if left < timeout:
                timeout, phase = left, "total"
        waiter = self._loop.create_future()
        self._waiter = waiter
        began = self._woke = perf_counter()
        timer = None
        if timeout >= _WaitClock.EXACT_BELOW:
            self._clock.watch(waiter, self._loop.time() + timeout)
        else:
            timer = self._loop.call_later(max(timeout, 0.0), _expire, waiter)
        try:
            progressed = await waiter
        finally:
            if timer is None:
                self._clock.unwatch(waiter)
            else:
                timer.cancel()
            self._waiter = None
            self.waited += (self._woke if self._woke > began else perf_counter()) - began
        if not progressed:
            raise UpstreamTimeout(phase, self.label)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            self._woke = perf_counter()
            waiter.set_result(True)

    def _fail(self, reason: str) -> None:
        if self.headers_done:
            self.error = UpstreamDisconnected(f"upstream {self.label}: {reason}")
        else:
            self.error = UpstreamConnectError(f"upstream {self.label}: {reason}")
        self.closed = True
        self.transport.abort()  # type: ignore[union-attr]
        self._wake()


class UpstreamResponse:
    """A response whose status and headers arrived; the body is read from it, once.

    Reading the body to its end returns the connection to the pool; `close()` (or leaving
    `async with`) before that drops the connection. Always close a response.
    """

    __slots__ = ("status", "encoded", "_declared", "_raw_headers", "_headers", "_conn", "_client", "_key", "_idle",
                 "_waited")

    def __init__(
        self, client: UpstreamClient, conn: _Connection, key: tuple[str, str, int], idle: float
    ) -> None:
        self.status = conn.status
        self.encoded = conn.encoded  # the body has a content-coding the gateway did not ask for
        self._declared = conn.declared_length
        self._raw_headers = conn.raw_headers
        self._headers: list[tuple[str, str]] | None = None
        self._client = client
        self._conn: _Connection | None = conn
        self._key = key
        self._idle = idle
        self._waited = 0.0  # the connection's `waited`, kept when it goes back to the pool

    @property
    def waited(self) -> float:
        """Seconds spent waiting for the upstream so far: connecting, the head, the body."""
        conn = self._conn
        return conn.waited if conn is not None else self._waited

    @property
    def headers(self) -> list[tuple[str, str]]:
        """(name, value) pairs in arrival order, names lower-cased."""
        if self._headers is None:  # the proxy rarely reads them: decode on first use
            self._headers = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in self._raw_headers]
        return self._headers

    def header(self, name: str) -> str | None:
        """The first value of header `name` (any case), or None."""
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None

    async def read(self, limit: int | None = None) -> bytes:
        """The whole (remaining) body; raises UpstreamTimeout ("idle" or "total"),
        UpstreamDisconnected, or UpstreamTooLarge when it is (or says it is) over `limit` bytes."""
        conn = self._conn
        if conn is not None and conn.complete and conn.error is None:
            # The common case for a small answer: it arrived with the headers. Take it without
            # a coroutine per chunk.
            if limit is not None and conn.buffered > limit:
                self._too_large(limit)
            parts = list(conn.chunks)
            conn.chunks.clear()
            conn.buffered = 0
            self.close()
        else:
            declared = self._declared
            if limit is not None and declared is not None and declared.strip().isdigit() and int(declared) > limit:
                self._too_large(limit)  # refused before reading a byte of it
            parts, size = [], 0
            async for chunk in self:
                size += len(chunk)
                if limit is not None and size > limit:
                    self._too_large(limit)
                parts.append(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def read_prefix(self, limit: int) -> bytes:
        """At most the first `limit` bytes of the body, for an error whose text is all that is
        needed; the rest is not read (the connection is dropped instead). Raises UpstreamTimeout
        or UpstreamDisconnected."""
        parts, size = [], 0
        async for chunk in self:
            parts.append(chunk[: limit - size])
            size += len(parts[-1])
            if size >= limit:
                self.close()
                break
        return b"".join(parts)

    def _too_large(self, limit: int) -> None:
        label = self._conn.label if self._conn is not None else "?"
        self.close()
        raise UpstreamTooLarge(limit, label)

    def __aiter__(self) -> UpstreamResponse:
        return self

    async def __anext__(self) -> bytes:
        """The next body chunk as it arrived; raises UpstreamTimeout ("idle" or "total") or
        UpstreamDisconnected."""
        conn = self._conn
        if conn is None:
            raise StopAsyncIteration
        try:
            chunk = await conn.next_chunk(self._idle)
        except BaseException:
            self.close()
            raise
        if chunk is None:
            self.close()
            raise StopAsyncIteration
        return chunk

    def close(self) -> None:
        """Pool the connection if the body was read to its end, else drop it. Idempotent."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        self._waited = conn.waited
        if conn.reusable() and not conn.chunks:
            conn.finish()
            self._client._release(self._key, conn)
        else:
            conn.abort()

    async def __aenter__(self) -> UpstreamResponse:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        self.close()


def _tls_context(ca_bundle: str | None) -> ssl.SSLContext:
    """A verifying client context: the system CAs, or only `ca_bundle` / $SSL_CERT_FILE."""
    context = ssl.create_default_context(cafile=ca_bundle or os.environ.get("SSL_CERT_FILE") or None)
    context.set_alpn_protocols(["http/1.1"])
    return context


class UpstreamClient:
    """Pooled keep-alive HTTP/1.1 client for the gateway's upstream calls.

    The proxy environment (HTTPS_PROXY, HTTP_PROXY, NO_PROXY) is read once, here; a malformed
    proxy setting raises ValueError here rather than on the first request.
    """

    def __init__(self, *, max_idle_per_host: int = 256, ca_bundle: str | None = None) -> None:
        self._max_idle = max_idle_per_host
        self._ca_bundle = ca_bundle
        self._tls: ssl.SSLContext | None = None  # built on first https use: it costs ~ms
        self._proxies = ProxyRules.from_environ()
        self._origins: dict[str, _Origin] = {}
        self._heads: dict[tuple[Any, ...], _Head] = {}
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._writes: _WriteBatch | None = None  # made on first use: it belongs to the running loop
        self._clock: _WaitClock | None = None  # likewise
        self._closed = False

    async def request(
        self,
        method: str,
        url: str,
        headers: list[tuple[str, str]],
        body: bytes,
        timeouts: Timeouts,
        extra_head: bytes = b"",
    ) -> UpstreamResponse:
        """Send a request and return once its status line and headers arrived.

        `extra_head` is header lines (`Name: value\r\n`, encoded) that change on every
        request, such as `traceparent`: they go after the cached head, so they neither churn
        the prepared-head cache nor pay for its CR/LF check. The caller vouches for them: the
        only one today is tollway.gateway.telemetry.tracing (`RequestTrace.attempt`), whose ids are hex it made
        or parsed and whose relayed tracestate `tollway.core.telemetry.tracecontext.clean_tracestate` has
        limited to printable ASCII (no CR, LF or control characters).

        Raises UpstreamConnectError, UpstreamTimeout ("connect", "first_byte" or "total"), and
        ValueError for a malformed URL or header. With `timeouts.total`, reading the body past
        that many seconds from now raises UpstreamTimeout("total").
        """
        if self._closed:
            raise RuntimeError("UpstreamClient is closed")
        prepared = self._head(method, url, headers)
        origin = prepared.origin
        head = _framed(prepared, len(body), extra_head)
        deadline = None if timeouts.total is None else asyncio.get_running_loop().time() + timeouts.total
        conn = self._take_idle(origin.key)
        waited = 0.0  # (a failure says how long it waited: UpstreamError.waited)
        if conn is not None:
            try:
                return await self._exchange(conn, origin, head, body, method, timeouts, deadline)
            except _NoResponse as exc:
                waited = exc.waited  # the keep-alive race: replay once on a fresh connection
        began = perf_counter()
        try:
            conn = await self._open(origin, timeouts.connect, deadline)
        except UpstreamError as exc:
            exc.waited = waited + perf_counter() - began
            raise
        return await self._exchange(conn, origin, head, body, method, timeouts, deadline,
                                    waited + perf_counter() - began)

    async def aclose(self) -> None:
        """Close every idle connection; responses still open close their own."""
        self._closed = True
        for idle in self._idle.values():
            for conn in idle:
                conn.abort()
        self._idle.clear()

    async def _exchange(
        self,
        conn: _Connection,
        origin: _Origin,
        head: bytes,
        body: bytes,
        method: str,
        timeouts: Timeouts,
        deadline: float | None,
        waited: float = 0.0,
    ) -> UpstreamResponse:
        conn.send(head, body, skip_body=method == "HEAD", deadline=deadline)
        conn.waited = waited  # connecting, when this exchange opened the connection
        try:
            await conn.read_head(timeouts.first_byte)
        except BaseException as exc:
            conn.abort()
            if isinstance(exc, UpstreamError):
                exc.waited = conn.waited
            raise
        return UpstreamResponse(self, conn, origin.key, timeouts.idle)

    def _head(self, method: str, url: str, headers: list[tuple[str, str]]) -> _Head:
        key = (method, url, *headers)
        head = self._heads.get(key)
        if head is None:
            if len(self._heads) >= _MAX_CACHED_HEADS:  # per-request headers (signatures) churn it
                self._heads.clear()
            head = self._heads[key] = _Head(method, url, headers, self._origin)
        return head

    def _origin(self, origin_url: str) -> _Origin:
        origin = self._origins.get(origin_url)
        if origin is None:
            if len(self._origins) >= _MAX_CACHED_ORIGINS:
                self._origins.clear()
            origin = self._origins[origin_url] = _Origin(origin_url, self._proxies)
        return origin

    def _take_idle(self, key: tuple[str, str, int]) -> _Connection | None:
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        return None

    def _release(self, key: tuple[str, str, int], conn: _Connection) -> None:
        idle = self._idle.setdefault(key, [])
        if self._closed or len(idle) >= self._max_idle:
            conn.abort()
        else:
            idle.append(conn)

    async def _open(self, origin: _Origin, timeout: float, deadline: float | None) -> _Connection:
        """A new connection (TLS and proxy included) within `timeout` seconds and before the
        exchange's `deadline` (loop time); raises UpstreamConnectError/Timeout."""
        phase = "connect"
        left = None if deadline is None else deadline - asyncio.get_running_loop().time()
        if left is not None and left < timeout:
            phase, timeout = "total", left
        try:
            async with asyncio.timeout(max(timeout, 0.0)):
                return await self._dial(origin)
        except TimeoutError:
            raise UpstreamTimeout(phase, origin.label) from None
        except OSError as exc:  # refused, DNS (gaierror), TLS (SSLError), proxy refusals
            reason = exc.strerror or str(exc) or type(exc).__name__
            raise UpstreamConnectError(f"cannot connect to upstream {origin.label}: {reason}") from exc

    async def _dial(self, origin: _Origin) -> _Connection:
        loop = asyncio.get_running_loop()
        tls = self._tls_context() if origin.tls else None
        server_hostname = origin.host if origin.tls else None
        if self._writes is None or self._writes.loop is not loop:
            self._writes = _WriteBatch(loop)
            self._clock = _WaitClock(loop)
        writes, clock = self._writes, self._clock
        assert clock is not None  # made with the write batch, just above
        new = lambda: _Connection(loop, origin.label, writes, clock)  # noqa: E731
        if origin.proxy is None or not origin.tls:
            host, port = (origin.host, origin.port) if origin.proxy is None else (
                origin.proxy.host, origin.proxy.port)
            _, conn = await loop.create_connection(
                new, host, port, ssl=tls, server_hostname=server_hostname
            )
            return conn
        assert tls is not None  # this branch is HTTPS through a CONNECT tunnel
        tunnel = await open_tunnel(loop, origin.proxy, origin.host, origin.port)
        conn = new()
        try:
            transport = await loop.start_tls(tunnel, conn, tls, server_hostname=server_hostname)
        except BaseException:
            tunnel.close()
            raise
        if transport is None:  # only if the tunnel closed during the handshake
            raise ConnectionResetError("the proxy tunnel closed during the TLS handshake")
        conn.connection_made(transport)  # start_tls does not call it
        return conn

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = _tls_context(self._ca_bundle)
        return self._tls
