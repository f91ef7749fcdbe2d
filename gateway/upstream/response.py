"""The response an upstream exchange returns once its head is in; the body is read from it.

It reads through its connection (connection.py) and, when the body was read to its end, hands
the connection back to the pool it came from (client.py); otherwise it drops it.
"""
from __future__ import annotations

from typing import Protocol

from tollway.gateway.upstream.connection import _Connection
from tollway.gateway.upstream.errors import UpstreamTooLarge


class _Pool(Protocol):
    """Where a response returns a connection whose exchange ended cleanly (`UpstreamClient`)."""

    def _release(self, key: tuple[str, str, int], conn: _Connection) -> None: ...


class UpstreamResponse:
    """A response whose status and headers arrived; the body is read from it, once.

    Reading the body to its end returns the connection to the pool; `close()` (or leaving
    `async with`) before that drops the connection. Always close a response.
    """

    __slots__ = ("status", "encoded", "_declared", "_raw_headers", "_headers", "_conn", "_client", "_key", "_idle",
                 "_waited")

    def __init__(
        self, client: _Pool, conn: _Connection, key: tuple[str, str, int], idle: float
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

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()
