"""The upstream HTTP/1.1 client: keep-alive pools on an asyncio Protocol with httptools' parser.

Chosen by measurement over aiohttp (bench/clients/, numbers in bench/README.md): the gateway
needs one thing from a client, a pooled request/response with a streamed body, and doing only
that on the bare protocol costs about half of aiohttp's per-request time.

Theory of operation
-------------------
`UpstreamClient.request` takes the prepared request head for its method, URL and headers
(head.py), an idle connection to the origin or a new one (connection.py: one TCP or TLS
connection and its response parser, one exchange at a time), writes the request, waits
(first_byte timeout) until the status line and headers arrived, and returns an
`UpstreamResponse` (response.py) that the body is read from (idle timeout between chunks). A
`total` timeout bounds the whole exchange (connect, head and body). What can fail is in
errors.py; the connection's waits and writes are paced per event loop (per_loop.py).

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
import ssl
from time import perf_counter

from tollway.core.config import Timeouts
from tollway.gateway.upstream.connection import _Connection
from tollway.gateway.upstream.egress import ProxyRules, open_tunnel
from tollway.gateway.upstream.errors import (
    UpstreamConnectError,
    UpstreamDisconnected,
    UpstreamError,
    UpstreamTimeout,
    UpstreamTooLarge,
    UpstreamUnreachable,
    _NoResponse,
)
from tollway.gateway.upstream.head import _framed, _Head, _Origin, endpoint_of, split_url
from tollway.gateway.upstream.per_loop import _WaitClock, _WriteBatch
from tollway.gateway.upstream.response import UpstreamResponse

__all__ = [
    "Timeouts",
    "UpstreamClient",
    "UpstreamConnectError",
    "UpstreamDisconnected",
    "UpstreamError",
    "UpstreamResponse",
    "UpstreamTimeout",
    "UpstreamTooLarge",
    "UpstreamUnreachable",
    "endpoint_of",
    "split_url",
]

_MAX_CACHED_ORIGINS = 1024
_MAX_CACHED_HEADS = 1024
# A prepared head's cache key: the method, the URL, then each (name, value) header pair.
_HeadKey = tuple[str | tuple[str, str], ...]


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
        self._heads: dict[_HeadKey, _Head] = {}
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

        Raises UpstreamConnectError (UpstreamUnreachable if the request was never sent),
        UpstreamTimeout ("connect", "first_byte" or "total"), and ValueError for a malformed URL
        or header. With `timeouts.total`, reading the body past that many seconds from now
        raises UpstreamTimeout("total")."""
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
        key: _HeadKey = (method, url, *headers)
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
        exchange's `deadline` (loop time); raises UpstreamUnreachable/Timeout."""
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
            raise UpstreamUnreachable(f"cannot connect to upstream {origin.label}: {reason}") from exc

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
