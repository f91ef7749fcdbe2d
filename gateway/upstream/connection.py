"""One upstream HTTP/1.1 connection: an asyncio Protocol with httptools' response parser.

A `_Connection` is one TCP (or TLS) connection plus one httptools response parser, and carries
at most one exchange at a time. `send` writes the request head and body in one write (held to
the end of the event loop's turn when another request already wrote in it, see `_WriteBatch`),
`read_head` waits (first_byte timeout) until the parser has seen the status line and headers,
and `next_chunk` hands out the body bytes the parser queued up in a deque (idle timeout between
chunks); the response (response.py) drains them. A `total` deadline bounds the whole exchange:
every wait of the exchange is cut to what is left of it, so an exchange past its deadline fails
at its next wait, without a timer of its own. When more than _HIGH_WATER bytes wait unread the
transport stops reading, so a slow consumer throttles the upstream through TCP instead of
growing memory.

A connection that dies before a single response byte raises `_NoResponse`, so the client can
tell the keep-alive race from other failures (client.py); whether it is pooled afterwards is
the client's call too (`reusable`, `finish`).
"""
from __future__ import annotations

import asyncio
import socket
from collections import deque
from time import perf_counter

import httptools

from tollway.gateway.upstream.errors import (
    UpstreamConnectError,
    UpstreamDisconnected,
    UpstreamError,
    UpstreamMalformedHead,
    UpstreamTimeout,
    _NoResponse,
)
from tollway.gateway.upstream.per_loop import _expire, _WaitClock, _WriteBatch

_MAX_HEAD_BYTES = 64 * 1024  # status line + headers (plus at most one socket read)
_HIGH_WATER = 256 * 1024  # unread body bytes before we stop reading the socket
_LOW_WATER = 64 * 1024  # ... and when we start again
# Lengths of content-length (14), content-encoding (16) and transfer-encoding (17): on_header
# lower-cases only names of these lengths.
_FRAMING_NAME_LENGTHS = (14, 16, 17)
_IDENTITY = (b"", b"identity")
_DETACHED = httptools.HttpResponseParser(object())  # a lost connection's: no callbacks to reach it


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
        # The parser calls back into this object, a cycle only the cycle collector frees, and
        # never the ones frozen with the worker's heap (tollway.gateway.lifecycle.heap); no
        # callback can come after the loss, so a parser that knows nobody ends the cycle.
        self._parser = _DETACHED
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
            self.error = UpstreamMalformedHead(f"upstream {self.label}: {reason}")
        self.closed = True
        self.transport.abort()  # type: ignore[union-attr]
        self._wake()
